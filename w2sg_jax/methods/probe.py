r"""Probes on the strong model's features, fit on weak labels: relabel, filter.

The road of EleutherAI/w2s ``w2s/probe.py``: fit a cheap probe on the strong
model's features of ``w2s_train`` with the weak labels as targets, then trust
the probe where it and the weak label disagree (``relabel``) or drop the rows
where they disagree most (``filter_by_disagreement``). As we recall that
file, it has a kNN probe (the mean of the k nearest training rows' weak
labels by cosine similarity) and a logistic-regression probe, and its
``probe_relabel`` / ``probe_filter`` options relabel with the probe's
predictions or drop a fixed fraction (its "contamination") of the rows whose
weak label is farthest from the probe's. The defaults below are ours, not
read from that file.

Convention: array-like in, numpy out. The probes compute in JAX in float32
(``jit``-compiled, chunked); ``relabel`` and ``filter_by_disagreement`` are
numpy. Outputs are float32 (probabilities) so they can be written as stores.

Probes (features :math:`x_i \in \mathbb R^D`, weak labels :math:`q_i`):

* :func:`knn_probe`: with :math:`\hat x = x / \|x\|`, :math:`s_{ij} = \hat x_i
  \cdot \hat x_j` (cosine similarity) and :math:`\mathcal N_k(i)` the k rows
  j with the largest :math:`s_{ij}` (excluding i itself when
  ``exclude_self``),

  .. math::
    \hat p_i = \frac1k \sum_{j \in \mathcal N_k(i)} q_j .

* :func:`logistic_probe`: multinomial logistic regression with soft targets
  and an L2 penalty on the weights (not the bias),

  .. math::
    \min_{W, b} \; \frac1N \sum_i \Big(-\sum_c q_i(c) \log
    \operatorname{softmax}(W^\top x_i + b)_c\Big) + \frac{\lambda}{2}
    \|W\|_F^2,

  solved by L-BFGS (``optax.lbfgs``, zoom line search) from zero, so the fit
  is deterministic. sklearn's ``LogisticRegression(C=...)`` minimises
  :math:`C \sum_i \ell_i + \frac12 \|W\|^2`, the same problem at
  :math:`\lambda = 1 / (C N)`.

Using them::

  probe_NxC = knn_probe(features_NxD, weak_NxC, k=10)
  relabelled_NxC = relabel(weak_NxC, probe_NxC, mode="hard")
  weights_N = filter_by_disagreement(weak_NxC, probe_NxC, drop_fraction=0.1)

References:
  Burns et al., *Weak-to-strong generalization*, arXiv 2312.09390 (2023).
  EleutherAI/w2s, ``w2s/probe.py`` (kNN and logistic probes; probe relabel
  and filter).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from w2sg_jax.methods import _common

__all__ = [
    "disagreement",
    "filter_by_disagreement",
    "knn_probe",
    "logistic_probe",
    "relabel",
]


def _check_features(features: Any, n: int) -> np.ndarray:
  x = np.asarray(features)
  if x.ndim != 2 or x.shape[0] != n or x.shape[1] < 1:
    raise ValueError(
        f"features must have shape [N, D] = [{n}, D] (one row per weak label), "
        f"D >= 1; got shape {x.shape}.")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"features must be floating point; got {x.dtype}.")
  if not np.isfinite(x).all():
    raise ValueError("features must be finite; found NaN or inf (did the "
                     "strong model's feature pass overflow?).")
  return x


def _positive_int(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 1):
    raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
  return int(value)


# ---------------------------------------------------------------------------
# kNN probe
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("k", "exclude_self"))
def _knn_chunk(queries_BxD, keys_NxD, labels_NxC, offset, *, k: int,
               exclude_self: bool):
  """Mean label of each query's k most cosine-similar keys, ``[B, C]``."""
  sim_BxN = jnp.dot(queries_BxD, keys_NxD.T,
                    precision=jax.lax.Precision.HIGHEST)
  if exclude_self:
    rows = offset + jnp.arange(queries_BxD.shape[0])[:, None]
    cols = jnp.arange(keys_NxD.shape[0])[None, :]
    sim_BxN = jnp.where(rows == cols, -jnp.inf, sim_BxN)
  _, idx_BxK = jax.lax.top_k(sim_BxN, k)
  return labels_NxC[idx_BxK].mean(axis=1)


