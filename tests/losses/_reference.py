"""Independent float64 numpy/scipy references and inputs for the loss tests.

Every reference is written from the textbook formula in float64 numpy, with
the package's documented epsilon convention (clip at eps, renormalise)
applied where a loss uses one.
"""

import numpy as np
from scipy import special
from scipy.spatial import distance

from w2sg_jax import losses

EPS = 1e-7
F_DIVS = ["kl", "reverse_kl", "js", "hellinger", "pearson", "neyman", "tv",
          "jeffreys", "alpha"]
BASELINES = ["xent", "logconf", "reverse_xent", "product"]
SYMMETRIC = ["js", "hellinger", "tv", "jeffreys"]
# Registered names without the "+conf" twins (those have their own tests).
BASE_NAMES = sorted(n for n in losses.names() if not n.endswith("+conf"))
CONF_NAMES = sorted(n for n in losses.names() if n.endswith("+conf"))


def q_of(logits):
  return special.softmax(np.asarray(logits, np.float64), axis=-1)


def clip(r, eps=EPS):
  m = np.maximum(np.asarray(r, np.float64), eps)
  return m / m.sum(-1, keepdims=True)


def ref_alpha(p, q, a):
  pc, qc = clip(p), clip(q)  # float64
  return (np.sum(pc**a * qc**(1.0 - a), -1) - 1.0) / (a * (a - 1.0))


def ref_div(name, p, q):
  """D(P || Q) (or the baseline's value) in float64 for weak P, student Q."""
  p = np.asarray(p, np.float64)
  if name == "kl":
    return special.rel_entr(p, q).sum(-1)
  if name == "reverse_kl":
    return special.rel_entr(q, clip(p)).sum(-1)
  if name == "js":
    return distance.jensenshannon(p, q, axis=-1) ** 2
  if name == "hellinger":
    return np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, -1)
  if name == "pearson":
    qc = clip(q)
    return np.sum((p - qc) ** 2 / qc, -1)
  if name == "neyman":
    pc = clip(p)
    return np.sum((pc - q) ** 2 / pc, -1)
  if name == "tv":
    return 0.5 * np.abs(p - q).sum(-1)
  if name == "jeffreys":
    # kl_div(x, y) = x log(x/y) - x + y; the linear terms cancel in the sum.
    return special.kl_div(p, q).sum(-1) + special.kl_div(q, clip(p)).sum(-1)
  if name == "alpha":
    return ref_alpha(p, q, 0.5)
  if name in ("xent", "logconf"):
    return -np.sum(special.xlogy(p, q), -1)
  if name == "reverse_xent":
    return -np.sum(q * np.log(clip(p)), -1)
  if name == "product":
    return -np.log(np.sum(p * q, -1))
  raise KeyError(name)


def ref_hard(logits, p):
  """Burns et al. hard labels: quantile of Q(class 0) at mean P(class 1)."""
  q = q_of(logits)
  c = q.shape[-1]
  if c == 2:
    threshold = np.quantile(q[:, 0], np.mean(np.asarray(p, np.float64)[:, 1]))
    is0 = q[:, 0] >= threshold
    return np.stack([is0, ~is0], -1).astype(np.float64)
  return np.eye(c)[np.argmax(logits, -1)]


def ref_weight(progress, confidence, warmup, schedule):
  """The mixing weight a, written from each schedule's definition."""
  if progress is None:
    return confidence
  if schedule == "linear":
    return confidence * (min(1.0, progress / warmup) if warmup else 1.0)
  # The Burns et al. release, logconf_loss_fn, line for line.
  coef = 1.0 if progress > warmup else progress
  coef *= confidence
  return coef


def ref_loss(name, logits, p, confidence=0.0, a=None):
  """Reference value of the registered default loss ``name``.

  ``<loss>+conf`` names use the Burns et al. release defaults at ``a``
  (default: fully warmed up, a = 0.5); otherwise ``confidence`` with mixing
  weight ``a`` (default ``confidence``).
  """
  if name.endswith("+conf"):
    name, confidence = name[:-len("+conf")], 0.5
  if name == "logconf":
    confidence = 0.75
  p = np.asarray(p, np.float64)
  q = q_of(logits)
  if confidence:
    a = confidence if a is None else a
    p = (1 - a) * p + a * ref_hard(logits, p)
  if name in ("xent", "logconf"):  # log q in log space: q may underflow
    return -np.sum(p * special.log_softmax(np.float64(logits), -1), -1)
  return ref_div(name, p, q)


def inputs(kind, c, n=64, seed=0):
  rng = np.random.default_rng(seed + 7 * c)
  if kind == "random":
    logits = 2.0 * rng.standard_normal((n, c))
    p = rng.dirichlet(np.ones(c), size=n)
  else:  # near-deterministic, with a few exact one-hot weak rows
    logits = 12.0 * rng.standard_normal((n, c))
    p = special.softmax(12.0 * rng.standard_normal((n, c)), axis=-1)
    p[: n // 8] = np.eye(c)[rng.integers(0, c, n // 8)]
  return logits.astype(np.float32), p.astype(np.float32)


def many_draws(c, n=64, seed=11):
  rng = np.random.default_rng(seed)
  scale = rng.choice([0.1, 1.0, 4.0, 15.0], size=(n, 1))
  return (scale * rng.standard_normal((n, c))).astype(np.float32)


def extreme_inputs(c):
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
  return np.stack(rows), np.stack(weak)
