"""Training curves: every run's history reaches TensorBoard event files, cached runs' too.

The event files are read back here without TensorFlow or tensorboard: the
TFRecord framing (length, masked crc, data, masked crc) around tensorboardX's
``Event`` protos.
"""

import collections
import json
import os
import struct

import pytest

from w2sg_jax import config as schema
from w2sg_jax import cache as cache_lib
from w2sg_jax import config_lib, metric_writers, pipeline, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(path):
  """The ``Event`` protos of one event file, checking each record's crc."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2

  def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  events = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
      assert length_crc == masked(header[:8]), f"{path}: a damaged record length"
      data, (data_crc,) = f.read(length), struct.unpack("<I", f.read(4))
      assert data_crc == masked(data), f"{path}: a damaged record"
      event = event_pb2.Event()
      event.ParseFromString(data)
      events.append(event)
  return events


def scalars(logdir):
  """``{tag: {step: value}}`` of a run folder's one event file, and the tags of its plugin records."""
  files = metric_writers.event_files(logdir)
  assert [os.path.basename(f) for f in files] == [metric_writers.EVENT_FILE], files
  out, plugins = collections.defaultdict(dict), collections.defaultdict(set)
  for event in read_events(files[0]):
    for value in event.summary.value:
      if value.metadata.plugin_data.plugin_name:
        plugins[value.metadata.plugin_data.plugin_name].add(value.tag)
      if value.HasField("simple_value"):
        out[value.tag][event.step] = value.simple_value
  return dict(out), dict(plugins)


def _run(root, workdir):
  config = config_lib.load_config(
      os.path.join(REPO, "experiments", "synthetic.py:smoke"),
      {"student.losses": ("xent",), "cache_dir": str(root / "cache"),
       # Model selection on both engines, so validation curves come from each.
       "weak.train.select.metric": "auroc", "weak.train.select.holdout": 256,
       "student.train.select.metric": "auroc", "student.train.select.holdout": 256,
       "weak.train.log_every": 8})  # 48 steps: several logged rows.
  return pipeline.Pipeline(schema.Experiment.from_configdict(config), str(root / workdir), tasks.get(config.task)).run()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tb")
  cold = _run(root, "cold")
  warm = _run(root, "warm")  # Every run cached: nothing trains.
  again = _run(root, "cold")  # The same workdir again: its files are replaced, not added to.
  return root, cold, warm, again


def _history(entry_dir):
  history = metric_writers.load_history(entry_dir)
  assert history is not None, f"{entry_dir} keeps no {metric_writers.HISTORY_FILE}"
  return history


def _assert_logged(logdir, history, final):
  logged, plugins = scalars(logdir)
  assert history["train"], f"no training rows behind {logdir}"
  for prefix in ("train", "validation"):
    for row in history[prefix]:
      for k, v in row.items():
        if k != "step":
          assert logged[f"{prefix}/{k}"][row["step"]] == pytest.approx(v, rel=1e-6), (logdir, prefix, k, row)
  last = max(r["step"] for r in history["train"] + history["validation"])
  for k, v in final.items():
    assert logged[f"test/{k.removeprefix('test_')}"] == {last: pytest.approx(v, rel=1e-6)}
  assert plugins.get("hparams"), f"no HParams records in {logdir}"
  return logged


@pytest.mark.slow
def test_every_run_has_its_curves_in_the_workdir(runs):
  root, cold, _, _ = runs
  tb = root / "cold" / metric_writers.TENSORBOARD_DIR
  assert cold["report_files"]["tensorboard"] == str(tb)
  assert sorted(os.listdir(tb)) == ["ceiling", "students", "weak"]
  assert sorted(os.listdir(tb / "students")) == ["xent_noise0.2_seed1", "xent_noise0.2_seed2",
                                                 "xent_noise0_seed1", "xent_noise0_seed2"]
  assert sorted(os.listdir(tb / "ceiling")) == ["seed1", "seed2"]
  assert sorted(os.listdir(tb / "weak")) == ["seed0"]
  for run in cold["runs"]:  # The vmap engine: each run's own values, not the group's mean.
    logdir = tb / "students" / f"xent_noise{run['noise']:g}_seed{run['seed']}"
    history = _history(run["cache_entry"])
    logged = _assert_logged(logdir, history, {"test_accuracy": run["test_accuracy"], "misfit_kl": run["misfit_kl"]})
    assert {"train/loss", "train/lr", "train/grad_norm", "train/target_agreement",
            "validation/val_auroc"} <= set(logged)
  losses = [_history(r["cache_entry"])["train"][-1]["loss"] for r in cold["runs"]]
  assert len(set(losses)) == len(losses), "the runs logged one loss: the group's mean, not each its own"


