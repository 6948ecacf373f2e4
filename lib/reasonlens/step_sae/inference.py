"""Running a trained step-level SAE: latents, reconstruction quality, latent density, and
decoding a step from a latent (its own, a phase-2 sample, or an edited one).

The decoding functions follow the reference code's generation (Miaow-Lab/SSAE,
model_qwen.py:159-410): the decoder reads the soft prefix and ``context <sep>`` (in the layout of
``cfg.prefix_position``) and continues greedily until ``<eos>``; a phase-2 sample is
``mean + eps * exp(log_var / 2)`` clamped at 0 (model_qwen.py:273-278), not renormalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from reasonlens.step_sae.data import StepBatch, StepExamples, collate
from reasonlens.step_sae.model import StepSAE


def batches(model: StepSAE, context_ids: Sequence[Sequence[int]],
            step_ids: Sequence[Sequence[int]], batch_size: int, desc: str | None = None):
    """``context_ids[i] <sep> step_ids[i] <eos>`` in padded batches of ``batch_size``.

    A progress bar named ``desc`` shows when there is more than one batch (none if None).
    """
    for start in tqdm(range(0, len(step_ids), batch_size), desc=desc, mininterval=2.0,
                      disable=desc is None or len(step_ids) <= batch_size):
        end = start + batch_size
        yield collate(context_ids[start:end], step_ids[start:end], model.sep_id, model.eos_id,
                      model.pad_id)


def encode_steps(model: StepSAE, examples: StepExamples, batch_size: int = 64,
                 dense: bool = False) -> np.ndarray:
    """L2-normalised latents ``[n_steps, n_latents]`` of every example.

    ``dense=True`` gives the bottleneck's input instead: the encoder LM's hidden state at
    ``<eos>`` ``[n_steps, d_model]`` (what a probe could read before the bottleneck).
    """
    model.eval()
    encode = model.step_state if dense else model.encode
    with torch.no_grad():
        return torch.cat([encode(b) for b in batches(model, examples.context_ids,
                                                      examples.step_ids, batch_size,
                                                      "encode")]).numpy()


def reconstruction_metrics(model: StepSAE, examples: StepExamples, batch_size: int = 64
                           ) -> pd.DataFrame:
    """Step reconstruction loss and token accuracy under four choices of latent.

    ``own``: the step's latent; ``shuffled``: another step's latent from the batch (rolled by
    one); ``zero``: an all-zero latent (the decoder has only the context); ``context_head``: the
    phase-2 prediction from the context alone.

    Returns:
        One row per condition: condition, recon_loss (mean NLL per step token), token_accuracy.
    """
    model.eval()
    sums = {c: np.zeros(2) for c in ("own", "shuffled", "zero", "context_head")}
    with torch.no_grad():
        for batch in batches(model, examples.context_ids, examples.step_ids, batch_size,
                             "reconstruct"):
            latents = model.encode(batch)
            predicted, _ = model.context_distribution(batch)
            choices = {"own": latents, "shuffled": latents.roll(1, dims=0),
                       "zero": torch.zeros_like(latents), "context_head": predicted}
            for name, z in choices.items():
                recon, right = model.reconstruct(batch, z)
                sums[name] += [recon.sum().item(), right.sum().item()]
    return pd.DataFrame([{"condition": c, "recon_loss": s[0] / len(examples),
                          "token_accuracy": s[1] / len(examples)} for c, s in sums.items()])


def latent_density(latents: np.ndarray) -> np.ndarray:
    """Fraction of steps on which each latent is active (> 0): ``[n_latents]``."""
    return (np.asarray(latents) > 0).mean(axis=0)


def greedy_decode(model: StepSAE, context_ids: Sequence[Sequence[int]], latents: torch.Tensor,
                  max_new_tokens: int = 32, batch_size: int = 64) -> list[list[int]]:
    """Greedy decoding of one step per latent, given its context (R's ``temperature=0``).

    The decoder reads ``PREFIX context <sep>`` (``prefix_position="start"``) or ``context <sep>
    PREFIX`` (``"step"``) and the tokens generated so far, as in training. Steps are decoded in
    left-padded batches by Hugging Face ``generate`` from input embeddings (KV cache, no
    repetition penalty), so labelling a data set (``probes.reconstruction_correctness``) is
    fast; batching changes no token beyond float rounding.

    Args:
        model: a trained ``StepSAE``.
        context_ids: one context's token ids per latent (``<sep>`` is added here).
        latents: ``[n, n_latents]``, e.g. ``model.encode(batch)``.
        max_new_tokens: the most tokens generated per step.
        batch_size: steps decoded together.

    Returns:
        The generated ids of each step, ``<eos>`` excluded.

    Raises:
        ValueError: not one context per latent.

    Used by ``step_decodings`` (notebook 08) and ``probes.reconstruction_correctness``.
    """
    if len(context_ids) != len(latents):
        raise ValueError(f"{len(context_ids)} contexts but {len(latents)} latents; give one "
                         "context per latent.")
    model.eval()
    device = next(model.parameters()).device
    embed = model.decoder.get_input_embeddings()
    start_prefix = model.cfg.prefix_position == "start"
    out: list[list[int]] = []
    with torch.no_grad():
        prefixes = model.prefix(latents.to(device))
        for start in range(0, len(context_ids), batch_size):
            rows = []
            for context, prefix in zip(context_ids[start: start + batch_size],
                                       prefixes[start: start + batch_size]):
                head = embed(torch.tensor(list(context) + [model.sep_id], device=device))
                prefix = prefix.to(head.dtype)
                rows.append(torch.cat([prefix, head] if start_prefix else [head, prefix]))
            width = max(len(r) for r in rows)
            inputs = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
            mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
            for i, row in enumerate(rows):  # left padding
                inputs[i, width - len(row):], mask[i, width - len(row):] = row, 1
            ids = model.decoder.generate(
                inputs_embeds=inputs, attention_mask=mask, max_new_tokens=max_new_tokens,
                do_sample=False, repetition_penalty=1.0, eos_token_id=model.eos_id,
                pad_token_id=model.pad_id, use_cache=True)
            for row in ids.tolist():
                out.append(row[:row.index(model.eos_id)] if model.eos_id in row else row)
    return out


def sample_context_latents(model: StepSAE, batch: StepBatch, seed: int = 0) -> torch.Tensor:
    """One phase-2 sample of each step's latent from its context alone ``[batch, n_latents]``.

    ``mean + eps * exp(log_var / 2)``, ``eps ~ N(0, 1)`` from ``seed``, clamped at 0 as R does
    (model_qwen.py:273-278); not L2-normalised.
    """
    model.eval()
    with torch.no_grad():
        mean, log_var = model.context_distribution(batch)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return (mean + eps.to(mean.device) * (0.5 * log_var).exp()).clamp_min(0.0)


def edit_latents(latents: torch.Tensor, edits: Mapping[int, float]) -> torch.Tensor:
    """A copy of ``latents`` ``[n, n_latents]`` with latent ``i`` set to ``value`` for each edit."""
    edited = latents.clone()
    for latent_idx, value in edits.items():
        edited[:, latent_idx] = value
    return edited


def step_decodings(model: StepSAE, examples: StepExamples, tokenizer, n_examples: int = 3,
                   up_latent: int | None = None, max_new_tokens: int = 32,
                   seed: int = 0) -> pd.DataFrame:
    """Each of the first ``n_examples`` steps and its greedy decodings from four latents.

    ``own``: the step's latent. ``sampled``: a phase-2 sample from its context
    (``sample_context_latents``). ``top_off``: its own latent with its most active latent set
    to 0 (edited down). ``up``: its own latent with latent ``up_latent`` set to the value of its
    most active latent (edited up; None: the latent most often active over ``examples``, or the
    next most often when it is this step's top latent).

    Returns:
        One row per step: step, own, sampled, top_latent, top_off, up_latent, up (texts).

    Used by notebook 08 ("Decoding from a latent").
    """
    shown = examples.subset(range(min(n_examples, len(examples))))
    batch = collate(shown.context_ids, shown.step_ids, model.sep_id, model.eos_id, model.pad_id)
    model.eval()
    with torch.no_grad():
        latents = model.encode(batch)
    sampled = sample_context_latents(model, batch, seed)
    if up_latent is None:
        frequent = np.argsort(-(encode_steps(model, examples) > 0).mean(0), kind="stable")
    top = latents.argmax(-1).tolist()
    rows = []
    for i, top_idx in enumerate(top):
        up = up_latent if up_latent is not None else int(
            next(j for j in frequent if j != top_idx))
        one = latents[i: i + 1]
        variants = {"own": one, "sampled": sampled[i: i + 1],
                    "top_off": edit_latents(one, {top_idx: 0.0}),
                    "up": edit_latents(one, {up: float(one[0, top_idx])})}
        texts = {name: tokenizer.decode(greedy_decode(model, shown.context_ids[i: i + 1], z,
                                                      max_new_tokens)[0])
                 for name, z in variants.items()}
        rows.append({"step": tokenizer.decode(shown.step_ids[i]), "own": texts["own"],
                     "sampled": texts["sampled"], "top_latent": top_idx,
                     "top_off": texts["top_off"], "up_latent": up, "up": texts["up"]})
    return pd.DataFrame(rows)


def context_only_states(model: StepSAE, examples: StepExamples, batch_size: int = 64
                        ) -> np.ndarray:
    """R's "hints" baseline: an LM's last-layer state at the last token of the context alone.

    R (classifier/classifier_data.py:189-220; model_qwen.py:126-130, 413-419) removes ``<sep>``
    from ``context <sep>`` and runs its ``hints_encoder`` (the phase-2 context encoder, a copy of
    the base LM) on the context, right-padded, reading the state at the last real token. The
    step is never read. With R's phase-2 head (``cfg.context_head="reference"``) this reads
    ``model.context_encoder``; with ours, which has no context encoder, the SAE's encoder LM
    (causal, so the same as its state at that token of ``context <sep> step``). The context is
    ``examples.context_ids`` as tokenised (R's GSM8K reader keeps its first 256 tokens,
    dataloader.py:56).

    Args:
        model: a ``StepSAE``.
        examples: the steps (only their contexts are read).
        batch_size: contexts per pass.

    Returns:
        ``[n_steps, d_model]``.

    Raises:
        ValueError: an empty context (there is no last context token; R's always hold the
            question).
    """
    empty = [i for i, c in enumerate(examples.context_ids) if not c]
    if empty:
        raise ValueError(f"step {empty[0]} has an empty context: there is no last context token "
                         "to read. Use max_context_tokens > 0.")
    lm = model.context_encoder if model.context_encoder is not None else model.encoder
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            contexts = examples.context_ids[start: start + batch_size]
            ids = torch.full((len(contexts), max(map(len, contexts))), model.pad_id,
                             dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, c in enumerate(contexts):
                ids[i, : len(c)] = torch.tensor(c)
                mask[i, : len(c)] = 1
            hidden = lm.base_model(input_ids=ids.to(device),
                                   attention_mask=mask.to(device)).last_hidden_state
            last = (mask.sum(1) - 1).to(device)
            out.append(hidden[torch.arange(len(hidden), device=device), last].float().cpu())
    return torch.cat(out).numpy()
