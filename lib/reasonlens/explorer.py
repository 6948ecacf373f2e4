"""A feature explorer: what does one SAE feature respond to, and what does it write?

``FeatureExplorer`` holds the logic and renders every view as an HTML string (token strings always
escaped): a feature's ReasonScore and per-word profile, its top-activating contexts as token heat
maps, its activation histogram, the tokens it promotes and suppresses through the unembedding, and
a heat map of any typed prompt. ``ExplorerWidget`` is a thin ipywidgets layer over it for
JupyterLab; the rendered book shows ``FeatureExplorer.feature_html`` for the top features instead.

Used by notebooks/05_features.py.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from tqdm.auto import tqdm

from reasonlens import plotting
from reasonlens.config import check_range
from reasonlens.dashboards import check_features, rank_features
from reasonlens.models import device_of, sae_hook_name, sae_on_model_device, special_token_ids
from reasonlens.scoring import encode_batch, folded_sae, ignored_mask

HEAT_RGB = "255, 112, 0"  # the heat-map colour; opacity is activation / the feature's maximum


# --- Computations -------------------------------------------------------------------------------
def feature_activations(model, sae, tokens: torch.Tensor, feature_idx: Sequence[int],
                        hook_name: str | None = None, batch_size: int = 8, progress: bool = True
                        ) -> torch.Tensor:
    """Activations of chosen features on ``tokens``: ``[n_contexts, pos, n_features]`` (float32).

    Args:
        model: a hooked model (``reasonlens.models.load_hooked``).
        sae: a SAELens SAE with decoder norms already folded (``scoring.folded_sae``), so that
            activations are on ReasonScore's scale; moved to the model's device first
            (``models.sae_on_model_device``).
        tokens: ``[n_contexts, pos]`` token ids.
        feature_idx: the features.
        hook_name: the SAE's hook point (its own when None).
        batch_size: contexts per model pass.
        progress: show a tqdm bar.

    Raises:
        ValueError: a feature outside ``[0, d_sae)``, or an SAE on the meta device.
    """
    features = torch.tensor(check_features(feature_idx, sae.cfg.d_sae))
    hook_name = sae_hook_name(sae, hook_name)
    sae = sae_on_model_device(sae, model)
    device = device_of(model)
    out = []
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc="feature activations",
                      disable=not progress, unit="batch"):
        batch = tokens[start:start + batch_size].long().to(device)
        acts = encode_batch(model, sae, batch, hook_name, f"contexts {start}-")
        out.append(acts[..., features.to(acts.device)].float().cpu())
    return torch.cat(out)


def max_activations(acts: torch.Tensor, tokens: torch.Tensor, feature_idx: Sequence[int],
                    ignore_ids: Sequence[int], tokenizer=None) -> pd.DataFrame:
    """Each feature's largest activation over the non-ignored tokens, and where it occurs.

    Args:
        acts: ``[n_contexts, pos, n_features]`` from ``feature_activations``.
        tokens: ``[n_contexts, pos]`` the same contexts.
        feature_idx: the features of the last axis of ``acts``.
        ignore_ids: token ids left out (BOS/EOS/PAD), as in ReasonScore.
        tokenizer: when given, the token at the maximum is added as ``token``.

    Returns:
        One row per feature: feature_idx, max_activation, context_idx, position (and token).
    """
    keep = ~ignored_mask(tokens, ignore_ids)
    masked = acts.masked_fill(~keep[..., None], float("-inf")).reshape(-1, acts.shape[-1])
    values, flat = masked.max(0)
    values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    context, position = flat // tokens.shape[1], flat % tokens.shape[1]
    frame = pd.DataFrame({"feature_idx": list(feature_idx), "max_activation": values.numpy(),
                          "context_idx": context.numpy(), "position": position.numpy()})
    if tokenizer is not None:
        frame["token"] = [tokenizer.decode([int(tokens[c, p])]) for c, p in zip(context, position)]
    return frame


def unembedding(model) -> torch.Tensor:
    """The unembedding ``W_U`` ``[d_model, d_vocab]`` of a TransformerLens or HF hooked model."""
    inner = model.model
    if hasattr(inner, "W_U"):
        return inner.W_U.detach()
    return inner.get_output_embeddings().weight.detach().T


def logit_effects(direction: torch.Tensor, W_U: torch.Tensor, tokenizer, n: int = 10
                  ) -> pd.DataFrame:
    """The tokens a decoder direction promotes and suppresses through the unembedding.

    The direct effect of writing ``direction`` into the residual stream on each logit is
    ``direction @ W_U`` (ignoring the final norm, as SAEDashboard's logit tables do).

    Args:
        direction: ``[d_model]`` a feature's decoder row.
        W_U: ``[d_model, d_vocab]``.
        tokenizer: to name the tokens.
        n: tokens per side.

    Returns:
        ``2 n`` rows: effect ("promotes"/"suppresses"), token, token_id, logit_effect.
    """
    check_range("n", n, 1)
    logits = direction.to(W_U.dtype) @ W_U
    n = min(n, logits.numel())
    rows = []
    for effect, (values, ids) in (("promotes", logits.topk(n)),
                                  ("suppresses", (-logits).topk(n))):
        sign = 1 if effect == "promotes" else -1
        rows += [{"effect": effect, "token": tokenizer.decode([int(i)]), "token_id": int(i),
                  "logit_effect": sign * float(v)} for v, i in zip(values, ids)]
    return pd.DataFrame(rows)


def word_profile(scores: pd.DataFrame, feature_idx: int) -> pd.Series:
    """p_i(f): the share of a feature's word-window activation on each reasoning word."""
    row = scores.set_index("feature_idx").loc[feature_idx]
    mu = row[[c for c in scores.columns if c.startswith("mu_") and c not in ("mu_pos", "mu_neg")]]
    mu.index = [c[3:].replace("_", " ") for c in mu.index]
    total = mu.sum()
    return (mu / total if total > 0 else mu * 0).astype(float)


# --- HTML views ---------------------------------------------------------------------------------
def token_heatmap_html(tokens: Sequence[str], values: Sequence[float], vmax: float,
                       mark: int | None = None) -> str:
    """Tokens as spans shaded by activation (escaped; the value in each span's tooltip).

    Args:
        tokens: token strings.
        values: one activation per token.
        vmax: the activation shown at full colour (e.g. the feature's maximum).
        mark: a position to outline (e.g. the maximum).
    """
    spans = []
    for i, (tok, value) in enumerate(zip(tokens, values)):
        alpha = 0.0 if vmax <= 0 else min(1.0, max(0.0, float(value) / vmax))
        outline = "outline:1px solid #000;" if i == mark else ""
        shown = html.escape(tok.replace("\n", "\u23ce"), quote=True)
        spans.append(f"<span class='rl-token' style='background:rgba({HEAT_RGB},{alpha:.2f});"
                     f"{outline}white-space:pre' title='{shown}: {float(value):.3f}'>"
                     f"{shown}</span>")
    return ("<div class='rl-heatmap' style='font-family:monospace;line-height:1.9'>"
            + "".join(spans) + "</div>")


def table_html(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A small HTML table with every cell escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td>{html.escape(float_format.format(v) if isinstance(v, float) else str(v))}</td>"
            for v in row) + "</tr>"
        for row in frame.itertuples(index=False))
    return f"<table class='rl-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(fig) -> str:
    """A matplotlib figure as an inline PNG ``<img>`` (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


# --- The explorer -------------------------------------------------------------------------------
class FeatureExplorer:
    """Views of SAE features on the scoring data, as escaped HTML.

    Example:
        >>> explorer = FeatureExplorer(model, sae, tokens, scores, [292, 627])  # doctest: +SKIP
        >>> display(HTML(explorer.feature_html(top.feature_idx[0])))  # doctest: +SKIP

    Args:
        model: a hooked model (either backend).
        sae: a SAELens SAE, moved to the model's device (``models.sae_on_model_device``); a
            copy with decoder norms folded is used.
        tokens: ``[n_contexts, pos]`` the scoring contexts.
        scores: the ReasonScore frame of notebook 04 (one row per feature).
        feature_idx: features whose activations are computed up front (others on first use).
        n_contexts: top-activating contexts shown per feature.
        window: ``(left, right)`` tokens shown around each context's maximum.
        n_logits: tokens shown per side of the logit effects.
        batch_size: contexts per model pass.
        ignore_token_ids: ids left out of maxima and histograms; the tokenizer's BOS/EOS/PAD
            when None.
        progress: show tqdm bars.

    Raises:
        ValueError: scores that do not cover the SAE's features, bad counts, bad features, or an
            SAE on the meta device.
    """

    def __init__(self, model, sae, tokens: torch.Tensor, scores: pd.DataFrame,
                 feature_idx: Sequence[int] = (), n_contexts: int = 8,
                 window: tuple[int, int] = (12, 4), n_logits: int = 10, batch_size: int = 8,
                 ignore_token_ids: Sequence[int] | None = None, progress: bool = True):
        check_range("n_contexts", n_contexts, 1)
        check_range("n_logits", n_logits, 1)
        if len(window) != 2 or min(window) < 0:
            raise ValueError(f"window={window!r} must be two non-negative ints (left, right).")
        if len(scores) != sae.cfg.d_sae:
            raise ValueError(f"scores has {len(scores)} rows but the SAE has d_sae="
                             f"{sae.cfg.d_sae}; pass the reason_scores.parquet of this SAE.")
        self.model, self.sae = model, folded_sae(sae_on_model_device(sae, model))
        self.tokenizer = model.tokenizer
        self.tokens = tokens.long().cpu()
        self.scores = rank_features(scores)
        self.n_contexts, self.window, self.n_logits = n_contexts, tuple(window), n_logits
        self.batch_size, self.progress = batch_size, progress
        self.ignore_ids = (tuple(ignore_token_ids) if ignore_token_ids is not None
                           else special_token_ids(self.tokenizer))
        self.keep = ~ignored_mask(self.tokens, self.ignore_ids)
        self.W_U = unembedding(model).float().cpu()
        self._acts: dict[int, torch.Tensor] = {}
        self._token_strings: dict[int, str] = {}
        if len(feature_idx):
            self.compute(feature_idx)

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    def check_feature(self, feature_idx: int) -> int:
        """``feature_idx`` as an int.

        Raises:
            ValueError: it is outside ``[0, d_sae)``.
        """
        return check_features([feature_idx], self.d_sae)[0]

    def compute(self, feature_idx: Sequence[int]) -> None:
        """Compute and keep the activations of features not seen yet (one pass over the data)."""
        new = [f for f in check_features(feature_idx, self.d_sae) if f not in self._acts]
        if new:
            acts = feature_activations(self.model, self.sae, self.tokens, new,
                                       batch_size=self.batch_size, progress=self.progress)
            self._acts.update({f: acts[..., i] for i, f in enumerate(new)})

    def activations(self, feature_idx: int) -> torch.Tensor:
        """``[n_contexts, pos]`` activations of one feature (ignored tokens set to 0)."""
        feature_idx = self.check_feature(feature_idx)
        self.compute([feature_idx])
        return self._acts[feature_idx] * self.keep

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in (int(i) for i in ids):
            if i not in self._token_strings:
                self._token_strings[i] = self.tokenizer.decode([i])
            out.append(self._token_strings[i])
        return out

    def max_activation(self, feature_idx: int) -> float:
        return float(self.activations(feature_idx).max())

    def max_activations(self, feature_idx: Sequence[int]) -> pd.DataFrame:
        """Each feature's largest activation on the scoring data and where (``max_activations``)."""
        self.compute(feature_idx)
        acts = torch.stack([self._acts[int(f)] for f in feature_idx], -1)
        return max_activations(acts, self.tokens, feature_idx, self.ignore_ids, self.tokenizer)

    def top_contexts(self, feature_idx: int) -> pd.DataFrame:
        """The feature's top-activating contexts: one row per context, best first.

        Returns:
            Columns context_idx, position (of the maximum), max_activation, tokens (the window's
            token strings), values (their activations), mark (the maximum's index in the window).
        """
        acts = self.activations(feature_idx)
        best, where = acts.max(1)
        order = best.argsort(descending=True)[:self.n_contexts]
        left, right = self.window
        rows = []
        for c in order.tolist():
            if best[c] <= 0:
                break
            p = int(where[c])
            lo, hi = max(0, p - left), min(acts.shape[1], p + right + 1)
            rows.append({"context_idx": c, "position": p, "max_activation": float(best[c]),
                         "tokens": self.token_strings(self.tokens[c, lo:hi]),
                         "values": acts[c, lo:hi].tolist(), "mark": p - lo})
        return pd.DataFrame(rows, columns=["context_idx", "position", "max_activation", "tokens",
                                           "values", "mark"])

    def logit_effects(self, feature_idx: int) -> pd.DataFrame:
        feature_idx = self.check_feature(feature_idx)
        direction = self.sae.W_dec[feature_idx].detach().float().cpu()
        return logit_effects(direction, self.W_U, self.tokenizer, self.n_logits)

    def prompt_activations(self, feature_idx: int, text: str) -> tuple[list[str], list[float]]:
        """Token strings of ``text`` and the feature's activation on each.

        Raises:
            ValueError: empty text.
        """
        feature_idx = self.check_feature(feature_idx)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError("text is empty; type a prompt, e.g. 'Wait, let me check.'")
        acts = feature_activations(self.model, self.sae, torch.tensor([ids]), [feature_idx],
                                   progress=False)
        return self.token_strings(ids), acts[0, :, 0].tolist()

    # --- views ------------------------------------------------------------------------------
    def summary_html(self, feature_idx: int) -> str:
        """Rank, ReasonScore and its parts, and the per-word profile."""
        feature_idx = self.check_feature(feature_idx)
        row = self.scores[self.scores.feature_idx == feature_idx].iloc[0]
        parts = pd.DataFrame([{k: row[k] for k in ("rank", "reason_score", "mu_pos", "mu_neg",
                                                     "entropy", "density", "max_activation")}])
        parts["rank"] = parts["rank"].astype(int)
        profile = word_profile(self.scores, feature_idx).round(3).to_frame("p_i").T
        return (f"<h4>Feature {feature_idx}</h4>" + table_html(parts)
                + "<p>Per-word profile (share of the word-window activation):</p>"
                + table_html(profile, "{:.3f}"))

    def contexts_html(self, feature_idx: int) -> str:
        """The top-activating contexts as heat maps (the maximum outlined)."""
        contexts = self.top_contexts(feature_idx)
        if contexts.empty:
            return f"<p>Feature {feature_idx} never fires on the scoring data.</p>"
        vmax = contexts.max_activation.max()
        items = "".join(
            f"<li>context {row.context_idx}, max {row.max_activation:.3f}: "
            + token_heatmap_html(row.tokens, row["values"], vmax, row.mark) + "</li>"
            for _, row in contexts.iterrows())
        return f"<ol class='rl-contexts'>{items}</ol>"

    def logits_html(self, feature_idx: int) -> str:
        """Tables of the tokens the feature promotes and suppresses."""
        effects = self.logit_effects(feature_idx)
        cells = "".join(
            f"<div style='display:inline-block;vertical-align:top;margin-right:2em'>"
            f"<b>{effect}</b>{table_html(group[['token', 'logit_effect']], '{:+.3f}')}</div>"
            for effect, group in effects.groupby("effect", sort=False))
        return f"<div class='rl-logits'>{cells}</div>"

    def histogram_html(self, feature_idx: int) -> str:
        """The feature's activation histogram (positive activations) as an inline image."""
        acts = self.activations(feature_idx)
        values = acts[self.keep].numpy()
        return figure_html(plotting.activation_histogram(values, title=f"feature {feature_idx}"))

    def prompt_html(self, feature_idx: int, text: str) -> str:
        """Every token of a typed prompt shaded by the feature's activation."""
        tokens, values = self.prompt_activations(feature_idx, text)
        vmax = max(self.max_activation(feature_idx), max(values))
        return token_heatmap_html(tokens, values, vmax)

    def feature_html(self, feature_idx: int) -> str:
        """All views of one feature: summary, histogram, logit effects, top contexts."""
        return (f"<div class='rl-feature' id='rl-feature-{int(feature_idx)}'>"
                + self.summary_html(feature_idx) + self.histogram_html(feature_idx)
                + "<p>Logit effects through the unembedding:</p>" + self.logits_html(feature_idx)
                + "<p>Top-activating contexts:</p>" + self.contexts_html(feature_idx) + "</div>")


