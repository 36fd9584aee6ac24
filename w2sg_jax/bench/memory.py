"""Section g: peak host memory and cold wall time of a real experiment, and state sizes of the models.

The experiment runs as a child process (``python -m w2sg_jax.main``) in a
fresh temporary workdir and cache, so it is a cold run (what
``make experiment`` costs right after set-up): a full run of
``tweets_minilm``, the offline default, or in ``--quick`` the smoke run of
``synthetic``. Its wall time is reported with its peak resident set
size is the ``ru_maxrss`` of that one process tree, taken by a small wrapper
process (see ``_WRAPPER``), so neither the benchmark's own memory nor its other
subprocesses are mixed in. A child that only
imports JAX and runs one op gives the floor every JAX process pays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Runs the command as ITS child and reports RUSAGE_CHILDREN. Measuring a direct
# child of the benchmark would be wrong: Linux carries the parent's peak RSS at
# fork into the child's ru_maxrss, and this small wrapper is what is forked.
_WRAPPER = """
import json, resource, subprocess, sys, time
cmd, timeout, cwd, err_path = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3] or None, sys.argv[4]
t0 = time.perf_counter()
error = None
with open(err_path, "w") as err:
    try:
        code = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        code, error = -9, "stopped after %.0f s" % timeout
print(json.dumps({"returncode": code, "wall_s": time.perf_counter() - t0, "error": error,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def peak_rss_of(cmd: Sequence[str], *, timeout_s: float, cwd: str | None = None) -> dict[str, Any]:
  """Runs ``cmd``; returns its exit code, wall seconds and peak RSS in MiB (``ru_maxrss``)."""
  with tempfile.NamedTemporaryFile(suffix=".stderr") as err:
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps(list(cmd)), str(timeout_s), cwd or "", err.name],
        capture_output=True, text=True, timeout=timeout_s + 60)
    tail = open(err.name, errors="replace").read().strip()[-400:]
  if proc.returncode != 0:
    return {"returncode": proc.returncode, "error": f"the measuring wrapper failed: {proc.stderr[-400:]}"}
  m = json.loads(proc.stdout.strip().splitlines()[-1])
  out = {"returncode": m["returncode"], "wall_s": m["wall_s"], "peak_rss_mib": m["peak_rss_kib"] / 1024}
  if m["error"] or m["returncode"] != 0:
    out["error"] = m["error"] or tail
  return out


def experiment_names(quick: bool) -> list[str]:
  """Experiments to try in order, as ``name`` or ``name:variant``: the offline default in full first."""
  names = ["synthetic:smoke"] if quick else ["tweets_minilm", "tweets_minilm:smoke", "synthetic:smoke"]
  return [n for n in names if os.path.exists(os.path.join(REPO_ROOT, "experiments", f"{n.split(':')[0]}.py"))]


def experiment_command(name: str, workdir: str, cache_dir: str) -> list[str]:
  """``python -m w2sg_jax.main`` for ``name`` (``experiment[:variant]``) in a fresh workdir and cache."""
  return [sys.executable, "-m", "w2sg_jax.main", f"--config=experiments/{name.split(':')[0]}.py"
          + (f":{name.split(':', 1)[1]}" if ":" in name else ""),
          f"--workdir={workdir}", f"--config.cache_dir={cache_dir}"]


def bench_memory(*, quick: bool, timeout_s: float, state_sizes: dict[str, dict[str, int]],
                 names: Sequence[str] | None = None,
                 runner: Callable[..., dict[str, Any]] = peak_rss_of,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """``state_sizes``: model label -> {"jax_params", "jax_opt_state", "torch_params", ...} bytes.

  The first experiment of ``names`` (default :func:`experiment_names`) that
  succeeds is reported; failed attempts (e.g. a data package that is not
  installed) are listed under ``attempts``. ``runner`` measures a command
  (:func:`peak_rss_of`; tests pass a fake one).
  """
  floor = runner([sys.executable, "-c", "import jax.numpy as jnp; jnp.ones(8).sum().block_until_ready()"],
                 timeout_s=120)
  log(f"  JAX process floor: {floor['peak_rss_mib']:.0f} MiB")
  result: dict[str, Any] = {"jax_floor": floor, "state_sizes": state_sizes, "attempts": []}
  names = experiment_names(quick) if names is None else list(names)
  if not names:
    result["experiment"] = {"skipped": "no experiments/*.py found"}
    return result
  for name in names:
    with tempfile.TemporaryDirectory(prefix="w2sg-bench-mem-") as tmp:
      run = runner(experiment_command(name, f"{tmp}/run", f"{tmp}/cache"), timeout_s=timeout_s, cwd=REPO_ROOT)
    run["experiment"] = name
    run["cold"] = True  # A fresh workdir and cache: data, features, weak model, labels, students, report.
    log(f"  {name} (cold): peak RSS {run.get('peak_rss_mib', 0):.0f} MiB in {run.get('wall_s', 0):.0f} s"
        + (f" (failed: {run['error'][:200]})" if run.get("error") else ""))
    if not run.get("error"):
      result["experiment"] = run
      return result
    result["attempts"].append(run)
  result["experiment"] = result["attempts"][-1]
  return result
