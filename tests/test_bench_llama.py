"""The Llama row of the training-step benchmark (w2sg_jax.bench.llama): counts, the JAX step, parity with transformers."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from w2sg_jax.bench import llama as llama_bench
from w2sg_jax.bench import step
from w2sg_jax.models import Llama, LlamaConfig, SequenceClassifier

# Smaller than the --quick row: two layers so that a block's output feeds another.
SMALL = dataclasses.replace(llama_bench.QUICK_CONFIG, vocab_size=256, hidden_size=32, intermediate_size=96,
                            num_hidden_layers=2)


def _case(config: LlamaConfig = SMALL, batch: int = 4, seq: int = 12) -> step.StepCase:
  return step.StepCase(**{**llama_bench.spec(quick=True), "config": config, "batch": batch, "seq": seq})


def _num_params(config: LlamaConfig) -> int:
  model = nnx.eval_shape(lambda: SequenceClassifier(Llama(config, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_spec_is_a_real_shaped_llama():
  for quick in (True, False):
    case = step.StepCase(**llama_bench.spec(quick))
    assert case.arch == "llama" and case.name == "llama"
    c = case.config
    assert c.num_kv_heads < c.num_attention_heads  # Grouped-query attention.
    assert c.rope.rope_type == "llama3" and c.rope.theta == 500000.0
  full = step.StepCase(**llama_bench.spec(False))
  assert (full.batch, full.seq) == (8, 128)
  assert (full.config.hidden_size, full.config.num_hidden_layers, full.config.vocab_size) == (512, 4, 32000)
  assert [c.name for c in step.cases(True)][-1] == "llama" and [c.name for c in step.cases(False)][-1] == "llama"


@pytest.mark.parametrize("config", [SMALL, llama_bench.QUICK_CONFIG, llama_bench.BENCH_CONFIG],
                         ids=["small", "quick", "bench"])
def test_param_count_matches_the_model(config):
  assert llama_bench.param_count(config, 2) == _num_params(config)


def test_param_count_of_the_bench_shape_by_hand():
  d, f, v, layers, q, kv = 512, 1408, 32000, 4, 8 * 64, 2 * 64
  per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
  expected = v * d + layers * per_layer + d + d * 2 + 2
  assert llama_bench.param_count(llama_bench.BENCH_CONFIG, 2) == expected == 27_661_826


@pytest.fixture(scope="module")
def stepped():
  """One compiled JAX step of the SMALL classifier, run once: (case, model, batch, step, params before)."""
  case = _case()
  model, source = step.build_jax_model(case)
  assert isinstance(model.encoder, Llama) and model.pooling == "last" and source == "random init"
  batch = step.make_batch(case)
  js = step.make_jax_step(model, batch, num_chains=1)
  before = jax.tree.map(np.array, js.state.params)
  js()
  return case, model, batch, js, before


@pytest.mark.slow
def test_analytic_flops_against_xla(stepped):
  """The closed form against XLA's count of the compiled step (which adds AdamW and elementwise work)."""
  case, _, _, js, _ = stepped
  analytic = llama_bench.analytic_flops(case.config, case.batch, case.seq, step.NUM_CLASSES)
  assert step.analytic_flops(case) == analytic
  if js.flops:  # Cost analysis is best-effort on some backends.
    assert 0.5 * js.flops < analytic < 1.5 * js.flops


def test_hf_config_reads_back():
  for c in (SMALL, llama_bench.BENCH_CONFIG):
    assert LlamaConfig.from_hf(llama_bench.hf_config(c)) == dataclasses.replace(c, head_dim=c.head_size)


@pytest.mark.slow
def test_jax_step_runs_and_its_loss_is_finite(stepped):
  _, _, _, js, before = stepped
  assert np.isfinite(float(js.last_metrics["loss"]))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(b) - a))), before, js.state.params))
  assert max(moved) > 0  # The step updated the parameters.


def test_missing_reference(monkeypatch):
  assert llama_bench.missing_reference("gpt2") is None
  monkeypatch.setitem(sys.modules, "transformers", None)  # Makes `import transformers` fail.
  assert "transformers not installed" in llama_bench.missing_reference("llama")


needs_reference = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="torch and transformers are optional (pip install -e '.[bench]')",
)


@needs_reference
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_forwards_agree_with_transformers(attn, side):
  case = _case()
  model, _ = step.build_jax_model(case)
  batch = step.make_batch(case)
  if side == "left":  # Move each row's padding to the front: positions come from the mask on both sides.
    m = batch["attention_mask"]
    order = np.argsort(m, axis=1, kind="stable")
    batch = {**batch, "input_ids": np.take_along_axis(batch["input_ids"], order, 1),
             "attention_mask": np.take_along_axis(m, order, 1)}
  tm = llama_bench.torch_classifier(model, attn_implementation=attn)
  assert tm.model.config._attn_implementation == attn
  assert llama_bench.forward_max_abs_diff(model, tm, batch) < 1e-4


@pytest.mark.slow
@needs_reference
def test_first_step_losses_agree_with_transformers(stepped):
  import torch

  from w2sg_jax.bench import torch_ref

  _, model, batch, js, _ = stepped
  tm = llama_bench.torch_classifier(model)  # The model's own arrays: the step updated a private copy.
  opt = step.OPT
  torch_step, _ = torch_ref.make_step(tm, lr=opt.learning_rate, weight_decay=opt.weight_decay, grad_clip=opt.grad_clip)
  loss = torch_step(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]),
                    torch.from_numpy(batch["targets"]))
  np.testing.assert_allclose(float(loss), float(js.last_metrics["loss"]), rtol=1e-5, atol=1e-7)
