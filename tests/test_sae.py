"""SAE training through SAELens, save/load, resuming, evaluation and errors (reasonlens.sae)."""

from __future__ import annotations

import json
import logging
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig

import helpers
from reasonlens import models
from reasonlens import sae as sae_mod

D_MODEL = helpers.build_toy_model_config().d_model


def build_sae_train_config(**overrides) -> sae_mod.SAETrainConfig:
    return sae_mod.SAETrainConfig(**{
        "hook_name": "blocks.1.hook_resid_post", "expansion_factor": 2, "l1_coefficient": 1.0,
        "training_tokens": 6 * 128, "batch_size": 128, "lr": 1e-3, "context_size": 64,
        "store_batch_size_prompts": 4, "log_every": 1, **overrides})


@pytest.fixture(scope="module")
def trained(hooked, contexts):
    return sae_mod.train_sae(hooked, contexts, build_sae_train_config())


def identity_sae(d_in: int, hook_name: str) -> StandardSAE:
    """ReLU(x) - ReLU(-x) = x: a 2*d_in-wide SAE that reconstructs every input exactly."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=False))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = hook_name
    return sae


def test_config_round_trip_and_validation():
    cfg = build_sae_train_config(architecture="topk", k=8)
    assert sae_mod.SAETrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.n_steps == 6
    with pytest.raises(ValueError, match="architecture"):
        build_sae_train_config(architecture="gated-ish")
    with pytest.raises(ValueError, match="l1_coefficient"):
        build_sae_train_config(l1_coefficient=-1)
    with pytest.raises(ValueError, match="training_tokens"):
        build_sae_train_config(training_tokens=10)
    with pytest.raises(ValueError, match="lr"):
        build_sae_train_config(lr=0.0)
    with pytest.raises(ValueError, match="n_batches_for_norm_estimate"):
        build_sae_train_config(n_batches_for_norm_estimate=0)
    with pytest.raises(ValueError, match="unknown parameter"):
        sae_mod.SAETrainConfig.from_dict({"expansion": 4})


def test_train_returns_inference_sae_and_history(trained):
    sae, history = trained
    assert isinstance(sae, SAE) and not hasattr(sae, "training_forward_pass")
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_MODEL, 2 * D_MODEL)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert list(history["step"]) == list(range(1, 7))
    assert {"mse_loss", "l1_loss", "explained_variance", "l0"} <= set(history.columns)
    loss = history["mse_loss"] + history["l1_loss"]  # the objective; MSE alone may rise as L1 falls
    assert loss.iloc[-1] < loss.iloc[0]


def test_save_and_load_from_disk_round_trip(trained, hooked, contexts, tmp_path):
    sae, _ = trained
    sae_mod.save_sae(sae, tmp_path / "sae")
    reloaded = SAE.load_from_disk(tmp_path / "sae")
    _, cache = hooked.run_with_cache(contexts[:2], ["blocks.1.hook_resid_post"])
    acts = cache["blocks.1.hook_resid_post"]
    assert torch.equal(sae.encode(acts), reloaded.encode(acts))
    assert torch.equal(sae_mod.load_sae(tmp_path / "sae").W_dec, sae.W_dec)
    with pytest.raises(FileNotFoundError, match="03_train_sae"):
        sae_mod.load_sae(tmp_path / "missing")


def test_interrupted_training_resumes_from_its_checkpoint(hooked, contexts, tmp_path):
    cfg = build_sae_train_config()
    with pytest.raises(KeyboardInterrupt):
        sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=stop_at(3))
    checkpoint = sae_mod.latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == str(3 * cfg.batch_size)

    seen = []
    sae, history = sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=seen.append)
    assert seen == [4, 5, 6]  # continued after step 3, did not start over
    assert list(history["step"]) == list(range(1, 7))  # history kept across the interruption
    assert sae.cfg.d_sae == 2 * D_MODEL

    # A finished run is loaded, not retrained; a different config (or resume=False) starts over.
    seen.clear()
    again, _ = sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=seen.append)
    assert seen == [] and torch.equal(again.W_enc, sae.W_enc)
    seen.clear()
    sae_mod.train_sae(hooked, contexts, cfg.replace(lr=2e-3), tmp_path, on_step=seen.append)
    assert seen[0] == 1


def assert_same_training(sae, history, reference, reference_history):
    """Same weights (to float rounding) and the same metrics at every step as the reference run."""
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name), getattr(reference, name),
                                   rtol=1e-5, atol=1e-7, msg=name)
    pd.testing.assert_frame_equal(history, reference_history, rtol=1e-5)


def stop_at(n_stop: int, error: BaseException | type[BaseException] = KeyboardInterrupt):
    """An ``on_step`` that raises ``error`` once step ``n_stop`` has finished."""
    def on_step(n_steps):
        if n_steps == n_stop:
            raise error
    return on_step


@pytest.mark.parametrize("normalize_activations", sae_mod.NORMALIZATIONS)
def test_resumed_training_ends_where_uninterrupted_training_does(hooked, contexts, tmp_path,
                                                                normalize_activations):
    # 10 steps with lr warm-up and decay and an L1 warm-up, so that every scheduler matters;
    # the shuffling buffer holds 10 batches, so stops at 2 and 7 fall inside two refills.
    cfg = build_sae_train_config(training_tokens=10 * 128, lr_warm_up_steps=2,
                                 lr_decay_steps=3, l1_warm_up_steps=4,
                                 normalize_activations=normalize_activations,
                                 n_batches_for_norm_estimate=30)
    reference, reference_history = sae_mod.train_sae(hooked, contexts, cfg)
    for n_stop in (2, 7):
        with pytest.raises(KeyboardInterrupt):
            sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=stop_at(n_stop))
        assert sae_mod.latest_checkpoint(tmp_path).name == str(n_stop * cfg.batch_size)
        torch.manual_seed(100 + n_stop)  # as a new process would, with another RNG state
    seen = []
    sae, history = sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=seen.append)
    assert seen == [8, 9, 10]
    assert_same_training(sae, history, reference, reference_history)


def test_resume_after_a_crash_starts_from_the_periodic_checkpoint(hooked, contexts, tmp_path,
                                                                  trained):
    # One intermediate checkpoint: after step 4 of 6 (the first past half the tokens).
    cfg = build_sae_train_config(n_checkpoints=1)
    with pytest.raises(RuntimeError, match="power cut"):
        sae_mod.train_sae(hooked, contexts, cfg, tmp_path,
                          on_step=stop_at(5, RuntimeError("power cut")))
    assert sae_mod.latest_checkpoint(tmp_path).name == str(4 * cfg.batch_size)
    seen = []
    sae, history = sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=seen.append)
    assert seen == [5, 6]
    assert_same_training(sae, history, *trained)


def test_a_checkpoint_cut_short_is_never_resumed_from(hooked, contexts, tmp_path, trained):
    # A process killed while saving the checkpoint after step 5 leaves a folder whose files are all
    # there, one cut short; only its completion marker, written last, is missing.
    cfg = build_sae_train_config(n_checkpoints=1)
    with pytest.raises(RuntimeError, match="power cut"):
        sae_mod.train_sae(hooked, contexts, cfg, tmp_path,
                          on_step=stop_at(5, RuntimeError("power cut")))
    complete = sae_mod.latest_checkpoint(tmp_path)
    assert complete.name == str(4 * cfg.batch_size)
    cut = tmp_path / str(5 * cfg.batch_size)
    shutil.copytree(complete, cut)
    (cut / sae_mod.CHECKPOINT_COMPLETE).unlink()
    weights = cut / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    seen = []
    sae, history = sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=seen.append)
    assert seen == [5, 6]  # resumed from the complete checkpoint after step 4
    assert_same_training(sae, history, *trained)

    # The run's record cut short by a kill: start over rather than fail or trust what is there.
    (tmp_path / sae_mod.TRAIN_CONFIG_FILENAME).write_text('{"training_tokens": ')
    seen.clear()
    sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=seen.append)
    assert seen[0] == 1


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    for name, complete in (("256", True), ("384", False), ("final_512", False)):
        folder = tmp_path / name
        folder.mkdir()
        for file in sae_mod._CHECKPOINT_FILES:
            (folder / file).write_text("x")
        if not complete:
            (folder / sae_mod.CHECKPOINT_COMPLETE).unlink()
    assert sae_mod.latest_checkpoint(tmp_path) == tmp_path / "256"


def test_a_signal_stops_training_when_the_step_ends(hooked, contexts, tmp_path, trained):
    # SIGINT arrives while the model computes activations for the first buffer, before step 1:
    # training finishes step 1, checkpoints, and a rerun ends as if never stopped.
    cfg = build_sae_train_config()
    n_forwards = []

    def signal_at_3rd_forward(activation, hook):
        n_forwards.append(1)
        if len(n_forwards) == 3:
            signal.raise_signal(signal.SIGINT)

    previous_handler = signal.getsignal(signal.SIGINT)
    with hooked.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", signal_at_3rd_forward)]):
        with pytest.raises(KeyboardInterrupt):
            sae_mod.train_sae(hooked, contexts, cfg, tmp_path)
    assert signal.getsignal(signal.SIGINT) is previous_handler
    assert not hooked.model.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks
    assert sae_mod.latest_checkpoint(tmp_path).name == str(cfg.batch_size)
    sae, history = sae_mod.train_sae(hooked, contexts, cfg, tmp_path)
    assert_same_training(sae, history, *trained)


def test_evaluation_metrics_are_in_range(trained, hooked, contexts):
    sae, _ = trained
    result = sae_mod.evaluate_sae(hooked, sae, contexts[:4], batch_size=2)
    m = result.metrics()
    assert m["explained_variance"] <= 1.0
    assert 0 <= m["mean_l0"] <= sae.cfg.d_sae
    assert 0 <= m["frac_dead"] <= 1
    assert m["ce_clean"] > 0 and m["ce_zero_ablation"] > 0
    assert result.feature_density.shape == (sae.cfg.d_sae,)
    assert ((result.feature_density >= 0) & (result.feature_density <= 1)).all()
    assert m["frac_dead"] == pytest.approx((result.feature_density == 0).mean())
    assert m["n_tokens"] <= contexts[:4].numel()


def test_perfect_reconstruction_scores_one(hooked, contexts):
    sae = identity_sae(D_MODEL, "blocks.0.hook_resid_post")
    m = sae_mod.evaluate_sae(hooked, sae, contexts[:2]).metrics()
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_spliced"] == pytest.approx(m["ce_clean"], abs=1e-4)
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("architecture", ["topk", "jumprelu"])
def test_other_architectures_train(hooked, contexts, architecture):
    cfg = build_sae_train_config(architecture=architecture, k=4, training_tokens=128)
    sae, _ = sae_mod.train_sae(hooked, contexts, cfg)
    assert sae.cfg.architecture() == architecture


def test_clear_errors(hooked, contexts, tmp_path):
    with pytest.raises(ValueError, match="hook_name"):
        sae_mod.train_sae(hooked, contexts, build_sae_train_config(
            hook_name="blocks.9.hook_resid_post"))
    with pytest.raises(ValueError, match="tokens"):
        sae_mod.train_sae(hooked, contexts[:0], build_sae_train_config())
    with pytest.raises(ValueError, match="context_size"):
        sae_mod.train_sae(hooked, contexts, build_sae_train_config(context_size=1024))
    with pytest.raises(ValueError, match="d_in"):
        sae_mod.evaluate_sae(hooked, identity_sae(16, "blocks.0.hook_resid_post"), contexts)
    with pytest.raises(ValueError, match="hook_name"):
        sae_mod.evaluate_sae(hooked, identity_sae(D_MODEL, "blocks.5.hook_resid_post"), contexts)
    with pytest.raises(ValueError, match="tokens"):
        sae_mod.evaluate_sae(hooked, identity_sae(D_MODEL, "blocks.0.hook_resid_post"),
                             contexts[:0])


def test_evaluation_brings_the_sae_to_the_model_first(hooked, contexts):
    meta = identity_sae(D_MODEL, "blocks.0.hook_resid_post").to("meta")
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        sae_mod.evaluate_sae(hooked, meta, contexts[:2])


# --- metrics against a hand computation ------------------------------------------------------------
def soft_threshold_sae(d_in: int, threshold: float, n_dead: int, hook_name: str) -> StandardSAE:
    """W_enc = [I, -I, 0], b_enc = -threshold, W_dec = [I; -I; 0]: features i and d_in + i fire
    where x_i > threshold and x_i < -threshold, the reconstruction is the soft-thresholded input
    sign(x) * max(|x| - threshold, 0), and the last ``n_dead`` features (bias -1) never fire."""
    d_sae = 2 * d_in + n_dead
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye, torch.zeros(d_in, n_dead)], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye, torch.zeros(n_dead, d_in)], dim=0))
        sae.b_enc.copy_(torch.cat([torch.full((2 * d_in,), -threshold), -torch.ones(n_dead)]))
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = hook_name
    return sae


def hand_evaluation(ht, tokens, hook_name, threshold, n_dead, ignore):
    """The metrics of ``soft_threshold_sae`` from their definitions, with TransformerLens alone:
    explained variance 1 - E||x - x_hat||^2 / E||x - E[x]||^2 and L0 over non-special tokens,
    feature density, and the mean next-token CE (over predictions from non-special tokens) clean,
    with x_hat spliced in at non-special positions, and with the hook zeroed everywhere."""
    _, cache = ht.run_with_cache(tokens, names_filter=[hook_name])
    x = cache[hook_name].double()
    keep = ~torch.isin(tokens, torch.tensor(ignore, dtype=torch.long))
    x_hat = x.sign() * (x.abs() - threshold).clamp(min=0)
    kept, kept_hat = x[keep], x_hat[keep]
    explained = 1 - ((kept - kept_hat) ** 2).sum(-1).mean() / (
        (kept - kept.mean(0)) ** 2).sum(-1).mean()
    density = torch.cat([(kept > threshold).double().mean(0), (kept < -threshold).double().mean(0),
                         torch.zeros(n_dead, dtype=torch.float64)])

    def next_token_ce(replace=None):
        hooks = [(hook_name, replace)] if replace else []
        logits = ht.run_with_hooks(tokens, fwd_hooks=hooks).double()
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
        return nll[keep[:, :-1]].mean().item()

    clean = next_token_ce()
    spliced = next_token_ce(lambda act, hook: torch.where(keep[..., None], x_hat.to(act.dtype), act))
    zero = next_token_ce(lambda act, hook: torch.zeros_like(act))
    return dict(explained_variance=explained.item(),
                mean_l0=(kept.abs() > threshold).sum(-1).double().mean().item(),
                frac_dead=(density == 0).double().mean().item(), ce_clean=clean,
                ce_spliced=spliced, ce_zero_ablation=zero,
                ce_loss_recovered=(zero - spliced) / (zero - clean),
                n_tokens=int(keep.sum())), density.numpy()


def test_evaluation_metrics_match_a_hand_computation(fitted, contexts):
    hook_name, tokens = "blocks.0.hook_resid_post", contexts[:3]
    ignore = models.special_token_ids(fitted.tokenizer)
    _, cache = fitted.model.run_with_cache(tokens, names_filter=[hook_name])
    threshold = cache[hook_name].abs().median().item()  # about half the features fire
    # recorded at another hook, evaluated at the one asked for; 3 contexts in batches of 2
    sae = soft_threshold_sae(D_MODEL, threshold, n_dead=8, hook_name="blocks.1.hook_resid_post")
    result = sae_mod.evaluate_sae(fitted, sae, tokens, hook_name=hook_name, batch_size=2)
    expected, density = hand_evaluation(fitted.model, tokens, hook_name, threshold, 8, ignore)
    assert result.metrics() == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(result.feature_density, density, atol=1e-12)
    # the numbers are not degenerate: a partial reconstruction recovers part of the loss
    assert 0.2 < expected["explained_variance"] < 0.95 and 0 < expected["frac_dead"] < 1
    assert expected["ce_clean"] < expected["ce_spliced"] < expected["ce_zero_ablation"]
    assert 0.5 < result.ce_loss_recovered < 1  # about 0.9
    assert expected["n_tokens"] < tokens.numel()  # BOS/EOS/PAD were left out


def test_an_sae_that_reconstructs_nothing_recovers_no_loss(hooked, contexts):
    """x_hat = 0 everywhere: the spliced model is the zero-ablated one, so CE recovered is 0 and
    explained variance is 1 - E||x||^2 / Var(x); the encoder still fires on every coordinate."""
    hook_name, tokens = "blocks.0.hook_resid_post", contexts[:2]
    sae = identity_sae(D_MODEL, hook_name)
    with torch.no_grad():
        sae.W_dec.zero_()
    m = sae_mod.evaluate_sae(hooked, sae, tokens, exclude_special_tokens=False).metrics()
    assert m["ce_spliced"] == pytest.approx(m["ce_zero_ablation"], rel=1e-6)
    assert m["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert m["n_tokens"] == tokens.numel()  # nothing excluded
    _, cache = hooked.model.run_with_cache(tokens, names_filter=[hook_name])
    x = cache[hook_name].reshape(-1, D_MODEL).double()
    variance = ((x - x.mean(0)) ** 2).sum(-1).mean()
    assert m["explained_variance"] == pytest.approx(
        1 - (x ** 2).sum(-1).mean().item() / variance.item(), rel=1e-5)
    assert m["mean_l0"] == pytest.approx((x != 0).sum(-1).double().mean().item())
    assert list(m) == ["explained_variance", "mean_l0", "frac_dead", "ce_clean", "ce_spliced",
                       "ce_zero_ablation", "ce_loss_recovered", "n_tokens"]


def test_training_config_reaches_sae_lens():
    from sae_lens import (JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)

    cfg = build_sae_train_config(expansion_factor=3, l1_coefficient=2.5, l1_warm_up_steps=4,
                                 normalize_activations="expected_average_only_in",
                                 dtype="float64", device="meta")
    standard = sae_mod._training_sae_config(cfg, 8)
    assert isinstance(standard, StandardTrainingSAEConfig)
    assert (standard.d_in, standard.d_sae, standard.l1_coefficient, standard.l1_warm_up_steps,
            standard.normalize_activations, standard.dtype, standard.device) == (
        8, 24, 2.5, 4, "expected_average_only_in", "float64", "meta")
    jumprelu = sae_mod._training_sae_config(cfg.replace(architecture="jumprelu"), 8)
    assert isinstance(jumprelu, JumpReLUTrainingSAEConfig)
    assert (jumprelu.l0_coefficient, jumprelu.l0_warm_up_steps, jumprelu.d_sae) == (2.5, 4, 24)
    topk = sae_mod._training_sae_config(cfg.replace(architecture="topk", k=5), 8)
    assert isinstance(topk, TopKTrainingSAEConfig) and (topk.k, topk.d_sae) == (5, 24)


def test_latest_checkpoint_of_no_folder_is_none(tmp_path):
    assert sae_mod.latest_checkpoint(None) is None
    assert sae_mod.latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("field,bad", [
    ("expansion_factor", 0), ("l1_coefficient", -0.5), ("k", 0), ("batch_size", 0),
    ("context_size", 0), ("store_batch_size_prompts", 0), ("n_batches_for_norm_estimate", 0),
    ("n_checkpoints", -1), ("log_every", 0), ("l1_warm_up_steps", -1), ("lr_warm_up_steps", -1),
    ("lr_decay_steps", -1), ("dead_feature_window", -1)])
def test_config_names_each_bad_field(field, bad):
    with pytest.raises(ValueError, match=f"{field}={bad}"):
        build_sae_train_config(**{field: bad})


def test_config_accepts_its_bounds_and_checks_the_lr_schedule_fits():
    # the smallest valid values, and warm-up + decay filling all 6 steps exactly
    build_sae_train_config(expansion_factor=1, l1_coefficient=0.0, k=1, context_size=1,
                           store_batch_size_prompts=1, n_batches_for_norm_estimate=1,
                           n_checkpoints=0, log_every=1, lr_warm_up_steps=2, lr_decay_steps=4)
    assert build_sae_train_config(batch_size=1, training_tokens=1).n_steps == 1
    with pytest.raises(ValueError, match="= 7 exceeds the 6 training steps"):
        build_sae_train_config(lr_warm_up_steps=0, lr_decay_steps=7)
    with pytest.raises(ValueError, match="normalize_activations='layer'"):
        build_sae_train_config(normalize_activations="layer")


def test_contexts_come_as_a_tensor_a_table_or_a_dataset(contexts):
    from datasets import Dataset

    rows = contexts[:3]
    table = pd.DataFrame({"tokens": list(rows.numpy())})
    for given in (rows, rows.numpy(), table, Dataset.from_dict({"tokens": rows.tolist()})):
        got = sae_mod._tokens_tensor(given)
        assert got.dtype == torch.long and torch.equal(got, rows)
    with pytest.raises(ValueError, match="no 'tokens' column .*'ids'"):
        sae_mod._tokens_tensor(pd.DataFrame({"ids": [1]}))
    for empty in (table.head(0), Dataset.from_dict({"tokens": []})):
        with pytest.raises(ValueError, match=r"tokens is empty .*shape \(0, 0\)"):
            sae_mod._tokens_tensor(empty)


def test_evaluation_input_errors(hooked, contexts, toy_model):
    sae = identity_sae(D_MODEL, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="batch_size=0"):
        sae_mod.evaluate_sae(hooked, sae, contexts[:1], batch_size=0)
    special = torch.tensor(models.special_token_ids(hooked.tokenizer))
    with pytest.raises(ValueError, match="only special tokens"):
        sae_mod.evaluate_sae(hooked, sae, special.repeat(2, 4))
    with pytest.raises(TypeError, match="got LlamaForCausalLM"):
        sae_mod.evaluate_sae(toy_model, sae, contexts[:1])


def test_latest_checkpoint_takes_the_final_one(tmp_path):
    assert sae_mod.latest_checkpoint(tmp_path) is None  # a folder without checkpoints
    for name in ("256", "final_640"):
        (tmp_path / name).mkdir()
        for file in sae_mod._CHECKPOINT_FILES:
            (tmp_path / name / file).write_text("x")
    assert sae_mod.latest_checkpoint(tmp_path) == tmp_path / "final_640"


# --- the reference code's settings (issue 12) ---------------------------------------------------
def test_reference_settings_are_the_authors_yaml():
    # Values read by hand from AIRI-Institute/SAE-Reasoning training/configs/r1-distill-llama-8b.yaml.
    cfg = sae_mod.SAETrainConfig.reference()
    expected = dict(architecture="standard", hook_name="blocks.19.hook_resid_post",
                    expansion_factor=16, apply_b_dec_to_input=False,
                    normalize_activations="expected_average_only_in",
                    training_tokens=819_200_000, batch_size=4096, lr=5e-5, lr_warm_up_steps=0,
                    lr_decay_steps=40_000, l1_coefficient=5.0, l1_warm_up_steps=10_000,
                    context_size=1024, store_batch_size_prompts=8, dead_feature_window=1000,
                    device="cuda", seed=42, n_checkpoints=5, dtype="float32",
                    exclude_special_tokens=True)
    assert {name: getattr(cfg, name) for name in expected} == expected
    assert cfg.n_steps == 200_000  # the YAML's "200k steps"
    # the warm-up is 5% and the decay 20% of training, as its comments say
    assert (cfg.l1_warm_up_steps / cfg.n_steps, cfg.lr_decay_steps / cfg.n_steps) == (0.05, 0.2)
    short = sae_mod.SAETrainConfig.reference(training_tokens=4096 * 60_000, device="cpu")
    assert (short.n_steps, short.device, short.lr_decay_steps) == (60_000, "cpu", 40_000)
    with pytest.raises(ValueError, match="exceeds the 1000 training steps"):
        sae_mod.SAETrainConfig.reference(training_tokens=4096 * 1000)
    # the plain defaults stay the paper's and SAELens's
    default = sae_mod.SAETrainConfig()
    assert (default.normalize_activations, default.l1_warm_up_steps, default.lr_decay_steps,
            default.apply_b_dec_to_input) == ("none", 0, 0, True)


def test_apply_b_dec_to_input_reaches_the_sae(hooked, contexts):
    cfg = build_sae_train_config(apply_b_dec_to_input=False, training_tokens=3 * 128)
    assert sae_mod._training_sae_config(cfg, 8).apply_b_dec_to_input is False
    for architecture in ("topk", "jumprelu"):
        assert sae_mod._training_sae_config(cfg.replace(architecture=architecture),
                                            8).apply_b_dec_to_input is False
    assert sae_mod._training_sae_config(cfg.replace(apply_b_dec_to_input=True),
                                        8).apply_b_dec_to_input is True
    sae, _ = sae_mod.train_sae(hooked, contexts, cfg)
    assert sae.cfg.apply_b_dec_to_input is False
    _, cache = hooked.run_with_cache(contexts[:2], [cfg.hook_name])
    x = cache[cfg.hook_name].reshape(-1, D_MODEL)
    with torch.no_grad():
        by_hand = torch.relu(x @ sae.W_enc + sae.b_enc)  # no b_dec subtracted from x
        subtracted = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        torch.testing.assert_close(sae.encode(x), by_hand, rtol=1e-5, atol=1e-5)
    assert sae.b_dec.abs().max() > 1e-3  # b_dec was trained, so subtracting it would show
    assert not torch.allclose(by_hand, subtracted, rtol=1e-5, atol=1e-5)


def sae_lens_store(ht, tokens, cfg: sae_mod.SAETrainConfig, store_class=None, **overrides):
    """SAELens's own ActivationsStore (or ``store_class``), with the settings ``train_sae`` uses
    (or ``overrides``)."""
    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore

    return (store_class or ActivationsStore)(**{**dict(
        model=ht, dataset=Dataset.from_dict({"tokens": tokens[:, :cfg.context_size].tolist()}),
        streaming=False, hook_name=cfg.hook_name, hook_head_index=None,
        context_size=cfg.context_size, d_in=D_MODEL,
        n_batches_in_buffer=max(20, -(-4 * cfg.batch_size // cfg.context_size)),
        total_training_tokens=cfg.training_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        train_batch_size_tokens=cfg.batch_size, prepend_bos=False,
        normalize_activations=cfg.normalize_activations, device=torch.device("cpu"),
        dtype="float32",
        exclude_special_tokens=torch.tensor(models.special_token_ids(ht.tokenizer))),
        **overrides})


def reference_batches(ht, tokens, cfg: sae_mod.SAETrainConfig, n_batches: int):
    """The first batches SAELens's store serves when training starts from ``cfg.seed``.

    Before the first shuffle the global RNG has only initialised the SAE, so seed, draw the same
    initial weights, then read SAELens's store.
    """
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        StandardTrainingSAE(StandardTrainingSAEConfig(
            d_in=D_MODEL, d_sae=cfg.expansion_factor * D_MODEL,
            apply_b_dec_to_input=cfg.apply_b_dec_to_input,
            normalize_activations=cfg.normalize_activations))
        store = sae_lens_store(ht, tokens, cfg)
        return [next(store).clone() for _ in range(n_batches)]


def test_normalised_sae_saved_and_reloaded_encodes_raw_activations_as_trained(hooked, contexts,
                                                                             tmp_path, caplog):
    # Stop after the last step, before SAELens folds the scale into the weights: that checkpoint
    # holds the weights as trained (on scaled inputs) and the scale; resuming then folds and saves.
    n_estimate = 3
    cfg = build_sae_train_config(normalize_activations="expected_average_only_in",
                                 n_batches_for_norm_estimate=n_estimate)
    with pytest.raises(KeyboardInterrupt):
        sae_mod.train_sae(hooked, contexts, cfg, tmp_path / "ckpt", on_step=stop_at(cfg.n_steps))
    as_trained = sae_mod.latest_checkpoint(tmp_path / "ckpt")
    from safetensors.torch import load_file

    weights = load_file(as_trained / "sae_weights.safetensors")
    sae_lens_factor = json.loads((as_trained / "activation_scaler.json").read_text())[
        "scaling_factor"]
    sae, history = sae_mod.train_sae(hooked, contexts, cfg, tmp_path / "ckpt")
    sae_mod.save_sae(sae, tmp_path / "sae")
    # A finished run is loaded as it is (not resumed: that would estimate and fold the scale again).
    final = sae_mod.latest_checkpoint(tmp_path / "ckpt")
    assert final.name == f"final_{cfg.training_tokens}"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reasonlens.sae"):
        again, again_history = sae_mod.train_sae(hooked, contexts, cfg, tmp_path / "ckpt")
    assert caplog.messages == [f"training already finished in {final}; loading it"]
    assert_same_training(again, again_history, sae, history)
    reloaded = sae_mod.load_sae(tmp_path / "sae")
    assert reloaded.cfg.normalize_activations == "none"  # folded: raw inputs from now on

    # The scale, estimated here: sqrt(d_in) / mean norm over the batches it was estimated on.
    estimate_batches = reference_batches(hooked.model, contexts, cfg, n_estimate)
    norms = torch.cat(estimate_batches).norm(dim=-1)
    factor = D_MODEL ** 0.5 / norms.double().mean().item()
    assert sae_lens_factor == pytest.approx(factor, rel=1e-5)
    assert factor != pytest.approx(1.0, abs=0.05)  # else the test could not tell

    _, cache = hooked.run_with_cache(contexts[:3], [cfg.hook_name])
    raw = cache[cfg.hook_name].reshape(-1, D_MODEL)
    normalised = raw * factor
    with torch.no_grad():
        # The trained SAE on normalised inputs, by hand: ReLU((x - b_dec) W_enc + b_enc).
        expected = torch.relu((normalised - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"])
        got = reloaded.encode(raw)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert (expected > 0).any()
        # and decodes back to raw scale: x_hat_raw = x_hat_normalised / factor
        expected_out = (expected @ weights["W_dec"] + weights["b_dec"]) / factor
        torch.testing.assert_close(reloaded.decode(got), expected_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    # 24 contexts of <= 64 kept tokens; a 20-context buffer: 12 batches of 128 cross two
    # shuffles and the end of the contexts (which start again).
    {},
    # nothing filtered: refills of 4 x 64 tokens fill the 1280-token buffer exactly
    {"exclude_special_tokens": None},
    # contexts of 16 in a 10-context buffer: 160 tokens, 80 kept, room for one batch of 128
    {"context_size": 16, "n_batches_in_buffer": 10},
])
def test_resumable_store_serves_exactly_sae_lens_batches(hooked, contexts, overrides):
    cfg = build_sae_train_config(seed=3, context_size=overrides.get("context_size", 64))
    n_batches = 12
    served = []
    for store_class in (None, sae_mod._store_class()):
        store = sae_lens_store(hooked.model, contexts, cfg, store_class, **overrides)
        with torch.random.fork_rng():
            torch.manual_seed(7)
            served.append([next(store).clone() for _ in range(n_batches)])
    for i, (a, b) in enumerate(zip(*served, strict=True)):
        assert torch.equal(a, b), f"batch {i}"


def test_evaluation_at_the_last_layer_one_context_per_batch(fitted, contexts):
    # The hook at the last layer (the forward pass stops right after it) and batch_size=1.
    hook_name, tokens = "blocks.1.hook_resid_post", contexts[:3]
    ignore = models.special_token_ids(fitted.tokenizer)
    _, cache = fitted.model.run_with_cache(tokens, names_filter=[hook_name])
    threshold = cache[hook_name].abs().median().item()
    sae = soft_threshold_sae(D_MODEL, threshold, n_dead=4, hook_name=hook_name)
    result = sae_mod.evaluate_sae(fitted, sae, tokens, batch_size=1)
    expected, density = hand_evaluation(fitted.model, tokens, hook_name, threshold, 4, ignore)
    assert result.metrics() == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(result.feature_density, density, atol=1e-12)
    assert 0 < expected["explained_variance"] < 1


def test_a_model_needs_both_run_with_cache_and_cfg():
    import types

    for partial in (types.SimpleNamespace(cfg=object()),
                    types.SimpleNamespace(run_with_cache=lambda *a: None)):
        with pytest.raises(TypeError, match="got SimpleNamespace"):
            sae_mod._hooked_transformer(partial)
        with pytest.raises(TypeError, match="HookedTransformer"):
            sae_mod._hooked_transformer(types.SimpleNamespace(model=partial))
    whole = types.SimpleNamespace(cfg=object(), run_with_cache=lambda *a: None)
    assert sae_mod._hooked_transformer(whole) is whole
    assert sae_mod._hooked_transformer(types.SimpleNamespace(model=whole)) is whole


# --- training and checkpoints against SAELens run plainly ----------------------------------------
def test_train_sae_trains_as_sae_lens_own_runner_does(hooked, contexts):
    """train_sae (its store, its recording runner, the config it builds) ends with the weights of
    SAELens's plain ``LanguageModelSAETrainingRunner`` and store, given the same settings by hand."""
    cfg = build_sae_train_config(
        seed=5, training_tokens=7 * 128, lr_warm_up_steps=2, lr_decay_steps=2,
        l1_warm_up_steps=3, l1_coefficient=2.0, normalize_activations="expected_average_only_in",
        n_batches_for_norm_estimate=2, apply_b_dec_to_input=False, store_batch_size_prompts=3,
        log_every=3)
    sae, history = sae_mod.train_sae(hooked, contexts, cfg)
    assert list(history["step"]) == [1, 3, 6, 7]  # every 3rd step, the first and the last
    assert list(history["n_training_samples"]) == [128, 384, 768, 896]
    assert {"mse_loss", "l1_loss", "overall_loss", "current_learning_rate"} <= set(history.columns)

    plain = plain_sae_lens_training(
        hooked.model, contexts, seed=5, training_tokens=7 * 128, store_batch_size_prompts=3,
        n_batches_for_norm_estimate=2, lr_warm_up_steps=2, lr_decay_steps=2,
        exclude_special_tokens=models.special_token_ids(hooked.tokenizer),
        sae=dict(l1_coefficient=2.0, l1_warm_up_steps=3, apply_b_dec_to_input=False,
                 normalize_activations="expected_average_only_in"))
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name), getattr(plain, name),
                                   rtol=1e-5, atol=1e-7, msg=name)


