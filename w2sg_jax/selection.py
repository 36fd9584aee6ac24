"""Model selection: which step's model a run returns (``train.select``).

``select.metric``:

* ``last`` (default): the model after the final step.
* ``auroc`` or ``accuracy``: the model of the evaluated step that scores best
  on a validation holdout, as EleutherAI's ``w2s`` does
  (``metric_for_best_model="val_auroc"``, ``load_best_model_at_end``,
  ``n_val=500``, ``eval_every=100`` steps).

The holdout is the LAST ``select.holdout`` rows of the run's training split
(the splits are drawn at random, so the tail is a random subset), labelled by
the run's own store: the weak labels for a student, so no ground truth reaches
a student, and ground truth for the weak model and the ceiling. The run trains
on the other rows. Labels are hardened by argmax (for two classes that is
EleutherAI's ``soft label > 0.5``). The model is evaluated every
``select.every`` steps (0: at the end of every epoch) and after the final
step; the earliest of equal scores wins (a later step must be strictly better).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from w2sg_jax import config as schema
from w2sg_jax import hashing
from w2sg_jax import metrics as metrics_lib
from w2sg_jax.labels.store import WeakLabelStore

__all__ = ["METRICS", "Holdout", "Selection", "split_holdout"]

METRICS = ("last", "auroc", "accuracy")


@dataclasses.dataclass(frozen=True)
class Selection:
  """``train.select``: ``metric``, ``holdout`` rows and period ``every`` (defaults: `config.SelectConfig`)."""

  metric: str = schema.SelectConfig.metric
  holdout: int = schema.SelectConfig.holdout
  every: int = schema.SelectConfig.every

  def __post_init__(self):
    if self.metric not in METRICS:
      raise ValueError(f"select.metric={self.metric!r}; use one of {', '.join(METRICS)}.")
    if self.holdout < 0 or self.every < 0:
      raise ValueError(f"select.holdout={self.holdout} and select.every={self.every} must be >= 0.")
    if self.active and self.holdout < 2:
      raise ValueError(f"select.metric={self.metric!r} needs a validation holdout; set select.holdout >= 2 "
                       "(rows of the training split held out; EleutherAI's w2s uses 500).")
    if not self.active and self.holdout:
      raise ValueError(f"select.holdout={self.holdout} with select.metric='last' would drop training rows for "
                       "nothing; set select.metric to 'auroc' or 'accuracy', or select.holdout=0.")

  @classmethod
  def from_config(cls, train_cfg: schema.TrainConfig) -> Selection:
    """The selection of a typed training block (its ``select``, defaults filled by the schema)."""
    schema.expect(train_cfg, schema.TrainConfig, "train_cfg")
    block = train_cfg.select
    return cls(metric=block.metric, holdout=int(block.holdout), every=int(block.every))

  @property
  def active(self) -> bool:
    return self.metric != "last"

  @property
  def name(self) -> str:
    """The logged metric's name, e.g. ``val_auroc``."""
    return f"val_{self.metric}"

  def eval_steps(self, num_steps: int, steps_per_epoch: int) -> tuple[int, ...]:
    """The steps after which the model is evaluated: every ``every`` (or epoch), and the last."""
    period = self.every or max(int(steps_per_epoch), 1)
    return tuple(sorted(set(range(period, num_steps + 1, period)) | {int(num_steps)}))

  def score(self, logits_NxC: np.ndarray, targets_NxC: np.ndarray) -> float:
    """The metric of ``logits`` against the hardened ``targets`` (higher is better)."""
    labels = np.argmax(targets_NxC, -1)
    logits_NxC = np.asarray(logits_NxC, np.float32)
    if self.metric == "accuracy":
      return float(np.mean(np.argmax(logits_NxC, -1) == labels))
    return float(metrics_lib.auroc_from_scores(logits_NxC, labels))

  def check_targets(self, targets_NxC: np.ndarray, what: str) -> None:
    """AUROC needs both classes among the holdout's hardened labels."""
    if self.metric != "auroc":
      return
    present = np.unique(np.argmax(targets_NxC, -1))
    if len(present) < 2:
      raise ValueError(
          f"select.metric='auroc', but every one of the {len(targets_NxC)} holdout labels of {what} is class "
          f"{int(present[0])}: AUROC is undefined. Raise select.holdout or use select.metric='accuracy'.")


@dataclasses.dataclass(frozen=True)
class Holdout:
  """A training split cut in two: the rows a run trains on and the rows it is selected on."""

  train_ids: Sequence[Any]
  train_inputs: dict[str, np.ndarray]
  val_inputs: dict[str, np.ndarray]


def split_holdout(train_ids: Sequence[Any], train_inputs: Mapping[str, np.ndarray], holdout: int) -> Holdout:
  """The last ``holdout`` rows apart from the others (see the module docstring)."""
  n = len(train_ids)
  if not 0 < holdout < n:
    raise ValueError(f"select.holdout={holdout} must be between 1 and the {n - 1} rows of the training split "
                     "minus one; lower select.holdout.")
  keep = n - holdout
  return Holdout(
      train_ids=list(train_ids)[:keep],
      train_inputs={k: np.asarray(v)[:keep] for k, v in train_inputs.items()},
      val_inputs={k: np.asarray(v)[keep:] for k, v in train_inputs.items()},
  )


def store_rows(store: WeakLabelStore, start: int, stop: int) -> WeakLabelStore:
  """Rows ``[start, stop)`` of ``store`` as a store of its own (an in-memory view, new hash)."""
  meta = dict(store.meta)
  meta["hash"] = hashing.content_hash({"rows_of": store.hash, "rows": [int(start), int(stop)]})
  weights = None if store.weights is None else store.weights[start:stop]
  return dataclasses.replace(store, ids=tuple(store.ids[start:stop]), probs=store.probs[start:stop], meta=meta,
                             weights=weights)
