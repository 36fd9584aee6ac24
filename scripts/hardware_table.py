"""Regenerates the README's hardware table from the memory plan (``python -m w2sg_jax.plan``).

  python scripts/hardware_table.py                  # every paper variant, prints the markdown table
  python scripts/hardware_table.py --out=runs/plan  # also keeps each plan's JSON and text there

Each (variant, machine) pair runs the plan in its own process (the simulated
device count is fixed when JAX starts); compiling GPT-2 XL for 8 simulated
devices takes several minutes on a 2-core CPU, the whole table about an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (row, config, overrides, machines): every paper variant as configured, then the remat that makes
# the default and :large fit a v5e-8 (on the v5e-8 only).
VARIANTS = (
    ("`default`", "experiments/paper_hh.py", (), ("v5e-8", "1 GPU, 80 GB")),
    ("`tpu_small`", "experiments/paper_hh.py:tpu_small", (), ("v5e-8", "1 GPU, 80 GB")),
    ("`large`", "experiments/paper_hh.py:large", (), ("v5e-8", "1 GPU, 80 GB")),
    ("`xl`", "experiments/paper_hh.py:xl", (), ("v5e-8", "1 GPU, 80 GB")),
    ("`default`, remat=full", "experiments/paper_hh.py", ("strong.remat=full",), ("v5e-8",)),
    ("`large`, remat=full", "experiments/paper_hh.py:large", ("strong.remat=full",), ("v5e-8",)),
)
# label -> (devices, GiB per device): a TPU v5e-8 host, and one 80 GB GPU.
MACHINES = {"v5e-8": (8, 16), "1 GPU, 80 GB": (1, 80)}
GIB = 2**30


def run_plan(spec: str, overrides: tuple[str, ...], devices: int, memory: float, out: Path) -> dict:
  name = f"{spec.split('/')[-1].replace(':', '_').replace('.py', '')}_{devices}x{memory:g}"
  name += "".join("_" + o.replace("=", "-") for o in overrides)
  json_path = out / f"{name}.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "-m", "w2sg_jax.plan", f"--config={spec}", f"--devices={devices}",
       f"--device-memory={memory:g}", f"--json={json_path}", *(f"--config.{o}" for o in overrides)],
      cwd=REPO, env=env, capture_output=True, text=True, check=False,
  )
  (out / f"{name}.txt").write_text(proc.stdout + proc.stderr)
  if proc.returncode not in (0, 1) or not json_path.exists():
    raise RuntimeError(f"plan of {spec} on {devices} x {memory:g} GiB failed:\n{proc.stderr}")
  print(f"  {spec} on {devices} x {memory:g} GiB: exit {proc.returncode}", file=sys.stderr, flush=True)
  return json.loads(json_path.read_text())


def hours(seconds: float) -> str:
  return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def table(plans: dict[tuple[str, str], dict]) -> str:
  lines = [
      "| variant | strong model | v5e-8 (8 × 16 GiB): state, remat | peak per chip | 1 GPU (80 GB): peak |"
      " FLOPs, whole config | H100 | A100 80GB | TPU v4-8 (4 chips) | TPU v5e-8 |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for variant, *_ in VARIANTS:
    tpu, gpu = plans[(variant, "v5e-8")], plans.get((variant, "1 GPU, 80 GB"))
    s = tpu["roles"]["strong"]
    model = s["model"].split(" reward model")[0]
    params = s["trained_parameters"] / 1e6
    fit = lambda p: "not planned" if p is None else (
        f"{p['peak_bytes'] / GIB:.1f} GiB" + ("" if p["fits"] else " (does not fit)"))
    flops = tpu["whole_config_flops"]
    mfu = tpu["mfu"]
    t = lambda chip, n: hours(flops / n / (tpu["chips"][chip]["peak_flops"] * mfu))
    lines.append(
        f"| {variant} | {model} ({params:.0f} M) | {s['sharding_resolved']}, {s['remat']} | {fit(tpu)} | {fit(gpu)} |"
        f" {flops:.2g} | {t('h100', 1)} | {t('a100-80gb', 1)} | {t('v4', 4)} | {t('v5e', 8)} |"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/plan", help="folder for each plan's JSON and text")
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  plans = {}
  for variant, spec, overrides, machines in VARIANTS:
    for label in machines:
      devices, memory = MACHINES[label]
      plans[(variant, label)] = run_plan(spec, overrides, devices, memory, out)
  text = table(plans)
  (out / "table.md").write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
