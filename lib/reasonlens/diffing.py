"""Model diffing: the same SAE features on the base model and on the reasoning model (notebook 07).

Galichin et al. (2025) ask whether reasoning features exist only where reasoning was trained. Here
the reasoning model's SAE reads the residual stream of the base model (same architecture, seed and
data, no traces) on the same tokens; a feature that is about reasoning should lose its ReasonScore
rank and its activation on reasoning words there.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

STATS = ("reason_score", "mu_pos", "mu_neg", "density", "max_activation")


def feature_diff(reasoning: pd.DataFrame, base: pd.DataFrame, features: Sequence[int]
                 ) -> pd.DataFrame:
    """Side by side statistics of ``features`` from two ReasonScore frames of one SAE.

    Args:
        reasoning: ``scoring.reason_score`` frame on the reasoning model.
        base: the same on the base model (same SAE, same tokens).
        features: the features to compare (e.g. the top ReasonScore features).

    Returns:
        One row per feature: for each statistic s, ``s_reasoning`` and ``s_base``; the rank of the
        ReasonScore among all features in each model (1 = highest); and ``mu_pos_ratio``
        (base / reasoning activation on reasoning words).

    Raises:
        ValueError: frames of different SAEs (lengths differ) or a feature not in them.
    """
    if len(reasoning) != len(base):
        raise ValueError(f"reasoning has {len(reasoning)} features and base {len(base)}: score "
                         "both models with the same SAE.")
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
