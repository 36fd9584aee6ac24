"""Re-exports the packaged experiment `w2sg_jax/experiments/files_example.py` (its docstring gives commands and run times).

`--config=experiments/files_example.py[:variant]` keeps working in a clone; `w2sg run files_example[:variant]` runs it from anywhere.
"""

from w2sg_jax.experiments.files_example import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.files_example import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
