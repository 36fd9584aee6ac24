"""Device mesh, shardings, and host-local batches turned into global arrays.

Training is data-parallel over a one-dimensional mesh whose single axis is
called ``data``. Parameters and optimizer state are replicated; every batch is
split along its leading axis. The update step is a plain ``jax.jit`` with these
``NamedSharding``s, so XLA inserts the gradient all-reduce (the mean over
devices) itself; the same code runs on 1 CPU, 8 simulated CPUs, a GPU host, a
TPU pod slice, or several processes joined by ``jax.distributed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D ``data`` mesh over ``num_devices`` devices (default: all of them).

  The axis is ``Auto`` so that ``jit`` propagates shardings itself; the
  ``Explicit`` default of ``jax.make_mesh`` would ask every op to be typed.
  """
  devices = list(devices if devices is not None else jax.devices())
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(
          f"num_devices={num_devices} but {len(devices)} devices are visible; "
          f"choose 1..{len(devices)} (or set XLA_FLAGS=--xla_force_host_platform_device_count=N on CPU)."
      )
    devices = devices[:num_devices]
  return jax.make_mesh(
      (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimizer state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: the leading (example) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-process batch size; raises if the batch cannot be split evenly."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    lower = global_batch_size - global_batch_size % num_devices
    raise ValueError(
        f"global batch size {global_batch_size} does not divide evenly over "
        f"{num_devices} devices; use a multiple of {num_devices} "
        f"(e.g. {lower or num_devices} or {lower + num_devices})."
    )
  return global_batch_size // jax.process_count()


def to_global(host_batch: Any, mesh: Mesh) -> Any:
  """Turns this process's slice of a batch into global, data-sharded arrays.

  Each process passes only its own rows (``global_batch / process_count``);
  ``make_array_from_process_local_data`` stitches them into one array whose
  leading axis spans every process. On a single host it is a sharded put.
  """
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(put, host_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree on every device of the mesh (parameters, optimizer state)."""
  return jax.device_put(tree, replicated(mesh))
