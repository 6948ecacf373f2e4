"""Tests for reasonlens.dashboards: real SAEDashboard pages for a toy model whose vocabulary holds
script tokens, opened in headless Chromium."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from reasonlens import dashboards, models

EVIL = ("<script>document.title='pwned'</script>", "<img src=x onerror=\"document.title='pwned'\">")


@pytest.fixture(scope="module")
def evil_model(tmp_path_factory, toy_model, tokenizer):
    """The toy model with two script tokens added to its vocabulary, as a HookedTransformer."""
    tok, model = copy.deepcopy(tokenizer), copy.deepcopy(toy_model)
    tok.add_tokens(list(EVIL))
    model.resize_token_embeddings(len(tok))
    path = tmp_path_factory.mktemp("evil") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return models.load_hooked(path, backend="transformer_lens")


@pytest.fixture(scope="module")
def evil_tokens(evil_model):
    """Eight 24-token contexts with a script token at every fourth position."""
    tok = evil_model.tokenizer
    ids = tok.encode("Hmm, wait. Let me check: 3 + 4 = 7. Therefore the answer is 7. " * 8,
                     add_special_tokens=False)[:8 * 24]
    tokens = torch.tensor(ids).reshape(8, 24)
    evil_ids = tok.convert_tokens_to_ids(list(EVIL))
    tokens[:, ::4] = torch.tensor(evil_ids).repeat(3)[:6]
    return tokens


@pytest.fixture(scope="module")
def pages(evil_model, sae, evil_tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboards")
    cfg = dashboards.DashboardConfig(minibatch_size_tokens=4, ignore_token_ids=(0, 1, 2))
    return dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [5, 17], out, cfg,
                                       progress=False)


def test_one_page_per_feature_with_local_scripts(pages):
    assert sorted(pages) == [5, 17]
    out = pages[5].parent
    assert (out / "plotly.min.js").is_file()
    text = pages[17].read_text()
    assert "<title>SAE feature 17</title>" in text and '"17"' in text
    assert "cdn.plot.ly" not in text and '<script src="plotly.min.js"></script>' in text
    if dashboards.find_d3() is not None:
        assert (out / "d3.min.js").is_file() and "d3js.org" not in text


def test_script_tokens_are_escaped_in_the_page_data(pages):
    text = pages[5].read_text()
    assert "<script>document.title" not in text and "<img src=x" not in text
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in text  # the token, escaped
    assert text.count("<script") == text.count("</script>") == 3  # d3, Plotly, the page's own


def test_the_sae_is_left_unfolded(evil_model, sae, evil_tokens, tmp_path):
    before = sae.W_dec.detach().clone()
    dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [3], tmp_path, progress=False)
    assert torch.equal(sae.W_dec, before)


def test_pages_render_without_errors_and_scripts_do_not_run(pages, browser):
    for feature, path in pages.items():
        page = browser.open_page(path)
        assert page.errors == [], page.errors
        assert page.title == f"SAE feature {feature}"  # 'pwned' would mean a token ran
        assert "POSITIVE LOGITS" in page.dom and "main-svg" in page.dom  # d3 and Plotly ran
        assert "&lt;script&gt;" in page.dom.replace("&amp;", "&")


def test_top_features_and_index(pages):
    scores = pd.DataFrame({"feature_idx": range(6), "reason_score": [0.1, 0.5, 0.5, -1, 0.2, 0]})
    assert dashboards.top_features(scores, 3, 6) == [1, 2, 4]
    html = dashboards.index_html(pages, pd.DataFrame({"feature_idx": [5, 17],
                                                      "reason_score": [0.2, 0.3]}))
    assert "href='dashboards/feature_5.html'" in html and "<td>2</td>" in html


def test_bad_input_names_the_parameter(evil_model, sae, evil_tokens, tmp_path):
    scores = pd.DataFrame({"feature_idx": range(6), "reason_score": range(6)})
    with pytest.raises(ValueError, match=r"n_dashboard_features=7 must lie in \[1, 6\]"):
        dashboards.top_features(scores, 7, 6)
    with pytest.raises(ValueError, match=r"feature_idx \[64\] are outside \[0, 64\)"):
        dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [1, 64], tmp_path)
    with pytest.raises(ValueError, match="feature_idx is empty"):
        dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [], tmp_path)
    with pytest.raises(ValueError, match="minibatch_size_tokens"):
        dashboards.DashboardConfig(minibatch_size_tokens=0)
    with pytest.raises(FileNotFoundError, match="d3_path"):
        dashboards.DashboardConfig(d3_path=str(tmp_path / "nope.js"))


def test_config_round_trip():
    cfg = dashboards.DashboardConfig(minibatch_size_tokens=4, ignore_token_ids=[0, 2])
    assert dashboards.DashboardConfig.from_dict(cfg.to_dict()) == cfg


# --- model and SAE on different devices (the meta device stands in for a GPU) -------------------
def test_the_sae_is_brought_to_the_model_before_any_page(evil_model, sae, evil_tokens, tmp_path):
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        dashboards.write_dashboards(evil_model.model, copy.deepcopy(sae).to("meta"), evil_tokens,
                                    [3], tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
