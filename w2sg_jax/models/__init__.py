"""Flax NNX models: BERT/MiniLM, GPT-2, Llama/Qwen2 and GPT-NeoX from Hugging
Face weights, plus heads and LoRA adapters."""

from w2sg_jax.models.bert import Bert, BertConfig
from w2sg_jax.models.gpt2 import GPT2, GPT2Config
from w2sg_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig
from w2sg_jax.models.llama import Llama, LlamaConfig, RopeConfig
from w2sg_jax.models.lora import (
    LoRAConfig,
    LoRALinear,
    LoRAParam,
    apply_lora,
    lora_trainable_filter,
    merge_lora,
    split_lora_model,
)
from w2sg_jax.models.heads import (
    FeatureHead,
    MLPHead,
    RewardModel,
    SequenceClassifier,
    last_token_pool,
    mean_pool,
    trainable_filter,
)
from w2sg_jax.models.pretrained import SafetensorsReader, default_minilm_path, load_pretrained

__all__ = [
    "Bert",
    "BertConfig",
    "FeatureHead",
    "GPT2",
    "GPT2Config",
    "GPTNeoX",
    "GPTNeoXConfig",
    "Llama",
    "LlamaConfig",
    "LoRAConfig",
    "LoRALinear",
    "LoRAParam",
    "MLPHead",
    "RewardModel",
    "RopeConfig",
    "SafetensorsReader",
    "SequenceClassifier",
    "apply_lora",
    "default_minilm_path",
    "last_token_pool",
    "load_pretrained",
    "lora_trainable_filter",
    "mean_pool",
    "merge_lora",
    "split_lora_model",
    "trainable_filter",
]
