"""5. Trajectories: test accuracy and training misfit along a long run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from w2sg_jax.theory.fitting import group_rows
from w2sg_jax.theory.render.common import colours, fmt, save


def markdown(config, fitted: Mapping[str, Any], sections: Mapping[str, Any]) -> list[str]:
  """The lines of theory.md's section on ``trajectory``: its table and its finding."""
  th = config.theory
  lines: list[str] = []
  tr = fitted["trajectory"]
  t = th.trajectory
  lines += ["## 5. Trajectories (`trajectory`, `trajectory.png`)", "",
            f"n = {t.n} weak labels, {t.epochs} epochs, evaluated at {t.points} chunk boundaries inside the compiled "
            "training loop (`on_chunk`), not by retraining.", "",
            "| loss | noise | peak accuracy (step) | final accuracy | peak - final (95% CI over seeds) | "
            "train misfit first -> last |", "|---|---|---|---|---|---|"]
  cells, sig = [], 0
  for loss, per in tr.items():
    for noise, s in per.items():
      cells.append((loss, float(noise), s["drop"]))
      sig += int(s["drop"] - s["drop_ci95"] > 0)
      lines.append(f"| {loss} | {noise} | {fmt(s['peak_accuracy'])} ({s['peak_step']}) | {fmt(s['final_accuracy'])} | "
                   f"{fmt(s['drop'])} +- {fmt(s['drop_ci95'])} | {fmt(s['misfit_first'])} -> {fmt(s['misfit_last'])} |")
  per_noise = {n: float(np.mean([d for _, nn, d in cells if nn == n])) for n in sorted({c[1] for c in cells})}
  top = max(per_noise)
  tv_drop = tr.get("tv", {}).get(f"{top:g}", {}).get("drop")
  rest = [d for l, n, d in cells if n == top and l != "tv"]
  vals = list(per_noise.values())
  lines += ["", (
      f"**Over-fitting to the weak labels: {'seen' if sig > len(cells) / 3 else 'weak or absent'}.** The best "
      f"checkpoint beats the last one with a 95% interval above zero in {sig} of {len(cells)} (loss, noise) "
      "cells; the mean gap is " + ", ".join(f"{fmt(v)} at noise {k:g}" for k, v in per_noise.items())
      + ". The training misfit falls throughout while test accuracy peaks early and then declines: the student "
      "first learns what the weak labels agree on and then fits their errors, the mechanism behind PGR falling "
      "with more epochs. "
      + ("The gap grows with the noise rate, as it must if it is the noisy labels being fitted. "
         if len(vals) > 1 and vals[-1] > vals[0] else "The gap does not grow with the noise rate here. ")
      + (f"`tv` barely over-fits even at noise {top:g} (gap {fmt(tv_drop)} against {fmt(np.mean(rest))} for the "
         "others): its gradient does not grow with the size of a label's error, so flipped labels pull no harder "
         "than correct ones." if tv_drop is not None and rest and tv_drop < 0.5 * np.mean(rest) else "")), ""]
  return lines


def figures(sections: Mapping[str, Any], fitted: Mapping[str, Any], outdir: str, title: str) -> list[str]:
  """The figures of ``trajectory`` in ``outdir``; their paths."""
  from matplotlib.figure import Figure

  paths = []
  weak_acc, ceil_acc = fitted["weak_test_accuracy"], fitted["ceiling_test_accuracy"]

  # 6. trajectories, one column per noise rate.
  tr = sections["trajectory"]
  tr_noises = sorted({r["noise"] for r in tr})
  tr_losses = list(dict.fromkeys(r["loss"] for r in tr))
  col = colours(tr_losses)
  fig = Figure(figsize=(4.6 * len(tr_noises), 7.0))
  for j, noise in enumerate(tr_noises):
    ax_acc = fig.add_subplot(2, len(tr_noises), j + 1)
    ax_mis = fig.add_subplot(2, len(tr_noises), len(tr_noises) + j + 1)
    for loss in tr_losses:
      by_step = group_rows([r for r in tr if r["loss"] == loss and r["noise"] == noise], "step")
      steps = sorted(k[0] for k in by_step)
      acc = [np.mean([r["test_accuracy"] for r in by_step[(s,)]]) for s in steps]
      mis = [np.mean([r["train_misfit"] for r in by_step[(s,)]]) for s in steps]
      ax_acc.plot(steps, acc, color=col[loss], lw=1.2, label=loss)
      ax_mis.plot(steps, mis, color=col[loss], lw=1.2, label=loss)
    ax_acc.axhline(weak_acc, color="k", ls=":", lw=0.8)
    ax_acc.set_title(f"noise {noise:g}", fontsize=9)
    ax_acc.set_ylabel("test accuracy (seed mean)")
    ax_mis.set_ylabel("train misfit, own f (seed mean)")
    ax_mis.set_yscale("log")
    ax_mis.set_xlabel("step")
    if j == 0:
      ax_acc.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  paths.append(save(fig, os.path.join(outdir, "trajectory.png")))
  return paths
