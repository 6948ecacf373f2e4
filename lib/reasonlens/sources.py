"""Real-model data sources: OpenThoughts-114k traces and LMSYS-Chat-1M conversations as texts.

Galichin et al. (2025) train their SAE on LMSYS-Chat-1M chat and OpenThoughts-114k reasoning
traces together, rendered for DeepSeek-R1. This module loads either corpus from a Hugging Face hub
id or a local copy and renders each record to one string exactly as the authors' code does
(AIRI-Institute/SAE-Reasoning, ``training/datasets/prepare_openthoughts_dataset.py``,
``training/datasets/prepare_lmsys_dataset.py``), and builds their stratified OpenThoughts subset
for scoring and dashboards (``extraction/prepare_openthoughts_subset.py``). Tokenising and packing
the texts into fixed-length contexts is the job of ``reasonlens.data``.

A trace is rendered as::

    {system}<｜User｜>{problem prompt}<｜Assistant｜><think>\\n{reasoning}\\n</think>\\n{solution}

with the reference's system prompt (:data:`R1_SYSTEM_PROMPT`, hard line breaks included) and its
problem prompt per domain: code gets one of two instructions, chosen by whether the record's
``test_cases`` JSON names an ``fn_name``, with the problem appended directly and then
``"\\n" + starter_code`` whenever ``starter_code`` is not None; math gets
``"Return your final response within \\boxed{}. "`` before the problem; puzzle, biology,
chemistry and physics get the bare problem. Text is kept verbatim. A chat is its turns in order:
system content as it is, user turns after ``<｜User｜>``, assistant turns after ``<｜Assistant｜>``
and, unless it is the last turn, followed by the EOS string. Neither carries a BOS token:
``reasonlens.data`` packs them as the reference does.

Example:
    >>> cfg = SourceMixConfig(openthoughts_source="data/ot.jsonl", lmsys_source="data/chat.jsonl")
    >>> texts = load_mixed_texts(cfg)  # doctest: +SKIP
    >>> texts.columns.tolist()  # doctest: +SKIP
    ['text', 'kind', 'source', 'record_idx']
"""

from __future__ import annotations

import dataclasses
import json
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
# The reference's system prompt, verbatim: a leading newline, hard line breaks, a final newline.
R1_SYSTEM_PROMPT = (
    "\nYour role as an assistant involves thoroughly exploring questions through a systematic long"
    " thinking process\nbefore providing the final precise and accurate solutions. This requires"
    " engaging in a comprehensive cycle of\nanalysis, summarizing, exploration, reassessment,"
    " reflection, backtracing, and iteration to develop well-considered\nthinking process.\n"
)
# DeepSeek-R1's EOS, which the reference puts after every non-final assistant turn of a chat.
R1_EOS = "<｜end▁of▁sentence｜>"

# The OpenThoughts-114k domains the reference formats (and keeps; any other raises), in its order.
OPENTHOUGHTS_DOMAINS = ("code", "math", "puzzle", "biology", "chemistry", "physics")
# Code instructions, chosen by json.loads(test_cases).get("fn_name"): absent -> stdin program.
CODE_STDIN_INSTRUCTION = (
    "Generate an executable Python function generated from the given prompt. The function should"
    " take stdin as input and print the output. Simply call the function after the definition."
)
CODE_FUNCTION_INSTRUCTION = (
    "Generate an executable Python function generated from the given prompt. Return the function"
    " body without invoking it at the final solution."
)
MATH_INSTRUCTION = "Return your final response within \\boxed{}. "

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


