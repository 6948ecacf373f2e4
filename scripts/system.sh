#!/usr/bin/env bash
# Install the Debian packages that the book (`book`) or the tests (`test`) need, listed with the file
# that proves each installed in requirements/debian.txt. Called by scripts/book.sh and scripts/test.sh
# before anything uses them. Without root or apt-get it says what is missing and how to install it,
# and exits 0: the tests that need a missing package are then skipped with that reason, and the
# dashboard pages say they need d3. Under CI (CI=true) a package that cannot be installed is an error.
set -euo pipefail
purpose="${1:?usage: scripts/system.sh book|test}"
list="${REASONLENS_DEBIAN_PACKAGES:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements/debian.txt}"

missing=()
while read -r package proof needed_by _; do
  case "$package" in ""|\#*) continue ;; esac
  [[ ",$needed_by," == *",$purpose,"* ]] || continue
  [ -e "$proof" ] || missing+=("$package")
done < "$list"
[ ${#missing[@]} -eq 0 ] && exit 0

fail() {
  echo "warning: $1" >&2
  echo "  Install them yourself: apt-get install -y ${missing[*]}" >&2
  echo "  Until then the tests that need them are skipped, and notebook 05's pages load d3 from" >&2
  echo "  the network (they say so)." >&2
  if [ "${CI:-}" = "true" ]; then
    echo "error: CI needs ${missing[*]}; stopping." >&2
    exit 1
  fi
  exit 0
}
if ! command -v apt-get >/dev/null 2>&1; then
  fail "cannot install the Debian packages ${missing[*]}: there is no apt-get here."
fi
if [ "$(id -u)" -ne 0 ]; then
  fail "cannot install the Debian packages ${missing[*]}: apt-get needs root."
fi
echo ">> installing Debian packages: ${missing[*]}"
log="$(mktemp)"
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  rm -f "$log"
  fail "apt-get could not install ${missing[*]} (its last lines are above)."
fi
rm -f "$log"
