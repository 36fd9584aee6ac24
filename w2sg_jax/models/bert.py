"""A BERT encoder in Flax NNX that loads Hugging Face weights.

The forward pass matches ``transformers.BertModel`` (``last_hidden_state``):
post-LayerNorm blocks, exact (erf) GELU, absolute position embeddings and
``token_type_ids`` all zero. The attention mask enters as an additive bias,

.. math::

  A = \\mathrm{softmax}\\Big(\\frac{Q K^\\top}{\\sqrt{d_h}} + b\\Big), \\qquad
  b_{t'} = \\begin{cases} 0 & m_{t'} = 1 \\\\ \\min_{\\text{fp32}} & m_{t'} = 0 \\end{cases}

so padded keys get exactly zero weight (as in Hugging Face). The softmax and
the LayerNorm statistics run in float32 whatever the compute ``dtype``.

Weights come from a Hugging Face ``model.safetensors`` through
:func:`w2sg_jax.models.load_pretrained`; :meth:`Bert.hf_weight_map` names each
parameter the way the checkpoint does (with or without the ``bert.`` prefix,
see :data:`HF_PREFIXES`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2sg_jax import parallel
from w2sg_jax.models import remat as remat_lib

# Checkpoint names may carry one of these prefixes (BertForX checkpoints use
# ``bert.``; the sentence-transformers MiniLM checkpoint uses none).
HF_PREFIXES = ("bert.",)
# Checkpoint tensors that this encoder does not use: the pooler (we pool
# ourselves), pre-training/classification heads, and the position_ids buffer.
HF_IGNORED = re.compile(r"^(pooler\.|cls\.|classifier\.|.*position_ids$)")

# Where each HF weight goes: (variable, transform applied to the numpy array).
WeightMap = dict[str, tuple[nnx.Variable, Callable[[np.ndarray], np.ndarray]]]


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _transpose(x: np.ndarray) -> np.ndarray:
  # torch.nn.Linear stores [out, in]; nnx.Linear's kernel is [in, out].
  return x.T


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a Hugging Face BERT ``config.json`` that the forward uses."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"

  @classmethod
  def from_hf(cls, config: Mapping[str, Any]) -> "BertConfig":
    """Builds the config from a parsed HF ``config.json`` dict.

    Raises:
      ValueError: on an activation or position-embedding type this encoder
        does not implement (rather than silently computing something else).
    """
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
      raise ValueError(
          f"BERT hidden_act={act!r} is not supported; only 'gelu' (exact, erf)"
          " is implemented."
      )
    pos = config.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(
          f"BERT position_embedding_type={pos!r} is not supported; only"
          " 'absolute' is implemented."
      )
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def attention_bias(mask_BxT: jax.Array) -> jax.Array:
  """Additive key bias ``[B, 1, 1, T]``: 0 for real tokens, fp32 min for padding."""
  keep = mask_BxT.astype(bool)[:, None, None, :]
  return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def multi_head_attention(
    q_BxTxD: jax.Array,
    k_BxTxD: jax.Array,
    v_BxTxD: jax.Array,
    bias: jax.Array,
    num_heads: int,
) -> jax.Array:
  """Scaled dot-product attention with an additive bias.

  Args:
    q_BxTxD, k_BxTxD, v_BxTxD: projected queries, keys and values.
    bias: broadcastable to ``[B, H, T, T]``; added to the float32 scores.
    num_heads: H; D must be divisible by H.

  Returns:
    ``[B, T, D]`` in the dtype of ``v_BxTxD``.
  """
  b, t, d = q_BxTxD.shape
  dh = d // num_heads
  split = lambda x: x.reshape(b, x.shape[1], num_heads, dh)
  q, k, v = split(q_BxTxD), split(k_BxTxD), split(v_BxTxD)
  scores_BxHxTxS = jnp.einsum(
      "bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32
  ) / math.sqrt(dh)
  probs = jax.nn.softmax(scores_BxHxTxS + bias, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhts,bshd->bthd", probs, v)
  return out.reshape(b, t, d)


class BertEmbeddings(nnx.Module):
  """Word + position + token-type(0) embeddings, then LayerNorm."""

  def __init__(self, cfg: BertConfig, *, dtype: Any, rngs: nnx.Rngs):
    d = cfg.hidden_size
    kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.word = nnx.Embed(cfg.vocab_size, d, **kw)
    self.position = nnx.Embed(cfg.max_position_embeddings, d, **kw)
    self.token_type = nnx.Embed(cfg.type_vocab_size, d, **kw)
    self.ln = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, **kw)
    self.max_len = cfg.max_position_embeddings

  def __call__(self, input_ids_BxT: jax.Array) -> jax.Array:
    t = input_ids_BxT.shape[1]
    if t > self.max_len:
      raise ValueError(
          f"Sequence length {t} exceeds max_position_embeddings={self.max_len};"
          " truncate the tokenizer output to at most that many tokens."
      )
    x = self.word(input_ids_BxT)
    x = x + self.position.embedding[:t][None].astype(x.dtype)
    x = x + self.token_type.embedding[0].astype(x.dtype)  # token_type_ids == 0
    return self.ln(x)


class BertLayer(nnx.Module):
  """One post-LN block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

  def __init__(self, cfg: BertConfig, *, dtype: Any, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.query = nnx.Linear(d, d, **kw)
    self.key = nnx.Linear(d, d, **kw)
    self.value = nnx.Linear(d, d, **kw)
    self.attn_out = nnx.Linear(d, d, **kw)
    self.attn_ln = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, **kw)
    self.ffn_in = nnx.Linear(d, f, **kw)
    self.ffn_out = nnx.Linear(f, d, **kw)
    self.ffn_ln = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, **kw)
    self.num_heads = cfg.num_attention_heads

  def __call__(self, x_BxTxD: jax.Array, bias: jax.Array) -> jax.Array:
    a = multi_head_attention(
        self.query(x_BxTxD), self.key(x_BxTxD), self.value(x_BxTxD),
        bias, self.num_heads,
    )
    x = self.attn_ln(x_BxTxD + self.attn_out(a))
    h = jax.nn.gelu(self.ffn_in(x), approximate=False)
    return self.ffn_ln(x + self.ffn_out(h))

  def mixed(self, x_BxTxD: jax.Array, bias: jax.Array, matmul_dtype: Any) -> jax.Array:
    """The block with its matrix products in ``matmul_dtype`` (e.g. bfloat16), everything else float32.

    The inputs of every product (the six dense layers, the attention scores
    and their weighted sum) are cast to ``matmul_dtype`` and accumulated in
    float32 (``preferred_element_type``); the residual stream, the biases,
    the softmax, GELU and both LayerNorms stay float32. Kernels already
    stored in ``matmul_dtype`` (see :func:`cast_kernels`) are not cast again.
    With ``matmul_dtype=float32`` this computes ``self(x, bias)``.
    """
    x = x_BxTxD.astype(jnp.float32)

    def dense(lin: nnx.Linear, h: jax.Array) -> jax.Array:
      y = jnp.einsum("...i,io->...o", h.astype(matmul_dtype), lin.kernel[...].astype(matmul_dtype),
                     preferred_element_type=jnp.float32)
      return y + lin.bias[...].astype(jnp.float32)

    b, t, d = x.shape
    dh = d // self.num_heads
    split = lambda h: h.reshape(b, t, self.num_heads, dh).astype(matmul_dtype)
    q, k, v = split(dense(self.query, x)), split(dense(self.key, x)), split(dense(self.value, x))
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(matmul_dtype)
    a = jnp.einsum("bhts,bshd->bthd", probs, v, preferred_element_type=jnp.float32).reshape(b, t, d)
    x = self.attn_ln(x + dense(self.attn_out, a))
    h = jax.nn.gelu(dense(self.ffn_in, x), approximate=False)
    return self.ffn_ln(x + dense(self.ffn_out, h))

  def hf_weight_map(self, prefix: str) -> WeightMap:
    m = {
        "attention.self.query": self.query,
        "attention.self.key": self.key,
        "attention.self.value": self.value,
        "attention.output.dense": self.attn_out,
        "intermediate.dense": self.ffn_in,
        "output.dense": self.ffn_out,
    }
    out: WeightMap = {}
    for name, lin in m.items():
      out[f"{prefix}{name}.weight"] = (lin.kernel, _transpose)
      out[f"{prefix}{name}.bias"] = (lin.bias, _identity)
    for name, ln in {"attention.output.LayerNorm": self.attn_ln,
                     "output.LayerNorm": self.ffn_ln}.items():
      out[f"{prefix}{name}.weight"] = (ln.scale, _identity)
      out[f"{prefix}{name}.bias"] = (ln.bias, _identity)
    return out


