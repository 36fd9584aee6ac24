"""Tweets: f-divergence losses against ensembles, filters, probes, bootstrapping and strong-to-strong, with cost.

The shipped experiment lives in the package, `w2sg_jax/experiments/tweets_methods.py`
(its docstring gives the variants, commands and run times); this file
re-exports it so that `--config=experiments/tweets_methods.py[:variant]` and
`make experiment NAME=tweets_methods` work in a clone.
"""

from w2sg_jax.experiments.tweets_methods import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.tweets_methods import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
