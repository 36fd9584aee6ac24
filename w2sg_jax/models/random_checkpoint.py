r"""Tiny random Hugging Face checkpoints, built in code from a spec string.

A *spec* names a family and overrides of its tiny defaults::

  random:<family>[?key=value[&key=value...]]

  random:llama
  random:qwen2?hidden_size=64&num_key_value_heads=1&seed=3
  random:llama?rope_type=llama3&rope_theta=2500&original_max_position_embeddings=512

Families: ``llama``, ``qwen2``, ``gpt_neox`` and ``gpt2`` (:data:`FAMILIES`).
Keys (the allowed set depends on the family; :data:`DEFAULTS` lists each
family's keys with their defaults, a tiny model 32 wide and 2 layers deep):

* sizes: ``vocab_size``, ``hidden_size``, ``num_hidden_layers``,
  ``num_attention_heads``, ``num_key_value_heads`` (llama, qwen2),
  ``head_dim`` (llama, qwen2), ``intermediate_size``,
  ``max_position_embeddings``;
* RoPE (llama, qwen2, gpt_neox): ``rope_theta``, ``rope_type``
  (``default``, ``linear`` or ``llama3``), ``rope_factor``,
  ``low_freq_factor``, ``high_freq_factor``,
  ``original_max_position_embeddings``; ``rotary_pct`` (gpt_neox);
* options: ``norm_eps``, ``hidden_act``, ``attention_bias``, ``mlp_bias``,
  ``tie_word_embeddings``, ``use_parallel_residual``, ``add_bos_token``
  (the tokenizer prepends ``<s>``, as Llama 3's does);
* the weights: ``seed`` (>= 0), ``std`` (their scale; default
  ``hidden_size ** -0.5``), ``dtype`` (``float32``, ``bfloat16`` or
  ``float16``) and ``shards`` (1: ``model.safetensors``; more: that many
  ``model-0000i-of-0000n.safetensors`` and ``model.safetensors.index.json``).

Keys are the same for every family; ``config.json`` gets each family's own
names (GPT-2's ``n_embd``, GPT-NeoX's ``rotary_emb_base``, ...). An unknown
family or key, or a value of the wrong type, raises a ``ValueError`` naming
the allowed ones.

**What is written** (:func:`write_checkpoint`): ``config.json`` (the hub's
style: ``rope_theta`` and ``rope_scaling``), the weights under exactly the
names and shapes ``save_pretrained`` of transformers gives that config (an
untied ``lm_head`` / ``embed_out`` included, the tied copy left out),
``tokenizer.json`` and ``w2sg_random_checkpoint.json`` (the spec and the
files' sizes and sha256).

**Byte-identical everywhere.** Each tensor is drawn from its own stream,
seeded by the sha256 of ``(seed, family, name, shape)``: splitmix64 computed
in numpy's wrapping uint64 arithmetic, its top 53 bits made a float64 in
[0, 1), then scaled to a uniform of standard deviation ``std`` (biases) or
``1 + std u`` (norm scales) and rounded once to ``dtype``. Only exact IEEE
operations are involved, and neither numpy's distributions nor JAX, so the
same spec gives the same bytes on every machine and library version (the
tests pin the digests). The safetensors files and ``tokenizer.json`` are
serialised here, not by their libraries, for the same reason.

**The tokenizer** is byte-level BPE without merges: GPT-2's 256 byte symbols
with GPT-2's ids (``"!"`` is 0), then ``<s>``, ``</s>`` and ``<pad>`` (256,
257, 258; the config's ``bos/eos/pad_token_id``). Each UTF-8 byte is one
token, so no training data or download is needed; ``vocab_size`` may exceed
the 259 ids (real checkpoints pad their embeddings too).

**Resolving** (:func:`materialize`, which
:func:`w2sg_jax.models.pretrained.resolve_checkpoint_dir` calls for a spec):
the folder is ``<cache>/<family>-<sha256 of the canonical spec>``, with
``<cache>`` = ``$W2SG_RANDOM_CHECKPOINTS`` or
``$XDG_CACHE_HOME/w2sg_jax/random_checkpoints`` (``~/.cache`` by default). It
is written under a file lock into a temp sibling and renamed into place, so
concurrent processes build it once and never see half of it, and it is reused
while its files have the recorded sizes. ``FORMAT_VERSION`` enters the hash:
a change to the generator gives new folders, never stale ones.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "DEFAULTS",
    "FAMILIES",
    "FORMAT_VERSION",
    "PREFIX",
    "RandomSpec",
    "default_cache_dir",
    "is_random_spec",
    "materialize",
    "parse_spec",
    "tokenizer_json",
    "write_checkpoint",
]

PREFIX = "random:"
# Bump when the files written for a spec change: it enters every folder's hash.
FORMAT_VERSION = 1
CACHE_ENV = "W2SG_RANDOM_CHECKPOINTS"
MARKER = "w2sg_random_checkpoint.json"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
NUM_TOKENS = 259  # 256 byte symbols + the three specials.

_SIZES = dict(vocab_size=320, hidden_size=32, num_hidden_layers=2, intermediate_size=64)
_WEIGHTS = dict(seed=0, std=None, dtype="float32", shards=1)
_ROPE = dict(rope_theta=10000.0, rope_type="default", rope_factor=8.0, low_freq_factor=1.0,
             high_freq_factor=4.0, original_max_position_embeddings=8192)

# Each family's keys and tiny defaults (the committed fixtures' sizes).
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        **_SIZES, num_attention_heads=4, num_key_value_heads=2, head_dim=None,
        max_position_embeddings=2048, norm_eps=1e-5, hidden_act="silu", **_ROPE,
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, add_bos_token=True, **_WEIGHTS,
    ),
    "qwen2": dict(
        **_SIZES, num_attention_heads=4, num_key_value_heads=2, head_dim=None,
        max_position_embeddings=32768, norm_eps=1e-6, hidden_act="silu", **_ROPE,
        tie_word_embeddings=True, add_bos_token=False, **_WEIGHTS,
    ),
    "gpt_neox": dict(
        **_SIZES, num_attention_heads=2, max_position_embeddings=2048, norm_eps=1e-5,
        hidden_act="gelu", **_ROPE, rotary_pct=0.25, attention_bias=True,
        use_parallel_residual=True, tie_word_embeddings=False, add_bos_token=False, **_WEIGHTS,
    ),
    "gpt2": dict(
        **{**_SIZES, "intermediate_size": None}, num_attention_heads=4,
        max_position_embeddings=1024, norm_eps=1e-5, hidden_act="gelu_new",
        add_bos_token=False, **_WEIGHTS,
    ),
}
FAMILIES = tuple(sorted(DEFAULTS))

# The type of every key (those whose default is None need it spelled out).
_TYPES: dict[str, type] = {
    **{k: int for k in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                        "num_attention_heads", "num_key_value_heads", "head_dim",
                        "max_position_embeddings", "original_max_position_embeddings", "seed", "shards")},
    **{k: float for k in ("norm_eps", "rope_theta", "rope_factor", "low_freq_factor",
                          "high_freq_factor", "rotary_pct", "std")},
    **{k: bool for k in ("attention_bias", "mlp_bias", "tie_word_embeddings",
                         "use_parallel_residual", "add_bos_token")},
    **{k: str for k in ("rope_type", "hidden_act", "dtype")},
}
_DTYPES = {"float32": ("F32", np.dtype(np.float32)), "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
           "float16": ("F16", np.dtype(np.float16))}
_ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_ONLY = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


# ----------------------------------------------------------------- the spec


def _format(value: Any) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  return repr(value) if isinstance(value, float) else str(value)


def _coerce(family: str, key: str, value: Any) -> Any:
  """``value`` (a string from a spec, or a Python value) as ``key``'s type."""
  kind = _TYPES[key]
  if value is None and DEFAULTS[family][key] is None:
    return None
  try:
    if isinstance(value, str) and kind is not str:
      if kind is bool:
        return _BOOLS[value.lower()]
      return kind(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
      return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      raise TypeError
    return value
  except (KeyError, TypeError, ValueError):
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
    raise ValueError(f"{PREFIX}{family}: {key}={value!r} must be {expected}.") from None


@dataclasses.dataclass(frozen=True)
class RandomSpec:
  """A validated spec: the family and every one of its keys, defaults filled in.

  Build it with :func:`parse_spec` (from a string) or :meth:`make` (from
  keyword overrides). ``str(spec)`` is the canonical string (the non-default
  keys, sorted); :attr:`key` the sha256 that names its folder.
  """

  family: str
  params: tuple[tuple[str, Any], ...]  # All of DEFAULTS[family]'s keys, sorted.

  @classmethod
  def make(cls, family: str, **overrides: Any) -> "RandomSpec":
    """The spec of ``family`` with ``overrides`` (spec keys) on its defaults.

    Raises:
      ValueError: an unknown family or key, a value of the wrong type, or an
        inconsistent architecture (the message names what is allowed).
    """
    if family not in DEFAULTS:
      raise ValueError(
          f"Unknown random checkpoint family {family!r}; the families are {', '.join(FAMILIES)}"
          f" (a spec reads {PREFIX}<family>?key=value&...)."
      )
    defaults = DEFAULTS[family]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
      raise ValueError(
          f"{PREFIX}{family} does not take {', '.join(map(repr, unknown))}; its keys are"
          f" {', '.join(sorted(defaults))}."
      )
    params = dict(defaults)
    params.update({k: _coerce(family, k, v) for k, v in overrides.items()})
    _validate(family, params, set(overrides))
    return cls(family, tuple(sorted(params.items())))

  def __getitem__(self, key: str) -> Any:
    return dict(self.params)[key]

  def __str__(self) -> str:
    defaults = DEFAULTS[self.family]
    changed = [f"{k}={_format(v)}" for k, v in self.params if v != defaults[k]]
    return PREFIX + self.family + ("?" + "&".join(changed) if changed else "")

  @property
  def key(self) -> str:
    """sha256 of the family, every key's value and :data:`FORMAT_VERSION`."""
    text = json.dumps({"family": self.family, "format_version": FORMAT_VERSION, "params": dict(self.params)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

  @property
  def folder_name(self) -> str:
    return f"{self.family}-{self.key}"

  # -- what the spec describes

  @functools.cached_property
  def _layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
    return _layout(self.family, dict(self.params))

  def hf_config(self) -> dict[str, Any]:
    """The ``config.json`` contents, in the family's own names."""
    return _hf_config(self.family, dict(self.params))

  def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape, sorted by name: what ``save_pretrained`` writes."""
    return {name: shape for name, (shape, _) in sorted(self._layout.items())}

  def tensor(self, name: str) -> np.ndarray:
    """The named tensor's random values, in the spec's ``dtype``."""
    shape, kind = self._layout[name]
    return _draw(self, name, shape, kind)

  def tensors(self) -> dict[str, np.ndarray]:
    """Every tensor (sorted by name); for tiny specs, as it holds them all."""
    return {name: self.tensor(name) for name in self.tensor_shapes()}


def is_random_spec(value: Any) -> bool:
  """Whether ``value`` is a string that starts with ``random:``."""
  return isinstance(value, str) and value.startswith(PREFIX)


def parse_spec(spec: "str | RandomSpec") -> RandomSpec:
  """The :class:`RandomSpec` of ``random:<family>?key=value&...``.

  Raises:
    ValueError: not a ``random:`` string, a malformed or repeated
      ``key=value``, an unknown family or key, or a bad value.
  """
  if isinstance(spec, RandomSpec):
    return spec
  if not is_random_spec(spec):
    raise ValueError(f"{spec!r} is not a random checkpoint spec ({PREFIX}<family>?key=value&...).")
  family, _, query = spec[len(PREFIX):].partition("?")
  overrides: dict[str, str] = {}
  for item in query.split("&") if query else ():
    key, eq, value = item.partition("=")
    if not eq or not key or not value:
      raise ValueError(f"{spec!r}: {item!r} is not key=value (a spec reads {PREFIX}<family>?key=value&...).")
    if key in overrides:
      raise ValueError(f"{spec!r}: key {key!r} is given twice.")
    overrides[key] = value
  return RandomSpec.make(family, **overrides)


def _validate(family: str, p: dict[str, Any], given: set[str]) -> None:
  """Checks the architecture is consistent; raises ``ValueError`` saying what to change."""
  where = f"{PREFIX}{family}"
  for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
            "shards", "num_key_value_heads", "head_dim", "intermediate_size", "original_max_position_embeddings"):
    if k in p and p[k] is not None and p[k] < 1:
      raise ValueError(f"{where}: {k}={p[k]} must be >= 1.")
  for k in ("std", "norm_eps", "rope_theta", "rope_factor"):
    if k in p and p[k] is not None and not (math.isfinite(p[k]) and p[k] > 0):
      raise ValueError(f"{where}: {k}={p[k]} must be a finite number > 0.")
  if not 0 <= p["seed"] < 2**63:
    raise ValueError(f"{where}: seed={p['seed']} must be in [0, 2**63).")
  if p["vocab_size"] < NUM_TOKENS:
    raise ValueError(
        f"{where}: vocab_size={p['vocab_size']} is smaller than the tokenizer's {NUM_TOKENS} ids"
        f" (256 bytes and {BOS}, {EOS}, {PAD}); use vocab_size >= {NUM_TOKENS}."
    )
  if p["dtype"] not in _DTYPES:
    raise ValueError(f"{where}: dtype={p['dtype']!r}; use one of {', '.join(_DTYPES)}.")
  d, h = p["hidden_size"], p["num_attention_heads"]
  if p.get("head_dim") is None and d % h:
    raise ValueError(f"{where}: hidden_size={d} is not a multiple of num_attention_heads={h}"
                     + ("; set head_dim to decouple them." if "head_dim" in p else "."))
  g = p.get("num_key_value_heads")
  if g is not None and h % g:
    raise ValueError(f"{where}: num_attention_heads={h} is not a multiple of num_key_value_heads={g}.")
  if "rope_type" in p:
    if p["rope_type"] not in _ROPE_TYPES:
      raise ValueError(f"{where}: rope_type={p['rope_type']!r}; use one of {', '.join(_ROPE_TYPES)}.")
    unused = {"default": ("rope_factor", *_LLAMA3_ONLY), "linear": _LLAMA3_ONLY, "llama3": ()}[p["rope_type"]]
    if given & set(unused):
      raise ValueError(
          f"{where}: {', '.join(sorted(given & set(unused)))} has no effect with rope_type="
          f"{p['rope_type']!r}; rope_factor needs 'linear' or 'llama3', and {', '.join(_LLAMA3_ONLY)}"
          " need 'llama3'."
      )
    if p["rope_type"] == "llama3" and not p["high_freq_factor"] > p["low_freq_factor"] > 0:
      raise ValueError(f"{where}: llama3 rope needs high_freq_factor > low_freq_factor > 0.")
  if family == "gpt_neox":
    rotary = int(d // h * p["rotary_pct"])
    if not 0 < p["rotary_pct"] <= 1 or rotary % 2:
      raise ValueError(
          f"{where}: rotary_pct={p['rotary_pct']} rotates {rotary} of each head's {d // h} dimensions;"
          " it must be in (0, 1] and rotate an even number."
      )
  tensors = len(_layout(family, p))
  if p["shards"] > tensors:
    raise ValueError(f"{where}: shards={p['shards']} exceeds the checkpoint's {tensors} tensors.")
  # The loaders' own checks (activations, rope types): one source of truth.
  from w2sg_jax.models import gpt2, gpt_neox, llama  # pylint: disable=g-import-not-at-top

  from_hf = {"llama": llama.LlamaConfig.from_hf, "qwen2": llama.LlamaConfig.from_hf,
             "gpt_neox": gpt_neox.GPTNeoXConfig.from_hf, "gpt2": gpt2.GPT2Config.from_hf}[family]
  try:
    from_hf(_hf_config(family, p))
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None


# ------------------------------------------------------------- config.json


def _rope_scaling(p: dict[str, Any]) -> dict[str, Any] | None:
  if p["rope_type"] == "default":
    return None
  scaling = {"rope_type": p["rope_type"], "factor": p["rope_factor"]}
  if p["rope_type"] == "llama3":
    scaling.update({k: p[k] for k in _LLAMA3_ONLY})
  return scaling


def _hf_config(family: str, p: dict[str, Any]) -> dict[str, Any]:
  common = {"vocab_size": p["vocab_size"], "bos_token_id": NUM_TOKENS - 3, "eos_token_id": NUM_TOKENS - 2,
            "pad_token_id": NUM_TOKENS - 1, "torch_dtype": p["dtype"], "initializer_range": _std(p),
            "use_cache": True}
  if family == "gpt2":
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
            "n_embd": p["hidden_size"], "n_layer": p["num_hidden_layers"], "n_head": p["num_attention_heads"],
            "n_inner": p["intermediate_size"], "n_positions": p["max_position_embeddings"],
            "activation_function": p["hidden_act"],
            "layer_norm_epsilon": p["norm_eps"], "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "tie_word_embeddings": True}
  sizes = {k: p[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                             "max_position_embeddings")}
  if family == "gpt_neox":
    return {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", **common, **sizes,
            "hidden_act": p["hidden_act"], "layer_norm_eps": p["norm_eps"], "rotary_pct": p["rotary_pct"],
            "rotary_emb_base": p["rope_theta"], "rope_scaling": _rope_scaling(p),
            "use_parallel_residual": p["use_parallel_residual"], "attention_bias": p["attention_bias"],
            "attention_dropout": 0.0, "hidden_dropout": 0.0, "tie_word_embeddings": p["tie_word_embeddings"]}
  # transformers writes Llama's head_dim always, Qwen2's only when it was set.
  head_dim = p["head_dim"] or (p["hidden_size"] // p["num_attention_heads"] if family == "llama" else None)
  cfg = {"model_type": family, **common, **sizes, "num_key_value_heads": p["num_key_value_heads"],
         **({"head_dim": head_dim} if head_dim else {}), "hidden_act": p["hidden_act"], "rms_norm_eps": p["norm_eps"],
         "rope_theta": p["rope_theta"], "rope_scaling": _rope_scaling(p), "attention_dropout": 0.0,
         "tie_word_embeddings": p["tie_word_embeddings"]}
  if family == "llama":
    return {"architectures": ["LlamaForCausalLM"], **cfg, "attention_bias": p["attention_bias"],
            "mlp_bias": p["mlp_bias"], "pretraining_tp": 1}
  return {"architectures": ["Qwen2ForCausalLM"], **cfg, "use_sliding_window": False, "sliding_window": None,
          "max_window_layers": p["num_hidden_layers"]}


# ----------------------------------------------------------------- weights


def _std(p: dict[str, Any]) -> float:
  # sqrt and division are correctly rounded everywhere (pow need not be).
  return p["std"] if p["std"] is not None else 1.0 / math.sqrt(p["hidden_size"])


def _layout(family: str, p: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
  """Checkpoint name -> (shape, kind) with kind ``weight``, ``bias`` or ``scale``.

  Linear weights are torch's ``[out, in]``, except GPT-2's Conv1D ``[in, out]``.
  """
  v, d, n, f = p["vocab_size"], p["hidden_size"], p["num_hidden_layers"], p["intermediate_size"]
  out: dict[str, tuple[tuple[int, ...], str]] = {}

  def linear(name: str, d_in: int, d_out: int, bias: bool, conv1d: bool = False) -> None:
    out[f"{name}.weight"] = ((d_in, d_out) if conv1d else (d_out, d_in), "weight")
    if bias:
      out[f"{name}.bias"] = ((d_out,), "bias")

  def norm(name: str, bias: bool) -> None:
    out[f"{name}.weight"] = ((d,), "scale")
    if bias:
      out[f"{name}.bias"] = ((d,), "bias")

  if family == "gpt2":
    f = f or 4 * d
    out["transformer.wte.weight"] = ((v, d), "weight")
    out["transformer.wpe.weight"] = ((p["max_position_embeddings"], d), "weight")
    for i in range(n):
      pre = f"transformer.h.{i}."
      norm(pre + "ln_1", True)
      linear(pre + "attn.c_attn", d, 3 * d, True, conv1d=True)
      linear(pre + "attn.c_proj", d, d, True, conv1d=True)
      norm(pre + "ln_2", True)
      linear(pre + "mlp.c_fc", d, f, True, conv1d=True)
      linear(pre + "mlp.c_proj", f, d, True, conv1d=True)
    norm("transformer.ln_f", True)
  elif family == "gpt_neox":
    out["gpt_neox.embed_in.weight"] = ((v, d), "weight")
    for i in range(n):
      pre = f"gpt_neox.layers.{i}."
      norm(pre + "input_layernorm", True)
      norm(pre + "post_attention_layernorm", True)
      linear(pre + "attention.query_key_value", d, 3 * d, p["attention_bias"])
      linear(pre + "attention.dense", d, d, p["attention_bias"])
      linear(pre + "mlp.dense_h_to_4h", d, f, True)
      linear(pre + "mlp.dense_4h_to_h", f, d, True)
    norm("gpt_neox.final_layer_norm", True)
    if not p["tie_word_embeddings"]:
      out["embed_out.weight"] = ((v, d), "weight")
  else:
    h, g = p["num_attention_heads"], p["num_key_value_heads"]
    k = p["head_dim"] or d // h
    qkv_bias = family == "qwen2" or p["attention_bias"]
    o_bias = family == "llama" and p["attention_bias"]
    mlp_bias = family == "llama" and p["mlp_bias"]
    out["model.embed_tokens.weight"] = ((v, d), "weight")
    for i in range(n):
      pre = f"model.layers.{i}."
      norm(pre + "input_layernorm", False)
      linear(pre + "self_attn.q_proj", d, h * k, qkv_bias)
      linear(pre + "self_attn.k_proj", d, g * k, qkv_bias)
      linear(pre + "self_attn.v_proj", d, g * k, qkv_bias)
      linear(pre + "self_attn.o_proj", h * k, d, o_bias)
      norm(pre + "post_attention_layernorm", False)
      linear(pre + "mlp.gate_proj", d, f, mlp_bias)
      linear(pre + "mlp.up_proj", d, f, mlp_bias)
      linear(pre + "mlp.down_proj", f, d, mlp_bias)
    norm("model.norm", False)
    if not p["tie_word_embeddings"]:
      out["lm_head.weight"] = ((v, d), "weight")
  return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 20


def _uniform01(base: int, start: int, count: int) -> np.ndarray:
  """``count`` float64 in [0, 1): splitmix64 outputs ``start .. start+count-1`` of stream ``base``."""
  with np.errstate(over="ignore"):
    i = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    z = np.uint64(base) + i * _GOLDEN  # Wraps modulo 2**64, as splitmix64 intends.
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
  return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53  # Exact: 53-bit integers.


def _draw(spec: RandomSpec, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
  """One tensor: ``std u`` (weights, biases) or ``1 + std u`` (norm scales), u uniform with variance 1."""
  p = dict(spec.params)
  tag = json.dumps([p["seed"], spec.family, name, list(shape)], separators=(",", ":"))
  base = int.from_bytes(hashlib.sha256(tag.encode("utf-8")).digest()[:8], "little")
  half_width = _std(p) * math.sqrt(3.0)  # U(-a, a) has standard deviation a / sqrt(3).
  count = math.prod(shape)
  out = np.empty(count, _DTYPES[p["dtype"]][1])
  for start in range(0, count, _CHUNK):
    x = (2.0 * _uniform01(base, start, min(_CHUNK, count - start)) - 1.0) * half_width
    out[start:start + len(x)] = 1.0 + x if kind == "scale" else x
  return out.reshape(shape)


def _safetensors_header(shapes: dict[str, tuple[int, ...]], dtype: str) -> tuple[bytes, list[str]]:
  """The 8-byte length and JSON header of a file holding ``shapes`` in name order.

  Laid out as the safetensors library writes it: ``__metadata__`` first,
  tensors contiguous in name order, the header padded with spaces to a
  multiple of 8 bytes.
  """
  code, np_dtype = _DTYPES[dtype]
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset, names = 0, sorted(shapes)
  for name in names:
    size = math.prod(shapes[name]) * np_dtype.itemsize
    header[name] = {"dtype": code, "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
    offset += size
  text = json.dumps(header, separators=(",", ":")).encode("utf-8")
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text, names


def _write_safetensors(path: Path, spec: RandomSpec, shapes: dict[str, tuple[int, ...]]) -> None:
  head, names = _safetensors_header(shapes, spec["dtype"])
  with open(path, "wb") as fh:
    fh.write(head)
    for name in names:  # One tensor in memory at a time.
      fh.write(np.ascontiguousarray(spec.tensor(name)).tobytes())


def _shard(shapes: dict[str, tuple[int, ...]], n: int) -> list[dict[str, tuple[int, ...]]]:
  """``n`` non-empty groups, contiguous in name order, of about equal size."""
  names = sorted(shapes)
  if n > len(names):
    raise ValueError(f"shards={n} exceeds the checkpoint's {len(names)} tensors.")
  sizes = [math.prod(shapes[k]) for k in names]
  total, done = sum(sizes), 0
  groups: list[dict[str, tuple[int, ...]]] = [{}]
  for j, name in enumerate(names):
    to_open = n - len(groups)
    # Next shard once this one holds its share, or when each tensor left needs a shard of its own.
    if groups[-1] and to_open and (done * n >= len(groups) * total or to_open >= len(names) - j):
      groups.append({})
    groups[-1][name] = shapes[name]
    done += sizes[j]
  return groups


# --------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> list[tuple[int, str]]:
  """GPT-2's byte -> printable symbol table, in GPT-2's id order (``"!"`` first)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = list(bs)
  extra = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + extra)
      extra += 1
  return [(b, chr(c)) for b, c in zip(bs, cs)]


def _added(token_id: int, content: str) -> dict[str, Any]:
  return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
          "normalized": False, "special": True}


def tokenizer_json(add_bos_token: bool = False) -> str:
  """``tokenizer.json``: byte-level BPE without merges, plus ``<s>``, ``</s>``, ``<pad>``.

  With ``add_bos_token`` a ``TemplateProcessing`` post-processor prepends
  ``<s>`` (id 256) to every text, as Llama 3's tokenizer prepends its own.
  Written here, in the format ``tokenizers`` reads (``Tokenizer.from_str``),
  so the bytes do not depend on the library's version.
  """
  byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
  bos = NUM_TOKENS - 3

  def special(template_id: str, type_id: int = 0) -> dict[str, Any]:
    return {"SpecialToken": {"id": template_id, "type_id": type_id}}

  def seq(seq_id: str, type_id: int) -> dict[str, Any]:
    return {"Sequence": {"id": seq_id, "type_id": type_id}}

  post = None
  if add_bos_token:
    post = {"type": "TemplateProcessing", "single": [special(BOS), seq("A", 0)],
            "pair": [special(BOS), seq("A", 0), special(BOS, 1), seq("B", 1)],
            "special_tokens": {BOS: {"id": BOS, "ids": [bos], "tokens": [BOS]}}}
  doc = {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": [_added(bos + i, t) for i, t in enumerate((BOS, EOS, PAD))],
      "normalizer": None,
      "pre_tokenizer": {"type": "ByteLevel", **byte_level},
      "post_processor": post,
      "decoder": {"type": "ByteLevel", **byte_level, "add_prefix_space": True},
      "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": {sym: i for i, (_, sym) in enumerate(_bytes_to_unicode())}, "merges": []},
  }
  return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


