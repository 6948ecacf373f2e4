"""Tests for reasonlens.scoring (ReasonScore, prompt score) and reasonlens.distributed."""

from __future__ import annotations

import copy
import logging
import math
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

import helpers
from reasonlens import data, models, scoring
from reference.reason_score_reference import (folded_feature_acts, reference_prompt_score,
                                              reference_reason_score, reference_window_share)

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


@pytest.mark.parametrize("overrides, message", [
    ({"alpha": -1.0}, r"alpha=-1.0 is outside [0.0, inf]. The paper uses alpha=0.7."),
    ({"window": (1,)}, r"window=(1,) must be two non-negative ints (left, right), e.g. (1, 2)."),
    ({"window": (-1, 2)}, r"window=(-1, 2) must be two non-negative ints"),
    ({"batch_size": 0}, r"batch_size=0 is outside [1, inf]."),
    ({"words": ()}, r"words=() is empty; give at least one reasoning word."),
    ({"words": "wait"}, r"words='wait' must be a sequence of non-empty strings, "
                        r"e.g. ('alternatively', 'hmm', 'maybe')."),
    ({"words": ("wait", "  ")}, r"words=('wait', '  ') must be a sequence of non-empty strings"),
    ({"words": ("wait", 5)}, r"words=('wait', 5) must be a sequence of non-empty strings"),
    ({"words": ("wait", "wait")}, r"words=('wait', 'wait') has duplicates"),
    ({"token_ids": [[[5]]]}, r"token_ids has 1 groups but words has 34 names; pass words=(...) "
                             r"with one name per token-id group."),
    ({"words": ("a",), "token_ids": [[]]}, r"token_ids group 0 is empty; give at least one"),
    ({"words": ("a",), "token_ids": [[[5], []]]},
     r"token_ids group 0 holds an empty token sequence."),
    ({"words": ("a",), "token_ids": ()}, r"token_ids=() is empty; give at least one group or use "
                                         r"None for keyword mode."),
])
def test_config_errors_name_the_parameter_and_the_fix(overrides, message):
    with pytest.raises(ValueError) as error:
        build_reason_score_config(**overrides)
    assert str(error.value).startswith(message)
    if message.endswith("."):
        assert str(error.value) == message


def test_config_normalises_sequences_to_tuples():
    cfg = build_reason_score_config(words=["a", "b"], window=[2, 1],
                                    ignore_token_ids=[np.int64(4), 7], token_ids=[7, [[8, 9], 10]])
    assert cfg.words == ("a", "b") and cfg.window == (2, 1)
    assert cfg.ignore_token_ids == (4, 7) and all(type(i) is int for i in cfg.ignore_token_ids)
    assert cfg.token_ids == (((7,),), ((8, 9), (10,)))
    assert hash(cfg) == hash(build_reason_score_config(words=("a", "b"), window=(2, 1),
                                                       ignore_token_ids=(4, 7),
                                                       token_ids=(((7,),), ((8, 9), (10,)))))


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="Valid parameters"):
        scoring.ReasonScoreConfig.from_dict({"windw": (1, 2)})


# --- Vocabulary and masks -------------------------------------------------------------------
# extraction/reason_tokens.json of AIRI-Institute/SAE-Reasoning, written out as it is there.
REFERENCE_STRINGS = [
    "alternatively", " alternatively", "Alternatively", " Alternatively", "hmm", " hmm", "Hmm",
    " Hmm", "maybe", " maybe", "Maybe", " Maybe", "wait", " wait", "Wait", " Wait", "perhaps",
    " perhaps", "Perhaps", " Perhaps", "let me", " let me", "Let me", " Let me", "therefore",
    " therefore", "Therefore", " Therefore", "however", " however", "However", " However", "But",
    "Another"]
REFERENCE_GROUPS = ["alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore",
                    "however", "but", "another"]


def test_default_vocabulary_is_the_reference_34_strings_in_10_groups(tokenizer):
    cfg = build_reason_score_config()
    assert list(cfg.words) == REFERENCE_STRINGS and cfg.variants == "listed"
    groups = scoring.reasoning_groups(tokenizer, cfg)
    assert list(groups) == REFERENCE_GROUPS
    # The toy tokenizer spells every string, each with its own ids: all 34 are scored.
    expected = {name: tuple(tuple(tokenizer.encode(t, add_special_tokens=False))
                            for t in REFERENCE_STRINGS if t.lstrip().lower() == name)
                for name in REFERENCE_GROUPS}
    assert groups == expected and sum(map(len, groups.values())) == 34
    assert groups["but"] == (tuple(tokenizer.encode("But", add_special_tokens=False)),)
    assert all(len(seq) > 1 for seq in groups["let me"])


def test_all_forms_rule_adds_the_six_but_and_another_forms(tokenizer):
    assert scoring.word_variants("Let me") == ["let me", " let me", "Let me", " Let me"]
    cfg = scoring.ReasonScoreConfig.all_forms()
    assert cfg.variants == "all_forms" and cfg.window_edges == "definition"
    listed = scoring.keyword_groups(build_reason_score_config())
    forms = scoring.keyword_groups(cfg)
    assert list(forms) == REFERENCE_GROUPS
    added = {name: [v for v in forms[name] if v not in listed[name]] for name in forms}
    assert added == {**{name: [] for name in REFERENCE_GROUPS},
                     "but": ["but", " but", " But"], "another": ["another", " another", " Another"]}
    assert sum(map(len, forms.values())) == 40
    assert scoring.ReasonScoreConfig.reference().window_edges == "reference"
    assert scoring.ReasonScoreConfig.reference(alpha=1.0).alpha == 1.0


