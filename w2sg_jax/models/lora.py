"""LoRA: low-rank adapters on the linear layers of a frozen encoder.

A wrapped linear layer computes

.. math::

  y = x W + b + \\frac{\\alpha}{r} \\, \\mathrm{drop}(x) \\, A B,
  \\qquad A \\in \\mathbb{R}^{d_\\text{in} \\times r},\\;
  B \\in \\mathbb{R}^{r \\times d_\\text{out}},

with ``A`` drawn as PEFT does (uniform in :math:`\\pm 1/\\sqrt{d_\\text{in}}`)
and ``B = 0``, so a freshly wrapped model computes exactly what the base does.
``A`` and ``B`` are stored in the ``nnx.Linear`` kernel layout ``[in, out]``
(PEFT's ``lora_A.weight`` is ``A.T``, its ``lora_B.weight`` is ``B.T``).

Adapters are :class:`LoRAParam` variables (a subclass of ``nnx.Param``), so a
filter selects them: :func:`lora_trainable_filter` picks the adapters plus the
task head, the only parameters a LoRA run trains. The base stays in its own
dtype (bfloat16 for a large model); adapters are float32 by default.

Typical use::

  encoder, tok = load_pretrained(path, dtype=jnp.bfloat16)
  model = RewardModel(encoder, rngs=nnx.Rngs(0))
  apply_lora(model, LoRAConfig(rank=8, alpha=16), rngs=nnx.Rngs(1))
  apply_fn, params, frozen = train.split_model(model, lora_trainable_filter())
  ...                                  # train params (adapters + head) only
  merge_lora(model)                    # optional: fold adapters into the weights

Target modules are named as in PEFT's ``target_modules``: the last component
of the linear layer's Hugging Face name (``q_proj``, ``query_key_value``,
``c_attn``, ...), read from the encoder's ``hf_weight_map``, or the NNX
attribute name for modules without one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from w2sg_jax.models.bert import Bert
from w2sg_jax.models.gpt2 import GPT2
from w2sg_jax.models.gpt_neox import GPTNeoX
from w2sg_jax.models.llama import Llama

# The attention and MLP projections of each encoder family.
DEFAULT_TARGETS: dict[type, tuple[str, ...]] = {
    Llama: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    GPTNeoX: ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    GPT2: ("c_attn", "c_proj", "c_fc"),
    Bert: ("query", "key", "value", "dense"),
}


class LoRAParam(nnx.Param):
  """An adapter weight (``lora_a`` or ``lora_b``); select with ``nnx.filterlib`` or
  :func:`lora_trainable_filter`."""


class LoRADropoutKey(nnx.Variable):
  """The PRNG key (raw ``uint32[2]``) of one adapter's dropout; set by :func:`set_lora_dropout`."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Which layers get adapters, and their shape.

  Attributes:
    rank: r, the inner width of each adapter (>= 1).
    alpha: scale numerator; the adapter output is multiplied by alpha / r.
    dropout: dropout rate on the adapter's input, in [0, 1); active only in
      training calls that pass a key (see :func:`set_lora_dropout`).
    target_modules: layer names to wrap (see the module doc); ``None`` picks
      the attention and MLP projections of the encoder's family
      (:data:`DEFAULT_TARGETS`).
    param_dtype: dtype of the adapter weights (float32 also under a
      bfloat16 base).
  """

  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  target_modules: tuple[str, ...] | None = None
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank={self.rank}; it must be at least 1.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout={self.dropout}; it must be in [0, 1).")
    if isinstance(self.target_modules, str):
      raise ValueError(
          f"target_modules={self.target_modules!r} is a string; pass a tuple of"
          " names, e.g. ('q_proj', 'v_proj')."
      )
    if self.target_modules is not None:
      object.__setattr__(self, "target_modules", tuple(self.target_modules))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LoRAConfig":
    """From a config block ``{rank, alpha, dropout, target_modules}`` (unknown keys are errors)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"Unknown LoRA settings {unknown}; expected some of {sorted(names)}.")
    return cls(**dict(d))


