"""Every input that changes a number is in the key, by content (issue 18, items 1 and 8).

* checkpoints: every file the loader reads (weights or index and shards,
  config, tokenizer) enters each task's fingerprint and so every stage key,
  for both roles; a copy at another path keys the same;
* hub checkpoints: resolved to a commit once, fetched at it, that commit in
  the key (the hub is faked);
* HH-RLHF and CAI downloads: pinned, and every downloaded file checked
  against a recorded SHA-256 (the download is faked with the fixtures).
"""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from w2sg_jax import config as schema
from w2sg_jax import cache as cache_lib
from w2sg_jax import config_lib, hashing, stages, tasks, validate
from w2sg_jax.data import preference as preference_data
from w2sg_jax.data.task import Split
from w2sg_jax.models import pretrained, random_checkpoint
from w2sg_jax.tasks import pretrained_roles

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
HH_DIR = FIXTURES / "data" / "hh-rlhf"
CAI_DIR = FIXTURES / "data" / "cai-conversation-harmless"

WEAK_SPEC = "random:qwen2?seed=1"  # experiments/w2s_llama.py's TINY_QWEN2
OTHER_WEAK_SPEC = "random:qwen2?seed=3"  # Same shapes, other weights.
STRONG_SPEC = "random:llama?seed=2&shards=2"  # Sharded: an index and two shards.


def _copy_checkpoint(spec: str, dest: Path) -> Path:
  """A plain folder holding exactly the files a spec's folder has (a user's local checkpoint)."""
  shutil.copytree(random_checkpoint.materialize(spec), dest)
  return dest


def _load(experiment: str, **overrides):
  return config_lib.load_config(str(REPO / "experiments" / experiment), overrides)


def _typed(experiment: str, **overrides) -> schema.Experiment:
  """`_load`, converted at the boundary: what the tasks and the stages take."""
  return schema.Experiment.from_configdict(_load(experiment, **overrides))


def _rewrite_json(path: Path, **changes):
  data = json.loads(path.read_text())
  data.update(changes)
  path.write_text(json.dumps(data, indent=1))


def _touch_tokenizer(folder: Path):
  """Same tokenizer, other bytes: a content key must see it (no tokenizer semantics are assumed)."""
  path = folder / "tokenizer.json"
  path.write_bytes(path.read_bytes() + b"\n")


def _flip_last_byte(path: Path):
  data = bytearray(path.read_bytes())
  data[-1] ^= 1
  path.write_bytes(bytes(data))


# ------------------------------------------------------------------- hashing


