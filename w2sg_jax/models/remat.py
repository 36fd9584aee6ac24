"""Rematerialisation of transformer blocks: activation memory for recomputation.

``remat`` (the ``strong.remat`` / ``weak.remat`` config key) picks what the
backward pass keeps from the forward pass of each transformer block. Every
block is wrapped in ``nnx.remat`` (``jax.checkpoint``) with a policy:

* ``"none"``: no rematerialisation; every intermediate of every block is kept
  (fastest, most memory).
* ``"block"``: each block keeps the outputs of its weight matmuls (the
  projections and the MLP, ``dots_with_no_batch_dims_saveable``) and
  recomputes the rest: attention scores and probabilities (``B*H*T*T``, the
  largest activations at long sequences), layer norms and activations. About
  one extra attention forward per block.
* ``"full"``: each block keeps only its input and recomputes everything
  inside it in the backward pass (``nothing_saveable``): the least memory,
  about one extra forward pass of the encoder (~33% more FLOPs per step).

Embeddings, the final layer norm and the heads are never rematerialised;
they are a small share of the activations. The values and gradients are those
of ``"none"`` (the same operations, run again), tested to 1e-5.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

REMAT_MODES = ("none", "block", "full")

_POLICIES: dict[str, Callable[..., bool]] = {
    "block": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def check_remat(mode: str) -> str:
  """Returns ``mode`` if it is a remat mode; raises a ValueError naming them otherwise."""
  if mode not in REMAT_MODES:
    raise ValueError(
        f"remat={mode!r} is not a rematerialisation mode; use one of"
        f" {', '.join(map(repr, REMAT_MODES))} ('none': keep every activation;"
        " 'block': recompute attention and elementwise ops per block; 'full':"
        " keep only each block's input)."
    )
  return mode


def _call(block: nnx.Module, *args: Any) -> Any:
  return block(*args)


def call_block(block: nnx.Module, mode: str, *args: Any) -> Any:
  """``block(*args)``, rematerialised in the backward pass according to ``mode``."""
  if mode == "none":
    return block(*args)
  return nnx.remat(_call, policy=_POLICIES[check_remat(mode)], prevent_cse=True)(block, *args)


def set_remat(module: nnx.Module, mode: str) -> int:
  """Sets ``remat = mode`` on every encoder in ``module`` that has the option.

  For models built by a loader that does not take ``remat`` (e.g.
  :func:`~w2sg_jax.models.load_pretrained`): call it before ``nnx.split``,
  whose graph definition records the setting.

  Returns:
    How many encoders were set (0 when none has the option).
  """
  check_remat(mode)
  count = 0
  for _, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Module) and hasattr(node, "remat") and isinstance(getattr(node, "remat"), str):
      node.remat = mode
      count += 1
  return count
