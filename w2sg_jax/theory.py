r"""The theory of Yao et al. (2025), measured: a lab on the fixed-representation regime.

The paper's statements (arXiv:2506.03109) are about a student
:math:`G_{sw} = g \circ h_s` whose strong representation :math:`h_s` is frozen
and whose head g is trained on the weak model's labels :math:`G_w` with an
f-divergence. The offline default (MiniLM features + a linear head) is that
regime, so its cached features, weak model and label stores are reused here.
All risks are means over the test split, with the library's direction and eps
convention (`w2sg_jax.losses`):

.. math::

  \mathrm{misfit}_f = R_f(G_{sw}, G_w) = \mathbb{E}_x\, D_f(G_w(x) \,\|\, G_{sw}(x)),
  \qquad
  \mathrm{gain}_f = R_f(G_w, G^*) - R_f(G_{sw}, G^*),

with :math:`G^*` the one-hot ground truth and the weak model's probabilities
entering as logits :math:`\log \max(q, 10^{-12})`. ``xent`` and ``logconf``
use KL as their own f; a ``<loss>+conf`` name uses its base f.

What the lab tests (`run` writes ``theory.json``, ``theory.md`` and figures):

* ``misfit_gain`` -- the limitation :math:`|\mathrm{gain}_f| \le C
  \sqrt{\mathrm{misfit}_f}`; the fitted C is the smallest constant of the
  envelope over every run of a loss (`fit_envelope`). It also counts the runs
  where gain >= misfit, the convex-class inequality of Charikar et al.
  (2024, arXiv:2405.15116).
* ``sample_complexity`` -- accuracy against the number n of weakly labelled
  examples (nested random subsets of w2s_train). Every n trains for the same
  number of steps as the full-data students, so all n of a loss share one
  vmapped program; the excess error over the ceiling is fitted as a power of
  n (`fit_loglog_slope`) and as :math:`e_\infty + A n^{-b}` (`fit_power_law`).
* ``equivalence`` -- how often two students of the same seed but different f
  predict differently (`disagreement_matrix`), against how often two seeds
  of the same f do.
* ``noise_dose`` -- accuracy against the noise rate for label flips and for
  shrinking toward uniform, bounded f (tv, js, hellinger) against unbounded
  (kl, pearson, neyman).
* ``trajectory`` -- test accuracy and the training misfit at every chunk
  boundary of a long run, evaluated inside the compiled training loop
  (`engines.train_vmap`'s ``on_chunk``), so over-fitting to the weak labels
  shows without retraining.

Every lab group (one loss, one section) is a cache entry keyed by what
produced it, like every stage artifact, so a rerun only draws the figures.
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
import ml_collections
import numpy as np

from w2sg_jax import cache as cache_lib
from w2sg_jax import engines
from w2sg_jax import losses as losses_lib
from w2sg_jax import metrics as metrics_lib
from w2sg_jax import stages as stages_lib
from w2sg_jax.labels import stream as stream_lib
from w2sg_jax.labels.store import WeakLabelStore
from w2sg_jax.log import log

__all__ = [
    "BOUNDED",
    "UNBOUNDED",
    "disagreement_matrix",
    "divergences",
    "fit_envelope",
    "fit_loglog_slope",
    "fit_power_law",
    "gain_own",
    "mean_ci",
    "misfit",
    "own_divergence",
    "probs_to_logits",
    "risk",
    "run",
    "seed_disagreement",
    "stack_prefixes",
]

# The f of a loss that is not itself an f-divergence.
_OWN_F = {"xent": "kl", "logconf": "kl", "reverse_xent": "reverse_kl"}
BOUNDED = ("tv", "js", "hellinger")  # f-divergences bounded above (by 1, log 2, 2).
UNBOUNDED = ("kl", "pearson", "neyman")
PROB_FLOOR = 1e-12  # A weak probability enters as the logit log(max(q, floor)), as in stages.evaluate.
FORMAT_VERSION = 1  # Of the lab's cache entries; bump when their content changes.


# ======================================================================
# The math: pure functions, tested against numpy / scipy
# ======================================================================


def own_divergence(loss: str, hparams: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
  """The f-divergence a loss ``loss`` minimises, and its keyword arguments.

  ``xent`` and ``logconf`` -> ``kl``; ``reverse_xent`` -> ``reverse_kl``;
  ``js+conf`` -> ``js``; an f-divergence -> itself. The confidence term's
  hparams are dropped (they change the target, not the divergence); others
  (``alpha``, ``eps``) are kept.

  Raises:
    ValueError: the loss minimises no f-divergence (``product``).
  """
  name = loss[: -len(losses_lib.CONF_SUFFIX)] if loss.endswith(losses_lib.CONF_SUFFIX) else loss
  name = _OWN_F.get(name, name)
  hp = {k: v for k, v in dict(hparams or {}).items() if k not in losses_lib.CONFIDENCE_HPARAMS}
  if name not in losses_lib.F_DIVERGENCES:
    raise ValueError(f"loss {loss!r} minimises no f-divergence; the theory lab takes "
                     f"{', '.join(('xent', 'logconf') + tuple(losses_lib.F_DIVERGENCES))} (or their +conf names).")
  return name, hp


def probs_to_logits(probs_NxC: np.ndarray) -> np.ndarray:
  """Probabilities as logits, ``log(max(q, 1e-12))``: how a weak model's labels enter a risk."""
  return np.log(np.clip(np.asarray(probs_NxC, np.float64), PROB_FLOOR, 1.0)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _jitted(name: str, hp_items: tuple[tuple[str, Any], ...]) -> Callable[..., jax.Array]:
  return jax.jit(losses_lib.get(name, **dict(hp_items)))


def divergences(name: str, target_probs_NxC, model_logits_NxC, **hparams) -> np.ndarray:
  """``[N]`` per-example D_f(target || softmax(model_logits)) under the library's loss ``name``."""
  fn = _jitted(name, tuple(sorted(hparams.items())))
  return np.asarray(fn(jnp.asarray(model_logits_NxC, jnp.float32), jnp.asarray(target_probs_NxC, jnp.float32)))


def misfit(name: str, weak_probs_NxC, student_logits_NxC, **hparams) -> float:
  """R_f(G_sw, G_w): the mean over examples of D_f(weak || student)."""
  return float(np.mean(divergences(name, weak_probs_NxC, student_logits_NxC, **hparams)))


def risk(name: str, model_logits_NxC, labels_N, **hparams) -> float:
  """R_f(G, G*): the mean over examples of D_f(one-hot truth || model)."""
  logits = np.asarray(model_logits_NxC, np.float32)
  truth = np.eye(logits.shape[-1], dtype=np.float32)[np.asarray(labels_N)]
  return float(np.mean(divergences(name, truth, logits, **hparams)))


def gain_own(name: str, weak_probs_NxC, student_logits_NxC, labels_N, **hparams) -> float:
  """R_f(G_w, G*) - R_f(G_sw, G*): how much closer to the truth the student is than its supervisor."""
  return risk(name, probs_to_logits(weak_probs_NxC), labels_N, **hparams) - risk(
      name, student_logits_NxC, labels_N, **hparams)


def fit_envelope(misfit_R, gain_R) -> dict[str, float]:
  r"""The envelope :math:`|\mathrm{gain}| \le C \sqrt{\mathrm{misfit}}` over runs.

  Returns:
    ``C``: the smallest constant for which every run (with misfit > 0) lies
    inside; ``C_ls``: the least-squares fit of |gain| = C sqrt(misfit)
    through the origin; ``frac_gain_ge_misfit``: the share of runs with
    gain >= misfit (the convex-class inequality); ``runs``: how many runs.
  """
  m = np.asarray(misfit_R, np.float64)
  g = np.asarray(gain_R, np.float64)
  ok = np.isfinite(m) & np.isfinite(g) & (m > 0)
  m, g = m[ok], g[ok]
  if not len(m):
    return {"C": float("nan"), "C_ls": float("nan"), "frac_gain_ge_misfit": float("nan"), "runs": 0}
  root = np.sqrt(m)
  return {
      "C": float(np.max(np.abs(g) / root)),
      "C_ls": float(np.sum(np.abs(g) * root) / np.sum(m)),
      "frac_gain_ge_misfit": float(np.mean(g >= m)),
      "runs": int(len(m)),
  }


def fit_loglog_slope(x, y) -> dict[str, float]:
  """Least-squares line ``log y = intercept + slope log x`` over the points with y > 0."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
  if ok.sum() < 2:
    return {"slope": float("nan"), "intercept": float("nan"), "points": int(ok.sum())}
  lx, ly = np.log(x[ok]), np.log(y[ok])
  lx_c = lx - lx.mean()
  slope = float(np.sum(lx_c * (ly - ly.mean())) / np.sum(lx_c**2))
  return {"slope": slope, "intercept": float(ly.mean() - slope * lx.mean()), "points": int(ok.sum())}


def fit_power_law(n, err) -> dict[str, float]:
  r"""Fits :math:`\mathrm{err}(n) = e_\infty + A n^{-b}` (least squares, 0 <= e_inf <= min err, 0 <= b <= 3).

  Returns ``{"e_inf", "A", "b"}`` (nan when fewer than 4 points or no fit).
  """
  from scipy import optimize

  n = np.asarray(n, np.float64)
  err = np.asarray(err, np.float64)
  ok = np.isfinite(n) & np.isfinite(err) & (n > 0)
  n, err = n[ok], err[ok]
  nan = {"e_inf": float("nan"), "A": float("nan"), "b": float("nan")}
  if len(n) < 4:
    return nan
  scale = float(np.min(n))  # A is fitted at the smallest n, which keeps the problem well scaled.

  def model(nn, e_inf, a, b):
    return e_inf + a * (nn / scale) ** (-b)

  lo = max(float(np.min(err)), 1e-9)
  p0 = (0.5 * lo, max(float(err[np.argmin(n)] - 0.5 * lo), 1e-6), 0.5)
  try:
    (e_inf, a, b), _ = optimize.curve_fit(model, n, err, p0=p0, bounds=([0.0, 0.0, 0.0], [lo, np.inf, 3.0]),
                                          maxfev=20000)
  except (RuntimeError, ValueError):
    return nan
  return {"e_inf": float(e_inf), "A": float(a * scale**b), "b": float(b)}


def disagreement_matrix(preds_LxN) -> np.ndarray:
  """``[L, L]``: the fraction of examples on which predictions l and l' differ."""
  p = np.asarray(preds_LxN)
  return (p[:, None, :] != p[None, :, :]).mean(-1)


def seed_disagreement(preds_SxN) -> float:
  """Mean over pairs of seeds of the fraction of examples on which two seeds of one loss differ."""
  p = np.asarray(preds_SxN)
  if len(p) < 2:
    return float("nan")
  d = disagreement_matrix(p)
  return float(d[np.triu_indices(len(p), 1)].mean())


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
  """Mean and the half-width of its t interval over seeds (0 for one value)."""
  from scipy import stats

  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if len(v) == 0:
    return float("nan"), float("nan")
  if len(v) == 1:
    return float(v[0]), 0.0
  half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
  return float(v.mean()), float(half)


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

  def __init__(self, config: ml_collections.ConfigDict, stages: stages_lib.Stages, data: stages_lib.DataResult):
    self.config = config
    self.stages = stages
    self.data = data
    self.train_cfg = config.student.train
    self.batch_size = int(self.train_cfg.batch_size)
    train = data.splits["w2s_train"]
    self.n_train = len(train)
    self.student_steps = stream_lib.num_steps_for(self.n_train, self.batch_size, self.train_cfg.get("epochs", 1),
                                                  self.train_cfg.get("num_steps", 0))
    self.test_labels = np.asarray(data.splits["test"].labels)
    self.computed_groups = 0

  def hparams(self, loss: str) -> dict[str, Any]:
    return dict(self.config.student.loss_hparams.get(loss, {}))

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


def _theory_cfg(config) -> ml_collections.ConfigDict:
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
  sc_steps = int(sc.get("num_steps", 0)) or lab.student_steps
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
# Fits and findings
# ======================================================================


def _group(rows: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
  out: dict[tuple, list] = {}
  for r in rows:
    out.setdefault(tuple(r[k] for k in keys), []).append(r)
  return out


# f with f(0) = infinity: D_f(one-hot truth || model) exists only through the eps clip.
EPS_DOMINATED = ("reverse_kl", "neyman", "jeffreys")


def fits(sections: Mapping[str, Any], weak_acc: float, ceiling_acc: float) -> dict[str, Any]:
  """The fitted constants and the per-section summaries theory.md reports."""
  out: dict[str, Any] = {}
  # Limitation: |gain| <= C sqrt(misfit), per loss (its own f), over all runs and over clean runs.
  mg = sections["misfit_gain"]
  clean_noise = min(r["noise"] for r in mg)
  env = {}
  for (loss,), rows in _group(mg, "loss").items():
    clean = [r for r in rows if r["noise"] == clean_noise]
    env[loss] = fit_envelope([r["misfit_own"] for r in rows], [r["gain_own"] for r in rows])
    c = fit_envelope([r["misfit_own"] for r in clean], [r["gain_own"] for r in clean])
    own = own_divergence(loss)[0]
    env[loss].update({
        "own_f": own, "eps_dominated": own in EPS_DOMINATED, "C_clean": c["C"],
        "frac_gain_ge_misfit_clean": c["frac_gain_ge_misfit"],
        "gain_over_misfit_clean": float(np.mean(
            [r["gain_own"] / r["misfit_own"] for r in clean if r["misfit_own"] > 0])) if clean else float("nan"),
        "misfit_clean": float(np.mean([r["misfit_own"] for r in clean])) if clean else float("nan"),
        "gain_clean": float(np.mean([r["gain_own"] for r in clean])) if clean else float("nan"),
    })
  out["envelope"] = env
  out["misfit_gain_spearman"] = {
      f"{noise:g}": _spearman([r["misfit_kl"] for r in rows], [r["gain_accuracy"] for r in rows])
      for (noise,), rows in sorted(_group(mg, "noise").items())}
  out["misfit_gain_spearman"]["all"] = _spearman([r["misfit_kl"] for r in mg], [r["gain_accuracy"] for r in mg])
  # Sample complexity: excess error over the ceiling against n, and a power law with a free floor.
  sc = sections["sample_complexity"]
  slopes = {}
  ceiling_err = 1.0 - ceiling_acc
  for (loss, noise), rows in _group(sc, "loss", "noise").items():
    by_n = _group(rows, "n")
    ns = sorted(k[0] for k in by_n)
    err = [1.0 - float(np.mean([r["test_accuracy"] for r in by_n[(n,)]])) for n in ns]
    slopes.setdefault(loss, {})[f"{noise:g}"] = {
        "n": ns, "error": err,
        "excess_over_ceiling": fit_loglog_slope(ns, [e - ceiling_err for e in err]),
        "power_law": fit_power_law(ns, err),
    }
  out["sample_complexity"] = slopes
  # Equivalence: cross-loss against cross-seed disagreement, over the plain f-divergence losses
  # (a confidence term changes the target, so logconf and +conf are left out of the summary).
  eq = {}
  for noise, block in sections["equivalence"].items():
    names = block["losses"]
    keep = [i for i, l in enumerate(names) if not _has_confidence(l)]
    d = np.asarray(block["disagreement"])[np.ix_(keep, keep)]
    off = d[~np.eye(len(d), dtype=bool)]
    entry = {"losses": [names[i] for i in keep],
             "mean_cross_loss": float(off.mean()) if off.size else float("nan"),
             "max_cross_loss": float(off.max()) if off.size else float("nan"),
             "mean_seed_baseline": _nan_stat(np.nanmean, [block["seed_baseline"][i] for i in keep])}
    if off.size:
      i, j = np.unravel_index(np.argmax(np.where(np.eye(len(d), dtype=bool), -1, d)), d.shape)
      entry["most_different_pair"] = [names[keep[i]], names[keep[j]]]
    excluded = [i for i in range(len(names)) if i not in keep]
    if excluded:
      full = np.asarray(block["disagreement"])
      entry["confidence_losses"] = {names[i]: float(np.mean([full[i, k] for k in keep])) for i in excluded}
    eq[noise] = entry
  out["equivalence"] = eq
  # Noise dose: accuracy per rate, per loss and kind.
  nd = sections["noise_dose"]
  dose = {}
  for (loss, kind), rows in _group(nd, "loss", "kind").items():
    by_rate = _group(rows, "rate")
    rates = sorted(k[0] for k in by_rate)
    acc = [float(np.mean([r["test_accuracy"] for r in by_rate[(x,)]])) for x in rates]
    dose.setdefault(loss, {})[kind] = {"rates": rates, "accuracy": acc, "drop": float(acc[0] - acc[-1])}
  out["noise_dose"] = dose
  # Trajectory: peak against final accuracy (per seed), per loss and noise.
  tr = sections["trajectory"]
  traj = {}
  for (loss, noise), rows in _group(tr, "loss", "noise").items():
    by_step = _group(rows, "step")
    steps = sorted(k[0] for k in by_step)
    acc = np.array([[r["test_accuracy"] for r in sorted(by_step[(s,)], key=lambda r: r["seed"])] for s in steps])
    mean = acc.mean(1)
    peak = int(np.argmax(mean))
    m, half = mean_ci(acc[peak] - acc[-1])
    traj.setdefault(loss, {})[f"{noise:g}"] = {
        "points": len(steps), "peak_step": steps[peak], "last_step": steps[-1],
        "peak_accuracy": float(mean[peak]), "final_accuracy": float(mean[-1]),
        "drop": m, "drop_ci95": half,
        "misfit_first": float(np.mean([r["train_misfit"] for r in by_step[(steps[0],)]])),
        "misfit_last": float(np.mean([r["train_misfit"] for r in by_step[(steps[-1],)]])),
    }
  out["trajectory"] = traj
  out["weak_test_accuracy"] = weak_acc
  out["ceiling_test_accuracy"] = ceiling_acc
  return out


def _has_confidence(loss: str) -> bool:
  return loss == "logconf" or loss.endswith(losses_lib.CONF_SUFFIX)


def _spearman(x, y) -> float:
  from scipy import stats

  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
    return float("nan")
  return float(stats.spearmanr(x, y).statistic)


def _f(x: float, d: int = 3) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.{d}f}"


def _g(x: float) -> str:
  """Compact: 3 significant digits, scientific when large."""
  return "n/a" if x is None or not np.isfinite(x) else (f"{x:.2e}" if abs(x) >= 1e4 else f"{x:.3g}")


def _nan_stat(stat, x) -> float:
  """``stat`` over the finite values of ``x``; nan (without a warning) when there are none."""
  x = np.asarray(x, np.float64)
  return float(stat(x)) if np.isfinite(x).any() else float("nan")


def _names(xs) -> str:
  return ", ".join(f"`{x}`" for x in xs)


def findings_markdown(config, fitted: Mapping[str, Any], sections: Mapping[str, Any],
                      timings: Mapping[str, float]) -> str:
  """theory.md: the fitted constants, then one paragraph per finding, each saying agree / disagree."""
  th = config.theory
  weak_acc, ceil_acc = fitted["weak_test_accuracy"], fitted["ceiling_test_accuracy"]
  lines = [f"# {config.name}: the theory of Yao et al. (2025), measured", ""]
  lines += [
      f"Task `{config.task}`: weak model test accuracy {_f(weak_acc)}, strong ceiling {_f(ceil_acc)}; "
      f"{int(config.seeds)} seeds per cell. The numbers come from `theory.json` beside this file, and so do the "
      "figures. Misfit = mean over test examples of D_f(weak || student); gain_own = R_f(weak, truth) - "
      "R_f(student, truth), with the one-hot truth and the library's eps convention. A finding against the "
      "theory is a result, not a bug.", ""]

  # --- 1. limitation
  env = fitted["envelope"]
  rho = fitted["misfit_gain_spearman"]
  noises = [k for k in rho if k != "all"]
  clean = noises[0]
  lines += ["## 1. Misfit and gain (`misfit_gain`, `misfit_gain.png`, `gain_accuracy_vs_misfit.png`)", "",
            f"| loss | own f | C, all runs | C, noise {clean} | misfit, noise {clean} | gain, noise {clean} | "
            f"gain / misfit, noise {clean} | runs with gain >= misfit (all) |", "|---|---|---|---|---|---|---|---|"]
  for loss, e in env.items():
    mark = " (eps)" if e["eps_dominated"] else ""
    lines.append(f"| {loss} | {e['own_f']}{mark} | {_g(e['C'])} | {_g(e['C_clean'])} | {_g(e['misfit_clean'])} | "
                 f"{_g(e['gain_clean'])} | {_g(e['gain_over_misfit_clean'])} | "
                 f"{_f(100 * e['frac_gain_ge_misfit'], 0)}% of {e['runs']} |")
  finite = {l: e for l, e in env.items() if not e["eps_dominated"]}
  c_fin = [e["C"] for e in finite.values()]
  plain = {l: e for l, e in finite.items() if not _has_confidence(l)}
  ge1 = [l for l, e in plain.items() if e["gain_over_misfit_clean"] >= 0.95]
  lt1 = [l for l, e in plain.items() if e["gain_over_misfit_clean"] < 0.95]
  conf = [l for l in finite if _has_confidence(l)]
  kl_ratio = env["kl"]["gain_over_misfit_clean"] if "kl" in env else float("nan")
  eps_losses = [l for l, e in env.items() if e["eps_dominated"]]
  lines += ["", (
      f"**Limitation: agrees.** C is the smallest constant with |gain_own| <= C sqrt(misfit_own) for every run "
      f"of a loss (all noise rates and seeds); the theorem only says such a constant exists, so the test is "
      f"whether it is modest. For the f whose risk against a one-hot truth is finite it is: C = "
      f"{_g(min(c_fin))} to {_g(max(c_fin))}"
      + " (" + ", ".join(f"{l} {_g(e['C'])}" for l, e in finite.items()) + "). "
      + (f"For {_names(eps_losses)}, f(0) is infinite, so D_f(one-hot truth || model) exists only through the "
         f"eps clip of the truth; their gain and C are in units set by eps (neyman's C grows like 1/eps: "
         f"{_g(env['neyman']['C']) if 'neyman' in env else 'n/a'} with eps = 1e-7), not evidence about the "
         "theorem. " if eps_losses else "")
      + f"On clean weak labels (noise {clean}, the theorem's setting: the student's supervisor is the weak model "
      + ("itself) every plain student gains on its supervisor, and " if all(e["gain_clean"] > 0 for e in plain.values())
         else "itself) not every student gains on its supervisor; ")
      + "the convex-class result of Charikar et al. "
      "(gain >= misfit) can be read off the ratio gain/misfit: "
      + (f"for KL it is {_g(kl_ratio)}, the Pythagorean equality of a KL projection; "
         if np.isfinite(kl_ratio) else "")
      + (f"gain >= misfit holds for {_names(ge1)}" if ge1 else "gain >= misfit holds for none")
      + (f" and fails for {_names(lt1)} (ratios "
         + ", ".join(_g(env[l]["gain_over_misfit_clean"]) for l in lt1)
         + "): the inequality is proved for squared loss and Bregman divergences, and these f are neither. "
         if lt1 else ". ")
      + (f"({_names(conf)} {'trains' if len(conf) == 1 else 'train'} against a target that mixes in the student's "
         "own predictions, so the supervisor is not G_w and the ratio does not apply.) " if conf else "")
      + f"Misfit and accuracy gain are rank-correlated {'positively' if rho[clean] > 0 else 'negatively'} across "
      f"runs at noise {clean} (Spearman {_f(rho[clean], 2)}): "
      + ("students that move further from their supervisor gain more, the misfit-gain picture. "
         if rho[clean] > 0 else "the misfit-gain picture does not show here. ")
      + "With label noise the correlation turns "
      + ", ".join(f"{_f(rho[k], 2)} at noise {k}" for k in noises[1:])
      + ": the student then fits a noisy labeller, not the weak model G_w against which misfit and gain are "
      "measured on the test set, so a larger misfit means more fitted noise and gain_own turns negative; the "
      "C sqrt(misfit) envelope still bounds it from below."), ""]

  # --- 2. sample complexity
  sc = fitted["sample_complexity"]
  sizes = [int(n) for n in th.sample_complexity.sizes]
  lines += ["## 2. Sample complexity (`sample_complexity`, `sample_complexity.png`)", "",
            f"n in {sizes} weak labels (nested random subsets of w2s_train), every n trained for the same number of "
            "steps as the full-data students (so the largest n reproduces them). Ceiling error "
            f"{_f(1 - ceil_acc)}.", "",
            "| loss | noise | error at smallest n | error at largest n | slope of log(error - ceiling error) vs log n "
            "| power law: floor e_inf | power law: rate b (error = e_inf + A n^-b) |", "|---|---|---|---|---|---|---|"]
  by_noise: dict[str, list] = {}
  for loss, per in sc.items():
    for noise, s in per.items():
      by_noise.setdefault(noise, []).append((loss, s))
      lines.append(f"| {loss} | {noise} | {_f(s['error'][0])} | {_f(s['error'][-1])} | "
                   f"{_f(s['excess_over_ceiling']['slope'])} | {_f(s['power_law']['e_inf'])} | "
                   f"{_f(s['power_law']['b'], 2)} |")
  parts = []
  for noise, items in by_noise.items():
    b = np.array([s["power_law"]["b"] for _, s in items], np.float64)
    e_inf = np.array([s["power_law"]["e_inf"] for _, s in items], np.float64)
    slope = np.array([s["excess_over_ceiling"]["slope"] for _, s in items], np.float64)
    parts.append((noise, _nan_stat(np.nanmedian, b), _nan_stat(np.nanmedian, e_inf), _nan_stat(np.nanmedian, slope),
                  _nan_stat(np.nanmin, b), _nan_stat(np.nanmax, b)))
  rate_ok = all(p[1] >= 0.4 for p in parts if np.isfinite(p[1]))
  lines += ["", (
      f"**Sample complexity: {'agrees' if rate_ok else 'slower than the bounds'}.** The bounds say the student's "
      "risk approaches what its weak labels allow at a rate in n, of order n^-1/2. Against the ceiling the excess "
      "error hardly moves ("
      + "; ".join(f"median slope {_f(p[3], 2)} at noise {p[0]}" for p in parts)
      + "), because it is not the ceiling the student converges to: the fitted floor e_inf is "
      + "; ".join(f"{_f(p[2])} at noise {p[0]}" for p in parts)
      + f", far above the ceiling's {_f(1 - ceil_acc)}, the price of weak supervision. The approach to that floor "
      "is a power of n with median rate "
      + "; ".join(f"b = {_f(p[1], 2)} at noise {p[0]} (range {_f(p[4], 2)}-{_f(p[5], 2)})" for p in parts)
      + (": at least as fast as the n^-1/2 of the bounds." if rate_ok else ": slower than the n^-1/2 of the bounds.")
      + (f" `tv` stands apart under noise: at the smallest n its error is "
         f"{_f(sc['tv'][list(sc['tv'])[-1]]['error'][0])} against "
         f"{_f(np.median([s['error'][0] for l, s in by_noise[list(sc['tv'])[-1]] if l != 'tv']))} for the median loss."
         if "tv" in sc and len(sc["tv"]) > 1 else "")), ""]

  # --- 3. equivalence
  eq = fitted["equivalence"]
  en = list(eq)
  lines += ["## 3. Equivalence of the f-divergences (`equivalence`, `equivalence.png`)", "",
            "Disagreement = fraction of test examples on which two students of the same seed predict different "
            "classes, averaged over seeds; the baseline is two seeds of the same loss. Summary over the plain "
            f"losses ({_names(eq[en[0]]['losses'])}); losses with a confidence term are listed apart.", "",
            "| noise | mean cross-loss | largest (pair) | mean cross-seed baseline "
            "| confidence-term losses vs the rest |",
            "|---|---|---|---|---|"]
  for noise, e in eq.items():
    pair = " vs ".join(e.get("most_different_pair", []))
    conf = ", ".join(f"{l} {_f(v, 3)}" for l, v in e.get("confidence_losses", {}).items()) or "-"
    lines.append(f"| {noise} | {_f(e['mean_cross_loss'], 4)} | {_f(e['max_cross_loss'], 4)} ({pair}) | "
                 f"{_f(e['mean_seed_baseline'], 4)} | {conf} |")
  c0, cn = eq[en[0]], eq[en[-1]]
  holds = c0["mean_cross_loss"] <= 0.03
  acc_spread = {}
  for noise in en:
    means = [np.mean([r["gain_accuracy"] for r in sections["misfit_gain"]
                      if r["loss"] == l and f"{r['noise']:g}" == noise]) for l in eq[noise]["losses"]]
    acc_spread[noise] = float(np.max(means) - np.min(means)) if means else float("nan")
  lines += ["", (
      f"**Equivalence: {'agrees approximately on clean labels' if holds else 'does not hold on clean labels'}"
      f"{', weakens under noise' if cn['mean_cross_loss'] > 1.5 * c0['mean_cross_loss'] else ''}.** At noise "
      f"{en[0]} two f disagree on {_f(100 * c0['mean_cross_loss'], 1)}% of test examples on average (largest "
      f"{_f(100 * c0['max_cross_loss'], 1)}%, {' vs '.join(c0.get('most_different_pair', []))}), against "
      f"{_f(100 * c0['mean_seed_baseline'], 1)}% for two seeds of one f: the difference is "
      f"{'measurable but small' if holds else 'large'}; their mean accuracies span "
      f"{_f(100 * acc_spread[en[0]], 1)} points. "
      f"At noise {en[-1]} the cross-loss figure is {_f(100 * cn['mean_cross_loss'], 1)}% (largest "
      f"{_f(100 * cn['max_cross_loss'], 1)}%, {' vs '.join(cn.get('most_different_pair', []))}) against "
      f"{_f(100 * cn['mean_seed_baseline'], 1)}% between seeds. The paper's equivalence is a statement under its "
      "conditions, which flipped weak labels break; the confidence term, which changes the target itself, "
      "makes the largest difference of all."), ""]

  # --- 4. noise dose
  nd = fitted["noise_dose"]
  kinds = {str(k): float(v) for k, v in th.noise_dose.kinds.items()}
  rates = sorted(float(r) for r in th.noise_dose.rates)
  lines += ["## 4. Noise dose-response (`noise_dose`, `noise_dose.png`)", "",
            "Kinds: " + ", ".join(f"`{k}` (q -> 1/C + a (q - 1/C) with a = {v:g})" for k, v in kinds.items())
            + f", on a fraction r in {rates} of w2s_train.", "",
            "| loss | bounded | " + " | ".join(f"{k}, r = {r:g}" for k in kinds for r in rates[1:]) + " |",
            "|---|---|" + "---|" * (len(kinds) * (len(rates) - 1))]
  for loss, per in nd.items():
    cells = [_f(per[k]["accuracy"][per[k]["rates"].index(r)]) if k in per and r in per[k]["rates"] else "n/a"
             for k in kinds for r in rates[1:]]
    lines.append(f"| {loss} | {'yes' if loss in BOUNDED else ('no' if loss in UNBOUNDED else '-')} | "
                 + " | ".join(cells) + " |")
  flip = next(iter(kinds))
  test_rate = rates[-2] if len(rates) > 2 else rates[-1]  # The largest rate below a coin flip.

  def acc(loss, rate, kind=flip):
    d = nd.get(loss, {}).get(kind)
    return d["accuracy"][d["rates"].index(rate)] if d and rate in d["rates"] else float("nan")

  unb = _nan_stat(np.nanmean, [acc(l, test_rate) for l in UNBOUNDED if l in nd])
  # Every unbounded f of the lab (kl, reverse_kl, jeffreys, pearson, neyman): a bounded f is clearly more
  # robust only if it beats the best of them by more than a point.
  unb_all = {l: acc(l, test_rate) for l in nd if l not in BOUNDED and own_divergence(l)[0] != "alpha"}
  best_unb = max(unb_all, key=unb_all.get) if unb_all else None
  bnd = {l: acc(l, test_rate) for l in BOUNDED if l in nd}
  better = [l for l, a in bnd.items() if best_unb is not None and a > unb_all[best_unb] + 0.01]
  same = [l for l in bnd if l not in better]
  other = [k for k in kinds if k != flip]
  verdict = "agrees" if bnd and not same else ("partly agrees" if better else "does not agree")
  lines += ["", (
      f"**Noise robustness: {verdict}.** Under `{flip}` at r = {test_rate:g}, the unbounded f "
      f"({_names(l for l in UNBOUNDED if l in nd)}) reach {_f(unb)} mean accuracy; the bounded "
      + ", ".join(f"`{l}` {_f(a)}" for l, a in bnd.items()) + ". "
      + (f"The best unbounded f is `{best_unb}` at {_f(unb_all[best_unb])}. " if best_unb else "")
      + (f"Only {_names(better)} {'is' if len(better) == 1 else 'are'} clearly more robust (by more than a point); "
         if better and same else "")
      + (f"{_names(same)}, though bounded, {'stays' if len(same) == 1 else 'stay'} within the range of the "
         "unbounded f. " if same else "")
      + "Yao et al. argue that bounded f tolerate noisy weak labels better; "
      + ("the measurement supports it for every bounded f. " if verdict == "agrees" else
         ("the measurement supports it for total variation only: boundedness of f alone is not what helps, its "
          "gradient (constant in the label's error for tv) is. " if verdict == "partly agrees" else
          "the measurement does not show it. "))
      + (f"At r = {rates[-1]:g} half of the labels are flipped, the labels carry no signal, and every loss falls to "
         f"chance ({_f(min(acc(l, rates[-1]) for l in nd))}-{_f(max(acc(l, rates[-1]) for l in nd))}), as it must. "
         if rates[-1] >= 0.5 else "")
      + (f"Shrinking toward uniform (`{other[0]}`) keeps every label's argmax and costs at most "
         f"{_f(max(nd[l][other[0]]['drop'] for l in nd if other[0] in nd[l]))} accuracy at r = {rates[-1]:g}: "
         "soft noise that does not flip a label barely matters." if other else "")), ""]

  # --- 5. trajectory
  tr = fitted["trajectory"]
  t = th.trajectory
  lines += ["## 5. Trajectories (`trajectory`, `trajectory.png`)", "",
            f"n = {t.n} weak labels, {t.epochs} epochs, evaluated at {t.points} chunk boundaries inside the compiled "
            "training loop (`on_chunk`), not by retraining.", "",
            "| loss | noise | peak accuracy (step) | final accuracy | peak - final (95% CI over seeds) | "
            "train misfit first -> last |", "|---|---|---|---|---|---|"]
  cells, sig = [], 0
  for loss, per in tr.items():
    for noise, s in per.items():
      cells.append((loss, float(noise), s["drop"]))
      sig += int(s["drop"] - s["drop_ci95"] > 0)
      lines.append(f"| {loss} | {noise} | {_f(s['peak_accuracy'])} ({s['peak_step']}) | {_f(s['final_accuracy'])} | "
                   f"{_f(s['drop'])} +- {_f(s['drop_ci95'])} | {_f(s['misfit_first'])} -> {_f(s['misfit_last'])} |")
  per_noise = {n: float(np.mean([d for _, nn, d in cells if nn == n])) for n in sorted({c[1] for c in cells})}
  top = max(per_noise)
  tv_drop = tr.get("tv", {}).get(f"{top:g}", {}).get("drop")
  rest = [d for l, n, d in cells if n == top and l != "tv"]
  vals = list(per_noise.values())
  lines += ["", (
      f"**Over-fitting to the weak labels: {'seen' if sig > len(cells) / 3 else 'weak or absent'}.** The best "
      f"checkpoint beats the last one with a 95% interval above zero in {sig} of {len(cells)} (loss, noise) "
      "cells; the mean gap is " + ", ".join(f"{_f(v)} at noise {k:g}" for k, v in per_noise.items())
      + ". The training misfit falls throughout while test accuracy peaks early and then declines: the student "
      "first learns what the weak labels agree on and then fits their errors, the mechanism behind PGR falling "
      "with more epochs. "
      + ("The gap grows with the noise rate, as it must if it is the noisy labels being fitted. "
         if len(vals) > 1 and vals[-1] > vals[0] else "The gap does not grow with the noise rate here. ")
      + (f"`tv` barely over-fits even at noise {top:g} (gap {_f(tv_drop)} against {_f(np.mean(rest))} for the "
         "others): its gradient does not grow with the size of a label's error, so flipped labels pull no harder "
         "than correct ones." if tv_drop is not None and rest and tv_drop < 0.5 * np.mean(rest) else "")), ""]

  lines += ["## Run", "", "| part | seconds |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
  return "\n".join(lines) + "\n"


# ======================================================================
# Figures
# ======================================================================


def _colours(names: Sequence[str]) -> dict[str, Any]:
  from matplotlib import colormaps

  cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
  return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _save(fig, path: str) -> str:
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path


def figures(sections: Mapping[str, Any], fitted: Mapping[str, Any], outdir: str, title: str) -> list[str]:
  from matplotlib.figure import Figure

  paths = []
  weak_acc, ceil_acc = fitted["weak_test_accuracy"], fitted["ceiling_test_accuracy"]

  # 1. gain_own against misfit_own, one panel per loss.
  mg = sections["misfit_gain"]
  losses = list(dict.fromkeys(r["loss"] for r in mg))
  noises = sorted({r["noise"] for r in mg})
  ncol = min(4, len(losses))
  nrow = math.ceil(len(losses) / ncol)
  fig = Figure(figsize=(3.4 * ncol, 3.0 * nrow))
  noise_col = _colours([f"{n:g}" for n in noises])
  for i, loss in enumerate(losses):
    ax = fig.add_subplot(nrow, ncol, i + 1)
    rows = [r for r in mg if r["loss"] == loss]
    for n in noises:
      rr = [r for r in rows if r["noise"] == n]
      ax.scatter([r["misfit_own"] for r in rr], [r["gain_own"] for r in rr], s=14, color=noise_col[f"{n:g}"],
                 label=f"noise {n:g}")
    m_max = max([r["misfit_own"] for r in rows] + [1e-9])
    grid = np.linspace(0, 1.05 * m_max, 100)
    c = fitted["envelope"][loss]["C"]
    ax.plot(grid, grid, "k--", lw=0.8, label="gain = misfit")
    ax.plot(grid, c * np.sqrt(grid), color="grey", lw=0.8, label=f"±C√misfit, C={c:.2f}")
    ax.plot(grid, -c * np.sqrt(grid), color="grey", lw=0.8)
    ax.axhline(0, color="k", lw=0.4)
    ax.set_title(f"{loss} (f = {fitted['envelope'][loss]['own_f']})", fontsize=9)
    ax.set_xlabel("misfit_own", fontsize=8)
    ax.set_ylabel("gain_own", fontsize=8)
    ax.tick_params(labelsize=7)
    if i == 0:
      ax.legend(fontsize=6)
  fig.suptitle(f"{title}: gain against misfit (limitation |gain| <= C sqrt(misfit))", fontsize=10)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "misfit_gain.png")))

  # 2. accuracy gain against KL misfit, every loss in one panel.
  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.add_subplot(1, 1, 1)
  col = _colours(losses)
  markers = dict(zip(noises, "os^Dv<>"))
  for loss in losses:
    for n in noises:
      rr = [r for r in mg if r["loss"] == loss and r["noise"] == n]
      ax.scatter([r["misfit_kl"] for r in rr], [r["gain_accuracy"] for r in rr], s=16, color=col[loss],
                 marker=markers[n], label=loss if n == noises[0] else None)
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("misfit KL(weak || student), test mean")
  ax.set_ylabel("student - weak test accuracy")
  legend = ", ".join(f"{m}={n:g}" for n, m in markers.items())
  ax.set_title(f"accuracy gain against misfit (marker: noise {legend})", fontsize=9)
  ax.legend(fontsize=7, ncol=2)
  paths.append(_save(fig, os.path.join(outdir, "gain_accuracy_vs_misfit.png")))

  # 3. sample complexity.
  sc = sections["sample_complexity"]
  sc_noises = sorted({r["noise"] for r in sc})
  sc_losses = list(dict.fromkeys(r["loss"] for r in sc))
  col = _colours(sc_losses)
  fig = Figure(figsize=(5.5 * len(sc_noises), 4.3))
  for j, noise in enumerate(sc_noises):
    ax = fig.add_subplot(1, len(sc_noises), j + 1)
    for loss in sc_losses:
      by_n = _group([r for r in sc if r["loss"] == loss and r["noise"] == noise], "n")
      ns = sorted(k[0] for k in by_n)
      stats = [mean_ci([r["test_accuracy"] for r in by_n[(n,)]]) for n in ns]
      slope = fitted["sample_complexity"][loss][f"{noise:g}"]["excess_over_ceiling"]["slope"]
      ax.errorbar(ns, [s[0] for s in stats], yerr=[s[1] for s in stats], color=col[loss], marker="o", ms=3,
                  capsize=2, lw=1, label=f"{loss} (slope {slope:.2f})")
    ax.axhline(ceil_acc, color="k", ls="--", lw=0.8, label="ceiling")
    ax.axhline(weak_acc, color="k", ls=":", lw=0.8, label="weak")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("weakly labelled examples n")
    ax.set_ylabel("test accuracy (mean, 95% CI over seeds)")
    ax.set_title(f"noise {noise:g}; slope = d log(excess error over ceiling) / d log n", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "sample_complexity.png")))

  # 4. equivalence heatmaps.
  eq = sections["equivalence"]
  fig = Figure(figsize=(5.2 * len(eq), 4.6))
  vmax = max(float(np.max(b["disagreement"])) for b in eq.values()) or 1e-3
  for j, (noise, block) in enumerate(eq.items()):
    ax = fig.add_subplot(1, len(eq), j + 1)
    d = np.asarray(block["disagreement"])
    im = ax.imshow(d, cmap="viridis", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(block["losses"])), block["losses"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(block["losses"])), block["losses"], fontsize=7)
    baseline = _nan_stat(np.nanmean, block["seed_baseline"])
    ax.set_title(f"noise {noise}: disagreement (seed baseline {baseline:.3f})", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "equivalence.png")))

  # 5. noise dose.
  nd = sections["noise_dose"]
  kinds = list(dict.fromkeys(r["kind"] for r in nd))
  nd_losses = list(dict.fromkeys(r["loss"] for r in nd))
  col = _colours(nd_losses)
  fig = Figure(figsize=(5.5 * len(kinds), 4.3))
  for j, kind in enumerate(kinds):
    ax = fig.add_subplot(1, len(kinds), j + 1)
    for loss in nd_losses:
      by_rate = _group([r for r in nd if r["loss"] == loss and r["kind"] == kind], "rate")
      rates = sorted(k[0] for k in by_rate)
      stats = [mean_ci([r["test_accuracy"] for r in by_rate[(x,)]]) for x in rates]
      style = "-" if loss in BOUNDED else ("--" if loss in UNBOUNDED else ":")
      ax.errorbar(rates, [s[0] for s in stats], yerr=[s[1] for s in stats], color=col[loss], ls=style, marker="o",
                  ms=3, capsize=2, lw=1.2, label=loss + (" (bounded)" if loss in BOUNDED else ""))
    ax.axhline(weak_acc, color="k", ls=":", lw=0.8, label="weak")
    ax.set_xlabel("noise rate (fraction of w2s_train corrupted)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{kind}: solid = bounded f, dashed = unbounded", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "noise_dose.png")))

  # 6. trajectories, one column per noise rate.
  tr = sections["trajectory"]
  tr_noises = sorted({r["noise"] for r in tr})
  tr_losses = list(dict.fromkeys(r["loss"] for r in tr))
  col = _colours(tr_losses)
  fig = Figure(figsize=(4.6 * len(tr_noises), 7.0))
  for j, noise in enumerate(tr_noises):
    ax_acc = fig.add_subplot(2, len(tr_noises), j + 1)
    ax_mis = fig.add_subplot(2, len(tr_noises), len(tr_noises) + j + 1)
    for loss in tr_losses:
      by_step = _group([r for r in tr if r["loss"] == loss and r["noise"] == noise], "step")
      steps = sorted(k[0] for k in by_step)
      acc = [np.mean([r["test_accuracy"] for r in by_step[(s,)]]) for s in steps]
      mis = [np.mean([r["train_misfit"] for r in by_step[(s,)]]) for s in steps]
      ax_acc.plot(steps, acc, color=col[loss], lw=1.2, label=loss)
      ax_mis.plot(steps, mis, color=col[loss], lw=1.2, label=loss)
    ax_acc.axhline(weak_acc, color="k", ls=":", lw=0.8)
    ax_acc.set_title(f"noise {noise:g}", fontsize=9)
    ax_acc.set_ylabel("test accuracy (seed mean)")
    ax_mis.set_ylabel("train misfit, own f (seed mean)")
    ax_mis.set_yscale("log")
    ax_mis.set_xlabel("step")
    if j == 0:
      ax_acc.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "trajectory.png")))
  return paths


