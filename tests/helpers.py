"""Factories for small configs used across the tests: ``build_*_config(**overrides)``."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
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


def examples_of(table, tokenizer, cfg):
    """``step_sae.data.tokenize_steps`` of a step table at a step-SAE config's token limits."""
    from reasonlens.step_sae import data as step_data

    return step_data.tokenize_steps(table, tokenizer, cfg.max_context_tokens, cfg.max_step_tokens)


def write_tiny_real_sources(folder) -> None:
    """Tiny OpenThoughts-114k and LMSYS-Chat-1M files (their schemas): ot.jsonl, chat.jsonl."""
    ot = [{"problem": f"What is {i} + {i}?", "deepseek_reasoning": f"Hmm, {i} + {i} = {2 * i}.",
           "deepseek_solution": f"The answer is {2 * i}.", "domain": "math", "test_cases": "",
           "starter_code": ""} for i in range(40)]
    chat = [{"conversation": [{"role": "user", "content": f"Name a colour {i}."},
                              {"role": "assistant", "content": "Blue, but maybe red."}],
             "language": "English", "model": "toy"} for i in range(40)]
    pd.DataFrame(ot).to_json(folder / "ot.jsonl", orient="records", lines=True)
    pd.DataFrame(chat).to_json(folder / "chat.jsonl", orient="records", lines=True)
