"""Run the notebooks of the book on a profile, skip what is up to date, and build the book.

Usage::

    python -m reasonlens.runner --profile default              # every notebook, then the book
    python -m reasonlens.runner --profile smoke --only 02      # one notebook (or --only 02_model)
    python -m reasonlens.runner --profile default --from 03 --to 05 --force --no-book

The notebooks are jupytext percent files, ``notebooks/NN_name.py`` (the source of truth). Each is
converted with jupytext and executed with papermill; it receives only the profile parameters that
its ``parameters``-tagged cell declares, plus ``profile``. Executed notebooks go to
``<home>/build/<profile>/notebooks/``, and the book is built from them with Jupyter Book 1.x
(Sphinx), without executing anything again.

Skipping: after a notebook succeeds, ``<home>/data/runs/<profile>/.runner/NN_name.json`` records a
fingerprint of everything it depended on (its source, its parameters, the library's source and the
outputs of every earlier notebook) and the files it wrote. A notebook is skipped while its
fingerprint is unchanged, its executed notebook exists and its outputs are intact. Because each
fingerprint includes the hashes of earlier notebooks' outputs, a notebook that re-runs and writes
something different invalidates the ones after it.

Interruptions: a notebook that starts running loses its record and gets ``NN_name.unfinished``
instead, removed when it succeeds. So a runner killed mid-notebook (even by SIGKILL) leaves that
notebook to run again, and no later notebook is skipped while an earlier one is unfinished.
Artifacts are written atomically; the temporaries a killed writer leaves behind are deleted by the
next run. One runner at a time works on a profile: it holds ``.runner/lock`` (``fcntl.flock``,
released by the OS however the runner ends), and a second one refuses to start.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime as _dt
import difflib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jupytext
import papermill
import yaml
from papermill.exceptions import PapermillExecutionError
from tqdm.auto import tqdm

from reasonlens import __version__, artifacts, config, constants, seeds

logger = logging.getLogger("reasonlens.runner")  # also when run as __main__

KERNEL_NAME = "python3"
LIBRARY_DIR = Path(__file__).resolve().parent
BOOK_CONFIG = "jupyter_book.yml"  # in the repo root; becomes the book's _config.yml
DESIGN_PAGE = Path("docs/design.md")  # in the repo; the book's first chapter, after the README
EXTRA_DIR = "_extra"  # in the book dir: copied as-is into the built HTML (html_extra_path)
MANIFEST_DIR = ".runner"  # under the run dir: one JSON manifest per executed notebook
UNFINISHED_SUFFIX = ".unfinished"  # in MANIFEST_DIR: NN_name.unfinished while NN_name runs
LOCK_FILE = "lock"  # in MANIFEST_DIR: held by the runner working on the profile
_NOTEBOOK_NAME = re.compile(r"^(\d+)_\w+\.py$")
_HASH_CHUNK = 1 << 20
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
NOT_LITERAL = object()  # a parameter default that is not a Python literal (read_parameters)


class NotebookError(RuntimeError):
    """A notebook failed while executing; the message names the notebook and the failing cell."""


class StaleUpstreamError(RuntimeError):
    """An earlier notebook that is not selected has outputs that changed since it ran."""


class ProfileBusyError(RuntimeError):
    """Another runner is working on the profile; the message names its PID and the lock file."""


@dataclasses.dataclass(frozen=True)
class Notebook:
    """One notebook of the book: ``notebooks/NN_name.py``.

    Attributes:
        path: the jupytext percent file.
        number: ``"02"`` for ``02_model.py``.
        name: the file stem, ``"02_model"``.
        parameters: the names its ``parameters``-tagged cell assigns.
        defaults: the values it assigns them, where they are literals (see :func:`read_parameters`).
    """

    path: Path
    number: str
    name: str
    parameters: tuple[str, ...]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass
class RunReport:
    """What one call of :func:`run` did.

    Attributes:
        profile: the profile's name.
        ran: names of the notebooks that executed, in order.
        skipped: names of the notebooks that were up to date.
        seconds: wall time per executed notebook.
        book_index: the built book's ``index.html``, or None when no book was built.
    """

    profile: str
    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    book_index: Path | None = None


# --- finding and selecting notebooks -------------------------------------------------------------
def discover_notebooks(notebooks_dir: Path) -> list[Notebook]:
    """Find ``NN_name.py`` notebooks in ``notebooks_dir``, sorted by number.

    Raises:
        FileNotFoundError: the directory does not exist or holds no numbered notebooks.
        ValueError: two notebooks share a number.
    """
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(f"notebooks_dir={str(notebooks_dir)!r} is not a directory.")
    found = []
    for path in notebooks_dir.glob("*.py"):
        match = _NOTEBOOK_NAME.match(path.name)
        if match:
            defaults = read_parameters(path)
            found.append(Notebook(path, match.group(1), path.stem, tuple(defaults), defaults))
    if not found:
        raise FileNotFoundError(
            f"no notebooks named NN_name.py in {notebooks_dir}; notebooks are jupytext percent "
            f"files such as 01_data.py."
        )
    found.sort(key=lambda nb: (int(nb.number), nb.name))
    numbers = [int(nb.number) for nb in found]
    duplicates = sorted({nb.name for nb in found if numbers.count(int(nb.number)) > 1})
    if duplicates:
        raise ValueError(f"notebooks {duplicates} share a number; renumber them so each is unique.")
    return found


def read_parameter_names(path: Path) -> tuple[str, ...]:
    """The variable names assigned in the ``parameters``-tagged cell of a jupytext notebook, in order.

    Raises:
        ValueError: the parameters cell is not valid Python.
    """
    return tuple(read_parameters(path))


def read_parameters(path: Path) -> dict[str, Any]:
    """The names the ``parameters``-tagged cell of a jupytext notebook assigns, with their defaults.

    Returns:
        ``{name: default}`` in order of assignment; the default is the assigned value when it is a
        Python literal (``ast.literal_eval``), else :data:`NOT_LITERAL` (also for names bound by
        tuple unpacking). Empty when the notebook has no parameters cell.

    Raises:
        ValueError: the parameters cell is not valid Python.
    """
    nb = jupytext.read(path)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError as exc:
                raise ValueError(
                    f"{path}: the parameters cell is not valid Python ({exc})."
                ) from exc
            found: dict[str, Any] = {}
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                )
                for target in targets:
                    value = NOT_LITERAL
                    if isinstance(target, ast.Name) and node.value is not None:
                        try:
                            value = ast.literal_eval(node.value)
                        except ValueError:
                            pass
                    for name_node in ast.walk(target):
                        if isinstance(name_node, ast.Name) and name_node.id not in found:
                            found[name_node.id] = value
            return found
    return {}


def select_notebooks(notebooks: Sequence[Notebook], only: str | None = None,
                     start: str | None = None, stop: str | None = None) -> list[Notebook]:
    """Pick the notebooks to run: one (``only``), a range (``start``..``stop``), or all.

    A selector is a number (``"02"`` or ``"2"``) or a name (``"02_model"``, ``"02_model.py"``).

    Raises:
        ValueError: ``only`` is combined with a range, a selector matches no notebook, or the range
            is empty; the message lists the notebooks.
    """
    if only is not None and (start is not None or stop is not None):
        raise ValueError(
            "only= cannot be combined with start=/stop= (--from/--to); use one or the other."
        )
    if only is not None:
        return [notebooks[_index_of(notebooks, only, "only")]]
    first = _index_of(notebooks, start, "start") if start is not None else 0
    last = _index_of(notebooks, stop, "stop") if stop is not None else len(notebooks) - 1
    if first > last:
        raise ValueError(
            f"start={start!r} comes after stop={stop!r}; the range is empty. "
            f"Notebooks: {[nb.name for nb in notebooks]}."
        )
    return list(notebooks[first:last + 1])


def _index_of(notebooks: Sequence[Notebook], selector: str, what: str) -> int:
    key = str(selector).removesuffix(".py")
    for i, nb in enumerate(notebooks):
        if key == nb.name or (key.isdigit() and int(key) == int(nb.number)):
            return i
    raise ValueError(
        f"{what}={selector!r} matches no notebook. Use a number or a name from: "
        f"{[nb.name for nb in notebooks]}."
    )


# --- parameters ----------------------------------------------------------------------------------
def check_profile(values: dict[str, Any], notebooks: Sequence[Notebook]) -> dict[str, Any]:
    """Check a profile against the notebooks' parameters cells, before anything runs.

    Every key must be a parameter some notebook declares, and a parameter whose default is a number
    must be given a number. An integer parameter given a whole float (``training_tokens: 8.192e6``)
    receives it as an int.

    Returns:
        The profile's values, with whole floats turned into ints where the default is an int.

    Raises:
        ValueError: naming the unknown key(s) and listing the valid parameter names; or naming a
            numeric parameter given a non-number (e.g. a string) and the spelling to use.
    """
    valid = {"profile"}.union(*(nb.parameters for nb in notebooks))
    unknown = sorted(set(values) - valid)
    if unknown:
        close = {name: difflib.get_close_matches(name, valid, n=1) for name in unknown}
        hints = [f"{name!r} -> {match[0]!r}" for name, match in close.items() if match]
        raise ValueError(
            f"profile {values.get('profile')!r} sets parameter(s) {unknown} that no notebook "
            f"declares.{' Did you mean: ' + ', '.join(hints) + '?' if hints else ''} "
            f"Valid parameters: {sorted(valid)}. Fix the name in the profile, or "
            f"declare it in a notebook's parameters cell."
        )
    checked = dict(values)
    for nb in notebooks:
        for name, default in nb.defaults.items():
            if name not in values or not _is_number(default):
                continue
            value = values[name]
            if not _is_number(value):
                raise ValueError(
                    f"profile {values.get('profile')!r}: {name}={value!r} is a "
                    f"{type(value).__name__}, but {nb.name} expects a number (its default is "
                    f"{default!r}). Write it as a number, e.g. {name}: {default!r}; for powers of "
                    f"ten 5.0e-5, 5e-5 and 1E3 all read as numbers, quoted '5e-5' does not."
                )
            if isinstance(default, int) and isinstance(value, float) and value.is_integer():
                checked[name] = int(value)
    return checked


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def notebook_parameters(nb: Notebook, values: dict[str, Any]) -> dict[str, Any]:
    """The profile values ``nb`` receives: those its parameters cell declares, plus ``profile``."""
    received = {k: v for k, v in values.items() if k in nb.parameters}
    received["profile"] = values["profile"]
    return received


# --- hashing and manifests -----------------------------------------------------------------------
def hash_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_library(library_dir: Path = LIBRARY_DIR) -> str:
    """The sha256 over every ``.py`` file of the library (relative path and bytes, by path)."""
    digest = hashlib.sha256()
    for path in sorted(library_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(library_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def snapshot_files(roots: Sequence[Path], base: Path) -> dict[str, tuple[int, int]]:
    """Map each file under ``roots`` (relative to ``base``) to ``(size, mtime_ns)``.

    The runner's own manifests (``.runner/``) are left out.
    """
    files = {}
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != MANIFEST_DIR]
            for filename in filenames:
                path = Path(dirpath) / filename
                try:
                    stat = path.stat()
                except FileNotFoundError:  # removed while we walked
                    continue
                files[path.relative_to(base).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


def changed_files(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                  base: Path) -> dict[str, dict[str, Any]]:
    """The files that are new or whose size or mtime changed, with size, mtime and sha256."""
    return {
        rel: {"size": size, "mtime_ns": mtime_ns, "sha256": hash_file(base / rel)}
        for rel, (size, mtime_ns) in sorted(after.items())
        if before.get(rel) != (size, mtime_ns)
    }


def upstream_fingerprint(manifest: dict | None) -> dict[str, str] | None:
    """What an earlier notebook contributes to later fingerprints: its outputs' sha256, or None.

    Artifact sidecars (``*.manifest.json``) are left out: they hold timestamps and the git hash, so
    they change on every run even when the data does not.
    """
    if manifest is None:
        return None
    return {
        rel: out["sha256"] for rel, out in manifest["outputs"].items()
        if not rel.endswith(constants.MANIFEST_SUFFIX)
    }


def notebook_inputs(nb: Notebook, parameters: dict[str, Any], library_sha256: str,
                    earlier: Sequence[Notebook], manifest_dir: Path) -> dict[str, Any]:
    """Everything a notebook's run depends on; :func:`fingerprint` hashes it.

    Args:
        nb: the notebook.
        parameters: the parameters it receives.
        library_sha256: :func:`hash_library` of the library it imports.
        earlier: the notebooks before it (selected or not), whose outputs it may read.
        manifest_dir: the run dir's ``.runner/``, holding their manifests.
    """
    return {
        "source_sha256": hashlib.sha256(nb.path.read_bytes()).hexdigest(),
        "parameters": json.loads(json.dumps(parameters, sort_keys=True, default=str)),
        "library_sha256": library_sha256,
        "upstream": {
            other.name: upstream_fingerprint(read_manifest(manifest_dir / f"{other.name}.json"))
            for other in earlier
        },
    }


def fingerprint(inputs: dict[str, Any]) -> str:
    """The sha256 of a notebook's inputs (as canonical JSON)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(path: Path) -> dict | None:
    """A runner manifest, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stale_reason(manifest: dict | None, inputs: dict[str, Any], executed_path: Path,
                 base: Path) -> str | None:
    """Why a notebook must run again, or None when its last run is still valid."""
    if manifest is None:
        return "no record of an earlier run"
    if manifest.get("fingerprint") != fingerprint(inputs):
        old = manifest.get("inputs", {})
        changed = [key for key in ("source_sha256", "parameters", "library_sha256")
                   if old.get(key) != inputs[key]]
        changed += [f"outputs of {name}" for name, value in inputs["upstream"].items()
                    if old.get("upstream", {}).get(name) != value]
        return f"changed: {', '.join(changed) or 'fingerprint'}"
    if not executed_path.is_file():
        return f"the executed notebook {executed_path} is missing"
    return changed_output(manifest, base)


def changed_output(manifest: dict, base: Path) -> str | None:
    """Which output a notebook's manifest records is now missing or different, or None."""
    for rel, out in manifest["outputs"].items():
        path = base / rel
        if not path.is_file():
            return f"output {rel} is missing"
        stat = path.stat()
        # Unchanged size and mtime mean unchanged bytes (as in git's index); else compare hashes.
        if (stat.st_size, stat.st_mtime_ns) != (out["size"], out["mtime_ns"]) and \
                hash_file(path) != out["sha256"]:
            return f"output {rel} was modified"
    return None


