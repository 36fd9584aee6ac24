"""Weak-label store, label noise and the student stream."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from w2sg_jax import config as schema
from w2sg_jax import config_lib, hashing
from w2sg_jax.labels import noise as noise_lib
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from w2sg_jax.labels.noise import NoiseSpec
from w2sg_jax.labels.store import StoreMismatchError

COMPONENTS = {
    "weak_checkpoint": "sha256:abc",
    "dataset": {"name": "tweets", "version": "1.0.0", "split": "w2s_train"},
    "preprocessing": {"max_len": 64, "tokenizer": "minilm"},
}


def _data(n=20, c=2, seed=0):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
  ids = [f"ex{i:03d}" for i in range(n)]
  return ids, probs


# ------------------------------------------------------------------ hashing


def test_content_hash_is_sha256_of_sorted_compact_json():
  expected = hashlib.sha256(b'{"a":1,"b":[1,2.5,"x"]}').hexdigest()
  assert hashing.content_hash({"b": (1, 2.5, "x"), "a": 1}) == expected


def test_content_hash_changes_with_every_component():
  base = hashing.content_hash(COMPONENTS)
  variants = [
      {**COMPONENTS, "weak_checkpoint": "sha256:abd"},
      {**COMPONENTS, "dataset": {**COMPONENTS["dataset"], "split": "test"}},
      {**COMPONENTS, "dataset": {**COMPONENTS["dataset"], "version": "1.0.1"}},
      {**COMPONENTS, "preprocessing": {"max_len": 128, "tokenizer": "minilm"}},
      {**COMPONENTS, "noise": NoiseSpec(0.1, -1.0, 0)},
      {**COMPONENTS, "noise": NoiseSpec(0.1, -1.0, 1).as_dict()},
      {**COMPONENTS, "noise": NoiseSpec(0.2, -1.0, 0)},
      {**COMPONENTS, "noise": NoiseSpec(0.1, 0.0, 0)},
  ]
  hashes = [hashing.content_hash(v) for v in variants]
  assert base not in hashes
  assert len(set(hashes)) == len(hashes)
  # Key order does not matter; the spec object hashes as its dict.
  reordered = dict(reversed(list(COMPONENTS.items())))
  assert hashing.content_hash(reordered) == base
  assert hashing.content_hash({"n": NoiseSpec(0.1, -1, 0)}) == hashing.content_hash(
      {"n": {"rate": 0.1, "scale": -1.0, "seed": 0}})


def test_content_hash_of_arrays_uses_bytes_dtype_and_shape():
  a = np.arange(6, dtype=np.float32)
  h = hashing.content_hash({"w": a})
  b = a.copy()
  b[3] = np.nextafter(b[3], np.float32(10))
  assert hashing.content_hash({"w": b}) != h
  assert hashing.content_hash({"w": a.astype(np.float64)}) != h
  assert hashing.content_hash({"w": a.reshape(2, 3)}) != h
  # The canonical form (as stored in meta.json) hashes like the original.
  canon = hashing.canonical_components({"w": a, "x": (1, 2)})
  json.dumps(canon)
  assert hashing.content_hash(canon) == hashing.content_hash({"w": a, "x": [1, 2]})


def test_content_hash_rejects_unhashable_values():
  with pytest.raises(TypeError, match="keys must be strings"):
    hashing.content_hash({"a": {1: 2}})
  with pytest.raises(TypeError, match=r"components\.a"):
    hashing.content_hash({"a": object()})


# ------------------------------------------------------------------ write/open


def test_write_open_roundtrip_is_exact(tmp_path):
  ids, probs = _data(n=37, c=3)
  written = store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  store = store_lib.open_store(tmp_path / "s", expected_hash=hashing.content_hash(COMPONENTS),
                               expected_ids=ids)
  for s in (written, store):
    assert list(s.ids) == ids
    assert s.probs.dtype == np.float32 and s.probs.shape == (37, 3)
    np.testing.assert_array_equal(s.probs, probs)
    assert len(s) == 37 and s.num_classes == 3
  meta = store.meta
  assert meta["num_examples"] == 37 and meta["num_classes"] == 3
  assert meta["hash"] == hashing.content_hash(COMPONENTS)
  assert meta["ids_sha256"] == hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode()).hexdigest()
  assert meta["noise"] is None and meta["num_corrupted"] == 0
  assert sorted(os.listdir(tmp_path)) == ["s"]  # no temporary folder left behind
  assert not store.probs.flags.writeable


def test_store_source_is_a_grain_random_access_view_of_the_file(tmp_path):
  ids, probs = _data(n=11, c=4)
  store = store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  src = store.source()
  assert len(src) == 11
  for k in (0, 5, 10):
    assert src[k]["id"] == ids[k]
    np.testing.assert_array_equal(src[k]["probs"], probs[k])


def test_write_store_refuses_to_overwrite_unless_asked(tmp_path):
  ids, probs = _data()
  store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  new = store_lib.write_store(tmp_path / "s", ids, probs[:, ::-1], components={"v": 2},
                              overwrite=True)
  np.testing.assert_array_equal(store_lib.open_store(tmp_path / "s").probs, probs[:, ::-1])
  assert new.components == {"v": 2}
  assert sorted(os.listdir(tmp_path)) == ["s"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: np.where(np.arange(p.shape[0])[:, None] == 3, np.nan, p), "not finite"),
        (lambda p: p * 2 - 0.5, r"\[0, 1\]"),
        (lambda p: p * 0.9, "sum to 1"),
        (lambda p: p[:, :1], "C >= 2"),
        (lambda p: p[:-1], "probability rows"),
    ],
)
def test_invalid_probs_are_rejected(tmp_path, mutate, match):
  ids, probs = _data()
  with pytest.raises(ValueError, match=match):
    store_lib.write_store(tmp_path / "s", ids, mutate(probs), components=COMPONENTS)
  assert not (tmp_path / "s").exists()


def test_duplicate_ids_are_rejected(tmp_path):
  ids, probs = _data()
  ids[5] = ids[2]
  with pytest.raises(ValueError, match="ex002.*more than once"):
    store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)


def test_rows_summing_to_one_within_tolerance_are_accepted(tmp_path):
  ids, probs = _data()
  probs = probs.astype(np.float64)
  probs[:, 0] += 5e-5  # Every row sums to 1 + 5e-5, inside store_lib.SUM_TOL.
  written = store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  # What was stored is the rows as given, cast to float32: not renormalised, not reordered.
  expected = probs.astype(np.float32)
  for store in (written, store_lib.open_store(tmp_path / "s", expected_hash=written.hash, expected_ids=ids)):
    assert store.ids == tuple(ids) and store.num_classes == 2 and len(store) == len(ids)
    assert store.probs.dtype == np.float32
    np.testing.assert_array_equal(store.probs, expected)
    np.testing.assert_allclose(store.probs.astype(np.float64).sum(1), 1 + 5e-5, atol=1e-6)
  assert written.hash == hashing.content_hash(COMPONENTS)
  records = [written.source()[k] for k in (0, len(ids) - 1)]
  assert [r["id"] for r in records] == [ids[0], ids[-1]]
  np.testing.assert_array_equal(np.stack([r["probs"] for r in records]), expected[[0, -1]])
  # Just past the tolerance, the same write is refused and leaves nothing behind.
  probs[3, 0] += 2 * store_lib.SUM_TOL
  with pytest.raises(ValueError, match="row 3"):
    store_lib.write_store(tmp_path / "t", ids, probs, components=COMPONENTS)
  assert not (tmp_path / "t").exists()


def test_killed_write_leaves_no_store(tmp_path, monkeypatch):
  ids, probs = _data(n=30)
  real = store_lib._encode_record
  calls = []

  def dying(example_id, row):
    calls.append(example_id)
    if len(calls) == 15:
      raise KeyboardInterrupt("killed mid-write")
    return real(example_id, row)

  monkeypatch.setattr(store_lib, "_encode_record", dying)
  with pytest.raises(KeyboardInterrupt):
    store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  assert len(calls) == 15
  assert os.listdir(tmp_path) == []  # neither the store nor its temporary folder

  # A hard kill skips the clean-up: the temporary folder stays, never the store.
  calls.clear()
  from w2sg_jax import cache as cache_lib
  monkeypatch.setattr(cache_lib.shutil, "rmtree", lambda *a, **k: None)
  with pytest.raises(KeyboardInterrupt):
    store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  assert not (tmp_path / "s").exists()
  with pytest.raises(FileNotFoundError, match="no weak-label store"):
    store_lib.open_store(tmp_path / "s")
  monkeypatch.undo()
  store = store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  np.testing.assert_array_equal(store.probs, probs)


def test_open_missing_store_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match="weak-label stage"):
    store_lib.open_store(tmp_path / "nope")
  (tmp_path / "half").mkdir()
  with pytest.raises(FileNotFoundError, match="meta.json is missing"):
    store_lib.open_store(tmp_path / "half")


# ------------------------------------------------------------------ mismatches


@pytest.fixture
def written(tmp_path):
  ids, probs = _data(n=20)
  return store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS), ids


def test_mismatch_wrong_hash_names_both_hashes(written):
  store, _ = written
  other = hashing.content_hash({**COMPONENTS, "weak_checkpoint": "sha256:new"})
  with pytest.raises(StoreMismatchError) as e:
    store_lib.open_store(store.directory, expected_hash=other)
  msg = str(e.value)
  assert store.hash in msg and other in msg
  assert "weak model" in msg and "recomputed" in msg and "delete the folder" in msg
  assert isinstance(e.value, ValueError)


def test_mismatch_wrong_id_order_names_position_and_ids(written):
  store, ids = written
  swapped = list(ids)
  swapped[7], swapped[12] = swapped[12], swapped[7]
  with pytest.raises(StoreMismatchError, match=r"position 7.*'ex007'.*'ex012'.*different order"):
    store_lib.open_store(store.directory, expected_ids=swapped)
  foreign = list(ids)
  foreign[3] = "other"
  with pytest.raises(StoreMismatchError, match=r"position 3.*another dataset"):
    store_lib.open_store(store.directory, expected_ids=foreign)


def test_mismatch_different_count(written):
  store, ids = written
  with pytest.raises(StoreMismatchError, match="has 20 examples but the dataset has 19"):
    store_lib.open_store(store.directory, expected_ids=ids[:-1])


def test_tampered_meta_or_labels_are_detected(written, tmp_path):
  store, ids = written
  meta_path = os.path.join(store.directory, "meta.json")
  meta = json.load(open(meta_path))
  meta["components"]["weak_checkpoint"] = "edited"
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(StoreMismatchError, match="edited or corrupted"):
    store_lib.open_store(store.directory)
  # Labels file of another store (other ids) under this meta.json.
  ids2, probs2 = _data(n=20)
  ids2 = ids2[::-1]
  other = store_lib.write_store(tmp_path / "o", ids2, probs2, components=COMPONENTS)
  meta["components"]["weak_checkpoint"] = COMPONENTS["weak_checkpoint"]
  json.dump(meta, open(meta_path, "w"))
  os.replace(other.labels_path, store.labels_path)
  with pytest.raises(StoreMismatchError, match="ids_sha256"):
    store_lib.open_store(store.directory)


# ------------------------------------------------------------------ get_or_create


def test_noise_rate_zero_is_identity():
  _, probs = _data(n=40, c=3)
  for spec in (NoiseSpec.none(), NoiseSpec(0.0, 0.0, 3), NoiseSpec(0.5, 1.0, 3)):
    noisy, mask = noise_lib.apply_noise(probs, spec)
    np.testing.assert_array_equal(noisy, probs)
    assert not mask.any()


@pytest.mark.parametrize("rate, n", [(0.1, 50), (0.25, 37), (0.5, 5), (1.0, 9)])
def test_flip_corrupts_exactly_round_rate_n_binary_labels(rate, n):
  _, probs = _data(n=n, c=2, seed=1)
  noisy, mask = noise_lib.apply_noise(probs, noise_lib.flip(rate, seed=4))
  assert mask.sum() == round(rate * n)
  np.testing.assert_allclose(noisy[mask], 1.0 - probs[mask], atol=1e-7)
  np.testing.assert_array_equal(noisy[~mask], probs[~mask])
  assert noisy.dtype == np.float32


def test_shrink_scale_zero_gives_uniform_and_partial_shrink_matches_hand_values():
  _, probs = _data(n=30, c=5)
  noisy, mask = noise_lib.apply_noise(probs, noise_lib.shrink(0.4, 0.0, seed=2))
  assert mask.sum() == 12
  np.testing.assert_allclose(noisy[mask], 0.2, atol=1e-7)
  q = np.array([[0.7, 0.2, 0.1]])
  noisy, _ = noise_lib.apply_noise(q, noise_lib.shrink(1.0, 0.5, seed=0))
  np.testing.assert_allclose(noisy, [[1 / 3 + 0.5 * (0.7 - 1 / 3), 1 / 3 + 0.5 * (0.2 - 1 / 3),
                                      1 / 3 + 0.5 * (0.1 - 1 / 3)]])
  np.testing.assert_allclose(noisy, [[0.516666667, 0.266666667, 0.216666667]])
  # The extreme a = -1/(C-1) stays on the simplex.
  noisy, _ = noise_lib.apply_noise(np.eye(3), noise_lib.shrink(1.0, -0.5, seed=0))
  np.testing.assert_allclose(noisy, (1 - np.eye(3)) / 2, atol=1e-15)
  assert (noisy >= 0).all()


def test_noise_is_deterministic_per_seed():
  _, probs = _data(n=100)
  a1, m1 = noise_lib.apply_noise(probs, noise_lib.flip(0.3, seed=7))
  a2, m2 = noise_lib.apply_noise(probs, noise_lib.flip(0.3, seed=7))
  _, m3 = noise_lib.apply_noise(probs, noise_lib.flip(0.3, seed=8))
  np.testing.assert_array_equal(a1, a2)
  np.testing.assert_array_equal(m1, m2)
  assert m3.sum() == m1.sum() == 30
  assert (m1 != m3).any()
  # The mask is numpy's choice without replacement from the seeded Generator.
  ref = np.zeros(100, bool)
  ref[np.random.default_rng(7).choice(100, size=30, replace=False)] = True
  np.testing.assert_array_equal(m1, ref)


def test_noise_spec_validation():
  with pytest.raises(ValueError, match="below -1/\\(C-1\\) = -0.5 for C=3"):
    noise_lib.apply_noise(np.full((4, 3), 1 / 3), noise_lib.flip(0.5, seed=0))
  with pytest.raises(ValueError, match="below"):
    noise_lib.apply_noise(np.full((4, 3), 1 / 3), noise_lib.shrink(0.5, -0.6, seed=0))
  noise_lib.apply_noise(np.full((4, 3), 1 / 3), noise_lib.shrink(0.5, -0.5, seed=0))
  for bad in (dict(rate=1.5, scale=0, seed=0), dict(rate=-0.1, scale=0, seed=0),
              dict(rate=0.1, scale=-1.5, seed=0), dict(rate=0.1, scale=2, seed=0),
              dict(rate=0.1, scale=0, seed=-1), dict(rate=float("nan"), scale=0, seed=0)):
    with pytest.raises(ValueError):
      NoiseSpec(**bad)
  assert NoiseSpec(0, 1, 0) == NoiseSpec.none()
  assert NoiseSpec.from_dict(NoiseSpec(0.2, -1, 3).as_dict()) == NoiseSpec(0.2, -1, 3)


def test_noisy_store_is_derived_once_and_never_confused_with_clean(tmp_path, monkeypatch):
  from w2sg_jax import cache as cache_lib
  from w2sg_jax.stages import Stages

  ids, probs = _data(n=40, c=2, seed=1)
  config = schema.Experiment.from_configdict(config_lib.load_config(os.path.join(REPO, "experiments", "synthetic.py")))
  stages = Stages(config=config, task=None, cache=cache_lib.Cache(str(tmp_path)))
  clean = stages._store_entry(COMPONENTS, lambda: (ids, probs))  # pylint: disable=protected-access
  spec = noise_lib.flip(0.25, seed=3)
  noisy = stages.noisy_store(clean, spec)
  assert noisy.hash != clean.hash and noisy.directory != clean.directory
  assert noisy.meta["noise"] == spec.as_dict() and noisy.meta["num_corrupted"] == 10
  expected, mask = noise_lib.apply_noise(probs, spec)
  np.testing.assert_array_equal(noisy.probs, expected)
  np.testing.assert_array_equal(noisy.corrupted, mask)
  assert not clean.corrupted.any()
  # Reused without recomputing the noise; the clean store is untouched.
  monkeypatch.setattr(noise_lib, "apply_noise", lambda *a: pytest.fail("recomputed"))
  again = stages.noisy_store(clean, spec)
  assert again.directory == noisy.directory
  np.testing.assert_array_equal(store_lib.open_store(clean.directory).probs, probs)
  with pytest.raises(StoreMismatchError):
    store_lib.open_store(noisy.directory, expected_hash=clean.hash)
  assert stages.noisy_store(clean, NoiseSpec.none()) is clean


# ------------------------------------------------------------------ stream


N, B = 50, 8


@pytest.fixture
def stream_store(tmp_path):
  ids, probs = _data(n=N, c=3, seed=5)
  store = store_lib.write_store(tmp_path / "s", ids, probs, components=COMPONENTS)
  # x = [k, -k] identifies example k.
  x = np.stack([np.arange(N), -np.arange(N)], 1).astype(np.float32)
  return store, ids, probs, x


def _stream(store, ids, x, seed=11, steps=14):
  return stream_lib.LabelStream(ids, {"x": x}, store, batch_size=B, num_steps=steps, seed=seed)


def test_resuming_at_step_k_gives_identical_batches(stream_store):
  store, ids, _, x = stream_store
  full = list(_stream(store, ids, x).host_batches(0))
  assert len(full) == 14
  # A restarted process: a fresh stream, resumed at step 9, with and without prefetch.
  for kw in ({}, {"num_threads": 0}, {"num_threads": 4, "prefetch": 8}):
    resumed = list(_stream(store, ids, x).host_batches(9, **kw))
    assert len(resumed) == 5
    for a, b in zip(full[9:], resumed):
      assert a.keys() == b.keys() == {"inputs", "targets", "mask"}
      np.testing.assert_array_equal(a["inputs"]["x"], b["inputs"]["x"])
      np.testing.assert_array_equal(a["targets"], b["targets"])
  other = list(_stream(store, ids, x, seed=12).host_batches(0))
  assert not np.array_equal(other[0]["inputs"]["x"], full[0]["inputs"]["x"])


def test_each_target_is_the_store_row_of_its_id(stream_store):
  store, ids, probs, x = stream_store
  stream = _stream(store, ids, x, seed=3, steps=7)
  for step, batch in enumerate(stream.host_batches(0)):
    assert batch["inputs"]["x"].shape == (B, 2) and batch["targets"].shape == (B, 3)
    assert batch["targets"].dtype == np.float32 and batch["mask"].all()
    k = batch["inputs"]["x"][:, 0].astype(int)
    np.testing.assert_array_equal(batch["targets"], probs[k])
    np.testing.assert_array_equal(k, stream_lib.batch_indices(N, B, 7, 3)[step])


def test_every_example_at_most_once_per_epoch_and_epochs_reshuffle(stream_store):
  order = stream_lib.batch_indices(N, B, 18, seed=1)
  per_epoch = N // B
  epochs = [order[e * per_epoch:(e + 1) * per_epoch].ravel() for e in range(3)]
  for ep in epochs:
    assert len(set(ep.tolist())) == per_epoch * B  # The partial last batch is dropped, never padded.
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(order, stream_lib.batch_indices(N, B, 18, seed=1))
  with pytest.raises(ValueError, match="larger than the 50"):
    stream_lib.batch_indices(N, 64, 3, seed=0)


def test_processes_read_their_own_rows_of_each_global_batch(stream_store):
  store, ids, _, x = stream_store
  whole = list(_stream(store, ids, x).host_batches(0, num_threads=0))
  halves = [list(_stream(store, ids, x).host_batches(0, process_index=p, process_count=2)) for p in (0, 1)]
  for k, batch in enumerate(whole):
    joined = np.concatenate([halves[0][k]["inputs"]["x"], halves[1][k]["inputs"]["x"]])
    np.testing.assert_array_equal(joined, batch["inputs"]["x"])


def test_stream_rejects_inputs_that_do_not_match_the_store(stream_store):
  store, ids, _, x = stream_store
  swapped = list(ids)
  swapped[4], swapped[5] = swapped[5], swapped[4]
  with pytest.raises(StoreMismatchError, match=r"position 4.*'ex004'.*'ex005'"):
    _stream(store, swapped, x)
  with pytest.raises(StoreMismatchError, match="50 examples but the dataset has 49"):
    _stream(store, ids[:-1], x[:-1])


def test_stacked_streams_hold_each_runs_targets_and_order(stream_store):
  store, ids, probs, x = stream_store
  streams = [_stream(store, ids, x, seed=s) for s in (1, 2)]
  stacked = stream_lib.stack(streams)
  assert stacked.targets_RxNxC.shape == (2, N, 3) and stacked.order_SxRxB.shape == (14, 2, B)
  np.testing.assert_array_equal(stacked.order_SxRxB[:, 1], streams[1].order)
  assert stacked.seeds == (1, 2)


def test_host_batches_hold_host_arrays_so_grain_threads_dispatch_no_jax_program(stream_store):
  """Inputs given as jax.Arrays are brought to the host once: building a batch on a Grain thread must not
  dispatch a JAX program (a second thread's dispatch during the step's collective deadlocks XLA:CPU)."""
  import jax.numpy as jnp

  store, ids, _, x = stream_store
  stream = stream_lib.LabelStream(ids, {"x": jnp.asarray(x)}, store, batch_size=B, num_steps=4, seed=1)
  assert all(type(v) is np.ndarray for v in stream.inputs.values())
  batches = list(stream.host_batches(0))
  assert all(type(b["inputs"]["x"]) is np.ndarray and type(b["targets"]) is np.ndarray for b in batches)
  np.testing.assert_array_equal(batches[0]["inputs"]["x"], x[stream.order[0]])
