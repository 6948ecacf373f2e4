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
# # 1. Data: a synthetic reasoning world, tokenized into contexts
#
# What does the model learn from? On the embedded default no dataset can be downloaded, so we
# *generate* one: problems with verifiable answers (repeated addition or subtraction, alternating
# steps, a 12-hour clock; also the largest of a list and counting even numbers), solved either by
# a plain answer or by a `<think>` trace that uses the reasoning vocabulary of Galichin et al.
# (2025) in its real roles. The mechanism the papers claim is built in: a *hard* step (a carry, a
# wrap past 12) done directly usually slips (the dropped carry); after a step the writer reflects
# ("Wait, let me check.") with a probability set by how hard the step *looks* (a large operand),
# never by whether it slipped; and the reflection recomputes the step by another route that does
# not carry (54 + 8 as 54 + 10 = 64, 64 - 2 = 62), so it repairs the slip. Hard steps with a small
# operand look easy and are seldom checked: there, reflecting more would help. Every step carries
# ground-truth labels (correct, length, first token, hardness).
#
# With a pretrained model (`pretrained_model: smollm2`, the `smollm2` profile), the same world is
# written in that model's own chat template (the trace inside `<think> ... </think>` at the start
# of the assistant turn) and packed with its tokenizer: the data its reasoning fine-tune reads.
#
# For real models (`data_source: openthoughts_lmsys`), the same notebook renders OpenThoughts-114k
# traces and LMSYS-Chat-1M conversations exactly as the authors' code does (AIRI-Institute/
# SAE-Reasoning, `training/datasets/`): the R1 system prompt and template, their per-domain
# problem prompts, an EOS after every non-final assistant turn, text verbatim; it packs each
# source with TransformerLens's `tokenize_and_concatenate`, caps each at
# `max_tokens_per_source` tokens and mixes them. It also builds their stratified OpenThoughts
# subset (`extraction/prepare_openthoughts_subset.py`), on which features are scored and shown.
#
# Writes: `world/problems.parquet`, `world/steps.parquet`, `world/documents.parquet`,
# `tokenizer/`, and `contexts/{mix}_{split}.parquet` (a SAELens-ready `tokens` column); for real
# models also `contexts/extraction.parquet` (the stratified subset, unshuffled).

# %% tags=["parameters"]
profile = "default"
data_source = "synthetic"  # or "openthoughts_lmsys" (real models)
seed = 0
data_seed = None  # the world's and the packing's seed; None: seed (a --seeds run fixes it)
# synthetic world (reasonlens.world.WorldConfig)
families = ["arithmetic", "alternating"]  # also: "clock", "maximum", "counting"
n_problems = 20000
min_items = 3  # difficulty: updates per problem
max_items = 5
mistake_rate = 0.03  # slips per easy compute step
slip_rate = 0.7  # slips per hard compute step (a carry, a wrap): the dropped carry
reflect_rates = [0.05, 0.3, 0.85]  # reflections after easy, hard-looking-easy, hard-looking steps
hesitation_rate = 0.1
explore_rate = 0.2
chat_fraction = 0.3
vocab_size = 512  # the toy tokenizer's
pretrained_model = None  # or "smollm2", a .gguf or a folder: its tokenizer and chat template
context_size = 256
# real models (sources.SourceMixConfig, data.RealContextConfig); defaults: the reference's
model_name = None  # its tokenizer is used for real data
openthoughts_source = "open-thoughts/OpenThoughts-114k"
lmsys_source = "lmsys/lmsys-chat-1m"
openthoughts_domains = ["code", "math", "puzzle", "biology", "chemistry", "physics"]
n_reasoning = None  # traces drawn; None: all (reference)
n_chat = None  # conversations drawn; None: all (reference)
reasoning_fraction = None  # None: sized by tokens (reference); a number: trace share by documents
is_english_only = False  # option: English LMSYS conversations only (reference: all languages)
is_text_stripped = False  # option: strip whitespace around trace fields (reference: verbatim)
packing = "transformer_lens"  # the reference's; or "reasonlens" (BOS + text + EOS per document)
max_tokens_per_source = 800_000_000  # each source's contexts capped at this many tokens (reference)
n_tl_shards = 10  # num_proc of the reference's tokenize_and_concatenate call (sets batch starts)
shuffle_seed = 42  # documents shuffled per source before packing (reference: 42)
split_fractions = [0.8, 0.1, 0.1]  # train/val/test documents (the reference trains on all)
n_extraction_samples = 10_000  # stratified OpenThoughts subset (reference: 10,000)

