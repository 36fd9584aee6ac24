"""Evaluation metrics: accuracy, AUROC, PGR and bootstrap confidence intervals.

Everything here runs in numpy on the host, on arrays already gathered from the
devices, except `correct` and `accuracy_jax`, which are jnp and safe inside
`jit`. The definitions:

* accuracy = mean_n [argmax_c x_nc == y_n], for logits or probabilities x.
* AUROC = P(s_pos > s_neg) + 1/2 P(s_pos == s_neg), computed from average
  ranks (the Mann-Whitney U statistic over n_pos n_neg); it equals sklearn's
  `roc_auc_score`.
* PGR (performance gap recovered, Burns et al. 2023)
  = (student - weak) / (ceiling - weak): 0 at the weak supervisor, 1 at the
  strong model trained on ground truth. It is *undefined* unless the ceiling
  beats the weak model by a margin (`DEFAULT_MIN_GAP`, half an accuracy
  point; `pgr_status`): dividing by a gap that is empty, negative or within
  noise gives numbers such as +14 or +27 that mean nothing, and would rank
  losses by chance. `summarize_runs` then leaves every PGR field None.

Two kinds of 95% interval are offered, and they answer different questions.
`bootstrap_ci` resamples seeds: how much does the result move when training is
repeated? `paired_bootstrap_pgr` resamples test examples, shared by the weak
model, the ceiling and every seed of the student: how much would it move on
another test set of the same size? With five seeds and a few thousand test
examples the second is usually the wider one, so report both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from w2sg_jax import config as schema
from w2sg_jax.progress import Progress

__all__ = [
    "accuracy",
    "accuracy_jax",
    "auroc",
    "auroc_from_scores",
    "auroc_multiclass",
    "bootstrap_ci",
    "correct",
    "DEFAULT_MIN_GAP",
    "paired_bootstrap_accuracy",
    "paired_bootstrap_pgr",
    "pgr",
    "pgr_status",
    "summarize_runs",
]

# PGR is undefined unless ceiling - weak >= this (accuracy, so 0.005 = half a point): the schema's
# `report.min_gap`, for callers that hold no config.
DEFAULT_MIN_GAP = schema.ReportConfig.min_gap

# Working-memory ceiling for one chunk of the paired bootstrap; the total
# allocation stays near this whatever the number of resamples.
_BOOTSTRAP_CHUNK_BYTES = 48 * 2**20


# ----------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------


def _check_scores_labels(scores_NxC: np.ndarray, labels_N: np.ndarray) -> None:
  if scores_NxC.ndim != 2:
    raise ValueError(
        f"expected scores of shape [N, C], got {scores_NxC.shape}; for one "
        "score per example (a reward margin), pass np.stack([-z, z], -1)."
    )
  if labels_N.shape != (scores_NxC.shape[0],):
    raise ValueError(
        f"labels shape {labels_N.shape} does not match scores shape "
        f"{scores_NxC.shape}; expected labels of shape [{scores_NxC.shape[0]}]."
    )
  if scores_NxC.shape[0] == 0:
    raise ValueError("no examples: scores and labels are empty.")


def accuracy(logits_or_probs_NxC, labels_N) -> float:
  """Fraction of examples whose argmax class is the label.

  .. math:: \\mathrm{acc} = \\frac{1}{N} \\sum_n [\\arg\\max_c x_{nc} = y_n]

  Logits and probabilities give the same answer, since softmax keeps the order.

  Args:
    logits_or_probs_NxC: scores, [N, C].
    labels_N: integer labels in [0, C), [N].

  Returns:
    The accuracy as a Python float.
  """
  x = np.asarray(logits_or_probs_NxC)
  y = np.asarray(labels_N)
  _check_scores_labels(x, y)
  return float(np.mean(np.argmax(x, axis=-1) == y))


def correct(logits_BxC: jnp.ndarray, labels_B: jnp.ndarray) -> jnp.ndarray:
  """Per-example correctness in-graph: `argmax(logits) == label`, bool [B]."""
  return jnp.argmax(logits_BxC, axis=-1) == labels_B


def accuracy_jax(
    logits_BxC: jnp.ndarray, labels_B: jnp.ndarray, where_B: jnp.ndarray | None = None
) -> jnp.ndarray:
  """In-graph accuracy, optionally over the examples where `where_B` is True.

  Padding rows of a fixed-size eval batch are excluded with `where_B`. An
  all-False mask gives 0 (not nan), so a padded final batch cannot poison a
  running sum; count the valid examples separately when averaging batches.

  Args:
    logits_BxC: logits or probabilities, [B, C].
    labels_B: integer labels, [B].
    where_B: optional bool mask, [B].

  Returns:
    A float32 scalar.
  """
  hits_B = correct(logits_BxC, labels_B).astype(jnp.float32)
  if where_B is None:
    return jnp.mean(hits_B)
  w_B = where_B.astype(jnp.float32)
  return jnp.sum(hits_B * w_B) / jnp.maximum(jnp.sum(w_B), 1.0)


# ----------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------


def _average_ranks(x_N: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given the mean of the ranks they span."""
  _, inverse_N, counts_U = np.unique(x_N, return_inverse=True, return_counts=True)
  # Tied group u spans ranks (end_u - count_u, end_u]; its mean rank is the
  # midpoint of that range.
  end_U = np.cumsum(counts_U)
  mean_rank_U = end_U - (counts_U - 1) / 2.0
  return mean_rank_U[inverse_N]


