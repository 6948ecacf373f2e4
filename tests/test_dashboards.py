"""Tests for reasonlens.dashboards: real SAEDashboard pages for a toy model whose vocabulary holds
script tokens, an HTML entity and quotes, read as written and opened in headless Chromium."""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import scramble_global_rngs

from reasonlens import constants as K
from reasonlens import dashboards, models

EVIL = ("<script>document.title='pwned'</script>", "<img src=x onerror=\"document.title='pwned'\">")
ADDED = (*EVIL, "&lt;", "a&b\"c'd")  # added to the toy's vocabulary: scripts, an entity, quotes
SHOWN = (*ADDED, K.USER, K.THINK_CLOSE)  # tokens every page must show exactly as they are
HOOK = "blocks.1.hook_resid_post"
LOGITS, BOS = 17, 40  # the features dash_sae makes: one writes SHOWN's logits, one reads <bos>


def readable(tokenizer, token_id: int) -> str:
    """What a page must show for a token: its vocabulary string, byte-level space and newline
    written as " " and "\\n" (the toy's vocabulary has no other byte-level marks)."""
    return tokenizer.convert_ids_to_tokens(token_id).replace("Ġ", " ").replace("Ċ", "\\n")


def page_data(path) -> dict:
    """The data a written page's script holds, for its one feature (``DASHBOARD_DATA[feature]``)."""
    match = re.search(r"^\s*return (\{.*\});$", path.read_text(), re.M)
    return next(iter(json.loads(match.group(1))["DASHBOARD_DATA"].values()))


def sequence_tokens(data) -> list[dict]:
    """Every token of every sequence a page shows, in page order."""
    return [tok for group in data["tokenData"].values() for seq in group["data"] for tok in seq]


def top_group(data) -> dict:
    """The page's TOP ACTIVATIONS group of sequences (its title holds the maximum)."""
    return next(g for g in data["tokenData"].values() if g["title"].startswith("TOP"))


def bold_tokens(group) -> list[dict]:
    """The token each sequence of a group is centred on."""
    return [t for seq in group["data"] for t in seq if t.get("isBold")]


@pytest.fixture(scope="module")
def evil_model(tmp_path_factory, toy_model, tokenizer):
    """The toy model with the ADDED tokens in its vocabulary, as a HookedTransformer. The SHOWN
    tokens get large orthogonal unembeddings, so that a feature can promote all of them."""
    tok, model = copy.deepcopy(tokenizer), copy.deepcopy(toy_model)
    tok.add_tokens(list(ADDED))
    with torch.random.fork_rng():  # the new embedding rows are random: the same ones every run
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    shown = tok.convert_tokens_to_ids(list(SHOWN))
    with torch.no_grad():
        unembed = model.get_output_embeddings().weight  # [d_vocab, d_model]
        unembed[shown] = torch.eye(len(SHOWN), unembed.shape[1]) * 10 * unembed.std()
    path = tmp_path_factory.mktemp("evil") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return models.load_hooked(path, backend="transformer_lens")


@pytest.fixture(scope="module")
def evil_tokens(evil_model):
    """Eight 24-token contexts: each SHOWN token in each, and a mid-context <bos> every 4 tokens."""
    tok = evil_model.tokenizer
    ids = tok.encode("Hmm, wait. Let me check: 3 + 4 = 7. Therefore the answer is 7. " * 10,
                     add_special_tokens=False)[:8 * 24]
    tokens = torch.tensor(ids).reshape(8, 24)
    tokens[:, 1::4] = torch.tensor(tok.convert_tokens_to_ids(list(SHOWN)))
    tokens[:, 3::4] = tok.bos_token_id
    return tokens


