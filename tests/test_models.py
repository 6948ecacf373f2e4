import pytest
import torch
from helpers import build_toy_model_config
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonlens import models


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


@pytest.mark.parametrize("kind", ["hook_resid_pre", "hook_resid_post", "hook_mlp_out"])
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


@pytest.mark.parametrize("name", ["blocks.9.hook_resid_post", "blocks.0.hook_resid_mid",
                                  "embed.hook"])
def test_a_hook_point_the_model_lacks_is_a_clear_error(both_backends, tokens, name):
    for model in both_backends:
        with pytest.raises(ValueError, match="hook_name"):
            with model.hooks([(name, lambda a, h: a)]):
                model(tokens)


def test_qwen2_checkpoints_convert_too(tmp_path, tokenizer):
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tl = models.load_hooked(tmp_path, backend="transformer_lens")
    hf = models.load_hooked(tmp_path, backend="hf")
    tokens = torch.randint(0, len(tokenizer), (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(tl(tokens), hf(tokens), atol=1e-5, rtol=1e-5)


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
