"""Section c: K seeds of a student head trained as one vmapped program vs K separate runs.

The student is an MLP head on cached 384-d features (MiniLM's width), the
setting of the offline experiments. ``sweep.train_group`` with K seeds
compiles one program that ``vmap``s the step over runs and ``scan``s it over
steps; the baseline calls ``train_group`` K times with one seed each. Both
are timed end to end (compilation included, since each call compiles anew:
that is what a user pays), and the per-run cost is the total over K.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2sg_jax import losses as losses_lib
from w2sg_jax import sweep
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


def bench_sweeps(*, quick: bool, reps: int, log: Callable[[str], None] = print) -> dict[str, Any]:
  if quick:
    n, dim, hidden, steps, ks = 512, 32, (32,), 20, (1, 4)
  else:
    n, dim, hidden, steps, ks = 8192, 384, (256,), 250, (1, 4, 16)
  batch = 64
  x, probs = features(n, dim)
  loss_fn = losses_lib.get("js")

  def make_model(rngs: nnx.Rngs):
    return MLPHead(dim, hidden, 2, rngs=rngs)

  def group(seeds):
    targets = np.broadcast_to(probs, (len(seeds),) + probs.shape)
    apply, params, _ = sweep.train_group(
        make_model, {"x_BxD": x}, targets, seeds, loss_fn=loss_fn, opt=OPT,
        num_steps=steps, batch_size=batch, chunk_steps=steps, progress=False)
    return jax.block_until_ready(params)

  def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

  group([0])  # Warm-up: imports, the first trace of everything.
  rows = []
  for k in ks:
    seeds = list(range(k))
    vmapped, sequential = [], []
    for _ in range(reps if k < 16 else max(1, reps - 1)):
      vmapped.append(timed(lambda: group(seeds)))
      sequential.append(timed(lambda: [group([s]) for s in seeds]))
    v, s = float(np.median(vmapped)), float(np.median(sequential))
    rows.append({
        "k": k, "vmapped_s": v, "sequential_s": s, "speedup": s / v,
        "per_run_vmapped_s": v / k, "per_run_sequential_s": s / k,
    })
    log(f"  K={k}: one group {v:.2f} s, {k} calls {s:.2f} s, speedup {s / v:.2f}x")
  return {"examples": n, "dim": dim, "hidden": list(hidden), "steps": steps, "batch": batch,
          "loss": "js", "rows": rows}
