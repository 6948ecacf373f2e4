import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from reasonlens import evaluation, models, scoring, steering

HOOK = "blocks.1.hook_resid_post"  # the conftest SAE's hook point
PROMPT = "<bos><|user|>Start at 12 and add 3, two times.<|assistant|><think>\n"


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


# --- the three formulas by hand, on an SAE small enough to do the arithmetic ---------------------
def tiny_sae() -> StandardSAE:
    """d_in 2, d_sae 3: f = relu((x - b_dec) W_enc + b_enc), decode(f) = f W_dec + b_dec.

    Decoder norms 2, 0.5 and 5 (unfolded, one of them below 1); unit directions d_0 = (1, 0),
    d_1 = (0, 1), d_2 = (0.6, 0.8) (d_0 and d_2 not orthogonal).
    """
    sae = StandardSAE(StandardSAEConfig(d_in=2, d_sae=3))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5], [3.0, 4.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0]))
    return sae.eval()


# Two positions. x = (3, 2): x - b_dec = (2, 2), f = (2, 2, relu(1 + 1 - 1)) = (2, 2, 1),
# decode(f) = (4 + 0 + 3 + 1, 0 + 1 + 4 + 0) = (8, 5), error x - decode(f) = (-5, -3).
# x = (0, 0): x - b_dec = (-1, 0), f = (0, 0, 0), decode(f) = b_dec = (1, 0), error (-1, 0).
TINY_X = torch.tensor([[[3.0, 2.0], [0.0, 0.0]]])  # [batch 1, pos 2, d_in 2]
TINY_MAX = torch.tensor([4.0, 6.0, 10.0])  # folded units: a feature's component along d_k


@pytest.mark.parametrize("features,expected", [
    # f_2 := 10 * 2 / ||W_dec[2]|| = 4: x + (4 - 1) (3, 4) and 0 + (4 - 0) (3, 4)
    ({2: 2.0}, [[12.0, 14.0], [12.0, 16.0]]),
    # f_1 := 6 * 1 / 0.5 = 12: x + (12 - 2) (0, 0.5), and (12 - 0) (0, 0.5)
    ({1: 1.0}, [[3.0, 7.0], [0.0, 6.0]]),
    # strength 0 zero-ablates: x - 2 (2, 0); a feature already off leaves x as it is
    ({0: 0.0}, [[-1.0, 2.0], [0.0, 0.0]]),
    # both at once: x - 2 (2, 0) + 3 (3, 4)
    ({0: 0.0, 2: 2.0}, [[8.0, 14.0], [12.0, 16.0]]),
])
def test_clamp_writes_the_target_activation_and_keeps_the_error_term_by_hand(features, expected):
    sae = tiny_sae()
    with torch.no_grad():
        steered = steering.steering_hook(sae, features, "clamp", TINY_MAX)(TINY_X, None)
        default = steering.steering_hook(sae, features, max_activations=TINY_MAX)(TINY_X, None)
    torch.testing.assert_close(steered, torch.tensor([expected]))
    torch.testing.assert_close(default, steered)  # the paper's clamp is the default mode
    # the error term is exactly what it was: x' - decode(encode(x') with the clamp) = x - decode(f)
    with torch.no_grad():
        clamped = sae.encode(TINY_X)
        for idx, strength in features.items():
            clamped[..., idx] = TINY_MAX[idx] * strength / sae.W_dec[idx].norm()
        torch.testing.assert_close(steered - sae.decode(clamped),
                                   TINY_X - sae.decode(sae.encode(TINY_X)))


@pytest.mark.parametrize("features,expected", [
    # x . d_2 := 10 * 2 = 20: (3, 2) . (0.6, 0.8) = 3.4, so x + 16.6 d_2; and 0 + 20 d_2
    ({2: 2.0}, [[12.96, 15.28], [12.0, 16.0]]),
    # x . d_1 := 6 (the unit direction, though ||W_dec[1]|| = 0.5)
    ({1: 1.0}, [[3.0, 6.0], [0.0, 6.0]]),
    # x . d_0 := 4 and x . d_2 := 20 together: in 2-d that fixes x' = (4, 22) wherever x was
    # (0.6 * 4 + 0.8 * 22 = 20), although d_0 and d_2 are not orthogonal
    ({0: 1.0, 2: 2.0}, [[4.0, 22.0], [4.0, 22.0]]),
])
def test_direction_mode_sets_each_component_along_the_unit_direction_by_hand(features, expected):
    with torch.no_grad():
        steered = steering.steering_hook(tiny_sae(), features, "direction", TINY_MAX)(TINY_X, None)
    torch.testing.assert_close(steered, torch.tensor([expected]))


