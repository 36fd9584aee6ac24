"""The train state, the data-parallel update step, checkpoints and the loop.

Written in phases, each usable on its own:

* optimizer: ``make_optimizer`` builds an Optax chain (clip, AdamW with a
  schedule, optional gradient accumulation) from a config; with
  ``inject=True`` the peak learning rate, weight decay and warm-up live in the
  optimizer state (``optax.inject_hyperparams``), one per vmapped run;
* state: ``TrainState`` holds the trainable parameters, the frozen rest of the
  model, the optimizer state, the step and the run's base RNG key;
* step: ``train_step`` is a pure ``(state, batch, ...) -> (state, metrics)``;
  ``Trainer`` ``jit``s it over a ``data`` mesh with donated state;
* checkpoint: ``Checkpointer`` saves the state and the data position with
  Orbax, records the sha256 of every file of each step, and restores the
  latest step that still matches them;
* loop: ``fit`` runs steps, checks every metric for NaN/inf on the host, saves
  every N steps and at the end, and resumes where a killed run stopped.

A batch is a dict ``{"inputs": {...model kwargs...}, "targets": [B, C],
"mask": [B]}``: ``targets`` are probabilities (one-hot ground truth or weak soft
labels), ``mask`` marks real examples so padded or partial batches count right.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from w2sg_jax import cache as cache_lib
from w2sg_jax import config as schema
from w2sg_jax import cpu as cpu_lib
from w2sg_jax import hashing
from w2sg_jax import losses as losses_lib
from w2sg_jax import parallel
from w2sg_jax import progress as progress_lib
from w2sg_jax.log import log
from w2sg_jax.models import lora as lora_lib

PyTree = Any
ApplyFn = Callable[[PyTree, PyTree, Mapping[str, jax.Array], jax.Array], jax.Array]


# ------------------------------------------------------------------ optimizer


def make_schedule(opt: schema.OptimizerConfig, num_steps: int) -> optax.Schedule:
  """Learning-rate schedule from ``opt.schedule`` in {cosine, linear, constant}.

  ``opt.warmup_steps`` of linear warm-up from 0 precede the decay; cosine and
  linear decay to ``opt.end_lr_factor`` of the peak at the end.
  """
  schema.expect(opt, schema.OptimizerConfig, "opt")
  lr = float(opt.learning_rate)
  warmup = int(opt.warmup_steps)
  kind = opt.schedule
  end = lr * float(opt.end_lr_factor)
  decay_steps = max(num_steps - warmup, 1)
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif kind == "linear":
    main = optax.linear_schedule(lr, end, decay_steps)
  else:  # A name `config.SCHEDULES` gained without a branch here (the schema admits no other).
    raise ValueError(f"make_schedule does not build schedule {kind!r}.")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


# The numeric hyperparameters that `make_optimizer(..., inject=True)` keeps in the optimizer state, one value
# per run of a vmapped group: a grid of them trains as one compiled program (`engines.train_vmap`).
INJECTED_HPARAMS = ("learning_rate", "weight_decay", "warmup_steps")


def _traced_schedule(opt: schema.OptimizerConfig,
                     num_steps: int) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """``make_schedule``'s shape as ``rate(count, peak, warmup)``, the peak and the warm-up traced.

  The operations of the optax schedules ``make_schedule`` joins, divisions
  and products grouped as XLA folds them where those schedules' values are
  constants, so a run at the config's values gets the same rate to the bit
  (`tests/test_grid_engine.py` checks it).
  """
  kind = opt.schedule
  factor = float(opt.end_lr_factor)

  def rate(count, peak, warmup):
    decay_steps = jnp.maximum(num_steps - warmup, 1)
    t = count - warmup
    if kind == "constant":
      main = peak
    elif kind == "cosine":  # optax.cosine_decay_schedule with alpha = end / peak = factor.
      d = decay_steps.astype(jnp.float32)
      c = jnp.minimum(t.astype(jnp.float32), d)
      # Grouped as XLA folds the constants of optax's `init * ((1 - a) * 0.5 * (1 + cos(pi * c / T)) + a)`
      # when T, a and init are constants (so a run at the config's values matches make_schedule's bits).
      cosine = 1 + jnp.cos(c * (jnp.pi * (1 / d)))
      main = cosine * (0.5 * peak) if factor == 0 else peak * ((1 - factor) * (0.5 * cosine) + factor)
    else:  # optax.linear_schedule(peak, peak * factor, decay_steps).
      end = peak * factor
      frac = 1 - jnp.clip(t, 0, decay_steps) * (1 / decay_steps)
      main = (peak - end) * frac + end
    # optax.linear_schedule(0, peak, warmup), joined at the warm-up's end (no warm-up: main throughout).
    up = (0.0 - peak) * (1 - jnp.clip(count, 0, warmup) * (1 / jnp.maximum(warmup, 1))) + peak
    return jnp.where(count < warmup, up, main)

  return rate


def make_optimizer(
    opt: schema.OptimizerConfig, num_steps: int, *, inject: bool = False
) -> tuple[optax.GradientTransformation, Callable[..., jax.Array]]:
  """Clip by global norm, then AdamW (or Adam/SGD) on ``make_schedule``: ``(tx, schedule)``.

  ``opt.accum_steps > 1`` wraps the chain in ``optax.MultiSteps``: the update
  is applied every k micro-batches with their mean gradient, so an effective
  batch of k * batch_size fits in the memory of one. ``num_steps`` counts
  micro-batches; the schedule advances once per real update, so it is built
  over ``num_steps // k`` updates, and the returned schedule (used to report
  the learning rate) maps a micro-step to the rate of its update.

  ``inject=True``: the peak learning rate, the weight decay and the warm-up
  steps (`INJECTED_HPARAMS`) are not baked into the program but live in the
  optimizer state as arrays (``optax.inject_hyperparams``), read with
  `injected_hyperparams` and set per run with `with_hyperparams`; the rate of
  a step is the schedule's shape at the state's peak and warm-up. Then
  ``schedule(step, opt_state)`` gives the rate of ``step`` at the
  hyperparameters in ``opt_state``. At the config's own values the updates
  equal those of ``inject=False`` (adam and sgd have no weight decay to set).
  """
  schema.expect(opt, schema.OptimizerConfig, "opt")
  accum = int(opt.accum_steps)  # >= 1, and every value below, checked by `config.OptimizerConfig`.
  updates = max(num_steps // accum, 1)
  schedule = _traced_schedule(opt, updates) if inject else make_schedule(opt, updates)
  name = opt.name

  def chain(learning_rate, weight_decay):
    if name == "adamw":
      base = optax.adamw(learning_rate, b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                         weight_decay=weight_decay)
    elif name == "adam":
      base = optax.adam(learning_rate, b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps))
    elif name == "sgd":
      base = optax.sgd(learning_rate, momentum=opt.momentum)
    else:  # A name `config.OPTIMIZERS` gained without a branch here (the schema admits no other).
      raise ValueError(f"make_optimizer does not build optimizer {name!r}.")
    parts = []
    if opt.grad_clip:
      parts.append(optax.clip_by_global_norm(float(opt.grad_clip)))
    return optax.chain(*parts, base)

  if inject:
    shape = schedule

    def factory(learning_rate, weight_decay, warmup_steps):
      return chain(lambda count: shape(count, learning_rate, warmup_steps), weight_decay)

    tx = optax.inject_hyperparams(factory)(
        learning_rate=float(opt.learning_rate), weight_decay=float(opt.weight_decay),
        warmup_steps=int(opt.warmup_steps))

    def schedule(step, opt_state):
      hp = injected_hyperparams(opt_state)
      return shape(step // accum, hp["learning_rate"], hp["warmup_steps"])
  else:
    tx = chain(schedule, float(opt.weight_decay))
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
    if not inject:
      return tx, lambda step, f=schedule: f(step // accum)
  return tx, schedule


def _injected_state(opt_state: Any) -> Any:
  """The ``inject_hyperparams`` state of an ``inject=True`` optimizer (inside ``MultiSteps`` or not)."""
  if isinstance(opt_state, optax.MultiStepsState):
    opt_state = opt_state.inner_opt_state
  if not hasattr(opt_state, "hyperparams"):
    raise TypeError("not the state of make_optimizer(..., inject=True): it has no hyperparameters.")
  return opt_state


def injected_hyperparams(opt_state: Any) -> dict[str, jax.Array]:
  """``{name: array}`` of `INJECTED_HPARAMS` in an ``inject=True`` optimizer state."""
  return dict(_injected_state(opt_state).hyperparams)


def with_hyperparams(opt_state: Any, values: Mapping[str, Any]) -> Any:
  """``opt_state`` with some `INJECTED_HPARAMS` replaced (each value cast to the dtype it had)."""
  unknown = sorted(set(values) - set(INJECTED_HPARAMS))
  if unknown:
    raise ValueError(f"{', '.join(unknown)} cannot be set per run; these can: {', '.join(INJECTED_HPARAMS)}.")
  inner = _injected_state(opt_state)
  hp = dict(inner.hyperparams)
  hp.update({k: jnp.asarray(v, hp[k].dtype) for k, v in values.items()})
  inner = inner._replace(hyperparams=hp)
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state._replace(inner_opt_state=inner)
  return inner


# ---------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes, as one pytree (so Orbax saves it whole).

  ``params`` are trained; ``frozen`` is the rest of the model (frozen encoder
  layers, buffers), passed to the step as an argument rather than closed over
  so a large frozen encoder is not baked into the compiled program as constants.
  ``rng`` is the run's base key; step ``t`` uses ``fold_in(rng, t)``.
  """

  step: jax.Array
  params: PyTree
  frozen: PyTree
  opt_state: PyTree
  rng: jax.Array


