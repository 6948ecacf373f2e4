import copy
import random

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import build_context_config, build_tokenizer_config

from reasonlens import constants as K
from reasonlens import data


def test_tokenizer_round_trips_documents_and_keeps_special_tokens(world, tokenizer):
    texts = world.documents.text.tolist()[:20]
    for text, ids in zip(texts, data.tokenize(tokenizer, texts)):
        assert tokenizer.decode(ids) == text
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    for special in K.SPECIAL_TOKENS:
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1, special
    assert tokenizer.pad_token_id is not None


def test_digits_are_single_tokens_and_word_variants_differ(tokenizer):
    assert tokenizer.tokenize(" 1234") == ["Ġ1", "2", "3", "4"]
    assert tokenizer.tokenize("Wait") != tokenizer.tokenize(" wait")


def test_tokenizer_saves_and_reloads(tmp_path, tokenizer):
    from transformers import AutoTokenizer
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = f"{K.BOS}{K.USER}Compute 12 + 3.{K.ASSISTANT}{K.THINK_OPEN}\nWait.{K.EOS}"
    assert again(text, add_special_tokens=False)["input_ids"] == tokenizer(
        text, add_special_tokens=False)["input_ids"]


def test_empty_training_texts_are_a_clear_error():
    with pytest.raises(ValueError, match="texts is empty"):
        data.train_tokenizer([], build_tokenizer_config())


def test_pack_contexts_concatenates_all_tokens_in_a_seeded_order():
    docs = [list(range(start, start + 5)) for start in range(0, 20, 5)]
    frame = data.pack_contexts(docs, build_context_config(context_size=8, seed=1))
    rows = np.stack(frame.tokens.to_numpy())
    assert rows.shape == (2, 8)  # 20 tokens -> two full contexts, remainder dropped
    # the rows are the documents, whole and each once, end to end in some order, cut after 16
    flat = rows.ravel().tolist()
    chunks = [flat[0:5], flat[5:10], flat[10:15]]
    assert all(chunk in docs for chunk in chunks) and len({c[0] for c in chunks}) == 3
    (last,) = [d for d in docs if d not in chunks]
    assert flat[15] == last[0]
    assert flat != sum(docs, [])[:16]  # seed 1 does not keep the given order
    again = data.pack_contexts(docs, build_context_config(context_size=8, seed=1))
    assert np.array_equal(rows, np.stack(again.tokens.to_numpy()))


def test_too_few_tokens_for_a_context_is_a_clear_error():
    with pytest.raises(ValueError, match="context_size=64"):
        data.pack_contexts([[1, 2, 3]], build_context_config())


def test_contexts_tensor_checks_its_input():
    frame = pd.DataFrame({"tokens": [np.arange(4), np.arange(4)]})
    tokens = data.contexts_tensor(frame)
    assert tokens.dtype == torch.long
    assert torch.equal(tokens, torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="tokens"):
        data.contexts_tensor(pd.DataFrame({"text": ["a"]}))


def test_mixes_differ_only_by_traces(world):
    reasoning = data.mix_documents(world.documents, "train", data.MIXES["reasoning"])
    base = data.mix_documents(world.documents, "train", data.MIXES["base"])
    assert set(base) < set(reasoning)
    assert not any(K.THINK_OPEN in t for t in base)
    assert all(K.THINK_OPEN in t for t in set(reasoning) - set(base))


def test_word_rates_count_whole_words_case_insensitively():
    rates = data.word_rates(["Wait, but wait.", "butter is not but"], ["wait", "but", "hmm"])
    # 7 words in all: wait x2, but x2 ("butter" does not count), hmm x0
    assert rates["wait"] == pytest.approx(2000 / 7)
    assert rates["but"] == pytest.approx(2000 / 7)
    assert rates["hmm"] == 0


def test_label_step_tokens_adds_lengths_and_first_tokens(world, tokenizer):
    steps = data.label_step_tokens(world.steps.head(30), tokenizer)
    for _, row in steps.iterrows():
        ids = tokenizer(row.text, add_special_tokens=False)["input_ids"]
        assert row.n_tokens == len(ids)
        assert row.first_token == tokenizer.convert_ids_to_tokens(ids[0])
    assert {"Let", "Therefore"} <= set(data.label_step_tokens(world.steps, tokenizer).first_token)


