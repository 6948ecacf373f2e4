"""Answer extraction and checking on hand-made completions; expected values written by hand."""


import pytest

from reasonlens import answers, evaluation
from reasonlens.tasks import utils as task_utils


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),                       # nested braces
    ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),    # escaped braces
    ("first \\boxed{3}, wait, \\boxed{4}. Answer: 5", "4"),                   # last box wins
    ("\\fbox{7} then \\boxed{8}", "8"),
    ("\\boxed{8} then \\fbox{\\sqrt{2}}", "\\sqrt{2}"),
    ("$\\boxed 12$ and more", "12"),                                          # space form
    ("\\boxed{12", None),                                                     # cut off inside
    ("no box at all", None),
])
def test_last_boxed(text, expected):
    assert answers.last_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Wait. \\boxed{2} Answer: 3", "2"),                 # a box beats Answer:
    # the reference's greedy pattern across lines: everything after the first "Answer:"
    ("Answer: 3\nAnswer: 4 apples", "3\nAnswer: 4 apples"),
    ("answer :  9\nsince", "9\nsince"),                  # case, spaces, across lines (DOTALL)
    ("\\boxed{12 and Answer: 5", "5"),                   # an unclosed box is no box
    ("nothing here", None),
])
def test_extract_answer(text, expected):
    assert answers.extract_answer(text) == expected


@pytest.mark.parametrize("text, gold, exact, verified", [
    ("\\boxed{023}", "23", True, True),                         # integers as integers
    ("\\boxed{23}", "023", True, True),
    ("\\boxed{0.5}", "\\frac{1}{2}", False, True),              # \frac: equal, not the same
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12", False, True),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True, True),
    ("\\boxed{5\\text{ cm}}", "5", False, True),                # units
    ("\\boxed{5}", "5\\text{ cm}", False, True),
    ("\\boxed{3} no, \\boxed{4}", "3", False, False),           # several boxes: the last one
    ("\\boxed{3} no, \\boxed{4}", "4", True, True),
    ("I give up", "0", True, False),                            # the reference's "0" default
    ("I give up", "7", False, False),
    ("\\boxed{x^2+2x}", "2x+x^2", False, True),
    ("\\boxed{3}", "4", False, False),
])
def test_exact_match_and_math_verify(text, gold, exact, verified):
    assert answers.exact_match(text, gold) is exact
    assert answers.math_equal(answers.extract_answer(text), gold) is verified


@pytest.mark.parametrize("text, reference, lenient", [
    ("... Answer: B", "B", "B"),
    ("... Answer: b", "B", "B"),
    ("\\boxed{C}", "C", "C"),
    ("\\boxed{\\text{D}}", None, "D"),
    ("Answer: (A)", None, "A"),
    ("Answer: B) 7, because", None, "B"),
    ("Answer: **C**", None, "C"),
    ("Answer: none of these", None, None),
    ("Answer: Because", None, None),    # a word that starts with a letter A-D is no letter
    ("D", "D", None),                   # a bare completion: the reference takes it whole
    ("I pick A", None, None),
])
def test_gpqa_letters(text, reference, lenient):
    assert answers.reference_letter(text) == reference
    assert answers.read_letter(text) == lenient


def test_process_results_scores_each_task_and_says_where_the_checks_disagree():
    math_scores = task_utils.process_math({"answer": "\\frac{1}{2}"}, ["so \\boxed{0.5}"])
    assert math_scores["exact_match"] == 0.0 and math_scores["math_verify"] == 1.0
    assert math_scores["accuracy"] == 1.0 and math_scores["disagreement"] == 1.0
    # a plain string has no recorded token counts: lengths are NaN, not zero
    assert all(math_scores[k] != math_scores[k] for k in ("reasoning_length", "n_tokens"))
    from reasonlens.harness import Generation

    scored = task_utils.process_math({"answer": "7"},
                                     [Generation("\\boxed{7}", 20, 15, True)])
    assert (scored["reasoning_length"], scored["unclosed_think"], scored["n_tokens"]) == (
        15.0, 0.0, 20.0)
    assert scored["disagreement"] == 0.0 and "llm_match" not in scored
    gpqa = task_utils.process_gpqa_results({"answer": "B"}, ["Answer: (B)"])
    assert (gpqa["exact_match"], gpqa["letter_match"], gpqa["disagreement"]) == (0.0, 1.0, 1.0)


