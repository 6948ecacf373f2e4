"""Training the toy causal LMs on packed contexts (notebook 02)."""

from __future__ import annotations

import dataclasses
import logging
import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from reasonlens.config import Config, check_range

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LMTrainConfig(Config):
    """Next-token training of a toy LM.

    Args:
        n_steps: optimiser steps.
        batch_size: contexts per step.
        lr: peak learning rate (linear warm-up, cosine decay to 10%).
        warmup_steps: warm-up length.
        weight_decay: AdamW weight decay.
        eval_every: steps between validation-loss evaluations.
        n_eval_contexts: validation contexts per evaluation.
        seed: batch order and initialisation.
        n_threads: torch CPU threads (None leaves torch's default).
        keep_best: restore the weights of the evaluation with the lowest validation loss (early
            stopping without stopping: the base model, with little data, overfits).
        autocast_dtype: run forward passes under ``torch.autocast`` in this dtype (``"bfloat16"``);
            weights, gradients and AdamW stay float32. Fine-tuning SmolLM2-135M on 2 CPU cores
            (``benchmarks/bench_finetune.py``, idle): 334 tokens/s under bfloat16 autocast
            against 195 in float32; None: float32 throughout (the toy's default).
    """

    n_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    eval_every: int = 100
    n_eval_contexts: int = 64
    seed: int = 0
    n_threads: int | None = None
    keep_best: bool = True
    autocast_dtype: str | None = None

    def __post_init__(self):
        if self.autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast_dtype={self.autocast_dtype!r}; use None, 'bfloat16' or "
                             "'float16'.")
        check_range("n_steps", self.n_steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0)


def train_lm(model: torch.nn.Module, train_tokens: torch.Tensor, val_tokens: torch.Tensor,
             cfg: LMTrainConfig, desc: str = "train") -> pd.DataFrame:
    """Train an HF causal LM in place on ``[n_contexts, context_size]`` token rows.

    Args:
        model: a transformers causal LM (its ``forward`` takes ``input_ids`` and ``labels``).
        train_tokens: training contexts ``[n_train, pos]``.
        val_tokens: validation contexts ``[n_val, pos]``.
        cfg: schedule and batch settings.
        desc: progress-bar label.

    Returns:
        The loss history: one row per step with ``step``, ``train_loss`` and ``val_loss`` (NaN
        between evaluations). With ``cfg.keep_best`` the model ends with the weights of the
        lowest ``val_loss``.

    Raises:
        ValueError: empty token sets.
    """
    for name, tokens in (("train_tokens", train_tokens), ("val_tokens", val_tokens)):
        if tokens.ndim != 2 or len(tokens) == 0:
            raise ValueError(f"{name} must be a non-empty [n_contexts, context_size] tensor; got "
                             f"shape {tuple(tokens.shape)}. Did notebook 01 write contexts?")
    if cfg.n_threads:
        torch.set_num_threads(cfg.n_threads)
    generator = torch.Generator().manual_seed(cfg.seed)
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, cfg))
    history, best_loss, best_state = [], math.inf, None
    model.train()
    bar = tqdm(range(cfg.n_steps), desc=desc, mininterval=2.0)
    for step in bar:
        idx = torch.randint(len(train_tokens), (cfg.batch_size,), generator=generator)
        batch = train_tokens[idx]
        with _autocast(model, cfg.autocast_dtype):
            loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        row = {"step": step + 1, "train_loss": loss.item(), "val_loss": math.nan}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.n_steps:
            with _autocast(model, cfg.autocast_dtype):
                row["val_loss"] = evaluate_loss(model, val_tokens[: cfg.n_eval_contexts],
                                                cfg.batch_size)
            if cfg.keep_best and row["val_loss"] < best_loss:
                best_loss = row["val_loss"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.train()
            bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}")
        history.append(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return pd.DataFrame(history)


def evaluate_loss(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token loss of ``model`` over token rows ``[n, pos]``."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():  # a block, not a decorator: mutmut skips decorated functions
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start: start + batch_size]
            n_predicted = batch.numel() - len(batch)
            total += model(input_ids=batch, labels=batch).loss.item() * n_predicted
            count += n_predicted
    return total / count


def _autocast(model: torch.nn.Module, dtype: str | None):
    """``torch.autocast`` on the model's device type in ``dtype``; a no-op for None."""
    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type, dtype=getattr(torch, dtype or "float32"),
                          enabled=dtype is not None)


def _lr_factor(step: int, cfg: LMTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.n_steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
