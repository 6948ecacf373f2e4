"""Tests for voting under the reference's rules: reasonlens.step_sae.voting with
``VotingConfig.reference()`` and reasonlens.step_sae.answers_reference (R: probing_exp.py)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

import helpers
from reasonlens import evaluation
from reasonlens.step_sae import answers_reference as ref
from reasonlens.step_sae import voting
from reasonlens.step_sae.inference import encode_steps


# --- config ----------------------------------------------------------------------------------
def test_reference_config_has_the_values_of_experiment_yaml_and_ours_stay():
    cfg = voting.VotingConfig.reference()
    assert (cfg.n_samples, cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty,
            cfg.max_new_tokens, cfg.tau, cfg.rules) == (16, 0.7, 0.9, 200, 1.1, 256, 0.8,
                                                         "reference")
    ours = voting.VotingConfig()
    assert (ours.n_samples, ours.temperature, ours.tau, ours.max_new_tokens, ours.top_p,
            ours.top_k, ours.repetition_penalty, ours.rules) == (8, 1.0, 1.0, 160, 1.0, 0, 1.0,
                                                                 "ours")
    assert voting.VotingConfig.from_dict(cfg.to_dict()) == cfg
    assert voting.VotingConfig.reference(n_samples=2).n_samples == 2
    # off settings pass nothing to generate; top-p and top-k only when sampling
    assert voting.generation_settings(ours, 1.0) == {}
    assert voting.generation_settings(cfg, 0.7) == {"repetition_penalty": 1.1, "top_k": 200,
                                                    "top_p": 0.9}
    assert voting.generation_settings(cfg, 0.0) == {"repetition_penalty": 1.1}


def test_reference_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^rules='R' is not valid; use one of \['ours', "
                                         r"'reference'\]"):
        voting.VotingConfig(rules="R")
    with pytest.raises(ValueError, match=r"^top_p=1.5 is outside \[0.0, 1.0\]"):
        voting.VotingConfig(top_p=1.5)
    with pytest.raises(ValueError, match=r"^top_k=-1 is outside \[0, inf\]"):
        voting.VotingConfig(top_k=-1)
    with pytest.raises(ValueError, match=r"^repetition_penalty=0.0 is outside .*R: 1.1"):
        voting.VotingConfig(repetition_penalty=0.0)
    with pytest.raises(ValueError, match=r"^rules='x' is not valid"):
        voting.answers_match([1], [1], rules="x")


# --- answers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, number", [
    ("She has 18 apples.\n#### 18", "18"),
    ("It costs $2.50 now, 3.75 later.", "3.75"),
    ("Half is .5 of it", ".5"),
    ("He pays $1,200 in total.", "200"),  # the comma splits the number
    ("1,000", "000"),
    ("The change is -5 degrees", "5"),  # an integer loses its sign
    ("The change is -2.5 degrees", "-2.5"),  # a decimal keeps it
    ("+.5", "+.5"),
    ("So 7.", "7"),
    ("1e5", "5"),
    ("The answer is 7.\n#### 7\nQuestion: Tom has 4 cats", "4"),  # text after the answer
    ("no number here", None),
    ("", None),
])
def test_last_number_reads_hand_strings_as_r(text, number):
    assert ref.last_number(text) == number


def test_numbers_match_within_r_tolerance():
    assert ref.numbers_match("18", "18.0") and ref.numbers_match("18.00", "18")
    assert ref.numbers_match("1.0005", "1")  # 0.0005 < 1e-3
    assert not ref.numbers_match("1.002", "1")  # 0.002
    assert not ref.numbers_match("1.5", "1")
    assert ref.numbers_match("-2.5", "-2.5") and not ref.numbers_match("-2.5", "2.5")
    assert not ref.numbers_match(None, "3") and not ref.numbers_match("3", None)
    assert not ref.numbers_match(float("nan"), "3")
    assert not ref.numbers_match("9" * 400, "9" * 400)  # both overflow to inf: inf - inf is NaN
    # the ground truth is the last number of the answer text, or the number itself
    assert ref.reference_answer("A has 3.\n#### 1,000") == "000"
    assert ref.reference_answer(54) == "54" and ref.reference_answer(-5) == "5"
    predicted, correct = voting.read_answers(
        ["so -5", "It is 18.0", "nothing", "x 3"], ["#### 5", 18, "#### 2", "#### 1,003"],
        rules="reference")
    assert predicted.tolist() == ["5", "18.0", None, "3"]
    # "-5" reads as "5", right against 5; "1,003" reads as "003", i.e. 3: a wrong 3 counts right
    assert correct.tolist() == [True, True, False, True]


def test_answers_match_ours_is_exact_and_a_missing_answer_is_wrong():
    predicted = pd.array([5, None, 7], dtype="Int64")
    assert voting.answers_match(predicted, [5, 5, 8]).tolist() == [True, False, False]
    assert voting.answers_match(["5.0", None], ["#### 5", "#### 5"],
                                rules="reference").tolist() == [True, False]


# --- votes -----------------------------------------------------------------------------------
def string_solutions():
    # problem 0: "7", "18", "18", "7", None (tie 2-2, "7" seen first);
    # problem 1: "18.0", "18", "5" (three exact strings, one vote each: "18.0" first);
    # problem 2: no answer at all
    return pd.DataFrame({
        "problem_id": [0, 0, 0, 0, 0, 1, 1, 1, 2, 2],
        "sample_idx": [0, 1, 2, 3, 4, 0, 1, 2, 0, 1],
        "predicted": pd.Series(["7", "18", "18", "7", None, "18.0", "18", "5", None, None],
                               dtype=object)})


def test_majority_votes_exact_strings_and_ties_go_to_the_first_seen():
    voted = voting.vote(string_solutions())
    assert voted.index.tolist() == [0, 1, 2]
    assert voted.tolist() == ["7", "18.0", None] and voted.dtype == object
    # "18" and "18.0" are separate candidates (pooled, 18 would tie with 5 and win as first seen)
    late = pd.DataFrame({"problem_id": [0] * 4, "sample_idx": range(4),
                         "predicted": pd.Series(["18", "5", "18.0", "5"], dtype=object)})
    assert voting.vote(late).tolist() == ["5"]
    # weighted: each answer's summed weight; an exact tie again goes to the first seen
    weights = np.array([0.2, 0.3, 0.3, 0.2, 9.0, 0.1, 0.4, 0.4, 1, 1])
    assert voting.vote(string_solutions(), weights).tolist() == ["18", "18", None]
    tie = np.array([0.5, 0.25, 0.25, 0.0, 0.0, 0.1, 0.1, 0.1, 0, 0])
    assert voting.vote(string_solutions(), tie).tolist()[:2] == ["7", "18.0"]


def test_votes_are_judged_with_the_float_tolerance():
    answers = pd.Series(["So 7.\n#### 7", "He has 18 apples.\n#### 18", "#### 3", "#### 4"],
                        index=[0, 1, 2, 9])  # 9 was never sampled
    correct = voting.vote_is_correct(answers, string_solutions(), rules="reference")
    assert correct.dtype == np.bool_ and correct.tolist() == [True, True, False, False]


def test_voting_table_under_r_rules():
    problems = pd.DataFrame({"problem_id": [0, 1, 2],
                             "answer": ["#### 18", "#### 18", "#### 3"]})
    greedy = pd.DataFrame({"problem_id": [0, 1, 2], "is_correct": [True, False, False]})
    weights = np.array([0.2, 0.3, 0.3, 0.2, 9.0, 0.1, 0.4, 0.4, 1, 1])
    table, diff = voting.voting_table(problems, greedy, string_solutions(), weights, n_boot=100,
                                      rules="reference")
    # majority: "7" (wrong), "18.0" (right), None; weighted: "18" (right), "18" (right), None
    assert table.method.tolist() == ["greedy", "majority", "weighted"]
    assert table.accuracy.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert diff["difference"] == pytest.approx(1 / 3)
    lo, hi = evaluation.wilson_interval(2, 3)
    assert (table.ci_low.iloc[2], table.ci_high.iloc[2]) == pytest.approx((lo, hi))
    solutions = string_solutions().assign(is_correct=voting.answers_match(
        string_solutions().predicted, np.repeat(problems.answer, [5, 3, 2]), rules="reference"))
    assert solutions.is_correct.tolist() == [False, True, True, False, False, True, True, False,
                                             False, False]
    sweep = voting.tau_sweep(problems, solutions, 10, np.arange(10), weights / 9, [0.8],
                             rules="reference")
    assert sweep.accuracy.tolist() == pytest.approx([2 / 3])
    assert sweep.weight_auc.tolist() == pytest.approx([voting.weight_auc(solutions, weights)])


def test_vote_weight_with_tau_08_is_the_mean_of_p_to_the_tau():
    # solution 0: steps p = 0.9 and 0.5; solution 1 has no answer (no steps); solution 2: p = 1
    weights = voting.solution_weights(3, np.array([0, 0, 2]), np.array([0.9, 0.5, 1.0]),
                                      tau=voting.VotingConfig.reference().tau)
    # 0.9^0.8 = exp(0.8 ln 0.9) = 0.919166; 0.5^0.8 = 2^-0.8 = 0.574349
    assert weights.tolist() == pytest.approx([(0.919166 + 0.574349) / 2, 0.0, 1.0], abs=1e-6)
    assert weights[0] == pytest.approx((0.9 ** 0.8 + 0.5 ** 0.8) / 2)


# --- steps -----------------------------------------------------------------------------------
SOLUTION = "A is 3.\n\nB is 4.\n\n\nSo 7.\n#### 7\nNext question: 2"


def test_solution_steps_keep_blank_pieces_and_text_after_the_answer():
    steps, contexts = ref.solution_steps("Q?", SOLUTION)
    # "\n\n" -> "\n" once (so "\n\n\n" leaves a blank piece); the last two pieces are rejoined
    assert steps == ["A is 3.", "B is 4.", "", "So 7.", "#### 7\nNext question: 2"]
    assert contexts == ["Q? ", "Q? A is 3.", "Q? A is 3.B is 4.", "Q? A is 3.B is 4.",
                        "Q? A is 3.B is 4.So 7."]
    # one line: split on ". ", nothing rejoined
    assert ref.solution_steps("Q?", "A is 3. B is 4. So 7")[0] == ["A is 3", "B is 4", "So 7"]
    assert ref.solution_steps("Q?", "") == ([""], ["Q? "])


def test_solution_step_table_covers_solutions_with_an_answer_only():
    solutions = pd.DataFrame({"problem_id": [4, 4, 6], "question": ["Q?", "Q?", "R?"],
                              "completion": [SOLUTION, "no idea", "x is 1\ny is 2"],
                              "predicted": ["2", None, "2"]}, index=[10, 11, 12])
    table = ref.solution_step_table(solutions)
    assert list(table.columns) == ["solution_idx", "problem_id", "step_idx", "context", "step"]
    assert table.solution_idx.tolist() == [0] * 5 + [2]  # row positions; 1 has no answer
    assert table.problem_id.tolist() == [4] * 5 + [6]
    assert table.step_idx.tolist() == [0, 1, 2, 3, 4, 0]
    assert table.step.tolist()[:5] == ref.solution_steps("Q?", SOLUTION)[0]
    assert table.context.tolist()[:5] == ref.solution_steps("Q?", SOLUTION)[1]
    # two lines: the last two pieces are rejoined into one step
    assert table.step.tolist()[5:] == ["x is 1\ny is 2"] and table.context.tolist()[5:] == ["R? "]
    assert ref.solution_step_table(solutions.iloc[1:2]).empty


def test_solution_step_examples_keep_the_first_256_tokens_and_empty_steps(tokenizer):
    long_context = "1 + " * 200
    table = pd.DataFrame({"solution_idx": [0, 0], "problem_id": [0, 0], "step_idx": [0, 1],
                          "context": ["What is 3 + 4? ", long_context], "step": ["", "7"]})
    examples = ref.solution_step_examples(table, tokenizer)
    encode = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert len(encode(long_context)) > 256
    assert examples.step_ids == [[], encode("7")]
    assert examples.context_ids == [encode("What is 3 + 4? "), encode(long_context)[:256]]
    assert examples.table.equals(table)
    assert len(ref.solution_step_examples(table.head(0), tokenizer)) == 0


# --- sampling from the step SAE's decoder ------------------------------------------------------
def spy_on_generate(monkeypatch, lm):
    calls = []
    original = lm.generate

    def generate(**kwargs):
        out = original(**kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(lm, "generate", generate)
    return calls


def test_reference_sampling_prompts_the_decoder_with_the_raw_question(monkeypatch, tiny_step_sae,
                                                                       world):
    sae, tok = tiny_step_sae
    problems = world.problems.head(3)
    cfg = voting.VotingConfig.reference(n_samples=2, max_new_tokens=4, batch_size=4, seed=5)
    calls = spy_on_generate(monkeypatch, sae.decoder)
    solutions = voting.sample_solutions(sae, tok, problems, cfg)
    # the frame of sample_solutions (the world's problems carry their family through)
    assert list(solutions.columns) == ["problem_id", "family", "sample_idx", "question",
                                       "answer", "completion", "predicted", "is_correct"]
    assert solutions.problem_id.tolist() == np.repeat(problems.problem_id, 2).tolist()
    assert solutions.sample_idx.tolist() == [0, 1] * 3
    assert solutions.answer.tolist() == np.repeat(problems.answer, 2).tolist()
    # HF's own processors get R's settings; two batches (4 + 2 prompts)
    assert len(calls) == 2
    for kwargs, _ in calls:
        assert (kwargs["do_sample"], kwargs["temperature"], kwargs["top_p"], kwargs["top_k"],
                kwargs["repetition_penalty"], kwargs["max_new_tokens"]) == (
            True, 0.7, 0.9, 200, 1.1, 4)
    # prompts: each question's own tokens, nothing added (left padding)
    questions = np.repeat(problems.question, 2).tolist()
    rows = [ids[mask.bool()].tolist() for kwargs, _ in calls
            for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"])]
    assert rows == tok(questions, add_special_tokens=False)["input_ids"]
    # completions: the new tokens up to <eos>, decoded without special tokens (R: line 182)
    new = []
    for kwargs, out in calls:
        for row in out[:, kwargs["input_ids"].shape[1]:].tolist():
            new.append(row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    assert solutions.completion.tolist() == tok.batch_decode(new, skip_special_tokens=True)
    assert solutions.predicted.tolist() == [ref.last_number(c) for c in solutions.completion]
    assert solutions.is_correct.tolist() == [
        ref.numbers_match(p, str(a)) for p, a in zip(solutions.predicted, solutions.answer)]


def test_reference_sampling_is_seeded(tiny_step_sae, world):
    sae, tok = tiny_step_sae
    problems = world.problems.head(2)
    cfg = voting.VotingConfig.reference(n_samples=2, max_new_tokens=5, batch_size=3)
    first = voting.sample_solutions(sae, tok, problems, cfg)
    helpers.scramble_global_rngs(11)
    again = voting.sample_solutions(sae, tok, problems, cfg)
    pd.testing.assert_frame_equal(first, again)
    other = voting.sample_solutions(sae, tok, problems, cfg.replace(seed=1))
    assert other.completion.tolist() != first.completion.tolist()


def test_reference_greedy_keeps_the_repetition_penalty(monkeypatch, tiny_step_sae, world):
    sae, tok = tiny_step_sae
    problems = world.problems.head(2)
    cfg = voting.VotingConfig.reference(max_new_tokens=3)
    calls = spy_on_generate(monkeypatch, sae.decoder)
    greedy = voting.greedy_solutions(sae, tok, problems, cfg)
    (kwargs, _), = calls
    assert kwargs["do_sample"] is False and kwargs["repetition_penalty"] == 1.1
    assert "top_p" not in kwargs and "top_k" not in kwargs
    assert greedy.sample_idx.tolist() == [0, 0]
    assert greedy.problem_id.tolist() == problems.problem_id.tolist()
    # deterministic: no seed needed
    assert voting.greedy_solutions(sae, tok, problems, cfg.replace(seed=9)).equals(greedy)


def test_our_sampling_passes_no_new_settings(monkeypatch, toy_model, tokenizer, world):
    calls = spy_on_generate(monkeypatch, toy_model)
    voting.sample_solutions(toy_model, tokenizer, world.problems.head(1),
                            voting.VotingConfig(n_samples=2, max_new_tokens=2, temperature=0.7))
    (kwargs, _), = calls
    assert kwargs["top_k"] == 0 and "top_p" not in kwargs and "repetition_penalty" not in kwargs


def test_sampling_a_step_sae_needs_its_own_tokenizer(tiny_step_sae, tokenizer, world):
    sae, _ = tiny_step_sae
    with pytest.raises(ValueError, match=r"^the tokenizer's sep token id is None but the step "
                                         r"SAE's is \d+: pass the step SAE's own tokenizer"):
        voting.sample_solutions(sae, tokenizer, world.problems.head(1),
                                voting.VotingConfig.reference(n_samples=1, max_new_tokens=1))


def test_reference_steps_encode_with_the_step_sae_and_weigh_by_the_probe(tiny_step_sae):
    sae, tok = tiny_step_sae
    solutions = pd.DataFrame({
        "problem_id": [0, 0, 0], "sample_idx": [0, 1, 2],
        "question": ["What is 3 + 4?"] * 3, "answer": ["#### 7"] * 3,
        "completion": ["3 + 4 = 7\n\n\nSo 7.\n#### 7", "no idea", "3 + 4 is 8\n#### 8"]})
    solutions["predicted"], solutions["is_correct"] = voting.read_answers(
        solutions.completion, solutions.answer, rules="reference")
    table = ref.solution_step_table(solutions)
    # solution 0: "3 + 4 = 7", "", "So 7.\n#### 7" (the blank piece stays); 2: one piece
    assert table.solution_idx.tolist() == [0, 0, 0, 2]
    assert table.step.tolist() == ["3 + 4 = 7", "", "So 7.\n#### 7", "3 + 4 is 8\n#### 8"]
    examples = ref.solution_step_examples(table, tok)
    latents = encode_steps(sae, examples)
    assert latents.shape == (4, 8) and np.isfinite(latents).all()
    p_correct = np.array([0.9, 0.5, 0.8, 0.2])  # any probe's p(correct) per step
    weights = voting.solution_weights(len(solutions), table.solution_idx.to_numpy(), p_correct,
                                      tau=0.8)
    assert weights.tolist() == pytest.approx(
        [(0.9 ** 0.8 + 0.5 ** 0.8 + 0.8 ** 0.8) / 3, 0.0, 0.2 ** 0.8])
    assert voting.vote(solutions, weights).tolist() == ["7"]
    assert voting.vote(solutions, np.array([0.1, 0.0, 0.2])).tolist() == ["8"]
