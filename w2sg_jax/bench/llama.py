"""The Llama row of the training-step benchmark (section a): w2sg-jax against ``transformers``.

A small but real-shaped Llama 3 trunk (GQA, SwiGLU, RMSNorm, ``llama3``
rope scaling, a 32k vocabulary) as a sequence classifier: last-token
pooling and a linear head, the ``js`` loss on soft targets, global-norm
clipping and AdamW, exactly like the MiniLM and GPT-2 rows of
:mod:`w2sg_jax.bench.step`. Unlike those rows, the PyTorch side is not a
re-implementation: it is ``transformers.LlamaModel`` itself (SDPA attention,
as ``transformers`` uses by default), filled with the JAX model's weights
through ``Llama.hf_weight_map``, with the same pooling and head.

This module supplies the pieces; ``step.py`` runs them with the other rows:

* :func:`spec`: the model and batch shape (``step.StepCase`` fields);
* :func:`param_count` and :func:`analytic_flops`: closed-form counts;
* :func:`hf_config`: the ``config.json`` of the same architecture;
* :func:`torch_classifier`: the ``transformers`` twin of a JAX classifier;
* :func:`forward_max_abs_diff`: how far the two forwards' logits lie apart.

torch and transformers are optional (the ``bench`` extra) and only imported
by :func:`torch_classifier`; everything else runs without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from w2sg_jax.models.llama import LlamaConfig, RopeConfig

# Llama 3's rope: theta 5e5, frequencies below 8192 / low_freq_factor tokens of
# wavelength divided by 8 (Llama 3.1's rope_scaling block).
LLAMA3_ROPE = RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192)

# 28M parameters: 16.4M in the embedding, 2.8M per layer. Head size 64 and
# four query heads per key/value head, as in Llama 3 8B.
BENCH_CONFIG = LlamaConfig(
    vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, rope=LLAMA3_ROPE,
)
# --quick: the same structure (GQA, llama3 rope), a few seconds to compile.
QUICK_CONFIG = LlamaConfig(
    vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope=LLAMA3_ROPE,
)
BATCH, SEQ = 8, 128
QUICK_BATCH, QUICK_SEQ = 8, 16


def spec(quick: bool) -> dict[str, Any]:
  """The fields of ``step.StepCase`` for the Llama row (``arch="llama"``)."""
  if quick:
    return {"name": "llama", "label": f"Llama (tiny, --quick) b{QUICK_BATCH} s{QUICK_SEQ}", "arch": "llama",
            "config": QUICK_CONFIG, "batch": QUICK_BATCH, "seq": QUICK_SEQ}
  c = BENCH_CONFIG
  return {"name": "llama",
          "label": (f"Llama ({param_count(c) / 1e6:.0f}M: {c.num_hidden_layers}x{c.hidden_size}, "
                    f"GQA {c.num_attention_heads}/{c.num_kv_heads}) b{BATCH} s{SEQ}"),
          "arch": "llama", "config": c, "batch": BATCH, "seq": SEQ}


# ------------------------------------------------------------------ counts


def _layer_matmul_params(c: LlamaConfig) -> int:
  """Weights of one block's matrix products: q, k, v, o and the three SwiGLU projections."""
  d, f, hk, gk = c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_size, c.num_kv_heads * c.head_size
  return d * hk + 2 * d * gk + hk * d + 3 * d * f


def param_count(c: LlamaConfig, num_classes: int | None = None) -> int:
  """Parameters of the trunk (bias-free, untied), plus a linear head when ``num_classes`` is given.

  .. math::

    N = V D + L\\,(D H K + 2 D G K + H K D + 3 D F + 2 D) + D \\;[+\\, D C + C]

  (V vocabulary, D width, L layers, H query and G key/value heads of size K,
  F SwiGLU width, C classes; ``2 D`` per layer and the final ``D`` are the
  RMSNorm scales).
  """
  if c.qkv_bias or c.o_bias or c.mlp_bias or c.tie_word_embeddings:
    raise ValueError("param_count counts the plain Llama shape: no biases, untied embeddings.")
  d = c.hidden_size
  n = c.vocab_size * d + c.num_hidden_layers * (_layer_matmul_params(c) + 2 * d) + d
  if num_classes is not None:
    n += d * num_classes + num_classes
  return n


def analytic_flops(c: LlamaConfig, batch: int, seq: int, num_classes: int) -> float:
  """FLOPs of one training step, ``6 N_matmul B T + 12 L B T^2 H K`` (see ``step.py``).

  ``N_matmul`` counts the blocks' projections (the embedding is a gather);
  the head runs once per example. Attention scores and their weighted sum
  cost ``4 B T^2 H K`` per layer forward, twice that backward; grouping the
  keys and values (GQA) does not shrink them.
  """
  tokens = batch * seq
  n_matmul = c.num_hidden_layers * _layer_matmul_params(c) + c.hidden_size * num_classes / seq
  return 6.0 * n_matmul * tokens + 12.0 * c.num_hidden_layers * batch * seq**2 * c.num_attention_heads * c.head_size


# ------------------------------------------------------------- transformers


def missing_reference(arch: str) -> str | None:
  """Why a row of architecture ``arch`` has no PyTorch side although torch imports; None if it has one.

  Only the Llama row needs more than torch: its reference is ``transformers``.
  """
  if arch != "llama":
    return None
  try:
    import transformers
  except ImportError:
    return "transformers not installed: pip install -e '.[bench]'"
  return None


