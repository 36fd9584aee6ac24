r"""Yao et al. (2025), HH-RLHF: GPT-2 reward models, weak-to-strong with f-divergence losses.

The reward-modelling setting of arXiv:2506.03109. docs/paper.md says, for every
setting below, whether it comes from the paper's text, from public code by its
co-authors (Gengze/W2SG-Bregman, a follow-up paper's code, and
keven980716/weak-to-strong-deception; not this paper's own release), or is
this project's own choice. In short: a GPT-2 Base reward
model is trained on 4000 pairs of Anthropic HH-RLHF (harmless-base) with
ground truth, labels 4000 more pairs once (soft labels sigmoid(r(a) - r(b))),
and GPT-2 Medium learns from those labels with each loss, and is tested on
4000 held-out pairs. Losses: the paper's xent, kl, reverse_kl, js, hellinger,
jeffreys and Pearson chi2 -- run in both directions, ``pearson`` and
``neyman``, because the paper's text does not settle which one it means --
plus ``tv``, which is beyond the paper; each also with the Burns et al.
confidence term (``+conf``, the Burns et al. release's schedule: see below).
Noise: on a fraction 0, 0.1, 0.2, 0.3, 0.4 of the w2s pairs the weak label is
flipped, q -> 0.5 + a (q - 0.5) with a = -1, the subset drawn with each
student's seed as in the co-authors' code (``student.noise.per_seed``). Seeds:
3; each seed retrains the weak model (``weak.per_seed``), so the seed
intervals include the weak model's variance, as a rerun of the co-authors'
scripts would. The strong ceiling is trained on the weak model's split
(``ceiling.split='weak_train'``), as in Burns et al. and the co-authors' code.
Output: ``results.json``, ``summary.md``/``.csv`` and the plots (test accuracy
vs noise rate, one line per loss) in the workdir.

  python -m w2sg_jax.main --config=experiments/paper_hh.py --workdir=runs/paper_hh
  python -m w2sg_jax.main --config=experiments/paper_hh.py:large --workdir=runs/paper_hh_large
  python -m w2sg_jax.main --config=experiments/paper_hh.py:smoke --workdir=/tmp/paper_hh_smoke
  make experiment NAME=paper_hh ARGS='--config.seeds=1 --config.student.losses="(\"xent\",\"js\")"'

Variants (after the colon):

* (none): GPT-2 Base (124M, hub id ``gpt2``) supervises GPT-2 Medium (355M).
  273 strong runs (18 losses x 5 noise rates x 3 seeds + 3 ceiling seeds) of
  250 steps of 32 pairs at up to 512 tokens, ~5.2e18 FLOPs in all, plus 3
  weak models (<0.1%). Estimated wall time from the memory plan (compiled
  FLOPs at 35% of peak bf16; docs/paper.md has the table for every variant):
  H100 ~4.2 h, A100 80GB ~13.2 h, TPU v4-8 ~3.7 h, TPU v5e-8 ~2.6 h. As
  configured its step fits neither a v5e chip's 16 GiB nor, by the plan's
  upper bound, one 80 GB GPU; with ``--config.strong.remat=full`` it fits
  both (~3.1 h on a v5e-8, ~5.0 h on one H100). Add compile time, about
  1 min per run unless the XLA compilation cache is on.
* ``single_turn``: the default on the co-authors' pre-split single-turn
  files (``harmless_train_gt.jsonl``, ``harmless_train_w2s.jsonl``,
  ``harmless_test.jsonl``, 4000 pairs each), their split kept; pass the
  folder with ``--config.data.manual_dir=DIR`` (paper_hh.py only).
* ``large``: strong = GPT-2 Large (774M), ~2.3x the default; 2 micro-batches
  of 16 pairs. Where it fits, and with which ``strong.remat``, is what
  ``python -m w2sg_jax.plan`` reports (README, "Hardware and expected wall time").
* ``xl``: strong = GPT-2 XL (1.5B), ~5.7x the default's FLOPs; 4
  micro-batches of 8 pairs and full rematerialisation
  (``strong.remat='full'``). Its float32 Adam state is ~25 GB per replica, so
  on 8 chips of 16 GiB (v5e-8) the ``auto`` sharding shards it (fsdp); the
  memory plan (``python -m w2sg_jax.plan --config=experiments/paper_hh.py:xl
  --devices=8 --device-memory=16``) compiles the step: 7.4 GiB a chip, so it
  fits a v5e-8, and 62.5 GiB on one 80 GB GPU.
* ``tpu_small``: a real but small run to check a TPU/GPU set-up: gpt2 ->
  gpt2-medium, 1000/1000/1000 pairs at 256 tokens, 4 losses x noise {0, 0.2}
  x 1 seed (9 strong runs, ~2e16 FLOPs). About 10 min on a v4-8 or an A100,
  most of it downloads and compilation.
* ``smoke``: the tiny random GPT-2 fixture on both sides (weak: its first
  layer only) on the committed fixture pairs, 16/16/16 pairs at 64 tokens,
  1 seed, 3 losses x 2 noise rates. Runs offline on a laptop CPU in about a
  minute; for tests, not for numbers.
* ``single_turn_smoke``: ``smoke`` on the committed single-turn fixture
  files (tests/fixtures/data/hh-single-turn), their split kept.

Weights come from the Hugging Face hub (``pip install 'w2sg-jax[hub]'``) or
any local folder with config.json, model.safetensors and tokenizer.json. The
data are read by the TFDS builders in ``w2sg_jax/data/preference.py``; offline,
put the source files in a folder and pass ``--config.data.manual_dir=DIR``.
"""

