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
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2sg_jax import engines
from w2sg_jax import losses as losses_lib
from w2sg_jax.bench import timing
from w2sg_jax.labels import stream as stream_lib
from w2sg_jax.models import MLPHead

OPT = {"name": "adamw", "learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 0,
       "weight_decay": 0.0, "grad_clip": 1.0}


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
          "loss": "js", "reps": reps, "rounds": rounds, "rows": rows}