def test_real_documents_keep_texts_verbatim_and_split_them(tokenizer):
    mixed = pd.DataFrame({"text": [f"t{i}" for i in range(50)], "kind": ["trace", "chat"] * 25,
                          "record_idx": np.arange(50) // 2})
    docs = data.real_documents(mixed, tokenizer, seed=1)
    assert docs.text.tolist() == mixed.text.tolist()
    assert docs.record_idx.tolist() == mixed.record_idx.tolist()
    assert docs.split.value_counts().to_dict() == {"train": 40, "val": 5, "test": 5}
    assert list(docs.kind) == list(mixed.kind)
    wrapped = data.real_documents(mixed.drop(columns="record_idx"), tokenizer, seed=1,
                                  is_wrapped=True)
    assert wrapped.text.tolist() == [f"{K.BOS}t{i}{K.EOS}" for i in range(50)]
    assert "record_idx" not in wrapped.columns
    assert wrapped.split.tolist() == docs.split.tolist()
    with pytest.raises(ValueError, match="mixed is empty"):
        data.real_documents(mixed.head(0), tokenizer)


# --- packing as the reference does: TransformerLens tokenize_and_concatenate --------------------

@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer):
    """The toy tokenizer, made to put BOS before every text it encodes, as Llama 3's does."""
    from tokenizers.processors import TemplateProcessing
    bos_tok = copy.deepcopy(tokenizer)
    bos_tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{K.BOS} $A", special_tokens=[(K.BOS, tokenizer.bos_token_id)])
    assert bos_tok("Wait.")["input_ids"][0] == tokenizer.bos_token_id
    return bos_tok


def plain_tl_packing(texts, tokenizer, context_size, n_shards=1, batch_size=1000):
    """tokenize_and_concatenate(add_bos_token=False) as plain Python, per datasets shard/batch.

    TL's docstring and source: per batch, join with EOS, cut into 20 pieces of
    ceil(len / 20) characters, tokenize each piece with special tokens, drop padding, keep whole
    rows. datasets' contiguous shards: the first len % n shards get one text more.
    """
    n = len(texts)
    n_shards = min(n_shards, n)
    size, extra = divmod(n, n_shards)
    rows = []
    start = 0
    for shard in range(n_shards):
        stop = start + size + (shard < extra)
        shard_texts = texts[start:stop]
        start = stop
        for b in range(0, len(shard_texts), batch_size):
            joined = tokenizer.eos_token.join(shard_texts[b:b + batch_size])
            length = -(-len(joined) // 20)
            ids = []
            for i in range(20):
                ids += tokenizer(joined[i * length:(i + 1) * length])["input_ids"]
            for r in range(len(ids) // context_size):
                rows.append(ids[r * context_size:(r + 1) * context_size])
    return rows


def real_texts(n: int) -> list[str]:
    """Texts in the rendered R1 shape, of uneven lengths."""
    return [f"{K.USER}Compute {i} + {i % 7}.{K.ASSISTANT}{K.THINK_OPEN}\nHmm, {i} plus "
            f"{i % 7}. Wait, let me check.{' Maybe.' * (i % 5)}\n{K.THINK_CLOSE}\n{i + i % 7}"
            for i in range(n)]


def test_pack_transformer_lens_matches_a_plain_computation(bos_tokenizer):
    texts = real_texts(30)
    frame = data.pack_transformer_lens(texts, bos_tokenizer, context_size=16)
    rows = np.stack(frame.tokens.to_numpy())
    assert rows.dtype == np.int64 and rows.shape[1] == 16
    assert rows.tolist() == plain_tl_packing(texts, bos_tokenizer, 16)
    flat = rows.ravel()
    # 29 EOS between the 30 texts (minus any in the dropped tail); 20 BOS, one per piece
    assert (flat == bos_tokenizer.eos_token_id).sum() in (28, 29)
    assert (flat == bos_tokenizer.bos_token_id).sum() in (19, 20)
    assert flat[0] == bos_tokenizer.bos_token_id
    with_bos = data.pack_transformer_lens(texts, bos_tokenizer, 16, is_bos_added=True)
    with_bos = np.stack(with_bos.tokens.to_numpy())
    assert (with_bos[:, 0] == bos_tokenizer.bos_token_id).all()
    # the same stream in rows of 15 after the BOS; each packing drops its own partial last row
    stream = with_bos[:, 1:].ravel()
    n = min(stream.size, flat.size)
    assert stream[:n].tolist() == flat[:n].tolist() and abs(stream.size - flat.size) < 16


def test_pack_transformer_lens_shards_and_batches_like_the_reference(bos_tokenizer):
    texts = real_texts(2003)
    frame = data.pack_transformer_lens(texts, bos_tokenizer, context_size=64, n_shards=2)
    rows = np.stack(frame.tokens.to_numpy()).tolist()
    # shards of 1002 and 1001 texts, each in batches of 1000 + 2 (1): five batches in all
    assert rows == plain_tl_packing(texts, bos_tokenizer, 64, n_shards=2)
    assert rows != plain_tl_packing(texts, bos_tokenizer, 64, n_shards=1)


def test_pack_transformer_lens_equals_datasets_num_proc(bos_tokenizer):
    """The real thing: datasets' map with num_proc=3 worker processes."""
    import datasets
    from transformer_lens.utils import tokenize_and_concatenate
    texts = real_texts(40)
    expected = tokenize_and_concatenate(
        datasets.Dataset.from_dict({"text": texts}), copy.deepcopy(bos_tokenizer),
        max_length=16, add_bos_token=False, num_proc=3)["tokens"]
    frame = data.pack_transformer_lens(texts, bos_tokenizer, context_size=16, n_shards=3)
    assert np.stack(frame.tokens.to_numpy()).tolist() == expected.tolist()


def test_pack_transformer_lens_pad_as_eos_gets_its_own_pad(tokenizer, caplog):
    pad_is_eos = copy.deepcopy(tokenizer)
    pad_is_eos.pad_token = pad_is_eos.eos_token
    n_tokens = len(pad_is_eos)
    texts = ["Wait, let me check this again. Maybe it is 7.", "Hmm, perhaps not; therefore 8!!"]
    joined = texts[0] + K.EOS + texts[1]
    assert len(texts[0]) == 45 and len(joined) == 81  # pieces of 5 characters; EOS is piece 9
    with caplog.at_level("WARNING", logger="reasonlens.data"):
        frame = data.pack_transformer_lens(texts, pad_is_eos, context_size=128)
    (row,) = frame.tokens.tolist()
    ids = sum((tokenizer(joined[i:i + 5], add_special_tokens=False)["input_ids"]
               for i in range(0, 81, 5)), [])
    assert tokenizer.eos_token_id in ids and len(ids) < 128
    # the EOS survives (the pad is a new <PAD>, id len(tokenizer)); the short row is padded
    assert row.tolist() == ids + [n_tokens] * (128 - len(ids))
    assert "1 of 1 contexts end in padding" in caplog.text
    assert len(pad_is_eos) == n_tokens and pad_is_eos.pad_token == pad_is_eos.eos_token


def test_pack_transformer_lens_errors(tokenizer):
    with pytest.raises(ValueError, match="texts is empty"):
        data.pack_transformer_lens([], tokenizer, 16)
    with pytest.raises(ValueError, match="n_shards=0"):
        data.pack_transformer_lens(["a"], tokenizer, 16, n_shards=0)
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        data.pack_transformer_lens(["a"], no_eos, 16)


def test_shuffle_contexts_is_datasets_shuffle():
    import datasets
    frame = pd.DataFrame({"tokens": [np.array([i, i]) for i in range(11)]})
    expected = datasets.Dataset.from_dict({"i": list(range(11))}).shuffle(seed=42)["i"]
    shuffled = data.shuffle_contexts(frame, seed=42)
    assert [int(t[0]) for t in shuffled.tokens] == expected
    assert list(shuffled.index) == list(range(11))


def test_cap_contexts_keeps_ceil_of_tokens_over_context_size():
    frame = pd.DataFrame({"tokens": [np.array([i] * 4) for i in range(10)]})
    kept = data.cap_contexts(frame, max_tokens=9, seed=3)  # ceil(9 / 4) = 3 rows
    values = [int(t[0]) for t in kept.tokens]
    assert len(values) == 3 and len(set(values)) == 3
    assert values == [int(t[0]) for t in data.cap_contexts(frame, 9, seed=3).tokens]
    assert values == random.Random(3).sample(range(10), 3)  # the reference's random.sample
    everything = [int(t[0]) for t in data.cap_contexts(frame, 10**9, seed=3).tokens]
    assert sorted(everything) == list(range(10))
    assert [int(t[0]) for t in data.cap_contexts(frame, None).tokens] == list(range(10))
    with pytest.raises(ValueError, match="max_tokens=0"):
        data.cap_contexts(frame, 0)


def real_documents_table(n_traces=12, n_chats=9):
    traces = real_texts(n_traces)
    chats = [f"{K.USER}Hi {i}.{K.ASSISTANT}Hello {i}, maybe." for i in range(n_chats)]
    # record_idx numbers each source; rows arrive shuffled, as load_mixed_texts gives them
    table = pd.DataFrame({"text": traces + chats, "kind": ["trace"] * n_traces + ["chat"] * n_chats,
                          "record_idx": list(range(n_traces)) + list(range(n_chats))})
    table = table.sample(frac=1.0, random_state=5).reset_index(drop=True)
    return table.assign(split="train", doc_id=range(len(table)), problem_id=-1)


def test_real_contexts_pack_each_source_as_the_reference_then_mix(bos_tokenizer):
    documents = real_documents_table()
    cfg = data.RealContextConfig(context_size=16, max_tokens_per_source=None, seed=1)
    contexts = data.real_contexts(documents, bos_tokenizer, cfg)
    assert set(contexts) == {"reasoning_train", "base_train"}
    per_source = {}
    for kind, n in (("trace", 12), ("chat", 9)):
        texts = documents[documents.kind == kind].sort_values("record_idx").text.tolist()
        order = np.random.default_rng(42).permutation(n)  # Dataset.shuffle(seed=42)
        per_source[kind] = plain_tl_packing([texts[i] for i in order], bos_tokenizer, 16, 10)
    reasoning = [t.tolist() for t in contexts["reasoning_train"].tokens]
    assert sorted(reasoning) == sorted(per_source["trace"] + per_source["chat"])
    assert reasoning != per_source["chat"] + per_source["trace"]  # shuffled together
    assert sorted(t.tolist() for t in contexts["base_train"].tokens) == sorted(per_source["chat"])
    again = data.real_contexts(documents.sample(frac=1.0, random_state=9), bos_tokenizer, cfg)
    assert [t.tolist() for t in again["reasoning_train"].tokens] == reasoning


def test_real_contexts_cap_each_source_and_split(bos_tokenizer):
    documents = real_documents_table(40, 30)
    documents.loc[documents.index[:10], "split"] = "val"
    cfg = data.RealContextConfig(context_size=16, max_tokens_per_source=40, n_shards=1)
    contexts = data.real_contexts(documents, bos_tokenizer, cfg)
    assert set(contexts) == {"reasoning_train", "base_train", "reasoning_val", "base_val"}
    assert len(contexts["base_train"]) == 3  # ceil(40 / 16) chat contexts
    assert len(contexts["reasoning_train"]) == 6  # and 3 trace contexts
    uncapped = data.real_contexts(documents, bos_tokenizer,
                                  cfg.replace(max_tokens_per_source=None))
    full = {tuple(t.tolist()) for t in uncapped["reasoning_train"].tokens}
    assert {tuple(t.tolist()) for t in contexts["reasoning_train"].tokens} <= full
    assert len(full) > 6


def test_real_contexts_reasonlens_packing_option(tokenizer):
    documents = real_documents_table()
    cfg = data.RealContextConfig(context_size=16, packing="reasonlens",
                                 max_tokens_per_source=None)
    contexts = data.real_contexts(documents, tokenizer, cfg)
    flat = np.concatenate(contexts["base_train"].tokens.to_numpy())
    # each chat wrapped in BOS ... EOS: the boundaries pair up
    assert (flat == tokenizer.bos_token_id).sum() >= 8
    chats = documents[documents.kind == "chat"].text
    wrapped = [tokenizer(f"{K.BOS}{t}{K.EOS}", add_special_tokens=False)["input_ids"]
               for t in chats]
    assert len(flat) == sum(map(len, wrapped)) // 16 * 16
    with pytest.raises(ValueError, match="documents lack column"):
        data.real_contexts(documents.drop(columns="split"), tokenizer, cfg)


@pytest.mark.parametrize("overrides, match", [
    ({"packing": "sae_lens"}, "packing='sae_lens'.*transformer_lens"),
    ({"context_size": 4}, "context_size=4"),
    ({"n_shards": 0}, "n_shards=0"),
    ({"max_tokens_per_source": 0}, "max_tokens_per_source=0"),
    ({"max_tokens_per_source": 1.5}, "max_tokens_per_source=1.5"),
    ({"is_bos_added": "no"}, "is_bos_added"),
    ({"shuffle_seed": -1}, "shuffle_seed=-1"),
])
def test_real_context_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        data.RealContextConfig(**overrides)


def test_real_context_config_defaults_are_the_reference():
    cfg = data.RealContextConfig()
    assert (cfg.context_size, cfg.packing, cfg.is_bos_added, cfg.n_shards) == (
        1024, "transformer_lens", False, 10)
    assert (cfg.max_tokens_per_source, cfg.shuffle_seed) == (800_000_000, 42)
    assert data.RealContextConfig.from_dict(cfg.to_dict()) == cfg
