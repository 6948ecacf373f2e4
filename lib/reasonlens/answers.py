"""Reading and checking the final answer of a reasoning model's completion (notebook 07).

The reference's tasks (AIRI-Institute/SAE-Reasoning, ``evaluation/lm-evaluation-harness/lm_eval/
tasks/aime/utils.py``, ``hendrycks_math/openai_utils.py``, ``gpqa/openai/utils.py``) read the answer
as the content of the last ``\\boxed{}``, else what follows ``Answer:``, and score it by
exact string match, integers compared as integers; an LLM judge on OpenRouter, used only when the
``PROCESSOR`` variable is set, maps an answer that is not an exact match onto the gold one.

This module does the same without a judge by default and adds a rule-based check of mathematical
equivalence with ``math-verify`` (Hugging Face's checker, made for exactly this: ``\\frac12`` is
``0.5``, ``5\\text{ cm}`` is ``5``). For GPQA the answer is a letter. The reference's judge is
``LLMVerifier``, for any OpenAI-compatible endpoint, off unless its environment variables are set.
"""

from __future__ import annotations

import os
import re

from reasonlens.chat import ChatClient

# The reference's pattern (from openai/simple-evals, made greedy across lines by re.DOTALL):
# everything after the first "Answer:", to the end of the text; case-insensitive.
ANSWER_PATTERN = re.compile(r"(?i)Answer\s*:\s*(.*)", re.DOTALL)
LETTERS = ("A", "B", "C", "D")
# the reference's answer when a math completion has neither a box nor "Answer:"
MISSING_ANSWER = "0"

_BOX_OPENERS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``) in a text.

    Braces nest (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``). A box that never closes (a
    completion cut off inside it) counts as no box, as in the reference. The space form
    ``\\boxed 5`` runs to the next ``$`` or the end of the text.

    Args:
        text: a completion.

    Returns:
        The box's content, or None when there is no complete box.
    """
    starts = [i for opener in _BOX_OPENERS for i in _find_all(text, opener)]
    if not starts:
        return None
    start = max(starts)
    opener = next(o for o in _BOX_OPENERS if text.startswith(o, start))
    rest = text[start + len(opener):]
    if rest.startswith(" "):  # "\boxed 5$": up to the next dollar sign
        return rest[1:].split("$")[0]
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return rest[1:i]
    return None


def _find_all(text: str, needle: str) -> list[int]:
    out, i = [], text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


def extract_answer(completion: str) -> str | None:
    """The reference's answer: the last box's content, else the text after ``Answer:``.

    The reference takes the last match of its pattern, which, greedy across lines, matches once:
    from the first ``Answer:`` to the end of the text.

    Args:
        completion: the model's completion.

    Returns:
        The answer as written (not stripped: the reference compares it as is), or None.
    """
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    found = ANSWER_PATTERN.findall(completion)
    return found[-1] if found else None


def normalize_gold(answer) -> str:
    """The gold answer as the reference compares it: ``"023"`` is ``"23"``."""
    text = str(answer)
    return str(int(text)) if text.isdigit() else text


def exact_match(completion: str, gold) -> bool:
    """The reference's score of a math completion without its LLM judge.

    The extracted answer (``MISSING_ANSWER``, i.e. ``"0"``, when there is none, as in the
    reference) must equal the gold answer as a string; when both are digit strings they are
    compared as integers (``"023"`` equals ``"23"``).

    Args:
        completion: the model's completion.
        gold: the gold answer.

    Returns:
        Whether the answer is right by the reference's rule.
    """
    gold = normalize_gold(gold)
    answer = extract_answer(completion)
    answer = MISSING_ANSWER if answer is None else answer
    if answer.isdigit() and gold.isdigit():
        answer = str(int(answer))
    return answer == gold


def math_equal(answer: str | None, gold, timeout_s: int = 5) -> bool:
    """Whether an answer equals the gold one mathematically, by ``math-verify``.

    The answer is the reference's extraction (``extract_answer``), read by math-verify as the
    content of a box, so that both checks see the same answer and differ only in how they compare
    it. (math-verify on a whole completion would take the *set* of all boxed answers.)

    Args:
        answer: the extracted answer, or None (then False).
        gold: the gold answer, as LaTeX or plain text.
        timeout_s: math-verify's parsing and comparison time limit, per call.

    Returns:
        Whether math-verify finds the two equal.
    """
    if answer is None or answer.strip() == "":
        return False
    from math_verify import parse, verify

    gold_parsed = parse(f"${normalize_gold(gold)}$", parsing_timeout=timeout_s)
    answer_parsed = parse(f"\\boxed{{{answer.strip()}}}", parsing_timeout=timeout_s)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s))


def reference_letter(completion: str) -> str | None:
    """The reference's GPQA letter: box, else ``Answer:``, else the whole completion; then a
    lower-case single letter is upper-cased, and anything that is not one of A-D is None."""
    answer = extract_answer(completion)
    answer = completion if answer is None else answer
    if answer in ("a", "b", "c", "d"):
        answer = answer.upper()
    return answer if answer in LETTERS else None


_LETTER = re.compile(r"^[\s(\[*{]*(?:\\text(?:bf)?\{)?\s*\(?([A-Da-d])\s*(?:[)\]}.:*]|$|\s)")


def read_letter(completion: str) -> str | None:
    """A rule-based GPQA letter: the reference's extraction, read leniently.

    The extracted answer (box, else ``Answer:``) counts when it starts with a choice letter in a
    usual wrapping: ``B``, ``(B)``, ``B) 7``, ``**B**``, ``\\text{B}``, ``b.``. This is the
    rule-based counterpart of the reference's LLM extraction, which it uses for every answer
    that is not a bare letter.

    Args:
        completion: the model's completion.

    Returns:
        The upper-case letter, or None.
    """
    answer = extract_answer(completion)
    if answer is None:
        return None
    found = _LETTER.match(answer.strip())
    return found.group(1).upper() if found else None


# The reference's judge prompts (openai/simple-evals' equality/extraction templates as the
# reference's task utils word them); prompt wording is data.
MATH_JUDGE_TEMPLATE = r"""
Look at the following attempt by a student and extract the student's answer. If it is equivalent (ignoring trivial simplifications) to any of the provided options, return the index of that option starting from 1. Else, return -1.

