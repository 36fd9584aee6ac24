"""GPT-NeoX (Pythia) in Flax NNX that loads Hugging Face weights.

The forward pass matches ``transformers.GPTNeoXModel`` (``last_hidden_state``,
after ``final_layer_norm``): pre-LayerNorm blocks with partial rotary
embeddings (the first ``rotary_pct`` of each head's dimensions rotate, the
rest pass through) and, by default, the parallel residual

.. math::

  y = x + \\mathrm{Attn}(\\mathrm{LN}_1(x)) + \\mathrm{MLP}(\\mathrm{LN}_2(x))

(``use_parallel_residual=False`` gives the sequential
``h = x + Attn(LN_1(x)); y = h + MLP(LN_2(h))``).

The fused ``query_key_value`` projection keeps the Hugging Face layout: its
``3 D`` outputs are ordered per head, ``[H, (q, k, v), head_size]``, so the
kernel is the checkpoint's weight transposed, and LoRA on it matches PEFT's.

Positions come from the attention mask, as in :mod:`w2sg_jax.models.llama`.
Pythia checkpoints name their LM head ``embed_out`` (ignored: only the trunk
is loaded).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from w2sg_jax.models import remat as remat_lib
from w2sg_jax.models.bert import WeightMap
from w2sg_jax.models.gpt2 import causal_padding_bias, positions_from_mask
from w2sg_jax.models.llama import (
    ACTIVATIONS,
    RopeConfig,
    apply_rope,
    grouped_query_attention,
    hf_weight_map_from_paths,
    rope_cos_sin,
    rope_inv_freq,
    set_depth_from_top,
)

HF_PREFIXES = ("gpt_neox.",)
# Unused: the LM head (old and new names), and the causal-mask and RoPE
# buffers that old checkpoints saved.
HF_IGNORED = re.compile(
    r"^(embed_out\.weight|lm_head\.weight|score\.weight"
    r"|layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq))$"
)


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
  """The fields of a GPT-NeoX ``config.json`` that the forward uses."""

  vocab_size: int = 50432
  hidden_size: int = 6144
  num_hidden_layers: int = 44
  num_attention_heads: int = 64
  intermediate_size: int = 24576
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-5
  use_parallel_residual: bool = True
  attention_bias: bool = True
  rotary_pct: float = 0.25
  rope: RopeConfig = RopeConfig()
  tie_word_embeddings: bool = False

  @classmethod
  def from_hf(cls, config: Mapping[str, Any]) -> "GPTNeoXConfig":
    """Builds the config from a parsed HF ``config.json``.

    Reads ``rotary_pct`` / ``rotary_emb_base`` (the hub's Pythia configs) or
    ``rope_parameters`` with ``partial_rotary_factor`` / ``rope_theta``
    (transformers >= 5).

    Raises:
      ValueError: on options this implementation does not compute.
    """
    act = config.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
      raise ValueError(f"gpt_neox hidden_act={act!r} is not supported; expected one of {sorted(ACTIVATIONS)}.")
    params = config.get("rope_parameters") or {}
    rotary_pct = config.get("rotary_pct", params.get("partial_rotary_factor", 0.25))
    rope = RopeConfig.from_hf(config, theta_key="rotary_emb_base")
    names = {f.name for f in dataclasses.fields(cls)} - {"rope", "rotary_pct"}
    return cls(
        **{k: v for k, v in config.items() if k in names},
        rotary_pct=float(rotary_pct),
        rope=rope,
    )

  @property
  def head_size(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def rotary_ndims(self) -> int:
    return int(self.head_size * self.rotary_pct)


class GPTNeoXAttention(nnx.Module):
  """Causal self-attention with a fused, per-head-interleaved ``query_key_value``."""

  def __init__(self, cfg: GPTNeoXConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    d = cfg.hidden_size
    if d % cfg.num_attention_heads:
      raise ValueError(f"hidden_size={d} is not a multiple of num_attention_heads={cfg.num_attention_heads}.")
    kw = dict(use_bias=cfg.attention_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query_key_value = nnx.Linear(d, 3 * d, **kw)
    self.dense = nnx.Linear(d, d, **kw)
    self.num_heads, self.head_size, self.rotary_ndims = cfg.num_attention_heads, cfg.head_size, cfg.rotary_ndims

  def __call__(self, x_BxTxD: jax.Array, bias: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    b, t, _ = x_BxTxD.shape
    qkv = self.query_key_value(x_BxTxD).reshape(b, t, self.num_heads, 3 * self.head_size)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    r = self.rotary_ndims
    q = jnp.concatenate([apply_rope(q[..., :r], cos, sin), q[..., r:]], axis=-1)
    k = jnp.concatenate([apply_rope(k[..., :r], cos, sin), k[..., r:]], axis=-1)
    return self.dense(grouped_query_attention(q, k, v, bias))


class GPTNeoXMLP(nnx.Module):
  def __init__(self, cfg: GPTNeoXConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dense_h_to_4h = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
    self.dense_4h_to_h = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)
    self.act = cfg.hidden_act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dense_4h_to_h(ACTIVATIONS[self.act](self.dense_h_to_4h(x)))


class GPTNeoXBlock(nnx.Module):
  """One pre-LN layer, parallel or sequential residual (see module doc)."""

  def __init__(self, cfg: GPTNeoXConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.input_layernorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, **kw)
    self.post_attention_layernorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, **kw)
    self.attention = GPTNeoXAttention(cfg, **kw)
    self.mlp = GPTNeoXMLP(cfg, **kw)
    self.parallel = cfg.use_parallel_residual

  def __call__(self, x: jax.Array, bias: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    a = self.attention(self.input_layernorm(x), bias, cos, sin)
    if self.parallel:
      return x + a + self.mlp(self.post_attention_layernorm(x))
    h = x + a
    return h + self.mlp(self.post_attention_layernorm(h))


class GPTNeoX(nnx.Module):
  """GPT-NeoX trunk: ``(input_ids_BxT, attention_mask_BxT) -> hidden_BxTxD``.

  Args:
    config: the architecture.
    num_layers: keep only the first k layers (``None``: all), then
      ``final_layer_norm``.
    dtype: compute dtype.
    param_dtype: parameter dtype (``None``: the same as ``dtype``).
    rngs: initialises the parameters (overwritten when weights are loaded).

  Parameters carry ``depth_from_top`` as in :class:`~w2sg_jax.models.Llama`.
  """

  def __init__(
      self,
      config: GPTNeoXConfig,
      *,
      num_layers: int | None = None,
      dtype: Any = jnp.float32,
      param_dtype: Any = None,
      remat: str = "none",
      rngs: nnx.Rngs,
  ):
    n = config.num_hidden_layers if num_layers is None else num_layers
    if not 0 <= n <= config.num_hidden_layers:
      raise ValueError(
          f"num_layers={num_layers} must be in [0, {config.num_hidden_layers}] (the"
          " checkpoint's num_hidden_layers)."
      )
    param_dtype = dtype if param_dtype is None else param_dtype
    self.config = config
    self.num_layers = n
    self.dtype = dtype
    self.remat = remat_lib.check_remat(remat)  # Per block in the backward pass; see models/remat.py.
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embed_in = nnx.Embed(config.vocab_size, config.hidden_size, **kw)
    self.layers = nnx.List([GPTNeoXBlock(config, **kw) for _ in range(n)])
    self.final_layer_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, **kw)
    set_depth_from_top(self.layers, self.final_layer_norm)

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  def __call__(self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    """Returns the final hidden states ``[B, T, D]`` (after ``final_layer_norm``).

    Padding may be on either side; positions where the mask is 0 hold values
    that callers must ignore.
    """
    pos_BxT = positions_from_mask(attention_mask_BxT)
    cos, sin = rope_cos_sin(pos_BxT, rope_inv_freq(self.config.rotary_ndims, self.config.rope))
    bias = causal_padding_bias(attention_mask_BxT)
    x = self.embed_in(input_ids_BxT)
    remat = remat_lib.check_remat(self.remat)
    for block in self.layers:
      x = remat_lib.call_block(block, remat, x, bias, cos, sin)
    return self.final_layer_norm(x)

  def hf_weight_map(self) -> WeightMap:
    """HF checkpoint name (without the ``gpt_neox.`` prefix) -> (parameter, transform)."""
    return hf_weight_map_from_paths(self)

  def hf_ignored(self, name: str) -> bool:
    """Whether a checkpoint tensor is deliberately unused (LM head, buffers, or
    a layer beyond ``num_layers``)."""
    if HF_IGNORED.match(name):
      return True
    m = re.match(r"^layers\.(\d+)\.", name)
    return bool(m) and int(m.group(1)) >= self.num_layers
