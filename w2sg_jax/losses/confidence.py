r"""The confidence term of Burns et al. (2023), as a target transform.

The transform replaces the weak target P of any loss by

.. math::
  P_a = (1 - a) P + a \, \mathrm{hard}(Q),

where Q = softmax(student_logits), ``hard`` is a stop-gradient one-hot label
from the student (:func:`hard_student_labels`) and a is warmed up over
training by one of two schedules (:func:`confidence_weight`):

* ``"linear"`` (the default for ``confidence=``): a = confidence *
  min(1, progress / warmup), continuous in ``progress``;
* ``"burns"`` (the default of the ``<loss>+conf`` names): the Burns et al.
  release, a = confidence * progress while progress <= warmup, after which a
  jumps to ``confidence``.

The registry composes the transform with any registered loss
(``losses.get(name, confidence=..., warmup=..., confidence_schedule=...)``);
:func:`with_confidence` does the same for a loss function you hold.

References:
  Burns et al., "Weak-to-Strong Generalization: Eliciting Strong Capabilities
  With Weak Supervision", 2023, arXiv:2312.09390 (``logconf_loss_fn``).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from w2sg_jax.losses import _common

DEFAULT_WARMUP = 0.2
LOGCONF_CONFIDENCE = 0.75
SCHEDULES = ("linear", "burns")
# Keyword hparams of the term; the registry accepts them for every loss.
HPARAMS = ("confidence", "warmup", "confidence_schedule")
# The defaults of the Burns et al. (2023) release (logconf_loss_fn:
# aux_coef=0.5, warmup_frac=0.1, coef = step_frac until warmup_frac, then 1),
# bound by every ``<loss>+conf`` registry name.
BURNS_RELEASE = {"confidence": 0.5, "warmup": 0.1,
                 "confidence_schedule": "burns"}

Transform = Callable[..., jax.Array]


def check_hparams(confidence, warmup, schedule) -> None:
  """Raises ValueError for an out-of-range confidence, warmup or schedule."""
  if isinstance(confidence, (int, float)) and not 0 <= confidence <= 1:
    raise ValueError(
        f"confidence must be in [0, 1]; got {confidence!r}. It is the weight "
        "of the hard student labels in the target (Burns et al. use 0.5 in "
        "their release, 0.75 in the paper).")
  if (isinstance(warmup, bool) or not isinstance(warmup, (int, float))
      or not 0 <= warmup <= 1):
    raise ValueError(
        f"warmup must be a fraction of training in [0, 1]; got {warmup!r}.")
  if schedule not in SCHEDULES:
    raise ValueError(
        f"confidence_schedule must be one of {', '.join(map(repr, SCHEDULES))}"
        f"; got {schedule!r}. 'linear' ramps continuously; 'burns' "
        "reproduces the Burns et al. release (ramp, then a jump).")


def confidence_weight(progress=None, *, confidence: float,
                      warmup: float = DEFAULT_WARMUP,
                      schedule: str = "linear"):
  r"""Mixing weight ``a`` of the confidence term at a point in training.

  ``schedule="linear"``:

  .. math::
    a = \mathrm{confidence} \cdot \mathrm{clip}(\mathrm{progress} /
        \mathrm{warmup}, 0, 1),

  continuous in ``progress``: it rises linearly from 0 and reaches
  ``confidence`` at ``progress = warmup``.

  ``schedule="burns"`` (the Burns et al. release, ``logconf_loss_fn``:
  ``coef = 1.0 if step_frac > warmup_frac else step_frac``):

  .. math::
    a = \mathrm{confidence} \cdot
        \begin{cases} \mathrm{progress} & \mathrm{progress} \le
        \mathrm{warmup} \\ 1 & \mathrm{progress} > \mathrm{warmup}
        \end{cases}

  which reaches only ``confidence * warmup`` during warm-up and then jumps
  to ``confidence``.

  Args:
    progress: training progress in [0, 1], a Python float or a traced scalar;
      None means fully warmed up (a = confidence).
    confidence: final weight of the hard student labels, in [0, 1].
    warmup: fraction of training over which the weight is warmed up; 0 means
      none (for ``"burns"``, a = 0 at exactly progress = 0, as in the
      release).
    schedule: ``"linear"`` or ``"burns"``.

  Returns:
    Scalar weight ``a``.
  """
  if schedule not in SCHEDULES:
    check_hparams(0.0, 0.0, schedule)  # raises, naming the choices
  if progress is None:
    return jnp.asarray(confidence, jnp.float32)
  progress = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  if schedule == "burns":
    return confidence * jnp.where(progress > warmup, 1.0, progress)
  if warmup == 0:
    return jnp.asarray(confidence, jnp.float32) * jnp.ones_like(progress)
  return confidence * jnp.clip(progress / warmup, 0.0, 1.0)


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


def confidence_target(logits, weak, mask=None, progress=None, *,
                      confidence: float, warmup: float = DEFAULT_WARMUP,
                      schedule: str = "linear"):
  r"""The mixed target P_a = (1 - a) P + a hard(Q) (module docstring).

  Args:
    logits: ``[..., C]`` student logits (already in the compute dtype).
    weak: ``[..., C]`` weak label probabilities.
    mask: optional bool ``[...]`` of valid examples (batch statistics).
    progress: training progress in [0, 1], or None (fully warmed up).
    confidence, warmup, schedule: as in :func:`confidence_weight`.

  Returns:
    ``[..., C]`` target probabilities, in ``weak.dtype``.
  """
  a = confidence_weight(progress, confidence=confidence, warmup=warmup,
                        schedule=schedule).astype(weak.dtype)
  hard = hard_student_labels(logits, weak, mask)
  return (1.0 - a) * weak + a * hard


def target_transform(*, confidence, warmup: float = DEFAULT_WARMUP,
                     schedule: str = "linear") -> Optional[Transform]:
  """``(logits, weak, mask, progress) -> target``, or None when confidence = 0.

  The form ``_common.run`` takes as ``transform``.
  """
  if isinstance(confidence, (int, float)) and confidence == 0:
    return None

  def transform(logits, weak, mask, progress):
    return confidence_target(logits, weak, mask, progress,
                             confidence=confidence, warmup=warmup,
                             schedule=schedule)

  return transform


def with_confidence(loss_fn: _common.LossFn, *, confidence: float,
                    warmup: float = DEFAULT_WARMUP,
                    schedule: str = "linear") -> _common.LossFn:
  r"""Composes the confidence term with any loss function.

  .. math::
    L_a(\mathrm{logits}, P) = L(\mathrm{logits}, P_a), \quad
    P_a = (1 - a) P + a\, \mathrm{sg}[\mathrm{hard}(Q)].

  Args:
    loss_fn: ``loss_fn(student_logits, weak_probs, *, where=None,
      progress=None) -> [...]``, following the package contract.
    confidence, warmup, schedule: as in :func:`confidence_weight`.

  Returns:
    A loss function with the same contract. With ``confidence == 0`` it is
    ``loss_fn`` itself.
  """
  check_hparams(confidence, warmup, schedule)
  transform = target_transform(confidence=confidence, warmup=warmup,
                               schedule=schedule)
  if transform is None:
    return loss_fn

  def composed(student_logits, weak_probs, *, where=None, progress=None):
    logits, weak, mask = _common.prepare(student_logits, weak_probs, where)
    target = transform(logits, weak, mask, progress)
    return loss_fn(logits, target, where=mask, progress=progress)

  composed.__name__ = getattr(loss_fn, "__name__", "loss_fn")
  composed.__doc__ = getattr(loss_fn, "__doc__", None)
  return composed


def run_loss(core, student_logits, weak_probs, where, progress, *,
             confidence, warmup: float = DEFAULT_WARMUP,
             schedule: str = "linear"):
  """``_common.run`` with the confidence transform built from its hparams."""
  transform = target_transform(confidence=confidence, warmup=warmup,
                               schedule=schedule)
  return _common.run(core, student_logits, weak_probs, where, progress,
                     transform)
