"""The files task: local CSV/JSONL/Parquet files and hub datasets as a task, and the W2SG suite entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib
from w2sg_jax.data import files as files_lib
from w2sg_jax.data import w2s_suite
from w2sg_jax.tasks import files as files_task
from w2sg_jax.tasks import pretrained_roles

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "data" / "files"
HUB = FIXTURES / "hub"


def load(**overrides):
  return config_lib.load_config(f"{REPO / 'w2sg_jax' / 'experiments' / 'files_example.py'}", overrides)


def config_for(path, cache_dir, *, sizes=(8, 8, 8), **data) -> schema.Experiment:
  """files_example with its data block on ``path``, typed (what the task takes; the schema's checks pass)."""
  c = load(cache_dir=str(cache_dir))
  c.data.source = str(path)
  c.data.columns = {"id": "", "text": "text", "label": "label"}
  c.data.label_names = ()
  c.data.sizes = {"weak_train": sizes[0], "w2s_train": sizes[1], "test": sizes[2]}
  for k, v in data.items():
    c.data[k] = v
  return schema.Experiment.from_configdict(c)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("files_cache")


def _check_splits(splits, sizes, classes):
  ids = [set(s.ids.tolist()) for s in splits.values()]
  assert [len(splits[k]) for k in ("weak_train", "w2s_train", "test")] == list(sizes)
  assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
  for s in splits.values():
    assert set(np.unique(s.labels)) <= set(range(classes))
    assert s.labels.dtype == np.int32


# ------------------------------------------------------------------ formats


def test_csv_three_classes_by_label_names(cache_dir):
  c = config_for(FIXTURES / "topics3.csv", cache_dir, columns={"id": "id", "text": "sentence", "label": "topic"},
                 label_names=("sports", "weather", "food"))
  task = files_task.FilesTask()
  splits = task.splits(c, str(cache_dir))
  assert task.num_classes == 3
  _check_splits(splits, (8, 8, 8), 3)
  rows = files_lib.read_file(str(FIXTURES / "topics3.csv"))
  by_id = dict(zip(rows.data["id"], rows.data["topic"]))
  for s in splits.values():  # Each example keeps its own label.
    assert [("sports", "weather", "food")[y] for y in s.labels] == [by_id[i] for i in s.ids]
    assert set(s.inputs["weak"]) == {"input_ids", "attention_mask"}
    assert s.inputs["weak"]["input_ids"].shape == (len(s), c.data.max_length)


@pytest.mark.parametrize("name", ["binary.jsonl", "binary.parquet"])
def test_jsonl_and_parquet_two_classes_as_integers(cache_dir, name):
  c = config_for(FIXTURES / name, cache_dir, num_classes=2)
  examples, sources = files_task.rows(c)
  assert len(examples["pool"]["id"]) == 24 and sources[0]["rows"] == 24
  assert examples["pool"]["label"].tolist() == [i % 2 for i in range(24)]
  task = files_task.FilesTask()
  _check_splits(task.splits(c, str(cache_dir)), (8, 8, 8), 2)
  assert task.num_classes == 2


def test_jsonl_and_parquet_read_the_same_examples():
  a = files_lib.read_file(str(FIXTURES / "binary.jsonl"))
  b = files_lib.read_file(str(FIXTURES / "binary.parquet"))
  assert a.data == b.data and a.columns == b.columns


def test_preference_pairs_take_the_reward_model_road(cache_dir):
  c = config_for(FIXTURES / "pairs.jsonl", cache_dir, kind="preference",
                 columns={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"})
  task = files_task.FilesTask()
  splits = task.splits(c, str(cache_dir))
  _check_splits(splits, (8, 8, 8), 2)
  assert set(splits["test"].inputs["strong"]) == {"a_ids", "a_mask", "b_ids", "b_mask"}
  assert "reward model" in task.model_name("strong", c)
  examples, _ = files_task.rows(c)
  assert examples["pool"]["chosen"][3] == "Question 3: what is 3 plus 3?\nIt is 6."


def test_one_file_per_split_keeps_each_split(cache_dir, tmp_path):
  parts = {}
  for split, start in (("weak_train", 0), ("w2s_train", 100), ("test", 200)):
    path = tmp_path / f"{split}.csv"
    path.write_text("text,label\n" + "".join(f"row {start + i},{i % 2}\n" for i in range(10)))
    parts[split] = str(path)
  c = config_for("", cache_dir, split_files=parts, num_classes=2, sizes=(4, 6, 10))
  splits = files_task.FilesTask().splits(c, str(cache_dir))
  assert splits["weak_train"].ids.tolist() == [f"weak_train-{i}" for i in range(4)]
  assert splits["test"].ids.tolist() == [f"test-{i}" for i in range(10)]
  with pytest.raises(ValueError, match=r"data.sizes.test=11, but data.split_files.test holds only 10 rows"):
    files_task.prepare(c.replace(data=c.data.replace(sizes=c.data.sizes.replace(test=11))), str(cache_dir))


# ---------------------------------------------------------------- bad inputs


@pytest.fixture
def no_compute(monkeypatch):
  """Any tokenizer or checkpoint loaded means the error came too late."""
  def boom(*a, **k):
    raise AssertionError("compute started before the data were checked")
  monkeypatch.setattr(pretrained_roles, "role_tokenizers", boom)
  monkeypatch.setattr(pretrained_roles, "check_max_length", boom)


def _error(config, cache_dir) -> str:
  with pytest.raises(files_lib.DataFileError) as e:
    files_task.prepare(config, str(cache_dir))
  message = str(e.value)
  assert "\n" not in message, message  # One paragraph.
  return message


def test_missing_column_names_the_file_and_its_columns(cache_dir, no_compute):
  c = config_for(FIXTURES / "topics3.csv", cache_dir, columns={"text": "sentence", "label": "label"},
                 label_names=("sports", "weather", "food"))
  m = _error(c, cache_dir)
  assert "topics3.csv has no column 'label' (data.columns.label)" in m and "id, sentence, topic" in m


def test_empty_file(cache_dir, tmp_path, no_compute):
  for name, text in (("empty.csv", ""), ("header_only.csv", "text,label\n"), ("empty.jsonl", "\n")):
    (tmp_path / name).write_text(text)
    m = _error(config_for(tmp_path / name, cache_dir, num_classes=2), cache_dir)
    assert name in m and ("empty" in m or "no rows" in m)


def test_label_outside_the_mapping_shows_the_value_and_row(cache_dir, tmp_path, no_compute):
  path = tmp_path / "bad_label.csv"
  path.write_text("text,label\na,sports\nb,food\nc,politics\n")
  m = _error(config_for(path, cache_dir, label_names=("sports", "food")), cache_dir)
  assert "data row 3: label 'politics'" in m and "outside the mapping" in m
  path.write_text("text,label\na,0\nb,2\n")
  m = _error(config_for(path, cache_dir, num_classes=2), cache_dir)
  assert "data row 2: label '2'" in m and "0..1" in m


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_nan_or_empty_text_names_the_row(cache_dir, tmp_path, fmt, no_compute):
  texts = ["fine", "also fine", None if fmt != "csv" else "", "late"]
  path = tmp_path / f"nan.{fmt}"
  if fmt == "csv":
    path.write_text("text,label\n" + "".join(f"{t},0\n" for t in texts))
  elif fmt == "jsonl":
    path.write_text("".join(json.dumps({"text": t if t is not None else float("nan"), "label": 0}) + "\n"
                            for t in texts))
  else:
    pq.write_table(pa.table({"text": texts, "label": [0] * 4}), str(path))
  m = _error(config_for(path, cache_dir, num_classes=2), cache_dir)
  assert "data row 3: the text (column 'text') is" in m
  assert {"csv": "empty", "jsonl": "NaN", "parquet": "missing"}[fmt] in m


def test_unknown_format(cache_dir, tmp_path, no_compute):
  path = tmp_path / "data.xlsx"
  path.write_text("x")
  m = _error(config_for(path, cache_dir, num_classes=2), cache_dir)
  assert "cannot tell the format" in m and ".parquet" in m
  with pytest.raises(schema.ConfigError, match="data.format='xml'"):
    config_for(FIXTURES / "topics3.csv", cache_dir, num_classes=2, format="xml")


def test_config_checks_the_data_block(cache_dir):
  with pytest.raises(schema.ConfigError, match="set exactly one of data.source"):
    config_for("", cache_dir, num_classes=2)
  with pytest.raises(schema.ConfigError, match="data.num_classes=0"):
    config_for(FIXTURES / "binary.jsonl", cache_dir)
  with pytest.raises(schema.ConfigError, match="data.suite='squad'"):
    config_for("", cache_dir, source="", hf_dataset="x/y", suite="squad")


# --------------------------------------------------------------- fingerprint


def test_fingerprint_follows_the_content_not_the_path(cache_dir, tmp_path):
  a = tmp_path / "a" / "data.csv"
  a.parent.mkdir()
  shutil.copy(FIXTURES / "topics3.csv", a)
  kw = dict(columns={"id": "id", "text": "sentence", "label": "topic"}, label_names=("sports", "weather", "food"))
  first = files_task.FilesTask().fingerprint(config_for(a, cache_dir, **kw))
  b = tmp_path / "b" / "moved.csv"
  b.parent.mkdir()
  shutil.move(a, b)
  assert files_task.FilesTask().fingerprint(config_for(b, cache_dir, **kw)) == first
  b.write_text(b.read_text().replace("t029,", "t029x,"))  # One id changed.
  changed = files_task.FilesTask().fingerprint(config_for(b, cache_dir, **kw))
  assert changed["sources"] != first["sources"]
  relabelled = files_task.FilesTask().fingerprint(config_for(b, cache_dir, **{**kw, "label_names": ("food", "weather", "sports")}))
  assert relabelled["content_sha256"] != changed["content_sha256"]


def test_a_changed_source_is_a_different_cache_key(cache_dir, tmp_path):
  """The path is not semantic (moving a file keeps the keys); the content enters through the fingerprint."""
  exp = config_for(FIXTURES / "topics3.csv", cache_dir, num_classes=2)
  assert "source" not in schema.semantic_dict(exp.data)


# ---------------------------------------------------------------- the suite

# A stand-in commit for the entries that pin none: the fixture is read instead of the hub.
FIXTURE_REVISION = "f" * 40


@pytest.fixture
def hub_fixtures(monkeypatch):
  """The hub read from a fixture in the hub's schema: the rest of the road is the real one."""
  calls = []

  def fake(name, config, revision, split):
    entry = next(e for e in w2s_suite.SUITE.values() if e.hf_dataset == name)
    calls.append((name, config, revision, split))
    table = pq.read_table(str(HUB / f"{entry.name}.parquet"))
    return list(table.column_names), table.to_pydict()

  monkeypatch.setattr(files_lib, "load_hf_split", fake)
  return calls


def suite_config(name, cache_dir, *, revision=None) -> schema.Experiment:
  """The experiment's variant, tiny models, typed; an entry that pins no revision gets ``FIXTURE_REVISION``."""
  c = config_lib.load_config(f"{REPO / 'w2sg_jax' / 'experiments' / 'w2s_suite.py'}:{name}",
                             {"cache_dir": str(cache_dir)})
  c.data.sizes = {"weak_train": 4, "w2s_train": 4, "test": 4}
  c.data.max_length = 96
  c.data.revision = (c.data.revision or FIXTURE_REVISION) if revision is None else revision
  tiny = load()
  c.weak, c.strong = tiny.weak, tiny.strong
  return schema.Experiment.from_configdict(c)


# What the peer's own functions (openai/weak-to-strong weak_to_strong/datasets.py at commit
# 6b450f2cee3714d6f886e5e1910bac73633bf69a: format_sciq, format_boolq, format_cosmosqa, format_amazon_polarity,
# format_anthropic_hh) return for each fixture row, run on the row's own draws (w2s_suite.row_rng(0, id), the
# ids the loader gives): the label of rows 0..11, and the answer shown where the peer draws it.
PEER_LABELS = {
    "sciq": [0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1],
    "boolq": [0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1],
    "cosmos_qa": [0, 1, 0, 1, 0, 1, 1, 0, 0, 1, 1, 1],
    "amazon_polarity": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
    "anthropic_hh": [1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1],
}
PEER_SHOWN = {
    "sciq": ["sand", "oil", "sunlight", "sunlight", "sunlight", "sand", "salt", "sand", "sunlight", "salt", "sand",
             "sunlight"],
    "cosmos_qa": ["To buy food .", "To buy food .", "To sleep .", "To buy food .", "To sleep .", "To buy food .",
                  "To buy food .", "None of the above choices .", "To sleep .", "To buy food .", "To buy food .",
                  "To buy food ."],
}


def peer_text(name, row, label, shown):
  """The peer's prompt templates, as its file writes them."""
  if name == "sciq":
    return f"Q: {row['question']} A: {shown}"
  if name == "boolq":
    return f"Passage: {row['passage']}\nQuestion: {row['question']}"
  if name == "cosmos_qa":
    return f"Context: {row['context']}\nQuestion: {row['question']}\nAnswer: {shown}"
  if name == "amazon_polarity":
    return f"{row['title']} {row['content']}"
  return row["chosen"] if label else row["rejected"]  # anthropic_hh


@pytest.mark.parametrize("name", list(w2s_suite.SUITE))
def test_suite_entry_on_its_hub_fixture(name, cache_dir, hub_fixtures):
  c = suite_config(name, cache_dir)
  examples, sources = files_task.rows(c)
  pool = examples["pool"]
  entry = w2s_suite.get(name)
  assert hub_fixtures[0] == (entry.hf_dataset, "", c.data.revision, c.data.hf_splits[0])  # The revision reaches it.
  assert sources[0]["rows"] == 12
  fixture = pq.read_table(str(HUB / f"{name}.parquet")).to_pylist()
  for i, row in enumerate(fixture):  # Every row: the peer's text and label.
    label = PEER_LABELS[name][i]
    shown = PEER_SHOWN[name][i] if name in PEER_SHOWN else None
    assert (pool["text"][i], int(pool["label"][i])) == (peer_text(name, row, label, shown), label), i
  assert pool["label"].tolist() == PEER_LABELS[name]
  again, _ = files_task.rows(c)  # Per-row draws: the same rows give the same texts.
  assert again["pool"]["text"].tolist() == pool["text"].tolist()
  if name == "sciq":  # Label 1 is the correct answer shown, 0 a distractor.
    for t, y in zip(pool["text"], pool["label"]):
      assert t.endswith(" A: sunlight") == bool(y)
  if name == "cosmos_qa":  # "None of the above" as the true answer is always label 0 (the peer's rule).
    assert pool["label"][0] == 0 and "None of the above" not in pool["text"][0].split("Answer: ")[1]
    assert pool["id"][0].endswith("##q1_a1##")
  if name == "anthropic_hh":
    for t, y in zip(pool["text"], pool["label"]):
      assert t.endswith("flour, water and yeast.") == bool(y)
  splits = files_task.FilesTask().splits(c, str(cache_dir))
  _check_splits(splits, (4, 4, 4), 2)


def test_suite_formatters_with_the_peers_stream():
  """Given the peer's own stream (one Random(0) in row order), a formatter returns what the peer's function does."""
  import random

  # The peer's functions (at the commit above) over these fixtures with rng=Random(0): the answer each row shows.
  want = {
      "sciq": ["oil", "sunlight", "oil", "sunlight", "oil", "oil", "sand", "oil", "sunlight", "sunlight", "salt",
               "salt"],
      "cosmos_qa": ["To sell a car .", "To sleep .", "To buy food .", "To sleep .", "To sell a car .", "To sleep .",
                    "To sleep .", "To sell a car .", "To sleep .", "To buy food .", "To buy food .", "To buy food ."],
      "anthropic_hh": [0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 0],  # Its labels (1: the chosen transcript).
  }
  for name, shown in want.items():
    entry, rng = w2s_suite.get(name), random.Random(0)
    got = [entry.formatter({c: row[c] for c in entry.columns}, rng)
           for row in pq.read_table(str(HUB / f"{name}.parquet")).to_pylist()]
    assert [y if name == "anthropic_hh" else t.rsplit(": ", 1)[1] for t, y in got] == shown, name


def test_suite_entries_name_their_peer_and_revision():
  import re

  from w2sg_jax.data import preference

  for entry in w2s_suite.SUITE.values():
    assert entry.peer.startswith(f"openai/weak-to-strong weak_to_strong/datasets.py@{w2s_suite.PEER_COMMIT[:12]}: ")
    assert entry.revision == "" or re.fullmatch(r"[0-9a-f]{40}", entry.revision), entry
  assert w2s_suite.get("anthropic_hh").revision == preference.HH_REVISION  # The commit the preference task reads.
  assert {e.name for e in w2s_suite.SUITE.values() if not e.revision} == {"sciq", "boolq", "cosmos_qa",
                                                                          "amazon_polarity"}


@pytest.mark.parametrize("name", ["sciq", "cosmos_qa"])
def test_suite_unpinned_entry_is_refused_before_the_hub_is_read(name, cache_dir, hub_fixtures):
  c = suite_config(name, cache_dir, revision="")
  with pytest.raises(ValueError, match=rf"data.suite='{name}' reads the hub dataset .*data.revision is empty.*"
                                       r"--set data.revision=<sha>.*'main'"):
    files_task.rows(c)
  assert hub_fixtures == []  # Refused before any read.


def test_suite_pinned_entry_reads_its_commit_and_a_branch_is_named(cache_dir, hub_fixtures, caplog):
  files_task.rows(suite_config("anthropic_hh", cache_dir))
  assert hub_fixtures[-1][2] == w2s_suite.HH_REVISION
  with caplog.at_level("WARNING", logger="w2sg"):
    files_task.rows(suite_config("boolq", cache_dir, revision="main"))  # A branch, asked for: read, with a warning.
  assert hub_fixtures[-1][:3] == ("google/boolq", "", "main")
  assert "data.revision='main' is a branch or tag" in caplog.text


def test_cosmos_qa_none_of_the_above_in_another_form_is_an_error():
  row = {"id": "r1", "context": "c", "question": "q", "answer0": "a", "answer1": "None of the above choices",
         "answer2": "b", "answer3": "d", "label": 1}
  with pytest.raises(ValueError, match="cosmos_qa row 'r1'.*asserts this never happens"):
    w2s_suite.get("cosmos_qa").formatter(row, w2s_suite.row_rng(0, "r1"))


def test_suite_hub_without_datasets_is_a_clear_error(cache_dir, monkeypatch):
  import builtins
  real = builtins.__import__

  def no_datasets(name, *a, **k):
    if name == "datasets":
      raise ImportError("no datasets")
    return real(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", no_datasets)
  with pytest.raises(files_lib.DataFileError, match=r"pip install 'w2sg-jax\[hf\]'"):
    files_task.rows(suite_config("boolq", cache_dir))


def test_suite_missing_hub_column_is_a_clear_error(cache_dir, monkeypatch):
  monkeypatch.setattr(files_lib, "load_hf_split", lambda *a: (["question"], {"question": ["q"]}))
  with pytest.raises(files_lib.DataFileError, match=r"hub dataset google/boolq .*has no column 'answer' \(read by the suite entry boolq\), 'passage'"):
    files_task.rows(suite_config("boolq", cache_dir))


# ------------------------------------------------------------- end to end


def test_files_example_runs_offline_end_to_end(tmp_path):
  """The shipped example CSV through the whole pipeline (data, weak model, ceiling, a student, report), at
  one epoch of one loss: the road a new user takes first, in the default suite."""
  from w2sg_jax import main

  c = load(cache_dir=str(tmp_path / "cache"), **{"student.losses": ("xent",), "weak.train.epochs": 1.0,
                                                 "student.train.epochs": 1.0})
  main.run(c, str(tmp_path / "run"))
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["data"]["num_classes"] == 3 and [r["loss"] for r in results["runs"]] == ["xent"]
  assert (tmp_path / "run" / "summary.md").is_file()
  assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_files_example_end_to_end(tmp_path):
  from w2sg_jax import main

  c = load(cache_dir=str(tmp_path / "cache"))
  main.run(c, str(tmp_path / "run"))
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["data"]["kind"] == "classification"
  assert results["data"]["num_classes"] == 3


def test_validate_names_a_missing_source_file(cache_dir, tmp_path):
  from w2sg_jax import validate

  c = load(cache_dir=str(cache_dir))
  c.data.source = str(tmp_path / "nowhere.csv")
  with pytest.raises(validate.ConfigError) as e:
    validate.check_config(c, num_devices=8)
  assert any("data.source=" in p and "no such file" in p for p in e.value.problems), e.value.problems
