"""Problem families of the synthetic reasoning world.

Every family is a *fold*: a start state and a list of items, each item updating the state by one
verifiable rule. A reasoning trace states one update per step, so a step can be right or wrong on
its own, and an uncorrected wrong step carries into the final answer.
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: its question, the fold's start state and items, and the true answer."""

    family: str
    question: str
    start: int
    items: tuple
    answer: int


class Family:
    """A family of fold problems. Subclasses define sampling, the update rule and step phrasing."""

    name: ClassVar[str]

    def sample(self, rng: random.Random, n_items: int) -> Problem:
        raise NotImplementedError

    def update(self, problem: Problem, state: int, item) -> int:
        raise NotImplementedError

    def claim(self, problem: Problem, state: int, item, result: int) -> str:
        """The step's sentence asserting that ``update(state, item) == result``."""
        raise NotImplementedError

    def wrong(self, rng: random.Random, problem: Problem, state: int, item) -> int:
        """A plausible wrong result for one update (never the right one)."""
        raise NotImplementedError

    def is_hard(self, problem: Problem, state: int, item) -> bool:
        """Whether the update is the error-prone kind (a carry, a close call)."""
        return False

    def plan(self) -> tuple[str, ...]:
        """Opening lines that set out how the trace will proceed."""
        raise NotImplementedError

    def states(self, problem: Problem) -> list[int]:
        """The true state after each item."""
        states, state = [], problem.start
        for item in problem.items:
            state = self.update(problem, state, item)
            states.append(state)
        return states


class Arithmetic(Family):
    """Add and subtract distinct one-digit numbers to a two-digit start: ``Compute 23 + 8 - 5 + 9.``"""

    name = "arithmetic"

    def sample(self, rng, n_items):
        start = rng.randint(10, 89)
        state, items = start, []
        for d in rng.sample(range(1, 10), n_items):  # distinct operands
            sign = rng.choice("+-") if 10 <= state - d and state + d <= 99 else (
                "+" if state - d < 10 else "-")
            items.append((sign, d))
            state = state + d if sign == "+" else state - d
        expr = f"{start} " + " ".join(f"{s} {d}" for s, d in items)
        question = rng.choice((f"Compute {expr}.", f"What is {expr}?"))
        return Problem(self.name, question, start, tuple(items), state)

    def update(self, problem, state, item):
        sign, d = item
        return state + d if sign == "+" else state - d

    def claim(self, problem, state, item, result):
        return f"{state} {item[0]} {item[1]} = {result}."

    def wrong(self, rng, problem, state, item):
        right = self.update(problem, state, item)
        # Typical slips: a dropped or doubled carry (off by 10) or an off-by-one.
        return right + rng.choice((-10, 10, -1, 1) if self.is_hard(problem, state, item) else (-1, 1))

    def is_hard(self, problem, state, item):
        return (state // 10) != (self.update(problem, state, item) // 10)

    def plan(self):
        return ("Let me add the numbers one at a time.", "Let me keep a running total.",
                "I will go through the numbers in order.")


class Maximum(Family):
    """Find the largest of a list: ``Which is largest: 47, 82, 39, 75?``"""

    name = "maximum"

    def sample(self, rng, n_items):
        values = rng.sample(range(10, 100), n_items + 1)
        question = rng.choice((f"Which is largest: {', '.join(map(str, values))}?",
                               f"Find the largest number in {', '.join(map(str, values))}."))
        return Problem(self.name, question, values[0], tuple(values[1:]), max(values))

    def update(self, problem, state, item):
        return max(state, item)

    def claim(self, problem, state, item, result):
        return f"{state} or {item}: {result} is larger."

    def wrong(self, rng, problem, state, item):
        return min(state, item)

    def is_hard(self, problem, state, item):
        return state // 10 == item // 10

    def plan(self):
        return ("Let me compare the numbers one at a time.", "Let me keep the largest so far.",
                "I will go through the list in order.")


class Counting(Family):
    """Count the even numbers in a list: ``How many of 12, 7, 33, 8 are even?``"""

    name = "counting"

    def sample(self, rng, n_items):
        items = tuple(rng.sample(range(1, 100), n_items))
        listed = ", ".join(map(str, items))
        question = rng.choice((f"How many of {listed} are even?",
                               f"Count the even numbers in {listed}."))
        return Problem(self.name, question, 0, items, sum(x % 2 == 0 for x in items))

    def update(self, problem, state, item):
        return state + int(item % 2 == 0)

    def claim(self, problem, state, item, result):
        return f"{item} is {'even' if item % 2 == 0 else 'odd'}, so {result}."

    def wrong(self, rng, problem, state, item):
        right = self.update(problem, state, item)
        return right - 1 if right > state else right + 1

    def is_hard(self, problem, state, item):
        return item % 2 == 0

    def plan(self):
        return ("Let me check the numbers one at a time.", "Let me keep a running count.",
                "I will go through the numbers in order.")


FAMILIES: dict[str, Family] = {f.name: f for f in (Arithmetic(), Maximum(), Counting())}


def get_family(name: str) -> Family:
    """The family called ``name``.

    Raises:
        ValueError: naming the unknown family and listing the known ones.
    """
    if name not in FAMILIES:
        raise ValueError(f"families contains unknown problem family {name!r}; "
                         f"known families: {sorted(FAMILIES)}.")
    return FAMILIES[name]
