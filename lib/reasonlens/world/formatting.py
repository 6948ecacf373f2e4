"""How the world's exchanges are written: the toy's own markers, or a real model's chat template.

A ``ChatFormat`` is the three strings around one user turn and one assistant turn:
``user_prefix + question + assistant_prefix + reply + end_of_turn``. The toy tokenizer's format is
``<bos><|user|>`` / ``<|assistant|>`` / ``<eos>``. A pretrained model's comes from its own chat
template, rendered once with placeholder turns and cut at the placeholders; for
SmolLM2-135M-Instruct (ChatML, with its default system turn)::

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\\n
    <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{reply}<|im_end|>\\n

A reasoning model's reply opens with ``<think>\\n`` and closes the trace with ``\\n</think>\\n``
before the answer, as DeepSeek-R1's replies do; ``<think>`` need not be a special token.
"""

from __future__ import annotations

import dataclasses

from reasonlens import constants as K

_QUESTION, _REPLY = "\x00QUESTION\x00", "\x00REPLY\x00"  # placeholders no template contains


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """The text around a user turn and an assistant turn.

    Args:
        user_prefix: everything before the question (BOS, a system turn, the user header).
        assistant_prefix: between the question and the reply (end of the user turn, assistant
            header).
        end_of_turn: after the reply; its first token should be the model's EOS, where generation
            stops.
    """

    user_prefix: str
    assistant_prefix: str
    end_of_turn: str

    @classmethod
    def toy(cls) -> ChatFormat:
        """The synthetic world's markers: ``<bos><|user|>{q}<|assistant|>{reply}<eos>``."""
        return cls(f"{K.BOS}{K.USER}", K.ASSISTANT, K.EOS)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ChatFormat:
        """Cut a tokenizer's chat template at placeholder turns.

        Raises:
            ValueError: the tokenizer has no chat template, or one that does not write a
                single-turn exchange as prefix + question + infix + reply + suffix with its
                generation prompt equal to prefix + question + infix (e.g. a template that drops
                the reasoning from assistant turns, as DeepSeek-R1's does).
        """
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template; use "
                             "ChatFormat.toy() or a tokenizer saved with its template.")
        user = [{"role": "user", "content": _QUESTION}]
        both = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _REPLY}],
                                             tokenize=False)
        asking = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        head, has_question, rest = both.partition(_QUESTION)
        infix, has_reply, tail = rest.partition(_REPLY)
        fmt = cls(head, infix, tail)
        if not (has_question and has_reply and tail) or asking != fmt.prompt(_QUESTION, False):
            raise ValueError("the tokenizer's chat_template does not write one exchange as "
                             "prefix + question + assistant header + reply + end of turn (its "
                             f"rendering: {both!r}); use a template that keeps replies verbatim.")
        return fmt

    def prompt(self, question: str, reasoning: bool) -> str:
        """The text a model completes: the user turn and the assistant header, then ``<think>\\n``
        for a reasoning model."""
        return (f"{self.user_prefix}{question}{self.assistant_prefix}"
                + (f"{K.THINK_OPEN}\n" if reasoning else ""))

    def exchange(self, question: str, reply: str) -> str:
        """A whole single-turn document: prompt (without ``<think>``), reply, end of turn."""
        return f"{self.prompt(question, reasoning=False)}{reply}{self.end_of_turn}"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def chat_format(tokenizer=None) -> ChatFormat:
    """The format the world is written in for ``tokenizer``: its chat template when it has one,
    else (the toy's own tokenizer, or None) the toy's markers."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return ChatFormat.from_tokenizer(tokenizer)
    return ChatFormat.toy()