import os

import ml_collections

from w2sg_jax import config_lib
from w2sg_jax.config_lib import PAPER_METHODS, ceiling_config, methods_config, train_config

# The paper's losses (CE, KL, reverse KL, JS, squared Hellinger, Pearson chi2, Jeffreys).
# Its text does not settle the direction of Pearson chi2, so both run: `pearson` is
# chi2(weak || student), `neyman` is chi2(student || weak).
PAPER_TEXT_LOSSES = ["xent", "kl", "reverse_kl", "js", "hellinger", "pearson", "neyman", "jeffreys"]
BEYOND_PAPER_LOSSES = ["tv"]  # Total variation: not in the paper; kept as the bounded reference.
LOSSES = PAPER_TEXT_LOSSES + BEYOND_PAPER_LOSSES
# "<loss>+conf": the same loss with the Burns et al. confidence term, with the
# Burns et al. release's settings (confidence 0.5, warm-up 10% of training) and
# its schedule, confidence_schedule="burns": the weight ramps to 0.1 x 0.5 over
# the warm-up, then jumps to 0.5 (w2sg_jax.losses; "linear" is the continuous ramp).
PAPER_LOSSES = LOSSES + [f"{name}+conf" for name in LOSSES]

# The repository (the smoke variants read its tests/fixtures: a clone, not a pip install).
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE_DATA = {
    "hh_rlhf": os.path.join(_REPO, "tests", "fixtures", "data", "hh-rlhf"),
    "cai_harmless": os.path.join(_REPO, "tests", "fixtures", "data", "cai-conversation-harmless"),
}
TINY_GPT2 = os.path.join(_REPO, "tests", "fixtures", "models", "tiny_gpt2")
SINGLE_TURN_FIXTURE = os.path.join(_REPO, "tests", "fixtures", "data", "hh-single-turn")
# The preference builder's config that reads the co-authors' pre-split files
# (keven980716/weak-to-strong-deception) and keeps their split.
SINGLE_TURN = "harmless-single-turn"

VARIANTS = ("smoke", "tpu_small", "large", "xl", "single_turn", "single_turn_smoke", "methods")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return build_config(arg, name="paper_hh", dataset="hh_rlhf", subset="harmless-base", module="paper_hh.py")


