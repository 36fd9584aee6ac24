"""Baselines (xent, logconf, reverse_xent, product) against references."""

import jax
import numpy as np
import optax
import pytest

from tests.losses import _reference as ref
from w2sg_jax import losses


@pytest.mark.parametrize("kind", ["random", "near_det"])
@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", ref.BASELINES)
def test_matches_reference(name, c, kind):
  logits, p = ref.inputs(kind, c)
  got = np.asarray(losses.get(name)(logits, p))
  assert got.dtype == np.float32 and got.shape == (64,)
  want = ref.ref_loss(name, logits, p)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_xent_and_kl_agree_with_optax():
  logits, p = ref.inputs("random", 10)
  np.testing.assert_allclose(losses.get("xent")(logits, p),
                             optax.softmax_cross_entropy(logits, p), rtol=1e-6)
  np.testing.assert_allclose(
      losses.get("kl")(logits, p),
      optax.losses.kl_divergence(jax.nn.log_softmax(logits), p),
      rtol=1e-5, atol=1e-7)


def test_kl_gradient_is_q_minus_p():
  logits, p = ref.inputs("random", 10)
  grad = jax.grad(lambda x: losses.get("kl")(x, p).sum())(logits)
  np.testing.assert_allclose(grad, ref.q_of(logits) - p, atol=1e-6)


def test_direct_functions_match_the_registry():
  logits, p = ref.inputs("random", 2, seed=1)
  for name, fn in (("xent", losses.xent), ("logconf", losses.logconf),
                   ("reverse_xent", losses.reverse_xent),
                   ("product", losses.product)):
    np.testing.assert_allclose(fn(logits, p, progress=0.1),
                               losses.get(name)(logits, p, progress=0.1),
                               rtol=1e-6, atol=1e-7)
