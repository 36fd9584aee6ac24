"""The W2SG dataset suite of Burns et al. (2023): one hub dataset per variant, the loss x noise x seed grid.

Each variant is an entry of ``w2sg_jax/data/w2s_suite.py``: a Hugging Face
dataset at a revision, turned into binary classification by the formatter of
openai/weak-to-strong ``weak_to_strong/datasets.py`` at commit
``6b450f2cee3714d6f886e5e1910bac73633bf69a`` (the code of Burns et al.; the
five formatters are the same in EleutherAI/w2s ``w2s/ds_registry.py``), which
each entry names:

  ===============  ==========================  ==========  ==============================================
  variant          hub dataset                 revision    text (label), as the peer function builds it
  ===============  ==========================  ==========  ==============================================
  sciq             allenai/sciq                set it      "Q: {question} A: {answer}" (format_sciq:
                                                           the correct answer or a distractor, a coin)
  boolq            google/boolq                set it      "Passage: {passage}\\nQuestion: {question}"
                                                           (format_boolq: the answer)
  cosmos_qa        allenai/cosmos_qa           set it      "Context: ...\\nQuestion: ...\\nAnswer: ..."
                                                           (format_cosmosqa: the true answer or another)
  amazon_polarity  fancyzhx/amazon_polarity    set it      "{title} {content}" (format_amazon_polarity)
  anthropic_hh     Anthropic/hh-rlhf           09be8c5b..  the chosen or the rejected transcript
                                                           (format_anthropic_hh: chosen?)
  ===============  ==========================  ==========  ==============================================

  pip install 'w2sg-jax[hf]'            # the `datasets` package; the hub must be reachable (or in the HF cache)
  w2sg run w2s_suite:anthropic_hh --workdir=runs/w2s_suite_hh        # pinned: runs as is
  w2sg run w2s_suite:sciq --set data.revision=<40-character commit of allenai/sciq>
  w2sg run w2s_suite:boolq --set data.revision=main                  # today's rows, knowingly

Revisions: the peers pin none. ``anthropic_hh`` reads the Anthropic/hh-rlhf
commit that ``w2sg_jax/data/preference.py`` already pins; the other entries
pin nothing (no commit of theirs was checked here, and a hash not read from the
hub would be a guess), so the run stops before any compute until
``data.revision`` is set: to a commit (the dataset's history on the hub lists
them) to repeat the run, or to a branch such as ``main`` to read today's rows
knowingly. Either way the rows read enter every key by content.

Run time: hours on CPU (two GPT-2 models fine-tuned on 3000 + 3000 examples,
and 11 losses x 2 noise rates x 3 seeds of students); on one accelerator, tens
of minutes.

What follows the peer: the hub datasets, the prompt templates, label rules and
random draws of each formatter (the draws seeded per row id instead of one
stream in row order), GPT-2-family weak and strong models fully fine-tuned
with a linear head on the last token, as in Burns et al. This project's
choices: the three splits are drawn disjointly from the pooled
``data.hf_splits`` by ``data/splits.py`` (the peer takes the test split from
the hub's test or validation split), 3000 / 3000 / 2000 examples (BoolQ's
train split holds 9,427 rows), texts cut on the right to 256 tokens (counted),
and the learning rates below.

Offline, each entry is tested on a fixture in the hub's schema through the same
loader (tests/test_files_task.py), against the peer function's output.

Variants: sciq (the default), boolq, cosmos_qa, amazon_polarity, anthropic_hh.
"""

import ml_collections

from w2sg_jax import losses
from w2sg_jax import config_lib
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
  config_lib.add_tuning_grids(c)
  return c
