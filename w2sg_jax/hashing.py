"""Content digests of files and folders, each file read once per process.

A cache key names an input by what it holds, never by where it is: the same
bytes at another path give the same digest, and one changed byte gives
another. Both functions here are pure in that sense.

* :func:`file_sha256`: the SHA-256 of one file. The digest is remembered per
  ``(real path, device, inode, size, mtime_ns, ctime_ns)``, so a second call
  costs one ``stat`` while any write to the file (which moves its ctime) makes
  the next call read it again.
* :func:`files_digest`: one SHA-256 over a set of files of a folder, from
  their names relative to the folder and their digests, in sorted order: it
  depends neither on the folder's path nor on the order the names are given.

This module imports nothing of the project, so any layer may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

__all__ = ["file_sha256", "files_sha256", "files_digest", "digest_of"]

_CHUNK = 1 << 20
_lock = threading.Lock()
_digests: dict[tuple, str] = {}


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
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      h.update(chunk)
  digest = h.hexdigest()
  if _stat_key(path) == key:  # Not rewritten while it was read: safe to remember.
    with _lock:
      _digests[key] = digest
  return digest


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
