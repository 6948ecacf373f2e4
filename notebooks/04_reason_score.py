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
# # 4. ReasonScore: which features fire on reasoning words?
#
# Galichin et al. (2025) rank SAE features by how specifically they respond to the reasoning
# vocabulary (*wait*, *hmm*, *let me*, ...): a feature scores high when its mean activation inside
# windows around those words is large relative to all features, spread evenly over the words
# (entropy), and small elsewhere. We score every feature of the SAE from notebook 03 in one model
# pass per token batch, then look at the top features' per-word profiles.
#
# Reads: the model (02), the SAE and contexts (03, 01). Writes: `scores/reason_scores.parquet`.

# %% tags=["parameters"]
profile = "default"
model_name = None
model_device = "cpu"  # real models: "cuda"
model_dtype = "float32"  # real models: "bfloat16"
hook_name = None  # None: the SAE's own hook point
alpha = 0.7  # entropy exponent (paper: 0.7)
window = [1, 2]  # tokens added left/right of each match (paper: 1, 2)
words = None  # None: the 34 strings the paper's code scores (constants.REASON_TOKENS)
variants = "listed"  # "listed": strings as given, grouped by lstrip().lower() (the paper's code);
# "all_forms": each word in all four case and leading-space forms (the paper's text)
window_edges = "definition"  # or "reference": the paper's code's clipping at a context's start
compare_scorings = True  # also score with the paper's text rule and the code's edges
score_split = "reasoning_val"  # contexts to score on
n_score_contexts = 256
score_shuffle_seed = None  # None: contexts as stored; the paper's code shuffles its extraction
# set with datasets' shuffle(seed=42) and scores the first 4096
score_batch_size = 8
top_k = 20
n_top_activations = 50  # per feature, for the window-share check
n_prompts = 150  # per kind of document, for the prompt-level score

# %%
import dataclasses
import time

import numpy as np
from IPython.display import display
from sae_lens import SAE

from reasonlens import artifacts, data, models, plotting, scoring
from reasonlens import constants as K

run = artifacts.RunDir(profile)
model = models.load_hooked(run.model_path(model_name), backend="transformer_lens",
                           device=model_device, dtype=model_dtype)
sae = SAE.load_from_disk(str(run.require(K.SAE_DIR)), device=model_device)
contexts = run.read_parquet(K.CONTEXTS.format(split=score_split))
if score_shuffle_seed is not None:
    contexts = data.shuffle_contexts(contexts, seed=score_shuffle_seed)
tokens = data.contexts_tensor(contexts)[:n_score_contexts]
print(f"{tokens.numel():,} tokens; SAE {sae.cfg.metadata.hook_name}, d_sae={sae.cfg.d_sae}")

# %% [markdown]
# ## Score every feature
# One model pass per batch of contexts encodes the residual stream with the SAE (decoder norms
# folded into the encoder) and accumulates, for all features at once, activation sums and counts
# inside each word's windows, inside their union, and outside. The score is exact under any
# batching (and across processes: `python -m reasonlens.distributed` under `torchrun`).

# %%
cfg = scoring.ReasonScoreConfig(alpha=alpha, window=tuple(window), hook_name=hook_name,
                                batch_size=score_batch_size, words=words, variants=variants,
                                window_edges=window_edges)
print(f"|R| = {len(scoring.reasoning_groups(model.tokenizer, cfg))} groups of "
      f"{len(cfg.words)} strings")
started = time.perf_counter()
scores, stats = scoring.reason_score(model, sae, tokens, cfg)
print(f"{tokens.numel():,} tokens scored at {tokens.numel() / (time.perf_counter() - started):,.0f}"
      " tokens/s (model run up to the hook point)")
top = scores.nlargest(top_k, "reason_score")
display(top[["feature_idx", "reason_score", "mu_pos", "mu_neg", "entropy", "density",
             "max_activation"]].round(4).set_index("feature_idx"))

