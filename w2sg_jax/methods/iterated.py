r"""Iterated procedures: a model's predictions become the next round's labels.

Bootstrapping (Burns et al. 2023, weak -> intermediate -> strong) and
strong-to-strong rounds (EleutherAI/w2s's ``s2s_iters``: the student relabels
its own ``w2s_train``) share one step: a trained model's logits on
``w2s_train`` are turned into a label store that supervises the next model.
This module holds that step and a convergence diagnostic; the training and
the store writing belong to the pipeline.

Convention: numpy in, numpy out; float64 inside, float32 out (a store).

.. math::
  q^{(r+1)}_i = \operatorname{softmax}(z^{(r)}_i / T) \quad\text{or, hardened,}
  \quad \operatorname{onehot}(\arg\max_c z^{(r)}_i(c)).

References:
  Burns et al., *Weak-to-strong generalization: eliciting strong
  capabilities with weak supervision*, arXiv 2312.09390 (2023), bootstrapping
  with intermediate model sizes.
  EleutherAI/w2s, ``sft_config.py`` (``s2s_iters``: strong-to-strong rounds).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from w2sg_jax.methods import _common

__all__ = ["label_change_fraction", "student_store_probs"]


def student_store_probs(logits_NxC: Any, *, harden: bool = False,
                        temperature: float = 1.0) -> np.ndarray:
  r"""A model's logits on ``w2s_train`` -> the next round's label probabilities.

  .. math::
    q_i(c) = \frac{\exp(z_i(c) / T)}{\sum_{c'} \exp(z_i(c') / T)},

  computed stably (max-subtracted, in float64), or with ``harden=True`` the
  one-hot of :math:`\arg\max_c z_i(c)` (ties to the lower class index;
  ``temperature`` does not change it).

  Args:
    logits_NxC: ``[N, C]`` finite logits, C >= 2.
    harden: return one-hot labels instead of the softmax.
    temperature: T > 0; T > 1 softens, T < 1 sharpens.

  Returns:
    float32 ``[N, C]`` rows summing to 1.

  Raises:
    ValueError: bad shape, non-finite logits, T <= 0.
  """
  z = np.asarray(logits_NxC)
  if z.ndim != 2 or z.shape[1] < 2 or z.shape[0] < 1:
    raise ValueError(
        f"logits_NxC must have shape [N, C] with N >= 1 and C >= 2; got "
        f"{z.shape}. For a reward margin use losses.margin_to_logits(z).")
  if not np.issubdtype(z.dtype, np.number) or np.issubdtype(
      z.dtype, np.complexfloating):
    raise ValueError(f"logits_NxC must be real numbers; got {z.dtype}.")
  z = z.astype(np.float64)
  if not np.isfinite(z).all():
    raise ValueError("logits_NxC must be finite; found NaN or inf (did the "
                     "student diverge?).")
  if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
      or not (math.isfinite(temperature) and temperature > 0)):
    raise ValueError(f"temperature must be a float > 0; got {temperature!r}.")
  if harden:
    return np.eye(z.shape[1], dtype=np.float32)[z.argmax(axis=-1)]
  z = z / temperature
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return _common.normalize_rows(e).astype(np.float32)


def label_change_fraction(previous_NxC: Any, current_NxC: Any) -> float:
  """Fraction of rows whose argmax label changed between two rounds.

  A diagnostic for strong-to-strong rounds: 0 means the last round relabelled
  nothing (a fixed point of hard relabelling).

  Args:
    previous_NxC: ``[N, C]`` label probabilities of round r.
    current_NxC: ``[N, C]`` label probabilities of round r + 1.

  Returns:
    A float in [0, 1].
  """
  prev = _common.check_probs(previous_NxC, "previous_NxC", ndim=2)
  cur = _common.check_probs(current_NxC, "current_NxC", ndim=2)
  if prev.shape != cur.shape:
    raise ValueError(f"previous_NxC {prev.shape} and current_NxC {cur.shape} "
                     "must have the same shape [N, C].")
  return float(np.mean(prev.argmax(axis=-1) != cur.argmax(axis=-1)))
