"""The performance targets of issues 13, 21 and 23, read off a benchmark's results (figures, never assertions).

Each target is judged on its worst round where the figure comes from a
round-robin comparison. A missed target says by how much, and why in the
terms of the profile (where the step's time goes) when one was taken.
"""

from __future__ import annotations

from typing import Any

# The step targets, restated at the hardware's limit: in float32 on CPU both frameworks run the same
# matmuls at 70-84% of the peak, so a lead over PyTorch is out of reach; JAX must keep up instead.
STEP_MODELS = ("minilm", "gpt2", "llama")  # The rows the step targets are set for (section a may have more).
STEP_VS_EAGER = 0.95
STEP_VS_COMPILE = 0.9
STEP_SHARE_OF_PEAK = 0.80
PEAK_SHARE_MODELS = ("minilm", "gpt2")  # The two large rows; the tiny Llama's step is not matmul-bound.
ENCODER_SHARE_OF_PEAK = 0.60
SWEEP_K = 16
SWEEP_SPEEDUP = 10.0
GRID_SPEEDUP = 10.0  # Issue 21: a 16-setting x 5-seed grid as one program vs its 80 runs one call at a time.
GRID_COMPILE_RATIO = 2.0  # ... and the grid program's compile within 2x a single run's.
COLD_EXPERIMENT = "tweets_minilm"
COLD_EXPERIMENT_S = 60.0
# Issue 23, the default at its FLOP floor: cold wall time within 1.6x its MiniLM feature pass at the
# measured matmul peak (section g's floor_s); a rerun on the same cache within 5 s on the 2-core
# machines, compiling nothing (every program from the persistent compilation cache).
COLD_FLOOR_RATIO = 1.6
WARM_EXPERIMENT_S = 5.0
WARM_COMPILATIONS = 0


def _row(target: str, value: Any, met: bool | None, *, value_text: str, miss: str = "", why: str = "",
         key: str = "") -> dict[str, Any]:
  """``key`` names the figure for a report that prints it beside its target (section g: ``cold_s``, ...)."""
  return {"target": target, "value": value, "value_text": value_text, "met": met, "miss": miss, "why": why,
          "key": key}


