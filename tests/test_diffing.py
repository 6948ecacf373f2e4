"""Model diffing: feature tables, decoder cosines and the SAE adapted to the base model."""

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from reasonlens import diffing
from reasonlens import sae as sae_mod


def _scores(values, mu_pos=None):
    n = len(values)
    return pd.DataFrame({"feature_idx": range(n), "reason_score": values,
                         "mu_pos": values if mu_pos is None else mu_pos,
                         "mu_neg": [0.1] * n, "density": [0.2] * n, "max_activation": [1.0] * n})


def test_feature_diff_reports_ranks_and_ratios_in_both_models():
    reasoning, base = _scores([0.9, 0.1, 0.5]), _scores([0.05, 0.4, 0.5])
    diff = diffing.feature_diff(reasoning, base, [0, 2])
    assert diff.feature_idx.tolist() == [0, 2]
    # Ranks are among all three features, 1 = highest score, as integers.
    assert diff.rank_reasoning.tolist() == [1, 2] and diff.rank_base.tolist() == [3, 1]
    assert diff.rank_reasoning.dtype.kind == "i" and diff.rank_base.dtype.kind == "i"
    assert diff.mu_pos_ratio.tolist() == pytest.approx([0.05 / 0.9, 1.0])
    assert diff.reason_score_base.tolist() == [0.05, 0.5]
    assert diff.reason_score_reasoning.tolist() == [0.9, 0.5]


def test_tied_scores_share_the_best_rank():
    # Scores 0.7, 0.7, 0.2, 0.7: the three tied features all rank 1 ("min"), the last one 4.
    reasoning = _scores([0.7, 0.7, 0.2, 0.7])
    diff = diffing.feature_diff(reasoning, _scores([0.1, 0.2, 0.3, 0.4]), [0, 2, 3])
    assert diff.rank_reasoning.tolist() == [1, 4, 1]
    assert diff.rank_base.tolist() == [4, 2, 1]


def test_ratio_is_undefined_where_the_feature_is_silent_on_reasoning_words():
    reasoning = _scores([0.3, 0.2], mu_pos=[0.0, 0.5])
    base = _scores([0.1, 0.2], mu_pos=[0.4, 0.25])
    diff = diffing.feature_diff(reasoning, base, [0, 1])
    assert math.isnan(diff.mu_pos_ratio[0])  # 0.4 / 0 is no ratio, not inf
    assert diff.mu_pos_ratio[1] == pytest.approx(0.5)


def test_feature_diff_errors():
    reasoning = _scores([0.9, 0.1, 0.5])
    with pytest.raises(ValueError, match=r"reasoning has 3 features and base 1.*same SAE "
                                         r"\(or with its fine-tune, adapt_sae\)\.$"):
        diffing.feature_diff(reasoning, _scores([0.1]), [0])
    with pytest.raises(ValueError, match=r"features \[7\] are not in the scores \(d_sae=3\)"):
        diffing.feature_diff(reasoning, _scores([0.1, 0.2, 0.3]), [7])


