"""Warm is free, the report and the data stage too: a rerun redraws, resamples and reads only what changed.

A rerun into the same workdir with every run cached keeps the figures, the
tuning report and the TensorBoard event files of the last report, reads the
summary's bootstraps from their cache entry, and (tweets) reads no TFDS record
when the features are cached; its outputs are byte for byte those of the cold
report. Whatever is deleted, damaged or fed other numbers is made again.
"""

import io
import json
import os
import shutil

import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, metric_writers, metrics, pipeline, report, tasks
from w2sg_jax import cache as cache_lib
from w2sg_jax.data import tweets as tweets_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
FILES = ("summary.md", "summary.csv", "pgr_by_loss.png", "accuracy_vs_noise.png", "tuning.md",
         "accuracy_vs_learning_rate.png")


def _config(root):
  c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), {
      "seeds": 2, "data.sizes.weak_train": 256, "data.sizes.w2s_train": 512, "data.sizes.test": 256,
      "student.losses": ("xent", "js"), "student.noise.rates": (0.0, 0.4), "student.train.epochs": 2,
      "student.train.select.metric": "accuracy", "student.train.select.holdout": 64,
      "cache_dir": str(root / "cache")})
  with c.unlocked():  # A grid: tuning.md, its figure and the tuned summary's shared default rows too.
    c.student.grid = {"learning_rate": (float(c.student.train.optimizer.learning_rate), 0.1)}
  return c


def _run(root, workdir="run"):
  config = _config(root)
  return pipeline.Pipeline(schema.Experiment.from_configdict(config), str(root / workdir), tasks.get(config.task)).run()


def _outputs(workdir):
  """The report's files by name, results.json without its timings, and every event file's scalars."""
  from tests.test_tensorboard import scalars  # pylint: disable=g-import-not-at-top

  files = {name: (workdir / name).read_bytes() for name in FILES}
  results = json.loads((workdir / "results.json").read_text())
  for key in ("timings_s", "profile"):
    results.pop(key)
  tb = workdir / metric_writers.TENSORBOARD_DIR
  curves = {str(p.relative_to(tb)): scalars(p)[0] for p in sorted(tb.glob("*/*"))}
  return files, results, curves


def _fail(what):
  def fail(*args, **kwargs):
    raise AssertionError(f"a warm rerun {what}")
  return fail


