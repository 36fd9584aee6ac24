"""`validate.check_config`: every mistake is caught before compute, naming the key, the value and what is allowed."""

from __future__ import annotations

import math
import os

import ml_collections
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, engines, pipeline, tasks, train, validate
from w2sg_jax.models import remat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shipped() -> list[tuple[str, str | None]]:
  """Every experiment file with its default config and every variant it declares (or that is known here)."""
  import importlib.util

  known = {"synthetic": ("smoke",), "tweets_minilm": ("smoke", "bow", "ternary", "finetune"),
           "tweets_theory": ("smoke", "synthetic"), "paper_cai": ("smoke",)}
  out = []
  folder = os.path.join(REPO, "w2sg_jax", "experiments")  # The shipped ones (experiments/ re-exports them).
  for name in sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")):
    spec = importlib.util.spec_from_file_location(f"shipped_{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out += [(name, None)] + [(name, v) for v in getattr(module, "VARIANTS", known.get(name, ()))]
  return out


SHIPPED = _shipped()


def _config(name="synthetic", variant="smoke", **overrides) -> ml_collections.ConfigDict:
  return config_lib.load_config(os.path.join(REPO, "w2sg_jax", "experiments", f"{name}.py:{variant or ''}"), overrides)


def _problems(config, num_devices=8) -> list[str]:
  with pytest.raises(validate.ConfigError) as info:
    validate.check_config(config, num_devices=num_devices)
  return info.value.problems


@pytest.mark.parametrize("name,variant", SHIPPED, ids=[f"{n}:{v or ''}" for n, v in SHIPPED])
def test_every_shipped_config_is_valid(name, variant):
  resolved = validate.check_config(_config(name, variant), num_devices=8)
  assert resolved["engines"]["strong"] in engines.ENGINES
  assert resolved["min_gap"] == 0.005


# key, bad value, words the one-line message must contain (the allowed values).
BAD = [
    ("student.train.batch_size", 0, ["student.train.batch_size=0", "integer >= 1"]),
    ("student.train.batch_size", -5, ["student.train.batch_size=-5", "integer >= 1"]),
    ("weak.train.batch_size", 0, ["weak.train.batch_size=0", "integer >= 1"]),
    ("data.sizes.w2s_train", 0, ["data.sizes.w2s_train=0", "integer >= 1"]),
    ("data.sizes.test", -1, ["data.sizes.test=-1", ">= 1"]),
    ("student.train.optimizer.learning_rate", math.nan, ["learning_rate=nan", "finite number > 0"]),
    ("student.train.optimizer.learning_rate", math.inf, ["learning_rate=inf", "finite number > 0"]),
    ("weak.train.optimizer.learning_rate", 0.0, ["weak.train.optimizer.learning_rate=0.0", "> 0"]),
    ("student.train.epochs", 0, ["student.train.epochs=0", ">= 1", "num_steps"]),
    ("weak.train.epochs", 0.5, ["weak.train.epochs=0.5", ">= 1"]),
    ("student.train.num_steps", -3, ["student.train.num_steps=-3", ">= 0"]),
    ("student.engine", "fast", ["student.engine='fast'", "vmap", "data_parallel"]),
    ("student.train.optimizer.name", "adamz", ["optimizer.name='adamz'", "adam, adamw, sgd"]),
    ("student.train.optimizer.schedule", "cosin", ["schedule='cosin'", "constant, cosine, linear"]),
    ("student.train.optimizer.warmup_steps", -1, ["warmup_steps=-1", ">= 0"]),
    ("student.train.optimizer.grad_clip", math.nan, ["grad_clip=nan", "finite"]),
    ("student.train.optimizer.accum_steps", 0, ["accum_steps=0", ">= 1"]),
    ("student.train.eval_batch_size", 0, ["eval_batch_size=0", ">= 1"]),
    ("student.train.sharding", "shard", ["sharding='shard'", "auto, fsdp, replicated"]),
    ("task", "tweet", ["task='tweet'", "synthetic", "tweets", "preference"]),
    ("seeds", 0, ["seeds=0", ">= 1"]),
    ("student.losses", ("xent", "kullback"), ["student.losses[1]='kullback'", "Known losses", "js"]),
    ("student.losses", ("js", "js"), ["student.losses[1]='js'", "twice"]),
    ("student.losses", (), ["student.losses=()", "non-empty tuple"]),
    ("student.losses", "xent", ["student.losses='xent'", "tuple of loss names"]),
    ("student.noise.rates", (0.0, 1.5), ["student.noise.rates[1]=1.5", "[0, 1]"]),
    ("student.noise.rates", (0.2, 0.2), ["student.noise.rates=(0.2, 0.2)", "twice"]),
    ("student.noise.scale", 2.0, ["student.noise.scale=2.0", "[-1, 1]"]),
    ("student.train.batch_size", 4096, ["student.train.batch_size=4096", "2048 examples of w2s_train"]),
    ("weak.train.batch_size", 12, ["weak.train.batch_size=12", "8 devices", "multiple of 8"]),
    ("cache_dir", "", ["cache_dir=''", "non-empty"]),
]


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_each_bad_value_is_one_line_naming_key_value_and_allowed(key, value, words):
  config = _config()
  with config.unlocked():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    try:
      node[leaf] = value
    except TypeError:  # ConfigDict keeps a field's type; a Python caller can still replace it.
      del node[leaf]
      node[leaf] = value
  problems = _problems(config)
  assert len(problems) == 1, problems
  for word in words:
    assert word in problems[0], (word, problems[0])
  assert "\n" not in problems[0]


def test_every_problem_is_listed_at_once():
  config = _config(**{"student.train.batch_size": 0, "weak.train.batch_size": -5, "data.sizes.w2s_train": 0,
                      "student.engine": "fast"})
  problems = _problems(config)
  assert len(problems) == 4
  message = str(validate.ConfigError(problems))
  assert message.startswith("4 problems in the config:") and message.count("\n") == 4


def test_epochs_zero_is_fine_with_a_step_count():
  validate.check_config(_config(**{"student.train.epochs": 0, "student.train.num_steps": 5}), num_devices=8)


def test_old_engine_names_validate():
  resolved = validate.check_config(_config(**{"student.engine": "sweep"}), num_devices=8)
  assert resolved["engines"]["strong"] == "vmap"


def test_task_specific_names():
  tweets = _config("tweets_minilm", "smoke", **{"weak.model": "bert", "strong.finetune": "partial"})
  problems = _problems(tweets)
  assert any(p.startswith("weak.model='bert'") and "minilm, bow" in p for p in problems), problems
  assert any(p.startswith("strong.finetune='partial'") and "head, top, full" in p for p in problems), problems
  pref = _config("paper_hh", "smoke", **{"strong.dtype": "fp8", "data.dataset": "hh"})
  problems = _problems(pref)
  assert any(p.startswith("strong.dtype='fp8'") and "bfloat16" in p for p in problems), problems
  assert any(p.startswith("data.dataset='hh'") and "hh_rlhf" in p for p in problems), problems
  for name in ("tweets_minilm", "paper_hh"):
    problems = _problems(_config(name, "smoke", **{"strong.remat": "blocks"}))
    assert any(p.startswith("strong.remat='blocks'") and "none, block, full" in p for p in problems), problems


def test_checkpoint_limits_are_read_from_a_local_folder():
  # The tiny GPT-2 fixture has 2 layers and 64 positions.
  config = _config("paper_hh", "smoke", **{"strong.num_layers": 3, "data.max_length": 128})
  problems = _problems(config)
  assert any(p.startswith("strong.num_layers=3") and "in [0, 2]" in p for p in problems), problems
  assert any(p.startswith("data.max_length=128") and "64 positions" in p for p in problems), problems


def test_vmap_engine_on_a_model_that_freezes_parameters():
  problems = _problems(_config("paper_hh", "smoke", **{"student.engine": "vmap"}))
  assert any(p.startswith("student.engine='vmap'") and "data_parallel" in p for p in problems), problems


def test_loss_hparams_are_checked_by_the_registry():
  problems = _problems(_config(**{"student.losses": ("alpha",), "student.loss_hparams": {"alpha": {"alpah": 0.5}}}))
  assert len(problems) == 1 and "alpah" in problems[0] and "alpha" in problems[0]


def test_a_typo_inside_a_training_block_is_named_with_a_suggestion():
  config = _config()
  with config.unlocked():
    config.student.train.optimizer.lerning_rate = 0.1
    config.weak.train.batchsize = 8
  problems = _problems(config)
  assert any("'student.train.optimizer.lerning_rate'" in p and "'student.train.optimizer.learning_rate'" in p
             for p in problems), problems
  assert any("'weak.train.batchsize'" in p and "did you mean 'weak.train.batch_size'" in p for p in problems)


def test_report_min_gap_is_read_and_checked():
  config = _config()
  assert validate.check_config(config, num_devices=8)["min_gap"] == 0.005  # The schema's default.
  with config.unlocked():
    config.report = ml_collections.ConfigDict({"min_gap": 0.02})
  assert validate.check_config(config, num_devices=8)["min_gap"] == 0.02
  config.report.min_gap = 1.5
  assert _problems(config) == ["report.min_gap=1.5: must be a finite number in [0, 1)."]


def test_device_count_defaults_to_jax():
  import jax

  config = _config(**{"weak.train.batch_size": 8 * jax.device_count() + 1})
  problems = _problems(config, num_devices=None)
  assert any(f"{jax.device_count()} devices" in p for p in problems) or jax.device_count() == 1


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("key,suggestion", [
    ("student.lossez", "student.losses"),
    ("studnt.losses", "student.losses"),
    ("student.train.lerning_rate", "student.train.optimizer.learning_rate"),
    ("weak.train.batchsize", "weak.train.batch_size"),
    ("student.noise.rate", "student.noise.rates"),
])
def test_unknown_key_gets_one_did_you_mean_line(key, suggestion):
  with pytest.raises(KeyError) as info:
    _config(**{key: 1})
  assert isinstance(info.value, validate.ConfigError)  # Also a ValueError: the CLI's config error.
  message = str(info.value)
  assert f"unknown config key {key!r}" in message and f"did you mean {suggestion!r}?" in message
  assert "\n" not in message


def test_unknown_key_without_a_close_match_lists_the_keys_there():
  with pytest.raises(KeyError, match="the keys under 'student.train' are: batch_size, epochs"):
    _config(**{"student.train.lr": 1})


# ---------------------------------------------------------------- in step with the code


def test_allowed_names_are_the_ones_the_code_builds():
  for name in validate.OPTIMIZERS:
    train.make_optimizer(schema.OptimizerConfig(name=name, learning_rate=0.1), num_steps=10)
  for schedule in validate.SCHEDULES:
    train.make_optimizer(schema.OptimizerConfig(learning_rate=0.1, schedule=schedule), num_steps=10)
  with pytest.raises(ValueError):  # Refused by the schema, before any code could build it.
    schema.OptimizerConfig(name="adamz", learning_rate=0.1)
  with pytest.raises(ValueError):
    schema.OptimizerConfig(learning_rate=0.1, schedule="cosin")
  for name in tasks._TASKS:  # pylint: disable=protected-access
    assert name in validate._task_names()  # pylint: disable=protected-access
  defaults = config_lib.train_config(batch_size=8, epochs=1, learning_rate=0.1)
  assert set(defaults) <= set(validate.TRAIN_KEYS)
  assert set(defaults.optimizer) <= set(validate.OPTIMIZER_KEYS)
  assert validate.REMATS == remat.REMAT_MODES


# ---------------------------------------------------------------- paths


def test_paths_that_cannot_be_folders(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  validate.check_paths(workdir=str(tmp_path / "new" / "run"), cache_dir=str(tmp_path))
  with pytest.raises(validate.PathError, match="is a file"):
    validate.check_paths(workdir=str(afile))
  with pytest.raises(validate.PathError, match=r"lies under .*afile'?, which is a file"):
    validate.check_paths(workdir=str(afile / "sub" / "run"))
  if os.geteuid() != 0:  # root may write anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(validate.PathError, match="not writable"):
      validate.check_paths(cache_dir=str(locked / "cache"))


def test_pipeline_validates_before_any_compute(tmp_path, monkeypatch):
  def no_training(*args, **kwargs):
    raise AssertionError("training started")

  monkeypatch.setattr(engines, "train_runs", no_training)
  config = _config(**{"student.train.batch_size": 0, "cache_dir": str(tmp_path / "cache")})
  with pytest.raises(validate.ConfigError, match="student.train.batch_size=0"):
    pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp_path / "run"), tasks.get("synthetic")).run()
  assert not (tmp_path / "cache" / "weak").exists() and not (tmp_path / "run").exists()


