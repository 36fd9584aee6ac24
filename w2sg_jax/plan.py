r"""The memory plan of an experiment, compiled ahead of time on simulated devices.

  python -m w2sg_jax.plan --config=experiments/paper_hh.py:xl --devices=8 --device-memory=16
  python -m w2sg_jax.plan --config=experiments/paper_hh.py:xl --devices=8 --device-memory=16 \
      --config.student.train.sharding=replicated          # exits 1: does not fit
  python -m w2sg_jax.plan --config=experiments/paper_hh.py:large --devices=1 --device-memory=80 \
      --config.strong.remat=full --json=plan.json

For each model the config trains (the weak model and the strong one), the
plan builds the real-size model from abstract shapes only (``nnx.eval_shape``:
no weights are read, nothing is downloaded; a checkpoint name such as
``gpt2-xl`` resolves to the ``config.json`` shipped in
``w2sg_jax/models/configs``, a local folder to its own). On ``--devices``
simulated CPU devices it lowers and compiles the exact training step (the
config's loss, optimizer with gradient accumulation, compute dtype,
rematerialisation and state sharding: ``train.Trainer``'s own ``lower_step``,
traced under the mesh as training is) and the evaluation step, and prints
per device:

* parameters, optimizer state and batch bytes (the step's arguments, from
  the shardings), and activations and other temporaries (XLA's
  ``temp_size_in_bytes``);
* the peak: arguments + outputs - donated (aliased) buffers + temporaries,
  from ``compiled.memory_analysis()``;
* FLOPs per step from ``compiled.cost_analysis()``: the per-device program,
  rematerialised recomputation included.

Then, for a few named chips (:data:`CHIPS`), the time per step and per whole
config (every strong run of the config, with its evaluations, and the weak
model), as compiled FLOPs / (peak dense bf16 FLOP/s x ``--mfu``).

Exit status: 0 when every peak fits ``--device-memory`` GiB, 1 when one does
not, 2 on an error (an unknown config key, a config that cannot be built).

What the numbers are. They are XLA's buffer assignment for the same
partitioned program compiled for the CPU (with its memory-minimising
scheduler, and with rematerialisation kept as written). TPU and GPU
compilers fuse and schedule differently, so read the peak as an estimate
within some tens of percent; the parameter and optimizer-state bytes are
exact. Times ignore communication and input feeding; MFU folds them in.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from w2sg_jax import cost as cost_lib

GIB = 2**30
DEFAULT_MFU = 0.35
CONFIGS_DIR = Path(__file__).resolve().parent / "models" / "configs"

# XLA flags for the simulated devices. The memory-optimised CPU scheduler
# orders the program for low peak memory, as accelerator schedulers do under
# memory pressure; keeping the CSE barriers keeps rematerialisation as written
# (the CPU pipeline would otherwise merge the recomputation with the forward).
PLAN_XLA_FLAGS = (
    "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "--xla_disable_hlo_passes=cse_barrier_expander,cpu-all-reduce-combiner",
)


@dataclasses.dataclass(frozen=True)
class Chip:
  """A named accelerator: memory per chip and peak dense bf16 FLOP/s."""

  name: str
  memory_gib: float
  peak_flops: float
  source: str


# Peak dense (not sparse) bf16 matrix throughput and memory per chip, from the
# vendors' published specifications.
CHIPS = {
    "v5e": Chip("TPU v5e", 16, 197e12, "Google Cloud TPU v5e docs: 197 TFLOP/s bf16, 16 GiB HBM2e per chip"),
    "v4": Chip("TPU v4", 32, 275e12, "Google Cloud TPU v4 docs: 275 TFLOP/s bf16, 32 GiB HBM2 per chip"),
    "a100-40gb": Chip("A100 40GB", 40, 312e12, "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16"),
    "a100-80gb": Chip("A100 80GB", 80, 312e12, "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16"),
    "h100": Chip("H100 SXM 80GB", 80, 989e12, "NVIDIA H100 datasheet: 989 TFLOP/s dense bf16 (1979 with sparsity)"),
}


class PlanError(Exception):
  """A config the plan cannot build; the message says why (exit status 2)."""


# ------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
  """Splits ``--config.KEY=VALUE`` overrides (kept as strings) from the plan's own flags."""
  parser = argparse.ArgumentParser(
      prog="python -m w2sg_jax.plan",
      description="Compile an experiment's training and evaluation steps on simulated devices and "
      "report memory per device, FLOPs and estimated times. Exit 0: fits; 1: does not fit; 2: error.",
  )
  parser.add_argument("--config", required=True, help="experiments/NAME.py[:variant]")
  parser.add_argument("--devices", type=int, default=8, help="simulated devices (the data mesh size)")
  parser.add_argument("--device-memory", type=float, default=16.0, help="memory per device in GiB")
  parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOP utilisation assumed for the times")
  parser.add_argument("--roles", default="weak,strong", help="which models to plan: weak, strong or both")
  parser.add_argument("--json", default="", help="also write the plan as JSON to this path")
  args, rest = parser.parse_known_args(argv)
  overrides: dict[str, str] = {}
  i = 0
  while i < len(rest):
    arg = rest[i]
    if not arg.startswith("--config."):
      parser.error(f"unrecognized argument {arg!r}; config keys are set with --config.KEY=VALUE")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(rest):
        parser.error(f"{arg} needs a value: {arg}=VALUE")
      i += 1
      value = rest[i]
    overrides[key] = value
    i += 1
  if args.devices < 1:
    parser.error("--devices must be at least 1")
  if args.device_memory <= 0:
    parser.error("--device-memory must be positive (GiB)")
  if not 0 < args.mfu <= 1:
    parser.error("--mfu must be in (0, 1]")
  roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
  if not roles or set(roles) - {"weak", "strong"}:
    parser.error(f"--roles={args.roles!r}; use weak, strong or weak,strong")
  args.roles = roles
  return args, overrides