def test_file_sha256_is_the_digest_and_sees_a_same_size_rewrite(tmp_path):
  path = tmp_path / "f.bin"
  path.write_bytes(b"a" * 1000)
  first = hashing.file_sha256(path)
  assert first == hashlib.sha256(b"a" * 1000).hexdigest()
  assert hashing.file_sha256(path) == first  # Remembered.
  st = os.stat(path)
  path.write_bytes(b"b" * 1000)  # Same size...
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the old mtime: the ctime still moves.
  assert hashing.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_files_digest_depends_on_names_and_bytes_not_on_folder_or_order(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  for d in (a, b):
    (d / "sub").mkdir(parents=True)
    (d / "x.json").write_text("{}")
    (d / "sub" / "y.bin").write_bytes(b"\x00\x01")
  d1 = hashing.files_digest(a, ["x.json", "sub/y.bin"])
  assert d1 == hashing.files_digest(b, ["sub/y.bin", "x.json"])  # Another folder, another order.
  assert d1 != hashing.files_digest(a, ["x.json"])
  (b / "sub" / "y.bin").write_bytes(b"\x00\x02")
  assert hashing.files_digest(b, ["x.json", "sub/y.bin"]) != d1
  (a / "z.json").write_text("{}")  # Same bytes as x.json under another name.
  assert hashing.files_digest(a, ["z.json", "sub/y.bin"]) != d1
  for bad in (["../a/x.json"], [str(a / "x.json")], ["x.json", "x.json"]):
    with pytest.raises(ValueError):
      hashing.files_digest(a, bad)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_files_are_what_the_loader_reads(tmp_path):
  single = _copy_checkpoint(WEAK_SPEC, tmp_path / "single")
  sharded = _copy_checkpoint(STRONG_SPEC, tmp_path / "sharded")
  assert pretrained.checkpoint_files(single) == ["config.json", "tokenizer.json", "model.safetensors"]
  files = pretrained.checkpoint_files(sharded)
  assert files[:3] == ["config.json", "tokenizer.json", pretrained.WEIGHTS_INDEX]
  assert len(files) == 5 and all(f.endswith(".safetensors") for f in files[3:])
  # The reader reads exactly those weight files.
  assert [p.name for p in pretrained.SafetensorsReader.from_folder(sharded).files] == files[3:]
  # A file the loader does not read changes nothing.
  before = pretrained.checkpoint_digest(single)
  (single / "README.md").write_text("notes")
  assert pretrained.checkpoint_digest(single) == before


@pytest.mark.parametrize("change", ["weights", "config", "tokenizer", "index", "shard"])
def test_checkpoint_digest_follows_every_file_read(tmp_path, change):
  spec = STRONG_SPEC if change in ("index", "shard") else WEAK_SPEC
  folder = _copy_checkpoint(spec, tmp_path / "ckpt")
  copy = _copy_checkpoint(spec, tmp_path / "elsewhere" / "ckpt2")
  before = pretrained.checkpoint_digest(folder)
  assert pretrained.checkpoint_digest(copy) == before  # Content, not path.
  if change == "weights":
    shutil.copyfile(random_checkpoint.materialize(OTHER_WEAK_SPEC) / "model.safetensors", folder / "model.safetensors")
  elif change == "config":
    _rewrite_json(folder / "config.json", rms_norm_eps=1e-5)
  elif change == "tokenizer":
    _touch_tokenizer(folder)
  elif change == "index":
    _rewrite_json(folder / pretrained.WEIGHTS_INDEX, metadata={"note": "edited"})
  else:
    _flip_last_byte(folder / pretrained.checkpoint_files(folder)[-1])
  assert pretrained.checkpoint_digest(folder) != before


def test_a_revision_for_a_local_folder_is_an_error(tmp_path):
  folder = _copy_checkpoint(WEAK_SPEC, tmp_path / "ckpt")
  for spec in (str(folder), WEAK_SPEC):
    with pytest.raises(ValueError, match="no revisions.*checkpoint_revision to ''"):
      pretrained.resolve_checkpoint(spec, "main")


# ------------------------------------------------ task fingerprints and stage keys


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def _pretrained_config(task: str, cache_dir: str, weak: Path, strong: Path):
  experiment = "w2s_llama.py:smoke" if task == "preference" else "w2s_llama.py:tweets_smoke"
  return _typed(experiment, **{"weak.checkpoint": str(weak), "strong.checkpoint": str(strong),
                               "cache_dir": cache_dir})


def _tweets_config(cache_dir: str, checkpoint: Path):
  return _typed("tweets_minilm.py:smoke", **{"strong.checkpoint": str(checkpoint), "cache_dir": cache_dir})


def _keys(config: schema.Experiment, cache_root: str) -> dict[str, str]:
  """The data fingerprint and the weak and strong stage keys a config gets."""
  task = tasks.get(config.task)
  fingerprint = task.fingerprint(config)
  # The stage keys depend on the splits only through the truth store's ids; one tiny split does.
  split = Split(ids=np.array(["a", "b"]), labels=np.array([0, 1], np.int32), inputs={})
  data = stages.DataResult(splits={"weak_train": split}, fingerprint=fingerprint)
  st = stages.Stages(config, task, cache_lib.Cache(cache_root))
  return {"data": cache_lib.stage_key("data", {"fp": fingerprint}),
          "weak": cache_lib.stage_key("weak", st.weak_components(data)),
          "strong": cache_lib.stage_key("ceiling", st._strong_components(data))}  # pylint: disable=protected-access


@pytest.mark.parametrize("task", ["preference", pytest.param("text_classification", marks=pytest.mark.slow)])
@pytest.mark.parametrize("role", ["weak", "strong"])
def test_pretrained_tasks_key_each_roles_checkpoint_by_content(tmp_path, cache_dir, task, role):
  folders = {"weak": _copy_checkpoint(WEAK_SPEC, tmp_path / "w"), "strong": _copy_checkpoint(STRONG_SPEC, tmp_path / "s")}
  config = _pretrained_config(task, cache_dir, folders["weak"], folders["strong"])
  base = _keys(config, str(tmp_path / "c"))
  fp = tasks.get(task).fingerprint(config)
  assert fp["checkpoints"][role] == {"sha256": pretrained.checkpoint_digest(folders[role])}
  assert str(tmp_path) not in json.dumps(fp)  # No path in the key.

  # The same files at other paths: the same fingerprint and the same stage keys (a moved cache of
  # checkpoints reuses every stage).
  moved = {r: _copy_checkpoint(s, tmp_path / "moved" / r) for r, s in (("weak", WEAK_SPEC), ("strong", STRONG_SPEC))}
  moved_config = _pretrained_config(task, cache_dir, moved["weak"], moved["strong"])
  assert tasks.get(task).fingerprint(moved_config) == fp
  assert _keys(moved_config, str(tmp_path / "c")) == base

  # Each file the loader reads, changed in place: every key changes.
  folder = folders[role]
  changes = {
      "config": lambda: _rewrite_json(folder / "config.json", w2sg_note="edited"),
      "tokenizer": lambda: _touch_tokenizer(folder),
      "weights": lambda: _flip_last_byte(folder / pretrained.checkpoint_files(folder)[-1]),
  }
  if role == "strong":
    changes["index"] = lambda: _rewrite_json(folder / pretrained.WEIGHTS_INDEX, metadata={"note": "edited"})
  if task == "text_classification":  # The same base class as preference; each change re-tokenizes the tweets.
    changes = {"weights": changes["weights"]}
  seen = [base]
  for what, change in changes.items():
    change()
    keys = _keys(config, str(tmp_path / "c"))
    for prior in seen:
      assert all(keys[k] != prior[k] for k in keys), what
    seen.append(keys)


@pytest.mark.slow
def test_pretrained_tasks_key_weights_swapped_for_another_model(tmp_path, cache_dir):
  """The issue's reproduction at the key level: another model.safetensors copied over the weak one."""
  weak = _copy_checkpoint(WEAK_SPEC, tmp_path / "w")
  strong = _copy_checkpoint(STRONG_SPEC, tmp_path / "s")
  config = _pretrained_config("text_classification", cache_dir, weak, strong)
  before = _keys(config, str(tmp_path / "c"))
  ckpt_before = pretrained_roles.role_checkpoint(config, "weak")
  old = pretrained_roles.encoder_state(ckpt_before.folder, ckpt_before.sha256, None, "float32")[1]
  shutil.copyfile(random_checkpoint.materialize(OTHER_WEAK_SPEC) / "model.safetensors", weak / "model.safetensors")
  after = _keys(config, str(tmp_path / "c"))
  assert after["weak"] != before["weak"] and after["strong"] != before["strong"]
  # The in-process caches read the new files too: the weights a model is built from follow the digest.
  ckpt_after = pretrained_roles.role_checkpoint(config, "weak")
  assert ckpt_after.sha256 != ckpt_before.sha256
  new = pretrained_roles.encoder_state(ckpt_after.folder, ckpt_after.sha256, None, "float32")[1]
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))