def knn_probe(features_NxD: Any, weak_probs_NxC: Any, k: int, *,
              exclude_self: bool = True, chunk_size: int = 1024) -> np.ndarray:
  r"""kNN probe: mean weak label of each row's k nearest rows by cosine.

  .. math::
    \hat p_i = \frac1k \sum_{j \in \mathcal N_k(i)} q_j,

  with :math:`\mathcal N_k(i)` the k rows of largest cosine similarity to
  row i. Rows with zero features have similarity 0 to every row. Ties in
  similarity go to the lower row index (``jax.lax.top_k``). An exact
  duplicate of row i is a different row: ``exclude_self`` drops only i.

  Cost: N^2 D multiply-adds, in chunks of ``chunk_size`` query rows (a
  ``[chunk_size, N]`` float32 similarity block: 40 MB at N = 10k).

  Args:
    features_NxD: ``[N, D]`` strong-model features of the weakly labelled
      rows.
    weak_probs_NxC: ``[N, C]`` weak label probabilities of the same rows.
    k: neighbours, 1 <= k <= N - 1 (N with ``exclude_self=False``).
    exclude_self: leave row i out of its own neighbours (the probe then
      predicts each row from the others' labels, as a held-out estimate).
    chunk_size: query rows per compiled block.

  Returns:
    float32 ``[N, C]`` probe probabilities.

  Raises:
    ValueError: bad shapes or probabilities, k out of range.
  """
  weak = _common.check_probs(weak_probs_NxC, "weak_probs_NxC", ndim=2)
  n = weak.shape[0]
  x = _check_features(features_NxD, n).astype(np.float32)
  k = _positive_int(k, "k")
  chunk_size = _positive_int(chunk_size, "chunk_size")
  candidates = n - 1 if exclude_self else n
  if k > candidates:
    raise ValueError(
        f"k = {k} neighbours but only {candidates} candidate rows (N = {n}"
        f"{', minus the row itself' if exclude_self else ''}); use "
        f"k <= {candidates}.")
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  x = x / np.where(norms > 0, norms, 1.0)
  keys = jnp.asarray(x)
  labels = jnp.asarray(weak, dtype=jnp.float32)
  b = min(chunk_size, n)
  out = np.empty((n, weak.shape[1]), np.float32)
  for start in range(0, n, b):
    stop = min(start + b, n)
    queries = np.zeros((b, x.shape[1]), np.float32)  # One shape: one compile.
    queries[:stop - start] = x[start:stop]
    chunk = _knn_chunk(jnp.asarray(queries), keys, labels, start, k=k,
                       exclude_self=exclude_self)
    out[start:stop] = np.asarray(chunk)[:stop - start]
  return _common.normalize_rows(out.astype(np.float64)).astype(np.float32)


# ---------------------------------------------------------------------------
# Logistic probe
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_logistic(x_NxD, q_NxC, l2, tol, *, steps: int):
  """L-BFGS on the mean soft cross-entropy + l2/2 ||W||^2; returns (W, b)."""
  d, c = x_NxD.shape[1], q_NxC.shape[1]

  def objective(params):
    w_DxC, b_C = params
    logp = jax.nn.log_softmax(x_NxD @ w_DxC + b_C, axis=-1)
    return -jnp.mean(jnp.sum(q_NxC * logp, axis=-1)) + 0.5 * l2 * jnp.sum(
        w_DxC * w_DxC)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)
  params = (jnp.zeros((d, c), x_NxD.dtype), jnp.zeros((c,), x_NxD.dtype))

  def cond(carry):
    _, state, i = carry
    grad = optax.tree.get(state, "grad")
    return (i < steps) & ((i == 0) | (optax.tree.norm(grad) >= tol))

  def body(carry):
    params, state, i = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                value_fn=objective)
    return optax.apply_updates(params, updates), state, i + 1

  params, _, _ = jax.lax.while_loop(cond, body, (params, opt.init(params), 0))
  return params


def logistic_probe(features_NxD: Any, weak_probs_NxC: Any, *,
                   l2: float = 1e-3, steps: int = 300,
                   tol: float = 1e-6) -> np.ndarray:
  r"""Logistic-regression probe fit on soft weak labels; in-sample probs.

  .. math::
    \min_{W, b} \frac1N \sum_i \mathrm{CE}\big(q_i,
    \operatorname{softmax}(W^\top x_i + b)\big) + \frac{\lambda}{2} \|W\|_F^2,
    \qquad \hat p_i = \operatorname{softmax}(W^\top x_i + b).

  Full-batch L-BFGS (``optax.lbfgs``) from zero for at most ``steps``
  iterations, stopping early when the gradient norm falls below ``tol``;
  deterministic. The features are used as given: standardise them first if
  their scales differ a lot (the penalty is not scale-free).

  Args:
    features_NxD: ``[N, D]`` strong-model features.
    weak_probs_NxC: ``[N, C]`` weak label probabilities (soft targets).
    l2: the penalty :math:`\lambda > 0` (sklearn's ``C`` is
      :math:`1 / (\lambda N)`).
    steps: maximum L-BFGS iterations, >= 1.
    tol: gradient-norm stopping tolerance, >= 0.

  Returns:
    float32 ``[N, C]`` probe probabilities on the training rows.
  """
  weak = _common.check_probs(weak_probs_NxC, "weak_probs_NxC", ndim=2)
  x = _check_features(features_NxD, weak.shape[0]).astype(np.float32)
  if (isinstance(l2, bool) or not isinstance(l2, (int, float))
      or not l2 > 0 or not np.isfinite(l2)):
    raise ValueError(f"l2 must be a positive float; got {l2!r}. Without a "
                     "penalty separable labels have no finite solution.")
  steps = _positive_int(steps, "steps")
  if (isinstance(tol, bool) or not isinstance(tol, (int, float))
      or not tol >= 0):
    raise ValueError(f"tol must be a float >= 0; got {tol!r}.")
  x_j = jnp.asarray(x)
  w, b = _fit_logistic(x_j, jnp.asarray(weak, jnp.float32), jnp.float32(l2),
                       jnp.float32(tol), steps=steps)
  probs = np.asarray(jax.nn.softmax(x_j @ w + b, axis=-1), np.float64)
  if not np.isfinite(probs).all():
    raise ValueError("the logistic probe diverged (non-finite probabilities); "
                     "standardise the features or raise l2.")
  return _common.normalize_rows(probs).astype(np.float32)


