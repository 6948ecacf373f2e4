"""Headless Chromium for the browser tests: load a page, read its console.

``scripts/system.sh test`` (run by ``scripts/test.sh`` before pytest) installs Debian's ``chromium``
and ``node-d3``, listed in ``requirements/debian.txt``; :func:`missing` says which of them are not
there, and the ``browser`` fixture skips with that reason. ``open_page`` loads a file in a fresh
profile, lets its scripts run, and returns the serialised DOM with every console message; uncaught
exceptions are the ``errors``.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"]
_CONSOLE = re.compile(r':INFO:CONSOLE[^\]]*\] "(.*)", source: (\S*)')
# Jupyter Book 1.0 pages declare sphinx-thebe's THEBE_JS_URL twice (a bug of the book's theme
# stack, on every page); it is the only console error a page of ours may show.
KNOWN_BOOK_ERRORS = ("Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared",)


def debian_packages(purpose: str = "test") -> dict[str, Path]:
    """The Debian packages ``requirements/debian.txt`` lists for ``purpose``, with their proof file."""
    packages = {}
    for line in (ROOT / "requirements" / "debian.txt").read_text().splitlines():
        fields = line.split("#")[0].split()
        if len(fields) >= 3 and purpose in fields[2].split(","):
            packages[fields[0]] = Path(fields[1])
    return packages


def missing() -> str | None:
    """None when the browser tests' Debian packages are installed, else which are not and why."""
    absent = [pkg for pkg, proof in debian_packages().items() if not proof.exists()]
    if not absent:
        return None
    return (f"Debian packages {absent} are not installed (scripts/test.sh installs them as root; "
            f"or: apt-get install -y {' '.join(absent)})")


@dataclasses.dataclass
class Page:
    """A loaded page: its DOM after the scripts ran, and its console messages."""

    dom: str
    console: list[str]

    @property
    def errors(self) -> list[str]:
        """Uncaught JavaScript exceptions (known book-wide ones left out)."""
        return [m for m in self.console if m.startswith("Uncaught") and m not in KNOWN_BOOK_ERRORS]

    @property
    def title(self) -> str:
        match = re.search(r"<title>(.*?)</title>", self.dom, re.S)
        return match.group(1).strip() if match else ""


def open_page(path: Path) -> Page:
    """Load ``path`` in headless Chromium (a fresh profile) and dump its DOM and console."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
             Path(path).resolve().as_uri()], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed on {path} ({result.returncode}):\n"
                           f"{result.stderr[-2000:]}")
    return Page(result.stdout, [m.group(1) for m in _CONSOLE.finditer(result.stderr)])
