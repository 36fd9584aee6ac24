"""The lab: the runner, and the sections' computations on groups of vmapped head runs.

`run` reuses the pipeline's stages (data, weak model, ceiling, students) for
``misfit_gain`` and ``equivalence``, trains the other sections' heads with
`Lab` (one vmapped program per (section, loss), each group a cache entry), fits
them (`w2sg_jax.theory.fitting`) and renders theory.md and the figures
(`w2sg_jax.theory.render`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from w2sg_jax import cache as cache_lib
from w2sg_jax import config as schema
from w2sg_jax import engines
from w2sg_jax import losses as losses_lib
from w2sg_jax import metrics as metrics_lib
from w2sg_jax import stages as stages_lib
from w2sg_jax.labels import stream as stream_lib
from w2sg_jax.labels.store import WeakLabelStore
from w2sg_jax.log import log
from w2sg_jax.theory import render
from w2sg_jax.theory.fitting import fits
from w2sg_jax.theory.measures import (PROB_FLOOR, disagreement_matrix, gain_own, misfit, own_divergence,
                                      seed_disagreement)

__all__ = [
    "FORMAT_VERSION",
    "Lab",
    "LabRun",
    "equivalence_section",
    "fixed_step_sections",
    "misfit_gain_section",
    "run",
    "stack_prefixes",
    "trajectory_section",
]

FORMAT_VERSION = 1  # Of the lab's cache entries; bump when their content changes.


def stack_prefixes(streams: Sequence[stream_lib.LabelStream],
                   inputs: Mapping[str, np.ndarray]) -> stream_lib.StackedStreams:
  """Stacks runs that learn from different-size prefixes of one split, for one vmapped program.

  Run r's stream holds the first n_r examples and its order indexes them
  (``batch_indices(n_r, ...)``), so it can read the full split's ``inputs``
  unchanged; its targets are padded to the split's N with rows it never reads.
  ``stream_lib.stack`` is the special case where every n_r = N.
  """
  if not streams:
    raise ValueError("stack_prefixes() needs at least one stream.")
  n_total = len(next(iter(inputs.values())))
  first = streams[0]
  for s in streams:
    if (s.batch_size, s.num_steps) != (first.batch_size, first.num_steps):
      raise ValueError("streams of one group must share batch_size and num_steps.")
    if len(s.store) > n_total:
      raise ValueError(f"a stream of {len(s.store)} examples is longer than the split ({n_total}).")
    for k, v in s.inputs.items():
      if k not in inputs or len(v) != len(s.store) or not np.array_equal(v[:1], inputs[k][:1]):
        raise ValueError(f"stream input {k!r} is not a prefix of the split's inputs.")
  c = first.targets.shape[-1]
  targets = np.full((len(streams), n_total, c), 1.0 / c, np.float32)
  for r, s in enumerate(streams):
    targets[r, : len(s.store)] = s.targets
  return stream_lib.StackedStreams(
      inputs=dict(inputs), targets_RxNxC=targets, order_SxRxB=np.stack([s.order for s in streams], 1),
      seeds=tuple(s.seed for s in streams),
  )


# ======================================================================
# The lab: groups of head runs on the vmapped engine, cached
# ======================================================================


@dataclasses.dataclass(frozen=True)
class LabRun:
  """One head: its seed, the (full-split) store it learns from, and how many of its first rows."""

  seed: int
  store: WeakLabelStore
  n: int


class Lab:
  """Trains groups of student heads for the theory sections, one vmapped program per (section, loss)."""

  def __init__(self, config: schema.Experiment, stages: stages_lib.Stages, data: stages_lib.DataResult):
    self.config = config
    self.stages = stages
    self.data = data
    self.train_cfg = config.student.train
    self.batch_size = int(self.train_cfg.batch_size)
    train = data.splits["w2s_train"]
    self.n_train = len(train)
    self.student_steps = self.train_cfg.steps_for(self.n_train)  # `TrainConfig.steps_for`: the rule's one home.
    self.test_labels = np.asarray(data.splits["test"].labels)
    self.computed_groups = 0

  def hparams(self, loss: str) -> dict[str, Any]:
    return dict(self.config.student.loss_hparams.get(loss, {}))

  @functools.cached_property
  def loss_table(self) -> tuple[Any, ...]:
    """The lab's losses at their hparams: a section's groups of one shape share one compiled training loop
    (`engines.train_vmap`'s ``loss_table``), instead of one per loss."""
    return tuple(losses_lib.get(loss, **self.hparams(loss)) for loss in _theory_cfg(self.config).losses)

  def group(self, section: str, loss: str, runs: Sequence[LabRun], *, num_steps: int,
            trajectory_points: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Test predictions ``[R, N_test]`` of ``runs`` (and trajectory records), from the cache or trained now."""
    hparams = self.hparams(loss)
    components = {
        **self.stages._strong_components(self.data),  # pylint: disable=protected-access
        "lab_format": FORMAT_VERSION, "section": section, "loss": loss, "loss_hparams": hparams,
        "num_steps": int(num_steps), "trajectory_points": int(trajectory_points),
        "runs": [{"seed": int(r.seed), "labels": r.store.hash, "n": int(r.n)} for r in runs],
    }

    def produce(out_dir, _work_dir):
      preds, records = self._train(loss, hparams, runs, num_steps=num_steps, trajectory_points=trajectory_points,
                                   desc=f"theory {section} {loss} ({len(runs)} runs)")
      np.save(os.path.join(out_dir, "predictions.npy"), preds.astype(np.int8))
      with open(os.path.join(out_dir, "trajectory.json"), "w") as f:
        json.dump(records, f)
      self.computed_groups += 1
      return {"runs": len(runs)}

    entry = self.stages.cache.get_or_create("theory", components, produce)
    with open(entry.path("trajectory.json")) as f:
      records = json.load(f)
    return np.load(entry.path("predictions.npy")).astype(np.int32), records

  def predict(self, section: str, loss: str, requests: Sequence[tuple[LabRun, int]]) -> list[np.ndarray]:
    """Test predictions of ``[(run, num_steps), ...]``: each distinct request trains once, and the
    requests that share a step count train as one group."""
    out: list[np.ndarray | None] = [None] * len(requests)
    by_steps: dict[int, dict[tuple, list[int]]] = {}
    for i, (r, steps) in enumerate(requests):
      by_steps.setdefault(int(steps), {}).setdefault((r.store.hash, int(r.seed), int(r.n)), []).append(i)
    for steps, unique in by_steps.items():
      runs = [requests[idx[0]][0] for idx in unique.values()]
      preds, _ = self.group(section, loss, runs, num_steps=steps)
      for p, idx in zip(preds, unique.values()):
        for i in idx:
          out[i] = p
    return out

  def _train(self, loss, hparams, runs, *, num_steps, trajectory_points, desc):
    task, config = self.stages.task, self.config
    train, test = self.data.splits["w2s_train"], self.data.splits["test"]
    streams = []
    for r in runs:
      store = self.stages.prefix_store(r.store, r.n)
      inputs = {k: v[: r.n] for k, v in train.inputs["strong"].items()}
      streams.append(stream_lib.LabelStream(train.ids[: r.n], inputs, store, batch_size=self.batch_size,
                                            num_steps=num_steps, seed=r.seed))
    stacked = stack_prefixes(streams, train.inputs["strong"])
    test_inputs = jax.tree.map(jnp.asarray, dict(test.inputs["strong"]))
    records: list[dict[str, Any]] = []
    on_chunk, chunk_steps = None, None
    if trajectory_points:
      chunk_steps = max(1, math.ceil(num_steps / trajectory_points))
      on_chunk = self._trajectory_callback(loss, hparams, streams, stacked, test_inputs, records)
    apply, params_R, _ = engines.train_vmap(
        task.make_model("strong", config), stacked, loss_fn=losses_lib.get(loss, **hparams),
        opt=self.train_cfg.optimizer, num_steps=num_steps, chunk_steps=chunk_steps, desc=desc, on_chunk=on_chunk,
        loss_table=self.loss_table,
    )
    preds = np.asarray(jnp.argmax(apply(params_R, test_inputs), -1))
    return preds, records

  def _trajectory_callback(self, loss, hparams, streams, stacked, test_inputs, records):
    """``on_chunk``: test accuracy and the training misfit (own f, against the run's labels) of every run."""
    own, own_hp = own_divergence(loss, hparams)
    own_fn = losses_lib.get(own, **own_hp)
    n_max = max(len(s.store) for s in streams)
    n_R = jnp.asarray([len(s.store) for s in streams])
    train_inputs = jax.tree.map(lambda x: jnp.asarray(x[:n_max]), dict(stacked.inputs))
    targets = jnp.asarray(stacked.targets_RxNxC[:, :n_max])
    labels = jnp.asarray(self.test_labels)
    valid_RxN = jnp.arange(n_max)[None, :] < n_R[:, None]
    evaluate = None

    def on_chunk(step, apply, params_R):
      nonlocal evaluate
      if evaluate is None:
        @jax.jit
        def evaluate(params_R):
          acc = jnp.mean(jnp.argmax(apply(params_R, test_inputs), -1) == labels, -1)
          per_example = jax.vmap(lambda lg, t, w: own_fn(lg, t, where=w))(apply(params_R, train_inputs), targets,
                                                                           valid_RxN)
          return acc, per_example.sum(-1) / n_R
      acc, mis = (np.asarray(x) for x in evaluate(params_R))
      for r in range(len(streams)):
        records.append({"run": r, "step": int(step), "test_accuracy": float(acc[r]), "train_misfit": float(mis[r])})

    return on_chunk


# ======================================================================
# The sections
# ======================================================================


def _accuracy(preds_N: np.ndarray, labels_N: np.ndarray) -> float:
  return float(np.mean(np.asarray(preds_N) == np.asarray(labels_N)))


def misfit_gain_section(students: stages_lib.StudentRuns, weak: stages_lib.WeakResult,
                        data: stages_lib.DataResult, hparams_of: Callable[[str], dict]) -> tuple[list, dict]:
  """``misfit_gain`` rows from the pipeline's student runs, and their test predictions by (loss, noise, seed)."""
  labels = data.splits["test"].labels
  rows, preds = [], {}
  for run in students.runs:
    logits = np.load(os.path.join(run.cache_entry, stages_lib.TEST_LOGITS))
    weak_probs = weak.stores_for(run.seed)["test"].probs
    own, own_hp = own_divergence(run.loss, hparams_of(run.loss))
    weak_acc = _accuracy(np.argmax(weak_probs, -1), labels)
    rows.append({
        "loss": run.loss, "noise": float(run.noise), "seed": int(run.seed),
        "misfit_own": misfit(own, weak_probs, logits, **own_hp),
        "misfit_kl": run.misfit_kl,  # The student stage's, against the same weak labels (stages.run_metrics).
        "misfit_tv": run.misfit_tv,
        "gain_accuracy": float(run.test_accuracy - weak_acc),
        "gain_own": gain_own(own, weak_probs, logits, labels, **own_hp),
    })
    preds[(run.loss, float(run.noise), int(run.seed))] = np.argmax(logits, -1)
  return rows, preds


def equivalence_section(preds: Mapping[tuple[str, float, int], np.ndarray]) -> dict[str, Any]:
  """``{noise: {losses, disagreement (mean over seeds), seed_baseline (per loss)}}``."""
  out = {}
  for noise in sorted({k[1] for k in preds}):
    losses = list(dict.fromkeys(k[0] for k in preds if k[1] == noise))
    seeds = sorted({k[2] for k in preds if k[1] == noise})
    mats = [disagreement_matrix([preds[(l, noise, s)] for l in losses]) for s in seeds]
    out[f"{noise:g}"] = {
        "losses": losses,
        "disagreement": np.mean(mats, 0).round(6).tolist(),
        "seed_baseline": [seed_disagreement([preds[(l, noise, s)] for s in seeds]) for l in losses],
    }
  return out


def _theory_cfg(config: schema.Experiment) -> schema.TheoryConfig:
  """``config.theory``; the schema filled the defaults of a section or key the config leaves out."""
  if config.theory is None:
    raise ValueError("config.theory is missing; the theory lab reads it (experiments/tweets_theory.py shows one).")
  return config.theory


def fixed_step_sections(lab: Lab, clean: WeakLabelStore, weak_acc: float, ceiling_acc: float) -> tuple[list, list]:
  """``sample_complexity`` and ``noise_dose`` rows.

  Both sections train for the students' step count, so every run of a loss
  in either (each distinct (labels, seed, n) once) is one vmapped program:
  on a CPU the compilation, not the steps, is what a group costs.
  """
  from w2sg_jax.labels import noise as noise_lib

  th = _theory_cfg(lab.config)
  sc, nd = th.sample_complexity, th.noise_dose
  sizes = [int(n) for n in sc.sizes if int(n) <= lab.n_train]
  skipped = [int(n) for n in sc.sizes if int(n) > lab.n_train]
  if skipped:
    log.warning("theory: sample sizes %s exceed w2s_train (%d examples); skipped.", skipped, lab.n_train)
  sc_steps = int(sc.num_steps) or lab.student_steps
  kinds = {str(k): float(v) for k, v in nd.kinds.items()}
  noise_seed = int(lab.config.student.noise.seed)
  seeds = lab.stages.student_seeds
  sc_cells = [(float(rate), n, seed) for rate in sc.noise_rates for n in sizes for seed in seeds]
  nd_cells = [(kind, float(rate), seed) for kind in kinds for rate in nd.rates for seed in seeds]
  sc_rows, nd_rows = [], []
  for loss in th.losses:
    sc_runs = [LabRun(seed, lab.stages.noisy_store(clean, lab.stages.noise_spec(rate, seed)), n)
               for rate, n, seed in sc_cells]
    nd_runs = [LabRun(seed, lab.stages.noisy_store(clean, noise_lib.NoiseSpec(rate, kinds[kind], noise_seed)),
                      lab.n_train) for kind, rate, seed in nd_cells]
    requests = [(r, sc_steps) for r in sc_runs] + [(r, lab.student_steps) for r in nd_runs]
    preds = lab.predict("fixed_steps", loss, requests)
    for (rate, n, seed), p in zip(sc_cells, preds[: len(sc_runs)]):
      acc = _accuracy(p, lab.test_labels)
      sc_rows.append({"loss": loss, "noise": rate, "n": n, "seed": int(seed), "test_accuracy": acc,
                      "pgr": float(metrics_lib.pgr(acc, weak_acc, ceiling_acc))})
    for (kind, rate, seed), p in zip(nd_cells, preds[len(sc_runs):]):
      nd_rows.append({"loss": loss, "kind": kind, "rate": rate, "seed": int(seed),
                      "test_accuracy": _accuracy(p, lab.test_labels)})
  return sc_rows, nd_rows


def trajectory_section(lab: Lab, clean: WeakLabelStore) -> list:
  cfg = _theory_cfg(lab.config).trajectory
  n = min(int(cfg.n), lab.n_train)
  num_steps = stream_lib.num_steps_for(n, lab.batch_size, float(cfg.epochs))
  rows = []
  for loss in _theory_cfg(lab.config).losses:
    cells = [(float(rate), seed) for rate in cfg.noise_rates for seed in lab.stages.student_seeds]
    runs = [LabRun(seed, lab.stages.noisy_store(clean, lab.stages.noise_spec(rate, seed)), n) for rate, seed in cells]
    _, records = lab.group("trajectory", loss, runs, num_steps=num_steps, trajectory_points=int(cfg.points))
    for rec in records:
      rate, seed = cells[rec["run"]]
      rows.append({"loss": loss, "noise": rate, "seed": int(seed), "step": rec["step"],
                   "test_accuracy": rec["test_accuracy"], "train_misfit": rec["train_misfit"]})
  return rows


# ======================================================================
# The runner
# ======================================================================


def _validate(config: schema.Experiment) -> None:
  th = _theory_cfg(config)
  for loss in list(th.losses) + list(config.student.losses):
    own_divergence(loss, dict(config.student.loss_hparams.get(loss, {})))
  if engines.resolve_engine(str(config.student.engine)) != "vmap":
    raise ValueError("the theory lab trains heads on the vmapped engine; set student.engine='vmap'.")


def run(config: schema.Experiment, workdir: str) -> dict[str, Any]:
  """Runs the theory lab of ``config`` into ``workdir``: theory.json, theory.md and the figures.

  They are written with ``config.json`` at the end, as the pipeline's are (`w2sg_jax.workdir`).
  """
  from w2sg_jax import workdir as workdir_lib

  _validate(config)
  with workdir_lib.Outputs(workdir, config) as outputs:
    return _run(config, outputs)


def _run(config: schema.Experiment, outputs) -> dict[str, Any]:
  from w2sg_jax import tasks

  t_start = time.perf_counter()
  timings: dict[str, float] = {}
  staging = outputs.staging  # The report; moved into the workdir by `outputs.commit`.
  cache = cache_lib.Cache(os.path.abspath(config.cache_dir))
  cache.clean_orphans()
  task = tasks.get(config.task)
  stages = stages_lib.Stages(config, task, cache)

  def timed(name, fn):
    t0 = time.perf_counter()
    out = fn()
    timings[name] = time.perf_counter() - t0
    log.info("theory: %s done in %.1fs", name, timings[name])
    return out

  data = timed("data", stages.data)
  weak = timed("weak", lambda: stages.weak(data))
  ceiling = timed("ceiling", lambda: stages.ceiling(data))
  students = timed("students", lambda: stages.students(data, weak))
  hparams_of = lambda loss: dict(config.student.loss_hparams.get(loss, {}))  # noqa: E731
  sections: dict[str, Any] = {}
  sections["misfit_gain"], preds = timed("misfit_gain", lambda: misfit_gain_section(students, weak, data, hparams_of))
  sections["equivalence"] = timed("equivalence", lambda: equivalence_section(preds))
  lab = Lab(config, stages, data)
  clean = weak.stores["w2s_train"]
  sections["sample_complexity"], sections["noise_dose"] = timed(
      "sample_complexity+noise_dose",
      lambda: fixed_step_sections(lab, clean, weak.test_accuracy, ceiling.test_accuracy))
  sections["trajectory"] = timed("trajectory", lambda: trajectory_section(lab, clean))
  fitted = fits(sections, weak.test_accuracy, ceiling.test_accuracy)
  timings["total"] = time.perf_counter() - t_start
  result = {
      "experiment": config.name, "task": task.name,
      "weak": weak.public(), "ceiling": ceiling.public(),
      **sections,
      "fits": fitted,
      "settings": {
          "noise_dose_kinds": {str(k): float(v) for k, v in _theory_cfg(config).noise_dose.kinds.items()},
          "sample_complexity_num_steps": int(_theory_cfg(config).sample_complexity.num_steps) or lab.student_steps,
          "student_steps": lab.student_steps,
          "prob_floor": PROB_FLOOR,
      },
      "cache": {"computed": [f"{e.stage}/{e.key[:cache_lib.KEY_CHARS]}" for e in cache.computed()],
                "lab_groups_trained": lab.computed_groups},
  }
  if jax.process_index() == 0:
    t0 = time.perf_counter()
    result["figures"] = [os.path.basename(p) for p in render.figures(sections, fitted, staging, config.name)]
    timings["figures"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    with open(os.path.join(staging, "theory.md"), "w") as f:
      f.write(render.findings_markdown(config, fitted, sections, timings))
  result["timings_s"] = timings
  outputs.commit("theory.json", result)
  log.info("theory: wrote %s in %.1fs", outputs.path("theory.json"), timings["total"])
  return result
