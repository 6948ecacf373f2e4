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
# # 3. SAE training: a sparse dictionary of the reasoning model's residual stream
#
# Can a sparse autoencoder rewrite the residual stream of the reasoning model as a sum of a few
# features, without losing what the model needs to predict the next token? We train an SAE with
# SAELens on one hook point (`blocks.{L}.hook_resid_post`) over the reasoning model's contexts,
# leaving BOS/EOS/PAD out as the paper does, and measure on held-out contexts how much variance
# it explains, how many features fire per token, how many never fire, and how much of the
# next-token loss survives when the reconstruction replaces the real activation.
#
# The paper's SAE (Galichin et al., 2025) sits at layer 19 of DeepSeek-R1-Distill-Llama-8B with
# expansion 16, L1 coefficient 5, lr 5e-5 and 819.2M tokens; `profiles/r1-distill-llama-8b.yaml`
# holds that configuration, with the training settings of the authors' code that the paper does
# not state (input normalisation, L1 warm-up, lr decay, no decoder bias subtracted from the input:
# `SAETrainConfig.reference()`). Real profiles may instead load a published SAE by SAELens release
# and id (`sae_release`, `sae_id`).
#
# Reads: `models/reasoning/` (notebook 02), `contexts/reasoning_{train,val}.parquet` (notebook 01).
# Writes: `sae/trained/` (SAELens format), `sae/checkpoints/`, `sae/eval.json`,
# `sae/history.parquet`.

# %% tags=["parameters"]
profile = "default"
model_name = None  # hub id or local path of a real model; None uses the toy model of notebook 02
model_device = "cpu"  # real models: "cuda"
model_dtype = "float32"  # real models: "bfloat16"
seed = 0
sae_release = None  # a SAELens release of a pretrained SAE; None trains one here
sae_id = None  # the SAE's id within sae_release
# SAE training (reasonlens.sae.SAETrainConfig); paper values in comments
hook_name = "blocks.2.hook_resid_post"  # paper: blocks.19.hook_resid_post
architecture = "standard"  # "standard" (ReLU + L1, the paper's), "topk" or "jumprelu"
expansion_factor = 8  # d_sae is expansion_factor times d_model (paper: 16)
l1_coefficient = 8.0  # paper: 5
sae_k = 32  # active features per token, topk only
training_tokens = 1_000_000  # paper: 819.2M
sae_lr = 1e-3  # paper: 5e-5
sae_lr_decay_steps = 50  # linear decay to 0 over the last steps (reference code: 40000)
l1_warm_up_steps = 0  # steps over which the L1 coefficient ramps up from 0 (reference code: 10000)
normalize_activations = "none"  # or "expected_average_only_in" (the reference code's)
n_batches_for_norm_estimate = 1000  # batches of sae_batch_size tokens whose mean norm sets that
#                                     scale (SAELens default; read before training starts)
apply_b_dec_to_input = True  # subtract b_dec before encoding (SAELens default; reference: False)
sae_batch_size = 4096  # tokens per step
context_size = 256  # paper: 1024
n_checkpoints = 2  # interrupted runs resume from the latest
sae_device = "cpu"
# evaluation on held-out contexts
n_eval_contexts = 128

# %%
import time

import pandas as pd
from IPython.display import display

from reasonlens import artifacts, data, models, plotting
from reasonlens import constants as K
from reasonlens import sae as sae_lib

run = artifacts.RunDir(profile)
model = models.load_hooked(run.model_path(model_name), "transformer_lens",
                           device=model_device, dtype=model_dtype)
train_frame = run.read_parquet(K.CONTEXTS.format(split="reasoning_train"))
val_tokens = data.contexts_tensor(run.read_parquet(K.CONTEXTS.format(split="reasoning_val")))
val_tokens = val_tokens[:n_eval_contexts]
print(f"d_model {model.d_model}, {model.n_layers} layers; {len(train_frame):,} training contexts, "
      f"{len(val_tokens)} held-out contexts")

# %% [markdown]
# ## Train (or load) the SAE
# SAELens streams activations from the model over the training contexts, shuffles them in a
# buffer and trains the SAE on batches of `sae_batch_size` tokens. Checkpoints land in
# `sae/checkpoints/`; if training is interrupted (an interrupt stops it at the end of the
# current step and writes one), running this cell again with the same parameters continues from
# the latest one, shuffle buffer included, and ends with the SAE an uninterrupted run would have.

# %%
cfg = sae_lib.SAETrainConfig(
    hook_name=hook_name, architecture=architecture, expansion_factor=expansion_factor,
    l1_coefficient=l1_coefficient, k=sae_k, training_tokens=training_tokens, lr=sae_lr,
    lr_decay_steps=min(sae_lr_decay_steps, training_tokens // sae_batch_size),
    l1_warm_up_steps=l1_warm_up_steps, normalize_activations=normalize_activations,
    n_batches_for_norm_estimate=n_batches_for_norm_estimate, apply_b_dec_to_input=apply_b_dec_to_input,
    batch_size=sae_batch_size, context_size=min(context_size, len(train_frame.tokens.iloc[0])),
    n_checkpoints=n_checkpoints, seed=seed, device=sae_device)
if sae_release is None:
    started = time.perf_counter()
    sae, history = sae_lib.train_sae(model, train_frame, cfg, run.path(K.SAE_CHECKPOINTS_DIR))
    print(f"{training_tokens:,} tokens (model run up to {hook_name}, then the SAE step) at "
          f"{training_tokens / (time.perf_counter() - started):,.0f} tokens/s")
    plotting.training_curves(history, save_to=run.figure("03_training"))
else:
    sae, history = sae_lib.load_pretrained_sae(sae_release, sae_id, device=sae_device), None
    hook_name = sae_lib.check_sae_matches_model(model, sae, sae.cfg.metadata.hook_name or hook_name)
print(f"{sae.cfg.architecture()} SAE: d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}, at {hook_name}")

# %% [markdown]
# ## Reconstruction quality on held-out contexts
# *Explained variance* is 1 - E‖x - x̂‖² / Var(x). *Mean L0* counts active features per token.
# *Dead* features never fire on these tokens. *CE loss recovered* splices the reconstruction
# into the forward pass: 1 means the model predicts as well as with its own activations, 0 as
# badly as with the hook point zeroed.

# %%
evaluation = sae_lib.evaluate_sae(model, sae, val_tokens, hook_name=hook_name)
metrics = evaluation.metrics()
display(pd.Series(metrics, name="value").to_frame().round(4))

# %% [markdown]
# A healthy dictionary has most features firing on a small fraction of tokens: a bump well
# below log10 density 0 (every token) and few dead features.

# %%
plotting.feature_density_histogram(evaluation.feature_density,
                                  save_to=run.figure("03_feature_density"));

# %% [markdown]
# ## Write the artifacts

# %%
with run.write_dir(K.SAE_DIR, config=cfg) as path:
    sae_lib.save_sae(sae, path)
run.write(K.SAE_EVAL, {**metrics, "hook_name": hook_name, "sae_release": sae_release,
                       "sae_id": sae_id}, config=cfg)
if history is not None:
    run.write(K.SAE_HISTORY, history, config=cfg)

# %% [markdown]
# **Summary.** The SAE rewrites the residual stream at one layer as a sparse sum of dictionary
# features that keep most of the variance and most of the next-token loss. Notebook 04 ranks its
# features by ReasonScore: which ones fire on the reasoning vocabulary, and only there.
