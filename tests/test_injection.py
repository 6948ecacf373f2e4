import pandas as pd
import pytest

from reasonlens import injection, models
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
    with pytest.raises(ValueError, match="no <\\|assistant\\|> turn"):
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
