"""Feature steering during generation (Galichin et al., 2025, Sec. 5; docs/design.md, "Steering").

At the SAE's hook point, for every position (the prompt and each generated token, with or without
a KV cache):

- ``clamp`` (the paper's): f = encode(x); err = x - decode(f); f[k] = max_activation(k) * strength;
  x' = decode(f) + err. The error term keeps everything the SAE does not explain.
- ``direction``: the component of x along feature k's unit decoder direction d_k is set to
  max_activation(k) * strength, the same component the clamp writes. Several features move x
  within the span of their directions only, so that every x . d_k hits its value also when the
  directions are not orthogonal (a least-squares compromise where they are linearly dependent).
- ``add``: x' = x + strength * d_k.

``max_activation`` is in the units ReasonScore reports (decoder norms folded into the encoder, so a
feature's activation is its component along d_k); the clamp converts it for an unfolded SAE.

Several features can be steered at once. ``steer`` is a context manager: the hook is attached
through the model's ``hooks`` (TransformerLens or transformers backend) and always removed.

Example:
    >>> with steer(model, sae, {46379: 2.0}, max_activations=scores.max_activation):  # doctest: +SKIP
    ...     completions = evaluation.generate(model.model, tokenizer, prompts)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from reasonlens import evaluation
from reasonlens.config import check_range
from reasonlens.models import check_sae_fits, sae_on_model_device

MODES = ("clamp", "direction", "add")


def check_steering(model, sae, features: Mapping[int, float], mode: str,
                   max_activations: Sequence[float] | torch.Tensor | None) -> None:
    """Validate a steering request before any generation starts.

    Raises:
        ValueError: an unknown mode, a feature index outside the SAE, a non-finite strength,
            missing max activations, an SAE of another width, or a hook point the model lacks.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {MODES}.")
    if not features:
        raise ValueError("features is empty; pass {feature_idx: strength}.")
    check_sae_fits(sae, model.n_layers, model.d_model)
    for idx, strength in features.items():
        if not 0 <= int(idx) < sae.cfg.d_sae:
            raise ValueError(f"feature_idx={idx} is outside the SAE (d_sae={sae.cfg.d_sae}).")
        if not math.isfinite(float(strength)):
            raise ValueError(f"strength={strength!r} for feature {idx} is not finite.")
    if mode in ("clamp", "direction"):
        if max_activations is None:
            raise ValueError(f"mode={mode!r} needs max_activations (notebook 04 writes them as "
                             "the max_activation column of scores/reason_scores.parquet).")
        if len(max_activations) != sae.cfg.d_sae:
            raise ValueError(f"max_activations has {len(max_activations)} entries; the SAE has "
                             f"d_sae={sae.cfg.d_sae}.")


