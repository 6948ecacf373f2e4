#!/usr/bin/env bash
# Mutation testing of the modules that carry the science, with mutmut, against their fast tests.
# Run on demand, not in CI (minutes per module on 2 cores):
#
#   bash scripts/mutation.sh                 # every module below
#   bash scripts/mutation.sh scoring steering
#   FRESH=1 bash scripts/mutation.sh sae     # forget earlier results of these modules
#
# Each module is tested in its own scratch copy of the working tree, build/mutation/<module>/, so
# several can run at once and a rerun only retests what changed. mutmut 3 puts mutated code on
# sys.path only from ./, src/ or source/, so the copy moves lib/ to src/. The table of scores goes to
# build/mutation/summary.md, the surviving mutants of a module to build/mutation/<module>/survivors.txt,
# and `bash scripts/mutation.sh --show <module> <mutant>` prints one mutant's diff.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

# module -> the library files mutated and the tests that must kill their mutants.
declare -A SOURCES=(
  [scoring]="reasonlens/scoring.py"
  [steering]="reasonlens/steering.py"
  [models]="reasonlens/models.py"
  [sae]="reasonlens/sae.py"
  [evaluation]="reasonlens/evaluation.py"
  [injection]="reasonlens/injection.py"
  [diffing]="reasonlens/diffing.py"
  [step_sae]="reasonlens/step_sae/model.py reasonlens/step_sae/training.py reasonlens/step_sae/probes.py reasonlens/step_sae/n2g.py reasonlens/step_sae/voting.py reasonlens/step_sae/inference.py"
)
declare -A TESTS=(
  [scoring]="tests/test_scoring.py"
  [steering]="tests/test_steering.py tests/test_steering_equivalence.py"
  [models]="tests/test_models.py tests/test_steering_equivalence.py"
  [sae]="tests/test_sae.py"
  [evaluation]="tests/test_evaluation.py tests/test_answers.py tests/test_harness.py"
  [injection]="tests/test_injection.py"
  [diffing]="tests/test_diffing.py"
  [step_sae]="tests/test_step_sae.py tests/test_step_sae_analysis.py"
)
ORDER=(scoring steering models sae evaluation injection diffing step_sae)
MUTMUT_SITE="$VENV/mutmut-site"  # mutmut beside, not inside, the pinned environment
mutmut() { PYTHONPATH="$MUTMUT_SITE" OMP_NUM_THREADS=1 python -m mutmut "$@"; }

if [ ! -d "$MUTMUT_SITE/mutmut" ]; then
  echo ">> installing mutmut into $MUTMUT_SITE"
  python -m pip install -q --no-deps --target "$MUTMUT_SITE" mutmut==3.8.1 libcst==1.9.0 \
    setproctitle==1.3.8 2>&1 | { grep -v "^WARNING: Location" || true; }
fi

if [ "${1:-}" = "--show" ]; then
  cd "$ROOT/build/mutation/${2:?module}" && mutmut show "${3:?mutant name}"
  exit 0
fi

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")
for module in "${modules[@]}"; do
  [ -n "${SOURCES[$module]:-}" ] || { echo "error: unknown module $module; use: ${ORDER[*]}" >&2; exit 2; }
done

for module in "${modules[@]}"; do
  work="$ROOT/build/mutation/$module"
  [ -z "${FRESH:-}" ] || rm -rf "$work"
  mkdir -p "$work"
  # The working tree as git sees it (tracked and new files, not ignored ones), lib/ renamed src/.
  rm -rf "$work/src" "$work/tests"
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
  rm -rf "$work/src" && mv "$work/lib" "$work/src"
  only=$(printf '"src/%s", ' ${SOURCES[$module]})
  tests=$(printf '"%s", ' ${TESTS[$module]})
  cat >> "$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["src/"]
only_mutate = [${only%, }]
also_copy = ["profiles/", "notebooks/", "requirements/", "jupyter_book.yml", "docs/"]
pytest_add_cli_args_test_selection = [${tests%, }]
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-q", "-x"]
EOF
  echo ">> mutmut on $module: ${SOURCES[$module]} against ${TESTS[$module]}"
  (cd "$work" && mutmut run --max-children "${MAX_CHILDREN:-2}" >"$work/run.log" 2>&1) || {
    tail -n 30 "$work/run.log" >&2; echo "error: mutmut failed on $module (log: $work/run.log)" >&2; exit 1; }
  (cd "$work" && mutmut export-cicd-stats >/dev/null && mutmut results) \
    | sed 's/^ *//' | grep -v ": killed$" > "$work/survivors.txt" || true
done

python - "$ROOT/build/mutation" "${ORDER[@]}" <<'EOF'
import json, sys
from pathlib import Path
root, modules = Path(sys.argv[1]), sys.argv[2:]
rows = ["| module | mutants | killed | survived | no tests | timeout | score |", "|---|---|---|---|---|---|---|"]
for module in modules:
    stats = root / module / "mutants" / "mutmut-cicd-stats.json"
    if stats.is_file():
        s = json.loads(stats.read_text())
        rows.append(f"| {module} | {s['total']} | {s['killed']} | {s['survived']} | {s['no_tests']} "
                    f"| {s['timeout']} | {s['killed'] / max(s['total'], 1):.1%} |")
(root / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
