import numpy as np
import pandas as pd
import pytest

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
        {"condition": "unsteered", "reasoning_tokens": 50.0, **{f"{m}_diff{s}": 0.0 for m in (
            "is_correct", "reasoning_tokens") for s in ("", "_low", "_high")}},
        {"condition": "up", "reasoning_tokens": 60.0, "is_correct_diff": 0.022,
         "is_correct_diff_low": -0.01, "is_correct_diff_high": 0.05, "reasoning_tokens_diff": 10.0,
         "reasoning_tokens_diff_low": 5.0, "reasoning_tokens_diff_high": 15.0}])
    assert evaluation.headline(table, "up") == {"accuracy change (points)": "+2.2 [-1.0, +5.0]",
                                                "length change (%)": "+20.0 [+10.0, +30.0]"}
