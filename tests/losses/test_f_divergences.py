"""f-divergences and the custom-generator builder vs float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from tests.losses import _reference as ref
from w2sg_jax import losses


@pytest.mark.parametrize("kind", ["random", "near_det"])
@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", ref.F_DIVS)
def test_matches_reference(name, c, kind):
  logits, p = ref.inputs(kind, c)
  got = np.asarray(losses.get(name)(logits, p))
  assert got.dtype == np.float32 and got.shape == (64,)
  want = ref.ref_loss(name, logits, p)
  # 1e-4 relative; the absolute floor only matters for values near 0.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [-2.0, -0.3, 0.25, 0.7, 1.5, 3.0])
def test_alpha_family_matches_reference(alpha):
  for kind in ("random", "near_det"):
    logits, p = ref.inputs(kind, 10, seed=3)
    got = losses.get("alpha", alpha=alpha)(logits, p)
    np.testing.assert_allclose(got, ref.ref_alpha(p, ref.q_of(logits), alpha),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", ref.F_DIVS)
def test_divergence_zero_on_diagonal_and_nonnegative(name, c):
  loss = losses.get(name)
  for seed in range(0, 16, 2):  # 512 draws, in one shape
    logits = ref.many_draws(c, seed=seed)
    same = np.asarray(loss(logits, jax.nn.softmax(logits)))
    assert np.abs(same).max() < 1e-5, (name, np.abs(same).max())
    other = jax.nn.softmax(ref.many_draws(c, seed=seed + 1))
    d = np.asarray(loss(logits, other))
    assert d.min() >= -1e-6 and d.max() > 1e-2


@pytest.mark.parametrize("name", ref.SYMMETRIC)
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
  logits, p = ref.inputs("random", 10)
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
  logits, p = ref.inputs(kind, 10, seed=4)
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
                               ref.ref_alpha(p, ref.q_of(logits), a),
                               rtol=1e-4, atol=1e-6)


def test_eps_bounds_infinite_divergences():
  # Student certain of class 1, weak label certain of class 0.
  logits = jnp.array([[-1e4, 1e4]])
  weak = jnp.array([[1.0, 0.0]])
  assert float(losses.get("kl")(logits, weak)[0]) == pytest.approx(2e4)
  assert float(losses.get("reverse_kl")(logits, weak)[0]) == pytest.approx(
      -np.log(ref.EPS / (1 + ref.EPS)), rel=1e-5)
  for name in ("pearson", "neyman"):
    value = float(losses.get(name)(logits, weak)[0])
    assert value == pytest.approx(1 / ref.EPS, rel=1e-4)
    bigger = float(losses.get(name, eps=1e-5)(logits, weak)[0])
    assert bigger == pytest.approx(1e5, rel=1e-3)


@pytest.mark.parametrize("alpha", [-4.5, 5.5])
def test_alpha_finite_at_extremes_near_its_range_limits(alpha):
  logits, weak = ref.extreme_inputs(10)
  loss = losses.get("alpha", alpha=alpha)
  value, grad = jax.value_and_grad(lambda x: jnp.sum(loss(x, weak)))(logits)
  assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()
  assert float(value) > 1e30  # large, as the divergence should be


# ---------------------------------------------------------------------------
# custom generators
# ---------------------------------------------------------------------------


def test_custom_generator_builder():
  logits, p = ref.inputs("random", 10)
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
  with pytest.raises(ValueError, match="not convex"):  # convex on t < e only
    losses.f_divergence(lambda t: 0.5 * jnp.log(t) ** 2)
  # check=False skips validation.
  losses.f_divergence(lambda t: -t * jnp.log(t), check=False)


def test_cubic_generator_is_refused_and_the_message_says_where():
  cubic = lambda t: (t - 1.0) ** 3
  # What the check prevents: D_f([.9, .1] || [.7, .3]) = .7 (2/7)^3 +
  # .3 (-2/3)^3 = -0.0726 < 0, written out in float64.
  p, q = np.array([0.9, 0.1]), np.array([0.7, 0.3])
  assert np.sum(q * (p / q - 1.0) ** 3) == pytest.approx(-0.0726, abs=1e-4)
  unchecked = losses.f_divergence(cubic, check=False)
  assert float(unchecked(jnp.log(jnp.asarray([q], jnp.float32)),
                         jnp.asarray([p], jnp.float32))[0]) == pytest.approx(
                             -0.0726, abs=1e-4)
  with pytest.raises(ValueError) as e:
    losses.f_divergence(cubic, name="cubic")
  msg = str(e.value)
  assert "'cubic' is not convex" in msg and "second difference" in msg
  # f'' = 6 (t - 1) < 0 exactly on (0, 1): the message gives that region.
  lo = float(msg.split("between t = ")[1].split(" ")[0])
  hi = float(msg.split("and t = ")[1].split(" ")[0])
  assert lo < 1e-3 and 0.99 < hi < 1.0
  assert "convex generator" in msg  # the fix


@pytest.mark.parametrize("f,region", [
    # Convex on (0, 1), concave beyond t = 1 + 1/300: caught in (1, inf).
    (lambda t: (t - 1.0) ** 2 - (t - 1.0) ** 3 / 100.0, (1.0, np.inf)),
    # Concave only on (0, 1e-3): a tiny region near 0 is caught too.
    (lambda t: jnp.where(t < 1e-3, -1e3 * (t - 1e-3) ** 2, 0.0)
     + jnp.square(t - 1.0), (0.0, 1e-3)),
])
def test_non_convexity_is_found_on_either_side_of_1(f, region):
  with pytest.raises(ValueError, match="not convex") as e:
    losses.validate_generator(f, "g")
  t = float(str(e.value).split(" at t = ")[1].split(",")[0])
  assert region[0] < t < region[1]


def test_every_builtin_generator_is_accepted():
  for name, f in losses.GENERATORS.items():
    losses.validate_generator(f, name)
    # Also when f's output is float32 (rounding noise is then far larger).
    losses.validate_generator(lambda t, f=f: f(t.astype(jnp.float32)), name)
  for alpha in (-4.5, -2.0, -1.0, -0.3, 0.0, 1e-4, 0.25, 0.5, 0.7, 1 - 1e-4,
                1.0, 1 + 1e-4, 1.5, 2.0, 3.0, 5.5):
    losses.validate_generator(losses.alpha_generator(alpha), f"alpha={alpha}")
  # Convex but with linear pieces (f'' = 0 there): accepted.
  for f in (lambda t: jnp.maximum(t - 1.0, 0.0), lambda t: t - 1.0,
            lambda t: t * jnp.log(t) - t + 1.0):
    losses.validate_generator(f)


@pytest.mark.parametrize("name", sorted(losses.GENERATORS))
def test_generators_give_the_builtin_losses(name):
  # Random inputs: no probability is near eps, so no clipping differs.
  logits, p = ref.inputs("random", 10, seed=8)
  generic = losses.f_divergence(losses.GENERATORS[name], name=name)
  np.testing.assert_allclose(generic(logits, p), losses.get(name)(logits, p),
                             rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [-2.0, 0.3, 1 + 1e-4, 2.5])
def test_alpha_generator_gives_the_alpha_loss(alpha):
  logits, p = ref.inputs("random", 10, seed=8)
  generic = losses.f_divergence(losses.alpha_generator(alpha))
  np.testing.assert_allclose(generic(logits, p),
                             ref.ref_alpha(p, ref.q_of(logits), alpha),
                             rtol=2e-4, atol=1e-6)