def test_decoder_cosine_compares_directions_not_norms(sae):
    other = copy.deepcopy(sae)
    with torch.no_grad():
        other.W_dec[0] *= 3.0  # longer, same direction
        other.W_dec[1] *= -1.0  # reversed
        other.W_dec[2] = torch.randn(32, generator=torch.Generator().manual_seed(0))
    cosine = diffing.decoder_cosine(sae, other)
    assert cosine.shape == (64,)
    np.testing.assert_allclose(cosine[[0, 1]], [1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(cosine[3:], 1.0, atol=1e-6)
    expected = torch.nn.functional.cosine_similarity(sae.W_dec[2], other.W_dec[2], dim=0).detach()
    assert cosine[2] == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match=r"decoders of shapes \(64, 32\) and \(32, 32\): compare "
                                         r"an SAE with its own fine-tune \(adapt_sae\)\.$"):
        diffing.decoder_cosine(sae, type(sae)(type(sae.cfg)(d_in=32, d_sae=32)))


@pytest.fixture(scope="module")
def reasoning_sae(hooked, contexts):
    cfg = sae_mod.SAETrainConfig(hook_name="blocks.1.hook_resid_post", expansion_factor=2,
                                 l1_coefficient=1.0, training_tokens=20 * 128, batch_size=128,
                                 lr=1e-2, context_size=64, store_batch_size_prompts=4,
                                 lr_decay_steps=10)
    return sae_mod.train_sae(hooked, contexts, cfg)[0], cfg


def test_the_adapted_sae_reconstructs_the_base_model_and_keeps_its_features(
        reasoning_sae, hooked, fitted, contexts):
    """``fitted`` plays the base model: the same architecture, weights moved by training."""
    sae, cfg = reasoning_sae
    transfer = sae_mod.evaluate_sae(fitted, sae, contexts).explained_variance
    adapted, history = diffing.adapt_sae(fitted, sae, contexts, cfg, 10 * 128)
    assert history.step.iloc[-1] == 10  # training_tokens // batch_size steps
    assert sae_mod.evaluate_sae(fitted, adapted, contexts).explained_variance > transfer + 0.1
    # Fine-tuned, not retrained: most features stay nearer their own old direction than any other
    # feature's (about 1 in 64 would by chance), so feature k means the same feature in both.
    unit = lambda w: w / w.norm(dim=1, keepdim=True)  # noqa: E731
    cross = unit(sae.W_dec.detach()) @ unit(adapted.W_dec.detach()).T
    np.testing.assert_allclose(cross.diagonal().numpy(), diffing.decoder_cosine(sae, adapted),
                               atol=1e-6)
    assert (cross.diagonal() >= cross.max(dim=1).values - 1e-6).float().mean() > 0.5


def test_the_fine_tune_keeps_the_sae_settings_but_its_l1_warm_up(reasoning_sae):
    _, cfg = reasoning_sae
    cfg = sae_mod.SAETrainConfig.from_dict({**cfg.to_dict(), "lr_warm_up_steps": 4,
                                            "l1_warm_up_steps": 7, "n_checkpoints": 2,
                                            "normalize_activations": "expected_average_only_in"})
    # 6 steps: the lr warm-up (4) and decay (10) are cut to 3 each; normalisation is kept
    assert diffing.adapt_config(cfg, 6 * 128) == dataclasses.replace(
        cfg, training_tokens=6 * 128, lr_warm_up_steps=3, l1_warm_up_steps=0, n_checkpoints=0,
        lr_decay_steps=3)
    longer = diffing.adapt_config(cfg, 40 * 128)
    assert (longer.lr_warm_up_steps, longer.lr_decay_steps) == (4, 10)  # kept where they fit
    with pytest.raises(ValueError, match="training_tokens=64"):
        diffing.adapt_config(cfg, 64)  # less than one batch of 128


def test_a_normalised_sae_fine_tuned_on_its_own_model_stays_as_it_was(hooked, contexts):
    """Saved SAEs have the normalisation folded in; training again must unfold it first, or the
    first steps would read scaled activations with raw-unit weights and wreck the SAE."""
    loud = copy.deepcopy(hooked)  # residual norms far from sqrt(d_model): a scale far from 1
    with torch.no_grad():
        loud.model.embed.W_E.mul_(20.0)
    cfg = sae_mod.SAETrainConfig(hook_name="blocks.1.hook_resid_post", expansion_factor=2,
                                 l1_coefficient=1.0, training_tokens=20 * 128, batch_size=128,
                                 lr=1e-2, context_size=64, store_batch_size_prompts=4,
                                 normalize_activations="expected_average_only_in",
                                 n_batches_for_norm_estimate=4)
    sae = sae_mod.train_sae(loud, contexts, cfg)[0]
    before = sae_mod.evaluate_sae(loud, sae, contexts)
    again, history = diffing.adapt_sae(loud, sae, contexts, dataclasses.replace(cfg, lr=1e-6),
                                       2 * 128)
    after = sae_mod.evaluate_sae(loud, again, contexts)
    assert again.cfg.normalize_activations == "none"  # folded back: it reads raw activations
    assert after.explained_variance == pytest.approx(before.explained_variance, abs=1e-3)
    assert after.mean_l0 == pytest.approx(before.mean_l0, rel=1e-2)
    # The first step's loss is the trained SAE's, in the units it was trained in.
    assert history.mse_loss.iloc[0] < 0.5 * sae_mod.train_sae(
        loud, contexts, dataclasses.replace(cfg, training_tokens=128))[1].mse_loss.iloc[0]
