"""The confidence term: schedules, hard labels, composition with any loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from tests.losses import _reference as ref
from w2sg_jax import losses


def _burns_logconf_loss_fn(logits, labels, step_frac, warmup_frac=0.1,
                           aux_coef=0.5):
  """numpy port of logconf_loss_fn of the Burns et al. (2023) release."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.float64)
  coef = 1.0 if step_frac > warmup_frac else step_frac
  coef = coef * aux_coef
  preds = special.softmax(logits, axis=-1)
  mean_weak = np.mean(labels, axis=0)
  threshold = np.quantile(preds[:, 0], mean_weak[1])
  strong_preds = np.stack([preds[:, 0] >= threshold, preds[:, 0] < threshold],
                          axis=1)
  target = labels * (1 - coef) + strong_preds * coef
  return np.mean(-np.sum(target * special.log_softmax(logits, -1), -1))


# ---------------------------------------------------------------------------
# the weight a and its two schedules
# ---------------------------------------------------------------------------


def test_confidence_weight():
  w = functools.partial(losses.confidence_weight, confidence=0.6, warmup=0.2)
  assert float(w(None)) == pytest.approx(0.6)
  assert float(w(0.0)) == 0.0
  assert float(w(0.1)) == pytest.approx(0.3)
  assert float(w(0.9)) == pytest.approx(0.6)
  assert float(losses.confidence_weight(0.0, confidence=0.6,
                                        warmup=0.0)) == pytest.approx(0.6)


@pytest.mark.parametrize("schedule", ["linear", "burns"])
@pytest.mark.parametrize("confidence,warmup", [(0.5, 0.1), (0.75, 0.2),
                                               (1.0, 0.5), (0.5, 0.0)])
def test_confidence_weight_matches_each_schedule(schedule, confidence, warmup):
  weight = jax.jit(functools.partial(
      losses.confidence_weight, confidence=confidence, warmup=warmup,
      schedule=schedule))
  for t in np.linspace(0.0, 1.0, 201).tolist() + [None]:
    got = float(losses.confidence_weight(
        t, confidence=confidence, warmup=warmup, schedule=schedule))
    want = ref.ref_weight(t, confidence, warmup, schedule)
    assert got == pytest.approx(want, abs=1e-6), (t, got, want)
    if t is not None:  # traced progress gives the same
      assert float(weight(t)) == pytest.approx(want, abs=1e-6)


def test_burns_schedule_jumps_and_linear_does_not():
  burns = functools.partial(losses.confidence_weight, confidence=0.5,
                            warmup=0.1, schedule="burns")
  linear = functools.partial(losses.confidence_weight, confidence=0.5,
                             warmup=0.1, schedule="linear")
  # Burns: a = 0.5 * progress up to warmup (0.05 at 0.1), then 0.5.
  assert float(burns(0.1)) == pytest.approx(0.05)
  assert float(burns(0.1 + 1e-4)) == pytest.approx(0.5)
  assert float(burns(0.1 + 1e-4)) - float(burns(0.1)) == pytest.approx(0.45)
  # Linear: a = 0.5 * progress / warmup, continuous at warmup.
  assert float(linear(0.1)) == pytest.approx(0.5)
  assert abs(float(linear(0.1 + 1e-4)) - float(linear(0.1 - 1e-4))) < 1e-3
  grid = np.linspace(0.0, 1.0, 1001)
  steps = np.abs(np.diff([float(linear(t)) for t in grid]))
  assert steps.max() <= 0.5 / 0.1 * 1e-3 * 1.001  # slope x spacing
  steps = np.abs(np.diff([float(burns(t)) for t in grid]))
  assert steps.max() == pytest.approx(0.45, abs=1e-3)  # the one jump
  assert np.sort(steps)[-2] <= 0.5 * 1e-3 * 1.001  # elsewhere: slope 0.5


def test_unknown_schedule_is_refused():
  with pytest.raises(ValueError, match="'linear', 'burns'"):
    losses.get("js", confidence=0.5, confidence_schedule="step")
  with pytest.raises(ValueError, match="'linear', 'burns'"):
    losses.confidence_weight(0.5, confidence=0.5, schedule="cosine")