Examples:

    Options: ['2x+4', '2x', '4x']
    Attempt: The answer is 3+2x.

-1
(the student's answer is not among the options)

    Options: ['72,000']
    Attempt: 72000 \text{ cents}.

1
(always give benefit of the doubt to units and ignore formatting which makes the 1st option match)

    Options: ['2/(-3)', '2/3']
    Attempt: -1 * 2/3

1
(the 1st option matches after trivial simplifications which are fine)

    Options: ['x=5']
    Attempt: 5

1

    Options: ['\dfrac{33}{100}']
    Attempt: 0.33

1

    Options: ['75^\circ']
    Attempt: ...various calculations and explanations...hence the answer is $\boxed{x in 75}$.

1

    Options: ['(1,-3)', '(1,-1)', '(1,0)', '(1,-2)']
    Attempt: -2, 1

4
(ignore whitespace and other formatting which makes the 4th option match)

    Options: ['-2,1']
    Attempt: 1, -2

1
(likely a problem where multiple solutions are possible thus ignore order)

    Options: ['11', '100', '50', '-5', '12', '10']
    Attempt: ...$\boxed{12^{\mathrm{th}}}$.

5

    Options: ['2516_8']
    Attempt: 2516

1
(give benefit of the doubt for different bases)

    Options: ['11\sqrt2']
    Attempt: 11\sqrt{2}

1

    Options: ['11,\! 111,\! 111,\! 100']
    Attempt: 11111111100

1

    Options: ['\text{Navin}']
    Attempt: ...it is navin.

1

---

YOUR TASK


Respond with only the index of the matching option starting from 1 or -1 if there is absolutely no reasonable match. Do not include a rationale.

    Options: %(expression1)s
    Attempt: %(expression2)s
""".strip()  # noqa: E501 (the prompt, word for word)

LETTER_JUDGE_TEMPLATE = r"""
Look at the following question and an attempt by a student and extract which choice among A, B, C, D the student picked. If the student did not pick any choice, respond with "-1".

Examples:

    Question: ...
    Attempt: Answer: **A**

A

    Question: A) Dinosaur B) Elephant C) Cat D) Dog
    Attempt: ...The answer is therefore Elephant...

