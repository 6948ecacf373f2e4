"""Tests for reasonlens.step_sae: data, model, training (resume, DDP) and inference."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import logging
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import examples_of
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonlens import constants as K
from reasonlens.step_sae import data, inference, model as step_model, training
from reasonlens.world import prompt


def build_step_sae_config(**overrides) -> step_model.StepSAEConfig:
    return step_model.StepSAEConfig(**{"n_latents": 16, "n_prefix": 2, "l1_target": 2.0,
                                       "d_projection": 32, "max_context_tokens": 24,
                                       "max_step_tokens": 16, **overrides})


def build_train_config(**overrides) -> training.StepSAETrainConfig:
    return training.StepSAETrainConfig(**{"n_steps": 4, "batch_size": 4, "lr": 3e-3,
                                          "warmup_steps": 2, "head_n_steps": 5, **overrides})


def build_sae(toy_model, tokenizer, seed=0, **overrides) -> step_model.StepSAE:
    return step_model.StepSAE.build(toy_model, tokenizer, build_step_sae_config(**overrides),
                                    seed=seed)


# --- data ------------------------------------------------------------------------------------
def test_world_step_table_gives_each_step_exactly_what_precedes_it(world, step_table):
    pid = step_table.problem_id.iloc[0]
    rows = step_table[step_table.problem_id == pid]
    question = world.problems.set_index("problem_id").question[pid]
    assert rows.context.iloc[0] == prompt(question, reasoning=True)
    for (_, a), (_, b) in zip(rows.iloc[:-1].iterrows(), rows.iloc[1:].iterrows()):
        assert b.context == a.context + a.step + "\n"
    trace = world.documents[(world.documents.problem_id == pid) & (world.documents.kind == "trace")]
    last = rows.iloc[-1]
    assert trace.text.iloc[0].startswith(last.context + last.step + "\n" + K.THINK_CLOSE)
    assert {"is_correct", "kind", "split"} <= set(step_table.columns)


def test_world_step_table_rejects_an_absent_split(world):
    with pytest.raises(ValueError, match="no steps in splits"):
        data.world_step_table(world.steps, world.problems, splits=("nope",))


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_read_jsonl_steps_reads_gsm8k_records(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 3 apples and buys 2. How many?",
         "answer": "He buys 2 more.\nSo 3 + 2 = 5.\n#### 5"},
        {"question": "What is 4 * 2?", "answer": "4 * 2 = 8\n\n#### 8"}])
    table = data.read_jsonl_steps(path)
    assert table.step.tolist() == ["He buys 2 more.", "So 3 + 2 = 5.", "4 * 2 = 8"]
    assert table.problem_id.tolist() == [0, 0, 1] and table.step_idx.tolist() == [0, 1, 0]
    assert table.context.iloc[1] == "Tom has 3 apples and buys 2. How many?\nHe buys 2 more.\n"
    assert table.final_answer.tolist() == ["5", "5", "8"]


@pytest.mark.parametrize("record, message", [
    ("{not json", r"gsm8k.jsonl:2 is not valid JSON"),
    ('["a list"]', r"gsm8k.jsonl:2 is a JSON list, not an object"),
    ({"question": "q"}, r"gsm8k.jsonl:2 lacks the field 'answer' .*set question_key/answer_key"),
    ({"question": "q", "answer": 5}, r"gsm8k.jsonl:2: the field 'answer' is a int \(5\); it "
                                     r"must be a non-empty string"),
    ({"question": "  ", "answer": "a"}, r"the field 'question' is empty"),
    ({"question": "q", "answer": "#### 5"}, r"gsm8k.jsonl:2: the 'answer' field has no reasoning"),
])
def test_read_jsonl_steps_rejects_malformed_records_naming_the_line(tmp_path, record, message):
    good = {"question": "q", "answer": "a step\n#### 1"}
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [good, record])
    with pytest.raises(ValueError, match=message):
        data.read_jsonl_steps(path)


def test_read_jsonl_steps_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="step_jsonl_path"):
        data.read_jsonl_steps(tmp_path / "absent.jsonl")


def test_tokenize_steps_rejects_a_table_without_steps(step_tokenizer):
    with pytest.raises(ValueError, match=r"lacks columns \['step'\]"):
        data.tokenize_steps(pd.DataFrame({"problem_id": [0], "step_idx": [0], "context": ["a"]}),
                            step_tokenizer, 8, 8)
    with pytest.raises(ValueError, match="tokenize to nothing"):
        data.tokenize_steps(pd.DataFrame({"problem_id": [0], "step_idx": [0], "context": ["a"],
                                          "step": [""]}), step_tokenizer, 8, 8)


def test_collate_marks_step_tokens_and_eos_and_pads_on_the_right():
    batch = data.collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14, 15]], sep_id=3, eos_id=1,
                         pad_id=2)
    assert batch.input_ids.tolist() == [[5, 6, 7, 3, 9, 10, 1, 2], [8, 3, 11, 12, 13, 14, 15, 1]]
    assert batch.attention_mask.tolist() == [[1] * 7 + [0], [1] * 8]
    assert batch.step_mask.int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]]
    assert batch.sep_pos.tolist() == [3, 1] and batch.last_pos.tolist() == [6, 7]


def test_tokenize_steps_truncates_contexts_on_the_left(step_table, step_tokenizer):
    examples = data.tokenize_steps(step_table.head(20), step_tokenizer, 10, 4)
    full = step_tokenizer(step_table.context.iloc[19], add_special_tokens=False)["input_ids"]
    assert examples.context_ids[19] == full[-10:]
    assert max(len(s) for s in examples.step_ids) <= 4


# --- model -------------------------------------------------------------------------------------
def test_build_adds_a_sep_token_and_resizes_both_lms(toy_model, step_tokenizer):
    n_before = len(step_tokenizer)
    sae = build_sae(toy_model, step_tokenizer)
    assert step_tokenizer.sep_token == data.SEP and len(step_tokenizer) == n_before + 1
    assert sae.sep_id == n_before
    assert (sae.pad_id, sae.eos_id) == (step_tokenizer.pad_token_id, step_tokenizer.eos_token_id)
    for lm in (sae.encoder, sae.decoder):
        assert lm.get_input_embeddings().num_embeddings == n_before + 1
    assert toy_model.get_input_embeddings().num_embeddings == n_before  # the source is untouched


def test_build_pads_with_eos_when_the_tokenizer_has_no_pad_token(toy_model, step_tokenizer):
    step_tokenizer.pad_token = None
    assert step_tokenizer.pad_token_id is None
    sae = build_sae(toy_model, step_tokenizer)
    assert sae.pad_id == sae.eos_id == step_tokenizer.eos_token_id


def test_build_seeds_the_new_parameters_with_0_by_default(toy_model, tokenizer):
    def built(**seed):
        tok = copy.deepcopy(tokenizer)
        return step_model.StepSAE.build(toy_model, tok, build_step_sae_config(), **seed)

    default, zero, one = built(), built(seed=0), built(seed=1)
    assert torch.equal(default.W_enc.weight, zero.W_enc.weight)
    assert not torch.equal(default.W_enc.weight, one.W_enc.weight)


def test_the_sep_embedding_is_freshly_initialised_not_the_mean_of_the_others(toy_model,
                                                                           step_tokenizer):
    """``mean_resizing=False``: the new row is drawn like any initial row (the LM's own init),
    not set near the mean of the existing rows as transformers does by default."""
    sae = build_sae(toy_model, step_tokenizer)
    for lm in (sae.encoder, sae.decoder):
        rows = lm.get_input_embeddings().weight.detach()
        old, sep = rows[: sae.sep_id], rows[sae.sep_id]
        typical = old.norm(dim=1).median()
        assert (sep - old.mean(0)).norm() > 0.3 * typical  # mean resizing: ~1e-4 of it
        assert 0.3 * typical < sep.norm() < 3 * typical  # a row like the others


def test_a_qwen2_checkpoint_with_tied_embeddings_trains_saves_and_reloads(
        tmp_path, tokenizer, step_tokenizer, step_table):
    # The paper's encoder is Qwen2.5-0.5B, whose input and output embeddings are tied.
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True))
    qwen.save_pretrained(tmp_path / "qwen")
    sae = step_model.StepSAE.build(tmp_path / "qwen", step_tokenizer, build_step_sae_config())
    for lm in (sae.encoder, sae.decoder):
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    examples = examples_of(step_table.head(16), step_tokenizer, sae.cfg)
    before = sae.decoder.get_input_embeddings().weight.clone()
    history = training.train_step_sae(sae, examples, build_train_config(n_steps=3),
                                      progress=False)
    assert history.loss.notna().all()
    assert not torch.equal(sae.decoder.get_input_embeddings().weight, before)
    assert all(p.requires_grad for p in sae.encoder.parameters())  # the tied head is trained
    sae.eval().save(tmp_path / "step_sae")
    loaded = step_model.StepSAE.load(tmp_path / "step_sae")
    np.testing.assert_array_equal(inference.encode_steps(loaded, examples),
                                  inference.encode_steps(sae, examples))
    assert loaded.decoder.get_output_embeddings().weight is \
        loaded.decoder.get_input_embeddings().weight


def test_latents_are_nonnegative_unit_vectors_and_the_prefix_has_n_prefix_vectors(
        toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer, n_prefix=3)
    examples = examples_of(step_table.head(6), step_tokenizer, sae.cfg)
    batch = data.collate(examples.context_ids, examples.step_ids, sae.sep_id, sae.eos_id,
                         sae.pad_id)
    latents = sae.encode(batch)
    assert latents.shape == (6, 16) and (latents >= 0).all()
    norms = latents.norm(dim=-1)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))
    assert sae.prefix(latents).shape == (6, 3, toy_model.config.hidden_size)
    out = sae(batch)
    assert out.recon_loss.shape == out.l1.shape == out.token_accuracy.shape == (6,)
    assert torch.allclose(out.l1, latents.sum(-1))
    with torch.no_grad():  # the latent is the normalised activation of the state at <eos>
        state = sae.encoder.base_model(input_ids=batch.input_ids,
                                       attention_mask=batch.attention_mask).last_hidden_state
        state = state[torch.arange(6), batch.last_pos]
        acts = sae.encode_activations(batch)
    assert torch.allclose(acts / acts.norm(dim=-1, keepdim=True).clamp_min(1e-8), latents,
                          atol=1e-6)
    dense = inference.encode_steps(sae, examples, batch_size=4, dense=True)
    np.testing.assert_allclose(dense, state.numpy(), atol=1e-5)


def hand_set_bottleneck(toy_model, tokenizer) -> step_model.StepSAE:
    """Four latents that read only the first two hidden dimensions, weights set by hand."""
    sae = build_sae(toy_model, tokenizer, n_latents=4, l1_target=1.5).eval()
    weight = torch.zeros(4, toy_model.config.hidden_size)
    weight[0, 0], weight[1, 0], weight[2, 1], weight[3, :2] = 1.0, -1.0, 1.0, 1.0
    with torch.no_grad():
        sae.W_enc.weight.copy_(weight)
        sae.W_enc.bias.copy_(torch.tensor([0.0, 0.0, -1.0, 0.5]))
        sae.b_pre.fill_(0.0)
        sae.b_pre[:2] = torch.tensor([1.0, 2.0])
    return sae


def test_the_bottleneck_subtracts_the_pre_bias_encodes_rectifies_and_normalises_by_hand(
        toy_model, step_tokenizer):
    sae = hand_set_bottleneck(toy_model, step_tokenizer)
    h = torch.full((3, toy_model.config.hidden_size), 5.0)  # dims 2.. are read by no latent
    h[:, :2] = torch.tensor([[3.0, 1.0], [1.0, 2.0], [1.0, 1.0]])
    # h - b_pre = (2, -1): W (h - b_pre) + b = (2, -2, -2, 1.5) -> ReLU (2, 0, 0, 1.5), norm 2.5
    # h - b_pre = (0, 0):  (0, 0, -1, 0.5) -> (0, 0, 0, 0.5), norm 0.5
    # h - b_pre = (0, -1): (0, 0, -2, -0.5) -> all zero, and the zero latent stays zero
    with torch.no_grad():
        acts, latents = sae.activations(h), sae.sparse_latent(h)
    torch.testing.assert_close(acts, torch.tensor([[2.0, 0, 0, 1.5], [0, 0, 0, 0.5], [0, 0, 0, 0]]))
    torch.testing.assert_close(latents, torch.tensor([[0.8, 0, 0, 0.6], [0, 0, 0, 1.0],
                                                      [0, 0, 0, 0]]))


def test_the_loss_adds_the_squared_l1_gap_scaled_by_the_warmup_to_the_nll():
    cfg = build_step_sae_config(l1_coefficient=0.5, l1_target=2.0)
    out = step_model.StepSAEOutput(latents=torch.zeros(2, 16), recon_loss=torch.tensor([1.0, 2.0]),
                                   l1=torch.tensor([2.0, 3.5]), token_accuracy=torch.zeros(2))
    # penalties 0.5 * s * (0, 1.5^2 = 2.25): s = 1 gives mean(1, 3.125); s = 0.5 mean(1, 2.5625)
    assert out.loss(cfg).item() == pytest.approx(2.0625)
    assert out.loss(cfg, l1_scale=0.5).item() == pytest.approx(1.78125)


def test_the_gaussian_head_splits_mean_and_log_variance_and_clamps_the_log_variance():
    head = step_model.GaussianContextHead(d_model=3, n_latents=3, d_hidden=4)
    with torch.no_grad():
        head.net[2].weight.zero_()
        head.net[2].bias.copy_(torch.tensor([0.5, -1.0, 2.0, -20.0, 1.5, 9.0]))
        mean, log_var = head(torch.randn(2, 3, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(mean, torch.tensor([[0.5, -1.0, 2.0]] * 2))
    torch.testing.assert_close(log_var, torch.tensor([[-10.0, 1.5, 5.0]] * 2))


def test_each_phase_trains_exactly_its_parameters(toy_model, step_tokenizer):
    sae = build_sae(toy_model, step_tokenizer)
    names = {n for n, _ in sae.named_parameters()}
    untied_head = "encoder.lm_head.weight"  # the toy LM does not tie its embeddings
    assert {untied_head, "decoder.lm_head.weight", "b_pre"} <= names
    for phase, expected in ((1, {n for n in names
                                 if not n.startswith("context_head.") and n != untied_head}),
                            (2, {n for n in names if n.startswith("context_head.")})):
        params = sae.phase_parameters(phase)
        trainable = {n for n, p in sae.named_parameters() if p.requires_grad}
        assert trainable == expected, phase
        assert {id(p) for p in params} == {id(p) for n, p in sae.named_parameters()
                                           if n in expected}
    with pytest.raises(ValueError, match="phase=3"):
        sae.phase_parameters(3)


def test_forward_feeds_each_step_the_latent_the_shuffle_picks(toy_model, step_tokenizer,
                                                              step_table):
    sae = build_sae(toy_model, step_tokenizer).eval()
    examples = examples_of(step_table.head(3), step_tokenizer, sae.cfg)
    batch = data.collate(examples.context_ids, examples.step_ids, sae.sep_id, sae.eos_id,
                         sae.pad_id)
    shuffle = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = sae(batch, shuffle=shuffle)
        latents = sae.encode(batch)
        recon, right = sae.reconstruct(batch, latents[shuffle])
    torch.testing.assert_close(out.latents, latents)  # the step's own latent is reported
    torch.testing.assert_close(out.recon_loss, recon)
    torch.testing.assert_close(out.token_accuracy, right)
    torch.testing.assert_close(out.l1, latents.sum(-1))


def test_reconstruction_loss_is_only_on_step_tokens_and_ignores_padding(
        toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer).eval()
    examples = examples_of(step_table.head(5), step_tokenizer, sae.cfg)
    batch = data.collate(examples.context_ids, examples.step_ids, sae.sep_id, sae.eos_id,
                         sae.pad_id)
    with torch.no_grad():
        latents = sae.encode(batch)
        recon, _ = sae.reconstruct(batch, latents)
        for i in range(5):  # alone (no padding) = in the padded batch
            alone = data.collate([examples.context_ids[i]], [examples.step_ids[i]], sae.sep_id,
                                 sae.eos_id, sae.pad_id)
            assert torch.allclose(sae.encode(alone), latents[i: i + 1], atol=1e-5)
            solo, _ = sae.reconstruct(alone, latents[i: i + 1])
            assert solo.item() == pytest.approx(recon[i].item(), abs=1e-5)
            # transformers' own loss with labels on the step tokens and <eos> only
            prefix = sae.prefix(latents[i: i + 1])
            start = alone.sep_pos.item() + 1  # context <sep> | prefix | step <eos>
            embeds = sae.decoder.get_input_embeddings()(alone.input_ids)
            embeds = torch.cat([embeds[:, :start], prefix, embeds[:, start:]], 1)
            labels = alone.input_ids.masked_fill(~alone.step_mask, -100)
            labels = torch.cat([labels[:, :start], torch.full((1, prefix.shape[1]), -100),
                                labels[:, start:]], 1)
            reference = sae.decoder(inputs_embeds=embeds, labels=labels).loss
            assert solo.item() == pytest.approx(reference.item(), abs=1e-5)
        # changing a context token changes the loss only through conditioning, and changing a
        # padded position changes nothing
        padded = copy.deepcopy(batch)
        padded.input_ids[batch.attention_mask == 0] = 7
        assert torch.allclose(sae.reconstruct(padded, latents)[0], recon, atol=1e-6)


@pytest.mark.slow
def test_the_decoder_needs_the_step_own_latent_after_a_few_training_steps(
        toy_model, step_tokenizer, step_table):
    # No context: the latent is the decoder's only source for the step. The small test LM
    # barely knows the steps, so here it learns at the bottleneck's rate.
    sae = build_sae(toy_model, step_tokenizer, max_context_tokens=0, n_prefix=1,
                    l1_coefficient=0.01)
    table = step_table.drop_duplicates("step").head(12)
    examples = examples_of(table, step_tokenizer, sae.cfg)
    training.train_step_sae(sae, examples, build_train_config(n_steps=100, batch_size=12,
                                                              lm_lr=3e-3), progress=False)
    metrics = inference.reconstruction_metrics(sae, examples, batch_size=12).set_index("condition")
    assert metrics.recon_loss["own"] < 0.8 * metrics.recon_loss["shuffled"]
    assert metrics.token_accuracy["own"] > metrics.token_accuracy["shuffled"]


def test_save_and_load_round_trip(tmp_path, toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer).eval()
    examples = examples_of(step_table.head(8), step_tokenizer, sae.cfg)
    sae.save(tmp_path / "runs" / "sae")  # parent folders are made
    sae.save(tmp_path / "runs" / "sae")  # and saving again overwrites
    loaded = step_model.StepSAE.load(tmp_path / "runs" / "sae")
    assert loaded.cfg == sae.cfg and loaded.sep_id == sae.sep_id
    assert (inference.encode_steps(loaded, examples) == inference.encode_steps(sae, examples)).all()
    with pytest.raises(FileNotFoundError, match=r"not a saved step-level SAE\. Notebook 08 "
                                                r"writes one \(StepSAE\.save\)\.$"):
        step_model.StepSAE.load(tmp_path)


@pytest.mark.parametrize("field, value", [("l1_target", 0.5), ("l1_target", 5.0),
                                          ("n_prefix", 0), ("max_step_tokens", 0)])
def test_config_rejects_bad_values_naming_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        build_step_sae_config(**{field: value})


@pytest.mark.parametrize("make, field, lowest, below", [
    (functools.partial(build_step_sae_config, l1_target=1.0), "n_latents", 1, 0),
    (build_step_sae_config, "n_prefix", 1, 0),
    (build_step_sae_config, "l1_target", 1.0, 0.99),
    (build_step_sae_config, "l1_coefficient", 0.0, -0.1),
    (build_step_sae_config, "d_projection", 1, 0),
    (build_step_sae_config, "max_context_tokens", 0, -1),
    (build_step_sae_config, "max_step_tokens", 1, 0),
    *[(build_train_config, name, 1, 0) for name in ("n_steps", "batch_size", "head_n_steps")],
    *[(build_train_config, name, 0, -1) for name in ("lr", "head_lr", "weight_decay",
                                                     "warmup_steps", "l1_warmup_steps",
                                                     "checkpoint_every", "lm_lr")],
])
def test_configs_accept_their_lowest_value_and_reject_one_below(make, field, lowest, below):
    make(**{field: lowest})
    with pytest.raises(ValueError, match=rf"^{field}={below!r} is outside \[{lowest}, "):
        make(**{field: below})


def test_the_l1_target_is_at_most_the_l1_norm_of_a_uniform_unit_latent():
    build_step_sae_config(n_latents=16, l1_target=4.0)  # sqrt(16): all 16 latents equal
    with pytest.raises(ValueError, match=r"l1_target=4.01 is outside \[1.0, 4.0\]\. An "
                                         r"L2-normalised latent has 1 <= L1 <= sqrt\(n_latents\)"):
        build_step_sae_config(n_latents=16, l1_target=4.01)
    assert build_train_config(lm_lr=None).lm_lr is None  # None: the LMs learn at lr


def test_configs_round_trip_through_dicts():
    cfg = build_step_sae_config(n_prefix=4)
    assert step_model.StepSAEConfig.from_dict(cfg.to_dict()) == cfg
    train_cfg = build_train_config(checkpoint_every=3)
    assert training.StepSAETrainConfig.from_dict(train_cfg.to_dict()) == train_cfg
    with pytest.raises(ValueError, match="unknown parameter"):
        step_model.StepSAEConfig.from_dict({"n_latent": 3})


# --- training --------------------------------------------------------------------------------
def test_resume_from_a_checkpoint_continues_the_same_run(caplog, tmp_path, toy_model,
                                                         step_tokenizer, step_table):
    table = step_table.head(24)
    straight = build_sae(toy_model, copy.deepcopy(step_tokenizer), seed=0)
    examples = examples_of(table, step_tokenizer, straight.cfg)
    full = training.train_step_sae(straight, examples, build_train_config(n_steps=6),
                                   progress=False)

    first = build_sae(toy_model, copy.deepcopy(step_tokenizer), seed=0)
    part = training.train_step_sae(first, examples, build_train_config(n_steps=3),
                                   checkpoint_dir=tmp_path, progress=False)
    assert training.latest_checkpoint(tmp_path).name == "step_000003"
    resumed = build_sae(toy_model, copy.deepcopy(step_tokenizer), seed=1)  # other weights
    with caplog.at_level(logging.INFO, logger="reasonlens.step_sae.training"):
        rest = training.train_step_sae(resumed, examples, build_train_config(n_steps=6),
                                       checkpoint_dir=tmp_path, progress=False)
    assert f"resuming from {tmp_path / 'step_000003'} at step 3" in caplog.messages
    assert len(rest) == 6 and rest.step.tolist() == list(range(1, 7))
    pd.testing.assert_frame_equal(rest.head(3), part)
    pd.testing.assert_frame_equal(rest, full, rtol=1e-4)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ValueError, match=r"\['lr'\] differ\. Resume with the same settings, or "
                                         r"delete the checkpoint directory to start a new run\.$"):
        training.train_step_sae(build_sae(toy_model, copy.deepcopy(step_tokenizer)), examples,
                                build_train_config(n_steps=8, lr=1e-4), checkpoint_dir=tmp_path,
                                progress=False)
    with pytest.raises(ValueError, match="training examples"):
        training.train_step_sae(build_sae(toy_model, copy.deepcopy(step_tokenizer)),
                                examples.subset(range(20)), build_train_config(n_steps=8),
                                checkpoint_dir=tmp_path, progress=False)


def test_a_changed_run_can_restart_instead_of_resuming(caplog, tmp_path, toy_model,
                                                       step_tokenizer, step_table):
    sae = build_sae(toy_model, copy.deepcopy(step_tokenizer))
    examples = examples_of(step_table.head(12), step_tokenizer, sae.cfg)
    training.train_step_sae(sae, examples, build_train_config(n_steps=2), checkpoint_dir=tmp_path,
                            progress=False)
    with caplog.at_level(logging.WARNING, logger="reasonlens.step_sae.training"):
        again = training.train_step_sae(build_sae(toy_model, copy.deepcopy(step_tokenizer)),
                                        examples, build_train_config(n_steps=3, lr=1e-4),
                                        checkpoint_dir=tmp_path, progress=False,
                                        restart_if_changed=True)
    assert caplog.messages == [f"checkpoints in {tmp_path} were made with other settings; "
                               "starting over"]
    assert len(again) == 3 and [p.name for p in tmp_path.iterdir()] == ["step_000003"]
    # unchanged settings and data: it resumes, even when allowed to restart; checkpoints every 2
    more = training.train_step_sae(build_sae(toy_model, copy.deepcopy(step_tokenizer)), examples,
                                   build_train_config(n_steps=6, lr=1e-4, checkpoint_every=2,
                                                      keep_checkpoints=None),
                                   checkpoint_dir=tmp_path, progress=False,
                                   restart_if_changed=True)
    pd.testing.assert_frame_equal(more.head(3), again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003", "step_000004",
                                                          "step_000006"]


def test_train_rejects_empty_examples(toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    empty = examples_of(step_table.head(2), step_tokenizer, sae.cfg).subset([])
    with pytest.raises(ValueError, match=r"^examples is empty: no steps to train on\. Check "
                                         r"step_n_train\.$"):
        training.train_step_sae(sae, empty, build_train_config(), progress=False)
    with pytest.raises(ValueError, match=r"^examples is empty: no steps to train the context "
                                         r"head on\.$"):
        training.train_context_head(sae, empty, build_train_config(), progress=False)


def test_the_lms_learn_at_lm_lr_and_the_bottleneck_at_lr(toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(8), step_tokenizer, sae.cfg)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    training.train_step_sae(sae, examples, build_train_config(
        n_steps=2, lm_lr=0.0, n_threads=torch.get_num_threads()), progress=False)
    for name, value in sae.state_dict().items():
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(value, before[name]), name
    for name in ("W_enc.weight", "projection.0.weight", "projection.2.weight"):
        assert not torch.equal(sae.state_dict()[name], before[name]), name
    groups = training.parameter_groups(sae, sae.phase_parameters(1), build_train_config(lm_lr=None))
    assert [g["lr"] for g in groups] == [3e-3, 3e-3]
    n_lm = sum(p.numel() for lm in (sae.encoder, sae.decoder) for p in lm.parameters()
               if p.requires_grad)
    assert sum(p.numel() for p in groups[0]["params"]) == n_lm


def test_phase_two_fits_the_context_head_and_leaves_the_autoencoder_alone(
        toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(32), step_tokenizer, sae.cfg)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    history = training.train_context_head(sae, examples, build_train_config(
        head_n_steps=30, batch_size=16, head_lr=1e-2), progress=False)
    assert history.nll.tail(5).mean() < history.nll.head(5).mean()
    for name, value in sae.state_dict().items():
        changed = not torch.equal(value, before[name])
        assert changed == name.startswith("context_head."), name
    mean, log_var = sae.context_distribution(data.collate(
        examples.context_ids[:3], examples.step_ids[:3], sae.sep_id, sae.eos_id, sae.pad_id))
    assert mean.shape == log_var.shape == (3, 16)


def test_context_head_never_sees_the_step(toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer).eval()
    examples = examples_of(step_table.head(2), step_tokenizer, sae.cfg)
    ctx = [examples.context_ids[0]] * 2
    batch = data.collate(ctx, [examples.step_ids[0], examples.step_ids[1]], sae.sep_id,
                         sae.eos_id, sae.pad_id)
    with torch.no_grad():
        mean, _ = sae.context_distribution(batch)
    assert torch.allclose(mean[0], mean[1], atol=1e-6)


@pytest.mark.slow
def test_ddp_with_two_processes_matches_one_process(tmp_path, saved_toy_model, tokenizer,
                                                    step_table):
    table = step_table.head(24)
    table.to_parquet(tmp_path / "steps.parquet")
    sae_cfg = build_step_sae_config()
    train_cfg = build_train_config(n_steps=3, batch_size=8, checkpoint_every=2,
                                   keep_checkpoints=None)  # every checkpoint rank 0 writes
    # the subprocesses import reasonlens from where this process did (under mutmut: the mutants)
    lib = Path(training.__file__).parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(lib), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "reasonlens.step_sae.distributed", "--model", str(saved_toy_model),
           "--steps", str(tmp_path / "steps.parquet"), "--out", str(tmp_path / "out"),
           "--sae-config", json.dumps(sae_cfg.to_dict()),
           "--train-config", json.dumps(train_cfg.to_dict()),
           "--checkpoint-dir", str(tmp_path / "ckpt")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000002", "step_000003"]

    tok = copy.deepcopy(tokenizer)
    torch.manual_seed(0)
    single = step_model.StepSAE.build(str(saved_toy_model), tok, sae_cfg)
    examples = examples_of(table, tok, sae_cfg)
    history = training.train_step_sae(single, examples, train_cfg, progress=False)
    ddp = step_model.StepSAE.load(tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "history.parquet"),
                                  history, rtol=1e-4)
    # Summation order differs between one and two processes; Adam can turn that into slightly
    # larger differences on weights whose gradient is near zero.
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-4), name


def eos_states(sae, examples) -> torch.Tensor:
    """The encoder LM's last hidden state at each step's <eos>, read by hand ``[n, d_model]``."""
    states = []
    with torch.no_grad():
        for context, step in zip(examples.context_ids, examples.step_ids):
            ids = torch.tensor([[*context, sae.sep_id, *step, sae.eos_id]])
            states.append(sae.encoder.base_model(input_ids=ids).last_hidden_state[0, -1])
    return torch.stack(states)


def test_training_starts_the_pre_bias_at_the_mean_eos_state(toy_model, step_tokenizer,
                                                           step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(3), step_tokenizer, sae.cfg)
    training.train_step_sae(sae, examples, build_train_config(n_steps=1, lr=0.0, lm_lr=0.0),
                            progress=False)
    torch.testing.assert_close(sae.b_pre.detach(), eos_states(sae, examples).mean(0))


def test_the_pre_bias_is_the_mean_over_the_first_256_steps(toy_model, step_tokenizer):
    sae = build_sae(toy_model, step_tokenizer)
    contexts, steps = [[5, 6]] * 256 + [[7]] * 4, [[8, 9]] * 256 + [[10, 11, 12]] * 4
    examples = data.StepExamples(pd.DataFrame({"step": ["s"] * 260}), contexts, steps)
    training.train_step_sae(sae, examples, build_train_config(n_steps=1, lr=0.0, lm_lr=0.0),
                            progress=False)
    first, last = eos_states(sae, examples.subset([0, 259]))
    assert not torch.allclose(first, last, atol=1e-3)
    torch.testing.assert_close(sae.b_pre.detach(), first, atol=1e-5, rtol=1e-5)


def test_without_warm_up_the_first_step_moves_at_the_full_learning_rate(toy_model,
                                                                        step_tokenizer,
                                                                        step_table):
    """AdamW's first step moves each weight by lr * g / (|g| + eps), about lr; weight decay 0."""
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    before = sae.W_enc.weight.detach().clone()
    training.train_step_sae(sae, examples, build_train_config(
        n_steps=1, lr=1e-2, lm_lr=0.0, warmup_steps=1, weight_decay=0.0), progress=False)
    moved = (sae.W_enc.weight.detach() - before).abs().max().item()
    assert moved == pytest.approx(1e-2, rel=1e-3)  # a warm-up factor of 1/2 would move 5e-3


def test_training_shows_named_progress_bars_with_recon_and_l1_unless_told_not_to(
        capsys, toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    cfg = build_train_config(n_steps=2, head_n_steps=2, batch_size=2)
    capsys.readouterr()
    history = training.train_step_sae(sae, examples, cfg)  # progress by default
    shown = capsys.readouterr().err
    assert re.search(r"(^|\r)step SAE: ", shown)
    last = history.iloc[-1]
    assert f"recon={last.recon_loss:.3f}" in shown and f"l1={last.l1:.2f}" in shown
    training.train_context_head(sae, examples, cfg)
    assert re.search(r"(^|\r)context head: ", capsys.readouterr().err)
    training.train_step_sae(sae, examples, cfg, progress=False)
    training.train_context_head(sae, examples, cfg, progress=False)
    assert capsys.readouterr().err == ""


def test_phase_two_draws_its_batches_from_seed_plus_one(toy_model, step_tokenizer, step_table):
    """With the head frozen at a fixed Gaussian, each step's NLL tells which steps it drew."""
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(6), step_tokenizer, sae.cfg)
    mean, log_var = torch.linspace(-0.5, 0.5, 16), torch.linspace(-2.0, 1.0, 16)
    with torch.no_grad():
        sae.context_head.net[2].weight.zero_()
        sae.context_head.net[2].bias.copy_(torch.cat([mean, log_var]))
        z = sae.sparse_latent(eos_states(sae, examples))
    per_step = 0.5 * (math.log(2 * math.pi) + log_var + (z - mean) ** 2 / log_var.exp()).mean(1)
    cfg = build_train_config(head_n_steps=3, batch_size=2, head_lr=0.0, seed=4)
    history = training.train_context_head(sae, examples, cfg, progress=False)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    expected = [per_step[torch.randint(6, (2,), generator=generator)].mean().item()
                for _ in range(3)]
    assert history.nll.tolist() == pytest.approx(expected, rel=1e-5)
    assert len(set(np.round(expected, 6))) > 1  # different batches give different NLLs


def test_training_logs_the_loss_of_its_formula(toy_model, step_tokenizer, step_table):
    # One example (every batch is that step), learning rates 0 (the model never changes), and a
    # hand-set encoder bias: the pre-bias starts at the step's own state, so W (h - b_pre) = 0
    # and the latent is ReLU(b) / ||ReLU(b)|| = (1, 2, 3, 4, 5) / sqrt(55) on latents 11..15.
    sae = build_sae(toy_model, step_tokenizer, l1_coefficient=0.5, l1_target=2.0)
    with torch.no_grad():
        sae.W_enc.bias.copy_(torch.arange(16.0) - 10.0)
    one = examples_of(step_table.head(1), step_tokenizer, sae.cfg)
    history = training.train_step_sae(sae, one, build_train_config(
        n_steps=3, batch_size=2, lr=0.0, lm_lr=0.0, l1_warmup_steps=2), progress=False)
    l1 = 15 / 55 ** 0.5
    batch = data.collate(one.context_ids, one.step_ids, sae.sep_id, sae.eos_id, sae.pad_id)
    expected_latent = torch.zeros(16)
    expected_latent[11:] = torch.arange(1.0, 6.0) / 55 ** 0.5
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(batch)[0], expected_latent)
        recon, right = sae.reconstruct(batch, expected_latent[None])
    assert history.step.tolist() == [1, 2, 3]
    np.testing.assert_allclose(history.l1, l1, rtol=1e-5)
    assert history.l0.tolist() == [5.0] * 3
    np.testing.assert_allclose(history.recon_loss, recon.item(), rtol=1e-5)
    np.testing.assert_allclose(history.token_accuracy, right.item(), rtol=1e-5)
    # the penalty's weight ramps 1/2, 2/2 over l1_warmup_steps = 2, then stays at 1
    penalty = 0.5 * (l1 - 2.0) ** 2
    np.testing.assert_allclose(history.loss,
                               [recon.item() + s * penalty for s in (0.5, 1.0, 1.0)], rtol=1e-5)


