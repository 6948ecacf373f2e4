"""The synthetic world's built-in mechanism, looked for in a model's SAE features.

The world's traces are written so that the decision to reflect depends on one visible variable:
whether the update just stated *looks* hard (``Family.hardness == 2``: a carry or wrap with an
operand of 6 or more; ``world/traces.py``). A model that imitates the traces makes that decision
at the newline ending each compute line: the token it predicts next either opens a reflection
("Wait", "Let me check") or the next step. So the mechanism a method should find is the
representation, at those *decision points*, that separates steps that look hard from the others.

``decision_points`` locates the decision points of the world's traces; ``decision_feature_auc``
scores every SAE feature by how well its activation there tells the two apart (ROC AUC), so a
notebook can say whether ReasonScore's top features are the decision features, or only fire on
the reflection words that follow them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from reasonlens.explorer import feature_activations
from reasonlens.scoring import folded_sae
from reasonlens.world.outcomes import is_followed_by_reflection


def decision_points(documents: pd.DataFrame, steps: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """The token positions at which a model reading a trace decides whether to reflect.

    Args:
        documents: trace documents (notebook 01's ``documents`` rows of ``kind == 'trace'``):
            ``problem_id`` and ``text``, special tokens spelled out.
        steps: the world's step table (``problem_id``, ``step_idx``, ``text``, ``kind``,
            ``hardness``), in trace order.
        tokenizer: a fast tokenizer (it must return offsets).

    Returns:
        One row per compute line: ``doc_idx`` (row of ``documents``), ``problem_id``,
        ``step_idx``, ``position`` (the token holding the newline that ends the line),
        ``hardness``, ``looks_hard`` (hardness 2) and ``is_reflected`` (the trace's next line is
        a check or a correction).

    Raises:
        ValueError: a document whose trace does not contain its steps in order.
    """
    encoded = tokenizer(documents.text.tolist(), add_special_tokens=False,
                        return_offsets_mapping=True)
    steps = steps.sort_values(["problem_id", "step_idx"])
    steps = steps.assign(is_reflected=is_followed_by_reflection(steps))
    by_problem = dict(tuple(steps.groupby("problem_id")))
    rows = []
    for doc_idx, (problem_id, text) in enumerate(zip(documents.problem_id, documents.text)):
        trace = by_problem[problem_id]
        ends = [end for _, end in encoded["offset_mapping"][doc_idx]]
        cursor = 0
        for step in trace.itertuples():
            start = text.find(step.text + "\n", cursor)
            if start < 0:
                raise ValueError(f"document {doc_idx} (problem {problem_id}) does not contain step "
                                 f"{step.step_idx} ({step.text!r}) where expected; pass the trace "
                                 "documents and the step table of the same world.")
            newline = start + len(step.text)
            cursor = newline + 1
            if step.kind != "compute":
                continue
            position = int(np.searchsorted(ends, newline + 1))  # the token ending past it
            rows.append(dict(doc_idx=doc_idx, problem_id=problem_id, step_idx=step.step_idx,
                             position=position, hardness=step.hardness,
                             looks_hard=step.hardness == 2, is_reflected=step.is_reflected))
    return pd.DataFrame(rows)


def decision_feature_auc(model, sae, documents: pd.DataFrame, points: pd.DataFrame,
                         batch_size: int = 16) -> pd.DataFrame:
    """Every SAE feature's activation at the decision points, scored against ``looks_hard``.

    Args:
        model: a hooked model with ``tokenizer`` (``models.load_hooked``).
        sae: the SAE (its decoder norms are folded into a copy, as for ReasonScore).
        documents: the documents ``points`` index (``decision_points``).
        points: ``decision_points`` output with both values of ``looks_hard``.
        batch_size: documents per forward pass.

    Returns:
        One row per feature: ``feature_idx``; ``auc``, the ROC AUC of its activation for
        ``looks_hard`` (0.5: no information; above: it fires where the model should reflect);
        ``mean_looks_hard`` and ``mean_other``, its mean activation at the two kinds of point.

    Raises:
        ValueError: points of only one kind.
    """
    if points.looks_hard.nunique() != 2:
        raise ValueError("points must include decision points that look hard and others; "
                         "use more documents.")
    tokenizer = model.tokenizer
    ids = tokenizer(documents.text.tolist(), add_special_tokens=False)["input_ids"]
    d_sae, folded = sae.cfg.d_sae, folded_sae(sae)
    at_points = np.zeros((len(points), d_sae), dtype=np.float32)
    for start in range(0, len(ids), batch_size):  # one batch of documents at a time, in memory
        batch = ids[start:start + batch_size]
        width = max(map(len, batch))
        tokens = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in batch])
        acts = feature_activations(model, folded, tokens, list(range(d_sae)),
                                   batch_size=batch_size, progress=False)  # [docs, pos, d_sae]
        inside = (points.doc_idx >= start).to_numpy() & (points.doc_idx < start + len(batch)
                                                         ).to_numpy()
        at_points[inside] = acts[torch.tensor(points.doc_idx[inside].to_numpy() - start),
                                 torch.tensor(points.position[inside].to_numpy())].numpy()
    label = points.looks_hard.to_numpy(bool)
    auc = np.array([roc_auc_score(label, at_points[:, f]) if at_points[:, f].any() else 0.5
                    for f in range(d_sae)])
    return pd.DataFrame({"feature_idx": np.arange(d_sae), "auc": auc,
                         "mean_looks_hard": at_points[label].mean(0),
                         "mean_other": at_points[~label].mean(0)})
