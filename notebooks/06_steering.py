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
# # 6. Steering: what happens when a reasoning feature is turned up?
#
# Galichin et al. (2025) clamp a top ReasonScore feature to a multiple of its largest activation
# at every position of the prompt and of the generated tokens (keeping the SAE's error term), and
# see longer, more reflective traces. We do the same on the toy reasoning model: completions side
# by side, unsteered and steered on the top features at several strengths, and how the rate of
# each reasoning word changes. Notebook 7 measures accuracy and length with intervals.
#
# Which site a number comes from: this notebook steers at `steer_site`, by default the SAE's own
# hook point (`blocks.L.hook_resid_post`), the intervention the paper describes. The paper's
# published numbers come from its evaluation code, which steers the MLP output of that layer
# (`steer_site = "reference"`); the last section compares the two.
#
# On real profiles the prompts are the first `n_steer_prompts` problems of one of the paper's
# lm-eval tasks (`steer_task`: `math-500`, `aime2024_nofigures` or `openai_gpqa_diamond`, with the
# reference's prompt in the model's chat template), scored by the task's own answer check
# (math-verify on the last `\boxed{}`, the letter for GPQA); the toy steers the world's test
# problems.
#
# Reads: the model (02), the SAE (03), ReasonScores (04) and max activations (05; 04 for the rest).
# Writes: `steering/completions.parquet`.

# %% tags=["parameters"]
profile = "default"
model_name = None
model_device = "cpu"
model_dtype = "float32"
steer_features = None  # feature indices; None takes the top ReasonScore features
n_steer_features = 3
steer_strengths = [1.0, 1.5, 2.0, 4.0]  # multiples of each feature's max activation (paper: 2)
steer_mode = "clamp"  # "clamp" (the paper's), "direction" or "add"
steer_site = "resid_post"  # "resid_post" (the SAE's hook point) or "reference" (the MLP output)
steer_units = "folded"  # max activations in ReasonScore's units; "raw": the SAE's own, as the authors
site_split = "reasoning_val"  # contexts on which the two steering sites are compared
n_site_contexts = 64
n_steer_prompts = 48
steer_max_new_tokens = 256
n_side_by_side = 3
steer_task = None  # a paper task, e.g. "math-500"; None: the world (a real run: math-500)
aime24_path = None  # local task files (JSON Lines/Parquet); None: the hub or REASONLENS_*_PATH
math500_path = None
gpqa_path = None

# %%
import pandas as pd
from IPython.display import display
from sae_lens import SAE

from reasonlens import artifacts, data, models, plotting, steering
from reasonlens import constants as K
from reasonlens.tasks import problems as task_problems
from reasonlens.world import prompt

run = artifacts.RunDir(profile)
model = models.load_hooked(run.model_path(model_name), backend="hf", device=model_device,
                           dtype=model_dtype)
sae = SAE.load_from_disk(str(run.require(K.SAE_DIR)), device=model_device)
scores = run.read_parquet(K.REASON_SCORES)
features = steer_features or scores.nlargest(n_steer_features, "reason_score").feature_idx.tolist()
max_activations = steering.max_activations_of(run)
steer_task = task_problems.tasks_for_run(run, steer_task, "math-500")
if steer_task is None:
    problems = run.read_parquet(K.PROBLEMS)
    test = problems[problems.split == "test"].head(n_steer_prompts).reset_index(drop=True)
    test["prompt"] = [prompt(q, reasoning=True, tokenizer=model.tokenizer) for q in test.question]
else:
    test = task_problems.task_problems(steer_task, n_steer_prompts, dict(
        aime24_path=aime24_path, math500_path=math500_path, gpqa_path=gpqa_path), model.tokenizer)
    print(f"{len(test)} problems of {steer_task}")
scores.set_index("feature_idx").loc[features, ["reason_score", "max_activation", "density"]]

# %% [markdown]
# ## Generate, unsteered and steered
# Greedy decoding with a KV cache; the steering hook acts on every position.

# %%
frame = steering.steered_completions(model, sae, test.prompt.tolist(), features, steer_strengths,
                                     max_activations, mode=steer_mode,
                                     max_new_tokens=steer_max_new_tokens, site=steer_site,
                                     units=steer_units)
frame = task_problems.score_problems(frame, test, model.tokenizer)
frame["condition"] = ["unsteered" if f < 0 else f"f{f} x{s:g}"
                      for f, s in zip(frame.feature_idx, frame.strength)]

# %% [markdown]
# ## Side by side
# The same problems, unsteered and with the top feature at each strength. Look for reflections
# ("Wait", "let me check") that the unsteered model never writes under greedy decoding.

# %%
top_feature = features[0]
for i in range(min(n_side_by_side, len(test))):
    print(f"Q: {test.question.iloc[i]}  (answer {test.answer.iloc[i]})")
    rows = frame[(frame.prompt_idx == i) & frame.feature_idx.isin([-1, top_feature])]
    for _, row in rows.iterrows():
        print(f"--- {row.condition} ({'right' if row.is_correct else 'wrong'}):\n{row.completion}")
    print()

# %% [markdown]
# ## Reasoning-word rates, accuracy and length per condition
# Rates are per 1,000 words of the completions. This is a small sample without intervals;
# notebook 7 measures accuracy and length properly.

# %%
rates = pd.DataFrame({name: data.word_rates(group.completion, K.REASONING_WORDS)
                      for name, group in frame.groupby("condition", sort=False)})
display(frame.groupby("condition", sort=False)[["is_correct", "reasoning_tokens"]].mean().round(3))
plotting.word_rate_bars(rates, save_to=run.figure("06_word_rates"));

# %% [markdown]
# ## Two sites: the residual stream the SAE reads, or the MLP output the authors' code steered
# The authors' evaluation hooks vLLM's Llama decoder layer, whose output is the layer's MLP output
# before the residual add; so their clamp runs the resid_post SAE on the MLP output
# (`blocks.L.hook_mlp_out`, `site="reference"`) and adds (c - f_k(mlp_out)) d_k to the stream. The
# **paper's numbers come from that site**; the paper's text (and our default) clamps at
# `blocks.L.hook_resid_post`, where the move is (c - f_k(resid_post)) d_k. How far apart the two are
# depends on f_k at each site: below, the top feature's activation at both, over the scoring
# contexts, in ReasonScore's units, beside the clamp's target c at the paper's strength 2. Where
# f_k is near 0 on the MLP output, the reference clamp is close to adding c d_k everywhere.
# Notebook 7 measures accuracy and length at both sites.

# %%
site_tokens = data.contexts_tensor(run.read_parquet(K.CONTEXTS.format(split=site_split)))
site_acts = steering.site_activations(model, sae, site_tokens[:n_site_contexts], [top_feature],
                                      models.special_token_ids(model.tokenizer))
display(site_acts.groupby("site").activation.describe(percentiles=[0.5, 0.9, 0.99])
        .assign(share_active=site_acts.activation.gt(0).groupby(site_acts.site).mean(),
                target_at_strength_2=2 * float(max_activations[top_feature])).round(3))
plotting.grouped_histogram({site: group.activation.to_numpy()
                            for site, group in site_acts.groupby("site")},
                           f"activation of feature {top_feature} (ReasonScore units)",
                           save_to=run.figure("06_site_activations"));

# %% [markdown]
# ## Write the artifacts

# %%
run.write(K.STEERED_COMPLETIONS, frame.drop(columns="generated_ids"),
          config={"features": features, "strengths": steer_strengths, "mode": steer_mode,
                  "site": steer_site, "units": steer_units, "task": steer_task})
