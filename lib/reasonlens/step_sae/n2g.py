"""N2G pattern mining for step-level latents (Foote et al., 2023, as used by Yang et al., 2026).

This is our effect-based N2G (the default). The reference code's N2G, with F1, micro-averages
and LLM labels, is ``n2g_reference`` (``N2GConfig.reference()``) and ``n2g_labels``.

A step latent is read with its context, and the context alone (an empty step, ``context <sep>
<eos>``) already drives the densest latents to most of their value. So a latent's response to a
step is measured as its *step effect*: the un-normalised activation with the step minus that with
the empty step (``step_effects``). Without the subtraction, and on the L2-normalised latent
(which couples all latents), a one-token suffix kept every top latent of the toy run "active",
and every mined pattern was ``…[*]``, matching every step.

For each of the latents with the largest total step effect, take the steps with the largest
effect. For each, keep the context and find the *shortest suffix* of the step whose effect stays
at or above the latent's threshold (``keep_fraction`` times the mean effect over those top steps).
Then try a few replacement tokens at every position of that suffix: a position where every
replacement keeps the effect above threshold is a *wildcard*. The token sequence with wildcards
is a pattern; a step *matches* it when its last tokens do. (``anchor="start"`` mines prefixes
instead, and ``"both"`` keeps the shorter of the two per step: a latent cued by a step's opening
word, such as "Maybe", has a suffix pattern only as long as the whole step.) On held-out steps,
precision is P(active | a pattern matches) and recall P(some pattern matches | active), with
active meaning a step effect at or above the threshold.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from reasonlens.config import Config, check_range
from reasonlens.step_sae.data import StepExamples
from reasonlens.step_sae.inference import batches
from reasonlens.step_sae.model import StepSAE

WILDCARD = -1
ANCHORS = ("end", "start")  # a pattern is a suffix ("end") or a prefix ("start") of the step


@dataclasses.dataclass(frozen=True)
class N2GConfig(Config):
    """Which latents to explain and how.

    Args:
        n_latents: explain this many latents (those with the largest total step effect).
        n_examples: steps with the largest effect mined per latent.
        keep_fraction: a step activates a latent when its effect reaches this fraction of the
            mean effect over those top steps (the same threshold for pruning, wildcards and
            evaluation).
        n_replacements: tokens tried at each position (the most frequent step tokens; one more
            is taken so that a position holding one of them still gets ``n_replacements``).
        anchor: ``"end"``: patterns are step suffixes (the paper's); ``"start"``: prefixes;
            ``"both"``: each top step keeps the shorter of its suffix and prefix pattern (ties go
            to the suffix), so latents cued by a step's opening word get patterns too.
        batch_size: variants encoded per pass.
    """

    n_latents: int = 10
    n_examples: int = 8
    keep_fraction: float = 0.5
    n_replacements: int = 4
    anchor: str = "end"
    batch_size: int = 64

    def __post_init__(self):
        for name in ("n_latents", "n_examples", "n_replacements", "batch_size"):
            check_range(name, getattr(self, name), 1)
        check_range("keep_fraction", self.keep_fraction, 0.0, 1.0)
        if self.anchor not in (*ANCHORS, "both"):
            raise ValueError(f"anchor={self.anchor!r} is unknown; use 'end' (suffix patterns), "
                             "'start' (prefix patterns) or 'both'.")

    @classmethod
    def reference(cls, **overrides):
        """The reference code's N2G instead of ours: a ``n2g_reference.ReferenceN2GConfig``.

        R's settings (50 latents, 20 patterns each, ratio 0.5, active above 0, the first 500
        validation steps; experiment.yaml:6-21), with ``overrides`` (e.g. smaller budgets for
        the CPU toy). Mine and evaluate with ``n2g_reference.reference_n2g``; this module's
        functions are the effect-based mode and do not take it.

        Raises:
            ValueError: an override that is not a field or is out of range.
        """
        from reasonlens.step_sae.n2g_reference import ReferenceN2GConfig

        return ReferenceN2GConfig.from_dict(overrides)


def most_active_latents(latents: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` latents with the largest total activation over ``latents [n_steps, n_latents]``."""
    total = np.asarray(latents).sum(0)
    order = np.argsort(-total, kind="stable")
    return order[: min(n, int((total > 0).sum()))]


def frequent_tokens(examples: StepExamples, n: int) -> list[int]:
    """The ``n`` most frequent step tokens (replacement candidates for the wildcard test)."""
    counts = Counter(t for step in examples.step_ids for t in step)
    return [t for t, _ in counts.most_common(n)]


def _activations(model: StepSAE, contexts: Sequence[Sequence[int]],
                 steps: Sequence[Sequence[int]], batch_size: int,
                 desc: str | None = None) -> torch.Tensor:
    """Un-normalised latent activations ``[n, n_latents]`` of ``context[i] <sep> steps[i]``."""
    with torch.no_grad():
        return torch.cat([model.encode_activations(b)
                          for b in batches(model, contexts, steps, batch_size, desc)])


