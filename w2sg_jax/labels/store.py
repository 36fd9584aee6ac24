"""The on-disk weak-label store: soft labels keyed by example id, content-hashed.

The weak model runs once over a split; its probabilities are written here, and
every student run (each loss, noise rate and seed) reads them back. A store is
a directory::

  <root>/<hash[:16]>/
    labels.array_record   one record per example, in split order:
                          msgpack {"id": str, "probs": float32[C] little-endian bytes}
    meta.json             hash, components, num_examples, num_classes,
                          ids_sha256, probs_sha256, created, noise, num_corrupted
                          (and weights_sha256 when there are weights)
    weights.npy           optional float32 [N] >= 0: how much each row counts in the
                          student's loss (0 drops it). A filter's mask, or a bagged
                          member's resample counts; absent means every row counts 1.

``probs_sha256`` is the sha256 of the float32 probabilities, checked every
time the store is opened: a labels file copied in from another store, cut
short or bit-flipped is refused with an error naming the file, never used.

``hash = hashing.content_hash(components)``, where ``components`` names
everything that produced the labels (the weak checkpoint, the dataset and
split, the preprocessing, and, under the reserved key ``"noise"``, the label
noise). When any of them changes the hash changes, a new directory is used and
the labels are recomputed; an old store is never silently reused, and a store whose ids do
not match its dataset raises `StoreMismatchError` instead of mis-joining.

Writes are atomic: everything goes to a temporary sibling directory that is
renamed into place only when complete, so a killed write leaves no store.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from w2sg_jax import cache as cache_lib
from w2sg_jax import hashing
from w2sg_jax.labels import noise as noise_lib

__all__ = [
    "StoreMismatchError",
    "WeakLabelStore",
    "check_ids",
    "decode_record",
    "ids_digest",
    "normalize_id",
    "open_store",
    "probs_digest",
    "store_meta",
    "validate_ids",
    "validate_probs",
    "validate_weights",
    "write_store",
    "write_store_files",
]

log = logging.getLogger(__name__)

LABELS_FILE = "labels.array_record"
META_FILE = "meta.json"
WEIGHTS_FILE = "weights.npy"
FORMAT_VERSION = 2  # 2: meta.json records probs_sha256, checked on open.
# Rows of a probability matrix must sum to one within this tolerance.
SUM_TOL = 1e-4
# group_size:1 gives grain fast random access (it logs an error otherwise);
# records are ~30 bytes of float32, which compression would not shrink.
_WRITER_OPTIONS = "group_size:1,uncompressed"
_RECOVERY = (
    "The weak model, dataset, split, preprocessing or noise changed since the "
    "store was written, so it must be recomputed: the pipeline does that "
    "automatically (a changed input gives a new hash and a new directory), or "
    "delete the folder {directory} and rerun."
)


class StoreMismatchError(ValueError):
  """A weak-label store does not match what the caller expected."""


def normalize_id(x: Any) -> str:
  """An example id as a Python str (bytes are UTF-8 decoded, 0-d arrays unwrapped)."""
  if isinstance(x, np.ndarray):
    if x.ndim != 0:
      raise TypeError(f"an example id must be a scalar, got an array of shape {x.shape}.")
    x = x.item()
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, str):
    return str(x)
  raise TypeError(
      f"example ids must be strings (or UTF-8 bytes), got {type(x).__name__} {x!r}."
  )


def probs_digest(probs_NxC: np.ndarray) -> str:
  """sha256 of the probabilities as little-endian float32 bytes, shape included."""
  arr = np.ascontiguousarray(np.asarray(probs_NxC, "<f4"))
  h = hashlib.sha256(json.dumps(list(arr.shape)).encode("utf-8"))
  h.update(arr.tobytes())
  return h.hexdigest()


def ids_digest(ids: Sequence[str]) -> str:
  """sha256 of the ordered ids (as a JSON list, so no separator is ambiguous)."""
  return hashlib.sha256(hashing.canonical_json(list(ids)).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ records


def _encode_record(example_id: str, probs_C: np.ndarray) -> bytes:
  return msgpack.packb(
      {"id": example_id, "probs": np.asarray(probs_C, "<f4").tobytes()},
      use_bin_type=True,
  )


def decode_record(record: bytes) -> dict[str, Any]:
  """One stored record -> ``{"id": str, "probs": float32 [C]}``."""
  d = msgpack.unpackb(record, raw=False)
  return {"id": d["id"], "probs": np.frombuffer(d["probs"], dtype="<f4").astype(np.float32)}


def _read_records(path: str) -> tuple[list[str], np.ndarray]:
  from array_record.python import array_record_module

  try:
    reader = array_record_module.ArrayRecordReader(path)
    try:
      records = reader.read_all()
    finally:
      reader.close()
  except RuntimeError as e:  # array_record's error for a truncated or foreign file
    raise StoreMismatchError(
        f"cannot read {path} ({str(e) or 'corrupt or truncated file'}); delete its "
        "folder and rerun the weak-label stage."
    ) from e
  ids, rows = [], []
  for r in records:
    d = msgpack.unpackb(r, raw=False)
    ids.append(d["id"])
    rows.append(d["probs"])
  if not rows:
    return ids, np.zeros((0, 0), np.float32)
  widths = {len(b) for b in rows}
  if len(widths) != 1:
    raise StoreMismatchError(
        f"{path}: records have different numbers of classes (byte widths "
        f"{sorted(widths)}); the file is corrupt, delete its folder and rerun."
    )
  probs = np.frombuffer(b"".join(rows), dtype="<f4").reshape(len(rows), -1)
  return ids, probs.astype(np.float32)


# ------------------------------------------------------------------ the store


@dataclasses.dataclass(frozen=True, eq=False)
class WeakLabelStore:
  """An opened weak-label store (read-only).

  Attributes:
    directory: its folder.
    meta: the parsed meta.json.
    ids: example ids in split order, N strings.
    probs: float32 [N, C] weak label distributions (read-only array).
    weights: float32 [N] row weights in the loss (read-only), or None: every row counts 1.
  """

  directory: str
  meta: dict[str, Any]
  ids: tuple[str, ...]
  probs: np.ndarray
  weights: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.ids)

  def __repr__(self) -> str:
    return (
        f"WeakLabelStore({self.directory!r}, N={len(self)}, C={self.num_classes}, "
        f"hash={self.hash[:16]}, noise={self.meta.get('noise')})"
    )

  @property
  def hash(self) -> str:
    return self.meta["hash"]

  @property
  def components(self) -> dict[str, Any]:
    """The canonical hash components (arrays appear as their digests)."""
    return self.meta["components"]

  @property
  def num_classes(self) -> int:
    return int(self.meta["num_classes"])

  @property
  def labels_path(self) -> str:
    return os.path.join(self.directory, LABELS_FILE)

  @property
  def noise(self) -> noise_lib.NoiseSpec | None:
    n = self.meta.get("noise")
    return None if n is None else noise_lib.NoiseSpec.from_dict(n)

  @property
  def corrupted(self) -> np.ndarray:
    """bool [N]: which rows the store's noise corrupted (recomputed from the spec)."""
    spec = self.noise
    if spec is None:
      return np.zeros((len(self),), bool)
    return noise_lib.corruption_mask(len(self), spec)

  def source(self):
    """A grain random-access dataset over the file: element k is ``{"id", "probs"}``.

    ``grain.MapDataset.source(ArrayRecordDataSource(labels)).map(decode_record)``;
    random access reads one record from disk, so it suits stores too large to
    hold in memory (for others `probs` is faster).
    """
    import grain

    return grain.MapDataset.source(
        grain.sources.ArrayRecordDataSource(self.labels_path)
    ).map(decode_record)


