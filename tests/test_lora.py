"""LoRA adapters (w2sg_jax.models.lora) on the tiny Llama/NeoX/GPT-2/BERT fixtures."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jax.sharding import PartitionSpec as P

from w2sg_jax import config as schema
from w2sg_jax import parallel, train
from w2sg_jax.models import (
    GPT2,
    Bert,
    BertConfig,
    GPT2Config,
    LoRAConfig,
    LoRAParam,
    RewardModel,
    SequenceClassifier,
    apply_lora,
    load_pretrained,
    lora_trainable_filter,
    merge_lora,
    split_lora_model,
)
from w2sg_jax.models.lora import lora_modules, set_lora_dropout

FIXTURES = Path(__file__).parent / "fixtures" / "models"

_fwd = nnx.jit(lambda m, ids, mask: m(ids, mask))


def _xent(logits, targets, *, where=None, progress=None):
  del where, progress
  return optax.softmax_cross_entropy(logits, targets)


@pytest.fixture(scope="module")
def batch():
  ref = np.load(FIXTURES / "tiny_llama" / "reference.npz")
  ids, mask = ref["input_ids_left"][:4, -16:], ref["attention_mask_left"][:4, -16:]
  targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
  return {"inputs": {"input_ids_BxT": ids, "attention_mask_BxT": mask},
          "targets": targets, "mask": np.ones(4, np.float32)}


def _classifier(dtype=jnp.float32, seed=0, num_layers=1):
  """The tiny Llama (first layer only unless asked: it compiles faster) and a 3-class head."""
  encoder, _ = load_pretrained(FIXTURES / "tiny_llama", dtype=dtype, num_layers=num_layers)
  clf = SequenceClassifier(encoder, 3, rngs=nnx.Rngs(seed))
  # The head's output layer starts at zero, which would block every gradient
  # into the encoder; give it weights.
  k = clf.head.out.kernel
  k.set_value(jax.random.normal(jax.random.key(seed + 1), k.shape))
  return clf


def _flat(model, filt=nnx.Param):
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, filt))}


def _steps(model, batch, filt, n, lr=1e-2, split=train.split_model):
  """n Adam steps through train.train_step; returns the updated model."""
  apply_fn, params, frozen = split(model, filt)
  tx = optax.adam(lr)
  state = train.init_state(params, frozen, tx, seed=0)
  step = jax.jit(lambda s, b: train.train_step(
      s, b, apply_fn=apply_fn, loss_fn=_xent, tx=tx, schedule=optax.constant_schedule(lr), num_steps=n))
  for _ in range(n):
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  nnx.update(model, state.params)
  return model


# ------------------------------------------------------------- wrapping ----


def test_fresh_adapters_leave_the_model_unchanged_exactly(batch):
  clf = _classifier(num_layers=2)
  ids, mask = batch["inputs"].values()
  before = np.asarray(_fwd(clf, ids, mask))
  apply_lora(clf, LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(1))
  wrapped = lora_modules(clf)
  assert len(wrapped) == 7 * 2  # q, k, v, o, gate, up, down in each of 2 layers
  assert all(np.any(np.asarray(m.lora_a[...]) != 0) for _, m in wrapped)
  np.testing.assert_array_equal(_fwd(clf, ids, mask), before)


def _wrapped_names(module, spec=LoRAConfig()):
  """Paths wrapped in ``module`` (built abstractly when it is a builder)."""
  if isinstance(module, nnx.Module):
    out = apply_lora(module, spec, rngs=nnx.Rngs(0))
  else:
    out = nnx.eval_shape(lambda: apply_lora(module(), spec, rngs=nnx.Rngs(0)))
  return sorted("/".join(map(str, p)) for p, _ in lora_modules(out))


def test_default_targets_per_family():
  llama, _ = load_pretrained(FIXTURES / "tiny_llama")
  names = _wrapped_names(llama)
  assert names[:7] == [f"layers/0/{m}" for m in (
      "mlp/down_proj", "mlp/gate_proj", "mlp/up_proj", "self_attn/k_proj",
      "self_attn/o_proj", "self_attn/q_proj", "self_attn/v_proj")]
  neox, _ = load_pretrained(FIXTURES / "tiny_neox")
  assert _wrapped_names(neox)[:4] == [
      "layers/0/attention/dense", "layers/0/attention/query_key_value",
      "layers/0/mlp/dense_4h_to_h", "layers/0/mlp/dense_h_to_4h"]
  # GPT-2 names its projections after the checkpoint's (c_proj appears twice).
  gpt2 = lambda: GPT2(GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=8), rngs=nnx.Rngs(0))
  assert _wrapped_names(gpt2) == ["blocks/0/attn_proj", "blocks/0/c_attn", "blocks/0/c_fc", "blocks/0/mlp_proj"]
  bert = lambda: Bert(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=8), rngs=nnx.Rngs(0))
  assert len(_wrapped_names(bert)) == 6  # query, key, value and the three "dense"
  assert _wrapped_names(gpt2, LoRAConfig(target_modules=("c_attn",))) == ["blocks/0/c_attn"]


def test_bad_specs_are_errors():
  llama, _ = load_pretrained(FIXTURES / "tiny_llama")
  with pytest.raises(ValueError, match=r"\['qkv'\] match no linear layer.*'q_proj'"):
    apply_lora(llama, LoRAConfig(target_modules=("q_proj", "qkv")), rngs=nnx.Rngs(0))
  apply_lora(llama, LoRAConfig(target_modules=("q_proj",)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="already has LoRA adapters"):
    apply_lora(llama, LoRAConfig(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="rank=0"):
    LoRAConfig(rank=0)
  with pytest.raises(ValueError, match="dropout=1.0"):
    LoRAConfig(dropout=1.0)
  with pytest.raises(ValueError, match="is a string"):
    LoRAConfig(target_modules="q_proj")
  with pytest.raises(ValueError, match=r"Unknown LoRA settings \['r'\]"):
    LoRAConfig.from_dict({"r": 4})
  assert LoRAConfig.from_dict({"rank": 4, "alpha": 8, "target_modules": ["q_proj"]}) == LoRAConfig(
      rank=4, alpha=8, target_modules=("q_proj",))
  from w2sg_jax.models import MLPHead  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match="pass LoRAConfig\\(target_modules"):
    apply_lora(MLPHead(4, (), 2, rngs=nnx.Rngs(0)), LoRAConfig(), rngs=nnx.Rngs(0))


# ------------------------------------------------------------- training ----


def test_a_step_trains_only_adapters_and_head(batch):
  clf = apply_lora(_classifier(num_layers=2), LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(1))
  filt = lora_trainable_filter()
  before = _flat(clf)
  trainable = set(_flat(clf, filt))
  adapters = {k for k in before if k[-1] in ("lora_a", "lora_b")}
  head = {k for k in before if k[0] == "head"}
  assert trainable == adapters | head and len(adapters) == 28
  # Two steps: B starts at 0, so A's gradient is 0 until B has moved.
  _steps(clf, batch, filt, n=2)
  after = _flat(clf)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed == adapters | head


def test_trainable_parameters_are_a_small_fraction():
  clf = apply_lora(_classifier(), LoRAConfig(rank=2, alpha=4), rngs=nnx.Rngs(1))
  count = lambda filt: sum(v.size for v in _flat(clf, filt).values())
  trained, total = count(lora_trainable_filter()), count(nnx.Param)
  # r * (in + out) summed over q, k, v, o, gate, up, down: 2 * 512 in the one layer.
  assert count(LoRAParam) == 2 * 512
  assert trained == count(LoRAParam) + count(lambda p, x: p[0] == "head")
  # A few percent here, where width 32 is tiny next to rank 2; rank 8 on
  # Llama-3-8B trains 21M of 8B parameters (0.3%).
  assert trained / total < 0.08, (trained, total)


@pytest.mark.slow
def test_merge_gives_the_same_logits(batch):
  clf = apply_lora(_classifier(), LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(1))
  _steps(clf, batch, lora_trainable_filter(), n=3, lr=5e-2)
  ids, mask = batch["inputs"].values()
  base = _classifier()
  trained = np.asarray(_fwd(clf, ids, mask))
  assert np.abs(trained - np.asarray(_fwd(base, ids, mask))).max() > 1e-3  # adapters matter
  merge_lora(clf)
  assert not lora_modules(clf) and not _flat(clf, LoRAParam)
  assert isinstance(clf.encoder.layers[0].self_attn.q_proj, nnx.Linear)
  np.testing.assert_allclose(_fwd(clf, ids, mask), trained, atol=1e-5)


def test_bf16_base_keeps_float32_adapters(batch):
  clf = apply_lora(_classifier(dtype=jnp.bfloat16), LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(1))
  params = _flat(clf)
  for k, v in params.items():
    want = jnp.float32 if k[-1] in ("lora_a", "lora_b") or k[0] == "head" else jnp.bfloat16
    assert v.dtype == want, k
  frozen_before = _flat(clf, lambda p, x: isinstance(x, nnx.Param) and not lora_trainable_filter()(p, x))
  _steps(clf, batch, lora_trainable_filter(), n=2)
  after = _flat(clf)
  assert all(after[k].dtype == params[k].dtype for k in params)
  assert all(np.array_equal(after[k], v) for k, v in frozen_before.items())
  assert any(not np.array_equal(after[k], params[k]) for k in params if k[-1] == "lora_a")


class _PairRewardModel(RewardModel):
  def __call__(self, a_ids, a_mask, b_ids, b_mask):
    return self.pair_logits(a_ids, a_mask, b_ids, b_mask)


@pytest.mark.slow
def test_reward_model_around_a_lora_neox(batch):
  encoder, _ = load_pretrained(FIXTURES / "tiny_neox")
  rm = _PairRewardModel(encoder, rngs=nnx.Rngs(0))
  rm.head.out.kernel.set_value(jax.random.normal(jax.random.key(0), rm.head.out.kernel.shape))
  apply_lora(rm, LoRAConfig(rank=2, alpha=2), rngs=nnx.Rngs(1))
  assert len(lora_modules(rm)) == 4 * 2
  ids, mask = batch["inputs"].values()
  pair = {"inputs": {"a_ids": ids, "a_mask": mask, "b_ids": ids[::-1], "b_mask": mask[::-1]},
          "targets": np.eye(2, dtype=np.float32)[[1, 0, 1, 0]], "mask": np.ones(4, np.float32)}
  # The gradients themselves, not Adam's updates: Adam divides by sqrt(v), so a
  # gradient that is zero in real arithmetic but 1e-9 after rounding would move
  # a parameter by a full step, and whether it does depends on the rounding order.
  apply_fn, params, frozen = train.split_model(rm, lora_trainable_filter())
  loss = lambda p: _xent(apply_fn(p, frozen, pair["inputs"], None), pair["targets"]).mean()
  grads = {k: np.abs(np.asarray(v[...])).max() for k, v in nnx.to_flat_state(jax.grad(loss)(params))}
  trainable = {k for k in _flat(rm) if k[0] == "head" or k[-1] in ("lora_a", "lora_b")}
  assert set(grads) == trainable  # Only the adapters and the head train; the base is frozen.
  scale = max(grads.values())
  # The head's output bias cancels in r(a) - r(b): its gradient is rounding noise.
  bias = ("head", "out", "bias")
  assert grads[bias] <= 1e-5 * scale, grads[bias]
  # lora_b starts at zero, so lora_a's gradient is exactly zero at the first step;
  # every other trainable weight gets a real gradient.
  assert all(grads[k] > 1e-4 * scale for k in trainable - {bias} if k[-1] != "lora_a")
  before = _flat(rm)
  _steps(rm, pair, lora_trainable_filter(), n=2)
  after = _flat(rm)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  # After two steps every adapter has moved, and nothing outside adapters and head.
  assert trainable - {bias} <= changed <= trainable


# -------------------------------------------------------------- dropout ----


@pytest.mark.slow
def test_dropout_only_with_a_key(batch):
  clf = apply_lora(_classifier(), LoRAConfig(rank=4, alpha=8, dropout=0.5), rngs=nnx.Rngs(1))
  for _, m in lora_modules(clf):  # non-zero B, so the adapter path shows
    m.lora_b.set_value(0.1 * jnp.ones_like(m.lora_b[...]))
  apply_fn, params, frozen = split_lora_model(clf)
  run = jax.jit(lambda rng: apply_fn(params, frozen, batch["inputs"], rng))
  eval_out = np.asarray(jax.jit(lambda: apply_fn(params, frozen, batch["inputs"], None))())
  no_drop = apply_lora(_classifier(), LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(1))
  for _, m in lora_modules(no_drop):
    m.lora_b.set_value(0.1 * jnp.ones_like(m.lora_b[...]))
  np.testing.assert_allclose(eval_out, _fwd(no_drop, *batch["inputs"].values()), rtol=1e-5, atol=1e-5)
  a, a2, b = (np.asarray(run(jax.random.key(s))) for s in (0, 0, 1))
  np.testing.assert_array_equal(a, a2)
  assert np.abs(a - b).max() > 1e-4 and np.abs(a - eval_out).max() > 1e-4
  # The same through train.train_step: the step's fold_in key drives dropout.
  _steps(clf, batch, lora_trainable_filter(), n=1, split=split_lora_model)
  set_lora_dropout(clf, None)
  assert all(m.deterministic for _, m in lora_modules(clf))


# ----------------------------------------------------------- checkpoint ----


@pytest.mark.slow
def test_orbax_saves_only_adapters_and_head(tmp_path, batch):
  clf = apply_lora(_classifier(), LoRAConfig(rank=2, alpha=4), rngs=nnx.Rngs(1))
  _steps(clf, batch, lora_trainable_filter(), n=2)
  small = nnx.state(clf, lora_trainable_filter())
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "lora", small)
  ckpt.wait_until_finished()
  saved = ckpt.restore(tmp_path / "lora")
  leaves = {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(saved)[0]}
  assert leaves and all(p[0] == "head" or p[-2] in ("lora_a", "lora_b") or p[-1] in ("lora_a", "lora_b")
                        for p in leaves), sorted(leaves)[:5]
  n_saved = sum(np.size(x) for x in jax.tree.leaves(saved))
  n_all = sum(v.size for v in _flat(clf).values())
  assert n_saved == sum(v.size for v in _flat(clf, lora_trainable_filter()).values())
  assert n_saved < 0.08 * n_all  # see test_trainable_parameters_are_a_small_fraction
  # Restoring into a fresh LoRA model over the same base reproduces the outputs.
  fresh = apply_lora(_classifier(seed=5), LoRAConfig(rank=2, alpha=4), rngs=nnx.Rngs(7))
  abstract = nnx.state(fresh, lora_trainable_filter())
  nnx.update(fresh, ckpt.restore(tmp_path / "lora", abstract))
  ids, mask = batch["inputs"].values()
  np.testing.assert_array_equal(_fwd(fresh, ids, mask), _fwd(clf, ids, mask))


# ------------------------------------------------------ data parallel ----


def _micro_batches(num, size, seed=0):
  """``num`` left-padded batches of ``size`` rows for the tiny Llama (vocabulary 300)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    ids = rng.integers(1, 300, (size, 16)).astype(np.int32)
    mask = (np.arange(16)[None] >= rng.integers(0, 9, (size, 1))).astype(np.int32)
    targets = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size)]
    out.append({"inputs": {"input_ids_BxT": ids * mask, "attention_mask_BxT": mask},
                "targets": targets, "mask": np.ones(size, np.float32)})
  return out


