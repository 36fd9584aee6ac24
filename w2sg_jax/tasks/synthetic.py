"""A synthetic task in which weak-to-strong generalization is known to appear.

A latent ``z ~ N(0, I_d)`` decides the label through a random linear rule with
a margin-dependent flip, ``y = 1[w . z + label_noise > 0]``. The strong model
sees ``z`` itself (through a fixed random rotation). The weak model sees a
degraded view: a random projection of ``z`` onto ``weak_dim < d`` directions
plus Gaussian noise. The weak model's errors are then driven by noise and
missing directions that the strong model's view does not explain, which is the
regime where a strong student fit to weak labels recovers much of the gap
(Burns et al. 2023, section 4; the "unfittable weak errors" picture).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from w2sg_jax import config as schema
from w2sg_jax.data import splits as splits_lib
from w2sg_jax.models.heads import FeatureHead
from w2sg_jax.data.task import Split, Task, split_sizes

VERSION = "1.0.0"  # Bump when the generator changes: it is part of every hash.


def generate(cfg: schema.SyntheticDataConfig, num_examples: int) -> dict[str, np.ndarray]:
  """Features for both views and labels, a pure function of ``cfg.data_seed``."""
  rng = np.random.default_rng(cfg.data_seed)
  d, k = cfg.dim, cfg.weak_dim
  rule = rng.normal(size=d)
  rule /= np.linalg.norm(rule)
  rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
  projection = rng.normal(size=(d, k)) / np.sqrt(d)
  z = rng.normal(size=(num_examples, d))
  logit = z @ rule * cfg.label_sharpness + rng.logistic(size=num_examples)
  labels = (logit > 0).astype(np.int32)
  strong = z @ rotation
  weak = z @ projection + cfg.weak_noise * rng.normal(size=(num_examples, k))
  return {
      "strong": strong.astype(np.float32),
      "weak": weak.astype(np.float32),
      "labels": labels,
      "ids": np.array([f"synthetic-{i:07d}" for i in range(num_examples)]),
  }


class SyntheticTask(Task):
  name = "synthetic"
  num_classes = 2

  def fingerprint(self, config: schema.Experiment) -> dict[str, Any]:
    return {"version": VERSION, **schema.semantic_dict(config.data)}

  def splits(self, config: schema.Experiment, cache_dir: str) -> dict[str, Split]:
    del cache_dir  # Regenerated in milliseconds; nothing to cache.
    cfg = config.data
    sizes = split_sizes(cfg.sizes)
    data = generate(cfg, sum(sizes.values()))
    parts = splits_lib.split_indices(len(data["labels"]), sizes, seed=cfg.split_seed)
    return {
        name: Split(
            ids=data["ids"][idx],
            labels=data["labels"][idx],
            inputs={"weak": {"features": data["weak"][idx]}, "strong": {"features": data["strong"][idx]}},
        )
        for name, idx in parts.items()
    }

  def strong_features(self, config: schema.Experiment) -> bool:
    return True

  def make_model(self, role: str, config: schema.Experiment):
    in_dim = config.data.weak_dim if role == "weak" else config.data.dim
    hidden = _role(config, role).head_hidden
    return lambda rngs: FeatureHead(in_dim, hidden, self.num_classes, rngs=rngs)

  def model_name(self, role: str, config: schema.Experiment) -> str:
    dim = config.data.weak_dim if role == "weak" else config.data.dim
    return f"mlp{list(_role(config, role).head_hidden)} on {role} view ({dim}-d)"


def _role(config: schema.Experiment, role: str) -> schema.HeadModelConfig:
  """``config.weak`` or ``config.strong``; this task has no other model (no intermediate one to bootstrap through)."""
  if role not in ("weak", "strong"):
    raise ValueError(f"role={role!r}; the synthetic task has a 'weak' and a 'strong' model.")
  return config.weak if role == "weak" else config.strong
