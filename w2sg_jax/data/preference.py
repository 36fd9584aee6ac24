"""Pairwise preference datasets (HH-RLHF, CAI-Harmless) as TFDS datasets.

Both are turned into the same examples, with transcripts in the HH format
``"\\n\\nHuman: ...\\n\\nAssistant: ..."``:

* ``id``: ``sha1(chosen + "\\x00" + rejected)`` in hex (order matters: the
  swapped pair is another example with the opposite label).
* ``prompt``: the conversation both transcripts share, up to and including the
  final ``"\\n\\nAssistant:"``.
* ``chosen``, ``rejected``: the full transcripts (prompt + final response).

Sources (the exact files read):

* ``HhRlhf`` (configs ``harmless-base``, ``helpful-base``), Anthropic/hh-rlhf
  (MIT) at revision ``09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa`` (:data:`HH_REVISION`):
  ``https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/<revision>/{subset}/{train,test}.jsonl.gz``.
  Gzipped JSON lines, each ``{"chosen": str, "rejected": str}`` with full
  transcripts; mapped as is.
* ``HhRlhf`` config ``harmless-single-turn``: the pre-split single-turn
  harmless pairs that Yao et al. (2025) released with their code
  (``data/hh-single-turn`` there): ``harmless_train_gt.jsonl`` (the weak
  model's ground-truth pairs), ``harmless_train_w2s.jsonl`` (the pairs the
  weak model labels) and ``harmless_test.jsonl``, 4,000 pairs each, plain
  JSON lines of the same ``{"chosen", "rejected"}`` records. Their split is
  kept: the builder's splits are ``weak_train``, ``w2s_train`` and ``test``,
  one per file, in file order. They have no public download URL of their
  own, so they are read from ``manual_dir`` only.
* ``CaiHarmless``, HuggingFaceH4/cai-conversation-harmless (Apache-2.0) at
  revision ``51954823511ffd96d15ed6d1004949277e7af464``: the preference splits
  ``data/train_prefs-00000-of-00001-32cbb1e30771a5e7.parquet`` and
  ``data/test_prefs-00000-of-00001-f0c5cd137d4c1d93.parquet`` under
  ``https://huggingface.co/datasets/HuggingFaceH4/cai-conversation-harmless/resolve/<revision>/``.
  Parquet is the only format of this release; it is read with pyarrow, which
  tensorflow-datasets already depends on. Of its columns only ``chosen`` and
  ``rejected`` are read: lists of ``{"role", "content"}`` messages (the
  revised and the initial response to the same red-team prompt), rendered
  as ``"\\n\\nHuman: "`` (role ``user``) and ``"\\n\\nAssistant: "`` (role
  ``assistant``) turns.

Getting the files: online, ``dl_manager.download`` fetches them at the pinned
revision, and every downloaded file must match the SHA-256 that
:data:`SOURCE_SHA256` records for it (a ``checksums={relative path: sha256}``
argument adds or overrides entries): a file that differs, or that has no
recorded digest, stops the build with a :class:`ChecksumError` naming the
file, both digests and what to do. Files in ``manual_dir`` are the user's
own (the test fixtures are small stand-ins at the same paths): they are not
checked against the table, and their SHA-256 is recorded. Offline, put
the same files, under the same relative paths (``harmless-base/train.jsonl.gz``,
``data/train_prefs-...parquet``), in a directory and pass it as ``manual_dir``
(``load_preferences(..., manual_dir=...)``, or
``download_config=tfds.download.DownloadConfig(manual_dir=...)``); files found
there win over downloading. When neither works, the error lists every missing
file, its URL and where to put it.

Clean-up, counted per split in the prepared ``metadata.json`` (key = split):
``dropped_malformed`` (a record without two string transcripts),
``dropped_no_assistant_turn``, ``dropped_prompt_mismatch`` (the two transcripts
do not share the prompt), ``dropped_identical`` (chosen == rejected: no
preference to learn), ``duplicates_merged`` (an exact repeat of an earlier
pair). Nothing else is changed. ``sources`` records each file's name and
SHA-256; when files in ``manual_dir`` differ from them, the data are prepared
again instead of reused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import socket
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from w2sg_jax import hashing
from w2sg_jax.data import prepared

__all__ = [
    "HhRlhf",
    "CaiHarmless",
    "DATASETS",
    "HH_URL",
    "HH_REVISION",
    "SOURCE_SHA256",
    "ChecksumError",
    "verify_sha256",
    "CAI_URL",
    "CAI_REVISION",
    "CAI_FILES",
    "SINGLE_TURN",
    "SINGLE_TURN_FILES",
    "ASSISTANT",
    "HUMAN",
    "pair_id",
    "split_prompt",
    "extract_prompt",
    "render_messages",
    "clean_pairs",
    "read_hh_jsonl",
    "read_cai_parquet",
    "prepare_preferences",
    "preference_source",
    "load_preferences",
    "preference_cleanup_stats",
]

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_ROLES = {"user": "Human", "human": "Human", "assistant": "Assistant"}

# A commit of Anthropic/hh-rlhf on the hub: downloads never follow `main`. Its files are those of
# github.com/anthropics/hh-rlhf (commit 354e5c3cb8960630860dd5774a6ac2a58313bf4d), whose Git LFS
# pointers and blobs give the digests in SOURCE_SHA256.
HH_REVISION = "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa"
HH_URL = f"https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/{HH_REVISION}/"
CAI_REVISION = "51954823511ffd96d15ed6d1004949277e7af464"
CAI_URL = (
    "https://huggingface.co/datasets/HuggingFaceH4/cai-conversation-harmless/"
    f"resolve/{CAI_REVISION}/"
)
CAI_FILES = {
    "train": "data/train_prefs-00000-of-00001-32cbb1e30771a5e7.parquet",
    "test": "data/test_prefs-00000-of-00001-f0c5cd137d4c1d93.parquet",
}
# The SHA-256 of every file a builder may download, by dataset and path relative to its
# repository (= manual_dir). A downloaded file must match its entry. HH-RLHF: the Git LFS
# pointers of helpful-base (oid = sha256) and the sha256 of the harmless-base blobs in
# github.com/anthropics/hh-rlhf at 354e5c3; the hub's copy holds the same files (the helpful-base
# train digest is also the one recorded for the hub's file at HH_REVISION). CAI-Harmless: not
# recorded here yet; a file without an entry is checked against the SHA-256 that the hub itself
# records for it at the pinned revision (its Git LFS oid, `_hub_sha256`), and the run refuses it
# when the hub gives none. Record a checked digest here (or pass checksums=) to pin it locally.
SOURCE_SHA256: dict[str, dict[str, str]] = {
    "hh_rlhf": {
        "harmless-base/train.jsonl.gz": "bf3e1ecd3db61bf21d190f69351d26670c67aababa0fd282fa008c17a7202217",
        "harmless-base/test.jsonl.gz": "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03",
        "helpful-base/train.jsonl.gz": "518a5bf288456fc9f3b7c980c54116fba0c52f274d3f4d344675d83e4058f6f4",
        "helpful-base/test.jsonl.gz": "8be3fc1a13b27901631696f2be6f184c799f1baeaf145f53ac5db24960adc37b",
    },
    "cai_harmless": {},  # CAI_FILES' two parquet files: verified against the hub's LFS oid at CAI_REVISION.
}


def _hub_sha256(url: str, timeout: float = 30.0) -> str | None:
  """The SHA-256 the hub records for a Git LFS file at a pinned ``resolve/<commit>/`` URL, or None.

  The hub answers a HEAD of such a URL with a redirect whose ``X-Linked-Etag``
  header is the file's LFS oid, its SHA-256; the commit in the URL fixes the
  pointer, so the digest is as pinned as the commit. Redirects are not followed.
  """
  import urllib.error  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top

  class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
      return None

  opener = urllib.request.build_opener(_NoRedirect)
  try:
    response = opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    headers = response.headers
  except urllib.error.HTTPError as e:  # The 302 itself arrives as an HTTPError here.
    headers = e.headers
  except (OSError, ValueError):
    return None
  etag = (headers.get("X-Linked-Etag") or "").strip().strip('"').lower() if headers is not None else ""
  return etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None


# The HH-RLHF builder config that keeps the Yao et al. split, and its files (split -> file in manual_dir).
SINGLE_TURN = "harmless-single-turn"
SINGLE_TURN_FILES = {
    "weak_train": "harmless_train_gt.jsonl",
    "w2s_train": "harmless_train_w2s.jsonl",
    "test": "harmless_test.jsonl",
}


# ------------------------------------------------------------------ examples


def pair_id(chosen: str, rejected: str) -> str:
  """``sha1(chosen + "\\x00" + rejected)`` as hex; the NUL keeps the split unambiguous."""
  return hashlib.sha1((chosen + "\x00" + rejected).encode("utf-8")).hexdigest()


def split_prompt(transcript: str) -> tuple[str, str]:
  """Splits a transcript before its final response.

  Returns:
    ``(prompt, response)`` with ``prompt`` ending in ``"\\n\\nAssistant:"`` and
    ``prompt + response == transcript``.

  Raises:
    ValueError: the transcript has no ``"\\n\\nAssistant:"`` turn.
  """
  i = transcript.rfind(ASSISTANT)
  if i < 0:
    raise ValueError(f"No {ASSISTANT!r} turn in transcript {transcript[:80]!r}...")
  cut = i + len(ASSISTANT)
  return transcript[:cut], transcript[cut:]


def extract_prompt(chosen: str, rejected: str) -> str:
  """The prompt both transcripts share, up to and including the final Assistant turn.

  Raises:
    ValueError: a transcript lacks an Assistant turn, or the two prompts differ.
  """
  p_chosen, _ = split_prompt(chosen)
  p_rejected, _ = split_prompt(rejected)
  if p_chosen != p_rejected:
    raise ValueError("chosen and rejected do not share the conversation before "
                     "their final Assistant turn.")
  return p_chosen


def render_messages(messages: Iterable[dict[str, str]]) -> str:
  """``[{"role": "user", "content": c}, ...]`` -> ``"\\n\\nHuman: c..."`` (HH format).

  Raises:
    ValueError: a role other than user/human/assistant.
  """
  parts = []
  for m in messages:
    role = _ROLES.get(str(m["role"]).lower())
    if role is None:
      raise ValueError(f"Unknown message role {m['role']!r}; known: {sorted(_ROLES)}.")
    parts.append(f"\n\n{role}: {m['content']}")
  return "".join(parts)


def clean_pairs(
    pairs: Iterable[tuple[Any, Any]],
) -> tuple[list[dict[str, str]], dict[str, int]]:
  """Turns ``(chosen, rejected)`` transcripts into examples; see the module docstring.

  Returns:
    ``(examples, stats)``: examples ``{"id", "prompt", "chosen", "rejected"}``
    in input order (first occurrence), and the counts ``pairs_read,
    dropped_malformed, dropped_no_assistant_turn, dropped_prompt_mismatch,
    dropped_identical, duplicates_merged, num_examples``.
  """
  stats = dict.fromkeys(
      ["pairs_read", "dropped_malformed", "dropped_no_assistant_turn",
       "dropped_prompt_mismatch", "dropped_identical", "duplicates_merged",
       "num_examples"], 0)
  seen: set[str] = set()
  out = []
  for chosen, rejected in pairs:
    stats["pairs_read"] += 1
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
      stats["dropped_malformed"] += 1
      continue
    if ASSISTANT not in chosen or ASSISTANT not in rejected:
      stats["dropped_no_assistant_turn"] += 1
      continue
    try:
      prompt = extract_prompt(chosen, rejected)
    except ValueError:
      stats["dropped_prompt_mismatch"] += 1
      continue
    if chosen == rejected:
      stats["dropped_identical"] += 1
      continue
    pid = pair_id(chosen, rejected)
    if pid in seen:
      stats["duplicates_merged"] += 1
      continue
    seen.add(pid)
    out.append({"id": pid, "prompt": prompt, "chosen": chosen, "rejected": rejected})
  stats["num_examples"] = len(out)
  return out, stats


def read_hh_jsonl(path: os.PathLike | str) -> Iterator[tuple[Any, Any]]:
  """Yields ``(chosen, rejected)`` per line of an HH-RLHF ``.jsonl.gz`` (or plain ``.jsonl``) file.

  A line that is not a JSON object with both keys yields ``(None, None)``, so
  that ``clean_pairs`` counts it as malformed.
  """
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(os.fspath(path), "rt", encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        yield rec["chosen"], rec["rejected"]
      except (json.JSONDecodeError, KeyError, TypeError):
        yield None, None


def read_cai_parquet(path: os.PathLike | str) -> Iterator[tuple[Any, Any]]:
  """Yields rendered ``(chosen, rejected)`` transcripts from a CAI parquet file.

  A row whose messages cannot be rendered (unknown role, missing keys) yields
  ``(None, None)``, counted as malformed by ``clean_pairs``.
  """
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  table = pq.read_table(os.fspath(path), columns=["chosen", "rejected"])
  for row in table.to_pylist():
    try:
      yield render_messages(row["chosen"]), render_messages(row["rejected"])
    except (ValueError, KeyError, TypeError):
      yield None, None


# ------------------------------------------------------------------ builders


def _sha256(path: os.PathLike | str) -> str:
  return hashing.file_sha256(path)


class ChecksumError(ValueError):
  """A downloaded source file whose SHA-256 is not the recorded one (or has none recorded)."""


def verify_sha256(path: os.PathLike | str, rel: str, expected: dict[str, str], *, dataset: str, url: str) -> str:
  """The file's SHA-256, checked against ``expected[rel]``.

  Raises:
    ChecksumError: ``rel`` has no recorded digest, or the file's differs;
      the message names the file, both digests and what to do.
  """
  actual = _sha256(path)
  want = expected.get(rel)
  source = "recorded"
  if want is None and "/resolve/" in url and "/resolve/main/" not in url:
    want, source = _hub_sha256(url), "the hub's record at the pinned revision"
  fallback = ("Or download the file yourself on a machine with network access, check it, and put it at that"
              " relative path in a folder passed as manual_dir (--config.data.manual_dir=DIR): files there"
              " are used as they are.")
  if want is None:
    raise ChecksumError(
        f"{dataset}: downloaded {rel} from {url}, but no SHA-256 is recorded for it (nor given by the hub at the"
        f" pinned revision), so it cannot be verified and is not used (its SHA-256 is {actual}). If you have checked that file, record its digest in"
        f" SOURCE_SHA256[{dataset!r}] in w2sg_jax/data/preference.py or pass"
        f" checksums={{{rel!r}: '<sha256>'}} to load_preferences. {fallback}")
  if actual != want.lower():
    raise ChecksumError(
        f"{dataset}: the downloaded file {rel} ({path}, from {url}) has SHA-256 {actual}, but {want} is"
        f" {source} for it: the file on the hub changed or the download is damaged, and it is not used. Delete the"
        " downloaded copy and run again; if it still differs, check the source before changing the recorded"
        f" digest (SOURCE_SHA256 in w2sg_jax/data/preference.py, or checksums= of load_preferences). {fallback}")
  return actual


def _unreachable(urls: Iterable[str], timeout: float = 5.0) -> str | None:
  """None if every URL's host accepts a TCP connection, else why not.

  A quick check first, because TFDS retries a failing download for minutes.
  """
  for host in sorted({urllib.parse.urlparse(u).hostname for u in urls}):
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
      return f"cannot reach {host}: {e}"
  return None


class _PreferenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: locate the files, read pairs, clean them, write examples."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the source files under the manual directory at the same relative "
      "paths as in the source repository; see w2sg_jax/data/preference.py."
  )
  _TITLE = ""
  _HOMEPAGE = ""
  _LICENSE = ""
  MANUAL_ONLY_SOURCE = ""  # Where files without a download URL come from.

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs `importlib_resources`, which it only declares
    # for Python < 3.9; this module's path is what it would find.
    return epath.Path(__file__)

  SHA256_KEY = ""  # This builder's entry of SOURCE_SHA256.

  def __init__(self, *, allow_download: bool = True, checksums: dict[str, str] | None = None, **kwargs):
    self._allow_download = allow_download
    self._checksums = {**SOURCE_SHA256.get(self.SHA256_KEY, {}), **dict(checksums or {})}
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  # Subclasses: {split: (path relative to manual_dir, url)} and a reader.
  def source_files(self) -> dict[str, tuple[str, str]]:
    raise NotImplementedError

  def _read_pairs(self, path: epath.Path) -> Iterator[tuple[Any, Any]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self._TITLE}: pairwise preferences; see w2sg_jax/data/preference.py.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "prompt": tfds.features.Text(),
            "chosen": tfds.features.Text(),
            "rejected": tfds.features.Text(),
        }),
        homepage=self._HOMEPAGE,
        license=self._LICENSE,
        metadata=tfds.core.MetadataDict(),
        # File order, so example i is the i-th kept pair.
        disable_shuffling=True,
    )

  def _resolve_files(self, dl_manager) -> dict[str, epath.Path]:
    files = self.source_files()
    try:
      manual = epath.Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):  # Not given, missing or empty.
      manual = None
    found: dict[str, epath.Path] = {}
    missing: dict[str, tuple[str, str]] = {}
    for split, (rel, url) in files.items():
      if manual is not None and (manual / rel).is_file():
        found[split] = manual / rel
      else:
        missing[split] = (rel, url)
    if not missing:
      return found
    manual_only = [rel for rel, url in missing.values() if not url]
    if manual_only:
      where = manual or getattr(dl_manager, "_manual_dir", None) or "<manual_dir>"
      raise FileNotFoundError(
          f"{self.name}/{self.builder_config.name if self.builder_config else ''}: these source files have no "
          f"download URL and were not found in manual_dir ({where}): {', '.join(manual_only)}. "
          f"{self.MANUAL_ONLY_SOURCE} Put them in one folder and pass it as manual_dir= "
          "(--config.data.manual_dir=DIR)."
      )
    if self._allow_download:
      why = _unreachable(url for _, url in missing.values())
      if why is None:
        try:
          downloaded = dl_manager.download({s: url for s, (_, url) in missing.items()})
        except Exception as e:  # pylint: disable=broad-except
          why = f"{type(e).__name__}: {e}"
        else:
          for split, path in downloaded.items():
            rel, url = missing[split]
            verify_sha256(path, rel, self._checksums, dataset=self.SHA256_KEY, url=url)
          found.update(downloaded)
          return found
      how = f"Downloading failed ({why})."
    else:
      how = "Downloading is turned off (download=False)."
    where = manual or getattr(dl_manager, "_manual_dir", None) or "<manual_dir>"
    lines = "\n".join(f"  {epath.Path(where) / rel}    <- {url}"
                      for rel, url in missing.values())
    raise FileNotFoundError(
        f"{self.name}/{self.builder_config.name if self.builder_config else ''}: "
        f"source files missing. {how} Download these files on a machine with "
        f"network access and place them at:\n{lines}\nthen pass that directory "
        "as manual_dir= (load_preferences(..., manual_dir=DIR), or "
        "download_config=tfds.download.DownloadConfig(manual_dir=DIR))."
    )

  def _split_generators(self, dl_manager):
    paths = self._resolve_files(dl_manager)
    self.info.metadata["sources"] = {
        s: {"file": self.source_files()[s][0], "sha256": _sha256(p)}
        for s, p in paths.items()
    }
    generators = {}
    for split, path in paths.items():
      examples, stats = clean_pairs(self._read_pairs(path))
      self.info.metadata[split] = stats
      generators[split] = self._generate_examples(examples)
    return generators

  def _generate_examples(self, examples):
    for ex in examples:
      yield ex["id"], ex


class HhRlhf(_PreferenceBuilder):
  """Anthropic HH-RLHF (``harmless-base``, ``helpful-base``); splits train/test."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="harmless-base", description="Harmlessness pairs."),
      tfds.core.BuilderConfig(name="helpful-base", description="Helpfulness pairs."),
      tfds.core.BuilderConfig(
          name=SINGLE_TURN,
          description="The single-turn harmless pairs of the Yao et al. (2025) release, pre-split into "
                      "weak_train / w2s_train / test (4,000 pairs each); read from manual_dir."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "harmless-base"
  SHA256_KEY = "hh_rlhf"
  _TITLE = "Anthropic HH-RLHF"
  _HOMEPAGE = "https://huggingface.co/datasets/Anthropic/hh-rlhf"
  _LICENSE = "MIT"
  MANUAL_ONLY_SOURCE = ("They are the pre-split single-turn pairs released with the code of Yao et al. (2025), "
                        "'On Weak-to-Strong Generalization and f-Divergence' (its data/hh-single-turn folder).")

  def source_files(self) -> dict[str, tuple[str, str]]:
    subset = self.builder_config.name
    if subset == SINGLE_TURN:  # The split is the file's: no URL, manual_dir only.
      return {split: (name, "") for split, name in SINGLE_TURN_FILES.items()}
    return {s: (f"{subset}/{s}.jsonl.gz", f"{HH_URL}{subset}/{s}.jsonl.gz")
            for s in ("train", "test")}

  def _read_pairs(self, path):
    return read_hh_jsonl(path)


class CaiHarmless(_PreferenceBuilder):
  """HuggingFaceH4/cai-conversation-harmless preference splits; train/test."""

  SHA256_KEY = "cai_harmless"
  _TITLE = "CAI-Harmless (HuggingFaceH4/cai-conversation-harmless)"
  _HOMEPAGE = "https://huggingface.co/datasets/HuggingFaceH4/cai-conversation-harmless"
  _LICENSE = "Apache-2.0"

  def source_files(self) -> dict[str, tuple[str, str]]:
    return {s: (rel, CAI_URL + rel) for s, rel in CAI_FILES.items()}

  def _read_pairs(self, path):
    return read_cai_parquet(path)


DATASETS: dict[str, type[_PreferenceBuilder]] = {
    "hh_rlhf": HhRlhf,
    "cai_harmless": CaiHarmless,
}


# ------------------------------------------------------------------ loading


def _builder(name: str, subset: str | None, data_dir, allow_download: bool, checksums=None):
  if name not in DATASETS:
    raise ValueError(f"Unknown preference dataset {name!r}; choose one of {sorted(DATASETS)}.")
  cls = DATASETS[name]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if configs and subset not in configs:
    raise ValueError(f"{name} needs subset= one of {configs}, got {subset!r}.")
  if not configs and subset is not None:
    raise ValueError(f"{name} has no subsets; pass subset=None, got {subset!r}.")
  kwargs = {"config": subset} if configs else {}
  return cls(data_dir=data_dir, allow_download=allow_download, checksums=checksums, **kwargs)


def _sources_metadata(builder) -> dict[str, Any] | None:
  # Item access, not dict()/get(): TFDS loads the metadata lazily on __getitem__.
  try:
    return dict(builder.info.metadata["sources"])
  except KeyError:
    return None


def prepare_preferences(
    name: str,
    subset: str | None = None,
    data_dir: os.PathLike | str | None = None,
    manual_dir: os.PathLike | str | None = None,
    download: bool = True,
    checksums: dict[str, str] | None = None,
) -> tfds.core.DatasetBuilder:
  """Prepares a preference dataset once under ``data_dir``; returns its builder.

  Args:
    name: ``"hh_rlhf"`` or ``"cai_harmless"``.
    subset: ``"harmless-base"`` / ``"helpful-base"`` for hh_rlhf; None for
      cai_harmless.
    data_dir: TFDS data directory (the prepared data go under it).
    manual_dir: directory holding the source files at their relative paths.
    download: whether to try downloading files not found in ``manual_dir``.
    checksums: ``{relative path: sha256}`` added to (or overriding) the
      recorded digests a downloaded file must match (:data:`SOURCE_SHA256`).

  Raises:
    FileNotFoundError: the source files are neither in ``manual_dir`` nor
      downloadable; the message lists where to put which file.
    ChecksumError: a downloaded file does not match its recorded SHA-256, or
      has none recorded.
  """
  builder = _builder(name, subset, data_dir, download, checksums)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared() and manual_dir is not None:
    recorded = _sources_metadata(builder) or {}
    for split, (rel, _) in builder.source_files().items():
      local = pathlib.Path(manual_dir) / rel
      if local.is_file() and recorded.get(split, {}).get("sha256") != _sha256(local):
        mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Regenerate.
        break
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode))
  if mode != tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS:
    builder = _builder(name, subset, data_dir, download, checksums)  # Reads the new metadata.
  return builder