@pytest.mark.parametrize("features,expected", [
    ({2: 3.0}, [[4.8, 4.4], [1.8, 2.4]]),  # x + 3 (0.6, 0.8)
    ({1: 2.0}, [[3.0, 4.0], [0.0, 2.0]]),  # x + 2 (0, 1): the unit direction, not W_dec[1]
    ({0: 1.0, 2: 3.0}, [[5.8, 4.4], [2.8, 2.4]]),  # x + (1, 0) + 3 (0.6, 0.8)
    ({0: -1.5}, [[1.5, 2.0], [-1.5, 0.0]]),
])
def test_add_mode_adds_strength_times_the_unit_direction_by_hand(features, expected):
    with torch.no_grad():
        steered = steering.steering_hook(tiny_sae(), features, "add")(TINY_X, None)
    torch.testing.assert_close(steered, torch.tensor([expected]))


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
    ({}, "add", None, r"^features is empty; pass \{feature_idx: strength\}\.$"),
])
def test_bad_requests_fail_before_anything_is_attached(backends, sae, features, mode, max_act,
                                                        match):
    _, hf = backends
    with pytest.raises(ValueError, match=match):
        with steering.steer(hf, sae, features, mode, max_act):
            pass
    assert not any(m._forward_hooks for m in hf.model.modules())


def test_feature_indices_run_from_0_to_d_sae_minus_1(backends, sae):
    _, hf = backends
    ones = torch.ones(sae.cfg.d_sae)
    for idx in (0, sae.cfg.d_sae - 1):  # both ends are features
        steering.check_steering(hf, sae, {idx: 1.0}, "clamp", ones)
    for idx in (-1, sae.cfg.d_sae):
        with pytest.raises(ValueError, match=rf"feature_idx={idx} is outside the SAE \(d_sae=64\)"):
            steering.check_steering(hf, sae, {idx: 1.0}, "clamp", ones)
    with pytest.raises(ValueError, match="strength=inf for feature 1 is not finite"):
        steering.check_steering(hf, sae, {1: float("inf")}, "add", None)
    steering.check_steering(hf, sae, {1: 1.0}, "add", None)  # add needs no max activations
    for mode in ("clamp", "direction"):
        with pytest.raises(ValueError, match=rf"mode='{mode}' needs max_activations \(notebook 04 "
                                             r"writes them as the max_activation column of "
                                             r"scores/reason_scores.parquet\)\.$"):
            steering.check_steering(hf, sae, {1: 1.0}, mode, None)


def test_an_sae_of_another_width_is_an_error(backends):
    cfg = StandardSAEConfig(d_in=16, d_sae=8)
    cfg.metadata.hook_name = HOOK
    with pytest.raises(ValueError, match="sae.cfg.d_in=16 does not match the model's d_model=32"):
        with steering.steer(backends[1], StandardSAE(cfg), {0: 1.0}, "add"):
            pass


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
    ablated = frame[(frame.feature_idx == 2) & (frame.strength == 0.0)]
    assert ablated.completion.tolist() == unsteered
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


def test_run_conditions_generates_as_evaluation_generate_does_greedy_by_default(backends, sae,
                                                                                tokenizer):
    _, hf = backends
    prompts = [PROMPT, "<bos><|user|>Add 4 to 9.<|assistant|>"]

    def run(**settings):
        frame = steering.run_conditions(hf, sae, prompts, {"none": None}, max_new_tokens=5,
                                        **settings)
        return frame.completion.tolist(), frame.generated_ids.tolist()

    def generate(**settings):
        return evaluation.generate(hf.model, tokenizer, prompts, 5, return_ids=True, **settings)

    greedy, sampled = generate(), generate(temperature=1.0, seed=5)
    assert sampled != greedy and sampled != generate(temperature=1.0, seed=0)  # distinguishable
    assert [len(ids) for ids in greedy[1]] == [5, 5]  # max_new_tokens is what stops them
    assert run() == greedy
    assert run(temperature=1.0, seed=5) == sampled
    assert run(temperature=1.0) == generate(temperature=1.0, seed=0)  # seed 0 by default


