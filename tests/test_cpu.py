"""The batch-in-chains step (w2sg_jax/cpu.py): the same update as the plain step, chosen per platform."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import tiny
from w2sg_jax import config as schema
from w2sg_jax import cpu, losses, parallel, train
from w2sg_jax.models import Bert, BertConfig, SequenceClassifier

TINY_BERT = BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16)


def _batches(kind: str, batch: int = 16, steps: int = 3):
  """Batches with a masked-out example (and, for BERT, padded tokens), so the masked mean is exercised."""
  rng = np.random.default_rng(0)
  x, _ = tiny.data(num_examples=batch * steps)
  out = []
  for s in range(steps):
    if kind == "bert":
      seq = 12
      ids = rng.integers(1, TINY_BERT.vocab_size, (batch, seq)).astype(np.int32)
      attn = np.ones((batch, seq), np.int32)
      attn[::3, seq // 2:] = 0
      inputs = {"input_ids_BxT": ids, "attention_mask_BxT": attn}
    else:
      inputs = {"features": x[s * batch:(s + 1) * batch]}
    example_mask = np.ones(batch, np.float32)
    example_mask[5] = 0.0  # A padding row: it must not count, chained or not.
    num_classes = 2 if kind == "bert" else 3
    out.append({"inputs": inputs, "targets": rng.dirichlet([0.7] * num_classes, batch).astype(np.float32),
                "mask": example_mask})
  return out


def _train(kind: str, num_chains, loss: str, num_devices: int, opt=None, **loss_kw):
  """Parameters and metrics after 3 steps on a ``num_devices`` data mesh."""
  mesh = parallel.make_mesh(num_devices)
  if kind == "bert":
    model = SequenceClassifier(Bert(TINY_BERT, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    k = model.head.out.kernel
    k[...] = 0.5 * jax.random.normal(jax.random.key(2), k.shape)
  else:
    model = tiny.TinyMLP(rngs=nnx.Rngs(0))
  apply_fn, params, frozen = train.split_model(model)
  tx, schedule = train.make_optimizer(opt or tiny.OPT, 4)
  state = parallel.replicate(train.init_state(params, frozen, tx, 0), mesh)
  step = jax.jit(functools.partial(train.train_step, apply_fn=apply_fn, loss_fn=losses.get(loss, **loss_kw),
                                   tx=tx, schedule=schedule, num_steps=4, num_chains=num_chains),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))
  metrics = []
  for b in _batches(kind):
    state, m = step(state, parallel.to_global(b, mesh))
    metrics.append(jax.device_get(m))
  return jax.tree.leaves(jax.device_get(state.params)), metrics


def _assert_same(a, b):
  (pa, ma), (pb, mb) = a, b
  for x, y in zip(pa, pb):
    np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
  for x, y in zip(ma, mb):
    assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
    assert x["target_agreement"] == pytest.approx(y["target_agreement"], abs=1e-7)


@pytest.mark.parametrize("num_devices", [1, 8])
@pytest.mark.parametrize("loss,loss_kw", [("xent", {}), ("js", {}), ("logconf", {"confidence": 0.75, "warmup": 0.2}),
                                          ("js", {"confidence": 0.5, "warmup": 0.0})],
                         ids=["xent", "js", "logconf", "js+conf"])
def test_chained_step_equals_plain_step(loss, loss_kw, num_devices):
  """AdamW, params after 3 steps to 1e-6; the confidence term's batch quantile sees the whole batch."""
  assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (see tests/conftest.py)"
  _assert_same(_train("mlp", 1, loss, num_devices, **loss_kw), _train("mlp", 2, loss, num_devices, **loss_kw))


@pytest.mark.slow
def test_chained_transformer_step_equals_plain_step():
  """A BERT classifier with padded tokens, 4 chains on 8 devices, every parameter to 1e-6.

  SGD, not Adam: the attention key biases get a gradient that is zero in
  exact arithmetic (a softmax ignores a constant added to all of a query's
  scores), so what reaches them is float noise, which Adam would normalise
  into full-size steps under any change in the order of float additions.
  """
  sgd = schema.OptimizerConfig(name="sgd", learning_rate=0.1, schedule="constant", momentum=0.9)
  _assert_same(_train("bert", 1, "logconf", 8, opt=sgd, confidence=0.75, warmup=0.2),
               _train("bert", 4, "logconf", 8, opt=sgd, confidence=0.75, warmup=0.2))


