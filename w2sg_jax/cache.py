"""One cache discipline for every stage artifact: keyed, locked, atomic, verified.

Every artifact a stage writes (the weak checkpoint, each weak-label store, each
noisy store, each ceiling and student run, the cached features) lives in an
*entry* of a `Cache`::

  <root>/<stage>/<key[:20]>/
    ...the stage's files...
    manifest.json     stage, key, components, format version, sha256 of every file

``key = stage_key(stage, components)``: the sha256 of everything that produced
the artifact, which the stage hands over as ``components``: the resolved
config subtree it reads, the keys of its input artifacts, the data
fingerprint. `stage_key` adds the stage name and `FORMAT_VERSION` itself, so no
stage builds a key by hand and a format change invalidates every entry.

Creating an entry (`Cache.get_or_create`):

* a file lock per entry (``<root>/<stage>/.<key>.lock``, the ``filelock``
  package) makes a second process wait for the first instead of racing it;
* the producer writes into ``<root>/<stage>/.<key>.tmp-*``, which is renamed
  into place only once the manifest is written, so a killed writer never leaves
  a half entry; its temp folder is removed by the next process that takes the
  lock (and by `Cache.clean_orphans`);
* long-running producers (training) get a persistent ``work_dir``
  (``<key>.partial``) that survives a kill, so a rerun resumes from the
  checkpoints in it.

Opening an entry checks the manifest's shape (a JSON object naming this stage,
key and format version, whose ``files`` map gives a sha256 for every file in
the entry folder and nothing else) and every file against its sha256. A
malformed manifest, an unlisted file or a mismatch (a swapped, truncated or
bit-flipped file) is never used: with ``on_corrupt="replace"`` (the default)
the entry is deleted with a logged warning and recomputed, with ``"raise"`` a
`CorruptEntryError` names the file. A permission error is not corruption: it
is raised as a `PermissionError` naming the file, and nothing is deleted.

Many workers on one cache (`w2sg_jax.workers`): a `Cache` with a ``worker``
produces, of the training runs (the stages in `SPLIT_STAGES`), only the groups
that worker owns (a group goes whole to one worker), and raises
`RunsOfOtherWorkers` naming the entries it left to the others; the upstream stages are produced by whichever
process takes the lock first. With ``report_only`` it produces no run at all:
a missing one raises `RunsOfOtherWorkers` at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import filelock

from w2sg_jax import hashing
from w2sg_jax import workers as workers_lib
from w2sg_jax.log import log

__all__ = [
    "Cache",
    "CorruptEntryError",
    "Entry",
    "FORMAT_VERSION",
    "RunsOfOtherWorkers",
    "SPLIT_STAGES",
    "atomic_directory",
    "stage_key",
]

# Bump when the layout or meaning of any stage artifact changes: it enters every key.
# 3: config parts of keys come from the resolved schema blocks (`config.semantic_dict`, defaults included),
# not from the raw config subtrees.
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
KEY_CHARS = 20  # 80 bits of the sha256 name a folder; the full key is in the manifest.
PARTIAL_SUFFIX = ".partial"
_TMP_MARK = ".tmp-"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# The stages whose entries are training runs, split among workers by key; every other stage is
# produced by whichever process gets there first.
SPLIT_STAGES = ("ceiling", "student")


class CorruptEntryError(RuntimeError):
  """A cache entry's file does not match the sha256 its manifest records."""


class RunsOfOtherWorkers(Exception):
  """Entries of ``stage`` that this process left to other workers (or, report-only, found missing).

  Raised by `Cache.get_or_create_group` after this worker's own entries of the
  group are written; ``keys`` are the full keys of the entries left out.
  """

  def __init__(self, stage: str, keys: list[str], *, report_only: bool = False):
    self.stage = stage
    self.keys = list(keys)
    self.report_only = report_only
    n = len(self.keys)
    runs = f"{n} {stage} run{'s' if n != 1 else ''}"
    if report_only:
      text = f"{runs} {'is' if n == 1 else 'are'} not in the cache yet (report-only trains nothing)"
    else:
      text = f"{runs} belong{'s' if n == 1 else ''} to other workers and {'is' if n == 1 else 'are'} not finished yet"
    super().__init__(f"{text}: {', '.join(k[:KEY_CHARS] for k in self.keys[:3])}{' ...' if n > 3 else ''}")


def stage_key(stage: str, components: Mapping[str, Any]) -> str:
  """The content hash of everything that produced a stage's artifact.

  ``components`` is plain data (config subtrees as dicts, input keys,
  fingerprints); numpy arrays count through their bytes. The stage name and
  `FORMAT_VERSION` are part of the key.
  """
  return hashing.content_hash({"stage": stage, "format_version": FORMAT_VERSION, "components": dict(components)})


