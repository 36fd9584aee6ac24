"""Counting the programs XLA compiles, for tests that a warm run or a shared program compiles nothing."""

import collections
import contextlib

import jax

# jax/_src/dispatch.py's BACKEND_COMPILE_EVENT, the event w2sg_jax/stages.py counts too.
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
  """The programs XLA compiles in the block, by name (``jax.monitoring``)."""
  compiled = collections.Counter()

  def listener(event, _seconds, **kwargs):
    if event == BACKEND_COMPILE:
      compiled[kwargs.get("fun_name", "?")] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiled
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
