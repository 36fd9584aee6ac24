"""Tweets: a weak MiniLM slice supervises the full pretrained MiniLM. The offline default.

The shipped experiment lives in the package, `w2sg_jax/experiments/tweets_minilm.py`
(its docstring gives the variants, commands and run times); this file
re-exports it so that `--config=experiments/tweets_minilm.py[:variant]` and
`make experiment NAME=tweets_minilm` keep working in a clone. `w2sg run tweets_minilm[:variant]`
runs the same config from anywhere.
"""

from w2sg_jax.experiments.tweets_minilm import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.tweets_minilm import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
