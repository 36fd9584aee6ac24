"""The methods comparison: accuracy, PGR and cost of every (method, loss, noise), against ``single``.

Written when an experiment's ``student.methods`` lists more than ``single``
(`pipeline.Pipeline.report`):

  methods.json         {"runs": one row per run, "groups": one row per (method, loss, noise)}
  methods.md           one paragraph per finding, then the table
  methods_pareto.png   accuracy and PGR against FLOPs per student (log axis), one point per (method, loss)
  methods_noise.png    accuracy against noise, one line per method (mean over losses)

A run's cost is what it took to make that student from scratch: its own
training and labelling plus every model and probe that made its labels
(`method_stages.total_cost`). Differences to ``single`` are paired by seed
(the same seed and noise rate, the same loss): the interval is a percentile
bootstrap over the seeds' differences, so with few seeds it is narrow.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from w2sg_jax import metrics as metrics_lib

RUN_FIELDS = ("method", "loss", "noise", "seed", "test_accuracy", "pgr", "weak_models", "train_flops", "eval_flops",
              "flops", "wall_s", "peak_bytes", "stored_bytes")
BASELINE = "single"
_DPI = 110


def run_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """methods.json's rows: one per run, its cost flattened (None where not recorded)."""
  out = []
  for r in runs:
    cost = r.get("cost") or {}
    row = {k: r.get(k) for k in ("method", "loss", "noise", "seed", "test_accuracy", "pgr", "weak_models")}
    for k in ("train_flops", "eval_flops", "flops", "wall_s", "peak_bytes", "stored_bytes"):
      row[k] = cost.get(k)
    row["cost_complete"] = bool(cost.get("complete", False))
    out.append(row)
  return out


def _mean(values: Sequence[Any]) -> float | None:
  vals = [float(v) for v in values if v is not None]
  return float(np.mean(vals)) if vals else None


def group_rows(rows: Sequence[Mapping[str, Any]], *, seed: int = 0, n_resamples: int = 2000) -> list[dict[str, Any]]:
  """One row per (method, loss, noise): means over seeds, and the paired difference to ``single``."""
  groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r["method"], r["loss"], float(r["noise"])), []).append(r)
  out = []
  for (method, loss, noise), group in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
    acc = np.array([float(r["test_accuracy"]) for r in group])
    row = {
        "method": method, "loss": loss, "noise": noise, "n_seeds": len(group),
        "accuracy_mean": float(acc.mean()),
        "accuracy_ci95": list(metrics_lib.bootstrap_ci(acc, n_resamples=n_resamples, seed=seed)),
        "pgr_mean": _mean([r.get("pgr") for r in group]),
        "weak_models": int(max(int(r.get("weak_models") or 0) for r in group)),
        **{k: _mean([r.get(k) for r in group]) for k in ("flops", "train_flops", "wall_s", "stored_bytes")},
        "peak_bytes": max((int(r["peak_bytes"]) for r in group if r.get("peak_bytes") is not None), default=None),
    }
    base = groups.get((BASELINE, loss, noise))
    if base is not None and method != BASELINE:
      by_seed = {r["seed"]: float(r["test_accuracy"]) for r in base}
      diff = np.array([float(r["test_accuracy"]) - by_seed[r["seed"]] for r in group if r["seed"] in by_seed])
      if diff.size:
        row["vs_single"] = {
            "accuracy_delta": float(diff.mean()),
            "accuracy_delta_ci95": list(metrics_lib.bootstrap_ci(diff, n_resamples=n_resamples, seed=seed)),
            "flops_multiple": _ratio(row["flops"], _mean([r.get("flops") for r in base])),
            "wall_multiple": _ratio(row["wall_s"], _mean([r.get("wall_s") for r in base])),
        }
    out.append(row)
  return out


def _ratio(a: float | None, b: float | None) -> float | None:
  return None if a is None or not b else float(a) / float(b)


# ----------------------------------------------------------------- findings


def _pct(x: float) -> str:
  return f"{100 * x:+.1f} points"


def _ci(ci: Sequence[float]) -> str:
  return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _multiple(m: float | None) -> str:
  return "cost not recorded" if m is None else f"{m:.2g}x the FLOPs"


