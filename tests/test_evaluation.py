import numpy as np
import pandas as pd
import pytest
import torch

import helpers
from reasonlens import constants as K
from reasonlens import evaluation


@pytest.mark.parametrize("completion,expected", [
    ("Let me add.\n3 + 4 = 7.\nTherefore the answer is 7.\n</think>\nThe answer is 7.", 7),
    ("Therefore the answer is 8.\n</think>\nThe answer is 9.", 9),  # the stated answer wins
    ("3 + 4 = 7.\nSo the answer is 7.", 7),  # trace never closed
    ("The answer is 12.", 12),
    ("I do not know.", None),
])
def test_parse_answer(completion, expected):
    assert evaluation.parse_answer(completion) == expected


def test_wilson_interval_brackets_the_proportion():
    lo, hi = evaluation.wilson_interval(30, 100)
    assert lo < 0.3 < hi and 0.2 < lo and hi < 0.4
    lo, hi = evaluation.wilson_interval(0, 50)
    assert lo == pytest.approx(0, abs=1e-12) and 0 < hi < 0.1
    assert np.isnan(evaluation.wilson_interval(0, 0)[0])


def test_paired_bootstrap_difference_finds_a_real_gap_and_not_a_fake_one():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.7
    b = rng.random(400) < 0.4
    diff, lo, hi = evaluation.paired_bootstrap_difference(a, b)
    assert 0 < lo < diff < hi
    diff, lo, hi = evaluation.paired_bootstrap_difference(a, a)
    assert diff == lo == hi == 0
    with pytest.raises(ValueError, match="paired"):
        evaluation.paired_bootstrap_difference([1, 0], [1])


def test_accuracy_table_groups_and_intervals():
    frame = pd.DataFrame({"family": ["a", "a", "b", "b"], "is_correct": [True, False, True, True]})
    table = evaluation.accuracy_table({"m": frame}, by="family")
    assert table.set_index("family").accuracy.to_dict() == {"a": 0.5, "b": 1.0}
    assert (table.ci_low <= table.accuracy).all() and (table.accuracy <= table.ci_high).all()


def test_generation_and_evaluation_run_on_a_real_model(toy_model, tokenizer, world):
    problems = world.problems.head(5)
    results = evaluation.evaluate_answers(toy_model, tokenizer, problems, reasoning=True,
                                          max_new_tokens=6, batch_size=2)
    assert list(results.problem_id) == list(problems.problem_id)
    assert results.is_correct.dtype == bool
    assert (results.reasoning_tokens <= 6).all()
    assert not any(K.PAD in c for c in results.completion)
    # greedy decoding is deterministic, and the tokenizer's padding side is restored
    again = evaluation.generate(toy_model, tokenizer, [K.BOS + K.USER] * 2, max_new_tokens=4)
    assert again[0] == again[1]
    assert tokenizer.padding_side == "right"


def test_generate_kwargs_reach_hugging_face_generate(toy_model, tokenizer):
    prompts = [K.BOS + K.USER] * 4
    greedy = evaluation.generate(toy_model, tokenizer, prompts, max_new_tokens=6)
    # top_k=1 makes sampling at a high temperature greedy; without it the samples differ
    top1 = evaluation.generate(toy_model, tokenizer, prompts, max_new_tokens=6, temperature=5.0,
                               generate_kwargs={"top_k": 1})
    hot = evaluation.generate(toy_model, tokenizer, prompts, max_new_tokens=6, temperature=5.0)
    assert top1 == greedy
    assert hot != greedy


def test_bad_generation_input_is_a_clear_error(toy_model, tokenizer, world):
    with pytest.raises(ValueError, match="temperature"):
        evaluation.generate(toy_model, tokenizer, ["x"], temperature=float("nan"))
    with pytest.raises(ValueError, match="problems is empty"):
        evaluation.evaluate_answers(toy_model, tokenizer, world.problems.head(0), reasoning=False)