@contextlib.contextmanager
def atomic_directory(final: str, *, overwrite: bool = False) -> Iterator[str]:
  """Yields a temp sibling of ``final``; renamed to ``final`` when the block succeeds.

  A block that raises (or a process that dies) leaves ``final`` untouched; the
  temp folder is removed on a Python exception and, after a kill, by the next
  `Cache` that takes the entry's lock.
  """
  parent = os.path.dirname(os.path.abspath(final))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}{_TMP_MARK}", dir=parent)
  os.chmod(tmp, 0o755)  # mkdtemp makes it private; entries are shared read-only.
  try:
    yield tmp
    if os.path.exists(final):
      if not overwrite:
        raise FileExistsError(f"{final} appeared while writing it (another process without the lock?).")
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=parent)
      os.rename(final, os.path.join(old, "entry"))
      os.rename(tmp, final)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _manifest_problem(manifest: Any, path: str, stage: str, key: str) -> str | None:
  """What makes ``manifest`` not a manifest of ``(stage, key)``; None when its shape is right.

  It must be a JSON object recording this stage, key and `FORMAT_VERSION`,
  with ``files``: an object mapping each file's relative path to a 64-digit
  lowercase hex sha256 (and ``info``, when present, an object).
  """
  if not isinstance(manifest, dict):
    return f"{path} is not a JSON object (it is {type(manifest).__name__})"
  if manifest.get("stage") != stage or manifest.get("key") != key or manifest.get("format_version") != FORMAT_VERSION:
    return (f"{path} records stage {manifest.get('stage')!r}, key {str(manifest.get('key'))[:KEY_CHARS]}, "
            f"format {manifest.get('format_version')!r}; expected {stage!r}, {key[:KEY_CHARS]}, {FORMAT_VERSION}")
  files = manifest.get("files")
  if not isinstance(files, dict):
    return f"{path} has no 'files' map of sha256 digests"
  for rel, digest in files.items():
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
      return f"{path} records {digest!r} for {rel}, which is not a sha256 digest"
    if os.path.isabs(rel) or ".." in rel.split(os.sep) or rel == MANIFEST:
      return f"{path} lists {rel!r}, which is not a file of the entry"
  if not isinstance(manifest.get("info", {}), dict):
    return f"{path} has an 'info' that is not a JSON object"
  return None