# ---------------------------------------------------------------------------
# Relabel and filter
# ---------------------------------------------------------------------------


def _check_pair(weak_probs_NxC, probe_probs_NxC):
  weak = _common.check_probs(weak_probs_NxC, "weak_probs_NxC", ndim=2)
  probe = _common.check_probs(probe_probs_NxC, "probe_probs_NxC", ndim=2)
  if weak.shape != probe.shape:
    raise ValueError(f"weak_probs_NxC {weak.shape} and probe_probs_NxC "
                     f"{probe.shape} must have the same shape [N, C].")
  return weak, probe


def disagreement(weak_probs_NxC: Any, probe_probs_NxC: Any) -> np.ndarray:
  r"""Total-variation distance between weak label and probe, float32 ``[N]``.

  .. math::
    d_i = \tfrac12 \sum_c |q_i(c) - \hat p_i(c)| \in [0, 1].

  For C = 2 this is :math:`|q_i(1) - \hat p_i(1)|`, the absolute difference
  of the positive-class probabilities.
  """
  return _disagreement64(weak_probs_NxC, probe_probs_NxC).astype(np.float32)


def _disagreement64(weak_probs_NxC, probe_probs_NxC) -> np.ndarray:
  weak, probe = _check_pair(weak_probs_NxC, probe_probs_NxC)
  d = 0.5 * np.abs(weak.astype(np.float64) - probe.astype(np.float64)).sum(-1)
  return np.clip(d, 0.0, 1.0)


def relabel(weak_probs_NxC: Any, probe_probs_NxC: Any, *,
            mode: str = "hard") -> np.ndarray:
  r"""Replaces the weak label by the probe's where their argmaxes differ.

  .. math::
    \tilde q_i = \begin{cases} q_i & \arg\max q_i = \arg\max \hat p_i \\
    \operatorname{onehot}(\arg\max \hat p_i) & \text{otherwise, mode="hard"}
    \\ \hat p_i & \text{otherwise, mode="soft".} \end{cases}

  Rows on which the two agree are returned unchanged (bit for bit). Argmax
  ties go to the lower class index.

  Args:
    weak_probs_NxC: ``[N, C]`` weak label probabilities.
    probe_probs_NxC: ``[N, C]`` the probe's probabilities on the same rows.
    mode: ``"hard"`` (one-hot probe class) or ``"soft"`` (probe probs).

  Returns:
    ``[N, C]`` labels in the weak labels' float dtype (at least float32).
  """
  if mode not in ("hard", "soft"):
    raise ValueError(f"mode must be 'hard' or 'soft'; got {mode!r}.")
  weak, probe = _check_pair(weak_probs_NxC, probe_probs_NxC)
  dtype = _common.out_dtype(weak.dtype)
  probe_class = probe.argmax(axis=-1)
  differ = weak.argmax(axis=-1) != probe_class
  if mode == "hard":
    new = np.eye(weak.shape[1], dtype=dtype)[probe_class]
  else:
    new = _common.normalize_rows(probe.astype(np.float64)).astype(dtype)
  return np.where(differ[:, None], new, weak.astype(dtype))


def filter_by_disagreement(weak_probs_NxC: Any, probe_probs_NxC: Any, *,
                           drop_fraction: float) -> np.ndarray:
  r"""Hard mask dropping the rows where weak label and probe disagree most.

  Drops exactly ``min(round(drop_fraction * N), N - 1)`` rows (Python's
  ``round``, as the label noise counts rows) with the largest
  :func:`disagreement` :math:`d_i` (ties: the higher row index is dropped
  first, so the lower index is kept); keeps the rest.

  Args:
    weak_probs_NxC: ``[N, C]`` weak label probabilities.
    probe_probs_NxC: ``[N, C]`` the probe's probabilities on the same rows.
    drop_fraction: in [0, 1).

  Returns:
    float32 ``[N]`` of 0s and 1s (1 = keep).
  """
  drop_fraction = _common.check_fraction(drop_fraction, "drop_fraction",
                                         allow_zero=True, allow_one=False)
  d = _disagreement64(weak_probs_NxC, probe_probs_NxC)  # Rank in float64.
  n = d.shape[0]
  num_drop = min(int(round(drop_fraction * n)), n - 1)
  return _common.keep_top(-d, n - num_drop)