def findings(groups: Sequence[Mapping[str, Any]]) -> list[str]:
  """One paragraph per finding, from the group rows (no number without its interval)."""
  paragraphs = []
  methods = sorted({g["method"] for g in groups if g["method"] != BASELINE})
  noises = sorted({g["noise"] for g in groups})
  for method in methods:
    rows = [g for g in groups if g["method"] == method and "vs_single" in g]
    if not rows:
      paragraphs.append(f"**{method}**: no `single` runs with the same loss and noise to compare with.")
      continue
    better = [g for g in rows if g["vs_single"]["accuracy_delta_ci95"][0] > 0]
    worse = [g for g in rows if g["vs_single"]["accuracy_delta_ci95"][1] < 0]
    mult = _mean([g["vs_single"]["flops_multiple"] for g in rows])
    text = (f"**{method}** ({rows[0]['weak_models']} weak model{'s' if rows[0]['weak_models'] != 1 else ''}, "
            f"{_multiple(mult)} of `single` on average): ")
    if better:
      best = max(better, key=lambda g: g["vs_single"]["accuracy_delta"])
      text += (f"beats `single` in {len(better)} of {len(rows)} (loss, noise) cells, most with {best['loss']} at noise "
               f"{best['noise']:g}: {_pct(best['vs_single']['accuracy_delta'])} "
               f"{_ci(best['vs_single']['accuracy_delta_ci95'])}. ")
      losses = sorted({g["loss"] for g in better})
      text += f"Losses it helps: {', '.join(losses)}. "
    else:
      text += f"beats `single` in none of its {len(rows)} (loss, noise) cells (no interval above 0). "
    if worse:
      text += (f"It is worse in {len(worse)} cell{'s' if len(worse) != 1 else ''} ("
               + ", ".join(f"{g['loss']} at {g['noise']:g}" for g in worse[:4]) + (", ..." if len(worse) > 4 else "")
               + ").")
    paragraphs.append(text.strip())
  # Does an f-divergence with one weak model match an ensemble trained with xent?
  by = {(g["method"], g["loss"], g["noise"]): g for g in groups}
  if any(m == "ensemble" for m in methods) and any(k[:2] == ("ensemble", "xent") for k in by):
    parts = []
    for noise in noises:
      ens = by.get(("ensemble", "xent", noise))
      singles = [g for g in groups if g["method"] == BASELINE and g["noise"] == noise and g["loss"] != "xent"]
      if ens is None or not singles:
        continue
      verdicts = {}
      for g in singles:
        overlap = g["accuracy_ci95"][1] >= ens["accuracy_ci95"][0] and ens["accuracy_ci95"][1] >= g["accuracy_ci95"][0]
        gap = g["accuracy_mean"] - ens["accuracy_mean"]
        verdicts[g["loss"]] = "match" if overlap else ("beat" if gap > 0 else "fall short")
      best = max(singles, key=lambda g: g["accuracy_mean"])  # Picked on test: an upper bound, named as such.
      at_least = sorted(loss for loss, v in verdicts.items() if v != "fall short")
      short = sorted(loss for loss, v in verdicts.items() if v == "fall short")
      parts.append(f"at noise {noise:g}, {len(at_least)} of {len(singles)} other losses with one weak model match or "
                   f"beat ensemble+xent ({100 * ens['accuracy_mean']:.1f}% {_ci_abs(ens['accuracy_ci95'])})"
                   + (f": {', '.join(at_least)}" if at_least else "")
                   + (f"; {', '.join(short)} fall short" if short else "")
                   + f"; the best of them on test, {best['loss']}, by {_pct(best['accuracy_mean'] - ens['accuracy_mean'])}"
                   f", at {_multiple(_ratio(best['flops'], ens['flops']))} of the ensemble")
    if parts:
      paragraphs.append("**One weak model and an f-divergence against an ensemble with xent** (the paper's claim): "
                        + "; ".join(parts) + ". Intervals overlapping counts as a match; the seeds' intervals are "
                        "percentile bootstraps over few seeds, so read a match as 'no difference detected'.")
  return paragraphs


def _ci_abs(ci: Sequence[float]) -> str:
  return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _fmt_flops(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.3g}"


