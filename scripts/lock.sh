#!/usr/bin/env bash
# Regenerate requirements/lock.txt from pyproject's direct pins in a scratch venv (needs network).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3.11 -m venv "$tmp/venv"; source "$tmp/venv/bin/activate"
python -m pip install -q --upgrade pip==24.3.1 && python -m pip install -q torch==2.13.0
python -m pip install -q "$ROOT"
{ grep '^#' "$ROOT/requirements/lock.txt"  # the header
  python -m pip freeze | grep -viE '^(torch|reasonlens|sae-dashboard|decode-clt|torchvision|torchaudio)[=@ ]'
} > "$tmp/lock.txt"
mv "$tmp/lock.txt" "$ROOT/requirements/lock.txt"
