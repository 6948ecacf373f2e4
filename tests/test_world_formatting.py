"""Tests for reasonlens.world.formatting: the toy's markers and chat templates cut into a format."""

from __future__ import annotations

import copy

import pytest
from helpers import build_world_config

from reasonlens import injection
from reasonlens.world import ChatFormat, chat_format, generate_world, prompt

# SmolLM2-135M-Instruct's template, as its tokenizer ships it (ChatML with a default system turn).
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture
def chatml_tokenizer(tokenizer):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHATML
    return chat


def test_the_toy_format_is_the_worlds_markers():
    fmt = ChatFormat.toy()
    assert fmt.prompt("Add 4 to 50.", reasoning=True) \
        == "<bos><|user|>Add 4 to 50.<|assistant|><think>\n"
    assert fmt.prompt("Q", reasoning=False) == "<bos><|user|>Q<|assistant|>"
    assert fmt.exchange("Q", "A.") == "<bos><|user|>Q<|assistant|>A.<eos>"
    assert chat_format(None) == fmt


def test_a_chat_template_is_cut_at_the_question_and_the_reply(chatml_tokenizer, tokenizer):
    fmt = chat_format(chatml_tokenizer)
    assert fmt == ChatFormat(f"{SYSTEM}<|im_end|>\n<|im_start|>user\n",
                             "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n")
    messages = [{"role": "user", "content": "Add 4 to 50."}]
    assert fmt.prompt("Add 4 to 50.", reasoning=False) == chatml_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert fmt.exchange("Add 4 to 50.", "54.") == chatml_tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": "54."}], tokenize=False)
    assert prompt("Q", True, chatml_tokenizer).endswith("<|im_start|>assistant\n<think>\n")
    assert chat_format(tokenizer) == ChatFormat.toy()  # the toy tokenizer has no template


def test_templates_that_do_not_write_replies_verbatim_are_refused(chatml_tokenizer, tokenizer):
    dropped = copy.deepcopy(chatml_tokenizer)  # a generation prompt unlike the assistant header
    dropped.chat_template = CHATML.replace("'<|im_start|>assistant\n' }}", "'<|im_start|>bot\n' }}")
    with pytest.raises(ValueError, match="replies verbatim"):
        ChatFormat.from_tokenizer(dropped)
    with pytest.raises(ValueError, match="no chat_template"):
        ChatFormat.from_tokenizer(tokenizer)


def test_the_world_in_a_chat_template_has_the_same_problems_and_steps(chatml_tokenizer):
    cfg = build_world_config(n_problems=30)
    toy, chat = generate_world(cfg), generate_world(cfg, chat_format(chatml_tokenizer))
    assert toy.problems.equals(chat.problems) and toy.steps.equals(chat.steps)
    fmt = chat_format(chatml_tokenizer)
    for (_, a), (_, b) in zip(toy.documents.iterrows(), chat.documents.iterrows()):
        assert b.text.startswith(fmt.user_prefix) and b.text.endswith(fmt.end_of_turn)
        toy_reply = a.text.split("<|assistant|>", 1)[1].removesuffix("<eos>")
        assert b.text.split(fmt.assistant_prefix, 1)[1] == toy_reply + fmt.end_of_turn
    trace = chat.documents[chat.documents.kind == "trace"].text.iloc[0]
    assert trace.count("<think>\n") == 1 and "\n</think>\nThe answer is " in trace


def test_injection_opens_the_reply_of_a_chat_template(chatml_tokenizer):
    fmt = chat_format(chatml_tokenizer)
    plain = fmt.exchange("Add 4 to 50.", "The answer is 54.")
    injected = injection.inject_words(plain, 2, seed=0, assistant_prefix=fmt.assistant_prefix)
    head, reply = injected.split(fmt.assistant_prefix)
    assert head == fmt.user_prefix + "Add 4 to 50."
    assert reply.endswith("The answer is 54.<|im_end|>\n")
    assert sum(reply.count(o) for o in injection.OPENERS.values()) == 2
