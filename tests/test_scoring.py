"""Tests for reasonlens.scoring (ReasonScore, prompt score) and reasonlens.distributed."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig

from reasonlens import data, models, scoring
from reference.reason_score_reference import reference_reason_score

HOOK = "blocks.1.hook_resid_post"
N_POS = 96


def build_reason_score_config(**overrides) -> scoring.ReasonScoreConfig:
    return scoring.ReasonScoreConfig(**{"hook_name": HOOK, "batch_size": 3, **overrides})


def build_sae(d_in: int = 32, d_sae: int = 96, seed: int = 1) -> StandardSAE:
    """A random SAE whose features fire on a fair share of tokens, decoder norms not 1."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) * 0.3)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.5)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.1)
    return sae.eval()


@pytest.fixture(scope="module")
def sae():
    return build_sae()


@pytest.fixture(scope="module")
def hf_model(toy_model, tokenizer):
    return models.HFHookedModel(toy_model, tokenizer)


@pytest.fixture(scope="module")
def tl_model(saved_toy_model):
    return models.load_hooked(saved_toy_model, backend="transformer_lens")


@pytest.fixture(scope="module")
def tokens(world, tokenizer):
    """Seven contexts cut from the world's traces (they hold the reasoning words), PAD-padded."""
    texts = world.documents.query("kind == 'trace'")["text"].head(7).tolist()
    rows = []
    for ids in data.tokenize(tokenizer, texts):
        ids = ids[:N_POS]
        rows.append(ids + [tokenizer.pad_token_id] * (N_POS - len(ids)))
    return torch.tensor(rows)


def assert_matches_reference(frame: pd.DataFrame, ref: dict, words) -> None:
    for column in ("reason_score", "mu_pos", "mu_neg", "entropy", "max_activation"):
        np.testing.assert_allclose(frame[column].to_numpy(), np.array(ref[column]),
                                   rtol=1e-5, atol=1e-6, err_msg=column)
    for i, word in enumerate(words):
        np.testing.assert_allclose(frame[scoring.word_column(word)].to_numpy(),
                                   np.array(ref["word_means"][i]), rtol=1e-5, atol=1e-6,
                                   err_msg=word)


# --- Config ---------------------------------------------------------------------------------
def test_config_round_trip():
    cfg = build_reason_score_config(window=(2, 0), alpha=0.5, ignore_token_ids=(0, 1))
    assert scoring.ReasonScoreConfig.from_dict(cfg.to_dict()) == cfg
    ids_cfg = build_reason_score_config(words=("a", "b"), token_ids=[[[5, 6], 7], [[8]]])
    assert ids_cfg.token_ids == (((5, 6), (7,)), ((8,),))
    assert scoring.ReasonScoreConfig.from_dict(ids_cfg.to_dict()) == ids_cfg


@pytest.mark.parametrize("overrides, param", [
    ({"alpha": -1.0}, "alpha"), ({"window": (1,)}, "window"), ({"window": (-1, 2)}, "window"),
    ({"batch_size": 0}, "batch_size"), ({"words": ()}, "words"), ({"words": "wait"}, "words"),
    ({"words": ("wait", "wait")}, "words"), ({"token_ids": [[[5]]]}, "token_ids"),
    ({"words": ("a",), "token_ids": [[]]}, "token_ids"),
])
def test_config_errors_name_the_parameter(overrides, param):
    with pytest.raises(ValueError, match=param):
        build_reason_score_config(**overrides)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="Valid parameters"):
        scoring.ReasonScoreConfig.from_dict({"windw": (1, 2)})


# --- Vocabulary and masks -------------------------------------------------------------------
def test_variants_and_multi_token_groups(tokenizer):
    assert scoring.word_variants("Let me") == ["let me", " let me", "Let me", " Let me"]
    groups = scoring.reasoning_groups(tokenizer, build_reason_score_config())
    assert list(groups) == list(scoring.ReasonScoreConfig().words)
    let_me = groups["let me"]
    assert any(len(seq) > 1 for seq in let_me)
    for seq in let_me:
        assert tokenizer.decode(list(seq)).strip().lower() == "let me"


def test_masks_widen_clip_and_ignore():
    # ids: 0 = BOS (ignored), 9 = PAD (ignored); the word is the two-token sequence (5, 6).
    tokens = torch.tensor([[5, 6, 1, 2, 3, 4, 0, 5, 6],
                           [0, 1, 5, 6, 9, 2, 3, 4, 7]])
    masks = scoring.word_masks(tokens, [[(5, 6)]], window=(1, 2), ignore_ids=(0, 9))
    expected = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 1, 1],    # clipped at both edges, BOS removed
                             [0, 1, 1, 1, 0, 1, 0, 0, 0]],   # PAD inside the window removed
                            dtype=torch.bool)
    assert torch.equal(masks[0], expected)
    # A window of (0, 0) marks exactly the matched tokens; a one-token variant works too.
    exact = scoring.word_masks(tokens, [[(5, 6)], [(7,)]], window=(0, 0), ignore_ids=())
    assert exact[0].sum() == 6 and exact[1].nonzero().tolist() == [[1, 8]]


