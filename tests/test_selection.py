"""Model selection by a validation metric (`w2sg_jax.selection`, ``train.select``)."""

import json
import os

import jax
import numpy as np
import pytest
import scipy.stats

from w2sg_jax import config as schema
from w2sg_jax import engines
from w2sg_jax import losses
from w2sg_jax import selection
from w2sg_jax import train as train_lib
from w2sg_jax import validate
from w2sg_jax.labels import store as store_lib
from w2sg_jax.models import FeatureHead
from w2sg_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, D = 320, 6
HOLDOUT = 64


def _auroc_reference(scores, labels):
  """AUROC as the Mann-Whitney U statistic over (positive, negative) pairs."""
  u = scipy.stats.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
  return u / ((labels == 1).sum() * (labels == 0).sum())


def _problem(tmp_path, num_stores=2):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(np.float32)
  w = rng.normal(size=D)
  ids = [f"x{i}" for i in range(N)]
  stores = []
  for k in range(num_stores):
    p1 = 1 / (1 + np.exp(-(x @ w + rng.normal(scale=2.0, size=N))))  # Noisy soft labels.
    probs = np.stack([1 - p1, p1], 1).astype(np.float32)
    stores.append(store_lib.write_store(str(tmp_path / f"s{k}"), ids, probs, components={"k": k}))
  return ids, {"features": x}, stores


def _cfg(metric="auroc", engine_steps=48, every=8):
  return schema.TrainConfig(batch_size=16, num_steps=engine_steps, epochs=1, log_every=4, save_every=1000,
                            eval_batch_size=64, optimizer=schema.OptimizerConfig(name="adamw", learning_rate=3e-2),
                            select=schema.SelectConfig(metric=metric, holdout=HOLDOUT, every=every))


def _smoke(**overrides):
  return config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), overrides)


def _make_model(rngs):
  return FeatureHead(D, (8,), 2, rngs=rngs)


# ------------------------------------------------------------------ the spec


def test_score_matches_independent_auroc_and_accuracy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(200, 2)).astype(np.float32)
  p1 = rng.uniform(size=200)
  targets = np.stack([1 - p1, p1], 1)
  labels = (p1 > 0.5).astype(int)  # EleutherAI's hardening of a soft label.
  margin = logits[:, 1] - logits[:, 0]
  auroc = selection.Selection("auroc", holdout=10).score(logits, targets)
  assert auroc == pytest.approx(_auroc_reference(margin, labels), abs=1e-6)
  acc = selection.Selection("accuracy", holdout=10).score(logits, targets)
  assert acc == pytest.approx(np.mean((margin > 0) == labels))


def test_eval_steps_every_period_or_epoch_and_always_the_last():
  s = selection.Selection("auroc", holdout=10, every=4)
  assert s.eval_steps(10, steps_per_epoch=3) == (4, 8, 10)
  assert selection.Selection("auroc", holdout=10).eval_steps(10, steps_per_epoch=3) == (3, 6, 9, 10)
  assert selection.Selection("accuracy", holdout=10, every=20).eval_steps(10, 3) == (10,)


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "loss"}, "use one of last, auroc, accuracy"),
    ({"metric": "auroc"}, "needs a validation holdout"),
    ({"metric": "last", "holdout": 5}, "would drop training rows for nothing"),
    ({"metric": "auroc", "holdout": 5, "every": -1}, ">= 0"),
])
def test_bad_selection_is_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    selection.Selection(**kwargs)


def test_auroc_on_a_one_class_holdout_is_refused_before_training(tmp_path):
  ids, inputs, _ = _problem(tmp_path, num_stores=0)
  probs = np.tile([[0.2, 0.8]], (N, 1)).astype(np.float32)
  store = store_lib.write_store(str(tmp_path / "one"), ids, probs, components={"one": 1})
  with pytest.raises(ValueError, match="AUROC is undefined"):
    engines.train_runs([engines.RunSpec(seed=0, store=store)], engine="vmap", make_model=_make_model, train_ids=ids,
                       train_inputs=inputs, eval_inputs={}, loss_fn=losses.get("xent"), train_cfg=_cfg(),
                       progress=False)


