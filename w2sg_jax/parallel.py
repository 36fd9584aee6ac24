"""Device mesh, shardings, and host-local batches turned into global arrays.

Training is data-parallel over a one-dimensional mesh whose single axis is
called ``data``; every batch is split along its leading axis. The training
state (parameters, optimizer state) is placed in one of two ways
(``train.sharding`` in a config):

* ``"replicated"``: a full copy on every device; XLA inserts the gradient
  all-reduce (the mean over devices).
* ``"fsdp"``: every array is split over ``data`` along its largest dimension
  that the device count divides (replicated where none does, and for
  scalars), so each device holds 1/N of the parameters, gradients and Adam
  moments. XLA inserts the all-gathers of the weights before they are used
  and reduce-scatters the gradients. The arithmetic is the same; only the
  order of floating-point sums may differ.
* ``"auto"``: ``fsdp`` when the replicated state would not fit the device
  memory (:func:`resolve_sharding`), else ``replicated``.

The update step is a plain ``jax.jit`` with these ``NamedSharding``s, traced
under the mesh (:class:`MeshJit`) so that the models' :func:`constrain_batch`
keeps activations split by example; the same code runs on 1 CPU, 8 simulated
CPUs, a GPU host, a TPU pod slice, or several processes joined by
``jax.distributed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from w2sg_jax import config as schema

DATA_AXIS = "data"
SHARDING_MODES = ("auto", "replicated", "fsdp")
# Share of a device's memory that the replicated state and its gradients may
# take before "auto" shards them: the rest is left for activations.
AUTO_STATE_FRACTION = 0.6


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
  """Returns the per-process batch size; raises if the batch cannot be split evenly.

  The rule and its advice are `config.batch_divides_problem`'s, the one home
  that `validate` and `plan` also call, so the three say the same thing.
  """
  num_devices = mesh.devices.size
  why = schema.batch_divides_problem(global_batch_size, num_devices)
  if why is not None:
    raise ValueError(f"global batch size {global_batch_size} does not divide evenly over {num_devices} devices; "
                     f"{why}.")
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


def constrain_batch(x: jax.Array) -> jax.Array:
  """Pins an activation's leading (example) axis to ``data``; a no-op outside a mesh.

  Models call it on the activations between their blocks. Under
  ``jax.set_mesh(mesh)`` (the trainer traces its step there) it tells XLA's
  partitioner that activations stay split by example, so with ``fsdp``
  weights it all-gathers each weight where it is used instead of splitting
  the activations along a weight's dimension (which costs an all-reduce of
  activations per matmul). Outside a mesh, or when the batch does not divide
  over the devices, it returns ``x`` unchanged.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names or x.ndim == 0:
    return x
  if x.shape[0] % mesh.shape[DATA_AXIS]:
    return x
  return jax.lax.with_sharding_constraint(x, P(DATA_AXIS))


class MeshJit:
  """A ``jax.jit`` function that is traced under ``jax.set_mesh(mesh)``, whether it is called or lowered.

  ``jax.set_mesh`` cannot be entered inside a traced function, so the mesh
  is set around every call and ``lower``; tracing then sees it, and
  :func:`constrain_batch` in the model pins activations to ``data``. The
  mesh is part of jit's cache key, so repeated calls reuse one compilation.
  """

  def __init__(self, fun: Any, mesh: Mesh, **jit_kwargs: Any):
    self.mesh = mesh
    self.jitted = jax.jit(fun, **jit_kwargs)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    with jax.set_mesh(self.mesh):
      return self.jitted(*args, **kwargs)

  def lower(self, *args: Any, **kwargs: Any) -> jax.stages.Lowered:
    with jax.set_mesh(self.mesh):
      return self.jitted.lower(*args, **kwargs)


# ------------------------------------------------------------ state shardings