def preference_source(
    name: str,
    subset: str | None = None,
    split: str = "train",
    data_dir: os.PathLike | str | None = None,
    manual_dir: os.PathLike | str | None = None,
    download: bool = True,
    checksums: dict[str, str] | None = None,
):
  """The random-access source of one split (prepared if needed; ``checksums`` as in :func:`prepare_preferences`).

  ``src[i]`` is a dict of UTF-8 bytes ``id, prompt, chosen, rejected``; stream
  it with ``grain.MapDataset.source(src)``.
  """
  builder = prepare_preferences(name, subset, data_dir, manual_dir, download, checksums)
  if split not in builder.info.splits:
    raise ValueError(f"{name} has splits {sorted(builder.info.splits)}, not {split!r}.")
  full = f"{builder.name}/{subset}" if subset else builder.name
  return tfds.data_source(full, split=split, data_dir=data_dir, download=False)


def load_preferences(
    name: str,
    subset: str | None = None,
    split: str = "train",
    data_dir: os.PathLike | str | None = None,
    manual_dir: os.PathLike | str | None = None,
    download: bool = True,
    checksums: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
  """One split as arrays (prepares once, then reads through ``tfds.data_source``).

  ``checksums``: as in :func:`prepare_preferences`.

  Returns:
    ``{"id", "prompt", "chosen", "rejected"}``, each ``[N]`` object arrays of
    str, in file order.
  """
  src = preference_source(name, subset, split, data_dir, manual_dir, download, checksums)
  n = len(src)
  keys = ("id", "prompt", "chosen", "rejected")
  out = {k: np.empty(n, dtype=object) for k in keys}
  for j, ex in prepared.records(src, step=1024):  # Damaged records name the folder to delete.
    for k in keys:
      out[k][j] = ex[k].decode("utf-8")
  return out


def preference_cleanup_stats(
    name: str,
    subset: str | None = None,
    data_dir: os.PathLike | str | None = None,
    manual_dir: os.PathLike | str | None = None,
    download: bool = True,
) -> dict[str, Any]:
  """``{split: counts, "sources": {split: {file, sha256}}}`` of a prepared dataset."""
  builder = prepare_preferences(name, subset, data_dir, manual_dir, download)
  out = {"sources": _sources_metadata(builder)}
  for split in builder.info.splits:
    out[split] = dict(builder.info.metadata[split])
  return out
