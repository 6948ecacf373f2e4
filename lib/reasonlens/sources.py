"""Real-model data sources: OpenThoughts-114k traces and LMSYS-Chat-1M conversations as texts.

Galichin et al. (2025) train their SAE on LMSYS-Chat-1M chat and OpenThoughts-114k reasoning
traces together, both rendered with the DeepSeek-R1 chat template. This module loads either corpus
from a Hugging Face hub id or a local copy, renders each record to one string, and mixes the two
kinds of text under a seed. Tokenising and packing the texts into fixed-length contexts is the job
of ``reasonlens.data``.

A trace is rendered as::

    {system}<｜User｜>{problem prompt}<｜Assistant｜><think>\\n{reasoning}\\n</think>\\n{solution}

where the problem prompt wraps the problem in a short instruction chosen by its domain. A chat is
rendered as its turns, each after ``<｜User｜>`` or ``<｜Assistant｜>``, with no ``<think>`` block.
Neither carries the tokenizer's BOS/EOS tokens; add them when tokenizing, so that packed
contexts keep document boundaries.

Example:
    >>> cfg = SourceMixConfig(openthoughts_source="data/ot.jsonl", lmsys_source="data/chat.jsonl",
    ...                       n_reasoning=100, n_chat=100)
    >>> texts = load_mixed_texts(cfg)  # doctest: +SKIP
    >>> texts.columns.tolist()  # doctest: +SKIP
    ['text', 'kind', 'source']
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from reasonlens.config import Config, check_range
from reasonlens.constants import R1_ASSISTANT, R1_USER

logger = logging.getLogger(__name__)

OPENTHOUGHTS_ID = "open-thoughts/OpenThoughts-114k"
# The hub config with per-record fields; the "default" config holds ShareGPT-style conversations.
OPENTHOUGHTS_CONFIG = "metadata"
LMSYS_ID = "lmsys/lmsys-chat-1m"  # gated on the hub: accept its licence and log in before loading

# Fields a record must have to be formatted (starter_code and test_cases are optional).
OPENTHOUGHTS_FIELDS = ("problem", "deepseek_reasoning", "deepseek_solution", "domain")
LMSYS_FIELDS = ("conversation",)

R1_TRACE_TEMPLATE = (
    "{system}" + R1_USER + "{problem}" + R1_ASSISTANT
    + "<think>\n{reasoning}\n</think>\n{solution}"
)

# Instructions put before the problem, by OpenThoughts domain; any other domain gets none.
CODE_INSTRUCTION = "Generate an executable Python function generated from the given prompt."
CODE_STDIN_INSTRUCTION = (
    CODE_INSTRUCTION + " It reads its input from stdin and prints the answer to stdout; "
    "call it once right after its definition."
)
CODE_STARTER_INSTRUCTION = (
    CODE_INSTRUCTION + " Complete the starter code given after the problem and return only "
    "the function body, without calling it."
)
DOMAIN_INSTRUCTIONS = {
    "math": "Return your final response within \\boxed{}.",
    "science": "Answer this science question, explaining your reasoning before the final answer.",
    "puzzle": "Solve this puzzle step by step, then state your final answer clearly.",
}

# Local formats: file suffix -> datasets builder.
DATA_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
ACCEPTED_FORMATS = (
    "a directory written by Dataset.save_to_disk, a directory of .parquet/.jsonl/.json files, "
    "a single .parquet/.jsonl/.json file, or a Hugging Face hub id such as "
    f"{OPENTHOUGHTS_ID!r}"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json")
_SMALL_FILE_BYTES = 4096  # a JSON file this small is read whole to see whether it is empty


def load_records(
    source: str | os.PathLike,
    split: str = "train",
    required_fields: Sequence[str] = (),
    n_records: int | None = None,
    config_name: str | None = None,
) -> datasets.Dataset:
    """Load a dataset from a hub id or a local path, and check it has the fields we need.

    A hub id (``owner/name``) is loaded with ``datasets.load_dataset`` when this is called, never
    at import. A string is taken as a local path when it exists, starts with ``/``, ``.`` or
    ``~``, has more than one ``/``, or ends in ``.parquet``, ``.jsonl`` or ``.json``. In a directory
    of data files, the files whose name or folder starts with ``split`` are read, or all of them
    when none does.

    Args:
        source: hub id, or path to a ``save_to_disk`` directory, a directory of .parquet/.jsonl/
            .json files, or one such file.
        split: which split to read (a hub split, a ``DatasetDict`` key, or a file name prefix).
        required_fields: columns every record must have.
        n_records: keep only the first ``n_records`` records; None keeps all.
        config_name: the hub dataset's config (e.g. ``"metadata"`` for OpenThoughts-114k);
            ignored for local paths.

    Returns:
        The records, as a ``datasets.Dataset``.

    Raises:
        FileNotFoundError: ``source`` looks like a local path that does not exist, or a directory
            holding no data; the message lists the accepted formats.
        ValueError: ``source`` is empty or a file of another format, ``n_records`` is not a
            positive integer, ``split`` is not in a saved ``DatasetDict``, a directory mixes
            .parquet and .json files, the dataset is empty, or records lack one of
            ``required_fields`` (the message lists the fields found).

    Used by notebooks/01_data.py.
    """
    if n_records is not None and (
        isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 1
    ):
        raise ValueError(f"n_records={n_records!r} must be a positive integer, or None for all.")
    if not str(source).strip():
        raise ValueError(f"source={source!r} is empty. Pass {ACCEPTED_FORMATS}.")
    if _is_local(source):
        records = _load_local(Path(source).expanduser(), split)
    else:
        logger.info("Loading %s (config %s, split %s) from the hub", source, config_name, split)
        records = datasets.load_dataset(str(source), name=config_name, split=split)
    if len(records) == 0:
        raise ValueError(f"source={str(source)!r} (split {split!r}) holds no records.")
    missing = [name for name in required_fields if name not in records.column_names]
    if missing:
        raise ValueError(
            f"Records in source={str(source)!r} lack field(s) {missing}; fields found: "
            f"{records.column_names}. Point source at a dataset with these fields."
        )
    if n_records is not None and n_records < len(records):
        records = records.select(range(n_records))
    logger.info("Loaded %d records from %s", len(records), source)
    return records


def keep_language(records: datasets.Dataset, language: str = "English") -> datasets.Dataset:
    """Keep the records whose ``language`` field equals ``language`` (LMSYS-Chat-1M has one).

    Args:
        records: records with a ``language`` column.
        language: the value to keep, e.g. ``"English"``.

    Returns:
        The matching records, in their original order.

    Raises:
        ValueError: the records have no ``language`` field, or none is in ``language`` (the
            message lists some languages found).

    Used by notebooks/01_data.py.
    """
    if "language" not in records.column_names:
        raise ValueError(
            f"Cannot filter by language={language!r}: records have no 'language' field; fields "
            f"found: {records.column_names}. Set is_english_only=False for such data."
        )
    kept = records.filter(
        lambda languages: [value == language for value in languages],
        input_columns="language", batched=True, keep_in_memory=True,
    )
    if len(kept) == 0:
        found = sorted({str(value) for value in records["language"]})
        raise ValueError(
            f"No record has language={language!r}; languages found include {found[:10]}."
        )
    logger.info("Kept %d of %d records in %s", len(kept), len(records), language)
    return kept


def format_openthoughts(record: Mapping[str, Any], system_prompt: str = "") -> str:
    """Render one OpenThoughts-114k record as a DeepSeek-R1 reasoning trace.

    The result is ``{system}<｜User｜>{problem prompt}<｜Assistant｜><think>\\n{reasoning}\\n
    </think>\\n{solution}``. The problem prompt is the problem behind a domain instruction: math
    ``"Return your final response within \\boxed{}. {problem}"``; science and puzzle their own
    one-sentence instruction, then a space and the problem; code an instruction, a blank line and
    the problem, and, when ``starter_code`` is non-empty, a blank line and the starter code. Any
    other domain gets the bare problem. Problem, reasoning, solution and starter code are stripped
    of surrounding whitespace so the template's newlines are the only ones at the seams.

    Args:
        record: a mapping with ``problem``, ``deepseek_reasoning``, ``deepseek_solution``,
            ``domain`` and, optionally, ``starter_code``.
        system_prompt: text put before ``<｜User｜>``; the R1-Distill template uses none.

    Returns:
        The formatted trace.

    Raises:
        ValueError: the record lacks one of the fields above.

    Used by notebooks/01_data.py.
    """
    _check_fields(record, OPENTHOUGHTS_FIELDS)
    return R1_TRACE_TEMPLATE.format(
        system=system_prompt,
        problem=_problem_prompt(record),
        reasoning=(record["deepseek_reasoning"] or "").strip(),
        solution=(record["deepseek_solution"] or "").strip(),
    )


def format_lmsys(record: Mapping[str, Any], system_prompt: str = "") -> str:
    """Render one LMSYS-Chat-1M conversation with the DeepSeek-R1 chat markers.

    Each user turn follows ``<｜User｜>`` and each assistant turn ``<｜Assistant｜>``, in order,
    with the content verbatim and no ``<think>`` block.

    Args:
        record: a mapping whose ``conversation`` is a list of ``{"role", "content"}`` turns, with
            role ``"user"`` or ``"assistant"``.
        system_prompt: text put before the first turn.

    Returns:
        The formatted conversation.

    Raises:
        ValueError: the record has no ``conversation``, it is empty, or a turn has another role.

    Used by notebooks/01_data.py.
    """
    _check_fields(record, LMSYS_FIELDS)
    conversation = record["conversation"]
    if not conversation:
        raise ValueError("The record's conversation has no turns.")
    markers = {"user": R1_USER, "assistant": R1_ASSISTANT}
    parts = [system_prompt]
    for index, turn in enumerate(conversation):
        role = turn.get("role")
        if role not in markers:
            raise ValueError(
                f"Turn {index} of the conversation has role={role!r}; valid roles: "
                f"{sorted(markers)}."
            )
        parts.append(markers[role] + (turn.get("content") or ""))
    return "".join(parts)


@dataclasses.dataclass(frozen=True)
class SourceMixConfig(Config):
    """Which real corpora to read, how many records of each, and how to mix them.

    Up to ``n_reasoning`` traces and ``n_chat`` conversations are drawn at random (under ``seed``)
    and mixed so that a ``reasoning_fraction`` of the texts are traces, using as many texts as the
    fraction allows. A source whose share is 0 is not read.

    Args:
        openthoughts_source: hub id or local path of OpenThoughts-114k (or data of its schema).
        openthoughts_config: hub config of ``openthoughts_source``; None for the hub default.
            Ignored for local paths.
        lmsys_source: hub id or local path of LMSYS-Chat-1M (or data of its schema).
        split: split read from both sources.
        n_reasoning: most traces to draw.
        n_chat: most conversations to draw.
        reasoning_fraction: share of traces among the texts, in [0, 1]. The paper and its
            reference code concatenate both corpora without stating a ratio; 0.5 is our choice.
        is_english_only: keep only LMSYS conversations whose ``language`` is ``"English"``.
        seed: seeds the draws from each source and the final shuffle.
        system_prompt: text put before every text; the R1-Distill template uses none.

    Raises:
        ValueError: a parameter is out of range; the message names it.

    Used by notebooks/01_data.py.
    """

    openthoughts_source: str = OPENTHOUGHTS_ID
    openthoughts_config: str | None = OPENTHOUGHTS_CONFIG
    lmsys_source: str = LMSYS_ID
    split: str = "train"
    n_reasoning: int = 1000
    n_chat: int = 1000
    reasoning_fraction: float = 0.5
    is_english_only: bool = True
    seed: int = 0
    system_prompt: str = ""

    def __post_init__(self) -> None:
        for name in ("openthoughts_source", "lmsys_source"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}={value!r} must be {ACCEPTED_FORMATS}.")
        if self.openthoughts_config is not None and (
            not isinstance(self.openthoughts_config, str) or not self.openthoughts_config
        ):
            raise ValueError(
                f"openthoughts_config={self.openthoughts_config!r} must be a hub config name "
                f"such as {OPENTHOUGHTS_CONFIG!r}, or None."
            )
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"split={self.split!r} must be a split name such as 'train'.")
        if (
            isinstance(self.reasoning_fraction, bool)
            or not isinstance(self.reasoning_fraction, int | float)
        ):
            raise ValueError(
                f"reasoning_fraction={self.reasoning_fraction!r} must be a number in [0, 1]."
            )
        check_range("reasoning_fraction", self.reasoning_fraction, 0.0, 1.0,
                    "It is the share of reasoning traces among the texts.")
        for name, is_used in (("n_reasoning", self.reasoning_fraction > 0),
                              ("n_chat", self.reasoning_fraction < 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be an integer.")
            hint = (f"reasoning_fraction={self.reasoning_fraction} draws from this source; use "
                    "at least 1 record, or set reasoning_fraction to 0 or 1." if is_used else "")
            check_range(name, value, 1 if is_used else 0, None, hint)
        if not isinstance(self.is_english_only, bool):
            raise ValueError(f"is_english_only={self.is_english_only!r} must be True or False.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be a non-negative integer.")
        if not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt={self.system_prompt!r} must be a string.")


def load_mixed_texts(cfg: SourceMixConfig) -> pd.DataFrame:
    """Load, format and mix OpenThoughts traces and LMSYS conversations under ``cfg.seed``.

    Args:
        cfg: sources, counts, mix fraction, seed and system prompt.

    Returns:
        A DataFrame with one row per text and columns ``text`` (the formatted string), ``kind``
        (``"trace"`` or ``"chat"``) and ``source`` (the source it came from), shuffled.

    Raises:
        FileNotFoundError: a local source does not exist (see ``load_records``).
        ValueError: a source is empty, lacks fields, or has no English conversation when
            ``cfg.is_english_only``.

    Used by notebooks/01_data.py.
    """
    trace_rng, chat_rng, mix_rng = (
        np.random.default_rng(seq) for seq in np.random.SeedSequence(cfg.seed).spawn(3)
    )
    traces = chats = None
    if cfg.reasoning_fraction > 0:
        traces = load_records(cfg.openthoughts_source, cfg.split, OPENTHOUGHTS_FIELDS,
                              config_name=cfg.openthoughts_config)
    if cfg.reasoning_fraction < 1:
        chats = load_records(cfg.lmsys_source, cfg.split, LMSYS_FIELDS)
        if cfg.is_english_only:
            chats = keep_language(chats, "English")
    n_traces, n_chats = _mix_counts(
        _available(traces, cfg.n_reasoning, "n_reasoning"),
        _available(chats, cfg.n_chat, "n_chat"),
        cfg.reasoning_fraction,
    )
    trace_fields = (*OPENTHOUGHTS_FIELDS, "starter_code")
    texts = [format_openthoughts(record, cfg.system_prompt)
             for record in _draw(traces, n_traces, trace_rng, trace_fields)]
    texts += [format_lmsys(record, cfg.system_prompt)
              for record in _draw(chats, n_chats, chat_rng, LMSYS_FIELDS)]
    frame = pd.DataFrame({
        "text": texts,
        "kind": ["trace"] * n_traces + ["chat"] * n_chats,
        "source": [cfg.openthoughts_source] * n_traces + [cfg.lmsys_source] * n_chats,
    })
    frame = frame.iloc[mix_rng.permutation(len(frame))].reset_index(drop=True)
    logger.info("Mixed %d traces and %d chats (%.1f%% traces)", n_traces, n_chats,
                100 * n_traces / len(frame))
    return frame


def _is_local(source: str | os.PathLike) -> bool:
    if not isinstance(source, str) or Path(source).expanduser().exists():
        return True
    return not _HUB_ID.fullmatch(source) or source.lower().endswith(tuple(DATA_SUFFIXES))


def _load_local(path: Path, split: str) -> datasets.Dataset:
    if not path.exists():
        raise FileNotFoundError(
            f"source={str(path)!r} looks like a local path but does not exist. Pass "
            f"{ACCEPTED_FORMATS}."
        )
    if path.is_dir() and any((path / marker).exists() for marker in _SAVE_TO_DISK_MARKERS):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(
                    f"split={split!r} is not in source={str(path)!r}; splits found: "
                    f"{sorted(loaded)}."
                )
            return loaded[split]
        return loaded
    if path.is_file() and path.suffix.lower() not in DATA_SUFFIXES:
        raise ValueError(
            f"source={str(path)!r} has an unsupported format. Pass {ACCEPTED_FORMATS}."
        )
    files = [path] if path.is_file() else _data_files(path, split)
    if not files:
        raise FileNotFoundError(
            f"source={str(path)!r} holds no dataset or data files. Pass {ACCEPTED_FORMATS}."
        )
    builders = {DATA_SUFFIXES[file.suffix.lower()] for file in files}
    if len(builders) > 1:
        raise ValueError(
            f"source={str(path)!r} mixes .parquet and .json/.jsonl files; point source at one "
            "file or at a folder of one format."
        )
    # datasets fails with unrelated-sounding errors on files without records, so skip them.
    files = [file for file in files if not _holds_no_records(file)]
    if not files:
        raise ValueError(f"source={str(path)!r} (split {split!r}) holds no records.")
    return datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")


def _data_files(directory: Path, split: str) -> list[Path]:
    files = sorted(
        file for file in directory.rglob("*")
        if file.is_file() and file.suffix.lower() in DATA_SUFFIXES
        and not any(part.startswith(".") for part in file.relative_to(directory).parts)
    )
    split_prefix = re.compile(rf"{re.escape(split)}($|[-_.])")
    in_split = [file for file in files
                if any(split_prefix.match(part) for part in file.relative_to(directory).parts)]
    return in_split or files


def _holds_no_records(file: Path) -> bool:
    if file.suffix.lower() == ".parquet":
        return pq.ParquetFile(file).metadata.num_rows == 0
    with file.open("rb") as handle:
        head = handle.read(_SMALL_FILE_BYTES + 1)
    return len(head) <= _SMALL_FILE_BYTES and head.strip() in (b"", b"[]")


def _check_fields(record: Mapping[str, Any], fields: Sequence[str]) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise ValueError(
            f"The record lacks field(s) {missing}; fields found: {sorted(record)}."
        )


def _problem_prompt(record: Mapping[str, Any]) -> str:
    problem = (record["problem"] or "").strip()
    domain = str(record["domain"] or "").strip().lower()
    if domain == "code":
        starter_code = (record.get("starter_code") or "").strip()
        if starter_code:
            return f"{CODE_STARTER_INSTRUCTION}\n\n{problem}\n\n{starter_code}"
        return f"{CODE_STDIN_INSTRUCTION}\n\n{problem}"
    if domain in DOMAIN_INSTRUCTIONS:
        return f"{DOMAIN_INSTRUCTIONS[domain]} {problem}"
    return problem


def _available(records: datasets.Dataset | None, n_wanted: int, name: str) -> int:
    if records is None:
        return 0
    if len(records) < n_wanted:
        logger.warning("%s=%d but only %d records are available; using them all.",
                       name, n_wanted, len(records))
    return min(n_wanted, len(records))


def _mix_counts(n_traces: int, n_chats: int, reasoning_fraction: float) -> tuple[int, int]:
    """The most (traces, chats) within the available counts whose trace share is the fraction."""
    if reasoning_fraction >= 1:
        return n_traces, 0
    if reasoning_fraction <= 0:
        return 0, n_chats
    chats_for_all_traces = round(n_traces * (1 - reasoning_fraction) / reasoning_fraction)
    if chats_for_all_traces <= n_chats:
        return n_traces, chats_for_all_traces
    return min(n_traces, round(n_chats * reasoning_fraction / (1 - reasoning_fraction))), n_chats


def _draw(records: datasets.Dataset | None, n: int, rng: np.random.Generator,
          fields: Sequence[str]) -> datasets.Dataset | list:
    """``n`` records drawn without replacement, holding only ``fields`` (those present)."""
    if records is None or n == 0:
        return []
    # Random indices and select (not Dataset.shuffle), so nothing is written beside the data.
    drawn = records.select(rng.choice(len(records), size=n, replace=False).tolist())
    return drawn.select_columns([name for name in fields if name in records.column_names])