def _paths_as(results, workdir, other):
  return json.loads(json.dumps(results).replace(str(other), str(workdir)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("warm_report")
  cold = _run(root)
  cold_outputs = _outputs(root / "run")
  with pytest.MonkeyPatch.context() as mp:  # Nothing of the report is computed again.
    mp.setattr(metrics, "summarize_runs", _fail("resampled a summary"))
    mp.setattr(report, "plot_pgr_by_loss", _fail("drew a figure"))
    mp.setattr(report, "plot_accuracy_vs_noise", _fail("drew a figure"))
    mp.setattr(pipeline.grid_lib, "write_report", _fail("wrote tuning.md"))
    mp.setattr(metric_writers, "TensorBoardWriter", _fail("wrote an event file"))
    warm = _run(root)
  # The same runs' report made from nothing: a new workdir, and the bootstraps' entries deleted.
  shutil.rmtree(root / "cache" / pipeline._SUMMARY_STAGE)  # pylint: disable=protected-access
  scratch = _run(root, "scratch")
  return root, cold, cold_outputs, warm, scratch


def test_a_warm_rerun_redraws_nothing_and_its_report_is_one_made_from_scratch(runs):
  root, cold, cold_outputs, warm, scratch = runs
  assert cold["profile"]["report"]["curves_written"] == len(cold_outputs[2]) > 8
  assert cold["profile"]["report"]["figures_drawn"] == 3  # pgr_by_loss, accuracy_vs_noise, tuning.
  assert warm["profile"]["report"]["curves_written"] == 0
  assert warm["profile"]["report"]["figures_drawn"] == 0
  assert scratch["profile"]["report"]["figures_drawn"] == 3
  assert scratch["profile"]["report"]["curves_written"] == len(cold_outputs[2])
  assert warm["summary_selection"] == "weak_holdout" and warm["grid"]["points"] == 2
  files, results, curves = _outputs(root / "run")
  assert files == cold_outputs[0]  # The same numbers as the cold run: the same bytes, figures included.
  assert curves == cold_outputs[2]
  fresh = _outputs(root / "scratch")
  assert files == fresh[0] and curves == fresh[2]
  assert results == _paths_as(fresh[1], root / "run", root / "scratch")


@pytest.mark.slow  # On another xdist worker it rebuilds the module's pipeline fixture (~20 s): slow suite.
def test_another_workdir_reads_the_bootstraps_from_their_entry(runs):
  root, _, _, _, _ = runs
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(metrics, "summarize_runs", _fail("resampled a summary"))
    other = _run(root, "other")
  assert other["profile"]["report"]["figures_drawn"] == 3
  files, results, curves = _outputs(root / "other")
  fresh = _outputs(root / "scratch")
  assert files == fresh[0] and curves == fresh[2]
  assert results == _paths_as(fresh[1], root / "other", root / "scratch")


def test_what_is_deleted_or_damaged_is_made_again(runs):
  root, _, cold_outputs, _, _ = runs
  workdir = root / "run"
  tb = workdir / metric_writers.TENSORBOARD_DIR
  shutil.rmtree(tb / "students")
  (workdir / "pgr_by_loss.png").unlink()
  ceiling = sorted((tb / "ceiling").iterdir())[0] / metric_writers.EVENT_FILE
  ceiling.write_bytes(ceiling.read_bytes()[:-7])  # Cut short, as a half-copied file.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(report, "plot_accuracy_vs_noise", _fail("drew an unchanged figure"))
    again = _run(root)
  students = sum(1 for name in cold_outputs[2] if name.startswith("students/"))
  assert again["profile"]["report"]["curves_written"] == students + 1
  assert again["profile"]["report"]["figures_drawn"] == 1
  assert _outputs(workdir)[0] == cold_outputs[0] and _outputs(workdir)[2] == cold_outputs[2]
  shutil.rmtree(tb)  # The whole folder: every run's curves.
  assert _run(root)["profile"]["report"]["curves_written"] == len(cold_outputs[2])
  assert _outputs(workdir)[2] == cold_outputs[2]


# ------------------------------------------------------------------- the parts


def _entry(path, train):
  path.mkdir(parents=True, exist_ok=True)
  metric_writers.save_history(str(path), train, [{"step": 2, "val_auroc": 0.5}])
  return str(path)


def test_curves_are_rewritten_when_their_numbers_change(tmp_path):
  entry = _entry(tmp_path / "entry", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
  run = metric_writers.RunCurves("students", {"loss": "kl", "noise": 0.2, "seed": 1}, entry, {"test_accuracy": 0.9})
  root = str(tmp_path / "tb")
  assert len(metric_writers.write_run_curves(root, [run])) == 1
  assert metric_writers.write_run_curves(root, [run]) == []  # Unchanged: kept.
  moved = metric_writers.RunCurves(run.stage, run.hparams, entry, {"test_accuracy": 0.91})
  assert len(metric_writers.write_run_curves(root, [moved])) == 1
  _entry(tmp_path / "entry", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.25}])
  (logdir,) = metric_writers.write_run_curves(root, [moved])
  from tests.test_tensorboard import scalars  # pylint: disable=g-import-not-at-top
  assert scalars(logdir)[0]["train/loss"] == {1: 1.0, 2: 0.25}
  os.remove(os.path.join(logdir, metric_writers.SOURCE_FILE))  # Written before sources were kept.
  assert len(metric_writers.write_run_curves(root, [moved])) == 1
  # Into a staging folder, against the folder it will be moved onto: kept there, nothing staged.
  assert metric_writers.write_run_curves(str(tmp_path / "staging"), [moved], previous=root) == []
  assert not (tmp_path / "staging").exists()


def test_the_ledger_keeps_a_group_only_for_the_same_inputs_code_and_file(tmp_path):
  final, staging = tmp_path / "final", tmp_path / "staging"
  final.mkdir()
  code = tmp_path / "draw.py"
  code.write_text("v1")
  calls = []

  def draw(inputs, outdir=staging, root=final):
    def write():
      calls.append(inputs)
      os.makedirs(outdir, exist_ok=True)
      (outdir / "fig.png").write_text(json.dumps(inputs["x"].tolist()))
      return {"fig": str(outdir / "fig.png")}
    ledger = report.Ledger(root, outdir)
    paths = ledger.draw("fig", inputs, [str(code)], write)
    ledger.save()
    for name in os.listdir(outdir):  # What a commit does: the staged files move onto the final folder.
      os.replace(outdir / name, root / name)
    return paths, ledger.drawn

  assert draw({"x": np.arange(3)}) == ({"fig": str(staging / "fig.png")}, ["fig"])
  assert draw({"x": np.arange(3)}) == ({"fig": str(final / "fig.png")}, [])  # Kept, not drawn.
  assert len(calls) == 1
  assert draw({"x": np.arange(3) + 1})[1] == ["fig"]  # Other numbers.
  assert draw({"x": np.arange(3) + 1})[1] == []
  code.write_text("v2")
  assert draw({"x": np.arange(3) + 1})[1] == ["fig"]  # Other code.
  (final / "fig.png").write_text("edited")
  assert draw({"x": np.arange(3) + 1})[1] == ["fig"]  # A changed file.
  (final / report.LEDGER).write_text("{not json")
  assert draw({"x": np.arange(3) + 1})[1] == ["fig"]  # A damaged ledger: everything again.
  assert len(calls) == 5


def test_the_summary_entry_is_keyed_by_every_number_it_reads(tmp_path, monkeypatch):
  config = _config(tmp_path)
  with config.unlocked():
    config.student.grid = {}
  p = pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp_path / "run"), tasks.get(config.task))
  rng = np.random.default_rng(0)
  correct = {name: (rng.random(64) < 0.7).astype(np.float64) for name in ("weak", "ceiling")}
  refs = tuple({"test_accuracy": float(c.mean()), "test_correct": c} for c in correct.values())
  rows = []
  for loss in ("xent", "js"):
    for seed in (1, 2):
      c = (rng.random(64) < 0.8).astype(np.float64)
      rows.append({"loss": loss, "noise": 0.0, "seed": seed, "test_accuracy": float(c.mean()), "test_auroc": 0.9,
                   "method": "single", "grid_point": {}, "test_correct": c})
  calls = []
  real = metrics.summarize_runs
  monkeypatch.setattr(metrics, "summarize_runs", lambda *a, **k: calls.append(1) or real(*a, **k))
  tuned, first = p._summaries(rows, refs, "single", 0.01)  # pylint: disable=protected-access
  assert tuned == [] and len(first) == 2 and len(calls) == 1
  assert p._summaries(rows, refs, "single", 0.01)[1] == first and len(calls) == 1  # pylint: disable=protected-access
  # Two examples swapped: the same accuracy, another paired bootstrap over examples.
  swapped = [dict(r) for r in rows]
  c = swapped[0]["test_correct"].copy()
  i, j = int(np.argmin(c)), int(np.argmax(c))
  c[[i, j]] = c[[j, i]]
  swapped[0]["test_correct"] = c
  again = p._summaries(swapped, refs, "single", 0.01)[1]  # pylint: disable=protected-access
  assert len(calls) == 2 and again[0]["accuracy_mean"] == first[0]["accuracy_mean"]
  p._summaries(rows, refs, "single", 0.2)  # pylint: disable=protected-access  # Another min_gap.
  assert len(calls) == 3
  entries = os.listdir(tmp_path / "cache" / pipeline._SUMMARY_STAGE)  # pylint: disable=protected-access
  assert len([d for d in entries if not d.startswith(".")]) == 3