def check_upstream_outputs(notebooks: Sequence[Notebook], first: Notebook, manifest_dir: Path,
                           base: Path, profile: str) -> None:
    """Refuse to start at ``first`` while an earlier notebook's recorded outputs have changed.

    The notebooks before ``first`` do not run in this call, so the ones selected would read
    artifacts that are no longer what their producer wrote (cut short, edited, deleted).

    Raises:
        StaleUpstreamError: naming the earlier notebook, the output and the command that redoes it.
    """
    for other in notebooks[:notebooks.index(first)]:
        manifest = read_manifest(manifest_dir / f"{other.name}.json")
        problem = changed_output(manifest, base) if manifest is not None else None
        if problem is not None:
            raise StaleUpstreamError(
                f"{other.name}'s {problem} since it ran, and {first.name} onwards read what it "
                f"wrote. Rerun it first: python -m reasonlens.runner --profile {profile} "
                f"--from {other.number}"
            )


# --- running -------------------------------------------------------------------------------------
def execute_notebook(nb: Notebook, parameters: dict[str, Any], executed_path: Path) -> None:
    """Convert ``nb`` with jupytext and execute it with papermill into ``executed_path``.

    The notebook is written to a temporary name and renamed on success. On failure it is kept at
    ``NN_name.failed.ipynb`` beside ``executed_path``.

    Raises:
        NotebookError: naming the notebook, the failing cell and its first line.
    """
    node = jupytext.read(nb.path)
    node.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3",
                                   "language": "python"}
    executed_path.parent.mkdir(parents=True, exist_ok=True)
    source_path = executed_path.with_name(f".{nb.name}.source.ipynb")
    running_path = executed_path.with_name(f".{nb.name}.running.ipynb")
    failed_path = executed_path.with_name(f"{nb.name}.failed.ipynb")
    jupytext.write(node, source_path, fmt="ipynb")
    try:
        papermill.execute_notebook(
            str(source_path), str(running_path), parameters=parameters, kernel_name=KERNEL_NAME,
            language="python", cwd=str(nb.path.parent), progress_bar=True, log_output=False,
        )
    except PapermillExecutionError as exc:
        _keep_failed(running_path, failed_path)
        first_line = next((line for line in exc.source.splitlines() if line.strip()), "")
        raise NotebookError(
            f"{nb.path.name} failed in cell {exc.cell_index} (In [{exc.exec_count}]) "
            f"`{first_line.strip()}`: {exc.ename}: {exc.evalue}\n"
            f"  The executed notebook is kept at {failed_path}.\n"
            f"  Fix it, then run: python -m reasonlens.runner --profile {parameters['profile']} "
            f"--from {nb.number}"
        ) from exc
    except Exception as exc:  # the kernel died, could not start, ...
        _keep_failed(running_path, failed_path)
        raise NotebookError(
            f"{nb.path.name} could not be executed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        source_path.unlink(missing_ok=True)
    os.replace(running_path, executed_path)
    failed_path.unlink(missing_ok=True)


def _keep_failed(running_path: Path, failed_path: Path) -> None:
    if running_path.exists():
        os.replace(running_path, failed_path)


def run(profile: str, notebooks_dir: str | Path | None = None, only: str | None = None,
        start: str | None = None, stop: str | None = None, force: bool = False,
        build: bool = True) -> RunReport:
    """Execute the selected notebooks on a profile, skipping up-to-date ones, then build the book.

    Args:
        profile: a profile name (``profiles/<name>.yaml``) or a path to a YAML file.
        notebooks_dir: where the ``NN_name.py`` notebooks are; default ``<repo>/notebooks``.
        only: run just this notebook (``"02"`` or ``"02_model"``).
        start: first notebook of a range (``--from``).
        stop: last notebook of a range (``--to``).
        force: run the selected notebooks even when they are up to date.
        build: build the Jupyter Book from the executed notebooks afterwards.

    Returns:
        A :class:`RunReport` of what ran, what was skipped, and the book's ``index.html``.

    Raises:
        FileNotFoundError: the profile or the notebooks directory does not exist.
        ValueError: the profile sets a parameter no notebook declares, or a selector is bad.
        NotebookError: a notebook failed; later notebooks did not run.
        ProfileBusyError: another runner is working on the same profile.
        StaleUpstreamError: a notebook before the selected ones has outputs that changed since
            it ran (raised before anything runs).
        RuntimeError: the book did not build; the message ends with its log.
    """
    notebooks_dir = Path(notebooks_dir or config.repo_root() / "notebooks").resolve()
    values = config.load_profile(profile)
    notebooks = discover_notebooks(notebooks_dir)
    values = check_profile(values, notebooks)
    selected = select_notebooks(notebooks, only, start, stop)
    name = values["profile"]
    home = config.home()
    run_dir = artifacts.RunDir(name)
    watched = [run_dir.root, run_dir.figures_dir]
    executed_dir = home / "build" / name / "notebooks"
    library_sha256 = hash_library()
    report = RunReport(profile=name)
    logger.info("profile %r: %d of %d notebooks selected; run dir %s",
                name, len(selected), len(notebooks), run_dir.root)
    manifest_dir = run_dir.root / MANIFEST_DIR
    with profile_lock(manifest_dir / LOCK_FILE, name):
        removed = run_dir.remove_stale_temporaries()
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted write: %s",
                        len(removed), [str(path) for path in removed])
        check_upstream_outputs(notebooks, selected[0], manifest_dir, home, profile)
        for nb in tqdm(selected, desc=f"notebooks ({name})", unit="notebook"):
            manifest_path = manifest_dir / f"{nb.name}.json"
            unfinished_path = manifest_dir / f"{nb.name}{UNFINISHED_SUFFIX}"
            executed_path = executed_dir / f"{nb.name}.ipynb"
            parameters = notebook_parameters(nb, values)
            earlier = notebooks[:notebooks.index(nb)]
            inputs = notebook_inputs(nb, parameters, library_sha256, earlier, manifest_dir)
            manifest = read_manifest(manifest_path)
            unfinished = unfinished_notebooks(earlier, manifest_dir)
            if force:
                reason = "--force"
            elif unfinished_path.exists():
                reason = "its last run did not finish"
            else:
                reason = stale_reason(manifest, inputs, executed_path, home) or (
                    f"{', '.join(unfinished)} did not finish" if unfinished else None)
            if reason is None:
                logger.info("%s: unchanged, skipped", nb.name)
                report.skipped.append(nb.name)
                continue
            if unfinished:
                logger.warning(
                    "%s reads the outputs of %s, whose last run did not finish (killed or failed):"
                    " they may be incomplete. To redo them: python -m reasonlens.runner --profile "
                    "%s --from %s", nb.name, unfinished, name, unfinished[0].split("_")[0])

            logger.info("%s: running (%s) with %s", nb.name, reason, parameters)
            # Until it succeeds, a re-running notebook has no valid record and no executed notebook.
            manifest_dir.mkdir(parents=True, exist_ok=True)
            unfinished_path.write_text(_now() + "\n")
            manifest_path.unlink(missing_ok=True)
            executed_path.unlink(missing_ok=True)
            before = snapshot_files(watched, home)
            started = time.perf_counter()
            execute_notebook(nb, parameters, executed_path)
            seconds = time.perf_counter() - started
            outputs = changed_files(before, snapshot_files(watched, home), home)
            write_manifest(manifest_path, {
                "notebook": nb.name,
                "source": str(nb.path),
                "profile": name,
                "fingerprint": fingerprint(inputs),
                "inputs": inputs,
                "executed_notebook": str(executed_path),
                "outputs": outputs,
                "seconds": round(seconds, 3),
                "finished": _now(),
                "library_version": __version__,
                "git_hash": artifacts.git_hash(),
            })
            unfinished_path.unlink()
            logger.info("%s: done in %.1f s, %d output file(s)", nb.name, seconds, len(outputs))
            report.ran.append(nb.name)
            report.seconds[nb.name] = seconds

        if build:
            report.book_index = build_book(name, notebooks, home / "build" / name)
    return report


