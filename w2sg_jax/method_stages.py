"""The labels each method gives a student, as cached stores, and what making them cost.

A method is a transform between the weak model(s) and the student
(`w2sg_jax.methods` holds the pure arithmetic; docs/methods.md the reading):

  single               the weak model's labels (the baseline)
  ensemble             K weak models' labels combined (mean, or normalised product)
  disagreement_filter  the ensemble's labels, rows its members dispute weighted 0
  probe_relabel        the weak labels, rows a probe on the strong features disputes relabelled
  probe_filter         the weak labels, the rows a probe disputes most weighted 0
  bootstrap            an intermediate model's labels, it having learnt the weak ones
  s2s                  the previous round's student's predictions (`Stages.students` runs the rounds)

Noise is applied where a weak supervisor's mistakes would be: to every weak
store a method reads (each member's, the store a probe cleans, the store the
intermediate model learns from), so a method sees what the student of
``single`` sees. Every store here is a cache entry (stage ``labels``) keyed by
its inputs' hashes and the settings it reads, so a changed ``probe_k`` remakes
the probe's stores and the students that read them, nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from w2sg_jax import config as schema
from w2sg_jax import engines
from w2sg_jax import losses as losses_lib
from w2sg_jax import methods as methods_lib
from w2sg_jax.labels import store as store_lib


@dataclasses.dataclass
class Labels:
  """What the student of one (method, noise rate, seed) learns from."""

  train: store_lib.WeakLabelStore  # On w2s_train, noise applied, possibly with row weights.
  test: store_lib.WeakLabelStore  # Its supervisor's labels on test (the student's misfit is measured to them).
  method: dict[str, Any] | None  # The method's settings in the student's key; None for single.
  weak_models: int  # Weak models trained for it.
  upstream: list[dict[str, Any] | None] = dataclasses.field(default_factory=list)  # Costs of what made them.
  stores: list[store_lib.WeakLabelStore] = dataclasses.field(default_factory=list)  # Stores made for it.


def method_key(method: str, settings: schema.MethodsConfig) -> dict[str, Any] | None:
  """The settings ``method`` reads, as they enter its students' keys (None for ``single``)."""
  fields = {
      "single": (),
      "ensemble": ("ensemble_size", "combiner", "bagging"),
      "disagreement_filter": ("ensemble_size", "combiner", "bagging", "filter_threshold"),
      "probe_relabel": ("probe", "probe_k", "relabel_mode"),
      "probe_filter": ("probe", "probe_k", "probe_drop_fraction"),
      "bootstrap": ("bootstrap_layer",),
      "s2s": ("s2s_rounds", "s2s_harden"),
  }[method]
  if method == "single":
    return None
  out = {"name": method, **{f: getattr(settings, f) for f in fields}}
  if method.startswith("probe_") and settings.probe == "logistic":
    out.pop("probe_k")  # The logistic probe has no neighbours.
  return out


