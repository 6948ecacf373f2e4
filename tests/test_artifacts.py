import json

import pandas as pd
import pytest

from reasonlens import artifacts, config
from reasonlens import constants as K
from reasonlens.world import WorldConfig


def test_write_and_read_round_trip_with_manifest(tmp_path):
    run = artifacts.RunDir("t", root=tmp_path)
    frame = pd.DataFrame({"a": [1, 2]})
    run.write(K.PROBLEMS, frame, config=WorldConfig(n_problems=10))
    pd.testing.assert_frame_equal(run.read_parquet(K.PROBLEMS), frame)
    manifest = run.manifest(K.PROBLEMS)
    assert manifest["config"]["n_problems"] == 10
    assert manifest["config_class"] == "WorldConfig"
    assert manifest["library_version"]
    run.write("x.json", {"b": 1})
    assert run.read_json("x.json") == {"b": 1}


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    run = artifacts.RunDir("t", root=tmp_path)
    with pytest.raises(RuntimeError):
        with run.write_dir("models/reasoning") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not run.path("models/reasoning").exists()
    assert list(run.path("models").iterdir()) == []
    with run.write_dir("models/reasoning", config={"k": 1}) as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
    assert (run.path("models/reasoning") / "weights.bin").exists()
    with run.write_dir("models/reasoning") as tmp:  # replacing an existing directory
        (tmp / "other.bin").write_bytes(b"y")
    assert sorted(p.name for p in run.path("models/reasoning").iterdir()) == ["other.bin"]


def test_a_missing_artifact_names_the_notebook_to_run(tmp_path):
    run = artifacts.RunDir("smoke", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"notebooks/02_model.py.*--profile smoke --only 02"):
        run.require(K.REASONING_MODEL_DIR)
    with pytest.raises(FileNotFoundError, match=r"01_data"):
        run.read_parquet(K.CONTEXTS.format(split="reasoning_train"))


def test_unsupported_artifact_types_are_errors(tmp_path):
    run = artifacts.RunDir("t", root=tmp_path)
    with pytest.raises(TypeError, match="DataFrame"):
        run.write("a.parquet", {"not": "a frame"})
    with pytest.raises(ValueError, match="write_dir"):
        run.write("a.bin", b"")


def test_profiles_load_and_unknown_profiles_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("seed: 3\nn_problems: 10\n")
    (tmp_path / "nested.yaml").write_text("world:\n  seed: 3\n")
    monkeypatch.setenv("REASONLENS_PROFILES", str(tmp_path))
    assert config.load_profile("mine") == {"seed": 3, "n_problems": 10, "profile": "mine"}
    with pytest.raises(FileNotFoundError, match=r"profile='nope'.*\['mine', 'nested'\]"):
        config.load_profile("nope")
    with pytest.raises(ValueError, match="flat"):
        config.load_profile("nested")


def test_repository_profiles_are_valid():
    names = config.available_profiles()
    assert {"smoke", "default"} <= set(names)
    for name in names:
        values = config.load_profile(name)
        json.dumps(values)  # plain values only
