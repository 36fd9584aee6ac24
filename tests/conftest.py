"""Shared test set-up: 8 simulated CPU devices unless the caller chose otherwise.

JAX's persistent compilation cache is process-global and JAX sets it up only
once per process, at the first compile after a directory is set (a later
directory is silently ignored): `main.run`, called in process by some tests,
and fixtures set it. `_restore_compilation_cache` puts the setting back, and
resets JAX's cache, after every test module, so no module inherits another's.
"""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="module", autouse=True)
def _restore_compilation_cache():
  """Whatever a test module sets as JAX's compilation cache stays in that module."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  before = jax.config.jax_compilation_cache_dir
  yield
  if jax.config.jax_compilation_cache_dir != before:
    jax.config.update("jax_compilation_cache_dir", before)
    compilation_cache.reset_cache()
