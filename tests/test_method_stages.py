"""Methods as a pipeline axis: the stores each method derives, their keys, their cost, and the report."""

import json
import os

import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, engines, losses, pipeline, tasks, validate
from w2sg_jax import methods as methods_lib
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib
from w2sg_jax.models import FeatureHead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("single", "ensemble", "disagreement_filter", "probe_relabel", "probe_filter", "s2s")


def _config(**overrides):
  c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), {
      "seeds": 1, "data.sizes.weak_train": 256, "data.sizes.w2s_train": 512, "data.sizes.test": 256,
      "student.losses": ("js",), "student.noise.rates": (0.0, 0.4), "student.methods": METHODS,
      "student.method.ensemble_size": 2, "student.method.s2s_rounds": 1, "student.method.probe_k": 8,
      "student.train.epochs": 2, **overrides})
  return c


def _run(tmp, config, workdir="run"):
  with config.unlocked():
    config.cache_dir = str(tmp / "cache")
  p = pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp / workdir), tasks.get(config.task))
  return p.run(), p.cache


def _student_methods(cache) -> list[str]:
  """The method of every student run this cache computed (from the runs' manifests)."""
  out = []
  for e in cache.computed("student"):
    with open(os.path.join(cache.directory(e.stage, e.key), "manifest.json")) as f:
      components = json.load(f)["components"]
    out.append(components.get("method", {}).get("name", "single"))
  return sorted(out)


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("methods")
  results, cache = _run(tmp, _config())
  return tmp, results, cache


def test_every_method_loss_noise_seed_is_one_run_with_its_cost(methods_run):
  tmp, results, _ = methods_run
  runs = results["runs"]
  assert len(runs) == len(METHODS) * 1 * 2
  assert sorted({r["method"] for r in runs}) == sorted(METHODS)
  for r in runs:
    cost = r["cost"]
    assert cost["complete"] and cost["train_flops"] > 0 and cost["eval_flops"] > 0 and cost["peak_bytes"] > 0
    assert cost["flops"] == pytest.approx(cost["train_flops"] + cost["eval_flops"])
    assert cost["stored_bytes"] > 0 and cost["wall_s"] > 0
  by = {(r["method"], r["loss"], r["noise"]): r for r in runs}
  for loss in ("js",):
    single, ens, s2s = by[("single", loss, 0.0)], by[("ensemble", loss, 0.0)], by[("s2s", loss, 0.0)]
    assert ens["weak_models"] == 2 and single["weak_models"] == 1
    assert ens["cost"]["models_trained"] == 3 and single["cost"]["models_trained"] == 2  # + the student itself
    assert s2s["cost"]["models_trained"] == 3  # The weak model, round 0's student and round 1's.
    assert ens["cost"]["train_flops"] > single["cost"]["train_flops"]
  # The headline summary is single's; methods.json has every run with the columns the report needs.
  assert {(row["loss"], row["noise"]) for row in results["summary"]} == {("js", n) for n in (0.0, 0.4)}
  written = json.loads((tmp / "run" / "methods.json").read_text())
  assert len(written["runs"]) == len(runs)
  assert {"method", "loss", "noise", "seed", "test_accuracy", "pgr", "weak_models", "train_flops", "wall_s",
          "peak_bytes"} <= set(written["runs"][0])
  vs = [g for g in written["groups"] if g["method"] != "single"]
  assert vs and all("vs_single" in g for g in vs)
  md = (tmp / "run" / "methods.md").read_text()
  assert "**ensemble**" in md and "| method | loss |" in md
  for png in ("methods_pareto.png", "methods_noise.png"):
    assert (tmp / "run" / png).stat().st_size > 1000


def _stores_of(cache_dir, kind):
  root = os.path.join(cache_dir, "labels")
  out = []
  for d in sorted(os.listdir(root)):
    if not d.startswith("."):
      s = store_lib.open_store(os.path.join(root, d))
      if s.components.get("kind") == kind:
        out.append(s)
  return out


def test_ensemble_store_is_the_mean_of_its_members_and_the_filter_keeps_unanimous_rows(methods_run):
  tmp, _, _ = methods_run
  cache_dir = str(tmp / "cache")
  by_hash = {}
  root = os.path.join(cache_dir, "labels")
  for d in os.listdir(root):
    if not d.startswith("."):
      s = store_lib.open_store(os.path.join(root, d))
      by_hash[s.hash] = s
  ensembles = _stores_of(cache_dir, "ensemble")
  assert ensembles
  for ens in ensembles:
    members = np.stack([by_hash[h].probs for h in ens.components["members"]])
    np.testing.assert_allclose(ens.probs, members.astype(np.float64).mean(0), rtol=0, atol=2e-7)
  filters = _stores_of(cache_dir, "disagreement_filter")
  assert filters
  for f in filters:
    members = np.stack([by_hash[h].probs for h in f.components["members"]])
    votes = members.argmax(-1)
    unanimous = (votes == votes[0]).all(0)  # threshold 1 with two members: both vote the same class.
    np.testing.assert_array_equal(f.weights, unanimous.astype(np.float32))
    np.testing.assert_array_equal(f.probs, by_hash[f.components["of"]].probs)


