"""Pooling, classification and reward heads on top of a pretrained encoder.

An encoder is any NNX module mapping ``(input_ids_BxT, attention_mask_BxT)``
to ``hidden_BxTxD`` with a ``hidden_size`` attribute (:class:`Bert`,
:class:`GPT2`). Pooling reads the attention mask only, never token ids: in
GPT-2, id 0 is the real token "!", not padding. The heads run in float32
whatever the encoder's compute dtype.

Module paths: the encoder lives under ``encoder`` and the head under ``head``;
:func:`trainable_filter` relies on this.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from w2sg_jax.models.bert import Bert
from w2sg_jax.models.gpt2 import GPT2
from w2sg_jax.models.gpt_neox import GPTNeoX
from w2sg_jax.models.llama import Llama

Pooling = Literal["mean", "last"]


def mean_pool(hidden_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Mean of the real tokens' states (sentence-transformers' mean pooling).

  .. math:: p_b = \\frac{\\sum_t m_{bt} h_{bt}}{\\max(\\sum_t m_{bt}, 10^{-9})}

  Args:
    hidden_BxTxD: hidden states.
    mask_BxT: attention mask, 1 for real tokens.

  Returns:
    ``[B, D]`` float32; zeros for a row without real tokens.
  """
  m = mask_BxT.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden_BxTxD.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def last_token_pool(hidden_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """State of the last REAL token, located by the attention mask.

  .. math:: p_b = h_{b, t^*_b}, \\qquad t^*_b = \\max\\{t : m_{bt} = 1\\}

  Works for right padding (``t*`` = length - 1) and left padding (``t*`` =
  T - 1) alike, and never looks at token ids. A row without real tokens
  returns position 0.

  Returns:
    ``[B, D]`` float32.
  """
  t = hidden_BxTxD.shape[1]
  idx_B = jnp.argmax(jnp.where(mask_BxT.astype(bool), jnp.arange(t), -1), axis=-1)
  pooled = jnp.take_along_axis(hidden_BxTxD, idx_B[:, None, None], axis=1)[:, 0]
  return pooled.astype(jnp.float32)


_POOLS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "mean": mean_pool,
    "last": last_token_pool,
}


def _resolve_pooling(encoder: nnx.Module, pooling: str | None) -> str:
  if pooling is None:
    # Causal models summarise a sequence in their last state; encoders in all.
    if isinstance(encoder, (GPT2, Llama, GPTNeoX)):
      return "last"
    if isinstance(encoder, Bert):
      return "mean"
    raise ValueError(
        f"No default pooling for {type(encoder).__name__}; pass pooling='mean'"
        " or pooling='last'."
    )
  if pooling not in _POOLS:
    raise ValueError(f"pooling={pooling!r}; expected one of {sorted(_POOLS)}.")
  return pooling


class MLPHead(nnx.Module):
  """An MLP ``[B, in_dim] -> [B, num_classes]`` (float32).

  Args:
    in_dim: input features.
    hidden_sizes: widths of the hidden layers; ``()`` makes a linear probe.
    num_classes: outputs.
    activation: between hidden layers.
    rngs: initialises the hidden layers. The output layer starts at zero, so
      an untrained head predicts uniform probabilities (margin 0).
  """

  def __init__(
      self,
      in_dim: int,
      hidden_sizes: Sequence[int],
      num_classes: int,
      *,
      activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu,
      rngs: nnx.Rngs,
  ):
    dims = [in_dim, *hidden_sizes]
    self.hidden = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
    )
    self.out = nnx.Linear(
        dims[-1], num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs
    )
    self.activation = activation

  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    x = x_BxD.astype(jnp.float32)
    for layer in self.hidden:
      x = self.activation(layer(x))
    return self.out(x)


class FeatureHead(nnx.Module):
  """An :class:`MLPHead` called on a ``features`` input: ``features_BxD -> logits_BxC``.

  The model of a task whose inputs are precomputed features (cached encoder
  states, synthetic views); the keyword matches the batch's ``inputs`` dict.
  """

  def __init__(self, in_dim: int, hidden_sizes: Sequence[int], num_classes: int, *, rngs: nnx.Rngs):
    self.head = MLPHead(in_dim, tuple(hidden_sizes), num_classes, rngs=rngs)

  def __call__(self, features: jax.Array) -> jax.Array:
    return self.head(features)