def test_condition_table_gives_intervals_and_paired_differences(tokenizer):
    import pandas as pd

    from reasonlens import evaluation
    close = tokenizer.convert_tokens_to_ids("</think>")
    frame = pd.DataFrame({
        "condition": ["unsteered"] * 4 + ["up"] * 4,
        "prompt_idx": [0, 1, 2, 3] * 2,
        "completion": ["so the answer is 1</think>The answer is 1."] * 4
        + ["Wait, maybe the answer is 2</think>The answer is 2."] * 4,
        "generated_ids": [[5, close, 6]] * 4 + [[5, 5, 5, close]] * 4,
    })
    scored = evaluation.score_completions(frame, [1, 2, 2, 2], tokenizer)
    assert scored.is_correct.tolist() == [True, False, False, False] + [False, True, True, True]
    assert scored.reasoning_tokens.tolist() == [1] * 4 + [3] * 4
    assert scored.reasoning_words.tolist() == [0] * 4 + [2] * 4
    table = evaluation.condition_table(scored).set_index("condition")
    assert table.loc["up", "is_correct"] == 0.75
    assert table.loc["up", "reasoning_tokens_diff"] == 2
    assert table.loc["up", "is_correct_diff"] == 0.5
    assert table.loc["up", "is_correct_diff_low"] <= 0.5 <= table.loc["up", "is_correct_diff_high"]
    assert table.loc["unsteered", "reasoning_words_diff"] == 0
    with pytest.raises(ValueError, match="reference='none'"):
        evaluation.condition_table(scored, reference="none")
    with pytest.raises(ValueError, match="paired"):
        evaluation.condition_table(scored[scored.index != 7])


def test_bootstrap_interval_covers_the_mean_and_rejects_empty_input():
    from reasonlens import evaluation
    mean, low, high = evaluation.bootstrap_interval([0, 1] * 50)
    assert mean == 0.5 and 0.38 < low < 0.5 < high < 0.62
    with pytest.raises(ValueError, match="empty"):
        evaluation.bootstrap_interval([])


def test_headline_reports_points_and_percent_of_the_reference_length():
    import pandas as pd

    from reasonlens import evaluation
    table = pd.DataFrame([
        {"condition": "unsteered", "n": 500, "is_correct": 0.4, "reasoning_tokens": 50.0,
         **{f"{m}_diff{s}": 0.0 for m in ("is_correct", "reasoning_tokens")
            for s in ("", "_low", "_high")}},
        {"condition": "up", "n": 500, "is_correct": 0.422, "reasoning_tokens": 60.0,
         "is_correct_diff": 0.022, "is_correct_diff_low": -0.01, "is_correct_diff_high": 0.05,
         "reasoning_tokens_diff": 10.0, "reasoning_tokens_diff_low": 5.0,
         "reasoning_tokens_diff_high": 15.0}])
    assert evaluation.headline(table, "up") == {"accuracy change (points)": "+2.2 [-1.0, +5.0]",
                                                "length change (%)": "+20.0 [+10.0, +30.0]"}
    numbers = evaluation.headline_numbers(table, "up")
    assert numbers["delta_accuracy_ci"] == [-0.01, 0.05] and numbers["n_problems"] == 500
    assert numbers["delta_length_pct"] == 20.0 and numbers["delta_length_pct_ci"] == [10.0, 30.0]
    assert numbers["accuracy"] == 0.422 and numbers["reference_accuracy"] == 0.4


def test_best_condition_takes_the_most_accurate_candidate_and_the_first_of_ties():
    import pandas as pd

    from reasonlens import evaluation
    table = pd.DataFrame({"condition": ["unsteered", "a", "b", "c"],
                          "is_correct": [0.9, 0.5, 0.7, 0.7]})
    assert evaluation.best_condition(table, ["a", "b", "c"]) == "b"  # unsteered is no candidate
    assert evaluation.best_condition(table, ["c", "b"]) == "c"
    with pytest.raises(ValueError, match="none of the candidates"):
        evaluation.best_condition(table, ["z"])


# --- independent oracles --------------------------------------------------------------------------
def percentile_bootstrap(values, n_boot, seed, level):
    """Efron's percentile bootstrap, written out plainly: ``n_boot`` resamples of the values with
    replacement (one row of uniform indices per resample, from ``default_rng(seed)``), and the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resample means."""
    values = [float(v) for v in values]
    n = len(values)
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = sorted(sum(values[i] for i in row) / n for row in rows)

    def quantile(q):  # linear interpolation between order statistics, as numpy's default
        h = (n_boot - 1) * q
        lo = int(np.floor(h))
        return means[lo] + (h - lo) * (means[min(lo + 1, n_boot - 1)] - means[lo])

    return sum(values) / n, quantile((1 - level) / 2), quantile((1 + level) / 2)


def wilson_by_quadratic(successes, n, z=1.96):
    """The Wilson interval as the two roots p of (p_hat - p)^2 = z^2 p (1 - p) / n."""
    p_hat = successes / n
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    root = np.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


# Irregular values, so that resample means rarely tie and every resample moves the percentiles.
SAMPLE = [3.1, 1.7, 4.4, 1.2, 5.9, 9.3, 2.6, 6.5]


def test_parse_answer_falls_back_to_the_trace_when_the_closed_trace_states_no_answer():
    assert evaluation.parse_answer("So the answer is 8.\n</think>\nI am not sure.") == 8
    assert evaluation.parse_answer("The answer is -3.") == -3