@pytest.mark.parametrize("change", ["weights", "config", "tokenizer"])
def test_tweets_task_keys_its_checkpoint_by_content(tmp_path, cache_dir, change):
  folder = shutil.copytree(FIXTURES / "models" / "tiny_bert", tmp_path / "bert")
  copy = shutil.copytree(FIXTURES / "models" / "tiny_bert", tmp_path / "elsewhere" / "bert")
  config = _tweets_config(cache_dir, folder)
  base = _keys(config, str(tmp_path / "c"))
  fp = tasks.get("tweets").fingerprint(config)
  assert fp["checkpoints"]["weak"] == fp["checkpoints"]["strong"] == {"sha256": pretrained.checkpoint_digest(folder)}
  assert tasks.get("tweets").fingerprint(_tweets_config(cache_dir, copy)) == fp  # Content, not path.
  assert _keys(_tweets_config(cache_dir, copy), str(tmp_path / "c")) == base
  if change == "weights":
    _flip_last_byte(folder / "model.safetensors")
  elif change == "config":
    _rewrite_json(folder / "config.json", w2sg_note="edited")
  else:
    _touch_tokenizer(folder)
  keys = _keys(config, str(tmp_path / "c"))
  assert all(keys[k] != base[k] for k in keys)


# ------------------------------------------------------------ hub revisions


