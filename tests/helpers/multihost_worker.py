"""One process of the two-process CPU training test (``tests/test_multihost.py``).

Run as ``python -m tests.helpers.multihost_worker OUT.npz NUM_STEPS BATCH`` with
``W2SG_COORDINATOR``, ``W2SG_NUM_PROCESSES`` and ``W2SG_PROCESS_ID`` set. The
process joins the runtime through ``w2sg_jax.distributed.maybe_initialize``,
trains the tiny model on a ``data`` mesh spanning every process's CPU devices,
feeding ONLY its own contiguous slice of each global batch (process p gets rows
``[p * B / P, (p + 1) * B / P)``), and writes the final parameters, gathered to
the host, to ``OUT.npz``.
"""

from __future__ import annotations

import os
import sys

# Two CPU devices per process, set before jax is imported.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from w2sg_jax import distributed  # noqa: E402


def main(out_path: str, num_steps: int, global_batch: int) -> None:
  distributed.maybe_initialize()
  from jax.experimental import multihost_utils

  from tests.helpers import tiny

  pid, nproc = jax.process_index(), jax.process_count()
  if global_batch % nproc:
    raise ValueError(f"global batch {global_batch} does not split over {nproc} processes.")
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(len(jax.devices()), num_steps=num_steps)
  it = tiny.batches(x, probs, global_batch)(0)
  rows = global_batch // nproc
  for _ in range(num_steps):
    full = next(it)
    mine = jax.tree.map(lambda a: a[pid * rows : (pid + 1) * rows], full)
    state, metrics = trainer.step(state, mine)
  # Replicated arrays span both processes; gather makes them host-readable here.
  params = multihost_utils.process_allgather(state.params, tiled=True)
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  flat["__loss__"] = np.asarray(multihost_utils.process_allgather(metrics["loss"], tiled=True))
  flat["__devices__"] = np.asarray([len(jax.devices()), len(jax.local_devices()), nproc])
  np.savez(out_path + f".{pid}.npz", **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
