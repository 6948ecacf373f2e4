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
# # 2. Model: a toy reasoning model and its base model
#
# Does training on reasoning traces make a model better at the world's problems? We train two
# small Llama-style causal LMs (real `transformers` models, saved with `save_pretrained`) on the
# contexts of notebook 01: the *reasoning model* on traces + plain answers + small talk, the
# *base model* on the same problems without traces (for model diffing in notebook 07). Then we
# load the reasoning model in TransformerLens and check that it computes the same logits as the
# plain transformers model, since later notebooks use both.
#
# Real profiles set `model_name` and load that model instead of training.
#
# Reads: `tokenizer/`, `contexts/`, `world/problems.parquet` (notebook 01).
# Writes: `models/reasoning/`, `models/base/`, `models/history.parquet`, `models/eval.json`,
# `models/completions.parquet`.

# %% tags=["parameters"]
profile = "default"
model_name = None  # hub id or local path of a real model; None trains the toy models
model_device = "cpu"  # real models: "cuda"
model_dtype = "float32"  # real models: "bfloat16"
seed = 0
# toy model (reasonlens.models.ToyModelConfig)
d_model = 128
n_layers = 4
n_heads = 4
d_mlp = 384
# training (reasonlens.lm_training.LMTrainConfig)
n_steps = 600
batch_size = 32
lr = 4e-3
n_threads = None
# evaluation on held-out problems
n_eval = 300
max_new_tokens = 160

# %%
import pandas as pd
import torch
from IPython.display import display
from transformers import AutoTokenizer

from reasonlens import artifacts, data, evaluation, lm_training, models, plotting
from reasonlens import constants as K

run = artifacts.RunDir(profile)
tokenizer = AutoTokenizer.from_pretrained(run.require(K.TOKENIZER_DIR))
contexts = {f"{mix}_{split}": data.contexts_tensor(run.read_parquet(
    K.CONTEXTS.format(split=f"{mix}_{split}"))) for mix in data.MIXES for split in ("train", "val")}
{name: tuple(t.shape) for name, t in contexts.items()}

# %% [markdown]
# ## Train both toy models
# Same architecture, same initialisation seed, same number of steps; only the training mix
# differs.

# %%
if model_name is None:
    model_cfg = models.ToyModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                      d_mlp=d_mlp,
                                      n_ctx=max(512, contexts["reasoning_train"].shape[1]))
    train_cfg = lm_training.LMTrainConfig(n_steps=n_steps, batch_size=batch_size, lr=lr,
                                          seed=seed, n_threads=n_threads)
    trained, histories = {}, {}
    for mix in data.MIXES:
        trained[mix] = models.build_toy_model(model_cfg, tokenizer, seed=seed)
        histories[mix] = lm_training.train_lm(trained[mix], contexts[f"{mix}_train"],
                                              contexts[f"{mix}_val"], train_cfg, desc=mix)
    print(f"{sum(p.numel() for p in trained['reasoning'].parameters()):,} parameters per model")
    plotting.loss_curves(histories, save_to=run.figure("02_loss"))
else:
    hf_model, tokenizer = models.load_hf_model(model_name, dtype=model_dtype, device=model_device)
    trained = {"reasoning": hf_model}

# %% [markdown]
# ## One model, two backends
# TransformerLens gets the same weights, converted by its own Llama conversion and loaded
# without LayerNorm folding or centring, so `blocks.{L}.hook_resid_post` is exactly the hidden
# state the transformers model computes. The largest logit difference on validation contexts:

# %%
tl_model = models.as_hooked_transformer(trained["reasoning"], tokenizer)
check_tokens = contexts["reasoning_val"][:4, :128].to(model_device)
with torch.no_grad():
    max_diff = (tl_model(check_tokens) - trained["reasoning"](check_tokens).logits).abs().max()
print(f"max |logit difference| TransformerLens vs transformers: {max_diff:.2e}")

# %% [markdown]
# ## Held-out accuracy
# Greedy completions on test problems: the reasoning model is prompted to think
# (`<|assistant|><think>`), the base model answers directly. Intervals are Wilson 95%; the
# difference is a paired bootstrap over the same problems.

# %%
if model_name is None:
    problems = run.read_parquet(K.PROBLEMS)
    test = problems[problems.split == "test"].head(n_eval)
    results = {mix: evaluation.evaluate_answers(trained[mix], tokenizer, test,
                                                reasoning=(mix == "reasoning"),
                                                max_new_tokens=max_new_tokens, desc=mix)
               for mix in trained}
    overall = evaluation.accuracy_table(results)
    by_family = evaluation.accuracy_table(results, by="family")
    diff = evaluation.paired_bootstrap_difference(results["reasoning"].is_correct,
                                                  results["base"].is_correct, seed=seed)
    display(overall.round(3))
    print(f"reasoning - base: {diff[0]:+.3f} (95% CI {diff[1]:+.3f} to {diff[2]:+.3f})")
    plotting.accuracy_bars(by_family, save_to=run.figure("02_accuracy"));

# %% [markdown]
# Sample completions: look for reflections that catch a slip, and for the base model's
# direct guesses.

# %%
if model_name is None:
    for i in range(3):
        print(f"Q: {test.question.iloc[i]}  (answer {test.answer.iloc[i]})")
        for mix in results:
            row = results[mix].iloc[i]
            print(f"--- {mix} ({'right' if row.is_correct else 'wrong'}):\n{row.completion}")
        print()
    reflective = results["reasoning"].completion.str.contains("Wait|check", regex=True)
    display(results["reasoning"].groupby(reflective).is_correct.agg(["mean", "size"])
            .rename_axis("trace reflects"))

# %% [markdown]
# ## Write the artifacts

# %%
if model_name is None:
    for mix, directory in (("reasoning", K.REASONING_MODEL_DIR), ("base", K.BASE_MODEL_DIR)):
        with run.write_dir(directory, config={"model": model_cfg.to_dict(),
                                              "training": train_cfg.to_dict(), "mix": mix}) as path:
            trained[mix].save_pretrained(path)
            tokenizer.save_pretrained(path)
    run.write(K.MODEL_HISTORY, pd.concat(histories, names=["model"]).reset_index(level=0),
              config=train_cfg)
    run.write(K.MODEL_COMPLETIONS, pd.concat(results, names=["model"]).reset_index(level=0),
              config=train_cfg)
    run.write(K.MODEL_EVAL, {"overall": overall.to_dict("records"),
                             "by_family": by_family.to_dict("records"),
                             "reasoning_minus_base": dict(zip(("diff", "ci_low", "ci_high"), diff)),
                             "tl_max_logit_diff": float(max_diff)}, config=train_cfg)

# %% [markdown]
# **Summary.** The toy reasoning model solves held-out problems by writing traces, and beats the
# base model trained on the same problems without them; TransformerLens and transformers agree
# on its logits to float32 precision. Notebook 03 trains a sparse autoencoder on its residual
# stream.
