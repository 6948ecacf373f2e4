"""Linear probes from step features to step properties (Yang et al., 2026, Sec. 4.2).

Three targets per step: correctness (the synthetic world's ground truth), length (token count,
binned at the training set's quantiles) and first token (the most frequent ones, the rest pooled
as ``other``). Each is predicted by a logistic regression (scikit-learn, standardised features)
from the step-level SAE's latents, from a token-level SAE's features mean-pooled over the step's
tokens, and by the *statistics baseline*: the training set's class frequencies (the class ratio,
the length distribution, the first-token frequencies) predicted for every step. Reported per
target and feature set: accuracy, AUC (one-vs-rest, macro over classes present) and log loss.

The second half of this module is the authors' probing as their code defines it (Miaow-Lab/SSAE,
*R*; audit section 3): correctness as whether the SSAE's greedy reconstruction of a step ends in
the step's last number (``reconstruction_correctness``), length as a token count and the first
token as an id over the whole vocabulary (``reference_step_labels``), R's MLP per task
(``step_sae.classifier``), its statistics baseline (``reference_statistics``), and the
context-only baselines (``inference.context_only_states``; ``context_end_features`` with its
labels ``continuation_correctness``), in one long table (``reference_probe_table``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from reasonlens import scoring
from reasonlens.config import Config, check_range
from reasonlens.models import device_of, sae_hook_name, sae_on_model_device
from reasonlens.step_sae import answers_reference, inference
from reasonlens.step_sae import classifier as step_classifier
from reasonlens.step_sae.data import StepExamples

STATISTICS = "statistics"
OTHER = "other"


@dataclasses.dataclass(frozen=True)
class ProbeConfig(Config):
    """Targets and classifier.

    Args:
        n_length_bins: length classes (quantile bins of the training steps' token counts; ties
            may merge bins).
        n_first_tokens: first-token classes (the most frequent; the rest is ``other``).
        C: inverse L2 regularisation of the logistic regression.
        max_iter: solver iterations.
    """

    n_length_bins: int = 3
    n_first_tokens: int = 8
    C: float = 1.0
    max_iter: int = 2000

    def __post_init__(self):
        check_range("n_length_bins", self.n_length_bins, 2)
        check_range("n_first_tokens", self.n_first_tokens, 1)
        check_range("C", self.C, 1e-12)


def step_targets(train: pd.DataFrame, test: pd.DataFrame, cfg: ProbeConfig
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Labels of each probe task, for the training and the held-out steps.

    Tasks: ``correctness`` (when both tables have a non-null ``is_correct``), ``length`` (from
    ``n_tokens``) and ``first_token`` (from ``first_token``).

    Raises:
        ValueError: a table lacks ``n_tokens`` or ``first_token`` (``with_token_labels`` adds
            them).
    """
    for name, table in (("train", train), ("test", test)):
        missing = {"n_tokens", "first_token"} - set(table.columns)
        if missing:
            raise ValueError(f"the {name} step table lacks {sorted(missing)}; add them with "
                             "probes.with_token_labels(table, tokenizer).")
    targets = {}
    if all("is_correct" in t.columns and t["is_correct"].notna().all() for t in (train, test)):
        targets["correctness"] = (train["is_correct"].to_numpy(bool),
                                  test["is_correct"].to_numpy(bool))
    _, edges = pd.qcut(train["n_tokens"], cfg.n_length_bins, retbins=True, duplicates="drop")
    if len(edges) < 3:  # tied quantiles merged every bin into one: nothing to predict
        raise ValueError(f"the training steps' lengths (n_tokens {sorted(set(train['n_tokens']))}) "
                         f"fill a single one of n_length_bins={cfg.n_length_bins} quantile bins; "
                         "use more, or more varied, training steps (step_n_train).")
    edges[0], edges[-1] = -np.inf, np.inf
    names = [f"<={int(hi)}" if lo == -np.inf else f">{int(lo)}" if hi == np.inf
             else f"{int(lo) + 1}-{int(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
    targets["length"] = tuple(pd.cut(t["n_tokens"], edges, labels=names).astype(str).to_numpy()
                              for t in (train, test))
    top = train["first_token"].value_counts().index[: cfg.n_first_tokens]
    targets["first_token"] = tuple(np.where(t["first_token"].isin(top), t["first_token"], OTHER)
                                   for t in (train, test))
    return targets


def with_token_labels(table: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """``table`` with ``n_tokens`` and ``first_token`` of each step (kept if already there)."""
    if {"n_tokens", "first_token"} <= set(table.columns):
        return table
    ids = tokenizer(table["step"].tolist(), add_special_tokens=False)["input_ids"]
    return table.assign(n_tokens=[len(i) for i in ids],
                        first_token=[tokenizer.convert_ids_to_tokens(i[0]) for i in ids])


def fit_probe(features: np.ndarray, labels: np.ndarray, cfg: ProbeConfig) -> Pipeline:
    """A standardised logistic regression from ``features [n, d]`` to ``labels [n]``.

    Raises:
        ValueError: fewer than two classes among ``labels``.
    """
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the probe's labels hold one class only ({np.unique(labels)}); use more "
                         "training steps (step_n_train).")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter))
    return probe.fit(features, labels)


