"""The report: markdown and CSV agree with the summary, and the plots are real images."""

import csv
import math
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from w2sg_jax import metrics, report

LOSSES = ["kl", "reverse_kl", "js", "hellinger", "pearson", "neyman", "tv", "jeffreys", "xent", "logconf"]
NOISES = [0.0, 0.1, 0.3]


def _fake_results(*, n_losses=10, seeds=5, n=400, per_example=True, seed=0):
  """10 losses x 3 noise rates x 5 seeds of plausible accuracies."""
  rng = np.random.default_rng(seed)
  weak_c = (rng.random(n) < 0.72).astype(int)
  ceiling_c = (rng.random(n) < 0.88).astype(int)
  runs = []
  for i, loss in enumerate(LOSSES[:n_losses]):
    for noise in NOISES:
      for s in range(seeds):
        p = 0.78 + 0.007 * i - 0.1 * noise + rng.normal(0, 0.01)
        c = (rng.random(n) < p).astype(int)
        run = {"loss": loss, "noise": noise, "seed": s, "test_accuracy": float(c.mean()),
               "test_auroc": float(p + 0.05), "pgr": math.nan}
        if per_example:
          run["test_correct"] = c.tolist()
        runs.append(run)
  weak = {"name": "weak-mlp", "test_accuracy": float(weak_c.mean()), "test_auroc": 0.77}
  ceiling = {"name": "strong-minilm", "test_accuracy": float(ceiling_c.mean()), "test_auroc": 0.94}
  if per_example:
    weak["test_correct"], ceiling["test_correct"] = weak_c.tolist(), ceiling_c.tolist()
  return {"weak": weak, "ceiling": ceiling, "runs": runs}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  results = _fake_results()
  results["summary"] = metrics.summarize_runs(
      results["runs"], results["weak"], results["ceiling"], n_resamples_seeds=2000, n_resamples_examples=500
  )
  outdir = tmp_path_factory.mktemp("report")
  paths = report.write_report(results, outdir, title="Fake sweep")
  return results, paths


def _table_rows(md):
  lines = [line for line in md.splitlines() if line.startswith("| ")]
  return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_files_exist(written):
  _, paths = written
  assert set(paths) == {"summary_md", "summary_csv", "pgr_by_loss", "accuracy_vs_noise"}
  for path in paths.values():
    assert os.path.getsize(path) > 0, path


def test_csv_parses_back_to_the_summary(written):
  results, paths = written
  with open(paths["summary_csv"], newline="") as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == report.CSV_COLUMNS
  by_key = {(r["loss"], r["noise"]): r for r in results["summary"]}
  assert len(rows) == len(by_key) == 30
  for row in rows:
    ref = by_key[(row["loss"], float(row["noise"]))]
    assert int(row["n_seeds"]) == ref["n_seeds"] == 5
    for key in ("accuracy_mean", "accuracy_std", "auroc_mean", "pgr_mean", "pgr_std"):
      assert float(row[key]) == ref[key], key
    for key in ("accuracy_ci95", "pgr_ci95", "pgr_ci95_examples", "accuracy_ci95_examples"):
      assert [float(row[f"{key}_low"]), float(row[f"{key}_high"])] == ref[key], key


def test_markdown_has_one_sorted_row_per_loss_and_noise(written):
  results, paths = written
  md = open(paths["summary_md"], encoding="utf-8").read()
  weak_acc = results["weak"]["test_accuracy"]
  assert f"test accuracy {weak_acc:.3f}" in md
  assert f"test accuracy {results['ceiling']['test_accuracy']:.3f}" in md
  rows = _table_rows(md)
  assert len(rows) == 30
  assert {(r[0], float(r[1])) for r in rows} == {(l, n) for l in LOSSES for n in NOISES}
  header = [c.strip() for c in md.split("\n| ", 1)[1].split("\n")[0].strip("|").split("|")]
  assert "PGR 95% CI (examples)" in header
  pgr_col = header.index("PGR (mean ± std)")
  # Sorted by noise, then by PGR descending.
  noises = [float(r[1]) for r in rows]
  assert noises == sorted(noises)
  for noise in NOISES:
    pgrs = [float(r[pgr_col].split(" ± ")[0]) for r in rows if float(r[1]) == noise]
    assert pgrs == sorted(pgrs, reverse=True)
  assert md.count("\n") > 30
  assert report.markdown_table(results["summary"]) in md


