"""Training-step benchmarks: JAX vs PyTorch (a), arithmetic efficiency (b), loss overhead (d).

A step is forward + backward + global-norm clipping + AdamW on every
parameter of a sequence classifier (encoder, pooling, linear head) with the
``js`` loss on soft targets: ``w2sg_jax.train.train_step`` under ``jax.jit``
with the state donated (exactly what ``Trainer`` runs on one device), against
the same architecture in plain PyTorch (``torch_ref``) with the same weights,
the same batch and the same optimizer settings. ``jax`` is the step as the
library runs it by default (on a multi-core CPU: the batch in independent
chains, ``w2sg_jax.cpu``); ``jax_plain`` is the same step in one chain, kept
to show what the default buys. Every comparison is timed round-robin in
rounds (``timing.time_rounds``); the headline ratio is the worst round.

FLOPs per step come from three independent counts: XLA's cost analysis of the
compiled step, PyTorch's ``FlopCounterMode`` on one forward + backward, and
the analytic transformer count

.. math::

  F = 6 N_\\text{matmul} B T + 12 L B T^2 D

(N_matmul: parameters that enter matrix products, i.e. everything but the
embeddings, biases and norms; the second term is the attention scores and
their weighted sum, forward 4 L B T^2 D, backward twice that).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2sg_jax import config as schema
from w2sg_jax import cpu as cpu_lib
from w2sg_jax import losses as losses_lib
from w2sg_jax import train
from w2sg_jax.bench import llama as llama_bench
from w2sg_jax.bench import profile, timing
from w2sg_jax.models import Bert, BertConfig, GPT2, GPT2Config, Llama, SequenceClassifier

OPT = schema.OptimizerConfig(name="adamw", learning_rate=1e-5, schedule="constant", weight_decay=0.01, grad_clip=1.0)
NUM_CLASSES = 2

# all-MiniLM-L6-v2's config.json, used when the weights package is absent.
MINILM_CONFIG = BertConfig(
    vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
)
GPT2_SMALL = GPT2Config()  # 124M: 12 layers, 768 wide, 12 heads.


@dataclasses.dataclass(frozen=True)
class StepCase:
  """One benchmarked model and batch shape."""

  name: str
  label: str
  arch: str  # "bert" | "gpt2" | "llama"
  config: Any
  batch: int
  seq: int
  pretrained: bool = False  # Load the packaged MiniLM weights when available.


def cases(quick: bool) -> list[StepCase]:
  if quick:
    return [
        StepCase("minilm", "BERT (tiny, --quick) b8 s16", "bert",
                 BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=64), 8, 16),
        StepCase("gpt2", "GPT-2 (tiny, --quick) b4 s16", "gpt2",
                 GPT2Config(vocab_size=512, n_embd=64, n_layer=1, n_head=4, n_positions=64), 4, 16),
        StepCase(**llama_bench.spec(quick=True)),
    ]
  return [
      StepCase("minilm", "MiniLM-L6 BERT b32 s64", "bert", MINILM_CONFIG, 32, 64, pretrained=True),
      StepCase("gpt2", "GPT-2 small (124M) b8 s128", "gpt2", GPT2_SMALL, 8, 128),
      StepCase(**llama_bench.spec(quick=False)),  # Against transformers.LlamaModel.
  ]


# ------------------------------------------------------------------ inputs


def make_batch(case: StepCase, seed: int = 0) -> dict[str, np.ndarray]:
  """Random token ids; every other row right-padded over its last quarter; Dirichlet targets."""
  rng = np.random.default_rng(seed)
  vocab = case.config.vocab_size
  ids = rng.integers(1, vocab, (case.batch, case.seq)).astype(np.int32)
  mask = np.ones((case.batch, case.seq), np.int32)
  mask[::2, case.seq - case.seq // 4:] = 0
  targets = rng.dirichlet(np.ones(NUM_CLASSES), case.batch).astype(np.float32)
  return {"input_ids": ids, "attention_mask": mask, "targets": targets}


def build_jax_model(case: StepCase) -> tuple[SequenceClassifier, str]:
  """The classifier and where its weights came from."""
  source = "random init"
  if case.arch == "bert":
    encoder = None
    if case.pretrained:
      try:
        from w2sg_jax.models import default_minilm_path, load_pretrained

        encoder, _ = load_pretrained(default_minilm_path())
        source = "all-MiniLM-L6-v2 weights"
      except (ModuleNotFoundError, FileNotFoundError):
        encoder = None
    if encoder is None:
      encoder = Bert(case.config, rngs=nnx.Rngs(0))
  elif case.arch == "llama":
    encoder = Llama(case.config, rngs=nnx.Rngs(0))
  else:
    encoder = GPT2(case.config, rngs=nnx.Rngs(0))
  model = SequenceClassifier(encoder, NUM_CLASSES, rngs=nnx.Rngs(1))
  # The head starts at zero by design; a small random head lets the gradient
  # reach the encoder from step one, so the two frameworks' losses can be compared.
  k = model.head.out.kernel
  k[...] = 0.02 * jax.random.normal(jax.random.key(2), k.shape, jnp.float32)
  return model, source


def jax_inputs(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
  return {
      "inputs": {"input_ids_BxT": jnp.asarray(batch["input_ids"]),
                 "attention_mask_BxT": jnp.asarray(batch["attention_mask"])},
      "targets": jnp.asarray(batch["targets"]),
      "mask": jnp.ones((len(batch["targets"]),), jnp.float32),
  }


def jitted_step(apply_fn, loss_fn, tx, schedule, num_steps: int = 1000, num_chains: int | None = None):
  """``train.train_step`` jitted as ``Trainer`` does on one device: state donated."""
  return jax.jit(
      functools.partial(train.train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx,
                        schedule=schedule, num_steps=num_steps, num_chains=num_chains),
      donate_argnums=(0,),
  )


@dataclasses.dataclass
class JaxStep:
  """A compiled step with its own state; ``__call__`` runs one update in place."""

  compiled: Any
  state: Any
  batch: Any
  compile_s: float
  flops: float | None
  state_bytes: dict[str, int]
  chains: int
  last_metrics: Any = None

  def __call__(self):
    self.state, self.last_metrics = self.compiled(self.state, self.batch)
    return self.state, self.last_metrics


def make_jax_step(model: nnx.Module, batch: Mapping[str, np.ndarray], loss: str = "js", *,
                  num_chains: int | None = None, **loss_kw) -> JaxStep:
  """The compiled step; ``num_chains=None`` is the library's default for this platform and model."""
  apply_fn, params, frozen = train.split_model(model)
  tx, schedule = train.make_optimizer(OPT, 1000)
  # A private copy: the step donates its state, and the model's own arrays must
  # survive (other steps and the PyTorch copy are built from them).
  state = jax.tree.map(lambda x: jnp.array(x, copy=True), train.init_state(params, frozen, tx, 0))
  jb = jax_inputs(batch)
  chains = cpu_lib.resolve_num_chains(num_chains, len(batch["targets"]), (params, frozen), jb["inputs"])
  step = jitted_step(apply_fn, losses_lib.get(loss, **loss_kw), tx, schedule, num_chains=chains)
  compiled, compile_s = timing.compile_timed(step, state, jb)
  sizes = {"params": timing.tree_bytes(state.params), "opt_state": timing.tree_bytes(state.opt_state)}
  return JaxStep(compiled, state, jb, compile_s, timing.xla_flops(compiled), sizes, chains)