# %%
import numpy as np
import pandas as pd
from IPython.display import display

from reasonlens import artifacts, data, plotting, pretrained, sources
from reasonlens import constants as K
from reasonlens.world import WorldConfig, chat_format, generate_world, is_followed_by_reflection

run = artifacts.RunDir(profile)
run

# %% [markdown]
# ## The synthetic world
# One config holds every knob of the generator; the same seed gives byte-identical tables. The
# exchanges are written in the toy's markers, or in a pretrained model's chat template.

# %%
data_seed = seed if data_seed is None else data_seed
if data_source not in ("synthetic", "openthoughts_lmsys"):
    raise ValueError(f"data_source={data_source!r}; use 'synthetic' or 'openthoughts_lmsys'.")
if data_source == "synthetic":
    world_cfg = WorldConfig(
        seed=data_seed, families=tuple(families), n_problems=n_problems, min_items=min_items,
        max_items=max_items, mistake_rate=mistake_rate, slip_rate=slip_rate,
        reflect_rates=tuple(reflect_rates), hesitation_rate=hesitation_rate,
        explore_rate=explore_rate,
        chat_fraction=chat_fraction)
    tokenizer = pretrained.load_pretrained_tokenizer(pretrained_model) if pretrained_model else None
    chat = chat_format(tokenizer)
    print(f"format: {chat}")
    world = generate_world(world_cfg, chat)
    documents = world.documents
    display(world.problems.groupby(["family", "split"]).size().unstack())
else:
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    mix_cfg = sources.SourceMixConfig(
        openthoughts_source=openthoughts_source, lmsys_source=lmsys_source,
        domains=tuple(openthoughts_domains), n_reasoning=n_reasoning, n_chat=n_chat,
        reasoning_fraction=reasoning_fraction, is_english_only=is_english_only,
        is_stripped=is_text_stripped, seed=data_seed, chat_eos_token=tokenizer.eos_token)
    documents = data.real_documents(sources.load_mixed_texts(mix_cfg), tokenizer,
                                    split_fractions=tuple(split_fractions), seed=data_seed)
documents.groupby(["kind", "split"]).size().unstack()

# %% [markdown]
# A trace and the plain exchange for the same problem, and a piece of small talk. Look for the
# roles of the reasoning words: *hmm/maybe/perhaps* before a step the writer is unsure of,
# *wait/let me* before a check, *but/however* in a correction, *alternatively/another* when
# weighing approaches, *therefore* at the conclusion.

# %%
for kind in documents.kind.unique():
    example = documents[documents.kind == kind].iloc[0].text
    print(f"--- {kind} ---\n{example}\n")

# %% [markdown]
# Slips and their fate, per family: how many a trace makes, how many a reflection repairs, and
# how often the trace's final answer is still right; then, per hardness of a compute step (0
# easy, 1 hard but looks easy, 2 looks hard), how often it is right and how often a reflection
# follows it.

# %%
if data_source == "synthetic":
    display(world.problems.groupby("family").agg(
        slips_per_trace=("n_mistakes", "mean"), corrections_per_trace=("n_corrections", "mean"),
        reflections_per_trace=("n_reflections", "mean"),
        trace_accuracy=("trace_is_correct", "mean")).round(3))
    steps = world.steps
    is_reflected = is_followed_by_reflection(steps)
    compute = steps.kind == "compute"
    display(steps[compute].assign(is_reflected=is_reflected[compute]).groupby("hardness").agg(
        n=("is_correct", "size"), right=("is_correct", "mean"),
        reflected=("is_reflected", "mean")).round(3))

# %% [markdown]
# ## Where the reasoning vocabulary lives
# Rates per 1,000 words: the ten words of the paper's vocabulary are concentrated in traces,
# but some (*but*, *another*, *maybe*, *wait*) also occur in small talk in ordinary roles, as in
# real chat data. A feature that merely detects a word should therefore not score as a reasoning
# feature.

# %%
rates = pd.DataFrame({kind: data.word_rates(documents[documents.kind == kind].text,
                                            K.REASONING_WORDS)
                      for kind in documents.kind.unique()})
plotting.word_rate_bars(rates, save_to=run.figure("01_word_rates"));

# %% [markdown]
# ## Tokenizer and contexts
# A byte-level BPE tokenizer trained on the training split (digits one per token; case and
# leading-space variants such as "Wait" and " wait" are distinct tokens, as in real vocabularies),
# saved as a transformers tokenizer. Pretrained and real profiles use the model's own tokenizer.

