"""Input checks of the losses returned by ``losses.get``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.losses import _reference as ref
from w2sg_jax import losses


def _valid(c=2, n=8, seed=0):
  return ref.inputs("random", c, n=n, seed=seed)


@pytest.mark.parametrize("name", ["js", "kl+conf", "logconf", "alpha"])
def test_negative_probability_names_the_row(name):
  logits, p = _valid()
  p[3] = [-0.1, 1.1]  # sums to 1, but is not a distribution
  with pytest.raises(ValueError) as e:
    losses.get(name)(logits, p)
  msg = str(e.value)
  assert f"Loss {name!r}" in msg and "row 3 " in msg
  assert "-0.1" in msg and "1.1" in msg and "negative" in msg
  assert "softmax" in msg and "check=False" in msg  # the fixes


def test_row_not_summing_to_one_names_the_row():
  logits, p = _valid()
  p[5] = [0.6, 0.6]
  p[6] = [0.2, 0.2]
  with pytest.raises(ValueError, match=r"row 5 .*sums to 1\.2, not 1") as e:
    losses.get("js")(logits, p)
  assert "2 of 8 checked rows" in str(e.value)
  # Within the 1e-2 tolerance: accepted; beyond it: refused.
  p = _valid()[1]
  p[2] = [0.504, 0.504]
  losses.get("js")(logits, p)
  p[2] = [0.506, 0.506]
  with pytest.raises(ValueError, match="row 2 "):
    losses.get("js")(logits, p)


def test_nan_probability_and_nested_batches_name_the_row():
  logits, p = _valid(n=64)
  logits, p = logits.reshape(4, 16, 2), p.reshape(4, 16, 2)
  p[1, 2] = [np.nan, 1.0]
  with pytest.raises(ValueError, match=r"row \(1, 2\) \(batch shape \(4, 16\)\)"
                     r" = \[nan, 1\]"):
    losses.get("xent")(logits, p)


def test_class_count_mismatch_is_refused():
  logits, _ = _valid(c=2)
  _, p = _valid(c=3)
  with pytest.raises(ValueError, match=r"weak_probs has 3 classes.*"
                     r"student_logits has 2"):
    losses.get("kl")(logits, p)
  with pytest.raises(ValueError, match="3 classes"):  # even under jit
    jax.jit(losses.get("kl"))(logits, p)


def test_single_class_is_refused():
  logits = np.zeros((8, 1), np.float32)
  p = np.ones((8, 1), np.float32)
  for name in ("kl", "js+conf", "xent"):
    with pytest.raises(ValueError, match=r"single class.*C >= 2.*"
                       r"margin_to_logits"):
      losses.get(name)(logits, p)
  # Static: refused under jit and with check=False too (it is never right).
  with pytest.raises(ValueError, match="single class"):
    jax.jit(losses.get("kl"))(logits, p)
  with pytest.raises(ValueError, match="single class"):
    losses.get("kl", check=False)(logits, p)


def test_masked_rows_are_not_checked():
  logits, p = _valid(n=16)
  mask = np.ones(16, bool)
  mask[[4, 9]] = False
  p[4] = [0.7, 0.7]
  p[9] = [-1.0, np.nan]
  loss = losses.get("js", confidence=0.5)
  out = loss(logits, p, where=mask, progress=0.5)
  np.testing.assert_allclose(out[mask], loss(logits[mask], p[mask],
                                             progress=0.5), rtol=1e-6)
  mask[9] = True
  with pytest.raises(ValueError, match="row 9 "):
    loss(logits, p, where=mask)


def test_check_false_skips_the_value_checks():
  logits, p = _valid()
  p[0] = [0.9, 0.9]
  got = losses.get("xent", check=False)(logits, p)
  want = -np.sum(p * jax.nn.log_softmax(logits), -1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("name", ["js", "js+conf", "logconf"])
def test_jit_vmap_grad_with_check_on(name):
  logits, p = _valid(n=32)
  loss = losses.get(name)  # check=True
  eager = loss(logits, p, progress=0.3)
  jitted = jax.jit(lambda x, w, t: loss(x, w, progress=t))(logits, p, 0.3)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)
  # A jitted step compiles with check on; the check is skipped for tracers,
  # so it neither raises nor costs anything there.
  bad = p.copy()
  bad[0] = [0.9, 0.9]
  assert np.isfinite(np.asarray(jax.jit(loss)(logits, bad))).all()
  vmapped = jax.vmap(lambda x, w: loss(x, w, progress=0.3))(
      logits.reshape(4, 8, 2), p.reshape(4, 8, 2))
  assert vmapped.shape == (4, 8)
  # Under grad the weak labels are still concrete, so they are checked.
  grad = jax.grad(lambda x: jnp.sum(loss(x, p, progress=0.3)))(logits)
  assert np.isfinite(np.asarray(grad)).all()
  with pytest.raises(ValueError, match="row 0 "):
    jax.grad(lambda x: jnp.sum(loss(x, bad)))(logits)


def test_check_inputs_directly():
  logits, p = _valid()
  losses.check_inputs(logits, p)
  losses.check_inputs(logits, jax.nn.one_hot(np.arange(8) % 2, 2))
  # Distributions rounded to bf16 (then cast to float32 or not) are accepted.
  rng = np.random.default_rng(0)
  soft = jnp.asarray(rng.dirichlet(np.ones(10), size=256), jnp.bfloat16)
  assert np.abs(np.asarray(soft, np.float64).sum(-1) - 1).max() > 1e-3
  losses.check_inputs(np.zeros((256, 10)), soft)
  losses.check_inputs(np.zeros((256, 10)), soft.astype(jnp.float32))
  with pytest.raises(ValueError, match="row 1 "):
    losses.check_inputs(logits, np.array([[0.5, 0.5], [0.5, 0.6]] * 4))
