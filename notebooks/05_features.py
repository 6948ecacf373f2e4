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
# # 5. Feature interfaces: what do the top reasoning features do?
#
# ReasonScore (notebook 4) says *which* features respond to reasoning words; this notebook shows
# *how*. For the top features by ReasonScore we build SAEDashboard pages (Galichin et al., 2025,
# Sec. 4 read their features from such dashboards), an interactive explorer (top-activating
# contexts as token heat maps, the activation histogram, the tokens a feature promotes and
# suppresses through the unembedding, its per-word profile, and any prompt you type), a 2-D map of
# all decoder directions, and each top feature's largest activation, which steering (notebook 6)
# scales.
#
# Reads: the model (02), the SAE (03), the scoring contexts (01) and ReasonScores (04).
# Writes: `features/dashboards/`, `features/max_activations.parquet`,
# `features/feature_map.parquet`.

# %% tags=["parameters"]
profile = "default"
seed = 0
model_name = None
model_device = "cpu"  # real models: "cuda"
model_dtype = "float32"  # real models: "bfloat16"
score_split = "reasoning_val"  # the scoring data of notebook 04
n_score_contexts = 256
score_shuffle_seed = None  # None: contexts as stored; the paper's code shuffles its extraction
# set with datasets' shuffle(seed=42) and scores the first 4096
score_batch_size = 8
n_dashboard_features = 20  # top-k features by ReasonScore that get dashboards (paper code: 100)
dashboard_split = None  # contexts the dashboards read; None: score_split (paper code: the first
# 10,000 contexts of its OpenThoughts extraction subset, unshuffled)
n_dashboard_contexts = None  # None: n_score_contexts
dash_minibatch_size_tokens = 16  # contexts per model pass in SAEDashboard's runner (paper code: 64)
dash_minibatch_size_features = 64  # features per batch in SAEDashboard's runner (paper code: 128)
explorer_n_contexts = 8  # top-activating contexts shown per feature
explorer_window = [12, 4]  # tokens shown left/right of each context's maximum
explorer_n_logits = 10  # promoted/suppressed tokens shown per feature
n_static_features = 3  # top features whose explorer views are printed into the book
explorer_prompt = "Hmm, wait. Let me check that again. Therefore the answer is 12."
feature_map_method = "auto"  # "umap", "pca", or "auto" (UMAP when umap-learn is installed)
feature_map_neighbors = 15  # UMAP n_neighbors

# %%
from IPython.display import HTML, IFrame, display
from sae_lens import SAE

from reasonlens import artifacts, dashboards, data, models, plotting
from reasonlens import constants as K
from reasonlens.explorer import ExplorerWidget, FeatureExplorer
from reasonlens.feature_map import feature_map

run = artifacts.RunDir(profile)
model = models.load_hooked(run.model_path(model_name), backend="transformer_lens",
                           device=model_device, dtype=model_dtype)
sae = SAE.load_from_disk(str(run.require(K.SAE_DIR)), device=model_device)
scores = run.read_parquet(K.REASON_SCORES)
contexts = run.read_parquet(K.CONTEXTS.format(split=score_split))
if score_shuffle_seed is not None:
    contexts = data.shuffle_contexts(contexts, seed=score_shuffle_seed)
tokens = data.contexts_tensor(contexts)[:n_score_contexts]
features = dashboards.top_features(scores, n_dashboard_features, sae.cfg.d_sae)
print(f"{tokens.numel():,} scoring tokens; top {len(features)} features: {features}")

# %% [markdown]
# ## Activations of the top features, and their maxima
# One pass over the scoring data of notebook 4 (the same contexts, BOS/EOS/PAD ignored) encodes
# the top features with the decoder norms folded into the encoder, as ReasonScore does. Each
# feature's largest activation is the unit in which notebook 6 steers it; it should equal the
# `max_activation` column of notebook 4's table.

# %%
explorer = FeatureExplorer(model, sae, tokens, scores, features, n_contexts=explorer_n_contexts,
                           window=tuple(explorer_window), n_logits=explorer_n_logits,
                           batch_size=score_batch_size)
maxima = explorer.max_activations(features)
maxima["max_activation_04"] = scores.set_index("feature_idx").loc[features].max_activation.values
maxima.round(4).set_index("feature_idx")

# %% [markdown]
# ## SAEDashboard pages
# SAEDashboard's runner computes, for each top feature, its top-activating sequences and
# activation quantiles on the dashboard contexts (by default the scoring data; the paper's code
# uses its extraction subset), activation and logit histograms, and logit tables;
# BOS, EOS and PAD are left out, as in ReasonScore. One page per feature (every token shown as it
# is, `<think>` included); the first is embedded below, all are linked.

# %%
dash_cfg = dashboards.DashboardConfig(minibatch_size_tokens=dash_minibatch_size_tokens,
                                      minibatch_size_features=dash_minibatch_size_features,
                                      seed=seed)
dash_contexts = run.read_parquet(K.CONTEXTS.format(split=dashboard_split or score_split))
dash_tokens = data.contexts_tensor(dash_contexts)[:n_dashboard_contexts or n_score_contexts]
with run.write_dir(K.DASHBOARDS_DIR, config=dash_cfg) as out:
    pages = dashboards.write_dashboards(model.model, sae, dash_tokens, features, out, dash_cfg,
                                        profile=profile)
print(f"{len(pages)} pages in {run.path(K.DASHBOARDS_DIR)}")
display(HTML(dashboards.index_html(pages, scores, "dashboards")))
display(IFrame(f"dashboards/{pages[features[0]].name}", width="100%", height=720))

# %% [markdown]
# ## The explorer
# In JupyterLab the widget below lets you pick any feature, from the ranked list or by index,
# and type a prompt to see every token coloured by the feature's activation. The book cannot run
# it, so the same views follow for the top features.

# %%
widget = ExplorerWidget(explorer, n_ranked=n_dashboard_features, prompt=explorer_prompt)
display(widget.box)

# %% [markdown]
# ### The same views, for the top features
# The summary row is the feature's ReasonScore and its parts, then its per-word profile p_i. The
# heat maps shade each token by the activation (the maximum outlined; hover for values). A
# reasoning feature's contexts should centre on reflection and hesitation, and its logit effects
# should favour the words that follow them.

# %%
for f in features[:n_static_features]:
    display(HTML(explorer.feature_html(f)))

# %% [markdown]
# The top feature on a typed prompt:

# %%
display(HTML(explorer.prompt_html(features[0], explorer_prompt)))

# %% [markdown]
# ## A map of all features
# Each point is a feature's decoder direction, projected to 2-D (UMAP with cosine distance, or PCA
# without umap-learn), coloured by ReasonScore; the top features are circled and labelled.
# Reasoning features that sit together write related directions into the residual stream.

# %%
fmap = feature_map(sae.W_dec, scores, method=feature_map_method, seed=seed,
                   n_neighbors=feature_map_neighbors)
plotting.feature_map(fmap, features, save_to=run.figure("05_feature_map"));

# %% [markdown]
# ## Write the artifacts

# %%
run.write(K.MAX_ACTIVATIONS, maxima.drop(columns="max_activation_04"),
          config={"score_split": score_split, "n_score_contexts": n_score_contexts,
                  "score_shuffle_seed": score_shuffle_seed, "features": features})
run.write(K.FEATURE_MAP, fmap, config={"method": feature_map_method, "seed": seed,
                                       "n_neighbors": feature_map_neighbors})

# %% [markdown]
# **Summary.** The top ReasonScore features fire around reflection and hesitation, their
# dashboards and heat maps show where, and their largest activations are saved for steering in
# notebook 6.
