"""The theory lab: the claims of Yao et al. (2025) measured on the offline default's regime.

A frozen MiniLM representation with a trained linear head is exactly the
fixed-representation student of the paper's theory, so this experiment takes
``experiments/tweets_minilm.py`` as it is (same data, weak model, stores,
ceiling and students: the same cache keys, nothing recomputed) and adds five
measurements (the package ``w2sg_jax/theory/`` defines each):

* ``misfit_gain``: misfit D_f(weak || student) against the gain over the weak
  model, per loss, with the fitted C of the envelope |gain| <= C sqrt(misfit);
* ``sample_complexity``: accuracy against n in {125, ..., 8000} weak labels,
  8 losses x noise {0, 0.2} x 5 seeds, all n of a loss in one vmapped program;
* ``equivalence``: how often students of different f disagree (same seed);
* ``noise_dose``: flips and shrinking toward uniform (a = 0.25) at rates
  0, 0.1, ..., 0.5, bounded against unbounded f;
* ``trajectory``: test accuracy and training misfit at 40 chunk boundaries of
  a 40-epoch run on 2000 weak labels, evaluated inside the compiled loop.

  make experiment NAME=tweets_theory      # see the timings below
  python -m w2sg_jax.main --config=experiments/tweets_theory.py:smoke --workdir=/tmp/theory_smoke
  python -m w2sg_jax.main --config=experiments/tweets_theory.py:synthetic --workdir=/tmp/theory_synthetic

Writes ``theory.json``, ``theory.md`` (fitted constants, one paragraph per
finding, agree or not) and six PNG figures into the workdir.

Measured from a fresh clone on 2 CPU cores (load 1.2-1.4): 67 s after
``make experiment NAME=tweets_minilm`` (its data, weak model, ceiling and
students are reused by key; the lab's sections 60 s, the groups of a section
sharing one compiled loop across the 8 losses), 154 s from nothing (of which
the MiniLM pass over 12,300 tweets 70 s).

Variants (after the colon): ``smoke`` (tweets_minilm:smoke sizes, small grids;
needs the MiniLM pass), ``synthetic`` (the synthetic task, small grids; no
MiniLM, for the fast test).
"""

import importlib

import ml_collections

# Every loss the lab trains: bounded f (js, hellinger, tv), unbounded f (kl,
# pearson, neyman) and the KL variants (reverse_kl, jeffreys). xent trains
# exactly like kl (they differ by the weak entropy, a constant), so kl stands for both.
LAB_LOSSES = ("kl", "reverse_kl", "jeffreys", "pearson", "neyman", "js", "hellinger", "tv")


VARIANTS = ("smoke", "synthetic")


def _sibling(name: str):
  return importlib.import_module(f"w2sg_jax.experiments.{name}")


def theory_config(*, sizes, noise_rates=(0.0, 0.2), dose_rates=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                  trajectory_n=2000, trajectory_epochs=40, trajectory_points=40,
                  trajectory_noise=(0.0, 0.2, 0.4), losses=LAB_LOSSES) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "losses": tuple(losses),  # Losses of the lab sections (misfit_gain uses every student.losses).
      "sample_complexity": {
          "sizes": tuple(sizes),  # Weak labels n: the first n of w2s_train (a random subset), nested.
          "noise_rates": tuple(noise_rates),  # Flips on this fraction (student.noise.scale and seed).
          "num_steps": 0,  # Steps of every n; 0 = the full-data students' steps, so n = all reproduces them.
      },
      "noise_dose": {
          "rates": tuple(dose_rates),
          # kind -> a in q -> 1/C + a (q - 1/C) on the corrupted fraction: -1 flips, 0.25 shrinks
          # three quarters of the way toward uniform (keeps the argmax).
          "kinds": {"flip": -1.0, "shrink": 0.25},
      },
      "trajectory": {
          "n": trajectory_n,  # Weak labels of each run (first n of w2s_train).
          "epochs": trajectory_epochs,  # Long enough to fit the weak labels' errors.
          "points": trajectory_points,  # Evaluations, at chunk boundaries of the compiled loop.
          "noise_rates": tuple(trajectory_noise),
      },
  })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg in (None, "smoke"):
    c = _sibling("tweets_minilm").get_config(arg)
  elif arg == "synthetic":
    c = _sibling("synthetic").get_config("smoke")
  else:
    raise ValueError(f"unknown variant {arg!r} of experiments/tweets_theory.py; known: smoke, synthetic.")
  with c.unlocked():
    # The lab studies one setting per loss: the default's own (its untuned point; with its weak-labelled
    # holdout, so these students are the default's runs of that point, reused by key).
    c.student.grid = ml_collections.ConfigDict({})
    c.name = "tweets_theory" if arg is None else f"tweets_theory_{arg}"
    c.runner = "theory"  # main.run hands the config to w2sg_jax.theory.run instead of the pipeline.
    if arg is None:
      c.theory = theory_config(sizes=(125, 250, 500, 1000, 2000, 4000, 8000))
    elif arg == "smoke":  # w2s_train has 1024 examples.
      c.theory = theory_config(sizes=(128, 256, 512, 1024), dose_rates=(0.0, 0.2, 0.4), trajectory_n=512,
                               trajectory_epochs=10, trajectory_points=10, trajectory_noise=(0.0, 0.4),
                               losses=("kl", "js", "tv", "pearson"))
    else:  # The synthetic task: w2s_train has 2048 examples; seconds.
      c.theory = theory_config(sizes=(128, 512, 2048), dose_rates=(0.0, 0.2, 0.4), trajectory_n=512,
                               trajectory_epochs=10, trajectory_points=10, trajectory_noise=(0.0, 0.4),
                               losses=("kl", "js", "tv", "pearson"))
  c.lock()
  return c
