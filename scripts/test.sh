#!/usr/bin/env bash
# Run the test suite (sets up ./.venv on first use). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$ROOT/scripts/system.sh" test  # Debian packages (d3, Chromium)
cd "$ROOT"
python -m pytest "$@"
