"""The theory's quantities: misfit, risk and gain under an f, disagreement, intervals.

Pure functions of predictions and labels, tested against numpy / scipy. Every
divergence is the library's loss (`w2sg_jax.losses`), with its direction and
eps convention: D_f(target || softmax(model logits)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from w2sg_jax import losses as losses_lib

__all__ = [
    "BOUNDED",
    "EPS_DOMINATED",
    "PROB_FLOOR",
    "UNBOUNDED",
    "disagreement_matrix",
    "divergences",
    "gain_own",
    "mean_ci",
    "misfit",
    "own_divergence",
    "probs_to_logits",
    "risk",
    "seed_disagreement",
]

# The f of a loss that is not itself an f-divergence.
_OWN_F = {"xent": "kl", "logconf": "kl", "reverse_xent": "reverse_kl"}
BOUNDED = ("tv", "js", "hellinger")  # f-divergences bounded above (by 1, log 2, 2).
UNBOUNDED = ("kl", "pearson", "neyman")
PROB_FLOOR = 1e-12  # A weak probability enters as the logit log(max(q, floor)), as in stages.evaluate.
# f with f(0) = infinity: D_f(one-hot truth || model) exists only through the eps clip.
EPS_DOMINATED = ("reverse_kl", "neyman", "jeffreys")


def own_divergence(loss: str, hparams: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
  """The f-divergence a loss ``loss`` minimises, and its keyword arguments.

  ``xent`` and ``logconf`` -> ``kl``; ``reverse_xent`` -> ``reverse_kl``;
  ``js+conf`` -> ``js``; an f-divergence -> itself. The confidence term's
  hparams are dropped (they change the target, not the divergence); others
  (``alpha``, ``eps``) are kept.

  Raises:
    ValueError: the loss minimises no f-divergence (``product``).
  """
  name = loss[: -len(losses_lib.CONF_SUFFIX)] if loss.endswith(losses_lib.CONF_SUFFIX) else loss
  name = _OWN_F.get(name, name)
  hp = {k: v for k, v in dict(hparams or {}).items() if k not in losses_lib.CONFIDENCE_HPARAMS}
  if name not in losses_lib.F_DIVERGENCES:
    raise ValueError(f"loss {loss!r} minimises no f-divergence; the theory lab takes "
                     f"{', '.join(('xent', 'logconf') + tuple(losses_lib.F_DIVERGENCES))} (or their +conf names).")
  return name, hp


def probs_to_logits(probs_NxC: np.ndarray) -> np.ndarray:
  """Probabilities as logits, ``log(max(q, 1e-12))``: how a weak model's labels enter a risk."""
  return np.log(np.clip(np.asarray(probs_NxC, np.float64), PROB_FLOOR, 1.0)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _jitted(name: str, hp_items: tuple[tuple[str, Any], ...]) -> Callable[..., jax.Array]:
  return jax.jit(losses_lib.get(name, **dict(hp_items)))


def divergences(name: str, target_probs_NxC, model_logits_NxC, **hparams) -> np.ndarray:
  """``[N]`` per-example D_f(target || softmax(model_logits)) under the library's loss ``name``."""
  fn = _jitted(name, tuple(sorted(hparams.items())))
  return np.asarray(fn(jnp.asarray(model_logits_NxC, jnp.float32), jnp.asarray(target_probs_NxC, jnp.float32)))


def misfit(name: str, weak_probs_NxC, student_logits_NxC, **hparams) -> float:
  """R_f(G_sw, G_w): the mean over examples of D_f(weak || student)."""
  return float(np.mean(divergences(name, weak_probs_NxC, student_logits_NxC, **hparams)))


def risk(name: str, model_logits_NxC, labels_N, **hparams) -> float:
  """R_f(G, G*): the mean over examples of D_f(one-hot truth || model)."""
  logits = np.asarray(model_logits_NxC, np.float32)
  truth = np.eye(logits.shape[-1], dtype=np.float32)[np.asarray(labels_N)]
  return float(np.mean(divergences(name, truth, logits, **hparams)))


def gain_own(name: str, weak_probs_NxC, student_logits_NxC, labels_N, **hparams) -> float:
  """R_f(G_w, G*) - R_f(G_sw, G*): how much closer to the truth the student is than its supervisor."""
  return risk(name, probs_to_logits(weak_probs_NxC), labels_N, **hparams) - risk(
      name, student_logits_NxC, labels_N, **hparams)


def disagreement_matrix(preds_LxN) -> np.ndarray:
  """``[L, L]``: the fraction of examples on which predictions l and l' differ."""
  p = np.asarray(preds_LxN)
  return (p[:, None, :] != p[None, :, :]).mean(-1)


def seed_disagreement(preds_SxN) -> float:
  """Mean over pairs of seeds of the fraction of examples on which two seeds of one loss differ."""
  p = np.asarray(preds_SxN)
  if len(p) < 2:
    return float("nan")
  d = disagreement_matrix(p)
  return float(d[np.triu_indices(len(p), 1)].mean())


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
  """Mean and the half-width of its t interval over seeds (0 for one value)."""
  from scipy import stats

  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if len(v) == 0:
    return float("nan"), float("nan")
  if len(v) == 1:
    return float(v[0]), 0.0
  half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
  return float(v.mean()), float(half)
