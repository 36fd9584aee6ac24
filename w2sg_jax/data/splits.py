"""Deterministic, disjoint index splits (weak_train | w2s_train | test | ...).

One permutation of ``range(num_examples)`` is drawn from the seed, and the
splits take consecutive chunks of it in the order given. So a split's indices
depend only on the seed and on the sizes of the splits before it: growing the
last split never moves an example between the earlier ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["REST", "split_indices"]

REST = -1  # A size of -1 means "every example not taken by the other splits".


def split_indices(
    num_examples: int, sizes: Mapping[str, int], seed: int
) -> dict[str, np.ndarray]:
  """Splits ``range(num_examples)`` into disjoint, seeded random index sets.

  With ``perm = default_rng(seed).permutation(num_examples)`` and the sizes
  ``n_1, ..., n_K`` in the order of ``sizes``, split k gets

  .. math:: \\text{perm}[\\textstyle\\sum_{j<k} n_j : \\sum_{j \\le k} n_j].

  One size may be ``-1`` (``REST``): it gets every example the others leave.

  Args:
    num_examples: N, the number of examples in the dataset.
    sizes: split name -> size, in the order the chunks are taken (e.g.
      ``{"weak_train": 4000, "w2s_train": 4000, "test": -1}``).
    seed: integer seed of the permutation.

  Returns:
    split name -> int64 index array ``[n_k]`` in permuted (random) order,
    in the order of ``sizes``. The arrays are disjoint; their union is all of
    ``range(N)`` when a size is ``-1``.

  Raises:
    ValueError: a size below -1, more than one -1, no splits, or sizes that add
      up to more than ``num_examples``.
  """
  num_examples = int(num_examples)
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}.")
  if not sizes:
    raise ValueError("sizes is empty: give at least one split, e.g. {'train': -1}.")
  sizes = {str(k): int(v) for k, v in sizes.items()}
  bad = {k: v for k, v in sizes.items() if v < REST}
  if bad:
    raise ValueError(
        f"Split sizes must be >= 0, or -1 for 'the rest'; got {bad}."
    )
  rest = [k for k, v in sizes.items() if v == REST]
  if len(rest) > 1:
    raise ValueError(
        f"At most one split may have size -1 ('the rest'); got {rest}. "
        "Give the others explicit sizes."
    )
  fixed = sum(v for v in sizes.values() if v != REST)
  if fixed > num_examples:
    raise ValueError(
        f"The split sizes {sizes} add up to {fixed} examples, but the data has "
        f"only {num_examples}. Lower the split sizes in the config so that they "
        f"add up to at most {num_examples} (or give one split size -1 for "
        "'the rest')."
    )

  perm = np.random.default_rng(seed).permutation(num_examples).astype(np.int64)
  out: dict[str, np.ndarray] = {}
  start = 0
  for name, size in sizes.items():
    n = num_examples - fixed if size == REST else size
    out[name] = perm[start : start + n]
    start += n
  return out
