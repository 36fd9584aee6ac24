"""Training curves: clu-style metric writers, and each run's curves as TensorBoard event files.

The interface is that of ``clu.metric_writers`` (the flax examples'):
``write_scalars(step, scalars)``, ``write_hparams(hparams)``, ``flush()``,
``close()``. The writers:

* `TensorBoardWriter`: event files through ``tensorboardX``. Why that library:
  clu's ``SummaryWriter`` and ``flax.metrics.tensorboard`` write through
  TensorFlow (over a gigabyte, not a dependency here); ``tensorboard``'s own
  package brings grpcio, werkzeug, markdown and its data server (about 5 MB
  of wheel plus native ones) to serve dashboards we only need to feed; and
  ``jax-loop-utils`` (the maintained CLU fork) writes TensorBoard files only
  through TensorFlow or PyTorch. ``tensorboardX`` is pure Python (an 88 kB
  wheel; 2.6.5, the newest release on PyPI, is the tested one), maintained,
  and needs only protobuf, numpy and packaging, which this project already
  has; its ``summary.hparams`` also writes the HParams dashboard's records.
* `JsonlWriter`: one JSON line per call, for tools that read text.
* `MultiWriter`: the same scalars to several writers.
* `WandbWriter`: the same scalars to Weights & Biases (``pip install
  "w2sg-jax[wandb]"``; ``WANDB_MODE=offline`` writes locally), one W&B run
  per training run, grouped by experiment, when ``config.report.wandb`` is
  true (the key is read with a default of False).
* `log_final_tables`: under the same key, the final results as two
  ``wandb.Table`` objects (``summary``: one row per loss, noise, method and
  selection; ``runs``: one row per student run), in one more W&B run of the
  experiment's group, written when the report is (`final_tables` gives their
  columns and rows: results.json's, flattened).

How curves reach TensorBoard: every training run keeps its metric history in
its cache entry (`save_history`: ``curves.json``, the logged training steps
and the model-selection evaluations), so a run that a rerun finds in the cache
still has its curves; the pipeline's report step writes them all
(`write_run_curves`) under ``<workdir>/tensorboard/<stage>/<run>/``, where
``<run>`` is ``<loss>_noise<rate>_seed<seed>`` for students and
``seed<seed>`` for the weak model and the ceiling. Tags: ``train/<metric>``
(loss, lr, grad_norm, target_agreement), ``validation/<metric>`` (under
``train.select``), and ``test/<metric>`` (the run's final test accuracy, AUROC
and, for students, misfit to the weak labels, at its last step); the run's
loss, noise and seed are also its HParams. A rerun into the same workdir
replaces each run folder's one event file (`EVENT_FILE`).

A warm rerun writes only what changed: beside its event file, each run folder
keeps `SOURCE_FILE`, the digest of what the file was written from (the run's
``curves.json`` bytes, its stage, HParams and final metrics, and this module's
source) and the sha256 of the event file itself. `write_run_curves` given the
folder a previous report wrote (``previous``) skips a run whose digest is
unchanged and whose event file there still has that sha256; a deleted, damaged
or half-moved folder, or a run whose numbers moved, is written again.
"""

from __future__ import annotations

import abc
import dataclasses
import glob
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from w2sg_jax import hashing
from w2sg_jax.log import log

HISTORY_FILE = "curves.json"  # In a training run's cache entry (`save_history`).
TENSORBOARD_DIR = "tensorboard"  # In the experiment's workdir.
# The event file's name in each run folder: the same on every rerun, so a rerun's file
# replaces the last one's instead of joining it (TensorBoard would draw both).
EVENT_FILE = "events.out.tfevents.w2sg"
# Beside it: what it was written from (`write_run_curves`). No "tfevents" in the name: TensorBoard skips it.
SOURCE_FILE = "w2sg_source.json"

Scalars = Mapping[str, float]


