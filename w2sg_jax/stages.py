"""The stages of a W2SG experiment, each a function that returns a small typed result.

    data -> truth stores -> weak model -> weak-label stores -> noisy stores
         -> ceiling runs -> student runs -> report

Every artifact goes through `cache.Cache` under a key built by
`cache.stage_key` from exactly what the stage reads: its resolved config block
(`config.semantic_dict`: defaults included, fields that change nothing, such
as ``log_every``, left out), the keys of its inputs, and the data fingerprint. So a changed input recomputes
exactly what depends on it, and nothing a stage did not read can make it
recompute.

A label reaches a model one way: a store (ground truth is a one-hot store,
weak labels the weak model's store, noisy labels a store derived from it) is
read by `engines.train_runs` through a `LabelStream`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2sg_jax import cache as cache_lib
from w2sg_jax import config as schema
from w2sg_jax import engines
from w2sg_jax import grid as grid_lib
from w2sg_jax import hashing
from w2sg_jax import losses as losses_lib
from w2sg_jax import method_stages
from w2sg_jax import metric_writers
from w2sg_jax import methods as methods_lib
from w2sg_jax import metrics as metrics_lib
from w2sg_jax import profiling
from w2sg_jax.data.task import Split, Task
from w2sg_jax.labels import noise as noise_lib
from w2sg_jax.labels import store as store_lib
from w2sg_jax.log import log

CEILING_SPLITS = schema.CEILING_SPLITS  # ceiling.split; the schema says which (one list, not two).
TEST_LOGITS = "test_logits.npy"
# The key of a strong run's metrics in its cache entry's info: computed once, when the run is
# produced, so a rerun that trains nothing reads them instead of recomputing (and compiling).
METRICS_INFO = "metrics"
COST_INFO = "cost"  # The key of a trained model's cost (`w2sg_jax.cost`) in its cache entry's info.
# In the key of every weak and strong run: 2 = the entry records its cost, so that no run made before
# cost accounting (which has none to report) is reused.
RUN_ENTRY_FORMAT = 2


semantic = schema.semantic_dict  # A resolved block as it enters keys (the schema's metadata says which fields).


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float32)[labels]


def count_params(make_model, trainable: Any = nnx.Param) -> tuple[int, int]:
  """``(params, trainable_params)`` of a model, from abstract shapes only."""
  model = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
  total = nnx.state(model, nnx.Param)
  train = nnx.state(model, trainable)
  size = lambda s: int(sum(np.prod(x.shape) for x in jax.tree.leaves(s)))  # noqa: E731
  return size(total), size(train)


def correctness(logits_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """``[N]`` int8: 1 where the model's argmax is the label (what the paired bootstrap resamples)."""
  return (np.argmax(logits_NxC, -1) == labels).astype(np.int8)


def evaluate(logits_NxC: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Test metrics of one model, with per-example correctness for the paired bootstrap."""
  correct = correctness(logits_NxC, labels)
  return {
      "test_accuracy": float(correct.mean()),
      "test_auroc": float(metrics_lib.auroc_from_scores(logits_NxC, labels)),
      "test_correct": correct,
  }


def run_metrics(logits_NxC: np.ndarray, labels: np.ndarray,
                weak_test: store_lib.WeakLabelStore | None = None) -> dict[str, Any]:
  """The scalar metrics of a strong run, as its cache entry keeps them (JSON, no arrays).

  With ``weak_test`` (a student's weak labels on test), also its misfit to them,
  tagged with that store's hash so that it is only reused against the same labels.
  """
  ev = evaluate(logits_NxC, labels)
  out = {"test_accuracy": ev["test_accuracy"], "test_auroc": ev["test_auroc"]}
  if weak_test is not None:
    out["misfit"] = {"weak_test": weak_test.hash, "kl": _mean_divergence("kl", logits_NxC, weak_test.probs),
                     "tv": _mean_divergence("tv", logits_NxC, weak_test.probs)}
  return out


def cached_run_metrics(entry: cache_lib.Entry, logits_NxC: np.ndarray, labels: np.ndarray,
                       weak_test: store_lib.WeakLabelStore | None = None) -> tuple[dict[str, Any], bool]:
  """``(metrics, from_cache)``: the entry's stored metrics, or (an entry written before they were
  stored, or a misfit against other weak labels) the same computed now, in numpy."""
  stored = entry.info.get(METRICS_INFO)
  if isinstance(stored, Mapping) and {"test_accuracy", "test_auroc"} <= set(stored):
    misfit = stored.get("misfit")
    if weak_test is None:
      return dict(stored), True
    if isinstance(misfit, Mapping) and misfit.get("weak_test") == weak_test.hash:
      return dict(stored), True
  return run_metrics(logits_NxC, labels, weak_test), False


def softmax(logits: np.ndarray) -> np.ndarray:
  return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), -1))


# ------------------------------------------------------------------- profile


class Profile:
  """Wall time of the parts of each stage, and the programs JAX compiled meanwhile.

  Parts nest, they do not add up: ``runs`` (finding, verifying and producing
  the run entries) contains ``train`` (`engines.train_runs` of the missing
  runs), which contains most of ``compile`` (trace, lowering and backend
  compile time recorded by ``jax.monitoring`` while the stage ran;
  ``programs_compiled`` counts the backend compilations). ``metrics`` is the
  runs' metrics, computed when produced or read from their entries;
  ``metrics_computed`` counts the runs whose metrics were computed on reading
  (entries written before metrics were stored). ``labels``: the label stores.
  Code a stage calls reports its own parts through `w2sg_jax.profiling`; the
  tweets task's data stage, for one: ``tfds_prepare``, ``tfds_read``,
  ``fingerprint``, ``features_entry`` (the cache entry, found and verified or
  produced) containing ``load_model``, ``tokenize``, ``pack``,
  ``feature_compile``, ``feature_pass`` and ``features_write``, then
  ``features_read``; counters ``feature_real_tokens`` and ``feature_computed_tokens``.
  """

  def __init__(self):
    self.parts: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    self._stage: str | None = None

  @contextlib.contextmanager
  def stage(self, name: str):
    previous, self._stage = self._stage, name
    _listen_to_compiles()
    outermost = self not in _ACTIVE_PROFILES  # A stage inside a stage counts its compiles once.
    if outermost:
      _ACTIVE_PROFILES.append(self)
    try:
      # Code the stage calls (a task's splits) reports its parts through `profiling.part`.
      self.add("programs_compiled", 0)  # Recorded even when the stage compiled nothing (a warm or reused program).
      with self.part("total"), profiling.reporting_to(self):
        yield
    finally:
      if outermost:
        _ACTIVE_PROFILES.remove(self)
      self._stage = previous

  @contextlib.contextmanager
  def part(self, name: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      if self._stage is not None:
        self.parts[self._stage][f"{name}_s"] += time.perf_counter() - t0

  def add(self, name: str, value: float) -> None:
    if self._stage is not None:
      self.parts[self._stage][name] += value

  def _on_compile_event(self, event: str, seconds: float) -> None:
    if event == _BACKEND_COMPILE_EVENT:
      self.add("programs_compiled", 1)
    self.add("compile_s", seconds)

  def as_dict(self) -> dict[str, dict[str, float]]:
    return {stage: {k: (round(float(v), 4) if k.endswith("_s") else int(v)) for k, v in parts.items()}
            for stage, parts in self.parts.items()}

  def line(self) -> str:
    """One line for the terminal: each stage's parts."""
    out = []
    for stage, parts in self.as_dict().items():
      items = ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" if k.endswith("_s") else f"{k.replace('_', ' ')} {v}"
                        for k, v in parts.items() if k != "total_s")
      out.append(f"{stage} {parts.get('total_s', 0.0):.2f}s ({items})")
    return "; ".join(out)


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_BACKEND_COMPILE_EVENT = _COMPILE_EVENTS[-1]
_ACTIVE_PROFILES: list[Profile] = []


