r"""Your own data as a task: a CSV, JSONL or Parquet file (or one per split), or a Hugging Face dataset.

The ``files`` task reads rows (``w2sg_jax/data/files.py``) and hands them to
the roads the other tasks already built, so nothing about models or
tokenization is new here:

* ``data.kind="classification"``: ``text`` + ``label`` columns (or a
  ``data.template`` over any columns) with any number of classes, labels
  mapped by ``data.label_names`` or given as integers 0..C-1. The rows become
  the ``Split``\s the ``text_classification`` task builds (its
  ``encode_fixed`` right-truncation and its ``TextClassifier``);
* ``data.kind="preference"``: ``prompt`` + ``chosen`` + ``rejected`` columns.
  The pairs take the ``preference`` task's road: a per-id presentation order
  (``data.order_seed``), left truncation, and a reward model whose margin is
  the 2-class logit.

Either way each role (``weak``, ``strong``) is any ``load_pretrained`` family
(``tasks/pretrained_roles.py``): fine-tuned, ``lora``, or ``finetune="head"``
(frozen, a head on its pooled features: the cheap road, e.g. with the
installed all-MiniLM-L6-v2 folder as the checkpoint), and ``random:`` specs
for tests.

``data.suite`` picks a W2SG suite entry (``data/w2s_suite.py``): the hub
dataset's rows go through that entry's peer formatter instead of the column
mapping.

Splits: with ``data.split_files`` each split is the first
``data.sizes[split]`` rows of its own file, in file order; otherwise every
row is pooled and ``data/splits.py`` draws the three splits with
``data.split_seed``.

Fingerprint: the sha256 of every file read (of the rows, for a hub source),
the column mapping, template, label mapping, sizes and seeds, and the
examples' content; never a local path, so a moved file keeps every key and an
edited one changes them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from w2sg_jax import config as schema
from w2sg_jax.data import files as files_lib
from w2sg_jax.data import splits as splits_lib
from w2sg_jax.data import w2s_suite
from w2sg_jax.data.task import SPLITS, Split, split_sizes
from w2sg_jax.log import log
from w2sg_jax.tasks import preference as preference_task
from w2sg_jax.tasks import pretrained_roles as roles_lib
from w2sg_jax.tasks import text_classification as tc

VERSION = "1.0.0"  # Bump when the example construction changes: it is part of every hash.

KINDS = ("classification", "preference")


def columns(cfg: schema.FilesDataConfig) -> dict[str, str]:
  """Role -> column name: ``data.columns`` over each role's default (an unnamed role reads its own name)."""
  defaults = {"id": "", "text": "text", "label": "label", "prompt": "", "chosen": "chosen", "rejected": "rejected"}
  return {**defaults, **{str(k): str(v) for k, v in cfg.columns.items()}}


def label_names(cfg: schema.FilesDataConfig) -> tuple[str, ...]:
  """Label values in class order: the suite entry's, else ``data.label_names``."""
  if cfg.suite:
    return w2s_suite.get(cfg.suite).label_names
  return tuple(str(n) for n in cfg.label_names)


def num_classes(config: schema.Experiment) -> int:
  """Classes: 2 for pairs and suite entries; else ``len(data.label_names)`` or ``data.num_classes``."""
  cfg = config.data
  if cfg.kind == "preference":
    return 2
  names = label_names(cfg)
  n = len(names) if names else cfg.num_classes
  if n < 2:
    raise ValueError("data.label_names or data.num_classes must give at least 2 classes for data.kind="
                     f"'classification'; got label_names={names!r}, num_classes={n}.")
  return n


def _tables(cfg: schema.FilesDataConfig) -> dict[str, list[tuple[str, files_lib.Table]]]:
  """``{"pool": [(prefix, table), ...]}`` or ``{split: [(prefix, table)]}`` for one file per split."""
  fmt, split_files = cfg.format, dict(cfg.split_files)
  source, hub = cfg.source, cfg.hf_dataset
  given = [name for name, v in (("data.source", source), ("data.split_files", split_files),
                                ("data.hf_dataset", hub)) if v]
  if len(given) != 1:
    raise ValueError(f"the files task reads exactly one of data.source (a file), data.split_files (one file per split)"
                     f" and data.hf_dataset (a hub dataset); got {', '.join(given) or 'none'}.")
  if split_files:
    if set(split_files) != set(SPLITS):
      raise ValueError(f"data.split_files must name weak_train, w2s_train and test; got {sorted(split_files)}.")
    return {s: [(f"{s}-", files_lib.read_file(str(split_files[s]), fmt))] for s in SPLITS}
  if source:
    return {"pool": [("", files_lib.read_file(source, fmt))]}
  config_name, revision = cfg.hf_config, cfg.revision
  if cfg.suite:  # A suite entry reads no moving branch unasked (data/w2s_suite.py, Revisions).
    w2s_suite.check_revision(cfg.suite, revision)
  elif not revision:
    log.warning("data.hf_dataset=%s is read at the default branch (data.revision=''); its rows are hashed into every"
                " key, but pin data.revision to a commit to make the run repeatable.", hub)
  return {"pool": [(f"{s}-", files_lib.read_hf(hub, config_name, revision, str(s)))
                   for s in cfg.hf_splits]}


