"""The offline default: tweets + the real MiniLM, end to end on a small slice."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_pipeline import _config, _run
from w2sg_jax import config as schema
from w2sg_jax import losses, parallel, pipeline, tasks, train
from w2sg_jax.tasks import tweets as tweets_task


def _experiment(name, **overrides) -> schema.Experiment:
  """The typed experiment the task methods take: ``_config`` converted at the boundary."""
  return schema.Experiment.from_configdict(_config(name, **overrides))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tweets")
  return tmp, _run(tmp, _config("tweets_minilm"))


@pytest.mark.slow
def test_smoke_run_writes_results_with_model_names_and_auroc(smoke_run):
  tmp, results = smoke_run
  on_disk = json.loads((tmp / "run" / "results.json").read_text())
  assert on_disk["weak"]["name"].startswith("MiniLM-L0")
  assert on_disk["ceiling"]["name"].startswith("MiniLM-L6")
  assert on_disk["weak"]["params"] == 384 * 2 + 2  # A linear probe on 384-d features.
  for part in (on_disk["weak"], on_disk["ceiling"], *on_disk["runs"]):
    assert 0.5 < part["test_auroc"] <= 1.0
  for name in ("summary.md", "summary.csv", "pgr_by_loss.png", "accuracy_vs_noise.png"):
    assert (tmp / "run" / name).exists()
  # The real MiniLM separates tweet sentiment far better than its embedding layer.
  assert on_disk["ceiling"]["test_accuracy"] > on_disk["weak"]["test_accuracy"] + 0.03


@pytest.mark.slow
def test_rerun_embeds_nothing_and_never_runs_the_weak_model(smoke_run, monkeypatch):
  tmp, first = smoke_run

  def fail(*args, **kwargs):
    raise AssertionError("features were extracted again")

  monkeypatch.setattr(tweets_task, "extract_features", fail)
  second = _run(tmp, _config("tweets_minilm"))
  assert second["weak"]["weak_model_runs"] == 0
  assert second["summary"] == first["summary"]


@pytest.mark.slow
def test_a_store_from_other_data_is_an_error_not_a_join(smoke_run):
  from w2sg_jax.labels import store as store_lib

  tmp, results = smoke_run
  store = store_lib.open_store(results["weak"]["store"])
  shuffled = list(store.ids)[::-1]
  with pytest.raises(store_lib.StoreMismatchError, match="position 0"):
    store_lib.open_store(results["weak"]["store"], expected_ids=shuffled)


@pytest.mark.slow
def test_split_larger_than_the_data_is_a_clear_error(tmp_path):
  config = _config("tweets_minilm", **{"data.sizes.test": 10**6})
  with pytest.raises(ValueError, match=r"(?i)lower"):
    _run(tmp_path, config)


@pytest.mark.slow
def test_checkpoint_folder_without_weights_names_the_missing_files(tmp_path):
  empty = tmp_path / "ckpt"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
  config = _config("tweets_minilm", **{"strong.checkpoint": str(empty)})
  with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
    _run(tmp_path, config)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["top", "full"])
def test_finetune_modes_train_the_right_parameters(mode):
  config = _experiment("tweets_minilm", **{"strong.finetune": mode, "strong.head_hidden": ()})
  task = tasks.get("tweets")
  model = task.make_model("strong", config)(nnx.Rngs(0))
  # Start the head away from zero so that gradients reach the encoder.
  head = model.classifier.head.out
  head.kernel.set_value(0.1 * jax.random.normal(jax.random.PRNGKey(1), head.kernel.shape))
  mesh = parallel.make_mesh(2)
  tx, schedule = train.make_optimizer(schema.OptimizerConfig(name="adamw", learning_rate=1e-3), 2)
  apply_fn, state, _ = train.create_state(lambda rngs: model, tx=tx, seed=0, mesh=mesh,
                                          trainable=task.trainable("strong", config))
  before = jax.tree.map(np.asarray, state.params)
  trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses.get("js"), tx=tx, schedule=schedule, num_steps=2,
                          mesh=mesh)
  rng = np.random.default_rng(0)
  batch = {
      "inputs": {"input_ids": rng.integers(1000, 2000, (4, 16)).astype(np.int32),
                 "attention_mask": np.ones((4, 16), np.int32)},
      "targets": np.full((4, 2), 0.5, np.float32) + np.array([0.3, -0.3], np.float32),
      "mask": np.ones(4, np.float32),
  }
  for _ in range(2):
    state, metrics = trainer.step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  names = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(before)[0]]
  changed = [not np.allclose(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params))]
  encoder_layers = {n.split("layers/")[1].split("/")[0] for n in names if "layers/" in n}
  if mode == "top":
    assert encoder_layers == {"4", "5"}  # The top 2 of 6 layers; the rest stay frozen.
    assert not any("embeddings" in n for n in names)
  else:
    assert encoder_layers == {str(i) for i in range(6)} and any("embeddings" in n for n in names)
  assert all(changed)


TINY_BERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "models", "tiny_bert")


def _finetune_logits_and_grads(remat):
  """Logits and trained-parameter gradients of the tweets fine-tuning model on the tiny BERT."""
  config = _experiment("tweets_minilm", **{"strong.checkpoint": TINY_BERT, "strong.finetune": "full",
                                           "strong.head_hidden": (8,), "strong.remat": remat})
  task = tasks.get("tweets")
  model = task.make_model("strong", config)(nnx.Rngs(0))
  head = model.classifier.head.out  # Away from zero, so that gradients reach the encoder.
  head.kernel.set_value(0.1 * jax.random.normal(jax.random.PRNGKey(1), head.kernel.shape))
  graphdef, params, rest = nnx.split(model, task.trainable("strong", config), ...)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 90, (4, 16)).astype(np.int32)
  mask = np.ones((4, 16), np.int32)
  mask[1, 10:] = 0
  mask[3, 5:] = 0

  def loss(params):
    logits = nnx.merge(graphdef, params, rest)(ids, mask)
    return jnp.sum(jnp.tanh(logits) * jnp.array([1.0, -2.0])), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  jaxpr = str(jax.make_jaxpr(jax.value_and_grad(loss, has_aux=True))(params))
  return model, logits, grads, jaxpr


@pytest.mark.slow
def test_finetune_remat_reaches_the_encoder_and_changes_no_number():
  model0, logits0, grads0, jaxpr0 = _finetune_logits_and_grads("none")
  model1, logits1, grads1, jaxpr1 = _finetune_logits_and_grads("full")
  assert (model0.classifier.encoder.remat, model1.classifier.encoder.remat) == ("none", "full")
  count = lambda text: text.count("checkpoint[") + text.count("remat")  # noqa: E731
  assert count(jaxpr0) == 0 and count(jaxpr1) >= 3  # One rematerialised block per layer of the tiny BERT.
  np.testing.assert_allclose(np.asarray(logits1), np.asarray(logits0), atol=1e-5, rtol=0)
  leaves0, leaves1 = jax.tree.leaves(grads0), jax.tree.leaves(grads1)
  assert len(leaves0) == len(leaves1) > 10
  for a, b in zip(leaves0, leaves1):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)
  # The encoder's gradients are not all zero, so the equality is not trivial.
  assert max(float(np.max(np.abs(np.asarray(g)))) for g in leaves0) > 1e-4


def test_finetune_unknown_remat_is_a_clear_error():
  """The schema refuses it at the boundary, before any task method (which takes only a checked experiment)."""
  config = _config("tweets_minilm", **{"strong.checkpoint": TINY_BERT, "strong.finetune": "top",
                                       "strong.remat": "sometimes"})
  with pytest.raises(schema.ConfigError, match=r"strong\.remat='sometimes'.*remat mode"):
    schema.Experiment.from_configdict(config)


def test_bf16_feature_pass_keys_apart_and_float32_keys_stay():
  """``strong.feature_dtype``: absent or float32 gives the same data fingerprint; bfloat16 another one."""
  task = tasks.get("tweets")
  config = _experiment("tweets_minilm")
  base = task.fingerprint(config)
  assert "feature_dtype" not in base
  config = config.replace(strong=config.strong.replace(feature_dtype="float32"))
  assert task.fingerprint(config) == base
  config = config.replace(strong=config.strong.replace(feature_dtype="bfloat16"))
  bf16 = task.fingerprint(config)
  assert bf16 == dict(base, feature_dtype="bfloat16")
