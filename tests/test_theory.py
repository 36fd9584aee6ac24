"""The theory lab: its math against numpy / scipy, and the lab end to end on small grids."""

import json
import os

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial import distance

from tests.test_pipeline import _config
from w2sg_jax import config as schema
from w2sg_jax import cache as cache_lib
from w2sg_jax import stages as stages_lib
from w2sg_jax import tasks, theory
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probs(rng, n, c=2, low=0.02):
  p = rng.uniform(low, 1.0, size=(n, c))
  return (p / p.sum(-1, keepdims=True)).astype(np.float64)


# ------------------------------------------------------------------ the math


def test_own_divergence_maps_every_loss_to_the_f_it_minimises():
  assert theory.own_divergence("xent") == ("kl", {})
  assert theory.own_divergence("logconf", {"confidence": 0.75, "warmup": 0.2}) == ("kl", {})
  assert theory.own_divergence("js+conf", {"confidence": 0.5, "confidence_schedule": "burns"}) == ("js", {})
  assert theory.own_divergence("alpha", {"alpha": 0.5}) == ("alpha", {"alpha": 0.5})
  assert theory.own_divergence("neyman", {"eps": 1e-6}) == ("neyman", {"eps": 1e-6})
  with pytest.raises(ValueError, match="no f-divergence"):
    theory.own_divergence("product")


def _reference(name, p, q):
  """D_f(p || q) per row, from scipy / numpy, for probabilities away from 0 (no eps)."""
  if name == "kl":
    return special.rel_entr(p, q).sum(-1)
  if name == "reverse_kl":
    return special.rel_entr(q, p).sum(-1)
  if name == "jeffreys":
    return special.rel_entr(p, q).sum(-1) + special.rel_entr(q, p).sum(-1)
  if name == "js":
    return np.array([distance.jensenshannon(a, b) ** 2 for a, b in zip(p, q)])
  if name == "tv":
    return 0.5 * np.abs(p - q).sum(-1)
  if name == "hellinger":
    return ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1)
  if name == "pearson":
    return ((p - q) ** 2 / q).sum(-1)
  if name == "neyman":
    return ((p - q) ** 2 / p).sum(-1)
  raise KeyError(name)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jeffreys", "js", "tv", "hellinger", "pearson", "neyman"])
def test_misfit_is_the_mean_of_d_weak_student_under_each_f(name):
  rng = np.random.default_rng(0)
  weak, student = _probs(rng, 64, 3), _probs(rng, 64, 3)
  got = theory.misfit(name, weak, np.log(student))
  np.testing.assert_allclose(got, _reference(name, weak, student).mean(), rtol=2e-5, atol=1e-7)
  # Direction: D(weak || student), not D(student || weak), for the asymmetric ones.
  if name in ("kl", "pearson"):
    assert abs(got - _reference(name, student, weak).mean()) > 1e-3


def _clipped(p, eps=1e-7):
  c = np.maximum(p, eps)
  return c / c.sum(-1, keepdims=True)


def test_risk_and_gain_against_a_one_hot_truth_with_the_eps_convention():
  rng = np.random.default_rng(1)
  n, c = 50, 2
  labels = rng.integers(0, c, n)
  truth = np.eye(c)[labels]
  weak, student = _probs(rng, n, c), _probs(rng, n, c)
  # KL(truth || q) = -log q_y: no eps.
  np.testing.assert_allclose(theory.risk("kl", np.log(student), labels),
                             -np.log(student[np.arange(n), labels]).mean(), rtol=1e-5)
  # reverse_kl(truth || q) = KL(q || truth~): the one-hot truth is clipped at eps and renormalised.
  np.testing.assert_allclose(theory.risk("reverse_kl", np.log(student), labels),
                             special.rel_entr(student, _clipped(truth)).sum(-1).mean(), rtol=1e-4)
  # neyman(truth || q) = sum (truth~ - q)^2 / truth~.
  t = _clipped(truth)
  np.testing.assert_allclose(theory.risk("neyman", np.log(student), labels),
                             ((t - student) ** 2 / t).sum(-1).mean(), rtol=1e-3)
  for name in ("kl", "tv", "hellinger", "js", "pearson"):
    want = _reference(name, truth + 0.0, weak).mean() - _reference(name, truth + 0.0, student).mean() \
        if name in ("tv", "hellinger", "js") else None
    got = theory.gain_own(name, weak, np.log(student), labels)
    np.testing.assert_allclose(got, theory.risk(name, theory.probs_to_logits(weak), labels)
                               - theory.risk(name, np.log(student), labels), rtol=1e-6, atol=1e-7)
    if want is not None:
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_weak_probabilities_enter_as_floored_logits():
  p = np.array([[1.0, 0.0], [0.25, 0.75]])
  np.testing.assert_allclose(theory.probs_to_logits(p), np.log(np.clip(p, 1e-12, 1.0)), rtol=1e-6)
  assert np.isfinite(theory.risk("kl", theory.probs_to_logits(p), np.array([1, 0])))


