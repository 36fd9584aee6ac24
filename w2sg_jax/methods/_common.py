"""Shared checks and selection rules of the methods package (numpy, host-side).

Probability inputs. Every method reads class distributions: a float array
whose last axis is the class axis C >= 2, finite, with entries in [0, 1] and
rows summing to 1 within ``SUM_TOLERANCE``. :func:`check_probs` enforces that
and says which row is wrong.

Output dtype. A method returns probabilities in its input's float dtype
promoted to at least float32 (:func:`out_dtype`): a float32 store in, a
float32 store out. Computations run in float64 on the host (or float32 in JAX
where a module says so) and are renormalised before the cast, so every output
row sums to 1 within float32 rounding, well inside the store's 1e-4 check.

Selection. :func:`keep_top` keeps an exact number of rows by score, with a
deterministic tie rule; every count-based filter goes through it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Rows must sum to 1 within this. Tighter than the losses' 1e-2 (which allows
# bf16 softmaxes): methods read float32 stores (checked to 1e-4) and float32
# softmaxes; anything further off is a bug upstream, not rounding.
SUM_TOLERANCE = 1e-3


def out_dtype(dtype) -> np.dtype:
  """The output float dtype: the input's, promoted to at least float32."""
  dtype = np.dtype(dtype)
  if not np.issubdtype(dtype, np.floating):
    return np.dtype(np.float32)
  return np.promote_types(dtype, np.float32)


def check_probs(probs: Any, name: str, *, ndim: int) -> np.ndarray:
  """Returns ``probs`` as a numpy array after checking it holds distributions.

  Args:
    probs: array-like ``[..., C]`` with ``ndim`` axes.
    name: the argument's name, for error messages.
    ndim: the number of axes required (2 for ``[N, C]``, 3 for ``[K, N, C]``).

  Returns:
    The input as a numpy array (not copied when it already is one).

  Raises:
    ValueError: wrong rank, C < 2, an empty axis, a non-float dtype, a value
      that is not finite or not in [0, 1], or a row whose sum is off 1 by more
      than ``SUM_TOLERANCE``.
  """
  arr = np.asarray(probs)
  axes = {2: "[N, C]", 3: "[K, N, C]"}.get(ndim, f"{ndim} axes")
  if arr.ndim != ndim:
    raise ValueError(
        f"{name} must have shape {axes}; got shape {arr.shape}. For hard "
        "labels pass a one-hot array (np.eye(C)[labels]).")
  if arr.shape[-1] < 2:
    raise ValueError(
        f"{name} has shape {arr.shape}: the last axis is the class axis and "
        "needs C >= 2 classes (for one probability p per row pass [1 - p, p]).")
  if 0 in arr.shape:
    raise ValueError(f"{name} has an empty axis: shape {arr.shape} {axes}.")
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(
        f"{name} must be floating point probabilities, got dtype {arr.dtype}.")
  flat = arr.reshape(-1, arr.shape[-1])
  finite = np.isfinite(flat).all(axis=1)
  if not finite.all():
    row = int(np.flatnonzero(~finite)[0])
    raise ValueError(
        f"{name} has {int((~finite).sum())} rows that are not finite (first: "
        f"flat row {row} = {flat[row]}).")
  outside = ((flat < 0) | (flat > 1)).any(axis=1)
  if outside.any():
    row = int(np.flatnonzero(outside)[0])
    raise ValueError(
        f"{name} must hold probabilities in [0, 1]; flat row {row} = "
        f"{flat[row]}. Pass softmax outputs, not logits.")
  off = np.abs(flat.astype(np.float64).sum(axis=1) - 1.0) > SUM_TOLERANCE
  if off.any():
    row = int(np.flatnonzero(off)[0])
    raise ValueError(
        f"{name} rows must sum to 1 (within {SUM_TOLERANCE}); {int(off.sum())} "
        f"do not (first: flat row {row} sums to {flat[row].sum():.6g}). Is the "
        "class axis last?")
  return arr


def normalize_rows(x: np.ndarray) -> np.ndarray:
  """Divides each row of a non-negative float64 array by its sum."""
  return x / x.sum(axis=-1, keepdims=True)


def check_fraction(value: Any, name: str, *, allow_zero: bool,
                   allow_one: bool) -> float:
  """``value`` as a float, after checking it lies in the unit interval."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    raise ValueError(
        f"{name} must be a number in [0, 1]; got {value!r}.")
  value = float(value)
  low_ok = value >= 0 if allow_zero else value > 0
  high_ok = value <= 1 if allow_one else value < 1
  if not (math.isfinite(value) and low_ok and high_ok):
    interval = (("[" if allow_zero else "(") + "0, 1"
                + ("]" if allow_one else ")"))
    raise ValueError(f"{name} must lie in {interval}; got {value}.")
  return value


def check_vector(x: Any, name: str, n: int) -> np.ndarray:
  """A finite float64 vector of length ``n``."""
  arr = np.asarray(x)
  if arr.shape != (n,):
    raise ValueError(f"{name} must have shape [{n}] (one value per row); got "
                     f"shape {arr.shape}.")
  arr = arr.astype(np.float64)
  if not np.isfinite(arr).all():
    raise ValueError(f"{name} must be finite; got {arr}.")
  return arr


def keep_top(scores_N: np.ndarray, num_keep: int,
             tiebreak_N: np.ndarray | None = None) -> np.ndarray:
  """A 0/1 float32 ``[N]`` mask keeping exactly the ``num_keep`` top scores.

  Rows are ranked by ``scores_N`` (higher first), then by ``tiebreak_N``
  (higher first) when given, then by index (lower first). The rule is exact
  and deterministic: ties never make the kept count differ from ``num_keep``.
  """
  n = scores_N.shape[0]
  if not 0 <= num_keep <= n:
    raise ValueError(f"num_keep must lie in [0, {n}]; got {num_keep}.")
  keys = [np.arange(n)]  # np.lexsort sorts by the LAST key first.
  if tiebreak_N is not None:
    keys.append(-tiebreak_N)
  keys.append(-scores_N)
  order = np.lexsort(keys)
  mask = np.zeros(n, np.float32)
  mask[order[:num_keep]] = 1.0
  return mask
