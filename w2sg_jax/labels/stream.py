"""The stream: a split's inputs joined with one weak-label store, in the one data order.

A weak label travels one road::

  store (labels/store.py) -> LabelStream (here) -> train_step (train.py) -> loss

`LabelStream` checks that the store lists the split's ids in the split's
order (a store of another split or data set is an error, never a mis-join),
then serves the pairs (input, weak label) in the order of `batch_indices`, the
only definition of the data order in w2sg-jax. Both engines read it:

* the data-parallel engine takes `LabelStream.host_batches` (Grain, prefetched
  on threads; each process reads its own rows of every global batch);
* the vmapped engine takes `stack` of several streams: the inputs once, the
  targets ``[R, N, C]`` and the order ``[S, R, B]`` as device arrays.

Batch k is a pure function of (seed, k), so the data position to checkpoint is
the step: a run resumed at step k sees exactly the batches an uninterrupted run
saw, with no iterator state to save.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from w2sg_jax.labels.store import WeakLabelStore, check_ids

__all__ = ["ArraySource", "LabelStream", "StackedStreams", "batch_indices", "num_steps_for", "stack"]

# Enough to overlap host batching with a device step; batches are big, so keep few.
DEFAULT_NUM_THREADS = 2
DEFAULT_PREFETCH = 4


def num_steps_for(num_examples: int, batch_size: int, epochs: float, num_steps: int = 0) -> int:
  """Optimizer steps of a run: ``num_steps`` when positive, else ``epochs`` passes (at least one step)."""
  if int(num_steps) > 0:
    return int(num_steps)
  return max(1, int(float(epochs) * num_examples // int(batch_size)))


def batch_indices(num_examples: int, batch_size: int, num_steps: int, seed: int) -> np.ndarray:
  """``[num_steps, batch_size]`` int32 example positions: a fresh permutation each epoch.

  Epoch e is ``default_rng([seed, e]).permutation(N)`` cut into ``N // B``
  batches; the partial last batch of an epoch is dropped, never padded, so
  every batch holds B distinct examples and each epoch sees each example at
  most once. A pure function of its arguments: any step's batch can be
  recomputed.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}; it must be at least 1.")
  if batch_size > num_examples:
    raise ValueError(
        f"batch_size {batch_size} is larger than the {num_examples} training examples; "
        "lower the batch size in the config or raise the split size."
    )
  per_epoch = num_examples // batch_size
  epochs = math.ceil(num_steps / per_epoch)
  rows = []
  for epoch in range(epochs):
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    rows.append(perm[: per_epoch * batch_size].reshape(per_epoch, batch_size))
  return np.concatenate(rows, 0)[:num_steps].astype(np.int32)


class ArraySource:
  """Random access to a split's rows as ``{"id", **inputs}`` dicts (a Grain source)."""

  def __init__(self, ids: np.ndarray, inputs: Mapping[str, np.ndarray]):
    self._ids, self._inputs = ids, inputs

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"id": self._ids[i], **{k: v[i] for k, v in self._inputs.items()}}


