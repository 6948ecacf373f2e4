"""The shipped tasks' documents as a problems table, and their scoring (notebooks 06 and 07).

Notebooks 06 and 07 steer and evaluate on the synthetic world's problems by default. On real
profiles they take their problems from the paper's lm-eval tasks instead (``steer_task`` in 06,
``lm_eval_tasks`` in 07): ``task_problems`` builds the tasks with lm-eval's own ``TaskManager``
(so the documents, their processing and the prompt are exactly what ``reasonlens-lm-eval`` sees,
local files included) and returns one row per document; ``score_task_completions`` checks each
completion with the task's own ``process_results`` (``utils.process_math``: math-verify's
equivalence of the last ``\\boxed{}``; ``utils.process_gpqa_results``: the letter), so the
notebooks' accuracy is the harness's ``accuracy``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd

from reasonlens import constants as K
from reasonlens import evaluation
from reasonlens.tasks import TASK_NAMES, TASKS_DIR
from reasonlens.tasks import utils as task_utils

log = logging.getLogger(__name__)

PAPER_GROUP = "reasonlens_paper"
# task -> its per-sample scorer, the ``process_results`` its YAML names
SCORERS = {"aime2024_nofigures": task_utils.process_math, "math-500": task_utils.process_math,
           "openai_gpqa_diamond": task_utils.process_gpqa_results}
# the field each task's question text is in (for display; the model sees ``prompt``)
QUESTION_FIELDS = ("problem", "Question")


def _leaves(task_dict: Mapping) -> dict:
    """``{task name: Task}`` of lm-eval's (possibly nested, for groups) task dict."""
    out = {}
    for value in task_dict.values():
        if isinstance(value, Mapping):
            out.update(_leaves(value))
        else:
            out[value.config.task] = value
    return out


def load_tasks(tasks: Sequence[str], task_args: Mapping | None = None) -> dict:
    """The named lm-eval tasks, built as ``reasonlens-lm-eval`` builds them.

    Args:
        tasks: task names (``aime2024_nofigures``, ``math-500``, ``openai_gpqa_diamond``, the group
            ``reasonlens_paper``); the package's tasks are found without the harness's own index.
        task_args: task arguments (lm-eval's ``--metadata``), e.g. ``{"math500_path": "m.jsonl"}``.

    Returns:
        ``{task name: lm-eval Task}`` in the order given (a group expands to its tasks).

    Raises:
        ValueError: no tasks, or a name that is not one of the package's tasks.
    """
    from lm_eval.tasks import TaskManager, get_task_dict

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    known = set(TASK_NAMES) | {PAPER_GROUP}
    unknown = [t for t in tasks if t not in known]
    if not tasks or unknown:
        raise ValueError(f"tasks={tasks!r}: name one or more of {sorted(known)} (the paper's "
                         "tasks shipped in reasonlens/tasks), e.g. steer_task: math-500.")
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata=dict(task_args or {}))
    leaves = _leaves(get_task_dict(tasks, manager))
    order = [t for name in tasks for t in (TASK_NAMES if name == PAPER_GROUP else (name,))]
    return {t: leaves[t] for t in dict.fromkeys(order)}


