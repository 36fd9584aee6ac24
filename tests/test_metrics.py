"""Metrics against independent references: loops, pairwise counts and scipy."""

import itertools
import json
import math
import tracemalloc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from w2sg_jax import metrics


def _pairwise_auroc(scores, labels):
  """O(N^2) reference: P(s_pos > s_neg) + 1/2 P(s_pos == s_neg)."""
  pos = [s for s, y in zip(scores, labels) if y == 1]
  neg = [s for s, y in zip(scores, labels) if y == 0]
  wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def _softmax(x):
  z = np.exp(x - x.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------


def test_accuracy_matches_loop_and_is_the_same_for_logits_and_probs():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(257, 4))
  labels = rng.integers(0, 4, size=257)
  expected = sum(int(np.argmax(row) == y) for row, y in zip(logits, labels)) / 257
  assert metrics.accuracy(logits, labels) == pytest.approx(expected, abs=0)
  assert metrics.accuracy(_softmax(logits), labels) == pytest.approx(expected, abs=0)


def test_accuracy_rejects_bad_shapes():
  with pytest.raises(ValueError, match=r"\[N, C\]"):
    metrics.accuracy(np.zeros(5), np.zeros(5, int))
  with pytest.raises(ValueError, match="does not match"):
    metrics.accuracy(np.zeros((5, 2)), np.zeros(4, int))


def test_accuracy_jax_under_jit_masks_like_slicing():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(32, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=32)
  where = np.arange(32) < 21
  fn = jax.jit(metrics.accuracy_jax)
  assert float(fn(logits, labels)) == pytest.approx(metrics.accuracy(logits, labels), abs=1e-6)
  assert float(fn(logits, labels, jnp.asarray(where))) == pytest.approx(
      metrics.accuracy(logits[:21], labels[:21]), abs=1e-6
  )
  assert float(fn(logits, labels, jnp.zeros(32, bool))) == 0.0
  np.testing.assert_array_equal(
      np.asarray(metrics.correct(logits, labels)), np.argmax(logits, -1) == labels
  )


# ----------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_pairwise_count_and_mannwhitneyu_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = 300
  labels = rng.integers(0, 2, size=n)
  # Few distinct values so that ties are common, within and across classes.
  scores = rng.integers(0, 7, size=n) + labels * rng.integers(0, 3, size=n)
  ours = metrics.auroc(scores, labels)
  assert ours == pytest.approx(_pairwise_auroc(scores, labels), abs=1e-12)
  u = stats.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
  assert ours == pytest.approx(u / ((labels == 1).sum() * (labels == 0).sum()), abs=1e-12)