def auroc(scores_N, labels_N) -> float:
  """Binary AUROC from the Mann-Whitney U statistic, ties counted as 1/2.

  .. math::
     \\mathrm{AUROC} = \\frac{R_+ - n_+ (n_+ + 1)/2}{n_+ n_-}
     = P(s_+ > s_-) + \\tfrac12 P(s_+ = s_-)

  where R_+ is the sum of the average ranks of the positives. Equals
  `sklearn.metrics.roc_auc_score(labels, scores)`.

  Args:
    scores_N: real scores, higher meaning more likely positive, [N].
    labels_N: 0/1 (or bool) labels, [N].

  Returns:
    AUROC as a float; nan, with a warning, when only one class is present.
  """
  s = np.asarray(scores_N, dtype=np.float64)
  y = np.asarray(labels_N)
  if s.ndim != 1 or y.shape != s.shape:
    raise ValueError(
        f"auroc expects scores [N] and labels [N], got {s.shape} and {y.shape};"
        " for [N, C] scores use auroc_from_scores."
    )
  if not np.isin(y, (0, 1)).all():
    raise ValueError(
        "auroc expects binary 0/1 labels; for more classes use auroc_multiclass."
    )
  if np.isnan(s).any():
    raise ValueError("auroc got nan scores; check the model outputs for overflow.")
  pos = y.astype(bool)
  n_pos = int(pos.sum())
  n_neg = s.shape[0] - n_pos
  if n_pos == 0 or n_neg == 0:
    warnings.warn(
        f"AUROC is undefined with one class present ({n_pos} positives, "
        f"{n_neg} negatives); returning nan.",
        RuntimeWarning,
        stacklevel=2,
    )
    return math.nan
  ranks_N = _average_ranks(s)
  u = ranks_N[pos].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def auroc_multiclass(probs_NxC, labels_N) -> float:
  """One-vs-rest macro AUROC: the mean over classes c of AUROC(p_c, [y == c]).

  Equals `sklearn.metrics.roc_auc_score(y, probs, multi_class="ovr",
  average="macro")`. Pass probabilities, not logits: a logit column ranks
  examples differently from its softmax probability when C > 2.

  Args:
    probs_NxC: class probabilities, [N, C].
    labels_N: integer labels in [0, C), [N].

  Returns:
    The macro AUROC over classes that have both positives and negatives
    (absent classes are skipped with a warning); nan if there are none.
  """
  p = np.asarray(probs_NxC, dtype=np.float64)
  y = np.asarray(labels_N)
  _check_scores_labels(p, y)
  num_classes = p.shape[1]
  present = [c for c in range(num_classes) if 0 < np.sum(y == c) < y.shape[0]]
  missing = sorted(set(range(num_classes)) - set(present))
  if missing:
    warnings.warn(
        f"classes {missing} have no positives (or no negatives) in the labels "
        "and are left out of the macro AUROC.",
        RuntimeWarning,
        stacklevel=2,
    )
  if not present:
    return math.nan
  return float(np.mean([auroc(p[:, c], y == c) for c in present]))


