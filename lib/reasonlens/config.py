"""Config dataclasses that check themselves, and profiles (YAML files of notebook parameters).

Every computation takes one frozen dataclass config whose defaults are the paper's (or the toy
world's) values. ``to_dict``/``from_dict`` round-trip them; an unknown key is an error that lists the
valid ones. A *profile* (``profiles/<name>.yaml``) is a flat mapping of notebook parameters.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C", bound="Config")


def repo_root() -> Path:
    """The checkout this library lives in (lib/reasonlens/config.py -> repo root)."""
    return Path(__file__).resolve().parents[2]


def home() -> Path:
    """Where runs, figures and builds go: ``$REASONLENS_HOME`` or the repo root."""
    return Path(os.environ.get("REASONLENS_HOME", repo_root())).resolve()


def profiles_dir() -> Path:
    return Path(os.environ.get("REASONLENS_PROFILES", repo_root() / "profiles"))


class Config:
    """Mixin for frozen dataclass configs: dict round trip with strict keys."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(
                f"{cls.__name__} got unknown parameter(s) {unknown}. Valid parameters: {valid}."
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = values[f.name]
                # YAML and JSON give lists where the dataclass holds tuples.
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Config):
        return value.to_dict()
    return value


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                hint: str = "") -> None:
    """Raise ValueError naming ``name`` unless ``low <= value <= high``."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name}={value!r} is outside {bounds}.{(' ' + hint) if hint else ''}")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name: str) -> dict[str, Any]:
    """Read ``profiles/<name>.yaml`` (or a path to a YAML file) into a flat parameter mapping.

    Raises:
        FileNotFoundError: the profile does not exist; the message lists the available ones.
        ValueError: the file is not a flat mapping of parameter names to values.
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"profile={name!r} not found at {path}. Available profiles: {available_profiles()}; "
            f"or pass a path to a YAML file of notebook parameters."
        )
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ValueError(f"profile {path} must be a mapping of parameter names to values.")
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise ValueError(f"profile {path}: parameters {nested} are mappings; profiles are flat.")
    values.setdefault("profile", path.stem)
    return values
