"""Sparse autoencoders on one residual-stream hook point: training, saving, evaluation (notebook 03).

Training goes through SAELens (``LanguageModelSAETrainingRunner``) with the HookedTransformer and
our packed contexts injected (``override_model``, ``override_dataset``), W&B off. Checkpoints are
SAELens's own (SAE weights, optimizer, lr and coefficient schedulers, dead-feature and sparsity
counters, the normalisation scaling factor, the dataset position) plus what SAELens leaves out:
the activations waiting in the shuffling buffer and the state of the RNG that shuffles them.
They are taken only between steps (a SIGINT/SIGTERM stops training when the step ends), so an
interrupted run resumed from the latest complete one ends with the same weights as an
uninterrupted run, to float rounding. SAELens only logs training metrics to W&B,
so ``train_sae`` records them itself, every ``log_every`` steps, with SAELens's own
``SAETrainer.build_train_step_log_dict``, and keeps them in each checkpoint so a resumed run keeps
its history.

The paper's SAE (Galichin et al., 2025, Sec. 3.1): DeepSeek-R1-Distill-Llama-8B, layer 19
``hook_resid_post``, expansion 16 (d_sae = 65,536), L1 coefficient 5, context 1024, 819.2M tokens,
lr 5e-5, trained with SAELens on OpenThoughts + LMSYS-Chat, BOS/EOS/PAD excluded.

Example:
    >>> cfg = SAETrainConfig(hook_name="blocks.2.hook_resid_post", context_size=256,
    ...                      training_tokens=1_000_000, lr=1e-3)  # doctest: +SKIP
    >>> sae, history = train_sae(model, contexts_frame, cfg, checkpoint_dir)  # doctest: +SKIP
    >>> evaluate_sae(model, sae, val_tokens).metrics()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from reasonlens.artifacts import atomic_path
from reasonlens.config import Config, check_range
from reasonlens.models import (check_sae_fits, device_of, parse_hook_name, sae_on_model_device,
                               special_token_ids)

log = logging.getLogger(__name__)

ARCHITECTURES = ("standard", "topk", "jumprelu")
NORMALIZATIONS = ("none", "expected_average_only_in")
TRAIN_CONFIG_FILENAME = "reasonlens_train_config.json"  # beside the checkpoints: what made them
HISTORY_FILENAME = "history.parquet"  # in each checkpoint: the training curve so far
# Written last, atomically, into each checkpoint: a checkpoint without it was cut short (the process
# died while saving it) and is never resumed from.
CHECKPOINT_COMPLETE = "reasonlens_checkpoint_complete.json"
_CHECKPOINT_FILES = ("sae_weights.safetensors", "cfg.json", "trainer_state.pt",
                     "activations_store_state.safetensors", HISTORY_FILENAME, CHECKPOINT_COMPLETE)
CHECKPOINT_FORMAT = 2  # 2: checkpoints hold the shuffling buffer; older ones start over


@dataclasses.dataclass(frozen=True)
class SAETrainConfig(Config):
    """How to train one SAE with SAELens.

    Defaults are the paper's where it states a value (Galichin et al., 2025, Sec. 3.1: hook point,
    expansion, L1 coefficient, tokens, lr, context size, special tokens excluded) and SAELens's
    elsewhere (batch size, norm-estimate batches, dead-feature window, ``apply_b_dec_to_input``),
    with no warm-up, no decay and no input normalisation. The authors' training config
    (``training/configs/r1-distill-llama-8b.yaml`` of AIRI-Institute/SAE-Reasoning) differs from
    these defaults in ``normalize_activations``, ``l1_warm_up_steps``, ``lr_decay_steps``,
    ``apply_b_dec_to_input``, ``store_batch_size_prompts``, ``n_checkpoints`` and ``seed``:
    ``SAETrainConfig.reference()`` returns the reference code's settings.

    Args:
        hook_name: TransformerLens hook point (paper: ``blocks.19.hook_resid_post``).
        architecture: ``"standard"`` (ReLU + L1, the paper's), ``"topk"`` or ``"jumprelu"``,
            mapped to SAELens's ``StandardTrainingSAEConfig``, ``TopKTrainingSAEConfig`` and
            ``JumpReLUTrainingSAEConfig``.
        expansion_factor: d_sae = expansion_factor * d_in (paper: 16).
        l1_coefficient: sparsity penalty: L1 (decoder-norm weighted) for ``standard``, the L0
            coefficient for ``jumprelu``; unused by ``topk`` (paper: 5).
        l1_warm_up_steps: steps over which the sparsity coefficient ramps up from 0.
        k: active features per token for ``topk``.
        training_tokens: activations to train on (paper: 819.2M = 800 x 1024^2).
        lr: Adam learning rate (paper: 5e-5).
        lr_warm_up_steps: linear warm-up steps.
        lr_decay_steps: linear decay to 0 over the last steps.
        batch_size: activations (tokens) per training step (SAELens's ``train_batch_size_tokens``).
        context_size: tokens per context (paper: 1024); wider contexts are cut to it.
        store_batch_size_prompts: contexts per model forward pass when collecting activations.
        normalize_activations: ``"none"`` or ``"expected_average_only_in"`` (scale inputs to
            norm sqrt(d_in) while training; folded into the weights at the end).
        n_batches_for_norm_estimate: batches whose mean norm sets that scale (SAELens default).
        apply_b_dec_to_input: subtract the decoder bias from the input before encoding
            (SAELens default True; the reference trains with False: ReLU(x W_enc + b_enc)).
        exclude_special_tokens: drop BOS/EOS/PAD activations from training (as the paper does).
        n_checkpoints: intermediate checkpoints (0: none; an interruption still writes one).
        dead_feature_window: steps without firing after which SAELens counts a feature dead.
        log_every: record training metrics every this many steps.
        seed: seeds the SAE initialisation and activation shuffling.
        device: where the SAE (and its activation buffer) lives.
        dtype: the SAE's dtype (``"float32"``, ``"bfloat16"``, ...).
    """

    hook_name: str = "blocks.19.hook_resid_post"  # paper: layer 19 of R1-Distill-Llama-8B
    architecture: str = "standard"  # paper: ReLU SAE with an L1 penalty
    expansion_factor: int = 16  # paper: 16 (d_sae 65,536 on d_model 4096)
    l1_coefficient: float = 5.0  # paper: 5
    l1_warm_up_steps: int = 0
    k: int = 64
    training_tokens: int = 819_200_000  # paper: 819.2M
    lr: float = 5e-5  # paper: 5e-5
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    batch_size: int = 4096  # SAELens default
    context_size: int = 1024  # paper: 1024
    store_batch_size_prompts: int = 16
    normalize_activations: str = "none"
    n_batches_for_norm_estimate: int = 1000  # SAELens default
    apply_b_dec_to_input: bool = True  # SAELens default (reference: False)
    exclude_special_tokens: bool = True  # paper: BOS/EOS/PAD ignored
    n_checkpoints: int = 0
    dead_feature_window: int = 1000  # SAELens default
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r} is unknown; use one of "
                             f"{ARCHITECTURES}.")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations={self.normalize_activations!r} is unknown; "
                             f"use one of {NORMALIZATIONS}.")
        check_range("expansion_factor", self.expansion_factor, 1)
        check_range("l1_coefficient", self.l1_coefficient, 0)
        check_range("k", self.k, 1)
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be positive, e.g. 5e-5.")
        check_range("batch_size", self.batch_size, 1)
        check_range("context_size", self.context_size, 1)
        check_range("store_batch_size_prompts", self.store_batch_size_prompts, 1)
        check_range("n_batches_for_norm_estimate", self.n_batches_for_norm_estimate, 1)
        check_range("training_tokens", self.training_tokens, self.batch_size,
                    hint="Train on at least one batch (batch_size tokens).")
        check_range("n_checkpoints", self.n_checkpoints, 0)
        check_range("log_every", self.log_every, 1)
        for name in ("l1_warm_up_steps", "lr_warm_up_steps", "lr_decay_steps",
                     "dead_feature_window"):
            check_range(name, getattr(self, name), 0)
        if self.lr_warm_up_steps + self.lr_decay_steps > self.n_steps:
            raise ValueError(f"lr_warm_up_steps + lr_decay_steps = "
                             f"{self.lr_warm_up_steps + self.lr_decay_steps} exceeds the "
                             f"{self.n_steps} training steps (training_tokens // batch_size).")

    @classmethod
    def reference(cls, **overrides) -> SAETrainConfig:
        """The authors' SAE training settings, from the reference code's config.

        Every value of ``training/configs/r1-distill-llama-8b.yaml`` (AIRI-Institute/SAE-Reasoning)
        that has a field here; the rest are this class's defaults. Their ``n_batches_in_buffer``
        (32) has no field: ``train_sae`` sizes the buffer itself.

        Args:
            overrides: fields to set otherwise (e.g. ``training_tokens`` for a shorter run).

        Returns:
            A validated ``SAETrainConfig``.

        Raises:
            ValueError: an override out of range (see ``__post_init__``).

        Used by profiles/r1-distill-llama-8b.yaml (its values) and the tests.
        """
        values = dict(
            architecture="standard",  # yaml:14
            hook_name="blocks.19.hook_resid_post",  # yaml:15
            expansion_factor=16,  # yaml:18
            apply_b_dec_to_input=False,  # yaml:21
            normalize_activations="expected_average_only_in",  # yaml:26
            training_tokens=819_200_000,  # yaml:29
            batch_size=4096,  # yaml:30 (train_batch_size_tokens)
            lr=5e-5,  # yaml:31
            lr_warm_up_steps=0,  # yaml:35
            lr_decay_steps=40_000,  # yaml:36 (20% of the 200k steps)
            l1_coefficient=5.0,  # yaml:37
            l1_warm_up_steps=10_000,  # yaml:38 (5% of the 200k steps)
            context_size=1024,  # yaml:40
            store_batch_size_prompts=8,  # yaml:44
            dead_feature_window=1000,  # yaml:49
            device="cuda",  # yaml:60
            seed=42,  # yaml:61
            n_checkpoints=5,  # yaml:62
            dtype="float32",  # yaml:64
            exclude_special_tokens=True,  # yaml:65 (BOS/EOS ids of the Llama tokenizer)
        )
        return cls(**{**values, **overrides})

    @property
    def n_steps(self) -> int:
        """Training steps: ``training_tokens // batch_size``."""
        return self.training_tokens // self.batch_size


# --- inputs and checks --------------------------------------------------------------------------
def _hooked_transformer(model):
    """The HookedTransformer behind a ``TLHookedModel`` (or the model itself)."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "run_with_cache") or not hasattr(inner, "cfg"):
        raise TypeError(f"model must be a TransformerLens HookedTransformer or a "
                        f"reasonlens TLHookedModel, got {type(model).__name__}. Load it with "
                        "models.load_hooked(path, 'transformer_lens').")
    return inner


def _tokens_tensor(tokens) -> torch.Tensor:
    """``[n_contexts, pos]`` long tensor from a tensor, a ``tokens`` DataFrame or a Dataset."""
    if isinstance(tokens, pd.DataFrame):
        if "tokens" not in tokens.columns:
            raise ValueError(f"tokens: the table has no 'tokens' column (columns "
                             f"{list(tokens.columns)}); pass contexts/<split>.parquet of notebook 01.")
        tokens = (np.stack(tokens["tokens"].to_numpy()) if len(tokens)
                  else np.zeros((0, 0), dtype=np.int64))
    elif not isinstance(tokens, torch.Tensor | np.ndarray):  # a datasets.Dataset
        tokens = np.asarray(tokens["tokens"]) if len(tokens) else np.zeros((0, 0), np.int64)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens is empty or not [n_contexts, pos] (shape {tuple(tokens.shape)}). "
                         "Pass a non-empty contexts table from notebook 01.")
    return tokens


def check_sae_matches_model(model, sae, hook_name: str | None = None) -> str:
    """Check that ``sae`` can read ``model`` at its hook point; return the hook name.

    Raises:
        ValueError: a hook point the model lacks, or ``sae.cfg.d_in`` != the model's d_model.
    """
    ht = _hooked_transformer(model)
    return check_sae_fits(sae, ht.cfg.n_layers, ht.cfg.d_model, hook_name)


# --- training -----------------------------------------------------------------------------------
def _training_sae_config(cfg: SAETrainConfig, d_in: int):
    from sae_lens import (JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)

    common = dict(d_in=d_in, d_sae=cfg.expansion_factor * d_in, dtype=cfg.dtype,
                  device=cfg.device, normalize_activations=cfg.normalize_activations,
                  apply_b_dec_to_input=cfg.apply_b_dec_to_input)
    if cfg.architecture == "standard":
        return StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient,
                                         l1_warm_up_steps=cfg.l1_warm_up_steps, **common)
    if cfg.architecture == "topk":
        return TopKTrainingSAEConfig(k=cfg.k, **common)
    return JumpReLUTrainingSAEConfig(l0_coefficient=cfg.l1_coefficient,
                                     l0_warm_up_steps=cfg.l1_warm_up_steps, **common)


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The complete checkpoint with the most training tokens under ``checkpoint_dir``.

    Complete means saved to the end: its ``CHECKPOINT_COMPLETE`` marker, written last, is there.
    """
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = []
    for path in Path(checkpoint_dir).iterdir():
        digits = path.name.removeprefix("final_")
        if path.is_dir() and digits.isdigit() and all((path / f).exists() for f in _CHECKPOINT_FILES):
            found.append((int(digits), path))
    return max(found)[1] if found else None


def _store_class():
    from safetensors.torch import load_file
    from sae_lens.training.activations_store import ActivationsStore

    class ResumableActivationsStore(ActivationsStore):
        """SAELens's activation store, with a shuffling buffer that its checkpoint holds.

        SAELens's store checkpoints only its position in the dataset. The activations waiting in
        its mixing buffer are lost, and the global torch RNG that shuffles them is not restored,
        so a resumed run trains on other batches than an uninterrupted one. This store shuffles
        exactly as SAELens's ``mixing_buffer`` does (a buffer of ``n_batches_in_buffer``
        contexts; once full, permuted with the global CPU RNG, and all but
        ``activations_mixing_fraction`` of it served in batches), so an uninterrupted run sees
        the same batches, and it saves the buffer and the RNG state beside the position. The
        buffer holds at most ``n_batches_in_buffer + store_batch_size_prompts`` contexts of
        activations (about 0.6 GB at the paper's scale, beside 6 GB of Adam state).
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            empty = torch.zeros(0, self.d_in, device=self.device)
            self.pool, self.ready = empty, empty  # waiting to be shuffled; shuffled, to serve

        def __next__(self) -> torch.Tensor:
            while len(self.ready) < self.train_batch_size_tokens:
                self._refill()
            batch = self.ready[:self.train_batch_size_tokens]
            self.ready = self.ready[self.train_batch_size_tokens:]
            return batch

        def _refill(self) -> None:
            try:
                acts = self.get_filtered_llm_batch(raise_on_epoch_end=True)
            except StopIteration:  # the contexts are used up: start them again
                acts = self.get_filtered_llm_batch()
            self.pool = torch.cat([self.pool, acts])
            buffer_size = self.n_batches_in_buffer * self.training_context_size
            if len(self.pool) < buffer_size:
                return
            order = torch.randperm(len(self.pool))  # global CPU RNG, as in SAELens
            shuffled = self.pool[order.to(self.pool.device)]
            n_kept = int(buffer_size * self.activations_mixing_fraction)
            n_served = max(1, (len(shuffled) - n_kept) // self.train_batch_size_tokens)
            n_served *= self.train_batch_size_tokens
            self.ready, self.pool = shuffled[:n_served], shuffled[n_served:]

        def state_dict(self) -> dict[str, torch.Tensor]:
            return {**super().state_dict(), "pool": self.pool.contiguous().cpu(),
                    "ready": self.ready.contiguous().cpu(),
                    "torch_rng_state": torch.get_rng_state()}

        def load(self, file_path: str) -> None:
            super().load(file_path)  # fast-forwards the dataset to the saved position
            state = load_file(file_path)
            self.pool, self.ready = (state[key].to(self.device) for key in ("pool", "ready"))
            torch.set_rng_state(state["torch_rng_state"])

    return ResumableActivationsStore


def _runner_class():
    from sae_lens import LanguageModelSAETrainingRunner

    class RecordingRunner(LanguageModelSAETrainingRunner):
        """SAELens's runner, plus: metrics recorded without W&B, exact resumption.

        Checkpoints are written only after ``fit()`` has counted a step (SAELens writes its
        periodic ones before, and its interrupt one wherever the signal lands), and hold the
        shuffling buffer of ``ResumableActivationsStore``, so a resumed run continues as if it
        had never stopped.
        """

        history: list[dict[str, Any]]
        log_every: int = 10
        on_step: Callable[[int], None] | None = None
        unfold_init: bool = False  # the SAE holds init_sae's weights, in raw activation units

        def __init__(self, cfg, override_dataset, override_model, override_sae=None):
            super().__init__(cfg, override_dataset=override_dataset, override_model=override_model,
                             override_sae=override_sae)
            # Replace SAELens's store by one whose checkpoint holds its shuffling buffer.
            store = _store_class().from_config(self.model, cfg, override_dataset=override_dataset)
            self.activations_store = self.evaluator.activations_store = store

        def run_trainer_with_interruption_handling(self, trainer):
            if self.unfold_init:
                _unfold_for_normalised_training(trainer)
            stop = _StopRequest()
            self._install_recorder(trainer, stop)
            with _interrupt_signals(stop):
                try:
                    return trainer.fit()
                except KeyboardInterrupt:
                    if self.cfg.checkpoint_path is not None and not stop.is_checkpointed:
                        log.warning("interrupted before the first step ended, or by a second "
                                    "signal; no checkpoint written, a rerun resumes from the "
                                    "latest one")
                    raise

        def save_checkpoint(self, checkpoint_path):
            super().save_checkpoint(checkpoint_path)
            if checkpoint_path is not None:
                pd.DataFrame(self.history).to_parquet(Path(checkpoint_path) / HISTORY_FILENAME)
                with atomic_path(Path(checkpoint_path) / CHECKPOINT_COMPLETE) as marker:
                    marker.write_text(json.dumps({"format": CHECKPOINT_FORMAT}))
                # Keep only the newest checkpoint (a real-model one holds GBs of Adam state).
                for old in Path(checkpoint_path).parent.iterdir():
                    if old.is_dir() and old != Path(checkpoint_path):
                        shutil.rmtree(old, ignore_errors=True)

        def _install_recorder(self, trainer, stop: _StopRequest):
            step, update_pbar = trainer.step, trainer._update_pbar
            checkpoint_if_needed = trainer._checkpoint_if_needed
            total_steps = trainer.cfg.total_training_steps

            def recording_step(batch):
                output = step(batch)
                n_step = trainer.n_training_steps + 1  # the step that just finished
                if n_step % self.log_every == 0 or n_step in (1, total_steps):
                    metrics = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
                    self.history.append({"step": n_step, **{
                        key.split("/", 1)[-1]: float(value) for key, value in metrics.items()
                        if isinstance(value, int | float)}})
                return output

            def after_step(step_output, pbar, *args, **kwargs):
                # fit() has counted the step now: a checkpoint here records a consistent state.
                update_pbar(step_output, pbar, *args, **kwargs)
                checkpoint_if_needed()
                try:
                    if self.on_step is not None:
                        self.on_step(trainer.n_training_steps)
                    stop.raise_if_requested()
                except KeyboardInterrupt:
                    if self.cfg.checkpoint_path is not None:
                        log.warning("interrupted after step %d; saving a checkpoint",
                                    trainer.n_training_steps)
                        trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
                        stop.is_checkpointed = True
                    raise

            trainer.step, trainer._update_pbar = recording_step, after_step
            trainer._checkpoint_if_needed = lambda: None  # run by after_step instead

    return RecordingRunner


def _unfold_for_normalised_training(trainer) -> None:
    """Put an initial SAE's raw-unit weights into the units normalised training reads.

    A saved SAE has its normalisation folded in (it reads raw activations). Trained again with
    ``expected_average_only_in``, it would read activations scaled by a factor s, so s is
    estimated here as SAELens's ``fit()`` would (same batches) and unfolded from the weights
    (``fold_activation_norm_scaling_factor(1 / s)``): the SAE computes the same features as before,
    and ``fit()`` folds s back in at the end. Nothing to do without normalisation.
    """
    normalize = trainer.sae.cfg.normalize_activations
    if normalize != "expected_average_only_in":
        return
    trainer.activation_scaler.estimate_scaling_factor(
        d_in=trainer.sae.cfg.d_in, data_provider=trainer.data_provider,
        n_batches_for_norm_estimate=trainer.cfg.n_batches_for_norm_estimate)
    trainer.sae.fold_activation_norm_scaling_factor(1 / trainer.activation_scaler.scaling_factor)
    trainer.sae.cfg.normalize_activations = normalize  # folding marks it "none"


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal stops training when the current step ends.

    A checkpoint written in the middle of a step (or of refilling the activation buffer) could
    not resume exactly, so the first signal only sets a flag that ``raise_if_requested`` turns
    into ``KeyboardInterrupt`` at the step's end; a second signal interrupts at once.
    """

    def __init__(self):
        self.is_requested = False
        self.is_checkpointed = False

    def __call__(self, signum, frame) -> None:
        if self.is_requested:
            raise KeyboardInterrupt
        self.is_requested = True
        log.warning("signal %d: stopping when this training step ends (send it again to stop "
                    "at once, without a checkpoint)", signum)

    def raise_if_requested(self) -> None:
        if self.is_requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupt_signals(handler) -> Iterator[None]:
    """SIGINT/SIGTERM go to ``handler`` inside; restored on exit."""
    # Thin: the logic is in plain functions, which mutmut mutates (it skips decorated ones).
    previous: dict = {}
    try:
        previous = _install_signal_handler(handler)
        yield
    finally:
        _restore_signal_handlers(previous)


def _install_signal_handler(handler) -> dict:
    """Send SIGINT/SIGTERM to ``handler``; return the handlers it replaced (none off the main
    thread, where Python cannot set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    """Put back the handlers ``_install_signal_handler`` replaced."""
    for sig, old in previous.items():
        signal.signal(sig, old)


def train_sae(model, tokens, cfg: SAETrainConfig, checkpoint_dir: str | Path | None = None,
              resume: bool = True, on_step: Callable[[int], None] | None = None, init_sae=None):
    """Train an SAE on ``model``'s activations at ``cfg.hook_name`` over ``tokens``, with SAELens.

    Checkpoints (``cfg.n_checkpoints`` during training, one whenever training is interrupted by
    SIGINT/SIGTERM or by ``KeyboardInterrupt`` from ``on_step``, and a final one) go to
    ``checkpoint_dir/<n_tokens>/``; only the newest is kept. A signal stops training when the
    current step ends (a second one at once, without a checkpoint). With ``resume``, a run whose
    config, contexts and model match the ones that wrote ``checkpoint_dir`` continues from its
    checkpoint (weights, Adam and scheduler state, step count, scaling factor, dataset position,
    shuffling buffer and its RNG state), and ends with the weights and history of an
    uninterrupted run, to float rounding; or it just loads the result if training had finished.
    Anything else, or ``resume=False``, clears ``checkpoint_dir`` and starts over.

    Args:
        model: a ``TLHookedModel`` or ``HookedTransformer`` (with its tokenizer attached).
        tokens: contexts: a ``[n_contexts, pos]`` tensor, a DataFrame with a ``tokens`` column
            (``contexts/<split>.parquet``) or a ``datasets.Dataset`` with a ``tokens`` column.
            Read in order and repeated as needed to reach ``cfg.training_tokens``.
        cfg: the training configuration.
        checkpoint_dir: where checkpoints go (None: no checkpoints, no resuming).
        resume: continue from the latest matching checkpoint in ``checkpoint_dir``.
        on_step: called with the number of finished steps after every step (e.g. to stop early
            by raising ``KeyboardInterrupt``, which writes a checkpoint first).
        init_sae: an ``sae_lens.SAE`` of ``cfg``'s architecture and width to start from instead
            of SAELens's initialisation (fine-tuning an SAE, as in stage-wise model diffing;
            ``diffing.adapt_sae``), with weights that read raw activations (as saved SAEs do;
            with ``normalize_activations`` set, the scale is unfolded from them before training
            and folded back after). Its weights join the checkpoint fingerprint.

    Returns:
        ``(sae, history)``: the trained inference ``sae_lens.SAE`` (normalisation folded in) and
        a DataFrame with one row per logged step (step, n_training_samples, overall_loss,
        mse_loss, l1_loss or the architecture's losses, explained_variance, l0, dead_features,
        current_learning_rate, ...), measured on the training batch.

    Raises:
        ValueError: a hook point the model lacks, empty tokens, contexts shorter than
            ``cfg.context_size``, or an ``init_sae`` of another width or architecture.
        KeyboardInterrupt: training was stopped by a signal or by ``on_step`` (after writing a
            checkpoint when ``checkpoint_dir`` is set).

    Used by notebooks/03_train_sae.py.
    """
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    ht = _hooked_transformer(model)
    parse_hook_name(cfg.hook_name, ht.cfg.n_layers)
    tokens = _tokens_tensor(tokens)
    if tokens.shape[1] < cfg.context_size:
        raise ValueError(f"context_size={cfg.context_size} is longer than the contexts "
                         f"({tokens.shape[1]} tokens). Set context_size <= {tokens.shape[1]} "
                         "or rebuild the contexts in notebook 01.")
    excluded = special_token_ids(ht.tokenizer) if cfg.exclude_special_tokens else []
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint = {"config": cfg.to_dict(), "data": _fingerprint(tokens, ht),
                   "checkpoint_format": CHECKPOINT_FORMAT}
    if init_sae is not None:
        fingerprint["init_sae"] = _weights_digest(init_sae)
    resume_from = _prepare_checkpoint_dir(checkpoint_dir, fingerprint, resume)
    if resume_from is not None and resume_from.name.startswith("final_"):
        log.info("training already finished in %s; loading it", resume_from)
        return load_sae(resume_from, device=cfg.device), pd.DataFrame(_read_history(resume_from))

    runner_cfg = LanguageModelSAERunnerConfig(
        sae=_training_sae_config(cfg, ht.cfg.d_model),
        model_name=getattr(ht.cfg, "model_name", "reasonlens-model"),
        hook_name=cfg.hook_name, dataset_path="reasonlens/contexts", is_dataset_tokenized=True,
        streaming=False, context_size=cfg.context_size, prepend_bos=False,
        training_tokens=cfg.training_tokens, train_batch_size_tokens=cfg.batch_size,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        n_batches_in_buffer=max(20, math.ceil(4 * cfg.batch_size / cfg.context_size)),
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        lr=cfg.lr, lr_warm_up_steps=cfg.lr_warm_up_steps, lr_decay_steps=cfg.lr_decay_steps,
        dead_feature_window=cfg.dead_feature_window, seed=cfg.seed, device=cfg.device,
        dtype=cfg.dtype, exclude_special_tokens=excluded or False,
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=None, output_path=None, model_from_pretrained_kwargs={},
        save_final_checkpoint=checkpoint_dir is not None,
        resume_from_checkpoint=str(resume_from) if resume_from else None, verbose=False)
    # SAELens appends a random id to checkpoint_path; we want the directory we were given.
    runner_cfg.checkpoint_path = str(checkpoint_dir) if checkpoint_dir is not None else None

    dataset = Dataset.from_dict({"tokens": tokens[:, :cfg.context_size].tolist()})
    # SAELens initialises the SAE and shuffles activations with the global RNG: seed it here,
    # from cfg.seed alone, and give the caller its own RNG state back afterwards.
    with torch.random.fork_rng(), warnings.catch_warnings(), _quiet_sae_lens():
        torch.manual_seed(cfg.seed)
        # SAELens compares contexts with tokens here and warns about "epochs"; we repeat on purpose.
        warnings.filterwarnings("ignore", message=".*fewer samples.*")
        warnings.filterwarnings("ignore", message=".*exhausted.*")
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        override_sae = None if init_sae is None else _training_sae_from(init_sae, runner_cfg)
        runner = _runner_class()(runner_cfg, override_dataset=dataset, override_model=ht,
                                 override_sae=override_sae)
        runner.history = _read_history(resume_from)
        runner.log_every, runner.on_step = cfg.log_every, on_step
        runner.unfold_init = init_sae is not None and resume_from is None
        if resume_from is not None:
            log.info("resuming SAE training from %s", resume_from)
        training_sae = runner.run()
    return _to_inference(training_sae), pd.DataFrame(runner.history)


@contextlib.contextmanager
def _quiet_sae_lens() -> Iterator[None]:
    """SAELens warns that an injected model/dataset makes the config alone irreproducible."""
    level = _set_sae_lens_log_level(logging.ERROR)
    try:
        yield
    finally:
        _set_sae_lens_log_level(level)


def _set_sae_lens_log_level(level: int) -> int:
    """Set SAELens's logger to ``level``; return the level it had."""
    from sae_lens import logger as sae_lens_logger

    previous = sae_lens_logger.level
    sae_lens_logger.setLevel(level)
    return previous


def _fingerprint(tokens: torch.Tensor, ht) -> dict[str, Any]:
    """What else must match for a checkpoint to be resumed: the contexts and the model."""
    weights = ht.W_E[:256].detach().float().cpu().numpy().tobytes()
    return {"tokens": hashlib.sha1(tokens.numpy().tobytes()).hexdigest(),
            "shape": list(tokens.shape), "model": hashlib.sha1(weights).hexdigest(),
            "d_model": ht.cfg.d_model, "n_layers": ht.cfg.n_layers}


def _weights_digest(sae) -> str:
    """A hash of an SAE's weights (for the checkpoint fingerprint)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _training_sae_from(init_sae, runner_cfg):
    """A SAELens ``TrainingSAE`` configured by ``runner_cfg``, holding ``init_sae``'s weights."""
    from sae_lens import TrainingSAE, TrainingSAEConfig

    training_sae = TrainingSAE.from_dict(
        TrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict()).to_dict())
    want = {name: tuple(t.shape) for name, t in training_sae.state_dict().items()}
    have = {name: tuple(t.shape) for name, t in init_sae.state_dict().items()}
    if want != have or init_sae.cfg.architecture() != training_sae.cfg.architecture():
        raise ValueError(f"init_sae is a {init_sae.cfg.architecture()!r} SAE with weights {have}, "
                         f"but the config trains a {training_sae.cfg.architecture()!r} one with "
                         f"{want}: start from an SAE of the same architecture and "
                         "expansion_factor.")
    training_sae.load_state_dict(init_sae.state_dict())
    return training_sae


