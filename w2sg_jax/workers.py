"""Many runs over many hosts: worker ``i`` of ``N`` trains the groups of runs whose key falls to it.

Every training run (a ceiling seed, a student) is a cache entry named by its
key, a sha256 hex digest (`w2sg_jax.cache.stage_key`). Worker ``i/N`` owns the
keys with ``int(key[:16], 16) % N == i``: every key belongs to exactly one
worker, whatever the order in which the workers reach it, and no worker has to
talk to another. The workers share one cache directory; the stages upstream of
the runs (data, features, weak model, weak labels) are made by whichever worker
gets there first, under the cache's file locks. A last pass with
``--report_only`` trains nothing and writes the report once every run exists::

  python -m w2sg_jax.main --config=... --workdir=runs/x --worker=0/2 &   # host A
  python -m w2sg_jax.main --config=... --workdir=runs/x --worker=1/2 &   # host B
  python -m w2sg_jax.main --config=... --workdir=runs/x --report_only    # when both are done

In a job array the worker comes from the environment (`from_environment`):
``W2SG_WORKER=i/N``, else Slurm's ``SLURM_ARRAY_TASK_ID`` and
``SLURM_ARRAY_TASK_COUNT``; a ``--worker`` flag wins over both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

__all__ = ["ALL", "Worker", "WorkerError", "from_environment", "parse"]

ENV = "W2SG_WORKER"
_SLURM_ID, _SLURM_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
_SLURM_MIN, _SLURM_STEP = "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"
_KEY_DIGITS = 16  # 64 bits of the key decide its worker.


class WorkerError(ValueError):
  """A ``--worker`` value (or its environment) that does not name one worker of N."""


@dataclasses.dataclass(frozen=True)
class Worker:
  """Worker ``index`` of ``count``: trains the runs whose key it `owns`."""

  index: int
  count: int
  source: str = dataclasses.field(default="--worker", compare=False)  # Where it came from, for messages.

  def __post_init__(self):
    if not isinstance(self.count, int) or self.count < 1:
      raise WorkerError(f"worker count {self.count!r}: the number of workers must be an integer of at least 1.")
    if not isinstance(self.index, int) or not 0 <= self.index < self.count:
      raise WorkerError(f"worker index {self.index!r} of {self.count}: the index must be in 0..{self.count - 1} "
                        f"(workers are numbered from 0, as in 0/{self.count} .. {self.count - 1}/{self.count}).")

  def owns(self, key: str) -> bool:
    """Whether the run of cache key ``key`` (a hex digest) is this worker's to train."""
    return int(key[:_KEY_DIGITS], 16) % self.count == self.index

  def __str__(self) -> str:
    return f"{self.index}/{self.count}"


# No worker: one process trains every run.
ALL: Worker | None = None


def parse(value: str, *, source: str = "--worker") -> Worker:
  """``"i/N"`` -> ``Worker(i, N)``; a `WorkerError` that says what is wrong and how to write it."""
  text = str(value).strip()
  index, slash, count = text.partition("/")
  if not slash or not index.strip().lstrip("-").isdigit() or not count.strip().lstrip("-").isdigit():
    raise WorkerError(f"{source}={value!r} is not a worker: write i/N, the worker's index i (from 0) and the number "
                      "of workers N, as in --worker=0/4 .. --worker=3/4 for four workers on one shared cache_dir.")
  i, n = int(index), int(count)
  if n < 1:
    raise WorkerError(f"{source}={value!r}: the number of workers N must be at least 1; write i/N as in "
                      "--worker=0/2 and --worker=1/2 for two workers.")
  if not 0 <= i < n:
    raise WorkerError(f"{source}={value!r}: the worker index must be in 0..{n - 1} for {n} workers (numbered from 0: "
                      f"0/{n} .. {n - 1}/{n}).")
  return Worker(i, n, source)


def _slurm(environ: Mapping[str, str]) -> Worker | None:
  task, count = environ.get(_SLURM_ID, "").strip(), environ.get(_SLURM_COUNT, "").strip()
  if not task and not count:
    return None
  source = f"{_SLURM_ID}={task or '(unset)'}, {_SLURM_COUNT}={count or '(unset)'}"
  try:
    task_id, n = int(task), int(count)
    first, step = int(environ.get(_SLURM_MIN, "0") or 0), int(environ.get(_SLURM_STEP, "1") or 1)
  except ValueError:
    raise WorkerError(f"this job array's environment ({source}) does not say which worker this is; pass "
                      "--worker=i/N (from 0) or set W2SG_WORKER=i/N.") from None
  offset = task_id - first
  if step < 1 or offset % step or not 0 <= offset // step < n:
    raise WorkerError(f"this job array's task ({source}, {_SLURM_MIN}={first}, {_SLURM_STEP}={step}) is not one of "
                      f"{n} evenly spaced tasks; pass --worker=i/N (from 0) or set W2SG_WORKER=i/N.")
  return Worker(offset // step, n, f"{_SLURM_ID}/{_SLURM_COUNT}")


def from_environment(flag_value: str | None, environ: Mapping[str, str] | None = None) -> Worker | None:
  """The worker of this process: ``--worker`` if given, else ``W2SG_WORKER``, else Slurm's array task.

  None (`ALL`) when none is set: this process trains every run. ``--worker=0/1``
  also means every run, and overrides a job array's environment.
  """
  environ = os.environ if environ is None else environ
  if flag_value is not None and str(flag_value).strip():
    return parse(flag_value)
  if environ.get(ENV, "").strip():
    return parse(environ[ENV], source=ENV)
  return _slurm(environ)