def auroc_from_scores(logits_or_probs_NxC, labels_N, *, from_logits: bool = True) -> float:
  """AUROC of [N, C] model outputs: binary for C = 2, one-vs-rest macro above.

  For C = 2 the score is x_1 - x_0, which orders examples exactly as p_1
  does for logits (p_1 = sigmoid(x_1 - x_0)) and for probabilities
  (p_1 - p_0 = 2 p_1 - 1). For C > 2, logits go through a softmax first.

  Args:
    logits_or_probs_NxC: [N, C].
    labels_N: integer labels, [N].
    from_logits: whether the C > 2 inputs are logits (True) or probabilities.

  Returns:
    AUROC as a float.
  """
  x = np.asarray(logits_or_probs_NxC, dtype=np.float64)
  y = np.asarray(labels_N)
  _check_scores_labels(x, y)
  if x.shape[1] == 2:
    return auroc(x[:, 1] - x[:, 0], y)
  if from_logits:
    z = x - x.max(axis=-1, keepdims=True)
    x = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
  return auroc_multiclass(x, y)


# ----------------------------------------------------------------------------
# PGR
# ----------------------------------------------------------------------------


def pgr(student, weak, ceiling, *, min_gap: float | None = None):
  """Performance gap recovered: the student's share of the weak-to-ceiling gap.

  .. math:: \\mathrm{PGR} = \\frac{\\mathrm{student} - \\mathrm{weak}}
                                 {\\mathrm{ceiling} - \\mathrm{weak}}

  Inputs broadcast. Where ceiling == weak the gap is empty and PGR is
  undefined: the result is nan there, with one RuntimeWarning (never a
  ZeroDivisionError). With ``min_gap`` (e.g. `DEFAULT_MIN_GAP`), PGR is also
  nan wherever the ceiling does not beat the weak model by that much; without
  it, a ceiling below the weak model gives a negative denominator and is
  returned as computed.

  Args:
    student: student metric (usually test accuracy); scalar or array.
    weak: the weak supervisor's metric; scalar or array.
    ceiling: the strong model trained on ground truth; scalar or array.
    min_gap: the smallest ceiling - weak for which PGR is defined.

  Returns:
    A float for scalar inputs, else an array of the broadcast shape.
  """
  s, w, c = (np.asarray(v, dtype=np.float64) for v in (student, weak, ceiling))
  gap = c - w
  empty = gap == 0
  if np.any(empty):
    warnings.warn(
        "PGR is undefined where ceiling == weak (no gap to recover); returning "
        "nan there. Check that the ceiling and weak results are not swapped or "
        "copied from the same run.",
        RuntimeWarning,
        stacklevel=2,
    )
  if min_gap is not None:
    small = ~_gap_is_enough(gap, min_gap) & ~empty
    if np.any(small):
      warnings.warn(
          f"PGR is undefined where the ceiling does not beat the weak model by "
          f"{min_gap} (the gap is within noise or negative); returning nan there.",
          RuntimeWarning,
          stacklevel=2,
      )
    empty = empty | small
  with np.errstate(divide="ignore", invalid="ignore"):
    out = np.where(empty, np.nan, (s - w) / np.where(empty, 1.0, gap))
  return float(out) if out.ndim == 0 else out


def _gap_is_enough(gap, min_gap: float):
  # A hair of slack: 0.855 - 0.85 is 0.00499999... in binary.
  return (gap > 0) & (gap >= float(min_gap) - 1e-12)


def pgr_status(weak_accuracy: float, ceiling_accuracy: float, *, min_gap: float = DEFAULT_MIN_GAP) -> dict[str, Any]:
  """Whether PGR is defined for a weak model and a ceiling, and why not.

  PGR needs a gap to recover: the ceiling must beat the weak model by at
  least ``min_gap`` (accuracy; `DEFAULT_MIN_GAP` is half a point).

  Returns:
    ``{"defined": bool, "gap": ceiling - weak, "min_gap", "reason"}``, where
    ``reason`` is None when defined and else a sentence for the user (the
    report puts it at the top of summary.md, the pipeline on the terminal).
  """
  if not 0 <= float(min_gap) < 1:
    raise ValueError(f"min_gap={min_gap}; it is an accuracy margin in [0, 1), e.g. {DEFAULT_MIN_GAP}.")
  w, c = float(weak_accuracy), float(ceiling_accuracy)
  gap = c - w
  defined = bool(math.isfinite(gap) and _gap_is_enough(gap, min_gap))
  reason = None
  if not defined:
    reason = (
        f"PGR is undefined: the strong ceiling (test accuracy {c:.4f}) does not beat the weak model ({w:.4f}) by "
        f"the required {100 * float(min_gap):.2g} accuracy points (gap {100 * gap:+.2f} points), so there is no gap "
        "to recover. PGR is left empty (null in results.json, n/a in the tables) and no loss is ranked by it. "
        "Check the ceiling's training (learning rate, epochs) and the weak model; report.min_gap sets the margin."
    )
  return {"defined": defined, "gap": gap, "min_gap": float(min_gap), "reason": reason}


