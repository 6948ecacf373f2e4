"""Config dataclasses that check themselves, and profiles (YAML files of notebook parameters).

Every computation takes one frozen dataclass config whose defaults are the paper's (or the toy
world's) values. ``to_dict``/``from_dict`` round-trip them; an unknown key is an error that lists the
valid ones. A *profile* (``profiles/<name>.yaml``) is a flat mapping of notebook parameters.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
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
    """Mixin for frozen dataclass configs: dict round trip with strict keys, numbers checked.

    Every subclass checks, before its own ``__post_init__`` runs, that each field annotated ``int``
    or ``float`` (optionally ``| None``) holds a number of that kind, so a string such as ``'5e-5'``
    is refused with a ValueError naming the field instead of failing later with a TypeError.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self) -> None:
            check_numeric_fields(self)
            if own is not None:
                own(self)

        cls.__post_init__ = __post_init__

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


_NUMERIC_ANNOTATIONS = {"int": numbers.Integral, "float": numbers.Real}


def check_numeric_fields(cfg: Any) -> None:
    """Raise ValueError naming the field when an ``int``/``float`` field of a dataclass holds no number.

    ``int`` fields need an integer, ``float`` fields any real number; ``X | None`` fields may be
    None; bools are not numbers here.
    """
    for f in dataclasses.fields(cfg):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        optional = annotation.endswith(" | None")
        kind = _NUMERIC_ANNOTATIONS.get(annotation.removesuffix(" | None"))
        value = getattr(cfg, f.name)
        if kind is None or (optional and value is None):
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            want = "an integer" if kind is numbers.Integral else "a number"
            raise ValueError(
                f"{type(cfg).__name__}: {f.name}={value!r} is a {type(value).__name__}, not "
                f"{want}. Give {want}{', e.g. 5e-5' if want == 'a number' else ''}; in a profile "
                f"write it unquoted."
            )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Config):
        return value.to_dict()
    return value


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                hint: str = "") -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a real number with ``low <= value <= high``.

    Raises:
        ValueError: ``value`` is not a real number (a string such as ``'5e-5'``, a bool, None), is
            NaN, or lies outside the bounds; the message names ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name}={value!r} is a {type(value).__name__}, not a number. Give a number, e.g. "
            f"{name}: 5.0e-5 in a profile or {name}=5e-5 in Python.{(' ' + hint) if hint else ''}"
        )
    if value != value:
        raise ValueError(f"{name}=nan is not a number.{(' ' + hint) if hint else ''}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name}={value!r} is outside {bounds}.{(' ' + hint) if hint else ''}")


class ProfileLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 (and every other tool) does.

    PyYAML implements YAML 1.1, whose float needs a dot: it reads ``5e-5`` and ``1E3`` as strings.
    Here ``5e-5``, ``1E3``, ``.5``, ``+2.5e+3`` are floats, as in JSON, Python and YAML 1.2;
    plain integers stay ints.
    """


ProfileLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"
               r"|^[-+]?\.[0-9_]+$"),
    list("-+.0123456789"),
)


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
    values = yaml.load(path.read_text(), Loader=ProfileLoader) or {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ValueError(f"profile {path} must be a mapping of parameter names to values.")
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise ValueError(f"profile {path}: parameters {nested} are mappings; profiles are flat.")
    values.setdefault("profile", path.stem)
    return values
