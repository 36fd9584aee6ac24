"""What a data set contributes to the pipeline: its splits, fingerprint and models.

Every method takes the resolved, typed experiment (`w2sg_jax.config.Experiment`,
converted once at the boundary): its settings are attributes with their
defaults filled, and cache keys come from `config.semantic_dict` of its blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from w2sg_jax import config as schema

SPLITS = ("weak_train", "w2s_train", "test")


def split_sizes(sizes: schema.SizesConfig) -> dict[str, int]:
  """``data.sizes`` as ``{split: size}`` in name order (test, w2s_train, weak_train).

  The order `splits.split_indices` takes its chunks in. It is the sorted order
  in which a ConfigDict listed these keys before the typed schema, so equal
  sizes and seed keep putting the same examples in each split as before (the
  field order of `config.SizesConfig` would draw other ones).
  """
  return {name: int(getattr(sizes, name)) for name in sorted(SPLITS)}


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

  def fingerprint(self, config: schema.Experiment) -> dict[str, Any]:
    """Everything about the data and preprocessing that changes the examples."""
    raise NotImplementedError

  def splits(self, config: schema.Experiment, cache_dir: str) -> dict[str, Split]:
    raise NotImplementedError

  def make_model(self, role: str, config: schema.Experiment) -> Callable[[nnx.Rngs], nnx.Module]:
    """A factory for the ``weak`` or ``strong`` model, taking its ``nnx.Rngs``."""
    raise NotImplementedError

  def method_problem(self, method: str, config: schema.Experiment) -> str | None:
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

  def strong_features(self, config: schema.Experiment) -> bool:
    """Whether the strong model's inputs are cached features (``inputs["strong"]["features"]``)."""
    del config
    return False

  def trainable(self, role: str, config: schema.Experiment) -> Any:
    """The NNX filter of the parameters that train (default: all of them)."""
    return nnx.Param

  def model_name(self, role: str, config: schema.Experiment) -> str:
    return role
