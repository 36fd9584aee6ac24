"""What a run costs, read from the compiled programs (`w2sg_jax.cost`, `engines.TrainedRuns.cost`)."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import cost, engines, losses, plan, train
from w2sg_jax.labels import store as store_lib
from w2sg_jax.models import FeatureHead
from tests.helpers.compiles import count_compilations

# A linear head big enough that its two matmuls dominate the step. B = 512 also keeps the data_parallel
# engine's repeated work small: on 8 devices every device applies the replicated AdamW update (~15 FLOPs a
# parameter, D C of them), which the engine counts 8 times, ~5% of the step here (~11% at B = 256).
N, D, C, B = 512, 512, 64, 512
N_EVAL, EVAL_BATCH = 300, 128
NUM_STEPS = 2
OPT = schema.OptimizerConfig(name="adamw", learning_rate=1e-3)



def _make_model(rngs):
  return FeatureHead(D, (), C, rngs=rngs)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
  root = tmp_path_factory.mktemp("cost")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(np.float32)
  ids = [f"x{i}" for i in range(N)]
  stores = [store_lib.write_store(str(root / f"s{k}"), ids, rng.dirichlet(np.ones(C), N).astype(np.float32),
                                  components={"k": k}) for k in range(3)]
  kw = {"make_model": _make_model, "train_ids": ids, "train_inputs": {"features": x},
        "eval_inputs": {"test": {"features": x[:N_EVAL]}}, "loss_fn": losses.get("xent"), "progress": False,
        "train_cfg": schema.TrainConfig(batch_size=B, num_steps=NUM_STEPS, optimizer=OPT, eval_batch_size=EVAL_BATCH)}
  return root, stores, kw


@pytest.fixture(scope="module")
def vmap_runs(problem):
  _, stores, kw = problem
  with count_compilations() as compiled:
    trained = engines.train_runs([engines.RunSpec(seed=s, store=st) for s, st in zip((1, 2, 3), stores)],
                                 engine="vmap", **kw)
  return trained, compiled


@pytest.fixture(scope="module")
def data_parallel_run(problem):
  root, stores, kw = problem
  with count_compilations() as compiled:
    trained = engines.train_runs([engines.RunSpec(seed=1, store=stores[0], work_dir=str(root / "run"))],
                                 engine="data_parallel", **kw)
  return trained, compiled


def _state_bytes() -> int:
  """Bytes of one run's parameters and AdamW state."""
  tx, _ = train.make_optimizer(OPT, NUM_STEPS)
  params = nnx.state(nnx.eval_shape(lambda: _make_model(nnx.Rngs(0))), nnx.Param)
  tree = (params, jax.eval_shape(tx.init, params))
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_a_loop_body_counts_once():
  """Why the engines cost a one-step program: XLA counts a loop's body once, whatever its trip count."""
  a = jnp.ones((64, 64), jnp.float32)
  one = cost.compiled_cost(jax.jit(lambda a: a @ a), a)["flops"]
  ten = cost.compiled_cost(jax.jit(lambda a, n: jax.lax.fori_loop(0, n, lambda _, x: x @ a, a)), a, 10)["flops"]
  assert one == 2 * 64**3
  assert ten == pytest.approx(one, rel=0.01)


def test_step_flops_of_a_linear_head_match_the_analytic_count(vmap_runs):
  # logits = x W + b with x [B, D], W [D, C], trained with xent. Per step and run:
  #   forward  x @ W                 2 B D C
  #   backward dW = x^T @ dlogits    2 B D C
  #   no dx: x is an input, not a parameter, and XLA drops the unused gradient (with it: 6 B D C, 50% more);
  #   the rest (bias, softmax, loss, AdamW on D C + C parameters) is O(B C + D C): ~2% here.
  trained, _ = vmap_runs
  analytic = 4 * B * D * C  # 67.1 MFLOP; XLA counts 68.7.
  for c in trained.cost:
    assert c["step_flops"] == pytest.approx(analytic, rel=0.10)
    # Prediction is the forward alone, on every eval row: 2 N D C.
    assert c["eval_flops"] == pytest.approx(2 * N_EVAL * D * C, rel=0.10)


def test_vmap_gives_every_run_its_cost(vmap_runs):
  trained, _ = vmap_runs
  assert len(trained.cost) == 3
  required = {"train_flops", "eval_flops", "step_flops", "num_steps", "peak_bytes", "wall_s"}
  device_peak = cost.device_peak_bytes() is not None  # GPU/TPU only.
  for c in trained.cost:
    assert required <= set(c) and set(c) <= required | {"device_peak_bytes"}
    assert ("device_peak_bytes" in c) == device_peak
    assert c["num_steps"] == NUM_STEPS
    assert c["train_flops"] == c["step_flops"] * c["num_steps"]
    assert c["wall_s"] >= 0
  # The group's step, split evenly: the same figures for each run.
  assert len({(c["step_flops"], c["eval_flops"], c["peak_bytes"], c["wall_s"]) for c in trained.cost}) == 1


def test_both_engines_count_the_same_step(vmap_runs, data_parallel_run):
  (v, _), (d, _) = vmap_runs, data_parallel_run
  assert len(d.cost) == 1
  assert d.cost[0]["train_flops"] == d.cost[0]["step_flops"] * NUM_STEPS
  assert d.cost[0]["step_flops"] == pytest.approx(v.cost[0]["step_flops"], rel=0.10)
  # data_parallel predicts in padded batches of EVAL_BATCH rows: 3 x 128 rows for 300.
  assert d.cost[0]["eval_flops"] == pytest.approx(2 * 3 * EVAL_BATCH * D * C, rel=0.10)


def test_peak_bytes_hold_the_parameters_and_optimizer_state(vmap_runs, data_parallel_run):
  (v, _), (d, _) = vmap_runs, data_parallel_run
  state = _state_bytes()
  assert state > (D * C) * 4 * 3  # Parameters, Adam's mu and nu.
  assert d.cost[0]["peak_bytes"] >= state  # One device's, holding the replicated state.
  for c in v.cost:
    assert c["peak_bytes"] >= 3 * state  # The whole vmapped step of the three runs.


def test_costing_compiles_nothing_a_run_does_not_compile_anyway(vmap_runs, data_parallel_run):
  (_, v_compiled), (_, d_compiled) = vmap_runs, data_parallel_run
  # data_parallel: the costed step and prediction are the programs the run then calls (jit's cache).
  assert d_compiled["jit(step)"] <= 1 and d_compiled["jit(<lambda>)"] <= 1
  # vmap: the loop over steps, and the one-step program the cost is read from; the prediction once.
  assert v_compiled["jit(run_steps)"] <= 2 and v_compiled["jit(apply)"] <= 1


def test_memory_without_an_analysis_is_zero_and_plan_reads_the_same():
  no_analysis = types.SimpleNamespace(memory_analysis=lambda: None, cost_analysis=lambda: [{"flops": 3.0}])
  assert cost.memory_of(no_analysis)["peak"] == 0
  assert cost.flops_of(no_analysis) == 3.0  # The older list form.
  assert plan.memory_of is cost.memory_of and plan.flops_of is cost.flops_of
