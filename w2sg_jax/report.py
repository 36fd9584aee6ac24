"""The experiment report: a summary table (markdown and CSV) and two plots.

`write_report(results, outdir, title=...)` reads the pipeline's results dict,

    {"weak":    {"name", "test_accuracy", "test_auroc", ...},
     "ceiling": {"name", "test_accuracy", "test_auroc", ...},
     "runs":    [{"loss", "noise", "seed", "test_accuracy", "test_auroc", "pgr", ...}],
     "summary": [one row per (loss, noise), as `metrics.summarize_runs` returns]}

(the summary is computed from the runs when it is missing) and writes

* ``summary.md``: the weak and ceiling accuracies, then one table row per
  (loss, noise), sorted by noise and then by PGR, best first;
* ``summary.csv``: the same rows, every number at full precision;
* ``pgr_by_loss.png``: PGR bars grouped by noise rate, one bar per loss;
* ``accuracy_vs_noise.png``: student accuracy against the noise rate, one line
  per loss, with the weak model and the ceiling as reference lines.

When PGR is undefined (the ceiling does not beat the weak model by
``results["pgr_status"]["min_gap"]``, see `metrics.pgr_status`), nothing is ranked:
summary.md opens with a warning that says why, every PGR cell reads "n/a",
rows are sorted by noise and loss name, and the PGR plot shows the reason
instead of bars.

The plots use matplotlib's object API on an Agg canvas, so they never touch
pyplot's global state or need a display; matplotlib is imported only when a
figure is drawn.

A rerun redraws only what changed (`Ledger`): the workdir keeps ``LEDGER``,
which names, for each figure (or each group of files a writer makes), a
digest of what it was drawn from (its inputs and the source of the code that
draws it) and the sha256 of each file. A figure whose digest is unchanged and
whose file is intact is kept as it is; a deleted or damaged file, or one whose
numbers moved, is drawn again.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from w2sg_jax import grid as grid_lib
from w2sg_jax import hashing
from w2sg_jax import metrics

__all__ = ["CSV_COLUMNS", "LEDGER", "Ledger", "markdown_table", "pgr_defined", "sorted_rows", "write_report"]

_DPI = 120

# Machine-readable columns; a missing interval is written as empty cells.
CSV_COLUMNS = (
    "loss",
    "noise",
    "n_seeds",
    "accuracy_mean",
    "accuracy_std",
    "accuracy_ci95_low",
    "accuracy_ci95_high",
    "accuracy_ci95_examples_low",
    "accuracy_ci95_examples_high",
    "auroc_mean",
    "pgr_mean",
    "pgr_std",
    "pgr_ci95_low",
    "pgr_ci95_high",
    "pgr_ci95_examples_low",
    "pgr_ci95_examples_high",
    "selection",
    "setting",
)

_PGR_FIELDS = ("pgr_mean", "pgr_std", "pgr_ci95", "pgr_ci95_examples")

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d", "8")


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------


def _num(x: Any) -> float:
  return math.nan if x is None else float(x)


def sorted_rows(summary: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  """Rows ordered by noise, then PGR descending (nan last), then loss name."""

  def key(row):
    p = _num(row.get("pgr_mean"))
    return (float(row["noise"]), math.isnan(p), -p if not math.isnan(p) else 0.0, str(row["loss"]))

  return sorted(summary, key=key)


def _fmt(x: Any, digits: int = 3) -> str:
  x = _num(x)
  return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _fmt_pm(mean: Any, std: Any) -> str:
  return "n/a" if math.isnan(_num(mean)) else f"{_fmt(mean)} ± {_fmt(std)}"


def _fmt_ci(ci: Any) -> str:
  if ci is None:
    return "–"
  low, high = ci
  if math.isnan(_num(low)):
    return "n/a"
  return f"[{_fmt(low)}, {_fmt(high)}]"


def _has_examples_ci(summary: Sequence[Mapping[str, Any]]) -> bool:
  return any("pgr_ci95_examples" in row or "accuracy_ci95_examples" in row for row in summary)


def pgr_defined(summary: Sequence[Mapping[str, Any]]) -> bool:
  """False when every row's PGR is missing (None) or nan: nothing can be ranked."""
  return any(not math.isnan(_num(row.get("pgr_mean"))) for row in summary)


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
  """A markdown table with one row per (loss, noise), best PGR first per noise.

  Columns: loss, noise, n (seeds), accuracy mean ± std, accuracy 95% CI over
  seeds, AUROC, PGR mean ± std, PGR 95% CI over seeds and, when the summary
  has them, the accuracy and PGR 95% CIs over test examples.

  Args:
    summary: rows as `metrics.summarize_runs` returns them.

  Returns:
    The table as a string, ending in a newline.
  """
  examples = _has_examples_ci(summary)
  tuned = _is_tuned(summary)
  header = ["loss", "noise"] + (["setting"] if tuned else []) + ["n", "accuracy (mean ± std)",
                                                                  "accuracy 95% CI (seeds)"]
  if examples:
    header.append("accuracy 95% CI (examples)")
  header += ["AUROC", "PGR (mean ± std)", "PGR 95% CI (seeds)"]
  if examples:
    header.append("PGR 95% CI (examples)")
  align = ["---", "--:"] + (["---"] if tuned else []) + ["--:"] * (len(header) - 2 - tuned)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  for row in sorted_rows(summary):
    cells = [
        str(row["loss"]),
        f"{float(row['noise']):g}",
        *([_setting(row)] if tuned else []),
        str(row["n_seeds"]),
        _fmt_pm(row["accuracy_mean"], row["accuracy_std"]),
        _fmt_ci(row.get("accuracy_ci95")),
    ]
    if examples:
      cells.append(_fmt_ci(row.get("accuracy_ci95_examples")))
    # A row without PGR (undefined: no gap to recover) reads n/a, never a dash.
    no_pgr = row.get("pgr_mean") is None
    cells += [
        _fmt(row.get("auroc_mean")),
        _fmt_pm(row.get("pgr_mean"), row.get("pgr_std")),
        "n/a" if no_pgr else _fmt_ci(row.get("pgr_ci95")),
    ]
    if examples:
      cells.append("n/a" if no_pgr else _fmt_ci(row.get("pgr_ci95_examples")))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _is_tuned(summary: Sequence[Mapping[str, Any]]) -> bool:
  """Whether the rows are grid picks (`w2sg_jax.grid`): then each says which setting it comes from."""
  return any(row.get("selection", "default") != "default" for row in summary)


