"""Tiny random checkpoints built in code (w2sg_jax/models/random_checkpoint.py).

The committed transformers-made fixtures (tests/fixtures/models/tiny_*) are the
independent reference for the tensor names and shapes, and the safetensors and
tokenizers libraries for the file formats.
"""

import concurrent.futures
import hashlib
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save as safetensors_save
from tokenizers import AddedToken, Tokenizer, decoders, models as tok_models, pre_tokenizers, processors

from w2sg_jax.data import tokenize as tokenize_lib
from w2sg_jax.models import gpt2, gpt_neox, llama, random_checkpoint as rc
from w2sg_jax.models.pretrained import SafetensorsReader, load_pretrained, resolve_checkpoint_dir

FIXTURES = Path(__file__).parent / "fixtures" / "models"
_fwd = nnx.jit(lambda m, ids, mask: m(ids, mask))
TEXTS = ["hello world", "the cat sat on the mat!", "Björk's fjord (#7) costs €3.14 ~ more..."]

@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv(rc.CACHE_ENV, str(tmp_path / "random_cache"))


def _digests(folder: Path) -> dict[str, str]:
  return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


# ------------------------------------------------------------ determinism


def test_same_spec_same_bytes(tmp_path):
  spec = "random:llama?shards=3&rope_type=llama3&seed=5"
  a = _digests(rc.write_checkpoint(spec, tmp_path / "a"))
  b = _digests(rc.write_checkpoint(rc.parse_spec(spec), tmp_path / "b"))
  assert a == b
  assert set(a) == {"config.json", "tokenizer.json", rc.MARKER, "model.safetensors.index.json",
                    *(f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))}


def test_bytes_pinned(tmp_path):
  # The same on every machine and library version: a change here must bump FORMAT_VERSION.
  d = _digests(rc.write_checkpoint("random:qwen2?seed=1", tmp_path / "q"))
  assert {k: v[:16] for k, v in d.items()} == {
      "config.json": "49cb3c7fcdeb2ea4",
      "model.safetensors": "b62449a2553328cf",
      "tokenizer.json": "0846e50ec0cc805a",
      rc.MARKER: "1f0ed858d48e7e30",  # Holds the folder's key and the others' sha256.
  }


def test_seed_changes_weights_only():
  a, b = rc.parse_spec("random:llama?seed=0"), rc.parse_spec("random:llama?seed=1")
  ta, tb = a.tensors(), b.tensors()
  assert ta.keys() == tb.keys()
  for name in ta:
    assert not np.array_equal(ta[name], tb[name]), name
  assert a.hf_config() == b.hf_config() and a.key != b.key


def test_weight_statistics():
  spec = rc.parse_spec("random:gpt_neox?hidden_size=64&num_attention_heads=4&intermediate_size=128")
  t = spec.tensors()
  std = 64 ** -0.5
  w = t["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"]
  assert w.dtype == np.float32 and abs(w.std() - std) < 0.05 * std and abs(w.mean()) < 0.01
  assert np.abs(w).max() <= std * np.sqrt(3) + 1e-7  # Uniform on [-a, a].
  scale = t["gpt_neox.final_layer_norm.weight"]
  assert abs(scale.mean() - 1) < 0.1 and scale.std() > 0
  # Every tensor its own stream: two same-shape tensors differ.
  assert not np.array_equal(t["gpt_neox.layers.0.attention.dense.weight"],
                            t["gpt_neox.layers.1.attention.dense.weight"])


# ------------------------------------------------------- against transformers


