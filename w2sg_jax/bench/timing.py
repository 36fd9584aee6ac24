"""Timing primitives shared by the benchmarks.

Every figure is the median of ``reps`` timed calls after ``warmup`` untimed
ones; a JAX call is timed until ``jax.block_until_ready`` returns on its
outputs, so asynchronous dispatch never hides work. Compilation is timed on
its own (``jitted.lower(...).compile()``) and never mixed into a step time.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Timing:
  """Seconds per call: the median and the spread of the timed repetitions."""

  median_s: float
  min_s: float
  max_s: float
  reps: int

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


def summarize(samples_s: Sequence[float]) -> Timing:
  if not samples_s:
    raise ValueError("no timed repetitions; use reps >= 1.")
  return Timing(
      median_s=float(statistics.median(samples_s)),
      min_s=float(min(samples_s)),
      max_s=float(max(samples_s)),
      reps=len(samples_s),
  )


def time_call(fn: Callable[[], Any]) -> float:
  """Wall seconds of one ``fn()``, stopped after its outputs are ready."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def time_calls(fn: Callable[[], Any], *, warmup: int, reps: int) -> Timing:
  """Median over ``reps`` timed calls of ``fn`` after ``warmup`` untimed ones."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  return summarize([time_call(fn) for _ in range(reps)])


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int, reps: int) -> dict[str, Timing]:
  """Times several callables in round-robin order, ``reps`` rounds.

  On a shared machine the background load drifts; alternating the contenders
  inside each round exposes them to the same load, so their ratio stays fair
  even when the absolute figures move.
  """
  for _ in range(warmup):
    for fn in fns.values():
      jax.block_until_ready(fn())
  samples: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      samples[name].append(time_call(fn))
  return {k: summarize(v) for k, v in samples.items()}


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
  """``(compiled, seconds)`` for ``jitted.lower(*args).compile()``."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of one call from XLA's cost analysis (None when the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Some backends do not implement it.
    return None
  if isinstance(cost, (list, tuple)):  # Older JAX returned one dict per program.
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def tree_bytes(tree: Any) -> int:
  """Total bytes of the array leaves of a pytree."""
  return int(sum(getattr(x, "nbytes", None) or np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------- peak


def peak_matmul_jax(n: int, *, reps: int) -> dict[str, float]:
  """Measured float32 matmul throughput of XLA on the default device.

  An ``n x n`` by ``n x n`` product costs 2 n^3 FLOPs; the best of ``reps``
  calls estimates the machine's attainable peak (the best, not the median:
  the peak is what the hardware can do, and load only ever slows it).
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  timing = time_calls(lambda: f(a, b), warmup=1, reps=reps)
  flops = 2.0 * n**3
  return {"n": n, "best_s": timing.min_s, "median_s": timing.median_s, "gflops": flops / timing.min_s / 1e9}


def peak_matmul_torch(n: int, *, reps: int) -> dict[str, float]:
  """The same measurement with ``torch.mm`` (torch must be importable)."""
  import torch

  g = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=g)
  b = torch.randn(n, n, generator=g)
  torch.mm(a, b)
  samples = []
  for _ in range(reps):
    t0 = time.perf_counter()
    torch.mm(a, b)
    samples.append(time.perf_counter() - t0)
  best = min(samples)
  return {"n": n, "best_s": best, "median_s": statistics.median(samples), "gflops": 2.0 * n**3 / best / 1e9}


# ---------------------------------------------------------------- context


def torch_status() -> tuple[Any, str]:
  """``(torch module or None, a one-line status)``."""
  try:
    import torch
  except ImportError:
    return None, "torch not installed: pip install -e '.[bench]'"
  return torch, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def machine_info() -> dict[str, Any]:
  """What the figures depend on: versions, devices, cores, load, flags."""
  import platform

  import flax
  import optax

  info = {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "backend": jax.default_backend(),
      "devices": len(jax.devices()),
      "device_kind": jax.devices()[0].device_kind,
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  try:
    info["loadavg_1m_start"] = os.getloadavg()[0]
  except OSError:
    pass
  torch, status = torch_status()
  info["torch"] = status if torch is None else torch.__version__
  return info
