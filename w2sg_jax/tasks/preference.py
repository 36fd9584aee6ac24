r"""Pairwise preferences (HH-RLHF, CAI-Harmless): the reward-model setting of Yao et al.

Each example is a pair of transcripts (prompt + final response) of which one was
preferred. A reward model scores each transcript; with the margin
:math:`z = r(a) - r(b)` the model's 2-class logits are ``[0, z]``, so

.. math::

  p(\text{a preferred}) = \mathrm{softmax}([0, z])_1 = \sigma(z),

and every classification loss of ``w2sg_jax.losses`` applies unchanged. The
weak label of a pair is the weak model's :math:`\sigma(z_\text{weak})` (the
pipeline's softmax of these logits), and label noise moves it to
:math:`0.5 + a\,(q - 0.5)` on a fraction of the pairs (``student.noise``).

Presentation order. A model that always scored the first response higher must
not look perfect, so each pair is shown as (a, b) in an order drawn per
example id: ``a`` is the chosen response exactly when the first byte of
``sha256(f"{order_seed}:{id}")`` is odd. The label is 1 when ``a`` is the
chosen one. Accuracy is then the fraction of pairs on which the model's margin
points at the chosen response, and AUROC is defined (both classes occur).

Tokenization. Transcripts are tokenized with the weak and the strong
checkpoint's tokenizers (once when they are identical, as in the GPT-2
family) and truncated from the LEFT to ``data.max_length`` tokens, so the
final responses, which decide the preference, survive. No pair is dropped;
the number of truncated pairs is logged and enters the fingerprint.

Config (``experiments/paper_hh.py`` documents every key): ``data.dataset``
(``hh_rlhf`` | ``cai_harmless``), ``data.subset``, ``data.source_splits``,
``data.data_dir``, ``data.manual_dir``, ``data.sizes``, ``data.split_seed``,
``data.order_seed``, ``data.max_length``; per role (``weak``, ``strong``):
``checkpoint``, ``num_layers``, ``dtype``, ``finetune``, ``top_layers``,
``pooling``, ``head_hidden``, ``lora``, ``remat`` (read as in ``tasks/pretrained_roles.py``,
which the ``text_classification`` task shares).

Loss names. ``<loss>+conf`` (e.g. ``js+conf``) is ``<loss>`` with the
confidence term of Burns et al. at the defaults of their release
(``confidence=0.5``, ``warmup=0.1``, ``confidence_schedule="burns"``),
overridable via ``student.loss_hparams["js+conf"]``. The loss registry
(``w2sg_jax.losses``) provides these names; this module registers nothing.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from w2sg_jax import config as schema
from w2sg_jax.data import splits as splits_lib
from w2sg_jax.data import tokenize as tokenize_lib
from w2sg_jax.models import heads as heads_lib
from w2sg_jax.data.task import Split, split_sizes
from w2sg_jax.log import log
from w2sg_jax.tasks import pretrained_roles as roles_lib
from w2sg_jax.tasks.pretrained_roles import tokenizer_fingerprint  # noqa: F401 (part of this module's API)

VERSION = "1.0.0"  # Bump when the example construction changes: it is part of every hash.

DATASETS = ("hh_rlhf", "cai_harmless")
INPUT_KEYS = ("a_ids", "a_mask", "b_ids", "b_mask")

def _log(msg: str) -> None:
  log.info("%s", msg)


# ------------------------------------------------------------ presentation


def a_is_chosen(ids: np.ndarray, seed: int) -> np.ndarray:
  """Whether the chosen response is shown first, per example id ``[N]`` bool.

  A pure function of ``(seed, id)``: an example keeps its order whatever split
  or subset it lands in. ``sha256(f"{seed}:{id}")[0]`` is odd with probability
  1/2 for every id, independently across ids.
  """
  return np.array(
      [hashlib.sha256(f"{int(seed)}:{i}".encode("utf-8")).digest()[0] & 1 == 1 for i in ids], dtype=bool
  ).reshape(len(ids))


def present_pairs(
    chosen: np.ndarray, rejected: np.ndarray, first_is_chosen: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(a_texts [N], b_texts [N], labels [N] int32)`` with label 1 iff a is the chosen one."""
  a = np.where(first_is_chosen, chosen, rejected)
  b = np.where(first_is_chosen, rejected, chosen)
  return a, b, first_is_chosen.astype(np.int32)


# ------------------------------------------------------------ tokenization


