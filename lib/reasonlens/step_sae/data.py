"""Step examples: ``context <sep> step <eos>`` from the synthetic world or GSM8K-style JSONL.

A *step table* has one row per reasoning step: ``problem_id``, ``step_idx``, ``context`` (the
prompt and the earlier steps, each ending in a newline), ``step`` (the line itself) and whatever
labels the source has (the synthetic world: ``kind``, ``is_correct``, ``n_tokens``,
``first_token``). ``tokenize_steps`` turns it into token ids, and ``collate`` pads a batch into the
single sequence both LMs of the step-level SAE read (Yang et al., 2026, Sec. 3):

    context_ids <sep> step_ids <eos> <pad>...

The paper's step data (GSM8K, Numina, OpenCodeInstruct) is JSONL with a ``question`` and an
``answer`` whose reasoning steps are separate lines (GSM8K ends with ``#### <final answer>``);
``read_jsonl_steps`` reads that format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from reasonlens import constants as K
from reasonlens.step_sae import readers
from reasonlens.world import ChatFormat
from reasonlens.world.families import get_family

SEP = "<sep>"
STEP_COLUMNS = ("problem_id", "step_idx", "context", "step")


def world_step_table(steps: pd.DataFrame, problems: pd.DataFrame,
                     splits: Sequence[str] = ("train",), fmt: ChatFormat | None = None
                     ) -> pd.DataFrame:
    """One row per step of the synthetic world's traces, with its context and labels.

    The context is exactly what precedes the step in a trace document: the reasoning prompt
    (``<bos><|user|>question<|assistant|><think>\\n`` in the toy's format) and the earlier lines.

    Args:
        steps: the world's steps table (notebook 01, ``world/steps.parquet``).
        problems: the world's problems table (``world/problems.parquet``).
        splits: which splits to keep.
        fmt: the format the world was written in (``world.chat_format(tokenizer)`` of notebook
            01's tokenizer; default the toy's).

    Returns:
        The step table: problem_id, step_idx, split, context, step, and the world's labels.

    Raises:
        ValueError: when no step is left in ``splits``.
    """
    chosen = steps[steps["split"].isin(splits)].sort_values(["problem_id", "step_idx"])
    if len(chosen) == 0:
        raise ValueError(f"no steps in splits={list(splits)}; the steps table has splits "
                         f"{sorted(steps['split'].unique())}.")
    questions = problems.set_index("problem_id")["question"]
    contexts = []
    for pid, group in chosen.groupby("problem_id", sort=False):
        head = (fmt or ChatFormat.toy()).prompt(questions[pid], reasoning=True)
        for text in group["text"]:
            contexts.append(head)
            head += text + "\n"
    table = chosen.rename(columns={"text": "step"}).reset_index(drop=True)
    table.insert(3, "context", contexts)
    return table


def solution_steps(answer: str) -> tuple[list[str], str | None]:
    """Split a GSM8K-style answer into its step lines and the final answer after ``####``."""
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    final = None
    if lines and lines[-1].startswith("####"):
        final = lines.pop()[4:].strip()
    return lines, final


def read_jsonl_steps(path: str | Path, question_key: str = "question",
                     answer_key: str = "answer") -> pd.DataFrame:
    """Read GSM8K-style JSONL (one problem per line, steps on separate lines of the answer).

    The context of each step is the question, a newline, and the earlier steps (each followed by
    a newline), as a model writes them. Records carry no correctness labels.

    Args:
        path: a ``.jsonl`` file.
        question_key, answer_key: field names (GSM8K: ``question`` and ``answer``).

    Returns:
        The step table: problem_id, step_idx, context, step, final_answer.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a record that is not a JSON object, lacks a field, has a non-string or empty
            field (``readers.read_records``), or has no step; the message names file and line.
    """
    rows = []
    fields = {question_key: readers.TEXT, answer_key: readers.TEXT}
    fix = ("Fix or delete that line, or set question_key/answer_key to the file's field names; "
           "each line is one {question, answer} object.")
    for pid, (line_no, record) in enumerate(readers.read_records(path, "gsm8k", fields, fix)):
        where = f"{path}:{line_no}"
        steps, final = solution_steps(record[answer_key])
        if not steps:
            raise ValueError(f"{where}: the {answer_key!r} field has no reasoning step (steps are "
                             "its non-empty lines before '#### <final answer>').")
        head = record[question_key].strip() + "\n"
        for idx, step in enumerate(steps):
            rows.append(dict(problem_id=pid, step_idx=idx, context=head, step=step,
                             final_answer=final))
            head += step + "\n"
    if not rows:
        raise ValueError(f"{path} holds no records.")
    return pd.DataFrame(rows)


def check_step_table(table: pd.DataFrame) -> None:
    """Raise ValueError unless ``table`` is a non-empty step table with string context/step."""
    missing = [c for c in STEP_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the step table lacks columns {missing} (it has {list(table.columns)}); "
                         "build it with world_step_table or read_jsonl_steps.")
    if len(table) == 0:
        raise ValueError("the step table is empty: no steps to encode. Check the split and the "
                         "step_n_* sizes.")


def add_sep_token(tokenizer) -> int:
    """Give ``tokenizer`` a ``<sep>`` token if it has no sep token; return the sep id.

    The caller resizes the LMs' embeddings (``StepSAE.build`` does).
    """
    if tokenizer.sep_token is None:
        tokenizer.add_special_tokens({"sep_token": SEP})
    return tokenizer.sep_token_id


@dataclasses.dataclass
class StepExamples:
    """Tokenized steps. ``context_ids[i]`` and ``step_ids[i]`` belong to ``table.iloc[i]``."""

    table: pd.DataFrame
    context_ids: list[list[int]]
    step_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.step_ids)

    def subset(self, index: Sequence[int]) -> StepExamples:
        index = list(index)
        return StepExamples(self.table.iloc[index].reset_index(drop=True),
                            [self.context_ids[i] for i in index], [self.step_ids[i] for i in index])