def step_profile_why(m: dict[str, Any], peak_gflops: float) -> str:
  """Where the default JAX step's time goes, from its profile, in one sentence."""
  prof = (m.get("jax_profile") or {}).get("jax") or {}
  if "by_kind" not in prof:
    return ""
  busy, wall = prof["busy_ms"], prof["wall_ms"]
  mm = prof["by_kind"].get("matmul", 0.0)
  flops = (m.get("flops") or {}).get("analytic")
  parts = [f"profile: matmuls {mm:.0f} of {busy:.0f} busy ms ({100 * mm / busy:.0f}%)"]
  if flops and mm:
    # A product is one operation that uses every core inside its library call,
    # so its event time is wall time; nearly all FLOPs are in products.
    parts.append(f"the step's products run at ~{flops / (mm / 1e3) / 1e9:.0f} GFLOP/s "
                 f"against the {peak_gflops:.0f} GFLOP/s of a 2048^3 product")
  rest = {k: v for k, v in prof["by_kind"].items() if k != "matmul"}
  if rest:
    top = sorted(rest.items(), key=lambda kv: -kv[1])[:3]
    parts.append("then " + ", ".join(f"{k} {v:.0f} ms" for k, v in top))
  parts.append(f"op concurrency {prof['parallelism']:.2f} (busy {busy:.0f} / wall {wall:.0f} ms)")
  return "; ".join(parts)


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per target that this run measured."""
  out: list[dict[str, Any]] = []
  sec = results.get("sections", {})
  a = sec.get("a") or sec.get("b") or {}
  peak = a.get("peak_gflops")
  for m in a.get("models", []):
    if m.get("name") not in STEP_MODELS:
      continue
    ratios = m.get("ratios", {})
    for other, need, label in (("torch_eager", STEP_VS_EAGER, "PyTorch eager"),
                               ("torch_compile", STEP_VS_COMPILE, "torch.compile")):
      target = f"train step {m['label']} >= {need:g}x {label} in every round"
      r = ratios.get(other)
      if r is None:
        out.append(_row(target, None, None, value_text=str(m.get(other) or "not measured")))
        continue
      worst = r["worst"]
      met = worst >= need
      out.append(_row(target, worst, met,
                      value_text=f"worst {worst:.2f}x (rounds " + ", ".join(f"{x:.2f}" for x in r["per_round"]) + ")",
                      miss="" if met else f"short by {need - worst:.2f}x ({100 * (1 - worst / need):.0f}%)",
                      why="" if met else step_profile_why(m, peak or 0.0)))
    eff = (m.get("efficiency") or {}).get("jax")
    if eff and m.get("name") in PEAK_SHARE_MODELS:
      worst = min(eff)
      met = worst >= STEP_SHARE_OF_PEAK
      out.append(_row(f"train step {m['label']} >= {100 * STEP_SHARE_OF_PEAK:.0f}% of measured matmul peak", worst, met,
                      value_text=f"worst {100 * worst:.0f}% (rounds " + ", ".join(f"{100 * x:.0f}%" for x in eff) + ")",
                      miss="" if met else f"short by {100 * (STEP_SHARE_OF_PEAK - worst):.0f} points",
                      why="" if met else step_profile_why(m, peak or 0.0)))
  h = sec.get("h") or {}
  if isinstance(h.get("jax"), dict) and "share_of_peak" in h["jax"]:
    shares = h["jax"]["share_of_peak"]
    worst = min(shares)
    met = worst >= ENCODER_SHARE_OF_PEAK
    why = ""
    if not met:
      why = (f"the pass multiplies [{h['batch']} x {h['width']}, 384] activations by 384 x 384 and "
             "384 x 1536 weights, far smaller products than the 2048^3 one of the peak, with LayerNorm, "
             "GELU and softmax fusions between them; "
             f"padding is {100 * h['padding'].get('packed_share', h['padding']['padded_share']):.1f}% of the "
             "computed tokens")
    out.append(_row(f"encoder feature pass >= {100 * ENCODER_SHARE_OF_PEAK:.0f}% of measured matmul peak", worst, met,
                    value_text=f"worst {100 * worst:.0f}% (rounds " + ", ".join(f"{100 * x:.0f}%" for x in shares) + ")",
                    miss="" if met else f"short by {100 * (ENCODER_SHARE_OF_PEAK - worst):.0f} points", why=why))
  c = sec.get("c") or {}
  row = next((r for r in c.get("rows", []) if r["k"] == SWEEP_K), None)
  if row is not None:
    worst = row["worst_speedup"]
    met = worst >= SWEEP_SPEEDUP
    out.append(_row(f"K={SWEEP_K} vmapped heads >= {SWEEP_SPEEDUP:.0f}x faster than {SWEEP_K} separate runs", worst,
                    met, value_text=f"worst {worst:.1f}x (rounds " + ", ".join(f"{x:.1f}" for x in row["speedup"]) + ")",
                    miss="" if met else f"short by {SWEEP_SPEEDUP - worst:.1f}x",
                    why="" if met else (f"one run takes {min(row['one_run_s']):.2f}-{max(row['one_run_s']):.2f} s, "
                                        f"the group {min(row['group_s']):.2f}-{max(row['group_s']):.2f} s: "
                                        "the group's steps are wider, and compilation is paid once per call")))
  grid = c.get("grid") or {}
  if "speedup" in grid:
    worst = grid["worst_speedup"]
    met = worst >= GRID_SPEEDUP
    out.append(_row(f"grid of {grid['runs']} runs as one program >= {GRID_SPEEDUP:.0f}x faster than {grid['runs']} "
                    "separate runs", worst, met,
                    value_text=f"worst {worst:.1f}x (rounds " + ", ".join(f"{x:.1f}" for x in grid["speedup"]) + ")",
                    miss="" if met else f"short by {GRID_SPEEDUP - worst:.1f}x",
                    why="" if met else (f"the grid takes {min(grid['grid_s']):.2f}-{max(grid['grid_s']):.2f} s, "
                                        f"{1e3 * min(grid['grid_s']) / grid['runs']:.0f} ms a run, against "
                                        f"{1e3 * min(grid['one_run_s']):.0f}-{1e3 * max(grid['one_run_s']):.0f} ms "
                                        "a separate run: most of the grid's step is the loss's elementwise work on "
                                        "[runs, batch, 2] logits, which vmapping does not share")))
    ratio = grid["compile_ratio"]
    met = ratio <= GRID_COMPILE_RATIO
    out.append(_row(f"grid program compiles within {GRID_COMPILE_RATIO:.0f}x a single run's", ratio, met,
                    value_text=f"{ratio:.2f}x ({grid['cold']['grid']['compile_s']:.2f} s vs "
                               f"{grid['cold']['one run']['compile_s']:.2f} s)",
                    miss="" if met else f"over by {ratio - GRID_COMPILE_RATIO:.2f}x"))
  out += experiment_rows(sec.get("g") or {})
  return out


def stage_account(run: dict[str, Any]) -> str:
  """Where a run's seconds went, from its ``results.json`` profile (section g), in one sentence."""
  prof = run.get("profile")
  if not prof:
    return ""
  parts = []
  for stage, p in sorted(prof.items(), key=lambda kv: -kv[1].get("total_s", 0.0)):
    inner = [f"feature pass {p['feature_pass_s']:.1f} s"] if p.get("feature_pass_s") else []
    if p.get("compile_s"):
      inner.append(f"{p.get('programs_compiled', 0)} programs compiled in {p['compile_s']:.1f} s")
    parts.append(f"{stage} {p.get('total_s', 0.0):.1f} s" + (f" ({', '.join(inner)})" if inner else ""))
  if run.get("stages_s") is not None and "wall_s" in run:
    parts.append(f"outside the stages (start-up, imports, checks) {run['wall_s'] - run['stages_s']:.1f} s")
  return "profile: " + "; ".join(parts)