def test_config_checks_name_the_select_keys():
  cfg = _smoke(**{"student.train.select.metric": "val_auroc", "weak.train.select.holdout": 3})  # 3 with 'last'.
  with cfg.unlocked():
    cfg.student.train.select.evry = 5
  with pytest.raises(validate.ConfigError) as e:
    validate.check_config(cfg, num_devices=8)
  text = str(e.value)
  assert "student.train.select.metric='val_auroc': unknown metric; use one of: last, auroc, accuracy" in text
  assert "weak.train.select.holdout=3: drops training rows for nothing" in text
  assert "student.train.select.evry" in text and "did you mean" in text
  cfg = _smoke(**{"weak.train.select.metric": "auroc", "weak.train.select.holdout": 1024})  # All of weak_train.
  with pytest.raises(validate.ConfigError, match="holds out every one of the 1024 examples"):
    validate.check_config(cfg, num_devices=8)


# ------------------------------------------------------------------ vmap engine


def test_vmap_returns_each_runs_best_evaluated_step(tmp_path):
  """The snapshots of `on_chunk`, scored by hand, pick the same step and give the same logits."""
  ids, inputs, stores = _problem(tmp_path)
  cfg = _cfg()
  snapshots = {}
  trained = engines.train_runs(
      [engines.RunSpec(seed=s, store=st) for s, st in zip((3, 4), stores)], engine="vmap", make_model=_make_model,
      train_ids=ids, train_inputs=inputs, eval_inputs={"all": inputs}, loss_fn=losses.get("js"), train_cfg=cfg,
      progress=False, on_chunk=lambda step, apply, params: snapshots.__setitem__(step, (apply, jax.tree.map(np.array, params))))
  val_x = {"features": inputs["features"][N - HOLDOUT:]}
  for r, store in enumerate(stores):
    labels = np.argmax(store.probs[N - HOLDOUT:], -1)
    scores = {}
    for step in (8, 16, 24, 32, 40, 48):
      apply, params = snapshots[step]
      logits = np.asarray(apply(params, val_x))[r]
      scores[step] = _auroc_reference(logits[:, 1] - logits[:, 0], labels)
    assert [row["step"] for row in trained.validation[r]] == list(scores)
    np.testing.assert_allclose([row["val_auroc"] for row in trained.validation[r]], list(scores.values()), atol=1e-6)
    best = max(scores, key=lambda s: (scores[s], -s))
    assert trained.selected_steps[r] == best
    apply, params = snapshots[best]
    np.testing.assert_allclose(trained.logits["all"][r], np.asarray(apply(params, inputs))[r], atol=1e-6)


def test_the_holdout_is_not_trained_on(tmp_path):
  """Changing the holdout's inputs changes nothing but the selection's scores."""
  ids, inputs, stores = _problem(tmp_path, num_stores=1)
  run = [engines.RunSpec(seed=3, store=stores[0])]
  kw = dict(engine="vmap", make_model=_make_model, train_ids=ids, eval_inputs={"all": inputs},
            loss_fn=losses.get("xent"), train_cfg=_cfg(metric="accuracy", every=48), progress=False)
  a = engines.train_runs(run, train_inputs=inputs, **kw)
  changed = {"features": inputs["features"].copy()}
  changed["features"][N - HOLDOUT:] *= -1
  b = engines.train_runs(run, train_inputs=changed, **kw)
  assert a.selected_steps == b.selected_steps == [48]  # One evaluation: the last step.
  np.testing.assert_allclose(a.logits["all"][0], b.logits["all"][0], atol=1e-6)
  assert a.validation[0][0]["val_accuracy"] != b.validation[0][0]["val_accuracy"]


# ------------------------------------------------------------ data parallel


@pytest.mark.slow
def test_data_parallel_selects_the_same_step_as_vmap(tmp_path):
  ids, inputs, stores = _problem(tmp_path, num_stores=1)
  kw = dict(make_model=_make_model, train_ids=ids, train_inputs=inputs, eval_inputs={"all": inputs},
            loss_fn=losses.get("js"), train_cfg=_cfg(), progress=False)
  v = engines.train_runs([engines.RunSpec(seed=3, store=stores[0])], engine="vmap", **kw)
  d = engines.train_runs([engines.RunSpec(seed=3, store=stores[0], work_dir=str(tmp_path / "run"))],
                         engine="data_parallel", **kw)
  assert d.selected_steps == v.selected_steps
  np.testing.assert_allclose([r["val_auroc"] for r in d.validation[0]], [r["val_auroc"] for r in v.validation[0]],
                             atol=1e-4)
  np.testing.assert_allclose(d.logits["all"][0], v.logits["all"][0], atol=1e-4)
  rows = [json.loads(line) for line in open(tmp_path / "run" / "validation.jsonl")]
  assert [r["step"] for r in rows] == [8, 16, 24, 32, 40, 48]


