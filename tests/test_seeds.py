"""Seeds belong to the code: every random draw in reasonlens takes its seed from a config or a
``seed`` argument, never from the global RNG state (issue 17, item 3).

Each test runs a seeded function twice with the same seed, scrambling Python's, NumPy's and
torch's global RNGs in between, and expects identical results; then once with another seed, and
expects a different one. Functions that must seed torch's global RNG (HF ``generate``, model and
SAE initialisation) must also hand the caller's RNG state back unchanged.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import helpers
from helpers import scramble_global_rngs
from reasonlens import data, evaluation, injection, lm_training, models, steering
from reasonlens import constants as K
from reasonlens import sae as sae_mod
from reasonlens.step_sae.model import StepSAE, StepSAEConfig
from reasonlens.world import generate_world, prompt


def twice_and_other(fn, seed: int, other_seed: int):
    """``fn(seed)`` under two different global RNG states, and ``fn(other_seed)``."""
    scramble_global_rngs(11)
    first = fn(seed)
    scramble_global_rngs(22)
    again = fn(seed)
    scramble_global_rngs(11)
    other = fn(other_seed)
    return first, again, other


def assert_leaves_global_rng_alone(fn):
    """``fn()`` neither reads nor moves torch's global RNG: the next draw is the one it was."""
    scramble_global_rngs(5)
    expected = torch.rand(4)
    scramble_global_rngs(5)
    fn()
    assert torch.equal(torch.rand(4), expected)


def test_world_depends_on_its_seed_alone():
    first, again, other = twice_and_other(
        lambda seed: generate_world(helpers.build_world_config(n_problems=12, seed=seed)), 3, 4)
    pd.testing.assert_frame_equal(first.documents, again.documents)
    pd.testing.assert_frame_equal(first.steps, again.steps)
    assert list(first.documents["text"]) != list(other.documents["text"])


def test_context_packing_order_depends_on_its_seed_alone():
    token_lists = [[i] * 4 for i in range(40)]  # document i is four copies of token i
    first, again, other = twice_and_other(
        lambda seed: data.pack_contexts(token_lists, helpers.build_context_config(
            context_size=8, seed=seed)), 0, 1)
    first, again, other = (np.stack(frame["tokens"]) for frame in (first, again, other))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # every document is packed once, whole, whatever the order (40 * 4 tokens in rows of 8)
    assert first.shape == (20, 8)
    assert sorted(first.ravel().tolist()) == sorted(sum(token_lists, []))


def test_real_document_splits_depend_on_their_seed_alone(tokenizer):
    mixed = pd.DataFrame({"text": [f"text {i}" for i in range(50)], "kind": "chat"})
    first, again, other = twice_and_other(
        lambda seed: data.real_documents(mixed, tokenizer, seed=seed), 0, 1)
    pd.testing.assert_frame_equal(first, again)
    assert list(first["split"]) != list(other["split"])
    assert first["split"].value_counts().to_dict() == {"train": 40, "val": 5, "test": 5}


def test_word_injection_depends_on_its_seed_alone():
    text = f"{K.USER}What is 2 + 3?{K.ASSISTANT}The answer is 5."
    first, again, other = twice_and_other(
        lambda seed: injection.inject_words(text, 6, seed), 0, 1)
    assert first == again != other


def test_bootstrap_interval_depends_on_its_seed_alone():
    values = np.arange(20.0) % 7
    first, again, other = twice_and_other(
        lambda seed: evaluation.bootstrap_interval(values, n_boot=200, seed=seed), 0, 1)
    assert first == again
    assert first[0] == other[0] == pytest.approx(values.mean())  # the mean is not resampled
    assert first[1:] != other[1:]