def test_special_tokens_are_trained_on_when_asked(hooked, contexts):
    cfg = build_sae_train_config(training_tokens=2 * 128, exclude_special_tokens=False)
    sae, _ = sae_mod.train_sae(hooked, contexts, cfg)
    plain = plain_sae_lens_training(hooked.model, contexts, seed=0, training_tokens=2 * 128,
                                    store_batch_size_prompts=4, n_batches_for_norm_estimate=1000,
                                    lr_warm_up_steps=0, lr_decay_steps=0,
                                    exclude_special_tokens=False, sae=dict(l1_coefficient=1.0))
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name), getattr(plain, name),
                                   rtol=1e-5, atol=1e-7, msg=name)


def plain_sae_lens_training(ht, contexts, sae: dict, **settings):
    """SAELens's own runner and store, seeded with ``settings['seed']``: the test's settings
    (hook blocks.1, contexts of 64, batches of 128, lr 1e-3, expansion 2) plus ``settings``."""
    from datasets import Dataset
    from sae_lens import (LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner,
                          LoggingConfig, StandardTrainingSAEConfig)

    plain_cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=D_MODEL, d_sae=2 * D_MODEL, **sae), **{
            "model_name": "toy", "hook_name": "blocks.1.hook_resid_post", "dataset_path": "toy",
            "is_dataset_tokenized": True, "streaming": False, "context_size": 64,
            "prepend_bos": False, "train_batch_size_tokens": 128, "n_batches_in_buffer": 20,
            "lr": 1e-3, "device": "cpu", "dtype": "float32",
            "logger": LoggingConfig(log_to_wandb=False), "n_checkpoints": 0,
            "checkpoint_path": None, "output_path": None, "save_final_checkpoint": False,
            "verbose": False, **settings})
    dataset = Dataset.from_dict({"tokens": contexts[:, :64].tolist()})
    with torch.random.fork_rng():
        torch.manual_seed(settings["seed"])
        return LanguageModelSAETrainingRunner(plain_cfg, override_dataset=dataset,
                                              override_model=ht).run()


