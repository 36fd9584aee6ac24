"""JAX's persistent compilation cache follows each run's cache_dir, and never leaks between tests."""

import os

import jax
import jax.numpy as jnp
import pytest

from w2sg_jax import main as main_lib


@pytest.fixture
def cache_everything():
  """Every compile is written (JAX skips those under 1 s by default); the settings are put back."""
  from jax.experimental.compilation_cache import compilation_cache

  saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def _compile(scale):
  return jax.jit(lambda x: jnp.tanh(x) * scale)(jnp.ones(3)).block_until_ready()


def test_a_second_cache_dir_in_one_process_is_used(tmp_path, cache_everything):
  first, second = tmp_path / "a" / "xla", tmp_path / "b" / "xla"
  main_lib._use_compilation_cache(str(first))
  _compile(2.0)
  assert any(n.endswith("-cache") for n in os.listdir(first))
  # JAX alone keeps writing to the first directory once its cache is set up.
  main_lib._use_compilation_cache(str(second))
  _compile(3.0)
  assert any(n.endswith("-cache") for n in os.listdir(second))


def test_the_cache_setting_does_not_leak_between_modules():
  # conftest's module fixture restored what test modules before this one set.
  assert jax.config.jax_compilation_cache_dir == os.environ.get("JAX_COMPILATION_CACHE_DIR")
