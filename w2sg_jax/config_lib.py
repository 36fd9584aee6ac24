"""Building blocks shared by the experiment configs in ``experiments/``."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import traceback
from collections.abc import Mapping
from typing import Any

import ml_collections


def _block(cls: type, **given: Any) -> dict[str, Any]:
  """A schema block's fields as plain data: ``given`` where set, else the schema's default (`w2sg_jax.config`).

  The builders below write every field of their block, so each key can be
  overridden from the command line, and take each default from the schema,
  its one home. Nothing is checked here: the schema checks the whole config
  at the boundary, with every key's full dotted name in its message.
  """
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  return schema.with_defaults(cls, given)


def _set(**kwargs: Any) -> dict[str, Any]:
  """The arguments a caller gave (None: the schema's default)."""
  return {k: v for k, v in kwargs.items() if v is not None}


def train_config(
    *,
    batch_size: int,
    epochs: float,
    learning_rate: float,
    optimizer: str | None = None,
    eval_batch_size: int | None = None,
    save_every: int | None = None,
    log_every: int | None = None,
    grad_clip: float | None = None,
    weight_decay: float | None = None,
    sharding: str | None = None,
) -> ml_collections.ConfigDict:
  """One model's training settings (`config.TrainConfig`); an argument left out takes the schema's default.

  Every field is written, so each can be overridden from the command line.
  """
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  opt = _block(schema.OptimizerConfig, learning_rate=learning_rate,
               **_set(name=optimizer, grad_clip=grad_clip, weight_decay=weight_decay))
  # epochs as a float, so that --config.*.epochs=1.5 parses.
  return ml_collections.ConfigDict(_block(
      schema.TrainConfig, batch_size=batch_size, epochs=float(epochs), optimizer=opt,
      **_set(eval_batch_size=eval_batch_size, save_every=save_every, log_every=log_every, sharding=sharding)))


def noise_config(rates: tuple[float, ...], *, scale: float | None = None, seed: int | None = None,
                 per_seed: bool | None = None) -> ml_collections.ConfigDict:
  """Label noise on the weak labels of w2s_train (`config.NoiseConfig`, ``labels/noise.py``)."""
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(_block(schema.NoiseConfig, rates=tuple(rates),
                                          **_set(scale=scale, seed=seed, per_seed=per_seed)))


def ceiling_config(split: str | None = None, grid: Mapping[str, tuple[float, ...]] | None = None
                   ) -> ml_collections.ConfigDict:
  """The strong ceiling of PGR (`config.CeilingConfig`): the strong model trained on ground truth."""
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  block = _block(schema.CeilingConfig, **_set(split=split))
  block["grid"] = ml_collections.ConfigDict(dict(grid or {}))  # Empty, yet typed as a block for overrides.
  return ml_collections.ConfigDict(block)


def add_tuning_grids(c: ml_collections.ConfigDict) -> None:
  """Gives ``c`` an empty ``weak.grid`` and ``ceiling.grid`` where it has none, so that every shipped config
  takes ``--config.weak.grid=...`` and ``--config.ceiling.grid=...`` (config.WeakConfig/CeilingConfig)."""
  if "grid" not in c.weak:
    c.weak.grid = ml_collections.ConfigDict({})
  if "ceiling" not in c:
    c.ceiling = ceiling_config()
  elif "grid" not in c.ceiling:
    c.ceiling.grid = ml_collections.ConfigDict({})


def student_config(
    *,
    engine: str,
    losses: tuple[str, ...],
    train: ml_collections.ConfigDict,
    noise: ml_collections.ConfigDict,
    loss_hparams: Mapping[str, Mapping[str, Any]] | None = None,
    methods: tuple[str, ...] = ("single",),
    method: Mapping[str, Any] | None = None,
    grid: Mapping[str, tuple[float, ...]] | None = None,
) -> ml_collections.ConfigDict:
  """The students (and the strong ceiling, which shares ``train``).

  ``methods``: how the weak labels reach the students (`w2sg_jax.config.METHODS`);
  ``method``: their settings, over the schema's defaults (`w2sg_jax.config.MethodsConfig`).
  """
  return ml_collections.ConfigDict({
      # 'vmap': the seeds x noise rates of a loss as one vectorised program (heads on features);
      # 'data_parallel': one run at a time over every device, streamed and checkpointed (any model).
      "engine": engine,
      "losses": tuple(losses),  # Names from w2sg_jax.losses.names(), e.g. 'js' or 'js+conf'.
      # Keyword arguments per loss name, e.g. {"alpha": {"alpha": 0.5}, "js": {"confidence": 0.5}}.
      "loss_hparams": ml_collections.ConfigDict(dict(loss_hparams or {})),
      "noise": noise,
      "train": train,
      "methods": tuple(methods),
      "method": methods_config(**dict(method or {})),
      # Settings to tune, e.g. {"learning_rate": (1e-3, 3e-3, 1e-2)} (w2sg_jax/grid.py); {} = none.
      "grid": ml_collections.ConfigDict(dict(grid or {})),
  })


# The methods a paper config's ``methods`` variant compares with `single` (they need no cached features).
PAPER_METHODS = ("single", "ensemble", "disagreement_filter", "s2s")


def methods_config(**overrides: Any) -> ml_collections.ConfigDict:
  """``student.method``: the methods' settings, the schema's defaults (`w2sg_jax.config.MethodsConfig`) with ``overrides``."""
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(schema.to_dict(schema.MethodsConfig(**overrides)))


def pretrained_model(
    checkpoint: str,
    *,
    dtype: str | None = None,
    finetune: str | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
) -> ml_collections.ConfigDict:
  """A pretrained Hugging Face model (GPT-2, Llama, Qwen2, GPT-NeoX, BERT) with a task head
  (`config.PretrainedConfig`); an argument left out takes the schema's default."""
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  lora = _block(schema.LoraConfig, **_set(rank=lora_rank, alpha=lora_alpha))
  return ml_collections.ConfigDict(_block(schema.PretrainedConfig, checkpoint=checkpoint, lora=lora,
                                          **_set(dtype=dtype, finetune=finetune)))


def report_config(*, min_gap: float | None = None) -> ml_collections.ConfigDict:
  """What the report needs beyond the runs (`config.ReportConfig`)."""
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(_block(schema.ReportConfig, **_set(min_gap=min_gap)))


def head_model(head_hidden: tuple[int, ...] = ()) -> ml_collections.ConfigDict:
  """A model that is a head on features: only the head's widths."""
  return ml_collections.ConfigDict({"head_hidden": tuple(head_hidden)})  # () = a linear probe.


class ExperimentFileError(ValueError):
  """``--config`` names a file that gives no config: not Python, broken, or a failing ``get_config``."""


def _line_in(exc: BaseException, path: str) -> str:
  """`` (line N: CODE)`` of the last frame of ``exc`` inside ``path``; '' when none is."""
  target = os.path.abspath(path)
  frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == target]
  if not frames:
    return ""
  frame = frames[-1]
  return f" (line {frame.lineno}" + (f": `{_clip(frame.line)}`" if frame.line else "") + ")"


