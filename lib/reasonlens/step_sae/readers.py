"""Step tables from the step-level SAE's three data sets, read exactly as the authors read them.

Yang et al. (2026, arXiv 2603.03031) train on GSM8K, NuminaMath and OpenCodeInstruct. Their code
(github.com/Miaow-Lab/SSAE, commit 911d4d3, called *R* below) has one data loader per set, each
reading JSON Lines (the files are named ``.json``) and cutting every solution into steps with its
own rule. ``read_gsm8k_steps``, ``read_numina_steps`` and ``read_opencode_steps`` reproduce those
rules; ``read_steps`` picks one by name. Our audit of the differences is
``shared/reference/ssae_fidelity.md``, section "2. Data".

Each reader returns a step table as ``data.read_jsonl_steps`` does (notebook 08 consumes it):

    problem_id    index of the record (0, 1, ...) among the file's records
    solution_idx  index of the solution within the record (Numina's list; 0 for the others)
    step_idx      0, 1, ... over the steps kept from that solution
    context       the text R's encoder reads before ``<sep>`` (R calls it ``hints``)
    step          the step text, unstripped, as R keeps it
    final_answer  GSM8K: the text after the answer's last ``####``; otherwise None

R's token limits differ per data set and in which end of the text they keep; ``TOKEN_LIMITS``
holds them and ``apply_token_limits`` applies them to token ids (R's ``__getitem__``).

Deviations from R, all deliberate:

- R's Numina sentence splitter never advances its loop index and hangs on any non-empty text;
  ``split_numina_solution`` does what the loop evidently means (see its docstring).
- R crashes (``json.loads``) on a blank line; we skip blank lines. R crashes with a bare
  ``KeyError``/``TypeError`` or silently mis-reads a malformed record (a Numina ``answer`` that is a
  string is iterated character by character); we raise ValueError naming file, line and field.
- R accepts empty questions and solutions; we reject them (an empty record is a data error).

Kept as published, though probably unintended: the Numina splitter joins consecutive plain lines
with no space (dataloader_numina.py:48), and a one-line GSM8K answer loses its ``". "``
separators (dataloader.py:30). Since R's published Numina splitter cannot finish, no data set was
cut by it as published; our Numina steps are R's rules with the hang fixed, nothing more.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import pandas as pd

FORMATS = ("gsm8k", "numina", "opencode")
TABLE_COLUMNS = ("problem_id", "solution_idx", "step_idx", "context", "step", "final_answer")

# The fields each format needs, and what a record of it looks like (for error messages).
TEXT, _TEXTS = "a non-empty string", "a non-empty list of non-empty strings"
_FIELDS = MappingProxyType({
    "gsm8k": MappingProxyType({"question": TEXT, "answer": TEXT}),
    "numina": MappingProxyType({"question": TEXT, "answer": _TEXTS}),
    "opencode": MappingProxyType({"input": TEXT, "output": TEXT}),
})
_RECORD_SHAPES = MappingProxyType({
    "gsm8k": '{"question": str, "answer": str}',
    "numina": '{"question": str, "answer": [str, ...]}',
    "opencode": '{"input": str, "output": str}',
})


# ---------------------------------------------------------------------------------------------
# Token limits


@dataclasses.dataclass(frozen=True)
class TokenLimit:
    """How many token ids R keeps of one text, and from which end.

    Attributes:
        max_tokens: the most ids kept.
        keep: ``"first"`` (R: ``encode(text, max_length=n, truncation=True)``, which cuts the end
            with the Hugging Face default ``truncation_side="right"``) or ``"last"``
            (R: ``encode(text, truncation=False)[-n:]``).
    """

    max_tokens: int
    keep: str

    def __post_init__(self):
        if self.keep not in ("first", "last"):
            raise ValueError(f"keep={self.keep!r} is not valid; use 'first' or 'last'.")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be a positive int.")


@dataclasses.dataclass(frozen=True)
class TokenLimits:
    """R's limits for the context (``hints``) and the step of one data set."""

    context: TokenLimit
    step: TokenLimit


TOKEN_LIMITS: Mapping[str, TokenLimits] = MappingProxyType({
    # dataloader.py:56-57: both encoded with max_length=256, truncation=True.
    "gsm8k": TokenLimits(TokenLimit(256, "first"), TokenLimit(256, "first")),
    # dataloader_numina.py:137-138: context [-256:], step max_length=128, truncation=True.
    "numina": TokenLimits(TokenLimit(256, "last"), TokenLimit(128, "first")),
    # dataloader_opencodeinstruct.py:54-60: context [-256:], step max_length=256, truncation=True.
    "opencode": TokenLimits(TokenLimit(256, "last"), TokenLimit(256, "first")),
})


