import copy
import logging

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from helpers import build_toy_model_config
from reasonlens import models

# A tiny Llama/Qwen2 shape: head_dim 16 gives llama3 RoPE all three frequency bands (below).
TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
# Llama 3.1's RoPE scaled down: with head_dim 16 (wavelengths 6.3, 19.9, 62.8, ...) the first pair
# is a high frequency (kept), the second a medium one (smoothed), the rest low ones (divided by 8).
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


@pytest.fixture(scope="module")
def tokens(world, tokenizer):
    texts = world.documents.text.tolist()[:3]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    width = min(len(i) for i in ids)
    return torch.tensor([i[:width] for i in ids])


@pytest.fixture(scope="module")
def both_backends(saved_toy_model):
    return (models.load_hooked(saved_toy_model, backend="transformer_lens"),
            models.load_hooked(saved_toy_model, backend="hf"))


def test_transformer_lens_and_hf_give_the_same_logits(both_backends, tokens):
    tl, hf = both_backends
    with torch.no_grad():
        torch.testing.assert_close(tl(tokens), hf(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", models.HOOK_KINDS)
def test_backends_agree_at_every_hook_point(both_backends, tokens, kind):
    tl, hf = both_backends
    names = [f"blocks.{layer}.{kind}" for layer in range(tl.n_layers)]
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(tokens, names)
        _, hf_cache = hf.run_with_cache(tokens, names)
    for name in names:
        assert tl_cache[name].shape == (*tokens.shape, tl.d_model)
        torch.testing.assert_close(tl_cache[name], hf_cache[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", models.HOOK_KINDS)
def test_an_editing_hook_changes_both_backends_alike_and_is_removed(both_backends, tokens, kind):
    tl, hf = both_backends
    name = f"blocks.0.{kind}"

    def double(activation, hook):
        assert hook.name == name
        return activation * 2

    with torch.no_grad():
        clean = hf(tokens)
        outs = []
        for model in (tl, hf):
            with model.hooks([(name, double)]):
                outs.append(model(tokens))
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(outs[1], clean)
        torch.testing.assert_close(hf(tokens), clean)  # removed on exit
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in hf.layers)


def test_hooks_are_removed_when_the_forward_raises(both_backends, tokens):
    tl, hf = both_backends

    def boom(activation, hook):
        raise RuntimeError("boom")

    for model in (tl, hf):
        with pytest.raises(RuntimeError, match="boom"):
            with model.hooks([("blocks.1.hook_resid_post", boom)]):
                model(tokens)
        model(tokens)  # no hook left behind
    assert not any(m._forward_hooks for m in hf.model.modules())
    assert not any(hp.fwd_hooks for hp in tl.model.hook_dict.values())


def test_hf_run_with_cache_reads_the_residual_stream_transformers_reports(both_backends, tokens):
    """The oracle: transformers' own hidden states (hidden_states[L] enters layer L)."""
    _, hf = both_backends
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"]
    logits, cache = hf.run_with_cache(tokens, names)  # with gradients on: the cache is detached
    out = hf.model(input_ids=tokens, output_hidden_states=True)
    assert sorted(cache) == sorted(names) and not any(a.requires_grad for a in cache.values())
    torch.testing.assert_close(logits, out.logits)
    for name, expected in zip(names, out.hidden_states[:2] + out.hidden_states[1:2]):
        torch.testing.assert_close(cache[name], expected)


def test_run_with_cache_passes_the_attention_mask_on(both_backends, tokens):
    mask = torch.ones_like(tokens)
    mask[:, :2] = 0  # left padding
    name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        for model in both_backends:
            logits, cache = model.run_with_cache(tokens, [name], attention_mask=mask)
            _, unmasked = model.run_with_cache(tokens, [name])
            torch.testing.assert_close(logits, model(tokens, attention_mask=mask))
            assert not torch.allclose(cache[name][:, 2:], unmasked[name][:, 2:], atol=1e-3)


def test_hook_names_list_every_layer_and_kind_in_order(both_backends):
    for model in both_backends:
        assert model.n_layers == 2 and model.d_model == 32
        assert model.hook_names == [
            "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.0.hook_attn_out",
            "blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post",
            "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]


def test_hf_pre_hooks_edit_the_hidden_state_however_the_layer_is_called(both_backends):
    """Positionally (as LlamaModel calls its layers) or by keyword, a resid_pre hook replaces the
    hidden state and leaves every other argument as it was; a hook returning None only reads."""
    _, hf = both_backends
    layer = hf.layers[0]
    hidden = torch.randn(1, 5, hf.d_model, generator=torch.Generator().manual_seed(0))
    rotary = hf.model.model.rotary_emb(hidden, torch.arange(5)[None])
    full = torch.zeros(1, 1, 5, 5)  # attend everywhere, unlike the causal default
    seen = []

    def double(activation, hook):
        seen.append(activation)
        return 2 * activation

    def read(activation, hook):
        seen.append(activation)

    with torch.no_grad():
        expected = layer(2 * hidden, full, position_embeddings=rotary)
        assert not torch.allclose(expected, layer(2 * hidden, position_embeddings=rotary))
        with hf.hooks([("blocks.0.hook_resid_pre", double)]):
            positional = layer(hidden, full, position_embeddings=rotary)
            by_keyword = layer(hidden_states=hidden, attention_mask=full,
                               position_embeddings=rotary)
        with hf.hooks([("blocks.0.hook_resid_pre", read)]):
            read_only = layer(hidden_states=hidden, attention_mask=full, position_embeddings=rotary)
    torch.testing.assert_close(positional, expected)
    torch.testing.assert_close(by_keyword, expected)
    torch.testing.assert_close(read_only, layer(hidden, full, position_embeddings=rotary))
    assert len(seen) == 3 and all(torch.equal(a, hidden) for a in seen)


def test_a_reading_hook_changes_nothing_on_either_backend(both_backends, tokens):
    with torch.no_grad():
        clean = both_backends[1](tokens)
        for model in both_backends:
            with model.hooks([(name, lambda activation, hook: None) for name in model.hook_names]):
                torch.testing.assert_close(model(tokens), clean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["blocks.9.hook_resid_post", "blocks.0.hook_resid_mid",
                                  "embed.hook"])
def test_a_hook_point_the_model_lacks_is_a_clear_error(both_backends, tokens, name):
    for model in both_backends:
        with pytest.raises(ValueError, match="hook_name"):
            with model.hooks([(name, lambda a, h: a)]):
                model(tokens)


def test_a_bad_hook_name_after_good_ones_leaves_no_hook_attached(both_backends, tokens):
    """All or none: the hooks attached before the bad name are removed before the error."""
    read = lambda activation, hook: None  # noqa: E731
    for model in both_backends:
        with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
            with model.hooks([("blocks.0.hook_resid_pre", read), ("blocks.1.hook_mlp_out", read),
                              ("blocks.9.hook_resid_post", read)]):
                pass
    tl, hf = both_backends
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in hf.model.modules())
    assert not any(hp.fwd_hooks for hp in tl.model.hook_dict.values())
    with pytest.raises(ValueError, match="hook_name='embed.hook'"):
        hf.attach_hooks([("blocks.0.hook_resid_pre", read), ("embed.hook", read)])
    assert not any(m._forward_pre_hooks for m in hf.model.modules())


@pytest.mark.parametrize("kind", models.HOOK_KINDS)
def test_hooks_at_one_point_run_in_the_order_given_and_see_each_others_edits(both_backends,
                                                                              tokens, kind):
    name = f"blocks.1.{kind}"
    for model in both_backends:
        seen = []
        hooks = [(name, lambda a, hook: seen.append(("first", a.clone()))),
                 (name, lambda a, hook: a + 1.0),
                 (name, lambda a, hook: seen.append(("last", a.clone())))]
        with torch.no_grad(), model.hooks(hooks):
            model(tokens)
        assert [label for label, _ in seen] == ["first", "last"]
        torch.testing.assert_close(seen[1][1], seen[0][1] + 1.0)


def test_parse_hook_name_accepts_layers_0_to_n_layers_minus_1():
    assert models.parse_hook_name("blocks.0.hook_resid_pre", 2) == (0, "hook_resid_pre")
    assert models.parse_hook_name("blocks.1.hook_mlp_out", 2) == (1, "hook_mlp_out")
    assert models.parse_hook_name("blocks.12.hook_attn_out", 13) == (12, "hook_attn_out")
    with pytest.raises(ValueError, match=r"not in this model \(2 layers\)\. Use a layer from 0 to "
                                         r"1, e\.g\. blocks\.1\.hook_resid_post\."):
        models.parse_hook_name("blocks.2.hook_resid_post", 2)
    with pytest.raises(ValueError, match=r"use blocks\.\{layer\}\.\{kind\} with kind in"):
        models.parse_hook_name("blocks.0.hook_resid_post.x", 2)


def test_the_sae_hook_name_is_the_one_given_else_the_saes_own(sae):
    assert models.sae_hook_name(sae) == "blocks.1.hook_resid_post"
    assert models.sae_hook_name(sae, "blocks.0.hook_mlp_out") == "blocks.0.hook_mlp_out"
    assert models.check_sae_fits(sae, 2, 32) == "blocks.1.hook_resid_post"
    assert models.check_sae_fits(sae, 2, 32, "blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match=r"hook_name='blocks.1.hook_resid_post' is not in this"):
        models.check_sae_fits(sae, 1, 32)
    with pytest.raises(ValueError, match=r"^sae.cfg.d_in=32 does not match the model's "
                                         r"d_model=64; load the SAE trained on this model's "
                                         r"blocks.1.hook_resid_post \(or retrain it with notebook "
                                         r"03\)\.$"):
        models.check_sae_fits(sae, 2, 64)
    anonymous = copy.deepcopy(sae)
    anonymous.cfg.metadata.hook_name = None
    from types import SimpleNamespace as NS
    for unnamed in (anonymous, NS(cfg=NS()), NS(cfg=NS(metadata=NS()))):  # also no metadata
        with pytest.raises(ValueError, match=r"^hook_name is None and the SAE records none "
                                             r"\(sae.cfg.metadata.hook_name\); pass "
                                             r"hook_name='blocks.\{layer\}.hook_resid_post'\.$"):
            models.sae_hook_name(unnamed)


def test_special_token_ids_are_bos_eos_and_pad_once_each(tokenizer):
    from types import SimpleNamespace as Tok
    assert models.special_token_ids(Tok(bos_token_id=7, eos_token_id=2, pad_token_id=2)) == (2, 7)
    assert models.special_token_ids(Tok(bos_token_id=None, eos_token_id=3, pad_token_id=0)) == \
        (0, 3)
    assert models.special_token_ids(Tok()) == ()
    expected = {tokenizer.convert_tokens_to_ids(t) for t in ("<bos>", "<eos>", "<pad>")}
    assert models.special_token_ids(tokenizer) == tuple(sorted(expected)) and len(expected) == 3


def test_device_of_is_the_cpu_for_what_has_no_weights():
    assert models.device_of(torch.nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert models.device_of(torch.nn.ReLU()) == torch.device("cpu")
    assert models.device_of(object()) == torch.device("cpu")


def test_load_hooked_passes_device_and_n_ctx_on(saved_toy_model):
    assert models.device_of(models.load_hooked(saved_toy_model, "hf", device="meta")) == \
        torch.device("meta")
    tl = models.load_hooked(saved_toy_model, n_ctx=16)  # TransformerLens is the default backend
    assert tl.backend == "transformer_lens" and tl.model.cfg.n_ctx == 16


def test_unsupported_architecture_and_backend_are_clear_errors(tokenizer, saved_toy_model):
    from transformers import GPT2Config
    cfg = GPT2Config(n_layer=1)
    cfg.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*backend='hf'"):
        models.hooked_transformer_config(cfg)
    with pytest.raises(ValueError, match="backend='jax'"):
        models.load_hooked(saved_toy_model, backend="jax")


def test_a_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_hf_model(tmp_path / "nope")


def test_a_model_path_may_start_at_home_or_here(saved_toy_model, tmp_path, monkeypatch):
    import shutil
    shutil.copytree(saved_toy_model, tmp_path / "toy")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for path in ("~/toy", "./toy"):
        model, tokenizer = models.load_hf_model(path)
        assert model.config.num_hidden_layers == 2 and not model.training
        assert len(tokenizer) == model.config.vocab_size
    with pytest.raises(FileNotFoundError, match=r"model path '~/nope' does not exist"):
        models.load_hf_model("~/nope")


def test_toy_config_validates_and_round_trips():
    cfg = build_toy_model_config()
    assert models.ToyModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_heads"):
        build_toy_model_config(d_model=30, n_heads=4)


def test_load_hooked_takes_a_dtype_by_name(saved_toy_model):
    model = models.load_hooked(saved_toy_model, backend="hf", dtype="bfloat16")
    assert next(model.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="model_dtype='float8'"):
        models.load_hooked(saved_toy_model, dtype="float8")


def test_an_unsaved_tokenizer_is_a_clear_error(toy_model, tokenizer):
    with pytest.raises(ValueError, match="name_or_path"):
        models.as_hooked_transformer(toy_model, tokenizer)


def tiny_hf_config(arch: str, vocab_size: int = 400, **overrides):
    return ARCHS[arch][0](vocab_size=vocab_size, **{**TINY, **overrides})


def tiny_hf_model(arch: str, vocab_size: int, **overrides):
    """A tiny HF model with every weight, bias and norm scale random (HF zero-initialises biases
    and sets norm scales to one, which would hide a bias or a scale the conversion dropped)."""
    model = ARCHS[arch][1](tiny_hf_config(arch, vocab_size, **overrides))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(float(name.endswith("norm.weight")) + 0.3 * torch.randn_like(param))
    return model.eval()


def hf_residuals(hf_model, tokens):
    """Logits and residual stream of a transformers Llama/Qwen2 under TransformerLens hook names,
    read with plain forward hooks (resid_pre and resid_mid are the inputs of the two RMSNorms)."""
    acts = {}

    def keep(name, of_input):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            acts[name] = args[0] if of_input else out
        return hook

    sites = [(hf_model.model.embed_tokens, "hook_embed", False)]
    for layer, block in enumerate(hf_model.model.layers):
        sites += [(block.input_layernorm, f"blocks.{layer}.hook_resid_pre", True),
                  (block.post_attention_layernorm, f"blocks.{layer}.hook_resid_mid", True),
                  (block, f"blocks.{layer}.hook_resid_post", False)]
    handles = [module.register_forward_hook(keep(name, of_input))
               for module, name, of_input in sites]
    try:
        with torch.no_grad():
            logits = hf_model(input_ids=tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, acts


def assert_converts_exactly(hf_model, tl_model, tokens):
    """The HookedTransformer equals ``hf_model`` at the embedding, every layer's resid_pre, mid and
    post, and the logits (float32 tolerance, relative to each activation's scale)."""
    hf_logits, hf_acts = hf_residuals(hf_model, tokens)
    with torch.no_grad():
        tl_logits, tl_cache = tl_model.run_with_cache(tokens, names_filter=list(hf_acts))
    assert len(hf_acts) == 1 + 3 * hf_model.config.num_hidden_layers
    for name, expected in [*hf_acts.items(), ("logits", hf_logits)]:
        actual = tl_logits if name == "logits" else tl_cache[name]
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


SUPPORTED_CONFIGS = {
    "llama": ("llama", {}),
    "llama-rope_theta": ("llama", {"rope_theta": 300.0}),
    "llama-rope_type_default": ("llama", {"rope_scaling": {"rope_type": "default"}}),
    "llama-llama3_rope": ("llama", {"rope_scaling": LLAMA3}),
    "llama-multi_head": ("llama", {"num_key_value_heads": 4}),
    "llama-head_dim": ("llama", {"head_dim": 8}),
    "llama-attention_bias": ("llama", {"attention_bias": True}),
    "llama-tie_word_embeddings": ("llama", {"tie_word_embeddings": True}),
    "llama-rms_norm_eps": ("llama", {"rms_norm_eps": 0.3}),
    "llama-pretraining_tp": ("llama", {"pretraining_tp": 2}),
    **{f"llama-{act}": ("llama", {"hidden_act": act}) for act in
       ("gelu", "gelu_python", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "swish")},
    "qwen2": ("qwen2", {}),
    "qwen2-sliding_window": ("qwen2", {"use_sliding_window": True, "sliding_window": 6,
                                       "max_window_layers": 1}),
    "qwen2-llama3_rope": ("qwen2", {"rope_scaling": LLAMA3}),
    "qwen2-tie_word_embeddings": ("qwen2", {"tie_word_embeddings": True}),
    "qwen2-head_dim": ("qwen2", {"head_dim": 8}),
    "qwen2-ignores_llama_biases": ("qwen2", {"attention_bias": False, "mlp_bias": True}),
}


@pytest.mark.parametrize("case", SUPPORTED_CONFIGS)
def test_a_supported_config_converts_exactly_at_every_hook_point(case, tmp_path, tokenizer):
    arch, overrides = SUPPORTED_CONFIGS[case]
    hf_model = tiny_hf_model(arch, len(tokenizer), **overrides)
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tl = models.load_hooked(tmp_path, backend="transformer_lens")
    tokens = torch.randint(0, len(tokenizer), (2, 24))  # longer than the sliding window (6)
    assert_converts_exactly(hf_model, tl.model, tokens)


@pytest.mark.parametrize("arch", ARCHS)
def test_llama3_rope_scaling_converts_exactly_also_past_n_ctx(arch, tmp_path, tokenizer):
    hf_model = tiny_hf_model(arch, len(tokenizer), rope_scaling=LLAMA3)
    plain = tiny_hf_model(arch, len(tokenizer))  # the same weights with unscaled RoPE
    tokens = torch.randint(0, len(tokenizer), (2, 40))  # past original_max_position_embeddings
    with torch.no_grad():
        assert (hf_model(tokens).logits - plain(tokens).logits).abs().max() > 1e-2
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tl = models.load_hooked(tmp_path, backend="transformer_lens", n_ctx=16)  # TL extends its RoPE
    assert tl.model.cfg.use_NTK_by_parts_rope
    assert_converts_exactly(hf_model, tl.model, tokens)


def test_qwen2_sliding_window_converts_exactly_where_it_matters(tmp_path, tokenizer):
    window = {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1}
    hf_model = tiny_hf_model("qwen2", len(tokenizer), **window)
    full = tiny_hf_model("qwen2", len(tokenizer))  # the same weights, full attention everywhere
    tokens = torch.randint(0, len(tokenizer), (2, 24))
    with torch.no_grad():
        gap = (hf_model(tokens).logits - full(tokens).logits).abs().amax(dim=(0, 2))
    assert gap[:6].max() < 1e-5 < gap[6:].min()  # the window (6) only matters past 6 tokens
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tl = models.load_hooked(tmp_path, backend="transformer_lens")
    assert tl.model.cfg.attn_types == ["global", "local"] and tl.model.cfg.window_size == 6
    assert_converts_exactly(hf_model, tl.model, tokens)


UNSUPPORTED_CONFIGS = {
    "llama-linear_rope": ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}},
                          "rope_scaling"),
    "llama-dynamic_rope": ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
                           "rope_scaling"),
    "llama-yarn_rope": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0,
                                                   "original_max_position_embeddings": 32}},
                        "rope_scaling"),
    "llama-longrope": ("llama", {"rope_scaling": {"rope_type": "longrope",
                                                  "short_factor": [1.0] * 8,
                                                  "long_factor": [2.0] * 8,
                                                  "original_max_position_embeddings": 32}},
                       "rope_scaling"),
    "qwen2-linear_rope": ("qwen2", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
                          "rope_scaling"),
    "llama-mlp_bias": ("llama", {"mlp_bias": True}, "mlp_bias"),
    "llama-relu2": ("llama", {"hidden_act": "relu2"}, "hidden_act"),
    "qwen2-quick_gelu": ("qwen2", {"hidden_act": "quick_gelu"}, "hidden_act"),
    "llama-partial_rotary_factor": ("llama", {"partial_rotary_factor": 0.5},
                                    "partial_rotary_factor"),
}


