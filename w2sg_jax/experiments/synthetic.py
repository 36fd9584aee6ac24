"""Synthetic W2SG: the whole pipeline on a task where W2SG is known to appear.

The strong model sees a 32-d latent; the weak one a noisy random projection of
it. A 2-layer MLP weak model is trained on ground truth, labels the
w2s_train split once, and an MLP student learns from those labels with every
f-divergence and ``xent``, 3 seeds each, at noise 0 and 0.2.

  w2sg run synthetic                        # from any folder after pip install; runs/synthetic
  w2sg run synthetic:smoke --set seeds=1    # seconds
  make experiment NAME=synthetic            # about 15 s on 2 CPU cores
  make experiment NAME=synthetic ARGS='--config=experiments/synthetic.py:smoke'
  python -m w2sg_jax.main --config=experiments/synthetic.py --workdir=runs/synthetic --config.seeds=5

Variants (after the colon): ``smoke`` (tiny, for tests; seconds).
"""

import ml_collections

from w2sg_jax import losses
from w2sg_jax import config_lib
from w2sg_jax.config_lib import head_model, noise_config, report_config, student_config, train_config


VARIANTS = ("smoke",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "synthetic"
  c.task = "synthetic"
  c.seed = 0  # Weak model and split seed; student seeds are seed+1 .. seed+seeds.
  c.seeds = 3  # Student (and ceiling) seeds per (loss, noise) cell.
  c.cache_dir = "runs/cache"  # Weak checkpoints and weak-label stores, shared across experiments.

  c.data = ml_collections.ConfigDict()
  c.data.dim = 32  # Strong view: the latent itself (rotated).
  c.data.weak_dim = 32  # Weak view: a noisy random projection onto this many directions.
  c.data.weak_noise = 1.5  # Std of the noise added to the weak view: errors the strong view cannot explain.
  c.data.label_sharpness = 4.0  # Larger: labels closer to a deterministic function of z.
  c.data.data_seed = 0
  c.data.split_seed = 0
  c.data.sizes = ml_collections.ConfigDict({"weak_train": 2000, "w2s_train": 4000, "test": 4000})

  c.weak = head_model((64,))
  c.weak.train = train_config(batch_size=64, epochs=3, learning_rate=3e-3, save_every=200)

  c.strong = head_model((128,))

  c.student = student_config(
      engine="vmap",  # All seeds x noise rates of a loss as one vmapped program.
      losses=("xent",) + losses.F_DIVERGENCES,
      loss_hparams={"alpha": {"alpha": 0.5}},
      noise=noise_config((0.0, 0.2)),
      train=train_config(batch_size=64, epochs=2, learning_rate=1e-3),
  )

  c.report = report_config()

  if arg == "smoke":
    c.seeds = 2
    c.data.sizes = ml_collections.ConfigDict({"weak_train": 1024, "w2s_train": 2048, "test": 1024})
    c.weak.train.epochs = 4
    c.student.losses = ("xent", "kl", "js")
    c.student.noise.rates = (0.0, 0.2)
    c.student.train.optimizer.learning_rate = 3e-3
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of experiments/synthetic.py; known: smoke.")
  config_lib.add_tuning_grids(c)
  c.lock()
  return c