def tokenize_steps(table: pd.DataFrame, tokenizer, max_context_tokens: int,
                   max_step_tokens: int) -> StepExamples:
    """Token ids of each step and its context (no special tokens added; the texts spell them).

    Contexts keep their last ``max_context_tokens`` tokens; steps their first ``max_step_tokens``.

    Raises:
        ValueError: a malformed step table, or an empty step.
    """
    check_step_table(table)
    contexts = tokenizer(table["context"].tolist(), add_special_tokens=False)["input_ids"]
    steps = tokenizer(table["step"].tolist(), add_special_tokens=False)["input_ids"]
    empty = [i for i, s in enumerate(steps) if not s]
    if empty:
        raise ValueError(f"{len(empty)} step(s) tokenize to nothing (row {empty[0]}: "
                         f"{table['step'].iloc[empty[0]]!r}); drop empty steps from the table.")
    return StepExamples(table.reset_index(drop=True),
                        [c[-max_context_tokens:] if max_context_tokens else [] for c in contexts],
                        [s[:max_step_tokens] for s in steps])


@dataclasses.dataclass
class StepBatch:
    """A padded batch of ``context <sep> step <eos>`` sequences.

    Attributes:
        input_ids: ``[batch, pos]``, right-padded.
        attention_mask: ``[batch, pos]``, 1 on real tokens.
        step_mask: ``[batch, pos]``, 1 on the step tokens and the ``<eos>`` (the decoder's targets).
        sep_pos: ``[batch]``, position of ``<sep>`` (the last token of the context).
        last_pos: ``[batch]``, position of ``<eos>`` (the last real token).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    step_mask: torch.Tensor
    sep_pos: torch.Tensor
    last_pos: torch.Tensor


def collate(context_ids: Sequence[Sequence[int]], step_ids: Sequence[Sequence[int]], sep_id: int,
            eos_id: int, pad_id: int) -> StepBatch:
    """Pad ``context <sep> step <eos>`` sequences into one batch (see ``StepBatch``)."""
    rows = [list(c) + [sep_id] + list(s) + [eos_id] for c, s in zip(context_ids, step_ids)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    step_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, context) in enumerate(zip(rows, context_ids)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        step_mask[i, len(context) + 1: len(row)] = True
    sep_pos = torch.tensor([len(c) for c in context_ids])
    return StepBatch(input_ids, attention_mask, step_mask, sep_pos, attention_mask.sum(1) - 1)


def trace_step_table(problems: pd.DataFrame, completions: Sequence[str],
                     fmt: ChatFormat | None = None) -> pd.DataFrame:
    """Step table of generated reasoning traces (one completion per row of ``problems``).

    A completion continues the reasoning prompt; its steps are the non-empty lines before
    ``</think>``. The column ``solution_idx`` gives the completion each step came from; ``fmt``
    is the prompt's format (default the toy's). When ``problems`` has the synthetic world's
    ``family`` column, ``is_claim_correct`` (nullable boolean) says whether the model's own step
    states only true claims (``Family.check_claims``; NA for a step with no claim, e.g. a plan).
    """
    rows = []
    pairs = zip(problems["problem_id"], problems["question"], completions)
    for solution_idx, (pid, question, completion) in enumerate(pairs):
        head = (fmt or ChatFormat.toy()).prompt(question, reasoning=True)
        lines = [s for s in completion.split(K.THINK_CLOSE)[0].split("\n") if s.strip()]
        for idx, step in enumerate(lines):
            rows.append(dict(solution_idx=solution_idx, problem_id=pid, step_idx=idx,
                             context=head, step=step))
            head += step + "\n"
    table = pd.DataFrame(rows, columns=["solution_idx", *STEP_COLUMNS])
    if "family" in problems:
        family = table.solution_idx.map(dict(enumerate(problems["family"])))
        table["is_claim_correct"] = pd.array(
            [get_family(f).check_claims(s) for f, s in zip(family, table.step)], dtype="boolean")
    return table
