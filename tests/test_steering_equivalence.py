"""Steering gives the same logits however the tokens reach the hook (regression tests).

Behaviours of ``reasonlens.steering`` that hold and must keep holding (issue 11, item 9):

- generation with and without the KV cache steers every generated token exactly as a full forward
  pass (no cache) over prompt + generated tokens does, on both backends and in every mode;
- a left-padded batch steers each prompt as if it ran alone;
- an SAE with its decoder norms folded into the encoder steers to the same logits as the unfolded
  one, given the max activations ReasonScore reports for each;
- every combination of model and SAE dtype (float32, bfloat16) scores and steers to finite values
  close to the float32 ones;
- at the reference site (the MLP output of the SAE's layer, where the authors' evaluation steers)
  the clamp moves the MLP output, and so the residual stream, by the hand-computed displacement
  on the prompt and on every KV-cached step, on both backends and in both units.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from reasonlens import evaluation, models, scoring, steering

HOOK = "blocks.1.hook_resid_post"  # the conftest SAE's hook point
BACKENDS = ("hf", "transformer_lens")
PROMPTS = ("<bos><|user|>Start at 12 and add 3, two times.<|assistant|><think>\n",
           "<bos><|user|>Add 4 to 9.<|assistant|>")  # 16 and 9 tokens: the second is padded
N_NEW = 8  # generated tokens per prompt
FEATURES = {3: 4.0, 9: -2.0}  # two features at once, one pushed up and one down
ATOL = 1e-4  # float32 round-off between differently batched passes of the toy model


@pytest.fixture(scope="module")
def backends(saved_toy_model):
    return {backend: models.load_hooked(saved_toy_model, backend) for backend in BACKENDS}


@pytest.fixture(scope="module")
def scoring_tokens(world, tokenizer):
    """``[8, 64]`` token ids cut from the world's traces (they hold reasoning words)."""
    traces = world.documents[world.documents.kind == "trace"].text.tolist()[:8]
    ids = tokenizer(traces, add_special_tokens=False)["input_ids"]
    return torch.tensor([i[:64] for i in ids])


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids


def _left_padded(tokenizer, prompts):
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def _generate_with_logits(model, tokens, attention_mask=None, use_cache=True):
    """Greedy ``N_NEW`` tokens: ``(sequences [batch, pos + N_NEW], logits [batch, N_NEW, vocab])``.

    The logits are the raw ones each generation step computed for its last position: transformers'
    ``output_logits``, or on TransformerLens the unembed output of every forward ``generate`` runs
    (one prompt only there: see the left-padding tests).
    """
    if model.backend == "hf":
        out = model.model.generate(
            input_ids=tokens, attention_mask=attention_mask, max_new_tokens=N_NEW,
            min_new_tokens=N_NEW, do_sample=False, use_cache=use_cache, output_logits=True,
            return_dict_in_generate=True, pad_token_id=model.tokenizer.pad_token_id)
        return out.sequences, torch.stack(out.logits, dim=1)
    steps = []
    handle = model.model.unembed.register_forward_hook(
        lambda module, args, logits: steps.append(logits[:, -1].detach()))
    try:
        sequences = model.model.generate(tokens, max_new_tokens=N_NEW, do_sample=False,
                                         use_past_kv_cache=use_cache, stop_at_eos=False,
                                         verbose=False, return_type="tokens")
    finally:
        handle.remove()
    return sequences, torch.stack(steps, dim=1)


# --- KV cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", steering.MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_with_and_without_kv_cache_steers_every_token_like_a_full_forward(
        backends, sae, tokenizer, backend, mode):
    model = backends[backend]
    tokens = _ids(tokenizer, PROMPTS[0])
    n_prompt = tokens.shape[1]
    max_act = torch.ones(sae.cfg.d_sae)
    with torch.no_grad():
        with steering.steer(model, sae, FEATURES, mode, max_act):
            sequences, cached = _generate_with_logits(model, tokens, use_cache=True)
            uncached_sequences, uncached = _generate_with_logits(model, tokens, use_cache=False)
            # the oracle: one pass over prompt + generated tokens, no cache, steered the same way;
            # position t's logits predict token t + 1, so the generated steps are n_prompt - 1 ..
            full = model(sequences)[:, n_prompt - 1:-1]
        clean = model(sequences)[:, n_prompt - 1:-1]
    assert cached.shape == full.shape == (1, N_NEW, len(tokenizer))
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=ATOL, msg=lambda m: (
        f"{m}\nKV-cached generation is not steered like a full forward: does the hook act on "
        "the one-token cached steps?"))
    torch.testing.assert_close(uncached, full, atol=ATOL, rtol=ATOL)
    assert torch.equal(uncached_sequences, sequences)
    # steering moves the logits at every generated position, far beyond the tolerance, so a hook
    # that skipped the one-token cached steps would fail the comparison above
    assert (full - clean).abs().amax(dim=-1).min() > 100 * ATOL


