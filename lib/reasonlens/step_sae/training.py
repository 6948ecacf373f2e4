"""Training the step-level SAE: phase 1 (autoencoder) with checkpoints, resume and DDP; phase 2.

Phase 1 minimises, per batch, the loss of the model's config (``StepSAEOutput.loss``; Yang et al.,
2026, Sec. 3): ours is the mean over steps of (mean step-token NLL + l1_coefficient *
(L1 - l1_target)^2), the penalty ramping up over ``l1_warmup_steps``; the reference's is the
token-mean NLL + w * batch-mean L1, with w adapted every 100 micro-batches
(``AdaptiveL1Weight``). Losses are per-step means averaged over steps, so a batch split evenly
over DDP ranks gives exactly the gradient of the whole batch (with the reference's token mean each
rank averages over its own tokens, as R does). Under ``torch.distributed`` (``torchrun``, gloo on
CPU) every rank draws the same global batch from the same seeded generator and takes its slice
``idx[rank::world_size]``.

``StepSAETrainConfig()`` is tuned for the toy; ``StepSAETrainConfig.reference()`` is the
authors' optimiser and schedule (Miaow-Lab/SSAE, train.py and configs/train.yaml): AdamW (0.9,
0.95), weight decay 0.01, one learning rate with linear warm-up then cosine decay, micro-batches
of 16 whose gradients are summed over 8 per optimiser step, gradient clipping at 1.0.

A checkpoint (``step_000100/``) holds the weights (safetensors), the optimizer, schedule,
batch-sampler and noise-generator state (``torch.save``, read back with ``weights_only=True``), the
adaptive L1 weight's state and the loss history; ``train_step_sae`` with the same
``checkpoint_dir`` resumes from the latest one and continues the same run, batch for batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
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
from reasonlens.step_sae.model import StepSAE, StepSAEConfig

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"step_(\d+)$")
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("n_steps", "checkpoint_every", "keep_checkpoints", "n_threads")


LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class StepSAETrainConfig(Config):
    """Optimisation of both phases.

    Args:
        n_steps: phase-1 optimiser steps.
        batch_size: steps (examples) per micro-batch, over all ranks.
        grad_accum_steps: micro-batches per optimiser step; their gradients are summed, not
            averaged, as R does (train.py:558, 586-592: each micro-batch's loss is backpropagated
            unscaled).
        lr: phase-1 learning rate of the bottleneck (pre-bias, encoder map, projection).
        lm_lr: phase-1 learning rate of the encoder and decoder LMs (None: ``lr``, one rate as in
            R). A rate 10x below ``lr`` keeps the pretrained decoder from learning to ignore the
            soft prefix while the bottleneck is still noise; at one shared rate the toy run sat
            for hundreds of steps on a plateau where the latent carried nothing (own = shuffled
            latent).
        warmup_steps: warm-up length (in schedule units, see ``schedule_unit_steps``).
        lr_schedule: ``"constant"`` (ours: factor ``min(1, (t + 1) / warmup_steps)``, so a run
            can be extended) or ``"cosine"`` (R's ``get_lr``, train.py:451-459: ``lr (u + 1) /
            (warmup_steps + 1)`` for unit u < warmup_steps, then cosine from ``lr`` to
            ``min_lr`` at unit ``lr_decay_steps``, ``min_lr`` after).
        min_lr: ``"cosine"``: the rate the cosine ends at (for the ``lr`` group; the LM group
            scales alike).
        lr_decay_steps: ``"cosine"``: the unit where the decay ends (None: the number of units,
            ``ceil(n_steps / schedule_unit_steps)``, as R's LR_DECAY_ITERS = MAX_ITERS).
        schedule_unit_steps: optimiser steps per schedule unit. R changes the rate once per
            epoch (train.py:531-533), so set it to the optimiser steps of an epoch to count
            ``warmup_steps`` and ``lr_decay_steps`` in epochs; 1 counts optimiser steps.
        l1_warmup_steps: the squared sparsity penalty ramps up linearly over this many steps, so
            the latent first learns to carry the step (a full penalty from the start collapses
            every step onto one latent vector). Unused by the adaptive penalty.
        weight_decay: AdamW weight decay.
        beta1, beta2: AdamW's betas (R: 0.9, 0.95; ours torch's default 0.9, 0.999).
        grad_clip: the gradient norm is clipped to this (0: no clipping).
        checkpoint_every: phase-1 steps between checkpoints (0: only at the end).
        keep_checkpoints: how many of the latest checkpoints stay on disk; older ones are deleted
            as each new one is written (None: keep all; as ``save_total_limit`` in HF's Trainer).
            A checkpoint holds both LMs and their AdamW state: 3.2 GB for SmolLM2-135M.
        head_n_steps: phase-2 optimiser steps.
        head_lr: phase-2 learning rate.
        seed: batch order (and, with ``seed + 2``, the token masks and latent noise).
        n_threads: torch CPU threads (None leaves torch's default).
    """

    n_steps: int = 1000
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 3e-3
    lm_lr: float | None = 3e-4
    warmup_steps: int = 50
    lr_schedule: str = "constant"
    min_lr: float = 0.0
    lr_decay_steps: int | None = None
    schedule_unit_steps: int = 1
    l1_warmup_steps: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 0
    keep_checkpoints: int | None = 1
    head_n_steps: int = 300
    head_lr: float = 2e-3
    seed: int = 0
    n_threads: int | None = None

    def __post_init__(self):
        for name in ("n_steps", "batch_size", "head_n_steps", "grad_accum_steps",
                     "schedule_unit_steps"):
            check_range(name, getattr(self, name), 1)
        for name in ("lr", "head_lr", "weight_decay", "warmup_steps", "l1_warmup_steps",
                     "checkpoint_every", "min_lr", "grad_clip"):
            check_range(name, getattr(self, name), 0)
        for name in ("beta1", "beta2"):
            check_range(name, getattr(self, name), 0, 1)
        if self.lm_lr is not None:
            check_range("lm_lr", self.lm_lr, 0)
        if self.keep_checkpoints is not None:
            check_range("keep_checkpoints", self.keep_checkpoints, 1)
        if self.lr_decay_steps is not None:
            check_range("lr_decay_steps", self.lr_decay_steps, self.warmup_steps + 1,
                        hint="The decay must end after the warm-up.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} is not valid; use one of "
                             f"{list(LR_SCHEDULES)}.")

    @classmethod
    def reference(cls, **overrides) -> StepSAETrainConfig:
        """R's phase-1 optimiser and schedule (configs/train.yaml, train.py).

        R counts its schedule in epochs (30, warm-up 2, decay to 1e-7 over 30; train.yaml:18-25)
        and changes the rate once per epoch. Here ``n_steps`` counts optimiser steps: pass
        ``n_steps = 30 * steps_per_epoch`` and ``schedule_unit_steps = steps_per_epoch`` (an
        epoch is ``len(examples) // (batch_size * grad_accum_steps)`` optimiser steps) to
        reproduce it; the defaults below count units of one optimiser step. R's phase 2 ran the
        same script (``PHASE: 2``); its published config is phase 1 only, so the phase-2 fields
        keep this class's defaults.

        Not reproduced: R walks each epoch's data in order (unshuffled on one GPU, shuffled per
        epoch under DDP; train.py:375-400) and drops an unfinished accumulation group at the end
        of an epoch, where we draw every micro-batch at random with replacement; and R's bf16
        autocast on GPU (train.py:179-183, 312-316).

        Args:
            overrides: fields to set otherwise (e.g. ``n_steps`` for a shorter run).

        Returns:
            A validated ``StepSAETrainConfig``.

        Used by notebook 08 (``step_modes`` with ``"reference"``) and
        profiles/step-sae-qwen2.5-0.5b.yaml.
        """
        values = dict(
            n_steps=30,  # train.yaml:18 (MAX_ITERS, epochs in R)
            batch_size=16,  # train.yaml:20 (BATCH_SIZE, per micro-batch)
            grad_accum_steps=8,  # train.yaml:32; gradients summed (train.py:558)
            lr=1e-6, lm_lr=None,  # train.yaml:23; one rate for all (train.py:351-353)
            lr_schedule="cosine",  # train.yaml:26 (DECAY_LR), train.py:451-459
            warmup_steps=2,  # train.yaml:21 (WARMUP_ITERS)
            min_lr=1e-7,  # train.yaml:24
            lr_decay_steps=30,  # train.yaml:25 (LR_DECAY_ITERS)
            weight_decay=0.01,  # train.yaml:30
            beta1=0.9, beta2=0.95,  # train.yaml:28-29
            grad_clip=1.0,  # train.yaml:31
        )
        return cls(**values | overrides)

    def lr_factor(self, step: int) -> float:
        """The learning rate at optimiser step ``step`` (0-based) as a fraction of ``lr``."""
        unit = step // self.schedule_unit_steps
        if self.lr_schedule == "constant":
            return min(1.0, (unit + 1) / max(1, self.warmup_steps))
        if self.lr == 0:
            return 0.0
        decay = (-(-self.n_steps // self.schedule_unit_steps) if self.lr_decay_steps is None
                 else self.lr_decay_steps)
        if unit < self.warmup_steps:
            rate = self.lr * (unit + 1) / (self.warmup_steps + 1)
        elif unit > decay:
            rate = self.min_lr
        else:
            ratio = (unit - self.warmup_steps) / max(1, decay - self.warmup_steps)
            rate = self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)
        return rate / self.lr


class AdaptiveL1Weight:
    """R's adaptive weight of the L1 penalty (``DWAController``, train.py:415-448).

    The weight starts at ``cfg.l1_coefficient``. After every micro-batch, ``update`` adds that
    micro-batch's mean L1; every ``cfg.l1_update_every`` micro-batches, the weight is multiplied by
    ``l1_increase_factor`` if their mean L1 is above ``l1_target`` (strictly), else by
    ``l1_decrease_factor``, then clamped to ``[l1_min_coefficient, l1_max_coefficient]``, and the
    sum restarts. R reads the weight before each micro-batch's forward and updates after its
    backward (train.py:543, 567), so micro-batches 0-99 use the start weight and 100-199 the first
    update. The count runs across epochs and is never reset.
    """

    def __init__(self, cfg: StepSAEConfig):
        self.cfg = cfg
        self.weight = cfg.l1_coefficient
        self.total, self.count = 0.0, 0

    def update(self, batch_mean_l1: float) -> float:
        """Add one micro-batch's mean L1; return the weight for the next micro-batch."""
        self.total += batch_mean_l1
        self.count += 1
        if self.count < self.cfg.l1_update_every:
            return self.weight
        above = self.total / self.count > self.cfg.l1_target
        self.weight *= self.cfg.l1_increase_factor if above else self.cfg.l1_decrease_factor
        self.weight = max(self.cfg.l1_min_coefficient,
                          min(self.cfg.l1_max_coefficient, self.weight))
        self.total, self.count = 0.0, 0
        return self.weight

    def state_dict(self) -> dict:
        return {"weight": self.weight, "total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.weight, self.total, self.count = state["weight"], state["total"], state["count"]


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
    found = _checkpoints(checkpoint_dir)
    return found[-1] if found else None


def _checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """The checkpoints under ``checkpoint_dir``, by step count."""
    return sorted((p for p in Path(checkpoint_dir).iterdir() if CHECKPOINT_RE.match(p.name)),
                  key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def prune_checkpoints(checkpoint_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete all but the ``keep`` latest checkpoints under ``checkpoint_dir`` (None: none);
    return the deleted paths."""
    found = _checkpoints(checkpoint_dir)
    old = [] if keep is None else found[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old


def examples_fingerprint(examples: StepExamples) -> str:
    """A hash of the training examples' token ids (a checkpoint resumes only on the same data)."""
    digest = hashlib.sha1()
    for context, step in zip(examples.context_ids, examples.step_ids):
        digest.update(json.dumps([context, step]).encode())
    return digest.hexdigest()


def save_checkpoint(checkpoint_dir: str | Path, step: int, model: StepSAE, optimizer, schedule,
                    generator: torch.Generator, history: list[dict], cfg: StepSAETrainConfig,
                    data_fingerprint: str = "", noise_generator: torch.Generator | None = None,
                    l1_weight: AdaptiveL1Weight | None = None) -> Path:
    """Write ``step_<step>/`` atomically: weights, optimizer/schedule/sampler/noise state,
    the adaptive L1 weight's state and the history."""
    path = Path(checkpoint_dir) / f"step_{step:06d}"
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        extra = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "generator": generator.get_state()}
        if noise_generator is not None:
            extra["noise_generator"] = noise_generator.get_state()
        torch.save(extra, tmp / "optimizer.pt")
        state = {"step": step, "history": history, "train_config": cfg.to_dict(),
                 "step_sae_config": model.cfg.to_dict(), "data": data_fingerprint}
        if l1_weight is not None:
            state["l1_weight"] = l1_weight.state_dict()
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
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
                    cfg: StepSAETrainConfig, data_fingerprint: str = "",
                    noise_generator: torch.Generator | None = None,
                    l1_weight: AdaptiveL1Weight | None = None) -> tuple[int, list[dict]]:
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
    if noise_generator is not None and "noise_generator" in extra:
        noise_generator.set_state(extra["noise_generator"])
    if l1_weight is not None and "l1_weight" in state:
        l1_weight.load_state_dict(state["l1_weight"])
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
        One row per optimiser step: step, loss, recon_loss, l1, l0, token_accuracy (means over
        all ranks and micro-batches; loss is the mean micro-batch loss), and with the adaptive
        penalty l1_coefficient (the mean weight its micro-batches used).

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
                                  weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    generator = torch.Generator().manual_seed(cfg.seed)
    noise_generator = torch.Generator().manual_seed(cfg.seed + 2)  # token masks, latent noise
    adaptive = model.cfg.l1_penalty == "adaptive"
    l1_weight = AdaptiveL1Weight(model.cfg) if adaptive else None
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
                                         fingerprint, noise_generator, l1_weight)
        log.info("resuming from %s at step %d", checkpoint, start)
    if start == 0:  # every rank computes the same mean from the same examples
        model.init_pre_bias(_batch(model, examples, torch.arange(min(len(examples), 256))))
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    model.train()
    names = ("step", "loss", "recon_loss", "l1", "l0", "token_accuracy")
    bar = tqdm(range(start, cfg.n_steps), desc="step SAE", mininterval=2.0,
               disable=not progress or rank != 0)
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        metrics = torch.zeros(5)
        weights_used = []
        for _ in range(cfg.grad_accum_steps):
            idx = torch.randint(len(examples), (cfg.batch_size,), generator=generator)
            out = net(_batch(model, examples, idx[rank::world]), generator=noise_generator)
            if adaptive:  # R reads the weight before the forward, updates after the backward
                weights_used.append(l1_weight.weight)
                loss = out.loss(model.cfg, l1_weight=l1_weight.weight)
            else:
                loss = out.loss(model.cfg, min(1.0, (step + 1) / max(1, cfg.l1_warmup_steps)))
            loss.backward()  # summed over micro-batches (R)
            micro = torch.stack([loss.detach(), out.recon_loss.detach().mean(),
                                 out.l1.detach().mean(), (out.latents > 0).float().sum(-1).mean(),
                                 out.token_accuracy.detach().mean()])
            if world > 1:  # the adaptive weight follows the global L1 (R: each rank its own)
                dist.all_reduce(micro)
                micro /= world
            micro = micro.cpu()
            if adaptive:
                l1_weight.update(micro[2].item())
            metrics += micro / cfg.grad_accum_steps
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        row = dict(zip(names, [step + 1, *metrics.tolist()]))
        if adaptive:
            row["l1_coefficient"] = sum(weights_used) / len(weights_used)
        history.append(row)
        bar.set_postfix(recon=f"{metrics[1].item():.3f}", l1=f"{metrics[2].item():.2f}")
        is_due = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
        if checkpoint_dir is not None and (is_due or step + 1 == cfg.n_steps):
            if rank == 0:
                save_checkpoint(checkpoint_dir, step + 1, model, optimizer, schedule, generator,
                                history, cfg, fingerprint, noise_generator, l1_weight)
                prune_checkpoints(checkpoint_dir, cfg.keep_checkpoints)
            if world > 1:
                dist.barrier()
    model.eval()
    return pd.DataFrame(history)


def reference_gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor,
                           target: torch.Tensor) -> torch.Tensor:
    """R's phase-2 loss (model_qwen.py:95-97): the mean over all elements of
    ``(target - mean)^2 / (2 var) + log(2 pi var) / 2`` with ``var = exp(log_var)``, unclamped."""
    var = log_var.exp()
    return ((target - mean) ** 2 / (2 * var) + 0.5 * torch.log(2 * math.pi * var)).mean()


def train_context_head(model: StepSAE, examples: StepExamples, cfg: StepSAETrainConfig,
                       progress: bool = True) -> pd.DataFrame:
    """Phase 2: fit the context head to the frozen SAE's latents (Gaussian NLL).

    Ours (``context_head="ours"``): the head reads the frozen encoder's state at ``<sep>``, loss
    ``F.gaussian_nll_loss``. Reference: the head and the context encoder train together
    (model_qwen.py:48-52) under ``reference_gaussian_nll``. The target is the L2-normalised
    latent without noise in both (model_qwen.py:86-89). AdamW at ``head_lr`` with betas
    ``(beta1, beta2)`` and torch's default weight decay (0.01, R's too), ``head_n_steps``
    batches of ``batch_size``, no schedule.

    Returns:
        One row per step: step, nll, mse (of the predicted mean).
    """
    if len(examples) == 0:
        raise ValueError("examples is empty: no steps to train the context head on.")
    params = model.phase_parameters(2)
    optimizer = torch.optim.AdamW(params, lr=cfg.head_lr, betas=(cfg.beta1, cfg.beta2))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    history = []
    model.eval()
    reference = model.context_encoder is not None
    for step in tqdm(range(cfg.head_n_steps), desc="context head", mininterval=2.0,
                     disable=not progress):
        batch = _batch(model, examples,
                       torch.randint(len(examples), (cfg.batch_size,), generator=generator))
        with torch.no_grad():
            hidden = model.hidden_states(batch)
            rows = torch.arange(len(hidden))
            target = model.sparse_latent(hidden[rows, batch.last_pos])
        if reference:
            mean, log_var = model.context_distribution(batch)
            nll = reference_gaussian_nll(mean, log_var, target)
        else:
            mean, log_var = model.context_head(hidden[rows, batch.sep_pos])
            nll = F.gaussian_nll_loss(mean, target, log_var.exp(), full=True)
        optimizer.zero_grad(set_to_none=True)
        nll.backward()
        optimizer.step()
        history.append({"step": step + 1, "nll": nll.item(),
                        "mse": F.mse_loss(mean.detach(), target).item()})
    model.phase_parameters(1)
    return pd.DataFrame(history)
