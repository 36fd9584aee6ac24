"""`make experiment`: no value of NAME, VARIANT, WORKDIR or ARGS ever runs as a command.

Each test runs the real Makefile with ``-o .venv/.installed``, so make never
(re)installs the virtualenv, whatever the stamp's age. Valid names run a fake
``PY`` that prints the arguments it got as JSON, so no experiment runs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make(*args, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("W2SG_MAKE", "MAKE"))}
  for var in ("NAME", "VARIANT", "WORKDIR", "ARGS", "PYTEST_ARGS"):
    env.pop(var, None)  # WSL, for one, sets NAME to the host name.
  return subprocess.run(["make", "-s", "-o", ".venv/.installed", *args], capture_output=True, text=True,
                        cwd=cwd, env=env, timeout=60)


@pytest.fixture
def fake_py(tmp_path):
  """An executable that prints its arguments and W2SG_MAKE_EXPERIMENT as JSON."""
  path = tmp_path / "fake_python"
  path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                  "print(json.dumps({'argv': sys.argv[1:], 'make': os.environ.get('W2SG_MAKE_EXPERIMENT')}))\n")
  path.chmod(0o755)
  return str(path)


def _ran(proc):
  """The JSON line the fake interpreter printed."""
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _hostile(marker):
  """Values that would run ``touch MARKER`` if a shell evaluated them."""
  m = shlex.quote(str(marker))
  return [f"x;touch {m}", f"x`touch {m}`", f"x$(touch {m})", f"x';touch {m};'", f'x";touch {m};"',
          f"$(shell touch {m})", f"x && touch {m}", f"x|touch {m}", f"x\ntouch {m}"]


@pytest.mark.parametrize("target", ["experiment", "check-experiment"])
def test_a_name_that_is_not_a_word_is_refused_before_any_shell_sees_it(tmp_path, target):
  marker = tmp_path / "pwned"
  for name in [*_hostile(marker), "a b", "", "../synthetic", "synthetic.py"]:
    proc = _make(target, f"NAME={name}")
    assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
    assert "is not an experiment's name: letters, digits and '_' only" in proc.stderr, (name, proc.stderr)
    assert "synthetic" in proc.stderr and "tweets_minilm" in proc.stderr  # The experiments there are.
    assert not marker.exists(), name
  assert "pip" not in proc.stdout + proc.stderr


def test_a_variant_that_is_not_a_word_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  for variant in [*_hostile(marker), "a b"]:
    proc = _make("experiment", "NAME=synthetic", f"VARIANT={variant}")
    assert proc.returncode == 2 and "is not a variant's name" in proc.stderr, (variant, proc.stderr)
    assert not marker.exists(), variant


def test_args_and_workdir_are_arguments_never_commands(tmp_path, fake_py):
  marker = tmp_path / "pwned"
  hostile = _hostile(marker)
  args = " ".join(shlex.quote(h) for h in hostile) + " --config.student.losses=(\\\"xent\\\",\\\"tv\\\") * '--x=a b'"
  workdir = f"{tmp_path}/a b;touch {marker}"
  got = _ran(_make("experiment", "NAME=synthetic", f"PY={fake_py}", f"ARGS={args}", f"WORKDIR={workdir}"))
  assert got["argv"] == ["-m", "w2sg_jax.cli", "run", "synthetic", f"--workdir={workdir}",
                         *hostile, '--config.student.losses=("xent","tv")', "*", "--x=a b"]
  assert got["make"] == "1"  # The run prints the make form as its resume command.
  assert not marker.exists()


def test_the_defaults_and_a_variant(fake_py):
  got = _ran(_make("experiment", "NAME=synthetic", "VARIANT=smoke", f"PY={fake_py}"))
  assert got["argv"] == ["-m", "w2sg_jax.cli", "run", "synthetic:smoke", "--workdir=runs/synthetic"]


def test_an_unclosed_quote_in_args_is_one_clear_line(fake_py):
  proc = _make("experiment", "NAME=synthetic", f"PY={fake_py}", "ARGS=--config.name='oops")
  assert proc.returncode == 2
  assert "ARGS=\"--config.name='oops\" cannot be split into arguments (No closing quotation)" in proc.stderr
  assert "Traceback" not in proc.stderr and "argv" not in proc.stdout


def test_pytest_args_are_arguments_never_commands(tmp_path, fake_py):
  marker = tmp_path / "pwned"
  proc = _make("test", f"PY={fake_py}", f"PYTEST_ARGS=-k 'a and b' ;touch {marker}")
  assert _ran(proc)["argv"] == ["-m", "pytest", "-n", "2", "-m", "not slow", "-k", "a and b", ";touch", str(marker)]
  assert not marker.exists()
