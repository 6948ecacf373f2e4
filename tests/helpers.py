"""Factories for small configs used across the tests: ``build_*_config(**overrides)``."""

from __future__ import annotations

import random

import numpy as np
import torch

from reasonlens.data import ContextConfig, TokenizerConfig
from reasonlens.lm_training import LMTrainConfig
from reasonlens.models import ToyModelConfig
from reasonlens.world import WorldConfig


def build_world_config(**overrides) -> WorldConfig:
    return WorldConfig(**{"n_problems": 150, "seed": 3, **overrides})


def build_tokenizer_config(**overrides) -> TokenizerConfig:
    return TokenizerConfig(**{"vocab_size": 400, **overrides})


def build_context_config(**overrides) -> ContextConfig:
    return ContextConfig(**{"context_size": 64, **overrides})


def build_toy_model_config(**overrides) -> ToyModelConfig:
    return ToyModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64,
                             "n_ctx": 128, **overrides})


def build_lm_train_config(**overrides) -> LMTrainConfig:
    return LMTrainConfig(**{"n_steps": 5, "batch_size": 4, "eval_every": 5,
                            "n_eval_contexts": 4, "warmup_steps": 2, **overrides})


def scramble_global_rngs(seed: int) -> None:
    """Put Python's, NumPy's and torch's global RNGs in a state that depends on ``seed``.

    Call it between two runs of a seeded function: their results must not change.
    """
    random.seed(seed)
    np.random.seed(seed + 1)
    torch.manual_seed(seed + 2)
