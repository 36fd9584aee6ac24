"""3. Equivalence of the f-divergences: how often two of them predict differently."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from w2sg_jax.theory.fitting import nan_stat
from w2sg_jax.theory.render.common import code_list, fmt, save


def markdown(config, fitted: Mapping[str, Any], sections: Mapping[str, Any]) -> list[str]:
  """The lines of theory.md's section on ``equivalence``: its table and its finding."""
  lines: list[str] = []
  eq = fitted["equivalence"]
  en = list(eq)
  lines += ["## 3. Equivalence of the f-divergences (`equivalence`, `equivalence.png`)", "",
            "Disagreement = fraction of test examples on which two students of the same seed predict different "
            "classes, averaged over seeds; the baseline is two seeds of the same loss. Summary over the plain "
            f"losses ({code_list(eq[en[0]]['losses'])}); losses with a confidence term are listed apart.", "",
            "| noise | mean cross-loss | largest (pair) | mean cross-seed baseline "
            "| confidence-term losses vs the rest |",
            "|---|---|---|---|---|"]
  for noise, e in eq.items():
    pair = " vs ".join(e.get("most_different_pair", []))
    conf = ", ".join(f"{l} {fmt(v, 3)}" for l, v in e.get("confidence_losses", {}).items()) or "-"
    lines.append(f"| {noise} | {fmt(e['mean_cross_loss'], 4)} | {fmt(e['max_cross_loss'], 4)} ({pair}) | "
                 f"{fmt(e['mean_seed_baseline'], 4)} | {conf} |")
  c0, cn = eq[en[0]], eq[en[-1]]
  holds = c0["mean_cross_loss"] <= 0.03
  acc_spread = {}
  for noise in en:
    means = [np.mean([r["gain_accuracy"] for r in sections["misfit_gain"]
                      if r["loss"] == l and f"{r['noise']:g}" == noise]) for l in eq[noise]["losses"]]
    acc_spread[noise] = float(np.max(means) - np.min(means)) if means else float("nan")
  lines += ["", (
      f"**Equivalence: {'agrees approximately on clean labels' if holds else 'does not hold on clean labels'}"
      f"{', weakens under noise' if cn['mean_cross_loss'] > 1.5 * c0['mean_cross_loss'] else ''}.** At noise "
      f"{en[0]} two f disagree on {fmt(100 * c0['mean_cross_loss'], 1)}% of test examples on average (largest "
      f"{fmt(100 * c0['max_cross_loss'], 1)}%, {' vs '.join(c0.get('most_different_pair', []))}), against "
      f"{fmt(100 * c0['mean_seed_baseline'], 1)}% for two seeds of one f: the difference is "
      f"{'measurable but small' if holds else 'large'}; their mean accuracies span "
      f"{fmt(100 * acc_spread[en[0]], 1)} points. "
      f"At noise {en[-1]} the cross-loss figure is {fmt(100 * cn['mean_cross_loss'], 1)}% (largest "
      f"{fmt(100 * cn['max_cross_loss'], 1)}%, {' vs '.join(cn.get('most_different_pair', []))}) against "
      f"{fmt(100 * cn['mean_seed_baseline'], 1)}% between seeds. The paper's equivalence is a statement under its "
      "conditions, which flipped weak labels break; the confidence term, which changes the target itself, "
      "makes the largest difference of all."), ""]
  return lines


def figures(sections: Mapping[str, Any], fitted: Mapping[str, Any], outdir: str, title: str) -> list[str]:
  """The figures of ``equivalence`` in ``outdir``; their paths."""
  from matplotlib.figure import Figure

  paths = []

  # 4. equivalence heatmaps.
  eq = sections["equivalence"]
  fig = Figure(figsize=(5.2 * len(eq), 4.6))
  vmax = max(float(np.max(b["disagreement"])) for b in eq.values()) or 1e-3
  for j, (noise, block) in enumerate(eq.items()):
    ax = fig.add_subplot(1, len(eq), j + 1)
    d = np.asarray(block["disagreement"])
    im = ax.imshow(d, cmap="viridis", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(block["losses"])), block["losses"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(block["losses"])), block["losses"], fontsize=7)
    baseline = nan_stat(np.nanmean, block["seed_baseline"])
    ax.set_title(f"noise {noise}: disagreement (seed baseline {baseline:.3f})", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  paths.append(save(fig, os.path.join(outdir, "equivalence.png")))
  return paths