def test_probe_stores_match_an_independent_knn(methods_run):
  tmp, _, _ = methods_run
  cache_dir = str(tmp / "cache")
  config = _config()
  with config.unlocked():
    config.cache_dir = cache_dir
  task = tasks.get("synthetic")
  splits = task.splits(schema.Experiment.from_configdict(config), cache_dir)
  x = splits["w2s_train"].inputs["strong"]["features"].astype(np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  probes = _stores_of(cache_dir, "probe")
  assert probes
  root = os.path.join(cache_dir, "labels")
  by_hash = {store_lib.open_store(os.path.join(root, d)).hash: store_lib.open_store(os.path.join(root, d))
             for d in os.listdir(root) if not d.startswith(".")}
  for probe in probes:
    weak = by_hash[probe.components["of"]].probs.astype(np.float64)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :8]
    expected = weak[nearest].mean(1)
    np.testing.assert_allclose(probe.probs, expected, atol=1e-5)
  for relabelled in _stores_of(cache_dir, "probe_relabel"):
    weak, probe = by_hash[relabelled.components["of"]].probs, by_hash[relabelled.components["probe"]].probs
    differ = weak.argmax(-1) != probe.argmax(-1)
    np.testing.assert_array_equal(relabelled.probs[~differ], weak[~differ])
    np.testing.assert_array_equal(relabelled.probs[differ].argmax(-1), probe[differ].argmax(-1))


@pytest.mark.slow
def test_keys_changing_k_or_probe_k_recompute_only_the_runs_that_read_them(methods_run):
  tmp, results, _ = methods_run
  # Another ensemble size: the ensemble and filter students (and one more weak member), nothing else.
  _, cache = _run(tmp, _config(**{"student.method.ensemble_size": 3}), workdir="run_k3")
  assert _student_methods(cache) == sorted(["ensemble"] * 2 + ["disagreement_filter"] * 2)
  assert len(cache.computed("weak")) == 1
  # Another probe k: the probe students only.
  _, cache = _run(tmp, _config(**{"student.method.probe_k": 5}), workdir="run_k5")
  assert _student_methods(cache) == sorted(["probe_relabel"] * 2 + ["probe_filter"] * 2)
  # Another combiner: ensemble and filter only.
  _, cache = _run(tmp, _config(**{"student.method.combiner": "product"}), workdir="run_product")
  assert _student_methods(cache) == sorted(["ensemble"] * 2 + ["disagreement_filter"] * 2)
  # The same config again: nothing.
  _, cache = _run(tmp, _config(), workdir="run_again")
  assert _student_methods(cache) == [] and not cache.computed("labels")


def test_an_ensemble_of_one_equals_single_exactly(methods_run):
  tmp, _, _ = methods_run
  results, _ = _run(tmp, _config(**{"student.methods": ("single", "ensemble"), "student.method.ensemble_size": 1}),
                    workdir="run_k1")
  by = {(r["method"], r["loss"], r["noise"], r["seed"]): r for r in results["runs"]}
  for (method, loss, noise, seed), r in by.items():
    if method == "ensemble":
      single = by[("single", loss, noise, seed)]
      assert r["test_accuracy"] == single["test_accuracy"] and r["misfit_kl"] == single["misfit_kl"]
      np.testing.assert_array_equal(np.load(os.path.join(r["cache_entry"], "test_logits.npy")),
                                    np.load(os.path.join(single["cache_entry"], "test_logits.npy")))


def test_a_bagged_member_learns_from_its_bootstrap_resample_counts(methods_run):
  tmp, _, _ = methods_run
  bagged = [s for s in _stores_of(str(tmp / "cache"), "truth") if "bootstrap" in s.components]
  assert bagged
  for s in bagged:
    b = s.components["bootstrap"]
    rows = methods_lib.bootstrap_indices(b["seed"], len(s), k=b["member"] + 1)[b["member"]]
    np.testing.assert_array_equal(s.weights, np.bincount(rows, minlength=len(s)).astype(np.float32))


def test_rows_weighted_zero_do_not_change_training(tmp_path):
  """Whatever labels a weight-0 row holds, the vmapped runs end bit for bit the same."""
  rng = np.random.default_rng(0)
  n, d = 64, 8
  ids = [f"r{i}" for i in range(n)]
  x = rng.normal(size=(n, d)).astype(np.float32)
  probs = rng.dirichlet([1, 1], size=n).astype(np.float32)
  weights = (rng.random(n) < 0.5).astype(np.float32)
  other = np.where(weights[:, None] > 0, probs, probs[:, ::-1])
  logits = []
  for i, p in enumerate((probs, other)):
    store = store_lib.write_store(tmp_path / f"s{i}", ids, p, components={"t": i})
    store = type(store)(store.directory, store.meta, store.ids, store.probs, weights)
    trained = engines.train_runs(
        [engines.RunSpec(seed=1, store=store)], engine="vmap", make_model=lambda r: FeatureHead(d, (), 2, rngs=r),
        train_ids=ids, train_inputs={"features": x}, eval_inputs={"test": {"features": x}},
        loss_fn=losses.get("js"), progress=False, train_cfg=schema.resolve_block(
            schema.TrainConfig, config_lib.train_config(batch_size=16, epochs=2, learning_rate=1e-2), "student.train."))
    logits.append(trained.logits["test"][0])
  np.testing.assert_array_equal(logits[0], logits[1])
  # ... and a LabelStream gives them weight 0 in each batch's mask.
  store = type(store)(store.directory, store.meta, store.ids, store.probs, weights)
  stream = stream_lib.LabelStream(ids, {"features": x}, store, batch_size=16, num_steps=4, seed=0)
  batch = stream.batch(0)
  np.testing.assert_array_equal(batch["mask"], weights[stream.order[0]])