def build_config(
    arg: str | None, *, name: str, dataset: str, subset: str, module: str
) -> ml_collections.ConfigDict:
  """The paper's config for one dataset; ``arg`` picks the variant (see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.task = "preference"
  c.seed = 0  # Weak model seed; student (and ceiling) seeds are seed+1 .. seed+seeds.
  c.seeds = 3  # Student (and ceiling) seeds per (loss, noise) cell.
  c.cache_dir = "runs/cache"  # Weak checkpoints, weak-label stores and (by default) the TFDS data.

  c.data = ml_collections.ConfigDict()
  c.data.dataset = dataset  # 'hh_rlhf' or 'cai_harmless'.
  c.data.subset = subset  # hh_rlhf: 'harmless-base' or 'helpful-base'; cai_harmless: ''.
  c.data.source_splits = ("train",)  # Source splits pooled before drawing the three splits below.
  c.data.data_dir = ""  # TFDS data_dir for the prepared data; '' = <cache_dir>/tfds.
  c.data.manual_dir = ""  # Folder with the source files (offline); '' = download them.
  c.data.download = True  # False: never try the network (a missing file is an error naming it).
  # Pairs per split, drawn without overlap from the pool (split_seed).
  c.data.sizes = ml_collections.ConfigDict({"weak_train": 4000, "w2s_train": 4000, "test": 4000})
  c.data.split_seed = 0
  c.data.order_seed = 0  # Per-pair (chosen, rejected) presentation order; see tasks/preference.py.
  c.data.max_length = 512  # Tokens per transcript, truncated from the LEFT (keeps the final response).

  c.weak = _model("gpt2")
  # One weak model per student seed (the co-authors' code reruns the whole pipeline per seed),
  # so seed intervals include the weak model's variance; its stores are keyed by it.
  c.weak.per_seed = True
  c.weak.train = _train(epochs=1)

  c.strong = _model("gpt2-medium")

  # The ceiling learns the weak model's split (Burns et al. and the co-authors' code);
  # 'w2s_train' trains it on the students' pairs instead.
  c.ceiling = ceiling_config("weak_train")

  c.student = ml_collections.ConfigDict()
  c.student.engine = "data_parallel"  # One fine-tuning run at a time over every device, per (loss, noise, seed).
  c.student.losses = tuple(PAPER_LOSSES)
  # Keyword arguments per loss (run) name, e.g. {"js+conf": {"confidence": 0.75}}.
  c.student.loss_hparams = ml_collections.ConfigDict()
  c.student.noise = ml_collections.ConfigDict()
  c.student.noise.rates = (0.0, 0.1, 0.2, 0.3, 0.4)  # Fraction of w2s pairs whose weak label is corrupted.
  c.student.noise.scale = -1.0  # q -> 0.5 + scale (q - 0.5): -1 flips the preference, 0 makes it 0.5.
  c.student.noise.seed = 0  # Picks the corrupted pairs when per_seed is False (then the same for every student).
  c.student.noise.per_seed = True  # Each student's corrupted subset drawn with its own seed (co-authors' code).
  c.student.train = _train(epochs=2)  # Also trains the strong ceiling.
  # How the weak labels reach the students (docs/methods.md); the `methods` variant adds the
  # methods that need more weak models or rounds: K = 3 weak models, two strong-to-strong rounds.
  c.student.methods = ("single",)
  c.student.method = methods_config()
  c.student.grid = ml_collections.ConfigDict()  # Settings to tune (w2sg_jax/grid.py); {} = none.

  if arg == "methods":
    c.name = f"{name}_methods"
    c.student.methods = PAPER_METHODS
    c.student.losses = ("xent", "kl", "reverse_kl", "js", "tv", "pearson")
  elif arg == "large":
    c.name = f"{name}_large"
    c.strong.checkpoint = "gpt2-large"
    # 2 micro-batches of 16 pairs = the paper's batch of 32, in half the activation memory.
    c.student.train.batch_size = 16
    c.student.train.optimizer.accum_steps = 2
    c.student.train.eval_batch_size = 32
  elif arg == "xl":
    c.name = f"{name}_xl"
    c.strong.checkpoint = "gpt2-xl"
    # 4 micro-batches of 8 pairs = the paper's batch of 32, in a quarter of the activation memory.
    c.student.train.batch_size = 8
    c.student.train.optimizer.accum_steps = 4
    c.student.train.eval_batch_size = 32
    # Only block inputs kept for the backward pass: with fsdp (train.sharding='auto' picks it)
    # the step fits 8 x 16 GiB (TPU v5e-8); `python -m w2sg_jax.plan` compiles it to check.
    c.strong.remat = "full"
  elif arg == "tpu_small":
    c.name = f"{name}_tpu_small"
    c.seeds = 1
    c.data.sizes = ml_collections.ConfigDict({"weak_train": 1000, "w2s_train": 1000, "test": 1000})
    c.data.max_length = 256
    c.student.losses = ("xent", "kl", "js", "js+conf")
    c.student.noise.rates = (0.0, 0.2)
  elif arg in ("single_turn", "single_turn_smoke") and dataset != "hh_rlhf":
    raise ValueError(f"variant {arg!r} reads the HH-RLHF single-turn files; use experiments/paper_hh.py:{arg}.")
  elif arg == "single_turn":
    c.name = f"{name}_single_turn"
    _single_turn(c, manual_dir="")  # --config.data.manual_dir=DIR: the folder with the three files.
  elif arg in ("smoke", "single_turn_smoke"):
    c.name = f"{name}_{arg}"
    c.seeds = 1
    c.data.manual_dir = FIXTURE_DATA[dataset]
    c.data.download = False
    c.data.source_splits = ("train", "test")  # The fixtures hold ~50 pairs in all.
    c.data.sizes = ml_collections.ConfigDict({"weak_train": 16, "w2s_train": 16, "test": 16})
    c.data.max_length = 64  # The tiny GPT-2 has 64 positions.
    c.weak.checkpoint = TINY_GPT2
    c.weak.num_layers = 1  # A weaker supervisor: the fixture's first layer only.
    c.weak.dtype = "float32"
    c.strong.checkpoint = TINY_GPT2
    c.strong.dtype = "float32"
    for t in (c.weak.train, c.student.train):
      t.batch_size = 8  # Divisible by the 8 simulated CPU devices of the tests.
      t.eval_batch_size = 16
      t.log_every = 1
      t.optimizer.learning_rate = 1e-3  # Random tiny weights: the paper's 1e-5 would not move them.
    c.student.losses = ("xent", "js", "js+conf")
    c.student.noise.rates = (0.0, 0.2)
    if arg == "single_turn_smoke":
      _single_turn(c, manual_dir=SINGLE_TURN_FIXTURE)
      c.data.sizes = ml_collections.ConfigDict({"weak_train": 16, "w2s_train": 16, "test": 16})
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of experiments/{module}; known: {', '.join(VARIANTS)}.")
  config_lib.add_tuning_grids(c)
  c.lock()
  return c


def _single_turn(c: ml_collections.ConfigDict, *, manual_dir: str) -> None:
  """The co-authors' pre-split single-turn files: each split is its own file, in file order."""
  c.data.subset = SINGLE_TURN
  c.data.source_splits = ("weak_train", "w2s_train", "test")  # The builder's splits: kept, not redrawn.
  c.data.manual_dir = manual_dir
  c.data.download = False  # The files have no public URL of their own.


