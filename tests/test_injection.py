import pandas as pd
import pytest
import torch

from reasonlens import evaluation, injection, models
from reasonlens.scoring import ReasonScoreConfig

TRACE = ("<bos><|user|>Add 4 to 50 twice.<|assistant|><think>\nMaybe 50 + 4 = 55, one to go.\n"
         "Wait. But 50 + 4 = 54, not 55.\nLet me check: 54 + 4 = 58, done.\n</think>\n"
         "The answer is 58.<eos>")
PLAIN = "<bos><|user|>Add 4 to 50 twice.<|assistant|>The answer is 58.<eos>"


def test_strip_words_removes_every_reasoning_word_and_keeps_the_rest():
    stripped = injection.strip_words(TRACE)
    assert "50 + 4 = 55, one to go." in stripped and "54 + 4 = 58" in stripped
    for word in ("Maybe", "Wait", "But", "Let me", "let me"):
        assert word not in stripped
    assert "Butter and another" not in injection.strip_words("Butter and another")  # 'another'
    assert injection.strip_words("Butter") == "Butter"  # whole words only


def test_inject_words_puts_openers_in_the_reply():
    injected = injection.inject_words(PLAIN, 3, seed=1)
    head, reply = injected.split("<|assistant|>")
    assert head == "<bos><|user|>Add 4 to 50 twice." and reply.endswith("The answer is 58.<eos>")
    assert sum(reply.count(o) for o in injection.OPENERS.values()) == 3
    assert injection.inject_words(PLAIN, 3, seed=1) == injected
    assert injection.inject_words(PLAIN, 0, seed=1) == PLAIN
    with pytest.raises(ValueError, match="no '<\\|assistant\\|>' turn"):
        injection.inject_words("no turns here", 2, seed=0)
    with pytest.raises(ValueError, match="no opener"):
        injection.inject_words(PLAIN, 1, seed=0, words=["indeed"])


def test_feature_activations_measure_windows_only_where_words_are(saved_toy_model, sae):
    model = models.load_hooked(saved_toy_model, backend="hf")
    texts = [TRACE, injection.strip_words(TRACE), PLAIN]
    frame = injection.feature_activations(model, sae, texts, [0, 3], ReasonScoreConfig(),
                                          batch_size=2)
    assert len(frame) == 6 and set(frame.feature_idx) == {0, 3}
    by_text = frame.groupby("text_idx").window_mean.apply(lambda s: s.isna().all())
    assert by_text.tolist() == [False, True, True]
    assert (frame.doc_max >= frame.doc_mean - 1e-6).all()
    # padding does not change a text's numbers: measure the plain text alone
    alone = injection.feature_activations(model, sae, [PLAIN], [0, 3], ReasonScoreConfig())
    assert alone.doc_mean.tolist() == pytest.approx(frame[frame.text_idx == 2].doc_mean.tolist(),
                                                    abs=1e-5)


def test_effect_sizes_pair_conditions_by_problem():
    rows = [dict(problem_id=p, condition=c, feature_idx=0, doc_mean=v)
            for p in range(20) for c, v in (("a", 1.0 + 0.1 * (p % 3)), ("b", 0.1 * (p % 3)))]
    table = injection.effect_sizes(pd.DataFrame(rows), [("a", "b")])
    row = table.iloc[0]
    assert row.difference == pytest.approx(1.0) and row.ci_low == pytest.approx(1.0)
    assert row.cohens_d > 5 and row.n == 20
    with pytest.raises(ValueError, match="condition 'c'"):
        injection.effect_sizes(pd.DataFrame(rows), [("a", "c")])


def test_injection_texts_pair_four_kinds_per_problem_and_measure_labels_them(saved_toy_model,
                                                                             sae):
    texts = injection.injection_texts([TRACE, TRACE], [PLAIN, PLAIN], n_words=2, seed=0)
    assert list(texts) == ["trace", "trace, words removed", "plain", "plain, words injected"]
    assert texts["plain, words injected"][0] != texts["plain, words injected"][1]  # own seeds
    with pytest.raises(ValueError, match="pair up"):
        injection.injection_texts([TRACE], [PLAIN, PLAIN], 2)
    model = models.load_hooked(saved_toy_model, backend="hf")
    frame = injection.measure_conditions(model, sae, texts, ["p0", "p1"], [4])
    assert len(frame) == 8 and set(frame.problem_id) == {"p0", "p1"}
    assert frame.groupby("condition").size().tolist() == [2, 2, 2, 2]


def test_feature_activations_bring_the_sae_to_the_model_first(saved_toy_model, sae):
    import copy
    model = models.load_hooked(saved_toy_model, backend="hf")
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        injection.feature_activations(model, copy.deepcopy(sae).to("meta"), [PLAIN], [0, 3])


def test_strip_words_gives_the_hand_stripped_text():
    assert injection.strip_words(TRACE) == (
        "<bos><|user|>Add 4 to 50 twice.<|assistant|><think>\n50 + 4 = 55, one to go.\n"
        "50 + 4 = 54, not 55.\ncheck: 54 + 4 = 58, done.\n</think>\nThe answer is 58.<eos>")
    assert injection.strip_words("7 hmm  8") == "7 8"  # no double space left behind
    # the longer of two overlapping words is removed whole
    assert injection.strip_words("Let me see.", words=["let", "let me"]) == "see."