# --- The widget ---------------------------------------------------------------------------------
class ExplorerWidget:
    """An ipywidgets front end to a ``FeatureExplorer``; ``display(widget.box)`` shows it.

    Pick a feature from the ranked list (``ranked``) or by index (``index``); type a prompt
    (``prompt``) to see it coloured by the feature. The views are ``HTML`` widgets: ``summary``,
    ``histogram``, ``logits``, ``contexts`` and ``prompt_view``.

    Args:
        explorer: the ``FeatureExplorer``.
        n_ranked: how many top features the ranked list offers.
        prompt: the initial prompt.
    """

    def __init__(self, explorer: FeatureExplorer, n_ranked: int = 20,
                 prompt: str = "Hmm, wait. Let me check that again."):
        import ipywidgets as w

        check_range("n_ranked", n_ranked, 1)
        self.explorer = explorer
        top = explorer.scores.head(n_ranked)
        self.ranked = w.Dropdown(
            options=[(f"#{r.rank}  feature {r.feature_idx}  (score {r.reason_score:.4f})",
                      int(r.feature_idx)) for r in top.itertuples()],
            description="ranked")
        self.index = w.BoundedIntText(value=int(top.feature_idx.iloc[0]), min=0,
                                      max=explorer.d_sae - 1, description="feature")
        self.prompt = w.Textarea(value=prompt, description="prompt", continuous_update=False)
        self.summary, self.histogram, self.logits, self.contexts, self.prompt_view = (
            w.HTML() for _ in range(5))
        self.ranked.observe(self._on_ranked, names="value")
        self.index.observe(self._on_index, names="value")
        self.prompt.observe(lambda change: self._show_prompt(), names="value")
        self.box = w.VBox([
            w.HBox([self.ranked, self.index]), self.summary,
            w.HBox([self.histogram, self.logits]), w.HTML("<b>Top-activating contexts</b>"),
            self.contexts, self.prompt, self.prompt_view])
        self.show(self.index.value)

    @property
    def feature_idx(self) -> int:
        return int(self.index.value)

    def show(self, feature_idx: int) -> None:
        """Fill every view for ``feature_idx``."""
        ex = self.explorer
        self.summary.value = ex.summary_html(feature_idx)
        self.histogram.value = ex.histogram_html(feature_idx)
        self.logits.value = ex.logits_html(feature_idx)
        self.contexts.value = ex.contexts_html(feature_idx)
        self._show_prompt()

    def _show_prompt(self) -> None:
        text = self.prompt.value
        self.prompt_view.value = (self.explorer.prompt_html(self.feature_idx, text) if text.strip()
                                  else "<p>Type a prompt to see the feature on it.</p>")

    def _on_ranked(self, change) -> None:
        if change["new"] is not None and change["new"] != self.index.value:
            self.index.value = change["new"]  # fires _on_index, which shows it

    def _on_index(self, change) -> None:
        ranked = [value for _, value in self.ranked.options]
        self.ranked.value = change["new"] if change["new"] in ranked else None
        self.show(change["new"])
