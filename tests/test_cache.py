"""One cache discipline: keys of everything read, locks, atomic writes, verified files.

The table test changes one config key at a time on a finished experiment and
checks that exactly the stages that read it (and those after them) recompute.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import cache as cache_lib
from w2sg_jax import config_lib, engines, hashing, losses, pipeline, tasks
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib
from w2sg_jax.models.heads import FeatureHead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ the Cache itself


def _write(value):
  def produce(out_dir, work_dir):
    del work_dir
    np.save(os.path.join(out_dir, "x.npy"), np.asarray(value))
    return {"value": value}
  return produce


def test_key_covers_stage_components_and_format_version(monkeypatch):
  k = cache_lib.stage_key("weak", {"lr": 1.0})
  assert k == cache_lib.stage_key("weak", {"lr": 1.0})
  assert k != cache_lib.stage_key("weak", {"lr": 2.0})
  assert k != cache_lib.stage_key("student", {"lr": 1.0})
  monkeypatch.setattr(cache_lib, "FORMAT_VERSION", cache_lib.FORMAT_VERSION + 1)
  assert k != cache_lib.stage_key("weak", {"lr": 1.0})


def test_get_or_create_produces_once_and_verifies(tmp_path):
  cache = cache_lib.Cache(str(tmp_path))
  calls = []
  def produce(out_dir, work_dir):
    calls.append(work_dir)
    return _write(3)(out_dir, work_dir)
  a = cache.get_or_create("s", {"k": 1}, produce)
  b = cache.get_or_create("s", {"k": 1}, produce)
  assert len(calls) == 1 and a.computed and not b.computed
  assert a.directory == b.directory and b.info == {"value": 3}
  assert int(np.load(b.path("x.npy"))) == 3
  assert not os.path.exists(calls[0])  # The work folder goes once the entry is complete.
  manifest = json.loads(open(b.path("manifest.json")).read())
  assert manifest["files"]["x.npy"] == hashing.read_sha256(b.path("x.npy"))


@pytest.mark.parametrize("damage", ["swap", "truncate", "bitflip", "delete"])
def test_a_damaged_file_is_replaced_with_a_warning_or_refused(tmp_path, damage, caplog):
  cache = cache_lib.Cache(str(tmp_path))
  entry = cache.get_or_create("s", {"k": 1}, _write(np.arange(100)))
  other = cache.get_or_create("s", {"k": 2}, _write(np.arange(100) * 2))
  path = entry.path("x.npy")
  data = open(path, "rb").read()
  if damage == "swap":
    shutil.copy(other.path("x.npy"), path)
  elif damage == "truncate":
    open(path, "wb").write(data[: len(data) // 2])
  elif damage == "bitflip":
    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    open(path, "wb").write(bytes(flipped))
  else:
    os.remove(path)
  strict = cache_lib.Cache(str(tmp_path), on_corrupt="raise")
  with pytest.raises(cache_lib.CorruptEntryError, match="x.npy"):
    strict.get_or_create("s", {"k": 1}, _write(np.arange(100)))
  with caplog.at_level("WARNING", logger="w2sg"):
    again = cache.get_or_create("s", {"k": 1}, _write(np.arange(100)))
  assert again.computed
  assert "x.npy" in caplog.text
  np.testing.assert_array_equal(np.load(again.path("x.npy")), np.arange(100))


def _rewrite_manifest(entry, change):
  path = entry.path("manifest.json")
  manifest = json.loads(open(path).read())
  with open(path, "w") as f:
    json.dump(change(manifest), f)


# Each row damages a valid entry's manifest (or its folder) in one way; all are corruption.
MANIFEST_DAMAGE = [
    ("null", lambda e: _rewrite_manifest(e, lambda m: None), "not a JSON object"),
    ("list", lambda e: _rewrite_manifest(e, lambda m: [m]), "not a JSON object"),
    ("string", lambda e: _rewrite_manifest(e, lambda m: "x.npy"), "not a JSON object"),
    ("no files map", lambda e: _rewrite_manifest(e, lambda m: {k: v for k, v in m.items() if k != "files"}),
     "no 'files' map"),
    ("files is a list", lambda e: _rewrite_manifest(e, lambda m: {**m, "files": list(m["files"])}), "no 'files' map"),
    ("empty files map", lambda e: _rewrite_manifest(e, lambda m: {**m, "files": {}}), "x.npy is not listed"),
    ("extra unlisted file", lambda e: np.save(e.path("extra.npy"), np.zeros(3)), "extra.npy is not listed"),
    ("bad digest", lambda e: _rewrite_manifest(e, lambda m: {**m, "files": {"x.npy": "abc"}}),
     "not a sha256 digest"),
    ("upper-case digest", lambda e: _rewrite_manifest(
        e, lambda m: {**m, "files": {"x.npy": m["files"]["x.npy"].upper()}}), "not a sha256 digest"),
    ("digest not a string", lambda e: _rewrite_manifest(e, lambda m: {**m, "files": {"x.npy": 7}}),
     "not a sha256 digest"),
    ("path outside the entry", lambda e: _rewrite_manifest(
        e, lambda m: {**m, "files": {**m["files"], "../other/x.npy": m["files"]["x.npy"]}}), "not a file of the entry"),
    ("other stage", lambda e: _rewrite_manifest(e, lambda m: {**m, "stage": "t"}), "records stage 't'"),
    ("info not an object", lambda e: _rewrite_manifest(e, lambda m: {**m, "info": [1]}), "'info'"),
]


@pytest.mark.parametrize("damage,words", [(d, w) for _, d, w in MANIFEST_DAMAGE], ids=[r[0] for r in MANIFEST_DAMAGE])
def test_a_malformed_manifest_is_corruption_replaced_or_refused(tmp_path, damage, words, caplog):
  cache = cache_lib.Cache(str(tmp_path))
  entry = cache.get_or_create("s", {"k": 1}, _write(np.arange(100)))
  damage(entry)
  strict = cache_lib.Cache(str(tmp_path), on_corrupt="raise")
  with pytest.raises(cache_lib.CorruptEntryError, match=words):
    strict.get_or_create("s", {"k": 1}, _write(np.arange(100)))
  assert os.path.isdir(entry.directory)  # Refused, not removed.
  with caplog.at_level("WARNING", logger="w2sg"):
    again = cache.get_or_create("s", {"k": 1}, _write(np.arange(100)))
  assert again.computed and words in caplog.text
  assert sorted(os.listdir(again.directory)) == ["manifest.json", "x.npy"]
  np.testing.assert_array_equal(np.load(again.path("x.npy")), np.arange(100))


def test_an_empty_manifest_beside_another_entrys_data_is_not_used(tmp_path):
  """The reproduction: ``"files": {}`` next to another entry's data file was accepted."""
  cache = cache_lib.Cache(str(tmp_path))
  entry = cache.get_or_create("s", {"k": 1}, _write(np.arange(10)))
  other = cache.get_or_create("s", {"k": 2}, _write(np.arange(10) * 7))
  shutil.copy(other.path("x.npy"), entry.path("x.npy"))
  _rewrite_manifest(entry, lambda m: {**m, "files": {}})
  again = cache.get_or_create("s", {"k": 1}, _write(np.arange(10)))
  assert again.computed
  np.testing.assert_array_equal(np.load(again.path("x.npy")), np.arange(10))


