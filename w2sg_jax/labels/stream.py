"""Grain streaming of (input, weak label) pairs for the student runs.

The student dataset joins a random-access inputs source with a weak-label store
row by row, after checking that both list the same ids in the same order:

  element i = {**inputs_source[i] without "id", "targets": store.probs[i]}

then ``shuffle(seed) -> repeat() -> batch(batch_size)``. Grain's shuffle is a
pure permutation of the index (seeded with seed + epoch, so every epoch has its
own order and each example appears exactly once per epoch of the element
stream), so batch k is a pure function of (seed, k): the data position to
checkpoint is the step, and resuming at step k means `batches_from(ds, k)`.
No iterator state needs saving.

Batches may straddle an epoch boundary when N is not a multiple of B (the
stream is the concatenation of the epochs' permutations, cut into batches of
B); no example is dropped, and after k steps the student has seen exactly
k * B examples, k * B / N epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from w2sg_jax.labels.store import StoreMismatchError, WeakLabelStore, check_ids, normalize_id

__all__ = [
    "StudentSource",
    "batch_indices",
    "batches_from",
    "epoch_order",
    "steps_per_epoch",
    "student_dataset",
    "to_train_batch",
    "train_batches",
]

# Enough to overlap host batching with a device step; batches are big, so keep few.
DEFAULT_NUM_THREADS = 2
DEFAULT_PREFETCH = 4
# Positions checked against the source when the caller passes ids= explicitly.
_SPOT_CHECKS = 8


class StudentSource:
  """Random access to joined examples: ``{**inputs[i] without id, "targets": probs[i]}``.

  Rows are joined by position; `student_dataset` checks the ids first, so
  position i of the inputs and row i of the store hold the same example.
  With ``include_index`` the element also carries ``"index"`` (int64, the
  position in the split), e.g. to score corrupted and clean examples apart.
  """

  def __init__(self, inputs_source: Any, probs_NxC: np.ndarray, *, include_index: bool = False):
    if len(inputs_source) != len(probs_NxC):
      raise StoreMismatchError(
          f"the inputs source has {len(inputs_source)} examples and the store "
          f"{len(probs_NxC)}; recompute the weak labels for this split."
      )
    self._inputs = inputs_source
    self._probs = np.asarray(probs_NxC, np.float32)
    self._include_index = include_index

  def __len__(self) -> int:
    return len(self._probs)

  def _join(self, index: int, element: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in element.items() if k != "id"}
    if "targets" in out:
      raise ValueError(
          "the inputs source already has a 'targets' field; rename it, the "
          "student dataset puts the weak labels there."
      )
    out["targets"] = self._probs[index]
    if self._include_index:
      out["index"] = np.int64(index)
    return out

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    return self._join(index, self._inputs[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    indices = [int(i) for i in indices]
    if hasattr(self._inputs, "__getitems__"):
      elements = self._inputs.__getitems__(indices)
    else:
      elements = [self._inputs[i] for i in indices]
    return [self._join(i, e) for i, e in zip(indices, elements)]

  def __repr__(self) -> str:
    return f"StudentSource(N={len(self)}, inputs={type(self._inputs).__name__})"


def _check_source_ids(inputs_source: Any, store: WeakLabelStore, ids: Sequence[Any] | None) -> None:
  what = f"weak-label store {store.directory}"
  if len(inputs_source) != len(store):
    raise StoreMismatchError(
        f"{what} has {len(store)} examples but the inputs source has "
        f"{len(inputs_source)}; the split changed. Recompute the weak labels."
    )
  if ids is None:
    # Slow path: read every element's id.
    check_ids(store.ids, [inputs_source[i]["id"] for i in range(len(inputs_source))], what=what)
    return
  check_ids(store.ids, ids, what=what)
  # Fast path: trust ids= but spot-check a few positions against the source.
  n = len(store)
  for i in sorted({int(k) for k in np.linspace(0, n - 1, min(n, _SPOT_CHECKS))}):
    got = normalize_id(inputs_source[i]["id"])
    if got != store.ids[i]:
      raise StoreMismatchError(
          f"ids= does not describe the inputs source: position {i} of the source "
          f"holds {got!r}, ids= and the store say {store.ids[i]!r}. Pass the "
          "source's own ids in its order (or omit ids= to read them all)."
      )


def student_dataset(
    inputs_source: Any,
    store: WeakLabelStore,
    *,
    batch_size: int,
    seed: int,
    drop_remainder: bool = True,
    ids: Sequence[str] | None = None,
    num_epochs: int | None = None,
    include_index: bool = False,
) -> grain.MapDataset:
  """The shuffled, repeated, batched stream of (input, weak label) pairs.

  Args:
    inputs_source: random access (``len`` and ``__getitem__``) to dicts of
      numpy arrays with an ``"id"`` field, in split order.
    store: the weak labels of the same split.
    batch_size: B.
    seed: shuffle seed in [0, 2**32); epoch e is shuffled with seed + e.
    drop_remainder: with a finite `num_epochs`, drop the final partial batch
      (irrelevant for the infinite stream).
    ids: the source's ids in order, when the caller has them: skips reading
      every element to check the join (a few positions are still checked).
    num_epochs: None repeats forever (the student trains for a step count).
    include_index: add ``"index"`` [B] int64, the split positions.

  Returns:
    A `grain.MapDataset` whose element k is batch k: ``{**inputs fields [B, ...],
    "targets": float32 [B, C]}``, a pure function of (seed, k).

  Raises:
    StoreMismatchError: the source's ids differ from the store's (count, or the
      first differing position).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32) for grain's shuffle, got {seed}.")
  if len(store) == 0:
    raise ValueError(f"the weak-label store {store.directory} is empty.")
  _check_source_ids(inputs_source, store, ids)
  source = StudentSource(inputs_source, store.probs, include_index=include_index)
  ds = grain.MapDataset.source(source).shuffle(seed).repeat(num_epochs)
  return ds.batch(batch_size, drop_remainder=drop_remainder)


