import math

import pytest
import torch
from helpers import build_lm_train_config, build_toy_model_config

from reasonlens import data, lm_training, models


@pytest.fixture(scope="module")
def contexts(world, tokenizer):
    ids = data.tokenize(tokenizer, data.mix_documents(world.documents, "train",
                                                      data.MIXES["reasoning"]))
    tokens = data.contexts_tensor(data.pack_contexts(ids, data.ContextConfig(context_size=32)))
    return tokens[:-8], tokens[-8:]


def test_training_lowers_the_loss_and_records_history(tokenizer, contexts):
    train, val = contexts
    model = models.build_toy_model(build_toy_model_config(), tokenizer)
    before = lm_training.evaluate_loss(model, val)
    history = lm_training.train_lm(model, train, val, build_lm_train_config(
        n_steps=30, eval_every=10, lr=1e-2))
    assert list(history.step) == list(range(1, 31))
    assert history.val_loss.notna().sum() == 3
    assert lm_training.evaluate_loss(model, val) < before - 0.5
    assert not model.training


def test_keep_best_restores_the_lowest_validation_loss(tokenizer, contexts):
    train, val = contexts
    model = models.build_toy_model(build_toy_model_config(), tokenizer)
    # a learning rate this high diverges after a few steps; the best weights come back
    history = lm_training.train_lm(model, train, val, build_lm_train_config(
        n_steps=20, eval_every=2, lr=0.5, warmup_steps=1, n_eval_contexts=8))
    best = history.val_loss.min()
    assert lm_training.evaluate_loss(model, val[:8], 4) == pytest.approx(best, rel=1e-5)
    assert best < history.val_loss.dropna().iloc[-1] or math.isclose(
        best, history.val_loss.dropna().iloc[-1])


def test_empty_tokens_are_a_clear_error(toy_model):
    empty = torch.zeros((0, 8), dtype=torch.long)
    with pytest.raises(ValueError, match="train_tokens"):
        lm_training.train_lm(toy_model, empty, empty, build_lm_train_config())


def test_config_validates_and_round_trips():
    cfg = build_lm_train_config()
    assert lm_training.LMTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_steps"):
        build_lm_train_config(n_steps=0)