def classification_metrics(labels: np.ndarray, proba: np.ndarray, classes: np.ndarray
                           ) -> dict[str, float]:
    """Accuracy, AUC and log loss of class probabilities ``proba [n, n_classes]``.

    AUC is the one-vs-rest AUC averaged over the classes that have both positives and negatives
    among ``labels`` (the binary AUC for two classes); NaN when there is none. Labels outside
    ``classes`` count as errors and get the loss of a 1e-15 probability.
    """
    labels, classes = np.asarray(labels), np.asarray(classes)
    predicted = classes[proba.argmax(1)]
    column = {c: i for i, c in enumerate(classes.tolist())}
    aucs = [roc_auc_score(labels == c, proba[:, i]) for c, i in column.items()
            if 0 < (labels == c).sum() < len(labels)]
    if len(classes) == 2:
        aucs = aucs[1:]
    known = np.isin(labels, classes)
    p_true = np.full(len(labels), 1e-15)
    p_true[known] = proba[known, [column[c] for c in labels[known]]]
    return {"accuracy": accuracy_score(labels, predicted),
            "auc": float(np.mean(aucs)) if aucs else float("nan"),
            "loss": float(-np.log(np.clip(p_true, 1e-15, 1)).mean())}


def statistics_baseline(train_labels: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """The training class frequencies, predicted for each of ``n_test`` steps.

    Returns:
        ``(classes, proba [n_test, n_classes])``.
    """
    classes, counts = np.unique(train_labels, return_counts=True)
    return classes, np.tile(counts / counts.sum(), (n_test, 1))


def probe_table(feature_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                targets: dict[str, tuple[np.ndarray, np.ndarray]], cfg: ProbeConfig
                ) -> pd.DataFrame:
    """Every task against every feature set and the statistics baseline.

    Args:
        feature_sets: name -> (train features ``[n_train, d]``, test features ``[n_test, d]``).
        targets: task -> (train labels, test labels), from ``step_targets``.
        cfg: the classifier.

    Returns:
        One row per (task, features): accuracy, auc, loss, n_classes, n_train, n_test.
    """
    rows = []
    for task, (y_train, y_test) in targets.items():
        classes, proba = statistics_baseline(y_train, len(y_test))
        results = {STATISTICS: classification_metrics(y_test, proba, classes)}
        for name, (x_train, x_test) in feature_sets.items():
            probe = fit_probe(x_train, y_train, cfg)
            results[name] = classification_metrics(y_test, probe.predict_proba(x_test),
                                                   probe.classes_)
        for name, metrics in results.items():
            rows.append({"task": task, "features": name, **metrics, "n_classes": len(classes),
                         "n_train": len(y_train), "n_test": len(y_test)})
    return pd.DataFrame(rows)


def pooled_token_features(model, sae, examples: StepExamples, hook_name: str | None = None,
                          batch_size: int = 32) -> np.ndarray:
    """A token-level SAE's features mean-pooled over each step's tokens: ``[n_steps, d_sae]``.

    The LM reads ``context step`` (no separator, as in a trace); padding goes on the right, so
    the causal model's activations at the real tokens do not see it (any pad id works).

    Args:
        model: a ``reasonlens.models`` hooked model (either backend).
        sae: a SAELens SAE for one of its hook points (notebook 03), moved to the model's device
            first (``models.sae_on_model_device``).
        examples: tokenized steps.
        hook_name: default: the SAE's own.
        batch_size: sequences per model pass.

    Raises:
        ValueError: an SAE on the meta device.
    """
    hook_name = sae_hook_name(sae, hook_name)
    sae = sae_on_model_device(sae, model)
    device = device_of(model)
    out = []
    for start in tqdm(range(0, len(examples), batch_size), desc="token SAE", mininterval=2.0):
        rows = [list(c) + list(s) for c, s in zip(examples.context_ids[start: start + batch_size],
                                                  examples.step_ids[start: start + batch_size])]
        tokens = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
        mask = torch.zeros(tokens.shape)
        for i, (row, step) in enumerate(zip(rows, examples.step_ids[start: start + batch_size])):
            tokens[i, : len(row)] = torch.tensor(row)
            mask[i, len(row) - len(step): len(row)] = 1
        with torch.no_grad():
            acts = scoring.encode_batch(model, sae, tokens.to(device), hook_name)
        mask = mask.to(acts)
        out.append(((acts * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).cpu())
    return torch.cat(out).numpy()


# --- the reference's probes (Miaow-Lab/SSAE, "R"; audit section 3) -----------------------------
# R's targets, labels and baselines; its MLP and training are in ``step_sae.classifier``. Our
# logistic probes above stay as they are ("ours"); ``reference_probe_table`` is R's table.

REFERENCE_MAX_STEP_TOKENS = 128  # classifier_data.py:208: steps counted up to 128 tokens


def last_number_matches(reference_step: str, decoded: str,
                        tolerance: float = answers_reference.TOLERANCE) -> bool:
    """R's GSM8K correctness judge (classifier_data.py:39-51): do the last numbers agree?

    True when both texts hold a number and their last numbers differ by less than ``tolerance``
    as floats: the same reading and comparison as R's voting (classifier_data.py:40, 47 repeat
    probing_exp.py's rule), hence ``answers_reference.last_number`` and ``numbers_match``. A
    step without a number is *incorrect* (R returns 0, not "undefined"), and so is a decoding
    without one.
    """
    return answers_reference.numbers_match(answers_reference.last_number(decoded),
                                           answers_reference.last_number(reference_step),
                                           tolerance)


def reconstruction_correctness(model, examples: StepExamples, tokenizer,
                               max_new_tokens: int = 256, batch_size: int = 64,
                               return_texts: bool = False):
    """R's correctness label: does the SSAE's greedy decoding of a step from its own latent end
    in the step's last number? (classifier_data.py:222-241; model_qwen.py:159-254)

    Each step is encoded (``context <sep> step <eos>``, the latent at ``<eos>``), then decoded
    greedily from that latent and its context (``inference.greedy_decode``, R's
    ``temperature=0``), detokenised without special tokens (R: ``skip_special_tokens=True``),
    and judged by ``last_number_matches`` against the step's *text* (``examples.table["step"]``,
    untruncated, as R compares its ``steps`` strings). R prefixes each decoding with a newline
    token (model_qwen.py:182-183), which holds no number; we leave it out. R decodes in bf16 in
    batches; we decode in batches in the model's dtype. Math data other than GSM8K is
    labelled by an LLM judge in R (classifier_data.py:54-115, 243-247): not reproduced.

    Args:
        model: a trained ``StepSAE``.
        examples: the steps.
        tokenizer: the SSAE's tokenizer (for detokenising).
        max_new_tokens: the most tokens decoded per step (R: 256, configs/classifier.yaml:15).
        batch_size: steps encoded and decoded per pass.
        return_texts: also return the decoded texts.

    Returns:
        ``[n_steps]`` booleans (R's 1/0; a step without a number is False), and the decoded
        texts when ``return_texts``.

    Raises:
        ValueError: ``examples.table`` has no ``step`` column.
    """
    if "step" not in examples.table.columns:
        raise ValueError("examples.table lacks the 'step' column (the step texts R compares "
                         "with); tokenize a step table (data.tokenize_steps).")
    model.eval()
    texts = []
    start = 0
    with torch.no_grad():
        for batch in inference.batches(model, examples.context_ids, examples.step_ids,
                                       batch_size, "decode"):
            latents = model.encode(batch)
            contexts = examples.context_ids[start: start + len(latents)]
            start += len(latents)
            texts += tokenizer.batch_decode(inference.greedy_decode(model, contexts, latents,
                                                                    max_new_tokens),
                                            skip_special_tokens=True)
    correct = np.array([last_number_matches(s, t) for s, t in zip(examples.table["step"], texts)],
                       dtype=bool)
    return (correct, texts) if return_texts else correct


def reference_step_labels(steps, tokenizer, max_tokens: int = REFERENCE_MAX_STEP_TOKENS
                          ) -> pd.DataFrame:
    """R's length and first-token labels of each step text (classifier_data.py:206-215).

    ``step_length``: the step's token count, at most ``max_tokens`` (R truncates at 128);
    ``begin_token_id``: its first token's id. Tokenised without special tokens, as R's Qwen
    path does; for Llama/Gemma R's ``encode`` adds a BOS, which R counts in the length (+1) and
    skips for the first token (line 211-212): only the constant shift of the length differs.
    R's token-SAE script always takes index 0 (token-sae/baselines_classifier_data.py:256), so
    for those models its first-token label is the BOS of every step; we do not copy that.

    Args:
        steps: the step texts (a sequence or Series).
        tokenizer: the LM's tokenizer.
        max_tokens: R's truncation.

    Returns:
        Columns ``step_length`` and ``begin_token_id``, one row per step.

    Raises:
        ValueError: a step that tokenises to nothing (R skips blank steps when reading,
            dataloader.py:15).
    """
    ids = tokenizer(list(steps), add_special_tokens=False)["input_ids"]
    empty = [i for i, s in enumerate(ids) if not s]
    if empty:
        raise ValueError(f"{len(empty)} step(s) tokenize to nothing (row {empty[0]}); drop "
                         "blank steps first, as R's reader does.")
    return pd.DataFrame({"step_length": [min(len(s), max_tokens) for s in ids],
                         "begin_token_id": [s[0] for s in ids]})


def reference_targets(train_labels: pd.DataFrame, test_labels: pd.DataFrame,
                      correctness: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """R's probe targets for the training and evaluation steps.

    Args:
        train_labels, test_labels: ``reference_step_labels`` of each split.
        correctness: ``(train, test)`` 0/1 labels (``reconstruction_correctness``), or None.

    Returns:
        task -> (train, test): ``length`` (float counts), ``first_token`` (int ids) and, when
        given, ``correctness`` (0/1 floats).
    """
    targets = {
        "length": tuple(t["step_length"].to_numpy(float) for t in (train_labels, test_labels)),
        "first_token": tuple(t["begin_token_id"].to_numpy(int)
                             for t in (train_labels, test_labels))}
    if correctness is not None:
        targets["correctness"] = tuple(np.asarray(c, dtype=float) for c in correctness)
    return targets


def reference_statistics(targets: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """R's statistics baseline (classifier/statistic_baseline.py:13-71), in the probes' metrics.

    * ``length``: ``mse`` = the variance of the *training* lengths (R prints their std, lines
      56-59; its square is the MSE of predicting their mean, which Fig. 1 compares with the
      probes' MSE, plotting/figure_1.py:24-35).
    * ``first_token``: ``cross_entropy`` = the entropy (nats) of the training first tokens'
      unigram distribution and ``perplexity`` = exp of it (lines 13-30, 50-54); ``accuracy`` =
      the share of evaluation steps starting with the most frequent training token (ours).
    * ``correctness``: ``positive_ratio`` = the mean label of the *evaluation* steps (R's
      ``val_npz``, lines 62-66); ``accuracy`` = that of predicting the training majority class
      on them (ours; R reports only the ratio).

    Args:
        targets: task -> (train, test) labels (``reference_targets``).

    Returns:
        Long format: features (``"statistics"``), task, metric, value.
    """
    rows = []
    for task, (train, test) in targets.items():
        train, test = np.asarray(train), np.asarray(test)
        if task == "length":
            metrics = {"mse": float(np.var(train.astype(float)))}
        elif task == "first_token":
            classes, counts = np.unique(train, return_counts=True)
            p = counts / counts.sum()
            entropy = float(-(p * np.log(p)).sum())
            metrics = {"cross_entropy": entropy, "perplexity": float(np.exp(entropy)),
                       "accuracy": float((test == classes[counts.argmax()]).mean())}
        elif task == "correctness":
            majority = float(np.mean(train) > 0.5)
            metrics = {"accuracy": float((test == majority).mean()),
                       "positive_ratio": float(np.mean(test))}
        else:
            raise ValueError(f"task={task!r} is unknown; use one of "
                             f"{list(step_classifier.TASKS)}.")
        rows += [{"features": STATISTICS, "task": task, "metric": m, "value": v}
                 for m, v in metrics.items()]
    return pd.DataFrame(rows, columns=["features", "task", "metric", "value"])


def reference_probe_table(feature_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                          targets: dict[str, tuple[np.ndarray, np.ndarray]],
                          cfg: step_classifier.ReferenceClassifierConfig,
                          n_classes: int | None = None,
                          feature_targets: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
                          | None = None, device: str = "cpu") -> pd.DataFrame:
    """R's probes: one MLP per (feature set, task), the statistics baseline beside them.

    Each probe is ``classifier.fit_classifier`` on the training features, its checkpoint chosen
    on a ``cfg.validation_fraction`` split of them (0: on the evaluation set, R's rule), and is
    scored on the evaluation features with ``classifier.prediction_metrics``.

    Args:
        feature_sets: name -> (train features ``[n_train, d]``, test features ``[n_test, d]``),
            e.g. the SSAE latents (``inference.encode_steps``), the context-only state
            (``inference.context_only_states``), the token SAE or layer at the last context
            token (``context_end_features``).
        targets: task -> (train labels ``[n_train]``, test labels ``[n_test]``), from
            ``reference_targets``.
        cfg: the MLP and its training.
        n_classes: outputs of ``first_token`` (R: ``tokenizer.vocab_size``).
        feature_targets: per feature set, tasks whose labels differ from ``targets`` (R labels
            the token-SAE baseline's correctness by the base model's continuation,
            ``continuation_correctness``); the statistics rows use ``targets``.
        device: where to train.

    Returns:
        Long format, one row per number: features, task, metric, value (``mse``;
        ``cross_entropy``, ``perplexity``, ``accuracy``; ``accuracy``, ``bce``,
        ``positive_ratio``). Pivot with ``table.pivot_table(index="features",
        columns=["task", "metric"], values="value")``.

    Raises:
        ValueError: a feature set whose rows do not match its labels (named).
    """
    rows = [reference_statistics(targets)]
    for name, (x_train, x_test) in feature_sets.items():
        own = {**targets, **(feature_targets or {}).get(name, {})}
        for task, (y_train, y_test) in own.items():
            if len(x_train) != len(y_train) or len(x_test) != len(y_test):
                raise ValueError(f"feature set {name!r} has {len(x_train)}/{len(x_test)} "
                                 f"train/test rows but task {task!r} has {len(y_train)}/"
                                 f"{len(y_test)} labels; compute both from the same steps.")
            validation = (x_test, y_test) if cfg.validation_fraction == 0 else None
            fitted = step_classifier.fit_classifier(x_train, y_train, task, cfg, n_classes,
                                                    validation, device)
            metrics = step_classifier.prediction_metrics(task, fitted.outputs(x_test), y_test,
                                                         cfg.batch_size, cfg.threshold)
            rows.append(pd.DataFrame([{"features": name, "task": task, "metric": m,
                                       "value": v} for m, v in metrics.items()]))
    return pd.concat(rows, ignore_index=True)


def _last_context_batch(examples: StepExamples, start: int, batch_size: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded contexts ``[batch, pos]`` (pad 0) and their last positions ``[batch]``."""
    contexts = examples.context_ids[start: start + batch_size]
    empty = [start + i for i, c in enumerate(contexts) if not c]
    if empty:
        raise ValueError(f"step {empty[0]} has an empty context: there is no last context token "
                         "to read (R's contexts always hold the question). Use "
                         "max_context_tokens > 0.")
    tokens = torch.zeros((len(contexts), max(map(len, contexts))), dtype=torch.long)
    for i, c in enumerate(contexts):
        tokens[i, : len(c)] = torch.tensor(c)
    return tokens, torch.tensor([len(c) - 1 for c in contexts])


def context_end_features(model, sae, examples: StepExamples, hook_name: str | None = None,
                         batch_size: int = 32) -> dict[str, np.ndarray]:
    """R's token-level baselines: the layer and its SAE at the last *context* token.

    R (token-sae/baselines_classifier_data.py:185-224) runs the base LM on each step's context
    alone (``hints``, no ``<sep>``, right-padded) and reads, at the context's last token, the
    residual stream at the SAE's hook point (``layer_acts``) and the SAE's post-activation
    features (``sae_acts``, ``hook_sae_acts_post``). Neither has seen the step; compare
    ``pooled_token_features`` (ours), which averages over the step's tokens. The context is
    ``examples.context_ids`` as tokenised (R's GSM8K reader keeps the *first* 256 context tokens,
    dataloader.py:56, so for a longer context R's "last" token is the 256th).

    R labels this baseline's correctness by the base LM's own greedy continuation
    (``continuation_correctness``), not by the SSAE's reconstruction: the probe then asks whether
    the features predict the base model getting the step's number. Pass those labels to
    ``reference_probe_table`` as ``feature_targets`` to reproduce R; with the shared SSAE labels
    every feature set answers the same question (ours).

    Args:
        model: a ``reasonlens.models`` hooked model (either backend).
        sae: a SAELens SAE for one of its hook points.
        examples: the steps (only their contexts are read).
        hook_name: default: the SAE's own.
        batch_size: contexts per model pass.

    Returns:
        ``{"layer_acts": [n_steps, d_model], "sae_acts": [n_steps, d_sae]}``.

    Raises:
        ValueError: an empty context, or an SAE on the meta device.
    """
    hook_name = sae_hook_name(sae, hook_name)
    sae = sae_on_model_device(sae, model)
    device = device_of(model)
    layer, feats = [], []
    for start in tqdm(range(0, len(examples), batch_size), desc="context end",
                      mininterval=2.0, disable=len(examples) <= batch_size):
        tokens, last = _last_context_batch(examples, start, batch_size)
        acts = scoring.capture_activations(model, tokens.to(device), hook_name)
        acts = acts[torch.arange(len(last)), last.to(acts.device)]
        with torch.no_grad():
            layer.append(acts.float().cpu())
            feats.append(sae.encode(acts).float().cpu())
    return {"layer_acts": torch.cat(layer).numpy(), "sae_acts": torch.cat(feats).numpy()}


def continuation_correctness(model, tokenizer, examples: StepExamples,
                             max_new_tokens: int = 256, return_texts: bool = False):
    """R's correctness label of the token-level baselines: the base LM's greedy continuation
    of the context, judged by ``last_number_matches`` against the step's text.

    token-sae/baselines_classifier_data.py:236-268: ``generate(do_sample=False)`` for up to 256
    tokens from the context alone (no ``<sep>``), detokenised without special tokens. The
    continuation is not cut at the end of the next step, so its last number is usually that of
    a later step or the final answer; R compares it with this step's last number anyway. We
    decode each context alone (R left-pads a batch), stopping at ``<eos>`` or at the model's
    context length (TransformerLens ``n_ctx``).

    Args:
        model: a ``reasonlens.models`` hooked model (either backend).
        tokenizer: its tokenizer.
        examples: the steps.
        max_new_tokens: R: 256 (configs/classifier.yaml:85).
        return_texts: also return the continuations.

    Returns:
        ``[n_steps]`` booleans, and the texts when ``return_texts``.

    Raises:
        ValueError: an empty context.
    """
    device = device_of(model)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    eos = tokenizer.eos_token_id
    texts = []
    for i in tqdm(range(len(examples)), desc="continue", mininterval=2.0,
                  disable=len(examples) <= 1):
        tokens, _ = _last_context_batch(examples, i, 1)
        generated: list[int] = []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                if n_ctx is not None and tokens.shape[1] >= n_ctx:
                    break
                token = int(model(tokens.to(device))[0, -1].argmax())
                if token == eos:
                    break
                generated.append(token)
                tokens = torch.cat([tokens, torch.tensor([[token]])], 1)
        texts.append(tokenizer.decode(generated, skip_special_tokens=True))
    correct = np.array([last_number_matches(s, t) for s, t in zip(examples.table["step"], texts)],
                       dtype=bool)
    return (correct, texts) if return_texts else correct