@pytest.mark.slow
def test_the_data_parallel_weak_model_logs_lr_and_grad_norm(runs):
  root, cold, _, _ = runs
  weak_root = root / "cache" / "weak"
  (entry,) = [weak_root / d for d in os.listdir(weak_root) if not d.startswith(".")]
  history = _history(str(entry))
  logdir = root / "cold" / metric_writers.TENSORBOARD_DIR / "weak" / "seed0"
  logged = _assert_logged(logdir, history, {"test_accuracy": cold["weak"]["test_accuracy"]})
  assert {"train/loss", "train/lr", "train/grad_norm", "validation/val_auroc"} <= set(logged)
  assert len(logged["train/loss"]) >= 2  # Every log_every steps, not just the last.
  assert sorted(logged["validation/val_auroc"]) == [int(r["step"]) for r in history["validation"]]
  manifest = json.loads((entry / cache_lib.MANIFEST).read_text())
  assert metric_writers.HISTORY_FILE in manifest["files"]  # Checksummed with the entry.


@pytest.mark.slow
def test_a_rerun_that_trains_nothing_still_writes_the_curves(runs):
  root, cold, warm, again = runs
  assert warm["cache"]["computed"] == [] and again["cache"]["computed"] == []
  cold_tb, warm_tb = root / "cold" / metric_writers.TENSORBOARD_DIR, root / "warm" / metric_writers.TENSORBOARD_DIR
  folders = sorted(str(p.relative_to(cold_tb)) for p in cold_tb.glob("*/*"))
  assert folders == sorted(str(p.relative_to(warm_tb)) for p in warm_tb.glob("*/*"))
  for rel in folders:  # Same values; `scalars` also checks each folder (rewritten by `again`) has one file.
    assert scalars(cold_tb / rel)[0] == scalars(warm_tb / rel)[0], rel


def test_writers_round_trip(tmp_path):
  with metric_writers.MultiWriter([
      metric_writers.TensorBoardWriter(str(tmp_path / "tb"), file_name=metric_writers.EVENT_FILE),
      metric_writers.JsonlWriter(str(tmp_path / "m.jsonl")),
  ]) as w:
    w.write_scalars(1, {"a": 0.5})
    w.write_scalars(3, {"a": 0.25, "b": 2.0})
    w.write_hparams({"loss": "kl", "noise": 0.2, "seed": 3})
  logged, plugins = scalars(str(tmp_path / "tb"))
  assert logged == {"a": {1: 0.5, 3: 0.25}, "b": {3: 2.0}}
  assert plugins["hparams"] == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
  lines = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
  assert lines == [{"step": 1, "a": 0.5}, {"step": 3, "a": 0.25, "b": 2.0},
                   {"hparams": {"loss": "kl", "noise": 0.2, "seed": 3}}]
  with pytest.raises(ValueError, match="tfevents"):
    metric_writers.TensorBoardWriter(str(tmp_path / "x"), file_name="curves.bin")


def test_wandb_writer_logs_the_same_scalars(tmp_path, monkeypatch):
  """`report.wandb`'s wiring, with a stand-in for the wandb package (20 MB with its deps; not a test dependency)."""
  import sys
  import types

  calls = []

  class Run:
    def __init__(self, **kwargs):
      calls.append(("init", kwargs))
      self.config = types.SimpleNamespace(update=lambda d, **_: calls.append(("config", d)))

    def log(self, scalars, step):
      calls.append(("log", step, scalars))

    def finish(self):
      calls.append(("finish",))

  monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run(**kw)))
  entry = tmp_path / "entry"
  entry.mkdir()
  metric_writers.save_history(str(entry), [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}],
                              [{"step": 3, "val_auroc": 0.75}])
  run = metric_writers.RunCurves("students", {"loss": "kl", "noise": 0.2, "seed": 1}, str(entry),
                                 {"test_accuracy": 0.9})
  (logdir,) = metric_writers.write_run_curves(str(tmp_path / "tb"), [run], wandb=True, wandb_group="exp")
  assert logdir == str(tmp_path / "tb" / "students" / "kl_noise0.2_seed1")
  assert calls[0] == ("init", {"project": "w2sg-jax", "name": "students/kl_noise0.2_seed1", "group": "exp",
                               "dir": str(tmp_path / "tb"),
                               "config": {"stage": "students", "loss": "kl", "noise": 0.2, "seed": 1}})
  assert [c for c in calls if c[0] == "log"] == [  # Increasing steps: W&B drops a step below the last.
      ("log", 2, {"train/loss": 1.0}), ("log", 3, {"validation/val_auroc": 0.75}),
      ("log", 4, {"train/loss": 0.5, "test/accuracy": 0.9})]
  assert calls[-1] == ("finish",)
  assert scalars(logdir)[0]["test/accuracy"] == {4: pytest.approx(0.9)}
