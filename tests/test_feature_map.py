"""Tests for reasonlens.feature_map: decoder directions projected to 2-D with UMAP and PCA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import scramble_global_rngs

from reasonlens import feature_map


def two_clusters(n: int = 40, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Decoder rows around two orthogonal directions (with different norms), and their labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:2]
    labels = np.arange(n) % 2
    rows = centres[labels] + 0.05 * torch.randn(n, d, generator=gen)
    return rows * (1 + torch.rand(n, 1, generator=gen) * 3), labels


def separation(coords: np.ndarray, labels: np.ndarray) -> float:
    """Distance between the cluster means over the largest within-cluster spread."""
    means = [coords[labels == k].mean(0) for k in (0, 1)]
    spread = max(np.linalg.norm(coords[labels == k] - means[k], axis=1).max() for k in (0, 1))
    return float(np.linalg.norm(means[0] - means[1]) / spread)


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_clusters_of_directions_stay_apart(method):
    W_dec, labels = two_clusters()
    coords, used = feature_map.project_directions(W_dec, method=method)
    assert used == method and coords.shape == (40, 2) and np.isfinite(coords).all()
    assert separation(coords, labels) > 1.5


def test_auto_uses_umap_when_installed():
    _, used = feature_map.project_directions(two_clusters()[0], method="auto")
    assert used == "umap"


def test_norms_do_not_matter():
    W_dec, _ = two_clusters()
    a, _ = feature_map.project_directions(W_dec, method="pca")
    b, _ = feature_map.project_directions(W_dec * 7, method="pca")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_pca_coordinates_are_the_top_two_principal_components_of_the_unit_rows():
    W_dec, _ = two_clusters(n=12, d=5, seed=1)
    coords, _ = feature_map.project_directions(W_dec, method="pca")
    unit = W_dec.double().numpy()
    unit /= np.sqrt((unit ** 2).sum(1, keepdims=True))
    centred = unit - unit.mean(0)
    U, S, _ = np.linalg.svd(centred, full_matrices=False)
    expected = U[:, :2] * S[:2]
    signs = np.sign((coords * expected).sum(0))  # a component's sign is arbitrary
    np.testing.assert_allclose(coords * signs, expected, atol=1e-5)


def test_umap_layout_depends_on_its_seed_alone():
    W_dec, _ = two_clusters(n=30)
    scramble_global_rngs(1)
    first, _ = feature_map.project_directions(W_dec, method="umap", seed=0, n_neighbors=5)
    scramble_global_rngs(2)
    again, _ = feature_map.project_directions(W_dec, method="umap", seed=0, n_neighbors=5)
    other, _ = feature_map.project_directions(W_dec, method="umap", seed=1, n_neighbors=5)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_feature_map_frame_is_ordered_by_feature():
    W_dec, _ = two_clusters(n=6)
    scores = pd.DataFrame({"feature_idx": [5, 4, 3, 2, 1, 0], "reason_score": np.arange(6.0)})
    frame = feature_map.feature_map(W_dec, scores, method="pca")
    assert frame.feature_idx.tolist() == list(range(6))
    assert frame.reason_score.tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert set(frame.method) == {"pca"}


def test_bad_input_names_the_parameter():
    W_dec, _ = two_clusters(n=6)
    with pytest.raises(ValueError, match="method='tsne' is unknown"):
        feature_map.project_directions(W_dec, method="tsne")
    with pytest.raises(ValueError, match="d_sae >= 3"):
        feature_map.project_directions(W_dec[:2])
    with pytest.raises(ValueError, match="scores has 2 rows for 6 decoder rows"):
        feature_map.feature_map(W_dec, pd.DataFrame({"feature_idx": [0, 1],
                                                     "reason_score": [0.0, 1.0]}))
