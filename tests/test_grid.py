"""Hyperparameter grids: expansion, keys, selection without gold labels, and the report."""

import json
import os

import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, grid, pipeline, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_grid_expands_to_the_product_in_order():
  points = grid.expand({"learning_rate": (1e-3, 1e-2), "weight_decay": (0.0, 0.1), "loss_alpha": (0.5,)})
  assert points == [{"learning_rate": a, "weight_decay": b, "loss_alpha": 0.5} for a in (1e-3, 1e-2) for b in (0.0, 0.1)]
  # A loss that does not take alpha drops that axis (and its duplicates).
  assert grid.points_for({"learning_rate": (1e-3,), "loss_alpha": (0.25, 0.5)}, lambda hp: False) == [
      {"learning_rate": 1e-3}]
  assert grid.optimizer_part({"learning_rate": 1e-3, "loss_alpha": 0.5}) == {"learning_rate": 1e-3}
  assert grid.loss_part({"learning_rate": 1e-3, "loss_alpha": 0.5}) == {"alpha": 0.5}


def _run(loss, noise, seed, point, holdout, test):
  return {"loss": loss, "noise": noise, "seed": seed, "grid_point": point, "holdout_score": holdout,
          "test_accuracy": test}


def test_the_weak_holdout_pick_reads_no_gold_label():
  """Poisoning every test accuracy (what gold labels decide) moves the oracle's pick, never the weak one's."""
  rng = np.random.default_rng(0)
  points = [{}, {"learning_rate": 1e-3}, {"learning_rate": 1e-2}, {"learning_rate": 1e-1}]
  runs = [_run("js", 0.2, s, p, float(rng.random()), float(rng.random())) for p in points for s in (1, 2, 3)]
  weak = grid.pick(runs, "holdout_score")[("js", 0.2)]["grid_point"]
  best_holdout = max(points, key=lambda p: np.mean([r["holdout_score"] for r in runs if r["grid_point"] == p]))
  assert weak == best_holdout
  poisoned = [{**r, "test_accuracy": 1.0 - r["test_accuracy"]} for r in runs]
  assert grid.pick(poisoned, "holdout_score")[("js", 0.2)]["grid_point"] == weak
  oracle = grid.pick(runs, "test_accuracy")[("js", 0.2)]["grid_point"]
  assert oracle == max(points, key=lambda p: np.mean([r["test_accuracy"] for r in runs if r["grid_point"] == p]))
  assert grid.pick(poisoned, "test_accuracy")[("js", 0.2)]["grid_point"] != oracle or len(points) == 1


def test_bad_grids_are_refused_with_the_fix():
  def student(**overrides):
    c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"))
    with c.unlocked():
      for k, v in overrides.items():
        c.student[k] = v
    return schema.Experiment.from_configdict(c)

  with pytest.raises(schema.ConfigError, match="weak-labelled holdout"):
    student(grid={"learning_rate": (1e-3, 1e-2)})
  with pytest.raises(schema.ConfigError, match="not a grid axis"):
    student(grid={"momentum": (0.9,)})
  with pytest.raises(schema.ConfigError, match="lists a value twice"):
    student(grid={"learning_rate": (1e-3, 1e-3)})


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("grid")
  c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), {
      "seeds": 2, "data.sizes.weak_train": 256, "data.sizes.w2s_train": 512, "data.sizes.test": 256,
      "student.losses": ("xent", "js"), "student.noise.rates": (0.0, 0.4), "student.train.epochs": 2,
      "student.train.select.metric": "accuracy", "student.train.select.holdout": 64,
      "cache_dir": str(tmp / "cache")})
  default_lr = float(c.student.train.optimizer.learning_rate)
  with c.unlocked():
    c.student.grid = {"learning_rate": (default_lr, default_lr * 10)}
  p = pipeline.Pipeline(schema.Experiment.from_configdict(c), str(tmp / "run"), tasks.get(c.task))
  return tmp, p.run(), p.cache, default_lr