def test_density_matched_controls_depend_on_their_seed_alone():
    scores = pd.DataFrame({"feature_idx": range(40), "density": np.linspace(0.01, 0.4, 40)})
    draws = [steering.density_matched_controls(scores, [5, 20], seed=seed, n_neighbours=8)
             for seed in range(6)]
    first, again, _ = twice_and_other(
        lambda seed: steering.density_matched_controls(scores, [5, 20], seed=seed,
                                                       n_neighbours=8), 0, 1)
    assert first == again == draws[0]
    assert len({tuple(d) for d in draws}) > 1


def test_toy_model_initialisation_depends_on_its_seed_alone(tokenizer):
    cfg = helpers.build_toy_model_config()
    first, again, other = twice_and_other(
        lambda seed: models.build_toy_model(cfg, tokenizer, seed=seed).state_dict(), 0, 1)
    for name, weight in first.items():
        assert torch.equal(weight, again[name]), name
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])
    assert_leaves_global_rng_alone(lambda: models.build_toy_model(cfg, tokenizer, seed=0))


def test_lm_training_depends_on_its_seed_alone(tokenizer):
    tokens = torch.randint(len(tokenizer), (12, 16), generator=torch.Generator().manual_seed(0))
    model_cfg = helpers.build_toy_model_config(n_layers=1)

    def train(seed):
        model = models.build_toy_model(model_cfg, tokenizer, seed=0)
        history = lm_training.train_lm(model, tokens, tokens[:4],
                                       helpers.build_lm_train_config(n_steps=3, seed=seed),
                                       desc="test")
        return history["train_loss"].tolist()

    first, again, other = twice_and_other(train, 0, 1)
    assert first == again
    assert first[0] != other[0]  # another seed draws another first batch


def test_sampled_generation_depends_on_its_seed_alone(toy_model, tokenizer):
    prompts = [prompt("What is 2 + 3?", reasoning=True), prompt("Hello", reasoning=False)]

    def sample(seed):
        return evaluation.generate(toy_model, tokenizer, prompts, max_new_tokens=6,
                                   temperature=1.0, seed=seed, return_ids=True)[1]

    first, again, other = twice_and_other(sample, 0, 1)
    assert first == again != other
    assert_leaves_global_rng_alone(lambda: sample(0))


def test_step_sae_initialisation_depends_on_its_seed_alone(toy_model, tokenizer):
    cfg = StepSAEConfig(n_latents=16, d_projection=16)

    def build(seed):
        step_tokenizer = copy.deepcopy(tokenizer)  # build adds <sep> to it
        return StepSAE.build(toy_model, step_tokenizer, cfg, seed=seed).state_dict()

    first, again, other = twice_and_other(build, 0, 1)
    for name, weight in first.items():
        assert torch.equal(weight, again[name]), name
    assert not torch.equal(first["W_enc.weight"], other["W_enc.weight"])
    # the <sep> row is new, so random; every other embedding row is the LM's own
    sep_rows = [name for name in first if name.endswith("embed_tokens.weight")]
    assert sep_rows and all(not torch.equal(first[n][-1], other[n][-1]) for n in sep_rows)
    assert all(torch.equal(first[n][:-1], other[n][:-1]) for n in sep_rows)
    assert_leaves_global_rng_alone(lambda: build(0))


def test_sae_training_depends_on_its_seed_alone(hooked, world, tokenizer):
    texts = data.mix_documents(world.documents, "train", data.MIXES["reasoning"])
    frame = data.pack_contexts(data.tokenize(tokenizer, texts), helpers.build_context_config())
    contexts = data.contexts_tensor(frame)[:8]

    def train(seed):
        cfg = sae_mod.SAETrainConfig(
            hook_name="blocks.1.hook_resid_post", expansion_factor=2, training_tokens=2 * 128,
            batch_size=128, context_size=64, store_batch_size_prompts=4, seed=seed)
        return sae_mod.train_sae(hooked, contexts, cfg)[0].W_enc.detach().clone()

    first, again, other = twice_and_other(train, 0, 1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert_leaves_global_rng_alone(lambda: train(0))
