import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import safetensors
import torch
from sae_lens import SAE
from transformers import AutoModelForCausalLM, AutoTokenizer

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
    assert manifest["library_version"] == "0.1.0"  # reasonlens.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                          capture_output=True, text=True).stdout.strip()
    assert manifest["git_hash"].removesuffix("-dirty") == head
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
    with pytest.raises(FileNotFoundError, match=r"sae/trained\.manifest\.json is missing; "
                                                r"notebooks/03_train_sae\.py writes it"):
        run.manifest(K.SAE_DIR)


def test_a_missing_artifact_no_notebook_claims_gets_a_command_that_works(tmp_path):
    run = artifacts.RunDir("smoke", root=tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        run.read_json("notes/extra.json")
    message = str(info.value)
    assert "notebooks/an earlier notebook.py" not in message and "--only an" not in message
    assert message.endswith("an earlier notebook writes it. Run: python -m reasonlens.runner "
                            "--profile smoke (it reruns every notebook whose outputs changed)")


def test_every_artifact_names_the_notebook_that_writes_it():
    names = {key: value for key, value in vars(K).items() if key != "MANIFEST_SUFFIX" and (
        key.endswith("_DIR") or re.search(r"\.(json|parquet)$", str(value)))}
    resumable = {"SAE_CHECKPOINTS_DIR", "STEP_SAE_CHECKPOINTS_DIR"}  # no later notebook reads them
    assert set(names) - resumable == {key for key, value in names.items()
                                      if value in artifacts.PRODUCED_BY}
    notebooks = config.repo_root() / "notebooks"
    for key, value in names.items():
        if key not in resumable:
            producer = artifacts.PRODUCED_BY[value]
            assert f"K.{key}" in (notebooks / f"{producer}.py").read_text(), (key, producer)
    assert artifacts.producer_of("contexts/reasoning_val.parquet") == "01_data"
    assert artifacts.producer_of("sae/trained/sae_weights.safetensors") == "03_train_sae"
    assert artifacts.producer_of("scores/reason_scores.parquet.manifest.json") == "04_reason_score"
    assert artifacts.producer_of("sae/trained_old") is None
    assert artifacts.producer_of("contexts/a/b.parquet") is None


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


# --- crashes, interruptions and corrupt artifacts ------------------------------------------------
def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def garble_parquet_footer(path: Path) -> None:
    """Overwrite the footer's metadata but keep the magic bytes and its length."""
    data = path.read_bytes()
    path.write_bytes(data[:-48] + b"\x07" * 40 + data[-8:])


def claim_long_footer(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-8] + (2 * len(data)).to_bytes(4, "little") + b"PAR1")


PARQUET_DAMAGE = {
    "cut in half": cut_in_half,
    "empty": lambda path: path.write_bytes(b""),
    "footer garbled": garble_parquet_footer,  # passes the cheap check; pyarrow's error is wrapped
    "footer longer than the file": claim_long_footer,
}


@pytest.mark.parametrize("damage", PARQUET_DAMAGE.values(), ids=PARQUET_DAMAGE.keys())
def test_a_corrupt_parquet_names_the_file_and_the_notebook_that_rewrites_it(tmp_path, damage):
    run = artifacts.RunDir("smoke", root=tmp_path)
    name = K.CONTEXTS.format(split="reasoning_train")
    run.write(name, pd.DataFrame({"tokens": [list(range(64))] * 20}))
    damage(run.path(name))
    with pytest.raises((ValueError, OSError)):  # pyarrow itself rejects the file too
        pd.read_parquet(run.path(name))
    with pytest.raises(artifacts.CorruptArtifactError,
                       match=r"contexts/reasoning_train\.parquet is truncated or corrupt: .*"
                             r"notebooks/01_data\.py rewrites it\. Run: python -m "
                             r"reasonlens\.runner --profile smoke --only 01 --force$"):
        run.read_parquet(name)


JSON_DAMAGE = {
    "cut in half": cut_in_half,
    "empty": lambda path: path.write_bytes(b""),
    "not UTF-8": lambda path: path.write_bytes(b"\xff\xfe" + path.read_bytes()),
}


@pytest.mark.parametrize("damage", JSON_DAMAGE.values(), ids=JSON_DAMAGE.keys())
def test_a_corrupt_json_names_the_file_and_the_notebook_that_rewrites_it(tmp_path, damage):
    run = artifacts.RunDir("smoke", root=tmp_path)
    run.write(K.MODEL_EVAL, {"overall": [{"model": "reasoning", "accuracy": 0.5}]})
    expected = r"is truncated or corrupt: it is not valid JSON .*notebooks/02_model\.py " \
               r"rewrites it\. Run: python -m reasonlens\.runner --profile smoke --only 02 --force$"
    damage(run.path(K.MODEL_EVAL))
    with pytest.raises(artifacts.CorruptArtifactError, match=r"models/eval\.json " + expected):
        run.read_json(K.MODEL_EVAL)
    with pytest.raises(artifacts.CorruptArtifactError, match=r"models/eval\.json " + expected):
        run.require(K.MODEL_EVAL)
    damage(run.path(K.MODEL_EVAL + K.MANIFEST_SUFFIX))
    with pytest.raises(artifacts.CorruptArtifactError,
                       match=r"models/eval\.json\.manifest\.json " + expected):
        run.manifest(K.MODEL_EVAL)


def safetensors_header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    n_header = int.from_bytes(data[:8], "little")
    return n_header, json.loads(data[8:8 + n_header])


