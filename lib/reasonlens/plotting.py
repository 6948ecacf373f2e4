"""Figures of the book. Each function draws one figure, optionally saves it, and returns it."""

from __future__ import annotations

from collections.abc import Sequence
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


def activation_histogram(values: np.ndarray, title: str = "", save_to=None):
    """Histogram of a feature's positive activations; the share of zeros is in the title."""
    values = np.asarray(values).ravel()
    active = values[values > 0]
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    ax.hist(active if len(active) else [0.0], bins=40, color="C1")
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("tokens")
    share = len(active) / max(1, len(values))
    ax.set_title(f"{title} (active on {share:.1%} of tokens)".strip(), fontsize=9)
    return _finish(fig, save_to)


def feature_map(frame: pd.DataFrame, top_idx, save_to=None):
    """The 2-D map of decoder directions, coloured by ReasonScore, the top features labelled.

    Args:
        frame: ``feature_map.feature_map`` output (feature_idx, x, y, reason_score, method).
        top_idx: features to label (e.g. the top-k by ReasonScore).
    """
    fig, ax = plt.subplots(figsize=(7.5, 6))
    order = frame.sort_values("reason_score")  # high scores drawn on top
    limit = float(np.abs(frame.reason_score).max()) or 1.0
    points = ax.scatter(order.x, order.y, c=order.reason_score, cmap="coolwarm", vmin=-limit,
                        vmax=limit, s=10, alpha=0.8)
    top = frame[frame.feature_idx.isin(list(top_idx))]
    ax.scatter(top.x, top.y, facecolors="none", edgecolors="black", s=40, lw=0.8)
    span = max(np.ptp(frame.x), np.ptp(frame.y)) or 1.0
    groups: list[list] = []  # top features closer than 2% of the span share one label
    for row in top.itertuples():
        near = next((g for g in groups if np.hypot(g[0].x - row.x, g[0].y - row.y) < 0.02 * span),
                    None)
        near.append(row) if near is not None else groups.append([row])
    for group in groups:
        ax.annotate(", ".join(str(r.feature_idx) for r in group), (group[0].x, group[0].y),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    method = str(frame.method.iloc[0]).upper()
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"Decoder directions ({method}), top {len(top)} features circled")
    fig.colorbar(points, ax=ax, label="ReasonScore")
    return _finish(fig, save_to)


# --- Notebook 08: step-level SAE ---------------------------------------------------------------
def step_sae_reconstruction(history: pd.DataFrame, metrics: pd.DataFrame, save_to=None):
    """Phase-1 training curves, and step reconstruction loss under each choice of latent.

    Args:
        history: ``train_step_sae`` output (step, recon_loss, l0, ...).
        metrics: ``reconstruction_metrics`` output (condition, recon_loss, token_accuracy).
    """
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    smooth = max(1, len(history) // 50)
    for column, ax in (("recon_loss", axes[0]), ("l0", axes[1])):
        ax.plot(history["step"], history[column].rolling(smooth, min_periods=1).mean())
        ax.set_title(f"{column} (training)")
        ax.set_xlabel("step")
    axes[0].set_yscale("log")  # the first steps' loss would flatten the rest
    axes[2].bar(metrics["condition"], metrics["recon_loss"], color=[f"C{i}" for i in
                                                                    range(len(metrics))])
    for i, (loss, acc) in enumerate(zip(metrics["recon_loss"], metrics["token_accuracy"])):
        axes[2].text(i, loss, f"{loss:.3f}\n({acc:.0%})", ha="center", va="bottom", fontsize=8)
    axes[2].set_ylim(0, 1.3 * metrics["recon_loss"].max())  # room for the labels
    axes[2].set_title("held-out NLL per step token (token acc.)")
    axes[2].tick_params(axis="x", rotation=20)
    return _finish(fig, save_to)


def latent_density_histogram(density: np.ndarray, unit: str = "steps", save_to=None):
    """Histogram of log10 latent density (share of ``unit`` a latent is active on)."""
    density = np.asarray(density)
    alive = density[density > 0]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.log10(alive), bins=40)
    ax.set_xlabel(f"log10 density (fraction of {unit} a latent is active on)")
    ax.set_ylabel("latents")
    ax.set_title(f"{len(density)} latents, {int((density == 0).sum())} never active")
    return _finish(fig, save_to)


