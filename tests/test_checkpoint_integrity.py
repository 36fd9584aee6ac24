"""Resumable checkpoints carry checksums (issue 18, item 2).

Every saved step has ``ckpt/<step>.sha256.json`` with the sha256 of each of
its files. A step that does not match (a flipped bit, an extra or missing
file) or has no record is discarded with a warning naming the step and the
file, and the run resumes from the step before it, or from the start; either
way it ends exactly where an uninterrupted run ends. The best-checkpoint folder
of model selection is verified the same way.
"""

from __future__ import annotations

import errno
import json
import os

import jax
import numpy as np
import pytest

from tests.helpers import tiny
from w2sg_jax import cache as cache_lib
from w2sg_jax import hashing
from w2sg_jax import train

STEPS = 30


class _Stop(Exception):
  pass


def _stop_at(step):
  def on_step(s):
    if s == step:
      raise _Stop
  return on_step


def _validation(trainer):
  """Scores each evaluated step by the negative xent on a fixed set (higher is better)."""
  x, probs = tiny.data(num_examples=64, seed=1)

  def evaluate(state):
    logp = jax.nn.log_softmax(trainer.predict(state, {"features": x}, 64))
    return float(np.sum(probs * np.asarray(logp), -1).mean())

  return train.Validation(name="val_score", steps=frozenset({6, 12, 18, 24, 30}), evaluate=evaluate)


def _fit(workdir, *, stop_at=None, select=False):
  """A tiny run of STEPS steps, checkpointed every 5; ``stop_at`` interrupts it after that step."""
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(8, num_steps=STEPS)
  return train.fit(trainer, state, tiny.batches(x, probs, 32), num_steps=STEPS, workdir=str(workdir), save_every=5,
                   log_every=1, progress=False, on_step=_stop_at(stop_at) if stop_at else None,
                   validation=_validation(trainer) if select else None)


def _params(result):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(result.state.params))]


