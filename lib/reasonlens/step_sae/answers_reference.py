"""Sampled solutions read as the reference's probe-guided voting reads them.

The authors' voting experiment (Miaow-Lab/SSAE, commit 911d4d3, ``experiment/probing_exp.py``,
called *R* below; our audit: ``shared/reference/ssae_fidelity.md``, section 5) reads a sampled
solution in three ways, each reproduced here:

- **its answer**: the last number in the text (``last_number``; R's
  ``extract_answer_from_response``, probing_exp.py:205-212, and ``gsm8k_acc_judge``, 186-202);
- **whether an answer is right**: both numbers as floats, less than ``1e-3`` apart
  (``numbers_match``; probing_exp.py:197, 297, 368), the ground truth being the last number of
  the record's answer text (294, 365);
- **its steps**: R's ``answer_split`` (probing_exp.py:311-318, the same rule as dataloader.py:24-31,
  hence ``readers.split_gsm8k_answer``), each piece with the context ``question + " " +
  "".join(earlier pieces)`` (probing_exp.py:342) (``solution_step_table``), tokenized as R
  tokenizes them (``solution_step_examples``), ready for ``inference.encode_steps``.

Quirks of R, reproduced because they decide which answer wins:

- The sign belongs to the decimal alternative of R's pattern ``[-+]?\\d*\\.\\d+|\\d+`` only:
  ``"-5"`` reads as ``"5"`` while ``"-2.5"`` reads as ``"-2.5"``; the ground truth loses its sign
  the same way, so ``-5`` against ``5`` counts as right.
- A thousands separator splits a number: ``"1,000"`` reads as ``"000"`` (0.0).
- The number is the last one anywhere, so text the decoder writes after ``#### N`` (a new
  question, say) supplies the answer, and it also adds steps to the solution.
- Blank pieces are steps here (R's voting does not skip them, unlike its data loader,
  dataloader.py:15) and count in the mean of a solution's weight.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from reasonlens.step_sae.data import StepExamples
from reasonlens.step_sae.readers import apply_token_limits, split_gsm8k_answer

# probing_exp.py:190-191, 209: the sign is part of the first (decimal) alternative only
NUMBER_PATTERN = re.compile(r"[-+]?\d*\.\d+|\d+")
TOLERANCE = 1e-3  # probing_exp.py:197, 297, 368 (strictly less than)
STEP_TABLE_COLUMNS = ("solution_idx", "problem_id", "step_idx", "context", "step")


def last_number(text: str) -> str | None:
    """The last number in ``text`` as R reads it (its exact string), or None when there is none.

    R: ``extract_answer_from_response`` (probing_exp.py:205-212). See the module docstring for
    what the pattern does with signs, commas and trailing text.

    Args:
        text: a sampled solution, or a record's answer text (the ground truth).

    Returns:
        The matched text, e.g. ``"18"``, ``"-2.5"``, ``".5"``; None if the text has no digit.
    """
    numbers = NUMBER_PATTERN.findall(text)
    return numbers[-1] if numbers else None


def numbers_match(predicted: str | None, expected: str | None, tolerance: float = TOLERANCE
                  ) -> bool:
    """Whether two numbers read by ``last_number`` are equal as R judges it.

    R: ``abs(float(a) - float(b)) < 1e-3`` (probing_exp.py:197, 297, 368); a missing number on
    either side is wrong (192-193, 295, 366), and so is a comparison that is not a number (an
    overflow to infinity on both sides gives NaN, which is not below the tolerance).

    Args:
        predicted: the solution's (or the vote's) answer string, or None.
        expected: the ground truth's answer string, or None.
        tolerance: the largest difference that is still wrong (R: 1e-3).

    Returns:
        True when both are numbers less than ``tolerance`` apart.
    """
    if predicted is None or expected is None:
        return False
    if isinstance(predicted, float) and math.isnan(predicted):  # pandas' missing value
        return False
    try:
        return bool(abs(float(predicted) - float(expected)) < tolerance)
    except (TypeError, ValueError):
        return False


def reference_answer(answer) -> str | None:
    """The ground truth as R reads it: the last number of the record's answer text (or value).

    R reads ``extract_answer_from_response(answer)`` of the full GSM8K answer (probing_exp.py:294,
    365), which ends in ``#### N``; an integer answer (the synthetic world's) reads as its digits.
    """
    return last_number(str(answer))


def solution_steps(question: str, solution: str) -> tuple[list[str], list[str]]:
    """R's steps of one sampled solution and the context of each.

    Steps are the pieces of ``readers.split_gsm8k_answer`` (R's ``answer_split``,
    probing_exp.py:311-318), every one of them: blank pieces and text after the answer included
    (probing_exp.py:341-343 loops over all pieces). The context of piece ``i`` is ``question + " "
    + "".join(pieces[:i])`` (probing_exp.py:342): the earlier pieces with no separator between
    them (``split_gsm8k_answer`` drops the newlines, except the one it puts back between the last
    two pieces).

    Args:
        question: the problem's question text (R: the record's ``question``).
        solution: the sampled solution text.

    Returns:
        ``(steps, contexts)``, two lists of the same length (at least one).
    """
    steps = split_gsm8k_answer(solution)
    contexts = [question + " " + "".join(steps[:i]) for i in range(len(steps))]
    return steps, contexts


def solution_step_table(solutions: pd.DataFrame) -> pd.DataFrame:
    """One row per R step of every sampled solution that has an answer.

    R scores only solutions with an answer (probing_exp.py:336-338: it skips the others before
    splitting), so those get no steps here and weigh 0 in ``voting.solution_weights`` (they
    cast no vote anyway).

    Args:
        solutions: ``voting.sample_solutions`` output (question, completion, predicted).

    Returns:
        The step table: solution_idx (row position in ``solutions``), problem_id, step_idx,
        context, step; steps unstripped and possibly empty.
    """
    rows = []
    frame = solutions.reset_index(drop=True)
    for solution_idx, row in frame.iterrows():
        if pd.isna(row["predicted"]):
            continue
        steps, contexts = solution_steps(row["question"], row["completion"])
        rows.extend(dict(solution_idx=solution_idx, problem_id=row["problem_id"], step_idx=i,
                         context=context, step=step)
                    for i, (step, context) in enumerate(zip(steps, contexts)))
    return pd.DataFrame(rows, columns=list(STEP_TABLE_COLUMNS))


def solution_step_examples(table: pd.DataFrame, tokenizer) -> StepExamples:
    """Token ids of R's steps and contexts, for ``inference.encode_steps``.

    R encodes each with ``tokenizer.encode(text, max_length=256, truncation=True)``
    (probing_exp.py:344-345): the first 256 tokens, as its GSM8K loader does (dataloader.py:56-57,
    ``readers.TOKEN_LIMITS["gsm8k"]``), and reads ``context <sep> step <eos>`` (346-348), which is
    ``data.collate``'s layout. R's calls add the tokenizer's default special tokens, none for
    Qwen2.5; we add none, as the step SAE's training data (``readers.apply_token_limits``). An
    empty step stays empty (the encoder reads ``context <sep> <eos>``), where
    ``data.tokenize_steps`` refuses one.

    Args:
        table: ``solution_step_table`` output.
        tokenizer: the step SAE's tokenizer.

    Returns:
        The examples, ``examples.table`` being ``table`` (its ``solution_idx`` says whose step).
    """
    if len(table) == 0:
        return StepExamples(table.reset_index(drop=True), [], [])
    encode = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    context_ids, step_ids = apply_token_limits(encode(table["context"]), encode(table["step"]),
                                               "gsm8k")
    return StepExamples(table.reset_index(drop=True), context_ids, step_ids)

