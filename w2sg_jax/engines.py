"""The one student-training interface: `train_runs` trains a group of runs and returns their logits.

A *run* is one model trained from one label store (weak labels, noisy weak
labels, or one-hot ground truth) with one seed. Every run reads its labels
through a `LabelStream` in the order of `labels.stream.batch_indices`, and
every update is `train.train_step`; the engines only differ in how runs share
the machine:

* ``vmap``: the runs of a group train side by side as one compiled program
  (``vmap`` over runs inside a ``fori_loop`` over steps), with the data on the
  device. For heads on cached features, where a step takes microseconds.
* ``data_parallel``: one run at a time over every device (`train.Trainer`),
  batches streamed from the store on host threads, checkpointed so that a
  killed run resumes. For any model, fine-tuning included.

The old names ``sweep`` and ``fit`` still work, with a deprecation message.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

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
  """One run: its seed, the store it learns from, and (data_parallel) where it checkpoints."""

  seed: int
  store: WeakLabelStore
  work_dir: str | None = None


@dataclasses.dataclass
class TrainedRuns:
  """Logits of every run on every evaluation split, and each run's logged metrics."""

  logits: dict[str, list[np.ndarray]]  # split -> [run] -> [N, C]
  history: list[list[dict[str, float]]]
  # Under `train.select` (see `selection`): each run's evaluated step and score, and its chosen step.
  validation: list[list[dict[str, float]]] = dataclasses.field(default_factory=list)
  selected_steps: list[int | None] = dataclasses.field(default_factory=list)


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
    train_cfg: ml_collections.ConfigDict | Mapping[str, Any],
    trainable: Any = nnx.Param,
    desc: str = "train",
    progress: bool = True,
    on_chunk: ChunkCallback | None = None,
) -> TrainedRuns:
  """Trains every run of ``runs`` on ``train_inputs`` and predicts ``eval_inputs``.

  Args:
    runs: the runs; each one's store must list ``train_ids`` in order.
    engine: ``vmap`` or ``data_parallel`` (see the module docstring).
    make_model: ``rngs -> nnx.Module``, called with each run's seed.
    train_ids, train_inputs: the training split's ids and model inputs.
    eval_inputs: ``{split: inputs}`` to predict after training.
    loss_fn: from ``losses.get``.
    train_cfg: ``batch_size``, ``epochs`` or ``num_steps``, ``optimizer``,
      ``select`` (model selection on a holdout of the training split, see
      `w2sg_jax.selection`), and (data_parallel) ``sharding``, ``save_every``,
      ``log_every``, ``eval_batch_size``.
    trainable: NNX filter of the parameters that train (vmap: all of them).
    on_chunk: vmap only; ``on_chunk(step, apply, params_R)`` at every chunk
      boundary, e.g. to evaluate a trajectory without retraining.

  Returns:
    `TrainedRuns`, runs in the order given.
  """
  engine = resolve_engine(engine)
  cfg = train_cfg
  batch_size = int(cfg["batch_size"])
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
  num_steps = stream_lib.num_steps_for(len(train_ids), batch_size, cfg.get("epochs", 1), cfg.get("num_steps", 0))
  eval_steps = select.eval_steps(num_steps, len(train_ids) // batch_size) if select.active else ()
  streams = [
      stream_lib.LabelStream(train_ids, train_inputs, r.store, batch_size=batch_size, num_steps=num_steps, seed=r.seed)
      for r in runs
  ]
  if engine == "vmap":
    if trainable is not nnx.Param:
      raise ValueError("the vmap engine trains every parameter; use engine='data_parallel' to freeze some.")
    validation = None
    if select.active:
      validation = VmapValidation(select=select, steps=eval_steps, inputs=val_inputs,
                                  targets_RxNxC=np.stack(val_targets))
    run_history = [[] for _ in runs]
    try:
      apply, params_R, _ = train_vmap(
          make_model, stream_lib.stack(streams), loss_fn=loss_fn, opt=cfg["optimizer"], num_steps=num_steps,
          desc=desc, progress=progress, on_chunk=on_chunk, validation=validation, run_history=run_history,
      )
    except train_lib.NonFiniteError as e:
      raise _group_error(e, desc, runs, lost=runs) from e
    logits = {split: list(np.asarray(apply(params_R, jax.tree.map(jnp.asarray, dict(inputs)))))
              for split, inputs in eval_inputs.items()}
    out = TrainedRuns(logits=logits, history=run_history)
    if validation is not None:
      out.validation = validation.rows
      out.selected_steps = validation.selected_steps
    return out
  out = TrainedRuns(logits={split: [] for split in eval_inputs}, history=[])
  for i, (run, stream) in enumerate(zip(runs, streams)):
    validate = None
    if select.active:
      validate = (select, eval_steps, val_inputs, val_targets[i])
    try:
      logits, result = _train_data_parallel(
          make_model, stream, eval_inputs, loss_fn=loss_fn, cfg=cfg, trainable=trainable, work_dir=run.work_dir,
          desc=f"{desc} seed {run.seed}", progress=progress, validate=validate,
      )
    except train_lib.NonFiniteError as e:
      raise _group_error(e, desc, runs, lost=runs[i:]) from e
    for split in eval_inputs:
      out.logits[split].append(logits[split])
    out.history.append(result.history)
    if select.active:
      out.validation.append(result.validation)
      out.selected_steps.append(result.selected_step)
  return out


def _run_name(run: RunSpec) -> str:
  noise = run.store.noise if run.store is not None else None
  return f"seed {run.seed}, noise {noise.rate:g}" if noise is not None else f"seed {run.seed}"


def _group_error(e: Exception, desc: str, runs: Sequence[RunSpec], lost: Sequence[RunSpec]) -> Exception:
  """The NaN message with the group it stopped and the runs that did not finish."""
  return train_lib.NonFiniteError(
      f"{e} The group '{desc}' stopped; its unfinished runs ({'; '.join(_run_name(r) for r in lost)}) were not "
      "saved, and every group that finished before it is kept."
  )


# ------------------------------------------------------------- data parallel


def _train_data_parallel(make_model, stream, eval_inputs, *, loss_fn, cfg, trainable, work_dir, desc, progress,
                         validate=None):
  """One run over every device, checkpointed in ``work_dir`` (resumed when a checkpoint is there).

  ``validate``: ``(Selection, steps, val_inputs, val_targets)`` to select the
  best evaluated step instead of the last.
  """
  mesh = parallel.make_mesh()
  parallel.check_batch_size(stream.batch_size, mesh)
  tx, schedule = train_lib.make_optimizer(cfg["optimizer"], stream.num_steps)
  apply_fn, state, state_sharding = train_lib.create_state(
      make_model, tx=tx, seed=stream.seed, mesh=mesh, trainable=trainable, sharding=str(cfg.get("sharding", "auto")),
  )
  trainer = train_lib.Trainer(apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, schedule=schedule,
                              num_steps=stream.num_steps, mesh=mesh, state_sharding=state_sharding)
  if work_dir is None:
    raise ValueError("the data_parallel engine needs a work_dir per run for its checkpoints.")

  def batches(position):
    return stream.host_batches(position, process_index=jax.process_index(), process_count=jax.process_count())

  from w2sg_jax.config import TrainConfig  # pylint: disable=g-import-not-at-top (the one home of the default)

  eval_batch = int(cfg.get("eval_batch_size", TrainConfig.eval_batch_size))
  validation = None
  if validate is not None:
    select, steps, val_inputs, val_targets = validate
    validation = train_lib.Validation(
        name=select.name, steps=frozenset(steps),
        evaluate=lambda state: select.score(trainer.predict(state, val_inputs, eval_batch), val_targets))
  result = train_lib.fit(
      trainer, state, batches, num_steps=stream.num_steps, workdir=work_dir,
      save_every=int(cfg.get("save_every", 500)), log_every=int(cfg.get("log_every", 50)), desc=desc,
      progress=progress, validation=validation,
  )
  logits = {split: trainer.predict(result.state, inputs, eval_batch, desc=f"{desc}: predict {split}" if progress else None)
            for split, inputs in eval_inputs.items()}
  return logits, result


# ---------------------------------------------------------------------- vmap


def init_params(make_model: Callable[[nnx.Rngs], nnx.Module], seeds: Sequence[int]):
  """Stacked initial parameters, one slice per seed, plus the shared graph."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))

  def one(key):
    return nnx.split(make_model(nnx.Rngs(params=key)))[1]

  keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
  return graphdef, jax.vmap(one)(keys)


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


def train_vmap(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    data: stream_lib.StackedStreams,
    *,
    loss_fn: losses_lib.LossFn,
    opt: Mapping[str, Any],
    num_steps: int,
    chunk_steps: int | None = None,
    desc: str = "vmap",
    progress: bool = True,
    on_chunk: ChunkCallback | None = None,
    validation: VmapValidation | None = None,
    run_history: list[list[dict[str, float]]] | None = None,
) -> tuple[Callable[[Any, Mapping[str, jax.Array]], jax.Array], Any, list[dict[str, float]]]:
  """Trains R runs together; run r uses ``data.seeds[r]``, its targets and its order.

  Returns ``(apply, params_R, history)``: ``apply(params_R, inputs)`` gives
  logits ``[R, N, C]`` and ``history`` holds the run-mean loss per chunk.
  With ``validation``, chunks also end at its steps, and each run returns the
  parameters of its best-scoring step (the earliest of equal scores).
  ``run_history``: when given, ``run_history[r]`` gets run r's `VMAP_METRICS`
  at each chunk end (fetched with the loss the loop already brings back).
  """
  seeds = data.seeds
  num_runs = len(seeds)
  chunk_steps = chunk_steps or chunk_steps_for(num_steps)
  tx, schedule = train_lib.make_optimizer(opt, num_steps)
  graphdef, params = init_params(make_model, seeds)

  def apply_fn(params, frozen, batch_inputs, rng):
    del frozen, rng
    return nnx.merge(graphdef, params)(**batch_inputs)

  states = jax.vmap(lambda p, s: train_lib.init_state(p, {}, tx, s))(params, jnp.asarray(seeds, jnp.uint32))

  def run_steps(states, start, stop, order_SxRxB, inputs, targets):
    """Steps [start, stop) of every run. The bounds are traced values, so every
    chunk (the short last one too) reuses one compiled program."""

    def one_run(state, idx_B, targets_NxC):
      batch = {
          "inputs": jax.tree.map(lambda x: x[idx_B], inputs),
          "targets": targets_NxC[idx_B],
          "mask": jnp.ones(idx_B.shape, jnp.float32),
      }
      return train_lib.train_step(
          state, batch, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, schedule=schedule, num_steps=num_steps
      )

    def body(t, carry):
      states, _, first_bad = carry
      states, metrics = jax.vmap(one_run)(states, order_SxRxB[t], targets)
      bad = ~jnp.isfinite(metrics["loss"])
      first_bad = jnp.where(bad & (first_bad < 0), t + 1, first_bad)
      return states, {k: metrics[k].astype(jnp.float32) for k in VMAP_METRICS}, first_bad

    init = (states, {k: jnp.zeros(num_runs, jnp.float32) for k in VMAP_METRICS}, jnp.full(num_runs, -1, jnp.int32))
    return jax.lax.fori_loop(start, stop, body, init)

  run_steps = jax.jit(run_steps, donate_argnums=(0,))

  @jax.jit
  def apply(params_R, inputs):
    return jax.vmap(lambda p: apply_fn(p, None, inputs, None))(params_R)

  inputs_dev = jax.tree.map(jnp.asarray, dict(data.inputs))
  targets_dev = jnp.asarray(data.targets_RxNxC, jnp.float32)
  order_dev = jnp.asarray(data.order_SxRxB)
  history = []
  # Chunk ends: every chunk_steps, and each evaluated step (the bounds are traced: no recompile).
  eval_steps = set(validation.steps) if validation is not None else set()
  stops = sorted(set(range(chunk_steps, num_steps, chunk_steps)) | eval_steps | {num_steps})
  best_params, best_R = None, np.full(num_runs, -np.inf)
  if validation is not None:
    validation.rows = [[] for _ in range(num_runs)]
    validation.selected_steps = [None] * num_runs
    val_inputs_dev = jax.tree.map(jnp.asarray, dict(validation.inputs))
  with progress_lib.Progress(num_steps, desc, unit="step", enabled=progress) as bar:
    for start, stop in zip([0] + stops[:-1], stops):
      states, metrics_R, first_bad = run_steps(states, start, stop, order_dev, inputs_dev, targets_dev)
      metrics_R, first_bad = jax.device_get((metrics_R, first_bad))  # One transfer per chunk.
      loss_R = metrics_R["loss"]
      if (first_bad >= 0).any():
        run = int(np.argmax(first_bad >= 0))
        raise train_lib.NonFiniteError(
            f"non-finite loss at step {first_bad[run]} of run {run} (seed {seeds[run]}) in {desc}; "
            "lower the learning rate or check the features and targets for NaN."
        )
      history.append({"step": stop, "loss": float(np.mean(loss_R))})
      if run_history is not None:
        for r in range(num_runs):
          run_history[r].append({"step": stop, **{k: float(v[r]) for k, v in metrics_R.items()}})
      bar.update(stop - start)
      bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
      if on_chunk is not None:
        on_chunk(stop, apply, states.params)
      if stop in eval_steps:
        logits_R = np.asarray(apply(states.params, val_inputs_dev))
        scores = np.array([validation.select.score(logits_R[r], validation.targets_RxNxC[r]) for r in range(num_runs)])
        better = scores > best_R
        for r in range(num_runs):
          validation.rows[r].append({"step": stop, validation.select.name: float(scores[r])})
          if better[r]:
            validation.selected_steps[r] = stop
        best_R = np.where(better, scores, best_R)
        if best_params is None:
          best_params = jax.tree.map(jnp.copy, states.params)  # The state is donated to the next chunk.
        else:
          keep = jnp.asarray(better)
          best_params = jax.tree.map(
              lambda p, b: jnp.where(keep.reshape((-1,) + (1,) * (p.ndim - 1)), p, b), states.params, best_params)
  return apply, (states.params if best_params is None else best_params), history
