"""The theory lab: the claims of Yao et al. (2025) measured on the offline default's regime.

The shipped experiment lives in the package, `w2sg_jax/experiments/tweets_theory.py`
(its docstring gives the variants, commands and run times); this file
re-exports it so that `--config=experiments/tweets_theory.py[:variant]` and
`make experiment NAME=tweets_theory` keep working in a clone. `w2sg run tweets_theory[:variant]`
runs the same config from anywhere.
"""

from w2sg_jax.experiments.tweets_theory import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.tweets_theory import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
