"""The W2SG pipeline: each stage writes an artifact the next one reads.

    data -> weak model (ground truth) -> weak labels, once, in a store
         -> strong ceiling (ground truth) -> students (loss x noise x seed) -> report

Every stage is skipped when its artifact exists and its hash matches the
config that would produce it, so rerunning after a change to the students
costs only the students, and an interrupted sweep loses nothing: each finished
group of runs is on disk before the next one starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from w2sg_jax import losses as losses_lib
from w2sg_jax import metrics as metrics_lib
from w2sg_jax import parallel
from w2sg_jax import report as report_lib
from w2sg_jax import sweep as sweep_lib
from w2sg_jax import train as train_lib
from w2sg_jax.labels import noise as noise_lib
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib

from w2sg_jax.data.task import SPLITS, Split, Task  # noqa: F401  (re-exported for callers)


# ----------------------------------------------------------------- helpers


def config_hash(*parts: Any) -> str:
  return store_lib.content_hash({"parts": [_plain(p) for p in parts]})


def _plain(x: Any) -> Any:
  if isinstance(x, ml_collections.ConfigDict):
    return x.to_dict()
  return x


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float32)[labels]


def _write_json(path: str, obj: Any) -> None:
  if jax.process_index() != 0:
    return  # Every process computes the same result; one writes it.
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_json_default)
  os.replace(tmp, path)  # Atomic: a kill never leaves half a file.


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def _read_json(path: str) -> Any | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def count_params(make_model: Callable[[nnx.Rngs], nnx.Module]) -> int:
  state = nnx.state(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))), nnx.Param)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def evaluate(logits_NxC: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Test metrics of one model, with per-example correctness for the paired bootstrap."""
  correct = (np.argmax(logits_NxC, -1) == labels).astype(np.int8)
  return {
      "test_accuracy": float(correct.mean()),
      "test_auroc": float(metrics_lib.auroc_from_scores(logits_NxC, labels)),
      "test_correct": correct,
  }


def _log(msg: str) -> None:
  print(f"[w2sg] {msg}", flush=True)


# ------------------------------------------------------------ model training


def fit_model(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    inputs: Mapping[str, np.ndarray],
    targets_NxC: np.ndarray,
    *,
    train_cfg: ml_collections.ConfigDict,
    loss: str,
    loss_hparams: Mapping[str, Any],
    seed: int,
    workdir: str,
    trainable: Any = nnx.Param,
    desc: str,
    batches: Callable[[int], Any] | None = None,
) -> tuple[train_lib.Trainer, train_lib.TrainState]:
  """One model, data-parallel over every device, checkpointed in ``workdir``.

  ``batches(position)`` may supply the host batches (the weak-label stream);
  by default they are cut from ``inputs``/``targets`` in a per-epoch order that
  is a pure function of (seed, step), so a resumed run sees the same batches.
  """
  num_examples = len(targets_NxC)
  batch_size = int(train_cfg.batch_size)
  num_steps = int(train_cfg.get("num_steps", 0)) or max(1, int(train_cfg.epochs * num_examples // batch_size))
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch_size, mesh)
  tx, schedule = train_lib.make_optimizer(train_cfg.optimizer, num_steps)
  model = make_model(nnx.Rngs(params=seed))
  apply_fn, params, frozen = train_lib.split_model(model, trainable)
  state = parallel.replicate(train_lib.init_state(params, frozen, tx, seed), mesh)
  trainer = train_lib.Trainer(
      apply_fn=apply_fn,
      loss_fn=losses_lib.get(loss, **dict(loss_hparams)),
      tx=tx,
      schedule=schedule,
      num_steps=num_steps,
      mesh=mesh,
  )
  if batches is None:
    order = sweep_lib.batch_indices(num_examples, batch_size, num_steps, seed)
    # Each process reads its own rows of the global batch.
    lo = jax.process_index() * batch_size // jax.process_count()
    hi = lo + batch_size // jax.process_count()

    def batches(position):
      for idx in order[position:]:
        idx = idx[lo:hi]
        yield {
            "inputs": {k: v[idx] for k, v in inputs.items()},
            "targets": targets_NxC[idx],
            "mask": np.ones(len(idx), np.float32),
        }

  result = train_lib.fit(
      trainer,
      state,
      batches,
      num_steps=num_steps,
      workdir=workdir,
      save_every=int(train_cfg.get("save_every", 500)),
      log_every=int(train_cfg.get("log_every", 50)),
      desc=desc,
  )
  return trainer, result.state


class ArraySource:
  """Random access to a split's rows as ``{"id", **inputs}`` dicts (a Grain source)."""

  def __init__(self, ids: np.ndarray, inputs: Mapping[str, np.ndarray]):
    self._ids, self._inputs = ids, inputs

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"id": self._ids[i], **{k: v[i] for k, v in self._inputs.items()}}