class _FakeHub:
  """A stand-in for huggingface_hub: a repo whose branches point at commits, each a snapshot folder."""

  def __init__(self, root: Path, branches: dict[str, str], online: bool = True):
    self.root, self.branches, self.online = root, branches, online
    self.info_calls: list[tuple[str, str | None]] = []
    self.download_calls: list[dict] = []
    hub = self

    class HfApi:  # pylint: disable=too-few-public-methods
      def model_info(self, repo_id, revision=None):
        hub.info_calls.append((repo_id, revision))
        if not hub.online:
          raise ConnectionError("offline")
        return types.SimpleNamespace(sha=hub.branches[revision or "main"])

    self.module = types.ModuleType("huggingface_hub")
    self.module.HfApi = HfApi
    self.module.snapshot_download = self.snapshot_download

  def snapshot_download(self, repo_id, *, revision=None, allow_patterns=None):
    self.download_calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
    commit = revision if revision in self.branches.values() else self.branches[revision or "main"]
    folder = self.root / "snapshots" / commit
    if not folder.exists():
      spec = WEAK_SPEC if commit == self.branches["main"] else OTHER_WEAK_SPEC
      _copy_checkpoint(spec, folder)
    return str(folder)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
  hub = _FakeHub(tmp_path / "hub", {"main": "1" * 40, "v2": "2" * 40})
  monkeypatch.setitem(sys.modules, "huggingface_hub", hub.module)
  monkeypatch.setattr(pretrained, "_HUB_RESOLVED", {})
  return hub


@pytest.mark.slow  # Two pipeline runs on a fake hub (~8-15 s): slow suite.
def test_hub_id_is_resolved_once_fetched_at_its_commit_and_keyed_by_it(tmp_path, cache_dir, fake_hub):
  strong = _copy_checkpoint(STRONG_SPEC, tmp_path / "s")
  config = _typed("w2s_llama.py:tweets_smoke", **{"weak.checkpoint": "org/tiny", "strong.checkpoint": str(strong),
                                                    "cache_dir": cache_dir})
  task = tasks.get("text_classification")
  fp = task.fingerprint(config)
  task.make_model("weak", config)
  task.fingerprint(config)
  folder = fake_hub.root / "snapshots" / ("1" * 40)
  assert fp["checkpoints"]["weak"] == {"sha256": pretrained.checkpoint_digest(folder), "hub_id": "org/tiny",
                                       "commit": "1" * 40}
  assert fake_hub.info_calls == [("org/tiny", None)]  # Resolved once per process...
  assert len(fake_hub.download_calls) == 1 and fake_hub.download_calls[0]["revision"] == "1" * 40  # ...fetched at it.
  assert set(pretrained.HUB_PATTERNS) <= set(fake_hub.download_calls[0]["allow_patterns"])

  # A pinned branch: another commit, other files, another key; a pinned commit needs no lookup.
  pinned = _typed("w2s_llama.py:tweets_smoke", **{"weak.checkpoint": "org/tiny", "weak.checkpoint_revision": "v2",
                                                    "strong.checkpoint": str(strong), "cache_dir": cache_dir})
  fp2 = task.fingerprint(pinned)
  assert fp2["checkpoints"]["weak"]["commit"] == "2" * 40 and fake_hub.info_calls[-1] == ("org/tiny", "v2")
  assert cache_lib.stage_key("data", fp2) != cache_lib.stage_key("data", fp)
  calls = len(fake_hub.info_calls)
  by_commit = pretrained.checkpoint_fingerprint("org/tiny", "2" * 40)
  assert by_commit == fp2["checkpoints"]["weak"] and len(fake_hub.info_calls) == calls
  assert fake_hub.download_calls[-1]["revision"] == "2" * 40


def test_hub_id_offline_takes_the_commit_of_the_cached_snapshot(fake_hub):
  fake_hub.online = False
  resolved = pretrained.resolve_checkpoint("org/tiny")
  assert resolved.commit == "1" * 40 and resolved.folder.name == "1" * 40
  assert fake_hub.download_calls[0]["revision"] is None  # The local cache resolves the branch.


def test_hub_commit_unknown_is_a_clear_error(tmp_path, fake_hub, monkeypatch):
  fake_hub.online = False
  plain = _copy_checkpoint(WEAK_SPEC, tmp_path / "not-a-snapshot")
  monkeypatch.setattr(fake_hub.module, "snapshot_download", lambda *a, **k: str(plain))
  with pytest.raises(FileNotFoundError, match="commit could not be determined.*checkpoint_revision"):
    pretrained.resolve_checkpoint("org/tiny")


