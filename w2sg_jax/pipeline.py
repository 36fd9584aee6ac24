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
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from w2sg_jax import cache as cache_lib
from w2sg_jax import metric_writers
from w2sg_jax import metrics as metrics_lib
from w2sg_jax import report as report_lib
from w2sg_jax import stages as stages_lib
from w2sg_jax import validate as validate_lib
from w2sg_jax import workdir as workdir_lib
from w2sg_jax.data.task import Task
from w2sg_jax.log import log

write_json = workdir_lib.write_json  # Its old home; callers may still import it from here.


class Pipeline:
  """Runs an experiment config end to end in ``workdir``; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, task: Task):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.task = task
    self.cache = cache_lib.Cache(os.path.abspath(config.cache_dir))
    self.stages = stages_lib.Stages(config, task, self.cache)
    self.timings: dict[str, float] = {}
    self.outputs = workdir_lib.Outputs(self.workdir, config)

  def validate(self) -> None:
    """Checks the whole config and the workdir before any compute (`validate.ConfigError` lists each problem)."""
    validate_lib.check_paths(workdir=self.workdir)
    validate_lib.check_config(self.config, self.task)

  def run(self) -> dict[str, Any]:
    t_start = time.perf_counter()
    self.validate()
    self.outputs = workdir_lib.Outputs(self.workdir, self.config)  # Started now; one per run.
    with self.outputs:  # config.json, results.json and the report are written together, at the end.
      self.cache.clean_orphans()
      data = self._stage("data", self.stages.data)
      weak = self._stage("weak", lambda: self.stages.weak(data))
      ceiling = self._stage("ceiling", lambda: self.stages.ceiling(data))
      students = self._stage("students", lambda: self.stages.students(data, weak))
      results = self._stage("report", lambda: self.report(weak, ceiling, students))
      results["data"] = data.fingerprint
      results["cache"] = {"computed": [f"{e.stage}/{e.key[:cache_lib.KEY_CHARS]}" for e in self.cache.computed()]}
      results["timings_s"] = {**self.timings, "total": time.perf_counter() - t_start}
      results["profile"] = self.stages.profile.as_dict()  # The parts of each stage (stages.Profile).
      log.info("profile: %s", self.stages.profile.line())
      return self.outputs.commit("results.json", results)

  def _stage(self, name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    self.timings[name] = time.perf_counter() - t0
    log.info("stage %s done in %.1fs", name, self.timings[name])
    return out

  def report(self, weak: stages_lib.WeakResult, ceiling: stages_lib.CeilingResult,
             students: stages_lib.StudentRuns) -> dict[str, Any]:
    """results.json's content, the tables and the plots.

    When the ceiling does not beat the weak model by ``report.min_gap``, PGR is
    undefined: null in results.json, n/a in the tables, a warning on top of
    summary.md and on the terminal, and no ranking.
    """
    pgr_status = metrics_lib.pgr_status(weak.test_accuracy, ceiling.test_accuracy,
                                        min_gap=validate_lib.min_gap(self.config))
    runs = []
    for r in students.runs:
      row = r.public()
      row.update(params=students.params, trainable_params=students.trainable_params)
      row["pgr"] = (float(metrics_lib.pgr(r.test_accuracy, weak.test_accuracy, ceiling.test_accuracy))
                    if pgr_status["defined"] else None)
      runs.append(row)
    profile = self.stages.profile
    with warnings.catch_warnings(), profile.stage("report"), profile.part("summary"):  # The bootstraps.
      warnings.filterwarnings("ignore", message="PGR is undefined", category=RuntimeWarning)  # Logged below.
      summary = metrics_lib.summarize_runs(
          [{**row, "test_correct": r.test_correct} for row, r in zip(runs, students.runs)],
          {"test_accuracy": weak.test_accuracy, "test_correct": weak.test_correct},
          {"test_accuracy": ceiling.test_accuracy, "test_correct": ceiling.test_correct},
          min_gap=pgr_status["min_gap"], progress=True,
      )
    results = {
        "experiment": self.config.name,
        "task": self.task.name,
        "weak": weak.public(),
        "ceiling": ceiling.public(),
        "students": {"params": students.params, "trainable_params": students.trainable_params},
        "pgr_status": pgr_status,
        "runs": runs,
        "summary": summary,
    }
    paths = {}
    if jax.process_index() == 0:  # One process writes the shared workdir.
      with profile.stage("report"), profile.part("tables_and_plots"):
        staged = report_lib.write_report(results, self.outputs.staging, title=self.config.name)
      with profile.stage("report"), profile.part("curves"):  # From the runs' cache entries: cached runs too.
        staged["tensorboard"] = os.path.join(self.outputs.staging, metric_writers.TENSORBOARD_DIR)
        metric_writers.write_run_curves(staged["tensorboard"], self.stages.curves,
                                        wandb=bool(self.config.get("report", {}).get("wandb", False)),
                                        wandb_group=str(self.config.name))
      paths = {k: self.outputs.final_path(v) for k, v in staged.items()}
    print(report_lib.markdown_table(summary), flush=True)
    if not pgr_status["defined"]:
      log.warning("%s", pgr_status["reason"])
    results["report_files"] = {k: str(v) for k, v in paths.items()}
    return results
