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
    model = models.build_toy_model(build_toy_model_config(), tokenizer, seed=0)
    before = lm_training.evaluate_loss(model, val)
    history = lm_training.train_lm(model, train, val, build_lm_train_config(
        n_steps=30, eval_every=10, lr=1e-2))
    assert list(history.step) == list(range(1, 31))
    assert history.val_loss.notna().sum() == 3
    assert lm_training.evaluate_loss(model, val) < before - 0.5
    assert not model.training


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_restores_the_lowest_validation_loss(tokenizer, contexts, keep_best):
    train, val = contexts
    model = models.build_toy_model(build_toy_model_config(), tokenizer, seed=0)
    # trained on two contexts only, the model memorises them: the validation loss falls, then rises
    history = lm_training.train_lm(model, train[:2], val, build_lm_train_config(
        n_steps=40, eval_every=4, lr=0.01, warmup_steps=1, n_eval_contexts=8, keep_best=keep_best,
        seed=0))
    evaluated = history.val_loss.dropna()
    best, last = evaluated.min(), evaluated.iloc[-1]
    assert best < last - 1e-3  # otherwise this test could not tell best from last
    final = lm_training.evaluate_loss(model, val[:8], 4)
    assert final == pytest.approx(best if keep_best else last, rel=1e-5)


def test_bfloat16_autocast_trains_float32_weights_in_bfloat16_forward_passes(tokenizer, contexts):
    train, val = contexts
    runs = {}
    for dtype in (None, "bfloat16"):
        model = models.build_toy_model(build_toy_model_config(), tokenizer, seed=0)
        seen = []
        model.model.layers[0].mlp.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
        history = lm_training.train_lm(model, train, val, build_lm_train_config(
            n_steps=20, eval_every=10, lr=1e-2, autocast_dtype=dtype))
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert set(seen) == {torch.bfloat16 if dtype else torch.float32}  # training and val
        runs[dtype] = history.val_loss.dropna().to_numpy()
    assert runs["bfloat16"][-1] < runs["bfloat16"][0]  # it learns
    assert runs["bfloat16"] == pytest.approx(runs[None], rel=0.05)  # about as float32 does
    assert not (runs["bfloat16"] == runs[None]).all()  # but it did run in another precision
    with pytest.raises(ValueError, match="autocast_dtype"):
        build_lm_train_config(autocast_dtype="int8")


def test_evaluate_loss_is_the_mean_next_token_loss_over_all_tokens(toy_model, contexts):
    _, val = contexts
    tokens = val[:7, :12]  # batches of 3, 3 and 1 rows: uneven, so per-batch means would differ
    with torch.no_grad():
        logits = toy_model(input_ids=tokens).logits
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    expected = -log_probs.gather(-1, tokens[:, 1:, None]).mean().item()
    assert lm_training.evaluate_loss(toy_model, tokens, batch_size=3) == pytest.approx(
        expected, rel=1e-5)


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_a_tenth():
    cfg = build_lm_train_config(n_steps=12, warmup_steps=2)
    factors = [lm_training._lr_factor(step, cfg) for step in (0, 1, 2, 7, 12, 20)]
    # warm-up (step + 1) / 2; then 0.1 + 0.45 * (1 + cos(pi * (step - 2) / 10)), flat after
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.55, 0.1, 0.1])


def test_empty_tokens_are_a_clear_error(toy_model):
    empty = torch.zeros((0, 8), dtype=torch.long)
    with pytest.raises(ValueError, match="train_tokens"):
        lm_training.train_lm(toy_model, empty, empty, build_lm_train_config())


def test_config_validates_and_round_trips():
    cfg = build_lm_train_config()
    assert lm_training.LMTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_steps"):
        build_lm_train_config(n_steps=0)