def openthoughts_prompt(record: Mapping[str, Any], is_stripped: bool = False) -> str:
    r"""The user turn of one OpenThoughts-114k record: its problem behind its domain's instruction.

    As the reference (``prepare_openthoughts_dataset.py``, ``Reasoner.prompt_*``) builds it:

    - ``code``: :data:`CODE_FUNCTION_INSTRUCTION` when ``json.loads(test_cases).get("fn_name")``
      is truthy, else :data:`CODE_STDIN_INSTRUCTION`; then the problem with no separator; then
      ``"\n" + starter_code`` whenever ``starter_code`` is not None (an empty one adds the
      newline alone).
    - ``math``: ``"Return your final response within \boxed{}. " + problem``.
    - ``puzzle``, ``biology``, ``chemistry``, ``physics``: the bare problem.

    Args:
        record: a mapping with ``problem`` and ``domain``; for code also ``test_cases`` (a JSON
            object as a string) and, optionally, ``starter_code``.
        is_stripped: strip surrounding whitespace from the problem and starter code, and omit an
            empty starter code (not the reference's behaviour; it keeps text verbatim).

    Returns:
        The prompt text.

    Raises:
        ValueError: the domain is not one of :data:`OPENTHOUGHTS_DOMAINS` (the reference raises
            too), the problem is not a string, or a code record's ``test_cases`` is not a JSON
            object; the message names the record by its problem.

    Used by notebooks/01_data.py (through ``format_openthoughts``).
    """
    _check_fields(record, ("problem", "domain"))
    problem = _text_field(record, "problem", is_stripped)
    domain = record["domain"]
    if domain == "code":
        prompt = _code_instruction(record) + problem
        starter_code = record.get("starter_code")
        if starter_code is not None:
            if not isinstance(starter_code, str):
                raise ValueError(
                    f"{_describe(record)} has starter_code={starter_code!r}; it must be a string "
                    "or None."
                )
            if is_stripped:
                starter_code = starter_code.strip()
                return prompt + ("\n" + starter_code if starter_code else "")
            prompt += "\n" + starter_code
        return prompt
    if domain == "math":
        return MATH_INSTRUCTION + problem
    if domain in OPENTHOUGHTS_DOMAINS:
        return problem
    raise ValueError(
        f"{_describe(record)} has domain={domain!r}; the reference formats only the "
        f"OpenThoughts-114k domains {list(OPENTHOUGHTS_DOMAINS)} and raises on any other. Keep "
        "only those records (SourceMixConfig.domains filters them)."
    )


def format_openthoughts(record: Mapping[str, Any], system_prompt: str = R1_SYSTEM_PROMPT,
                        is_stripped: bool = False) -> str:
    r"""Render one OpenThoughts-114k record as a DeepSeek-R1 reasoning trace, as the reference does.

    The result is ``{system}<｜User｜>{prompt}<｜Assistant｜><think>\n{reasoning}\n</think>\n
    {solution}``, where the prompt is :func:`openthoughts_prompt` and every field is verbatim.

    Args:
        record: a mapping with ``problem``, ``deepseek_reasoning``, ``deepseek_solution``,
            ``domain`` and, for code, ``test_cases`` and ``starter_code`` (the fields of the hub
            dataset's ``metadata`` config).
        system_prompt: text put before ``<｜User｜>``; the reference's is
            :data:`R1_SYSTEM_PROMPT`.
        is_stripped: strip surrounding whitespace from problem, reasoning, solution and starter
            code (an option; the reference keeps them verbatim).

    Returns:
        The formatted trace.

    Raises:
        ValueError: the record lacks one of the fields above, a text field is not a string, or
            :func:`openthoughts_prompt` refuses the record (unknown domain, bad ``test_cases``).

    Used by notebooks/01_data.py.
    """
    _check_fields(record, OPENTHOUGHTS_FIELDS)
    return R1_TRACE_TEMPLATE.format(
        system=system_prompt,
        problem=openthoughts_prompt(record, is_stripped),
        reasoning=_text_field(record, "deepseek_reasoning", is_stripped),
        solution=_text_field(record, "deepseek_solution", is_stripped),
    )


