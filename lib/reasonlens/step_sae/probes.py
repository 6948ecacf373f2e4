"""Linear probes from step features to step properties (Yang et al., 2026, Sec. 4.2).

Three targets per step: correctness (the synthetic world's ground truth), length (token count,
binned at the training set's quantiles) and first token (the most frequent ones, the rest pooled
as ``other``). Each is predicted by a logistic regression (scikit-learn, standardised features)
from the step-level SAE's latents, from a token-level SAE's features mean-pooled over the step's
tokens, and by the *statistics baseline*: the training set's class frequencies (the class ratio,
the length distribution, the first-token frequencies) predicted for every step. Reported per
target and feature set: accuracy, AUC (one-vs-rest, macro over classes present) and log loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from reasonlens import scoring
from reasonlens.config import Config, check_range
from reasonlens.models import device_of, sae_hook_name, sae_on_model_device
from reasonlens.step_sae.data import StepExamples

STATISTICS = "statistics"
OTHER = "other"


@dataclasses.dataclass(frozen=True)
class ProbeConfig(Config):
    """Targets and classifier.

    Args:
        n_length_bins: length classes (quantile bins of the training steps' token counts; ties
            may merge bins).
        n_first_tokens: first-token classes (the most frequent; the rest is ``other``).
        C: inverse L2 regularisation of the logistic regression.
        max_iter: solver iterations.
    """

    n_length_bins: int = 3
    n_first_tokens: int = 8
    C: float = 1.0
    max_iter: int = 2000

    def __post_init__(self):
        check_range("n_length_bins", self.n_length_bins, 2)
        check_range("n_first_tokens", self.n_first_tokens, 1)
        check_range("C", self.C, 1e-12)


def step_targets(train: pd.DataFrame, test: pd.DataFrame, cfg: ProbeConfig
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Labels of each probe task, for the training and the held-out steps.

    Tasks: ``correctness`` (when both tables have a non-null ``is_correct``), ``length`` (from
    ``n_tokens``) and ``first_token`` (from ``first_token``).

    Raises:
        ValueError: a table lacks ``n_tokens`` or ``first_token`` (``with_token_labels`` adds
            them).
    """
    for name, table in (("train", train), ("test", test)):
        missing = {"n_tokens", "first_token"} - set(table.columns)
        if missing:
            raise ValueError(f"the {name} step table lacks {sorted(missing)}; add them with "
                             "probes.with_token_labels(table, tokenizer).")
    targets = {}
    if all("is_correct" in t.columns and t["is_correct"].notna().all() for t in (train, test)):
        targets["correctness"] = (train["is_correct"].to_numpy(bool),
                                  test["is_correct"].to_numpy(bool))
    _, edges = pd.qcut(train["n_tokens"], cfg.n_length_bins, retbins=True, duplicates="drop")
    if len(edges) < 3:  # tied quantiles merged every bin into one: nothing to predict
        raise ValueError(f"the training steps' lengths (n_tokens {sorted(set(train['n_tokens']))}) "
                         f"fill a single one of n_length_bins={cfg.n_length_bins} quantile bins; "
                         "use more, or more varied, training steps (step_n_train).")
    edges[0], edges[-1] = -np.inf, np.inf
    names = [f"<={int(hi)}" if lo == -np.inf else f">{int(lo)}" if hi == np.inf
             else f"{int(lo) + 1}-{int(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
    targets["length"] = tuple(pd.cut(t["n_tokens"], edges, labels=names).astype(str).to_numpy()
                              for t in (train, test))
    top = train["first_token"].value_counts().index[: cfg.n_first_tokens]
    targets["first_token"] = tuple(np.where(t["first_token"].isin(top), t["first_token"], OTHER)
                                   for t in (train, test))
    return targets


def with_token_labels(table: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """``table`` with ``n_tokens`` and ``first_token`` of each step (kept if already there)."""
    if {"n_tokens", "first_token"} <= set(table.columns):
        return table
    ids = tokenizer(table["step"].tolist(), add_special_tokens=False)["input_ids"]
    return table.assign(n_tokens=[len(i) for i in ids],
                        first_token=[tokenizer.convert_ids_to_tokens(i[0]) for i in ids])


def fit_probe(features: np.ndarray, labels: np.ndarray, cfg: ProbeConfig) -> Pipeline:
    """A standardised logistic regression from ``features [n, d]`` to ``labels [n]``.

    Raises:
        ValueError: fewer than two classes among ``labels``.
    """
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the probe's labels hold one class only ({np.unique(labels)}); use more "
                         "training steps (step_n_train).")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter))
    return probe.fit(features, labels)


