"""Section e: a student step fed by the weak-label stream vs fed from memory.

The weak labels are written to an on-disk store (array_record, as the
pipeline does) and reopened. Four feeds drive the same ``Trainer`` step of an
MLP head on cached features:

* ``memory``: numpy fancy indexing of in-memory arrays (the floor);
* ``grain (prefetch)``: ``LabelStream.host_batches``, the data-parallel
  engine's path: 2 threads building up to 4 batches ahead;
* ``grain (no prefetch)``: the same stream with ``num_threads=0``;
* ``grain from disk``: weak labels read record by record from the
  array_record file (``store.source()``) inside the Grain pipeline, with
  prefetch: the path for stores too large for memory.

Each feed keeps one iterator and one train state for the whole comparison;
a timed call is ``steps`` steps (or ``steps`` batches, for "data only"), and
the eight callables are timed round-robin in rounds (``timing.time_rounds``).
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

from w2sg_jax import config as schema
from w2sg_jax import losses as losses_lib
from w2sg_jax import parallel, train
from w2sg_jax.bench import timing
from w2sg_jax.bench.sweeps import features
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream
from w2sg_jax.models import MLPHead

OPT = schema.OptimizerConfig(name="adamw", learning_rate=1e-3, schedule="constant", weight_decay=0.0, grad_clip=1.0)


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
      yield {"inputs": {"x_BxD": x[idx]}, "targets": probs[idx], "mask": np.ones(batch_size, np.float32)}


def _to_train_batch(b: dict[str, np.ndarray]) -> dict[str, Any]:
  return {"inputs": {"x_BxD": b["x_BxD"]}, "targets": b["targets"],
          "mask": np.ones(len(b["targets"]), np.float32)}


def _disk_batches(x, store, batch_size, seed) -> Iterator[dict[str, Any]]:
  import grain

  ds = grain.MapDataset.source(_DiskJoin(x, store)).shuffle(seed).repeat().batch(batch_size)
  ds = ds.map(_to_train_batch)
  options = grain.ReadOptions(num_threads=stream.DEFAULT_NUM_THREADS,
                              prefetch_buffer_size=stream.DEFAULT_PREFETCH)
  return iter(ds.to_iter_dataset(options))


def bench_streaming(*, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
  reps, rounds = timing.reps_rounds(quick)
  n, dim, hidden, steps = (1024, 32, (32,), 20) if quick else (8192, 384, (256,), 100)
  batch = 64
  x, probs = features(n, dim, seed=1)
  ids = [f"ex{i:06d}" for i in range(n)]
  rows = []
  # Enough batches for warm-up and every timed call of a feed.
  total_steps = (5 + (1 + reps * rounds)) * steps + 10
  with tempfile.TemporaryDirectory(prefix="w2sg-bench-store-") as tmp:
    t0 = time.perf_counter()
    store_lib.write_store(f"{tmp}/store", ids, probs, components={"bench": "streaming", "n": n})
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = store_lib.open_store(f"{tmp}/store")
    open_s = time.perf_counter() - t0
    label_stream = stream.LabelStream(ids, {"x_BxD": x}, store, batch_size=batch, num_steps=total_steps, seed=0)

    feeds: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
        "memory": lambda: _memory_batches(x, probs, batch, 0),
        "grain (prefetch)": lambda: label_stream.host_batches(0),
        "grain (no prefetch)": lambda: label_stream.host_batches(0, num_threads=0),
        "grain from disk": lambda: _disk_batches(x, store, batch, 0),
    }
    mesh = parallel.make_mesh(1)
    tx, schedule = train.make_optimizer(OPT, total_steps)
    apply_fn, params0, frozen = train.split_model(MLPHead(dim, hidden, 2, rngs=nnx.Rngs(0)))
    params0, frozen = jax.device_get((params0, frozen))
    trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses_lib.get("js"), tx=tx, schedule=schedule,
                            num_steps=total_steps, mesh=mesh)

    def make(name: str, with_step: bool) -> Callable[[], Any]:
      """``steps`` steps (or batches) of one feed, continuing its own iterator and state."""
      # From host copies: the trainer donates (deletes) the state it is given.
      held = {"it": feeds[name](), "state": parallel.replicate(train.init_state(params0, frozen, tx, 0), mesh)}

      def run():
        for _ in range(steps):
          b = next(held["it"])
          if with_step:
            held["state"], _ = trainer.step(held["state"], b)
        return held["state"]

      return run

    fns = {}
    for name in feeds:
      fns[f"{name}|step"] = make(name, True)
      fns[f"{name}|data"] = make(name, False)
    res = timing.time_rounds(fns, warmup=1, reps=reps, rounds=rounds)
    base = res.medians("memory|step")
    for name in feeds:
      step_s = [t / steps for t in res.medians(f"{name}|step")]
      rows.append({
          "feed": name,
          "step_ms": [t * 1e3 for t in step_s],
          "relative_to_memory": res.speedup("memory|step", f"{name}|step"),
          "data_only_ms": [t / steps * 1e3 for t in res.medians(f"{name}|data")],
          "steps_per_s": [1.0 / t for t in step_s],
      })
      rel = rows[-1]["relative_to_memory"]
      log(f"  {name}: {'/'.join(f'{t * 1e3:.2f}' for t in step_s)} ms/step "
          f"({'/'.join(f'{r:.2f}' for r in rel)}x memory)")
    del base
  return {"examples": n, "dim": dim, "hidden": list(hidden), "batch": batch, "steps": steps,
          "reps": reps, "rounds": rounds, "store_write_s": write_s, "store_open_s": open_s, "rows": rows}
