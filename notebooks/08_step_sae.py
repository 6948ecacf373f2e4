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
# # 8. Step-level SAE: what does a whole reasoning step add?
#
# Yang et al. (2026, arXiv 2603.03031) encode one reasoning step *given its context* into a
# sparse latent: an encoder LM reads `context <sep> step <eos>`, a linear map and a ReLU give a
# latent that is L2-normalised and whose L1 norm is pulled toward a target, a projection turns it
# into soft-prefix vectors, and a decoder LM that also sees the context must reproduce the step.
# The context is free, so the bottleneck keeps what the step *adds*. Phase 2 fits a Gaussian head
# that predicts the latent from the context alone. On the synthetic world every step has
# ground-truth labels, so we can ask: do linear probes on the latents read off step correctness,
# length and first token better than class statistics and better than a token-level SAE's pooled
# features? Do N2G patterns explain the latents? Does weighting sampled solutions by the probe's
# p(correct) beat majority voting?
#
# Reads: the world's steps and problems (01), the toy reasoning model (02), the token-level SAE
# (03). Writes: `step_sae/` (model, checkpoints, history, eval, probes, patterns, voting).
#
# **Two modes.** `step_mode = "ours"` (the default) uses the choices we tuned on the toy world;
# `step_mode = "reference"` uses the rules of the authors' code (Miaow-Lab/SSAE): no pre-encoder
# bias, an L1 weight that adapts every 100 micro-batches, noise on the latent, a ReLU projection,
# the soft prefix before the context, 10% of step tokens masked in training, AdamW (0.9, 0.95)
# with a cosine schedule and summed gradient accumulation, and a trainable context encoder for
# phase 2 (`StepSAEConfig.reference`, `StepSAETrainConfig.reference`; their docstrings cite file
# and line). A mode sets the rules; the sizes and rates below apply in both.
#
# **Real models.** The paper encodes with Qwen2.5-0.5B on GSM8K, Numina and OpenCodeInstruct
# step data: `profiles/step-sae-qwen2.5-0.5b.yaml` is that configuration (`step_model_name` is
# a hub id or a local `save_pretrained` directory; nothing is fetched unless the notebook runs).
# `step_data_source: gsm8k`, `numina` or `opencode` reads `step_jsonl_path` with the reference's
# own step split and token limits (`step_sae.readers`); `jsonl` reads a GSM8K-style file our way
# (`{"question", "answer"}` per line, steps on separate lines, `#### <final answer>` last). Such
# data has no correctness labels, so the probes cover length and first token; set
# `step_token_sae_baseline: false` unless the notebook-03 SAE was trained on the same model,
# `step_vote_problems: 0` (voting needs the world's verifier), and `model_device: cuda`. Phase 1
# shards over GPUs with `torchrun --nproc_per_node N -m reasonlens.step_sae.distributed`.

# %% tags=["parameters"]
profile = "default"
model_name = None  # the reasoning model of notebook 02 (sampled from for voting)
model_device = "cpu"
step_model_name = None  # LM the SAE's encoder and decoder start from; None: model_name / toy
step_data_source = "synthetic"  # "synthetic", "jsonl" (GSM8K-style), or the reference's
#                                  readers: "gsm8k", "numina", "opencode"
step_jsonl_path = None
step_mode = "ours"  # "ours" or "reference" (the rules of Miaow-Lab/SSAE)
step_mask_index_shift = True  # reference mode: reproduce the reference's masking index shift
step_n_train = 20000  # training steps (examples) for the SAE
step_n_probe_train = 4000  # of those, steps the probes are fitted on
step_n_test = 2000  # held-out steps (test split)
step_n_latents = 256  # the reference's is d_model * step_n_prefix (896 for Qwen2.5-0.5B)
step_n_prefix = 1  # soft-prefix vectors: the paper's sparsity factor
step_l1_target = 3.0  # nine equally active latents have an L1 norm of 3
step_l1_coefficient = 0.01  # ours: weight of (L1 - target)^2; reference: the adaptive start
step_l1_warmup_steps = 300  # ours: the penalty ramps up over these steps
step_max_context_tokens = 48  # the reference's data sources use the reference's own limits
step_max_step_tokens = 32
step_n_steps = 1000  # optimiser steps (ignored when step_n_epochs is set)
step_n_epochs = None  # passes over the training steps; warm-up and decay then count epochs
step_batch_size = 32  # steps per micro-batch
step_grad_accum_steps = 1  # micro-batches per optimiser step (gradients summed)
step_lr = 3e-3  # the bottleneck: pre-bias, encoder map, projection
step_lm_lr = 3e-4  # the encoder and decoder LMs (None: step_lr, one rate as the reference)
step_warmup_steps = 50
step_min_lr = 0.0  # reference mode: where the cosine decay ends
step_lr_decay_steps = None  # reference mode: where it ends (None: at the last step)
step_checkpoint_every = 100
step_head_n_steps = 500
step_head_lr = 2e-3
step_n_decoded = 3  # steps decoded from their own, a sampled and edited latents
step_decode_max_new_tokens = 32
step_n_length_bins = 3
step_n_first_tokens = 8
step_token_sae_baseline = True
step_n2g_latents = 8
step_n2g_examples = 12
step_keep_fraction = 0.5
step_n2g_anchor = "both"  # "end": suffix patterns (the paper's), "start": prefixes, "both"
step_vote_problems = 300  # held-out problems to vote on (0: skip voting)
step_vote_k = 8  # sampled solutions per problem
step_vote_temperature = 0.6  # at 1.0 the toy's samples are mostly wrong
step_vote_tau = 1.0
step_vote_max_new_tokens = 160
step_n_examples_shown = 8