def _model(checkpoint: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "checkpoint": checkpoint,  # Hugging Face hub id or local folder (config.json, model.safetensors, tokenizer.json).
      "num_layers": 0,  # Keep only the first k transformer layers; 0 = all.
      "dtype": "bfloat16",  # Compute dtype: 'bfloat16' or 'float32' (parameters and loss are float32 either way).
      "finetune": "full",  # 'full', 'top' (top_layers + head) or 'head' (a probe on a frozen encoder).
      "top_layers": 0,  # With finetune='top': how many of the top layers train.
      "pooling": "",  # '' = the last real token (GPT-2) / mean (BERT); or 'last', 'mean'.
      "head_hidden": (),  # Hidden widths of the reward head; () = a linear head (zero-initialised).
      # Rematerialisation of each transformer block in the backward pass: 'none', 'block'
      # (recompute attention and elementwise ops) or 'full' (keep only block inputs); see models/remat.py.
      "remat": "none",
  })


def _train(epochs: float) -> ml_collections.ConfigDict:
  # From the co-authors' code, Gengze/W2SG-Bregman (the paper's text does not give them): Adam, lr 1e-5,
  # cosine decay to 0, no warm-up, batches of 32 pairs. No clipping: that code clips nothing.
  return train_config(batch_size=32, epochs=epochs, learning_rate=1e-5, optimizer="adam", eval_batch_size=64,
                      save_every=1000, log_every=25, grad_clip=0.0)
