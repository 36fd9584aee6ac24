r"""Disagreement filters: per-example weights from K weak models or an ensemble.

Convention: numpy in, numpy out (host-side, float64 inside). Every filter
returns a float32 weight vector ``[N]`` with entries in [0, 1]; a hard mask
is a weight that is exactly 0 or 1. The student's loss multiplies its
per-example values by the weights (``where=`` for a hard mask), so a filter
composes with every loss and noise setting.

Scores (higher = more trusted):

* :func:`vote_agreement`: the fraction of the K members whose argmax equals
  the ensemble's argmax,

  .. math::
    a_i = \frac1K \sum_k \mathbb 1\big[\arg\max_c p_{k,i}(c) =
    \arg\max_c \bar p_i(c)\big], \qquad \bar p = \text{the ensemble.}

* :func:`normalized_entropy`: the ensemble's predictive entropy over its
  maximum, :math:`h_i = H(\bar p_i) / \log C \in [0, 1]` (natural logs, 0 log
  0 = 0); *lower* is more trusted.
* :func:`confidence`: :math:`\max_c \bar p_i(c)`.

Filters:

* :func:`agreement_weights`: hard mask :math:`\mathbb 1[a_i \ge
  \text{threshold}]`. ``threshold=1`` keeps only rows on which every member
  agrees (unanimity): RAVEN's disagreement mask, as we recall
  mlbio-epfl/raven ``vision/ensemble.py``; lower thresholds are the
  majority-vote version used to drop examples the teachers dispute in
  co-supervised learning (Liu & Alahi 2024).
* :func:`entropy_weights`: ``mode="hard"``: :math:`\mathbb 1[h_i \le
  \text{threshold}]`; ``mode="soft"``: :math:`1 - h_i` (uniform rows weigh
  0, one-hot rows 1).
* :func:`top_fraction_weights`: keep exactly ``round(keep_fraction * N)``
  rows (at least one) with the highest score, e.g. ``vote_agreement`` with
  ``confidence`` as the tie-break; ties beyond that go to the lower index.

Argmax ties (two classes with the same top probability) go to the lower class
index, as ``np.argmax``.

References:
  Liu & Alahi, *Co-supervised learning: improving weak-to-strong
  generalization with hierarchical mixture of experts*, arXiv 2402.15505
  (2024).
  mlbio-epfl/raven, ``vision/ensemble.py`` (RAVEN: weak-to-strong with an
  ensemble of weak models and a disagreement mask).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from w2sg_jax.methods import _common
from w2sg_jax.methods import ensemble as ensemble_lib

__all__ = [
    "agreement_weights",
    "confidence",
    "entropy_weights",
    "normalized_entropy",
    "top_fraction_weights",
    "vote_agreement",
]


def vote_agreement(members_KxNxC: Any,
                   ensemble_NxC: Any = None) -> np.ndarray:
  """Fraction of members whose argmax is the ensemble's argmax, ``[N]``.

  Args:
    members_KxNxC: ``[K, N, C]`` members' class probabilities.
    ensemble_NxC: optional ``[N, C]`` ensemble probabilities (e.g. a product
      of experts); ``None`` means the members' mean.

  Returns:
    float32 ``[N]`` in {0, 1/K, ..., 1}.
  """
  return _vote_agreement64(members_KxNxC, ensemble_NxC).astype(np.float32)


def _vote_agreement64(members_KxNxC, ensemble_NxC) -> np.ndarray:
  members = _common.check_probs(members_KxNxC, "members_KxNxC", ndim=3)
  if ensemble_NxC is None:
    ens = ensemble_lib.combine(members, combiner="mean")
  else:
    ens = _common.check_probs(ensemble_NxC, "ensemble_NxC", ndim=2)
    if ens.shape != members.shape[1:]:
      raise ValueError(
          f"ensemble_NxC has shape {ens.shape} but the members are "
          f"{members.shape} [K, N, C]; it must be [N, C] = "
          f"{members.shape[1:]}.")
  votes_KxN = members.argmax(axis=-1)
  return (votes_KxN == ens.argmax(axis=-1)[None, :]).mean(axis=0)


def normalized_entropy(probs_NxC: Any) -> np.ndarray:
  r"""Entropy over its maximum, :math:`H(p_i) / \log C`, float32 ``[N]``.

  0 for a one-hot row, 1 for the uniform row; clipped to [0, 1] against
  rounding.
  """
  p = _common.check_probs(probs_NxC, "probs_NxC", ndim=2).astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  h = -plogp.sum(axis=-1) / np.log(p.shape[-1])
  return np.clip(h, 0.0, 1.0).astype(np.float32)


def confidence(probs_NxC: Any) -> np.ndarray:
  """The top class probability, float32 ``[N]``."""
  p = _common.check_probs(probs_NxC, "probs_NxC", ndim=2)
  return p.max(axis=-1).astype(np.float32)


def agreement_weights(members_KxNxC: Any, *, threshold: float,
                      ensemble_NxC: Any = None) -> np.ndarray:
  r"""Hard mask :math:`\mathbb 1[a_i \ge \text{threshold}]` from vote agreement.

  Args:
    members_KxNxC: ``[K, N, C]`` members' class probabilities.
    threshold: in [0, 1]; a row is kept when at least this fraction of the
      members votes for the ensemble's class. 1 is unanimity (RAVEN's mask);
      0 keeps everything; 0.5 keeps rows with a weak majority.
    ensemble_NxC: optional ``[N, C]`` ensemble (default: the members' mean).

  Returns:
    float32 ``[N]`` of 0s and 1s.
  """
  threshold = _common.check_fraction(threshold, "threshold", allow_zero=True,
                                     allow_one=True)
  agree = _vote_agreement64(members_KxNxC, ensemble_NxC)
  # Agreement is a float64 multiple of 1/K. The slack (far below 1/K) lets
  # a threshold that went through float32 (2/3 -> 0.66666669) still meet its
  # vote count.
  return (agree >= threshold - 1e-6).astype(np.float32)


def entropy_weights(probs_NxC: Any, *, mode: str = "soft",
                    threshold: float | None = None) -> np.ndarray:
  r"""Weights from the ensemble's normalised predictive entropy h = H / log C.

  Args:
    probs_NxC: ``[N, C]`` (ensemble) class probabilities.
    mode: ``"soft"``: weight :math:`1 - h_i`; ``"hard"``: weight
      :math:`\mathbb 1[h_i \le \text{threshold}]`.
    threshold: for ``"hard"`` only, in [0, 1] (on the normalised entropy).

  Returns:
    float32 ``[N]`` in [0, 1].
  """
  if mode not in ("soft", "hard"):
    raise ValueError(f"mode must be 'soft' or 'hard'; got {mode!r}.")
  if mode == "soft" and threshold is not None:
    raise ValueError("threshold applies to mode='hard' only; the soft weight "
                     "is 1 - H / log C.")
  h = normalized_entropy(probs_NxC).astype(np.float64)
  if mode == "soft":
    return (1.0 - h).astype(np.float32)
  if threshold is None:
    raise ValueError("mode='hard' needs a threshold in [0, 1] on H / log C.")
  threshold = _common.check_fraction(threshold, "threshold", allow_zero=True,
                                     allow_one=True)
  return (h <= threshold).astype(np.float32)


def top_fraction_weights(scores_N: Any, *, keep_fraction: float,
                         tiebreak_N: Any = None) -> np.ndarray:
  """Hard mask keeping the ``keep_fraction`` of rows with the highest score.

  Keeps exactly ``max(1, round(keep_fraction * N))`` rows (Python's
  ``round``, as the label noise counts rows): ranked by
  ``scores_N`` (higher first), then ``tiebreak_N`` (higher first), then the
  lower index. To keep the least uncertain rows pass ``-normalized_entropy``.

  Args:
    scores_N: ``[N]`` finite scores, higher = more trusted (e.g.
      :func:`vote_agreement`, :func:`confidence`).
    keep_fraction: in (0, 1].
    tiebreak_N: optional ``[N]`` finite secondary score.

  Returns:
    float32 ``[N]`` of 0s and 1s.
  """
  keep_fraction = _common.check_fraction(keep_fraction, "keep_fraction",
                                         allow_zero=False, allow_one=True)
  scores = np.asarray(scores_N)
  if scores.ndim != 1 or scores.shape[0] == 0:
    raise ValueError(
        f"scores_N must have shape [N], N >= 1; got {scores.shape}.")
  n = scores.shape[0]
  scores = _common.check_vector(scores, "scores_N", n)
  tiebreak = (None if tiebreak_N is None
              else _common.check_vector(tiebreak_N, "tiebreak_N", n))
  num_keep = max(1, int(round(keep_fraction * n)))
  return _common.keep_top(scores, num_keep, tiebreak)
