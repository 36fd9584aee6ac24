"""The fits: constants and summaries of the sections, from their rows (what theory.md reports).

`fit_envelope`, `fit_loglog_slope` and `fit_power_law` are pure and tested
against numpy / scipy; `fits` applies them to every section of a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from w2sg_jax import losses as losses_lib
from w2sg_jax.theory.measures import EPS_DOMINATED, mean_ci, own_divergence

__all__ = [
    "fit_envelope",
    "fit_loglog_slope",
    "fit_power_law",
    "fits",
    "group_rows",
    "has_confidence",
    "nan_stat",
    "spearman",
]


def fit_envelope(misfit_R, gain_R) -> dict[str, float]:
  r"""The envelope :math:`|\mathrm{gain}| \le C \sqrt{\mathrm{misfit}}` over runs.

  Returns:
    ``C``: the smallest constant for which every run (with misfit > 0) lies
    inside; ``C_ls``: the least-squares fit of |gain| = C sqrt(misfit)
    through the origin; ``frac_gain_ge_misfit``: the share of runs with
    gain >= misfit (the convex-class inequality); ``runs``: how many runs.
  """
  m = np.asarray(misfit_R, np.float64)
  g = np.asarray(gain_R, np.float64)
  ok = np.isfinite(m) & np.isfinite(g) & (m > 0)
  m, g = m[ok], g[ok]
  if not len(m):
    return {"C": float("nan"), "C_ls": float("nan"), "frac_gain_ge_misfit": float("nan"), "runs": 0}
  root = np.sqrt(m)
  return {
      "C": float(np.max(np.abs(g) / root)),
      "C_ls": float(np.sum(np.abs(g) * root) / np.sum(m)),
      "frac_gain_ge_misfit": float(np.mean(g >= m)),
      "runs": int(len(m)),
  }


def fit_loglog_slope(x, y) -> dict[str, float]:
  """Least-squares line ``log y = intercept + slope log x`` over the points with y > 0."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
  if ok.sum() < 2:
    return {"slope": float("nan"), "intercept": float("nan"), "points": int(ok.sum())}
  lx, ly = np.log(x[ok]), np.log(y[ok])
  lx_c = lx - lx.mean()
  slope = float(np.sum(lx_c * (ly - ly.mean())) / np.sum(lx_c**2))
  return {"slope": slope, "intercept": float(ly.mean() - slope * lx.mean()), "points": int(ok.sum())}


def fit_power_law(n, err) -> dict[str, float]:
  r"""Fits :math:`\mathrm{err}(n) = e_\infty + A n^{-b}` (least squares, 0 <= e_inf <= min err, 0 <= b <= 3).

  Returns ``{"e_inf", "A", "b"}`` (nan when fewer than 4 points or no fit).
  """
  from scipy import optimize

  n = np.asarray(n, np.float64)
  err = np.asarray(err, np.float64)
  ok = np.isfinite(n) & np.isfinite(err) & (n > 0)
  n, err = n[ok], err[ok]
  nan = {"e_inf": float("nan"), "A": float("nan"), "b": float("nan")}
  if len(n) < 4:
    return nan
  scale = float(np.min(n))  # A is fitted at the smallest n, which keeps the problem well scaled.

  def model(nn, e_inf, a, b):
    return e_inf + a * (nn / scale) ** (-b)

  lo = max(float(np.min(err)), 1e-9)
  p0 = (0.5 * lo, max(float(err[np.argmin(n)] - 0.5 * lo), 1e-6), 0.5)
  try:
    (e_inf, a, b), _ = optimize.curve_fit(model, n, err, p0=p0, bounds=([0.0, 0.0, 0.0], [lo, np.inf, 3.0]),
                                          maxfev=20000)
  except (RuntimeError, ValueError):
    return nan
  return {"e_inf": float(e_inf), "A": float(a * scale**b), "b": float(b)}


