"""State shardings: replicated and fsdp give the 1-device result on 8 simulated devices, fsdp really shards,
and the trainer traces under the mesh (activations pinned to the data axis)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from w2sg_jax import config as schema
from w2sg_jax import losses, parallel, train
from w2sg_jax.models import GPT2, GPT2Config, SequenceClassifier

CFG = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=16)
BATCH, T, C = 16, 16, 3


def make_model(rngs, remat="none"):
  return SequenceClassifier(GPT2(CFG, remat=remat, rngs=rngs), C, hidden_sizes=(24,), rngs=rngs)


def batches(num_steps):
  rng = np.random.default_rng(0)
  for _ in range(num_steps):
    mask = np.ones((BATCH, T), np.int32)
    mask[::3, 11:] = 0  # Some padded rows.
    logits = rng.normal(size=(BATCH, C))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    yield {
        "inputs": {"input_ids_BxT": rng.integers(0, CFG.vocab_size, (BATCH, T)).astype(np.int32),
                   "attention_mask_BxT": mask},
        "targets": probs.astype(np.float32),
        "mask": np.ones(BATCH, np.float32),
    }


def run(num_devices, mode, num_steps=4, remat="none"):
  """Trains a small GPT-2 classifier with ``train.Trainer``; the state is born in its sharding, the step jitted with it."""
  mesh = parallel.make_mesh(num_devices)
  opt = schema.OptimizerConfig(name="adamw", learning_rate=3e-3, weight_decay=1e-4, grad_clip=1.0, accum_steps=2)
  tx, schedule = train.make_optimizer(opt, num_steps)
  trainable = nnx.Param
  graphdef_model = nnx.eval_shape(lambda: make_model(nnx.Rngs(params=0), remat))
  apply_fn, _, _ = train.split_model(graphdef_model, trainable)

  def init():
    _, params, frozen = nnx.split(make_model(nnx.Rngs(params=0), remat), trainable, ...)
    return train.init_state(params, frozen, tx, 0)

  abstract = jax.eval_shape(init)
  resolved = parallel.resolve_sharding(mode, abstract, mesh, device_memory_bytes=1 << 20)
  shardings = parallel.state_shardings(abstract, mesh, resolved)
  state = jax.jit(init, out_shardings=shardings)()
  born = state

  trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses.get("js"), tx=tx, schedule=schedule,
                          num_steps=num_steps, mesh=mesh, state_sharding=shardings)
  born_specs = jax.tree.map(lambda x: x.sharding.spec, born)
  init_params = jax.tree.map(np.asarray, born.params)  # Copied before the donating step.
  metrics = None
  for batch in batches(num_steps):
    state, metrics = trainer.step(state, batch)
  assert trainer.num_traces == 1
  return state, metrics, resolved, born_specs, init_params


@pytest.fixture(scope="module")
def one_device():
  return run(1, "replicated")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_eight_devices_match_one_device(mode, one_device):
  assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (see tests/conftest.py)"
  state1, metrics1, _, _, init_params = one_device
  state8, metrics8, resolved, _, _ = run(8, mode)
  assert resolved == mode
  for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state8)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  np.testing.assert_allclose(float(metrics1["loss"]), float(metrics8["loss"]), atol=1e-5)
  # Training moved the parameters, so the equality above is not trivial.
  moved = max(float(np.max(np.abs(a - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(init_params), jax.tree.leaves(state1.params)))
  assert moved > 1e-3


@pytest.mark.slow
def test_fsdp_with_full_remat_matches_one_device(one_device):
  state1 = one_device[0]
  state8 = run(8, "fsdp", remat="full")[0]
  for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state8)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fsdp_leaves_are_sharded_from_birth():
  state, _, _, born_specs, _ = run(8, "fsdp", num_steps=1)
  sharded = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    spec = leaf.sharding.spec
    assert jax.tree_util.tree_leaves_with_path(born_specs)  # (specs were recorded before any step)
    divisible = [d for d in leaf.shape if d % 8 == 0 and d >= 8]
    if jnp.issubdtype(leaf.dtype, jnp.floating) and divisible:
      assert parallel.DATA_AXIS in tuple(spec), (jax.tree_util.keystr(path), spec)
      axis = tuple(spec).index(parallel.DATA_AXIS)
      assert leaf.shape[axis] == max(divisible)
      assert leaf.addressable_shards[0].data.shape[axis] == leaf.shape[axis] // 8
      sharded += 1
    else:
      assert spec == P() or all(s is None for s in spec), (jax.tree_util.keystr(path), spec)
  assert sharded > 10  # Kernels, embeddings, biases and both Adam moments of each.
  for path, spec in jax.tree_util.tree_leaves_with_path(born_specs, is_leaf=lambda x: isinstance(x, P)):
    leaf = next(l for p, l in jax.tree_util.tree_leaves_with_path(state) if p == path)
    assert spec == leaf.sharding.spec  # Born in the sharding it keeps.


def _constraints(lowered) -> int:
  """Sharding constraints in a lowered program (Shardy's op, or the GSPMD custom call)."""
  return len(re.findall(r"sharding_constraint|custom_call @Sharding", lowered.as_text()))


@pytest.mark.parametrize("mode", ["replicated", pytest.param("fsdp", marks=pytest.mark.slow)])  # fsdp: slow suite.
def test_trainer_traces_under_the_mesh(mode):
  """The lowered step and prediction carry the models' constrain_batch: one per block, plus the embeddings."""
  mesh = parallel.make_mesh(8)
  tx, schedule = train.make_optimizer(schema.OptimizerConfig(name="adamw", learning_rate=1e-3), 4)
  apply_fn, state, shardings = train.create_state(lambda rngs: make_model(rngs), tx=tx, seed=0, mesh=mesh,
                                                  sharding=mode)
  trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses.get("js"), tx=tx, schedule=schedule, num_steps=4,
                          mesh=mesh, state_sharding=shardings)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), next(batches(1)))
  assert _constraints(trainer.lower_predict(abstract, batch["inputs"])) == CFG.n_layer + 1
  assert _constraints(trainer.lower_step(abstract, batch)) >= CFG.n_layer + 1  # Forward, and its transpose.
  # Traced outside the mesh, the same step has none: constrain_batch is a no-op there.
  rep = parallel.replicated(mesh)
  bare = jax.jit(lambda p, f, x: apply_fn(p, f, x, None), in_shardings=(rep, rep, parallel.batch_sharding(mesh)))
  assert _constraints(bare.lower(abstract.params, abstract.frozen, batch["inputs"])) == 0


