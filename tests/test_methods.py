"""w2sg_jax.methods against independent references on fixed inputs.

References: numpy for the ensembles (the product of experts computed naively
in probability space, on inputs far from 0) and the iterated softmax; scipy
for the kNN probe (``scipy.spatial.distance.cdist`` cosine, brute force) and
the logistic probe (``scipy.optimize.minimize`` L-BFGS-B in float64 on the
same objective); hand-computed masks for the filters. sklearn is not a
dependency of the project, so it is not the reference here.
"""

import numpy as np
import pytest
from scipy import optimize, special
from scipy.spatial import distance

from w2sg_jax import methods


def _dirichlet(shape, seed, *, floor=0.0):
  """Random distributions over the last axis; entries >= floor when given."""
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  p = floor + (1 - floor * shape[-1]) * p
  return p.astype(np.float32)


# ---------------------------------------------------------------------------
# Ensembles
# ---------------------------------------------------------------------------


def test_mean_matches_numpy():
  members = _dirichlet((4, 50, 3), 0)
  got = methods.combine(members, combiner="mean")
  assert got.dtype == np.float32 and got.shape == (50, 3)
  np.testing.assert_allclose(got, members.astype(np.float64).mean(0),
                             rtol=1e-6, atol=1e-7)
  w = np.array([1.0, 2.0, 0.0, 5.0])
  got_w = methods.combine(members, combiner="mean", weights=w)
  want_w = np.einsum("k,knc->nc", w / w.sum(), members.astype(np.float64))
  np.testing.assert_allclose(got_w, want_w, rtol=1e-6, atol=1e-7)
  # Only ratios matter for the mean.
  np.testing.assert_array_equal(
      got_w, methods.combine(members, combiner="mean", weights=3 * w))


def test_product_matches_naive_probability_space():
  members = _dirichlet((3, 40, 4), 1, floor=1e-3)  # Safe: no entry near 0.
  p64 = members.astype(np.float64)
  want = p64.prod(0)
  want /= want.sum(-1, keepdims=True)
  got = methods.combine(members, combiner="product")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  w = np.array([0.5, 2.0, 1.0])
  want_w = (p64 ** w[:, None, None]).prod(0)
  want_w /= want_w.sum(-1, keepdims=True)
  np.testing.assert_allclose(
      methods.combine(members, combiner="product", weights=w), want_w,
      rtol=1e-5, atol=1e-7)
  # A zero-weight member takes no part.
  np.testing.assert_allclose(
      methods.combine(members, combiner="product", weights=[1.0, 0.0, 1.0]),
      methods.combine(members[[0, 2]], combiner="product"), rtol=1e-6)


@pytest.mark.parametrize("combiner", methods.COMBINERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_member_is_returned_exactly(combiner, dtype):
  member = _dirichlet((1, 30, 3), 2).astype(dtype)
  member[0, 0] = [1.0, 0.0, 0.0]  # An exact 0 must survive untouched.
  got = methods.combine(member, combiner=combiner)
  assert got.dtype == dtype
  np.testing.assert_array_equal(got, member[0])
  assert got is not member[0] and not np.shares_memory(got, member)
  if combiner == "mean":
    np.testing.assert_array_equal(
        methods.combine(member, combiner=combiner, weights=[0.3]), member[0])


@pytest.mark.parametrize("combiner", methods.COMBINERS)
def test_identical_members_give_the_member(combiner):
  member = _dirichlet((20, 5), 3, floor=1e-3)
  members = np.stack([member] * 4)
  got = methods.combine(members, combiner=combiner,
                        weights=np.full(4, 0.25) if combiner == "product"
                        else None)
  np.testing.assert_allclose(got, member, rtol=1e-5, atol=1e-7)


def test_uniform_member_is_a_no_op_in_the_product():
  member = _dirichlet((25, 4), 4, floor=1e-3)
  uniform = np.full_like(member, 0.25)
  got = methods.combine(np.stack([member, uniform]), combiner="product")
  np.testing.assert_allclose(got, member, rtol=1e-5, atol=1e-7)


def test_product_with_exact_zeros_is_finite_and_follows_eps():
  one_hot_a = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
  other = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
  got = methods.combine(np.stack([one_hot_a, other]), combiner="product",
                        eps=1e-4)
  assert np.isfinite(got).all()
  # Row 0: two confident members that disagree tie. Row 1: member a clipped
  # to [1, 1e-4] / (1 + 1e-4) times a uniform member.
  np.testing.assert_allclose(got[0], [0.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(got[1], [1 / 1.0001, 1e-4 / 1.0001], rtol=1e-6)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(combiner="median"), "Unknown combiner"),
    (dict(weights=[1.0, 1.0]), r"shape \[K\]"),
    (dict(weights=[1.0, -1.0, 1.0]), ">= 0"),
    (dict(weights=[0.0, 0.0, 0.0]), "positive sum"),
    (dict(combiner="product", eps=0.0), "eps"),
])
def test_combine_rejects_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    methods.combine(_dirichlet((3, 4, 2), 5), **kwargs)


