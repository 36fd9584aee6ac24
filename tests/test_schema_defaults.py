"""Below the config boundary, a key left out of a raw block takes the schema's default (`w2sg_jax.config`).

Each test leaves a key out of the block a code path reads and checks the
number that path then uses against the schema's field. Two of them were
drift bugs: the optimizer's ``grad_clip`` (0 = no clip here, 1.0 in the
schema) and a pretrained role's ``dtype`` (float32 here, bfloat16 in the
schema).
"""

import dataclasses
import inspect
import types

import jax.numpy as jnp
import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import engines, losses, metrics, parallel, selection, train
from w2sg_jax.labels import store as store_lib
from w2sg_jax.models import FeatureHead
from w2sg_jax.tasks import pretrained_roles
from w2sg_jax.theory import lab as lab_lib


def _train(**raw):
  """A training block that leaves out every key but ``raw`` (and the two it needs), converted at the boundary."""
  return schema.resolve_block(schema.TrainConfig, {"batch_size": 8, "optimizer": {"learning_rate": 1e-2}, **raw},
                              "student.train.")


# ------------------------------------------------------------------ optimizer


@pytest.mark.parametrize("inject", [False, True])
def test_an_optimizer_without_grad_clip_clips_at_the_schemas_norm(inject):
  assert schema.OptimizerConfig.grad_clip == 1.0
  params = {"w": jnp.zeros(2)}
  grads = {"w": jnp.array([6.0, 8.0])}  # Global norm 10.

  def first_update(**extra):
    opt = schema.OptimizerConfig(name="sgd", learning_rate=1.0, schedule="constant", **extra)
    tx, _ = train.make_optimizer(opt, 10, inject=inject)
    return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

  # SGD at rate 1: the update is -g, clipped to norm 1 -> -g / 10.
  np.testing.assert_allclose(first_update(), [-0.6, -0.8], rtol=1e-6)
  np.testing.assert_array_equal(first_update(), first_update(grad_clip=schema.OptimizerConfig.grad_clip))
  np.testing.assert_allclose(first_update(grad_clip=0.0), [-6.0, -8.0], rtol=1e-6)  # 0 = off, as the schema says.


def test_a_bare_optimizer_follows_the_schemas_schedule_and_adamw():
  # A config block that leaves every other key out, converted at the boundary.
  bare = schema.resolve_block(schema.OptimizerConfig, {"learning_rate": 1.0}, "student.train.optimizer.")
  full = {"learning_rate": 1.0, **{f.name: f.default for f in dataclasses.fields(schema.OptimizerConfig)
                                   if f.default is not dataclasses.MISSING}}
  assert full["schedule"] == "cosine" and full["end_lr_factor"] == 0.0 and full["warmup_steps"] == 0
  schedule = train.make_schedule(bare, 10)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10)], [1.0, 0.5, 0.0], atol=1e-6)  # Cosine to 0.
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.3, 0.4])}
  a, b = (train.make_optimizer(opt, 10)[0] for opt in (bare, schema.OptimizerConfig(**full)))
  np.testing.assert_array_equal(np.asarray(a.update(grads, a.init(params), params)[0]["w"]),
                                np.asarray(b.update(grads, b.init(params), params)[0]["w"]))


def test_a_vmap_group_without_a_key_trains_at_the_schemas_value():
  store = types.SimpleNamespace()
  runs = [engines.RunSpec(seed=s, store=store, optimizer=o) for s, o in ((0, {"grad_clip": 1.0}), (1, None))]
  bare = schema.OptimizerConfig(learning_rate=1e-2)
  opt, hparams = engines.group_optimizer(bare, runs)  # No grad_clip: the schema's 1.0, the same.
  assert opt.grad_clip == 1.0
  assert hparams == {"learning_rate": [1e-2] * 2, "weight_decay": [0.0] * 2, "warmup_steps": [0] * 2}
  with pytest.raises(ValueError, match="set optimizer.grad_clip differently"):
    engines.group_optimizer(bare,
                            [engines.RunSpec(seed=0, store=store, optimizer={"grad_clip": 0.5}),
                             engines.RunSpec(seed=1, store=store)])