def batches_from(
    dataset: grain.MapDataset,
    start_step: int,
    *,
    num_threads: int = DEFAULT_NUM_THREADS,
    prefetch_buffer_size: int = DEFAULT_PREFETCH,
) -> grain.DatasetIterator:
  """Iterator over batches `start_step`, `start_step` + 1, ... with prefetching.

  `num_threads` threads build up to `prefetch_buffer_size` batches ahead, in
  order, while the device runs; the batches are those of ``dataset[k]``, so a
  run resumed at step k sees exactly what an uninterrupted run saw. The
  checkpointed data position is the step (``num_threads=0`` disables
  prefetching).
  """
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  if start_step > len(dataset):
    raise ValueError(f"start_step {start_step} is past the end ({len(dataset)} batches).")
  if num_threads == 0:
    prefetch_buffer_size = 0
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
  return iter(dataset[start_step:].to_iter_dataset(options))


def to_train_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
  """Flat batch -> the trainer's layout ``{"inputs": {...}, "targets", "mask"}``.

  ``mask`` is all True (every row is a real example); ``index``, when present,
  stays at the top level rather than being fed to the model.
  """
  inputs = {k: v for k, v in batch.items() if k not in ("targets", "index")}
  out = {"inputs": inputs, "targets": batch["targets"],
         "mask": np.ones((len(batch["targets"]),), bool)}
  if "index" in batch:
    out["index"] = batch["index"]
  return out


def train_batches(
    dataset: grain.MapDataset,
    *,
    num_threads: int = DEFAULT_NUM_THREADS,
    prefetch_buffer_size: int = DEFAULT_PREFETCH,
) -> Callable[[int], Iterator[dict[str, Any]]]:
  """``position -> iterator`` of trainer-layout batches (for `train.fit`)."""
  mapped = dataset.map(to_train_batch)

  def batches(position: int) -> Iterator[dict[str, Any]]:
    return batches_from(mapped, position, num_threads=num_threads,
                        prefetch_buffer_size=prefetch_buffer_size)

  return batches


# ------------------------------------------------------------------ index helpers


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The split positions in the order the stream visits them in `epoch`, int64 [N].

  The same grain permutation as `student_dataset` (a permutation of range(N)).
  """
  ds = grain.MapDataset.range(num_examples).shuffle(seed).repeat()
  start = epoch * num_examples
  return np.asarray([ds[i] for i in range(start, start + num_examples)], np.int64)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The split positions in batch `step` of the infinite stream, int64 [B]."""
  ds = grain.MapDataset.range(num_examples).shuffle(seed).repeat()
  start = step * batch_size
  return np.asarray([ds[i] for i in range(start, start + batch_size)], np.int64)


def steps_per_epoch(num_examples: int, batch_size: int) -> float:
  """N / B: steps per pass over the data (fractional when B does not divide N)."""
  return num_examples / batch_size

