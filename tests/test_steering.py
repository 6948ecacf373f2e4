import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from reasonlens import evaluation, models, scoring, steering

HOOK = "blocks.1.hook_resid_post"  # the conftest SAE's hook point


@pytest.fixture(scope="module")
def backends(saved_toy_model):
    return (models.load_hooked(saved_toy_model, "transformer_lens"),
            models.load_hooked(saved_toy_model, "hf"))


@pytest.fixture(scope="module")
def tokens(world, tokenizer):
    traces = world.documents[world.documents.kind == "trace"].text.tolist()[:2]
    ids = tokenizer(traces, add_special_tokens=False)["input_ids"]
    return torch.tensor([i[:40] for i in ids])


def _acts(model, sae, tokens):
    return sae.encode(scoring.capture_activations(model, tokens, HOOK))


def test_clamping_a_feature_to_its_current_value_changes_nothing(backends, sae, tokens):
    tl, hf = backends
    acts = _acts(hf, sae, tokens)
    silent = int((acts.amax(dim=(0, 1)) == 0).nonzero()[0])  # a feature off everywhere here
    max_act = torch.ones(sae.cfg.d_sae)
    for model in backends:
        with torch.no_grad():
            clean = model(tokens)
            with steering.steer(model, sae, {silent: 0.0}, max_activations=max_act):
                steered = model(tokens)
        torch.testing.assert_close(steered, clean, atol=1e-5, rtol=1e-5)


def test_clamp_sets_the_feature_and_keeps_the_error_term(backends, sae, tokens):
    _, hf = backends
    norms = sae.W_dec.norm(dim=-1)
    max_act = torch.full((sae.cfg.d_sae,), 2.0)
    with torch.no_grad():
        x = scoring.capture_activations(hf, tokens, HOOK)
        hook = steering.steering_hook(sae, {5: 3.0}, "clamp", max_act)
        x_new = hook(x, None)
    # the clamped value (folded units 2 * 3 = 6) is written in the SAE's own units
    expected = sae.encode(x).clone()
    expected[..., 5] = 6.0 / norms[5]
    error = x - sae.decode(sae.encode(x))
    torch.testing.assert_close(x_new, sae.decode(expected) + error, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x_new, x)


