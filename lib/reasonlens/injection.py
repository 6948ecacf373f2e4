"""Token-injection control: does a feature fire because of the word, or because of the reasoning?

Four kinds of text from the same problems: reasoning traces, the same traces with every reasoning
word removed, plain answers, and the same plain answers with reasoning words inserted. A feature
that detects words fires on injected plain text as on traces and goes quiet on stripped traces; a
feature about reasoning keeps firing on stripped traces and stays low on injected plain text.
Effect sizes are Cohen's d with paired bootstrap intervals of the mean difference.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from reasonlens import constants as K
from reasonlens.config import check_range
from reasonlens.evaluation import paired_bootstrap_difference
from reasonlens.explorer import feature_activations as encode_features
from reasonlens.models import sae_on_model_device
from reasonlens.scoring import (ReasonScoreConfig, default_ignore_ids, folded_sae, ignored_mask,
                                reasoning_groups, word_masks)

# How each word opens a sentence when injected (capitalised, with its usual punctuation).
OPENERS = {"alternatively": "Alternatively, ", "hmm": "Hmm, ", "maybe": "Maybe ",
           "wait": "Wait. ", "perhaps": "Perhaps ", "let me": "Let me see. ",
           "therefore": "Therefore, ", "however": "However, ", "but": "But ",
           "another": "Another way: "}


def strip_words(text: str, words: Sequence[str] = K.REASONING_WORDS) -> str:
    """``text`` without the words (whole words, any case) and the punctuation right after them."""
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    stripped = re.sub(rf"\b(?:{alternatives})\b[.,:]? ?", "", text, flags=re.IGNORECASE)
    return re.sub(r" {2,}", " ", stripped)


def inject_words(text: str, n_words: int, seed: int,
                 words: Sequence[str] = K.REASONING_WORDS,
                 assistant_prefix: str = K.ASSISTANT) -> str:
    """Insert ``n_words`` reasoning openers before the assistant's reply in ``text``.

    ``assistant_prefix`` is the text that opens the reply (the toy's ``<|assistant|>``;
    ``world.chat_format(tokenizer).assistant_prefix`` for a chat template).

    Raises:
        ValueError: ``text`` has no assistant turn, or a word has no opener.
    """
    check_range("n_words", n_words, 0)
    unknown = [w for w in words if w not in OPENERS]
    if unknown:
        raise ValueError(f"words {unknown} have no opener; choose from {list(OPENERS)}.")
    if assistant_prefix not in text:
        raise ValueError(f"text has no {assistant_prefix!r} turn to inject into: {text[:60]!r}; "
                         "pass the format's assistant_prefix.")
    rng = random.Random(seed)
    head, reply = text.split(assistant_prefix, 1)
    openers = "".join(OPENERS[w] for w in rng.choices(list(words), k=n_words))
    return f"{head}{assistant_prefix}{openers}{reply}"


def feature_activations(model, sae, texts: Sequence[str], features: Sequence[int],
                        cfg: ReasonScoreConfig | None = None, batch_size: int = 16
                        ) -> pd.DataFrame:
    """Per text and feature: mean and max activation over its tokens, mean inside word windows.

    Args:
        model: a hooked model (either backend) with ``tokenizer``.
        sae: a SAELens SAE (decoder norms folded into a copy, as for ReasonScore), moved to the
            model's device first (``models.sae_on_model_device``).
        texts: documents, special tokens spelled out.
        features: feature indices.
        cfg: words, window and ignored tokens, as for ReasonScore.
        batch_size: texts per forward pass.

    Returns:
        One row per (text_idx, feature_idx): doc_mean, doc_max, window_mean (NaN when the text has
        no reasoning word).

    Raises:
        ValueError: no texts, or an SAE on the meta device.
    """
    cfg = cfg or ReasonScoreConfig()
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to measure.")
    tokenizer = model.tokenizer
    groups = list(reasoning_groups(tokenizer, cfg).values())
    ignore_ids = default_ignore_ids(tokenizer, cfg)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    width = max(map(len, ids))  # right padding: a causal model's earlier positions are unchanged
    tokens = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids])
    acts = encode_features(model, folded_sae(sae_on_model_device(sae, model)), tokens, features,
                           cfg.hook_name, batch_size, progress=False)  # [texts, pos, features]
    keep = (~ignored_mask(tokens, ignore_ids)).float()[..., None]
    window = word_masks(tokens, groups, cfg.window, ignore_ids,
                        cfg.window_edges).any(0).float()[..., None]
    in_window = window.sum(1)
    stats = {"doc_mean": (acts * keep).sum(1) / keep.sum(1).clamp(min=1),
             "doc_max": acts.masked_fill(keep == 0, -torch.inf).amax(1),
             "window_mean": torch.where(in_window > 0,
                                        (acts * window).sum(1) / in_window.clamp(min=1),
                                        torch.nan)}
    n_texts, n_features = stats["doc_mean"].shape
    return pd.DataFrame({"text_idx": np.repeat(np.arange(n_texts), n_features),
                         "feature_idx": np.tile(list(features), n_texts),
                         **{k: v.reshape(-1).numpy() for k, v in stats.items()}})


def injection_texts(traces: Sequence[str], plains: Sequence[str], n_words: int, seed: int = 0,
                    assistant_prefix: str = K.ASSISTANT) -> dict[str, list[str]]:
    """The four kinds of text of the control, from paired traces and plain answers of problems
    (``assistant_prefix`` as for ``inject_words``)."""
    if len(traces) != len(plains):
        raise ValueError(f"traces ({len(traces)}) and plains ({len(plains)}) must pair up, one of "
                         "each per problem.")
    return {"trace": list(traces),
            "trace, words removed": [strip_words(t) for t in traces],
            "plain": list(plains),
            "plain, words injected": [inject_words(t, n_words, seed + i,
                                                   assistant_prefix=assistant_prefix)
                                      for i, t in enumerate(plains)]}


def measure_conditions(model, sae, texts: dict[str, Sequence[str]], problem_ids: Sequence,
                       features: Sequence[int], cfg: ReasonScoreConfig | None = None
                       ) -> pd.DataFrame:
    """``feature_activations`` for each kind of text, labelled by condition and problem_id."""
    frames = []
    for condition, kind_texts in texts.items():
        acts = feature_activations(model, sae, kind_texts, features, cfg)
        acts["condition"] = condition
        acts["problem_id"] = np.asarray(problem_ids)[acts.text_idx]
        frames.append(acts)
    return pd.concat(frames, ignore_index=True)


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean a - mean b) / pooled standard deviation (NaN when both are constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1))
                     / max(1, a.size + b.size - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def effect_sizes(frame: pd.DataFrame, contrasts: Sequence[tuple[str, str]],
                 metric: str = "doc_mean", seed: int = 0) -> pd.DataFrame:
    """Paired contrasts between conditions of ``feature_activations`` frames, per feature.

    Args:
        frame: rows with condition, problem_id, feature_idx and ``metric``; conditions of one
            contrast must cover the same problems.
        contrasts: ``(condition_a, condition_b)`` pairs; the difference is a - b.
        metric: ``doc_mean``, ``doc_max`` or ``window_mean``.
        seed: bootstrap seed.

    Returns:
        One row per (feature, contrast): mean_a, mean_b, difference with its 95% interval, d.
    """
    rows = []
    for f, group in frame.groupby("feature_idx", sort=False):
        values = group.pivot_table(index="problem_id", columns="condition", values=metric)
        for a, b in contrasts:
            for name in (a, b):
                if name not in values:
                    raise ValueError(f"condition {name!r} is not in frame; conditions are "
                                     f"{sorted(set(frame.condition))}.")
            pair = values[[a, b]].dropna()
            diff, low, high = paired_bootstrap_difference(pair[a], pair[b], seed=seed)
            rows.append(dict(feature_idx=f, contrast=f"{a} - {b}", n=len(pair),
                             mean_a=pair[a].mean(), mean_b=pair[b].mean(), difference=diff,
                             ci_low=low, ci_high=high, cohens_d=cohens_d(pair[a], pair[b])))
    return pd.DataFrame(rows)
