"""Tests for reasonlens.step_sae.probes, .n2g and .voting."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tokenizers.processors import TemplateProcessing

from reasonlens import evaluation, models, scoring
from reasonlens.step_sae import data, n2g, probes, voting
from reasonlens.step_sae.inference import encode_steps
from reasonlens.step_sae.model import StepSAE, StepSAEConfig
from reasonlens.world import prompt


# --- probes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, field, lowest, below", [
    (probes.ProbeConfig, "n_length_bins", 2, 1),
    (probes.ProbeConfig, "n_first_tokens", 1, 0),
    (probes.ProbeConfig, "C", 1e-12, 0.0),
    *[(n2g.N2GConfig, name, 1, 0) for name in ("n_latents", "n_examples", "n_replacements",
                                               "batch_size")],
    (n2g.N2GConfig, "keep_fraction", 0.0, -0.1),
    (voting.VotingConfig, "n_samples", 1, 0),
    (voting.VotingConfig, "temperature", 1e-6, 0.0),
    (voting.VotingConfig, "tau", 0.0, -0.5),
])
def test_configs_accept_their_lowest_value_and_reject_one_below(make, field, lowest, below):
    make(**{field: lowest})
    with pytest.raises(ValueError, match=rf"^{field}={below!r} is outside \[{lowest}, "):
        make(**{field: below})


def test_config_errors_say_what_to_do():
    n2g.N2GConfig(keep_fraction=1.0, anchor="start")
    n2g.N2GConfig(anchor="both")
    with pytest.raises(ValueError, match=r"keep_fraction=1.5 is outside \[0.0, 1.0\]"):
        n2g.N2GConfig(keep_fraction=1.5)
    with pytest.raises(ValueError, match=r"temperature=0 is outside .*Voting needs sampled "
                                         r"solutions; use temperature > 0\.$"):
        voting.VotingConfig(temperature=0)


def test_step_targets_bin_lengths_and_pool_rare_first_tokens():
    train = pd.DataFrame({"is_correct": [True, False, True, True],
                          "n_tokens": [5, 8, 12, 20], "first_token": ["a", "a", "b", "c"]})
    test = pd.DataFrame({"is_correct": [False, True], "n_tokens": [3, 30],
                         "first_token": ["c", "a"]})
    targets = probes.step_targets(train, test, probes.ProbeConfig(n_length_bins=2,
                                                                  n_first_tokens=1))
    assert targets["correctness"][1].tolist() == [False, True]
    assert targets["length"][0].tolist() == ["<=10", "<=10", ">10", ">10"]
    assert targets["length"][1].tolist() == ["<=10", ">10"]
    assert targets["first_token"][0].tolist() == ["a", "a", probes.OTHER, probes.OTHER]
    unlabelled = probes.step_targets(train.drop(columns="is_correct"), test,
                                     probes.ProbeConfig())
    assert set(unlabelled) == {"length", "first_token"}
    with pytest.raises(ValueError, match=r"the train step table lacks \['n_tokens'\]"):
        probes.step_targets(train.drop(columns="n_tokens"), test, probes.ProbeConfig())
    with pytest.raises(ValueError, match=r"the test step table lacks \['first_token'\]; add "
                                         r"them with probes\.with_token_labels"):
        probes.step_targets(train, test.drop(columns="first_token"), probes.ProbeConfig())


def test_with_token_labels_counts_tokens_and_names_the_first(tokenizer):
    table = probes.with_token_labels(pd.DataFrame({"step": ["Wait, 3 + 4 = 7."]}), tokenizer)
    ids = tokenizer("Wait, 3 + 4 = 7.", add_special_tokens=False)["input_ids"]
    assert table.n_tokens.iloc[0] == len(ids)
    assert table.first_token.iloc[0] == tokenizer.convert_ids_to_tokens(ids[0])
    labelled = pd.DataFrame({"n_tokens": [3], "first_token": ["x"]})  # no step text needed
    assert probes.with_token_labels(labelled, tokenizer) is labelled
    partial = pd.DataFrame({"step": ["Wait"], "n_tokens": [99]})
    assert probes.with_token_labels(partial, tokenizer).n_tokens.tolist() == [
        len(tokenizer("Wait", add_special_tokens=False)["input_ids"])]


def test_with_token_labels_leaves_out_the_bos_a_tokenizer_adds(tokenizer):
    """A Llama-style tokenizer prepends <bos>: the step's own tokens are what is counted."""
    bos_tokenizer = copy.deepcopy(tokenizer)
    bos_tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{tokenizer.bos_token} $A",
        special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
    step = "Wait, 3 + 4 = 7."
    ids = tokenizer(step, add_special_tokens=False)["input_ids"]
    assert bos_tokenizer(step)["input_ids"] == [tokenizer.bos_token_id, *ids]  # BOS added
    table = probes.with_token_labels(pd.DataFrame({"step": [step]}), bos_tokenizer)
    assert table.n_tokens.tolist() == [len(ids)]
    assert table.first_token.tolist() == [tokenizer.convert_ids_to_tokens(ids[0])]
    assert table.first_token.iloc[0] != tokenizer.bos_token


def test_classification_metrics_of_one_class_labels_are_nan_without_warnings():
    """No class has both positives and negatives: AUC is NaN, and nothing warns about it."""
    classes = np.array(["a", "b", "c"])
    proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = probes.classification_metrics(np.array(["b", "b"]), proba, classes)
    assert np.isnan(metrics["auc"])
    assert metrics["accuracy"] == 0.5  # predicted a, b
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.3, 0.5])))


def test_classification_metrics_match_hand_computed_values():
    labels = np.array([True, False, True, False])
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1]])
    metrics = probes.classification_metrics(labels, proba, np.array([False, True]))
    assert metrics["accuracy"] == 0.75
    assert metrics["auc"] == 0.75  # positives 0.8, 0.3 vs negatives 0.4, 0.1: 3 of 4 pairs
    expected = -np.mean(np.log([0.8, 0.6, 0.3, 0.9]))
    assert metrics["loss"] == pytest.approx(expected)


def test_classification_metrics_match_sklearn_on_three_classes():
    labels = np.array(["a", "b", "c", "a", "c", "b", "a"])
    proba = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3],
                      [0.45, 0.2, 0.35], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])
    classes = np.array(["a", "b", "c"])
    metrics = probes.classification_metrics(labels, proba, classes)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, classes[proba.argmax(1)]))
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, proba, multi_class="ovr",
                                                         average="macro", labels=classes))
    assert metrics["loss"] == pytest.approx(log_loss(labels, proba, labels=classes))


