r"""Losses for weak-to-strong training: f-divergences, baselines, a registry.

Every loss maps student logits ``[..., C]`` and weak label probabilities
``[..., C]`` to unreduced per-example values ``[...]``; the caller reduces.

Direction. With P = the weak label distribution and Q = softmax(student
logits), every f-divergence here is

.. math::
  D_f(P \| Q) = \sum_c Q(c) \, f\!\left(\frac{P(c)}{Q(c)}\right),

so ``kl`` (f = t log t) is KL(weak || student), the cross-entropy minus the
weak entropy, and ``reverse_kl`` (f = -log t) is KL(student || weak).

Use through the registry::

  loss_fn = losses.get("js", confidence=0.5, warmup=0.2)
  per_example_B = loss_fn(logits_BxC, weak_probs_BxC, where=valid_B,
                          progress=step / total_steps)
  loss = per_example_B.sum() / valid_B.sum()

Every loss function has the signature
``loss_fn(student_logits, weak_probs, *, where=None, progress=None)``:

* ``where`` (bool ``[...]``, optional): valid examples. Masked examples return
  exactly 0 (with zero gradient, even if their inputs are NaN) and take no
  part in any batch statistic (the confidence term's quantile).
* ``progress`` (scalar in [0, 1], may be traced): training progress; only the
  confidence term reads it. ``None`` means fully warmed up.

Numerics. Inputs may be bf16; everything is computed in float32 (float64
inputs stay float64). Work is done in log space (``log_softmax``, ``logaddexp``,
``xlogy``), so values and gradients with respect to the logits stay finite for
logits up to 1e4 in magnitude and for weak probabilities that are exactly 0 or
1. Weak probabilities are taken as given (they should sum to 1 over the last
axis); gradients are taken with respect to the logits only.

Epsilon convention. Divergences that are infinite when a probability is 0
(``reverse_kl``, ``jeffreys``, ``neyman``, ``pearson``, ``alpha``,
``reverse_xent`` and custom generators) take a keyword ``eps`` (default 1e-7).
The distribution that would be divided by, or whose log is taken, is replaced
by its *clipped and renormalised* version

.. math::
  \tilde R(c) = \frac{\max(R(c), \epsilon)}{\sum_{c'} \max(R(c'), \epsilon)}.

That is still a probability distribution, so D >= 0 holds exactly, and
R~ = R whenever every R(c) >= eps, so D(Q || Q) = 0 (and D(Q || Q) <= ~C eps
otherwise). The clip is applied in log space, ``max(log R, log eps)``, so an
underflowed softmax never produces ``log 0``.

Confidence term (Burns et al. 2023). Any loss takes ``confidence`` and
``warmup``: the weak target P is replaced by

.. math::
  P_a = (1 - a) P + a \, \mathrm{hard}(Q), \qquad
  a = \mathrm{confidence} \cdot \min(1, \mathrm{progress} / \mathrm{warmup}),

continuous in ``progress`` (no jump at the end of warm-up). ``hard`` is a
stop-gradient one-hot label: for C = 2 the student's class-0 probabilities are
thresholded at the batch quantile that makes the fraction of hard class-0
labels equal to the weak labels' mean class-0 prior (the batch is all leading
axes, flattened, valid examples only); for C > 2 it is the argmax. ``logconf``
is ``xent`` with ``confidence=0.75`` by default.

References:
  Burns et al., "Weak-to-Strong Generalization: Eliciting Strong Capabilities
  With Weak Supervision", 2023, arXiv:2312.09390.
  Yao et al., "On Weak-to-Strong Generalization and f-Divergence", 2025,
  arXiv:2506.03109.
  Liese and Vajda, "On Divergences and Informations in Statistics and
  Information Theory", IEEE Trans. Inf. Theory, 2006.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

__all__ = [
    "BASELINES",
    "F_DIVERGENCES",
    "LossFn",
    "alpha_divergence",
    "confidence_weight",
    "f_divergence",
    "get",
    "hard_student_labels",
    "hellinger",
    "jeffreys",
    "js",
    "kl",
    "logconf",
    "margin_to_logits",
    "names",
    "neyman",
    "pearson",
    "preference_probs",
    "product",
    "register",
    "reverse_kl",
    "reverse_xent",
    "tv",
    "xent",
]

Array = jax.Array
LossFn = Callable[..., Array]

DEFAULT_EPS = 1e-7
DEFAULT_WARMUP = 0.2
LOGCONF_CONFIDENCE = 0.75
# exp() of anything above ~88.7 overflows float32; keep margin for gradients.
_MAX_EXPONENT = 80.0


# ---------------------------------------------------------------------------
# Shared plumbing
# ---------------------------------------------------------------------------


def _compute_dtype(dtype) -> jnp.dtype:
  """float32 for bf16/f16/f32 inputs; float64 stays float64."""
  return jnp.promote_types(dtype, jnp.float32)


def _prepare(student_logits, weak_probs, where):
  """Casts to the compute dtype, checks shapes, neutralises masked examples.

  Returns:
    (logits_NC, weak_NC, mask) with shapes ``[..., C]``, ``[..., C]`` and
    ``[...]`` (``mask`` is None when ``where`` is None).
  """
  student_logits = jnp.asarray(student_logits)
  weak_probs = jnp.asarray(weak_probs)
  if student_logits.ndim < 1:
    raise ValueError(
        "student_logits must have a class axis, shape [..., C]; got a scalar. "
        "For a pairwise reward margin use margin_to_logits(z).")
  if student_logits.shape != weak_probs.shape:
    raise ValueError(
        f"student_logits {student_logits.shape} and weak_probs "
        f"{weak_probs.shape} must have the same shape [..., C]. For hard weak "
        "labels pass jax.nn.one_hot(labels, C); for reward margins use "
        "margin_to_logits(z) and preference_probs(z).")
  dtype = _compute_dtype(
      jnp.promote_types(student_logits.dtype, weak_probs.dtype))
  logits = student_logits.astype(dtype)
  weak = weak_probs.astype(dtype)
  mask = None
  if where is not None:
    where = jnp.asarray(where)
    batch_shape = logits.shape[:-1]
    try:
      mask = jnp.broadcast_to(where.astype(bool), batch_shape)
    except ValueError:
      raise ValueError(
          f"where has shape {where.shape}, which does not broadcast to the "
          f"batch shape {batch_shape} (student_logits without the class "
          "axis). Pass one boolean per example.") from None
    # Replace masked inputs so NaN/inf padding cannot leak into values or
    # gradients (a 0 * NaN in the backward pass is still NaN).
    num_classes = logits.shape[-1]
    logits = jnp.where(mask[..., None], logits, 0.0)
    weak = jnp.where(mask[..., None], weak, 1.0 / num_classes)
  return logits, weak, mask


def _clipped_log_probs(log_probs, eps):
  r"""log of the clipped, renormalised distribution max(R, eps) / sum(...)."""
  clipped = jnp.maximum(log_probs, math.log(eps))
  return clipped - jax.nn.logsumexp(clipped, axis=-1, keepdims=True)


def _safe_log(probs):
  """log(probs) with log 0 = -inf, and no NaN in any gradient path."""
  positive = probs > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, probs, 1.0)),
                   -jnp.inf)


def confidence_weight(progress=None, *, confidence: float,
                      warmup: float = DEFAULT_WARMUP):
  r"""Mixing weight of the confidence term at a point in training.

  .. math::
    a = \mathrm{confidence} \cdot \mathrm{clip}(\mathrm{progress} /
        \mathrm{warmup}, 0, 1)

  Continuous in ``progress``: it rises linearly from 0 and reaches
  ``confidence`` at ``progress = warmup``.

  Args:
    progress: training progress in [0, 1], a Python float or a traced scalar;
      None means fully warmed up.
    confidence: final weight of the hard student labels, in [0, 1].
    warmup: fraction of training over which the weight ramps up; 0 means no
      ramp.

  Returns:
    Scalar weight ``a``.
  """
  if progress is None or warmup == 0:
    return jnp.asarray(confidence, jnp.float32)
  ramp = jnp.clip(jnp.asarray(progress, jnp.float32) / warmup, 0.0, 1.0)
  return confidence * ramp


def hard_student_labels(logits, weak_probs, mask=None):
  r"""Stop-gradient hard labels from the student, as in Burns et al.

  For C = 2 the student's class-0 probability is thresholded at the batch
  quantile (linear interpolation, like ``torch.quantile``) at level
  mean(P(class 1)), so that the fraction of hard class-0 labels matches the
  weak labels' mean class-0 prior. The comparison uses the logit margin
  ``logits[..., 0] - logits[..., 1]``, which orders examples exactly as the
  class-0 probability but does not saturate in float32. For C > 2 the label
  is the argmax.

  Args:
    logits: ``[..., C]`` student logits.
    weak_probs: ``[..., C]`` weak label probabilities.
    mask: optional bool ``[...]``; the batch statistics use valid entries only.

  Returns:
    ``[..., C]`` one-hot labels in ``logits.dtype``, with no gradient.
  """
  logits = jax.lax.stop_gradient(logits)
  num_classes = logits.shape[-1]
  if num_classes != 2:
    hard = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes,
                          dtype=logits.dtype)
    return jax.lax.stop_gradient(hard)
  margin = (logits[..., 0] - logits[..., 1]).reshape(-1)
  prior1 = weak_probs[..., 1].reshape(-1)
  if mask is None:
    valid = jnp.ones_like(margin, dtype=bool)
  else:
    valid = mask.reshape(-1)
  count = jnp.maximum(jnp.sum(valid), 1)
  level = jnp.sum(jnp.where(valid, prior1, 0.0)) / count
  level = jnp.clip(level, 0.0, 1.0)
  # Masked margins sort to the end, so the first `count` entries are valid.
  sorted_margin = jnp.sort(jnp.where(valid, margin, jnp.inf))
  pos = level * (count - 1).astype(margin.dtype)
  lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, count - 1)
  hi = jnp.minimum(lo + 1, count - 1)
  frac = pos - lo.astype(margin.dtype)
  low_value = sorted_margin[lo]
  high_value = sorted_margin[hi]
  threshold = jnp.where(frac > 0,
                        low_value + frac * (high_value - low_value),
                        low_value)
  is_class0 = (margin >= threshold).reshape(logits.shape[:-1])
  hard = jnp.stack([is_class0, ~is_class0], axis=-1).astype(logits.dtype)
  return jax.lax.stop_gradient(hard)


def _run(core: Callable[[Array, Array], Array], student_logits, weak_probs,
         where, progress, confidence, warmup):
  """Shared driver: prepare inputs, apply the confidence term, mask output."""
  logits, weak, mask = _prepare(student_logits, weak_probs, where)
  if not (isinstance(confidence, (int, float)) and confidence == 0):
    a = confidence_weight(progress, confidence=confidence,
                          warmup=warmup).astype(weak.dtype)
    hard = hard_student_labels(logits, weak, mask)
    weak = (1.0 - a) * weak + a * hard
  log_q = jax.nn.log_softmax(logits, axis=-1)
  out = core(log_q, weak)
  if mask is not None:
    out = jnp.where(mask, out, 0.0)
  return out


# ---------------------------------------------------------------------------
# Cores: (log_q [..., C], p [..., C]) -> [...], inputs already float32
# ---------------------------------------------------------------------------


def _kl_core(log_q, p):
  return jnp.sum(xlogy(p, p) - p * log_q, axis=-1)


def _reverse_kl_core(log_q, p, eps):
  log_p = _clipped_log_probs(_safe_log(p), eps)
  return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)


def _js_core(log_q, p):
  # log M = log((P + Q) / 2); finite because log Q is finite.
  log_m = jnp.logaddexp(_safe_log(p), log_q) - math.log(2.0)
  kl_pm = jnp.sum(xlogy(p, p) - p * log_m, axis=-1)
  kl_qm = jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=-1)
  return 0.5 * (kl_pm + kl_qm)


def _hellinger_core(log_q, p):
  # Sum of squares rather than 2 - 2 sum sqrt(PQ): no cancellation near 0.
  return jnp.sum(jnp.square(jnp.sqrt(p) - jnp.exp(0.5 * log_q)), axis=-1)


def _pearson_core(log_q, p, eps):
  q = jnp.exp(_clipped_log_probs(log_q, eps))
  return jnp.sum(jnp.square(p - q) / q, axis=-1)


def _neyman_core(log_q, p, eps):
  p_clipped = jnp.exp(_clipped_log_probs(_safe_log(p), eps))
  return jnp.sum(jnp.square(p_clipped - jnp.exp(log_q)) / p_clipped, axis=-1)


def _tv_core(log_q, p):
  return 0.5 * jnp.sum(jnp.abs(p - jnp.exp(log_q)), axis=-1)


def _jeffreys_core(log_q, p, eps):
  return _kl_core(log_q, p) + _reverse_kl_core(log_q, p, eps)


def _alpha_core(log_q, p, alpha, eps):
  r"""Per-class Q f_alpha(P/Q) in a form that is continuous at alpha = 0, 1.

  With u = log P - log Q (both clipped) and alpha (alpha - 1) f = N =
  e^{alpha u} - 1 - alpha (e^u - 1),
  near alpha = 1:  Q f = [P expm1((alpha-1) u) / (alpha-1) - (P - Q)] / alpha,
  near alpha = 0:  Q f = [Q expm1(alpha u) / alpha - (P - Q)] / (alpha - 1).
  expm1(x u) / x -> u as x -> 0, so both limits are reached without 0 / 0.
  """
  log_p = _clipped_log_probs(_safe_log(p), eps)
  log_q = _clipped_log_probs(log_q, eps)
  p_c, q_c = jnp.exp(log_p), jnp.exp(log_q)
  u = log_p - log_q
  if alpha >= 0.5:
    beta = alpha - 1.0
    term = (p_c * jnp.expm1(beta * u) / beta - (p_c - q_c)) / alpha
  else:
    term = (q_c * jnp.expm1(alpha * u) / alpha - (p_c - q_c)) / (alpha - 1.0)
  return jnp.sum(term, axis=-1)


def _xent_core(log_q, p):
  return 0.0 - jnp.sum(p * log_q, axis=-1)  # 0.0 - x: no -0.0 in outputs


def _reverse_xent_core(log_q, p, eps):
  log_p = _clipped_log_probs(_safe_log(p), eps)
  return 0.0 - jnp.sum(jnp.exp(log_q) * log_p, axis=-1)


def _product_core(log_q, p):
  return 0.0 - jax.nn.logsumexp(_safe_log(p) + log_q, axis=-1)


# ---------------------------------------------------------------------------
# Public loss functions
# ---------------------------------------------------------------------------

_COMMON_ARGS = """
  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in
      float32).
    weak_probs: ``[..., C]`` weak label probabilities, summing to 1 over C;
      exact 0 and 1 are fine.
    where: optional bool ``[...]``; False entries return 0 and are left out of
      batch statistics.
    progress: optional training progress in [0, 1] for the confidence term;
      None means fully warmed up.
    confidence: weight of the hard-student target (0 turns the term off).
    warmup: fraction of training over which ``confidence`` ramps up."""


def _doc(fn):
  fn.__doc__ = fn.__doc__.replace("{common_args}", _COMMON_ARGS.strip("\n"))
  return fn


@_doc
def kl(student_logits, weak_probs, *, where=None, progress=None,
       confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Forward KL divergence KL(weak || student), f(t) = t log t.

  .. math::
    D(P \| Q) = \sum_c P(c) \log \frac{P(c)}{Q(c)}
              = H(P, Q) - H(P)

  P = weak, Q = softmax(student_logits). Same gradient as ``xent``; the weak
  entropy is subtracted so that D(P || P) = 0. 0 log 0 = 0; no epsilon.

{common_args}

  Returns:
    ``[...]`` per-example KL, float32.

  References:
    Yao et al., 2025, arXiv:2506.03109.
  """
  return _run(_kl_core, student_logits, weak_probs, where, progress,
              confidence, warmup)


