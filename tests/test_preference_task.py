"""The preference task: splits, presentation order, left truncation, the pair model, and the full smoke run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import losses as losses_lib
from w2sg_jax import config_lib, tasks
from w2sg_jax.data import preference as preference_lib
from w2sg_jax.tasks import preference as pref

REPO = Path(__file__).resolve().parents[1]
TINY_GPT2 = REPO / "tests" / "fixtures" / "models" / "tiny_gpt2"
HH_FIXTURE = REPO / "tests" / "fixtures" / "data" / "hh-rlhf"


def load_experiment(name: str, variant: str | None = None, **overrides):
  return config_lib.load_config(f"{REPO / 'experiments' / name}.py:{variant or ''}", overrides)


def typed(config) -> schema.Experiment:
  """The experiment the task's functions take: the ConfigDict converted at the boundary."""
  return schema.Experiment.from_configdict(config)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def smoke(cache_dir):
  config = typed(load_experiment("paper_hh", "smoke", cache_dir=cache_dir))
  return config, pref.prepare(config, cache_dir)


def raw_pairs(cache_dir) -> dict[str, tuple[str, str]]:
  """id -> (chosen, rejected), read straight from the builder (train + test)."""
  out = {}
  for split in ("train", "test"):
    d = preference_lib.load_preferences(
        "hh_rlhf", "harmless-base", split, data_dir=os.path.join(cache_dir, "tfds"), manual_dir=str(HH_FIXTURE),
        download=False,
    )
    out.update({i: (c, r) for i, c, r in zip(d["id"], d["chosen"], d["rejected"])})
  return out


# ---------------------------------------------------------------- order


def test_presentation_order_is_deterministic_balanced_and_per_id():
  ids = np.array([f"pair-{i}" for i in range(10_000)])
  first = pref.a_is_chosen(ids, seed=0)
  np.testing.assert_array_equal(first, pref.a_is_chosen(ids, seed=0))
  # Binomial(10000, 1/2): std 0.005, so 0.5 +- 0.02 is a 4-sigma band.
  assert abs(first.mean() - 0.5) < 0.02
  # Per id, not per position: a subset (in another order) keeps each pair's order.
  sub = ids[::-7]
  np.testing.assert_array_equal(pref.a_is_chosen(sub, seed=0), first[::-7])
  # Another seed is another, independent draw.
  agree = (pref.a_is_chosen(ids, seed=1) == first).mean()
  assert 0.46 < agree < 0.54
  # The rule as documented: first byte of sha256("seed:id") odd.
  assert first[3] == (hashlib.sha256(b"0:pair-3").digest()[0] % 2 == 1)


def test_present_pairs_labels_one_iff_a_is_chosen():
  chosen = np.array(["c0", "c1", "c2"], dtype=object)
  rejected = np.array(["r0", "r1", "r2"], dtype=object)
  a, b, labels = pref.present_pairs(chosen, rejected, np.array([True, False, True]))
  assert list(a) == ["c0", "r1", "c2"] and list(b) == ["r0", "c1", "r2"]
  np.testing.assert_array_equal(labels, [1, 0, 1])
  assert labels.dtype == np.int32


# ---------------------------------------------------------------- splits


def test_splits_sizes_disjoint_and_order_matches_labels(smoke, cache_dir):
  config, prepared = smoke
  splits = prepared["splits"]
  assert {k: len(v) for k, v in splits.items()} == {"weak_train": 16, "w2s_train": 16, "test": 16}
  all_ids = np.concatenate([s.ids for s in splits.values()])
  assert len(set(all_ids)) == 48
  truth = raw_pairs(cache_dir)
  assert set(all_ids) <= set(truth)
  labels = np.concatenate([s.labels for s in splits.values()])
  assert 0 < labels.mean() < 1  # Both orders occur, so AUROC is defined.
  for split in splits.values():
    np.testing.assert_array_equal(split.labels, pref.a_is_chosen(split.ids, config.data.order_seed))


