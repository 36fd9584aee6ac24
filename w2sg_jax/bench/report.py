"""``report.md`` and ``bench.json`` from the benchmark results.

``bench.json`` holds everything measured (seconds, FLOPs, bytes; every timed
figure as one value per round); the report opens with the machine (CPU model,
load average, each framework's matmul peak), the targets and a headline table
(benchmark, JAX, PyTorch eager, torch.compile, worst-round ratio), then gives
one section per benchmark with every round's medians. A section that did not
run (``--only``) or failed says so instead of disappearing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from w2sg_jax.bench import notes, targets

SECTION_TITLES = {
    "a": "a. Training step vs PyTorch",
    "b": "b. Arithmetic efficiency",
    "c": "c. Vectorised sweeps",
    "d": "d. Loss overhead",
    "e": "e. Weak-label streaming",
    "f": "f. Device scaling",
    "g": "g. Memory, and the default experiment cold and warm",
    "h": "h. Encoder feature pass",
}
NA = "n/a"


def _fmt(x: Any, spec: str = ".1f", suffix: str = "") -> str:
  if x is None:
    return NA
  if isinstance(x, str):
    return x
  return f"{x:{spec}}{suffix}"


def _mib(b: Any) -> str:
  return NA if b is None else f"{b / 2**20:.1f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return out


def _rounds(values: Any, spec: str = ".1f", scale: float = 1.0, suffix: str = "") -> str:
  """Per-round figures as ``a / b / c``."""
  if not isinstance(values, list):
    return _fmt(values if not isinstance(values, (int, float)) else values * scale, spec, suffix)
  return " / ".join(f"{v * scale:{spec}}{suffix}" for v in values)


def _eps(row: dict[str, Any], key: str) -> Any:
  """Per-round examples/s of a contender, or its status string (failed / not installed)."""
  v = row.get(key)
  if isinstance(v, dict):
    return v["examples_per_s"]
  return v


def _worst(row: dict[str, Any], other: str) -> str:
  r = row.get("ratios", {}).get(other)
  return NA if r is None else f"{r['worst']:.2f}x"


# ------------------------------------------------------------------ headline


def headline(results: dict[str, Any]) -> list[list[str]]:
  rows: list[list[str]] = []
  sec = results["sections"]
  a = sec.get("a", {})
  for m in a.get("models", []):
    j, e, c = _eps(m, "jax"), _eps(m, "torch_eager"), _eps(m, "torch_compile")
    ratio = f"{_worst(m, 'torch_eager')} ({_worst(m, 'torch_compile')} vs compile)"
    jcell = _rounds(j)
    if m.get("chains", 1) > 1:
      jcell += f" ({m['chains']} chains; one chain {_rounds(_eps(m, 'jax_plain'))}, worst {_worst(m, 'jax_plain')})"
    rows.append([f"train step, {m['label']} (examples/s per round)", jcell, _rounds(e), _rounds(c), ratio])
  b = sec.get("b", {})
  if "models" in b:
    for m in b["models"]:
      eff = m["efficiency"]
      rows.append([f"FLOP/s share of measured peak, {m['name']} (per round)",
                   _rounds(eff.get("jax"), ".0f", 100, "%"), _rounds(eff.get("torch_eager"), ".0f", 100, "%"),
                   _rounds(eff.get("torch_compile"), ".0f", 100, "%"), NA])
  h = sec.get("h", {})
  if isinstance(h.get("jax"), dict):
    t = h.get("torch") if isinstance(h.get("torch"), dict) else None
    rows.append(["MiniLM feature pass, real tokens/s per round (share of peak)",
                 _rounds(h["jax"]["tokens_per_s"], ".0f")
                 + (f" ({_rounds(h['jax']['share_of_peak'], '.0f', 100, '%')})" if "share_of_peak" in h["jax"] else ""),
                 _rounds(t["tokens_per_s"], ".0f") if t else _fmt(h.get("torch")), NA,
                 f"{h['ratios']['torch']['worst']:.2f}x" if "torch" in h.get("ratios", {}) else NA])
  c = sec.get("c", {})
  if c.get("rows"):
    last = c["rows"][-1]
    rows.append([f"sweep of K={last['k']} heads: one vmapped group vs {last['k']} separate runs (speed-up per round)",
                 f"{_rounds(last['speedup'])}x (worst {last['worst_speedup']:.1f}x)", NA, NA, NA])
  grid = c.get("grid")
  if isinstance(grid, dict) and "speedup" in grid:
    rows.append([f"grid of {grid['runs']} heads ({len(grid['learning_rates'])} lr x {len(grid['weight_decays'])} wd x "
                 f"{grid['seeds']} seeds): one program vs {grid['runs']} separate runs (speed-up per round)",
                 f"{_rounds(grid['speedup'])}x (worst {grid['worst_speedup']:.1f}x); compile "
                 f"{grid['compile_ratio']:.2f}x one run's", NA, NA, NA])
  d = sec.get("d", {})
  if d.get("rows"):
    worst = max(d["rows"], key=lambda r: max(r["loss_alone_us"]))
    share = max(max(r["loss_share_of_step"]) for r in d["rows"])
    rel = [x for r in d["rows"] if "relative_to_xent" in r for x in r["relative_to_xent"]]
    rows.append(["loss overhead: slowest loss alone (fwd+bwd) as a share of a MiniLM step",
                 f"{worst['loss']}: {max(worst['loss_alone_us']):.0f} us; at most {100 * share:.3f}% of a step; "
                 f"whole steps {min(rel):.2f}-{max(rel):.2f}x xent", NA, NA, NA])
  e = sec.get("e", {})
  if e.get("rows"):
    g = next(r for r in e["rows"] if r["feed"] == "grain (prefetch)")
    rows.append(["head step fed by the Grain weak-label stream / fed from memory (per round)",
                 f"{_rounds(g['relative_to_memory'], '.2f')}x", NA, NA, NA])
  f = sec.get("f", {})
  if f.get("rows"):
    r8 = f["rows"][-1]
    diff = max(r["max_param_diff_vs_1"] for r in f["rows"])
    rows.append([f"data-parallel step on {r8['devices']} simulated CPU devices / 1 device (time per round)",
                 f"{_rounds(r8['time_vs_1'], '.2f')}x; max param diff {diff:.0e}", NA, NA, NA])
  g = sec.get("g", {})
  exp = g.get("cold") or g.get("experiment", {})
  marks = _experiment_marks(g)
  if "peak_rss_mib" in exp:
    label, cell = f"`{exp['experiment']}` cold: wall time, peak RSS", (
        f"{exp.get('wall_s', 0):.0f} s{_mark(marks, 'cold_s')}, {exp['peak_rss_mib']:.0f} MiB")
    if "floor_ratio" in exp:
      label += "; cold / FLOP floor"
      cell += f"; {exp['floor_ratio']:.2f}x a floor of {exp['floor_s']:.1f} s{_mark(marks, 'cold_floor_ratio')}"
    rows.append([label, cell, NA, NA, NA])
  warm = g.get("warm") or {}
  if "wall_s" in warm and not warm.get("error"):
    rows.append([f"`{warm['experiment']}` warm rerun (same workdir and cache): wall time, programs compiled",
                 f"{warm['wall_s']:.1f} s{_mark(marks, 'warm_s')}; {_fmt(warm.get('compilations'), 'd')} programs"
                 f"{_mark(marks, 'warm_compilations')}", NA, NA, NA])
  return rows


# The bound of each section g target, as printed beside its figure.
_BOUNDS = {"cold_s": f"<= {targets.COLD_EXPERIMENT_S:.0f} s", "cold_floor_ratio": f"<= {targets.COLD_FLOOR_RATIO:.1f}x",
           "warm_s": f"<= {targets.WARM_EXPERIMENT_S:.0f} s", "warm_compilations": f"{targets.WARM_COMPILATIONS}"}


def _experiment_marks(g: dict[str, Any]) -> dict[str, dict[str, Any]]:
  return {r["key"]: r for r in targets.experiment_rows(g)}


def _mark(marks: dict[str, dict[str, Any]], key: str) -> str:
  """`` (target <= 5 s: met)`` beside a figure, or nothing where the target does not apply (another experiment)."""
  r = marks.get(key)
  if r is None:
    return ""
  verdict = {True: "met", False: f"**missed**, {r['miss']}", None: NA}[r["met"]]
  return f" (target {_BOUNDS[key]}: {verdict})"


def _targets(results: dict[str, Any]) -> list[str]:
  rows = targets.evaluate(results)
  if not rows:
    return ["No target was measured in this run (see --only)."]
  out = _table(["target", "this run", "met", "by how much"],
               [[r["target"], r["value_text"], {True: "yes", False: "**no**", None: NA}[r["met"]], r["miss"] or ""]
                for r in rows])
  whys = [r for r in rows if r["met"] is False and r["why"]]
  if whys:
    out += ["", "Why the missed ones fall short:", ""]
    out += [f"- {r['target']}: {r['why']}." for r in whys]
  return out


# ------------------------------------------------------------------ sections


def _section_a(a: dict[str, Any]) -> list[str]:
  out = [f"PyTorch: {a.get('torch')}. Same weights, same batch, same optimizer (clip 1.0 + AdamW) on "
         f"both sides. {a.get('reps')} timed steps per implementation per round, round-robin (JAX, JAX one chain, "
         f"eager, compiled, JAX, ...) after warm-up, in {a.get('rounds')} rounds; each cell lists the rounds' "
         "medians. `jax` is the library's default step (`train.train_step`, `num_chains=None`).", ""]
  rows = []
  for m in a["models"]:
    for k, label in (("jax", f"JAX default ({m.get('chains', 1)} chain(s))"), ("jax_plain", "JAX, one chain"),
                     ("torch_eager", "PyTorch eager"), ("torch_compile", "torch.compile")):
      v = m.get(k)
      if k == "jax_plain" and v is None:
        continue
      compile_s = {"jax": m.get("jax_compile_s"), "jax_plain": m.get("jax_plain_compile_s"),
                   "torch_compile": m.get("torch_compile_s")}.get(k)
      if isinstance(v, dict):
        t = v["step"]
        rows.append([m["label"], label, _rounds(v["examples_per_s"]), _rounds(t["median_s"], ".0f", 1e3),
                     _rounds(t["min_s"], ".0f", 1e3), _fmt(compile_s, ".1f", " s")])
      else:
        rows.append([m["label"], label, _fmt(v), NA, NA, NA])
  out += _table(["model", "implementation", "examples/s", "median step (ms)", "best step (ms)", "compile"], rows)
  out += ["", "JAX default / other (examples/s), per round, and the worst round:", ""]
  rows = []
  for m in a["models"]:
    for other, r in m.get("ratios", {}).items():
      rows.append([m["label"], other, _rounds(r["per_round"], ".2f"), f"{r['worst']:.2f}x"])
  out += _table(["model", "vs", "ratio per round", "worst"], rows or [[NA] * 4])
  out.append("")
  for m in a["models"]:
    fl = m.get("first_loss")
    if fl:
      others = ", ".join(f"{k} {v:.6f} (|diff| {abs(v - fl['jax']):.1e})" for k, v in fl.items() if k != "jax")
      fwd = m.get("forward_max_abs_diff")
      fwd = "" if fwd is None else f"; forward max |logit diff| JAX vs PyTorch {fwd:.1e}"
      out.append(f"- {m['label']} ({m['weights']}): first-step loss JAX {fl['jax']:.6f}; {others}{fwd}.")
    if m.get("jax_plain_compile_s"):
      out.append(f"- {m['label']}: compile {m['jax_compile_s']:.1f} s in {m['chains']} chains vs "
                 f"{m['jax_plain_compile_s']:.1f} s in one ({m['jax_compile_s'] / m['jax_plain_compile_s']:.2f}x).")
  return out


def _section_b(a: dict[str, Any]) -> list[str]:
  peak = a["peak"]
  out = ["Peak: the best float32 " + " / ".join(
      f"{k} {v['n']}x{v['n']} product, {v['gflops']:.0f} GFLOP/s" for k, v in peak.items())
         + " seen in this section. Each model's round-robin also times both products, so every round has its own "
         "peak under its own load: achieved = FLOPs per step (XLA's count of the one-chain step) / median step "
         "time, and % peak = achieved / the faster framework's median product of the same round.", ""]
  rows = []
  for m in a["models"]:
    pr = m.get("peak_rounds") or {}
    rows.append([m["label"]] + [_rounds(pr[k]["gflops_median"], ".0f") + f" (best {max(pr[k]['gflops_best']):.0f})"
                                if k in pr else NA for k in ("jax", "torch")])
  out += _table(["round-robin of", "XLA product GFLOP/s per round (median)", "PyTorch product GFLOP/s per round"],
                rows) + [""]
  rows = []
  for m in a["models"]:
    f = m["flops"]
    eff = m["efficiency"]
    rows.append([m["label"], _fmt(f.get("xla") and f["xla"] / 1e9, ".1f"), _fmt(f["analytic"] / 1e9, ".1f"),
                 _fmt(f.get("torch_counter") and f["torch_counter"] / 1e9, ".1f"),
                 *(_rounds(eff[k], ".0f", 100, "%") if k in eff else NA
                   for k in ("jax", "jax_plain", "torch_eager", "torch_compile"))])
  out += _table(["model", "GFLOP/step (XLA)", "GFLOP/step (analytic)", "GFLOP/step (torch counter)",
                 "JAX % peak", "JAX one chain % peak", "eager % peak", "compile % peak"], rows)
  out += ["", "The torch counter sees forward + backward matmuls and attention only (no AdamW, "
          "no elementwise ops); the analytic count is 6 x matmul parameters x tokens + attention."]
  profiled = [(m, k) for m in a["models"] for k, p in (m.get("jax_profile") or {}).items() if "by_kind" in p]
  if profiled:
    kinds: list[str] = []
    for m, k in profiled:
      kinds += [x for x in m["jax_profile"][k]["by_kind"] if x not in kinds]
    out += ["", "Where the JAX step's time goes (profiler trace, ms per step summed over the threads "
            "that ran each XLA operation). Op concurrency = busy time / wall time: 1.0 means one XLA "
            "operation at a time; a matmul still uses every core inside its library call. Chains raise "
            "the concurrency: the executor runs the chains' operations side by side.", ""]
    rows = []
    for kind in kinds:
      rows.append([kind] + [_fmt(m["jax_profile"][k]["by_kind"].get(kind), ".0f") for m, k in profiled])
    rows.append(["**busy / wall (ms)**"] + [f"{m['jax_profile'][k]['busy_ms']:.0f} / {m['jax_profile'][k]['wall_ms']:.0f}"
                                          for m, k in profiled])
    rows.append(["**op concurrency**"] + [f"{m['jax_profile'][k]['parallelism']:.2f}" for m, k in profiled])
    out += _table(["op kind"] + [f"{m['name']} {k}" for m, k in profiled], rows)
  return out


def _section_c(c: dict[str, Any]) -> list[str]:
  out = [f"MLP head {c['dim']} -> {c['hidden']} -> 2 on {c['examples']} cached feature vectors, "
         f"{c['steps']} steps of batch {c['batch']}, loss {c['loss']}; wall time per call, compilation "
         f"included (each call compiles its program, as each run of a user does). One run (a fresh seed "
         f"each call) and one group of K alternate, {c['reps']}+ calls each per round, {c['rounds']} rounds; "
         "K separate runs cost K x one run.", ""]
  out += _table(["K seeds", "group of K (s)", "one run (s)", "K runs (s)", "speed-up per round", "worst",
                 "per run, vmapped (s)"],
                [[r["k"], _rounds(r["group_s"], ".2f"), _rounds(r["one_run_s"], ".2f"), _rounds(r["sequential_s"], ".1f"),
                  _rounds(r["speedup"], ".1f", suffix="x"), f"{r['worst_speedup']:.1f}x",
                  _rounds(r["per_run_vmapped_s"], ".3f")] for r in c["rows"]])
  g = c.get("grid")
  if isinstance(g, dict) and "speedup" in g:
    load = lambda v: "/".join(f"{x:.1f}" for x in v) if v else NA
    cold = g["cold"]
    out += ["", f"**A grid as one program.** {len(g['learning_rates'])} learning rates x {len(g['weight_decays'])} "
            f"weight decays x {g['seeds']} seeds = {g['runs']} runs of a {g['model']} ({g['dim']} -> "
            f"{g['classes']}) on {g['examples']} cached feature vectors, batch {g['batch']}, {g['epochs']} epochs "
            f"({g['steps']} steps), loss {g['loss']}: one `engines.train_runs` call (one vmapped program; each "
            f"run's learning rate and weight decay live in its optimizer state) against {g['runs']} calls of one "
            f"run each. Warm (every program compiled), one call of each side per round, {g['rounds']} rounds; "
            f"load average {load(g.get('loadavg_start'))} at the start, {load(g.get('loadavg_end'))} at the end.",
            ""]
    out += _table(["", "one program (s)", f"{g['runs']} separate runs (s)", "one run (s)", "speed-up per round",
                   "worst"],
                  [["warm", _rounds(g["grid_s"], ".2f"), _rounds(g["separate_s"], ".1f"),
                    _rounds(g["one_run_s"], ".3f"), _rounds(g["speedup"], ".1f", suffix="x"),
                    f"{g['worst_speedup']:.1f}x"],
                   ["cold (first call)", f"{cold['grid']['wall_s']:.2f}", NA, f"{cold['one run']['wall_s']:.2f}",
                    f"{g['cold_speedup']:.1f}x (1 cold + {g['runs'] - 1} warm runs)", NA]])
    out += ["", f"XLA compile of the training loop (`jit(run_steps)`): {cold['grid']['compile_s']:.2f} s for the "
            f"grid's program, {cold['one run']['compile_s']:.2f} s for one run's ({g['compile_ratio']:.2f}x); every "
            f"compilation of the cold call {cold['grid']['all_compile_s']:.2f} s vs "
            f"{cold['one run']['all_compile_s']:.2f} s. The rounds compiled "
            f"{'nothing' if not g.get('compiled_in_rounds_s') else g['compiled_in_rounds_s']}: the {g['runs']} "
            f"separate runs, at {len(g['learning_rates']) * len(g['weight_decays'])} settings, share one program "
            "too."]
  return out


def _section_d(d: dict[str, Any]) -> list[str]:
  out = [f"{d['model']} ({d['weights']}). 'loss alone' is the jitted forward + backward of the mean loss on "
         f"the step's [B, C] logits, every loss round-robin; whole steps for a subset, round-robin; "
         f"{d['reps']}+ calls each per round, {d['rounds']} rounds.", ""]
  out += _table(["loss", "loss alone (us)", "share of a step", "median step (ms)", "step vs xent", "compile (s)"],
                [[r["loss"], _rounds(r["loss_alone_us"], ".0f"), _rounds(r["loss_share_of_step"], ".3f", 100, "%"),
                  _rounds(r.get("step_s"), ".1f", 1e3) if "step_s" in r else NA,
                  _rounds(r["relative_to_xent"], ".3f") if "relative_to_xent" in r else NA,
                  _fmt(r.get("compile_s"), ".1f")] for r in d["rows"]])
  out += ["", "The loss touches only the [B, C] logits, so every step does the same encoder work; "
          "the loss-alone column resolves its cost: no loss costs more than a fraction of a percent of a step."]
  return out


def _section_e(e: dict[str, Any]) -> list[str]:
  out = [f"MLP head {e['dim']} -> {e['hidden']} -> 2, batch {e['batch']}, {e['examples']} examples, "
         f"{e['steps']} steps per timed call, {e['reps']} calls per feed per round, {e['rounds']} rounds. Store: "
         f"write {e['store_write_s'] * 1e3:.0f} ms, open (read and verify every record) "
         f"{e['store_open_s'] * 1e3:.0f} ms. 'data only' iterates the feed without training.", ""]
  out += _table(["feed", "ms/step", "vs memory", "data only (ms/batch)"],
                [[r["feed"], _rounds(r["step_ms"], ".2f"), _rounds(r["relative_to_memory"], ".2f", suffix="x"),
                  _rounds(r["data_only_ms"], ".2f")] for r in e["rows"]])
  return out


def _section_f(f: dict[str, Any]) -> list[str]:
  out = [f"{f['model']}, global batch {f['batch']}, the same batch every step, "
         f"in a subprocess with 8 simulated CPU devices, the meshes timed round-robin ({f.get('reps')} steps "
         f"each per round, {f.get('rounds')} rounds). **On CPU this shows correctness and overhead "
         f"only**: {f['backend_note']}. 'max param diff' compares the parameters after "
         f"{f['steps_compared']} steps with the 1-device run.", ""]
  out += _table(["devices", "ms/step", "time vs 1 device", "first step incl. compile (s)", "max param diff vs 1",
                 "traces"],
                [[r["devices"], _rounds(r["step_ms"], ".1f"), _rounds(r["time_vs_1"], ".2f", suffix="x"),
                  f"{r['first_step_s']:.1f}", f"{r['max_param_diff_vs_1']:.1e}", r["traces"]] for r in f["rows"]])
  return out


def _section_g(g: dict[str, Any]) -> list[str]:
  out = []
  floor = g["jax_floor"]
  out.append(f"- A process that imports JAX and runs one op: peak RSS {floor['peak_rss_mib']:.0f} MiB.")
  exp = g.get("cold") or g["experiment"]
  marks = _experiment_marks(g)
  if "skipped" in exp:
    out.append(f"- Experiment: skipped ({exp['skipped']}).")
  else:
    msg = (f"- `{exp['experiment']}`, cold (fresh workdir and cache, as `make experiment` right after set-up): "
           f"{exp.get('wall_s', 0):.0f} s{_mark(marks, 'cold_s')}, peak RSS {exp.get('peak_rss_mib', 0):.0f} MiB")
    if exp.get("error"):
      msg += f"; exit {exp['returncode']}: {exp['error'][:300]}"
    out.append(msg + ".")
    if "floor_ratio" in exp:
      out.append(f"- Its FLOP floor, the MiniLM feature pass at the machine's peak: {exp['feature_real_tokens']:,} "
                 f"real tokens x {exp['flops_per_token'] / 1e6:.1f} MFLOP = {exp['feature_flops'] / 1e12:.2f} TFLOP "
                 f"({exp['floor_method']}), at the measured matmul peak of {exp['peak_flops'] / 1e9:.0f} GFLOP/s "
                 f"({exp['peak_source']}): {exp['floor_s']:.1f} s. Cold / floor = "
                 f"**{exp['floor_ratio']:.2f}x**{_mark(marks, 'cold_floor_ratio')}.")
      if "feature_pass_s" in exp:
        out.append(f"- The feature pass itself took {exp['feature_pass_s']:.1f} s of the cold run, "
                   f"{100 * exp['feature_pass_share_of_peak']:.0f}% of the peak.")
    elif exp.get("floor_note"):
      out.append(f"- FLOP floor: none ({exp['floor_note']}).")
  warm = g.get("warm")
  if warm:
    msg = "- Warm rerun (the same command again, same workdir and cache, as a second `make experiment`): "
    if warm.get("error"):
      msg += f"exit {warm.get('returncode')}: {warm['error'][:300]}"
    else:
      msg += (f"{warm['wall_s']:.1f} s{_mark(marks, 'warm_s')}, "
              f"{_fmt(warm.get('compilations'), 'd')} programs compiled{_mark(marks, 'warm_compilations')}"
              + (f", {warm['compile_s']:.1f} s tracing and compiling" if warm.get("compile_s") else "")
              + f", peak RSS {warm.get('peak_rss_mib', 0):.0f} MiB")
    out.append(msg + ".")
  for att in g.get("attempts", []):
    if att is not exp:
      out.append(f"- Tried first: `{att['experiment']}`, which failed: {att.get('error', '')[:300]}")
  if exp.get("profile"):
    out += ["", "Where the seconds go: each stage's wall time, the programs XLA compiled in it and the seconds "
            "compiling (trace, lowering, backend), from each run's `results.json` profile. A stage's parts nest "
            "(in the tweets data stage, `features_entry` contains `feature_pass`).", ""]
    out += _table(["stage", "cold (s)", "share of cold", "programs compiled", "compile (s)", "largest parts (s)",
                   "warm (s)", "warm programs compiled"], _account_rows(exp, warm or {}))
  out += ["", "Training state of the benchmarked models (float32): parameters, and optimizer state "
          "(AdamW: two moments per parameter, plus a step count).", ""]
  rows = [[label, _mib(s.get("jax_params")), _mib(s.get("jax_opt_state")), _mib(s.get("torch_params")),
           _mib(s.get("torch_opt_state"))] for label, s in g["state_sizes"].items()]
  out += _table(["model", "JAX params", "JAX optimizer state", "PyTorch params", "PyTorch optimizer state"],
                rows or [[NA] * 5])
  return out


def _account_rows(cold: dict[str, Any], warm: dict[str, Any]) -> list[list[str]]:
  """One row per stage of the cold run (and the warm one's), the time outside the stages, and the wall time."""
  cp, wp = cold["profile"], warm.get("profile") or {}
  wall = cold["wall_s"]
  rows = []
  for stage in list(cp) + [s for s in wp if s not in cp]:
    c, w = cp.get(stage, {}), wp.get(stage)
    parts = sorted(((k[:-2], v) for k, v in c.items() if k.endswith("_s") and k not in ("total_s", "compile_s")),
                   key=lambda kv: -kv[1])[:3]
    rows.append([stage, _fmt(c.get("total_s"), ".1f"),
                 _fmt(c["total_s"] / wall if "total_s" in c else None, ".0%"),
                 _fmt(c.get("programs_compiled"), "d"), _fmt(c.get("compile_s"), ".1f"),
                 ", ".join(f"{k} {v:.1f}" for k, v in parts) or NA,
                 _fmt(w.get("total_s") if w else None, ".1f"), _fmt(w.get("programs_compiled") if w else None, "d")])
  outside = lambda r: r["wall_s"] - r["stages_s"] if r.get("stages_s") is not None and "wall_s" in r else None
  rest = outside(cold)
  rows.append(["outside the stages (start-up, imports, checks)", _fmt(rest, ".1f"),
               _fmt(None if rest is None else rest / wall, ".0%"), NA, NA, NA, _fmt(outside(warm), ".1f"), NA])
  rows.append(["**wall**", f"{wall:.1f}", "100%", _fmt(cold.get("compilations"), "d"),
               _fmt(cold.get("compile_s"), ".1f"), NA, _fmt(warm.get("wall_s"), ".1f"),
               _fmt(warm.get("compilations"), "d")])
  return rows


def _section_h(h: dict[str, Any]) -> list[str]:
  pad = h["padding"]
  out = [f"{h['texts']}, {h['weights']}; features of layers {h['layers']} in one forward, batches of "
         f"{h['batch']} rows. Real tokens {pad['real_tokens']}. Padding, as a share of the computed tokens: "
         f"**packed {100 * pad['packed_share']:.1f}%** ({pad['packed_batches']} batches of {h['batch']} x "
         f"{h['width']}, up to {pad['max_segments']} texts a row, one compiled program); sorted into length "
         f"buckets {100 * pad['padded_share']:.1f}% ({pad['batches']} batches, widths {pad['widths']}: "
         f"{len(pad['widths'])} programs); unsorted, padded to the longest row, "
         f"{100 * pad['padded_share_unsorted']:.1f}%. Each implementation is timed on its own sample of "
         f"batches, {h['reps']} calls per round, round-robin, {h['rounds']} rounds; {h['chains']} chain(s) "
         "by default.", ""]
  rows = []
  for name, label in (("jax", "JAX, packed (extract_features)"), ("jax_plain", "JAX, packed, one chain"),
                      ("jax_buckets", "JAX, length buckets (before)"), ("torch", "PyTorch, packed (inference mode)")):
    v = h.get(name)
    if isinstance(v, dict):
      rows.append([label, _rounds(v["tokens_per_s"], ".0f"), _rounds(v["gflops"], ".0f"),
                   _rounds(v.get("share_of_peak"), ".0f", 100, "%") if "share_of_peak" in v else NA,
                   _rounds(v["full_pass_s"], ".1f"), _fmt(sum(h["first_call_s"].get(name, [])), ".1f", " s")])
    elif v is not None and name == "torch":
      rows.append([label, _fmt(v), NA, NA, NA, NA])
  out += _table(["implementation", "real tokens/s", "GFLOP/s (computed)", "% of peak",
                 "full pass (s, est., no compile)", "first calls (incl. compile)"], rows)
  out.append("")
  for other, r in h.get("ratios", {}).items():
    out.append(f"- JAX packed / {other} (real tokens/s): {_rounds(r['per_round'], '.2f')} per round, "
               f"worst {r['worst']:.2f}x.")
  for k, v in h.get("max_abs_diff", {}).items():
    out.append(f"- max |feature difference|, {k.replace('_', ' ')}: {v:.1e}.")
  return out


RENDER = {"a": _section_a, "b": _section_b, "c": _section_c, "d": _section_d, "e": _section_e,
          "f": _section_f, "g": _section_g, "h": _section_h}


def _machine(results: dict[str, Any]) -> list[str]:
  meta = results["meta"]
  load = lambda k: "/".join(f"{x:.1f}" for x in meta[k]) if isinstance(meta.get(k), list) else NA
  lines = [
      f"- CPU: {meta['processor']}, {meta['cpu_count']} cores; JAX {meta['jax']} ({meta['backend']}, "
      f"{meta['devices']} device(s)), PyTorch {meta['torch']}.",
      f"- Load average (1/5/15 min): {load('loadavg_start')} at the start, {load('loadavg_end')} at the end"
      " (on a shared machine, read the figures against it).",
  ]
  a = results["sections"].get("a") or results["sections"].get("b") or {}
  if "peak" in a:
    lines.append("- Measured fp32 matmul peak: " + ", ".join(
        f"{'XLA' if k == 'jax' else 'PyTorch'} {v['gflops']:.0f} GFLOP/s" for k, v in a["peak"].items())
        + f" ({a['peak']['jax']['n']}^3 products).")
  lines.append(f"- Every comparison: {meta.get('reps')}+ repetitions per implementation, round-robin, after "
               f"warm-up, in {meta.get('rounds')} rounds; headline ratios are the worst round"
               f"{'; --quick sizes (the harness, not the figures)' if meta.get('quick') else ''}. "
               f"Total {meta.get('total_s', 0):.0f} s.")
  return lines


def render(results: dict[str, Any]) -> str:
  lines = ["# w2sg-jax benchmarks", ""]
  lines += _machine(results)
  lines += ["", "## Targets", ""] + _targets(results)
  lines += ["", "## Headline", ""]
  lines += _table(["benchmark", "JAX", "PyTorch eager", "torch.compile", "ratio (JAX / eager, worst round)"],
                  headline(results) or [[NA] * 5])
  sections = results["sections"]
  for key, title in SECTION_TITLES.items():
    lines += ["", f"## {title}", ""]
    data = sections.get(key)
    if data is None:
      lines.append("Not run (excluded by --only).")
      continue
    if "error" in data:
      lines.append(f"Failed: {data['error']}")
      continue
    try:
      lines += RENDER[key](data)
    except (KeyError, TypeError, ValueError) as e:
      lines.append(f"(could not render: {type(e).__name__}: {e}; see bench.json)")
  lines += ["", "## Performance notes", ""] + notes.render(results)
  return "\n".join(lines) + "\n"


def write(results: dict[str, Any], outdir: str) -> tuple[str, str]:
  os.makedirs(outdir, exist_ok=True)
  md = os.path.join(outdir, "report.md")
  js = os.path.join(outdir, "bench.json")
  with open(js, "w") as f:
    json.dump(results, f, indent=1, default=float)
  with open(md, "w") as f:
    f.write(render(results))
  return md, js
