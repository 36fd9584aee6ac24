"""The vmap engine compiles once per distinct program (issue 23).

A group's set-up (every run's parameters, optimizer state and injected
hyperparameters) is one compiled program, and so is each piece of the
selection's bookkeeping; before, each op-by-op call of a new shape compiled
a one-op program (51 programs for the first group below, 6 now). A second
group of the same shapes compiles nothing, whatever its seeds and learning
rates; a group that differs only in its loss compiles its training loop alone
(before: its prediction too), and groups whose losses are in one loss table
(an experiment's students) share that loop too. Counts, not times (``make
bench`` times them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import engines, losses, train
from w2sg_jax.labels import store as store_lib
from w2sg_jax.models import FeatureHead
from tests.helpers.compiles import count_compilations

# Shapes no other test uses, so this module's first group compiles cold in any order of the suite.
N, D, H, C, B, STEPS, HOLDOUT = 44, 5, 7, 3, 4, 6, 12
OPT = schema.OptimizerConfig(name="adamw", learning_rate=1e-2, schedule="cosine", warmup_steps=1, weight_decay=1e-4,
                             grad_clip=1.0)
# Every program a group may compile: its set-up, its training loop, prediction (the holdout's shape and
# the test split's), and the selection's bookkeeping (the best parameters; the runs back in the caller's
# order, as the engine trains the runs of one batch order side by side).
FIRST_GROUP = {"jit(init_states)", "jit(run_steps)", "jit(apply)", "jit(_keep_better)", "jit(_take_runs)"}
MAX_FIRST_GROUP = 6  # apply twice (two shapes), every other one once.


def _make_model(rngs):
  return FeatureHead(D, (H,), C, rngs=rngs)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
  root = tmp_path_factory.mktemp("compiles")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(np.float32)
  ids = [f"x{i}" for i in range(N)]
  store = store_lib.write_store(str(root / "store"), ids, rng.dirichlet(np.ones(C), N).astype(np.float32),
                                components={"k": 0})
  test_x = rng.normal(size=(N - 5, D)).astype(np.float32)
  kw = {"engine": "vmap", "make_model": _make_model, "train_ids": ids, "train_inputs": {"features": x},
        "eval_inputs": {"test": {"features": test_x}}, "progress": False,
        "train_cfg": schema.TrainConfig(batch_size=B, num_steps=STEPS, optimizer=OPT,
                                        select=schema.SelectConfig(metric="accuracy", holdout=HOLDOUT, every=2))}
  return store, kw


def _group(store, seeds, lrs):
  return [engines.RunSpec(seed=s, store=store, optimizer={"learning_rate": lr}) for s, lr in zip(seeds, lrs)]


def test_a_second_group_of_the_same_shapes_compiles_nothing(problem):
  store, kw = problem
  with count_compilations() as first:
    a = engines.train_runs(_group(store, [0, 1, 0, 1], [1e-2, 3e-2, 1e-3, 3e-3]), loss_fn=losses.get("js"), **kw)
  assert first["jit(run_steps)"] == 1, dict(first)  # The counter sees this group's compilations.
  assert set(first) <= FIRST_GROUP and sum(first.values()) <= MAX_FIRST_GROUP, dict(first)
  # New seeds and learning rates (and so new batch orders and selected steps), the same shapes.
  with count_compilations() as second:
    b = engines.train_runs(_group(store, [7, 8, 7, 8], [2e-2, 5e-3, 1e-1, 4e-2]), loss_fn=losses.get("js"), **kw)
  assert dict(second) == {}
  assert all(np.abs(a.logits["test"][r] - b.logits["test"][r]).max() > 1e-4 for r in range(4))
  assert all(s in (2, 4, 6) for s in a.selected_steps + b.selected_steps)
  # Another loss: its training loop, and nothing else (set-up and prediction do not depend on the loss).
  with count_compilations() as other_loss:
    engines.train_runs(_group(store, [7, 8, 7, 8], [2e-2, 5e-3, 1e-1, 4e-2]), loss_fn=losses.get("kl"), **kw)
  assert dict(other_loss) == {"jit(run_steps)": 1}


def test_the_set_up_program_gives_the_op_by_op_bits():
  """One compiled set-up == `init_params` and `train.init_state` run op by op, to the bit."""
  seeds = np.array([3, 0, 3, 9], np.uint32)
  hparams = {"learning_rate": np.array([1e-3, 2e-2, 3e-1, 1e-2], np.float32),
             "weight_decay": np.array([0.0, 1e-4, 0.1, 1e-4], np.float32),
             "warmup_steps": np.array([0, 1, 3, 1], np.int32)}
  tx, _ = train.make_optimizer(OPT, STEPS, inject=True)
  states = engines._init_states(_make_model, tx, seeds, hparams)  # pylint: disable=protected-access
  _, params = engines.init_params(_make_model, [int(s) for s in seeds])

  def init(p, seed, h):
    state = train.init_state(p, {}, tx, seed)
    return state.replace(opt_state=train.with_hyperparams(state.opt_state, h))

  eager = jax.vmap(init)(params, jnp.asarray(seeds), hparams)
  assert jax.tree.structure(states) == jax.tree.structure(eager)
  for got, want in zip(jax.tree.leaves(states), jax.tree.leaves(eager)):
    if jnp.issubdtype(got.dtype, jax.dtypes.prng_key):
      got, want = jax.random.key_data(got), jax.random.key_data(want)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(train.injected_hyperparams(states.opt_state)["learning_rate"]),
                                hparams["learning_rate"])


class _Start(nnx.Module):
  """A linear head that starts at given weights (as a probe from a pretrained one would), times ``scale``."""

  def __init__(self, w, scale, *, rngs):
    del rngs
    self.w = nnx.Param(jnp.asarray(w) * scale)

  def __call__(self, features):
    return features @ self.w


def test_the_set_up_program_is_keyed_by_what_it_computes():
  """Two fresh closures over different weights of one shape: one compile, each its own weights. Another
  constant in the initialiser: another program (the graph alone would have mixed them up)."""
  tx, _ = train.make_optimizer(OPT, STEPS, inject=True)
  seeds = np.array([0, 1], np.uint32)
  hparams = {"learning_rate": np.full(2, 1e-2, np.float32)}
  w1, w2 = np.full((D, 2), 0.5, np.float32), np.arange(2 * D, dtype=np.float32).reshape(D, 2)
  out = []
  init_states = engines._init_states  # pylint: disable=protected-access
  with count_compilations() as compiled:
    for w, scale in ((w1, 2.0), (w2, 2.0), (w2, 3.0)):
      state = init_states(lambda rngs, w=w, scale=scale: _Start(w, scale, rngs=rngs), tx, seeds, hparams)
      out.append(np.asarray(state.params["w"]))
  assert compiled["jit(init_states)"] == 2, dict(compiled)
  for got, (w, scale) in zip(out, ((w1, 2.0), (w2, 2.0), (w2, 3.0))):
    np.testing.assert_array_equal(got, np.stack([w * np.float32(scale)] * 2))


@pytest.mark.slow  # Trains each loss twice, shared and alone (~6-20 s): slow suite.
def test_the_losses_of_a_table_share_one_training_loop(problem):
  """Groups that differ only in the loss compile one training loop between them (`train_vmap`'s
  ``loss_table``): each trains as the same group with its own loop does, and its step FLOPs are its own
  loss's (XLA costs a conditional as its costliest branch)."""
  store, kw = problem
  kw = {**kw, "train_cfg": kw["train_cfg"].replace(num_steps=STEPS + 1)}  # A loop no other test compiled.
  table = (losses.get("xent"), losses.get("pearson"), losses.get("tv"))
  group = _group(store, [0, 1, 0, 1], [1e-2, 3e-2, 1e-3, 3e-3])
  counts, shared = [], {}
  for loss in table:
    with count_compilations() as c:
      shared[loss] = engines.train_runs(group, loss_fn=loss, loss_table=table, **kw)
    counts.append(c.get("jit(run_steps)", 0))
  assert counts == [1, 0, 0], counts
  for loss in table:
    alone = engines.train_runs(group, loss_fn=loss, **kw)
    for r in range(len(group)):
      np.testing.assert_allclose(shared[loss].logits["test"][r], alone.logits["test"][r], rtol=0, atol=1e-5)
    assert shared[loss].selected_steps == alone.selected_steps
    # A switched group's FLOPs are its own loss's, counted on the program before optimization: near the
    # compiled count (0.95-0.97 of it on the default's heads; these 5-wide toy heads are elementwise work,
    # which fusion recounts), and never the costliest branch's, which is what XLA gives for the conditional.
    own, switched = alone.cost[0]["step_flops"], shared[loss].cost[0]["step_flops"]
    assert switched == pytest.approx(own, rel=0.35), (loss, own, switched)
  assert len({shared[loss].cost[0]["step_flops"] for loss in table}) == len(table)
  # A loss outside the table trains with its own loop, as without one.
  with count_compilations() as c:
    engines.train_runs(group, loss_fn=losses.get("js"), loss_table=table, **kw)
  assert c.get("jit(run_steps)", 0) == 1