@pytest.mark.parametrize("case", UNSUPPORTED_CONFIGS)
def test_a_config_the_conversion_does_not_reproduce_is_refused_by_name(case):
    arch, overrides, field = UNSUPPORTED_CONFIGS[case]
    hf_config = tiny_hf_config(arch, **overrides)
    with pytest.raises(ValueError, match=rf"{field}=.*backend='hf'"):
        models.hooked_transformer_config(hf_config, architecture=ARCHS[arch][1].__name__)


def test_load_hooked_refuses_linear_rope_scaling_but_the_hf_backend_loads_it(tmp_path, tokenizer):
    tiny_hf_model("llama", len(tokenizer),
                  rope_scaling={"type": "linear", "factor": 2.0}).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"rope_scaling=.*'linear'.*\('default', 'llama3'\)"):
        models.load_hooked(tmp_path, backend="transformer_lens")
    assert models.load_hooked(tmp_path, backend="hf").model.config.rope_scaling["factor"] == 2.0


@pytest.mark.parametrize("config_cls", [LlamaConfig, Qwen2Config])
def test_every_model_config_field_has_a_conversion_policy(config_cls):
    fields = set(config_cls().to_dict()) - set(PretrainedConfig().to_dict())
    missing = fields - set(models.CONFIG_FIELD_POLICY)
    assert not missing, f"classify these {config_cls.__name__} fields in CONFIG_FIELD_POLICY"
    assert {"tie_word_embeddings", "partial_rotary_factor"} <= set(models.CONFIG_FIELD_POLICY)