def test_auroc_continuous_scores_and_known_values():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, size=200)
  scores = rng.normal(size=200) + labels
  assert metrics.auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels), abs=1e-12)
  assert metrics.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
  assert metrics.auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
  assert metrics.auroc([0.5] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
  # Hand count: pos {0.4, 0.7}, neg {0.4, 0.1}: 0.5 + 1 + 1 + 1 = 3.5 of 4.
  assert metrics.auroc([0.4, 0.7, 0.4, 0.1], [1, 1, 0, 0]) == 0.875
  assert metrics.auroc(scores, labels.astype(bool)) == metrics.auroc(scores, labels)


def test_auroc_one_class_is_nan_with_warning():
  with pytest.warns(RuntimeWarning, match="one class"):
    assert math.isnan(metrics.auroc([0.1, 0.2], [1, 1]))
  with pytest.raises(ValueError, match="binary"):
    metrics.auroc([0.1, 0.2, 0.3], [0, 1, 2])


def test_auroc_multiclass_is_macro_one_vs_rest():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 3, size=150)
  probs = _softmax(rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[labels])
  expected = np.mean([_pairwise_auroc(probs[:, c], labels == c) for c in range(3)])
  assert metrics.auroc_multiclass(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_auroc_multiclass_skips_absent_class():
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 2, size=60)  # class 2 never occurs
  probs = _softmax(rng.normal(size=(60, 3)))
  expected = np.mean([_pairwise_auroc(probs[:, c], labels == c) for c in range(2)])
  with pytest.warns(RuntimeWarning, match=r"\[2\]"):
    assert metrics.auroc_multiclass(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_auroc_from_scores_binary_and_multiclass():
  rng = np.random.default_rng(6)
  labels = rng.integers(0, 2, size=120)
  logits = rng.normal(size=(120, 2)) + 2 * np.eye(2)[labels]
  p1 = _softmax(logits)[:, 1]
  assert metrics.auroc_from_scores(logits, labels) == pytest.approx(_pairwise_auroc(p1, labels), abs=1e-12)
  assert metrics.auroc_from_scores(_softmax(logits), labels, from_logits=False) == pytest.approx(
      _pairwise_auroc(p1, labels), abs=1e-12
  )
  labels3 = rng.integers(0, 3, size=120)
  logits3 = rng.normal(size=(120, 3))
  assert metrics.auroc_from_scores(logits3, labels3) == pytest.approx(
      metrics.auroc_multiclass(_softmax(logits3), labels3), abs=1e-12
  )


# ----------------------------------------------------------------------------
# PGR
# ----------------------------------------------------------------------------


def test_pgr_arithmetic_and_broadcasting():
  assert metrics.pgr(0.8, 0.7, 0.9) == pytest.approx(0.5)
  assert metrics.pgr(0.7, 0.7, 0.9) == 0.0
  assert metrics.pgr(0.9, 0.7, 0.9) == pytest.approx(1.0)
  assert metrics.pgr(0.6, 0.7, 0.9) == pytest.approx(-0.5)
  assert isinstance(metrics.pgr(0.8, 0.7, 0.9), float)
  out = metrics.pgr(np.array([0.7, 0.75, 0.95]), 0.7, 0.9)
  np.testing.assert_allclose(out, [0.0, 0.25, 1.25])


def test_pgr_empty_gap_is_nan_with_warning_not_an_error():
  with warnings.catch_warnings():
    warnings.simplefilter("error", ZeroDivisionError)
    with pytest.warns(RuntimeWarning, match="ceiling == weak"):
      assert math.isnan(metrics.pgr(0.8, 0.7, 0.7))
    with pytest.warns(RuntimeWarning, match="ceiling == weak"):
      out = metrics.pgr(0.8, np.array([0.7, 0.6]), np.array([0.7, 1.0]))
  assert math.isnan(out[0]) and out[1] == pytest.approx(0.5)


# ----------------------------------------------------------------------------
# Bootstrap over seeds
# ----------------------------------------------------------------------------


def test_bootstrap_ci_matches_a_loop_over_the_same_generator():
  values = np.array([0.31, 0.42, 0.35, 0.5, 0.28, 0.39, 0.44])
  rng = np.random.default_rng(7)
  reps = [values[rng.integers(0, values.size, values.size)].mean() for _ in range(3000)]
  expected = np.quantile(reps, [0.025, 0.975])
  got = metrics.bootstrap_ci(values, n_resamples=3000, seed=7)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_bootstrap_ci_contains_the_mean_is_deterministic_and_narrows():
  rng = np.random.default_rng(8)
  small = rng.normal(0.5, 0.1, size=8)
  low, high = metrics.bootstrap_ci(small, n_resamples=4000)
  assert low < small.mean() < high
  assert metrics.bootstrap_ci(small, n_resamples=4000) == (low, high)
  assert metrics.bootstrap_ci(small, n_resamples=4000, seed=1) != (low, high)
  big = rng.normal(0.5, 0.1, size=800)
  big_low, big_high = metrics.bootstrap_ci(big, n_resamples=4000)
  assert big_high - big_low < 0.5 * (high - low)
  # A 50% interval sits inside the 95% one.
  mid_low, mid_high = metrics.bootstrap_ci(small, n_resamples=4000, confidence=0.5)
  assert low <= mid_low < mid_high <= high


def test_bootstrap_ci_edge_cases_and_stat_without_axis():
  assert metrics.bootstrap_ci([0.42]) == (0.42, 0.42)
  assert all(math.isnan(v) for v in metrics.bootstrap_ci([0.1, math.nan]))
  with pytest.raises(ValueError, match="at least one"):
    metrics.bootstrap_ci([])
  values = np.arange(10.0)
  vec = metrics.bootstrap_ci(values, stat=np.median, n_resamples=500, seed=3)
  loop = metrics.bootstrap_ci(values, stat=lambda x: float(np.median(x)), n_resamples=500, seed=3)
  assert vec == loop


# ----------------------------------------------------------------------------
# Paired bootstrap over test examples
# ----------------------------------------------------------------------------


def _correct_sets(seed=0, s=5, n=400, p=(0.8, 0.7, 0.9)):
  rng = np.random.default_rng(seed)
  student = (rng.random((s, n)) < p[0]).astype(np.int8)
  weak = (rng.random(n) < p[1]).astype(np.int8)
  ceiling = (rng.random(n) < p[2]).astype(np.int8)
  return student, weak, ceiling


def test_paired_bootstrap_pgr_matches_an_explicit_loop():
  student, weak, ceiling = _correct_sets(n=150, s=3)
  rng = np.random.default_rng(11)
  reps = []
  for _ in range(400):
    idx = rng.integers(0, 150, 150)
    s, w, c = student[:, idx].mean(), weak[idx].mean(), ceiling[idx].mean()
    reps.append((s - w) / (c - w))
  got = metrics.paired_bootstrap_pgr(student, weak, ceiling, n_resamples=400, seed=11)
  np.testing.assert_allclose([got["low"], got["high"]], np.quantile(reps, [0.025, 0.975]), atol=1e-12)
  per_seed = metrics.pgr(student.mean(1), weak.mean(), ceiling.mean())
  assert got["mean"] == pytest.approx(per_seed.mean(), abs=1e-12)


def test_paired_bootstrap_pgr_is_one_when_student_is_the_ceiling_and_zero_at_weak():
  student, weak, ceiling = _correct_sets()
  at_ceiling = metrics.paired_bootstrap_pgr(np.stack([ceiling] * 5), weak, ceiling)
  assert (at_ceiling["mean"], at_ceiling["low"], at_ceiling["high"]) == (1.0, 1.0, 1.0)
  at_weak = metrics.paired_bootstrap_pgr(weak, weak, ceiling)
  assert (at_weak["mean"], at_weak["low"], at_weak["high"]) == (0.0, 0.0, 0.0)
  out = metrics.paired_bootstrap_pgr(student, weak, ceiling)
  assert out["low"] < out["mean"] < out["high"]


def test_paired_bootstrap_chunking_does_not_change_the_answer():
  student, weak, ceiling = _correct_sets(n=300)
  whole = metrics.paired_bootstrap_pgr(student, weak, ceiling, n_resamples=500, max_bytes=10**9)
  chunked = metrics.paired_bootstrap_pgr(student, weak, ceiling, n_resamples=500, max_bytes=7 * 24 * 300)
  assert whole == chunked
  again = metrics.paired_bootstrap_pgr(student, weak, ceiling, n_resamples=500)
  assert again == whole
  assert metrics.paired_bootstrap_pgr(student, weak, ceiling, n_resamples=500, seed=1) != whole


def test_paired_bootstrap_accuracy_matches_a_loop_and_is_binomial_sized():
  student, _, _ = _correct_sets(n=200, s=4)
  rng = np.random.default_rng(0)
  reps = [student[:, rng.integers(0, 200, 200)].mean() for _ in range(300)]
  got = metrics.paired_bootstrap_accuracy(student, n_resamples=300)
  np.testing.assert_allclose([got["low"], got["high"]], np.quantile(reps, [0.025, 0.975]), atol=1e-12)
  assert got["mean"] == student.mean()
  one = metrics.paired_bootstrap_accuracy(student[0], n_resamples=3000)
  p = student[0].mean()
  # The percentile interval of one model is close to the normal +- 1.96 sd.
  assert one["high"] - one["low"] == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 200), rel=0.15)


