"""Yao et al. (2025), CAI-Harmless: GPT-2 reward models, weak-to-strong with f-divergence losses.

The shipped experiment lives in the package, `w2sg_jax/experiments/paper_cai.py`
(its docstring gives the variants, commands and run times); this file
re-exports it so that `--config=experiments/paper_cai.py[:variant]` and
`make experiment NAME=paper_cai` keep working in a clone. `w2sg run paper_cai[:variant]`
runs the same config from anywhere.
"""

from w2sg_jax.experiments.paper_cai import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.paper_cai import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