# %%
import numpy as np
import pandas as pd
from IPython.display import display
from sae_lens import SAE
from transformers import AutoConfig, AutoTokenizer

from reasonlens import artifacts, evaluation, models, plotting
from reasonlens import constants as K
from reasonlens.step_sae import data as step_data
from reasonlens.step_sae import inference, n2g, probes, readers, training, voting
from reasonlens.step_sae.model import StepSAE, StepSAEConfig
from reasonlens.world import chat_format

run = artifacts.RunDir(profile)
lm_path = step_model_name or run.model_path(model_name)
tokenizer = AutoTokenizer.from_pretrained(lm_path)
world_format = chat_format(AutoTokenizer.from_pretrained(run.require(K.TOKENIZER_DIR))
                           if step_data_source == "synthetic" else None)  # as notebook 01 wrote
if step_mode not in ("ours", "reference"):
    raise ValueError(f"step_mode={step_mode!r} is unknown; use 'ours' or 'reference'.")
if step_data_source == "synthetic":
    steps, problems = run.read_parquet(K.STEPS), run.read_parquet(K.PROBLEMS)
    train_table = step_data.world_step_table(steps, problems, ["train"], world_format)
    test_table = step_data.world_step_table(steps, problems, ["test"], world_format)
elif step_data_source in ("jsonl", *readers.FORMATS):
    table = (step_data.read_jsonl_steps(step_jsonl_path) if step_data_source == "jsonl"
             else readers.read_steps(step_jsonl_path, step_data_source))
    test_ids = table.problem_id.drop_duplicates().sample(frac=0.1, random_state=0)
    train_table = table[~table.problem_id.isin(test_ids)]
    test_table = table[table.problem_id.isin(test_ids)]
else:
    raise ValueError(f"step_data_source={step_data_source!r} is unknown; use 'synthetic', "
                     f"'jsonl' or one of {list(readers.FORMATS)}.")
train_table = train_table.sample(min(step_n_train, len(train_table)), random_state=0)
test_table = test_table.sample(min(step_n_test, len(test_table)), random_state=0)
print(f"{len(train_table):,} training steps, {len(test_table):,} held-out steps; LM {lm_path}")

# %% [markdown]
# ## Phase 1: train the autoencoder
# Both LMs start from the same causal LM (a `<sep>` token is added when the tokenizer has none).
# Training checkpoints into the run directory, so an interrupted run resumes where it stopped.
# The reference's data sources keep the reference's own token limits (which end of the context
# is kept differs by data set).
#
# The bottleneck learns at `step_lr`, the two pretrained LMs at a rate 10 times lower
# (`step_lm_lr`). At one shared rate the decoder learns to ignore the soft prefix while the
# bottleneck is still noise: in our toy runs the latent then carried nothing for hundreds of steps
# (the step's own latent and a shuffled one reconstructed equally well). Watch the gap between
# *own* and *shuffled* below; it is the evidence that the latent encodes the step.

