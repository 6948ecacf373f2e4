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


def test_real_documents_wrap_texts_and_split_them(tokenizer):
    mixed = pd.DataFrame({"text": [f"t{i}" for i in range(50)], "kind": ["trace", "chat"] * 25})
    docs = data.real_documents(mixed, tokenizer, seed=1)
    assert docs.text.str.startswith(K.BOS).all() and docs.text.str.endswith(K.EOS).all()
    assert docs.split.value_counts().to_dict() == {"train": 40, "val": 5, "test": 5}
    assert list(docs.kind) == list(mixed.kind)
    with pytest.raises(ValueError, match="mixed is empty"):
        data.real_documents(mixed.head(0), tokenizer)
