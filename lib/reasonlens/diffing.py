"""Model diffing: the same SAE features on the base model and on the reasoning model (notebook 07).

Galichin et al. (2025) ask whether reasoning features exist only where reasoning was trained. The
reasoning model's SAE reads the residual stream of the base model (its fine-tuning parent) on the
same tokens; a feature that is about reasoning should lose its ReasonScore rank and its activation
on reasoning words there. That comparison (*transfer*) means something only where the SAE still
reconstructs the base model's activations; where the fine-tune moved the basis too far, the SAE is
first fine-tuned on the base model's activations (*adapted*, ``adapt_sae``), as stage-wise model
diffing fine-tunes one SAE from model to model (Bricken et al., 2024, "Stage-Wise Model Diffing"),
so every feature keeps its index and can be compared, with the cosine between its two decoder
directions (``decoder_cosine``) saying how far it moved. The authors' repository has no model
diffing code to follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from reasonlens.sae import SAETrainConfig, train_sae

STATS = ("reason_score", "mu_pos", "mu_neg", "density", "max_activation")


def adapt_sae(base_model, sae, tokens, train_cfg: SAETrainConfig, training_tokens: int,
              on_step=None):
    """``sae`` fine-tuned on the base model's activations: the diffing basis of the base model.

    Training continues from ``sae``'s weights with SAELens (``sae.train_sae(init_sae=...)``) and
    the settings that trained it, input normalisation included, with the changes of
    ``adapt_config``. The direction is the reverse of Bricken et al.'s (there an SAE of the earlier
    model is fine-tuned onto the later one): the reasoning model's features are the ones asked
    about, so its SAE is carried back to the base model.

    Args:
        base_model: the base model (``TLHookedModel`` or ``HookedTransformer``).
        sae: the reasoning model's SAE (``sae_lens.SAE``).
        tokens: the contexts to read, as for ``sae.train_sae`` (the SAE's own training contexts
            keep the data fixed, so only the model changes).
        train_cfg: the config that trained ``sae`` (notebook 03 records it in its manifest).
        training_tokens: activations to fine-tune on (at least ``train_cfg.batch_size``).
        on_step: as for ``sae.train_sae``.

    Returns:
        ``(adapted_sae, history)`` as ``sae.train_sae`` returns them.

    Raises:
        ValueError: as ``SAETrainConfig`` (e.g. fewer tokens than one batch) and ``train_sae``.
    """
    return train_sae(base_model, tokens, adapt_config(train_cfg, training_tokens), init_sae=sae,
                     on_step=on_step)


def adapt_config(train_cfg: SAETrainConfig, training_tokens: int) -> SAETrainConfig:
    """The fine-tuning settings of ``adapt_sae``: ``train_cfg`` for ``training_tokens`` more
    activations, with no L1 warm-up (the SAE is sparse already; ramping its penalty up from 0
    would first undo that), no periodic checkpoints, and its lr warm-up and decay each cut to at
    most half the fine-tune's steps so that both fit in it.

    Raises:
        ValueError: as ``SAETrainConfig`` (e.g. fewer tokens than one batch).
    """
    half = training_tokens // train_cfg.batch_size // 2
    return dataclasses.replace(train_cfg, training_tokens=training_tokens, l1_warm_up_steps=0,
                               n_checkpoints=0,
                               lr_warm_up_steps=min(train_cfg.lr_warm_up_steps, half),
                               lr_decay_steps=min(train_cfg.lr_decay_steps, half))


def decoder_cosine(sae, other) -> np.ndarray:
    """``[d_sae]`` cosine between each feature's decoder direction in two SAEs of one width.

    Raises:
        ValueError: SAEs of different shapes.
    """
    a, b = (s.W_dec.detach().float().cpu() for s in (sae, other))
    if a.shape != b.shape:
        raise ValueError(f"decoders of shapes {tuple(a.shape)} and {tuple(b.shape)}: compare an "
                         "SAE with its own fine-tune (adapt_sae).")
    a, b = (w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) for w in (a, b))
    return (a * b).sum(dim=1).numpy()


def feature_diff(reasoning: pd.DataFrame, base: pd.DataFrame, features: Sequence[int]
                 ) -> pd.DataFrame:
    """Side by side statistics of ``features`` from two ReasonScore frames of one dictionary.

    Args:
        reasoning: ``scoring.reason_score`` frame on the reasoning model.
        base: the same on the base model and the same tokens, read by the same SAE or by its
            fine-tune on the base model (``adapt_sae``: same width, feature k is feature k).
            ReasonScore folds decoder norms in, so activations compare across the two SAEs.
        features: the features to compare (e.g. the top ReasonScore features).

    Returns:
        One row per feature: for each statistic s, ``s_reasoning`` and ``s_base``; the rank of the
        ReasonScore among all features in each model (1 = highest); and ``mu_pos_ratio``
        (base / reasoning activation on reasoning words).

    Raises:
        ValueError: frames of different widths or a feature not in them.
    """
    if len(reasoning) != len(base):
        raise ValueError(f"reasoning has {len(reasoning)} features and base {len(base)}: score "
                         "both models with the same SAE (or with its fine-tune, adapt_sae).")
    missing = [f for f in features if f not in set(reasoning.feature_idx)]
    if missing:
        raise ValueError(f"features {missing} are not in the scores (d_sae={len(reasoning)}).")
    out = pd.DataFrame({"feature_idx": list(features)})
    for name, frame in (("reasoning", reasoning), ("base", base)):
        frame = frame.set_index("feature_idx")
        rank = frame.reason_score.rank(ascending=False, method="min").astype(int)
        for stat in STATS:
            out[f"{stat}_{name}"] = frame.loc[list(features), stat].to_numpy()
        out[f"rank_{name}"] = rank.loc[list(features)].to_numpy()
    out["mu_pos_ratio"] = out.mu_pos_base / out.mu_pos_reasoning.where(out.mu_pos_reasoning > 0)
    return out
