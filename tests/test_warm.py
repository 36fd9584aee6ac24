"""Warm is free: a rerun that trains nothing compiles nothing, and reads each run's metrics from its entry."""

import json
import os

import jax
import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import cache as cache_lib
from w2sg_jax import config_lib, engines, losses, pipeline, stages, tasks
from tests.helpers.compiles import count_compilations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def _run(root, workdir="run"):
  config = config_lib.load_config(
      os.path.join(REPO, "experiments", "synthetic.py:smoke"),
      {"student.losses": ("xent", "kl"), "cache_dir": str(root / "cache")})
  return pipeline.Pipeline(schema.Experiment.from_configdict(config), str(root / workdir), tasks.get(config.task)).run()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("warm")
  with count_compilations() as cold_compiled:
    cold = _run(root)
  with count_compilations() as warm_compiled:
    warm = _run(root)
  return root, cold, warm, cold_compiled, warm_compiled


def _student_entries(cache_dir):
  root = os.path.join(cache_dir, "student")
  return [os.path.join(root, d) for d in sorted(os.listdir(root)) if not d.startswith(".")]


def _manifest(entry_dir):
  with open(os.path.join(entry_dir, cache_lib.MANIFEST)) as f:
    return json.load(f)


def test_a_warm_rerun_compiles_no_program(two_runs):
  _, cold, warm, cold_compiled, warm_compiled = two_runs
  assert sum(cold_compiled.values()) > 0  # The counter sees compilations at all.
  assert warm["cache"]["computed"] == []
  assert dict(warm_compiled) == {}, f"a warm rerun compiled {dict(warm_compiled)}"
  assert warm["profile"]["students"].get("programs_compiled", 0) == 0
  assert warm["profile"]["students"]["metrics_computed"] == 0
  assert [r["test_accuracy"] for r in warm["runs"]] == [r["test_accuracy"] for r in cold["runs"]]
  assert [r["misfit_kl"] for r in warm["runs"]] == [r["misfit_kl"] for r in cold["runs"]]


def test_the_profile_names_each_stage_and_its_parts(two_runs):
  root, cold, _, _, _ = two_runs
  saved = json.loads((root / "run" / "results.json").read_text())
  assert set(saved["profile"]) >= {"data", "weak", "ceiling", "students"}
  students = cold["profile"]["students"]
  assert {"total_s", "labels_s", "runs_s", "train_s", "metrics_s", "compile_s"} <= set(students)
  # The cold run trained the students; its programs may come from an earlier run in this process
  # (`engines._vmap_program` is built once per graph, loss, optimizer, steps and runs), so 0 is possible.
  assert students["train_s"] > 0 and isinstance(students["programs_compiled"], int)
  assert students["train_s"] <= students["runs_s"] <= students["total_s"] + 1e-6


def test_cached_metrics_equal_the_metrics_recomputed_from_the_logits(two_runs):
  root, cold, warm, _, _ = two_runs
  by_entry = {r["cache_entry"]: r for r in warm["runs"]}
  config = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"),
                                  {"cache_dir": str(root / "cache")})
  labels = tasks.get(config.task).splits(schema.Experiment.from_configdict(config), str(root / "cache"))["test"].labels
  for entry_dir in _student_entries(root / "cache"):
    metrics = _manifest(entry_dir)["info"][stages.METRICS_INFO]
    logits = np.load(os.path.join(entry_dir, stages.TEST_LOGITS))
    run = by_entry[entry_dir]
    weak_store = [s for s in _weak_test_stores(root / "cache") if s.hash == metrics["misfit"]["weak_test"]]
    assert len(weak_store) == 1
    weak = weak_store[0].probs
    ev = stages.evaluate(logits, labels)
    kl = float(np.mean(jax.jit(losses.get("kl"))(logits, weak)))
    tv = float(np.mean(jax.jit(losses.get("tv"))(logits, weak)))
    assert metrics["test_accuracy"] == pytest.approx(ev["test_accuracy"], abs=1e-6)
    assert metrics["test_auroc"] == pytest.approx(ev["test_auroc"], abs=1e-6)
    assert metrics["misfit"]["kl"] == pytest.approx(kl, abs=1e-6)
    assert metrics["misfit"]["tv"] == pytest.approx(tv, abs=1e-6)
    assert (run["test_accuracy"], run["misfit_kl"], run["misfit_tv"]) == (
        metrics["test_accuracy"], metrics["misfit"]["kl"], metrics["misfit"]["tv"])
  assert len(by_entry) == len(cold["runs"])


def _weak_test_stores(cache_dir):
  from w2sg_jax.labels import store as store_lib
  root = os.path.join(cache_dir, "labels")
  out = [store_lib.open_store(os.path.join(root, d)) for d in sorted(os.listdir(root)) if not d.startswith(".")]
  return [s for s in out if s.components.get("kind") == "weak" and s.components.get("split") == "test"]


def test_entries_written_before_metrics_were_stored_still_report_them(two_runs, monkeypatch):
  root, _, warm, _, _ = two_runs
  stripped = 0
  for directory in (*_student_entries(root / "cache"), *[
      os.path.join(root / "cache" / "ceiling", d) for d in os.listdir(root / "cache" / "ceiling")
      if not d.startswith(".")]):
    manifest = _manifest(directory)
    manifest["info"].pop(stages.METRICS_INFO)  # As an entry of the previous format has it.
    with open(os.path.join(directory, cache_lib.MANIFEST), "w") as f:
      json.dump(manifest, f)
    stripped += 1

  def no_training(*args, **kwargs):
    raise AssertionError("an entry without stored metrics was trained again")

  monkeypatch.setattr(engines, "train_runs", no_training)
  with count_compilations() as compiled:
    old = _run(root, workdir="run_old_entries")
  assert old["cache"]["computed"] == []
  assert dict(compiled) == {}  # The fallback is numpy.
  computed = old["profile"]["students"]["metrics_computed"] + old["profile"]["ceiling"]["metrics_computed"]
  assert computed == stripped
  for a, b in zip(old["runs"], warm["runs"]):
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_auroc"] == pytest.approx(b["test_auroc"], abs=1e-12)
    assert a["misfit_kl"] == pytest.approx(b["misfit_kl"], abs=1e-9)
    assert a["misfit_tv"] == pytest.approx(b["misfit_tv"], abs=1e-9)
  assert old["ceiling"]["test_accuracy"] == warm["ceiling"]["test_accuracy"]


@pytest.mark.parametrize("name", ["kl", "tv"])
def test_numpy_misfits_match_the_library_losses(name):
  rng = np.random.default_rng(0)
  logits = np.concatenate([rng.normal(size=(64, 3)) * 3, [[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]]]).astype(np.float32)
  weak = rng.dirichlet(np.ones(3), size=66).astype(np.float32)
  weak[:4] = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]  # Exactly 0 and 1.
  weak[-2:] = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], np.float32)  # KL 2e4 on the first.
  expected = np.asarray(jax.jit(losses.get(name))(logits, weak))
  assert np.isfinite(expected).all()
  got = stages._NUMPY_DIVERGENCES[name](logits, weak)  # pylint: disable=protected-access
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert stages._mean_divergence(name, logits, weak) == pytest.approx(float(expected.mean()), rel=1e-5, abs=1e-6)  # pylint: disable=protected-access
