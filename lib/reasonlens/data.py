"""Tokenizer training, tokenization and packing into fixed-length contexts (notebook 01).

Contexts are what SAELens and the toy LM's training read: documents are tokenized (their special
tokens spelled out in the text), shuffled under a seed, concatenated and cut into rows of
``context_size`` tokens, stored in a ``tokens`` column.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from reasonlens import constants as K
from reasonlens.config import Config, check_range


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
                   seed: int = 0) -> pd.DataFrame:
    """Turn real formatted texts (``sources.load_mixed_texts``) into the documents table.

    Wraps each text in the tokenizer's BOS/EOS (the R1 template itself has none) and assigns
    splits by a seeded permutation, so the rest of the book treats real and synthetic documents
    alike.

    Args:
        mixed: rows with ``text`` and ``kind`` (trace or chat).
        tokenizer: the real model's tokenizer.
        split_fractions: train, val, test.
        seed: the permutation's seed.

    Returns:
        Columns doc_id, problem_id (-1), split, kind, text.
    """
    if len(mixed) == 0:
        raise ValueError("mixed is empty: no real records were loaded. Check n_reasoning/n_chat.")
    n = len(mixed)
    rank = np.random.default_rng(seed).permutation(n)
    n_train = round(split_fractions[0] * n)
    n_val = round(split_fractions[1] * n)
    split = np.where(rank < n_train, "train", np.where(rank < n_train + n_val, "val", "test"))
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    return pd.DataFrame({"doc_id": range(n), "problem_id": -1, "split": split,
                         "kind": mixed["kind"].to_numpy(),
                         "text": [bos + t + eos for t in mixed["text"]]})
