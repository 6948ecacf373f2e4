"""Problem families of the synthetic reasoning world.

Every family is a *fold*: a start state and a list of items, each item updating the state by one
verifiable rule. A reasoning trace states one update per step, so a step can be right or wrong on
its own, and an uncorrected wrong step carries into the final answer.

Each update has a *hardness*: 0 (easy), 1 (hard, but it looks easy: a carry with a small operand)
or 2 (hard and it looks hard). A hard update done directly is error-prone (a dropped carry, a
missed wrap); a check recomputes it by a *route* that avoids the carry (54 + 8 as 54 + 10 = 64,
64 - 2 = 62), so a check can repair the writer's own slip.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: its question, the fold's start state and items, and the true answer."""

    family: str
    question: str
    start: int
    items: tuple
    answer: int


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class Family:
    """A family of fold problems. Subclasses define sampling, the update rule and step phrasing."""

    name: ClassVar[str]
    claim_re: ClassVar[re.Pattern]  # one claim as ``claim`` writes it (its numbers as groups)

    def sample(self, rng: random.Random, n_items: int) -> Problem:
        raise NotImplementedError

    def read_claim(self, match: re.Match) -> tuple[int, object, int] | None:
        """``(state, item, result)`` of one claim matched by ``claim_re``; None when the claim
        does not state them all."""
        raise NotImplementedError

    def claim_holds(self, match: re.Match) -> bool:
        """Whether one claim matched by ``claim_re`` is true."""
        state, item, result = self.read_claim(match)
        return self.update(None, state, item) == result

    def check_claims(self, text: str) -> bool | None:
        """Whether every claim of this family's form in ``text`` (a step, e.g. one a model wrote)
        is true; None when the text states none.

        This labels a model's *own* steps, where the generator's labels do not exist. A
        correction ("Wait. 54 + 8 = 62, not 61.") counts its first claim only: the refuted
        number is not written as a claim.
        """
        found = [self.claim_holds(m) for m in self.claim_re.finditer(text)]
        return all(found) if found else None

    def update(self, problem: Problem, state: int, item) -> int:
        raise NotImplementedError

    def claim(self, problem: Problem, state: int, item, result: int) -> str:
        """The step's sentence asserting that ``update(state, item) == result``."""
        raise NotImplementedError

    def progress(self, remaining: int) -> str:
        """Text a compute step appends before its full stop: how many steps are left, so that a
        step never needs to count the ones before it ("three to go", "done")."""
        return f", {NUMBER_WORDS[remaining]} to go" if remaining else ", done"

    def wrong(self, rng: random.Random, problem: Problem, state: int, item) -> int:
        """A plausible wrong result for an easy update, e.g. off by one (never the right one)."""
        raise NotImplementedError

    def is_hard(self, problem: Problem, state: int, item) -> bool:
        """Whether the update is the error-prone kind (a carry, a close call)."""
        return False

    def hardness(self, problem: Problem, state: int, item) -> int:
        """0 for an easy update, 1 for a hard one that looks easy, 2 for one that looks hard.
        By default every hard update looks hard."""
        return 2 if self.is_hard(problem, state, item) else 0

    def slip(self, problem: Problem, state: int, item) -> int:
        """The typical wrong result of a hard update done directly (never the right one)."""
        raise NotImplementedError

    def route(self, problem: Problem, state: int, item) -> tuple[str, ...]:
        """The claims of a check that recomputes a hard update by another route, in order; empty
        when the family has none (its check restates the claim)."""
        return ()

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
    """Add or subtract a one-digit number several times: ``Start at 17 and add 8, four times.``

    Each step needs only the previous result, the operand and the count of steps left (stated on
    every step: "17 + 8 = 25, three to go."), so a small model can learn to reason step by step,
    while answering directly needs start + n * d in one go.
    """

    name = "arithmetic"

    def sample(self, rng, n_items):
        d, sign = rng.randint(1, 9), rng.choice("+-")
        low, high = (10, 99 - n_items * d) if sign == "+" else (10 + n_items * d, 99)
        start = rng.randint(low, high)
        verb = "add" if sign == "+" else "subtract"
        question = rng.choice((f"Start at {start} and {verb} {d}, {NUMBER_WORDS[n_items]} times.",
                               f"What do you get if you {verb} {d} from {start} "
                               f"{NUMBER_WORDS[n_items]} times?" if sign == "-" else
                               f"What do you get if you {verb} {d} to {start} "
                               f"{NUMBER_WORDS[n_items]} times?"))
        answer = start + n_items * d if sign == "+" else start - n_items * d
        return Problem(self.name, question, start, ((sign, d),) * n_items, answer)

    def update(self, problem, state, item):
        sign, d = item
        return state + d if sign == "+" else state - d

    claim_re = re.compile(r"(\d+) ([+-]) (\d+) = (-?\d+)")

    def claim(self, problem, state, item, result):
        return f"{state} {item[0]} {item[1]} = {result}."

    def read_claim(self, match):
        state, sign, d, result = match.groups()
        return int(state), (sign, int(d)), int(result)

    def wrong(self, rng, problem, state, item):
        return self.update(problem, state, item) + rng.choice((-1, 1))

    def is_hard(self, problem, state, item):
        return (state // 10) != (self.update(problem, state, item) // 10)

    def hardness(self, problem, state, item):
        """A carry or borrow is hard; it looks hard when the operand is 6 or more."""
        return 0 if not self.is_hard(problem, state, item) else 2 if item[1] >= 6 else 1

    def slip(self, problem, state, item):
        """The dropped carry (or borrow): the tens digit left as it was."""
        sign, _ = item
        return self.update(problem, state, item) + (-10 if sign == "+" else 10)

    def route(self, problem, state, item):
        """Compensation: 54 + 8 as 54 + 10 = 64, 64 - 2 = 62 (54 - 8 as 54 - 10 = 44,
        44 + 2 = 46). Neither part carries."""
        if not self.is_hard(problem, state, item):
            return ()
        sign, d = item
        ten = state + 10 if sign == "+" else state - 10
        back = "-" if sign == "+" else "+"
        return (f"{state} {sign} 10 = {ten}",
                f"{ten} {back} {10 - d} = {self.update(problem, state, item)}")

    def plan(self):
        return ("Let me do it one step at a time.", "Let me keep a running total.",
                "I will count the steps as I go.")


class Alternating(Arithmetic):
    """Add one number and subtract another in turn: ``Start at 40, then add 7 and subtract 3 in
    turn, four steps in all.`` Each step's operation is the one from two steps before."""

    name = "alternating"

    def sample(self, rng, n_items):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        items = tuple(("+", a) if i % 2 == 0 else ("-", b) for i in range(n_items))
        starts = [x for x in range(10, 100) if all(
            10 <= v <= 99 for v in self._walk(x, items))]
        start = rng.choice(starts)
        question = (f"Start at {start}, then add {a} and subtract {b} in turn, "
                    f"{NUMBER_WORDS[n_items]} steps in all.")
        return Problem(self.name, question, start, items, self._walk(start, items)[-1])

    def _walk(self, start, items):
        values, state = [], start
        for item in items:
            state = self.update(None, state, item)
            values.append(state)
        return values

    def plan(self):
        return ("Let me alternate one step at a time.", "Let me keep a running total.",
                "I will count the steps as I go.")


class Clock(Family):
    """Move a 12-hour clock forward: ``It is 9 o'clock. What time is it after 5 hours, four times
    over?`` Like arithmetic, but the result wraps past 12."""

    name = "clock"

    def sample(self, rng, n_items):
        start, d = rng.randint(1, 12), rng.randint(1, 11)
        question = rng.choice((
            f"It is {start} o'clock. What time is it after {d} hours, {NUMBER_WORDS[n_items]} "
            "times over?",
            f"A clock shows {start}. Move it forward {d} hours, {NUMBER_WORDS[n_items]} times."))
        answer = (start - 1 + n_items * d) % 12 + 1
        return Problem(self.name, question, start, (d,) * n_items, answer)

    def update(self, problem, state, item):
        return (state - 1 + item) % 12 + 1

    claim_re = re.compile(r"(\d+) and (\d+) hours make (\d+)")

    def claim(self, problem, state, item, result):
        return f"{state} and {item} hours make {result}."

    def read_claim(self, match):
        return tuple(map(int, match.groups()))

    def wrong(self, rng, problem, state, item):
        right = self.update(problem, state, item)
        return right % 12 + 1 if rng.random() < 0.5 else (right - 2) % 12 + 1

    def is_hard(self, problem, state, item):
        """Passing 12 (from 12 itself the result is just the hours: easy)."""
        return state < 12 and state + item > 12

    def hardness(self, problem, state, item):
        """Passing 12 is hard; it looks hard when the hours are 6 or more."""
        return 0 if not self.is_hard(problem, state, item) else 2 if item >= 6 else 1

    def slip(self, problem, state, item):
        """One hour short after passing 12 (12 counted as an hour of the move)."""
        return (self.update(problem, state, item) - 2) % 12 + 1

    def route(self, problem, state, item):
        """Up to 12, then the rest: 9 and 5 as 9 and 3 hours make 12, 12 and 2 hours make 2."""
        if not self.is_hard(problem, state, item):
            return ()
        up = 12 - state
        return (f"{state} and {up} hours make 12",
                f"12 and {item - up} hours make {self.update(problem, state, item)}")

    def plan(self):
        return ("Let me move the clock one step at a time.", "Let me keep track of the hour.",
                "I will count the steps as I go.")


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

    claim_re = re.compile(r"(\d+) or (\d+): (\d+) is larger")

    def claim(self, problem, state, item, result):
        return f"{state} or {item}: {result} is larger."

    def read_claim(self, match):
        return tuple(map(int, match.groups()))

    def wrong(self, rng, problem, state, item):
        return min(state, item)

    def slip(self, problem, state, item):
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

    claim_re = re.compile(r"(\d+) is (even|odd)")

    def claim(self, problem, state, item, result):
        return f"{item} is {'even' if item % 2 == 0 else 'odd'}, so {result}."

    def read_claim(self, match):
        """None: the count after "so" depends on the count before the step."""
        return None

    def claim_holds(self, match):
        """Only the parity: the count after "so" depends on the count before the step."""
        return (int(match.group(1)) % 2 == 0) == (match.group(2) == "even")

    def wrong(self, rng, problem, state, item):
        right = self.update(problem, state, item)
        return right - 1 if right > state else right + 1

    def slip(self, problem, state, item):
        return self.wrong(None, problem, state, item)

    def is_hard(self, problem, state, item):
        return item % 2 == 0

    def plan(self):
        return ("Let me check the numbers one at a time.", "Let me keep a running count.",
                "I will go through the numbers in order.")


# Families whose every step needs only the previous result, the question's rule and the count of
# steps left; and list families whose steps must also find the next item of the question (harder
# for a small model to learn: it needs induction-style lookup).
FAMILIES: dict[str, Family] = {f.name: f for f in (Arithmetic(), Alternating(), Clock(), Maximum(),
                                                   Counting())}


def get_family(name: str) -> Family:
    """The family called ``name``.

    Raises:
        ValueError: naming the unknown family and listing the known ones.
    """
    if name not in FAMILIES:
        raise ValueError(f"families contains unknown problem family {name!r}; "
                         f"known families: {sorted(FAMILIES)}.")
    return FAMILIES[name]
