"""Label noise on weak soft labels: a deterministic, hashable corruption model.

A fraction ``rate`` of the examples is chosen (exactly ``round(rate * N)`` of
them, without replacement, from a numpy Generator seeded with ``seed``), and on
each chosen example the weak distribution q is moved along the line through the
uniform distribution u = 1/C:

.. math::

  \\tilde q = u + a \\, (q - u), \\qquad u_c = 1 / C.

``a = scale``. ``a = 1`` leaves q unchanged, ``a = 0`` makes the label
uninformative (uniform), and for C = 2, ``a = -1`` flips it (q -> 1 - q). The map
keeps every row on the simplex for every q exactly when -1/(C-1) <= a <= 1:
rows still sum to one, and the smallest entry u + a (q_c - u) stays >= 0 at
the corners q_c in {0, 1}.

The noise never reruns the weak model: it is applied to the clean stored
probabilities, and its ``as_dict()`` joins the store's hash components so that a
noisy store and a clean one never stand in for each other.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = [
    "NoiseSpec",
    "apply_noise",
    "check_scale",
    "corruption_mask",
    "flip",
    "num_corrupted",
    "shrink",
]


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
  """Which examples to corrupt and how.

  Attributes:
    rate: fraction r of the examples corrupted, 0 <= r <= 1.
    scale: a in q -> u + a (q - u); -1/(C-1) <= a <= 1 (C is checked when the
      noise is applied, the C-free bounds -1 <= a <= 1 here).
    seed: seed of the numpy Generator that picks the corrupted examples; kept
      apart from the student seed so that every student sees the same labels.
  """

  rate: float
  scale: float
  seed: int

  def __post_init__(self):
    # Normalize types so NoiseSpec(0, 1, 0) and NoiseSpec(0.0, 1.0, 0) hash alike.
    rate, scale = float(self.rate), float(self.scale)
    if isinstance(self.seed, bool) or int(self.seed) != self.seed:
      raise ValueError(f"NoiseSpec.seed must be an integer, got {self.seed!r}.")
    seed = int(self.seed)
    object.__setattr__(self, "rate", rate)
    object.__setattr__(self, "scale", scale)
    object.__setattr__(self, "seed", seed)
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
      raise ValueError(
          f"NoiseSpec.rate must be a fraction in [0, 1], got {rate}. "
          "It is the fraction of examples whose weak label is corrupted."
      )
    if not (math.isfinite(scale) and -1.0 <= scale <= 1.0):
      raise ValueError(
          f"NoiseSpec.scale must lie in [-1, 1], got {scale}: q -> u + a (q - u) "
          "leaves the probability simplex for a > 1 or a < -1/(C-1) (>= -1 for "
          "C = 2). Use a = -1 to flip binary labels, a = 0 for uniform labels."
      )
    if seed < 0:
      raise ValueError(f"NoiseSpec.seed must be >= 0, got {seed}.")

  @classmethod
  def none(cls) -> NoiseSpec:
    """The identity: no example corrupted."""
    return cls(rate=0.0, scale=1.0, seed=0)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> NoiseSpec:
    """Inverse of `as_dict` (used when reading a store's meta.json)."""
    return cls(rate=d["rate"], scale=d["scale"], seed=d["seed"])

  @property
  def is_identity(self) -> bool:
    """True when the spec changes no label (rate 0 or scale 1)."""
    return self.rate == 0.0 or self.scale == 1.0

  def as_dict(self) -> dict[str, Any]:
    """Plain dict for hashing and meta.json: {"rate", "scale", "seed"}."""
    return {"rate": self.rate, "scale": self.scale, "seed": self.seed}

  def min_scale(self, num_classes: int) -> float:
    """Smallest admissible a for C classes: -1/(C-1)."""
    return -1.0 / (num_classes - 1)


def flip(rate: float, seed: int) -> NoiseSpec:
  """Binary label flips on a fraction `rate` of examples: q -> 1 - q (a = -1)."""
  return NoiseSpec(rate=rate, scale=-1.0, seed=seed)


def shrink(rate: float, scale: float, seed: int) -> NoiseSpec:
  """Shrink a fraction `rate` of labels toward uniform: q -> u + scale (q - u)."""
  return NoiseSpec(rate=rate, scale=scale, seed=seed)


def num_corrupted(num_examples: int, spec: NoiseSpec) -> int:
  """Number of corrupted examples: round(rate * N) (0 for an identity spec)."""
  if spec.is_identity:
    return 0
  return int(round(spec.rate * num_examples))


def corruption_mask(num_examples: int, spec: NoiseSpec) -> np.ndarray:
  """Which examples `spec` corrupts, as a pure function of (N, rate, seed).

  Args:
    num_examples: N.
    spec: the noise.

  Returns:
    mask_N: bool [N], exactly round(rate * N) entries True (none if the spec is
      the identity), chosen without replacement by
      ``np.random.default_rng(seed).choice(N, k, replace=False)``.
  """
  mask_N = np.zeros((num_examples,), dtype=bool)
  k = num_corrupted(num_examples, spec)
  if k > 0:
    rng = np.random.default_rng(spec.seed)
    mask_N[rng.choice(num_examples, size=k, replace=False)] = True
  return mask_N


def check_scale(spec: NoiseSpec, num_classes: int) -> None:
  """Raises ValueError unless spec.scale >= -1/(C-1), so rows stay >= 0."""
  a_min = spec.min_scale(num_classes)
  # Small slack so that a = -1/(C-1) typed as a decimal is not rejected.
  if spec.scale < a_min - 1e-12:
    raise ValueError(
        f"NoiseSpec.scale={spec.scale} is below -1/(C-1) = {a_min:.6g} for "
        f"C={num_classes} classes: u + a (q - u) would give negative probabilities "
        f"for one-hot q. Use a scale in [{a_min:.6g}, 1]; a flip (a = -1) is only "
        "defined for binary labels."
    )


def apply_noise(
    probs_NxC: np.ndarray, spec: NoiseSpec
) -> tuple[np.ndarray, np.ndarray]:
  """Corrupts a deterministic subset of weak labels.

  .. math::

    \\tilde q_i = u + a (q_i - u) \\text{ if } m_i \\text{ else } q_i,
    \\qquad u = 1/C, \\; m = \\mathrm{corruption\\_mask}(N, spec).

  Args:
    probs_NxC: weak label distributions, [N, C], C >= 2.
    spec: the noise; its scale must satisfy a >= -1/(C-1).

  Returns:
    (noisy_NxC, mask_N): the noisy probabilities, same dtype as the input
    (computed in float64), and the bool mask of corrupted rows.

  Raises:
    ValueError: probs not [N, C] with C >= 2, or a < -1/(C-1).
  """
  probs_NxC = np.asarray(probs_NxC)
  if probs_NxC.ndim != 2 or probs_NxC.shape[1] < 2:
    raise ValueError(
        f"apply_noise expects probabilities of shape [N, C] with C >= 2, got "
        f"shape {probs_NxC.shape}."
    )
  n, c = probs_NxC.shape
  check_scale(spec, c)
  mask_N = corruption_mask(n, spec)
  if not mask_N.any():
    return probs_NxC.copy(), mask_N
  q = probs_NxC.astype(np.float64)
  u = 1.0 / c
  shrunk = u + spec.scale * (q - u)
  # Rounding can leave -1e-17 at the a = -1/(C-1) corner; the exact value is 0.
  shrunk = np.clip(shrunk, 0.0, 1.0)
  dtype = probs_NxC.dtype if np.issubdtype(probs_NxC.dtype, np.floating) else np.float64
  noisy = np.where(mask_N[:, None], shrunk, q).astype(dtype)
  return noisy, mask_N
