# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Evaluation: does steering a reasoning feature make the model reason better?
#
# Galichin et al. (2025) steer their top ReasonScore feature (clamped to twice its largest
# activation) and report, on AIME-2024, MATH-500 and GPQA-Diamond, about **+2.2 points of
# accuracy** and **20.5% longer** reasoning traces. Here we ask the same question of the toy
# reasoning model on held-out problems of the synthetic world, with intervals, and test whether the
# features are really about reasoning:
#
# - the **feature and strength chosen on validation problems**: each of the top-N features at
#   every strength of the sweep, the most accurate reported on the test problems beside random
#   features of matched density chosen the same way (`evaluation/headline.json`);
# - a **sweep of strengths** on the top feature;
# - the **top-N features one at a time**, each beside a **random feature of matched density**;
# - **zero-ablation** of the top features (and of their random controls);
# - **model diffing**: the same SAE features on the base model, which never saw a trace, read by
#   the SAE as it is and by the SAE fine-tuned on the base model;
# - a **token-injection control**: reasoning words put into plain answers and taken out of traces;
# - the **lm-evaluation-harness path** used for real models, run here on a task built from the
#   world, steered and unsteered.
#
# Every interval is a 95% percentile bootstrap over problems; differences are paired (the same
# problems under both conditions).
#
# Which site a number comes from: every condition steers at `eval_site`, by default the SAE's own
# hook point (`blocks.L.hook_resid_post`), as the paper's text describes. The paper's published
# numbers come from its evaluation code, which applies the same SAE and clamp to the MLP output of
# that layer (`eval_site = "reference"`, with the maximum in the SAE's raw units); the section
# "Two steering sites" measures both.
#
# On real profiles the problems are the first `n_eval_problems` of each of the paper's lm-eval
# tasks (`lm_eval_tasks`; all three when a real profile names none), in the model's chat template,
# each scored by its task's answer check; the sections that need the synthetic world (the
# token-injection control) or a base model the run lacks (model diffing) say so and are skipped.
#
# Reads: both models (02), the SAE (03), ReasonScores (04), max activations (05), problems (01).
# Writes: `evaluation/` (completions, condition table, validation table, headline, model diff,
# injection, harness results).

# %% tags=["parameters"]
profile = "default"
model_name = None
base_model_name = None
model_device = "cpu"
model_dtype = "float32"
eval_features = None  # None: the top ReasonScore features
n_eval_features = 5  # top-N, steered one at a time
eval_strengths = [0.0, 0.5, 1.0, 2.0]  # tried on validation problems per top feature (0: ablation)
eval_strength = 1.0  # for the top-N features and their controls
eval_mode = "clamp"  # the paper's intervention
eval_site = "resid_post"  # "resid_post": the SAE's hook point; "reference": its layer's MLP output
eval_units = "folded"  # max activations in ReasonScore's units; "raw": the SAE's own
n_site_problems = 100  # problems for the comparison of steering sites at the paper's strength 2
n_eval_problems = 400  # test problems
n_val_problems = 150  # validation problems on which the feature and strength are chosen (0: none)
n_mechanism_traces = 300  # validation traces whose decision points score every feature (0: none)
control_exclude_top = 100  # controls are drawn outside this many top ReasonScore features
eval_max_new_tokens = 256
eval_batch_size = 100
n_boot = 2000
seed = 0
score_split = "reasoning_val"
n_score_contexts = 256
diff_adapt_tokens = 250_000  # base-model activations to fine-tune the SAE on (0: none; a
#                             published SAE, sae_release of 03, is only read as it is)
n_injection = 200  # problems per text kind in the injection control
n_injected_words = 3  # reasoning words put into each plain answer (traces have about 3)
lm_eval_tasks = None  # real profiles: the paper's tasks; None: a task built from the world
n_lm_eval = 100  # documents per harness task (None: all)
lm_eval_gen_kwargs = None  # harness overrides, lm-eval's --gen_kwargs string; None: the tasks' own
aime24_path = None  # local task files (JSON Lines/Parquet); None: the hub or REASONLENS_*_PATH
math500_path = None
gpqa_path = None