def validate_probs(probs_NxC: Any, num_ids: int) -> np.ndarray:
  probs = np.asarray(probs_NxC)
  if probs.ndim != 2 or probs.shape[1] < 2:
    raise ValueError(
        f"weak probabilities must have shape [N, C] with C >= 2, got {probs.shape}."
    )
  if probs.shape[0] != num_ids:
    raise ValueError(
        f"{num_ids} ids but {probs.shape[0]} probability rows; they must pair up "
        "one to one, in split order."
    )
  if not np.issubdtype(probs.dtype, np.floating):
    raise ValueError(f"weak probabilities must be floating point, got {probs.dtype}.")
  probs32 = probs.astype(np.float32)
  bad = ~np.isfinite(probs32).all(axis=1)
  if bad.any():
    k = int(np.flatnonzero(bad)[0])
    raise ValueError(
        f"{int(bad.sum())} rows of the weak probabilities are not finite (first: "
        f"row {k} = {probs[k]}); the weak model diverged or a softmax overflowed."
    )
  out = (probs32 < 0) | (probs32 > 1)
  if out.any():
    k = int(np.flatnonzero(out.any(axis=1))[0])
    raise ValueError(
        f"weak probabilities must lie in [0, 1]; row {k} = {probs[k]}. Store "
        "softmax outputs, not logits."
    )
  sums = probs32.astype(np.float64).sum(axis=1)
  off = np.abs(sums - 1.0) > SUM_TOL
  if off.any():
    k = int(np.flatnonzero(off)[0])
    raise ValueError(
        f"{int(off.sum())} rows of the weak probabilities do not sum to 1 within "
        f"{SUM_TOL} (first: row {k} sums to {sums[k]:.6g}). Store a softmax over "
        "the class axis."
    )
  return probs32