def test_run_conditions_checks_every_condition_before_generating_anything(backends, sae):
    import copy
    _, hf = backends
    forwards = []
    handle = hf.model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        with pytest.raises(ValueError, match="feature_idx=99"):
            steering.run_conditions(hf, sae, [PROMPT], {"none": None, "ok": {1: 1.0},
                                                        "bad": {99: 1.0}},
                                    max_activations=torch.ones(sae.cfg.d_sae))
        with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
            steering.run_conditions(hf, copy.deepcopy(sae).to("meta"), [PROMPT],
                                    {"none": None, "steered": {3: 1.0}}, mode="add")
        for bad, match in (({"units": "Raw"}, "units='Raw' is unknown"),
                           ({"site": "mlp"}, "site='mlp' is unknown")):
            with pytest.raises(ValueError, match=match):
                steering.run_conditions(hf, sae, [PROMPT], {"none": None, "ok": {1: 1.0}},
                                        torch.ones(sae.cfg.d_sae), **bad)
        with pytest.raises(ValueError, match=r"^model must be loaded with backend='hf' "
                                             r"\(models.load_hooked\(path, backend='hf'\)\): "
                                             r"generation runs through transformers\.$"):
            steering.run_conditions(hf.model, sae, [PROMPT], {"none": None})
    finally:
        handle.remove()
    assert forwards == []


def test_steered_completions_clamp_by_default_and_stop_at_max_new_tokens(backends, sae):
    _, hf = backends
    with pytest.raises(ValueError, match="mode='clamp' needs max_activations"):
        steering.steered_completions(hf, sae, [PROMPT], [2], [1.0])
    frame = steering.steered_completions(hf, sae, [PROMPT], [2], [0.0, 40.0],
                                         torch.ones(sae.cfg.d_sae), max_new_tokens=3)
    assert frame.condition.tolist() == ["unsteered", "f2 x0", "f2 x40"]
    assert [len(ids) for ids in frame.generated_ids] == [3, 3, 3]
    assert frame.completion[2] != frame.completion[0]


def test_density_matched_controls_are_nearest_in_log_density_and_distinct():
    import pandas as pd
    density = [0.1, 0.11, 0.09, 0.5, 0.0, 0.001, 0.0011, 0.3]
    scores = pd.DataFrame({"feature_idx": range(8), "density": density})
    assert steering.density_matched_controls(scores, [0, 5], n_neighbours=1) == [1, 6]
    controls = steering.density_matched_controls(scores, [0], n_neighbours=1, exclude=[1])
    assert controls == [2]  # 1 is excluded; 2 is the nearest left
    # 0's nearest (1) is taken, so 2 (0.09) gets 7 (0.3, log gap 1.2), not 1 (0.11, gap 0.2)
    assert steering.density_matched_controls(scores, [0, 2], n_neighbours=1) == [1, 7]
    # nearness is in log density: from 0.09, 0.3 is a ratio of 3.3, 0.001 one of 90
    assert steering.density_matched_controls(scores, [2], n_neighbours=1, exclude=[0, 1]) == [7]
    with pytest.raises(ValueError, match=r"features \[42\] are not in scores \(feature_idx 0..7\)"):
        steering.density_matched_controls(scores, [42])
    with pytest.raises(ValueError, match="n_neighbours=0 is outside"):
        steering.density_matched_controls(scores, [0], n_neighbours=0)


def test_a_dead_feature_is_never_a_control():
    import pandas as pd
    scores = pd.DataFrame({"feature_idx": range(3), "density": [0.1, 0.0, 0.2]})
    with pytest.raises(ValueError, match="^no live feature is left to serve as a "
                                         "density-matched control.$"):  # 1 is dead, 2 excluded
        steering.density_matched_controls(scores, [0], exclude=[2])