# ======================================================================
# The runner
# ======================================================================


def _validate(config) -> None:
  th = config.theory
  for loss in list(th.losses) + list(config.student.losses):
    own_divergence(loss, dict(config.student.loss_hparams.get(loss, {})))
  if int(config.seeds) < 1:
    raise ValueError(f"config.seeds={config.seeds}; it must be at least 1.")
  if int(th.trajectory.points) < 1:
    raise ValueError("theory.trajectory.points must be at least 1.")
  if engines.resolve_engine(str(config.student.engine)) != "vmap":
    raise ValueError("the theory lab trains heads on the vmapped engine; set student.engine='vmap'.")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the theory lab of ``config`` into ``workdir``: theory.json, theory.md and the figures.

  They are written with ``config.json`` at the end, as the pipeline's are (`w2sg_jax.workdir`).
  """
  from w2sg_jax import workdir as workdir_lib

  _validate(config)
  with workdir_lib.Outputs(workdir, config) as outputs:
    return _run(config, outputs)


def _run(config: ml_collections.ConfigDict, outputs) -> dict[str, Any]:
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
          "noise_dose_kinds": {str(k): float(v) for k, v in config.theory.noise_dose.kinds.items()},
          "sample_complexity_num_steps": int(config.theory.sample_complexity.get("num_steps", 0)) or lab.student_steps,
          "student_steps": lab.student_steps,
          "prob_floor": PROB_FLOOR,
      },
      "cache": {"computed": [f"{e.stage}/{e.key[:cache_lib.KEY_CHARS]}" for e in cache.computed()],
                "lab_groups_trained": lab.computed_groups},
  }
  if jax.process_index() == 0:
    t0 = time.perf_counter()
    result["figures"] = [os.path.basename(p) for p in figures(sections, fitted, staging, config.name)]
    timings["figures"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    with open(os.path.join(staging, "theory.md"), "w") as f:
      f.write(findings_markdown(config, fitted, sections, timings))
  result["timings_s"] = timings
  outputs.commit("theory.json", result)
  log.info("theory: wrote %s in %.1fs", outputs.path("theory.json"), timings["total"])
  return result
