"""What a data set contributes to the pipeline: its splits, fingerprint and models."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

SPLITS = ("weak_train", "w2s_train", "test")


@dataclasses.dataclass
class Split:
  """One split: stable ids, ground-truth labels, and what each model sees.

  ``inputs["weak"]`` and ``inputs["strong"]`` are dicts of ``[N, ...]`` arrays
  passed as keyword arguments to the weak and the strong model.
  """

  ids: np.ndarray
  labels: np.ndarray
  inputs: dict[str, dict[str, np.ndarray]]

  def __len__(self) -> int:
    return len(self.ids)


class Task:
  """What a data set contributes to the pipeline. Subclasses live in ``w2sg_jax.tasks``."""

  name: str = "task"
  num_classes: int = 2

  def fingerprint(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Everything about the data and preprocessing that changes the examples."""
    raise NotImplementedError

  def splits(self, config: ml_collections.ConfigDict, cache_dir: str) -> dict[str, Split]:
    raise NotImplementedError

  def make_model(self, role: str, config: ml_collections.ConfigDict) -> Callable[[nnx.Rngs], nnx.Module]:
    """A factory for the ``weak`` or ``strong`` model, taking its ``nnx.Rngs``."""
    raise NotImplementedError

  def trainable(self, role: str, config: ml_collections.ConfigDict) -> Any:
    """The NNX filter of the parameters that train (default: all of them)."""
    return nnx.Param

  def model_name(self, role: str, config: ml_collections.ConfigDict) -> str:
    return role
