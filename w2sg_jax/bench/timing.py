"""Timing primitives shared by the benchmarks.

A comparison is never one run of each contender. :func:`time_rounds` times
the contenders round-robin (A, B, C, A, B, C, ...) for ``reps`` repetitions
each after a warm-up, and repeats that whole comparison in ``rounds`` rounds;
each round gives every contender a median, and a ratio of two contenders is
the ratio of their medians within one round, so both saw the same background
load. The headline of a comparison is its worst round: noise that favours one
contender in one round cannot decide it.

A JAX call is timed until ``jax.block_until_ready`` returns on its outputs,
so asynchronous dispatch never hides work. Compilation is timed on its own
(``jitted.lower(...).compile()``) and never mixed into a step time. The clock
and the synchronisation are parameters, so tests can drive the harness with a
fake clock and check the schedule and the arithmetic exactly.
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


# Every timed comparison of a full run: repetitions per contender and round, and rounds.
REPS = 15
ROUNDS = 3
# --quick checks the harness, not the figures: the same structure, fewer samples.
QUICK_REPS = 3
QUICK_ROUNDS = 2


def reps_rounds(quick: bool) -> tuple[int, int]:
  return (QUICK_REPS, QUICK_ROUNDS) if quick else (REPS, ROUNDS)


@dataclasses.dataclass
class Rounds:
  """Samples of a round-robin comparison: ``samples[round][name]`` is a list of seconds.

  ``order`` records the calls as they ran, ``(round, rep, name)``, with
  ``rep = -1`` for warm-up calls.
  """

  names: list[str]
  samples: list[dict[str, list[float]]]
  order: list[tuple[int, int, str]]

  @property
  def rounds(self) -> int:
    return len(self.samples)

  def medians(self, name: str) -> list[float]:
    """Median seconds of ``name`` in each round."""
    return [float(statistics.median(r[name])) for r in self.samples]

  def timing(self, name: str) -> dict[str, Any]:
    """Per-round ``median_s``, ``min_s``, ``max_s`` lists and the repetitions per round."""
    return {
        "median_s": self.medians(name),
        "min_s": [float(min(r[name])) for r in self.samples],
        "max_s": [float(max(r[name])) for r in self.samples],
        "reps": len(self.samples[0][name]) if self.samples else 0,
    }

  def speedup(self, name: str, baseline: str) -> list[float]:
    """How many times faster ``name`` ran than ``baseline``, per round (ratio of medians)."""
    return [b / a for a, b in zip(self.medians(name), self.medians(baseline))]

  def worst_speedup(self, name: str, baseline: str) -> float:
    """The headline: the round least favourable to ``name``."""
    return min(self.speedup(name, baseline))

  def best_s(self, name: str) -> float:
    """The fastest call of ``name`` over every round (a peak, not a typical time)."""
    return float(min(min(r[name]) for r in self.samples))


def time_rounds(fns: dict[str, Callable[[], Any]], *, warmup: int, reps: int, rounds: int,
                clock: Callable[[], float] = time.perf_counter,
                sync: Callable[[Any], Any] = jax.block_until_ready) -> Rounds:
  """Times the callables round-robin: ``rounds`` x (``reps`` x (each of ``fns`` once)).

  ``warmup`` untimed round-robin calls of each come first. On a shared
  machine the background load drifts; alternating the contenders call by
  call exposes them to the same load, so a ratio within a round stays fair
  even when the absolute figures move, and repeating the comparison in
  rounds shows how far the ratio itself moves.
  """
  if reps < 1 or rounds < 1:
    raise ValueError(f"reps={reps}, rounds={rounds}; use reps >= 1 and rounds >= 1.")
  names = list(fns)
  order: list[tuple[int, int, str]] = []
  for _ in range(warmup):
    for name in names:
      sync(fns[name]())
      order.append((0, -1, name))
  samples = []
  for r in range(rounds):
    got: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(reps):
      for name in names:
        t0 = clock()
        sync(fns[name]())
        got[name].append(clock() - t0)
        order.append((r, rep, name))
    samples.append(got)
  return Rounds(names, samples, order)


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


def matmul_fns(n: int, torch: Any = None) -> dict[str, Callable[[], Any]]:
  """``{"peak_jax": ..., "peak_torch": ...}``: an ``n x n`` float32 product in each framework (2 n^3 FLOPs).

  Timed as contenders next to a benchmark's own (:func:`time_rounds`), they
  give each round the peak under that round's load (:func:`peak_from_rounds`).
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  fns: dict[str, Callable[[], Any]] = {"peak_jax": lambda: f(a, b)}
  if torch is not None:
    g = torch.Generator().manual_seed(0)
    ta, tb = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    fns["peak_torch"] = lambda: torch.mm(ta, tb)
  return fns


def peak_from_rounds(res: "Rounds", n: int) -> dict[str, dict[str, list[float]]]:
  """Per framework, the matmul peak of each round: GFLOP/s of the median and of the best call."""
  flops = 2.0 * n**3
  out = {}
  for name in res.names:
    if name.startswith("peak_"):
      out[name[len("peak_"):]] = {
          "gflops_median": [flops / t / 1e9 for t in res.medians(name)],
          "gflops_best": [flops / min(r[name]) / 1e9 for r in res.samples],
      }
  return out


def peak_matmul(n: int, *, reps: int, rounds: int = 1, torch: Any = None) -> dict[str, dict[str, float]]:
  """Measured float32 matmul throughput of each framework: XLA, and ``torch.mm`` when given torch.

  An ``n x n`` by ``n x n`` product costs 2 n^3 FLOPs. The two frameworks are
  timed round-robin (:func:`time_rounds`), and each one's peak is its best
  call over every round: the peak is what the hardware can do, and load only
  ever slows it.
  """
  fns = matmul_fns(n, torch)
  res = time_rounds(fns, warmup=1, reps=reps, rounds=rounds)
  flops = 2.0 * n**3
  return {k[len("peak_"):]: {"n": n, "best_s": res.best_s(k), "median_s": float(statistics.median(res.medians(k))),
                             "gflops": flops / res.best_s(k) / 1e9} for k in fns}


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
  import platform

  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
  """The 1, 5 and 15 minute load averages, or None where the OS has none."""
  try:
    return [float(x) for x in os.getloadavg()]
  except OSError:
    return None


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
      "processor": cpu_model(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  load = loadavg()
  if load:
    info["loadavg_start"] = load
    info["loadavg_1m_start"] = load[0]
  torch, status = torch_status()
  info["torch"] = status if torch is None else torch.__version__
  return info