def hf_config(c: LlamaConfig) -> dict[str, Any]:
  """The Hugging Face ``config.json`` of this architecture (``LlamaConfig.from_hf`` reads it back)."""
  rope: dict[str, Any] = {"rope_type": c.rope.rope_type, "rope_theta": c.rope.theta}
  if c.rope.rope_type != "default":
    rope["factor"] = c.rope.factor
  if c.rope.rope_type == "llama3":
    rope.update(low_freq_factor=c.rope.low_freq_factor, high_freq_factor=c.rope.high_freq_factor,
                original_max_position_embeddings=c.rope.original_max_position_embeddings)
  # transformers requires the scaled context to exceed the original one.
  max_pos = int(c.rope.original_max_position_embeddings * max(c.rope.factor, 1.0))
  return {
      "model_type": c.model_type, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
      "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
      "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_size, "rms_norm_eps": c.rms_norm_eps, "hidden_act": c.hidden_act,
      "attention_bias": c.qkv_bias, "mlp_bias": c.mlp_bias, "tie_word_embeddings": c.tie_word_embeddings,
      "max_position_embeddings": max_pos, "rope_theta": c.rope.theta, "rope_parameters": rope,
      "use_cache": False, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
  }


def torch_classifier(jax_classifier: Any, *, attn_implementation: str = "sdpa") -> Any:
  """``transformers.LlamaModel`` + last-token pooling + linear head, with the JAX model's weights.

  Args:
    jax_classifier: a :class:`~w2sg_jax.models.SequenceClassifier` over a
      :class:`~w2sg_jax.models.Llama` trunk with a linear head.
    attn_implementation: ``"sdpa"`` (transformers' default) or ``"eager"``.

  Returns:
    A ``torch.nn.Module`` mapping ``(input_ids [B, T], attention_mask [B, T])``
    to logits ``[B, C]`` (float32). Positions come from the mask,
    ``max(cumsum(m) - 1, 0)``, as in the JAX model.

  Raises:
    ModuleNotFoundError: torch or transformers is not installed (the ``bench`` extra).
    KeyError: a parameter has no counterpart on the other side.
  """
  import torch
  import transformers
  from torch import nn

  class TorchLlamaClassifier(nn.Module):
    """``transformers.LlamaModel`` -> hidden state of the last real token -> ``nn.Linear``."""

    def __init__(self, config: Mapping[str, Any], hidden_size: int, num_classes: int):
      super().__init__()
      cfg = transformers.LlamaConfig(**config)
      cfg._attn_implementation = attn_implementation
      self.model = transformers.LlamaModel(cfg)
      self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, input_ids, attention_mask):
      mask = attention_mask.long()
      pos = (mask.cumsum(-1) - 1).clamp_min(0)
      hidden = self.model(input_ids=input_ids.long(), attention_mask=mask, position_ids=pos,
                          use_cache=False).last_hidden_state
      t = hidden.shape[1]
      last = torch.where(mask.bool(), torch.arange(t, device=hidden.device), -1).argmax(-1)
      return self.classifier(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])

  encoder, head = jax_classifier.encoder, jax_classifier.head
  if len(head.hidden):
    raise ValueError("torch_classifier handles a linear head only (hidden_sizes=()).")
  if jax_classifier.pooling != "last":
    raise ValueError(f"torch_classifier pools the last real token; the JAX model pools {jax_classifier.pooling!r}.")
  cfg = encoder.config
  if encoder.num_layers != cfg.num_hidden_layers:
    cfg = dataclasses.replace(cfg, num_hidden_layers=encoder.num_layers)
  num_classes = head.out.kernel.shape[-1]
  tm = TorchLlamaClassifier(hf_config(cfg), cfg.hidden_size, num_classes)
  own = dict(tm.named_parameters())
  done = set()
  with torch.no_grad():
    for name, (var, transform) in encoder.hf_weight_map().items():
      # Each transform (identity, or [out, in] <-> [in, out]) is its own inverse.
      value = np.array(transform(np.asarray(var[...], np.float32)), np.float32, copy=True)
      key = "model." + name
      if key not in own:
        raise KeyError(f"transformers.LlamaModel has no parameter {name!r}; the two definitions drifted apart.")
      if tuple(own[key].shape) != value.shape:
        raise KeyError(f"{name}: shape {value.shape} from JAX, {tuple(own[key].shape)} in transformers.")
      own[key].copy_(torch.from_numpy(value))
      done.add(key)
    own["classifier.weight"].copy_(torch.from_numpy(np.array(np.asarray(head.out.kernel[...]).T, np.float32)))
    own["classifier.bias"].copy_(torch.from_numpy(np.array(head.out.bias[...], np.float32)))
    done |= {"classifier.weight", "classifier.bias"}
  missing = sorted(set(own) - done)
  if missing:
    raise KeyError(f"transformers parameters not filled from JAX: {missing[:5]}")
  return tm


def forward_max_abs_diff(jax_model: Any, torch_model: Any, batch: Mapping[str, np.ndarray]) -> float:
  """Max |logit difference| between the JAX and the PyTorch forward on one batch (no gradients)."""
  import torch

  logits_jax = np.asarray(jax_model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])))
  with torch.no_grad():
    logits_torch = torch_model(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
  return float(np.max(np.abs(logits_jax - logits_torch.numpy())))