@pytest.mark.parametrize("name", ["pgr_by_loss", "accuracy_vs_noise"])
def test_pngs_are_real_images(written, name):
  _, paths = written
  path = paths[name]
  assert os.path.getsize(path) > 30_000
  img = mpimg.imread(path)
  height, width = img.shape[:2]
  assert height >= 400 and width >= 800
  # The data are drawn: a fair share of saturated (non-grey) pixels, in many
  # hues. Axes, text and reference lines alone are all grey.
  rgb = img[..., :3].reshape(-1, 3)
  saturated = rgb[(rgb.max(axis=1) - rgb.min(axis=1)) > 0.25]
  assert len(saturated) > 0.01 * len(rgb)
  packed = (saturated * 255).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
  assert len(np.unique(packed)) > 10


def test_report_without_summary_or_per_example_data(tmp_path):
  results = _fake_results(n_losses=3, seeds=2, n=100, per_example=False)
  paths = report.write_report(results, tmp_path / "nested" / "out", title="No examples")
  md = open(paths["summary_md"], encoding="utf-8").read()
  assert "(examples)" not in md
  assert len(_table_rows(md)) == 9
  with open(paths["summary_csv"], newline="") as f:
    rows = list(csv.DictReader(f))
  assert all(r["pgr_ci95_examples_low"] == "" for r in rows)
  # The summary was computed from the runs: its means are the numpy means.
  kl0 = [r["test_accuracy"] for r in results["runs"] if r["loss"] == "kl" and r["noise"] == 0.0]
  row = next(r for r in rows if r["loss"] == "kl" and float(r["noise"]) == 0.0)
  assert float(row["accuracy_mean"]) == pytest.approx(np.mean(kl0), abs=1e-12)
  assert mpimg.imread(paths["pgr_by_loss"]).shape[0] > 100


def test_report_errors_name_the_fix(tmp_path):
  with pytest.raises(ValueError, match="'ceiling'"):
    report.write_report({"weak": {}, "runs": []}, tmp_path, title="x")
  with pytest.raises(ValueError, match="nothing to report"):
    report.write_report({"weak": {"test_accuracy": 0.7}, "ceiling": {"test_accuracy": 0.9}}, tmp_path, title="x")


def test_sorted_rows_puts_nan_last():
  rows = [
      {"loss": "a", "noise": 0.1, "pgr_mean": math.nan},
      {"loss": "b", "noise": 0.1, "pgr_mean": 0.2},
      {"loss": "c", "noise": 0.0, "pgr_mean": -0.5},
      {"loss": "d", "noise": 0.1, "pgr_mean": 0.9},
  ]
  assert [r["loss"] for r in report.sorted_rows(rows)] == ["c", "d", "b", "a"]


# ----------------------------------------------------------------------------
# Undefined PGR: flagged, never ranked
# ----------------------------------------------------------------------------


def _degenerate(tmp_path, **pgr_status):
  """The fake sweep with the ceiling below the weak model (as with lr 1e30 on the ceiling)."""
  results = _fake_results(n_losses=4, seeds=3, n=300)
  results["weak"], results["ceiling"] = results["ceiling"], results["weak"]
  if pgr_status:
    results["pgr_status"] = pgr_status
  with pytest.warns(RuntimeWarning, match="PGR is undefined"):
    results["summary"] = metrics.summarize_runs(
        results["runs"], results["weak"], results["ceiling"], n_resamples_seeds=200, n_resamples_examples=100,
        **({"min_gap": pgr_status["min_gap"]} if pgr_status else {}))
  return results, report.write_report(results, tmp_path, title="Broken ceiling")


