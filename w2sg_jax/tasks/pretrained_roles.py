"""Pretrained Hugging Face models per role: what the tasks that fine-tune checkpoints share.

A task of this kind (``preference``, ``text_classification``) gives each role
(``weak``, ``strong``) a pretrained encoder with a task head. A role's block
(`config.PretrainedConfig`, its defaults filled by the schema; built in
experiment files by ``config_lib.pretrained_model``) names:

* ``checkpoint``: a local folder or hub id (``config.json``, safetensors,
  ``tokenizer.json``) of any family ``models.load_pretrained`` knows;
* ``checkpoint_revision``: for a hub id, the branch, tag or commit to fetch
  ('' = the default branch, resolved to its commit at first use);
* ``num_layers`` (0 = all), ``dtype`` (the compute dtype), ``remat``;
* ``finetune``: ``full``, ``top`` (with ``top_layers``), ``head``, or
  ``lora`` (adapters from the ``lora`` block on the frozen encoder, plus the
  head);
* ``pooling`` ('' = the family's default: the last real token for decoders,
  the mean for BERT) and ``head_hidden``.

:class:`PretrainedRolesTask` turns these into models, trainable filters and
names; a subclass adds its data (``_prepare_data``) and its head
(``_head_model``). The helpers load each checkpoint's tokenizer and weights
once per process, and tokenize once when both roles share a tokenizer.

Every key holds each role's checkpoint by content (:func:`role_checkpoints`:
the SHA-256 of every file the loader reads, and a hub id's commit), added to
the data fingerprint, which every stage key and results.json's ``data`` hold.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from w2sg_jax import config as schema
from w2sg_jax import hashing
from w2sg_jax.data import tokenize as tokenize_lib
from w2sg_jax.data.task import Split, Task
from w2sg_jax.models import heads as heads_lib
from w2sg_jax.models import lora as lora_lib
from w2sg_jax.models import pretrained as pretrained_lib
from w2sg_jax.models import remat as remat_lib

ROLES = ("weak", "strong")


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(name: str):
  """The compute dtype called ``name`` (``role.dtype``)."""
  if name not in _DTYPES:
    raise ValueError(f"dtype={name!r}; use one of {sorted(_DTYPES)} (the compute dtype; parameters stay float32).")
  return _DTYPES[name]


class Checkpoint(NamedTuple):
  """A role's checkpoint as read: its local folder, tokenizer, ``config.json`` and content digest."""

  folder: str
  tokenizer: Any
  hf_config: dict[str, Any]
  sha256: str


def checkpoint(path_or_id: str, revision: str = "") -> Checkpoint:
  """The checkpoint ``path_or_id`` (a hub id resolved and downloaded once per process).

  Read again when its files change (the cache below is keyed by their digest).

  Raises:
    FileNotFoundError: the folder lacks config.json, tokenizer.json or weights.
  """
  folder = pretrained_lib.resolve_checkpoint_dir(path_or_id, revision)
  if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
    raise FileNotFoundError(
        f"Checkpoint {path_or_id!r} ({folder}) lacks config.json or tokenizer.json; it needs"
        f" {', '.join(pretrained_lib.REQUIRED_FILES)}."
    )
  return _read_checkpoint(str(folder), pretrained_lib.checkpoint_digest(folder))


@functools.lru_cache(maxsize=4)
def _read_checkpoint(folder: str, sha256: str) -> Checkpoint:
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
  return Checkpoint(folder, pretrained_lib.load_tokenizer(folder), config, sha256)


def role_checkpoint(config: schema.Experiment, role: str) -> Checkpoint:
  """The checkpoint of ``config.<role>`` at its ``checkpoint_revision``."""
  cfg = role_config(config, role)
  return checkpoint(cfg.checkpoint, cfg.checkpoint_revision)


def role_checkpoints(config: schema.Experiment) -> dict[str, dict[str, str]]:
  """``{role: checkpoint fingerprint}``: each role's files by content, and a hub id's commit.

  See ``models.pretrained.checkpoint_fingerprint``; no local path enters it.
  """
  blocks = {role: role_config(config, role) for role in ROLES}
  return {role: pretrained_lib.checkpoint_fingerprint(b.checkpoint, b.checkpoint_revision) for role, b in blocks.items()}


