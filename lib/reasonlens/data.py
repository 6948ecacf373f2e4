"""Tokenizer training, tokenization and packing into fixed-length contexts (notebook 01).

Contexts are what SAELens and the toy LM's training read: rows of ``context_size`` token ids in a
``tokens`` column. The synthetic world's documents spell out their BOS/EOS tokens and are packed
by :func:`pack_contexts`: shuffled under a seed, concatenated and cut. Real texts are packed as the
reference code packs them (AIRI-Institute/SAE-Reasoning, ``training/datasets/prepare_*.py``):
per source, documents shuffled with seed 42, then TransformerLens's ``tokenize_and_concatenate``
(:func:`pack_transformer_lens`), then each source capped at a number of tokens, and the sources
mixed (:func:`real_contexts`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from reasonlens import constants as K
from reasonlens.config import Config, check_range

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Config):
    """A byte-level BPE tokenizer for the synthetic world.

    Args:
        vocab_size: BPE vocabulary size, special tokens included.
        min_frequency: a merge must occur this often.
    """

    vocab_size: int = 512
    min_frequency: int = 2

    def __post_init__(self):
        check_range("vocab_size", self.vocab_size, 300, hint="Byte-level BPE needs >= 300 "
                    "(256 bytes + special tokens + merges).")


def train_tokenizer(texts: Sequence[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the world's special tokens.

    Args:
        texts: training texts; special tokens inside them are kept whole.
        cfg: vocabulary size and merge frequency.

    Returns:
        A transformers fast tokenizer with BOS, EOS, PAD and the chat/think markers, ready for
        ``save_pretrained``. Case and leading-space variants are distinct tokens (" Wait" vs
        "wait"), as in real BPE vocabularies.

    Raises:
        ValueError: when ``texts`` is empty.
    """
    if len(texts) == 0:
        raise ValueError("texts is empty: the tokenizer needs training documents. "
                         "Check that notebook 01 generated documents for the train split.")
    tok = Tokenizer(models.BPE())
    # One digit per token (as Qwen's tokenizer does; a leading space stays attached: " 5", "8"),
    # words and runs of punctuation with their leading space; then GPT-2 style byte-level mapping.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\d| ?[A-Za-z]+| ?[^\sA-Za-z\d]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
        special_tokens=list(K.SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=K.BOS, eos_token=K.EOS, pad_token=K.PAD,
        additional_special_tokens=[K.THINK_OPEN, K.THINK_CLOSE, K.USER, K.ASSISTANT],
        clean_up_tokenization_spaces=False, model_input_names=["input_ids", "attention_mask"])


def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with no special tokens added (the texts spell them out)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


@dataclasses.dataclass(frozen=True)
class ContextConfig(Config):
    """Packing of documents into contexts.

    Args:
        context_size: tokens per context (the paper uses 1024 for real models).
        seed: shuffles the documents before concatenation.
    """

    context_size: int = 256
    seed: int = 0

    def __post_init__(self):
        check_range("context_size", self.context_size, 8)


def pack_contexts(token_lists: Sequence[Sequence[int]], cfg: ContextConfig) -> pd.DataFrame:
    """Shuffle, concatenate and cut documents into rows of ``context_size`` tokens.

    Args:
        token_lists: token ids per document.
        cfg: context size and shuffle seed.

    Returns:
        A DataFrame with a ``tokens`` column (lists of ints), the SAELens pretokenized format.
        The last partial context is dropped.

    Raises:
        ValueError: when the documents hold fewer tokens than one context.
    """
    order = list(range(len(token_lists)))
    random.Random(cfg.seed).shuffle(order)
    flat = np.fromiter((t for i in order for t in token_lists[i]), dtype=np.int64)
    n_contexts = len(flat) // cfg.context_size
    if n_contexts == 0:
        raise ValueError(f"the documents hold {len(flat)} tokens, fewer than one context of "
                         f"context_size={cfg.context_size}. Generate more problems or lower "
                         "context_size.")
    rows = flat[: n_contexts * cfg.context_size].reshape(n_contexts, cfg.context_size)
    return pd.DataFrame({"tokens": list(rows)})


