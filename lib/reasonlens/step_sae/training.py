"""Training the step-level SAE: phase 1 (autoencoder) with checkpoints, resume and DDP; phase 2.

Phase 1 minimises, per batch, the mean over steps of (mean step-token NLL + l1_coefficient *
(L1 - l1_target)^2) (Yang et al., 2026, Sec. 3; see ``model``), the penalty ramping up over
``l1_warmup_steps``. Losses are per-step means averaged over steps, so a batch split evenly over
DDP ranks gives exactly the gradient of the whole batch. Under
``torch.distributed`` (``torchrun``, gloo on CPU) every rank draws the same global batch from the
same seeded generator and takes its slice ``idx[rank::world_size]``.

A checkpoint (``step_000100/``) holds the weights (safetensors), the optimizer, schedule and
batch-sampler state (``torch.save``, read back with ``weights_only=True``) and the loss history;
``train_step_sae`` with the same ``checkpoint_dir`` resumes from the latest one and continues the
same run, batch for batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from reasonlens.artifacts import atomic_path
from reasonlens.config import Config, check_range
from reasonlens.step_sae.data import StepExamples, collate
from reasonlens.step_sae.model import StepSAE

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"step_(\d+)$")
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("n_steps", "checkpoint_every", "n_threads")


@dataclasses.dataclass(frozen=True)
class StepSAETrainConfig(Config):
    """Optimisation of both phases.

    Args:
        n_steps: phase-1 optimiser steps.
        batch_size: steps (examples) per optimiser step, over all ranks.
        lr: phase-1 learning rate of the bottleneck (pre-bias, encoder map, projection); linear
            warm-up, then constant, so a run can be extended.
        lm_lr: phase-1 learning rate of the encoder and decoder LMs (None: ``lr``). A rate 10x
            below ``lr`` keeps the pretrained decoder from learning to ignore the soft prefix
            while the bottleneck is still noise; at one shared rate the toy run sat for hundreds
            of steps on a plateau where the latent carried nothing (own = shuffled latent).
        warmup_steps: warm-up length.
        l1_warmup_steps: the sparsity penalty ramps up linearly over this many steps, so the
            latent first learns to carry the step (a full penalty from the start collapses every
            step onto one latent vector).
        weight_decay: AdamW weight decay.
        checkpoint_every: phase-1 steps between checkpoints (0: only at the end).
        head_n_steps: phase-2 optimiser steps.
        head_lr: phase-2 learning rate.
        seed: batch order.
        n_threads: torch CPU threads (None leaves torch's default).
    """

    n_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    lm_lr: float | None = 3e-4
    warmup_steps: int = 50
    l1_warmup_steps: int = 0
    weight_decay: float = 0.0
    checkpoint_every: int = 0
    head_n_steps: int = 300
    head_lr: float = 2e-3
    seed: int = 0
    n_threads: int | None = None

    def __post_init__(self):
        for name in ("n_steps", "batch_size", "head_n_steps"):
            check_range(name, getattr(self, name), 1)
        for name in ("lr", "head_lr", "weight_decay", "warmup_steps", "l1_warmup_steps",
                     "checkpoint_every"):
            check_range(name, getattr(self, name), 0)
        if self.lm_lr is not None:
            check_range("lm_lr", self.lm_lr, 0)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch(model: StepSAE, examples: StepExamples, idx: torch.Tensor):
    idx = idx.tolist()
    return collate([examples.context_ids[i] for i in idx], [examples.step_ids[i] for i in idx],
                   model.sep_id, model.eos_id, model.pad_id)


def parameter_groups(model: StepSAE, params: list[torch.nn.Parameter],
                     cfg: StepSAETrainConfig) -> list[dict]:
    """Optimizer groups: the LMs' parameters at ``lm_lr``, the bottleneck's at ``lr``."""
    in_lms = {id(p) for lm in (model.encoder, model.decoder) for p in lm.parameters()}
    lm_lr = cfg.lr if cfg.lm_lr is None else cfg.lm_lr
    return [{"params": [p for p in params if id(p) in in_lms], "lr": lm_lr},
            {"params": [p for p in params if id(p) not in in_lms], "lr": cfg.lr}]


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The checkpoint with the most steps under ``checkpoint_dir``, or None."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = [p for p in Path(checkpoint_dir).iterdir() if CHECKPOINT_RE.match(p.name)]
    return max(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)), default=None)


def examples_fingerprint(examples: StepExamples) -> str:
    """A hash of the training examples' token ids (a checkpoint resumes only on the same data)."""
    digest = hashlib.sha1()
    for context, step in zip(examples.context_ids, examples.step_ids):
        digest.update(json.dumps([context, step]).encode())
    return digest.hexdigest()


def save_checkpoint(checkpoint_dir: str | Path, step: int, model: StepSAE, optimizer, schedule,
                    generator: torch.Generator, history: list[dict], cfg: StepSAETrainConfig,
                    data_fingerprint: str = "") -> Path:
    """Write ``step_<step>/`` atomically: weights, optimizer/schedule/sampler state, history."""
    path = Path(checkpoint_dir) / f"step_{step:06d}"
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "generator": generator.get_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "history": history, "train_config": cfg.to_dict(),
             "step_sae_config": model.cfg.to_dict(), "data": data_fingerprint}, indent=2))
    return path