# ---------------------------------------------------------------------------
# the term in a loss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("c", [2, 10])
def test_logconf_warmup_is_continuous(c):
  logits, p = ref.inputs("random", c)
  loss = jax.jit(lambda t: jnp.mean(losses.get("logconf")(logits, p,
                                                          progress=t)))
  xent = float(jnp.mean(losses.get("xent")(logits, p)))
  hard = jnp.asarray(ref.ref_hard(logits, p), jnp.float32)
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


def test_conf_name_reproduces_the_burns_release():
  logits, p = ref.inputs("random", 2, n=128, seed=12)
  loss = jax.jit(lambda t: jnp.mean(losses.get("xent+conf")(logits, p,
                                                            progress=t)))
  grid = np.linspace(0.0, 1.0, 201)
  got = np.array([float(loss(t)) for t in grid])
  want = np.array([_burns_logconf_loss_fn(logits, p, t) for t in grid])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The jump at warmup = 0.1: from a = 0.05 to a = 0.5.
  xent = _burns_logconf_loss_fn(logits, p, 0.0)
  full = _burns_logconf_loss_fn(logits, p, 1.0)
  jump = float(loss(0.1 + 1e-4)) - float(loss(0.1))
  assert jump == pytest.approx((0.5 - 0.05) / 0.5 * (full - xent), rel=1e-3)
  assert abs(full - xent) > 1e-2  # a real jump, not a vanishing one
  # With the linear schedule the same loss is continuous at warmup.
  linear = jax.jit(lambda t: jnp.mean(losses.get(
      "xent+conf", confidence_schedule="linear")(logits, p, progress=t)))
  assert abs(float(linear(0.1 + 1e-4)) - float(linear(0.1))) < 1e-3 * abs(
      full - xent)


@pytest.mark.parametrize("name", ref.CONF_NAMES)
def test_conf_names_match_reference(name):
  base = name[:-len("+conf")]
  logits, p = ref.inputs("random", 2, seed=2)
  loss = losses.get(name)
  explicit = losses.get(base, confidence=0.5, warmup=0.1,
                        confidence_schedule="burns")
  for t in (0.0, 0.05, 0.1, 0.3, None):
    a = ref.ref_weight(t, 0.5, 0.1, "burns")
    want = ref.ref_loss(name, logits, p, a=a)
    got = loss(logits, p, progress=t)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got, explicit(logits, p, progress=t),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("c", [2, 10])
@pytest.mark.parametrize("name", ref.F_DIVS + ["xent", "reverse_xent",
                                               "product"])
def test_confidence_term_on_any_loss(name, c):
  logits, p = ref.inputs("random", c, seed=2)
  loss = losses.get(name, confidence=0.5, warmup=0.2)
  got = loss(logits, p, progress=0.1)  # a = 0.5 * 0.1 / 0.2 = 0.25
  want = ref.ref_loss(name, logits, p, confidence=0.5, a=0.25)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss(logits, p, progress=0.0),
                             losses.get(name)(logits, p), rtol=1e-6, atol=1e-7)
  # The direct function with the same hparams computes the same.
  direct = {"alpha": losses.alpha_divergence}.get(name) or getattr(losses,
                                                                    name)
  np.testing.assert_allclose(
      direct(logits, p, progress=0.1, confidence=0.5, warmup=0.2), got,
      rtol=1e-6, atol=1e-7)


def test_with_confidence_composes_with_any_loss_function():
  logits, p = ref.inputs("random", 2, seed=4)

  def brier(student_logits, weak_probs, *, where=None, progress=None):
    del where, progress
    return jnp.sum((jax.nn.softmax(student_logits) - weak_probs) ** 2, -1)

  loss = losses.with_confidence(brier, confidence=0.5, warmup=0.1,
                                schedule="burns")
  target = 0.95 * p + 0.05 * ref.ref_hard(logits, p)  # a = 0.05 at 0.1
  want = np.sum((ref.q_of(logits) - target) ** 2, -1)
  np.testing.assert_allclose(loss(logits, p, progress=0.1), want, rtol=1e-5,
                             atol=1e-7)
  assert losses.with_confidence(brier, confidence=0.0) is brier


def test_hard_labels_match_weak_prior():
  logits, p = ref.inputs("random", 2, seed=9)
  hard = np.asarray(losses.hard_student_labels(jnp.asarray(logits),
                                               jnp.asarray(p)))
  np.testing.assert_array_equal(hard, ref.ref_hard(logits, p))
  assert abs(hard[:, 0].mean() - p[:, 0].mean()) < 2 / 64