def test_controls_come_from_the_10_nearest_in_log_density_outside_the_top_100():
    """A frame whose answer is known: features 0..99 are the top 100 by ReasonScore, all exactly
    as dense as feature 0; features 100 + j lie at log gap 0.05 (j + 1) from it, alternately
    above and below; 300..309 are dead. So the candidates are exactly 100..109."""
    import pandas as pd
    j = np.arange(200)
    gap = 0.05 * (j + 1) * np.where(j % 2, -1, 1)
    density = np.concatenate([np.full(100, 0.01), 0.01 * np.exp(gap), np.zeros(10)])
    scores = pd.DataFrame({"feature_idx": range(310), "density": density,
                           "reason_score": np.concatenate([np.linspace(2, 1, 100),
                                                           np.linspace(0.5, 0, 210)])})
    top_100 = scores.nlargest(100, "reason_score").feature_idx.tolist()
    assert sorted(top_100) == list(range(100))
    draws = [steering.density_matched_controls(scores, [0], seed=seed, exclude=top_100)[0]
             for seed in range(100)]
    assert set(draws) == set(range(100, 110))
    # a second feature draws from the 10 nearest that are left: never the first one's control
    pairs = [steering.density_matched_controls(scores, [0, 1], seed=seed, exclude=top_100)
             for seed in range(30)]
    assert all(a != b and {a, b} <= set(range(100, 111)) for a, b in pairs)
    # the draw is the seed's alone (the global RNGs play no part), and the default seed is 0
    np.random.seed(123)
    torch.manual_seed(123)
    assert steering.density_matched_controls(scores, [0, 1], exclude=top_100) == pairs[0]


def test_max_activations_take_notebook_05s_values_over_04s(tmp_path):
    import pandas as pd

    from reasonlens import artifacts
    from reasonlens import constants as K
    run = artifacts.RunDir("t", root=tmp_path)
    run.write(K.REASON_SCORES, pd.DataFrame({"feature_idx": [2, 0, 1],
                                             "max_activation": [3.0, 1.0, 2.0]}))
    run.write(K.MAX_ACTIVATIONS, pd.DataFrame({"feature_idx": [1], "max_activation": [5.0]}))
    maxima = steering.max_activations_of(run)
    assert maxima.tolist() == [1.0, 5.0, 3.0] and maxima.dtype == torch.float32


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
    with pytest.raises(ValueError, match=rf"^the activations at {HOOK} are on meta but the SAE "
                                         r"is on cpu; put the SAE where the model is \(steer does: "
                                         r"models.sae_on_model_device\)\.$"):
        hook(x, types.SimpleNamespace(name=HOOK))


def test_a_hook_called_without_a_hook_object_still_names_both_devices(sae):
    hook = steering.steering_hook(sae, {3: 1.0}, "add")
    with pytest.raises(ValueError, match="activations at the hook point are on meta but the SAE"):
        hook(torch.zeros(1, 2, sae.cfg.d_in, device="meta"), None)


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


# --- units: folded (ReasonScore's) and raw (the SAE's own activation, as the reference passes it) --
@pytest.mark.parametrize("mode,features,expected", [
    # raw: f_2 := 10 * 2 = 20 written as it is: x + (20 - 1) (3, 4), and 0 + 20 (3, 4)
    ("clamp", {2: 2.0}, [[60.0, 78.0], [60.0, 80.0]]),
    # f_1 := 6: x + (6 - 2) (0, 0.5), and 6 (0, 0.5)
    ("clamp", {1: 1.0}, [[3.0, 4.0], [0.0, 3.0]]),
    # both: x + (20 - 1) (3, 4) + (6 - 2) (0, 0.5)
    ("clamp", {1: 1.0, 2: 2.0}, [[60.0, 80.0], [60.0, 83.0]]),
    # direction: the raw activation 20 is a component of 20 * ||W_dec[2]|| = 100 along d_2:
    # (3, 2) . (0.6, 0.8) = 3.4, so x + 96.6 (0.6, 0.8); and 100 (0.6, 0.8)
    ("direction", {2: 2.0}, [[60.96, 79.28], [60.0, 80.0]]),
    # x . d_1 := 6 * 0.5 = 3
    ("direction", {1: 1.0}, [[3.0, 3.0], [0.0, 3.0]]),
])
def test_raw_units_write_the_max_activation_straight_into_the_sae_activation_by_hand(
        mode, features, expected):
    sae = tiny_sae()  # decoder norms 2, 0.5 and 5: raw and folded units differ
    with torch.no_grad():
        steered = steering.steering_hook(sae, features, mode, TINY_MAX, units="raw")(TINY_X, None)
        # a folded maximum of m * ||W_dec[k]|| is the same request
        folded = steering.steering_hook(sae, features, mode, TINY_MAX * sae.W_dec.norm(dim=-1),
                                        units="folded")(TINY_X, None)
    torch.testing.assert_close(steered, torch.tensor([expected]))
    torch.testing.assert_close(folded, steered)