def test_undefined_pgr_is_flagged_on_top_and_nothing_is_ranked(tmp_path):
  results, paths = _degenerate(tmp_path)
  md = open(paths["summary_md"], encoding="utf-8").read()
  first = md.split("\n", 3)
  assert first[0] == "# Broken ceiling" and first[2].startswith("> **Warning.** PGR is undefined:")
  assert f"{results['ceiling']['test_accuracy']:.4f}" in first[2] and "does not beat" in first[2]
  assert "nothing is ranked" in md and "best first" not in md
  header = [c.strip() for c in md.split("\n| ", 1)[1].split("\n")[0].strip("|").split("|")]
  rows = _table_rows(md)
  assert len(rows) == 4 * 3
  for col in ("PGR (mean ± std)", "PGR 95% CI (seeds)", "PGR 95% CI (examples)"):
    assert {r[header.index(col)] for r in rows} == {"n/a"}, col
  # Sorted by noise, then by loss name: an order that says nothing about PGR.
  assert [(float(r[1]), r[0]) for r in rows] == sorted((float(r[1]), r[0]) for r in rows)
  with open(paths["summary_csv"], newline="") as f:
    assert {(r["pgr_mean"], r["pgr_ci95_low"]) for r in csv.DictReader(f)} == {("", "")}
  # The PGR figure says why instead of drawing bars: almost no saturated (bar) pixels.
  img = mpimg.imread(paths["pgr_by_loss"])[..., :3].reshape(-1, 3)
  assert ((img.max(axis=1) - img.min(axis=1)) > 0.25).mean() < 0.001


def test_a_summary_with_pgr_is_blanked_when_the_gap_is_too_small(tmp_path):
  results = _fake_results(n_losses=3, seeds=2, n=200)
  results["summary"] = metrics.summarize_runs(results["runs"], results["weak"], results["ceiling"],
                                              n_resamples_seeds=100, n_resamples_examples=100)
  assert all(row["pgr_mean"] is not None for row in results["summary"])
  results["pgr_status"] = {"min_gap": 0.5}  # A margin the ceiling (+0.16) does not reach.
  paths = report.write_report(results, tmp_path, title="Margin")
  md = open(paths["summary_md"], encoding="utf-8").read()
  assert "> **Warning.** PGR is undefined:" in md and "0.5 accuracy points" not in md and "50 accuracy points" in md
  assert all(r[-1] == "n/a" for r in _table_rows(md))


def test_markdown_table_reads_n_a_for_a_missing_pgr():
  row = {"loss": "kl", "noise": 0.0, "n_seeds": 2, "accuracy_mean": 0.8, "accuracy_std": 0.01,
         "accuracy_ci95": [0.79, 0.81], "auroc_mean": 0.9, "pgr_mean": None, "pgr_std": None, "pgr_ci95": None}
  (cells,) = _table_rows(report.markdown_table([row]))
  assert cells[-2:] == ["n/a", "n/a"] and cells[3] == "0.800 ± 0.010"
  assert not report.pgr_defined([row])


def test_grid_picks_say_which_setting_each_row_comes_from(tmp_path):
  results = _fake_results(n_losses=2, seeds=3, per_example=False)
  summary = metrics.summarize_runs(results["runs"], results["weak"], results["ceiling"], n_resamples_seeds=200)
  points = [{}, {"learning_rate": 0.01}]
  picked = [{**row, "selection": "weak_holdout", "grid_point": points[i % 2]} for i, row in enumerate(summary)]
  picked[0]["setting"] = "default (learning_rate=0.003)"  # As the pipeline spells out the default.
  table = report.markdown_table(picked)
  header = table.splitlines()[0]
  assert header.startswith("| loss | noise | setting | n |")
  body = table.splitlines()[2:]
  assert sum("| default (learning_rate=0.003) |" in line for line in body) == 1
  assert sum("| learning_rate=0.01 |" in line for line in body) == len(picked) // 2
  assert sum("| default |" in line for line in body) == len(picked) - len(picked) // 2 - 1
  paths = report.write_report({**results, "summary": picked}, tmp_path, title="t")
  with open(paths["summary_csv"], newline="") as f:
    rows = list(csv.DictReader(f))
  assert {r["selection"] for r in rows} == {"weak_holdout"}
  assert {r["setting"] for r in rows} == {"default (learning_rate=0.003)", "learning_rate=0.01", "default"}
  assert "picked by weak_holdout" in open(paths["summary_md"]).read()
  # Without a grid the table keeps its columns.
  assert "setting" not in report.markdown_table(summary).splitlines()[0]
