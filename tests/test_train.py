"""The data-parallel step, its compilation, masking, NaN handling and exact resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import tiny
from w2sg_jax import config as schema
from w2sg_jax import losses, parallel, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(num_devices, num_steps=20, loss="js"):
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(num_devices, loss=loss, num_steps=num_steps)
  it = tiny.batches(x, probs, 32)(0)
  for _ in range(num_steps):
    state, metrics = trainer.step(state, next(it))
  return trainer, state, metrics


def test_eight_devices_match_one_device():
  assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (see tests/conftest.py)"
  _, state1, _ = _run(1)
  _, state8, _ = _run(8)
  for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  # And training did move the parameters: equal because both learned the same thing.
  _, init = tiny.make_trainer(1)
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(state1.params)))
  assert moved > 1e-2


def test_batch_is_split_over_devices():
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(8)
  batch = parallel.to_global(next(tiny.batches(x, probs, 32)(0)), trainer.mesh)
  assert batch["targets"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(batch["targets"].addressable_shards) == 8
  assert batch["targets"].addressable_shards[0].data.shape == (4, 3)


def test_step_compiles_once():
  trainer, _, metrics = _run(8, num_steps=20)
  assert trainer.num_traces == 1
  assert set(metrics) >= {"loss", "grad_norm", "lr"}


def test_metrics_report_lr_schedule_and_grad_norm():
  _, _, metrics = _run(1, num_steps=20)
  # Cosine to 0 over 20 steps after 2 warm-up steps: the last step's lr is small but positive.
  schedule = train.make_schedule(tiny.OPT, 20)
  assert float(metrics["lr"]) == pytest.approx(float(schedule(19)))
  assert float(metrics["grad_norm"]) > 0


def test_indivisible_batch_is_a_clear_error():
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(8)
  with pytest.raises(ValueError, match=r"does not divide evenly over 8 devices; use a multiple of 8"):
    trainer.step(state, next(tiny.batches(x, probs, 30)(0)))


def test_mask_makes_padding_rows_irrelevant():
  x, probs = tiny.data()
  batch = next(tiny.batches(x, probs, 24)(0))
  padded = {
      "inputs": {"features": np.concatenate([batch["inputs"]["features"], 100 * np.ones((8, 8), np.float32)])},
      "targets": np.concatenate([batch["targets"], np.full((8, 3), 1 / 3, np.float32)]),
      "mask": np.concatenate([batch["mask"], np.zeros(8, np.float32)]),
  }
  trainer_a, state_a = tiny.make_trainer(8)
  trainer_b, state_b = tiny.make_trainer(8)
  state_a, m_a = trainer_a.step(state_a, padded)  # 32 rows, 8 of them padding.
  state_b, m_b = trainer_b.step(state_b, batch)  # 24 real rows only.
  np.testing.assert_allclose(float(m_a["loss"]), float(m_b["loss"]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_gradient_accumulation_matches_large_batch():
  """accum_steps=2 over two half batches equals one step on the whole batch (SGD)."""
  x, probs = tiny.data()
  opt = schema.OptimizerConfig(name="sgd", learning_rate=0.1, schedule="constant")
  batch = next(tiny.batches(x, probs, 32)(0))
  halves = [{k: (v if k != "inputs" else {"features": v["features"][s]}) if k == "inputs" else v[s]
             for k, v in batch.items()} for s in (slice(0, 16), slice(16, 32))]
  big_trainer, big = tiny.make_trainer(1, loss="xent", opt=opt)
  big, _ = big_trainer.step(big, batch)
  acc_trainer, acc = tiny.make_trainer(1, loss="xent", opt=opt.replace(accum_steps=2))
  for h in halves:
    acc, _ = acc_trainer.step(acc, h)
  for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(8, num_steps=30)
  good = tiny.batches(x, probs, 32)

  def poisoned(position):
    for i, batch in enumerate(good(position)):
      if position + i + 1 >= 13:  # Step 13 onwards sees NaN inputs.
        batch = {**batch, "inputs": {"features": np.full_like(batch["inputs"]["features"], np.nan)}}
      yield batch

  with pytest.raises(train.NonFiniteError, match=r"at step 13.*last good checkpoint \(step 10\)"):
    train.fit(trainer, state, poisoned, num_steps=30, workdir=str(tmp_path), save_every=5, log_every=5,
              progress=False)
  ckpt = train.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() == 10
  restored, position = ckpt.restore_latest(tiny.make_trainer(8, num_steps=30)[1])
  assert position == 10
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(restored.params))


def _resume_cmd(workdir, steps, sleep):
  env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  return [sys.executable, "-m", "tests.helpers.resume_run", str(workdir), str(steps), str(sleep)], env


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
  steps = 40
  cmd, env = _resume_cmd(tmp_path / "clean", steps, 0)
  subprocess.run(cmd, env=env, check=True, cwd=REPO)
  clean = json.loads((tmp_path / "clean" / "final.json").read_text())

  killed_dir = tmp_path / "killed"
  # Kill once at least two checkpoints (steps 5 and 10) are complete, i.e. have their checksum
  # records, well before the end (no wall-clock limit: a run that ends first fails the assertion).
  # A step folder without its record is unfinished and rightly dropped on resume, so waiting only
  # for the folder made the resumed step depend on when the kill landed.
  _kill_once_recorded(killed_dir, steps, 10)

  cmd, env = _resume_cmd(killed_dir, steps, 0)
  subprocess.run(cmd, env=env, check=True, cwd=REPO)
  resumed = json.loads((killed_dir / "final.json").read_text())
  assert resumed["resumed_from"] is not None and 10 <= resumed["resumed_from"] < steps
  assert resumed["params"].keys() == clean["params"].keys()
  for k in clean["params"]:
    np.testing.assert_array_equal(np.asarray(resumed["params"][k]), np.asarray(clean["params"][k]))
  assert resumed["history"] == clean["history"]


def _kill_once_recorded(workdir, steps, at_least):
  """Starts a slowed run and SIGKILLs it once a step >= ``at_least`` has its checksum record."""
  cmd, env = _resume_cmd(workdir, steps, 0.1)
  proc = subprocess.Popen(cmd, env=env, cwd=REPO)
  ckpt = workdir / "ckpt"
  while proc.poll() is None:
    recorded = [int(p.name.split(".")[0]) for p in ckpt.glob(f"*{train.CHECKSUMS_SUFFIX}")] if ckpt.exists() else []
    if any(s >= at_least for s in recorded):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "final.json").exists(), "the run finished before it could be killed"


@pytest.mark.slow
def test_sigkill_then_a_flipped_bit_in_the_latest_checkpoint_still_equals_the_uninterrupted_run(tmp_path):
  """Issue 18's reproduction: the damaged step is discarded with a warning, never resumed from."""
  steps = 40
  cmd, env = _resume_cmd(tmp_path / "clean", steps, 0)
  subprocess.run(cmd, env=env, check=True, cwd=REPO)
  clean = json.loads((tmp_path / "clean" / "final.json").read_text())

  killed_dir = tmp_path / "killed"
  _kill_once_recorded(killed_dir, steps, at_least=10)
  ckpt = killed_dir / "ckpt"
  flipped = max(int(p.name.split(".")[0]) for p in ckpt.glob(f"*{train.CHECKSUMS_SUFFIX}"))
  files = [p for p in (ckpt / str(flipped)).rglob("*") if p.is_file()]
  victim = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2] ^= 0x01
  victim.write_bytes(bytes(data))

  cmd, env = _resume_cmd(killed_dir, steps, 0)
  rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"checkpoint step {flipped}" in rerun.stderr and str(victim) in rerun.stderr
  resumed = json.loads((killed_dir / "final.json").read_text())
  assert resumed["resumed_from"] is None or resumed["resumed_from"] < flipped
  for k in clean["params"]:
    np.testing.assert_array_equal(np.asarray(resumed["params"][k]), np.asarray(clean["params"][k]))
  assert resumed["history"] == clean["history"]


def test_schedule_with_accumulation_decays_over_real_updates():
  opt = schema.OptimizerConfig(name="adamw", learning_rate=1.0, schedule="cosine", accum_steps=4)
  _, schedule = train.make_optimizer(opt, num_steps=32)  # 32 micro-batches = 8 updates.
  assert float(schedule(0)) == pytest.approx(1.0)
  assert float(schedule(3)) == pytest.approx(1.0)  # Same update, same rate.
  assert float(schedule(16)) == pytest.approx(0.5, abs=1e-6)  # Half-way through the updates.
  assert float(schedule(31)) < 0.05