def max_positions(hf_config: dict[str, Any]) -> int | None:
  """The most positions a checkpoint embeds (``n_positions`` or ``max_position_embeddings``)."""
  return hf_config.get("n_positions", hf_config.get("max_position_embeddings"))


def check_max_length(config: schema.Experiment, role: str) -> None:
  """Raises ValueError when ``data.max_length`` exceeds the role's checkpoint positions."""
  cfg = role_config(config, role)
  limit = max_positions(role_checkpoint(config, role).hf_config)
  if limit is not None and config.data.max_length > int(limit):
    raise ValueError(
        f"data.max_length={config.data.max_length} exceeds the {role} checkpoint's {limit} positions"
        f" ({cfg.checkpoint}); set data.max_length <= {limit}."
    )


@functools.lru_cache(maxsize=2)
def encoder_state(folder: str, sha256: str, layers: int | None, dtype_name: str):
  """The pretrained encoder as ``(graphdef, host numpy state)``, loaded once per process and content.

  ``sha256`` (the folder's ``checkpoint_digest``) keys the cache, so changed
  files are read again. Every run builds a fresh module from the host copy,
  so no run can see another's (donated or updated) device buffers.
  """
  del sha256  # Only the cache key.
  module, _ = pretrained_lib.load_pretrained(folder, num_layers=layers, dtype=dtype(dtype_name))
  graphdef, state = nnx.split(module)
  return graphdef, jax.tree.map(np.asarray, state)


def lora_spec(cfg: schema.PretrainedConfig) -> "lora_lib.LoRAConfig | None":
  """The role's LoRA adapters when ``finetune == "lora"`` (``cfg.lora``: rank, alpha, dropout, target_modules)."""
  if cfg.finetune != "lora":
    return None
  lora = cfg.lora
  return lora_lib.LoRAConfig(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                             target_modules=tuple(lora.target_modules) or None)  # () = the family's projections.


def role_config(config: schema.Experiment, role: str) -> schema.PretrainedConfig:
  """``config.weak`` or ``config.strong`` (the weak one a `config.PretrainedWeakConfig`); any other role is an error."""
  if role not in ROLES:
    raise ValueError(f"role={role!r}; expected 'weak' or 'strong'.")
  return config.weak if role == "weak" else config.strong


def num_layers(cfg: schema.PretrainedConfig) -> int | None:
  """The role's ``num_layers``, with 0 (all layers) as None."""
  return cfg.num_layers if cfg.num_layers > 0 else None


# ------------------------------------------------------------ tokenizers