@pytest.fixture(scope="module")
def dash_sae(sae, evil_model, evil_tokens):
    """``sae`` with two features set: LOGITS writes the unembeddings of the SHOWN tokens (so its
    logit table lists them), BOS reads what sets <bos> apart in the residual stream."""
    dash, tok = copy.deepcopy(sae), evil_model.tokenizer
    _, cache = evil_model.model.run_with_cache(evil_tokens, names_filter=HOOK)
    is_bos = evil_tokens == tok.bos_token_id
    with torch.no_grad():
        dash.W_dec[LOGITS] = evil_model.model.W_U[:, tok.convert_tokens_to_ids(list(SHOWN))].sum(1)
        dash.W_enc[:, BOS] = cache[HOOK][is_bos].mean(0) - cache[HOOK][~is_bos].mean(0)
        dash.b_enc[BOS] = 0.0
    return dash


@pytest.fixture(scope="module")
def pages(evil_model, dash_sae, evil_tokens, tmp_path_factory):
    """Pages with the default config (special tokens ignored, d3 wherever it is found)."""
    out = tmp_path_factory.mktemp("dashboards")
    cfg = dashboards.DashboardConfig(minibatch_size_tokens=4)
    return dashboards.write_dashboards(evil_model.model, dash_sae, evil_tokens, [LOGITS, BOS],
                                       out, cfg, progress=False)


def folded_acts(sae, model, tokens, feature: int) -> torch.Tensor:
    """``[batch, pos]`` activations of ``feature`` with the decoder norm folded in, as SAEDashboard
    computes them."""
    folded = copy.deepcopy(sae)
    folded.fold_W_dec_norm()
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    return folded.encode(cache[HOOK])[..., feature].detach()


def test_one_page_per_feature_with_local_scripts(pages):
    assert sorted(pages) == [LOGITS, BOS]
    out = pages[BOS].parent
    assert (out / "plotly.min.js").is_file()
    text = pages[LOGITS].read_text()
    assert f"<title>SAE feature {LOGITS}</title>" in text and f'"{LOGITS}"' in text
    assert "cdn.plot.ly" not in text and '<script src="plotly.min.js"></script>' in text


def test_tokens_read_as_themselves_in_the_page_data(pages, evil_model):
    tok = evil_model.tokenizer
    shown = [t for path in pages.values() for t in sequence_tokens(page_data(path))]
    assert [t["tok"] for t in shown] == [readable(tok, t["tokID"]) for t in shown]
    texts = {t["tok"] for t in shown}
    assert set(SHOWN) <= texts  # every kind is on the pages, and a byte-level "Ġ" token:
    assert any(len(text) > 1 and text[0] == " " for text in texts)
    assert "&lt;|user|&gt;" not in texts and "&amp;" not in "".join(texts)
    logits = page_data(pages[LOGITS])["logitsTableData"]
    symbols = [row["symbol"] for table in logits.values() for rows in table.values()
               for row in rows]
    assert set(SHOWN) <= set(symbols)  # "&lt;" too, which SAEDashboard alone shows as "<"
    vocab = {readable(tok, i) for i in range(len(tok))}
    assert set(symbols) <= vocab


def test_the_page_escapes_each_token_once_where_it_enters_html(pages):
    text = pages[LOGITS].read_text()
    assert not any(evil in text for evil in EVIL)  # the data block holds them as \u003c...
    assert "<code>${tok}</code>" not in text and "|${tok}|<br>" not in text
    assert text.count("${rlEscapeHtml(tok)}") == 4  # three tooltip cells, one histogram label
    assert text.count("<script") == text.count("</script>") == 4  # escape, d3, Plotly, the page


def test_special_tokens_are_ignored_by_default(pages, evil_model, dash_sae, evil_tokens):
    data, tok = page_data(pages[BOS]), evil_model.tokenizer
    special = models.special_token_ids(tok)
    top = bold_tokens(top_group(data))
    assert len(top) == 20 and not {t["tokID"] for t in top} & set(special)
    # SAEDashboard's lowest interval may centre on a zero activation, an ignored token's too
    bold = [t for t in sequence_tokens(data) if t.get("isBold")]
    assert not [t for t in bold if t["tokID"] in special and "featAct" in t]
    acts = folded_acts(dash_sae, evil_model.model, evil_tokens, BOS)
    kept = ~torch.isin(evil_tokens, torch.tensor(special))
    assert top_group(data)["title"] == f"TOP ACTIVATIONS<br>MAX = {acts[kept].max():.3f}"


