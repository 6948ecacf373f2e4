"""The toy reasoning model, loading real ones, and one hook interface over two backends.

A model is a Hugging Face causal LM saved with ``save_pretrained``. Later notebooks drive it either
through TransformerLens (``as_hooked_transformer``: a HookedTransformer with the matching config and
converted, unprocessed weights, so its residual stream is the HF one) or through plain transformers
with forward hooks (``HFHookedModel``). Both expose ``forward``, ``run_with_cache`` and ``hooks``
with TransformerLens hook names (``blocks.{L}.hook_resid_post``) and ``fn(activation, hook)``
hook functions, so steering and scoring code is written once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained import weight_conversions
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from reasonlens.config import Config, check_range

log = logging.getLogger(__name__)

HookFn = Callable[[torch.Tensor, object], torch.Tensor | None]
HOOK_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


@dataclasses.dataclass(frozen=True)
class ToyModelConfig(Config):
    """A small Llama-style causal LM (the toy reasoning and base models).

    Args:
        d_model: residual stream width.
        n_layers: transformer blocks.
        n_heads: attention heads (d_head = d_model / n_heads).
        d_mlp: gated MLP width.
        n_ctx: longest sequence (rotary positions; at least the context size).
    """

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 384
    n_ctx: int = 512

    def __post_init__(self):
        check_range("n_layers", self.n_layers, 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}.")


def build_toy_model(cfg: ToyModelConfig, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` sized by ``cfg`` for ``tokenizer``.

    Args:
        cfg: the architecture.
        tokenizer: sets the vocabulary size and the BOS/EOS/PAD ids.
        seed: the initialisation seed; the weights depend on it alone, and the global RNG
            state is left as it was.

    Returns:
        The model, in training mode, on the CPU.
    """
    hf_cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.n_ctx,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, rms_norm_eps=1e-5)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(hf_cfg)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (profiles name dtypes as strings).

    Raises:
        ValueError: naming the parameter and the valid names.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"model_dtype={dtype!r} is unknown; use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def load_hf_model(path_or_id: str | Path, dtype: str | torch.dtype = torch.float32,
                  device: str = "cpu", trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from a local directory or a hub id.

    Args:
        path_or_id: a ``save_pretrained`` directory or a hub id (fetched only when called).
        dtype: weights' dtype.
        device: where to put the model.
        trust_remote_code: only when a profile asks for it.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        FileNotFoundError: a local-looking path that does not exist.
    """
    text = str(path_or_id)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_local and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"model path {text!r} does not exist. Pass a save_pretrained "
                                "directory or a hub id like 'deepseek-ai/DeepSeek-R1-Distill-Llama-8B'.")
    text = str(Path(text).expanduser()) if looks_local else text
    tokenizer = AutoTokenizer.from_pretrained(text, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(text, dtype=as_dtype(dtype),
                                                 trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer


# What the TransformerLens conversion does with each LlamaConfig and Qwen2Config field of
# transformers 4.56 (and partial_rotary_factor, which transformers' RoPE reads when a config has
# it). A field that changes the forward pass is reproduced, and tested against transformers at
# every residual hook point in tests/test_models.py, or refused with a ValueError naming it: the
# conversion never silently differs. That test fails when transformers adds a field not listed here.
CONFIG_FIELD_POLICY = {
    "vocab_size": "reproduced: d_vocab",
    "hidden_size": "reproduced: d_model",
    "intermediate_size": "reproduced: d_mlp",
    "num_hidden_layers": "reproduced: n_layers",
    "num_attention_heads": "reproduced: n_heads",
    "num_key_value_heads": "reproduced: n_key_value_heads (grouped-query attention)",
    "head_dim": "reproduced: d_head, also when it is not hidden_size / num_attention_heads",
    "hidden_act": "reproduced for the names in HIDDEN_ACTS; refused otherwise",
    "rms_norm_eps": "reproduced: eps",
    "rope_theta": "reproduced: rotary_base",
    "rope_scaling": "reproduced for rope_type 'default' and 'llama3' (NTK-by-parts); refused for "
                    "'linear', 'dynamic', 'yarn', 'longrope' (TransformerLens has no such RoPE)",
    "partial_rotary_factor": "refused unless 1.0 (transformers' Llama and Qwen2 cannot run it)",
    "attention_bias": "Llama: reproduced (q/k/v/o biases copied); Qwen2 ignores it (q/k/v biases "
                      "always, converted by TransformerLens)",
    "mlp_bias": "Llama: refused when true (TransformerLens's gated MLP has no gate or up bias); "
                "Qwen2 ignores it",
    "tie_word_embeddings": "reproduced: W_U is read from lm_head, which transformers ties",
    "use_sliding_window": "Qwen2: reproduced through layer_types",
    "sliding_window": "Qwen2: reproduced as window_size of TransformerLens local attention",
    "max_window_layers": "Qwen2: reproduced through layer_types",
    "layer_types": "Qwen2: 'sliding_attention' layers become attn_types 'local', others 'global'",
    "max_position_embeddings": "default n_ctx (capped at 8192); 'default' and 'llama3' RoPE do not "
                               "read it, and TransformerLens extends its RoPE and mask past n_ctx",
    "pretraining_tp": "no effect: the transformers 4.56 forward pass does not read it",
    "attention_dropout": "no effect in eval mode (training only)",
    "initializer_range": "no effect: initialisation only",
    "use_cache": "no effect: key/value caching only",
}
# transformers' hidden_act -> the TransformerLens act_fn that computes the same function.
HIDDEN_ACTS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu",
               "gelu_python": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_fast",
               "gelu_pytorch_tanh": "gelu_pytorch_tanh"}
ROPE_TYPES = ("default", "llama3")


def _refuse_what_would_differ(hf_config, arch: str) -> None:
    """Raise for the first field of ``CONFIG_FIELD_POLICY`` whose value the conversion refuses."""
    scaling = hf_config.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    partial_rotary = getattr(hf_config, "partial_rotary_factor", 1.0)
    mlp_bias = arch == "LlamaForCausalLM" and getattr(hf_config, "mlp_bias", False)
    use_hf = "load this model with backend='hf' instead"
    checks = [
        ("rope_scaling", scaling, rope_type in ROPE_TYPES,
         f"rope_type must be one of {ROPE_TYPES}; {use_hf}"),
        ("hidden_act", hf_config.hidden_act, hf_config.hidden_act in HIDDEN_ACTS,
         f"valid: {sorted(HIDDEN_ACTS)}; {use_hf}"),
        ("partial_rotary_factor", partial_rotary, partial_rotary == 1.0,
         "valid: 1.0, the only value transformers' Llama and Qwen2 run (backend='hf' fails too); "
         "remove it from the model's config.json"),
        ("mlp_bias", True, not mlp_bias,
         f"TransformerLens's gated MLP has no gate or up bias; {use_hf}"),
    ]
    for field, value, is_reproduced, valid_and_fix in checks:
        if not is_reproduced:
            raise ValueError(f"{field}={value!r} in the {arch} config changes the forward pass "
                             "in a way the TransformerLens conversion does not reproduce, so its "
                             f"activations would differ from transformers'; {valid_and_fix}.")


def hooked_transformer_config(hf_config, n_ctx: int | None = None,
                              device: str = "cpu", dtype: torch.dtype = torch.float32,
                              architecture: str | None = None) -> HookedTransformerConfig:
    """The HookedTransformerConfig matching a Llama or Qwen2 HF config.

    Every field is handled as ``CONFIG_FIELD_POLICY`` says: reproduced, or refused.

    Args:
        hf_config: the HF model's config.
        n_ctx: sequence length TransformerLens precomputes its mask and RoPE for (defaults to the
            model's, capped at 8192 because it allocates an n_ctx x n_ctx mask); longer inputs
            still run, as TransformerLens extends both.
        device, dtype: as for the model.
        architecture: the HF class name, when the config does not record it (an unsaved model).

    Returns:
        The config for ``HookedTransformer``.

    Raises:
        ValueError: an architecture other than those in ``SUPPORTED_ARCHITECTURES``, or a config
            field whose value the conversion does not reproduce (``rope_scaling`` other than
            ``ROPE_TYPES``, ``hidden_act`` not in ``HIDDEN_ACTS``, ``partial_rotary_factor``,
            Llama's ``mlp_bias``); the message names the field.
    """
    arch = architecture or (hf_config.architectures or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"model architecture {arch!r} has no TransformerLens conversion here; "
                         f"supported: {SUPPORTED_ARCHITECTURES}. Use backend='hf' instead.")
    _refuse_what_would_differ(hf_config, arch)
    d_head = (getattr(hf_config, "head_dim", None)
              or hf_config.hidden_size // hf_config.num_attention_heads)
    fields = dict(
        d_model=hf_config.hidden_size, d_head=d_head, n_heads=hf_config.num_attention_heads,
        n_key_value_heads=hf_config.num_key_value_heads, d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=n_ctx or min(hf_config.max_position_embeddings, 8192),
        eps=hf_config.rms_norm_eps, d_vocab=hf_config.vocab_size,
        act_fn=HIDDEN_ACTS[hf_config.hidden_act],
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_head,
        rotary_adjacent_pairs=False, rotary_base=getattr(hf_config, "rope_theta", 10000.0),
        final_rms=True, gated_mlp=True, original_architecture=arch, device=device, dtype=dtype,
        default_prepend_bos=False, tokenizer_prepends_bos=False,
    )
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":  # Llama 3.1 (R1-Distill-Llama)
        fields.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=scaling["factor"],
                      NTK_by_parts_low_freq_factor=scaling["low_freq_factor"],
                      NTK_by_parts_high_freq_factor=scaling["high_freq_factor"],
                      NTK_original_ctx_len=scaling["original_max_position_embeddings"])
    layer_types = getattr(hf_config, "layer_types", None) or []
    if arch == "Qwen2ForCausalLM" and "sliding_attention" in layer_types:
        fields.update(use_local_attn=True, window_size=hf_config.sliding_window,
                      attn_types=["local" if kind == "sliding_attention" else "global"
                                  for kind in layer_types])
    return HookedTransformerConfig(**fields)


def _llama_attention_biases(hf_model, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """A Llama's q/k/v/o biases as TransformerLens parameters (its conversion writes zeros)."""
    state_dict = {}
    for layer, block in enumerate(hf_model.model.layers):
        attn, prefix = block.self_attn, f"blocks.{layer}.attn."
        state_dict[prefix + "b_Q"] = attn.q_proj.bias.reshape(cfg.n_heads, cfg.d_head)
        # n_key_value_heads is always set, so TransformerLens builds grouped-query attention
        state_dict[prefix + "_b_K"] = attn.k_proj.bias.reshape(cfg.n_key_value_heads, cfg.d_head)
        state_dict[prefix + "_b_V"] = attn.v_proj.bias.reshape(cfg.n_key_value_heads, cfg.d_head)
        state_dict[prefix + "b_O"] = attn.o_proj.bias
    return state_dict


def as_hooked_transformer(hf_model, tokenizer, n_ctx: int | None = None) -> HookedTransformer:
    """Convert a Llama or Qwen2 HF model into a HookedTransformer with the same logits.

    Weights are converted with TransformerLens's own conversion functions (plus a Llama's
    attention biases, which those drop) and loaded without processing (no LayerNorm folding or
    centring), so ``blocks.{L}.hook_resid_post`` equals the HF model's hidden state after layer L.
    A config the conversion would not reproduce is refused (see ``CONFIG_FIELD_POLICY``).

    Args:
        hf_model: a loaded ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``.
        tokenizer: its tokenizer (attached to the HookedTransformer, as SAEDashboard needs).
        n_ctx: see ``hooked_transformer_config``.

    Returns:
        The HookedTransformer in eval mode.

    Raises:
        ValueError: a tokenizer that was never saved (TransformerLens reloads it by its
            ``name_or_path``), or a config field the conversion does not reproduce (see
            ``hooked_transformer_config``).
    """
    if not tokenizer.name_or_path:
        raise ValueError("tokenizer has no name_or_path: TransformerLens reloads the tokenizer "
                         "from it. Save it with save_pretrained and load it from that directory.")
    param = next(hf_model.parameters())
    cfg = hooked_transformer_config(hf_model.config, n_ctx, device=str(param.device),
                                    dtype=param.dtype, architecture=type(hf_model).__name__)
    convert = {"LlamaForCausalLM": weight_conversions.convert_llama_weights,
               "Qwen2ForCausalLM": weight_conversions.convert_qwen2_weights}
    state_dict = convert[cfg.original_architecture](hf_model, cfg)
    if cfg.original_architecture == "LlamaForCausalLM" and hf_model.config.attention_bias:
        state_dict.update(_llama_attention_biases(hf_model, cfg))
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    return model.eval()


def parse_hook_name(hook_name: str, n_layers: int) -> tuple[int, str]:
    """Split ``blocks.{L}.{kind}`` into ``(L, kind)``.

    Raises:
        ValueError: a name that is not a supported hook or a layer the model lacks.
    """
    match = re.fullmatch(r"blocks\.(\d+)\.(\w+)", hook_name)
    if not match or match.group(2) not in HOOK_KINDS:
        raise ValueError(f"hook_name={hook_name!r} is not a supported hook point; use "
                         f"blocks.{{layer}}.{{kind}} with kind in {HOOK_KINDS}.")
    layer = int(match.group(1))
    if layer >= n_layers:
        raise ValueError(f"hook_name={hook_name!r} is not in this model ({n_layers} layers). "
                         f"Use a layer from 0 to {n_layers - 1}, e.g. "
                         f"blocks.{n_layers - 1}.hook_resid_post.")
    return layer, match.group(2)


def sae_hook_name(sae, hook_name: str | None = None) -> str:
    """``hook_name``, or the SAE's own (``sae.cfg.metadata.hook_name``).

    Raises:
        ValueError: neither is set.
    """
    hook_name = hook_name or getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
    if not hook_name:
        raise ValueError("hook_name is None and the SAE records none (sae.cfg.metadata.hook_name);"
                         " pass hook_name='blocks.{layer}.hook_resid_post'.")
    return hook_name


def check_sae_fits(sae, n_layers: int, d_model: int, hook_name: str | None = None) -> str:
    """Check that ``sae`` reads a model of ``n_layers`` and ``d_model``; return its hook name.

    Args:
        sae: a SAELens SAE.
        n_layers, d_model: the model's size.
        hook_name: the hook point (the SAE's own, ``sae.cfg.metadata.hook_name``, when None).

    Raises:
        ValueError: no hook name, a hook point the model lacks, or ``sae.cfg.d_in != d_model``.
    """
    hook_name = sae_hook_name(sae, hook_name)
    parse_hook_name(hook_name, n_layers)
    if sae.cfg.d_in != d_model:
        raise ValueError(f"sae.cfg.d_in={sae.cfg.d_in} does not match the model's d_model="
                         f"{d_model}; load the SAE trained on this model's {hook_name} "
                         "(or retrain it with notebook 03).")
    return hook_name


def special_token_ids(tokenizer) -> tuple[int, ...]:
    """BOS, EOS and PAD ids of ``tokenizer``: the tokens the paper leaves out of statistics."""
    ids = (getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad"))
    return tuple(sorted({int(i) for i in ids if i is not None}))


def device_of(model) -> torch.device:
    """Where a model's weights live: a hooked model's (``.model``) or a module's; CPU when none."""
    try:
        return next(getattr(model, "model", model).parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def sae_on_model_device(sae, model):
    """Put ``sae`` where ``model``'s weights are, in place and once; a no-op when it is there.

    Every function that feeds a model's activations to an SAE calls this on entry, so a model on
    ``cuda`` and an SAE loaded on the CPU (``SAE.load_from_disk``'s default) meet on the GPU and
    no hook or batch loop moves anything. The move is logged; loading the SAE on the model's
    device (``SAE.load_from_disk(path, device=model_device)``) avoids it. The dtype is left as it
    is: SAELens's ``encode`` casts its input to the SAE's dtype.

    Args:
        sae: a SAELens SAE (moved with ``sae.to``, so the caller's object moves).
        model: a hooked model (``load_hooked``), or a torch module such as a HookedTransformer.

    Returns:
        ``sae``, on the model's device.

    Raises:
        ValueError: the SAE is on the meta device and the model is not (it has no weights to
            move), naming both devices.
    """
    device, current = device_of(model), sae.W_dec.device
    if current == device:
        return sae
    if current.type == "meta":
        raise ValueError(f"the SAE is on {current} and the model on {device}: an SAE on the meta "
                         "device has no weights to move. Load it where the model is: "
                         f"SAE.load_from_disk(path, device={str(device)!r}).")
    log.info("moving the SAE from %s to the model's device %s (load it with device=%r to skip "
             "this)", current, device, str(device))
    return sae.to(device)


def remove_hooks(handles) -> None:
    """Remove every hook handle (``torch.utils.hooks.RemovableHandle``)."""
    for handle in handles:
        handle.remove()


class HookedModel:
    """What both backends share: TransformerLens hook names and ``model(tokens)`` -> logits."""

    n_layers: int

    @property
    def hook_names(self) -> list[str]:
        return [f"blocks.{layer}.{kind}" for layer in range(self.n_layers) for kind in HOOK_KINDS]

    def __call__(self, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.forward(tokens, **kwargs)


class HFHookedModel(HookedModel):
    """A plain transformers causal LM with TransformerLens-named forward hooks.

    Example:
        >>> model = HFHookedModel(hf_model, tokenizer)  # doctest: +SKIP
        >>> logits, cache = model.run_with_cache(tokens, ["blocks.1.hook_resid_post"])  # doctest: +SKIP
    """

    backend = "hf"

    def __init__(self, hf_model, tokenizer):
        self.model = hf_model.eval()
        self.tokenizer = tokenizer
        self.n_layers = hf_model.config.num_hidden_layers
        self.d_model = hf_model.config.hidden_size
        self.layers = hf_model.model.layers

    def forward(self, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]`` for ``tokens`` ``[batch, pos]``."""
        return self.model(input_ids=tokens, use_cache=False, **kwargs).logits

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, HookFn]]) -> Iterator[HFHookedModel]:
        """Attach ``fn(activation, hook)`` hooks by TransformerLens name; removed on exit, always.

        A hook that returns a tensor replaces the activation, as in TransformerLens. Hooks at one
        point run in the order given.
        """
        handles = self.attach_hooks(fwd_hooks)
        try:
            yield self
        finally:
            remove_hooks(handles)

    def attach_hooks(self, fwd_hooks: list[tuple[str, HookFn]]) -> list:
        """Attach every hook (see ``hooks``) and return their handles; all or none.

        Raises:
            ValueError: a hook name the model lacks (see ``parse_hook_name``); the hooks attached
                before it are removed first.
        """
        handles = []
        try:
            for name, fn in fwd_hooks:
                handles.append(self._attach(name, fn))
        except BaseException:
            remove_hooks(handles)
            raise
        return handles

    def run_with_cache(self, tokens: torch.Tensor, names: list[str], **kwargs
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the activations at ``names`` (detached)."""
        cache: dict[str, torch.Tensor] = {}

        def save(activation, hook):
            cache[hook.name] = activation.detach()

        with self.hooks([(name, save) for name in names]):
            logits = self.forward(tokens, **kwargs)
        return logits, cache

    def _attach(self, name: str, fn: HookFn):
        layer, kind = parse_hook_name(name, self.n_layers)
        hook = types.SimpleNamespace(name=name)
        block = self.layers[layer]
        if kind == "hook_resid_pre":
            def pre(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                out = fn(hidden, hook)
                if out is None:
                    return None
                if args:
                    return (out, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": out}
            return block.register_forward_pre_hook(pre, with_kwargs=True)
        module = {"hook_resid_post": block, "hook_attn_out": block.self_attn,
                  "hook_mlp_out": block.mlp}[kind]

        def post(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            out = fn(hidden, hook)
            if out is None:
                return None
            return (out, *output[1:]) if isinstance(output, tuple) else out
        return module.register_forward_hook(post)


class TLHookedModel(HookedModel):
    """A HookedTransformer behind the same small interface as ``HFHookedModel``."""

    backend = "transformer_lens"

    def __init__(self, model: HookedTransformer):
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.n_layers = model.cfg.n_layers
        self.d_model = model.cfg.d_model

    def forward(self, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.model(tokens, **kwargs)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, HookFn]]) -> Iterator[TLHookedModel]:
        """TransformerLens's ``hooks``, after checking every name (see ``parse_hook_name``)."""
        self.check_hook_names([name for name, _ in fwd_hooks])
        with self.model.hooks(fwd_hooks=fwd_hooks):
            yield self

    def check_hook_names(self, names: list[str]) -> None:
        """Raise ``ValueError`` for the first name that is not a supported hook of this model."""
        for name in names:
            parse_hook_name(name, self.n_layers)

    def run_with_cache(self, tokens, names, **kwargs):
        """Logits and the activations at ``names`` (see ``HFHookedModel.run_with_cache``)."""
        self.check_hook_names(names)
        logits, cache = self.model.run_with_cache(tokens, names_filter=list(names), **kwargs)
        return logits, {name: cache[name] for name in names}


def load_hooked(path: str | Path, backend: str = "transformer_lens", n_ctx: int | None = None,
                device: str = "cpu", dtype: str | torch.dtype = torch.float32):
    """Load a saved model behind the hook interface, on either backend.

    Args:
        path: a ``save_pretrained`` directory (or hub id).
        backend: ``"transformer_lens"`` or ``"hf"``.
        n_ctx: TransformerLens context length (see ``hooked_transformer_config``).
        device: where the model runs (e.g. "cuda" for real models).
        dtype: weights' dtype, a torch dtype or its name ("bfloat16").

    Returns:
        A ``TLHookedModel`` or ``HFHookedModel``.

    Raises:
        ValueError: an unknown backend, or (backend "transformer_lens") a config field the
            conversion does not reproduce, named in the message (see ``CONFIG_FIELD_POLICY``).
    """
    if backend not in ("transformer_lens", "hf"):
        raise ValueError(f"backend={backend!r} is unknown; use 'transformer_lens' or 'hf'.")
    hf_model, tokenizer = load_hf_model(path, dtype=dtype, device=device)
    if backend == "hf":
        return HFHookedModel(hf_model, tokenizer)
    return TLHookedModel(as_hooked_transformer(hf_model, tokenizer, n_ctx))