def validate_ids(ids: Sequence[Any]) -> list[str]:
  ids = [normalize_id(i) for i in ids]
  if len(set(ids)) != len(ids):
    seen, dup = set(), None
    for i in ids:
      if i in seen:
        dup = i
        break
      seen.add(i)
    raise ValueError(
        f"example ids must be unique (a join by id needs it); {dup!r} appears "
        "more than once."
    )
  return ids


def write_store(
    directory: str | os.PathLike,
    ids: Sequence[str],
    probs_NxC: np.ndarray,
    *,
    components: Mapping[str, Any],
    overwrite: bool = False,
) -> WeakLabelStore:
  """Writes a store atomically and returns it opened.

  The records and meta.json go to a temporary sibling folder, which is renamed
  to `directory` once complete: a write killed midway leaves no store (only a
  hidden ``.<name>.tmp-*`` folder, removed on failure when Python still can).

  Args:
    directory: the store folder to create.
    ids: N unique example ids (str), in split order.
    probs_NxC: [N, C] weak label distributions: finite, in [0, 1], rows summing
      to 1 within 1e-4; stored as float32.
    components: everything that produced the labels (hashed with
      `hashing.content_hash`). The key ``"noise"``, when present, is a
      `NoiseSpec.as_dict()` and fills meta's noise and num_corrupted.
    overwrite: replace an existing store at `directory`.

  Returns:
    The written store.

  Raises:
    ValueError: invalid probs or ids.
    FileExistsError: `directory` exists and `overwrite` is False.
  """
  directory = os.fspath(directory)
  ids = validate_ids(ids)
  probs32 = validate_probs(probs_NxC, len(ids))
  meta = store_meta(ids, probs32, components)
  digest = meta["hash"]
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(
        f"{directory} already exists; open it with open_store, or pass "
        "overwrite=True to replace it."
    )
  with cache_lib.atomic_directory(directory, overwrite=overwrite) as tmp:
    write_store_files(tmp, ids, probs32, meta)
  return open_store(directory, expected_hash=digest)


def validate_weights(weights_N: Any, num_ids: int) -> np.ndarray:
  """float32 ``[N]`` row weights: finite, >= 0, not all 0."""
  w = np.asarray(weights_N)
  if w.shape != (num_ids,):
    raise ValueError(f"row weights of shape {w.shape}; a store of {num_ids} rows needs shape ({num_ids},).")
  w = w.astype(np.float32)
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError("row weights must be finite and >= 0 (0 drops a row from the loss).")
  if not np.any(w > 0):
    raise ValueError("every row weight is 0: the student would learn from no example; keep at least one row.")
  return w


def store_meta(ids: Sequence[str], probs32: np.ndarray, components: Mapping[str, Any],
               weights32: np.ndarray | None = None) -> dict[str, Any]:
  """meta.json of a store of ``ids`` and ``probs32`` (and row weights) produced by ``components``."""
  canon = hashing.canonical_components(components)
  spec = None
  if canon.get("noise") is not None:
    spec = noise_lib.NoiseSpec.from_dict(canon["noise"])
  return {
      "format_version": FORMAT_VERSION,
      "hash": hashing.content_hash(canon),
      "components": canon,
      "num_examples": len(ids),
      "num_classes": int(probs32.shape[1]),
      "ids_sha256": ids_digest(ids),
      "probs_sha256": probs_digest(probs32),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "noise": None if spec is None else spec.as_dict(),
      "num_corrupted": 0 if spec is None else noise_lib.num_corrupted(len(ids), spec),
      **({} if weights32 is None else {"weights_sha256": hashlib.sha256(weights32.tobytes()).hexdigest(),
                                       "num_weighted_out": int(np.sum(weights32 == 0))}),
  }


def write_store_files(directory: str, ids: Sequence[str], probs32: np.ndarray, meta: Mapping[str, Any],
                      weights32: np.ndarray | None = None) -> None:
  """The store's files in an existing folder (the caller makes it atomic)."""
  _write_records(os.path.join(directory, LABELS_FILE), ids, probs32)
  if weights32 is not None:
    np.save(os.path.join(directory, WEIGHTS_FILE), np.asarray(weights32, np.float32))
  with open(os.path.join(directory, META_FILE), "w") as f:
    json.dump(dict(meta), f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())


def _write_records(path: str, ids: Sequence[str], probs32: np.ndarray) -> None:
  from array_record.python import array_record_module

  writer = array_record_module.ArrayRecordWriter(path, _WRITER_OPTIONS)
  try:
    for example_id, row in zip(ids, probs32):
      writer.write(_encode_record(example_id, row))
  finally:
    writer.close()


