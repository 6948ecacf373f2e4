# Source me: creates or reuses ./.venv (scripts/setup_venv.sh installs the pinned dependencies when
# they changed), activates it and sets ROOT and VENV. Used by scripts/book.sh and scripts/test.sh,
# so both work on a fresh machine with only Python 3.11; safe to source in an interactive shell
# (`source scripts/env.sh && jupyter lab`): it changes no shell option and never exits the shell.
#
# GPU machines: export TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu124) and, if needed,
# TORCH_VERSION before sourcing; the default, torch==2.13.0, takes the local CPU build.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REASONLENS_VENV:-$ROOT/.venv}"
if bash "$ROOT/scripts/setup_venv.sh"; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
  export PYTHONHASHSEED=0
  # This checkout's library first, also with a venv shared from another checkout
  # (REASONLENS_VENV), whose editable install points there.
  export PYTHONPATH="$ROOT/lib${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "error: setting up $VENV failed (see above)" >&2
  false
fi
