"""Naming step-SAE latents from their N2G patterns, as the reference code does (notebook 08).

R (Miaow-Lab/SSAE, ``experiment/N2G/N2G_analysis``) writes one report per latent (its statistics,
its patterns, and the examples they came from; ``utils.py:4-81``) and asks an OpenAI-compatible
model, at temperature 0 in JSON mode (``pattern_mining.py:72-101``, ``experiment.yaml:48-62``),
for a JSON object with exactly the keys ``feature_index``, ``label`` (3-6 words),
``description``, ``top_patterns`` and ``trigger_texts``. There is no fixed list of categories:
the math prompt asks for the role of the reasoning step, the code prompt for the algorithmic
intent. Our prompts say the same in our own words, with our own worked examples; the reply
format is R's.

Two labellers share one interface, ``label(latent_idx, patterns, stats) -> dict``:

* ``LLMLabeller``: any OpenAI-compatible endpoint (``chat.ChatClient``); base URL and model are
  parameters, the key comes from an environment variable, never a profile.
* ``OfflineLabeller``: a deterministic stand-in for runs without an endpoint (the CPU toy). Its
  label is the latent's most frequent pattern tokens; it is marked
  ``labeller="offline heuristic"`` and says so in its description. It names no reasoning role.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping

import pandas as pd

from reasonlens.chat import ChatClient
from reasonlens.step_sae.n2g_reference import WILDCARD

log = logging.getLogger(__name__)

LABEL_KEYS = ("feature_index", "label", "description", "top_patterns", "trigger_texts")
LABEL_COLUMNS = ["latent_idx", "label", "description", "top_patterns", "trigger_texts",
                 "labeller", "error"]
OFFLINE = "offline heuristic"
DOMAINS = ("math", "code")

_SYSTEM = ("You study the features of a sparse autoencoder trained on the steps of reasoning "
           "traces. You read a report on one feature and say, in a short human-readable label, "
           "what it detects. You answer with a single JSON object and nothing else.")

_FOCUS = {
    "math": ("the role the step plays in the reasoning, e.g. stating the final answer, doing "
             "an arithmetic operation, drawing a conclusion, ordering events in time"),
    "code": ("what the code is trying to achieve or guard against, e.g. the base case of a "
             "recursion, checking the input before using it"),
}

_HEAD = "Patterns (a * stands for any token; each pattern fires on its own):"
# Worked examples of our own (R's prompts have few-shot examples of the same kind): a report and
# the JSON reply it should get.
_WORKED = {
    "math": [
        (f"""Latent 71
Statistics: precision 0.912, recall 0.884, F1 0.898
{_HEAD}
`#### *`, `The answer is *`, `In total , * #### *`
Examples:
1. pattern `#### *` | trigger text `#### 42` | activation 0.4210
2. pattern `The answer is *` | trigger text `The answer is 17 apples.` | activation 0.3977""",
         {"feature_index": 71, "label": "Stating The Final Answer",
          "description": "Fires on the step that announces the solution, usually marked by the "
                         "answer delimiter.",
          "top_patterns": ["#### *", "The answer is *"],
          "trigger_texts": ["#### 42", "The answer is 17 apples."]}),
        (f"""Latent 9
Statistics: precision 0.803, recall 0.765, F1 0.784
{_HEAD}
`* x * =`, `* times * =`, `* * * = *`
Examples:
1. pattern `* x * =` | trigger text `6 x 4 = 24 cookies.` | activation 0.2875
2. pattern `* times * =` | trigger text `3 times 12 = 36 pages.` | activation 0.2650""",
         {"feature_index": 9, "label": "Multiplying Two Quantities",
          "description": "Detects steps that compute a product of two numbers from the problem.",
          "top_patterns": ["* x * =", "* times * ="],
          "trigger_texts": ["6 x 4 = 24 cookies.", "3 times 12 = 36 pages."]}),
    ],
    "code": [
        (f"""Latent 33
