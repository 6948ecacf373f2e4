"""The reference's probes (Miaow-Lab/SSAE, audit section 3), each rule pinned by a hand value.

The last-number correctness rule, the length and first-token labels, the statistics baseline,
R's MLP training (schedule, summed accumulation, dropped incomplete groups, checkpoint on the
validation-best epoch), the context-only and context-end baselines, and one end-to-end table.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from helpers import examples_of
from reasonlens import models, scoring
from reasonlens.step_sae import answers_reference, classifier, inference, probes
from reasonlens.step_sae.model import StepSAE, StepSAEConfig


# --- the last-number rule (classifier_data.py:39-51) ----------------------------------------
@pytest.mark.parametrize("text, number", [
    ("He has 3 + 2 = 5 apples.", "5"),
    ("Tom buys 2 more.\n#### 5", "5"),          # R's merged last step: the final answer
    ("It costs $2.50 each", "2.50"),
    ("The change is -5 dollars", "5"),          # a sign only with a decimal point
    ("The change is -0.5 dollars", "-0.5"),
    ("1,000 people", "000"),                    # a thousands comma splits the number
    ("x = 12.", "12"),
    ("about .5 of it", ".5"),
    ("So we add them.", None),
])
def test_last_number_reads_numbers_as_r_does(text, number):
    assert answers_reference.last_number(text) == number


@pytest.mark.parametrize("reference, decoded, expected", [
    ("He has 3 + 2 = 5 apples.", "\nHe has 5 apples", True),
    ("He has 3 + 2 = 5 apples.", "He has 3 + 2 = 6 apples.", False),
    ("It costs $2.50", "2.5", True),            # compared as floats
    ("0.5", "0.5004", True),                    # within 1e-3
    ("0.5", "0.502", False),
    ("The change is -5", "5", True),            # the sign of an integer is lost on both sides
    ("The change is -0.5", "0.5", False),
    ("1,000 people", "0", True),                # "000" == 0
    ("So we add them.", "So we add them.", False),  # no number: incorrect, not undefined
    ("He has 5 apples.", "He has five apples.", False),
])
def test_last_number_matches_is_r_gsm8k_judge(reference, decoded, expected):
    assert probes.last_number_matches(reference, decoded) is expected


# --- labels and the statistics baseline ------------------------------------------------------
def test_reference_step_labels_count_up_to_128_tokens_and_take_the_first_id(tokenizer):
    long_step = " ".join(["7"] * 300)
    labels = probes.reference_step_labels(["Wait, 3 + 4 = 7.", long_step], tokenizer)
    ids = tokenizer("Wait, 3 + 4 = 7.", add_special_tokens=False)["input_ids"]
    assert labels.step_length.tolist() == [len(ids), 128]
    assert labels.begin_token_id.iloc[0] == ids[0]
    with pytest.raises(ValueError, match=r"1 step\(s\) tokenize to nothing \(row 1\)"):
        probes.reference_step_labels(["a", ""], tokenizer)


def test_reference_statistics_by_hand():
    targets = probes.reference_targets(
        pd.DataFrame({"step_length": [2, 4, 6, 8], "begin_token_id": [5, 5, 7, 9]}),
        pd.DataFrame({"step_length": [1, 1, 1, 1, 1], "begin_token_id": [5, 7, 5, 5, 1]}),
        correctness=(np.array([0, 0, 1, 0]), np.array([1, 0, 0, 1, 1])))
    stats = probes.reference_statistics(targets).set_index(["task", "metric"])["value"]
    assert set(probes.reference_statistics(targets).features) == {probes.STATISTICS}
    assert stats["length", "mse"] == pytest.approx(5.0)  # variance of the training lengths
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert stats["first_token", "cross_entropy"] == pytest.approx(entropy)
    assert stats["first_token", "perplexity"] == pytest.approx(2 * math.sqrt(2))
    assert stats["first_token", "accuracy"] == pytest.approx(3 / 5)  # token 5 predicted
    assert stats["correctness", "positive_ratio"] == pytest.approx(3 / 5)  # the test ratio
    assert stats["correctness", "accuracy"] == pytest.approx(2 / 5)  # majority 0 predicted


# --- metrics and the MLP ---------------------------------------------------------------------
def test_prediction_metrics_by_hand():
    # length: the mean of batch means (R's validation loss), not the mean over examples
    mse = classifier.prediction_metrics("length", np.array([[1.0], [2.0], [3.0]]),
                                        np.array([1, 1, 1]), batch_size=2)
    assert mse == {"mse": pytest.approx((0.5 + 4.0) / 2)}
    tokens = classifier.prediction_metrics("first_token", np.zeros((4, 10)),
                                           np.array([0, 3, 9, 0]), batch_size=4)
    assert tokens["cross_entropy"] == pytest.approx(math.log(10))
    assert tokens["perplexity"] == pytest.approx(10.0)
    assert tokens["accuracy"] == pytest.approx(0.5)  # argmax of ties: class 0
    right = classifier.prediction_metrics("correctness", np.array([[0.1], [-0.1], [0.0]]),
                                          np.array([1, 1, 0]), batch_size=8)
    assert right["accuracy"] == pytest.approx(1 / 3)  # sigmoid(0) = 0.5 counts as positive
    assert right["bce"] == pytest.approx(np.mean([math.log1p(math.exp(-0.1)),
                                                  math.log1p(math.exp(0.1)), math.log(2)]))


def test_lr_schedule_is_r_get_lr_per_epoch():
    cfg = classifier.ReferenceClassifierConfig.reference()
    assert classifier.lr_at(0, cfg) == pytest.approx(1e-6 / 3)
    assert classifier.lr_at(1, cfg) == pytest.approx(2e-6 / 3)
    assert classifier.lr_at(2, cfg) == pytest.approx(1e-6)
    assert classifier.lr_at(501, cfg) == pytest.approx(1e-7 + 0.5 * 0.9e-6)
    assert classifier.lr_at(1000, cfg) == pytest.approx(1e-7)
    assert classifier.lr_at(5000, cfg) == pytest.approx(1e-7)
    assert classifier.lr_at(7, cfg.replace(decay_lr=False)) == 1e-6
    assert classifier.lr_at(2, cfg.replace(n_epochs=2)) == 1e-7  # R divides 0 by 0 here


def test_reference_config_carries_r_values_and_round_trips():
    cfg = classifier.ReferenceClassifierConfig.reference()
    assert (cfg.hidden_dim, cfg.dropout, cfg.n_epochs, cfg.lr, cfg.min_lr) == (
        1024, 0.1, 1000, 1e-6, 1e-7)
    assert (cfg.batch_size, cfg.grad_accum_steps, cfg.weight_decay, cfg.grad_clip,
            cfg.beta2, cfg.seed, cfg.validation_fraction) == (128, 4, 0.01, 1.0, 0.95, 1337, 0.0)
    assert not cfg.shuffle and not cfg.evaluate_after_last_epoch
    assert classifier.ReferenceClassifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"^min_lr=0.1 is outside \[0.0, 0.001\]"):
        classifier.ReferenceClassifierConfig(min_lr=0.1)
    with pytest.raises(ValueError, match=r"^validation_fraction=0.95 is outside"):
        classifier.ReferenceClassifierConfig(validation_fraction=0.95)
    with pytest.raises(ValueError, match=r"^n_epochs=0 is outside \[1, "):
        classifier.ReferenceClassifierConfig.reference(n_epochs=0)


def test_network_is_r_mlp():
    net = classifier.ReferenceClassifier(7, 3, hidden_dim=16, dropout=0.1).net
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert [(m.in_features, m.out_features) for m in net if hasattr(m, "in_features")] == [
        (7, 16), (16, 8), (8, 3)]


def small_cfg(**overrides) -> classifier.ReferenceClassifierConfig:
    return classifier.ReferenceClassifierConfig(**{
        "hidden_dim": 16, "n_epochs": 12, "lr": 1e-2, "min_lr": 1e-3, "batch_size": 8,
        "dropout": 0.0, **overrides})


def separable(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(float)


def test_checkpoint_is_the_validation_best_epoch():
    x, y = separable()
    # validation labels opposite to training: learning only hurts, the untrained state wins
    fitted = classifier.fit_classifier(x, y, "correctness", small_cfg(), validation=(x, 1 - y))
    assert fitted.best_epoch == 0
    assert fitted.val_losses[0] == min(fitted.val_losses.values()) < fitted.val_losses[12]
    # validation = training: the loss falls, a late epoch wins, and the returned network is
    # the state recorded at that epoch
    fitted = classifier.fit_classifier(x, y, "correctness", small_cfg(), validation=(x, y))
    assert fitted.best_epoch > 6
    assert sorted(fitted.val_losses) == list(range(13))  # before each epoch, and after the last
    loss = classifier.batched_loss("correctness", torch.tensor(fitted.outputs(x)),
                                   torch.tensor(y), 8)
    assert loss == pytest.approx(fitted.val_losses[fitted.best_epoch], rel=1e-5)
    assert loss == pytest.approx(min(fitted.val_losses.values()), rel=1e-5)


def test_r_never_evaluates_after_the_last_epoch():
    x, y = separable()
    fitted = classifier.fit_classifier(x, y, "correctness",
                                       small_cfg(evaluate_after_last_epoch=False),
                                       validation=(x, y))
    assert sorted(fitted.val_losses) == list(range(12))


def test_incomplete_accumulation_groups_are_dropped_as_r_does(caplog):
    x, y = separable(n=20)
    # 20 steps in batches of 8: 3 micro-batches per epoch, groups of 2 -> one step per epoch
    fitted = classifier.fit_classifier(x, y, "correctness", small_cfg(grad_accum_steps=2),
                                       validation=(x, y))
    assert fitted.n_optimizer_steps == 12
    # groups of 4 are never complete: no step at all, and a warning says so
    fitted = classifier.fit_classifier(x, y, "correctness", small_cfg(grad_accum_steps=4),
                                       validation=(x, y))
    assert fitted.n_optimizer_steps == 0
    assert len(set(fitted.val_losses.values())) == 1 and fitted.best_epoch == 0
    assert "never updates" in caplog.text


def test_fit_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone():
    x, y = separable()
    cfg = small_cfg(dropout=0.3, n_epochs=4)
    state = torch.get_rng_state()
    a = classifier.fit_classifier(x, y * 3, "length", cfg)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(123)
    b = classifier.fit_classifier(x, y * 3, "length", cfg)
    c = classifier.fit_classifier(x, y * 3, "length", cfg.replace(seed=1))
    np.testing.assert_array_equal(a.outputs(x), b.outputs(x))
    assert not np.allclose(a.outputs(x), c.outputs(x))


def test_fit_errors_name_the_problem():
    x, y = separable()
    with pytest.raises(ValueError, match=r"validation_fraction=0 chooses the checkpoint on the "
                                         r"evaluation set"):
        classifier.fit_classifier(x, y, "correctness", small_cfg(validation_fraction=0.0))
    with pytest.raises(ValueError, match=r"task='first_token' needs n_classes"):
        classifier.fit_classifier(x, y, "first_token", small_cfg())
    with pytest.raises(ValueError, match=r"first-token ids span \[0, 12\] but n_classes=10"):
        classifier.fit_classifier(x, (y * 12).astype(int), "first_token", small_cfg(), 10)
    with pytest.raises(ValueError, match=r"correctness labels must be 0/1"):
        classifier.fit_classifier(x, y * 2, "correctness", small_cfg())
    with pytest.raises(ValueError, match=r"task='size' is unknown"):
        classifier.fit_classifier(x, y, "size", small_cfg())


# --- context-only baselines ------------------------------------------------------------------
def same_context_pair(examples):
    """Steps 0 and 1 of a copy of ``examples`` given step 0's context, different steps."""
    pair = examples.subset([0, 1])
    pair.context_ids[1] = list(pair.context_ids[0])
    assert pair.step_ids[0] != pair.step_ids[1]
    return pair


