"""Datasets, prompts and scores of the shipped tasks (the YAMLs beside this file name them).

Each task reads the dataset the reference reads (its hub id, as in the reference's task YAMLs) or,
to run offline, a local JSON Lines or Parquet file with the same fields, named by a task argument
(``--metadata '{"aime24_path": "aime.jsonl"}'``) or an environment variable
(``REASONLENS_AIME24_PATH``, ``REASONLENS_MATH500_PATH``, ``REASONLENS_GPQA_PATH``); the task
argument wins over the variable.

Scores per sample (each task's mean is its metric): ``exact_match`` (the reference's rule
without its LLM judge), ``math_verify`` (math tasks) or ``letter_match`` (GPQA), the rule-based
check that is the task's ``accuracy``, ``disagreement`` (the two checks differ),
``reasoning_length`` (tokens before ``</think>``, all of them when it never came),
``unclosed_think`` (``</think>`` never came) and ``n_tokens`` (the completion's length). The
lengths need ``reasonlens-steered``, which records the generated token ids; other models get NaN.
``llm_match`` appears when the reference's LLM judge is on (``answers.LLMVerifier.from_env``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from pathlib import Path

import datasets
import pandas as pd

from reasonlens import answers

log = logging.getLogger(__name__)

# (hub id, hub config, split, task argument, environment variable, required fields); the hub ids and
# splits are the reference's task YAMLs'
SOURCES = {
    "aime24": ("simplescaling/aime24_nofigures", None, "train", "aime24_path",
               "REASONLENS_AIME24_PATH", ("problem", "answer")),
    "math500": ("HuggingFaceH4/MATH-500", None, "test", "math500_path",
                "REASONLENS_MATH500_PATH", ("problem", "solution")),
    "gpqa": ("Idavidrein/gpqa", "gpqa_diamond", "train", "gpqa_path", "REASONLENS_GPQA_PATH",
             ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
              "Incorrect Answer 3")),
}

# openai/simple-evals' multiple-choice template, as the reference's GPQA task words it
GPQA_TEMPLATE = """
Answer the following multiple choice question. The last line of your response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering.

{Question}

A) {choice1}
B) {choice2}
C) {choice3}
D) {choice4}
""".strip()  # noqa: E501 (the prompt, word for word)
# the question as the reference shows it to its LLM judge
GPQA_JUDGE_QUESTION = ("{Question}\nAnswer Choices:\n(A) {choice1}\n(B) {choice2}\n(C) {choice3}\n"
                       "(D) {choice4}")
GPQA_SHUFFLE_SEED = 0  # lm-eval's default random seed, under which the reference shuffled


def load_source(source: str, **task_args) -> datasets.DatasetDict:
    """The documents of one benchmark, from a local file when one is named, else from the hub.

    Args:
        source: ``aime24``, ``math500`` or ``gpqa``.
        **task_args: the task's metadata (``--metadata`` and model_args, as lm-eval passes them);
            ``<source>_path`` names a local file.

    Returns:
        The documents under the split the task reads.

    Raises:
        FileNotFoundError: a named local file that does not exist.
        ValueError: an unknown source, a file type other than JSON Lines/JSON/Parquet, or a file
            without the benchmark's fields.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {sorted(SOURCES)}.")
    hub_id, config, split, arg, variable, fields = SOURCES[source]
    path = task_args.get(arg) or os.environ.get(variable)
    if not path:
        log.info("%s: loading %s from the hub (set %s to a local file to run offline)",
                 source, hub_id, variable)
        return datasets.load_dataset(hub_id, config)
    named = f"{arg}={path!r}" if task_args.get(arg) else f"{variable}={path!r}"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{named} does not exist. Point {variable} (or the task argument "
                                f"{arg}) at a JSON Lines or Parquet file with the fields "
                                f"{list(fields)}, or unset it to read {hub_id} from the hub.")
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text()
        rows = (json.loads(text) if text.lstrip().startswith("[")
                else [json.loads(line) for line in text.splitlines() if line.strip()])
        frame = pd.DataFrame(rows)
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"{named} must end in .jsonl, .json or .parquet.")
    missing = [f for f in fields if f not in frame.columns]
    if missing or len(frame) == 0:
        raise ValueError(f"{named} has {len(frame)} rows and lacks the fields {missing}; "
                         f"{hub_id}'s documents need {list(fields)}.")
    return datasets.DatasetDict({split: datasets.Dataset.from_pandas(frame, preserve_index=False)})


def load_aime24(**task_args) -> datasets.DatasetDict:
    """AIME-2024 without figures (``simplescaling/aime24_nofigures``), see ``load_source``."""
    return load_source("aime24", **task_args)


def load_math500(**task_args) -> datasets.DatasetDict:
    """MATH-500 (``HuggingFaceH4/MATH-500``), see ``load_source``."""
    return load_source("math500", **task_args)


def load_gpqa(**task_args) -> datasets.DatasetDict:
    """GPQA-Diamond (``Idavidrein/gpqa``, config ``gpqa_diamond``, gated), see ``load_source``.

    The task argument ``gpqa_shuffle_seed`` is kept for ``process_gpqa`` (lm-eval passes task
    arguments to the loader only), in a column of that name.
    """
    seed = int(task_args.get("gpqa_shuffle_seed", GPQA_SHUFFLE_SEED))
    data = load_source("gpqa", **task_args)
    return datasets.DatasetDict({name: split.add_column("gpqa_shuffle_seed", [seed] * len(split))
                                 for name, split in data.items()})


