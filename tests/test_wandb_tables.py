"""`report.wandb`: the final tables (results.json's summary and runs) reach W&B as tables.

The wandb package is an optional extra (20 MB with its dependencies), so the
pipeline test logs to a stand-in module and checks every logged cell against
the results.json the same run wrote. Where wandb is installed, an offline run
is also written for real and its table files read back.
"""

import glob
import json
import math
import os
import sys
import types

import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, metric_writers, pipeline, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The columns a reader of each table needs (accuracy, PGR and their intervals per row; what names the row).
SUMMARY_COLUMNS = {"loss", "noise", "method", "selection", "n_seeds", "accuracy_mean", "accuracy_std",
                   "accuracy_ci95_lo", "accuracy_ci95_hi", "pgr_mean", "pgr_ci95_lo", "pgr_ci95_hi"}
RUNS_COLUMNS = {"loss", "noise", "seed", "method", "test_accuracy", "test_auroc", "pgr"}


class FakeWandb:
  """A stand-in for the ``wandb`` module: records each run's init arguments, logs and finish."""

  def __init__(self):
    self.runs = []
    fake = self

    class Table:
      def __init__(self, columns=None, data=None, **kwargs):
        self.columns, self.data, self.kwargs = list(columns), [list(r) for r in data], kwargs

    class Run:
      def __init__(self, **kwargs):
        self.init, self.logged, self.finished = kwargs, [], False
        self.config = types.SimpleNamespace(update=lambda d, **_: None)
        fake.runs.append(self)

      def log(self, data, step=None):
        self.logged.append((step, data))

      def finish(self):
        self.finished = True

    self.module = types.SimpleNamespace(init=lambda **kw: Run(**kw), Table=Table)

  def tables(self):
    """``{name: Table}`` of every logged table."""
    return {k: v for run in self.runs for _, data in run.logged for k, v in data.items()
            if not isinstance(v, (int, float))}


@pytest.fixture
def fake_wandb(monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake.module)
  return fake


def _cell(row, column):
  """What results.json holds for ``column`` of a table row, found by reading the column's name."""
  if column in row:
    return row[column]
  for suffix, index in (("_lo", 0), ("_hi", 1)):
    if column.endswith(suffix) and isinstance(row.get(column[:-len(suffix)]), list):
      return row[column[:-len(suffix)]][index]
  head, _, rest = column.partition(".")
  if rest and isinstance(row.get(head), dict):
    return _cell(row[head], rest)
  return None  # A column another row has.


def _same(a, b):
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b and type(a) is type(b)


def _leaves(row, prefix=""):
  """Every scalar of a results.json row, as the column name it must reach the table under."""
  for k, v in row.items():
    if isinstance(v, dict):
      yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(v, list) and len(v) == 2 and "ci95" in k:
      yield from (f"{prefix}{k}_lo", f"{prefix}{k}_hi")
    else:
      yield f"{prefix}{k}"


def _assert_table_is(table, rows, required, defaults=None):
  assert required <= set(table.columns), sorted(required - set(table.columns))
  assert len(set(table.columns)) == len(table.columns)
  assert len(table.data) == len(rows)
  for logged, row in zip(table.data, rows):
    row = {**(defaults or {}), **row}
    assert set(_leaves(row)) <= set(table.columns)  # Nothing of results.json is left out.
    for column, value in zip(table.columns, logged):
      assert _same(value, _cell(row, column)), (column, value, _cell(row, column))