class LoRALinear(nnx.Module):
  """``base(x) + scale * drop(x) @ lora_a @ lora_b``, wrapping an ``nnx.Linear``.

  Args:
    base: the frozen layer (kept as ``self.base``, its parameters untouched).
    rank, alpha, dropout: see :class:`LoRAConfig`.
    param_dtype: dtype of ``lora_a`` and ``lora_b``.
    rngs: draws ``lora_a``.

  The adapter path runs in the input's dtype with float32 accumulation, and
  is added in the base output's dtype. ``lora_a`` and ``lora_b`` copy the
  base kernel's ``depth_from_top`` metadata.
  """

  def __init__(
      self,
      base: nnx.Linear,
      *,
      rank: int,
      alpha: float,
      dropout: float = 0.0,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    d_in, d_out = base.in_features, base.out_features
    bound = 1.0 / math.sqrt(d_in)
    meta = {k: v for k, v in base.kernel.get_metadata().items() if k == "depth_from_top"}
    self.base = base
    self.lora_a = LoRAParam(
        jax.random.uniform(rngs.params(), (d_in, rank), param_dtype, -bound, bound), **meta
    )
    self.lora_b = LoRAParam(jnp.zeros((rank, d_out), param_dtype), **meta)
    self.scale = alpha / rank
    self.dropout_rate = float(dropout)
    self.deterministic = True
    if dropout > 0:
      self.dropout_key = LoRADropoutKey(jnp.zeros((2,), jnp.uint32))

  @property
  def kernel(self) -> nnx.Param:
    return self.base.kernel

  @property
  def bias(self) -> nnx.Param | None:
    return self.base.bias

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.base(x)
    h = x
    if self.dropout_rate > 0 and not self.deterministic:
      keep = jax.random.bernoulli(self.dropout_key[...], 1.0 - self.dropout_rate, x.shape)
      h = jnp.where(keep, x / (1.0 - self.dropout_rate), jnp.zeros_like(x)).astype(x.dtype)
    low = jnp.einsum("...i,ir->...r", h, self.lora_a[...].astype(x.dtype),
                     preferred_element_type=jnp.float32)
    delta = jnp.einsum("...r,ro->...o", low, self.lora_b[...].astype(jnp.float32))
    return y + (self.scale * delta).astype(y.dtype)

  def merged_kernel(self) -> jax.Array:
    """``W + scale * A B`` in the base kernel's dtype (summed in float32)."""
    w = self.base.kernel[...]
    delta = self.scale * (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32))
    return (w.astype(jnp.float32) + delta).astype(w.dtype)


# ----------------------------------------------------------- graph edits ----


def _child(parent: Any, key: Any) -> Any:
  return getattr(parent, key) if isinstance(key, str) and hasattr(parent, key) else parent[key]


def _replace(root: nnx.Module, path: tuple[Any, ...], new: nnx.Module) -> None:
  parent = root
  for key in path[:-1]:
    parent = _child(parent, key)
  key = path[-1]
  if isinstance(key, str) and hasattr(parent, key):
    setattr(parent, key, new)
  else:
    parent[key] = new


def _hf_names(module: nnx.Module) -> dict[int, str]:
  """id(Linear) -> the last component of its Hugging Face name (``c_proj``)."""
  by_kernel: dict[int, str] = {}
  for _, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Module) and hasattr(node, "hf_ignored") and hasattr(node, "hf_weight_map"):
      for name, (var, _) in node.hf_weight_map().items():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-1] == "weight":
          by_kernel[id(var)] = parts[-2]
  return {
      id(node): by_kernel[id(node.kernel)]
      for _, node in nnx.iter_graph(module)
      if isinstance(node, nnx.Linear) and id(node.kernel) in by_kernel
  }


def default_targets(module: nnx.Module) -> tuple[str, ...]:
  """The :data:`DEFAULT_TARGETS` of the first known encoder inside ``module``.

  Raises:
    ValueError: ``module`` holds no known encoder.
  """
  for _, node in nnx.iter_graph(module):
    for cls, names in DEFAULT_TARGETS.items():
      if isinstance(node, cls):
        return names
  raise ValueError(
      f"{type(module).__name__} holds none of {sorted(c.__name__ for c in DEFAULT_TARGETS)},"
      " so there is no default; pass LoRAConfig(target_modules=(...))."
  )


