"""Seeds every RNG and builds one tiny world, tokenizer and model per session."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import helpers  # noqa: E402
from reasonlens import data, models  # noqa: E402
from reasonlens.world import generate_world  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def world():
    return generate_world(helpers.build_world_config())


@pytest.fixture(scope="session")
def tokenizer(world):
    texts = data.mix_documents(world.documents, "train", data.MIXES["reasoning"])
    return data.train_tokenizer(texts, helpers.build_tokenizer_config())


@pytest.fixture(scope="session")
def toy_model(tokenizer):
    """A tiny, randomly initialised Llama-style LM for the world's tokenizer."""
    torch.manual_seed(0)
    return models.build_toy_model(helpers.build_toy_model_config(), tokenizer).eval()


@pytest.fixture(scope="session")
def saved_toy_model(tmp_path_factory, toy_model, tokenizer):
    path = tmp_path_factory.mktemp("toy") / "model"
    toy_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
