r"""Ensembles of weak supervisors: combining K weak models' labels, bagging.

Convention: numpy in, numpy out, computed in float64 on the host. The inputs
are K weak-label stores' probabilities stacked as ``members_KxNxC`` (the same
N example ids, in the same order); the output is one ``[N, C]`` array in the
members' float dtype (at least float32), ready to be written as a derived
store.

Combiners (``combiner=``), with per-member weights :math:`w_k \ge 0`:

* ``"mean"``: the weighted arithmetic mean (a mixture; the bagging rule of
  Breiman 1996 and of EnsemW2S-style weak ensembles). The weights are
  normalised, so only their ratios matter:

  .. math::
    p(c) = \sum_k \frac{w_k}{\sum_j w_j} \, p_k(c).

* ``"product"``: the normalised (weighted) product of experts (Hinton 2002),
  a log-linear pool computed in log space. The weights are exponents, used
  as given:

  .. math::
    p(c) = \operatorname{softmax}_c\Big(\sum_k w_k \log \tilde p_k(c)\Big)
    \;\propto\; \prod_k \tilde p_k(c)^{w_k},

  where :math:`\tilde p_k = \max(p_k, \epsilon) / \sum_c \max(p_k(c),
  \epsilon)` is member k clipped at ``eps`` and renormalised: the losses'
  epsilon convention (``w2sg_jax.losses._common``). Without the clip, an
  exact 0 in one member would veto that class for good, and two confident
  members that disagree would give 0 / 0. With it, a 0 counts as ``eps``
  (default 1e-7): two one-hot members that disagree combine to a tie between
  their two classes. Members whose entries are all >= ``eps`` are not
  changed by the clip. The default weights (all 1) give the plain product
  :math:`p \propto \prod_k p_k`; weights summing to 1 give the geometric-mean
  pool; scaling all weights by s > 1 sharpens the result, s < 1 softens it.
  A member with weight 0 takes no part.

Weights. ``weights=None`` means all ones. Learned weights (RAVEN learns one
weight per weak model; Liu & Alahi 2024's co-supervision picks teachers)
come in through ``weights``; learning them is not done here.

K = 1. The single member is returned unchanged (a copy, bit for bit) by
``"mean"`` with any weight and by ``"product"`` with weight 1 (the default):
that is the ``single`` method. (``"product"`` with K = 1 and weight w != 1
returns the tempered, clipped member :math:`\propto \tilde p_1^{w}`.)

References:
  Hinton, *Training products of experts by minimizing contrastive
  divergence*, Neural Computation 2002.
  Breiman, *Bagging predictors*, Machine Learning 1996.
  Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from w2sg_jax.methods import _common

__all__ = ["COMBINERS", "DEFAULT_EPS", "bootstrap_indices", "combine"]

COMBINERS = ("mean", "product")
DEFAULT_EPS = 1e-7


def _member_weights(weights: Any, k: int) -> np.ndarray:
  """Weights ``[K]`` as float64 (default all ones), checked."""
  if weights is None:
    return np.ones(k)
  w = np.asarray(weights, dtype=np.float64)
  if w.shape != (k,):
    raise ValueError(
        f"weights must have shape [K] = [{k}] (one per member); got shape "
        f"{w.shape}.")
  if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
    raise ValueError(
        f"weights must be finite and >= 0 with a positive sum; got {w}.")
  return w


def combine(members_KxNxC: Any, *, combiner: str = "mean",
            weights: Any = None, eps: float = DEFAULT_EPS) -> np.ndarray:
  r"""Combines K members' class probabilities into one distribution per row.

  Args:
    members_KxNxC: ``[K, N, C]`` class probabilities of K weak models on the
      same N examples (each row a distribution, C >= 2).
    combiner: ``"mean"`` (weighted arithmetic mean) or ``"product"``
      (normalised product of experts in log space); see the module docstring.
    weights: optional ``[K]`` non-negative member weights, not all 0;
      ``None`` means all ones. ``"mean"`` normalises them; ``"product"``
      uses them as exponents.
    eps: the probability floor of ``"product"``, in (0, 1e-2]; ignored by
      ``"mean"``.

  Returns:
    ``[N, C]`` probabilities, rows summing to 1, in the members' float dtype
    (at least float32). For K = 1 an exact copy of the member (``"mean"``,
    or ``"product"`` with weight 1).

  Raises:
    ValueError: an unknown combiner, members that are not ``[K, N, C]``
      distributions, bad weights or ``eps``.
  """
  if combiner not in COMBINERS:
    raise ValueError(
        f"Unknown combiner {combiner!r}; known: {', '.join(COMBINERS)}.")
  if (isinstance(eps, bool) or not isinstance(eps, (int, float))
      or not 0 < eps <= 1e-2):
    raise ValueError(f"eps must be a float in (0, 1e-2]; got {eps!r}.")
  members = _common.check_probs(members_KxNxC, "members_KxNxC", ndim=3)
  k = members.shape[0]
  w = _member_weights(weights, k)
  dtype = _common.out_dtype(members.dtype)
  if k == 1 and (combiner == "mean" or w[0] == 1.0):
    return np.array(members[0], dtype=dtype, copy=True)
  p = members.astype(np.float64)
  if combiner == "mean":
    out = np.einsum("k,knc->nc", w / w.sum(), p)
  else:
    with np.errstate(divide="ignore"):
      logp = np.maximum(np.log(p), math.log(eps))
    # Renormalising each clipped member would add a per-row constant to z,
    # which the softmax cancels: it is left out. logp is finite after the
    # clip, so a zero-weight member adds exactly 0.
    z = np.einsum("k,knc->nc", w, logp)
    out = np.exp(z - _logsumexp(z))
  return _common.normalize_rows(out).astype(dtype)


def _logsumexp(x: np.ndarray) -> np.ndarray:
  """log sum exp over the last axis, keepdims (x finite)."""
  m = x.max(axis=-1, keepdims=True)
  return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def bootstrap_indices(seed: int, n: int, *, k: int) -> np.ndarray:
  r"""Bootstrap resamples of ``n`` rows for ``k`` bagged members.

  Member i draws n indices uniformly with replacement from ``range(n)`` with
  its own generator, ``np.random.default_rng([seed, i])``: its resample
  depends on (seed, i) only, not on k, so growing an ensemble from k = 3 to
  k = 5 keeps the first three members' resamples (and their cached weak
  models). Each row is sorted (a bootstrap sample is a multiset; sorted reads
  are sequential in the store). About a fraction 1 - 1/e ~ 0.632 of the
  distinct rows appear in each resample (Efron & Tibshirani 1993).

  Args:
    seed: a non-negative integer.
    n: the number of rows of ``weak_train`` to resample, >= 1.
    k: the number of members, >= 1.

  Returns:
    int64 ``[k, n]``, row i the sorted indices member i trains on.

  Raises:
    ValueError: a negative or non-integer seed, n < 1 or k < 1.
  """
  for name, value, low in (("seed", seed, 0), ("n", n, 1), ("k", k, 1)):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < low):
      raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
  out = np.empty((k, n), np.int64)
  for i in range(k):
    rng = np.random.default_rng([int(seed), i])
    out[i] = np.sort(rng.integers(0, n, size=n))
  return out
