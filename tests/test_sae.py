"""SAE training through SAELens, save/load, resuming, evaluation and errors (reasonlens.sae)."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig

import helpers
from reasonlens import data, models
from reasonlens import sae as sae_mod

D_MODEL = helpers.build_toy_model_config().d_model


def build_sae_train_config(**overrides) -> sae_mod.SAETrainConfig:
    return sae_mod.SAETrainConfig(**{
        "hook_name": "blocks.1.hook_resid_post", "expansion_factor": 2, "l1_coefficient": 1.0,
        "training_tokens": 6 * 128, "batch_size": 128, "lr": 1e-3, "context_size": 64,
        "store_batch_size_prompts": 4, "log_every": 1, **overrides})


@pytest.fixture(scope="module")
def hooked(saved_toy_model):
    return models.load_hooked(saved_toy_model, backend="transformer_lens")


@pytest.fixture(scope="module")
def contexts(world, tokenizer):
    texts = data.mix_documents(world.documents, "train", data.MIXES["reasoning"])
    frame = data.pack_contexts(data.tokenize(tokenizer, texts), helpers.build_context_config())
    return data.contexts_tensor(frame)[:24]


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
    with pytest.raises(ValueError, match="unknown parameter"):
        sae_mod.SAETrainConfig.from_dict({"expansion": 4})


def test_train_returns_inference_sae_and_history(trained):
    sae, history = trained
    assert isinstance(sae, SAE) and not hasattr(sae, "training_forward_pass")
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_MODEL, 2 * D_MODEL)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert list(history["step"]) == list(range(1, 7))
    assert {"mse_loss", "l1_loss", "explained_variance", "l0"} <= set(history.columns)
    assert history["mse_loss"].iloc[-1] < history["mse_loss"].iloc[0]


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

    def interrupt_at_3(n_steps):
        if n_steps == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sae_mod.train_sae(hooked, contexts, cfg, tmp_path, on_step=interrupt_at_3)
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