def _setting(row: Mapping[str, Any]) -> str:
  """The row's grid point by name (the pipeline's ``setting``, which spells out the default's values)."""
  return str(row.get("setting") or grid_lib.point_name(row.get("grid_point") or {}))


def _reference_line(name: str, ref: Mapping[str, Any]) -> str:
  label = f"{name} ({ref['name']})" if ref.get("name") else name
  text = f"{label}: test accuracy {_fmt(ref.get('test_accuracy'))}"
  if ref.get("test_auroc") is not None:
    text += f", AUROC {_fmt(ref.get('test_auroc'))}"
  return text


def _csv_rows(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  out = []
  for row in sorted_rows(summary):
    flat: dict[str, Any] = {
        "loss": row["loss"],
        "noise": float(row["noise"]),
        "n_seeds": int(row["n_seeds"]),
    }
    for key in ("accuracy_mean", "accuracy_std", "auroc_mean", "pgr_mean", "pgr_std"):
      # An undefined PGR is an empty cell, like a missing interval.
      flat[key] = "" if row.get(key) is None and key.startswith("pgr") else _num(row.get(key))
    for key in ("accuracy_ci95", "accuracy_ci95_examples", "pgr_ci95", "pgr_ci95_examples"):
      ci = row.get(key)
      flat[f"{key}_low"], flat[f"{key}_high"] = ("", "") if ci is None else map(_num, ci)
    flat["selection"] = row.get("selection", "default")
    flat["setting"] = _setting(row)
    out.append(flat)
  return out


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------


def _colours(n: int) -> list[tuple[float, ...]]:
  """Up to 20 distinct colours: tab20's ten dark shades first, then its light ones."""
  from matplotlib import colormaps

  cmap = colormaps["tab20"]
  order = list(range(0, 20, 2)) + list(range(1, 20, 2))
  return [cmap(order[i % 20]) for i in range(n)]


def _loss_order(summary: Sequence[Mapping[str, Any]]) -> list[str]:
  """Losses by mean PGR over noise rates, best first, so the legend reads as a ranking."""
  by_loss: dict[str, list[float]] = {}
  for row in summary:
    by_loss.setdefault(str(row["loss"]), []).append(_num(row.get("pgr_mean")))

  def key(loss):
    vals = [v for v in by_loss[loss] if not math.isnan(v)]
    return (not vals, -float(np.mean(vals)) if vals else 0.0, loss)

  return sorted(by_loss, key=key)


def _yerr(mean: float, ci: Any) -> tuple[float, float]:
  """Asymmetric error-bar lengths from an interval; 0 where it is missing or nan."""
  if ci is None or math.isnan(mean):
    return 0.0, 0.0
  low, high = _num(ci[0]), _num(ci[1])
  if math.isnan(low) or math.isnan(high):
    return 0.0, 0.0
  return max(0.0, mean - low), max(0.0, high - mean)


def _seed_note(summary: Sequence[Mapping[str, Any]]) -> str:
  counts = sorted({int(row["n_seeds"]) for row in summary})
  seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
  return f"{seeds} seed{'s' if counts[-1] > 1 else ''} per bar"


def plot_pgr_by_loss(summary, path: str, *, title: str, reason: str | None = None) -> str:
  """Grouped PGR bars: a group per noise rate, a bar per loss, 95% CIs as whiskers.

  When no row has a PGR (undefined: see `metrics.pgr_status`), the figure
  says why (``reason``) instead of drawing bars.
  """
  if not pgr_defined(summary):
    return _plot_pgr_undefined(path, title=title, reason=reason)
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  # Only when a figure is drawn.
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

  losses = _loss_order(summary)
  noises = sorted({float(row["noise"]) for row in summary})
  cell = {(str(r["loss"]), float(r["noise"])): r for r in summary}
  colours = _colours(len(losses))
  examples = _has_examples_ci(summary)

  n_loss = len(losses)
  group_width = 0.82
  bar_w = group_width / n_loss
  width = min(16.0, max(6.5, 2.2 + len(noises) * (0.3 * n_loss + 0.5)))
  fig = Figure(figsize=(width, 5.2), dpi=_DPI, layout="constrained")
  ax = fig.add_subplot()

  for i, loss in enumerate(losses):
    xs, ys, seed_err, ex_err = [], [], [], []
    for g, noise in enumerate(noises):
      row = cell.get((loss, noise))
      if row is None:
        continue
      mean = _num(row.get("pgr_mean"))
      xs.append(g - group_width / 2 + (i + 0.5) * bar_w)
      ys.append(mean)
      seed_err.append(_yerr(mean, row.get("pgr_ci95")))
      ex_err.append(_yerr(mean, row.get("pgr_ci95_examples")))
    if not xs:
      continue
    ax.bar(xs, ys, bar_w * 0.92, color=colours[i], label=loss, edgecolor="white", linewidth=0.5, zorder=2)
    if examples:
      # Thin whisker with caps: the CI over test examples (usually the wider).
      ax.errorbar(xs, ys, yerr=np.array(ex_err).T, fmt="none", ecolor="0.35",
                  elinewidth=0.9, capsize=min(3.0, 28 * bar_w), capthick=0.9, zorder=3)
    # Thick bar without caps: the CI over training seeds.
    ax.errorbar(xs, ys, yerr=np.array(seed_err).T, fmt="none", ecolor="black",
                elinewidth=2.4, capsize=0, zorder=4)

  ax.axhline(0.0, color="0.25", linewidth=1.0, zorder=1)
  ax.axhline(1.0, color="0.25", linewidth=1.0, linestyle="--", zorder=1)
  trans = ax.get_yaxis_transform()
  ax.text(1.0, 0.0, " weak", transform=trans, va="center", ha="left", fontsize=9, color="0.25")
  ax.text(1.0, 1.0, " ceiling", transform=trans, va="center", ha="left", fontsize=9, color="0.25")

  ax.set_xticks(range(len(noises)), [f"noise {n:g}" for n in noises], fontsize=10)
  ax.set_xlim(-0.55, len(noises) - 0.45)
  ax.set_ylabel("PGR  (student − weak) / (ceiling − weak)")
  ax.set_title(f"{title}: performance gap recovered\n({_seed_note(summary)})", fontsize=11)
  ax.grid(axis="y", color="0.9", zorder=0)
  ax.set_axisbelow(True)
  for side in ("top", "right"):
    ax.spines[side].set_visible(False)

  handles, labels = ax.get_legend_handles_labels()
  handles.append(Line2D([], [], color="black", linewidth=2.4))
  labels.append("95% CI, seeds")
  if examples:
    handles.append(Line2D([], [], color="0.35", linewidth=0.9, marker="_", markersize=8))
    labels.append("95% CI, test examples")
  # "outside" lets the constrained layout keep the legend clear of the axes and
  # of the reference labels written past its right edge.
  fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=9,
             title="loss (best first)", title_fontsize=9)
  fig.savefig(path, dpi=_DPI)
  return path


