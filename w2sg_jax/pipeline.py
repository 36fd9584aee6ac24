"""The W2SG pipeline: a thin runner of the stages in ``w2sg_jax.stages``.

    data -> weak model (ground truth) -> weak labels, once, in a store
         -> strong ceiling (ground truth) -> students (loss x noise x seed) -> report

Every artifact lives in the shared cache (``config.cache_dir``) under a key of
everything that produced it, so a rerun costs only what changed, two runs on
one cache wait for each other instead of racing, and an interrupted sweep
loses at most the group it was training. The workdir gets ``config.json``,
``results.json`` (with the config's ``config_hash``) and the report, together
at the end; an unfinished run leaves an ``INCOMPLETE`` file instead of
outputs that disagree with their config (`w2sg_jax.workdir`).

Many workers (`w2sg_jax.workers`): with ``worker=i/N`` the pipeline trains only
the ceiling and student runs whose key falls to that worker; when runs of
other workers are still missing afterwards it writes no report, logs what it
trained and leaves ``INCOMPLETE`` saying which runs are missing; the worker
that finds every run there at its end writes the report. ``report_only``
trains no run: it writes the report when every run is in the cache, else
raises `MissingRunsError` naming the missing runs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from w2sg_jax import cache as cache_lib
from w2sg_jax import config as schema
from w2sg_jax import metric_writers
from w2sg_jax import metrics as metrics_lib
from w2sg_jax import grid as grid_lib
from w2sg_jax import hashing
from w2sg_jax import methods_report
from w2sg_jax import report as report_lib
from w2sg_jax import stages as stages_lib
from w2sg_jax import validate as validate_lib
from w2sg_jax import workdir as workdir_lib
from w2sg_jax import workers as workers_lib
from w2sg_jax.data.task import Task
from w2sg_jax.log import log

write_json = workdir_lib.write_json  # Its old home; callers may still import it from here.
_SUMMARY_STAGE, _SUMMARY_FILE = "summary", "summary.json"  # The report's bootstraps, in the cache (`_summaries`).
_KEYS_SHOWN = 3  # Keys of missing runs named per stage in a message.


def _json_number(x: Any) -> Any:
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


class MissingRunsError(RuntimeError):
  """Report-only: some training runs are not in the cache yet; the message says how many per stage and which."""

  def __init__(self, message: str, missing: list[tuple[str, str]]):
    super().__init__(message)
    self.missing = missing


def _per_stage(missing: list[tuple[str, str]]) -> dict[str, list[str]]:
  out: dict[str, list[str]] = {}
  for stage, key in missing:
    out.setdefault(stage, []).append(key)
  return out


def _runs(n: int) -> str:
  return f"{n} run{'s' if n != 1 else ''}"


class Pipeline:
  """Runs an experiment config end to end in ``workdir``; see the module docstring."""

  def __init__(self, config: schema.Experiment, workdir: str, task: Task, *,
               worker: workers_lib.Worker | None = workers_lib.ALL, report_only: bool = False):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.task = task
    self.worker = worker
    self.report_only = bool(report_only)
    self.cache = cache_lib.Cache(os.path.abspath(config.cache_dir), worker=worker, report_only=self.report_only)
    self.stages = stages_lib.Stages(config, task, self.cache)
    self.timings: dict[str, float] = {}
    self.outputs = workdir_lib.Outputs(self.workdir, config)
    self._escaped: list[tuple[str, str]] = []  # Runs of other workers the stages did not catch themselves.

  def validate(self) -> None:
    """Checks the whole config and the workdir before any compute (`validate.ConfigError` lists each problem)."""
    validate_lib.check_paths(workdir=self.workdir)
    validate_lib.check_config(self.config, self.task)

  def run(self) -> dict[str, Any]:
    """Results (as written to results.json); a worker that leaves runs to others returns `worker_summary`."""
    t_start = time.perf_counter()
    self.validate()
    self.outputs = workdir_lib.Outputs(self.workdir, self.config)  # Started now; one per run.
    with self.outputs:  # config.json, results.json and the report are written together, at the end.
      self.cache.clean_orphans()
      if self.report_only:
        log.info("report-only: no run trains; the report is written if every run is in the cache.")
      elif self.worker is not None:
        log.info("worker %s (from %s): trains the groups of ceiling and student runs whose key falls to it.",
                 self.worker, self.worker.source)
      for attempt in range(2):
        if attempt:  # Every other worker finished meanwhile: this one writes the report, from the cache.
          log.info("worker %s: every run is in the cache now; writing the report.", self.worker)
          self.stages = stages_lib.Stages(self.config, self.task, self.cache)
          self._escaped = []
        data = self._stage("data", self.stages.data)
        weak = self._stage("weak", lambda: self.stages.weak(data))
        ceiling = self._stage("ceiling", lambda: self._own_runs(lambda: self.stages.ceiling(data)))
        students = self._stage("students", lambda: self._own_runs(lambda: self.stages.students(data, weak)))
        missing = self.missing_runs()
        if not missing:
          break
        if self.report_only:
          raise MissingRunsError(self._missing_message(missing), missing)
        if attempt or not all(self.cache.open(stage, key) is not None for stage, key in missing):
          return self._leave_to_other_workers(missing)
      results = self._stage("report", lambda: self.report(weak, ceiling, students))
      results["data"] = data.fingerprint
      results["cache"] = {"computed": [f"{e.stage}/{e.key[:cache_lib.KEY_CHARS]}" for e in self.cache.computed()]}
      results["timings_s"] = {**self.timings, "total": time.perf_counter() - t_start}
      results["profile"] = self.stages.profile.as_dict()  # The parts of each stage (stages.Profile).
      log.info("profile: %s", self.stages.profile.line())
      return self.outputs.commit("results.json", results)

  # ------------------------------------------------------------- many workers

  def _own_runs(self, fn: Callable[[], Any]) -> Any:
    """``fn()``; runs of other workers that escape it (stages that do not collect them) are noted, not fatal."""
    try:
      return fn()
    except cache_lib.RunsOfOtherWorkers as e:
      self._escaped.extend((e.stage, k) for k in e.keys)
      return None

  def missing_runs(self) -> list[tuple[str, str]]:
    """``[(stage, key)]`` of the training runs this process left to other workers (or found missing)."""
    seen: dict[tuple[str, str], None] = {}
    for stage, key in [*getattr(self.stages, "missing_runs", []), *self._escaped]:
      seen[(str(stage), str(key))] = None
    return list(seen)

  def trained_runs(self) -> int:
    """How many ceiling and student runs this process trained."""
    return sum(1 for e in self.cache.computed() if e.stage in cache_lib.SPLIT_STAGES)

  def _missing_message(self, missing: list[tuple[str, str]]) -> str:
    per_stage = _per_stage(missing)
    parts = []
    for stage, keys in per_stage.items():
      shown = ", ".join(k[:cache_lib.KEY_CHARS] for k in keys[:_KEYS_SHOWN])
      parts.append(f"{stage} {len(keys)} ({shown}{' ...' if len(keys) > _KEYS_SHOWN else ''})")
    return (f"report-only: {_runs(len(missing))} of this experiment {'is' if len(missing) == 1 else 'are'} not in "
            f"the cache {self.cache.root} yet: {'; '.join(parts)}. No report was written and nothing was trained. "
            "Run the remaining workers first (the same command with --worker=i/N for each i that has not finished, "
            "on this cache_dir; each trains only its own runs), then run --report_only again.")

  def worker_summary(self, missing: list[tuple[str, str]]) -> dict[str, Any]:
    """What a worker that wrote no report returns: what it trained and which runs it left to others."""
    return {"worker": str(self.worker) if self.worker is not None else None, "report": False,
            "trained_runs": self.trained_runs(),
            "missing_runs": [{"stage": stage, "key": key} for stage, key in missing]}

  def _leave_to_other_workers(self, missing: list[tuple[str, str]]) -> dict[str, Any]:
    """No report: log what this worker did, and say in ``INCOMPLETE`` which runs are missing."""
    trained = self.trained_runs()
    counts = ", ".join(f"{stage} {len(keys)}" for stage, keys in _per_stage(missing).items())
    log.info("worker %s: trained %s, %s belong to other workers (or are not finished); run with --report-only "
             "when every worker is done.", self.worker, _runs(trained), f"{_runs(len(missing))} ({counts})")
    if jax.process_index() == 0:  # One process writes the shared workdir (as `workdir.Outputs` does).
      what = (f"ran as worker {self.worker} and trained {_runs(trained)}; {_runs(len(missing))} ({counts}) belong "
              "to other workers or are not finished, so it wrote no report. Once every worker is done, run the "
              "same command with --report_only (w2sg run: --report-only) to write the report")
      self.outputs._mark(what)  # pylint: disable=protected-access  (the INCOMPLETE file, with this reason)
      shutil.rmtree(self.outputs.staging, ignore_errors=True)
    self.outputs.committed = True  # Nothing more to write: leaving the block must not call this a failure.
    return self.worker_summary(missing)

  # ------------------------------------------------------------------ stages

  def _stage(self, name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    self.timings[name] = time.perf_counter() - t0
    log.info("stage %s done in %.1fs", name, self.timings[name])
    return out

  def _summaries(self, rows: list[dict[str, Any]], refs: tuple[dict[str, Any], dict[str, Any]], headline: str,
                 min_gap: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(tuned, summary)``: the grid's selections (empty without a grid) and the headline method's default rows.

    The bootstraps are a pure function of the rows, the weak and ceiling
    references and the settings, so their result is a cache entry (stage
    ``summary``) keyed by the digest of all of them (``test_correct`` by its
    bytes), the source of the code that computes them (metrics.py, grid.py and
    this module) and numpy's version: a rerun whose runs are unchanged reads
    it instead of resampling. Cold or warm, the rows come from the entry's
    JSON, so both give the same results.json.
    """
    grid_active = self.stages.grid_active

    def compute() -> dict[str, Any]:
      with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PGR is undefined", category=RuntimeWarning)  # Logged by report.
        tuned = grid_lib.tuned_summary([row for row in rows if row["method"] == "single"], *refs,
                                       min_gap=min_gap) if grid_active else []
        if tuned and headline == "single":
          return {"tuned": tuned, "summary": None}  # The default rows of `tuned` (below).
        untuned = [row for row in rows if not row["grid_point"] and row["method"] == headline]
        summary = metrics_lib.summarize_runs(untuned, *refs, min_gap=min_gap, progress=True)
        return {"tuned": tuned, "summary": [{**row, "selection": "default", "grid_point": {}} for row in summary]}

    def produce(out_dir: str, _work_dir: str) -> dict[str, Any]:
      with open(os.path.join(out_dir, _SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(compute(), f, default=_json_number)
      return {}

    components = {
        "inputs": hashing.content_hash({"rows": rows, "refs": list(refs), "headline": headline,
                                        "min_gap": float(min_gap), "grid_active": bool(grid_active)}),
        # This module's too: `compute` above is part of what made the rows.
        "code": {os.path.basename(p): hashing.file_sha256(p) for p in (metrics_lib.__file__, grid_lib.__file__,
                                                                        __file__)},
        "numpy": np.__version__,
    }
    # A Cache of its own, as the task's features entry: results.json's cache list names the training artifacts.
    entry = cache_lib.Cache(self.cache.root).get_or_create(_SUMMARY_STAGE, components, produce)
    with open(entry.path(_SUMMARY_FILE), encoding="utf-8") as f:
      stored = json.load(f)
    tuned = stored["tuned"]
    if stored["summary"] is None:  # The config's own setting's summary: the very rows (report adds to them).
      return tuned, [row for row in tuned if row["selection"] == "default"]
    return tuned, stored["summary"]

  def report(self, weak: stages_lib.WeakResult, ceiling: stages_lib.CeilingResult,
             students: stages_lib.StudentRuns) -> dict[str, Any]:
    """results.json's content, the tables and the plots.

    When the ceiling does not beat the weak model by ``report.min_gap``, PGR is
    undefined: null in results.json, n/a in the tables, a warning on top of
    summary.md and on the terminal, and no ranking.
    """
    pgr_status = metrics_lib.pgr_status(weak.test_accuracy, ceiling.test_accuracy,
                                        min_gap=self.config.report.min_gap)
    runs = []
    for r in students.runs:
      row = r.public()
      row.update(params=students.params, trainable_params=students.trainable_params)
      row["pgr"] = (float(metrics_lib.pgr(r.test_accuracy, weak.test_accuracy, ceiling.test_accuracy))
                    if pgr_status["defined"] else None)
      runs.append(row)
    profile = self.stages.profile
    # The headline summary is one method's (single, when it runs): the table compares losses. Every
    # method's runs are in `runs`, and methods.md compares them (`methods_report`).
    methods = list(dict.fromkeys(r.method for r in students.runs))
    headline = "single" if "single" in methods else methods[0]
    with_correct = [{**row, "test_correct": r.test_correct} for row, r in zip(runs, students.runs)]
    refs = ({"test_accuracy": weak.test_accuracy, "test_correct": weak.test_correct},
            {"test_accuracy": ceiling.test_accuracy, "test_correct": ceiling.test_correct})
    with profile.stage("report"), profile.part("summary"):  # The bootstraps, or their cache entry.
      tuned, summary = self._summaries(with_correct, refs, headline, pgr_status["min_gap"])
    # Under a grid, the headline is each (loss, noise) at the point picked on the weak-labelled holdout (no
    # gold label read); results.json and tuning.md keep the untuned default and the oracle bound beside it.
    headline_rows = [row for row in tuned if row["selection"] == "weak_holdout"] if tuned else summary
    results = {
        "experiment": self.config.name,
        "task": self.task.name,
        "weak": weak.public(),
        "ceiling": ceiling.public(),
        "students": {"params": students.params, "trainable_params": students.trainable_params},
        "pgr_status": pgr_status,
        "runs": runs,
        "summary": summary + [row for row in tuned if row["selection"] != "default"],
        "summary_selection": "weak_holdout" if tuned else "default",
    }
    if methods != ["single"]:
      results["summary_method"] = headline
    if tuned:
      default_points = self.stages.grid_default_points()
      for row in tuned:  # Which setting each row comes from, the default's values spelled out.
        row["setting"] = grid_lib.describe_point(row["grid_point"], str(row["loss"]), default_points)
      single = [r for r in runs if r["method"] == "single"]
      results["grid"] = {
          "points": len({grid_lib.point_name(grid_lib.effective_point(r, default_points)) for r in single}),
          "default_point": default_points, "spread": grid_lib.spread(single, default_points)}
    paths = {}
    if jax.process_index() == 0:  # One process writes the shared workdir.
      # A figure or file group drawn from the same numbers by the last report in this workdir is kept.
      ledger = report_lib.Ledger(self.workdir, self.outputs.staging)
      title = self.config.name
      with profile.stage("report"), profile.part("tables_and_plots"):
        # The tables and plots of the config's own setting; tuning.md puts the picks beside it.
        staged = report_lib.write_report({**results, "summary": headline_rows}, self.outputs.staging,
                                         title=title, ledger=ledger)
        if methods != ["single"]:
          untuned_runs = [r for r in runs if not r["grid_point"]]
          staged.update(ledger.draw(
              "methods", {"runs": untuned_runs, "title": title}, [methods_report.__file__, metrics_lib.__file__],
              lambda: methods_report.write(untuned_runs, self.outputs.staging, title=title)))
        if tuned:
          spread = results["grid"]["spread"]
          staged.update(ledger.draw(
              "tuning", {"tuned": tuned, "spread": spread, "runs": runs, "title": title,
                         "default_points": default_points}, [grid_lib.__file__],
              lambda: grid_lib.write_report(tuned, spread, runs, self.outputs.staging, title=title,
                                            default_points=default_points)))
        ledger.save()
      with profile.stage("report"), profile.part("curves"):  # From the runs' cache entries: cached runs too.
        staged["tensorboard"] = os.path.join(self.outputs.staging, metric_writers.TENSORBOARD_DIR)
        # Only runs whose curves changed since the workdir's last report are written (`write_run_curves`).
        written = metric_writers.write_run_curves(
            staged["tensorboard"], self.stages.curves,
            previous=os.path.join(self.workdir, metric_writers.TENSORBOARD_DIR),
            wandb=self.config.report.wandb, wandb_group=str(self.config.name))
        profile.add("curves_written", len(written))
        profile.add("figures_drawn", len(ledger.drawn))
        if self.config.report.wandb:  # results.json's summary and runs, as W&B tables.
          metric_writers.log_final_tables(results, group=str(self.config.name), dir=staged["tensorboard"])
      paths = {k: self.outputs.final_path(v) for k, v in staged.items()}
    print(report_lib.markdown_table(headline_rows), flush=True)
    if not pgr_status["defined"]:
      log.warning("%s", pgr_status["reason"])
    results["report_files"] = {k: str(v) for k, v in paths.items()}
    return results