def step_effects(model: StepSAE, examples: StepExamples, batch_size: int = 64) -> np.ndarray:
    """Each step's effect on each latent ``[n_steps, n_latents]``: activation minus context alone.

    The activation is the un-normalised ``ReLU(W_enc (h - b_pre) + b)``; "context alone" reads
    ``context <sep> <eos>``, an empty step.
    """
    model.eval()
    with_step = _activations(model, examples.context_ids, examples.step_ids, batch_size,
                             "step effects")
    alone = _activations(model, examples.context_ids, [[]] * len(examples), batch_size,
                         "context alone")
    return (with_step - alone).numpy()


def _effects(model: StepSAE, context: Sequence[int], steps: Sequence[Sequence[int]],
             latent_idx: int, batch_size: int) -> np.ndarray:
    """One latent's step effect for several candidate steps after one context."""
    values = _activations(model, [context] * (len(steps) + 1), [[], *steps], batch_size)
    return (values[1:, latent_idx] - values[0, latent_idx]).numpy()


def explain_step(model: StepSAE, context: Sequence[int], step: Sequence[int], latent_idx: int,
                 threshold: float, replacements: Sequence[int], batch_size: int = 64,
                 anchor: str = "end") -> tuple[int, ...]:
    """One step's pattern: the shortest suffix (``anchor="end"``) or prefix (``"start"``) whose
    step effect reaches ``threshold``, with wildcards where tokens do not matter.

    Returns:
        Token ids of the suffix or prefix, ``WILDCARD`` (-1) at positions every replacement keeps
        active. The whole step (without wildcard search) when no candidate reaches ``threshold``.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor={anchor!r} must be one of {ANCHORS}.")
    lengths = range(1, len(step) + 1)
    candidates = ([list(step[-k:]) for k in lengths] if anchor == "end"
                  else [list(step[:k]) for k in lengths])
    values = _effects(model, context, candidates, latent_idx, batch_size)
    active = np.flatnonzero(values >= threshold)
    if len(active) == 0:
        return tuple(step)
    kept_tokens = candidates[active[0]]
    variants, owners = [], []
    for pos, token in enumerate(kept_tokens):
        for replacement in replacements:
            if replacement != token:
                variants.append(kept_tokens[:pos] + [replacement] + kept_tokens[pos + 1:])
                owners.append(pos)
    wildcard = np.ones(len(kept_tokens), dtype=bool)
    if variants:
        still = _effects(model, context, variants, latent_idx, batch_size) >= threshold
        for pos, ok in zip(owners, still):
            wildcard[pos] &= bool(ok)
    return tuple(WILDCARD if wildcard[pos] else t for pos, t in enumerate(kept_tokens))


def _shorter(patterns: dict[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...]]:
    """The anchor whose pattern has tokens and is shortest (ties: the suffix)."""
    return min(patterns.items(), key=lambda item: (all(t == WILDCARD for t in item[1]),
                                                   len(item[1]), ANCHORS.index(item[0])))


def mine_patterns(model: StepSAE, examples: StepExamples, effects: np.ndarray, cfg: N2GConfig,
                  tokenizer) -> pd.DataFrame:
    """Patterns of the latents with the largest total step effect, mined from their top steps.

    Args:
        model: the trained step-level SAE.
        examples: steps to mine from; ``effects`` are their ``step_effects``.
        cfg: how many latents and examples, the threshold, the replacements.
        tokenizer: to show patterns as text.

    Returns:
        One row per (latent, pattern): latent_idx, threshold, anchor ("end": a suffix,
        "start": a prefix), pattern (token ids, -1 = wildcard), pattern_text, n_sources (top
        steps that gave it), n_tokens (its non-wildcard tokens), example (one source step's
        text). A pattern with no token (every position a wildcard)
        says that the step's length, not its tokens, carried the effect; it explains nothing and
        ``evaluate_patterns`` leaves it out.
    """
    replacements = frequent_tokens(examples, cfg.n_replacements + 1)
    anchors = ANCHORS if cfg.anchor == "both" else (cfg.anchor,)
    rows = []
    for latent_idx in tqdm(most_active_latents(effects.clip(0), cfg.n_latents), desc="N2G",
                           mininterval=2.0):
        values = effects[:, latent_idx]
        top = np.argsort(-values, kind="stable")[: cfg.n_examples]
        top = top[values[top] > 0]
        threshold = cfg.keep_fraction * float(values[top].mean())
        found: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for row in top:
            mined = {anchor: explain_step(model, examples.context_ids[row],
                                          examples.step_ids[row], int(latent_idx), threshold,
                                          replacements, cfg.batch_size, anchor)
                     for anchor in anchors}
            found.setdefault(_shorter(mined), []).append(int(row))
        for (anchor, pattern), sources in found.items():
            rows.append({"latent_idx": int(latent_idx), "threshold": threshold, "anchor": anchor,
                         "pattern": list(pattern),
                         "pattern_text": pattern_text(pattern, tokenizer, anchor),
                         "n_sources": len(sources),
                         "n_tokens": sum(t != WILDCARD for t in pattern),
                         "example": examples.table["step"].iloc[sources[0]]})
    return pd.DataFrame(rows, columns=["latent_idx", "threshold", "anchor", "pattern",
                                       "pattern_text", "n_sources", "n_tokens", "example"])


def pattern_text(pattern: Sequence[int], tokenizer, anchor: str = "end") -> str:
    """A pattern as text, ``[*]`` for wildcards, ``…`` where the rest of the step goes."""
    text = "".join("[*]" if t == WILDCARD else tokenizer.decode([t]) for t in pattern)
    return "…" + text if anchor == "end" else text + "…"


def matches(pattern: Sequence[int], step: Sequence[int], anchor: str = "end") -> bool:
    """Whether ``step`` ends (``anchor="end"``) or starts (``"start"``) with ``pattern``.

    Wildcards match any token.
    """
    if len(pattern) > len(step):
        return False
    part = step[len(step) - len(pattern):] if anchor == "end" else step[:len(pattern)]
    return all(p == WILDCARD or p == t for p, t in zip(pattern, part))


def evaluate_patterns(patterns: pd.DataFrame, examples: StepExamples, effects: np.ndarray
                      ) -> pd.DataFrame:
    """Precision and recall of each latent's patterns on held-out steps.

    Args:
        patterns: ``mine_patterns`` output.
        examples: held-out steps; ``effects`` their ``step_effects`` ``[n_steps, n_latents]``.

    Returns:
        One row per latent: latent_idx, n_patterns (with at least one token), n_tokenless (top
        steps whose pattern had none), n_active, n_matched, precision, recall (NaN when nothing
        matched, resp. nothing was active).
    """
    rows = []
    for latent_idx, group in patterns.groupby("latent_idx", sort=False):
        tokenless = group["n_tokens"] == 0
        active = effects[:, latent_idx] >= group["threshold"].iloc[0]
        explaining = list(group.loc[~tokenless, ["pattern", "anchor"]].itertuples(index=False))
        matched = np.array([any(matches(p, step, a) for p, a in explaining)
                            for step in examples.step_ids], dtype=bool)
        hits = int((active & matched).sum())
        rows.append({"latent_idx": int(latent_idx), "n_patterns": int((~tokenless).sum()),
                     "n_tokenless": int(group.loc[tokenless, "n_sources"].sum()),
                     "n_active": int(active.sum()), "n_matched": int(matched.sum()),
                     "precision": hits / matched.sum() if matched.any() else float("nan"),
                     "recall": hits / active.sum() if active.any() else float("nan")})
    return pd.DataFrame(rows, columns=["latent_idx", "n_patterns", "n_tokenless", "n_active",
                                       "n_matched", "precision", "recall"])


def example_table(examples: StepExamples, scores: np.ndarray, patterns: pd.DataFrame,
                  n_examples: int, n_top: int = 3, by: str | None = None) -> pd.DataFrame:
    """Example steps with their ``n_top`` latents and those latents' patterns.

    Args:
        examples: the steps; ``scores [n_steps, n_latents]`` ranks their latents (the step
            effects, or the latents themselves).
        patterns: ``mine_patterns`` output.
        n_examples: rows to show.
        by: a column of ``examples.table`` (e.g. the world's step ``kind``) to take the examples
            from in turn, one of each value before a second; None (or a missing column): the
            first ``n_examples`` steps.

    Returns:
        Columns step, is_correct (when known), top_latents ("idx:score, ..."), patterns (each top
        latent's pattern with tokens that most top steps gave, where it has one).
    """
    table = examples.table
    order = (table.groupby(by, sort=False).cumcount().sort_values(kind="stable").index
             if by is not None and by in table else table.index)
    first = (patterns[patterns["n_tokens"] > 0]
             .sort_values("n_sources", ascending=False, kind="stable")
             .groupby("latent_idx")["pattern_text"].first())
    rows = []
    for i in list(order[:n_examples]):
        top = np.argsort(-scores[i], kind="stable")[:n_top]
        row = {"step": table["step"].iloc[i]}
        if "is_correct" in table:
            row["is_correct"] = bool(table["is_correct"].iloc[i])
        row["top_latents"] = ", ".join(f"{j}:{scores[i, j]:.2f}" for j in top)
        row["patterns"] = "  ".join(f"{j}:{first[j]}" for j in top if j in first.index)
        rows.append(row)
    return pd.DataFrame(rows)
