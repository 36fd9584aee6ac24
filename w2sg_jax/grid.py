"""Hyperparameter grids of the students, and picking a point without gold labels.

``student.grid`` maps a setting to the values to try, expanded as a product::

  {"learning_rate": (3e-4, 1e-3, 3e-3, 1e-2),    # student.train.optimizer.learning_rate
   "weight_decay": (0.0, 0.01),                  # student.train.optimizer.weight_decay
   "loss_alpha": (0.25, 0.5, 0.75)}              # the loss's hyperparameter alpha

(ConfigDict keys take no dots, hence ``loss_<hparam>`` for a loss's
hyperparameter.) The optimizer's settings are per-run traced values on the
vmap engine (`engines.RunSpec.optimizer`): a loss's whole grid x seeds x noise
rates is one compiled program. ``loss_<hparam>`` applies to the losses that
take that hyperparameter (``loss_alpha`` to ``alpha``); each of its values is
a group of its own (a vmapped call), and every group of every loss runs the
same compiled loop, which picks its loss by a traced index (the students' loss
table, `engines.train_vmap`). Every point is a run with its own cache key, and
a point equal to the experiment's own setting is that setting's run, trained once.

Selection (`pick`): per (loss, noise), the point whose runs score best on the
weak-labelled holdout (``student.train.select``: accuracy or AUROC against the
run's own weak labels on rows held out of w2s_train), mean over seeds: no gold
label is read. The report puts it beside the untuned default and the oracle
(the point with the best mean TEST accuracy: an upper bound on what tuning
could give, never a result).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

LOSS_PREFIX = "loss_"
OPTIMIZER_KEYS = ("learning_rate", "weight_decay")
SELECTIONS = ("default", "weak_holdout", "oracle")


def key_problem(key: str) -> str | None:
  """Why ``key`` cannot be a grid axis, or None."""
  if key in OPTIMIZER_KEYS:
    return None
  if key.startswith(LOSS_PREFIX) and len(key) > len(LOSS_PREFIX):
    return None
  return (f"not a grid axis; use {', '.join(OPTIMIZER_KEYS)} (student.train.optimizer's) or "
          f"{LOSS_PREFIX}<hparam> (a loss's, e.g. loss_alpha, loss_confidence).")


def expand(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
  """Every point of the product, in the order the keys and values are given."""
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*(tuple(grid[k]) for k in keys))]


def optimizer_part(point: Mapping[str, float]) -> dict[str, float]:
  return {k: float(v) for k, v in point.items() if k in OPTIMIZER_KEYS}


def loss_part(point: Mapping[str, float]) -> dict[str, float]:
  return {k[len(LOSS_PREFIX):]: float(v) for k, v in point.items() if k.startswith(LOSS_PREFIX)}


def points_for(grid: Mapping[str, Sequence[float]], accepts) -> list[dict[str, float]]:
  """The grid's points for one loss: ``loss.*`` axes the loss does not take (``accepts(hparam)`` False) are
  dropped, so their duplicates collapse."""
  kept = {k: v for k, v in grid.items() if not k.startswith(LOSS_PREFIX) or accepts(k[len(LOSS_PREFIX):])}
  return expand(kept) if kept else []


def _mean(xs: Sequence[float]) -> float:
  vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
  return sum(vals) / len(vals) if vals else -math.inf


def pick(runs: Sequence[Mapping[str, Any]], score: str) -> dict[tuple[str, float], dict[str, Any]]:
  """Per (loss, noise), the grid point (``grid_point``; {} = the default) with the best mean ``score``
  over its runs (ties: the earlier point). ``score`` is ``holdout_score`` (weak labels only) or
  ``test_accuracy`` (the oracle)."""
  by_cell: dict[tuple[str, float], dict[str, list]] = {}
  order: dict[tuple[str, float], list[str]] = {}
  for r in runs:
    cell = (str(r["loss"]), float(r["noise"]))
    name = point_name(r.get("grid_point") or {})
    by_cell.setdefault(cell, {}).setdefault(name, []).append(r)
    if name not in order.setdefault(cell, []):
      order[cell].append(name)
  out = {}
  for cell, points in by_cell.items():
    best = max(order[cell], key=lambda name: (_mean([r.get(score) for r in points[name]]), -order[cell].index(name)))
    out[cell] = {"grid_point": dict(points[best][0].get("grid_point") or {}), "runs": points[best]}
  return out


def point_name(point: Mapping[str, float]) -> str:
  return ", ".join(f"{k}={v:g}" for k, v in point.items()) or "default"


def effective_point(run: Mapping[str, Any], default_points: Mapping[str, Mapping[str, float]] | None
                    ) -> dict[str, float]:
  """The run's setting on the grid's axes: its ``grid_point``, or for the config's own setting ({}) what the
  config says on those axes (``default_points[loss]``, `stages.Stages.grid_default_points`)."""
  return dict(run.get("grid_point") or (default_points or {}).get(str(run["loss"]), {}))


def spread(runs: Sequence[Mapping[str, Any]],
           default_points: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
  """Per loss, how much the grid moves test accuracy: the range and std over points of the point means
  (over noise rates and seeds), the sensitivity of each loss to its setting. The config's own setting
  counts as the point it sits at (``default_points``)."""
  out = []
  for loss in sorted({str(r["loss"]) for r in runs}):
    means: dict[str, list[float]] = {}
    for r in runs:
      if str(r["loss"]) == loss:
        means.setdefault(point_name(effective_point(r, default_points)), []).append(float(r["test_accuracy"]))
    values = [sum(v) / len(v) for v in means.values()]
    mu = sum(values) / len(values)
    std = math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    out.append({"loss": loss, "points": len(values), "accuracy_min": min(values), "accuracy_max": max(values),
                "accuracy_range": max(values) - min(values), "accuracy_std": std})
  return out


def tuned_summary(runs: Sequence[Mapping[str, Any]], weak: Mapping[str, Any], ceiling: Mapping[str, Any], *,
                  min_gap: float) -> list[dict[str, Any]]:
  """`metrics.summarize_runs` rows for each selection: ``default`` (the config's setting), ``weak_holdout``
  (the point picked on the weak-labelled holdout) and ``oracle`` (picked on test: an upper bound), each
  row with its ``selection`` and ``grid_point``."""
  import warnings  # pylint: disable=g-import-not-at-top

  from w2sg_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  out = []
  picks = {"default": {(str(r["loss"]), float(r["noise"])): {"grid_point": {}, "runs": []} for r in runs}}
  for r in runs:
    if not r.get("grid_point"):
      picks["default"][(str(r["loss"]), float(r["noise"]))]["runs"].append(r)
  picks["weak_holdout"] = pick(runs, "holdout_score")
  picks["oracle"] = pick(runs, "test_accuracy")
  for selection in SELECTIONS:
    chosen = {cell: c for cell, c in picks[selection].items() if c["runs"]}
    if not chosen:
      continue
    # One call per selection: its cells resample the same test examples once (`metrics.summarize_runs`).
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      rows = metrics_lib.summarize_runs([r for c in chosen.values() for r in c["runs"]], weak, ceiling,
                                        min_gap=min_gap)
    for row in rows:
      point = chosen[(str(row["loss"]), float(row["noise"]))]["grid_point"]
      out.append({**row, "selection": selection, "grid_point": dict(point)})
  return out


def describe_point(point: Mapping[str, float], loss: str,
                   default_points: Mapping[str, Mapping[str, float]] | None = None) -> str:
  """``learning_rate=0.01``; the config's own setting ({}) reads ``default (learning_rate=0.003)``."""
  if point:
    return point_name(point)
  at = (default_points or {}).get(loss)
  return f"default ({point_name(at)})" if at else "default"


def markdown(tuned: Sequence[Mapping[str, Any]], spread_rows: Sequence[Mapping[str, Any]], *, title: str,
             default_points: Mapping[str, Mapping[str, float]] | None = None) -> str:
  lines = [f"# {title}: tuned and untuned", "",
           "Per (loss, noise): the config's own setting (`default`), the grid point picked on the weak-labelled "
           "holdout (`weak_holdout`: agreement with the weak labels on rows held out of w2s_train; no gold label "
           "is read), and the point with the best test accuracy (`oracle`: an upper bound on tuning, never a "
           "result). Accuracy is the mean over seeds with its 95% CI over seeds.", "",
           "| loss | noise | default | weak_holdout | its point | oracle (bound) | its point |",
           "|---|---|---|---|---|---|---|"]
  by = {(r["loss"], r["noise"], r["selection"]): r for r in tuned}
  for loss, noise in sorted({(r["loss"], r["noise"]) for r in tuned}, key=lambda c: (c[1], c[0])):
    cells = []
    for selection in SELECTIONS:
      r = by.get((loss, noise, selection))
      if r is None:
        cells += ["n/a"] + ([""] if selection != "default" else [])
        continue
      ci = r["accuracy_ci95"]
      cells.append(f"{100 * r['accuracy_mean']:.2f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")
      if selection != "default":
        cells.append(describe_point(r["grid_point"], loss, default_points))
    lines.append(f"| {loss} | {noise:g} | " + " | ".join(cells) + " |")
  lines += ["", "How much each loss depends on its setting (test accuracy of each grid point, mean over noise "
            "rates and seeds):", "", "| loss | points | min | max | range | std |", "|---|---|---|---|---|---|"]
  for r in spread_rows:
    lines.append(f"| {r['loss']} | {r['points']} | {100 * r['accuracy_min']:.2f} | {100 * r['accuracy_max']:.2f} | "
                 f"{100 * r['accuracy_range']:.2f} | {100 * r['accuracy_std']:.2f} |")
  return "\n".join(lines) + "\n\n![accuracy against learning rate](accuracy_vs_learning_rate.png)\n"


def plot_learning_rate(runs: Sequence[Mapping[str, Any]], path: str, *, title: str,
                       default_points: Mapping[str, Mapping[str, float]] | None = None) -> str | None:
  """Test accuracy against the learning rate, one line per loss (mean over the other axes and seeds); the
  config's own setting sits at its learning rate (``default_points``)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  points = [{**r, "grid_point": effective_point(r, default_points)} for r in runs]
  points = [r for r in points if "learning_rate" in r["grid_point"]]
  if not points:
    return None
  fig = Figure(figsize=(6.5, 4.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for loss in sorted({r["loss"] for r in points}):
    lrs = sorted({r["grid_point"]["learning_rate"] for r in points if r["loss"] == loss})
    ys = [sum(float(r["test_accuracy"]) for r in points if r["loss"] == loss and r["grid_point"]["learning_rate"] == lr)
          / max(1, sum(1 for r in points if r["loss"] == loss and r["grid_point"]["learning_rate"] == lr)) for lr in lrs]
    ax.plot(lrs, ys, marker="o", label=loss)
  ax.set_xscale("log")
  ax.set_xlabel("learning rate (log)")
  ax.set_ylabel("test accuracy (mean over seeds and noise)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  ax.set_title(f"{title}: accuracy against learning rate")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def write_report(tuned, spread_rows, runs, outdir: str, *, title: str,
                 default_points: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, str]:
  """tuning.md and accuracy_vs_learning_rate.png in ``outdir``."""
  import os  # pylint: disable=g-import-not-at-top

  paths = {"tuning_md": os.path.join(outdir, "tuning.md")}
  with open(paths["tuning_md"], "w") as f:
    f.write(markdown(tuned, spread_rows, title=title, default_points=default_points))
  figure = plot_learning_rate([r for r in runs if r.get("method", "single") == "single"],
                              os.path.join(outdir, "accuracy_vs_learning_rate.png"), title=title,
                              default_points=default_points)
  if figure:
    paths["accuracy_vs_learning_rate"] = figure
  return paths
