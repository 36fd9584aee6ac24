"""Section e: a student step fed by the weak-label stream vs fed from memory.

The weak labels are written to an on-disk store (array_record, as the
pipeline does) and reopened. Four feeds drive the same ``Trainer`` step of an
MLP head on cached features:

* ``memory``: numpy fancy indexing of in-memory arrays (the floor);
* ``grain (prefetch)``: ``stream.student_dataset`` + ``stream.train_batches``,
  the pipeline's path: 2 threads building up to 4 batches ahead;
* ``grain (no prefetch)``: the same stream with ``num_threads=0``;
* ``grain from disk``: weak labels read record by record from the
  array_record file (``store.source()``) inside the Grain pipeline, with
  prefetch: the path for stores too large for memory.

The head's step takes about a millisecond, so any input cost shows; a
transformer student's step (section a) is hundreds of times longer and hides
it behind the prefetch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2sg_jax import losses as losses_lib
from w2sg_jax import parallel, train
from w2sg_jax.bench.sweeps import features
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream
from w2sg_jax.models import MLPHead

OPT = {"name": "adamw", "learning_rate": 1e-3, "schedule": "constant", "weight_decay": 0.0, "grad_clip": 1.0}


class _FeatureSource:
  """Random access to ``{"id", "x_BxD"}`` rows of an in-memory matrix."""

  def __init__(self, x, ids):
    self._x, self._ids = x, ids

  def __len__(self):
    return len(self._x)

  def __getitem__(self, i):
    return {"id": self._ids[i], "x_BxD": self._x[i]}


class _DiskJoin:
  """Features from memory, weak labels decoded from the store's array_record file."""

  def __init__(self, x, store):
    self._x = x
    self._labels = store.source()

  def __len__(self):
    return len(self._x)

  def __getitem__(self, i):
    i = int(i)
    return {"x_BxD": self._x[i], "targets": self._labels[i]["probs"]}


def _memory_batches(x, probs, batch_size, seed) -> Iterator[dict[str, Any]]:
  n = len(x)
  rng = np.random.default_rng(seed)
  while True:
    perm = rng.permutation(n)
    for k in range(n // batch_size):
      idx = perm[k * batch_size:(k + 1) * batch_size]
      yield {"inputs": {"x_BxD": x[idx]}, "targets": probs[idx], "mask": np.ones(batch_size, bool)}


def _disk_batches(x, store, batch_size, seed) -> Iterator[dict[str, Any]]:
  import grain

  ds = grain.MapDataset.source(_DiskJoin(x, store)).shuffle(seed).repeat().batch(batch_size)
  ds = ds.map(stream.to_train_batch)
  options = grain.ReadOptions(num_threads=stream.DEFAULT_NUM_THREADS,
                              prefetch_buffer_size=stream.DEFAULT_PREFETCH)
  return iter(ds.to_iter_dataset(options))


def bench_streaming(*, quick: bool, reps: int, log: Callable[[str], None] = print) -> dict[str, Any]:
  n, dim, hidden, steps = (1024, 32, (32,), 30) if quick else (8192, 384, (256,), 300)
  batch = 64
  x, probs = features(n, dim, seed=1)
  ids = [f"ex{i:06d}" for i in range(n)]
  rows = []
  with tempfile.TemporaryDirectory(prefix="w2sg-bench-store-") as tmp:
    t0 = time.perf_counter()
    store_lib.write_store(f"{tmp}/store", ids, probs, components={"bench": "streaming", "n": n})
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = store_lib.open_store(f"{tmp}/store")
    open_s = time.perf_counter() - t0
    ds = stream.student_dataset(_FeatureSource(x, ids), store, batch_size=batch, seed=0, ids=ids)

    feeds: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
        "memory": lambda: _memory_batches(x, probs, batch, 0),
        "grain (prefetch)": lambda: stream.train_batches(ds)(0),
        "grain (no prefetch)": lambda: stream.train_batches(ds, num_threads=0)(0),
        "grain from disk": lambda: _disk_batches(x, store, batch, 0),
    }
    mesh = parallel.make_mesh(1)
    tx, schedule = train.make_optimizer(OPT, steps)
    apply_fn, params0, frozen = train.split_model(MLPHead(dim, hidden, 2, rngs=nnx.Rngs(0)))
    params0, frozen = jax.device_get((params0, frozen))
    trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses_lib.get("js"), tx=tx, schedule=schedule,
                            num_steps=steps, mesh=mesh)

    def run(make_iter, with_step: bool) -> float:
      """Seconds per step over ``steps`` steps (after 5 untimed ones)."""
      # From host copies each time: the trainer donates (deletes) the state it is given.
      state = parallel.replicate(train.init_state(params0, frozen, tx, 0), mesh)
      it = make_iter()
      for _ in range(5):
        b = next(it)
        if with_step:
          state, _ = trainer.step(state, b)
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      for _ in range(steps):
        b = next(it)
        if with_step:
          state, _ = trainer.step(state, b)
      jax.block_until_ready(state)
      return (time.perf_counter() - t0) / steps

    samples: dict[str, dict[str, list[float]]] = {k: {"step": [], "data": []} for k in feeds}
    for _ in range(reps):  # Round-robin over feeds, as elsewhere, for fairness under load.
      for name, make_iter in feeds.items():
        samples[name]["step"].append(run(make_iter, True))
        samples[name]["data"].append(run(make_iter, False))
    base = float(np.median(samples["memory"]["step"]))
    for name in feeds:
      step_s = float(np.median(samples[name]["step"]))
      rows.append({
          "feed": name,
          "step_ms": step_s * 1e3,
          "relative_to_memory": step_s / base,
          "data_only_ms": float(np.median(samples[name]["data"])) * 1e3,
          "steps_per_s": 1.0 / step_s,
      })
      log(f"  {name}: {step_s * 1e3:.2f} ms/step ({step_s / base:.2f}x memory)")
  return {"examples": n, "dim": dim, "hidden": list(hidden), "batch": batch, "steps": steps,
          "store_write_s": write_s, "store_open_s": open_s, "rows": rows}
