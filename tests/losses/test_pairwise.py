"""Reward margins as 2-class logits and Bradley-Terry probabilities."""

import jax
import numpy as np
from scipy import special

from w2sg_jax import losses


def test_margin_to_logits_and_preference_probs():
  z = np.array([-100.0, -30.0, -2.0, 0.0, 0.5, 30.0, 100.0], np.float32)
  logits = losses.margin_to_logits(z)
  assert logits.shape == (7, 2)
  np.testing.assert_allclose(jax.nn.softmax(logits)[:, 1], special.expit(z),
                             rtol=1e-6, atol=0)
  probs = losses.preference_probs(z)
  np.testing.assert_allclose(probs[:, 1], special.expit(z), rtol=1e-6, atol=0)
  # The small class stays accurate (1 - sigmoid(30) would round to 0).
  np.testing.assert_allclose(probs[:, 0], special.expit(-z), rtol=1e-6, atol=0)
  # A student that reproduces the weak margin has zero divergence.
  np.testing.assert_allclose(losses.get("kl")(logits, probs), 0.0, atol=1e-6)
  nested = losses.margin_to_logits(z.reshape(7, 1))
  assert nested.shape == (7, 1, 2)


def test_every_loss_takes_margins():
  z_weak = np.linspace(-6.0, 6.0, 32).astype(np.float32)
  z_student = z_weak[::-1].copy()
  for name in losses.names():
    values = losses.get(name)(losses.margin_to_logits(z_student),
                              losses.preference_probs(z_weak), progress=0.5)
    assert values.shape == (32,) and np.isfinite(np.asarray(values)).all()
