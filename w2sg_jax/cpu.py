"""Multi-core CPU parallelism for the training step and the encoder pass.

XLA:CPU runs one operation at a time per program unless the operations are
independent: a matrix product uses every core inside its library call, but
the long chain of LayerNorm, GELU, softmax and optimizer fusions between the
products leaves cores idle (the profile in ``make bench``, section b). Cutting
the batch into ``k`` interleaved *chains* that run through the model as
independent subgraphs gives XLA's executor ``k`` operations it may run side by
side, so the cores stay busy between the products. The model computes the
same function of every row; only the order of float additions in the
parameter gradient changes (each chain's contribution is summed), so a
chained step equals the plain one to float rounding.

On GPU and TPU a kernel already fills the chip, and a split would only shrink
the matrix products: :func:`default_num_chains` returns 1 there. On CPU it
returns :data:`CPU_CHAINS` when each chain keeps enough work to pay for its
extra operations (:data:`MIN_CHAIN_FLOPS`), and 1 for small models such as
heads on cached features, whose steps take microseconds.

The figures behind these defaults are in ``make bench`` (sections a and h)
and in ``docs/bench.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CPU_CHAINS", "MIN_CHAIN_FLOPS", "chained", "default_num_chains", "estimate_forward_flops",
           "resolve_num_chains"]

# Chains on a CPU. Measured on 2 cores (docs/bench.md): 4 chains beat 2 for the
# MiniLM and GPT-2 steps and for the MiniLM encoder pass; 8 gave no more.
CPU_CHAINS = 4
# Forward FLOPs a chain needs before a split pays for its extra operations (~5 ms
# of work on a 2-core machine): below this, per-operation overhead dominates.
MIN_CHAIN_FLOPS = 1e9


def _platform(platform: str | None) -> str:
  return platform or jax.default_backend()


def default_num_chains(rows: int, *, forward_flops: float | None = None, platform: str | None = None,
                       num_devices: int = 1, max_chains: int = CPU_CHAINS) -> int:
  """How many interleaved chains to cut a batch of ``rows`` into.

  Args:
    rows: global batch rows.
    forward_flops: estimated FLOPs of the model's forward on the whole batch
      (see :func:`estimate_forward_flops`); ``None`` counts as large enough.
    platform: ``"cpu"``, ``"gpu"``, ``"tpu"``; default: JAX's default backend.
    num_devices: devices the batch is split over; a chain keeps an equal
      share of every device's rows, so ``rows`` must divide by ``chains * num_devices``.
    max_chains: the most chains to use.

  Returns:
    1 on GPU/TPU, for small work or for a batch that does not split evenly;
    otherwise the largest ``k <= max_chains`` (a power of two) that splits it.
  """
  if _platform(platform) != "cpu" or rows < 2:
    return 1
  k = 1
  while k * 2 <= max_chains:
    k *= 2
  per_device = rows // max(num_devices, 1) if rows % max(num_devices, 1) == 0 else 0
  while k > 1:
    enough = forward_flops is None or forward_flops / k >= MIN_CHAIN_FLOPS
    if enough and per_device and per_device % k == 0:
      return k
    k //= 2
  return 1


def estimate_forward_flops(params: Any, inputs: Mapping[str, Any], rows: int) -> float:
  """``2 x parameters x positions``: a forward's FLOPs to within a small factor.

  Positions per row are the largest per-row size of an integer input (token
  ids: the sequence length), or 1 for float inputs (cached features, where
  every parameter acts once per row). Only shapes are read, so this works on
  tracers inside ``jit``.
  """
  num_params = sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params))
  positions = 1
  for x in jax.tree.leaves(inputs):
    shape = np.shape(x)
    if len(shape) >= 2 and jnp.issubdtype(getattr(x, "dtype", np.float32), jnp.integer):
      positions = max(positions, math.prod(shape[1:]))
  return 2.0 * num_params * positions * rows


def resolve_num_chains(num_chains: int | None, rows: int, params: Any, inputs: Mapping[str, Any]) -> int:
  """``num_chains`` when given (checked), else :func:`default_num_chains` for this batch and model."""
  if num_chains is None:
    return default_num_chains(rows, forward_flops=estimate_forward_flops(params, inputs, rows),
                              num_devices=jax.device_count() if _platform(None) == "cpu" else 1)
  num_chains = int(num_chains)
  if num_chains < 1:
    raise ValueError(f"num_chains={num_chains}; use 1 (no split) or more.")
  if rows % num_chains:
    raise ValueError(f"a batch of {rows} rows does not split into {num_chains} chains; "
                     "use a batch size divisible by the number of chains (or num_chains=None to choose).")
  return num_chains


def chained(fn: Callable[..., Any], num_chains: int, *, argnums: tuple[int, ...]) -> Callable[..., Any]:
  """``fn`` run on ``num_chains`` interleaved slices of its batch arguments, outputs reassembled.

  The arguments at ``argnums`` are pytrees whose leaves share the leading
  (row) dimension B. Chain i takes rows ``i, i + k, i + 2k, ...`` (a reshape
  ``[B, ...] -> [B / k, k, ...]`` and a slice), so on a ``data`` mesh every
  chain keeps an equal share of every device's rows and no data moves between
  devices. ``fn`` must map rows to rows (no statistic across the batch); its
  outputs, pytrees of ``[B / k, ...]`` leaves, are restacked into the original
  row order, so the result is the same function of the batch. The other
  arguments (parameters, an RNG key) go to every chain unchanged.
  """
  if num_chains <= 1:
    return fn
  k = num_chains
  # Traced once and called k times: the chains share one lowered function
  # (XLA inlines the calls), so tracing costs one chain, not k.
  one = jax.jit(fn)

  def run(*args):
    rows = next(iter(jax.tree.leaves(args[argnums[0]]))).shape[0]
    if rows % k:
      raise ValueError(f"a batch of {rows} rows does not split into {k} chains; "
                       "use a batch size divisible by the number of chains.")
    split = {i: jax.tree.map(lambda x: x.reshape((rows // k, k) + x.shape[1:]), args[i]) for i in argnums}
    outs = []
    for c in range(k):
      call = list(args)
      for i in argnums:
        call[i] = jax.tree.map(lambda x, c=c: x[:, c], split[i])
      outs.append(one(*call))
    return jax.tree.map(lambda *ys: jnp.stack(ys, axis=1).reshape((rows,) + ys[0].shape[1:]), *outs)

  return run
