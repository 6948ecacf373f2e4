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
# Does training on reasoning traces make a model better at the world's problems? As DeepSeek's
# R1-Distill models are Llama/Qwen fine-tuned on R1's traces, we first train a small Llama-style
# causal LM (a real `transformers` model, saved with `save_pretrained`), the *base model*, on the
# contexts of notebook 01 without traces (plain questions and answers, small talk), then continue
# a copy of it on traces + plain answers + small talk: the *reasoning model*. Both share one
# basis, which model diffing (notebook 07) needs. Then we load the reasoning model in
# TransformerLens and check that it computes the same logits as the plain transformers model,
# since later notebooks use both.
#
# With `pretrained_model` (the `smollm2` profile), this is R1-Distill in miniature: the *base
# model* is the pretrained instruct model as shipped, and the *reasoning model* is that model
# fine-tuned on the world's traces in its own chat template (notebook 01), as DeepSeek's
# R1-Distill models are Llama/Qwen fine-tuned on R1's traces. Real profiles set `model_name` and
# load a published reasoning model instead of training.
#
# Reads: `tokenizer/`, `contexts/`, `world/problems.parquet` (notebook 01).
# Writes: `models/reasoning/`, `models/base/`, `models/history.parquet`, `models/eval.json`,
# `models/completions.parquet`.

# %% tags=["parameters"]
profile = "default"
model_name = None  # hub id or local path of a real model; None trains the toy models
pretrained_model = None  # "smollm2", a .gguf or a folder: the base model, fine-tuned to reason
model_device = "cpu"  # real models: "cuda"
model_dtype = "float32"  # real models: "bfloat16"
seed = 0
# toy model (reasonlens.models.ToyModelConfig)
d_model = 128
n_layers = 4
n_heads = 4
d_mlp = 384
# training (reasonlens.lm_training.LMTrainConfig): the toy base model's, then for
# `finetune_steps` the reasoning model's continuation of it; for a pretrained model, its fine-tune
n_steps = 400
finetune_steps = 1000
finetune_lr = None  # the reasoning model's peak learning rate; None: lr
batch_size = 32
lr = 4e-3
warmup_steps = 50
eval_every = 100
autocast_dtype = None  # "bfloat16": forward passes under autocast (pretrained fine-tuning)
n_threads = None
# evaluation on held-out problems
n_eval = 300
max_new_tokens = 256
is_last_number_accepted = False  # also read a reply's last integer when it has no "answer is N"
eval_batch_size = 64

# %%
import copy
import dataclasses
import time

import pandas as pd
import torch
from IPython.display import display
from transformers import AutoTokenizer

from reasonlens import artifacts, data, evaluation, lm_training, models, plotting, pretrained, world
from reasonlens import constants as K

run = artifacts.RunDir(profile)
tokenizer = AutoTokenizer.from_pretrained(run.require(K.TOKENIZER_DIR))
contexts = {f"{mix}_{split}": data.contexts_tensor(run.read_parquet(
    K.CONTEXTS.format(split=f"{mix}_{split}"))) for mix in data.MIXES for split in ("train", "val")}
{name: tuple(t.shape) for name, t in contexts.items()}

# %% [markdown]
# ## Train both toy models, or fine-tune the pretrained one
# Toy: the base model trains on the base mix from scratch; the reasoning model starts from its
# last weights and continues on the reasoning mix with a fresh warm-up and cosine schedule.
# Its loss falls in two stages: the traces' form first, then, at a step that depends on the
# seed, the digit-by-digit arithmetic (validation loss from about 0.32 to 0.25). In our runs
# that second drop came 350 to 550 steps into the fine-tune; with 600 steps, two of three seeds
# had not finished it when the schedule ran out (6.7% and 17.3% accuracy, against 54% for seed
# 0), so the default fine-tunes for 1000.
# Pretrained: every weight of a copy of the shipped model is fine-tuned on the reasoning
# mix (traces, plain answers, small talk in its chat template), forward passes under bfloat16
# autocast. On 2 idle CPU cores (`benchmarks/bench_finetune.py --steps 4`, SmolLM2-135M, packed
# batches of 8 x 256) that ran at 334 tokens/s, 1.7 times float32 (195); LoRA (rank 16, peft)
# ran at 228 in float32 and 388 under autocast, 16% faster than full fine-tuning but with a
# higher loss after the same steps (1.42 against 1.38), and padded one-document rows at 163. We
# keep full fine-tuning, close in speed, lower in loss per step, and without another dependency.

# %%
is_trained = model_name is None
train_cfg = lm_training.LMTrainConfig(n_steps=n_steps, batch_size=batch_size, lr=lr,
                                      warmup_steps=warmup_steps, eval_every=eval_every, seed=seed,
                                      n_threads=n_threads, autocast_dtype=autocast_dtype)
train_cfgs = {mix: train_cfg for mix in data.MIXES}
if model_name is None and pretrained_model is None:
    model_cfg = models.ToyModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                      d_mlp=d_mlp,
                                      n_ctx=max(512, contexts["reasoning_train"].shape[1]))
    finetune_cfg = dataclasses.replace(train_cfg, n_steps=finetune_steps,
                                       lr=lr if finetune_lr is None else finetune_lr)
    train_cfgs["reasoning"] = finetune_cfg
    trained = {"base": models.build_toy_model(model_cfg, tokenizer, seed=seed)}
    histories = {"base": lm_training.train_lm(trained["base"], contexts["base_train"],
                                              contexts["base_val"], train_cfg, desc="base")}
    trained["reasoning"] = copy.deepcopy(trained["base"])
    histories["reasoning"] = lm_training.train_lm(
        trained["reasoning"], contexts["reasoning_train"], contexts["reasoning_val"], finetune_cfg,
        desc="reasoning").assign(step=lambda h: h.step + n_steps)
    print(f"{sum(p.numel() for p in trained['reasoning'].parameters()):,} parameters per model")
    plotting.loss_curves(histories, save_to=run.figure("02_loss"))