def setup_devices(num_devices: int) -> None:
  """``num_devices`` simulated CPU devices, set up before JAX is imported.

  In a process that has already imported JAX (a test), the devices it has
  must be enough; the plan then uses the first ``num_devices``.
  """
  if "jax" in sys.modules:
    import jax  # pylint: disable=g-import-not-at-top

    if len(jax.devices()) < num_devices:
      raise PlanError(
          f"JAX is already initialised with {len(jax.devices())} devices, fewer than --devices={num_devices}; "
          "run the plan in a fresh process (python -m w2sg_jax.plan ...)."
      )
    return
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  flags = [f for f in flags if not any(f.split("=")[0] == p.split("=")[0] for p in PLAN_XLA_FLAGS)]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}", *PLAN_XLA_FLAGS])
  os.environ["JAX_PLATFORMS"] = "cpu"


def load_config(spec: str, overrides: dict[str, str]):
  """The experiment's typed config (`config.Experiment`, every default filled), with the overrides applied.

  The overrides take main's road, `config.apply_overrides`: each
  ``--config.KEY=VALUE`` is parsed with the key's schema type, a key the file
  leaves at its default can be set as well, and the result is checked once.
  """
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top
  from w2sg_jax import config_lib  # pylint: disable=g-import-not-at-top

  try:
    raw = config_lib.load_config(spec)
  except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise PlanError(f"cannot load {spec}: {e}") from e
  try:
    return schema.apply_overrides(raw, overrides.items(), where=spec)
  except ValueError as e:
    raise PlanError(str(e)) from e


# ------------------------------------------------------------------- models


def shipped_configs() -> list[str]:
  """Checkpoint names whose ``config.json`` ships with the package."""
  return sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))