# ------------------------------------------------------------------ data parallel


def test_data_parallel_reads_the_schemas_train_defaults(tmp_path, monkeypatch):
  n, dim = 64, 4
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  p1 = 1 / (1 + np.exp(-x[:, 0]))
  ids = [f"x{i}" for i in range(n)]
  store = store_lib.write_store(str(tmp_path / "s"), ids, np.stack([1 - p1, p1], 1).astype(np.float32),
                                components={"k": 0})
  seen = {}
  real_fit, real_predict, real_state = train.fit, train.Trainer.predict, train.create_state

  def fit(*args, **kw):
    seen.update(save_every=kw["save_every"], log_every=kw["log_every"])
    return real_fit(*args, **kw)

  def predict(self, state, inputs, batch_size, **kw):
    seen.setdefault("eval_batch_size", batch_size)
    return real_predict(self, state, inputs, batch_size, **kw)

  def create_state(*args, **kw):
    seen["sharding"] = kw["sharding"]
    return real_state(*args, **kw)

  monkeypatch.setattr(train, "fit", fit)
  monkeypatch.setattr(train.Trainer, "predict", predict)
  monkeypatch.setattr(train, "create_state", create_state)
  out = engines.train_runs(
      [engines.RunSpec(seed=0, store=store, work_dir=str(tmp_path / "run"))], engine="data_parallel",
      make_model=lambda rngs: FeatureHead(dim, (), 2, rngs=rngs), train_ids=ids, train_inputs={"features": x},
      eval_inputs={"all": {"features": x}}, loss_fn=losses.get("xent"),
      train_cfg=_train(batch_size=16), progress=False)
  t = schema.TrainConfig
  assert seen == {"save_every": t.save_every, "log_every": t.log_every, "eval_batch_size": t.eval_batch_size,
                  "sharding": t.sharding}
  assert (t.save_every, t.log_every, t.eval_batch_size, t.sharding) == (500, 50, 512, "auto")
  assert out.cost[0]["num_steps"] == 4  # epochs = the schema's 1.0: 64 examples / 16 a batch.
  assert out.logits["all"][0].shape == (n, 2)


def test_fit_defaults_are_the_schemas():
  kw = {k: v.default for k, v in inspect.signature(train.fit).parameters.items()}
  assert (kw["save_every"], kw["log_every"]) == (schema.TrainConfig.save_every, schema.TrainConfig.log_every)


# ------------------------------------------------------------------ batch over devices


def test_check_batch_size_says_what_the_schemas_rule_says(monkeypatch):
  mesh = parallel.make_mesh(8)
  assert parallel.check_batch_size(16, mesh) == 16
  with pytest.raises(ValueError) as e:
    parallel.check_batch_size(12, mesh)
  assert str(e.value) == ("global batch size 12 does not divide evenly over 8 devices; use a multiple of 8 "
                          "(e.g. 8 or 16).")
  assert str(e.value).endswith(schema.batch_divides_problem(12, 8) + ".")
  # One home: the rule is the schema's function, not a copy.
  monkeypatch.setattr(schema, "batch_divides_problem", lambda b, d: None if b == 12 else "the schema's advice")
  assert parallel.check_batch_size(12, mesh) == 12
  with pytest.raises(ValueError, match="over 8 devices; the schema's advice.$"):
    parallel.check_batch_size(16, mesh)


def test_sharding_modes_are_the_schemas():
  assert set(parallel.SHARDING_MODES) == set(schema.SHARDINGS) and parallel.SHARDING_MODES[0] == "auto"


# ------------------------------------------------------------------ selection and report


def test_selection_defaults_are_the_schemas():
  s = selection.Selection.from_config(_train())
  d = schema.SelectConfig()
  assert (s.metric, s.holdout, s.every) == (d.metric, d.holdout, d.every) == ("last", 0, 0)
  assert selection.Selection() == s
  assert selection.Selection.from_config(_train(select={"metric": "accuracy", "holdout": 5})).every == d.every