Statistics: precision 0.871, recall 0.842, F1 0.856
{_HEAD}
`if not *:`, `if len ( * ) == 0`, `raise ValueError`
Examples:
1. pattern `if not *:` | trigger text `if not items:` | activation 0.3510
2. pattern `raise ValueError` | trigger text `raise ValueError("empty")` | activation 0.3022""",
         {"feature_index": 33, "label": "Guarding Against Invalid Input",
          "description": "Fires on checks that reject empty or malformed arguments before the "
                         "main logic runs.",
          "top_patterns": ["if not *:", "raise ValueError"],
          "trigger_texts": ["if not items:", 'raise ValueError("empty")']}),
    ],
}


def latent_report(latent_idx: int, patterns: pd.DataFrame, stats: Mapping | None = None,
                  n_examples: int = 20) -> str:
    """The per-latent report the labeller reads (R's content, utils.py:4-81, in our layout).

    Args:
        latent_idx: the latent.
        patterns: its rows of ``n2g_reference.mine_patterns`` (tokens, pattern_text, act,
            short_text, example).
        stats: its row of ``n2g_reference.evaluate_patterns`` (precision, recall, f1), or None.
        n_examples: examples shown at most (R: one per pattern, up to 20).

    Returns:
        The report: statistics, the patterns, and up to ``n_examples`` examples, each with its
        pattern, trigger text (the kept suffix), activation and full text.
    """
    stats = stats or {}
    line = ", ".join(f"{name} {float(stats[key]):.3f}" for key, name in
                     (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))
                     if key in stats)
    shown = ", ".join(f"`{t}`" for t in patterns["pattern_text"]) or "(none found)"
    out = [f"Latent {int(latent_idx)}", f"Statistics: {line or 'not evaluated'}",
           _HEAD, shown,
           "Examples:"]
    if len(patterns) == 0:
        out.append("(none)")
    for i, row in enumerate(patterns.head(n_examples).itertuples(index=False), start=1):
        trigger = str(row.short_text).strip()
        out.append(f"{i}. pattern `{row.pattern_text}` | trigger text `{trigger}` | activation "
                   f"{float(row.act):.4f}")
        out.append(f"   full text:\n```\n{row.example}\n```")
    return "\n".join(out)


def label_prompt(report: str, domain: str = "math") -> tuple[str, str]:
    """The system and user messages asking for a label of the latent in ``report``.

    Args:
        report: ``latent_report`` output.
        domain: ``"math"`` (the step's role; R's math_prompt.txt) or ``"code"`` (the algorithmic
            intent; R's code_prompt.txt).

    Returns:
        ``(system, user)``.

    Raises:
        ValueError: an unknown ``domain``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r} is unknown; use one of {list(DOMAINS)}.")
    worked = "\n\n".join(f"Report:\n{report}\n\nJSON:\n{json.dumps(reply)}"
                           for report, reply in _WORKED[domain])
    user = f"""Name the feature described in the report at the end.

1. Read its patterns and examples. A * in a pattern stands for any single token; the patterns
   are separate triggers, not a sequence.
2. Write a `label` of 3 to 6 words for what they share. Focus on {_FOCUS[domain]}.
3. Write a one-sentence `description`, pick the 3 to 5 most telling patterns as `top_patterns`
   and 2 to 5 representative trigger texts as `trigger_texts`, copied from the report, and give
   the feature's index as the integer `feature_index`.
4. Reply with one JSON object with exactly the keys `feature_index`, `label`, `description`,
   `top_patterns`, `trigger_texts`, and nothing else.

Worked examples:

{worked}

Now the feature to name.

Report:
{report}

JSON:"""
    return _SYSTEM, user


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_label_reply(text: str, latent_idx: int | None = None) -> dict:
    """Read and check a labeller's reply: one JSON object with R's five keys.

    A Markdown code fence around the object is removed (some endpoints ignore JSON mode). Keys
    beyond the five are dropped. A label outside 3-6 words is kept with a logged warning (R
    asks for 3-6 words and does not check).

    Args:
        text: the reply.
        latent_idx: the latent asked about; ``feature_index`` must equal it (None: not checked).

    Returns:
        ``{"feature_index": int, "label": str, "description": str, "top_patterns": [str],
        "trigger_texts": [str]}``.

    Raises:
        ValueError: not JSON, not an object, a key missing, a value of the wrong type, or a
            ``feature_index`` other than ``latent_idx``; the message names the problem and
            quotes the start of the reply.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    stripped = fenced.group(1) if fenced else stripped
    quote = f"Reply: {text[:200]!r}"
    try:
        reply = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise ValueError(f"the labeller's reply is not JSON ({error.msg} at char {error.pos}). "
                         f"{quote}") from None
    if not isinstance(reply, dict):
        raise ValueError(f"the labeller's reply is a JSON {type(reply).__name__}, not an object "
                         f"with keys {list(LABEL_KEYS)}. {quote}")
    missing = [k for k in LABEL_KEYS if k not in reply]
    if missing:
        raise ValueError(f"the labeller's reply lacks {missing}; it needs exactly "
                         f"{list(LABEL_KEYS)}. {quote}")
    index = reply["feature_index"]
    if isinstance(index, str) and index.strip().lstrip("-").isdigit():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"feature_index={reply['feature_index']!r} must be an integer. {quote}")
    if latent_idx is not None and index != int(latent_idx):
        raise ValueError(f"feature_index={index} but latent {latent_idx} was asked about. {quote}")
    for key in ("label", "description"):
        if not isinstance(reply[key], str) or not reply[key].strip():
            raise ValueError(f"{key}={reply[key]!r} must be a non-empty string. {quote}")
    for key in ("top_patterns", "trigger_texts"):
        value = reply[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}={value!r} must be a list of strings. {quote}")
    n_words = len(reply["label"].split())
    if not 3 <= n_words <= 6:
        log.warning("latent %s: label %r has %d words, not 3-6", index, reply["label"], n_words)
    return {"feature_index": index, "label": reply["label"].strip(),
            "description": reply["description"].strip(),
            "top_patterns": list(reply["top_patterns"]),
            "trigger_texts": list(reply["trigger_texts"])}


class LLMLabeller:
    """Labels from a model at an OpenAI-compatible endpoint (R's pattern_mining.py).

    Temperature 0, top-p 1, JSON mode, up to 32768 reply tokens, and 3 attempts (R: 2 retries)
    both at the HTTP level and for a reply that is not a valid label (experiment.yaml:55-60).

    Args:
        base_url: the endpoint's base URL, e.g. ``https://api.openai.com/v1``.
        model: the model's name there (R: e.g. ``gemini-3-pro-preview``).
        domain: ``"math"`` or ``"code"`` (see ``label_prompt``).
        key_env: the environment variable holding the key (R: ``OPENAI_API_KEY``); unset or
            empty: no key is sent (a local server).
        max_tokens, max_retries, timeout_s: passed to ``chat.ChatClient``.
        n_examples: examples per report (R: up to 20).

    Raises:
        ValueError: an unknown ``domain``, or ``base_url``/``model`` empty.
    """

    def __init__(self, base_url: str, model: str, domain: str = "math",
                 key_env: str = "OPENAI_API_KEY", max_tokens: int = 32768, max_retries: int = 3,
                 timeout_s: float = 300.0, n_examples: int = 20, backoff_s: float = 1.0):
        if not base_url or not model:
            raise ValueError(f"base_url={base_url!r} and model={model!r} must both be set to "
                             "label latents with an LLM; use OfflineLabeller() without one.")
        label_prompt("", domain)  # checks the domain
        self.domain, self.n_examples, self.max_retries = domain, n_examples, max_retries
        self.client = ChatClient(base_url, model, os.environ.get(key_env) or None,
                                 temperature=0.0, max_tokens=max_tokens, max_retries=max_retries,
                                 timeout_s=timeout_s, name="N2G labeller", backoff_s=backoff_s,
                                 hint="; label offline with n2g_labels.OfflineLabeller().")
        self.name = f"llm:{model}"

    def label(self, latent_idx: int, patterns: pd.DataFrame, stats: Mapping | None = None
              ) -> dict:
        """The label of one latent from its patterns and statistics (``label_latents``' rows).

        Raises:
            RuntimeError: the endpoint did not answer.
            ValueError: no valid label in ``max_retries`` replies (``parse_label_reply``).
        """
        system, user = label_prompt(latent_report(latent_idx, patterns, stats, self.n_examples),
                                    self.domain)
        error = None
        for _ in range(self.max_retries):
            reply = self.client.ask(user, system=system, top_p=1.0,
                                    response_format={"type": "json_object"})
            try:
                return parse_label_reply(reply, latent_idx) | {"labeller": self.name}
            except ValueError as err:
                error = err
                log.warning("latent %s: invalid label reply: %s", latent_idx, err)
        raise ValueError(f"no valid label for latent {latent_idx} in {self.max_retries} replies "
                         f"from {self.client.url}: {error}")


class OfflineLabeller:
    """A deterministic, offline stand-in for the LLM labeller (for the CPU toy).

    The label lists the (up to) three most frequent non-wildcard pattern tokens, each pattern
    counted once per example that gave it (ties: first seen); ``top_patterns`` are the patterns
    given by most examples, ``trigger_texts`` their trigger texts. It reads tokens, not meaning:
    it is no substitute for the LLM's label, and its output says so
    (``labeller="offline heuristic"``).
    """

    name = OFFLINE

    def label(self, latent_idx: int, patterns: pd.DataFrame, stats: Mapping | None = None
              ) -> dict:
        """Same output as ``LLMLabeller.label`` (R's five keys and ``labeller``)."""
        counts: Counter[str] = Counter()
        for tokens, n in zip(patterns["tokens"], patterns["n_sources"]):
            for token in tokens:
                if token != WILDCARD and token.strip():
                    counts[token.strip()] += int(n)
        top = [t for t, _ in counts.most_common(3)]
        label = ("tokens " + " ".join(f"'{t}'" for t in top) if top
                 else "wildcard-only patterns")
        ranked = patterns.sort_values("n_sources", ascending=False, kind="stable").head(5)
        found = ", ".join(f"'{t}' x{counts[t]}" for t in top) or "none (every token a wildcard)"
        return {"feature_index": int(latent_idx), "label": label,
                "description": (f"Offline heuristic, not a language model: the most frequent "
                                f"non-wildcard tokens of the latent's {len(patterns)} mined "
                                f"patterns are {found}."),
                "top_patterns": ranked["pattern_text"].tolist(),
                "trigger_texts": [str(t).strip() for t in ranked["short_text"]],
                "labeller": self.name}


def label_latents(patterns: pd.DataFrame, evaluation: pd.DataFrame | None, labeller,
                  errors: str = "raise") -> pd.DataFrame:
    """One label per latent of ``patterns`` (R's pattern_mining.py:104-203).

    Args:
        patterns: ``n2g_reference.mine_patterns`` output.
        evaluation: ``n2g_reference.evaluate_patterns`` output (its per-latent rows give the
            statistics), or None.
        labeller: ``LLMLabeller`` or ``OfflineLabeller``.
        errors: ``"raise"``: stop at the first failure; ``"record"``: as R, keep going and put
            the error's message in the row's ``error`` column.

    Returns:
        One row per latent, in ``evaluation``'s order (latents without patterns included, as R
        labels every row of its results but the average), else ``patterns``': latent_idx,
        label, description, top_patterns, trigger_texts, labeller, error (None when labelled).

    Raises:
        ValueError: an unknown ``errors``; with ``errors="raise"``, the labeller's errors.
    """
    if errors not in ("raise", "record"):
        raise ValueError(f"errors={errors!r} must be 'raise' or 'record'.")
    stats = {}
    if evaluation is not None:
        per_latent = evaluation[evaluation["scope"] == "latent"]
        stats = {int(r["latent_idx"]): r for r in per_latent.to_dict("records")}
    order = list(stats) if stats else list(dict.fromkeys(int(i) for i in patterns["latent_idx"]))
    rows = []
    for latent_idx in order:
        group = patterns[patterns["latent_idx"] == latent_idx]
        try:
            label = labeller.label(latent_idx, group, stats.get(latent_idx))
        except (RuntimeError, ValueError) as error:
            if errors == "raise":
                raise
            rows.append({"latent_idx": int(latent_idx), "labeller": labeller.name,
                         "error": str(error)})
            continue
        rows.append({"latent_idx": int(latent_idx), "label": label["label"],
                     "description": label["description"], "top_patterns": label["top_patterns"],
                     "trigger_texts": label["trigger_texts"], "labeller": label["labeller"],
                     "error": None})
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)
