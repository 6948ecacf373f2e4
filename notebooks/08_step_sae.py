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
# that predicts the latent from the context alone. Then: do probes on the latents read off step
# correctness, length and first token better than class statistics and better than a token-level
# SAE? Do N2G patterns explain the latents? Does weighting sampled solutions by the probe's
# p(correct) beat majority voting?
#
# Reads: the world's steps and problems (01), the toy reasoning model (02), the token-level SAE
# (03). Writes: `step_sae/<mode>/` (model, checkpoints, history, eval, patterns, labels, voting)
# and `step_sae/probes.parquet` (both modes).
#
# **Two modes, side by side.** Each entry of `step_modes` trains its own step SAE and analyses
# it by its own rules, and every table below shows the modes next to each other. *Reference* is
# what the authors' released code does; *ours* is this project's own design, made and tuned on the
# toy world (where the paper's text is silent or differs from the code, neither mode is "the
# paper"; the docstrings say which rule comes from where).
#
# | | `"ours"` | `"reference"` (the authors' code, Miaow-Lab/SSAE) |
# |---|---|---|
# | training | pre-encoder bias, squared pull of L1 toward the target, GELU projection, prefix right before the step (after `<sep>`) | no pre-bias, an L1 weight that adapts every 100 micro-batches, noise on the latent, ReLU projection, prefix before the context, 10% of step tokens masked, AdamW (0.9, 0.95) with a cosine schedule, a trainable context encoder for phase 2 |
# | probes | logistic regressions on the world's ground truth (correct, length bins, top first tokens) | an MLP (LayerNorm, ReLU, dropout) with a validation-chosen checkpoint; correctness = the SSAE's greedy reconstruction of the step ends in the step's last number; length by regression; first token over the whole vocabulary |
# | N2G | step *effect* (latent with the step minus with an empty step), step-anchored suffix/prefix | normalised activation, shortest suffix of the whole sequence, pad wildcards, windowed matching, F1; labels from an LLM (or an offline stand-in) |
# | voting | k samples of the notebook-02 model, a probe fitted on the model's own sampled steps, labelled by the world's rules | k = 16 samples of the SSAE's own decoder from the raw question (T 0.7, top-p 0.9, top-k 200, repetition penalty 1.1), MLP probe, tau 0.8, last number with a float tolerance |
#
# Every reference rule cites its file and line in the docstrings of `StepSAEConfig.reference`,
# `StepSAETrainConfig.reference`, `step_sae.classifier`, `step_sae.n2g_reference` and
# `step_sae.answers_reference`. The sizes and rates below apply to both modes: on the toy, the
# reference mode trains with our CPU budget (500 steps of 32, 3e-3 for the bottleneck and 3e-4 for
# the LMs), not with its own one rate of 1e-6 for 30 epochs, which the Qwen profile keeps.
#
# **Real models.** The paper encodes with Qwen2.5-0.5B on GSM8K, Numina and OpenCodeInstruct
# step data: `profiles/step-sae-qwen2.5-0.5b.yaml` is that configuration (`step_model_name` is
# a hub id or a local `save_pretrained` directory; nothing is fetched unless the notebook runs).
# `step_data_source: gsm8k`, `numina` or `opencode` reads `step_jsonl_path` with the reference's
# own step split and token limits (`step_sae.readers`); `jsonl` reads a GSM8K-style file our way
# (`{"question", "answer"}` per line, steps on separate lines, `#### <final answer>` last). Such
# data has no ground-truth correctness, so *our* probes cover length and first token and our
# voting is skipped; the reference's probes and voting run (they need no ground truth). Set
# `step_token_sae_baseline: false` unless the notebook-03 SAE was trained on the same model, and
# `model_device: cuda`. Phase 1 shards over GPUs with
# `torchrun --nproc_per_node N -m reasonlens.step_sae.distributed`.