def _write_manifest(directory: str, stage: str, key: str, components: Mapping[str, Any], info: Mapping[str, Any]):
  files = {rel: hashing.read_sha256(path)
           for rel, path in sorted(hashing.tree_files(directory, skip=(MANIFEST,)).items())}
  manifest = {
      "stage": stage,
      "key": key,
      "format_version": FORMAT_VERSION,
      "components": hashing.canonical_components(dict(components)),
      "info": hashing.canonical_components(dict(info)),
      "files": files,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
  }
  with open(os.path.join(directory, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())


@dataclasses.dataclass(frozen=True)
class Entry:
  """A complete, verified cache entry: its folder, key and manifest."""

  stage: str
  key: str
  directory: str
  manifest: dict[str, Any]
  computed: bool  # True when this process produced it, False when it was reused.

  def path(self, name: str) -> str:
    return os.path.join(self.directory, name)

  @property
  def info(self) -> dict[str, Any]:
    """What the producer returned: small metadata (metrics, counts) kept with the files."""
    return self.manifest.get("info", {})


@dataclasses.dataclass(frozen=True)
class Event:
  stage: str
  key: str
  computed: bool


class Cache:
  """Stage artifacts under ``root``; see the module docstring."""

  def __init__(self, root: str, *, on_corrupt: str = "replace", lock_timeout_s: float = -1,
               worker: workers_lib.Worker | None = None, report_only: bool = False):
    if on_corrupt not in ("replace", "raise"):
      raise ValueError(f"on_corrupt={on_corrupt!r}; use 'replace' or 'raise'.")
    self.root = os.path.abspath(root)
    self.on_corrupt = on_corrupt
    self.lock_timeout_s = lock_timeout_s
    self.worker = worker  # None: this process produces every entry (`w2sg_jax.workers`).
    self.report_only = report_only  # True: no entry of SPLIT_STAGES is produced; a missing one raises.
    self.events: list[Event] = []  # What this process reused or computed, in order.
    if os.path.exists(self.root) and not os.path.isdir(self.root):
      raise NotADirectoryError(f"the cache directory {self.root} is a file; point cache_dir at a folder.")
    os.makedirs(self.root, exist_ok=True)

  # -- paths
  def directory(self, stage: str, key: str) -> str:
    return os.path.join(self.root, stage, key[:KEY_CHARS])

  def _lock(self, stage: str, key: str) -> filelock.FileLock:
    os.makedirs(os.path.join(self.root, stage), exist_ok=True)
    return filelock.FileLock(os.path.join(self.root, stage, f".{key[:KEY_CHARS]}.lock"), timeout=self.lock_timeout_s)

  # -- reading
  def open(self, stage: str, key: str) -> Entry | None:
    """The verified entry, or None when it does not exist (or was corrupt and removed).

    A permission error (reading the manifest or hashing a file) is raised as
    it is, naming the file: an entry another user can read but this one cannot
    is not corrupt, and is never deleted.
    """
    directory = self.directory(stage, key)
    manifest_path = os.path.join(directory, MANIFEST)
    try:
      if not stat.S_ISREG(os.stat(manifest_path).st_mode):
        return None
    except (FileNotFoundError, NotADirectoryError):
      return None
    problem, manifest = None, None
    try:
      with open(manifest_path, "rb") as f:
        manifest = json.loads(f.read())
    except PermissionError:
      raise
    except (OSError, ValueError) as e:
      problem = f"{manifest_path} is unreadable ({e})"
    if problem is None:
      problem = _manifest_problem(manifest, manifest_path, stage, key)
    if problem is None:
      try:
        problem = self._check_files(directory, manifest)
      except FileNotFoundError:  # Replaced by its producer while we read it: look again under the lock.
        return None
    if problem is None:
      return Entry(stage, key, directory, manifest, computed=False)
    if self.on_corrupt == "raise":
      raise CorruptEntryError(
          f"{problem}. The cached {stage} artifact was changed after it was written; delete {directory} "
          "and rerun to recompute it."
      )
    log.warning("cache: %s; removing %s and recomputing it.", problem, directory)
    shutil.rmtree(directory, ignore_errors=True)
    return None

  @staticmethod
  def _check_files(directory: str, manifest: Mapping[str, Any]) -> str | None:
    """What is wrong with the entry's files: each must be listed, present and match its sha256."""
    mismatch = hashing.tree_mismatch(directory, manifest["files"], skip=(MANIFEST,))
    if mismatch is None:
      return None
    kind, path = mismatch
    return {"missing": f"{path} is missing",
            "unlisted": f"{path} is not listed in its manifest (only listed files are used)",
            "changed": f"{path} does not match the sha256 in its manifest (swapped, truncated or corrupted)"}[kind]

  # -- writing
  def get_or_create(
      self,
      stage: str,
      components: Mapping[str, Any],
      produce: Callable[[str, str], Mapping[str, Any] | None],
  ) -> Entry:
    """The entry of ``(stage, components)``, produced once if missing.

    ``produce(out_dir, work_dir)`` writes the artifact's files into ``out_dir``
    (a temp folder renamed into place afterwards) and may keep resumable state
    (checkpoints) in ``work_dir``, which survives a kill and is deleted once
    the entry is complete. It returns small JSON-able ``info`` kept in the
    manifest. Another process producing the same entry is waited for.
    """
    key = stage_key(stage, components)
    entry = self.open(stage, key)
    if entry is None and self._left_to_others(stage, [key]):
      raise RunsOfOtherWorkers(stage, [key], report_only=self.report_only)
    if entry is None:
      with self._lock(stage, key):
        entry = self.open(stage, key)  # Another process may have finished it meanwhile.
        if entry is None:
          entry = self._produce(stage, key, components, produce)
    self.events.append(Event(stage, key, entry.computed))
    return entry

  def get_or_create_group(
      self,
      stage: str,
      components_list: list[Mapping[str, Any]],
      produce_group: Callable[[list[int], list[str]], list[Callable[[str], Mapping[str, Any] | None]]],
      owner: str | None = None,
  ) -> list[Entry]:
    """Entries made together (the runs of a vmapped group): one lock each, one producer call.

    ``produce_group(todo, work_dirs)`` gets the positions of the missing
    entries and their persistent work folders, trains them together, and
    returns one writer per missing entry, ``write(out_dir) -> info``. The locks
    of the missing entries are taken in key order, so two processes asking for
    overlapping groups cannot deadlock; what the other process finished
    meanwhile is reused, not recomputed.

    With a ``worker``, for a stage in `SPLIT_STAGES`, a whole group belongs to
    one worker: the one that owns ``owner`` (default: the hash of the group's
    sorted keys), so a worker trains the same groups, as the same programs, as
    one process would, and its numbers are that process's bit for bit (a
    vmapped program's float rounding can depend on which runs it holds).
    ``owner`` lets a caller keep a chain of groups together (the rounds of
    strong-to-strong). Another worker's missing entries are left, and
    `RunsOfOtherWorkers` names them. With ``report_only`` nothing of such a
    stage is produced: a missing entry raises `RunsOfOtherWorkers` at once.
    """
    keys = [stage_key(stage, c) for c in components_list]
    entries: list[Entry | None] = [self.open(stage, k) for k in keys]
    missing = sorted({keys[i] for i, e in enumerate(entries) if e is None})
    if owner is None:
      owner = hashing.content_hash({"group": sorted(set(keys))})
    others = self._left_to_others(stage, missing, owner)
    if others and self.report_only:
      raise RunsOfOtherWorkers(stage, others, report_only=True)
    mine = [k for k in missing if k not in set(others)]  # In key order: the order the locks are taken.
    if mine:
      with contextlib.ExitStack() as stack:
        for key in mine:
          stack.enter_context(self._lock(stage, key))
        entries = [e if e is not None or k not in mine else self.open(stage, k) for e, k in zip(entries, keys)]
        todo = [i for i, (e, k) in enumerate(zip(entries, keys)) if e is None and k in mine]
        if todo:
          work_dirs = []
          for i in todo:
            self._remove_temps(stage, keys[i])
            work_dirs.append(self.directory(stage, keys[i]) + PARTIAL_SUFFIX)
            os.makedirs(work_dirs[-1], exist_ok=True)
          writers = produce_group(todo, work_dirs)
          for i, work_dir, write in zip(todo, work_dirs, writers):
            entries[i] = self._produce(stage, keys[i], components_list[i], lambda out, _w, write=write: write(out))
    if others:  # Another worker may have finished them meanwhile: then the group is whole.
      entries = [e if e is not None else self.open(stage, k) for e, k in zip(entries, keys)]
    for e in entries:
      if e is not None:
        self.events.append(Event(stage, e.key, e.computed))
    still = sorted({k for e, k in zip(entries, keys) if e is None})
    if still:
      raise RunsOfOtherWorkers(stage, still)
    return entries

  def _left_to_others(self, stage: str, missing: list[str], owner: str | None = None) -> list[str]:
    """Which of the ``missing`` keys this process must not produce: another worker's, or all in report-only.

    ``owner``: the key that decides a group's worker (`get_or_create_group`); None: each key its own."""
    if stage not in SPLIT_STAGES:
      return []
    if self.report_only:
      return list(missing)
    if self.worker is None:
      return []
    if owner is not None:
      return [] if self.worker.owns(owner) else list(missing)
    return [k for k in missing if not self.worker.owns(k)]

  def _produce(self, stage, key, components, produce) -> Entry:
    final = self.directory(stage, key)
    self._remove_temps(stage, key)  # We hold the lock: any temp of this key is an orphan.
    work_dir = final + PARTIAL_SUFFIX
    os.makedirs(work_dir, exist_ok=True)
    with atomic_directory(final, overwrite=os.path.exists(final)) as tmp:
      info = produce(tmp, work_dir) or {}
      _write_manifest(tmp, stage, key, components, info)
    shutil.rmtree(work_dir, ignore_errors=True)
    with open(os.path.join(final, MANIFEST)) as f:
      manifest = json.load(f)
    return Entry(stage, key, final, manifest, computed=True)

  def _remove_temps(self, stage: str, key: str) -> None:
    parent = os.path.join(self.root, stage)
    prefix = f".{key[:KEY_CHARS]}"
    for name in os.listdir(parent):
      if name.startswith(prefix) and (_TMP_MARK in name or ".old-" in name):
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

  def clean_orphans(self) -> list[str]:
    """Removes temp folders of killed writers whose entry nobody is producing now."""
    removed = []
    if not os.path.isdir(self.root):
      return removed
    for stage in sorted(os.listdir(self.root)):
      parent = os.path.join(self.root, stage)
      if not os.path.isdir(parent):
        continue
      for name in sorted(os.listdir(parent)):
        if not name.startswith(".") or (_TMP_MARK not in name and ".old-" not in name):
          continue
        key = name[1:].split(".")[0]
        lock = filelock.FileLock(os.path.join(parent, f".{key}.lock"), timeout=0)
        try:
          with lock:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
        except filelock.Timeout:
          continue  # Its writer is alive; leave it.
    if removed:
      log.info("cache: removed %d temp folders of interrupted writers.", len(removed))
    return removed

  def computed(self, stage: str | None = None) -> list[Event]:
    return [e for e in self.events if e.computed and (stage is None or e.stage == stage)]
