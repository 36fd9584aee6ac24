"""Config mistakes on the command line (issue 18, item 11): exit 2 with one paragraph naming the key.

absl would fail on a value that does not parse as the key's type with a
two-line message and exit 1; `main.check_override_values` parses each
``--config.KEY=VALUE`` first, as config_flags will, and names the key and the
type expected. Most checks run in-process; one subprocess checks the exit status.
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
