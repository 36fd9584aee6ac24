"""Tasks: what each data set contributes to the pipeline, by name."""

from __future__ import annotations

import importlib

from w2sg_jax.data.task import Task

# name -> "module:class", imported on use so a task's heavy dependencies
# (tokenizers, TFDS builders, pretrained weights) load only when it runs.
_TASKS = {
    "synthetic": "w2sg_jax.tasks.synthetic:SyntheticTask",
    "tweets": "w2sg_jax.tasks.tweets:TweetsTask",
    "preference": "w2sg_jax.tasks.preference:PreferenceTask",
    "text_classification": "w2sg_jax.tasks.text_classification:TextClassificationTask",
    "files": "w2sg_jax.tasks.files:FilesTask",
}


def get(name: str) -> Task:
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}.")
  module, cls = _TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)()
