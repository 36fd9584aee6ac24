"""Where a compiled JAX step spends its time, from a profiler trace.

``jax.profiler`` records one event per executed XLA operation (thunk) on the
threads that run it; the compiled HLO says what each operation is. Summing
the events by kind gives milliseconds per step for matrix products,
elementwise fusions, reductions and so on, and

.. math:: \\text{parallelism} = \\frac{\\sum \\text{op busy time}}{\\text{wall time}}

tells how many cores the step kept busy on average (1.0: one at a time).
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

_DEF = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([a-z][\w\-]*)\((.*)")
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_OP = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = \S+ ([a-z][\w\-]*)\(")


def _hlo_index(hlo: str) -> tuple[dict[str, tuple[str, str, str]], dict[str, collections.Counter]]:
  """name -> (shape, opcode, called computation); computation -> opcode counts."""
  defs, comps, cur = {}, {}, None
  for line in hlo.splitlines():
    if not line.startswith(" "):
      m = _COMP.match(line)
      cur = m.group(1) if m else None
      if cur:
        comps[cur] = collections.Counter()
      continue
    m = _DEF.match(line)
    if m:
      name, shape, op, rest = m.groups()
      called = re.search(r"calls=%?([\w.\-]+)", rest)
      defs[name] = (shape, op, called.group(1) if called else "")
    if cur:
      m = _OP.match(line)
      if m:
        comps[cur][m.group(1)] += 1
  return defs, comps


def categorize(name: str, defs, comps) -> str:
  """One of: matmul, reduction, gather/scatter, transpose/copy, fill/broadcast, elementwise, other."""
  shape, op, called = defs[name]
  ops = comps.get(called, collections.Counter({op: 1}))
  if op in ("dot", "convolution") or ops.get("dot") or ops.get("convolution"):
    return "matmul"
  if ops.get("scatter") or ops.get("gather") or op in ("scatter", "gather"):
    return "gather/scatter"
  if ops.get("reduce") or ops.get("reduce-window") or op in ("reduce", "reduce-window"):
    return "reduction"
  compute = {k for k in ops if k not in ("parameter", "bitcast", "broadcast", "constant", "copy", "transpose",
                                         "reshape", "slice", "concatenate", "tuple", "get-tuple-element")}
  if not compute:
    if ops.get("copy") or ops.get("transpose") or op in ("copy", "transpose"):
      return "transpose/copy"
    if ops.get("broadcast") or op == "broadcast":
      return "fill/broadcast"
    return "other"
  return "elementwise"


def profile_step(run: Callable[[], Any], hlo_text: str, *, steps: int = 3) -> dict[str, Any]:
  """Runs ``run()`` ``steps`` times under the profiler; returns the per-step breakdown.

  Returns:
    ``{"wall_ms", "busy_ms", "parallelism", "by_kind": {kind: ms}, "top": [(op, kind, ms)]}``
    with every time per step.
  """
  defs, comps = _hlo_index(hlo_text)
  jax.block_until_ready(run())
  with tempfile.TemporaryDirectory(prefix="w2sg-bench-trace-") as tmp:
    jax.profiler.start_trace(tmp)
    t0 = time.perf_counter()
    for _ in range(steps):
      jax.block_until_ready(run())
    wall = (time.perf_counter() - t0) / steps
    jax.profiler.stop_trace()
    files = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
    if not files:
      raise FileNotFoundError(f"the profiler wrote no trace under {tmp}")
    data = jax.profiler.ProfileData.from_file(files[0])
    per_op: collections.Counter = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        for ev in line.events:
          # Only events named after an HLO instruction are operations; the rest
          # (Python, dispatch, executor waits) wrap or wait for them.
          if ev.name in defs:
            per_op[ev.name] += ev.duration_ns
  by_kind: collections.Counter = collections.Counter()
  for name, ns in per_op.items():
    by_kind[categorize(name, defs, comps)] += ns
  busy = sum(per_op.values()) / steps / 1e6
  top = [(name, categorize(name, defs, comps), ns / steps / 1e6) for name, ns in per_op.most_common(8)]
  return {
      "wall_ms": wall * 1e3,
      "busy_ms": busy,
      "parallelism": busy / (wall * 1e3) if wall else None,
      "by_kind": {k: v / steps / 1e6 for k, v in by_kind.most_common()},
      "top": top,
  }
