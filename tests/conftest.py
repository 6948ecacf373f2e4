"""One tiny world, tokenizer, model and SAE per session.

No fixture reseeds the global RNGs before each test: every random draw in the library takes its
seed from its config or a ``seed`` argument (tests/test_seeds.py checks it), so a test that
passes only under a lucky global RNG state is a bug to fix, not to hide.
"""

from __future__ import annotations

import copy
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import helpers  # noqa: E402
from reasonlens import data, models  # noqa: E402
from sae_lens import StandardSAE, StandardSAEConfig  # noqa: E402
from reasonlens.world import generate_world  # noqa: E402


@pytest.fixture(scope="session")
def world():
    return generate_world(helpers.build_world_config())


@pytest.fixture(scope="session")
def tokenizer(world):
    texts = data.mix_documents(world.documents, "train", data.MIXES["reasoning"])
    return data.train_tokenizer(texts, helpers.build_tokenizer_config())


@pytest.fixture(scope="session")
def toy_model(tokenizer):
    """A tiny, randomly initialised Llama-style LM for the world's tokenizer."""
    return models.build_toy_model(helpers.build_toy_model_config(), tokenizer, seed=0).eval()


@pytest.fixture(scope="session")
def saved_toy_model(tmp_path_factory, toy_model, tokenizer):
    path = tmp_path_factory.mktemp("toy") / "model"
    toy_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hooked(saved_toy_model):
    """``toy_model`` through TransformerLens."""
    return models.load_hooked(saved_toy_model, backend="transformer_lens")


@pytest.fixture(scope="session")
def contexts(world, tokenizer):
    """24 packed contexts of the world's reasoning mix (64 tokens each)."""
    texts = data.mix_documents(world.documents, "train", data.MIXES["reasoning"])
    frame = data.pack_contexts(data.tokenize(tokenizer, texts), helpers.build_context_config())
    return data.contexts_tensor(frame)[:24]


@pytest.fixture(scope="session")
def fitted(hooked, contexts):
    """``hooked`` after 30 Adam steps on 8 contexts (about a second): unlike the random one, its
    next-token loss is far below uniform, and zero-ablating a layer costs a lot of it."""
    fitted = copy.deepcopy(hooked)
    optimizer = torch.optim.Adam(fitted.model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = fitted.model(contexts[:8], return_type="loss")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return fitted


@pytest.fixture(scope="session")
def sae():
    """A random SAE (d_sae 64) at blocks.1.hook_resid_post of ``toy_model``, decoder not unit-norm."""
    cfg = StandardSAEConfig(d_in=32, d_sae=64)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    with torch.random.fork_rng(), torch.no_grad():  # seeded here, the tests' RNG left alone
        torch.manual_seed(3)
        sae = StandardSAE(cfg)
        sae.W_enc.copy_(torch.randn(32, 64) * 0.3)
        sae.W_dec.copy_(torch.randn(64, 32) * 0.5)  # unit norms deliberately not folded
        sae.b_enc.copy_(torch.randn(64) * 0.1)
    return sae.eval()


@pytest.fixture(scope="session")
def browser():
    """The headless-Chromium helper module; the test is skipped when Chromium or d3 are missing."""
    import chromium

    reason = chromium.missing()
    if reason is not None:
        pytest.skip(f"headless Chromium is not available: {reason}")
    return chromium


@pytest.fixture(scope="session")
def step_table(world):
    """The world's training steps as a step-SAE step table."""
    from reasonlens.step_sae import data as step_data

    return step_data.world_step_table(world.steps, world.problems, splits=("train",))


@pytest.fixture()
def step_tokenizer(tokenizer):
    return copy.deepcopy(tokenizer)  # StepSAE.build adds <sep> to it


@pytest.fixture(scope="module")
def tiny_step_sae(toy_model, tokenizer):
    """An untrained step SAE on the toy LM (8 latents) and its tokenizer (with ``<sep>``); one per
    test module."""
    from reasonlens.step_sae.model import StepSAE, StepSAEConfig

    cfg = StepSAEConfig(n_latents=8, l1_target=1.5, d_projection=16, max_context_tokens=24,
                        max_step_tokens=12)
    tok = copy.deepcopy(tokenizer)
    return StepSAE.build(toy_model, tok, cfg, seed=0).eval(), tok


class ChatEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible ``/chat/completions`` endpoint on localhost: it replies with the next
    of ``replies`` (an int: that HTTP error), then with ``default``, and keeps what it was sent as
    ``(path, Authorization header, body)``."""

    seen: list = []
    replies: list = []
    default = ""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Authorization"), body))
        content = self.replies.pop(0) if self.replies else self.default
        if isinstance(content, int):
            self.send_error(content)
            return
        reply = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_endpoint():
    """``(base URL, ChatEndpoint)`` of a fresh local endpoint; set ``replies``/``default``."""
    ChatEndpoint.seen, ChatEndpoint.replies, ChatEndpoint.default = [], [], ""
    server = HTTPServer(("127.0.0.1", 0), ChatEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", ChatEndpoint
    server.shutdown()
    server.server_close()
