"""Building blocks shared by the experiment configs in ``experiments/``."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections


def train_config(
    *,
    batch_size: int,
    epochs: float,
    learning_rate: float,
    optimizer: str = "adamw",
    eval_batch_size: int = 512,
    save_every: int = 500,
    log_every: int = 50,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
) -> ml_collections.ConfigDict:
  """One model's training settings; every field can be overridden from the command line."""
  return ml_collections.ConfigDict({
      "batch_size": batch_size,  # Global batch (examples or pairs), split over every device.
      "epochs": epochs,  # Passes over the split; or set num_steps > 0 to fix the step count.
      "num_steps": 0,
      "eval_batch_size": eval_batch_size,  # Examples per prediction batch.
      "save_every": save_every,  # Steps between checkpoints (every run also saves at its end).
      "log_every": log_every,  # Steps between logged metrics (metrics.jsonl).
      "optimizer": {
          "name": optimizer,  # 'adamw', 'adam' or 'sgd'.
          "learning_rate": learning_rate,  # Peak learning rate.
          "schedule": "cosine",  # 'cosine' or 'linear' decay to 0, or 'constant'.
          "warmup_steps": 0,  # Linear warm-up from 0, in optimizer updates.
          "weight_decay": weight_decay,  # Decoupled (AdamW) weight decay.
          "grad_clip": grad_clip,  # Global-norm clip; 0 = off.
          "accum_steps": 1,  # Gradient accumulation: micro-batches per update.
      },
  })


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """``experiments/NAME.py[:variant]`` -> its ``get_config(variant)``, with dotted overrides.

  The Python twin of ``--config=experiments/NAME.py:variant --config.KEY=VALUE``
  for notebooks and tests; an unknown key raises a KeyError that names it.
  """
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no experiment config at {path!r}; experiments live in experiments/NAME.py.")
  module_spec = importlib.util.spec_from_file_location(f"w2sg_experiment_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  with config.unlocked():
    for dotted, value in (overrides or {}).items():
      *parents, leaf = dotted.split(".")
      node = config
      for key in parents:
        node = node[key]
      if leaf not in node:
        raise KeyError(f"unknown config key {dotted!r} in {spec}")
      node[leaf] = value
  return config