# -------------------------------------------- issue 18: accum_steps, seeds, one problem each


@pytest.mark.parametrize("overrides,key,who,steps", [
    ({"weak.train.optimizer.accum_steps": 1000}, "weak.train.optimizer.accum_steps=1000", "the weak model", 64),
    ({"student.train.optimizer.accum_steps": 1000}, "student.train.optimizer.accum_steps=1000",
     "the students and the ceiling", 64),
    # On weak_train (1024 rows) the ceiling has 32 steps and the students 64: only the ceiling cannot update.
    ({"ceiling.split": "weak_train", "student.train.optimizer.accum_steps": 48},
     "student.train.optimizer.accum_steps=48", "the ceiling", 32),
    # A holdout shrinks the split the steps are counted on: (2048 - 1024) x 2 / 64 = 32.
    ({"student.train.select.metric": "auroc", "student.train.select.holdout": 1024,
      "student.train.optimizer.accum_steps": 48}, "student.train.optimizer.accum_steps=48",
     "the students and the ceiling", 32),
])
def test_accum_steps_larger_than_the_run_is_one_problem_naming_the_block(overrides, key, who, steps):
  overrides = dict(overrides)
  ceiling_split = overrides.pop("ceiling.split", None)
  config = _config(**overrides)
  if ceiling_split:  # The synthetic config has no ceiling block (the default split is w2s_train).
    with config.unlocked():
      config.ceiling = ml_collections.ConfigDict({"split": ceiling_split})
  problems = _problems(config)
  assert len(problems) == 1, problems
  assert problems[0].startswith(key) and f"the {steps} steps of {who}" in problems[0]
  assert f"accum_steps <= {steps}" in problems[0]