class MetricWriter(abc.ABC):
  """Writes scalars by step and a run's hyperparameters (``clu.metric_writers.MetricWriter``'s subset)."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Scalars) -> None:
    """Logs ``scalars`` (tag -> value) at ``step``."""

  @abc.abstractmethod
  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Logs the run's hyperparameters (numbers, strings, booleans)."""

  def flush(self) -> None:
    """Makes everything written so far durable."""

  def close(self) -> None:
    """Flushes and releases the writer."""
    self.flush()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files in ``logdir``, via tensorboardX (see the module docstring).

  ``file_name``: when given (it must contain ``tfevents``), the event file is
  renamed to it on `close`, replacing one of that name, so that rewriting a
  folder leaves one file rather than two runs' worth of points.
  ``write_hparams`` names every tag written so far as an HParams metric, so
  call it after the scalars.
  """

  def __init__(self, logdir: str, *, file_name: str | None = None):
    import tensorboardX  # pylint: disable=g-import-not-at-top  # Only where curves are written.

    if file_name is not None and "tfevents" not in file_name:
      raise ValueError(f"file_name={file_name!r}: TensorBoard reads only files whose name contains 'tfevents'.")
    self.logdir = logdir
    self.file_name = file_name
    os.makedirs(logdir, exist_ok=True)
    self._before = set(os.listdir(logdir))
    # flush_secs is long: `close` flushes, and nothing waits on a half-written run folder.
    self._writer = tensorboardX.SummaryWriter(logdir=logdir, flush_secs=600, max_queue=1000)
    self._tags: dict[str, None] = {}  # Insertion-ordered set.
    self._closed = False

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, float(value), int(step))
      self._tags[tag] = None

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top

    plain = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items() if v is not None}
    file_writer = self._writer._get_file_writer()  # pylint: disable=protected-access  # As its add_hparams does.
    for record in summary.hparams(plain, dict.fromkeys(self._tags, 0.0)):
      file_writer.add_summary(record)

  def flush(self) -> None:
    if not self._closed:
      self._writer.flush()

  def close(self) -> None:
    if self._closed:
      return
    self._writer.close()
    self._closed = True
    if self.file_name is None:
      return
    new = [n for n in os.listdir(self.logdir) if "tfevents" in n and n not in self._before]
    if len(new) == 1:
      os.replace(os.path.join(self.logdir, new[0]), os.path.join(self.logdir, self.file_name))


class JsonlWriter(MetricWriter):
  """One line per call in ``path``: ``{"step": ..., tag: value, ...}`` or ``{"hparams": {...}}``."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._file.write(json.dumps({"hparams": dict(hparams)}, default=str) + "\n")

  def flush(self) -> None:
    if not self._file.closed:
      self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