def keep_tokens(ids: Sequence[int], limit: TokenLimit) -> list[int]:
    """The ids of one text that ``limit`` keeps (all of them when there are few enough).

    Args:
        ids: token ids ``[pos]`` of one text.
        limit: how many to keep and from which end.

    Returns:
        A new list of at most ``limit.max_tokens`` ids.
    """
    ids = list(ids)
    if limit.keep == "first":
        return ids[:limit.max_tokens]
    return ids[-limit.max_tokens:]


def apply_token_limits(context_ids: Sequence[Sequence[int]], step_ids: Sequence[Sequence[int]],
                       fmt: str) -> tuple[list[list[int]], list[list[int]]]:
    """Truncate contexts and steps by R's limits for ``fmt`` (``TOKEN_LIMITS[fmt]``).

    R's tokenizer calls add the tokenizer's special tokens before truncating (none for Qwen2.5,
    the paper's model), so tokenize without special tokens and then apply these limits, as
    notebook 08's ``data.tokenize_steps`` does with its own limits.

    Args:
        context_ids: one id list ``[pos]`` per step table row.
        step_ids: one id list ``[pos]`` per step table row.
        fmt: ``"gsm8k"``, ``"numina"`` or ``"opencode"``.

    Returns:
        The truncated ``(context_ids, step_ids)``, new lists.

    Raises:
        ValueError: an unknown ``fmt``, or lists of different lengths.
    """
    limits = TOKEN_LIMITS[_check_fmt(fmt)]
    if len(context_ids) != len(step_ids):
        raise ValueError(f"context_ids has {len(context_ids)} rows but step_ids has "
                         f"{len(step_ids)}; pass one of each per step table row.")
    return ([keep_tokens(ids, limits.context) for ids in context_ids],
            [keep_tokens(ids, limits.step) for ids in step_ids])


# ---------------------------------------------------------------------------------------------
# Reading and checking records (shared by the three readers)


def _check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not a step data format; use one of {list(FORMATS)}.")
    return fmt


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_problem(value, kind: str) -> str | None:
    """Why ``value`` is not ``kind`` (``TEXT`` or ``_TEXTS``), or None when it is."""
    if kind == TEXT:
        if not isinstance(value, str):
            return f"is a {type(value).__name__} ({_short(value)})"
        return None if value.strip() else f"is empty ({_short(value)})"
    if not isinstance(value, list):
        return f"is a {type(value).__name__} ({_short(value)})"
    if not value:
        return "is an empty list"
    for k, item in enumerate(value):
        problem = _field_problem(item, TEXT)
        if problem:
            return f"item {k} {problem}"
    return None


