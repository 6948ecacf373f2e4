"""Tests for reasonlens.step_sae: data, model, training (resume, DDP) and inference."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
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


@pytest.fixture(scope="module")
def step_table(world):
    return data.world_step_table(world.steps, world.problems, splits=("train",))


@pytest.fixture()
def step_tokenizer(tokenizer):
    return copy.deepcopy(tokenizer)  # build() adds <sep>; keep the session tokenizer intact


def build_sae(toy_model, tokenizer, seed=0, **overrides) -> step_model.StepSAE:
    torch.manual_seed(seed)
    return step_model.StepSAE.build(toy_model, tokenizer, build_step_sae_config(**overrides))


def examples_of(table, tokenizer, cfg) -> data.StepExamples:
    return data.tokenize_steps(table, tokenizer, cfg.max_context_tokens, cfg.max_step_tokens)


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
    ('["a list"]', r"gsm8k.jsonl:2 is a list, not a JSON object"),
    ({"question": "q"}, r"gsm8k.jsonl:2 lacks the field 'answer'"),
    ({"question": "q", "answer": 5}, r"gsm8k.jsonl:2: field 'answer' must be a non-empty string"),
    ({"question": "  ", "answer": "a"}, r"field 'question' must be a non-empty string"),
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
    for lm in (sae.encoder, sae.decoder):
        assert lm.get_input_embeddings().num_embeddings == n_before + 1
    assert toy_model.get_input_embeddings().num_embeddings == n_before  # the source is untouched


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
    sae.save(tmp_path / "sae")
    loaded = step_model.StepSAE.load(tmp_path / "sae")
    assert loaded.cfg == sae.cfg and loaded.sep_id == sae.sep_id
    assert (inference.encode_steps(loaded, examples) == inference.encode_steps(sae, examples)).all()
    with pytest.raises(FileNotFoundError, match="not a saved step-level SAE"):
        step_model.StepSAE.load(tmp_path)


@pytest.mark.parametrize("field, value", [("l1_target", 0.5), ("l1_target", 5.0),
                                          ("n_prefix", 0), ("max_step_tokens", 0)])
def test_config_rejects_bad_values_naming_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        build_step_sae_config(**{field: value})


def test_configs_round_trip_through_dicts():
    cfg = build_step_sae_config(n_prefix=4)
    assert step_model.StepSAEConfig.from_dict(cfg.to_dict()) == cfg
    train_cfg = build_train_config(checkpoint_every=3)
    assert training.StepSAETrainConfig.from_dict(train_cfg.to_dict()) == train_cfg
    with pytest.raises(ValueError, match="unknown parameter"):
        step_model.StepSAEConfig.from_dict({"n_latent": 3})


# --- training --------------------------------------------------------------------------------
def test_resume_from_a_checkpoint_continues_the_same_run(tmp_path, toy_model, step_tokenizer,
                                                         step_table):
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
    rest = training.train_step_sae(resumed, examples, build_train_config(n_steps=6),
                                   checkpoint_dir=tmp_path, progress=False)
    assert len(rest) == 6 and rest.step.tolist() == list(range(1, 7))
    pd.testing.assert_frame_equal(rest.head(3), part)
    pd.testing.assert_frame_equal(rest, full, rtol=1e-4)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ValueError, match=r"\['lr'\] differ"):
        training.train_step_sae(build_sae(toy_model, copy.deepcopy(step_tokenizer)), examples,
                                build_train_config(n_steps=8, lr=1e-4), checkpoint_dir=tmp_path,
                                progress=False)
    with pytest.raises(ValueError, match="training examples"):
        training.train_step_sae(build_sae(toy_model, copy.deepcopy(step_tokenizer)),
                                examples.subset(range(20)), build_train_config(n_steps=8),
                                checkpoint_dir=tmp_path, progress=False)


def test_a_changed_run_can_restart_instead_of_resuming(tmp_path, toy_model, step_tokenizer,
                                                       step_table):
    sae = build_sae(toy_model, copy.deepcopy(step_tokenizer))
    examples = examples_of(step_table.head(12), step_tokenizer, sae.cfg)
    training.train_step_sae(sae, examples, build_train_config(n_steps=2), checkpoint_dir=tmp_path,
                            progress=False)
    again = training.train_step_sae(build_sae(toy_model, copy.deepcopy(step_tokenizer)), examples,
                                    build_train_config(n_steps=3, lr=1e-4),
                                    checkpoint_dir=tmp_path, progress=False,
                                    restart_if_changed=True)
    assert len(again) == 3 and [p.name for p in tmp_path.iterdir()] == ["step_000003"]


def test_train_rejects_empty_examples(toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    empty = examples_of(step_table.head(2), step_tokenizer, sae.cfg).subset([])
    with pytest.raises(ValueError, match="step_n_train"):
        training.train_step_sae(sae, empty, build_train_config(), progress=False)


def test_the_lms_learn_at_lm_lr_and_the_bottleneck_at_lr(toy_model, step_tokenizer, step_table):
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(8), step_tokenizer, sae.cfg)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    training.train_step_sae(sae, examples, build_train_config(n_steps=2, lm_lr=0.0),
                            progress=False)
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


def test_ddp_with_two_processes_matches_one_process(tmp_path, saved_toy_model, tokenizer,
                                                    step_table):
    table = step_table.head(24)
    table.to_parquet(tmp_path / "steps.parquet")
    sae_cfg = build_step_sae_config()
    train_cfg = build_train_config(n_steps=3, batch_size=8, checkpoint_every=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1] / "lib")}
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


def test_ddp_rejects_a_batch_that_does_not_split_evenly(monkeypatch, toy_model, step_tokenizer,
                                                        step_table):
    monkeypatch.setattr(training, "_rank_and_world", lambda: (0, 3))
    sae = build_sae(toy_model, step_tokenizer)
    examples = examples_of(step_table.head(4), step_tokenizer, sae.cfg)
    with pytest.raises(ValueError, match="batch_size=4 must be divisible by the 3 ranks"):
        training.train_step_sae(sae, examples, build_train_config(), progress=False)


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
