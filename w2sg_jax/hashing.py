"""Content digests: of plain data (cache keys, store hashes), of files and of folders.

A cache key names an input by what it holds, never by where it is: the same
bytes at another path give the same digest, and one changed byte gives
another. Every function here is pure in that sense.

* :func:`content_hash`: the SHA-256 of the canonical, key-sorted JSON of a dict
  of hash components (config subtrees, input keys, numpy arrays through their
  bytes); :func:`canonical_components` is that canonical form, stored in
  manifests and meta.json files.
* :func:`file_sha256`: the SHA-256 of one file, for keys. The digest is
  remembered per ``(real path, device, inode, size, mtime_ns, ctime_ns)``, so
  a second call costs one ``stat`` while any write to the file (which moves its
  ctime) makes the next call read it again.
* :func:`read_sha256`: the SHA-256 of one file, read now, never remembered:
  for integrity checks (cache entries, checkpoints), whose job is to see what
  a ``stat`` cannot (a bit flipped below the filesystem, a file rewritten by
  another host of a network filesystem).
* :func:`files_digest`: one SHA-256 over a set of files of a folder, from
  their names relative to the folder and their digests, in sorted order: it
  depends neither on the folder's path nor on the order the names are given.
* :func:`tree_files`: every file under a folder, by relative path.

This module imports nothing of the project, so any layer may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

__all__ = [
    "canonical_components",
    "canonical_json",
    "content_hash",
    "digest_of",
    "file_sha256",
    "files_digest",
    "files_sha256",
    "read_sha256",
    "tree_files",
]

_CHUNK = 1 << 20
_lock = threading.Lock()
_digests: dict[tuple, str] = {}


# ------------------------------------------------------------------ plain data


def canonical_components(components: Any, _path: str = "components") -> Any:
  """JSON-ready canonical form of hash components.

  Dicts (string keys only) stay dicts, tuples become lists, numpy scalars become
  Python scalars, paths become strings, objects with ``as_dict()`` (e.g.
  `NoiseSpec`) become that dict, and numpy arrays are replaced by
  ``{"__ndarray__": {"sha256": sha256(bytes), "dtype": str, "shape": list}}``,
  so that the canonical form is itself canonical (hashing it again gives the
  same hash) and can be stored in meta.json.

  Raises:
    TypeError: a non-string dict key or an unsupported value, naming its path.
  """
  if isinstance(components, Mapping):
    out = {}
    for k, v in components.items():
      if not isinstance(k, str):
        raise TypeError(
            f"{_path}: hash component keys must be strings, got {k!r} "
            f"({type(k).__name__}); JSON would turn it into {str(k)!r}."
        )
      out[k] = canonical_components(v, f"{_path}.{k}")
    return out
  if isinstance(components, (list, tuple)):
    return [canonical_components(v, f"{_path}[{i}]") for i, v in enumerate(components)]
  if components is None or isinstance(components, (bool, int, float, str)):
    return components
  if isinstance(components, np.ndarray):
    arr = np.ascontiguousarray(components)
    if arr.dtype.hasobject:
      raise TypeError(f"{_path}: object arrays cannot be hashed; convert to a list.")
    return {
        "__ndarray__": {
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
        }
    }
  if isinstance(components, np.generic):
    return canonical_components(components.item(), _path)
  if isinstance(components, (pathlib.PurePath, os.PathLike)):
    return os.fspath(components)
  if hasattr(components, "as_dict"):
    return canonical_components(components.as_dict(), _path)
  raise TypeError(
      f"{_path}: cannot hash a value of type {type(components).__name__}; use "
      "JSON types, numpy arrays, or an object with as_dict()."
  )


def canonical_json(obj: Any) -> str:
  """Key-sorted, compact JSON: the text that `content_hash` digests."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(components: Mapping[str, Any]) -> str:
  """sha256 hex digest of the canonical, key-sorted JSON of `components`.

  Numpy arrays count through their bytes, dtype and shape. The hash of
  ``canonical_components(c)`` equals the hash of ``c``.
  """
  if not isinstance(components, Mapping):
    raise TypeError(f"components must be a dict, got {type(components).__name__}.")
  text = canonical_json(canonical_components(components))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ files