def _assert_same_run(a, b):
  for x, y in zip(_params(a), _params(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert a.history == b.history
  assert a.validation == b.validation and a.selected_step == b.selected_step


def _steps(ckpt_dir):
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _records(ckpt_dir):
  return sorted(int(n.split(".")[0]) for n in os.listdir(ckpt_dir) if n.endswith(train.CHECKSUMS_SUFFIX))


def _largest_file(step_dir):
  files = [os.path.join(d, n) for d, _, names in os.walk(step_dir) for n in names]
  return max(files, key=os.path.getsize)


def _flip_bit(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  with open(path, "wb") as f:
    f.write(bytes(data))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  return _fit(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def clean_selected(tmp_path_factory):
  return _fit(tmp_path_factory.mktemp("clean_selected"), select=True)


def test_every_kept_step_has_a_record_and_no_record_outlives_its_step(tmp_path, clean):
  del clean
  _fit(tmp_path)
  ckpt = tmp_path / "ckpt"
  assert _steps(ckpt) == [25, 30]  # max_to_keep=2 removed the older steps ...
  assert _records(ckpt) == [25, 30]  # ... and their records with them.
  record = json.loads((ckpt / f"30{train.CHECKSUMS_SUFFIX}").read_text())
  files = {os.path.relpath(os.path.join(d, n), ckpt / "30") for d, _, names in os.walk(ckpt / "30") for n in names}
  assert set(record["files"]) == files
  for rel, digest in record["files"].items():
    assert digest == hashing.read_sha256(str(ckpt / "30" / rel))


@pytest.mark.parametrize("damage", ["bitflip", "no_record", "extra_file", "missing_file"])
def test_a_damaged_latest_step_is_discarded_and_the_run_resumes_from_the_one_before(tmp_path, clean, damage, caplog):
  with pytest.raises(_Stop):
    _fit(tmp_path, stop_at=22)
  ckpt = tmp_path / "ckpt"
  assert _steps(ckpt) == [15, 20] and _records(ckpt) == [15, 20]
  victim = _largest_file(ckpt / "20")
  named = victim
  if damage == "bitflip":
    _flip_bit(victim)
  elif damage == "no_record":
    os.remove(ckpt / f"20{train.CHECKSUMS_SUFFIX}")
    named = f"20{train.CHECKSUMS_SUFFIX}"
  elif damage == "extra_file":
    named = str(ckpt / "20" / "stray.bin")
    open(named, "wb").write(b"not orbax's")
  else:
    os.remove(victim)
  with caplog.at_level("WARNING", logger="w2sg"):
    resumed = _fit(tmp_path)
  assert resumed.resumed_from == 15
  assert "checkpoint step 20" in caplog.text and named in caplog.text
  _assert_same_run(resumed, clean)


def test_when_every_step_is_damaged_the_run_starts_again(tmp_path, clean, caplog):
  with pytest.raises(_Stop):
    _fit(tmp_path, stop_at=22)
  for step in (15, 20):
    _flip_bit(_largest_file(tmp_path / "ckpt" / str(step)))
  with caplog.at_level("WARNING", logger="w2sg"):
    resumed = _fit(tmp_path)
  assert resumed.resumed_from is None
  assert "checkpoint step 20" in caplog.text and "checkpoint step 15" in caplog.text
  _assert_same_run(resumed, clean)


def test_restoring_a_damaged_step_by_number_is_refused_and_the_step_removed(tmp_path, clean):
  del clean
  _fit(tmp_path)
  victim = _largest_file(tmp_path / "ckpt" / "30")
  _flip_bit(victim)
  ckpt = train.Checkpointer(str(tmp_path / "ckpt"))
  like = tiny.make_trainer(8, num_steps=STEPS)[1]
  with pytest.raises(train.CorruptCheckpointError, match=victim):
    ckpt.restore(30, like)
  assert ckpt.all_steps() == [25] and _records(tmp_path / "ckpt") == [25]
  _, position = ckpt.restore(25, like)
  assert position == 25
  ckpt.close()


def test_a_permission_error_while_verifying_is_raised_and_deletes_nothing(tmp_path, clean, monkeypatch):
  del clean
  with pytest.raises(_Stop):
    _fit(tmp_path, stop_at=22)
  step_dir = str(tmp_path / "ckpt" / "20")

  def denied(path):
    if path.startswith(step_dir):
      raise PermissionError(errno.EACCES, "Permission denied", path)
    return real(path)

  real = hashing.read_sha256
  monkeypatch.setattr(hashing, "read_sha256", denied)
  with pytest.raises(PermissionError) as info:
    _fit(tmp_path)
  assert info.value.filename.startswith(step_dir)
  assert _steps(tmp_path / "ckpt") == [15, 20] and _records(tmp_path / "ckpt") == [15, 20]


# ------------------------------------------------------------ model selection


@pytest.mark.slow
def test_a_damaged_best_step_makes_the_run_train_again_to_the_same_selection(tmp_path, clean_selected, caplog):
  assert clean_selected.selected_step is not None
  with pytest.raises(_Stop):
    _fit(tmp_path, stop_at=22, select=True)
  best_dir = tmp_path / "best"
  best_step = _steps(best_dir)[-1]
  victim = _largest_file(best_dir / str(best_step))
  _flip_bit(victim)
  with caplog.at_level("WARNING", logger="w2sg"):
    resumed = _fit(tmp_path, select=True)
  assert victim in caplog.text and "trains again from step 0" in caplog.text
  assert resumed.resumed_from is None
  _assert_same_run(resumed, clean_selected)


@pytest.mark.slow
def test_a_best_step_damaged_during_the_run_is_refused_not_returned(tmp_path, clean_selected, monkeypatch):
  """Damage after the best step was saved and before `fit` restores it: an error, and a rerun recovers."""
  real_restore, flipped = train._Best.restore, []

  def damaged_first(self, like):
    flipped.append(_largest_file(tmp_path / "best" / str(self.step)))
    _flip_bit(flipped[-1])
    return real_restore(self, like)

  monkeypatch.setattr(train._Best, "restore", damaged_first)
  with pytest.raises(train.CorruptCheckpointError, match="the best model of this run is lost") as info:
    _fit(tmp_path, select=True)
  assert flipped[0] in str(info.value)
  assert isinstance(info.value, cache_lib.CorruptEntryError)  # main.explain's paragraph for corrupt files.
  monkeypatch.setattr(train._Best, "restore", real_restore)
  rerun = _fit(tmp_path, select=True)
  _assert_same_run(rerun, clean_selected)


# ------------------------------------------------------------- divergence


def test_divergence_after_a_verified_resume_says_where_it_resumed(tmp_path):
  x, probs = tiny.data()
  good = tiny.batches(x, probs, 32)

  def poisoned(position):
    for i, batch in enumerate(good(position)):
      if position + i + 1 >= 13:  # Step 13 onwards sees NaN inputs.
        batch = {**batch, "inputs": {"features": np.full_like(batch["inputs"]["features"], np.nan)}}
      yield batch

  def run():
    trainer, state = tiny.make_trainer(8, num_steps=STEPS)
    return train.fit(trainer, state, poisoned, num_steps=STEPS, workdir=str(tmp_path), save_every=5, log_every=5,
                     progress=False)

  with pytest.raises(train.NonFiniteError, match="this run started at step 0") as first:
    run()
  assert "resumed" not in str(first.value)
  with pytest.raises(train.NonFiniteError,
                     match=r"at step 13.*resumed at step 10 from a checkpoint whose files match the sha256"):
    run()