def test_inject_words_hand_built_cases():
    assert injection.inject_words(PLAIN, 3, seed=5, words=["wait"]) == (
        "<bos><|user|>Add 4 to 50 twice.<|assistant|>Wait. Wait. Wait. The answer is 58.<eos>")
    two_turns = "<bos><|user|>a<|assistant|>b<|user|>c<|assistant|>d<eos>"
    assert injection.inject_words(two_turns, 1, seed=0, words=["hmm"]) == (
        "<bos><|user|>a<|assistant|>Hmm, b<|user|>c<|assistant|>d<eos>")  # the first reply
    openers = injection.inject_words(PLAIN, 40, seed=2, words=["wait", "hmm"]).split(
        "<|assistant|>")[1].removesuffix("The answer is 58.<eos>")
    assert 0 < openers.count("Wait. ") < 40 and openers.count("Wait. ") + openers.count("Hmm, ") == 40
    with pytest.raises(ValueError, match="n_words=-1"):
        injection.inject_words(PLAIN, -1, seed=0)


def test_injection_texts_give_each_plain_text_its_own_seed():
    for kwargs, seeds in (({}, (0, 1, 2)), ({"seed": 5}, (5, 6, 7))):
        texts = injection.injection_texts([TRACE] * 3, [PLAIN] * 3, n_words=2, **kwargs)
        assert texts["plain, words injected"] == [injection.inject_words(PLAIN, 2, s)
                                                  for s in seeds]
    assert texts["trace, words removed"] == [injection.strip_words(TRACE)] * 3
    assert texts["trace"] == [TRACE] * 3 and texts["plain"] == [PLAIN] * 3


def test_cohens_d_by_hand():
    # means 2 and 4, variances 2 and 8: pooled sd sqrt((1 * 2 + 1 * 8) / 2) = sqrt(5)
    assert injection.cohens_d([1, 3], [2, 6]) == pytest.approx(-2 / 5 ** 0.5)
    # unequal sizes: variances 5/3 and 4, pooled sqrt((3 * 5/3 + 2 * 4) / 5) = sqrt(2.6)
    assert injection.cohens_d([1, 2, 3, 4], [3, 5, 7]) == pytest.approx(-2.5 / 2.6 ** 0.5)
    assert injection.cohens_d([2, 2], [1, 1]) != injection.cohens_d([2, 2], [1, 1])  # NaN: no spread
    assert injection.cohens_d([1, 2], [1, 2]) == 0.0


def test_effect_sizes_by_hand():
    # feature 5: a = 1..4, b = 0, 0, 1, 1; differences 1, 2, 2, 3; variances 5/3 and 1/3, pooled 1.
    # feature 2: a constant 2, b constant 1 (d undefined); problem 3 has no window_mean in b.
    values = {5: {"a": [1, 2, 3, 4], "b": [0, 0, 1, 1]}, 2: {"a": [2, 2, 2, 2], "b": [1, 1, 1, 1]}}
    rows = [dict(problem_id=f"p{p}", condition=c, feature_idx=f, doc_mean=v[p],
                 window_mean=float("nan") if (c, p) == ("b", 3) else v[p])
            for f, by_condition in values.items() for c, v in by_condition.items() for p in range(4)]
    frame = pd.DataFrame(rows)
    table = injection.effect_sizes(frame, [("a", "b")])
    assert list(table.columns) == ["feature_idx", "contrast", "n", "mean_a", "mean_b",
                                   "difference", "ci_low", "ci_high", "cohens_d"]
    assert table.feature_idx.tolist() == [5, 2]  # order of appearance
    assert table.contrast.tolist() == ["a - b"] * 2 and table.n.tolist() == [4, 4]
    first = table.iloc[0]
    assert (first.mean_a, first.mean_b, first.difference, first.cohens_d) == pytest.approx(
        (2.5, 0.5, 2.0, 2.0))
    assert (first.ci_low, first.ci_high) == pytest.approx(
        evaluation.paired_bootstrap_difference([1, 2, 3, 4], [0, 0, 1, 1], seed=0)[1:])
    assert table.iloc[1][["difference", "ci_low", "ci_high"]].tolist() == [1.0, 1.0, 1.0]
    assert table.cohens_d.iloc[1] != table.cohens_d.iloc[1]  # NaN
    # irregular values, whose resample means do not tie: the interval shows the seed used
    a = [1.13, 2.71, 0.42, 3.38, 2.05, 0.97, 1.66, 2.49]
    b = [0.29, 0.77, 0.61, 1.94, 0.18, 1.23, 0.55, 0.86]
    irregular = pd.DataFrame([dict(problem_id=f"p{p}", condition=c, feature_idx=9, doc_mean=v[p])
                              for c, v in (("a", a), ("b", b)) for p in range(8)])
    for kwargs, seed in (({}, 0), ({"seed": 1}, 1)):
        row = injection.effect_sizes(irregular, [("a", "b")], **kwargs).iloc[0]
        assert (row.ci_low, row.ci_high) == pytest.approx(
            evaluation.paired_bootstrap_difference(a, b, seed=seed)[1:], rel=1e-12)
    assert evaluation.paired_bootstrap_difference(a, b, seed=0) != \
        evaluation.paired_bootstrap_difference(a, b, seed=1)
    windows = injection.effect_sizes(frame, [("b", "a")], metric="window_mean").iloc[0]
    assert (windows.n, windows.contrast, windows.difference) == (3, "b - a", pytest.approx(-5 / 3))


