"""The training step of paper_hh's strong model measured on a GPU or TPU, next to the memory plan's prediction.

``run(quick)`` builds the strong model of ``experiments/paper_hh.py`` (GPT-2
Medium shapes from the shipped ``config.json``, random weights: nothing is
downloaded) with the config's batch, sequence length, loss, optimizer, dtype,
remat and sharding, born in its sharding over every local device, and times
its jitted training step (``plan.build_steps``: the same step the plan
compiles). It reports the device, compile time, the median step time, MFU
(XLA's FLOPs of the step / time / the device's peak dense bf16 FLOP/s), the
peak device memory (``memory_stats()["peak_bytes_in_use"]``) and XLA's own
memory analysis for this device, next to what ``python -m w2sg_jax.plan``
predicts for the same step on as many simulated devices of the same memory.

On a host without an accelerator it returns ``{"skipped": ...}`` at once.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

CONFIG = "experiments/paper_hh.py"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# device_kind substrings (lower case) -> (chip name, peak dense bf16 FLOP/s). The plan's CHIPS give
# v5e, v4, A100 and H100; the others are from the vendors' published specifications.
PEAKS = (
    ("v5 lite", ("TPU v5e", 197e12)),
    ("v5e", ("TPU v5e", 197e12)),
    ("v5p", ("TPU v5p", 459e12)),
    ("v6", ("TPU v6e", 918e12)),
    ("v4", ("TPU v4", 275e12)),
    ("a100", ("A100", 312e12)),
    ("h100", ("H100", 989e12)),
    ("h200", ("H200", 989e12)),
    ("gh200", ("GH200", 989e12)),
    ("l4", ("L4", 121e12)),
    ("a10g", ("A10G", 70e12)),
)


def peak_flops(device_kind: str) -> tuple[str, float | None]:
  """(chip name, peak dense bf16 FLOP/s) for a ``device.device_kind``; None when not in :data:`PEAKS`."""
  kind = device_kind.lower()
  for key, value in PEAKS:
    if key in kind:
      return value
  return device_kind, None


def _plan_prediction(devices: int, memory_gib: float, overrides: dict[str, str], timeout_s: float) -> dict[str, Any]:
  """``python -m w2sg_jax.plan`` for the strong step on ``devices`` simulated devices (its own process)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "plan.json")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    cmd = [sys.executable, "-m", "w2sg_jax.plan", f"--config={CONFIG}", f"--devices={devices}",
           f"--device-memory={memory_gib:g}", "--roles=strong", f"--json={out}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    try:
      proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
      return {"error": f"the plan did not finish in {timeout_s:.0f} s"}
    if proc.returncode not in (0, 1) or not os.path.exists(out):
      return {"error": (proc.stderr or proc.stdout)[-400:]}
    plan = json.load(open(out))
  strong = plan["roles"]["strong"]
  return {"peak_bytes": strong["per_device"]["train"]["peak"], "flops_per_step": strong["flops_per_step"],
          "sharding": strong["sharding_resolved"], "fits": plan["fits"]}


def run(quick: bool = False, *, force: bool = False, overrides: dict[str, str] | None = None,
        with_plan: bool = True) -> dict[str, Any]:
  """Measures the step; ``force`` runs on CPU too (for tests, with ``overrides`` shrinking the model).

  Returns a dict with ``device``, ``devices``, ``compile_s``, ``step_s``, ``flops_per_step`` (per device),
  ``mfu``, ``peak_memory_bytes``, ``xla_memory`` and ``plan`` (the prediction); or ``{"skipped": why}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from w2sg_jax import parallel, plan  # pylint: disable=g-import-not-at-top

  devices = jax.local_devices()
  platform = devices[0].platform
  if platform == "cpu" and not force:
    return {"skipped": "no accelerator: JAX sees only CPU devices (run make bench on a GPU or TPU host)",
            "platform": platform}
  overrides = dict(overrides or {})
  config = plan.load_config(os.path.join(REPO_ROOT, CONFIG), overrides)
  mesh = parallel.make_mesh(len(devices), devices)
  limit = parallel.device_memory_limit(mesh)
  steps = plan.build_steps(config, "strong", mesh, limit)

  t0 = time.perf_counter()
  compiled = steps.trainer.lower_step(steps.abstract_state, steps.train_batch).compile()  # Traced under the mesh.
  compile_s = time.perf_counter() - t0
  state = jax.jit(steps.init, out_shardings=steps.shardings)()  # Born in its sharding.

  rng = np.random.default_rng(0)

  def host_batch():
    def fill(x):
      if jnp.issubdtype(x.dtype, jnp.integer):
        return rng.integers(0, 1000, x.shape).astype(x.dtype)  # Token ids; masks become nonzero (all real).
      return rng.random(x.shape).astype(x.dtype)

    b = jax.tree.map(fill, steps.train_batch)
    b["targets"] = b["targets"] / b["targets"].sum(-1, keepdims=True)
    b["mask"] = np.ones_like(b["mask"])
    for k in b["inputs"]:
      if "mask" in k:
        b["inputs"][k] = np.ones_like(b["inputs"][k])
    return parallel.to_global(b, mesh)

  batch = host_batch()
  warmup, reps = (1, 3) if quick else (2, 10)
  times = []
  for i in range(warmup + reps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  flops = plan.flops_of(compiled)
  chip, peak = peak_flops(devices[0].device_kind)
  stats = {}
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # Not every backend reports memory.
    pass
  result = {
      "device": devices[0].device_kind,
      "chip": chip,
      "platform": platform,
      "devices": len(devices),
      "model": steps.spec.description,
      "batch_size": steps.batch_size,
      "sharding": steps.sharding_resolved,
      "compile_s": compile_s,
      "step_s": step_s,
      "step_times_s": times,
      "flops_per_step": flops,
      "peak_flops": peak,
      "mfu": flops / step_s / peak if peak and step_s > 0 else None,
      "peak_memory_bytes": stats.get("peak_bytes_in_use"),
      "memory_limit_bytes": stats.get("bytes_limit"),
      "xla_memory": plan.memory_of(compiled),
      "loss": float(metrics["loss"]),
  }
  if with_plan:
    memory_gib = (limit or 16 * plan.GIB) / plan.GIB
    pred = _plan_prediction(len(devices), memory_gib, overrides, timeout_s=300 if quick else 900)
    if peak and "flops_per_step" in pred:
      pred["step_s_at_plan_mfu"] = pred["flops_per_step"] / (peak * plan.DEFAULT_MFU)
    result["plan"] = pred
  return result


def _gib(n: float | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def report_lines(result: dict[str, Any]) -> list[str]:
  """Markdown lines for the bench report."""
  if "skipped" in result:
    return [f"Accelerator step: skipped ({result['skipped']})."]
  if "error" in result:
    return [f"Accelerator step: error ({result['error']})."]
  mfu = "n/a (unknown peak)" if result.get("mfu") is None else f"{result['mfu']:.1%}"
  peak = "n/a" if not result.get("peak_flops") else f"{result['peak_flops'] / 1e12:.0f} TFLOP/s"
  lines = [
      f"Accelerator step: {result['model']}, batch {result['batch_size']}, on {result['devices']} x"
      f" {result['device']} ({result['sharding']} state)",
      "",
      "| figure | measured | plan (compiled on simulated CPU devices) |",
      "|---|---|---|",
      f"| compile | {result['compile_s']:.1f} s | n/a |",
  ]
  p = result.get("plan", {})
  plan_step = f"{p['step_s_at_plan_mfu'] * 1e3:.0f} ms at 35% MFU" if p.get("step_s_at_plan_mfu") else "n/a"
  lines += [
      f"| step time (median) | {result['step_s'] * 1e3:.1f} ms | {plan_step} |",
      f"| FLOPs per step per device | {result['flops_per_step']:.3g} | "
      f"{p.get('flops_per_step', float('nan')):.3g} |",
      f"| MFU (peak {peak} dense bf16) | {mfu} | 35% assumed |",
      f"| peak device memory | {_gib(result.get('peak_memory_bytes'))} (XLA's analysis here:"
      f" {_gib(result['xla_memory']['peak'])}) | {_gib(p.get('peak_bytes'))} |",
  ]
  if "error" in p:
    lines.append(f"\nThe plan failed: {p['error']}")
  return lines