def test_checkpoint_revision_is_a_config_key_checked_as_a_string(tmp_path):
  config = _load("w2s_llama.py:tweets_smoke", **{"cache_dir": str(tmp_path)})
  assert config.weak.checkpoint_revision == "" and config.strong.checkpoint_revision == ""
  config.unlock()
  config.weak = ml_collections.ConfigDict({**config.weak.to_dict(), "checkpoint_revision": 5})  # A typed field refuses 5.
  with pytest.raises(validate.ConfigError, match="weak.checkpoint_revision=5: must be a string"):
    validate.check_config(config)


# ------------------------------------------------------ HH-RLHF and CAI downloads


def test_hh_rlhf_is_pinned_to_a_commit_and_every_source_has_a_table():
  assert preference_data.HH_REVISION in preference_data.HH_URL and "/resolve/main/" not in preference_data.HH_URL
  assert preference_data.CAI_REVISION in preference_data.CAI_URL
  assert set(preference_data.SOURCE_SHA256) == set(preference_data.DATASETS)
  for table in preference_data.SOURCE_SHA256.values():
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in table.values())


@pytest.fixture
def fake_download(monkeypatch):
  """Downloads served from the fixture folders (at the same relative paths); returns the URLs asked for."""
  asked: list[str] = []
  sources = {preference_data.HH_URL: HH_DIR, preference_data.CAI_URL: CAI_DIR}

  def download(self, url_or_urls):
    del self
    out = {}
    for split, url in url_or_urls.items():
      asked.append(url)
      base = next(b for b in sources if url.startswith(b))
      out[split] = sources[base] / url[len(base):]
    return out

  monkeypatch.setattr(preference_data, "_unreachable", lambda urls, timeout=5.0: None)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  return asked


def _digests(folder: Path, rels) -> dict[str, str]:
  return {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest() for rel in rels}


def test_hh_rlhf_digests_are_recorded_for_every_file_it_downloads():
  files = {f"{subset}/{split}.jsonl.gz" for subset in ("harmless-base", "helpful-base") for split in ("train", "test")}
  assert set(preference_data.SOURCE_SHA256["hh_rlhf"]) == files


@pytest.mark.parametrize("name,subset,folder,rels", [
    ("hh_rlhf", "harmless-base", HH_DIR, ["harmless-base/train.jsonl.gz", "harmless-base/test.jsonl.gz"]),
    ("cai_harmless", None, CAI_DIR, sorted(preference_data.CAI_FILES.values())),
])
def test_downloaded_files_are_checked_against_the_recorded_sha256(tmp_path, fake_download, monkeypatch, name,
                                                                  subset, folder, rels):
  good = _digests(folder, rels)
  hub: dict[str, str | None] = {}  # What the (faked) hub records for each URL; None: nothing.
  monkeypatch.setattr(preference_data, "_hub_sha256", lambda url, timeout=30.0: hub.get(url))
  base = preference_data.HH_URL if name == "hh_rlhf" else preference_data.CAI_URL
  kw = dict(data_dir=tmp_path / "d", manual_dir=None, download=True)
  if name == "hh_rlhf":
    # The committed digests are the real files': the small fixtures served in their place are refused.
    with pytest.raises(preference_data.ChecksumError, match="is recorded for it"):
      preference_data.load_preferences(name, subset, "train", **kw)
  else:
    # No committed digest and none from the hub: refused, with the digest it has and where to record one.
    with pytest.raises(preference_data.ChecksumError) as e:
      preference_data.load_preferences(name, subset, "train", **kw)
    msg = str(e.value)
    assert "no SHA-256 is recorded" in msg and "checksums=" in msg and "manual_dir" in msg
    assert any(rel in msg and good[rel] in msg for rel in rels)
    # The hub's LFS oid at the pinned revision stands in for a committed digest: a wrong one refuses ...
    hub.update({base + rel: "1" * 64 for rel in rels})
    with pytest.raises(preference_data.ChecksumError, match="the hub's record at the pinned revision"):
      preference_data.load_preferences(name, subset, "train", **kw)
    # ... and the right one accepts.
    hub.update({base + rel: good[rel] for rel in rels})
    assert len(preference_data.load_preferences(name, subset, "train", data_dir=tmp_path / "h", manual_dir=None,
                                                download=True)["id"]) > 0
  # A wrong digest: refused, naming the file, both digests and what to do.
  wrong = {**good, rels[0]: "0" * 64}
  with pytest.raises(preference_data.ChecksumError) as e:
    preference_data.load_preferences(name, subset, "train", checksums=wrong, **kw)
  msg = str(e.value)
  assert rels[0] in msg and good[rels[0]] in msg and "0" * 64 in msg and "is not used" in msg
  # The recorded digests: the data are those of the files, fetched at the pinned revision.
  data = preference_data.load_preferences(name, subset, "train", checksums=good, **kw)
  expected = preference_data.load_preferences(name, subset, "train", data_dir=tmp_path / "m", manual_dir=folder,
                                              download=False)
  assert list(data["id"]) == list(expected["id"]) and len(data["id"]) > 0
  assert sorted(fake_download[-2:]) == sorted(base + rel for rel in rels)