# ------------------------------------------------------------ tweets' data stage


def _tweets_config(cache_dir, **overrides):
  return config_lib.load_config(os.path.join(REPO, "experiments", "tweets_minilm.py:smoke"), {
      "strong.checkpoint": os.path.join(FIXTURES, "models", "tiny_bert"), "strong.num_layers": 3,
      "cache_dir": str(cache_dir),
      "data.csv_path": os.path.join(FIXTURES, "data", "tweets.csv"), "data.task": "ternary",
      "data.sizes.weak_train": 8, "data.sizes.w2s_train": 8, "data.sizes.test": 8, "weak.train_subset": 8,
      **overrides})


def _splits(config):
  config = schema.Experiment.from_configdict(config)  # The task takes the typed experiment.
  task = tasks.get("tweets")
  return {name: (s.ids.tolist(), s.labels.tolist(), {role: {k: np.asarray(v) for k, v in inputs.items()}
                                                     for role, inputs in s.inputs.items()})
          for name, s in task.splits(config, config.cache_dir).items()}


def _same(a, b):
  assert a.keys() == b.keys()
  for name in a:
    assert a[name][:2] == b[name][:2], name
    for role, inputs in a[name][2].items():
      for k, v in inputs.items():
        np.testing.assert_array_equal(b[name][2][role][k], v)


