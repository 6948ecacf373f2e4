"""The world's mechanism in a model: decision points and the features that tell them apart."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from reasonlens import models
from reasonlens.mechanism import decision_feature_auc, decision_points
from reasonlens.scoring import folded_sae


@pytest.fixture(scope="module")
def traces(world):
    return world.documents[world.documents.kind == "trace"].head(16).reset_index(drop=True)


def test_decision_points_sit_on_the_newline_after_each_compute_line(world, traces, tokenizer):
    points = decision_points(traces, world.steps, tokenizer)
    steps = world.steps[world.steps.problem_id.isin(traces.problem_id)]
    assert len(points) == (steps.kind == "compute").sum()
    ids = tokenizer(traces.text.tolist(), add_special_tokens=False)["input_ids"]
    for row in points.itertuples():
        assert tokenizer.decode(ids[row.doc_idx][row.position]) == "\n"
        # the text before the newline ends with the compute line itself
        before = tokenizer.decode(ids[row.doc_idx][:row.position])
        step = steps[(steps.problem_id == row.problem_id) & (steps.step_idx == row.step_idx)]
        assert before.endswith(step.text.iloc[0])
        following = steps[(steps.problem_id == row.problem_id)
                          & (steps.step_idx == row.step_idx + 1)].kind.iloc[0]
        assert row.is_reflected == (following in ("check", "correct"))
        assert row.looks_hard == (step.hardness.iloc[0] == 2)


def test_decision_points_refuse_steps_of_another_world(world, traces, tokenizer):
    other = world.steps.assign(text=world.steps.text + " (edited)")
    with pytest.raises(ValueError, match="same world"):
        decision_points(traces, other, tokenizer)


def test_feature_auc_matches_activations_read_one_document_at_a_time(world, traces, tokenizer,
                                                                     toy_model, sae):
    """Oracle: each document alone, unpadded, through the model; the folded SAE's activation at
    the point; sklearn's AUC."""
    model = models.HFHookedModel(toy_model, tokenizer)
    points = decision_points(traces, world.steps, tokenizer)
    table = decision_feature_auc(model, sae, traces, points, batch_size=7)
    assert len(table) == sae.cfg.d_sae and table.auc.between(0, 1).all()
    folded = folded_sae(sae)
    rows = []
    for row in points.itertuples():
        ids = tokenizer(traces.text[row.doc_idx], add_special_tokens=False)["input_ids"]
        _, cache = model.run_with_cache(torch.tensor([ids]), [sae.cfg.metadata.hook_name])
        with torch.no_grad():
            rows.append(folded.encode(cache[sae.cfg.metadata.hook_name][0, row.position]).numpy())
    acts = np.stack(rows)
    label = points.looks_hard.to_numpy(bool)
    for f in range(0, sae.cfg.d_sae, 9):
        expected = roc_auc_score(label, acts[:, f]) if acts[:, f].any() else 0.5
        assert table.auc[f] == pytest.approx(expected, abs=1e-6)
        assert table.mean_looks_hard[f] == pytest.approx(acts[label, f].mean(), abs=1e-5)
    with pytest.raises(ValueError, match="look hard and others"):
        decision_feature_auc(model, sae, traces, points[points.looks_hard], batch_size=7)
