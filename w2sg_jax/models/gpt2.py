"""GPT-2 in Flax NNX that loads Hugging Face weights (any size).

The forward pass matches ``transformers.GPT2Model`` (``last_hidden_state``,
after ``ln_f``): pre-LayerNorm blocks, ``gelu_new`` (tanh) activation, learned
absolute positions, causal self-attention. The key bias combines causality
with the padding mask,

.. math::

  b_{t,s} = \\begin{cases} 0 & s \\le t \\text{ and } m_s = 1 \\\\
  \\min_{\\text{fp32}} & \\text{otherwise.} \\end{cases}

**Positions come from the attention mask**, ``pos_t = max(cumsum(m)_t - 1, 0)``,
which is what Hugging Face's ``generate`` passes. With LEFT padding the first
real token then sits at position 0, so the real tokens get the same hidden
states as the unpadded sequence; with right padding it equals ``arange(T)`` on
the real tokens. (A plain ``GPT2Model(input_ids, attention_mask)`` call in
Hugging Face uses ``arange(T)`` instead, which shifts left-padded sequences.)

Weight names follow the HF checkpoint (``wte``, ``wpe``, ``h.{i}.ln_1``,
``h.{i}.attn.c_attn``, ...), with or without the ``transformer.`` prefix. HF's
``Conv1D`` stores weights as ``[in, out]``, the same layout as ``nnx.Linear``.
The language-model head is tied to ``wte`` (see :meth:`GPT2.logits`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2sg_jax import parallel
from w2sg_jax.models import remat as remat_lib
from w2sg_jax.models.bert import WeightMap, multi_head_attention

HF_PREFIXES = ("transformer.",)
# Unused checkpoint tensors: the tied lm_head copy and the causal-mask buffers
# that old checkpoints saved (``attn.bias``, ``attn.masked_bias``).
HF_IGNORED = re.compile(r"^(lm_head\.weight|h\.\d+\.attn\.(bias|masked_bias))$")

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


def _identity(x: np.ndarray) -> np.ndarray:
  return x


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """The fields of a Hugging Face GPT-2 ``config.json`` that the forward uses."""

  vocab_size: int = 50257
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_positions: int = 1024
  n_inner: int | None = None  # None -> 4 * n_embd
  layer_norm_epsilon: float = 1e-5
  activation_function: str = "gelu_new"

  @classmethod
  def from_hf(cls, config: Mapping[str, Any]) -> "GPT2Config":
    """Builds the config from a parsed HF ``config.json`` dict.

    Raises:
      ValueError: on options this implementation does not compute.
    """
    act = config.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
      raise ValueError(
          f"GPT-2 activation_function={act!r} is not supported; expected one of"
          f" {sorted(_ACTIVATIONS)}."
      )
    if not config.get("scale_attn_weights", True) or config.get(
        "scale_attn_by_inverse_layer_idx", False
    ):
      raise ValueError(
          "GPT-2 configs with scale_attn_weights=False or"
          " scale_attn_by_inverse_layer_idx=True are not supported."
      )
    if not config.get("tie_word_embeddings", True):
      raise ValueError(
          "GPT-2 configs with tie_word_embeddings=False are not supported:"
          " GPT2.logits uses the tied embedding wte."
      )
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})

  @property
  def inner_size(self) -> int:
    return self.n_inner if self.n_inner is not None else 4 * self.n_embd


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
  """Position ids ``[B, T]``: ``max(cumsum(mask) - 1, 0)`` (see module doc)."""
  return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def causal_padding_bias(mask_BxT: jax.Array) -> jax.Array:
  """Additive bias ``[B, 1, T, T]``: query t may attend to real keys s <= t."""
  t = mask_BxT.shape[-1]
  causal_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))
  keep = causal_TxT[None, None] & mask_BxT.astype(bool)[:, None, None, :]
  return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


class GPT2Block(nnx.Module):
  """One pre-LN block: x += Attn(LN1(x)); x += MLP(LN2(x))."""

  def __init__(self, cfg: GPT2Config, *, dtype: Any, rngs: nnx.Rngs):
    d = cfg.n_embd
    kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.ln_1 = nnx.LayerNorm(d, epsilon=cfg.layer_norm_epsilon, **kw)
    self.c_attn = nnx.Linear(d, 3 * d, **kw)
    self.attn_proj = nnx.Linear(d, d, **kw)
    self.ln_2 = nnx.LayerNorm(d, epsilon=cfg.layer_norm_epsilon, **kw)
    self.c_fc = nnx.Linear(d, cfg.inner_size, **kw)
    self.mlp_proj = nnx.Linear(cfg.inner_size, d, **kw)
    self.num_heads = cfg.n_head
    self.act = cfg.activation_function

  def __call__(self, x_BxTxD: jax.Array, bias: jax.Array) -> jax.Array:
    q, k, v = jnp.split(self.c_attn(self.ln_1(x_BxTxD)), 3, axis=-1)
    x = x_BxTxD + self.attn_proj(multi_head_attention(q, k, v, bias, self.num_heads))
    h = _ACTIVATIONS[self.act](self.c_fc(self.ln_2(x)))
    return x + self.mlp_proj(h)

  def hf_weight_map(self, prefix: str) -> WeightMap:
    out: WeightMap = {}
    for name, mod in {"ln_1": self.ln_1, "ln_2": self.ln_2}.items():
      out[f"{prefix}{name}.weight"] = (mod.scale, _identity)
      out[f"{prefix}{name}.bias"] = (mod.bias, _identity)
    for name, lin in {"attn.c_attn": self.c_attn, "attn.c_proj": self.attn_proj,
                      "mlp.c_fc": self.c_fc, "mlp.c_proj": self.mlp_proj}.items():
      out[f"{prefix}{name}.weight"] = (lin.kernel, _identity)  # Conv1D: [in, out]
      out[f"{prefix}{name}.bias"] = (lin.bias, _identity)
    return out


class GPT2(nnx.Module):
  """GPT-2 trunk: ``(input_ids_BxT, attention_mask_BxT) -> hidden_BxTxD``.

  Args:
    config: the architecture.
    num_layers: keep only the first k blocks (``None``: all), then ``ln_f``.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    remat: rematerialisation of each block in the backward pass, ``"none"``,
      ``"block"`` or ``"full"`` (see :mod:`w2sg_jax.models.remat`); the
      outputs do not depend on it. A plain attribute: it can also be set on a
      built model before ``nnx.split``.
    rngs: initialises the parameters (overwritten when weights are loaded).

  Parameters of block i carry ``depth_from_top = k - i`` (1 for the top
  block); ``ln_f`` carries 1, so it trains together with the top block under
  :func:`w2sg_jax.models.trainable_filter`.
  """

  def __init__(
      self,
      config: GPT2Config,
      *,
      num_layers: int | None = None,
      dtype: Any = jnp.float32,
      remat: str = "none",
      rngs: nnx.Rngs,
  ):
    n = config.n_layer if num_layers is None else num_layers
    if not 0 <= n <= config.n_layer:
      raise ValueError(
          f"num_layers={num_layers} must be in [0, {config.n_layer}] (the"
          " checkpoint's n_layer)."
      )
    self.config = config
    self.num_layers = n
    self.dtype = dtype
    self.remat = remat_lib.check_remat(remat)
    kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.wte = nnx.Embed(config.vocab_size, config.n_embd, **kw)
    self.wpe = nnx.Embed(config.n_positions, config.n_embd, **kw)
    self.blocks = nnx.List([GPT2Block(config, dtype=dtype, rngs=rngs) for _ in range(n)])
    self.ln_f = nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, **kw)
    for i, block in enumerate(self.blocks):
      for _, v in nnx.iter_graph(block):
        if isinstance(v, nnx.Param):
          v.set_metadata(depth_from_top=n - i)
    for _, v in nnx.iter_graph(self.ln_f):
      if isinstance(v, nnx.Param):
        v.set_metadata(depth_from_top=1)

  @property
  def hidden_size(self) -> int:
    return self.config.n_embd

  def __call__(
      self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array
  ) -> jax.Array:
    """Returns the final hidden states ``[B, T, D]`` (after ``ln_f``).

    Padding may be on either side; positions where the mask is 0 hold values
    that callers must ignore.
    """
    t = input_ids_BxT.shape[1]
    if t > self.config.n_positions:
      raise ValueError(
          f"Sequence length {t} exceeds n_positions={self.config.n_positions};"
          " truncate the tokenizer output to at most that many tokens."
      )
    pos_BxT = positions_from_mask(attention_mask_BxT)
    x = parallel.constrain_batch(self.wte(input_ids_BxT) + self.wpe(pos_BxT))
    bias = causal_padding_bias(attention_mask_BxT)
    remat = remat_lib.check_remat(self.remat)
    for block in self.blocks:
      x = parallel.constrain_batch(remat_lib.call_block(block, remat, x, bias))
    return self.ln_f(x)

  def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """Next-token logits ``[B, T, V]`` (float32) from the tied embedding ``wte``."""
    w_VxD = self.wte.embedding[...]
    return jnp.einsum(
        "btd,vd->btv", hidden_BxTxD, w_VxD.astype(hidden_BxTxD.dtype),
        preferred_element_type=jnp.float32,
    )

  def hf_weight_map(self) -> WeightMap:
    """HF checkpoint name (without prefix) -> (parameter, numpy transform)."""
    out: WeightMap = {
        "wte.weight": (self.wte.embedding, _identity),
        "wpe.weight": (self.wpe.embedding, _identity),
        "ln_f.weight": (self.ln_f.scale, _identity),
        "ln_f.bias": (self.ln_f.bias, _identity),
    }
    for i, block in enumerate(self.blocks):
      out.update(block.hf_weight_map(f"h.{i}."))
    return out

  def hf_ignored(self, name: str) -> bool:
    """Whether a checkpoint tensor is deliberately unused (tied head, buffers,
    or a block beyond ``num_layers``)."""
    if HF_IGNORED.match(name):
      return True
    m = re.match(r"^h\.(\d+)\.", name)
    return bool(m) and int(m.group(1)) >= self.num_layers