def test_word_the_tokenizer_cannot_produce_is_dropped():
    class UnknownOnly:
        unk_token_id = 3

        def encode(self, text, add_special_tokens=False):
            return [7, 8] if text.strip().lower() == "wait" else [3]

        def decode(self, ids):
            return {(7, 8): "wait"}.get(tuple(ids), "?")

    cfg = build_reason_score_config(words=("wait", "hmm"))
    with pytest.warns(UserWarning, match="'hmm'"):
        groups = scoring.reasoning_groups(UnknownOnly(), cfg)
    assert list(groups) == ["wait"]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="words"):
        scoring.reasoning_groups(UnknownOnly(), build_reason_score_config(words=("hmm",)))


# --- Against the reference ------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["hf", "transformer_lens"])
def test_matches_reference(backend, hf_model, tl_model, sae, tokens):
    model = hf_model if backend == "hf" else tl_model
    cfg = build_reason_score_config()
    frame, stats = scoring.reason_score(model, sae, tokens, cfg, progress=False)
    ref = reference_reason_score(model, sae, tokens, words=cfg.words, hook_name=HOOK)
    assert stats.group_count.sum() > 0 and (stats.group_count > 0).sum() >= 3
    assert (frame["reason_score"] != 0).sum() > 10  # features fire: the check is not vacuous
    assert_matches_reference(frame, ref, cfg.words)
    assert list(frame.columns[:7]) == ["feature_idx", "reason_score", "mu_pos", "mu_neg",
                                       "entropy", "density", "max_activation"]


def test_backends_agree(hf_model, tl_model, sae, tokens):
    cfg = build_reason_score_config()
    hf, _ = scoring.reason_score(hf_model, sae, tokens, cfg, progress=False)
    tl, _ = scoring.reason_score(tl_model, sae, tokens, cfg, progress=False)
    np.testing.assert_allclose(hf["reason_score"], tl["reason_score"], rtol=1e-4, atol=1e-6)


def test_absent_word_has_zero_mean_and_counts_in_R(hf_model, sae, tokens, caplog):
    cfg = build_reason_score_config(words=("wait", "therefore", "zebra"))
    with caplog.at_level(logging.WARNING, logger="reasonlens.scoring"):
        frame, stats = scoring.reason_score(hf_model, sae, tokens, cfg, progress=False)
    assert "zebra" in caplog.text
    assert stats.group_count[2] == 0 and (frame["mu_zebra"] == 0).all()
    ref = reference_reason_score(hf_model, sae, tokens, words=cfg.words, hook_name=HOOK)
    assert_matches_reference(frame, ref, cfg.words)
    # |R| = 3 although only two words occur, so the entropy stays at most log 2 / log 3.
    assert frame["entropy"].max() <= np.log(2) / np.log(3) + 1e-9


def test_single_word_vocabulary(hf_model, sae, tokens):
    cfg = build_reason_score_config(words=("wait",), window=(0, 0))
    frame, _ = scoring.reason_score(hf_model, sae, tokens, cfg, progress=False)
    assert (frame["entropy"] == 1).all()
    ref = reference_reason_score(hf_model, sae, tokens, words=cfg.words, window=(0, 0),
                                 hook_name=HOOK)
    assert_matches_reference(frame, ref, cfg.words)


