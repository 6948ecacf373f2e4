"""Feature steering during generation (Galichin et al., 2025, Sec. 5; docs/design.md, "Steering").

At the steering site, for every position (the prompt and each generated token, with or without
a KV cache):

- ``clamp`` (the paper's): f = encode(x); err = x - decode(f); f[k] = max_activation(k) * strength;
  x' = decode(f) + err. The error term keeps everything the SAE does not explain.
- ``direction``: the component of x along feature k's unit decoder direction d_k is set to
  max_activation(k) * strength, the same component the clamp writes. Several features move x
  within the span of their directions only, so that every x . d_k hits its value also when the
  directions are not orthogonal (a least-squares compromise where they are linearly dependent).
- ``add``: x' = x + strength * d_k.

Every mode computes in float32 (float64 for a float64 SAE) whatever the model's and the SAE's
dtypes, and casts the result back to the activation's dtype once; the reference code computes its
error term in float32 too (its SAE is float32).

Sites (``site=``), both with the same SAE and the same formula:

- ``resid_post`` (default): the SAE's own hook point (``blocks.L.hook_resid_post`` for the
  paper's SAE and every SAE of this book), the residual stream the SAE was trained on. This is the
  intervention the paper describes.
- ``reference``: ``blocks.L.hook_mlp_out`` of the SAE's layer L, what the authors' evaluation
  code actually hooks (vLLM's Llama decoder layer returns the MLP output before the residual add,
  and their hook edits that). The SAE then reads the MLP output, not the stream it was trained on,
  and the clamp adds about ``(c - f_k(mlp_out)) W_dec[k]`` to the stream: close to additive
  steering. **The paper's published numbers (+2.2 points, 20.5% longer traces) come from this
  site.**

Units of ``max_activations`` (``units=``):

- ``folded`` (default): the units ReasonScore reports (decoder norms folded into the encoder, so a
  feature's activation is its component along d_k); the clamp writes
  max_activation * strength / ||W_dec[k]|| into the SAE's own activation.
- ``raw``: the SAE's own (unfolded) activation, as the reference passes it (``5.840`` for feature
  46379, written straight into f[k] as 5.840 * 2); the clamp writes max_activation * strength, a
  displacement along d_k of max_activation * strength * ||W_dec[k]||, and ``direction`` sets the
  component along d_k to that. The two agree when every ||W_dec[k]|| is 1. (The reference's
  per-feature direction hook takes its number as the component along d_k: ``units="folded"``.)

Several features can be steered at once. ``steer`` is a context manager: the hook is attached
through the model's ``hooks`` (TransformerLens or transformers backend) and always removed.

Example:
    >>> with steer(model, sae, {46379: 2.0}, max_activations=scores.max_activation):  # doctest: +SKIP
    ...     completions = evaluation.generate(model.model, tokenizer, prompts)
    >>> with steer(model, sae, {46379: 2.0}, max_activations=[5.840] * sae.cfg.d_sae,
    ...            site="reference", units="raw"):  # doctest: +SKIP
    ...     ...  # the authors' evaluation intervention
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
from reasonlens.models import (check_sae_fits, device_of, parse_hook_name, sae_hook_name,
                               sae_on_model_device)

MODES = ("clamp", "direction", "add")
SITES = ("resid_post", "reference")
UNITS = ("folded", "raw")


def steering_site(sae, site: str, n_layers: int) -> str:
    """The hook point that ``site`` names for ``sae``.

    Args:
        sae: a SAELens SAE with ``sae.cfg.metadata.hook_name`` (``blocks.L.<kind>``).
        site: ``resid_post`` (the SAE's own hook point) or ``reference`` (``blocks.L.hook_mlp_out``
            of the SAE's layer L, where the authors' evaluation steers; see the module docstring).
        n_layers: the model's layer count, to check the hook point against.

    Returns:
        The TransformerLens hook name, e.g. ``blocks.19.hook_mlp_out``.

    Raises:
        ValueError: an unknown site, an SAE without a hook name, or a hook point the model lacks.
    """
    if site not in SITES:
        raise ValueError(f"site={site!r} is unknown; use one of {SITES} ('resid_post': the SAE's "
                         "own hook point; 'reference': the MLP output of its layer, as the "
                         "authors' evaluation steers).")
    hook_name = sae_hook_name(sae)
    layer, _ = parse_hook_name(hook_name, n_layers)
    return hook_name if site == "resid_post" else f"blocks.{layer}.hook_mlp_out"


def check_mode_and_units(mode: str, units: str) -> None:
    """Raise ``ValueError`` naming ``mode`` or ``units`` when it is not one of ``MODES``/``UNITS``."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {MODES}.")
    if units not in UNITS:
        raise ValueError(f"units={units!r} is unknown; use one of {UNITS} ('folded': "
                         "ReasonScore's max_activation; 'raw': the SAE's own activation, as the "
                         "reference's sae_max_activation).")


