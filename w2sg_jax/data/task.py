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

  def method_problem(self, method: str, config: ml_collections.ConfigDict) -> str | None:
    """Why ``method`` (`w2sg_jax.config.METHODS`) cannot run on this task with ``config``, or None.

    The probes read the strong model's cached features (``inputs["strong"]["features"]``);
    bootstrapping needs an ``intermediate`` model (``inputs["intermediate"]`` and
    ``make_model("intermediate", ...)``), which a task provides by overriding this.
    """
    if method == "bootstrap":
      return (f"the {self.name} task has no intermediate model to bootstrap through (the tweets task has one: a "
              "head on MiniLM layer student.method.bootstrap_layer); drop 'bootstrap' from student.methods.")
    if method in ("probe_relabel", "probe_filter") and not self.strong_features(config):
      return (f"{method} fits a probe on the strong model's features, and this {self.name} config fine-tunes the "
              "strong model on tokens (no cached features); use a head on cached features, or drop the method.")
    return None

  def strong_features(self, config: ml_collections.ConfigDict) -> bool:
    """Whether the strong model's inputs are cached features (``inputs["strong"]["features"]``)."""
    del config
    return False

  def trainable(self, role: str, config: ml_collections.ConfigDict) -> Any:
    """The NNX filter of the parameters that train (default: all of them)."""
    return nnx.Param

  def model_name(self, role: str, config: ml_collections.ConfigDict) -> str:
    return role