def apply_lora(module: nnx.Module, spec: LoRAConfig, *, rngs: nnx.Rngs) -> nnx.Module:
  """Wraps the target linear layers of ``module`` in :class:`LoRALinear`, in place.

  Args:
    module: an encoder, or a model holding one (``SequenceClassifier``,
      ``RewardModel``); its other parameters are left as they are.
    spec: rank, alpha, dropout and target names.
    rngs: draws the ``A`` matrices (``params`` stream).

  Returns:
    ``module`` itself, for chaining.

  Raises:
    ValueError: ``module`` already has adapters, or a target name matches
      no linear layer (the message lists the names there are).
  """
  if any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(module)):
    raise ValueError("The module already has LoRA adapters; merge_lora it first to add new ones.")
  targets = spec.target_modules if spec.target_modules is not None else default_targets(module)
  hf_names = _hf_names(module)
  linears = [(path, node) for path, node in nnx.iter_graph(module) if isinstance(node, nnx.Linear)]
  names_of = {
      path: {hf_names[id(node)], path[-1]} if id(node) in hf_names else {path[-1]}
      for path, node in linears
  }
  chosen = [(path, node) for path, node in linears if names_of[path] & set(targets)]
  matched = set().union(*(names_of[p] for p, _ in chosen)) if chosen else set()
  unmatched = [t for t in targets if t not in matched]
  if unmatched:
    available = sorted({str(n) for ns in names_of.values() for n in ns})
    raise ValueError(
        f"LoRA target_modules {unmatched} match no linear layer of"
        f" {type(module).__name__}; its linear layers are named {available}."
    )
  for path, node in chosen:
    _replace(module, path, LoRALinear(
        node, rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout,
        param_dtype=spec.param_dtype, rngs=rngs,
    ))
  return module


def merge_lora(module: nnx.Module) -> nnx.Module:
  """Folds every adapter into its base kernel (``W + scale A B``) and unwraps it, in place.

  The result holds plain ``nnx.Linear`` layers in the base dtype and no
  :class:`LoRAParam`. Returns ``module``.
  """
  wrapped = [(p, n) for p, n in nnx.iter_graph(module) if isinstance(n, LoRALinear)]
  for path, node in wrapped:
    node.base.kernel.set_value(node.merged_kernel())
    _replace(module, path, node.base)
  return module


def lora_modules(module: nnx.Module) -> list[tuple[tuple[Any, ...], LoRALinear]]:
  """``(path, layer)`` of every :class:`LoRALinear` in ``module``, in graph order."""
  return [(p, n) for p, n in nnx.iter_graph(module) if isinstance(n, LoRALinear)]


# ------------------------------------------------------ training helpers ----


def _as_path(p: str | Sequence[Any]) -> tuple[Any, ...]:
  if isinstance(p, str):
    return tuple(int(s) if s.isdigit() else s for s in p.split("."))
  return tuple(p)


def lora_trainable_filter(head_paths: Sequence[str | Sequence[Any]] = ("head",)) -> Callable[[Any, Any], bool]:
  """An nnx filter selecting every :class:`LoRAParam` plus the Params under ``head_paths``.

  Args:
    head_paths: path prefixes trained in full, as dotted strings
      (``"head"``, ``"encoder.norm"``) or tuples.

  Use it as ``train.split_model(model, lora_trainable_filter())`` or
  ``nnx.state(model, lora_trainable_filter())`` (the small state to save).
  """
  prefixes = [_as_path(p) for p in head_paths]

  def _filter(path, x) -> bool:
    if isinstance(x, LoRAParam):
      return True
    if not isinstance(x, nnx.Param):
      return False
    return any(tuple(path[: len(p)]) == p for p in prefixes)

  return _filter


def set_lora_dropout(module: nnx.Module, rng: jax.Array | None) -> None:
  """Switches adapter dropout on with key ``rng`` (layer i uses ``fold_in(rng, i)``),
  or off with ``None``. A no-op for adapters with dropout 0."""
  for i, (_, layer) in enumerate(lora_modules(module)):
    if layer.dropout_rate <= 0:
      continue
    layer.deterministic = rng is None
    if rng is not None:
      key = jax.random.fold_in(rng, i)
      if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
      layer.dropout_key.set_value(key.astype(jnp.uint32))


def split_lora_model(model: nnx.Module, trainable: Any = None):
  """As :func:`w2sg_jax.train.split_model`, with adapter dropout driven by the key.

  Returns ``(apply_fn, params, frozen)``; ``apply_fn(params, frozen, inputs,
  rng)`` runs dropout with ``rng`` (the step's ``fold_in(key, step)``) and
  none when ``rng is None`` (evaluation). ``trainable`` defaults to
  :func:`lora_trainable_filter`.
  """
  graphdef, params, frozen = nnx.split(model, trainable or lora_trainable_filter(), ...)

  def apply_fn(params, frozen, inputs, rng):
    # A copy: setting the dropout keys must not touch the caller's variables
    # (nor variables created outside a jit trace that closes over them).
    m = nnx.merge(graphdef, params, frozen, copy=True)
    set_lora_dropout(m, rng)
    return m(**inputs)

  return apply_fn, params, frozen
