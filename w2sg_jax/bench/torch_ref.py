"""The PyTorch side of the training-step benchmark: the same models, plain ``nn.Module``.

BERT (post-LayerNorm, exact GELU, mean pooling) and GPT-2 (pre-LayerNorm,
tanh GELU, causal + padding mask, last-token pooling), each with the linear
classification head of :class:`w2sg_jax.models.SequenceClassifier`. Parameter
names follow the Hugging Face checkpoints, so :func:`copy_from_jax` fills them
from the JAX model through its ``hf_weight_map`` and both frameworks start
from the same numbers. ``transformers`` is not used.

Attention is ``F.scaled_dot_product_attention`` with an additive float mask,
what ``transformers`` uses by default; ``attention="math"`` spells it out as
matmul + softmax + matmul, the same ops as the JAX model, for the profile.

Only imported when torch is installed (the optional ``bench`` extra).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _attention(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, bias, kind: str):
  if kind == "sdpa":
    return F.scaled_dot_product_attention(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, attn_mask=bias)
  scores = q_BxHxTxK @ k_BxHxSxK.transpose(-1, -2) / math.sqrt(q_BxHxTxK.shape[-1])
  return torch.softmax(scores + bias, dim=-1) @ v_BxHxSxK


def _heads(x_BxTxD, h):
  b, t, d = x_BxTxD.shape
  return x_BxTxD.view(b, t, h, d // h).transpose(1, 2)


def _merge(x_BxHxTxK):
  b, h, t, k = x_BxHxTxK.shape
  return x_BxHxTxK.transpose(1, 2).reshape(b, t, h * k)


# ----------------------------------------------------------------------- BERT


class _BertSelf(nn.Module):
  def __init__(self, d):
    super().__init__()
    self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _BertAttnOut(nn.Module):
  def __init__(self, d, eps):
    super().__init__()
    self.dense = nn.Linear(d, d)
    self.LayerNorm = nn.LayerNorm(d, eps=eps)


class _BertAttention(nn.Module):
  def __init__(self, d, eps):
    super().__init__()
    self.self = _BertSelf(d)
    self.output = _BertAttnOut(d, eps)


class _Dense(nn.Module):
  def __init__(self, d_in, d_out):
    super().__init__()
    self.dense = nn.Linear(d_in, d_out)


class _BertOutput(nn.Module):
  def __init__(self, f, d, eps):
    super().__init__()
    self.dense = nn.Linear(f, d)
    self.LayerNorm = nn.LayerNorm(d, eps=eps)


class _BertLayer(nn.Module):
  def __init__(self, cfg, attention):
    super().__init__()
    d, f, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
    self.attention = _BertAttention(d, eps)
    self.intermediate = _Dense(d, f)
    self.output = _BertOutput(f, d, eps)
    self.h = cfg.num_attention_heads
    self.kind = attention

  def forward(self, x, bias):
    s = self.attention.self
    a = _attention(_heads(s.query(x), self.h), _heads(s.key(x), self.h), _heads(s.value(x), self.h), bias, self.kind)
    o = self.attention.output
    x = o.LayerNorm(x + o.dense(_merge(a)))
    h = F.gelu(self.intermediate.dense(x))
    return self.output.LayerNorm(x + self.output.dense(h))


class _BertEmbeddings(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    d = cfg.hidden_size
    self.word_embeddings = nn.Embedding(cfg.vocab_size, d)
    self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, d)
    self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
    self.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

  def forward(self, ids):
    t = ids.shape[1]
    x = self.word_embeddings(ids) + self.position_embeddings.weight[:t][None]
    return self.LayerNorm(x + self.token_type_embeddings.weight[0])


class _BertEncoder(nn.Module):
  def __init__(self, cfg, attention):
    super().__init__()
    self.layer = nn.ModuleList([_BertLayer(cfg, attention) for _ in range(cfg.num_hidden_layers)])


class TorchBertClassifier(nn.Module):
  """``(input_ids [B, T], attention_mask [B, T]) -> logits [B, C]``; mean pooling."""

  def __init__(self, cfg: Any, num_classes: int, attention: str = "sdpa"):
    super().__init__()
    self.embeddings = _BertEmbeddings(cfg)
    self.encoder = _BertEncoder(cfg, attention)
    self.classifier = nn.Linear(cfg.hidden_size, num_classes)

  def forward(self, input_ids, attention_mask):
    m = attention_mask.to(torch.float32)
    bias = ((1.0 - m) * torch.finfo(torch.float32).min)[:, None, None, :]
    x = self.embeddings(input_ids)
    for layer in self.encoder.layer:
      x = layer(x, bias)
    pooled = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1e-9)
    return self.classifier(pooled)


def bert_pooled(model: TorchBertClassifier, input_ids, attention_mask, layers) -> dict[int, Any]:
  """``{k: mean-pooled hidden state after layer k}`` in one forward (0 = embeddings), without autograd.

  The PyTorch twin of ``w2sg_jax.tasks.tweets.pooled_layers``.
  """
  with torch.inference_mode():
    m = attention_mask.to(torch.float32)
    bias = ((1.0 - m) * torch.finfo(torch.float32).min)[:, None, None, :]
    denom = m.sum(1, keepdim=True).clamp_min(1e-9)
    x = model.embeddings(input_ids)
    out = {}
    for depth in range(max(layers) + 1):
      if depth > 0:
        x = model.encoder.layer[depth - 1](x, bias)
      if depth in layers:
        out[depth] = (x * m[..., None]).sum(1) / denom
    return out


def bert_pooled_packed(model: TorchBertClassifier, input_ids, segments, positions, layers, max_segments: int):
  """The packed pass (``w2sg_jax.tasks.tweets.packed_pooled_layers``): ``{k: [B, max_segments, D]}``.

  Several texts per row: block-diagonal attention, positions restarting per text.
  """
  with torch.inference_mode():
    emb = model.embeddings
    x = emb.word_embeddings(input_ids) + emb.position_embeddings(positions) + emb.token_type_embeddings.weight[0]
    x = emb.LayerNorm(x)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    bias = torch.zeros(same.shape, dtype=torch.float32).masked_fill(~same, torch.finfo(torch.float32).min)[:, None]
    member = (segments[:, None, :] == torch.arange(1, max_segments + 1)[None, :, None]).to(torch.float32)
    count = member.sum(-1, keepdim=True).clamp_min(1e-9)
    out = {}
    for depth in range(max(layers) + 1):
      if depth > 0:
        x = model.encoder.layer[depth - 1](x, bias)
      if depth in layers:
        out[depth] = torch.einsum("bst,btd->bsd", member, x) / count
    return out


# ---------------------------------------------------------------------- GPT-2


class Conv1D(nn.Module):
  """GPT-2's linear layer: weight ``[in, out]``, ``y = x W + b`` (as in the checkpoints)."""

  def __init__(self, d_in, d_out):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(d_in, d_out).normal_(std=0.02))
    self.bias = nn.Parameter(torch.zeros(d_out))

  def forward(self, x):
    out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
    return out.view(*x.shape[:-1], -1)


