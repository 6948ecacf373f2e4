"""Tests for reasonlens.step_sae.probes, .n2g and .voting."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from reasonlens import models, scoring
from reasonlens.step_sae import data, n2g, probes, voting
from reasonlens.step_sae.inference import encode_steps
from reasonlens.step_sae.model import StepSAE, StepSAEConfig


# --- probes ------------------------------------------------------------------------------------
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
    with pytest.raises(ValueError, match="with_token_labels"):
        probes.step_targets(train.drop(columns="n_tokens"), test, probes.ProbeConfig())


def test_with_token_labels_counts_tokens_and_names_the_first(tokenizer):
    table = probes.with_token_labels(pd.DataFrame({"step": ["Wait, 3 + 4 = 7."]}), tokenizer)
    ids = tokenizer("Wait, 3 + 4 = 7.", add_special_tokens=False)["input_ids"]
    assert table.n_tokens.iloc[0] == len(ids)
    assert table.first_token.iloc[0] == tokenizer.convert_ids_to_tokens(ids[0])


def test_classification_metrics_match_hand_computed_values():
    labels = np.array([True, False, True, False])
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1]])
    metrics = probes.classification_metrics(labels, proba, np.array([False, True]))
    assert metrics["accuracy"] == 0.75
    assert metrics["auc"] == 0.75  # positives 0.8, 0.3 vs negatives 0.4, 0.1: 3 of 4 pairs
    expected = -np.mean(np.log([0.8, 0.6, 0.3, 0.9]))
    assert metrics["loss"] == pytest.approx(expected)


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
    with pytest.raises(ValueError, match="one class only"):
        probes.fit_probe(np.zeros((4, 2)), np.array([1, 1, 1, 1]), probes.ProbeConfig())


def build_token_sae(d_in: int, d_sae: int = 24) -> StandardSAE:
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        sae.W_enc.normal_()
    return sae


def test_pooled_token_features_average_the_step_tokens_only(toy_model, tokenizer, world):
    model = models.HFHookedModel(toy_model, tokenizer)
    sae = build_token_sae(toy_model.config.hidden_size)
    table = data.world_step_table(world.steps, world.problems).head(5)
    examples = data.tokenize_steps(table, tokenizer, 20, 16)
    pooled = probes.pooled_token_features(model, sae, examples, batch_size=3)
    assert pooled.shape == (5, 24)
    for i in range(5):
        tokens = torch.tensor([examples.context_ids[i] + examples.step_ids[i]])
        acts = scoring.encode_batch(model, sae, tokens, "blocks.1.hook_resid_post")[0]
        expected = acts[-len(examples.step_ids[i]):].mean(0).numpy()
        np.testing.assert_allclose(pooled[i], expected, atol=1e-5)


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
    with pytest.raises(ValueError, match="anchor"):
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


def test_sample_solutions_returns_k_per_problem(toy_model, tokenizer, world):
    problems = world.problems.head(2)
    cfg = voting.VotingConfig(n_samples=3, max_new_tokens=6)
    solutions = voting.sample_solutions(toy_model, tokenizer, problems, cfg)
    assert len(solutions) == 6 and solutions.sample_idx.tolist() == [0, 1, 2] * 2
    assert solutions.problem_id.tolist() == np.repeat(problems.problem_id, 3).tolist()
    steps = data.trace_step_table(solutions, solutions.completion)
    assert set(steps.solution_idx) <= set(range(6))


def test_voting_config_rejects_greedy_sampling():
    with pytest.raises(ValueError, match="temperature"):
        voting.VotingConfig(temperature=0.0)


def test_trace_step_table_splits_generated_reasoning_into_steps():
    problems = pd.DataFrame({"problem_id": [4], "question": ["Q?"]})
    table = data.trace_step_table(problems, ["a = 1.\nb = 2.\n</think>\nThe answer is 2."])
    assert table.step.tolist() == ["a = 1.", "b = 2."]
    assert table.context.iloc[1].endswith("<think>\na = 1.\n")
    assert table.problem_id.tolist() == [4, 4]


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
    table = pd.DataFrame({"step": list("vwxyz"), "kind": ["a", "a", "b", "c", "b"]})
    examples = data.StepExamples(table, [[]] * 5, [[1]] * 5)
    scores = np.array([[0.1, 0.9], [0.2, 0.1], [0.8, 0.3], [0.0, 0.5], [0.4, 0.6]])
    patterns = pd.DataFrame({"latent_idx": [0, 1, 1], "pattern_text": ["…p", "…[*]", "…q"],
                             "n_sources": [1, 5, 2], "n_tokens": [1, 0, 1]})
    shown = n2g.example_table(examples, scores, patterns, 4, n_top=1, by="kind")
    assert shown.step.tolist() == ["v", "x", "y", "w"]
    assert shown.top_latents.tolist() == ["1:0.90", "0:0.80", "1:0.50", "0:0.20"]
    assert shown.patterns.tolist() == ["1:…q", "0:…p", "1:…q", "0:…p"]  # tokenless one skipped
    assert n2g.example_table(examples, scores, patterns, 2, by=None).step.tolist() == ["v", "w"]


def test_pooled_token_features_bring_the_sae_to_the_model_first(toy_model, tokenizer, world):
    model = models.HFHookedModel(toy_model, tokenizer)
    sae = build_token_sae(toy_model.config.hidden_size).to("meta")
    examples = data.tokenize_steps(data.world_step_table(world.steps, world.problems).head(2),
                                   tokenizer, 20, 16)
    with pytest.raises(ValueError, match="SAE is on meta and the model on cpu"):
        probes.pooled_token_features(model, sae, examples)
