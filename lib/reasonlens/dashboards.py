"""SAEDashboard pages for chosen SAE features, written as self-contained HTML files.

The data come from SAEDashboard's own runner (``SaeVisRunner`` with a ``SaeVisConfig``) on the
scoring contexts: top-activating sequences, activation quantiles, activation and logit histograms,
and logit tables. By default the tokenizer's BOS, EOS and PAD tokens are left out, as ReasonScore
leaves them out. Three things are changed on the way to disk:

- Token strings stay plain text in the page data (each reads as itself: ``<|user|>``, ``&lt;``), and
  are HTML-escaped exactly once, in the page's script, where SAEDashboard puts them into HTML (its
  tooltips use ``innerHTML``, so a token such as ``<img src=x onerror=...>`` would otherwise run).
  Every ``<`` in the page's inline JSON data is written ``\\u003c``, so a ``</script>`` token
  cannot end the block.
- The page loads d3 and Plotly from CDNs. Plotly is copied from the ``plotly`` package beside the
  pages, and d3 from a local copy when one exists (Debian's ``node-d3``), so the book reads offline.
- A page that must load d3 from the CDN says so at its top, and how to ship d3 with it.

Used by notebooks/05_features.py.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from reasonlens.config import Config, check_range
from reasonlens.models import device_of, sae_on_model_device, special_token_ids

log = logging.getLogger(__name__)

PAGE = "feature_{feature_idx}.html"  # one page per feature, in the dashboards directory
PLOTLY_CDN = '<script src="https://cdn.plot.ly/plotly-latest.min.js"></script>'
D3_CDN = '<script src="https://d3js.org/d3.v6.min.js"></script>'
# Local d3 builds with the v5+ selection API SAEDashboard's scripts use (Debian: node-d3).
D3_CANDIDATES = ("/usr/share/nodejs/d3/dist/d3.min.js", "/usr/share/javascript/d3/dist/d3.min.js")
RERUN = "python -m reasonlens.runner --profile {profile} --only 05 --force"
# Where SAEDashboard's tokenScript.js puts a token string into HTML, and how often: its tooltips
# (innerHTML) and its histogram annotations (Plotly's HTML-like text). Each gets ESCAPE_JS.
TOKEN_SINKS = {"<code>${tok}</code>": 3, "|${tok}|<br>": 1}
# Quotes as numeric references: Plotly's labels decode those, but not "&quot;".
ESCAPE_JS = """<script>
function rlEscapeHtml(text) {  // a token string as HTML text (reasonlens.dashboards)
  const entities = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"};
  return String(text).replace(/[&<>"']/g, c => entities[c]);
}
</script>"""


@dataclasses.dataclass(frozen=True)
class DashboardConfig(Config):
    """How to build SAEDashboard pages.

    Args:
        minibatch_size_tokens: contexts per model pass in SAEDashboard's runner.
        minibatch_size_features: features per batch in SAEDashboard's runner.
        ignore_token_ids: token ids whose activations SAEDashboard ignores; None (the default)
            means the tokenizer's BOS, EOS and PAD ids (``models.special_token_ids``), as
            ReasonScore ignores them; ``()`` ignores none.
        d3_path: a local d3 (v5 or later) ``d3.min.js`` to ship with the pages; None searches
            ``D3_CANDIDATES`` and falls back to the CDN when none exists.
        seed: SAEDashboard's random seed (for its quantile samples).
    """

    minibatch_size_tokens: int = 16
    minibatch_size_features: int = 64
    ignore_token_ids: tuple[int, ...] | None = None
    d3_path: str | None = None
    seed: int = 0

    def __post_init__(self):
        check_range("minibatch_size_tokens", self.minibatch_size_tokens, 1)
        check_range("minibatch_size_features", self.minibatch_size_features, 1)
        if self.ignore_token_ids is not None:
            object.__setattr__(self, "ignore_token_ids",
                               tuple(int(i) for i in self.ignore_token_ids))
        if self.d3_path is not None and not Path(self.d3_path).is_file():
            raise FileNotFoundError(f"d3_path={self.d3_path!r} does not exist; give a d3.min.js "
                                    "(v5+, e.g. Debian's node-d3) or None to search for one.")

    def ignore_ids(self, tokenizer) -> tuple[int, ...]:
        """``ignore_token_ids``, or the BOS, EOS and PAD ids of ``tokenizer`` when it is None."""
        if self.ignore_token_ids is None:
            return special_token_ids(tokenizer)
        return self.ignore_token_ids


def token_decoder(tokenizer) -> Callable[[int | Sequence[int]], str | list[str]]:
    """SAEDashboard's ``decode_fn``: the text of each token as it reads, plain (no HTML).

    The text is the vocabulary string with byte-level BPE characters shown as SAEDashboard shows
    them ("Ġ" as a space, "Ċ" as ``\\n``). SAEDashboard passes ``tok`` and ``symbol`` through its
    ``unprocess_str_tok``, which decodes HTML entities (a token spelled "&lt;" would read "<"), so
    every "&" leaves here as "&amp;", which that function leaves alone, and ``plain_tokens`` turns
    it back.

    Args:
        tokenizer: the model's tokenizer.

    Returns:
        ``decode(token_id)``: a string for an int id, a list for a list or tensor of ids.
    """
    from sae_dashboard.utils_fns import HTML_ANOMALIES

    shown = {char: html.unescape(entity).replace("\xa0", " ")
             for char, entity in HTML_ANOMALIES.items()}
    texts = {}
    for token, token_id in tokenizer.get_vocab().items():
        for char, text in shown.items():
            token = token.replace(char, text)
        texts[token_id] = token.replace("&", "&amp;")

    def decode(token_id):
        if isinstance(token_id, torch.Tensor):
            token_id = token_id.tolist()
        if isinstance(token_id, int):
            return texts.get(token_id, "UNK")  # what SAEDashboard shows for an unknown id
        return [decode(i) for i in token_id]

    return decode


def plain_tokens(data):
    """A copy of SAEDashboard's page data whose token strings are ``token_decoder``'s plain text.

    The token strings are ``tok`` (sequences), ``posToks``/``negToks`` (tooltips) and ``symbol``
    (logit tables); each gets its "&" back from "&amp;".
    """
    if isinstance(data, list):
        return [plain_tokens(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if key in ("tok", "symbol") and isinstance(value, str):
            out[key] = value.replace("&amp;", "&")
        elif key in ("posToks", "negToks") and isinstance(value, list):
            out[key] = [str(v).replace("&amp;", "&") for v in value]
        else:
            out[key] = plain_tokens(value)
    return out


def write_dashboards(model, sae, tokens: torch.Tensor, feature_idx: Sequence[int],
                     out_dir: str | Path, cfg: DashboardConfig | None = None,
                     progress: bool = True, profile: str | None = None) -> dict[int, Path]:
    """Run SAEDashboard on ``tokens`` and write one HTML page per feature into ``out_dir``.

    Args:
        model: a TransformerLens ``HookedTransformer`` with its ``tokenizer`` attached (the
            ``.model`` of a ``TLHookedModel``).
        sae: a SAELens SAE at one of the model's hook points, moved to the model's device first
            (``models.sae_on_model_device``); a copy is folded.
        tokens: ``[n_contexts, pos]`` token ids, e.g. the scoring contexts of notebook 04.
        feature_idx: the features to show, e.g. the top features by ReasonScore.
        out_dir: an existing directory; pages are ``feature_<idx>.html``, plus ``plotly.min.js``
            and (when found) ``d3.min.js``. Without a local d3 each page says, at its top, that
            it loads d3 from the network and how to ship d3 with it.
        cfg: see ``DashboardConfig``.
        progress: show SAEDashboard's progress bars.
        profile: the run's profile, named in that note's rerun command.

    Returns:
        ``{feature_idx: page path}``.

    Raises:
        ValueError: no features, a feature outside ``[0, d_sae)``, empty tokens, a model
            without a tokenizer, or an SAE on the meta device.
        RuntimeError: SAEDashboard wrote its page data or scripts in a form this function cannot
            protect.
    """
    from sae_dashboard.html_fns import HTML
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    cfg = cfg or DashboardConfig()
    features = check_features(feature_idx, sae.cfg.d_sae)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ValueError("tokens must be a non-empty [batch, pos] tensor of token ids, got "
                         f"{tuple(tokens.shape)}.")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("model has no tokenizer; SAEDashboard needs one to show tokens. Load it "
                         "with reasonlens.models.load_hooked(..., backend='transformer_lens').")
    out_dir = Path(out_dir)
    encoder = copy.deepcopy(sae_on_model_device(sae, model))
    vis_cfg = SaeVisConfig(
        hook_point=sae.cfg.metadata.hook_name, features=features,
        minibatch_size_features=cfg.minibatch_size_features,
        minibatch_size_tokens=cfg.minibatch_size_tokens,
        ignore_tokens=set(cfg.ignore_ids(model.tokenizer)),
        device=str(device_of(model)), seed=cfg.seed, verbose=progress)
    with warnings.catch_warnings():  # eindex, inside SAEDashboard, warns on every feature
        warnings.filterwarnings("ignore", category=UserWarning, module="eindex")
        vis_data = SaeVisRunner(vis_cfg).run(encoder=encoder, model=model,
                                             tokens=tokens.long())
    decode = token_decoder(model.tokenizer)
    layout = vis_cfg.feature_centric_layout
    scripts = _local_scripts(out_dir, cfg.d3_path)
    note = "" if D3_CDN in scripts else _d3_note(profile)
    pages = {}
    for feature in features:
        data = vis_data.feature_data_dict[feature]._get_html_data_feature_centric(layout, decode)
        page = HTML()
        page.html_data = data.html_data
        page.js_data = {"AGGDATA": vis_data.feature_stats.aggdata,
                        "DASHBOARD_DATA": {str(feature): plain_tokens(data.js_data)}}
        path = out_dir / PAGE.format(feature_idx=feature)
        page.get_html(layout_columns=layout.columns, layout_height=layout.height, filename=path,
                      first_key=str(feature))
        raw = json.dumps(page.js_data)  # as get_html wrote it; no "<" may end its <script> early
        text = path.read_text()
        if raw not in text:
            raise RuntimeError(f"{path}: SAEDashboard's page layout changed; cannot protect its "
                               "data block.")
        text = text.replace(raw, raw.replace("<", "\\u003c"))
        text = _escape_token_sinks(text, path)  # after the data: no sink can match inside it now
        for cdn, local in scripts.items():
            text = text.replace(cdn, local)
        path.write_text(f"<!DOCTYPE html>\n<meta charset='utf-8'>\n<title>SAE feature {feature}"
                        f"</title>\n{ESCAPE_JS}\n<h2 id='feature-title'>SAE feature {feature}</h2>"
                        f"\n{note}{text}")
        pages[feature] = path
    return pages


def index_html(pages: dict[int, Path], scores, href_dir: str = "dashboards") -> str:
    """A table linking each page, with the feature's rank and ReasonScore (for the book).

    Args:
        pages: ``write_dashboards`` output.
        scores: the ReasonScore frame.
        href_dir: the pages' directory relative to the page that shows the table.
    """
    ranked = rank_features(scores).feature_idx.tolist()
    score = scores.set_index("feature_idx").reason_score
    rows = "".join(
        f"<tr><td>{ranked.index(f) + 1}</td><td><a class='rl-dashboard-link' "
        f"href='{html.escape(f'{href_dir}/{path.name}', quote=True)}'>feature {f}</a></td>"
        f"<td>{score[f]:.4f}</td></tr>" for f, path in pages.items())
    return ("<table class='rl-table'><thead><tr><th>rank</th><th>dashboard</th>"
            f"<th>ReasonScore</th></tr></thead><tbody>{rows}</tbody></table>")


def top_features(scores, k: int, d_sae: int) -> list[int]:
    """The ``k`` features with the highest ReasonScore, best first.

    Raises:
        ValueError: ``k`` outside ``[1, d_sae]``.
    """
    if not 1 <= k <= d_sae:
        raise ValueError(f"n_dashboard_features={k} must lie in [1, {d_sae}] (the SAE's d_sae); "
                         f"set n_dashboard_features: {min(max(k, 1), d_sae)} in the profile.")
    return [int(f) for f in rank_features(scores).feature_idx[:k]]


def rank_features(scores):
    """The ReasonScore frame sorted best first (ties keep feature order), with a ``rank`` column."""
    ranked = scores.sort_values("reason_score", ascending=False, kind="stable")
    ranked = ranked.reset_index(drop=True)
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    return ranked


def check_features(feature_idx: Sequence[int], d_sae: int) -> list[int]:
    """Feature indices as a list of ints, each checked against the SAE's width.

    Raises:
        ValueError: an empty selection or an index outside ``[0, d_sae)``.
    """
    features = [int(f) for f in feature_idx]
    if not features:
        raise ValueError("feature_idx is empty; pass at least one feature, e.g. the top features "
                         "by ReasonScore.")
    bad = [f for f in features if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"feature_idx {bad} are outside [0, {d_sae}) (the SAE's d_sae); pick "
                         "features of this SAE.")
    return features


def find_d3(d3_path: str | None = None) -> Path | None:
    """A local d3 ``d3.min.js``: ``d3_path`` or the first of ``D3_CANDIDATES`` that exists."""
    for candidate in ([d3_path] if d3_path else D3_CANDIDATES):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def _local_scripts(out_dir: Path, d3_path: str | None) -> dict[str, str]:
    """Copy Plotly (and d3 when found) into ``out_dir``; map each CDN tag to its local tag."""
    import plotly

    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out_dir)
    scripts = {PLOTLY_CDN: '<script src="plotly.min.js"></script>'}
    d3 = find_d3(d3_path)
    if d3 is None:
        log.warning("no local d3 found (looked in %s); the dashboards load d3 from d3js.org and "
                    "need the network. Install one: apt-get install node-d3, then rerun notebook "
                    "05.", D3_CANDIDATES)
    else:
        shutil.copy(d3, out_dir / "d3.min.js")
        scripts[D3_CDN] = '<script src="d3.min.js"></script>'
    return scripts


def _escape_token_sinks(text: str, path: Path) -> str:
    """Wrap each token string SAEDashboard's script puts into HTML (``TOKEN_SINKS``) in
    ``rlEscapeHtml``."""
    for sink, n_expected in TOKEN_SINKS.items():
        n_found = text.count(sink)
        if n_found != n_expected:
            raise RuntimeError(f"{path}: SAEDashboard's tokenScript.js changed ({sink!r} appears "
                               f"{n_found} times, not {n_expected}); cannot escape its tokens. "
                               "Pin sae-dashboard==0.8.0.")
        text = text.replace(sink, sink.replace("${tok}", "${rlEscapeHtml(tok)}"))
    return text


def _d3_note(profile: str | None) -> str:
    """The paragraph atop a page that loads d3 from the CDN: why it may be empty, and the fix."""
    command = RERUN.format(profile=profile or "<profile>")
    return ("<p id='rl-d3-note' style='border:1px solid #c60;background:#fff4e5;padding:6px'>"
            "This page draws its charts and tokens with d3, which it loads from d3js.org: no local "
            "d3 was found when it was written, so offline the page stays empty. To ship d3 with "
            "the pages, install it (<code>apt-get install node-d3</code>) and rerun notebook 05: "
            f"<code>{html.escape(command)}</code></p>\n")
