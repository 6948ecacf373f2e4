"""The run directory: where each notebook's artifacts live, written atomically with a manifest.

``RunDir(profile)`` points at ``data/runs/<profile>/``. Artifacts are safetensors, JSON or Parquet,
written to a temporary name and renamed, each with ``<name>.manifest.json`` beside it recording the
config that made it, the library version and the git commit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

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
    constants.STEP_VOTING: "08_step_sae",
}


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
    """Yield a temporary sibling of ``path`` (file or directory); rename it into place on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


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
        """The path of an artifact that an earlier notebook must have written.

        Raises:
            FileNotFoundError: naming the notebook that writes it and the command that runs it.
        """
        path = self.path(name)
        if not path.exists():
            producer = PRODUCED_BY.get(name, PRODUCED_BY.get(_template_of(name), "an earlier notebook"))
            number = producer.split("_")[0]
            raise FileNotFoundError(
                f"{path} is missing; notebooks/{producer}.py writes it. "
                f"Run: python -m reasonlens.runner --profile {self.profile} --only {number}"
            )
        return path

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
        return pd.read_parquet(self.require(name))

    def read_json(self, name: str) -> Any:
        return json.loads(self.require(name).read_text())

    def manifest(self, name: str) -> dict:
        return json.loads(self.require(name.rstrip("/") + constants.MANIFEST_SUFFIX).read_text())


def _template_of(name: str) -> str:
    """Map e.g. ``contexts/train.parquet`` back to its template ``contexts/{split}.parquet``."""
    for template in PRODUCED_BY:
        if "{" in template:
            head, tail = template.split("{")[0], template.split("}")[1]
            if name.startswith(head) and name.endswith(tail):
                return template
    return name


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value)} to JSON")