@pytest.mark.slow
def test_a_grid_reports_default_weak_holdout_and_oracle_side_by_side(grid_run):
  tmp, results, cache, default_lr = grid_run
  selections = {}
  for row in results["summary"]:
    selections.setdefault(row["selection"], []).append(row)
  assert set(selections) == {"default", "weak_holdout", "oracle"}
  assert all(len(rows) == 4 for rows in selections.values())  # 2 losses x 2 noise rates
  assert all(row["grid_point"] == {} for row in selections["default"])
  # The oracle is the best test accuracy among the points: never below the default or the weak pick.
  by = {(r["selection"], r["loss"], r["noise"]): r["accuracy_mean"] for r in results["summary"]}
  for loss in ("xent", "js"):
    for noise in (0.0, 0.4):
      assert by[("oracle", loss, noise)] >= max(by[("default", loss, noise)], by[("weak_holdout", loss, noise)])
  # The point equal to the config's own learning rate IS the default run: trained once, listed once (as {}).
  runs = results["runs"]
  assert not [r for r in runs if r["grid_point"].get("learning_rate") == default_lr]
  assert len(runs) == len({r["cache_entry"] for r in runs}) == 2 * 2 * 2 * 2  # losses x noise x seeds x lrs
  assert all(r["holdout_score"] is not None for r in runs)  # The default too: the weak pick can choose it.
  assert results["grid"]["default_point"] == {"xent": {"learning_rate": default_lr},
                                              "js": {"learning_rate": default_lr}}
  assert results["grid"]["points"] == 2 and all(row["points"] == 2 for row in results["grid"]["spread"])
  # The headline is the weak pick, and says which setting each row comes from.
  assert results["summary_selection"] == "weak_holdout"
  summary_md = (tmp / "run" / "summary.md").read_text()
  assert "| setting |" in summary_md and "no gold label is read" in summary_md
  picked = {row["setting"] for row in selections["weak_holdout"]}
  assert picked <= {f"default (learning_rate={default_lr:g})", f"learning_rate={default_lr * 10:g}"}
  text = (tmp / "run" / "tuning.md").read_text()
  assert "weak_holdout" in text and "oracle (bound)" in text
  assert (tmp / "run" / "accuracy_vs_learning_rate.png").stat().st_size > 1000
  written = json.loads((tmp / "run" / "results.json").read_text())
  assert {r["selection"] for r in written["summary"]} == {"default", "weak_holdout", "oracle"}
  # One TensorBoard folder per run: the grid's points do not share (or overwrite) one.
  folders = [d for d in os.listdir(tmp / "run" / "tensorboard" / "students") if not d.startswith(".")]
  assert len(folders) == len(runs) and any("learning_rate=" in d for d in folders)
  # `w2sg report` rebuilds the same headline (the weak pick's rows only) and tuning.md from results.json.
  from w2sg_jax import cli  # pylint: disable=g-import-not-at-top
  before = {n: (tmp / "run" / n).read_text() for n in ("summary.md", "summary.csv", "tuning.md")}
  for n in before:
    (tmp / "run" / n).unlink()
  assert cli.main(["report", str(tmp / "run"), "--no-curves"]) == 0
  assert {n: (tmp / "run" / n).read_text() for n in before} == before


def test_the_plan_counts_every_grid_point_once_with_the_default_among_them():
  from w2sg_jax import config as schema
  from w2sg_jax import plan

  plans = {"weak": {"num_steps": 10, "eval_batch_size": 8}, "strong": {"num_steps": 100, "eval_batch_size": 8}}

  def counts(**overrides):
    c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), {
        "student.losses": ("xent", "alpha", "logconf"), "student.train.select.metric": "accuracy",
        "student.train.select.holdout": 64, **overrides})
    c = schema.Experiment.from_configdict(c).to_configdict()
    return plan.whole_config_counts(schema.Experiment.from_configdict(c), plans)["strong"]

  base = counts()
  cells = base["runs"] - 2  # Minus the ceiling's seeds.
  lr = float(config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke")).student.train
             .optimizer.learning_rate)
  # The config's own rate is one of the three: 3 settings per loss, not 4.
  with_lr = counts(**{"student.grid": {"learning_rate": (lr, lr / 3, lr * 3)}})
  assert with_lr["runs"] - 2 == 3 * cells
  # alpha takes `alpha`, the others do not: 2 x 2 points for alpha (the default's 0.5 absent: +1), 2 for the rest.
  mixed = counts(**{"student.grid": {"learning_rate": (lr / 3, lr * 3), "loss_alpha": (0.25, 0.75)}})
  per_cell = cells // 3
  assert mixed["runs"] - 2 == per_cell * ((4 + 1) + (2 + 1) + (2 + 1))


