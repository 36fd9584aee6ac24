"""Flax NNX models: BERT/MiniLM and GPT-2 from Hugging Face weights, plus heads."""

from w2sg_jax.models.bert import Bert, BertConfig
from w2sg_jax.models.gpt2 import GPT2, GPT2Config
from w2sg_jax.models.heads import (
    FeatureHead,
    MLPHead,
    RewardModel,
    SequenceClassifier,
    last_token_pool,
    mean_pool,
    trainable_filter,
)
from w2sg_jax.models.pretrained import default_minilm_path, load_pretrained

__all__ = [
    "Bert",
    "BertConfig",
    "FeatureHead",
    "GPT2",
    "GPT2Config",
    "MLPHead",
    "RewardModel",
    "SequenceClassifier",
    "default_minilm_path",
    "last_token_pool",
    "load_pretrained",
    "mean_pool",
    "trainable_filter",
]
