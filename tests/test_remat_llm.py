"""Rematerialisation of Llama/Qwen2 and GPT-NeoX blocks changes memory, never numbers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2sg_jax import models
from w2sg_jax.models import remat as remat_lib

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "models")


_CASES = [pytest.param("tiny_llama", "full")] + [  # One fast case; the rest run in the slow suite.
    pytest.param(f, m, marks=pytest.mark.slow)
    for f, m in [("tiny_llama", "block"), ("tiny_qwen2", "block"), ("tiny_qwen2", "full"),
                 ("tiny_neox", "block"), ("tiny_neox", "full")]
]


@pytest.mark.parametrize("fixture,mode", _CASES)
def test_remat_equals_no_remat_in_values_and_gradients(fixture, mode):
  encoder, _ = models.load_pretrained(os.path.join(FIXTURES, fixture))
  graphdef, state = nnx.split(encoder)
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 250, (2, 10)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, :3].set(0)

  def loss(state, remat):
    model = nnx.merge(graphdef, state)
    remat_lib.set_remat(model, remat)
    h = model(ids, mask)
    return jnp.mean(jnp.where(mask[..., None] > 0, h, 0.0) ** 2)

  plain_value, plain_grad = jax.jit(jax.value_and_grad(lambda s: loss(s, "none")))(state)
  value, grad = jax.jit(jax.value_and_grad(lambda s: loss(s, mode)))(state)
  np.testing.assert_allclose(value, plain_value, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(plain_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_remat_mode_is_a_clear_error():
  encoder, _ = models.load_pretrained(os.path.join(FIXTURES, "tiny_llama"))
  with pytest.raises(ValueError, match="rematerialisation mode"):
    remat_lib.set_remat(encoder, "sometimes")