def test_ignoring_no_tokens_fills_the_bos_page_with_bos(evil_model, dash_sae, evil_tokens,
                                                        tmp_path):
    cfg = dashboards.DashboardConfig(minibatch_size_tokens=4, ignore_token_ids=())
    pages = dashboards.write_dashboards(evil_model.model, dash_sae, evil_tokens, [BOS], tmp_path,
                                        cfg, progress=False)
    data = page_data(pages[BOS])
    assert [t["tok"] for t in bold_tokens(top_group(data))] == [K.BOS] * 20
    acts = folded_acts(dash_sae, evil_model.model, evil_tokens, BOS)
    assert top_group(data)["title"] == f"TOP ACTIVATIONS<br>MAX = {acts.max():.3f}"


def test_a_given_d3_is_shipped_and_the_page_needs_no_network(evil_model, sae, evil_tokens,
                                                             tmp_path):
    d3 = tmp_path / "my-d3.min.js"
    d3.write_text("/* a stand-in d3 */")
    out = tmp_path / "pages"
    out.mkdir()
    cfg = dashboards.DashboardConfig(minibatch_size_tokens=4, d3_path=str(d3))
    text = dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [3], out, cfg,
                                       progress=False)[3].read_text()
    assert (out / "d3.min.js").read_text() == "/* a stand-in d3 */"
    assert '<script src="d3.min.js"></script>' in text and "d3js.org" not in text
    assert "rl-d3-note" not in text and "node-d3" not in text


def test_without_d3_the_page_says_it_needs_d3_and_how_to_get_it(evil_model, sae, evil_tokens,
                                                                tmp_path, monkeypatch):
    monkeypatch.setattr(dashboards, "D3_CANDIDATES", (str(tmp_path / "no-d3.min.js"),))

    def note(**profile) -> str:
        text = dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [3], tmp_path,
                                           progress=False, **profile)[3].read_text()
        assert dashboards.D3_CDN in text and not (tmp_path / "d3.min.js").exists()
        match = re.search(r"<p id='rl-d3-note'[^>]*>(.*?)</p>", text, re.S)
        assert match and match.start() < text.index("grid-container")  # above the charts
        assert "<profile>" not in text  # the note's text is escaped
        return html.unescape(re.sub(r"<[^>]*>", "", match.group(1)))  # as the reader sees it

    said = note()
    assert "d3js.org" in said and "apt-get install node-d3" in said
    assert "python -m reasonlens.runner --profile <profile> --only 05 --force" in said
    assert "--profile smoke --only 05 --force" in note(profile="smoke")


def test_pages_depend_on_the_config_seed_not_on_the_global_rngs(pages, evil_model, dash_sae,
                                                                evil_tokens, tmp_path):
    scramble_global_rngs(7)  # SAEDashboard samples quantile groups under DashboardConfig.seed
    again = dashboards.write_dashboards(evil_model.model, dash_sae, evil_tokens, [LOGITS, BOS],
                                        tmp_path, dashboards.DashboardConfig(minibatch_size_tokens=4),
                                        progress=False)
    for feature in (LOGITS, BOS):
        assert page_data(again[feature]) == page_data(pages[feature])


def test_the_sae_is_left_unfolded(evil_model, sae, evil_tokens, tmp_path):
    before = sae.W_dec.detach().clone()
    dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [3], tmp_path, progress=False)
    assert torch.equal(sae.W_dec, before)


