"""N2G as the reference code mines it (Miaow-Lab/SSAE, commit 911d4d3, called *R*).

``n2g`` is our effect-based N2G (the default of notebook 08); this module is R's
(``experiment/N2G/N2G_pattern.py``, settings in ``configs/experiment.yaml:6-21``), selected by
``ReferenceN2GConfig`` (also ``N2GConfig.reference()``). Every step is read as R's data loader
writes it, the *full sequence* ``context <sep> step <eos>`` (dataloader.py:84-89), and a latent's
value is the L2-normalised latent ``z`` of the SAE read at the sequence's last token (R's
``sample_Tr``, model_qwen.py:119-124; ours ``StepSAE.encode``).

R's rules, reproduced:

1. **Latents.** The ``n_latents`` (R: 50) with the largest sum of ``z`` over the training steps
   (N2G_pattern.py:15-32), dead ones included when fewer are alive (R's ``topk``).
2. **Examples.** Steps with ``z > active_threshold`` (R: 0), by activation, largest first, each
   turned into a pattern, until ``n_patterns`` (R: 20) *distinct* patterns (92-152).
3. **Pruning.** The shortest suffix of the full sequence, encoded alone (the rest of the
   context dropped), whose latent is at least ``suffix_ratio`` (R: 0.5) times the example's
   (60-72). Suffix length 1 is ``<eos>`` alone; long suffixes reach into ``<sep>`` and the context.
4. **Wildcards.** Each suffix position in turn is replaced by the pad token (R: the tokenizer's
   pad, else ``<eos>``; for Qwen2.5 both are ``<|endoftext|>``); the position is ``*`` when the
   latent stays at least ``suffix_ratio`` times the *example's* activation (74-90).
5. **Patterns** are lists of decoded token strings, ``"*"`` for a wildcard (88); two patterns are
   the same when their strings are (129).
6. **Matching** re-encodes each string and keeps its first token id, dropping strings that
   encode to nothing (155-168); a sequence matches when the pattern fits a window *anywhere* in
   the full sequence, a wildcard matching any token; a latent predicts "active" when any of its
   patterns matches (170-195).
7. **Evaluation.** The first ``n_eval_steps`` (R: 500) validation steps (batch size 1 times
   ``eval_batches``); active means ``z > active_threshold``; precision ``TP/(TP+FP+1e-8)``,
   recall ``TP/(TP+FN+1e-8)``, F1 ``2PR/(P+R+1e-8)`` per latent, and micro-averaged from the
   summed counts (198-241, 437-457).

Quirks of R kept on purpose (each is R's behaviour at its published settings):

* Suffix and wildcard activations are rounded to float16 before the comparison, the example's
  own activation is not (``get_latent_activation``, 40; ``round_float16=True``).
* With pad = ``<eos>``, replacing the final ``<eos>`` changes nothing, so every pattern ends in
  ``"*"``; a suffix of ``<eos>`` alone gives the pattern ``["*"]``, which matches every sequence.
* A literal ``"*"`` token is indistinguishable from a wildcard once decoded (88, 162).
* Matching runs over the context too, so a pattern can match in the question.
* A pattern string whose re-encoding is several tokens keeps only the first; one that encodes to
  nothing is dropped (a pattern left empty matches everything).
* R's candidates are the first example of each batch (``acts[0]``, 101); at R's batch size 1
  that is every step, which is what is done here.
* The ``1e-8`` in the ratios makes an undefined precision or recall 0, not NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from reasonlens.config import Config, check_range
from reasonlens.step_sae.data import StepBatch, StepExamples

WILDCARD = "*"  # R's wildcard, as a pattern string (N2G_pattern.py:86)
WILDCARD_ID = -1  # a wildcard among re-encoded pattern ids
EPS = 1e-8  # R's guard in precision, recall and F1 (N2G_pattern.py:232-234)

PATTERN_COLUMNS = ["latent_idx", "pattern_idx", "tokens", "pattern_text", "token_ids",
                   "n_tokens", "n_wildcards", "n_sources", "act", "suffix_act", "source_row",
                   "example", "short_text"]
EVALUATION_COLUMNS = ["scope", "latent_idx", "n_patterns", "n_steps", "tp", "fp", "fn",
                      "n_active", "n_matched", "precision", "recall", "f1"]


@dataclasses.dataclass(frozen=True)
class ReferenceN2GConfig(Config):
    """R's N2G mining and evaluation (defaults: R's ``configs/experiment.yaml``, section n2g).

    Args:
        n_latents: latents explained, those with the largest summed normalised activation over
            the training steps (R: ``top_latents_k: 50``, experiment.yaml:17).
        n_patterns: distinct patterns mined per latent (R: ``pattern_k: 20``, :18).
        suffix_ratio: the fraction of an example's activation that a suffix, and a suffix with
            one token padded out, must keep (R: 0.5, :19).
        active_threshold: a latent is active on a step when its normalised activation exceeds
            this (R: ``latent_active_threshold: 0.0``, :20).
        n_eval_steps: validation steps evaluated, the first ones (R: ``eval_batches: 500`` at
            ``batch_size: 1``, :13-14).
        max_candidates: a budget for the CPU toy: at most this many top examples are tried per
            latent (None: R, all of them until ``n_patterns`` distinct patterns).
        round_float16: round suffix and wildcard activations to float16 before comparing, as R
            does (N2G_pattern.py:40).
        batch_size: sequences encoded per forward pass (R: 1; a speed setting only).
    """

    n_latents: int = 50
    n_patterns: int = 20
    suffix_ratio: float = 0.5
    active_threshold: float = 0.0
    n_eval_steps: int = 500
    max_candidates: int | None = None
    round_float16: bool = True
    batch_size: int = 64

    def __post_init__(self):
        for name in ("n_latents", "n_patterns", "n_eval_steps", "batch_size"):
            check_range(name, getattr(self, name), 1)
        check_range("suffix_ratio", self.suffix_ratio, 0.0, 1.0)
        check_range("active_threshold", self.active_threshold, 0.0)
        if self.max_candidates is not None:
            check_range("max_candidates", self.max_candidates, 1,
                        hint="Use None for R's rule (no limit).")
        if not isinstance(self.round_float16, bool):
            raise ValueError(f"round_float16={self.round_float16!r} must be true or false.")


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def sequence_batch(sequences: Sequence[Sequence[int]], pad_id: int, sep_id: int) -> StepBatch:
    """Right-pad raw token sequences into a ``StepBatch`` read at each one's last token.

    Unlike ``data.collate`` nothing is added: a suffix of ``context <sep> step <eos>`` is
    encoded as it is (R's ``find_shortest_suffix``). ``sep_pos`` is the first ``<sep>`` or 0,
    ``step_mask`` is empty (no reconstruction target).

    Raises:
        ValueError: an empty sequence.
    """
    if any(len(s) == 0 for s in sequences):
        raise ValueError("an empty token sequence cannot be encoded; every suffix has >= 1 token.")
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, :len(seq)] = torch.tensor(list(seq))
        attention_mask[i, :len(seq)] = 1
    sep_pos = torch.tensor([list(s).index(sep_id) if sep_id in s else 0 for s in sequences])
    return StepBatch(input_ids, attention_mask, torch.zeros_like(input_ids, dtype=torch.bool),
                     sep_pos, attention_mask.sum(1) - 1)


def sequence_latents(model, sequences: Sequence[Sequence[int]], batch_size: int = 64
                     ) -> np.ndarray:
    """L2-normalised latents ``[n_sequences, n_latents]`` (float32) of raw token sequences.

    Each sequence is encoded alone (no context added) and read at its last token (R's
    ``sample_Tr`` on one sequence, model_qwen.py:119-124).

    Args:
        model: a ``StepSAE`` (or anything with ``encode(StepBatch)``, ``pad_id``, ``sep_id``).
        sequences: token id lists, each non-empty.
        batch_size: sequences per forward pass.
    """
    model.eval()
    device, out = _device(model), []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequence_batch(sequences[start:start + batch_size], model.pad_id, model.sep_id)
            batch = StepBatch(*(getattr(batch, f.name).to(device)
                                for f in dataclasses.fields(batch)))
            out.append(model.encode(batch).float().cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def full_sequences(model, examples: StepExamples) -> list[list[int]]:
    """Each step's full sequence ``context <sep> step <eos>`` (R: dataloader.py:84-89)."""
    return [[*c, model.sep_id, *s, model.eos_id]
            for c, s in zip(examples.context_ids, examples.step_ids)]


def top_latents(latents: np.ndarray, n: int) -> np.ndarray:
    """R's latents: the ``n`` with the largest sum over ``latents [n_steps, n_latents]``.

    Dead latents are included when fewer than ``n`` are alive (R's ``torch.topk``,
    N2G_pattern.py:31); ties go to the lower index; ``n`` is capped at ``n_latents`` (R's
    ``topk`` would fail).
    """
    total = np.asarray(latents, dtype=np.float64).sum(0)
    return np.argsort(-total, kind="stable")[:n]


def _latent_values(model, sequences, latent_idx: int, cfg: ReferenceN2GConfig) -> np.ndarray:
    values = sequence_latents(model, sequences, cfg.batch_size)[:, latent_idx]
    return values.astype(np.float16).astype(np.float32) if cfg.round_float16 else values


def shortest_suffix(model, sequence: Sequence[int], latent_idx: int, act: float,
                    cfg: ReferenceN2GConfig) -> tuple[list[int], float]:
    """R's pruning: the shortest suffix whose latent keeps ``suffix_ratio * act``.

    Suffixes of length 1, 2, ... of ``sequence`` (the full ``context <sep> step <eos>``) are
    encoded alone; the first whose (float16-rounded) activation is ``>= suffix_ratio * act`` is
    kept (N2G_pattern.py:60-72).

    Args:
        model: the step SAE.
        sequence: the example's full sequence.
        latent_idx: the latent.
        act: the example's activation of it (the full sequence's).
        cfg: ``suffix_ratio``, ``round_float16``, ``batch_size``.

    Returns:
        The suffix and its activation; the whole sequence and ``act`` when none qualifies.
    """
    sequence = list(sequence)
    for start in range(1, len(sequence) + 1, cfg.batch_size):
        lengths = range(start, min(start + cfg.batch_size, len(sequence) + 1))
        values = _latent_values(model, [sequence[-k:] for k in lengths], latent_idx, cfg)
        kept = np.flatnonzero(values >= cfg.suffix_ratio * act)
        if len(kept):
            return sequence[-lengths[kept[0]]:], float(values[kept[0]])
    return sequence, float(act)


def wildcard_positions(model, suffix: Sequence[int], latent_idx: int, act: float,
                       cfg: ReferenceN2GConfig) -> list[bool]:
    """R's wildcards: positions whose replacement by the pad token keeps ``suffix_ratio * act``.

    ``act`` is the example's activation (the full sequence's), not the suffix's
    (N2G_pattern.py:74-90, 125-127); the pad token is ``model.pad_id`` (R: the tokenizer's pad,
    else ``<eos>``, 54-58).

    Returns:
        One flag per position of ``suffix``: True where it is a wildcard.
    """
    variants = [[*suffix[:i], model.pad_id, *suffix[i + 1:]] for i in range(len(suffix))]
    values = _latent_values(model, variants, latent_idx, cfg)
    return [bool(v >= cfg.suffix_ratio * act) for v in values]


def mine_patterns(model, examples: StepExamples, latent_indices: Sequence[int],
                  cfg: ReferenceN2GConfig, tokenizer, latents: np.ndarray | None = None
                  ) -> pd.DataFrame:
    """R's patterns for each latent in ``latent_indices`` (N2G_pattern.py:92-152).

    Args:
        model: the step SAE.
        examples: the steps mined from (R: the training file).
        latent_indices: the latents (R: ``top_latents`` of the training latents).
        cfg: the budgets and thresholds.
        tokenizer: decodes pattern tokens and example texts.
        latents: ``[len(examples), n_latents]`` normalised latents of ``examples``, if already
            computed (``sequence_latents(model, full_sequences(model, examples))``).

    Returns:
        One row per distinct pattern, in the order found: latent_idx, pattern_idx, tokens (R's
        pattern: decoded token strings, ``"*"`` = wildcard), pattern_text (R's report form: the
        strings joined by spaces, stripped), token_ids (the suffix's ids, -1 = wildcard),
        n_tokens, n_wildcards, n_sources (examples tried that gave this pattern), act (the first
        source's activation), suffix_act, source_row (its row in ``examples``), example (its full
        sequence as text, special tokens skipped), short_text (the suffix likewise).

    Raises:
        ValueError: no examples, or ``latents`` of the wrong shape.
    """
    _check_nonempty(examples, "mine patterns from")
    sequences = full_sequences(model, examples)
    if latents is None:
        latents = sequence_latents(model, sequences, cfg.batch_size)
    if len(latents) != len(examples):
        raise ValueError(f"latents has {len(latents)} rows for {len(examples)} examples; pass "
                         "the latents of these examples or None.")
    rows = []
    for latent_idx in (int(i) for i in latent_indices):
        acts = latents[:, latent_idx]
        order = np.argsort(-acts, kind="stable")
        order = order[acts[order] > cfg.active_threshold][:cfg.max_candidates]
        found: dict[tuple[str, ...], dict] = {}
        for row in (int(r) for r in order):
            if len(found) >= cfg.n_patterns:
                break
            act = float(acts[row])
            suffix, suffix_act = shortest_suffix(model, sequences[row], latent_idx, act, cfg)
            wild = wildcard_positions(model, suffix, latent_idx, act, cfg)
            tokens = tuple(WILDCARD if w else tokenizer.decode([t]) for t, w in zip(suffix, wild))
            if tokens in found:
                found[tokens]["n_sources"] += 1
                continue
            found[tokens] = {
                "latent_idx": latent_idx, "pattern_idx": len(found), "tokens": list(tokens),
                "pattern_text": " ".join(tokens).strip(),
                "token_ids": [WILDCARD_ID if w else int(t) for t, w in zip(suffix, wild)],
                "n_tokens": len(tokens), "n_wildcards": sum(wild), "n_sources": 1, "act": act,
                "suffix_act": suffix_act, "source_row": row,
                "example": tokenizer.decode(sequences[row], skip_special_tokens=True),
                "short_text": tokenizer.decode(suffix, skip_special_tokens=True)}
        rows.extend(found.values())
    return pd.DataFrame(rows, columns=PATTERN_COLUMNS)


def pattern_ids(tokens: Sequence[str], tokenizer) -> list[int]:
    """R's matcher form of a pattern: each string re-encoded, its first id kept.

    ``"*"`` becomes ``WILDCARD_ID``; a string that encodes to nothing is dropped
    (N2G_pattern.py:159-168).
    """
    out = []
    for token in tokens:
        if token == WILDCARD:
            out.append(WILDCARD_ID)
            continue
        ids = tokenizer.encode(token, add_special_tokens=False)
        if ids:
            out.append(int(ids[0]))
    return out


def window_match(pattern: Sequence[int], sequence: Sequence[int]) -> bool:
    """Whether ``pattern`` (ids, ``WILDCARD_ID`` matching any token) fits a window anywhere in
    ``sequence`` (N2G_pattern.py:170-195). An empty pattern matches every sequence, as in R."""
    n, sequence = len(pattern), list(sequence)
    return any(all(p == WILDCARD_ID or p == sequence[i + j] for j, p in enumerate(pattern))
               for i in range(len(sequence) - n + 1))


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """R's ratios, with its ``1e-8`` guards (N2G_pattern.py:232-234): 0, not NaN, when undefined."""
    precision = tp / (tp + fp + EPS)
    recall = tp / (tp + fn + EPS)
    return precision, recall, 2 * precision * recall / (precision + recall + EPS)


def evaluate_patterns(model, patterns: pd.DataFrame, examples: StepExamples,
                      latent_indices: Sequence[int], cfg: ReferenceN2GConfig, tokenizer,
                      latents: np.ndarray | None = None) -> pd.DataFrame:
    """R's evaluation of each latent's patterns on the first ``cfg.n_eval_steps`` steps.

    Args:
        model: the step SAE.
        patterns: ``mine_patterns`` output.
        examples: validation steps (R: the first 500 of the validation file).
        latent_indices: the latents to evaluate; one without patterns predicts nothing active.
        cfg: ``n_eval_steps``, ``active_threshold``.
        tokenizer: re-encodes the pattern strings (``pattern_ids``).
        latents: normalised latents of ``examples`` (at least the first ``n_eval_steps`` rows),
            if already computed.

    Returns:
        One row per latent (scope ``"latent"``) and a last row (scope ``"micro"``, latent_idx
        <NA>) from the summed counts (R's "average", N2G_pattern.py:437-457): n_patterns, n_steps,
        tp, fp, fn, n_active (tp + fn), n_matched (tp + fp), precision, recall, f1.

    Raises:
        ValueError: no examples, or ``latents`` with too few rows.
    """
    _check_nonempty(examples, "evaluate on")
    n = min(cfg.n_eval_steps, len(examples))
    sequences = full_sequences(model, examples.subset(range(n)))
    if latents is None:
        latents = sequence_latents(model, sequences, cfg.batch_size)
    if len(latents) < n:
        raise ValueError(f"latents has {len(latents)} rows, fewer than the {n} steps evaluated.")
    rows, totals = [], np.zeros(3, dtype=int)
    for latent_idx in (int(i) for i in latent_indices):
        own = patterns.loc[patterns["latent_idx"] == latent_idx, "tokens"]
        matchers = [pattern_ids(tokens, tokenizer) for tokens in own]
        matched = np.array([any(window_match(m, seq) for m in matchers) for seq in sequences],
                           dtype=bool)
        active = latents[:n, latent_idx] > cfg.active_threshold
        counts = np.array([(matched & active).sum(), (matched & ~active).sum(),
                           (~matched & active).sum()])
        totals += counts
        rows.append(_evaluation_row("latent", latent_idx, len(matchers), n, counts))
    rows.append(_evaluation_row("micro", pd.NA, len(patterns[patterns["latent_idx"].isin(
        [int(i) for i in latent_indices])]), n, totals))
    table = pd.DataFrame(rows, columns=EVALUATION_COLUMNS)
    table["latent_idx"] = table["latent_idx"].astype("Int64")
    return table


def _check_nonempty(examples: StepExamples, what: str) -> None:
    if len(examples) == 0:
        raise ValueError(f"there are no steps to {what}; pass a non-empty StepExamples "
                         "(check the split and the step_n_* sizes).")


def _evaluation_row(scope, latent_idx, n_patterns: int, n_steps: int, counts) -> dict:
    tp, fp, fn = (int(c) for c in counts)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"scope": scope, "latent_idx": latent_idx, "n_patterns": n_patterns,
            "n_steps": n_steps, "tp": tp, "fp": fp, "fn": fn, "n_active": tp + fn,
            "n_matched": tp + fp, "precision": precision, "recall": recall, "f1": f1}


def reference_n2g(model, train: StepExamples, valid: StepExamples, cfg: ReferenceN2GConfig,
                  tokenizer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """R's whole N2G run (N2G_pattern.py:358-457): pick latents, mine, evaluate.

    Args:
        model: the trained step SAE.
        train: steps to pick latents and mine patterns from (R: the training file).
        valid: steps to evaluate on (R: the validation file; its first ``cfg.n_eval_steps``).
        cfg: R's settings (``ReferenceN2GConfig()``) or a smaller budget for the toy.
        tokenizer: the SAE's tokenizer (with ``<sep>``).

    Returns:
        ``(patterns, evaluation)``: ``mine_patterns`` and ``evaluate_patterns`` tables.

    Used by notebook 08 (``n2g_mode = "reference"``).
    """
    latents = sequence_latents(model, full_sequences(model, train), cfg.batch_size)
    chosen = top_latents(latents, cfg.n_latents)
    patterns = mine_patterns(model, train, chosen, cfg, tokenizer, latents)
    return patterns, evaluate_patterns(model, patterns, valid, chosen, cfg, tokenizer)
