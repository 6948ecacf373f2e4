"""Running a trained step-level SAE: latents, reconstruction quality, latent density."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from reasonlens.step_sae.data import StepExamples, collate
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