def test_pages_render_tokens_as_themselves_and_scripts_do_not_run(pages, browser, evil_model):
    tok = evil_model.tokenizer
    for feature, path in pages.items():
        page = browser.open_page(path)
        assert page.errors == [], page.errors
        assert page.title == f"SAE feature {feature}"  # 'pwned' would mean a token ran
        assert "POSITIVE LOGITS" in page.dom and "main-svg" in page.dom  # d3 and Plotly ran
        assert "<img" not in page.dom  # no token became an element
        spans = re.findall(r'<span class="token"[^>]*>(.*?)</span>', page.dom, re.S)
        assert [html.unescape(s) for s in spans] == [
            t["tok"] for t in sequence_tokens(page_data(path))]
        tooltips = re.findall(r"<code>([^<]*)</code> \((\d+)\)", page.dom)
        assert len(tooltips) == len(spans)
        assert all(html.unescape(text) == readable(tok, int(i)) for text, i in tooltips)
        if feature == LOGITS:
            cells = re.findall(r'<code style="[^"]*">([^<]*)</code>', page.dom)
            assert set(SHOWN) <= {html.unescape(c) for c in cells}


def test_histogram_labels_read_tokens_as_themselves(browser, tmp_path):
    """The fourth sink, a Plotly label, shows only on hover: draw such labels on a page of our own."""
    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    labels = ", ".join(f"{{x: 0, y: {i}, showarrow: false, text: `|${{rlEscapeHtml({tok})}}|<br>0`}}"
                       for i, tok in enumerate(json.dumps(t).replace("<", "\\u003c")
                                               for t in SHOWN))
    path = tmp_path / "labels.html"
    path.write_text(f"<!DOCTYPE html><title>labels</title>{dashboards.ESCAPE_JS}"
                    f"<script src='{plotly_js.as_uri()}'></script><div id='h'></div><script>"
                    f"Plotly.newPlot('h', [{{x: [0], y: [0], type: 'bar'}}], "
                    f"{{annotations: [{labels}]}});</script>")
    page = browser.open_page(path)
    assert page.errors == [] and page.title == "labels"
    lines = re.findall(r'<tspan class="line"[^>]*>\|(.*?)\|</tspan>', page.dom)
    assert [html.unescape(line) for line in lines] == list(SHOWN)


def test_top_features_and_index(pages):
    scores = pd.DataFrame({"feature_idx": range(6), "reason_score": [0.1, 0.5, 0.5, -1, 0.2, 0]})
    assert dashboards.top_features(scores, 3, 6) == [1, 2, 4]
    html_table = dashboards.index_html(pages, pd.DataFrame({"feature_idx": [LOGITS, BOS],
                                                            "reason_score": [0.2, 0.3]}))
    assert f"href='dashboards/feature_{LOGITS}.html'" in html_table
    assert "<td>2</td>" in html_table


def test_bad_input_names_the_parameter(evil_model, sae, evil_tokens, tmp_path, monkeypatch):
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
    monkeypatch.setitem(dashboards.TOKEN_SINKS, "<code>${tok}</code>", 4)
    with pytest.raises(RuntimeError, match=r"tokenScript.js changed .* appears 3 times, not 4"):
        dashboards.write_dashboards(evil_model.model, sae, evil_tokens, [3], tmp_path,
                                    progress=False)


def test_config_defaults_to_the_tokenizers_special_ids_and_round_trips(tokenizer):
    cfg = dashboards.DashboardConfig()
    assert cfg.ignore_token_ids is None
    assert cfg.ignore_ids(tokenizer) == tuple(sorted(
        tokenizer.convert_tokens_to_ids([K.BOS, K.EOS, K.PAD])))
    assert dashboards.DashboardConfig(ignore_token_ids=()).ignore_ids(tokenizer) == ()
    for cfg in (cfg, dashboards.DashboardConfig(minibatch_size_tokens=4, ignore_token_ids=[0, 2])):
        assert dashboards.DashboardConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.ignore_token_ids == (0, 2)


# --- model and SAE on different devices (the meta device stands in for a GPU) -------------------
def test_the_sae_is_brought_to_the_model_before_any_page(evil_model, sae, evil_tokens, tmp_path):
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        dashboards.write_dashboards(evil_model.model, copy.deepcopy(sae).to("meta"), evil_tokens,
                                    [3], tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
