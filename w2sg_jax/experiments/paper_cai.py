r"""Yao et al. (2025), CAI-Harmless: GPT-2 reward models, weak-to-strong with f-divergence losses.

The same protocol as ``experiments/paper_hh.py`` (read its docstring for the
variants, the runs and the expected wall times, which are the same here up to
the transcript lengths) on CAI-Harmless: the preference splits of the public
release ``HuggingFaceH4/cai-conversation-harmless`` (Apache-2.0, pinned
revision in ``w2sg_jax/data/preference.py``), whose pairs are a red-team
prompt with the constitutionally revised response (chosen) and the initial
one (rejected).

  python -m w2sg_jax.main --config=experiments/paper_cai.py --workdir=runs/paper_cai
  python -m w2sg_jax.main --config=experiments/paper_cai.py:xl --workdir=runs/paper_cai_xl
  python -m w2sg_jax.main --config=experiments/paper_cai.py:smoke --workdir=/tmp/paper_cai_smoke

Variants: ``large``, ``xl``, ``tpu_small``, ``smoke`` (as in paper_hh.py;
``single_turn`` reads HH-RLHF files and is paper_hh.py's only). docs/paper.md
says which settings come from the paper, which from public code by its
co-authors (not this paper's own release), and which are this project's choice.
"""

import ml_collections

from w2sg_jax.experiments import paper_hh

# paper_hh's variants but single_turn, which reads HH-RLHF files.
VARIANTS = tuple(v for v in paper_hh.VARIANTS if not v.startswith("single_turn"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return paper_hh.build_config(arg, name="paper_cai", dataset="cai_harmless", subset="", module="paper_cai.py")
