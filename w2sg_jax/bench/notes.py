"""The report's "Performance notes": what was measured while profiling, and this run's figures.

``FINDINGS`` is a static record of experiments run on the project's 2-core
CPU machines (JAX 0.10.2, torch 2.13.0), each timed round-robin against a
baseline in the same process, with the load it ran under; ``render`` appends
what the current run shows.
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
     "fusion after another, most on ONE thread (only large loop fusions are split over the cores), "
     "PyTorch's elementwise kernels use both."),
    ("Exact GELU.",
     "erf forward (8 ms/layer), exp in the backward (7 ms/layer) and the products (7 ms/layer): "
     "~130 ms/step, vs ~32 ms/step for torch's gelu + gelu_backward. The tanh form costs the same "
     "in XLA (0.995x), so approximating buys nothing and would break parity with Hugging Face."),
    ("Embedding gradient.",
     "Zero-filling the dense [30522, 384] gradient before the scatter: 28 ms/step on one thread "
     "(2.5%), plus ~20 ms of AdamW on the embedding. Inherent to training the embedding with AdamW."),
    ("XLA flags (ratio JAX/eager, baseline 0.95; idle AMD EPYC).",
     "--xla_cpu_enable_fast_math=true 0.94; --xla_cpu_use_onednn=true 0.95; "
     "--xla_cpu_experimental_ynn_fusion_type= (Eigen dots) 0.91; "
     "--xla_cpu_enable_concurrency_optimized_scheduler=true 0.95; --xla_cpu_use_fusion_emitters=false "
     "0.86; --xla_cpu_parallel_codegen_split_count=1 0.94; XNN graph fusion GREEDY 0.92; "
     "--xla_cpu_use_thunk_runtime=false is no longer supported. None helps."),
    ("XLA options again, per executable (Intel Xeon, load 7-11).",
     "Compiled side by side with `lowered.compile(compiler_options=...)` and timed round-robin, step "
     "time vs the default: xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED 1.19x slower; "
     "xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY 1.16x slower; "
     "xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE (elementwise "
     "work in YNNPACK's thread pool) 1.29x slower, with ..._REDUCE as well 1.27x slower; same loss. Large "
     "loop fusions are already split over the cores (`outer_dimension_partitions: 2` in the compiled "
     "HLO); what runs on one core is the long sequence of small dependent fusions. No option adopted."),
    ("Matmul layouts.",
     "In the profile, the backward's dX = dY W^T products looked 2x slower than the forward's X W; alone, "
     "[2048, 1536] x [1536, 384] runs at the same rate in NN, NT and TN forms (YNNPACK, XNNPACK, oneDNN "
     "and Eigen within 10-20% of each other). The difference was concurrency: dX and dW of a layer run "
     "side by side and share the cores. No layout change adopted."),
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
     "dominates a millisecond step; heads on cached features belong in the in-memory vmap engine "
     "(section c), the stream in transformer students, whose second-long step hides it."),
    ("Simulated devices.",
     "The same MiniLM step data-parallel over 2 forced CPU devices (`--xla_force_host_platform_"
     "device_count=2`, mesh of 2): 0.985 / 0.976 of the 1-device time; 4 devices 1.063. For the small "
     "2x128 BERT of section f, 4 devices take ~0.6x the 1-device time: its ops are small, so the "
     "single-threaded elementwise share is larger and overlapping it pays more."),
    ("The batch in independent chains: adopted (w2sg_jax/cpu.py).",
     "k interleaved slices of the batch through the model as independent subgraphs, logits restacked, "
     "one loss on the whole batch (`train.train_step(num_chains=None)`, `tweets.pooled_layers`). "
     "MiniLM step, k = 1/2/4/8 at load 4-5, two rounds of 6: 1.00 / 1.02-1.03 / 1.11-1.14 / 1.17-1.18x "
     "the one-chain speed; compile 11.7 / 9.6 / 17.0 / 24.1 s (tracing once per chain cost 4x in "
     "lowering until the chain function was traced once and called k times). GPT-2 small at load 6-8: "
     "k=2 1.11x in both rounds, k=4 0.87-1.10x; on an idle AMD EPYC earlier, k=4 beat k=2 (0.88-0.95 "
     "vs 0.94 of the plain step time). The MiniLM encoder pass (batches of 128): 4 chains 1.15-1.17x "
     "one chain. Default: 4 chains on CPU (8 would exceed the 2x compile budget), 1 on GPU/TPU and "
     "for small models. The same parameters to 1e-6 (tests/test_cpu.py)."),
]


def _live(results: dict[str, Any]) -> list[str]:
  lines = []
  a = results["sections"].get("a") or results["sections"].get("b") or {}
  for m in a.get("models", []):
    j, jp, e = m.get("jax"), m.get("jax_plain"), m.get("torch_eager")
    if not isinstance(j, dict):
      continue
    fmt = lambda v: "/".join(f"{x:.1f}" for x in v["examples_per_s"])
    line = f"This run, {m['label']}: JAX default ({m.get('chains', 1)} chain(s)) {fmt(j)} ex/s per round"
    if isinstance(jp, dict):
      line += f", one chain {fmt(jp)} (default / one chain, worst round {m['ratios']['jax_plain']['worst']:.2f}x)"
    if isinstance(e, dict):
      line += f"; PyTorch eager {fmt(e)} (JAX / eager, worst round {m['ratios']['torch_eager']['worst']:.2f}x)"
    prof = (m.get("jax_profile") or {}).get("jax", {})
    if "by_kind" in prof:
      mm = prof["by_kind"].get("matmul", 0.0)
      line += (f"; matmuls {100 * mm / prof['busy_ms']:.0f}% of the profiled JAX step, "
               f"op concurrency {prof['parallelism']:.2f}")
    lines.append(f"- {line}.")
  return lines


def render(results: dict[str, Any]) -> list[str]:
  lines = [f"- **{what}** {gave}" for what, gave in FINDINGS]
  live = _live(results)
  if live:
    lines += ["", "Live figures:", ""] + live
  return lines
