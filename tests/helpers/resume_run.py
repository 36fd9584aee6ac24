"""A training run for the kill-and-resume test: `python -m tests.helpers.resume_run WORKDIR STEPS SLEEP`."""

import json
import os
import sys
import time

import jax
import numpy as np

from tests.helpers import tiny
from w2sg_jax import train


def main():
  workdir, num_steps, sleep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
  x, probs = tiny.data()
  trainer, state = tiny.make_trainer(num_devices=len(jax.devices()), num_steps=num_steps)
  # Slows the loop so the parent can kill it partway; it changes no number.
  on_step = (lambda step: time.sleep(sleep)) if sleep > 0 else None
  result = train.fit(trainer, state, tiny.batches(x, probs, 32), num_steps=num_steps, workdir=workdir,
                     save_every=5, log_every=1, progress=False, on_step=on_step)
  params = jax.tree.map(np.asarray, jax.device_get(result.state.params))
  flat = {"/".join(map(str, k)): v.tolist() for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  with open(os.path.join(workdir, "final.json"), "w") as f:
    json.dump({"params": flat, "history": result.history, "resumed_from": result.resumed_from}, f)


if __name__ == "__main__":
  main()