def changed_settings(path: Path, model: StepSAE, cfg: StepSAETrainConfig,
                     data_fingerprint: str = "") -> list[str]:
    """What differs between checkpoint ``path`` and this run (empty: it can be resumed)."""
    state = json.loads((path / "state.json").read_text())
    old, new = state["train_config"], cfg.to_dict()
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if state["step_sae_config"] != model.cfg.to_dict():
        changed.append("step_sae_config")
    if state.get("data", "") != data_fingerprint:
        changed.append("training examples")
    return changed


def load_checkpoint(path: Path, model: StepSAE, optimizer, schedule, generator: torch.Generator,
                    cfg: StepSAETrainConfig, data_fingerprint: str = "") -> tuple[int, list[dict]]:
    """Restore a ``save_checkpoint`` into the given objects; return (step, history).

    Raises:
        ValueError: the checkpoint was made with another model, training config or data.
    """
    state = json.loads((path / "state.json").read_text())
    changed = changed_settings(path, model, cfg, data_fingerprint)
    if changed:
        raise ValueError(f"checkpoint {path} was made with other settings: {changed} differ. "
                         "Resume with the same settings, or delete the checkpoint directory to "
                         "start a new run.")
    load_model(model, str(path / "model.safetensors"))
    extra = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    schedule.load_state_dict(extra["schedule"])
    generator.set_state(extra["generator"])
    return state["step"], state["history"]