class _Stop(Exception):
  pass


@pytest.mark.slow
def test_data_parallel_resumed_run_selects_as_an_uninterrupted_one(tmp_path, monkeypatch):
  ids, inputs, stores = _problem(tmp_path, num_stores=1)
  kw = dict(engine="data_parallel", make_model=_make_model, train_ids=ids, train_inputs=inputs,
            eval_inputs={"all": inputs}, loss_fn=losses.get("js"), train_cfg=_cfg(), progress=False)
  clean = engines.train_runs([engines.RunSpec(seed=3, store=stores[0], work_dir=str(tmp_path / "clean"))], **kw)

  real_fit = train_lib.fit

  def killed_at_27(*a, **k):
    def stop(step):
      if step == 27:
        raise _Stop
    return real_fit(*a, **k, on_step=stop)

  monkeypatch.setattr(train_lib, "fit", killed_at_27)
  run = [engines.RunSpec(seed=3, store=stores[0], work_dir=str(tmp_path / "killed"))]
  with pytest.raises(_Stop):
    engines.train_runs(run, **kw)
  monkeypatch.setattr(train_lib, "fit", real_fit)
  resumed = engines.train_runs(run, **kw)
  assert resumed.selected_steps == clean.selected_steps
  assert resumed.validation == clean.validation
  np.testing.assert_allclose(resumed.logits["all"][0], clean.logits["all"][0], atol=1e-6)


def test_best_checkpoints_after_the_resumed_step_are_dropped(tmp_path):
  """A kill between a best-so-far save and the step's checkpoint leaves a newer best: it is dropped."""
  state = train_lib.init_state({"w": np.zeros(3, np.float32)}, {}, train_lib.make_optimizer(
      schema.OptimizerConfig(name="sgd", learning_rate=0.1), 10)[0], 0)
  best_dir = str(tmp_path / "best")
  ckpt = train_lib.Checkpointer(best_dir, max_to_keep=2)
  for step, value in ((4, 1.0), (6, 2.0)):
    ckpt.save(state.replace(step=np.asarray(step, np.int32), params={"w": np.full(3, value, np.float32)}), step)
  ckpt.close()
  best = train_lib._Best(best_dir, "val_auroc", [{"step": 2, "val_auroc": 0.6}, {"step": 4, "val_auroc": 0.7}],
                         start=5)
  restored, step = best.restore(like=state)
  best.close()
  assert step == 4
  np.testing.assert_array_equal(restored.params["w"], np.full(3, 1.0))
  assert sorted(int(s) for s in os.listdir(best_dir) if s.isdigit()) == [4]


# ------------------------------------------------------------------ pipeline


@pytest.mark.slow
def test_pipeline_records_selected_steps_and_keys_only_change_when_on(tmp_path):
  from w2sg_jax import pipeline, stages, tasks

  train = schema.Experiment.from_configdict(_smoke()).student.train
  # A select block that keeps the last step is its neutral value: not in the key.
  assert "select" not in stages.semantic(train)
  cfg = _smoke(**{"seeds": 1, "student.losses": ("xent",), "student.noise.rates": (0.0,),
                  "student.train.select.metric": "auroc", "student.train.select.holdout": 256,
                  "weak.train.select.metric": "accuracy", "weak.train.select.holdout": 128})
  assert "select" in stages.semantic(schema.Experiment.from_configdict(cfg).student.train)
  with cfg.unlocked():
    cfg.cache_dir = str(tmp_path / "cache")
  results = pipeline.Pipeline(schema.Experiment.from_configdict(cfg), str(tmp_path / "run"), tasks.get(cfg.task)).run()
  student = results["runs"][0]
  per_epoch = (2048 - 256) // 64
  assert student["selected_step"] in range(per_epoch, 2 * per_epoch + 1, per_epoch)
  assert results["ceiling"]["selected_steps"][0] in (per_epoch, 2 * per_epoch)
  assert results["weak"]["selected_step"] in range((1024 - 128) // 64, 4 * ((1024 - 128) // 64) + 1,
                                                   (1024 - 128) // 64)
