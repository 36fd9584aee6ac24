"""Tweets: f-divergence losses against the methods that need more weak models or more procedure, in accuracy and cost.

The comparison arXiv 2506.03109 positions itself in: a cheaper loss against
ensembles of weak supervisors, disagreement filters, probes on the strong
model's features, bootstrapping through an intermediate model and
strong-to-strong rounds. The task is tweets_minilm's (a weak MiniLM slice, the
frozen 6-layer MiniLM with a linear head as the student); every method in
`w2sg_jax.config.METHODS` x six losses x noise {0, 0.2, 0.4} x 5 seeds, each
(method, loss, noise, seed) one cached run with its cost. Besides the usual
report it writes methods.json, methods.md and the figures methods_pareto.png
(accuracy and PGR against FLOPs per student) and methods_noise.png
(`w2sg_jax/methods_report.py`; docs/methods.md says what each method reads).

  make experiment NAME=tweets_methods        # ~10 min cold on 2 CPU cores (one MiniLM pass for layers 0, 3, 6)
  w2sg run tweets_methods:smoke              # tiny sizes, two seeds

Variants: ``smoke`` (tiny sizes, 2 seeds, two losses, noise 0 and 0.4, K = 2, one s2s round).
"""

import ml_collections

from w2sg_jax import config as schema
from w2sg_jax.experiments import tweets_minilm

VARIANTS = ("smoke",)
LOSSES = ("xent", "kl", "reverse_kl", "js", "tv", "pearson")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = tweets_minilm.get_config("smoke" if arg == "smoke" else None)
  c.unlock()
  c.name = "tweets_methods"
  c.student.losses = LOSSES
  c.student.loss_hparams = ml_collections.ConfigDict({})
  c.student.methods = schema.METHODS
  c.student.method.ensemble_size = 3  # K weak models: the single one and two bagged ones.
  c.student.method.bootstrap_layer = 3  # Weak: embeddings (layer 0); intermediate: layer 3; strong: layer 6.
  tweets_minilm._untune(c)  # pylint: disable=protected-access -- Methods compared at one setting, on all of w2s_train.
  if arg == "smoke":
    c.seeds = 2
    c.student.losses = ("xent", "js")
    c.student.noise.rates = (0.0, 0.4)
    c.student.method.ensemble_size = 2
    c.student.method.s2s_rounds = 1
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of tweets_methods; known: {', '.join(VARIANTS)}.")
  c.lock()
  return c