def _profiled(name: str):
  """Runs a `Stages` method as the profile's stage ``name``."""

  def wrap(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
      with self.profile.stage(name):
        return method(self, *args, **kwargs)
    return run

  return wrap


@functools.cache
def _listen_to_compiles() -> None:
  """One ``jax.monitoring`` listener per process, forwarding to the profiles now running a stage."""

  def listener(event: str, seconds: float, **_kwargs):
    if event in _COMPILE_EVENTS:
      for profile in list(_ACTIVE_PROFILES):
        profile._on_compile_event(event, seconds)  # pylint: disable=protected-access

  jax.monitoring.register_event_duration_secs_listener(listener)


# ------------------------------------------------------------------- results


@dataclasses.dataclass
class DataResult:
  splits: dict[str, Split]
  fingerprint: dict[str, Any]


@dataclasses.dataclass
class WeakResult:
  name: str
  params: int
  trainable_params: int
  labelled_examples: int
  stores: dict[str, store_lib.WeakLabelStore]  # split -> the weak model's labels
  test_accuracy: float
  test_auroc: float
  test_correct: np.ndarray
  w2s_label_accuracy: float
  weak_model_runs: int  # 0 when every store was found in the cache
  # weak.per_seed: student seed -> that seed's weak model's stores (the fields
  # above are then means over the seeds, `stores` the first seed's).
  seed_stores: dict[int, dict[str, store_lib.WeakLabelStore]] = dataclasses.field(default_factory=dict)
  selected_step: int | None = None  # Under weak.train.select: the step whose model labels (else the last).
  cost: dict[str, Any] | None = None  # Training and labelling (`w2sg_jax.cost`); None if only its stores are kept.
  seed_results: dict[int, "WeakResult"] = dataclasses.field(default_factory=dict)  # weak.per_seed: each seed's.
  grid_point: dict[str, float] = dataclasses.field(default_factory=dict)  # weak.grid's pick; {} = the config's.
  grid: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # weak.grid: every point's scores.
  holdout_score: float | None = None  # weak.grid: its best score on its weak_train holdout (ground truth).

  def result_for(self, seed: int) -> "WeakResult":
    """The weak model a student of ``seed`` learns from (its own under weak.per_seed)."""
    return self.seed_results.get(int(seed), self)

  def stores_for(self, seed: int) -> dict[str, store_lib.WeakLabelStore]:
    """The weak labels a student of ``seed`` learns from: its own weak model's under weak.per_seed."""
    return self.seed_stores.get(int(seed), self.stores)

  def public(self) -> dict[str, Any]:
    return {
        "name": self.name, "params": self.params, "trainable_params": self.trainable_params,
        "labelled_examples": self.labelled_examples, "weak_model_runs": self.weak_model_runs,
        "store": self.stores["w2s_train"].directory, "w2s_label_accuracy": self.w2s_label_accuracy,
        "test_accuracy": self.test_accuracy, "test_auroc": self.test_auroc,
        **({"selected_step": self.selected_step} if self.selected_step is not None else {}),
        **({"grid_point": self.grid_point, "grid": self.grid} if self.grid else {}),
    }


@dataclasses.dataclass
class CeilingResult:
  name: str
  params: int
  trainable_params: int
  seeds: list[int]
  test_accuracy_per_seed: list[float]
  test_accuracy: float
  test_auroc: float
  test_correct: np.ndarray  # mean correctness over seeds, [N] in [0, 1]
  selected_steps: list[int | None] = dataclasses.field(default_factory=list)  # per seed, under train.select
  grid_point: dict[str, float] = dataclasses.field(default_factory=dict)  # ceiling.grid's pick; {} = the config's.
  grid: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # ceiling.grid: every point's scores.

  def public(self) -> dict[str, Any]:
    return {
        "name": self.name, "params": self.params, "trainable_params": self.trainable_params,
        "n_seeds": len(self.seeds), "test_accuracy": self.test_accuracy,
        "test_accuracy_per_seed": self.test_accuracy_per_seed, "test_auroc": self.test_auroc,
        **({"selected_steps": self.selected_steps} if any(s is not None for s in self.selected_steps) else {}),
        **({"grid_point": self.grid_point, "grid": self.grid} if self.grid else {}),
    }


@dataclasses.dataclass
class StudentRun:
  loss: str
  noise: float
  seed: int
  test_accuracy: float
  test_auroc: float
  misfit_kl: float  # mean over test examples of KL(weak || student)
  misfit_tv: float  # mean over test examples of TV(weak, student)
  test_correct: np.ndarray
  cache_entry: str
  selected_step: int | None = None  # Under student.train.select: the step evaluated on test (else the last).
  method: str = "single"  # student.methods: how its labels were made (w2sg_jax/method_stages.py).
  grid_point: dict[str, float] = dataclasses.field(default_factory=dict)  # student.grid's point; {} = the config's.
  holdout_score: float | None = None  # Its score on the weak-labelled holdout (train.select), at its chosen step.
  weak_models: int = 1  # Weak models trained to make its labels.
  # What it took to make this student from scratch: its own training plus every model and probe that made
  # its labels (`method_stages.Labels.upstream`), as `w2sg_jax.cost.total`; None where an entry predates it.
  cost: dict[str, Any] | None = None

  def public(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.pop("test_correct")
    return out


@dataclasses.dataclass
class StudentRuns:
  runs: list[StudentRun]
  params: int
  trainable_params: int


# ----------------------------------------------------------------- the stages


class Stages:
  """Shared context of the stages of one experiment: config, task, cache and data."""

  RUN_ENTRY_FORMAT = RUN_ENTRY_FORMAT

  def __init__(self, config: schema.Experiment, task: Task, cache: cache_lib.Cache):
    schema.expect(config, schema.Experiment, "config")
    self.config = config
    self.task = task
    self.cache = cache
    self.profile = Profile()
    self.curves: list[metric_writers.RunCurves] = []  # Every training run asked for; the report writes them.
    # (stage, key) of the runs left to other workers (`cache.RunsOfOtherWorkers`), or missing under report-only.
    self.missing_runs: list[tuple[str, str]] = []
    self._param_counts: dict[str, tuple[int, int]] = {}

  def param_counts(self, role: str) -> tuple[int, int]:
    """`count_params` of the ``role`` ('weak' or 'strong') model, traced once per experiment."""
    if role not in self._param_counts:
      self._param_counts[role] = count_params(self.task.make_model(role, self.config),
                                              self.task.trainable(role, self.config))
    return self._param_counts[role]

  # -- seeds
  @property
  def student_seeds(self) -> list[int]:
    return [int(self.config.seed) + 1 + i for i in range(int(self.config.seeds))]

  # -- data
  @_profiled("data")
  def data(self) -> DataResult:
    splits = self.task.splits(self.config, self.cache.root)  # Its parts: `profiling.part` in the task.
    with self.profile.part("fingerprint"):
      fingerprint = self.task.fingerprint(self.config)
    return DataResult(splits=splits, fingerprint=fingerprint)

  def truth_store(self, data: DataResult, split: str) -> store_lib.WeakLabelStore:
    """Ground truth of a split as a one-hot store: the ceiling and the weak model learn from it."""
    s = data.splits[split]
    components = {"kind": "truth", "task": self.task.name, "data": data.fingerprint, "split": split,
                  "ids": store_lib.ids_digest([str(i) for i in s.ids])}
    return self._store_entry(components, lambda: (s.ids, one_hot(s.labels, self.task.num_classes)))

  def _store_entry(self, components: Mapping[str, Any], compute) -> store_lib.WeakLabelStore:
    return self.derived_store(components, compute)[0]

  def derived_store(self, components: Mapping[str, Any], compute) -> tuple[store_lib.WeakLabelStore, dict[str, Any]]:
    """``(store, info)``: the label store ``components`` name, made once by ``compute``.

    ``compute() -> (ids, probs)``, or ``(ids, probs, weights, info)`` for a
    store with row weights (a filter's mask) whose making had a cost worth
    keeping (``info["cost"]``, see `w2sg_jax.cost`); ``info`` is the entry's.
    """
    def produce(out_dir, _work_dir):
      ids, probs, *rest = compute()
      weights, info = (rest + [None, None])[:2]
      ids = store_lib.validate_ids(ids)
      probs = store_lib.validate_probs(probs, len(ids))
      weights = None if weights is None else store_lib.validate_weights(weights, len(ids))
      store_lib.write_store_files(out_dir, ids, probs, store_lib.store_meta(ids, probs, components, weights), weights)
      return {"num_examples": len(ids), **(info or {})}

    entry = self.cache.get_or_create("labels", components, produce)
    return store_lib.open_store(entry.directory), dict(entry.info)

  # -- weak model and its labels
  def weak_components(self, data: DataResult, seed: int | None = None) -> dict[str, Any]:
    return self._weak_key_components(data, int(self.config.seed if seed is None else seed), {})

  def _weak_key_components(self, data: DataResult, seed: int, point: Mapping[str, float]) -> dict[str, Any]:
    """The weak model's key components at grid ``point`` (its optimizer settings as if the config said them)."""
    weak = self.config.weak
    if point:
      weak = weak.replace(train=weak.train.replace(optimizer=weak.train.optimizer.replace(**point)))
    settings = semantic(weak)
    # Which seeds get a model (per_seed) and which points train (grid) are not the model's settings:
    # a point's model is keyed by the optimizer it trains with, and the model of a seed is the same model
    # whichever option asked for it.
    settings.pop("per_seed", None)
    settings.pop("grid", None)
    return {"task": self.task.name, "data": data.fingerprint, "weak": settings, "seed": int(seed),
            "truth": self.truth_store(data, "weak_train").hash, "entry_format": RUN_ENTRY_FORMAT}

  @property
  def weak_seeds(self) -> list[int]:
    """The weak models' seeds: ``config.seed``, or every student seed under ``weak.per_seed``."""
    return self.student_seeds if self.config.weak.per_seed else [int(self.config.seed)]

  @_profiled("weak")
  def weak(self, data: DataResult) -> WeakResult:
    """The weak model(s); with ``weak.per_seed`` one per student seed, so seed intervals include its variance."""
    results = {seed: self._tuned_weak_model(data, seed) for seed in self.weak_seeds}
    if len(results) == 1 and not self.config.weak.per_seed:
      return next(iter(results.values()))
    runs = list(results.values())
    mean = lambda field: float(np.mean([getattr(r, field) for r in runs]))  # noqa: E731
    return dataclasses.replace(
        runs[0], test_accuracy=mean("test_accuracy"), test_auroc=mean("test_auroc"),
        w2s_label_accuracy=mean("w2s_label_accuracy"), weak_model_runs=sum(r.weak_model_runs for r in runs),
        test_correct=np.mean([r.test_correct for r in runs], 0).astype(np.float32),
        seed_stores={seed: r.stores for seed, r in results.items()}, seed_results=dict(results),
    )

  def weak_member(self, data: DataResult, seed: int, member: int, bagging: bool) -> WeakResult:
    """Member ``member`` of an ensemble around the weak model of ``seed``: member 0 is that model
    itself; member k >= 1 has seed ``seed + k`` and, with ``bagging``, learns from its own bootstrap
    resample of weak_train (`methods.bootstrap_indices`), as row weights equal to the resample counts."""
    tuned = self._tuned_weak_model(data, seed)
    if member == 0:
      return tuned
    return self._weak_model(data, seed + member, member={"index": int(member), "of_seed": int(seed),
                                                         "bagging": bool(bagging)}, point=tuned.grid_point)

  def _tuned_weak_model(self, data: DataResult, seed: int) -> WeakResult:
    """The weak model of ``seed``; under ``weak.grid``, the point (the config's own setting among them)
    whose model scores best on weak.train.select's holdout of weak_train, which is labelled with ground
    truth, as the weak model's training labels are. Ties go to the earlier point, the config's first."""
    grid = dict(self.config.weak.grid)
    if not grid:
      return self._weak_model(data, seed)
    optimizer = self.config.weak.train.optimizer
    points = [{}] + [p for p in grid_lib.expand(grid) if not _is_optimizer_setting(optimizer, p)]
    models = [self._weak_model(data, seed, point=p) for p in points]
    scores = [m.holdout_score for m in models]
    best = max(range(len(points)), key=lambda i: (-math.inf if scores[i] is None else scores[i], -i))
    table = [{"grid_point": dict(p), "holdout_score": sc, "test_accuracy": m.test_accuracy}
             for p, sc, m in zip(points, scores, models)]
    log.info("weak model (seed %d): picked %s on its weak_train holdout (%s)", seed,
             grid_lib.point_name(points[best]), ", ".join(f"{grid_lib.point_name(r['grid_point'])}: "
                                                          f"{r['holdout_score']}" for r in table))
    return dataclasses.replace(models[best], grid_point=dict(points[best]), grid=table)

  def _bagged_truth(self, data: DataResult, seed: int, member: int) -> store_lib.WeakLabelStore:
    """weak_train's ground truth weighted by member ``member``'s bootstrap resample counts."""
    truth = self.truth_store(data, "weak_train")
    n = len(truth)
    components = {**truth.components, "bootstrap": {"seed": int(seed), "member": int(member)}, "of": truth.hash}

    def compute():
      rows = methods_lib.bootstrap_indices(int(seed), n, k=int(member) + 1)[int(member)]
      return truth.ids, truth.probs, np.bincount(rows, minlength=n).astype(np.float32), None

    return self.derived_store(components, compute)[0]

  def _weak_model(self, data: DataResult, seed: int, member: Mapping[str, Any] | None = None,
                  point: Mapping[str, float] | None = None) -> WeakResult:
    """One weak model, trained on weak_train's ground truth only if one of its stores is missing; ``point``:
    its optimizer settings off the config (a ``weak.grid`` point)."""
    cfg = self.config.weak
    make_model = self.task.make_model("weak", self.config)
    trainable = self.task.trainable("weak", self.config)
    point = dict(point or {})
    weak_components = self._weak_key_components(data, seed, point)
    truth = self.truth_store(data, "weak_train")
    if member is not None:  # An ensemble member (`weak_member`); the single weak model's key is unchanged.
      weak_components["member"] = dict(member)
      if member["bagging"]:
        truth = self._bagged_truth(data, member["of_seed"], member["index"])
        weak_components["truth"] = truth.hash
    runs_before = len(self.cache.computed("weak"))

    def weak_entry() -> cache_lib.Entry:
      def produce(out_dir, work_dir):
        train = data.splits["weak_train"]
        trained = engines.train_runs(
            [engines.RunSpec(seed=int(seed), store=truth, work_dir=work_dir, optimizer=point or None)],
            engine=cfg.engine, make_model=make_model, train_ids=train.ids,
            train_inputs=train.inputs["weak"],
            eval_inputs={s: data.splits[s].inputs["weak"] for s in ("w2s_train", "test")},
            loss_fn=losses_lib.get("xent"), train_cfg=cfg.train, trainable=trainable, desc="weak model",
        )
        for split in ("w2s_train", "test"):
          np.save(os.path.join(out_dir, f"probs_{split}.npy"), softmax(trained.logits[split][0]))
        metric_writers.save_history(out_dir, trained.history[0], trained.validation[0] if trained.validation else ())
        return {"history": trained.history[0][-1:] if trained.history[0] else [], **_selection_info(trained, 0),
                **_cost_info(trained, 0)}

      return self.cache.get_or_create("weak", weak_components, produce)

    stores = {}
    weak_key = cache_lib.stage_key("weak", weak_components)
    for split in ("w2s_train", "test"):
      s = data.splits[split]
      components = {"kind": "weak", "weak": weak_key, "split": split,
                    "ids": store_lib.ids_digest([str(i) for i in s.ids])}
      stores[split] = self._store_entry(
          components, lambda split=split, s=s: (s.ids, np.load(weak_entry().path(f"probs_{split}.npy"))))
    params, trainable_params = self.param_counts("weak")
    test = evaluate(np.log(np.clip(stores["test"].probs, 1e-12, 1.0)), data.splits["test"].labels)
    result = WeakResult(
        name=self.task.model_name("weak", self.config), params=params, trainable_params=trainable_params,
        labelled_examples=len(data.splits["weak_train"]), stores=stores,
        w2s_label_accuracy=float(np.mean(np.argmax(stores["w2s_train"].probs, -1) == data.splits["w2s_train"].labels)),
        weak_model_runs=len(self.cache.computed("weak")) - runs_before,
        selected_step=_weak_selected_step(self.cache, weak_key) if cfg.train.select.metric != "last" else None,
        holdout_score=_holdout_score(self.cache.open("weak", weak_key)) if cfg.grid else None,
        cost=_weak_cost(self.cache, weak_key), **test,
    )
    self.curves.append(metric_writers.RunCurves("weak", {"seed": int(seed)}, self.cache.directory("weak", weak_key),
                                                {k: v for k, v in test.items() if k != "test_correct"}))
    log.info("weak model (seed %d): test accuracy %.4f", seed, result.test_accuracy)
    return result

  def noisy_store(self, clean: store_lib.WeakLabelStore, spec: noise_lib.NoiseSpec) -> store_lib.WeakLabelStore:
    """``clean`` with ``spec`` applied, stored once; the weak model is not rerun."""
    if spec.is_identity:
      return clean
    noise_lib.check_scale(spec, clean.num_classes)
    components = {**clean.components, "noise": spec.as_dict(), "clean": clean.hash}
    return self._store_entry(components, lambda: (clean.ids, noise_lib.apply_noise(clean.probs, spec)[0]))

  def prefix_store(self, store: store_lib.WeakLabelStore, n: int) -> store_lib.WeakLabelStore:
    """The first ``n`` rows of ``store`` (a random subset: splits are drawn at random), stored once."""
    if not 0 < int(n) <= len(store):
      raise ValueError(f"a prefix of {n} rows of a store of {len(store)}; use 1 <= n <= {len(store)}.")
    if int(n) == len(store):
      return store
    components = {**store.components, "prefix": int(n), "of": store.hash}
    return self._store_entry(components, lambda: (list(store.ids[: int(n)]), store.probs[: int(n)]))

  # -- strong runs (ceiling and students)
  def _strong_components(self, data: DataResult) -> dict[str, Any]:
    return {
        "task": self.task.name, "data": data.fingerprint, "strong": semantic(self.config.strong),
        "train": semantic(self.config.student.train), "engine": engines.resolve_engine(str(self.config.student.engine)),
        "entry_format": RUN_ENTRY_FORMAT,
    }

  def _train_strong(self, data: DataResult, stage: str, loss: str, hparams: Mapping[str, Any],
                    runs: Sequence[tuple[int, store_lib.WeakLabelStore]], desc: str,
                    train_split: str = "w2s_train",
                    weak_tests: Sequence[store_lib.WeakLabelStore | None] | None = None,
                    method: Mapping[str, Any] | None = None, predict: Sequence[str] = (),
                    overrides: Sequence[Mapping[str, float]] | None = None,
                    owner: str | None = None) -> list[cache_lib.Entry]:
    """Entries (test logits) of strong runs ``[(seed, store), ...]`` on ``train_split``, trained together
    where missing.

    A run's entry keeps its `run_metrics` in ``info["metrics"]`` (its misfit to
    ``weak_tests[i]``, the weak labels on test, where given) and its cost
    (``info["cost"]``), computed once here. ``method``: the method's settings
    (`method_stages`), in the key; ``predict``: more splits whose logits the
    entry keeps (``<split>_logits.npy``), e.g. w2s_train for a strong-to-strong round.
    ``overrides[i]``: run i's optimizer settings off the config (a grid point, `w2sg_jax.grid`), in its
    key as the settings it trains with, so the point equal to the config's own is that run.
    ``owner``: under ``--worker``, the key that decides which worker trains the group
    (`cache.Cache.get_or_create_group`); the rounds of an s2s chain share one.
    """
    base = {**self._strong_components(data), "train_split": train_split}
    if method is not None:
      base["method"] = dict(method)
    if predict:
      base["predict"] = sorted(predict)
    resolved = _resolved_hparams(loss, hparams)
    components = [{**base, "loss": loss, "loss_hparams": resolved, "seed": seed, "labels": store.hash}
                  for seed, store in runs]
    train_cfg = self.config.student.train
    for i, point in enumerate(overrides or ()):
      if point:  # The run's optimizer settings as if the config said them.
        components[i] = {**components[i], "train": semantic(
            train_cfg.replace(optimizer=train_cfg.optimizer.replace(**point)))}
    train = data.splits[train_split]
    cfg = self.config.student

    def produce_group(todo: list[int], work_dirs: list[str]):
      with self.profile.part("train"):
        trained = train_group(todo, work_dirs)
      labels = data.splits["test"].labels
      infos = []
      with self.profile.part("metrics"):
        for j, (i, logits) in enumerate(zip(todo, trained.logits["test"])):
          metrics = run_metrics(np.asarray(logits, np.float32), labels, weak_tests[i] if weak_tests else None)
          infos.append({**_selection_info(trained, j), **_cost_info(trained, j), METRICS_INFO: metrics})

      def writer(logits, info, j):
        def write(out_dir):
          np.save(os.path.join(out_dir, TEST_LOGITS), np.asarray(logits, np.float32))
          for split in predict:
            np.save(os.path.join(out_dir, f"{split}_logits.npy"), np.asarray(trained.logits[split][j], np.float32))
          metric_writers.save_history(out_dir, trained.history[j], trained.validation[j] if trained.validation else ())
          return info
        return write

      return [writer(l, info, j) for j, (l, info) in enumerate(zip(trained.logits["test"], infos))]

    def train_group(todo: list[int], work_dirs: list[str]) -> engines.TrainedRuns:
      return engines.train_runs(
          [engines.RunSpec(seed=runs[i][0], store=runs[i][1], work_dir=w,
                           optimizer=dict(overrides[i]) if overrides and overrides[i] else None)
           for i, w in zip(todo, work_dirs)],
          engine=str(cfg.engine), make_model=self.task.make_model("strong", self.config), train_ids=train.ids,
          train_inputs=train.inputs["strong"],
          eval_inputs={s: data.splits[s].inputs["strong"] for s in ("test", *predict)},
          loss_fn=losses_lib.get(loss, **dict(hparams)), train_cfg=cfg.train,
          loss_table=self.student_loss_table if stage == "student" else None,
          trainable=self.task.trainable("strong", self.config), desc=f"{desc} ({len(todo)} runs)",
      )

    return self.cache.get_or_create_group(stage, components, produce_group, owner=owner)

  @property
  def ceiling_split(self) -> str:
    """``ceiling.split``: the split whose ground truth trains the ceiling (default ``w2s_train``)."""
    return self.config.ceiling.split  # One of CEILING_SPLITS: the schema checked it.

  @_profiled("ceiling")
  def ceiling(self, data: DataResult) -> CeilingResult:
    """The strong model on ground truth (``ceiling.split``), one run per student seed: the ceiling of PGR."""
    seeds = self.student_seeds
    split = self.ceiling_split
    truth = self.truth_store(data, split)
    # ceiling.grid: every point x seed in one group; the config's own setting ({}) first, so it wins ties.
    grid = dict(self.config.ceiling.grid)
    optimizer = self.config.student.train.optimizer
    points = [{}] + [p for p in grid_lib.expand(grid) if not _is_optimizer_setting(optimizer, p)] if grid else [{}]
    with self.profile.part("runs"):
      try:
        all_entries = self._train_strong(data, "ceiling", "xent", {}, [(s, truth) for _ in points for s in seeds],
                                         "ceiling", train_split=split,
                                         overrides=[dict(p) for p in points for _ in seeds] if grid else None)
      except cache_lib.RunsOfOtherWorkers as e:  # --worker: the other seeds' ceilings are another's.
        self.missing_runs.extend((e.stage, k) for k in e.keys)
        return None
    by_point = [all_entries[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(points))]
    table, best = [], 0
    if grid:  # The point whose runs score best on their holdout, labelled with ground truth: the ceiling's own labels.
      for p, group in zip(points, by_point):
        scores = [_holdout_score(e) for e in group]
        mean = float(np.mean(scores)) if all(sc is not None for sc in scores) else None
        accuracy = float(np.mean([cached_run_metrics(e, np.load(e.path(TEST_LOGITS)), data.splits["test"].labels)[0]
                                  ["test_accuracy"] for e in group]))
        table.append({"grid_point": dict(p), "holdout_score": mean, "test_accuracy": accuracy})
      best = max(range(len(points)), key=lambda i: (-math.inf if table[i]["holdout_score"] is None
                                                    else table[i]["holdout_score"], -i))
      log.info("strong ceiling: picked %s on its holdout (%s)", grid_lib.point_name(points[best]),
               ", ".join(f"{grid_lib.point_name(r['grid_point'])}: {r['holdout_score']}" for r in table))
    entries = by_point[best]
    labels = data.splits["test"].labels
    per_seed = []
    with self.profile.part("metrics"):
      for e in entries:
        logits = np.load(e.path(TEST_LOGITS))
        metrics, from_cache = cached_run_metrics(e, logits, labels)
        self.profile.add("metrics_computed", 0 if from_cache else 1)
        self.curves.append(metric_writers.RunCurves("ceiling", {"seed": int(seeds[len(per_seed)])}, e.directory,
                                                    {k: metrics[k] for k in ("test_accuracy", "test_auroc")}))
        per_seed.append({**metrics, "test_correct": correctness(logits, labels)})
    params, trainable_params = self.param_counts("strong")
    result = CeilingResult(
        name=self.task.model_name("strong", self.config), params=params, trainable_params=trainable_params,
        seeds=seeds, test_accuracy_per_seed=[r["test_accuracy"] for r in per_seed],
        test_accuracy=float(np.mean([r["test_accuracy"] for r in per_seed])),
        test_auroc=float(np.mean([r["test_auroc"] for r in per_seed])),
        # Mean correctness over seeds: the paired bootstrap resamples examples.
        test_correct=np.mean([r["test_correct"] for r in per_seed], 0).astype(np.float32),
        selected_steps=[e.info.get("selected_step") for e in entries],
        grid_point=dict(points[best]), grid=table,
    )
    log.info("strong ceiling: test accuracy %.4f", result.test_accuracy)
    return result

  def noise_specs(self) -> list[noise_lib.NoiseSpec]:
    cfg = self.config.student.noise
    return [noise_lib.NoiseSpec(rate=float(r), scale=float(cfg.scale), seed=int(cfg.seed)) for r in cfg.rates]

  def noise_spec(self, rate: float, student_seed: int) -> noise_lib.NoiseSpec:
    """The noise of the student of ``student_seed`` at ``rate``.

    ``student.noise.per_seed``: the corrupted subset is drawn with the
    student's own seed (as in the Yao et al. code), so seed intervals include
    the choice of subset; otherwise with ``noise.seed``, the same for every student.
    """
    cfg = self.config.student.noise
    seed = int(student_seed) if cfg.per_seed else int(cfg.seed)
    return noise_lib.NoiseSpec(rate=float(rate), scale=float(cfg.scale), seed=seed)

  @_profiled("students")
  def students(self, data: DataResult, weak: WeakResult) -> StudentRuns:
    """Every (method, loss, noise, seed) student; the runs of one (method, loss) train together."""
    student = self.config.student
    seeds = self.student_seeds
    rates = [spec.rate for spec in self.noise_specs()]
    cells = [(rate, seed) for rate in rates for seed in seeds]
    makers = method_stages.MethodLabels(self, data, weak, student.method)
    runs = []
    for method in student.methods:
      problem = self.task.method_problem(method, self.config)
      if problem:
        raise ValueError(f"student.methods has {method!r}, but {problem}")
      # (rate, seed) -> the labels that student learns from.
      with self.profile.part("labels"):
        if method == "bootstrap":
          labels = makers.bootstrap_labels(cells)
        else:
          labels = {cell: makers.labels(method, *cell) for cell in cells}
      if method == "single" and student.grid:  # The config's own setting trains among the grid's points.
        runs += self._grid_runs(data, student, cells, labels)
        continue
      for loss in student.losses:
        hparams = dict(student.loss_hparams.get(loss, {}))
        with self.profile.part("runs"):
          try:
            entries, upstream = self._method_runs(data, method, loss, hparams, cells, labels, makers)
          except cache_lib.RunsOfOtherWorkers as e:  # --worker: this group's other runs are another's.
            self.missing_runs.extend((e.stage, k) for k in e.keys)
            continue
        with self.profile.part("metrics"):
          for cell, entry in zip(cells, entries):
            runs.append(self._student_run(data, method, loss, cell, entry, labels[cell], upstream[cell]))
    params, trainable_params = self.param_counts("strong")
    return StudentRuns(runs=runs, params=params, trainable_params=trainable_params)

  def _grid_runs(self, data, student, cells, labels) -> list[StudentRun]:
    """Every point of ``student.grid`` for every (loss, noise, seed), with the single method's ``labels``.

    The config's own setting is one of them (``grid_point`` {}); a grid point equal to it is that run,
    not a second one. The points of one loss that differ only in optimizer settings train as one
    group (one vmapped call: `engines.RunSpec.optimizer`), the config's setting among them; each
    value of a loss hyperparameter is a group of its own, through the same compiled loop (its loss is
    in `student_loss_table`).
    """
    out = []
    for loss in student.losses:
      base_hparams = dict(student.loss_hparams.get(loss, {}))
      resolved_base = _resolved_hparams(loss, base_hparams)
      points = grid_lib.points_for(student.grid, lambda hp, loss=loss: _accepts(loss, base_hparams, hp))
      # hparams key -> (hparams, points); the config's own setting ({}) first in its group.
      groups: dict[str, tuple[dict[str, Any], list[dict[str, float]]]] = {
          repr(sorted(resolved_base.items())): (base_hparams, [{}])}
      for point in points:
        hparams = {**base_hparams, **grid_lib.loss_part(point)}
        resolved = _resolved_hparams(loss, hparams)
        if resolved == resolved_base and self._is_config_optimizer(grid_lib.optimizer_part(point)):
          continue  # The config's own setting, already in the group.
        groups.setdefault(repr(sorted(resolved.items())), (hparams, []))[1].append(point)
      for hparams, group in groups.values():
        todo = [(point, cell) for point in group for cell in cells]
        with self.profile.part("runs"):
          try:
            entries = self._train_strong(
                data, "student", loss, hparams, [(cell[1], labels[cell].train) for _, cell in todo],
                f"students {loss} [grid, {len(group)} points]", weak_tests=[labels[cell].test for _, cell in todo],
                overrides=[grid_lib.optimizer_part(point) for point, _ in todo])
          except cache_lib.RunsOfOtherWorkers as e:
            self.missing_runs.extend((e.stage, k) for k in e.keys)
            continue
        with self.profile.part("metrics"):
          for (point, cell), entry in zip(todo, entries):
            run = self._student_run(data, "single", loss, cell, entry, labels[cell], labels[cell].upstream,
                                    grid_point=point)
            run.grid_point = dict(point)
            run.holdout_score = _holdout_score(entry)
            out.append(run)
    return out

  def _is_config_optimizer(self, settings: Mapping[str, float]) -> bool:
    """Whether optimizer ``settings`` (a grid point's) are what student.train.optimizer already says."""
    return _is_optimizer_setting(self.config.student.train.optimizer, settings)

  def grid_default_points(self) -> dict[str, dict[str, float]]:
    """Per loss, the config's own setting on each of the grid's axes that apply to it (what ``grid_point``
    {} stands for): for tables and figures that place the default among the points."""
    student = self.config.student
    optimizer = self.config.student.train.optimizer
    out = {}
    for loss in student.losses:
      resolved = _resolved_hparams(loss, dict(student.loss_hparams.get(loss, {})))
      point = {}
      for axis in student.grid:
        if axis in grid_lib.OPTIMIZER_KEYS and hasattr(optimizer, axis):
          point[axis] = float(getattr(optimizer, axis))
        elif axis.startswith(grid_lib.LOSS_PREFIX) and axis[len(grid_lib.LOSS_PREFIX):] in resolved:
          point[axis] = float(resolved[axis[len(grid_lib.LOSS_PREFIX):]])
      out[loss] = point
    return out

  def _method_runs(self, data, method, loss, hparams, cells, labels, makers):
    """``(entries, upstream)``: the students of one (method, loss), one per cell, and per cell the costs of
    the models before them (for s2s, the earlier rounds' students too)."""
    stores = {cell: labels[cell].train for cell in cells}
    upstream = {cell: list(labels[cell].upstream) for cell in cells}
    weak_tests = [labels[cell].test for cell in cells]
    rounds = makers.settings.s2s_rounds if method == "s2s" else 0
    key = labels[cells[0]].method
    # Under --worker, one worker trains a whole s2s chain (a round needs the one before it).
    owner = hashing.content_hash({"s2s": key, "loss": loss, "hparams": dict(hparams),
                                  "labels": [labels[c].train.hash for c in cells]}) if rounds else None
    for r in range(rounds + 1):
      last = r == rounds
      desc = f"students {loss}" + ("" if method == "single" else f" [{method}" + (f" round {r}]" if rounds else "]"))
      entries = self._train_strong(
          data, "student", loss, hparams, [(seed, stores[(rate, seed)]) for rate, seed in cells], desc,
          weak_tests=weak_tests, method=None if key is None else ({**key, "round": r} if rounds else key),
          predict=() if last else ("w2s_train",), owner=owner)
      if not last:  # This round's students label the next round's w2s_train.
        for cell, entry in zip(cells, entries):
          upstream[cell].append(entry.info.get(COST_INFO))
          stores[cell] = makers.s2s_store(entry, stores[cell])
          labels[cell].stores.append(stores[cell])
    return entries, upstream

  def _student_run(self, data, method, loss, cell, entry, labels, upstream,
                   grid_point: Mapping[str, float] | None = None) -> StudentRun:
    rate, seed = cell
    test_labels = data.splits["test"].labels
    logits = np.load(entry.path(TEST_LOGITS))
    m, from_cache = cached_run_metrics(entry, logits, test_labels, labels.test)
    self.profile.add("metrics_computed", 0 if from_cache else 1)
    stored = sum(method_stages.directory_bytes(s.directory) for s in labels.stores)
    run = StudentRun(
        loss=loss, noise=float(rate), seed=int(seed), test_accuracy=m["test_accuracy"],
        test_auroc=m["test_auroc"], misfit_kl=float(m["misfit"]["kl"]), misfit_tv=float(m["misfit"]["tv"]),
        test_correct=correctness(logits, test_labels), cache_entry=entry.directory,
        selected_step=entry.info.get("selected_step"), method=method, weak_models=labels.weak_models,
        cost=method_stages.total_cost([entry.info.get(COST_INFO), *upstream],
                            stored_bytes=stored + method_stages.directory_bytes(entry.directory)),
    )
    tags = {"loss": loss, "noise": float(rate), "seed": int(seed), **({"method": method} if method != "single" else {}),
            **{k: float(v) for k, v in (grid_point or {}).items()}}
    self.curves.append(metric_writers.RunCurves(
        "students", tags, entry.directory,
        {k: getattr(run, k) for k in ("test_accuracy", "test_auroc", "misfit_kl", "misfit_tv")}))
    return run

  @functools.cached_property
  def student_loss_table(self) -> tuple[losses_lib.LossFn, ...]:
    """Every student loss at its configured hparams: on the vmap engine the groups of these losses share
    one compiled training loop (`engines.train_vmap`'s ``loss_table``), which differs only in the loss."""
    student = self.config.student
    table = []
    for loss in student.losses:
      base = dict(student.loss_hparams.get(loss, {}))
      table.append(losses_lib.get(loss, **base))
      # A grid's loss_<hparam> values: each is a loss of the table too, so every group of the grid shares it.
      for point in grid_lib.points_for(student.grid, lambda hp, loss=loss, base=base: _accepts(loss, base, hp)):
        if grid_lib.loss_part(point):
          table.append(losses_lib.get(loss, **{**base, **grid_lib.loss_part(point)}))
    return tuple(dict.fromkeys(table))

  @property
  def grid_active(self) -> bool:
    """Whether ``student.grid`` lists settings to tune."""
    return bool(self.config.student.grid)

  def strong_semantic(self) -> Any:
    """The strong model's settings as they enter keys."""
    return semantic(self.config.strong)

  def train_semantic(self) -> Any:
    """The students' training settings as they enter keys."""
    return semantic(self.config.student.train)


def _selection_info(trained: engines.TrainedRuns, run: int) -> dict[str, Any]:
  """What a run's cache entry keeps of its model selection: the chosen step and every evaluation."""
  if not trained.selected_steps:
    return {}
  return {"selected_step": trained.selected_steps[run], "validation": trained.validation[run]}


def _accepts(loss: str, hparams: Mapping[str, Any], hparam: str) -> bool:
  """Whether ``loss`` takes the hyperparameter ``hparam`` (a ``loss_<hparam>`` grid axis)."""
  try:
    losses_lib.get(loss, **{**hparams, hparam: losses_lib.get(loss, **hparams).hparams.get(hparam, 0.5)})
  except (ValueError, TypeError):
    return False
  return True


def _is_optimizer_setting(optimizer: schema.OptimizerConfig, settings: Mapping[str, float]) -> bool:
  """Whether optimizer ``settings`` (a grid point's) are what the ``optimizer`` config already says."""
  return all(hasattr(optimizer, k) and float(getattr(optimizer, k)) == float(v) for k, v in settings.items())


def _holdout_score(entry: cache_lib.Entry | None) -> float | None:
  """The run's best score on its holdout (the step it returns), or None without one (or without its entry)."""
  rows = (entry.info.get("validation") if entry is not None else None) or []
  scores = [v for row in rows for k, v in row.items() if k != "step" and isinstance(v, (int, float))]
  return float(max(scores)) if scores else None


def _cost_info(trained: engines.TrainedRuns, run: int) -> dict[str, Any]:
  """What a run's cache entry keeps of its cost (`engines.TrainedRuns.cost`)."""
  costs = getattr(trained, "cost", None)
  return {COST_INFO: dict(costs[run])} if costs else {}


def _weak_cost(cache: cache_lib.Cache, weak_key: str) -> dict[str, Any] | None:
  entry = cache.open("weak", weak_key)  # None if only its stores are kept.
  return entry.info.get(COST_INFO) if entry is not None else None


def _weak_selected_step(cache: cache_lib.Cache, weak_key: str) -> int | None:
  entry = cache.open("weak", weak_key)  # None if only its stores are kept.
  return entry.info.get("selected_step") if entry is not None else None


def _resolved_hparams(loss: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
  """Every hyperparameter the loss will use, defaults included: a changed default (such as
  the confidence schedule of the ``+conf`` names) changes the key of the runs it trains."""
  return {k: v for k, v in losses_lib.get(loss, **dict(hparams)).hparams.items()}


def _log_softmax(logits_NxC: np.ndarray) -> np.ndarray:
  z = np.asarray(logits_NxC, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl_numpy(logits_NxC: np.ndarray, weak_NxC: np.ndarray) -> np.ndarray:
  """KL(weak || softmax(logits)) per example, 0 log 0 = 0: the library's ``kl``, in float64."""
  p = np.asarray(weak_NxC, np.float64)
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return np.sum(plogp - p * _log_softmax(logits_NxC), -1)


def _tv_numpy(logits_NxC: np.ndarray, weak_NxC: np.ndarray) -> np.ndarray:
  """TV(weak, softmax(logits)) per example: the library's ``tv``, in float64."""
  return 0.5 * np.sum(np.abs(np.asarray(weak_NxC, np.float64) - np.exp(_log_softmax(logits_NxC))), -1)


# For the misfits a run reports, numpy: on a few thousand rows it takes microseconds, where a jit
# compiles for tens of milliseconds (per call when built per call: seconds over a sweep).
_NUMPY_DIVERGENCES = {"kl": _kl_numpy, "tv": _tv_numpy}


@functools.lru_cache(maxsize=None)
def _jitted_divergence(name: str):
  """The library's loss ``name`` jitted once per process (recompiled only for a new shape)."""
  return jax.jit(losses_lib.get(name))


def _mean_divergence(name: str, student_logits: np.ndarray, weak_probs: np.ndarray) -> float:
  """Mean over examples of D(weak || student) under the library's loss ``name``."""
  if name in _NUMPY_DIVERGENCES:
    return float(np.mean(_NUMPY_DIVERGENCES[name](student_logits, weak_probs)))
  fn = _jitted_divergence(name)
  return float(np.mean(np.asarray(fn(np.asarray(student_logits, np.float32), np.asarray(weak_probs, np.float32)))))