@pytest.mark.parametrize("members,match", [
    (np.full((4, 2), 0.5), r"\[K, N, C\]"),
    (np.ones((2, 3, 1)), "C >= 2"),
    (np.full((2, 3, 2), 0.6), "sum to 1"),
    (np.array([[[1.5, -0.5]]]), r"\[0, 1\]"),
    (np.array([[[np.nan, 1.0]]]), "not finite"),
    (np.zeros((2, 3, 2), np.int32), "floating"),
])
def test_combine_rejects_bad_members(members, match):
  with pytest.raises(ValueError, match=match):
    methods.combine(members)


def test_bootstrap_indices():
  idx = methods.bootstrap_indices(7, 10_000, k=5)
  assert idx.shape == (5, 10_000) and idx.dtype == np.int64
  assert idx.min() >= 0 and idx.max() < 10_000
  assert (np.diff(idx, axis=1) >= 0).all()  # Sorted.
  np.testing.assert_array_equal(idx, methods.bootstrap_indices(7, 10_000, k=5))
  # Member i depends on (seed, i) only: growing K keeps the first members.
  np.testing.assert_array_equal(idx[:3],
                                methods.bootstrap_indices(7, 10_000, k=3))
  assert not np.array_equal(idx[0], idx[1])
  assert not np.array_equal(idx, methods.bootstrap_indices(8, 10_000, k=5))
  distinct = np.array([np.unique(r).size for r in idx]) / 10_000
  np.testing.assert_allclose(distinct, 1 - np.exp(-1), atol=0.01)
  for bad in (dict(seed=-1, n=5, k=2), dict(seed=0, n=0, k=2),
              dict(seed=0, n=5, k=0), dict(seed=1.5, n=5, k=2)):
    with pytest.raises(ValueError):
      methods.bootstrap_indices(bad["seed"], bad["n"], k=bad["k"])


# ---------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------

# K = 3 members, N = 4 rows, C = 3 classes; votes per row:
#   row 0: 0, 0, 0 (unanimous)   row 1: 0, 0, 1   row 2: 0, 1, 2
#   row 3: 2, 1, 1 but member 0 so confident that the mean picks class 2.
_MEMBERS = np.array([
    [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0]],
    [[0.6, 0.2, 0.2], [0.5, 0.4, 0.1], [0.2, 0.6, 0.2], [0.3, 0.4, 0.3]],
    [[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]],
], np.float32)
# Mean argmax: row 0 -> 0, row 1 -> 0 (0.5 vs 0.4), row 2 -> 1 (0.27, 0.4,
# 0.33), row 3 -> 2 (0.2, 0.267, 0.533).
_AGREEMENT = np.array([1.0, 2 / 3, 1 / 3, 1 / 3], np.float32)


