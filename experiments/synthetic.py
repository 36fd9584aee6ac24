"""Synthetic W2SG: the whole pipeline on a task where W2SG is known to appear.

The shipped experiment lives in the package, `w2sg_jax/experiments/synthetic.py`
(its docstring gives the variants, commands and run times); this file
re-exports it so that `--config=experiments/synthetic.py[:variant]` and
`make experiment NAME=synthetic` keep working in a clone. `w2sg run synthetic[:variant]`
runs the same config from anywhere.
"""

from w2sg_jax.experiments.synthetic import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.synthetic import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