def _prepare_checkpoint_dir(checkpoint_dir: Path | None, fingerprint: dict[str, Any],
                            resume: bool) -> Path | None:
    """The checkpoint to resume from (or None), after clearing a stale ``checkpoint_dir``."""
    if checkpoint_dir is None:
        return None
    record = checkpoint_dir / TRAIN_CONFIG_FILENAME
    try:
        same = json.loads(record.read_text()) == fingerprint
    except (FileNotFoundError, json.JSONDecodeError):  # none yet, or cut short by a kill
        same = False
    if checkpoint_dir.exists() and not (resume and same):
        if record.exists() and not same:
            log.warning("checkpoints in %s were made with another config, model or data; "
                        "starting over",
                        checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=2))
    return latest_checkpoint(checkpoint_dir)


def _read_history(checkpoint: Path | None) -> list[dict[str, Any]]:
    if checkpoint is None or not (checkpoint / HISTORY_FILENAME).exists():
        return []
    return pd.read_parquet(checkpoint / HISTORY_FILENAME).to_dict("records")


def _to_inference(training_sae):
    """The inference ``SAE`` equivalent to a ``TrainingSAE`` (via SAELens's own save format)."""
    with tempfile.TemporaryDirectory() as tmp:
        training_sae.save_inference_model(tmp)
        return load_sae(tmp, device=str(training_sae.cfg.device))