def test_parse_answer_accepts_the_last_number_only_when_asked():
    free_form = "93 - 9 = 84, then 75, 66 and finally 57.\nSo we end at 57"
    assert evaluation.parse_answer(free_form) is None
    assert evaluation.parse_answer(free_form, is_last_number_accepted=True) == 57
    # "answer is N" still wins, and a closed trace's numbers are not the answer
    assert evaluation.parse_answer("The answer is 3, not 4.", is_last_number_accepted=True) == 3
    assert evaluation.parse_answer("5 + 1 = 6\n</think>\nIt is -12.",
                                   is_last_number_accepted=True) == -12
    assert evaluation.parse_answer("5 + 1 = 6\n</think>\nNo idea.",
                                   is_last_number_accepted=True) is None


@pytest.mark.parametrize("successes,n", [(30, 100), (1, 2), (0, 50), (50, 50)])
def test_wilson_interval_solves_the_score_equation(successes, n):
    assert evaluation.wilson_interval(successes, n) == pytest.approx(
        wilson_by_quadratic(successes, n), abs=1e-12)
    assert evaluation.wilson_interval(30, 100) == pytest.approx((0.218948, 0.395850), abs=1e-6)


def test_accuracy_table_has_hand_computed_rows_with_and_without_groups():
    frame = pd.DataFrame({"family": ["a", "a", "b"], "is_correct": [True, False, True]})
    table = evaluation.accuracy_table({"m": frame})
    assert list(table.columns) == ["model", "n", "accuracy", "ci_low", "ci_high"]
    assert table.iloc[0][["model", "n"]].tolist() == ["m", 3]
    assert table.accuracy.iloc[0] == pytest.approx(2 / 3)
    assert (table.ci_low.iloc[0], table.ci_high.iloc[0]) == pytest.approx(wilson_by_quadratic(2, 3))
    grouped = evaluation.accuracy_table({"m": frame, "other": frame.head(1)}, by="family")
    assert list(grouped.columns) == ["model", "family", "n", "accuracy", "ci_low", "ci_high"]
    assert grouped[["model", "family", "n"]].values.tolist() == [["m", "a", 2], ["m", "b", 1],
                                                                 ["other", "a", 1]]
    assert grouped.accuracy.tolist() == [0.5, 1.0, 1.0]
    assert grouped.ci_low.iloc[0] == pytest.approx(0.0945287, abs=1e-6)  # Wilson 1/2 by hand


@pytest.mark.parametrize("kwargs", [{}, {"n_boot": 300, "seed": 7, "level": 0.8}])
def test_bootstrap_interval_matches_a_plain_percentile_bootstrap(kwargs):
    expected = percentile_bootstrap(SAMPLE, **{"n_boot": 5000, "seed": 0, "level": 0.95, **kwargs})
    assert evaluation.bootstrap_interval(SAMPLE, **kwargs) == pytest.approx(expected, rel=1e-9)
    # paired: the same bootstrap of the differences, item by item
    b = [1.05, 1.3, 2.2, 0.4, 4.1, 3.35, 2.0, 1.15]
    expected = percentile_bootstrap([x - y for x, y in zip(SAMPLE, b)],
                                    **{"n_boot": 5000, "seed": 0, "level": 0.95, **kwargs})
    assert evaluation.paired_bootstrap_difference(SAMPLE, b, **kwargs) == pytest.approx(
        expected, rel=1e-9)