def _trainer_run(num_devices, mode, accum_steps, batches):
  """Trains a LoRA classifier through ``train.Trainer`` on a ``num_devices`` mesh, with
  the state (frozen base included) born in ``mode``'s sharding; returns (state, born specs, born
  params and frozen as flat numpy dicts, copied before the donating step)."""
  mesh = parallel.make_mesh(num_devices)
  opt = schema.OptimizerConfig(name="adamw", learning_rate=2e-2, weight_decay=0.1, schedule="constant",
                              accum_steps=accum_steps)
  tx, schedule = train.make_optimizer(opt, len(batches))
  clf = apply_lora(_classifier(num_layers=2), LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(1))
  apply_fn, params, frozen = split_lora_model(clf)
  init = lambda: train.init_state(params, frozen, tx, 0)
  shardings = parallel.state_shardings(jax.eval_shape(init), mesh, mode)
  state = jax.jit(init, out_shardings=shardings)()
  specs = jax.tree.map(lambda x: x.sharding.spec, state)
  born = _flat_state(state.params), _flat_state(state.frozen)
  trainer = train.Trainer(apply_fn=apply_fn, loss_fn=_xent, tx=tx, schedule=schedule,
                          num_steps=len(batches), mesh=mesh, state_sharding=shardings)
  for b in batches:
    state, metrics = trainer.step(state, b)
    assert np.isfinite(float(metrics["loss"]))
  assert trainer.num_traces == 1
  return state, specs, born