def test_words_none_is_the_reference_vocabulary_and_rules_are_checked():
    assert scoring.ReasonScoreConfig(words=None).words == scoring.ReasonScoreConfig().words
    with pytest.raises(ValueError, match=r"^variants='each' is unknown; use one of "
                                         r"\('listed', 'all_forms'\)\.$"):
        scoring.ReasonScoreConfig(variants="each")
    with pytest.raises(ValueError, match=r"^window_edges='paper' is unknown; use one of "
                                         r"\('definition', 'reference'\)\.$"):
        scoring.ReasonScoreConfig(window_edges="paper")


def test_keyword_groups_join_strings_by_lstrip_lower():
    cfg = scoring.ReasonScoreConfig(words=(" Wait", "let me", "wait", "Let me ", "WAIT"))
    # "Let me " keeps its trailing space (lstrip only), so it is a group of its own, as in the
    # reference; "WAIT" lower-cases into "wait".
    assert scoring.keyword_groups(cfg) == {"wait": [" Wait", "wait", "WAIT"], "let me": ["let me"],
                                           "let me ": ["Let me "]}
    forms = scoring.ReasonScoreConfig(words=("WAIT", "wait"), variants="all_forms")
    assert scoring.keyword_groups(forms) == {"wait": ["wait", " wait", "Wait", " Wait"]}


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