def test_context_only_states_ignore_the_step(tiny_step_sae, step_table):
    sae, tok = tiny_step_sae
    examples = examples_of(step_table.head(5), tok, sae.cfg)
    states = inference.context_only_states(sae, examples, batch_size=2)
    assert states.shape == (5, 32)
    pair = same_context_pair(examples)
    np.testing.assert_array_equal(*inference.context_only_states(sae, pair))
    for i in range(5):  # the encoder on the context alone, at its last token
        ids = torch.tensor([examples.context_ids[i]])
        with torch.no_grad():
            want = sae.encoder.base_model(input_ids=ids).last_hidden_state[0, -1]
        np.testing.assert_allclose(states[i], want.numpy(), atol=1e-5)


def test_context_only_states_read_the_context_encoder_in_reference_mode(toy_model, tokenizer,
                                                                       step_table):
    tok = copy.deepcopy(tokenizer)
    cfg = StepSAEConfig.reference(32, n_latents=16, max_context_tokens=24, max_step_tokens=12)
    sae = StepSAE.build(toy_model, tok, cfg, seed=0).eval()
    with torch.no_grad():
        for p in sae.context_encoder.parameters():
            p.add_(0.05)
    examples = examples_of(step_table.head(3), tok, cfg)
    states = inference.context_only_states(sae, examples)
    ids = torch.tensor([examples.context_ids[2]])
    with torch.no_grad():
        want = sae.context_encoder.base_model(input_ids=ids).last_hidden_state[0, -1]
        other = sae.encoder.base_model(input_ids=ids).last_hidden_state[0, -1]
    np.testing.assert_allclose(states[2], want.numpy(), atol=1e-5)
    assert not np.allclose(states[2], other.numpy(), atol=1e-3)
    examples.context_ids[1] = []
    with pytest.raises(ValueError, match=r"step 1 has an empty context"):
        inference.context_only_states(sae, examples)