def test_generation_keeps_its_counts_through_pickle():
    import pickle

    from reasonlens.harness import Generation

    again = pickle.loads(pickle.dumps(Generation("abc", 9, 4, True)))
    assert again == "abc" and (again.n_tokens, again.n_reasoning_tokens, again.is_think_closed) \
        == (9, 4, True)


def test_the_llm_verifier_is_off_by_default_and_asks_an_openai_compatible_endpoint(
        monkeypatch, chat_endpoint):
    url, judge = chat_endpoint
    judge.default = " 1\n"
    monkeypatch.delenv(answers.ENV_URL, raising=False)
    assert answers.LLMVerifier.from_env() is None
    monkeypatch.setenv(answers.ENV_URL, url)
    monkeypatch.setenv(answers.ENV_MODEL, "judge-model")
    monkeypatch.setenv(answers.ENV_KEY, "k123")
    scored = task_utils.process_math({"answer": "\\text{Navin}"}, ["\\boxed{navin}"])
    assert scored["llm_match"] == 1.0 and scored["exact_match"] == 0.0
    path, auth, body = judge.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer k123"
    assert body["model"] == "judge-model" and body["temperature"] == 0.5
    assert "Options: ['\\text{Navin}']\n    Attempt: navin" in body["messages"][0]["content"]
    n_asked = len(judge.seen)
    # integers are compared directly, without asking
    assert answers.LLMVerifier.from_env().math_match("023", "23") is True
    assert len(judge.seen) == n_asked
    with pytest.raises(ValueError, match="REASONLENS_VERIFIER_MODEL"):
        answers.LLMVerifier("http://x", "")


class _TwoTokenClose:
    """A tokenizer stand-in whose vocabulary spells "</think>" as two tokens."""

    def __len__(self):
        return 100

    def get_vocab(self):
        return {"</": 7, "think>": 8}

    def encode(self, text, add_special_tokens=False):
        return [7, 8] if text == "</think>" else []


def test_reasoning_length_finds_a_string_think_end_token_also_when_it_is_special(tokenizer):
    close = tokenizer.convert_tokens_to_ids("</think>")
    assert "</think>" in tokenizer.all_special_tokens  # the toy's </think> is special
    ids = [5, 6, close, 9, close]
    # tokens before the first </think>, by id and by string
    assert evaluation.reasoning_length(ids, tokenizer, "</think>") == 2
    assert evaluation.reasoning_length(ids, tokenizer, close) == 2
    assert evaluation.reasoning_length(ids, tokenizer, str(close)) == 2
    assert evaluation.reasoning_length([5, 6], tokenizer) == 2  # never closed: all of them
    # a marker of several tokens is found as a sequence
    assert evaluation.reasoning_length([1, 7, 2, 7, 8, 3], _TwoTokenClose(), "</think>") == 3
    with pytest.raises(ValueError, match="think_end_token=999999 is not a token id"):
        evaluation.reasoning_length(ids, tokenizer, 999999)


def test_the_steered_model_takes_a_special_think_end_token_as_a_string(saved_toy_model):
    from reasonlens.harness import SteeredHFLM

    lm = SteeredHFLM(pretrained=str(saved_toy_model), device="cpu", think_end_token="</think>")
    assert lm.think_end_token == lm.tokenizer.convert_tokens_to_ids("</think>")
    assert lm.reasoning_end == lm.think_end_token
