"""The ``w2sg`` command (w2sg_jax/cli.py): every subcommand, run and report end to end, from outside a clone.

The fast tests call ``cli.main([...])`` in process on the synthetic smoke
experiment (one seed, two losses); the subprocess test from a folder outside
the clone reuses that run's cache, so it is warm. The slow test builds a wheel,
installs it into a fresh virtualenv that sees this one's packages (nothing is
downloaded: ``--no-index``) and runs ``w2sg list`` and ``w2sg run`` there.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from w2sg_jax import cli
from w2sg_jax import experiments as shipped
from w2sg_jax import main as main_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE_ARGS = ["--set", "seeds=1", "--config.student.losses=(\"xent\",\"kl\")"]


def _env():
  env = {k: v for k, v in os.environ.items() if not k.startswith("W2SG_")}
  env.pop("PYTHONPATH", None)  # Outside the clone: only the installed package.
  return env


# ------------------------------------------------------------------ help, list, usage errors


@pytest.mark.parametrize("command", sorted(cli._COMMANDS))  # pylint: disable=protected-access
def test_every_subcommand_has_help(command, capsys):
  assert cli.main([command, "--help"]) == 0
  out = capsys.readouterr().out
  assert "usage:" in out and "--help" in out, out


def test_top_level_help_lists_the_subcommands(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  for command in ("run", "list", "plan", "report", "bench", "describe"):
    assert f"  {command} " in out, out


def test_list_shows_every_shipped_experiment_with_its_description_and_variants(capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  for name in shipped.names():
    doc = ast.get_docstring(ast.parse(pathlib.Path(shipped.path(name)).read_text())).splitlines()[0]
    assert f"{name}  " in out and doc in out, (name, out)
  assert cli.main(["list", "--json"]) == 0
  rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
  assert set(shipped.names()) <= set(rows)
  assert rows["synthetic"]["variants"] == ["smoke"]
  assert "single_turn" not in rows["paper_cai"]["variants"]  # Computed from paper_hh's.


def test_every_shipped_experiment_declares_its_variants():
  """Each module exposes VARIANTS (tests/test_config_schema.py converts every one through the schema)."""
  import importlib

  for name in shipped.names():
    module = importlib.import_module(f"w2sg_jax.experiments.{name}")
    assert isinstance(module.VARIANTS, tuple), name
    assert cli.describe_module(shipped.path(name))[1] == module.VARIANTS, name


def test_the_clone_experiments_folder_re_exports_the_shipped_ones():
  for name in shipped.names():
    thin = REPO / "experiments" / f"{name}.py"
    if thin.exists():
      assert f"from w2sg_jax.experiments.{name} import" in thin.read_text(), thin


def test_an_unknown_command_exits_2_with_the_commands(capsys):
  assert cli.main(["frobnicate"]) == 2
  err = capsys.readouterr().err
  assert "unknown command 'frobnicate'" in err and "report" in err and "describe" in err
  assert cli.main(["synthetic"]) == 2  # An experiment's name where the command goes: the hint says run.
  assert "run synthetic" in capsys.readouterr().err
  assert cli.main([]) == 2


@pytest.mark.parametrize("argv", [["run", "nope"], ["run", "nope:smoke"], ["plan", "nope"], ["describe", "nope"]])
def test_an_unknown_experiment_exits_2_with_the_list(argv, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "no experiment named 'nope'" in err, err
  for name in shipped.names():
    assert name in err, (name, err)
  assert "Traceback" not in err


def test_run_usage_and_config_errors_exit_2(tmp_path, capsys):
  assert cli.main(["run", "synthetic:smoke", "--bogus"]) == 2
  assert "unrecognized argument '--bogus'" in capsys.readouterr().err
  assert cli.main(["run", "synthetic:smoke", "--set", "seeds"]) == 2
  assert "KEY=VALUE" in capsys.readouterr().err
  status = cli.main(["run", "synthetic:nope", "--workdir", str(tmp_path / "w")])
  assert status == 2 and "unknown variant 'nope'" in capsys.readouterr().err
  status = cli.main(["run", "synthetic:smoke", "--workdir", str(tmp_path / "w"), "--set", "no_such_key=1"])
  assert status == 2 and "no_such_key" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_describe_prints_the_schema(capsys):
  assert cli.main(["describe"]) == 0
  assert "student.train.batch_size" in capsys.readouterr().out
  assert cli.main(["describe", "synthetic:smoke"]) == 0
  assert "student.losses" in capsys.readouterr().out


@pytest.mark.parametrize("argv0,expected", [("/somewhere/bin/w2sg", "w2sg run synthetic:smoke"),
                                            ("pytest", "-m w2sg_jax.cli run synthetic:smoke")])
def test_ctrl_c_prints_the_w2sg_command_that_resumes(tmp_path, monkeypatch, capsys, argv0, expected):
  def interrupted(config, workdir):
    raise KeyboardInterrupt

  monkeypatch.setattr(main_lib, "run", interrupted)
  monkeypatch.setattr(sys, "argv", [argv0])
  monkeypatch.chdir(tmp_path)
  status = cli.main(["run", "synthetic:smoke", "--set", "seeds=1"])
  err = capsys.readouterr().err
  assert status == 130, err
  assert "interrupted" in err and f"{expected} --set seeds=1" in err, err
  if argv0 == "pytest":
    assert sys.executable in err
  assert sys.argv == [argv0]  # Restored.


# ------------------------------------------------------------------ run and report, end to end


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """``w2sg run synthetic:smoke`` in process, from a folder with no experiments/: default workdir runs/synthetic."""
  root = tmp_path_factory.mktemp("cli_run")
  here = os.getcwd()
  os.chdir(root)
  try:
    status = cli.main(["run", "synthetic:smoke", *SMOKE_ARGS])
  finally:
    os.chdir(here)
  return root, status


def test_run_writes_results_and_the_report_in_runs_name(smoke_run):
  root, status = smoke_run
  assert status == 0
  workdir = root / "runs" / "synthetic"
  results = json.loads((workdir / "results.json").read_text())
  assert results["experiment"] == "synthetic" and len(results["runs"]) == 4  # 2 losses x 2 noise rates x 1 seed.
  for name in ("summary.md", "summary.csv", "pgr_by_loss.png", "accuracy_vs_noise.png", "config.json"):
    assert (workdir / name).is_file(), name
  assert (workdir / "tensorboard" / "students").is_dir()


def test_report_rebuilds_the_same_tables_without_training(smoke_run, capsys):
  root, _ = smoke_run
  workdir = root / "runs" / "synthetic"
  before = {n: (workdir / n).read_text() for n in ("summary.md", "summary.csv")}
  for name in ("summary.md", "summary.csv", "pgr_by_loss.png"):
    (workdir / name).unlink()
  shutil.rmtree(workdir / "tensorboard" / "students")
  assert cli.main(["report", str(workdir)]) == 0
  out = capsys.readouterr().out
  assert {n: (workdir / n).read_text() for n in before} == before
  assert (workdir / "pgr_by_loss.png").is_file()
  assert "rewrote the curves of 4 student run(s)" in out, out
  students = workdir / "tensorboard" / "students"
  assert len([p for p in students.rglob("events.out.tfevents*")]) == 4


def test_report_of_a_folder_without_results_exits_2(tmp_path, capsys):
  assert cli.main(["report", str(tmp_path)]) == 2
  assert "no results.json" in capsys.readouterr().err


def test_run_from_outside_any_clone(smoke_run, tmp_path):
  """A subprocess in a folder with no experiments/ and no PYTHONPATH; warm: the in-process run's cache."""
  root, status = smoke_run
  assert status == 0
  cache = root / "runs" / "cache"
  proc = subprocess.run(
      [sys.executable, "-m", "w2sg_jax.cli", "run", "synthetic:smoke", "--workdir", "out", "--set",
       f"cache_dir={cache}", *SMOKE_ARGS],
      capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert results["cache"]["computed"] == []  # Everything came from the first run's cache.
  assert (tmp_path / "out" / "summary.md").read_text() == (root / "runs" / "synthetic" / "summary.md").read_text()


# ------------------------------------------------------------------ the pip road (slow)


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_lists_and_runs(tmp_path):
  """Build a wheel, install it with --no-deps --no-index into a fresh venv that sees this venv's packages."""
  src = tmp_path / "src"
  shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
      ".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", "tests", ".pytest_cache"))
  wheels = tmp_path / "wheels"
  # Without build isolation where this venv can build a wheel (setuptools >= 70.1, or the wheel package);
  # else pip fetches the build backend (setuptools, wheel: small) into an isolated build env.
  import importlib.util

  import setuptools

  local = (importlib.util.find_spec("wheel") is not None
           or tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1))
  build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          *(["--no-build-isolation", "--no-index"] if local else []), "-w", str(wheels), str(src)],
                         capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
  if build.returncode and not local:
    pytest.skip(f"no wheel could be built here (setuptools {setuptools.__version__}, no wheel package, and the "
                f"isolated build failed: {build.stderr.strip().splitlines()[-1:]})")
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = wheels.glob("w2sg_jax-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
  py = venv / "bin" / "python"
  site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  # This venv's packages (jax, flax, ...) behind the new venv's own; its editable w2sg_jax finder is a .pth
  # there, which a path added this way does not run: w2sg_jax comes from the wheel.
  ours = [p for p in sys.path if p.endswith("site-packages")]
  pathlib.Path(site, "_w2sg_test_parent.pth").write_text("\n".join(ours) + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                  str(wheel)], check=True, env=_env(), timeout=600, cwd=tmp_path)
  w2sg = venv / "bin" / "w2sg"
  assert w2sg.exists()
  where = subprocess.run([str(py), "-c", "import w2sg_jax.cli; print(w2sg_jax.cli.__file__)"], capture_output=True,
                         text=True, check=True, cwd=tmp_path, env=_env()).stdout
  assert where.startswith(str(venv)), where
  work = tmp_path / "elsewhere"
  work.mkdir()
  listed = subprocess.run([str(w2sg), "list"], capture_output=True, text=True, cwd=work, env=_env(), timeout=300)
  assert listed.returncode == 0, listed.stderr
  for name in shipped.names():
    assert name in listed.stdout
  proc = subprocess.run([str(w2sg), "run", "synthetic:smoke", *SMOKE_ARGS], capture_output=True, text=True,
                        cwd=work, env=_env(), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (work / "runs" / "synthetic" / "results.json").is_file()
  assert (work / "runs" / "synthetic" / "summary.md").is_file()
  report = subprocess.run([str(w2sg), "report", "runs/synthetic"], capture_output=True, text=True, cwd=work,
                          env=_env(), timeout=300)
  assert report.returncode == 0, report.stderr
  # The road: the example CSV experiment, from the wheel alone, writes results and curves.
  example = subprocess.run([str(w2sg), "run", "files_example", "--set", "seeds=1"], capture_output=True, text=True,
                           cwd=work, env=_env(), timeout=600)
  assert example.returncode == 0, example.stderr[-3000:]
  assert (work / "runs" / "files_example" / "results.json").is_file()
  assert list((work / "runs" / "files_example" / "tensorboard").rglob("events.out.tfevents*"))