def test_fit_envelope_against_numpy():
  rng = np.random.default_rng(2)
  m = rng.uniform(0.001, 0.2, 40)
  g = rng.normal(0, 1, 40) * np.sqrt(m)
  fit = theory.fit_envelope(m, g)
  assert fit["C"] == pytest.approx(np.max(np.abs(g) / np.sqrt(m)))
  c_ls = np.linalg.lstsq(np.sqrt(m)[:, None], np.abs(g), rcond=None)[0][0]
  assert fit["C_ls"] == pytest.approx(c_ls)
  assert fit["frac_gain_ge_misfit"] == pytest.approx(np.mean(g >= m))
  assert fit["runs"] == 40
  assert np.all(np.abs(g) <= fit["C"] * np.sqrt(m) + 1e-12)  # The envelope covers every run.
  # Runs with no misfit carry no information about C and are left out.
  assert theory.fit_envelope([0.0, 0.04], [0.5, 0.1])["C"] == pytest.approx(0.5)
  assert np.isnan(theory.fit_envelope([0.0], [0.1])["C"])


def test_fit_loglog_slope_against_polyfit_and_an_exact_power_law():
  n = np.array([125, 250, 500, 1000, 2000, 4000, 8000], float)
  exact = theory.fit_loglog_slope(n, 3.0 * n ** -0.5)
  assert exact["slope"] == pytest.approx(-0.5) and exact["intercept"] == pytest.approx(np.log(3.0))
  rng = np.random.default_rng(3)
  y = 0.4 * n ** -0.3 * np.exp(rng.normal(0, 0.05, len(n)))
  slope, intercept = np.polyfit(np.log(n), np.log(y), 1)
  fit = theory.fit_loglog_slope(n, y)
  assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
  # Non-positive excess errors are left out, not logged.
  assert theory.fit_loglog_slope(n, np.r_[y[:-1], -0.01])["points"] == len(n) - 1


def test_fit_power_law_recovers_floor_and_rate():
  n = np.array([125, 250, 500, 1000, 2000, 4000, 8000], float)
  err = 0.18 + 1.5 * n ** -0.5
  fit = theory.fit_power_law(n, err)
  assert fit["e_inf"] == pytest.approx(0.18, abs=2e-3)
  assert fit["b"] == pytest.approx(0.5, abs=0.02)
  assert fit["A"] == pytest.approx(1.5, rel=0.05)
  assert np.isnan(theory.fit_power_law(n[:3], err[:3])["b"])  # Three points cannot fix three parameters.


def test_disagreement_matrix_and_seed_baseline_against_a_loop():
  rng = np.random.default_rng(4)
  preds = rng.integers(0, 2, size=(4, 100))
  d = theory.disagreement_matrix(preds)
  for i in range(4):
    for j in range(4):
      assert d[i, j] == pytest.approx(np.mean([a != b for a, b in zip(preds[i], preds[j])]))
  assert np.all(np.diag(d) == 0) and np.allclose(d, d.T)
  pairs = [d[i, j] for i in range(4) for j in range(i + 1, 4)]
  assert theory.seed_disagreement(preds) == pytest.approx(np.mean(pairs))
  assert np.isnan(theory.seed_disagreement(preds[:1]))


def test_mean_ci_is_the_t_interval():
  v = np.array([0.71, 0.74, 0.69, 0.73, 0.72])
  mean, half = theory.mean_ci(v)
  lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
  assert mean == pytest.approx(v.mean()) and half == pytest.approx((hi - lo) / 2)
  assert theory.mean_ci([0.5]) == (0.5, 0.0)


def _store(tmp_path, name, probs):
  ids = [f"e{i}" for i in range(len(probs))]
  directory = str(tmp_path / name)
  store_lib.write_store(directory, ids, probs, components={"name": name})
  return store_lib.open_store(directory), ids