def hf_config(checkpoint: str) -> dict[str, Any]:
  """The ``config.json`` of a checkpoint: a shipped name, a local folder, a ``random:`` spec, or the packaged MiniLM ('')."""
  name = str(checkpoint)
  if not name:
    from w2sg_jax.models import pretrained  # pylint: disable=g-import-not-at-top

    try:
      folder = pretrained.default_minilm_path()
    except ModuleNotFoundError as e:
      raise PlanError(str(e)) from e
    return json.loads((folder / "config.json").read_text())
  if name.startswith("random:"):  # A tiny random checkpoint: its config without writing weights.
    from w2sg_jax.models import random_checkpoint  # pylint: disable=g-import-not-at-top

    try:
      return random_checkpoint.parse_spec(name).hf_config()
    except ValueError as e:
      raise PlanError(str(e)) from e
  folder = Path(name).expanduser()
  if (folder / "config.json").is_file():
    return json.loads((folder / "config.json").read_text())
  short = name.split("/")[-1]  # "openai-community/gpt2-xl" -> "gpt2-xl"
  shipped = CONFIGS_DIR / f"{short}.json"
  if shipped.is_file():
    return json.loads(shipped.read_text())
  raise PlanError(
      f"checkpoint {name!r} is neither a local folder with config.json nor one of the configs shipped for"
      f" planning ({', '.join(shipped_configs())}); pass a folder that holds its config.json."
  )


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _role_cfg(config, role: str):
  return config.weak if role == "weak" else config.strong


def _get(cfg, *names, default=None):
  """The first of ``names`` the role's block has (each task's model block has its own fields)."""
  for n in names:
    if hasattr(cfg, n):
      return getattr(cfg, n)
  return default


def _train_cfg(config, role: str):
  return config.weak.train if role == "weak" else config.student.train


@dataclasses.dataclass
class ModelSpec:
  """What the plan compiles for one role."""

  role: str
  description: str
  make_model: Any  # rngs -> nnx.Module
  trainable: Any  # nnx filter
  train_inputs: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape without batch, dtype)
  num_classes: int