def test_bootstrap_interval_has_the_properties_of_a_confidence_interval():
    # constant data: no spread, a degenerate interval at the value
    assert evaluation.bootstrap_interval([2.5] * 7) == (2.5, 2.5, 2.5)
    assert evaluation.paired_bootstrap_difference([3.0], [1.0]) == (2.0, 2.0, 2.0)  # one pair
    # 0/1 data with p = 1/2: the 95% interval is close to mean +- 1.96 sqrt(p (1 - p) / n)
    widths = {}
    for n in (100, 1600):
        mean, low, high = evaluation.bootstrap_interval([0, 1] * (n // 2))
        assert low < mean == 0.5 < high
        widths[n] = high - low
        assert widths[n] == pytest.approx(2 * 1.96 * 0.5 / np.sqrt(n), rel=0.1)
    assert widths[1600] == pytest.approx(widths[100] / 4, rel=0.15)  # shrinks as 1 / sqrt(n)
    with pytest.raises(ValueError, match="non-empty"):
        evaluation.paired_bootstrap_difference([], [])


def test_condition_table_keeps_condition_order_and_uses_its_seed():
    frame = pd.DataFrame({"condition": ["unsteered"] * 5 + ["down"] * 5,
                          "prompt_idx": [4, 3, 2, 1, 0] * 2,
                          "is_correct": [True, True, False, True, False] + [False] * 4 + [True],
                          "reasoning_tokens": [10, 20, 30, 40, 50, 5, 25, 30, 0, 40],
                          "score": SAMPLE[:5] + SAMPLE[3:]})
    table = evaluation.condition_table(frame, metrics=("is_correct", "reasoning_tokens", "score"),
                                       n_boot=400, seed=11)
    assert table.condition.tolist() == ["unsteered", "down"] and table.n.tolist() == [5, 5]
    down = table.set_index("condition").loc["down"]
    # by prompt_idx 0..4: unsteered tokens 50, 40, 30, 20, 10; down 40, 0, 30, 25, 5
    tokens, reference = [40, 0, 30, 25, 5], [50, 40, 30, 20, 10]
    assert (down.reasoning_tokens, down.reasoning_tokens_low, down.reasoning_tokens_high) == \
        pytest.approx(percentile_bootstrap(tokens, 400, 11, 0.95))
    assert (down.reasoning_tokens_diff, down.reasoning_tokens_diff_low,
            down.reasoning_tokens_diff_high) == pytest.approx(
        percentile_bootstrap([t - r for t, r in zip(tokens, reference)], 400, 11, 0.95))
    correct, reference = [1, 0, 0, 0, 0], [0, 1, 0, 1, 1]
    assert (down.is_correct_diff, down.is_correct_diff_low, down.is_correct_diff_high) == \
        pytest.approx(percentile_bootstrap([c - r for c, r in zip(correct, reference)],
                                           400, 11, 0.95))
    # a continuous score, whose resample means do not tie: any other seed would show
    score, reference = SAMPLE[7:2:-1], SAMPLE[4::-1]  # by prompt_idx
    for kwargs, (n_boot, seed) in (({"n_boot": 400, "seed": 11}, (400, 11)), ({}, (5000, 0))):
        down = evaluation.condition_table(frame, metrics=("score",), **kwargs).iloc[1]
        assert (down.score, down.score_low, down.score_high) == pytest.approx(
            percentile_bootstrap(score, n_boot, seed, 0.95), rel=1e-9)
        assert (down.score_diff, down.score_diff_low, down.score_diff_high) == pytest.approx(
            percentile_bootstrap([s - r for s, r in zip(score, reference)], n_boot, seed, 0.95),
            rel=1e-9)


# --- a model that knows two answers by heart --------------------------------------------------------
PARROT_QUESTIONS = ("Add 3 to 4.", "What is 5 times 9?")
PARROT_REPLIES = ("3 + 4 = 7.</think>The answer is 7.", "5 x 9 = 45.</think>The answer is 45.")


@pytest.fixture(scope="module")
def parrot(tokenizer):
    """A one-layer toy LM taught, in 40 Adam steps (about a second), to continue each reasoning
    prompt of PARROT_QUESTIONS with its reply; its greedy choices win by several logits."""
    from reasonlens import models
    from reasonlens.world import prompt

    texts = [prompt(q, reasoning=True) + r + K.EOS for q, r in zip(PARROT_QUESTIONS, PARROT_REPLIES)]
    batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.build_toy_model(helpers.build_toy_model_config(n_layers=1), tokenizer)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_evaluate_answers_scores_what_the_model_says(parrot, tokenizer):
    problems = pd.DataFrame({"problem_id": ["p7", "p45"], "family": ["add", "mul"],
                             "question": list(PARROT_QUESTIONS), "answer": [7, 44]})
    results = evaluation.evaluate_answers(parrot, tokenizer, problems, reasoning=True,
                                          max_new_tokens=24, batch_size=1)
    assert list(results.columns) == ["problem_id", "family", "completion", "predicted",
                                     "is_correct", "reasoning_tokens"]
    assert results.completion.tolist() == list(PARROT_REPLIES)
    assert results.family.tolist() == ["add", "mul"]
    assert results.predicted.tolist() == [7, 45] and str(results.predicted.dtype) == "Int64"
    assert results.is_correct.tolist() == [True, False]  # 45 is not the recorded answer 44
    thinking = [len(tokenizer(r.split("</think>")[0], add_special_tokens=False)["input_ids"])
                for r in PARROT_REPLIES]
    assert results.reasoning_tokens.tolist() == thinking  # tokens before </think>, by hand
    # Asked without <think>, the model opens the trace itself: those tokens are not counted.
    direct = evaluation.evaluate_answers(parrot, tokenizer, problems.head(1), reasoning=False,
                                         max_new_tokens=24)
    assert direct.completion.tolist() == ["<think>\n" + PARROT_REPLIES[0]]
    assert direct.is_correct.tolist() == [True] and direct.reasoning_tokens.tolist() == [0]
    # Cut short: no answer (a missing value, still Int64), and the unclosed trace counts whole.
    cut = evaluation.evaluate_answers(parrot, tokenizer, problems.head(1), reasoning=True,
                                      max_new_tokens=3)
    assert cut.predicted.isna().tolist() == [True] and str(cut.predicted.dtype) == "Int64"
    assert cut.is_correct.tolist() == [False] and cut.reasoning_tokens.tolist() == [3]


def greedy_by_hand(model, tokenizer, text: str, n_new: int) -> list[int]:
    """Greedy decoding, one prompt, no padding, no cache: argmax of the last logits, until EOS."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def sampled_by_hand(model, tokenizer, text: str, n_new: int, temperature: float, seed: int):
    """Sampling from softmax(logits / temperature), one multinomial draw per token, seeded."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = []
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for _ in range(n_new):
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].float() / temperature, -1)
            nxt = int(torch.multinomial(probs, 1))
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_generate_decodes_as_a_plain_loop_does(toy_model, tokenizer, world):
    # prompts of different lengths in batches of 2: left padding must not change a completion
    prompts = [evaluation.prompt(q, reasoning=True) for q in world.problems.question.head(3)]
    prompts.append(K.BOS + K.USER)
    assert len({len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts}) > 1
    texts, ids = evaluation.generate(toy_model, tokenizer, prompts, max_new_tokens=7,
                                     batch_size=2, return_ids=True)
    assert ids == [greedy_by_hand(toy_model, tokenizer, p, 7) for p in prompts]
    assert texts == [tokenizer.decode(i, skip_special_tokens=False) for i in ids]
    assert evaluation.generate(toy_model, tokenizer, prompts, max_new_tokens=7, batch_size=3) == texts

    # sampling: the seed alone decides, and the caller's RNG is left as it was. The random toy's
    # next-token distributions are nearly flat, so T=1.5 samples as T=1 would; T=0.1 does not.
    for temperature in (0.1, 1.5):
        helpers.scramble_global_rngs(1)
        before = torch.get_rng_state()
        _, sampled = evaluation.generate(toy_model, tokenizer, prompts[:1], max_new_tokens=7,
                                         temperature=temperature, seed=4, return_ids=True)
        assert torch.equal(torch.get_rng_state(), before)
        assert sampled == [sampled_by_hand(toy_model, tokenizer, prompts[0], 7, temperature, 4)]
        helpers.scramble_global_rngs(2)
        assert evaluation.generate(toy_model, tokenizer, prompts[:1], max_new_tokens=7,
                                   temperature=temperature, seed=4, return_ids=True)[1] == sampled
    assert sampled_by_hand(toy_model, tokenizer, prompts[0], 7, 0.1, 4) != sampled_by_hand(
        toy_model, tokenizer, prompts[0], 7, 1.0, 4)