def test_vote_agreement_by_hand():
  np.testing.assert_allclose(methods.vote_agreement(_MEMBERS), _AGREEMENT,
                             rtol=1e-6)
  # Against a given ensemble (one that picks class 1 on row 3 instead).
  ens = methods.combine(_MEMBERS, combiner="mean")
  ens[3] = [0.1, 0.8, 0.1]
  np.testing.assert_allclose(methods.vote_agreement(_MEMBERS, ens)[3], 2 / 3,
                             rtol=1e-6)


@pytest.mark.parametrize("threshold,want", [
    (1.0, [1, 0, 0, 0]),       # Unanimity: RAVEN's mask.
    (2 / 3, [1, 1, 0, 0]),     # 2 of 3 votes, despite 2/3 in floating point.
    (0.5, [1, 1, 0, 0]),
    (0.3, [1, 1, 1, 1]),
    (0.0, [1, 1, 1, 1]),
])
def test_agreement_weights_by_hand(threshold, want):
  got = methods.agreement_weights(_MEMBERS, threshold=threshold)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)


def test_agreement_threshold_is_exact_in_votes():
  # K = 10, 7 members vote class 0: 7/10 is below 0.7 once rounded to
  # float32, yet 7 of 10 votes meet a threshold of 0.7.
  members = np.tile(np.array([0.9, 0.1], np.float32), (10, 1, 1))
  members[7:] = [0.2, 0.8]
  np.testing.assert_array_equal(
      methods.agreement_weights(members, threshold=0.7), [1])
  np.testing.assert_array_equal(
      methods.agreement_weights(members, threshold=0.71), [0])
  # A threshold that went through float32 still means 2 of 3 votes.
  np.testing.assert_array_equal(
      methods.agreement_weights(_MEMBERS,
                                threshold=float(np.float32(2 / 3))),
      [1, 1, 0, 0])


def test_entropy_weights_by_hand():
  probs = np.array([[1 / 3] * 3, [1.0, 0.0, 0.0], [0.5, 0.5, 0.0],
                    [0.8, 0.1, 0.1]], np.float32)
  h3 = -(0.8 * np.log(0.8) + 0.2 * np.log(0.1)) / np.log(3)
  h = np.array([1.0, 0.0, np.log(2) / np.log(3), h3])
  np.testing.assert_allclose(methods.normalized_entropy(probs), h, atol=1e-6)
  np.testing.assert_allclose(methods.entropy_weights(probs), 1 - h, atol=1e-6)
  np.testing.assert_array_equal(
      methods.entropy_weights(probs, mode="hard", threshold=0.7), [0, 1, 1, 1])
  np.testing.assert_array_equal(
      methods.entropy_weights(probs, mode="hard", threshold=0.6), [0, 1, 0, 1])
  np.testing.assert_allclose(methods.confidence(probs),
                             [1 / 3, 1.0, 0.5, 0.8], rtol=1e-6)


def test_top_fraction_weights_by_hand():
  got = methods.top_fraction_weights(np.array([0.2, 0.9, 0.8, 0.1, 0.5]),
                                     keep_fraction=0.4)
  np.testing.assert_array_equal(got, [0, 1, 1, 0, 0])
  # Ties: first the tie-break score, then the lower index.
  np.testing.assert_array_equal(
      methods.top_fraction_weights(np.array([1.0, 1.0, 1.0, 0.0]),
                                   keep_fraction=0.5,
                                   tiebreak_N=np.array([0.1, 0.3, 0.2, 0.9])),
      [0, 1, 1, 0])
  np.testing.assert_array_equal(
      methods.top_fraction_weights(np.ones(4), keep_fraction=0.5),
      [1, 1, 0, 0])
  # At least one row is kept; the whole set at keep_fraction = 1.
  assert methods.top_fraction_weights(np.arange(10.0),
                                      keep_fraction=0.01).sum() == 1
  assert methods.top_fraction_weights(np.arange(10.0),
                                      keep_fraction=1.0).sum() == 10
  # Agreement with confidence as the tie-break: rows 2 and 3 both agree 1/3;
  # row 3's ensemble is more confident.
  ens = methods.combine(_MEMBERS)
  np.testing.assert_array_equal(
      methods.top_fraction_weights(methods.vote_agreement(_MEMBERS),
                                   keep_fraction=0.75,
                                   tiebreak_N=methods.confidence(ens)),
      [1, 1, 0, 1])