class MethodLabels:
  """Makes each method's `Labels` for the students of a `stages.Stages`."""

  def __init__(self, stages, data, weak, settings: schema.MethodsConfig):
    self.stages = stages
    self.data = data
    self.weak = weak
    self.settings = settings
    self._member_cache: dict[int, list] = {}

  # ----------------------------------------------------------------- common

  def _weak_seed(self, seed: int) -> int:
    """The seed of the weak model a student of ``seed`` learns from."""
    return int(seed) if self.stages.config.weak.per_seed else int(self.stages.config.seed)

  def _members(self, seed: int) -> list:
    """The ensemble's K weak models (`stages.WeakResult`) for a student of ``seed``."""
    s = self.settings
    weak_seed = self._weak_seed(seed)
    if weak_seed not in self._member_cache:  # Once per weak model, not once per cell.
      self._member_cache[weak_seed] = [self.weak.result_for(seed)] + [
          self.stages.weak_member(self.data, weak_seed, k, s.bagging) for k in range(1, s.ensemble_size)]
    return self._member_cache[weak_seed]

  def _noisy(self, store: store_lib.WeakLabelStore, rate: float, seed: int) -> store_lib.WeakLabelStore:
    return self.stages.noisy_store(store, self.stages.noise_spec(rate, seed))

  def _combined(self, stores: Sequence[store_lib.WeakLabelStore], kind: str) -> store_lib.WeakLabelStore:
    """The members' stores combined (`methods.combine`), stored once."""
    s = self.settings
    components = {"kind": kind, "combiner": s.combiner, "members": [m.hash for m in stores]}

    def compute():
      return stores[0].ids, methods_lib.combine(np.stack([m.probs for m in stores]), combiner=s.combiner)

    return self.stages.derived_store(components, compute)[0]

  # ---------------------------------------------------------------- methods

  def labels(self, method: str, rate: float, seed: int) -> Labels:
    """The labels of the student of (``method``, ``rate``, ``seed``); s2s starts from single's."""
    weak = self.weak.result_for(seed)
    key = method_key(method, self.settings)
    if method in ("single", "s2s"):
      train = self._noisy(weak.stores["w2s_train"], rate, seed)
      return Labels(train, weak.stores["test"], key, 1, [weak.cost], [train])
    if method in ("ensemble", "disagreement_filter"):
      return self._ensemble(method, key, rate, seed)
    if method in ("probe_relabel", "probe_filter"):
      return self._probe(method, key, rate, seed, weak)
    if method == "bootstrap":
      raise ValueError("bootstrap labels come from `bootstrap_labels`, which trains every cell's intermediate model "
                       "together.")
    raise ValueError(f"unknown method {method!r}; known: {', '.join(schema.METHODS)}.")

  def _ensemble(self, method: str, key: dict[str, Any], rate: float, seed: int) -> Labels:
    members = self._members(seed)
    noisy = [self._noisy(m.stores["w2s_train"], rate, seed) for m in members]
    combined = self._combined(noisy, "ensemble")
    test = self._combined([m.stores["test"] for m in members], "ensemble")
    upstream = [m.cost for m in members]
    if method == "ensemble":
      return Labels(combined, test, key, len(members), upstream, noisy + [combined])
    threshold = self.settings.filter_threshold
    components = {"kind": "disagreement_filter", "of": combined.hash, "members": [m.hash for m in noisy],
                  "threshold": threshold}

    def compute():
      weights = methods_lib.agreement_weights(np.stack([m.probs for m in noisy]), threshold=threshold,
                                              ensemble_NxC=combined.probs)
      if not weights.any():  # No row with enough agreement: say so rather than train on nothing.
        raise ValueError(f"student.method.filter_threshold={threshold} drops every row (the {len(noisy)} members "
                         "never agree that much); lower it.")
      return combined.ids, combined.probs, weights, None

    filtered = self.stages.derived_store(components, compute)[0]
    return Labels(filtered, test, key, len(members), upstream, noisy + [combined, filtered])

  def _probe(self, method: str, key: dict[str, Any], rate: float, seed: int, weak) -> Labels:
    s = self.settings
    noisy = self._noisy(weak.stores["w2s_train"], rate, seed)
    features = self.data.splits["w2s_train"].inputs["strong"]["features"]
    n, d = features.shape[0], int(np.prod(features.shape[1:]))
    probe = {"probe": s.probe, **({"k": s.probe_k} if s.probe == "knn" else {})}
    # The probe's predictions, stored once per (labels, probe): relabel and filter share them.
    components = {"kind": "probe", "of": noisy.hash, **probe, "features": self.data.fingerprint,
                  "feature_role": "strong", "strong": self.stages.strong_semantic()}

    def compute_probe():
      t0 = time.perf_counter()
      x = np.asarray(features, np.float32).reshape(n, d)
      if s.probe == "knn":
        probs = methods_lib.knn_probe(x, noisy.probs, min(s.probe_k, n - 1))
      else:
        probs = methods_lib.logistic_probe(x, noisy.probs)
      cost = probe_cost(s.probe, n=n, d=d, c=noisy.num_classes, k=s.probe_k,
                                 wall_s=time.perf_counter() - t0)
      return noisy.ids, probs, None, {"cost": cost}

    probe_store, probe_info = self.stages.derived_store(components, compute_probe)
    if method == "probe_relabel":
      components = {"kind": "probe_relabel", "of": noisy.hash, "probe": probe_store.hash, "mode": s.relabel_mode}
      compute = lambda: (noisy.ids, methods_lib.relabel(noisy.probs, probe_store.probs, mode=s.relabel_mode))  # noqa: E731
    else:
      components = {"kind": "probe_filter", "of": noisy.hash, "probe": probe_store.hash,
                    "drop_fraction": s.probe_drop_fraction}
      compute = lambda: (noisy.ids, noisy.probs, methods_lib.filter_by_disagreement(  # noqa: E731
          noisy.probs, probe_store.probs, drop_fraction=s.probe_drop_fraction), None)
    cleaned = self.stages.derived_store(components, compute)[0]
    return Labels(cleaned, weak.stores["test"], key, 1, [weak.cost, probe_info.get("cost")],
                  [noisy, probe_store, cleaned])

  def bootstrap_labels(self, cells: Sequence[tuple[float, int]]) -> dict[tuple[float, int], Labels]:
    """weak -> intermediate -> strong: per cell, an intermediate model (`Task.make_model("intermediate")`)
    learns the noisy weak labels of w2s_train, and its predictions on w2s_train (and test) become the
    student's labels. The cells' intermediate models train together, as one group."""
    stages, data = self.stages, self.data
    cfg = stages.config.student
    key = method_key("bootstrap", self.settings)
    train = data.splits["w2s_train"]
    if "intermediate" not in train.inputs:
      raise ValueError(stages.task.method_problem("bootstrap", stages.config) or
                       f"the {stages.task.name} task gave no intermediate inputs for bootstrap.")
    sources = {cell: self._noisy(self.weak.result_for(cell[1]).stores["w2s_train"], *cell) for cell in cells}
    base = {"kind": "intermediate", "task": stages.task.name, "data": data.fingerprint,
            "layer": self.settings.bootstrap_layer, "strong": stages.strong_semantic(),
            "train": stages.train_semantic(), "entry_format": stages.RUN_ENTRY_FORMAT}
    components = [{**base, "seed": int(seed), "labels": sources[(rate, seed)].hash} for rate, seed in cells]

    def produce_group(todo: list[int], work_dirs: list[str]):
      trained = engines.train_runs(
          [engines.RunSpec(seed=int(cells[i][1]), store=sources[cells[i]], work_dir=w) for i, w in zip(todo, work_dirs)],
          engine=str(cfg.engine), make_model=stages.task.make_model("intermediate", stages.config),
          train_ids=train.ids, train_inputs=train.inputs["intermediate"],
          eval_inputs={s: data.splits[s].inputs["intermediate"] for s in ("w2s_train", "test")},
          loss_fn=losses_lib.get("xent"), train_cfg=cfg.train, desc=f"intermediate models ({len(todo)})",
      )
      costs = getattr(trained, "cost", None) or [None] * len(todo)

      def writer(j):
        def write(out_dir):
          for split in ("w2s_train", "test"):
            np.save(os.path.join(out_dir, f"probs_{split}.npy"), methods_lib.student_store_probs(trained.logits[split][j]))
          return {"cost": costs[j]} if costs[j] else {}
        return write

      return [writer(j) for j in range(len(todo))]

    entries = stages.cache.get_or_create_group("intermediate", components, produce_group)
    out = {}
    for cell, entry in zip(cells, entries):
      stores = {}
      for split in ("w2s_train", "test"):
        ids = data.splits[split].ids
        stores[split] = stages.derived_store(
            {"kind": "intermediate", "model": entry.key, "split": split, "ids": store_lib.ids_digest([str(i) for i in ids])},
            lambda split=split, entry=entry, ids=ids: (ids, np.load(entry.path(f"probs_{split}.npy"))))[0]
      weak = self.weak.result_for(cell[1])
      out[cell] = Labels(stores["w2s_train"], stores["test"], key, 1, [weak.cost, entry.info.get("cost")],
                         [sources[cell], stores["w2s_train"]])
    return out

  def s2s_store(self, entry, previous: store_lib.WeakLabelStore) -> store_lib.WeakLabelStore:
    """A strong-to-strong round's student's predictions on w2s_train, as the next round's labels."""
    harden = self.settings.s2s_harden
    components = {"kind": "s2s", "run": entry.key, "harden": harden, "ids": previous.meta["ids_sha256"]}
    return self.stages.derived_store(components, lambda: (previous.ids, methods_lib.student_store_probs(
        np.load(entry.path("w2s_train_logits.npy")), harden=harden)))[0]