def tokenizer_fingerprint(tokenizer) -> str:
  """SHA-256 of the tokenizer's JSON (padding/truncation off, keys sorted).

  Identical for every GPT-2 size, so their runs share weak labels.
  """
  tok = tokenize_lib._bare_copy(tokenizer)  # pylint: disable=protected-access
  canonical = json.dumps(json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def role_tokenizers(config: schema.Experiment) -> tuple[dict[str, Any], dict[str, str]]:
  """``({role: tokenizer}, {role: tokenizer_fingerprint})`` of both roles' checkpoints."""
  tokenizers = {role: role_checkpoint(config, role).tokenizer for role in ROLES}
  return tokenizers, {role: tokenizer_fingerprint(t) for role, t in tokenizers.items()}


def per_role(fingerprints: dict[str, str], encode: Callable[[str], Any]) -> dict[str, Any]:
  """``{role: encode(role)}``, encoding once when both roles' tokenizers are identical.

  Then the strong entry IS the weak one (the same arrays), so the views cost
  their memory once.
  """
  out: dict[str, Any] = {}
  for role in ROLES:
    if role == "strong" and fingerprints["strong"] == fingerprints["weak"]:
      out[role] = out["weak"]  # Same tokenizer: same arrays.
    else:
      out[role] = encode(role)
  return out


# ---------------------------------------------------------------- the task


class PretrainedRolesTask(Task):
  """A task whose weak and strong models are pretrained encoders with a head, set per role.

  Subclasses define ``_prepare_data(config, cache_dir) -> {"splits", "fingerprint", ...}``
  and ``_head_model(encoder, config, *, pooling, hidden_sizes, rngs)``, and
  name their model in ``model_kind`` (e.g. "reward model").
  """

  model_kind = "model"

  def __init__(self):
    self._prepared: dict[str, dict[str, Any]] = {}

  # -- data
  def _prepare_data(self, config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
    raise NotImplementedError

  def _data_key(self, config: schema.Experiment, cache_dir: str) -> str:
    """The key of this process's prepared data: what it was read from, paths included.

    Not a cache key on disk: it tells apart two configs that one task object
    prepares, so it holds the non-semantic settings too (``schema.to_dict``:
    a CSV, a data folder or a checkpoint at another path reads other files),
    which `config.semantic_dict` leaves out.
    """
    return hashing.content_hash({
        "data": schema.to_dict(config.data),
        "checkpoints": [[role_config(config, r).checkpoint, role_config(config, r).checkpoint_revision,
                         role_checkpoint(config, r).sha256] for r in ROLES],
        "cache_dir": os.path.abspath(cache_dir),
    })

  def _prepare(self, config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
    """Loads, splits and tokenizes once per process and config."""
    key = self._data_key(config, cache_dir)
    if key not in self._prepared:
      self._prepared[key] = self._prepare_data(config, cache_dir)
    return self._prepared[key]

  def splits(self, config: schema.Experiment, cache_dir: str) -> dict[str, Split]:
    return self._prepare(config, cache_dir)["splits"]

  def fingerprint(self, config: schema.Experiment) -> dict[str, Any]:
    """The data fingerprint plus ``checkpoints``: each role's checkpoint by content (and a hub id's commit)."""
    return {**self._prepare(config, config.cache_dir)["fingerprint"], "checkpoints": role_checkpoints(config)}

  # -- models
  def _head_model(self, encoder: nnx.Module, config: schema.Experiment, *, pooling: str | None,
                  hidden_sizes: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Module:
    """The task's model around ``encoder``, its head under ``head``."""
    raise NotImplementedError

  def make_model(self, role: str, config: schema.Experiment):
    cfg = role_config(config, role)
    ckpt = role_checkpoint(config, role)
    check_max_length(config, role)
    layers, dtype_name = num_layers(cfg), cfg.dtype
    pooling = cfg.pooling or None
    hidden = tuple(cfg.head_hidden)

    lora = lora_spec(cfg)
    remat = remat_lib.check_remat(cfg.remat)
    # Read the weights here, eagerly: the factory runs under jit/eval_shape traces.
    graphdef, host_state = encoder_state(ckpt.folder, ckpt.sha256, layers, dtype_name)

    def factory(rngs: nnx.Rngs) -> nnx.Module:
      encoder = nnx.merge(graphdef, jax.tree.map(jnp.asarray, host_state))
      remat_lib.set_remat(encoder, remat)  # Recompute blocks in the backward pass: memory for FLOPs.
      model = self._head_model(encoder, config, pooling=pooling, hidden_sizes=hidden, rngs=rngs)
      if lora is not None:
        lora_lib.apply_lora(model, lora, rngs=rngs)  # Adapters on the frozen encoder's projections.
      return model

    return factory

  def trainable(self, role: str, config: schema.Experiment):
    cfg = role_config(config, role)
    mode = cfg.finetune
    if mode == "lora":
      return lora_lib.lora_trainable_filter(("head",))  # The adapters and the head; the base is frozen.
    return heads_lib.trainable_filter(mode, cfg.top_layers if mode == "top" else 0)

  def model_name(self, role: str, config: schema.Experiment) -> str:
    cfg = role_config(config, role)
    name = os.path.basename(os.path.normpath(cfg.checkpoint))
    layers = f", first {num_layers(cfg)} layers" if num_layers(cfg) else ""
    mode = cfg.finetune
    mode = f"top {cfg.top_layers} layers" if mode == "top" else mode
    if mode == "lora":
      mode = f"LoRA rank {lora_spec(cfg).rank}"
    return f"{name} {self.model_kind} ({mode}{layers})"
