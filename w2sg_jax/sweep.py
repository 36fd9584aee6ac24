"""Many small runs as one compiled program: ``vmap`` over runs, ``scan`` over steps.

W2SG studies are sweeps (losses x noise rates x seeds). When the student is a
head on cached features, the whole data set fits in device memory, so every
run of a sweep group can train side by side: the same ``train_step`` as the
data-parallel trainer, ``vmap``ped over a leading run axis (each run with its
own parameters, seed, data order and targets), inside a ``fori_loop`` over
steps, so that the host is only visited once per chunk of steps (for the
progress bar and the NaN check) and the data never leaves the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2sg_jax import losses as losses_lib
from w2sg_jax import train as train_lib


def batch_indices(num_examples: int, batch_size: int, num_steps: int, seed: int) -> np.ndarray:
  """``[num_steps, batch_size]`` example indices: a fresh permutation each epoch.

  A pure function of ``(seed, epoch)``, so any step's batch can be recomputed,
  and the partial last batch of an epoch is dropped rather than padded.
  """
  if batch_size > num_examples:
    raise ValueError(
        f"batch_size {batch_size} is larger than the {num_examples} training examples; "
        "lower the batch size in the config."
    )
  per_epoch = num_examples // batch_size
  epochs = math.ceil(num_steps / per_epoch)
  rows = []
  for epoch in range(epochs):
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    rows.append(perm[: per_epoch * batch_size].reshape(per_epoch, batch_size))
  return np.concatenate(rows, 0)[:num_steps].astype(np.int32)


def init_params(make_model: Callable[[nnx.Rngs], nnx.Module], seeds: Sequence[int]):
  """Stacked initial parameters, one slice per seed, plus the shared graph."""
  graphdef, _ = nnx.split(make_model(nnx.Rngs(0)))

  def one(key):
    return nnx.split(make_model(nnx.Rngs(params=key)))[1]

  keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
  return graphdef, jax.vmap(one)(keys)


def train_group(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    inputs: Mapping[str, np.ndarray],
    targets_RxNxC: np.ndarray,
    seeds: Sequence[int],
    *,
    loss_fn: losses_lib.LossFn,
    opt: Mapping[str, Any],
    num_steps: int,
    batch_size: int,
    chunk_steps: int = 100,
    desc: str = "sweep",
    progress: bool = True,
) -> tuple[Callable[[Any, Mapping[str, jax.Array]], jax.Array], Any, list[dict[str, float]]]:
  """Trains R runs together; run r uses ``seeds[r]`` and targets ``targets_RxNxC[r]``.

  Returns ``(apply, params_R, history)``: ``apply(params_R, inputs)`` gives
  logits ``[R, N, C]`` and ``history`` holds the run-mean loss per chunk.
  """
  from tqdm.auto import tqdm

  num_runs = len(seeds)
  if targets_RxNxC.shape[0] != num_runs:
    raise ValueError(f"{targets_RxNxC.shape[0]} target sets for {num_runs} seeds; give one per run.")
  num_examples = targets_RxNxC.shape[1]
  tx, schedule = train_lib.make_optimizer(opt, num_steps)
  graphdef, params = init_params(make_model, seeds)

  def apply_fn(params, frozen, batch_inputs, rng):
    del frozen, rng
    return nnx.merge(graphdef, params)(**batch_inputs)

  states = jax.vmap(lambda p, s: train_lib.init_state(p, {}, tx, s))(params, jnp.asarray(seeds, jnp.uint32))
  # [steps, runs, batch]: each run walks its own permutation of the data.
  order = np.stack([batch_indices(num_examples, batch_size, num_steps, s) for s in seeds], 1)

  def run_steps(states, start, stop, order_SxRxB, inputs, targets):
    """Steps [start, stop) of every run. The bounds are traced values, so every
    chunk (the short last one too) reuses one compiled program."""

    def one_run(state, idx_B, targets_NxC):
      batch = {
          "inputs": jax.tree.map(lambda x: x[idx_B], inputs),
          "targets": targets_NxC[idx_B],
          "mask": jnp.ones(idx_B.shape, jnp.float32),
      }
      return train_lib.train_step(
          state, batch, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, schedule=schedule, num_steps=num_steps
      )

    def body(t, carry):
      states, _, first_bad = carry
      states, metrics = jax.vmap(one_run)(states, order_SxRxB[t], targets)
      bad = ~jnp.isfinite(metrics["loss"])
      first_bad = jnp.where(bad & (first_bad < 0), t + 1, first_bad)
      return states, metrics["loss"], first_bad

    init = (states, jnp.zeros(num_runs, jnp.float32), jnp.full(num_runs, -1, jnp.int32))
    return jax.lax.fori_loop(start, stop, body, init)

  run_steps = jax.jit(run_steps, donate_argnums=(0,))
  inputs_dev = jax.tree.map(jnp.asarray, dict(inputs))
  targets_dev = jnp.asarray(targets_RxNxC, jnp.float32)
  order_dev = jnp.asarray(order)
  history = []
  with tqdm(total=num_steps, desc=desc, disable=not progress, leave=False) as bar:
    for start in range(0, num_steps, chunk_steps):
      stop = min(start + chunk_steps, num_steps)
      states, loss_R, first_bad = run_steps(states, start, stop, order_dev, inputs_dev, targets_dev)
      first_bad = np.asarray(first_bad)
      if (first_bad >= 0).any():
        run = int(np.argmax(first_bad >= 0))
        raise train_lib.NonFiniteError(
            f"non-finite loss at step {first_bad[run]} of run {run} (seed {seeds[run]}) in {desc}; "
            "lower the learning rate or check the features and targets for NaN."
        )
      history.append({"step": stop, "loss": float(np.mean(loss_R))})
      bar.update(stop - start)
      bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")

  @jax.jit
  def apply(params_R, inputs):
    return jax.vmap(lambda p: apply_fn(p, None, inputs, None))(params_R)

  return apply, states.params, history
