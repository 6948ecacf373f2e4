#!/usr/bin/env bash
# Run every notebook on a profile (default: the embedded CPU default) and build the book
# (sets up ./.venv on first use). Extra arguments go to the runner, e.g. --only 02 or --force.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$ROOT/scripts/system.sh" book  # Debian packages (d3)
cd "$ROOT"
python -m reasonlens.runner --profile "${PROFILE:-default}" "$@"
