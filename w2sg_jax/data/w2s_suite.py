"""The W2SG dataset suite (Burns et al. 2023): hub datasets as binary classification, as the peers build them.

Each :class:`SuiteEntry` names a Hugging Face dataset, the hub columns it
reads, and a formatter ``(row, rng) -> (text, label)`` that follows a peer's
code, named in the entry's ``peer`` (openai/weak-to-strong
``weak_to_strong/datasets.py``, whose formatters EleutherAI/w2s
``w2s/ds_registry.py`` took over for these sets). They were written from
memory of those files (there is no network here): the prompt strings and the
label rules are the peers', as best known; check them against the peer file
before comparing numbers.

One deliberate difference: the peers draw every random choice (which
distractor, which response) from one ``random.Random(seed)`` in row order, so
a row's text depends on the rows before it. Here each row's ``rng`` is seeded
by ``sha256(f"{order_seed}:{id}")``: a row keeps its text whatever subset or
order is loaded.

Revisions: the peers load these sets unpinned (the default branch), and so
does ``revision=''`` here. Every key still holds the data by content: the
files task hashes the rows it read (``hub_sha256`` in the fingerprint), so a
changed hub dataset cannot pass for the old one. Pin ``data.revision`` to a
commit of the dataset repository to make a run repeatable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
  name: str
  hf_dataset: str
  hf_config: str
  hf_splits: tuple[str, ...]  # Pooled, then drawn into weak_train / w2s_train / test by the splitter.
  columns: tuple[str, ...]  # The hub columns the formatter reads.
  formatter: Callable[[dict[str, Any], random.Random], tuple[str, int]]
  peer: str
  label_names: tuple[str, ...] = ("false", "true")
  id_column: str = ""  # '' = "<split>-<row>".
  revision: str = ""


def _sciq(ex, rng):
  # openai/weak-to-strong weak_to_strong/datasets.py: format_sciq.
  hard_label = int(rng.random() < 0.5)
  ans = ex["correct_answer"] if hard_label else rng.choice([ex["distractor1"], ex["distractor2"], ex["distractor3"]])
  return f"Q: {ex['question']} A: {ans}", hard_label


def _boolq(ex, rng):
  # openai/weak-to-strong weak_to_strong/datasets.py: format_boolq.
  del rng
  return f"Passage: {ex['passage']}\nQuestion: {ex['question']}", int(bool(ex["answer"]))


def _cosmos_qa(ex, rng):
  # openai/weak-to-strong weak_to_strong/datasets.py: format_cosmosqa.
  true_answer = ex["answer" + str(int(ex["label"]))]
  if "None of the above choices ." in true_answer:
    hard_label = 0
  else:
    hard_label = int(rng.random() < 0.5)
  if hard_label:
    answer = true_answer
  else:
    candidates = [ex["answer" + str(i)] for i in range(4)]
    answer = rng.choice([x for x in candidates if x != true_answer])
  return f"Context: {ex['context']}\nQuestion: {ex['question']}\nAnswer: {answer}", hard_label


def _amazon_polarity(ex, rng):
  # openai/weak-to-strong weak_to_strong/datasets.py: format_amazon_polarity.
  del rng
  return f"{ex['title']} {ex['content']}", int(ex["label"])


def _anthropic_hh(ex, rng):
  # openai/weak-to-strong weak_to_strong/datasets.py: format_anthropic_hh (is this transcript the chosen one?).
  hard_label = int(rng.random() < 0.5)
  return (ex["chosen"] if hard_label else ex["rejected"]), hard_label


_PEER = "openai/weak-to-strong weak_to_strong/datasets.py (as in EleutherAI/w2s w2s/ds_registry.py)"

SUITE: dict[str, SuiteEntry] = {e.name: e for e in (
    # The hub moved the unprefixed ids the peers use ("sciq", "boolq", ...) under their owners; both resolve.
    SuiteEntry("sciq", "allenai/sciq", "", ("train",),
               ("question", "correct_answer", "distractor1", "distractor2", "distractor3"), _sciq,
               f"{_PEER}: format_sciq, hf_loader('sciq')"),
    SuiteEntry("boolq", "google/boolq", "", ("train",), ("question", "answer", "passage"), _boolq,
               f"{_PEER}: format_boolq, hf_loader('boolq', split_names=dict(test='validation'))"),
    SuiteEntry("cosmos_qa", "allenai/cosmos_qa", "", ("train",),
               ("id", "context", "question", "answer0", "answer1", "answer2", "answer3", "label"), _cosmos_qa,
               f"{_PEER}: format_cosmosqa, hf_loader('cosmos_qa', split_names=dict(test='validation'))",
               id_column="id"),
    SuiteEntry("amazon_polarity", "fancyzhx/amazon_polarity", "", ("train",), ("label", "title", "content"),
               _amazon_polarity, f"{_PEER}: format_amazon_polarity, hf_loader('amazon_polarity')",
               label_names=("negative", "positive")),
    SuiteEntry("anthropic_hh", "Anthropic/hh-rlhf", "", ("train",), ("chosen", "rejected"), _anthropic_hh,
               f"{_PEER}: format_anthropic_hh, hf_loader('Anthropic/hh-rlhf')",
               label_names=("rejected", "chosen")),
)}


def get(name: str) -> SuiteEntry:
  if name not in SUITE:
    raise ValueError(f"data.suite={name!r} is not a W2SG suite entry; the entries are {', '.join(SUITE)}.")
  return SUITE[name]


def row_rng(seed: int, row_id: str) -> random.Random:
  """The row's own stream: a pure function of ``(seed, id)``."""
  return random.Random(int.from_bytes(hashlib.sha256(f"{int(seed)}:{row_id}".encode("utf-8")).digest()[:8], "big"))
