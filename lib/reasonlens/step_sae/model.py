"""The step-level sparse autoencoder (Yang et al., 2026, arXiv 2603.03031, Sec. 3).

An encoder LM reads ``context <sep> step <eos>``; its last hidden state ``h`` goes through a
linear encoder and a ReLU, and the result is L2-normalised into the step latent

    z = ReLU(W_enc (h - b_pre) + b_enc) / ||ReLU(W_enc (h - b_pre) + b_enc)||_2     [n_latents]

A projection MLP maps ``z`` to ``n_prefix`` soft-prefix vectors (the paper's sparsity factor), and
a decoder LM that also reads the context is trained to reproduce the step from them (teacher
forcing, loss only on the step tokens and ``<eos>``); the context is free, so the latent only has
to carry what the step adds to it. Phase 2 fits a Gaussian over the latent given the context
alone (negative log-likelihood).

Two modes, each a ``StepSAEConfig``; the defaults are ours (tuned on the toy world), and
``StepSAEConfig.reference(d_model)`` is what the authors' code does (Miaow-Lab/SSAE, commit
911d4d3, called *R*; our audit: ``shared/reference/ssae_fidelity.md``, section 1):

==================  ====================================  =====================================
choice              ours (default)                        reference (R file:line)
==================  ====================================  =====================================
pre-encoder bias    ``b_pre``, set to the mean ``<eos>``  none: ``encoder(h) + latent_bias``
                    state (``pre_bias=True``)             (sentenceSAE.py:30-31, 40)
sparsity penalty    ``coef * (L1 - target)^2`` per step   ``w * mean L1``, ``w`` adapted every
                    (``l1_penalty="squared"``)            100 micro-batches (train.py:415-448,
                                                          495-498, 543, 567); see
                                                          ``training.AdaptiveL1Weight``
latent noise        none                                  N(0, 0.01^2) on z before the
                                                          projection (model_qwen.py:79-80)
latent width        256                                   ``d_model * n_prefix``
                                                          (model_qwen.py:21-22)
projection          Linear -> GELU -> Linear, width 256   Linear(n, n) -> ReLU -> Linear(n, n)
                                                          (model_qwen.py:38-42, 81-82)
prefix position     after ``<sep>``: context <sep>        position 0: prefix context <sep>
                    PREFIX step                           step (model_qwen.py:132-156)
token masking       none                                  10% of step and ``<eos>`` positions
                                                          hidden in training (train.py:474-480)
reconstruction      mean over steps of each step's        mean over all target tokens of the
loss                token-mean NLL                        batch (train.py:488-493)
phase-2 head        small MLP on the frozen encoder's     a trainable copy of the LM reads
                    state at ``<sep>``                    ``context <sep>``; mean and log-variance
                                                          MLPs (model_qwen.py:13, 25-37, 86-100)
==================  ====================================  =====================================

Why ours differ. Hidden states at ``<eos>`` share a large common component; without ``b_pre``
every step starts from nearly the same normalised latent, which the decoder then learns to
ignore. The squared penalty pulls each step's L1 toward the target from both sides (on the unit
L2 sphere ``||z||_1`` grows with the number of active latents: k equal latents give sqrt(k));
an absolute-value penalty with a fixed weight collapsed every step onto one latent vector in our
runs. A trained LM uses its first position as an attention sink and learns to ignore what sits
there, so our prefix goes right before the step.

**R's token-masking index shift, reproduced by default.** R masks positions through the attention
mask and then finds "the last token" as ``attention_mask.sum - 1`` (model_qwen.py:144-148, 415).
With m positions masked that is m positions before ``<eos>``: the latent is read there, the
decoder drops that token instead of ``<eos>``, the decoder's attention mask is not shifted with
the dropped token (so it hides the token *before* each masked one), and the last m targets equal
the decoder's input at their own position. ``mask_index_shift=True`` (set by ``reference``)
reproduces this; ``False`` reads the latent at ``<eos>``, drops ``<eos>`` and hides exactly the
masked tokens. Without masking both are the same.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from transformers import AutoConfig, AutoModelForCausalLM

from reasonlens.config import Config, check_range
from reasonlens.step_sae.data import StepBatch

CONFIG_FILE = "step_sae_config.json"
WEIGHTS_FILE = "model.safetensors"


L1_PENALTIES = ("squared", "adaptive")
PROJECTION_ACTIVATIONS = ("gelu", "relu")
PREFIX_POSITIONS = ("step", "start")
LOSS_REDUCTIONS = ("step", "token")
CONTEXT_HEADS = ("ours", "reference")


@dataclasses.dataclass(frozen=True)
class StepSAEConfig(Config):
    """Shape, sparsity and training-time rules of a step-level SAE (see the module docstring).

    The defaults are ours; ``StepSAEConfig.reference(d_model)`` gives R's.

    Args:
        n_latents: width of the sparse latent.
        n_prefix: soft-prefix vectors the latent is projected to (the paper's sparsity factor).
        l1_target: the L1 norm the L2-normalised latent is held near.
        l1_coefficient: ``"squared"``: weight of ``(L1 - l1_target)^2``; ``"adaptive"``: the
            starting weight of the batch-mean L1 (R: 1e-4, train.yaml:11).
        d_projection: hidden width of the projection MLP.
        max_context_tokens: contexts keep their last this many tokens.
        max_step_tokens: steps keep their first this many tokens.
        pre_bias: subtract a learned pre-encoder bias ``b_pre`` (started at the mean ``<eos>``
            state) before the encoder map. R has none.
        l1_penalty: ``"squared"`` (ours: per step ``l1_coefficient * (L1 - target)^2``) or
            ``"adaptive"`` (R: ``w * batch-mean L1``, ``w`` updated by
            ``training.AdaptiveL1Weight``).
        l1_update_every: ``"adaptive"``: micro-batches between weight updates (R: 100).
        l1_increase_factor: ``"adaptive"``: the weight's factor when the mean L1 over those
            micro-batches is above ``l1_target`` (R: 1.01).
        l1_decrease_factor: its factor otherwise, at or below the target (R: 0.99).
        l1_min_coefficient: ``"adaptive"``: the weight is clamped to at least this (R: 1e-6).
        l1_max_coefficient: and at most this (R: 0.1).
        latent_noise_std: std of the Gaussian noise added to the latent before the projection,
            in training only (R: 0.01; R also adds it to its validation loss).
        projection_activation: ``"gelu"`` (ours) or ``"relu"`` (R) between the projection's two
            layers.
        prefix_position: ``"step"`` (ours: ``context <sep> PREFIX step``) or ``"start"`` (R:
            ``PREFIX context <sep> step``).
        token_mask_rate: in training, each step or ``<eos>`` position is hidden from the encoder
            and decoder attention with this probability (R: 0.1).
        mask_index_shift: reproduce R's index shift under token masking (see the module
            docstring); False fixes it.
        loss_reduction: ``"step"`` (ours: mean over steps of each step's token-mean NLL) or
            ``"token"`` (R: mean over all target tokens of the batch).
        context_head: ``"ours"`` (``GaussianContextHead`` on the frozen encoder's ``<sep>``
            state) or ``"reference"`` (``ReferenceContextHead`` on a trainable copy of the LM).
    """

    n_latents: int = 256
    n_prefix: int = 1
    l1_target: float = 3.0
    l1_coefficient: float = 0.1
    d_projection: int = 256
    max_context_tokens: int = 96
    max_step_tokens: int = 32
    pre_bias: bool = True
    l1_penalty: str = "squared"
    l1_update_every: int = 100
    l1_increase_factor: float = 1.01
    l1_decrease_factor: float = 0.99
    l1_min_coefficient: float = 1e-6
    l1_max_coefficient: float = 0.1
    latent_noise_std: float = 0.0
    projection_activation: str = "gelu"
    prefix_position: str = "step"
    token_mask_rate: float = 0.0
    mask_index_shift: bool = True
    loss_reduction: str = "step"
    context_head: str = "ours"

    def __post_init__(self):
        check_range("n_latents", self.n_latents, 1)
        check_range("n_prefix", self.n_prefix, 1)
        check_range("l1_target", self.l1_target, 1.0, self.n_latents ** 0.5,
                    hint="An L2-normalised latent has 1 <= L1 <= sqrt(n_latents).")
        check_range("l1_coefficient", self.l1_coefficient, 0.0)
        check_range("d_projection", self.d_projection, 1)
        check_range("max_context_tokens", self.max_context_tokens, 0)
        check_range("max_step_tokens", self.max_step_tokens, 1)
        check_range("l1_update_every", self.l1_update_every, 1)
        check_range("l1_increase_factor", self.l1_increase_factor, 1.0)
        check_range("l1_decrease_factor", self.l1_decrease_factor, 0.0, 1.0)
        check_range("l1_min_coefficient", self.l1_min_coefficient, 0.0, self.l1_max_coefficient,
                    hint="It must not exceed l1_max_coefficient.")
        check_range("latent_noise_std", self.latent_noise_std, 0.0)
        check_range("token_mask_rate", self.token_mask_rate, 0.0, 1.0)
        for name, valid in (("l1_penalty", L1_PENALTIES),
                            ("projection_activation", PROJECTION_ACTIVATIONS),
                            ("prefix_position", PREFIX_POSITIONS),
                            ("loss_reduction", LOSS_REDUCTIONS),
                            ("context_head", CONTEXT_HEADS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; use one of "
                                 f"{list(valid)}.")
        for name in ("pre_bias", "mask_index_shift"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false.")

    @classmethod
    def reference(cls, d_model: int, n_prefix: int = 1, **overrides) -> StepSAEConfig:
        """R's step SAE for an LM of width ``d_model`` (Qwen2.5-0.5B: 896).

        Every rule of section 1 of the audit: no pre-bias, the adaptive L1 weight (1e-4 to
        start, target 3.0), latent noise 0.01, ``n_latents = d_model * n_prefix`` with R's
        ReLU projection of that width, the prefix at position 0, 10% token masking with R's
        index shift, the token-mean loss, and R's phase-2 head. Token limits are R's GSM8K ones
        (256 each; the notebook applies each data set's own with ``readers.apply_token_limits``).

        Args:
            d_model: the encoder LM's hidden size (R: ``N_INPUTS``, train.yaml:9).
            n_prefix: the sparsity factor (R: ``SPARSITY_FACTOR``, train.yaml:10).
            overrides: fields to set otherwise (e.g. ``mask_index_shift=False`` to fix the shift).
                An ``n_latents`` override also sets ``d_projection`` (R's projection is as wide
                as the latent) unless ``d_projection`` is given too.

        Returns:
            A validated ``StepSAEConfig``.

        Raises:
            ValueError: an override out of range.

        Used by notebook 08 (``step_modes`` with ``"reference"``) and
        profiles/step-sae-qwen2.5-0.5b.yaml.
        """
        n_latents = overrides.get("n_latents", d_model * n_prefix)  # model_qwen.py:21-22
        values = dict(
            n_latents=n_latents, n_prefix=n_prefix,
            d_projection=n_latents,  # model_qwen.py:38-42: Linear(n, n) -> ReLU -> Linear(n, n)
            projection_activation="relu",
            pre_bias=False,  # sentenceSAE.py:30-31, 40
            l1_penalty="adaptive",  # train.py:415-448, 543, 567
            l1_coefficient=1e-4,  # train.yaml:11 (L1_WEIGHT)
            l1_target=3.0,  # train.yaml:12 (L1_TARGET)
            l1_update_every=100, l1_min_coefficient=1e-6, l1_max_coefficient=0.1,  # train.py:447
            l1_increase_factor=1.01, l1_decrease_factor=0.99,  # train.py:433-436
            latent_noise_std=0.01,  # model_qwen.py:79-80
            prefix_position="start",  # model_qwen.py:152
            token_mask_rate=0.1, mask_index_shift=True,  # train.py:474-480; model_qwen.py:144
            loss_reduction="token",  # train.py:488-493
            context_head="reference",  # model_qwen.py:13, 25-37, 86-100
            max_context_tokens=256, max_step_tokens=256,  # dataloader.py:56-57
        )
        return cls(**values | overrides)


class GaussianContextHead(torch.nn.Module):
    """Phase 2 (ours): a diagonal Gaussian over the latent, from the context's hidden state."""

    def __init__(self, d_model: int, n_latents: int, d_hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_model, d_hidden), torch.nn.GELU(),
                                       torch.nn.Linear(d_hidden, 2 * n_latents))

    def forward(self, h_context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[batch, d_model]`` -> mean and log-variance, each ``[batch, n_latents]``."""
        mean, log_var = self.net(h_context).chunk(2, dim=-1)
        return mean, log_var.clamp(-10.0, 5.0)


class ReferenceContextHead(torch.nn.Module):
    """Phase 2 as R builds it: separate mean and log-variance MLPs (model_qwen.py:25-37).

    ``mean_mlp``: d -> n/8 -> n/2 -> n with LeakyReLU after the first two layers; ``var_mlp``:
    d -> d (LeakyReLU) -> n -> n, the last two layers with no activation between them. The
    log-variance is not clamped. ``n // 8`` must be at least 1.
    """

    def __init__(self, d_model: int, n_latents: int):
        super().__init__()
        if n_latents < 8:
            raise ValueError(f"n_latents={n_latents} is below 8: R's mean MLP has a layer of "
                             "width n_latents // 8. Use n_latents >= 8.")
        lin, leaky = torch.nn.Linear, torch.nn.LeakyReLU
        self.mean_mlp = torch.nn.Sequential(
            lin(d_model, n_latents // 8), leaky(), lin(n_latents // 8, n_latents // 2), leaky(),
            lin(n_latents // 2, n_latents))
        self.var_mlp = torch.nn.Sequential(
            lin(d_model, d_model), leaky(), lin(d_model, n_latents), lin(n_latents, n_latents))

    def forward(self, h_context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[batch, d_model]`` -> mean and log-variance, each ``[batch, n_latents]``."""
        return self.mean_mlp(h_context), self.var_mlp(h_context)


def mask_step_tokens(batch: StepBatch, rate: float, generator: torch.Generator | None = None,
                     index_shift: bool = True) -> StepBatch:
    """Hide each step and ``<eos>`` position from attention with probability ``rate`` (R).

    R (train.py:474-480) draws ``rand(batch, pos) >= rate`` over the whole batch and keeps a step
    position (``<sep>`` excluded, ``<eos>`` included: our ``step_mask``) where it holds. The
    targets (``step_mask``) are unchanged: a hidden token is still predicted.

    Args:
        batch: the padded batch.
        rate: the masking probability (R: 0.1).
        generator: the draws (on CPU); None: torch's global RNG.
        index_shift: True (R): ``last_pos`` becomes ``attention_mask.sum - 1`` of the masked
            mask, m positions before ``<eos>`` when m are hidden (the latent is read there and
            the decoder drops that token). False: ``last_pos`` stays at ``<eos>``.

    Returns:
        A new ``StepBatch`` with the masked ``attention_mask`` (and ``last_pos``).
    """
    keep = torch.rand(batch.input_ids.shape, generator=generator) >= rate
    keep = keep.to(batch.attention_mask.device)
    attention_mask = batch.attention_mask * (~batch.step_mask | keep).to(
        batch.attention_mask.dtype)
    last_pos = attention_mask.sum(1) - 1 if index_shift else batch.last_pos
    return dataclasses.replace(batch, attention_mask=attention_mask, last_pos=last_pos)


@dataclasses.dataclass
class StepSAEOutput:
    """What one forward pass gives (per example losses, so shards of a batch average exactly)."""

    latents: torch.Tensor  # [batch, n_latents], L2-normalised (before any noise)
    recon_loss: torch.Tensor  # [batch], mean NLL over each step's tokens and <eos>
    l1: torch.Tensor  # [batch], ||latents||_1
    token_accuracy: torch.Tensor  # [batch], share of step tokens predicted right (argmax)
    n_targets: torch.Tensor | None = None  # [batch], target tokens (step and <eos>) per step

    def loss(self, cfg: StepSAEConfig, l1_scale: float = 1.0,
             l1_weight: float | None = None) -> torch.Tensor:
        """The phase-1 loss of ``cfg``'s rules.

        ``l1_penalty="squared"``: mean over steps of NLL + ``l1_scale * l1_coefficient * (L1 -
        l1_target)^2``. ``"adaptive"`` (R, train.py:495-498): NLL + ``l1_weight * mean L1``
        (``l1_weight`` None: ``l1_coefficient``; ``l1_scale`` is ignored). The NLL is the mean
        over steps (``loss_reduction="step"``) or over all target tokens (``"token"``, which needs
        ``n_targets``).
        """
        if cfg.loss_reduction == "token":
            if self.n_targets is None:
                raise ValueError("loss_reduction='token' needs n_targets in the StepSAEOutput "
                                 "(StepSAE.forward sets it).")
            recon = (self.recon_loss * self.n_targets).sum() / self.n_targets.sum()
        else:
            recon = self.recon_loss.mean()
        if cfg.l1_penalty == "adaptive":
            weight = cfg.l1_coefficient if l1_weight is None else l1_weight
            return recon + weight * self.l1.mean()
        penalty = cfg.l1_coefficient * l1_scale * (self.l1 - cfg.l1_target) ** 2
        if cfg.loss_reduction == "token":
            return recon + penalty.mean()
        return (self.recon_loss + penalty).mean()


class StepSAE(torch.nn.Module):
    """Encoder LM -> sparse latent -> soft prefix -> decoder LM (see the module docstring).

    Example:
        >>> sae = StepSAE.build("models/reasoning", tokenizer, cfg)  # doctest: +SKIP
        >>> batch = collate(ctx_ids, step_ids, sae.sep_id, sae.eos_id, sae.pad_id)  # doctest: +SKIP
        >>> out = sae(batch)  # doctest: +SKIP
    """

    def __init__(self, encoder, decoder, cfg: StepSAEConfig, sep_id: int, eos_id: int,
                 pad_id: int, context_encoder=None):
        super().__init__()
        self.cfg, self.sep_id, self.eos_id, self.pad_id = cfg, sep_id, eos_id, pad_id
        self.encoder, self.decoder = encoder, decoder
        d_enc, d_dec = encoder.config.hidden_size, decoder.config.hidden_size
        if cfg.pre_bias:
            self.b_pre = torch.nn.Parameter(torch.zeros(d_enc))
        else:
            self.register_parameter("b_pre", None)
        self.W_enc = torch.nn.Linear(d_enc, cfg.n_latents)
        torch.nn.init.zeros_(self.W_enc.bias)
        activation = torch.nn.GELU() if cfg.projection_activation == "gelu" else torch.nn.ReLU()
        self.projection = torch.nn.Sequential(
            torch.nn.Linear(cfg.n_latents, cfg.d_projection), activation,
            torch.nn.Linear(cfg.d_projection, cfg.n_prefix * d_dec))
        if cfg.context_head == "reference":
            if context_encoder is None:
                raise ValueError("context_head='reference' needs a context_encoder LM (a copy of "
                                 "the LM the encoder starts from); StepSAE.build makes one.")
            self.context_encoder = context_encoder
            self.context_head = ReferenceContextHead(d_enc, cfg.n_latents)
        else:
            self.context_encoder = None
            self.context_head = GaussianContextHead(d_enc, cfg.n_latents, cfg.d_projection)

    @classmethod
    def build(cls, lm, tokenizer, cfg: StepSAEConfig, seed: int = 0) -> StepSAE:
        """Encoder and decoder initialised from one causal LM (a path, hub id or model).

        ``tokenizer`` gains a ``<sep>`` token if it has none; the LMs' embeddings are resized.
        With ``cfg.context_head="reference"`` a third copy of the LM becomes the phase-2 context
        encoder (R's ``hints_encoder``, model_qwen.py:13).

        Args:
            lm: the causal LM, or its path or hub id.
            tokenizer: its tokenizer (gains ``<sep>``).
            cfg: the step SAE's sizes and sparsity settings.
            seed: initialises the new parameters (the ``<sep>`` embedding rows, the encoder,
                projection and context head); they depend on it alone, and the global RNG
                state is left as it was.

        Returns:
            The step SAE, in training mode.
        """
        from reasonlens.step_sae.data import add_sep_token

        if isinstance(lm, (str, Path)):
            lm = AutoModelForCausalLM.from_pretrained(str(lm), dtype=torch.float32)
        sep_id = add_sep_token(tokenizer)
        encoder, decoder = copy.deepcopy(lm), copy.deepcopy(lm)
        pad_id = tokenizer.pad_token_id
        pad_id = tokenizer.eos_token_id if pad_id is None else pad_id
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for model in (encoder, decoder):
                if model.get_input_embeddings().num_embeddings < len(tokenizer):
                    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            # R's context encoder is the pretrained LM too (frozen in phase 1): the encoder as
            # it is now, before training, with the same new <sep> row
            context_encoder = (copy.deepcopy(encoder) if cfg.context_head == "reference"
                               else None)
            return cls(encoder, decoder, cfg, sep_id, tokenizer.eos_token_id, pad_id,
                       context_encoder=context_encoder)

    def phase_parameters(self, phase: int) -> list[torch.nn.Parameter]:
        """Set ``requires_grad`` for a training phase and return the trainable parameters.

        Phase 1 trains everything but the phase-2 parts (context head and, in reference mode,
        context encoder) and the LMs' (untied) heads that never receive a gradient; phase 2
        trains only the context head (ours) or the context head and context encoder (R,
        model_qwen.py:48-52).
        """
        if phase not in (1, 2):
            raise ValueError(f"phase={phase!r} must be 1 (autoencoder) or 2 (context head).")
        for p in self.parameters():
            p.requires_grad_(phase == 1)
        phase_two = [self.context_head] + ([self.context_encoder]
                                           if self.context_encoder is not None else [])
        for module in phase_two:
            for p in module.parameters():
                p.requires_grad_(phase == 2)
        for lm in (self.encoder, self.context_encoder):
            head = None if lm is None else lm.get_output_embeddings()
            if head is not None and head.weight is not lm.get_input_embeddings().weight:
                head.weight.requires_grad_(False)
        return [p for p in self.parameters() if p.requires_grad]

    # --- the autoencoder -----------------------------------------------------------------------
    def hidden_states(self, batch: StepBatch) -> torch.Tensor:
        """The encoder LM's last-layer hidden states ``[batch, pos, d_model]``."""
        out = self.encoder.base_model(input_ids=batch.input_ids,
                                      attention_mask=batch.attention_mask)
        return out.last_hidden_state

    def encode(self, batch: StepBatch) -> torch.Tensor:
        """L2-normalised sparse latents ``[batch, n_latents]`` of the steps in ``batch``."""
        return self.sparse_latent(self.step_state(batch))

    def step_state(self, batch: StepBatch) -> torch.Tensor:
        """The encoder LM's last-layer state at ``last_pos`` (``<eos>``) ``[batch, d_model]``."""
        hidden = self.hidden_states(batch)
        return hidden[torch.arange(len(hidden)), batch.last_pos]

    def sparse_latent(self, h_step: torch.Tensor) -> torch.Tensor:
        """``[batch, d_model]`` -> ReLU(W_enc (h - b_pre) + b) at unit L2 norm (0 stays 0)."""
        acts = self.activations(h_step)
        return acts / acts.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def activations(self, h_step: torch.Tensor) -> torch.Tensor:
        """``[batch, d_model]`` -> ReLU(W_enc (h - b_pre) + b), before the L2 normalisation.

        Without a pre-bias (``cfg.pre_bias=False``, R) it is ReLU(W_enc h + b).
        """
        return F.relu(self.W_enc(h_step if self.b_pre is None else h_step - self.b_pre))

    def encode_activations(self, batch: StepBatch) -> torch.Tensor:
        """Un-normalised latent activations ``[batch, n_latents]`` of the steps in ``batch``."""
        return self.activations(self.step_state(batch))

    def init_pre_bias(self, batch: StepBatch) -> None:
        """Set ``b_pre`` to the mean ``<eos>`` hidden state over ``batch`` (no gradient).

        Does nothing without a pre-bias (``cfg.pre_bias=False``).
        """
        if self.b_pre is None:
            return
        with torch.no_grad():
            self.b_pre.copy_(self.step_state(batch).mean(0))

    def prefix(self, latents: torch.Tensor) -> torch.Tensor:
        """``[batch, n_latents]`` -> soft-prefix vectors ``[batch, n_prefix, d_model]``."""
        return self.projection(latents).view(len(latents), self.cfg.n_prefix, -1)

    def decoder_inputs(self, batch: StepBatch, latents: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's input embeddings and attention mask for teacher forcing.

        ``prefix_position="step"``: ``context <sep> PREFIX step <eos>`` (``[batch, pos +
        n_prefix, d_model]``). ``"start"`` (R, model_qwen.py:141-156): ``PREFIX`` followed by the
        sequence without its token at ``last_pos`` (``<eos>``, or R's shifted position under
        token masking), ``[batch, pos + n_prefix - 1, d_model]``; the attention mask is R's
        ``[1] * (n_prefix - 1) + attention_mask`` when ``cfg.mask_index_shift``, else the prefix's
        ones and the mask without that token. In both layouts the logits at positions
        ``n_prefix - 1`` to ``-1`` predict ``input_ids``.
        """
        prefix = self.prefix(latents)
        embeds = self.decoder.get_input_embeddings()(batch.input_ids)
        prefix = prefix.to(embeds.dtype)
        n_batch, n_pos = batch.input_ids.shape
        n_prefix = prefix.shape[1]
        mask_dtype = batch.attention_mask.dtype
        if self.cfg.prefix_position == "start":
            keep = torch.ones_like(batch.input_ids, dtype=torch.bool)
            keep[torch.arange(n_batch), batch.last_pos] = False
            kept = embeds[keep].view(n_batch, n_pos - 1, -1)
            if self.cfg.mask_index_shift:
                mask = torch.cat([torch.ones(n_batch, n_prefix - 1, dtype=mask_dtype,
                                             device=prefix.device), batch.attention_mask], 1)
            else:
                mask = torch.cat([torch.ones(n_batch, n_prefix, dtype=mask_dtype,
                                             device=prefix.device),
                                  batch.attention_mask[keep].view(n_batch, n_pos - 1)], 1)
            return torch.cat([prefix, kept], 1), mask
        ones = torch.ones(n_prefix, dtype=mask_dtype, device=prefix.device)
        inputs, mask = [], []
        for i, start in enumerate((batch.sep_pos + 1).tolist()):  # context <sep> PREFIX step <eos>
            inputs.append(torch.cat([embeds[i, :start], prefix[i], embeds[i, start:]]))
            mask.append(torch.cat([batch.attention_mask[i, :start], ones,
                                   batch.attention_mask[i, start:]]))
        return torch.stack(inputs), torch.stack(mask)

    def reconstruct(self, batch: StepBatch, latents: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoding of the steps from ``latents`` and the contexts.

        Returns:
            Per example: mean NLL over the step tokens and ``<eos>`` ``[batch]``, and the share of
            them predicted right by argmax ``[batch]``. Context and padding carry no loss.
        """
        inputs, mask = self.decoder_inputs(batch, latents)
        logits = self.decoder(inputs_embeds=inputs, attention_mask=mask).logits
        n_prefix = self.cfg.n_prefix
        # "step": a step token at t > sep moved to t + n_prefix, and logits there - 1 predict it;
        # "start": token t < last_pos sits at t + n_prefix, so logits at t + n_prefix - 1 do
        pred = logits[:, n_prefix - 1:][:, :batch.input_ids.shape[1]].float()
        target_mask = batch.step_mask.float()
        nll = F.cross_entropy(pred.transpose(1, 2), batch.input_ids, reduction="none")
        n_targets = target_mask.sum(1)
        recon = (nll * target_mask).sum(1) / n_targets
        right = ((pred.argmax(-1) == batch.input_ids).float() * target_mask).sum(1) / n_targets
        return recon, right

    def forward(self, batch: StepBatch, shuffle: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> StepSAEOutput:
        """Encode and reconstruct; ``shuffle`` (a permutation) feeds each step another's latent.

        In training mode (``self.training``) the configured token masking
        (``mask_step_tokens``) and latent noise apply, drawn from ``generator`` (on CPU; None:
        torch's global RNG); the L1 is that of the latent before the noise (R,
        model_qwen.py:78-80).
        """
        if self.training and self.cfg.token_mask_rate > 0:
            batch = mask_step_tokens(batch, self.cfg.token_mask_rate, generator,
                                     self.cfg.mask_index_shift)
        latents = self.encode(batch)
        used = latents if shuffle is None else latents[shuffle]
        if self.training and self.cfg.latent_noise_std > 0:
            noise = torch.randn(used.shape, generator=generator) * self.cfg.latent_noise_std
            used = used + noise.to(used.device, used.dtype)
        recon, right = self.reconstruct(batch, used)
        return StepSAEOutput(latents, recon, latents.abs().sum(-1), right,
                             batch.step_mask.sum(1))

    # --- phase 2 -------------------------------------------------------------------------------
    def context_state(self, batch: StepBatch) -> torch.Tensor:
        """The phase-2 head's input ``[batch, d_model]``: a hidden state at ``<sep>``.

        Ours: the frozen SAE encoder's (causal, so it has not seen the step). R: the context
        encoder's, run on ``context <sep>`` alone, right-padded (model_qwen.py:91-92), which is
        ``input_ids`` cut after the longest context.
        """
        if self.context_encoder is None:
            hidden = self.hidden_states(batch)
            return hidden[torch.arange(len(hidden)), batch.sep_pos]
        width = int(batch.sep_pos.max()) + 1
        positions = torch.arange(width, device=batch.input_ids.device)
        mask = (positions[None] <= batch.sep_pos[:, None].to(positions.device)).to(
            batch.attention_mask.dtype)
        hidden = self.context_encoder.base_model(input_ids=batch.input_ids[:, :width],
                                                 attention_mask=mask).last_hidden_state
        return hidden[torch.arange(len(hidden)), batch.sep_pos]

    def context_distribution(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Phase 2: mean and log-variance of the latent given the context only (at ``<sep>``)."""
        return self.context_head(self.context_state(batch))

    # --- saving ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the config, both LM configs and all weights (safetensors) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(
            {"step_sae": self.cfg.to_dict(), "sep_id": self.sep_id, "eos_id": self.eos_id,
             "pad_id": self.pad_id}, indent=2))
        self.encoder.config.save_pretrained(path / "encoder")
        self.decoder.config.save_pretrained(path / "decoder")
        save_model(self, str(path / WEIGHTS_FILE))
        return path

    @classmethod
    def load(cls, path: str | Path) -> StepSAE:
        """Load a ``save``d step-level SAE (safetensors only; no code runs from the files).

        Raises:
            FileNotFoundError: ``path`` is not a saved step-level SAE.
        """
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}; it is not a saved step-level "
                                    "SAE. Notebook 08 writes one (StepSAE.save).")
        meta = json.loads((path / CONFIG_FILE).read_text())
        cfg = StepSAEConfig.from_dict(meta["step_sae"])
        names = ("encoder", "decoder") + (("encoder",) if cfg.context_head == "reference" else ())
        lms = [AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path / name))
               for name in names]  # the context encoder has the encoder's shape
        model = cls(lms[0], lms[1], cfg, meta["sep_id"], meta["eos_id"], meta["pad_id"],
                    context_encoder=lms[2] if len(lms) == 3 else None)
        load_model(model, str(path / WEIGHTS_FILE))
        return model.eval()