# %% tags=["parameters"]
profile = "default"
model_name = None  # the reasoning model of notebook 02 (sampled from for our voting)
model_device = "cpu"
step_model_name = None  # LM the SAE's encoder and decoder start from; None: model_name / toy
step_data_source = "synthetic"  # "synthetic", "jsonl" (GSM8K-style), or the reference's
#                                  readers: "gsm8k", "numina", "opencode"
step_jsonl_path = None
step_modes = ["ours", "reference"]  # trained and compared side by side
step_mask_index_shift = True  # reference mode: reproduce the reference's masking index shift
step_n_train = 20000  # training steps (examples) for the SAE
step_n_probe_train = 2000  # of those, steps the probes are fitted on
step_n_test = 1000  # held-out steps (test split)
step_n_latents = 256  # the reference's is d_model * step_n_prefix (896 for Qwen2.5-0.5B)
step_n_prefix = 1  # soft-prefix vectors: the paper's sparsity factor
step_l1_target = 3.0  # nine equally active latents have an L1 norm of 3
step_l1_coefficient = 0.01  # ours: weight of (L1 - target)^2
step_ref_l1_coefficient = 1e-4  # reference: the adaptive L1 weight's start (R: train.yaml:11)
step_l1_warmup_steps = 300  # ours: the penalty ramps up over these steps
step_max_context_tokens = 48  # the reference's data sources use the reference's own limits
step_max_step_tokens = 32
step_n_steps = 500  # optimiser steps (ignored when step_n_epochs is set)
step_n_epochs = None  # passes over the training steps; warm-up and decay then count epochs
step_batch_size = 32  # steps per micro-batch
step_grad_accum_steps = 1  # micro-batches per optimiser step (gradients summed)
step_lr = 3e-3  # the bottleneck: pre-bias, encoder map, projection
step_lm_lr = 3e-4  # the encoder and decoder LMs (None: step_lr, one rate as the reference)
step_warmup_steps = 50
step_min_lr = 0.0  # reference mode: where the cosine decay ends
step_lr_decay_steps = None  # reference mode: where it ends (None: at the last step)
step_checkpoint_every = 100  # 0: one checkpoint, at the end; only the latest one is kept
step_is_checkpointed = True  # False: no checkpoints (a run cut short starts over)
step_head_n_steps = 200
step_head_lr = 2e-3
step_n_decoded = 3  # steps decoded from their own, a sampled and edited latents
step_decode_max_new_tokens = 32
# our probes
step_n_length_bins = 3
step_n_first_tokens = 8
step_token_sae_baseline = True
# the reference's probes: "toy" (a 256-wide MLP, 30 epochs, checkpoint chosen on 20% of the
# training steps) or "reference" (1024 wide, 1000 epochs at lr 1e-6, chosen on the test steps)
step_classifier = "toy"
step_classifier_epochs = None  # overrides the epochs of either
# our N2G
step_n2g_latents = 8
step_n2g_examples = 12
step_keep_fraction = 0.5
step_n2g_anchor = "both"  # "end": suffix patterns (the paper's), "start": prefixes, "both"
# the reference's N2G (R: 50 latents, 20 patterns each, 500 evaluation steps)
step_ref_n2g_latents = 8
step_ref_n2g_patterns = 20
step_ref_n2g_max_candidates = 60  # top examples tried per latent (None: R, until 20 patterns)
step_ref_n2g_eval_steps = 500
step_label_url = None  # an OpenAI-compatible endpoint labels the latents (None: offline stand-in)
step_label_model = None  # its model name; the key comes from $OPENAI_API_KEY, never a profile
step_label_domain = "math"  # "math" or "code": the labelling prompt
# voting
step_vote_problems = 100  # held-out problems to vote on (0: skip voting)
step_vote_k = 8  # ours: sampled solutions per problem
step_vote_temperature = 0.6  # ours; at 1.0 the toy's samples are mostly wrong
step_vote_tau = 1.0  # ours
step_vote_max_new_tokens = 256  # ours
step_own_probe_problems = 100  # ours: validation problems whose sampled steps, labelled by the
# world's rules, train the voting probe on the model's own errors (0: the world's planted labels)
step_vote_probe_labels = "own"  # ours: which probe weights the vote ("own" or "world")
step_ref_vote_k = 16  # the reference's (its temperature, top-p, top-k, penalty and tau are fixed)
step_ref_vote_max_new_tokens = 256
step_n_examples_shown = 8

# %%
import numpy as np
import pandas as pd
from IPython.display import display
from sae_lens import SAE
from transformers import AutoConfig, AutoTokenizer

from reasonlens import artifacts, evaluation, models, plotting
from reasonlens import constants as K
from reasonlens.step_sae import answers_reference, classifier, inference, n2g, n2g_labels
from reasonlens.step_sae import data as step_data
from reasonlens.step_sae import n2g_reference, probes, readers, training, voting
from reasonlens.step_sae.model import StepSAE, StepSAEConfig
from reasonlens.world import chat_format

run = artifacts.RunDir(profile)
lm_path = step_model_name or run.model_path(model_name)
tokenizer = AutoTokenizer.from_pretrained(lm_path)
world_format = chat_format(AutoTokenizer.from_pretrained(run.require(K.TOKENIZER_DIR))
                           if step_data_source == "synthetic" else None)  # as notebook 01 wrote