def test_classification_metrics_count_labels_unseen_in_training_as_errors_by_hand():
    classes = np.array(["a", "b", "c"])
    labels = np.array(["a", "b", "a", "z"])  # "z" was never a class; no step is a "c"
    proba = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    metrics = probes.classification_metrics(labels, proba, classes)
    assert metrics["accuracy"] == 0.25  # predicted a, a, b, c: only the first is right
    # one-vs-rest over the classes with positives and negatives (a and b; "c" has no positive):
    # a: positives 0.6, 0.2 vs negatives 0.5, 0.1 win 3 of 4 pairs; b: 0.4 vs 0.3, 0.7, 0.1: 2/3
    assert metrics["auc"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.6, 0.4, 0.2, 1e-15])))
    binary = probes.classification_metrics(np.array([True, True]), np.array([[0.3, 0.7]] * 2),
                                           np.array([False, True]))
    assert binary["accuracy"] == 1.0 and np.isnan(binary["auc"])
    # a probability of 0 for the true class is clipped to 1e-15, not an infinite loss
    certain = probes.classification_metrics(np.array([True, False]),
                                            np.array([[1.0, 0.0], [1.0, 0.0]]),
                                            np.array([False, True]))
    assert certain["loss"] == pytest.approx(-np.log(1e-15) / 2)


def test_step_targets_name_three_length_bins_and_skip_unknown_correctness():
    train = pd.DataFrame({"is_correct": [True, None, True, False, True, False, True, True, False],
                          "n_tokens": range(1, 10), "first_token": list("aaabbcdde")})
    test = pd.DataFrame({"is_correct": [True, False, True], "n_tokens": [0, 4, 100],
                         "first_token": ["b", "e", "a"]})
    targets = probes.step_targets(train, test, probes.ProbeConfig(n_length_bins=3,
                                                                  n_first_tokens=2))
    assert "correctness" not in targets  # one training step has no label
    labelled = probes.step_targets(train.assign(is_correct=[True, False] * 4 + [True]), test,
                                   probes.ProbeConfig())
    assert labelled["correctness"][0].dtype == bool and labelled["correctness"][1].dtype == bool
    # many equal lengths: quantile edges coincide and the bins merge instead of failing
    ties = probes.step_targets(train.assign(n_tokens=[1] * 6 + [2] * 3), test,
                               probes.ProbeConfig(n_length_bins=3))  # tertile edges 1, 1, 4/3, 2
    assert ties["length"][0].tolist() == ["<=1"] * 6 + [">1"] * 3
    with pytest.raises(ValueError, match=r"lengths \(n_tokens \[1, 2\]\) fill a single one of "
                                         r"n_length_bins=3 quantile bins; use more, or more "
                                         r"varied, training steps \(step_n_train\)\.$"):
        probes.step_targets(train.assign(n_tokens=[1] * 8 + [2]), test,
                            probes.ProbeConfig(n_length_bins=3))
    # the tertiles of 1..9 are 3.67 and 6.33
    assert targets["length"][0].tolist() == ["<=3"] * 3 + ["4-6"] * 3 + [">6"] * 3
    assert targets["length"][1].tolist() == ["<=3", "4-6", ">6"]
    assert targets["first_token"][1].tolist() == ["b", probes.OTHER, "a"]


def test_probe_table_rows_match_an_independent_sklearn_fit():
    rng = np.random.default_rng(1)
    y_train, y_test = rng.integers(0, 2, 60), rng.integers(0, 2, 20)
    x_train = y_train[:, None] + rng.normal(size=(60, 3)) * [1.0, 5.0, 20.0]
    x_test = y_test[:, None] + rng.normal(size=(20, 3)) * [1.0, 5.0, 20.0]
    cfg = probes.ProbeConfig(C=0.05)
    table = probes.probe_table({"x": (x_train, x_test)}, {"task": (y_train, y_test)}, cfg)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.05)).fit(x_train, y_train)
    proba = reference.predict_proba(x_test)
    row = table.set_index("features").loc["x"]
    assert row.loss == pytest.approx(log_loss(y_test, proba), rel=1e-4)
    assert row.auc == pytest.approx(roc_auc_score(y_test, proba[:, 1]))
    assert row.accuracy == pytest.approx(accuracy_score(y_test, proba.argmax(1)))
    base = table.set_index("features").loc[probes.STATISTICS]
    frequency = np.tile(np.bincount(y_train) / 60, (20, 1))
    assert base.loss == pytest.approx(log_loss(y_test, frequency))
    assert (table.task == "task").all() and (table.n_classes == 2).all()
    assert (table.n_train == 60).all() and (table.n_test == 20).all()


def test_statistics_baseline_predicts_training_frequencies():
    classes, proba = probes.statistics_baseline(np.array(["a", "b", "b", "b"]), 3)
    assert classes.tolist() == ["a", "b"] and proba.shape == (3, 2)
    assert proba[0].tolist() == [0.25, 0.75]


def test_probe_table_beats_the_baseline_on_informative_features():
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    informative = lambda y: np.eye(3)[y] + 0.1 * rng.normal(size=(len(y), 3))  # noqa: E731
    noise = lambda y: rng.normal(size=(len(y), 3))  # noqa: E731
    table = probes.probe_table(
        {"informative": (informative(y_train), informative(y_test)),
         "noise": (noise(y_train), noise(y_test))},
        {"task": (y_train, y_test)}, probes.ProbeConfig()).set_index("features")
    assert table.loc["informative", "accuracy"] > 0.95
    assert table.loc["informative", "auc"] > 0.95
    assert table.loc["informative", "loss"] < table.loc[probes.STATISTICS, "loss"]
    assert table.loc[probes.STATISTICS, "auc"] == 0.5
    assert table.loc["noise", "accuracy"] < 0.6


def test_fit_probe_rejects_a_single_class():
    with pytest.raises(ValueError, match=r"one class only \(\[1\]\); use more training steps "
                                         r"\(step_n_train\)"):
        probes.fit_probe(np.zeros((4, 2)), np.array([1, 1, 1, 1]), probes.ProbeConfig())
    probe = probes.fit_probe(np.eye(2), np.array([0, 1]), probes.ProbeConfig(C=0.5, max_iter=7))
    assert (probe[-1].C, probe[-1].max_iter) == (0.5, 7)