# %%
import json
import tempfile

import numpy as np
import pandas as pd
from IPython.display import display
from sae_lens import SAE

from reasonlens import (artifacts, data, diffing, evaluation, harness, injection, mechanism,
                        models, plotting, scoring, steering)
from reasonlens import constants as K
from reasonlens.sae import SAETrainConfig, evaluate_sae
from reasonlens.tasks import TASK_NAMES
from reasonlens.tasks import problems as task_problems
from reasonlens import world
from reasonlens.world import chat_format, prompt

run = artifacts.RunDir(profile)
model = models.load_hooked(run.model_path(model_name), backend="hf", device=model_device,
                           dtype=model_dtype)
sae = SAE.load_from_disk(str(run.require(K.SAE_DIR)), device=model_device)
scores = run.read_parquet(K.REASON_SCORES).sort_values("feature_idx")
max_activations = steering.max_activations_of(run)
top = eval_features or scores.nlargest(n_eval_features, "reason_score").feature_idx.tolist()
controls = steering.density_matched_controls(scores, top, seed=seed,
                                             exclude=scores.nlargest(control_exclude_top,
                                                                     "reason_score").feature_idx.tolist())
eval_tasks = task_problems.tasks_for_run(run, lm_eval_tasks, list(TASK_NAMES))
task_args = dict(aime24_path=aime24_path, math500_path=math500_path, gpqa_path=gpqa_path)
if eval_tasks is None:
    problems = run.read_parquet(K.PROBLEMS)
    test = problems[problems.split == "test"].head(n_eval_problems).reset_index(drop=True)
    test["prompt"] = [prompt(q, reasoning=True, tokenizer=model.tokenizer) for q in test.question]
else:
    test = task_problems.task_problems(eval_tasks, n_eval_problems, task_args, model.tokenizer)
    print(f"problems per task: {test.task.value_counts().to_dict()}")
display(scores.set_index("feature_idx").loc[top + controls,
                                            ["reason_score", "density", "max_activation"]]
        .assign(role=["top"] * len(top) + ["random control"] * len(controls)).round(4))

# %% [markdown]
# ## Does ReasonScore find the mechanism?
# The world is built so that the decision to reflect depends on one thing the model can see: whether
# the step it just wrote *looks* hard (a carry with an operand of 6 or more; notebook 01). A model
# that imitates the traces makes that decision at the newline ending each compute line
# (`mechanism.decision_points`). Every SAE feature is scored by how well its activation there
# separates steps that look hard from the others (ROC AUC over the validation traces'
# decision points, `mechanism.decision_feature_auc`). The decision features are the mechanism;
# the question is whether ReasonScore, which looks at the reflection *words*, ranks them at the top.
# A high AUC says a feature *reads* the decision variable at this layer, not that it *drives* the
# decision (later layers may read the operand again): so the best decision feature is also steered
# below, beside the top ReasonScore features, and "What each condition does to the mechanism"
# shows what that changes.

# %%
decision = mechanism_feature = None
if eval_tasks is None and n_mechanism_traces > 0:
    documents = run.read_parquet(K.DOCUMENTS)
    val_traces = documents[(documents.kind == "trace") & (documents.split == "val")].head(
        n_mechanism_traces).reset_index(drop=True)
    points = mechanism.decision_points(val_traces, run.read_parquet(K.STEPS), model.tokenizer)
    if points.looks_hard.nunique() < 2:
        print("Skipped: the validation traces lack decision points of one kind; raise "
              "n_mechanism_traces.")
    else:
        decision = mechanism.decision_feature_auc(model, sae, val_traces, points).merge(
            scores[["feature_idx", "reason_score"]], on="feature_idx")
        decision["reason_score_rank"] = decision.reason_score.rank(
            ascending=False, method="first").astype(int)
        decision["decision_rank"] = decision.auc.rank(ascending=False, method="first").astype(int)
        best_decision = int(decision.nlargest(1, "auc").feature_idx.iloc[0])
        print(f"{len(points)} decision points in {len(val_traces)} validation traces, "
              f"{points.looks_hard.mean():.0%} after a step that looks hard")
        display(decision.set_index("feature_idx").loc[
            top + [best_decision], ["reason_score_rank", "reason_score", "decision_rank", "auc",
                                    "mean_looks_hard", "mean_other"]].round(3)
            .assign(role=["top ReasonScore"] * len(top) + ["best decision"]))
        mechanism_feature = None if best_decision in top else best_decision  # else steered already

