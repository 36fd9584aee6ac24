"""The error boundary: every expected failure is one paragraph, before any training where it can be.

Each row of issue 9's table of reproductions is a test here (the CLI rows run
``python -m w2sg_jax.main`` in a subprocess): the exit status is non-zero, no
traceback is printed, the paragraph names the key or file and the bad value,
and no training started (no ``weak`` folder in the cache).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from w2sg_jax import cache as cache_lib
from w2sg_jax import main as main_lib
from w2sg_jax import train as train_lib
from w2sg_jax.labels import store as store_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=experiments/synthetic.py:smoke"


def _env(**extra):
  env = {**os.environ, "PYTHONPATH": REPO, "W2SG_PROGRESS": "0", **extra}
  if "W2SG_DEBUG" not in extra:
    env.pop("W2SG_DEBUG", None)
  return env


def _main(tmp_path, *args, **env):
  cmd = [sys.executable, "-m", "w2sg_jax.main", SMOKE, f"--workdir={tmp_path / 'run'}",
         f"--config.cache_dir={tmp_path / 'cache'}", *args]
  return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), cwd=REPO)


def _assert_one_paragraph(proc, words, tmp_path):
  err = proc.stderr
  assert proc.returncode not in (0, None), err
  assert "Traceback" not in err, err
  for word in words:
    assert word in err, (word, err)
  assert len(err.strip().splitlines()) <= 8, err  # A paragraph, not a log.
  assert not (tmp_path / "cache" / "weak").exists(), "training started"


# The table of issue 9: (row, command-line arguments, words the paragraph must contain).
CLI_ROWS = [
    ("student batch_size=0", ["--config.student.train.batch_size=0"], ["student.train.batch_size=0", ">= 1"]),
    ("weak batch_size=0", ["--config.weak.train.batch_size=0"], ["weak.train.batch_size=0", ">= 1"]),
    ("batch_size=-5", ["--config.student.train.batch_size=-5"], ["student.train.batch_size=-5", ">= 1"]),
    ("w2s_train size 0", ["--config.data.sizes.w2s_train=0"], ["data.sizes.w2s_train=0", ">= 1"]),
    ("key typo", ["--config.student.lossez=1"], ["'student.lossez'", "did you mean 'student.losses'?"]),
    ("nan learning rate", ["--config.student.train.optimizer.learning_rate=nan"],
     ["student.train.optimizer.learning_rate=nan", "finite number > 0"]),
    ("epochs=0", ["--config.student.train.epochs=0"], ["student.train.epochs=0", ">= 1", "num_steps"]),
    ("unknown engine", ["--config.student.engine=fast"], ["student.engine='fast'", "vmap, data_parallel"]),
    ("unknown optimizer", ["--config.student.train.optimizer.name=adamz"], ["'adamz'", "adam, adamw, sgd"]),
    ("unknown schedule", ["--config.weak.train.optimizer.schedule=cosin"], ["'cosin'", "constant, cosine, linear"]),
    ("unknown loss", ["--config.student.losses=('xent','kullback')"], ["'kullback'", "js"]),
    ("missing experiment", ["--config=experiments/nope.py"], ["experiments/nope.py", "synthetic", "tweets_minilm"]),
    ("unknown variant", ["--config=experiments/synthetic.py:nope"], ["unknown variant 'nope'", "smoke"]),
]


@pytest.mark.parametrize("row,args,words", CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_cli_row_is_one_paragraph_before_any_training(tmp_path, monkeypatch, capsys, row, args, words):
  # In process (main.cli is the whole boundary; each row fails before absl parses): a subprocess per
  # row would spend seconds importing JAX. The first row also runs as a real subprocess below.
  monkeypatch.chdir(REPO)
  monkeypatch.delenv("W2SG_DEBUG", raising=False)
  argv = ["w2sg_jax.main", SMOKE, f"--workdir={tmp_path / 'run'}", f"--config.cache_dir={tmp_path / 'cache'}", *args]
  with pytest.raises(SystemExit) as exit_info:
    main_lib.cli(argv)
  proc = types.SimpleNamespace(returncode=exit_info.value.code, stderr=capsys.readouterr().err)
  _assert_one_paragraph(proc, words, tmp_path)
  assert proc.returncode == 2, (row, proc.returncode)


def test_a_cli_row_through_a_real_process(tmp_path):
  row, args, words = CLI_ROWS[0]
  proc = _main(tmp_path, *args)
  _assert_one_paragraph(proc, words, tmp_path)
  assert proc.returncode == 2, (row, proc.returncode)


@pytest.mark.slow
def test_workdir_that_is_a_file_or_lies_under_one(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("not a folder")
  proc = _main(tmp_path, f"--workdir={afile}")
  _assert_one_paragraph(proc, [str(afile), "is a file", "--workdir"], tmp_path)
  proc = _main(tmp_path, f"--workdir={afile / 'sub'}")
  _assert_one_paragraph(proc, [str(afile / "sub"), "lies under", "which is a file"], tmp_path)
  proc = _main(tmp_path, f"--config.cache_dir={afile / 'cache'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr and "cache_dir=" in proc.stderr


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
  for proc in (_main(tmp_path, "--config.student.train.batch_size=0", "--debug"),
               _main(tmp_path, "--config.student.train.batch_size=0", W2SG_DEBUG="1")):
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr, proc.stderr[-2000:]


def test_make_experiment_with_a_missing_name_lists_the_experiments():
  proc = subprocess.run(["make", "-s", "experiment", "NAME=nope"], capture_output=True, text=True, cwd=REPO,
                        env=_env())
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr and "OSError" not in proc.stderr, proc.stderr
  assert "no experiment named 'nope'" in proc.stderr
  for name in ("synthetic", "tweets_minilm", "paper_hh"):
    assert name in proc.stderr
  assert "pip" not in proc.stdout + proc.stderr  # Checked before the setup step could run.


def test_ctrl_c_inside_an_extension_import_is_still_an_interrupt():
  """A SIGINT during an extension module's initialisation surfaces as an ImportError raised from the
  KeyboardInterrupt (seen in CI at array_record's first import); it is the user's Ctrl-C: exit 130."""
  from w2sg_jax import main as main_lib

  try:
    try:
      raise KeyboardInterrupt
    except KeyboardInterrupt as interrupt:
      raise ImportError("initialization failed") from interrupt
  except ImportError as wrapped:
    paragraph, status = main_lib.explain(wrapped, ["main"])
  assert status == 130 and paragraph.startswith("interrupted.")
  assert main_lib.explain(ImportError("initialization failed"), ["main"]) is None  # Not from Ctrl-C: a bug.


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path):
  cmd = [sys.executable, "-m", "w2sg_jax.main", SMOKE, f"--workdir={tmp_path / 'run'}",
         f"--config.cache_dir={tmp_path / 'cache'}", "--config.seeds=1"]
  # SIGINT is reset to its default in the child: an interpreter that starts with SIGINT ignored
  # (inherited) never raises KeyboardInterrupt.
  proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  seen = []
  for line in proc.stderr:  # Wait until a stage has finished, then interrupt the next one.
    seen.append(line)
    if "stage data done" in line:
      break
  # Pressed again while the run goes on, as a user would: one pytest-xdist run saw a first
  # SIGINT go unanswered (not reproduced outside it); the message is what is tested here.
  for _ in range(30):
    proc.send_signal(signal.SIGINT)
    try:
      _, rest = proc.communicate(timeout=5)
      break
    except subprocess.TimeoutExpired:
      continue
  else:
    proc.kill()
    _, rest = proc.communicate()
  err = "".join(seen) + rest
  assert proc.returncode == 130, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
  assert "interrupted." in err and "run the same command again" in err
  assert f"--config.cache_dir={tmp_path / 'cache'}" in err and "python -m w2sg_jax.main" in err
  assert str(tmp_path / "cache") in err  # What was kept, and where.


# ---------------------------------------------------------------- the paragraphs


ARGV = ["main.py", SMOKE, "--workdir=runs/x"]


@pytest.mark.parametrize("exc,status,words", [
    (cache_lib.CorruptEntryError("/c/student/abc/test_logits.npy does not match the sha256 in its manifest. Delete "
                                 "/c/student/abc and rerun"), 1, ["corrupt", "/c/student/abc/test_logits.npy"]),
    (store_lib.StoreMismatchError("store /c/labels/x holds 10 ids, the split 12"), 1,
     ["/c/labels/x", "Delete the store folder"]),
    (train_lib.NonFiniteError("non-finite loss at step 3 of run 0 (seed 1) in students js (2 runs); ..."), 1,
     ["diverged", "students js (2 runs)", "kept in the cache", "rerun the same command"]),
    (PermissionError(13, "Permission denied", "/root/cache"), 1, ["permission denied", "/root/cache"]),
    (FileExistsError(17, "File exists", "/tmp/a/b"), 1, ["/tmp/a/b", "A file stands where a folder is needed"]),
    (NotADirectoryError(20, "Not a directory", "/tmp/a/b"), 1, ["/tmp/a/b", "A file stands"]),
    (FileNotFoundError(2, "No such file", "/data/x.csv"), 1, ["file not found: /data/x.csv"]),
    (FileNotFoundError("Checkpoint 'gpt2' lacks config.json"), 1, ["Checkpoint 'gpt2' lacks config.json"]),
    (zipfile.BadZipFile("File is not a zip file"), 1, ["could not be read", "BadZipFile"]),
    (OSError(28, "No space left on device", "/c/x"), 1, ["No space left on device", "/c/x"]),
    (ValueError("data.sizes needs 12000 pairs, but hh_rlhf holds 9000"), 2, ["12000 pairs"]),
])
def test_each_expected_failure_is_a_short_paragraph(exc, status, words):
  paragraph, code = main_lib.explain(exc, ARGV)
  assert code == status
  for word in words:
    assert word in paragraph, (word, paragraph)
  assert "--debug" in paragraph and len(paragraph.splitlines()) <= 4


def test_a_bug_is_not_dressed_up():
  assert main_lib.explain(RuntimeError("internal"), ARGV) is None
  assert main_lib.explain(TypeError("bad call"), ARGV) is None


def test_kept_summary_counts_finished_entries_and_interrupted_runs(tmp_path):
  assert main_lib.kept_summary(str(tmp_path / "none")) == "Nothing was written yet."
  for stage, name in (("weak", "a"), ("labels", "b"), ("labels", "c")):
    entry = tmp_path / stage / name
    entry.mkdir(parents=True)
    (entry / "manifest.json").write_text("{}")
  (tmp_path / "student" / "d.partial" / "ckpt").mkdir(parents=True)
  (tmp_path / "student" / "e.partial").mkdir()  # Empty: a vmapped run keeps no checkpoint.
  text = main_lib.kept_summary(str(tmp_path))
  assert "keeps 3 finished artifacts (labels 2, weak 1)" in text
  assert "the checkpoints of 1 interrupted run." in text


def test_corrupt_cached_features_are_named_and_recomputed(tmp_path, caplog):
  """The row 'corrupt cached feature file': once a BadZipFile traceback, now a warning and a recompute."""
  calls = []

  def produce(out_dir, _work_dir):
    calls.append(1)
    np.save(os.path.join(out_dir, "layer6.npy"), np.arange(12, dtype=np.float32).reshape(3, 4))

  cache = cache_lib.Cache(str(tmp_path))
  entry = cache.get_or_create("features", {"texts": "abc"}, produce)
  path = entry.path("layer6.npy")
  with open(path, "r+b") as f:
    f.seek(100)
    f.write(b"\x00garbage")
  with caplog.at_level("WARNING", logger="w2sg"):
    again = cache_lib.Cache(str(tmp_path)).get_or_create("features", {"texts": "abc"}, produce)
  assert len(calls) == 2 and path in caplog.text and "recomputing" in caplog.text
  np.testing.assert_array_equal(np.load(again.path("layer6.npy")), np.arange(12).reshape(3, 4))
  # With on_corrupt="raise" the CLI's paragraph names the file.
  with open(path, "r+b") as f:
    f.seek(100)
    f.write(b"\x00garbage")
  with pytest.raises(cache_lib.CorruptEntryError) as info:
    cache_lib.Cache(str(tmp_path), on_corrupt="raise").get_or_create("features", {"texts": "abc"}, produce)
  paragraph, code = main_lib.explain(info.value, ARGV)
  assert code == 1 and path in paragraph and "Traceback" not in paragraph


# ---------------------------------------------------------------- .ci/run


FAKE_MAKE = """#!/usr/bin/env bash
var="FAKE_$(echo "$1" | tr 'a-z-' 'A-Z_')"
printf '%b\\n' "${!var}"
status_var="${var}_STATUS"
exit "${!status_var:-0}"
"""


@pytest.mark.parametrize("test_out,test_status,slow_out,slow_status,ok,words", [
    ("12 passed in 3s", 0, "3 passed in 9s", 0, True, []),
    ("12 passed in 3s", 0, "1 skipped in 0.1s", 0, False, ["make test-slow", "no 'N passed' line"]),
    ("12 passed in 3s", 0, "no tests ran in 0.01s\nmake: *** [test-slow] Error 5", 2, False,
     ["collected no test", "status 2"]),
    ("3 failed, 9 passed", 2, "3 passed", 0, False, ["make test failed with status 2"]),
    ("", 0, "3 passed", 0, False, ["make test exited 0 but printed no 'N passed'"]),
])
def test_ci_script_needs_a_passed_line_from_both_suites(tmp_path, test_out, test_status, slow_out, slow_status, ok,
                                                        words):
  fake = tmp_path / "bin" / "make"
  fake.parent.mkdir()
  fake.write_text(FAKE_MAKE)
  fake.chmod(0o755)
  env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
         "FAKE_TEST": test_out, "FAKE_TEST_STATUS": str(test_status),
         "FAKE_TEST_SLOW": slow_out, "FAKE_TEST_SLOW_STATUS": str(slow_status)}
  proc = subprocess.run(["bash", os.path.join(REPO, ".ci", "run")], capture_output=True, text=True, env=env)
  assert (proc.returncode == 0) == ok, proc.stderr
  for word in words:
    assert word in proc.stderr, (word, proc.stderr)