def test_what_makes_a_run_start_over(hooked, fitted, contexts, tmp_path, caplog):
    cfg = build_sae_train_config()
    nested = tmp_path / "a" / "b"  # made, parents included
    with caplog.at_level(logging.WARNING, logger="reasonlens.sae"):
        with pytest.raises(KeyboardInterrupt):
            sae_mod.train_sae(hooked, contexts, cfg, nested, on_step=stop_at(2))
    assert caplog.messages == ["interrupted after step 2; saving a checkpoint"]
    checkpoint = sae_mod.latest_checkpoint(nested)
    assert checkpoint.name == str(2 * cfg.batch_size)
    assert json.loads((checkpoint / sae_mod.CHECKPOINT_COMPLETE).read_text()) == {
        "format": sae_mod.CHECKPOINT_FORMAT}

    def first_step(tokens=contexts, model=hooked, **kwargs) -> int:
        """The first step a run takes (it stops right after it, with a checkpoint)."""
        seen = []

        def stop_after_first(n_steps):
            seen.append(n_steps)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            sae_mod.train_sae(model, tokens, cfg, nested, on_step=stop_after_first, **kwargs)
        return seen[0]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reasonlens.sae"):
        assert first_step() == 3  # same config, contexts and model: resumed after step 2
    assert [r.getMessage() for r in caplog.records if r.name == "reasonlens.sae"] == [
        f"resuming SAE training from {nested / str(2 * cfg.batch_size)}",
        "interrupted after step 3; saving a checkpoint"]
    # only the newest checkpoint is kept
    assert [p.name for p in nested.iterdir() if p.is_dir()] == [str(3 * cfg.batch_size)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reasonlens.sae"):
        assert first_step(resume=False) == 1  # asked to start over
    assert caplog.messages == ["interrupted after step 1; saving a checkpoint"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reasonlens.sae"):
        assert first_step(tokens=contexts.flip(0)) == 1  # other contexts: start over
    assert caplog.messages == [f"checkpoints in {nested} were made with another config, model "
                               "or data; starting over",
                               "interrupted after step 1; saving a checkpoint"]
    assert first_step() == 1  # the record now names the other contexts: start over again
    assert first_step() == 2  # and the next run resumes
    assert first_step(model=fitted) == 1  # another model (other weights): start over


def test_interrupting_without_a_checkpoint_dir_writes_nothing(hooked, contexts, tmp_path,
                                                              monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="reasonlens.sae"):
        with pytest.raises(KeyboardInterrupt):
            sae_mod.train_sae(hooked, contexts, build_sae_train_config(), on_step=stop_at(2))
    assert list(tmp_path.iterdir()) == [] and caplog.messages == []
    sae_mod.train_sae(hooked, contexts, build_sae_train_config(training_tokens=128))
    assert list(tmp_path.iterdir()) == []  # nor does a finished run


def test_interrupted_before_the_first_step_ends_leaves_no_checkpoint(hooked, contexts, tmp_path,
                                                                     caplog):
    def interrupt(activation, hook):
        raise KeyboardInterrupt  # while the first activations are computed

    with caplog.at_level(logging.WARNING, logger="reasonlens.sae"):
        with hooked.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", interrupt)]):
            with pytest.raises(KeyboardInterrupt):
                sae_mod.train_sae(hooked, contexts, build_sae_train_config(), tmp_path)
    assert sae_mod.latest_checkpoint(tmp_path) is None
    assert caplog.messages == ["interrupted before the first step ended, or by a second signal; "
                               "no checkpoint written, a rerun resumes from the latest one"]


def test_save_sae_writes_the_inference_form_of_a_training_sae(tmp_path):
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    training = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=4, d_sae=8, l1_coefficient=3.0))
    sae_mod.save_sae(training, tmp_path / "sae")
    written = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert written["architecture"] == "standard" and "l1_coefficient" not in written
    loaded = sae_mod.load_sae(tmp_path / "sae")
    assert not hasattr(loaded, "training_forward_pass")
    assert torch.equal(loaded.W_enc, training.W_enc)


