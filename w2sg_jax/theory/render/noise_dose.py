"""4. Noise dose-response: bounded against unbounded f."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from w2sg_jax.theory.fitting import group_rows, nan_stat
from w2sg_jax.theory.measures import BOUNDED, UNBOUNDED, mean_ci, own_divergence
from w2sg_jax.theory.render.common import code_list, colours, fmt, save


def markdown(config, fitted: Mapping[str, Any], sections: Mapping[str, Any]) -> list[str]:
  """The lines of theory.md's section on ``noise_dose``: its table and its finding."""
  th = config.theory
  lines: list[str] = []
  nd = fitted["noise_dose"]
  kinds = {str(k): float(v) for k, v in th.noise_dose.kinds.items()}
  rates = sorted(float(r) for r in th.noise_dose.rates)
  lines += ["## 4. Noise dose-response (`noise_dose`, `noise_dose.png`)", "",
            "Kinds: " + ", ".join(f"`{k}` (q -> 1/C + a (q - 1/C) with a = {v:g})" for k, v in kinds.items())
            + f", on a fraction r in {rates} of w2s_train.", "",
            "| loss | bounded | " + " | ".join(f"{k}, r = {r:g}" for k in kinds for r in rates[1:]) + " |",
            "|---|---|" + "---|" * (len(kinds) * (len(rates) - 1))]
  for loss, per in nd.items():
    cells = [fmt(per[k]["accuracy"][per[k]["rates"].index(r)]) if k in per and r in per[k]["rates"] else "n/a"
             for k in kinds for r in rates[1:]]
    lines.append(f"| {loss} | {'yes' if loss in BOUNDED else ('no' if loss in UNBOUNDED else '-')} | "
                 + " | ".join(cells) + " |")
  flip = next(iter(kinds))
  test_rate = rates[-2] if len(rates) > 2 else rates[-1]  # The largest rate below a coin flip.

  def acc(loss, rate, kind=flip):
    d = nd.get(loss, {}).get(kind)
    return d["accuracy"][d["rates"].index(rate)] if d and rate in d["rates"] else float("nan")

  unb = nan_stat(np.nanmean, [acc(l, test_rate) for l in UNBOUNDED if l in nd])
  # Every unbounded f of the lab (kl, reverse_kl, jeffreys, pearson, neyman): a bounded f is clearly more
  # robust only if it beats the best of them by more than a point.
  unb_all = {l: acc(l, test_rate) for l in nd if l not in BOUNDED and own_divergence(l)[0] != "alpha"}
  best_unb = max(unb_all, key=unb_all.get) if unb_all else None
  bnd = {l: acc(l, test_rate) for l in BOUNDED if l in nd}
  better = [l for l, a in bnd.items() if best_unb is not None and a > unb_all[best_unb] + 0.01]
  same = [l for l in bnd if l not in better]
  other = [k for k in kinds if k != flip]
  verdict = "agrees" if bnd and not same else ("partly agrees" if better else "does not agree")
  lines += ["", (
      f"**Noise robustness: {verdict}.** Under `{flip}` at r = {test_rate:g}, the unbounded f "
      f"({code_list(l for l in UNBOUNDED if l in nd)}) reach {fmt(unb)} mean accuracy; the bounded "
      + ", ".join(f"`{l}` {fmt(a)}" for l, a in bnd.items()) + ". "
      + (f"The best unbounded f is `{best_unb}` at {fmt(unb_all[best_unb])}. " if best_unb else "")
      + (f"Only {code_list(better)} {'is' if len(better) == 1 else 'are'} clearly more robust (by more than a point); "
         if better and same else "")
      + (f"{code_list(same)}, though bounded, {'stays' if len(same) == 1 else 'stay'} within the range of the "
         "unbounded f. " if same else "")
      + "Yao et al. argue that bounded f tolerate noisy weak labels better; "
      + ("the measurement supports it for every bounded f. " if verdict == "agrees" else
         ("the measurement supports it for total variation only: boundedness of f alone is not what helps, its "
          "gradient (constant in the label's error for tv) is. " if verdict == "partly agrees" else
          "the measurement does not show it. "))
      + (f"At r = {rates[-1]:g} half of the labels are flipped, the labels carry no signal, and every loss falls to "
         f"chance ({fmt(min(acc(l, rates[-1]) for l in nd))}-{fmt(max(acc(l, rates[-1]) for l in nd))}), as it must. "
         if rates[-1] >= 0.5 else "")
      + (f"Shrinking toward uniform (`{other[0]}`) keeps every label's argmax and costs at most "
         f"{fmt(max(nd[l][other[0]]['drop'] for l in nd if other[0] in nd[l]))} accuracy at r = {rates[-1]:g}: "
         "soft noise that does not flip a label barely matters." if other else "")), ""]
  return lines


def figures(sections: Mapping[str, Any], fitted: Mapping[str, Any], outdir: str, title: str) -> list[str]:
  """The figures of ``noise_dose`` in ``outdir``; their paths."""
  from matplotlib.figure import Figure

  paths = []
  weak_acc, ceil_acc = fitted["weak_test_accuracy"], fitted["ceiling_test_accuracy"]

  # 5. noise dose.
  nd = sections["noise_dose"]
  kinds = list(dict.fromkeys(r["kind"] for r in nd))
  nd_losses = list(dict.fromkeys(r["loss"] for r in nd))
  col = colours(nd_losses)
  fig = Figure(figsize=(5.5 * len(kinds), 4.3))
  for j, kind in enumerate(kinds):
    ax = fig.add_subplot(1, len(kinds), j + 1)
    for loss in nd_losses:
      by_rate = group_rows([r for r in nd if r["loss"] == loss and r["kind"] == kind], "rate")
      rates = sorted(k[0] for k in by_rate)
      stats = [mean_ci([r["test_accuracy"] for r in by_rate[(x,)]]) for x in rates]
      style = "-" if loss in BOUNDED else ("--" if loss in UNBOUNDED else ":")
      ax.errorbar(rates, [s[0] for s in stats], yerr=[s[1] for s in stats], color=col[loss], ls=style, marker="o",
                  ms=3, capsize=2, lw=1.2, label=loss + (" (bounded)" if loss in BOUNDED else ""))
    ax.axhline(weak_acc, color="k", ls=":", lw=0.8, label="weak")
    ax.set_xlabel("noise rate (fraction of w2s_train corrupted)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{kind}: solid = bounded f, dashed = unbounded", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  paths.append(save(fig, os.path.join(outdir, "noise_dose.png")))
  return paths