if step_vote_probe_labels not in ("own", "world"):
    raise ValueError(f"step_vote_probe_labels={step_vote_probe_labels!r}: use 'own' (the "
                     "model's own sampled steps) or 'world' (the generator's planted labels).")
if not step_modes or set(step_modes) - {"ours", "reference"}:
    raise ValueError(f"step_modes={step_modes!r}: give one or both of 'ours' and 'reference'.")
if step_data_source == "synthetic":
    steps, problems = run.read_parquet(K.STEPS), run.read_parquet(K.PROBLEMS)
    train_table = step_data.world_step_table(steps, problems, ["train"], world_format)
    test_table = step_data.world_step_table(steps, problems, ["test"], world_format)
    vote_problems = problems[problems.split == "test"].head(step_vote_problems)
    own_probe_problems = problems[problems.split == "val"].head(step_own_probe_problems)
elif step_data_source in ("jsonl", *readers.FORMATS):
    table = (step_data.read_jsonl_steps(step_jsonl_path) if step_data_source == "jsonl"
             else readers.read_steps(step_jsonl_path, step_data_source))
    test_ids = table.problem_id.drop_duplicates().sample(frac=0.1, random_state=0)
    train_table = table[~table.problem_id.isin(test_ids)]
    test_table = table[table.problem_id.isin(test_ids)]
    # GSM8K's held-out problems, for the reference's voting (the last number of the final answer
    # is the truth); the first step's context is the question (readers.read_gsm8k_steps)
    vote_problems = (test_table[test_table.step_idx == 0].rename(columns={"final_answer": "answer"})
                     .assign(question=lambda t: t.context.str.rstrip())
                     [["problem_id", "question", "answer"]].head(step_vote_problems)
                     if step_data_source == "gsm8k" else None)
else:
    raise ValueError(f"step_data_source={step_data_source!r} is unknown; use 'synthetic', "
                     f"'jsonl' or one of {list(readers.FORMATS)}.")
train_table = train_table.sample(min(step_n_train, len(train_table)), random_state=0)
test_table = test_table.sample(min(step_n_test, len(test_table)), random_state=0)
print(f"{len(train_table):,} training steps, {len(test_table):,} held-out steps; LM {lm_path}; "
      f"modes {step_modes}")

# %% [markdown]
# ## Phase 1: train the autoencoders
# Both LMs start from the same causal LM (a `<sep>` token is added when the tokenizer has none).
# Training checkpoints into the run directory, so an interrupted run resumes where it stopped;
# only the latest checkpoint is kept (it holds both LMs and their optimiser state).
# The reference's data sources keep the reference's own token limits (which end of the context
# is kept differs by data set).
#
# In our mode the bottleneck learns at `step_lr`, the two pretrained LMs at a rate 10 times lower
# (`step_lm_lr`). At one shared rate the decoder learns to ignore the soft prefix while the
# bottleneck is still noise: in our toy runs the latent then carried nothing for hundreds of steps
# (the step's own latent and a shuffled one reconstructed equally well). Watch the gap between
# *own* and *shuffled* below; it is the evidence that the latent encodes the step.
#
# **Which reference rule decides, on the toy** (measured once on the default profile, not numbers
# of this run). `python benchmarks/ablate_step_sae.py` trains the reference mode, then the same
# with one rule at a time switched to ours, and our mode, in one process on the same data (300
# optimiser steps of 32 each, our two learning rates, held-out NLL per step token on 1,000
# steps). As the reference code runs, the step's own latent and another step's reconstruct
# equally well (0.181 both; 0.447 from an all-zero latent): the decoder uses the prefix, but as a
# constant that says nothing about the step. Our pre-bias, no latent noise, no token masking, our
# GELU projection or our squared L1 penalty change nothing (own = shuffled in each). Putting the
# prefix right before the step instead of at position 0 alone makes the latent carry the step
# (own 0.131, shuffled 0.273; ours: 0.133 and 0.325): the toy LM uses its first position as an
# attention sink and ignores what is written there. With one rate of 3e-4 for every parameter, as
# the reference trains, the prefix at position 0 still carries nothing (gap 0.000) and the prefix
# before the step still does (own 0.144, shuffled 0.222): the position decides, our two rates add
# to it. That latent is dense (89 of 256 active)
# because the reference's adaptive L1 weight, times 1.01 per 100 micro-batches, stays near its
# start of 1e-4 in so short a run; started at 0.01 instead, it collapses every step onto one
# latent. Below, the reference mode keeps every rule of its code, prefix at position 0.