def test_accum_steps_up_to_the_step_count_is_fine():
  validate.check_config(_config(**{"weak.train.optimizer.accum_steps": 64,
                                   "student.train.optimizer.accum_steps": 64}), num_devices=8)


def test_accum_steps_beyond_the_run_is_refused_before_any_compute(tmp_path, monkeypatch):
  monkeypatch.setattr(engines, "train_runs", lambda *a, **k: pytest.fail("training started"))
  config = _config(**{"student.train.optimizer.accum_steps": 1000, "cache_dir": str(tmp_path / "cache")})
  with pytest.raises(validate.ConfigError, match="student.train.optimizer.accum_steps=1000"):
    pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp_path / "run"), tasks.get("synthetic")).run()
  assert not (tmp_path / "cache" / "weak").exists()


@pytest.mark.parametrize("key", ["seed", "data.data_seed", "data.split_seed", "student.noise.seed"])
def test_a_negative_seed_is_named(key):
  problems = _problems(_config(**{key: -1}))
  assert problems == [f"{key}=-1: a seed must be a non-negative integer; e.g. --config.{key}=0."]


def test_every_seed_key_of_every_shipped_config_is_checked():
  keys = set()
  for name, variant in SHIPPED:
    keys |= set(validate.seed_keys(_config(name, variant)))
  assert {"seed", "data.data_seed", "data.split_seed", "data.order_seed", "student.noise.seed"} <= keys
  assert not any(k.endswith("per_seed") for k in keys)