def build_token_sae(d_in: int, d_sae: int = 24) -> StandardSAE:
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        sae.W_enc.normal_()
    return sae


def test_pooled_token_features_average_the_step_tokens_only(capsys, toy_model, tokenizer,
                                                            world):
    model = models.HFHookedModel(toy_model, tokenizer)
    sae = build_token_sae(toy_model.config.hidden_size)
    table = data.world_step_table(world.steps, world.problems).head(5)
    examples = data.tokenize_steps(table, tokenizer, 20, 16)
    capsys.readouterr()
    pooled = probes.pooled_token_features(model, sae, examples, batch_size=3)
    assert re.search(r"(^|\r)token SAE: ", capsys.readouterr().err)  # the progress bar's label
    # the SAE read at another hook point (same width) when hook_name says so
    other = probes.pooled_token_features(model, sae, examples, "blocks.0.hook_resid_post",
                                         batch_size=3)
    assert pooled.shape == other.shape == (5, 24)
    for i in range(5):
        tokens = torch.tensor([examples.context_ids[i] + examples.step_ids[i]])
        for hook_name, result in (("blocks.1.hook_resid_post", pooled),
                                  ("blocks.0.hook_resid_post", other)):
            acts = scoring.encode_batch(model, sae, tokens, hook_name)[0]
            expected = acts[-len(examples.step_ids[i]):].mean(0).numpy()
            np.testing.assert_allclose(result[i], expected, atol=1e-5)
    assert not np.allclose(pooled, other, atol=1e-3)


# --- N2G ---------------------------------------------------------------------------------------
def test_matches_is_a_suffix_match_with_wildcards():
    w = n2g.WILDCARD
    assert n2g.matches([3, 4], [1, 2, 3, 4])
    assert n2g.matches([w, 4], [1, 2, 9, 4])
    assert not n2g.matches([3, 4], [3, 4, 5])
    assert not n2g.matches([1, 2, 3, 4, 5], [2, 3, 4, 5])
    assert n2g.matches([1, w], [1, 2, 3], anchor="start")
    assert not n2g.matches([2, 3], [1, 2, 3], anchor="start")


def test_both_anchors_keep_the_shortest_pattern_with_tokens():
    w = n2g.WILDCARD
    assert n2g._shorter({"end": (5, 6, 7), "start": (1, w)}) == ("start", (1, w))
    assert n2g._shorter({"end": (w,), "start": (1, 2)}) == ("start", (1, 2))  # tokenless loses
    assert n2g._shorter({"end": (6, 7), "start": (1, 2)}) == ("end", (6, 7))  # ties: the suffix
    with pytest.raises(ValueError, match=r"anchor='middle' is unknown; use 'end' \(suffix "
                                         r"patterns\), 'start' \(prefix patterns\) or 'both'\.$"):
        n2g.N2GConfig(anchor="middle")


def test_evaluate_patterns_gives_precision_and_recall():
    examples = data.StepExamples(pd.DataFrame({"step": list("abcd")}), [[]] * 4,
                                 [[1, 5], [2, 5], [3, 6], [4, 7]])
    latents = np.array([[0.9], [0.1], [0.8], [0.0]])
    w = n2g.WILDCARD
    patterns = pd.DataFrame({"latent_idx": [0, 0, 0], "threshold": [0.5] * 3,
                             "anchor": ["end", "start", "end"], "pattern": [[5], [4, 7], [w]],
                             "n_sources": [1, 1, 2], "n_tokens": [1, 2, 0]})
    result = n2g.evaluate_patterns(patterns, examples, latents).iloc[0]
    # matched: steps 0, 1, 3 (the all-wildcard pattern would match all; it is left out)
    # active: steps 0, 2
    assert (result.n_matched, result.n_active) == (3, 2)
    assert (result.n_patterns, result.n_tokenless) == (2, 2)
    assert result.precision == pytest.approx(1 / 3) and result.recall == pytest.approx(1 / 2)


def test_most_active_latents_skips_dead_ones():
    latents = np.array([[0.0, 0.5, 0.1, 0.0], [0.0, 0.6, 0.0, 0.0]])
    assert n2g.most_active_latents(latents, 3).tolist() == [1, 2]


class RuleModel:
    """Stands in for a step SAE: its latents are rules on the step's tokens, so every minimal
    pattern is known by hand. Each latent also gets 0.25 per context token, which the step effect
    (activation minus that of the context alone) must remove.

    A rule that holds gives 2. Latent 0: the step ends with 5; 1: its second-to-last token is 3;
    2: it has two or more tokens (a length, not a token: its patterns are all wildcards); 3: it
    starts with 8; 4: its last token is neither 1 nor 4 (a wildcard to replacements 8, 3, 5
    only: a wildcard is only as good as the tokens tried).
    """

    sep_id, eos_id, pad_id = 90, 91, 92

    def eval(self):
        return self

    def encode_activations(self, batch: data.StepBatch) -> torch.Tensor:
        rows = []
        for ids, sep, last in zip(batch.input_ids.tolist(), batch.sep_pos.tolist(),
                                  batch.last_pos.tolist()):
            step, base = ids[sep + 1: last], 0.25 * sep
            rules = (step[-1:] == [5], len(step) >= 2 and step[-2] == 3, len(step) >= 2,
                     step[:1] == [8], bool(step) and step[-1] not in (1, 4))
            rows.append([base + 2.0 * rule for rule in rules])
        return torch.tensor(rows)


def rule_examples(steps, contexts=None) -> data.StepExamples:
    contexts = contexts or [[10 + i] * (i % 3) for i in range(len(steps))]
    return data.StepExamples(pd.DataFrame({"step": [str(s) for s in steps]}), contexts, steps)