def init_state(params: PyTree, frozen: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      frozen=frozen,
      opt_state=tx.init(params),
      rng=jax.random.PRNGKey(seed),
  )


def split_model(model: nnx.Module, trainable: Any = nnx.Param) -> tuple[ApplyFn, PyTree, PyTree]:
  """Splits an NNX module into a pure ``apply_fn`` and its (trainable, frozen) state.

  ``trainable`` is an NNX filter (``nnx.Param`` trains everything; see
  ``models.trainable_filter`` for head-only and top-n-layer fine-tuning).
  ``apply_fn(params, frozen, inputs, rng)`` calls the module on ``**inputs``.
  """
  graphdef, params, frozen = nnx.split(model, trainable, ...)

  def apply_fn(params, frozen, inputs, rng):
    del rng  # Models here are deterministic; the key is threaded for those that are not.
    return nnx.merge(graphdef, params, frozen)(**inputs)

  return apply_fn, params, frozen


def abstract_model(make_model: Callable[[nnx.Rngs], nnx.Module], seed: int = 0) -> nnx.Module:
  """The model as shapes and dtypes only (``nnx.eval_shape``): no weights are read or allocated."""
  return nnx.eval_shape(lambda: make_model(nnx.Rngs(params=seed)))


def create_state(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    *,
    tx: optax.GradientTransformation,
    seed: int,
    mesh: jax.sharding.Mesh,
    trainable: Any = nnx.Param,
    sharding: str = "replicated",
) -> tuple[ApplyFn, TrainState, PyTree]:
  """The one state constructor: ``(apply_fn, state, state_sharding)``, born in its sharding.

  The model is first traced as abstract shapes; ``parallel.state_shardings``
  places every leaf ("replicated", "fsdp", or "auto", which picks fsdp when a
  replica would not fit a device); then ``jax.jit(init, out_shardings=...)``
  creates the parameters and optimizer state directly on the devices, each
  device holding only its shards. Nothing is built on one device and copied.
  """
  abstract = abstract_model(make_model, seed)
  graphdef, _, _ = nnx.split(abstract, trainable, ...)
  # LoRA adapters with dropout draw it from the step's key; evaluation passes rng=None.
  dropout = any(getattr(layer, "dropout_rate", 0) > 0 for _, layer in lora_lib.lora_modules(abstract))

  def apply_fn(params, frozen, inputs, rng):
    model = nnx.merge(graphdef, params, frozen, copy=dropout)
    if dropout:
      lora_lib.set_lora_dropout(model, rng)
    return model(**inputs)

  def init() -> TrainState:
    _, params, frozen = nnx.split(make_model(nnx.Rngs(params=seed)), trainable, ...)
    return init_state(params, frozen, tx, seed)

  abstract = jax.eval_shape(init)
  mode = parallel.resolve_sharding(sharding, abstract, mesh)
  shardings = parallel.state_shardings(abstract, mesh, mode)
  state = jax.jit(init, out_shardings=shardings)()
  return apply_fn, state, shardings