def test_tokens_are_the_left_truncated_presented_transcripts(smoke, cache_dir):
  """Reference: the raw tokenizer on the texts, keeping the LAST max_length tokens."""
  config, prepared = smoke
  tok = tokenizers.Tokenizer.from_file(str(TINY_GPT2 / "tokenizer.json"))
  max_length = config.data.max_length
  truth = raw_pairs(cache_dir)
  for name, split in prepared["splits"].items():
    inputs = split.inputs["weak"]
    assert set(inputs) == set(pref.INPUT_KEYS)
    assert inputs["a_ids"].shape == inputs["b_ids"].shape and inputs["a_ids"].shape[1] <= max_length
    truncated_pairs = 0
    for i, pid in enumerate(split.ids):
      chosen, rejected = truth[pid]
      a, b = (chosen, rejected) if split.labels[i] == 1 else (rejected, chosen)
      cut = False
      for text, side in ((a, "a"), (b, "b")):
        full = tok.encode(text, add_special_tokens=False).ids
        want = full[-max_length:]
        n = int(inputs[f"{side}_mask"][i].sum())
        assert inputs[f"{side}_ids"][i, :n].tolist() == want
        assert inputs[f"{side}_mask"][i, :n].all() and not inputs[f"{side}_mask"][i, n:].any()
        cut |= len(full) > max_length
      truncated_pairs += cut
    fp = prepared["fingerprint"]["truncated_pairs"][name]
    assert fp == {"weak": truncated_pairs, "strong": truncated_pairs}
    assert len(prepared["truncated_ids"][name]) == truncated_pairs
    # Same tokenizer on both sides: the strong view is the weak view.
    assert split.inputs["strong"] is split.inputs["weak"]
  assert sum(v["weak"] for v in prepared["fingerprint"]["truncated_pairs"].values()) > 0  # The fixture exercises it.


def test_truncation_count_matches_encode_on_a_crafted_batch():
  tok = tokenizers.Tokenizer.from_file(str(TINY_GPT2 / "tokenizer.json"))
  a = ["short", "x" * 200, "\n\nHuman: hi\n\nAssistant: " + "y" * 100]
  b = ["tiny", "also short", "ok"]
  inputs, cut = pref.encode_pairs(tok, a, b, max_length=32)
  lens = [len(tok.encode(t, add_special_tokens=False).ids) for t in a]
  np.testing.assert_array_equal(cut, [n > 32 for n in lens])
  # The end survives left truncation: the last token of the text is the last real token.
  last = tok.encode(a[2], add_special_tokens=False).ids[-1]
  assert inputs["a_ids"][2, int(inputs["a_mask"][2].sum()) - 1] == last


def test_too_little_data_is_a_clear_error(cache_dir):
  config = load_experiment("paper_hh", "smoke", cache_dir=cache_dir)
  config.data.sizes.weak_train = 40
  config.data.sizes.w2s_train = 40
  with pytest.raises(ValueError, match=r"needs 96 pairs.*hold only \d+.*Lower data.sizes"):
    pref.prepare(typed(config), cache_dir)


def test_unknown_dataset_is_a_clear_error(cache_dir):
  """Refused at the boundary (the schema's check), before the task reads anything."""
  config = load_experiment("paper_hh", "smoke", cache_dir=cache_dir)
  config.data.dataset = "imdb"
  with pytest.raises(schema.ConfigError, match="data.dataset='imdb'.*hh_rlhf, cai_harmless"):
    typed(config)


def test_cai_smoke_data(cache_dir):
  config = typed(load_experiment("paper_cai", "smoke", cache_dir=cache_dir))
  prepared = pref.prepare(config, cache_dir)
  assert {k: len(v) for k, v in prepared["splits"].items()} == {"weak_train": 16, "w2s_train": 16, "test": 16}
  assert prepared["fingerprint"]["dataset"] == "cai_harmless"


def test_fingerprint_pins_data_order_and_tokenizer(smoke, cache_dir):
  config, prepared = smoke
  fp = prepared["fingerprint"]
  assert fp["max_length"] == 64 and fp["truncation_side"] == "left" and fp["pool_size"] == 50
  other = config.replace(data=config.data.replace(order_seed=1))
  fp_other = pref.prepare(other, cache_dir)["fingerprint"]
  assert fp_other["content_sha256"] != fp["content_sha256"]
  json.dumps(fp)  # Goes into content hashes: must be plain JSON.
  # The tokenizer hash follows the tokenizer's content, not its path.
  tok = tokenizers.Tokenizer.from_file(str(TINY_GPT2 / "tokenizer.json"))
  assert pref.tokenizer_fingerprint(tok) == fp["tokenizers"]["weak"] == fp["tokenizers"]["strong"]
  bert = tokenizers.Tokenizer.from_file(str(REPO / "tests" / "fixtures" / "models" / "tiny_bert" / "tokenizer.json"))
  assert pref.tokenizer_fingerprint(bert) != fp["tokenizers"]["weak"]


