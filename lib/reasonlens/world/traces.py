"""Reasoning traces of the synthetic world, where reflecting repairs the writer's own slips.

A trace is a list of steps (one line each): a plan, optional exploration, one *compute* step per
item of the problem's fold, *check* steps that confirm a step and *correct* steps that fix one,
and a conclusion. The mechanism the papers claim exists here by construction:

- A hard update (a carry, a wrap) done directly usually slips (``slip_rate``, the typical error:
  the dropped carry), an easy one rarely (``mistake_rate``).
- After a compute step the writer decides to reflect with a probability set by how hard the step
  *looks* (``reflect_rates``: easy, hard-but-looks-easy, looks hard), never by whether it slipped.
- A reflection recomputes the update by another route that does not carry
  (``Family.route``), so it is right, and it repairs the slip when there was one.

So a model that imitates these traces slips on hard steps and repairs the slips it reflects on;
on hard steps that look easy it seldom reflects, and reflecting more would repair them. The
reasoning vocabulary of Galichin et al. (2025) appears in its real roles: uncertainty ("hmm",
"maybe", "perhaps") before steps that look hard, reflection ("wait", "let me") before checks,
contrast ("but", "however") in corrections, exploration ("alternatively", "another") in the
opening, and conclusion ("therefore").
"""

from __future__ import annotations

import dataclasses
import random

from reasonlens.world.families import Family, Problem

HESITATIONS = ("Hmm, ", "Maybe ", "Perhaps ")
REFLECTIONS = ("Wait, let me check.", "Wait.", "Hmm, wait.", "Let me check again.",
               "But wait, let me check.")
CONTRASTS = ("So ", "But ", "However, ")
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
        kind: plan, explore, compute, check (a right step confirmed), correct (a wrong step
            fixed), or conclude.
        is_correct: the line's own claim is true (a compute step on a wrong running state can
            be correct while the trace is off track).
        is_on_track: after this line the stated running state equals the true one.
        hardness: of the update a compute, check or correct line is about (``Family.hardness``:
            0 easy, 1 hard but looks easy, 2 looks hard); 0 for other lines.
    """

    text: str
    kind: str
    is_correct: bool
    is_on_track: bool
    hardness: int = 0


@dataclasses.dataclass(frozen=True)
class TraceRates:
    """Per-step probabilities that shape a trace (fields of WorldConfig)."""

    mistake_rate: float
    slip_rate: float
    reflect_rates: tuple[float, float, float]
    hesitation_rate: float
    explore_rate: float


def sample_trace(family: Family, problem: Problem, rates: TraceRates,
                 rng: random.Random) -> tuple[list[Step], int]:
    """Sample one reasoning trace for ``problem``.

    Args:
        family: the problem's family (update rule, hardness, check route and phrasing).
        problem: the problem to solve.
        rates: mistake, slip, reflection, hesitation and exploration rates.
        rng: the random source (seeded by the caller).

    Returns:
        The steps and the final answer the trace states (wrong when a slip went unrepaired).
    """
    steps = [Step(rng.choice(family.plan()), "plan", True, True)]
    if rng.random() < rates.explore_rate:
        steps.append(Step(rng.choice(EXPLORATIONS), "explore", True, True))
    state, true_states = problem.start, family.states(problem)
    for index, (item, true_state) in enumerate(zip(problem.items, true_states)):
        n_left = len(problem.items) - index - 1
        right = family.update(problem, state, item)
        hardness = family.hardness(problem, state, item)
        if hardness:
            result = family.slip(problem, state, item) if rng.random() < rates.slip_rate else right
        else:
            is_mistake = rng.random() < rates.mistake_rate
            result = family.wrong(rng, problem, state, item) if is_mistake else right
        # The writer hesitates where a step looks hard, whether or not it then slips.
        p_hesitate = min(0.9, rates.hesitation_rate * (3.0 if hardness == 2 else 1.0))
        prefix = rng.choice(HESITATIONS) if rng.random() < p_hesitate else ""
        claim = family.claim(problem, state, item, result)[:-1] + family.progress(n_left) + "."
        steps.append(Step(prefix + claim, "compute", result == right, result == true_state,
                          hardness))
        if rng.random() < rates.reflect_rates[hardness]:
            steps.append(_check(family, problem, state, item, result, hardness, true_state, rng))
            result = right
        state = result
    steps.append(Step(rng.choice(CONCLUSIONS).format(answer=state), "conclude",
                      state == problem.answer, state == problem.answer))
    return steps, state


def _check(family: Family, problem: Problem, state: int, item, result: int, hardness: int,
           true_state: int, rng: random.Random) -> Step:
    """A reflection on the step that claimed ``result``: it recomputes the update (by the
    family's route when it has one) and confirms the claim or corrects it."""
    right = family.update(problem, state, item)
    fixed = family.claim(problem, state, item, right)
    route = ", ".join(family.route(problem, state, item))
    opening = rng.choice(REFLECTIONS) + (f" {route}." if route else "")
    if result == right:
        text = f"{opening} {'So ' if route else ''}{fixed} {rng.choice(CONFIRMATIONS)}"
        return Step(text, "check", True, right == true_state, hardness)
    text = f"{opening} {rng.choice(CONTRASTS)}{fixed[:-1]}, not {result}."
    return Step(text, "correct", True, right == true_state, hardness)