def test_reference_window_edges_on_the_issue_example():
    # A three-token "Alternatively" (7, 8, 9) at positions 0-2 and again at 7-9, window (1, 2).
    # The definition covers 0-4 and 6-9. The reference's delta[b, starts] += 1 sees start 0 twice
    # (positions 0 and 1 clipped) and adds it once: the running count ends one short, so the first
    # window stops at 3, and the count stays one short for the rest of the context, so position 6,
    # covered by one window only, is lost too. Clipped ends fall past the context and cost nothing.
    tokens = torch.tensor([[7, 8, 9, 1, 1, 1, 1, 7, 8, 9]])
    definition = scoring.word_masks(tokens, [[(7, 8, 9)]], (1, 2), ())
    reference = scoring.word_masks(tokens, [[(7, 8, 9)]], (1, 2), (), "reference")
    assert definition[0, 0].int().tolist() == [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    assert reference[0, 0].int().tolist() == [1, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    # Window (3, 0): positions 0-2 share start 0 (two lost); deltas +1 at 0, 4, 5, 6 and -1 at
    # 1, 2, 3, 8, 9 give counts 1 0 -1 -2 -1 0 1 1 0 -1.
    assert scoring.word_masks(tokens, [[(7, 8, 9)]], (3, 0), (), "reference")[0, 0].int().tolist() \
        == [1, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    shifted = torch.tensor([[1, 7, 8, 9, 1, 1]])  # positions 1-3 all clip to start 0
    assert scoring.word_masks(shifted, [[(7, 8, 9)]], (3, 0), (), "reference")[0, 0].tolist() \
        == [True, True, False, False, False, False]
    # Window wider than the context on the left: every start clips to 0, counted once.
    assert scoring.word_masks(shifted, [[(7, 8, 9)]], (9, 1), (), "reference")[0, 0].tolist() \
        == [True, True, True, False, False, False]
    # left = pos - 2: a token at the last position has start 1 and must still count.
    last = torch.tensor([[1, 1, 1, 7]])
    assert scoring.word_masks(last, [[(7,)]], (2, 0), (), "reference")[0, 0].tolist() \
        == [False, True, True, True]
    # Away from the first token both rules agree, also with windows wider than the context.
    middle = torch.tensor([[1, 1, 7, 8, 9, 1, 1, 1]])
    for window in [(1, 2), (2, 0), (0, 9)]:
        assert torch.equal(scoring.word_masks(middle, [[(7, 8, 9)]], window, ()),
                           scoring.word_masks(middle, [[(7, 8, 9)]], window, (), "reference"))


def test_masks_of_a_group_join_all_its_variants():
    # Group 0 lists a variant absent from the tokens and one longer than the context first;
    # group 1 is a word exactly as long as the context.
    tokens = torch.tensor([[1, 5, 6, 2, 3, 7, 4]])
    masks = scoring.word_masks(tokens, [[(8, 8), (1, 5, 6, 2, 3, 7, 4, 0), (5, 6), (7,)],
                                        [(1, 5, 6, 2, 3, 7, 4)]],
                               window=(1, 0), ignore_ids=())
    assert masks[0, 0].tolist() == [True, True, True, False, True, True, False]
    assert masks[1, 0].all()
    wide = scoring.word_masks(tokens, [[(3,)]], window=(9, 9), ignore_ids=(4,))
    assert wide[0, 0].tolist() == [True] * 6 + [False]


class LetterTokenizer:
    """One id per character (its ord), with the quirks real tokenizers have: an unknown id for
    characters it lacks (" " and "x") that decodes back to "x", a lossy normaliser that spells
    "q" as "k", and BOS prepended when ``add_special_tokens`` (the transformers default)."""

    unk_token_id, bos_token_id = 0, 1

    def encode(self, text, add_special_tokens=True):
        ids = [self.unk_token_id if c in " x" else ord("k" if c == "q" else c) for c in text]
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids):
        return "".join({self.unk_token_id: "x", self.bos_token_id: ""}.get(i) or chr(i)
                       for i in ids)


def test_reasoning_groups_keep_only_variants_the_tokenizer_spells():
    cfg = build_reason_score_config(words=("xm", "qa", "xx", "Wait"), variants="all_forms")
    with pytest.warns(UserWarning, match=r"words: 'xx' cannot be produced by this tokenizer \(none "
                                         r"of its variants \['xx', ' xx', 'Xx', ' Xx'\]"):
        groups = scoring.reasoning_groups(LetterTokenizer(), cfg)
    ords = lambda text: tuple(map(ord, text))  # noqa: E731
    # "xm" holds the unknown id (although it decodes back), "qa" does not decode back, and no
    # leading-space form survives: each group keeps the later variants that do round-trip.
    assert groups == {"xm": (ords("Xm"),), "qa": (ords("Qa"),),
                      "wait": (ords("wait"), ords("Wait"))}
    listed = build_reason_score_config(words=(" Wait", "qa", "Wait"))
    with pytest.warns(UserWarning, match=r"words: 'qa' cannot .* variants \['qa'\] round-trips\)"):
        assert scoring.reasoning_groups(LetterTokenizer(), listed) == {"wait": (ords("Wait"),)}
    with pytest.warns(UserWarning), pytest.raises(
            ValueError, match=r"words=\('xx',\): the tokenizer can produce none of them"):
        scoring.reasoning_groups(LetterTokenizer(), build_reason_score_config(words=("xx",)))


def test_token_id_mode_groups_are_the_given_ids(tokenizer):
    cfg = build_reason_score_config(words=("a", "b"), token_ids=[[[5, 6], 7], [8]])
    assert scoring.reasoning_groups(tokenizer, cfg) == {"a": ((5, 6), (7,)), "b": ((8,),)}


# --- Hand-computed tiny case: a lookup-table model ------------------------------------------
# At blocks.0.hook_resid_pre the toy model's activation is its token embedding, so with a hand-set
# embedding table and an SAE whose feature f reads dimension f, every feature activation is known:
# feature f on token t is relu(embedding[t, f]) * |W_dec[f]| once decoder norms are folded in.
TABLE_HOOK = "blocks.0.hook_resid_pre"
W_DEC_NORMS = (2.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def table(toy_model, world):
    """The table model, its 3-feature SAE and two hand-laid contexts of 10 tokens.

    Its tokenizer is trained on the world with a vocabulary of 380 (inside the toy model's 400
    embeddings), small enough that "wait", "Wait" and "Let me" are two tokens each.

    row 0: BOS d0 [wait] d1 d2 [Let me] d3 PAD       (each bracketed word is two tokens)
    row 1: d4 d5 d6 d7 d8 d9 d10 [Wait] EOS

    Embedding values (folded activation = value * W_DEC_NORMS[f]); every other entry is 0:
      f0: last token of wait and of Wait 1, d3 1, d6 0.5
      f1: d2 1, last token of "Let me" 2
      f2: d0 1, d4..d9 0.5, BOS/EOS/PAD 5 (ignored tokens: they must count nowhere)
    """
    tokenizer = data.train_tokenizer(data.mix_documents(world.documents, "train",
                                                        data.MIXES["reasoning"]),
                                     helpers.build_tokenizer_config(vocab_size=380))
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    wait, cap_wait, let_me = encode("wait"), encode("Wait"), encode("Let me")
    digits = [encode(str(i)) for i in range(10)] + [encode("=")]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    words_ids = set(wait + cap_wait + let_me)
    assert (len(wait), len(cap_wait), len(let_me)) == (2, 2, 2) and all(
        len(d) == 1 and d[0] not in words_ids | {bos, eos, pad} for d in digits), \
        "the hand-computed case assumes two-token words and one-token digit fillers"
    d = [ids[0] for ids in digits]
    tokens = torch.tensor([[bos, d[0], *wait, d[1], d[2], *let_me, d[3], pad],
                           [d[4], d[5], d[6], d[7], d[8], d[9], d[10], *cap_wait, eos]])
    hf = copy.deepcopy(toy_model)
    emb = torch.zeros_like(hf.model.embed_tokens.weight)
    emb[wait[-1], 0] = emb[cap_wait[-1], 0] = emb[d[3], 0] = 1.0
    emb[d[6], 0] = 0.5
    emb[d[2], 1], emb[let_me[-1], 1] = 1.0, 2.0
    emb[d[0], 2] = 1.0
    emb[d[4:10], 2] = 0.5
    emb[[bos, eos, pad], 2] = 5.0
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(emb)
    cfg = StandardSAEConfig(d_in=32, d_sae=3)
    cfg.metadata.hook_name = TABLE_HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for param in sae.parameters():
            param.zero_()
        for f, norm in enumerate(W_DEC_NORMS):
            sae.W_enc[f, f] = 1.0
            sae.W_dec[f, 10 + f] = norm
    return models.HFHookedModel(hf, tokenizer), sae.eval(), tokens


def binary_entropy_bits(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_hand_computed_reason_score(table, batch_size):
    model, sae, tokens = table
    cfg = scoring.ReasonScoreConfig(words=("wait", "Wait", "Let me"), window=(1, 2), alpha=0.7,
                                    batch_size=batch_size)
    frame, stats = scoring.reason_score(model, sae, tokens, cfg, progress=False)
    # Masks (window (1, 2), minus BOS/EOS/PAD): wait = row 0 positions 1-5 and row 1 positions
    # 6-8 (clipped at the edge, EOS dropped), 8 tokens; let me = row 0 positions 5-8 (PAD
    # dropped), 4 tokens; mask_pos is their union, 11 tokens; mask_neg is row 1 positions 0-5.
    assert stats.group_count.tolist() == [8, 4]
    assert (int(stats.pos_count), int(stats.neg_count)) == (11, 6)
    # mu_i: f0 = (2 + 2) / 8 and 2 / 4; f1 = 1 / 8 and (1 + 2) / 4; f2 = 1 / 8 and 0.
    np.testing.assert_allclose(frame["mu_wait"], [0.5, 1 / 8, 1 / 8])
    np.testing.assert_allclose(frame["mu_let_me"], [0.5, 3 / 4, 0.0])
    np.testing.assert_allclose(frame["mu_pos"], [6 / 11, 3 / 11, 1 / 11])
    np.testing.assert_allclose(frame["mu_neg"], [1 / 6, 0.0, 3 / 6])
    # p(f1) = (1/8, 3/4) / (7/8) = (1/7, 6/7); f0 is spread evenly, f2 fires on one word only.
    h1 = binary_entropy_bits(1 / 7)
    np.testing.assert_allclose(frame["entropy"], [1.0, h1, 0.0], atol=1e-12)
    # sum mu_pos = 10/11, sum mu_neg = 2/3.
    np.testing.assert_allclose(frame["reason_score"],
                               [0.6 * 1.0 - 0.25, 0.3 * h1 ** 0.7 - 0.0, 0.1 * 0.0 - 0.75])
    np.testing.assert_allclose(frame["max_activation"], [2.0, 2.0, 1.0])  # not the 5s
    np.testing.assert_allclose(frame["density"], [4 / 17, 2 / 17, 7 / 17])
    assert frame["feature_idx"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(stats.reason_score(), frame)  # alpha defaults to the paper's 0.7


def test_hand_computed_single_multi_token_word_has_entropy_one(table):
    model, sae, tokens = table
    cfg = scoring.ReasonScoreConfig(words=("Let me",), window=(1, 2), alpha=0.7)
    frame, stats = scoring.reason_score(model, sae, tokens, cfg, progress=False)
    # |R| = 1: H = 1 for every feature, even f2 that never fires on the word.
    assert (int(stats.pos_count), int(stats.neg_count)) == (4, 13)
    np.testing.assert_allclose(frame["entropy"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(frame["mu_pos"], [0.5, 0.75, 0.0])
    np.testing.assert_allclose(frame["mu_neg"], [5 / 13, 0.0, 4 / 13])
    # sum mu_pos = 5/4, sum mu_neg = 9/13.
    np.testing.assert_allclose(frame["reason_score"], [0.4 - 5 / 9, 0.6, -4 / 9])


def test_hand_computed_prompt_score(table):
    model, sae, tokens = table
    got = scoring.prompt_score(model, sae, tokens, [2, 0, 1], top_k=2)
    # Features 2 and 0; row 0 has 8 kept tokens, f2 sums 1 and f0 2 + 2; row 1 has 9 kept tokens,
    # f2 sums 6 * 0.5 and f0 1 + 2. The 5s on BOS/EOS/PAD are ignored.
    torch.testing.assert_close(got, torch.tensor([5 / 16, 6 / 18]))
    every = scoring.prompt_score(model, sae, tokens, [1])
    torch.testing.assert_close(every, torch.tensor([3 / 8, 0.0]))
    # top_k=1 keeps f2 alone; two-token prompts: row 0 keeps d0 only, row 1 keeps d4 and d5;
    # one-token prompts: row 0 is BOS alone (no kept token: 0), row 1 is d4.
    torch.testing.assert_close(scoring.prompt_score(model, sae, tokens, [2, 0], top_k=1),
                               torch.tensor([1 / 8, 3 / 9]))
    torch.testing.assert_close(scoring.prompt_score(model, sae, tokens[:, :2], [2]),
                               torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(scoring.prompt_score(model, sae, tokens[:, :1], [2]),
                               torch.tensor([0.0, 0.5]))
    with_specials = scoring.prompt_score(model, sae, tokens, [2], ignore_token_ids=())
    torch.testing.assert_close(with_specials, torch.tensor([(5 + 1 + 5) / 10, (3 + 5) / 10]))


def test_hand_computed_top_activation_window_share(table):
    model, sae, tokens = table
    cfg = scoring.ReasonScoreConfig(words=("wait", "Wait", "Let me"), window=(1, 2),
                                    batch_size=1)
    shares = scoring.top_activation_window_share(model, sae, tokens, [0, 2], cfg, n_top=4)
    # f0's four largest: three 2s inside the windows, the 1 (d6) outside. f2's: the 1 (d0)
    # inside, then three of the 0.5s (d4..d9), all outside. The ignored 5s never count.
    assert shares.feature_idx.tolist() == [0, 2]
    np.testing.assert_allclose(shares.window_share, [3 / 4, 1 / 4])
    np.testing.assert_allclose(shares.chance_share, [11 / 17, 11 / 17])
    top_one = scoring.top_activation_window_share(model, sae, tokens, [0, 2], cfg, n_top=1)
    np.testing.assert_allclose(top_one.window_share, [1.0, 1.0])  # a 2 and the 1, both inside
    # Row 1's last four tokens (d10, Wait, EOS): three kept tokens, all in the window.
    tail = scoring.top_activation_window_share(model, sae, tokens[1:, 6:], [0], cfg, n_top=50)
    np.testing.assert_allclose(tail[["window_share", "chance_share"]].to_numpy(), [[1.0, 1.0]])
    # One kept token (d0, itself the word in token-id mode): chance is 1/1.
    d0 = int(tokens[0, 1])
    alone = scoring.top_activation_window_share(
        model, sae, tokens[:1, :2], [2], scoring.ReasonScoreConfig(words=("d0",), token_ids=[[d0]]))
    np.testing.assert_allclose(alone[["window_share", "chance_share"]].to_numpy(), [[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"^n_top=0 is outside \[1, inf\]\.$"):
        scoring.top_activation_window_share(model, sae, tokens, [0], cfg, n_top=0)


def test_stats_update_keeps_the_largest_activation_even_when_negative():
    stats = scoring.ReasonStats.zeros(("a",), 3)
    masks = torch.zeros(1, 1, 3, dtype=torch.bool)
    # A batch whose tokens are all ignored changes nothing (and has no maximum).
    stats.update(torch.full((1, 3, 3), 9.0), masks, torch.ones(1, 3, dtype=torch.bool))
    assert stats.n_tokens == 0 and stats.max_activation.tolist() == [0.0, 0.0, 0.0]
    ignored = torch.tensor([[False, False, True]])
    stats.update(torch.tensor([[[-3.0, -1.0, -8.0], [-2.0, -4.0, -9.0], [9.0, 9.0, 9.0]]]), masks,
                 ignored)
    assert stats.max_activation.tolist() == [-2.0, -1.0, -8.0]
    stats.update(torch.tensor([[[-5.0, 0.5, -9.0], [-6.0, -7.0, -9.0], [9.0, 9.0, 9.0]]]), masks,
                 ignored)
    assert stats.max_activation.tolist() == [-2.0, 0.5, -8.0]
    assert stats.n_active.tolist() == [0, 1, 0] and stats.n_tokens == 4


def test_stats_stay_exact_beyond_float32_precision():
    # float32 holds integers exactly only up to 2**24: sums and counts must not stop growing there.
    big = 2 ** 24
    stats = scoring.ReasonStats.zeros(("a",), 2)
    for name in ("group_sum", "pos_sum", "neg_sum", "group_count", "pos_count", "neg_count",
                 "n_active"):
        getattr(stats, name).fill_(big)
    # Token 0 is the word (feature 0 fires), token 1 is negative (both fire).
    stats.update(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), torch.tensor([[[True, False]]]),
                 torch.zeros(1, 2, dtype=torch.bool))
    assert stats.group_sum.tolist() == [[big + 1, big]]
    assert stats.pos_sum.tolist() == [big + 1, big] and stats.neg_sum.tolist() == [big + 1] * 2
    assert stats.group_count.tolist() == [big + 1]
    assert (stats.pos_count.item(), stats.neg_count.item()) == (big + 1, big + 1)
    assert stats.n_active.tolist() == [big + 2, big + 1]


# --- Against the reference ------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["hf", "transformer_lens"])
def test_matches_reference(backend, hf_model, tl_model, sae, tokens):
    model = hf_model if backend == "hf" else tl_model
    cfg = build_reason_score_config()  # the library's default vocabulary
    frame, stats = scoring.reason_score(model, sae, tokens, cfg, progress=False)
    ref = reference_reason_score(model, sae, tokens, strings=REFERENCE_STRINGS, hook_name=HOOK)
    assert ref["words"] == REFERENCE_GROUPS == list(stats.words)
    assert stats.group_count.sum() > 0 and (stats.group_count > 0).sum() >= 3
    assert (frame["reason_score"] != 0).sum() > 10  # features fire: the check is not vacuous
    assert_matches_reference(frame, ref, ref["words"])
    assert list(frame.columns[:7]) == ["feature_idx", "reason_score", "mu_pos", "mu_neg",
                                       "entropy", "density", "max_activation"]


def test_backends_agree(hf_model, tl_model, sae, tokens):
    cfg = build_reason_score_config()
    hf, _ = scoring.reason_score(hf_model, sae, tokens, cfg, progress=False)
    tl, _ = scoring.reason_score(tl_model, sae, tokens, cfg, progress=False)
    np.testing.assert_allclose(hf["reason_score"], tl["reason_score"], rtol=1e-4, atol=1e-6)


def test_absent_word_has_zero_mean_and_counts_in_R(hf_model, sae, tokens, caplog):
    cfg = build_reason_score_config(words=("Wait", " wait", "Therefore", "zebra"))
    with caplog.at_level(logging.WARNING, logger="reasonlens.scoring"):
        frame, stats = scoring.reason_score(hf_model, sae, tokens, cfg, progress=False)
    assert ("words ['zebra'] never occur in the tokens: their mu is 0 for every feature and they "
            "still count in |R|.") in caplog.text
    assert stats.group_count[2] == 0 and (frame["mu_zebra"] == 0).all()
    ref = reference_reason_score(hf_model, sae, tokens, strings=["Wait", " wait", "Therefore",
                                                                 "zebra"], hook_name=HOOK)
    assert_matches_reference(frame, ref, ["wait", "therefore", "zebra"])
    # |R| = 3 although only two words occur, so the entropy stays at most log 2 / log 3.
    assert frame["entropy"].max() <= np.log(2) / np.log(3) + 1e-9


def test_single_word_vocabulary(hf_model, sae, tokens):
    cfg = build_reason_score_config(words=("Wait", " wait"), window=(0, 0))
    frame, stats = scoring.reason_score(hf_model, sae, tokens, cfg, progress=False)
    assert (frame["entropy"] == 1).all() and stats.group_count.item() > 0
    ref = reference_reason_score(hf_model, sae, tokens, strings=["Wait", " wait"], window=(0, 0),
                                 hook_name=HOOK)
    assert_matches_reference(frame, ref, ["wait"])


def test_all_forms_rule_matches_the_reference_given_its_40_strings(hf_model, sae, tokens):
    cfg = scoring.ReasonScoreConfig.all_forms(hook_name=HOOK, batch_size=3)
    frame, stats = scoring.reason_score(hf_model, sae, tokens, cfg, progress=False)
    strings = REFERENCE_STRINGS + ["but", " but", " But", "another", " another", " Another"]
    ref = reference_reason_score(hf_model, sae, tokens, strings=strings, hook_name=HOOK)
    assert_matches_reference(frame, ref, ref["words"])
    listed, listed_stats = scoring.reason_score(hf_model, sae, tokens, build_reason_score_config(),
                                                progress=False)
    # " but" is in these traces: the "but" mask grows, so the two rules score differently.
    but = REFERENCE_GROUPS.index("but")
    assert stats.group_count[but] > listed_stats.group_count[but]
    assert not np.allclose(frame.reason_score, listed.reason_score)


@pytest.fixture(scope="module")
def edge_tokens(tokens, tokenizer):
    """40-token cuts of the contexts that each start with a multi-token reasoning word."""
    rows = []
    for text in REFERENCE_STRINGS:
        seq = tokenizer.encode(text, add_special_tokens=False)
        for row in tokens.tolist():
            starts = [i for i in range(len(row) - 40) if row[i:i + len(seq)] == seq]
            if len(seq) > 1 and starts:
                rows.append(row[starts[0]:starts[0] + 40])
    assert len(rows) >= 3, "the traces should hold multi-token reasoning words"
    return torch.tensor(rows)


@pytest.mark.parametrize("edges", ["definition", "reference"])
def test_window_edges_match_the_plain_reference(edges, hf_model, sae, edge_tokens):
    cfg = build_reason_score_config(window_edges=edges, window=(2, 1))
    frame, _ = scoring.reason_score(hf_model, sae, edge_tokens, cfg, progress=False)
    ref = reference_reason_score(hf_model, sae, edge_tokens, strings=REFERENCE_STRINGS,
                                 window=(2, 1), hook_name=HOOK, edges=edges)
    assert_matches_reference(frame, ref, ref["words"])


def test_reference_edges_lose_positions_only_at_the_first_token(hf_model, sae, edge_tokens):
    definition = build_reason_score_config(window=(2, 1))
    reference = scoring.ReasonScoreConfig.reference(hook_name=HOOK, batch_size=3, window=(2, 1))
    groups = list(scoring.reasoning_groups(hf_model.tokenizer, definition).values())
    exact = scoring.word_masks(edge_tokens, groups, (2, 1), ())
    lossy = scoring.word_masks(edge_tokens, groups, (2, 1), (), "reference")
    assert (lossy <= exact).all() and (lossy != exact).any()
    a, _ = scoring.reason_score(hf_model, sae, edge_tokens, definition, progress=False)
    b, _ = scoring.reason_score(hf_model, sae, edge_tokens, reference, progress=False)
    assert not np.allclose(a.reason_score, b.reason_score, rtol=0, atol=1e-9)


def test_feature_that_never_fires_on_words_has_zero_entropy():
    stats = scoring.ReasonStats.zeros(("a", "b"), 3)
    stats.group_sum[:, 0] = torch.tensor([1.0, 1.0])
    stats.group_sum[0, 1] = 2.0
    stats.group_count[:] = 1
    stats.pos_sum[:] = torch.tensor([1.0, 1.0, 0.0])
    stats.pos_count += 1
    stats.neg_sum[:] = torch.tensor([0.0, 1.0, 1.0])
    stats.neg_count += 1
    frame = stats.reason_score(alpha=0.7)
    np.testing.assert_allclose(frame["mu_a"], [1.0, 2.0, 0.0])  # one token per mask
    np.testing.assert_allclose(frame["mu_pos"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(frame["mu_neg"], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(frame["entropy"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(frame["reason_score"], [0.5, -0.5, -0.5])


def test_score_without_word_tokens_is_minus_the_negative_share():
    # No token lies in a word window: the positive term is 0 (not 0/0), and sum mu_neg is exactly 1.
    stats = scoring.ReasonStats.zeros(("a", "b"), 2)
    stats.neg_sum[:] = torch.tensor([0.25, 0.75])
    stats.neg_count += 1
    stats.n_active[0] = 1
    frame = stats.reason_score(alpha=0.7)
    np.testing.assert_allclose(frame["reason_score"], [-0.25, -0.75])
    np.testing.assert_allclose(frame["density"], [1.0, 0.0])
    empty = scoring.ReasonStats.zeros(("a", "b"), 2).reason_score(alpha=0.7)
    assert empty["reason_score"].tolist() == [0.0, 0.0] and empty["density"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"^alpha=-0.5 is outside \[0.0, inf\]\.$"):
        stats.reason_score(alpha=-0.5)


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


def test_merge_keeps_negative_maxima_and_ignores_empty_stats():
    def stats_with(acts):
        stats = scoring.ReasonStats.zeros(("a",), 2)
        stats.update(torch.tensor([acts]), torch.zeros(1, 1, len(acts), dtype=torch.bool),
                     torch.zeros(1, len(acts), dtype=torch.bool))
        return stats

    low, high = stats_with([[-3.0, -1.0], [-5.0, -6.0]]), stats_with([[-2.0, -4.0]])
    empty = scoring.ReasonStats.zeros(("a",), 2)
    merged = low.merge(high)
    assert merged.max_activation.tolist() == [-2.0, -1.0] and merged.words == ("a",)
    assert merged.n_tokens == 3 and merged.neg_sum.tolist() == [-10.0, -11.0]
    assert high.merge(low).max_activation.tolist() == [-2.0, -1.0]
    assert low.merge(empty).max_activation.tolist() == [-3.0, -1.0]
    assert empty.merge(high).max_activation.tolist() == [-2.0, -4.0]


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
    acts = folded_feature_acts(hf_model, sae, tokens, HOOK)
    keep = ~torch.isin(tokens, torch.tensor([tokenizer.bos_token_id, tokenizer.eos_token_id,
                                             tokenizer.pad_token_id]))
    valid = acts[keep]
    torch.testing.assert_close(stats.max_activation, valid.max(0).values, rtol=1e-5, atol=1e-6)
    assert torch.equal(stats.n_active, (valid > 0).sum(0))
    assert stats.n_tokens == int(keep.sum()) < tokens.numel()


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


@pytest.mark.parametrize("bad, shape", [(torch.zeros(0, 8, dtype=torch.long), r"\(0, 8\)"),
                                        (torch.zeros(8, dtype=torch.long), r"\(8,\)"),
                                        ([[1, 2]], "list")])
def test_error_tokens_not_a_batch(hf_model, sae, bad, shape):
    with pytest.raises(ValueError, match=rf"^tokens must be a non-empty \[batch, pos\] tensor of "
                                         rf"token ids, got {shape}\. Check that notebook 01 wrote"):
        scoring.reason_score(hf_model, sae, bad, build_reason_score_config(), progress=False)


def test_contexts_frame_is_scored_like_its_tokens(table):
    model, sae, tokens = table
    cfg = scoring.ReasonScoreConfig(words=("wait", "Wait", "Let me"))
    frame, _ = scoring.reason_score(model, sae, pd.DataFrame({"tokens": list(tokens.numpy())}),
                                    cfg, progress=False)
    np.testing.assert_allclose(frame["mu_pos"], [6 / 11, 3 / 11, 1 / 11])


def test_error_non_finite_activations(toy_model, tokenizer, sae, tokens):
    broken = copy.deepcopy(toy_model)
    with torch.no_grad():
        broken.model.embed_tokens.weight.fill_(float("nan"))
    model = models.HFHookedModel(broken, tokenizer)
    with pytest.raises(FloatingPointError, match=rf"hook_name='{HOOK}'.*batch 0"):
        scoring.reason_score(model, sae, tokens, build_reason_score_config(), progress=False)


def test_error_non_finite_feature_activations(hf_model, tokens):
    broken = build_sae()
    with torch.no_grad():
        broken.b_enc[3] = float("nan")
    with pytest.raises(FloatingPointError, match=rf"non-finite SAE feature activations for "
                                                 rf"hook_name='{HOOK}' in batch 0"):
        scoring.reason_score(hf_model, broken, tokens, build_reason_score_config(), progress=False)
    with pytest.raises(FloatingPointError, match=r"in this batch; check the SAE's weights\.$"):
        scoring.prompt_score(hf_model, broken, tokens, [3], hook_name=HOOK)


def test_hook_is_removed_after_early_stop(hf_model, tl_model, tokens):
    for model in (hf_model, tl_model):
        scoring.capture_activations(model, tokens[:1], "blocks.0.hook_resid_post")
    assert not any(layer._forward_hooks for layer in hf_model.layers)
    assert not any(hp.fwd_hooks for hp in tl_model.model.hook_dict.values())


# --- Prompt-level score ----------------------------------------------------------------------
def test_prompt_score_matches_reference(hf_model, sae, tokens):
    got = scoring.prompt_score(hf_model, sae, tokens, [5, 3, 40, 7], top_k=3, hook_name=HOOK)
    expected = reference_prompt_score(hf_model, sae, tokens, [5, 3, 40], HOOK)
    assert min(expected) > 0  # the features fire: the comparison is not 0 == 0
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"feature_idx": []}, r"^feature_idx is empty; pass the features to score, e.g. the top "
                          r"ReasonScore features\.$"),
    ({"top_k": 0}, r"^top_k=0 is outside \[1, inf\]\.$"),
    ({"feature_idx": [96]}, r"feature_idx must lie in \[0, 96\); got \[96\]"),
    ({"feature_idx": [-1]}, r"feature_idx must lie in \[0, 96\)"),
])
def test_prompt_score_errors(hf_model, sae, tokens, kwargs, match):
    kwargs = {"feature_idx": [5, 3], **kwargs}
    with pytest.raises(ValueError, match=match):
        scoring.prompt_score(hf_model, sae, tokens, hook_name=HOOK, **kwargs)


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


def test_top_activation_window_share_matches_reference(hf_model, sae, tokens):
    cfg = build_reason_score_config()
    features = [0, 5, 1]  # shares 1/10, 2/10, 0/10 (no ties at the 10th place)
    shares = scoring.top_activation_window_share(hf_model, sae, tokens, features, cfg, n_top=10)
    assert shares.feature_idx.tolist() == features
    for row, feature in zip(shares.itertuples(), features):
        window, chance = reference_window_share(hf_model, sae, tokens, REFERENCE_STRINGS, feature,
                                                10,
                                                cfg.window, HOOK)
        assert (row.window_share, row.chance_share) == pytest.approx((window, chance)), feature
    assert shares.window_share.nunique() > 1  # the features differ: the check is not vacuous


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


# --- Comparing scorings ----------------------------------------------------------------------
def test_compare_rankings_by_hand():
    frame = lambda scores: pd.DataFrame({"feature_idx": [0, 1, 2, 3],  # noqa: E731
                                         "reason_score": scores})
    base = frame([0.4, 0.3, 0.2, 0.1])
    swapped = frame([0.3, 0.4, -0.2, 0.1])  # the top two swap, feature 2 falls to last
    table = scoring.compare_rankings({"base": base, "swapped": swapped.iloc[::-1]}, top_k=2)
    assert table.index.tolist() == ["base", "swapped"]
    assert table.top_k_overlap.tolist() == [2, 2]
    assert table.baseline_top_rank.tolist() == [1, 2]
    # ranks: base 4 3 2 1, swapped 3 4 1 2: d = 1, 1, 1, 1; Spearman 1 - 6 * 4 / (4 * 15) = 0.6
    np.testing.assert_allclose(table.spearman, [1.0, 0.6])
    np.testing.assert_allclose(table.max_abs_difference, [0.0, 0.4])
    assert scoring.compare_rankings({"base": base}, top_k=1).top_k_overlap.tolist() == [1]
    assert scoring.compare_rankings({"b": base, "s": swapped}, top_k=1).top_k_overlap.tolist() \
        == [1, 0]
    with pytest.raises(ValueError, match=r"^scores\['other'\] covers other features"):
        scoring.compare_rankings({"base": base, "other": frame([1, 2, 3, 4]).assign(
            feature_idx=[0, 1, 2, 5])})
    with pytest.raises(ValueError, match=r"^scores is empty"):
        scoring.compare_rankings({})
    with pytest.raises(ValueError, match=r"^top_k=0 is outside \[1, inf\]\.$"):
        scoring.compare_rankings({"base": base}, top_k=0)


def test_compare_rankings_defaults_to_the_top_20_and_ranks_ties_in_order():
    n = 30
    base = pd.DataFrame({"feature_idx": range(n), "reason_score": np.arange(n, 0, -1.0)})
    # The other scoring moves features 19 and 20 (places 20 and 21) past each other.
    swapped = np.arange(n, 0, -1.0)
    swapped[[19, 20]] = swapped[[20, 19]]
    other = base.assign(reason_score=swapped)
    assert scoring.compare_rankings({"a": base, "b": other}).top_k_overlap.tolist() == [20, 19]
    # Features 0, 1 and 2 tie at the top of the other scoring: the baseline's top feature (2)
    # takes the place of its row order, third.
    top = pd.DataFrame({"feature_idx": [0, 1, 2, 3], "reason_score": [0.1, 0.2, 0.9, 0.0]})
    tied = top.assign(reason_score=[1.0, 1.0, 1.0, 0.0])
    assert scoring.compare_rankings({"a": top, "b": tied}, 1).baseline_top_rank.tolist() == [1, 3]
