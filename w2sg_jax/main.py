"""Command line: run one experiment config into a workdir.

  python -m w2sg_jax.main --config=experiments/NAME.py[:VARIANT] --workdir=runs/NAME [--config.KEY=VALUE ...]

Rerunning the same command resumes: finished stages and runs are skipped and
an interrupted training run continues from its last checkpoint.
"""

from __future__ import annotations

import os
import sys

import jax

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/NAME.py[:variant]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results.json and the report.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks for configuration and data errors.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
  from w2sg_jax import distributed, tasks
  from w2sg_jax.pipeline import Pipeline

  distributed.maybe_initialize()
  # A sweep compiles one step per run; the persistent cache makes every
  # compilation after the first (and every rerun) a disk read.
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(config.cache_dir), "xla"))
  return Pipeline(config, workdir, tasks.get(config.task)).run()


def main(argv):
  # Orbax and TFDS log every checkpoint step at INFO; progress bars say enough.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, KeyError) as e:
    if _DEBUG.value:
      raise
    print(f"error: {e}\n(rerun with --debug for the traceback)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
