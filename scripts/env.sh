# Source me: creates or reuses ./.venv and installs the pinned dependencies when they changed.
# Used by scripts/book.sh and scripts/test.sh, so both work on a fresh machine with only Python 3.11.
#
# GPU machines: export TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu124) and, if needed,
# TORCH_VERSION before sourcing; the default, torch==2.13.0, takes the local CPU build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REASONLENS_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if ! command -v "$PYTHON_BIN" >/dev/null 2>&1; then
  echo "error: $PYTHON_BIN not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  return 1 2>/dev/null || exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.reasonlens-installed"
want="$(cat "$ROOT/requirements/lock.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-torch$TORCH_VERSION"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo ">> installing pinned dependencies into $VENV (first run only, a few minutes)"
  quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }  # local-index noise
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    quiet python -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  else
    quiet python -m pip install -q "torch==$TORCH_VERSION"
  fi
  # --no-deps: the lock is the whole closure; it leaves out decode-clt (a dependency of sae-dashboard
  # that drags in CUDA torchvision/torchaudio, which break `import transformers` on a CPU torch).
  quiet python -m pip install -q --no-deps -r "$ROOT/requirements/lock.txt"
  quiet python -m pip install -q --no-deps "sae-dashboard==0.8.0"
  quiet python -m pip install -q --no-deps -e "$ROOT"
  python -m pip uninstall -q -y torchvision torchaudio decode-clt 2>/dev/null || true
  python -c "import torch, transformers, transformer_lens, sae_lens, sae_dashboard, reasonlens" \
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
export PYTHONHASHSEED=0
