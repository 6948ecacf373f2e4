"""A minimal client for any OpenAI-compatible ``/chat/completions`` endpoint (urllib only).

Shared by the LLM answer judge (``answers.LLMVerifier``, notebook 07) and the N2G latent
labeller (``step_sae.n2g_labels.LLMLabeller``, notebook 08). The key is passed in by the caller,
who reads it from the environment; nothing here reads a profile.

Example:
    >>> client = ChatClient("http://127.0.0.1:8000/v1", "my-model")  # doctest: +SKIP
    >>> client.ask("Say hi.", system="Be brief.")  # doctest: +SKIP
    'Hi.'
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


class ChatClient:
    """One model at one OpenAI-compatible endpoint, asked one conversation at a time.

    Args:
        base_url: the endpoint's base URL (``/chat/completions`` is appended), e.g.
            ``https://openrouter.ai/api/v1``.
        model: the model's name at that endpoint.
        api_key: a bearer token, or None (no ``Authorization`` header).
        temperature: sampling temperature sent with every request.
        max_tokens: the reply's token limit sent with every request.
        max_retries: attempts before giving up.
        timeout_s: seconds per request.
        name: what the client is called in log lines and errors (e.g. ``"LLM verifier"``).
        hint: appended to the give-up error, e.g. how to run without the client.
        backoff_s: the wait after failed attempt ``i`` (from 0) is ``min(backoff_s * 2**i, 30)``
            seconds.

    Raises:
        ValueError: ``max_retries`` below 1.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 1024, max_retries: int = 5,
                 timeout_s: float = 120.0, name: str = "chat endpoint", hint: str = "",
                 backoff_s: float = 1.0):
        if max_retries < 1:
            raise ValueError(f"max_retries={max_retries!r} must be at least 1.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_retries, self.timeout_s = max_retries, timeout_s
        self.name, self.hint, self.backoff_s = name, hint, backoff_s

    def complete(self, messages: Sequence[Mapping[str, str]], **extra) -> str:
        """The reply (its first choice's content, stripped) to a list of chat messages.

        Args:
            messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.
            extra: more request fields, e.g. ``response_format={"type": "json_object"}``,
                ``top_p=1.0``.

        Returns:
            The reply's text.

        Raises:
            RuntimeError: no well-formed reply after ``max_retries`` attempts (HTTP or network
                errors, or a body without ``choices[0].message.content``); the message names the
                endpoint, the last error and ``hint``.
        """
        body = json.dumps({"model": self.model, "temperature": self.temperature,
                           "max_tokens": self.max_tokens, "messages": list(messages),
                           **extra}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        error = None
        for attempt in range(self.max_retries):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers)
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read())
                return str(reply["choices"][0]["message"]["content"]).strip()
            except (OSError, KeyError, IndexError, TypeError, ValueError) as err:
                error = err  # HTTP, network, malformed reply
                log.warning("%s attempt %d at %s failed: %s", self.name, attempt + 1, self.url,
                            err)
                time.sleep(min(self.backoff_s * 2 ** attempt, 30))
        raise RuntimeError(f"the {self.name} at {self.url} did not answer after "
                           f"{self.max_retries} attempts ({error}){self.hint}")

    def ask(self, prompt: str, system: str | None = None, **extra) -> str:
        """The reply to one user message, after an optional system message (see ``complete``)."""
        messages = [{"role": "system", "content": system}] if system is not None else []
        return self.complete(messages + [{"role": "user", "content": prompt}], **extra)