# %% [markdown]
# ## Choosing the feature and strength on validation problems
# A strength picked on the problems it is reported on overstates its effect. So each of the top
# `n_eval_features` features is steered at every strength of `eval_strengths` on `n_val_problems`
# validation problems (split `val` of notebook 01, never the test problems), and the most accurate
# (feature, strength) is chosen; the random controls are tried at the chosen strength on the same
# problems, and the most accurate control is chosen the same way. Both are then reported on the
# test problems below. Real task profiles have no validation split: there the choice is the top
# feature at `eval_strength`, and the headline says so.

# %%
name = lambda f, s: f"f{f} x{s:g}"  # noqa: E731
candidates = {name(f, s): {f: s} for f in top for s in eval_strengths}
mechanism_candidates = ({} if decision is None or mechanism_feature is None else
                        {f"decision {name(mechanism_feature, s)}": {mechanism_feature: s}
                         for s in eval_strengths})
all_candidates = candidates | mechanism_candidates
if eval_tasks is None and n_val_problems > 0:
    val = problems[problems.split == "val"].head(n_val_problems).reset_index(drop=True)
    val["prompt"] = [prompt(q, reasoning=True, tokenizer=model.tokenizer) for q in val.question]
    run_on_val = lambda conds: steering.run_conditions(  # noqa: E731
        model, sae, val.prompt.tolist(), conds, max_activations, eval_mode, eval_max_new_tokens,
        eval_batch_size, site=eval_site, units=eval_units)
    score_val = lambda frames: evaluation.condition_table(  # noqa: E731
        task_problems.score_problems(pd.concat(frames, ignore_index=True), val, model.tokenizer),
        n_boot=n_boot, seed=seed)
    val_frames = [run_on_val({"unsteered": None} | all_candidates)]
    val_table = score_val(val_frames)
    chosen = evaluation.best_condition(val_table, list(candidates))
    chosen_feature, chosen_strength = next(iter(candidates[chosen].items()))
    control_candidates = {f"random {name(c, chosen_strength)}": {c: chosen_strength}
                          for c in controls}
    val_frames.append(run_on_val(control_candidates))
    val_table = score_val(val_frames)
    chosen_control = evaluation.best_condition(val_table, list(control_candidates))
    control_feature = next(iter(control_candidates[chosen_control]))
    # the best decision feature's grid: its own, or the top features' when it is one of them
    decision_conditions = {c: v for c, v in all_candidates.items()
                           if decision is not None and best_decision in v}
    chosen_mechanism = (evaluation.best_condition(val_table, list(decision_conditions))
                        if decision_conditions else None)
    chosen_on = f"validation ({len(val)} problems)"
    grid = val_table[val_table.condition.isin(all_candidates)].assign(
        feature=lambda t: t.condition.map(lambda c: next(iter(all_candidates[c]))),
        strength=lambda t: t.condition.map(lambda c: next(iter(all_candidates[c].values()))))
    display(grid.pivot(index="feature", columns="strength", values="is_correct").round(3)
            .rename_axis(index="feature (validation accuracy)"))
    print(f"unsteered on validation: {val_table.set_index('condition').is_correct['unsteered']:.3f}"
          f"; chosen: {chosen}; chosen control: {chosen_control}; decision feature: "
          f"{chosen_mechanism}")