B

    Question: ...
    Attempt: Answer: None of the above

-1

    Question: ...
    Attempt: ...Answer: D), because...

D

    Question: ...
(A) 7 
(B) 8 
(C) 4 
(D) 10
    Attempt: 4

C

    Question: ...
    Attempt: ...\\boxed{C}...

C

---

YOUR TASK


Respond only with the capitalized alphabetic letter (without quotes) or -1. Do not include a rationale.

    Question: %(expression1)s
    Attempt: %(expression2)s
""".strip()  # noqa: E501 (the prompt, word for word)

ENV_URL, ENV_MODEL, ENV_KEY = ("REASONLENS_VERIFIER_URL", "REASONLENS_VERIFIER_MODEL",
                               "REASONLENS_VERIFIER_KEY")


class LLMVerifier:
    """The reference's optional LLM judge, through any OpenAI-compatible chat endpoint.

    The reference asks ``meta-llama/llama-3.3-70b-instruct`` on OpenRouter (temperature 0.5, up to
    1024 tokens) whether an answer that is not an exact match is one of the options (math), or
    which letter an attempt picked (GPQA). It is off by default; ``from_env`` turns it on when
    ``REASONLENS_VERIFIER_URL`` (e.g. ``https://openrouter.ai/api/v1``) and
    ``REASONLENS_VERIFIER_MODEL`` are set; the key, if any, comes from
    ``REASONLENS_VERIFIER_KEY``. Nothing of it is ever read from a profile.

    Args:
        base_url: the endpoint's base URL (``/chat/completions`` is appended).
        model: the judge model's name at that endpoint.
        api_key: a bearer token, or None.
        temperature, max_tokens: the judge's sampling (the reference's values).
        max_retries: attempts before giving up (the reference retries forever).
        timeout_s: seconds per request.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 temperature: float = 0.5, max_tokens: int = 1024, max_retries: int = 5,
                 timeout_s: float = 120.0):
        if not base_url or not model:
            raise ValueError(f"base_url={base_url!r} and model={model!r} must both be set; set "
                             f"{ENV_URL} and {ENV_MODEL} to use the LLM verifier.")
        self.client = ChatClient(base_url, model, api_key, temperature=temperature,
                                 max_tokens=max_tokens, max_retries=max_retries,
                                 timeout_s=timeout_s, name="LLM verifier",
                                 hint=f"; unset {ENV_URL} to score without it.")
        self.url, self.model, self.api_key = self.client.url, model, api_key
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_retries, self.timeout_s = max_retries, timeout_s

    @classmethod
    def from_env(cls) -> LLMVerifier | None:
        """The verifier the environment asks for, or None when ``REASONLENS_VERIFIER_URL`` is
        unset (the default: no judge)."""
        url = os.environ.get(ENV_URL)
        if not url:
            return None
        return cls(url, os.environ.get(ENV_MODEL, ""), os.environ.get(ENV_KEY) or None)

    def ask(self, prompt: str) -> str:
        """The judge's reply to one user message (``chat.ChatClient.ask``).

        Raises:
            RuntimeError: no answer after ``max_retries`` attempts.
        """
        return self.client.ask(prompt)

    def math_match(self, answer: str | None, gold) -> bool:
        """The reference's judged math score: exact (integers as integers), else the judge says
        whether the answer is the gold option (options ``[gold]`` for one sample)."""
        gold = normalize_gold(gold)
        answer = MISSING_ANSWER if answer is None else answer
        if answer.isdigit() and gold.isdigit():
            return str(int(answer)) == gold
        if answer == gold:
            return True
        reply = self.ask(MATH_JUDGE_TEMPLATE % {"expression1": f"['{gold}']",
                                                "expression2": answer})
        return reply.strip() == "1"

    def letter(self, question: str, completion: str) -> str | None:
        """The reference's judged GPQA letter: a bare letter as is, else the judge's reading of
        the extracted answer (or of the whole completion when nothing was extracted)."""
        letter = reference_letter(completion)
        if letter is not None:
            return letter
        answer = extract_answer(completion)
        reply = self.ask(LETTER_JUDGE_TEMPLATE % {
            "expression1": question, "expression2": completion if answer is None else answer})
        return reply.strip() if reply.strip() in LETTERS else None
