"""2. Sample complexity: accuracy against the number of weak labels."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from w2sg_jax.theory.fitting import group_rows, nan_stat
from w2sg_jax.theory.measures import mean_ci
from w2sg_jax.theory.render.common import colours, fmt, save


def markdown(config, fitted: Mapping[str, Any], sections: Mapping[str, Any]) -> list[str]:
  """The lines of theory.md's section on ``sample_complexity``: its table and its finding."""
  th = config.theory
  weak_acc, ceil_acc = fitted["weak_test_accuracy"], fitted["ceiling_test_accuracy"]
  lines: list[str] = []
  sc = fitted["sample_complexity"]
  sizes = [int(n) for n in th.sample_complexity.sizes]
  lines += ["## 2. Sample complexity (`sample_complexity`, `sample_complexity.png`)", "",
            f"n in {sizes} weak labels (nested random subsets of w2s_train), every n trained for the same number of "
            "steps as the full-data students (so the largest n reproduces them). Ceiling error "
            f"{fmt(1 - ceil_acc)}.", "",
            "| loss | noise | error at smallest n | error at largest n | slope of log(error - ceiling error) vs log n "
            "| power law: floor e_inf | power law: rate b (error = e_inf + A n^-b) |", "|---|---|---|---|---|---|---|"]
  by_noise: dict[str, list] = {}
  for loss, per in sc.items():
    for noise, s in per.items():
      by_noise.setdefault(noise, []).append((loss, s))
      lines.append(f"| {loss} | {noise} | {fmt(s['error'][0])} | {fmt(s['error'][-1])} | "
                   f"{fmt(s['excess_over_ceiling']['slope'])} | {fmt(s['power_law']['e_inf'])} | "
                   f"{fmt(s['power_law']['b'], 2)} |")
  parts = []
  for noise, items in by_noise.items():
    b = np.array([s["power_law"]["b"] for _, s in items], np.float64)
    e_inf = np.array([s["power_law"]["e_inf"] for _, s in items], np.float64)
    slope = np.array([s["excess_over_ceiling"]["slope"] for _, s in items], np.float64)
    parts.append((noise, nan_stat(np.nanmedian, b), nan_stat(np.nanmedian, e_inf), nan_stat(np.nanmedian, slope),
                  nan_stat(np.nanmin, b), nan_stat(np.nanmax, b)))
  rate_ok = all(p[1] >= 0.4 for p in parts if np.isfinite(p[1]))
  lines += ["", (
      f"**Sample complexity: {'agrees' if rate_ok else 'slower than the bounds'}.** The bounds say the student's "
      "risk approaches what its weak labels allow at a rate in n, of order n^-1/2. Against the ceiling the excess "
      "error hardly moves ("
      + "; ".join(f"median slope {fmt(p[3], 2)} at noise {p[0]}" for p in parts)
      + "), because it is not the ceiling the student converges to: the fitted floor e_inf is "
      + "; ".join(f"{fmt(p[2])} at noise {p[0]}" for p in parts)
      + f", far above the ceiling's {fmt(1 - ceil_acc)}, the price of weak supervision. The approach to that floor "
      "is a power of n with median rate "
      + "; ".join(f"b = {fmt(p[1], 2)} at noise {p[0]} (range {fmt(p[4], 2)}-{fmt(p[5], 2)})" for p in parts)
      + (": at least as fast as the n^-1/2 of the bounds." if rate_ok else ": slower than the n^-1/2 of the bounds.")
      + (f" `tv` stands apart under noise: at the smallest n its error is "
         f"{fmt(sc['tv'][list(sc['tv'])[-1]]['error'][0])} against "
         f"{fmt(np.median([s['error'][0] for l, s in by_noise[list(sc['tv'])[-1]] if l != 'tv']))} for the median loss."
         if "tv" in sc and len(sc["tv"]) > 1 else "")), ""]
  return lines


def figures(sections: Mapping[str, Any], fitted: Mapping[str, Any], outdir: str, title: str) -> list[str]:
  """The figures of ``sample_complexity`` in ``outdir``; their paths."""
  from matplotlib.figure import Figure

  paths = []
  weak_acc, ceil_acc = fitted["weak_test_accuracy"], fitted["ceiling_test_accuracy"]

  # 3. sample complexity.
  sc = sections["sample_complexity"]
  sc_noises = sorted({r["noise"] for r in sc})
  sc_losses = list(dict.fromkeys(r["loss"] for r in sc))
  col = colours(sc_losses)
  fig = Figure(figsize=(5.5 * len(sc_noises), 4.3))
  for j, noise in enumerate(sc_noises):
    ax = fig.add_subplot(1, len(sc_noises), j + 1)
    for loss in sc_losses:
      by_n = group_rows([r for r in sc if r["loss"] == loss and r["noise"] == noise], "n")
      ns = sorted(k[0] for k in by_n)
      stats = [mean_ci([r["test_accuracy"] for r in by_n[(n,)]]) for n in ns]
      slope = fitted["sample_complexity"][loss][f"{noise:g}"]["excess_over_ceiling"]["slope"]
      ax.errorbar(ns, [s[0] for s in stats], yerr=[s[1] for s in stats], color=col[loss], marker="o", ms=3,
                  capsize=2, lw=1, label=f"{loss} (slope {slope:.2f})")
    ax.axhline(ceil_acc, color="k", ls="--", lw=0.8, label="ceiling")
    ax.axhline(weak_acc, color="k", ls=":", lw=0.8, label="weak")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("weakly labelled examples n")
    ax.set_ylabel("test accuracy (mean, 95% CI over seeds)")
    ax.set_title(f"noise {noise:g}; slope = d log(excess error over ceiling) / d log n", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  paths.append(save(fig, os.path.join(outdir, "sample_complexity.png")))
  return paths