def open_store(
    directory: str | os.PathLike,
    *,
    expected_hash: str | None = None,
    expected_ids: Sequence[str] | None = None,
) -> WeakLabelStore:
  """Opens a store and checks that it is the one the caller expects.

  Args:
    directory: the store folder.
    expected_hash: `hashing.content_hash` of the components the caller would write now.
    expected_ids: the dataset's ids in split order.

  Returns:
    The store, with `probs` loaded as a read-only float32 [N, C] array.

  Raises:
    FileNotFoundError: no store at `directory`.
    StoreMismatchError: a different hash, count or id order (the message says
      which and how to recover), or a file inconsistent with its meta.json.
  """
  directory = os.fspath(directory)
  meta_path = os.path.join(directory, META_FILE)
  labels_path = os.path.join(directory, LABELS_FILE)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"no weak-label store at {directory}; create it with write_store or run the "
        "pipeline's weak-label stage."
    )
  for p in (meta_path, labels_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(
          f"{p} is missing, so {directory} is not a complete store; delete the "
          "folder and rerun the weak-label stage."
      )
  with open(meta_path) as f:
    meta = json.load(f)
  recovery = _RECOVERY.format(directory=directory)
  if meta.get("format_version") != FORMAT_VERSION:
    raise StoreMismatchError(
        f"{directory} has store format {meta.get('format_version')}, this code "
        f"reads format {FORMAT_VERSION}. {recovery}"
    )
  if hashing.content_hash(meta["components"]) != meta["hash"]:
    raise StoreMismatchError(
        f"{meta_path}: the recorded hash {meta['hash']} is not the hash of the "
        f"recorded components ({hashing.content_hash(meta['components'])}); meta.json was "
        f"edited or corrupted. {recovery}"
    )
  if expected_hash is not None and expected_hash != meta["hash"]:
    raise StoreMismatchError(
        f"weak-label store hash mismatch at {directory}:\n"
        f"  stored:   {meta['hash']}\n  expected: {expected_hash}\n{recovery}"
    )
  ids, probs = _read_records(labels_path)
  if len(ids) != meta["num_examples"] or (
      ids and probs.shape[1] != meta["num_classes"]
  ):
    raise StoreMismatchError(
        f"{labels_path} holds {len(ids)} records of {probs.shape[1]} classes but "
        f"meta.json says {meta['num_examples']} x {meta['num_classes']}; the file "
        f"is truncated or corrupt. {recovery}"
    )
  if ids_digest(ids) != meta["ids_sha256"]:
    raise StoreMismatchError(
        f"{labels_path}: the ids do not match meta.json's ids_sha256; the file "
        f"was replaced or corrupted. {recovery}"
    )
  if probs_digest(probs) != meta.get("probs_sha256"):
    raise StoreMismatchError(
        f"{labels_path}: the weak probabilities do not match meta.json's probs_sha256; "
        f"the labels file was swapped with another store's, or corrupted. {recovery}"
    )
  weights = None
  if meta.get("weights_sha256") is not None:
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
      raise FileNotFoundError(f"{weights_path} is missing, but meta.json records row weights; {recovery}")
    weights = np.load(weights_path)
    if weights.dtype != np.float32 or weights.shape != (len(ids),) or \
        hashlib.sha256(weights.tobytes()).hexdigest() != meta["weights_sha256"]:
      raise StoreMismatchError(f"{weights_path}: the row weights do not match meta.json's weights_sha256; "
                               f"the file was replaced or corrupted. {recovery}")
    weights.setflags(write=False)
  if expected_ids is not None:
    check_ids(ids, expected_ids, what=f"weak-label store {directory}")
  probs.setflags(write=False)
  return WeakLabelStore(directory=directory, meta=meta, ids=tuple(ids), probs=probs, weights=weights)


def check_ids(stored: Sequence[str], expected: Sequence[Any], *, what: str) -> None:
  """Raises `StoreMismatchError` unless `expected` equals `stored`, in order.

  The message names the count difference, or the first differing position and
  both ids there (and says when only the order differs).
  """
  expected = [normalize_id(i) for i in expected]
  stored = list(stored)
  if len(stored) != len(expected):
    raise StoreMismatchError(
        f"{what} has {len(stored)} examples but the dataset has {len(expected)}; "
        "the split changed. Recompute the weak labels for this split."
    )
  if stored == expected:
    return
  k = next(i for i, (a, b) in enumerate(zip(stored, expected)) if a != b)
  same_set = set(stored) == set(expected)
  hint = (
      "The same ids appear in a different order: the split order changed."
      if same_set
      else "The ids differ: the weak labels belong to another dataset or split."
  )
  raise StoreMismatchError(
      f"{what}: ids differ from the dataset's at position {k}: stored "
      f"{stored[k]!r}, dataset {expected[k]!r}. {hint} Recompute the weak labels "
      "(the pipeline does so when its inputs change) or delete the store folder."
  )
