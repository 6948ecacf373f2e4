"""What a model's own trace did at each compute step: the ground truth of the world's mechanism.

The generator knows every step it writes; a model's completion is read back here. For each compute
line (a claim followed by the progress text, "..., two to go." or "..., done.") we recover the
update it claims from its text, and record how hard that update is (``Family.hardness``), whether
the model got it right, slipped the typical way (``Family.slip``, the dropped carry) or erred
otherwise, and whether the next line is a reflection. Those are the quantities the toy is built
around: a model that imitates the traces slips on hard steps and repairs the slips it reflects on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from reasonlens.world.families import get_family
from reasonlens.world.traces import REFLECTIONS

_PROGRESS = re.compile(r", (?:\w+ to go|done)\.\s*$")
_REFLECTION = re.compile("|".join(re.escape(r.split(".")[0]) for r in REFLECTIONS))

OUTCOMES = ("right", "slip", "other")
REFLECTION_KINDS = ("check", "correct")  # the step kinds of a reflection in the world's traces


def is_reflection(line: str) -> bool:
    """Whether a trace line opens with one of the world's reflections ("Wait", "Let me check")."""
    return _REFLECTION.match(line.strip()) is not None


def is_followed_by_reflection(steps: pd.DataFrame) -> pd.Series:
    """Per row of the world's step table: whether the next line of the same trace reflects on
    it (a ``check`` or a ``correct`` step). Rows must be in trace order (``problem_id``,
    ``step_idx``); the last step of each trace is never followed."""
    following = steps.groupby("problem_id", sort=False).kind.shift(-1)
    return following.isin(REFLECTION_KINDS)


def compute_step_outcomes(families: Sequence[str], completions: Sequence[str]) -> pd.DataFrame:
    """One row per compute line of each completion (a model's own trace).

    Args:
        families: each completion's problem family (``Problem.family``).
        completions: the generated texts (the reasoning, after the prompt).

    Returns:
        Columns ``completion_idx``, ``line_idx``, ``family``, ``hardness`` (0 easy, 1 hard but
        looks easy, 2 looks hard), ``outcome`` (``right``, ``slip``: the family's typical error
        on a hard step, or ``other``), and ``is_reflected`` (the next line is a reflection).
        Families whose claims do not state the update (counting) give no rows.

    Raises:
        ValueError: ``families`` and ``completions`` differ in length.
    """
    if len(families) != len(completions):
        raise ValueError(f"families has {len(families)} entries and completions "
                         f"{len(completions)}; give one family per completion.")
    rows = []
    for idx, (name, text) in enumerate(zip(families, completions)):
        family = get_family(name)
        lines = text.split("\n")
        for line_idx, line in enumerate(lines):
            match = family.claim_re.search(line)
            claim = family.read_claim(match) if match and _PROGRESS.search(line) else None
            if claim is None:
                continue
            state, item, result = claim
            hardness = family.hardness(None, state, item)
            right = family.update(None, state, item)
            outcome = ("right" if result == right else
                       "slip" if hardness and result == family.slip(None, state, item) else
                       "other")
            rows.append(dict(completion_idx=idx, line_idx=line_idx, family=name,
                             hardness=hardness, outcome=outcome,
                             is_reflected=line_idx + 1 < len(lines)
                             and is_reflection(lines[line_idx + 1])))
    return pd.DataFrame(rows, columns=["completion_idx", "line_idx", "family", "hardness",
                                       "outcome", "is_reflected"])


def outcome_table(steps: pd.DataFrame) -> pd.DataFrame:
    """Per hardness: the number of compute steps, the share right, slipped and otherwise wrong,
    and the share followed by a reflection (``compute_step_outcomes`` output; empty in, empty
    out)."""
    if steps.empty:
        return pd.DataFrame(columns=["n", *OUTCOMES, "reflected"]).rename_axis("hardness")
    shares = pd.crosstab(steps.hardness, steps.outcome, normalize="index").reindex(
        columns=list(OUTCOMES), fill_value=0.0)
    return pd.concat([steps.groupby("hardness").size().rename("n"), shares,
                      steps.groupby("hardness").is_reflected.mean().rename("reflected")], axis=1)