def test_filter_weights_lie_in_the_unit_interval():
  members = _dirichlet((5, 200, 4), 6)
  ens = methods.combine(members)
  for w in (methods.agreement_weights(members, threshold=0.6),
            methods.entropy_weights(ens),
            methods.entropy_weights(ens, mode="hard", threshold=0.9),
            methods.top_fraction_weights(methods.confidence(ens),
                                         keep_fraction=0.3)):
    assert w.shape == (200,) and w.dtype == np.float32
    assert (w >= 0).all() and (w <= 1).all()
  assert methods.top_fraction_weights(methods.confidence(ens),
                                      keep_fraction=0.3).sum() == 60


@pytest.mark.parametrize("call,match", [
    (lambda: methods.agreement_weights(_MEMBERS, threshold=1.5), r"\[0, 1\]"),
    (lambda: methods.agreement_weights(_MEMBERS, threshold=-0.1), r"\[0, 1\]"),
    (lambda: methods.vote_agreement(_MEMBERS, _MEMBERS[0, :3]), r"\[N, C\]"),
    (lambda: methods.entropy_weights(_MEMBERS[0], mode="hard"), "threshold"),
    (lambda: methods.entropy_weights(_MEMBERS[0], threshold=0.5), "hard"),
    (lambda: methods.entropy_weights(_MEMBERS[0], mode="x"), "mode"),
    (lambda: methods.top_fraction_weights(np.ones(4), keep_fraction=0.0),
     r"\(0, 1\]"),
    (lambda: methods.top_fraction_weights(np.ones((2, 2)), keep_fraction=0.5),
     r"\[N\]"),
    (lambda: methods.top_fraction_weights(np.ones(4), keep_fraction=0.5,
                                          tiebreak_N=np.ones(3)), r"\[4\]"),
])
def test_filters_reject_bad_inputs(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------


def _clustered(n, d, c, seed):
  """Features in c clusters, weak labels 80% right (soft), float32."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, c, n)
  centers = rng.normal(size=(c, d)) * 2.0
  x = centers[y] + rng.normal(size=(n, d))
  noisy = np.where(rng.random(n) < 0.8, y, rng.integers(0, c, n))
  weak = 0.7 * np.eye(c)[noisy] + 0.3 / c
  return x.astype(np.float32), weak.astype(np.float32)


def _knn_reference(x, q, k, exclude_self):
  dist = distance.cdist(x.astype(np.float64), x.astype(np.float64), "cosine")
  if exclude_self:
    np.fill_diagonal(dist, np.inf)
  nn = np.argsort(dist, axis=1, kind="stable")[:, :k]
  return q.astype(np.float64)[nn].mean(axis=1)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_knn_probe_matches_scipy_brute_force(exclude_self):
  x, q = _clustered(300, 16, 3, 7)
  want = _knn_reference(x, q, 10, exclude_self)
  # 300 rows in chunks of 64: the last chunk is padded.
  got = methods.knn_probe(x, q, 10, exclude_self=exclude_self, chunk_size=64)
  assert got.dtype == np.float32 and got.shape == (300, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(
      got, methods.knn_probe(x, q, 10, exclude_self=exclude_self,
                             chunk_size=64))


def test_knn_probe_all_others_and_self():
  x, q = _clustered(50, 4, 2, 8)
  # k = N - 1 without self: the mean of every other row's label.
  want = (q.sum(0, dtype=np.float64) - q) / 49
  np.testing.assert_allclose(methods.knn_probe(x, q, 49), want, atol=1e-6)
  # k = 1 with self: each row's nearest row is itself.
  np.testing.assert_allclose(methods.knn_probe(x, q, 1, exclude_self=False),
                             q, atol=1e-7)
  # Cosine: scaling a row does not move its neighbours.
  scale = np.linspace(0.1, 10.0, 50, dtype=np.float32)[:, None]
  np.testing.assert_allclose(methods.knn_probe(x * scale, q, 5),
                             methods.knn_probe(x, q, 5), atol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda x, q: methods.knn_probe(x, q, 20), "k <= 19"),
    (lambda x, q: methods.knn_probe(x, q, 21, exclude_self=False), "k <= 20"),
    (lambda x, q: methods.knn_probe(x, q, 0), ">= 1"),
    (lambda x, q: methods.knn_probe(x[:5], q, 3), r"\[20, D\]"),
    (lambda x, q: methods.knn_probe(x, q * 0.9, 3), "sum to 1"),
    (lambda x, q: methods.knn_probe(np.where(x > 0, np.nan, x), q, 3),
     "finite"),
    (lambda x, q: methods.logistic_probe(x, q, l2=0.0), "l2"),
    (lambda x, q: methods.logistic_probe(x, q, steps=0), "steps"),
])
def test_probes_reject_bad_inputs(call, match):
  x, q = _clustered(20, 4, 2, 9)
  with pytest.raises(ValueError, match=match):
    call(x, q)


def _logistic_reference(x, q, l2):
  """scipy L-BFGS-B in float64 on mean CE(q, softmax(xW + b)) + l2/2 |W|^2."""
  x = x.astype(np.float64)
  q = q.astype(np.float64)
  (n, d), c = x.shape, q.shape[1]

  def f(theta):
    w, b = theta[:d * c].reshape(d, c), theta[d * c:]
    z = x @ w + b
    g = (special.softmax(z, axis=1) - q) / n
    value = -(q * special.log_softmax(z, axis=1)).sum() / n
    value += 0.5 * l2 * (w * w).sum()
    return value, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])

  res = optimize.minimize(f, np.zeros(d * c + c), jac=True, method="L-BFGS-B",
                          options=dict(maxiter=5000, gtol=1e-10, ftol=1e-15))
  assert res.success, res.message
  w, b = res.x[:d * c].reshape(d, c), res.x[d * c:]
  return special.softmax(x @ w + b, axis=1)


def test_logistic_probe_matches_scipy():
  x, q_soft = _clustered(200, 6, 3, 10)
  q_hard = np.eye(3, dtype=np.float32)[q_soft.argmax(1)]
  for q in (q_hard, q_soft):  # Same shapes: one compile.
    want = _logistic_reference(x, q, 1e-2)
    got = methods.logistic_probe(x, q, l2=1e-2, steps=300)
    assert got.dtype == np.float32 and got.shape == (200, 3)
    np.testing.assert_allclose(got, want, atol=1e-3)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
  np.testing.assert_array_equal(
      got, methods.logistic_probe(x, q_soft, l2=1e-2, steps=300))


_WEAK = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]],
                 np.float32)
_PROBE = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]],
                  np.float32)


def test_relabel_by_hand():
  hard = methods.relabel(_WEAK, _PROBE, mode="hard")
  np.testing.assert_array_equal(
      hard, np.array([[0.8, 0.2], [1.0, 0.0], [0.0, 1.0], [0.55, 0.45]],
                     np.float32))
  soft = methods.relabel(_WEAK, _PROBE, mode="soft")
  np.testing.assert_allclose(
      soft, [[0.8, 0.2], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]], rtol=1e-6)
  assert hard.dtype == soft.dtype == np.float32
  # Agreeing rows are untouched bit for bit.
  np.testing.assert_array_equal(soft[[0, 3]], _WEAK[[0, 3]])
  with pytest.raises(ValueError, match="mode"):
    methods.relabel(_WEAK, _PROBE, mode="blend")
  with pytest.raises(ValueError, match="same shape"):
    methods.relabel(_WEAK, _PROBE[:3])


def test_disagreement_and_filter_by_hand():
  # Binary: |q(1) - p(1)| = 0.1, 0.3, 0.4, 0.
  np.testing.assert_allclose(methods.disagreement(_WEAK, _PROBE),
                             [0.1, 0.3, 0.4, 0.0], atol=1e-6)
  np.testing.assert_array_equal(
      methods.filter_by_disagreement(_WEAK, _PROBE, drop_fraction=0.5),
      [1, 0, 0, 1])
  np.testing.assert_array_equal(
      methods.filter_by_disagreement(_WEAK, _PROBE, drop_fraction=0.25),
      [1, 1, 0, 1])
  np.testing.assert_array_equal(
      methods.filter_by_disagreement(_WEAK, _PROBE, drop_fraction=0.0),
      [1, 1, 1, 1])
  # Never drops everything.
  assert methods.filter_by_disagreement(_WEAK, _PROBE,
                                        drop_fraction=0.99).sum() == 1
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    methods.filter_by_disagreement(_WEAK, _PROBE, drop_fraction=1.0)
  # Three classes: half the L1 distance.
  w3 = np.array([[0.5, 0.3, 0.2]], np.float32)
  p3 = np.array([[0.2, 0.3, 0.5]], np.float32)
  np.testing.assert_allclose(methods.disagreement(w3, p3), [0.3], atol=1e-6)


def test_knn_relabel_cleans_label_noise():
  """End to end: the probe recovers the clean class on most flipped rows."""
  rng = np.random.default_rng(11)
  y = rng.integers(0, 2, 400)
  x = (np.eye(2)[y] * 3 + rng.normal(size=(400, 2))).astype(np.float32)
  flip = rng.random(400) < 0.2
  weak = np.eye(2, dtype=np.float32)[np.where(flip, 1 - y, y)]
  probe = methods.knn_probe(x, weak, 15)
  fixed = methods.relabel(weak, probe, mode="hard")
  assert (fixed.argmax(1) == y).mean() > (weak.argmax(1) == y).mean() + 0.1
  kept = methods.filter_by_disagreement(weak, probe, drop_fraction=0.2) > 0
  assert (weak.argmax(1) == y)[kept].mean() > (weak.argmax(1) == y).mean()


# ---------------------------------------------------------------------------
# Iterated rounds
# ---------------------------------------------------------------------------


def test_student_store_probs():
  rng = np.random.default_rng(12)
  logits = rng.normal(size=(30, 4)) * 3
  got = methods.student_store_probs(logits)
  assert got.dtype == np.float32 and got.shape == (30, 4)
  np.testing.assert_allclose(got, special.softmax(logits, axis=1), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(
      methods.student_store_probs(logits, temperature=2.0),
      special.softmax(logits / 2, axis=1), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(methods.student_store_probs(logits,
                                                            harden=True),
                                np.eye(4)[logits.argmax(1)])
  big = np.array([[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0]], np.float32)
  np.testing.assert_array_equal(methods.student_store_probs(big),
                                [[1, 0], [0, 1], [0.5, 0.5]])
  for bad, match in ((np.zeros((3,)), r"\[N, C\]"),
                     (np.array([[np.inf, 0.0]]), "finite")):
    with pytest.raises(ValueError, match=match):
      methods.student_store_probs(bad)
  with pytest.raises(ValueError, match="temperature"):
    methods.student_store_probs(logits, temperature=0.0)


def test_label_change_fraction():
  prev = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5], [0.2, 0.8]])
  cur = np.array([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.45, 0.55]])
  assert methods.label_change_fraction(prev, cur) == 0.25
  assert methods.label_change_fraction(prev, prev) == 0.0
  with pytest.raises(ValueError, match="same shape"):
    methods.label_change_fraction(prev, cur[:2])