def truncated_rows(tokenizer, texts, *, max_length: int) -> np.ndarray:
  """``[N]`` bool: the texts whose tokens (specials included) exceed ``max_length``."""
  prefix, suffix = tokenize_lib.special_tokens(tokenizer)
  budget = int(max_length) - len(prefix) - len(suffix)
  tok = tokenize_lib._bare_copy(tokenizer)  # pylint: disable=protected-access
  lengths = np.array([len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)], np.int64)
  return lengths.reshape(len(texts)) > budget


def encode_pairs(
    tokenizer, a_texts, b_texts, *, max_length: int, pad_id: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Tokenizes both sides of N pairs, truncating from the left.

  Both sides are encoded in one call, so they share the padded width ``T``.

  Returns:
    ``(inputs, truncated)``: ``inputs`` holds ``a_ids, a_mask, b_ids, b_mask``
    ``[N, T]`` int32 (right-padded; padding is where the mask is 0), and
    ``truncated`` ``[N]`` bool marks the pairs of which at least one side lost
    tokens (on the left).
  """
  n = len(a_texts)
  enc = tokenize_lib.encode(
      tokenizer, list(a_texts) + list(b_texts), max_length=max_length, truncation_side="left", pad_id=pad_id
  )
  cut = truncated_rows(tokenizer, list(a_texts) + list(b_texts), max_length=max_length)
  if int(cut.sum()) != enc.num_truncated:  # Two counts of the same thing; they must agree.
    raise AssertionError(f"truncation count mismatch: {int(cut.sum())} != {enc.num_truncated}")
  inputs = {
      "a_ids": enc.input_ids[:n],
      "a_mask": enc.attention_mask[:n],
      "b_ids": enc.input_ids[n:],
      "b_mask": enc.attention_mask[n:],
  }
  return inputs, cut[:n] | cut[n:]


# --------------------------------------------------------------- the model


class PairRewardModel(heads_lib.RewardModel):
  """A reward model called on a presented pair: ``(a, b) -> logits [B, 2] = [0, r(a) - r(b)]``.

  A subclass rather than a wrapper, so parameter paths stay ``encoder/...`` and
  ``head/...`` as ``trainable_filter`` expects.
  """

  def __call__(self, a_ids, a_mask, b_ids, b_mask):
    return self.pair_logits(a_ids, a_mask, b_ids, b_mask)


# ---------------------------------------------------------------- the task


class PreferenceTask(roles_lib.PretrainedRolesTask):
  """HH-RLHF / CAI-Harmless pairs, reward models on both sides; see the module docstring."""

  name = "preference"
  num_classes = 2
  model_kind = "reward model"

  def _prepare_data(self, config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
    return prepare(config, cache_dir)

  def _head_model(self, encoder, config, *, pooling, hidden_sizes, rngs) -> PairRewardModel:
    del config  # A reward model has one output whatever the data.
    return PairRewardModel(encoder, pooling=pooling, hidden_sizes=hidden_sizes, rngs=rngs)


# ------------------------------------------------------------ preparation


def _none_if_empty(x: Any) -> Any:
  return None if x in (None, "") else x


def load_pool(config: schema.Experiment, cache_dir: str) -> dict[str, np.ndarray]:
  """Every pair of ``data.source_splits``, concatenated, a pair id kept once.

  Returns:
    ``{"id", "chosen", "rejected"}``, ``[N]`` object arrays of str.
  """
  from w2sg_jax.data import preference as preference_lib  # pylint: disable=g-import-not-at-top

  cfg = config.data  # Its dataset is one of DATASETS (the schema's check).
  data_dir = _none_if_empty(cfg.data_dir) or os.path.join(cache_dir, "tfds")
  manual_dir = _none_if_empty(cfg.manual_dir)
  parts = [
      preference_lib.load_preferences(
          cfg.dataset,
          _none_if_empty(cfg.subset),
          str(split),
          data_dir=os.path.expanduser(data_dir),
          manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
          download=cfg.download,
      )
      for split in cfg.source_splits
  ]
  pool = {k: np.concatenate([p[k] for p in parts]) for k in ("id", "chosen", "rejected")}
  _, first = np.unique(pool["id"].astype(str), return_index=True)
  keep = np.sort(first)  # File order, first occurrence.
  if len(keep) < len(pool["id"]):
    _log(f"{len(pool['id']) - len(keep)} pairs appear in more than one source split; kept once.")
  return {k: v[keep] for k, v in pool.items()}


def load_presplit(config: schema.Experiment, cache_dir: str, sizes: dict[str, int],
                  name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """A source whose splits are weak_train, w2s_train and test, kept as given.

  Each split is the first ``sizes[split]`` pairs of its own source split, in
  file order (Yao et al.'s pre-split single-turn files); no pair moves
  between splits, and ``split_seed`` is not used.

  Returns:
    ``(pool, parts)``: the three source splits concatenated, and each split's
    row indices into it.
  """
  per_split = {}
  for split in sizes:
    one = config.replace(data=config.data.replace(source_splits=(split,)))
    per_split[split] = load_pool(one, cache_dir)
    if sizes[split] > len(per_split[split]["id"]):
      raise ValueError(
          f"data.sizes.{split}={sizes[split]}, but {name}'s {split} split holds only {len(per_split[split]['id'])}"
          f" pairs (after cleaning); lower data.sizes.{split} to at most {len(per_split[split]['id'])}."
      )
  pool = {k: np.concatenate([per_split[s][k] for s in sizes]) for k in ("id", "chosen", "rejected")}
  parts, start = {}, 0
  for split in sizes:
    parts[split] = np.arange(start, start + sizes[split])
    start += len(per_split[split]["id"])
  return pool, parts


def prepare(config: schema.Experiment, cache_dir: str) -> dict[str, Any]:
  """Splits, presentation order and tokens of every split, plus the data fingerprint.

  Returns:
    ``{"splits": {name: Split}, "fingerprint": {...}, "truncated_ids": {name: [ids]}}``.

  Raises:
    ValueError: the data hold fewer pairs than ``data.sizes`` asks for (the
      message gives both numbers and the fix), or a bad config value.
  """
  cfg = config.data
  sizes = split_sizes(cfg.sizes)
  name = f"{cfg.dataset}" + (f"/{cfg.subset}" if cfg.subset else "")
  if set(cfg.source_splits) == set(sizes):  # The source is pre-split (hh_rlhf/harmless-single-turn): keep it.
    pool, parts = load_presplit(config, cache_dir, sizes, name)
  else:
    pool = load_pool(config, cache_dir)
    wanted = sum(v for v in sizes.values() if v > 0)
    if wanted > len(pool["id"]):
      raise ValueError(
          f"data.sizes={sizes} needs {wanted} pairs, but {name} splits {list(cfg.source_splits)} hold only"
          f" {len(pool['id'])} (after cleaning). Lower data.sizes to add up to at most {len(pool['id'])},"
          " or add a source split to data.source_splits."
      )
    parts = splits_lib.split_indices(len(pool["id"]), sizes, seed=cfg.split_seed)

  max_length = cfg.max_length
  tokenizers, tok_hash = roles_lib.role_tokenizers(config)
  splits: dict[str, Split] = {}
  truncated: dict[str, dict[str, int]] = {}
  truncated_ids: dict[str, list[str]] = {}
  content = hashlib.sha256()
  for split, idx in parts.items():
    ids = pool["id"][idx].astype(str)
    a, b, labels = present_pairs(pool["chosen"][idx], pool["rejected"][idx], a_is_chosen(ids, cfg.order_seed))
    for row in zip(ids, a, b):
      content.update("\x00".join(row).encode("utf-8") + b"\x01")
    encoded = roles_lib.per_role(
        tok_hash, lambda role: encode_pairs(tokenizers[role], a, b, max_length=max_length))  # pylint: disable=cell-var-from-loop
    views = {role: view for role, (view, _) in encoded.items()}
    cuts = {role: cut for role, (_, cut) in encoded.items()}
    truncated[split] = {role: int(c.sum()) for role, c in cuts.items()}
    truncated_ids[split] = ids[cuts["weak"] | cuts["strong"]].tolist()
    splits[split] = Split(ids=ids, labels=labels, inputs=views)
    _log(
        f"{name} {split}: {len(ids)} pairs, {labels.mean():.1%} with the chosen response first;"
        f" truncated on the left to {max_length} tokens: {truncated[split]['weak']} (weak view),"
        f" {truncated[split]['strong']} (strong view)"
        + (f", e.g. ids {truncated_ids[split][:3]}" if truncated_ids[split] else "")
    )
  fingerprint = {
      "version": VERSION,
      "dataset": str(cfg.dataset),
      "subset": cfg.subset,
      "source_splits": [str(s) for s in cfg.source_splits],
      "pool_size": int(len(pool["id"])),
      "sizes": sizes,
      "split_seed": cfg.split_seed,
      "order_seed": cfg.order_seed,
      "max_length": max_length,
      "truncation_side": "left",
      "tokenizers": tok_hash,
      "content_sha256": content.hexdigest(),
      "truncated_pairs": truncated,
  }
  return {"splits": splits, "fingerprint": fingerprint, "truncated_ids": truncated_ids}
