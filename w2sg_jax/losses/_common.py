r"""Shared numerics of the loss package: input preparation, clipped logs, eps.

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

Numerics. Inputs may be bf16; everything is computed in float32 (float64
inputs stay float64), in log space (``log_softmax``, ``logaddexp``, ``xlogy``).

Input checks. :func:`check_inputs` validates concrete weak probabilities
(non-negative, summing to 1 within 1e-2) on the host; the registry runs it on
every eager call of a loss returned by ``losses.get``. Static shape errors
(class count, C < 2, ``where`` shape) are raised by :func:`prepare` on every
call, traced or not.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LossFn = Callable[..., Array]

DEFAULT_EPS = 1e-7
# exp() of anything above ~88.7 overflows float32; keep margin for gradients.
MAX_EXPONENT = 80.0
# Weak probabilities must sum to 1 within this. Not tighter: a distribution
# rounded to bf16 (or a softmax computed in bf16), even if cast to float32
# afterwards, is off by up to ~4e-3; a real mistake (scores, not
# probabilities; the wrong axis) is off by far more.
SUM_TOLERANCE = 1e-2

_SHAPE_HINT = ("For hard weak labels pass jax.nn.one_hot(labels, C); for "
               "reward margins use margin_to_logits(z) and "
               "preference_probs(z).")


def compute_dtype(dtype) -> jnp.dtype:
  """float32 for bf16/f16/f32 inputs; float64 stays float64."""
  return jnp.promote_types(dtype, jnp.float32)


def _check_shapes(logits_shape, weak_shape) -> None:
  """Static shape checks, shared by prepare and check_inputs."""
  if len(logits_shape) < 1:
    raise ValueError(
        "student_logits must have a class axis, shape [..., C]; got a scalar. "
        "For a pairwise reward margin use margin_to_logits(z).")
  if len(weak_shape) < 1 or logits_shape[-1] != weak_shape[-1]:
    got = weak_shape[-1] if weak_shape else "no"
    raise ValueError(
        f"weak_probs has {got} classes (shape {tuple(weak_shape)}) but "
        f"student_logits has {logits_shape[-1]} (shape "
        f"{tuple(logits_shape)}); both need the same class axis C last. "
        + _SHAPE_HINT)
  if tuple(logits_shape) != tuple(weak_shape):
    raise ValueError(
        f"student_logits {tuple(logits_shape)} and weak_probs "
        f"{tuple(weak_shape)} must have the same shape [..., C]. "
        + _SHAPE_HINT)
  if logits_shape[-1] < 2:
    raise ValueError(
        f"student_logits and weak_probs have a single class (shape "
        f"{tuple(logits_shape)}, C = 1): every loss would be 0 for every "
        "example. A loss needs C >= 2 classes; for one probability p per "
        "example pass [1 - p, p], and for a reward margin z pass "
        "margin_to_logits(z) and preference_probs(z).")


def _broadcast_where(where, batch_shape):
  where = jnp.asarray(where)
  try:
    return jnp.broadcast_to(where.astype(bool), batch_shape)
  except ValueError:
    raise ValueError(
        f"where has shape {where.shape}, which does not broadcast to the "
        f"batch shape {batch_shape} (student_logits without the class "
        "axis). Pass one boolean per example.") from None


def prepare(student_logits, weak_probs, where):
  """Casts to the compute dtype, checks shapes, neutralises masked examples.

  Returns:
    (logits, weak, mask) with shapes ``[..., C]``, ``[..., C]`` and ``[...]``
    (``mask`` is None when ``where`` is None).
  """
  student_logits = jnp.asarray(student_logits)
  weak_probs = jnp.asarray(weak_probs)
  _check_shapes(student_logits.shape, weak_probs.shape)
  dtype = compute_dtype(
      jnp.promote_types(student_logits.dtype, weak_probs.dtype))
  logits = student_logits.astype(dtype)
  weak = weak_probs.astype(dtype)
  mask = None
  if where is not None:
    mask = _broadcast_where(where, logits.shape[:-1])
    # Replace masked inputs so NaN/inf padding cannot leak into values or
    # gradients (a 0 * NaN in the backward pass is still NaN).
    num_classes = logits.shape[-1]
    logits = jnp.where(mask[..., None], logits, 0.0)
    weak = jnp.where(mask[..., None], weak, 1.0 / num_classes)
  return logits, weak, mask


def run(core: Callable[[Array, Array], Array], student_logits, weak_probs,
        where, progress, transform=None):
  """Shared driver: prepare inputs, transform the target, apply, mask output.

  Args:
    core: ``(log_q [..., C], p [..., C]) -> [...]`` on prepared inputs.
    student_logits, weak_probs, where, progress: as in the loss contract.
    transform: optional target transform ``(logits, weak, mask, progress) ->
      target [..., C]`` (the confidence term), or None.

  Returns:
    ``[...]`` per-example values, exactly 0 where ``where`` is False.
  """
  logits, weak, mask = prepare(student_logits, weak_probs, where)
  if transform is not None:
    weak = transform(logits, weak, mask, progress)
  out = core(jax.nn.log_softmax(logits, axis=-1), weak)
  if mask is not None:
    out = jnp.where(mask, out, 0.0)
  return out


def clipped_log_probs(log_probs, eps):
  r"""log of the clipped, renormalised distribution max(R, eps) / sum(...)."""
  clipped = jnp.maximum(log_probs, math.log(eps))
  return clipped - jax.nn.logsumexp(clipped, axis=-1, keepdims=True)


def safe_log(probs):
  """log(probs) with log 0 = -inf, and no NaN in any gradient path."""
  positive = probs > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, probs, 1.0)),
                   -jnp.inf)


# ---------------------------------------------------------------------------
# Hparam and input checks
# ---------------------------------------------------------------------------


def check_eps(eps) -> None:
  if (isinstance(eps, bool) or not isinstance(eps, (int, float))
      or not 0 < eps <= 1e-2):
    raise ValueError(
        f"eps must be a Python float in (0, 1e-2]; got {eps!r}. It is the "
        "probability floor that keeps log 0 and x / 0 finite (default 1e-7).")


def is_concrete(x) -> bool:
  """True for host-readable values: not a tracer, and fully addressable."""
  if x is None:
    return True
  if isinstance(x, jax.core.Tracer):
    return False
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return False  # Another process holds part of it: nothing to read here.
  return True


def _format_row(row: np.ndarray) -> str:
  """[0.1, 0.9] (at most 12 values: the first and last 4 of a longer row)."""
  values = [f"{v:.6g}" for v in row]
  if len(values) > 12:
    values = values[:4] + ["..."] + values[-4:]
  return "[" + ", ".join(values) + "]"


def check_inputs(student_logits, weak_probs, where=None, *,
                 name: str = "loss") -> None:
  """Raises ValueError unless the weak labels are valid distributions.

  Checks, on concrete inputs (the caller skips tracers): the shapes (as in
  :func:`prepare`), and that every valid row of ``weak_probs`` is
  non-negative (no NaN) and sums to 1 within 1e-2 (``SUM_TOLERANCE``). Rows
  with ``where = False`` are not checked.

  Args:
    student_logits: ``[..., C]``; only its shape is read.
    weak_probs: ``[..., C]`` concrete weak label probabilities.
    where: optional bool ``[...]`` (concrete).
    name: the loss name, for the message.

  Raises:
    ValueError: naming the first bad row (index and values), how many rows
      are bad, and the fix.
  """
  logits_shape = tuple(np.shape(student_logits))
  weak = np.asarray(weak_probs)
  _check_shapes(logits_shape, weak.shape)
  batch_shape = weak.shape[:-1]
  if where is None:
    valid = np.ones(batch_shape, bool)
  else:
    valid = np.asarray(_broadcast_where(where, batch_shape))
  tol = SUM_TOLERANCE
  weak64 = weak.astype(np.float64)
  # NaN compares False, so it counts as negative here.
  negative = ~np.all(weak64 >= 0, axis=-1) & valid
  sums = weak64.sum(axis=-1)
  off = ~(np.abs(sums - 1.0) <= tol) & valid
  bad = negative | off
  if not bad.any():
    return
  index = tuple(int(i) for i in np.unravel_index(
      int(np.argmax(bad.reshape(-1))), batch_shape))
  row_txt = (f"row {index[0]}" if len(index) == 1
             else f"row {index} (batch shape {batch_shape})")
  if negative[index]:
    detail = "has a negative or NaN entry"
  else:
    detail = f"sums to {sums[index]:.6g}, not 1 (tolerance {tol:.1g})"
  raise ValueError(
      f"Loss {name!r}: weak_probs {row_txt} = {_format_row(weak64[index])} "
      f"{detail} ({int(bad.sum())} of {int(valid.sum())} checked rows are "
      "not probability distributions). weak_probs must be non-negative and "
      "sum to 1 over the last axis. Fix: pass softmax(weak_logits), "
      "p / p.sum(-1, keepdims=True) for unnormalised scores, or "
      "jax.nn.one_hot(labels, C) for hard labels; mark padding rows with "
      "where=False; or skip this check with losses.get(..., check=False).")


def with_input_check(loss_fn: LossFn, name: str) -> LossFn:
  """Wraps ``loss_fn`` so that eager calls run :func:`check_inputs` first.

  The check reads ``weak_probs`` and ``where`` on the host; when either is a
  tracer (inside ``jit``, ``vmap``, ``grad`` of them) it is skipped and the
  wrapped function is traced unchanged.
  """

  def checked(student_logits, weak_probs, *, where=None, progress=None):
    if is_concrete(weak_probs) and is_concrete(where):
      check_inputs(student_logits, weak_probs, where, name=name)
    return loss_fn(student_logits, weak_probs, where=where, progress=progress)

  return checked


COMMON_ARGS = """
  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in
      float32), C >= 2.
    weak_probs: ``[..., C]`` weak label probabilities, summing to 1 over C;
      exact 0 and 1 are fine.
    where: optional bool ``[...]``; False entries return 0 and are left out of
      batch statistics.
    progress: optional training progress in [0, 1] for the confidence term;
      None means fully warmed up.
    confidence: weight of the hard-student target (0 turns the term off).
    warmup: fraction of training over which ``confidence`` is warmed up.
    confidence_schedule: ``"linear"`` (continuous ramp, the default) or
      ``"burns"`` (the Burns et al. release: ramp, then a jump at ``warmup``);
      see ``losses.confidence_weight``."""


def doc(fn):
  """Fills ``{common_args}`` in a loss docstring."""
  fn.__doc__ = fn.__doc__.replace("{common_args}", COMMON_ARGS.strip("\n"))
  return fn
