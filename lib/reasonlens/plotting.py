"""Figures of the book. Each function draws one figure, optionally saves it, and returns it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

matplotlib.rcParams.update({"figure.dpi": 100, "axes.spines.top": False,
                            "axes.spines.right": False})


def _finish(fig, save_to: str | Path | None):
    fig.tight_layout()
    if save_to is not None:
        fig.savefig(save_to, dpi=120, bbox_inches="tight")
    return fig


def word_rate_bars(rates: pd.DataFrame, save_to=None):
    """Grouped bars: reasoning-word rate (per 1,000 words) in each kind of text.

    Args:
        rates: index = words, columns = kinds of text (e.g. trace, plain, chat).
    """
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(rates.columns)
    x = np.arange(len(rates))
    for i, kind in enumerate(rates.columns):
        ax.bar(x + i * width, rates[kind], width, label=kind)
    ax.set_xticks(x + width * (len(rates.columns) - 1) / 2, rates.index, rotation=30)
    ax.set_ylabel("per 1,000 words")
    ax.set_title("Reasoning vocabulary by kind of text")
    ax.legend()
    return _finish(fig, save_to)


def length_histogram(lengths: dict[str, np.ndarray], xlabel: str = "tokens", save_to=None):
    """Overlaid histograms of lengths per group (e.g. trace vs plain documents)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    top = max(int(np.max(v)) for v in lengths.values())
    bins = np.linspace(0, top + 1, 40)
    for name, values in lengths.items():
        ax.hist(values, bins=bins, alpha=0.6, label=f"{name} (median {np.median(values):.0f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    ax.legend()
    return _finish(fig, save_to)


def loss_curves(histories: dict[str, pd.DataFrame], save_to=None):
    """Training (smoothed) and validation loss per model."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (name, h) in enumerate(histories.items()):
        color = f"C{i}"
        smooth = h["train_loss"].rolling(max(1, len(h) // 50), min_periods=1).mean()
        ax.plot(h["step"], smooth, color=color, alpha=0.7, label=f"{name} train")
        val = h.dropna(subset=["val_loss"])
        ax.plot(val["step"], val["val_loss"], "o--", color=color, label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss")
    ax.set_yscale("log")
    ax.legend()
    return _finish(fig, save_to)


def accuracy_bars(table: pd.DataFrame, group: str = "family", save_to=None):
    """Accuracy with 95% intervals, one bar per model within each group."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    groups = list(dict.fromkeys(table[group]))
    names = list(dict.fromkeys(table["model"]))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rows = table[table["model"] == name].set_index(group).loc[groups]
        x = np.arange(len(groups)) + i * width
        err = np.vstack([rows["accuracy"] - rows["ci_low"], rows["ci_high"] - rows["accuracy"]])
        ax.bar(x, rows["accuracy"], width, yerr=err, capsize=3, label=name)
    ax.set_xticks(np.arange(len(groups)) + width * (len(names) - 1) / 2, groups)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend()
    return _finish(fig, save_to)


def score_vs_density(scores: pd.DataFrame, top_k: int = 20, save_to=None):
    """ReasonScore against log10 feature density, the top-k features highlighted."""
    fig, ax = plt.subplots(figsize=(7, 4))
    density = np.log10(scores["density"].clip(lower=1e-7))
    top = scores.nlargest(top_k, "reason_score")
    ax.scatter(density, scores["reason_score"], s=6, alpha=0.4, color="grey", label="all features")
    ax.scatter(np.log10(top["density"].clip(lower=1e-7)), top["reason_score"], s=18, color="C3",
               label=f"top {top_k}")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("log10 activation density")
    ax.set_ylabel("ReasonScore")
    ax.legend()
    return _finish(fig, save_to)


def word_profile_heatmap(profile: pd.DataFrame, save_to=None):
    """Rows = features, columns = words, cells = p_i (the share of a feature's word activation)."""
    fig, ax = plt.subplots(figsize=(0.6 * profile.shape[1] + 2, 0.28 * profile.shape[0] + 1.5))
    image = ax.imshow(profile.to_numpy(), aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(profile.shape[1]), profile.columns, rotation=40, ha="right")
    ax.set_yticks(range(profile.shape[0]), [str(i) for i in profile.index])
    ax.set_ylabel("feature")
    fig.colorbar(image, ax=ax, label="p_i (per-word share)")
    return _finish(fig, save_to)


def grouped_histogram(values: dict[str, np.ndarray], xlabel: str, save_to=None):
    """Overlaid density histograms of one quantity per group (e.g. prompt scores by text kind)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(min(v.min() for v in values.values()), max(v.max() for v in values.values()),
                       40)
    for name, v in values.items():
        ax.hist(v, bins=bins, alpha=0.55, density=True, label=f"{name} (mean {v.mean():.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    return _finish(fig, save_to)


def training_curves(history: pd.DataFrame, save_to=None):
    """Loss components, explained variance and L0 over training (notebook 03)."""
    losses = [c for c in history.columns if c.endswith("_loss")]
    panels = [("loss", losses), ("explained variance", ["explained_variance"]), ("L0", ["l0"])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (title, columns) in zip(axes, panels):
        for column in columns:
            if column in history:
                ax.plot(history["step"], history[column], label=column)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    return _finish(fig, save_to)


def feature_density_histogram(feature_density: np.ndarray, save_to=None):
    """Histogram of log10 feature density; dead features (density 0) are counted in the title."""
    density = np.asarray(feature_density)
    alive = density[density > 0]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.log10(alive), bins=50)
    ax.set_xlabel("log10 feature density (fraction of tokens a feature fires on)")
    ax.set_ylabel("features")
    ax.set_title(f"{len(density)} features, {int((density == 0).sum())} dead")
    return _finish(fig, save_to)
