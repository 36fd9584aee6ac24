"""Benchmarks of w2sg-jax: ``python -m w2sg_jax.bench --outdir=runs/bench`` (``make bench``).

Sections (select with ``--only a,c``):

a. training step vs PyTorch (eager and ``torch.compile``), MiniLM-L6 and GPT-2 small;
b. arithmetic efficiency: FLOPs per step (XLA cost analysis, analytic, torch
   counter) and achieved FLOP/s against the machine's measured matmul peak;
c. vectorised sweeps: K seeds as one ``engines.train_vmap`` vs K calls; a grid of 4 learning rates x
   4 weight decays x 5 seeds as one ``engines.train_runs`` call vs its 80 runs one call at a time;
d. loss overhead: the MiniLM step with every f-divergence, relative to ``xent``;
e. weak-label streaming: Grain stream from the on-disk store vs memory;
f. device scaling: 1, 2, 4, 8 simulated CPU devices (correctness and overhead);
g. memory and the default experiment: peak RSS and wall time cold (against its FLOP floor, the MiniLM
   feature pass at the measured matmul peak) and warm (rerun on the same cache, with the programs it
   compiled), where the cold run's seconds go by stage, state sizes of the models;
h. the MiniLM feature pass of the default experiment vs PyTorch: tokens/s, share of peak, padding.

Every comparison is timed round-robin (A, B, C, A, B, C, ...), at least 15
repetitions per contender after warm-up, and repeated in 3 rounds
(``timing.time_rounds``; ``--quick`` keeps the structure with fewer). Each
round gives medians and their ratios; a headline ratio is the worst round.
Compilation is reported apart. A benchmark reports, it never passes or fails:
the targets are figures in the report (``targets.py``), never assertions. The
results go to ``OUTDIR/report.md`` (machine, load, peaks, targets and the
headline table first) and ``OUTDIR/bench.json``.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

SECTIONS = ("a", "b", "c", "d", "e", "f", "g", "h")

__all__ = ["SECTIONS", "parse_only", "run"]


def parse_only(only: str | Iterable[str] | None) -> tuple[str, ...]:
  """``"a,c"`` -> ``("a", "c")``; None or empty -> every section.

  Raises:
    ValueError: an unknown section letter (the message lists the known ones).
  """
  if only is None:
    return SECTIONS
  items = [s.strip().lower() for s in (only.split(",") if isinstance(only, str) else only) if s.strip()]
  unknown = sorted(set(items) - set(SECTIONS))
  if unknown:
    raise ValueError(f"unknown benchmark section(s) {', '.join(unknown)}; choose from {','.join(SECTIONS)} "
                     "(e.g. --only=a,c).")
  return tuple(s for s in SECTIONS if s in items) or SECTIONS


def run(outdir: str, *, quick: bool = False, only: str | Iterable[str] | None = None,
        torch_compile: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the selected sections, writes ``report.md`` and ``bench.json``, returns the results.

  A section that raises is recorded as ``{"error": ...}`` and the others still run.
  """
  from w2sg_jax.bench import encoder, memory, report, scaling, step, streaming, sweeps, timing

  selected = parse_only(only)
  t_start = time.perf_counter()
  reps, rounds = timing.reps_rounds(quick)
  results: dict[str, Any] = {"meta": {**timing.machine_info(), "quick": quick, "sections": list(selected),
                                      "reps": reps, "rounds": rounds},
                             "sections": {}}
  sections = results["sections"]
  os.makedirs(outdir, exist_ok=True)

  def guarded(key: str, fn: Callable[[], dict[str, Any]]) -> None:
    log(f"[{key}] {report.SECTION_TITLES[key]}")
    t0 = time.perf_counter()
    try:
      sections[key] = fn()
    except Exception as e:  # A benchmark reports; one failure must not hide the rest.
      sections[key] = {"error": f"{type(e).__name__}: {e}"}
      log(traceback.format_exc())
    if isinstance(sections[key], dict):
      sections[key]["section_s"] = time.perf_counter() - t0

  if "a" in selected or "b" in selected:
    key = "a" if "a" in selected else "b"
    guarded(key, lambda: step.bench_training_step(quick=quick, torch_compile=torch_compile, log=log))
    if "a" in selected and "b" in selected:
      sections["b"] = sections["a"]
  if "h" in selected:
    guarded("h", lambda: encoder.bench_encoder(quick=quick, log=log))
  if "c" in selected:
    guarded("c", lambda: sweeps.bench_sweeps(quick=quick, log=log))
  if "d" in selected:
    guarded("d", lambda: step.bench_losses(quick=quick, log=log))
  if "e" in selected:
    guarded("e", lambda: streaming.bench_streaming(quick=quick, log=log))
  if "f" in selected:
    guarded("f", lambda: scaling.bench_scaling(quick=quick, timeout_s=300 if quick else 900, workdir=outdir,
                                               log=log))
  if "g" in selected:
    guarded("g", lambda: memory.bench_memory(quick=quick, timeout_s=600 if quick else 1800,
                                             state_sizes=_state_sizes(sections, quick),
                                             peak=_matmul_peak(sections, quick), log=log))
  load = timing.loadavg()
  if load:
    results["meta"]["loadavg_end"] = load
    results["meta"]["loadavg_1m_end"] = load[0]
  results["meta"]["total_s"] = time.perf_counter() - t_start
  md, js = report.write(results, outdir)
  log(f"wrote {md} and {js} in {results['meta']['total_s']:.0f} s")
  return results


def _state_sizes(sections: dict[str, Any], quick: bool) -> dict[str, dict[str, int]]:
  """Parameter and optimizer bytes of the benchmarked models (measured by section a when it ran)."""
  from w2sg_jax.bench import step

  a = sections.get("a") or sections.get("b") or {}
  if not a.get("models"):
    return step.state_sizes(quick)
  out = {}
  for m in a.get("models", []):
    s = {"jax_params": m["jax_state_bytes"]["params"], "jax_opt_state": m["jax_state_bytes"]["opt_state"]}
    if "torch_state_bytes" in m:
      s["torch_params"] = m["torch_state_bytes"]["params"]
      s["torch_opt_state"] = m["torch_state_bytes"]["opt_state"]
    out[m["label"]] = s
  return out


def _matmul_peak(sections: dict[str, Any], quick: bool) -> dict[str, Any] | None:
  """Section g's floor peak as ``{"flops", "source"}``: the best product section b or h saw, else None (g measures).

  The best call over every round: load only ever slows a product, so the best
  is the nearest to what the machine can do.
  """
  a = sections.get("a") or sections.get("b") or {}
  if a.get("peak_gflops"):
    n = next(iter(a["peak"].values()))["n"]
    return {"flops": a["peak_gflops"] * 1e9, "source": f"section b's best {n}^3 float32 product"}
  h = sections.get("h") or {}
  if h.get("peak_rounds"):
    best = max(max(p["gflops_best"]) for p in h["peak_rounds"].values())
    return {"flops": best * 1e9, "source": f"section h's best {512 if quick else 2048}^3 float32 product"}
  return None