class MultiWriter(MetricWriter):
  """Writes to every writer of ``writers``."""

  def __init__(self, writers: Iterable[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


# ------------------------------------------------------------- run histories


def save_history(out_dir: str, train: Sequence[Mapping[str, float]],
                 validation: Sequence[Mapping[str, float]] = ()) -> None:
  """Keeps a run's curves in its cache entry: ``{"train": [{"step", metric: value}], "validation": [...]}``."""
  rows = lambda rs: [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in rs]  # noqa: E731
  with open(os.path.join(out_dir, HISTORY_FILE), "w", encoding="utf-8") as f:
    json.dump({"train": rows(train), "validation": rows(validation)}, f)


def load_history(entry_dir: str) -> dict[str, list[dict[str, float]]] | None:
  """A run's curves as `save_history` kept them; None for an entry made before curves were kept."""
  try:
    with open(os.path.join(entry_dir, HISTORY_FILE), encoding="utf-8") as f:
      history = json.load(f)
  except (OSError, ValueError):
    return None
  return {"train": list(history.get("train", [])), "validation": list(history.get("validation", []))}


@dataclasses.dataclass(frozen=True)
class RunCurves:
  """One training run whose curves the report writes.

  ``hparams`` (``loss``, ``noise``, ``seed``, those that apply) name its folder
  and are its HParams; ``final``: its test metrics, logged at its last step.
  """

  stage: str  # weak, ceiling, students
  hparams: Mapping[str, Any]
  entry_dir: str  # The cache entry that holds its `HISTORY_FILE`.
  final: Mapping[str, float] = dataclasses.field(default_factory=dict)

  @property
  def name(self) -> str:
    """``[method_]loss_noise<r>_seed<s>[_<key>=<value>...]``: every hparam names the folder, so the runs of
    two methods or two grid points of one (loss, noise, seed) never share one."""
    fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    parts = [str(self.hparams["method"])] if self.hparams.get("method") is not None else []
    for key in ("loss", "noise", "seed"):
      if self.hparams.get(key) is None:
        continue
      parts.append(fmt(self.hparams[key]) if key == "loss" else f"{key}{fmt(self.hparams[key])}")
    parts += [f"{k}={fmt(v)}" for k, v in sorted(self.hparams.items())
              if k not in ("method", "loss", "noise", "seed") and v is not None]
    return re.sub(r"[^A-Za-z0-9_.+=-]", "-", "_".join(parts) or "run")


def write_run_curves(root: str, runs: Sequence[RunCurves], *, wandb: bool = False,
                     wandb_project: str = "w2sg-jax", wandb_group: str | None = None,
                     previous: str | None = None) -> list[str]:
  """Writes each run's curves under ``root/<stage>/<run>/``; returns the folders written.

  ``previous``: the folder that holds the curves a previous report wrote (the
  workdir's, when ``root`` is a staging folder moved onto it afterwards;
  default ``root`` itself). A run whose folder there was written from the same
  inputs (`SOURCE_FILE`) and whose event file is intact is not written again,
  and not returned. A run whose entry keeps no curves (made before they were
  kept) is skipped with one log line for all of them. With ``wandb``, every
  run is also one W&B run (`WandbWriter`) with the same scalars, unchanged ones
  included: W&B is not a folder this function can look into.
  """
  previous = root if previous is None else previous
  written, missing, kept = [], [], 0
  seen: dict[str, RunCurves] = {}
  for run in runs:  # The last of two runs with one folder wins (a stage asked twice).
    seen[os.path.join(run.stage, run.name)] = run
  code = _module_digest()
  for rel, run in seen.items():
    try:
      with open(os.path.join(run.entry_dir, HISTORY_FILE), "rb") as f:
        raw = f.read()
    except OSError:
      missing.append(rel)
      continue
    history = _parse_history(raw)
    if history is None:
      missing.append(rel)
      continue
    hparams = {"stage": run.stage, **run.hparams}
    source = hashing.content_hash({"code": code, "history_sha256": hashlib.sha256(raw).hexdigest(),
                                   "hparams": hparams, "final": _plain_numbers(run.final)})
    fresh = not _unchanged(os.path.join(previous, rel), source)
    if not fresh and not wandb:
      kept += 1
      continue
    logdir = os.path.join(root, rel)
    writers: list[MetricWriter] = [TensorBoardWriter(logdir, file_name=EVENT_FILE)] if fresh else []
    if wandb:
      writers.append(WandbWriter(project=wandb_project, group=wandb_group, name=rel, dir=root,
                                 config={"stage": run.stage, **run.hparams}))
    with MultiWriter(writers) as w:
      write_history(w, history, final=run.final)
      w.write_hparams(hparams)
    if fresh:
      _write_source(logdir, source)
      written.append(logdir)
    else:
      kept += 1
  if missing:
    log.info("tensorboard: %d run(s) have no curves in their cache entries (made before curves were kept): %s",
             len(missing), ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
  if kept:
    log.info("tensorboard: wrote %d run(s); %d unchanged since the last report were kept.", len(written), kept)
  return written


def _module_digest() -> str:
  """This module's source: a change to how curves are written rewrites them all once."""
  return hashing.file_sha256(__file__)


def _parse_history(raw: bytes) -> dict[str, list[dict[str, float]]] | None:
  try:
    history = json.loads(raw)
  except ValueError:
    return None
  if not isinstance(history, dict):
    return None
  return {"train": list(history.get("train", [])), "validation": list(history.get("validation", []))}


def _plain_numbers(values: Mapping[str, Any]) -> dict[str, Any]:
  """``final`` as hash components: numpy scalars as Python numbers, anything else as its text."""
  out = {}
  for k, v in values.items():
    v = v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v
    out[str(k)] = v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
  return out


def _unchanged(logdir: str, source: str) -> bool:
  """Whether ``logdir`` holds an intact event file written from ``source`` (`SOURCE_FILE`)."""
  try:
    with open(os.path.join(logdir, SOURCE_FILE), encoding="utf-8") as f:
      recorded = json.load(f)
    return (isinstance(recorded, dict) and recorded.get("source") == source
            and recorded.get("event_sha256") == hashing.read_sha256(os.path.join(logdir, EVENT_FILE)))
  except (OSError, ValueError):
    return False


def _write_source(logdir: str, source: str) -> None:
  record = {"source": source, "event_sha256": hashing.read_sha256(os.path.join(logdir, EVENT_FILE))}
  with open(os.path.join(logdir, SOURCE_FILE), "w", encoding="utf-8") as f:
    json.dump(record, f)


def write_history(writer: MetricWriter, history: Mapping[str, Sequence[Mapping[str, float]]],
                  final: Mapping[str, float] | None = None) -> None:
  """A run's `load_history` as ``train/*`` and ``validation/*`` scalars, ``final`` as ``test/*`` at its last step.

  Steps are written in increasing order (W&B drops a step lower than the last).
  """
  by_step: dict[int, dict[str, float]] = {}
  for prefix in ("train", "validation"):
    for row in history.get(prefix, []):
      by_step.setdefault(int(row["step"]), {}).update(
          {f"{prefix}/{k}": float(v) for k, v in row.items() if k != "step"})
  finite = {f"test/{k.removeprefix('test_')}": float(v) for k, v in (final or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
  if finite:
    by_step.setdefault(max(by_step, default=0), {}).update(finite)
  for step in sorted(by_step):
    writer.write_scalars(step, by_step[step])


def event_files(logdir: str) -> list[str]:
  """The event files in ``logdir`` (not its subfolders), by name."""
  return sorted(glob.glob(os.path.join(logdir, "*tfevents*")))


# --------------------------------------------------------------------- W&B


class WandbWriter(MetricWriter):
  """One W&B run (``pip install "w2sg-jax[wandb]"``); ``WANDB_MODE=offline`` keeps it on disk."""

  def __init__(self, *, project: str, name: str, group: str | None = None, dir: str | None = None,  # noqa: A002
               config: Mapping[str, Any] | None = None):
    try:
      import wandb  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError('report.wandb needs wandb: pip install "w2sg-jax[wandb]"') from e
    if dir is not None:
      os.makedirs(dir, exist_ok=True)
    # One run at a time: `close` finishes it before the next starts.
    self._run = wandb.init(project=project, name=name, group=group, dir=dir, config=dict(config or {}))

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    self._run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._run.config.update(dict(hparams), allow_val_change=True)

  def close(self) -> None:
    if self._run is not None:
      self._run.finish()
      self._run = None


# --------------------------------------------------------- W&B final tables

# Leading columns of the final tables, where a row has them: what names a row before what it measured.
_KEY_COLUMNS = ("loss", "noise", "method", "selection", "seed")


def _flat_cells(row: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
  """A results.json row as ``(column, cell)`` pairs of plain scalars (W&B sorts and filters those).

  A nested mapping (``cost``, ``grid_point``) becomes ``<key>.<sub>`` columns; a
  confidence interval (a ``[low, high]`` list under a ``*ci95*`` key) becomes
  ``<key>_lo`` and ``<key>_hi``; any other list, its JSON text.
  """
  for key, value in row.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      yield from _flat_cells(value, name + ".")
    elif isinstance(value, (list, tuple)) and len(value) == 2 and "ci95" in str(key):
      yield f"{name}_lo", _plain_cell(value[0])
      yield f"{name}_hi", _plain_cell(value[1])
    elif isinstance(value, (list, tuple)):
      yield name, json.dumps([_plain_cell(v) for v in value])
    else:
      yield name, _plain_cell(value)


def _plain_cell(value: Any) -> Any:
  return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _table(rows: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
           ) -> tuple[list[str], list[list[Any]]]:
  """``(columns, rows)``: the union of the rows' flattened columns, key columns first; None where a row has none."""
  flat = [{**(defaults or {}), **dict(_flat_cells(r))} for r in rows]
  seen = list(dict.fromkeys(c for r in flat for c in r))
  columns = [c for c in _KEY_COLUMNS if c in seen] + [c for c in seen if c not in _KEY_COLUMNS]
  return columns, [[r.get(c) for c in columns] for r in flat]


def final_tables(results: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
  """The final tables of a run's results (results.json's content): ``{name: (columns, rows)}``.

  ``summary``: results.json's ``summary``, one row per (loss, noise, selection)
  with accuracy, PGR and their intervals, plus ``method`` (its rows are all of
  ``summary_method``, ``single`` when absent); ``runs``: results.json's
  ``runs``, one row per student run. Cells are results.json's values, flattened
  by `_flat_cells`.
  """
  method = str(results.get("summary_method", "single"))
  return {"summary": _table(results.get("summary", []), {"method": method}),
          "runs": _table(results.get("runs", []))}


def log_final_tables(results: Mapping[str, Any], *, project: str = "w2sg-jax", group: str | None = None,
                     name: str = "report", dir: str | None = None,  # noqa: A002
                     mode: str | None = None) -> dict[str, tuple[list[str], list[list[Any]]]]:
  """Logs `final_tables` as ``wandb.Table`` objects (``summary``, ``runs``) in one W&B run; returns the tables.

  The run is named ``name`` in ``group`` (the experiment's, beside its training
  runs' W&B runs), with the weak and ceiling test accuracy that PGR is
  measured against in its config. ``mode`` is wandb.init's (``"offline"``
  writes the run under ``dir`` to sync later); None leaves it to W&B, which
  reads ``WANDB_MODE``.
  """
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('report.wandb needs wandb: pip install "w2sg-jax[wandb]"') from e
  tables = final_tables(results)
  config = {"experiment": results.get("experiment"), "task": results.get("task"),
            "weak_test_accuracy": (results.get("weak") or {}).get("test_accuracy"),
            "ceiling_test_accuracy": (results.get("ceiling") or {}).get("test_accuracy")}
  if dir is not None:
    os.makedirs(dir, exist_ok=True)
  kwargs = {"mode": mode} if mode is not None else {}
  run = wandb.init(project=project, name=name, group=group, dir=dir, config=config, **kwargs)
  try:
    # allow_mixed_types: a column may hold None beside numbers (an undefined PGR, a run with no selected step).
    run.log({key: wandb.Table(columns=columns, data=rows, allow_mixed_types=True)
             for key, (columns, rows) in tables.items()})
  finally:
    run.finish()
  return tables