# ----------------------------------------------------------------------- step


def masked_mean(values_B: jax.Array, mask_B: jax.Array) -> jax.Array:
  """Mean over real examples only; 0 for a batch with none."""
  mask = mask_B.astype(jnp.float32)
  return jnp.sum(values_B * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train_step(
    state: TrainState,
    batch: Mapping[str, Any],
    *,
    apply_fn: ApplyFn,
    loss_fn: losses_lib.LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    num_steps: int,
    num_chains: int | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update. Pure: the same inputs give the same outputs.

  The per-example loss is reduced with ``batch["mask"]``, so padding rows and
  partial final batches do not change the gradient. ``progress`` (step over
  total steps) drives the warm-up of confidence terms such as ``logconf``.

  ``num_chains`` cuts the batch into that many interleaved slices that run
  through the model as independent subgraphs (``cpu.chained``), so a
  multi-core CPU overlaps their work; the logits are restacked and the loss
  (with any batch statistic, such as the confidence term's quantile) sees the
  whole batch, so the update equals the plain one to float rounding. ``None``
  picks it per platform and model size (``cpu.default_num_chains``: 1 on
  GPU/TPU and for small models).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  mask = batch["mask"]
  progress = state.step.astype(jnp.float32) / max(num_steps, 1)
  rows = mask.shape[0]
  chains = cpu_lib.resolve_num_chains(num_chains, rows, (state.params, state.frozen), batch["inputs"])
  model = cpu_lib.chained(apply_fn, chains, argnums=(2,))

  def loss_of(params):
    logits = model(params, state.frozen, batch["inputs"], rng)
    per_example = loss_fn(logits, batch["targets"], where=mask.astype(bool), progress=progress)
    return masked_mean(per_example, mask), logits

  (loss, logits), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  agree = jnp.argmax(logits, -1) == jnp.argmax(batch["targets"], -1)
  metrics = {
      "loss": loss,
      "grad_norm": optax.tree.norm(grads),
      "lr": jnp.asarray(schedule(state.step), jnp.float32),
      "target_agreement": masked_mean(agree.astype(jnp.float32), mask),
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


class Trainer:
  """``jit``s ``train_step`` for a mesh: state replicated, batch split on ``data``.

  The state is donated, so parameters and optimizer moments are updated in
  place instead of doubling device memory. The step and the prediction are
  traced under the mesh (``parallel.MeshJit``), called or lowered alike, so
  the models' ``parallel.constrain_batch`` keeps activations split by example.
  ``num_chains`` is passed to ``train_step`` (``None``: per platform).
  ``num_traces`` counts how often the step was traced, so tests (and users)
  can see that it compiles once.
  """

  def __init__(
      self,
      *,
      apply_fn: ApplyFn,
      loss_fn: losses_lib.LossFn,
      tx: optax.GradientTransformation,
      schedule: optax.Schedule,
      num_steps: int,
      mesh: jax.sharding.Mesh,
      state_sharding: PyTree | None = None,
      num_chains: int | None = None,
  ):
    self.mesh = mesh
    self.num_traces = 0
    self._apply_fn = apply_fn

    def step(state, batch):
      self.num_traces += 1  # Runs only while tracing.
      return train_step(
          state, batch, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, schedule=schedule, num_steps=num_steps,
          num_chains=num_chains,
      )

    rep = parallel.replicated(mesh)
    # The state keeps the sharding it was born in (create_state): replicated,
    # or fsdp, where XLA inserts the gathers and reduce-scatters itself.
    self.state_sharding = rep if state_sharding is None else state_sharding
    self._step = parallel.MeshJit(
        step,
        mesh,
        in_shardings=(self.state_sharding, parallel.batch_sharding(mesh)),
        out_shardings=(self.state_sharding, rep),
        donate_argnums=(0,),
    )
    params_sharding = rep if state_sharding is None else state_sharding.params
    frozen_sharding = rep if state_sharding is None else state_sharding.frozen
    self._predict = parallel.MeshJit(
        lambda params, frozen, inputs: apply_fn(params, frozen, inputs, None),  # No key: no dropout.
        mesh,
        in_shardings=(params_sharding, frozen_sharding, parallel.batch_sharding(mesh)),
        out_shardings=parallel.batch_sharding(mesh),
    )

  def lower_step(self, abstract_state: PyTree, abstract_batch: PyTree) -> jax.stages.Lowered:
    """The step lowered for global shapes (``jax.ShapeDtypeStruct`` trees), e.g. to compile a memory plan."""
    return self._step.lower(abstract_state, abstract_batch)

  def lower_predict(self, abstract_state: PyTree, abstract_inputs: PyTree) -> jax.stages.Lowered:
    return self._predict.lower(abstract_state.params, abstract_state.frozen, abstract_inputs)

  def global_shapes(self, host_batch: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct``s of the global arrays `step` and `predict` make of ``host_batch`` (as
    ``parallel.to_global`` does): lowering with them compiles the program those calls then reuse.

    ``host_batch``: this process's rows, as arrays or as shapes (anything with ``shape`` and ``dtype``).
    """
    sharding = parallel.batch_sharding(self.mesh)

    def shape(x):
      x = x if hasattr(x, "dtype") else np.asarray(x)
      return jax.ShapeDtypeStruct((x.shape[0] * jax.process_count(), *x.shape[1:]), x.dtype, sharding=sharding)

    return jax.tree.map(shape, host_batch)

  def eval_rows(self, batch_size: int) -> int:
    """The rows of every `predict` call: ``batch_size`` rounded down to a multiple of the devices (>= one each)."""
    ndev = self.mesh.devices.size
    return max(ndev, batch_size - batch_size % ndev)

  def step(self, state: TrainState, host_batch: Mapping[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
    parallel.check_batch_size(len(host_batch["mask"]) * jax.process_count(), self.mesh)
    return self._step(state, parallel.to_global(host_batch, self.mesh))

  def predict(self, state: TrainState, inputs: Mapping[str, np.ndarray], batch_size: int, *,
              desc: str | None = None) -> np.ndarray:
    """Logits for every row of ``inputs``; the last batch is padded, then cut.

    With ``desc``, a progress bar over the examples leaves one line when done.
    """
    n = len(next(iter(inputs.values())))
    batch_size = self.eval_rows(batch_size)
    out = []
    with progress_lib.Progress(n, desc or "predict", unit="example", enabled=desc is not None) as bar:
      for start in range(0, n, batch_size):
        chunk = {k: np.asarray(v[start : start + batch_size]) for k, v in inputs.items()}
        real = len(next(iter(chunk.values())))
        if real < batch_size:
          chunk = {k: _pad_rows(v, batch_size) for k, v in chunk.items()}
        logits = self._predict(state.params, state.frozen, parallel.to_global(chunk, self.mesh))
        out.append(np.asarray(jax.device_get(logits))[:real])
        bar.update(real)
    return np.concatenate(out, 0)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, pad)


# ----------------------------------------------------------------- checkpoint

CHECKSUMS_SUFFIX = ".sha256.json"  # ckpt/<step>.sha256.json: the sha256 of every file of ckpt/<step>/.


class CorruptCheckpointError(cache_lib.CorruptEntryError):
  """A checkpoint's file does not match the sha256 recorded when it was saved (or has no record)."""


class Checkpointer:
  """Orbax checkpoints of ``{"state": TrainState without frozen, "data_position": int}``, with checksums.

  The data position is the number of batches consumed; the input pipelines
  here are pure functions of (seed, position), so restoring it replays the
  exact batches an uninterrupted run would have seen.

  Once Orbax has finished writing step ``s``, the sha256 of every file under
  ``<directory>/<s>/`` is written (atomically) to ``<directory>/<s>.sha256.json``,
  beside the step folder rather than in it, so Orbax's own files and listing
  stay its own. A step is trusted only when its files are exactly those of its
  record and each matches: `restore` verifies first, and `restore_latest`
  discards a step that fails (a bit flip, a truncated or missing file, no
  record because the writer was killed before it) with a warning naming the
  step and the file, then falls back to the step before it, or to None (a
  fresh start). A record whose step Orbax no longer lists (``max_to_keep``
  cleanup, a deleted step) is removed.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )
    self._prune_records()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def record_path(self, step: int) -> str:
    return os.path.join(self.directory, f"{step}{CHECKSUMS_SUFFIX}")

  def save(self, state: TrainState, data_position: int) -> None:
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return
    # `frozen` never changes and is rebuilt from the model on resume: a LoRA run of
    # an 8B model checkpoints megabytes (adapters, head, their Adam moments), not the base.
    tree = {"state": state.replace(frozen={}), "data_position": np.asarray(data_position, np.int64)}
    self._manager.save(step, args=ocp.args.StandardSave(tree))
    self._manager.wait_until_finished()  # The step's files are final only now.
    if jax.process_index() == 0:
      _write_json_atomic(self.record_path(step), {"step": step, "files": _tree_sha256(self.step_dir(step))})
    self._prune_records()

  def verify(self, step: int) -> str | None:
    """None when step ``step``'s files match their record; otherwise what is wrong, naming the file."""
    where = f"checkpoint step {step} in {self.directory}"
    record_path = self.record_path(step)
    try:
      with open(record_path, "rb") as f:
        record = json.loads(f.read())
    except FileNotFoundError:
      return (f"{where} has no checksum record ({record_path}; its writer was killed before writing it, or an "
              "older version wrote the step)")
    except ValueError as e:
      return f"{where}: its checksum record {record_path} is unreadable ({e})"
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or record.get("step") != step:
      return f"{where}: its checksum record {record_path} is malformed"
    mismatch = hashing.tree_mismatch(self.step_dir(step), files)
    if mismatch is None:
      return None
    kind, path = mismatch
    return {"missing": f"{where}: {path} is missing",
            "unlisted": f"{where}: {path} is not in its checksum record",
            "changed": f"{where}: {path} does not match the sha256 recorded when it was saved"}[kind]

  def discard(self, step: int) -> None:
    """Deletes step ``step`` and its record."""
    try:
      self._manager.delete(step)
    except Exception:  # pylint: disable=broad-except (a damaged step may not parse; remove it by hand)
      shutil.rmtree(self.step_dir(step), ignore_errors=True)
      self._manager.reload()
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.record_path(step))

  def restore_latest(self, like: TrainState) -> tuple[TrainState, int] | None:
    """The latest intact checkpoint shaped and sharded like ``like``, or None.

    Steps that fail verification are discarded with a warning, newest first.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      problem = self.verify(step)
      if problem is None:
        return self._restore_verified(step, like)
      log.warning("%s; discarding that step and resuming from an earlier one (or from the start).", problem)
      self.discard(step)
    return None

  def restore(self, step: int, like: TrainState) -> tuple[TrainState, int]:
    """The checkpoint of ``step`` shaped and sharded like ``like``, and its data position.

    Raises `CorruptCheckpointError` (after discarding the step) when it fails verification.
    """
    problem = self.verify(step)
    if problem is not None:
      self.discard(step)
      raise CorruptCheckpointError(f"{problem}; the step was removed")
    return self._restore_verified(step, like)

  def _restore_verified(self, step: int, like: TrainState) -> tuple[TrainState, int]:
    abstract = {
        "state": jax.tree.map(ocp.utils.to_shape_dtype_struct, like.replace(frozen={})),
        "data_position": np.asarray(0, np.int64),
    }
    tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return tree["state"].replace(frozen=like.frozen), int(tree["data_position"])

  def drop_after(self, step: int) -> None:
    """Deletes the checkpoints of steps after ``step`` (written after the one a run resumes from)."""
    for later in [s for s in self._manager.all_steps() if s > step]:
      self.discard(later)

  def _prune_records(self) -> None:
    """Removes the records of steps Orbax no longer lists (its max_to_keep cleanup deletes steps only)."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    steps = set(self._manager.all_steps())
    for name in os.listdir(self.directory):
      head = name[: -len(CHECKSUMS_SUFFIX)]
      orphan = name.endswith(CHECKSUMS_SUFFIX) and head.isdigit() and int(head) not in steps
      if orphan or (name.startswith(".") and f"{CHECKSUMS_SUFFIX}.tmp-" in name):  # Or a killed writer's temp.
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(self.directory, name))

  def close(self) -> None:
    self._manager.close()


def _tree_sha256(directory: str) -> dict[str, str]:
  return {rel: hashing.read_sha256(path) for rel, path in sorted(hashing.tree_files(directory).items())}


def _write_json_atomic(path: str, obj: Any) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


# ----------------------------------------------------------------------- loop


class NonFiniteError(FloatingPointError):
  """A metric became NaN or inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class Validation:
  """Evaluations for model selection (see `w2sg_jax.selection`).

  After each step of ``steps``, ``evaluate(state)`` scores the model (higher
  is better); the score is logged as ``name`` and `fit` returns the state of
  the best-scoring step (the earliest of equal scores) instead of the last.
  """

  name: str
  steps: frozenset[int]
  evaluate: Callable[[TrainState], float]


@dataclasses.dataclass
class FitResult:
  state: TrainState  # The last step's, or under `Validation` the selected step's.
  history: list[dict[str, float]]
  resumed_from: int | None
  validation: list[dict[str, float]] = dataclasses.field(default_factory=list)  # {"step", name} per evaluation.
  selected_step: int | None = None


def fit(
    trainer: Trainer,
    state: TrainState,
    batches: Callable[[int], Iterator[Mapping[str, Any]]],
    *,
    num_steps: int,
    workdir: str,
    save_every: int = schema.TrainConfig.save_every,
    log_every: int = schema.TrainConfig.log_every,
    desc: str = "train",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    validation: Validation | None = None,
) -> FitResult:
  """Trains to ``num_steps``, resuming from ``workdir/ckpt`` when a checkpoint exists.

  ``batches(position)`` returns an iterator of host batches starting at batch
  ``position``. Metrics are fetched from the devices every ``log_every`` steps
  (not every step, which would stall the accelerator) and checked for NaN/inf
  before each checkpoint, so a saved checkpoint is always a finite one.
  ``workdir/metrics.jsonl`` gets one line per logged step.

  With ``validation``, each evaluation is a line of ``workdir/validation.jsonl``;
  a step that beats every earlier one is kept in ``workdir/best``, and every
  evaluated step is also checkpointed, so a resumed run knows its best step.
  """
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(os.path.join(workdir, "ckpt"))
  fresh, start, resumed_from = state, 0, None
  restored = ckpt.restore_latest(state)  # Verified: a damaged step is discarded, never resumed from.
  if restored is not None:
    state, start = restored
    resumed_from = start
    log.info("%s: resumed at step %d from a verified checkpoint in %s.", desc, start, ckpt.directory)
  eval_steps = validation.steps if validation is not None else frozenset()
  val_path = os.path.join(workdir, "validation.jsonl")
  val_history = _read_history(val_path, up_to=start) if validation is not None else []
  best = _Best(os.path.join(workdir, "best"), validation.name, val_history, start) if validation else None
  if best is not None and best.lost is not None:  # The selected state is gone with it: train again.
    log.warning("%s; %s trains again from step 0.", best.lost, desc)
    best.close()
    ckpt.drop_after(-1)
    state, start, resumed_from = fresh, 0, None
    val_history = _read_history(val_path, up_to=0)
    best = _Best(os.path.join(workdir, "best"), validation.name, val_history, 0)
  del fresh
  history_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_history(history_path, up_to=start)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  last_saved = start if resumed_from is not None else None

  def drain():
    """Brings pending metrics to the host, checks them, logs every log_every-th."""
    nonlocal pending
    if not pending:
      return
    values = jax.device_get([m for _, m in pending])
    for (step, _), m in zip(pending, values):
      m = {k: float(v) for k, v in m.items()}
      bad = [k for k, v in m.items() if not math.isfinite(v)]
      if bad:
        where = (
            f"the last good checkpoint (step {last_saved}) in {ckpt.directory} is intact"
            if last_saved is not None
            else "no checkpoint was written yet"
        )
        # Resumed state is verified against its checksums, so a non-finite value is the
        # training's own, never a damaged file's; say where the run started from.
        origin = (f"this run resumed at step {resumed_from} from a checkpoint whose files match the sha256 "
                  "recorded when it was saved" if resumed_from is not None else "this run started at step 0")
        raise NonFiniteError(
            f"non-finite {', '.join(bad)} at step {step} ({m}); {origin}; {where}. "
            "Lower the learning rate, enable grad_clip, or check the inputs for NaN."
        )
      if step % log_every == 0 or step == num_steps:
        history.append({"step": step, **m})
        with open(history_path, "a") as f:
          f.write(json.dumps({"step": step, **m}) + "\n")
    pending = []

  it = batches(start)
  # The bar counts dispatched steps (no device sync); the loss shows at each drain.
  bar = progress_lib.Progress(num_steps, desc, unit="step", initial=start, enabled=progress)
  failed = True
  try:
    for step in range(start + 1, num_steps + 1):
      state, metrics = trainer.step(state, next(it))
      pending.append((step, metrics))
      bar.update(1)
      if on_step is not None:
        on_step(step)
      if step % log_every == 0 or step % save_every == 0 or step == num_steps or step in eval_steps:
        drain()
        if history:
          bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
      if step in eval_steps:
        score = float(validation.evaluate(state))
        val_history.append({"step": step, validation.name: score})
        with open(val_path, "a") as f:
          f.write(json.dumps(val_history[-1]) + "\n")
        best.offer(step, score, state)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}" if history else "-", **{validation.name: f"{score:.4f}"})
      if step % save_every == 0 or step == num_steps or step in eval_steps:
        ckpt.save(state, data_position=step)
        last_saved = step
    failed = False
    selected_step = None
    if best is not None:
      state, selected_step = best.restore(like=state)
  finally:
    bar.close(failed=failed)
    ckpt.close()
    if best is not None:
      best.close()
  return FitResult(state=state, history=history, resumed_from=resumed_from, validation=val_history,
                   selected_step=selected_step)


class _Best:
  """The best-scoring state so far, in its own checkpoint folder.

  Invariant: every evaluated step <= the resumed step is also checkpointed in
  ``ckpt``, after its best-so-far save, so the best checkpoints of steps after
  the resumed one are the only ones a kill can leave unexplained: they are
  dropped, and the rest agree with ``validation.jsonl``. Two are kept, so
  dropping the newest leaves the one before.

  ``lost`` says why the best step named by the validation log cannot be used
  (its checkpoint is missing, or fails verification and was discarded); `fit`
  then trains again from the start. None when it is intact (or none exists yet).
  """

  def __init__(self, directory: str, name: str, val_history: list[dict[str, float]], start: int):
    self.ckpt = Checkpointer(directory, max_to_keep=2)
    self.ckpt.drop_after(start)
    self.step, self.score = None, -math.inf
    for row in val_history:  # The earliest of equal scores wins.
      if row[name] > self.score:
        self.step, self.score = int(row["step"]), float(row[name])
    self.lost = None
    if self.step != self.ckpt.latest_step():
      self.lost = (f"{directory} holds step {self.ckpt.latest_step()}, but the validation log names step {self.step} "
                   "as the best (a damaged step was discarded, or the run folder was changed by hand)")
    elif self.step is not None:
      self.lost = self.ckpt.verify(self.step)
      if self.lost is not None:
        self.ckpt.discard(self.step)

  def offer(self, step: int, score: float, state: TrainState) -> None:
    if score > self.score:
      self.ckpt.save(state, data_position=step)
      self.step, self.score = step, score

  def restore(self, like: TrainState) -> tuple[TrainState, int]:
    """The best state, verified; `CorruptCheckpointError` when its files were damaged since it was saved."""
    try:
      state, _ = self.ckpt.restore(self.step, like)
    except CorruptCheckpointError as e:
      raise CorruptCheckpointError(
          f"{e}: the best model of this run is lost. Rerun the same command; the run trains again from the start."
      ) from e
    return state, self.step

  def close(self) -> None:
    self.ckpt.close()


def _read_history(path: str, up_to: int) -> list[dict[str, float]]:
  """Logged metrics up to ``up_to``; later lines (from a killed run) are dropped."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if r["step"] <= up_to]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return rows
