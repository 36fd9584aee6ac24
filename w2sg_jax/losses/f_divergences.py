r"""f-divergence losses D_f(weak || student), and a builder for custom f.

Direction. With P = the weak label distribution and Q = softmax(student
logits), every loss here is

.. math::
  D_f(P \| Q) = \sum_c Q(c) \, f\!\left(\frac{P(c)}{Q(c)}\right),

so ``kl`` (f = t log t) is KL(weak || student) and ``reverse_kl``
(f = -log t) is KL(student || weak). :data:`GENERATORS` holds each built-in
loss's generator f, and :func:`alpha_generator` the alpha family's; the
built-in losses use closed forms that are more accurate than the generic
sum (see each docstring). Losses that need a probability floor follow the
epsilon convention of ``losses._common`` (clip at ``eps``, renormalise).

References:
  Yao et al., "On Weak-to-Strong Generalization and f-Divergence", 2025,
  arXiv:2506.03109.
  Liese and Vajda, "On Divergences and Informations in Statistics and
  Information Theory", IEEE Trans. Inf. Theory, 2006.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from w2sg_jax.losses import _common
from w2sg_jax.losses._common import (DEFAULT_EPS, MAX_EXPONENT, Array, LossFn,
                                     clipped_log_probs, safe_log)
from w2sg_jax.losses import confidence as confidence_lib
from w2sg_jax.losses.confidence import DEFAULT_WARMUP, run_loss

__all__ = [
    "GENERATORS",
    "alpha_divergence",
    "alpha_generator",
    "f_divergence",
    "hellinger",
    "jeffreys",
    "js",
    "kl",
    "neyman",
    "pearson",
    "reverse_kl",
    "tv",
    "validate_generator",
]


# ---------------------------------------------------------------------------
# Cores: (log_q [..., C], p [..., C]) -> [...], inputs already float32
# ---------------------------------------------------------------------------


def _kl_core(log_q, p):
  return jnp.sum(xlogy(p, p) - p * log_q, axis=-1)


def _reverse_kl_core(log_q, p, eps):
  log_p = clipped_log_probs(safe_log(p), eps)
  return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)


def _js_core(log_q, p):
  # log M = log((P + Q) / 2); finite because log Q is finite.
  log_m = jnp.logaddexp(safe_log(p), log_q) - math.log(2.0)
  kl_pm = jnp.sum(xlogy(p, p) - p * log_m, axis=-1)
  kl_qm = jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=-1)
  return 0.5 * (kl_pm + kl_qm)


def _hellinger_core(log_q, p):
  # Sum of squares rather than 2 - 2 sum sqrt(PQ): no cancellation near 0.
  return jnp.sum(jnp.square(jnp.sqrt(p) - jnp.exp(0.5 * log_q)), axis=-1)


def _pearson_core(log_q, p, eps):
  q = jnp.exp(clipped_log_probs(log_q, eps))
  return jnp.sum(jnp.square(p - q) / q, axis=-1)


def _neyman_core(log_q, p, eps):
  p_clipped = jnp.exp(clipped_log_probs(safe_log(p), eps))
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
  log_p = clipped_log_probs(safe_log(p), eps)
  log_q = clipped_log_probs(log_q, eps)
  p_c, q_c = jnp.exp(log_p), jnp.exp(log_q)
  u = log_p - log_q
  if alpha >= 0.5:
    beta = alpha - 1.0
    term = (p_c * jnp.expm1(beta * u) / beta - (p_c - q_c)) / alpha
  else:
    term = (q_c * jnp.expm1(alpha * u) / alpha - (p_c - q_c)) / (alpha - 1.0)
  return jnp.sum(term, axis=-1)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


@_common.doc
def kl(student_logits, weak_probs, *, where=None, progress=None,
       confidence=0.0, warmup=DEFAULT_WARMUP,
       confidence_schedule="linear"):
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
  return run_loss(_kl_core, student_logits, weak_probs, where,
                  progress, confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def reverse_kl(student_logits, weak_probs, *, where=None, progress=None,
               eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP,
               confidence_schedule="linear"):
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
  core = functools.partial(_reverse_kl_core, eps=eps)
  return run_loss(core, student_logits, weak_probs, where, progress,
                  confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def js(student_logits, weak_probs, *, where=None, progress=None,
       confidence=0.0, warmup=DEFAULT_WARMUP,
       confidence_schedule="linear"):
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
  return run_loss(_js_core, student_logits, weak_probs, where,
                  progress, confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def hellinger(student_logits, weak_probs, *, where=None, progress=None,
              confidence=0.0, warmup=DEFAULT_WARMUP,
              confidence_schedule="linear"):
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
  return run_loss(_hellinger_core, student_logits, weak_probs, where,
                  progress, confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def pearson(student_logits, weak_probs, *, where=None, progress=None,
            eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP,
            confidence_schedule="linear"):
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
  core = functools.partial(_pearson_core, eps=eps)
  return run_loss(core, student_logits, weak_probs, where, progress,
                  confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def neyman(student_logits, weak_probs, *, where=None, progress=None,
           eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP,
           confidence_schedule="linear"):
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
  core = functools.partial(_neyman_core, eps=eps)
  return run_loss(core, student_logits, weak_probs, where, progress,
                  confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def tv(student_logits, weak_probs, *, where=None, progress=None,
       confidence=0.0, warmup=DEFAULT_WARMUP,
       confidence_schedule="linear"):
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
  return run_loss(_tv_core, student_logits, weak_probs, where,
                  progress, confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def jeffreys(student_logits, weak_probs, *, where=None, progress=None,
             eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP,
             confidence_schedule="linear"):
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
  core = functools.partial(_jeffreys_core, eps=eps)
  return run_loss(core, student_logits, weak_probs, where, progress,
                  confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


def check_alpha(alpha, eps):
  if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
    raise ValueError(f"alpha must be a finite Python number; got {alpha!r}.")
  exponent = max(alpha - 1.0, -alpha, 0.0) * -math.log(eps)
  if exponent > MAX_EXPONENT:
    raise ValueError(
        f"alpha={alpha} with eps={eps} can reach exp({exponent:.0f}), which "
        "overflows float32. Use alpha in about "
        f"({-MAX_EXPONENT / -math.log(eps):.1f}, "
        f"{1 + MAX_EXPONENT / -math.log(eps):.1f}), or a larger eps.")


@_common.doc
def alpha_divergence(student_logits, weak_probs, *, where=None, progress=None,
                     alpha=0.5, eps=DEFAULT_EPS, confidence=0.0,
                     warmup=DEFAULT_WARMUP,
                     confidence_schedule="linear"):
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
              confidence=confidence, warmup=warmup,
              confidence_schedule=confidence_schedule)
  if alpha == 0:
    return reverse_kl(student_logits, weak_probs, where=where,
                      progress=progress, eps=eps, confidence=confidence,
                      warmup=warmup, confidence_schedule=confidence_schedule)
  check_alpha(alpha, eps)
  core = functools.partial(_alpha_core, alpha=float(alpha), eps=eps)
  return run_loss(core, student_logits, weak_probs, where, progress,
                  confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


# ---------------------------------------------------------------------------
# Generators and the custom-generator builder
# ---------------------------------------------------------------------------


def alpha_generator(alpha: float) -> Callable[[Array], Array]:
  r"""f_alpha(t) = (t^alpha - alpha t - (1 - alpha)) / (alpha (alpha - 1)).

  Computed as in ``alpha_divergence`` (``expm1`` in log space), so that it
  stays accurate near alpha = 0 and 1; at alpha = 1 and alpha = 0 it is the
  limit, t log t - t + 1 and -log t + t - 1 (KL and reverse KL: the linear
  terms add nothing to D_f).
  """
  alpha = float(alpha)
  if alpha == 1.0:
    return lambda t: xlogy(t, t) - t + 1.0
  if alpha == 0.0:
    return lambda t: -jnp.log(t) + t - 1.0
  if alpha >= 0.5:
    beta = alpha - 1.0
    return lambda t: (t * jnp.expm1(beta * jnp.log(t)) / beta
                      - (t - 1.0)) / alpha
  return lambda t: (jnp.expm1(alpha * jnp.log(t)) / alpha
                    - (t - 1.0)) / (alpha - 1.0)


# f for each built-in f-divergence (``alpha`` at its default alpha = 0.5).
GENERATORS: dict[str, Callable[[Array], Array]] = {
    "kl": lambda t: xlogy(t, t),
    "reverse_kl": lambda t: -jnp.log(t),
    "js": lambda t: 0.5 * (xlogy(t, t) - xlogy(1.0 + t, 0.5 * (1.0 + t))),
    "hellinger": lambda t: jnp.square(jnp.sqrt(t) - 1.0),
    "pearson": lambda t: jnp.square(t - 1.0),
    "neyman": lambda t: jnp.square(1.0 - t) / t,
    "tv": lambda t: 0.5 * jnp.abs(t - 1.0),
    "jeffreys": lambda t: (t - 1.0) * jnp.log(t),
    "alpha": alpha_generator(0.5),
}

# The convexity check's grid: dense on both sides of t = 1, over the ratios
# P~/Q~ a loss with eps ~ 1e-6 can produce.
GRID_DECADES = 6.0
GRID_POINTS = 6001  # 500 per decade
# A negative second difference is only refused beyond this many float
# roundings of the local values (see validate_generator).
CURVATURE_TOLERANCE = 64.0
F1_TOLERANCE = 1e-4


def validate_generator(f: Callable[[Array], Array], label: str = "f") -> None:
  r"""Checks numerically that f is a valid f-divergence generator.

  On a grid of t = logspace(-6, 6) with 6001 points (dense in (0, 1) and in
  (1, inf)), f is evaluated in float64 and must be

  * elementwise and finite;
  * zero at t = 1 (|f(1)| <= 1e-4);
  * convex: the second difference on the non-uniform grid,

    .. math::
      d_i = \frac{2}{h_- + h_+}\left(\frac{f(t_{i+1}) - f(t_i)}{h_+}
            - \frac{f(t_i) - f(t_{i-1})}{h_-}\right),

    must not fall below the rounding noise of the values it is made of,
    -64 u (|f(t_{i-1})|/h_- + |f(t_i)| (1/h_- + 1/h_+) + |f(t_{i+1})|/h_+)
    2 / (h_- + h_+), with u the machine epsilon of f's output dtype. The
    tolerance is local, so a small negative curvature is caught even where
    f is large elsewhere.

  Args:
    f: elementwise jnp function of t > 0.
    label: how f is named in error messages.

  Raises:
    ValueError: naming the property that fails, where, and the fix.
  """
  grid = np.logspace(-GRID_DECADES, GRID_DECADES, GRID_POINTS)
  span = f"t in [1e-{GRID_DECADES:.0f}, 1e{GRID_DECADES:.0f}]"
  try:
    with jax.enable_x64(True):
      raw = f(jnp.asarray(grid, jnp.float64))
      out_dtype = jnp.result_type(raw)
      values = np.asarray(raw, dtype=np.float64)
      at_one = float(np.asarray(f(jnp.asarray(1.0, jnp.float64))))
  except Exception as e:  # the user's function, any failure
    raise ValueError(
        f"Generator {label} failed on an array of {span}: {e!r}. Write f "
        "with jnp operations that act elementwise on an array t > 0.") from e
  if values.shape != grid.shape:
    raise ValueError(
        f"Generator {label} returned shape {values.shape} for t of shape "
        f"{grid.shape}; it must act elementwise.")
  bad = ~np.isfinite(values)
  if bad.any():
    raise ValueError(
        f"Generator {label} is not finite on {span} (e.g. "
        f"f({grid[bad][0]:.3g}) = {values[bad][0]}). An f-divergence "
        "generator must be finite for every t > 0.")
  if not abs(at_one) <= F1_TOLERANCE:
    raise ValueError(
        f"Generator {label} has f(1) = {at_one:.6g}, but f(1) must be 0 so "
        f"that D(P || P) = 0. Use f(t) - f(1), i.e. subtract {at_one:.6g}.")
  if not jnp.issubdtype(out_dtype, jnp.floating):
    out_dtype = jnp.float32
  unit = float(jnp.finfo(out_dtype).eps)
  h_lo = grid[1:-1] - grid[:-2]
  h_hi = grid[2:] - grid[1:-1]
  f_lo, f_mid, f_hi = values[:-2], values[1:-1], values[2:]
  width = 0.5 * (h_lo + h_hi)
  second = ((f_hi - f_mid) / h_hi - (f_mid - f_lo) / h_lo) / width
  noise = (np.abs(f_lo) / h_lo + np.abs(f_mid) * (1.0 / h_lo + 1.0 / h_hi)
           + np.abs(f_hi) / h_hi) / width
  concave = second < -CURVATURE_TOLERANCE * unit * noise
  if concave.any():
    t = grid[1:-1]
    i = int(np.argmax(concave))
    where_bad = t[concave]
    raise ValueError(
        f"Generator {label} is not convex: its second difference is "
        f"negative, f'' ~ {second[i]:.3g} at t = {t[i]:.4g}, and f'' < 0 on "
        f"{int(concave.sum())} of {t.size} grid points between t = "
        f"{where_bad.min():.3g} and t = {where_bad.max():.3g} (grid {span}). "
        "D_f is a divergence (>= 0) only for convex f; a non-convex f can "
        "make the loss negative and reward moving away from the weak "
        "labels. Use a convex generator, or pass check=False if you know "
        "better.")


def f_divergence(f: Callable[[Array], Array], *, name: Optional[str] = None,
                 eps: float = DEFAULT_EPS, check: bool = True,
                 confidence: float = 0.0, warmup: float = DEFAULT_WARMUP,
                 confidence_schedule: str = "linear") -> LossFn:
  r"""Builds a loss from any convex generator f with f(1) = 0.

  .. math::
    D_f(P \| Q) = \sum_c \tilde Q(c)\, f\!\left(\frac{\tilde P(c)}
                  {\tilde Q(c)}\right)

  P = weak, Q = softmax(student_logits); both are clipped at eps and
  renormalised (``losses._common``) so that t = P~ / Q~ lies in
  [~eps, ~1/eps] and f is never evaluated at 0 or infinity.

  To put it in the registry (``<name>+conf`` then works too)::

    losses.register(
        "mine", lambda **hp: losses.f_divergence(my_f, name="mine", **hp))

  Args:
    f: elementwise jnp function of t > 0, convex, with f(1) = 0.
    name: used in error messages and as the loss function's ``__name__``.
    eps: clip for both distributions.
    check: validate f numerically (``validate_generator``): finite on
      t in [1e-6, 1e6], f(1) = 0 within 1e-4, convex (second differences
      non-negative up to local rounding noise).
    confidence: weight of the confidence term (``losses.confidence``).
    warmup: fraction of training over which ``confidence`` is warmed up.
    confidence_schedule: ``"linear"`` or ``"burns"``
      (``losses.confidence_weight``).

  Returns:
    ``loss_fn(student_logits [..., C], weak_probs [..., C], *, where=None,
    progress=None) -> [...]``.

  Raises:
    ValueError: naming the property f fails, where, and how to fix it.
  """
  if not callable(f):
    raise ValueError(f"f must be a callable jnp function of t; got {f!r}.")
  label = repr(name) if name else getattr(f, "__name__", "f")
  _common.check_eps(eps)
  confidence_lib.check_hparams(confidence, warmup, confidence_schedule)
  if check:
    validate_generator(f, label)

  def core(log_q, p):
    log_p = clipped_log_probs(safe_log(p), eps)
    log_q = clipped_log_probs(log_q, eps)
    return jnp.sum(jnp.exp(log_q) * f(jnp.exp(log_p - log_q)), axis=-1)

  def loss_fn(student_logits, weak_probs, *, where=None, progress=None):
    return run_loss(core, student_logits, weak_probs, where, progress,
                    confidence=confidence, warmup=warmup,
                    schedule=confidence_schedule)

  loss_fn.__name__ = name or f"f_divergence({label})"
  loss_fn.__doc__ = f"f-divergence D_f(weak || student) with generator {label}."
  return loss_fn