# %%
sizes = dict(n_latents=step_n_latents, n_prefix=step_n_prefix, l1_target=step_l1_target,
             max_context_tokens=step_max_context_tokens, max_step_tokens=step_max_step_tokens)
d_model = AutoConfig.from_pretrained(lm_path).hidden_size
configs = {"ours": StepSAEConfig(l1_coefficient=step_l1_coefficient, **sizes),
           "reference": StepSAEConfig.reference(d_model, mask_index_shift=step_mask_index_shift,
                                                l1_coefficient=step_ref_l1_coefficient, **sizes)}
saes = {mode: StepSAE.build(lm_path, tokenizer, configs[mode], seed=0) for mode in step_modes}
limits = ((10**9, 10**9) if step_data_source in readers.FORMATS
          else (step_max_context_tokens, step_max_step_tokens))
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
train_configs = {
    "ours": training.StepSAETrainConfig(l1_warmup_steps=step_l1_warmup_steps, **rates),
    "reference": training.StepSAETrainConfig.reference(
        min_lr=step_min_lr, lr_decay_steps=step_lr_decay_steps, **rates)}
histories = {mode: training.train_step_sae(
    saes[mode], train_examples, train_configs[mode], restart_if_changed=True,
    checkpoint_dir=(run.path(K.STEP_SAE_CHECKPOINTS_DIR.format(mode=mode))
                    if step_is_checkpointed else None))
    for mode in step_modes}
pd.concat({mode: h.tail(2) for mode, h in histories.items()})

# %% [markdown]
# ## Phase 2: predict the latent from the context
# Ours: a Gaussian head on the frozen encoder's hidden state at `<sep>` (before the step is
# read). The reference's: a trainable copy of the LM reads `context <sep>` and feeds mean and
# variance MLPs.

# %%
head_histories = {mode: training.train_context_head(saes[mode], train_examples,
                                                    train_configs[mode])
                  for mode in step_modes}
pd.concat({mode: h.tail(2) for mode, h in head_histories.items()})

# %% [markdown]
# ## Reconstruction quality and latent density
# Held-out loss per step token when the decoder gets the step's own latent, another step's
# latent, an all-zero latent (context only), or the phase-2 prediction. The gap between *own*
# and *shuffled* is what the latent carries about the step beyond its context.

# %%
recon = pd.concat({mode: inference.reconstruction_metrics(saes[mode], test_examples)
                   for mode in step_modes}, names=["mode", None]).reset_index(0)
test_latents = {mode: inference.encode_steps(saes[mode], test_examples) for mode in step_modes}
density = {mode: inference.latent_density(z) for mode, z in test_latents.items()}
display(recon.pivot(index="condition", columns="mode",
                    values=["recon_loss", "token_accuracy"]).round(4))
sparsity = pd.DataFrame({mode: {"L0": (z > 0).sum(1).mean(), "L1": np.abs(z).sum(1).mean(),
                                "dead latents": int((density[mode] == 0).sum()),
                                "latents": z.shape[1]}
                         for mode, z in test_latents.items()})
display(sparsity.round(2))
for mode in step_modes:
    plotting.step_sae_reconstruction(histories[mode], recon[recon["mode"] == mode],
                                     save_to=run.figure(f"08_reconstruction_{mode}"))
    plotting.latent_density_histogram(density[mode],
                                      save_to=run.figure(f"08_latent_density_{mode}"));

# %% [markdown]
# ## Decoding from a latent
# A few held-out steps, each decoded greedily by the decoder LM (given the context) from its own
# latent, from a latent sampled from the phase-2 Gaussian (the context alone), with its most
# active latent set to 0 (*top_off*), and with the most often active other latent set as high as
# its top one (*up*). Where an edited decoding differs from *own*, that latent changes the step.

# %%
decodings = {mode: inference.step_decodings(saes[mode], test_examples, tokenizer,
                                            step_n_decoded,
                                            max_new_tokens=step_decode_max_new_tokens)
             for mode in step_modes}
for mode, table in decodings.items():
    print(mode)
    display(table)