else:
    val_table = None
    chosen_feature, chosen_strength = top[0], eval_strength
    chosen = name(chosen_feature, chosen_strength)
    control_feature = controls[0]
    chosen_control = f"random {name(control_feature, chosen_strength)}"
    chosen_mechanism = None
    chosen_on = "not chosen: no validation problems (the top feature at eval_strength)"
    print(chosen_on)

# %% [markdown]
# ## The conditions, on the test problems
# One greedy completion per problem and condition, with a KV cache; the steering hook acts on the
# prompt and on every generated token. `f<i> x<s>` clamps feature i to s times its largest
# activation on the scoring data; strength 0 in clamp mode is zero-ablation (the SAE's error term
# keeps everything else). Controls are random features of about the same activation density,
# chosen outside the top 100 by ReasonScore, steered at the chosen strength. With validation
# problems, the test problems see the chosen conditions, every control and the ablations (the
# sweep lives on the validation problems, and the paper's condition, the top feature at strength
# 2, runs on the first `n_site_problems` test problems in "Two steering sites" below); without,
# the paper's condition, the sweep of the top feature and the top features at `eval_strength`
# run here.

# %%
paper_condition = name(top[0], 2.0)  # the paper's: the top feature at strength 2
conditions = {"unsteered": None, chosen: {chosen_feature: chosen_strength}}
if chosen_mechanism:
    conditions[chosen_mechanism] = all_candidates[chosen_mechanism]
if val_table is None:
    conditions[paper_condition] = {top[0]: 2.0}
    conditions |= {name(top[0], s): {top[0]: s} for s in eval_strengths}
    conditions |= {name(f, eval_strength): {f: eval_strength} for f in top}
conditions |= {f"random {name(c, chosen_strength)}": {c: chosen_strength} for c in controls}
conditions |= {f"ablate top {len(top)}": {f: 0.0 for f in top},
               f"ablate random {len(controls)}": {c: 0.0 for c in controls}}
frame = steering.run_conditions(model, sae, test.prompt.tolist(), conditions, max_activations,
                                eval_mode, eval_max_new_tokens, eval_batch_size, site=eval_site,
                                units=eval_units)
frame = task_problems.score_problems(frame, test, model.tokenizer)
table = evaluation.condition_table(frame, n_boot=n_boot, seed=seed)
columns = ["condition", "n", "is_correct", "is_correct_low", "is_correct_high", "is_correct_diff",
           "reasoning_tokens", "reasoning_tokens_diff", "reasoning_words", "reasoning_words_diff"]
display(table[columns].round(3).set_index("condition"))

# %% [markdown]
# ## What each condition does to the mechanism
# The world's rules read every compute step of every test completion back
# (`world.compute_step_outcomes`): per condition, the share of steps reflected on after an easy
# step, a carry that looks easy and one that looks hard, and the share of hard steps that slipped.
# Steering that helps by the papers' route makes the model reflect after the carries that look easy
# (unsteered: almost never); steering can also move accuracy another way, by changing the slips.

# %%
if eval_tasks is None:
    mechanism_rows = {}
    for c in conditions:
        done = frame[frame.condition == c].sort_values("prompt_idx")
        own = world.compute_step_outcomes(test.family[done.prompt_idx].tolist(),
                                          done.completion.tolist())
        by_hardness = world.outcome_table(own)
        mechanism_rows[c] = {**{f"reflected after hardness {h}": by_hardness.reflected.get(h)
                                for h in (0, 1, 2)},
                             "hard steps slipped": (own[own.hardness > 0].outcome == "slip").mean()}
    display(pd.DataFrame(mechanism_rows).T.round(3))

# %% [markdown]
# ## Accuracy, length and reasoning words against strength
# The top feature alone at each strength of `eval_strengths` (0 ablates it, a negative one pushes
# it below zero; 2 is the paper's), on the validation problems when there are (else on the test
# problems).