def test_seed_too_large_for_a_jax_key():
  problems = _problems(_config(seed=2**32 - 2))  # The students' seeds would pass 2**32 - 1.
  assert len(problems) == 1 and problems[0].startswith("seed=4294967294: a seed must be at most 4294967293")
  assert _problems(_config(**{"student.noise.seed": 2**32}))[0].startswith("student.noise.seed=4294967296")


def test_a_negative_noise_seed_is_refused_before_any_compute(tmp_path, monkeypatch):
  monkeypatch.setattr(engines, "train_runs", lambda *a, **k: pytest.fail("training started"))
  config = _config(**{"student.noise.seed": -1, "cache_dir": str(tmp_path / "cache")})
  with pytest.raises(validate.ConfigError, match="student.noise.seed=-1"):
    pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp_path / "run"), tasks.get("synthetic")).run()
  assert not (tmp_path / "cache" / "weak").exists()


@pytest.mark.parametrize("holdout", [None, 0, 100])
def test_a_select_metric_in_the_wrong_case_is_the_only_problem(holdout):
  overrides = {"student.train.select.metric": "AUROC"}
  if holdout is not None:
    overrides["student.train.select.holdout"] = holdout
  assert _problems(_config(**overrides)) == [
      "student.train.select.metric='AUROC': unknown metric; use one of: last, auroc, accuracy."]
