"""A workdir shows only results that its config produced.

A run's outputs are ``config.json``, its results (``results.json`` or
``theory.json``) and its report (``summary.md``, tables, plots). `Outputs`
writes them together, at the end: the report goes into a staging folder
(``.pending-PID/``) while the run works, and `Outputs.commit` moves it into the
workdir beside the config and the results, which carry ``config_hash``
(`config_hash`, the sha256 of the canonical config JSON, the same as that of
``config.json``).

While a run is unfinished the workdir holds a plain-text ``INCOMPLETE`` file
that says which config started when, how it differs from ``config.json``, and
that the other files are from the previous finished run (whose config is
``config.json``); ``summary.md`` gets the same warning on top. A failure or a
Ctrl-C rewrites the file with what happened; a SIGKILL leaves it as it was.
Success removes it::

  with Outputs(workdir, config) as out:
    ... stages; the report goes to out.staging ...
    out.commit("results.json", results)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np

__all__ = ["CONFIG", "MARKER", "Outputs", "canonical_json", "config_hash", "write_json"]

CONFIG = "config.json"
MARKER = "INCOMPLETE"
STAGING = ".pending"
# Reports that get the warning on top while a later run is unfinished.
REPORTS = ("summary.md", "theory.md")
_BANNER_START, _BANNER_END = "<!-- w2sg:incomplete -->", "<!-- /w2sg:incomplete -->"


def _json_default(x):
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def _is_writer() -> bool:
  import jax  # pylint: disable=g-import-not-at-top

  return jax.process_index() == 0  # Every process computes the same outputs; one writes them.


def _plain(config: Any) -> Any:
  return config.to_dict() if hasattr(config, "to_dict") else config


def canonical_json(obj: Any) -> str:
  """Sorted keys, no spaces: the same config always gives the same text."""
  return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), default=_json_default)


def config_hash(config: Any) -> str:
  """sha256 of a config's canonical JSON; equal for a ConfigDict and its ``config.json``.

  JSON turns tuples into lists, so the hash is taken of the JSON round trip.
  """
  text = canonical_json(json.loads(canonical_json(config)))
  return hashlib.sha256(text.encode()).hexdigest()


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write by process 0 (every process computes the same result)."""
  if not _is_writer():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_plain(obj), f, indent=2, default=_json_default)
  os.replace(tmp, path)  # A kill never leaves half a file.