def check_steering(model, sae, features: Mapping[int, float], mode: str,
                   max_activations: Sequence[float] | torch.Tensor | None,
                   site: str = "resid_post", units: str = "folded") -> None:
    """Validate a steering request before any generation starts.

    Raises:
        ValueError: an unknown mode, site or units, a feature index outside the SAE, a
            non-finite strength, missing max activations, an SAE of another width, or a hook
            point the model lacks.
    """
    check_mode_and_units(mode, units)
    if not features:
        raise ValueError("features is empty; pass {feature_idx: strength}.")
    check_sae_fits(sae, model.n_layers, model.d_model)
    steering_site(sae, site, model.n_layers)
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
                  max_activations: Sequence[float] | torch.Tensor | None = None,
                  units: str = "folded"):
    """A ``fn(activation, hook)`` that steers ``[batch, pos, d_model]`` activations.

    What the hook needs is computed here, once, on the SAE's device. Each call computes in float32
    (float64 for a float64 SAE) whatever the activation's and the SAE's dtypes (the SAE encodes
    and decodes in its own dtype; the error term and the sum are float32) and returns the
    activation's dtype, rounded once; features left as they are leave the activation exactly as
    it was. The hook steers whatever activation it is given: which hook point it is attached to
    (the site) is ``steer``'s business.

    Args:
        sae: a SAELens SAE, already on the device of the activations it will see (``steer`` puts
            it there).
        features: ``{feature_idx: strength}``.
        mode: ``clamp``, ``direction`` or ``add`` (see the module docstring).
        max_activations: ``[d_sae]`` (needed by ``clamp`` and ``direction``).
        units: ``folded`` or ``raw``: the units of ``max_activations`` (see the module docstring).

    Returns:
        The hook function; it raises ``ValueError`` naming both devices when an activation is not
        on the SAE's device.

    Raises:
        ValueError: an unknown ``mode`` or ``units`` (``steer`` checks the rest of a request).
    """
    check_mode_and_units(mode, units)
    w_dec = sae.W_dec.detach()
    device = w_dec.device
    work = torch.promote_types(w_dec.dtype, torch.float32)  # never below float32
    idx = torch.tensor([int(i) for i in features], dtype=torch.long, device=device)
    strengths = torch.tensor([float(s) for s in features.values()], dtype=work, device=device)
    w_dec = w_dec[idx].to(work)  # [n, d_model]
    norms = w_dec.norm(dim=-1)
    directions = w_dec / norms.clamp(min=1e-12)[:, None]
    if mode != "add":
        values = torch.as_tensor(max_activations, dtype=work).to(device)[idx] * strengths
        if units == "raw":  # the SAE's own activation; its component along d_k is that * norm
            components, targets = values * norms, values
        else:  # folded: the component along d_k; the SAE's own activation is that / norm
            components, targets = values, values / norms
        targets = targets.to(sae.W_dec.dtype)  # written into the SAE's own activation
    if mode == "direction":
        # x' = x + a D with (a D) . d_j = c_j - x . d_j for every j: a = (c - x D^T) G^+, G = D D^T
        gram_pinv = torch.linalg.pinv(directions @ directions.T)  # [n, n]; identity for one

    def hook(activation: torch.Tensor, hook) -> torch.Tensor:
        if activation.device != device:
            raise ValueError(f"the activations at {getattr(hook, 'name', 'the hook point')} are on"
                             f" {activation.device} but the SAE is on {device}; put the SAE where"
                             " the model is (steer does: models.sae_on_model_device).")
        x = activation.to(work)
        if mode == "clamp":  # x + decode(f') - decode(f): the error term x - decode(f) is kept
            with torch.no_grad():
                feature_acts = sae.encode(activation)
                reconstruction = sae.decode(feature_acts).to(work)
                feature_acts[..., idx] = targets
                x = x + (sae.decode(feature_acts).to(work) - reconstruction)
        elif mode == "direction":
            x = x + (components - x @ directions.T) @ gram_pinv @ directions  # [.., n] [n, d_model]
        else:
            x = x + strengths @ directions
        return x.to(activation.dtype)

    return hook