def model_spec(config, role: str) -> ModelSpec:
  """The model of ``role`` in ``config`` at its real size, built from its config.json only."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from w2sg_jax.models import heads, pretrained  # pylint: disable=g-import-not-at-top
  from w2sg_jax.models import remat as remat_lib  # pylint: disable=g-import-not-at-top

  cfg = _role_cfg(config, role)
  task = config.task
  dtype_name = str(_get(cfg, "dtype", default="float32"))
  if dtype_name not in _DTYPES:
    raise PlanError(f"{role}.dtype={dtype_name!r}; use one of {', '.join(_DTYPES)}.")
  dtype = getattr(jnp, dtype_name)
  remat = str(_get(cfg, "remat", default="none"))
  try:
    remat_lib.check_remat(remat)
  except ValueError as e:
    raise PlanError(f"{role}.remat: {e}") from e
  num_layers = int(_get(cfg, "num_layers", "layers", default=0) or 0) or None
  hidden = tuple(int(h) for h in _get(cfg, "head_hidden", "hidden", default=()))
  finetune = str(_get(cfg, "finetune", "mode", default="full"))

  def encoder_factory(hf: dict[str, Any]):
    """The encoder as ``load_pretrained`` builds it (same kwargs), without its weights."""
    kind = hf.get("model_type")
    arch = pretrained.SUPPORTED.get(kind)
    if arch is None:
      raise PlanError(f"{role} checkpoint has model_type={kind!r}; supported: {', '.join(sorted(pretrained.SUPPORTED))}.")
    arch_cfg = arch.config_from_hf(hf)
    kwargs: dict[str, Any] = {"num_layers": num_layers, "dtype": dtype}
    if getattr(arch, "param_dtype", False):
      kwargs["param_dtype"] = dtype

    def make(rngs):
      module = arch.module(arch_cfg, **kwargs, rngs=rngs)
      if remat != "none" and not remat_lib.set_remat(module, remat):
        raise PlanError(f"{role}.remat={remat!r}: {type(module).__name__} has no remat option.")
      return module

    return make

  trainable = _task_trainable(config, role)
  if task in ("preference", "text_classification", "files"):  # The tasks of tasks/pretrained_roles.py.
    from w2sg_jax.tasks import pretrained_roles  # pylint: disable=g-import-not-at-top

    hf = hf_config(str(cfg.checkpoint))
    max_len = int(config.data.max_length)
    limit = pretrained_roles.max_positions(hf)
    if limit is not None and max_len > int(limit):
      raise PlanError(f"data.max_length={max_len} exceeds the {role} checkpoint's {limit} positions.")
    pooling = _get(cfg, "pooling", default="") or None
    make_encoder = encoder_factory(hf)
    lora = pretrained_roles.lora_spec(cfg)
    tokens = ((max_len,), "int32")
    pairs = task == "preference" or (task == "files" and str(config.data.kind) == "preference")
    if pairs:
      from w2sg_jax.tasks import preference  # pylint: disable=g-import-not-at-top

      num_classes, kind, inputs = 2, "reward model", {"a_ids": tokens, "a_mask": tokens, "b_ids": tokens,
                                                      "b_mask": tokens}
      head_model = functools.partial(preference.PairRewardModel, pooling=pooling, hidden_sizes=hidden)
    else:
      from w2sg_jax.tasks import text_classification  # pylint: disable=g-import-not-at-top

      if task == "files":  # Classes from label_names or num_classes; else the data decides (2 assumed: the
        # head is a negligible share of the memory and FLOPs).
        count = len(tuple(config.data.label_names)) or int(config.data.num_classes) or 2
      else:
        count = text_classification.num_classes(config)
      num_classes, kind, inputs = count, "classifier", {"input_ids": tokens, "attention_mask": tokens}
      head_model = functools.partial(text_classification.TextClassifier, num_classes=num_classes, pooling=pooling,
                                     hidden_sizes=hidden)

    def make(rngs):
      model = head_model(make_encoder(rngs), rngs=rngs)
      if lora is not None:
        from w2sg_jax.models import lora as lora_lib  # pylint: disable=g-import-not-at-top

        lora_lib.apply_lora(model, lora, rngs=rngs)
      return model

    name = f"{Path(str(cfg.checkpoint)).name} {kind} ({finetune}), {max_len} tokens"
    return ModelSpec(role, name, make, trainable, inputs, num_classes)

  if task == "tweets":
    hf = hf_config(str(_get(cfg, "checkpoint", default="") or ""))
    num_classes = config.num_classes_hint()
    max_len = int(config.data.max_length)
    if role == "strong" and finetune in ("top", "full"):
      make_encoder = encoder_factory(hf)

      class Finetune(nnx.Module):  # The tweets task's fine-tuning model: the classifier under `classifier`.
        def __init__(self, rngs):
          self.classifier = heads.SequenceClassifier(make_encoder(rngs), num_classes, pooling="mean",
                                                     hidden_sizes=hidden, rngs=rngs)

        def __call__(self, input_ids, attention_mask):
          return self.classifier(input_ids, attention_mask)

      tokens = ((max_len,), "int32")
      return ModelSpec(role, f"MiniLM classifier ({finetune}), {max_len} tokens", Finetune, trainable,
                       {"input_ids": tokens, "attention_mask": tokens}, num_classes)
    width = int(hf["hidden_size"])

    def make(rngs):
      return heads.FeatureHead(width, hidden, num_classes, rngs=rngs)

    return ModelSpec(role, "head on cached encoder features", make, nnx.Param,
                     {"features": ((width,), "float32")}, num_classes)

  raise PlanError(f"the plan builds the models of the 'preference', 'text_classification', 'files' and 'tweets' tasks; this"
                  f" config's task is {task!r}.")


def _task_trainable(config, role: str):
  """The task's own filter of trained parameters (it reads the config only, no files)."""
  from w2sg_jax import tasks  # pylint: disable=g-import-not-at-top

  try:
    return tasks.get(str(config.task)).trainable(role, config)
  except (ValueError, KeyError, AttributeError) as e:
    raise PlanError(f"{role}: {e}") from e


# --------------------------------------------------------------------- plan


def _train_key(role: str) -> str:
  return "weak.train" if role == "weak" else "student.train"


def _sizes(config) -> dict[str, int]:
  from w2sg_jax.data import task as task_lib  # pylint: disable=g-import-not-at-top

  return task_lib.split_sizes(config.data.sizes)


