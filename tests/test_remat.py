"""Rematerialisation (strong.remat): the same values and gradients as none, with recomputation in the program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2sg_jax.models import Bert, BertConfig, GPT2, GPT2Config, RewardModel
from w2sg_jax.models import remat as remat_lib

GPT2_CFG = GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, n_positions=16)
BERT_CFG = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=16)
ENCODERS = {"gpt2": (GPT2, GPT2_CFG), "bert": (Bert, BERT_CFG)}


def inputs():
  ids = jax.random.randint(jax.random.key(1), (4, 16), 0, 100)
  mask = jnp.ones((4, 16), jnp.int32).at[1, 10:].set(0).at[3, 5:].set(0)
  return ids, mask


def value_and_grads(kind, remat, dtype=jnp.float32):
  cls, cfg = ENCODERS[kind]
  model = RewardModel(cls(cfg, remat=remat, dtype=dtype, rngs=nnx.Rngs(0)), hidden_sizes=(8,), rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model, nnx.Param)
  ids, mask = inputs()

  def loss(params):
    m = nnx.merge(graphdef, params)
    hidden = m.encoder(ids, mask).astype(jnp.float32)
    return jnp.mean(jnp.tanh(hidden)) + jnp.mean(m.rewards(ids, mask) ** 2)

  fn = jax.jit(jax.value_and_grad(loss))
  value, grads = fn(params)
  return value, grads, jax.make_jaxpr(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.slow  # The remat modes stay in the fast suite through test_remat_llm.py's tiny Llama.
@pytest.mark.parametrize("remat", ["block", "full"])
def test_remat_equals_none(kind, remat):
  v0, g0, _ = value_and_grads(kind, "none")
  v1, g1, jaxpr = value_and_grads(kind, remat)
  np.testing.assert_allclose(float(v1), float(v0), atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)
  # Every block is checkpointed in the program: one remat per layer.
  text = str(jaxpr)
  assert text.count("checkpoint[") + text.count("remat") >= 3, "no rematerialisation in the traced program"


@pytest.mark.slow
def test_none_has_no_checkpoint():
  _, _, jaxpr = value_and_grads("gpt2", "none")
  assert "checkpoint[" not in str(jaxpr) and "remat" not in str(jaxpr)


@pytest.mark.slow
def test_remat_in_bfloat16_agrees_to_bfloat16_precision():
  # Recomputed bf16 ops may be fused differently, so results agree to bf16 rounding, not bit for bit.
  v0, g0, _ = value_and_grads("gpt2", "none", jnp.bfloat16)
  v1, g1, _ = value_and_grads("gpt2", "full", jnp.bfloat16)
  np.testing.assert_allclose(float(v1), float(v0), atol=1e-3, rtol=0)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    scale = float(np.max(np.abs(np.asarray(a, np.float32)))) + 1e-6
    np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), atol=2e-2 * scale, rtol=0)


@pytest.mark.slow
def test_full_remat_saves_only_block_inputs():
  """What the backward pass keeps from the forward: per block, its input instead of its intermediates."""
  from jax.ad_checkpoint import print_saved_residuals  # pylint: disable=g-import-not-at-top
  import contextlib
  import io

  def residuals(remat):
    model = GPT2(GPT2_CFG, remat=remat, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    ids, mask = inputs()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
      print_saved_residuals(lambda p: jnp.sum(nnx.merge(graphdef, p)(ids, mask)), params)
    return [line for line in buf.getvalue().splitlines() if "from the argument" not in line]

  none, full = residuals("none"), residuals("full")
  assert len(full) < len(none) / 2, (len(full), len(none))


def test_unknown_mode_and_set_remat():
  with pytest.raises(ValueError, match="'none', 'block', 'full'"):
    GPT2(GPT2_CFG, remat="sometimes", rngs=nnx.Rngs(0))
  model = RewardModel(Bert(BERT_CFG, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  assert remat_lib.set_remat(model, "block") == 1 and model.encoder.remat == "block"
  with pytest.raises(ValueError, match="not a rematerialisation mode"):
    remat_lib.set_remat(model, "all")
