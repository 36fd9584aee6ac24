"""The report's "Performance notes": what was measured while profiling, and this run's figures.

``FINDINGS`` is a static record of experiments run once on the project's
2-core CPU machine (load average ~1.5, JAX 0.10.2, torch 2.13.0), each timed
round-robin against a baseline in the same process; ``render`` appends what
the current run shows.
"""

from __future__ import annotations

from typing import Any

# (what was tried, what it gave), MiniLM-L6 b32 s64 unless said otherwise.
FINDINGS: list[tuple[str, str]] = [
    ("Baseline on a quiet machine.",
     "Plain `jax.jit` step (donated state): 28.3-30.6 ex/s vs PyTorch eager 29.7-33.9, JAX/eager "
     "0.87-0.99 over eight runs (typically 0.95); torch.compile 31-34 ex/s. GPT-2 small: 1.8-2.2 vs "
     "2.1-2.2 ex/s, JAX/eager 0.87-1.0. The 15-19 vs 35-41 ex/s of earlier notes did not reproduce "
     "with this code; JAX at 15-19 ex/s is what this machine gives when other work holds a core."),
    ("Load sensitivity.",
     "At load average 5-7 on the 2 cores, PyTorch eager fell to 4.6-7 ex/s while JAX kept 14-16 "
     "(ratio 2.2-3x for JAX): every eager op synchronises 2 OpenMP threads, and a descheduled thread "
     "stalls each one. Compare figures only at low load (the report prints it)."),
    ("Per core.",
     "Pinned to one core (`taskset -c 1`, torch 1 thread): JAX 15.7 vs PyTorch 17.0 ex/s (0.92x). "
     "Two cores: JAX x1.87, PyTorch x1.8."),
    ("Where the JAX step goes (profiler).",
     "Matmuls 806 ms/step (~70%, ~166 GFLOP/s, both cores via YNNPACK); elementwise fusions 189 ms, "
     "fills/broadcasts 71, transposes 47, reductions 33. torch.profiler on the same step: mm+addmm "
     "704 ms, everything else ~185 ms. The gap is the non-matmul work: XLA:CPU runs each elementwise "
     "fusion on ONE thread, PyTorch's elementwise kernels use both."),
    ("Exact GELU.",
     "erf forward (8 ms/layer), exp in the backward (7 ms/layer) and the products (7 ms/layer): "
     "~130 ms/step, vs ~32 ms/step for torch's gelu + gelu_backward. The tanh form costs the same "
     "in XLA (0.995x), so approximating buys nothing and would break parity with Hugging Face."),
    ("Embedding gradient.",
     "Zero-filling the dense [30522, 384] gradient before the scatter: 28 ms/step on one thread "
     "(2.5%), plus ~20 ms of AdamW on the embedding. Inherent to training the embedding with AdamW."),
    ("XLA flags (ratio JAX/eager, baseline 0.95).",
     "--xla_cpu_enable_fast_math=true 0.94; --xla_cpu_use_onednn=true 0.95; "
     "--xla_cpu_experimental_ynn_fusion_type= (Eigen dots) 0.91; "
     "--xla_cpu_enable_concurrency_optimized_scheduler=true 0.95; --xla_cpu_use_fusion_emitters=false "
     "0.86; --xla_cpu_parallel_codegen_split_count=1 0.94; XNN graph fusion GREEDY 0.92; "
     "--xla_cpu_use_thunk_runtime=false is no longer supported. None helps."),
    ("Model variants (step time vs baseline).",
     "One fused QKV matmul 1.006; `jax.nn.dot_product_attention` 1.011; tanh GELU 0.995. No change "
     "to w2sg_jax/models is worth making for CPU speed."),
    ("Step plumbing.",
     "Donated vs not donated state: same time (donation saves memory only). "
     "`jax.default_matmul_precision('highest' | 'bfloat16')`: no effect on CPU float32 (within the "
     "+-3% noise). The Trainer compiles once per run (tests check `num_traces == 1`)."),
    ("Weak-label stream for head-sized steps.",
     "An MLP-head step fed from memory: 0.58 ms; by the Grain stream with 2 prefetch threads: 3.4 ms; "
     "without prefetch: 2.1 ms; labels read record by record from array_record: 8.5 ms. On 2 cores "
     "the prefetch threads compete with XLA for the cores and Grain's per-example Python work "
     "dominates a millisecond step; heads on cached features belong in the in-memory sweep engine "
     "(section c), the stream in transformer students, whose second-long step hides it."),
    ("Simulated devices.",
     "The same MiniLM step data-parallel over 2 forced CPU devices (`--xla_force_host_platform_"
     "device_count=2`, mesh of 2): 0.985 / 0.976 of the 1-device time; 4 devices 1.063. For the small "
     "2x128 BERT of section f, 4 devices take ~0.6x the 1-device time: its ops are small, so the "
     "single-threaded elementwise share is larger and overlapping it pays more."),
    ("What helps a little: the batch in independent chains (proposed for train.py).",
     "Running the model on k interleaved slices of the batch and restacking the logits "
     "(`w2sg_jax.bench.step.chained_apply`) gives XLA k independent subgraphs whose single-threaded "
     "elementwise work its executor overlaps. Step time vs the plain step, MiniLM: k=2 0.947-0.988 "
     "(five runs), k=4 0.906-1.01 (nine runs, median ~0.96); GPT-2 small: k=2 0.937, k=4 0.88-0.95 "
     "(four runs). Same loss to "
     "1e-7; compile 3.0 -> 4.3 (k=2) -> 6.4-7.2 s (k=4) for MiniLM. The gain needs both cores free: "
     "with another process on one core (load > 2) it shrinks to nothing. Change, if wanted: add "
     "`chains: int = 1` to `train.train_step` and `Trainer`, and in `loss_of` call "
     "`chained_apply(apply_fn, chains)` (moved from w2sg_jax/bench/step.py into train.py) instead "
     "of `apply_fn`; expose it as `train.chains` in configs (2-4 on CPU, 1 on GPU/TPU, where it "
     "would only shrink the matmuls). It keeps each chain's rows on their devices, so it is safe "
     "on a `data` mesh (tests/test_bench.py checks 8 devices)."),
]


def _live(results: dict[str, Any]) -> list[str]:
  lines = []
  a = results["sections"].get("a") or results["sections"].get("b") or {}
  for m in a.get("models", []):
    j, jc = m.get("jax"), m.get("jax_chains")
    e = m.get("torch_eager")
    if isinstance(j, dict) and isinstance(jc, dict):
      line = (f"This run, {m['label']}: JAX {j['examples_per_s']:.1f} ex/s, with {m['chains']} chains "
              f"{jc['examples_per_s']:.1f} ({j['step']['median_s'] / jc['step']['median_s']:.2f}x)")
      if isinstance(e, dict):
        line += (f"; PyTorch eager {e['examples_per_s']:.1f} (JAX/eager {j['examples_per_s'] / e['examples_per_s']:.2f}, "
                 f"chains/eager {jc['examples_per_s'] / e['examples_per_s']:.2f})")
      prof = m.get("jax_profile", {})
      if "by_kind" in prof:
        mm = prof["by_kind"].get("matmul", 0.0)
        line += f"; matmuls {100 * mm / prof['busy_ms']:.0f}% of the profiled JAX step"
      lines.append(f"- {line}.")
  return lines


def render(results: dict[str, Any]) -> list[str]:
  lines = [f"- **{what}** {gave}" for what, gave in FINDINGS]
  live = _live(results)
  if live:
    lines += ["", "Live figures:", ""] + live
  return lines