def test_a_second_signal_interrupts_at_once(caplog):
    stop = sae_mod._StopRequest()
    assert not stop.is_requested and not stop.is_checkpointed
    stop.raise_if_requested()  # nothing asked yet
    with caplog.at_level(logging.WARNING, logger="reasonlens.sae"):
        stop(signal.SIGTERM, None)
    assert stop.is_requested
    assert caplog.messages == [f"signal {int(signal.SIGTERM)}: stopping when this training step "
                               "ends (send it again to stop at once, without a checkpoint)"]
    with pytest.raises(KeyboardInterrupt):
        stop.raise_if_requested()
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)


def test_signal_handlers_are_set_only_on_the_main_thread():
    import threading

    def handler(signum, frame):
        pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    found = []
    thread = threading.Thread(target=lambda: found.append(sae_mod._install_signal_handler(handler)))
    thread.start()
    thread.join()
    assert found == [{}]
    previous = sae_mod._install_signal_handler(handler)
    try:
        assert previous == before
        assert all(signal.getsignal(sig) is handler for sig in before)
    finally:
        sae_mod._restore_signal_handlers(previous)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with sae_mod._interrupt_signals(handler):
        assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]


def test_sae_lens_is_quiet_only_while_training():
    from sae_lens import logger as sae_lens_logger

    level = sae_lens_logger.level
    with sae_mod._quiet_sae_lens():
        assert sae_lens_logger.level == logging.ERROR
    assert sae_lens_logger.level == level