def steering_hook(sae, features: Mapping[int, float], mode: str = "clamp",
                  max_activations: Sequence[float] | torch.Tensor | None = None):
    """A ``fn(activation, hook)`` that steers ``[batch, pos, d_model]`` activations.

    What the hook needs is computed here, once, on the SAE's device and in its dtype; each call
    steers in the SAE's dtype and returns the activation's own (a bfloat16 model with a float32 SAE
    steers in float32, and features left as they are leave the activation exactly as it was).

    Args:
        sae: a SAELens SAE, already on the device of the activations it will see (``steer`` puts
            it there).
        features: ``{feature_idx: strength}``.
        mode: ``clamp``, ``direction`` or ``add`` (see the module docstring).
        max_activations: ``[d_sae]`` (needed by ``clamp`` and ``direction``).

    Returns:
        The hook function; it raises ``ValueError`` naming both devices when an activation is not
        on the SAE's device.
    """
    w_dec = sae.W_dec.detach()
    device, dtype = w_dec.device, w_dec.dtype
    idx = torch.tensor([int(i) for i in features], dtype=torch.long)
    strengths = torch.tensor([float(s) for s in features.values()], dtype=dtype, device=device)
    w_dec = w_dec[idx.to(device)]  # [n, d_model]
    norms = w_dec.norm(dim=-1)
    directions = w_dec / norms.clamp(min=1e-12)[:, None]
    if mode != "add":
        # folded units: the component along d_k; the SAE's own activation is that / ||W_dec[k]||
        maxima = torch.as_tensor(max_activations, dtype=torch.float32)[idx]
        components = maxima.to(device, dtype) * strengths
        targets = components / norms
    if mode == "direction":
        # x' = x + a D with (a D) . d_j = c_j - x . d_j for every j: a = (c - x D^T) G^+, G = D D^T
        gram = directions.float() @ directions.float().T
        gram_pinv = torch.linalg.pinv(gram).to(dtype)  # [n, n]; the identity for one feature
    idx = idx.to(device)

    def hook(activation: torch.Tensor, hook) -> torch.Tensor:
        if activation.device != device:
            raise ValueError(f"the activations at {getattr(hook, 'name', 'the hook point')} are on"
                             f" {activation.device} but the SAE is on {device}; put the SAE where"
                             " the model is (steer does: models.sae_on_model_device).")
        x = activation.to(dtype)
        if mode == "clamp":  # x + decode(f') - decode(f): the error term x - decode(f) is kept
            with torch.no_grad():
                feature_acts = sae.encode(x)
                reconstruction = sae.decode(feature_acts)
                feature_acts[..., idx] = targets
                x = x + (sae.decode(feature_acts) - reconstruction)
        elif mode == "direction":
            x = x + (components - x @ directions.T) @ gram_pinv @ directions  # [.., n] [n, d_model]
        else:
            x = x + strengths @ directions
        return x.to(activation.dtype)

    return hook


@contextlib.contextmanager
def steer(model, sae, features: Mapping[int, float], mode: str = "clamp",
          max_activations: Sequence[float] | torch.Tensor | None = None) -> Iterator[object]:
    """Steer ``features`` ({feature_idx: strength}) while the block runs; hooks always removed.

    Args:
        model: a ``TLHookedModel`` or ``HFHookedModel`` (``reasonlens.models``).
        sae: a SAELens SAE at one of the model's hook points; moved to the model's device first
            (in place, once: ``models.sae_on_model_device``).
        features: strengths per feature index.
        mode: ``clamp`` (the paper's), ``direction`` or ``add``.
        max_activations: ``[d_sae]`` largest activation of each feature on the scoring data.

    Raises:
        ValueError: see ``check_steering``, or an SAE on the meta device (see
            ``models.sae_on_model_device``); raised before anything is attached.
    """
    check_steering(model, sae, features, mode, max_activations)
    sae_on_model_device(sae, model)
    hook = steering_hook(sae, features, mode, max_activations)
    with model.hooks([(sae.cfg.metadata.hook_name, hook)]):
        yield model


def max_activations_of(run) -> torch.Tensor:
    """``[d_sae]`` largest activation of every feature on the scoring data of a run.

    Notebook 05's ``features/max_activations.parquet`` for the features it covers (the top ones),
    notebook 04's ``max_activation`` column of the ReasonScores for the rest.
    """
    from reasonlens import constants as K

    maxima = run.read_parquet(K.REASON_SCORES).set_index("feature_idx").max_activation.sort_index()
    maxima.update(run.read_parquet(K.MAX_ACTIVATIONS).set_index("feature_idx").max_activation)
    return torch.tensor(maxima.to_numpy(), dtype=torch.float32)


