"""Reasoning traces of the synthetic world, with deliberate mistakes caught after reflection.

A trace is a list of steps (one line each): a plan, optional exploration, one *compute* step per
item of the problem's fold, *check* steps that verify a right step or *correct* a wrong one, and a
conclusion. The reasoning vocabulary of Galichin et al. (2025) appears in its real roles:
uncertainty ("hmm", "maybe", "perhaps") before error-prone steps, reflection ("wait", "let me")
before checks, contrast ("but", "however") in corrections, exploration ("alternatively",
"another") in the opening, and conclusion ("therefore"). A mistake that no check catches carries
into the final answer, so reflecting changes the outcome.
"""

from __future__ import annotations

import dataclasses
import random

from reasonlens.world.families import Family, Problem

HESITATIONS = ("Hmm, ", "Maybe ", "Perhaps ")
REFLECTIONS = ("Wait, let me check.", "Wait.", "Hmm, wait.", "Let me check again.",
               "But wait, let me check.")
CONTRASTS = ("", "But ", "However, ")
CONFIRMATIONS = ("Yes, that is right.", "That is right.", "Yes, that holds.")
EXPLORATIONS = (
    "Maybe there is a shortcut, but going in order is safer.",
    "Alternatively, I could look for another way, but this one is simple enough.",
    "Perhaps another order is faster, but I will keep this one.",
    "Hmm, alternatively I could guess, but that is not reliable.",
)
CONCLUSIONS = ("Therefore the answer is {answer}.", "Therefore the final answer is {answer}.",
               "So the answer is {answer}.")


@dataclasses.dataclass(frozen=True)
class Step:
    """One line of a trace with its ground-truth labels.

    Attributes:
        text: the line.
        kind: plan, explore, compute, check (a right step verified), correct (a wrong step fixed),
            or conclude.
        is_correct: the line's own claim is true (a compute step on a wrong running state can
            be correct while the trace is off track).
        is_on_track: after this line the stated running state equals the true one.
    """

    text: str
    kind: str
    is_correct: bool
    is_on_track: bool


@dataclasses.dataclass(frozen=True)
class TraceRates:
    """Per-step probabilities that shape a trace (fields of WorldConfig)."""

    mistake_rate: float
    catch_rate: float
    verify_rate: float
    hesitation_rate: float
    explore_rate: float


def sample_trace(family: Family, problem: Problem, rates: TraceRates,
                 rng: random.Random) -> tuple[list[Step], int]:
    """Sample one reasoning trace for ``problem``.

    Args:
        family: the problem's family (update rule and phrasing).
        problem: the problem to solve.
        rates: mistake, catch, verify, hesitation and exploration rates.
        rng: the random source (seeded by the caller).

    Returns:
        The steps and the final answer the trace states (wrong when a mistake went uncaught).
    """
    steps = [Step(rng.choice(family.plan()), "plan", True, True)]
    if rng.random() < rates.explore_rate:
        steps.append(Step(rng.choice(EXPLORATIONS), "explore", True, True))
    state, true_states = problem.start, family.states(problem)
    for index, (item, true_state) in enumerate(zip(problem.items, true_states)):
        n_left = len(problem.items) - index - 1
        right = family.update(problem, state, item)
        # Error-prone updates (carries, close calls) go wrong three times as often.
        p_mistake = min(0.9, rates.mistake_rate * (2.0 if family.is_hard(problem, state, item) else 0.5))
        is_mistake = rng.random() < p_mistake
        result = family.wrong(rng, problem, state, item) if is_mistake else right
        p_hesitate = min(0.9, rates.hesitation_rate * (3.0 if is_mistake else 1.0))
        prefix = rng.choice(HESITATIONS) if rng.random() < p_hesitate else ""
        claim = family.claim(problem, state, item, result)[:-1] + family.progress(n_left) + "."
        steps.append(Step(prefix + claim, "compute", not is_mistake, result == true_state))
        if is_mistake and rng.random() < rates.catch_rate:
            fix = family.claim(problem, state, item, right)[:-1]
            text = f"{rng.choice(REFLECTIONS)} {rng.choice(CONTRASTS)}{fix}, not {result}."
            steps.append(Step(text, "correct", True, right == true_state))
            result = right
        elif not is_mistake and rng.random() < rates.verify_rate:
            text = f"{rng.choice(REFLECTIONS)} {family.claim(problem, state, item, right)} " \
                   f"{rng.choice(CONFIRMATIONS)}"
            steps.append(Step(text, "check", True, right == true_state))
        state = result
    steps.append(Step(rng.choice(CONCLUSIONS).format(answer=state), "conclude",
                      state == problem.answer, state == problem.answer))
    return steps, state