def read_records(path: str | Path, fmt: str, fields: Mapping[str, str] | None = None,
                 fix: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_no, record)`` for each non-blank line of a JSON Lines file of ``fmt``.

    ``fields`` (field -> ``TEXT``) replaces the format's fields, for files that name them
    otherwise (``data.read_jsonl_steps``); ``fix`` replaces the advice a bad line's error ends
    with.

    Lines are read as R reads them: text mode, UTF-8, universal newlines (dataloader.py:7-9), so
    a U+2028 inside a JSON string does not end a line. Blank lines are skipped (R would crash).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a line that is not UTF-8 or JSON, not an object, or lacks a field of
            ``_FIELDS[fmt]`` or has it of the wrong type or empty; the message gives
            ``path:line``, the field and the fix.
    """
    path = Path(path)
    fields = _FIELDS[fmt] if fields is None else fields
    shape = ("{" + ", ".join(f'"{field}": str' for field in fields) + "}"
             if fields is not _FIELDS[fmt] else _RECORD_SHAPES[fmt])
    if not path.is_file():
        raise FileNotFoundError(f"step_jsonl_path={str(path)!r} does not exist or is not a file. "
                                f"Point it at a JSON Lines file of {fmt} records, one {shape} "
                                "object per line.")
    fix = fix or f"Fix or delete that line; each line of a {fmt} file is one {shape} object."
    line_no = 0
    with open(path, encoding="utf-8") as lines:
        try:
            for line_no, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where} is not valid JSON ({error.msg}). {fix}") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{where} is a JSON {type(record).__name__}, not an object. "
                                     f"{fix}")
                for field, kind in fields.items():
                    if field not in record:
                        raise ValueError(f"{where} lacks the field {field!r} (it has "
                                         f"{sorted(record)}). {fix}")
                    problem = _field_problem(record[field], kind)
                    if problem:
                        raise ValueError(f"{where}: the field {field!r} {problem}; it must be "
                                         f"{kind}. {fix}")
                yield line_no, record
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 ({error.reason}) at or after line "
                             f"{line_no + 1}. Re-save the file as UTF-8.") from None


def _step_table(rows: list[dict], path: str | Path, fmt: str) -> pd.DataFrame:
    if not rows:
        raise ValueError(f"step_jsonl_path={str(path)!r} holds no {fmt} records (only blank "
                         f"lines). Each line must be one {_RECORD_SHAPES[fmt]} object.")
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


# ---------------------------------------------------------------------------------------------
# GSM8K (R: dataloader.py)


def split_gsm8k_answer(answer: str) -> list[str]:
    """Cut a GSM8K answer into R's pieces (dataloader.py:24-31), blank pieces included.

    Rules, in R's order:

    1. Every ``"\\n\\n"`` becomes ``"\\n"`` (one ``str.replace`` pass, so ``"\\n\\n\\n"`` becomes
       ``"\\n\\n"`` and leaves a blank piece) (line 25).
    2. The text is split on ``"\\n"`` (line 26) and the last two pieces are joined again with a
       ``"\\n"`` between them, so ``#### N`` stays on the last step (line 28).
    3. When there is no ``"\\n"`` (one piece, so there is no second-to-last piece), the text is
       split on ``". "`` instead, which drops that separator from every piece but the last, and
       nothing is joined (lines 27-30).

    Args:
        answer: the record's ``answer``.

    Returns:
        The pieces, unstripped; ``read_gsm8k_steps`` skips the blank ones.
    """
    answer = answer.replace("\n\n", "\n")
    pieces = answer.split("\n")
    if len(pieces) < 2:
        return answer.split(". ")
    return pieces[:-2] + [pieces[-2] + "\n" + pieces[-1]]


def _gsm8k_final_answer(answer: str) -> str | None:
    """The text after the last ``####`` (GSM8K's final answer), or None when there is none."""
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else None


def read_gsm8k_steps(path: str | Path) -> pd.DataFrame:
    """Read GSM8K JSON Lines into a step table with R's steps and contexts.

    R: dataloader.py:5-31.

    A record is ``{"question": str, "answer": str}``; other keys are ignored. The answer is cut by
    ``split_gsm8k_answer``. Piece ``i`` becomes a step unless it is blank (``strip()`` empty,
    line 15), and its context is ``question + " " + "".join(pieces[:i])`` (line 18): the earlier
    pieces, blank ones included, with no separator between them, so the first step's context ends
    in a space and the earlier steps run together (``"Q? A is 3.B is 4."``).

    Args:
        path: the JSON Lines file (``step_jsonl_path`` in notebook 08).

    Returns:
        The step table (module docstring); ``final_answer`` is the text after the answer's last
        ``####``, else None. The ``####`` line stays in the last step, as in R.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a malformed record (not JSON, not an object, a missing, non-string or empty
            ``question``/``answer``), naming file, line and field; or a file with no records.
    """
    rows = []
    for problem_id, (_, record) in enumerate(read_records(path, "gsm8k")):
        question, answer = record["question"], record["answer"]
        pieces = split_gsm8k_answer(answer)
        final_answer = _gsm8k_final_answer(answer)
        step_idx = 0
        for i, piece in enumerate(pieces):
            if not piece.strip():
                continue
            rows.append(dict(problem_id=problem_id, solution_idx=0, step_idx=step_idx,
                             context=question + " " + "".join(pieces[:i]), step=piece,
                             final_answer=final_answer))
            step_idx += 1
    return _step_table(rows, path, "gsm8k")


# ---------------------------------------------------------------------------------------------
# NuminaMath (R: dataloader_numina.py)

_DISPLAY_FORMULA = re.compile(r"(\$\$.*?\$\$|\\\[.*?\\\])", re.DOTALL)  # line 14
_CONNECTORS = ("Therefore", "Thus", "Also", "Moreover", "Since", "Hence", "Then", "So",
               "Consequently")  # lines 18-21