# --- Left padding ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", steering.MODES)
def test_left_padded_batch_generates_and_steers_each_prompt_as_if_alone(backends, sae, tokenizer,
                                                                         mode):
    model = backends["hf"]
    batch = _left_padded(tokenizer, PROMPTS)
    assert (batch.attention_mask == 0).any()  # the batch really is padded
    max_act = torch.ones(sae.cfg.d_sae)
    with torch.no_grad(), steering.steer(model, sae, FEATURES, mode, max_act):
        sequences, logits = _generate_with_logits(model, batch.input_ids, batch.attention_mask)
        for i, prompt in enumerate(PROMPTS):
            alone_sequences, alone_logits = _generate_with_logits(model, _ids(tokenizer, prompt))
            torch.testing.assert_close(logits[i], alone_logits[0], atol=ATOL, rtol=ATOL)
            assert sequences[i, -N_NEW:].tolist() == alone_sequences[0, -N_NEW:].tolist()
        # the product path (steering.run_conditions) generates through evaluation.generate
        batched = evaluation.generate(model.model, tokenizer, PROMPTS, max_new_tokens=N_NEW)
        alone = [evaluation.generate(model.model, tokenizer, [p], max_new_tokens=N_NEW)[0]
                 for p in PROMPTS]
    assert batched == alone