def test_min_gap_default_is_the_schemas():
  assert metrics.DEFAULT_MIN_GAP == schema.ReportConfig.min_gap == 0.005
  assert metrics.pgr_status(0.7, 0.704)["min_gap"] == schema.ReportConfig.min_gap  # 0.004 < 0.005: undefined.
  assert not metrics.pgr_status(0.7, 0.704)["defined"]


# ------------------------------------------------------------------ pretrained roles


class _Task(pretrained_roles.PretrainedRolesTask):
  name = "stub"


def _role(**keys):
  """The two roles the task reads, the weak block leaving out every key but ``keys``, converted at the boundary."""
  weak = schema.resolve_block(schema.PretrainedConfig, {"checkpoint": "stub", **keys}, "weak.")
  return types.SimpleNamespace(weak=weak, strong=schema.PretrainedConfig(checkpoint="stub"))


def test_a_pretrained_role_without_dtype_or_lora_keys_takes_the_schemas(monkeypatch):
  loaded = []
  monkeypatch.setattr(pretrained_roles, "role_checkpoint",
                      lambda config, role: pretrained_roles.Checkpoint("/nowhere", None, {}, "sha"))
  monkeypatch.setattr(pretrained_roles, "check_max_length", lambda config, role: None)
  monkeypatch.setattr(pretrained_roles, "encoder_state",
                      lambda folder, sha, layers, dtype_name: loaded.append((layers, dtype_name)) or (None, {}))
  task = _Task()
  task.make_model("weak", _role())
  assert loaded == [(None, schema.PretrainedConfig.dtype)] and schema.PretrainedConfig.dtype == "bfloat16"
  task.make_model("weak", _role(dtype="float32"))
  assert loaded[-1] == (None, "float32")

  spec = pretrained_roles.lora_spec(_role(finetune="lora", lora={"rank": 4}).weak)
  d = schema.LoraConfig()
  assert (spec.rank, spec.alpha, spec.dropout, spec.target_modules) == (4, d.alpha, d.dropout, None)
  assert (d.alpha, d.dropout) == (16.0, 0.0)
  assert pretrained_roles.lora_spec(_role(finetune="lora").weak).rank == d.rank == 8
  assert pretrained_roles.lora_spec(_role().weak) is None  # finetune: the schema's 'full'.
  assert pretrained_roles.role_config(_role(), "weak").checkpoint_revision == schema.PretrainedConfig.checkpoint_revision == ""
  assert pretrained_roles.num_layers(_role().weak) is None  # num_layers: the schema's 0 = all.
  assert task.model_name("weak", _role()) == "stub model (full)"


# ------------------------------------------------------------------ theory


def test_theory_sections_left_out_take_the_schemas_defaults():
  th = schema.resolve_block(schema.TheoryConfig, {"losses": ("kl",), "sample_complexity": {"sizes": (10, 20)}},
                            "theory.")
  assert th.sample_complexity.num_steps == 0 and th.sample_complexity.noise_rates == (0.0, 0.2)
  assert (th.trajectory.n, th.trajectory.epochs, th.trajectory.points) == (2000, 40, 40)
  assert th.noise_dose.kinds == {"flip": -1.0, "shrink": 0.25}
  with pytest.raises(schema.ConfigError, match=r"theory.trajectory.points=0: must be an integer >= 1"):
    schema.resolve_block(schema.TheoryConfig, {"losses": ("kl",), "sample_complexity": {"sizes": (10,)},
                                               "trajectory": {"points": 0}}, "theory.")


def test_the_lab_counts_student_steps_with_the_schemas_epochs():
  train = schema.resolve_block(schema.TrainConfig, {"batch_size": 32, "optimizer": {"learning_rate": 1e-3}},
                               "student.train.")
  config = types.SimpleNamespace(student=types.SimpleNamespace(train=train))  # What the lab reads of it.
  data = types.SimpleNamespace(splits={"w2s_train": list(range(100)), "test": types.SimpleNamespace(labels=[0, 1])})
  lab = lab_lib.Lab(config, stages=None, data=data)
  assert schema.TrainConfig.epochs == 1.0 and lab.student_steps == 3  # 1 x 100 // 32.
  config.student.train = train.replace(num_steps=7)
  assert lab_lib.Lab(config, stages=None, data=data).student_steps == 7
