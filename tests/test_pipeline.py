"""The whole pipeline end to end: artifacts, reuse, interruption, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, engines, pipeline, tasks
from w2sg_jax import workdir as workdir_lib
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name="synthetic", variant="smoke", **overrides):
  return config_lib.load_config(os.path.join(REPO, "experiments", f"{name}.py:{variant}"), overrides)


def _run(tmp_path, config, workdir="run", cache="cache"):
  with config.unlocked():
    config.cache_dir = str(tmp_path / cache)
  return pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp_path / workdir), tasks.get(config.task)).run()


def _stores(cache_dir):
  root = os.path.join(cache_dir, "labels")
  return [store_lib.open_store(os.path.join(root, d)) for d in sorted(os.listdir(root)) if not d.startswith(".")]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("synthetic")
  return tmp, _run(tmp, _config())


def test_synthetic_writes_results_schema_and_report(synthetic_run):
  tmp, _ = synthetic_run
  workdir = tmp / "run"
  results = json.loads((workdir / "results.json").read_text())
  config = json.loads((workdir / "config.json").read_text())
  assert config["task"] == "synthetic"
  assert {"test_accuracy", "test_auroc", "name", "params", "trainable_params"} <= set(results["weak"])
  assert {"test_accuracy", "test_auroc", "name", "params", "trainable_params"} <= set(results["ceiling"])
  cfg = _config()
  assert len(results["runs"]) == len(cfg.student.losses) * len(cfg.student.noise.rates) * cfg.seeds
  for run in results["runs"]:
    assert {"loss", "noise", "seed", "test_accuracy", "test_auroc", "pgr", "misfit_kl", "misfit_tv"} <= set(run)
    expected = (run["test_accuracy"] - results["weak"]["test_accuracy"]) / (
        results["ceiling"]["test_accuracy"] - results["weak"]["test_accuracy"])
    assert run["pgr"] == pytest.approx(expected)
    assert run["misfit_kl"] >= 0 and 0 <= run["misfit_tv"] <= 1
  assert len(results["summary"]) == len(cfg.student.losses) * len(cfg.student.noise.rates)
  for row in results["summary"]:
    assert {"n_seeds", "accuracy_mean", "accuracy_std", "pgr_mean", "pgr_ci95"} <= set(row)
    low, high = row["pgr_ci95"]
    assert low <= row["pgr_mean"] <= high
    assert row["n_seeds"] == cfg.seeds
  for name in ("summary.md", "summary.csv", "pgr_by_loss.png", "accuracy_vs_noise.png"):
    assert (workdir / name).stat().st_size > 200, name
  # The weak model learned something and the strong ceiling is above it.
  assert results["ceiling"]["test_accuracy"] > results["weak"]["test_accuracy"] > 0.52


def test_misfit_is_the_mean_divergence_from_the_weak_labels(synthetic_run):
  from w2sg_jax import losses

  tmp, results = synthetic_run
  run = results["runs"][0]
  logits = np.load(os.path.join(run["cache_entry"], "test_logits.npy"))
  weak_test = [s for s in _stores(tmp / "cache") if s.components.get("split") == "test"
               and s.components.get("kind") == "weak"][0].probs
  q = np.exp(logits - logits.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  tv = 0.5 * np.abs(weak_test - q).sum(-1).mean()
  kl = np.sum(np.where(weak_test > 0, weak_test * (np.log(np.maximum(weak_test, 1e-30)) - np.log(q)), 0), -1).mean()
  assert run["misfit_tv"] == pytest.approx(tv, rel=1e-4, abs=1e-6)
  assert run["misfit_kl"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
  del losses


def test_rerun_skips_every_stage(synthetic_run, monkeypatch):
  tmp, first = synthetic_run

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(engines, "train_runs", no_training)
  second = _run(tmp, _config())
  assert second["weak"]["weak_model_runs"] == 0
  assert second["cache"]["computed"] == []
  assert [r["test_accuracy"] for r in second["runs"]] == [r["test_accuracy"] for r in first["runs"]]


def test_later_experiment_with_same_weak_setup_reuses_the_store(synthetic_run, monkeypatch):
  tmp, first = synthetic_run
  calls = []
  real = engines.train_runs
  monkeypatch.setattr(engines, "train_runs", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
  # Another workdir and other student losses, same data and weak model.
  other = _run(tmp, _config(**{"student.losses": ("tv",)}), workdir="other")
  assert "weak model" not in calls
  assert calls == ["students tv (4 runs)"]
  assert other["weak"]["weak_model_runs"] == 0
  assert other["weak"]["store"] == first["weak"]["store"]


@pytest.mark.slow  # A sweep run, interrupted and resumed (~7-13 s): slow suite.
def test_interrupted_sweep_keeps_finished_groups(tmp_path, monkeypatch):
  config = _config()
  real = engines.train_runs
  calls = []

  def interrupt_on_fourth(*args, **kwargs):
    calls.append(kwargs.get("desc"))
    if len(calls) == 4:  # weak, ceiling, first loss, then Ctrl-C on the second loss.
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(engines, "train_runs", interrupt_on_fourth)
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, config)
  finished = os.listdir(tmp_path / "cache" / "student")
  assert len([d for d in finished if not d.startswith(".") and not d.endswith(".partial")]) == (
      len(config.student.noise.rates) * config.seeds)

  calls.clear()
  monkeypatch.setattr(engines, "train_runs", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
  results = _run(tmp_path, config)
  # Only the losses that had not finished were trained; the weak model and ceiling were kept too.
  assert len(calls) == len(config.student.losses) - 1
  assert not any("ceiling" in c or "weak" in c or c.startswith(f"students {config.student.losses[0]} ") for c in calls)
  assert len(results["runs"]) == len(config.student.losses) * len(config.student.noise.rates) * config.seeds


def test_noise_gets_its_own_store(synthetic_run):
  tmp, _ = synthetic_run
  w2s = [s for s in _stores(tmp / "cache") if s.components.get("split") == "w2s_train"
         and s.components.get("kind") == "weak"]
  clean = [s for s in w2s if s.noise is None]
  noisy = [s for s in w2s if s.noise is not None]
  assert len(clean) == 1 and len(noisy) == 1
  assert clean[0].hash != noisy[0].hash
  flipped = np.argmax(clean[0].probs, -1) != np.argmax(noisy[0].probs, -1)
  assert flipped.mean() == pytest.approx(0.2, abs=0.01)


@pytest.mark.slow
def test_data_parallel_engine_streams_weak_labels_from_the_store(tmp_path, monkeypatch):
  calls = []
  real = stream_lib.LabelStream.host_batches

  def spy(self, position, **kw):
    calls.append(self.store.directory)
    return real(self, position, **kw)

  monkeypatch.setattr(stream_lib.LabelStream, "host_batches", spy)
  config = _config(**{"student.engine": "data_parallel", "student.losses": ("js",), "student.noise.rates": (0.2,),
                      "seeds": 1})
  results = _run(tmp_path, config)
  noisy = [s for s in _stores(tmp_path / "cache") if s.noise is not None]
  # weak model (truth store), ceiling (truth store), the js student (the noisy store).
  assert noisy[0].directory in calls
  assert len(results["runs"]) == 1 and 0.5 < results["runs"][0]["test_accuracy"] <= 1.0


def test_old_engine_names_still_work_with_a_deprecation_message():
  with pytest.warns(DeprecationWarning, match="vmap"):
    assert engines.resolve_engine("sweep") == "vmap"
  with pytest.warns(DeprecationWarning, match="data_parallel"):
    assert engines.resolve_engine("fit") == "data_parallel"
  with pytest.raises(ValueError, match="vmap, data_parallel"):
    engines.resolve_engine("fast")


def test_unknown_loss_is_rejected_before_any_compute(tmp_path):
  config = _config(**{"student.losses": ("xent", "kullback")})
  with pytest.raises(ValueError, match=r"kullback.*(kl|known)"):
    _run(tmp_path, config)
  assert not (tmp_path / "cache" / "weak").exists()


def _main(*args):
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, "-m", "w2sg_jax.main", *args], capture_output=True, text=True, env=env,
                        cwd=REPO)


def test_cli_rejects_an_unknown_config_key(tmp_path):
  proc = _main("--config=experiments/synthetic.py:smoke", f"--workdir={tmp_path}", "--config.student.lerning_rate=1")
  assert proc.returncode != 0
  assert "lerning_rate" in proc.stderr


@pytest.mark.slow
def test_cli_override_changes_the_run(tmp_path):
  proc = _main("--config=experiments/synthetic.py:smoke", f"--workdir={tmp_path / 'w'}", "--config.seeds=1",
               "--config.student.losses=('xent',)", "--config.student.noise.rates=(0.0,)",
               f"--config.cache_dir={tmp_path / 'cache'}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads((tmp_path / "w" / "results.json").read_text())
  assert [(r["loss"], r["noise"]) for r in results["runs"]] == [("xent", 0.0)]
  assert "| loss |" in proc.stdout


# ------------------------------------------- a workdir shows only its config's results


def _staged(workdir):
  return [n for n in os.listdir(workdir) if n.startswith(".pending")]


def _saved_hash(workdir):
  return workdir_lib.config_hash(json.loads((workdir / "config.json").read_text()))


def test_results_carry_the_hash_of_the_config_that_produced_them(synthetic_run):
  tmp, results = synthetic_run
  workdir = tmp / "run"
  saved = json.loads((workdir / "results.json").read_text())
  config = _config()
  with config.unlocked():
    config.cache_dir = str(tmp / "cache")
  # config.json is the config as it ran: resolved by the schema, every default written out.
  resolved = schema.Experiment.from_configdict(config)
  assert saved["config_hash"] == results["config_hash"] == _saved_hash(workdir) == workdir_lib.config_hash(resolved)
  assert json.loads((workdir / "config.json").read_text()) == json.loads(json.dumps(resolved.to_dict()))
  assert schema.Experiment.from_configdict(json.loads((workdir / "config.json").read_text())) == resolved
  assert not (workdir / workdir_lib.MARKER).exists() and not _staged(workdir)
  # Another config gives another hash.
  assert workdir_lib.config_hash(_config(seeds=3)) != workdir_lib.config_hash(_config())


def test_a_rerun_that_stops_leaves_the_finished_outputs_marked(synthetic_run, monkeypatch):
  """Issue 18, item 4: a rerun with seeds=3 and another learning rate fails, or is interrupted, once started."""
  tmp, _ = synthetic_run
  workdir = tmp / "rerun"
  _run(tmp, _config(), workdir="rerun")  # Every stage is in the cache: only the report is written.
  before = {f: (workdir / f).read_bytes() for f in ("config.json", "results.json", "summary.csv")}
  summary_before = (workdir / "summary.md").read_text()
  rerun = _config(seeds=3, **{"student.train.optimizer.learning_rate": 1e-3})

  for stop, said in ((RuntimeError("no space left on device"), "failed (RuntimeError: no space left on device)"),
                     (KeyboardInterrupt(), "was interrupted (Ctrl-C)")):
    def stop_training(*args, stop=stop, **kwargs):
      raise stop

    monkeypatch.setattr(engines, "train_runs", stop_training)
    with pytest.raises(type(stop)):
      _run(tmp, rerun, workdir="rerun")
    # The finished run's files are untouched and still agree with each other...
    assert {f: (workdir / f).read_bytes() for f in before} == before, said
    assert json.loads(before["config.json"])["seeds"] == 2
    assert json.loads(before["results.json"])["config_hash"] == _saved_hash(workdir)
    # ...and the workdir says plainly that the latest run did not finish, and what it changed.
    marker = (workdir / workdir_lib.MARKER).read_text()
    assert said in marker
    assert "seeds 2 -> 3" in marker and "student.train.optimizer.learning_rate 0.003 -> 0.001" in marker
    assert "previous finished run, whose config is config.json" in marker
    summary = (workdir / "summary.md").read_text()
    assert "Not from the latest run" in summary.split("\n\n")[0] and said in summary
    assert summary.endswith(summary_before) and summary.count("Not from the latest run") == 1
    assert not _staged(workdir)

  # A rerun that finishes replaces every output together and removes the marks.
  monkeypatch.undo()
  done = _run(tmp, _config(**{"report.min_gap": 0.01}), workdir="rerun")  # Nothing to train: only the report.
  assert not (workdir / workdir_lib.MARKER).exists()
  assert json.loads((workdir / "config.json").read_text())["report"]["min_gap"] == 0.01
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["config_hash"] == done["config_hash"] == _saved_hash(workdir)
  assert "Not from the latest run" not in (workdir / "summary.md").read_text()


def test_a_first_run_that_stops_leaves_no_results(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise RuntimeError("the weak model failed")

  monkeypatch.setattr(engines, "train_runs", fail)
  with pytest.raises(RuntimeError):
    _run(tmp_path, _config())
  workdir = tmp_path / "run"
  assert sorted(os.listdir(workdir)) == [workdir_lib.MARKER]
  assert "No run has finished in this workdir yet" in (workdir / workdir_lib.MARKER).read_text()


@pytest.mark.slow
def test_the_theory_runner_writes_its_outputs_the_same_way(tmp_path, monkeypatch):
  from w2sg_jax import stages as stages_lib
  from w2sg_jax import theory

  def fail(self, data):
    raise RuntimeError("the weak stage failed")

  monkeypatch.setattr(stages_lib.Stages, "weak", fail)
  config = _config("tweets_theory", "synthetic", cache_dir=str(tmp_path / "cache"),
                   **{"student.losses": ("xent", "tv"), "theory.losses": ("kl", "tv")})
  with pytest.raises(RuntimeError):
    theory.run(schema.Experiment.from_configdict(config), str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path / "run")) == [workdir_lib.MARKER]  # No config.json without its theory.json.


def test_outputs_commit_moves_the_staged_report_in_with_config_and_results(tmp_path):
  out = workdir_lib.Outputs(str(tmp_path), {"seeds": 2, "rates": (0.0, 0.2)})
  with out:
    assert (tmp_path / workdir_lib.MARKER).exists() and not (tmp_path / "config.json").exists()
    staging = tmp_path / os.path.basename(out.staging)
    (staging / "figs").mkdir()
    (staging / "figs" / "a.png").write_text("png")
    assert out.final_path(str(staging / "figs" / "a.png")) == str(tmp_path / "figs" / "a.png")
    results = out.commit("results.json", {"accuracy": 0.9})
  assert sorted(os.listdir(tmp_path)) == ["config.json", "figs", "results.json"]
  assert (tmp_path / "figs" / "a.png").read_text() == "png"
  assert json.loads((tmp_path / "config.json").read_text()) == {"seeds": 2, "rates": [0.0, 0.2]}
  assert results["config_hash"] == json.loads((tmp_path / "results.json").read_text())["config_hash"]
  assert results["config_hash"] == workdir_lib.config_hash({"rates": [0.0, 0.2], "seeds": 2})


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  leftover = tmp_path / f".pending-{int(dead.stdout)}"
  leftover.mkdir()
  (leftover / "summary.md").write_text("half a report")
  with workdir_lib.Outputs(str(tmp_path), {"seeds": 1}) as out:
    assert not leftover.exists()
    out.commit("results.json", {})
  assert sorted(os.listdir(tmp_path)) == ["config.json", "results.json"]