def probe_results(table: pd.DataFrame, save_to=None):
    """Accuracy and AUC of each probe task per feature set (``probes.probe_table`` output)."""
    tasks, sets = list(dict.fromkeys(table["task"])), list(dict.fromkeys(table["features"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    width = 0.8 / len(sets)
    x = np.arange(len(tasks))
    for ax, metric in zip(axes, ("accuracy", "auc")):
        for i, name in enumerate(sets):
            values = table[table["features"] == name].set_index("task")[metric].reindex(tasks)
            ax.bar(x + i * width, values, width, label=name)
        ax.set_xticks(x + width * (len(sets) - 1) / 2, tasks)
        ax.set_ylim(0, 1)
        ax.set_title(metric)
    axes[0].legend(fontsize=8)
    return _finish(fig, save_to)


def voting_bars(table: pd.DataFrame, save_to=None):
    """Accuracy with 95% intervals per method (``voting.voting_table`` output)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    low = table["accuracy"] - table["ci_low"]
    high = table["ci_high"] - table["accuracy"]
    ax.bar(table["method"], table["accuracy"], yerr=[low, high], capsize=5,
           color=[f"C{i}" for i in range(len(table))])
    for i, acc in enumerate(table["accuracy"]):
        ax.text(i, acc / 2, f"{acc:.1%}", ha="center", color="white")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{int(table['n'].iloc[0])} held-out problems")
    return _finish(fig, save_to)


def text_table(frame: pd.DataFrame, title: str = "", col_widths: list[float] | None = None,
               save_to=None):
    """A table of short texts as a figure (e.g. steps with their top latents and patterns)."""
    fig, ax = plt.subplots(figsize=(12, 0.45 * (len(frame) + 2)))
    ax.axis("off")
    cells = [[str(v) for v in row] for row in frame.itertuples(index=False)]
    table = ax.table(cellText=cells, colLabels=list(frame.columns), loc="center", cellLoc="left",
                     colWidths=col_widths)
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.set_title(title)
    return _finish(fig, save_to)


METRIC_LABELS = {"is_correct": "accuracy", "reasoning_tokens": "reasoning length (tokens)",
                 "reasoning_words": "reasoning words per trace"}


def strength_sweep(table: pd.DataFrame, metrics=tuple(METRIC_LABELS), save_to=None):
    """Each metric against steering strength, with 95% intervals; the unsteered value dashed.

    Args:
        table: ``evaluation.condition_table`` rows with a ``strength`` column; the row with
            strength NaN is the unsteered reference.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.5))
    reference = table[table["strength"].isna()]
    sweep = table.dropna(subset=["strength"]).sort_values("strength")
    for ax, m in zip(np.atleast_1d(axes), metrics):
        err = np.vstack([sweep[m] - sweep[f"{m}_low"], sweep[f"{m}_high"] - sweep[m]])
        ax.errorbar(sweep["strength"], sweep[m], yerr=err, fmt="o-", capsize=3, label="steered")
        if len(reference):
            ax.axhline(reference[m].iloc[0], color="grey", ls="--", label="unsteered")
        ax.set_xlabel("strength (x max activation)")
        ax.set_ylabel(METRIC_LABELS.get(m, m))
    np.atleast_1d(axes)[0].legend()
    return _finish(fig, save_to)


def difference_bars(table: pd.DataFrame, metrics=tuple(METRIC_LABELS), save_to=None):
    """Paired difference to the unsteered model per condition, with 95% intervals."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.35 * len(table) + 1.5),
                             sharey=True)
    y = np.arange(len(table))
    for ax, m in zip(np.atleast_1d(axes), metrics):
        d = table[f"{m}_diff"]
        err = np.vstack([d - table[f"{m}_diff_low"], table[f"{m}_diff_high"] - d])
        colors = ["C3" if "random" in c else "C0"
                  for c in table["condition"]]
        ax.barh(y, d, xerr=err, color=colors, capsize=2)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel(f"{METRIC_LABELS.get(m, m)}: steered - unsteered")
    np.atleast_1d(axes)[0].set_yticks(y, table["condition"])
    np.atleast_1d(axes)[0].invert_yaxis()
    return _finish(fig, save_to)


def paired_bars(frame: pd.DataFrame, columns: Sequence[str], ylabel: str, title: str = "",
                save_to=None):
    """One bar per column for each feature (e.g. reasoning vs base model), indexed by feature."""
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(columns) * len(frame) + 2), 3.5))
    x, width = np.arange(len(frame)), 0.8 / len(columns)
    for i, column in enumerate(columns):
        ax.bar(x + (i - (len(columns) - 1) / 2) * width, frame[column], width, label=column)
    ax.set_xticks(x, [f"f{f}" for f in frame.index])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _finish(fig, save_to)


def injection_bars(summary: pd.DataFrame, save_to=None):
    """Mean activation per kind of text for each feature, with 95% intervals.

    Args:
        summary: rows with feature_idx, condition, mean, ci_low, ci_high.
    """
    conditions = list(dict.fromkeys(summary["condition"]))
    features = list(dict.fromkeys(summary["feature_idx"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(features) + 2), 3.5))
    width = 0.8 / len(conditions)
    for i, c in enumerate(conditions):
        rows = summary[summary["condition"] == c].set_index("feature_idx").loc[features]
        err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        ax.bar(np.arange(len(features)) + i * width, rows["mean"], width, yerr=err, capsize=2,
               label=c)
    ax.set_xticks(np.arange(len(features)) + width * (len(conditions) - 1) / 2,
                  [f"f{f}" for f in features])
    ax.set_ylabel("mean activation over the text")
    ax.legend(fontsize=8)
    return _finish(fig, save_to)