@dataclasses.dataclass
class Steps:
  """One role's ``train.Trainer`` (its jitted training and evaluation steps) plus their inputs' shapes."""

  spec: ModelSpec
  init: Any  # () -> TrainState (real, random weights); jit it with out_shardings=shardings.
  abstract_state: Any
  shardings: Any
  sharding: str  # As configured.
  sharding_resolved: str
  trainer: Any  # train.Trainer; lower_step / lower_predict trace under the mesh, as training does.
  train_batch: Any  # ShapeDtypeStruct tree of one global training batch.
  eval_inputs: Any  # ShapeDtypeStruct tree of one global evaluation batch's inputs.
  loss: str
  num_steps: int
  batch_size: int
  eval_batch_size: int
  accum_steps: int


def build_steps(config, role: str, mesh, device_memory_bytes: int | None) -> Steps:
  """The ``train.Trainer`` of ``role`` (its training and evaluation steps) over ``mesh``, and their inputs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from w2sg_jax import losses as losses_lib  # pylint: disable=g-import-not-at-top
  from w2sg_jax import parallel  # pylint: disable=g-import-not-at-top
  from w2sg_jax import train as train_lib  # pylint: disable=g-import-not-at-top

  spec = model_spec(config, role)
  train_cfg = _train_cfg(config, role)
  sizes = _sizes(config)
  train_examples = sizes.get("weak_train" if role == "weak" else "w2s_train", 0)
  if role == "weak" and getattr(config.weak, "train_subset", 0):  # Only the tweets weak block has it.
    train_examples = min(train_examples, int(config.weak.train_subset))
  num_steps = train_cfg.steps_for(train_examples)
  ndev = mesh.devices.size
  batch_size = int(train_cfg.batch_size)
  from w2sg_jax import config as schema  # pylint: disable=g-import-not-at-top

  why = schema.batch_divides_problem(batch_size, ndev)
  if why:
    raise PlanError(f"{_train_key(role)}.batch_size={batch_size}: does not divide over {ndev} devices; {why}.")
  try:
    tx, schedule = train_lib.make_optimizer(train_cfg.optimizer, num_steps)
  except ValueError as e:
    raise PlanError(f"{role} optimizer: {e}") from e
  loss_name = _loss_name(config, role)
  loss_fn = _loss(losses_lib, config, loss_name)

  seed = int(config.seed)

  def init():
    model = spec.make_model(nnx.Rngs(params=seed))
    _, params, frozen = nnx.split(model, spec.trainable, ...)
    return train_lib.init_state(params, frozen, tx, seed)

  abstract_model = nnx.eval_shape(lambda: spec.make_model(nnx.Rngs(params=seed)))
  apply_fn, _, _ = train_lib.split_model(abstract_model, spec.trainable)
  abstract = jax.eval_shape(init)
  mode = train_cfg.sharding
  try:
    resolved = parallel.resolve_sharding(mode, abstract, mesh, device_memory_bytes)
  except ValueError as e:
    raise PlanError(f"{role}: {e}") from e
  shardings = parallel.state_shardings(abstract, mesh, resolved)

  def batch(rows: int, with_targets: bool):
    inputs = {k: jax.ShapeDtypeStruct((rows, *shape), jnp.dtype(dt)) for k, (shape, dt) in spec.train_inputs.items()}
    if not with_targets:
      return inputs
    return {
        "inputs": inputs,
        "targets": jax.ShapeDtypeStruct((rows, spec.num_classes), jnp.float32),
        "mask": jax.ShapeDtypeStruct((rows,), jnp.float32),
    }

  # The trainer's own steps, with the accelerator's step: no CPU batch chains (train_step picks 1 on
  # GPU/TPU; the plan runs on CPU).
  trainer = train_lib.Trainer(apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, schedule=schedule, num_steps=num_steps,
                              mesh=mesh, state_sharding=shardings, num_chains=1)
  eval_rows = int(train_cfg.eval_batch_size)
  eval_rows = max(ndev, eval_rows - eval_rows % ndev)  # As Trainer.predict rounds it.
  return Steps(spec=spec, init=init, abstract_state=abstract, shardings=shardings, sharding=mode,
               sharding_resolved=resolved, trainer=trainer,
               train_batch=batch(batch_size, True), eval_inputs=batch(eval_rows, False), loss=loss_name,
               num_steps=num_steps, batch_size=batch_size, eval_batch_size=eval_rows,
               accum_steps=int(train_cfg.optimizer.accum_steps))


# The shared readers of a compiled program (``w2sg_jax.cost``); named here too, for ``plan.memory_of``'s users.
memory_of = cost_lib.memory_of
flops_of = cost_lib.flops_of


def plan_role(config, role: str, mesh, device_memory_bytes: int) -> dict[str, Any]:
  """Compiles one role's training and evaluation steps; returns the numbers per device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  st = build_steps(config, role, mesh, device_memory_bytes)
  abstract, shardings, spec = st.abstract_state, st.shardings, st.spec
  # The trainer's own lowering, traced under the mesh: activations pinned to the data axis.
  train_compiled = st.trainer.lower_step(abstract, st.train_batch).compile()
  eval_compiled = st.trainer.lower_predict(abstract, st.eval_inputs).compile()

  def shard_bytes(tree, sh_tree) -> int:
    total = 0
    for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(sh_tree)):
      shape = sh.shard_shape(leaf.shape)
      total += int(math.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total

  params_total = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  frozen_total = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(abstract.frozen))
  train_mem, eval_mem = memory_of(train_compiled), memory_of(eval_compiled)
  cfg = _role_cfg(config, role)
  return {
      "role": role,
      "model": spec.description,
      "trained_parameters": params_total,
      "frozen_parameters": frozen_total,
      "dtype": str(_get(cfg, "dtype", default="float32")),
      "remat": str(_get(cfg, "remat", default="none")),
      "sharding": st.sharding,
      "sharding_resolved": st.sharding_resolved,
      "loss": st.loss,
      "batch_size": st.batch_size,
      "accum_steps": st.accum_steps,
      "eval_batch_size": st.eval_batch_size,
      "num_steps": st.num_steps,
      "per_device": {
          "params": shard_bytes(abstract.params, shardings.params),
          "frozen": shard_bytes(abstract.frozen, shardings.frozen),
          "opt_state": shard_bytes(abstract.opt_state, shardings.opt_state),
          "train": train_mem,
          "eval": eval_mem,
      },
      "flops_per_step": flops_of(train_compiled),
      "flops_per_eval_step": flops_of(eval_compiled),
  }