# ---------------------------------------------------------------- model


@pytest.mark.slow
def test_pair_model_logits_are_reward_margins(smoke):
  config, prepared = smoke
  task = pref.PreferenceTask()
  model = task.make_model("strong", config)(nnx.Rngs(0))
  # The head starts at zero (margin 0 everywhere); give it weights so the check bites.
  kernel = model.head.out.kernel
  kernel.set_value(jax.random.normal(jax.random.PRNGKey(1), kernel.shape))
  x = {k: jnp.asarray(v[:6]) for k, v in prepared["splits"]["test"].inputs["strong"].items()}
  logits = np.asarray(model(**x))
  assert logits.shape == (6, 2)
  np.testing.assert_array_equal(logits[:, 0], 0.0)
  r_a = np.asarray(model.rewards(x["a_ids"], x["a_mask"]))
  r_b = np.asarray(model.rewards(x["b_ids"], x["b_mask"]))
  np.testing.assert_allclose(logits[:, 1], r_a - r_b, rtol=1e-5, atol=1e-5)
  assert np.abs(logits[:, 1]).max() > 1e-3
  swapped = np.asarray(model(a_ids=x["b_ids"], a_mask=x["b_mask"], b_ids=x["a_ids"], b_mask=x["a_mask"]))
  np.testing.assert_allclose(swapped[:, 1], -logits[:, 1], rtol=1e-5, atol=1e-5)


def test_models_are_independent_and_weak_uses_its_layers(smoke):
  config, _ = smoke
  task = pref.PreferenceTask()
  make = task.make_model("strong", config)
  m1, m2 = make(nnx.Rngs(0)), make(nnx.Rngs(0))
  m1.encoder.wte.embedding.set_value(m1.encoder.wte.embedding[...] + 1.0)
  assert not np.allclose(m1.encoder.wte.embedding[...], m2.encoder.wte.embedding[...])
  weak = task.make_model("weak", config)(nnx.Rngs(0))
  assert len(weak.encoder.blocks) == 1 and len(m2.encoder.blocks) == 2


def test_trainable_follows_finetune_mode(cache_dir):
  config = typed(load_experiment("paper_hh", "smoke", cache_dir=cache_dir))
  task = pref.PreferenceTask()
  model = task.make_model("strong", config)(nnx.Rngs(0))
  count = lambda filt: sum(x.size for x in jax.tree.leaves(nnx.state(model, filt)))
  total = count(nnx.Param)
  assert count(task.trainable("strong", config)) == total  # finetune = full
  config = config.replace(strong=config.strong.replace(finetune="head"))
  assert count(task.trainable("strong", config)) == 32 + 1  # Linear head on 32-d states.
  config = config.replace(strong=config.strong.replace(finetune="top", top_layers=1))
  n_top = count(task.trainable("strong", config))
  assert 33 < n_top < total


def test_max_length_beyond_positions_is_a_clear_error(cache_dir):
  config = load_experiment("paper_hh", "smoke", cache_dir=cache_dir)
  config.data.max_length = 128
  with pytest.raises(ValueError, match="data.max_length <= 64"):
    pref.PreferenceTask().make_model("strong", typed(config))


# ---------------------------------------------------------------- losses and configs