@pytest.fixture(scope="module")
def weak_and_ceiling_grid_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("weak_ceiling_grid")
  overrides = {
      "seeds": 2, "data.sizes.weak_train": 256, "data.sizes.w2s_train": 512, "data.sizes.test": 256,
      "student.losses": ("xent",), "student.noise.rates": (0.0,), "student.train.epochs": 2,
      "student.train.select.metric": "accuracy", "student.train.select.holdout": 64,
      "weak.train.select.metric": "accuracy", "weak.train.select.holdout": 48, "cache_dir": str(tmp / "cache")}
  c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), overrides)
  weak_lr = float(c.weak.train.optimizer.learning_rate)
  strong_lr = float(c.student.train.optimizer.learning_rate)
  with c.unlocked():
    c.weak.grid = {"learning_rate": (weak_lr / 30, weak_lr, weak_lr * 10)}
    c.ceiling.grid = {"learning_rate": (strong_lr / 30, strong_lr * 3)}
  p = pipeline.Pipeline(schema.Experiment.from_configdict(c), str(tmp / "run"), tasks.get(c.task))
  results = p.run()
  plain = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), overrides)
  return tmp, results, p.cache, (weak_lr, strong_lr), plain


@pytest.mark.slow
def test_weak_and_ceiling_grids_pick_on_their_ground_truth_holdouts(weak_and_ceiling_grid_run):
  tmp, results, cache, (weak_lr, strong_lr), plain = weak_and_ceiling_grid_run
  weak, ceiling = results["weak"], results["ceiling"]
  # The config's own setting is a point ({}), listed first; a grid value equal to it is that point, not a copy.
  assert [r["grid_point"] for r in weak["grid"]] == [{}, {"learning_rate": weak_lr / 30},
                                                     {"learning_rate": weak_lr * 10}]
  assert [r["grid_point"] for r in ceiling["grid"]] == [{}, {"learning_rate": strong_lr / 30},
                                                        {"learning_rate": strong_lr * 3}]
  for part in (weak, ceiling):
    scores = [r["holdout_score"] for r in part["grid"]]
    assert all(s is not None for s in scores)
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # Ties: the earlier point.
    assert part["grid_point"] == part["grid"][best]["grid_point"]
    # The reported model is the picked point's.
    assert part["test_accuracy"] == pytest.approx(part["grid"][best]["test_accuracy"], abs=1e-12)
  # A 1/30 learning rate barely moves the weak model: it should not be the pick.
  assert weak["grid_point"] != {"learning_rate": weak_lr / 30}
  # 3 weak models; 2 ceiling seeds x 3 points.
  entries = lambda stage: [d for d in os.listdir(os.path.join(cache.root, stage)) if not d.startswith(".")]  # noqa: E731
  assert len(entries("weak")) == 3
  assert len(entries("ceiling")) == 6


@pytest.mark.slow
def test_the_config_s_own_weak_and_ceiling_points_are_the_runs_without_a_grid(weak_and_ceiling_grid_run):
  """Without the grids, the same config reuses the default points' weak model and ceiling runs, and their
  test accuracies are the grid table's first rows: an empty grid keys nothing new."""
  tmp, results, cache, _, plain = weak_and_ceiling_grid_run
  with plain.unlocked():
    plain.cache_dir = str(tmp / "cache")
    plain.student.grid = {}
  p = pipeline.Pipeline(schema.Experiment.from_configdict(plain), str(tmp / "plain"), tasks.get(plain.task))
  again = p.run()
  assert not [e for e in p.cache.computed() if e.stage in ("weak", "ceiling")]
  assert again["weak"]["test_accuracy"] == pytest.approx(results["weak"]["grid"][0]["test_accuracy"], abs=1e-12)
  assert again["ceiling"]["test_accuracy"] == pytest.approx(results["ceiling"]["grid"][0]["test_accuracy"],
                                                            abs=1e-12)
  assert "grid" not in again["weak"] and "grid" not in again["ceiling"]