def analytic_flops(case: StepCase) -> float:
  """6 N_matmul B T + 12 L B T^2 D for one training step (see module docstring)."""
  c = case.config
  if case.arch == "llama":
    return llama_bench.analytic_flops(c, case.batch, case.seq, NUM_CLASSES)
  if case.arch == "bert":
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
  else:
    d, f, layers = c.n_embd, c.inner_size, c.n_layer
  n_matmul = layers * (4 * d * d + 2 * d * f) + d * NUM_CLASSES / case.seq  # Head: once per example.
  tokens = case.batch * case.seq
  return 6.0 * n_matmul * tokens + 12.0 * layers * case.batch * case.seq**2 * d


def state_sizes(quick: bool) -> dict[str, dict[str, int]]:
  """Parameter and AdamW-state bytes of each benchmarked model, from shapes alone (no compile)."""
  out = {}
  for case in cases(quick):
    def build(case=case):
      enc = {"bert": Bert, "llama": Llama}.get(case.arch, GPT2)(case.config, rngs=nnx.Rngs(0))
      return SequenceClassifier(enc, NUM_CLASSES, rngs=nnx.Rngs(1))

    model = nnx.eval_shape(build)
    _, params, _ = train.split_model(model)
    tx, _ = train.make_optimizer(OPT, 1000)
    opt_state = jax.eval_shape(tx.init, params)
    nbytes = lambda tree: int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
    out[case.label] = {"jax_params": nbytes(params), "jax_opt_state": nbytes(opt_state)}
  return out