def train_step_sae(model: StepSAE, examples: StepExamples, cfg: StepSAETrainConfig,
                   checkpoint_dir: str | Path | None = None, progress: bool = True,
                   restart_if_changed: bool = False) -> pd.DataFrame:
    """Phase 1: train the autoencoder in place; resume from ``checkpoint_dir`` if it has one.

    Under an initialised ``torch.distributed`` process group the model is wrapped in
    ``DistributedDataParallel`` and each rank takes ``batch_size / world_size`` of every batch;
    rank 0 writes the checkpoints.

    Args:
        model: a ``StepSAE`` (e.g. ``StepSAE.build``).
        examples: the training steps.
        cfg: the schedule.
        checkpoint_dir: where checkpoints go (None: no checkpoints).
        progress: show a progress bar (rank 0).
        restart_if_changed: when the latest checkpoint was made with other settings or data,
            delete ``checkpoint_dir`` and start over (a notebook re-run with new parameters)
            instead of raising.

    Returns:
        One row per step: step, loss, recon_loss, l1, l0, token_accuracy (means over all ranks).

    Raises:
        ValueError: no examples; ``batch_size`` not divisible by the number of ranks; a
            checkpoint from other settings.
    """
    if len(examples) == 0:
        raise ValueError("examples is empty: no steps to train on. Check step_n_train.")
    rank, world = _rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} ranks; "
                         f"use e.g. batch_size={cfg.batch_size // world * world or world}.")
    if cfg.n_threads:
        torch.set_num_threads(cfg.n_threads)
    params = model.phase_parameters(1)
    optimizer = torch.optim.AdamW(parameter_groups(model, params, cfg),
                                  weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
    generator = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    fingerprint = examples_fingerprint(examples) if checkpoint_dir is not None else ""
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is not None and restart_if_changed and changed_settings(
            checkpoint, model, cfg, fingerprint):
        if world > 1:
            dist.barrier()  # every rank has read the checkpoint before rank 0 deletes it
        if rank == 0:
            log.warning("checkpoints in %s were made with other settings; starting over",
                        checkpoint_dir)
            shutil.rmtree(checkpoint_dir)
        checkpoint = None
    if checkpoint is not None:
        start, history = load_checkpoint(checkpoint, model, optimizer, schedule, generator, cfg,
                                         fingerprint)
        log.info("resuming from %s at step %d", checkpoint, start)
    if start == 0:  # every rank computes the same mean from the same examples
        model.init_pre_bias(_batch(model, examples, torch.arange(min(len(examples), 256))))
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    model.train()
    bar = tqdm(range(start, cfg.n_steps), desc="step SAE", mininterval=2.0,
               disable=not progress or rank != 0)
    for step in bar:
        idx = torch.randint(len(examples), (cfg.batch_size,), generator=generator)
        out = net(_batch(model, examples, idx[rank::world]))
        loss = out.loss(model.cfg, min(1.0, (step + 1) / max(1, cfg.l1_warmup_steps)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        metrics = torch.stack([loss.detach(), out.recon_loss.detach().mean(),
                               out.l1.detach().mean(), (out.latents > 0).float().sum(-1).mean(),
                               out.token_accuracy.detach().mean()])
        if world > 1:
            dist.all_reduce(metrics)
            metrics /= world
        history.append(dict(zip(("step", "loss", "recon_loss", "l1", "l0", "token_accuracy"),
                                [step + 1, *metrics.tolist()])))
        bar.set_postfix(recon=f"{metrics[1].item():.3f}", l1=f"{metrics[2].item():.2f}")
        is_due = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
        if checkpoint_dir is not None and (is_due or step + 1 == cfg.n_steps):
            if rank == 0:
                save_checkpoint(checkpoint_dir, step + 1, model, optimizer, schedule, generator,
                                history, cfg, fingerprint)
            if world > 1:
                dist.barrier()
    model.eval()
    return pd.DataFrame(history)


def train_context_head(model: StepSAE, examples: StepExamples, cfg: StepSAETrainConfig,
                       progress: bool = True) -> pd.DataFrame:
    """Phase 2: fit the Gaussian context head to the frozen SAE's latents (Gaussian NLL).

    Returns:
        One row per step: step, nll, mse (of the predicted mean).
    """
    if len(examples) == 0:
        raise ValueError("examples is empty: no steps to train the context head on.")
    params = model.phase_parameters(2)
    optimizer = torch.optim.AdamW(params, lr=cfg.head_lr)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    history = []
    model.eval()
    for step in tqdm(range(cfg.head_n_steps), desc="context head", mininterval=2.0,
                     disable=not progress):
        batch = _batch(model, examples,
                       torch.randint(len(examples), (cfg.batch_size,), generator=generator))
        with torch.no_grad():
            hidden = model.hidden_states(batch)
            rows = torch.arange(len(hidden))
            target = model.sparse_latent(hidden[rows, batch.last_pos])
        mean, log_var = model.context_head(hidden[rows, batch.sep_pos])
        nll = F.gaussian_nll_loss(mean, target, log_var.exp(), full=True)
        optimizer.zero_grad(set_to_none=True)
        nll.backward()
        optimizer.step()
        history.append({"step": step + 1, "nll": nll.item(),
                        "mse": F.mse_loss(mean.detach(), target).item()})
    model.phase_parameters(1)
    return pd.DataFrame(history)