def test_a_same_size_same_mtime_rewrite_after_a_verified_open_is_still_seen(tmp_path):
  # Verification reads the bytes every time (hashing.read_sha256), never a digest remembered by stat.
  cache = cache_lib.Cache(str(tmp_path), on_corrupt="raise")
  entry = cache.get_or_create("s", {"k": 1}, _write(np.arange(100)))
  assert cache.open("s", entry.key) is not None  # Hashed once in this process, and again here.
  path = entry.path("x.npy")
  st = os.stat(path)
  data = bytearray(open(path, "rb").read())
  data[-1] ^= 1
  with open(path, "r+b") as f:  # In place: same inode, same size ...
    f.write(bytes(data))
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime.
  with pytest.raises(cache_lib.CorruptEntryError, match="x.npy"):
    cache.open("s", entry.key)


def test_importing_the_cache_does_not_import_the_label_store():
  # The cache sits below the store (the store writes through cache.atomic_directory); hashing is below both.
  code = ("import sys, w2sg_jax.cache; "
          "assert 'w2sg_jax.labels.store' not in sys.modules, sorted(m for m in sys.modules if 'w2sg' in m)")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def _denied(path):
  return PermissionError(errno.EACCES, "Permission denied", path)


@pytest.mark.parametrize("on_corrupt", ["replace", "raise"])
@pytest.mark.parametrize("where", ["manifest", "data file"])
def test_a_permission_error_is_raised_naming_the_file_and_deletes_nothing(tmp_path, monkeypatch, on_corrupt, where):
  cache = cache_lib.Cache(str(tmp_path))
  entry = cache.get_or_create("s", {"k": 1}, _write(np.arange(10)))
  before = sorted(os.listdir(entry.directory))
  if where == "manifest":
    target = entry.path("manifest.json")
    real_open = open

    def fake_open(path, *a, **k):
      if os.fspath(path) == target:
        raise _denied(target)
      return real_open(path, *a, **k)

    monkeypatch.setattr(cache_lib, "open", fake_open, raising=False)
  else:
    target = entry.path("x.npy")
    real_sha = hashing.read_sha256

    def fake_sha(path):
      if os.fspath(path) == target:
        raise _denied(target)
      return real_sha(path)

    monkeypatch.setattr(hashing, "read_sha256", fake_sha)
  calls = []
  with pytest.raises(PermissionError) as info:
    cache_lib.Cache(str(tmp_path), on_corrupt=on_corrupt).get_or_create(
        "s", {"k": 1}, lambda out, work: calls.append(out))
  assert info.value.filename == target and info.value.errno == errno.EACCES
  assert calls == []  # Nothing was recomputed ...
  assert sorted(os.listdir(entry.directory)) == before  # ... and nothing deleted.
  monkeypatch.undo()
  assert cache_lib.Cache(str(tmp_path)).get_or_create("s", {"k": 1}, _write(0)).computed is False
  # The boundary's paragraph names the file and the permission.
  from w2sg_jax import main as main_lib
  paragraph, status = main_lib.explain(info.value, ["w2sg"])
  assert status == 1 and target in paragraph and "permission denied" in paragraph
  assert "nothing was deleted" in paragraph


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="chmod does not stop root")
@pytest.mark.parametrize("name", ["manifest.json", "x.npy"])
def test_an_unreadable_file_in_a_shared_cache_is_an_error_not_corruption(tmp_path, name):
  cache = cache_lib.Cache(str(tmp_path))
  entry = cache.get_or_create("s", {"k": 1}, _write(np.arange(10)))
  os.chmod(entry.path(name), 0)
  try:
    with pytest.raises(PermissionError) as info:
      cache_lib.Cache(str(tmp_path)).get_or_create("s", {"k": 1}, _write(0))
    assert info.value.filename == entry.path(name)
    assert os.path.exists(entry.path(name))
  finally:
    os.chmod(entry.path(name), 0o644)