def _plot_pgr_undefined(path: str, *, title: str, reason: str | None) -> str:
  """The PGR figure when PGR is undefined: the reason, and no bar to misread as a ranking."""
  import textwrap

  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(8.0, 3.6), dpi=_DPI, layout="constrained")
  ax = fig.add_subplot()
  ax.set_axis_off()
  ax.set_title(f"{title}: performance gap recovered", fontsize=11)
  text = reason or "PGR is undefined: the ceiling does not beat the weak model."
  ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 80)), transform=ax.transAxes, ha="center", va="center",
          fontsize=10, color="0.2")
  fig.savefig(path, dpi=_DPI)
  return path


def plot_accuracy_vs_noise(summary, weak, ceiling, path: str, *, title: str) -> str:
  """Student test accuracy against the noise rate, one line per loss."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

  losses = _loss_order(summary)
  noises = sorted({float(row["noise"]) for row in summary})
  cell = {(str(r["loss"]), float(r["noise"])): r for r in summary}
  colours = _colours(len(losses))

  # Nudge the lines apart along x so their error bars do not stack on each other.
  # The total spread stays small next to both the closest pair of noise rates
  # and the whole axis, so every cluster still sits on its tick.
  spacing = float(np.min(np.diff(noises))) if len(noises) > 1 else 1.0
  span = noises[-1] - noises[0] if len(noises) > 1 else 1.0
  dodge = min(0.3 * spacing, 0.06 * span) / max(len(losses) - 1, 1)

  fig = Figure(figsize=(9.5, 5.0), dpi=_DPI, layout="constrained")
  ax = fig.add_subplot()
  for i, loss in enumerate(losses):
    pts = [(n, cell[(loss, n)]) for n in noises if (loss, n) in cell]
    offset = (i - (len(losses) - 1) / 2) * dodge
    xs = [n + offset for n, _ in pts]
    ys = [_num(r["accuracy_mean"]) for _, r in pts]
    err = np.array([_yerr(y, r.get("accuracy_ci95")) for y, (_, r) in zip(ys, pts)]).T
    ax.errorbar(xs, ys, yerr=err, color=colours[i], marker=_MARKERS[i % len(_MARKERS)],
                markersize=5, linewidth=1.5, elinewidth=1.0, capsize=2.5, label=loss, zorder=3)

  refs = []
  for name, ref, style in (("ceiling", ceiling, "--"), ("weak", weak, ":")):
    acc = _num(ref.get("test_accuracy"))
    if math.isnan(acc):
      continue
    label = f"{name}{' (' + str(ref['name']) + ')' if ref.get('name') else ''}: {acc:.3f}"
    ax.axhline(acc, color="0.2", linestyle=style, linewidth=1.3, zorder=2)
    ax.text(1.0, acc, f" {name}", transform=ax.get_yaxis_transform(), va="center",
            ha="left", fontsize=9, color="0.2")
    refs.append((Line2D([], [], color="0.2", linestyle=style, linewidth=1.3), label))

  ax.set_xticks(noises, [f"{n:g}" for n in noises])
  pad = 0.08 * span if len(noises) > 1 else 0.5
  ax.set_xlim(noises[0] - pad, noises[-1] + pad)
  ax.set_xlabel("weak-label noise rate")
  ax.set_ylabel("student test accuracy")
  ax.set_title(f"{title}: accuracy vs. label noise\n(mean over seeds, 95% CI over seeds)", fontsize=11)
  ax.grid(color="0.92", zorder=0)
  ax.set_axisbelow(True)
  for side in ("top", "right"):
    ax.spines[side].set_visible(False)

  handles, labels = ax.get_legend_handles_labels()
  handles += [h for h, _ in refs]
  labels += [lab for _, lab in refs]
  fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=9,
             title="loss (best PGR first)" if pgr_defined(summary) else "loss", title_fontsize=9)
  fig.savefig(path, dpi=_DPI)
  return path


# ----------------------------------------------------------------------------
# Reuse across reruns
# ----------------------------------------------------------------------------

LEDGER = ".report_sources.json"  # In the workdir, beside the files it describes.
_LEDGER_FORMAT = 1


class Ledger:
  """What each report file of a folder was drawn from, so that a rerun draws only what changed.

  ``final``: the folder the report ends up in (the workdir); ``outdir``: where
  this run writes (a staging folder moved onto ``final`` afterwards, or
  ``final`` itself). `Ledger.draw` runs a writer of a group of files unless
  ``final``'s ledger says that group was drawn from the same digest and each
  of its files still has its recorded sha256; `Ledger.save` writes the new
  ledger into ``outdir``. A damaged or missing ledger only means everything
  is drawn again.
  """

  def __init__(self, final: str | os.PathLike, outdir: str | os.PathLike):
    self.final, self.outdir = os.fspath(final), os.fspath(outdir)
    self.drawn: list[str] = []  # Groups drawn by this run; the others were kept.
    self._new: dict[str, Any] = {}
    try:
      with open(os.path.join(self.final, LEDGER), encoding="utf-8") as f:
        old = json.load(f)
      self._old = old["groups"] if isinstance(old, dict) and old.get("format") == _LEDGER_FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError):
      self._old = {}
    if not isinstance(self._old, dict):
      self._old = {}

  def draw(self, name: str, inputs: Mapping[str, Any], code: Sequence[str],
           write: Callable[[], Mapping[str, str]]) -> dict[str, str]:
    """``write()``'s ``{key: path}`` (paths under ``outdir``), or the kept files' paths under ``final``.

    ``inputs``: everything ``write`` reads (hash components: plain data and
    numpy arrays); ``code``: the source files of the code that draws them, so
    that a change to it draws the group again.
    """
    source = hashing.content_hash({"inputs": dict(inputs),
                                   "code": {os.path.basename(p): hashing.file_sha256(p) for p in code}})
    kept = self._intact(self._old.get(name), source)
    if kept is not None:
      self._new[name] = self._old[name]
      return {key: os.path.join(self.final, rel) for key, rel in kept.items()}
    paths = dict(write())
    files = {}
    for key, path in paths.items():
      rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.outdir))
      files[key] = {"path": rel, "sha256": hashing.read_sha256(path)}
    self._new[name] = {"source": source, "files": files}
    self.drawn.append(name)
    return paths

  def _intact(self, old: Any, source: str) -> dict[str, str] | None:
    """``{key: relative path}`` of a recorded group drawn from ``source`` whose files are intact; else None."""
    if not isinstance(old, dict) or old.get("source") != source or not isinstance(old.get("files"), dict):
      return None
    out = {}
    for key, record in old["files"].items():
      try:
        if hashing.read_sha256(os.path.join(self.final, record["path"])) != record["sha256"]:
          return None
      except (OSError, KeyError, TypeError):
        return None
      out[key] = record["path"]
    return out

  def save(self) -> str:
    """Writes the ledger of every group drawn or kept by this run into ``outdir``; returns its path."""
    path = os.path.join(self.outdir, LEDGER)
    os.makedirs(self.outdir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      # Not key-sorted: a kept group's paths come back in the order its writer returned them.
      json.dump({"format": _LEDGER_FORMAT, "groups": self._new}, f, indent=1)
    return path


def _draw_always(name: str, inputs: Mapping[str, Any], code: Sequence[str],
                 write: Callable[[], Mapping[str, str]]) -> dict[str, str]:
  del name, inputs, code
  return dict(write())


# ----------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------


def write_report(results: Mapping[str, Any], outdir: str | os.PathLike, *, title: str,
                 ledger: Ledger | None = None) -> dict[str, str]:
  """Writes summary.md, summary.csv, pgr_by_loss.png and accuracy_vs_noise.png.

  Args:
    results: {"weak", "ceiling", "runs", "summary"} as in the module docstring;
      "summary" is computed with `metrics.summarize_runs` when absent. An
      optional "pgr_status" ({"min_gap": ...}, as the pipeline writes it) sets the
      margin below which PGR is undefined (default `metrics.DEFAULT_MIN_GAP`).
    outdir: directory to write into; created when missing.
    title: a short name of the experiment, used in headings and plot titles.
    ledger: when given, a figure drawn from the same numbers before (and
      intact) is kept, not drawn again; its path is then the one under
      ``ledger.final``. The tables are always written: they are cheap, and the
      workdir's summary.md carries a banner while a run is unfinished.

  Returns:
    {"summary_md", "summary_csv", "pgr_by_loss", "accuracy_vs_noise"}: the
    paths written (or kept), as strings.
  """
  for key in ("weak", "ceiling"):
    if key not in results:
      raise ValueError(f"results lack {key!r}; pass the pipeline's results dict with 'weak', 'ceiling' and 'runs'.")
  weak, ceiling = results["weak"], results["ceiling"]
  min_gap = float((results.get("pgr_status") or {}).get("min_gap", metrics.DEFAULT_MIN_GAP))
  summary = results.get("summary")
  if summary and any("selection" in row for row in summary):  # A grid's: the headline selection's rows.
    selections = {row.get("selection", "default") for row in summary}
    # Without a summary_selection, rows of one selection are that selection's table (a caller's own picks).
    chosen = results.get("summary_selection", selections.pop() if len(selections) == 1 else "default")
    summary = [row for row in summary if row.get("selection", "default") == chosen]
  if summary is None:
    if not results.get("runs"):
      raise ValueError("results have neither 'summary' nor 'runs'; nothing to report.")
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="PGR is undefined", category=RuntimeWarning)  # Said below.
      summary = metrics.summarize_runs(results["runs"], weak, ceiling, min_gap=min_gap)
  if not summary:
    raise ValueError("the summary is empty; run at least one student before writing the report.")
  status = metrics.pgr_status(_num(weak.get("test_accuracy")), _num(ceiling.get("test_accuracy")), min_gap=min_gap)
  if not status["defined"]:  # Whatever the summary holds, an undefined PGR ranks nothing.
    summary = [{**row, **{k: None for k in _PGR_FIELDS if k in row}} for row in summary]
  reason = status["reason"] or (None if pgr_defined(summary) else "PGR is undefined for every row of the summary.")

  os.makedirs(outdir, exist_ok=True)
  paths = {
      "summary_md": os.path.join(outdir, "summary.md"),
      "summary_csv": os.path.join(outdir, "summary.csv"),
      "pgr_by_loss": os.path.join(outdir, "pgr_by_loss.png"),
      "accuracy_vs_noise": os.path.join(outdir, "accuracy_vs_noise.png"),
  }

  gap = _num(ceiling.get("test_accuracy")) - _num(weak.get("test_accuracy"))
  notes = [f"# {title}", ""]
  if reason:
    notes += [f"> **Warning.** {reason}", ""]
  notes += [
      f"- {_reference_line('Weak', weak)}",
      f"- {_reference_line('Ceiling', ceiling)}",
      f"- Gap to recover: {_fmt(gap)} (PGR needs at least {min_gap:g}). PGR = (student − weak) / (ceiling − weak).",
      ("- Rows are sorted by noise rate, then by mean PGR (best first)." if not reason else
       "- Rows are sorted by noise rate, then by loss name: with PGR undefined, nothing is ranked.")
      + " CI (seeds): percentile bootstrap over training seeds.",
  ]
  if _is_tuned(summary):
    selections = sorted({str(row.get("selection")) for row in summary})
    notes.append(
        f"- Each row is one grid point per (loss, noise), picked by {', '.join(selections)} (`weak_holdout`: "
        "agreement with the weak labels on rows held out of w2s_train; no gold label is read); its `setting` "
        "column names it. tuning.md sets it beside the untuned default and the oracle bound.")
  if _has_examples_ci(summary):
    notes.append(
        "- CI (examples): paired bootstrap over test examples (weak, ceiling and "
        "every seed resampled together), for the seed-mean student."
    )
  md = "\n".join(notes) + "\n\n" + markdown_table(summary)
  md += "\n![PGR by loss](pgr_by_loss.png)\n\n![Accuracy vs. noise](accuracy_vs_noise.png)\n"
  with open(paths["summary_md"], "w", encoding="utf-8") as f:
    f.write(md)

  with open(paths["summary_csv"], "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(_csv_rows(summary))

  draw = ledger.draw if ledger is not None else _draw_always
  code = [__file__]  # The figures' code is this module's.
  paths.update(draw("pgr_by_loss", {"summary": summary, "title": title, "reason": reason}, code, lambda: {
      "pgr_by_loss": plot_pgr_by_loss(summary, paths["pgr_by_loss"], title=title, reason=reason)}))
  # Of the references, what the figure reads (their other fields, such as weak_model_runs, vary by run).
  refs = {name: {k: ref.get(k) for k in ("name", "test_accuracy")} for name, ref in (("weak", weak),
                                                                                       ("ceiling", ceiling))}
  paths.update(draw("accuracy_vs_noise", {"summary": summary, **refs, "title": title}, code, lambda: {
      "accuracy_vs_noise": plot_accuracy_vs_noise(summary, weak, ceiling, paths["accuracy_vs_noise"], title=title)}))
  return paths
