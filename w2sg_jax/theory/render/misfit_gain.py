"""1. Misfit and gain: the limitation |gain| <= C sqrt(misfit), and gain against misfit."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from w2sg_jax.theory.fitting import has_confidence
from w2sg_jax.theory.render.common import code_list, colours, fmt, fmt_g, save


def markdown(config, fitted: Mapping[str, Any], sections: Mapping[str, Any]) -> list[str]:
  """The lines of theory.md's section on ``misfit_gain``: its table and its finding."""
  lines: list[str] = []
  env = fitted["envelope"]
  rho = fitted["misfit_gain_spearman"]
  noises = [k for k in rho if k != "all"]
  clean = noises[0]
  lines += ["## 1. Misfit and gain (`misfit_gain`, `misfit_gain.png`, `gain_accuracy_vs_misfit.png`)", "",
            f"| loss | own f | C, all runs | C, noise {clean} | misfit, noise {clean} | gain, noise {clean} | "
            f"gain / misfit, noise {clean} | runs with gain >= misfit (all) |", "|---|---|---|---|---|---|---|---|"]
  for loss, e in env.items():
    mark = " (eps)" if e["eps_dominated"] else ""
    lines.append(f"| {loss} | {e['own_f']}{mark} | {fmt_g(e['C'])} | {fmt_g(e['C_clean'])} | "
                 f"{fmt_g(e['misfit_clean'])} | {fmt_g(e['gain_clean'])} | {fmt_g(e['gain_over_misfit_clean'])} | "
                 f"{fmt(100 * e['frac_gain_ge_misfit'], 0)}% of {e['runs']} |")
  finite = {l: e for l, e in env.items() if not e["eps_dominated"]}
  c_fin = [e["C"] for e in finite.values()]
  plain = {l: e for l, e in finite.items() if not has_confidence(l)}
  ge1 = [l for l, e in plain.items() if e["gain_over_misfit_clean"] >= 0.95]
  lt1 = [l for l, e in plain.items() if e["gain_over_misfit_clean"] < 0.95]
  conf = [l for l in finite if has_confidence(l)]
  kl_ratio = env["kl"]["gain_over_misfit_clean"] if "kl" in env else float("nan")
  eps_losses = [l for l, e in env.items() if e["eps_dominated"]]
  lines += ["", (
      f"**Limitation: agrees.** C is the smallest constant with |gain_own| <= C sqrt(misfit_own) for every run "
      f"of a loss (all noise rates and seeds); the theorem only says such a constant exists, so the test is "
      f"whether it is modest. For the f whose risk against a one-hot truth is finite it is: C = "
      f"{fmt_g(min(c_fin))} to {fmt_g(max(c_fin))}"
      + " (" + ", ".join(f"{l} {fmt_g(e['C'])}" for l, e in finite.items()) + "). "
      + (f"For {code_list(eps_losses)}, f(0) is infinite, so D_f(one-hot truth || model) exists only through the "
         f"eps clip of the truth; their gain and C are in units set by eps (neyman's C grows like 1/eps: "
         f"{fmt_g(env['neyman']['C']) if 'neyman' in env else 'n/a'} with eps = 1e-7), not evidence about the "
         "theorem. " if eps_losses else "")
      + f"On clean weak labels (noise {clean}, the theorem's setting: the student's supervisor is the weak model "
      + ("itself) every plain student gains on its supervisor, and " if all(e["gain_clean"] > 0 for e in plain.values())
         else "itself) not every student gains on its supervisor; ")
      + "the convex-class result of Charikar et al. "
      "(gain >= misfit) can be read off the ratio gain/misfit: "
      + (f"for KL it is {fmt_g(kl_ratio)}, the Pythagorean equality of a KL projection; "
         if np.isfinite(kl_ratio) else "")
      + (f"gain >= misfit holds for {code_list(ge1)}" if ge1 else "gain >= misfit holds for none")
      + (f" and fails for {code_list(lt1)} (ratios "
         + ", ".join(fmt_g(env[l]["gain_over_misfit_clean"]) for l in lt1)
         + "): the inequality is proved for squared loss and Bregman divergences, and these f are neither. "
         if lt1 else ". ")
      + (f"({code_list(conf)} {'trains' if len(conf) == 1 else 'train'} against a target that mixes in the student's "
         "own predictions, so the supervisor is not G_w and the ratio does not apply.) " if conf else "")
      + f"Misfit and accuracy gain are rank-correlated {'positively' if rho[clean] > 0 else 'negatively'} across "
      f"runs at noise {clean} (Spearman {fmt(rho[clean], 2)}): "
      + ("students that move further from their supervisor gain more, the misfit-gain picture. "
         if rho[clean] > 0 else "the misfit-gain picture does not show here. ")
      + "With label noise the correlation turns "
      + ", ".join(f"{fmt(rho[k], 2)} at noise {k}" for k in noises[1:])
      + ": the student then fits a noisy labeller, not the weak model G_w against which misfit and gain are "
      "measured on the test set, so a larger misfit means more fitted noise and gain_own turns negative; the "
      "C sqrt(misfit) envelope still bounds it from below."), ""]
  return lines