def test_a_killed_writer_leaves_no_entry_and_its_temp_is_cleaned(tmp_path):
  cache = cache_lib.Cache(str(tmp_path))

  def dies(out_dir, work_dir):
    np.save(os.path.join(out_dir, "x.npy"), np.zeros(3))
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    cache.get_or_create("s", {"k": 1}, dies)
  assert cache.open("s", cache_lib.stage_key("s", {"k": 1})) is None
  # A writer killed with SIGKILL leaves its temp folder behind; the next run removes it.
  orphan = tmp_path / "s" / f".{cache_lib.stage_key('s', {'k': 1})[:cache_lib.KEY_CHARS]}.tmp-abc"
  orphan.mkdir(parents=True)
  (orphan / "x.npy").write_bytes(b"half")
  assert str(orphan) in cache.clean_orphans()
  assert not orphan.exists()


def test_a_second_producer_waits_for_the_first_instead_of_racing(tmp_path):
  calls, results = [], []

  def slow(out_dir, work_dir):
    calls.append(threading.get_ident())
    time.sleep(0.5)  # Holds the lock while the other thread asks for the same entry.
    return _write(7)(out_dir, work_dir)

  def worker():
    results.append(cache_lib.Cache(str(tmp_path)).get_or_create("s", {"k": 1}, slow))

  threads = [threading.Thread(target=worker) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1
  assert sorted(r.computed for r in results) == [False, True]
  assert results[0].directory == results[1].directory


def test_groups_reuse_what_exists_and_produce_the_rest_together(tmp_path):
  cache = cache_lib.Cache(str(tmp_path))
  cache.get_or_create("run", {"seed": 1}, _write(10))
  asked = []

  def produce_group(todo, work_dirs):
    asked.append(list(todo))
    return [lambda out, i=i: _write(100 + i)(out, None) for i in todo]

  entries = cache.get_or_create_group("run", [{"seed": s} for s in (0, 1, 2)], produce_group)
  assert asked == [[0, 2]]
  assert [int(np.load(e.path("x.npy"))) for e in entries] == [100, 10, 102]
  assert cache.get_or_create_group("run", [{"seed": s} for s in (0, 1, 2)], produce_group)[2].computed is False
  assert asked == [[0, 2]]


def test_store_refuses_labels_swapped_in_from_another_store(tmp_path):
  ids = [f"e{i}" for i in range(20)]
  probs = np.random.default_rng(0).dirichlet([1, 1], 20).astype(np.float32)
  a = store_lib.write_store(tmp_path / "a", ids, probs, components={"x": 1})
  b = store_lib.write_store(tmp_path / "b", ids, probs[:, ::-1], components={"x": 2})
  shutil.copy(b.labels_path, a.labels_path)
  with pytest.raises(store_lib.StoreMismatchError, match=r"labels\.array_record.*probs_sha256"):
    store_lib.open_store(tmp_path / "a")


# ------------------------------------------------------- the pipeline's stages


def _config(**overrides):
  base = {"seeds": 1, "student.losses": ("xent", "js"), "student.noise.rates": (0.0, 0.2),
          "data.sizes.weak_train": 512, "data.sizes.w2s_train": 1024, "data.sizes.test": 512}
  return config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py:smoke"), {**base, **overrides})


def _run(cache_dir, workdir, **overrides):
  config = _config(**overrides)
  with config.unlocked():
    config.cache_dir = str(cache_dir)
  return pipeline.Pipeline(schema.Experiment.from_configdict(config), str(workdir), tasks.get(config.task)).run()


def _computed(results):
  return {c.split("/")[0] for c in results["cache"]["computed"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("base")
  jax.config.update("jax_compilation_cache_dir", str(tmp / "xla"))  # Rows recompile nothing new.
  results = _run(tmp / "cache", tmp / "run")
  assert _computed(results) == {"labels", "weak", "ceiling", "student"}
  return tmp, results


ALL_AFTER_DATA = {"labels", "weak", "ceiling", "student"}
AFTER_WEAK = {"labels", "weak", "student"}
_SLOW = pytest.mark.slow  # Rows that retrain the ceiling or the weak model: the slow suite (CI) runs them.
KEY_TABLE = [
    # (key, new value, the stages that must recompute)
    pytest.param("student.noise.scale", 0.0, {"labels", "student"}, id="noise kind (flip -> uniform)"),
    pytest.param("student.noise.seed", 3, {"labels", "student"}, id="noise seed"),
    pytest.param("student.loss_hparams", {"js": {"confidence": 0.2}}, {"student"}, id="loss hparams"),
    pytest.param("student.train.optimizer.learning_rate", 1e-3, {"ceiling", "student"}, id="student lr", marks=_SLOW),
    pytest.param("student.train.batch_size", 32, {"ceiling", "student"}, id="student batch", marks=_SLOW),
    pytest.param("data.sizes.w2s_train", 768, ALL_AFTER_DATA, id="data size", marks=_SLOW),
    pytest.param("weak.train.epochs", 2, AFTER_WEAK, id="weak epochs", marks=_SLOW),
    pytest.param("weak.head_hidden", (16,), AFTER_WEAK, id="weak model", marks=_SLOW),
    pytest.param("strong.head_hidden", (32,), {"ceiling", "student"}, id="strong model", marks=_SLOW),
    # Keys no stage reads change nothing.
    pytest.param("student.train.log_every", 7, set(), id="log_every"),
    pytest.param("name", "renamed", set(), id="name"),
]


@pytest.mark.parametrize("key,value,expected", KEY_TABLE)
def test_changing_one_key_recomputes_exactly_what_reads_it(base, tmp_path, key, value, expected):
  tmp, _ = base
  shutil.copytree(tmp / "cache", tmp_path / "cache")
  results = _run(tmp_path / "cache", tmp_path / "run", **{key: value})
  assert _computed(results) == expected


@pytest.mark.parametrize("damage", ["swap", "truncate", "bitflip"])
def test_damaged_labels_are_never_used_silently(base, tmp_path, damage):
  tmp, first = base
  shutil.copytree(tmp / "cache", tmp_path / "cache")
  stores = [store_lib.open_store(tmp_path / "cache" / "labels" / d)
            for d in os.listdir(tmp_path / "cache" / "labels") if not d.startswith(".")]
  clean = [s for s in stores if s.components.get("kind") == "weak" and s.components["split"] == "w2s_train"
           and s.noise is None][0]
  noisy = [s for s in stores if s.noise is not None][0]
  data = open(clean.labels_path, "rb").read()
  if damage == "swap":  # A well-formed labels file of the noise-0.2 store copied into the clean store.
    shutil.copy(noisy.labels_path, clean.labels_path)
  elif damage == "truncate":
    open(clean.labels_path, "wb").write(data[: len(data) // 2])
  else:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    open(clean.labels_path, "wb").write(bytes(flipped))
  if damage != "bitflip":  # A flipped byte may land in array_record framing; the cache's sha256 still sees it.
    with pytest.raises(store_lib.StoreMismatchError):
      store_lib.open_store(clean.directory)
  results = _run(tmp_path / "cache", tmp_path / "run")
  # The clean store was rebuilt from the weak model's cached predictions (no retraining), and every
  # student is the one trained on the right labels.
  assert _computed(results) == {"labels"}
  assert [r["test_accuracy"] for r in results["runs"]] == [r["test_accuracy"] for r in first["runs"]]


@pytest.mark.slow
def test_vmap_engine_equals_independent_single_runs():
  rng = np.random.default_rng(0)
  n, d = 256, 8
  x = rng.normal(size=(n, d)).astype(np.float32)
  ids = [f"x{i}" for i in range(n)]
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    stores = [store_lib.write_store(os.path.join(tmp, str(k)), ids, rng.dirichlet([1, 1], n).astype(np.float32),
                                    components={"k": k}) for k in range(3)]
    make_model = lambda rngs: FeatureHead(d, (16,), 2, rngs=rngs)  # noqa: E731
    opt = schema.OptimizerConfig(name="adamw", learning_rate=1e-2)
    streams = [stream_lib.LabelStream(ids, {"features": x}, s, batch_size=32, num_steps=40, seed=seed)
               for seed, s in zip((5, 6, 7), stores)]
    apply, params, _ = engines.train_vmap(make_model, stream_lib.stack(streams), loss_fn=losses.get("js"), opt=opt,
                                          num_steps=40, progress=False)
    together = np.asarray(apply(params, {"features": x}))
    for r, stream in enumerate(streams):
      apply1, params1, _ = engines.train_vmap(make_model, stream_lib.stack([stream]), loss_fn=losses.get("js"),
                                              opt=opt, num_steps=40, progress=False)
      alone = np.asarray(apply1(params1, {"features": x}))[0]
      np.testing.assert_allclose(together[r], alone, atol=1e-5)


def _main(*args, **popen):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen([sys.executable, "-m", "w2sg_jax.main", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, **popen)


_TINY = ["--config=experiments/synthetic.py:smoke", "--config.seeds=1", "--config.student.losses=('js',)",
         "--config.student.noise.rates=(0.0,)"]


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_two_processes_on_one_fresh_cache_both_succeed_with_identical_results(tmp_path, trial):
  procs = [_main(*_TINY, f"--workdir={tmp_path / f'run{i}'}", f"--config.cache_dir={tmp_path / 'cache'}")
           for i in range(2)]
  outs = [p.communicate() for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  a, b = (json.loads((tmp_path / f"run{i}" / "results.json").read_text()) for i in range(2))
  assert a["runs"] == b["runs"] and a["weak"]["test_accuracy"] == b["weak"]["test_accuracy"]
  assert sorted(os.listdir(tmp_path / "cache" / "weak")) == sorted(
      d for d in os.listdir(tmp_path / "cache" / "weak") if not d.endswith(".partial"))


@pytest.mark.slow
def test_kill_and_resume_through_the_streamed_data_parallel_road(tmp_path):
  """SIGKILL a data-parallel student mid-run; the rerun resumes from its checkpoint and matches a clean run."""
  args = [*_TINY, "--config.student.engine=data_parallel", "--config.student.train.save_every=4",
          "--config.student.train.epochs=4", "--config.student.noise.rates=(0.2,)"]
  clean = _main(*args, f"--workdir={tmp_path / 'clean'}", f"--config.cache_dir={tmp_path / 'cache_clean'}")
  _, err = clean.communicate()
  assert clean.returncode == 0, err[-3000:]

  cache = tmp_path / "cache"
  proc = _main(*args, f"--workdir={tmp_path / 'run'}", f"--config.cache_dir={cache}")
  ckpt_seen = False
  while proc.poll() is None:  # Until the first student checkpoint appears, or the run ends.
    student = cache / "student"
    if student.exists():
      partial = [d for d in os.listdir(student) if d.endswith(".partial")]
      if partial and os.path.isdir(student / partial[0] / "ckpt") and any(
          n.isdigit() for n in os.listdir(student / partial[0] / "ckpt")):
        proc.kill()
        ckpt_seen = True
        break
    time.sleep(0.05)
  proc.wait()
  assert ckpt_seen, "the student never wrote a checkpoint before finishing"
  rerun = _main(*args, f"--workdir={tmp_path / 'run'}", f"--config.cache_dir={cache}")
  _, err = rerun.communicate()
  assert rerun.returncode == 0, err[-3000:]
  a = json.loads((tmp_path / "clean" / "results.json").read_text())
  b = json.loads((tmp_path / "run" / "results.json").read_text())
  assert [r["test_accuracy"] for r in a["runs"]] == [r["test_accuracy"] for r in b["runs"]]
  assert b["cache"]["computed"] and all(c.startswith("student/") for c in b["cache"]["computed"])