def misplace_tensor(path: Path) -> None:
    """A header that is valid JSON but places a tensor past the end of the file."""
    data = path.read_bytes()
    n_header, header = safetensors_header(path)
    tensor = next(key for key in header if key != "__metadata__")
    header[tensor]["data_offsets"][1] += 4
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n_header
    path.write_bytes(data[:8] + text.ljust(n_header) + data[8 + n_header:])


SAFETENSORS_DAMAGE = {
    "header garbled": lambda path: path.write_bytes(
        path.read_bytes()[:8] + b"{garbage" + path.read_bytes()[16:]),
    "header longer than the file": lambda path: path.write_bytes(
        (10 * path.stat().st_size).to_bytes(8, "little") + path.read_bytes()[8:]),
    "cut in half": cut_in_half,
    "tensor past the end": misplace_tensor,
    "empty": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize("damage", SAFETENSORS_DAMAGE.values(), ids=SAFETENSORS_DAMAGE.keys())
def test_a_corrupt_sae_names_the_file_and_the_notebook_that_rewrites_it(tmp_path, sae, damage):
    run = artifacts.RunDir("smoke", root=tmp_path)
    with run.write_dir(K.SAE_DIR) as path:
        sae.save_model(path)
    loaded = SAE.load_from_disk(str(run.require(K.SAE_DIR)))  # how notebooks 04-08 load it
    for name, weight in sae.state_dict().items():  # the whole file: no false alarm
        assert torch.equal(loaded.state_dict()[name], weight), name
    weights = run.path(K.SAE_DIR) / "sae_weights.safetensors"
    damage(weights)
    with pytest.raises(safetensors.SafetensorError):  # the library rejects it too
        with safetensors.safe_open(str(weights), "pt") as f:
            [f.get_tensor(key) for key in f.keys()]
    with pytest.raises(artifacts.CorruptArtifactError,
                       match=r"sae/trained/sae_weights\.safetensors is truncated or corrupt: .*"
                             r"notebooks/03_train_sae\.py rewrites it\. Run: python -m "
                             r"reasonlens\.runner --profile smoke --only 03 --force$"):
        SAE.load_from_disk(str(run.require(K.SAE_DIR)))


def test_a_corrupt_model_or_tokenizer_names_the_file_and_the_notebook(tmp_path, saved_toy_model,
                                                                     toy_model):
    run = artifacts.RunDir("smoke", root=tmp_path)
    for name in (K.REASONING_MODEL_DIR, K.TOKENIZER_DIR):
        with run.write_dir(name) as path:
            shutil.copytree(saved_toy_model, path, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(run.model_path())  # whole: no false alarm
    AutoTokenizer.from_pretrained(run.require(K.TOKENIZER_DIR))
    for name, weight in toy_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name

    SAFETENSORS_DAMAGE["header garbled"](run.path(K.REASONING_MODEL_DIR) / "model.safetensors")
    with pytest.raises(artifacts.CorruptArtifactError,
                       match=r"models/reasoning/model\.safetensors is truncated or corrupt: its "
                             r"header is not a valid safetensors header .*notebooks/02_model\.py "
                             r"rewrites it.*--only 02 --force$"):
        run.model_path()
    cut_in_half(run.path(K.TOKENIZER_DIR) / "tokenizer.json")
    with pytest.raises(artifacts.CorruptArtifactError,
                       match=r"tokenizer/tokenizer\.json is truncated or corrupt.*"
                             r"notebooks/01_data\.py rewrites it.*--only 01 --force$"):
        AutoTokenizer.from_pretrained(run.require(K.TOKENIZER_DIR))


def test_an_interrupted_replacement_leaves_the_old_or_the_new_directory_whole(tmp_path,
                                                                               monkeypatch):
    run = artifacts.RunDir("t", root=tmp_path)
    with run.write_dir(K.SAE_DIR) as path:
        for i in range(5):
            (path / f"old_{i}.bin").write_bytes(b"o")
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        """Delete one file of the tree, then stop as a Ctrl-C or a kill would."""
        next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with run.write_dir(K.SAE_DIR) as path:
            for i in range(5):
                (path / f"new_{i}.bin").write_bytes(b"n")
            monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    kept = sorted(p.name for p in run.path(K.SAE_DIR).iterdir())
    assert kept == [f"new_{i}.bin" for i in range(5)]


KILLED_WRITER = """
    import os, sys
    from reasonlens.artifacts import RunDir
    run = RunDir("t", root=sys.argv[1])
    with run.write_dir("models/reasoning") as path:
        (path / "half.bin").write_bytes(b"x")
        os._exit(9)  # killed mid-write: no cleanup runs
    """


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    run = artifacts.RunDir("t", root=tmp_path)
    run.write("numbers.json", [1, 2])
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(tmp_path)])
    assert killed.returncode == 9
    (left,) = run.path("models").iterdir()  # a temporary, never the artifact itself
    assert left.name.startswith(".reasoning.tmp-") and not run.path(K.REASONING_MODEL_DIR).exists()
    with run.write_dir("sae/trained") as live:
        (live / "w.bin").write_bytes(b"y")
        assert run.remove_stale_temporaries() == [left]
        assert live.is_dir() and not left.exists()
    assert run.remove_stale_temporaries() == []
    assert run.read_json("numbers.json") == [1, 2]
    assert sorted(p.name for p in run.path("sae").iterdir()) == ["trained", "trained.manifest.json"]