def test_n2g_mines_the_minimal_patterns_of_known_rules(tokenizer):
    model, w = RuleModel(), n2g.WILDCARD
    examples = rule_examples([[1, 3, 5], [8, 2, 5], [8, 3, 7], [4], [8]])
    effects = n2g.step_effects(model, examples, batch_size=2)
    np.testing.assert_array_equal(effects / 2, [[1, 1, 1, 0, 1], [1, 0, 1, 1, 1], [0, 1, 1, 1, 1],
                                                [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]])
    assert n2g.frequent_tokens(examples, 3) == [8, 3, 5]  # counts 3, 2, 2 (ties: first seen)
    replacements = [8, 3, 5]

    def explain(row, latent_idx, anchor, threshold=2.0, tried=tuple(replacements)):
        return n2g.explain_step(model, examples.context_ids[row], examples.step_ids[row],
                                latent_idx, threshold, list(tried), batch_size=2, anchor=anchor)

    assert explain(0, 0, "end") == (5,)
    assert explain(0, 1, "end") == (3, w)  # the last token does not matter
    assert explain(0, 2, "end") == (w, w)
    assert explain(1, 3, "end") == (8, w, w) and explain(1, 3, "start") == (8,)
    assert explain(0, 0, "start") == (w, w, 5)
    assert explain(0, 4, "end") == (w,) and explain(0, 4, "end", tried=(8, 3, 1)) == (5,)
    assert explain(0, 0, "end", threshold=2.5) == (1, 3, 5)  # nothing reaches it: the step
    assert n2g.explain_step(model, [], [1, 3, 5], 0, 2.0, replacements) == (5,)  # "end"
    with pytest.raises(ValueError, match="anchor='both' must be one of"):
        explain(0, 0, "both")

    # keep_fraction 1: the threshold is the top steps' mean effect itself, 2.0, reached exactly
    cfg = n2g.N2GConfig(n_latents=5, n_examples=3, keep_fraction=1.0, n_replacements=2,
                        anchor="both", batch_size=2)
    mined = n2g.mine_patterns(model, examples, effects, cfg, tokenizer)
    # latents by total effect 8, 6, 6, 4, 4 (ties: lower index first); each from its top 3 steps
    # with an effect > 0; per step the shorter of suffix and prefix pattern (ties: the suffix)
    expected = [(4, "end", [w], 3, 0, 0), (2, "end", [w, w], 3, 0, 0), (3, "start", [8], 2, 1, 1),
                (3, "end", [8], 1, 1, 4), (0, "end", [5], 2, 1, 0), (1, "end", [3, w], 2, 1, 0)]
    assert mined[["latent_idx", "anchor", "pattern", "n_sources", "n_tokens"]].values.tolist() \
        == [list(row[:5]) for row in expected]
    assert mined.example.tolist() == [examples.table.step[row[5]] for row in expected]
    assert (mined.threshold == 2.0).all()
    assert mined.pattern_text.tolist() == [
        "…[*]", "…[*][*]", tokenizer.decode([8]) + "…", "…" + tokenizer.decode([8]),
        "…" + tokenizer.decode([5]), "…" + tokenizer.decode([3]) + "[*]"]

    held_out = rule_examples([[2, 5], [3, 9], [8, 8, 5], [5, 3, 6], [6, 8]])
    result = n2g.evaluate_patterns(mined, held_out, n2g.step_effects(model, held_out))
    result = result.set_index("latent_idx")
    assert result.index.tolist() == [4, 2, 3, 0, 1]
    assert result.n_patterns.tolist() == [0, 0, 2, 1, 1]
    assert result.n_tokenless.tolist() == [3, 3, 0, 0, 0]
    assert result.n_active.tolist() == [5, 5, 1, 2, 2]
    # latent 3: [8, 8, 5] starts with 8 (active); [6, 8] only ends with it (inactive)
    assert result.n_matched.tolist() == [0, 0, 2, 2, 2]
    assert np.isnan(result.precision[2]) and result.recall[2] == 0.0
    assert result.precision[3] == 0.5 and result.recall[3] == 1.0
    assert result.precision[[0, 1]].tolist() == [1.0, 1.0]
    assert result.recall[[0, 1]].tolist() == [1.0, 1.0]
    inactive = rule_examples([[4]])  # no latent active, no pattern matched: both undefined
    undefined = n2g.evaluate_patterns(mined, inactive, n2g.step_effects(model, inactive))
    assert undefined.precision.isna().all() and undefined.recall.isna().all()
    nothing = n2g.mine_patterns(model, inactive, n2g.step_effects(model, inactive), cfg, tokenizer)
    assert len(nothing) == 0 and list(nothing.columns) == list(mined.columns)
    assert list(n2g.evaluate_patterns(nothing, inactive, np.zeros((1, 5))).columns) == [
        "latent_idx", "n_patterns", "n_tokenless", "n_active", "n_matched", "precision",
        "recall"]
    assert n2g.pattern_text([5], tokenizer) == "…" + tokenizer.decode([5])  # a suffix by default


