"""Readers for the ``files`` task: a local CSV, JSONL or Parquet file (or one per split), or a Hugging Face dataset.

Every reader returns a :class:`Table`: the column names in file order and
``{column: [values]}``, plus where it came from (for messages) and the
sha256 of the bytes read (for the fingerprint; never the path, so a moved
file keeps its keys).

Rows become examples through :func:`classification_rows` (``text`` +
``label``, any number of classes; or a ``template`` over the row's columns)
and :func:`pair_rows` (``prompt`` + ``chosen`` + ``rejected``). Each bad input
is ONE paragraph (:class:`DataFileError`), raised before any tokenizing or
compute: a missing column (naming the file and the columns it has), an empty
file, a label outside the mapping (the value and its row), a NaN or empty
text (its row), an unknown format.

Row numbers in messages count data rows from 1 (a CSV's header is line 1, so
data row ``r`` is on line ``r + 1``).

The hub road imports ``datasets`` (``pip install 'w2sg-jax[hf]'``) only when a
hub source is read; offline it fails with a message saying what to do.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
ROLES = ("id", "text", "label", "prompt", "chosen", "rejected")


class DataFileError(ValueError):
  """One paragraph about a data file: what is wrong, where, and how to fix it."""


@dataclasses.dataclass
class Table:
  """A read source: ``columns`` in order, ``data[column]`` a list of one value per row."""

  where: str  # For messages: the path, or "hub dataset NAME (config, revision, split)".
  columns: list[str]
  data: dict[str, list[Any]]
  sha256: str  # Of the file's bytes, or of the hub rows as canonical JSON.

  def __len__(self) -> int:
    return len(next(iter(self.data.values()))) if self.data else 0


# ------------------------------------------------------------------ local files


def file_format(path: str, fmt: str = "") -> str:
  """``fmt`` if given, else the one the extension names; anything else is a :class:`DataFileError`."""
  if fmt:
    if fmt not in FORMATS:
      raise DataFileError(f"data.format={fmt!r} is not a format the files task reads; use one of {', '.join(FORMATS)}"
                          " (or '' to take it from the file's extension).")
    return fmt
  ext = os.path.splitext(path)[1].lower()
  if ext not in _EXTENSIONS:
    raise DataFileError(f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; the files task reads"
                        f" {', '.join(sorted(_EXTENSIONS))}. Rename the file or set data.format to one of"
                        f" {', '.join(FORMATS)}.")
  return _EXTENSIONS[ext]


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def read_file(path: str, fmt: str = "") -> Table:
  """The table in ``path`` (CSV with a header row, JSON lines of objects, or Parquet)."""
  path = os.path.expanduser(path)
  fmt = file_format(path, fmt)
  if not os.path.isfile(path):
    raise DataFileError(f"{path}: no such file. Set data.source (or data.split_files) to an existing {fmt} file.")
  if os.path.getsize(path) == 0:
    raise DataFileError(f"{path} is empty (0 bytes); the files task needs a {fmt} file with a header and at least one"
                        " row per example.")
  digest = file_sha256(path)
  if fmt == "csv":
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark is not a column.
      reader = csv.reader(f)
      header = next(reader, None)
      rows = list(reader)
    if not header:
      raise DataFileError(f"{path} has no header row; the first line of a CSV must name its columns.")
    rows = [r for r in rows if r]  # A trailing blank line is not a row.
    for i, r in enumerate(rows):
      if len(r) != len(header):
        raise DataFileError(f"{path}, data row {i + 1} (line {i + 2}): {len(r)} fields, but the header names"
                            f" {len(header)} ({', '.join(header)}); quote fields that contain commas or newlines.")
    data = {c: [r[j] for r in rows] for j, c in enumerate(header)}
    columns = list(header)
  elif fmt == "jsonl":
    columns, records = [], []
    with open(path, encoding="utf-8") as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataFileError(f"{path}, line {line_no}: not JSON ({e.msg}); a JSONL file holds one JSON object per"
                              " line.") from None
        if not isinstance(obj, dict):
          raise DataFileError(f"{path}, line {line_no}: a {type(obj).__name__}, not an object; each line must be a"
                              " JSON object of column -> value.")
        for k in obj:
          if k not in columns:
            columns.append(k)
        records.append(obj)
    data = {c: [r.get(c) for r in records] for c in columns}
  else:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    try:
      table = pq.read_table(path)
    except Exception as e:  # pylint: disable=broad-except  (pyarrow raises several kinds)
      raise DataFileError(f"{path}: not a readable Parquet file ({e}).") from None
    columns = list(table.column_names)
    data = table.to_pydict()
  out = Table(where=path, columns=columns, data=data, sha256=digest)
  if not columns or len(out) == 0:
    raise DataFileError(f"{path} holds no rows (columns: {', '.join(columns) or 'none'}); the files task needs at least"
                        " one example.")
  return out


# ---------------------------------------------------------------- the hub road


def _canonical_sha256(data: Mapping[str, list[Any]], columns: Sequence[str]) -> str:
  h = hashlib.sha256()
  for c in columns:
    h.update(json.dumps([c, data[c]], sort_keys=True, default=str, ensure_ascii=False).encode("utf-8"))
  return h.hexdigest()


def load_hf_split(name: str, config: str, revision: str, split: str) -> tuple[list[str], dict[str, list[Any]]]:
  """``(columns, {column: values})`` of one split of a hub dataset, through ``datasets``.

  The tests replace this function to read a fixture in the hub's schema; what
  comes after it (:func:`read_hf`) is the same road.
  """
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataFileError(f"data.hf_dataset={name!r} needs the 'datasets' package: pip install 'w2sg-jax[hf]'. Or"
                        " download the data once and point data.source at a local CSV, JSONL or Parquet file.") \
        from None
  try:
    ds = datasets.load_dataset(name, config or None, revision=revision or None, split=split)
  except Exception as e:  # pylint: disable=broad-except  (offline, missing revision, auth: each its own class)
    raise DataFileError(
        f"Could not load the hub dataset {name!r} (config {config or 'default'!r}, revision {revision or 'default'!r},"
        f" split {split!r}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Without a network, set"
        " HF_DATASETS_OFFLINE=1 with the dataset already in the Hugging Face cache, or export it to a local file"
        " (e.g. ds.to_parquet(...)) and set data.source to it.") from None
  return list(ds.column_names), ds.to_dict()


def read_hf(name: str, config: str, revision: str, split: str) -> Table:
  where = f"hub dataset {name}" + (f"/{config}" if config else "") + f" (revision {revision or 'default'}, split {split})"
  columns, data = load_hf_split(name, config, revision, split)
  table = Table(where=where, columns=list(columns), data={c: list(data[c]) for c in columns},
                sha256=_canonical_sha256(data, columns))
  if not columns or len(table) == 0:
    raise DataFileError(f"{where} holds no rows; check data.hf_splits.")
  return table


# ------------------------------------------------------------------- rows


def _missing(table: Table, needed: Mapping[str, str] | Sequence[tuple[str, str]], hint: str = "") -> None:
  """Raises when a needed column is not in the table: the file, the column(s) and the columns it has.

  ``needed`` maps who reads a column (e.g. ``data.columns.text``) to its name.
  """
  pairs = list(needed.items()) if isinstance(needed, Mapping) else list(needed)
  absent = [(who, col) for who, col in pairs if col not in table.data]
  if absent:
    what = ", ".join(f"{col!r} ({who})" for who, col in absent)
    hint = hint or ("Map each role to one of them in data.columns (e.g. --config.data.columns.text=sentence).")
    raise DataFileError(f"{table.where} has no column {what}; its columns are: {', '.join(table.columns)}. {hint}")


def _is_blank(value: Any) -> bool:
  if value is None:
    return True
  if isinstance(value, float) and math.isnan(value):
    return True
  return isinstance(value, str) and not value.strip()


def _texts(table: Table, column: str, role: str) -> list[str]:
  out = []
  for i, v in enumerate(table.data[column]):
    if _is_blank(v):
      raise DataFileError(f"{table.where}, data row {i + 1}: the {role} (column {column!r}) is {_shown(v)}; every row"
                          " needs a non-empty text. Drop or fill that row.")
    out.append(str(v))
  return out


def _shown(v: Any) -> str:
  if v is None:
    return "missing (null)"
  if isinstance(v, float) and math.isnan(v):
    return "NaN"
  return f"empty ({v!r})"


def template_fields(template: str) -> list[str]:
  return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def render(table: Table, template: str) -> list[str]:
  """``template.format(**row)`` per row: the text a classifier sees."""
  _missing(table, {f"data.template field {{{f}}}": f for f in template_fields(template)},
           "Name only columns the file has in data.template.")
  out = []
  for i in range(len(table)):
    row = {f: table.data[f][i] for f in template_fields(template)}
    for f, v in row.items():
      if _is_blank(v):
        raise DataFileError(f"{table.where}, data row {i + 1}: column {f!r} (in data.template) is {_shown(v)}; every"
                            " row needs a non-empty text. Drop or fill that row.")
    out.append(template.format(**row))
  return out


def label_index(value: Any, label_names: Sequence[str], num_classes: int) -> int | None:
  """The class of ``value``: its position in ``label_names``, else an integer 0..num_classes-1; None if neither."""
  if label_names:
    key = str(value).strip() if not isinstance(value, bool) else str(value).lower()
    names = [str(n) for n in label_names]
    for cand in (key, key.lower()):
      if cand in names:
        return names.index(cand)
    return None
  if isinstance(value, bool) or value is None:
    return None
  try:
    f = float(value)
  except (TypeError, ValueError):
    return None
  if not math.isfinite(f) or f != int(f) or not 0 <= f < num_classes:
    return None
  return int(f)


def labels(table: Table, column: str, label_names: Sequence[str], num_classes: int) -> np.ndarray:
  out = np.empty(len(table), np.int32)
  for i, v in enumerate(table.data[column]):
    y = label_index(v, label_names, num_classes)
    if y is None:
      mapping = (f"data.label_names maps {', '.join(repr(str(n)) for n in label_names)} to classes"
                 f" 0..{len(label_names) - 1}" if label_names else
                 f"with no data.label_names, labels must be the integers 0..{num_classes - 1} (data.num_classes)")
      raise DataFileError(f"{table.where}, data row {i + 1}: label {v!r} (column {column!r}) is outside the mapping;"
                          f" {mapping}. Add the value to data.label_names, fix the row, or raise data.num_classes.")
    out[i] = y
  return out


def _ids(table: Table, column: str, prefix: str) -> np.ndarray:
  if column:
    ids = [str(v) for v in table.data[column]]
    seen: dict[str, int] = {}
    for i, v in enumerate(ids):
      if v in seen:
        raise DataFileError(f"{table.where}: id {v!r} (column {column!r}) appears in data rows {seen[v] + 1} and"
                            f" {i + 1}; ids must be unique (weak labels are stored against them). Set"
                            " data.columns.id='' to number the rows instead.")
      seen[v] = i
    return np.array(ids, dtype=object)
  return np.array([f"{prefix}{i}" for i in range(len(table))], dtype=object)


def classification_rows(table: Table, columns: Mapping[str, str], *, label_names: Sequence[str], num_classes: int,
                        template: str = "", id_prefix: str = "") -> dict[str, Any]:
  """``{"id" [N] str, "text" [N] str, "label" [N] int32}``: every check before any compute."""
  needed = {"label": columns.get("label", "label")}
  if not template:
    needed["text"] = columns.get("text", "text")
  if columns.get("id"):
    needed["id"] = columns["id"]
  _missing(table, {f"data.columns.{role}": col for role, col in needed.items()})
  texts = render(table, template) if template else _texts(table, needed["text"], "text")
  return {"id": _ids(table, columns.get("id", ""), id_prefix), "text": np.array(texts, dtype=object),
          "label": labels(table, needed["label"], label_names, num_classes)}


def pair_rows(table: Table, columns: Mapping[str, str], *, separator: str = "\n", id_prefix: str = "") -> dict[str, Any]:
  """``{"id", "chosen", "rejected"}`` [N] str: each response after its prompt (when data.columns.prompt is set)."""
  needed = {"chosen": columns.get("chosen", "chosen"), "rejected": columns.get("rejected", "rejected")}
  for role in ("prompt", "id"):
    if columns.get(role):
      needed[role] = columns[role]
  _missing(table, {f"data.columns.{role}": col for role, col in needed.items()})
  chosen = _texts(table, needed["chosen"], "chosen response")
  rejected = _texts(table, needed["rejected"], "rejected response")
  if "prompt" in needed:
    prompts = _texts(table, needed["prompt"], "prompt")
    chosen = [p + separator + c for p, c in zip(prompts, chosen)]
    rejected = [p + separator + r for p, r in zip(prompts, rejected)]
  return {"id": _ids(table, columns.get("id", ""), id_prefix), "chosen": np.array(chosen, dtype=object),
          "rejected": np.array(rejected, dtype=object)}