def process_aime(dataset: datasets.Dataset) -> datasets.Dataset:
    """AIME documents: the problem and its answer as a string, ``"023"`` read as ``"23"``."""
    return dataset.map(lambda doc: {"problem": doc["problem"],
                                    "answer": answers.normalize_gold(doc["answer"])})


def process_math500(dataset: datasets.Dataset) -> datasets.Dataset:
    """MATH-500 documents: the answer is the last box of the solution, as the reference takes it
    (the ``answer`` field where the solution has no box)."""
    def gold(doc):
        boxed = answers.last_boxed(doc["solution"])
        if boxed is None:
            if "answer" not in doc:
                raise ValueError(f"a MATH-500 solution has no \\boxed answer and the document no "
                                 f"answer field: {doc['solution'][:80]!r}")
            boxed = str(doc["answer"])
        return {"answer": boxed}
    return dataset.map(gold)


def _clean_choice(text) -> str:
    """The reference's clean-up of a GPQA choice (strip, ``" [title]"`` to ``". "``, no
    ``[...]``, single spaces)."""
    if text is None:
        return " "
    text = str(text).strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def shuffle_choices(question: str, choices: list[str], seed: int = GPQA_SHUFFLE_SEED) -> list[str]:
    """The four choices in an order drawn from the seed and the question alone.

    The reference shuffles with Python's global RNG inside ``datasets.map``, so its order depends
    on what ran before; here each question's order is reproducible on its own.

    Args:
        question: the question text (part of the seed).
        choices: the four choices, the correct one last.
        seed: the shuffle seed (task argument ``gpqa_shuffle_seed``).

    Returns:
        The shuffled choices.
    """
    order = list(choices)
    random.Random(f"{seed}:{question}").shuffle(order)
    return order


def process_gpqa(dataset: datasets.Dataset) -> datasets.Dataset:
    """GPQA documents: cleaned, seeded-shuffled choices ``choice1..4`` and the right letter."""
    def shuffle(doc):
        correct = _clean_choice(doc["Correct Answer"])
        choices = [_clean_choice(doc[f"Incorrect Answer {i}"]) for i in (1, 2, 3)] + [correct]
        choices = shuffle_choices(doc["Question"], choices,
                                  int(doc.get("gpqa_shuffle_seed", GPQA_SHUFFLE_SEED)))
        return {**{f"choice{i + 1}": c for i, c in enumerate(choices)}, "choices": choices,
                "answer": "ABCD"[choices.index(correct)]}
    return dataset.map(shuffle)


def gpqa_prompt(doc: dict) -> str:
    """The reference's GPQA prompt (simple-evals' template) for a processed document."""
    return GPQA_TEMPLATE.format(Question=doc["Question"], **{f"choice{i}": doc[f"choice{i}"]
                                                            for i in (1, 2, 3, 4)})


_warned = set()


def _lengths(completion) -> dict[str, float]:
    """The completion's recorded token counts (``harness.Generation``), NaN when not recorded."""
    n_reasoning = getattr(completion, "n_reasoning_tokens", None)
    if n_reasoning is None:
        if "lengths" not in _warned:
            _warned.add("lengths")
            log.warning("completions carry no token counts: reasoning_length, unclosed_think and "
                        "n_tokens are NaN. Evaluate with --model reasonlens-steered to get them.")
        return {"reasoning_length": math.nan, "unclosed_think": math.nan, "n_tokens": math.nan}
    return {"reasoning_length": float(n_reasoning),
            "unclosed_think": float(not completion.is_think_closed),
            "n_tokens": float(completion.n_tokens)}


def process_math(doc: dict, results: list) -> dict[str, float]:
    """Scores and lengths of one math completion (AIME-2024, MATH-500); see the module doc."""
    completion = results[0]
    exact = answers.exact_match(completion, doc["answer"])
    verified = answers.math_equal(answers.extract_answer(completion), doc["answer"])
    out = {"accuracy": float(verified), "exact_match": float(exact),
           "math_verify": float(verified), "disagreement": float(exact != verified),
           **_lengths(completion)}
    judge = answers.LLMVerifier.from_env()
    if judge is not None:
        out["llm_match"] = float(judge.math_match(answers.extract_answer(completion),
                                                  doc["answer"]))
    return out


def process_gpqa_results(doc: dict, results: list) -> dict[str, float]:
    """Scores and lengths of one GPQA completion; see the module doc."""
    completion = results[0]
    exact = answers.reference_letter(completion) == doc["answer"]
    letter = answers.read_letter(completion) == doc["answer"]
    out = {"accuracy": float(letter), "exact_match": float(exact), "letter_match": float(letter),
           "disagreement": float(exact != letter), **_lengths(completion)}
    judge = answers.LLMVerifier.from_env()
    if judge is not None:
        question = GPQA_JUDGE_QUESTION.format(Question=doc["Question"], **{
            f"choice{i}": doc[f"choice{i}"] for i in (1, 2, 3, 4)})
        out["llm_match"] = float(judge.letter(question, completion) == doc["answer"])
    return out
