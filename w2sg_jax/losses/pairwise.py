r"""Pairwise (reward-model) helpers: a reward margin as 2-class logits.

A reward head scores both responses of a pair; the margin
z = r_chosen - r_rejected becomes the logits ``[0, z]`` and the weak model's
margin the Bradley-Terry probabilities ``[sigma(-z), sigma(z)]``, so every
loss of the package applies unchanged (class 1 = "chosen preferred").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["margin_to_logits", "preference_probs"]


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
