"""A grid of learning rates and weight decays x seeds trains as ONE vmapped program (issue 21).

The vmap engine keeps `train.INJECTED_HPARAMS` in the optimizer state
(``optax.inject_hyperparams``), one value per run, so its compiled program
does not depend on them: a grid equals each setting trained alone, runs
without overrides equal the engine with the plain optimizer bit for bit, and
two groups at different learning rates compile what one group compiles.
No wall-clock assertions: the speed-up is a figure of ``make bench`` (section c).
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import engines, losses, train
from w2sg_jax.labels import store as store_lib
from w2sg_jax.labels import stream as stream_lib
from tests.helpers.compiles import count_compilations

N, D, C, B, STEPS = 64, 8, 3, 8, 12
OPT = schema.OptimizerConfig(name="adamw", learning_rate=1e-2, schedule="cosine", warmup_steps=2, weight_decay=1e-4,
                             grad_clip=1.0)
LRS, WDS = [1e-3, 3e-3, 1e-2, 3e-2], [0.0, 0.01, 0.0, 0.01]


def _init(key, shape, dtype=jnp.float32):
  """Weights from the key without a random sampler (whose program alone compiles for seconds on CPU)."""
  phase = (jax.random.key_data(key) % 97).sum().astype(jnp.int32)
  return (((jnp.arange(np.prod(shape)) * 7 + phase) % 13 - 6) / 12).astype(dtype).reshape(shape)  # Exact in f32.


class Head(nnx.Module):
  """A small MLP whose every layer starts non-zero (so a step that moves nothing shows)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(D, 16, kernel_init=_init, rngs=rngs)
    self.fc2 = nnx.Linear(16, C, kernel_init=_init, rngs=rngs)

  def __call__(self, features):
    return self.fc2(jnp.tanh(self.fc1(features)))



@pytest.fixture(scope="module")
def problem(tmp_path_factory):
  root = tmp_path_factory.mktemp("grid")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(np.float32)
  ids = [f"x{i}" for i in range(N)]
  store = store_lib.write_store(str(root / "store"), ids, rng.dirichlet(np.ones(C), N).astype(np.float32),
                                components={"k": 0})
  kw = {"make_model": lambda rngs: Head(rngs=rngs), "train_ids": ids, "train_inputs": {"features": x},
        "eval_inputs": {"test": {"features": x}}, "loss_fn": losses.get("js"), "progress": False}
  return root, store, kw


def _cfg(opt=None, num_steps=STEPS):
  return schema.TrainConfig(batch_size=B, num_steps=num_steps, optimizer=opt or OPT, eval_batch_size=16, log_every=1)


# Two seeds, each read by two runs: the engine trains the runs of one batch order side by side
# (`engines._shared_orders`, runs 0, 2 | 1, 3), and hands everything back in the caller's order.
SEEDS = [0, 1, 0, 1]


def _grid_runs(store):
  return [engines.RunSpec(seed=s, store=store, optimizer={"learning_rate": lr, "weight_decay": wd})
          for s, lr, wd in zip(SEEDS, LRS, WDS)]


@pytest.fixture(scope="module")
def grid(problem):
  _, store, kw = problem
  chunks = []
  trained = engines.train_runs(_grid_runs(store), engine="vmap", train_cfg=_cfg(),
                               on_chunk=lambda step, apply, params_R: chunks.append((step, apply, params_R)), **kw)
  return trained, chunks


def test_grid_equals_each_setting_trained_alone(problem, grid):
  """4 runs at 4 (lr, wd) in one program == each run alone with that setting in its own train_cfg; and the
  runs alone, at 4 learning rates, compile one program between them."""
  _, store, kw = problem
  grid, chunks = grid
  assert engines._shared_orders(np.stack([  # pylint: disable=protected-access
      stream_lib.batch_indices(N, B, STEPS, s) for s in SEEDS], 1))[1] == 2
  compiled = []
  for r, (seed, lr, wd) in enumerate(zip(SEEDS, LRS, WDS)):
    with count_compilations() as compiled_now:
      alone = engines.train_runs([engines.RunSpec(seed=seed, store=store)], engine="vmap",
                                 train_cfg=_cfg(OPT.replace(learning_rate=lr, weight_decay=wd)), **kw)
    compiled.append(compiled_now)
    np.testing.assert_allclose(grid.logits["test"][r], alone.logits["test"][0], atol=1e-6, rtol=0)
    # The reported lr is the run's own: its schedule at its own peak.
    assert [h["lr"] for h in grid.history[r]] == [h["lr"] for h in alone.history[0]]
    _, schedule = train.make_optimizer(OPT.replace(learning_rate=lr), STEPS)
    assert [h["lr"] for h in grid.history[r]] == [float(jax.jit(schedule)(h["step"] - 1)) for h in grid.history[r]]
  assert compiled[0]["jit(run_steps)"] <= 1
  assert [sum(c.values()) for c in compiled[1:]] == [0, 0, 0], compiled
  final = [grid.logits["test"][r] for r in range(len(LRS))]
  assert all(np.abs(final[0] - f).max() > 1e-3 for f in final[1:])  # The settings did train differently.
  step, apply, params_R = chunks[-1]  # on_chunk's parameters are in the caller's order too.
  assert step == STEPS
  np.testing.assert_array_equal(np.asarray(apply(params_R, {"features": jnp.asarray(kw["train_inputs"]["features"])})),
                                np.stack(final))


