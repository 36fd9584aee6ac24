"""Re-exports the packaged experiment `w2sg_jax/experiments/w2s_suite.py` (its docstring gives commands and run times).

`--config=experiments/w2s_suite.py[:variant]` keeps working in a clone; `w2sg run w2s_suite[:variant]` runs it from anywhere.
"""

from w2sg_jax.experiments.w2s_suite import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.w2s_suite import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
