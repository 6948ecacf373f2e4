"""The seeded generator of the synthetic reasoning world (docs/design.md, "What the system does").

``generate_world(WorldConfig(...))`` returns three tables: problems (with split and true answer),
steps (every trace line with ground-truth labels) and documents (the texts both toy models train
on). The same config gives byte-identical tables.
"""

from __future__ import annotations

import dataclasses
import random

import pandas as pd

from reasonlens import constants as K
from reasonlens.config import Config, check_range
from reasonlens.world.chat import sample_chat
from reasonlens.world.families import FAMILIES, get_family
from reasonlens.world.formatting import ChatFormat, chat_format
from reasonlens.world.traces import TraceRates, sample_trace


@dataclasses.dataclass(frozen=True)
class WorldConfig(Config):
    """Parameters of the synthetic reasoning world.

    Args:
        seed: the seed; the same config gives byte-identical data.
        families: problem families to draw from (see ``reasonlens.world.families.FAMILIES``; the
            list families "maximum" and "counting" need induction-style lookups that a small model
            learns slowly, and the toy model gets only about half of "clock"'s easy steps right
            in the default budget, so the default uses the two arithmetic ones).
        n_problems: distinct problems in all, split by ``split_fractions`` (train, val, test).
        min_items, max_items: difficulty, the number of updates (= compute steps) per problem.
        mistake_rate: chance of a slip (off by one) on an easy compute step.
        slip_rate: chance that a hard compute step (a carry, a wrap) slips the typical way (the
            dropped carry). Above 0.5 the slip is what a model imitating the traces writes.
        reflect_rates: chance of a reflection after a compute step that is easy, hard but looks
            easy, and looks hard (``Family.hardness``). A reflection recomputes the step by a
            route without the carry and corrects a slip. Below 0.5 a greedy model seldom
            reflects; above, it usually does.
        hesitation_rate: chance of an uncertainty word before a compute step (tripled before one
            that looks hard).
        explore_rate: chance of an exploration line after the plan.
        chat_fraction: small-talk exchanges per problem, as a fraction of ``n_problems``.
    """

    seed: int = 0
    families: tuple[str, ...] = ("arithmetic", "alternating")
    n_problems: int = 20000
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_items: int = 3
    max_items: int = 5
    mistake_rate: float = 0.03
    slip_rate: float = 0.7
    reflect_rates: tuple[float, float, float] = (0.05, 0.3, 0.85)
    hesitation_rate: float = 0.1
    explore_rate: float = 0.2
    chat_fraction: float = 0.3

    def __post_init__(self):
        if not self.families:
            raise ValueError(f"families is empty; choose from {sorted(FAMILIES)}.")
        for name in self.families:
            get_family(name)
        check_range("n_problems", self.n_problems, 3, hint="Use at least 3 (one per split).")
        check_range("min_items", self.min_items, 1)
        check_range("max_items", self.max_items, self.min_items,
                    hint="max_items must be at least min_items.")
        for name in ("mistake_rate", "slip_rate", "hesitation_rate", "explore_rate"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        if len(self.reflect_rates) != 3 or not all(0 <= r <= 1 for r in self.reflect_rates):
            raise ValueError(f"reflect_rates={self.reflect_rates!r} must be three probabilities "
                             "(easy, hard but looks easy, looks hard), e.g. [0.05, 0.3, 0.85].")
        check_range("chat_fraction", self.chat_fraction, 0.0)
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-9 or min(
                self.split_fractions) <= 0:
            raise ValueError(f"split_fractions={self.split_fractions!r} must be three positive "
                             "fractions (train, val, test) that sum to 1, e.g. [0.8, 0.1, 0.1].")

    @property
    def rates(self) -> TraceRates:
        return TraceRates(self.mistake_rate, self.slip_rate, tuple(self.reflect_rates),
                          self.hesitation_rate, self.explore_rate)


@dataclasses.dataclass
class World:
    """The generated tables. See ``generate_world``."""

    problems: pd.DataFrame
    steps: pd.DataFrame
    documents: pd.DataFrame


def prompt(question: str, reasoning: bool, tokenizer=None) -> str:
    """The prompt a model completes: the user turn, then the assistant turn (opened with
    ``<think>`` for a reasoning model), in ``tokenizer``'s chat template when it has one, else in
    the toy's markers (``formatting.chat_format``)."""
    return chat_format(tokenizer).prompt(question, reasoning)


def answer_text(answer: int) -> str:
    return f"The answer is {answer}."


def generate_world(cfg: WorldConfig, fmt: ChatFormat | None = None) -> World:
    """Generate problems, traces with labelled steps, and the documents of both training mixes.

    Each problem appears in exactly one split and yields a trace document (``kind='trace'``) and a
    plain exchange (``kind='plain'``); small talk (``kind='chat'``) has no problem. The reasoning
    model trains on traces + plain + chat, the base model on plain + chat.

    Args:
        cfg: the world's parameters.
        fmt: how exchanges are written (default ``ChatFormat.toy()``; a pretrained model's
            ``ChatFormat.from_tokenizer``). The problems and steps do not depend on it.

    Returns:
        A ``World`` of three DataFrames.

    Raises:
        ValueError: when the families cannot yield ``n_problems`` distinct problems.
    """
    fmt = fmt or ChatFormat.toy()
    problems = _sample_problems(cfg)
    problem_rows, step_rows, doc_rows = [], [], []
    for pid, (split, problem) in enumerate(problems):
        rng = random.Random(f"{cfg.seed}-trace-{pid}")
        family = get_family(problem.family)
        steps, stated = sample_trace(family, problem, cfg.rates, rng)
        problem_rows.append(dict(
            problem_id=pid, split=split, family=problem.family, question=problem.question,
            answer=problem.answer, n_items=len(problem.items), trace_answer=stated,
            trace_is_correct=stated == problem.answer,
            n_mistakes=sum(not s.is_correct for s in steps if s.kind == "compute"),
            n_corrections=sum(s.kind == "correct" for s in steps),
            n_reflections=sum(s.kind in ("check", "correct") for s in steps)))
        for idx, step in enumerate(steps):
            step_rows.append(dict(problem_id=pid, split=split, family=problem.family,
                                  step_idx=idx, **dataclasses.asdict(step)))
        reasoning = "\n".join(s.text for s in steps)
        trace = fmt.exchange(problem.question, f"{K.THINK_OPEN}\n{reasoning}\n{K.THINK_CLOSE}\n"
                                               f"{answer_text(stated)}")
        plain = fmt.exchange(problem.question, answer_text(problem.answer))
        doc_rows.append(dict(problem_id=pid, split=split, kind="trace", text=trace))
        doc_rows.append(dict(problem_id=pid, split=split, kind="plain", text=plain))
    n_chat = round(cfg.chat_fraction * cfg.n_problems)
    for i in range(n_chat):
        rng = random.Random(f"{cfg.seed}-chat-{i}")
        user, assistant = sample_chat(rng)
        split = _split_of(i, n_chat, cfg.split_fractions)
        doc_rows.append(dict(problem_id=-1, split=split, kind="chat",
                             text=fmt.exchange(user, assistant)))
    documents = pd.DataFrame(doc_rows)
    documents.insert(0, "doc_id", range(len(documents)))
    return World(pd.DataFrame(problem_rows), pd.DataFrame(step_rows), documents)


def _sample_problems(cfg: WorldConfig) -> list[tuple[str, object]]:
    """Distinct problems (by family, start and items, whatever the wording), each in one split."""
    seen, out = set(), []
    max_tries = 50 * cfg.n_problems
    for attempt in range(max_tries):
        if len(out) == cfg.n_problems:
            break
        rng = random.Random(f"{cfg.seed}-problem-{attempt}")
        family = get_family(cfg.families[attempt % len(cfg.families)])
        problem = family.sample(rng, rng.randint(cfg.min_items, cfg.max_items))
        key = (problem.family, problem.start, problem.items)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    if len(out) < cfg.n_problems:
        raise ValueError(f"n_problems={cfg.n_problems} distinct problems could not be drawn from "
                         f"families={list(cfg.families)} with items {cfg.min_items}-{cfg.max_items} "
                         f"(found {len(out)}). Lower n_problems or raise max_items.")
    order = list(range(cfg.n_problems))
    random.Random(f"{cfg.seed}-split").shuffle(order)
    splits = [""] * cfg.n_problems
    for rank, i in enumerate(order):
        splits[i] = _split_of(rank, cfg.n_problems, cfg.split_fractions)
    return list(zip(splits, out))


def _split_of(rank: int, n: int, fractions: tuple[float, float, float]) -> str:
    train_end = round(fractions[0] * n)
    val_end = train_end + max(1, round(fractions[1] * n))
    return "train" if rank < train_end else "val" if rank < val_end else "test"