# ------------------------------------------------------------------- units


def test_fsdp_spec_picks_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((64, 32), 8) == P("data")
  assert parallel.fsdp_spec((32, 64), 8) == P(None, "data")
  assert parallel.fsdp_spec((50257, 768), 8) == P(None, "data")  # The GPT-2 vocabulary is odd.
  assert parallel.fsdp_spec((16, 16), 8) == P("data")  # Ties: the first.
  assert parallel.fsdp_spec((3, 5), 8) == P()
  assert parallel.fsdp_spec((), 8) == P()
  assert parallel.fsdp_spec((4,), 8) == P()
  assert parallel.fsdp_spec((64, 32), 1) == P()


def test_state_shardings_modes_and_errors():
  mesh = parallel.make_mesh(8)
  tree = {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32),
          "key": jax.ShapeDtypeStruct((8,), jnp.uint32)}
  rep = parallel.state_shardings(tree, mesh, "replicated")
  assert all(s.spec == P() for s in jax.tree.leaves(rep))
  fsdp = parallel.state_shardings(tree, mesh, "fsdp")
  assert fsdp["w"].spec == P("data") and fsdp["step"].spec == P() and fsdp["key"].spec == P()
  with pytest.raises(ValueError, match="'replicated', 'fsdp'"):
    parallel.state_shardings(tree, mesh, "auto")  # Resolve it first.
  with pytest.raises(ValueError, match="not a sharding mode"):
    parallel.state_shardings(tree, mesh, "zero3")


def test_resolve_sharding():
  mesh8, mesh1 = parallel.make_mesh(8), parallel.make_mesh(1)
  state = {"params": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}  # 4 MiB
  assert parallel.resolve_sharding("auto", state, mesh8, device_memory_bytes=4 << 20) == "fsdp"
  assert parallel.resolve_sharding("auto", state, mesh8, device_memory_bytes=1 << 30) == "replicated"
  assert parallel.resolve_sharding("auto", state, mesh1, device_memory_bytes=1) == "replicated"
  assert parallel.resolve_sharding("auto", state, mesh8) == "replicated"  # CPU: no bytes_limit, taken to fit.
  assert parallel.resolve_sharding("fsdp", state, mesh8) == "fsdp"
  assert parallel.resolve_sharding("replicated", state, mesh8, device_memory_bytes=1) == "replicated"
  with pytest.raises(ValueError, match="not a sharding mode.*'auto', 'replicated', 'fsdp'"):
    parallel.resolve_sharding("FSDP", state, mesh8)
  # The gradients count too: a TrainState's params are added once more.
  ts = train.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=state, frozen={}, opt_state={},
                        rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  assert parallel.resolve_sharding("auto", ts, mesh8, device_memory_bytes=int(7.5 * 2**20 / 0.6)) == "fsdp"
  assert parallel.resolve_sharding("auto", ts, mesh8, device_memory_bytes=int(8.5 * 2**20 / 0.6)) == "replicated"


def test_constrain_batch_is_a_no_op_outside_a_mesh():
  x = jnp.ones((16, 4))
  assert parallel.constrain_batch(x) is x
  mesh = parallel.make_mesh(8)
  with jax.set_mesh(mesh):
    y = jax.jit(parallel.constrain_batch)(x)
    z = jax.jit(parallel.constrain_batch)(jnp.ones((3, 4)))  # Not divisible: left alone.
  assert y.sharding.spec == P("data")
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  assert z.shape == (3, 4)