# ------------------------------------------------------------------- cost

COST_SUMS = ("train_flops", "eval_flops", "wall_s", "models_trained")


def total_cost(parts: Sequence[Mapping[str, Any] | None], *, stored_bytes: int = 0) -> dict[str, Any]:
  """What it took to make a student from scratch: the sum over ``parts`` (its own training's cost, then
  every model and probe that made its labels, each an `engines.TrainedRuns.cost` row or `probe_cost`).

  FLOPs, wall time and models trained add up; ``peak_bytes`` is the largest
  part's (the parts run one after another). ``complete`` is False when a
  part has no recorded cost (a weak model whose entry is gone), and the sums
  then count only the parts that have one.
  """
  out: dict[str, Any] = {k: 0.0 for k in COST_SUMS}
  out["models_trained"] = 0
  peak, complete = 0, True
  for part in parts:
    if not part:
      complete = False
      continue
    for k in COST_SUMS:
      out[k] += part.get(k, 1 if k == "models_trained" and "train_flops" in part else 0) or 0
    peak = max(peak, int(part.get("peak_bytes", 0) or 0), int(part.get("device_peak_bytes", 0) or 0))
  out["flops"] = out["train_flops"] + out["eval_flops"]
  out["peak_bytes"] = peak
  out["stored_bytes"] = int(stored_bytes)
  out["complete"] = complete
  return out


def probe_cost(probe: str, *, n: int, d: int, c: int, k: int, wall_s: float) -> dict[str, Any]:
  """A probe's cost. Its FLOPs are counted analytically (it runs as chunked host-driven programs, not
  one step): the kNN probe's similarity matrix is 2 N^2 D; the logistic probe's L-BFGS is about 300
  evaluations of a forward and backward pass, 6 N D C each. ``peak_bytes``: the largest block it holds."""
  if probe == "knn":
    flops = 2.0 * n * n * d
    peak = 4 * (min(1024, n) * n + n * d + n * c)
  else:
    flops = 300 * 6.0 * n * d * c
    peak = 4 * (n * d + 3 * n * c)
  return {"train_flops": flops, "eval_flops": 0.0, "wall_s": float(wall_s), "peak_bytes": int(peak),
          "models_trained": 0, "flops_counted": "analytic", "k": int(k) if probe == "knn" else None}


def directory_bytes(path: str) -> int:
  """Bytes of the files under ``path`` (a cache entry or store)."""
  total = 0
  for root, _dirs, files in os.walk(path):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(root, f))
      except OSError:
        pass
  return total