class BosTokenizer:
    """Characters as ids (their ord), BOS (id 1) first when ``add_special_tokens`` (the transformers
    default), a vocabulary of 200 ids in which "</think>" is the single token 150."""

    def __len__(self):
        return 200

    def get_vocab(self):
        return {"</think>": 150}

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]


def test_think_end_ids_by_id_by_vocabulary_and_by_encoding_without_bos():
    tokenizer = BosTokenizer()
    assert evaluation.think_end_ids(tokenizer, 0) == [0]
    assert evaluation.think_end_ids(tokenizer, "199") == [199]
    assert evaluation.think_end_ids(tokenizer, "</think>") == [150]
    assert evaluation.think_end_ids(tokenizer, "END") == [69, 78, 68]  # no BOS in the marker
    assert evaluation.reasoning_length([5, 69, 78, 68, 7], tokenizer, "END") == 1
    assert evaluation.reasoning_length([5, 69, 78], tokenizer, "END") == 3  # cut before it closed
    with pytest.raises(ValueError) as error:
        evaluation.think_end_ids(tokenizer, 200)
    assert str(error.value) == ("think_end_token=200 is not a token id of this tokenizer (0..199); "
                                "pass the id or the string, e.g. think_end_token='</think>'.")
    with pytest.raises(ValueError) as error:
        evaluation.think_end_ids(tokenizer, "")
    assert str(error.value) == ("think_end_token='' encodes to no tokens; pass the marker that "
                                "closes the reasoning, e.g. think_end_token='</think>'.")