def test_only_special_tokens_is_a_clear_error(hooked):
    sae = identity_sae(D_MODEL, "blocks.0.hook_resid_post")
    special = torch.tensor(models.special_token_ids(hooked.tokenizer))
    with pytest.raises(ValueError) as error:
        sae_mod.evaluate_sae(hooked, sae, special.repeat(2, 4))
    assert str(error.value) == ("tokens holds only special tokens (BOS/EOS/PAD); nothing to "
                                "evaluate. Pass contexts of real text.")


def test_training_and_loading_errors_in_full(hooked, contexts, tmp_path):
    with pytest.raises(ValueError) as error:
        sae_mod.train_sae(hooked, contexts, build_sae_train_config(context_size=1024))
    n_pos = contexts.shape[1]
    assert str(error.value) == (f"context_size=1024 is longer than the contexts ({n_pos} tokens). "
                                f"Set context_size <= {n_pos} or rebuild the contexts in "
                                "notebook 01.")
    with pytest.raises(FileNotFoundError) as error:
        sae_mod.load_sae(tmp_path / "missing")
    assert str(error.value) == (f"{tmp_path / 'missing'} holds no SAELens SAE (cfg.json is "
                                "missing); notebooks/03_train_sae.py writes it. Run: python -m "
                                "reasonlens.runner --profile <profile> --only 03")