def _flat_state(tree):
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(tree)}


@pytest.mark.slow
def test_data_parallel_fsdp_base_and_accumulation_match_one_device():
  """8 devices, fsdp-sharded frozen base, 2 micro-batches of 8 per update == 1 device, batches of 16."""
  assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (see tests/conftest.py)"
  micro = _micro_batches(4, 8)
  whole = [jax.tree.map(lambda a, b: np.concatenate([a, b]), micro[i], micro[i + 1]) for i in (0, 2)]
  one, _, _ = _trainer_run(1, "replicated", 1, whole)  # Two updates: A moves only once B has.
  eight, specs, (start, start_base) = _trainer_run(8, "fsdp", 2, micro)
  # The frozen base really is split across the devices, and stays unchanged.
  frozen_specs = [s for s in jax.tree.leaves(specs.frozen, is_leaf=lambda x: isinstance(x, P)) if s != P()]
  assert frozen_specs, "fsdp left every frozen base weight replicated"
  after_base = _flat_state(eight.frozen)
  assert set(after_base) == set(start_base)
  for k, v in start_base.items():
    np.testing.assert_array_equal(after_base[k], v, err_msg=str(k))
  # The adapters and head match the one-device run, and they did train.
  got, want = _flat_state(eight.params), _flat_state(one.params)
  assert set(got) == set(want) == set(start)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=2e-5, err_msg=str(k))
  assert all(np.abs(want[k] - start[k]).max() > 1e-4 for k in want if k[-1] in ("lora_a", "lora_b"))