# %%
train_texts = data.mix_documents(documents, "train", data.MIXES["reasoning"])
if data_source == "synthetic" and not pretrained_model:
    tokenizer_cfg = data.TokenizerConfig(vocab_size=vocab_size)
    tokenizer = data.train_tokenizer(train_texts, tokenizer_cfg)
else:
    tokenizer_cfg = {"model_name": pretrained_model or model_name}
print(len(tokenizer), "tokens;", tokenizer.tokenize(documents[documents.kind == "trace"].text.iloc[0])[:40])

# %%
n_shown = None if data_source == "synthetic" else 5000  # real corpora: a sample of each kind
lengths = {kind: np.array([len(ids) for ids in data.tokenize(tokenizer, group.text[:n_shown])])
           for kind, group in documents.groupby("kind")}
plotting.length_histogram(lengths, xlabel="tokens per document", save_to=run.figure("01_lengths"));

# %% [markdown]
# Documents are shuffled, concatenated and cut into contexts of `context_size` tokens, per
# training mix (the reasoning model's: traces + plain + chat; the base model's: no traces) and
# per split. Real documents are packed per source as the reference packs them: TransformerLens's
# `tokenize_and_concatenate` joins them with EOS and, tokenizing 20 pieces of each batch apart,
# puts the tokenizer's BOS at each piece start; each source is capped at `max_tokens_per_source`
# tokens before the two are mixed.

# %%
if data_source == "synthetic":
    context_cfg = data.ContextConfig(context_size=context_size, seed=data_seed)
    contexts = {}
    for mix, kinds in data.MIXES.items():
        for split in ("train", "val", "test"):
            texts = data.mix_documents(documents, split, kinds)
            if texts:
                contexts[f"{mix}_{split}"] = data.pack_contexts(data.tokenize(tokenizer, texts),
                                                                context_cfg)
else:
    context_cfg = data.RealContextConfig(
        context_size=context_size, packing=packing, n_shards=n_tl_shards,
        max_tokens_per_source=max_tokens_per_source, shuffle_seed=shuffle_seed, seed=data_seed)
    contexts = data.real_contexts(documents, tokenizer, context_cfg)
pd.Series({name: len(frame) for name, frame in contexts.items()}, name="contexts")

# %% [markdown]
# For real models, the extraction set: the reference's stratified OpenThoughts subset, an equal
# share of each domain (each shuffled with seed 42), topped up in dataset order when a domain runs
# short, stored domain by domain. It is packed as the reference's scoring and dashboard scripts
# pack it (`tokenize_and_concatenate`, no added BOS, 4 shards) and written unshuffled: the
# dashboards read its first rows; ReasonScore reads the first 4096 rows of
# `data.shuffle_contexts(contexts, seed=42)`, the reference's `.shuffle(seed=42)`.

# %%
if data_source != "synthetic":
    extraction_cfg = sources.ExtractionSetConfig(
        openthoughts_source=openthoughts_source, n_samples=n_extraction_samples,
        domains=tuple(openthoughts_domains), is_stripped=is_text_stripped)
    extraction_texts = sources.load_extraction_texts(extraction_cfg)
    contexts["extraction"] = data.pack_transformer_lens(
        extraction_texts.text, tokenizer, context_size, is_bos_added=False, n_shards=4)
    display(extraction_texts.domain.value_counts().rename("records").to_frame()
            .assign(contexts=len(contexts["extraction"])))

# %% [markdown]
# ## Write the artifacts

# %%
if data_source == "synthetic":
    run.write(K.PROBLEMS, world.problems, config=world_cfg)
    run.write(K.STEPS, data.label_step_tokens(world.steps, tokenizer), config=world_cfg)
run.write(K.DOCUMENTS, documents, config=world_cfg if data_source == "synthetic" else mix_cfg)
with run.write_dir(K.TOKENIZER_DIR, config=tokenizer_cfg) as path:
    tokenizer.save_pretrained(path)
for name, frame in contexts.items():
    run.write(K.CONTEXTS.format(split=name), frame,
              config=extraction_cfg if name == "extraction" else context_cfg)
sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*.parquet"))

# %% [markdown]
# **Summary.** The world gives problems whose answers can be checked, traces whose reasoning
# words sit in their real roles, a built-in mechanism (hard steps slip, reflections follow steps
# that look hard and repair them), and step labels for free. Notebook 02 trains a base model on
# the problems without traces and continues it on the reasoning mix as the reasoning model.
