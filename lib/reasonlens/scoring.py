"""ReasonScore: which SAE features fire on reasoning words, and a prompt-level score.

Implements the ReasonScore of Galichin et al. (2025), "I Have Covered All the Bases Here:
Interpreting Reasoning Features in LLMs via Sparse Autoencoders" (arXiv 2503.18878), Sec. 3.2,
Eq. (1)-(3), as specified in docs/design.md ("ReasonScore"):

    mu_i(f)   mean activation of feature f over mask_i (the tokens of every match of word i,
              widened by ``window``, minus ignored tokens)
    p_i(f)    = mu_i(f) / sum_j mu_j(f)
    H(f)      = -sum_i p_i(f) log p_i(f) / log |R|          (1 when |R| = 1)
    score(f)  = mu_pos(f) / sum_g mu_pos(g) * H(f)^alpha - mu_neg(f) / sum_g mu_neg(g)

where mask_pos is the union of the word masks and mask_neg every other non-ignored token.

Means are kept as sums and counts (``ReasonStats``), so the statistic is exact under any batching
and can be sharded over processes and summed (``reasonlens.distributed``). Unlike the paper's code,
which runs the model once per *batch of features*, this runs it once per *batch of tokens* and
encodes all features at once.

Matching is on token-id sequences: a variant matches wherever its ids occur contiguously, so a
variant that tokenizes into sub-word pieces (the toy tokenizer spells "wait" as "w" + "ait") also
matches inside a longer word made of the same pieces. Real BPE vocabularies hold the common variants
(" Wait", " but") as single tokens, where this does not arise.

Conventions for the corner cases (0/0):

- A word that never occurs in the tokens has count 0 and ``mu_i = 0`` for every feature. It still
  counts in ``|R|`` (the vocabulary is what the config names), so it lowers the attainable entropy
  for every feature alike; ``reason_score`` logs a warning naming it.
- A feature with ``sum_j mu_j(f) = 0`` (it never fires on any word) gets ``p_i(f) = 0`` and
  ``H(f) = 0`` (with ``|R| = 1``, ``H = 1`` by definition).
- When ``sum_g mu_pos(g) = 0`` (or the mu_neg sum is 0) the corresponding term is 0.

Used by notebooks/04_reason_score.py (scores), 05 (max activations) and 06 (steering strengths).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from reasonlens.config import Config, check_range
from reasonlens.constants import REASON_TOKENS, REASONING_WORDS
from reasonlens.models import (check_sae_fits, device_of, parse_hook_name, sae_hook_name,
                               sae_on_model_device, special_token_ids)

log = logging.getLogger(__name__)

TokenGroups = tuple[tuple[tuple[int, ...], ...], ...]
VARIANT_RULES = ("listed", "all_forms")
WINDOW_EDGES = ("definition", "reference")


# --- Configuration -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ReasonScoreConfig(Config):
    """How to compute ReasonScore (Galichin et al., 2025, Sec. 3.2).

    The default scores what the paper's code scores: the 34 strings of its
    ``extraction/reason_tokens.json`` (``constants.REASON_TOKENS``) in 10 groups, window (1, 2),
    alpha 0.7, BOS/EOS ignored. ``ReasonScoreConfig.reference()`` also reproduces the code's
    window edges bit for bit; ``ReasonScoreConfig.all_forms()`` is the rule the paper's text
    suggests (every word in all four forms, 40 strings, including " but").

    Args:
        words: the reasoning vocabulary R. Keyword mode with ``variants="listed"`` (the
            reference's): each string is one variant, and variants with the same
            ``s.lstrip().lower()`` form one group, named by it ("Let me" and " let me" are group
            "let me"). With ``variants="all_forms"``: each word stands for its lower-case and
            capitalised forms, each with and without a leading space. Token-id mode: the names of
            the groups in ``token_ids``. None: ``constants.REASON_TOKENS``.
        variants: ``"listed"`` or ``"all_forms"`` (keyword mode only; see ``words``).
        token_ids: token-id mode when not None: one entry per group, each a sequence of token-id
            sequences (an int stands for a one-token sequence). ``words`` must name each group.
        window: ``(left, right)`` tokens added around every match (paper: (1, 2)).
        window_edges: ``"definition"``: a match near a context's edge is widened by the window and
            clipped there. ``"reference"``: as the paper's code does it, where clipping at the first
            token makes several window starts coincide and its ``delta[b, starts] += 1`` counts them
            once, so the window ends early (``window_masks``).
        alpha: entropy exponent (paper: 0.7).
        ignore_token_ids: token ids excluded from every mask; None means the tokenizer's BOS, EOS
            and PAD (the paper ignores BOS/EOS).
        hook_name: the SAE's hook point, e.g. ``blocks.1.hook_resid_post``; None takes the SAE's
            ``cfg.metadata.hook_name``.
        batch_size: contexts per model pass.
    """

    words: tuple[str, ...] | None = REASON_TOKENS  # reference extraction/reason_tokens.json
    variants: str = "listed"  # reference compute_score.py: groups by str.lstrip().lower()
    token_ids: TokenGroups | None = None
    window: tuple[int, int] = (1, 2)  # paper Sec. 3.2; reference compute_score.sh --expand_range
    window_edges: str = "definition"
    alpha: float = 0.7  # paper Sec. 3.2
    ignore_token_ids: tuple[int, ...] | None = None
    hook_name: str | None = None
    batch_size: int = 8

    def __post_init__(self):
        if self.words is None:
            object.__setattr__(self, "words", REASON_TOKENS)
        if isinstance(self.words, str) or not all(isinstance(w, str) and w.strip()
                                                  for w in self.words):
            raise ValueError(f"words={self.words!r} must be a sequence of non-empty strings, "
                             f"e.g. {REASONING_WORDS[:3]}.")
        if len(self.words) == 0:
            raise ValueError("words=() is empty; give at least one reasoning word.")
        if len(set(self.words)) != len(self.words):
            raise ValueError(f"words={self.words!r} has duplicates; each word is one group.")
        object.__setattr__(self, "words", tuple(self.words))
        window = tuple(self.window)
        if len(window) != 2 or not all(isinstance(w, int) and w >= 0 for w in window):
            raise ValueError(f"window={self.window!r} must be two non-negative ints (left, right), "
                             "e.g. (1, 2).")
        object.__setattr__(self, "window", window)
        if self.variants not in VARIANT_RULES:
            raise ValueError(f"variants={self.variants!r} is unknown; use one of {VARIANT_RULES}.")
        if self.window_edges not in WINDOW_EDGES:
            raise ValueError(f"window_edges={self.window_edges!r} is unknown; use one of "
                             f"{WINDOW_EDGES}.")
        check_range("alpha", self.alpha, 0.0, hint="The paper uses alpha=0.7.")
        check_range("batch_size", self.batch_size, 1)
        if self.ignore_token_ids is not None:
            object.__setattr__(self, "ignore_token_ids",
                               tuple(int(i) for i in self.ignore_token_ids))
        if self.token_ids is not None:
            object.__setattr__(self, "token_ids", _normalise_token_groups(self.token_ids))
            if len(self.token_ids) != len(self.words):
                raise ValueError(
                    f"token_ids has {len(self.token_ids)} groups but words has {len(self.words)} "
                    "names; pass words=(...) with one name per token-id group.")

    @classmethod
    def reference(cls, **overrides) -> ReasonScoreConfig:
        """The paper's code exactly, window edges included (for bit-exact published scores)."""
        return cls(**{"window_edges": "reference"} | overrides)

    @classmethod
    def all_forms(cls, **overrides) -> ReasonScoreConfig:
        """The paper's text: its ten words, each in all four case and leading-space forms."""
        return cls(**{"words": REASONING_WORDS, "variants": "all_forms"} | overrides)


def _normalise_token_groups(groups) -> TokenGroups:
    out = []
    for i, group in enumerate(groups):
        seqs = []
        for seq in ([group] if isinstance(group, int) else group):
            seq = (seq,) if isinstance(seq, int) else tuple(int(t) for t in seq)
            if not seq:
                raise ValueError(f"token_ids group {i} holds an empty token sequence.")
            seqs.append(seq)
        if not seqs:
            raise ValueError(f"token_ids group {i} is empty; give at least one token sequence.")
        out.append(tuple(dict.fromkeys(seqs)))
    if not out:
        raise ValueError("token_ids=() is empty; give at least one group or use None "
                         "for keyword mode.")
    return tuple(out)


# --- Vocabulary ---------------------------------------------------------------------------------
def word_variants(word: str) -> list[str]:
    """Case and leading-space variants of one reasoning word (the ``all_forms`` rule).

    Example:
        >>> word_variants("let me")
        ['let me', ' let me', 'Let me', ' Let me']
    """
    word = word.strip()
    forms = dict.fromkeys([word.lower(), word[:1].upper() + word[1:].lower()])
    return [v for form in forms for v in (form, " " + form)]


def group_name(variant: str) -> str:
    """The group of a keyword variant, named as the paper's code names it: lstrip, lower-case."""
    return variant.lstrip().lower()


def keyword_groups(cfg: ReasonScoreConfig) -> dict[str, list[str]]:
    """The variant strings of every keyword group, ``{group_name: [variant, ...]}``.

    Groups come in the order their first variant appears in ``cfg.words``.

    Example:
        >>> keyword_groups(ReasonScoreConfig(words=("Wait", " wait", "let me")))
        {'wait': ['Wait', ' wait'], 'let me': ['let me']}
    """
    strings = (cfg.words if cfg.variants == "listed"
               else [v for word in cfg.words for v in word_variants(word)])
    groups: dict[str, list[str]] = {}
    for variant in strings:
        groups.setdefault(group_name(variant), [])
        if variant not in groups[group_name(variant)]:
            groups[group_name(variant)].append(variant)
    return groups


def reasoning_groups(tokenizer, cfg: ReasonScoreConfig) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The token-id sequences of every group: ``{group_name: (ids, ...)}``.

    Keyword mode tokenizes each variant of ``keyword_groups`` (no special tokens added), as the
    paper's code does. Unlike that code, a variant is dropped when its ids hold the unknown token
    or do not decode back to the variant (a tokenizer that cannot spell it would otherwise match
    something else); byte-level BPE vocabularies (Llama 3, Qwen2, SmolLM2) spell every variant, so
    there the two agree. A group with no usable variant is dropped with a warning.

    Raises:
        ValueError: the tokenizer can produce no variant of any group.
    """
    if cfg.token_ids is not None:
        return dict(zip(cfg.words, cfg.token_ids))
    groups: dict[str, tuple[tuple[int, ...], ...]] = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    for name, variants in keyword_groups(cfg).items():
        seqs = []
        for variant in variants:
            ids = tuple(tokenizer.encode(variant, add_special_tokens=False))
            if not ids or (unk is not None and unk in ids):
                continue
            if tokenizer.decode(list(ids)) != variant:
                continue
            seqs.append(ids)
        if seqs:
            groups[name] = tuple(dict.fromkeys(seqs))
        else:
            warnings.warn(f"words: {name!r} cannot be produced by this tokenizer (none of its "
                          f"variants {variants} round-trips); it is dropped from R.",
                          stacklevel=2)
    if not groups:
        raise ValueError(f"words={cfg.words!r}: the tokenizer can produce none of them. Use "
                         "words its vocabulary spells, or token-id mode (token_ids=...).")
    return groups


def default_ignore_ids(tokenizer, cfg: ReasonScoreConfig) -> tuple[int, ...]:
    """``cfg.ignore_token_ids``, or the tokenizer's BOS, EOS and PAD ids."""
    if cfg.ignore_token_ids is not None:
        return cfg.ignore_token_ids
    return special_token_ids(tokenizer)


# --- Masks --------------------------------------------------------------------------------------
def word_masks(tokens: torch.Tensor, groups: Sequence[Sequence[Sequence[int]]],
               window: tuple[int, int], ignore_ids: Sequence[int],
               edges: str = "definition") -> torch.Tensor:
    """Boolean masks ``[n_groups, batch, pos]``: every token of every match, widened, minus ignored.

    Args:
        tokens: ``[batch, pos]`` token ids.
        groups: per group, its token-id sequences.
        window: ``(left, right)`` widening, clipped at the sequence edges.
        ignore_ids: ids removed from every mask.
        edges: ``"definition"`` (every match covers ``[start - left, end + right]``, clipped) or
            ``"reference"`` (the paper's code: see ``reference_widen``).
    """
    batch, n_pos = tokens.shape
    left, right = window
    masks = torch.zeros(len(groups), batch, n_pos, dtype=torch.bool, device=tokens.device)
    for g, seqs in enumerate(groups):
        for seq in seqs:
            n = len(seq)
            if n > n_pos:
                continue
            starts = torch.ones(batch, n_pos - n + 1, dtype=torch.bool, device=tokens.device)
            for k, tok in enumerate(seq):
                starts &= tokens[:, k:n_pos - n + 1 + k] == tok
            if not starts.any():
                continue
            padded = torch.zeros(batch, n_pos, dtype=torch.bool, device=tokens.device)
            padded[:, :starts.shape[1]] = starts
            offsets = range(-left, n + right) if edges == "definition" else range(n)
            covered = torch.zeros(batch, n_pos, dtype=torch.bool, device=tokens.device)
            for offset in offsets:  # covered position = start + offset
                if abs(offset) >= n_pos:
                    continue
                if offset >= 0:
                    covered[:, offset:] |= padded[:, :n_pos - offset]
                else:
                    covered[:, :offset] |= padded[:, -offset:]
            masks[g] |= covered if edges == "definition" else reference_widen(covered, window)
    return masks & ~ignored_mask(tokens, ignore_ids)


def reference_widen(marked: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Widen ``[batch, pos]`` matched tokens by ``window`` as the paper's code does.

    AIRI-Institute/SAE-Reasoning, extraction/compute_score.py, ``_compute_single_mask``: for
    every marked position p, ``start = max(p - left, 0)`` and ``end = min(p + right, pos - 1)``;
    ``delta[b, start] += 1``, ``delta[b, end + 1] -= 1``; covered where ``cumsum(delta) > 0``.
    Indexed ``+=`` with repeated indices adds once, so where clipping at the first token gives
    k + 1 marked positions the same start, the running count is k short from there on: that
    window loses k positions at its right end ("Alternatively" at positions 0-2 with window
    (1, 2) covers 0-3, not 0-4), and every later position of the same context that fewer than
    k + 1 of this variant's windows cover is lost too. Clipping at the last token only touches the
    column past the end, so that edge is exact. Only a multi-token variant (or a repeated one)
    within ``left`` tokens of a context's start triggers it.
    """
    batch, n_pos = marked.shape
    left, right = window
    delta = torch.zeros(batch, n_pos + 1, dtype=torch.int32, device=marked.device)
    delta[:, 0] += marked[:, :left + 1].any(-1).int()  # every start clipped to 0 counts once
    if left + 1 < n_pos:
        delta[:, 1:n_pos - left] += marked[:, left + 1:].int()
    if right < n_pos:
        delta[:, right + 1:] -= marked[:, :n_pos - right].int()
    return delta.cumsum(-1)[:, :n_pos] > 0


def ignored_mask(tokens: torch.Tensor, ignore_ids: Sequence[int]) -> torch.Tensor:
    """``[batch, pos]``: True where the token id is ignored."""
    if not len(ignore_ids):
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, torch.tensor(list(ignore_ids), device=tokens.device))


# --- Statistics ---------------------------------------------------------------------------------
@dataclasses.dataclass
class ReasonStats:
    """Sums and counts behind ReasonScore; exact under batching, sharding and ``merge``.

    Attributes:
        words: the group names (|R| = len(words)).
        group_sum: ``[n_groups, d_sae]`` activation sums over each mask_i.
        group_count: ``[n_groups]`` tokens in each mask_i.
        pos_sum, neg_sum: ``[d_sae]`` sums over mask_pos and mask_neg.
        pos_count, neg_count: tokens in mask_pos and mask_neg (0-d tensors).
        max_activation: ``[d_sae]`` largest activation over non-ignored tokens (0 if none).
        n_active: ``[d_sae]`` non-ignored tokens where the feature is > 0.
    """

    words: tuple[str, ...]
    group_sum: torch.Tensor
    group_count: torch.Tensor
    pos_sum: torch.Tensor
    pos_count: torch.Tensor
    neg_sum: torch.Tensor
    neg_count: torch.Tensor
    max_activation: torch.Tensor
    n_active: torch.Tensor

    SUM_FIELDS = ("group_sum", "group_count", "pos_sum", "pos_count", "neg_sum", "neg_count",
                  "n_active")
    MAX_FIELDS = ("max_activation",)

    @classmethod
    def zeros(cls, words: Sequence[str], d_sae: int, device="cpu") -> ReasonStats:
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        return cls(tuple(words), torch.zeros(len(words), d_sae, **f64),
                   torch.zeros(len(words), **i64), torch.zeros(d_sae, **f64),
                   torch.zeros((), **i64), torch.zeros(d_sae, **f64), torch.zeros((), **i64),
                   torch.zeros(d_sae, **f64), torch.zeros(d_sae, **i64))

    @property
    def d_sae(self) -> int:
        return self.group_sum.shape[1]

    @property
    def n_tokens(self) -> int:
        """Non-ignored tokens seen."""
        return int(self.pos_count + self.neg_count)

    def update(self, feature_acts: torch.Tensor, masks: torch.Tensor, ignored: torch.Tensor
               ) -> None:
        """Add one batch.

        Args:
            feature_acts: ``[batch, pos, d_sae]``.
            masks: ``[n_groups, batch, pos]`` word masks (already minus ignored tokens).
            ignored: ``[batch, pos]`` ignored tokens.
        """
        acts = feature_acts.reshape(-1, feature_acts.shape[-1])
        flat = masks.reshape(masks.shape[0], -1)
        pos = flat.any(0)
        neg = ~pos & ~ignored.reshape(-1)
        selectors = torch.cat([flat, pos[None], neg[None]]).to(acts.dtype)
        sums = (selectors @ acts).to(torch.float64)
        counts = torch.cat([flat, pos[None], neg[None]]).sum(1).to(torch.int64)
        n = flat.shape[0]
        self.group_sum += sums[:n].to(self.group_sum.device)
        self.group_count += counts[:n].to(self.group_count.device)
        self.pos_sum += sums[n].to(self.pos_sum.device)
        self.neg_sum += sums[n + 1].to(self.neg_sum.device)
        self.pos_count += counts[n].to(self.pos_count.device)
        self.neg_count += counts[n + 1].to(self.neg_count.device)
        valid = acts[~ignored.reshape(-1)]
        if valid.shape[0]:
            batch_max = valid.max(0).values.to(torch.float64).to(self.max_activation.device)
            if self.n_tokens == valid.shape[0]:  # first non-empty batch
                self.max_activation.copy_(batch_max)
            else:
                torch.maximum(self.max_activation, batch_max, out=self.max_activation)
            self.n_active += (valid > 0).sum(0).to(self.n_active.device)

    def merge(self, other: ReasonStats) -> ReasonStats:
        """The statistics of both token sets (sums add, maxima take the larger).

        Raises:
            ValueError: different vocabularies or SAE widths.
        """
        if self.words != other.words or self.d_sae != other.d_sae:
            raise ValueError(f"cannot merge stats of words={self.words}, d_sae={self.d_sae} with "
                             f"words={other.words}, d_sae={other.d_sae}.")
        fields = {name: getattr(self, name) + getattr(other, name).to(getattr(self, name).device)
                  for name in self.SUM_FIELDS}
        if self.n_tokens == 0:
            fields["max_activation"] = other.max_activation.clone()
        elif other.n_tokens == 0:
            fields["max_activation"] = self.max_activation.clone()
        else:
            fields["max_activation"] = torch.maximum(self.max_activation, other.max_activation)
        return ReasonStats(words=self.words, **fields)

    def word_means(self) -> torch.Tensor:
        """``[n_groups, d_sae]`` mu_i(f); 0 for a word that never occurs."""
        counts = self.group_count.to(torch.float64).clamp(min=1)[:, None]
        return self.group_sum / counts

    def reason_score(self, alpha: float = 0.7) -> pd.DataFrame:
        """ReasonScore and its parts, one row per feature (Galichin et al., 2025, Eq. 1-3).

        Args:
            alpha: entropy exponent.

        Returns:
            Columns ``feature_idx, reason_score, mu_pos, mu_neg, entropy, density,
            max_activation`` and ``mu_<word>`` per word (spaces become underscores).
        """
        check_range("alpha", alpha, 0.0)
        mu = self.word_means().cpu()
        mu_pos = (self.pos_sum / self.pos_count.clamp(min=1)).cpu()
        mu_neg = (self.neg_sum / self.neg_count.clamp(min=1)).cpu()
        total = mu.sum(0)
        p = torch.where(total > 0, mu / torch.where(total > 0, total, 1.0), 0.0)
        if len(self.words) == 1:
            entropy = torch.ones(self.d_sae, dtype=torch.float64)
        else:
            plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)
            entropy = -plogp.sum(0) / math.log(len(self.words))
        pos_total, neg_total = mu_pos.sum(), mu_neg.sum()
        pos_term = mu_pos / pos_total if pos_total != 0 else torch.zeros_like(mu_pos)
        neg_term = mu_neg / neg_total if neg_total != 0 else torch.zeros_like(mu_neg)
        score = pos_term * entropy.clamp(min=0) ** alpha - neg_term
        n_tokens = max(self.n_tokens, 1)
        frame = pd.DataFrame({
            "feature_idx": range(self.d_sae),
            "reason_score": score.numpy(),
            "mu_pos": mu_pos.numpy(),
            "mu_neg": mu_neg.numpy(),
            "entropy": entropy.numpy(),
            "density": (self.n_active.cpu().to(torch.float64) / n_tokens).numpy(),
            "max_activation": self.max_activation.cpu().numpy(),
        })
        for i, word in enumerate(self.words):
            frame[word_column(word)] = mu[i].numpy()
        return frame


def word_column(word: str) -> str:
    """The column of a word's mean activation: ``mu_let_me`` for "let me"."""
    return "mu_" + "_".join(word.split())


# --- Running the model --------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the capture hook to skip the layers after the hook point."""


def capture_activations(model, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activations ``[batch, pos, d_model]`` at ``hook_name``, stopping the forward pass there.

    Works on both backends of ``reasonlens.models`` (their ``hooks`` remove hooks on exit).

    Raises:
        ValueError: ``hook_name`` is not in the model.
    """
    parse_hook_name(hook_name, model.n_layers)
    captured = {}

    def save(activation, hook):
        captured["acts"] = activation.detach()
        raise _Stop

    with torch.no_grad(), model.hooks([(hook_name, save)]):
        try:
            model(tokens)
        except _Stop:
            pass
    if "acts" not in captured:
        raise RuntimeError(f"hook_name={hook_name!r} never fired during the forward pass.")
    return captured["acts"]


def folded_sae(sae):
    """A copy of ``sae`` with decoder norms folded into the encoder (the original is untouched)."""
    sae = copy.deepcopy(sae)
    sae.fold_W_dec_norm()
    return sae.eval()


def _check_inputs(model, sae, tokens, hook_name: str) -> torch.Tensor:
    if isinstance(tokens, pd.DataFrame):
        from reasonlens.data import contexts_tensor
        tokens = contexts_tensor(tokens)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.numel() == 0:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a non-empty [batch, pos] tensor of token ids, got {shape}."
                         " Check that notebook 01 wrote contexts for this split.")
    check_sae_fits(sae, model.n_layers, model.d_model, hook_name)
    return tokens.long()


def encode_batch(model, sae, tokens: torch.Tensor, hook_name: str, batch_label: str = ""
                 ) -> torch.Tensor:
    """Feature activations ``[batch, pos, d_sae]`` of an (already folded) SAE on ``tokens``.

    The SAE must already be where the model's activations are (callers put it there once with
    ``models.sae_on_model_device``); its ``encode`` casts them to its dtype.

    Args:
        model: a hooked model.
        sae: a SAELens SAE at ``hook_name``.
        tokens: ``[batch, pos]`` token ids on the model's device.
        hook_name: the SAE's hook point.
        batch_label: names the batch in errors.

    Raises:
        ValueError: activations on another device than the SAE, naming both.
        FloatingPointError: non-finite model or feature activations.
    """
    acts = capture_activations(model, tokens, hook_name)
    if acts.device != sae.W_dec.device:
        raise ValueError(f"the activations at hook_name={hook_name!r} are on {acts.device} but the "
                         f"SAE is on {sae.W_dec.device}; put the SAE where the model is first "
                         "(models.sae_on_model_device(sae, model)).")
    if not torch.isfinite(acts).all():
        raise FloatingPointError(f"non-finite activations at hook_name={hook_name!r} in "
                                 f"{batch_label or 'this batch'}; check the model's dtype/weights.")
    with torch.no_grad():
        feature_acts = sae.encode(acts)
    if not torch.isfinite(feature_acts).all():
        raise FloatingPointError(f"non-finite SAE feature activations for hook_name={hook_name!r}"
                                 f" in {batch_label or 'this batch'}; check the SAE's weights.")
    return feature_acts


def accumulate_stats(model, sae, tokens, cfg: ReasonScoreConfig, batch_indices=None,
                     progress: bool = True, fold: bool = True) -> ReasonStats:
    """ReasonStats over ``tokens``, one model pass per batch of ``cfg.batch_size`` contexts.

    Args:
        model: a ``TLHookedModel`` or ``HFHookedModel``.
        sae: a SAELens SAE at ``cfg.hook_name``, moved to the model's device first
            (``models.sae_on_model_device``).
        tokens: ``[n_contexts, pos]`` token ids (or a contexts frame with a ``tokens`` column).
        cfg: the scoring config.
        batch_indices: which batches to run (for sharding); all when None.
        progress: show a tqdm bar.
        fold: fold decoder norms into a copy of the SAE first (False when already folded).

    Raises:
        ValueError: empty tokens, a hook the model lacks, an SAE of another width, no usable word,
            an SAE on the meta device.
        FloatingPointError: non-finite activations.
    """
    hook_name = sae_hook_name(sae, cfg.hook_name)
    tokens = _check_inputs(model, sae, tokens, hook_name)
    groups = reasoning_groups(model.tokenizer, cfg)
    ignore_ids = default_ignore_ids(model.tokenizer, cfg)
    sae = sae_on_model_device(sae, model)
    if fold:
        sae = folded_sae(sae)
    stats = ReasonStats.zeros(list(groups), sae.cfg.d_sae)
    n_batches = math.ceil(tokens.shape[0] / cfg.batch_size)
    indices = range(n_batches) if batch_indices is None else list(batch_indices)
    model_device = device_of(model)
    for b in tqdm(indices, desc="ReasonScore", disable=not progress, unit="batch"):
        batch = tokens[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(model_device)
        feature_acts = encode_batch(model, sae, batch, hook_name, f"batch {b}")
        batch = batch.to(feature_acts.device)
        masks = word_masks(batch, list(groups.values()), cfg.window, ignore_ids,
                           cfg.window_edges)
        stats.update(feature_acts, masks, ignored_mask(batch, ignore_ids))
    return stats


def reason_score(model, sae, tokens, cfg: ReasonScoreConfig | None = None, progress: bool = True
                 ) -> tuple[pd.DataFrame, ReasonStats]:
    """ReasonScore of every SAE feature (Galichin et al., 2025, Eq. 3).

    Example:
        >>> cfg = ReasonScoreConfig(hook_name="blocks.1.hook_resid_post")  # doctest: +SKIP
        >>> scores, stats = reason_score(model, sae, tokens, cfg)  # doctest: +SKIP
        >>> scores.nlargest(20, "reason_score")  # doctest: +SKIP

    Args:
        model: a ``TLHookedModel`` or ``HFHookedModel`` (``reasonlens.models.load_hooked``).
        sae: a SAELens SAE; decoder norms are folded into a copy.
        tokens: ``[n_contexts, pos]`` token ids (or a contexts frame).
        cfg: the scoring config (paper defaults when None).
        progress: show a tqdm bar over batches.

    Returns:
        ``(scores, stats)``: the per-feature frame of ``ReasonStats.reason_score`` and the stats.

    Raises:
        ValueError, FloatingPointError: see ``accumulate_stats``.
    """
    cfg = cfg or ReasonScoreConfig()
    stats = accumulate_stats(model, sae, tokens, cfg, progress=progress)
    warn_absent_words(stats)
    return stats.reason_score(cfg.alpha), stats


def warn_absent_words(stats: ReasonStats) -> None:
    absent = [w for w, c in zip(stats.words, stats.group_count.tolist()) if c == 0]
    if absent:
        log.warning("words %s never occur in the tokens: their mu is 0 for every feature and they "
                    "still count in |R|.", absent)


def compare_rankings(scores: Mapping[str, pd.DataFrame], top_k: int = 20) -> pd.DataFrame:
    """How other scorings of the same features move the ranking of the first one.

    Args:
        scores: name -> a ``reason_score`` frame (``feature_idx``, ``reason_score``), the first
            being the baseline; all over the same features.
        top_k: the size of the top sets compared.

    Returns:
        One row per scoring: ``top_k_overlap`` (features shared with the baseline's top_k),
        ``baseline_top_rank`` (1-based rank of the baseline's top feature), ``spearman`` (rank
        correlation of all scores with the baseline's) and ``max_abs_difference`` of the scores.

    Raises:
        ValueError: fewer than one scoring, or scorings over different features.
    """
    check_range("top_k", top_k, 1)
    if not scores:
        raise ValueError("scores is empty; pass {name: reason_score frame}.")
    frames = {name: frame.set_index("feature_idx").reason_score.sort_index()
              for name, frame in scores.items()}
    base = next(iter(frames.values()))
    base_top = set(base.nlargest(top_k).index)
    rows = []
    for name, score in frames.items():
        if not score.index.equals(base.index):
            raise ValueError(f"scores[{name!r}] covers other features than the first scoring.")
        ranks = score.rank(ascending=False, method="first")
        top = set(score.nlargest(top_k).index)
        rows.append(dict(scoring=name, top_k_overlap=len(base_top & top),
                         baseline_top_rank=int(ranks[base.idxmax()]),
                         spearman=float(base.rank().corr(score.rank())),
                         max_abs_difference=float((score - base).abs().max())))
    return pd.DataFrame(rows).set_index("scoring")


# --- Prompt-level score -------------------------------------------------------------------------
def prompt_score(model, sae, tokens: torch.Tensor, feature_idx: Sequence[int] | torch.Tensor,
                 top_k: int | None = None, hook_name: str | None = None,
                 ignore_token_ids: Sequence[int] | None = None, fold: bool = True
                 ) -> torch.Tensor:
    """Prompt-level reasoning score: mean over a prompt's tokens of the top-k features' activations.

    For each prompt, averages the activations of the first ``top_k`` features of ``feature_idx``
    (e.g. ranked by ReasonScore) over its non-ignored tokens, then over the features.

    Args:
        model: a hooked model.
        sae: a SAELens SAE (decoder norms folded into a copy when ``fold``), moved to the
            model's device first (``models.sae_on_model_device``).
        tokens: ``[batch, pos]`` prompts (pad with the tokenizer's PAD; it is ignored).
        feature_idx: features, best first.
        top_k: how many of them (all when None).
        hook_name: the SAE's hook point (the SAE's own when None).
        ignore_token_ids: excluded ids (the tokenizer's BOS/EOS/PAD when None).

    Returns:
        ``[batch]`` float tensor (0 for a prompt with no non-ignored token).

    Raises:
        ValueError: empty tokens or feature_idx, top_k < 1, a bad hook or SAE width, an SAE on the
            meta device.
    """
    hook_name = sae_hook_name(sae, hook_name)
    tokens = _check_inputs(model, sae, tokens, hook_name)
    idx = torch.as_tensor(feature_idx, dtype=torch.long).reshape(-1)
    if idx.numel() == 0:
        raise ValueError("feature_idx is empty; pass the features to score, e.g. the top "
                         "ReasonScore features.")
    if top_k is not None:
        check_range("top_k", top_k, 1)
        idx = idx[:top_k]
    if int(idx.max()) >= sae.cfg.d_sae or int(idx.min()) < 0:
        raise ValueError(f"feature_idx must lie in [0, {sae.cfg.d_sae}); got {idx.tolist()}.")
    sae = sae_on_model_device(sae, model)
    if fold:
        sae = folded_sae(sae)
    ids = (tuple(ignore_token_ids) if ignore_token_ids is not None
           else default_ignore_ids(model.tokenizer, ReasonScoreConfig()))
    tokens = tokens.to(device_of(model))
    feature_acts = encode_batch(model, sae, tokens, hook_name)[..., idx.to(tokens.device)]
    keep = (~ignored_mask(tokens, ids)).to(feature_acts.dtype).to(feature_acts.device)
    per_token = feature_acts.mean(-1)
    return (per_token * keep).sum(1) / keep.sum(1).clamp(min=1)


def top_activation_window_share(model, sae, tokens, feature_idx: Sequence[int],
                                cfg: ReasonScoreConfig | None = None, n_top: int = 50
                                ) -> pd.DataFrame:
    """How many of each feature's strongest activations fall inside reasoning-word windows.

    For each feature, takes its ``n_top`` largest activations over the non-ignored tokens of
    ``tokens`` and reports the share lying inside the union of the words' windows (mask_pos), next
    to the share of all tokens that lie there (the chance level).

    Args:
        model: a hooked model.
        sae: a SAELens SAE (decoder norms folded into a copy), moved to the model's device
            first (``models.sae_on_model_device``).
        tokens: ``[n_contexts, pos]`` token ids or a contexts frame.
        feature_idx: the features to check (e.g. the top ReasonScore features).
        cfg: words, window and ignored tokens as for ReasonScore.
        n_top: activations per feature.

    Returns:
        One row per feature: feature_idx, window_share, chance_share.
    """
    cfg = cfg or ReasonScoreConfig()
    check_range("n_top", n_top, 1)
    hook_name = sae_hook_name(sae, cfg.hook_name)
    tokens = _check_inputs(model, sae, tokens, hook_name)
    groups = reasoning_groups(model.tokenizer, cfg)
    ignore_ids = default_ignore_ids(model.tokenizer, cfg)
    sae = folded_sae(sae_on_model_device(sae, model))
    idx = torch.as_tensor(list(feature_idx), dtype=torch.long)
    values, inside, n_pos, n_kept = [], [], 0, 0
    for start in range(0, tokens.shape[0], cfg.batch_size):
        batch = tokens[start:start + cfg.batch_size].to(device_of(model))
        acts = encode_batch(model, sae, batch, hook_name)[..., idx.to(batch.device)]
        batch = batch.to(acts.device)
        keep = ~ignored_mask(batch, ignore_ids)
        pos = word_masks(batch, list(groups.values()), cfg.window, ignore_ids,
                         cfg.window_edges).any(0)
        values.append(acts[keep].float().cpu())  # [n_kept_tokens, n_features]
        inside.append(pos[keep].cpu())
        n_pos, n_kept = n_pos + int(pos[keep].sum()), n_kept + int(keep.sum())
    values, inside = torch.cat(values), torch.cat(inside)
    k = min(n_top, values.shape[0])
    top = values.topk(k, dim=0).indices  # [k, n_features]
    share = inside[top].float().mean(0)
    return pd.DataFrame({"feature_idx": idx.numpy(), "window_share": share.numpy(),
                         "chance_share": n_pos / max(1, n_kept)})