def test_stack_prefixes_equals_stack_for_full_streams_and_pads_prefixes(tmp_path):
  rng = np.random.default_rng(5)
  n, b, steps = 40, 8, 12
  x = rng.normal(size=(n, 3)).astype(np.float32)
  full, ids = _store(tmp_path, "full", _probs(rng, n).astype(np.float32))
  streams = [stream_lib.LabelStream(ids, {"features": x}, full, batch_size=b, num_steps=steps, seed=s) for s in (1, 2)]
  a, want = theory.stack_prefixes(streams, {"features": x}), stream_lib.stack(streams)
  np.testing.assert_array_equal(a.targets_RxNxC, want.targets_RxNxC)
  np.testing.assert_array_equal(a.order_SxRxB, want.order_SxRxB)
  assert a.seeds == want.seeds

  half, _ = _store(tmp_path, "half", full.probs[:16])
  short = stream_lib.LabelStream(ids[:16], {"features": x[:16]}, half, batch_size=b, num_steps=steps, seed=3)
  mixed = theory.stack_prefixes([streams[0], short], {"features": x})
  assert mixed.order_SxRxB[:, 1].max() < 16  # The short run only ever reads its own 16 examples...
  np.testing.assert_array_equal(mixed.order_SxRxB[:, 1], stream_lib.batch_indices(16, b, steps, 3))
  np.testing.assert_array_equal(mixed.targets_RxNxC[1, :16], full.probs[:16])  # ...with its own labels.
  with pytest.raises(ValueError, match="prefix"):
    theory.stack_prefixes([short], {"features": x[::-1].copy()})


# ------------------------------------------------------- the pipeline's misfits


def test_stages_mean_divergence_is_d_weak_student():
  rng = np.random.default_rng(6)
  weak, student = _probs(rng, 30), _probs(rng, 30)
  got = stages_lib._mean_divergence("kl", np.log(student), weak.astype(np.float32))
  assert got == pytest.approx(special.rel_entr(weak, student).sum(-1).mean(), rel=1e-5)
  got = stages_lib._mean_divergence("tv", np.log(student), weak.astype(np.float32))
  assert got == pytest.approx(0.5 * np.abs(weak - student).sum(-1).mean(), rel=1e-5)


# ------------------------------------------------------------ end to end


def _theory_config(variant="synthetic", **overrides):
  base = {"student.losses": ("xent", "tv"), "theory.losses": ("kl", "tv")} if variant == "synthetic" else {}
  return _config("tweets_theory", variant, **{**base, **overrides})


