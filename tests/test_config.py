"""Tests for reasonlens.config: profiles read numbers as numbers, and configs refuse non-numbers."""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil

import pytest

import reasonlens
from reasonlens import config, runner


@pytest.mark.parametrize("text, expected", [
    ("5e-5", 5e-5), ("5E-5", 5e-5), ("1E3", 1000.0), ("1e3", 1000.0), (".5", 0.5), ("-.5", -0.5),
    ("+2.5e+3", 2500.0), ("5.0e-5", 5e-5), ("1.5", 1.5), ("3", 3), ("-3", -3), ("1_000", 1000),
])
def test_profiles_read_the_usual_spellings_of_numbers_as_numbers(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(f"sae_lr: {text}\n")
    value = config.load_profile(str(path))["sae_lr"]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text, expected", [("'5e-5'", "5e-5"), ("1e", "1e"), ("e5", "e5"),
                                            ("1.2.3", "1.2.3"), ("abc", "abc"),
                                            ("5e-5x", "5e-5x")])
def test_profiles_keep_non_numbers_as_strings(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: {text}\n")
    assert config.load_profile(str(path))["name"] == expected


@pytest.mark.parametrize("value", ["5e-5", True, None, [1]])
def test_check_range_names_the_parameter_for_a_non_number(value):
    with pytest.raises(ValueError, match=r"^sae_lr=.* not a number"):
        config.check_range("sae_lr", value, 0)


def test_check_range_refuses_nan_and_out_of_range_values():
    with pytest.raises(ValueError, match="alpha=nan"):
        config.check_range("alpha", math.nan, 0, 1)
    with pytest.raises(ValueError, match=r"alpha=1.5 is outside \[0, 1\]"):
        config.check_range("alpha", 1.5, 0, 1)
    config.check_range("alpha", 1, 0, 1)  # ints and bounds themselves are fine


def _configs():
    for info in pkgutil.walk_packages(reasonlens.__path__, "reasonlens."):
        importlib.import_module(info.name)
    found, todo = [], list(config.Config.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


def _numeric_fields():
    """(config class, field name, default) for every int/float field of every library config."""
    for cls in _configs():
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                yield pytest.param(cls, f.name, default, id=f"{cls.__name__}.{f.name}")


NUMERIC_FIELDS = list(_numeric_fields())


def test_every_config_with_numbers_is_covered():
    names = {p.values[0].__name__ for p in NUMERIC_FIELDS}
    assert {"SAETrainConfig", "ReasonScoreConfig", "StepSAETrainConfig", "WorldConfig",
            "LMTrainConfig", "VotingConfig"} <= names


@pytest.mark.parametrize("cls, name, default", NUMERIC_FIELDS)
def test_every_numeric_config_field_refuses_a_string_naming_the_field(cls, name, default):
    with pytest.raises(ValueError, match=rf"{name}='5e-5' is a str"):
        cls(**{name: "5e-5"})


@pytest.mark.parametrize("cls, name, default", [p for p in NUMERIC_FIELDS
                                                if isinstance(p.values[2], int)])
def test_integer_config_fields_refuse_floats(cls, name, default):
    with pytest.raises(ValueError, match=rf"{name}={float(default)!r} is a float, not an integer"):
        cls(**{name: float(default)})


def test_a_quoted_number_is_refused_before_any_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLENS_HOME", str(tmp_path / "home"))
    profile = tmp_path / "quoted.yaml"
    profile.write_text("n_problems: 120\nsae_lr: '5e-5'\n")
    with pytest.raises(ValueError, match=r"sae_lr='5e-5' is a str, but 03_train_sae expects a "
                                         r"number .*e\.g\. sae_lr: "):
        runner.run(str(profile), build=False)
    assert not (tmp_path / "home").exists()  # refused before anything ran or was written


def test_whole_floats_reach_integer_parameters_as_ints():
    notebooks = runner.discover_notebooks(config.repo_root() / "notebooks")
    values = runner.check_profile({"profile": "p", "training_tokens": 8.192e6, "sae_lr": 5e-5,
                                   "n_problems": 1E3}, notebooks)
    assert values["training_tokens"] == 8192000 and type(values["training_tokens"]) is int
    assert values["n_problems"] == 1000 and type(values["n_problems"]) is int
    assert values["sae_lr"] == 5e-5


def test_parameter_defaults_are_read_from_the_parameters_cell(tmp_path):
    path = tmp_path / "01_x.py"
    path.write_text('# %% tags=["parameters"]\nprofile = "x"\nlr = 5e-5\nn: int = 3\n'
                    'a, b = 1, 2\nwindow = (1, 2)\nnow = len("ab")\n')
    defaults = runner.read_parameters(path)
    assert list(defaults) == ["profile", "lr", "n", "a", "b", "window", "now"]
    assert defaults["lr"] == 5e-5 and defaults["n"] == 3 and defaults["window"] == (1, 2)
    assert defaults["a"] is runner.NOT_LITERAL and defaults["now"] is runner.NOT_LITERAL