def contexts_tensor(frame: pd.DataFrame) -> torch.Tensor:
    """The ``tokens`` column as a ``[n_contexts, context_size]`` long tensor.

    Raises:
        ValueError: when the frame is empty or lacks a ``tokens`` column.
    """
    if "tokens" not in frame.columns or len(frame) == 0:
        raise ValueError("contexts must be a non-empty table with a 'tokens' column "
                         f"(got columns {list(frame.columns)}, {len(frame)} rows).")
    return torch.tensor(np.stack(frame["tokens"].to_numpy()), dtype=torch.long)


def mix_documents(documents: pd.DataFrame, split: str, kinds: Sequence[str]) -> list[str]:
    """Texts of one split restricted to document kinds (e.g. trace + plain + chat)."""
    chosen = documents[(documents["split"] == split) & documents["kind"].isin(kinds)]
    return chosen["text"].tolist()


# The two training mixes of docs/design.md: the reasoning model sees traces, the base model does not.
MIXES = {"reasoning": ("trace", "plain", "chat"), "base": ("plain", "chat")}


def word_counts(texts: Sequence[str], words: Sequence[str]) -> pd.DataFrame:
    """Occurrences of each word (case-insensitive, whole words) in each text: ``[texts, words]``."""
    patterns = {w: re.compile(rf"\b{re.escape(w.lower())}\b") for w in words}
    return pd.DataFrame([{w: len(p.findall(t.lower())) for w, p in patterns.items()}
                         for t in texts], columns=list(words), dtype=float)


def word_rates(texts: Sequence[str], words: Sequence[str]) -> pd.Series:
    """Occurrences of each word (case-insensitive, whole words) per 1,000 words of ``texts``."""
    n_words = max(1, sum(len(re.findall(r"[a-z]+", t.lower())) for t in texts))
    return word_counts(texts, words).sum(axis=0) * 1000 / n_words


