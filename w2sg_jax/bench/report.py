"""``report.md`` and ``bench.json`` from the benchmark results.

``bench.json`` holds everything measured (seconds, FLOPs, bytes); the report
opens with a headline table (benchmark, JAX, PyTorch eager, torch.compile,
ratio) and then gives one section per benchmark. A section that did not run
(``--only``) or failed says so instead of disappearing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from w2sg_jax.bench import notes

SECTION_TITLES = {
    "a": "a. Training step vs PyTorch",
    "b": "b. Arithmetic efficiency",
    "c": "c. Vectorised sweeps",
    "d": "d. Loss overhead",
    "e": "e. Weak-label streaming",
    "f": "f. Device scaling",
    "g": "g. Memory",
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


def _eps(row: dict[str, Any], key: str) -> Any:
  """examples/s of a contender, or its status string (failed / not installed)."""
  v = row.get(key)
  if isinstance(v, dict):
    return v["examples_per_s"]
  return v


def _ratio(a: Any, b: Any) -> str:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
    return f"{a / b:.2f}x"
  return NA


# ------------------------------------------------------------------ headline


def headline(results: dict[str, Any]) -> list[list[str]]:
  rows: list[list[str]] = []
  sec = results["sections"]
  a = sec.get("a", {})
  for m in a.get("models", []):
    j, e, c = _eps(m, "jax"), _eps(m, "torch_eager"), _eps(m, "torch_compile")
    ratio = _ratio(j, e)
    if isinstance(c, (int, float)):
      ratio += f" ({_ratio(j, c)} vs compile)"
    jcell = _fmt(j)
    jc = _eps(m, "jax_chains")
    if isinstance(jc, (int, float)):
      jcell += f" ({jc:.1f} in {m['chains']} chains, proposed)"
      if isinstance(e, (int, float)):
        ratio += f"; chains {_ratio(jc, e)}"
    rows.append([f"train step, {m['label']} (examples/s)", jcell, _fmt(e), _fmt(c), ratio])
  b = sec.get("b", {})
  if "models" in b:
    for m in b["models"]:
      eff = m["efficiency"]
      rows.append([f"FLOP/s share of measured peak, {m['name']}",
                   _fmt(eff.get("jax", None) and 100 * eff["jax"], ".0f", "%"),
                   _fmt(eff.get("torch_eager") and 100 * eff["torch_eager"], ".0f", "%"),
                   _fmt(eff.get("torch_compile") and 100 * eff["torch_compile"], ".0f", "%"),
                   _ratio(eff.get("jax"), eff.get("torch_eager"))])
  c = sec.get("c", {})
  if c.get("rows"):
    last = c["rows"][-1]
    rows.append([f"sweep of K={last['k']} heads: one vmapped group vs {last['k']} calls (speed-up)",
                 f"{last['speedup']:.1f}x", NA, NA, NA])
  d = sec.get("d", {})
  if d.get("rows"):
    worst = max(d["rows"], key=lambda r: r["loss_alone_us"])
    rel = [r["relative_to_xent"] for r in d["rows"]]
    rows.append(["loss overhead: slowest loss alone (fwd+bwd) as a share of a MiniLM step",
                 f"{worst['loss']}: {worst['loss_alone_us']:.0f} us = {100 * worst['loss_share_of_step']:.3f}%; "
                 f"whole steps {min(rel):.2f}-{max(rel):.2f}x xent (run-to-run noise)", NA, NA, NA])
  e = sec.get("e", {})
  if e.get("rows"):
    g = next(r for r in e["rows"] if r["feed"] == "grain (prefetch)")
    rows.append(["head step fed by the Grain weak-label stream / fed from memory",
                 f"{g['relative_to_memory']:.2f}x ({g['step_ms']:.2f} ms/step)", NA, NA, NA])
  f = sec.get("f", {})
  if f.get("rows"):
    r8 = f["rows"][-1]
    diff = max(r["max_param_diff_vs_1"] for r in f["rows"])
    rows.append([f"data-parallel step on {r8['devices']} simulated CPU devices / 1 device (time)",
                 f"{r8['step_ms'] / f['rows'][0]['step_ms']:.2f}x; max param diff {diff:.0e}", NA, NA, NA])
  g = sec.get("g", {})
  exp = g.get("experiment", {})
  if "peak_rss_mib" in exp:
    rows.append([f"peak RSS, {exp['experiment']}", f"{exp['peak_rss_mib']:.0f} MiB", NA, NA, NA])
  return rows


# ------------------------------------------------------------------ sections


def _section_a(a: dict[str, Any]) -> list[str]:
  out = [f"PyTorch: {a.get('torch')}. Same weights, same batch, same optimizer (clip 1.0 + AdamW) on "
         "both sides; each figure is the median of the timed repetitions, taken round-robin "
         "(JAX, eager, compiled, JAX, ...) so background load hits all alike.", ""]
  rows = []
  for m in a["models"]:
    for k, label in (("jax", "JAX (jit, donated state)"),
                     ("jax_chains", f"JAX, batch in {m.get('chains')} independent chains (proposed)"),
                     ("torch_eager", "PyTorch eager"), ("torch_compile", "torch.compile")):
      v = m.get(k)
      if k == "jax_chains" and v is None:
        continue
      if isinstance(v, dict):
        t = v["step"]
        compile_s = {"jax": m.get("jax_compile_s"), "jax_chains": m.get("jax_chains_compile_s"),
                     "torch_compile": m.get("torch_compile_s")}.get(k)
        rows.append([m["label"], label, f"{v['examples_per_s']:.1f}", f"{t['median_s'] * 1e3:.0f}",
                     f"{t['min_s'] * 1e3:.0f}-{t['max_s'] * 1e3:.0f}", _fmt(compile_s, ".1f", " s")])
      else:
        rows.append([m["label"], label, _fmt(v), NA, NA, NA])
  out += _table(["model", "implementation", "examples/s", "median step (ms)", "range (ms)", "compile"], rows)
  out.append("")
  for m in a["models"]:
    fl = m.get("first_loss")
    if fl:
      others = ", ".join(f"{k} {v:.6f} (|diff| {abs(v - fl['jax']):.1e})" for k, v in fl.items() if k != "jax")
      fwd = m.get("forward_max_abs_diff")
      fwd = "" if fwd is None else f"; forward max |logit diff| JAX vs PyTorch {fwd:.1e}"
      out.append(f"- {m['label']} ({m['weights']}): first-step loss JAX {fl['jax']:.6f}; {others}{fwd}.")
  return out


def _section_b(a: dict[str, Any]) -> list[str]:
  peak = a["peak"]
  out = ["Peak: best of several float32 " + " / ".join(
      f"{k} {v['n']}x{v['n']} matmuls, {v['gflops']:.0f} GFLOP/s" for k, v in peak.items())
         + f"; the larger, {a['peak_gflops']:.0f} GFLOP/s, is the reference. Achieved = FLOPs per step "
         "(XLA's count) / median step time.", ""]
  rows = []
  for m in a["models"]:
    f = m["flops"]
    ach, eff = m["achieved_gflops"], m["efficiency"]
    rows.append([m["label"], _fmt(f.get("xla") and f["xla"] / 1e9, ".1f"), _fmt(f["analytic"] / 1e9, ".1f"),
                 _fmt(f.get("torch_counter") and f["torch_counter"] / 1e9, ".1f"),
                 *(f"{ach[k]:.0f} ({100 * eff[k]:.0f}%)" if k in ach else NA
                   for k in ("jax", "jax_chains", "torch_eager", "torch_compile"))])
  out += _table(["model", "GFLOP/step (XLA)", "GFLOP/step (analytic)", "GFLOP/step (torch counter)",
                 "JAX GFLOP/s (% peak)", "JAX chains GFLOP/s (% peak)", "eager GFLOP/s (% peak)",
                 "compile GFLOP/s (% peak)"], rows)
  out += ["", "The torch counter sees forward + backward matmuls and attention only (no AdamW, "
          "no elementwise ops); the analytic count is 6 x matmul parameters x tokens + attention."]
  profiled = [m for m in a["models"] if "by_kind" in m.get("jax_profile", {})]
  if profiled:
    kinds = []
    for m in profiled:
      kinds += [k for k in m["jax_profile"]["by_kind"] if k not in kinds]
    out += ["", "Where the JAX step's time goes (profiler trace, ms per step summed over the threads "
            "that ran each XLA operation). Op concurrency = busy time / wall time: 1.0 means one XLA "
            "operation at a time; a matmul still uses every core inside its library call, but "
            "elementwise fusions run on one thread each.", ""]
    rows = []
    for k in kinds:
      rows.append([k] + [_fmt(m["jax_profile"]["by_kind"].get(k), ".0f") for m in profiled])
    rows.append(["**busy / wall (ms)**"] + [f"{m['jax_profile']['busy_ms']:.0f} / {m['jax_profile']['wall_ms']:.0f}"
                                          for m in profiled])
    rows.append(["**op concurrency**"] + [f"{m['jax_profile']['parallelism']:.2f}" for m in profiled])
    out += _table(["op kind"] + [m["label"] for m in profiled], rows)
  return out


def _section_c(c: dict[str, Any]) -> list[str]:
  out = [f"MLP head {c['dim']} -> {c['hidden']} -> 2 on {c['examples']} cached feature vectors, "
         f"{c['steps']} steps of batch {c['batch']}, loss {c['loss']}; wall time per call, compilation "
         "included (each call compiles its program).", ""]
  out += _table(["K seeds", "one train_group(K) (s)", "K x train_group(1) (s)", "speed-up",
                 "per run, vmapped (s)", "per run, sequential (s)"],
                [[r["k"], f"{r['vmapped_s']:.2f}", f"{r['sequential_s']:.2f}", f"{r['speedup']:.1f}x",
                  f"{r['per_run_vmapped_s']:.3f}", f"{r['per_run_sequential_s']:.3f}"] for r in c["rows"]])
  return out


def _section_d(d: dict[str, Any]) -> list[str]:
  out = [f"{d['model']} ({d['weights']}), full training step per loss, timed round-robin. "
         "'loss alone' is the jitted forward + backward of the mean loss on the step's [B, C] logits.", ""]
  out += _table(["loss", "median step (ms)", "best step (ms)", "vs xent", "loss alone (us)", "share of step",
                 "compile (s)"],
                [[r["loss"], f"{r['step_s'] * 1e3:.1f}", f"{r['step_min_s'] * 1e3:.1f}", f"{r['relative_to_xent']:.3f}",
                  f"{r['loss_alone_us']:.0f}", f"{100 * r['loss_share_of_step']:.3f}%", f"{r['compile_s']:.1f}"]
                 for r in d["rows"]])
  out += ["", "The loss touches only the [B, C] logits, so every step does the same encoder work; "
          "the spread of whole-step times across losses is run-to-run noise (programs switching, "
          "background load), which the loss-alone column resolves: no loss costs more than a "
          "fraction of a percent of a step."]
  return out


def _section_e(e: dict[str, Any]) -> list[str]:
  out = [f"MLP head {e['dim']} -> {e['hidden']} -> 2, batch {e['batch']}, {e['examples']} examples, "
         f"{e['steps']} timed steps per feed. Store: write {e['store_write_s'] * 1e3:.0f} ms, open (read and "
         f"verify every record) {e['store_open_s'] * 1e3:.0f} ms. 'data only' iterates the feed without "
         "training.", ""]
  out += _table(["feed", "ms/step", "vs memory", "data only (ms/batch)", "steps/s"],
                [[r["feed"], f"{r['step_ms']:.2f}", f"{r['relative_to_memory']:.2f}x",
                  f"{r['data_only_ms']:.2f}", f"{r['steps_per_s']:.0f}"] for r in e["rows"]])
  return out


def _section_f(f: dict[str, Any]) -> list[str]:
  out = [f"{f['model']}, global batch {f['batch']}, the same batch every step, "
         f"in a subprocess with 8 simulated CPU devices. **On CPU this shows correctness and overhead "
         f"only**: {f['backend_note']}. 'max param diff' compares the parameters after "
         f"{f['steps_compared']} steps with the 1-device run.", ""]
  out += _table(["devices", "ms/step", "examples/s", "first step incl. compile (s)", "max param diff vs 1",
                 "traces"],
                [[r["devices"], f"{r['step_ms']:.1f}", f"{r['examples_per_s']:.1f}", f"{r['first_step_s']:.1f}",
                  f"{r['max_param_diff_vs_1']:.1e}", r["traces"]] for r in f["rows"]])
  return out


def _section_g(g: dict[str, Any]) -> list[str]:
  out = []
  floor = g["jax_floor"]
  out.append(f"- A process that imports JAX and runs one op: peak RSS {floor['peak_rss_mib']:.0f} MiB.")
  exp = g["experiment"]
  if "skipped" in exp:
    out.append(f"- Experiment: skipped ({exp['skipped']}).")
  else:
    msg = f"- `{exp['experiment']}`: peak RSS {exp['peak_rss_mib']:.0f} MiB, {exp['wall_s']:.0f} s"
    if exp.get("error"):
      msg += f"; exit {exp['returncode']}: {exp['error'][:300]}"
    out.append(msg + ".")
  for att in g.get("attempts", []):
    if att is not exp:
      out.append(f"- Tried first: `{att['experiment']}`, which failed: {att.get('error', '')[:300]}")
  out += ["", "Training state of the benchmarked models (float32): parameters, and optimizer state "
          "(AdamW: two moments per parameter, plus a step count).", ""]
  rows = [[label, _mib(s.get("jax_params")), _mib(s.get("jax_opt_state")), _mib(s.get("torch_params")),
           _mib(s.get("torch_opt_state"))] for label, s in g["state_sizes"].items()]
  out += _table(["model", "JAX params", "JAX optimizer state", "PyTorch params", "PyTorch optimizer state"],
                rows or [[NA] * 5])
  return out


RENDER = {"a": _section_a, "b": _section_b, "c": _section_c, "d": _section_d, "e": _section_e,
          "f": _section_f, "g": _section_g}


def render(results: dict[str, Any]) -> str:
  meta = results["meta"]
  lines = ["# w2sg-jax benchmarks", ""]
  lines.append(
      f"{meta['processor']}, {meta['cpu_count']} CPUs, JAX {meta['jax']} ({meta['backend']}, "
      f"{meta['devices']} device(s)), PyTorch {meta['torch']}. Load average (1 min) "
      f"{_fmt(meta.get('loadavg_1m_start'), '.1f')} at the start, {_fmt(meta.get('loadavg_1m_end'), '.1f')} at "
      f"the end{'; --quick sizes' if meta.get('quick') else ''}. Total {meta.get('total_s', 0):.0f} s.")
  lines += ["", "## Headline", ""]
  lines += _table(["benchmark", "JAX", "PyTorch eager", "torch.compile", "ratio (JAX / eager)"],
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