def _clip(code: str, width: int = 80) -> str:
  code = code.strip()
  return code if len(code) <= width else code[:width - 3] + "..."


def _load_experiment_module(path: str):
  if not path.endswith(".py"):
    raise ExperimentFileError(
        f"{path} is not an experiment file: an experiment is a Python file, experiments/NAME.py, whose "
        "get_config(variant) returns its ConfigDict. Pass --config=experiments/NAME.py[:variant].")
  name = f"w2sg_experiment_{hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]}"
  loader = importlib.machinery.SourceFileLoader(name, path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
  try:
    loader.exec_module(module)
  except SyntaxError as exc:  # IndentationError too, and a file cut off mid-statement.
    code = f" (`{_clip(exc.text)}`)" if exc.text and exc.text.strip() else ""
    raise ExperimentFileError(
        f"{path} is not valid Python: {exc.msg} at line {exc.lineno}{code}. Fix that line of the experiment "
        "file (compare with experiments/synthetic.py); nothing was run.") from exc
  except OSError:
    raise  # An unreadable file: the boundary names it and the permission.
  except Exception as exc:  # pylint: disable=broad-except (the user's file: any error is theirs to fix)
    raise ExperimentFileError(
        f"{path} failed while loading: {type(exc).__name__}: {exc}{_line_in(exc, path)}. Fix the experiment "
        "file; nothing was run.") from exc
  return module


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """``experiments/NAME.py[:variant]`` -> its ``get_config(variant)``, with dotted overrides.

  The Python twin of ``--config=experiments/NAME.py:variant --config.KEY=VALUE``
  for notebooks and tests (values as Python values, not text); any key of the
  schema can be set (with overrides, the returned config has every key, as
  `config.filled`); an unknown key raises a KeyError that names it.

  Raises:
    FileNotFoundError: no file at the path.
    ExperimentFileError: the file is not a Python file, does not load (the
      line of a syntax error, the exception of a failing import), has no
      ``get_config``, or its ``get_config`` raises or returns no ConfigDict.
  """
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no experiment config at {path!r}; experiments live in experiments/NAME.py.")
  module = _load_experiment_module(path)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ExperimentFileError(
        f"{path} defines no get_config function: an experiment file's get_config(variant) returns its "
        "ml_collections.ConfigDict (see experiments/synthetic.py).")
  call = f"get_config({variant!r})" if variant else "get_config()"
  try:
    config = get_config(variant or None)
  except Exception as exc:  # pylint: disable=broad-except (the user's file: any error is theirs to fix)
    raise ExperimentFileError(
        f"{path}: {call} raised {type(exc).__name__}: {exc}{_line_in(exc, path)}. Fix the experiment file "
        "or the variant after the colon; nothing was run.") from exc
  if not isinstance(config, ml_collections.ConfigDict):
    raise ExperimentFileError(
        f"{path}: {call} returned {type(config).__name__}, not an ml_collections.ConfigDict. End get_config with "
        "`return config` of a ConfigDict (see experiments/synthetic.py).")
  if not overrides:
    return config
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  # Any key of the schema can be set, also one the file leaves at its default (`config.filled` writes them);
  # an unknown key gets a "did you mean". Values are Python values here, checked when the config is resolved.
  config = schema.filled(config)
  with config.unlocked():
    for dotted, value in overrides.items():
      if not schema.settable(config, dotted):
        raise schema.UnknownKeyError(dotted, config, where=spec)
      *parents, leaf = dotted.split(".")
      node = config
      for key in parents:
        node = node[key]
      if leaf in node:
        del node[leaf]  # The value given decides the type (an int where the file wrote a float is fine).
      node[leaf] = value
  return config