def _old_engine(make_model, data, *, loss_fn, opt, num_steps):
  """The vmap engine as it was: the plain optimizer (its lr, weight decay and warm-up compiled in)."""
  tx, schedule = train.make_optimizer(opt, num_steps)
  graphdef, params = engines.init_params(make_model, data.seeds)
  apply_fn = lambda p, frozen, inputs, rng: nnx.merge(graphdef, p)(**inputs)

  def run_steps(states, start, stop, order_SxRxB, inputs, targets, weights):
    def one_run(state, idx_B, targets_NxC, weights_N):
      batch = {"inputs": jax.tree.map(lambda x: x[idx_B], inputs), "targets": targets_NxC[idx_B],
               "mask": weights_N[idx_B]}
      return train.train_step(state, batch, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, schedule=schedule,
                              num_steps=num_steps)

    def body(t, carry):
      states, _ = carry
      states, metrics = jax.vmap(one_run)(states, order_SxRxB[t], targets, weights)
      return states, metrics["lr"]

    return jax.lax.fori_loop(start, stop, body, (states, jnp.zeros(len(data.seeds), jnp.float32)))

  states = jax.vmap(lambda p, s: train.init_state(p, {}, tx, s))(params, jnp.asarray(data.seeds, jnp.uint32))
  weights = jnp.ones(data.targets_RxNxC.shape[:2], jnp.float32)
  states, lr = jax.jit(run_steps)(states, 0, num_steps, jnp.asarray(data.order_SxRxB), dict(data.inputs),
                                  jnp.asarray(data.targets_RxNxC), weights)
  return jax.vmap(lambda p, x: apply_fn(p, None, {"features": x}, None), in_axes=(0, None))(
      states.params, data.inputs["features"]), lr


def test_default_runs_share_the_grid_program_and_equal_the_plain_optimizer(problem, grid):
  """No RunSpec.optimizer: the grid's program, compiled once, and the old engine's numbers.

  Bit for bit where the plain chain has no constant it folds differently
  (`train._traced_schedule` groups the schedule's operations as XLA folds
  them). A constant weight decay of 0 is skipped by optax, which changes how
  XLA fuses the plain program: there the two agree to float rounding (~3e-8
  after 12 steps here), and the optimizers alone still agree to the bit
  (`test_injected_optimizer_equals_the_plain_one`).
  """
  del grid  # Trained first: its program is the one the runs below reuse.
  _, store, kw = problem
  with count_compilations() as compiled:
    trained = engines.train_runs([engines.RunSpec(seed=s, store=store) for s in SEEDS], engine="vmap",
                                 train_cfg=_cfg(), **kw)
  assert sum(compiled.values()) == 0, compiled
  np.testing.assert_array_equal(trained.logits["test"][0], trained.logits["test"][2])  # Same seed, same setting.
  _, schedule = train.make_optimizer(OPT, STEPS)
  assert trained.history[0][-1]["lr"] == float(jax.jit(schedule)(STEPS - 1))
  # Warm-ups per run: the same program again, each run on its own schedule.
  warmups = [0, 1, 4, 6]
  with count_compilations() as compiled:
    warm = engines.train_runs([engines.RunSpec(seed=s, store=store, optimizer={"warmup_steps": w})
                               for s, w in zip(SEEDS, warmups)], engine="vmap", train_cfg=_cfg(), **kw)
  assert sum(compiled.values()) == 0, compiled
  for r, w in enumerate(warmups):
    _, schedule = train.make_optimizer(OPT.replace(warmup_steps=w), STEPS)
    assert [h["lr"] for h in warm.history[r]] == [float(jax.jit(schedule)(h["step"] - 1)) for h in warm.history[r]]
  # Against the old engine: four seeds, four orders (each run gathers its own batch, as before).
  seeds = [0, 1, 2, 3]
  streams = [stream_lib.LabelStream(kw["train_ids"], kw["train_inputs"], store, batch_size=B, num_steps=STEPS, seed=s)
             for s in seeds]
  data = stream_lib.stack(streams)
  apply, params_R, _ = engines.train_vmap(kw["make_model"], data, loss_fn=kw["loss_fn"], opt=OPT, num_steps=STEPS,
                                          chunk_steps=STEPS, progress=False)
  new = np.asarray(apply(params_R, {"features": jnp.asarray(data.inputs["features"])}))
  old, _ = _old_engine(kw["make_model"], data, loss_fn=kw["loss_fn"], opt=OPT, num_steps=STEPS)
  np.testing.assert_array_equal(new, np.asarray(old))