def test_add_mode_ignores_units_and_raw_equals_folded_on_a_unit_norm_decoder():
    sae = tiny_sae()
    with torch.no_grad():
        added = [steering.steering_hook(sae, {2: 3.0}, "add", units=u)(TINY_X, None)
                 for u in steering.UNITS]
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))  # norms 1: the units coincide
        for mode in ("clamp", "direction"):
            raw, folded = (steering.steering_hook(sae, {0: 1.0, 2: 2.0}, mode, TINY_MAX,
                                                  units=u)(TINY_X, None)
                           for u in ("raw", "folded"))
            torch.testing.assert_close(raw, folded)
    torch.testing.assert_close(added[0], added[1])


# --- float32 arithmetic whatever the dtypes -------------------------------------------------------
def _bf16_sae(sae):
    import copy
    return copy.deepcopy(sae).to(torch.bfloat16)


def test_a_bfloat16_sae_clamps_float32_activations_in_float32(sae):
    """The SAE encodes and decodes in bfloat16, but the error term x - decode(f) and the sum are
    float32: everything the SAE does not explain passes through unrounded (the reference's error
    term is float32). Rounding x to bfloat16 first (the old code) is off by about 0.05 here."""
    low = _bf16_sae(sae)
    x = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(0)) * 3
    max_act = torch.full((64,), 1.5)
    with torch.no_grad():
        steered = steering.steering_hook(low, {5: 3.0, 9: 0.0}, "clamp", max_act)(x, None)
        f = low.encode(x)  # bfloat16, as SAELens computes it
        clamped = f.clone()
        clamped[..., 5] = 1.5 * 3.0 / low.W_dec[5].float().norm()
        clamped[..., 9] = 0.0
        expected = x + (low.decode(clamped).float() - low.decode(f).float())
    assert steered.dtype == torch.float32
    torch.testing.assert_close(steered, expected, atol=1e-6, rtol=1e-6)
    assert (steered - x).abs().max() > 0.1  # the clamp does move x


def test_a_bfloat16_sae_clamps_bfloat16_activations_rounding_once(sae):
    low = _bf16_sae(sae)
    x = (torch.randn(8, 32, 32, generator=torch.Generator().manual_seed(1)) * 3).to(torch.bfloat16)
    max_act = torch.full((64,), 1.5)
    with torch.no_grad():
        steered = steering.steering_hook(low, {5: 3.0}, "clamp", max_act)(x, None)
        f = low.encode(x)
        clamped = f.clone()
        clamped[..., 5] = 1.5 * 3.0 / low.W_dec[5].float().norm()
        delta = low.decode(clamped).float() - low.decode(f).float()
        expected = (x.float() + delta).to(torch.bfloat16)  # one rounding, at the end
        twice = x + (low.decode(clamped) - low.decode(f))  # bfloat16 throughout rounds twice
    assert steered.dtype == torch.bfloat16
    assert torch.equal(steered, expected)
    assert not torch.equal(twice, expected)  # the check can tell the two apart


