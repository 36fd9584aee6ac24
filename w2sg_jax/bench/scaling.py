"""Section f: the data-parallel step on 1, 2, 4 and 8 devices.

Runs in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count is
fixed when JAX starts); the four meshes are built first and their steps
timed round-robin in rounds (``timing.time_rounds``). On CPU the 8 "devices" share the same cores, so this
shows that the sharded step is correct (the same parameters as on one device)
and what the partitioning and the gradient all-reduce cost; a step that gets
faster with n only overlaps single-threaded elementwise work, it gains no
hardware. On a GPU host or a TPU slice the same code splits
the batch over real chips.

  python -m w2sg_jax.bench.scaling OUT.json [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

DEVICE_COUNTS = (1, 2, 4, 8)


def _worker(out_path: str, quick: bool) -> None:
  import jax
  import numpy as np
  from flax import nnx

  from w2sg_jax import config as schema
  from w2sg_jax import losses, parallel, train
  from w2sg_jax.bench import timing
  from w2sg_jax.models import Bert, BertConfig, SequenceClassifier

  rng = np.random.default_rng(0)
  reps, rounds = timing.reps_rounds(quick)
  if quick:  # An MLP head: compiles in a fraction of a second per mesh.
    from w2sg_jax.models import MLPHead

    batch, dim, steps = 16, 32, 3
    label = f"MLP head {dim}-64-2 (--quick)"
    make_model = lambda: MLPHead(dim, (64,), 2, rngs=nnx.Rngs(0))
    inputs = {"x_BxD": rng.normal(size=(batch, dim)).astype(np.float32)}
  else:
    cfg = BertConfig(vocab_size=8192, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=128)
    batch, seq, steps = 32, 64, 3
    label = f"BERT {cfg.num_hidden_layers} layers x {cfg.hidden_size}, sequence {seq}"
    make_model = lambda: SequenceClassifier(Bert(cfg, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    inputs = {"input_ids_BxT": rng.integers(1, cfg.vocab_size, (batch, seq)).astype(np.int32),
              "attention_mask_BxT": np.ones((batch, seq), np.int32)}
  data = {"inputs": inputs, "targets": rng.dirichlet([1.0, 1.0], batch).astype(np.float32),
          "mask": np.ones(batch, np.float32)}
  opt = schema.OptimizerConfig(name="adamw", learning_rate=1e-3, schedule="constant", grad_clip=1.0)
  rows, reference, runners = [], None, {}
  num_steps = 10 + steps + (1 + reps * rounds)
  for n in DEVICE_COUNTS:
    if n > len(jax.devices()):
      break
    mesh = parallel.make_mesh(n)
    model = make_model()
    k = model.out.kernel if quick else model.head.out.kernel
    k[...] = 0.02 * jax.random.normal(jax.random.key(2), k.shape)
    apply_fn, params, frozen = train.split_model(model)
    tx, schedule = train.make_optimizer(opt, num_steps)
    state = parallel.replicate(train.init_state(params, frozen, tx, 0), mesh)
    trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses.get("js"), tx=tx, schedule=schedule,
                            num_steps=num_steps, mesh=mesh)
    t0 = time.perf_counter()
    state, _ = trainer.step(state, data)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0
    for _ in range(steps - 1):
      state, _ = trainer.step(state, data)
    params_now = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]
    if reference is None:
      reference = params_now
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params_now, reference))
    rows.append({"devices": n, "first_step_s": first, "max_param_diff_vs_1": diff})
    held = {"state": state}

    def run(trainer=trainer, held=held):
      held["state"], m = trainer.step(held["state"], data)
      return held["state"], m

    runners[n] = (run, trainer)
  res = timing.time_rounds({str(n): r for n, (r, _) in runners.items()}, warmup=1, reps=reps, rounds=rounds)
  for row in rows:
    n = row["devices"]
    med = res.medians(str(n))
    row.update({"step_ms": [t * 1e3 for t in med], "examples_per_s": [batch / t for t in med],
                "time_vs_1": [1.0 / s for s in res.speedup(str(n), "1")],
                "traces": runners[n][1].num_traces})
  with open(out_path, "w") as f:
    json.dump({"batch": batch, "model": label, "reps": reps, "rounds": rounds,
               "steps_compared": steps, "rows": rows}, f)


def bench_scaling(*, quick: bool, timeout_s: float, workdir: str,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the worker in a fresh process with 8 simulated CPU devices."""
  out = os.path.join(workdir, "scaling.json")
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=8"])
  env.setdefault("JAX_PLATFORMS", "cpu")
  cmd = [sys.executable, "-m", "w2sg_jax.bench.scaling", out] + (["--quick"] if quick else [])
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"error": f"the scaling worker ran past {timeout_s:.0f} s and was stopped"}
  if proc.returncode != 0:
    return {"error": f"the scaling worker failed ({proc.returncode}): {proc.stderr.strip()[-600:]}"}
  with open(out) as f:
    result = json.load(f)
  for r in result["rows"]:
    log(f"  {r['devices']} device(s): {'/'.join(f'{t:.1f}' for t in r['step_ms'])} ms/step, "
        f"max |param diff| vs 1 device "
        f"{r['max_param_diff_vs_1']:.1e}")
  result["backend_note"] = (
      "the simulated devices share the same cores, so no hardware is added; a faster step on n "
      "devices only means that XLA ran the devices' single-threaded elementwise work side by side "
      "(see the performance notes), and a slower one is the partitioning and all-reduce overhead"
  )
  return result


if __name__ == "__main__":
  _worker(sys.argv[1], "--quick" in sys.argv[2:])