class _GPT2Attn(nn.Module):
  def __init__(self, d):
    super().__init__()
    self.c_attn, self.c_proj = Conv1D(d, 3 * d), Conv1D(d, d)


class _GPT2MLP(nn.Module):
  def __init__(self, d, f):
    super().__init__()
    self.c_fc, self.c_proj = Conv1D(d, f), Conv1D(f, d)


class _GPT2Block(nn.Module):
  def __init__(self, cfg, attention):
    super().__init__()
    d = cfg.n_embd
    self.ln_1 = nn.LayerNorm(d, eps=cfg.layer_norm_epsilon)
    self.attn = _GPT2Attn(d)
    self.ln_2 = nn.LayerNorm(d, eps=cfg.layer_norm_epsilon)
    self.mlp = _GPT2MLP(d, cfg.inner_size)
    self.h = cfg.n_head
    self.kind = attention

  def forward(self, x, bias):
    q, k, v = self.attn.c_attn(self.ln_1(x)).split(x.shape[-1], dim=-1)
    a = _attention(_heads(q, self.h), _heads(k, self.h), _heads(v, self.h), bias, self.kind)
    x = x + self.attn.c_proj(_merge(a))
    return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT2Classifier(nn.Module):
  """``(input_ids [B, T], attention_mask [B, T]) -> logits [B, C]``; last real token."""

  def __init__(self, cfg: Any, num_classes: int, attention: str = "sdpa"):
    super().__init__()
    d = cfg.n_embd
    self.wte = nn.Embedding(cfg.vocab_size, d)
    self.wpe = nn.Embedding(cfg.n_positions, d)
    self.h = nn.ModuleList([_GPT2Block(cfg, attention) for _ in range(cfg.n_layer)])
    self.ln_f = nn.LayerNorm(d, eps=cfg.layer_norm_epsilon)
    self.classifier = nn.Linear(d, num_classes)

  def forward(self, input_ids, attention_mask):
    t = input_ids.shape[1]
    m = attention_mask.to(torch.bool)
    pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
    keep = causal[None, None] & m[:, None, None, :]
    bias = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)
    x = self.wte(input_ids) + self.wpe(pos)
    for block in self.h:
      x = block(x, bias)
    x = self.ln_f(x)
    last = torch.where(m, torch.arange(t), -1).argmax(-1)
    pooled = x[torch.arange(x.shape[0]), last]
    return self.classifier(pooled)