# ------------------------------------------------------------------ writing


def _file_record(path: Path) -> dict[str, Any]:
  h = hashlib.sha256()
  with open(path, "rb") as fh:
    for chunk in iter(lambda: fh.read(1 << 20), b""):
      h.update(chunk)
  return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def write_checkpoint(spec: "str | RandomSpec", folder: str | Path) -> Path:
  """Writes the checkpoint of ``spec`` into ``folder`` (created; files in it are overwritten).

  Writes ``config.json``, ``tokenizer.json``, ``model.safetensors`` (or the
  shards and ``model.safetensors.index.json`` when ``shards > 1``) and
  :data:`MARKER` (the canonical spec, its key and every file's size and
  sha256). Not atomic; :func:`materialize` is.

  Returns:
    ``folder`` as a ``Path``.

  Raises:
    ValueError: an invalid spec (see :func:`parse_spec`).
  """
  spec = parse_spec(spec)
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(spec.hf_config(), indent=2, sort_keys=True) + "\n")
  (folder / "tokenizer.json").write_bytes(tokenizer_json(spec["add_bos_token"]).encode("utf-8"))
  shapes = spec.tensor_shapes()
  n = spec["shards"]
  if n == 1:
    _write_safetensors(folder / "model.safetensors", spec, shapes)
  else:
    weight_map: dict[str, str] = {}
    for i, group in enumerate(_shard(shapes, n)):
      name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
      _write_safetensors(folder / name, spec, group)
      weight_map.update({k: name for k in group})
    itemsize = _DTYPES[spec["dtype"]][1].itemsize
    total = sum(math.prod(s) for s in shapes.values())
    index = {"metadata": {"total_parameters": total, "total_size": total * itemsize},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
  files = {f.name: _file_record(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != MARKER}
  marker = {"spec": str(spec), "key": spec.key, "format_version": FORMAT_VERSION, "files": files}
  (folder / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
  return folder


def default_cache_dir() -> Path:
  """``$W2SG_RANDOM_CHECKPOINTS``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/w2sg_jax/random_checkpoints``."""
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return Path(base).expanduser() / "w2sg_jax" / "random_checkpoints"


def _complete(folder: Path, spec: RandomSpec) -> bool:
  """The folder holds this spec's marker and every file it lists, at its recorded size."""
  try:
    marker = json.loads((folder / MARKER).read_text())
    return marker.get("key") == spec.key and all(
        (folder / name).stat().st_size == rec["size"] for name, rec in marker["files"].items()
    )
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return False


def _stale_temps(root: Path, name: str) -> Iterator[Path]:
  return (p for p in root.glob(f".{name}.tmp-*") if p.is_dir())


def materialize(spec: "str | RandomSpec", cache_dir: str | Path | None = None) -> Path:
  """The folder of ``spec``'s checkpoint, written once under ``cache_dir``.

  The folder is ``<cache_dir>/<family>-<sha256>`` (``cache_dir`` defaults to
  :func:`default_cache_dir`). A missing or incomplete one is written under a
  file lock into a temp sibling, then renamed into place; a present one is
  reused as it is.

  Raises:
    ValueError: an invalid spec (see :func:`parse_spec`).
  """
  import filelock  # pylint: disable=g-import-not-at-top

  spec = parse_spec(spec)
  root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  final = root / spec.folder_name
  if _complete(final, spec):
    return final
  root.mkdir(parents=True, exist_ok=True)
  with filelock.FileLock(str(root / f".{spec.folder_name}.lock")):
    if _complete(final, spec):  # Another process wrote it while this one waited.
      return final
    for stale in _stale_temps(root, spec.folder_name):  # Left by a killed writer; the lock is ours.
      shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder_name}.tmp-", dir=root))
    try:
      os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared read-only.
      write_checkpoint(spec, tmp)
      if final.exists():  # Incomplete (a file deleted or truncated): replace it.
        shutil.rmtree(final)
      os.rename(tmp, final)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  return final