@pytest.mark.parametrize("mode", ["direction", "add"])
def test_direction_and_add_modes_compute_in_float32_with_a_bfloat16_sae(sae, mode):
    low = _bf16_sae(sae)
    d = low.W_dec[7].float() / low.W_dec[7].float().norm()
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        steered = steering.steering_hook(low, {7: 2.0}, mode, torch.full((64,), 1.5))(x, None)
    expected = x + (3.0 - x @ d)[..., None] * d if mode == "direction" else x + 2.0 * d
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=1e-5)


# --- sites ----------------------------------------------------------------------------------------
def test_sites_name_the_sae_hook_point_and_the_mlp_output_of_its_layer(backends, sae):
    assert steering.steering_site(sae, "resid_post", 2) == "blocks.1.hook_resid_post"
    assert steering.steering_site(sae, "reference", 2) == "blocks.1.hook_mlp_out"
    assert "hook_mlp_out" in models.HOOK_KINDS  # both backends hook it
    with pytest.raises(ValueError, match=r"^site='mlp' is unknown; use one of \('resid_post', "
                                         r"'reference'\) \('resid_post': the SAE's own hook "
                                         r"point; 'reference': the MLP output of its layer, as "
                                         r"the authors' evaluation steers\)\.$"):
        steering.steering_site(sae, "mlp", 2)
    with pytest.raises(ValueError, match="hook_name='blocks.1.hook_resid_post' is not in this "
                                         r"model \(1 layers\)"):
        steering.steering_site(sae, "reference", 1)
    _, hf = backends
    for bad, match in (({"site": "mlp_out"}, "site='mlp_out' is unknown"),
                       ({"units": "unfolded"}, r"^units='unfolded' is unknown; use one of "
                                               r"\('folded', 'raw'\) \('folded': ReasonScore's "
                                               r"max_activation; 'raw': the SAE's own activation, "
                                               r"as the reference's sae_max_activation\)\.$")):
        with pytest.raises(ValueError, match=match):
            with steering.steer(hf, sae, {1: 1.0}, "clamp", torch.ones(64), **bad):
                pass
        with pytest.raises(ValueError, match=match):
            steering.run_conditions(hf, sae, [PROMPT], {"s": {1: 1.0}}, torch.ones(64), **bad)
    assert not any(m._forward_hooks for m in hf.model.modules())


@pytest.mark.parametrize("site,hook_name", [("resid_post", HOOK),
                                            ("reference", "blocks.1.hook_mlp_out")])
def test_steer_attaches_its_hook_at_the_site_on_both_backends(backends, sae, tokens, site,
                                                             hook_name):
    """Steering at a site is exactly the hook run there by hand: the same logits."""
    max_act = torch.full((64,), 1.5)
    for model in backends:
        hook = steering.steering_hook(sae, {3: 2.0}, "clamp", max_act)
        with torch.no_grad():
            with model.hooks([(hook_name, hook)]):
                by_hand = model(tokens)
            with steering.steer(model, sae, {3: 2.0}, "clamp", max_act, site=site):
                steered = model(tokens)
        torch.testing.assert_close(steered, by_hand, atol=0, rtol=0)
        assert not torch.allclose(steered, model(tokens), atol=1e-3)


def _final_stream_during(hf, run) -> torch.Tensor:
    """``[steps, batch, d_model]``: the residual stream entering the final norm at the last
    position of every forward ``run()`` makes, after every hook (greedy completions of the random
    toy model coincide across sites and units; its residual stream does not)."""
    steps = []
    handle = hf.model.model.norm.register_forward_hook(
        lambda module, args, out: steps.append(args[0][:, -1].detach()))
    try:
        run()
    finally:
        handle.remove()
    return torch.stack(steps)