def _suite_rows(entry: w2s_suite.SuiteEntry, table: files_lib.Table, prefix: str, seed: int) -> dict[str, Any]:
  files_lib._missing(  # pylint: disable=protected-access
      table, [(f"read by the suite entry {entry.name}", c) for c in entry.columns],
      f"The entry follows the hub schema of {entry.hf_dataset} ({', '.join(entry.columns)}); check data.hf_dataset,"
      " data.hf_config and data.revision.")
  ids, texts, labels = [], [], []
  for i in range(len(table)):
    row = {c: table.data[c][i] for c in entry.columns}
    rid = str(row[entry.id_column]) if entry.id_column else f"{prefix}{i}"
    text, label = entry.formatter(row, w2s_suite.row_rng(seed, rid))
    ids.append(rid)
    texts.append(text)
    labels.append(label)
  return {"id": np.array(ids, dtype=object), "text": np.array(texts, dtype=object), "label": np.array(labels, np.int32)}


def rows(config: schema.Experiment) -> tuple[dict[str, dict[str, np.ndarray]], list[dict[str, Any]]]:
  """The examples of every source, checked, before any compute: ``({"pool" | split: rows}, sources)``.

  ``sources`` lists each table read as ``{"part", "sha256", "rows"}`` (no path).
  """
  cfg = config.data
  kind = cfg.kind  # One of KINDS (the schema's check).
  cols, suite = columns(cfg), cfg.suite
  out, sources = {}, []
  for part, tables in _tables(cfg).items():
    parts = []
    for prefix, table in tables:
      sources.append({"part": part, "prefix": prefix, "sha256": table.sha256, "rows": len(table)})
      if suite:
        parts.append(_suite_rows(w2s_suite.get(suite), table, prefix, cfg.order_seed))
      elif kind == "classification":
        parts.append(files_lib.classification_rows(
            table, cols, label_names=label_names(cfg), num_classes=num_classes(config),
            template=cfg.template, id_prefix=prefix))
      else:
        parts.append(files_lib.pair_rows(table, cols, separator=cfg.pair_separator, id_prefix=prefix))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(merged["id"].astype(str), return_index=True)
    if len(first) < len(merged["id"]):
      raise files_lib.DataFileError(f"data ({part}): {len(merged['id']) - len(first)} ids appear twice across the"
                                    " sources pooled; ids must be unique (weak labels are stored against them).")
    out[part] = merged
  return out, sources


def _parts(examples: dict[str, dict[str, np.ndarray]], sizes: dict[str, int], split_seed: int):
  """``(pool, {split: indices into pool})``."""
  if "pool" in examples:
    pool = examples["pool"]
    total = len(pool["id"])
    if sum(sizes.values()) > total:
      raise ValueError(f"data.sizes={sizes} needs {sum(sizes.values())} examples, but the data hold only {total}."
                       f" Lower data.sizes to add up to at most {total}.")
    return pool, splits_lib.split_indices(total, sizes, seed=split_seed)
  for split in sizes:
    have = len(examples[split]["id"])
    if sizes[split] > have:
      raise ValueError(f"data.sizes.{split}={sizes[split]}, but data.split_files.{split} holds only {have} rows;"
                       f" lower data.sizes.{split} to at most {have}.")
  pool = {k: np.concatenate([examples[s][k] for s in sizes]) for k in examples[next(iter(sizes))]}
  parts, start = {}, 0
  for split in sizes:
    parts[split] = np.arange(start, start + sizes[split])
    start += len(examples[split]["id"])
  return pool, parts


