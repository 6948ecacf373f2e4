"""The install files agree with each other: pyproject's pins, environment.yml, the lock."""

import tomllib

import yaml
from reasonlens.config import repo_root

ROOT = repo_root()


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split(" ")[0].split("==") for d in deps)


def test_every_direct_dependency_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps), deps


def test_environment_yml_mirrors_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert dict(line.split("==") for line in pip) == _pyproject_pins()
    assert "python=3.11" in env["dependencies"]


def test_lock_holds_the_pinned_versions_and_no_cuda_extras():
    lock = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for name, version in _pyproject_pins().items():
        if name != "torch":  # installed on its own, before the lock
            assert lock[name.lower().replace("_", "-")] == version, name
    for unwanted in ("torchvision", "torchaudio", "decode-clt", "torch"):
        assert unwanted not in lock
    assert not any(name.startswith("nvidia-") for name in lock)