def task_prompt(text: str, tokenizer=None, apply_chat_template: bool | None = None) -> str:
    """A task's prompt as the model completes it.

    With a chat template (``apply_chat_template`` True, or None and the tokenizer has one), the
    text is the user turn and the generation prompt follows, as lm-eval's
    ``--apply_chat_template`` writes it; without one, the toy's markers (``world.prompt``).

    Args:
        text: the task's ``doc_to_text``.
        tokenizer: the model's tokenizer (None: the toy's markers).
        apply_chat_template: see above.

    Raises:
        ValueError: ``apply_chat_template`` True for a tokenizer without a chat template.
    """
    from reasonlens.world import prompt

    has_template = bool(getattr(tokenizer, "chat_template", None))
    if apply_chat_template is None:
        apply_chat_template = has_template
    if not apply_chat_template:
        return prompt(text, reasoning=True, tokenizer=None)
    if not has_template:
        raise ValueError("apply_chat_template=True, but the tokenizer has no chat template; "
                         "pass apply_chat_template=None or False.")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def task_problems(tasks: Sequence[str] | str, n_problems: int | None = None,
                  task_args: Mapping | None = None, tokenizer=None,
                  apply_chat_template: bool | None = None) -> pd.DataFrame:
    """The tasks' documents as a problems table: the first ``n_problems`` of each task.

    Args:
        tasks: see ``load_tasks``.
        n_problems: documents per task, in the task's order (all when None).
        task_args: see ``load_tasks`` (local files: ``aime24_path``, ``math500_path``,
            ``gpqa_path``; or the ``REASONLENS_*_PATH`` variables).
        tokenizer, apply_chat_template: how the prompt is written (see ``task_prompt``).

    Returns:
        One row per document: task, doc_id, question (the problem as the dataset words it),
        answer (the gold answer the task checks against: a string, a letter for GPQA), prompt
        (what the model completes), stop (the task's stop strings) and doc (the processed
        document, for ``score_task_completions``).

    Raises:
        ValueError: unknown tasks, ``n_problems`` < 1, or a task without documents.
    """
    if n_problems is not None and int(n_problems) < 1:
        raise ValueError(f"n_problems={n_problems!r} must be at least 1 (or None for all).")
    rows = []
    for name, task in load_tasks(tasks, task_args).items():
        docs = list(task.eval_docs)
        if not docs:
            raise ValueError(f"task {name!r} has no documents; check its data file.")
        stop = list(task.config.generation_kwargs.get("until", []))
        for doc_id, doc in enumerate(docs[:n_problems]):
            text = task.doc_to_text(doc)
            question = next((doc[f] for f in QUESTION_FIELDS if f in doc), text)
            rows.append({"task": name, "doc_id": doc_id, "question": str(question),
                         "answer": str(task.doc_to_target(doc)),
                         "prompt": task_prompt(text, tokenizer, apply_chat_template),
                         "stop": stop, "doc": dict(doc)})
    return pd.DataFrame(rows)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first of the stop strings, as lm-eval cuts a generation."""
    for s in stop:
        if s and s in text:
            text = text.split(s)[0]
    return text


def score_task_completions(frame: pd.DataFrame, problems: pd.DataFrame, tokenizer,
                           words: Sequence[str] = K.REASONING_WORDS) -> pd.DataFrame:
    """Add is_correct (the task's ``accuracy``), exact_match, reasoning_tokens, unclosed_think and
    reasoning_words to completions of ``task_problems``'s prompts.

    Each completion is cut at the task's stop strings and checked by the task's own scorer
    (``SCORERS``), as the harness checks it; the reasoning length is the tokens before the first
    ``</think>`` of the generated ids (all of them when it never came).

    Args:
        frame: rows with prompt_idx (a row position of ``problems``), completion and
            generated_ids (``steering.run_conditions``).
        problems: ``task_problems``'s table.
        tokenizer: the model's tokenizer (to find ``</think>``).
        words: the vocabulary counted in the reasoning part (before ``</think>``).

    Returns:
        A copy of ``frame`` with the five columns, and the problem's task.

    Raises:
        ValueError: a task without a scorer, or a prompt_idx outside ``problems``.
    """
    from reasonlens.data import word_counts
    from reasonlens.harness import Generation

    problems = problems.reset_index(drop=True)
    bad = sorted(set(frame.prompt_idx) - set(range(len(problems))))
    if bad:
        raise ValueError(f"prompt_idx {bad[:5]} are outside problems ({len(problems)} rows).")
    missing = sorted(set(problems.task) - set(SCORERS))
    if missing:
        raise ValueError(f"no scorer for tasks {missing}; scorable tasks are {sorted(SCORERS)}.")
    frame = frame.copy()
    scores = []
    for text, ids, i in zip(frame.completion, frame.generated_ids, frame.prompt_idx):
        row = problems.iloc[i]
        n_reasoning = evaluation.reasoning_length(ids, tokenizer)
        clean = cut_at_stop(text, row.stop).replace(K.THINK_CLOSE, "")
        for special in tokenizer.all_special_tokens:
            clean = clean.replace(special, "")
        scores.append(SCORERS[row.task](row.doc, [Generation(clean, len(ids), n_reasoning,
                                                             n_reasoning < len(ids))]))
    frame["task"] = problems.task.to_numpy()[frame.prompt_idx.to_numpy()]
    frame["is_correct"] = [s["accuracy"] == 1.0 for s in scores]
    frame["exact_match"] = [s["exact_match"] == 1.0 for s in scores]
    frame["reasoning_tokens"] = [s["reasoning_length"] for s in scores]
    frame["unclosed_think"] = [s["unclosed_think"] == 1.0 for s in scores]
    thinking = [c.split(K.THINK_CLOSE)[0] for c in frame.completion]
    frame["reasoning_words"] = word_counts(thinking, words).sum(axis=1).to_numpy()
    return frame


def tasks_for_run(run, requested, fallback):
    """The tasks a notebook takes its problems from: ``requested`` when given; else None (the
    synthetic world's problems) when notebook 01 wrote them; else ``fallback``, the paper's tasks
    for a real profile that names none (it has no world).

    Args:
        run: the ``artifacts.RunDir``.
        requested: the profile's task(s) (``steer_task``, ``lm_eval_tasks``) or None.
        fallback: the task(s) a run without a world uses.
    """
    if requested:
        return requested
    if run.path(K.PROBLEMS).exists():
        return None
    log.warning("no %s in this run (a real profile) and no task named: using %s",
                K.PROBLEMS, fallback)
    return fallback


def score_problems(frame: pd.DataFrame, problems: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """Score completions of either kind of problems table: ``task_problems``'s (with the tasks'
    checks, ``score_task_completions``) or the world's (``evaluation.score_completions``, the
    last "answer is N")."""
    if "doc" in problems.columns:
        return score_task_completions(frame, problems, tokenizer)
    return evaluation.score_completions(frame, problems.answer.tolist(), tokenizer)