def test_store_weights_round_trip_and_a_changed_weights_file_is_refused(tmp_path):
  ids = ["a", "b", "c"]
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], np.float32)
  w = np.array([1, 0, 2], np.float32)
  meta = store_lib.store_meta(ids, probs, {"k": 1}, w)
  folder = tmp_path / "s"
  folder.mkdir()
  store_lib.write_store_files(str(folder), ids, probs, meta, w)
  store = store_lib.open_store(folder)
  np.testing.assert_array_equal(store.weights, w)
  np.save(folder / store_lib.WEIGHTS_FILE, np.array([1, 1, 2], np.float32))
  with pytest.raises(store_lib.StoreMismatchError, match="weights_sha256"):
    store_lib.open_store(folder)
  with pytest.raises(ValueError, match="every row weight is 0"):
    store_lib.validate_weights(np.zeros(3), 3)


def test_a_method_the_task_cannot_run_is_refused_before_compute():
  config = _config(**{"student.methods": ("single", "bootstrap")})
  with pytest.raises(validate.ConfigError) as e:
    validate.check_config(config, tasks.get("synthetic"))
  assert "student.methods[1]='bootstrap'" in str(e.value) and "intermediate model" in str(e.value)
  with pytest.raises(Exception) as e:
    validate.check_config(_config(**{"student.methods": ("single", "ensembel")}), tasks.get("synthetic"))
  assert "unknown method" in str(e.value) and "disagreement_filter" in str(e.value)


def test_the_plan_counts_the_extra_weak_models_and_rounds():
  from w2sg_jax import config as schema
  from w2sg_jax import plan

  config = schema.Experiment.from_configdict(config_lib.load_config(
      os.path.join(REPO, "experiments", "paper_hh.py:methods"))).to_configdict()
  plans = {"weak": {"num_steps": 10, "eval_batch_size": 8}, "strong": {"num_steps": 100, "eval_batch_size": 8}}
  counts = plan.whole_config_counts(schema.Experiment.from_configdict(config), plans)
  seeds, rates, n_losses = 3, 5, 6
  assert counts["weak"]["runs"] == seeds * 3  # per_seed weak models, each with two more ensemble members
  cells = seeds * rates * n_losses
  by = counts["strong"]["runs_by_method"]
  assert by == {"single": cells, "ensemble": cells, "disagreement_filter": cells, "s2s": 3 * cells}
  assert counts["strong"]["runs"] == 6 * cells + seeds
  single = config_lib.load_config(os.path.join(REPO, "experiments", "paper_hh.py"))
  single = schema.Experiment.from_configdict(single).to_configdict()
  assert plan.whole_config_counts(schema.Experiment.from_configdict(single), plans)["weak"]["runs"] == seeds


@pytest.mark.slow
def test_tweets_methods_smoke_end_to_end_and_the_bootstrap_layer_key(tmp_path):
  """The shipped comparison on the real tweets and MiniLM: every method with its cost; another
  bootstrap layer recomputes the features, the intermediate models and the bootstrap students only."""
  config = config_lib.load_config(os.path.join(REPO, "experiments", "tweets_methods.py:smoke"))
  results, _ = _run(tmp_path, config)
  runs = results["runs"]
  assert sorted({r["method"] for r in runs}) == sorted(
      ("single", "ensemble", "disagreement_filter", "probe_relabel", "probe_filter", "bootstrap", "s2s"))
  assert all(r["cost"]["complete"] and r["cost"]["flops"] > 0 for r in runs)
  boot = [r for r in runs if r["method"] == "bootstrap"]
  single = [r for r in runs if r["method"] == "single"]
  assert all(b["cost"]["models_trained"] == 3 for b in boot)  # weak, intermediate, student
  assert min(b["cost"]["flops"] for b in boot) > max(s["cost"]["flops"] for s in single)
  md = (tmp_path / "run" / "methods.md").read_text()
  assert "**bootstrap**" in md and "**s2s**" in md
  config = config_lib.load_config(os.path.join(REPO, "experiments", "tweets_methods.py:smoke"),
                                  {"student.method.bootstrap_layer": 2})
  _, cache = _run(tmp_path, config, workdir="run_layer2")
  assert _student_methods(cache) == ["bootstrap"] * 8
  assert len(cache.computed("intermediate")) == 4 and not cache.computed("weak")