def test_confidence_loss_names_resolve_to_the_confidence_term():
  assert {f"{n}+conf" for n in ("xent", "kl", "js", "tv", "hellinger")} <= set(losses_lib.names())
  logits = jax.random.normal(jax.random.PRNGKey(0), (64, 2)) * 2
  weak = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (64, 2)))
  for base in ("js", "kl", "tv"):
    got = losses_lib.get(f"{base}+conf")(logits, weak, progress=0.5)
    want = losses_lib.get(base, confidence=0.5, warmup=0.1)(logits, weak, progress=0.5)
    plain = losses_lib.get(base)(logits, weak, progress=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(got, plain)
  over = losses_lib.get("js+conf", confidence=0.75)(logits, weak)
  np.testing.assert_allclose(over, losses_lib.get("js", confidence=0.75, warmup=0.1)(logits, weak), rtol=1e-6)
  assert losses_lib.resolve("js+conf") == ("js", {"confidence": 0.5, "warmup": 0.1, "confidence_schedule": "burns"})


@pytest.mark.parametrize("name", ["paper_hh", "paper_cai"])
@pytest.mark.parametrize("variant", [None, "large", "xl", "tpu_small", "smoke"])
def test_experiment_configs(name, variant):
  c = load_experiment(name, variant)
  assert c.task == "preference" and c.student.engine == "data_parallel"
  for loss in c.student.losses:
    losses_lib.get(loss, **dict(c.student.loss_hparams.get(loss, {})))
  if variant is None:
    assert dict(c.data.sizes) == {"weak_train": 4000, "w2s_train": 4000, "test": 4000}
    assert (c.weak.checkpoint, c.strong.checkpoint) == ("gpt2", "gpt2-medium")
    # 9 losses (the paper's, Pearson chi2 in both directions, and tv) with and without +conf.
    assert len(c.student.losses) == 18 and list(c.student.noise.rates) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert c.seeds == 3 and c.data.max_length == 512
    opt = c.student.train.optimizer
    assert (opt.name, opt.learning_rate, opt.schedule, opt.warmup_steps) == ("adam", 1e-5, "cosine", 0)
    assert c.weak.train.epochs == 1 and c.student.train.epochs == 2 and c.student.train.batch_size == 32
  if variant in ("large", "xl"):
    t = c.student.train  # Micro-batches x accumulation = the paper's 32 pairs per update.
    assert t.optimizer.accum_steps > 1 and t.batch_size * t.optimizer.accum_steps == 32
  with pytest.raises(AttributeError):
    c.not_a_key = 1  # Locked: a typo in an override fails.


def test_unknown_variant_names_the_known_ones():
  with pytest.raises(ValueError, match="smoke, tpu_small, large, xl"):
    load_experiment("paper_hh", "tpu_big")


def test_task_is_registered():
  assert isinstance(tasks.get("preference"), pref.PreferenceTask)


# ---------------------------------------------------------------- the full pipeline


def _mtimes(root: Path) -> dict[str, float]:
  return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_smoke_pipeline_end_to_end_and_rerun_skips_everything(tmp_path):
  from w2sg_jax.pipeline import Pipeline

  config = load_experiment("paper_hh", "smoke", cache_dir=str(tmp_path / "cache"))
  workdir = tmp_path / "work"
  first = Pipeline(schema.Experiment.from_configdict(config), str(workdir), tasks.get("preference")).run()

  saved = json.loads((workdir / "results.json").read_text())
  assert saved["task"] == "preference"
  assert len(saved["runs"]) == 3 * 2 * 1  # losses x noise rates x seeds
  assert {r["loss"] for r in saved["runs"]} == {"xent", "js", "js+conf"}
  for r in saved["runs"]:
    assert 0.0 <= r["test_accuracy"] <= 1.0 and np.isfinite(r["test_auroc"])
  assert saved["weak"]["weak_model_runs"] > 0
  assert "| loss |" in (workdir / "summary.md").read_text()
  pngs = sorted(p.name for p in workdir.glob("*.png"))
  assert "accuracy_vs_noise.png" in pngs
  for p in workdir.glob("*.png"):
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # A second run of the same config finds every artifact: nothing trains again.
  before = _mtimes(tmp_path / "cache")
  second = Pipeline(schema.Experiment.from_configdict(config), str(workdir), tasks.get("preference")).run()
  assert second["weak"]["weak_model_runs"] == 0 and second["cache"]["computed"] == []
  assert _mtimes(tmp_path / "cache") == before
  key = lambda r: (r["loss"], r["noise"], r["seed"])
  assert sorted((key(r), r["test_accuracy"]) for r in second["runs"]) == sorted(
      (key(r), r["test_accuracy"]) for r in first["runs"]
  )
  assert second["ceiling"]["test_accuracy"] == first["ceiling"]["test_accuracy"]