def test_direction_mode_sets_the_component_along_the_decoder_direction(backends, sae, tokens):
    _, hf = backends
    d = sae.W_dec[7] / sae.W_dec[7].norm()
    max_act = torch.full((sae.cfg.d_sae,), 1.5)
    with torch.no_grad():
        x = scoring.capture_activations(hf, tokens, HOOK)
        x_new = steering.steering_hook(sae, {7: 2.0}, "direction", max_act)(x, None)
        added = steering.steering_hook(sae, {7: 2.0}, "add")(x, None)
    torch.testing.assert_close(x_new @ d, torch.full(x.shape[:2], 3.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(added - x, 2.0 * d.expand_as(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", steering.MODES)
def test_backends_steer_to_the_same_logits(backends, sae, tokens, mode):
    tl, hf = backends
    max_act = torch.full((sae.cfg.d_sae,), 1.0)
    outs = []
    for model in backends:
        with torch.no_grad(), steering.steer(model, sae, {3: 2.0, 9: -1.0}, mode, max_act):
            outs.append(model(tokens))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outs[1], hf(tokens))


def test_hooks_are_removed_even_when_generation_raises(backends, sae, tokens):
    tl, hf = backends
    for model in backends:
        with pytest.raises(RuntimeError, match="boom"):
            with steering.steer(model, sae, {1: 1.0}, "add"):
                raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in hf.model.modules())
    assert not any(hp.fwd_hooks for hp in tl.model.hook_dict.values())


def test_steering_applies_during_kv_cached_generation(backends, sae, tokenizer):
    _, hf = backends
    prompts = ["<bos><|user|>Start at 12 and add 3, two times.<|assistant|><think>\n"]
    clean = evaluation.generate(hf.model, tokenizer, prompts, max_new_tokens=8)
    with steering.steer(hf, sae, {2: 50.0}, "add"):
        steered = evaluation.generate(hf.model, tokenizer, prompts, max_new_tokens=8)
    assert steered != clean


@pytest.mark.parametrize("features,mode,max_act,match", [
    ({999: 1.0}, "clamp", torch.ones(64), "feature_idx=999"),
    ({1: float("nan")}, "clamp", torch.ones(64), "strength"),
    ({1: 1.0}, "clamp", None, "max_activations"),
    ({1: 1.0}, "clamp", torch.ones(3), "max_activations"),
    ({1: 1.0}, "boost", torch.ones(64), "mode='boost'"),
    ({}, "add", None, "features is empty"),
])
def test_bad_requests_fail_before_anything_is_attached(backends, sae, features, mode, max_act,
                                                        match):
    _, hf = backends
    with pytest.raises(ValueError, match=match):
        with steering.steer(hf, sae, features, mode, max_act):
            pass
    assert not any(m._forward_hooks for m in hf.model.modules())


def test_an_sae_at_a_hook_the_model_lacks_is_an_error(backends):
    cfg = StandardSAEConfig(d_in=32, d_sae=8)
    cfg.metadata.hook_name = "blocks.7.hook_resid_post"
    with pytest.raises(ValueError, match="hook_name"):
        with steering.steer(backends[1], StandardSAE(cfg), {0: 1.0}, "add"):
            pass


def test_steered_completions_cover_every_condition(backends, sae, tokenizer):
    tl, hf = backends
    prompts = ["<bos><|user|>Start at 12 and add 3, two times.<|assistant|><think>\n"] * 2
    frame = steering.steered_completions(hf, sae, prompts, [2, 4], [0.0, 50.0], mode="add",
                                         max_new_tokens=6)
    assert len(frame) == 2 * (1 + 2 * 2)
    assert set(zip(frame.feature_idx, frame.strength)) == {(-1, 0.0), (2, 0.0), (2, 50.0),
                                                           (4, 0.0), (4, 50.0)}
    unsteered = frame[frame.feature_idx == -1].completion.tolist()
    assert frame[(frame.feature_idx == 2) & (frame.strength == 0.0)].completion.tolist() == unsteered
    with pytest.raises(ValueError, match="backend='hf'"):
        steering.steered_completions(tl, sae, prompts, [2], [1.0], mode="add")
    with pytest.raises(ValueError, match="feature_idx=640"):
        steering.steered_completions(hf, sae, prompts, [640], [1.0], mode="add")


def test_run_conditions_names_each_condition_and_ablates_several_features(backends, sae, tokens):
    tl, hf = backends
    prompts = ["<bos><|user|>Start at 12 and add 3, two times.<|assistant|><think>\n"] * 2
    maxima = torch.ones(sae.cfg.d_sae)
    frame = steering.run_conditions(hf, sae, prompts, {"none": None, "ablate": {1: 0.0, 2: 0.0},
                                                       "up": {1: 40.0, 2: 40.0}},
                                    max_activations=maxima, max_new_tokens=6)
    assert frame.condition.tolist() == ["none"] * 2 + ["ablate"] * 2 + ["up"] * 2
    assert frame.prompt_idx.tolist() == [0, 1] * 3
    assert frame[frame.condition == "up"].completion.tolist() != \
        frame[frame.condition == "none"].completion.tolist()
    # zero-ablation removes exactly both features' decoder contributions (error term kept)
    x = scoring.capture_activations(hf, tokens, HOOK)
    hook = steering.steering_hook(sae, {1: 0.0, 2: 0.0}, "clamp", maxima)
    f = sae.encode(x)
    removed = f[..., [1, 2]] @ sae.W_dec[[1, 2]]
    assert torch.allclose(hook(x, None), x - removed, atol=1e-5) and removed.abs().max() > 0.01
    with pytest.raises(ValueError, match="feature_idx=99"):  # checked before generating anything
        steering.run_conditions(hf, sae, prompts, {"ok": {1: 1.0}, "bad": {99: 1.0}},
                                max_activations=maxima)


def test_density_matched_controls_are_close_in_density_and_distinct():
    import pandas as pd
    density = [0.1, 0.11, 0.09, 0.5, 0.0, 0.001, 0.0011, 0.3]
    scores = pd.DataFrame({"feature_idx": range(8), "density": density})
    assert steering.density_matched_controls(scores, [0, 5], n_neighbours=1) == [1, 6]
    controls = steering.density_matched_controls(scores, [0], n_neighbours=1, exclude=[1])
    assert controls == [2]  # 1 is excluded; 2 is the nearest left
    assert steering.density_matched_controls(scores, [0, 5], seed=4) == \
        steering.density_matched_controls(scores, [0, 5], seed=4)
    assert 4 not in steering.density_matched_controls(scores, [5], n_neighbours=7)  # dead
    with pytest.raises(ValueError, match="not in scores"):
        steering.density_matched_controls(scores, [42])


def test_max_activations_take_notebook_05s_values_over_04s(tmp_path):
    import pandas as pd

    from reasonlens import artifacts
    from reasonlens import constants as K
    run = artifacts.RunDir("t", root=tmp_path)
    run.write(K.REASON_SCORES, pd.DataFrame({"feature_idx": [2, 0, 1],
                                             "max_activation": [3.0, 1.0, 2.0]}))
    run.write(K.MAX_ACTIVATIONS, pd.DataFrame({"feature_idx": [1], "max_activation": [5.0]}))
    assert steering.max_activations_of(run).tolist() == [1.0, 5.0, 3.0]


# --- model and SAE on different devices (the meta device stands in for a GPU) -------------------
def _on_meta(path, backend):
    model = models.load_hooked(path, backend)
    model.model.to("meta")
    return model


@pytest.mark.parametrize("mode", steering.MODES)
def test_steering_a_model_on_another_device_brings_the_sae_there(saved_toy_model, sae, tokens,
                                                                 mode):
    import copy
    model, own = _on_meta(saved_toy_model, "transformer_lens"), copy.deepcopy(sae)  # SAE on cpu
    with torch.no_grad(), steering.steer(model, own, {3: 2.0, 9: -1.0}, mode,
                                         torch.ones(sae.cfg.d_sae)):
        logits = model(tokens)
    assert logits.device == torch.device("meta")
    assert logits.shape == (*tokens.shape, model.model.cfg.d_vocab)
    assert own.W_dec.device == torch.device("meta")


def test_steering_an_hf_model_puts_the_sae_on_its_device_before_attaching(saved_toy_model, sae):
    import copy
    model, own = _on_meta(saved_toy_model, "hf"), copy.deepcopy(sae)
    with steering.steer(model, own, {3: 1.0}, "add"):
        assert own.W_dec.device == torch.device("meta")


@pytest.mark.parametrize("mode", steering.MODES)
def test_a_hook_given_activations_on_another_device_names_both(sae, mode):
    import types
    hook = steering.steering_hook(sae, {3: 1.0}, mode, torch.ones(sae.cfg.d_sae))
    x = torch.zeros(2, 5, sae.cfg.d_in, device="meta")
    with pytest.raises(ValueError, match=rf"at {HOOK} are on meta but the SAE is on cpu"):
        hook(x, types.SimpleNamespace(name=HOOK))


def test_run_conditions_refuses_an_sae_it_cannot_bring_to_the_model(backends, sae):
    import copy
    _, hf = backends
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        steering.run_conditions(hf, copy.deepcopy(sae).to("meta"), ["Add 2 to 3."],
                                {"steered": {3: 1.0}}, mode="add", max_new_tokens=2)


def test_a_bfloat16_model_steers_in_the_float32_of_the_sae(saved_toy_model, sae, tokens):
    model = models.load_hooked(saved_toy_model, "hf", dtype="bfloat16")
    x = scoring.capture_activations(model, tokens, HOOK)
    assert x.dtype == torch.bfloat16 and sae.W_dec.dtype == torch.float32
    acts = sae.encode(x.float())
    silent = int((acts.amax(dim=(0, 1)) == 0).nonzero()[0])
    max_act = torch.ones(sae.cfg.d_sae)
    unchanged = steering.steering_hook(sae, {silent: 0.0}, "clamp", max_act)(x, None)
    assert unchanged.dtype == torch.bfloat16 and torch.equal(unchanged, x)  # not one bit moved
    # a real clamp: the float32 result, rounded to bfloat16 once
    d = sae.W_dec[5]
    with torch.no_grad():
        steered = steering.steering_hook(sae, {5: 3.0}, "clamp", max_act)(x, None)
        expected = x.float() + (3.0 / d.norm() - acts[..., 5:6]) * d
    torch.testing.assert_close(steered, expected.to(torch.bfloat16), atol=0.02, rtol=0.01)
