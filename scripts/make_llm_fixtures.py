"""Writes the Llama, Qwen2 and GPT-NeoX reference fixtures for tests/test_models_llm.py.

The package and its tests never import torch or transformers; this script is
the only place they run. It needs its own environment:

  python3 -m venv /tmp/ref_venv
  /tmp/ref_venv/bin/pip install torch==2.13.0 transformers safetensors tokenizers numpy
  /tmp/ref_venv/bin/python scripts/make_llm_fixtures.py

(run from the repository root; about 10 s on 2 CPU cores; the output is
byte-identical from run to run). Last generated with torch 2.13.0,
transformers 5.24.0, tokenizers 0.23.3 (each ``reference.npz`` records them
under ``versions``).

Each model is random and tiny, shares the byte-level BPE ``tokenizer.json``
of ``tiny_gpt2/`` (vocabulary 300), and is saved with ``save_pretrained``:

* ``tiny_llama/``: Llama with grouped-query attention (4 query heads, 2
  key/value heads), ``llama3`` rope scaling whose three frequency regimes
  (kept, interpolated, divided) are all populated, an untied ``lm_head``, and
  weights in several safetensors shards with ``model.safetensors.index.json``;
* ``tiny_qwen2/``: Qwen2 (q/k/v biases, grouped-query attention, tied
  embeddings);
* ``tiny_neox/``: GPT-NeoX with ``rotary_pct=0.25`` and the parallel residual;
  its ``reference.npz`` also holds the states with the sequential residual
  (``use_parallel_residual=False``) for the same weights.

Each ``reference.npz`` holds, for the texts in TEXTS, ``input_ids_{side}``,
``attention_mask_{side}`` and ``hidden_{side}`` (``last_hidden_state``, zero
on padding) for a right- and a left-padded batch with positions
``max(cumsum(mask) - 1, 0)``; ``hidden_alone`` (each text alone, unpadded,
left-aligned); and ``inv_freq`` (the RoPE inverse frequencies). Every tensor,
norm scales and biases included, is drawn at random, so a weight that lands in
the wrong place changes the outputs. Attention runs with
``attn_implementation="eager"``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

TEXTS = [
    "hello world",
    "the cat sat on the mat!",
    "a dog ran! in the park",  # "!" is id 0 in the byte-level alphabet
    "weak labels teach strong students and reward models compare",
    # Long and mostly outside the tokenizer's merges: many byte tokens, so
    # positions reach ~100 and the slow RoPE frequencies turn noticeably.
    "Zebras quickly vexed 42 jumping wizards; Björk's fjord-side gazebo (#7) hums ~ €3.14 & more...",
]


def _randomise(model: torch.nn.Module, std: float, seed: int) -> None:
  """Redraws every parameter: weights N(0, std), norm scales 1 + N(0, 0.1), biases N(0, 0.1)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.copy_(std * noise)


def _pad(seqs: list[list[int]], side: str, pad_id: int = 0):
  t = max(len(s) for s in seqs)
  ids = np.full((len(seqs), t), pad_id, np.int64)
  mask = np.zeros((len(seqs), t), np.int64)
  for i, s in enumerate(seqs):
    sl = slice(0, len(s)) if side == "right" else slice(t - len(s), t)
    ids[i, sl], mask[i, sl] = s, 1
  return ids, mask