def test_vmap_rejects_what_one_program_cannot_hold(problem):
  _, store, kw = problem
  with pytest.raises(ValueError, match=r"set optimizer.grad_clip differently.*learning_rate, weight_decay"):
    engines.train_runs([engines.RunSpec(seed=0, store=store, optimizer={"grad_clip": 0.5}),
                        engines.RunSpec(seed=1, store=store)], engine="vmap", train_cfg=_cfg(), **kw)
  with pytest.raises(ValueError, match=r"sets learning_rte; the optimizer has: name, learning_rate"):
    engines.train_runs([engines.RunSpec(seed=0, store=store, optimizer={"learning_rte": 0.5})], engine="vmap",
                       train_cfg=_cfg(), **kw)
  with pytest.raises(ValueError, match=r"optimizer 'adam' has no weight decay"):
    engines.group_optimizer(schema.OptimizerConfig(name="adam", learning_rate=1e-3),
                            [engines.RunSpec(seed=0, store=store, optimizer={"weight_decay": 0.1})])
  # Each run's merged config is checked as any OptimizerConfig is, the message naming the run.
  with pytest.raises(ValueError, match=r"of the run of seed 0: learning_rate=nan: must be a finite number > 0"):
    engines.group_optimizer(OPT, [engines.RunSpec(seed=0, store=store, optimizer={"learning_rate": float("nan")})])
  with pytest.raises(ValueError, match=r"of the run of seed 2: learning_rate=0.0: must be a finite number > 0"):
    engines.run_optimizer(OPT, engines.RunSpec(seed=2, store=store, optimizer={"learning_rate": 0.0}))
  # Keys every run sets alike join the shared config (and so the program's key).
  opt, hp = engines.group_optimizer(OPT, [engines.RunSpec(seed=s, store=store, optimizer={"grad_clip": 0.5})
                                          for s in (0, 1)])
  assert opt == OPT.replace(grad_clip=0.5) and hp == {"learning_rate": [1e-2] * 2, "weight_decay": [1e-4] * 2,
                                            "warmup_steps": [2] * 2}


@pytest.mark.slow
def test_data_parallel_merges_the_run_overrides(problem, tmp_path):
  """A learning rate of 1e-9 in a run's RunSpec.optimizer leaves its parameters where they started (the
  schema refuses 0)."""
  _, store, kw = problem
  run = engines.RunSpec(seed=3, store=store, work_dir=str(tmp_path / "lr0"), optimizer={"learning_rate": 1e-9})
  trained = engines.train_runs([run], engine="data_parallel", train_cfg=_cfg(num_steps=2), **kw)
  x = kw["eval_inputs"]["test"]["features"]
  start = np.asarray(Head(rngs=nnx.Rngs(params=3))(jnp.asarray(x)))
  # The config's lr (1e-2, warm-up 2) would move the logits by ~1e-2; the run's override keeps them.
  np.testing.assert_allclose(trained.logits["test"][0], start, atol=1e-6)
  assert all(0 <= h["lr"] <= 1e-9 for h in trained.history[0]) and len(trained.history[0]) == 2
  assert engines.run_optimizer(OPT, run) == OPT.replace(learning_rate=1e-9)


@pytest.mark.parametrize("opt", [
    OPT.replace(weight_decay=0.0),
    schema.OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="linear", end_lr_factor=0.1, warmup_steps=3,
                           weight_decay=0.1, accum_steps=2),
])
def test_injected_optimizer_equals_the_plain_one(opt):
  """make_optimizer(inject=True) at the config's values: the plain optimizer's updates and rates, to the bit;
  a state's own learning rate is the one it uses. (One case is not bit for bit: a constant schedule under
  accumulation, whose constant XLA folds into the plain program's accumulated mean, ~6e-8.)"""
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  grads = {"w": jnp.asarray(rng.normal(size=(10, 5, 3)), jnp.float32)}
  outs = []
  for inject in (False, True):
    tx, schedule = train.make_optimizer(opt, 10, inject=inject)

    def step(carry, t_g, inject=inject, tx=tx, schedule=schedule):  # The step count traced, as in training.
      (params, state), (t, g) = carry, t_g
      lr = schedule(t, state) if inject else schedule(t)
      u, state = tx.update(g, state, params)
      return (jax.tree.map(jnp.add, params, u), state), lr

    (p, _), lrs = jax.jit(lambda c, xs, step=step: jax.lax.scan(step, c, xs))(
        (params, tx.init(params)), (jnp.arange(10, dtype=jnp.int32), grads))
    outs.append((p, lrs))
  (p0, lr0), (p1, lr1) = outs
  np.testing.assert_array_equal(np.asarray(p0["w"]), np.asarray(p1["w"]))
  np.testing.assert_array_equal(np.asarray(lr0), np.asarray(lr1))
  state = train.with_hyperparams(tx.init(params), {"learning_rate": 2 * opt.learning_rate})
  assert float(train.injected_hyperparams(state)["learning_rate"]) == np.float32(2 * opt.learning_rate)
  assert float(schedule(jnp.int32(4), state)) == pytest.approx(2 * float(lr1[4]), rel=1e-6)
  with pytest.raises(ValueError, match="b1 cannot be set per run"):
    train.with_hyperparams(state, {"b1": 0.5})
