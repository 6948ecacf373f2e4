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
n_steer_prompts = 48
steer_max_new_tokens = 160
n_side_by_side = 3

# %%
import pandas as pd
from IPython.display import display
from sae_lens import SAE

from reasonlens import artifacts, data, evaluation, models, plotting, steering
from reasonlens import constants as K
from reasonlens.world import prompt

run = artifacts.RunDir(profile)
model = models.load_hooked(run.model_path(model_name), backend="hf", device=model_device,
                           dtype=model_dtype)
sae = SAE.load_from_disk(str(run.require(K.SAE_DIR)), device=model_device)
scores = run.read_parquet(K.REASON_SCORES)
features = steer_features or scores.nlargest(n_steer_features, "reason_score").feature_idx.tolist()
max_activations = steering.max_activations_of(run)
problems = run.read_parquet(K.PROBLEMS)
test = problems[problems.split == "test"].head(n_steer_prompts)
scores.set_index("feature_idx").loc[features, ["reason_score", "max_activation", "density"]]

# %% [markdown]
# ## Generate, unsteered and steered
# Greedy decoding with a KV cache; the steering hook acts on every position.

# %%
prompts = [prompt(q, reasoning=True) for q in test.question]
frame = steering.steered_completions(model, sae, prompts, features, steer_strengths,
                                     max_activations, mode=steer_mode,
                                     max_new_tokens=steer_max_new_tokens)
frame["is_correct"] = [evaluation.parse_answer(c) == a for c, a in
                       zip(frame.completion, test.answer.tolist() * (len(frame) // len(test)))]
frame["reasoning_tokens"] = [evaluation.reasoning_length(ids, model.tokenizer)
                             for ids in frame.generated_ids]
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
# ## Write the artifacts

# %%
run.write(K.STEERED_COMPLETIONS, frame.drop(columns="generated_ids"),
          config={"features": features, "strengths": steer_strengths, "mode": steer_mode})