def _hidden(trunk, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """``last_hidden_state`` with positions from the mask, zero on padding."""
  pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = trunk(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
        position_ids=torch.tensor(pos),
    ).last_hidden_state.numpy()
  return np.where(mask[..., None] == 1, out, 0.0).astype(np.float32)


def _references(trunk, seqs: list[list[int]], prefix: str = "hidden") -> dict[str, np.ndarray]:
  arrays = {}
  for side in ("right", "left"):
    ids, mask = _pad(seqs, side)
    arrays[f"input_ids_{side}"] = ids.astype(np.int32)
    arrays[f"attention_mask_{side}"] = mask.astype(np.int32)
    arrays[f"{prefix}_{side}"] = _hidden(trunk, ids, mask)
  alone = np.zeros_like(arrays[f"{prefix}_right"])
  for i, s in enumerate(seqs):
    with torch.no_grad():
      alone[i, : len(s)] = trunk(input_ids=torch.tensor([s])).last_hidden_state.numpy()[0]
  arrays[f"{prefix}_alone"] = alone
  return arrays


def _save(model, folder: Path, tokenizer_json: Path, **save_kwargs) -> None:
  if folder.exists():
    shutil.rmtree(folder)
  folder.mkdir(parents=True)
  model.save_pretrained(folder, **save_kwargs)
  (folder / "generation_config.json").unlink(missing_ok=True)
  for f in folder.iterdir():
    os.chmod(f, 0o644)
  shutil.copy(tokenizer_json, folder / "tokenizer.json")


def _write_reference(folder: Path, arrays: dict[str, np.ndarray]) -> None:
  versions = {"torch": torch.__version__, "transformers": transformers.__version__,
              "tokenizers": tokenizers.__version__}
  np.savez_compressed(
      folder / "reference.npz", texts=np.array(TEXTS), versions=np.array(json.dumps(versions)), **arrays
  )
  sizes = {f.name: f.stat().st_size for f in sorted(folder.iterdir())}
  print(f"{folder.name}: {sum(sizes.values()) / 1024:.0f} KB", sizes)


def make_tiny_llama(out: Path, tok: Tokenizer, tokenizer_json: Path) -> None:
  cfg = transformers.LlamaConfig(
      vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      rms_norm_eps=1e-5, tie_word_embeddings=False,
      # head_dim 8: wavelengths 6.3, 44, 314 and 2221 tokens against the
      # thresholds 512 / 4 = 128 and 512 / 1 = 512: two frequencies are
      # kept, one interpolated and one divided by the factor.
      rope_parameters={
          "rope_type": "llama3", "rope_theta": 2500.0, "factor": 8.0,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 512,
      },
      bos_token_id=None, eos_token_id=None, pad_token_id=None,
      attn_implementation="eager",
  )
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(cfg).eval()
  _randomise(model, std=0.2, seed=11)
  folder = out / "tiny_llama"
  _save(model, folder, tokenizer_json, max_shard_size="60KB")
  shards = sorted(folder.glob("model-*.safetensors"))
  assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file(), shards
  seqs = [tok.encode(t).ids for t in TEXTS]
  arrays = _references(model.model, seqs)
  arrays["inv_freq"] = model.model.rotary_emb.inv_freq.numpy()
  _write_reference(folder, arrays)


def make_tiny_qwen2(out: Path, tok: Tokenizer, tokenizer_json: Path) -> None:
  cfg = transformers.Qwen2Config(
      vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
      bos_token_id=None, eos_token_id=None, pad_token_id=None,
      attn_implementation="eager",
  )
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(cfg).eval()
  _randomise(model, std=0.2, seed=12)
  model.tie_weights()
  folder = out / "tiny_qwen2"
  _save(model, folder, tokenizer_json)
  seqs = [tok.encode(t).ids for t in TEXTS]
  arrays = _references(model.model, seqs)
  arrays["inv_freq"] = model.model.rotary_emb.inv_freq.numpy()
  _write_reference(folder, arrays)


def make_tiny_neox(out: Path, tok: Tokenizer, tokenizer_json: Path) -> None:
  cfg = transformers.GPTNeoXConfig(
      vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=2, rotary_pct=0.25,
      rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu",
      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
      attn_implementation="eager",
  )
  torch.manual_seed(0)
  model = transformers.GPTNeoXForCausalLM(cfg).eval()
  _randomise(model, std=0.2, seed=13)
  folder = out / "tiny_neox"
  _save(model, folder, tokenizer_json)
  seqs = [tok.encode(t).ids for t in TEXTS]
  trunk = model.gpt_neox
  arrays = _references(trunk, seqs)
  arrays["inv_freq"] = trunk.rotary_emb.inv_freq.numpy()
  for layer in trunk.layers:
    layer.use_parallel_residual = False
  seq = _references(trunk, seqs, prefix="hidden_sequential")
  arrays.update({k: v for k, v in seq.items() if k.startswith("hidden_sequential")})
  _write_reference(folder, arrays)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", type=Path, default=Path("tests/fixtures/models"))
  args = p.parse_args()
  torch.set_num_threads(2)
  tokenizer_json = args.out / "tiny_gpt2" / "tokenizer.json"
  tok = Tokenizer.from_file(str(tokenizer_json))
  make_tiny_llama(args.out, tok, tokenizer_json)
  make_tiny_qwen2(args.out, tok, tokenizer_json)
  make_tiny_neox(args.out, tok, tokenizer_json)


if __name__ == "__main__":
  main()
