"""Generation, answer checking and confidence intervals (notebooks 02 and 07).

Accuracy of a proportion gets a Wilson score interval; a difference between two models or two
conditions on the same problems gets a paired bootstrap interval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from reasonlens import constants as K
from reasonlens.world import prompt

ANSWER_RE = re.compile(r"answer is (-?\d+)")
NUMBER_RE = re.compile(r"-?\d+")


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 160,
             batch_size: int = 64, temperature: float = 0.0, seed: int = 0,
             desc: str = "generate", return_ids: bool = False,
             generate_kwargs: dict | None = None):
    """Complete each prompt with a transformers causal LM (KV cache, left padding).

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer (with a pad token).
        prompts: texts to complete; special tokens are spelled out in them.
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per ``generate`` call.
        temperature: 0 for greedy decoding, else sampling temperature.
        seed: sampling seed; the completions depend on it alone, and the global RNG state is
            left as it was.
        desc: progress-bar label.

        return_ids: also return the new token ids of each completion (up to its EOS).
        generate_kwargs: more Hugging Face ``generate`` arguments (e.g. ``top_p``, ``top_k``,
            ``repetition_penalty``); they override the sampling defaults above.

    Returns:
        The completions (new tokens only, up to EOS), decoded with special tokens kept; with
        ``return_ids``, a pair ``(completions, ids)``.
    """
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0.")
    sampling = (dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0
                else dict(do_sample=False))
    eos_id = tokenizer.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[list[int]] = []
    # seeded here, for sampling alone; the caller's RNG is kept. no_grad as a block, not a
    # decorator: mutmut skips decorated functions.
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        try:
            for start in tqdm(range(0, len(prompts), batch_size), desc=desc, mininterval=2.0):
                batch = tokenizer(list(prompts[start: start + batch_size]), return_tensors="pt",
                                  padding=True, add_special_tokens=False)
                ids = model.generate(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"],
                                     max_new_tokens=max_new_tokens, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_id,
                                     **sampling | (generate_kwargs or {}))
                for row in ids[:, batch["input_ids"].shape[1]:].tolist():
                    out.append(row[:row.index(eos_id)] if eos_id in row else row)
        finally:
            tokenizer.padding_side = side
    texts = tokenizer.batch_decode(out, skip_special_tokens=False)
    return (texts, out) if return_ids else texts


def parse_answer(completion: str, is_last_number_accepted: bool = False) -> int | None:
    """The final answer stated in a completion: the last "answer is N" after ``</think>`` if the
    trace closed, else the last one anywhere; None if there is none.

    With ``is_last_number_accepted``, a completion with no "answer is N" gives its last integer
    instead (after ``</think>`` if closed), the usual lenient reading of a model that answers in
    its own words (a pretrained instruct model that never saw the world's answer format)."""
    tail = completion.split(K.THINK_CLOSE)[-1]
    found = ANSWER_RE.findall(tail) or ANSWER_RE.findall(completion)
    if not found and is_last_number_accepted:
        found = NUMBER_RE.findall(tail)
    return int(found[-1]) if found else None


def think_end_ids(tokenizer, think_end_token: str | int = K.THINK_CLOSE) -> list[int]:
    """The token ids that close a reasoning trace, as the tokenizer writes ``think_end_token``.

    An integer is an id already (the reference's ``cutoff_token=128014``). A string that is one
    token of the vocabulary, special or not, is that token's id, so ``"</think>"`` works also
    where it is a special token (which decoding with ``skip_special_tokens`` would drop). Any
    other string is the id sequence the tokenizer encodes it to, without special tokens added.

    Args:
        tokenizer: a transformers tokenizer.
        think_end_token: the closing marker, as a string or a token id.

    Returns:
        One id, or the ids of a marker the vocabulary splits into several tokens.

    Raises:
        ValueError: an id outside the vocabulary, or a string that encodes to no tokens.
    """
    if isinstance(think_end_token, int) or str(think_end_token).isdigit():
        token_id = int(think_end_token)
        if not 0 <= token_id < len(tokenizer):
            raise ValueError(f"think_end_token={think_end_token!r} is not a token id of this "
                             f"tokenizer (0..{len(tokenizer) - 1}); pass the id or the string, "
                             "e.g. think_end_token='</think>'.")
        return [token_id]
    vocab = tokenizer.get_vocab()
    if think_end_token in vocab:
        return [vocab[think_end_token]]
    ids = tokenizer.encode(think_end_token, add_special_tokens=False)
    if not ids:
        raise ValueError(f"think_end_token={think_end_token!r} encodes to no tokens; pass the "
                         "marker that closes the reasoning, e.g. think_end_token='</think>'.")
    return list(ids)


def reasoning_length(ids: Sequence[int], tokenizer, think_end_token: str | int = K.THINK_CLOSE
                     ) -> int:
    """Generated tokens before the first ``</think>`` (all of them if the trace never closes).

    The reference's measure (its vLLM model's ``cutoff_token``): the index of the first closing
    token in the completion, or the completion's length when it is absent.

    Args:
        ids: ``[n_new]`` the completion's token ids (without the prompt).
        tokenizer: the model's tokenizer.
        think_end_token: the closing marker, a string or a token id (see ``think_end_ids``).

    Returns:
        The number of tokens before the marker.

    Raises:
        ValueError: a marker the tokenizer cannot write (see ``think_end_ids``).
    """
    ids = list(ids)
    close = think_end_ids(tokenizer, think_end_token)
    for start in range(len(ids) - len(close) + 1):
        if ids[start: start + len(close)] == close:
            return start
    return len(ids)


def evaluate_answers(model, tokenizer, problems: pd.DataFrame, reasoning: bool,
                     max_new_tokens: int = 160, batch_size: int = 64,
                     desc: str = "evaluate", is_last_number_accepted: bool = False
                     ) -> pd.DataFrame:
    """Greedy answers of ``model`` on ``problems`` and whether each is right.

    Args:
        model, tokenizer: a transformers causal LM and its tokenizer.
        problems: rows with ``problem_id``, ``question``, ``answer``.
        reasoning: prompt with ``<think>`` (the reasoning model) or ask for the answer directly;
            the prompt is in the tokenizer's chat template when it has one (``world.prompt``).
        max_new_tokens, batch_size: generation settings.
        desc: progress-bar label.
        is_last_number_accepted: read answers as ``parse_answer`` does with that option.

    Returns:
        One row per problem: problem_id, family, completion, predicted, is_correct,
        reasoning_tokens.
    """
    if len(problems) == 0:
        raise ValueError("problems is empty: nothing to evaluate. Check the split and n_eval.")
    prompts = [prompt(q, reasoning=reasoning, tokenizer=tokenizer) for q in problems["question"]]
    completions, ids = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=desc,
                                return_ids=True)
    predicted = [parse_answer(c, is_last_number_accepted) for c in completions]
    return pd.DataFrame({
        "problem_id": problems["problem_id"].to_numpy(),
        "family": problems["family"].to_numpy(),
        "completion": completions,
        "predicted": pd.array(predicted, dtype="Int64"),
        "is_correct": [p is not None and p == a for p, a in zip(predicted, problems["answer"])],
        "reasoning_tokens": [reasoning_length(i, tokenizer) if reasoning else 0 for i in ids],
    })


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def accuracy_table(results: dict[str, pd.DataFrame], by: str | None = None) -> pd.DataFrame:
    """Accuracy with Wilson 95% intervals per model (and per ``by`` group, e.g. family)."""
    rows = []
    for name, frame in results.items():
        groups = frame.groupby(by) if by else [("all", frame)]
        for key, group in groups:
            k, n = int(group["is_correct"].sum()), len(group)
            lo, hi = wilson_interval(k, n)
            rows.append({"model": name, **({by: key} if by else {}), "n": n,
                         "accuracy": k / n, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def bootstrap_interval(values: Sequence[float], n_boot: int = 5000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile bootstrap interval: ``(mean, ci_low, ci_high)``.

    Raises:
        ValueError: ``values`` is empty.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("values is empty: nothing to bootstrap.")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return (float(values.mean()), float(np.percentile(means, tail)),
            float(np.percentile(means, 100 - tail)))


def paired_bootstrap_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 5000,
                                seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired items with a percentile bootstrap interval.

    Returns:
        ``(difference, ci_low, ci_high)``.

    Raises:
        ValueError: when ``a`` and ``b`` differ in length or are empty.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be paired, non-empty samples (got {a.shape}, {b.shape}).")
    return bootstrap_interval(a - b, n_boot, seed, level)


def score_completions(frame: pd.DataFrame, answers: Sequence[int], tokenizer,
                      words: Sequence[str] = K.REASONING_WORDS) -> pd.DataFrame:
    """Add is_correct, reasoning_tokens and reasoning_words to completions.

    Args:
        frame: rows with prompt_idx, completion and generated_ids (``steering.run_conditions``).
        answers: the right answer of each prompt, by prompt_idx.
        tokenizer: the model's tokenizer (to find ``</think>``).
        words: the vocabulary counted in the reasoning part (before ``</think>``).

    Returns:
        A copy of ``frame`` with the three columns.
    """
    from reasonlens.data import word_counts

    frame = frame.copy()
    answers = list(answers)
    frame["is_correct"] = [parse_answer(c) == answers[i]
                           for c, i in zip(frame.completion, frame.prompt_idx)]
    frame["reasoning_tokens"] = [reasoning_length(ids, tokenizer) for ids in frame.generated_ids]
    thinking = [c.split(K.THINK_CLOSE)[0] for c in frame.completion]
    frame["reasoning_words"] = word_counts(thinking, words).sum(axis=1).to_numpy()
    return frame


METRICS = ("is_correct", "reasoning_tokens", "reasoning_words")


def condition_table(frame: pd.DataFrame, reference: str = "unsteered",
                    metrics: Sequence[str] = METRICS, n_boot: int = 5000,
                    seed: int = 0) -> pd.DataFrame:
    """Each condition's metrics with bootstrap 95% intervals, and paired differences to a reference.

    Args:
        frame: scored completions (``score_completions``), one row per condition and prompt.
        reference: the condition others are compared with, prompt by prompt.
        metrics: columns to summarise (booleans count as 0/1).
        n_boot, seed: bootstrap settings.

    Returns:
        One row per condition (in order of appearance): n, then for each metric m: m, m_low,
        m_high, and m_diff, m_diff_low, m_diff_high (condition minus reference, paired).

    Raises:
        ValueError: ``reference`` is not a condition, or a condition covers other prompts.
    """
    if reference not in set(frame.condition):
        raise ValueError(f"reference={reference!r} is not a condition; conditions are "
                         f"{list(dict.fromkeys(frame.condition))}.")
    base = frame[frame.condition == reference].set_index("prompt_idx").sort_index()
    rows = []
    for name, group in frame.groupby("condition", sort=False):
        group = group.set_index("prompt_idx").sort_index()
        if not group.index.equals(base.index):
            raise ValueError(f"condition {name!r} covers other prompts than {reference!r}; "
                             "differences must be paired.")
        row = {"condition": name, "n": len(group)}
        for m in metrics:
            x, r = group[m].astype(float), base[m].astype(float)
            row[m], row[f"{m}_low"], row[f"{m}_high"] = bootstrap_interval(x, n_boot, seed)
            (row[f"{m}_diff"], row[f"{m}_diff_low"],
             row[f"{m}_diff_high"]) = paired_bootstrap_difference(x, r, n_boot, seed)
        rows.append(row)
    return pd.DataFrame(rows)


def headline_numbers(table: pd.DataFrame, condition: str,
                     reference: str = "unsteered") -> dict[str, float | list[float] | int]:
    """A condition's change against the reference, as numbers.

    Args:
        table: ``condition_table`` output.
        condition: the steered condition.
        reference: the unsteered condition.

    Returns:
        ``delta_accuracy`` (fraction) and ``delta_accuracy_ci`` (its paired 95% interval, two
        numbers); ``delta_length_pct`` and ``delta_length_pct_ci``, the reasoning-length change in
        % of the reference's mean length (the paired interval of the difference divided by that
        mean); ``accuracy`` and ``reference_accuracy``; ``n_problems``.

    Raises:
        KeyError: a condition the table lacks.
    """
    rows = table.set_index("condition")
    row, base = rows.loc[condition], rows.loc[reference]
    pct = 100 / base["reasoning_tokens"]
    return {"delta_accuracy": float(row["is_correct_diff"]),
            "delta_accuracy_ci": [float(row["is_correct_diff_low"]),
                                  float(row["is_correct_diff_high"])],
            "delta_length_pct": float(row["reasoning_tokens_diff"] * pct),
            "delta_length_pct_ci": [float(row["reasoning_tokens_diff_low"] * pct),
                                    float(row["reasoning_tokens_diff_high"] * pct)],
            "accuracy": float(row["is_correct"]), "reference_accuracy": float(base["is_correct"]),
            "n_problems": int(row["n"])}


def headline(table: pd.DataFrame, condition: str, reference: str = "unsteered") -> dict[str, str]:
    """``headline_numbers`` as text: accuracy change in points and length change in % of the
    reference, each with its 95% interval."""
    h = headline_numbers(table, condition, reference)
    fmt = lambda v, ci, k: f"{k * v:+.1f} [{k * ci[0]:+.1f}, {k * ci[1]:+.1f}]"  # noqa: E731
    return {"accuracy change (points)": fmt(h["delta_accuracy"], h["delta_accuracy_ci"], 100),
            "length change (%)": fmt(h["delta_length_pct"], h["delta_length_pct_ci"], 1)}


def best_condition(table: pd.DataFrame, candidates: Sequence[str]) -> str:
    """The candidate condition with the highest accuracy (the first listed among ties): how a
    strength is chosen on validation problems before it is reported on test problems.

    Raises:
        ValueError: no candidate is in the table.
    """
    rows = table.set_index("condition")
    present = [c for c in candidates if c in rows.index]
    if not present:
        raise ValueError(f"none of the candidates {list(candidates)} is a condition of the table; "
                         f"conditions are {list(rows.index)}.")
    return max(present, key=lambda c: (rows.loc[c, "is_correct"], -present.index(c)))