"""Headless Chromium for the browser tests: install Debian's package, load a page, read its console.

``ensure_installed`` installs ``chromium`` (and ``node-d3``, the local d3 the SAEDashboard pages
ship with) through apt-get when missing. ``open_page`` loads a file in a fresh profile, lets its
scripts run, and returns the serialised DOM with every console message; uncaught exceptions are
the ``errors``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
D3 = "/usr/share/nodejs/d3/dist/d3.min.js"  # Debian's node-d3
PACKAGES = {"chromium": CHROMIUM, "node-d3": D3}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"]
_CONSOLE = re.compile(r':INFO:CONSOLE[^\]]*\] "(.*)", source: (\S*)')
# Jupyter Book 1.0 pages declare sphinx-thebe's THEBE_JS_URL twice (a bug of the book's theme
# stack, on every page); it is the only console error a page of ours may show.
KNOWN_BOOK_ERRORS = ("Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared",)


def ensure_installed() -> str | None:
    """Install the missing Debian packages; None when all are there, else why they are not."""
    missing = [pkg for pkg, path in PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return (f"cannot install {missing}: needs apt-get as root "
                f"(apt-get install -y {' '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            return f"`{' '.join(command)}` failed:\n{result.stderr[-2000:]}"
    still = [pkg for pkg, path in PACKAGES.items() if not Path(path).exists()]
    return f"{still} still missing after apt-get install" if still else None


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