def unfinished_notebooks(notebooks: Sequence[Notebook], manifest_dir: Path) -> list[str]:
    """The names of those ``notebooks`` whose last run started but did not finish."""
    return [nb.name for nb in notebooks
            if (manifest_dir / f"{nb.name}{UNFINISHED_SUFFIX}").exists()]


@contextlib.contextmanager
def profile_lock(path: Path, profile: str) -> Iterator[None]:
    """Hold ``path`` locked (``fcntl.flock``) for the block: one runner at a time on a profile.

    The file records the holder (PID, host, start time, command). The OS releases the lock when
    the holder exits however it ends, SIGKILL included, so a lock never outlives its runner; the
    record a killed runner leaves in the file is reported by the next one.

    Args:
        path: the lock file, ``<run dir>/.runner/lock``.
        profile: the profile's name, for messages.

    Raises:
        ProfileBusyError: another process holds the lock; the message names the profile, the lock
            file and the PID of the runner holding it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_lock_record(fd)
            raise ProfileBusyError(
                f"profile {profile!r} is already being run by another runner, PID "
                f"{holder.get('pid', '(not recorded yet)')} on {holder.get('host', '?')} (started "
                f"{holder.get('started', '?')}: {holder.get('command', '?')}); it holds the lock "
                f"file {path}. Two runners on one profile would overwrite each other's artifacts. "
                f"Wait for it to finish, or stop it (kill {holder.get('pid', '<pid>')}), then run "
                f"this command again."
            ) from None
        previous = _read_lock_record(fd)
        if previous:
            logger.warning("the last runner on profile %r (PID %s, started %s) did not finish: it "
                           "was killed or crashed; its unfinished notebooks run again",
                           profile, previous.get("pid", "?"), previous.get("started", "?"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a finished runner leaves no record
    finally:
        os.close(fd)  # releases the lock


def _read_lock_record(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a runner manifest atomically."""
    with artifacts.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))