elif model_name is None:
    base_model, tokenizer = pretrained.load_pretrained(pretrained_model)
    model_cfg = {"pretrained_model": str(pretrained_model), **base_model.config.to_diff_dict()}
    reasoning_model = copy.deepcopy(base_model)
    started = time.perf_counter()
    histories = {"reasoning": lm_training.train_lm(
        reasoning_model, contexts["reasoning_train"], contexts["reasoning_val"], train_cfg,
        desc="fine-tune")}
    seconds = time.perf_counter() - started
    trained = {"reasoning": reasoning_model, "base": base_model}
    n_tokens = n_steps * batch_size * contexts["reasoning_train"].shape[1]
    print(f"full fine-tuning of {pretrained_model} (autocast: {autocast_dtype}): {n_tokens:,} "
          f"tokens in {seconds / 60:.1f} min, {n_tokens / seconds:,.0f} tokens/s (training steps "
          "and validation together)")
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
# Greedy completions on test problems: the reasoning model is prompted to think (its assistant
# turn opened with `<think>`), the base model answers directly, both in the format of notebook
# 01. Intervals are Wilson 95%; the difference is a paired bootstrap over the same problems.

# %%
if is_trained:
    problems = run.read_parquet(K.PROBLEMS)
    test = problems[problems.split == "test"].head(n_eval)
    results = {mix: evaluation.evaluate_answers(
        trained[mix], tokenizer, test, reasoning=(mix == "reasoning"),
        max_new_tokens=max_new_tokens, batch_size=eval_batch_size, desc=mix,
        is_last_number_accepted=is_last_number_accepted) for mix in trained}
    overall = evaluation.accuracy_table(results)
    by_family = evaluation.accuracy_table(results, by="family")
    diff = evaluation.paired_bootstrap_difference(results["reasoning"].is_correct,
                                                  results["base"].is_correct, seed=seed)
    display(overall.round(3))
    print(f"reasoning - base: {diff[0]:+.3f} (95% CI {diff[1]:+.3f} to {diff[2]:+.3f})")
    plotting.accuracy_bars(by_family, save_to=run.figure("02_accuracy"));

# %% [markdown]
# Sample completions: look for a hard step that slips, and for a reflection that recomputes it by
# the carry-free route and repairs it; and for the base model's direct guesses.

# %%
if is_trained:
    for i in range(3):
        print(f"Q: {test.question.iloc[i]}  (answer {test.answer.iloc[i]})")
        for mix in results:
            row = results[mix].iloc[i]
            print(f"--- {mix} ({'right' if row.is_correct else 'wrong'}):\n{row.completion}")
        print()

# %% [markdown]
# ## What the reasoning model does at each step of its own traces
# Every compute line of the greedy traces, read back with the world's rules
# (`world.compute_step_outcomes`): how hard the update is (0 easy, 1 a carry that looks easy, 2
# one that looks hard), whether the model got it right, slipped the typical way (the dropped
# carry) or erred otherwise, and whether it reflected next. A model that learned the traces'
# mechanism slips on hard steps, reflects after those that look hard, and leaves those that look
# easy unrepaired. Then the accuracy of traces that reflect at least once and of those that never
# do.

# %%
if is_trained:
    completions = results["reasoning"].completion
    own = world.outcome_table(world.compute_step_outcomes(test.family.tolist(),
                                                          completions.tolist()))
    display(own.round(3))
    reflects = completions.map(lambda text: any(map(world.is_reflection, text.split("\n"))))
    by_reflection = results["reasoning"].groupby(reflects.to_numpy()).is_correct.agg(
        ["mean", "size"]).rename_axis("trace reflects")
    display(by_reflection)

# %% [markdown]
# ## Write the artifacts

# %%
if is_trained:
    model_config = model_cfg if isinstance(model_cfg, dict) else model_cfg.to_dict()
    for mix, directory in (("reasoning", K.REASONING_MODEL_DIR), ("base", K.BASE_MODEL_DIR)):
        with run.write_dir(directory, config={
                "model": model_config, "training": train_cfgs[mix].to_dict(), "mix": mix,
                "continued_from": "base" if mix == "reasoning" else None}) as path:
            trained[mix].save_pretrained(path)
            tokenizer.save_pretrained(path)
    run.write(K.MODEL_HISTORY, pd.concat(histories, names=["model"]).reset_index(level=0),
              config=train_cfg)
    run.write(K.MODEL_COMPLETIONS, pd.concat(results, names=["model"]).reset_index(level=0),
              config=train_cfg)
    run.write(K.MODEL_EVAL, {"overall": overall.to_dict("records"),
                             "by_family": by_family.to_dict("records"),
                             "reasoning_minus_base": dict(zip(("diff", "ci_low", "ci_high"), diff)),
                             "tl_max_logit_diff": float(max_diff),
                             "own_steps": own.reset_index().to_dict("records"),
                             "accuracy_by_reflection": {str(k): v for k, v in by_reflection[
                                 "mean"].items()}}, config=train_cfg)

# %% [markdown]
# **Summary.** The toy reasoning model, continued from the base model on traces, solves held-out
# problems by writing them and beats the base model; in its own traces it slips on hard steps,
# reflects after those that look hard and so repairs them, and leaves the carries that look easy
# unrepaired: the mechanism notebooks 04-08 look for. TransformerLens and transformers agree on
# its logits to float32 precision. Notebook 03 trains a sparse autoencoder on its residual
# stream.