def markdown(groups: Sequence[Mapping[str, Any]], paragraphs: Sequence[str], *, title: str) -> str:
  lines = [f"# {title}: methods against `single`", ""]
  for p in paragraphs:
    lines += [p, ""]
  lines += ["| method | loss | noise | seeds | accuracy | 95% CI | PGR | vs single | weak models | FLOPs/student | "
            "x single | wall s | peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for g in groups:
    vs = g.get("vs_single")
    pgr = "n/a" if g["pgr_mean"] is None else f"{g['pgr_mean']:.3f}"
    delta = "" if not vs else f"{_pct(vs['accuracy_delta'])} {_ci(vs['accuracy_delta_ci95'])}"
    multiple = "" if not vs or vs["flops_multiple"] is None else f"{vs['flops_multiple']:.2f}"
    wall = "n/a" if g["wall_s"] is None else f"{g['wall_s']:.2f}"
    peak = "n/a" if g["peak_bytes"] is None else f"{g['peak_bytes'] / 2**20:.1f}"
    lines.append(f"| {g['method']} | {g['loss']} | {g['noise']:g} | {g['n_seeds']} | {100 * g['accuracy_mean']:.2f} | "
                 f"{_ci_abs(g['accuracy_ci95'])} | {pgr} | {delta} | {g['weak_models']} | {_fmt_flops(g['flops'])} | "
                 f"{multiple} | {wall} | {peak} |")
  lines += ["", "FLOPs/student: XLA's cost analysis of each compiled step x steps, for the student and every model "
            "that made its labels (a probe's FLOPs are counted analytically). PGR uses the single weak model's "
            "accuracy for every method, so the rows compare."]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- figures


def plot_pareto(groups: Sequence[Mapping[str, Any]], path: str, *, title: str) -> str:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 4.2))
  FigureCanvasAgg(fig)
  methods = sorted({g["method"] for g in groups})
  markers = "osD^v<>*Px"
  for ax, field, label in ((fig.add_subplot(1, 2, 1), "accuracy_mean", "test accuracy"),
                           (fig.add_subplot(1, 2, 2), "pgr_mean", "PGR")):
    for i, method in enumerate(methods):
      pts = {}
      for g in groups:
        if g["method"] == method and g["flops"] and g[field] is not None:
          pts.setdefault(g["loss"], []).append((g["flops"], g[field]))
      xs = [np.mean([p[0] for p in v]) for v in pts.values()]
      ys = [np.mean([p[1] for p in v]) for v in pts.values()]
      if xs:
        ax.scatter(xs, ys, marker=markers[i % len(markers)], label=method, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs to make one student (log)")
    ax.set_ylabel(f"{label} (mean over noise and seeds)")
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize=8)
  fig.suptitle(f"{title}: accuracy against cost, one point per (method, loss)")
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  return path


def plot_noise(groups: Sequence[Mapping[str, Any]], path: str, *, title: str) -> str:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6.5, 4.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for method in sorted({g["method"] for g in groups}):
    noises = sorted({g["noise"] for g in groups if g["method"] == method})
    ys = [np.mean([g["accuracy_mean"] for g in groups if g["method"] == method and g["noise"] == n]) for n in noises]
    ax.plot(noises, ys, marker="o", label=method)
  ax.set_xlabel("noise rate of the weak labels")
  ax.set_ylabel("test accuracy (mean over losses and seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f"{title}: accuracy against noise per method")
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  return path


def write(runs: Sequence[Mapping[str, Any]], outdir: str, *, title: str) -> dict[str, str]:
  """methods.json, methods.md and the two figures in ``outdir``; returns their paths by name."""
  rows = run_rows(runs)
  groups = group_rows(rows)
  paragraphs = findings(groups)
  paths = {"methods_json": os.path.join(outdir, "methods.json"), "methods_md": os.path.join(outdir, "methods.md"),
           "methods_pareto": os.path.join(outdir, "methods_pareto.png"),
           "methods_noise": os.path.join(outdir, "methods_noise.png")}
  with open(paths["methods_json"], "w") as f:
    json.dump({"runs": rows, "groups": groups, "findings": paragraphs}, f, indent=1, default=_json_default)
  with open(paths["methods_md"], "w") as f:
    f.write(markdown(groups, paragraphs, title=title))
  plot_pareto(groups, paths["methods_pareto"], title=title)
  plot_noise(groups, paths["methods_noise"], title=title)
  return paths


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  raise TypeError(f"cannot write {type(x).__name__} to JSON")
