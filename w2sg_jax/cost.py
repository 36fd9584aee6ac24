"""What a compiled program costs, read from XLA: FLOPs, bytes accessed, peak memory.

The figures come from the compiled program, not from a formula:
``jitted.lower(*args).compile()``, then ``cost_analysis()`` (FLOPs and bytes
accessed) and ``memory_analysis()`` (buffer sizes). Units: FLOPs are counted
operations (a multiply-add is 2), bytes are bytes.

What is counted, and what is not:

* A loop body (``fori_loop``, ``while_loop``, ``scan``) is counted ONCE,
  whatever its trip count. So the cost of a training run is one step's cost
  times the number of steps: the vmap engine reads it from its chunk loop's
  program (a loop over steps whose body is one step: counted once, so one
  step, plus the carry's initial zeros), the data-parallel engine from its
  step program. Both are the programs the run executes, compiled once.
* A sharded program is compiled per device: its FLOPs and bytes are one
  device's share. The engines multiply the FLOPs by the device count for a
  run's total (work that every device repeats, such as a replicated
  optimizer update, then counts once per device).
* The peak is arguments + outputs - aliased (donated) buffers + temporaries,
  per device, as XLA assigns buffers for that backend.

`engines.train_runs` reports these per run (`engines.TrainedRuns.cost`),
with the wall time of runs trained together (vmap) split evenly among them.

jax is imported lazily: `w2sg_jax.plan` imports this module before it sets
the XLA flags of its simulated devices.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compiled_cost", "cost_of", "device_peak_bytes", "flops_of", "bytes_accessed_of", "memory_of"]

_MEMORY_FIELDS = {
    "arguments": "argument_size_in_bytes",
    "outputs": "output_size_in_bytes",
    "aliased": "alias_size_in_bytes",
    "temporaries": "temp_size_in_bytes",
    "code": "generated_code_size_in_bytes",
}


def _cost_dict(compiled: Any) -> dict[str, float]:
  """``compiled.cost_analysis()`` as one dict (older JAX gave a list, one per program); {} when unavailable."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except (some backends do not implement it)
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def flops_of(compiled: Any) -> float:
  """FLOPs of one call of the compiled (per-device) program; 0 when the backend gives none."""
  return float(_cost_dict(compiled).get("flops", 0.0))


def bytes_accessed_of(compiled: Any) -> float:
  """Bytes read and written by one call of the compiled (per-device) program; 0 when unavailable."""
  return float(_cost_dict(compiled).get("bytes accessed", 0.0))


def memory_of(compiled: Any) -> dict[str, int]:
  """Bytes per device from ``compiled.memory_analysis()``; ``peak`` = arguments + outputs - aliased + temporaries.

  Every field is 0 when the backend reports no memory analysis (or lacks that field).
  """
  m = compiled.memory_analysis()
  out = {name: int(getattr(m, field, 0) or 0) if m is not None else 0 for name, field in _MEMORY_FIELDS.items()}
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


def cost_of(compiled: Any) -> dict[str, float | int]:
  """``{"flops", "bytes_accessed", "peak_bytes"}`` of one call of a compiled program (per device)."""
  return {"flops": flops_of(compiled), "bytes_accessed": bytes_accessed_of(compiled),
          "peak_bytes": memory_of(compiled)["peak"]}


def compiled_cost(jitted: Any, *args: Any, **kwargs: Any) -> dict[str, float | int]:
  """`cost_of` ``jitted.lower(*args, **kwargs).compile()``.

  ``args`` may be arrays or ``jax.ShapeDtypeStruct`` (with their shardings):
  lowering reads shapes only, so nothing runs on the device. The compilation
  is the one a later call with the same shapes and shardings reuses (jit's
  cache), so costing a program that runs anyway compiles nothing extra.
  """
  return cost_of(jitted.lower(*args, **kwargs).compile())


def lowered_flops(jitted: Any, *args: Any, **kwargs: Any) -> float:
  """FLOPs of ``jitted.lower(*args, **kwargs)`` by XLA's analysis of the program before optimization: traced,
  not compiled. For a branch of a conditional, whose compiled cost XLA reports as the costliest branch's."""
  return flops_of(jitted.lower(*args, **kwargs))


def device_peak_bytes() -> int | None:
  """The first local device's ``peak_bytes_in_use`` (GPU/TPU); None where it reports none (CPU).

  A high-water mark since the process started (or the allocator last reset
  it), not one program's own peak.
  """
  import jax  # pylint: disable=g-import-not-at-top

  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except (not implemented on every backend)
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])
