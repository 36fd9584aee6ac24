"""Section c: K seeds of a student head trained as one vmapped program vs K separate runs.

The student is an MLP head on cached 384-d features (MiniLM's width), the
setting of the offline experiments. ``engines.train_vmap`` with K seeds
compiles one program that ``vmap``s the step over runs and loops over steps;
a separate run is the same call with one seed. Each call compiles its own
program (that is what a user pays for a run), so both are timed end to end,
compilation included: a group of K once, a single run once, alternating
(``timing.time_rounds``), with the seed of the single run changing from call
to call. K separate runs cost K single runs, so

.. math:: \\text{speed-up} = \\frac{K \\cdot \\operatorname{median}(\\text{one run})}
                                  {\\operatorname{median}(\\text{group of } K)}

per round, and the headline is the worst round.

`bench_grid` (in the same section): a grid of 4 learning rates x 4 weight
decays x 5 seeds of a linear head, the tweets_minilm student, as ONE
``engines.train_runs`` call (one vmapped program: each run's learning rate and
weight decay live in its optimizer state) against its 80 runs one call at a
time, with each side's compile time.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import engines
from w2sg_jax import losses as losses_lib
from w2sg_jax.bench import timing
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib
from w2sg_jax.models import FeatureHead, MLPHead

OPT = schema.OptimizerConfig(name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=0, weight_decay=0.0,
                             grad_clip=1.0)


def features(num_examples: int, dim: int, num_classes: int = 2, seed: int = 0):
  """Gaussian features and soft targets from a random linear teacher."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_examples, dim)).astype(np.float32)
  logits = x @ rng.normal(size=(dim, num_classes)) / np.sqrt(dim) * 3.0
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return x, (p / p.sum(-1, keepdims=True)).astype(np.float32)


def stacked(x: np.ndarray, probs: np.ndarray, seeds: list[int], *, batch: int, steps: int):
  """What ``engines.train_runs`` builds from K label streams: inputs once, targets and orders per run."""
  order = np.stack([stream_lib.batch_indices(len(x), batch, steps, s) for s in seeds], 1)
  return stream_lib.StackedStreams(inputs={"x_BxD": x}, targets_RxNxC=np.broadcast_to(probs, (len(seeds),) + probs.shape),
                                   order_SxRxB=order, seeds=tuple(seeds))