def experiment_rows(g: dict[str, Any]) -> list[dict[str, Any]]:
  """Section g's target rows, for ``COLD_EXPERIMENT`` only.

  Their keys: ``cold_s``, ``cold_floor_ratio``, ``warm_s``, ``warm_compilations``.
  """
  out: list[dict[str, Any]] = []
  cold = g.get("cold") or g.get("experiment") or {}  # `experiment`: bench.json written before issue 23.
  if cold.get("experiment") != COLD_EXPERIMENT or "wall_s" not in cold or cold.get("error"):
    return out
  wall = cold["wall_s"]
  met = wall <= COLD_EXPERIMENT_S
  out.append(_row(f"make experiment NAME={COLD_EXPERIMENT} cold <= {COLD_EXPERIMENT_S:.0f} s", wall, met,
                  value_text=f"{wall:.0f} s", miss="" if met else f"over by {wall - COLD_EXPERIMENT_S:.0f} s",
                  key="cold_s"))
  ratio = cold.get("floor_ratio")
  if ratio is not None:
    met = ratio <= COLD_FLOOR_RATIO
    over_s = wall - COLD_FLOOR_RATIO * cold["floor_s"]
    out.append(_row(f"make experiment NAME={COLD_EXPERIMENT} cold <= {COLD_FLOOR_RATIO:.1f}x its FLOP floor "
                    "(the MiniLM feature pass at the measured matmul peak)", ratio, met,
                    value_text=f"{ratio:.2f}x ({wall:.0f} s / floor {cold['floor_s']:.1f} s)",
                    miss="" if met else f"over by {ratio - COLD_FLOOR_RATIO:.2f}x ({over_s:.0f} s)",
                    why="" if met else stage_account(cold), key="cold_floor_ratio"))
  warm = g.get("warm") or {}
  if "wall_s" not in warm or warm.get("error"):
    return out
  wall = warm["wall_s"]
  met = wall <= WARM_EXPERIMENT_S
  out.append(_row(f"make experiment NAME={COLD_EXPERIMENT} warm rerun (same cache) <= {WARM_EXPERIMENT_S:.0f} s "
                  "on 2 cores", wall, met, value_text=f"{wall:.1f} s",
                  miss="" if met else f"over by {wall - WARM_EXPERIMENT_S:.1f} s",
                  why="" if met else stage_account(warm), key="warm_s"))
  n = warm.get("compilations")
  if n is not None:
    met = n <= WARM_COMPILATIONS
    per_stage = ", ".join(f"{stage} {p['programs_compiled']}" for stage, p in warm["profile"].items()
                          if p.get("programs_compiled"))
    out.append(_row(f"make experiment NAME={COLD_EXPERIMENT} warm rerun compiles {WARM_COMPILATIONS} programs",
                    n, met, value_text=f"{n} programs", miss="" if met else f"{n - WARM_COMPILATIONS} over",
                    why="" if met else f"programs compiled per stage: {per_stage}", key="warm_compilations"))
  return out