def _loss_name(config, role: str) -> str:
  if role == "weak":
    return "xent"  # The weak model learns from one-hot ground truth.
  names = list(config.student.losses) or ["xent"]
  return str(names[0])


def _loss(losses_lib, config, name: str):
  hparams = dict(config.student.loss_hparams.get(name, {}))  # Per-loss keyword arguments (a plain dict).
  try:
    return losses_lib.get(name, **hparams)
  except ValueError:
    pass
  try:  # "+conf" names were registered by the preference task before the registry knew them.
    import importlib  # pylint: disable=g-import-not-at-top

    importlib.import_module(f"w2sg_jax.tasks.{config.task}")
    return losses_lib.get(name, **hparams)
  except (ImportError, ValueError) as e:
    raise PlanError(f"loss {name!r}: {e}") from e


def optimizer_grid_points(grid, optimizer) -> int:
  """Models a weak or ceiling ``grid`` trains per seed: its points, the config's own setting counted once."""
  from w2sg_jax import grid as grid_lib  # pylint: disable=g-import-not-at-top
  from w2sg_jax import stages as stages_lib  # pylint: disable=g-import-not-at-top

  points = grid_lib.expand(dict(grid or {})) if grid else []
  return 1 + sum(1 for p in points if not stages_lib._is_optimizer_setting(optimizer, p))  # pylint: disable=protected-access


def grid_settings(config, student) -> dict[str, int]:
  """Per loss, the settings ``student.grid`` trains it at: the grid's points that apply to it, with the
  config's own setting counted once (`stages.Stages._grid_runs`)."""
  from w2sg_jax import grid as grid_lib  # pylint: disable=g-import-not-at-top
  from w2sg_jax import stages as stages_lib  # pylint: disable=g-import-not-at-top

  optimizer = config.student.train.optimizer
  out = {}
  for loss in student.losses:
    base = dict(student.loss_hparams.get(loss, {}))
    resolved = stages_lib._resolved_hparams(loss, base)  # pylint: disable=protected-access
    points = grid_lib.points_for(student.grid, lambda hp, loss=loss, base=base: stages_lib._accepts(loss, base, hp))  # pylint: disable=protected-access
    other = [p for p in points
             if stages_lib._resolved_hparams(loss, {**base, **grid_lib.loss_part(p)}) != resolved  # pylint: disable=protected-access
             or not stages_lib._is_optimizer_setting(optimizer, grid_lib.optimizer_part(p))]  # pylint: disable=protected-access
    out[loss] = len(other) + 1
  return out