# ------------------------------------------------------------------ pipeline


class Pipeline:
  """Runs an experiment config end to end in ``workdir``; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, task: Task):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.task = task
    self.cache_dir = os.path.abspath(config.cache_dir)
    os.makedirs(self.workdir, exist_ok=True)
    os.makedirs(self.cache_dir, exist_ok=True)
    self.timings: dict[str, float] = {}

  # -- stage 0: check everything a user can get wrong, before any compute.
  def validate(self) -> None:
    cfg = self.config.student
    for name in cfg.losses:
      losses_lib.get(name, **dict(cfg.loss_hparams.get(name, {})))
    for rate in cfg.noise.rates:
      noise_lib.NoiseSpec(rate=float(rate), scale=float(cfg.noise.scale), seed=0)
    if int(self.config.seeds) < 1:
      raise ValueError(f"config.seeds={self.config.seeds}; it must be at least 1.")

  def run(self) -> dict[str, Any]:
    t_start = time.perf_counter()
    self.validate()
    _write_json(os.path.join(self.workdir, "config.json"), self.config.to_dict())
    data = self._stage("data", lambda: self.task.splits(self.config, self.cache_dir))
    fingerprint = self.task.fingerprint(self.config)
    weak = self._stage("weak", lambda: self.weak_stage(data, fingerprint))
    ceiling = self._stage("ceiling", lambda: self.ceiling_stage(data, fingerprint))
    runs = self._stage("students", lambda: self.student_stage(data, weak, ceiling, fingerprint))
    results = self._stage("report", lambda: self.report_stage(weak, ceiling, runs))
    results["data"] = fingerprint
    results["timings_s"] = {**self.timings, "total": time.perf_counter() - t_start}
    _write_json(os.path.join(self.workdir, "results.json"), _strip(results))
    return results

  def _stage(self, name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    _log(f"stage {name} ...")
    out = fn()
    self.timings[name] = time.perf_counter() - t0
    _log(f"stage {name} done in {self.timings[name]:.1f}s")
    return out

  # -- stage 1: the weak supervisor, trained once; its labels stored once.
  def weak_stage(self, data: dict[str, Split], fingerprint: dict[str, Any]) -> dict[str, Any]:
    cfg = self.config.weak
    make_model = self.task.make_model("weak", self.config)
    key = config_hash(fingerprint, cfg, self.config.seed)
    components = {"task": self.task.name, "data": fingerprint, "weak": cfg.to_dict(), "seed": int(self.config.seed)}
    weak_dir = os.path.join(self.cache_dir, "weak", key[:16])
    state_box: dict[str, Any] = {}

    def predictions(split: str):
      # Trains (or restores) the weak model at most once per process, and only
      # when some store is missing: a later experiment with the same weak set-up
      # finds both stores and never runs the weak model.
      if "trainer" not in state_box:
        train = data["weak_train"]
        state_box["trainer"], state_box["state"] = fit_model(
            make_model,
            train.inputs["weak"],
            one_hot(train.labels, self.task.num_classes),
            train_cfg=cfg.train,
            loss="xent",
            loss_hparams={},
            seed=int(self.config.seed),
            workdir=weak_dir,
            trainable=self.task.trainable("weak", self.config),
            desc="weak model",
        )
      state_box["calls"] = state_box.get("calls", 0) + 1
      logits = state_box["trainer"].predict(
          state_box["state"], data[split].inputs["weak"], int(cfg.train.get("eval_batch_size", 256))
      )
      probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), -1))
      return data[split].ids, probs

    stores = {}
    for split in ("w2s_train", "test"):
      stores[split] = store_lib.get_or_create_store(
          os.path.join(self.cache_dir, "stores"),
          {**components, "split": split},
          lambda split=split: predictions(split),
          expected_ids=data[split].ids,
      )
    test_probs = stores["test"].probs
    result = {
        "name": self.task.model_name("weak", self.config),
        "params": count_params(make_model),
        "labelled_examples": len(data["weak_train"]),
        "weak_model_runs": state_box.get("calls", 0),
        "store": stores["w2s_train"].directory,
        "w2s_label_accuracy": float(np.mean(np.argmax(stores["w2s_train"].probs, -1) == data["w2s_train"].labels)),
        **evaluate(np.log(np.clip(test_probs, 1e-12, 1.0)), data["test"].labels),
    }
    result["_stores"] = stores
    _log(f"weak model: test accuracy {result['test_accuracy']:.4f}")
    return result

  # -- stage 2: the strong model on ground truth, the ceiling of PGR.
  def ceiling_stage(self, data: dict[str, Split], fingerprint: dict[str, Any]) -> dict[str, Any]:
    cfg = self.config.student
    make_model = self.task.make_model("strong", self.config)
    seeds = self._seeds()
    key = config_hash(fingerprint, self.config.strong, cfg.train, seeds, "ceiling")
    path = os.path.join(self.workdir, "ceiling.json")
    cached = _read_json(path)
    if cached is not None and cached.get("hash") == key:
      cached["test_correct"] = np.asarray(cached["test_correct"], np.float32)
      return cached
    train = data["w2s_train"]
    targets = one_hot(train.labels, self.task.num_classes)
    run_dirs = [os.path.join(self.workdir, "ckpt", key[:12], f"ceiling_seed{s}") for s in seeds]
    logits = self._train_strong(data, "xent", {}, [targets] * len(seeds), seeds, "ceiling", run_dirs=run_dirs)
    per_seed = [evaluate(l, data["test"].labels) for l in logits]
    result = {
        "hash": key,
        "name": self.task.model_name("strong", self.config),
        "params": count_params(make_model),
        "n_seeds": len(seeds),
        "test_accuracy": float(np.mean([r["test_accuracy"] for r in per_seed])),
        "test_accuracy_per_seed": [r["test_accuracy"] for r in per_seed],
        "test_auroc": float(np.mean([r["test_auroc"] for r in per_seed])),
        # Mean correctness over seeds: the paired bootstrap resamples examples,
        # and the ceiling is the seed-averaged strong model.
        "test_correct": np.mean([r["test_correct"] for r in per_seed], 0).astype(np.float32),
    }
    _write_json(path, _strip(result, keep_correct=True))
    _log(f"strong ceiling: test accuracy {result['test_accuracy']:.4f}")
    return result

  def _seeds(self) -> list[int]:
    return [int(self.config.seed) + 1 + i for i in range(int(self.config.seeds))]

  def _train_strong(
      self,
      data: dict[str, Split],
      loss: str,
      loss_hparams: Mapping[str, Any],
      targets: Sequence[np.ndarray],
      seeds: Sequence[int],
      desc: str,
      *,
      run_dirs: Sequence[str],
      stores: Sequence[store_lib.WeakLabelStore] | None = None,
  ) -> list[np.ndarray]:
    """Trains strong models (one per seed/target set); returns their test logits.

    With ``stores`` (students under the ``fit`` engine), each run streams its
    (input, weak label) pairs from the on-disk store through Grain, with
    prefetching; ``targets`` are then only used by the vmapped engine.
    """
    cfg = self.config.student
    make_model = self.task.make_model("strong", self.config)
    train = data["w2s_train"]
    num_steps = int(cfg.train.get("num_steps", 0)) or max(
        1, int(cfg.train.epochs * len(train) // int(cfg.train.batch_size))
    )
    if cfg.engine == "sweep":
      apply, params, _ = sweep_lib.train_group(
          make_model,
          train.inputs["strong"],
          np.stack(targets),
          seeds,
          loss_fn=losses_lib.get(loss, **dict(loss_hparams)),
          opt=cfg.train.optimizer,
          num_steps=num_steps,
          batch_size=int(cfg.train.batch_size),
          desc=desc,
      )
      logits = apply(params, jax.tree.map(np.asarray, data["test"].inputs["strong"]))
      return list(np.asarray(logits))
    if cfg.engine == "fit":
      out = []
      for i, (target, seed) in enumerate(zip(targets, seeds)):
        # A finished run leaves its test logits and (unless asked to keep it)
        # drops its checkpoint: a GPT-2 student with Adam moments is gigabytes.
        logits_path = os.path.join(run_dirs[i], "test_logits.npy")
        if os.path.exists(logits_path):
          out.append(np.load(logits_path))
          continue
        batches = None
        if stores is not None:
          batches = self._stream(train, stores[i], int(cfg.train.batch_size), seed)
        trainer, state = fit_model(
            make_model,
            train.inputs["strong"],
            target,
            train_cfg=cfg.train,
            loss=loss,
            loss_hparams=loss_hparams,
            seed=seed,
            workdir=run_dirs[i],
            trainable=self.task.trainable("strong", self.config),
            desc=f"{desc} seed {seed}",
            batches=batches,
        )
        logits = trainer.predict(state, data["test"].inputs["strong"], int(cfg.train.get("eval_batch_size", 256)))
        np.save(logits_path, logits)
        if not cfg.keep_checkpoints:
          shutil.rmtree(os.path.join(run_dirs[i], "ckpt"), ignore_errors=True)
        out.append(logits)
      return out
    raise ValueError(f"unknown student engine {cfg.engine!r}; use 'sweep' (heads, vmapped) or 'fit'.")

  @staticmethod
  def _stream(train: Split, store: store_lib.WeakLabelStore, batch_size: int, seed: int):
    """``position -> batches`` of this process's rows, streamed from the store."""
    dataset = stream_lib.student_dataset(
        ArraySource(train.ids, train.inputs["strong"]), store, batch_size=batch_size, seed=seed, ids=train.ids
    )
    per_process = batch_size // jax.process_count()
    lo = jax.process_index() * per_process
    dataset = dataset.map(
        lambda b: stream_lib.to_train_batch(jax.tree.map(lambda x: x[lo : lo + per_process], b))
    )
    return lambda position: stream_lib.batches_from(dataset, position)

  # -- stage 3: students on weak labels, every (loss, noise, seed).
  def student_stage(
      self, data: dict[str, Split], weak: dict[str, Any], ceiling: dict[str, Any], fingerprint: dict[str, Any]
  ) -> list[dict[str, Any]]:
    cfg = self.config.student
    seeds = self._seeds()
    clean = weak["_stores"]["w2s_train"]
    noisy = {}
    for rate in cfg.noise.rates:
      spec = noise_lib.NoiseSpec(rate=float(rate), scale=float(cfg.noise.scale), seed=int(cfg.noise.seed))
      noisy[float(rate)] = store_lib.noisy_store(clean, spec, os.path.join(self.cache_dir, "stores"))
    runs_dir = os.path.join(self.workdir, "students")
    os.makedirs(runs_dir, exist_ok=True)
    all_runs: list[dict[str, Any]] = []
    for loss in cfg.losses:
      hparams = dict(cfg.loss_hparams.get(loss, {}))
      key = config_hash(fingerprint, self.config.strong, cfg.train, cfg.engine, loss, hparams, weak["store"])
      path = os.path.join(runs_dir, f"{loss}.json")
      done = _read_json(path) or {}
      done = done.get("runs", []) if done.get("hash") == key else []
      have = {(r["noise"], r["seed"]) for r in done}
      todo = [(float(rate), seed) for rate in cfg.noise.rates for seed in seeds if (float(rate), seed) not in have]
      if todo:
        targets = [noisy[rate].probs for rate, _ in todo]
        logits = self._train_strong(
            data, loss, hparams, targets, [s for _, s in todo], f"students {loss} ({len(todo)} runs)",
            run_dirs=[os.path.join(self.workdir, "ckpt", key[:12], f"{loss}_noise{rate}_seed{seed}")
                      for rate, seed in todo],
            stores=[noisy[rate] for rate, _ in todo],
        )
        for (rate, seed), l in zip(todo, logits):
          ev = evaluate(l, data["test"].labels)
          done.append({
              "loss": loss,
              "noise": rate,
              "seed": seed,
              "test_accuracy": ev["test_accuracy"],
              "test_auroc": ev["test_auroc"],
              "pgr": float(metrics_lib.pgr(ev["test_accuracy"], weak["test_accuracy"], ceiling["test_accuracy"])),
              "test_correct": ev["test_correct"].tolist(),
          })
        # Written after each loss group: an interrupted sweep keeps every finished group.
        _write_json(path, {"hash": key, "runs": done})
      all_runs.extend(done)
    order = {(l, float(n), s): i for i, (l, n, s) in enumerate(
        (l, float(n), s) for l in cfg.losses for n in cfg.noise.rates for s in seeds)}
    all_runs.sort(key=lambda r: order.get((r["loss"], r["noise"], r["seed"]), 0))
    for r in all_runs:
      r["test_correct"] = np.asarray(r["test_correct"], np.int8)
    return all_runs

  # -- stage 4: results.json, tables and plots.
  def report_stage(self, weak: dict[str, Any], ceiling: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    weak_public = {k: v for k, v in weak.items() if not k.startswith("_")}
    summary = metrics_lib.summarize_runs(runs, weak_public, ceiling)
    results = {
        "experiment": self.config.name,
        "task": self.task.name,
        "weak": weak_public,
        "ceiling": ceiling,
        "runs": runs,
        "summary": summary,
    }
    paths = {}
    if jax.process_index() == 0:  # One process writes the shared workdir.
      paths = report_lib.write_report(_strip(results), self.workdir, title=self.config.name)
    table = report_lib.markdown_table(summary)
    print(table, flush=True)
    results["report_files"] = {k: str(v) for k, v in paths.items()}
    return results


def _strip(obj: Any, keep_correct: bool = False) -> Any:
  """JSON-ready copy: drops private keys and (unless asked) per-example arrays."""
  if isinstance(obj, dict):
    return {
        k: _strip(v, keep_correct)
        for k, v in obj.items()
        if not k.startswith("_") and (keep_correct or k != "test_correct")
    }
  if isinstance(obj, list):
    return [_strip(v, keep_correct) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  return obj