# ------------------------------------------------------------------- weights


def copy_from_jax(torch_model: nn.Module, jax_classifier: Any) -> None:
  """Copies every parameter of a JAX ``SequenceClassifier`` (linear head) into ``torch_model``.

  The encoder goes through its ``hf_weight_map`` (HF name -> (param,
  transform)); BERT's transform transposes ``[out, in]`` to ``[in, out]``, so
  the copy transposes back. The head's ``[D, C]`` kernel becomes the
  ``[C, D]`` weight of ``classifier``.
  """
  own = dict(torch_model.named_parameters())
  done = set()
  with torch.no_grad():
    for name, (var, transform) in jax_classifier.encoder.hf_weight_map().items():
      value = np.asarray(var[...], np.float32)
      if transform.__name__ == "_transpose":
        value = value.T
      if name not in own:
        raise KeyError(f"torch model has no parameter {name!r}; the two definitions drifted apart.")
      own[name].copy_(torch.from_numpy(np.array(value, np.float32, copy=True)))
      done.add(name)
    head = jax_classifier.head
    if len(head.hidden):
      raise ValueError("copy_from_jax handles a linear head only (hidden_sizes=()).")
    own["classifier.weight"].copy_(torch.from_numpy(np.array(np.asarray(head.out.kernel[...]).T, np.float32, copy=True)))
    own["classifier.bias"].copy_(torch.from_numpy(np.array(head.out.bias[...], np.float32, copy=True)))
    done |= {"classifier.weight", "classifier.bias"}
  missing = sorted(set(own) - done)
  if missing:
    raise KeyError(f"torch parameters not filled from JAX: {missing[:5]}")


# ---------------------------------------------------------------------- loss


def js_loss(logits_BxC, p_BxC):
  """Mean Jensen-Shannon divergence, written like ``w2sg_jax.losses.js``."""
  log_q = torch.log_softmax(logits_BxC, -1)
  log_m = torch.logaddexp(torch.log(p_BxC), log_q) - math.log(2.0)
  kl_pm = (torch.special.xlogy(p_BxC, p_BxC) - p_BxC * log_m).sum(-1)
  kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
  return (0.5 * (kl_pm + kl_qm)).mean()


def make_step(model: nn.Module, *, lr: float, weight_decay: float, grad_clip: float, compile_model: bool = False):
  """``step(ids, mask, targets) -> loss`` doing forward, backward, clip and AdamW.

  With ``compile_model`` the forward (and through AOTAutograd the backward) is
  ``torch.compile``d; the optimizer stays eager (``foreach``), as in most
  training scripts.
  """
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-8)
  fwd = torch.compile(model) if compile_model else model

  def step(ids, mask, targets):
    opt.zero_grad(set_to_none=True)
    loss = js_loss(fwd(ids, mask), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()

  return step, opt


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, int]:
  """(parameter bytes, optimizer-state bytes) after at least one step."""
  params = sum(p.numel() * p.element_size() for p in model.parameters())
  opt_bytes = 0
  for s in opt.state.values():
    for v in s.values():
      if torch.is_tensor(v):
        opt_bytes += v.numel() * v.element_size()
  return params, opt_bytes