def label_step_tokens(steps: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """Add each step's token length (``n_tokens``) and first token (``first_token``).

    Steps are lines of a trace, so each is tokenized as it appears after a newline.
    """
    ids = tokenize(tokenizer, steps["text"].tolist())
    return steps.assign(n_tokens=[len(i) for i in ids],
                        first_token=[tokenizer.convert_ids_to_tokens(i[0]) for i in ids])


def real_documents(mixed: pd.DataFrame, tokenizer, split_fractions=(0.8, 0.1, 0.1),
                   seed: int = 0, is_wrapped: bool = False) -> pd.DataFrame:
    """Turn real formatted texts (``sources.load_mixed_texts``) into the documents table.

    Assigns splits by a seeded permutation, so the rest of the book treats real and synthetic
    documents alike. Texts are kept verbatim: the reference packs them with TransformerLens,
    which puts the EOS between documents (:func:`real_contexts`). The reference has no held-out
    split; ours keep val/test documents out of the training contexts.

    Args:
        mixed: rows with ``text`` and ``kind`` (trace or chat), and optionally ``record_idx``
            (kept, so that packing can restore each source's order).
        tokenizer: the real model's tokenizer (its BOS/EOS when ``is_wrapped``).
        split_fractions: train, val, test.
        seed: the permutation's seed.
        is_wrapped: wrap each text in the tokenizer's BOS and EOS (the text form our own packing
            used; not needed by :func:`real_contexts`, which adds them itself).

    Returns:
        Columns doc_id, problem_id (-1), split, kind, text, and record_idx when ``mixed`` has it.

    Raises:
        ValueError: ``mixed`` is empty.

    Used by notebooks/01_data.py.
    """
    if len(mixed) == 0:
        raise ValueError("mixed is empty: no real records were loaded. Check n_reasoning/n_chat.")
    n = len(mixed)
    rank = np.random.default_rng(seed).permutation(n)
    n_train = round(split_fractions[0] * n)
    n_val = round(split_fractions[1] * n)
    split = np.where(rank < n_train, "train", np.where(rank < n_train + n_val, "val", "test"))
    bos, eos = (tokenizer.bos_token or "", tokenizer.eos_token or "") if is_wrapped else ("", "")
    frame = pd.DataFrame({"doc_id": range(n), "problem_id": -1, "split": split,
                          "kind": mixed["kind"].to_numpy(),
                          "text": [bos + t + eos for t in mixed["text"]]})
    if "record_idx" in mixed.columns:
        frame["record_idx"] = mixed["record_idx"].to_numpy()
    return frame


# --- Real data, packed as the reference packs it ----------------------------------------------

PACKINGS = ("transformer_lens", "reasonlens")
SPLITS = ("train", "val", "test")


def pack_transformer_lens(texts: Sequence[str], tokenizer, context_size: int = 1024,
                          is_bos_added: bool = False, n_shards: int = 1) -> pd.DataFrame:
    """Pack texts with TransformerLens's ``tokenize_and_concatenate``, as the reference calls it.

    The reference (``prepare_openthoughts_dataset.py``, ``prepare_lmsys_dataset.py``,
    ``compute_score.py``) first gives the tokenizer a new ``<PAD>`` token when its pad token is
    its EOS, then calls ``tokenize_and_concatenate(dataset, tokenizer, max_length=context_size,
    add_bos_token=False)``. Per batch of 1,000 texts that function joins the texts with the EOS
    string, cuts the joined string into 20 pieces of equal character length, tokenizes each piece
    *with* the tokenizer's special tokens (so a Llama tokenizer puts a BOS at each of the 20
    piece starts, often mid-word), drops padding, and cuts the ids into rows of ``context_size``,
    dropping each batch's remainder (a batch with fewer tokens than one row is padded instead).
    ``datasets.map`` with ``num_proc`` workers gives each worker a contiguous shard; here the
    shards are packed one after the other (``n_shards``), which gives the same rows without
    starting processes. The caller's tokenizer is not modified.

    Args:
        texts: documents, in the order they are packed.
        tokenizer: a transformers tokenizer with an EOS token.
        context_size: tokens per row (``max_length``).
        is_bos_added: TransformerLens's ``add_bos_token``: one BOS more at the start of every row
            (the reference passes False).
        n_shards: the ``num_proc`` of the reference's call (10, TransformerLens's default, for
            its training data; 4 for its extraction set); reduced to ``len(texts)`` as
            ``datasets`` does.

    Returns:
        A DataFrame with a ``tokens`` column (arrays of ``context_size`` ids), in packing order.

    Raises:
        ValueError: ``texts`` is empty, the tokenizer has no EOS token, or ``context_size`` or
            ``n_shards`` is not a positive integer.

    Used by notebooks/01_data.py (through ``real_contexts``).
    """
    import datasets
    from transformer_lens.utils import tokenize_and_concatenate

    check_range("context_size", context_size, 2)
    check_range("n_shards", n_shards, 1)
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: there is nothing to pack. Check that the source and "
                         "split hold documents.")
    if tokenizer.eos_token is None:
        raise ValueError("The tokenizer has no eos_token; tokenize_and_concatenate joins "
                         "documents with it. Use the model's own tokenizer.")
    tokenizer = copy.deepcopy(tokenizer)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        # As the reference: a pad token distinct from EOS, so dropping padding keeps every EOS.
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    documents = datasets.Dataset.from_dict({"text": texts})
    n_shards = min(n_shards, len(documents))
    rows = []
    had_progress_bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar per shard would flood the notebook
    try:
        for index in range(n_shards):
            shard = documents.shard(num_shards=n_shards, index=index, contiguous=True,
                                    keep_in_memory=True)
            packed = tokenize_and_concatenate(shard, tokenizer, streaming=False,
                                              max_length=context_size, column_name="text",
                                              add_bos_token=is_bos_added, num_proc=1)
            rows.append(np.asarray(packed["tokens"], dtype=np.int64).reshape(-1, context_size))
    finally:
        if had_progress_bars:
            datasets.enable_progress_bars()
    tokens = np.concatenate(rows)
    n_padded = int((tokens == tokenizer.pad_token_id).any(axis=1).sum())
    if n_padded:
        logger.warning("%d of %d contexts end in padding (id %d): a batch of documents held "
                       "fewer than context_size=%d tokens.", n_padded, len(tokens),
                       tokenizer.pad_token_id, context_size)
    return pd.DataFrame({"tokens": list(tokens)})


