"""Command line: run one experiment config into a workdir.

  python -m w2sg_jax.main --config=experiments/NAME.py[:VARIANT] --workdir=runs/NAME [--config.KEY=VALUE ...]

Rerunning the same command resumes: finished stages and runs are skipped and
an interrupted training run continues from its last checkpoint.

Many hosts on one shared cache_dir (`w2sg_jax.workers`): ``--worker=i/N`` (or
``W2SG_WORKER=i/N``, or a Slurm job array's ``SLURM_ARRAY_TASK_ID`` and
``SLURM_ARRAY_TASK_COUNT``; the flag wins) trains only the groups of runs whose key
falls to worker i of N and exits 0 without a report while other workers' runs
are missing; then ``--report_only`` trains nothing and writes the report, or
fails naming the runs still missing.

Every expected failure (a config mistake, a missing file or permission, a
corrupt cache entry, a diverged run, Ctrl-C) ends in one short paragraph on
stderr, saying what happened, which key or file, and what to do, and a
non-zero exit status: 2 for a usage or config error, 1 for a failure while
running, 130 after Ctrl-C. The whole config is checked (`validate`) before
any stage runs. ``--debug`` or ``W2SG_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import shlex
import sys
import warnings

import jax

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/NAME.py[:variant]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results.json and the report.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of its one-paragraph summary "
                           "(also W2SG_DEBUG=1).")
_WORKER = flags.DEFINE_string(
    "worker", "", "i/N: train only the groups of ceiling and student runs whose key falls to worker i of N (from 0), "
    "on a cache_dir shared by all N workers; no report is written while other workers' runs are missing (run "
    "--report_only when all are done). Default: W2SG_WORKER=i/N, else a Slurm job array's SLURM_ARRAY_TASK_ID "
    "and SLURM_ARRAY_TASK_COUNT, else one process trains every run (as does --worker=0/1).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train no run: write the report if every ceiling and student run is in the cache "
    "(after the --worker=i/N processes), else fail naming the runs still missing (exit status 1).")
flags.mark_flags_as_required(["config", "workdir"])

# The experiment `check_arguments` resolved, with every --config.KEY=VALUE applied through the schema
# (`config.apply_overrides`): what `main` runs. absl then parses the other flags only.
_resolved = None


def _use_compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at ``path``, also in a process that used another.

  JAX sets its cache up once, at the first compile after a directory is set,
  and then silently keeps it: without the reset, a second `run` in one process
  (a notebook, a test) would write its programs into the first run's cache_dir.
  """
  from jax.experimental.compilation_cache import compilation_cache

  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    compilation_cache.reset_cache()


def run(config, workdir: str, *, worker=None, report_only: bool = False) -> dict:
  """Runs ``config`` into ``workdir``; ``worker`` (a `workers.Worker`) and ``report_only`` as the flags.

  ``config``: an experiment's ``ConfigDict`` (or the `config.Experiment` made from one). This is the
  boundary: it is converted here, once, and everything below reads the typed object.
  """
  from w2sg_jax import config as schema
  from w2sg_jax import distributed, tasks
  from w2sg_jax.pipeline import Pipeline

  if not isinstance(config, schema.Experiment):
    config = schema.Experiment.from_configdict(config)  # `ConfigError` lists every problem.
  distributed.maybe_initialize()
  # A sweep compiles one step per run; the persistent cache makes every
  # compilation after the first (and every rerun) a disk read.
  _use_compilation_cache(os.path.join(os.path.abspath(config.cache_dir), "xla"))
  # `runner` picks what runs the config: the W2SG pipeline (default) or the
  # theory lab (experiments/tweets_theory.py), which reuses the pipeline's stages.
  runner = config.runner
  if runner == "theory":
    if report_only or (worker is not None and worker.source == "--worker"):
      raise ValueError("--worker and --report_only split the training runs of the pipeline among processes; the "
                       "theory lab (config.runner='theory') runs in one process: drop them.")
    if worker is not None:
      from w2sg_jax.log import log

      log.warning("worker %s (from %s) is ignored: the theory lab runs in one process.", worker, worker.source)
    from w2sg_jax import theory

    return theory.run(config, workdir)
  if runner != "pipeline":
    raise ValueError(f"config.runner={runner!r}; use 'pipeline' or 'theory'.")
  return Pipeline(config, workdir, tasks.get(config.task), worker=worker, report_only=report_only).run()