# %% [markdown]
# ## Probes
# **Ours** (`step_sae.probes`): logistic regressions fitted on training steps, scored on held-out
# ones, against the training class frequencies (*statistics*) and, as the token-level baseline,
# the notebook-03 SAE's features mean-pooled over the step's tokens. *encoder_state* probes the
# bottleneck's input, the encoder LM's dense hidden state at `<eos>`: what the sparse latent
# could have kept. Each mode's SAE gets these probes, so our ground-truth correctness probe reads
# the reference SAE's latents too.
#
# **The reference's** (`probes.reference_probe_table`): correctness is whether the SSAE's greedy
# reconstruction of the step ends in the step's last number (an SSAE-internal label, not ground
# truth), length is a regression (MSE), first token a classification over the whole vocabulary
# (perplexity); an MLP per task; baselines the statistics of the labels, the *context-only* state
# (the LM reading the context without the step) and the token-level SAE and layer at the last
# *context* token (they never see the step). R labels the token-SAE baseline by the base model's
# own continuation; here every feature set answers the same question (the SSAE's labels).

# %%
probe_cfg = probes.ProbeConfig(n_length_bins=step_n_length_bins,
                               n_first_tokens=step_n_first_tokens)
probe_examples = train_examples.subset(range(min(step_n_probe_train, len(train_examples))))
targets = probes.step_targets(probes.with_token_labels(probe_examples.table, tokenizer),
                             probes.with_token_labels(test_examples.table, tokenizer), probe_cfg)
probe_latents = {mode: inference.encode_steps(saes[mode], probe_examples) for mode in step_modes}
feature_sets = {f"step_sae[{mode}]": (probe_latents[mode], test_latents[mode])
                for mode in step_modes}
feature_sets |= {f"encoder_state[{mode}]": tuple(inference.encode_steps(saes[mode], ex,
                                                                         dense=True)
                                                  for ex in (probe_examples, test_examples))
                 for mode in step_modes}
if step_token_sae_baseline:
    token_model = models.load_hooked(run.model_path(model_name), backend="hf",
                                     device=model_device)
    token_sae = SAE.load_from_disk(str(run.require(K.SAE_DIR)), device=model_device)
    feature_sets["token_sae"] = tuple(
        probes.pooled_token_features(token_model, token_sae, ex)
        for ex in (probe_examples, test_examples))
probe_results = probes.probe_table(feature_sets, targets, probe_cfg).assign(rules="ours")
display(probe_results.pivot(index="features", columns="task",
                            values=["accuracy", "auc"]).round(3))
plotting.probe_results(probe_results, save_to=run.figure("08_probes"));

# %%
if "reference" in step_modes:
    ref_sae = saes["reference"]
    classifier_cfg = (classifier.ReferenceClassifierConfig.reference
                      if step_classifier == "reference" else classifier.ReferenceClassifierConfig)(
        **({"n_epochs": step_classifier_epochs} if step_classifier_epochs else {}))
    ref_correct = tuple(probes.reconstruction_correctness(ref_sae, ex, tokenizer,
                                                          step_decode_max_new_tokens)
                        for ex in (probe_examples, test_examples))
    ref_targets = probes.reference_targets(
        *(probes.reference_step_labels(ex.table.step, tokenizer)
          for ex in (probe_examples, test_examples)), correctness=ref_correct)
    ref_features = {"step_sae[reference]": (probe_latents["reference"],
                                            test_latents["reference"]),
                    "context_only": tuple(inference.context_only_states(ref_sae, ex)
                                          for ex in (probe_examples, test_examples))}
    if step_token_sae_baseline:
        context_end = [probes.context_end_features(token_model, token_sae, ex)
                       for ex in (probe_examples, test_examples)]
        ref_features |= {"token_sae (context end)": tuple(c["sae_acts"] for c in context_end),
                         "layer (context end)": tuple(c["layer_acts"] for c in context_end)}
    ref_probe_results = probes.reference_probe_table(ref_features, ref_targets, classifier_cfg,
                                                     n_classes=len(tokenizer))
    print(f"reconstruction-correct steps (R's label): train {ref_correct[0].mean():.3f}, "
          f"test {ref_correct[1].mean():.3f}")
    display(ref_probe_results.pivot_table(index="features", columns=["task", "metric"],
                                          values="value", sort=False).round(3))
    probe_results = pd.concat([probe_results, ref_probe_results.assign(rules="reference")],
                              ignore_index=True)

