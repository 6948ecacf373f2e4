"""The step-level sparse autoencoder (Yang et al., 2026, arXiv 2603.03031, Sec. 3).

An encoder LM reads ``context <sep> step <eos>``; its last hidden state ``h`` goes through a
linear encoder and a ReLU, and the result is L2-normalised into the step latent

    z = ReLU(W_enc (h - b_pre) + b_enc) / ||ReLU(W_enc (h - b_pre) + b_enc)||_2     [n_latents]

where the pre-encoder bias ``b_pre`` (as in standard SAEs) starts at the mean hidden state of the
training steps (``init_pre_bias``): hidden states at ``<eos>`` share a large common component, and
without removing it every step starts from nearly the same normalised latent, which the decoder
then learns to ignore.

whose L1 norm is pulled toward ``l1_target`` by the penalty ``l1_coefficient * (||z||_1 -
l1_target)^2`` (on the unit L2 sphere ``||z||_1`` grows with the number of active latents: k
equal latents give sqrt(k), so the target sets how many share the mass). The paper controls the
L1 norm toward a target; the squared form is our choice: an absolute-value penalty, whose pull
does not fade near the target, collapsed every step onto one latent vector in our runs.

A projection MLP maps ``z`` to ``n_prefix`` soft-prefix vectors (the sparsity factor), and a
decoder LM reads ``context <sep> prefix step <eos>`` and is trained to reproduce the step
(teacher forcing, loss only on the step tokens and ``<eos>``). The soft prefix goes right before
the step, not at position 0: a trained LM uses its first position as an attention sink and
learns to ignore what sits there. The decoder sees the context too,
so the latent only has to carry what the step adds to it.

Phase 2 trains a ``GaussianContextHead`` that predicts the latent from the context alone: the
frozen encoder's hidden state at ``<sep>`` (causal, so it has not seen the step) gives a mean and
a diagonal log-variance, trained by Gaussian negative log-likelihood.
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


@dataclasses.dataclass(frozen=True)
class StepSAEConfig(Config):
    """Shape and sparsity of a step-level SAE.

    Args:
        n_latents: width of the sparse latent.
        n_prefix: soft-prefix vectors the latent is projected to (the paper's sparsity factor).
        l1_target: the L1 norm the L2-normalised latent is pulled toward.
        l1_coefficient: weight of ``(L1 - l1_target)^2`` in the loss.
        d_projection: hidden width of the projection MLP.
        max_context_tokens: contexts keep their last this many tokens.
        max_step_tokens: steps keep their first this many tokens.
    """

    n_latents: int = 256
    n_prefix: int = 1
    l1_target: float = 3.0
    l1_coefficient: float = 0.1
    d_projection: int = 256
    max_context_tokens: int = 96
    max_step_tokens: int = 32

    def __post_init__(self):
        check_range("n_latents", self.n_latents, 1)
        check_range("n_prefix", self.n_prefix, 1)
        check_range("l1_target", self.l1_target, 1.0, self.n_latents ** 0.5,
                    hint="An L2-normalised latent has 1 <= L1 <= sqrt(n_latents).")
        check_range("l1_coefficient", self.l1_coefficient, 0.0)
        check_range("d_projection", self.d_projection, 1)
        check_range("max_context_tokens", self.max_context_tokens, 0)
        check_range("max_step_tokens", self.max_step_tokens, 1)


class GaussianContextHead(torch.nn.Module):
    """Phase 2: a diagonal Gaussian over the latent, from the context's hidden state."""

    def __init__(self, d_model: int, n_latents: int, d_hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_model, d_hidden), torch.nn.GELU(),
                                       torch.nn.Linear(d_hidden, 2 * n_latents))

    def forward(self, h_context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[batch, d_model]`` -> mean and log-variance, each ``[batch, n_latents]``."""
        mean, log_var = self.net(h_context).chunk(2, dim=-1)
        return mean, log_var.clamp(-10.0, 5.0)


@dataclasses.dataclass
class StepSAEOutput:
    """What one forward pass gives (per example losses, so shards of a batch average exactly)."""

    latents: torch.Tensor  # [batch, n_latents], L2-normalised
    recon_loss: torch.Tensor  # [batch], mean NLL over each step's tokens and <eos>
    l1: torch.Tensor  # [batch], ||latents||_1
    token_accuracy: torch.Tensor  # [batch], share of step tokens predicted right (argmax)

    def loss(self, cfg: StepSAEConfig, l1_scale: float = 1.0) -> torch.Tensor:
        """Mean over steps of NLL + ``l1_scale * l1_coefficient * (L1 - l1_target)^2``."""
        penalty = cfg.l1_coefficient * l1_scale * (self.l1 - cfg.l1_target) ** 2
        return (self.recon_loss + penalty).mean()


class StepSAE(torch.nn.Module):
    """Encoder LM -> sparse latent -> soft prefix -> decoder LM (see the module docstring).

    Example:
        >>> sae = StepSAE.build("models/reasoning", tokenizer, cfg)  # doctest: +SKIP
        >>> batch = collate(ctx_ids, step_ids, sae.sep_id, sae.eos_id, sae.pad_id)  # doctest: +SKIP
        >>> out = sae(batch)  # doctest: +SKIP
    """

    def __init__(self, encoder, decoder, cfg: StepSAEConfig, sep_id: int, eos_id: int,
                 pad_id: int):
        super().__init__()
        self.cfg, self.sep_id, self.eos_id, self.pad_id = cfg, sep_id, eos_id, pad_id
        self.encoder, self.decoder = encoder, decoder
        d_enc, d_dec = encoder.config.hidden_size, decoder.config.hidden_size
        self.b_pre = torch.nn.Parameter(torch.zeros(d_enc))
        self.W_enc = torch.nn.Linear(d_enc, cfg.n_latents)
        torch.nn.init.zeros_(self.W_enc.bias)
        self.projection = torch.nn.Sequential(
            torch.nn.Linear(cfg.n_latents, cfg.d_projection), torch.nn.GELU(),
            torch.nn.Linear(cfg.d_projection, cfg.n_prefix * d_dec))
        self.context_head = GaussianContextHead(d_enc, cfg.n_latents, cfg.d_projection)

    @classmethod
    def build(cls, lm, tokenizer, cfg: StepSAEConfig, seed: int = 0) -> StepSAE:
        """Encoder and decoder initialised from one causal LM (a path, hub id or model).

        ``tokenizer`` gains a ``<sep>`` token if it has none; both LMs' embeddings are resized.

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
            return cls(encoder, decoder, cfg, sep_id, tokenizer.eos_token_id, pad_id)

    def phase_parameters(self, phase: int) -> list[torch.nn.Parameter]:
        """Set ``requires_grad`` for a training phase and return the trainable parameters.

        Phase 1 trains everything but the context head and the encoder's (untied) LM head, which
        never receive a gradient; phase 2 trains only the context head.
        """
        if phase not in (1, 2):
            raise ValueError(f"phase={phase!r} must be 1 (autoencoder) or 2 (context head).")
        for p in self.parameters():
            p.requires_grad_(phase == 1)
        for p in self.context_head.parameters():
            p.requires_grad_(phase == 2)
        head = self.encoder.get_output_embeddings()
        if head is not None and head.weight is not self.encoder.get_input_embeddings().weight:
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
        """The encoder LM's last-layer hidden state at each ``<eos>`` ``[batch, d_model]``."""
        hidden = self.hidden_states(batch)
        return hidden[torch.arange(len(hidden)), batch.last_pos]

    def sparse_latent(self, h_step: torch.Tensor) -> torch.Tensor:
        """``[batch, d_model]`` -> ReLU(W_enc (h - b_pre) + b) at unit L2 norm (0 stays 0)."""
        acts = self.activations(h_step)
        return acts / acts.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def activations(self, h_step: torch.Tensor) -> torch.Tensor:
        """``[batch, d_model]`` -> ReLU(W_enc (h - b_pre) + b), before the L2 normalisation."""
        return F.relu(self.W_enc(h_step - self.b_pre))

    def encode_activations(self, batch: StepBatch) -> torch.Tensor:
        """Un-normalised latent activations ``[batch, n_latents]`` of the steps in ``batch``."""
        return self.activations(self.step_state(batch))

    def init_pre_bias(self, batch: StepBatch) -> None:
        """Set ``b_pre`` to the mean ``<eos>`` hidden state over ``batch`` (no gradient)."""
        with torch.no_grad():
            self.b_pre.copy_(self.step_state(batch).mean(0))

    def prefix(self, latents: torch.Tensor) -> torch.Tensor:
        """``[batch, n_latents]`` -> soft-prefix vectors ``[batch, n_prefix, d_model]``."""
        return self.projection(latents).view(len(latents), self.cfg.n_prefix, -1)

    def reconstruct(self, batch: StepBatch, latents: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoding of the steps from ``latents`` and the contexts.

        Returns:
            Per example: mean NLL over the step tokens and ``<eos>`` ``[batch]``, and the share of
            them predicted right by argmax ``[batch]``. Context and padding carry no loss.
        """
        prefix = self.prefix(latents)
        embeds = self.decoder.get_input_embeddings()(batch.input_ids)
        n_prefix = prefix.shape[1]
        ones = torch.ones(n_prefix, dtype=batch.attention_mask.dtype, device=prefix.device)
        inputs, mask = [], []
        for i, start in enumerate((batch.sep_pos + 1).tolist()):  # context <sep> PREFIX step <eos>
            inputs.append(torch.cat([embeds[i, :start], prefix[i].to(embeds.dtype),
                                     embeds[i, start:]]))
            mask.append(torch.cat([batch.attention_mask[i, :start], ones,
                                   batch.attention_mask[i, start:]]))
        logits = self.decoder(inputs_embeds=torch.stack(inputs),
                              attention_mask=torch.stack(mask)).logits
        # a step token at position t > sep moved to t + n_prefix; logits there - 1 predict it
        pred = logits[:, n_prefix - 1: -1].float()
        target_mask = batch.step_mask.float()
        nll = F.cross_entropy(pred.transpose(1, 2), batch.input_ids, reduction="none")
        n_targets = target_mask.sum(1)
        recon = (nll * target_mask).sum(1) / n_targets
        right = ((pred.argmax(-1) == batch.input_ids).float() * target_mask).sum(1) / n_targets
        return recon, right

    def forward(self, batch: StepBatch, shuffle: torch.Tensor | None = None) -> StepSAEOutput:
        """Encode and reconstruct; ``shuffle`` (a permutation) feeds each step another's latent."""
        latents = self.encode(batch)
        used = latents if shuffle is None else latents[shuffle]
        recon, right = self.reconstruct(batch, used)
        return StepSAEOutput(latents, recon, latents.abs().sum(-1), right)

    # --- phase 2 -------------------------------------------------------------------------------
    def context_distribution(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Phase 2: mean and log-variance of the latent given the context only (at ``<sep>``)."""
        hidden = self.hidden_states(batch)
        return self.context_head(hidden[torch.arange(len(hidden)), batch.sep_pos])

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
        lms = [AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path / name))
               for name in ("encoder", "decoder")]
        model = cls(*lms, StepSAEConfig.from_dict(meta["step_sae"]), meta["sep_id"],
                    meta["eos_id"], meta["pad_id"])
        load_model(model, str(path / WEIGHTS_FILE))
        return model.eval()