# %%
swept = val_table if val_table is not None else table
sweep_names = {name(top[0], s): s for s in eval_strengths}
sweep = swept[swept.condition.isin(["unsteered", *sweep_names])].assign(
    strength=lambda t: t.condition.map(sweep_names))
plotting.strength_sweep(sweep, save_to=run.figure("07_strength_sweep"));

# %% [markdown]
# ## The chosen features against random features of matched density, and ablation
# Paired differences to the unsteered model on the test problems (blue: top features and their
# ablation; red: random controls). A reasoning feature should move accuracy, length and reasoning
# words more than its controls.

# %%
compared = table[~table.condition.isin(["unsteered"] + [name(top[0], s) for s in eval_strengths
                                                        if s != eval_strength])]
plotting.difference_bars(compared, save_to=run.figure("07_controls"));

# %% [markdown]
# ## Side by side: unsteered, steered, ablated
# The first problems, unsteered, at the chosen feature and strength, steered on the best decision
# feature, and with the top features zeroed.

# %%
shown = [c for c in ("unsteered", chosen, chosen_mechanism, f"ablate top {len(top)}")
         if c in conditions]
for i in range(min(2, len(test))):
    print(f"Q: {test.question[i]}  (answer {test.answer[i]})")
    for c in dict.fromkeys(shown):
        row = frame[(frame.condition == c) & (frame.prompt_idx == i)].iloc[0]
        print(f"--- {c} ({'right' if row.is_correct else 'wrong'}):\n{row.completion}")
    print()

# %% [markdown]
# ## Model diffing: do these features exist in the base model?
# As in the paper, the reasoning model is a fine-tune of the base model (notebook 02 continues the
# base model on traces), so their residual streams start from one basis; only the base model never
# trained on traces. Two readings of the base model's residual stream on the same reasoning
# contexts:
#
# - **transfer**: the reasoning model's SAE as it is. Its features keep their meaning only while
#   it still reconstructs the base model's activations; on the toy, whose base model never
#   learned the arithmetic that the fine-tune then teaches, the fine-tune moves the default
#   profile's layer 2 far (explained variance near zero on the base model), and this reading is
#   then no evidence.
# - **adapted**: the same SAE fine-tuned for `diff_adapt_tokens` activations of the base model
#   on the SAE's own training contexts (`diffing.adapt_sae`), as stage-wise model diffing
#   fine-tunes one SAE from model to model (Bricken et al., 2024; they carry the earlier model's
#   SAE forward, we carry the reasoning model's back, since its features are the ones asked
#   about). Each feature keeps its index. Its `decoder_cosine` (before vs after) says whether it
#   is still the same direction: where it is high, the feature's activation on reasoning words in
#   the base model says whether the base model uses that direction there; where it is low, the
#   fine-tune turned it into another feature and its base-model numbers are about that one.
#
# Activations are in ReasonScore's folded units (decoder norm included), so the two SAEs' numbers
# compare; `mu_pos_ratio` is the base model's activation on reasoning words over the reasoning
# model's (undefined where the reasoning model's is 0). If the top features encode reasoning learned
# from traces, they should lose their ReasonScore rank and their activation on reasoning words in
# the base model. Read the explained variance on each model first: a feature's absence means
# something only in a basis that reconstructs the model it is absent from. The table and figure add
# the best decision feature when it is not among the top features.

# %%
cfg = scoring.ReasonScoreConfig()
has_base = base_model_name is not None or run.path(K.BASE_MODEL_DIR).exists()
if not has_base:
    diff = None
    print("Skipped: this run has no base model (real profiles: set base_model_name, e.g. "
          "meta-llama/Llama-3.1-8B for R1-Distill-Llama-8B).")