def test_hub_sha256_reads_the_lfs_oid_of_a_redirect(monkeypatch):
  import email.message
  import urllib.error
  import urllib.request

  def opener_with(headers):
    msg = email.message.Message()
    for k, v in headers.items():
      msg[k] = v

    class Opener:
      def open(self, request, timeout):
        assert request.get_method() == "HEAD"
        raise urllib.error.HTTPError(request.full_url, 302, "Found", msg, None)
    return lambda *handlers: Opener()

  url = preference_data.CAI_URL + preference_data.CAI_FILES["train"]
  monkeypatch.setattr(urllib.request, "build_opener", opener_with({"X-Linked-Etag": '"' + "ab" * 32 + '"'}))
  assert preference_data._hub_sha256(url) == "ab" * 32
  monkeypatch.setattr(urllib.request, "build_opener", opener_with({"ETag": '"abc"'}))  # Not an LFS file.
  assert preference_data._hub_sha256(url) is None


def test_manual_dir_files_are_the_users_own_and_recorded(tmp_path, fake_download):
  """Fixtures stand at the real files' paths; manual_dir files are used as they are (and hashed), not downloaded."""
  data = preference_data.load_preferences("hh_rlhf", "harmless-base", "test", data_dir=tmp_path / "d",
                                          manual_dir=HH_DIR, download=True)
  assert len(data["id"]) > 0 and not fake_download
  stats = preference_data.preference_cleanup_stats("hh_rlhf", "harmless-base", data_dir=tmp_path / "d")
  assert stats["sources"]["test"]["sha256"] == hashlib.sha256(
      (HH_DIR / "harmless-base" / "test.jsonl.gz").read_bytes()).hexdigest()
  assert gzip.decompress((HH_DIR / "harmless-base" / "test.jsonl.gz").read_bytes())  # A real gzip fixture.


# ------------------------------------------------- the reproduction, end to end


def _run(weak: Path, strong: Path, cache: Path, workdir: Path) -> dict:
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "w2sg_jax.main", "--config=experiments/w2s_llama.py:tweets_smoke",
       f"--workdir={workdir}", f"--config.cache_dir={cache}", f"--config.weak.checkpoint={weak}",
       f"--config.strong.checkpoint={strong}"],
      capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_tweets_smoke_recomputes_the_weak_model_when_its_weights_change(tmp_path):
  weak = _copy_checkpoint(WEAK_SPEC, tmp_path / "DIR_W")
  strong = _copy_checkpoint("random:llama?original_max_position_embeddings=512&rope_theta=2500&rope_type=llama3&seed=2",
                            tmp_path / "DIR_S")
  cache = tmp_path / "cache"
  first = _run(weak, strong, cache, tmp_path / "run1")
  assert any(c.startswith("weak/") for c in first["cache"]["computed"])
  again = _run(weak, strong, cache, tmp_path / "run2")
  assert again["cache"]["computed"] == []  # Unchanged: everything reused.
  shutil.copyfile(random_checkpoint.materialize(OTHER_WEAK_SPEC) / "model.safetensors", weak / "model.safetensors")
  changed = _run(weak, strong, cache, tmp_path / "run3")
  stages_computed = {c.split("/")[0] for c in changed["cache"]["computed"]}
  assert {"weak", "student"} <= stages_computed
  assert changed["data"]["checkpoints"]["weak"]["sha256"] == pretrained.checkpoint_digest(weak)
  assert changed["data"]["checkpoints"]["weak"] != first["data"]["checkpoints"]["weak"]
  # The rerun on the old cache gives what a fresh cache gives.
  fresh = _run(weak, strong, tmp_path / "fresh_cache", tmp_path / "run4")
  assert changed["weak"]["test_accuracy"] == fresh["weak"]["test_accuracy"]
  assert [r["test_accuracy"] for r in changed["runs"]] == [r["test_accuracy"] for r in fresh["runs"]]
