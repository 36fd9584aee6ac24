"""Llama (2 and 3) and Qwen2 in Flax NNX that load Hugging Face weights.

The forward pass matches ``transformers.LlamaModel`` and ``Qwen2Model``
(``last_hidden_state``, after the final ``norm``): pre-RMSNorm blocks,
grouped-query causal self-attention with rotary position embeddings (RoPE),
and a SwiGLU MLP,

.. math::

  h = x + \\mathrm{Attn}(\\mathrm{RMSNorm}_1(x)), \\qquad
  y = h + W_\\text{down}\\big(\\mathrm{silu}(W_\\text{gate} u) \\odot W_\\text{up} u\\big),
  \\quad u = \\mathrm{RMSNorm}_2(h).

Qwen2 is the same network with biases on the q/k/v projections (one class,
:class:`Llama`, with the flags in :class:`LlamaConfig`).

**Positions come from the attention mask**, ``pos_t = max(cumsum(m)_t - 1, 0)``
(as in :mod:`w2sg_jax.models.gpt2`), so a left-padded and a right-padded batch
give the same states on their real tokens. RoPE supports ``rope_theta`` and
the ``linear`` and ``llama3`` ``rope_scaling`` types.

Parameters are stored in ``param_dtype`` (float32 or bfloat16: a 7B model in
float32 needs 28 GB) and the forward computes in ``dtype``; RMSNorm
statistics, attention scores and the softmax run in float32 either way.

Module attributes carry the Hugging Face names (``embed_tokens``,
``layers[i].self_attn.q_proj``, ``layers[i].mlp.gate_proj``, ``norm``), so
the checkpoint name of a parameter is its NNX path with ``kernel`` /
``embedding`` read as ``weight`` (see :func:`hf_weight_map_from_paths`), and
LoRA targets use the names PEFT uses.
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

from w2sg_jax.models import remat as remat_lib
from w2sg_jax.models.bert import WeightMap
from w2sg_jax.models.gpt2 import causal_padding_bias, positions_from_mask

HF_PREFIXES = ("model.",)
# Unused checkpoint tensors: the language-model head (tied or not), a
# sequence-classification head, and the RoPE buffers old checkpoints saved.
HF_IGNORED = re.compile(r"^(lm_head\.weight|score\.weight|layers\.\d+\.self_attn\.rotary_emb\.inv_freq)$")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


# ----------------------------------------------------------------- RoPE ----


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding settings (hashable, so modules can hold them statically).

  ``rope_type`` is ``"default"``, ``"linear"`` (positions divided by
  ``factor``) or ``"llama3"`` (frequency-dependent scaling with
  ``low_freq_factor``, ``high_freq_factor`` and
  ``original_max_position_embeddings``).
  """

  theta: float = 10000.0
  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], *, theta_key: str = "rope_theta", default_theta: float = 10000.0) -> "RopeConfig":
    """Reads both config styles: ``rope_theta`` + ``rope_scaling`` (the hub's
    checkpoints) and ``rope_parameters`` (transformers >= 5).

    Raises:
      ValueError: on a scaling type this implementation does not compute.
    """
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    merged = {**params, **scaling}
    theta = config.get(theta_key, merged.get("rope_theta", default_theta))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
      raise ValueError(
          f"rope_scaling type {rope_type!r} is not supported; supported types are"
          " 'default', 'linear' and 'llama3'."
      )
    if rope_type == "default":
      return cls(theta=float(theta))
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return cls(theta=float(theta), rope_type=rope_type, **{k: merged[k] for k in keys if k in merged})


def rope_inv_freq(dim: int, rope: RopeConfig) -> np.ndarray:
  """Inverse frequencies ``[dim // 2]`` (float32), as transformers computes them.

  .. math:: \\omega_i = \\theta^{-2i/d}, \\quad i = 0, \\dots, d/2 - 1

  then scaled per ``rope.rope_type`` (``llama3``: wavelengths above
  ``original / low_freq_factor`` are divided by ``factor``, those below
  ``original / high_freq_factor`` kept, and those between interpolated).
  """
  exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv = (1.0 / (np.float32(rope.theta) ** exponent)).astype(np.float32)
  if rope.rope_type == "linear":
    return (inv / np.float32(rope.factor)).astype(np.float32)
  if rope.rope_type == "llama3":
    old = rope.original_max_position_embeddings
    low_wavelen = old / rope.low_freq_factor
    high_wavelen = old / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  return inv


def rope_cos_sin(pos_BxT: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """``cos`` and ``sin`` ``[B, T, 1, R]`` (float32) for rotary width ``R = 2 len(inv_freq)``."""
  angles = pos_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, R/2]
  emb = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_BxTxHxR: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """``x cos + rotate_half(x) sin`` (the half-split convention of transformers).

  Computed in float32, returned in the dtype of ``x``.
  """
  x = x_BxTxHxR.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxTxHxR.dtype)


# ------------------------------------------------------------ attention ----