_CONNECTOR_WORDS = frozenset(word.lower() for word in _CONNECTORS)  # line 23
_OPENS_WITH_CONNECTOR = re.compile(r"^\s*(?:" + "|".join(_CONNECTORS) + r")\b",
                                   re.IGNORECASE)  # line 22
_HEADING = re.compile(r"^\d+\.\s+\*\*")  # line 33, e.g. "1. **Setup**"
_LIST_ITEM = re.compile(r"^[-*]\s+")  # line 34
_SENTENCE_END = re.compile(r"([.?!])\s+(?=[A-Z])")  # line 60
_ENDS_WITH_NUMBER = re.compile(r"(?:^|\s)\d+$")  # line 15, e.g. "Step 1" before "."


def _numina_blocks(text: str) -> list[str]:
    """R's first pass (dataloader_numina.py:16-51): display formulas and line groups."""
    blocks = []
    for k, part in enumerate(_DISPLAY_FORMULA.split(text)):
        if k % 2 == 1:
            # A captured formula. R tests re.match(formula, part) (line 25), true exactly for
            # these: a text part cannot start with a formula, or split would have cut it there.
            blocks.append(part.strip())
            continue
        buffer = ""
        for line in (raw.strip() for raw in part.split("\n")):
            if not line:
                continue
            if buffer.strip().endswith(":"):  # lines 39-40
                buffer += " " + line
            elif (_HEADING.match(line) or _LIST_ITEM.match(line)
                  or _OPENS_WITH_CONNECTOR.match(line)):  # lines 42-45
                if buffer:
                    blocks.append(buffer)
                buffer = line
            else:
                # Line 48 appends (" " + line).strip(), which is line itself: no space.
                buffer += line
        if buffer.strip():
            blocks.append(buffer.strip())
    return blocks


def _numina_sentences(block: str) -> list[str]:
    """R's sentence cut of one block (dataloader_numina.py:60-77)."""
    pieces = _SENTENCE_END.split(block.strip())  # text, mark, text, mark, ..., text
    sentences, current = [], ""
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            current += piece
            continue
        before = current.strip()
        current += piece
        # Line 70 also tests current.endswith(":"), never true here: current ends in the mark.
        if not _ENDS_WITH_NUMBER.search(before):
            sentences.append(current.strip())
            current = ""
    if current.strip():
        sentences.append(current.strip())
    return sentences


def _is_open_ended(sentence: str) -> bool:
    """A lone connector ("So,") or a sentence ending in ":" takes the next one (lines 86-93)."""
    sentence = sentence.strip()
    return sentence.rstrip(".,").lower() in _CONNECTOR_WORDS or sentence.endswith(":")


def split_numina_solution(text: str) -> list[str]:
    """Cut one Numina solution into R's steps, with R's hang fixed.

    R's ``split_solution_into_sentences`` (dataloader_numina.py:13-98), rule by rule:

    1. Display formulas (``$$...$$``, ``\\[...\\]``) become blocks of their own (lines 14-28).
    2. The text between them is cut into stripped, non-blank lines (line 30). A line opening with
       a heading (``1. **``), a list marker (``-``/``*`` and a space) or a connector word
       (Therefore, Thus, Also, Moreover, Since, Hence, Then, So, Consequently, any case) starts a
       new block; any other line is appended to the current block *with no space*, as line 48
       does (``"x = 1.\\nWe get y."`` gives ``"x = 1.We get y."``); after a block ending in ``:``
       a line is appended with a space (lines 32-51).
    3. Each block is cut after ``.``, ``?`` or ``!`` followed by whitespace and a capital letter;
       the whitespace is dropped. No cut after a number standing as a word (``"Step 1. Add"``
       gives ``"Step 1.Add"``) (lines 60-74). Decimals (``3.5``) and lower-case continuations
       (``e.g. the``) are never cut; abbreviations before a capital (``Dr. Smith``) are.
    4. A sentence that is a lone connector (``"So,"``) or ends in ``:`` absorbs the next sentence,
       with a space, even across blocks (lines 79-95).
    5. Runs of whitespace become one space; empty sentences are dropped (line 97).

    Deviation from R: R walks the blocks of step 3 with ``while i < len(sentences)`` and only
    increments ``i`` when a block is blank (lines 54-59), so any non-empty text loops forever
    on its first block, appending its sentences without end. We process each block once, in
    order, as the loop evidently means (R with ``i += 1`` at the end of the loop body). R's
    other checks that cannot change the result (line 70's ``endswith(":")``, line 76's fallback,
    the unused lines 81-84) are left out.

    Args:
        text: one solution.

    Returns:
        Its steps, in order.
    """
    steps: list[str] = []
    for block in _numina_blocks(text):
        for sentence in _numina_sentences(block):
            if steps and _is_open_ended(steps[-1]):
                steps[-1] += " " + sentence
            else:
                steps.append(sentence)
    return [re.sub(r"\s+", " ", step).strip() for step in steps if step.strip()]