# ------------------------------------------------------------------- torch


def _torch_side(case: StepCase, model: SequenceClassifier, batch: Mapping[str, np.ndarray], *, compile_model: bool):
  """(step callable, torch model, optimizer) with the JAX model's weights."""
  import torch

  from w2sg_jax.bench import torch_ref

  if compile_model:
    # A cold compile, like JAX's (which has no persistent cache here): Inductor's
    # on-disk cache would otherwise make the reported time depend on earlier runs.
    try:
      import torch._inductor.config as inductor_config

      inductor_config.force_disable_caches = True
    except (ImportError, AttributeError):  # Other torch versions: a warm cache may shorten it.
      pass
  if case.arch == "llama":
    tm = llama_bench.torch_classifier(model)  # transformers.LlamaModel, not torch_ref.
  else:
    cls = torch_ref.TorchBertClassifier if case.arch == "bert" else torch_ref.TorchGPT2Classifier
    tm = cls(case.config, NUM_CLASSES)
    torch_ref.copy_from_jax(tm, model)
  step, opt = torch_ref.make_step(tm, lr=OPT.learning_rate, weight_decay=OPT.weight_decay, grad_clip=OPT.grad_clip,
                                  compile_model=compile_model)
  ids = torch.from_numpy(batch["input_ids"]).long()
  mask = torch.from_numpy(batch["attention_mask"])
  targets = torch.from_numpy(batch["targets"])
  return (lambda: step(ids, mask, targets)), tm, opt, (ids, mask, targets)


def torch_flops(tm, inputs) -> float | None:
  """FLOPs of one forward + backward from ``torch.utils.flop_counter``."""
  import torch

  from w2sg_jax.bench import torch_ref

  try:
    from torch.utils.flop_counter import FlopCounterMode
  except ImportError:
    return None
  ids, mask, targets = inputs
  counter = FlopCounterMode(display=False)
  with counter:
    torch_ref.js_loss(tm(ids, mask), targets).backward()
  tm.zero_grad(set_to_none=True)
  return float(counter.get_total_flops())


def _first_line(e: BaseException) -> str:
  msg = str(e).strip().splitlines()
  return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


# ----------------------------------------------------------------- section a+b