def whole_config_counts(config, plans: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
  """Training and evaluation steps of the whole config, per role."""
  sizes = _sizes(config)
  student = config.student
  methods, settings = student.methods, student.method
  out = {}
  if "weak" in plans:
    p = plans["weak"]
    labelled = sizes.get("w2s_train", 0) + sizes.get("test", 0)
    runs = int(config.seeds) if config.weak.per_seed else 1  # One weak model per seed?
    if {"ensemble", "disagreement_filter"} & set(methods):  # K - 1 more weak models per weak model.
      runs *= settings.ensemble_size
    runs += (optimizer_grid_points(config.weak.grid, config.weak.train.optimizer) - 1) * (
        int(config.seeds) if config.weak.per_seed else 1)  # weak.grid's other points.
    out["weak"] = {"runs": runs, "train_steps": runs * p["num_steps"],
                   "eval_steps": runs * math.ceil(labelled / p["eval_batch_size"])}
  if "strong" in plans:
    p = plans["strong"]
    seeds = int(config.seeds)
    cells = seeds * len(student.noise.rates)
    # Students per method (an s2s chain trains its rounds, bootstrap an intermediate model per cell, a
    # strong-sized upper bound on the head it is); plus the strong ceiling per seed.
    by_method = {m: cells * len(student.losses) * (settings.s2s_rounds + 1 if m == "s2s" else 1)
                 + (cells if m == "bootstrap" else 0) for m in methods}
    if student.grid and "single" in by_method:  # Every grid point of a loss is a student per cell.
      by_method["single"] = cells * sum(grid_settings(config, student).values())
    runs = sum(by_method.values()) + seeds * optimizer_grid_points(config.ceiling.grid, config.student.train.optimizer)
    out["strong"] = {"runs": runs, "train_steps": runs * p["num_steps"],
                     "eval_steps": runs * math.ceil(sizes.get("test", 0) / p["eval_batch_size"]),
                     **({"runs_by_method": by_method} if list(methods) != ["single"] else {})}
  return out


def make_plan(config, *, devices: int, device_memory_gib: float, roles=("weak", "strong"),
              mfu: float = DEFAULT_MFU, spec: str = "") -> dict[str, Any]:
  """The whole plan as a dict (what ``--json`` writes)."""
  import jax  # pylint: disable=g-import-not-at-top

  from w2sg_jax import parallel  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh(devices)
  limit = int(device_memory_gib * GIB)
  plans = {role: plan_role(config, role, mesh, limit) for role in roles}
  counts = whole_config_counts(config, plans)
  total_flops = 0.0
  for role, c in counts.items():
    p = plans[role]
    p["whole_config"] = dict(c)
    # Per-device FLOPs times devices: the FLOPs of the whole config on every chip together.
    role_flops = (c["train_steps"] * p["flops_per_step"] + c["eval_steps"] * p["flops_per_eval_step"]) * devices
    p["whole_config"]["flops"] = role_flops
    total_flops += role_flops
  peak = max(max(p["per_device"]["train"]["peak"], p["per_device"]["eval"]["peak"]) for p in plans.values())
  chips = {}
  for key, chip in CHIPS.items():
    rate = chip.peak_flops * mfu
    chips[key] = {
        "name": chip.name,
        "memory_gib": chip.memory_gib,
        "peak_flops": chip.peak_flops,
        "fits": peak <= chip.memory_gib * GIB,
        "step_s": {r: p["flops_per_step"] / rate for r, p in plans.items()},
        "whole_config_s": total_flops / devices / rate,
    }
  return {
      "config": spec,
      "name": config.name,
      "devices": devices,
      "device_memory_gib": device_memory_gib,
      "platform": jax.devices()[0].platform,
      "mfu": mfu,
      "roles": plans,
      "peak_bytes": peak,
      "fits": peak <= limit,
      "whole_config_flops": total_flops,
      "chips": chips,
  }


# ------------------------------------------------------------------- report


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
  return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n:,}"


