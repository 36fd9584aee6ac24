"""Section g: peak host memory, cold and warm wall time of a real experiment against its FLOP floor, state sizes.

The experiment runs as a child process (``python -m w2sg_jax.main``) in a
fresh temporary workdir and cache, so its first run is a cold run (what
``make experiment`` costs right after set-up): a full run of
``tweets_minilm``, the offline default, or in ``--quick`` the smoke run of
``synthetic``. Its wall time is reported with its peak resident set size:
the ``ru_maxrss`` of that one process tree, taken by a small wrapper process
(see ``_WRAPPER``), so neither the benchmark's own memory nor its other
subprocesses are mixed in. A child that only imports JAX and runs one op
gives the floor every JAX process pays.

The same command then runs again in the same workdir on the same cache: the
*warm* rerun, what a second ``make experiment`` costs. Both runs write
``results.json``, whose ``profile`` (``stages.Profile``) gives each stage's
wall time, the programs XLA compiled and the seconds compiling; section g
keeps the cold run's (``cold.profile``) to account for its seconds, and the
warm run's compilations summed over stages (``warm.compilations``; 0 when
every program came from the cache).

The cold run's *FLOP floor* is its MiniLM feature pass at the machine's
measured float32 matmul peak: ``floor_s = feature_flops / peak_flops``, with
``feature_flops`` the real tokens the pass embedded (the data stage's
``feature_real_tokens`` counter) times the analytic FLOPs of a token through
MiniLM-L6's products (:func:`feature_flops_per_token`), and ``floor_ratio =
cold wall_s / floor_s``. The peak is section b's (or h's) when that ran,
else measured here (``timing.peak_matmul``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOOR_METHOD = ("analytic: real tokens x 2 x layers x (4 D^2 + 2 D F) FLOPs, MiniLM-L6's products (D 384, F 1536); "
                "attention scores (4 layers x n x D a token for a text of n tokens, ~1.4% at the tweets' mean of 33) "
                "left out, so the floor is a lower bound")


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


def feature_flops_per_token(config: Any = None) -> float:
  """FLOPs of one real token through the products of a BERT encoder: ``2 L (4 D^2 + 2 D F)``.

  ``config`` (a ``BertConfig``; default MiniLM-L6, ``step.MINILM_CONFIG``):
  the Q, K, V and output projections (4 D^2) and the two feed-forward
  products (2 D F) of each of the L layers, a multiply and an add per weight.
  21.2 MFLOP for MiniLM-L6. Attention is left out (see ``FLOOR_METHOD``).
  """
  if config is None:
    from w2sg_jax.bench.step import MINILM_CONFIG as config  # Imported here: it loads the model code.
  d, f = config.hidden_size, config.intermediate_size
  return 2.0 * config.num_hidden_layers * (4 * d * d + 2 * d * f)


def measure_peak(quick: bool) -> dict[str, Any]:
  """``{"flops", "source"}``: the best float32 matmul FLOP/s of XLA and (when installed) PyTorch."""
  from w2sg_jax.bench import timing

  torch, _ = timing.torch_status()
  n = 512 if quick else 2048
  peak = timing.peak_matmul(n, reps=3 if quick else 10, torch=torch)
  best = max(peak, key=lambda k: peak[k]["gflops"])
  return {"flops": peak[best]["gflops"] * 1e9,
          "source": f"best {n}^3 float32 product ({'XLA' if best == 'jax' else 'PyTorch'}), measured in section g"}


def read_profile(workdir: str) -> dict[str, Any] | None:
  """The run's ``results.json`` ``profile`` (stage -> parts) and ``timings_s``, or None without one."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(results.get("profile"), dict):
    return None
  return {"profile": results["profile"], "timings_s": results.get("timings_s") or {}}


def profile_fields(read: Mapping[str, Any] | None) -> dict[str, Any]:
  """A run's profile and its sums: ``compilations`` (programs compiled, every stage), ``compile_s``, ``stages_s``.

  Without a profile (no ``results.json``) the sums are None: a missing count
  must not read as "compiled nothing".
  """
  if read is None:
    return {"profile": None, "compilations": None, "compile_s": None, "stages_s": None,
            "profile_note": "no results.json with a profile in the workdir"}
  stages = read["profile"].values()
  return {"profile": read["profile"],
          "compilations": int(sum(p.get("programs_compiled", 0) for p in stages)),
          "compile_s": float(sum(p.get("compile_s", 0.0) for p in stages)),
          # Stages run one after another, so their totals add up; the rest of wall_s is outside them.
          "stages_s": float(sum(p.get("total_s", 0.0) for p in stages)),
          "pipeline_s": read["timings_s"].get("total")}


