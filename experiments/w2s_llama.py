"""The modern W2SG setting: a weak Qwen2 model supervises a Llama strong model trained with LoRA.

The shipped experiment lives in the package, `w2sg_jax/experiments/w2s_llama.py`
(its docstring gives the variants, commands and run times); this file
re-exports it so that `--config=experiments/w2s_llama.py[:variant]` and
`make experiment NAME=w2s_llama` keep working in a clone. `w2sg run w2s_llama[:variant]`
runs the same config from anywhere.
"""

from w2sg_jax.experiments.w2s_llama import *  # noqa: F401,F403 -- get_config, VARIANTS and its helpers.
from w2sg_jax.experiments.w2s_llama import VARIANTS, get_config  # noqa: F401 -- named for readers and linters.