def read_numina_steps(path: str | Path) -> pd.DataFrame:
    """Read NuminaMath JSON Lines into a step table with R's steps and contexts.

    R: dataloader_numina.py:101-126.

    A record is ``{"question": str, "answer": [str, ...]}``, a list of solutions; other keys are
    ignored. Each solution is cut by ``split_numina_solution``. The context accumulates across
    the record's solutions (lines 118-126): step ``i`` of a solution has the context
    ``head + " " + " ".join(steps[:i])``, where ``head`` starts as the question and, after each
    solution, becomes ``head + " " + " ".join(that solution's steps)``. So the first step's
    context ends in a space, and a later solution's context holds every earlier solution.

    Args:
        path: the JSON Lines file (``step_jsonl_path`` in notebook 08).

    Returns:
        The step table (module docstring); ``solution_idx`` indexes the answer list;
        ``final_answer`` is None.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a malformed record (not JSON, not an object, a missing or empty ``question``,
            an ``answer`` that is not a non-empty list of non-empty strings), naming file, line
            and field; or a file with no records.
    """
    rows = []
    for problem_id, (_, record) in enumerate(read_records(path, "numina")):
        head = record["question"]
        for solution_idx, solution in enumerate(record["answer"]):
            steps = split_numina_solution(solution)
            for i, step in enumerate(steps):
                rows.append(dict(problem_id=problem_id, solution_idx=solution_idx, step_idx=i,
                                 context=head + " " + " ".join(steps[:i]), step=step,
                                 final_answer=None))
            head = head + " " + " ".join(steps)
    return _step_table(rows, path, "numina")


# ---------------------------------------------------------------------------------------------
# OpenCodeInstruct (R: dataloader_opencodeinstruct.py)


def read_opencode_steps(path: str | Path) -> pd.DataFrame:
    """Read OpenCodeInstruct JSON Lines into a step table with R's steps and contexts.

    R: dataloader_opencodeinstruct.py:7-28.

    A record is ``{"input": str, "output": str}``; other keys are ignored. The steps are the
    output's lines (split on ``"\\n"``) that are not blank, unstripped, so indentation (and a
    ``"\\r"`` of a CRLF line) stays (lines 24-28). Step ``i``'s context is
    ``input + " " + "\\n".join(steps[:i])`` (line 17): the first step's context ends in a space.

    Args:
        path: the JSON Lines file (``step_jsonl_path`` in notebook 08).

    Returns:
        The step table (module docstring); ``final_answer`` is None.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a malformed record (not JSON, not an object, a missing, non-string or empty
            ``input``/``output``), naming file, line and field; or a file with no records.
    """
    rows = []
    for problem_id, (_, record) in enumerate(read_records(path, "opencode")):
        steps = [line for line in record["output"].split("\n") if line.strip()]
        for i, step in enumerate(steps):
            rows.append(dict(problem_id=problem_id, solution_idx=0, step_idx=i,
                             context=record["input"] + " " + "\n".join(steps[:i]), step=step,
                             final_answer=None))
    return _step_table(rows, path, "opencode")


_READERS = MappingProxyType({"gsm8k": read_gsm8k_steps, "numina": read_numina_steps,
                             "opencode": read_opencode_steps})


def read_steps(path: str | Path, fmt: str) -> pd.DataFrame:
    """Read a step data file with the reader of ``fmt`` (R picks its loader by data set name).

    Args:
        path: the JSON Lines file (``step_jsonl_path`` in notebook 08).
        fmt: ``"gsm8k"``, ``"numina"`` or ``"opencode"``.

    Returns:
        The step table of ``read_gsm8k_steps``, ``read_numina_steps`` or ``read_opencode_steps``.

    Raises:
        ValueError: an unknown ``fmt`` (the message lists the valid ones), or what the reader
            raises.
        FileNotFoundError: ``path`` is not a file.
    """
    return _READERS[_check_fmt(fmt)](path)