# ----------------------------------------------------------------------------
# Bootstrap over seeds
# ----------------------------------------------------------------------------


def _apply_stat_rows(stat: Callable[..., Any], x_RxN: np.ndarray) -> np.ndarray:
  """stat over each row; vectorised when stat takes `axis`, a loop otherwise."""
  try:
    out = np.asarray(stat(x_RxN, axis=1), dtype=np.float64)
    if out.shape == (x_RxN.shape[0],):
      return out
  except TypeError:
    pass
  return np.array([stat(row) for row in x_RxN], dtype=np.float64)


def bootstrap_ci(
    values,
    *,
    stat: Callable[..., Any] = np.mean,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
  """Percentile bootstrap interval for stat(values), e.g. over training seeds.

  Draws `n_resamples` samples of size N with replacement, applies `stat` to
  each, and returns the (1 - confidence)/2 and (1 + confidence)/2 quantiles.
  With few values (5 seeds) the percentile interval is too narrow: it can
  only span values the sample contains. Read it alongside the per-example
  interval of `paired_bootstrap_pgr`.

  Args:
    values: the observations, [N]; nan propagates to a nan interval.
    stat: statistic of a 1-D array; vectorised when it accepts `axis=`.
    n_resamples: number of bootstrap replicates.
    confidence: coverage in (0, 1).
    seed: seed of the numpy Generator; the same seed gives the same interval.

  Returns:
    (low, high) as floats; (v, v) for a single value v.
  """
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError("bootstrap_ci needs at least one value, got none.")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
  if n_resamples < 1:
    raise ValueError(f"n_resamples must be positive, got {n_resamples}.")
  if np.isnan(x).any():
    return math.nan, math.nan
  if x.size == 1:
    v = float(stat(x))
    return v, v
  rng = np.random.default_rng(seed)
  n = x.size
  # Chunk the replicates so a long input never builds a huge index matrix.
  rows = max(1, _BOOTSTRAP_CHUNK_BYTES // (16 * n))
  stats = []
  for start in range(0, n_resamples, rows):
    idx_RxN = rng.integers(0, n, size=(min(rows, n_resamples - start), n))
    stats.append(_apply_stat_rows(stat, x[idx_RxN]))
  alpha = (1.0 - confidence) / 2.0
  low, high = np.quantile(np.concatenate(stats), [alpha, 1.0 - alpha])
  return float(low), float(high)


# ----------------------------------------------------------------------------
# Paired bootstrap over test examples
# ----------------------------------------------------------------------------


def _as_correct_matrix(x, name: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim == 1:
    a = a[None, :]
  if a.ndim != 2 or a.shape[1] == 0:
    raise ValueError(f"{name} must be [N] or [S, N] with N > 0, got shape {a.shape}.")
  a = a.astype(np.float64)
  # Fractions are allowed: the per-example correctness averaged over seeds.
  if not ((a >= 0) & (a <= 1)).all():
    raise ValueError(
        f"{name} must hold per-example correctness in [0, 1] (0/1, bool, or a "
        "mean over seeds)."
    )
  return a


def _resampled_hits(
    correct_NxK: np.ndarray, n_resamples: int, seed: int, max_bytes: int
) -> np.ndarray:
  """Hits (correct examples) of each of K columns on the same resamples, [R, K].

  Each replicate draws N example indices with replacement; its hits are
  counts_N @ correct_NxK, where counts_N is how often each example was drawn.
  For 0/1 inputs they are whole numbers, exact in float64, so the callers'
  ratios are exact (a student equal to the ceiling gives a PGR of exactly 1). The counts come
  from one bincount per chunk and the product is a BLAS matmul, so 2000 x 4000
  x 7 takes well under a second.
  """
  n, _ = correct_NxK.shape
  rng = np.random.default_rng(seed)
  # Per row of a chunk: int64 indices + int64 counts + float64 counts.
  rows = max(1, max_bytes // (24 * n))
  out = []
  for start in range(0, n_resamples, rows):
    r = min(rows, n_resamples - start)
    idx_RxN = rng.integers(0, n, size=(r, n))
    # Offset row i into its own block of n bins, so one bincount counts all rows.
    idx_RxN += (np.arange(r, dtype=np.int64) * n)[:, None]
    counts_RxN = np.bincount(idx_RxN.ravel(), minlength=r * n).reshape(r, n)
    del idx_RxN
    out.append(counts_RxN.astype(np.float64) @ correct_NxK)
  return np.concatenate(out, axis=0)


def _interval(replicates_R: np.ndarray, confidence: float, what: str) -> tuple[float, float]:
  ok = ~np.isnan(replicates_R)
  if not ok.any():
    return math.nan, math.nan
  if not ok.all():
    warnings.warn(
        f"{int((~ok).sum())} of {replicates_R.size} bootstrap replicates of "
        f"{what} were undefined (weak == ceiling on the resample) and were "
        "left out of the interval.",
        RuntimeWarning,
        stacklevel=3,
    )
  alpha = (1.0 - confidence) / 2.0
  low, high = np.quantile(replicates_R[ok], [alpha, 1.0 - alpha])
  return float(low), float(high)


def paired_bootstrap_accuracy(
    student_correct_SxN,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    max_bytes: int = _BOOTSTRAP_CHUNK_BYTES,
) -> dict[str, float]:
  """Interval for the seed-mean accuracy, resampling test examples.

  Each replicate resamples the N test examples once and recomputes every
  seed's accuracy on those same examples, then averages over seeds.

  Args:
    student_correct_SxN: 0/1 correctness of S seeds on N shared test examples
      ([N] for a single model).
    n_resamples: number of bootstrap replicates.
    confidence: coverage in (0, 1).
    seed: seed of the numpy Generator.
    max_bytes: working-memory budget per chunk of replicates.

  Returns:
    {"mean": seed-mean accuracy on the full test set, "low", "high"}.
  """
  s_SxN = _as_correct_matrix(student_correct_SxN, "student_correct_SxN")
  hits_RxS = _resampled_hits(s_SxN.T, n_resamples, seed, max_bytes)
  low, high = _interval(hits_RxS.sum(axis=1) / s_SxN.size, confidence, "accuracy")
  return {"mean": float(s_SxN.mean()), "low": low, "high": high}


def _paired_bootstrap(
    student_correct_SxN, weak_correct_N, ceiling_correct_N, *, n_resamples, confidence, seed, max_bytes,
    hits_RxK: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
  """(accuracy interval, PGR interval) from one shared set of resampled indices.

  ``hits_RxK``: the resampled hits of the columns [students..., weak, ceiling]
  when the caller drew them already (`summarize_runs` draws the resamples once
  for every group); computed here otherwise.
  """
  s_SxN = _as_correct_matrix(student_correct_SxN, "student_correct_SxN")
  # Several weak or ceiling seeds count as their seed-averaged model.
  w_1xN = _as_correct_matrix(weak_correct_N, "weak_correct_N").mean(axis=0, keepdims=True)
  c_1xN = _as_correct_matrix(ceiling_correct_N, "ceiling_correct_N").mean(axis=0, keepdims=True)
  if not (s_SxN.shape[1] == w_1xN.shape[1] == c_1xN.shape[1]):
    raise ValueError(
        f"student {s_SxN.shape}, weak {w_1xN.shape[1:]} and ceiling "
        f"{c_1xN.shape[1:]} must be scored on the same N test examples, in the "
        "same order."
    )
  num_seeds = s_SxN.shape[0]
  # Columns: the S students, then weak, then ceiling.
  if hits_RxK is None:
    cols_NxK = np.concatenate([s_SxN, w_1xN, c_1xN], axis=0).T
    hits_RxK = _resampled_hits(cols_NxK, n_resamples, seed, max_bytes)
  # In hit counts: PGR* = (sum_s h_s - S h_w) / (S (h_c - h_w)), exact up to
  # the final division when every input is 0/1.
  student_R = hits_RxK[:, :num_seeds].sum(axis=1)
  weak_R, ceiling_R = hits_RxK[:, num_seeds], hits_RxK[:, num_seeds + 1]
  gap_R = num_seeds * (ceiling_R - weak_R)
  empty_R = gap_R == 0
  with np.errstate(divide="ignore", invalid="ignore"):
    pgr_R = np.where(
        empty_R, np.nan, (student_R - num_seeds * weak_R) / np.where(empty_R, 1.0, gap_R)
    )
  acc_low, acc_high = _interval(student_R / s_SxN.size, confidence, "accuracy")
  pgr_low, pgr_high = _interval(pgr_R, confidence, "PGR")
  with warnings.catch_warnings():
    # An empty gap on the full test set shows as a nan point estimate.
    warnings.simplefilter("ignore", RuntimeWarning)
    point = pgr(s_SxN.sum(), num_seeds * w_1xN.sum(), num_seeds * c_1xN.sum())
  return (
      {"mean": float(s_SxN.mean()), "low": acc_low, "high": acc_high},
      {"mean": float(point), "low": pgr_low, "high": pgr_high},
  )


def paired_bootstrap_pgr(
    student_correct_SxN,
    weak_correct_N,
    ceiling_correct_N,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    max_bytes: int = _BOOTSTRAP_CHUNK_BYTES,
) -> dict[str, float]:
  """Interval for the PGR of the seed-mean student, resampling test examples.

  Each replicate draws one set of N example indices and recomputes, on those
  same examples, the weak accuracy w*, the ceiling accuracy c* and each seed's
  student accuracy s*_s; the replicate is

  .. math:: \\mathrm{PGR}^* = \\frac{\\bar s^* - w^*}{c^* - w^*},\\quad
            \\bar s^* = \\frac1S \\sum_s s^*_s

  Pairing keeps the correlation between the three models (they err on the
  same hard examples), which an unpaired interval would ignore. Because PGR
  is affine in the student's accuracy, the point estimate (PGR of the
  seed-mean accuracy) equals the mean of the per-seed PGRs.

  Memory stays near `max_bytes` (chunks of replicates), so 2000 replicates x
  5 seeds x 4000 examples needs about 50 MB and under 0.1 s. The indices depend
  only on `seed`, N and `n_resamples` (not on the chunking), so this and
  `paired_bootstrap_accuracy` with the same seed resample the same examples.

  Args:
    student_correct_SxN: 0/1 correctness of S student seeds, [S, N] (or [N]).
    weak_correct_N: correctness of the weak model on the same examples, [N]:
      0/1, or in [0, 1] for a mean over weak seeds ([S', N] is averaged).
    ceiling_correct_N: correctness of the ceiling, [N] (or [S', N]), likewise;
      a ceiling trained with several seeds is their mean per example.
    n_resamples: number of bootstrap replicates.
    confidence: coverage in (0, 1).
    seed: seed of the numpy Generator; the same seed gives the same interval.
    max_bytes: working-memory budget per chunk of replicates.

  Returns:
    {"mean": PGR on the full test set, "low", "high"}. Replicates with
    weak == ceiling are dropped with a warning; all nan if every one is.
  """
  _, out = _paired_bootstrap(
      student_correct_SxN, weak_correct_N, ceiling_correct_N, n_resamples=n_resamples,
      confidence=confidence, seed=seed, max_bytes=max_bytes,
  )
  return out


# ----------------------------------------------------------------------------
# Summaries over runs
# ----------------------------------------------------------------------------


def _std(x: np.ndarray) -> float:
  return float(np.std(x, ddof=1)) if x.size > 1 else 0.0


def _nanmean_or_nan(x: Sequence[float]) -> float:
  a = np.asarray(x, dtype=np.float64)
  a = a[~np.isnan(a)]
  return float(a.mean()) if a.size else math.nan


def _check_correct_matches(correct_SxN, accuracy_S, what: str) -> None:
  """A per-example record must reproduce its accuracy, or it belongs to another run."""
  mean_S = np.asarray(correct_SxN, dtype=np.float64).reshape(len(accuracy_S), -1).mean(axis=1)
  # Float32 accuracies on device differ from the exact mean by far less than 1/N.
  tol = min(1e-4, 0.5 / np.asarray(correct_SxN).shape[-1])
  bad = np.abs(mean_S - np.asarray(accuracy_S, dtype=np.float64)) > tol
  if bad.any():
    raise ValueError(
        f"{what}: the mean of test_correct ({mean_S[bad].tolist()}) differs from "
        f"test_accuracy ({np.asarray(accuracy_S)[bad].tolist()}); the per-example "
        "record belongs to another run or test set. Re-evaluate that run."
    )


def _shared_example_hits(ordered, weak, ceiling, have_ref_correct: bool, n_resamples: int,
                         seed: int) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Per (loss, noise): the resampled hits of its students, the weak model and the ceiling.

  Every group resamples the same test examples (the indices depend only on
  the seed, N and the replicate count), so they are drawn once for all groups
  together: one matmul of the counts with every group's columns, instead of
  drawing the same 2000 x N indices again for each of (say) 33 groups. Hits
  of 0/1 columns are whole numbers, exact in float64, so every interval is
  the one a group would get alone.
  """
  if not have_ref_correct:
    return {}
  blocks, spans, start = [], {}, 0
  for loss, noise, group in ordered:
    if not all("test_correct" in r for r in group) or len({len(r["test_correct"]) for r in group}) != 1:
      continue  # summarize_runs skips (or reports) such a group itself.
    s_SxN = np.stack([np.asarray(r["test_correct"], np.float64) for r in group])
    if blocks and s_SxN.shape[1] != blocks[0].shape[1]:
      return {}  # Groups scored on different test sets: each is checked, and fails, on its own.
    blocks.append(s_SxN)
    spans[(loss, noise)] = (start, start + s_SxN.shape[0])
    start += s_SxN.shape[0]
  if not blocks:
    return {}
  w_1xN = _as_correct_matrix(weak["test_correct"], "weak_correct_N").mean(axis=0, keepdims=True)
  c_1xN = _as_correct_matrix(ceiling["test_correct"], "ceiling_correct_N").mean(axis=0, keepdims=True)
  if not blocks[0].shape[1] == w_1xN.shape[1] == c_1xN.shape[1]:
    return {}  # _paired_bootstrap names the mismatch.
  hits_RxK = _resampled_hits(np.concatenate([*blocks, w_1xN, c_1xN], axis=0).T, n_resamples, seed,
                             _BOOTSTRAP_CHUNK_BYTES)
  return {key: (hits_RxK[:, a:b], hits_RxK[:, start], hits_RxK[:, start + 1]) for key, (a, b) in spans.items()}


def summarize_runs(
    runs: Sequence[Mapping[str, Any]],
    weak: Mapping[str, Any],
    ceiling: Mapping[str, Any],
    *,
    n_resamples_seeds: int = 10000,
    n_resamples_examples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    min_gap: float = DEFAULT_MIN_GAP,
    progress: bool = False,
) -> list[dict[str, Any]]:
  """Group student runs by (loss, noise) and summarise accuracy and PGR.

  Each run needs `loss`, `noise` and `test_accuracy`; `seed`, `test_auroc`
  and `test_correct` (0/1 per test example, the same examples for every model)
  are optional. PGR per run is recomputed from its accuracy and the weak and
  ceiling `test_accuracy`, so every number in the table shares one reference.

  Args:
    runs: one mapping per student run.
    weak: the weak model's results, with `test_accuracy` (and optionally
      `test_correct`).
    ceiling: the strong ceiling's results, same keys; its `test_correct` may
      be the per-example mean over its seeds (values in [0, 1]), with
      `test_accuracy` the mean of the seeds' accuracies.
    n_resamples_seeds: replicates of the bootstrap over seeds.
    n_resamples_examples: replicates of the paired bootstrap over examples.
    confidence: coverage of every interval.
    seed: bootstrap seed; the same seed gives the same summary.
    min_gap: PGR is undefined unless the ceiling beats the weak model by this
      much (`pgr_status`); then every PGR field is None, with one warning.
    progress: show a progress bar over the groups (the bootstrap).

  Returns:
    One dict per (loss, noise), sorted by noise then loss, with `loss`,
    `noise`, `n_seeds`, `accuracy_mean`, `accuracy_std` (ddof=1; 0 for one
    seed), `accuracy_ci95`, `auroc_mean`, `pgr_mean`, `pgr_std`, `pgr_ci95`
    ([low, high] over seeds) and, when every run of the group, the weak model
    and the ceiling carry `test_correct`, `accuracy_ci95_examples` and
    `pgr_ci95_examples` (paired bootstrap over test examples). Values are
    plain Python floats and lists, ready for JSON; the PGR fields are None
    when PGR is undefined.
  """
  for name, ref in (("weak", weak), ("ceiling", ceiling)):
    if "test_accuracy" not in ref:
      raise ValueError(f"the {name} results need a 'test_accuracy' entry.")
  weak_acc, ceiling_acc = float(weak["test_accuracy"]), float(ceiling["test_accuracy"])
  have_ref_correct = "test_correct" in weak and "test_correct" in ceiling
  if have_ref_correct:
    _check_correct_matches([weak["test_correct"]], [weak_acc], "weak")
    _check_correct_matches([ceiling["test_correct"]], [ceiling_acc], "ceiling")

  groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
  for i, run in enumerate(runs):
    missing = [k for k in ("loss", "noise", "test_accuracy") if k not in run]
    if missing:
      raise ValueError(f"run {i} lacks {missing}; every run needs loss, noise and test_accuracy.")
    groups.setdefault((str(run["loss"]), float(run["noise"])), []).append(run)

  status = pgr_status(weak_acc, ceiling_acc, min_gap=min_gap)
  ordered = []
  for (loss, noise), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    seeds = [r["seed"] for r in group if "seed" in r]
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
      raise ValueError(
          f"loss={loss!r} noise={noise} has seeds {dupes} more than once; remove "
          "the duplicate runs so no seed is counted twice."
      )
    if len(seeds) == len(group):
      group = sorted(group, key=lambda r: r["seed"])
    ordered.append((loss, noise, group))
  shared_hits = _shared_example_hits(ordered, weak, ceiling, have_ref_correct, n_resamples_examples, seed)
  summary = []
  with Progress(len(groups), "bootstrap", unit="group", enabled=progress) as bar:
    for loss, noise, group in ordered:
      acc_S = np.array([float(r["test_accuracy"]) for r in group])
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one warning below, not one per run
        pgr_S = np.asarray(pgr(acc_S, weak_acc, ceiling_acc), dtype=np.float64)
      boot = dict(n_resamples=n_resamples_seeds, confidence=confidence, seed=seed)
      row: dict[str, Any] = {
          "loss": loss,
          "noise": noise,
          "n_seeds": len(group),
          "accuracy_mean": float(acc_S.mean()),
          "accuracy_std": _std(acc_S),
          "accuracy_ci95": list(bootstrap_ci(acc_S, **boot)),
          "auroc_mean": _nanmean_or_nan([float(r.get("test_auroc", math.nan)) for r in group]),
          "pgr_mean": float(pgr_S.mean()) if status["defined"] else None,
          "pgr_std": _std(pgr_S) if status["defined"] else None,
          "pgr_ci95": list(bootstrap_ci(pgr_S, **boot)) if status["defined"] else None,
      }
      if have_ref_correct and all("test_correct" in r for r in group):
        lengths = {len(r["test_correct"]) for r in group}
        if len(lengths) != 1:
          raise ValueError(
              f"loss={loss!r} noise={noise}: runs have test_correct of different "
              "lengths; every model must be scored on the same test examples."
          )
        student_SxN = np.stack([np.asarray(r["test_correct"]) for r in group])
        _check_correct_matches(student_SxN, acc_S, f"loss={loss!r} noise={noise}")
        shared = shared_hits.get((loss, noise))
        if status["defined"]:
          acc_ex, pgr_ex = _paired_bootstrap(
              student_SxN, weak["test_correct"], ceiling["test_correct"],
              n_resamples=n_resamples_examples, confidence=confidence, seed=seed,
              max_bytes=_BOOTSTRAP_CHUNK_BYTES,
              hits_RxK=None if shared is None else np.concatenate(
                  [shared[0], shared[1][:, None], shared[2][:, None]], axis=1),
          )
          row["pgr_ci95_examples"] = [pgr_ex["low"], pgr_ex["high"]]
        elif shared is not None:  # The same resamples, without the undefined PGR (= paired_bootstrap_accuracy).
          low, high = _interval(shared[0].sum(axis=1) / student_SxN.size, confidence, "accuracy")
          acc_ex = {"mean": float(student_SxN.mean()), "low": low, "high": high}
          row["pgr_ci95_examples"] = None
        else:
          acc_ex = paired_bootstrap_accuracy(student_SxN, n_resamples=n_resamples_examples,
                                             confidence=confidence, seed=seed)
          row["pgr_ci95_examples"] = None
        row["accuracy_ci95_examples"] = [acc_ex["low"], acc_ex["high"]]
      summary.append(row)
      bar.update(1)
  if not status["defined"] and summary:
    warnings.warn(status["reason"], RuntimeWarning, stacklevel=2)
  return summary