def check_sharding_mode(mode: str, *, allow_auto: bool = True) -> str:
  """Returns ``mode`` if it names a sharding mode; raises a ValueError that lists them."""
  known = SHARDING_MODES if allow_auto else SHARDING_MODES[1:]
  if mode not in known:
    raise ValueError(
        f"train.sharding={mode!r} is not a sharding mode; use one of {', '.join(map(repr, known))}"
        " ('replicated': a full copy of the state on every device; 'fsdp': state split over"
        " the devices; 'auto': fsdp only when the replicated state would not fit)."
    )
  return mode


def fsdp_spec(shape: Sequence[int], num_devices: int) -> P:
  """``P`` splitting the largest dimension that ``num_devices`` divides over ``data``.

  Ties go to the earlier dimension. Scalars, and arrays with no such
  dimension (or a single device), are replicated: ``P()``.
  """
  if num_devices <= 1:
    return P()
  best = None
  for axis, size in enumerate(shape):
    if size % num_devices == 0 and size >= num_devices and (best is None or size > shape[best]):
      best = axis
  if best is None:
    return P()
  return P(*([None] * best + [DATA_AXIS]))


def state_shardings(abstract_tree: Any, mesh: Mesh, mode: str) -> Any:
  """A pytree of ``NamedSharding`` matching ``abstract_tree`` for ``mode``.

  Args:
    abstract_tree: arrays or ``jax.ShapeDtypeStruct`` leaves (e.g. from
      ``jax.eval_shape``); only their shapes are read.
    mesh: the ``data`` mesh.
    mode: ``"replicated"`` (``P()`` everywhere) or ``"fsdp"`` (see
      :func:`fsdp_spec`; leaves that are not floating point, such as the step
      counter and the RNG key, stay replicated). Resolve ``"auto"`` first
      with :func:`resolve_sharding`.
  """
  check_sharding_mode(mode, allow_auto=False)
  n = mesh.shape[DATA_AXIS]

  def one(leaf):
    dtype = getattr(leaf, "dtype", None)
    if mode == "replicated" or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(np.shape(leaf), n))

  return jax.tree.map(one, abstract_tree)


def tree_bytes(tree: Any) -> int:
  """Bytes of every array leaf of ``tree`` (arrays or ``ShapeDtypeStruct``)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      total += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def device_memory_limit(mesh: Mesh) -> int | None:
  """The smallest ``bytes_limit`` of the mesh's devices, or None where unknown (CPU)."""
  limits = []
  for device in mesh.devices.flat:
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except  # Not implemented on every backend.
      stats = None
    if not stats or "bytes_limit" not in stats:
      return None
    limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def resolve_sharding(
    mode: str,
    abstract_state: Any,
    mesh: Mesh,
    device_memory_bytes: int | None = None,
    *,
    grad_bytes: int | None = None,
) -> str:
  """``"replicated"`` or ``"fsdp"`` for a configured ``mode``.

  ``"auto"`` becomes ``"fsdp"`` when the replicated state plus one copy of
  its gradients would take more than :data:`AUTO_STATE_FRACTION` of a
  device's memory (the rest is kept for activations), else ``"replicated"``.
  A single device is always ``"replicated"``.

  Args:
    mode: ``"auto"``, ``"replicated"`` or ``"fsdp"``.
    abstract_state: the train state (arrays or ``ShapeDtypeStruct``s).
    mesh: the ``data`` mesh.
    device_memory_bytes: memory per device; ``None`` reads
      ``device.memory_stats()["bytes_limit"]``, and where that is unavailable
      (CPU) the state is taken to fit.
    grad_bytes: bytes of the gradients; ``None`` takes the ``params`` field
      of ``abstract_state`` when it has one (a ``TrainState``), else 0.
  """
  check_sharding_mode(mode)
  if mode != "auto":
    return mode
  if mesh.devices.size <= 1:
    return "replicated"
  limit = device_memory_bytes if device_memory_bytes is not None else device_memory_limit(mesh)
  if limit is None:
    return "replicated"
  if grad_bytes is None:
    grad_bytes = tree_bytes(getattr(abstract_state, "params", None))
  needed = tree_bytes(abstract_state) + grad_bytes
  return "fsdp" if needed > AUTO_STATE_FRACTION * limit else "replicated"