def test_final_tables_flatten_results_rows():
  results = {
      "experiment": "e", "task": "t", "weak": {"test_accuracy": 0.7}, "ceiling": {"test_accuracy": 0.9},
      "summary": [{"loss": "xent", "noise": 0.0, "n_seeds": 2, "accuracy_mean": 0.8, "accuracy_ci95": [0.75, 0.85],
                   "pgr_mean": 0.5, "pgr_ci95": [0.25, 0.75], "selection": "default", "grid_point": {}},
                  {"loss": "kl", "noise": 0.2, "n_seeds": 2, "accuracy_mean": 0.6, "accuracy_ci95": [0.5, 0.7],
                   "pgr_mean": None, "pgr_ci95": [None, None], "selection": "oracle",
                   "grid_point": {"learning_rate": 0.001}}],
      "runs": [{"loss": "xent", "noise": 0.0, "seed": 1, "test_accuracy": 0.8, "method": "single",
                "cost": {"flops": 10.0, "complete": True}, "selected_step": None, "pgr": 0.5}],
  }
  tables = metric_writers.final_tables(results)
  columns, rows = tables["summary"]
  assert columns == ["loss", "noise", "method", "selection", "n_seeds", "accuracy_mean", "accuracy_ci95_lo",
                     "accuracy_ci95_hi", "pgr_mean", "pgr_ci95_lo", "pgr_ci95_hi", "grid_point.learning_rate"]
  assert rows == [["xent", 0.0, "single", "default", 2, 0.8, 0.75, 0.85, 0.5, 0.25, 0.75, None],
                  ["kl", 0.2, "single", "oracle", 2, 0.6, 0.5, 0.7, None, None, None, 0.001]]
  columns, rows = tables["runs"]
  assert columns == ["loss", "noise", "method", "seed", "test_accuracy", "cost.flops", "cost.complete",
                     "selected_step", "pgr"]
  assert rows == [["xent", 0.0, "single", 1, 0.8, 10.0, True, None, 0.5]]
  assert metric_writers.final_tables({**results, "summary_method": "ensemble"})["summary"][1][0][2] == "ensemble"


def test_without_wandb_the_error_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError.
  with pytest.raises(ImportError, match=r'pip install "w2sg-jax\[wandb\]"'):
    metric_writers.log_final_tables({"summary": [], "runs": []})


@pytest.mark.slow
def test_the_pipeline_logs_results_json_tables_to_wandb(tmp_path, fake_wandb):
  config = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"),
                                  {"student.losses": ("xent", "kl"), "seeds": 2, "cache_dir": str(tmp_path / "cache")})
  with config.unlocked():
    config.report.wandb = True  # Not in the experiment's report block: the schema's default is False.
  workdir = tmp_path / "run"
  pipeline.Pipeline(schema.Experiment.from_configdict(config), str(workdir), tasks.get(config.task)).run()
  results = json.loads((workdir / "results.json").read_text())

  (report,) = [r for r in fake_wandb.runs if r.init["name"] == "report"]
  assert report.init["group"] == config.name and report.finished
  assert report.init["config"]["ceiling_test_accuracy"] == results["ceiling"]["test_accuracy"]
  assert report.init["dir"].endswith(metric_writers.TENSORBOARD_DIR)
  tables = fake_wandb.tables()
  assert set(tables) == {"summary", "runs"}
  assert len(results["summary"]) == 2 * len(config.student.noise.rates)  # One row per (loss, noise).
  _assert_table_is(tables["summary"], results["summary"], SUMMARY_COLUMNS,
                   defaults={"method": results.get("summary_method", "single")})
  _assert_table_is(tables["runs"], results["runs"], RUNS_COLUMNS)
  # Every training run got its own W&B run too (the curves), finished before the report's began.
  assert len(fake_wandb.runs) > 1 and all(r.finished for r in fake_wandb.runs)


def test_an_offline_wandb_run_holds_the_tables(tmp_path, monkeypatch):
  """The real package, offline: the tables are files of the run, to sync later."""
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  results = {"experiment": "e", "task": "t", "weak": {"test_accuracy": 0.7}, "ceiling": {"test_accuracy": 0.9},
             "summary": [{"loss": "xent", "noise": 0.0, "n_seeds": 2, "accuracy_mean": 0.8,
                          "accuracy_ci95": [0.75, 0.85], "pgr_mean": 0.5, "pgr_ci95": [0.25, 0.75]},
                         {"loss": "kl", "noise": 0.0, "n_seeds": 2, "accuracy_mean": 0.6,
                          "accuracy_ci95": [0.5, 0.7], "pgr_mean": None, "pgr_ci95": [None, None]}],
             "runs": [{"loss": "xent", "noise": 0.0, "seed": 1, "test_accuracy": 0.8, "pgr": 0.5}]}
  tables = metric_writers.log_final_tables(results, group="e", dir=str(tmp_path))
  for name, (columns, rows) in tables.items():
    run_dir = tmp_path / "wandb" / "offline-run-*"
    (path,) = glob.glob(str(run_dir / "files" / "media" / "table" / f"{name}_*.table.json"))
    with open(path, encoding="utf-8") as f:
      logged = json.load(f)
    assert logged["columns"] == columns
    assert logged["data"] == rows