else:
    base = models.load_hooked(run.model_path(base_model_name, base=True),
                              backend="transformer_lens", device=model_device, dtype=model_dtype)
    reasoning_tl = models.load_hooked(run.model_path(model_name), backend="transformer_lens",
                                      device=model_device, dtype=model_dtype)
    tokens = data.contexts_tensor(run.read_parquet(K.CONTEXTS.format(split=score_split)))
    tokens = tokens[:n_score_contexts]
    compared = top + ([] if mechanism_feature is None else [mechanism_feature])
    bases = {"transfer": sae}
    if diff_adapt_tokens and run.read_json(K.SAE_EVAL).get("sae_release") is None:
        bases["adapted"], _ = diffing.adapt_sae(
            base, sae, run.read_parquet(K.CONTEXTS.format(split="reasoning_train")),
            SAETrainConfig.from_dict(run.manifest(K.SAE_DIR)["config"]),
            diff_adapt_tokens)
    base_scores = {label: scoring.reason_score(base, basis, tokens, cfg)[0]
                   for label, basis in bases.items()}
    diff = pd.concat([diffing.feature_diff(scores, base_scores[label], compared).assign(
        basis=label, decoder_cosine=diffing.decoder_cosine(sae, basis)[compared])
        for label, basis in bases.items()], ignore_index=True)
    reconstruction = pd.DataFrame(
        {"reasoning": evaluate_sae(reasoning_tl, sae, tokens[:32]).metrics()}
        | {f"base, {label}": evaluate_sae(base, basis, tokens[:32]).metrics()
           for label, basis in bases.items()})
    display(reconstruction.loc[["explained_variance", "mean_l0", "ce_loss_recovered"]].round(3))
    display(diff.set_index(["basis", "feature_idx"])[
        ["rank_reasoning", "rank_base", "mu_pos_reasoning", "mu_pos_base", "mu_pos_ratio",
         "decoder_cosine"]].round(4))
    wide = diff.pivot(index="feature_idx", columns="basis", values="mu_pos_base").loc[compared]
    wide.columns = [f"base, {c}" for c in wide.columns]
    wide.insert(0, "reasoning", diff.groupby("feature_idx").mu_pos_reasoning.first())
    plotting.paired_bars(wide, list(wide.columns), "mean activation on reasoning words",
                         "Top (and decision) features on the reasoning vs the base model",
                         save_to=run.figure("07_model_diff"))

# %% [markdown]
# ## Token-injection control: the word or the reasoning?
# Four texts per problem: the reasoning trace, the same trace with every reasoning word removed,
# the plain answer, and the plain answer with reasoning words inserted. Each top feature's mean
# activation over a text (reasoning model). A word detector fires on injected plain text as on
# traces and goes quiet on stripped traces; a feature about reasoning keeps firing on stripped
# traces and stays low on injected plain text. Effect sizes: Cohen's d and the paired difference
# with its interval.

# %%
has_world = run.path(K.PROBLEMS).exists()
if not has_world:
    measured = None
    print("Skipped: the injection control needs the synthetic world's paired traces and plain "
          "answers (world/documents.parquet of notebook 01); real runs have neither.")
else:
    documents = run.read_parquet(K.DOCUMENTS)
    test_docs = documents[documents.split == "test"]
    traces = test_docs[test_docs.kind == "trace"].head(n_injection)
    plains = test_docs[test_docs.kind == "plain"].set_index("problem_id").loc[traces.problem_id]
    texts = injection.injection_texts(traces.text.tolist(), plains.text.tolist(),
                                      n_injected_words, seed,
                                      chat_format(model.tokenizer).assistant_prefix)
    measured = injection.measure_conditions(model, sae, texts, traces.problem_id.to_numpy(), top,
                                            cfg)
    effects = injection.effect_sizes(measured, [("trace", "trace, words removed"),
                                                ("plain, words injected", "plain"),
                                                ("trace", "plain, words injected")], seed=seed)
    display(effects.round(3).set_index(["feature_idx", "contrast"]))
    summary = pd.DataFrame([dict(feature_idx=f, condition=c, **dict(zip(
        ("mean", "ci_low", "ci_high"), evaluation.bootstrap_interval(g.doc_mean, n_boot, seed))))
        for (f, c), g in measured.groupby(["feature_idx", "condition"], sort=False)])
    plotting.injection_bars(summary, save_to=run.figure("07_injection"))

