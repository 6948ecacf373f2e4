"""The run directory: where each notebook's artifacts live, written atomically with a manifest.

``RunDir(profile)`` points at ``data/runs/<profile>/``. Artifacts are safetensors, JSON or Parquet,
written to a temporary name and renamed, each with ``<name>.manifest.json`` beside it recording the
config that made it, the library version and the git commit.

Reading checks what it can cheaply: an artifact that is truncated or corrupt (a Parquet file cut
short, a safetensors file whose header does not match its size, JSON that does not parse) raises
:class:`CorruptArtifactError`, naming the file and the runner command that rewrites it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from reasonlens import __version__, constants
from reasonlens.config import Config, home, repo_root

# Which notebook writes which artifact, for the error raised when one is missing.
PRODUCED_BY = {
    constants.PROBLEMS: "01_data",
    constants.STEPS: "01_data",
    constants.DOCUMENTS: "01_data",
    constants.TOKENIZER_DIR: "01_data",
    constants.CONTEXTS: "01_data",
    constants.REASONING_MODEL_DIR: "02_model",
    constants.BASE_MODEL_DIR: "02_model",
    constants.MODEL_HISTORY: "02_model",
    constants.MODEL_EVAL: "02_model",
    constants.MODEL_COMPLETIONS: "02_model",
    constants.SAE_DIR: "03_train_sae",
    constants.SAE_EVAL: "03_train_sae",
    constants.SAE_HISTORY: "03_train_sae",
    constants.REASON_SCORES: "04_reason_score",
    constants.WINDOW_SHARES: "04_reason_score",
    constants.MAX_ACTIVATIONS: "05_features",
    constants.FEATURE_MAP: "05_features",
    constants.DASHBOARDS_DIR: "05_features",
    constants.STEERED_COMPLETIONS: "06_steering",
    constants.EVAL_COMPLETIONS: "07_evaluation",
    constants.EVAL_CONDITIONS: "07_evaluation",
    constants.EVAL_SITES: "07_evaluation",
    constants.EVAL_VALIDATION: "07_evaluation",
    constants.EVAL_HEADLINE: "07_evaluation",
    constants.EVAL_DECISION: "07_evaluation",
    constants.MODEL_DIFF: "07_evaluation",
    constants.INJECTION: "07_evaluation",
    constants.INJECTION_EFFECTS: "07_evaluation",
    constants.HARNESS_RESULTS: "07_evaluation",
    constants.STEP_SAE_DIR: "08_step_sae",
    constants.STEP_SAE_HISTORY: "08_step_sae",
    constants.STEP_SAE_EVAL: "08_step_sae",
    constants.STEP_PROBES: "08_step_sae",
    constants.STEP_PATTERNS: "08_step_sae",
    constants.STEP_PATTERN_EVAL: "08_step_sae",
    constants.STEP_LABELS: "08_step_sae",
    constants.STEP_VOTING: "08_step_sae",
}


class CorruptArtifactError(ValueError):
    """An artifact exists but cannot be read: it is truncated, corrupt or half-written.

    The message names the file, what is wrong with it, and the notebook and runner command that
    rewrite it.
    """


def producer_of(name: str) -> str | None:
    """The notebook that writes artifact ``name``, or None when :data:`PRODUCED_BY` does not say.

    ``name`` may also be a concrete name of a template (``contexts/train.parquet``), a file inside a
    directory artifact (``sae/trained/cfg.json``) or an artifact's manifest.
    """
    name = name.removesuffix(constants.MANIFEST_SUFFIX).rstrip("/")
    for template, notebook in PRODUCED_BY.items():
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(f"{pattern}(/.+)?", name):
            return notebook
    return None


def git_hash() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has changes), or None outside git."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=repo_root(), capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        return run("rev-parse", "HEAD") + ("-dirty" if run("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (file or directory); rename it into place on success.

    The temporary lives in ``.<name>.tmp-<pid>-<random>/`` beside ``path``. An existing directory
    at ``path`` is renamed away before the new one is renamed in, so ``path`` holds at every moment
    the old artifact whole, the new one whole, or nothing. A process killed before the rename leaves
    its temporary behind; :meth:`RunDir.remove_stale_temporaries` deletes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    tmp = work / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            os.replace(path, work / f"{path.name}.old")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class RunDir:
    """Artifacts of one profile's run: ``<home>/data/runs/<profile>/``.

    Example:
        >>> run = RunDir("smoke")
        >>> run.write("world/problems.parquet", frame, config=world_cfg)  # doctest: +SKIP
        >>> run.read_parquet("world/problems.parquet")  # doctest: +SKIP
    """

    def __init__(self, profile: str, root: str | Path | None = None):
        self.profile = profile
        self.root = Path(root) if root is not None else home() / "data" / "runs" / profile
        self.figures_dir = (
            self.root / "figures" if root is not None else home() / "figures" / profile
        )

    def __repr__(self) -> str:
        return f"RunDir(profile={self.profile!r}, root='{self.root}')"

    def path(self, name: str) -> Path:
        return self.root / name

    def require(self, name: str) -> Path:
        """The path of an artifact that an earlier notebook must have written, checked whole.

        A file, or every file of a directory artifact, is checked by its suffix: a ``.parquet``
        must have Parquet's magic bytes and a footer that fits, a ``.safetensors`` a JSON header
        whose tensors fill exactly the rest of the file, a ``.json`` must parse.

        Raises:
            FileNotFoundError: naming the notebook that writes it and the command that runs it.
            CorruptArtifactError: naming the truncated or corrupt file and the command that
                rewrites it.
        """
        path = self._existing(name)
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            check = _CHECKS.get(file.suffix) if file.is_file() else None
            problem = check(file) if check else None
            if problem:
                raise self._corrupt(name, file, problem)
        return path

    def _existing(self, name: str) -> Path:
        path = self.path(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; {self._rerun_hint(name, 'writes')}")
        return path

    def _corrupt(self, name: str, file: Path, problem: str) -> CorruptArtifactError:
        return CorruptArtifactError(
            f"{file} is truncated or corrupt: {problem}. {self._rerun_hint(name, 'rewrites')}"
        )

    def _rerun_hint(self, name: str, verb: str) -> str:
        """Which notebook writes ``name``, and the command that runs it again.

        ``verb`` is "writes" (missing) or "rewrites" (corrupt: the command adds ``--force``, as the
        runner's record may still call that notebook up to date).
        """
        producer = producer_of(name)
        if producer is None:
            return (f"an earlier notebook {verb} it. Run: python -m reasonlens.runner --profile "
                    f"{self.profile} (it reruns every notebook whose outputs changed)")
        force = " --force" if verb == "rewrites" else ""
        return (f"notebooks/{producer}.py {verb} it. Run: python -m reasonlens.runner "
                f"--profile {self.profile} --only {producer.split('_')[0]}{force}")

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries that :func:`atomic_path` left behind in processes now gone.

        A process killed while writing (SIGKILL, a crash, a power cut) leaves its
        ``.<name>.tmp-<pid>-<random>/`` directory; those of running processes are kept.

        Returns:
            The directories removed.
        """
        removed = []
        for dirpath, dirnames, _ in os.walk(self.root):
            for dirname in [d for d in dirnames if _TEMPORARY.fullmatch(d)]:
                dirnames.remove(dirname)
                if not _is_running(int(_TEMPORARY.fullmatch(dirname).group(1))):
                    shutil.rmtree(Path(dirpath, dirname), ignore_errors=True)
                    removed.append(Path(dirpath, dirname))
        return removed

    def model_path(self, model_name: str | None = None, base: bool = False) -> str:
        """A real profile's model (hub id or local path), else the toy model of notebook 02."""
        if model_name:
            return model_name
        return str(self.require(constants.BASE_MODEL_DIR if base else constants.REASONING_MODEL_DIR))

    def figure(self, name: str) -> Path:
        """Where to save figure ``name`` (a .png is added when no suffix is given)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        return self.figures_dir / (name if Path(name).suffix else f"{name}.png")

    # --- writing ---------------------------------------------------------------------------
    def write(self, name: str, obj: Any, config: Config | dict | None = None) -> Path:
        """Write a DataFrame (.parquet) or a JSON-able object (.json) atomically, with a manifest."""
        path = self.path(name)
        with atomic_path(path) as tmp:
            if name.endswith(".parquet"):
                if not isinstance(obj, pd.DataFrame):
                    raise TypeError(f"{name}: a .parquet artifact takes a DataFrame, got {type(obj)}")
                obj.to_parquet(tmp, index=False)
            elif name.endswith(".json"):
                tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))
            else:
                raise ValueError(f"{name}: write() handles .parquet and .json; use write_dir().")
        self.write_manifest(name, config)
        return path

    @contextlib.contextmanager
    def write_dir(self, name: str, config: Config | dict | None = None) -> Iterator[Path]:
        """Yield a temporary directory to fill (e.g. with ``save_pretrained``); renamed on success."""
        with atomic_path(self.path(name)) as tmp:
            tmp.mkdir()
            yield tmp
        self.write_manifest(name, config)

    def write_manifest(self, name: str, config: Config | dict | None) -> None:
        manifest = {
            "artifact": name,
            "profile": self.profile,
            "config": config.to_dict() if isinstance(config, Config) else (config or {}),
            "config_class": type(config).__name__ if isinstance(config, Config) else None,
            "library_version": __version__,
            "git_hash": git_hash(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        target = self.path(name.rstrip("/") + constants.MANIFEST_SUFFIX)
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, default=_json_default))

    # --- reading ---------------------------------------------------------------------------
    def read_parquet(self, name: str) -> pd.DataFrame:
        """Read a Parquet artifact.

        Raises:
            FileNotFoundError: it is missing (see :meth:`require`).
            CorruptArtifactError: it is truncated or corrupt.
        """
        path = self.require(name)
        try:
            return pd.read_parquet(path)
        except (pa.ArrowException, OSError) as exc:
            reason = " ".join(str(exc).split())
            raise self._corrupt(name, path, f"pyarrow cannot read it ({reason})") from exc

    def read_json(self, name: str) -> Any:
        """Read a JSON artifact.

        Raises:
            FileNotFoundError: it is missing (see :meth:`require`).
            CorruptArtifactError: it is not valid JSON (e.g. cut short).
        """
        path = self._existing(name)
        try:
            return json.loads(path.read_bytes())
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise self._corrupt(name, path, f"it is not valid JSON ({exc})") from exc

    def manifest(self, name: str) -> dict:
        """The manifest written beside artifact ``name``; raises as :meth:`read_json`."""
        return self.read_json(name.rstrip("/") + constants.MANIFEST_SUFFIX)


_TEMPORARY = re.compile(r"\..+\.tmp-(\d+)-\w+")  # atomic_path's work directories


def _is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS), or it exited meanwhile
        return True


def _parquet_problem(path: Path) -> str | None:
    size = path.stat().st_size
    if size < 12:
        return f"it holds {size} bytes, fewer than any Parquet file"
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-8, os.SEEK_END)
        tail = f.read(8)
    if head != b"PAR1" or tail[4:] != b"PAR1":
        return "Parquet's magic bytes are missing at its start or end (it was cut short)"
    footer = int.from_bytes(tail[:4], "little")
    if footer + 12 > size:
        return f"its footer claims {footer} bytes, more than the file's {size}"
    return None


_SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2,
                           "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8,
                           "U64": 8, "F64": 8}


def _safetensors_problem(path: Path) -> str | None:
    """Check the header against the file, as the format requires: tensors tile the data exactly."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n_header = int.from_bytes(f.read(8), "little")
        if size < 8 or 8 + n_header > size:
            return f"its header length ({n_header} bytes) does not fit in the file's {size} bytes"
        raw = f.read(n_header)
    try:
        header = json.loads(raw)
        tensors = sorted((int(entry["data_offsets"][0]), int(entry["data_offsets"][1]), key,
                          entry["dtype"], [int(n) for n in entry["shape"]])
                         for key, entry in header.items() if key != "__metadata__")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"its header is not a valid safetensors header ({type(exc).__name__}: {exc})"
    position = 0  # where the next tensor must start: tensors tile the data, in order, no gaps
    for begin, end, key, dtype, shape in tensors:
        n_bytes = (math.prod(shape) * _SAFETENSORS_DTYPE_BYTES[dtype]
                   if dtype in _SAFETENSORS_DTYPE_BYTES else end - begin)
        if begin != position or end - begin != n_bytes:
            return (f"its header places tensor {key!r} ({dtype}, shape {shape}: {n_bytes} bytes) "
                    f"at data bytes {begin}-{end}, where bytes {position}-{position + n_bytes} "
                    f"were due")
        position = end
    if position != size - 8 - n_header:
        return (f"its header places {position} bytes of tensor data, "
                f"the file holds {size - 8 - n_header}")
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return f"it is not valid JSON ({exc})"
    return None


_CHECKS = {".parquet": _parquet_problem, ".safetensors": _safetensors_problem,
           ".json": _json_problem}


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value)} to JSON")