def classification_metrics(labels: np.ndarray, proba: np.ndarray, classes: np.ndarray
                           ) -> dict[str, float]:
    """Accuracy, AUC and log loss of class probabilities ``proba [n, n_classes]``.

    AUC is the one-vs-rest AUC averaged over the classes that have both positives and negatives
    among ``labels`` (the binary AUC for two classes); NaN when there is none. Labels outside
    ``classes`` count as errors and get the loss of a 1e-15 probability.
    """
    labels, classes = np.asarray(labels), np.asarray(classes)
    predicted = classes[proba.argmax(1)]
    column = {c: i for i, c in enumerate(classes.tolist())}
    aucs = [roc_auc_score(labels == c, proba[:, i]) for c, i in column.items()
            if 0 < (labels == c).sum() < len(labels)]
    if len(classes) == 2:
        aucs = aucs[1:]
    known = np.isin(labels, classes)
    p_true = np.full(len(labels), 1e-15)
    p_true[known] = proba[known, [column[c] for c in labels[known]]]
    return {"accuracy": accuracy_score(labels, predicted),
            "auc": float(np.mean(aucs)) if aucs else float("nan"),
            "loss": float(-np.log(np.clip(p_true, 1e-15, 1)).mean())}


def statistics_baseline(train_labels: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """The training class frequencies, predicted for each of ``n_test`` steps.

    Returns:
        ``(classes, proba [n_test, n_classes])``.
    """
    classes, counts = np.unique(train_labels, return_counts=True)
    return classes, np.tile(counts / counts.sum(), (n_test, 1))


def probe_table(feature_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                targets: dict[str, tuple[np.ndarray, np.ndarray]], cfg: ProbeConfig
                ) -> pd.DataFrame:
    """Every task against every feature set and the statistics baseline.

    Args:
        feature_sets: name -> (train features ``[n_train, d]``, test features ``[n_test, d]``).
        targets: task -> (train labels, test labels), from ``step_targets``.
        cfg: the classifier.

    Returns:
        One row per (task, features): accuracy, auc, loss, n_classes, n_train, n_test.
    """
    rows = []
    for task, (y_train, y_test) in targets.items():
        classes, proba = statistics_baseline(y_train, len(y_test))
        results = {STATISTICS: classification_metrics(y_test, proba, classes)}
        for name, (x_train, x_test) in feature_sets.items():
            probe = fit_probe(x_train, y_train, cfg)
            results[name] = classification_metrics(y_test, probe.predict_proba(x_test),
                                                   probe.classes_)
        for name, metrics in results.items():
            rows.append({"task": task, "features": name, **metrics, "n_classes": len(classes),
                         "n_train": len(y_train), "n_test": len(y_test)})
    return pd.DataFrame(rows)


def pooled_token_features(model, sae, examples: StepExamples, hook_name: str | None = None,
                          batch_size: int = 32) -> np.ndarray:
    """A token-level SAE's features mean-pooled over each step's tokens: ``[n_steps, d_sae]``.

    The LM reads ``context step`` (no separator, as in a trace); padding goes on the right, so
    the causal model's activations at the real tokens do not see it (any pad id works).

    Args:
        model: a ``reasonlens.models`` hooked model (either backend).
        sae: a SAELens SAE for one of its hook points (notebook 03), moved to the model's device
            first (``models.sae_on_model_device``).
        examples: tokenized steps.
        hook_name: default: the SAE's own.
        batch_size: sequences per model pass.

    Raises:
        ValueError: an SAE on the meta device.
    """
    hook_name = sae_hook_name(sae, hook_name)
    sae = sae_on_model_device(sae, model)
    device = device_of(model)
    out = []
    for start in tqdm(range(0, len(examples), batch_size), desc="token SAE", mininterval=2.0):
        rows = [list(c) + list(s) for c, s in zip(examples.context_ids[start: start + batch_size],
                                                  examples.step_ids[start: start + batch_size])]
        tokens = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
        mask = torch.zeros(tokens.shape)
        for i, (row, step) in enumerate(zip(rows, examples.step_ids[start: start + batch_size])):
            tokens[i, : len(row)] = torch.tensor(row)
            mask[i, len(row) - len(step): len(row)] = 1
        with torch.no_grad():
            acts = scoring.encode_batch(model, sae, tokens.to(device), hook_name)
        mask = mask.to(acts)
        out.append(((acts * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).cpu())
    return torch.cat(out).numpy()