def test_cached_features_need_no_tfds_read(tmp_path, monkeypatch):
  config = _tweets_config(tmp_path / "cache")
  reads = []
  real = tweets_lib.load_tweets
  monkeypatch.setattr(tweets_lib, "load_tweets", lambda *a, **k: reads.append(1) or real(*a, **k))
  cold = _splits(config)
  assert len(reads) == 1  # Once for the index and the texts together.
  _same(cold, _splits(config))
  assert len(reads) == 1  # Warm: the index and the features entries, no record read.
  shutil.rmtree(tmp_path / "cache" / "features")  # The texts are read again to compute the features.
  _same(cold, _splits(config))
  assert len(reads) == 2
  shutil.rmtree(tmp_path / "cache" / "data_index")
  shutil.rmtree(tmp_path / "cache" / "tfds")  # From nothing but the CSV, the same splits.
  _same(cold, _splits(config))
  assert len(reads) == 3
  bow = _splits(_tweets_config(tmp_path / "cache", **{"weak.model": "bow"}))  # Tokens need the texts.
  assert len(reads) == 4
  assert [bow[name][:2] for name in bow] == [cold[name][:2] for name in cold]
  assert set(bow["test"][2]["weak"]) == {"input_ids", "attention_mask"}


def test_the_index_is_keyed_by_the_csv(tmp_path):
  import csv as csv_lib  # pylint: disable=g-import-not-at-top

  csv = tmp_path / "tweets.csv"
  with open(os.path.join(FIXTURES, "data", "tweets.csv"), "rb") as f:
    # Latin-1 maps bytes to characters one to one: the mis-encoded rows survive the round trip.
    header, *records = list(csv_lib.reader(io.StringIO(f.read().decode("latin-1"), newline="")))

  def write(rows):
    out = io.StringIO(newline="")
    csv_lib.writer(out, lineterminator="\r\n").writerows([header, *rows])
    csv.write_bytes(out.getvalue().encode("latin-1"))

  write(records)
  config = _tweets_config(tmp_path / "cache", **{"data.csv_path": str(csv)})
  first = _splits(config)
  write(records[::-1])  # The same rows in another order: other ids at each position.
  second = _splits(config)
  assert len(os.listdir(tmp_path / "cache" / "data_index")) >= 2
  assert [first[n][0] for n in first] != [second[n][0] for n in second]
  reference = tweets_lib.load_tweets("ternary", data_dir=str(tmp_path / "cache" / "tfds"), csv_path=str(csv))
  by_id = dict(zip(reference["id"], reference["label"]))
  for ids, labels, _ in second.values():
    assert labels == [int(by_id[i]) for i in ids]


def test_a_cache_entry_is_a_cache_entry(tmp_path):
  """The index is an ordinary verified entry: a changed byte is found, and it is made again."""
  config = _tweets_config(tmp_path / "cache")
  cold = _splits(config)
  root = tmp_path / "cache" / "data_index"
  (entry,) = [root / d for d in os.listdir(root) if not d.startswith(".")]
  labels = entry / "labels.npy"
  data = bytearray(labels.read_bytes())
  data[-1] ^= 1
  labels.write_bytes(bytes(data))
  _same(cold, _splits(config))
  assert cache_lib.Cache(str(tmp_path / "cache")).open("data_index", json.loads(
      (entry / cache_lib.MANIFEST).read_text())["key"]) is not None