def _duration(seconds: float) -> str:
  if seconds < 1e-3:
    return f"{seconds * 1e6:.0f} us"
  if seconds < 1:
    return f"{seconds * 1e3:.0f} ms"
  if seconds < 120:
    return f"{seconds:.1f} s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def format_plan(plan: dict[str, Any]) -> str:
  lines = [
      f"plan: {plan['config']} ({plan['name']}) on {plan['devices']} simulated devices x "
      f"{plan['device_memory_gib']:g} GiB",
  ]
  for role, p in plan["roles"].items():
    d = p["per_device"]
    t, e = d["train"], d["eval"]
    sharding = p["sharding_resolved"] + (f" (from {p['sharding']!r})" if p["sharding"] != p["sharding_resolved"] else "")
    lines += [
        "",
        f"[{role}] {p['model']}",
        f"  trained parameters {_count(p['trained_parameters'])}, frozen {_count(p['frozen_parameters'])};"
        f" dtype {p['dtype']}, remat {p['remat']}, sharding {sharding}",
        f"  train step: batch {p['batch_size']} (x{p['accum_steps']} accumulation), loss {p['loss']},"
        f" {p['num_steps']} steps per run",
        "  per device:",
        f"    parameters        {_gib(d['params'] + d['frozen'])}",
        f"    optimizer state   {_gib(d['opt_state'])}",
        f"    activations+temp  {_gib(t['temporaries'])}  (XLA temporaries of the train step)",
        f"    train step peak   {_gib(t['peak'])}  (arguments {_gib(t['arguments'])} + outputs {_gib(t['outputs'])}"
        f" - donated {_gib(t['aliased'])} + temporaries {_gib(t['temporaries'])})",
        f"    eval step peak    {_gib(e['peak'])}  (batch {p['eval_batch_size']})",
        f"  FLOPs per step per device: train {p['flops_per_step']:.3g}, eval {p['flops_per_eval_step']:.3g}",
    ]
    if "whole_config" in p:
      w = p["whole_config"]
      lines.append(f"  whole config: {w['runs']} run(s), {w['train_steps']} train steps, {w['eval_steps']} eval steps,"
                   f" {w['flops']:.3g} FLOPs on all devices")
  lines += [
      "",
      f"estimated times on {plan['devices']} chips at {plan['mfu']:.0%} of peak dense bf16 (compiled FLOPs / (peak x MFU);"
      " communication not modelled):",
      f"  {'chip':<15} {'memory':>7} {'fits':>5} " + " ".join(f"{r + ' step':>12}" for r in plan["roles"])
      + f" {'whole config':>13}",
  ]
  for c in plan["chips"].values():
    steps = " ".join(f"{_duration(c['step_s'][r]):>12}" for r in plan["roles"])
    lines.append(f"  {c['name']:<15} {c['memory_gib']:>4g} GiB {'yes' if c['fits'] else 'no':>5} {steps}"
                 f" {_duration(c['whole_config_s']):>13}")
  verdict = "fits" if plan["fits"] else "does NOT fit"
  lines += ["", f"peak {_gib(plan['peak_bytes'])} per device {verdict} in {plan['device_memory_gib']:g} GiB"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    args, overrides = parse_args(argv)
  except SystemExit as e:  # argparse: usage errors exit 2 already; --help exits 0.
    return int(e.code or 0)
  try:
    setup_devices(args.devices)
    config = load_config(args.config, overrides)
    plan = make_plan(config, devices=args.devices, device_memory_gib=args.device_memory, roles=args.roles,
                     mfu=args.mfu, spec=args.config)
  except PlanError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_plan(plan))
  if args.json:
    Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
  return 0 if plan["fits"] else 1


if __name__ == "__main__":
  sys.exit(main())