def main(argv):
  # Orbax and TFDS log every checkpoint step at INFO; progress bars say enough.
  logging.set_verbosity(logging.WARNING)
  # Python hides DeprecationWarnings outside __main__; show ours (old engine names).
  warnings.filterwarnings("default", category=DeprecationWarning, module=r"w2sg_jax(\.|$)")
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from w2sg_jax import distributed, validate, workers

  # `cli` resolved the config with its overrides (`check_arguments`); a bare `app.run(main)` has absl's.
  config, workdir = (_resolved if _resolved is not None else _CONFIG.value), _WORKDIR.value
  worker = workers.from_environment(_WORKER.value)  # A bad --worker fails before any compute.
  distributed.maybe_initialize()  # Before the first JAX call: check_config counts the devices.
  validate.check_paths(workdir=workdir, cache_dir=str(getattr(config, "cache_dir", "") or ""))
  # Every runner reads the pipeline's config blocks; from here on the typed experiment is what runs.
  experiment = validate.check_config(config)["experiment"]
  # Only when set: `run(config, workdir)` stays the call of a plain run (tests and callers wrap it).
  split = {"worker": worker} if worker is not None else {}
  run(experiment, workdir, **split, **({"report_only": True} if _REPORT_ONLY.value else {}))


# ------------------------------------------------------------ error boundary


class ExperimentNotFoundError(FileNotFoundError):
  """``--config`` names a file that does not exist; the message lists the experiments."""


def _debug_requested(argv) -> bool:
  if os.environ.get("W2SG_DEBUG", "").lower() in ("1", "true", "yes", "on"):
    return True
  return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv[1:])


def _config_spec(argv) -> str | None:
  """``SPEC`` of ``--config=SPEC`` (or ``--config SPEC``)."""
  spec = None
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == "--":
      break
    name, eq, value = arg.partition("=")
    if name == "--config":
      spec = value if eq else (args[i + 1] if i + 1 < len(args) else None)
  return spec


def experiment_names(folder: str = "experiments") -> list[str]:
  """The experiment configs in ``folder`` (``NAME`` of ``NAME.py``)."""
  if not os.path.isdir(folder):
    return []
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def check_arguments(argv):
  """What absl and config_flags would fail on with a traceback, checked first; returns the experiment to run.

  The config file must exist (else the experiments that do are listed), its
  variant must load, and every ``--config.KEY=VALUE`` goes through the one
  override road, `config.apply_overrides`: any key of the schema (also one the
  file leaves at its default; else "did you mean"), its value parsed with the
  key's schema type (``--config.student.train.epochs=1.5`` is a float, ``abc`` for
  an integer is named with the type it takes), then the whole config checked.
  Every problem raises `validate.ConfigError`, one line each, before absl parses.
  """
  global _resolved
  from w2sg_jax import config as schema
  from w2sg_jax import config_lib

  _resolved = None
  spec = _config_spec(argv)
  if not spec:
    return None  # absl reports the missing required flag itself.
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    folder = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
    names = experiment_names(folder) if os.path.isdir(folder) else []
    if not names:
      folder, names = "experiments", experiment_names("experiments")
    if not names:  # Outside a clone: the packaged experiments (w2sg run NAME).
      from w2sg_jax import experiments as shipped

      folder, names = shipped.FOLDER, shipped.names()
    listing, folder = ", ".join(names) if names else "(none found)", os.path.normpath(folder)
    what = " (a folder, not an experiment file)" if os.path.isdir(path) else ""
    raise ExperimentNotFoundError(
        f"no experiment config at {path!r}{what}. The experiments in {folder}/ are: {listing}. Run one with "
        f"make experiment NAME=<name>, or --config={folder}/<name>.py[:variant]."
    )
  _resolved = schema.apply_overrides(config_lib.load_config(spec), _config_overrides(argv), where=spec)
  return _resolved


def _config_overrides(argv) -> list[tuple[str, str | None]]:
  """``[(key, raw value)]`` of each ``--config.KEY=VALUE`` or ``--config.KEY VALUE``; None for a bare flag."""
  return [(key, value) for key, value, _ in _override_spans(argv)]


def _override_spans(argv) -> list[tuple[str, str | None, range]]:
  """``(key, raw value, positions in argv)`` of each override: one position for ``--config.KEY=VALUE`` or a
  bare flag, two for ``--config.KEY VALUE``."""
  out = []
  for i in range(1, len(argv)):
    arg = argv[i]
    if arg == "--":
      break
    name, eq, value = arg.partition("=")
    if name.startswith("--config."):
      nxt = argv[i + 1] if i + 1 < len(argv) else None
      if eq:
        out.append((name[len("--config."):], value, range(i, i + 1)))
      elif nxt is None or nxt.startswith("--"):
        out.append((name[len("--config."):], None, range(i, i + 1)))
      else:
        out.append((name[len("--config."):], nxt, range(i, i + 2)))
  return out


