"""Llama, Qwen2 and GPT-NeoX against transformers reference outputs.

The fixtures under tests/fixtures/models/tiny_{llama,qwen2,neox}/ come from
scripts/make_llm_fixtures.py; nothing here imports torch.
"""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors.numpy import save_file

from w2sg_jax.models import (
    GPTNeoX,
    GPTNeoXConfig,
    Llama,
    LlamaConfig,
    RewardModel,
    SafetensorsReader,
    SequenceClassifier,
    last_token_pool,
    load_pretrained,
)
from w2sg_jax.models.llama import rope_inv_freq

FIXTURES = Path(__file__).parent / "fixtures" / "models"
NAMES = ("tiny_llama", "tiny_qwen2", "tiny_neox")

_fwd = nnx.jit(lambda m, ids, mask: m(ids, mask))


def _masked(x, mask_BxT):
  return np.where(np.asarray(mask_BxT)[..., None] == 1, np.asarray(x, np.float32), 0.0)


def _copy(name, tmp_path):
  dst = tmp_path / name
  shutil.copytree(FIXTURES / name, dst)
  return dst


def _edit_config(folder, **changes):
  cfg = json.loads((folder / "config.json").read_text())
  for k, v in changes.items():
    if v is None:
      cfg.pop(k, None)
    else:
      cfg[k] = v
  (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def refs():
  return {n: np.load(FIXTURES / n / "reference.npz") for n in NAMES}


@pytest.fixture(scope="module")
def models():
  return {n: load_pretrained(FIXTURES / n)[0] for n in NAMES}


# ---------------------------------------------------------------- parity ----


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", NAMES)
def test_hidden_states_match_transformers(models, refs, name, side):
  ref = refs[name]
  ids, mask = ref[f"input_ids_{side}"], ref[f"attention_mask_{side}"]
  assert mask.sum(1).max() > 80  # positions reach far enough to turn slow frequencies
  hidden = _fwd(models[name], ids, mask)
  assert hidden.shape == ids.shape + (models[name].hidden_size,) and hidden.dtype == jnp.float32
  np.testing.assert_allclose(_masked(hidden, mask), ref[f"hidden_{side}"], atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_padding_side_gives_unpadded_states(models, refs, name):
  ref = refs[name]
  lengths = ref["attention_mask_right"].sum(1)
  alone_right = ref["hidden_alone"]
  t = alone_right.shape[1]
  alone_left = np.stack([np.roll(h, t - n, axis=0) for h, n in zip(alone_right, lengths)])
  pooled = {}
  for side, expected in (("right", alone_right), ("left", alone_left)):
    ids, mask = ref[f"input_ids_{side}"], ref[f"attention_mask_{side}"]
    hidden = _fwd(models[name], ids, mask)
    np.testing.assert_allclose(_masked(hidden, mask), expected, atol=1e-4)
    pooled[side] = np.asarray(last_token_pool(hidden, mask))
  np.testing.assert_allclose(pooled["left"], pooled["right"], atol=1e-5)
  np.testing.assert_allclose(pooled["left"], alone_right[np.arange(len(lengths)), lengths - 1], atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_rope_frequencies_match_transformers(models, refs, name):
  cfg = models[name].config
  dim = cfg.rotary_ndims if isinstance(cfg, GPTNeoXConfig) else cfg.head_size
  np.testing.assert_allclose(rope_inv_freq(dim, cfg.rope), refs[name]["inv_freq"], rtol=1e-6)


def test_llama3_rope_scaling_covers_all_three_regimes(models):
  rope = models["tiny_llama"].config.rope
  assert rope.rope_type == "llama3"
  plain = rope_inv_freq(8, type(rope)(theta=rope.theta))
  ratio = rope_inv_freq(8, rope) / plain
  np.testing.assert_allclose(ratio[:2], 1.0)  # high frequencies kept
  assert 1 / rope.factor < ratio[2] < 1  # interpolated
  np.testing.assert_allclose(ratio[3], 1 / rope.factor, rtol=1e-6)  # low frequency divided


def test_neox_sequential_residual(refs, tmp_path):
  folder = _copy("tiny_neox", tmp_path)
  _edit_config(folder, use_parallel_residual=False)
  model, _ = load_pretrained(folder)
  assert not model.config.use_parallel_residual
  ref = refs["tiny_neox"]
  for side in ("right", "left"):
    ids, mask = ref[f"input_ids_{side}"], ref[f"attention_mask_{side}"]
    np.testing.assert_allclose(
        _masked(_fwd(model, ids, mask), mask), ref[f"hidden_sequential_{side}"], atol=1e-4
    )


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_reproduces_fixture_ids(refs, name):
  _, tok = load_pretrained(FIXTURES / name)
  ref = refs[name]
  for text, row, m in zip(ref["texts"], ref["input_ids_right"], ref["attention_mask_right"]):
    assert tok.encode(str(text)).ids == row[m == 1].tolist()


# ------------------------------------------------------------ the configs ----


def test_fixture_configs_exercise_the_features(models):
  llama, qwen, neox = (models[n].config for n in NAMES)
  assert llama.num_kv_heads < llama.num_attention_heads and not llama.tie_word_embeddings
  assert not llama.qkv_bias and not llama.o_bias
  assert qwen.model_type == "qwen2" and qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings
  assert qwen.num_kv_heads < qwen.num_attention_heads
  assert neox.rotary_pct == 0.25 and neox.rotary_ndims == 4 and neox.use_parallel_residual


def test_hub_style_configs_read_the_same():
  """Hub checkpoints write rope_theta/rope_scaling (Llama) and rotary_pct/rotary_emb_base
  (Pythia); transformers >= 5 writes rope_parameters. Both give one config."""
  llama = json.loads((FIXTURES / "tiny_llama" / "config.json").read_text())
  hub = {k: v for k, v in llama.items() if k != "rope_parameters"}
  params = dict(llama["rope_parameters"])
  hub["rope_theta"] = params.pop("rope_theta")
  hub["rope_scaling"] = params
  assert LlamaConfig.from_hf(hub) == LlamaConfig.from_hf(llama)

  neox = json.loads((FIXTURES / "tiny_neox" / "config.json").read_text())
  hub = {k: v for k, v in neox.items() if k != "rope_parameters"}
  hub.update(rotary_pct=0.25, rotary_emb_base=10000)
  assert GPTNeoXConfig.from_hf(hub) == GPTNeoXConfig.from_hf(neox)
  hub["rotary_emb_base"] = 500
  assert GPTNeoXConfig.from_hf(hub).rope.theta == 500


@pytest.mark.parametrize(
    "name,changes,match",
    [
        ("tiny_llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "'yarn' is not supported"),
        ("tiny_qwen2", {"use_sliding_window": True}, "use_sliding_window=True"),
        ("tiny_llama", {"hidden_act": "mish"}, "hidden_act='mish'"),
    ],
)
def test_unsupported_options_are_errors(tmp_path, name, changes, match):
  folder = _copy(name, tmp_path)
  _edit_config(folder, **changes)
  with pytest.raises(ValueError, match=match):
    load_pretrained(folder)


def test_unknown_model_type_lists_the_supported_ones(tmp_path):
  folder = _copy("tiny_llama", tmp_path)
  _edit_config(folder, model_type="mamba")
  with pytest.raises(ValueError, match=r"model_type='mamba'.*'gpt_neox'.*'llama'.*'qwen2'"):
    load_pretrained(folder)


def test_num_layers(refs):
  model, _ = load_pretrained(FIXTURES / "tiny_llama", num_layers=1)
  assert len(model.layers) == 1
  ref = refs["tiny_llama"]
  hidden = _fwd(model, ref["input_ids_right"][:2], ref["attention_mask_right"][:2])
  assert hidden.shape[-1] == 32
  with pytest.raises(ValueError, match=r"num_layers=3 must be in \[0, 2\]"):
    load_pretrained(FIXTURES / "tiny_neox", num_layers=3)


def test_tied_logits(models, refs):
  qwen, llama = models["tiny_qwen2"], models["tiny_llama"]
  ref = refs["tiny_qwen2"]
  logits = qwen.logits(jnp.asarray(ref["hidden_right"]))
  emb = np.asarray(qwen.embed_tokens.embedding[...])
  np.testing.assert_allclose(logits, ref["hidden_right"] @ emb.T, atol=1e-4)
  with pytest.raises(ValueError, match="untied"):
    llama.logits(jnp.asarray(ref["hidden_right"]))


# ------------------------------------------------------------------ heads ----


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_neox"])
def test_decoder_heads_pool_the_last_real_token(models, refs, name):
  clf = SequenceClassifier(models[name], 3, rngs=nnx.Rngs(0))
  rm = RewardModel(models[name], rngs=nnx.Rngs(0))
  assert clf.pooling == rm.pooling == "last"
  ref = refs[name]
  ids, mask = ref["input_ids_left"], ref["attention_mask_left"]
  lengths = mask.sum(1)
  expected = ref["hidden_alone"][np.arange(len(ids)), lengths - 1]
  features = nnx.jit(lambda m, a, b: m.features(a, b))(clf, ids, mask)
  np.testing.assert_allclose(features, expected, atol=1e-4)


# ------------------------------------------------------- dtype and files ----


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_neox"])
def test_bf16_load_is_close(refs, name):
  model, _ = load_pretrained(FIXTURES / name, dtype=jnp.bfloat16)
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert params and all(p.dtype == jnp.bfloat16 for p in params)
  ref = refs[name]
  ids, mask = ref["input_ids_left"], ref["attention_mask_left"]
  hidden = _fwd(model, ids, mask)
  assert hidden.dtype == jnp.bfloat16
  expected = ref["hidden_left"]
  err = np.abs(_masked(hidden, mask) - expected)
  # bf16 really ran (err > 0) and stayed close: per-token cosine and max error.
  assert 0 < err.max() < 0.25, err.max()
  got = _masked(hidden, mask)[mask == 1]
  cos = (got * expected[mask == 1]).sum(-1) / (
      np.linalg.norm(got, axis=-1) * np.linalg.norm(expected[mask == 1], axis=-1))
  assert cos.min() > 0.999, cos.min()


def test_float32_params_with_bf16_compute(refs):
  model, _ = load_pretrained(FIXTURES / "tiny_qwen2", dtype=jnp.bfloat16, param_dtype=jnp.float32)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  ref = refs["tiny_qwen2"]
  hidden = _fwd(model, ref["input_ids_right"], ref["attention_mask_right"])
  assert hidden.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="keeps float32 parameters"):
    load_pretrained(FIXTURES / "tiny_gpt2", param_dtype=jnp.bfloat16)


def test_bf16_checkpoint_file_loads(tmp_path, refs):
  """Real checkpoints store bfloat16 tensors, which safetensors.numpy cannot read."""
  folder = _copy("tiny_qwen2", tmp_path)
  tensors = {k: np.asarray(v) for k, v in SafetensorsReader.from_folder(folder).items()}
  (folder / "model.safetensors").unlink()
  from safetensors.flax import save_file as save_flax  # pylint: disable=g-import-not-at-top

  save_flax({k: jnp.asarray(v, jnp.bfloat16) for k, v in tensors.items()}, str(folder / "model.safetensors"))
  reader = SafetensorsReader.from_folder(folder)
  sample = reader["model.norm.weight"]
  assert sample.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(sample, tensors["model.norm.weight"].astype(ml_dtypes.bfloat16))
  model, _ = load_pretrained(folder)  # float32 parameters from bf16 tensors
  ref = refs["tiny_qwen2"]
  ids, mask = ref["input_ids_right"], ref["attention_mask_right"]
  err = np.abs(_masked(_fwd(model, ids, mask), mask) - ref["hidden_right"]).max()
  assert 0 < err < 0.1, err


def test_sharded_checkpoint_loads_like_one_file(tmp_path, models, refs):
  src = FIXTURES / "tiny_llama"
  assert not (src / "model.safetensors").exists()
  assert len(list(src.glob("model-*-of-*.safetensors"))) >= 2
  # The same tensors in one file.
  folder = tmp_path / "single"
  folder.mkdir()
  for f in ("config.json", "tokenizer.json"):
    shutil.copy(src / f, folder / f)
  save_file({k: np.asarray(v) for k, v in SafetensorsReader.from_folder(src).items()},
            str(folder / "model.safetensors"))
  single, _ = load_pretrained(folder)
  ref = refs["tiny_llama"]
  ids, mask = ref["input_ids_left"], ref["attention_mask_left"]
  np.testing.assert_array_equal(_fwd(single, ids, mask), _fwd(models["tiny_llama"], ids, mask))


def test_missing_shard_is_named(tmp_path):
  folder = _copy("tiny_llama", tmp_path)
  victim = sorted(folder.glob("model-*.safetensors"))[-1]
  victim.unlink()
  with pytest.raises(FileNotFoundError, match=victim.name):
    load_pretrained(folder)
  for f in folder.glob("model*"):
    f.unlink()
  with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*index\.json"):
    load_pretrained(folder)


# -------------------------------------------------------------- shardings ----


def test_shardings_place_each_tensor_and_match_the_plain_load(models, refs):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  mesh = Mesh(np.array(jax.devices()[:8]), ("fsdp",))
  seen = []

  def shardings(path, shape, dtype):
    seen.append((path, shape, dtype))
    # Split the first axis that 8 divides; replicate the rest.
    axis = next((i for i, n in enumerate(shape) if n % 8 == 0), None)
    spec = [None] * len(shape)
    if axis is not None:
      spec[axis] = "fsdp"
    return NamedSharding(mesh, P(*spec))

  model, _ = load_pretrained(FIXTURES / "tiny_llama", shardings=shardings)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert {p for p, _, _ in seen} == set(flat)
  assert ("layers", 0, "self_attn", "q_proj", "kernel") in flat
  q = flat[("layers", 0, "self_attn", "q_proj", "kernel")][...]
  assert q.sharding.spec == P("fsdp", None)
  assert {s.data.shape for s in q.addressable_shards} == {(4, 32)}
  emb = flat[("embed_tokens", "embedding")][...]
  assert emb.sharding.spec == P(None, "fsdp")  # 300 rows: the 32 columns split
  ref = refs["tiny_llama"]
  for side in ("right", "left"):
    ids, mask = ref[f"input_ids_{side}"], ref[f"attention_mask_{side}"]
    np.testing.assert_allclose(
        _masked(_fwd(model, ids, mask), mask),
        _masked(_fwd(models["tiny_llama"], ids, mask), mask), atol=1e-5,
    )


def test_modules_build_without_a_checkpoint():
  cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1)
  llama = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  assert llama.layers[0].self_attn.k_proj.kernel.shape == (16, 4)
  neox = nnx.eval_shape(lambda: GPTNeoX(GPTNeoXConfig(
      vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=32), rngs=nnx.Rngs(0)))
  assert neox.layers[0].attention.query_key_value.kernel.shape == (16, 48)
  # depth_from_top tags: the top layer and the final norm are 1.
  assert llama.layers[1].mlp.up_proj.kernel.get_metadata()["depth_from_top"] == 1
  assert llama.layers[0].mlp.up_proj.kernel.get_metadata()["depth_from_top"] == 2
  assert llama.norm.weight.get_metadata()["depth_from_top"] == 1