def _fixture_overrides(family: str, cfg: dict) -> dict:
  """Spec keys from a transformers-made fixture's config.json."""
  if family == "gpt2":
    return dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["n_embd"], num_hidden_layers=cfg["n_layer"],
                num_attention_heads=cfg["n_head"], max_position_embeddings=cfg["n_positions"],
                norm_eps=cfg["layer_norm_epsilon"], hidden_act=cfg["activation_function"])
  out = {k: cfg[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                             "intermediate_size", "max_position_embeddings", "hidden_act", "tie_word_embeddings")}
  rope = cfg["rope_parameters"]
  out["rope_theta"] = rope["rope_theta"]
  if rope["rope_type"] != "default":
    out.update(rope_type=rope["rope_type"], rope_factor=rope["factor"],
               **{k: rope[k] for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")})
  if family == "gpt_neox":
    out.update(rotary_pct=rope["partial_rotary_factor"], norm_eps=cfg["layer_norm_eps"],
               use_parallel_residual=cfg["use_parallel_residual"], attention_bias=cfg["attention_bias"])
  else:
    out.update(num_key_value_heads=cfg["num_key_value_heads"], norm_eps=cfg["rms_norm_eps"])
    out.update({k: cfg[k] for k in ("head_dim", "attention_bias", "mlp_bias") if k in cfg})
  return out


FAMILY_FIXTURES = {"llama": "tiny_llama", "qwen2": "tiny_qwen2", "gpt_neox": "tiny_neox", "gpt2": "tiny_gpt2"}
FROM_HF = {"llama": llama.LlamaConfig.from_hf, "qwen2": llama.LlamaConfig.from_hf,
           "gpt_neox": gpt_neox.GPTNeoXConfig.from_hf, "gpt2": gpt2.GPT2Config.from_hf}


@pytest.mark.parametrize("family", sorted(FAMILY_FIXTURES))
def test_layout_and_config_match_transformers_fixture(family):
  folder = FIXTURES / FAMILY_FIXTURES[family]
  fixture_cfg = json.loads((folder / "config.json").read_text())
  spec = rc.RandomSpec.make(family, **_fixture_overrides(family, fixture_cfg))
  reader = SafetensorsReader.from_folder(folder)
  assert spec.tensor_shapes() == {k: tuple(reader[k].shape) for k in sorted(reader)}
  # Our config.json (the hub's style) and transformers 5's read as the same architecture.
  assert FROM_HF[family](spec.hf_config()) == FROM_HF[family](fixture_cfg)


@pytest.mark.parametrize("family,options,extra", [
    ("llama", "attention_bias=true&mlp_bias=true&tie_word_embeddings=true&head_dim=16", set()),
    ("qwen2", "tie_word_embeddings=false", {"lm_head.weight"}),
    ("gpt_neox", "attention_bias=false&tie_word_embeddings=true", set()),
])
def test_options_change_the_layout_as_transformers_does(family, options, extra):
  base = rc.parse_spec(f"random:{family}").tensor_shapes()
  shapes = rc.parse_spec(f"random:{family}?{options}").tensor_shapes()
  if family == "llama":
    assert "lm_head.weight" not in shapes
    for proj in ("q", "k", "v", "o"):
      assert f"model.layers.1.self_attn.{proj}_proj.bias" in shapes
    assert shapes["model.layers.0.mlp.down_proj.bias"] == (32,)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (4 * 16, 32)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (2 * 16, 32)
  elif family == "gpt_neox":
    assert "embed_out.weight" not in shapes and "gpt_neox.layers.0.attention.dense.bias" not in shapes
    assert "gpt_neox.layers.0.mlp.dense_h_to_4h.bias" in shapes
  else:
    assert set(shapes) - set(base) == extra


# ------------------------------------------------------------------ loading


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  cache = tmp_path_factory.mktemp("loaded")
  out = {}
  for family in rc.FAMILIES:
    folder = rc.materialize(f"random:{family}?seed=3", cache)
    out[family] = load_pretrained(folder)
  return out


def _pad(seqs, side):
  t = max(map(len, seqs))
  ids, mask = np.zeros((len(seqs), t), np.int32), np.zeros((len(seqs), t), np.int32)
  for i, s in enumerate(seqs):
    sl = slice(0, len(s)) if side == "right" else slice(t - len(s), t)
    ids[i, sl], mask[i, sl] = s, 1
  return ids, mask


@pytest.mark.parametrize("family", rc.FAMILIES)
def test_loads_and_padding_side_does_not_matter(loaded, family):
  module, tok = loaded[family]
  seqs = [e.ids for e in tok.encode_batch(TEXTS)]
  (ids_r, mask_r), (ids_l, mask_l) = _pad(seqs, "right"), _pad(seqs, "left")
  ids, mask = np.concatenate([ids_r, ids_l]), np.concatenate([mask_r, mask_l])
  hidden = np.asarray(_fwd(module, ids, mask))
  assert hidden.shape == ids.shape + (32,) and np.isfinite(hidden).all()
  real = [hidden[i][mask[i] == 1] for i in range(len(ids))]
  n = len(seqs)
  for r, l in zip(real[:n], real[n:]):
    np.testing.assert_allclose(r, l, atol=2e-5)
  # Random, not degenerate: different texts give different final states.
  assert np.abs(real[0][-1] - real[1][-1]).max() > 1e-2


def test_load_from_spec_string_bf16_and_sharded():
  spec = "random:llama?dtype=bfloat16&shards=2&hidden_size=48&num_attention_heads=6&num_key_value_heads=3"
  module, tok = load_pretrained(spec, dtype=jnp.bfloat16)
  assert module.embed_tokens.embedding[...].dtype == jnp.bfloat16
  ids = np.array([tok.encode("hello").ids], np.int32)
  hidden = _fwd(module, ids, np.ones_like(ids))
  assert hidden.shape == (1, ids.shape[1], 48) and np.isfinite(np.asarray(hidden, np.float32)).all()
  folder = resolve_checkpoint_dir(spec)
  header = json.loads((folder / "model.safetensors.index.json").read_text())
  assert sorted(set(header["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
  f32 = rc.parse_spec(spec.replace("dtype=bfloat16", "dtype=float32")).tensor("model.norm.weight")
  np.testing.assert_allclose(np.asarray(SafetensorsReader.from_folder(folder)["model.norm.weight"], np.float32),
                             f32, rtol=1e-2)


# ------------------------------------------------------------------- files


def test_safetensors_bytes_are_what_the_library_writes(tmp_path):
  folder = rc.write_checkpoint("random:gpt2?seed=2", tmp_path / "g")
  raw = (folder / "model.safetensors").read_bytes()
  assert safetensors_save(load_file(str(folder / "model.safetensors")), metadata={"format": "pt"}) == raw
  marker = json.loads((folder / rc.MARKER).read_text())
  assert marker["spec"] == "random:gpt2?seed=2" and marker["key"] == rc.parse_spec("random:gpt2?seed=2").key
  assert marker["files"]["model.safetensors"]["sha256"] == hashlib.sha256(raw).hexdigest()


def _library_tokenizer(add_bos: bool) -> Tokenizer:
  """The same tokenizer through the tokenizers API: GPT-2's byte alphabet in GPT-2's order."""
  symbols = [sym for _, sym in rc._bytes_to_unicode()]  # pylint: disable=protected-access
  assert sorted(symbols) == sorted(pre_tokenizers.ByteLevel.alphabet())
  tok = Tokenizer(tok_models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<s>", "</s>", "<pad>")])
  if add_bos:
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                                       special_tokens=[("<s>", 256)])
  return tok


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tokenizer(family):
  folder = resolve_checkpoint_dir(f"random:{family}")
  tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
  ref = _library_tokenizer(add_bos=family == "llama")
  assert tok.get_vocab_size() == rc.NUM_TOKENS
  assert [tok.token_to_id(t) for t in ("!", "<s>", "</s>", "<pad>")] == [0, 256, 257, 258]
  cfg = json.loads((folder / "config.json").read_text())
  assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (256, 257, 258)
  for text in TEXTS + ["", "  two  spaces\nand\ttabs"]:
    enc = tok.encode(text)
    assert enc.ids == ref.encode(text).ids
    assert tok.decode(enc.ids) == text  # Specials are skipped when decoding.
    assert len(tok.encode(text, add_special_tokens=False).ids) == len(text.encode("utf-8"))  # One token a byte.
  assert tokenize_lib.special_tokens(tok) == (([256], []) if family == "llama" else ([], []))


# ------------------------------------------------------------------ the cache


def test_spec_syntax_and_canonical_form():
  a = rc.parse_spec("random:llama?seed=0&num_hidden_layers=3&hidden_size=64&rope_theta=500000")
  assert str(a) == "random:llama?hidden_size=64&num_hidden_layers=3&rope_theta=500000.0"
  assert rc.parse_spec(str(a)) == a and rc.parse_spec(str(a)).key == a.key
  assert rc.parse_spec("random:llama?hidden_size=32&seed=0") == rc.parse_spec("random:llama")
  assert rc.RandomSpec.make("llama", hidden_size=64, num_hidden_layers=3, rope_theta=500000) == a
  assert str(rc.parse_spec("random:gpt2?")) == "random:gpt2"
  assert rc.parse_spec("random:qwen2?tie_word_embeddings=FALSE")["tie_word_embeddings"] is False


def test_materialize_reuses_and_repairs(tmp_path, monkeypatch):
  monkeypatch.setenv(rc.CACHE_ENV, str(tmp_path / "c"))
  spec = rc.parse_spec("random:qwen2?seed=4")
  folder = resolve_checkpoint_dir("random:qwen2?seed=4")
  assert folder == tmp_path / "c" / f"qwen2-{spec.key}" and len(spec.key) == 64
  weights = folder / "model.safetensors"
  stamp = weights.stat().st_mtime_ns
  assert resolve_checkpoint_dir("random:qwen2?num_hidden_layers=2&seed=4") == folder  # A default spelled out.
  assert weights.stat().st_mtime_ns == stamp  # Reused, not rewritten.
  good = weights.read_bytes()
  weights.write_bytes(good[:100])  # Truncated: rewritten whole.
  (tmp_path / "c" / f".{spec.folder_name}.tmp-dead").mkdir()  # Left by a killed writer.
  assert rc.materialize(spec) == folder and weights.read_bytes() == good
  assert not list((tmp_path / "c").glob(".*.tmp-*"))


def test_concurrent_writers_build_once(tmp_path):
  with concurrent.futures.ThreadPoolExecutor(6) as pool:
    folders = list(pool.map(lambda _: rc.materialize("random:gpt_neox?seed=9", tmp_path), range(6)))
  assert len(set(folders)) == 1
  assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [folders[0].name]


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.delenv(rc.CACHE_ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert rc.default_cache_dir() == tmp_path / "w2sg_jax" / "random_checkpoints"
  monkeypatch.setenv(rc.CACHE_ENV, "~/elsewhere")
  assert rc.default_cache_dir() == Path("~/elsewhere").expanduser()


def test_plan_reads_the_config_without_weights(tmp_path, monkeypatch):
  from w2sg_jax import plan  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv(rc.CACHE_ENV, str(tmp_path / "never"))
  assert plan.hf_config("random:qwen2?hidden_size=64") == rc.parse_spec("random:qwen2?hidden_size=64").hf_config()
  assert not (tmp_path / "never").exists()
  with pytest.raises(plan.PlanError, match="families are"):
    plan.hf_config("random:bert")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("spec,match", [
    ("random:bert", r"Unknown random checkpoint family 'bert'; the families are gpt2, gpt_neox, llama, qwen2"),
    ("random:llama?hidden=32", r"does not take 'hidden'; its keys are .*hidden_size"),
    ("random:gpt2?rope_theta=10", r"random:gpt2 does not take 'rope_theta'"),
    ("random:qwen2?attention_bias=true", r"random:qwen2 does not take 'attention_bias'"),
    ("random:llama?hidden_size=big", r"random:llama: hidden_size='big' must be an integer"),
    ("random:llama?tie_word_embeddings=maybe", r"tie_word_embeddings='maybe' must be true or false"),
    ("random:llama?hidden_size", r"'hidden_size' is not key=value"),
    ("random:llama?seed=1&seed=2", r"'seed' is given twice"),
    ("random:llama?vocab_size=100", r"vocab_size=100 is smaller than the tokenizer's 259 ids"),
    ("random:llama?num_attention_heads=3", r"hidden_size=32 is not a multiple of num_attention_heads=3; set head_dim"),
    ("random:llama?num_key_value_heads=3", r"num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    ("random:llama?rope_factor=4", r"rope_factor has no effect with rope_type='default'"),
    ("random:llama?rope_type=linear&low_freq_factor=2", r"low_freq_factor has no effect with rope_type='linear'"),
    ("random:llama?rope_type=yarn", r"rope_type='yarn'; use one of default, linear, llama3"),
    ("random:llama?hidden_act=tanh", r"hidden_act='tanh' is not supported"),
    ("random:gpt_neox?rotary_pct=0.1", r"rotary_pct=0.1 rotates 1 of each head's 16 dimensions"),
    ("random:llama?dtype=int8", r"dtype='int8'; use one of float32, bfloat16, float16"),
    ("random:llama?shards=99", r"shards=99 exceeds the checkpoint's 21 tensors"),
    ("random:llama?std=-1", r"std=-1.0 must be a finite number > 0"),
    ("random:llama?num_hidden_layers=0", r"num_hidden_layers=0 must be >= 1"),
    ("llama", r"is not a random checkpoint spec"),
])
def test_errors(spec, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    rc.write_checkpoint(spec, tmp_path / "x")
  if spec.startswith("random:"):
    with pytest.raises(ValueError, match=match):
      load_pretrained(spec)