# --- saving and loading -------------------------------------------------------------------------
def save_sae(sae, path: str | Path) -> Path:
    """Write ``sae`` in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``) to ``path``.

    Use inside ``RunDir.write_dir(constants.SAE_DIR)`` for an atomic write.
    """
    save = getattr(sae, "save_inference_model", None) or sae.save_model
    save(str(path))
    return Path(path)


def load_sae(path: str | Path, device: str = "cpu"):
    """Load an SAE saved by ``save_sae`` (``sae_lens.SAE.load_from_disk``).

    Raises:
        FileNotFoundError: ``path`` holds no SAELens ``cfg.json``.
    """
    from sae_lens import SAE

    if not (Path(path) / "cfg.json").exists():
        raise FileNotFoundError(f"{path} holds no SAELens SAE (cfg.json is missing); "
                                "notebooks/03_train_sae.py writes it. Run: python -m "
                                "reasonlens.runner --profile <profile> --only 03")
    return SAE.load_from_disk(str(path), device=device)


def load_pretrained_sae(release: str, sae_id: str, device: str = "cpu"):
    """A published SAE by SAELens release and id (downloads when called, never at import).

    Args:
        release: a release in SAELens's ``pretrained_saes.yaml`` or a hub repo.
        sae_id: the SAE's id within the release.
        device: where to load it.
    """
    from sae_lens import SAE

    return SAE.from_pretrained(release, sae_id, device=device)