# TransformerLens 2.17's ``generate`` rebuilds its attention mask from placeholder tokens, so a
# left-padded prompt attends to its pads there (measured: logits off by 0.49 from the prompt alone,
# unsteered); the book generates through transformers only (``steering.run_conditions``). Its
# forward pass honours an attention mask, with rotary positions offset past the pads.
@pytest.mark.parametrize("mode", steering.MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padded_forward_steers_each_prompt_as_if_alone(backends, sae, tokenizer, backend,
                                                            mode):
    model = backends[backend]
    batch = _left_padded(tokenizer, PROMPTS)
    max_act = torch.ones(sae.cfg.d_sae)
    with torch.no_grad(), steering.steer(model, sae, FEATURES, mode, max_act):
        logits = model(batch.input_ids, attention_mask=batch.attention_mask)
        for i, prompt in enumerate(PROMPTS):
            alone = model(_ids(tokenizer, prompt))
            torch.testing.assert_close(logits[i, -alone.shape[1]:], alone[0], atol=ATOL, rtol=ATOL)


# --- Folded and unfolded SAE -------------------------------------------------------------------
# Folding (SAELens ``fold_W_dec_norm``) divides each decoder row by its norm n_k and multiplies
# W_enc[:, k] and b_enc[k] by it, so the folded activation is f'_k = n_k f_k and the unit decoder
# direction d_k is unchanged. ``max_activations`` are in folded units whichever SAE ReasonScore is
# given (it folds a copy), so both SAEs get the same maxima m_k. Each mode is then invariant:
# - add: x + s d_k uses only the unit direction.
# - direction: sets x . d_k to m_k s; d_k and m_k are the same for both SAEs.
# - clamp: decode(f with f_k := t_k) + (x - decode(f)) = x + (t_k - f_k) W_dec[k]. Unfolded, the
#   hook converts the target to t_k = m_k s / n_k, giving x + (m_k s - f'_k) d_k: the folded SAE's
#   result. (Passing the unfolded SAE's own-unit maxima m_k / n_k instead would not be invariant.)
@pytest.mark.parametrize("mode", steering.MODES)
def test_folded_and_unfolded_sae_steer_to_the_same_logits(backends, sae, tokenizer,
                                                          scoring_tokens, mode):
    model = backends["hf"]
    folded = scoring.folded_sae(sae)
    norms = sae.W_dec.detach().norm(dim=-1)
    assert (norms - 1).abs().min() > 0.1  # the fixture's SAE really is unfolded
    cfg = scoring.ReasonScoreConfig(hook_name=HOOK, batch_size=4)
    scores, _ = scoring.reason_score(model, sae, scoring_tokens, cfg, progress=False)
    folded_scores, _ = scoring.reason_score(model, folded, scoring_tokens, cfg, progress=False)
    max_act = torch.tensor(scores.max_activation.to_numpy(), dtype=torch.float32)
    folded_max_act = torch.tensor(folded_scores.max_activation.to_numpy(), dtype=torch.float32)
    # computed independently: the unfolded SAE's own largest activation, times its decoder norm
    with torch.no_grad():
        own = sae.encode(scoring.capture_activations(model, scoring_tokens, HOOK))
    kept = ~scoring.ignored_mask(scoring_tokens, models.special_token_ids(tokenizer))
    torch.testing.assert_close(max_act, own[kept].amax(dim=0) * norms, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded_max_act, max_act, atol=1e-5, rtol=1e-5)

    top = scores.sort_values("reason_score", ascending=False).feature_idx.tolist()
    features = {top[0]: 2.0, top[1]: 0.0}  # the paper's strength 2, and an ablation
    with torch.no_grad():
        clean = model(scoring_tokens)
        with steering.steer(model, sae, features, mode, max_act):
            unfolded_logits = model(scoring_tokens)
        with steering.steer(model, folded, features, mode, folded_max_act):
            folded_logits = model(scoring_tokens)
    torch.testing.assert_close(folded_logits, unfolded_logits, atol=1e-5, rtol=1e-5)
    assert (unfolded_logits - clean).abs().max() > 0.01


# --- dtypes ------------------------------------------------------------------------------------
DTYPES = ("float32", "bfloat16")


@pytest.fixture(scope="module")
def models_by_dtype(saved_toy_model):
    """``{(backend, dtype): model}``, each loaded on first use."""
    loaded = {}

    def get(backend: str, dtype: str):
        if (backend, dtype) not in loaded:
            loaded[backend, dtype] = models.load_hooked(saved_toy_model, backend, dtype=dtype)
        return loaded[backend, dtype]
    return get


def _score_and_steer(model, sae, tokens, feature_idx=None):
    """ReasonScores, and the logits ``[batch, pos, d_vocab]`` (float32) steered in every mode.

    The top ReasonScore feature is steered at strength 2 unless ``feature_idx`` is given.
    """
    cfg = scoring.ReasonScoreConfig(hook_name=HOOK, batch_size=4)
    scores, _ = scoring.reason_score(model, sae, tokens, cfg, progress=False)
    max_act = torch.tensor(scores.max_activation.to_numpy(), dtype=torch.float32)
    if feature_idx is None:
        feature_idx = int(scores.reason_score.idxmax())
    logits = {}
    with torch.no_grad():
        for mode in steering.MODES:
            with steering.steer(model, sae, {feature_idx: 2.0}, mode, max_act):
                logits[mode] = model(tokens).float()
    return scores, logits, max_act, feature_idx


# Measured with ``_score_and_steer`` against float32/float32 on the same backend (worst of the three
# bfloat16 combinations, both backends alike):
# max_activation 0.43% of the largest one, reason_score 1.3% of the top |score|, steered logits
# 0.012 (clamp, bfloat16 SAE) where steering itself moves them by 0.7. The tolerances below allow
# about three times that, still well under the steering effect.
@pytest.mark.parametrize("sae_dtype", DTYPES)
@pytest.mark.parametrize("model_dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_model_and_sae_dtype_scores_and_steers_finitely_near_float32(
        models_by_dtype, sae, tokenizer, scoring_tokens, backend, model_dtype, sae_dtype):
    reference, reference_logits, _, feature_idx = _score_and_steer(
        models_by_dtype(backend, "float32"), sae, scoring_tokens)
    model = models_by_dtype(backend, model_dtype)
    this_sae = copy.deepcopy(sae).to(models.as_dtype(sae_dtype))
    scores, logits, max_act, _ = _score_and_steer(model, this_sae, scoring_tokens, feature_idx)

    columns = ["reason_score", "mu_pos", "mu_neg", "entropy", "max_activation"]
    assert np.isfinite(scores[columns].to_numpy()).all()
    scale = reference.max_activation.abs().max()
    np.testing.assert_allclose(scores.max_activation, reference.max_activation, atol=0.015 * scale)
    scale = reference.reason_score.abs().max()
    np.testing.assert_allclose(scores.reason_score, reference.reason_score, atol=0.04 * scale)
    for mode in steering.MODES:
        assert torch.isfinite(logits[mode]).all()
        torch.testing.assert_close(logits[mode], reference_logits[mode], atol=0.04, rtol=0)

    prompt = _ids(tokenizer, PROMPTS[0])
    with torch.no_grad(), steering.steer(model, this_sae, {feature_idx: 2.0}, "clamp", max_act):
        sequences, generated = _generate_with_logits(model, prompt)
    assert torch.isfinite(generated).all()
    assert sequences.shape[1] == prompt.shape[1] + N_NEW


# --- The reference site: the clamp on the MLP output, by hand, on every generation step -----------
# The authors' evaluation edits vLLM's decoder-layer output, which is the MLP output before the
# residual add. With f = relu((m - b_dec) W_enc + b_enc) the resid_post SAE's code of the MLP output
# m, the clamp turns m into m + sum_k (t_k - f_k) W_dec[k] (the error term kept), and the block's
# output resid_post = resid_pre + attn_out + m moves by exactly that displacement.
LAYER_POINTS = {kind: f"blocks.1.{kind}" for kind in ("hook_resid_pre", "hook_attn_out",
                                                      "hook_mlp_out", "hook_resid_post")}


def _clamp_displacement_by_hand(sae, m, features, max_act, units):
    """``[.., d_model]``: sum over features of (t_k - f_k(m)) W_dec[k]; t_k in the SAE's units."""
    w_dec, w_enc, b_enc, b_dec = (p.detach() for p in (sae.W_dec, sae.W_enc, sae.b_enc, sae.b_dec))
    f = torch.relu((m - b_dec) @ w_enc + b_enc)
    out = torch.zeros_like(m)
    for k, strength in features.items():
        target = max_act[k] * strength
        if units == "folded":  # a component along the unit direction: the SAE's own is / norm
            target = target / w_dec[k].norm()
        out += (target - f[..., k:k + 1]) * w_dec[k]
    return out


@pytest.mark.parametrize("units", steering.UNITS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_site_clamps_the_mlp_output_on_every_kv_cached_step_by_hand(
        backends, sae, tokenizer, backend, units):
    model = backends[backend]
    tokens = _ids(tokenizer, PROMPTS[0])
    max_act = torch.linspace(0.5, 2.0, sae.cfg.d_sae)
    seen: dict[str, list[torch.Tensor]] = {}

    def reader(label):
        seen[label] = []
        return lambda activation, hook: seen[label].append(activation.detach().clone())

    # hooks at one point run in the order attached: the outer readers see the MLP output before
    # the clamp, the inner ones the clamped MLP output and the block's output after it
    before = [(LAYER_POINTS[kind], reader(kind)) for kind in ("hook_resid_pre", "hook_attn_out",
                                                                "hook_mlp_out")]
    after = [(LAYER_POINTS["hook_mlp_out"], reader("clamped")),
             (LAYER_POINTS["hook_resid_post"], reader("hook_resid_post"))]
    with torch.no_grad(), model.hooks(before), \
            steering.steer(model, sae, FEATURES, "clamp", max_act, site="reference", units=units), \
            model.hooks(after):
        sequences, _ = _generate_with_logits(model, tokens, use_cache=True)
    assert sequences.shape[1] == tokens.shape[1] + N_NEW
    # one forward for the prompt, then one per cached token
    assert [a.shape[1] for a in seen["hook_mlp_out"]] == [tokens.shape[1]] + [1] * (N_NEW - 1)
    for step in range(N_NEW):
        m = seen["hook_mlp_out"][step]
        moved = _clamp_displacement_by_hand(sae, m, FEATURES, max_act, units)
        torch.testing.assert_close(seen["clamped"][step], m + moved, atol=1e-5, rtol=1e-5)
        stream = seen["hook_resid_pre"][step] + seen["hook_attn_out"][step] + m
        torch.testing.assert_close(seen["hook_resid_post"][step], stream + moved, atol=1e-5,
                                   rtol=1e-5)
        assert moved.abs().max() > 0.1  # far beyond the tolerance, on every step
        if step == 0:  # the same clamp on the prompt's residual stream (the default site) moves
            # it otherwise: the two sites are different interventions (for some feature: one
            # silent at both sites moves both by the same target * W_dec)
            every = {k: 1.0 for k in range(sae.cfg.d_sae)}
            on_stream = _clamp_displacement_by_hand(sae, stream, every, max_act, units)
            on_mlp = _clamp_displacement_by_hand(sae, m, every, max_act, units)
            assert (on_stream - on_mlp).abs().max() > 0.01
    assert not any(m._forward_hooks for m in getattr(model.model, "modules")())