# %% [markdown]
# ## N2G patterns
# **Ours.** A latent's *step effect* is its activation (before the L2 normalisation) with the
# step minus its activation with an empty step: what the step itself adds over the context. For
# the latents with the largest total effect, each top step gives the shortest step suffix that
# keeps the effect above threshold (half the mean effect over the top steps), with wildcards
# where any of the frequent tokens would do. With `step_n2g_anchor = "both"` each top step also
# tries the shortest prefix and keeps the shorter pattern, because latents cued by a step's
# opening word ("Maybe", "Hmm,") otherwise get suffixes as long as the whole step. A pattern that
# is all wildcards explains nothing and is counted apart (`n_tokenless`).
#
# **The reference's.** The latents with the largest summed normalised activation; for each, its
# examples in descending activation until `step_ref_n2g_patterns` distinct patterns: the
# shortest suffix of the whole `context <sep> step <eos>` sequence, encoded alone, that keeps at
# least half the activation, with wildcards where padding a token out keeps it; patterns match
# as a window anywhere in a sequence; precision, recall and F1 on the first held-out steps
# (active = activation > 0), per latent and micro-averaged. Each latent's report goes to a
# labeller: an LLM at `step_label_url` (the reference's JSON reply: label, description, top
# patterns, trigger texts) or, offline, a heuristic that lists the patterns' most frequent
# tokens and says that it is one.

# %%
patterns, pattern_evals, labels = {}, {}, {}
if "ours" in step_modes:
    n2g_cfg = n2g.N2GConfig(n_latents=step_n2g_latents, n_examples=step_n2g_examples,
                            keep_fraction=step_keep_fraction, anchor=step_n2g_anchor)
    probe_effects = n2g.step_effects(saes["ours"], probe_examples)
    patterns["ours"] = n2g.mine_patterns(saes["ours"], probe_examples, probe_effects, n2g_cfg,
                                         tokenizer)
    test_effects = n2g.step_effects(saes["ours"], test_examples)
    pattern_evals["ours"] = n2g.evaluate_patterns(patterns["ours"], test_examples, test_effects)
    shown_patterns = patterns["ours"][patterns["ours"].n_tokens > 0].sort_values(
        ["latent_idx", "n_sources"], ascending=[True, False])
    display(shown_patterns.groupby("latent_idx").head(3)[["latent_idx", "anchor",
                                                          "pattern_text", "n_sources",
                                                          "example"]])
    display(pattern_evals["ours"].round(3))
if "reference" in step_modes:
    ref_n2g_cfg = n2g.N2GConfig.reference(n_latents=step_ref_n2g_latents,
                                          n_patterns=step_ref_n2g_patterns,
                                          max_candidates=step_ref_n2g_max_candidates,
                                          n_eval_steps=step_ref_n2g_eval_steps)
    patterns["reference"], pattern_evals["reference"] = n2g_reference.reference_n2g(
        saes["reference"], probe_examples, test_examples, ref_n2g_cfg, tokenizer)
    labeller = (n2g_labels.LLMLabeller(step_label_url, step_label_model, step_label_domain)
                if step_label_url else n2g_labels.OfflineLabeller())
    labels["reference"] = n2g_labels.label_latents(patterns["reference"],
                                                   pattern_evals["reference"], labeller)
    display(pattern_evals["reference"].round(3))
    display(labels["reference"][["latent_idx", "label", "top_patterns", "labeller"]])

# %% [markdown]
# ## Probe-guided weighted voting
# k sampled solutions per held-out problem; each votes for its answer with weight = mean over
# its steps of p(correct)^tau. Ours: samples of the notebook-02 model in its chat format, the
# world's steps and answer parser, and a correctness probe on the step SAE's latents. That probe
# is fitted on the model's *own* sampled steps for `step_own_probe_problems` validation problems,
# each labelled by the world's rules (does every claim of the step hold?), so it learns the
# errors this model makes; the probe fitted on the generator's planted labels (the probes above)
# votes beside it as *ours (world labels)*. The reference's: samples
# of the SSAE's own decoder LM prompted with the raw question, its steps split as the reference
# splits them, the MLP correctness probe (trained on the reconstruction labels above), the last
# number compared with a tolerance of 1e-3.