def test_mine_patterns_takes_the_first_top_steps_among_ties(capsys, tokenizer):
    """Twenty steps, every other one starting with 8 (latent 3's rule): ten tie for the top."""
    model, w = RuleModel(), n2g.WILDCARD
    steps = [[8] + [2] * (i // 2) if i % 2 == 0 else [1] for i in range(20)]
    examples = rule_examples(steps)
    effects = n2g.step_effects(model, examples)
    effects[:, [0, 1, 2, 4]] = 0.0  # latent 3 alone: the others are dead and get skipped
    effects[:, 3] *= 0.5  # an effect of 1 still counts as active (> 0)
    assert effects[:, 3].tolist() == [1.0, 0.0] * 10
    cfg = n2g.N2GConfig(n_latents=2, n_examples=3, keep_fraction=1.0, anchor="end")
    capsys.readouterr()
    mined = n2g.mine_patterns(model, examples, effects, cfg, tokenizer)
    assert re.search(r"(^|\r)N2G: ", capsys.readouterr().err)  # the progress bar's label
    # steps 0, 2 and 4 (the first three of the ties): suffixes 8, 8 *, 8 * *
    assert mined.pattern.tolist() == [[8], [8, w], [8, w, w]]
    assert mined.example.tolist() == [str(steps[0]), str(steps[2]), str(steps[4])]
    assert mined.latent_idx.tolist() == [3] * 3 and (mined.threshold == 1.0).all()


def test_step_effects_name_their_two_progress_bars(capsys):
    examples = rule_examples([[1, 5], [8], [3, 2]])
    capsys.readouterr()
    n2g.step_effects(RuleModel(), examples, batch_size=2)
    shown = capsys.readouterr().err
    assert re.search(r"(^|\r)step effects: ", shown) and re.search(r"(^|\r)context alone: ", shown)


def test_evaluate_patterns_leave_undefined_ratios_nan_without_warnings():
    examples = data.StepExamples(pd.DataFrame({"step": ["a"]}), [[]], [[1, 2]])
    patterns = pd.DataFrame({"latent_idx": [0], "threshold": [0.5], "anchor": ["end"],
                             "pattern": [[7]], "n_sources": [1], "n_tokens": [1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = n2g.evaluate_patterns(patterns, examples, np.array([[0.0]])).iloc[0]
    assert (result.n_matched, result.n_active) == (0, 0)
    assert np.isnan(result.precision) and np.isnan(result.recall)


def test_example_table_keeps_the_first_of_tied_steps_latents_and_patterns():
    n = 20
    table = pd.DataFrame({"step": [f"s{i}" for i in range(n)],
                          "kind": [f"k{i // 2}" for i in range(n)]})  # kinds in pairs
    examples = data.StepExamples(table, [[]] * n, [[1]] * n)
    scores = np.tile([0.5, 0.1], (n, n // 2))  # 20 latents: ten tie at 0.5
    latent_idx = list(range(n))
    latent_idx[6] = 4  # rows 4 and 6 both give patterns of latent 4, with equal n_sources
    patterns = pd.DataFrame({"latent_idx": latent_idx,
                             "pattern_text": [f"…p{i}" for i in range(n)],
                             "n_sources": [2, 1] * (n // 2), "n_tokens": [1] * n})
    shown = n2g.example_table(examples, scores, patterns, n, by="kind")
    # one step of each kind first (the first of each pair), in table order, then the second
    assert shown.step.tolist() == [f"s{i}" for i in range(0, n, 2)] + [
        f"s{i}" for i in range(1, n, 2)]
    # three latents by default, the first of the ties; latent 4's pattern is row 4's
    assert shown.top_latents.iloc[0] == "0:0.50, 2:0.50, 4:0.50"
    assert shown.patterns.iloc[0] == "0:…p0  2:…p2  4:…p4"


@pytest.fixture(scope="module")
def small_step_sae(toy_model, tokenizer):
    torch.manual_seed(0)
    cfg = StepSAEConfig(n_latents=8, l1_target=1.5, d_projection=16, max_context_tokens=12,
                        max_step_tokens=12)
    tok = copy.deepcopy(tokenizer)
    return StepSAE.build(toy_model, tok, cfg).eval(), tok


def test_step_effects_subtract_the_context_alone(small_step_sae, world):
    sae, tok = small_step_sae
    examples = data.tokenize_steps(data.world_step_table(world.steps, world.problems).head(6),
                                   tok, 12, 12)
    effects = n2g.step_effects(sae, examples, batch_size=4)
    with torch.no_grad():
        full = sae.encode_activations(data.collate(examples.context_ids, examples.step_ids,
                                                   sae.sep_id, sae.eos_id, sae.pad_id))
        alone = sae.encode_activations(data.collate(examples.context_ids, [[]] * 6, sae.sep_id,
                                                    sae.eos_id, sae.pad_id))
    np.testing.assert_allclose(effects, (full - alone).numpy(), atol=1e-5)
    assert (full >= 0).all() and (effects < 0).any()  # the step can also lower a latent


@pytest.mark.parametrize("anchor", ["end", "start"])
def test_explain_step_finds_the_shortest_active_suffix_or_prefix(small_step_sae, world, anchor):
    sae, tok = small_step_sae
    table = data.world_step_table(world.steps, world.problems).head(40)
    examples = data.tokenize_steps(table, tok, 12, 12)
    effects = n2g.step_effects(sae, examples)
    latent_idx = int(n2g.most_active_latents(effects.clip(0), 1)[0])
    row = int(np.argmax(effects[:, latent_idx]))
    context, step = examples.context_ids[row], examples.step_ids[row]
    threshold = 0.5 * effects[row, latent_idx]
    replacements = n2g.frequent_tokens(examples, 3)
    pattern = n2g.explain_step(sae, context, step, latent_idx, threshold, replacements,
                               anchor=anchor)
    k = len(pattern)
    assert 1 <= k <= len(step)
    def part(j):  # the suffix or prefix of length j
        return step[-j:] if anchor == "end" else step[:j]

    kept = part(k)
    assert n2g.matches(pattern, step, anchor)

    def value(s):
        batch = data.collate([context] * 2, [s, []], sae.sep_id, sae.eos_id, sae.pad_id)
        with torch.no_grad():
            acts = sae.encode_activations(batch)[:, latent_idx]
        return (acts[0] - acts[1]).item()

    assert value(kept) >= threshold - 1e-6
    assert all(value(part(j)) < threshold for j in range(1, k))
    for pos, p in enumerate(pattern):  # a wildcard survives every replacement
        if p == n2g.WILDCARD:
            for r in replacements:
                assert value(kept[:pos] + [r] + kept[pos + 1:]) >= threshold - 1e-6

    patterns = n2g.mine_patterns(sae, examples, effects,
                                 n2g.N2GConfig(n_latents=2, n_examples=3, anchor=anchor), tok)
    assert (patterns.anchor == anchor).all()
    assert set(patterns.latent_idx) <= set(n2g.most_active_latents(effects.clip(0), 2).tolist())
    assert (patterns.n_tokens == [sum(t != n2g.WILDCARD for t in p)
                                  for p in patterns.pattern]).all()
    assert patterns.n_sources.groupby(patterns.latent_idx).sum().le(3).all()
    texts = patterns.pattern_text
    assert (texts.str.startswith("…") if anchor == "end" else texts.str.endswith("…")).all()
    shown = n2g.example_table(examples, encode_steps(sae, examples), patterns, 4)
    assert list(shown.columns) == ["step", "is_correct", "top_latents", "patterns"]
    assert len(shown) == 4


# --- voting ------------------------------------------------------------------------------------
def solutions_frame():
    # problem 0: answers 5, 5, 7; problem 1: 3, 4, None
    return pd.DataFrame({"problem_id": [0, 0, 0, 1, 1, 1], "sample_idx": [0, 1, 2, 0, 1, 2],
                         "predicted": pd.array([5, 5, 7, 3, 4, None], dtype="Int64")})


def test_majority_vote_breaks_ties_by_the_first_vote():
    voted = voting.vote(solutions_frame())
    assert voted.tolist() == [5, 3]


def test_weighted_vote_follows_the_weights():
    voted = voting.vote(solutions_frame(), np.array([0.1, 0.1, 0.9, 0.2, 0.7, 1.0]))
    assert voted.tolist() == [7, 4]


def test_solution_weights_average_p_to_the_tau_over_steps():
    weights = voting.solution_weights(3, np.array([0, 0, 2]), np.array([0.25, 1.0, 0.5]), tau=2.0)
    assert weights.tolist() == pytest.approx([(0.0625 + 1) / 2, 0.0, 0.25])


def test_voting_table_reports_three_methods_with_intervals():
    problems = pd.DataFrame({"problem_id": [0, 1], "answer": [7, 3]})
    greedy = pd.DataFrame({"problem_id": [0, 1], "is_correct": [False, False]})
    table, diff = voting.voting_table(problems, greedy, solutions_frame(),
                                      np.array([0.1, 0.1, 0.9, 0.9, 0.1, 1.0]), n_boot=200)
    table = table.set_index("method")
    assert table.accuracy.tolist() == [0.0, 0.5, 1.0]
    assert (table.ci_low <= table.accuracy).all() and (table.accuracy <= table.ci_high).all()
    assert diff["difference"] == 0.5


def test_ties_go_to_the_answer_voted_first_by_sample_index():
    # problem 5: 4 and 3 twice each, 4 voted by sample 0; rows are not in sample order.
    # problem 2: 9 and 8 once each, 9 first (sample 0 has no answer). Problem 7: no answers.
    solutions = pd.DataFrame({
        "problem_id": [5, 5, 5, 5, 2, 2, 2, 7],
        "sample_idx": [1, 0, 2, 3, 0, 1, 2, 0],
        "predicted": pd.array([3, 4, 3, 4, None, 9, 8, None], dtype="Int64")})
    voted = voting.vote(solutions)
    assert voted.dtype == "Int64"
    assert voted.index.tolist() == [5, 2, 7]  # problems in their order of appearance
    assert voted.tolist()[:2] == [4, 9] and voted.isna().tolist() == [False, False, True]
    # weighted: 3 gets 0.5 + 0.25, 4 gets 0.25 + 0.5, an exact tie, again to 4; then 3 wins
    assert voting.vote(solutions, np.array([0.5, 0.25, 0.25, 0.5, 1, 1, 1, 1]))[5] == 4
    assert voting.vote(solutions, np.array([0.5, 0.25, 0.3, 0.5, 1, 1, 1, 1]))[5] == 3
    # 8 outweighs 9; a solution without an answer carries no weight
    assert voting.vote(solutions, np.array([1, 1, 1, 1, 9.0, 0.5, 0.6, 1]))[2] == 8
    # the majority wins though its first vote came last; None is not an answer that can win
    late = pd.DataFrame({"problem_id": [1] * 5, "sample_idx": range(5),
                         "predicted": pd.array([9, None, 4, None, 4], dtype="Int64")})
    assert voting.vote(late).tolist() == [4]
    answers = pd.Series([4, 8, 1, 6], index=[5, 2, 7, 11])  # 11 was never sampled
    assert voting.vote_is_correct(answers, solutions).tolist() == [True, False, False, False]


def test_solution_weights_with_a_fractional_tau_and_an_unscored_solution():
    weights = voting.solution_weights(4, np.array([2, 2, 0]), np.array([0.25, 0.64, 0.81]),
                                      tau=0.5)
    assert weights.tolist() == pytest.approx([0.9, 0.0, (0.5 + 0.8) / 2, 0.0])


def test_an_unscored_solution_weighs_zero_whatever_memory_held_before():
    for _ in range(20):  # a fresh output buffer would reuse this freed block of 7s
        junk = np.full(4, 7.0)
        del junk
        weights = voting.solution_weights(4, np.array([2, 2, 0]), np.array([0.25, 0.64, 0.81]),
                                          tau=1.0)
        assert weights.tolist() == pytest.approx([0.81, 0.0, (0.25 + 0.64) / 2, 0.0])


def test_weight_auc_of_one_class_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for outcome in (True, False):
            frame = pd.DataFrame({"is_correct": [outcome] * 3})
            assert np.isnan(voting.weight_auc(frame, np.array([0.1, 0.5, 0.9])))


def many_problems(n=300, seed=0):
    """n problems with answer 1; samples say 1, 2, 2 (majority always wrong); the weights favour
    the first sample, hence the right answer, on a random half of the problems."""
    favoured = np.random.default_rng(seed).random(n) < 0.5
    problems = pd.DataFrame({"problem_id": np.arange(n), "answer": np.ones(n, dtype=int)})
    solutions = pd.DataFrame({"problem_id": np.repeat(np.arange(n), 3),
                              "sample_idx": np.tile(np.arange(3), n),
                              "predicted": pd.array(np.tile([1, 2, 2], n), dtype="Int64")})
    weights = np.concatenate([[0.9, 0.1, 0.1] if f else [0.1, 0.5, 0.5] for f in favoured])
    return problems, solutions, weights, favoured


def test_voting_table_bootstraps_with_its_n_boot_and_seed():
    problems, solutions, weights, favoured = many_problems()
    greedy = pd.DataFrame({"problem_id": problems.problem_id, "is_correct": favoured})
    weighted, majority = favoured.astype(float), np.zeros(len(favoured))
    table, diff = voting.voting_table(problems, greedy, solutions, weights)
    assert table.accuracy.tolist() == pytest.approx([favoured.mean(), 0.0, favoured.mean()])
    expected = evaluation.paired_bootstrap_difference(weighted, majority, n_boot=5000, seed=0)
    assert (diff["difference"], diff["ci_low"], diff["ci_high"]) == expected
    # not vacuous: another seed moves the interval
    assert evaluation.paired_bootstrap_difference(weighted, majority, seed=1) != expected
    _, other = voting.voting_table(problems, greedy, solutions, weights, n_boot=300, seed=5)
    assert tuple(other.values()) == evaluation.paired_bootstrap_difference(
        weighted, majority, n_boot=300, seed=5)


def test_voting_table_counts_a_problem_without_a_greedy_answer_as_wrong():
    problems = pd.DataFrame({"problem_id": [0, 1], "answer": [7, 3]})
    greedy = pd.DataFrame({"problem_id": [1], "is_correct": [False]})  # problem 0 not evaluated
    table, _ = voting.voting_table(problems, greedy, solutions_frame(), np.ones(6), n_boot=10)
    assert table.set_index("method").loc["greedy", "accuracy"] == 0.0


def test_vote_is_correct_gives_plain_booleans_per_problem():
    answers = pd.Series([5, 4, 8], index=[0, 1, 2])  # problem 2 has no solutions
    correct = voting.vote_is_correct(answers, solutions_frame())
    assert correct.dtype == np.bool_ and correct.tolist() == [True, False, False]


def test_weight_auc_counts_won_pairs_with_ties_as_half():
    solutions = solutions_frame().assign(is_correct=[True, True, False, False, False, False])
    weights = [0.9, 0.3, 0.5, 0.2, 0.1, 0.3]
    # 0.9 beats all four wrong ones; 0.3 beats 0.2 and 0.1, ties 0.3, loses to 0.5: 6.5 of 8
    assert voting.weight_auc(solutions, weights) == pytest.approx(6.5 / 8)
    assert np.isnan(voting.weight_auc(solutions.assign(is_correct=False), weights))
    sweep = voting.tau_sweep(pd.DataFrame({"problem_id": [0, 1], "answer": [5, 3]}), solutions,
                             6, np.arange(6), np.array(weights), [1.0, 2.0])
    assert sweep.tau.tolist() == [1.0, 2.0]
    assert sweep.weight_auc.tolist() == pytest.approx([6.5 / 8] * 2)  # a monotone transform
    assert sweep.accuracy.tolist() == [1.0, 1.0]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * (p * (1 - p) / n + z ** 2 / (4 * n ** 2)) ** 0.5
    return centre - half, centre + half


def test_voting_table_intervals_are_wilson_intervals_of_each_method():
    problems = pd.DataFrame({"problem_id": [0, 1], "answer": [7, 3]})
    # greedy in another order, with a problem that is not voted on (left out)
    greedy = pd.DataFrame({"problem_id": [1, 9, 0], "is_correct": [True, True, False]})
    weights = np.array([0.1, 0.1, 0.9, 0.1, 0.9, 1.0])
    table, diff = voting.voting_table(problems, greedy, solutions_frame(), weights, n_boot=200,
                                      seed=3)
    # greedy: problem 1 right; majority: 5 and 3, problem 1 right; weighted: 7 and 4, problem 0
    assert table.method.tolist() == ["greedy", "majority", "weighted"]
    assert table.n.tolist() == [2, 2, 2] and table.accuracy.tolist() == [0.5, 0.5, 0.5]
    for _, row in table.iterrows():
        assert (row.ci_low, row.ci_high) == pytest.approx(wilson(1, 2))
    # weighted is right where majority is wrong and the other way round: every resample of the
    # two problems gives a difference in {-1, -0.5, 0, 0.5, 1}, centred on 0
    assert diff["difference"] == 0.0 and -1 <= diff["ci_low"] < 0 < diff["ci_high"] <= 1
    expected = evaluation.paired_bootstrap_difference([False, True], [True, False], n_boot=200,
                                                      seed=3)
    assert (diff["difference"], diff["ci_low"], diff["ci_high"]) == expected
    _, default = voting.voting_table(problems, greedy, solutions_frame(), weights)
    assert tuple(default.values()) == evaluation.paired_bootstrap_difference(
        [False, True], [True, False], n_boot=5000, seed=0)


def test_sample_solutions_returns_k_sampled_reasoning_completions_per_problem(
        toy_model, tokenizer, world):
    problems = world.problems.head(2)
    cfg = voting.VotingConfig(n_samples=3, max_new_tokens=6, temperature=0.7, seed=3,
                              batch_size=4)
    solutions = voting.sample_solutions(toy_model, tokenizer, problems, cfg)
    assert list(solutions.columns) == ["problem_id", "family", "sample_idx", "question",
                                       "answer", "completion", "predicted", "is_correct"]
    assert solutions.sample_idx.tolist() == [0, 1, 2] * 2
    assert solutions.problem_id.tolist() == np.repeat(problems.problem_id, 3).tolist()
    assert solutions.answer.tolist() == np.repeat(problems.answer, 3).tolist()
    prompts = [prompt(q, reasoning=True) for q in np.repeat(problems.question, 3)]
    assert solutions.completion.tolist() == evaluation.generate(
        toy_model, tokenizer, prompts, max_new_tokens=6, batch_size=4, temperature=0.7, seed=3)
    assert solutions.predicted.dtype == "Int64"
    parsed = [evaluation.parse_answer(c) for c in solutions.completion]
    assert [None if pd.isna(p) else p for p in solutions.predicted] == parsed
    assert solutions.is_correct.tolist() == [p is not None and p == a
                                             for p, a in zip(parsed, solutions.answer)]
    steps = data.trace_step_table(solutions, solutions.completion)
    assert set(steps.solution_idx) <= set(range(6))
    with pytest.raises(ValueError, match=r"^problems is empty: nothing to vote on\. Check "
                                         r"step_vote_problems\.$"):
        voting.sample_solutions(toy_model, tokenizer, problems.head(0), cfg)


def parrot_lm(toy_model, tokenizer, chains: dict[int, str]):
    """A real Llama whose blocks add nothing (attention and MLP outputs zeroed), so the next token
    depends on the current one alone: after token ``start`` it writes ``chains[start]``, then
    <eos>. Each current token gets its own embedding axis; the LM head maps it to its successor."""
    lm = copy.deepcopy(toy_model)
    assert not lm.config.tie_word_embeddings
    successor = {}
    for start, text in chains.items():
        ids = [start, *tokenizer(text, add_special_tokens=False)["input_ids"],
               tokenizer.eos_token_id]
        for current, following in zip(ids[:-1], ids[1:]):
            assert successor.setdefault(current, following) == following, "ambiguous chain"
    with torch.no_grad():
        for layer in lm.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
        head.zero_()
        for axis, (current, following) in enumerate(successor.items()):
            embed[current] = 0.0
            embed[current, axis] = 1.0
            head[following, axis] = 50.0
    return lm.eval()


def test_sample_solutions_prompt_for_reasoning_and_score_each_answer(capsys, toy_model,
                                                                      tokenizer):
    newline = tokenizer(prompt("q", reasoning=True), add_special_tokens=False)["input_ids"][-1]
    assistant = tokenizer(prompt("q", reasoning=False), add_special_tokens=False)["input_ids"][-1]
    # after "<think>\n" (a reasoning prompt) it answers 7; right after the assistant tag, 3
    lm = parrot_lm(toy_model, tokenizer, {newline: "The answer is 7.", assistant: " 3."})
    problems = pd.DataFrame({"problem_id": [4, 9], "question": ["What is 3 + 4?", "What is 1?"],
                             "answer": [7, 1]})
    cfg = voting.VotingConfig(n_samples=2, max_new_tokens=8, temperature=0.7, batch_size=2)
    capsys.readouterr()
    solutions = voting.sample_solutions(lm, tokenizer, problems, cfg)
    assert re.search(r"(^|\r)sample: ", capsys.readouterr().err)  # the progress bar's label
    assert solutions.completion.tolist() == ["The answer is 7."] * 4
    assert solutions.predicted.tolist() == [7] * 4
    assert solutions.is_correct.tolist() == [True, True, False, False]  # 7 is right for id 4
    assert solutions.index.tolist() == [0, 1, 2, 3]
    assert list(solutions.columns) == ["problem_id", "sample_idx", "question", "answer",
                                       "completion", "predicted", "is_correct"]


def test_voting_config_rejects_greedy_sampling():
    with pytest.raises(ValueError, match="temperature"):
        voting.VotingConfig(temperature=0.0)


def test_trace_step_table_splits_generated_reasoning_into_steps():
    problems = pd.DataFrame({"problem_id": [4], "question": ["Q?"]})
    table = data.trace_step_table(problems, ["a = 1.\nb = 2.\n</think>\nThe answer is 2."])
    assert table.step.tolist() == ["a = 1.", "b = 2."]
    assert table.context.iloc[1].endswith("<think>\na = 1.\n")
    assert table.problem_id.tolist() == [4, 4]
    assert "is_claim_correct" not in table  # no family: nothing to check the claims by


def test_trace_step_table_checks_the_models_own_claims_by_its_family():
    problems = pd.DataFrame({"problem_id": [4], "question": ["Start at 35 and add 9, two times."],
                             "family": ["arithmetic"]})
    table = data.trace_step_table(problems, ["Let me keep a running total.\n35 + 9 = 44, one "
                                             "to go.\n44 + 9 = 54, done.\n</think>\nThe answer "
                                             "is 54."])
    assert table.is_claim_correct.tolist() == [pd.NA, True, False]
    assert str(table.is_claim_correct.dtype) == "boolean"


def test_step_auc_scores_the_probe_on_the_models_own_steps():
    labels = pd.array([True, False, pd.NA, True, False], dtype="boolean")
    # the NA step is left out; of the rest, right steps 0.9, 0.5 and wrong 0.2, 0.6: 3 of 4 pairs
    assert voting.step_auc([0.9, 0.2, 0.0, 0.5, 0.6], labels) == 0.75
    assert np.isnan(voting.step_auc([0.9, 0.1], pd.array([True, pd.NA], dtype="boolean")))


def test_weight_auc_and_tau_sweep_follow_the_weights():
    solutions = solutions_frame().assign(is_correct=[True, True, False, False, False, False])
    problems = pd.DataFrame({"problem_id": [0, 1], "answer": [7, 4]})
    assert voting.weight_auc(solutions, [0.9, 0.8, 0.1, 0.2, 0.3, 0.0]) == 1.0
    assert voting.weight_auc(solutions, [0.1, 0.1, 0.9, 0.9, 0.9, 0.9]) == 0.0
    assert np.isnan(voting.weight_auc(solutions.assign(is_correct=True), [1.0] * 6))
    # one step per solution; p favours the lone 7 in problem 0 and the 4 in problem 1
    p = np.array([0.2, 0.2, 0.9, 0.1, 0.8, 0.5])
    sweep = voting.tau_sweep(problems, solutions, 6, np.arange(6), p, [0.0, 8.0])
    assert sweep.accuracy.tolist() == [0.0, 1.0]  # tau 0 is the majority vote: 5 and 3


def test_example_table_takes_one_step_of_each_kind_in_turn():
    table = pd.DataFrame({"step": list("vwxyz"), "kind": ["a", "a", "b", "c", "b"],
                          "is_correct": [1, 0, 0, 1, 1]})
    examples = data.StepExamples(table, [[]] * 5, [[1]] * 5)
    scores = np.array([[0.1, 0.9], [0.2, 0.1], [0.8, 0.3], [0.0, 0.5], [0.4, 0.6]])
    patterns = pd.DataFrame({"latent_idx": [0, 1, 1, 0],
                             "pattern_text": ["…p", "…[*]", "…q", "…r"],
                             "n_sources": [1, 5, 2, 3], "n_tokens": [1, 0, 1, 1]})
    shown = n2g.example_table(examples, scores, patterns, 4, n_top=1, by="kind")
    assert shown.step.tolist() == ["v", "x", "y", "w"]
    assert shown.is_correct.tolist() == [True, False, True, False]
    assert shown.top_latents.tolist() == ["1:0.90", "0:0.80", "1:0.50", "0:0.20"]
    # each latent's pattern with tokens from the most top steps; the tokenless one is skipped
    assert shown.patterns.tolist() == ["1:…q", "0:…r", "1:…q", "0:…r"]
    first = n2g.example_table(examples, scores, patterns, 2, n_top=2, by="no such column")
    assert first.step.tolist() == ["v", "w"]  # a missing column: the first steps
    assert first.top_latents.tolist() == ["1:0.90, 0:0.10", "0:0.20, 1:0.10"]
    assert first.patterns.tolist() == ["1:…q  0:…r", "0:…r  1:…q"]


def test_pooled_token_features_bring_the_sae_to_the_model_first(toy_model, tokenizer, world):
    model = models.HFHookedModel(toy_model, tokenizer)
    sae = build_token_sae(toy_model.config.hidden_size).to("meta")
    examples = data.tokenize_steps(data.world_step_table(world.steps, world.problems).head(2),
                                   tokenizer, 20, 16)
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        probes.pooled_token_features(model, sae, examples)


def test_solution_weights_take_an_empty_step_table():
    """No sample stated a step: an empty column of object dtype gives every solution weight 0."""
    import pandas as pd
    empty = pd.DataFrame({"solution_idx": []}, dtype=object).solution_idx.to_numpy()
    assert voting.solution_weights(3, empty, np.zeros(0), tau=1.0).tolist() == [0.0, 0.0, 0.0]