def test_steered_completions_and_run_conditions_pass_site_and_units_on(backends, sae):
    _, hf = backends
    max_act = torch.full((64,), 1.5)
    streams = {}
    for site in steering.SITES:
        for units in steering.UNITS:
            ours = _final_stream_during(hf, lambda: steering.steered_completions(
                hf, sae, [PROMPT], [27], [1.0], max_act, max_new_tokens=3, site=site,
                units=units))
            conditioned = _final_stream_during(hf, lambda: steering.run_conditions(
                hf, sae, [PROMPT], {"s": {27: 1.0}}, max_act, max_new_tokens=3, site=site,
                units=units))
            # the oracle: the same generation with the hook attached at the site by hand
            hook = steering.steering_hook(sae, {27: 1.0}, "clamp", max_act, units=units)
            with hf.hooks([(steering.steering_site(sae, site, 2), hook)]):
                expected = _final_stream_during(hf, lambda: evaluation.generate(
                    hf.model, hf.tokenizer, [PROMPT], max_new_tokens=3))
            torch.testing.assert_close(ours[3:], expected)  # after the unsteered condition's 3
            torch.testing.assert_close(conditioned, expected)
            streams[site, units] = expected
    values = list(streams.values())
    # measured: sites 0.047 apart, units 2.0 apart; assert_close's tolerance is 1e-5
    assert all((a - b).abs().max() > 0.02 for i, a in enumerate(values) for b in values[i + 1:])


def test_site_activations_read_each_feature_at_both_sites_by_hand(backends, sae, tokens):
    """The oracle: activations from run_with_cache at both hook points, encoded by hand
    (f = relu((x - b_dec) W_enc + b_enc)) and scaled by the decoder norm."""
    ignore = (int(tokens[0, 0]),)  # the first token of the first context, wherever it recurs
    frame = steering.site_activations(backends[0], sae, tokens, [3, 27], ignore_ids=ignore,
                                      batch_size=1)
    # one batch or one context at a time: the same rows, in the same order, indexed 0..n-1
    pd.testing.assert_frame_equal(frame, steering.site_activations(
        backends[0], sae, tokens, [3, 27], ignore_ids=ignore, batch_size=3))
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    assert set(steering.site_activations(backends[0], sae, tokens[:1], [0, 63]).feature_idx) == \
        {0, 63}  # both ends are features
    names = {"resid_post": HOOK, "reference": "blocks.1.hook_mlp_out"}
    _, cache = backends[1].run_with_cache(tokens, list(names.values()))
    kept = tokens != ignore[0]
    assert 0 < kept.sum() < tokens.numel()
    w_enc, b_enc, b_dec, w_dec = (p.detach() for p in (sae.W_enc, sae.b_enc, sae.b_dec, sae.W_dec))
    for site, name in names.items():
        f = torch.relu((cache[name] - b_dec) @ w_enc + b_enc)[kept]  # [kept tokens, d_sae]
        for k in (3, 27):
            got = frame[(frame.site == site) & (frame.feature_idx == k)].activation.to_numpy()
            np.testing.assert_allclose(got, (f[:, k] * w_dec[k].norm()).numpy(), atol=1e-5,
                                       rtol=1e-4)
    assert len(frame) == 2 * 2 * int(kept.sum())
    both = frame.groupby("site").activation.mean()
    assert abs(both["resid_post"] - both["reference"]) > 1e-3  # the sites read different things
    with pytest.raises(ValueError, match=r"feature_idx=\[64\] is outside the SAE"):
        steering.site_activations(backends[0], sae, tokens, [64])
    with pytest.raises(ValueError, match="batch_size=0"):
        steering.site_activations(backends[0], sae, tokens, [3], batch_size=0)


