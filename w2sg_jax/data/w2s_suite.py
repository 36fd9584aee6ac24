"""The W2SG dataset suite (Burns et al. 2023): hub datasets as binary classification, as the peers build them.

Each :class:`SuiteEntry` names a Hugging Face dataset and its revision, the hub
columns it reads, and a formatter ``(row, rng) -> (text, label)``.

The peer: every entry follows openai/weak-to-strong ``weak_to_strong/datasets.py``
at commit ``6b450f2cee3714d6f886e5e1910bac73633bf69a`` (:data:`PEER_COMMIT`;
the file is unchanged since ``c86721725badb450876719b7c3aab1e3c3b652e3``), the
code of Burns et al. Each formatter is that file's ``format_<name>`` statement
for statement: the same prompt template, the same label rule, the same random
draws (``int(rng.random() < 0.5)`` for the label, ``rng.choice`` for the
distractor), returning ``(txt, hard_label)`` instead of
``dict(txt=..., hard_label=...)``; the peer's one ``assert`` (CosmosQA) is a
``ValueError`` that names the row. EleutherAI/w2s ``w2s/ds_registry.py`` at
commit ``a929af0bed9d53e6ff3bd05b83a8e1b1568ae847`` has the same five
formatters (the same syntax tree), but loads around them differently: it
shuffles, drops empty texts, undersamples to 50/50, ids rows by
``sha1(txt)[:8]`` and draws SciQ's test set from all splits
(``n_test=3000``); none of that is followed here.

One deliberate difference from both: the peers draw every random choice from
one ``random.Random(seed)`` in row order, so a row's text depends on the rows
before it. Here each row's ``rng`` is seeded by ``sha256(f"{order_seed}:{id}")``
(`row_rng`): a row keeps its text and label whatever subset or order is
loaded, which weak labels stored against ids need. Given the same ``rng``, a
formatter returns what the peer's function returns.

Revisions. A hub dataset's revision is a commit of its repository on the hub.
The peers pin none (``hf_load_dataset(name, split=...)`` reads the default
branch). ``anthropic_hh`` is pinned to ``09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa``,
the Anthropic/hh-rlhf commit whose files ``data/preference.py`` already pins
and checks by SHA-256. The other entries carry ``revision=''``: no commit of
theirs has been checked here, and a hash that was not read from the hub would
be a guess. For those, the files task refuses to read the hub until
``data.revision`` is set (`check_revision`, before any compute): to a commit
(the dataset's history page on the hub lists them) to repeat a run, or to a
branch name such as ``main`` to read today's rows knowingly. A suite entry is
there to compare numbers with the peers' and with later runs; a default branch
that moves under a cached run would make that comparison silently wrong. Either
way the rows read enter every cache key by content (``hub_sha256`` in the task
fingerprint), so a changed dataset never passes for the old one.

Hub names: the peers pass the ids from before the hub moved these datasets
under their owners (``sciq``, ``boolq``, ``cosmos_qa``, ``amazon_polarity``);
the entries use the owners' ids (``allenai/sciq``, ...), to which the old ids
redirect: one repository, one history of commits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Callable
from typing import Any

from w2sg_jax.log import log

PEER_REPO = "openai/weak-to-strong"
PEER_FILE = "weak_to_strong/datasets.py"
PEER_COMMIT = "6b450f2cee3714d6f886e5e1910bac73633bf69a"
# The Anthropic/hh-rlhf commit that data/preference.py pins (HH_REVISION there; that module loads TFDS, so the
# value is repeated here and a test keeps the two equal).
HH_REVISION = "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa"

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
  name: str
  hf_dataset: str  # The hub id read (the owner's id; the peer's older id, `peer_hf_name`, redirects to it).
  hf_config: str
  hf_splits: tuple[str, ...]  # Pooled, then drawn into weak_train / w2s_train / test by the splitter.
  columns: tuple[str, ...]  # The hub columns the formatter reads.
  formatter: Callable[[dict[str, Any], random.Random], tuple[str, int]]
  # The hub commit read: a pinned 40-character sha, or '' where none is pinned (then data.revision must be set).
  revision: str
  peer: str  # The peer function and registration it follows, at PEER_COMMIT of PEER_FILE.
  peer_hf_name: str  # What the peer passes to datasets.load_dataset.
  label_names: tuple[str, ...] = ("false", "true")
  id_column: str = ""  # '' = "<split>-<row>".


# The formatters: openai/weak-to-strong weak_to_strong/datasets.py at PEER_COMMIT, statement for statement.


def _sciq(ex, rng):
  # format_sciq: the correct answer (label 1) or one of the three distractors (label 0), a fair coin.
  hard_label = int(rng.random() < 0.5)
  if hard_label:
    ans = ex["correct_answer"]
  else:
    ans = rng.choice([ex["distractor1"], ex["distractor2"], ex["distractor3"]])
  txt = f"Q: {ex['question']} A: {ans}"
  return txt, hard_label


def _boolq(ex, rng):
  # format_boolq: the hub's yes/no answer is the label; rng unused, as in the peer.
  del rng
  hard_label = int(ex["answer"])
  txt = f"Passage: {ex['passage']}\nQuestion: {ex['question']}"
  return txt, hard_label


def _cosmos_qa(ex, rng):
  # format_cosmosqa: the true answer or another of the four; "None of the above choices ." as the true answer
  # is always shown wrong (label 0), since every other candidate then is wrong too.
  true_answer = ex["answer" + str(ex["label"])]
  if "None of the above choices ." in true_answer:
    hard_label = 0
  else:
    if "None of the above choices" in true_answer:  # The peer's `assert`, as an error that names the row.
      raise ValueError(f"cosmos_qa row {ex.get('id', '?')!r}: its true answer {true_answer!r} holds 'None of the"
                       " above choices' but not the form 'None of the above choices .' that the peer's format_cosmosqa"
                       " handles (it asserts this never happens); check data.hf_dataset and data.revision.")
    hard_label = int(rng.random() < 0.5)
  if hard_label:
    answer = true_answer
  else:
    candidate_answers = [ex["answer" + str(i)] for i in range(4)]
    answer = rng.choice([x for x in candidate_answers if x != true_answer])
  txt = f"Context: {ex['context']}\nQuestion: {ex['question']}\nAnswer: {answer}"
  return txt, hard_label


def _amazon_polarity(ex, rng):
  # format_amazon_polarity: the hub's label (0 negative, 1 positive); rng unused, as in the peer.
  del rng
  return f"{ex['title']} {ex['content']}", ex["label"]


def _anthropic_hh(ex, rng):
  # format_anthropic_hh: the chosen transcript (label 1) or the rejected one (label 0), a fair coin.
  hard_label = int(rng.random() < 0.5)
  txt = ex["chosen"] if hard_label else ex["rejected"]
  return txt, hard_label


def _peer(function: str, registration: str) -> str:
  return f"{PEER_REPO} {PEER_FILE}@{PEER_COMMIT[:12]}: {function}, {registration}"


SUITE: dict[str, SuiteEntry] = {e.name: e for e in (
    SuiteEntry("sciq", "allenai/sciq", "", ("train",),
               ("question", "correct_answer", "distractor1", "distractor2", "distractor3"), _sciq, revision="",
               peer=_peer("format_sciq", "register_dataset('sciq', hf_loader('sciq'))"), peer_hf_name="sciq"),
    SuiteEntry("boolq", "google/boolq", "", ("train",), ("question", "answer", "passage"), _boolq, revision="",
               peer=_peer("format_boolq", "register_dataset('boolq', hf_loader('boolq', split_names=dict("
                          "test='validation')))"), peer_hf_name="boolq"),
    SuiteEntry("cosmos_qa", "allenai/cosmos_qa", "", ("train",),
               ("id", "context", "question", "answer0", "answer1", "answer2", "answer3", "label"), _cosmos_qa,
               revision="", peer=_peer("format_cosmosqa", "register_dataset('cosmos_qa', hf_loader('cosmos_qa',"
                                       " split_names=dict(test='validation')))"), peer_hf_name="cosmos_qa",
               id_column="id"),
    SuiteEntry("amazon_polarity", "fancyzhx/amazon_polarity", "", ("train",), ("label", "title", "content"),
               _amazon_polarity, revision="",
               peer=_peer("format_amazon_polarity",
                          "register_dataset('amazon_polarity', hf_loader('amazon_polarity'))"),
               peer_hf_name="amazon_polarity", label_names=("negative", "positive")),
    SuiteEntry("anthropic_hh", "Anthropic/hh-rlhf", "", ("train",), ("chosen", "rejected"), _anthropic_hh,
               revision=HH_REVISION,
               peer=_peer("format_anthropic_hh", "register_dataset('anthropic_hh', hf_loader('Anthropic/hh-rlhf'))"),
               peer_hf_name="Anthropic/hh-rlhf", label_names=("rejected", "chosen")),
)}


def get(name: str) -> SuiteEntry:
  if name not in SUITE:
    raise ValueError(f"data.suite={name!r} is not a W2SG suite entry; the entries are {', '.join(SUITE)}.")
  return SUITE[name]


def check_revision(name: str, revision: str) -> None:
  """Refuses a suite entry's hub read without a revision; notes one that is a branch or tag (it moves).

  Called by the files task before it reads the hub (see the module docstring,
  Revisions). Raises ValueError, one paragraph saying how to pin.
  """
  entry = get(name)
  if not revision:
    raise ValueError(
        f"data.suite={name!r} reads the hub dataset {entry.hf_dataset}, and data.revision is empty: no commit of it is"
        " pinned here (the peers read the default branch, and a hash that was not read from the hub would be a"
        " guess), and the suite will not read a branch that can move under a cached run without being asked to. Set"
        f" data.revision to a commit of https://huggingface.co/datasets/{entry.hf_dataset} (the full 40-character sha"
        f" from its history), e.g. w2sg run w2s_suite:{name} --set data.revision=<sha>, to make the run repeatable;"
        " or to 'main' to read today's default branch knowingly. The rows read enter every cache key by content"
        " either way.")
  if not _COMMIT.fullmatch(revision):
    log.warning("data.suite=%s: data.revision=%r is a branch or tag, not a commit: the rows it names can change; the"
                " rows read are hashed into every key, but pin a commit to repeat the run.", name, revision)


def row_rng(seed: int, row_id: str) -> random.Random:
  """The row's own stream: a pure function of ``(seed, id)``."""
  return random.Random(int.from_bytes(hashlib.sha256(f"{int(seed)}:{row_id}".encode("utf-8")).digest()[:8], "big"))
