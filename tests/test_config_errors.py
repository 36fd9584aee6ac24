"""Config mistakes on the command line (issue 18, item 11): exit 2 with one paragraph naming the key.

absl would fail on a value that does not parse as the key's type with a
two-line message and exit 1; `main.check_arguments` applies each
``--config.KEY=VALUE`` first, through the schema's one override road
(`config.apply_overrides`), and names the key and the type expected. Most checks run in-process; one subprocess checks the exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from w2sg_jax import main as main_lib
from w2sg_jax import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=experiments/synthetic.py:smoke"


def _explained(tmp_path, *args):
  """``(paragraph, status)`` that `main.cli` prints for these arguments, without running anything."""
  argv = ["main", SMOKE, f"--workdir={tmp_path / 'run'}", *args]
  cwd = os.getcwd()
  os.chdir(REPO)  # The experiment path is relative, as on the command line.
  try:
    with pytest.raises(validate.ConfigError) as info:
      main_lib.check_arguments(argv)
  finally:
    os.chdir(cwd)
  return main_lib.explain(info.value, argv)


@pytest.mark.parametrize("arg,key,want", [
    ("--config.seeds=abc", "seeds", "an integer"),
    ("--config.student.train.batch_size=0.5", "student.train.batch_size", "an integer"),
    ("--config.student.train.optimizer.learning_rate=fast", "student.train.optimizer.learning_rate", "a number"),
    ("--config.report.min_gap=", "report.min_gap", "a number"),
    ("--config.student.losses=(xent, js", "student.losses", "a tuple"),
])
def test_a_value_that_does_not_parse_names_the_key_and_the_type(tmp_path, arg, key, want):
  paragraph, status = _explained(tmp_path, arg)
  assert status == 2
  assert f"--config.{key}=" in paragraph and f"{key} takes {want}" in paragraph
  assert "Traceback" not in paragraph and "nothing was trained" in paragraph


def test_a_value_of_the_schema_type_is_checked_by_the_schema_before_absl(tmp_path):
  # epochs is a float in the schema: 0.5 parses, and is then refused with the rule it breaks.
  paragraph, status = _explained(tmp_path, "--config.student.train.epochs=0.5")
  assert status == 2 and "student.train.epochs=0.5: must be a finite number >= 1" in paragraph
  assert "student.train.num_steps" in paragraph


def test_the_space_form_is_parsed_too(tmp_path):
  paragraph, status = _explained(tmp_path, "--config.seeds", "many")
  assert status == 2 and "--config.seeds='many': seeds takes an integer" in paragraph


def test_every_bad_value_is_listed_at_once(tmp_path):
  paragraph, _ = _explained(tmp_path, "--config.seeds=abc", "--config.student.train.batch_size=0.5")
  assert "2 problems" in paragraph and "seeds takes" in paragraph and "student.train.batch_size takes" in paragraph


def test_values_of_the_right_type_pass(tmp_path):
  argv = ["main", SMOKE, f"--workdir={tmp_path}", "--config.seeds=4", "--config.student.losses=('xent','js')",
          "--config.name=other", "--config.student.train.optimizer.learning_rate=1", "--config.data.sizes.test",
          "512", "--config.student.noise.per_seed=true"]
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    main_lib.check_arguments(argv)
  finally:
    os.chdir(cwd)


def test_cli_exits_2_naming_the_key_before_absl_parses(tmp_path):
  env = {**os.environ, "PYTHONPATH": REPO, "W2SG_PROGRESS": "0"}
  env.pop("W2SG_DEBUG", None)
  proc = subprocess.run([sys.executable, "-m", "w2sg_jax.main", SMOKE, f"--workdir={tmp_path / 'run'}",
                         f"--config.cache_dir={tmp_path / 'cache'}", "--config.seeds=abc",
                         "--config.student.train.batch_size=0.5"], capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 2, proc.stderr
  assert "seeds takes an integer" in proc.stderr and "student.train.batch_size takes an integer" in proc.stderr
  assert "Traceback" not in proc.stderr and "FATAL Flags parsing error" not in proc.stderr
  assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def _checked(*args):
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    return main_lib.check_arguments(["main", SMOKE, "--workdir=/tmp/x", *args])
  finally:
    os.chdir(cwd)


def test_one_override_road_for_main_and_plan():
  """`--config.KEY=VALUE` of main (and so `w2sg run --set`) and of plan resolve through `config.apply_overrides`:
  a key the file leaves at its default, and an entry of a dict-valued field, can be set on either."""
  from w2sg_jax import plan

  texts = {"weak.per_seed": "true", "student.train.optimizer.b2": "0.95", "student.grid.learning_rate": "(1e-3, 1e-2)",
           "student.train.select.metric": "accuracy", "student.train.select.holdout": "64"}
  experiment = _checked(*(f"--config.{k}={v}" for k, v in texts.items()))
  assert experiment.weak.per_seed is True and experiment.student.train.optimizer.b2 == 0.95
  assert experiment.student.grid == {"learning_rate": (1e-3, 1e-2)}
  assert plan.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), texts) == experiment


def test_a_bare_override_sets_a_boolean_and_is_refused_elsewhere(tmp_path):
  assert _checked("--config.weak.per_seed").weak.per_seed is True
  paragraph, status = _explained(tmp_path, "--config.seeds")
  assert status == 2 and "--config.seeds: seeds takes a value (--config.seeds=VALUE)." in paragraph


def test_absl_parses_the_flags_without_the_overrides():
  argv = ["main", SMOKE, "--workdir=w", "--config.seeds=3", "--config.data.sizes.test", "512", "--config.weak.per_seed",
          "--debug", "--", "--config.after=1"]
  assert main_lib.without_overrides(argv) == ["main", SMOKE, "--workdir=w", "--debug", "--", "--config.after=1"]