def bench_sweeps(*, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
  reps, rounds = timing.reps_rounds(quick)
  if quick:
    n, dim, hidden, steps, ks = 512, 32, (32,), 20, (4,)
  else:
    n, dim, hidden, steps, ks = 8192, 384, (256,), 250, (4, 16)
  batch = 64
  x, probs = features(n, dim)
  loss_fn = losses_lib.get("js")

  def make_model(rngs: nnx.Rngs):
    return MLPHead(dim, hidden, 2, rngs=rngs)

  def group(seeds):
    _, params, _ = engines.train_vmap(make_model, stacked(x, probs, list(seeds), batch=batch, steps=steps),
                                      loss_fn=loss_fn, opt=OPT, num_steps=steps, chunk_steps=steps, progress=False)
    return jax.block_until_ready(params)

  group([0])  # Warm-up: imports, the first trace of everything.
  rows = []
  for k in ks:
    fresh = itertools.count(1000)
    res = timing.time_rounds({"one run": lambda: group([next(fresh)]), f"group of {k}": lambda k=k: group(range(k))},
                             warmup=0, reps=max(reps, k) if not quick else reps, rounds=rounds)
    one, grp = res.medians("one run"), res.medians(f"group of {k}")
    speedup = [k * o / g for o, g in zip(one, grp)]
    rows.append({
        "k": k, "one_run_s": one, "group_s": grp, "sequential_s": [k * o for o in one], "speedup": speedup,
        "worst_speedup": min(speedup), "per_run_vmapped_s": [g / k for g in grp], "reps": res.timing("one run")["reps"],
    })
    log(f"  K={k}: group {'/'.join(f'{g:.2f}' for g in grp)} s, one run {'/'.join(f'{o:.2f}' for o in one)} s, "
        f"speed-up {'/'.join(f'{s:.1f}' for s in speedup)}x (worst {min(speedup):.1f}x)")
  return {"examples": n, "dim": dim, "hidden": list(hidden), "steps": steps, "batch": batch,
          "loss": "js", "reps": reps, "rounds": rounds, "rows": rows, "grid": bench_grid(quick=quick, log=log)}


# --------------------------------------------------------------------- grid

GRID_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
GRID_WDS = (0.0, 1e-4, 1e-3, 1e-2)
GRID_SEEDS = 5
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # As w2sg_jax/stages.py counts compilations.


@contextlib.contextmanager
def _compile_seconds():
  """``{fun_name: seconds}`` XLA spent compiling in the block (``jax.monitoring``)."""
  seconds: collections.Counter = collections.Counter()

  def listener(event, secs, **kwargs):
    if event == BACKEND_COMPILE:
      seconds[kwargs.get("fun_name", "?")] += secs

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seconds
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def bench_grid(*, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
  """A grid of learning rates x weight decays x seeds: ONE ``engines.train_runs`` call (one vmapped
  program) vs the same runs one ``train_runs`` call at a time, as tweets_minilm trains its students:
  a linear head on cached 384-d features, batch 64, 4 epochs.

  Cold: each side's first call after the program cache is emptied (compilation included), with
  XLA's compile seconds of the training loop (``jit(run_steps)``). Then the two alternate in rounds
  (``timing.time_rounds``, one call of each per round: the separate runs are R calls), warm.
  """
  _, rounds = timing.reps_rounds(quick)
  if quick:
    n, dim, epochs, lrs, wds, num_seeds = 512, 32, 1, GRID_LRS[:2], GRID_WDS[:2], 2
  else:
    n, dim, epochs, lrs, wds, num_seeds = 8000, 384, 4, GRID_LRS, GRID_WDS, GRID_SEEDS
  batch, num_classes = 64, 2
  load_start = timing.loadavg()
  x, probs = features(n, dim, num_classes)
  ids = [f"x{i}" for i in range(n)]
  n_test = min(2000, n)

  def make_model(rngs: nnx.Rngs):
    return FeatureHead(dim, (), num_classes, rngs=rngs)

  with tempfile.TemporaryDirectory(prefix="w2sg-bench-grid-") as tmp:
    store = store_lib.write_store(os.path.join(tmp, "store"), ids, probs, components={"bench": "grid"})
    runs = [engines.RunSpec(seed=s, store=store, optimizer={"learning_rate": lr, "weight_decay": wd})
            for lr in lrs for wd in wds for s in range(num_seeds)]
    kw = {"make_model": make_model, "train_ids": ids, "train_inputs": {"features": x},
          "eval_inputs": {"test": {"features": x[:n_test]}}, "loss_fn": losses_lib.get("js"), "progress": False,
          "train_cfg": schema.TrainConfig(batch_size=batch, epochs=epochs, optimizer=OPT)}

    def grid():
      return engines.train_runs(runs, engine="vmap", **kw).logits

    def separate():
      return [engines.train_runs([r], engine="vmap", **kw).logits for r in runs]

    # Warm-up: imports and the eager ops' first compilations, on programs of another step count.
    engines.train_runs(runs[:2], engine="vmap", **{**kw, "train_cfg": kw["train_cfg"].replace(num_steps=3)})
    cold = {}
    # Cold programs, as a fresh process has: the training loop, the shared prediction and the set-up programs.
    engines._vmap_program.cache_clear()  # pylint: disable=protected-access
    engines._vmap_apply.cache_clear()  # pylint: disable=protected-access
    engines._INIT_PROGRAMS.clear()  # pylint: disable=protected-access
    for name, fn in (("grid", grid), ("one run", lambda: engines.train_runs(runs[:1], engine="vmap", **kw).logits)):
      with _compile_seconds() as secs:  # Each side's own programs (R runs vs 1: two cache keys).
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        cold[name] = {"wall_s": time.perf_counter() - t0, "compile_s": secs.get("jit(run_steps)", 0.0),
                      "all_compile_s": sum(secs.values())}
    with _compile_seconds() as secs:  # Every program is cached now: the rounds compile nothing.
      res = timing.time_rounds({"grid": grid, "separate": separate}, warmup=0, reps=1, rounds=rounds)
  grid_s, separate_s = res.medians("grid"), res.medians("separate")
  speedup = [s / g for g, s in zip(grid_s, separate_s)]
  num_runs = len(runs)
  one_s = [s / num_runs for s in separate_s]
  cold_separate = cold["one run"]["wall_s"] + (num_runs - 1) * min(one_s)
  out = {
      "examples": n, "dim": dim, "classes": num_classes, "batch": batch, "epochs": epochs,
      "steps": stream_lib.num_steps_for(n, batch, epochs), "loss": "js", "model": "linear head",
      "learning_rates": list(lrs), "weight_decays": list(wds), "seeds": num_seeds, "runs": num_runs,
      "rounds": rounds, "grid_s": grid_s, "separate_s": separate_s, "one_run_s": one_s, "speedup": speedup,
      "worst_speedup": min(speedup), "cold": cold, "cold_speedup": cold_separate / cold["grid"]["wall_s"],
      "compile_ratio": cold["grid"]["compile_s"] / max(cold["one run"]["compile_s"], 1e-9),
      "compiled_in_rounds_s": dict(secs), "loadavg_start": load_start,
      "loadavg_end": timing.loadavg(),
  }
  load = lambda v: "/".join(f"{a:.1f}" for a in v) if v else "n/a"
  log(f"  grid {len(lrs)} lr x {len(wds)} wd x {num_seeds} seeds = {num_runs} runs, {out['steps']} steps each, "
      f"load {load(load_start)} -> {load(out['loadavg_end'])}")
  log(f"  warm: one program {'/'.join(f'{g:.2f}' for g in grid_s)} s, {num_runs} separate runs "
      f"{'/'.join(f'{s:.1f}' for s in separate_s)} s, speed-up {'/'.join(f'{s:.1f}' for s in speedup)}x "
      f"(worst {min(speedup):.1f}x)")
  log(f"  cold: one program {cold['grid']['wall_s']:.2f} s, one run {cold['one run']['wall_s']:.2f} s "
      f"(speed-up incl. compile {out['cold_speedup']:.1f}x); compile of the training loop "
      f"{cold['grid']['compile_s']:.2f} s vs {cold['one run']['compile_s']:.2f} s ({out['compile_ratio']:.2f}x)")
  return out