def steering_hooks(model, sae, features: Mapping[int, float], mode: str,
                   max_activations: Sequence[float] | torch.Tensor | None, site: str,
                   units: str) -> list[tuple[str, object]]:
    """Check a steering request, put the SAE on the model's device and build its hook.

    Args:
        model, sae, features, mode, max_activations, site, units: as for ``steer``.

    Returns:
        ``[(hook_name, fn)]``, for ``model.hooks``.

    Raises:
        ValueError: see ``check_steering`` and ``models.sae_on_model_device``.
    """
    check_steering(model, sae, features, mode, max_activations, site, units)
    sae_on_model_device(sae, model)
    hook_name = steering_site(sae, site, model.n_layers)
    return [(hook_name, steering_hook(sae, features, mode, max_activations, units))]


@contextlib.contextmanager
def steer(model, sae, features: Mapping[int, float], mode: str = "clamp",
          max_activations: Sequence[float] | torch.Tensor | None = None,
          site: str = "resid_post", units: str = "folded") -> Iterator[object]:
    """Steer ``features`` ({feature_idx: strength}) while the block runs; hooks always removed.

    Args:
        model: a ``TLHookedModel`` or ``HFHookedModel`` (``reasonlens.models``).
        sae: a SAELens SAE at one of the model's hook points; moved to the model's device first
            (in place, once: ``models.sae_on_model_device``).
        features: strengths per feature index.
        mode: ``clamp`` (the paper's), ``direction`` or ``add``.
        max_activations: ``[d_sae]`` largest activation of each feature on the scoring data.
        site: ``resid_post`` (the SAE's own hook point) or ``reference`` (the MLP output of its
            layer, where the authors' evaluation steers); see the module docstring.
        units: ``folded`` (ReasonScore's max_activation) or ``raw`` (the SAE's own activation,
            as the reference passes it).

    Raises:
        ValueError: see ``check_steering``, or an SAE on the meta device (see
            ``models.sae_on_model_device``); raised before anything is attached.
    """
    with model.hooks(steering_hooks(model, sae, features, mode, max_activations, site, units)):
        yield model


