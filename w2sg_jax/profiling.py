"""Where code below the stages reports the parts of its wall time.

A stage (``stages.Profile.stage``) makes its profile the *current* one while
it runs; code it calls, a task's ``splits`` for instance, times its parts with
:func:`part` and counts with :func:`add` without knowing about stages::

  with profiling.part("tokenize"):
    enc = tokenize_lib.encode(...)

Outside a profiled stage both do nothing (tests, benchmarks, notebooks). The
reporter is any object with ``part(name)`` (a context manager) and
``add(name, value)``, as ``stages.Profile`` has.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

__all__ = ["part", "add", "reporting_to"]

_CURRENT: contextvars.ContextVar[Any | None] = contextvars.ContextVar("w2sg_profile", default=None)


@contextlib.contextmanager
def reporting_to(profile: Any):
  """Makes ``profile`` the one :func:`part` and :func:`add` report to, for the ``with`` block."""
  token = _CURRENT.set(profile)
  try:
    yield profile
  finally:
    _CURRENT.reset(token)


@contextlib.contextmanager
def part(name: str):
  """Adds the block's wall time to the current stage's part ``name`` (``name_s`` in the profile)."""
  profile = _CURRENT.get()
  if profile is None:
    yield
    return
  with profile.part(name):
    yield


def add(name: str, value: float) -> None:
  """Adds ``value`` to the current stage's counter ``name`` (nothing outside a stage)."""
  profile = _CURRENT.get()
  if profile is not None:
    profile.add(name, value)