def token_sae(d_in: int = 32, d_sae: int = 24) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(0)))
    return sae


def test_context_end_features_read_the_last_context_token_only(toy_model, tokenizer,
                                                               step_table):
    model = models.HFHookedModel(toy_model, tokenizer)
    sae = token_sae()
    examples = examples_of(step_table.head(5), tokenizer, StepSAEConfig(max_context_tokens=20))
    feats = probes.context_end_features(model, sae, examples, batch_size=2)
    assert feats["layer_acts"].shape == (5, 32) and feats["sae_acts"].shape == (5, 24)
    for i in range(5):
        tokens = torch.tensor([examples.context_ids[i]])
        acts = scoring.capture_activations(model, tokens, "blocks.1.hook_resid_post")[0, -1]
        np.testing.assert_allclose(feats["layer_acts"][i], acts.numpy(), atol=1e-5)
        np.testing.assert_allclose(feats["sae_acts"][i], sae.encode(acts).detach().numpy(),
                                   atol=1e-5)
    pair = probes.context_end_features(model, sae, same_context_pair(examples))
    for values in pair.values():
        np.testing.assert_array_equal(values[0], values[1])


def test_continuation_correctness_judges_the_base_model_continuation(toy_model, tokenizer,
                                                                     step_table):
    model = models.HFHookedModel(toy_model, tokenizer)
    examples = examples_of(step_table.head(3), tokenizer, StepSAEConfig(max_context_tokens=20))
    correct, texts = probes.continuation_correctness(model, tokenizer, examples,
                                                     max_new_tokens=4, return_texts=True)
    assert correct.dtype == bool and len(texts) == 3
    assert correct.tolist() == [probes.last_number_matches(s, t)
                                for s, t in zip(examples.table.step, texts)]
    # the continuation is the argmax chain of the model on the context alone
    tokens = torch.tensor([examples.context_ids[0]])
    ids = []
    for _ in range(4):
        token = int(model(tokens)[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
        tokens = torch.cat([tokens, torch.tensor([[token]])], 1)
    assert texts[0] == tokenizer.decode(ids, skip_special_tokens=True)


# --- reconstruction correctness and the table, end to end -------------------------------------
def test_reconstruction_correctness_judges_the_greedy_decoding(tiny_step_sae, step_table):
    sae, tok = tiny_step_sae
    examples = examples_of(step_table.head(4), tok, sae.cfg)
    correct, texts = probes.reconstruction_correctness(sae, examples, tok, max_new_tokens=5,
                                                       batch_size=3, return_texts=True)
    batch = inference.batches(sae, examples.context_ids, examples.step_ids, 8)
    with torch.no_grad():
        latents = sae.encode(next(batch))
    decoded = inference.greedy_decode(sae, examples.context_ids, latents, 5)
    assert texts == tok.batch_decode(decoded, skip_special_tokens=True)
    assert correct.tolist() == [probes.last_number_matches(s, t)
                                for s, t in zip(examples.table.step, texts)]


def test_reference_probe_table_end_to_end(tiny_step_sae, step_table, toy_model, tokenizer):
    sae, tok = tiny_step_sae
    train = examples_of(step_table.iloc[:48], tok, sae.cfg)
    test = examples_of(step_table.iloc[48:64], tok, sae.cfg)
    correctness = tuple(probes.reconstruction_correctness(sae, e, tok, max_new_tokens=3)
                        for e in (train, test))
    targets = probes.reference_targets(probes.reference_step_labels(train.table.step, tok),
                                       probes.reference_step_labels(test.table.step, tok),
                                       correctness)
    hooked = models.HFHookedModel(toy_model, tokenizer)
    ends = [probes.context_end_features(hooked, token_sae(), e) for e in (train, test)]
    feature_sets = {
        "ssae": tuple(inference.encode_steps(sae, e) for e in (train, test)),
        "context_only": tuple(inference.context_only_states(sae, e) for e in (train, test)),
        "token_sae": (ends[0]["sae_acts"], ends[1]["sae_acts"]),
    }
    cfg = small_cfg(n_epochs=3)
    table = probes.reference_probe_table(feature_sets, targets, cfg, n_classes=len(tok))
    assert list(table.columns) == ["features", "task", "metric", "value"]
    assert np.isfinite(table.value).all()
    wide = table.pivot_table(index="features", columns=["task", "metric"], values="value")
    assert set(wide.index) == {"ssae", "context_only", "token_sae", probes.STATISTICS}
    assert {("length", "mse"), ("first_token", "perplexity"), ("first_token", "accuracy"),
            ("correctness", "accuracy"), ("correctness", "positive_ratio")} <= set(wide.columns)
    # a per-feature-set label (R's continuation label for the token baseline) replaces the shared
    flipped = {"token_sae": {"correctness": tuple(1 - c for c in targets["correctness"])}}
    other = probes.reference_probe_table({"token_sae": feature_sets["token_sae"]},
                                         {"correctness": targets["correctness"]}, cfg,
                                         feature_targets=flipped)
    ratio = other.set_index(["features", "metric"]).value
    assert ratio[probes.STATISTICS, "positive_ratio"] == pytest.approx(correctness[1].mean())
    with pytest.raises(ValueError, match=r"feature set 'bad' has 48/3 train/test rows"):
        probes.reference_probe_table({"bad": (feature_sets["ssae"][0], np.zeros((3, 2)))},
                                     targets, cfg, n_classes=len(tok))


def test_reference_rule_reports_the_best_loss_on_the_set_it_selects_on():
    x, y = separable()
    lengths = 3 + 5 * y
    cfg = small_cfg(validation_fraction=0.0, n_epochs=5)
    table = probes.reference_probe_table({"x": (x[:30], x[30:])},
                                         {"length": (lengths[:30], lengths[30:])}, cfg)
    fitted = classifier.fit_classifier(x[:30], lengths[:30], "length", cfg,
                                       validation=(x[30:], lengths[30:]))
    mse = table.set_index(["features", "metric"]).value["x", "mse"]
    assert mse == pytest.approx(min(fitted.val_losses.values()), rel=1e-5)  # R's best val loss


def test_non_finite_features_are_named():
    x, y = separable()
    x[3, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"every validation loss of task='length' is "
                                                 r"NaN or infinite"):
        classifier.fit_classifier(x, y, "length", small_cfg(n_epochs=2), validation=(x, y))