class SequenceClassifier(nnx.Module):
  """encoder -> pool -> MLP head: ``(input_ids_BxT, attention_mask_BxT) -> logits_BxC``.

  Args:
    encoder: e.g. from :func:`~w2sg_jax.models.load_pretrained`.
    num_classes: C.
    pooling: ``'mean'`` or ``'last'``; ``None`` picks ``'mean'`` for BERT and
      ``'last'`` for the decoders (GPT-2, Llama, Qwen2, GPT-NeoX).
    hidden_sizes: head hidden widths (``()``: linear probe).
    rngs: initialises the head.
  """

  def __init__(
      self,
      encoder: nnx.Module,
      num_classes: int,
      *,
      pooling: Pooling | None = None,
      hidden_sizes: Sequence[int] = (),
      rngs: nnx.Rngs,
  ):
    self.encoder = encoder
    self.pooling = _resolve_pooling(encoder, pooling)
    self.head = MLPHead(encoder.hidden_size, tuple(hidden_sizes), num_classes, rngs=rngs)

  def features(self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    """Pooled encoder states ``[B, D]`` (float32)."""
    hidden = self.encoder(input_ids_BxT, attention_mask_BxT)
    return _POOLS[self.pooling](hidden, attention_mask_BxT)

  def __call__(self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    """Returns ``logits_BxC`` (float32)."""
    return self.head(self.features(input_ids_BxT, attention_mask_BxT))


def _pad_to(x_BxT: jax.Array, t: int) -> jax.Array:
  return jnp.pad(x_BxT, ((0, 0), (0, t - x_BxT.shape[1])))


class RewardModel(nnx.Module):
  """encoder -> pool -> scalar head, scoring each (prompt + response) sequence.

  Args: as :class:`SequenceClassifier`, without ``num_classes``.
  """

  def __init__(
      self,
      encoder: nnx.Module,
      *,
      pooling: Pooling | None = None,
      hidden_sizes: Sequence[int] = (),
      rngs: nnx.Rngs,
  ):
    self.encoder = encoder
    self.pooling = _resolve_pooling(encoder, pooling)
    self.head = MLPHead(encoder.hidden_size, tuple(hidden_sizes), 1, rngs=rngs)

  def rewards(self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    """Scalar rewards ``r_B`` (float32)."""
    hidden = self.encoder(input_ids_BxT, attention_mask_BxT)
    return self.head(_POOLS[self.pooling](hidden, attention_mask_BxT))[:, 0]

  def pair_logits(
      self,
      chosen_ids_BxT: jax.Array,
      chosen_mask_BxT: jax.Array,
      rejected_ids_BxS: jax.Array,
      rejected_mask_BxS: jax.Array,
  ) -> jax.Array:
    """Two-class logits ``[B, 2]`` for "chosen is preferred" (class 1).

    Both responses go through ONE batched forward (stacked along the batch,
    the shorter one right-padded with mask 0, which pooling ignores). With
    the margin :math:`z = r_\\text{chosen} - r_\\text{rejected}` the logits are
    ``[0, z]``, so ``softmax(...)[1] = sigmoid(z)`` (Bradley-Terry) and every
    classification loss applies unchanged. This is the same map as the loss
    module's ``margin_to_logits``, kept local so models do not import losses.
    """
    b = chosen_ids_BxT.shape[0]
    if rejected_ids_BxS.shape[0] != b:
      raise ValueError(
          f"chosen batch {b} != rejected batch {rejected_ids_BxS.shape[0]};"
          " pairs must line up."
      )
    t = max(chosen_ids_BxT.shape[1], rejected_ids_BxS.shape[1])
    ids = jnp.concatenate([_pad_to(chosen_ids_BxT, t), _pad_to(rejected_ids_BxS, t)])
    mask = jnp.concatenate([_pad_to(chosen_mask_BxT, t), _pad_to(rejected_mask_BxS, t)])
    r_2B = self.rewards(ids, mask)
    z_B = r_2B[:b] - r_2B[b:]
    return jnp.stack([jnp.zeros_like(z_B), z_B], axis=-1)


TrainMode = Literal["head", "top", "full"]


def trainable_filter(mode: TrainMode, num_top_layers: int = 0):
  """An nnx filter selecting the trained Params of a classifier/reward model.

  * ``"head"``: the head only (a probe on a frozen encoder);
  * ``"top"``: the head, the top ``num_top_layers`` encoder layers and, for
    GPT-2, the final ``ln_f`` (it normalises the top layer's output);
  * ``"full"``: every Param.

  Use it as ``graphdef, trained, frozen = nnx.split(model, filt, ...)`` or
  ``nnx.Optimizer(model, tx, wrt=filt)``. Layers are recognised by the
  ``depth_from_top`` metadata that :class:`Bert` and :class:`GPT2` put on
  their parameters (1 = top layer), so the filter needs no layer count.

  Raises:
    ValueError: unknown mode, or ``num_top_layers`` inconsistent with it.
  """
  if mode not in ("head", "top", "full"):
    raise ValueError(f"mode={mode!r}; expected 'head', 'top' or 'full'.")
  if mode == "top" and num_top_layers < 1:
    raise ValueError("mode='top' needs num_top_layers >= 1 (use mode='head' for 0).")
  if mode != "top" and num_top_layers != 0:
    raise ValueError(f"num_top_layers={num_top_layers} only applies to mode='top'.")

  def _filter(path, x) -> bool:
    if not isinstance(x, nnx.Param):
      return False
    if mode == "full" or path[:1] == ("head",):
      return True
    if mode == "head":
      return False
    return x.get_metadata().get("depth_from_top", math.inf) <= num_top_layers

  return _filter
