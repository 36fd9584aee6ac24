"""Tokenization to padded int32 arrays, with explicit truncation and length buckets.

Two rules the rest of the code relies on:

* **The attention mask is the truth about padding.** ``pad_id`` fills the
  padded positions but must never be used to find them: GPT-2 has no pad token
  and id 0 there is "!"; BERT's [PAD] is 0 but a model may see 0 as content.
* **Nothing is dropped.** Texts longer than ``max_length`` are truncated and
  counted in ``Encoded.num_truncated``; the caller decides what to report.

The tokenizer's own padding and truncation settings are ignored (``encode``
works on a copy with ``no_padding()`` and ``no_truncation()``): the MiniLM
``tokenizer.json`` pads every text to 128 tokens by itself, while tweets have
about 33, so keeping it would cost ~4x the compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tokenizers

__all__ = ["Encoded", "encode", "length_buckets", "special_tokens", "round_up"]


@dataclasses.dataclass(frozen=True)
class Encoded:
  """A padded batch of token ids.

  Attributes:
    input_ids: ``[N, T]`` int32; positions ``t >= lengths[n]`` hold ``pad_id``.
    attention_mask: ``[N, T]`` int32, 1 on real tokens (specials included) and
      0 on padding. Use this, never ``input_ids == pad_id``, to find padding.
    lengths: ``[N]`` int32, the number of real tokens per row
      (``attention_mask.sum(-1)``), each ``<= max_length``.
    num_truncated: how many texts were longer than ``max_length`` and lost
      tokens (none are dropped).
  """

  input_ids: np.ndarray
  attention_mask: np.ndarray
  lengths: np.ndarray
  num_truncated: int


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` that is ``>= n`` (``multiple >= 1``)."""
  return -(-int(n) // int(multiple)) * int(multiple)


def _bare_copy(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  # A copy, so the caller's tokenizer keeps its settings.
  tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  tok.no_padding()
  tok.no_truncation()
  return tok


def special_tokens(tokenizer: tokenizers.Tokenizer) -> tuple[list[int], list[int]]:
  """The ids the post-processor adds before and after a single text.

  Found by encoding a probe text with and without special tokens: for BERT /
  MiniLM this is ``([CLS], [SEP])``; for GPT-2-style tokenizers ``([], [])``.

  Returns:
    ``(prefix_ids, suffix_ids)``.
  """
  tok = _bare_copy(tokenizer)
  probe = "hello world"
  content = tok.encode(probe, add_special_tokens=False).ids
  full = tok.encode(probe, add_special_tokens=True).ids
  n = len(content)
  for k in range(len(full) - n + 1):
    if full[k : k + n] == content:
      prefix, suffix = list(full[:k]), list(full[k + n :])
      break
  else:  # The post-processor rewrote the content itself; not a template.
    raise ValueError(
        "Cannot separate this tokenizer's special tokens from the content: its "
        "post-processor changes the content ids. Use a tokenizer whose "
        "post-processor only adds tokens around the text (BERT, RoBERTa, GPT-2)."
    )
  expected = tok.num_special_tokens_to_add(is_pair=False)
  if len(prefix) + len(suffix) != expected:
    raise ValueError(
        f"Found {len(prefix) + len(suffix)} special tokens around a probe text, "
        f"but the tokenizer says it adds {expected}; its post-processor is not "
        "a fixed template, which encode() needs."
    )
  return prefix, suffix


def encode(
    tokenizer: tokenizers.Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    truncation_side: str = "right",
    pad_id: int = 0,
    pad_to_multiple: int = 8,
) -> Encoded:
  """Tokenizes ``texts`` into ``[N, T]`` int32 arrays, padded on the right.

  Each row is ``prefix + content + suffix`` where prefix/suffix are the
  tokenizer's special tokens (``[CLS]`` / ``[SEP]`` for BERT, none for GPT-2)
  and ``content`` is cut to ``B = max_length - len(prefix) - len(suffix)``
  tokens: the first B with ``truncation_side="right"``, the last B with
  ``"left"`` (which keeps the end of a conversation, where the final responses
  are). The specials always survive. The padded width is

  .. math:: T = \\min(\\lceil \\max_n L_n / m \\rceil m,\\ \\text{max\\_length}),

  with ``L_n`` the row lengths and ``m = pad_to_multiple``, so a batch of short
  texts costs short sequences.

  Args:
    tokenizer: a ``tokenizers.Tokenizer``; its padding/truncation settings are
      ignored (a copy is used).
    texts: N strings.
    max_length: the most tokens a row may have, specials included.
    truncation_side: ``"right"`` keeps the start, ``"left"`` keeps the end.
    pad_id: fills padded positions. Never infer padding from it; use the mask.
    pad_to_multiple: m above; 1 disables rounding.

  Returns:
    ``Encoded`` with ``input_ids`` and ``attention_mask`` ``[N, T]`` int32,
    ``lengths`` ``[N]`` int32 and ``num_truncated``.

  Raises:
    ValueError: bad ``truncation_side``, ``pad_to_multiple < 1``, non-string
      texts, or ``max_length`` too small to hold the special tokens and one
      content token.
  """
  if truncation_side not in ("right", "left"):
    raise ValueError(
        f"truncation_side must be 'right' or 'left', got {truncation_side!r}."
    )
  if pad_to_multiple < 1:
    raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}.")
  texts = list(texts)
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise ValueError(
          f"texts[{i}] is {type(t).__name__}, not str; decode bytes first "
          "(e.g. t.decode('utf-8'))."
      )
  prefix, suffix = special_tokens(tokenizer)
  budget = int(max_length) - len(prefix) - len(suffix)
  if budget < 1:
    raise ValueError(
        f"max_length={max_length} leaves no room for content after the "
        f"{len(prefix) + len(suffix)} special tokens; use max_length >= "
        f"{len(prefix) + len(suffix) + 1}."
    )

  tok = _bare_copy(tokenizer)
  contents = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
  num_truncated = 0
  rows = []
  for ids in contents:
    if len(ids) > budget:
      num_truncated += 1
      ids = ids[:budget] if truncation_side == "right" else ids[len(ids) - budget :]
    rows.append(prefix + list(ids) + suffix)

  n = len(rows)
  lengths = np.array([len(r) for r in rows], dtype=np.int32)
  longest = int(lengths.max()) if n else 0
  width = min(round_up(longest, pad_to_multiple), int(max_length))
  input_ids = np.full((n, width), pad_id, dtype=np.int32)
  attention_mask = np.zeros((n, width), dtype=np.int32)
  for i, r in enumerate(rows):
    input_ids[i, : len(r)] = r
    attention_mask[i, : len(r)] = 1
  return Encoded(input_ids, attention_mask, lengths, num_truncated)


def length_buckets(
    lengths: Sequence[int] | np.ndarray,
    *,
    batch_size: int | None = None,
    boundaries: Sequence[int] | None = None,
    pad_to_multiple: int = 8,
    max_length: int | None = None,
) -> list[tuple[np.ndarray, int]]:
  """Groups example indices by length so a batch pads to its own longest row.

  Give exactly one of:

  * ``batch_size``: indices sorted by ``(length, index)`` and cut into
    consecutive groups of ``batch_size`` (the last may be smaller). Each group
    is a batch of near-equal lengths.
  * ``boundaries``: increasing upper bounds ``b_1 < ... < b_K``; example n goes
    to the first bucket with ``lengths[n] <= b_k``, and longer ones to a final
    bucket. Empty buckets are left out.

  A group's padded length is ``round_up(max length in it, pad_to_multiple)``,
  capped at ``max_length`` when given. Pass the same ``pad_to_multiple`` and
  ``max_length`` as to ``encode``: then ``padded <= T`` and
  ``input_ids[idx, :padded]`` is the group's batch.

  Args:
    lengths: ``[N]`` token counts (e.g. ``Encoded.lengths``).
    batch_size: group size for the sorted mode.
    boundaries: bucket upper bounds for the boundary mode.
    pad_to_multiple: rounding of the padded length.
    max_length: optional cap on the padded length.

  Returns:
    A list of ``(indices [n_g] int64, padded_length int)``; every index in
    ``range(N)`` appears in exactly one group, and within a group indices are
    ascending for ``boundaries`` and in ``(length, index)`` order for
    ``batch_size``. Deterministic: equal inputs give equal outputs.
  """
  if (batch_size is None) == (boundaries is None):
    raise ValueError("Give exactly one of batch_size= or boundaries=.")
  if pad_to_multiple < 1:
    raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}.")
  lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)

  def padded(idx: np.ndarray) -> int:
    p = round_up(int(lengths[idx].max()), pad_to_multiple)
    return min(p, int(max_length)) if max_length is not None else p

  groups: list[np.ndarray] = []
  if batch_size is not None:
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    # Stable sort: ties keep index order, so the grouping is deterministic.
    order = np.argsort(lengths, kind="stable")
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
  else:
    bounds = np.asarray(list(boundaries), dtype=np.int64)
    if bounds.size == 0 or np.any(np.diff(bounds) <= 0):
      raise ValueError(
          f"boundaries must be non-empty and strictly increasing, got {list(boundaries)}."
      )
    # side="left": a length equal to a bound belongs to that bound's bucket.
    bucket = np.searchsorted(bounds, lengths, side="left")
    for b in range(len(bounds) + 1):
      idx = np.flatnonzero(bucket == b)
      if idx.size:
        groups.append(idx)
  return [(g.astype(np.int64), padded(g)) for g in groups]