@_doc
def reverse_kl(student_logits, weak_probs, *, where=None, progress=None,
               eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Reverse KL divergence KL(student || weak), f(t) = -log t.

  .. math::
    D(P \| Q) = \sum_c Q(c) \log \frac{Q(c)}{\tilde P(c)}

  P = weak, Q = softmax(student_logits), and P~ = max(P, eps), renormalised
  (module docstring): an exact 0 in the weak labels costs at most
  -log(eps) ~ 16 nats instead of infinity. Mode-seeking: the student is not
  pushed to cover weak-label mass.

{common_args}
    eps: clip for the weak probabilities.

  Returns:
    ``[...]`` per-example reverse KL, float32.

  References:
    Yao et al., 2025, arXiv:2506.03109.
  """
  return _run(functools.partial(_reverse_kl_core, eps=eps), student_logits,
              weak_probs, where, progress, confidence, warmup)


@_doc
def js(student_logits, weak_probs, *, where=None, progress=None,
       confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Jensen-Shannon divergence (natural log), symmetric, at most log 2.

  .. math::
    D(P \| Q) = \tfrac12 \mathrm{KL}(P \| M) + \tfrac12 \mathrm{KL}(Q \| M),
    \quad M = \tfrac12 (P + Q),

  the f-divergence of f(t) = (t log t - (1 + t) log((1 + t) / 2)) / 2.
  P = weak, Q = softmax(student_logits). Equals the square of
  ``scipy.spatial.distance.jensenshannon``. No epsilon: M > 0 wherever a term
  needs its log.

{common_args}

  Returns:
    ``[...]`` per-example JS divergence in nats, float32.

  References:
    Lin, "Divergence measures based on the Shannon entropy", 1991.
  """
  return _run(_js_core, student_logits, weak_probs, where, progress,
              confidence, warmup)


@_doc
def hellinger(student_logits, weak_probs, *, where=None, progress=None,
              confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Squared Hellinger distance, f(t) = (sqrt(t) - 1)^2, symmetric.

  .. math::
    D(P \| Q) = \sum_c \left(\sqrt{P(c)} - \sqrt{Q(c)}\right)^2
              = 2 - 2 \sum_c \sqrt{P(c) Q(c)} \in [0, 2].

  Constant convention: no factor 1/2, so the range is [0, 2] (the other
  common convention, H^2 = D / 2 in [0, 1], is half of this). P = weak,
  Q = softmax(student_logits). ``alpha`` with alpha = 0.5 equals 2 D.

{common_args}

  Returns:
    ``[...]`` per-example squared Hellinger distance, float32.

  References:
    Yao et al., 2025, arXiv:2506.03109.
  """
  return _run(_hellinger_core, student_logits, weak_probs, where, progress,
              confidence, warmup)


@_doc
def pearson(student_logits, weak_probs, *, where=None, progress=None,
            eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Pearson chi-squared divergence chi^2(weak || student), f(t) = (t - 1)^2.

  .. math::
    D(P \| Q) = \sum_c \frac{(P(c) - \tilde Q(c))^2}{\tilde Q(c)}

  P = weak, Q = softmax(student_logits), Q~ = max(Q, eps), renormalised
  (module docstring), so an underflowed student probability gives at most
  ~1/eps instead of infinity.

{common_args}
    eps: clip for the student probabilities.

  Returns:
    ``[...]`` per-example Pearson chi^2, float32.

  References:
    Yao et al., 2025, arXiv:2506.03109.
  """
  return _run(functools.partial(_pearson_core, eps=eps), student_logits,
              weak_probs, where, progress, confidence, warmup)


@_doc
def neyman(student_logits, weak_probs, *, where=None, progress=None,
           eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Neyman chi-squared divergence, f(t) = (1 - t)^2 / t.

  .. math::
    D(P \| Q) = \sum_c \frac{(\tilde P(c) - Q(c))^2}{\tilde P(c)}
              = \chi^2(Q \| P)

  P = weak, Q = softmax(student_logits), P~ = max(P, eps), renormalised
  (module docstring): a weak label that is exactly 0 where the student puts
  mass costs at most ~1/eps.

{common_args}
    eps: clip for the weak probabilities.

  Returns:
    ``[...]`` per-example Neyman chi^2, float32.

  References:
    Neyman, "Contribution to the theory of the chi^2 test", 1949.
  """
  return _run(functools.partial(_neyman_core, eps=eps), student_logits,
              weak_probs, where, progress, confidence, warmup)


@_doc
def tv(student_logits, weak_probs, *, where=None, progress=None,
       confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Total variation distance, f(t) = |t - 1| / 2, symmetric, in [0, 1].

  .. math::
    D(P \| Q) = \tfrac12 \sum_c |P(c) - Q(c)|

  P = weak, Q = softmax(student_logits). Not differentiable where
  P(c) = Q(c); JAX uses a subgradient there.

{common_args}

  Returns:
    ``[...]`` per-example total variation, float32.

  References:
    Yao et al., 2025, arXiv:2506.03109.
  """
  return _run(_tv_core, student_logits, weak_probs, where, progress,
              confidence, warmup)


@_doc
def jeffreys(student_logits, weak_probs, *, where=None, progress=None,
             eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Jeffreys divergence KL(weak || student) + KL(student || weak), symmetric.

  .. math::
    D(P \| Q) = \sum_c P(c) \log \frac{P(c)}{Q(c)}
              + \sum_c Q(c) \log \frac{Q(c)}{\tilde P(c)},
    \quad f(t) = (t - 1) \log t.

  P = weak, Q = softmax(student_logits); the reverse term uses the clipped
  P~ of ``reverse_kl`` (the forward term needs no epsilon).

{common_args}
    eps: clip for the weak probabilities in the reverse term.

  Returns:
    ``[...]`` per-example Jeffreys divergence, float32.

  References:
    Jeffreys, "An invariant form for the prior probability in estimation
    problems", 1946.
  """
  return _run(functools.partial(_jeffreys_core, eps=eps), student_logits,
              weak_probs, where, progress, confidence, warmup)


def _check_alpha(alpha, eps):
  if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
    raise ValueError(f"alpha must be a finite Python number; got {alpha!r}.")
  exponent = max(alpha - 1.0, -alpha, 0.0) * -math.log(eps)
  if exponent > _MAX_EXPONENT:
    raise ValueError(
        f"alpha={alpha} with eps={eps} can reach exp({exponent:.0f}), which "
        "overflows float32. Use alpha in about "
        f"({-_MAX_EXPONENT / -math.log(eps):.1f}, "
        f"{1 + _MAX_EXPONENT / -math.log(eps):.1f}), or a larger eps.")


@_doc
def alpha_divergence(student_logits, weak_probs, *, where=None, progress=None,
                     alpha=0.5, eps=DEFAULT_EPS, confidence=0.0,
                     warmup=DEFAULT_WARMUP):
  r"""Alpha-divergence (Amari / Cressie-Read family), registered as ``alpha``.

  .. math::
    f_\alpha(t) = \frac{t^\alpha - \alpha t - (1 - \alpha)}{\alpha(\alpha-1)},
    \quad D(P \| Q) = \frac{\sum_c \tilde P(c)^\alpha \tilde Q(c)^{1-\alpha}
                      - 1}{\alpha(\alpha - 1)}.

  P = weak, Q = softmax(student_logits), both clipped at eps and
  renormalised (module docstring). alpha -> 1 gives ``kl`` and alpha -> 0
  gives ``reverse_kl``: exactly 1 and 0 dispatch to those (with their own
  epsilon conventions), and values near them are computed with ``expm1`` in
  log space, so the family is numerically continuous there. alpha = 0.5 is
  twice the squared ``hellinger``; alpha = 2 and alpha = -1 are half of
  ``pearson`` and ``neyman`` (up to where eps is applied).

{common_args}
    alpha: the family parameter. With eps = 1e-7, values outside about
      (-5, 6) could overflow float32 and raise ValueError.
    eps: clip for both distributions.

  Returns:
    ``[...]`` per-example alpha-divergence, float32.

  References:
    Amari, "Differential-Geometrical Methods in Statistics", 1985;
    Cichocki and Amari, "Families of Alpha- Beta- and Gamma- Divergences",
    Entropy, 2010.
  """
  if alpha == 1:
    return kl(student_logits, weak_probs, where=where, progress=progress,
              confidence=confidence, warmup=warmup)
  if alpha == 0:
    return reverse_kl(student_logits, weak_probs, where=where,
                      progress=progress, eps=eps, confidence=confidence,
                      warmup=warmup)
  _check_alpha(alpha, eps)
  return _run(functools.partial(_alpha_core, alpha=float(alpha), eps=eps),
              student_logits, weak_probs, where, progress, confidence, warmup)


@_doc
def xent(student_logits, weak_probs, *, where=None, progress=None,
         confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Cross-entropy with soft weak targets (the standard W2SG baseline).

  .. math::
    L(P, Q) = -\sum_c P(c) \log Q(c) = \mathrm{KL}(P \| Q) + H(P)

  P = weak, Q = softmax(student_logits).

{common_args}

  Returns:
    ``[...]`` per-example cross-entropy in nats, float32.

  References:
    Burns et al., 2023, arXiv:2312.09390.
  """
  return _run(_xent_core, student_logits, weak_probs, where, progress,
              confidence, warmup)


@_doc
def logconf(student_logits, weak_probs, *, where=None, progress=None,
            confidence=LOGCONF_CONFIDENCE, warmup=DEFAULT_WARMUP):
  r"""Auxiliary-confidence loss of Burns et al.: xent to a mixed target.

  .. math::
    L = -\sum_c P_a(c) \log Q(c), \quad
    P_a = (1 - a) P + a\, \mathrm{sg}[\mathrm{hard}(Q)], \quad
    a = \mathrm{confidence} \cdot \min(1, \mathrm{progress}/\mathrm{warmup}).

  P = weak, Q = softmax(student_logits). For C = 2, hard(Q) thresholds the
  class-0 probability at the batch quantile matching the weak class-0 prior
  (``hard_student_labels``), so per-example values depend on the batch (all
  leading axes, valid examples only). Unlike the reference implementation,
  ``a`` ramps linearly and never jumps. At progress = 0 this is ``xent``.

{common_args}

  Returns:
    ``[...]`` per-example loss, float32.

  References:
    Burns et al., 2023, arXiv:2312.09390 (``logconf_loss_fn``).
  """
  return _run(_xent_core, student_logits, weak_probs, where, progress,
              confidence, warmup)


@_doc
def reverse_xent(student_logits, weak_probs, *, where=None, progress=None,
                 eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Reverse cross-entropy -sum_c Q log P: the student's expected weak NLL.

  .. math::
    L(P, Q) = -\sum_c Q(c) \log \tilde P(c) = \mathrm{KL}(Q \| \tilde P) + H(Q)

  P = weak, Q = softmax(student_logits), P~ = max(P, eps), renormalised
  (module docstring).

{common_args}
    eps: clip for the weak probabilities.

  Returns:
    ``[...]`` per-example reverse cross-entropy, float32.

  References:
    Yao et al., 2025, arXiv:2506.03109.
  """
  return _run(functools.partial(_reverse_xent_core, eps=eps), student_logits,
              weak_probs, where, progress, confidence, warmup)


@_doc
def product(student_logits, weak_probs, *, where=None, progress=None,
            confidence=0.0, warmup=DEFAULT_WARMUP):
  r"""Agreement ("product") loss: minus the log-probability of agreeing.

  .. math::
    L(P, Q) = -\log \sum_c P(c) Q(c)

  P = weak, Q = softmax(student_logits): the negative log-likelihood that
  independent draws from the weak labels and the student agree. Computed as
  -logsumexp(log P + log Q); finite whenever P has mass somewhere.

{common_args}

  Returns:
    ``[...]`` per-example loss, float32.

  References:
    Burns et al., 2023, arXiv:2312.09390 (product-of-experts baseline).
  """
  return _run(_product_core, student_logits, weak_probs, where, progress,
              confidence, warmup)


# ---------------------------------------------------------------------------
# Custom generators
# ---------------------------------------------------------------------------

_GRID = np.logspace(-3.0, 3.0, 241)


def _validate_generator(f, label, tol=1e-4):
  grid = jnp.asarray(_GRID, jnp.float32)
  try:
    values = np.asarray(f(grid), dtype=np.float64)
    at_one = float(np.asarray(f(jnp.asarray(1.0, jnp.float32))))
  except Exception as e:  # the user's function, any failure
    raise ValueError(
        f"Generator {label} failed on a float32 array of t in [1e-3, 1e3]: "
        f"{e!r}. Write f with jnp operations that act elementwise on an "
        "array t > 0.") from e
  if values.shape != _GRID.shape:
    raise ValueError(
        f"Generator {label} returned shape {values.shape} for t of shape "
        f"{_GRID.shape}; it must act elementwise.")
  bad = ~np.isfinite(values)
  if bad.any():
    raise ValueError(
        f"Generator {label} is not finite on t in [1e-3, 1e3] (e.g. "
        f"f({_GRID[bad][0]:.3g}) = {values[bad][0]}). An f-divergence "
        "generator must be finite for every t > 0.")
  scale = 1.0 + np.max(np.abs(values))
  if not abs(at_one) <= tol:
    raise ValueError(
        f"Generator {label} has f(1) = {at_one:.6g}, but f(1) must be 0 so "
        f"that D(P || P) = 0. Use f(t) - f(1), i.e. subtract {at_one:.6g}.")
  slopes = np.diff(values) / np.diff(_GRID)
  drops = np.diff(slopes)
  allowed = -tol * (1.0 + np.abs(slopes[1:])) - 1e-6 * scale
  if (drops < allowed).any():
    i = int(np.argmax(drops < allowed))
    raise ValueError(
        f"Generator {label} is not convex: its slope falls from "
        f"{slopes[i]:.6g} to {slopes[i + 1]:.6g} around t = "
        f"{_GRID[i + 1]:.4g}. D_f is a divergence (>= 0) only for convex f; "
        "use a convex generator, or pass check=False if you know better.")


def f_divergence(f: Callable[[Array], Array], *, name: Optional[str] = None,
                 eps: float = DEFAULT_EPS, check: bool = True,
                 confidence: float = 0.0,
                 warmup: float = DEFAULT_WARMUP) -> LossFn:
  r"""Builds a loss from any convex generator f with f(1) = 0.

  .. math::
    D_f(P \| Q) = \sum_c \tilde Q(c)\, f\!\left(\frac{\tilde P(c)}
                  {\tilde Q(c)}\right)

  P = weak, Q = softmax(student_logits); both are clipped at eps and
  renormalised (module docstring) so that t = P~ / Q~ lies in
  [~eps, ~1/eps] and f is never evaluated at 0 or infinity.

  To put it in the registry::

    losses.register(
        "mine", lambda **hp: losses.f_divergence(my_f, name="mine", **hp))

  Args:
    f: elementwise jnp function of t > 0, convex, with f(1) = 0.
    name: used in error messages and as the loss function's ``__name__``.
    eps: clip for both distributions.
    check: validate f numerically on a grid of t in [1e-3, 1e3]: finite,
      f(1) = 0 within 1e-4, convex (slopes non-decreasing, with tolerance).
    confidence: weight of the confidence term (see module docstring).
    warmup: fraction of training over which ``confidence`` ramps up.

  Returns:
    ``loss_fn(student_logits [..., C], weak_probs [..., C], *, where=None,
    progress=None) -> [...]``.

  Raises:
    ValueError: naming the property f fails and how to fix it.
  """
  if not callable(f):
    raise ValueError(f"f must be a callable jnp function of t; got {f!r}.")
  label = repr(name) if name else getattr(f, "__name__", "f")
  _check_eps(eps)
  _check_confidence(confidence, warmup)
  if check:
    _validate_generator(f, label)

  def core(log_q, p):
    log_p = _clipped_log_probs(_safe_log(p), eps)
    log_q = _clipped_log_probs(log_q, eps)
    return jnp.sum(jnp.exp(log_q) * f(jnp.exp(log_p - log_q)), axis=-1)

  def loss_fn(student_logits, weak_probs, *, where=None, progress=None):
    return _run(core, student_logits, weak_probs, where, progress, confidence,
                warmup)

  loss_fn.__name__ = name or f"f_divergence({label})"
  loss_fn.__doc__ = f"f-divergence D_f(weak || student) with generator {label}."
  return loss_fn


# ---------------------------------------------------------------------------
# Pairwise (reward-model) helpers
# ---------------------------------------------------------------------------


def margin_to_logits(z):
  r"""Reward margin z = r_chosen - r_rejected ``[...]`` -> 2-class logits.

  .. math::
    \mathrm{logits} = [0, z], \quad \mathrm{softmax}(\mathrm{logits})_1
    = \sigma(z)

  Class 1 means "chosen preferred", so every loss here applies unchanged.

  Args:
    z: ``[...]`` reward margins.

  Returns:
    ``[..., 2]`` logits.
  """
  z = jnp.asarray(z)
  return jnp.stack([jnp.zeros_like(z), z], axis=-1)


def preference_probs(z):
  r"""Reward margin ``[...]`` -> Bradley-Terry probabilities ``[..., 2]``.

  .. math::
    [1 - \sigma(z), \sigma(z)] = [\sigma(-z), \sigma(z)]

  Computed as ``sigmoid(-z)`` rather than ``1 - sigmoid(z)``, which keeps the
  small class accurate for large |z|.

  Args:
    z: ``[...]`` reward margins (e.g. from a weak reward model).

  Returns:
    ``[..., 2]`` probabilities; class 1 = "chosen preferred".
  """
  z = jnp.asarray(z)
  return jnp.stack([jax.nn.sigmoid(-z), jax.nn.sigmoid(z)], axis=-1)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def _check_eps(eps):
  if not isinstance(eps, (int, float)) or not 0 < eps <= 1e-2:
    raise ValueError(
        f"eps must be a Python float in (0, 1e-2]; got {eps!r}. It is the "
        "probability floor that keeps log 0 and x / 0 finite (default 1e-7).")


def _check_confidence(confidence, warmup):
  if isinstance(confidence, (int, float)) and not 0 <= confidence <= 1:
    raise ValueError(
        f"confidence must be in [0, 1]; got {confidence!r}. It is the weight "
        "of the hard student labels in the target (Burns et al. use 0.75).")
  if not isinstance(warmup, (int, float)) or not 0 <= warmup <= 1:
    raise ValueError(
        f"warmup must be a fraction of training in [0, 1]; got {warmup!r}.")


def _builtin_factory(fn: LossFn) -> Callable[..., LossFn]:
  """Factory that binds keyword hparams of a built-in loss, checked early."""
  params = inspect.signature(fn).parameters
  hparams = tuple(n for n, p in params.items()
                  if p.kind is p.KEYWORD_ONLY
                  and n not in ("where", "progress"))

  def factory(**kwargs):
    bound = {n: params[n].default for n in hparams}
    bound.update(kwargs)
    for key, value in kwargs.items():
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"hparam {key}={value!r} must be a Python number (hparams are "
            "fixed for a run; pass training progress as progress=).")
    if "eps" in bound:
      _check_eps(bound["eps"])
    _check_confidence(bound["confidence"], bound["warmup"])
    if "alpha" in bound and bound["alpha"] not in (0, 1):
      _check_alpha(bound["alpha"], bound["eps"])

    def loss_fn(student_logits, weak_probs, *, where=None, progress=None):
      return fn(student_logits, weak_probs, where=where, progress=progress,
                **bound)

    loss_fn.__name__ = fn.__name__
    loss_fn.__doc__ = fn.__doc__
    loss_fn.hparams = dict(bound)
    return loss_fn

  factory.__signature__ = inspect.Signature([
      inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY,
                        default=params[n].default) for n in hparams])
  return factory


_REGISTRY: dict[str, Callable[..., LossFn]] = {}


def register(name: str, fn_factory: Callable[..., LossFn], *,
             overwrite: bool = False) -> None:
  """Adds a loss to the registry.

  Args:
    name: the name ``get`` will accept.
    fn_factory: ``fn_factory(**hparams) -> loss_fn`` where ``loss_fn`` follows
      the module contract ``(student_logits [..., C], weak_probs [..., C], *,
      where=None, progress=None) -> [...]``. Its keyword parameters are the
      loss's hparams; a factory with ``**kwargs`` accepts anything.
    overwrite: replace an existing entry instead of raising.

  Raises:
    ValueError: if ``name`` is taken (and ``overwrite`` is False) or the
      factory is not callable.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"Loss name must be a non-empty string; got {name!r}.")
  if not callable(fn_factory):
    raise ValueError(
        f"fn_factory for {name!r} must be callable (**hparams -> loss_fn); "
        f"got {fn_factory!r}.")
  if name in _REGISTRY and not overwrite:
    raise ValueError(
        f"Loss {name!r} is already registered; pick another name or pass "
        "overwrite=True.")
  _REGISTRY[name] = fn_factory


def names() -> list[str]:
  """Sorted list of registered loss names."""
  return sorted(_REGISTRY)


def get(name: str, **hparams: Any) -> LossFn:
  """Returns the registered loss ``name`` with ``hparams`` bound.

  Args:
    name: one of ``names()``.
    **hparams: keyword hyperparameters of that loss, e.g. ``alpha`` for
      ``alpha``, ``eps``, ``confidence``, ``warmup``.

  Returns:
    ``loss_fn(student_logits [..., C], weak_probs [..., C], *, where=None,
    progress=None) -> [...]``, unreduced, float32.

  Raises:
    ValueError: unknown name (listing the known ones), unknown hparam (naming
      it and the accepted ones), or an out-of-range value.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown loss {name!r}. Known losses: {', '.join(names())}. "
        "Add your own with losses.register(name, factory).")
  factory = _REGISTRY[name]
  params = inspect.signature(factory).parameters
  takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
  if not takes_any:
    accepted = [n for n, p in params.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
      raise ValueError(
          f"Unknown hparam(s) {', '.join(map(repr, unknown))} for loss "
          f"{name!r}. It accepts: {', '.join(accepted) or 'none'}.")
  return factory(**hparams)


for _name, _fn in (
    ("kl", kl),
    ("reverse_kl", reverse_kl),
    ("js", js),
    ("hellinger", hellinger),
    ("pearson", pearson),
    ("neyman", neyman),
    ("tv", tv),
    ("jeffreys", jeffreys),
    ("alpha", alpha_divergence),
    ("xent", xent),
    ("logconf", logconf),
    ("reverse_xent", reverse_xent),
    ("product", product),
):
  register(_name, _builtin_factory(_fn))
del _name, _fn

F_DIVERGENCES = ("kl", "reverse_kl", "js", "hellinger", "pearson", "neyman",
                 "tv", "jeffreys", "alpha")
BASELINES = ("xent", "logconf", "reverse_xent", "product")