def shuffle_contexts(frame: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    """Rows of ``frame`` in the order ``datasets.Dataset.shuffle(seed=seed)`` puts them.

    The reference scores features on ``tokenize_and_concatenate(...).shuffle(seed=42)[:4096]``
    of its extraction set (``compute_score.py``) and draws dashboards from the unshuffled rows.

    Args:
        frame: contexts (any table).
        seed: the shuffle seed.

    Returns:
        The rows permuted by ``numpy.random.default_rng(seed).permutation``, index reset.

    Used by notebooks 01 and 04.
    """
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)


def cap_contexts(frame: pd.DataFrame, max_tokens: int | None,
                 seed: int | str = 0) -> pd.DataFrame:
    """At most ``ceil(max_tokens / context_size)`` rows drawn at random, in random order.

    As the reference sizes each corpus (``random.sample(range(len), min(ceil(num_tokens /
    context_size), len))``, unseeded there, seeded here).

    Args:
        frame: contexts with a ``tokens`` column.
        max_tokens: token budget; None keeps every row in its order.
        seed: seeds ``random.Random`` (an int or a string).

    Returns:
        The kept rows, index reset.

    Raises:
        ValueError: ``max_tokens`` is not a positive integer or None.

    Used by notebooks/01_data.py (through ``real_contexts``).
    """
    if max_tokens is None:
        return frame.reset_index(drop=True)
    check_range("max_tokens", max_tokens, 1)
    context_size = len(frame["tokens"].iloc[0]) if len(frame) else 1
    n_kept = min(math.ceil(max_tokens / context_size), len(frame))
    kept = random.Random(seed).sample(range(len(frame)), n_kept)
    return frame.iloc[kept].reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class RealContextConfig(Config):
    """How real texts become contexts. Defaults: the reference's (``prepare_*_dataset.py``).

    Args:
        context_size: tokens per context (reference: 1024).
        packing: ``"transformer_lens"`` (the reference: :func:`pack_transformer_lens`) or
            ``"reasonlens"`` (an option: each document wrapped in BOS ... EOS, no BOS inside,
            packed by :func:`pack_contexts`).
        is_bos_added: TransformerLens's ``add_bos_token`` (reference: False).
        n_shards: the reference's ``num_proc`` (TransformerLens's default, 10); it decides where
            batches of documents start (see :func:`pack_transformer_lens`).
        max_tokens_per_source: each source's contexts are capped at this many tokens before the
            sources are mixed (reference: 800,000,000 each); None keeps all.
        shuffle_seed: each source's documents are shuffled with this seed before packing
            (reference: ``Dataset.shuffle(seed=42)``).
        seed: seeds the draw of the contexts kept under the cap and the shuffle of the mix.

    Raises:
        ValueError: a parameter is out of range; the message names it.

    Used by notebooks/01_data.py.
    """

    context_size: int = 1024
    packing: str = "transformer_lens"
    is_bos_added: bool = False
    n_shards: int = 10
    max_tokens_per_source: int | None = 800_000_000
    shuffle_seed: int = 42
    seed: int = 0

    def __post_init__(self):
        check_range("context_size", self.context_size, 8)
        if self.packing not in PACKINGS:
            raise ValueError(f"packing={self.packing!r} is unknown; use one of {list(PACKINGS)} "
                             "('transformer_lens' is the reference's).")
        if not isinstance(self.is_bos_added, bool):
            raise ValueError(f"is_bos_added={self.is_bos_added!r} must be True or False.")
        check_range("n_shards", self.n_shards, 1, None, "The reference's num_proc is 10.")
        if self.max_tokens_per_source is not None:
            check_range("max_tokens_per_source", self.max_tokens_per_source, 1, None,
                        "Use None to keep every context (reference: 800000000).")
        for name in ("shuffle_seed", "seed"):
            check_range(name, getattr(self, name), 0)