def _stat_key(path: str) -> tuple:
  st = os.stat(path)  # Follows symlinks (a hub snapshot links to its blobs).
  return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str | os.PathLike) -> str:
  """The hex SHA-256 of a file's bytes, computed once per process while the file is unchanged.

  Raises:
    FileNotFoundError: the file does not exist (OSError for other failures).
  """
  path = os.fspath(path)
  key = _stat_key(path)
  with _lock:
    known = _digests.get(key)
  if known is not None:
    return known
  digest = read_sha256(path)
  if _stat_key(path) == key:  # Not rewritten while it was read: safe to remember.
    with _lock:
      _digests[key] = digest
  return digest


def read_sha256(path: str | os.PathLike) -> str:
  """The hex SHA-256 of a file's bytes, read now and not remembered (for integrity checks).

  Raises:
    FileNotFoundError: the file does not exist (OSError for other failures).
  """
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def tree_files(directory: str, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
  """``{path relative to directory: path}`` of every file under ``directory`` but those in ``skip``.

  A folder that cannot be listed raises (a `PermissionError` naming it), so an
  unreadable part of a folder is never mistaken for a missing one.
  """

  def fail(error: OSError):
    raise error

  files = {}
  for dirpath, _, names in os.walk(directory, onerror=fail):
    for name in names:
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, directory)
      if rel not in skip:
        files[rel] = path
  return files


def tree_mismatch(directory: str, listed: dict[str, str], *, skip: tuple[str, ...] = ()) -> tuple[str, str] | None:
  """The first way the files under ``directory`` differ from ``listed`` (``{relative path: sha256}``), or None.

  Returns ``("missing" | "unlisted" | "changed", path)``: a listed file that is
  absent, a file that is not listed, or one whose bytes (read now) do not match.
  """
  on_disk = tree_files(directory, skip=skip)
  missing, unlisted = sorted(set(listed) - set(on_disk)), sorted(set(on_disk) - set(listed))
  if missing:
    return "missing", os.path.join(directory, missing[0])
  if unlisted:
    return "unlisted", on_disk[unlisted[0]]
  for rel in sorted(listed):
    if read_sha256(on_disk[rel]) != listed[rel]:  # Read now: a stat cannot vouch for the bytes.
      return "changed", on_disk[rel]
  return None


def _relative_name(name: str | os.PathLike) -> str:
  rel = PurePosixPath(Path(name).as_posix())
  if rel.is_absolute() or ".." in rel.parts or not rel.parts:
    raise ValueError(f"{str(name)!r} is not a relative path inside the folder.")
  return str(rel)


def files_sha256(folder: str | os.PathLike, names: Iterable[str | os.PathLike]) -> dict[str, str]:
  """``{relative name: sha256}`` of the named files of ``folder``, sorted by name.

  Raises:
    ValueError: a name is absolute, leaves the folder (``..``) or repeats.
    FileNotFoundError: a named file does not exist.
  """
  out: dict[str, str] = {}
  for name in names:
    rel = _relative_name(name)
    if rel in out:
      raise ValueError(f"{rel!r} is named twice.")
    out[rel] = file_sha256(Path(folder) / rel)
  return dict(sorted(out.items()))


def digest_of(file_digests: Mapping[str, str]) -> str:
  """One hex SHA-256 of ``{relative name: sha256}``, independent of the mapping's order."""
  canonical = json.dumps(sorted(file_digests.items()), separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def files_digest(folder: str | os.PathLike, names: Iterable[str | os.PathLike]) -> str:
  """One hex SHA-256 over the named files of ``folder``: their relative names and contents.

  The same files (names and bytes) under another folder give the same digest;
  renaming a file, changing a byte, or adding or removing a name gives
  another.
  """
  return digest_of(files_sha256(folder, names))