def test_the_shuffling_buffer_grows_with_the_batch(hooked, contexts):
    # 4 batches of 512 tokens need 32 contexts of 64 in the buffer (more than the 20 minimum)
    cfg = build_sae_train_config(training_tokens=512, batch_size=512)
    sae, _ = sae_mod.train_sae(hooked, contexts, cfg)
    plain = plain_sae_lens_training(
        hooked.model, contexts, seed=0, training_tokens=512, train_batch_size_tokens=512,
        n_batches_in_buffer=32, store_batch_size_prompts=4,
        exclude_special_tokens=models.special_token_ids(hooked.tokenizer),
        sae=dict(l1_coefficient=1.0))
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name), getattr(plain, name),
                                   rtol=1e-5, atol=1e-7, msg=name)


def test_input_errors_in_full():
    import types

    with pytest.raises(ValueError) as error:
        build_sae_train_config(training_tokens=10)
    assert str(error.value) == ("training_tokens=10 is outside [128, inf]. Train on at least one "
                                "batch (batch_size tokens).")
    with pytest.raises(ValueError) as error:
        sae_mod._tokens_tensor(pd.DataFrame({"tokens": []}))
    assert str(error.value) == ("tokens is empty or not [n_contexts, pos] (shape (0, 0)). Pass a "
                                "non-empty contexts table from notebook 01.")
    with pytest.raises(TypeError) as error:
        sae_mod._hooked_transformer(types.SimpleNamespace())
    assert str(error.value) == ("model must be a TransformerLens HookedTransformer or a reasonlens "
                                "TLHookedModel, got SimpleNamespace. Load it with "
                                "models.load_hooked(path, 'transformer_lens').")
    narrow = sae_mod._tokens_tensor(torch.arange(6, dtype=torch.int32).reshape(2, 3))
    assert narrow.dtype == torch.long and narrow.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_training_from_an_init_sae_continues_from_its_weights(hooked, contexts, sae):
    cfg = build_sae_train_config(training_tokens=128, lr=1e-8)  # one step that barely moves
    continued, _ = sae_mod.train_sae(hooked, contexts, cfg, init_sae=sae)
    for name, weight in sae.state_dict().items():
        torch.testing.assert_close(continued.state_dict()[name], weight, atol=1e-5, rtol=0)
    fresh, _ = sae_mod.train_sae(hooked, contexts, cfg)  # SAELens's own initialisation
    assert (fresh.W_dec - sae.W_dec).abs().max() > 0.1