def test_paired_bootstrap_large_stays_under_100mb():
  # Memory, not time: speed belongs in `make bench`, never in a pass/fail test.
  student, weak, ceiling = _correct_sets(s=5, n=4000)
  tracemalloc.start()
  try:
    out = metrics.paired_bootstrap_pgr(student, weak, ceiling, n_resamples=2000)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"
  assert out["low"] < out["mean"] < out["high"]


def test_paired_bootstrap_rejects_mismatched_examples():
  student, weak, ceiling = _correct_sets(n=50)
  with pytest.raises(ValueError, match="same N test examples"):
    metrics.paired_bootstrap_pgr(student, weak[:40], ceiling)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrics.paired_bootstrap_pgr(student * 2, weak, ceiling)


def test_paired_bootstrap_seed_averaged_ceiling_equals_its_stack():
  # A ceiling given as mean correctness over its seeds (fractions) is the same
  # model as its [S', N] stack, and matches a loop that averages the seeds.
  student, weak, _ = _correct_sets(n=120, s=2)
  rng = np.random.default_rng(9)
  ceilings = (rng.random((3, 120)) < 0.9).astype(np.int8)
  frac = ceilings.mean(0).astype(np.float32)
  stacked = metrics.paired_bootstrap_pgr(student, weak, ceilings, n_resamples=300)
  averaged = metrics.paired_bootstrap_pgr(student, weak, frac, n_resamples=300)
  for key in ("mean", "low", "high"):
    assert averaged[key] == pytest.approx(stacked[key], abs=1e-6)
  rng = np.random.default_rng(0)
  reps = []
  for _ in range(300):
    idx = rng.integers(0, 120, 120)
    s, w, c = student[:, idx].mean(), weak[idx].mean(), ceilings[:, idx].mean()
    reps.append((s - w) / (c - w))
  np.testing.assert_allclose([stacked["low"], stacked["high"]], np.quantile(reps, [0.025, 0.975]), atol=1e-12)


