"""The one student-training interface: `train_runs` trains a group of runs and returns their logits.

A *run* is one model trained from one label store (weak labels, noisy weak
labels, or one-hot ground truth) with one seed. Every run reads its labels
through a `LabelStream` in the order of `labels.stream.batch_indices`, and
every update is `train.train_step`; the engines only differ in how runs share
the machine:

* ``vmap``: the runs of a group train side by side as one compiled program
  (``vmap`` over runs inside a ``fori_loop`` over steps), with the data on the
  device. For heads on cached features, where a step takes microseconds. The
  learning rate, weight decay and warm-up live in the optimizer state
  (``optax.inject_hyperparams``), one value per run, so a grid of them over
  seeds (`RunSpec.optimizer`) is still one program, compiled once and shared
  with every group of the same model, loss, step count and run count. Runs
  that read the same batches (one seed, several settings or stores) gather
  them once and run through the model side by side.
* ``data_parallel``: one run at a time over every device (`train.Trainer`),
  batches streamed from the store on host threads, checkpointed so that a
  killed run resumes. For any model, fine-tuning included. A run's
  `RunSpec.optimizer` is merged into its optimizer config (one program per
  distinct setting).

Every setting comes typed (`config.TrainConfig`, `config.OptimizerConfig`),
its defaults filled and its values checked once at the boundary; only a run's
grid point (`RunSpec.optimizer`) is a plain dict, merged with
``OptimizerConfig.replace`` (so checked the same way).

The old names ``sweep`` and ``fit`` still work, with a deprecation message.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import cost as cost_lib
from w2sg_jax import losses as losses_lib
from w2sg_jax import parallel
from w2sg_jax import progress as progress_lib
from w2sg_jax import selection as selection_lib
from w2sg_jax import train as train_lib
from w2sg_jax.labels import stream as stream_lib
from w2sg_jax.labels.store import WeakLabelStore

__all__ = ["ENGINES", "RunSpec", "TrainedRuns", "resolve_engine", "train_runs", "train_vmap"]

ENGINES = ("vmap", "data_parallel")
_DEPRECATED = {"sweep": "vmap", "fit": "data_parallel"}


def resolve_engine(name: str) -> str:
  """The engine's current name; old names map to new ones with a deprecation message."""
  if name in _DEPRECATED:
    new = _DEPRECATED[name]
    warnings.warn(f"engine {name!r} is now called {new!r}; the old name will be removed.", DeprecationWarning,
                  stacklevel=2)
    return new
  if name not in ENGINES:
    known = ", ".join(ENGINES + tuple(_DEPRECATED))
    raise ValueError(f"unknown engine {name!r}; use one of: {known}.")
  return name


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run: its seed, the store it learns from, (data_parallel) where it checkpoints, and its optimizer.

  ``optimizer``: this run's overrides of the group's ``train_cfg.optimizer``
  (None: that config as it is), a plain dict of `config.OptimizerConfig`
  fields such as a grid point, e.g. ``{"learning_rate": 3e-3,
  "weight_decay": 0.01}``. On the vmap engine the runs of a group may differ in
  `train.INJECTED_HPARAMS` (``learning_rate``, ``weight_decay``,
  ``warmup_steps``): one compiled program trains them all. Any other key must
  be the same in every run of the group. On the data_parallel engine every key
  is merged into the run's config, so a work_dir must be the run's own setting's.
  """

  seed: int
  store: WeakLabelStore
  work_dir: str | None = None
  optimizer: Mapping[str, float] | None = None


@dataclasses.dataclass
class TrainedRuns:
  """Logits of every run on every evaluation split, each run's logged metrics, and what each run cost.

  ``cost[r]``, measured from the compiled programs (`w2sg_jax.cost`), not estimated:

  * ``step_flops``: one training step of run r, from XLA's cost analysis of a
    program of that one step (a loop body is counted once, so never from the
    loop over steps). vmap: the step of all R runs / R. data_parallel: the
    per-device program x the devices (work every device repeats, such as a
    replicated optimizer update, counts once per device). A vmap group that
    shares its loop with other losses (``loss_table``) counts its own loss's
    step on the program before optimization (XLA costs a conditional as its
    costliest branch): 0.95-0.97 of the compiled count on the default's heads.
  * ``num_steps``: the run's training steps (a resumed run's earlier ones too).
  * ``train_flops``: ``step_flops * num_steps``.
  * ``eval_flops``: predicting every split of ``eval_inputs`` (vmap: the
    group's compiled prediction / R; data_parallel: one padded prediction
    batch x the batches x the devices). The selection holdout's evaluations
    are not counted.
  * ``peak_bytes``: XLA's ``memory_analysis()`` of the compiled training step:
    arguments + outputs - aliased (donated) + temporaries. vmap: the whole
    vmapped step of the R runs trained together (its data on the device
    included), the same figure for each of them; data_parallel: one device's.
  * ``wall_s``: seconds of the training call (compilation, training,
    prediction). vmap: the group's call split evenly among its R runs;
    data_parallel: the run's own.
  * ``device_peak_bytes`` (GPU/TPU only; absent where the device reports none,
    as on CPU): the first local device's ``peak_bytes_in_use`` after the run,
    a high-water mark of the process, not of this run alone.
  """

  logits: dict[str, list[np.ndarray]]  # split -> [run] -> [N, C]
  history: list[list[dict[str, float]]]
  # Under `train.select` (see `selection`): each run's evaluated step and score, and its chosen step.
  validation: list[list[dict[str, float]]] = dataclasses.field(default_factory=list)
  selected_steps: list[int | None] = dataclasses.field(default_factory=list)
  cost: list[dict[str, float | int]] = dataclasses.field(default_factory=list)  # [run] -> see above


# What the vmap engine brings back of each run at every chunk end (`train_lib.train_step`'s metrics).
VMAP_METRICS = ("loss", "grad_norm", "lr", "target_agreement")

ChunkCallback = Callable[[int, Callable[[Any, Mapping[str, Any]], jax.Array], Any], None]


def train_runs(
    runs: Sequence[RunSpec],
    *,
    engine: str,
    make_model: Callable[[nnx.Rngs], nnx.Module],
    train_ids: Sequence[Any],
    train_inputs: Mapping[str, np.ndarray],
    eval_inputs: Mapping[str, Mapping[str, np.ndarray]],
    loss_fn: losses_lib.LossFn,
    train_cfg: schema.TrainConfig,
    trainable: Any = nnx.Param,
    desc: str = "train",
    progress: bool = True,
    on_chunk: ChunkCallback | None = None,
    loss_table: Sequence[losses_lib.LossFn] | None = None,
) -> TrainedRuns:
  """Trains every run of ``runs`` on ``train_inputs`` and predicts ``eval_inputs``.

  Args:
    runs: the runs; each one's store must list ``train_ids`` in order, and
      each may override optimizer hyperparameters (`RunSpec.optimizer`).
    engine: ``vmap`` or ``data_parallel`` (see the module docstring).
    make_model: ``rngs -> nnx.Module``, called with each run's seed.
    train_ids, train_inputs: the training split's ids and model inputs.
    eval_inputs: ``{split: inputs}`` to predict after training.
    loss_fn: from ``losses.get``.
    train_cfg: the typed training block: ``batch_size``, ``epochs`` or
      ``num_steps``, ``optimizer``, ``select`` (model selection on a holdout
      of the training split, see `w2sg_jax.selection`), and (data_parallel)
      ``sharding``, ``save_every``, ``log_every``, ``eval_batch_size``.
    trainable: NNX filter of the parameters that train (vmap: all of them).
    on_chunk: vmap only; ``on_chunk(step, apply, params_R)`` at every chunk
      boundary, e.g. to evaluate a trajectory without retraining.
    loss_table: vmap only; the losses of every group this one's program may
      serve (an experiment's students), ``loss_fn`` among them: the training
      loop is compiled once for the table, the loss picked by a traced index
      (see `train_vmap`).

  Returns:
    `TrainedRuns`, runs in the order given, with each run's `TrainedRuns.cost`.
  """
  started = time.perf_counter()
  engine = resolve_engine(engine)
  schema.expect(train_cfg, schema.TrainConfig, "train_cfg")
  cfg = train_cfg
  batch_size = int(cfg.batch_size)
  select = selection_lib.Selection.from_config(cfg)
  val_inputs, val_targets = None, []
  if select.active:  # Hold out the tail of the split, labelled by each run's own store.
    n = len(train_ids)
    held = selection_lib.split_holdout(train_ids, train_inputs, select.holdout)
    train_ids, train_inputs, val_inputs = held.train_ids, held.train_inputs, held.val_inputs
    for r in runs:
      val_targets.append(np.asarray(r.store.probs[len(train_ids):n], np.float32))
      select.check_targets(val_targets[-1], f"the run of seed {r.seed} ({desc})")
    runs = [dataclasses.replace(r, store=selection_lib.store_rows(r.store, 0, len(train_ids))) for r in runs]
  num_steps = cfg.steps_for(len(train_ids))
  eval_steps = select.eval_steps(num_steps, len(train_ids) // batch_size) if select.active else ()
  streams = _label_streams(runs, train_ids, train_inputs, batch_size=batch_size, num_steps=num_steps)
  if engine == "vmap":
    if trainable is not nnx.Param:
      raise ValueError("the vmap engine trains every parameter; use engine='data_parallel' to freeze some.")
    validation = None
    if select.active:
      validation = VmapValidation(select=select, steps=eval_steps, inputs=val_inputs,
                                  targets_RxNxC=np.stack(val_targets))
    run_history = [[] for _ in runs]
    step_cost = {}
    opt, hparams = group_optimizer(cfg.optimizer, runs)
    try:
      apply, params_R, _ = train_vmap(
          make_model, stream_lib.stack(streams), loss_fn=loss_fn, opt=opt, num_steps=num_steps,
          desc=desc, progress=progress, on_chunk=on_chunk, validation=validation, run_history=run_history,
          step_cost=step_cost, hparams=hparams, loss_table=loss_table,
      )
    except train_lib.NonFiniteError as e:
      raise _group_error(e, desc, runs, lost=runs) from e
    logits, eval_flops = {}, 0.0
    for split, inputs in eval_inputs.items():
      inputs = _to_device(dict(inputs))
      predict = apply.lower(params_R, inputs).compile()  # Costed and run: one compilation.
      eval_flops += cost_lib.flops_of(predict)
      logits[split] = list(np.asarray(predict(params_R, inputs)))
    out = TrainedRuns(logits=logits, history=run_history)
    if validation is not None:
      out.validation = validation.rows
      out.selected_steps = validation.selected_steps
    num_runs, wall_s = len(runs), time.perf_counter() - started
    out.cost = [_run_cost(step_cost["flops"] / num_runs, num_steps, eval_flops / num_runs, step_cost["peak_bytes"],
                          wall_s / num_runs) for _ in runs]
    return out
  out = TrainedRuns(logits={split: [] for split in eval_inputs}, history=[])
  for i, (run, stream) in enumerate(zip(runs, streams)):
    validate = None
    if select.active:
      validate = (select, eval_steps, val_inputs, val_targets[i])
    run_started = time.perf_counter()
    try:
      logits, result, cost = _train_data_parallel(
          make_model, stream, eval_inputs, loss_fn=loss_fn, cfg=cfg, trainable=trainable, work_dir=run.work_dir,
          desc=f"{desc} seed {run.seed}", progress=progress, validate=validate,
          opt=run_optimizer(cfg.optimizer, run),
      )
    except train_lib.NonFiniteError as e:
      raise _group_error(e, desc, runs, lost=runs[i:]) from e
    for split in eval_inputs:
      out.logits[split].append(logits[split])
    out.history.append(result.history)
    if select.active:
      out.validation.append(result.validation)
      out.selected_steps.append(result.selected_step)
    out.cost.append(_run_cost(cost["step_flops"], stream.num_steps, cost["eval_flops"], cost["peak_bytes"],
                              time.perf_counter() - run_started))
  return out


def _label_streams(runs: Sequence[RunSpec], train_ids, train_inputs, *, batch_size: int,
                   num_steps: int) -> list[stream_lib.LabelStream]:
  """Each run's `LabelStream`; a store that several runs share (the seeds and settings of a grid) is
  checked against the split's ids once (the check reads every id: ~15 ms a run at 8000 examples)."""
  out, checked = [], {}
  for r in runs:
    first = checked.get(id(r.store))
    if first is None:
      first = checked[id(r.store)] = stream_lib.LabelStream(train_ids, train_inputs, r.store, batch_size=batch_size,
                                                            num_steps=num_steps, seed=r.seed)
      out.append(first)
      continue
    stream = copy.copy(first)  # The same split, store and inputs; this run's seed and order.
    stream.seed = int(r.seed)
    stream.order = stream_lib.batch_indices(len(r.store), stream.batch_size, stream.num_steps, stream.seed)
    out.append(stream)
  return out


def _run_cost(step_flops: float, num_steps: int, eval_flops: float, peak_bytes: int, wall_s: float) -> dict:
  """One run's `TrainedRuns.cost` entry."""
  out = {"train_flops": step_flops * num_steps, "eval_flops": float(eval_flops), "step_flops": float(step_flops),
         "num_steps": int(num_steps), "peak_bytes": int(peak_bytes), "wall_s": float(wall_s)}
  device_peak = cost_lib.device_peak_bytes()
  if device_peak is not None:
    out["device_peak_bytes"] = device_peak
  return out


def _check_overrides(run: RunSpec) -> dict[str, Any]:
  """``run.optimizer`` as a dict, its keys checked against the optimizer config's fields."""
  over = dict(run.optimizer or {})
  known = [f.name for f in dataclasses.fields(schema.OptimizerConfig)]
  unknown = sorted(set(over) - set(known))
  if unknown:
    raise ValueError(f"RunSpec.optimizer of the run of seed {run.seed} sets {', '.join(unknown)}; the optimizer "
                     f"has: {', '.join(known)}.")
  return over


def run_optimizer(opt: schema.OptimizerConfig, run: RunSpec) -> schema.OptimizerConfig:
  """The optimizer config of one run: the group's ``opt`` with ``run.optimizer`` merged in, checked as any
  `config.OptimizerConfig` is (a ValueError names the run's seed)."""
  schema.expect(opt, schema.OptimizerConfig, "opt")
  over = _check_overrides(run)
  if not over:
    return opt
  try:
    return opt.replace(**over)
  except schema.ConfigError as e:
    raise ValueError(f"RunSpec.optimizer {over} of the run of seed {run.seed}: {e}") from e


def group_optimizer(opt: schema.OptimizerConfig,
                    runs: Sequence[RunSpec]) -> tuple[schema.OptimizerConfig, dict[str, list]]:
  """The optimizer config a vmapped group shares, and each run's `train.INJECTED_HPARAMS`.

  Returns ``(opt, hparams)``: ``opt`` with the overrides every run makes alike
  merged in, and ``hparams[name][r]`` run r's value (its override, else the
  group's). Each run's merged config is checked (`run_optimizer`). Raises a
  ValueError for a field outside `train.INJECTED_HPARAMS` that runs set
  differently (one program cannot hold two of them), and for a weight decay
  on an optimizer that has none.
  """
  per_run = [run_optimizer(opt, r) for r in runs]
  shared = {}
  for f in dataclasses.fields(schema.OptimizerConfig):
    if f.name in train_lib.INJECTED_HPARAMS:
      continue
    values = [getattr(o, f.name) for o in per_run]  # A run without the key trains at the group's.
    if any(v != values[0] for v in values[1:]):
      raise ValueError(
          f"the runs of one vmap group set optimizer.{f.name} differently; they may differ only in "
          f"{', '.join(train_lib.INJECTED_HPARAMS)}. Train each {f.name} in its own train_runs call, or use "
          "engine='data_parallel'.")
    if values and values[0] != getattr(opt, f.name):
      shared[f.name] = values[0]
  for r, o in zip(runs, per_run):
    if o.weight_decay and o.name != "adamw":
      raise ValueError(f"the run of seed {r.seed} sets weight_decay={o.weight_decay}, but optimizer {o.name!r} has "
                       "no weight decay; use name='adamw'.")
  hparams = {k: [getattr(o, k) for o in per_run] for k in train_lib.INJECTED_HPARAMS}
  return (opt.replace(**shared) if shared else opt), hparams


def _run_name(run: RunSpec) -> str:
  noise = run.store.noise if run.store is not None else None
  name = f"seed {run.seed}, noise {noise.rate:g}" if noise is not None else f"seed {run.seed}"
  return name + "".join(f", {k} {v:g}" if isinstance(v, (int, float)) else f", {k} {v}"
                        for k, v in sorted((run.optimizer or {}).items()))


def _group_error(e: Exception, desc: str, runs: Sequence[RunSpec], lost: Sequence[RunSpec]) -> Exception:
  """The NaN message with the group it stopped and the runs that did not finish."""
  return train_lib.NonFiniteError(
      f"{e} The group '{desc}' stopped; its unfinished runs ({'; '.join(_run_name(r) for r in lost)}) were not "
      "saved, and every group that finished before it is kept."
  )


# ------------------------------------------------------------- data parallel


def _train_data_parallel(make_model, stream, eval_inputs, *, loss_fn, cfg: schema.TrainConfig, trainable, work_dir,
                         desc, progress, validate=None, opt: schema.OptimizerConfig | None = None):
  """One run over every device, checkpointed in ``work_dir`` (resumed when a checkpoint is there).

  ``opt``: the run's optimizer config (`run_optimizer`; None: ``cfg.optimizer``).
  ``validate``: ``(Selection, steps, val_inputs, val_targets)`` to select the
  best evaluated step instead of the last. Returns ``(logits, fit result,
  cost)``, ``cost`` with the run's ``step_flops``, ``eval_flops`` (all
  devices) and ``peak_bytes`` (one device's) of `TrainedRuns.cost`.
  """
  mesh = parallel.make_mesh()
  parallel.check_batch_size(stream.batch_size, mesh)
  tx, schedule = train_lib.make_optimizer(cfg.optimizer if opt is None else opt, stream.num_steps)
  apply_fn, state, state_sharding = train_lib.create_state(
      make_model, tx=tx, seed=stream.seed, mesh=mesh, trainable=trainable, sharding=cfg.sharding,
  )
  trainer = train_lib.Trainer(apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, schedule=schedule,
                              num_steps=stream.num_steps, mesh=mesh, state_sharding=state_sharding)
  if work_dir is None:
    raise ValueError("the data_parallel engine needs a work_dir per run for its checkpoints.")
  # The step as the first batch will compile it (jit's cache keeps it for that call): per device, so x devices.
  first = stream.batch(0, slice(0, stream.batch_size // jax.process_count()))
  step = cost_lib.cost_of(trainer.lower_step(state, trainer.global_shapes(first)).compile())
  cost = {"step_flops": step["flops"] * mesh.devices.size, "peak_bytes": step["peak_bytes"]}

  def batches(position):
    return stream.host_batches(position, process_index=jax.process_index(), process_count=jax.process_count())

  eval_batch = int(cfg.eval_batch_size)
  validation = None
  if validate is not None:
    select, steps, val_inputs, val_targets = validate
    validation = train_lib.Validation(
        name=select.name, steps=frozenset(steps),
        evaluate=lambda state: select.score(trainer.predict(state, val_inputs, eval_batch), val_targets))
  result = train_lib.fit(
      trainer, state, batches, num_steps=stream.num_steps, workdir=work_dir,
      save_every=int(cfg.save_every), log_every=int(cfg.log_every), desc=desc,
      progress=progress, validation=validation,
  )
  logits = {split: trainer.predict(result.state, inputs, eval_batch, desc=f"{desc}: predict {split}" if progress else None)
            for split, inputs in eval_inputs.items()}
  cost["eval_flops"] = _predict_flops(trainer, result.state, eval_inputs, eval_batch)
  return logits, result, cost


def _predict_flops(trainer, state, eval_inputs, batch_size: int) -> float:
  """FLOPs of ``trainer.predict`` over every split: its one padded batch's program x the batches x the devices."""
  rows = trainer.eval_rows(batch_size)
  total = 0.0
  for inputs in eval_inputs.values():
    n = len(next(iter(inputs.values())))
    if n == 0:
      continue
    shapes = trainer.global_shapes({k: jax.ShapeDtypeStruct((rows, *np.shape(v)[1:]), np.asarray(v[:1]).dtype)
                                    for k, v in inputs.items()})
    per_batch = cost_lib.flops_of(trainer.lower_predict(state, shapes).compile())  # The program predict ran.
    total += per_batch * -(-n // rows) * trainer.mesh.devices.size
  return total


# ---------------------------------------------------------------------- vmap


def init_params(make_model: Callable[[nnx.Rngs], nnx.Module], seeds: Sequence[int]):
  """Stacked initial parameters, one slice per seed, plus the shared graph."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))

  def one(key):
    return nnx.split(make_model(nnx.Rngs(params=key)))[1]

  keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
  return graphdef, jax.vmap(one)(keys)


# Compiled `_init_states` programs, by the text of the traced init (see there); least recently used dropped.
_INIT_PROGRAMS: collections.OrderedDict[Any, Callable[..., Any]] = collections.OrderedDict()
_INIT_PROGRAMS_MAX = 32


def _init_states(make_model: Callable[[nnx.Rngs], nnx.Module], tx: Any, seeds_R: np.ndarray,
                 hparams: Mapping[str, np.ndarray]) -> train_lib.TrainState:
  """The R runs' initial `train.TrainState`s (parameters, optimizer state, each run's injected
  hyperparameters) from ONE compiled program, the same RNG calls as `init_params` + `train.init_state`
  (so the same bits as running them op by op, which compiled ~20 one-op programs per run count).

  Memoised by the traced program's text, not by ``make_model``: a task hands each group a fresh
  closure, and the graph alone does not fix the initial values (a ``make_model`` may close over
  pretrained weights). Closed-over arrays are the program's arguments, so groups of the same shapes
  compile it once whatever their seeds, hyperparameters or those arrays' values; tracing costs
  milliseconds."""

  def init(seeds, values):
    keys = jax.vmap(jax.random.PRNGKey)(seeds)
    params = jax.vmap(lambda key: nnx.split(make_model(nnx.Rngs(params=key)))[1])(keys)

    def one(p, seed, h):
      state = train_lib.init_state(p, {}, tx, seed)
      return state.replace(opt_state=train_lib.with_hyperparams(state.opt_state, h))

    return jax.vmap(one)(params, seeds, values)

  args = (np.asarray(seeds_R, np.uint32), {k: np.asarray(v) for k, v in hparams.items()})
  closed, out_shapes = jax.make_jaxpr(init, return_shape=True)(*args)
  out_tree = jax.tree.structure(out_shapes)
  # The text names every operation, literal and shape (consts by shape only); the trees fix the order.
  key = (str(closed.jaxpr), jax.tree.structure(args), out_tree)
  program = _INIT_PROGRAMS.get(key)
  if program is None:
    jaxpr = closed.jaxpr

    def init_states(consts, *flat):
      return jax.core.eval_jaxpr(jaxpr, consts, *flat)

    program = _INIT_PROGRAMS[key] = jax.jit(init_states)
    if len(_INIT_PROGRAMS) > _INIT_PROGRAMS_MAX:
      _INIT_PROGRAMS.popitem(last=False)
  else:
    _INIT_PROGRAMS.move_to_end(key)
  return jax.tree.unflatten(out_tree, program(list(closed.consts), *jax.tree.leaves(args)))


@jax.jit
def _take_runs(tree: Any, idx_R: jax.Array) -> Any:
  """``tree``'s runs in the order ``idx_R``: one program per tree of shapes, shared by every group."""
  return jax.tree.map(lambda a: a[idx_R], tree)


@jax.jit
def _keep_better(better_R: jax.Array, new: Any, best: Any) -> Any:
  """Run r's leaves from ``new`` where ``better_R[r]``, else from ``best``: the selection's bookkeeping
  as one program (a fresh buffer even where every run is better: the state it reads is donated)."""
  return jax.tree.map(lambda n, b: jnp.where(better_R.reshape((-1,) + (1,) * (n.ndim - 1)), n, b), new, best)


def _to_device(tree: Any) -> Any:
  """Host arrays onto the device by a transfer (``jnp.asarray`` compiles a program per shape and dtype);
  dtypes are canonicalised as ``jnp.asarray`` does (int64 -> int32 without x64)."""
  return jax.device_put(jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), tree))


def chunk_steps_for(num_steps: int) -> int:
  """Steps per host visit: at least 20 progress updates a run, at most 100 steps apart."""
  return max(1, min(100, num_steps // 20 or 1))


@dataclasses.dataclass
class VmapValidation:
  """Model selection for `train_vmap`: the holdout, each run's targets on it, and the evaluated steps.

  Filled in by `train_vmap`: ``rows[r]`` the evaluations of run r,
  ``selected_steps[r]`` its chosen step.
  """

  select: selection_lib.Selection
  steps: Sequence[int]
  inputs: Mapping[str, np.ndarray]
  targets_RxNxC: np.ndarray
  rows: list[list[dict[str, float]]] = dataclasses.field(default_factory=list)
  selected_steps: list[int | None] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _VmapProgram:
  """The jitted programs of `train_vmap` for one model graph, loss, optimizer, step count and run count
  (``apply`` is the graph's alone, `_vmap_apply`: every loss's groups share it).

  ``tx`` keeps `train.INJECTED_HPARAMS` in its state (``make_optimizer(...,
  inject=True)``): the program reads each run's from its slice of the states.
  """

  tx: Any
  run_steps: Callable[..., Any]
  apply: Callable[..., Any]
  step_costs: dict[str, dict[str, float | int]] = dataclasses.field(default_factory=dict)


def _opt_key(opt: schema.OptimizerConfig) -> str:
  """The optimizer config as a hashable, canonical string, without `train.INJECTED_HPARAMS`: the program
  reads those from the state, so every learning rate, weight decay and warm-up shares one compile. Every
  field is in it (`config.to_dict`, defaults filled), so equal settings give equal strings."""
  plain = {k: v for k, v in schema.to_dict(opt).items() if k not in train_lib.INJECTED_HPARAMS}
  return json.dumps(plain, sort_keys=True)


@functools.lru_cache(maxsize=32)
def _vmap_program(graphdef: Any, loss_fn: losses_lib.LossFn | tuple[losses_lib.LossFn, ...], opt_key: str,
                  num_steps: int, num_runs: int, share: int = 1) -> _VmapProgram:
  """Built once per (graph, loss, optimizer, steps, runs): every group of an experiment with the same
  ones (the methods of one loss, the weak ensemble's members, a rerun) reuses the traced and compiled
  programs instead of compiling its own. ``losses.get`` returns one object per name and hparams.
  The injected hyperparameters get placeholders here; `train_vmap` sets each run's in its state.

  ``share``: runs per batch order (`_shared_orders`). Runs r with the same ``r // share`` read the same
  batches: their inputs are gathered once, and the model sees them unbatched across those runs, so a
  first layer of ``share`` runs is one product ``[B, D] x [D, share * H]`` rather than ``share`` thin
  ones (on CPU, a grid of 16 settings x 5 seeds of a linear head trains ~8x faster per run-step).

  ``loss_fn`` a tuple of losses (a loss table): ``run_steps`` takes ``loss_index`` and trains with
  that loss through `jax.lax.switch`. The index is the same for every run of a call, so the switch stays
  a conditional that runs one branch, and every loss of the table shares one compiled loop."""
  # Placeholders for the injected hyperparameters (learning rate 1, the defaults' weight decay and warm-up).
  opt = schema.OptimizerConfig(**json.loads(opt_key), learning_rate=1.0)
  tx, schedule = train_lib.make_optimizer(opt, num_steps, inject=True)

  def apply_fn(params, frozen, batch_inputs, rng):
    del frozen, rng
    return nnx.merge(graphdef, params)(**batch_inputs)

  def run_steps(states, start, stop, order_SxUxB, inputs, targets, weights=None, loss_index=None):
    """Steps [start, stop) of every run. The bounds are traced values, so every
    chunk (the short last one too) reuses one compiled program. ``order_SxUxB``:
    the batches of the U = R / share distinct orders (run r reads order r //
    share). ``weights``: ``[R, N]`` row weights in each run's loss (a filter's
    mask), or None (all 1)."""

    if isinstance(loss_fn, tuple):
      branches = [lambda lg, tg, w, p, f=f: f(lg, tg, where=w, progress=p) for f in loss_fn]

      def step_loss(logits, targets, *, where=None, progress=None):
        return jax.lax.switch(loss_index, branches, logits, targets, where, progress)
    else:
      step_loss = loss_fn

    def one_run(state, inputs_B, idx_B, targets_NxC, weights_N=None):
      batch = {
          "inputs": inputs_B,
          "targets": targets_NxC[idx_B],
          "mask": jnp.ones(idx_B.shape, jnp.float32) if weights_N is None else weights_N[idx_B],
      }
      return train_lib.train_step(  # The reported lr: this run's, from its own hyperparameters.
          state, batch, apply_fn=apply_fn, loss_fn=step_loss, tx=tx, num_steps=num_steps,
          schedule=functools.partial(schedule, opt_state=state.opt_state),
      )

    def body(t, carry):
      states, _, first_bad = carry
      idx_UxB = order_SxUxB[t]
      inputs_UxB = jax.vmap(lambda idx: jax.tree.map(lambda x: x[idx], inputs))(idx_UxB)  # Once per order.
      if share == 1:
        states, metrics = jax.vmap(one_run)(states, inputs_UxB, idx_UxB, targets, weights)
      else:  # [R, ...] -> [U, share, ...]: the inner vmap over the runs of one order, its batch unbatched.
        split = lambda a: a.reshape(num_runs // share, share, *a.shape[1:])
        inner = jax.vmap(one_run, in_axes=(0, None, None, 0, 0))
        states, metrics = jax.vmap(inner)(jax.tree.map(split, states), inputs_UxB, idx_UxB,
                                          *jax.tree.map(split, (targets, weights)))
        states, metrics = jax.tree.map(lambda a: a.reshape(num_runs, *a.shape[2:]), (states, metrics))
      bad = ~jnp.isfinite(metrics["loss"])
      first_bad = jnp.where(bad & (first_bad < 0), t + 1, first_bad)
      return states, {k: metrics[k].astype(jnp.float32) for k in VMAP_METRICS}, first_bad

    init = (states, {k: jnp.zeros(num_runs, jnp.float32) for k in VMAP_METRICS}, jnp.full(num_runs, -1, jnp.int32))
    return jax.lax.fori_loop(start, stop, body, init)

  return _VmapProgram(tx=tx, run_steps=jax.jit(run_steps, donate_argnums=(0,)), apply=_vmap_apply(graphdef))


@functools.lru_cache(maxsize=32)
def _vmap_apply(graphdef: Any) -> Callable[..., Any]:
  """``apply(params_R, inputs) -> logits [R, N, C]``, one jitted function per graph: prediction does not
  depend on the loss, optimizer or step count, so the groups of every loss share its compiled programs."""

  @jax.jit
  def apply(params_R, inputs):
    return jax.vmap(lambda p: nnx.merge(graphdef, p)(**inputs))(params_R)

  return apply


def _shared_orders(order_SxRxB: np.ndarray) -> tuple[np.ndarray | None, int]:
  """``(perm, share)``: runs that read the same batches (the same seed over the same split), grouped.

  When every distinct order is read by the same number ``share > 1`` of runs
  (a grid of settings x seeds, or noise rates x seeds), ``perm`` lists the
  runs order by order (first-seen first, the given order within one);
  otherwise ``(None, 1)``: each run keeps its own gather.
  """
  groups: dict[bytes, list[int]] = {}
  for r in range(order_SxRxB.shape[1]):
    groups.setdefault(np.ascontiguousarray(order_SxRxB[:, r]).tobytes(), []).append(r)
  sizes = {len(g) for g in groups.values()}
  if len(sizes) != 1 or sizes == {1}:
    return None, 1
  return np.concatenate([np.asarray(g) for g in groups.values()]), sizes.pop()


def train_vmap(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    data: stream_lib.StackedStreams,
    *,
    loss_fn: losses_lib.LossFn,
    opt: schema.OptimizerConfig,
    num_steps: int,
    chunk_steps: int | None = None,
    desc: str = "vmap",
    progress: bool = True,
    on_chunk: ChunkCallback | None = None,
    validation: VmapValidation | None = None,
    run_history: list[list[dict[str, float]]] | None = None,
    step_cost: dict[str, float | int] | None = None,
    hparams: Mapping[str, Sequence[float]] | None = None,
    loss_table: Sequence[losses_lib.LossFn] | None = None,
) -> tuple[Callable[[Any, Mapping[str, jax.Array]], jax.Array], Any, list[dict[str, float]]]:
  """Trains R runs together; run r uses ``data.seeds[r]``, its targets and its order.

  ``hparams``: ``{name: [R values]}`` of `train.INJECTED_HPARAMS` (see
  `group_optimizer`), run r training at its own; a name left out (or None)
  takes ``opt``'s value. They live in the optimizer state, so the compiled
  program is the same whatever they are.

  Returns ``(apply, params_R, history)``: ``apply(params_R, inputs)`` gives
  logits ``[R, N, C]`` and ``history`` holds the run-mean loss per chunk.
  With ``validation``, chunks also end at its steps, and each run returns the
  parameters of its best-scoring step (the earliest of equal scores).
  ``run_history``: when given, ``run_history[r]`` gets run r's `VMAP_METRICS`
  at each chunk end (fetched with the loss the loop already brings back).
  ``step_cost``: when given, gets `cost.compiled_cost` of ONE step of all R
  runs (``flops``, ``bytes_accessed``, ``peak_bytes``), read from the chunk
  loop's own compiled program (XLA counts a loop's body once): no extra compile.
  ``loss_table``: losses that share this group's training loop (``loss_fn`` among them, by identity, as
  `losses.get` returns one object per name and hparams): the loop is compiled once for the table and
  picks ``loss_fn`` by a traced index, so the groups of an experiment that differ only in the loss
  compile one program, not one each. Then ``step_cost`` is that of ``loss_fn``'s own step (its program
  traced and costed, not compiled), since XLA would count every branch of the conditional.
  """
  schema.expect(opt, schema.OptimizerConfig, "opt")
  num_runs = len(data.seeds)
  chunk_steps = chunk_steps or chunk_steps_for(num_steps)
  # Runs that read the same batches train side by side in the program (`_vmap_program`'s ``share``):
  # the program holds them in ``perm`` order, and everything the caller sees is in the caller's order.
  perm, share = _shared_orders(data.order_SxRxB)
  inv = None if perm is None else np.argsort(perm)
  ordered = (lambda a: a) if perm is None else (lambda a: np.asarray(a)[perm])
  seeds = tuple(int(s) for s in ordered(np.asarray(data.seeds)))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))
  table = tuple(loss_table or ())
  switched = len(table) > 1 and any(f is loss_fn for f in table)
  program = _vmap_program(graphdef, table if switched else loss_fn, _opt_key(opt), int(num_steps), num_runs, share)
  tx, run_steps, apply = program.tx, program.run_steps, program.apply
  if switched:  # The same loop for every loss of the table; this group's loss by its (traced) index.
    index = next(i for i, f in enumerate(table) if f is loss_fn)
    run_steps = functools.partial(run_steps, loss_index=jnp.asarray(index, jnp.int32))

  def in_caller_order(tree):  # Host arrays by numpy, device arrays by one shared program (no op-by-op gathers).
    if inv is None:
      return tree
    host = all(isinstance(a, np.ndarray) for a in jax.tree.leaves(tree))
    return jax.tree.map(lambda a: a[inv], tree) if host else _take_runs(tree, inv.astype(np.int32))

  values = {k: getattr(opt, k) for k in train_lib.INJECTED_HPARAMS}
  values = {k: np.asarray((hparams or {}).get(k, [v] * num_runs), np.int32 if k == "warmup_steps" else np.float32)
            for k, v in values.items()}
  for k, v in values.items():
    if v.shape != (num_runs,):
      raise ValueError(f"hparams[{k!r}] has {v.size} values for {num_runs} runs.")
  values = {k: ordered(v) for k, v in values.items()}
  states = _init_states(make_model, tx, np.asarray(seeds, np.uint32), values)

  # Onto the device by transfers, in the dtypes the loop program was compiled for.
  inputs_dev = _to_device(dict(data.inputs))
  targets_dev = _to_device(np.asarray(ordered(data.targets_RxNxC), np.float32))
  order = data.order_SxRxB if perm is None else np.asarray(data.order_SxRxB)[:, perm]
  order_dev = _to_device(order[:, ::share])  # [S, U, B]: one row per distinct order.
  # Row weights always go in (ones without a filter): one program for weighted and unweighted groups.
  weights_dev = _to_device(np.ones(data.targets_RxNxC.shape[:2], np.float32) if data.weights_RxN is None
                           else np.asarray(ordered(data.weights_RxN), np.float32))
  if step_cost is not None:
    # The loop program the chunks run, compiled here once (the calls below reuse it): XLA counts a
    # loop's body once, so its cost is one step of every run (plus the carry's few zeros).
    args = (states, 0, chunk_steps, order_dev, inputs_dev, targets_dev, weights_dev)
    if switched:  # Memory from the loop the chunks run; FLOPs from this loss's own loop, traced and not
      # compiled, as XLA costs a conditional as its costliest branch.
      step_cost.update(cost_lib.compiled_cost(program.run_steps, *args, loss_index=run_steps.keywords["loss_index"]))
      own = _vmap_program.__wrapped__(graphdef, loss_fn, _opt_key(opt), int(num_steps), num_runs, share)
      step_cost["flops"] = cost_lib.lowered_flops(own.run_steps, *args)
    else:
      step_cost.update(cost_lib.compiled_cost(run_steps, *args))
  history = []
  # Chunk ends: every chunk_steps, and each evaluated step (the bounds are traced: no recompile).
  eval_steps = set(validation.steps) if validation is not None else set()
  stops = sorted(set(range(chunk_steps, num_steps, chunk_steps)) | eval_steps | {num_steps})
  best_params, best_R = None, np.full(num_runs, -np.inf)
  if validation is not None:
    validation.rows = [[] for _ in range(num_runs)]
    validation.selected_steps = [None] * num_runs
    val_inputs_dev = _to_device(dict(validation.inputs))
  with progress_lib.Progress(num_steps, desc, unit="step", enabled=progress) as bar:
    for start, stop in zip([0] + stops[:-1], stops):
      states, metrics_R, first_bad = run_steps(states, start, stop, order_dev, inputs_dev, targets_dev, weights_dev)
      metrics_R, first_bad = in_caller_order(jax.device_get((metrics_R, first_bad)))  # One transfer per chunk.
      loss_R = metrics_R["loss"]
      if (first_bad >= 0).any():
        run = int(np.argmax(first_bad >= 0))
        raise train_lib.NonFiniteError(
            f"non-finite loss at step {first_bad[run]} of run {run} (seed {data.seeds[run]}) in {desc}; "
            "lower the learning rate or check the features and targets for NaN."
        )
      history.append({"step": stop, "loss": float(np.mean(loss_R))})
      if run_history is not None:
        for r in range(num_runs):
          run_history[r].append({"step": stop, **{k: float(v[r]) for k, v in metrics_R.items()}})
      bar.update(stop - start)
      bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
      params_R = in_caller_order(states.params) if (on_chunk is not None or stop in eval_steps) else None
      if on_chunk is not None:
        on_chunk(stop, apply, params_R)
      if stop in eval_steps:
        logits_R = np.asarray(apply(params_R, val_inputs_dev))
        scores = np.array([validation.select.score(logits_R[r], validation.targets_RxNxC[r]) for r in range(num_runs)])
        better = scores > best_R
        for r in range(num_runs):
          validation.rows[r].append({"step": stop, validation.select.name: float(scores[r])})
          if better[r]:
            validation.selected_steps[r] = stop
        best_R = np.where(better, scores, best_R)
        # A copy at the first evaluation (the state is donated to the next chunk), then the better runs'.
        best_params = (_keep_better(np.ones(num_runs, bool), params_R, params_R) if best_params is None
                       else _keep_better(better, params_R, best_params))
  return apply, (in_caller_order(states.params) if best_params is None else best_params), history
