"""A small model and data set shared by the training tests (and their subprocesses)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import losses, parallel, train


class TinyMLP(nnx.Module):
  def __init__(self, in_dim: int = 8, hidden: int = 16, num_classes: int = 3, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_dim, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, features):
    return self.fc2(nnx.relu(self.fc1(features)))


def data(num_examples: int = 256, in_dim: int = 8, num_classes: int = 3, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_examples, in_dim)).astype(np.float32)
  w = rng.normal(size=(in_dim, num_classes))
  logits = x @ w
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return x, probs.astype(np.float32)


OPT = schema.OptimizerConfig(name="adamw", learning_rate=1e-2, schedule="cosine", warmup_steps=2, weight_decay=1e-4,
                             grad_clip=1.0)


def make_trainer(num_devices: int, loss: str = "js", num_steps: int = 20, seed: int = 0,
                 opt: schema.OptimizerConfig | None = None):
  mesh = parallel.make_mesh(num_devices)
  tx, schedule = train.make_optimizer(opt or OPT, num_steps)
  apply_fn, params, frozen = train.split_model(TinyMLP(rngs=nnx.Rngs(seed)))
  state = parallel.replicate(train.init_state(params, frozen, tx, seed), mesh)
  trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses.get(loss), tx=tx, schedule=schedule,
                          num_steps=num_steps, mesh=mesh)
  return trainer, state


def batches(x, probs, batch_size: int, seed: int = 0):
  """A pure function of (seed, position): what checkpoints rely on."""
  def from_position(position):
    step = position
    while True:
      rng = np.random.default_rng([seed, step])
      idx = rng.choice(len(x), batch_size, replace=False)
      yield {"inputs": {"features": x[idx]}, "targets": probs[idx], "mask": np.ones(batch_size, np.float32)}
      step += 1
  return from_position