# --- the SAE where the model is (the meta device stands in for a GPU) ---------------------------
def meta_hooked(path):
    """A TransformerLens hooked model whose weights are on the meta device."""
    model = models.load_hooked(path, backend="transformer_lens")
    model.model.to("meta")
    return model


def test_device_of_reads_a_hooked_model_and_a_bare_hooked_transformer(saved_toy_model):
    model = meta_hooked(saved_toy_model)
    assert models.device_of(model) == torch.device("meta")
    assert models.device_of(model.model) == torch.device("meta")  # what dashboards and evals get


def test_an_sae_on_the_cpu_moves_to_the_models_device_once_and_says_so(saved_toy_model, sae,
                                                                          caplog):
    model, own = meta_hooked(saved_toy_model), copy.deepcopy(sae)  # as SAE.load_from_disk leaves it
    with caplog.at_level(logging.INFO, logger="reasonlens.models"):
        first = models.sae_on_model_device(own, model)
        second = models.sae_on_model_device(own, model)
    assert first is own and second is own
    assert {p.device for p in own.parameters()} == {torch.device("meta")}
    assert own.device == torch.device("meta") and own.cfg.device == "meta"  # SAELens's record
    moves = [r.getMessage() for r in caplog.records if "moving the SAE" in r.getMessage()]
    assert moves == ["moving the SAE from cpu to the model's device meta (load it with "
                     "device='meta' to skip this)"]


def test_an_sae_already_on_the_models_device_is_left_as_it_is(saved_toy_model, sae, caplog):
    model, own = models.load_hooked(saved_toy_model, backend="hf"), copy.deepcopy(sae)
    weights = own.W_dec.data_ptr()
    with caplog.at_level(logging.INFO, logger="reasonlens.models"):
        assert models.sae_on_model_device(own, model) is own
    assert own.W_dec.data_ptr() == weights and not caplog.records


def test_an_sae_without_weights_is_refused_naming_both_devices(saved_toy_model, sae):
    model = models.load_hooked(saved_toy_model, backend="hf")
    with pytest.raises(ValueError, match=r"^the SAE is on meta and the model on cpu: an SAE on "
                                         r"the meta device has no weights to move\. Load it where "
                                         r"the model is: SAE.load_from_disk\(path, "
                                         r"device='cpu'\)\.$"):
        models.sae_on_model_device(copy.deepcopy(sae).to("meta"), model)