def test_the_checkpoint_holds_the_warmup_schedule_and_both_learning_rates(
        tmp_path, toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    cfg = build_train_config(n_steps=2, warmup_steps=4, lr=1e-2, lm_lr=1e-3, weight_decay=0.1)
    history = training.train_step_sae(sae, examples, cfg, checkpoint_dir=tmp_path,
                                      progress=False)
    path = tmp_path / "step_000002"
    extra = torch.load(path / "optimizer.pt", weights_only=True)
    # after two steps the linear warm-up factor is (2 + 1) / 4; the LMs' group comes first
    assert extra["schedule"]["_last_lr"] == pytest.approx([0.75e-3, 0.75e-2])
    short = training.train_step_sae(  # past the warm-up the factor stays 1
        build_sae(toy_model, copy.deepcopy(step_tokenizer)), examples,
        dataclasses.replace(cfg, n_steps=2, warmup_steps=1), checkpoint_dir=tmp_path / "short",
        progress=False)
    assert len(short) == 2
    assert torch.load(tmp_path / "short" / "step_000002" / "optimizer.pt", weights_only=True)[
        "schedule"]["_last_lr"] == pytest.approx([1e-3, 1e-2])
    groups = extra["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1]
    n_lm = sum(1 for lm in (sae.encoder, sae.decoder) for p in lm.parameters() if p.requires_grad)
    assert [len(g["params"]) for g in groups] == [n_lm, len(sae.phase_parameters(1)) - n_lm]
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 2 and state["train_config"] == cfg.to_dict()
    assert state["step_sae_config"] == sae.cfg.to_dict()
    assert state["data"] == training.examples_fingerprint(examples)
    pd.testing.assert_frame_equal(pd.DataFrame(state["history"]), history)
    # what may change on resumption and what may not
    assert training.changed_settings(path, sae, cfg, state["data"]) == []
    assert training.changed_settings(path, sae, dataclasses.replace(
        cfg, n_steps=9, checkpoint_every=3, n_threads=1), state["data"]) == []
    assert training.changed_settings(path, sae, dataclasses.replace(
        cfg, batch_size=2, seed=5), state["data"]) == ["batch_size", "seed"]
    other = build_sae(toy_model, copy.deepcopy(step_tokenizer), n_latents=8)
    assert training.changed_settings(path, other, cfg, "x") == ["step_sae_config",
                                                                "training examples"]
    # the optimizer state is read without unpickling arbitrary objects
    torch.save({"optimizer": argparse.Namespace()}, path / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        training.load_checkpoint(path, sae, None, None, torch.Generator(), cfg, state["data"])


def test_examples_fingerprint_tells_contexts_steps_and_order_apart():
    def fingerprint(contexts, steps):
        return training.examples_fingerprint(data.StepExamples(pd.DataFrame(), contexts, steps))

    base = fingerprint([[1, 2], [3]], [[4], [5, 6]])
    assert base == fingerprint([[1, 2], [3]], [[4], [5, 6]])
    for contexts, steps in (([[1, 2], [3]], [[4], [5, 7]]), ([[1], [2, 3]], [[4], [5, 6]]),
                            ([[3], [1, 2]], [[5, 6], [4]]), ([[1, 2]], [[4]])):
        assert fingerprint(contexts, steps) != base


def test_latest_checkpoint_is_the_one_with_the_most_steps(tmp_path):
    assert training.latest_checkpoint(None) is None
    assert training.latest_checkpoint(tmp_path / "absent") is None
    assert training.latest_checkpoint(tmp_path) is None
    for name in ("step_000003", "step_000010", "step_000009", "step_000020.tmp", "notes"):
        (tmp_path / name).mkdir()
    assert training.latest_checkpoint(tmp_path) == tmp_path / "step_000010"
    (tmp_path / "step_999999").mkdir()
    (tmp_path / "step_1000000").mkdir()  # past six digits: by number, not by name
    assert training.latest_checkpoint(tmp_path) == tmp_path / "step_1000000"


def test_checkpoints_are_written_every_checkpoint_every_steps_and_at_the_end(
        tmp_path, toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    training.train_step_sae(sae, examples, build_train_config(
        n_steps=4, checkpoint_every=3, keep_checkpoints=None), checkpoint_dir=tmp_path / "all",
        progress=False)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["step_000003", "step_000004"]
    training.train_step_sae(build_sae(toy_model, step_tokenizer), examples, build_train_config(
        n_steps=5, checkpoint_every=2), checkpoint_dir=tmp_path / "latest", progress=False)
    assert [p.name for p in (tmp_path / "latest").iterdir()] == ["step_000005"]  # keeps 1


def test_pruning_keeps_the_latest_checkpoints_by_step_count(tmp_path):
    for name in ("step_000010", "step_000002", "step_1000000", ".step_000020.tmp", "notes"):
        (tmp_path / name).mkdir()
    assert training.prune_checkpoints(tmp_path, None) == []
    assert training.prune_checkpoints(tmp_path, 2) == [tmp_path / "step_000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".step_000020.tmp", "notes", "step_000010", "step_1000000"]
    with pytest.raises(ValueError, match="keep_checkpoints"):
        build_train_config(keep_checkpoints=0)


def test_phase_two_logs_the_gaussian_nll_by_its_formula(toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    one = examples_of(step_table.head(1), step_tokenizer, sae.cfg)  # every batch is this step
    mean, log_var = torch.linspace(-0.5, 0.5, 16), torch.linspace(-2.0, 1.0, 16)
    with torch.no_grad():  # the head predicts (mean, log_var) whatever the context
        sae.context_head.net[2].weight.zero_()
        sae.context_head.net[2].bias.copy_(torch.cat([mean, log_var]))
    history = training.train_context_head(sae, one, build_train_config(
        head_n_steps=2, batch_size=3, head_lr=0.0), progress=False)  # head_lr 0: never moves
    with torch.no_grad():
        z = sae.sparse_latent(eos_states(sae, one))[0]
    nll = 0.5 * (math.log(2 * math.pi) + log_var + (z - mean) ** 2 / log_var.exp()).mean()
    assert history.step.tolist() == [1, 2]
    assert history.nll.tolist() == pytest.approx([nll.item()] * 2, rel=1e-5)
    assert history.mse.tolist() == pytest.approx([((z - mean) ** 2).mean().item()] * 2, rel=1e-5)
    trainable = {n for n, p in sae.named_parameters() if p.requires_grad}
    assert "W_enc.weight" in trainable and "context_head.net.0.weight" not in trainable


def test_both_phases_draw_their_batches_from_the_config_seed_alone(toy_model, step_tokenizer,
                                                                 step_table):
    histories = []
    for global_seed in (1, 2):
        sae = build_sae(toy_model, copy.deepcopy(step_tokenizer))
        examples = examples_of(step_table.head(8), step_tokenizer, sae.cfg)
        torch.manual_seed(global_seed)  # the global RNG must not matter
        cfg = build_train_config(n_steps=2, head_n_steps=2, batch_size=2)
        histories.append((training.train_step_sae(sae, examples, cfg, progress=False),
                          training.train_context_head(sae, examples, cfg, progress=False)))
    for first, second in zip(*histories):
        pd.testing.assert_frame_equal(first, second)


def test_reconstruction_metrics_average_each_condition_over_steps(capsys, toy_model,
                                                                  step_tokenizer):
    sae = build_sae(toy_model, step_tokenizer).eval()
    a, b = 5, 6  # as in the token-accuracy test: the decoder can only guess a or b
    v = torch.randn(toy_model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head = sae.decoder.get_output_embeddings().weight
        head.zero_()
        head[a], head[b] = v, -v
        sae.projection[-1].weight.mul_(30.0)  # a loud prefix: the latent changes the guesses
    contexts = [[a, b], [b], [a, a], [b, b, a], [a]]
    steps = [[a, b, a], [b, b], [a, a, b, b], [b, a], [a, b, b]]
    examples = data.StepExamples(pd.DataFrame({"step": ["s"] * 5}), contexts, steps)
    capsys.readouterr()
    metrics = inference.reconstruction_metrics(sae, examples, batch_size=2)
    assert re.search(r"(^|\r)reconstruct: ", capsys.readouterr().err)  # the progress bar's label
    # batches {0, 1}, {2, 3}, {4}; "shuffled" rolls the latents by one within a batch
    partner = [1, 0, 3, 2, 4]
    singles = [data.collate([c], [s], sae.sep_id, sae.eos_id, sae.pad_id)
               for c, s in zip(examples.context_ids, examples.step_ids)]
    expected = {c: np.zeros(2) for c in ("own", "shuffled", "zero", "context_head")}
    with torch.no_grad():
        latents = [sae.encode(b) for b in singles]
        for i, batch in enumerate(singles):
            for name, z in (("own", latents[i]), ("shuffled", latents[partner[i]]),
                            ("zero", torch.zeros_like(latents[i])),
                            ("context_head", sae.context_distribution(batch)[0])):
                expected[name] += [t.item() for t in sae.reconstruct(batch, z)]
    assert metrics.condition.tolist() == list(expected)
    for name, (loss, accuracy) in expected.items():
        row = metrics.set_index("condition").loc[name]
        assert row.recon_loss == pytest.approx(loss / 5, rel=1e-4), name
        assert row.token_accuracy == pytest.approx(accuracy / 5, rel=1e-4), name
    # not vacuous: another step's latent changes the loss, and some guesses are right
    assert abs(expected["own"][0] - expected["shuffled"][0]) > 0.05
    assert expected["own"][1] > 0


def test_token_accuracy_is_the_share_of_step_tokens_and_eos_the_argmax_gets_right(
        toy_model, step_tokenizer):
    sae = build_sae(toy_model, step_tokenizer).eval()
    a, b = 5, 6  # the decoder can only guess a (when v . h > 0) or b, so guesses vary by position
    v = torch.randn(toy_model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head = sae.decoder.get_output_embeddings().weight
        head.zero_()
        head[a], head[b] = v, -v
    contexts = [[a, b, a], [b], [a, a, b, b]]
    steps = [[a, b, b, a, a], [b, a, b], [a, a, a, b, a, b, b]]
    batch = data.collate(contexts, steps, sae.sep_id, sae.eos_id, sae.pad_id)
    with torch.no_grad():
        latents = sae.encode(batch)
        _, right = sae.reconstruct(batch, latents)
        expected = []
        for i, (context, step) in enumerate(zip(contexts, steps)):
            embed = sae.decoder.get_input_embeddings()
            before = embed(torch.tensor([[*context, sae.sep_id]]))
            targets = torch.tensor([*step, sae.eos_id])  # <eos> is a target no guess can hit
            inputs = torch.cat([before, sae.prefix(latents[i: i + 1]), embed(targets[None])], 1)
            logits = sae.decoder(inputs_embeds=inputs).logits[0]
            # the last prefix vector predicts the first step token, and so on up to <eos>
            guesses = logits[before.shape[1] + sae.cfg.n_prefix - 1: -1].argmax(-1)
            expected.append((guesses == targets).float().mean().item())
    assert right.tolist() == pytest.approx(expected)
    assert 0 < max(expected) and len(set(expected)) > 1  # the check is not vacuous


def test_ddp_rejects_a_batch_that_does_not_split_evenly(monkeypatch, toy_model, step_tokenizer,
                                                        step_table):
    monkeypatch.setattr(training, "_rank_and_world", lambda: (0, 3))
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    with pytest.raises(ValueError, match=r"batch_size=4 must be divisible by the 3 ranks; use "
                                         r"e\.g\. batch_size=3\.$"):
        training.train_step_sae(sae, examples, build_train_config(), progress=False)
    with pytest.raises(ValueError, match=r"batch_size=2 must be divisible by the 3 ranks; use "
                                         r"e\.g\. batch_size=3\.$"):  # fewer than the ranks
        training.train_step_sae(sae, examples, build_train_config(batch_size=2), progress=False)


def test_a_progress_bar_named_desc_shows_only_for_more_than_one_batch(
        capsys, toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(3), step_tokenizer, sae.cfg)
    ctx, steps = examples.context_ids, examples.step_ids
    capsys.readouterr()
    assert len(list(inference.batches(sae, ctx, steps, 2, desc="encoding"))) == 2
    shown = capsys.readouterr().err
    assert "encoding" in shown and "2/2" in shown  # the bar, named, counts batches
    for batch_size, desc in ((3, "encoding"), (4, "encoding"), (2, None), (1, None)):
        assert len(list(inference.batches(sae, ctx, steps, batch_size, desc=desc))) == \
            -(-3 // batch_size)
        assert capsys.readouterr().err == "", (batch_size, desc)  # one batch, or no name


def test_encode_steps_gives_unit_latents_by_default_and_labels_its_bar(
        capsys, toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer).eval()
    examples = examples_of(step_table.head(3), step_tokenizer, sae.cfg)
    capsys.readouterr()
    latents = inference.encode_steps(sae, examples, batch_size=2)
    assert re.search(r"(^|\r)encode: ", capsys.readouterr().err)  # the progress bar's label
    assert latents.shape == (3, sae.cfg.n_latents)
    np.testing.assert_allclose(np.linalg.norm(latents, axis=1), 1.0, rtol=1e-5)
    batch = data.collate(examples.context_ids, examples.step_ids, sae.sep_id, sae.eos_id,
                         sae.pad_id)
    with torch.no_grad():
        np.testing.assert_allclose(latents, sae.encode(batch).numpy(), atol=1e-5)


def test_encode_steps_and_reconstruction_metrics_carry_no_gradient(toy_model, step_tokenizer,
                                                                   step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(3), step_tokenizer, sae.cfg)
    for dense in (False, True):
        assert isinstance(inference.encode_steps(sae, examples, batch_size=2, dense=dense),
                          np.ndarray)  # .numpy() of a tensor that needs grad would raise
    assert not sae.training  # both put the model in eval mode
    sae.train()
    metrics = inference.reconstruction_metrics(sae, examples, batch_size=2)
    assert not sae.training and np.isfinite(metrics[["recon_loss", "token_accuracy"]]).all().all()
    sae.init_pre_bias(data.collate(examples.context_ids, examples.step_ids, sae.sep_id,
                                   sae.eos_id, sae.pad_id))
    assert sae.b_pre.requires_grad and sae.b_pre.grad_fn is None  # still a leaf parameter


def test_latent_density_counts_active_steps():
    latents = torch.tensor([[0.0, 1.0], [0.6, 0.8], [0.0, 1.0], [0.0, 0.0]]).numpy()
    assert inference.latent_density(latents).tolist() == [0.25, 0.75]


def test_the_sparsity_penalty_ramps_up_over_l1_warmup_steps(toy_model, step_tokenizer,
                                                            step_table):
    gaps = []
    for warmup in (0, 10):
        sae = build_sae(toy_model, copy.deepcopy(step_tokenizer), l1_coefficient=1.0)
        examples = examples_of(step_table.head(8), step_tokenizer, sae.cfg)
        history = training.train_step_sae(sae, examples, build_train_config(
            n_steps=1, l1_warmup_steps=warmup), progress=False)
        gaps.append((history.loss - history.recon_loss).iloc[0])
    assert gaps[0] > 0 and gaps[1] == pytest.approx(gaps[0] / 10, rel=1e-4)
