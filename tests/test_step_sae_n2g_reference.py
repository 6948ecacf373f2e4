"""Tests for reasonlens.step_sae.n2g_reference, .n2g_labels and reasonlens.chat."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from reasonlens.chat import ChatClient
from reasonlens.step_sae import data, n2g
from reasonlens.step_sae import n2g_labels as labels
from reasonlens.step_sae import n2g_reference as ref
from reasonlens.step_sae.inference import encode_steps

W = ref.WILDCARD_ID


# --- config ------------------------------------------------------------------------------------
def test_reference_config_is_rs_and_leaves_our_default_alone():
    cfg = n2g.N2GConfig.reference()
    assert isinstance(cfg, ref.ReferenceN2GConfig) and cfg == ref.ReferenceN2GConfig()
    # experiment.yaml:13-20
    assert (cfg.n_latents, cfg.n_patterns, cfg.suffix_ratio, cfg.active_threshold,
            cfg.n_eval_steps, cfg.max_candidates, cfg.round_float16) == (50, 20, 0.5, 0.0, 500,
                                                                         None, True)
    toy = n2g.N2GConfig.reference(n_latents=3, n_patterns=4, n_eval_steps=20, max_candidates=6)
    assert ref.ReferenceN2GConfig.from_dict(toy.to_dict()) == toy
    assert n2g.N2GConfig() == n2g.N2GConfig(n_latents=10, n_examples=8, keep_fraction=0.5,
                                            n_replacements=4, anchor="end", batch_size=64)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['keep_fraction'\]"):
        n2g.N2GConfig.reference(keep_fraction=0.5)
    with pytest.raises(ValueError, match=r"suffix_ratio=1.5 is outside \[0.0, 1.0\]"):
        ref.ReferenceN2GConfig(suffix_ratio=1.5)
    with pytest.raises(ValueError, match=r"max_candidates=0 is outside .*Use None for R's rule"):
        ref.ReferenceN2GConfig(max_candidates=0)
    with pytest.raises(ValueError, match="round_float16=1 must be true or false"):
        ref.ReferenceN2GConfig(round_float16=1)


# --- a stand-in latent function, only to pin the pruning and wildcard rules ---------------------
class SumModel:
    """Stands in for a step SAE: latent 0 of a sequence is the sum of its tokens' weights (read
    over the attended tokens), latent 1 is 0.1 per token 7. ``pad_id == eos_id`` as in R (Qwen's
    pad is its eos)."""

    sep_id, eos_id, pad_id = 90, 91, 91

    def __init__(self, weights):
        self.weights = weights

    def eval(self):
        return self

    def encode(self, batch: data.StepBatch) -> torch.Tensor:
        rows = []
        for ids, n in zip(batch.input_ids.tolist(), batch.attention_mask.sum(1).tolist()):
            tokens = ids[:n]
            rows.append([sum(self.weights.get(t, 0.0) for t in tokens), 0.1 * tokens.count(7)])
        return torch.tensor(rows, dtype=torch.float32)


def test_pruning_keeps_the_shortest_suffix_at_or_above_half_the_example():
    # full sequence: context 10, <sep>, step 3 5, <eos>: 0.5 + 0 + 0.25 + 0.25 + 0 = 1.0
    model = SumModel({10: 0.5, 3: 0.25, 5: 0.25})
    sequence = [10, 90, 3, 5, 91]
    cfg = ref.ReferenceN2GConfig(batch_size=2)  # suffixes in two passes and a half
    # suffixes: [eos] 0, [5, eos] 0.25, [3, 5, eos] 0.5 = 0.5 * 1.0: kept (>=, not >)
    assert ref.shortest_suffix(model, sequence, 0, 1.0, cfg) == ([3, 5, 91], 0.5)
    assert ref.shortest_suffix(model, sequence, 0, 1.0, cfg.replace(suffix_ratio=0.25)) == (
        [5, 91], 0.25)
    # just above: [3, 5, eos] and [<sep>, 3, 5, eos] (0.5) fall short, the whole sequence not
    assert ref.shortest_suffix(model, sequence, 0, 1.0001, cfg) == (sequence, 1.0)
    # nothing reaches 0.5 * 2.5: the whole sequence, with the example's activation (R:72)
    assert ref.shortest_suffix(model, sequence, 0, 2.5, cfg) == (sequence, 2.5)


def test_pruning_compares_float16_rounded_activations_as_r_does():
    model = SumModel({5: 0.49999})  # [5, eos] = 0.49999, which float16 rounds to 0.5
    cfg = ref.ReferenceN2GConfig()
    assert ref.shortest_suffix(model, [3, 5, 91], 0, 1.0, cfg) == ([5, 91], 0.5)
    # unrounded, no suffix reaches 0.5: the whole sequence and the example's activation
    assert ref.shortest_suffix(model, [3, 5, 91], 0, 1.0, cfg.replace(round_float16=False)) == (
        [3, 5, 91], 1.0)


def test_wildcards_are_judged_against_the_examples_activation_not_the_suffixs():
    model = SumModel({10: 0.5, 3: 0.25, 5: 0.25})
    cfg = ref.ReferenceN2GConfig()
    # suffix [3, 5, eos] (0.5) of an example at 1.0: the bar is 0.5, not 0.5 * 0.5 = 0.25.
    # Padding 3 or 5 out leaves 0.25: kept; padding <eos> with pad = eos changes nothing.
    assert ref.wildcard_positions(model, [3, 5, 91], 0, 1.0, cfg) == [False, False, True]
    # against the suffix's own 0.5 all three would have been wildcards (0.25 >= 0.25)
    assert ref.wildcard_positions(model, [3, 5, 91], 0, 0.5, cfg) == [True, True, True]
    # a token of no weight is a wildcard: [pad, 5, eos] = 0.25 >= 0.5 * 0.5
    assert ref.wildcard_positions(SumModel({5: 0.25}), [3, 5, 91], 0, 0.5, cfg) == [
        True, False, True]


def _examples(contexts, steps):
    return data.StepExamples(pd.DataFrame({"step": [str(s) for s in steps]}), contexts, steps)


def test_mine_patterns_goes_down_the_examples_until_enough_distinct_patterns(tokenizer):
    model = SumModel({3: 0.25, 5: 0.25, 8: 0.125})
    examples = _examples([[4], [8], [6], [8], [4]], [[3, 5], [3, 5], [5, 6], [3, 5], [6]])
    latents = ref.sequence_latents(model, ref.full_sequences(model, examples))
    np.testing.assert_allclose(latents[:, 0], [0.5, 0.625, 0.25, 0.625, 0.0])
    cfg = ref.ReferenceN2GConfig(n_patterns=2)
    mined = ref.mine_patterns(model, examples, [0], cfg, tokenizer)
    d = tokenizer.decode
    # rows 1 and 3 (0.625; ties in data order): bar 0.3125, [3, 5, eos] (0.5) the first suffix
    # above it; padding 3 or 5 leaves 0.25, so both stay; <eos> is a wildcard. Row 3 gives row
    # 1's pattern again. Row 0 (0.5): bar 0.25, suffix [5, eos]. Two distinct patterns: row 2 is
    # never tried.
    assert mined.tokens.tolist() == [[d([3]), d([5]), "*"], [d([5]), "*"]]
    assert mined.token_ids.tolist() == [[3, 5, W], [5, W]]
    assert mined.n_sources.tolist() == [2, 1] and mined.source_row.tolist() == [1, 0]
    assert mined.act.tolist() == [0.625, 0.5] and mined.suffix_act.tolist() == [0.5, 0.25]
    assert mined.pattern_idx.tolist() == [0, 1] and mined.n_wildcards.tolist() == [1, 1]
    assert mined.n_tokens.tolist() == [3, 2]
    assert mined.pattern_text.tolist() == [" ".join([d([3]), d([5]), "*"]).strip(),
                                           " ".join([d([5]), "*"]).strip()]
    assert mined.example.iloc[1] == d([4, 90, 3, 5, 91], skip_special_tokens=True)
    assert mined.short_text.iloc[1] == d([5, 91], skip_special_tokens=True)
    assert list(mined.columns) == ref.PATTERN_COLUMNS
    # no cap: row 2 (0.25) gives [5, *, *] (its 6 weighs nothing); row 4 (0) is not active
    more = ref.mine_patterns(model, examples, [0], cfg.replace(n_patterns=10), tokenizer)
    assert more.token_ids.tolist() == [[3, 5, W], [5, W], [5, W, W]]
    # a budget of one candidate: row 1 alone
    assert ref.mine_patterns(model, examples, [0], cfg.replace(max_candidates=1),
                             tokenizer).source_row.tolist() == [1]
    # latent 1 is 0 everywhere: no pattern; an empty table keeps its columns
    none = ref.mine_patterns(model, examples, [1], cfg, tokenizer)
    assert len(none) == 0 and list(none.columns) == ref.PATTERN_COLUMNS
    with pytest.raises(ValueError, match="latents has 2 rows for 5 examples"):
        ref.mine_patterns(model, examples, [0], cfg, tokenizer, latents=latents[:2])


def test_top_latents_rank_sums_keep_dead_ones_and_break_ties_by_index():
    latents = np.array([[0.0, 0.5, 0.1, 0.0, 0.3], [0.0, 0.1, 0.5, 0.0, 0.0]])
    assert ref.top_latents(latents, 3).tolist() == [1, 2, 4]  # 0.6, 0.6 (tie: lower first), 0.3
    assert ref.top_latents(latents, 5).tolist() == [1, 2, 4, 0, 3]  # dead ones too, as topk
    assert ref.top_latents(latents, 50).tolist() == [1, 2, 4, 0, 3]  # capped at n_latents


# --- matching and evaluation -------------------------------------------------------------------
def test_pattern_strings_are_reencoded_keeping_the_first_id(tokenizer):
    word = tokenizer.decode([300])
    assert tokenizer.encode(word, add_special_tokens=False) == [300]
    two = tokenizer.encode(" 5 6", add_special_tokens=False)  # one token per digit
    assert len(two) == 2
    # "*" is a wildcard, a string of two tokens keeps its first, "" is dropped
    assert ref.pattern_ids([word, "*", " 5 6", ""], tokenizer) == [300, W, two[0]]


def test_window_matching_anywhere_with_wildcards():
    seq = [1, 2, 3, 4, 5]
    assert ref.window_match([3, 4], seq)  # in the middle: not anchored to the end
    assert ref.window_match([1, W, 3], seq) and ref.window_match([W, 5], seq)
    assert not ref.window_match([5, W], seq)  # a wildcard needs a token to match
    assert not ref.window_match([2, 4], seq)  # a window is contiguous
    assert not ref.window_match([1, 2, 3, 4, 5, 6], seq)  # longer than the sequence
    assert ref.window_match([W], seq) and ref.window_match([], seq)  # these match everything
    assert ref.window_match([], []) and not ref.window_match([W], [])


def test_precision_recall_f1_by_hand():
    p, r, f1 = ref.precision_recall_f1(3, 1, 2)
    assert p == pytest.approx(0.75) and r == pytest.approx(0.6)
    assert f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert ref.precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)  # R's 1e-8: 0, not NaN


def test_evaluate_patterns_counts_per_latent_and_micro_averages(tokenizer):
    model = SumModel({})
    steps = [[300, 50], [50], [300], [60], [50, 60]]
    examples = _examples([[70]] * 5, steps)
    # latent 0: active on steps 0, 2, 3; latent 1: on 1 and 4; latent 2: on 0; step 5 unseen
    latents = np.array([[0.3, 0.0, 0.1], [0.0, 0.2, 0.0], [0.1, 0.0, 0.0], [0.2, 0.0, 0.0],
                        [0.0, 0.4, 0.0], [0.9, 0.9, 0.9]])
    d = tokenizer.decode
    patterns = pd.DataFrame({"latent_idx": [0, 1, 1],
                             "tokens": [[d([300])], [d([50]), "*"], [d([70])]]})
    cfg = ref.ReferenceN2GConfig(n_eval_steps=5)
    table = ref.evaluate_patterns(model, patterns, examples, [0, 1, 2], cfg, tokenizer, latents)
    assert list(table.columns) == ref.EVALUATION_COLUMNS
    rows = table.set_index("scope")
    # latent 0, pattern "300" anywhere: matches steps 0, 2; active 0, 2, 3: TP 2, FP 0, FN 1
    # latent 1, "50 *" (steps 0, 1, 4) or "70" (in every context, so every step): all 5 match;
    # active 1, 4: TP 2, FP 3, FN 0
    # latent 2, no patterns: nothing matches; active 0: TP 0, FP 0, FN 1
    assert table[["tp", "fp", "fn"]].values.tolist() == [[2, 0, 1], [2, 3, 0], [0, 0, 1],
                                                         [4, 3, 2]]
    assert table.n_patterns.tolist() == [1, 2, 0, 3] and (table.n_steps == 5).all()
    assert table.n_active.tolist() == [3, 2, 1, 6] and table.n_matched.tolist() == [2, 5, 0, 7]
    np.testing.assert_allclose(table.precision, [1.0, 0.4, 0.0, 4 / 7], atol=1e-7)
    np.testing.assert_allclose(table.recall, [2 / 3, 1.0, 0.0, 4 / 6], atol=1e-7)
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in
          [(1.0, 2 / 3), (0.4, 1.0), (0, 0), (4 / 7, 4 / 6)]]
    np.testing.assert_allclose(table.f1, f1, atol=1e-7)
    assert table.scope.tolist() == ["latent"] * 3 + ["micro"]
    assert table.latent_idx.iloc[:3].tolist() == [0, 1, 2] and pd.isna(rows.latent_idx["micro"])
    with pytest.raises(ValueError, match="latents has 4 rows, fewer than the 5 steps"):
        ref.evaluate_patterns(model, patterns, examples, [0], cfg, tokenizer, latents[:4])
    with pytest.raises(ValueError, match="there are no steps to evaluate on; pass a non-empty"):
        ref.evaluate_patterns(model, patterns, examples.subset([]), [0], cfg, tokenizer)
    with pytest.raises(ValueError, match="there are no steps to mine patterns from"):
        ref.mine_patterns(model, examples.subset([]), [0], cfg, tokenizer)


# --- the real path on a tiny step SAE ----------------------------------------------------------
def test_reference_n2g_on_a_step_sae_follows_the_rules(tiny_step_sae, step_table):
    sae, tok = tiny_step_sae
    examples = data.tokenize_steps(step_table.head(40), tok, 12, 12)
    train, valid = examples.subset(range(30)), examples.subset(range(30, 40))
    sequences = ref.full_sequences(sae, train)
    latents = ref.sequence_latents(sae, sequences, batch_size=7)
    # the full sequence read alone is exactly the SAE's latent of context <sep> step <eos>
    np.testing.assert_allclose(latents, encode_steps(sae, train), atol=1e-6)
    cfg = n2g.N2GConfig.reference(n_latents=2, n_patterns=3, n_eval_steps=6, max_candidates=4,
                                  suffix_ratio=0.97)
    patterns, evaluation = ref.reference_n2g(sae, train, valid, cfg, tok)
    chosen = ref.top_latents(latents, 2)
    assert evaluation.latent_idx.iloc[:2].tolist() == chosen.tolist()
    assert len(patterns) and set(patterns.latent_idx) <= set(chosen.tolist())
    assert (patterns.n_tokens > 1).any() and (patterns.n_wildcards > 0).any()  # rules at work
    tol = 1e-3  # encoded in other batches here: float noise, then float16 rounding
    for row in patterns.itertuples():
        full, k, bar = sequences[row.source_row], row.n_tokens, 0.97 * row.act
        suffix = full[-k:]
        assert row.act == pytest.approx(latents[row.source_row, row.latent_idx], abs=1e-6)
        value = ref.sequence_latents(sae, [full[-j:] for j in range(1, k + 1)])[:, row.latent_idx]
        assert value[-1] >= bar - tol and (value[:-1] < bar + tol).all()  # the shortest
        assert row.suffix_act == pytest.approx(float(value[-1]), abs=tol)
        padded = [suffix[:i] + [sae.pad_id] + suffix[i + 1:] for i in range(k)]
        kept = ref.sequence_latents(sae, padded)[:, row.latent_idx]
        for token, original, v in zip(row.token_ids, suffix, kept):
            assert v >= bar - tol if token == W else (v < bar + tol and token == original)
        assert row.tokens == ["*" if t == W else tok.decode([t]) for t in row.token_ids]
    assert patterns.groupby("latent_idx").size().le(3).all()
    micro = evaluation.iloc[-1]
    per_latent = evaluation.iloc[:-1]
    assert micro.scope == "micro" and micro.tp == per_latent.tp.sum()
    assert (micro.fp, micro.fn) == (per_latent.fp.sum(), per_latent.fn.sum())
    assert (evaluation.n_steps == 6).all()
    labelled = labels.label_latents(patterns, evaluation, labels.OfflineLabeller())
    assert labelled.latent_idx.tolist() == chosen.tolist()
    assert (labelled.labeller == "offline heuristic").all()


# --- labelling ---------------------------------------------------------------------------------
def _patterns():
    return pd.DataFrame({
        "latent_idx": [4, 4, 4, 9],
        "tokens": [[" ####", " 1", "*"], [" ####", "*"], [" So", "*"], ["*"]],
        "pattern_text": [" #### 1 *", " #### *", " So *", "*"],
        "n_sources": [1, 3, 1, 2], "act": [0.5, 0.4, 0.3, 0.2],
        "short_text": [" #### 1", " #### 7 ", " So", ""],
        "example": ["Q? #### 1", "Q2? #### 7", "Q3? So", "Q4"]})


def test_latent_report_shows_stats_patterns_and_examples():
    pats = _patterns()
    report = labels.latent_report(4, pats[pats.latent_idx == 4],
                                  {"precision": 0.5, "recall": 0.25, "f1": 1 / 3}, n_examples=2)
    assert report.startswith("Latent 4\nStatistics: precision 0.500, recall 0.250, F1 0.333\n")
    assert "` #### 1 *`, ` #### *`, ` So *`" in report
    assert "1. pattern ` #### 1 *` | trigger text `#### 1` | activation 0.5000" in report
    assert "2. pattern" in report and "3. pattern" not in report  # n_examples
    assert "```\nQ2? #### 7\n```" in report
    empty = labels.latent_report(7, pats.iloc[:0])
    assert "not evaluated" in empty and "(none found)" in empty and "(none)" in empty


def test_label_prompt_asks_for_rs_json_keys_in_each_domain():
    for domain, focus in (("math", "role the step plays"), ("code", "what the code")):
        system, user = labels.label_prompt("REPORT-HERE", domain)
        assert "JSON" in system and focus in user
        assert user.rstrip().endswith("Report:\nREPORT-HERE\n\nJSON:")
        keys = "`feature_index`, `label`, `description`,\n   `top_patterns`, `trigger_texts`"
        assert keys in user
        assert "3 to 6 words" in user
    with pytest.raises(ValueError, match=r"domain='poetry' is unknown; use one of \['math', "):
        labels.label_prompt("r", "poetry")


GOOD = {"feature_index": 4, "label": "Stating The Final Answer", "description": "The end.",
        "top_patterns": [" #### *"], "trigger_texts": ["#### 7"]}


def test_parse_label_reply_reads_and_checks_the_json(caplog):
    assert labels.parse_label_reply(json.dumps(GOOD), 4) == GOOD
    fenced = "```json\n" + json.dumps(GOOD | {"extra": 1, "feature_index": "4"}) + "\n```"
    assert labels.parse_label_reply(fenced, 4) == GOOD  # fence and extra key removed
    bad = [("not json", r"the labeller's reply is not JSON \(Expecting value at char 0\)"),
           ("[1, 2]", r"is a JSON list, not an object with keys \['feature_index', "),
           (json.dumps({k: v for k, v in GOOD.items() if k != "label"}), r"lacks \['label'\]"),
           (json.dumps(GOOD | {"feature_index": 4.5}), r"feature_index=4.5 must be an integer"),
           (json.dumps(GOOD | {"feature_index": 5}), r"feature_index=5 but latent 4 was asked"),
           (json.dumps(GOOD | {"label": " "}), r"label=' ' must be a non-empty string"),
           (json.dumps(GOOD | {"top_patterns": "x"}), r"top_patterns='x' must be a list of str"),
           (json.dumps(GOOD | {"trigger_texts": [1]}), r"trigger_texts=\[1\] must be a list")]
    for text, message in bad:
        with pytest.raises(ValueError, match=message):
            labels.parse_label_reply(text, 4)
    with pytest.raises(ValueError, match=r"Reply: 'not json'"):
        labels.parse_label_reply("not json")
    with caplog.at_level(logging.WARNING, logger="reasonlens.step_sae.n2g_labels"):
        short = labels.parse_label_reply(json.dumps(GOOD | {"label": "Answers"}))
    assert short["label"] == "Answers" and "has 1 words, not 3-6" in caplog.text


def test_offline_labeller_is_deterministic_and_says_what_it_is():
    pats = _patterns()
    first = labels.label_latents(pats, None, labels.OfflineLabeller())
    again = labels.label_latents(pats.copy(), None, labels.OfflineLabeller())
    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == labels.LABEL_COLUMNS
    row = first.set_index("latent_idx").loc[4]
    # "####" in patterns with 1 + 3 sources, "1" and "So" once each (ties: first seen)
    assert row.label == "tokens '####' '1' 'So'"
    assert row.description.startswith("Offline heuristic, not a language model")
    assert "'####' x4" in row.description and row.labeller == "offline heuristic"
    assert row.top_patterns == [" #### *", " #### 1 *", " So *"]  # by n_sources, stable
    assert row.trigger_texts == ["#### 7", "#### 1", "So"]
    assert first.set_index("latent_idx").loc[9].label == "wildcard-only patterns"
    one = labels.OfflineLabeller().label(4, pats[pats.latent_idx == 4])
    assert set(one) == {*labels.LABEL_KEYS, "labeller"} and one["feature_index"] == 4


def test_llm_labeller_round_trip_through_a_local_endpoint(chat_endpoint, monkeypatch):
    url, handler = chat_endpoint
    handler.default = json.dumps(GOOD)
    monkeypatch.setenv("N2G_TEST_KEY", "k-test")
    labeller = labels.LLMLabeller(url, "stub-model", key_env="N2G_TEST_KEY", backoff_s=0.0)
    pats = _patterns()
    evaluation = pd.DataFrame({"scope": ["latent", "micro"], "latent_idx": [4, pd.NA],
                               "precision": [0.5, 0.5], "recall": [0.25, 0.25], "f1": [0.3, 0.3]})
    handler.replies = ["sorry, no JSON", json.dumps(GOOD)]  # an invalid reply is asked again
    table = labels.label_latents(pats, evaluation, labeller)
    assert table.latent_idx.tolist() == [4]  # the evaluation's latents
    row = table.iloc[0]
    assert (row.label, row.labeller, row.error) == (GOOD["label"], "llm:stub-model", None)
    assert row.top_patterns == GOOD["top_patterns"] and row.trigger_texts == ["#### 7"]
    assert len(handler.seen) == 2
    path, auth, body = handler.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer k-test"
    assert body["model"] == "stub-model" and body["temperature"] == 0.0
    assert body["top_p"] == 1.0 and body["response_format"] == {"type": "json_object"}
    assert body["max_tokens"] == 32768
    system, user = labels.label_prompt(labels.latent_report(
        4, pats[pats.latent_idx == 4], evaluation.iloc[0].to_dict()), "math")
    assert body["messages"] == [{"role": "system", "content": system},
                                {"role": "user", "content": user}]
    assert "Statistics: precision 0.500, recall 0.250, F1 0.300" in user

    # three bad replies: a clear error, or (errors="record", as R) a row that carries it
    handler.replies = ["no"] * 3
    with pytest.raises(ValueError, match=r"no valid label for latent 4 in 3 replies from http"):
        labels.label_latents(pats, evaluation, labeller)
    handler.replies = ["no"] * 3
    recorded = labels.label_latents(pats, evaluation, labeller, errors="record")
    assert "not JSON" in recorded.error.iloc[0] and pd.isna(recorded.label.iloc[0])
    monkeypatch.delenv("N2G_TEST_KEY")
    handler.replies = [json.dumps(GOOD | {"feature_index": 9})]
    assert labels.LLMLabeller(url, "m", key_env="N2G_TEST_KEY").label(
        9, pats[pats.latent_idx == 9])["feature_index"] == 9
    assert handler.seen[-1][1] is None  # no key in the environment: no Authorization header
    with pytest.raises(ValueError, match="use OfflineLabeller"):
        labels.LLMLabeller("", "m")
    with pytest.raises(ValueError, match="errors='skip' must be 'raise' or 'record'"):
        labels.label_latents(pats, None, labeller, errors="skip")


def test_chat_client_retries_http_errors_then_names_the_endpoint(chat_endpoint):
    url, handler = chat_endpoint
    handler.default = json.dumps(GOOD)
    client = ChatClient(url, "m", max_retries=2, backoff_s=0.0, name="test client",
                        hint="; do X instead.")
    handler.replies = [500, "fine"]
    assert client.ask("hi", system="sys") == "fine"
    assert [m["role"] for m in handler.seen[-1][2]["messages"]] == ["system", "user"]
    handler.replies = [500, 503]
    with pytest.raises(RuntimeError, match=r"^the test client at http://127.0.0.1:\d+/v1/chat/"
                                           r"completions did not answer after 2 attempts "
                                           r"\(HTTP Error 503: .*\); do X instead\.$"):
        client.ask("hi")
    with pytest.raises(ValueError, match="max_retries=0 must be at least 1"):
        ChatClient(url, "m", max_retries=0)
