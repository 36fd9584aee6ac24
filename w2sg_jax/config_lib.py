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


def train_config(
    *,
    batch_size: int,
    epochs: float,
    learning_rate: float,
    optimizer: str = "adamw",
    eval_batch_size: int = 512,
    save_every: int = 500,
    log_every: int = 50,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
    sharding: str = "auto",
) -> ml_collections.ConfigDict:
  """One model's training settings; every field can be overridden from the command line."""
  return ml_collections.ConfigDict({
      "batch_size": batch_size,  # Global batch (examples or pairs), split over every device.
      # Passes over the split (a float, so --config.*.epochs=1.5 parses); or set num_steps > 0 to fix the step count.
      "epochs": float(epochs),
      "num_steps": 0,
      "eval_batch_size": eval_batch_size,  # Examples per prediction batch.
      "save_every": save_every,  # Steps between checkpoints (every run also saves at its end).
      "log_every": log_every,  # Steps between logged metrics (metrics.jsonl).
      # Training state over the devices: 'replicated', 'fsdp' (sharded over `data`),
      # or 'auto' (fsdp when a replica would not fit one device's memory).
      "sharding": sharding,
      # Model selection (w2sg_jax/selection.py): 'last' returns the final step's model;
      # 'auroc' or 'accuracy' the best evaluated step's on the last `holdout` rows of the
      # training split, labelled by the run's own labels (weak labels for a student).
      "select": {
          "metric": "last",
          "holdout": 0,  # Rows held out of the training split (the run trains on the rest).
          "every": 0,  # Steps between evaluations; 0 = each epoch. The final step is always evaluated.
      },
      "optimizer": {
          "name": optimizer,  # 'adamw', 'adam' or 'sgd'.
          "learning_rate": learning_rate,  # Peak learning rate.
          "schedule": "cosine",  # 'cosine' or 'linear' decay to 0, or 'constant'.
          "warmup_steps": 0,  # Linear warm-up from 0, in optimizer updates.
          "weight_decay": weight_decay,  # Decoupled (AdamW) weight decay.
          "grad_clip": grad_clip,  # Global-norm clip; 0 = off.
          "accum_steps": 1,  # Gradient accumulation: micro-batches per update.
      },
  })


def noise_config(rates: tuple[float, ...], *, scale: float = -1.0, seed: int = 0,
                 per_seed: bool = False) -> ml_collections.ConfigDict:
  """Label noise on the weak labels of w2s_train (see ``labels/noise.py``)."""
  return ml_collections.ConfigDict({
      "rates": tuple(rates),  # Fraction of weak labels corrupted, one student group per rate.
      "scale": scale,  # q -> 1/C + scale (q - 1/C): -1 flips (binary), 0 makes the label uniform.
      "seed": seed,  # Picks the corrupted examples; the same for every student (unless per_seed).
      # True: each student's corrupted subset is drawn with its own seed (as in the Yao et al. code).
      "per_seed": per_seed,
  })


def ceiling_config(split: str = "w2s_train", grid: Mapping[str, tuple[float, ...]] | None = None
                   ) -> ml_collections.ConfigDict:
  """The strong ceiling of PGR: the strong model trained on ground truth."""
  # 'w2s_train' (the students' examples) or 'weak_train' (the weak model's, as Burns et al. and Yao et al.).
  # grid: optimizer settings to tune it over, picked on student.train.select's holdout ({} = none).
  return ml_collections.ConfigDict({"split": split, "grid": ml_collections.ConfigDict(dict(grid or {}))})


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
    dtype: str = "bfloat16",
    finetune: str = "full",
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
) -> ml_collections.ConfigDict:
  """A pretrained Hugging Face model (GPT-2, Llama, Qwen2, GPT-NeoX, BERT) with a task head."""
  return ml_collections.ConfigDict({
      "checkpoint": checkpoint,  # Hub id or local folder (config.json, *.safetensors, tokenizer.json).
      # Hub ids only: the branch, tag or commit to fetch; '' = the default branch, resolved to its
      # commit at first use (that commit enters the keys and results.json's data.checkpoints).
      "checkpoint_revision": "",
      "num_layers": 0,  # Keep only the first k transformer layers; 0 = all.
      "dtype": dtype,  # Compute dtype: 'bfloat16' or 'float32' (trained parameters and the loss stay float32).
      # 'full', 'top' (top_layers + head), 'head' (a probe on a frozen encoder),
      # or 'lora' (adapters on the frozen encoder's projections + head).
      "finetune": finetune,
      "top_layers": 0,  # With finetune='top': how many of the top layers train.
      "lora": {
          "rank": lora_rank,  # With finetune='lora': inner width r of each adapter.
          "alpha": lora_alpha,  # Adapter output scaled by alpha / r.
          "dropout": 0.0,  # Dropout on the adapter input while training.
          "target_modules": (),  # () = the attention and MLP projections of the model's family.
      },
      "pooling": "",  # '' = the last real token (decoders) / mean (BERT); or 'last', 'mean'.
      "head_hidden": (),  # Hidden widths of the head; () = a linear head (zero-initialised).
      # Rematerialisation of each transformer block in the backward pass: 'none', 'block'
      # (recompute attention and elementwise ops) or 'full' (keep only block inputs); see models/remat.py.
      "remat": "none",
  })


def report_config(*, min_gap: float = 0.005) -> ml_collections.ConfigDict:
  """What the report needs beyond the runs."""
  return ml_collections.ConfigDict({
      # PGR is undefined (null, "n/a", never ranked) unless the ceiling beats the weak
      # model by at least this much test accuracy (0.005 = half a point).
      "min_gap": min_gap,
  })


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
  for notebooks and tests; an unknown key raises a KeyError that names it.

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
  from w2sg_jax import validate  # Unknown keys get a "did you mean".

  with config.unlocked():
    for dotted, value in (overrides or {}).items():
      *parents, leaf = dotted.split(".")
      if not validate.has_key(config, dotted):
        raise validate.UnknownKeyError(dotted, config, where=spec)
      node = config
      for key in parents:
        node = node[key]
      node[leaf] = value
  return config