# Token by token (the session tokenizer): <bos> <|user|> x <|assistant|> Therefore Ġ7 <eos>,
# and <bos> 7 <eos>; BOS/EOS (and the PAD after the short text) are ignored.
WORD_TEXT = "<bos><|user|>x<|assistant|>Therefore 7<eos>"
SHORT_TEXT = "<bos>7<eos>"


def oracle_activations(toy_model, sae, text, tokenizer, features):
    """Folded activations ``[pos, features]`` at blocks.0.hook_resid_post, computed without the
    library: HF's hidden state after layer 0, SAELens's encode, times each decoder row's norm."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        resid = toy_model(ids, output_hidden_states=True).hidden_states[1][0]
        return (sae.encode(resid) * sae.W_dec.norm(dim=1))[:, features]


@pytest.mark.parametrize("window,in_window", [((1, 2), [3, 4, 5]), ((0, 0), [4])])
def test_feature_activations_match_a_hand_computation(saved_toy_model, toy_model, tokenizer, sae,
                                                      window, in_window):
    assert tokenizer.convert_ids_to_tokens(tokenizer(WORD_TEXT, add_special_tokens=False)[
        "input_ids"]) == ["<bos>", "<|user|>", "x", "<|assistant|>", "Therefore", "Ġ7", "<eos>"]
    features = [5, 1, 0]
    cfg = ReasonScoreConfig(window=window, hook_name="blocks.0.hook_resid_post")
    model = models.load_hooked(saved_toy_model, backend="hf")
    frame = injection.feature_activations(model, sae, [WORD_TEXT, SHORT_TEXT], features, cfg)
    assert frame[["text_idx", "feature_idx"]].values.tolist() == [
        [0, 5], [0, 1], [0, 0], [1, 5], [1, 1], [1, 0]]
    acts = oracle_activations(toy_model, sae, WORD_TEXT, tokenizer, features)
    kept = acts[1:6]  # <bos> and <eos> left out
    expected = {"doc_mean": kept.mean(0), "doc_max": kept.amax(0),
                "window_mean": acts[in_window].mean(0)}
    assert expected["doc_max"][1] < acts[6, 1]  # feature 1 fires most on the ignored <eos>
    first = frame[frame.text_idx == 0]
    for column, values in expected.items():
        assert first[column].tolist() == pytest.approx(values.tolist(), abs=1e-5), column
    # one real token: its activation is the mean and the max; no reasoning word, no window
    short = frame[frame.text_idx == 1]
    alone = oracle_activations(toy_model, sae, SHORT_TEXT, tokenizer, features)[1]
    assert (alone > 0).all()
    assert short.doc_mean.tolist() == pytest.approx(alone.tolist(), abs=1e-5)
    assert short.doc_max.tolist() == pytest.approx(alone.tolist(), abs=1e-5)
    assert short.window_mean.isna().all()


def test_feature_activations_add_no_special_tokens(saved_toy_model, sae):
    """A tokenizer that prepends BOS by itself (as Llama's does) must not shift the texts."""
    import copy

    from tokenizers.processors import TemplateProcessing

    model = models.load_hooked(saved_toy_model, backend="hf")
    plain = injection.feature_activations(model, sae, [WORD_TEXT], [5, 1, 0])
    adding = copy.deepcopy(model.tokenizer)
    adding.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", adding.bos_token_id)])
    assert adding("x")["input_ids"][0] == adding.bos_token_id
    model.tokenizer = adding
    again = injection.feature_activations(model, sae, [WORD_TEXT], [5, 1, 0])
    pd.testing.assert_frame_equal(again, plain)
    with pytest.raises(ValueError, match="texts is empty"):
        injection.feature_activations(model, sae, [], [0])


def test_measure_conditions_passes_its_config_on(saved_toy_model, sae):
    model = models.load_hooked(saved_toy_model, backend="hf")
    cfg = ReasonScoreConfig(window=(0, 0), hook_name="blocks.0.hook_resid_post")
    texts = {"one": [WORD_TEXT, SHORT_TEXT], "two": [SHORT_TEXT, WORD_TEXT]}
    frame = injection.measure_conditions(model, sae, texts, ["p0", "p1"], [1, 0], cfg)
    assert frame.index.equals(pd.RangeIndex(8))
    for condition, kind_texts in texts.items():
        expected = injection.feature_activations(model, sae, kind_texts, [1, 0], cfg)
        got = frame[frame.condition == condition].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[expected.columns], expected)
        assert got.problem_id.tolist() == ["p0", "p0", "p1", "p1"]