# %%
votes = {}
if step_vote_problems and "ours" in step_modes and "correctness" in targets:
    lm, lm_tokenizer = models.load_hf_model(run.model_path(model_name), device=model_device)
    vote_cfg = voting.VotingConfig(n_samples=step_vote_k, temperature=step_vote_temperature,
                                   tau=step_vote_tau, max_new_tokens=step_vote_max_new_tokens)
    greedy = evaluation.evaluate_answers(lm, lm_tokenizer, vote_problems, reasoning=True,
                                         max_new_tokens=step_vote_max_new_tokens)
    sampled_steps = lambda sampled: step_data.tokenize_steps(  # noqa: E731
        step_data.trace_step_table(sampled, sampled.completion, chat_format(lm_tokenizer)),
        tokenizer, step_max_context_tokens, step_max_step_tokens)
    solutions = voting.sample_solutions(lm, lm_tokenizer, vote_problems, vote_cfg)
    solution_steps = sampled_steps(solutions)
    probe_data = {"world": (probe_latents["ours"], targets["correctness"][0])}
    if step_own_probe_problems and "family" in vote_problems:
        own_steps = sampled_steps(voting.sample_solutions(lm, lm_tokenizer, own_probe_problems,
                                                          vote_cfg))
        own_labels = own_steps.table.is_claim_correct
        own_steps = own_steps.subset(np.flatnonzero(own_labels.notna().to_numpy()))
        if own_labels.nunique() == 2:
            probe_data["own"] = (inference.encode_steps(saes["ours"], own_steps),
                                 own_steps.table.is_claim_correct.to_numpy(bool))
        print(f"own-step labels: {len(own_steps):,} steps with claims from "
              f"{len(own_probe_problems)} validation problems, "
              f"{(~own_labels.dropna()).sum():,} of them wrong"
              + ("" if "own" in probe_data else "; one class only, so no own-label probe"))
    solution_latents = inference.encode_steps(saes["ours"], solution_steps)
    for labels_from, (features, is_correct) in probe_data.items():
        correctness_probe = probes.fit_probe(features, is_correct, probe_cfg)
        p_correct = correctness_probe.predict_proba(solution_latents)[
            :, list(correctness_probe.classes_).index(True)]
        is_main = labels_from == step_vote_probe_labels or len(probe_data) == 1
        votes["ours" if is_main else f"ours ({labels_from} labels)"] = dict(
            cfg=vote_cfg, greedy=greedy, solutions=solutions, p_correct=p_correct,
            step_owner=solution_steps.table.solution_idx.to_numpy(),
            step_is_correct=solution_steps.table.get("is_claim_correct"),
            probe_labels=labels_from)
if step_vote_problems and "reference" in step_modes and vote_problems is not None:
    vote_cfg = voting.VotingConfig.reference(n_samples=step_ref_vote_k,
                                             max_new_tokens=step_ref_vote_max_new_tokens)
    greedy = voting.greedy_solutions(saes["reference"], tokenizer, vote_problems, vote_cfg)
    solutions = voting.sample_solutions(saes["reference"], tokenizer, vote_problems, vote_cfg)
    solution_table = answers_reference.solution_step_table(solutions)
    correctness_mlp = classifier.fit_classifier(probe_latents["reference"],
                                                ref_correct[0].astype(float), "correctness",
                                                classifier_cfg)
    logits = (correctness_mlp.outputs(inference.encode_steps(
        saes["reference"], answers_reference.solution_step_examples(solution_table,
                                                                    tokenizer)))[:, 0]
        if len(solution_table) else np.zeros(0))  # no sample stated a number
    votes["reference"] = dict(cfg=vote_cfg, greedy=greedy, solutions=solutions,
                              p_correct=1 / (1 + np.exp(-logits)),
                              step_owner=solution_table.solution_idx.to_numpy())
for mode, v in votes.items():
    v["weights"] = voting.solution_weights(len(v["solutions"]), v["step_owner"], v["p_correct"],
                                           v["cfg"].tau)
    v["table"], v["difference"] = voting.voting_table(vote_problems, v["greedy"],
                                                      v["solutions"], v["weights"],
                                                      rules=v["cfg"].rules)
    if mode in step_modes:
        plotting.voting_bars(v["table"], save_to=run.figure(f"08_voting_{mode}"))
if votes:
    display(pd.concat({mode: v["table"] for mode, v in votes.items()}, names=["mode", None])
            .droplevel(1).reset_index().round(3))
    vote_summary = pd.DataFrame({mode: {
        "weighted - majority": v["difference"]["difference"],
        "ci_low": v["difference"]["ci_low"], "ci_high": v["difference"]["ci_high"],
        "samples correct": v["solutions"].is_correct.mean(),
        # the share of problems with some correct sample: the ceiling of any vote
        "pass@k": v["solutions"].groupby("problem_id").is_correct.any().mean(),
        "AUC of the weights": voting.weight_auc(v["solutions"], v["weights"]),
        # does the probe recognise the model's own wrong steps? (the world checks their claims)
        "AUC on own steps": (voting.step_auc(v["p_correct"], v["step_is_correct"])
                             if v.get("step_is_correct") is not None else np.nan)}
        for mode, v in votes.items()})
    display(vote_summary.round(3))

# %% [markdown]
# How the weighted vote depends on tau. Tau is read off the same problems here, so this table
# describes; it does not select.

# %%
taus = {mode: voting.tau_sweep(vote_problems, v["solutions"], len(v["solutions"]),
                               v["step_owner"], v["p_correct"], [0.5, 0.8, 1, 2, 4, 8, 16],
                               rules=v["cfg"].rules)
        for mode, v in votes.items()}
