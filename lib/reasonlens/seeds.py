"""A profile's notebooks repeated for several training seeds, and its headline numbers per seed.

``python -m reasonlens.runner --profile default --seeds 0 1 2`` runs the notebooks once per seed,
each in its own run directory (profile ``<name>-seed<s>``), with the data fixed: ``data_seed``
keeps the world and its packing at the profile's seed, so only training and evaluation draws
change. It then reads each run's artifacts into one table (``seed_table``), one row per seed, and
writes it beside the runs as ``data/runs/<name>-seeds.csv``. Nothing here is in the default book:
three seeds take three times as long.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from reasonlens import artifacts, config
from reasonlens import constants as K

logger = logging.getLogger(__name__)


def seed_profile(profile: str, seed: int) -> Path:
    """Write the profile for one seed (``<home>/data/runs/.seeds/<name>-seed<s>.yaml``).

    The profile's values with ``seed`` replaced, ``data_seed`` set to the profile's own seed
    (unless it sets one) and ``profile`` named ``<name>-seed<s>``.

    Raises:
        FileNotFoundError, ValueError: as ``config.load_profile``.
    """
    values = config.load_profile(profile)
    name = values["profile"]
    values = {**values, "data_seed": values.get("data_seed", values.get("seed", 0)),
              "seed": int(seed), "profile": f"{name}-seed{seed}"}
    path = config.home() / "data" / "runs" / ".seeds" / f"{name}-seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def _get(data: Any, *keys, default=float("nan")):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def _read(run: artifacts.RunDir, name: str, manifest: bool = False) -> dict:
    try:
        return run.manifest(name) if manifest else run.read_json(name)
    except FileNotFoundError:
        return {}


def _adapted_diff(run: artifacts.RunDir) -> pd.DataFrame | None:
    """The model diff's rows in the adapted basis (None: no diff, or one written without it)."""
    try:
        diff = run.read_parquet(K.MODEL_DIFF)
    except FileNotFoundError:
        return None
    return diff[diff.basis == "adapted"].set_index("feature_idx") if "basis" in diff else None


def _mu_pos_ratio(adapted: pd.DataFrame | None, feature) -> float:
    """A feature's activation on reasoning words, base / reasoning model, in the adapted basis."""
    if adapted is None or feature not in adapted.index:
        return float("nan")
    return float(adapted.mu_pos_ratio.loc[feature])


def headline_row(run: artifacts.RunDir) -> dict[str, Any]:
    """One run's headline numbers, NaN where the run lacks the artifact.

    Columns: the reasoning and base models' held-out accuracy (02); the chosen steering feature,
    strength, accuracy change with its interval, and length change (07, ``headline.json``), the
    chosen random control's accuracy change, and the best decision feature's AUC, ReasonScore rank
    and accuracy change; the SAE's explained variance on both models and, fine-tuned on the base
    model (model diffing, ``diffing.adapt_sae``), on the base model, with the chosen and the
    decision feature's base / reasoning activation on reasoning words in that basis; and our step
    SAE's probe AUC on the model's own steps and weighted-minus-majority voting with its interval,
    which labels that probe was fitted on, and the same two numbers for the probe fitted on the
    world's planted labels (08).
    """
    model_eval = _read(run, K.MODEL_EVAL)
    accuracy = {row["model"]: row["accuracy"] for row in model_eval.get("overall", [])}
    headline = _read(run, K.EVAL_HEADLINE)
    diff = _get(_read(run, K.MODEL_DIFF, manifest=True), "config", "sae_reconstruction",
                default={})
    voting = _read(run, K.STEP_VOTING.format(mode="ours"))
    adapted = _adapted_diff(run)
    ci = lambda data, key: _get(data, key, default=[float("nan")] * 2)  # noqa: E731
    return {
        "accuracy_reasoning": accuracy.get("reasoning", float("nan")),
        "accuracy_base": accuracy.get("base", float("nan")),
        "steer_feature": _get(headline, "feature_idx"),
        "steer_strength": _get(headline, "strength"),
        "steer_delta_accuracy": _get(headline, "delta_accuracy"),
        "steer_delta_accuracy_low": ci(headline, "delta_accuracy_ci")[0],
        "steer_delta_accuracy_high": ci(headline, "delta_accuracy_ci")[1],
        "steer_delta_length_pct": _get(headline, "delta_length_pct"),
        "control_delta_accuracy": _get(headline, "control", "delta_accuracy"),
        "decision_auc": _get(headline, "decision_feature", "auc"),
        "decision_reason_score_rank": _get(headline, "decision_feature", "reason_score_rank"),
        "decision_delta_accuracy": _get(headline, "decision_feature", "delta_accuracy"),
        "sae_explained_variance_reasoning": _get(diff, "reasoning", "explained_variance"),
        "sae_explained_variance_base": _get(diff, "base, transfer", "explained_variance",
                                            default=_get(diff, "base", "explained_variance")),
        "sae_explained_variance_base_adapted": _get(diff, "base, adapted", "explained_variance"),
        "steer_feature_mu_pos_ratio_adapted": _mu_pos_ratio(adapted, _get(headline, "feature_idx")),
        "decision_mu_pos_ratio_adapted": _mu_pos_ratio(
            adapted, _get(headline, "decision_feature", "feature_idx")),
        "step_own_auc": _get(voting, "own_step_auc"),
        "weighted_minus_majority": _get(voting, "weighted_minus_majority"),
        "weighted_minus_majority_low": ci(voting, "weighted_minus_majority_ci")[0],
        "weighted_minus_majority_high": ci(voting, "weighted_minus_majority_ci")[1],
        "step_probe_labels": _get(voting, "probe_labels", default=None),
        "world_label_probe_own_auc": _get(voting, "other_probes", "world", "own_step_auc"),
        "world_label_probe_weighted_minus_majority": _get(voting, "other_probes", "world",
                                                          "weighted_minus_majority"),
    }


def seed_table(profile: str, seeds: Sequence[int]) -> pd.DataFrame:
    """``headline_row`` of each seed's run of ``profile``, indexed by seed."""
    name = config.load_profile(profile)["profile"]
    return pd.DataFrame([{"seed": s, **headline_row(artifacts.RunDir(f"{name}-seed{s}"))}
                         for s in seeds]).set_index("seed")


def run_seeds(profile: str, seeds: Sequence[int], run_profile, **run_kwargs) -> pd.DataFrame:
    """Run the notebooks for each seed, then tabulate and write the headline numbers.

    Args:
        profile: the profile to repeat.
        seeds: training seeds (distinct).
        run_profile: the runner's ``run`` (passed in to keep this module free of the runner).
        run_kwargs: passed on to ``run_profile`` (``start``, ``stop``, ``force``, ``build``...).

    Returns:
        ``seed_table``, also written to ``<home>/data/runs/<name>-seeds.csv``.

    Raises:
        ValueError: no seeds or repeated seeds.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)} must be distinct integers, e.g. --seeds 0 1 2.")
    for seed in seeds:
        logger.info("seed %d of %s", seed, list(seeds))
        run_profile(str(seed_profile(profile, seed)), **run_kwargs)
    table = seed_table(profile, seeds)
    name = config.load_profile(profile)["profile"]
    out = config.home() / "data" / "runs" / f"{name}-seeds.csv"
    with artifacts.atomic_path(out) as tmp:
        table.to_csv(tmp)
    logger.info("headline numbers per seed (%s):\n%s", out, table.T.to_string())
    return table
