"""Reading prepared TFDS data back: damage on disk becomes one error naming the folder to delete.

The array_record files are Riegeli files, whose chunks carry their own hashes:
a flipped bit in a record fails with Riegeli's "Corrupted Riegeli/records
file" RuntimeError, and a truncated file yields empty records. Both, and
prepared metadata that no longer parses, become a `PreparedDataError` that
says which folder to delete; the next run prepares it again from its source.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import json_format

# What TFDS raises on a damaged dataset_info.json / metadata.json of a prepared folder.
METADATA_ERRORS = (json.JSONDecodeError, json_format.ParseError)


class PreparedDataError(RuntimeError):
  """Prepared TFDS data on disk that cannot be read back (a damaged or truncated file)."""


def damaged(folder: os.PathLike | str, detail: str) -> PreparedDataError:
  folder = os.path.abspath(folder)
  return PreparedDataError(
      f"the prepared data set at {folder} is damaged ({detail}). Delete that folder (rm -rf {shlex.quote(folder)}) "
      "and rerun the same command: it is prepared again from its source files.")


def version_folder(builder_cls, config: str | None, data_dir: os.PathLike | str) -> str:
  """``data_dir/NAME[/CONFIG]/VERSION``: where TFDS keeps one prepared data set."""
  parts = [os.fspath(data_dir), builder_cls.name, *([config] if config else []), str(builder_cls.VERSION)]
  return os.path.join(*parts)


def records(src, step: int) -> Iterator[tuple[int, Mapping[str, Any]]]:
  """``(index, example)`` of every record of a ``tfds.data_source``, ``step`` records per read.

  Raises:
    PreparedDataError: a record fails its Riegeli hash or is missing.
  """
  folder = src.dataset_info.data_dir
  n = len(src)
  for start in range(0, n, step):
    try:
      batch = src.__getitems__(range(start, min(n, start + step)))
    except RuntimeError as exc:  # "Corrupted Riegeli/records file: chunk data hash mismatch ..."
      raise damaged(folder, str(exc).split(";")[0]) from exc
    for i, example in enumerate(batch, start):
      # A truncated file (its index lost) reads as records whose every field is None.
      if example is None or any(value is None for value in example.values()):
        raise damaged(folder, f"record {i} of {n} cannot be read; a file was cut short")
      yield i, example
