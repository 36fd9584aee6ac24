"""Extremes, dtypes, transforms and masking, for every registered base loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from tests.losses import _reference as ref
from w2sg_jax import losses


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", ref.BASE_NAMES)
def test_finite_values_and_gradients_at_extremes(name, c):
  logits, weak = ref.extreme_inputs(c)
  for hp, progress in (({}, None), ({"confidence": 0.5}, 0.1)):
    if name == "logconf":
      hp = {}
    loss = losses.get(name, **hp)
    value, grad = jax.value_and_grad(
        lambda x: jnp.sum(loss(x, weak, progress=progress)))(logits)
    assert np.isfinite(np.asarray(loss(logits, weak, progress=progress))).all()
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all(), name


@pytest.mark.parametrize("name", ["kl", "js", "pearson", "logconf", "alpha"])
def test_bf16_inputs(name):
  logits, p = ref.inputs("random", 10)
  loss = losses.get(name)
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  out = loss(logits_bf16, jnp.asarray(p, jnp.bfloat16))
  assert out.dtype == jnp.float32
  exact = loss(logits_bf16.astype(jnp.float32),
               jnp.asarray(p, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(out, exact, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out, loss(logits, p), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("name", ref.BASE_NAMES + ["js+conf"])
def test_jit_vmap_grad_agree_with_eager(name):
  loss = (losses.get(name) if name in ("logconf", "js+conf")
          else losses.get(name, confidence=0.0))
  logits, p = ref.inputs("random", 2)
  logits3, p3 = logits.reshape(4, 16, 2), p.reshape(4, 16, 2)
  eager = loss(logits, p, progress=0.05)
  jitted = jax.jit(lambda x, w, t: loss(x, w, progress=t))(logits, p, 0.05)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)
  # vmap over an extra axis: each slice is its own batch.
  vmapped = jax.vmap(lambda x, w: loss(x, w, progress=0.05))(logits3, p3)
  looped = np.stack([loss(logits3[i], p3[i], progress=0.05) for i in range(4)])
  np.testing.assert_allclose(vmapped, looped, rtol=1e-5, atol=1e-7)
  grad_fn = jax.grad(lambda x: jnp.sum(loss(x, p, progress=0.05)))
  np.testing.assert_allclose(jax.jit(grad_fn)(logits), grad_fn(logits),
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,hp,order", [
    ("kl", {}, 2), ("js", {}, 1), ("alpha", {"alpha": 1 + 1e-4}, 1),
    ("reverse_kl", {}, 1), ("logconf", {}, 1)])
def test_check_grads(name, hp, order):
  with jax.enable_x64(True):
    logits, p = ref.inputs("random", 4, n=6)
    logits, p = jnp.asarray(logits, jnp.float64), jnp.asarray(p, jnp.float64)
    loss = losses.get(name, **hp)
    assert loss(logits, p).dtype == jnp.float64
    check_grads(lambda x: loss(x, p, progress=0.1), (logits,), order=order,
                modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", ref.BASE_NAMES + ["js+conf"])
def test_where_agrees_with_slicing(name, c):
  logits, p = ref.inputs("random", c)
  mask = np.random.default_rng(0).random(64) < 0.6
  # Padding may hold anything, NaN included (and it is not checked).
  logits[~mask] = np.nan
  p[~mask] = np.nan
  hp = {} if name in ("logconf", "js+conf") else {"confidence": 0.5}
  loss = losses.get(name, **hp)
  masked = np.asarray(loss(logits, p, where=mask, progress=0.3))
  sliced = np.asarray(loss(logits[mask], p[mask], progress=0.3))
  np.testing.assert_allclose(masked[mask], sliced, rtol=1e-6, atol=1e-7)
  assert (masked[~mask] == 0).all()
  grad = jax.grad(
      lambda x: jnp.sum(loss(x, p, where=mask, progress=0.3)))(logits)
  assert np.isfinite(np.asarray(grad)).all() and (grad[~mask] == 0).all()


def test_logconf_batch_is_all_leading_axes():
  logits, p = ref.inputs("random", 2)
  mask = np.random.default_rng(0).random(64) < 0.6  # as in the test above
  loss = losses.get("logconf")
  nested = loss(logits.reshape(4, 16, 2), p.reshape(4, 16, 2),
                where=mask.reshape(4, 16))
  flat = loss(logits[mask], p[mask])
  np.testing.assert_allclose(np.asarray(nested).reshape(-1)[mask], flat,
                             rtol=1e-6)
  np.testing.assert_allclose(flat, ref.ref_loss("logconf", logits[mask],
                                                p[mask]), rtol=1e-5)
