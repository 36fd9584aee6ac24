"""``python -m w2sg_jax.bench --outdir=runs/bench [--quick] [--only=a,c] [--no-torch-compile]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m w2sg_jax.bench", description=__doc__)
  parser.add_argument("--outdir", default="runs/bench", help="where report.md and bench.json go")
  parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks the harness, not speed")
  parser.add_argument("--only", default=None, help="comma-separated sections, e.g. a,c (default: all of a-g)")
  parser.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile (it compiles for minutes)")
  args = parser.parse_args(argv)
  from w2sg_jax import bench

  try:
    only = bench.parse_only(args.only)
  except ValueError as e:
    parser.error(str(e))
  bench.run(args.outdir, quick=args.quick, only=only, torch_compile=not args.no_torch_compile)
  return 0


if __name__ == "__main__":
  sys.exit(main())