def format_lmsys(record: Mapping[str, Any], system_prompt: str = "",
                 eos_token: str = R1_EOS) -> str:
    r"""Render one LMSYS-Chat-1M conversation with R1 chat markers, as the reference does.

    Turns are joined in order with no separator: a system turn's content as it is, a user turn
    after ``<｜User｜>``, an assistant turn after ``<｜Assistant｜>`` and, when it is not the
    conversation's last turn, followed by ``eos_token`` (``prepare_lmsys_dataset.py``). Contents
    are verbatim; there is no ``<think>`` block.

    Args:
        record: a mapping whose ``conversation`` is a list of ``{"role", "content"}`` turns, with
            role ``"system"``, ``"user"`` or ``"assistant"``.
        system_prompt: text put before the first turn; the reference puts none.
        eos_token: the string after each non-final assistant turn; the reference writes R1's
            (:data:`R1_EOS`). Pass the tokenizer's ``eos_token`` for another model.

    Returns:
        The formatted conversation.

    Raises:
        ValueError: the record has no ``conversation``, it is empty, a turn has another role
            (the reference would drop it silently; LMSYS-Chat-1M has none), or a content is not
            a string.

    Used by notebooks/01_data.py.
    """
    _check_fields(record, LMSYS_FIELDS)
    conversation = record["conversation"]
    if not conversation:
        raise ValueError("The record's conversation has no turns.")
    markers = {"system": "", "user": R1_USER, "assistant": R1_ASSISTANT}
    parts = [system_prompt]
    for index, turn in enumerate(conversation):
        role, content = turn.get("role"), turn.get("content")
        if role not in markers:
            raise ValueError(
                f"Turn {index} of the conversation has role={role!r}; valid roles: "
                f"{sorted(markers)}."
            )
        if not isinstance(content, str):
            raise ValueError(
                f"Turn {index} of the conversation has content={content!r}; it must be a string."
            )
        parts.append(markers[role] + content)
        if role == "assistant" and index != len(conversation) - 1:
            parts.append(eos_token)
    return "".join(parts)


def _check_domains(name: str, domains: Any) -> tuple[str, ...]:
    if isinstance(domains, str) or not isinstance(domains, Sequence) or not domains:
        raise ValueError(
            f"{name}={domains!r} must be a non-empty list of OpenThoughts-114k domains, e.g. "
            f"{list(OPENTHOUGHTS_DOMAINS)}."
        )
    unknown = [d for d in domains if d not in OPENTHOUGHTS_DOMAINS]
    if unknown or len(set(domains)) != len(domains):
        raise ValueError(
            f"{name}={list(domains)!r} holds unknown or repeated domains {unknown or 'twice'}; "
            f"valid domains: {list(OPENTHOUGHTS_DOMAINS)}, each at most once."
        )
    return tuple(domains)


def _check_sources(cfg: Any, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, os.PathLike):
            object.__setattr__(cfg, name, os.fspath(value))
        elif not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}={value!r} must be {ACCEPTED_FORMATS}.")
    if cfg.openthoughts_config is not None and (
        not isinstance(cfg.openthoughts_config, str) or not cfg.openthoughts_config
    ):
        raise ValueError(
            f"openthoughts_config={cfg.openthoughts_config!r} must be a hub config name "
            f"such as {OPENTHOUGHTS_CONFIG!r}, or None."
        )
    if not isinstance(cfg.split, str) or not cfg.split:
        raise ValueError(f"split={cfg.split!r} must be a split name such as 'train'.")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False.")