def grouped_query_attention(
    q_BxTxHxK: jax.Array,
    k_BxSxGxK: jax.Array,
    v_BxSxGxK: jax.Array,
    bias: jax.Array,
) -> jax.Array:
  """Scaled dot-product attention where G key/value heads serve H = G r queries.

  Query head ``h`` reads key/value head ``h // r`` (transformers'
  ``repeat_kv``), without materialising the repeated keys.

  Args:
    q_BxTxHxK, k_BxSxGxK, v_BxSxGxK: projected heads.
    bias: additive, broadcastable to ``[B, 1, T, S]`` (see
      :func:`~w2sg_jax.models.gpt2.causal_padding_bias`).

  Returns:
    ``[B, T, H K]`` in the dtype of ``v``.
  """
  b, t, h, dk = q_BxTxHxK.shape
  g = k_BxSxGxK.shape[2]
  q = q_BxTxHxK.reshape(b, t, g, h // g, dk)
  scores = jnp.einsum("btgrk,bsgk->bgrts", q, k_BxSxGxK, preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(dk) + bias[:, :, None]
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxGxK.dtype)
  out = jnp.einsum("bgrts,bsgk->btgrk", probs, v_BxSxGxK)
  return out.reshape(b, t, h * dk)


# ----------------------------------------------------------------- norm ----


class RMSNorm(nnx.Module):
  """``weight * x / sqrt(mean(x^2) + eps)``, statistics in float32 (as transformers)."""

  def __init__(self, dim: int, eps: float, *, dtype: Any, param_dtype: Any):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(self.dtype) * normed.astype(self.dtype)


# ------------------------------------------------------------ weight map ----


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _transpose(x: np.ndarray) -> np.ndarray:
  # torch.nn.Linear stores [out, in]; nnx.Linear's kernel is [in, out].
  return x.T


_HF_LEAF = {"kernel": ("weight", _transpose), "embedding": ("weight", _identity),
            "scale": ("weight", _identity), "weight": ("weight", _identity),
            "bias": ("bias", _identity)}


def hf_weight_map_from_paths(module: nnx.Module) -> WeightMap:
  """HF name -> (param, transform) for a module whose attributes carry HF names.

  ``layers/0/self_attn/q_proj/kernel`` becomes ``layers.0.self_attn.q_proj.weight``
  (transposed); ``embedding`` and LayerNorm ``scale`` become ``weight``.
  """
  out: WeightMap = {}
  for path, var in nnx.iter_graph(module):
    if isinstance(var, nnx.Param):
      leaf, transform = _HF_LEAF[path[-1]]
      out[".".join(str(p) for p in (*path[:-1], leaf))] = (var, transform)
  return out


def set_depth_from_top(layers: Any, final_norm: nnx.Module) -> None:
  """Tags block i of k with ``depth_from_top = k - i`` and the final norm with 1
  (what :func:`w2sg_jax.models.trainable_filter` reads)."""
  k = len(layers)
  for i, block in enumerate(layers):
    for _, v in nnx.iter_graph(block):
      if isinstance(v, nnx.Param):
        v.set_metadata(depth_from_top=k - i)
  for _, v in nnx.iter_graph(final_norm):
    if isinstance(v, nnx.Param):
      v.set_metadata(depth_from_top=1)


# --------------------------------------------------------------- config ----


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """The fields of a Llama / Qwen2 ``config.json`` that the forward uses."""

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None  # None -> num_attention_heads (no grouping)
  head_dim: int | None = None  # None -> hidden_size // num_attention_heads
  rms_norm_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()
  qkv_bias: bool = False  # Qwen2: True
  o_bias: bool = False
  mlp_bias: bool = False
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False
  model_type: str = "llama"

  @classmethod
  def from_hf(cls, config: Mapping[str, Any]) -> "LlamaConfig":
    """Builds the config from a parsed HF ``config.json`` (``llama`` or ``qwen2``).

    Raises:
      ValueError: on options this implementation does not compute.
    """
    model_type = config.get("model_type", "llama")
    if model_type not in ("llama", "qwen2"):
      raise ValueError(f"LlamaConfig reads model_type 'llama' or 'qwen2', not {model_type!r}.")
    act = config.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
      raise ValueError(f"{model_type} hidden_act={act!r} is not supported; expected one of {sorted(ACTIVATIONS)}.")
    if model_type == "qwen2":
      if config.get("use_sliding_window", False):
        raise ValueError(
            "Qwen2 configs with use_sliding_window=True are not supported (sliding-window"
            " attention is not implemented); set it to false for sequences shorter than"
            " sliding_window."
        )
      qkv_bias, o_bias = True, False
    else:
      qkv_bias = o_bias = bool(config.get("attention_bias", False))
    names = {f.name for f in dataclasses.fields(cls)} - {"rope", "qkv_bias", "o_bias", "tie_word_embeddings"}
    kwargs = {k: v for k, v in config.items() if k in names}
    return cls(
        **kwargs,
        rope=RopeConfig.from_hf(config),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )

  @property
  def num_kv_heads(self) -> int:
    return self.num_key_value_heads or self.num_attention_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads


# --------------------------------------------------------------- layers ----


class LlamaAttention(nnx.Module):
  """Grouped-query causal self-attention with RoPE on every head dimension."""

  def __init__(self, cfg: LlamaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    d, h, g, k = cfg.hidden_size, cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_size
    if h % g:
      raise ValueError(f"num_attention_heads={h} is not a multiple of num_key_value_heads={g}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = nnx.Linear(d, h * k, use_bias=cfg.qkv_bias, **kw)
    self.k_proj = nnx.Linear(d, g * k, use_bias=cfg.qkv_bias, **kw)
    self.v_proj = nnx.Linear(d, g * k, use_bias=cfg.qkv_bias, **kw)
    self.o_proj = nnx.Linear(h * k, d, use_bias=cfg.o_bias, **kw)
    self.num_heads, self.num_kv_heads, self.head_size = h, g, k

  def __call__(self, x_BxTxD: jax.Array, bias: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    b, t, _ = x_BxTxD.shape
    q = self.q_proj(x_BxTxD).reshape(b, t, self.num_heads, self.head_size)
    k = self.k_proj(x_BxTxD).reshape(b, t, self.num_kv_heads, self.head_size)
    v = self.v_proj(x_BxTxD).reshape(b, t, self.num_kv_heads, self.head_size)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return self.o_proj(grouped_query_attention(q, k, v, bias))


class LlamaMLP(nnx.Module):
  """SwiGLU: ``down(act(gate(x)) * up(x))``."""

  def __init__(self, cfg: LlamaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = nnx.Linear(d, f, **kw)
    self.up_proj = nnx.Linear(d, f, **kw)
    self.down_proj = nnx.Linear(f, d, **kw)
    self.act = cfg.hidden_act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nnx.Module):
  """One pre-norm decoder layer: x += Attn(norm(x)); x += MLP(norm(x))."""

  def __init__(self, cfg: LlamaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.self_attn = LlamaAttention(cfg, rngs=rngs, **kw)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.mlp = LlamaMLP(cfg, rngs=rngs, **kw)

  def __call__(self, x: jax.Array, bias: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    x = x + self.self_attn(self.input_layernorm(x), bias, cos, sin)
    return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nnx.Module):
  """Llama / Qwen2 trunk: ``(input_ids_BxT, attention_mask_BxT) -> hidden_BxTxD``.

  Args:
    config: the architecture.
    num_layers: keep only the first k layers (``None``: all), then ``norm``.
    dtype: compute dtype.
    param_dtype: parameter dtype (``None``: the same as ``dtype``).
    rngs: initialises the parameters (overwritten when weights are loaded).

  Parameters of layer i carry ``depth_from_top = k - i`` (1 for the top
  layer); ``norm`` carries 1, so it trains together with the top layer under
  :func:`w2sg_jax.models.trainable_filter`.
  """

  def __init__(
      self,
      config: LlamaConfig,
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
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs, **kw)
    self.layers = nnx.List([LlamaBlock(config, rngs=rngs, **kw) for _ in range(n)])
    self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    set_depth_from_top(self.layers, self.norm)

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  def __call__(self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    """Returns the final hidden states ``[B, T, D]`` (after ``norm``), in ``dtype``.

    Padding may be on either side; positions where the mask is 0 hold values
    that callers must ignore.
    """
    pos_BxT = positions_from_mask(attention_mask_BxT)
    cos, sin = rope_cos_sin(pos_BxT, rope_inv_freq(self.config.head_size, self.config.rope))
    bias = causal_padding_bias(attention_mask_BxT)
    x = self.embed_tokens(input_ids_BxT)
    remat = remat_lib.check_remat(self.remat)
    for block in self.layers:
      x = remat_lib.call_block(block, remat, x, bias, cos, sin)
    return self.norm(x)

  def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """Next-token logits ``[B, T, V]`` (float32) from the tied embedding.

    Raises:
      ValueError: the checkpoint has an untied ``lm_head``, which is not loaded.
    """
    if not self.config.tie_word_embeddings:
      raise ValueError(
          "This checkpoint's lm_head is untied from embed_tokens and is not loaded;"
          " only the hidden states are available."
      )
    w_VxD = self.embed_tokens.embedding[...]
    return jnp.einsum(
        "btd,vd->btv", hidden_BxTxD, w_VxD.astype(hidden_BxTxD.dtype),
        preferred_element_type=jnp.float32,
    )

  def hf_weight_map(self) -> WeightMap:
    """HF checkpoint name (without the ``model.`` prefix) -> (parameter, transform)."""
    return hf_weight_map_from_paths(self)

  def hf_ignored(self, name: str) -> bool:
    """Whether a checkpoint tensor is deliberately unused (LM or score head,
    RoPE buffers, or a layer beyond ``num_layers``)."""
    if HF_IGNORED.match(name):
      return True
    m = re.match(r"^layers\.(\d+)\.", name)
    return bool(m) and int(m.group(1)) >= self.num_layers