def without_overrides(argv) -> list[str]:
  """``argv`` less its ``--config.KEY`` overrides (`check_arguments` applied them): what absl parses."""
  dropped = {i for _, _, span in _override_spans(argv) for i in span}
  return [arg for i, arg in enumerate(argv) if i not in dropped]


def last_config_only(argv) -> list[str]:
  """``argv`` with only its last ``--config``: a later one replaces an earlier one, as for any flag.

  config_flags itself fails on a second ``--config`` with every ``--config.KEY``
  "defined twice"; ``make experiment NAME=x ARGS='--config=experiments/x.py:smoke
  --config.seeds=3'`` passes two.
  """
  argv, spans = list(argv), []
  i = 1
  while i < len(argv) and argv[i] != "--":
    width = 2 if argv[i] == "--config" else 1 if argv[i].startswith("--config=") else 0
    if width:
      spans.append((i, width))
    i += max(width, 1)
  for start, width in reversed(spans[:-1]):
    del argv[start:start + width]
  return argv


def _cache_dir_of_run() -> str | None:
  try:
    config = _resolved if _resolved is not None else _CONFIG.value
    return os.path.abspath(str(config.cache_dir))
  except Exception:  # noqa: BLE001 -- flags not parsed yet: nothing was written.
    return None


def kept_summary(cache_dir: str | None) -> str:
  """What the cache holds: finished entries per stage, and interrupted runs' checkpoints."""
  if not cache_dir or not os.path.isdir(cache_dir):
    return "Nothing was written yet."
  counts, partial = {}, 0
  for stage in sorted(os.listdir(cache_dir)):
    folder = os.path.join(cache_dir, stage)
    if not os.path.isdir(folder):
      continue
    for name in os.listdir(folder):
      entry = os.path.join(folder, name)
      if name.endswith(".partial") and os.path.isdir(entry) and os.listdir(entry):
        partial += 1
      elif not name.startswith(".") and os.path.isfile(os.path.join(entry, "manifest.json")):
        counts[stage] = counts.get(stage, 0) + 1
  if not counts and not partial:
    return f"The cache at {cache_dir} holds no finished artifact yet."
  text = f"The cache at {cache_dir} keeps {sum(counts.values())} finished artifacts"
  if counts:
    text += " (" + ", ".join(f"{stage} {n}" for stage, n in counts.items()) + ")"
  if partial:
    text += f" and the checkpoints of {partial} interrupted run{'s' if partial > 1 else ''}"
  return text + "."


# The command words `w2sg_jax.cli` ran (``["w2sg", "run", ...]``), printed as the resume command instead of
# the ``python -m w2sg_jax.main`` form; set by `cli` for the length of one call.
_resume_words: list[str] | None = None


def resume_command(argv) -> str:
  """The command that resumes this run when pasted into a fresh shell.

  ``cd`` to this folder, then the ``make experiment`` line that started the run
  (the Makefile sets W2SG_MAKE_EXPERIMENT and exports its variables as
  W2SG_MAKE_*), or this interpreter by its own path: a bare ``python`` is often
  not the one with this project's packages.
  """
  here = f"cd {shlex.quote(os.getcwd())} && "
  if os.environ.get("W2SG_MAKE_EXPERIMENT") == "1":
    words = ["make", "experiment"]
    for var in ("NAME", "VARIANT", "WORKDIR", "ARGS"):
      value = os.environ.get(f"W2SG_MAKE_{var}", "")
      if value:
        words.append(f"{var}={value}")
    return here + shlex.join(words)
  if _resume_words is not None:
    return here + shlex.join(_resume_words)
  return here + shlex.join([sys.executable, "-m", "w2sg_jax.main", *argv[1:]])


def _interrupted(exc: BaseException | None) -> bool:
  """Whether Ctrl-C caused ``exc``: a KeyboardInterrupt itself, or one that another exception wraps.

  A SIGINT that lands while an extension module initialises (array_record's,
  imported at the first store write) surfaces as ``ImportError: initialization
  failed`` raised from the KeyboardInterrupt; it is still the user's Ctrl-C.
  """
  seen = set()
  while exc is not None and id(exc) not in seen:
    if isinstance(exc, KeyboardInterrupt):
      return True
    seen.add(id(exc))
    exc = exc.__cause__ or exc.__context__
  return False