def cast_kernels(state: Any, dtype: Any) -> Any:
  """``state`` (from ``nnx.split``) with every dense ``kernel`` in ``dtype``; embeddings, biases, LayerNorms kept.

  For :meth:`BertLayer.mixed`: the kernels are cast once, not on every call.
  """
  def cast(path, x):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return x.astype(dtype) if "kernel" in names and hasattr(x, "astype") else x

  return jax.tree_util.tree_map_with_path(cast, state)


class Bert(nnx.Module):
  """BERT encoder: ``(input_ids_BxT, attention_mask_BxT) -> hidden_BxTxD``.

  Args:
    config: the architecture.
    num_layers: keep only the first k encoder layers (``None``: all of them).
      ``k = 0`` returns the embedding output (after the embedding LayerNorm),
      i.e. Hugging Face's ``hidden_states[k]``.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    remat: rematerialisation of each layer in the backward pass, ``"none"``,
      ``"block"`` or ``"full"`` (see :mod:`w2sg_jax.models.remat`); the
      outputs do not depend on it. A plain attribute: it can also be set on a
      built model before ``nnx.split``.
    rngs: initialises the parameters (overwritten when weights are loaded).

  Every parameter of block i carries the metadata ``depth_from_top = k - i``
  (1 for the top block), which :func:`w2sg_jax.models.trainable_filter` reads.
  """

  def __init__(
      self,
      config: BertConfig,
      *,
      num_layers: int | None = None,
      dtype: Any = jnp.float32,
      remat: str = "none",
      rngs: nnx.Rngs,
  ):
    n = config.num_hidden_layers if num_layers is None else num_layers
    if not 0 <= n <= config.num_hidden_layers:
      raise ValueError(
          f"num_layers={num_layers} must be in [0, {config.num_hidden_layers}]"
          " (the checkpoint's num_hidden_layers)."
      )
    self.config = config
    self.num_layers = n
    self.dtype = dtype
    self.remat = remat_lib.check_remat(remat)
    self.embeddings = BertEmbeddings(config, dtype=dtype, rngs=rngs)
    self.layers = nnx.List(
        [BertLayer(config, dtype=dtype, rngs=rngs) for _ in range(n)]
    )
    for i, layer in enumerate(self.layers):
      for _, v in nnx.iter_graph(layer):
        if isinstance(v, nnx.Param):
          v.set_metadata(depth_from_top=n - i)

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  def __call__(
      self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array
  ) -> jax.Array:
    """Returns the last hidden states ``[B, T, D]`` in the compute dtype.

    Positions where ``attention_mask_BxT == 0`` hold values that callers must
    ignore (pool with the mask).
    """
    bias = attention_bias(attention_mask_BxT)
    x = parallel.constrain_batch(self.embeddings(input_ids_BxT))
    remat = remat_lib.check_remat(self.remat)
    for layer in self.layers:
      x = parallel.constrain_batch(remat_lib.call_block(layer, remat, x, bias))
    return x

  def hf_weight_map(self) -> WeightMap:
    """HF checkpoint name (without prefix) -> (parameter, numpy transform)."""
    e = self.embeddings
    out: WeightMap = {
        "embeddings.word_embeddings.weight": (e.word.embedding, _identity),
        "embeddings.position_embeddings.weight": (e.position.embedding, _identity),
        "embeddings.token_type_embeddings.weight": (e.token_type.embedding, _identity),
        "embeddings.LayerNorm.weight": (e.ln.scale, _identity),
        "embeddings.LayerNorm.bias": (e.ln.bias, _identity),
    }
    for i, layer in enumerate(self.layers):
      out.update(layer.hf_weight_map(f"encoder.layer.{i}."))
    return out

  def hf_ignored(self, name: str) -> bool:
    """Whether a checkpoint tensor is deliberately unused (pooler, heads,
    buffers, or a layer beyond ``num_layers``)."""
    if HF_IGNORED.match(name):
      return True
    m = re.match(r"^encoder\.layer\.(\d+)\.", name)
    return bool(m) and int(m.group(1)) >= self.num_layers