def _check_seed(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative integer.")


@dataclasses.dataclass(frozen=True)
class SourceMixConfig(Config):
    """Which real corpora to read, how many records of each, and how to render them.

    The defaults are the reference's (``prepare_openthoughts_dataset.py``,
    ``prepare_lmsys_dataset.py``): every OpenThoughts record of the six domains and every LMSYS
    conversation, in all languages, rendered verbatim with the R1 system prompt before each
    trace. The reference sizes the mix by *tokens*, each corpus capped separately after packing
    (``reasonlens.data.RealContextConfig.max_tokens_per_source``); no document ratio is set.

    Args:
        openthoughts_source: hub id or local path of OpenThoughts-114k (or data of its schema).
        openthoughts_config: hub config of ``openthoughts_source``; None for the hub default.
            Ignored for local paths.
        lmsys_source: hub id or local path of LMSYS-Chat-1M (or data of its schema).
        split: split read from both sources.
        domains: OpenThoughts domains kept (the reference keeps all six); others are dropped
            before formatting.
        n_reasoning: most traces to draw at random (under ``seed``); None for all, 0 to not read
            OpenThoughts.
        n_chat: most conversations to draw; None for all, 0 to not read LMSYS.
        reasoning_fraction: None (the reference) to keep every drawn record of both sources;
            a number in [0, 1] to balance the sources by *documents* instead (an option): as
            many texts as the counts allow, a ``reasoning_fraction`` share of them traces.
        is_english_only: keep only LMSYS conversations whose ``language`` is ``"English"`` (an
            option; the reference keeps all languages).
        is_stripped: strip surrounding whitespace from trace fields (an option; the reference
            keeps text verbatim).
        seed: seeds the draws from each source and the shuffle of the returned texts.
        system_prompt: text put before every trace (the reference's :data:`R1_SYSTEM_PROMPT`).
        chat_system_prompt: text put before every conversation (the reference puts none).
        chat_eos_token: the string after each non-final assistant turn (R1's EOS in the
            reference; notebook 01 passes its tokenizer's).

    Raises:
        ValueError: a parameter is out of range or of the wrong type; the message names it.

    Used by notebooks/01_data.py.
    """

    openthoughts_source: str = OPENTHOUGHTS_ID
    openthoughts_config: str | None = OPENTHOUGHTS_CONFIG
    lmsys_source: str = LMSYS_ID
    split: str = "train"
    domains: tuple[str, ...] = OPENTHOUGHTS_DOMAINS
    n_reasoning: int | None = None
    n_chat: int | None = None
    reasoning_fraction: float | None = None
    is_english_only: bool = False
    is_stripped: bool = False
    seed: int = 0
    system_prompt: str = R1_SYSTEM_PROMPT
    chat_system_prompt: str = ""
    chat_eos_token: str = R1_EOS

    def __post_init__(self) -> None:
        _check_sources(self, ("openthoughts_source", "lmsys_source"))
        object.__setattr__(self, "domains", _check_domains("domains", self.domains))
        fraction = self.reasoning_fraction
        if fraction is not None:
            check_range("reasoning_fraction", fraction, 0.0, 1.0,
                        "It is the share of reasoning traces among the texts; None keeps every "
                        "drawn record of both sources (the reference).")
        for name in ("n_reasoning", "n_chat"):
            check_range(name, getattr(self, name) if getattr(self, name) is not None else 0, 0,
                        None, "Use None for every record, or 0 to not read this source.")
        is_used = {"n_reasoning": self.uses_openthoughts, "n_chat": self.uses_lmsys}
        if fraction is not None:
            for name, used in is_used.items():
                if used and getattr(self, name) == 0:
                    raise ValueError(
                        f"{name}=0 but reasoning_fraction={fraction} draws from this source; "
                        "use at least 1 record (or None for all), or set reasoning_fraction to "
                        "0 or 1."
                    )
        elif not any(is_used.values()):
            raise ValueError("n_reasoning=0 and n_chat=0 read no source; set one of them to a "
                             "positive count, or to None for every record.")
        for name in ("is_english_only", "is_stripped"):
            _check_flag(name, getattr(self, name))
        _check_seed("seed", self.seed)
        for name in ("system_prompt", "chat_system_prompt", "chat_eos_token"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a string.")

    @property
    def uses_openthoughts(self) -> bool:
        """Whether OpenThoughts is read at all."""
        if self.reasoning_fraction is None:
            return self.n_reasoning != 0
        return self.reasoning_fraction > 0

    @property
    def uses_lmsys(self) -> bool:
        """Whether LMSYS is read at all."""
        if self.reasoning_fraction is None:
            return self.n_chat != 0
        return self.reasoning_fraction < 1


def load_openthoughts(source: str | os.PathLike = OPENTHOUGHTS_ID, split: str = "train",
                      config_name: str | None = OPENTHOUGHTS_CONFIG,
                      domains: Sequence[str] = OPENTHOUGHTS_DOMAINS) -> datasets.Dataset:
    """OpenThoughts-114k records of the given domains, in the dataset's order.

    As the reference's first step (``dataset.filter(lambda s: s['domain'] in domains)``).

    Args:
        source: hub id or local path (see :func:`load_records`).
        split: split to read.
        config_name: hub config; the per-record fields live in ``"metadata"``.
        domains: domains kept, each one of :data:`OPENTHOUGHTS_DOMAINS`.

    Returns:
        The kept records.

    Raises:
        FileNotFoundError: a local source does not exist.
        ValueError: the records lack trace fields, ``domains`` holds an unknown domain, or no
            record is in ``domains`` (the message lists the domains found).

    Used by notebooks/01_data.py.
    """
    domains = _check_domains("domains", domains)
    records = load_records(source, split, OPENTHOUGHTS_FIELDS, config_name=config_name)
    wanted = set(domains)
    kept = records.filter(lambda values: [value in wanted for value in values],
                          input_columns="domain", batched=True, keep_in_memory=True)
    if len(kept) == 0:
        found = sorted({str(value) for value in records["domain"]})
        raise ValueError(
            f"No record of source={str(source)!r} is in domains={list(domains)}; domains found: "
            f"{found[:10]}."
        )
    if len(kept) < len(records):
        logger.info("Kept %d of %d records in domains %s", len(kept), len(records), domains)
    return kept


def load_mixed_texts(cfg: SourceMixConfig) -> pd.DataFrame:
    """Load and render OpenThoughts traces and LMSYS conversations, shuffled under ``cfg.seed``.

    Args:
        cfg: sources, counts, optional document balance, rendering options and seed.

    Returns:
        A DataFrame with one row per text and columns ``text`` (the rendered string), ``kind``
        (``"trace"`` or ``"chat"``), ``source`` (the source it came from) and ``record_idx``
        (the record's position in its source after the domain/language filter, by which
        ``reasonlens.data.real_contexts`` restores the source's order before packing).

    Raises:
        FileNotFoundError: a local source does not exist (see :func:`load_records`).
        ValueError: a source is empty or lacks fields, no record is in ``cfg.domains``, no
            conversation is in English when ``cfg.is_english_only``, or a record cannot be
            rendered (the message names its index and source).

    Used by notebooks/01_data.py.
    """
    trace_rng, chat_rng, mix_rng = (
        np.random.default_rng(seq) for seq in np.random.SeedSequence(cfg.seed).spawn(3)
    )
    traces = chats = None
    if cfg.uses_openthoughts:
        traces = load_openthoughts(cfg.openthoughts_source, cfg.split, cfg.openthoughts_config,
                                   cfg.domains)
    if cfg.uses_lmsys:
        chats = load_records(cfg.lmsys_source, cfg.split, LMSYS_FIELDS)
        if cfg.is_english_only:
            chats = keep_language(chats, "English")
    n_traces = _available(traces, cfg.n_reasoning, "n_reasoning")
    n_chats = _available(chats, cfg.n_chat, "n_chat")
    if cfg.reasoning_fraction is not None:
        n_traces, n_chats = _mix_counts(n_traces, n_chats, cfg.reasoning_fraction)
    trace_idx = _draw(traces, n_traces, trace_rng)
    chat_idx = _draw(chats, n_chats, chat_rng)
    texts = _render(traces, trace_idx, (*OPENTHOUGHTS_FIELDS, "test_cases", "starter_code"),
                    cfg.openthoughts_source,
                    lambda r: format_openthoughts(r, cfg.system_prompt, cfg.is_stripped))
    texts += _render(chats, chat_idx, LMSYS_FIELDS, cfg.lmsys_source,
                     lambda r: format_lmsys(r, cfg.chat_system_prompt, cfg.chat_eos_token))
    frame = pd.DataFrame({
        "text": texts,
        "kind": ["trace"] * n_traces + ["chat"] * n_chats,
        "source": [cfg.openthoughts_source] * n_traces + [cfg.lmsys_source] * n_chats,
        "record_idx": np.asarray(trace_idx + chat_idx, dtype=np.int64),
    })
    frame = frame.iloc[mix_rng.permutation(len(frame))].reset_index(drop=True)
    logger.info("Rendered %d traces and %d chats (%.1f%% traces)", n_traces, n_chats,
                100 * n_traces / max(1, len(frame)))
    return frame


@dataclasses.dataclass(frozen=True)
class ExtractionSetConfig(Config):
    """The stratified OpenThoughts subset the reference scores features and draws dashboards on.

    ``extraction/prepare_openthoughts_subset.py`` (published as
    ``andreuka18/OpenThoughts-10k-DeepSeek-R1``): ``n_samples // len(domains)`` records from each
    domain in turn, each domain shuffled with ``seed``; if that falls short of ``n_samples``
    (a small domain), the first records not yet chosen, in the dataset's order, fill the gap.
    The set keeps this order: all of one domain, then the next. Traces are rendered as for
    training (:func:`format_openthoughts`).

    Args:
        openthoughts_source: hub id or local path of OpenThoughts-114k.
        openthoughts_config: its hub config (``"metadata"``); ignored for local paths.
        split: split to read.
        n_samples: records in the subset (reference: 10,000).
        domains: domains, in the order they are taken (reference: the six, code first).
        seed: the per-domain shuffle seed (reference: 42).
        system_prompt: text before every trace (:data:`R1_SYSTEM_PROMPT`).
        is_stripped: strip surrounding whitespace (an option; the reference keeps text verbatim).

    Raises:
        ValueError: a parameter is out of range or of the wrong type; the message names it.

    Used by notebooks/01_data.py.
    """

    openthoughts_source: str = OPENTHOUGHTS_ID
    openthoughts_config: str | None = OPENTHOUGHTS_CONFIG
    split: str = "train"
    n_samples: int = 10_000
    domains: tuple[str, ...] = OPENTHOUGHTS_DOMAINS
    seed: int = 42
    system_prompt: str = R1_SYSTEM_PROMPT
    is_stripped: bool = False

    def __post_init__(self) -> None:
        _check_sources(self, ("openthoughts_source",))
        object.__setattr__(self, "domains", _check_domains("domains", self.domains))
        check_range("n_samples", self.n_samples, 1, None,
                    "It is the number of records in the subset (reference: 10000).")
        _check_seed("seed", self.seed)
        _check_flag("is_stripped", self.is_stripped)
        if not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt={self.system_prompt!r} must be a string.")


def stratified_indices(domains_of_records: Sequence[str], n_samples: int,
                       domains: Sequence[str] = OPENTHOUGHTS_DOMAINS, seed: int = 42) -> list[int]:
    """Positions of the reference's stratified subset, in its order (see ExtractionSetConfig).

    Args:
        domains_of_records: the ``domain`` of each record, in the dataset's order.
        n_samples: records wanted.
        domains: domains, in the order they are taken.
        seed: each domain's records are permuted as ``datasets.Dataset.shuffle(seed=seed)``
            permutes them (``numpy.random.default_rng(seed).permutation``).

    Returns:
        Record positions: up to ``n_samples // len(domains)`` per domain, domain by domain, then
        the earliest positions not yet taken until there are ``n_samples`` (fewer, with a
        warning, when the records run out; the reference would fail there).

    Raises:
        ValueError: ``n_samples`` is not a positive integer or ``domains`` is not a list of
            known domains.

    Used by notebooks/01_data.py (through ``load_extraction_texts``).
    """
    check_range("n_samples", n_samples, 1)
    if not isinstance(n_samples, int):
        raise ValueError(f"n_samples={n_samples!r} must be an integer.")
    domains = _check_domains("domains", domains)
    per_domain = n_samples // len(domains)
    chosen: list[int] = []
    for domain in domains:
        positions = [i for i, value in enumerate(domains_of_records) if value == domain]
        order = np.random.default_rng(seed).permutation(len(positions))
        chosen += [positions[j] for j in order[:min(len(positions), per_domain)]]
    if len(chosen) < n_samples:
        taken = set(chosen)
        rest = [i for i in range(len(domains_of_records)) if i not in taken]
        needed = n_samples - len(chosen)
        if len(rest) < needed:
            logger.warning("n_samples=%d but only %d records are in domains %s; using them all.",
                           n_samples, len(chosen) + len(rest), list(domains))
        chosen += rest[:needed]
    return chosen


def load_extraction_texts(cfg: ExtractionSetConfig) -> pd.DataFrame:
    """Load the stratified OpenThoughts subset and render it, in the reference's order.

    Args:
        cfg: source, size, domains, seed and rendering.

    Returns:
        A DataFrame with ``text`` (rendered trace), ``domain`` and ``record_idx`` (position in the
        source after the domain filter), one row per record, in subset order. Pack it with
        ``reasonlens.data.pack_transformer_lens`` as the reference does.

    Raises:
        FileNotFoundError: a local source does not exist.
        ValueError: the source is empty, lacks fields, has no record in ``cfg.domains``, or a
            record cannot be rendered.

    Used by notebooks/01_data.py.
    """
    records = load_openthoughts(cfg.openthoughts_source, cfg.split, cfg.openthoughts_config,
                                cfg.domains)
    indices = stratified_indices(records["domain"], cfg.n_samples, cfg.domains, cfg.seed)
    texts = _render(records, indices, (*OPENTHOUGHTS_FIELDS, "test_cases", "starter_code"),
                    cfg.openthoughts_source,
                    lambda r: format_openthoughts(r, cfg.system_prompt, cfg.is_stripped))
    subset = records.select(indices)
    frame = pd.DataFrame({"text": texts, "domain": subset["domain"],
                          "record_idx": np.asarray(indices, dtype=np.int64)})
    logger.info("Extraction subset: %s", frame["domain"].value_counts().to_dict())
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


def _describe(record: Mapping[str, Any]) -> str:
    problem = str(record.get("problem"))
    return f"The record with problem {problem[:60] + ('...' if len(problem) > 60 else '')!r}"


def _text_field(record: Mapping[str, Any], name: str, is_stripped: bool) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise ValueError(f"{_describe(record)} has {name}={value!r}; it must be a string.")
    return value.strip() if is_stripped else value


def _code_instruction(record: Mapping[str, Any]) -> str:
    test_cases = record.get("test_cases")
    try:
        parsed = json.loads(test_cases)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        shown = test_cases if not isinstance(test_cases, str) else test_cases[:60]
        raise ValueError(
            f"{_describe(record)} (domain 'code') has test_cases={shown!r}, not a JSON object "
            "as a string; the reference chooses the code instruction by "
            "json.loads(test_cases).get('fn_name'). Fix the record or leave out domain 'code'."
        )
    return CODE_FUNCTION_INSTRUCTION if parsed.get("fn_name") else CODE_STDIN_INSTRUCTION


def _available(records: datasets.Dataset | None, n_wanted: int | None, name: str) -> int:
    if records is None:
        return 0
    if n_wanted is None:
        return len(records)
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


def _draw(records: datasets.Dataset | None, n: int, rng: np.random.Generator) -> list[int]:
    """Positions of ``n`` records drawn without replacement; all of them, in order, if n is all."""
    if records is None or n == 0:
        return []
    if n == len(records):
        return list(range(n))
    return rng.choice(len(records), size=n, replace=False).tolist()


def _render(records: datasets.Dataset | None, indices: Sequence[int], fields: Sequence[str],
            source: str, render) -> list[str]:
    """Render the records at ``indices``, reading only ``fields`` (those present)."""
    if records is None or not indices:
        return []
    # select (not Dataset.shuffle), so nothing is written beside the data.
    chosen = records.select(indices).select_columns(
        [name for name in fields if name in records.column_names])
    texts = []
    for position, record in zip(indices, chosen):
        try:
            texts.append(render(record))
        except ValueError as exc:
            raise ValueError(f"Record {position} of source={source!r}: {exc}") from exc
    return texts