# %%
sizes = dict(n_latents=step_n_latents, n_prefix=step_n_prefix, l1_target=step_l1_target,
             l1_coefficient=step_l1_coefficient, max_context_tokens=step_max_context_tokens,
             max_step_tokens=step_max_step_tokens)
cfg = (StepSAEConfig.reference(AutoConfig.from_pretrained(lm_path).hidden_size,
                               mask_index_shift=step_mask_index_shift, **sizes)
       if step_mode == "reference" else StepSAEConfig(**sizes))
sae = StepSAE.build(lm_path, tokenizer, cfg, seed=0)
limits = ((10**9, 10**9) if step_data_source in readers.FORMATS
          else (cfg.max_context_tokens, cfg.max_step_tokens))
train_examples, test_examples = (step_data.tokenize_steps(t, tokenizer, *limits)
                                 for t in (train_table, test_table))
if step_data_source in readers.FORMATS:
    train_examples, test_examples = (step_data.StepExamples(ex.table, *readers.apply_token_limits(
        ex.context_ids, ex.step_ids, step_data_source)) for ex in (train_examples, test_examples))
epoch = max(1, len(train_examples) // (step_batch_size * step_grad_accum_steps))
rates = dict(n_steps=step_n_epochs * epoch if step_n_epochs else step_n_steps,
             schedule_unit_steps=epoch if step_n_epochs else 1,
             batch_size=step_batch_size, grad_accum_steps=step_grad_accum_steps, lr=step_lr,
             lm_lr=step_lm_lr, warmup_steps=step_warmup_steps,
             checkpoint_every=step_checkpoint_every, head_n_steps=step_head_n_steps,
             head_lr=step_head_lr)
train_cfg = (training.StepSAETrainConfig.reference(
    min_lr=step_min_lr, lr_decay_steps=step_lr_decay_steps, **rates)
    if step_mode == "reference" else
    training.StepSAETrainConfig(l1_warmup_steps=step_l1_warmup_steps, **rates))
history = training.train_step_sae(sae, train_examples, train_cfg,
                                  checkpoint_dir=run.path(K.STEP_SAE_CHECKPOINTS_DIR),
                                  restart_if_changed=True)
history.tail(3)

# %% [markdown]
# ## Phase 2: predict the latent from the context
# A Gaussian head on the frozen encoder's hidden state at `<sep>` (before the step is read).

# %%
head_history = training.train_context_head(sae, train_examples, train_cfg)
head_history.tail(3)

# %% [markdown]
# ## Reconstruction quality and latent density
# Held-out loss per step token when the decoder gets the step's own latent, another step's
# latent, an all-zero latent (context only), or the phase-2 prediction. The gap between *own*
# and *shuffled* is what the latent carries about the step beyond its context.

# %%
recon = inference.reconstruction_metrics(sae, test_examples)
test_latents = inference.encode_steps(sae, test_examples)
density = inference.latent_density(test_latents)
display(recon.round(4))
print(f"L0 {(test_latents > 0).sum(1).mean():.1f} of {cfg.n_latents} latents per step; "
      f"L1 {np.abs(test_latents).sum(1).mean():.2f} (target {cfg.l1_target})")
plotting.step_sae_reconstruction(history, recon, save_to=run.figure("08_reconstruction"))
plotting.latent_density_histogram(density, save_to=run.figure("08_latent_density"));

# %% [markdown]
# ## Decoding from a latent
# A few held-out steps, each decoded greedily by the decoder LM (given the context) from its own
# latent, from a latent sampled from the phase-2 Gaussian (the context alone), with its most
# active latent set to 0 (*top_off*), and with the most often active other latent set as high as
# its top one (*up*). Where an edited decoding differs from *own*, that latent changes the step.

# %%
decodings = inference.step_decodings(sae, test_examples, tokenizer, step_n_decoded,
                                     max_new_tokens=step_decode_max_new_tokens)
display(decodings)

# %% [markdown]
# ## Probes: correctness, length and first token
# Logistic regressions fitted on training steps, scored on held-out ones, against the training
# class frequencies (*statistics*) and, as the token-level baseline, the notebook-03 SAE's
# features mean-pooled over the step's tokens. *encoder_state* probes the bottleneck's input, the
# encoder LM's dense hidden state at `<eos>`: what the sparse latent could have kept.

# %%
probe_cfg = probes.ProbeConfig(n_length_bins=step_n_length_bins,
                               n_first_tokens=step_n_first_tokens)
probe_examples = train_examples.subset(range(min(step_n_probe_train, len(train_examples))))
targets = probes.step_targets(probes.with_token_labels(probe_examples.table, tokenizer),
                             probes.with_token_labels(test_examples.table, tokenizer), probe_cfg)
feature_sets = {"step_sae": (inference.encode_steps(sae, probe_examples), test_latents),
                "encoder_state": tuple(inference.encode_steps(sae, ex, dense=True)
                                       for ex in (probe_examples, test_examples))}
if step_token_sae_baseline:
    token_model = models.load_hooked(run.model_path(model_name), backend="hf",
                                     device=model_device)
    token_sae = SAE.load_from_disk(str(run.require(K.SAE_DIR)), device=model_device)
    feature_sets["token_sae"] = tuple(
        probes.pooled_token_features(token_model, token_sae, ex)
        for ex in (probe_examples, test_examples))
probe_results = probes.probe_table(feature_sets, targets, probe_cfg)
display(probe_results.pivot(index="features", columns="task",
                            values=["accuracy", "auc", "loss"]).round(3))
plotting.probe_results(probe_results, save_to=run.figure("08_probes"));

# %% [markdown]
# ## N2G patterns of the most active latents
# A latent's *step effect* is its activation (before the L2 normalisation) with the step minus its
# activation with an empty step: what the step itself adds over the context. For the latents with
# the largest total effect, each top step gives the shortest step suffix that keeps the effect
# above threshold (half the mean effect over the top steps), with wildcards where any of the
# frequent tokens would do. The paper mines suffixes; with `step_n2g_anchor = "both"` each top
# step also tries the shortest prefix and keeps the shorter pattern, because latents cued by a
# step's opening word ("Maybe", "Hmm,") otherwise get suffixes as long as the whole step. A
# pattern that is all wildcards (the step's length, not its tokens, carried the effect) explains
# nothing and is counted apart (`n_tokenless`). Precision and recall are measured on the held-out
# steps.

# %%
n2g_cfg = n2g.N2GConfig(n_latents=step_n2g_latents, n_examples=step_n2g_examples,
                        keep_fraction=step_keep_fraction, anchor=step_n2g_anchor)
probe_effects = n2g.step_effects(sae, probe_examples)
patterns = n2g.mine_patterns(sae, probe_examples, probe_effects, n2g_cfg, tokenizer)
test_effects = n2g.step_effects(sae, test_examples)
pattern_eval = n2g.evaluate_patterns(patterns, test_examples, test_effects)
shown_patterns = patterns[patterns.n_tokens > 0].sort_values(["latent_idx", "n_sources"],
                                                             ascending=[True, False])
display(shown_patterns.groupby("latent_idx").head(3)[["latent_idx", "anchor", "pattern_text",
                                                      "n_sources", "example"]])
display(pattern_eval.round(3))

# %% [markdown]
# ## Probe-guided weighted voting
# k sampled solutions per held-out problem; each votes for its answer with weight = mean over
# its steps of p(correct)^tau from the correctness probe on the step latents.

# %%
if step_vote_problems and "correctness" in targets:
    lm, lm_tokenizer = models.load_hf_model(run.model_path(model_name), device=model_device)
    vote_problems = problems[problems.split == "test"].head(step_vote_problems)
    vote_cfg = voting.VotingConfig(n_samples=step_vote_k, temperature=step_vote_temperature,
                                   tau=step_vote_tau, max_new_tokens=step_vote_max_new_tokens)
    greedy = evaluation.evaluate_answers(lm, lm_tokenizer, vote_problems, reasoning=True,
                                         max_new_tokens=step_vote_max_new_tokens)
    solutions = voting.sample_solutions(lm, lm_tokenizer, vote_problems, vote_cfg)
    solution_steps = step_data.tokenize_steps(
        step_data.trace_step_table(solutions, solutions.completion,
                                   chat_format(lm_tokenizer)), tokenizer,
        cfg.max_context_tokens, cfg.max_step_tokens)
    correctness_probe = probes.fit_probe(feature_sets["step_sae"][0], targets["correctness"][0],
                                         probe_cfg)
    p_correct = correctness_probe.predict_proba(inference.encode_steps(sae, solution_steps))[
        :, list(correctness_probe.classes_).index(True)]
    step_owner = solution_steps.table.solution_idx.to_numpy()
    weights = voting.solution_weights(len(solutions), step_owner, p_correct, vote_cfg.tau)
    vote_table, vote_diff = voting.voting_table(vote_problems, greedy, solutions, weights)
    display(vote_table.round(3))
    print("weighted - majority: {difference:+.3f} [{ci_low:+.3f}, {ci_high:+.3f}]".format(
        **vote_diff))
    pass_at_k = solutions.groupby("problem_id").is_correct.any().mean()
    vote_auc = voting.weight_auc(solutions, weights)
    print(f"samples correct {solutions.is_correct.mean():.3f}; some sample correct (the ceiling "
          f"of any vote) {pass_at_k:.3f}; AUC of the weights for correct samples {vote_auc:.3f}")
    plotting.voting_bars(vote_table, save_to=run.figure("08_voting"))

# %% [markdown]
# How the weighted vote depends on tau. Tau is read off the same problems here, so this table
# describes; it does not select.

# %%
if step_vote_problems and "correctness" in targets:
    taus = voting.tau_sweep(vote_problems, solutions, len(solutions), step_owner, p_correct,
                            [0.5, 1, 2, 4, 8, 16])
    display(taus.round(3))

# %% [markdown]
# ## Example steps, their top latents and those latents' patterns
# One step of each kind in turn (when the data has kinds), with the latents the step itself
# drives most (largest step effect) and those latents' mined patterns.

# %%
examples_shown = n2g.example_table(test_examples, test_effects, patterns, step_n_examples_shown,
                                   by="kind")
display(examples_shown)
plotting.text_table(examples_shown, col_widths=[0.36, 0.07, 0.17, 0.4],
                    save_to=run.figure("08_examples"));

# %% [markdown]
# ## Reading the results
# - **Reconstruction.** The gap between the *own* and *shuffled* rows is what the latent carries
#   about the step beyond its context; *zero* shows how much the trained decoder has come to rely
#   on it. The phase-2 row shows how much of the latent the context alone predicts.
# - **Decoding.** When *own* reproduces the step, the latent and context suffice to rebuild it;
#   *sampled* shows what the context alone suggests, and the edits show what single latents do.
# - **Probes.** Length and first token are what the decoder needs to reconstruct a step, so the
#   latent must carry them; correctness is not needed for reconstruction, and is the question.
#   Read the step SAE's AUC against the statistics baseline (0.5 by construction) and against the
#   token-level SAE pooled over the step.
# - **Voting.** Weighting can only beat majority voting when the weights rank correct samples
#   above wrong ones: the AUC of the weights says whether they do, and the share of problems with
#   some correct sample is the ceiling of any vote.

# %% [markdown]
# ## Write the artifacts

# %%
with run.write_dir(K.STEP_SAE_DIR, config=cfg) as tmp:
    sae.save(tmp)
run.write(K.STEP_SAE_HISTORY, pd.concat([history.assign(phase=1), head_history.assign(phase=2)]),
          config=train_cfg)
run.write(K.STEP_SAE_EVAL, {"reconstruction": recon.to_dict("records"),
                            "l0": float((test_latents > 0).sum(1).mean()),
                            "n_dead": int((density == 0).sum()),
                            "context_head_nll": float(head_history.nll.tail(20).mean()),
                            "decodings": decodings.to_dict("records")},
          config=cfg)
run.write(K.STEP_PROBES, probe_results, config=probe_cfg)
run.write(K.STEP_PATTERNS, patterns, config=n2g_cfg)
run.write(K.STEP_PATTERN_EVAL, pattern_eval, config=n2g_cfg)
if step_vote_problems and "correctness" in targets:
    run.write(K.STEP_VOTING, {"table": vote_table.to_dict("records"),
                              "weighted_minus_majority": vote_diff,
                              "sample_accuracy": float(solutions.is_correct.mean()),
                              "pass_at_k": float(pass_at_k), "weight_auc": vote_auc,
                              "tau_sweep": taus.to_dict("records")}, config=vote_cfg)
