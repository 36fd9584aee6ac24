"""The ``w2sg`` command: run, list, plan, report, bench and describe experiments.

  w2sg run NAME_OR_PATH[:variant] [--workdir DIR] [--set KEY=VALUE ...] [--config.KEY=VALUE ...]
           [--worker i/N | --report-only]
  w2sg list
  w2sg plan NAME_OR_PATH[:variant] [--devices N] [--device-memory GIB] [--config.KEY=VALUE ...]
  w2sg report WORKDIR
  w2sg bench [--quick] [--only a,c] [--outdir DIR]
  w2sg describe [NAME_OR_PATH[:variant]]

``pip install`` puts ``w2sg`` on PATH (``[project.scripts]``); ``python -m
w2sg_jax.cli`` is the same command. NAME is a shipped experiment
(``w2sg_jax/experiments/NAME.py``, listed by ``w2sg list``), or an experiment
file in ``./experiments/`` (a clone's thin re-exports, or your own), or any
path to a file whose ``get_config(variant)`` returns the config.

``run`` goes through the same error boundary as ``python -m w2sg_jax.main``
(`w2sg_jax.main.cli`): exit status 2 for a usage or config error, 1 for a
failure while running, 130 after Ctrl-C, which prints the ``w2sg run`` command
that resumes the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from w2sg_jax import experiments as shipped

_COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {}


def _command(name: str, summary: str):
  def register(fn):
    _COMMANDS[name] = (fn, summary)
    return fn
  return register


def _invocation() -> list[str]:
  """How this command was started: ``w2sg`` (on PATH after pip), else this interpreter with ``-m``."""
  if os.path.basename(sys.argv[0] or "") == "w2sg":
    return ["w2sg"]
  return [sys.executable, "-m", "w2sg_jax.cli"]


def _prog(sub: str = "") -> str:
  words = _invocation()
  base = "w2sg" if words == ["w2sg"] else "python -m w2sg_jax.cli"
  return f"{base} {sub}".strip()


# ------------------------------------------------------------------ experiments


class UnknownExperiment(ValueError):
  pass


def local_names(folder: str = "experiments") -> list[str]:
  """Experiment files in ``./experiments/`` (the user's place; a clone's thin re-exports)."""
  if not os.path.isdir(folder):
    return []
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def all_names() -> list[str]:
  return sorted(set(shipped.names()) | set(local_names()))


def resolve(spec: str) -> tuple[str, str, str]:
  """``NAME_OR_PATH[:variant]`` -> ``(name, config file, variant)``.

  A path (an existing file, or anything with a '/' or ending in '.py') is taken
  as it is; a bare name is ``./experiments/NAME.py`` when that exists (your
  own file wins), else the shipped ``w2sg_jax/experiments/NAME.py``.

  Raises:
    UnknownExperiment: a bare name that is neither; the message lists the experiments.
  """
  target, _, variant = spec.partition(":")
  if os.path.isfile(target) or os.sep in target or "/" in target or target.endswith(".py") or os.path.isdir(target):
    return os.path.splitext(os.path.basename(target.rstrip("/")))[0] or target, target, variant
  local = os.path.join("experiments", f"{target}.py")
  if target and os.path.isfile(local):
    return target, local, variant
  if target and os.path.isfile(shipped.path(target)):
    return target, shipped.path(target), variant
  raise UnknownExperiment(
      f"no experiment named {target!r}. The experiments are: {', '.join(all_names()) or '(none found)'}. "
      f"Run one with: w2sg run NAME[:variant] (w2sg list shows the variants), or w2sg run path/to/file.py.")


def describe_module(path: str) -> tuple[str, tuple[str, ...]]:
  """``(first docstring line, VARIANTS)`` of an experiment file, read without running it."""
  import ast

  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  doc = (ast.get_docstring(tree) or "").strip().splitlines()
  variants: tuple[str, ...] = ()
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "VARIANTS" for t in node.targets):
      try:
        variants = tuple(ast.literal_eval(node.value))
      except ValueError:  # Computed (paper_cai.py): import it.
        variants = tuple(_load(path).VARIANTS)
  return (doc[0] if doc else ""), variants


def _load(path: str):
  from w2sg_jax import config_lib

  return config_lib._load_experiment_module(path)  # pylint: disable=protected-access


# ------------------------------------------------------------------ subcommands


@_command("run", "run an experiment into a workdir (rerunning resumes)")
def _run(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog=_prog("run"), allow_abbrev=False,
      description="Run one experiment: data, weak model, weak labels, ceiling, students, report. Rerunning the "
      "same command resumes it (finished stages and runs are reused). Over many hosts: --worker=i/N on each, "
      "one shared cache_dir, then --report-only. Exit status: 0 done (also a worker whose report waits for "
      "--report-only), 2 usage or config error, 1 failure while running, 130 after Ctrl-C.",
      epilog="Examples: w2sg run synthetic:smoke | w2sg run tweets_minilm --set seeds=3 | "
      "w2sg run my_exp.py --workdir runs/mine --config.student.losses='(\"xent\",\"js\")' | "
      "w2sg run synthetic --worker 0/2 (and --worker 1/2 on another host), then w2sg run synthetic --report-only")
  parser.add_argument("experiment", metavar="NAME_OR_PATH[:variant]",
                      help="a shipped experiment (w2sg list), ./experiments/NAME.py, or a config file's path")
  parser.add_argument("--workdir", help="results.json, the report and TensorBoard curves go here (default runs/NAME)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key (repeatable); same as --config.KEY=VALUE")
  parser.add_argument("--worker", metavar="i/N",
                      help="train only the groups of ceiling and student runs whose key falls to worker i of N "
                      "(from 0), on a cache_dir shared by all N workers; no report while other workers' runs are missing "
                      "(then run --report-only). Default: W2SG_WORKER=i/N, else a Slurm job array's "
                      "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else this process trains every run")
  parser.add_argument("--report-only", "--report_only", dest="report_only", action="store_true",
                      help="train no run: write the report once every run is in the cache (after the --worker "
                      "processes), else fail naming the runs still missing")
  parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also W2SG_DEBUG=1)")
  args, rest = parser.parse_known_args(argv)
  for arg in rest:
    if not (arg.startswith("--config.") or arg.startswith("--config=") or arg == "--config"):
      parser.error(f"unrecognized argument {arg!r}; config keys are set with --set KEY=VALUE or --config.KEY=VALUE")
  try:
    name, path, variant = resolve(args.experiment)
  except UnknownExperiment as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  overrides = []
  for item in args.set:
    key, eq, value = item.partition("=")
    if not eq or not key:
      parser.error(f"--set {item!r}: write KEY=VALUE, as in --set seeds=3")
    overrides.append(f"--config.{key}={value}")
  workdir = args.workdir or os.path.join("runs", name)
  spec = path + (f":{variant}" if variant else "")
  # A --config=... among the rest replaces this one (main.last_config_only: the last wins).
  main_argv = ["w2sg", f"--config={spec}", f"--workdir={workdir}", *overrides, *rest]
  if args.worker is not None:
    main_argv.append(f"--worker={args.worker}")
  if args.report_only:
    main_argv.append("--report_only")
  if args.debug:
    main_argv.append("--debug")
  from w2sg_jax import main as main_lib

  # config_flags finds the --config.KEY overrides in sys.argv (not in the argv absl parses): hand it ours.
  resume = [*_invocation(), "run", *argv]  # Before sys.argv changes: it says how we were started.
  saved, sys.argv = sys.argv, main_argv
  try:
    main_lib.cli(main_argv, resume=resume)
  except SystemExit as e:
    return _status(e.code)
  finally:
    sys.argv = saved
    _forget_override_flags()
  return 0


def _forget_override_flags() -> None:
  """Drops the ``--config.KEY`` flags config_flags registered, so a second run in this process can parse its own.

  config_flags defines one absl flag per override it finds; a second `run` in
  one process (a notebook, the tests) would otherwise fail with "defined twice".
  """
  from absl import flags

  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()


def _status(code) -> int:
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  print(code, file=sys.stderr)  # absl: sys.exit("message").
  return 1


@_command("list", "the shipped experiments, with a one-line description and their variants")
def _list(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog=_prog("list"), description="List the experiments `w2sg run` knows: the shipped ones "
      "(w2sg_jax/experiments/) and any file in ./experiments/, each with its one-line description and variants.")
  parser.add_argument("--json", action="store_true", help="print them as JSON")
  args = parser.parse_args(argv)
  rows = []
  for name in all_names():
    local = os.path.join("experiments", f"{name}.py")
    is_shipped = os.path.isfile(shipped.path(name))
    path = shipped.path(name) if is_shipped else local
    try:
      doc, variants = describe_module(path)
    except (OSError, SyntaxError, AttributeError, ValueError) as e:
      doc, variants = f"(cannot be read: {type(e).__name__}: {e})", ()
    rows.append({"name": name, "description": doc, "variants": list(variants),
                 "where": "shipped" if is_shipped else os.path.abspath(local)})
  if args.json:
    print(json.dumps(rows, indent=1))
    return 0
  width = max((len(r["name"]) for r in rows), default=0)
  for r in rows:
    print(f"{r['name']:<{width}}  {r['description']}")
    extra = [f"variants: {', '.join(r['variants'])}" if r["variants"] else "no variants"]
    if r["where"] != "shipped":
      extra.append(f"file: {r['where']}")
    print(f"{'':<{width}}  ({'; '.join(extra)})")
  print(f"\nRun one with: {_prog('run')} NAME[:variant] [--workdir DIR] [--set KEY=VALUE ...]")
  return 0


def _resolve_config_args(argv: list[str], flag: str = "--config") -> list[str] | int:
  """A leading ``NAME[:variant]`` or a ``--config=NAME[:variant]`` becomes ``--config=<its file>``."""
  out, i = [], 0
  argv = list(argv)
  if argv and not argv[0].startswith("-"):
    argv = [f"{flag}={argv[0]}", *argv[1:]]
  while i < len(argv):
    arg = argv[i]
    value = None
    if arg == flag and i + 1 < len(argv):
      value, i = argv[i + 1], i + 2
    elif arg.startswith(flag + "="):
      value, i = arg[len(flag) + 1:], i + 1
    else:
      out.append(arg)
      i += 1
      continue
    try:
      _, path, variant = resolve(value)
    except UnknownExperiment as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    out.append(f"{flag}={path}{':' + variant if variant else ''}")
  return out


@_command("plan", "memory per device, FLOPs and time of an experiment, compiled on simulated devices")
def _plan(argv: list[str]) -> int:
  if any(a in ("-h", "--help") for a in argv):
    print(f"usage: {_prog('plan')} NAME_OR_PATH[:variant] [options]\n\nThe experiment may also be given as "
          "--config=NAME_OR_PATH[:variant]. The options are w2sg_jax.plan's:\n")
  resolved = _resolve_config_args(argv)
  if isinstance(resolved, int):
    return resolved
  from w2sg_jax import plan

  try:
    return int(plan.main(resolved) or 0)
  except SystemExit as e:
    return _status(e.code)


@_command("report", "rebuild the tables, figures and TensorBoard curves of a finished workdir, without training")
def _report(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog=_prog("report"),
      description="Rebuild summary.md, summary.csv, the figures and the students' TensorBoard curves from "
      "WORKDIR/results.json; nothing trains. The students' curves are read from the cache entries that "
      "results.json names (when they are still there); the weak and ceiling curves are not named in "
      "results.json, so their folders under WORKDIR/tensorboard are kept as the run wrote them "
      "(rerun `w2sg run` with the same arguments to rewrite every curve: warm, nothing trains).")
  parser.add_argument("workdir", metavar="WORKDIR", help="a finished run's workdir (it holds results.json)")
  parser.add_argument("--no-curves", action="store_true", help="tables and figures only")
  args = parser.parse_args(argv)
  path = os.path.join(args.workdir, "results.json")
  if not os.path.isfile(path):
    what = (" It holds theory.json: the theory lab's report is redrawn by rerunning its `w2sg run` (warm)."
            if os.path.isfile(os.path.join(args.workdir, "theory.json")) else "")
    print(f"error: no results.json in {args.workdir!r}: pass the workdir of a finished `w2sg run`.{what}",
          file=sys.stderr)
    return 2
  try:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    print(f"error: {path} cannot be read ({type(e).__name__}: {e}).", file=sys.stderr)
    return 1
  from w2sg_jax import metric_writers
  from w2sg_jax import report as report_lib

  title = str(results.get("experiment") or os.path.basename(os.path.abspath(args.workdir)))
  try:
    paths = report_lib.write_report(results, args.workdir, title=title)
  except ValueError as e:
    print(f"error: {path}: {e}", file=sys.stderr)
    return 2
  headline = [row for row in results.get("summary") or []
              if row.get("selection", "default") == results.get("summary_selection", "default")]
  print(report_lib.markdown_table(headline) if headline else "", flush=True)
  for key in ("summary_md", "summary_csv", "pgr_by_loss", "accuracy_vs_noise"):
    print(f"wrote {paths[key]}")
  if results.get("grid"):  # tuning.md and its figure, from the same rows.
    from w2sg_jax import grid as grid_lib
    grid = results["grid"]
    tuned = grid_lib.write_report(results["summary"], grid.get("spread", []), results.get("runs", []), args.workdir,
                                  title=title, default_points=grid.get("default_point"))
    for path_written in tuned.values():
      print(f"wrote {path_written}")
  if args.no_curves:
    return 0
  runs, gone = [], 0
  for row in results.get("runs", []):
    entry = row.get("cache_entry")
    if not entry or not os.path.isdir(entry):
      gone += 1
      continue
    final = {k: row[k] for k in ("test_accuracy", "test_auroc", "misfit_kl", "misfit_tv") if row.get(k) is not None}
    runs.append(metric_writers.RunCurves("students", {"loss": row["loss"], "noise": float(row["noise"]),
                                                      "seed": int(row["seed"])}, entry, final))
  root = os.path.join(args.workdir, metric_writers.TENSORBOARD_DIR)
  written = metric_writers.write_run_curves(root, runs) if runs else []
  print(f"TensorBoard: rewrote the curves of {len(written)} student run(s) under {root}"
        + (f"; {gone} run(s) whose cache entry is gone were left as they were" if gone else "")
        + ". Weak and ceiling curves are kept as the run wrote them (results.json does not name their entries).")
  return 0


@_command("bench", "the benchmarks (python -m w2sg_jax.bench): JAX against PyTorch, engines, memory")
def _bench(argv: list[str]) -> int:
  from w2sg_jax.bench import __main__ as bench_main

  try:
    return int(bench_main.main(argv) or 0)
  except SystemExit as e:
    return _status(e.code)


@_command("describe", "every config key with its type, default and meaning (one experiment's values if named)")
def _describe(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog=_prog("describe"), description="The config schema reference (markdown): every key, its type, default "
      "and meaning; with an experiment, its values beside the defaults.")
  parser.add_argument("experiment", nargs="?", metavar="NAME_OR_PATH[:variant]", help="an experiment (w2sg list)")
  args = parser.parse_args(argv)
  from w2sg_jax import config as schema

  if not args.experiment:
    return schema.main(["--describe"])
  try:
    _, path, variant = resolve(args.experiment)
  except UnknownExperiment as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return schema.main(["--describe", path + (f":{variant}" if variant else "")])


# ------------------------------------------------------------------ entry point


def _usage() -> str:
  width = max(len(n) for n in _COMMANDS)
  lines = [f"usage: {_prog()} COMMAND [ARGS ...]", "", (__doc__ or "").split("\n\n")[0].split(": ", 1)[1], "",
           "commands:"]
  lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in _COMMANDS.items()]
  lines += ["", f"{_prog()} COMMAND --help shows a command's arguments. Quick start: {_prog('run')} synthetic:smoke"]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """The ``w2sg`` console script; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage(), file=sys.stdout if argv else sys.stderr)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command not in _COMMANDS:
    hint = ""
    if command in all_names() or ":" in command or command.endswith(".py"):
      hint = f" To run an experiment: {_prog('run')} {command}."
    print(f"error: unknown command {command!r}.{hint}\n\n{_usage()}", file=sys.stderr)
    return 2
  try:
    return _COMMANDS[command][0](rest)
  except SystemExit as e:  # argparse: --help exits 0, a usage error 2.
    return _status(e.code)


if __name__ == "__main__":
  sys.exit(main())