class LabelStream:
  """One run's training data: a split's inputs, one store's labels, one seed's order.

  Args:
    ids: the split's example ids, in split order.
    inputs: ``{name: [N, ...]}`` model inputs of the split.
    store: the weak labels (or ground truth, as one-hot) of the same split.
    batch_size: global batch B.
    num_steps: steps of the run.
    seed: the order's seed (the run's seed).

  Raises:
    StoreMismatchError: the store's ids are not the split's ids in order.
  """

  def __init__(
      self,
      ids: Sequence[Any],
      inputs: Mapping[str, np.ndarray],
      store: WeakLabelStore,
      *,
      batch_size: int,
      num_steps: int,
      seed: int,
  ):
    check_ids(store.ids, ids, what=f"weak-label store {store.directory}")
    self.store = store
    # Host arrays only: `host_batches` builds batches on Grain's threads, and indexing a jax.Array
    # there would dispatch a JAX program from a second thread while the step's multi-device
    # collective runs on the main one. XLA:CPU's collectives then deadlock and, after 60 s,
    # abort the process ("Fatal Python error: Aborted" inside the jitted step).
    self.inputs = {k: np.asarray(v) for k, v in inputs.items()}
    self.batch_size = int(batch_size)
    self.num_steps = int(num_steps)
    self.seed = int(seed)
    self.order = batch_indices(len(store), self.batch_size, self.num_steps, self.seed)

  def __len__(self) -> int:
    return self.num_steps

  @property
  def targets(self) -> np.ndarray:
    """float32 ``[N, C]``: the store's label distributions, in split order."""
    return self.store.probs

  @property
  def weights(self) -> np.ndarray:
    """float32 ``[N]``: each row's weight in the loss (the store's, or 1 for every row)."""
    if self.store.weights is None:
      return np.ones(len(self.store), np.float32)
    return self.store.weights

  def batch(self, step: int, rows: slice = slice(None)) -> dict[str, Any]:
    """Batch ``step`` in the trainer's layout ``{"inputs", "targets", "mask"}`` (``rows`` of it).

    ``mask`` is each row's weight in the loss's weighted mean: 1, or the store's row weights.
    """
    idx = self.order[step][rows]
    return {
        "inputs": {k: v[idx] for k, v in self.inputs.items()},
        "targets": self.store.probs[idx],
        "mask": np.ones(len(idx), np.float32) if self.store.weights is None else self.store.weights[idx],
    }

  def host_batches(
      self,
      position: int,
      *,
      process_index: int = 0,
      process_count: int = 1,
      num_threads: int = DEFAULT_NUM_THREADS,
      prefetch: int = DEFAULT_PREFETCH,
  ) -> Iterator[dict[str, Any]]:
    """Batches ``position, position + 1, ...`` of this process's rows, built ahead on threads.

    Each of ``process_count`` processes reads its own contiguous block of
    every global batch; ``jax.make_array_from_process_local_data`` stitches
    them back together in the trainer.
    """
    import grain

    if not 0 <= position <= self.num_steps:
      raise ValueError(f"position {position} is outside the run's {self.num_steps} steps.")
    if self.batch_size % process_count:
      raise ValueError(f"batch_size {self.batch_size} does not split over {process_count} processes.")
    per_process = self.batch_size // process_count
    rows = slice(process_index * per_process, (process_index + 1) * per_process)
    dataset = grain.MapDataset.range(position, self.num_steps).map(lambda step: self.batch(int(step), rows))
    if num_threads == 0:
      return iter(dataset)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


@dataclasses.dataclass(frozen=True)
class StackedStreams:
  """R runs over one split, side by side: what the vmapped engine puts on the device."""

  inputs: dict[str, np.ndarray]  # [N, ...], shared by every run
  targets_RxNxC: np.ndarray
  order_SxRxB: np.ndarray
  seeds: tuple[int, ...]
  weights_RxN: np.ndarray | None = None  # Row weights in the loss; None: every row of every run counts 1.


def stack(streams: Sequence[LabelStream]) -> StackedStreams:
  """Stacks runs that share a split, a batch size and a step count."""
  if not streams:
    raise ValueError("stack() needs at least one stream.")
  first = streams[0]
  for s in streams[1:]:
    if s.inputs.keys() != first.inputs.keys() or len(s.store) != len(first.store):
      raise ValueError("streams of one group must share the split's inputs.")
    if (s.batch_size, s.num_steps) != (first.batch_size, first.num_steps):
      raise ValueError("streams of one group must share batch_size and num_steps.")
  return StackedStreams(
      inputs=first.inputs,
      targets_RxNxC=np.stack([s.targets for s in streams]),
      order_SxRxB=np.stack([s.order for s in streams], 1),
      seeds=tuple(s.seed for s in streams),
      weights_RxN=(None if all(s.store.weights is None for s in streams)
                   else np.stack([s.weights for s in streams])),
  )