def test_feature_that_never_fires_on_words_has_zero_entropy():
    stats = scoring.ReasonStats.zeros(("a", "b"), 3)
    stats.group_sum[:, 0] = torch.tensor([1.0, 1.0])
    stats.group_sum[0, 1] = 2.0
    stats.group_count[:] = 1
    stats.pos_sum[:] = torch.tensor([1.0, 1.0, 0.0])
    stats.pos_count += 2
    stats.neg_sum[:] = torch.tensor([0.0, 1.0, 1.0])
    stats.neg_count += 1
    frame = stats.reason_score(alpha=0.7)
    np.testing.assert_allclose(frame["entropy"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(frame["reason_score"], [0.5, -0.5, -0.5])


# --- Exactness under batching, sharding and modes --------------------------------------------
def test_batching_invariance(hf_model, sae, tokens):
    one, _ = scoring.reason_score(hf_model, sae, tokens, build_reason_score_config(batch_size=1),
                                  progress=False)
    every, _ = scoring.reason_score(hf_model, sae, tokens,
                                    build_reason_score_config(batch_size=len(tokens)),
                                    progress=False)
    pd.testing.assert_frame_equal(one, every, rtol=1e-6, atol=1e-7)


def test_merge_of_shards_equals_whole(hf_model, sae, tokens):
    cfg = build_reason_score_config(batch_size=2)
    whole = scoring.accumulate_stats(hf_model, sae, tokens, cfg, progress=False)
    even = scoring.accumulate_stats(hf_model, sae, tokens, cfg, batch_indices=[0, 2],
                                    progress=False)
    odd = scoring.accumulate_stats(hf_model, sae, tokens, cfg, batch_indices=[1, 3],
                                   progress=False)
    merged = even.merge(odd)
    for name in scoring.ReasonStats.SUM_FIELDS + scoring.ReasonStats.MAX_FIELDS:
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name))
    empty = scoring.ReasonStats.zeros(whole.words, whole.d_sae)
    torch.testing.assert_close(empty.merge(whole).max_activation, whole.max_activation)
    with pytest.raises(ValueError, match="merge"):
        whole.merge(scoring.ReasonStats.zeros(("x",), whole.d_sae))


def test_token_id_mode_equals_keyword_mode(hf_model, sae, tokens, tokenizer):
    keyword_cfg = build_reason_score_config()
    groups = scoring.reasoning_groups(tokenizer, keyword_cfg)
    ids_cfg = build_reason_score_config(words=tuple(groups), token_ids=tuple(groups.values()))
    keyword, _ = scoring.reason_score(hf_model, sae, tokens, keyword_cfg, progress=False)
    by_ids, _ = scoring.reason_score(hf_model, sae, tokens, ids_cfg, progress=False)
    pd.testing.assert_frame_equal(keyword, by_ids)
    ref = reference_reason_score(hf_model, sae, tokens, token_ids=ids_cfg.token_ids,
                                 hook_name=HOOK)
    assert_matches_reference(by_ids, ref, ids_cfg.words)


def test_max_activation_and_density(hf_model, sae, tokens, tokenizer):
    _, stats = scoring.reason_score(hf_model, sae, tokens, build_reason_score_config(),
                                    progress=False)
    folded = scoring.folded_sae(sae)
    acts = folded.encode(hf_model.run_with_cache(tokens, [HOOK])[1][HOOK]).detach()
    keep = ~torch.isin(tokens, torch.tensor([tokenizer.bos_token_id, tokenizer.eos_token_id,
                                             tokenizer.pad_token_id]))
    valid = acts[keep]
    torch.testing.assert_close(stats.max_activation.float(), valid.max(0).values)
    assert torch.equal(stats.n_active, (valid > 0).sum(0))
    assert stats.n_tokens == int(keep.sum())


def test_sae_is_not_modified(hf_model, sae, tokens):
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    scoring.reason_score(hf_model, sae, tokens[:2], build_reason_score_config(), progress=False)
    for k, v in sae.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- Errors ---------------------------------------------------------------------------------
def test_error_sae_width(hf_model, tokens):
    with pytest.raises(ValueError, match=r"d_in=16.*d_model=32"):
        scoring.reason_score(hf_model, build_sae(d_in=16), tokens, build_reason_score_config(),
                             progress=False)


def test_error_hook_name(hf_model, sae, tokens):
    with pytest.raises(ValueError, match="hook_name='blocks.7.hook_resid_post'"):
        scoring.reason_score(hf_model, sae, tokens,
                             build_reason_score_config(hook_name="blocks.7.hook_resid_post"),
                             progress=False)
    with pytest.raises(ValueError, match="hook_name"):
        scoring.reason_score(hf_model, sae, tokens, build_reason_score_config(hook_name=None),
                             progress=False)


def test_error_empty_tokens(hf_model, sae):
    with pytest.raises(ValueError, match="tokens"):
        scoring.reason_score(hf_model, sae, torch.zeros(0, 8, dtype=torch.long),
                             build_reason_score_config(), progress=False)


def test_error_non_finite_activations(toy_model, tokenizer, sae, tokens):
    broken = copy.deepcopy(toy_model)
    with torch.no_grad():
        broken.model.embed_tokens.weight.fill_(float("nan"))
    model = models.HFHookedModel(broken, tokenizer)
    with pytest.raises(FloatingPointError, match=rf"hook_name='{HOOK}'.*batch 0"):
        scoring.reason_score(model, sae, tokens, build_reason_score_config(), progress=False)


