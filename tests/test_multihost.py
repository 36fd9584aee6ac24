"""Two CPU processes joined by jax.distributed train like one process.

Each worker (``tests/helpers/multihost_worker.py``) has 2 local CPU devices, so
the ``data`` mesh spans 4 devices over 2 processes, and each process feeds only
its half of every global batch through ``parallel.to_global``. The gradient
all-reduce then crosses processes (Gloo over loopback TCP, JAX's default CPU
collectives). The final parameters must equal those of one process training on
the same global batches over 4 local devices.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.helpers import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 6
GLOBAL_BATCH = 32


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_two_processes(out_prefix: str) -> list[str]:
  port = _free_port()
  procs, logs = [], []
  for pid in range(2):
    env = dict(os.environ)
    env.update(
        W2SG_COORDINATOR=f"127.0.0.1:{port}",
        W2SG_NUM_PROCESSES="2",
        W2SG_PROCESS_ID=str(pid),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("W2SG_DISTRIBUTED", None)
    log = open(f"{out_prefix}.log{pid}", "w+")
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.multihost_worker", out_prefix, str(NUM_STEPS), str(GLOBAL_BATCH)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    ))
  # No wall-clock limit (a loaded machine is slow, not wrong): wait until both
  # exit, and stop the other as soon as one fails, so a lost peer cannot hang it.
  try:
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for pid, p in enumerate(procs):
    assert p.returncode == 0, (
        f"worker {pid} exited with {p.returncode} (negative: stopped after the other worker failed):\n"
        + outputs[pid][-3000:]
    )
  return outputs


def _single_process_params():
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(4, num_steps=NUM_STEPS)
  it = tiny.batches(x, probs, GLOBAL_BATCH)(0)
  for _ in range(NUM_STEPS):
    state, metrics = trainer.step(state, next(it))
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  return flat, float(metrics["loss"])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  out = str(tmp_path / "params")
  _launch_two_processes(out)
  ref, ref_loss = _single_process_params()
  _, init = tiny.make_trainer(1, num_steps=NUM_STEPS)
  init_flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(init.params)}
  for pid in range(2):
    got = dict(np.load(f"{out}.{pid}.npz"))
    # 4 global devices, 2 of them local, 2 processes: the mesh really spans both.
    np.testing.assert_array_equal(got.pop("__devices__"), [4, 2, 2])
    assert float(got.pop("__loss__")) == pytest.approx(ref_loss, abs=1e-5)
    assert set(got) == set(ref)
    for k in ref:
      np.testing.assert_allclose(got[k], ref[k], atol=1e-5, rtol=0, err_msg=f"process {pid}, {k}")
  # The comparison is not vacuous: training moved the parameters well past the tolerance.
  moved = max(float(np.max(np.abs(ref[k] - init_flat[k]))) for k in ref)
  assert moved > 1e-2


def test_halves_must_both_be_fed(tmp_path):
  """A process feeding the wrong rows would change the result: the check has teeth."""
  ref, _ = _single_process_params()
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(4, num_steps=NUM_STEPS)
  it = tiny.batches(x, probs, GLOBAL_BATCH)(0)
  for _ in range(NUM_STEPS):
    b = next(it)
    # Both "processes" feeding the first half: what a wrong slice in the worker would do.
    half = jax.tree.map(lambda a: np.concatenate([a[: GLOBAL_BATCH // 2]] * 2), b)
    state, _ = trainer.step(state, half)
  wrong = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  assert max(float(np.max(np.abs(wrong[k] - ref[k]))) for k in ref) > 1e-4