def bench_training_step(*, quick: bool, torch_compile: bool = True,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Sections a (throughput vs PyTorch) and b (FLOPs, efficiency); one pass per model.

  Per model the contenders (``jax``, ``jax_plain`` when the default step is
  chained, ``torch_eager``, ``torch_compile``) are compiled first, then timed
  by :func:`timing.time_rounds`. Every figure is a per-round list; each ratio
  ``jax / other`` (examples/s) is given per round and as its worst round.
  """
  torch, torch_msg = timing.torch_status()
  reps, rounds = timing.reps_rounds(quick)
  n = 512 if quick else 2048
  peak = timing.peak_matmul(n, reps=3 if quick else 10, torch=torch)
  peak_gflops = max(p["gflops"] for p in peak.values())
  log(f"  peak fp32 matmul {n}^3: " + ", ".join(f"{k} {v['gflops']:.0f} GFLOP/s" for k, v in peak.items()))
  models = []
  for case in cases(quick):
    log(f"  {case.label}: building")
    batch = make_batch(case)
    model, source = build_jax_model(case)
    row: dict[str, Any] = {"name": case.name, "label": case.label, "weights": source,
                           "batch": case.batch, "seq": case.seq}
    js = make_jax_step(model, batch)
    row["chains"] = js.chains
    row["jax_compile_s"] = js.compile_s
    row["jax_state_bytes"] = js.state_bytes
    log(f"  {case.label}: jax ({js.chains} chain(s)) compiled in {js.compile_s:.1f} s")
    contenders: dict[str, Callable[[], Any]] = {"jax": js}
    steps = {"jax": js}
    if js.chains > 1:
      jp = make_jax_step(model, batch, num_chains=1)
      row["jax_plain_compile_s"] = jp.compile_s
      contenders["jax_plain"] = steps["jax_plain"] = jp
      log(f"  {case.label}: jax in one chain compiled in {jp.compile_s:.1f} s")
    # First steps from identical weights: every implementation must give the same loss.
    row["first_loss"] = {}
    for k, st in steps.items():
      st()
      row["first_loss"][k] = float(st.last_metrics["loss"])
    tm = t_inputs = None
    missing = torch_msg if torch is None else llama_bench.missing_reference(case.arch)
    row["torch_eager"] = row["torch_compile"] = missing
    if missing is None:
      eager, tm, opt, t_inputs = _torch_side(case, model, batch, compile_model=False)
      row["forward_max_abs_diff"] = llama_bench.forward_max_abs_diff(model, tm, batch)  # Logits, before any step.
      row["first_loss"]["torch"] = float(eager())
      row["torch_state_bytes"] = dict(zip(("params", "opt_state"), (int(b) for b in _torch_bytes(tm, opt))))
      contenders["torch_eager"] = eager
      if torch_compile:
        try:
          compiled_step, tmc, _, _ = _torch_side(case, model, batch, compile_model=True)
          t0 = time.perf_counter()
          compiled_step()
          row["torch_compile_s"] = time.perf_counter() - t0
          contenders["torch_compile"] = compiled_step
          log(f"  {case.label}: torch.compile first step {row['torch_compile_s']:.1f} s")
        except Exception as e:  # Inductor needs a C++ toolchain; report, never crash.
          row["torch_compile"] = f"failed: {_first_line(e)}"
      else:
        row["torch_compile"] = "skipped (--no-torch-compile)"
    # The matmul peak joins the round-robin, so every round has its own peak under the same load.
    contenders.update(timing.matmul_fns(n, torch))
    res = timing.time_rounds(contenders, warmup=1 if quick else 2, reps=reps, rounds=rounds)
    row["peak_rounds"] = timing.peak_from_rounds(res, n)
    fill_rows(row, res, case.batch)
    log("  " + case.label + ": " + "; ".join(
        f"{k} " + "/".join(f"{v:.1f}" for v in row[k]["examples_per_s"]) + " ex/s" for k in contender_names(res)))
    for k, r in row["ratios"].items():
      log(f"    jax / {k}: " + ", ".join(f"{v:.2f}" for v in r["per_round"]) + f" (worst {r['worst']:.2f})")
    # ---- section b: FLOPs and efficiency.
    flops = {"xla": (steps.get("jax_plain") or js).flops, "xla_chained": js.flops, "analytic": analytic_flops(case)}
    if tm is not None:
      flops["torch_counter"] = torch_flops(tm, t_inputs)
    row["flops"] = flops
    ref = flops["xla"] or flops["analytic"]
    row["achieved_gflops"] = {k: [ref / t / 1e9 for t in res.medians(k)] for k in contender_names(res)}
    # Share of the round's peak: the median step against the median product of the same round (same load);
    # the larger framework's product is the reference.
    row["peak_gflops_per_round"] = [max(p["gflops_median"][r] for p in row["peak_rounds"].values())
                                    for r in range(res.rounds)]
    row["efficiency"] = {k: [g / p for g, p in zip(v, row["peak_gflops_per_round"])]
                         for k, v in row["achieved_gflops"].items()}
    row["efficiency_worst"] = {k: min(v) for k, v in row["efficiency"].items()}
    row["jax_profile"] = {}
    for k, st in steps.items():
      try:
        row["jax_profile"][k] = profile.profile_step(st, st.compiled.as_text(), steps=2 if case.arch == "gpt2" else 3)
      except Exception as e:  # The profiler is optional machinery; the figures above stand without it.
        row["jax_profile"][k] = {"error": _first_line(e)}
    models.append(row)
    del js, steps, contenders, tm
  # The machine's peak: the best product seen anywhere, up front or in any round.
  for m in models:
    for fw, p in m.get("peak_rounds", {}).items():
      peak[fw]["gflops"] = max(peak[fw]["gflops"], *p["gflops_best"])
  peak_gflops = max(p["gflops"] for p in peak.values())
  return {"peak": peak, "peak_gflops": peak_gflops, "torch": torch_msg, "reps": reps, "rounds": rounds,
          "models": models}


def contender_names(res: timing.Rounds) -> list[str]:
  """The implementations of a comparison, without the matmul-peak probes timed alongside."""
  return [k for k in res.names if not k.startswith("peak_")]


def fill_rows(row: dict[str, Any], res: timing.Rounds, batch: int) -> None:
  """Per-contender figures and the ratios of ``jax`` to every other contender, from one comparison."""
  names = contender_names(res)
  for name in names:
    row[name] = {"examples_per_s": [batch / t for t in res.medians(name)], "step": res.timing(name)}
  row["ratios"] = {}
  for other in names:
    if other == "jax":
      continue
    per_round = res.speedup("jax", other)
    row["ratios"][other] = {"per_round": per_round, "worst": min(per_round)}
    row[other]["worst_round_ratio"] = min(per_round)  # JAX / this contender, examples/s.


def _torch_bytes(tm, opt):
  from w2sg_jax.bench import torch_ref

  return torch_ref.state_bytes(tm, opt)


# -------------------------------------------------------------------- section d


LOSSES = ("xent", "logconf") + losses_lib.F_DIVERGENCES
STEP_LOSSES = ("xent", "js", "logconf")  # Whole steps: the plain loss, the default, and a batch statistic.
QUICK_LOSSES = ("xent", "js")  # --quick: each loss is one more compile.
LOSS_KW = {"logconf": {"confidence": 0.75, "warmup": 0.2}}


def bench_losses(*, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
  """What each loss adds to a MiniLM step, relative to ``xent``.

  The loss acts on ``[B, C]`` logits only, so its share is timed alone
  (forward + backward of the mean loss, jitted) for every loss, round-robin
  in rounds, which resolves differences far below the step-time noise. Whole
  steps are timed the same way for ``STEP_LOSSES``: ``xent``, the default
  ``js`` and ``logconf``, whose confidence term takes a quantile over the batch.
  """
  case = cases(quick)[0]
  reps, rounds = timing.reps_rounds(quick)
  batch = make_batch(case)
  model, source = build_jax_model(case)
  names = QUICK_LOSSES if quick else LOSSES
  step_names = QUICK_LOSSES if quick else STEP_LOSSES
  steps, compile_s = {}, {}
  for name in step_names:
    steps[name] = make_jax_step(model, batch, name, **LOSS_KW.get(name, {}))
    compile_s[name] = steps[name].compile_s
  log(f"  compiled {len(step_names)} steps, {sum(compile_s.values()):.0f} s in all")
  step_res = timing.time_rounds(steps, warmup=1, reps=reps, rounds=rounds)
  # The loss alone, on logits of the benchmark's shape.
  logits = jax.random.normal(jax.random.key(0), (case.batch, NUM_CLASSES)) * 2.0
  targets = jnp.asarray(batch["targets"])
  alone_fns = {}
  for name in names:
    fn = losses_lib.get(name, **LOSS_KW.get(name, {}))
    g = jax.jit(jax.value_and_grad(lambda z, fn=fn: jnp.mean(fn(z, targets, progress=0.5))))
    alone_fns[name] = lambda g=g: g(logits)
  alone = timing.time_rounds(alone_fns, warmup=3, reps=max(reps, 20), rounds=rounds)
  rows = []
  for name in names:
    a = alone.medians(name)
    r: dict[str, Any] = {"loss": name, "loss_alone_us": [x * 1e6 for x in a]}
    if name in steps:
      r["step_s"] = step_res.medians(name)
      r["step_min_s"] = step_res.timing(name)["min_s"]
      r["relative_to_xent"] = step_res.speedup("xent", name)  # Step time over xent's, per round.
      r["loss_share_of_step"] = [x / t for x, t in zip(a, r["step_s"])]
      r["compile_s"] = compile_s[name]
    else:
      xent_step = step_res.medians("xent")
      r["loss_share_of_step"] = [x / t for x, t in zip(a, xent_step)]  # Of a step of the same model.
    rows.append(r)
  return {"model": case.label, "weights": source, "reps": reps, "rounds": rounds, "rows": rows}