def _write_text(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in (node.items() if isinstance(node, dict) else ()):
    if isinstance(value, dict) and value:
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_diff(old: Any, new: Any, *, limit: int = 8) -> str:
  """``seeds 2 -> 3, student.train.optimizer.learning_rate 0.003 -> 0.001``; '' when equal."""
  a, b = _flat(json.loads(canonical_json(old))), _flat(json.loads(canonical_json(new)))
  keys = sorted(set(a) | set(b))
  changed = [f"{k} {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys if a.get(k) != b.get(k)]
  more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
  return ", ".join(changed[:limit]) + more


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _strip_banner(text: str) -> str:
  if text.startswith(_BANNER_START) and _BANNER_END in text:
    return text.split(_BANNER_END, 1)[1].lstrip("\n")
  return text


class Outputs:
  """A run's outputs in ``workdir``, written together at the end; see the module docstring."""

  def __init__(self, workdir: str, config: Any):
    self.workdir = os.path.abspath(workdir)
    self.config = json.loads(canonical_json(config))
    self.hash = config_hash(self.config)
    # One staging folder per process: two runs into one workdir do not empty each other's.
    self.staging = os.path.join(self.workdir, f"{STAGING}-{os.getpid()}")
    self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    self.committed = False

  # ---------------------------------------------------------------- paths

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def final_path(self, staged: str) -> str:
    """Where a file written under `staging` lives once committed."""
    rel = os.path.relpath(os.path.abspath(staged), self.staging)
    return staged if rel.startswith("..") else self.path(rel)

  def _previous(self) -> tuple[dict[str, Any] | None, str]:
    """The last finished run's config (None when there is none) and its hash."""
    try:
      with open(self.path(CONFIG)) as f:
        old = json.load(f)
    except (OSError, ValueError):
      return None, ""
    return old, config_hash(old)

  # --------------------------------------------------------------- marker

  def _marker_text(self, what: str) -> str:
    old, old_hash = self._previous()
    head = (f"This workdir's latest run is not finished. The run started at {self.started} (process {os.getpid()}), "
            f"with the config whose sha256 is {self.hash[:16]}, {what}.")
    if old is None:
      return head + (" No run has finished in this workdir yet: nothing here is a result. Run the same command "
                     "again to finish it; this file is removed when a run finishes.\n")
    diff = config_diff(old, self.config)
    change = f"It differs from config.json in: {diff}." if diff else "Its config is the same as config.json."
    return head + (f" {change} The other files here (config.json, the results and the report) are from the "
                   f"previous finished run, whose config is config.json (sha256 {old_hash[:16]}); they are not "
                   "this run's results. Run the same command again to finish it; this file is removed when a run "
                   "finishes.\n")

  def _mark(self, what: str) -> None:
    _write_text(self.path(MARKER), self._marker_text(what))
    old, _ = self._previous()
    diff = config_diff(old, self.config) if old is not None else ""
    for name in REPORTS:  # The report a person opens first says so too.
      path = self.path(name)
      if not os.path.isfile(path):
        continue
      with open(path, encoding="utf-8") as f:
        body = _strip_banner(f.read())
      change = f"with {diff}" if diff else "with the same config"
      banner = (f"{_BANNER_START}\n> **Not from the latest run.** This report is from the previous finished run, "
                f"whose config is config.json. A later run, started at {self.started} {change}, {what}; see "
                f"{MARKER}.\n{_BANNER_END}\n\n")
      _write_text(path, banner + body)

  # ------------------------------------------------------------ lifecycle

  def begin(self) -> "Outputs":
    """Creates the workdir, an empty staging folder and the ``INCOMPLETE`` marker."""
    if not _is_writer():
      return self
    os.makedirs(self.workdir, exist_ok=True)
    for name in os.listdir(self.workdir):  # Killed runs' leftovers.
      pid = name[len(STAGING) + 1:]
      if name.startswith(STAGING + "-") and pid.isdigit() and not _alive(int(pid)):
        shutil.rmtree(self.path(name), ignore_errors=True)
    shutil.rmtree(self.staging, ignore_errors=True)
    os.makedirs(self.staging)
    self._mark("is running, or was killed before it could say so")
    return self

  def commit(self, results_name: str, results: dict[str, Any]) -> dict[str, Any]:
    """Moves the staged report into the workdir with ``config.json`` and the results; removes the marker.

    Adds ``config_hash`` to ``results`` (and returns them).
    """
    results["config_hash"] = self.hash
    if not _is_writer():
      self.committed = True
      return results
    self._mark("finished, and its files were being moved in when it stopped: the files here may mix two runs; "
               "run the same command again")
    for root, _, files in os.walk(self.staging):
      for name in files:
        src = os.path.join(root, name)
        dst = self.final_path(src)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
    write_json(self.path(CONFIG), self.config)
    write_json(self.path(results_name), results)
    shutil.rmtree(self.staging, ignore_errors=True)
    try:
      os.remove(self.path(MARKER))
    except FileNotFoundError:
      pass  # Another run into this workdir finished first.
    self.committed = True
    return results

  def fail(self, exc: BaseException) -> None:
    """Says in the marker how the run ended; the previous run's files stay as they were."""
    if not _is_writer() or self.committed:
      return
    if isinstance(exc, KeyboardInterrupt):
      what = "was interrupted (Ctrl-C)"
    else:
      first = (str(exc).strip().splitlines() or [""])[0]
      what = f"failed ({type(exc).__name__}: {first})" if first else f"failed ({type(exc).__name__})"
    try:
      self._mark(what)
      shutil.rmtree(self.staging, ignore_errors=True)
    except OSError:
      pass  # The first marker stays; the run's own error is the one to report.

  def __enter__(self) -> "Outputs":
    return self.begin()

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc is not None:
      self.fail(exc)
    elif not self.committed and _is_writer():
      self.fail(RuntimeError("the run ended without writing its results"))
    return False