def figures(sections: Mapping[str, Any], fitted: Mapping[str, Any], outdir: str, title: str) -> list[str]:
  """The figures of ``misfit_gain`` in ``outdir``; their paths."""
  from matplotlib.figure import Figure

  paths = []

  # 1. gain_own against misfit_own, one panel per loss.
  mg = sections["misfit_gain"]
  losses = list(dict.fromkeys(r["loss"] for r in mg))
  noises = sorted({r["noise"] for r in mg})
  ncol = min(4, len(losses))
  nrow = math.ceil(len(losses) / ncol)
  fig = Figure(figsize=(3.4 * ncol, 3.0 * nrow))
  noise_col = colours([f"{n:g}" for n in noises])
  for i, loss in enumerate(losses):
    ax = fig.add_subplot(nrow, ncol, i + 1)
    rows = [r for r in mg if r["loss"] == loss]
    for n in noises:
      rr = [r for r in rows if r["noise"] == n]
      ax.scatter([r["misfit_own"] for r in rr], [r["gain_own"] for r in rr], s=14, color=noise_col[f"{n:g}"],
                 label=f"noise {n:g}")
    m_max = max([r["misfit_own"] for r in rows] + [1e-9])
    grid = np.linspace(0, 1.05 * m_max, 100)
    c = fitted["envelope"][loss]["C"]
    ax.plot(grid, grid, "k--", lw=0.8, label="gain = misfit")
    ax.plot(grid, c * np.sqrt(grid), color="grey", lw=0.8, label=f"±C√misfit, C={c:.2f}")
    ax.plot(grid, -c * np.sqrt(grid), color="grey", lw=0.8)
    ax.axhline(0, color="k", lw=0.4)
    ax.set_title(f"{loss} (f = {fitted['envelope'][loss]['own_f']})", fontsize=9)
    ax.set_xlabel("misfit_own", fontsize=8)
    ax.set_ylabel("gain_own", fontsize=8)
    ax.tick_params(labelsize=7)
    if i == 0:
      ax.legend(fontsize=6)
  fig.suptitle(f"{title}: gain against misfit (limitation |gain| <= C sqrt(misfit))", fontsize=10)
  fig.tight_layout()
  paths.append(save(fig, os.path.join(outdir, "misfit_gain.png")))
  # 2. accuracy gain against KL misfit, every loss in one panel.
  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.add_subplot(1, 1, 1)
  col = colours(losses)
  markers = dict(zip(noises, "os^Dv<>"))
  for loss in losses:
    for n in noises:
      rr = [r for r in mg if r["loss"] == loss and r["noise"] == n]
      ax.scatter([r["misfit_kl"] for r in rr], [r["gain_accuracy"] for r in rr], s=16, color=col[loss],
                 marker=markers[n], label=loss if n == noises[0] else None)
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("misfit KL(weak || student), test mean")
  ax.set_ylabel("student - weak test accuracy")
  legend = ", ".join(f"{m}={n:g}" for n, m in markers.items())
  ax.set_title(f"accuracy gain against misfit (marker: noise {legend})", fontsize=9)
  ax.legend(fontsize=7, ncol=2)
  paths.append(save(fig, os.path.join(outdir, "gain_accuracy_vs_misfit.png")))
  return paths