def test_an_init_sae_of_another_width_is_a_clear_error(hooked, contexts, trained):
    trained, _ = trained
    cfg = build_sae_train_config(expansion_factor=4)
    with pytest.raises(ValueError, match=r"init_sae is a 'standard' SAE with weights .*'W_dec': "
                                         r"\(64, 32\).* but the config trains a 'standard' one "
                                         r"with .*'W_dec': \(128, 32\).*same architecture and "
                                         r"expansion_factor\.$"):
        sae_mod.train_sae(hooked, contexts, cfg, init_sae=trained)
    topk = build_sae_train_config(architecture="topk", k=4)  # the same weights, another SAE
    with pytest.raises(ValueError, match=r"init_sae is a 'standard' SAE .* trains a 'topk' one"):
        sae_mod.train_sae(hooked, contexts, topk, init_sae=trained)


def test_another_init_sae_starts_a_checkpointed_run_over(hooked, contexts, trained, sae,
                                                          tmp_path):
    trained, _ = trained
    cfg = build_sae_train_config()
    steps = []

    def stop_after_first(n_steps):
        steps.append(n_steps)
        raise KeyboardInterrupt

    for init in (trained, trained, sae, sae, None):
        with pytest.raises(KeyboardInterrupt):
            sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=stop_after_first,
                              init_sae=init)
    assert steps == [1, 2, 1, 2, 1]  # the same init resumes; another one, or none, starts over