# --- the book ------------------------------------------------------------------------------------
def build_book(profile: str, notebooks: Sequence[Notebook], build_dir: Path,
               book_config: Path | None = None) -> Path:
    """Assemble ``<build_dir>/book/`` from the executed notebooks and build it with Jupyter Book.

    Nothing is executed: the book shows the outputs papermill stored.

    Args:
        profile: the profile's name, shown on the intro page.
        notebooks: all notebooks, in order; those without an executed notebook are left out.
        build_dir: ``<home>/build/<profile>``, holding ``notebooks/NN_name.ipynb``.
        book_config: the book's configuration; default ``<repo>/jupyter_book.yml``.

    Returns:
        The path of the built ``_build/html/index.html``.

    Raises:
        FileNotFoundError: no notebook has been executed yet, or the configuration is missing.
        RuntimeError: ``jupyter-book build`` failed; the message ends with the tail of its log.
    """
    book_config = Path(book_config or config.repo_root() / BOOK_CONFIG)
    if not book_config.is_file():
        raise FileNotFoundError(
            f"book_config={str(book_config)!r} is missing; it configures the book (title, theme)."
        )
    chapters = [nb for nb in notebooks if (build_dir / "notebooks" / f"{nb.name}.ipynb").is_file()]
    missing = [nb.name for nb in notebooks if nb not in chapters]
    if not chapters:
        raise FileNotFoundError(
            f"no executed notebooks in {build_dir / 'notebooks'}; run them first: "
            f"python -m reasonlens.runner --profile {profile}"
        )
    if missing:
        logger.warning("the book leaves out %s: not executed for profile %r yet", missing, profile)

    book_dir = build_dir / "book"
    book_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(book_dir / "_config.yml", book_config.read_text())
    toc = {"format": "jb-book", "root": "intro",
           "chapters": [{"file": DESIGN_PAGE.stem}] + [{"file": nb.name} for nb in chapters]}
    _write_if_changed(book_dir / "_toc.yml", yaml.safe_dump(toc, sort_keys=False))
    _write_if_changed(book_dir / "intro.md", intro_text(profile))
    _write_if_changed(book_dir / DESIGN_PAGE.name, (config.repo_root() / DESIGN_PAGE).read_text())
    for stale in book_dir.glob("*.ipynb"):
        if stale.stem not in {nb.name for nb in chapters}:
            stale.unlink()
    banner = page_banner(profile)
    for nb in chapters:
        executed = json.loads((build_dir / "notebooks" / f"{nb.name}.ipynb").read_text())
        _write_if_changed(book_dir / f"{nb.name}.ipynb", json.dumps(with_banner(executed, banner),
                                                                      indent=1))
    copy_extra_pages(profile, book_dir / EXTRA_DIR)

    log_path = book_dir / "build.log"
    # jupyter_book has no __main__; call its click entry point with this interpreter.
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
               "build", str(book_dir), "--path-output", str(book_dir)]
    logger.info("building the book: %s", " ".join(command))
    with open(log_path, "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=book_dir)
    index = book_dir / "_build" / "html" / "index.html"
    lines = _ANSI_ESCAPE.sub("", log_path.read_text(errors="replace")).splitlines()
    if result.returncode != 0 or not index.is_file():
        tail = "\n".join(lines[-40:])
        raise RuntimeError(
            f"jupyter-book build failed (exit code {result.returncode}); "
            f"full log: {log_path}\n{tail}"
        )
    warnings = [line for line in lines if "WARNING:" in line]
    if warnings:
        logger.warning("the book built with %d Sphinx warning(s) (full log: %s):\n%s",
                       len(warnings), log_path, "\n".join(warnings[:10]))
    logger.info("book: %s", index)
    return index


def copy_extra_pages(profile: str, extra_dir: Path) -> None:
    """Fill ``extra_dir`` (the book's ``html_extra_path``) with the run's standalone HTML pages.

    The SAEDashboard pages of notebook 05 (``features/dashboards/``) land at
    ``_build/html/dashboards/``, where the notebook's page links them.
    """
    shutil.rmtree(extra_dir, ignore_errors=True)
    extra_dir.mkdir(parents=True)
    dashboards = artifacts.RunDir(profile).path(constants.DASHBOARDS_DIR)
    if dashboards.is_dir():
        shutil.copytree(dashboards, extra_dir / "dashboards")


def intro_text(profile: str) -> str:
    """The book's first page: the repo's README.md (or a title), and the profile it shows.

    The README's link to ``docs/design.md`` points at the book's Design chapter instead, and the
    profile's opening comment says what the build is (e.g. that ``smoke`` numbers mean nothing).
    """
    readme = config.repo_root() / "README.md"
    # The README links the design page by its path in the repo; in the book it sits beside intro.md.
    text = readme.read_text().replace(f"]({DESIGN_PAGE})", f"]({DESIGN_PAGE.name})") \
        if readme.is_file() else ""
    if not text.lstrip().startswith("# "):
        text = "# reasonlens\n\n" + text
    return (
        f"{text.rstrip()}\n\n## This build\n\n"
        f"The chapters are the notebooks as executed on the profile **`{profile}`** "
        f"(`profiles/{profile}.yaml`).\n{profile_description(profile)}"
    )


def page_banner(profile: str) -> str:
    """One line for the top of every chapter: the profile and the model the page shows."""
    try:
        params = config.load_profile(profile)
    except (FileNotFoundError, ValueError):
        params = {}
    if params.get("model_name"):
        model = f"`{params['model_name']}`"
    elif params.get("pretrained_model"):
        from reasonlens.pretrained import PACKAGED  # torch and transformers: only when needed

        name = str(params["pretrained_model"])
        label = PACKAGED[name].label if name in PACKAGED else f"`{name}`"
        model = (f"{label} as shipped (base model) and fully fine-tuned on the synthetic world's "
                 "traces (reasoning model)")
    else:
        model = "toy Llama-style models trained here on the synthetic world"
    return f"**Profile `{profile}`** (`profiles/{profile}.yaml`). Model: {model}."


def with_banner(notebook: dict, banner: str) -> dict:
    """A copy of a notebook (nbformat JSON) with ``banner`` as a markdown cell after its title."""
    cells = list(notebook.get("cells", []))
    at = 1 if cells and cells[0].get("cell_type") == "markdown" else 0
    cell = {"cell_type": "markdown", "metadata": {"tags": ["profile-banner"]},
            "source": f"{banner}\n"}
    if notebook.get("nbformat", 4) >= 4 and notebook.get("nbformat_minor", 0) >= 5:
        cell["id"] = "profile-banner"
    return {**notebook, "cells": cells[:at] + [cell] + cells[at:]}


def profile_description(profile: str) -> str:
    """The comment lines that open ``profiles/<profile>.yaml``, as a quoted paragraph (or "")."""
    path = config.profiles_dir() / f"{profile}.yaml"
    lines = path.read_text().splitlines() if path.is_file() else []
    comment = []
    for line in lines:
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    return f"\n> {' '.join(comment)}\n" if comment else ""


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps Sphinx's incremental build)."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


# --- command line --------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``python -m reasonlens.runner``."""
    parser = argparse.ArgumentParser(
        prog="python -m reasonlens.runner",
        description="Execute the book's notebooks on a profile (skipping up-to-date ones) "
                    "and build the book.",
    )
    parser.add_argument("--profile", required=True,
                        help="profile name (profiles/<name>.yaml) or path to a YAML file")
    parser.add_argument("--only", help="run one notebook, by number (02) or name (02_model)")
    parser.add_argument("--from", dest="start", help="first notebook of a range")
    parser.add_argument("--to", dest="stop", help="last notebook of a range")
    parser.add_argument("--force", action="store_true", help="run even up-to-date notebooks")
    parser.add_argument("--no-book", action="store_true", help="do not build the Jupyter Book")
    parser.add_argument("--notebooks-dir", type=Path, default=None,
                        help="directory of NN_name.py notebooks (default: <repo>/notebooks)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="repeat the selected notebooks once per training seed (profile "
                             "<name>-seed<s>, the data fixed at the profile's seed) and tabulate "
                             "the headline numbers per seed in data/runs/<name>-seeds.csv")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    if args.only is not None and (args.start is not None or args.stop is not None):
        parser.error("--only cannot be combined with --from/--to")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 1 on an error)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.WARNING)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        kwargs = dict(notebooks_dir=args.notebooks_dir, only=args.only, start=args.start,
                      stop=args.stop, force=args.force, build=not args.no_book)
        with logging_redirect_tqdm():
            if args.seeds:
                seeds.run_seeds(args.profile, args.seeds, run, **kwargs)
            else:
                run(args.profile, **kwargs)
    except (NotebookError, ValueError, FileNotFoundError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
