"""The typed schema (`w2sg_jax.config`): every shipped config converts, bad values name the key, keys are stable."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import ml_collections
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, main as main_lib
from tests.test_validate import SHIPPED, REPO


def _load(name: str, variant: str | None, **overrides) -> ml_collections.ConfigDict:
  return config_lib.load_config(os.path.join(REPO, "w2sg_jax", "experiments", f"{name}.py:{variant or ''}"), overrides)


def _set(config, key, value):
  with config.unlocked():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    if leaf in node:
      del node[leaf]  # The schema, not the ConfigDict's type lock, judges the value.
    node[leaf] = value
  return config


def _problems(config) -> list[str]:
  with pytest.raises(schema.ConfigError) as info:
    schema.Experiment.from_configdict(config)
  return info.value.problems


# ------------------------------------------------------------ shipped configs


@pytest.mark.parametrize("name,variant", SHIPPED, ids=[f"{n}:{v or ''}" for n, v in SHIPPED])
def test_every_shipped_config_converts_and_round_trips(name, variant):
  raw = _load(name, variant)
  experiment = schema.Experiment.from_configdict(raw)
  data_cls, weak_cls, strong_cls = schema.TASK_BLOCKS[experiment.task]
  assert (type(experiment.data), type(experiment.weak), type(experiment.strong)) == (data_cls, weak_cls, strong_cls)
  # Back to a ConfigDict and again: the same object, and every key the file set keeps its value.
  again = schema.Experiment.from_configdict(experiment.to_configdict())
  assert again == experiment
  flat = schema._flat(experiment.to_dict())  # pylint: disable=protected-access
  raw_flat = schema._flat(raw.to_dict())  # pylint: disable=protected-access
  for key, value in raw_flat.items():
    got = flat[key]
    if isinstance(value, (list, tuple)):
      assert tuple(got) == tuple(value), key
    elif isinstance(value, dict):
      assert got == value, key
    else:
      assert got == value and (not isinstance(value, float) or isinstance(got, float)), key


def test_defaults_fill_what_a_file_leaves_out():
  experiment = schema.Experiment.from_configdict(_load("synthetic", "smoke"))
  assert experiment.ceiling.split == "w2s_train" and experiment.theory is None
  assert experiment.student.train.optimizer.end_lr_factor == 0.0
  assert experiment.student.train.eval_batch_size == schema.TrainConfig.eval_batch_size == 512
  assert isinstance(experiment.student.train.epochs, float)


def test_schema_import_needs_no_jax():
  code = "import sys; import w2sg_jax.config; assert 'jax' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_copied_constants_match_their_homes():
  from w2sg_jax import metrics
  from w2sg_jax.models import remat

  assert schema.REMATS == remat.REMAT_MODES
  assert schema.ReportConfig.min_gap == metrics.DEFAULT_MIN_GAP


# ---------------------------------------------------------------- bad values

# key, bad value, the exact one-line message (today's validator's wording).
BAD = [
    ("student.train.batch_size", 0, "student.train.batch_size=0: must be an integer >= 1."),
    ("student.train.batch_size", 2.5, "student.train.batch_size=2.5: must be an integer >= 1."),
    ("student.train.epochs", 0.5, "student.train.epochs=0.5: must be a finite number >= 1 (passes over the split), "
     "or set student.train.num_steps >= 1 to fix the step count."),
    ("student.train.num_steps", -1, "student.train.num_steps=-1: must be an integer >= 0."),
    ("student.train.eval_batch_size", 0, "student.train.eval_batch_size=0: must be an integer >= 1."),
    ("student.train.log_every", 0, "student.train.log_every=0: must be an integer >= 1."),
    ("student.train.save_every", 0, "student.train.save_every=0: must be an integer >= 1."),
    ("student.train.sharding", "zero3", "student.train.sharding='zero3': unknown sharding; use one of: auto, fsdp, "
     "replicated."),
    ("student.train.optimizer.name", "lamb", "student.train.optimizer.name='lamb': unknown optimizer; use one of: adam, "
     "adamw, sgd."),
    ("student.train.optimizer.learning_rate", math.nan, "student.train.optimizer.learning_rate=nan: must be a finite "
     "number > 0."),
    ("student.train.optimizer.b2", 1.0, "student.train.optimizer.b2=1.0: must be a finite number in [0, 1)."),
    ("student.train.optimizer.eps", 0.0, "student.train.optimizer.eps=0.0: must be a finite number > 0."),
    ("student.train.optimizer.end_lr_factor", 2.0, "student.train.optimizer.end_lr_factor=2.0: must be a finite "
     "number in [0, 1]."),
    ("student.train.select.metric", "f1", "student.train.select.metric='f1': unknown metric; use one of: last, auroc, "
     "accuracy."),
    ("student.train.select.holdout", 5, "student.train.select.holdout=5: drops training rows for nothing while "
     "student.train.select.metric='last'; set student.train.select.metric to 'auroc' or 'accuracy', or "
     "student.train.select.holdout=0."),
    ("student.noise.scale", -2.0, "student.noise.scale=-2.0: must be a finite number in [-1, 1]."),
    ("student.noise.rates", (0.1, 0.1), "student.noise.rates=(0.1, 0.1): lists a rate twice; each rate is one group "
     "of students."),
    ("student.noise.seed", -1, "student.noise.seed=-1: a seed must be a non-negative integer; e.g. "
     "--config.student.noise.seed=0."),
    ("student.noise.per_seed", "yes", "student.noise.per_seed='yes': must be True or False."),
    ("student.engine", "fast", "student.engine='fast': unknown engine; use one of: vmap, data_parallel (old names: "
     "sweep, fit)."),
    ("weak.head_hidden", (0,), "weak.head_hidden=(0,): must be a tuple of integers >= 1, e.g. () or (64,)."),
    ("data.dim", 0, "data.dim=0: must be an integer >= 1."),
    ("data.sizes.test", 0, "data.sizes.test=0: must be an integer >= 1."),
    ("seeds", 0, "seeds=0: must be an integer >= 1."),
    ("runner", "lab", "runner='lab': unknown runner; use one of: pipeline, theory."),
    ("cache_dir", "", "cache_dir='': must be a non-empty string."),
    ("report.min_gap", 1.0, "report.min_gap=1.0: must be a finite number in [0, 1)."),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_each_bad_value_gives_its_one_line(key, value, message):
  assert _problems(_set(_load("synthetic", "smoke"), key, value)) == [message]


@pytest.mark.parametrize("name,variant,key,value,message", [
    ("tweets_minilm", "smoke", "weak.model", "bert", "weak.model='bert': unknown weak model kind; use one of: "
     "minilm, bow."),
    ("tweets_minilm", "smoke", "strong.finetune", "lora", "strong.finetune='lora': unknown finetune mode; use one "
     "of: head, top, full."),
    ("tweets_minilm", "smoke", "strong.remat", "blocks", None),  # finetune='head': remat is still checked.
    ("paper_hh", "smoke", "strong.finetune", "top", "strong.top_layers=0: must be an integer >= 1."),
    ("paper_hh", "smoke", "strong.dtype", "fp8", "strong.dtype='fp8': unknown dtype; use one of: bfloat16, float16, "
     "float32."),
    ("paper_hh", "smoke", "data.dataset", "hh", "data.dataset='hh': unknown dataset; use one of: hh_rlhf, "
     "cai_harmless."),
    ("w2s_llama", "smoke", "weak.lora.rank", 0, "weak.lora.rank=0: must be an integer >= 1."),
])
def test_task_blocks_check_their_own_fields(name, variant, key, value, message):
  problems = _problems(_set(_load(name, variant), key, value))
  assert len(problems) == 1, problems
  if message:
    assert problems == [message]
  else:
    assert problems[0].startswith(f"{key}={value!r}: unknown remat mode")


def test_every_problem_of_every_block_is_one_paragraph():
  config = _load("synthetic", "smoke")
  for key, value in (("student.train.batch_size", 0), ("weak.train.optimizer.learning_rate", -1.0),
                     ("student.noise.scale", 3.0), ("seeds", 0)):
    _set(config, key, value)
  with pytest.raises(schema.ConfigError) as info:
    schema.Experiment.from_configdict(config)
  assert len(info.value.problems) == 4 and str(info.value).startswith("4 problems in the config:")


def test_a_block_built_directly_raises_with_its_own_keys():
  with pytest.raises(schema.ConfigError, match=r"^batch_size=0: must be an integer >= 1\.$"):
    schema.TrainConfig(batch_size=0, optimizer=schema.OptimizerConfig(learning_rate=0.1))
  with pytest.raises(dataclasses.FrozenInstanceError):
    schema.OptimizerConfig(learning_rate=0.1).learning_rate = 0.2  # type: ignore[misc]


def test_a_missing_required_key_is_named():
  config = _load("synthetic", "smoke")
  with config.unlocked():
    del config.student.train["batch_size"]
  assert _problems(config) == ["student.train.batch_size is missing; the pipeline reads it (experiments/synthetic.py "
                               "shows a full config)."]


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("key,suggestion", [
    ("student.lossez", "student.losses"),
    ("student.train.optimizer.lerning_rate", "student.train.optimizer.learning_rate"),
    ("weak.train.batchsize", "weak.train.batch_size"),
    ("student.train.optimizer.end_lr_factr", "student.train.optimizer.end_lr_factor"),  # A key the file leaves out.
    ("data.weak_dimm", "data.weak_dim"),
])
def test_unknown_key_gets_did_you_mean(key, suggestion):
  problems = _problems(_set(_load("synthetic", "smoke"), key, 1))
  assert len(problems) == 1 and f"unknown key {key!r}" in problems[0]
  assert f"did you mean {suggestion!r}?" in problems[0] and "\n" not in problems[0]


def test_keep_checkpoints_is_gone():
  assert "keep_checkpoints" not in config_lib.student_config(
      engine="vmap", losses=("xent",), train=config_lib.train_config(batch_size=8, epochs=1, learning_rate=0.1),
      noise=config_lib.noise_config((0.0,)))
  problems = _problems(_set(_load("synthetic", "smoke"), "student.keep_checkpoints", False))
  assert len(problems) == 1 and "unknown key 'student.keep_checkpoints'" in problems[0]


# ---------------------------------------------------------------- cache keys


def test_semantic_dict_drops_non_semantic_fields_and_neutral_select():
  train = schema.Experiment.from_configdict(_load("synthetic", "smoke")).student.train
  key = schema.semantic_dict(train)
  assert not {"eval_batch_size", "log_every", "save_every", "select"} & set(key)
  assert key["optimizer"]["learning_rate"] == 3e-3 and key["epochs"] == 2.0
  chosen = train.replace(select=schema.SelectConfig(metric="auroc", holdout=8))
  assert schema.semantic_dict(chosen)["select"] == {"metric": "auroc", "holdout": 8}
  assert schema.semantic_dict(train.replace(log_every=1)) == key  # Cannot change a number: same key.
  assert schema.semantic_dict(train.replace(epochs=3.0)) != key


def test_checkpoint_paths_are_not_in_keys():
  strong = schema.Experiment.from_configdict(_load("paper_hh", "smoke")).strong
  key = schema.semantic_dict(strong)
  assert "checkpoint" not in key and "checkpoint_revision" not in key and key["dtype"] == "float32"


def test_a_field_added_with_a_neutral_default_leaves_existing_keys_unchanged():
  @dataclasses.dataclass(frozen=True, kw_only=True)
  class NewOptimizer(schema.OptimizerConfig):
    nesterov: bool = schema.field(False, neutral=False, help="A knob added later.")

  old = schema.OptimizerConfig(learning_rate=0.1, b2=0.95)
  new = NewOptimizer(learning_rate=0.1, b2=0.95)
  assert schema.semantic_dict(new) == schema.semantic_dict(old)
  assert schema.semantic_dict(NewOptimizer(learning_rate=0.1, b2=0.95, nesterov=True)) != schema.semantic_dict(old)

  # A later change of the default changes the key of a config relying on it (neutral stays pinned).
  @dataclasses.dataclass(frozen=True, kw_only=True)
  class NewDefault(schema.OptimizerConfig):
    nesterov: bool = schema.field(True, neutral=False, help="Its default changed.")

  assert schema.semantic_dict(NewDefault(learning_rate=0.1, b2=0.95)) != schema.semantic_dict(old)


# ----------------------------------------------------------- override road


def test_override_types_come_from_the_schema():
  config = _load("synthetic", "smoke")
  assert schema.field_type(config, "student.train.epochs") is float
  assert schema.parse_override("1.5", schema.field_type(config, "student.train.epochs")) == 1.5
  assert schema.parse_override("('xent', 'js')", schema.field_type(config, "student.losses")) == ("xent", "js")
  assert schema.parse_override("None", schema.field_type(config, "student.train.optimizer.momentum")) is None
  assert schema.field_type(config, "data.csv_path") is None  # Not a synthetic key.
  with pytest.raises(ValueError, match="an integer"):
    schema.parse_override("0.5", schema.field_type(config, "student.train.batch_size"))


def test_main_accepts_fractional_epochs_and_a_key_left_at_its_default():
  argv = ["main", "--config=experiments/synthetic.py:smoke", "--workdir=/tmp/x", "--config.student.train.epochs=1.5"]
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    main_lib.check_arguments(argv)
  finally:
    os.chdir(cwd)


def test_plan_load_config_fills_defaults_and_parses_by_schema():
  from w2sg_jax import plan

  config = plan.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"),
                            {"student.train.optimizer.end_lr_factor": "0.1", "student.train.epochs": "3"})
  assert config.student.train.optimizer.end_lr_factor == 0.1 and config.student.train.epochs == 3.0
  assert config.ceiling.split == "w2s_train"  # Absent from the file: the schema's default.
  with pytest.raises(plan.PlanError, match="student.train.batch_size takes an integer"):
    plan.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), {"student.train.batch_size": "x"})


# ------------------------------------------------------------------ describe


def _every_key(cls, prefix=""):
  out = []
  hints = schema._hints(cls)  # pylint: disable=protected-access
  for f in dataclasses.fields(cls):
    out.append(prefix + f.name)
    for sub in schema._blocks_of(hints[f.name])[:1]:  # pylint: disable=protected-access
      out += _every_key(sub, f"{prefix}{f.name}.")
  return out


def test_describe_covers_every_field_of_every_block():
  text = schema.describe()
  for task, blocks in schema.TASK_BLOCKS.items():
    del task
    for name, cls in zip(("data", "weak", "strong"), blocks):
      for key in _every_key(cls, f"{name}."):
        assert f"| `{key}` |" in text, key
  for key in _every_key(schema.Experiment):
    if key.split(".")[0] not in ("data", "weak", "strong"):
      assert f"| `{key}` |" in text, key
  for f in dataclasses.fields(schema.TrainConfig):
    assert f.metadata["help"]


@pytest.mark.parametrize("name,variant", [("tweets_minilm", None), ("w2s_llama", "tweets_smoke")])
def test_describe_an_experiment_shows_its_values(name, variant):
  text = schema.describe(os.path.join(REPO, "w2sg_jax", "experiments", f"{name}.py:{variant or ''}"))
  assert "| `student.train.batch_size` | int |" in text and "| `data.max_length` |" in text


def test_readme_block_is_up_to_date():
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  assert schema.readme_block() in text, "run: python -m w2sg_jax.config --write-readme"


def test_a_grid_value_its_optimizer_would_refuse_is_refused_before_compute():
  """A grid point is the config's optimizer with the point's value set: a learning rate of 0 (or a negative
  weight decay) fails at the boundary, not when its run starts."""
  config = _load("tweets_minilm", None)  # Tuned: student.grid with its weak-labelled holdout.
  _set(config, "student.grid", {"learning_rate": (0.0, 1e-3)})
  _set(config, "weak.grid", {"weight_decay": (-0.1,)})
  _set(config, "weak.train.select", {"metric": "accuracy", "holdout": 50, "every": 0})
  assert sorted(_problems(config)) == [
      "student.grid['learning_rate']=(0.0, 0.001): must be a non-empty tuple of numbers > 0 (a learning rate).",
      "weak.grid['weight_decay']=(-0.1,): must be a non-empty tuple of numbers >= 0.",
  ]
  _set(config, "weak.grid", {"learning_rate": (1e-3, 0.0)})
  assert "weak.grid['learning_rate']=(0.001, 0.0): must be a non-empty tuple of numbers > 0 (a learning rate)." \
      in _problems(config)


def test_stage_keys_come_from_the_resolved_config(tmp_path):
  """Every stage's key reads the resolved blocks: a config that leaves a key out and one that writes it at its
  default share every entry; a field that cannot change a number leaves the keys alone; any other changes them."""
  from w2sg_jax import cache as cache_lib
  from w2sg_jax import stages as stages_lib
  from w2sg_jax import tasks

  def keys(raw):
    st = stages_lib.Stages(schema.Experiment.from_configdict(raw), tasks.get("synthetic"),
                           cache_lib.Cache(str(tmp_path / "cache")))
    data = st.data()
    return {"weak": cache_lib.stage_key("weak", st.weak_components(data)),
            "strong": cache_lib.stage_key("student", st._strong_components(data))}  # pylint: disable=protected-access

  raw = _load("synthetic", "smoke")
  written = schema.filled(raw)  # Every key the file leaves out, written at the schema's default.
  assert set(schema.all_keys(written)) > set(schema.all_keys(raw))
  base = keys(raw)
  assert keys(written) == base
  assert keys(_load("synthetic", "smoke", **{"student.train.log_every": 1, "weak.train.eval_batch_size": 7})) == base
  changed = keys(_load("synthetic", "smoke", **{"student.train.optimizer.b2": 0.95}))
  assert changed["strong"] != base["strong"] and changed["weak"] == base["weak"]
  assert keys(_load("synthetic", "smoke", **{"weak.train.optimizer.eps": 1e-6}))["weak"] != base["weak"]
  assert cache_lib.FORMAT_VERSION == 3  # Bumped once when keys moved from raw subtrees to resolved blocks.


def test_below_the_boundary_a_raw_config_is_refused_with_where_to_convert(tmp_path):
  from w2sg_jax import cache as cache_lib
  from w2sg_jax import stages as stages_lib
  from w2sg_jax import tasks
  from w2sg_jax import train

  raw = _load("synthetic", "smoke")
  with pytest.raises(TypeError, match=r"config must be a config.Experiment, not ConfigDict: convert once at the "
                     r"boundary \(config.Experiment.from_configdict"):
    stages_lib.Stages(raw, tasks.get("synthetic"), cache_lib.Cache(str(tmp_path)))
  with pytest.raises(TypeError, match=r"opt must be a config.OptimizerConfig, not dict"):
    train.make_optimizer({"learning_rate": 1e-3}, 10)