@pytest.mark.parametrize("mode", ["clamp", "add"])
def test_compare_sites_runs_unsteered_then_each_site_and_units_as_run_conditions_does(backends,
                                                                                     sae, mode):
    _, hf = backends
    max_act = torch.full((64,), 1.5)
    prompts = [PROMPT, "<bos><|user|>Add 4 to 9.<|assistant|>"]
    frame = None

    def run():
        nonlocal frame
        frame = steering.compare_sites(hf, sae, prompts, {27: 2.0}, max_act, mode,
                                       max_new_tokens=3, batch_size=2)
    streams = _final_stream_during(hf, run)
    assert frame.condition.tolist() == [c for c in ["unsteered", *steering.SITE_VARIANTS]
                                        for _ in prompts]
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    assert steering.SITE_VARIANTS == {"resid_post": ("resid_post", "folded"),
                                      "reference": ("reference", "folded"),
                                      "reference, raw units": ("reference", "raw")}
    # the oracle: each condition alone, three forwards each (the prompt and two cached tokens)
    for i, (name, (site, units)) in enumerate({"unsteered": ("resid_post", "folded"),
                                               **steering.SITE_VARIANTS}.items()):
        features = None if name == "unsteered" else {27: 2.0}
        alone = None

        def run_alone():
            nonlocal alone
            alone = steering.run_conditions(hf, sae, prompts, {name: features}, max_act, mode,
                                            max_new_tokens=3, site=site, units=units)
        expected = _final_stream_during(hf, run_alone)
        torch.testing.assert_close(streams[3 * i:3 * i + 3], expected)
        ours = frame[frame.condition == name].reset_index(drop=True)
        assert ours.generated_ids.tolist() == alone.generated_ids.tolist()
        assert ours.prompt_idx.tolist() == [0, 1]
    assert len(streams) == 12
    forwards = []
    handle = hf.model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        with pytest.raises(ValueError, match="units='x' is unknown"):
            steering.compare_sites(hf, sae, prompts, {27: 2.0}, max_act,
                                   variants={"ok": ("reference", "raw"), "bad": ("reference", "x")})
        with pytest.raises(ValueError, match=r"^features is empty; pass \{feature_idx: "
                                             r"strength\}\.$"):
            steering.compare_sites(hf, sae, prompts, {}, max_act)
    finally:
        handle.remove()
    assert forwards == []  # checked before anything ran


def test_generation_settings_reach_evaluation_generate(backends, sae):
    """batch_size splits the prompts; steered_completions and compare_sites pass it on."""
    _, hf = backends
    prompts = [PROMPT, "<bos><|user|>Add 4 to 9.<|assistant|>"]
    widths = []
    handle = hf.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True)
    try:
        steering.steered_completions(hf, sae, prompts, [3], [1.0], mode="add", max_new_tokens=2,
                                     batch_size=1)
        assert set(widths) == {1}
        widths.clear()
        steering.compare_sites(hf, sae, prompts, {3: 1.0}, None, "add", max_new_tokens=2,
                               batch_size=1)
        assert set(widths) == {1}
        widths.clear()
        steering.steered_completions(hf, sae, prompts, [3], [1.0], mode="add", max_new_tokens=2)
        assert set(widths) == {2}  # the default batch holds both
    finally:
        handle.remove()


def test_a_float64_sae_steers_in_float64():
    """Every mode computes in the SAE's float64, max activations included (0.1 is not a float32)."""
    sae = tiny_sae().double()
    x = TINY_X.double()
    max_act = [0.1, 0.1, 0.1]
    d2 = torch.tensor([0.6, 0.8], dtype=torch.float64)
    with torch.no_grad():
        clamp = steering.steering_hook(sae, {2: 3.0}, "clamp", max_act)(x, None)
        direction = steering.steering_hook(sae, {2: 3.0}, "direction", max_act)(x, None)
        added = steering.steering_hook(sae, {2: 0.1}, "add")(x, None)
    # clamp: f_2 := 0.1 * 3 / 5 = 0.06, so x + (0.06 - f_2) (3, 4) with f_2 = (1, 0)
    expected = x + (0.06 - torch.tensor([1.0, 0.0], dtype=torch.float64))[None, :, None] * \
        torch.tensor([3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(clamp, expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(direction @ d2, torch.full((1, 2), 0.3, dtype=torch.float64),
                               atol=1e-14, rtol=0)
    torch.testing.assert_close(added, x + 0.1 * d2, atol=1e-14, rtol=0)
    assert clamp.dtype == direction.dtype == added.dtype == torch.float64


def test_steering_hook_refuses_an_unknown_mode_or_units():
    with pytest.raises(ValueError, match=r"mode='Clamp' is unknown; use one of \('clamp', "):
        steering.steering_hook(tiny_sae(), {0: 1.0}, "Clamp", TINY_MAX)
    with pytest.raises(ValueError, match=r"units='Raw' is unknown; use one of \('folded', 'raw'\)"
                                         r" \('folded': ReasonScore's max_activation; 'raw': the "
                                         r"SAE's own activation"):
        steering.steering_hook(tiny_sae(), {0: 1.0}, "clamp", TINY_MAX, units="Raw")