def test_chained_restores_row_order_and_rejects_uneven_batches():
  apply_fn, params, frozen = train.split_model(tiny.TinyMLP(rngs=nnx.Rngs(0)))
  x, _ = tiny.data()
  feats = jnp.asarray(x[:32])
  plain = apply_fn(params, frozen, {"features": feats}, None)
  four = cpu.chained(apply_fn, 4, argnums=(2,))(params, frozen, {"features": feats}, None)
  np.testing.assert_allclose(np.asarray(four), np.asarray(plain), atol=1e-6)
  with pytest.raises(ValueError, match="does not split into 3 chains"):
    cpu.chained(apply_fn, 3, argnums=(2,))(params, frozen, {"features": feats}, None)
  with pytest.raises(ValueError, match="does not split into 3 chains"):
    cpu.resolve_num_chains(3, 32, params, {"features": feats})
  with pytest.raises(ValueError, match="num_chains=0"):
    cpu.resolve_num_chains(0, 32, params, {"features": feats})


def test_chained_outputs_may_be_pytrees():
  fn = lambda w, xs: {"a": xs["x"] @ w, "b": xs["x"].sum(-1)}
  w = jnp.arange(12.0).reshape(4, 3)
  xs = {"x": jnp.arange(32.0).reshape(8, 4)}
  want, got = fn(w, xs), cpu.chained(fn, 2, argnums=(1,))(w, xs)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]))


def test_default_num_chains_per_platform_and_size():
  big = 1e12
  assert cpu.default_num_chains(32, forward_flops=big, platform="cpu") == cpu.CPU_CHAINS
  for accel in ("gpu", "tpu"):
    assert cpu.default_num_chains(32, forward_flops=big, platform=accel) == 1
  # Small work (a head on cached features): no split.
  assert cpu.default_num_chains(64, forward_flops=1e7, platform="cpu") == 1
  # Enough for two chains, not four.
  assert cpu.default_num_chains(32, forward_flops=2.5 * cpu.MIN_CHAIN_FLOPS, platform="cpu") == 2
  # Uneven batches fall back to fewer chains; every device keeps an equal share per chain.
  assert cpu.default_num_chains(6, forward_flops=big, platform="cpu") == 2
  assert cpu.default_num_chains(7, forward_flops=big, platform="cpu") == 1
  assert cpu.default_num_chains(16, forward_flops=big, platform="cpu", num_devices=8) == 2
  assert cpu.default_num_chains(8, forward_flops=big, platform="cpu", num_devices=8) == 1
  assert cpu.default_num_chains(32, forward_flops=big, platform="cpu", max_chains=8) == 8


def test_forward_flops_estimate_reads_shapes_only():
  params = {"w": jax.ShapeDtypeStruct((10, 20), jnp.float32), "b": jax.ShapeDtypeStruct((20,), jnp.float32)}
  tokens = {"input_ids_BxT": jax.ShapeDtypeStruct((4, 64), jnp.int32)}
  features = {"features": jax.ShapeDtypeStruct((4, 384), jnp.float32)}
  assert cpu.estimate_forward_flops(params, tokens, 4) == 2.0 * 220 * 64 * 4
  assert cpu.estimate_forward_flops(params, features, 4) == 2.0 * 220 * 4


def test_default_step_chains_a_large_model_only():
  """``num_chains=None`` chains the MiniLM-sized step on CPU and leaves a head alone."""
  head = {"w": jnp.zeros((384, 2))}
  feats = {"features": jnp.zeros((64, 384))}
  assert cpu.resolve_num_chains(None, 64, head, feats) == 1
  minilm = {"w": jax.ShapeDtypeStruct((22_000_000,), jnp.float32)}
  tokens = {"input_ids_BxT": jax.ShapeDtypeStruct((32, 64), jnp.int32)}
  expected = cpu.default_num_chains(32, forward_flops=1e12, num_devices=len(jax.devices()))
  assert cpu.resolve_num_chains(None, 32, minilm, tokens) == expected > 1