def test_paired_bootstrap_drops_empty_gap_replicates_with_warning():
  # Weak and ceiling differ on one example only; resamples that miss it have no gap.
  n = 20
  weak = np.zeros(n, int)
  ceiling = np.zeros(n, int)
  ceiling[0] = 1
  student = ceiling[None].copy()
  with pytest.warns(RuntimeWarning, match="undefined"):
    out = metrics.paired_bootstrap_pgr(student, weak, ceiling, n_resamples=200)
  assert (out["low"], out["high"]) == (1.0, 1.0)


# ----------------------------------------------------------------------------
# summarize_runs
# ----------------------------------------------------------------------------

WEAK = {"name": "weak", "test_accuracy": 0.70, "test_auroc": 0.75}
CEILING = {"name": "ceiling", "test_accuracy": 0.90, "test_auroc": 0.95}


def _hand_runs():
  acc = {("kl", 0.0): [0.80, 0.82, 0.78], ("kl", 0.2): [0.76, 0.74], ("xent", 0.0): [0.85]}
  runs = []
  for (loss, noise), values in acc.items():
    for seed, a in enumerate(values):
      runs.append({"loss": loss, "noise": noise, "seed": seed, "test_accuracy": a, "test_auroc": a + 0.05})
  return acc, runs


def test_summarize_runs_groups_counts_and_moments():
  acc, runs = _hand_runs()
  summary = metrics.summarize_runs(runs[::-1], WEAK, CEILING, n_resamples_seeds=2000)
  assert [(r["loss"], r["noise"], r["n_seeds"]) for r in summary] == [
      ("kl", 0.0, 3), ("xent", 0.0, 1), ("kl", 0.2, 2)
  ]
  for row in summary:
    a = np.array(acc[(row["loss"], row["noise"])])
    p = (a - 0.70) / (0.90 - 0.70)
    assert row["accuracy_mean"] == pytest.approx(a.mean(), abs=1e-12)
    assert row["accuracy_std"] == pytest.approx(np.std(a, ddof=1) if a.size > 1 else 0.0, abs=1e-12)
    assert row["pgr_mean"] == pytest.approx(p.mean(), abs=1e-12)
    assert row["pgr_std"] == pytest.approx(np.std(p, ddof=1) if p.size > 1 else 0.0, abs=1e-12)
    assert row["auroc_mean"] == pytest.approx(a.mean() + 0.05, abs=1e-12)
    low, high = row["pgr_ci95"]
    assert low <= row["pgr_mean"] <= high
    assert row["accuracy_ci95"][0] <= row["accuracy_mean"] <= row["accuracy_ci95"][1]
    assert "pgr_ci95_examples" not in row
  xent = summary[1]
  assert xent["pgr_ci95"] == [xent["pgr_mean"]] * 2
  assert metrics.summarize_runs(runs, WEAK, CEILING, n_resamples_seeds=2000) == summary