def test_weak_and_ceiling_grids_are_checked_before_compute():
  c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"))
  with c.unlocked():
    c.weak.grid = {"loss_alpha": (0.5,)}
    c.ceiling.grid = {"learning_rate": (1e-3,)}
  with pytest.raises(schema.ConfigError) as e:
    schema.Experiment.from_configdict(c)
  text = str(e.value)
  assert "weak.grid['loss_alpha']" in text and "xent, which has no hyperparameters" in text
  assert "ceiling.grid" in text and "student.train.select.metric" in text
  with c.unlocked():
    c.weak.grid = {"learning_rate": (1e-3, 3e-3)}
    c.ceiling.grid = {}
  with pytest.raises(schema.ConfigError) as e:
    schema.Experiment.from_configdict(c)
  assert "weak.train.select.metric" in str(e.value)


def test_the_plan_counts_the_weak_and_ceiling_grid_points():
  from w2sg_jax import plan

  plans = {"weak": {"num_steps": 10, "eval_batch_size": 8}, "strong": {"num_steps": 100, "eval_batch_size": 8}}
  c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"))
  c = schema.Experiment.from_configdict(c).to_configdict()
  with c.unlocked():  # The holdouts that weak.grid and ceiling.grid pick on.
    c.weak.train.select = {"metric": "accuracy", "holdout": 50, "every": 0}
    c.student.train.select = {"metric": "accuracy", "holdout": 50, "every": 0}
  before = plan.whole_config_counts(schema.Experiment.from_configdict(c), plans)
  lr = float(c.weak.train.optimizer.learning_rate)
  with c.unlocked():
    c.weak.grid = {"learning_rate": (lr, lr / 3, lr * 3)}  # The config's own rate among them: 3 models, not 4.
    c.ceiling.grid = {"weight_decay": (0.5,)}  # One more point per seed.
  after = plan.whole_config_counts(schema.Experiment.from_configdict(c), plans)
  assert after["weak"]["runs"] == 3 * before["weak"]["runs"]
  assert after["strong"]["runs"] == before["strong"]["runs"] + int(c.seeds)


@pytest.mark.slow
def test_a_loss_hparam_grid_and_every_loss_share_one_training_loop(tmp_path):
  """student.grid's loss_<hparam> values and the other losses all train through one compiled loop (the
  students' loss table): the stage compiles one training loop for 2 losses x 3 alphas."""
  from tests.helpers.compiles import count_compilations

  c = config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), {
      "seeds": 2, "data.sizes.weak_train": 256, "data.sizes.w2s_train": 512, "data.sizes.test": 256,
      "student.losses": ("alpha", "xent"), "student.noise.rates": (0.0,), "student.train.epochs": 2,
      "student.train.select.metric": "accuracy", "student.train.select.holdout": 64,
      "cache_dir": str(tmp_path / "cache")})
  with c.unlocked():
    c.student.grid = {"loss_alpha": (0.25, 0.75)}
  p = pipeline.Pipeline(schema.Experiment.from_configdict(c), str(tmp_path / "run"), tasks.get(c.task))
  data = p.stages.data()
  weak = p.stages.weak(data)
  with count_compilations() as compiled:
    runs = p.stages.students(data, weak).runs
  assert compiled.get("jit(run_steps)", 0) == 1, dict(compiled)
  alphas = sorted({r.grid_point.get("loss_alpha", 0.5) for r in runs if r.loss == "alpha"})
  assert alphas == [0.25, 0.5, 0.75] and len(runs) == 2 * (3 + 1)