def test_hook_is_removed_after_early_stop(hf_model, tl_model, tokens):
    for model in (hf_model, tl_model):
        scoring.capture_activations(model, tokens[:1], "blocks.0.hook_resid_post")
    assert not any(layer._forward_hooks for layer in hf_model.layers)
    assert not any(hp.fwd_hooks for hp in tl_model.model.hook_dict.values())


# --- Prompt-level score ----------------------------------------------------------------------
def test_prompt_score(hf_model, sae, tokens, tokenizer):
    features = [5, 3, 40, 7]
    got = scoring.prompt_score(hf_model, sae, tokens, features, top_k=3, hook_name=HOOK)
    acts = scoring.folded_sae(sae).encode(hf_model.run_with_cache(tokens, [HOOK])[1][HOOK])
    ignore = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    for b, row in enumerate(tokens.tolist()):
        keep = [p for p, t in enumerate(row) if t not in ignore]
        expected = acts[b, keep][:, [5, 3, 40]].mean()
        assert got[b].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="feature_idx"):
        scoring.prompt_score(hf_model, sae, tokens, [], hook_name=HOOK)
    with pytest.raises(ValueError, match="top_k"):
        scoring.prompt_score(hf_model, sae, tokens, features, top_k=0, hook_name=HOOK)


# --- Distributed -----------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_ranks_match_single_process(tmp_path, saved_toy_model, hf_model, sae,
                                                 tokens):
    sae_path = tmp_path / "sae"
    sae.save_model(sae_path)
    tokens_path = tmp_path / "tokens.parquet"
    pd.DataFrame({"tokens": list(tokens.numpy())}).to_parquet(tokens_path)
    out = tmp_path / "scores.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1] / "lib")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "reasonlens.distributed", "--model", str(saved_toy_model), "--sae",
           str(sae_path), "--tokens", str(tokens_path), "--out", str(out), "--hook-name", HOOK,
           "--backend", "hf", "--batch-size", "2"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = SAE.load_from_disk(sae_path)
    expected, _ = scoring.reason_score(hf_model, reloaded, tokens,
                                       build_reason_score_config(batch_size=2), progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected, rtol=1e-6, atol=1e-7)


def test_top_activation_window_share_counts_top_tokens_inside_windows(hf_model, sae, tokens,
                                                                      tokenizer):
    cfg = build_reason_score_config()
    shares = scoring.top_activation_window_share(hf_model, sae, tokens, [0, 5, 7], cfg, n_top=10)
    assert list(shares.feature_idx) == [0, 5, 7]
    assert ((shares.window_share >= 0) & (shares.window_share <= 1)).all()
    # recompute feature 5 plainly: its 10 largest activations over non-ignored tokens
    folded = scoring.folded_sae(sae)
    acts = scoring.encode_batch(hf_model, folded, tokens, HOOK)[..., 5]
    ignore = scoring.default_ignore_ids(tokenizer, cfg)
    keep = ~scoring.ignored_mask(tokens, ignore)
    groups = scoring.reasoning_groups(tokenizer, cfg)
    inside = scoring.word_masks(tokens, list(groups.values()), cfg.window, ignore).any(0)
    top = acts[keep].topk(10).indices
    assert shares.window_share.iloc[1] == pytest.approx(inside[keep][top].float().mean().item())
    assert shares.chance_share.iloc[0] == pytest.approx(inside[keep].float().mean().item())


# --- model and SAE on different devices (the meta device stands in for a GPU) -------------------
def test_encode_batch_refuses_activations_on_another_device_naming_both(saved_toy_model, sae,
                                                                          tokens):
    model = models.load_hooked(saved_toy_model, backend="transformer_lens")
    model.model.to("meta")
    with pytest.raises(ValueError, match=rf"'{HOOK}' are on meta but the SAE is on cpu"):
        scoring.encode_batch(model, scoring.folded_sae(sae), tokens, HOOK)


SCORING_ENTRY_POINTS = {
    "reason_score": lambda m, s, t: scoring.reason_score(m, s, t, build_reason_score_config(),
                                                         progress=False),
    "accumulate_stats (folded)": lambda m, s, t: scoring.accumulate_stats(
        m, s, t, build_reason_score_config(), progress=False, fold=False),
    "prompt_score": lambda m, s, t: scoring.prompt_score(m, s, t, [0, 1], hook_name=HOOK),
    "top_activation_window_share": lambda m, s, t: scoring.top_activation_window_share(
        m, s, t, [0, 1], build_reason_score_config()),
}


@pytest.mark.parametrize("entry", SCORING_ENTRY_POINTS)
def test_scoring_brings_the_sae_to_the_model_before_any_pass(entry, hf_model, sae, tokens):
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        SCORING_ENTRY_POINTS[entry](hf_model, copy.deepcopy(sae).to("meta"), tokens)