def test_summarize_runs_with_per_example_correctness():
  rng = np.random.default_rng(12)
  n = 500
  weak_c = (rng.random(n) < 0.7).astype(int)
  ceiling_c = (rng.random(n) < 0.9).astype(int)
  runs = []
  for seed in range(4):
    c = (rng.random(n) < 0.8).astype(int)
    runs.append({"loss": "js", "noise": 0.1, "seed": seed, "test_accuracy": c.mean(), "test_correct": c.tolist()})
  weak = {"test_accuracy": weak_c.mean(), "test_correct": weak_c.tolist()}
  ceiling = {"test_accuracy": ceiling_c.mean(), "test_correct": ceiling_c}
  (row,) = metrics.summarize_runs(runs, weak, ceiling, n_resamples_examples=500)
  student = np.stack([r["test_correct"] for r in runs])
  ref = metrics.paired_bootstrap_pgr(student, weak_c, ceiling_c, n_resamples=500)
  assert row["pgr_ci95_examples"] == [ref["low"], ref["high"]]
  acc_ref = metrics.paired_bootstrap_accuracy(student, n_resamples=500)
  assert row["accuracy_ci95_examples"] == [acc_ref["low"], acc_ref["high"]]
  assert row["pgr_mean"] == pytest.approx(ref["mean"], abs=1e-12)
  assert math.isnan(row["auroc_mean"])


def test_summarize_runs_rejects_duplicates_and_mismatched_records():
  _, runs = _hand_runs()
  with pytest.raises(ValueError, match="more than once"):
    metrics.summarize_runs(runs + [dict(runs[0])], WEAK, CEILING)
  with pytest.raises(ValueError, match="lacks"):
    metrics.summarize_runs([{"loss": "kl", "test_accuracy": 0.8}], WEAK, CEILING)
  c = [1, 1, 0, 0]
  bad = [{"loss": "kl", "noise": 0.0, "seed": 0, "test_accuracy": 0.75, "test_correct": c}]
  refs = ({"test_accuracy": 0.5, "test_correct": c}, {"test_accuracy": 0.5, "test_correct": c})
  with pytest.raises(ValueError, match="another run"):
    metrics.summarize_runs(bad, *refs)


@pytest.mark.parametrize("ceiling_acc", [0.70, 0.703, 0.55], ids=["equal", "within_margin", "below_weak"])
def test_summarize_runs_undefined_pgr_is_none_warns_once_and_ranks_nothing(ceiling_acc):
  _, runs = _hand_runs()
  with pytest.warns(RuntimeWarning, match="PGR is undefined") as record:
    summary = metrics.summarize_runs(runs, WEAK, dict(CEILING, test_accuracy=ceiling_acc), n_resamples_seeds=200)
  assert len([w for w in record if "PGR" in str(w.message)]) == 1
  assert f"{ceiling_acc:.4f}" in str(record[0].message) and "0.7000" in str(record[0].message)
  for row in summary:
    assert row["pgr_mean"] is None and row["pgr_std"] is None and row["pgr_ci95"] is None
    assert row["accuracy_mean"] > 0 and row["accuracy_ci95"][0] <= row["accuracy_mean"]  # Accuracy still there.
  # null in JSON, never NaN (which is not JSON).
  assert '"pgr_mean": null' in json.dumps(summary, allow_nan=False)


def test_summarize_runs_undefined_pgr_keeps_the_accuracy_interval_over_examples():
  rng = np.random.default_rng(3)
  n = 300
  weak_c = (rng.random(n) < 0.8).astype(int)
  runs = [{"loss": "js", "noise": 0.0, "seed": s, "test_accuracy": c.mean(), "test_correct": c}
          for s, c in enumerate((rng.random((3, n)) < 0.75).astype(int))]
  ref = {"test_accuracy": weak_c.mean(), "test_correct": weak_c}
  with pytest.warns(RuntimeWarning, match="PGR is undefined"):
    (row,) = metrics.summarize_runs(runs, ref, ref, n_resamples_examples=300)  # The ceiling is the weak model.
  acc = metrics.paired_bootstrap_accuracy(np.stack([r["test_correct"] for r in runs]), n_resamples=300)
  assert row["accuracy_ci95_examples"] == [acc["low"], acc["high"]]
  assert row["pgr_ci95_examples"] is None


def test_pgr_status_needs_the_ceiling_to_beat_weak_by_the_margin():
  assert metrics.DEFAULT_MIN_GAP == 0.005
  ok = metrics.pgr_status(0.70, 0.90)
  assert ok == {"defined": True, "gap": pytest.approx(0.2), "min_gap": 0.005, "reason": None}
  assert metrics.pgr_status(0.85, 0.855)["defined"]  # Exactly the margin (0.00499999... in binary) counts.
  for ceiling in (0.70, 0.704, 0.55, math.nan):
    status = metrics.pgr_status(0.70, ceiling)
    assert not status["defined"] and "PGR is undefined" in status["reason"] and "min_gap" in status["reason"]
  assert metrics.pgr_status(0.70, 0.704, min_gap=0.001)["defined"]
  assert not metrics.pgr_status(0.70, 0.75, min_gap=0.1)["defined"]
  with pytest.raises(ValueError, match="min_gap"):
    metrics.pgr_status(0.7, 0.9, min_gap=-0.1)