if taus:
    display(pd.concat(taus, names=["mode", None]).droplevel(1).reset_index().round(3))

# %% [markdown]
# ## Example steps, their top latents and those latents' patterns
# One step of each kind in turn (when the data has kinds), with the latents the step itself
# drives most (largest step effect, our mode) and those latents' mined patterns.

# %%
if "ours" in step_modes:
    examples_shown = n2g.example_table(test_examples, test_effects, patterns["ours"],
                                       step_n_examples_shown, by="kind")
    display(examples_shown)
    plotting.text_table(examples_shown, col_widths=[0.36, 0.07, 0.17, 0.4],
                        save_to=run.figure("08_examples"));

# %% [markdown]
# ## Reading the results
# - **Reconstruction.** The gap between the *own* and *shuffled* rows is what the latent carries
#   about the step beyond its context; *zero* shows how much the trained decoder has come to rely
#   on it. The phase-2 row shows how much of the latent the context alone predicts. The modes
#   differ in many rules at once (see the table at the top), so a gap between them is the sum of
#   those choices at this budget, not the effect of any one.
# - **Probes.** Length and first token are what the decoder needs to reconstruct a step, so the
#   latent must carry them; correctness is not needed for reconstruction, and is the question.
#   Read our step SAE's AUC against the statistics baseline (0.5 by construction) and against the
#   token-level SAE pooled over the step. The reference's correctness label is whether the SSAE
#   reconstructs the step's number, which the latent is trained to carry: a high accuracy there
#   says the latent encodes the step's number, not that it knows whether the step is right.
# - **Voting.** Weighting can only beat majority voting when the weights rank correct samples
#   above wrong ones: the AUC of the weights says whether they do, and pass@k is the ceiling of
#   any vote. *AUC on own steps* asks it one level down: the world checks the claim of every step
#   the model sampled, and the AUC says whether the probe's p(correct) tells the model's own wrong
#   steps from its right ones (the probe was fitted on the generator's planted mistakes).

# %% [markdown]
# ## Write the artifacts

# %%
for mode in step_modes:
    with run.write_dir(K.STEP_SAE_DIR.format(mode=mode), config=configs[mode]) as tmp:
        saes[mode].save(tmp)
    run.write(K.STEP_SAE_HISTORY.format(mode=mode),
              pd.concat([histories[mode].assign(phase=1), head_histories[mode].assign(phase=2)]),
              config=train_configs[mode])
    run.write(K.STEP_SAE_EVAL.format(mode=mode), {
        "reconstruction": recon[recon["mode"] == mode].drop(columns="mode").to_dict("records"),
        "l0": float(sparsity[mode]["L0"]), "n_dead": int(sparsity[mode]["dead latents"]),
        "context_head_nll": float(head_histories[mode].nll.tail(20).mean()),
        "decodings": decodings[mode].to_dict("records")}, config=configs[mode])
    if mode in patterns:
        run.write(K.STEP_PATTERNS.format(mode=mode), patterns[mode])
        run.write(K.STEP_PATTERN_EVAL.format(mode=mode), pattern_evals[mode])
    if mode in labels:
        run.write(K.STEP_LABELS.format(mode=mode), labels[mode])
    if mode in votes:
        summary = vote_summary[mode]
        run.write(K.STEP_VOTING.format(mode=mode), {
            "table": votes[mode]["table"].to_dict("records"),
            "weighted_minus_majority": float(votes[mode]["difference"]["difference"]),
            "weighted_minus_majority_ci": [float(votes[mode]["difference"]["ci_low"]),
                                           float(votes[mode]["difference"]["ci_high"])],
            "sample_accuracy": float(summary["samples correct"]),
            "pass_at_k": float(summary["pass@k"]),
            "weight_auc": float(summary["AUC of the weights"]),
            "own_step_auc": float(summary["AUC on own steps"]),
            "probe_labels": votes[mode].get("probe_labels", "reference"),
            "other_probes": {v["probe_labels"]: {
                "weighted_minus_majority": float(v["difference"]["difference"]),
                "weighted_minus_majority_ci": [float(v["difference"]["ci_low"]),
                                               float(v["difference"]["ci_high"])],
                "own_step_auc": float(vote_summary[key]["AUC on own steps"])}
                for key, v in votes.items() if key.startswith(f"{mode} (")},
            "tau_sweep": taus[mode].to_dict("records")}, config=votes[mode]["cfg"])
run.write(K.STEP_PROBES, probe_results, config=probe_cfg)