def group_rows(rows: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
  out: dict[tuple, list] = {}
  for r in rows:
    out.setdefault(tuple(r[k] for k in keys), []).append(r)
  return out


def fits(sections: Mapping[str, Any], weak_acc: float, ceiling_acc: float) -> dict[str, Any]:
  """The fitted constants and the per-section summaries theory.md reports."""
  out: dict[str, Any] = {}
  # Limitation: |gain| <= C sqrt(misfit), per loss (its own f), over all runs and over clean runs.
  mg = sections["misfit_gain"]
  clean_noise = min(r["noise"] for r in mg)
  env = {}
  for (loss,), rows in group_rows(mg, "loss").items():
    clean = [r for r in rows if r["noise"] == clean_noise]
    env[loss] = fit_envelope([r["misfit_own"] for r in rows], [r["gain_own"] for r in rows])
    c = fit_envelope([r["misfit_own"] for r in clean], [r["gain_own"] for r in clean])
    own = own_divergence(loss)[0]
    env[loss].update({
        "own_f": own, "eps_dominated": own in EPS_DOMINATED, "C_clean": c["C"],
        "frac_gain_ge_misfit_clean": c["frac_gain_ge_misfit"],
        "gain_over_misfit_clean": float(np.mean(
            [r["gain_own"] / r["misfit_own"] for r in clean if r["misfit_own"] > 0])) if clean else float("nan"),
        "misfit_clean": float(np.mean([r["misfit_own"] for r in clean])) if clean else float("nan"),
        "gain_clean": float(np.mean([r["gain_own"] for r in clean])) if clean else float("nan"),
    })
  out["envelope"] = env
  out["misfit_gain_spearman"] = {
      f"{noise:g}": spearman([r["misfit_kl"] for r in rows], [r["gain_accuracy"] for r in rows])
      for (noise,), rows in sorted(group_rows(mg, "noise").items())}
  out["misfit_gain_spearman"]["all"] = spearman([r["misfit_kl"] for r in mg], [r["gain_accuracy"] for r in mg])
  # Sample complexity: excess error over the ceiling against n, and a power law with a free floor.
  sc = sections["sample_complexity"]
  slopes = {}
  ceiling_err = 1.0 - ceiling_acc
  for (loss, noise), rows in group_rows(sc, "loss", "noise").items():
    by_n = group_rows(rows, "n")
    ns = sorted(k[0] for k in by_n)
    err = [1.0 - float(np.mean([r["test_accuracy"] for r in by_n[(n,)]])) for n in ns]
    slopes.setdefault(loss, {})[f"{noise:g}"] = {
        "n": ns, "error": err,
        "excess_over_ceiling": fit_loglog_slope(ns, [e - ceiling_err for e in err]),
        "power_law": fit_power_law(ns, err),
    }
  out["sample_complexity"] = slopes
  # Equivalence: cross-loss against cross-seed disagreement, over the plain f-divergence losses
  # (a confidence term changes the target, so logconf and +conf are left out of the summary).
  eq = {}
  for noise, block in sections["equivalence"].items():
    names = block["losses"]
    keep = [i for i, l in enumerate(names) if not has_confidence(l)]
    d = np.asarray(block["disagreement"])[np.ix_(keep, keep)]
    off = d[~np.eye(len(d), dtype=bool)]
    entry = {"losses": [names[i] for i in keep],
             "mean_cross_loss": float(off.mean()) if off.size else float("nan"),
             "max_cross_loss": float(off.max()) if off.size else float("nan"),
             "mean_seed_baseline": nan_stat(np.nanmean, [block["seed_baseline"][i] for i in keep])}
    if off.size:
      i, j = np.unravel_index(np.argmax(np.where(np.eye(len(d), dtype=bool), -1, d)), d.shape)
      entry["most_different_pair"] = [names[keep[i]], names[keep[j]]]
    excluded = [i for i in range(len(names)) if i not in keep]
    if excluded:
      full = np.asarray(block["disagreement"])
      entry["confidence_losses"] = {names[i]: float(np.mean([full[i, k] for k in keep])) for i in excluded}
    eq[noise] = entry
  out["equivalence"] = eq
  # Noise dose: accuracy per rate, per loss and kind.
  nd = sections["noise_dose"]
  dose = {}
  for (loss, kind), rows in group_rows(nd, "loss", "kind").items():
    by_rate = group_rows(rows, "rate")
    rates = sorted(k[0] for k in by_rate)
    acc = [float(np.mean([r["test_accuracy"] for r in by_rate[(x,)]])) for x in rates]
    dose.setdefault(loss, {})[kind] = {"rates": rates, "accuracy": acc, "drop": float(acc[0] - acc[-1])}
  out["noise_dose"] = dose
  # Trajectory: peak against final accuracy (per seed), per loss and noise.
  tr = sections["trajectory"]
  traj = {}
  for (loss, noise), rows in group_rows(tr, "loss", "noise").items():
    by_step = group_rows(rows, "step")
    steps = sorted(k[0] for k in by_step)
    acc = np.array([[r["test_accuracy"] for r in sorted(by_step[(s,)], key=lambda r: r["seed"])] for s in steps])
    mean = acc.mean(1)
    peak = int(np.argmax(mean))
    m, half = mean_ci(acc[peak] - acc[-1])
    traj.setdefault(loss, {})[f"{noise:g}"] = {
        "points": len(steps), "peak_step": steps[peak], "last_step": steps[-1],
        "peak_accuracy": float(mean[peak]), "final_accuracy": float(mean[-1]),
        "drop": m, "drop_ci95": half,
        "misfit_first": float(np.mean([r["train_misfit"] for r in by_step[(steps[0],)]])),
        "misfit_last": float(np.mean([r["train_misfit"] for r in by_step[(steps[-1],)]])),
    }
  out["trajectory"] = traj
  out["weak_test_accuracy"] = weak_acc
  out["ceiling_test_accuracy"] = ceiling_acc
  return out


def has_confidence(loss: str) -> bool:
  return loss == "logconf" or loss.endswith(losses_lib.CONF_SUFFIX)


def spearman(x, y) -> float:
  from scipy import stats

  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
    return float("nan")
  return float(stats.spearmanr(x, y).statistic)


def nan_stat(stat, x) -> float:
  """``stat`` over the finite values of ``x``; nan (without a warning) when there are none."""
  x = np.asarray(x, np.float64)
  return float(stat(x)) if np.isfinite(x).any() else float("nan")