def floor_fields(wall_s: float, profile: Mapping[str, Any] | None,
                 peak: Mapping[str, Any] | Callable[[], Mapping[str, Any]], flops_per_token: float) -> dict[str, Any]:
  """``floor_s = feature_flops / peak_flops`` and ``floor_ratio = wall_s / floor_s`` (module docstring).

  ``peak``: ``{"flops", "source"}``, or a callable giving it, called only
  when the run has a feature pass (measuring a peak takes seconds).
  """
  data = (profile or {}).get("data") or {}
  tokens = data.get("feature_real_tokens")
  if not tokens:
    # Features read from the cache, or a task without them (synthetic): nothing sets a floor.
    return {"floor_note": "the run computed no feature pass: no feature_real_tokens in its profile"}
  peak = peak() if callable(peak) else peak
  flops = tokens * flops_per_token
  floor_s = flops / peak["flops"]
  out = {"feature_real_tokens": int(tokens), "flops_per_token": flops_per_token, "feature_flops": flops,
         "floor_method": FLOOR_METHOD, "peak_flops": peak["flops"], "peak_source": peak["source"],
         "floor_s": floor_s, "floor_ratio": wall_s / floor_s}
  if data.get("feature_pass_s"):
    out["feature_pass_s"] = data["feature_pass_s"]
    out["feature_pass_share_of_peak"] = flops / data["feature_pass_s"] / peak["flops"]
  return out


def bench_memory(*, quick: bool, timeout_s: float, state_sizes: dict[str, dict[str, int]],
                 names: Sequence[str] | None = None,
                 runner: Callable[..., dict[str, Any]] = peak_rss_of,
                 peak: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """``state_sizes``: model label -> {"jax_params", "jax_opt_state", "torch_params", ...} bytes.

  The first experiment of ``names`` (default :func:`experiment_names`) that
  succeeds cold is reported (``cold``, also under its old name
  ``experiment``) and then rerun warm (``warm``); failed attempts (e.g. a data
  package that is not installed) are listed under ``attempts``. ``runner``
  measures a command (:func:`peak_rss_of`; tests pass a fake one). ``peak``:
  the matmul peak as ``{"flops", "source"}``, or a callable giving it, asked
  only when the cold run has a feature pass; None measures it
  (:func:`measure_peak`).
  """
  floor = runner([sys.executable, "-c", "import jax.numpy as jnp; jnp.ones(8).sum().block_until_ready()"],
                 timeout_s=120)
  log(f"  JAX process floor: {floor['peak_rss_mib']:.0f} MiB")
  result: dict[str, Any] = {"jax_floor": floor, "state_sizes": state_sizes, "attempts": []}
  names = experiment_names(quick) if names is None else list(names)
  if not names:
    result["experiment"] = result["cold"] = {"skipped": "no experiments/*.py found"}
    return result
  for name in names:
    with tempfile.TemporaryDirectory(prefix="w2sg-bench-mem-") as tmp:
      cmd = experiment_command(name, f"{tmp}/run", f"{tmp}/cache")
      run = runner(cmd, timeout_s=timeout_s, cwd=REPO_ROOT)
      run["experiment"] = name
      run["cold"] = True  # A fresh workdir and cache: data, features, weak model, labels, students, report.
      log(f"  {name} (cold): peak RSS {run.get('peak_rss_mib', 0):.0f} MiB in {run.get('wall_s', 0):.0f} s"
          + (f" (failed: {run['error'][:200]})" if run.get("error") else ""))
      if run.get("error"):
        result["attempts"].append(run)
        continue
      cold_read = read_profile(f"{tmp}/run")
      run.update(profile_fields(cold_read))
      # The same command again, as a second `make experiment`: same workdir, same cache.
      warm = runner(cmd, timeout_s=timeout_s, cwd=REPO_ROOT)
      warm_read = None if warm.get("error") else read_profile(f"{tmp}/run")
      if warm_read == cold_read:  # The cold run's file, left in place: its counts are not the rerun's.
        warm_read = None
      warm.update(experiment=name, cold=False, **profile_fields(warm_read))
    if run["profile"] is not None:
      run.update(floor_fields(run["wall_s"], run["profile"], peak or (lambda: measure_peak(quick)),
                              feature_flops_per_token()))
    if "floor_ratio" in run:
      log(f"  {name} (cold): {run['feature_flops'] / 1e12:.2f} TFLOP of feature pass at "
          f"{run['peak_flops'] / 1e9:.0f} GFLOP/s = floor {run['floor_s']:.1f} s; cold / floor "
          f"{run['floor_ratio']:.2f}x")
    log(f"  {name} (warm): {warm.get('wall_s', 0):.1f} s, {warm['compilations']} programs compiled"
        + (f" (failed: {warm['error'][:200]})" if warm.get("error") else ""))
    result["experiment"] = result["cold"] = run  # One dict: `experiment` for readers of the earlier layout.
    result["warm"] = warm
    return result
  result["experiment"] = result["cold"] = result["attempts"][-1]
  return result
