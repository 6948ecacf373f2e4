"""A 2-D map of SAE features: decoder directions projected with UMAP (or PCA).

Features whose decoder directions point the same way write similar things into the residual
stream; projecting the unit-norm directions to 2-D (UMAP with the cosine metric, from umap-learn,
or PCA from scikit-learn when umap-learn is absent) shows them as clusters. Coloured by
ReasonScore, the map shows whether reasoning features form groups of their own.

Used by notebooks/05_features.py.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

METHODS = ("auto", "umap", "pca")


def project_directions(W_dec: torch.Tensor | np.ndarray, method: str = "auto", seed: int = 0,
                       n_neighbors: int = 15) -> tuple[np.ndarray, str]:
    """Project decoder directions to 2-D.

    Args:
        W_dec: ``[d_sae, d_in]`` decoder rows; each is normalised to unit length first.
        method: "umap", "pca", or "auto" (UMAP when umap-learn is installed, else PCA).
        seed: the random seed of UMAP.
        n_neighbors: UMAP's neighbourhood size (capped at ``d_sae - 1``).

    Returns:
        ``(coords [d_sae, 2], the method used)``.

    Raises:
        ValueError: an unknown method, or fewer than 3 features.
        ImportError: method="umap" without umap-learn installed.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {METHODS}.")
    W = (W_dec.detach().float().cpu().numpy() if isinstance(W_dec, torch.Tensor)
         else np.asarray(W_dec, dtype=np.float32))
    if W.ndim != 2 or W.shape[0] < 3:
        raise ValueError(f"W_dec has shape {W.shape}; a map needs [d_sae >= 3, d_in].")
    W = W / np.clip(np.linalg.norm(W, axis=1, keepdims=True), 1e-12, None)
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "pca"
        if method == "pca":
            log.info("umap-learn is not installed; the feature map uses PCA.")
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, W.shape[0] - 1),
                            metric="cosine", random_state=seed, n_jobs=1)
        return reducer.fit_transform(W).astype(np.float32), "umap"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(W).astype(np.float32), "pca"


def feature_map(W_dec, scores: pd.DataFrame, method: str = "auto", seed: int = 0,
                n_neighbors: int = 15) -> pd.DataFrame:
    """The map as a frame: feature_idx, x, y, reason_score, method.

    Args:
        W_dec: ``[d_sae, d_in]`` decoder rows.
        scores: the ReasonScore frame (one row per feature).
        method, seed, n_neighbors: see ``project_directions``.

    Raises:
        ValueError: ``scores`` does not have one row per feature.
    """
    if len(scores) != W_dec.shape[0]:
        raise ValueError(f"scores has {len(scores)} rows for {W_dec.shape[0]} decoder rows; pass "
                         "the reason_scores.parquet of this SAE.")
    coords, used = project_directions(W_dec, method, seed, n_neighbors)
    ordered = scores.sort_values("feature_idx")
    return pd.DataFrame({"feature_idx": ordered.feature_idx.to_numpy(), "x": coords[:, 0],
                         "y": coords[:, 1], "reason_score": ordered.reason_score.to_numpy(),
                         "method": used})