# %% [markdown]
# ## The lm-evaluation-harness path
# Real models are evaluated with lm-evaluation-harness through the `reasonlens-steered` model
# (`reasonlens-lm-eval --model reasonlens-steered --model_args pretrained=...,sae=...,features=...`),
# which applies the same hook from model_args. For real profiles `lm_eval_tasks` names the paper's
# tasks; here the harness runs a task written from the world's test problems, unsteered and
# steered at the chosen feature and strength, and must agree with our own evaluation above on the
# same problems.

# %%
with tempfile.TemporaryDirectory() as task_dir:
    if eval_tasks is None:
        harness.world_task(test, task_dir, max_gen_toks=eval_max_new_tokens,
                           tokenizer=model.tokenizer)  # prompts already in its chat template
        tasks = ["reasonlens_world"]
    else:
        tasks = [eval_tasks] if isinstance(eval_tasks, str) else list(eval_tasks)
    steer_args = dict(sae=str(run.require(K.SAE_DIR)), features=chosen_feature,
                      strength=chosen_strength,
                      mode=eval_mode, max_activations=str(run.require(K.MAX_ACTIVATIONS)),
                      site=eval_site, units=eval_units)
    evaluate = lambda **steer: harness.run_harness(  # noqa: E731
        run.model_path(model_name), tasks, task_dir, builtin_tasks=False, limit=n_lm_eval,
        batch_size=eval_batch_size, device=model_device, dtype=model_dtype,
        apply_chat_template=False if eval_tasks is None else None, gen_kwargs=lm_eval_gen_kwargs,
        task_args=task_args, **steer)
    harness_results = {"unsteered": evaluate(),
                       chosen: evaluate(**steer_args)}
if eval_tasks is None:
    harness_table = pd.DataFrame({c: {t: r[t].get("exact_match,answer", np.nan) for t in r}
                                  for c, r in harness_results.items()})
    first = frame[frame.prompt_idx < (n_lm_eval or len(test))]
    ours = first.groupby("condition").is_correct.mean()
    harness_table.loc["ours (same problems)"] = [ours[c] for c in harness_table.columns]
else:
    harness_table = harness.results_table(harness_results)
display(harness_table.round(3))

# %% [markdown]
# ## Two steering sites: the paper's text and the paper's code
# The same clamp of the top feature at the paper's strength 2, at three places: `resid_post`, the
# SAE's own hook point (the paper's text, our default); `reference`, the MLP output of that layer,
# where the authors' vLLM evaluation actually hooked (the **paper's numbers come from this site**);
# and `reference, raw units`, which also writes the maximum into the SAE's own activation as their
# code does (the same as `reference` when the feature's decoder norm is 1; it is printed below).
# Notebook 6 shows why the sites differ: the feature reads differently on the MLP output.

# %%
site_test = test.head(n_site_problems)
site_frame = steering.compare_sites(model, sae, site_test.prompt.tolist(), {top[0]: 2.0},
                                    max_activations, eval_mode,
                                    max_new_tokens=eval_max_new_tokens,
                                    batch_size=eval_batch_size)
site_frame = task_problems.score_problems(site_frame, site_test, model.tokenizer)
site_table = evaluation.condition_table(site_frame, n_boot=n_boot, seed=seed)
print(f"feature {top[0]}: decoder norm {float(sae.W_dec[top[0]].detach().norm()):.3f}, "
      f"max activation {float(max_activations[top[0]]):.3f} (ReasonScore units)")
display(site_table[columns].round(3).set_index("condition"))
display(pd.DataFrame({c: evaluation.headline(site_table, c) for c in steering.SITE_VARIANTS}).T)