def prepare(config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
  """Reads, checks, splits and tokenizes; returns ``{"splits", "fingerprint"}``."""
  del cache_dir  # Files are read where they are; nothing is prepared on disk.
  cfg = config.data
  kind = cfg.kind
  sizes = split_sizes(cfg.sizes)  # In name order, as text_classification takes them.
  examples, sources = rows(config)  # Every data error before any tokenizer or model loads.
  classes = num_classes(config)
  for role in roles_lib.ROLES:
    roles_lib.check_max_length(config, role)
  pool, parts = _parts(examples, sizes, cfg.split_seed)

  max_length = cfg.max_length
  tokenizers, tok_hash = roles_lib.role_tokenizers(config)
  splits: dict[str, Split] = {}
  truncated: dict[str, dict[str, int]] = {}
  content = hashlib.sha256()
  for split, idx in parts.items():
    ids = pool["id"][idx].astype(str)
    if kind == "classification":
      labels = pool["label"][idx].astype(np.int32)
      texts = [str(t) for t in pool["text"][idx]]
      for i, y, t in zip(ids, labels, texts):
        content.update(f"{i}\x00{int(y)}\x00{t}\x01".encode("utf-8"))
      encoded = roles_lib.per_role(
          tok_hash, lambda role: tc.encode_fixed(tokenizers[role], texts, max_length=max_length))  # pylint: disable=cell-var-from-loop
      truncated[split] = {role: int(n) for role, (_, n) in encoded.items()}
      shares = np.round(np.bincount(labels, minlength=classes) / max(len(ids), 1), 3).tolist()
      what = f"class shares {shares}; truncated on the right"
    else:
      first = preference_task.a_is_chosen(ids, cfg.order_seed)
      a, b, labels = preference_task.present_pairs(pool["chosen"][idx], pool["rejected"][idx], first)
      for row in zip(ids, a, b):
        content.update("\x00".join(row).encode("utf-8") + b"\x01")
      encoded = roles_lib.per_role(
          tok_hash, lambda role: preference_task.encode_pairs(tokenizers[role], a, b, max_length=max_length))  # pylint: disable=cell-var-from-loop
      truncated[split] = {role: int(np.sum(cut)) for role, (_, cut) in encoded.items()}
      what = f"{labels.mean():.1%} with the chosen response first; truncated on the left"
    splits[split] = Split(ids=ids, labels=labels, inputs={role: view for role, (view, _) in encoded.items()})
    log.info("files %s: %d examples, %s to %d tokens: %d (weak view), %d (strong view)", split, len(ids), what,
             max_length, truncated[split]["weak"], truncated[split]["strong"])
  fingerprint = {
      "version": VERSION,
      "kind": kind,
      "sources": [{k: s[k] for k in ("part", "prefix", "sha256", "rows")} for s in sources],
      "hub": ({"dataset": cfg.hf_dataset, "config": cfg.hf_config, "revision": cfg.revision,
               "splits": [str(s) for s in cfg.hf_splits]} if cfg.hf_dataset else None),
      "suite": cfg.suite,
      "columns": columns(cfg),
      "template": cfg.template,
      "label_names": list(label_names(cfg)),
      "num_classes": classes,
      "pair_separator": cfg.pair_separator,
      "sizes": sizes,
      "split_seed": cfg.split_seed,
      "order_seed": cfg.order_seed,
      "max_length": max_length,
      "tokenizers": tok_hash,
      "content_sha256": content.hexdigest(),
      "truncated": truncated,
  }
  return {"splits": splits, "fingerprint": fingerprint}


class FilesTask(roles_lib.PretrainedRolesTask):
  """Rows of local files or a hub dataset, pretrained models per role; see the module docstring."""

  name = "files"
  num_classes = 2
  model_kind = "classifier"

  def _prepare_data(self, config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
    return prepare(config, cache_dir)

  def _set_kind(self, config: schema.Experiment) -> None:
    self.num_classes = num_classes(config)  # The truth stores one-hot with it.
    self.model_kind = "reward model" if config.data.kind == "preference" else "classifier"

  def splits(self, config: schema.Experiment, cache_dir: str) -> dict[str, Split]:
    self._set_kind(config)
    return super().splits(config, cache_dir)

  def fingerprint(self, config: schema.Experiment) -> dict[str, Any]:
    self._set_kind(config)
    return super().fingerprint(config)

  def model_name(self, role: str, config: schema.Experiment) -> str:
    self._set_kind(config)
    return super().model_name(role, config)

  def _head_model(self, encoder, config, *, pooling, hidden_sizes, rngs):
    if config.data.kind == "preference":
      return preference_task.PairRewardModel(encoder, pooling=pooling, hidden_sizes=hidden_sizes, rngs=rngs)
    return tc.TextClassifier(encoder, num_classes(config), pooling=pooling, hidden_sizes=hidden_sizes, rngs=rngs)