def site_activations(model, sae, tokens: torch.Tensor, feature_idx: Sequence[int],
                     ignore_ids: Sequence[int] = (), batch_size: int = 16) -> pd.DataFrame:
    """What the SAE reads at each steering site: feature activations over every token, folded units.

    At ``resid_post`` a feature's activation is what ReasonScore measures; at ``reference`` (the
    MLP output of the SAE's layer) it is what the authors' evaluation clamp replaces, so the
    displacement there is (c - f_k) d_k with this f_k (notebook 06).

    Args:
        model: a hooked model (either backend).
        sae: the SAE (moved to the model's device first, in place).
        tokens: ``[batch, pos]`` token ids.
        feature_idx: the features to read.
        ignore_ids: tokens left out (BOS/EOS/PAD, as in ReasonScore).
        batch_size: contexts per forward pass.

    Returns:
        One row per (site, kept token, feature): site, feature_idx, activation (the SAE's own
        activation times ||W_dec[k]||, the units of ReasonScore's max_activation).

    Raises:
        ValueError: a feature outside the SAE, a bad ``batch_size``, or an SAE the model cannot
            feed (see ``models.check_sae_fits``).
    """
    from reasonlens.scoring import capture_activations, ignored_mask

    check_range("batch_size", batch_size, 1)
    check_sae_fits(sae, model.n_layers, model.d_model)
    outside = [int(f) for f in feature_idx if not 0 <= int(f) < sae.cfg.d_sae]
    if outside:
        raise ValueError(f"feature_idx={outside} is outside the SAE (d_sae={sae.cfg.d_sae}).")
    sae_on_model_device(sae, model)
    idx = torch.tensor([int(f) for f in feature_idx], dtype=torch.long)
    norms = sae.W_dec.detach().float().norm(dim=-1).cpu()[idx]  # [n]
    frames = []
    for site in SITES:
        hook_name = steering_site(sae, site, model.n_layers)
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size].to(device_of(model))
            with torch.no_grad():
                acts = sae.encode(capture_activations(model, batch, hook_name))
            kept = acts[~ignored_mask(batch, ignore_ids)][:, idx.to(acts.device)]  # [tokens, n]
            values = (kept.float().cpu() * norms).numpy()
            frames.append(pd.DataFrame({"site": site,
                                        "feature_idx": np.tile(idx.numpy(), len(values)),
                                        "activation": values.reshape(-1)}))
    return pd.concat(frames, ignore_index=True)


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
                   temperature: float = 0.0, seed: int = 0, site: str = "resid_post",
                   units: str = "folded") -> pd.DataFrame:
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
        site: ``resid_post`` or ``reference`` (see ``steer``).
        units: ``folded`` or ``raw``, the units of ``max_activations`` (see ``steer``).

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
        check_steering(model, sae, features, mode, max_activations, site, units)
    if steered:
        sae_on_model_device(sae, model)
    rows = []
    for name, features in conditions.items():
        context = (steer(model, sae, features, mode, max_activations, site, units) if features
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
                        max_new_tokens: int = 160, batch_size: int = 64, site: str = "resid_post",
                        units: str = "folded") -> pd.DataFrame:
    """Greedy completions of ``prompts``, unsteered and steered on each feature at each strength.

    Args:
        model, sae, prompts, max_activations, mode, max_new_tokens, batch_size, site, units: as
            for ``run_conditions``.
        feature_idx: the features, steered one at a time.
        strengths: the strengths each feature is steered at.

    Returns:
        ``run_conditions``'s frame with feature_idx (-1 = unsteered) and strength; conditions are
        named ``unsteered`` and ``f<idx> x<strength>``.
    """
    conditions = {"unsteered": None} | {f"f{int(f)} x{float(s):g}": {int(f): float(s)}
                                        for f in feature_idx for s in strengths}
    frame = run_conditions(model, sae, prompts, conditions, max_activations, mode,
                           max_new_tokens, batch_size, site=site, units=units)
    steered = {name: next(iter(c.items())) if c else (-1, 0.0) for name, c in conditions.items()}
    frame["feature_idx"] = [steered[c][0] for c in frame.condition]
    frame["strength"] = [steered[c][1] for c in frame.condition]
    return frame


# condition name -> (site, units): the design's clamp, the same clamp where the authors' evaluation
# code applied it, and that with their raw-unit maximum (exactly the authors' intervention).
SITE_VARIANTS = {"resid_post": ("resid_post", "folded"),
                 "reference": ("reference", "folded"),
                 "reference, raw units": ("reference", "raw")}


def compare_sites(model, sae, prompts: Sequence[str], features: Mapping[int, float],
                  max_activations, mode: str = "clamp",
                  variants: Mapping[str, tuple[str, str]] = SITE_VARIANTS,
                  **generation) -> pd.DataFrame:
    """Completions unsteered and under one steering request at each (site, units) of ``variants``.

    Args:
        model, sae, prompts, max_activations, mode: as for ``run_conditions``.
        features: ``{feature_idx: strength}``, the same at every site.
        variants: condition name -> (site, units); ``SITE_VARIANTS`` by default.
        **generation: ``run_conditions``'s generation settings (max_new_tokens, batch_size,
            temperature, seed).

    Returns:
        ``run_conditions``'s frame: condition ``unsteered``, then one per variant.

    Raises:
        ValueError: an empty ``features`` or a bad request at any variant, before generating.
    """
    if not features:
        raise ValueError("features is empty; pass {feature_idx: strength}.")
    for site, units in variants.values():
        check_steering(model, sae, features, mode, max_activations, site, units)
    frames = [run_conditions(model, sae, prompts, {"unsteered": None}, **generation)]
    frames += [run_conditions(model, sae, prompts, {name: features}, max_activations, mode,
                              site=site, units=units, **generation)
               for name, (site, units) in variants.items()]
    return pd.concat(frames, ignore_index=True)


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
