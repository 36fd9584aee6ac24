"""Several hosts: JAX's own distributed runtime, started from the environment.

On a TPU pod slice ``jax.distributed.initialize()`` needs no arguments. On GPU
clusters or plain CPU processes set ``W2SG_COORDINATOR`` (host:port),
``W2SG_NUM_PROCESSES`` and ``W2SG_PROCESS_ID`` for every process (or use
SLURM/Open MPI, which JAX detects itself) and run the same command everywhere.
Each process then feeds only its own rows of every global batch
(``parallel.to_global``) and the step sees global arrays.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def maybe_initialize() -> None:
  """Joins the distributed runtime when the environment asks for it; else a no-op."""
  global _initialized
  if _initialized:
    return
  coordinator = os.environ.get("W2SG_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["W2SG_NUM_PROCESSES"]),
        process_id=int(os.environ["W2SG_PROCESS_ID"]),
    )
    _initialized = True
  elif os.environ.get("W2SG_DISTRIBUTED") == "auto":
    jax.distributed.initialize()  # TPU pods, SLURM, Open MPI: JAX finds the peers.
    _initialized = True
