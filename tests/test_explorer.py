"""Tests for reasonlens.explorer: the feature explorer's views and its widget, without a browser
(and one page in headless Chromium, to check that a ``<script>`` token does not run)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from reasonlens import data, explorer, models, scoring

HOOK = "blocks.1.hook_resid_post"
EVIL = "<script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def tl_model(saved_toy_model):
    return models.load_hooked(saved_toy_model, backend="transformer_lens")


@pytest.fixture(scope="module")
def tokens(world, tokenizer):
    """Six 48-token contexts of reasoning traces (they hold the reasoning words)."""
    texts = world.documents.query("kind == 'trace'")["text"].head(12).tolist()
    ids = [t for seq in data.tokenize(tokenizer, texts) for t in seq]
    return torch.tensor(ids[:6 * 48]).reshape(6, 48)


@pytest.fixture(scope="module")
def scores(tl_model, sae, tokens):
    cfg = scoring.ReasonScoreConfig(hook_name=HOOK, batch_size=4)
    return scoring.reason_score(tl_model, sae, tokens, cfg, progress=False)[0]


@pytest.fixture(scope="module")
def top(scores):
    return scores.nlargest(4, "reason_score").feature_idx.tolist()


@pytest.fixture(scope="module")
def ex(tl_model, sae, tokens, scores, top):
    return explorer.FeatureExplorer(tl_model, sae, tokens, scores, top, n_contexts=3,
                                    window=(5, 2), n_logits=4, batch_size=4, progress=False)


def plain_activations(tl_model, sae, tokens: torch.Tensor, feature_idx: int) -> torch.Tensor:
    """``[n_contexts, pos]`` activations of one feature from the raw SAE weights, with the decoder
    norm folded in by hand: ReLU((x - b_dec) . W_enc[:, f] + b_enc[f]) * ||W_dec[f]||."""
    with torch.no_grad():
        _, cache = tl_model.model.run_with_cache(tokens, names_filter=HOOK)  # TL itself
        pre = (cache[HOOK] - sae.b_dec) @ sae.W_enc[:, feature_idx] + sae.b_enc[feature_idx]
        return torch.relu(pre) * sae.W_dec[feature_idx].norm()


def test_max_activations_match_reason_score(ex, scores, top):
    maxima = ex.max_activations(top)
    expected = scores.set_index("feature_idx").loc[top].max_activation.to_numpy()
    np.testing.assert_allclose(maxima.max_activation.to_numpy(), expected, rtol=1e-5)
    row = maxima.iloc[0]
    assert ex.activations(top[0])[row.context_idx, row.position] == pytest.approx(
        row.max_activation)
    assert row.token == ex.tokenizer.decode([int(ex.tokens[row.context_idx, row.position])])


def test_activations_of_a_feature_outside_the_top_are_computed_on_demand(ex, tl_model, sae,
                                                                         tokens, top):
    other = next(f for f in range(sae.cfg.d_sae) if f not in top)
    acts = ex.activations(other)
    expected = plain_activations(tl_model, sae, tokens, other) * ex.keep
    assert (expected > 0).any() and not ex.keep.all()  # the check below can see both mistakes
    np.testing.assert_allclose(acts.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_top_contexts_are_the_best_contexts_with_their_windows(ex, top, tl_model, sae, tokens):
    acts = plain_activations(tl_model, sae, tokens, top[0]) * ex.keep
    best = acts.max(1).values
    expected_order = [c for c in best.argsort(descending=True).tolist() if best[c] > 0][:3]
    contexts = ex.top_contexts(top[0])
    assert contexts.context_idx.tolist() == expected_order
    np.testing.assert_allclose(contexts.max_activation, best[expected_order], rtol=1e-4)
    for row in contexts.itertuples():
        p = int(acts[row.context_idx].argmax())
        lo, hi = max(0, p - 5), min(48, p + 3)  # window (5, 2), clipped at the context's edges
        assert (row.position, row.mark) == (p, p - lo)
        np.testing.assert_allclose(row.values, acts[row.context_idx, lo:hi], rtol=1e-4,
                                   atol=1e-6)
        assert row.tokens == [ex.tokenizer.decode([int(t)]) for t in tokens[row.context_idx, lo:hi]]


def test_logit_effects_are_the_decoder_row_through_the_unembedding(ex, top):
    effects = ex.logit_effects(top[0])
    logits = ex.sae.W_dec[top[0]].detach() @ ex.W_U
    promoted = effects[effects.effect == "promotes"]
    suppressed = effects[effects.effect == "suppresses"]
    assert promoted.token_id.tolist() == logits.topk(4).indices.tolist()
    assert suppressed.token_id.tolist() == (-logits).topk(4).indices.tolist()
    assert promoted.logit_effect.iloc[0] == pytest.approx(float(logits.max()), rel=1e-5)


def test_word_profile_sums_to_one(scores, top):
    profile = explorer.word_profile(scores, top[0])
    assert profile.sum() == pytest.approx(1.0)
    row = scores.set_index("feature_idx").loc[top[0]]
    groups = [c for c in scores.columns if c.startswith("mu_") and c not in ("mu_pos", "mu_neg")]
    assert len(profile) == len(groups) and "let me" in profile.index
    assert profile["let me"] == pytest.approx(row["mu_let_me"] / row[groups].sum())


def test_prompt_activations_follow_the_tokenizer(ex, top, sae):
    tokens, values = ex.prompt_activations(top[0], "Wait, let me check.")
    assert "".join(tokens) == "Wait, let me check."
    ids = torch.tensor([ex.tokenizer.encode("Wait, let me check.", add_special_tokens=False)])
    expected = plain_activations(ex.model, sae, ids, top[0])[0]
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-6)


def test_token_strings_are_escaped_in_every_view(ex, top):
    page = explorer.token_heatmap_html([EVIL, "a&b", "\n"], [1.0, 0.5, 0.0], vmax=1.0, mark=0)
    assert "<script" not in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert "a&amp;b" in page and "\u23ce" in page
    assert "rgba(255, 112, 0,1.00)" in page and "rgba(255, 112, 0,0.50)" in page
    html = ex.prompt_html(top[0], f"Wait {EVIL}")
    assert "<script" not in html and "&lt;" in html
    table = explorer.table_html(pd.DataFrame({"token": [EVIL]}))
    assert "<script" not in table


def test_feature_html_holds_every_view(ex, top):
    page = ex.feature_html(top[1])
    assert f"id='rl-feature-{top[1]}'" in page and f"Feature {top[1]}" in page
    assert page.count("<img src='data:image/png;base64,") == 1
    assert "promotes" in page and "suppresses" in page
    assert page.count("class='rl-heatmap'") == len(ex.top_contexts(top[1]))


def test_bad_input_names_the_parameter(ex, tl_model, sae, tokens, scores):
    with pytest.raises(ValueError, match=r"feature_idx \[64\] are outside \[0, 64\)"):
        ex.summary_html(64)
    with pytest.raises(ValueError, match="text is empty"):
        ex.prompt_activations(0, "")
    with pytest.raises(ValueError, match="scores has 3 rows"):
        explorer.FeatureExplorer(tl_model, sae, tokens, scores.head(3))
    with pytest.raises(ValueError, match="n_contexts"):
        explorer.FeatureExplorer(tl_model, sae, tokens, scores, n_contexts=0)


# --- The widget ---------------------------------------------------------------------------------
def test_widget_shows_the_feature_picked_from_the_ranked_list(ex, top):
    widget = explorer.ExplorerWidget(ex, n_ranked=4, prompt="Hmm, wait.")
    assert [value for _, value in widget.ranked.options] == top
    assert f"Feature {top[0]}" in widget.summary.value
    widget.ranked.value = top[2]
    assert widget.index.value == top[2]
    assert f"Feature {top[2]}" in widget.summary.value
    assert widget.contexts.value == ex.contexts_html(top[2])
    assert widget.logits.value == ex.logits_html(top[2])
    assert widget.histogram.value.startswith("<img src='data:image/png;base64,")


def test_widget_picks_any_feature_by_index(ex, top, sae):
    widget = explorer.ExplorerWidget(ex, n_ranked=4)
    other = next(f for f in range(sae.cfg.d_sae) if f not in top)
    widget.index.value = other
    assert widget.ranked.value is None  # not among the ranked ones
    assert f"Feature {other}" in widget.summary.value
    widget.index.value = top[1]
    assert widget.ranked.value == top[1]
    assert widget.index.max == sae.cfg.d_sae - 1


def test_widget_colours_a_typed_prompt(ex, top):
    widget = explorer.ExplorerWidget(ex, n_ranked=4)
    widget.prompt.value = f"Wait, {EVIL}"
    tokens = re.findall(r"<span class='rl-token'[^>]*>([^<]*)</span>", widget.prompt_view.value)
    assert "".join(tokens).startswith("Wait,")
    assert "<script" not in widget.prompt_view.value
    widget.prompt.value = "  "
    assert "Type a prompt" in widget.prompt_view.value


def test_a_script_token_does_not_run_in_a_browser(ex, top, tmp_path, browser):
    page = tmp_path / "explorer.html"
    page.write_text("<!DOCTYPE html><title>explorer</title>"
                    + ex.prompt_html(top[0], f"Wait, {EVIL} let me check.")
                    + explorer.token_heatmap_html([EVIL], [1.0], 1.0))
    loaded = browser.open_page(page)
    assert loaded.title == "explorer" and loaded.errors == []
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in loaded.dom


# --- model and SAE on different devices (the meta device stands in for a GPU) -------------------
def test_the_explorer_brings_the_sae_to_the_model_before_any_pass(tl_model, sae, tokens, scores,
                                                                  top):
    import copy
    meta = copy.deepcopy(sae).to("meta")
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        explorer.FeatureExplorer(tl_model, meta, tokens, scores, top, progress=False)
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        explorer.feature_activations(tl_model, scoring.folded_sae(meta), tokens, top,
                                     progress=False)
