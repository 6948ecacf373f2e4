"""Reference mode of reasonlens.step_sae: each rule of Miaow-Lab/SSAE pinned by a hand value.

Model and training (the audit's section 1): no pre-encoder bias, the adaptive L1 weight, latent
noise in training only, the ReLU projection of width d_model * k, the prefix before the context,
token masking with (or without) the reference's index shift, the cosine schedule, summed gradient
accumulation, the phase-2 head with its own context encoder, and decoding from latents.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import examples_of

from reasonlens.step_sae import data, inference, training
from reasonlens.step_sae import model as step_model

D_MODEL = 32  # the toy LM's width (tests/helpers.build_toy_model_config)


def reference_config(**overrides) -> step_model.StepSAEConfig:
    return step_model.StepSAEConfig.reference(D_MODEL, **{"max_context_tokens": 24,
                                                          "max_step_tokens": 16, **overrides})


def quiet_train_config(**overrides) -> training.StepSAETrainConfig:
    return training.StepSAETrainConfig.reference(**{
        "n_steps": 4, "batch_size": 4, "grad_accum_steps": 1, "lr": 3e-3, "warmup_steps": 0,
        "lr_decay_steps": None, "min_lr": 0.0, "head_n_steps": 5, "head_lr": 2e-3,
        **overrides})


def build(toy_model, tokenizer, seed=0, **overrides) -> step_model.StepSAE:
    return step_model.StepSAE.build(toy_model, tokenizer, reference_config(**overrides),
                                    seed=seed)


def batch_of(sae, examples) -> data.StepBatch:
    return data.collate(examples.context_ids, examples.step_ids, sae.sep_id, sae.eos_id,
                        sae.pad_id)


# --- configs ---------------------------------------------------------------------------------
def test_the_reference_config_holds_the_reference_constants():
    cfg = step_model.StepSAEConfig.reference(896)
    assert (cfg.n_latents, cfg.d_projection, cfg.n_prefix) == (896, 896, 1)
    assert (cfg.l1_penalty, cfg.l1_coefficient, cfg.l1_target) == ("adaptive", 1e-4, 3.0)
    assert (cfg.l1_update_every, cfg.l1_increase_factor, cfg.l1_decrease_factor) == (100, 1.01,
                                                                                      0.99)
    assert (cfg.l1_min_coefficient, cfg.l1_max_coefficient) == (1e-6, 0.1)
    assert (cfg.pre_bias, cfg.latent_noise_std, cfg.projection_activation) == (False, 0.01,
                                                                               "relu")
    assert (cfg.prefix_position, cfg.token_mask_rate, cfg.mask_index_shift) == ("start", 0.1,
                                                                               True)
    assert (cfg.loss_reduction, cfg.context_head) == ("token", "reference")
    assert step_model.StepSAEConfig.reference(896, n_prefix=2).n_latents == 1792
    assert step_model.StepSAEConfig.reference(896, n_latents=64).d_projection == 64
    ours = step_model.StepSAEConfig()
    assert (ours.pre_bias, ours.l1_penalty, ours.latent_noise_std, ours.prefix_position,
            ours.token_mask_rate, ours.context_head) == (True, "squared", 0.0, "step", 0.0, "ours")
    assert step_model.StepSAEConfig.from_dict(cfg.to_dict()) == cfg
    train = training.StepSAETrainConfig.reference()
    assert (train.batch_size, train.grad_accum_steps, train.lr, train.lm_lr) == (16, 8, 1e-6, None)
    assert (train.beta1, train.beta2, train.weight_decay, train.grad_clip) == (0.9, 0.95, 0.01,
                                                                               1.0)
    assert (train.lr_schedule, train.warmup_steps, train.min_lr, train.lr_decay_steps) == (
        "cosine", 2, 1e-7, 30)
    assert training.StepSAETrainConfig.from_dict(train.to_dict()) == train


@pytest.mark.parametrize("field, value, match", [
    ("l1_penalty", "abs", r"l1_penalty='abs' is not valid; use one of \['squared', 'adaptive'\]"),
    ("prefix_position", "end", "prefix_position='end' is not valid"),
    ("context_head", "big", "context_head='big' is not valid"),
    ("projection_activation", "tanh", "projection_activation='tanh' is not valid"),
    ("loss_reduction", "sum", "loss_reduction='sum' is not valid"),
    ("token_mask_rate", 1.5, r"token_mask_rate=1.5 is outside \[0.0, 1.0\]"),
    ("l1_decrease_factor", 1.2, r"l1_decrease_factor=1.2 is outside \[0.0, 1.0\]"),
    ("l1_min_coefficient", 0.5, r"l1_min_coefficient=0.5 is outside \[0.0, 0.1\]"),
    ("pre_bias", "no", "pre_bias='no' must be true or false"),
])
def test_the_reference_fields_reject_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        reference_config(**{field: value})


def test_the_train_config_rejects_a_bad_schedule():
    with pytest.raises(ValueError, match="lr_schedule='linear' is not valid"):
        quiet_train_config(lr_schedule="linear")
    with pytest.raises(ValueError, match=r"lr_decay_steps=2 is outside \[3, inf\]"):
        quiet_train_config(warmup_steps=2, lr_decay_steps=2)
    with pytest.raises(ValueError, match="grad_accum_steps=0"):
        quiet_train_config(grad_accum_steps=0)


# --- the adaptive L1 weight ------------------------------------------------------------------
def test_the_adaptive_l1_weight_updates_every_100_micro_batches_on_their_mean():
    weight = training.AdaptiveL1Weight(step_model.StepSAEConfig.reference(896))
    seen = []
    # 100 x 4.0 (mean 4 > 3: x1.01), then 50 x 2.0 + 50 x 4.0 (mean exactly 3, not above:
    # x0.99), then 100 x 3.5 (x1.01), then 99 more that are not yet averaged
    for value in [4.0] * 100 + [2.0] * 50 + [4.0] * 50 + [3.5] * 100 + [100.0] * 99:
        seen.append(weight.weight)  # what the micro-batch's loss uses (read before it)
        weight.update(value)
    w1 = 1e-4 * 1.01
    w2 = w1 * 0.99
    w3 = w2 * 1.01
    assert seen[:100] == [1e-4] * 100
    assert seen[100:200] == pytest.approx([1.01e-4] * 100, rel=1e-12)
    assert seen[200:300] == pytest.approx([0.9999e-4] * 100, rel=1e-12)
    assert seen[300:] == pytest.approx([1.009899e-4] * 99, rel=1e-12)
    assert (w1, w2, w3) == pytest.approx((1.01e-4, 0.9999e-4, 1.009899e-4), rel=1e-12)
    assert weight.state_dict() == {"weight": pytest.approx(w3), "total": 9900.0, "count": 99}


def test_the_adaptive_l1_weight_is_clamped_to_its_bounds():
    high = training.AdaptiveL1Weight(reference_config(l1_update_every=2, l1_coefficient=0.0995))
    assert [high.update(5.0) for _ in range(6)] == pytest.approx(
        [0.0995, 0.1, 0.1, 0.1, 0.1, 0.1])  # 0.0995 * 1.01 = 0.100495 -> 0.1
    low = training.AdaptiveL1Weight(reference_config(l1_update_every=2, l1_coefficient=1.005e-6))
    assert [low.update(1.0) for _ in range(4)] == pytest.approx(
        [1.005e-6, 1e-6, 1e-6, 1e-6], rel=1e-12)  # 1.005e-6 * 0.99 = 0.99495e-6 -> 1e-6


def test_the_adaptive_loss_is_the_token_mean_nll_plus_weight_times_mean_l1():
    out = step_model.StepSAEOutput(latents=torch.zeros(2, 4), recon_loss=torch.tensor([1.0, 4.0]),
                                   l1=torch.tensor([2.0, 3.0]),
                                   token_accuracy=torch.zeros(2),
                                   n_targets=torch.tensor([3.0, 1.0]))
    cfg = reference_config()
    # (1 * 3 + 4 * 1) / 4 = 1.75; mean L1 2.5
    assert out.loss(cfg, l1_weight=0.1).item() == pytest.approx(1.75 + 0.25)
    assert out.loss(cfg).item() == pytest.approx(1.75 + 1e-4 * 2.5)  # the start weight
    step_mean = reference_config(loss_reduction="step")
    assert out.loss(step_mean, l1_weight=0.1).item() == pytest.approx(2.5 + 0.25)


def test_training_uses_the_weight_read_before_each_micro_batch(toy_model, step_tokenizer,
                                                               step_table):
    # one example, no masking: every micro-batch's L1 is the same, here above the target 1.0
    sae = build(toy_model, step_tokenizer, l1_update_every=2, l1_target=1.0,
                l1_coefficient=1e-3, token_mask_rate=0.0)
    one = examples_of(step_table.head(1), step_tokenizer, sae.cfg)
    history = training.train_step_sae(sae, one, quiet_train_config(
        n_steps=5, batch_size=2, lr=0.0), progress=False)
    assert (history.l1 > 1.0).all()
    assert history.l1_coefficient.tolist() == pytest.approx(
        [1e-3, 1e-3, 1.01e-3, 1.01e-3, 1.0201e-3], rel=1e-9)
    accum = training.train_step_sae(build(toy_model, copy.deepcopy(step_tokenizer),
                                          l1_update_every=2, l1_target=1.0,
                                          l1_coefficient=1e-3, token_mask_rate=0.0),
                                    one, quiet_train_config(n_steps=2, batch_size=2, lr=0.0,
                                                            grad_accum_steps=3),
                                    progress=False)
    # micro-batches use 1e-3, 1e-3, 1.01e-3 | 1.01e-3, 1.0201e-3, 1.0201e-3 (mean per step)
    assert accum.l1_coefficient.tolist() == pytest.approx(
        [(2e-3 + 1.01e-3) / 3, (1.01e-3 + 2 * 1.0201e-3) / 3], rel=1e-9)


# --- encoder, noise, projection --------------------------------------------------------------
def test_reference_mode_has_no_pre_encoder_bias(toy_model, step_tokenizer):
    sae = build(toy_model, step_tokenizer)
    assert sae.b_pre is None
    assert not any(name.startswith("b_pre") for name, _ in sae.named_parameters())
    h = torch.tensor([[1.0, -2.0] + [0.0] * (D_MODEL - 2)])
    with torch.no_grad():
        sae.W_enc.weight.zero_()
        sae.W_enc.weight[0, :2] = torch.tensor([1.0, 1.0])  # 1 - 2 = -1, + bias 1.5 = 0.5
        sae.W_enc.weight[1, :2] = torch.tensor([2.0, 0.5])  # 2 - 1 = 1, + bias 0 = 1
        sae.W_enc.bias.zero_()
        sae.W_enc.bias[0] = 1.5
        expected = torch.zeros(1, sae.cfg.n_latents)
        expected[0, :2] = torch.tensor([0.5, 1.0])
        torch.testing.assert_close(sae.activations(h), expected)
        sae.init_pre_bias(None)  # no pre-bias: nothing to set, nothing read
        torch.testing.assert_close(sae.activations(h), expected)


def test_the_reference_projection_is_relu_between_two_square_layers(toy_model, step_tokenizer):
    sae = build(toy_model, step_tokenizer, n_prefix=2)
    n = 2 * D_MODEL  # d_model * k latents, and the projection keeps that width
    assert sae.cfg.n_latents == n
    first, act, second = sae.projection
    assert (first.in_features, first.out_features) == (n, n)
    assert isinstance(act, torch.nn.ReLU)
    assert (second.in_features, second.out_features) == (n, n)
    z = torch.rand(3, n)
    with torch.no_grad():
        prefix = sae.prefix(z)
        assert prefix.shape == (3, 2, D_MODEL)
        # the k prefix vectors are consecutive d_model slices of the projection (R's view)
        torch.testing.assert_close(prefix[:, 1], second(F.relu(first(z)))[:, D_MODEL:])


def test_noise_is_added_to_the_latent_in_training_only(toy_model, step_tokenizer, step_table):
    sae = build(toy_model, step_tokenizer, token_mask_rate=0.0)
    examples = examples_of(step_table.head(3), step_tokenizer, sae.cfg)
    batch = batch_of(sae, examples)
    with torch.no_grad():
        sae.eval()
        latents = sae.encode(batch)
        clean, _ = sae.reconstruct(batch, latents)
        evaluated = sae(batch, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(evaluated.recon_loss, clean)  # eval: no noise
        sae.train()
        trained = sae(batch, generator=torch.Generator().manual_seed(1))
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1)) * 0.01
        noisy, _ = sae.reconstruct(batch, latents + noise)
    torch.testing.assert_close(trained.recon_loss, noisy)
    assert not torch.equal(trained.recon_loss, clean)  # small on an untrained decoder, not 0
    torch.testing.assert_close(trained.latents, latents)  # the L1 is of the clean latent
    torch.testing.assert_close(trained.l1, latents.abs().sum(-1))


# --- the decoder's input: prefix first; masking and its index shift ---------------------------
def hand_batch(sae, attention_mask=None, last_pos=None) -> data.StepBatch:
    """context (5, 6), <sep>, step (7, 8, 9), <eos>: positions 0-1, 2, 3-5, 6."""
    batch = data.collate([[5, 6]], [[7, 8, 9]], sae.sep_id, sae.eos_id, sae.pad_id)
    if attention_mask is not None:
        batch = data.StepBatch(batch.input_ids, torch.tensor([attention_mask]), batch.step_mask,
                               batch.sep_pos, torch.tensor([last_pos]))
    return batch


def test_the_reference_decoder_reads_the_prefix_before_the_context(toy_model, step_tokenizer):
    sae = build(toy_model, step_tokenizer, n_prefix=2).eval()
    batch = hand_batch(sae)
    z = torch.rand(1, sae.cfg.n_latents, generator=torch.Generator().manual_seed(0))
    embed = sae.decoder.get_input_embeddings()
    with torch.no_grad():
        inputs, mask = sae.decoder_inputs(batch, z)
        # PREFIX PREFIX 5 6 <sep> 7 8 9  (the <eos> is dropped: nothing follows it)
        torch.testing.assert_close(inputs[0, :2], sae.prefix(z)[0])
        torch.testing.assert_close(inputs[0, 2:], embed(torch.tensor([5, 6, sae.sep_id, 7, 8,
                                                                      9])))
        assert mask.tolist() == [[1] * 8]
        recon, right = sae.reconstruct(batch, z)
        logits = sae.decoder(inputs_embeds=inputs).logits[0]
    # the logits at positions 4..7 (<sep>, 7, 8, 9) predict 7, 8, 9, <eos>
    expected = F.cross_entropy(logits[4:8], torch.tensor([7, 8, 9, sae.eos_id]))
    assert recon.item() == pytest.approx(expected.item(), rel=1e-5)


def test_masking_hides_step_and_eos_positions_with_the_given_probability(toy_model,
                                                                         step_tokenizer):
    sae = build(toy_model, step_tokenizer)
    batch = data.collate([[5, 6], [5]], [[7, 8, 9], [7]], sae.sep_id, sae.eos_id, sae.pad_id)
    # row 0: 5 6 <sep> 7 8 9 <eos>; row 1: 5 <sep> 7 <eos> pad pad pad
    everything = step_model.mask_step_tokens(batch, 1.0, torch.Generator().manual_seed(0))
    assert everything.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]
    assert everything.last_pos.tolist() == [2, 1]  # R's shift: the <sep> when all are hidden
    nothing = step_model.mask_step_tokens(batch, 0.0, torch.Generator().manual_seed(0))
    assert nothing.attention_mask.tolist() == batch.attention_mask.tolist()
    assert nothing.last_pos.tolist() == [6, 3]
    draws = torch.rand(2, 7, generator=torch.Generator().manual_seed(3))
    some = step_model.mask_step_tokens(batch, 0.5, torch.Generator().manual_seed(3))
    hidden = batch.step_mask & (draws < 0.5)  # R: kept where rand >= rate
    assert some.attention_mask.tolist() == (batch.attention_mask * ~hidden).tolist()
    assert some.last_pos.tolist() == [6 - int(hidden[0].sum()), 3 - int(hidden[1].sum())]
    assert some.step_mask.tolist() == batch.step_mask.tolist()  # still predicted
    fixed = step_model.mask_step_tokens(batch, 0.5, torch.Generator().manual_seed(3),
                                        index_shift=False)
    assert fixed.last_pos.tolist() == [6, 3]


def test_the_index_shift_reads_early_and_misaligns_the_decoder_mask(toy_model, step_tokenizer):
    """Token 8 (position 4) hidden: R reads the latent at 9 and drops 9 instead of <eos>."""
    sae = build(toy_model, step_tokenizer).eval()
    z = torch.rand(1, sae.cfg.n_latents, generator=torch.Generator().manual_seed(0))
    embed = sae.decoder.get_input_embeddings()
    shifted = hand_batch(sae, [1, 1, 1, 1, 0, 1, 1], last_pos=5)
    with torch.no_grad():
        hidden = sae.hidden_states(shifted)
        torch.testing.assert_close(sae.step_state(shifted), hidden[:, 5])  # at 9, not <eos>
        inputs, mask = sae.decoder_inputs(shifted, z)
        # PREFIX 5 6 <sep> 7 8 <eos>: 9 dropped; R's mask is not shifted with it, so it hides
        # decoder position 4, which holds 7 (the token before the hidden 8), not 8
        torch.testing.assert_close(inputs[0, 1:], embed(torch.tensor([5, 6, sae.sep_id, 7, 8,
                                                                      sae.eos_id])))
        assert mask.tolist() == [[1, 1, 1, 1, 0, 1, 1]]
        # the last target (<eos>) is predicted at position 6, whose input is <eos> itself
        fixed_sae = copy.copy(sae)
        fixed_sae.cfg = sae.cfg.replace(mask_index_shift=False)
        fixed = hand_batch(sae, [1, 1, 1, 1, 0, 1, 1], last_pos=6)
        torch.testing.assert_close(fixed_sae.step_state(fixed), hidden[:, 6])
        inputs, mask = fixed_sae.decoder_inputs(fixed, z)
        # fixed: PREFIX 5 6 <sep> 7 8 9, and the mask hides exactly the hidden 8
        torch.testing.assert_close(inputs[0, 1:], embed(torch.tensor([5, 6, sae.sep_id, 7, 8,
                                                                      9])))
        assert mask.tolist() == [[1, 1, 1, 1, 1, 0, 1]]


def test_without_masking_the_shift_changes_nothing(toy_model, step_tokenizer, step_table):
    sae = build(toy_model, step_tokenizer).eval()
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    batch = batch_of(sae, examples)  # padded rows of different lengths
    fixed_sae = copy.copy(sae)
    fixed_sae.cfg = sae.cfg.replace(mask_index_shift=False)
    with torch.no_grad():
        z = sae.encode(batch)
        a, b = sae.decoder_inputs(batch, z), fixed_sae.decoder_inputs(batch, z)
    torch.testing.assert_close(a[0], b[0])
    assert a[1].tolist() == b[1].tolist()


# --- schedule and gradient accumulation ------------------------------------------------------
def test_the_cosine_schedule_gives_the_reference_rates():
    cfg = training.StepSAETrainConfig.reference()  # 1e-6, warm-up 2, decay to 1e-7 at 30
    rates = [cfg.lr * cfg.lr_factor(t) for t in (0, 1, 2, 16, 30, 31, 100)]
    assert rates == pytest.approx([1e-6 / 3, 2e-6 / 3, 1e-6, 5.5e-7, 1e-7, 1e-7, 1e-7],
                                  rel=1e-9)
    per_epoch = cfg.replace(schedule_unit_steps=10)  # the rate changes once per 10 steps
    assert [per_epoch.lr * per_epoch.lr_factor(t) for t in (0, 9, 10, 19, 20, 165)] == \
        pytest.approx([1e-6 / 3, 1e-6 / 3, 2e-6 / 3, 2e-6 / 3, 1e-6, 5.5e-7], rel=1e-9)
    ours = training.StepSAETrainConfig(warmup_steps=4)
    assert [ours.lr_factor(t) for t in (0, 1, 3, 50)] == [0.25, 0.5, 1.0, 1.0]
    # None: the decay ends at the number of units (R: LR_DECAY_ITERS = MAX_ITERS = 30), so the
    # last unit, 9 of 10, is at ratio (9 - 2) / (10 - 2)
    to_end = cfg.replace(lr_decay_steps=None, n_steps=40, schedule_unit_steps=4)
    assert to_end.lr * to_end.lr_factor(39) == pytest.approx(
        1e-7 + 0.5 * (1 + math.cos(math.pi * 7 / 8)) * 9e-7, rel=1e-9)


def test_the_optimiser_takes_the_reference_betas_decay_and_schedule(
        tmp_path, toy_model, step_tokenizer, step_table):
    sae = build(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    cfg = quiet_train_config(n_steps=2, lr=1e-2, warmup_steps=2, lr_decay_steps=10,
                             min_lr=1e-3)
    training.train_step_sae(sae, examples, cfg, checkpoint_dir=tmp_path, progress=False)
    extra = torch.load(tmp_path / "step_000002" / "optimizer.pt", weights_only=True)
    groups = extra["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.9, 0.95)] * 2
    assert [g["weight_decay"] for g in groups] == [0.01] * 2
    # after two steps the schedule is at unit 2: the end of the warm-up, the full rate, for both
    # groups (one rate, lm_lr None)
    assert extra["schedule"]["_last_lr"] == pytest.approx([1e-2, 1e-2])
    assert "noise_generator" in extra


def test_micro_batch_gradients_are_summed(monkeypatch, toy_model, step_tokenizer, step_table):
    """Every micro-batch is the same step (no noise or masking): k of them give k times one."""
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def record(params, max_norm):
        params = list(params)
        norms.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).norm())
        return clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    one = None
    for k in (1, 3):
        sae = build(toy_model, copy.deepcopy(step_tokenizer), token_mask_rate=0.0,
                    latent_noise_std=0.0)
        one = examples_of(step_table.head(1), step_tokenizer, sae.cfg) if one is None else one
        training.train_step_sae(sae, one, quiet_train_config(n_steps=1, batch_size=2,
                                                             grad_accum_steps=k),
                                progress=False)
    assert norms[1].item() == pytest.approx(3 * norms[0].item(), rel=1e-4)


def test_a_few_reference_steps_lower_the_loss(toy_model, step_tokenizer, step_table):
    sae = build(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(16), step_tokenizer, sae.cfg)
    history = training.train_step_sae(sae, examples, quiet_train_config(
        n_steps=24, batch_size=8, grad_accum_steps=2, warmup_steps=2, lr_decay_steps=24,
        min_lr=3e-4), progress=False)
    assert history.recon_loss.tail(4).mean() < history.recon_loss.head(4).mean() - 0.5
    assert history.loss.notna().all() and "l1_coefficient" in history


# --- phase 2 ---------------------------------------------------------------------------------
def test_the_reference_head_has_the_reference_shapes_and_activations():
    head = step_model.ReferenceContextHead(d_model=32, n_latents=64)
    mean_layers = [(m.in_features, m.out_features) if isinstance(m, torch.nn.Linear)
                   else type(m).__name__ for m in head.mean_mlp]
    assert mean_layers == [(32, 8), "LeakyReLU", (8, 32), "LeakyReLU", (32, 64)]
    var_layers = [(m.in_features, m.out_features) if isinstance(m, torch.nn.Linear)
                  else type(m).__name__ for m in head.var_mlp]
    assert var_layers == [(32, 32), "LeakyReLU", (32, 64), (64, 64)]
    with torch.no_grad():
        head.var_mlp[3].weight.zero_()
        head.var_mlp[3].bias.fill_(-20.0)  # not clamped (ours clamps at -10)
        _, log_var = head(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
    assert (log_var == -20.0).all()
    with pytest.raises(ValueError, match="n_latents=4 is below 8"):
        step_model.ReferenceContextHead(d_model=32, n_latents=4)


def test_the_reference_nll_is_the_mean_gaussian_nll():
    mean, log_var, target = torch.tensor([0.0, 1.0]), torch.tensor([0.0, math.log(4.0)]), \
        torch.tensor([1.0, 1.0])
    # (1/2 + log(2 pi)/2 + 0 + log(8 pi)/2) / 2
    expected = (0.5 + 0.5 * math.log(2 * math.pi) + 0.5 * math.log(8 * math.pi)) / 2
    assert training.reference_gaussian_nll(mean, log_var, target).item() == pytest.approx(
        expected)


def test_phase_two_trains_the_context_encoder_and_head_on_the_context_alone(
        toy_model, step_tokenizer, step_table):
    sae = build(toy_model, step_tokenizer)
    names = {n for n, _ in sae.named_parameters()}
    phase_two = {n for n in names if n.startswith(("context_head.", "context_encoder."))
                 and n != "context_encoder.lm_head.weight"}  # the untied head gets no gradient
    sae.phase_parameters(2)
    assert {n for n, p in sae.named_parameters() if p.requires_grad} == phase_two
    sae.phase_parameters(1)
    assert not any(p.requires_grad for n, p in sae.named_parameters()
                   if n.startswith(("context_head.", "context_encoder.")))
    torch.testing.assert_close(sae.context_encoder.base_model.embed_tokens.weight,
                               sae.encoder.base_model.embed_tokens.weight)  # starts as the LM
    examples = examples_of(step_table.head(6), step_tokenizer, sae.cfg)
    batch = batch_of(sae, examples)
    other = data.collate(examples.context_ids, [[7, 8]] * 6, sae.sep_id, sae.eos_id, sae.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(sae.context_distribution(batch)[0],
                                   sae.context_distribution(other)[0])
    encoder_before = sae.encoder.base_model.embed_tokens.weight.detach().clone()
    context_before = sae.context_encoder.base_model.embed_tokens.weight.detach().clone()
    history = training.train_context_head(sae, examples, quiet_train_config(
        head_n_steps=30, batch_size=6, head_lr=3e-3), progress=False)
    assert history.nll.tail(5).mean() < history.nll.head(5).mean()
    torch.testing.assert_close(sae.encoder.base_model.embed_tokens.weight, encoder_before)
    assert not torch.equal(sae.context_encoder.base_model.embed_tokens.weight, context_before)


def test_a_reference_sae_saves_and_loads_with_its_context_encoder(tmp_path, toy_model,
                                                                 step_tokenizer, step_table):
    sae = build(toy_model, step_tokenizer).eval()
    loaded = step_model.StepSAE.load(sae.save(tmp_path / "sae"))
    assert loaded.cfg == sae.cfg and loaded.b_pre is None
    batch = batch_of(sae, examples_of(step_table.head(2), step_tokenizer, sae.cfg))
    with torch.no_grad():
        torch.testing.assert_close(loaded.context_distribution(batch)[0],
                                   sae.context_distribution(batch)[0])
        torch.testing.assert_close(loaded(batch).recon_loss, sae(batch).recon_loss)


# --- decoding from a latent ------------------------------------------------------------------
def decoding_setup(mode, toy_model, step_tokenizer, step_table, n_steps):
    """An untrained step SAE of ``mode`` ("reference" or "ours"), the first ``n_steps`` steps as
    its examples, and their latents, for the decoding tests."""
    cfg = (reference_config() if mode == "reference" else
           step_model.StepSAEConfig(n_latents=16, d_projection=32, max_context_tokens=24,
                                    max_step_tokens=16))
    sae = step_model.StepSAE.build(toy_model, step_tokenizer, cfg, seed=0).eval()
    examples = examples_of(step_table.head(n_steps), step_tokenizer, sae.cfg)
    with torch.no_grad():
        return sae, examples, sae.encode(batch_of(sae, examples))


@pytest.mark.parametrize("mode", ["reference", "ours"])
def test_greedy_decoding_follows_the_decoders_argmax(mode, toy_model, step_tokenizer,
                                                     step_table):
    sae, examples, z = decoding_setup(mode, toy_model, step_tokenizer, step_table, 2)
    decoded = inference.greedy_decode(sae, examples.context_ids, z, max_new_tokens=5)
    assert len(decoded) == 2
    for i, tokens in enumerate(decoded):
        assert len(tokens) <= 5 and sae.eos_id not in tokens
        # teacher forcing on the decoded tokens predicts each of them (argmax)
        again = data.collate(examples.context_ids[i: i + 1], [tokens], sae.sep_id, sae.eos_id,
                             sae.pad_id)
        with torch.no_grad():
            _, right = sae.reconstruct(again, z[i: i + 1])
        assert right.item() >= len(tokens) / (len(tokens) + 1) - 1e-6
        if len(tokens) < 5:  # it stopped because <eos> was the argmax
            assert right.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 contexts but 1 latents"):
        inference.greedy_decode(sae, examples.context_ids, z[:1])


@pytest.mark.parametrize("mode", ["reference", "ours"])
def test_batched_greedy_decoding_equals_one_step_at_a_time(mode, toy_model, step_tokenizer,
                                                          step_table):
    sae, examples, z = decoding_setup(mode, toy_model, step_tokenizer, step_table, 7)
    contexts = [c[-(6 + 3 * i):] for i, c in enumerate(examples.context_ids)]  # left padding
    alone = inference.greedy_decode(sae, contexts, z, max_new_tokens=6, batch_size=1)
    together = inference.greedy_decode(sae, contexts, z, max_new_tokens=6, batch_size=4)
    assert any(alone) and together == alone


def test_sampled_and_edited_latents(toy_model, step_tokenizer, step_table):
    sae = build(toy_model, step_tokenizer).eval()
    examples = examples_of(step_table.head(3), step_tokenizer, sae.cfg)
    batch = batch_of(sae, examples)
    sample = inference.sample_context_latents(sae, batch, seed=1)
    assert sample.shape == (3, sae.cfg.n_latents) and (sample >= 0).all()
    torch.testing.assert_close(sample, inference.sample_context_latents(sae, batch, seed=1))
    assert not torch.equal(sample, inference.sample_context_latents(sae, batch, seed=2))
    with torch.no_grad():
        mean, log_var = sae.context_distribution(batch)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sample, (mean + eps * (0.5 * log_var).exp()).clamp_min(0))
    z = torch.zeros(2, 4)
    edited = inference.edit_latents(z, {1: 0.7, 3: -0.2})
    assert edited.tolist() == [pytest.approx([0.0, 0.7, 0.0, -0.2])] * 2
    assert z.abs().sum() == 0  # a copy
    table = inference.step_decodings(sae, examples, step_tokenizer, n_examples=2,
                                     max_new_tokens=4)
    assert isinstance(table, pd.DataFrame) and len(table) == 2
    assert list(table.columns) == ["step", "own", "sampled", "top_latent", "top_off",
                                   "up_latent", "up"]
    assert (table.top_latent != table.up_latent).all()