def explain(exc: BaseException, argv) -> tuple[str, int] | None:
  """``(paragraph, exit status)`` for an expected failure; None for a bug (shown with its traceback)."""
  import pickle
  import zipfile

  from w2sg_jax import cache as cache_lib
  from w2sg_jax import train as train_lib
  from w2sg_jax import validate
  from w2sg_jax.data import prepared as prepared_lib
  from w2sg_jax.labels import store as store_lib

  debug = "(Rerun with --debug or W2SG_DEBUG=1 to see the traceback.)"
  if _interrupted(exc):
    return (f"interrupted. {kept_summary(_cache_dir_of_run())} Finished stages and runs are reused and an "
            "interrupted data-parallel run continues from its last checkpoint; to resume, run the same command "
            f"again:\n  {resume_command(argv)}"), 130
  if isinstance(exc, ExperimentNotFoundError):
    return f"error: {exc}", 2
  if isinstance(exc, validate.PathError):
    return (f"error: {exc}\nPass another --workdir or --config.cache_dir; nothing was written.\n{debug}"), 2
  if isinstance(exc, validate.ConfigError):
    where = "in the experiment file or on the command line (--config.KEY=VALUE)"
    return f"error: invalid config: {exc}\nFix it {where}; nothing was trained.\n{debug}", 2
  pipeline_lib = sys.modules.get("w2sg_jax.pipeline")  # Not imported: none of its errors was raised.
  if pipeline_lib is not None and isinstance(exc, pipeline_lib.MissingRunsError):
    return f"error: {exc}\n{debug}", 1
  if isinstance(exc, cache_lib.RunsOfOtherWorkers):  # Only from a stage that does not collect them itself.
    return (f"error: {exc}. Run every worker (--worker=i/N) on this cache_dir, then --report_only to write the "
            f"report.\n{debug}"), 1
  if isinstance(exc, cache_lib.CorruptEntryError):
    return f"error: a cached artifact is corrupt: {exc}\n{debug}", 1
  if isinstance(exc, prepared_lib.PreparedDataError):
    return f"error: {exc}\n{debug}", 1
  if isinstance(exc, store_lib.StoreMismatchError):
    return (f"error: a weak-label store does not match this run: {exc}\nDelete the store folder it names and rerun "
            f"the same command; the store is recomputed.\n{debug}"), 1
  if isinstance(exc, train_lib.NonFiniteError):
    return (f"error: training diverged: {exc}\nEvery run that finished before it is kept in the cache. Lower the "
            "learning rate (student.train.optimizer.learning_rate), or set grad_clip, then rerun the same command: "
            f"only the unfinished runs train.\n{debug}"), 1
  if isinstance(exc, PermissionError):
    return (f"error: {(exc.strerror or 'permission denied').lower()}: {exc.filename or exc}. Choose a folder you can "
            f"read and write (--workdir, --config.cache_dir) or ask its owner to fix its permissions; nothing was "
            f"deleted.\n{debug}"), 1
  if isinstance(exc, (FileExistsError, NotADirectoryError)):
    return (f"error: {exc.strerror or exc}: {exc.filename}. A file stands where a folder is needed; choose another "
            f"--workdir or --config.cache_dir, or move the file away.\n{debug}"), 1
  if isinstance(exc, FileNotFoundError):
    what = str(exc) if exc.filename is None else f"file not found: {exc.filename}"
    return f"error: {what}\n{debug}", 1
  if isinstance(exc, ModuleNotFoundError):
    return f"error: a package this run needs is not installed: {exc.name}. Install it (make setup).\n{debug}", 1
  if isinstance(exc, OSError):
    return f"error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}.\n{debug}", 1
  if isinstance(exc, (zipfile.BadZipFile, EOFError, pickle.UnpicklingError)):
    return (f"error: a file could not be read ({type(exc).__name__}: {exc}). If it is under the cache, delete it "
            f"and rerun; it is recomputed.\n{debug}"), 1
  if isinstance(exc, KeyError):
    return f"error: {exc.args[0] if exc.args else exc}\n{debug}", 2
  if isinstance(exc, ValueError):
    return f"error: {exc}\n{debug}", 2
  return None


def cli(argv=None, *, resume: list[str] | None = None) -> None:
  """``python -m w2sg_jax.main``: `main` inside the error boundary.

  ``resume``: the command words to print as the way to resume after Ctrl-C
  (``w2sg run ...`` passes its own); default, this interpreter with ``-m w2sg_jax.main``.
  """
  global _resume_words, _resolved
  argv = last_config_only(sys.argv if argv is None else argv)
  _resume_words = resume
  try:
    check_arguments(argv)
    app.run(main, argv=without_overrides(argv))
  except SystemExit:
    raise
  except BaseException as exc:  # pylint: disable=broad-except (the boundary: expected failures become a paragraph)
    if _debug_requested(argv):
      raise
    explained = explain(exc, argv)
    if explained is None:
      print("unexpected error (a bug?); the traceback follows.", file=sys.stderr, flush=True)
      raise
    paragraph, status = explained
    print(paragraph, file=sys.stderr, flush=True)
    sys.exit(status)
  finally:
    _resume_words = None
    _resolved = None


if __name__ == "__main__":
  cli()