@pytest.fixture(scope="module")
def synthetic_lab(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("theory")
  config = _theory_config(**{"cache_dir": str(tmp / "cache")})
  return tmp, config, theory.run(schema.Experiment.from_configdict(config), str(tmp / "run"))


@pytest.mark.slow
def test_theory_json_has_every_section_with_the_issue_fields(synthetic_lab):
  tmp, config, result = synthetic_lab
  saved = json.loads((tmp / "run" / "theory.json").read_text())
  seeds, th = config.seeds, config.theory
  fields = {
      "misfit_gain": {"loss", "noise", "seed", "misfit_own", "misfit_kl", "misfit_tv", "gain_accuracy", "gain_own"},
      "sample_complexity": {"loss", "noise", "n", "seed", "test_accuracy", "pgr"},
      "noise_dose": {"loss", "kind", "rate", "seed", "test_accuracy"},
      "trajectory": {"loss", "noise", "seed", "step", "test_accuracy", "train_misfit"},
  }
  for section, keys in fields.items():
    assert saved[section] and all(set(r) == keys for r in saved[section]), section
  assert len(saved["misfit_gain"]) == len(config.student.losses) * len(config.student.noise.rates) * seeds
  assert len(saved["sample_complexity"]) == (
      len(th.losses) * len(th.sample_complexity.noise_rates) * len(th.sample_complexity.sizes) * seeds)
  assert len(saved["noise_dose"]) == len(th.losses) * len(th.noise_dose.kinds) * len(th.noise_dose.rates) * seeds
  # Trajectories: every run evaluated at `points` chunk boundaries, the last at the final step.
  steps = sorted({r["step"] for r in saved["trajectory"]})
  assert len(steps) >= th.trajectory.points
  runs = len(th.losses) * len(th.trajectory.noise_rates) * seeds
  assert len(saved["trajectory"]) == runs * len(steps)
  assert steps[-1] == stream_lib.num_steps_for(th.trajectory.n, config.student.train.batch_size, th.trajectory.epochs)
  # Equivalence: square, symmetric, zero diagonal, one block per noise rate.
  assert set(saved["equivalence"]) == {f"{r:g}" for r in config.student.noise.rates}
  for block in saved["equivalence"].values():
    d = np.asarray(block["disagreement"])
    assert d.shape == (len(block["losses"]),) * 2 and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
  for r in saved["misfit_gain"]:
    assert r["misfit_own"] >= 0 and r["misfit_kl"] >= 0 and 0 <= r["misfit_tv"] <= 1
  assert saved["settings"]["noise_dose_kinds"] == {"flip": -1.0, "shrink": 0.25}
  for name in ("C", "C_ls", "frac_gain_ge_misfit"):
    assert all(name in e for e in saved["fits"]["envelope"].values())


@pytest.mark.slow
def test_theory_writes_findings_and_figures(synthetic_lab):
  tmp, _, result = synthetic_lab
  md = (tmp / "run" / "theory.md").read_text()
  for heading in ("## 1. Misfit and gain", "## 2. Sample complexity", "## 3. Equivalence", "## 4. Noise dose",
                  "## 5. Trajectories"):
    assert heading in md
  assert md.count("**") >= 10  # One verdict per finding.
  pngs = sorted(p.name for p in (tmp / "run").glob("*.png"))
  assert len(pngs) >= 5 and set(result["figures"]) == set(pngs)
  for p in (tmp / "run").glob("*.png"):
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_lab_rows_match_the_pipeline_students_and_their_misfits(synthetic_lab):
  tmp, config, result = synthetic_lab
  # The theory lab went through the stages: the same cache answers the pipeline's students without training.
  cache = cache_lib.Cache(config.cache_dir)
  stages = stages_lib.Stages(schema.Experiment.from_configdict(config), tasks.get(config.task), cache)
  data = stages.data()
  weak = stages.weak(data)
  students = stages.students(data, weak)
  assert not cache.computed("student")
  rows = {(r["loss"], r["noise"], r["seed"]): r for r in result["misfit_gain"]}
  weak_test = weak.stores["test"].probs.astype(np.float64)
  for run in students.runs:
    logits = np.load(os.path.join(run.cache_entry, stages_lib.TEST_LOGITS)).astype(np.float64)
    q = special.softmax(logits, -1)
    # results.json's misfit_kl / misfit_tv: mean over test examples of D(weak || student).
    assert run.misfit_kl == pytest.approx(special.rel_entr(weak_test, q).sum(-1).mean(), rel=1e-4, abs=1e-6)
    assert run.misfit_tv == pytest.approx(0.5 * np.abs(weak_test - q).sum(-1).mean(), rel=1e-4, abs=1e-6)
    row = rows[(run.loss, run.noise, run.seed)]
    assert row["misfit_kl"] == pytest.approx(run.misfit_kl, rel=1e-5)
    assert row["gain_accuracy"] == pytest.approx(run.test_accuracy - weak.test_accuracy, abs=1e-9)
  # The sample-complexity run on every example at noise 0 is the pipeline's noise-0 student of its loss.
  full = int(max(config.theory.sample_complexity.sizes))
  if full == len(data.splits["w2s_train"]) and "kl" in config.student.losses:
    sc = {(r["loss"], r["noise"], r["n"], r["seed"]): r["test_accuracy"] for r in result["sample_complexity"]}
    for run in students.runs:
      if run.loss == "kl" and run.noise == 0.0:
        assert sc[("kl", 0.0, full, run.seed)] == pytest.approx(run.test_accuracy)


def test_main_dispatches_on_runner(tmp_path):
  from w2sg_jax import main

  config = _theory_config(**{"cache_dir": str(tmp_path / "cache")})
  with config.unlocked():
    config.runner = "nonsense"
  with pytest.raises(ValueError, match="runner"):
    main.run(config, str(tmp_path / "run"))


def test_a_loss_without_an_f_is_refused_before_any_compute(tmp_path):
  config = _theory_config(**{"cache_dir": str(tmp_path / "cache"), "theory.losses": ("kl", "product")})
  with pytest.raises(ValueError, match="product"):
    theory.run(schema.Experiment.from_configdict(config), str(tmp_path / "run"))
  assert not (tmp_path / "cache" / "weak").exists()


@pytest.mark.slow
def test_rerun_trains_nothing_and_gives_the_same_sections(synthetic_lab):
  tmp, config, first = synthetic_lab
  second = theory.run(schema.Experiment.from_configdict(config), str(tmp / "rerun"))
  assert second["cache"]["computed"] == [] and second["cache"]["lab_groups_trained"] == 0
  for section in ("misfit_gain", "sample_complexity", "noise_dose", "trajectory", "equivalence"):
    assert second[section] == first[section], section


@pytest.mark.slow
def test_tweets_theory_smoke_on_the_minilm_features(tmp_path):
  config = _theory_config("smoke", cache_dir=str(tmp_path / "cache"))
  result = theory.run(schema.Experiment.from_configdict(config), str(tmp_path / "run"))
  assert result["task"] == "tweets"
  assert len({r["n"] for r in result["sample_complexity"]}) == len(config.theory.sample_complexity.sizes)
  assert (tmp_path / "run" / "theory.md").exists() and len(result["figures"]) >= 5
  # The real MiniLM beats its embedding layer, and a student on clean labels beats its supervisor.
  assert result["ceiling"]["test_accuracy"] > result["weak"]["test_accuracy"]
