"""Plain small-talk exchanges: the LMSYS-like half of the mix.

They use some reasoning words in ordinary, non-reasoning roles ("another colour", "I will wait",
"yes, but ..."), as real chat does, so a feature that merely detects a word is not a reasoning
feature by ReasonScore's entropy and negative terms.
"""

from __future__ import annotations

import random

WORDS = {
    "colour": ("red", "blue", "green", "white", "black", "yellow"),
    "animal": ("cat", "dog", "bird", "fish", "horse", "sheep"),
    "fruit": ("apple", "pear", "plum", "lemon", "grape", "peach"),
    "food": ("rice", "soup", "bread", "pasta", "salad", "beans"),
}

TEMPLATES = (
    ("Name a {kind}.", "Sure, {a} is a {kind}."),
    ("Name another {kind}.", "Another {kind} is {a}."),
    ("Tell me two of each {kind}.", "{A} is one. Another one is {b}."),
    ("What should I eat today?", "Maybe {food}. However, {food2} is also good."),
    ("Do you like {a}?", "Perhaps. I like {b} more, but {a} is fine."),
    ("Is {n} more than {m}?", "{yes_no}"),
    ("Can you help me?", "Yes, but tell me what you need first."),
    ("Please wait for me.", "Sure, I will wait."),
    ("Let me ask you something.", "Of course, ask me anything."),
    ("Which is nicer, {a} or {b}?", "Both are nice, but I would pick {a}."),
)


def sample_chat(rng: random.Random) -> tuple[str, str]:
    """One (user, assistant) small-talk exchange."""
    user, assistant = rng.choice(TEMPLATES)
    kind = rng.choice(("colour", "animal", "fruit"))
    a, b = rng.sample(WORDS[kind], 2)
    food, food2 = rng.sample(WORDS["food"], 2)
    n, m = rng.sample(range(1, 100), 2)
    yes_no = f"Yes, {n} is more than {m}." if n > m else f"No, but {m} is more than {n}."
    slots = dict(kind=kind, a=a, b=b, A=a.capitalize(), food=food, food2=food2, n=n, m=m,
                 yes_no=yes_no)
    return user.format(**slots), assistant.format(**slots)