def run_conditions(model, sae, prompts: Sequence[str],
                   conditions: Mapping[str, Mapping[int, float] | None], max_activations=None,
                   mode: str = "clamp", max_new_tokens: int = 160, batch_size: int = 64,
                   temperature: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Completions of ``prompts`` under named interventions, each checked before any generation.

    Args:
        model: an ``HFHookedModel`` (generation runs through transformers with a KV cache).
        sae: the SAE whose features are steered (moved to the model's device before generating).
        prompts: texts to complete.
        conditions: name -> {feature_idx: strength}; ``None`` (or empty) runs unsteered. Strength
            0 in ``clamp`` mode zero-ablates the feature (the error term is kept).
        max_activations: ``[d_sae]`` (needed by ``clamp`` and ``direction``).
        mode: see ``steer``.
        max_new_tokens, batch_size, temperature, seed: generation settings (greedy by default).

    Returns:
        One row per (condition, prompt): condition, prompt_idx, completion, generated_ids.

    Raises:
        ValueError: a model on another backend, a bad steering request or an SAE on the meta
            device (all before generating).
    """
    if getattr(model, "backend", None) != "hf":
        raise ValueError("model must be loaded with backend='hf' (models.load_hooked(path, "
                         "backend='hf')): generation runs through transformers.")
    steered = [features for features in conditions.values() if features]
    for features in steered:
        check_steering(model, sae, features, mode, max_activations)
    if steered:
        sae_on_model_device(sae, model)
    rows = []
    for name, features in conditions.items():
        context = (steer(model, sae, features, mode, max_activations) if features
                   else contextlib.nullcontext())
        with context:
            texts, ids = evaluation.generate(model.model, model.tokenizer, prompts,
                                             max_new_tokens, batch_size, temperature, seed,
                                             desc=name, return_ids=True)
        rows += [dict(condition=name, prompt_idx=i, completion=t, generated_ids=g)
                 for i, (t, g) in enumerate(zip(texts, ids))]
    return pd.DataFrame(rows)


def steered_completions(model, sae, prompts: Sequence[str], feature_idx: Sequence[int],
                        strengths: Sequence[float], max_activations=None, mode: str = "clamp",
                        max_new_tokens: int = 160, batch_size: int = 64) -> pd.DataFrame:
    """Greedy completions of ``prompts``, unsteered and steered on each feature at each strength.

    Returns:
        ``run_conditions``'s frame with feature_idx (-1 = unsteered) and strength; conditions are
        named ``unsteered`` and ``f<idx> x<strength>``.
    """
    conditions = {"unsteered": None} | {f"f{int(f)} x{float(s):g}": {int(f): float(s)}
                                        for f in feature_idx for s in strengths}
    frame = run_conditions(model, sae, prompts, conditions, max_activations, mode,
                           max_new_tokens, batch_size)
    steered = {name: next(iter(c.items())) if c else (-1, 0.0) for name, c in conditions.items()}
    frame["feature_idx"] = [steered[c][0] for c in frame.condition]
    frame["strength"] = [steered[c][1] for c in frame.condition]
    return frame


def density_matched_controls(scores: pd.DataFrame, features: Sequence[int], seed: int = 0,
                             n_neighbours: int = 10, exclude: Sequence[int] = ()) -> list[int]:
    """For each feature, a random feature of about the same density (a control for steering).

    Each control is drawn from the ``n_neighbours`` features closest in log density, leaving out
    ``features``, ``exclude`` (e.g. the top ReasonScore features), dead features and earlier picks.

    Args:
        scores: ReasonScore frame with ``feature_idx`` and ``density``.
        features: the features to match.
        seed: the draw's seed.
        n_neighbours: candidates per feature.
        exclude: features never drawn.

    Raises:
        ValueError: a feature not in ``scores``, or too few live features left to draw from.
    """
    check_range("n_neighbours", n_neighbours, 1)
    density = scores.set_index("feature_idx").density
    missing = [f for f in features if f not in density.index]
    if missing:
        raise ValueError(f"features {missing} are not in scores (feature_idx 0..{len(scores) - 1}).")
    rng = np.random.default_rng(seed)
    taken = set(features) | set(exclude)
    controls = []
    for f in features:
        pool = density[(density > 0) & ~density.index.isin(list(taken))]
        if pool.empty:
            raise ValueError("no live feature is left to serve as a density-matched control.")
        gap = (np.log(pool) - np.log(max(density[f], 1e-12))).abs()
        pick = int(rng.choice(gap.nsmallest(n_neighbours).index.to_numpy()))
        controls.append(pick)
        taken.add(pick)
    return controls