# %% [markdown]
# ## The paper's text and its code
# The paper names ten words and says case and leading-space variants count as one word; its code
# (AIRI-Institute/SAE-Reasoning, `extraction/reason_tokens.json`) scores 34 strings: all four
# forms of eight words, but only "But" and "Another" of the last two, leaving out " but", one of
# the commonest tokens of English. This notebook's default is the code's list. The code also
# widens windows with an indexed `+=` that counts a start shared by several tokens once (a
# multi-token word at a context's start), which shortens that window and, for the rest of the
# context, every window of the same word that no other window overlaps; the default is the
# definition, `window_edges="reference"` the code's behaviour. How much each choice moves the
# ranking, here (overlap of the top features, rank of this ranking's top feature, Spearman
# correlation of all scores, largest score change):

# %%
if compare_scorings:
    alternatives = {"paper text: all forms of the ten words": dataclasses.replace(
                        cfg, words=K.REASONING_WORDS, variants="all_forms"),
                    "paper code: its window edges": dataclasses.replace(
                        cfg, window_edges="reference")}
    rankings = {"this notebook": scores} | {
        name: scoring.reason_score(model, sae, tokens, alt, progress=False)[0]
        for name, alt in alternatives.items()}
    display(scoring.compare_rankings(rankings, top_k).round(4))

# %% [markdown]
# ## Per-word profiles of the top features
# p_i(f) is the share of feature f's word-window activation that each word receives. A feature
# spread over many words (high entropy) is about *reasoning*, not one word; a feature
# concentrated on one column is a word detector, and the entropy term discounts it.

# %%
word_columns = [scoring.word_column(w) for w in stats.words]
profile = top.set_index("feature_idx")[word_columns]
profile = profile.div(profile.sum(axis=1).replace(0, np.nan), axis=0).fillna(0)
profile.columns = stats.words
plotting.word_profile_heatmap(profile, save_to=run.figure("04_word_profiles"));

# %% [markdown]
# ## Score against density
# Dense features fire everywhere and pay for it through the negative term; the top features
# should be neither dead nor ubiquitous.

# %%
plotting.score_vs_density(scores, top_k=top_k, save_to=run.figure("04_score_vs_density"));

# %% [markdown]
# ## Do the top features fire inside reasoning-word windows?
# For each top feature, the share of its strongest activations on the scoring data that lie inside
# a word window, next to the share of all tokens that do (chance).

# %%
shares = scoring.top_activation_window_share(model, sae, tokens, top.feature_idx, cfg,
                                             n_top=n_top_activations)
display(shares.round(3).set_index("feature_idx").T)
print(f"mean share inside windows: {shares.window_share.mean():.2f} "
      f"(chance {shares.chance_share.iloc[0]:.2f})")

# %% [markdown]
# ## A prompt-level score
# The mean activation of the top-k features over a document's tokens, for reasoning traces versus
# plain answers and small talk (held-out documents).

# %%
documents = run.read_parquet(K.DOCUMENTS)
held_out = documents[documents.split == "val"]
prompt_scores = {}
for kind, group in held_out.groupby("kind"):
    batch = model.tokenizer(group.text.tolist()[:n_prompts], add_special_tokens=False,
                            padding=True, truncation=True, max_length=tokens.shape[1],
                            return_tensors="pt")["input_ids"]
    prompt_scores[kind] = scoring.prompt_score(model, sae, batch, top.feature_idx.tolist(),
                                               hook_name=hook_name).numpy()
plotting.grouped_histogram(prompt_scores, xlabel=f"mean activation of the top {top_k} features",
                           save_to=run.figure("04_prompt_scores"));

# %% [markdown]
# ## Write the artifacts

# %%
run.write(K.REASON_SCORES, scores, config=cfg)
run.write(K.WINDOW_SHARES, shares, config=cfg)

# %% [markdown]
# **Summary.** ReasonScore ranks the SAE's features by how specifically, and how evenly across the
# vocabulary, they respond to reasoning words. Notebook 05 opens the top features in dashboards.
