"""The W2SG dataset suite of Burns et al. (2023): one hub dataset per variant, the loss x noise x seed grid.

Each variant is an entry of ``w2sg_jax/data/w2s_suite.py``: a Hugging Face
dataset turned into binary classification by the formatter of the peer file it
names (openai/weak-to-strong ``weak_to_strong/datasets.py``, whose formatters
EleutherAI/w2s ``w2s/ds_registry.py`` took over):

  ===============  ==========================  ===============================================
  variant          hub dataset                 text (label)
  ===============  ==========================  ===============================================
  sciq             allenai/sciq                "Q: {question} A: {answer}" (correct or a distractor)
  boolq            google/boolq                "Passage: ...\\nQuestion: ..." (answer)
  cosmos_qa        allenai/cosmos_qa           "Context: ...\\nQuestion: ...\\nAnswer: ..." (correct?)
  amazon_polarity  fancyzhx/amazon_polarity    "{title} {content}" (positive)
  anthropic_hh     Anthropic/hh-rlhf           the chosen or the rejected transcript (chosen?)
  ===============  ==========================  ===============================================

  pip install 'w2sg-jax[hf]'            # the `datasets` package; the hub must be reachable (or in the HF cache)
  w2sg run w2s_suite:sciq --workdir=runs/w2s_suite_sciq
  w2sg run w2s_suite:boolq --set data.revision=<commit>   # pin the hub dataset to repeat a run

Run time: hours on CPU (two GPT-2 models fine-tuned on 3000 + 3000 examples,
and 11 losses x 2 noise rates x 3 seeds of students); on one accelerator, tens
of minutes.

What follows the peers: the hub datasets, the prompt templates and label rules
(see the module above; the per-row random draws are seeded per row id instead
of one stream in row order), GPT-2-family weak and strong models fully
fine-tuned with a linear head on the last token, as in Burns et al. This
project's choices: the three splits are drawn disjointly from the pooled
``data.hf_splits`` by ``data/splits.py`` (the peers take the test split from
the hub's test or validation split), 3000 / 3000 / 2000 examples (BoolQ's
train split holds 9,427 rows), texts cut on the right to 256 tokens (counted),
and the learning rates below. Without a pinned ``data.revision`` the hub's
default branch is read (as the peers do); the rows read enter every key by
content either way.

Offline, each entry is tested on a fixture in the hub's schema through the same
loader (tests/test_files_task.py).

Variants: sciq (the default), boolq, cosmos_qa, amazon_polarity, anthropic_hh.
"""

import ml_collections

from w2sg_jax import losses
from w2sg_jax.config_lib import noise_config, pretrained_model, report_config, student_config, train_config
from w2sg_jax.data import w2s_suite
from w2sg_jax.experiments.files_example import files_data

VARIANTS = tuple(w2s_suite.SUITE)

# Hub splits read per entry: a slice where the split is far larger than the sizes need.
HF_SPLITS = {"amazon_polarity": ("train[:20000]",), "anthropic_hh": ("train[:20000]",)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "sciq"
  entry = w2s_suite.get(name)  # An unknown variant names the entries.
  c = ml_collections.ConfigDict()
  c.name = f"w2s_suite_{name}"
  c.task = "files"
  c.seed = 0
  c.seeds = 3
  c.cache_dir = "runs/cache"
  c.data = files_data(
      suite=entry.name,
      hf_dataset=entry.hf_dataset,
      hf_config=entry.hf_config,
      revision=entry.revision,
      hf_splits=HF_SPLITS.get(name, entry.hf_splits),
      sizes={"weak_train": 3000, "w2s_train": 3000, "test": 2000},
      max_length=256,
  )
  c.weak = pretrained_model("gpt2", dtype="float32", finetune="full")
  c.weak.train = train_config(batch_size=32, epochs=2, learning_rate=5e-5, eval_batch_size=64, weight_decay=0.01)
  c.strong = pretrained_model("gpt2-medium", dtype="float32", finetune="full")
  c.student = student_config(
      engine="data_parallel",
      losses=("xent", "logconf") + losses.F_DIVERGENCES,
      noise=noise_config((0.0, 0.2)),
      train=train_config(batch_size=32, epochs=2, learning_rate=2e-5, eval_batch_size=64, weight_decay=0.01),
  )
  c.report = report_config()
  return c
