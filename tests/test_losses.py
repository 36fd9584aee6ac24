"""Tests for w2sg_jax.losses against independent float64 numpy/scipy references.

Every reference below is written from the textbook formula in float64 numpy,
with the module's documented epsilon convention (clip at eps, renormalise)
applied where a loss uses one.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from scipy import special
from scipy.spatial import distance

from w2sg_jax import losses

EPS = 1e-7
F_DIVS = ["kl", "reverse_kl", "js", "hellinger", "pearson", "neyman", "tv",
          "jeffreys", "alpha"]
SYMMETRIC = ["js", "hellinger", "tv", "jeffreys"]


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------


def _q(logits):
  return special.softmax(np.asarray(logits, np.float64), axis=-1)


def _clip(r, eps=EPS):
  m = np.maximum(np.asarray(r, np.float64), eps)
  return m / m.sum(-1, keepdims=True)


def _ref_alpha(p, q, a):
  pc, qc = _clip(p), _clip(q)  # float64
  return (np.sum(pc**a * qc**(1.0 - a), -1) - 1.0) / (a * (a - 1.0))


def _ref_div(name, p, q):
  """D(P || Q) in float64 for weak P and student Q, both [N, C]."""
  p = np.asarray(p, np.float64)
  if name == "kl":
    return special.rel_entr(p, q).sum(-1)
  if name == "reverse_kl":
    return special.rel_entr(q, _clip(p)).sum(-1)
  if name == "js":
    return distance.jensenshannon(p, q, axis=-1) ** 2
  if name == "hellinger":
    return np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, -1)
  if name == "pearson":
    qc = _clip(q)
    return np.sum((p - qc) ** 2 / qc, -1)
  if name == "neyman":
    pc = _clip(p)
    return np.sum((pc - q) ** 2 / pc, -1)
  if name == "tv":
    return 0.5 * np.abs(p - q).sum(-1)
  if name == "jeffreys":
    # kl_div(x, y) = x log(x/y) - x + y; the linear terms cancel in the sum.
    return special.kl_div(p, q).sum(-1) + special.kl_div(q, _clip(p)).sum(-1)
  if name == "alpha":
    return _ref_alpha(p, q, 0.5)
  if name in ("xent", "logconf"):
    return -np.sum(special.xlogy(p, q), -1)
  if name == "reverse_xent":
    return -np.sum(q * np.log(_clip(p)), -1)
  if name == "product":
    return -np.log(np.sum(p * q, -1))
  raise KeyError(name)


def _ref_hard(logits, p):
  """Burns et al. hard labels: quantile of Q(class 0) at mean P(class 1)."""
  q = _q(logits)
  c = q.shape[-1]
  if c == 2:
    threshold = np.quantile(q[:, 0], np.mean(np.asarray(p, np.float64)[:, 1]))
    is0 = q[:, 0] >= threshold
    return np.stack([is0, ~is0], -1).astype(np.float64)
  return np.eye(c)[np.argmax(logits, -1)]


def _ref_loss(name, logits, p, confidence=0.0, a=None):
  """Reference value of the registered default loss `name`."""
  if name == "logconf":
    confidence = 0.75
  p = np.asarray(p, np.float64)
  q = _q(logits)
  if confidence:
    a = confidence if a is None else a
    p = (1 - a) * p + a * _ref_hard(logits, p)
  if name in ("xent", "logconf"):  # log q in log space: q may underflow
    return -np.sum(p * special.log_softmax(np.float64(logits), -1), -1)
  return _ref_div(name, p, q)


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


def _inputs(kind, c, n=64, seed=0):
  rng = np.random.default_rng(seed + 7 * c)
  if kind == "random":
    logits = 2.0 * rng.standard_normal((n, c))
    p = rng.dirichlet(np.ones(c), size=n)
  else:  # near-deterministic, with a few exact one-hot weak rows
    logits = 12.0 * rng.standard_normal((n, c))
    p = special.softmax(12.0 * rng.standard_normal((n, c)), axis=-1)
    p[: n // 8] = np.eye(c)[rng.integers(0, c, n // 8)]
  return logits.astype(np.float32), p.astype(np.float32)


# ---------------------------------------------------------------------------
# values against references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "near_det"])
@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", sorted(losses.names()))
def test_matches_reference(name, c, kind):
  logits, p = _inputs(kind, c)
  got = np.asarray(losses.get(name)(logits, p))
  assert got.dtype == np.float32 and got.shape == (64,)
  want = _ref_loss(name, logits, p)
  # 1e-4 relative; the absolute floor only matters for values near 0.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [-2.0, -0.3, 0.25, 0.7, 1.5, 3.0])
def test_alpha_family_matches_reference(alpha):
  for kind in ("random", "near_det"):
    logits, p = _inputs(kind, 10, seed=3)
    got = losses.get("alpha", alpha=alpha)(logits, p)
    np.testing.assert_allclose(got, _ref_alpha(p, _q(logits), alpha),
                               rtol=1e-4, atol=1e-6)


def test_xent_and_kl_agree_with_optax():
  logits, p = _inputs("random", 10)
  np.testing.assert_allclose(losses.get("xent")(logits, p),
                             optax.softmax_cross_entropy(logits, p), rtol=1e-6)
  np.testing.assert_allclose(
      losses.get("kl")(logits, p),
      optax.losses.kl_divergence(jax.nn.log_softmax(logits), p),
      rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# divergence properties and identities
# ---------------------------------------------------------------------------


def _many_draws(c, n=64, seed=11):
  rng = np.random.default_rng(seed)
  scale = rng.choice([0.1, 1.0, 4.0, 15.0], size=(n, 1))
  return (scale * rng.standard_normal((n, c))).astype(np.float32)


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", F_DIVS)
def test_divergence_zero_on_diagonal_and_nonnegative(name, c):
  loss = losses.get(name)
  for seed in range(0, 16, 2):  # 512 draws, in one shape
    logits = _many_draws(c, seed=seed)
    same = np.asarray(loss(logits, jax.nn.softmax(logits)))
    assert np.abs(same).max() < 1e-5, (name, np.abs(same).max())
    other = jax.nn.softmax(_many_draws(c, seed=seed + 1))
    d = np.asarray(loss(logits, other))
    assert d.min() >= -1e-6 and d.max() > 1e-2


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric_divergences(name):
  rng = np.random.default_rng(5)
  p = rng.dirichlet(np.ones(10), size=64).astype(np.float32)
  q = rng.dirichlet(np.ones(10), size=64).astype(np.float32)
  loss = losses.get(name)
  pq = loss(jnp.log(q), p)  # D(P || Q)
  qp = loss(jnp.log(p), q)  # D(Q || P)
  np.testing.assert_allclose(pq, qp, rtol=1e-4, atol=1e-6)
  assert np.asarray(pq).min() > 1e-3  # not trivially zero


def test_asymmetric_divergences_are_not_symmetric():
  rng = np.random.default_rng(6)
  p = rng.dirichlet(np.ones(10), size=64).astype(np.float32)
  q = rng.dirichlet(np.ones(10), size=64).astype(np.float32)
  for name in ("kl", "reverse_kl", "pearson", "neyman"):
    loss = losses.get(name)
    assert np.abs(loss(jnp.log(q), p) - loss(jnp.log(p), q)).max() > 1e-2


def test_identities():
  logits, p = _inputs("random", 10)
  get = losses.get
  q = jax.nn.softmax(logits)
  h_weak = -np.sum(special.xlogy(p, p), -1)
  h_student = -jnp.sum(q * jax.nn.log_softmax(logits), -1)
  np.testing.assert_allclose(get("kl")(logits, p),
                             get("xent")(logits, p) - h_weak,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(get("reverse_xent")(logits, p),
                             get("reverse_kl")(logits, p) + h_student,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      get("jeffreys")(logits, p),
      get("kl")(logits, p) + get("reverse_kl")(logits, p), rtol=1e-5)
  # Special members of the alpha family (no clipping is active here).
  np.testing.assert_allclose(get("alpha", alpha=0.5)(logits, p),
                             2 * get("hellinger")(logits, p), rtol=1e-4)
  np.testing.assert_allclose(get("alpha", alpha=2.0)(logits, p),
                             0.5 * get("pearson")(logits, p), rtol=1e-4)
  np.testing.assert_allclose(get("alpha", alpha=-1.0)(logits, p),
                             0.5 * get("neyman")(logits, p), rtol=1e-4)


@pytest.mark.parametrize("kind", ["random", "near_det"])
def test_alpha_is_continuous_at_0_and_1(kind):
  logits, p = _inputs(kind, 10, seed=4)
  get = losses.get
  # Exact dispatch.
  np.testing.assert_array_equal(get("alpha", alpha=1.0)(logits, p),
                                get("kl")(logits, p))
  np.testing.assert_array_equal(get("alpha", alpha=0.0)(logits, p),
                                get("reverse_kl")(logits, p))
  if kind == "random":  # no probability below eps: the limits coincide
    for a, limit in ((1.0, "kl"), (0.0, "reverse_kl")):
      for da in (-1e-4, 1e-4):
        near = get("alpha", alpha=a + da)(logits, p)
        np.testing.assert_allclose(near, get(limit)(logits, p), rtol=1e-3)
  # Near 0 and 1 the float32 value matches the float64 formula at that alpha
  # (a naive (sum - 1) / (alpha (alpha - 1)) in float32 would not).
  for a in (1 - 1e-4, 1 + 1e-4, -1e-4, 1e-4, 1 - 1e-6, 1e-6):
    np.testing.assert_allclose(get("alpha", alpha=a)(logits, p),
                               _ref_alpha(p, _q(logits), a),
                               rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# numerics: extremes, dtypes, transforms
# ---------------------------------------------------------------------------


def _extreme_inputs(c):
  big = 1e4
  rows, weak = [], []
  for lo, hi in ((big, -big), (-big, big), (big, big), (0.0, 0.0)):
    for target in (0, 1):
      row = np.full(c, lo, np.float32)
      row[1] = hi
      rows.append(row)
      weak.append(np.eye(c, dtype=np.float32)[target])
  weak.append(np.full(c, 1.0 / c, np.float32))
  rows.append(np.linspace(-big, big, c).astype(np.float32))
  return jnp.asarray(np.stack(rows)), jnp.asarray(np.stack(weak))


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", sorted(losses.names()))
def test_finite_values_and_gradients_at_extremes(name, c):
  logits, weak = _extreme_inputs(c)
  for hp, progress in (({}, None), ({"confidence": 0.5}, 0.1)):
    if name == "logconf":
      hp = {}
    loss = losses.get(name, **hp)
    value, grad = jax.value_and_grad(
        lambda x: jnp.sum(loss(x, weak, progress=progress)))(logits)
    assert np.isfinite(np.asarray(loss(logits, weak, progress=progress))).all()
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all(), name


@pytest.mark.parametrize("alpha", [-4.5, 5.5])
def test_alpha_finite_at_extremes_near_its_range_limits(alpha):
  logits, weak = _extreme_inputs(10)
  loss = losses.get("alpha", alpha=alpha)
  value, grad = jax.value_and_grad(lambda x: jnp.sum(loss(x, weak)))(logits)
  assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()
  assert float(value) > 1e30  # large, as the divergence should be


def test_eps_bounds_infinite_divergences():
  # Student certain of class 1, weak label certain of class 0.
  logits = jnp.array([[-1e4, 1e4]])
  weak = jnp.array([[1.0, 0.0]])
  assert float(losses.get("kl")(logits, weak)[0]) == pytest.approx(2e4)
  assert float(losses.get("reverse_kl")(logits, weak)[0]) == pytest.approx(
      -np.log(EPS / (1 + EPS)), rel=1e-5)
  for name in ("pearson", "neyman"):
    value = float(losses.get(name)(logits, weak)[0])
    assert value == pytest.approx(1 / EPS, rel=1e-4)
    bigger = float(losses.get(name, eps=1e-5)(logits, weak)[0])
    assert bigger == pytest.approx(1e5, rel=1e-3)


@pytest.mark.parametrize("name", ["kl", "js", "pearson", "logconf", "alpha"])
def test_bf16_inputs(name):
  logits, p = _inputs("random", 10)
  loss = losses.get(name)
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  out = loss(logits_bf16, jnp.asarray(p, jnp.bfloat16))
  assert out.dtype == jnp.float32
  exact = loss(logits_bf16.astype(jnp.float32),
               jnp.asarray(p, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(out, exact, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out, loss(logits, p), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("name", sorted(losses.names()))
def test_jit_vmap_grad_agree_with_eager(name):
  loss = losses.get(name) if name == "logconf" else losses.get(
      name, confidence=0.0)
  logits, p = _inputs("random", 2)
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
    logits, p = _inputs("random", 4, n=6)
    logits, p = jnp.asarray(logits, jnp.float64), jnp.asarray(p, jnp.float64)
    loss = losses.get(name, **hp)
    assert loss(logits, p).dtype == jnp.float64
    check_grads(lambda x: loss(x, p, progress=0.1), (logits,), order=order,
                modes=("rev",), atol=1e-5, rtol=1e-5)


def test_kl_gradient_is_q_minus_p():
  logits, p = _inputs("random", 10)
  grad = jax.grad(lambda x: jnp.sum(losses.get("kl")(x, p)))(logits)
  np.testing.assert_allclose(grad, _q(logits) - p, atol=1e-6)


# ---------------------------------------------------------------------------
# masking
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", sorted(losses.names()))
def test_where_agrees_with_slicing(name, c):
  logits, p = _inputs("random", c)
  mask = np.random.default_rng(0).random(64) < 0.6
  # Padding may hold anything, NaN included.
  logits[~mask] = np.nan
  p[~mask] = np.nan
  hp = {} if name == "logconf" else {"confidence": 0.5}
  loss = losses.get(name, **hp)
  masked = np.asarray(loss(logits, p, where=mask, progress=0.3))
  sliced = np.asarray(loss(logits[mask], p[mask], progress=0.3))
  np.testing.assert_allclose(masked[mask], sliced, rtol=1e-6, atol=1e-7)
  assert (masked[~mask] == 0).all()
  grad = jax.grad(
      lambda x: jnp.sum(loss(x, p, where=mask, progress=0.3)))(logits)
  assert np.isfinite(np.asarray(grad)).all() and (grad[~mask] == 0).all()


def test_logconf_batch_is_all_leading_axes():
  logits, p = _inputs("random", 2)
  mask = np.random.default_rng(0).random(64) < 0.6  # as in the test above
  loss = losses.get("logconf")
  nested = loss(logits.reshape(4, 16, 2), p.reshape(4, 16, 2),
                where=mask.reshape(4, 16))
  flat = loss(logits[mask], p[mask])
  np.testing.assert_allclose(np.asarray(nested).reshape(-1)[mask], flat,
                             rtol=1e-6)
  np.testing.assert_allclose(flat, _ref_loss("logconf", logits[mask], p[mask]),
                             rtol=1e-5)


# ---------------------------------------------------------------------------
# confidence term
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("c", [2, 10])
def test_logconf_warmup_is_continuous(c):
  logits, p = _inputs("random", c)
  loss = jax.jit(lambda t: jnp.mean(losses.get("logconf")(logits, p,
                                                          progress=t)))
  xent = float(jnp.mean(losses.get("xent")(logits, p)))
  hard = jnp.asarray(_ref_hard(logits, p), jnp.float32)
  xent_hard = float(jnp.mean(losses.get("xent")(logits, hard)))
  assert float(loss(0.0)) == pytest.approx(xent, rel=1e-6)
  grid = np.linspace(0.0, 0.5, 501)
  values = np.array([float(loss(t)) for t in grid])
  # Linear ramp to a = 0.75 at progress = 0.2, then flat: the largest step is
  # the ramp slope times the grid spacing; a jump would be ~0.75 |gap|.
  bound = 0.75 / 0.2 * (grid[1] - grid[0]) * abs(xent_hard - xent)
  assert np.abs(np.diff(values)).max() <= 1.01 * bound + 1e-6
  assert abs(float(loss(0.2 - 1e-6)) - float(loss(0.2 + 1e-6))) < 1e-4
  full = float(jnp.mean(losses.get("logconf")(logits, p)))  # progress=None
  assert values[-1] == pytest.approx(full, rel=1e-6)
  assert full == pytest.approx(0.25 * xent + 0.75 * xent_hard, rel=1e-5)
  assert abs(full - xent) > 1e-2  # the term does something


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", F_DIVS + ["xent", "reverse_xent", "product"])
def test_confidence_term_on_any_loss(name, c):
  logits, p = _inputs("random", c, seed=2)
  loss = losses.get(name, confidence=0.5, warmup=0.2)
  got = loss(logits, p, progress=0.1)  # a = 0.5 * 0.1 / 0.2 = 0.25
  want = _ref_loss(name, logits, p, confidence=0.5, a=0.25)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss(logits, p, progress=0.0),
                             losses.get(name)(logits, p), rtol=1e-6, atol=1e-7)


def test_confidence_weight():
  w = functools.partial(losses.confidence_weight, confidence=0.6, warmup=0.2)
  assert float(w(None)) == pytest.approx(0.6)
  assert float(w(0.0)) == 0.0
  assert float(w(0.1)) == pytest.approx(0.3)
  assert float(w(0.9)) == pytest.approx(0.6)
  assert float(losses.confidence_weight(0.0, confidence=0.6,
                                        warmup=0.0)) == pytest.approx(0.6)


def test_hard_labels_match_weak_prior():
  logits, p = _inputs("random", 2, seed=9)
  hard = np.asarray(losses.hard_student_labels(jnp.asarray(logits),
                                               jnp.asarray(p)))
  np.testing.assert_array_equal(hard, _ref_hard(logits, p))
  assert abs(hard[:, 0].mean() - p[:, 0].mean()) < 2 / 64


# ---------------------------------------------------------------------------
# registry, custom generators, errors
# ---------------------------------------------------------------------------


def test_registry_names_and_errors():
  expected = {"kl", "reverse_kl", "js", "hellinger", "pearson", "neyman", "tv",
              "jeffreys", "alpha", "xent", "logconf", "product", "reverse_xent"}
  assert expected <= set(losses.names())
  assert losses.names() == sorted(losses.names())
  with pytest.raises(ValueError) as e:
    losses.get("kl_div")
  for name in expected:
    assert name in str(e.value)
  with pytest.raises(ValueError, match="'alpha'.*accepts: .*confidence"):
    losses.get("kl", alpha=0.5)
  with pytest.raises(ValueError, match="'epsilon'"):
    losses.get("reverse_kl", epsilon=1e-6)
  with pytest.raises(ValueError, match="overflows float32"):
    losses.get("alpha", alpha=20.0)
  with pytest.raises(ValueError, match="confidence must be in"):
    losses.get("js", confidence=1.5)
  with pytest.raises(ValueError, match="eps must be"):
    losses.get("pearson", eps=0.0)
  with pytest.raises(ValueError, match="same shape"):
    losses.get("kl")(jnp.zeros((3, 2)), jnp.zeros((3, 4)))


def test_custom_generator_builder():
  logits, p = _inputs("random", 10)
  t_log_t = losses.f_divergence(lambda t: t * jnp.log(t), name="tlogt")
  np.testing.assert_allclose(t_log_t(logits, p), losses.get("kl")(logits, p),
                             rtol=1e-4, atol=1e-6)
  minus_log = losses.f_divergence(lambda t: -jnp.log(t))
  np.testing.assert_allclose(minus_log(logits, p),
                             losses.get("reverse_kl")(logits, p), rtol=1e-4)
  with pytest.raises(ValueError, match=r"f\(1\) = 1.*subtract"):
    losses.f_divergence(lambda t: t * jnp.log(t) + 1.0)
  with pytest.raises(ValueError, match="not convex"):
    losses.f_divergence(lambda t: -t * jnp.log(t))
  with pytest.raises(ValueError, match="not finite"):
    losses.f_divergence(lambda t: jnp.log(t - 0.5) - jnp.log(0.5))
  # check=False skips validation.
  losses.f_divergence(lambda t: -t * jnp.log(t), check=False)


def test_register_custom_loss():
  name = "test_sq_log"  # f(t) = (log t)^2 / 2 is convex on t < e only
  with pytest.raises(ValueError, match="not convex"):
    losses.f_divergence(lambda t: 0.5 * jnp.log(t) ** 2)
  factory = lambda **hp: losses.f_divergence(lambda t: (t - 1.0) ** 2,
                                             name=name, **hp)
  losses.register(name, factory, overwrite=True)
  try:
    assert name in losses.names()
    logits, p = _inputs("random", 10)
    np.testing.assert_allclose(losses.get(name)(logits, p),
                               losses.get("pearson")(logits, p), rtol=1e-4)
    with pytest.raises(ValueError, match="already registered"):
      losses.register(name, factory)
  finally:
    losses._REGISTRY.pop(name, None)


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