def test_pgr_with_min_gap_is_nan_below_the_margin():
  assert metrics.pgr(0.6, 0.7, 0.5) == pytest.approx(0.5)  # Without a margin: as computed.
  with pytest.warns(RuntimeWarning, match="does not beat"):
    out = metrics.pgr(0.8, np.array([0.7, 0.7, 0.7]), np.array([0.9, 0.702, 0.5]), min_gap=0.005)
  assert out[0] == pytest.approx(0.5) and math.isnan(out[1]) and math.isnan(out[2])


def test_summarize_runs_progress_leaves_one_line(caplog):
  _, runs = _hand_runs()
  with caplog.at_level("INFO", logger="w2sg"):
    metrics.summarize_runs(runs, WEAK, CEILING, n_resamples_seeds=100, progress=True)
  lines = [r.getMessage() for r in caplog.records if "bootstrap" in r.getMessage()]
  assert len(lines) == 1 and "bootstrap: 3 groups in" in lines[0], lines


def test_summarize_runs_accepts_a_seed_averaged_ceiling_as_the_pipeline_writes_it():
  rng = np.random.default_rng(13)
  n = 300
  ceiling_seeds = (rng.random((3, n)) < 0.9).astype(np.int8)
  ceiling = {
      "test_accuracy": float(np.mean([c.mean() for c in ceiling_seeds])),
      "test_correct": ceiling_seeds.mean(0).astype(np.float32),
  }
  weak_c = (rng.random(n) < 0.7).astype(np.int8)
  weak = {"test_accuracy": float(weak_c.mean()), "test_correct": weak_c}
  runs = [{"loss": "kl", "noise": 0.0, "seed": s, "test_accuracy": float(c.mean()), "test_correct": c}
          for s, c in enumerate((rng.random((2, n)) < 0.8).astype(np.int8))]
  (row,) = metrics.summarize_runs(runs, weak, ceiling, n_resamples_examples=300)
  ref = metrics.paired_bootstrap_pgr(np.stack([r["test_correct"] for r in runs]), weak_c, ceiling_seeds,
                                     n_resamples=300)
  np.testing.assert_allclose(row["pgr_ci95_examples"], [ref["low"], ref["high"]], atol=1e-6)
  assert row["pgr_ci95_examples"][0] < row["pgr_mean"] < row["pgr_ci95_examples"][1]


def test_summary_draws_the_example_resamples_once_and_gives_each_groups_own_intervals():
  """summarize_runs shares one draw of resampled examples over its groups; every interval is the group's alone."""
  rng = np.random.default_rng(3)
  n = 300
  weak, ceiling = (rng.random(n) < 0.6).astype(float), (rng.random(n) < 0.85).astype(float)
  runs = [{"loss": loss, "noise": noise, "seed": seed, "test_accuracy": c.mean(), "test_correct": c}
          for loss in ("xent", "kl", "tv") for noise in (0.0, 0.3) for seed in range(3)
          for c in [(rng.random(n) < 0.7).astype(float)]]
  summary = metrics.summarize_runs(runs, {"test_accuracy": weak.mean(), "test_correct": weak},
                                   {"test_accuracy": ceiling.mean(), "test_correct": ceiling}, n_resamples_examples=500)
  assert len(summary) == 6
  for row in summary:
    group = sorted((r for r in runs if r["loss"] == row["loss"] and r["noise"] == row["noise"]), key=lambda r: r["seed"])
    s_SxN = np.stack([r["test_correct"] for r in group])
    pgr_ref = metrics.paired_bootstrap_pgr(s_SxN, weak, ceiling, n_resamples=500)
    acc_ref = metrics.paired_bootstrap_accuracy(s_SxN, n_resamples=500)
    assert row["pgr_ci95_examples"] == [pgr_ref["low"], pgr_ref["high"]]
    assert row["accuracy_ci95_examples"] == [acc_ref["low"], acc_ref["high"]]