# --- evaluation ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SAEEvaluation:
    """Reconstruction quality of an SAE on held-out tokens (special tokens excluded).

    Attributes:
        explained_variance: 1 - E||x - x_hat||^2 / Var(x), over tokens.
        mean_l0: mean number of active features per token.
        frac_dead: fraction of features that never fire on these tokens.
        ce_clean, ce_spliced, ce_zero_ablation: next-token cross-entropy of the model, with the
            reconstruction spliced in at the hook, and with the hook zeroed.
        ce_loss_recovered: (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean).
        n_tokens: tokens evaluated.
        feature_density: ``[d_sae]`` fraction of tokens on which each feature fires.
    """

    explained_variance: float
    mean_l0: float
    frac_dead: float
    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    n_tokens: int
    feature_density: np.ndarray

    def metrics(self) -> dict[str, float]:
        """The scalar metrics (everything but ``feature_density``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "feature_density"}


def evaluate_sae(model, sae, tokens, hook_name: str | None = None, batch_size: int = 8,
                 exclude_special_tokens: bool = True) -> SAEEvaluation:
    """Explained variance, L0, dead features and CE loss recovered on held-out contexts.

    Uses SAELens's ``get_recons_loss`` (clean, spliced and zero-ablated next-token CE per token,
    the reconstruction spliced in only at non-special positions) and ``ExplainedVarianceCalculator``;
    L0 and feature density are counted here over every non-special token. CE is averaged over
    predictions from non-special tokens.

    Args:
        model: a ``TLHookedModel`` or ``HookedTransformer``.
        sae: an ``sae_lens.SAE`` reading ``hook_name``, moved to the model's device first
            (``models.sae_on_model_device``).
        tokens: ``[n_contexts, pos]`` tensor, a ``tokens`` DataFrame or Dataset.
        hook_name: defaults to the SAE's recorded hook.
        batch_size: contexts per forward pass.
        exclude_special_tokens: leave BOS/EOS/PAD out of every metric.

    Returns:
        An ``SAEEvaluation``.

    Raises:
        ValueError: a hook point the model lacks, ``sae.cfg.d_in`` != d_model, empty tokens, or
            an SAE on the meta device.

    Used by notebooks/03_train_sae.py.
    """
    from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    ht = _hooked_transformer(model)
    hook_name = check_sae_matches_model(ht, sae, hook_name)
    tokens = _tokens_tensor(tokens)
    check_range("batch_size", batch_size, 1)
    ignore = special_token_ids(ht.tokenizer) if exclude_special_tokens else []
    layer, _ = parse_hook_name(hook_name, ht.cfg.n_layers)
    device = device_of(ht)
    sae_on_model_device(sae, ht)
    was_training = sae.training
    sae.eval()
    variance = ExplainedVarianceCalculator()
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    l0_sum, n_tokens = 0.0, 0
    ce = {"ce_loss_without_sae": [], "ce_loss_with_sae": [], "ce_loss_with_ablation": []}
    with torch.no_grad():  # a block, not a decorator: mutmut skips decorated functions
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size].to(device)
            keep = ~torch.isin(batch, torch.tensor(ignore, dtype=torch.long, device=device))
            _, cache = ht.run_with_cache(batch, names_filter=[hook_name],
                                         stop_at_layer=layer + 1)
            acts = cache[hook_name][keep]
            feature_acts = sae.encode(acts)
            variance.add_batch(sae.decode(feature_acts).float(), acts.float())
            active = (feature_acts != 0)
            fires += active.sum(0).double().cpu()
            l0_sum += active.sum().item()
            n_tokens += int(keep.sum())
            losses = get_recons_loss(sae, ht, ActivationScaler(), batch, compute_kl=False,
                                     compute_ce_loss=True, ignore_tokens=ignore or None,
                                     hook_name=hook_name)
            for name in ce:
                ce[name].append(losses[name][keep[:, :-1]].double().cpu())
    sae.train(was_training)
    if n_tokens == 0:
        raise ValueError("tokens holds only special tokens (BOS/EOS/PAD); nothing to evaluate. "
                         "Pass contexts of real text.")
    clean, spliced, zero = (torch.cat(ce[name]).mean().item() for name in ce)
    density = (fires / n_tokens).numpy()
    return SAEEvaluation(
        explained_variance=variance.compute(), mean_l0=l0_sum / n_tokens,
        frac_dead=float((density == 0).mean()), ce_clean=clean, ce_spliced=spliced,
        ce_zero_ablation=zero, ce_loss_recovered=(zero - spliced) / (zero - clean),
        n_tokens=n_tokens, feature_density=density)