def real_contexts(documents: pd.DataFrame, tokenizer, cfg: RealContextConfig,
                  mixes: Mapping[str, Sequence[str]] | None = None) -> dict[str, pd.DataFrame]:
    """Pack real documents per source and split, cap each source, and mix them.

    For each split and each kind of document (a source: ``trace`` or ``chat``), the documents
    are put in their source's order (``record_idx``), shuffled with ``cfg.shuffle_seed``, packed
    (``cfg.packing``) and capped at ``cfg.max_tokens_per_source`` tokens; then, per mix, the
    sources' contexts are concatenated and shuffled with ``cfg.seed``. With one split holding
    every document, the per-source contexts are the reference's, up to the order its
    unseeded ``random.sample`` gives them.

    Args:
        documents: the documents table (:func:`real_documents`): ``split``, ``kind``, ``text``
            and optionally ``record_idx``.
        tokenizer: the model's tokenizer.
        cfg: packing, cap and seeds.
        mixes: mix name -> kinds it holds; :data:`MIXES` by default (kinds absent from the
            documents are skipped, and a mix with none of its kinds is left out).

    Returns:
        ``{f"{mix}_{split}": contexts}``, each a DataFrame with a ``tokens`` column.

    Raises:
        ValueError: the documents lack a column, or a source's documents hold too few tokens
            for one context under ``packing="reasonlens"``.

    Used by notebooks/01_data.py.
    """
    missing = {"split", "kind", "text"} - set(documents.columns)
    if missing:
        raise ValueError(f"documents lack column(s) {sorted(missing)}; columns found: "
                         f"{list(documents.columns)}. Build them with data.real_documents.")
    mixes = MIXES if mixes is None else mixes
    contexts = {}
    for split in SPLITS:
        in_split = documents[documents["split"] == split]
        if "record_idx" in in_split.columns:
            in_split = in_split.sort_values("record_idx", kind="stable")
        per_kind = {}
        for kind, group in in_split.groupby("kind", sort=True):
            texts = group["text"].tolist()
            order = np.random.default_rng(cfg.shuffle_seed).permutation(len(texts))
            texts = [texts[i] for i in order]
            if cfg.packing == "transformer_lens":
                packed = pack_transformer_lens(texts, tokenizer, cfg.context_size,
                                               cfg.is_bos_added, cfg.n_shards)
            else:
                bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
                packed = pack_contexts(tokenize(tokenizer, [bos + t + eos for t in texts]),
                                       ContextConfig(cfg.context_size, cfg.shuffle_seed))
            per_kind[kind] = cap_contexts(packed, cfg.max_tokens_per_source,
                                          f"{cfg.seed}/{split}/{kind}")
            logger.info("%s %s: %d documents -> %d contexts", split, kind, len(texts),
                        len(per_kind[kind]))
        for mix, kinds in mixes.items():
            parts = [per_kind[kind] for kind in kinds if kind in per_kind]
            if parts:
                mixed = pd.concat(parts, ignore_index=True)
                contexts[f"{mix}_{split}"] = shuffle_contexts(mixed, cfg.seed)
    return contexts