# %% [markdown]
# ## The paper's headline beside this profile's
# Accuracy change in points and reasoning-length change in percent of the unsteered length (the
# interval is the paired interval of the length difference divided by the unsteered mean), on the
# test problems. The chosen rows were picked on validation problems (above), so their test
# numbers are honest. The paper's condition is read from the test table when it ran there
# (without validation problems, or when it was the chosen condition), else from "Two steering
# sites" above (its `resid_post` row, on the first `n_site_problems`). Our rows steer at
# `eval_site`; the paper's own numbers come from its code's site (`reference`, above).
# `evaluation/headline.json` holds the chosen feature's, the chosen control's and the decision
# feature's numbers.

# %%
paper_row = ((table, paper_condition) if paper_condition in set(table.condition) else
             (site_table, "resid_post"))  # the same condition, on the first n_site_problems
rows = [(*paper_row, f"{profile}: top feature at the paper's strength, {eval_site} "
                     f"({paper_condition})"),
        (table, chosen, f"{profile}: chosen on {chosen_on} ({chosen})"),
        (table, chosen_control, f"{profile}: random control, chosen the same way "
                                f"({chosen_control})"),
        (table, chosen_mechanism, f"{profile}: best decision feature, strength chosen the same "
                                  f"way ({chosen_mechanism})")]
headlines = pd.DataFrame([{"": "paper: R1-Distill-Llama-8B, feature 46379 x2 (AIME/MATH/GPQA)",
                           "accuracy change (points)": "+2.2", "length change (%)": "+20.5",
                           "test problems": None}]
                         + [{"": label, **evaluation.headline(t, c),
                             "test problems": int(t.set_index("condition").n[c])}
                            for t, c, label in rows if c in set(t.condition)]
                         ).set_index("").astype({"test problems": "Int64"})
display(headlines)
headline_record = {
    **{"feature_idx": int(chosen_feature), "strength": float(chosen_strength)},
    **evaluation.headline_numbers(table, chosen), "chosen_on": chosen_on,
    "candidates": {"features": [int(f) for f in top], "strengths": list(eval_strengths)},
    "mode": eval_mode, "site": eval_site,
    "control": {"feature_idx": int(control_feature), "strength": float(chosen_strength),
                **evaluation.headline_numbers(table, chosen_control)}}
if chosen_mechanism:
    feature, strength = next(iter(all_candidates[chosen_mechanism].items()))
    row = decision.set_index("feature_idx").loc[feature]
    headline_record["decision_feature"] = {
        "feature_idx": int(feature), "strength": float(strength), "auc": float(row.auc),
        "reason_score_rank": int(row.reason_score_rank),
        **evaluation.headline_numbers(table, chosen_mechanism)}
print(json.dumps(headline_record, indent=1))

# %% [markdown]
# ## Write the artifacts

# %%
config = {"features": top, "controls": controls, "strengths": eval_strengths,
          "strength": eval_strength, "mode": eval_mode, "site": eval_site, "units": eval_units,
          "n_problems": len(test), "eval_tasks": eval_tasks}
run.write(K.EVAL_COMPLETIONS, frame.drop(columns="generated_ids"), config=config)
run.write(K.EVAL_CONDITIONS, table, config=config)
run.write(K.EVAL_HEADLINE, headline_record, config=config)
if decision is not None:
    run.write(K.EVAL_DECISION, decision, config=config | {"n_traces": len(val_traces)})
if val_table is not None:
    run.write(K.EVAL_VALIDATION, val_table, config=config | {"n_val_problems": len(val)})
run.write(K.EVAL_SITES, site_table, config=config | {"site_strength": 2.0,
                                                      "n_site_problems": len(site_test)})
if diff is not None:
    run.write(K.MODEL_DIFF, diff, config=config | {"sae_reconstruction": reconstruction.to_dict(),
                                                   "diff_adapt_tokens": diff_adapt_tokens})
if measured is not None:
    run.write(K.INJECTION, measured, config=config | {"n_injected_words": n_injected_words})
    run.write(K.INJECTION_EFFECTS, effects, config=config)
run.write(K.HARNESS_RESULTS, json.loads(harness_table.to_json()), config=config | {"tasks": tasks})
