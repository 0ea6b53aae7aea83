#!/usr/bin/env bash
# Checks that every tracked C++ file (src/, include/, tools/, tests/, benchmarks/,
# examples/) is formatted as .clang-format says: clang-format-14 --dry-run --Werror.
# Fails on any difference and lists the files that differ, with the first lines of
# clang-format's findings. Excluded: tests/support/catch.hpp (kept as the Catch2 shim it is).
#   scripts/ci-format.sh          check
#   scripts/ci-format.sh --fix    reformat those files in place (then review the diff)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fix=0
case ${1:-} in
  "") ;;
  --fix) fix=1 ;;
  *) echo "usage: scripts/ci-format.sh [--fix]" >&2; exit 2 ;;
esac

bash scripts/deps.sh clang-format-14

mapfile -t files < <(git ls-files -- '*.cpp' '*.hpp' '*.h' '*.cc' |
  grep -E '^(src|include|tools|tests|benchmarks|examples)/' |
  grep -v -x -E 'tests/support/catch\.hpp')
[[ ${#files[@]} -gt 0 ]] || { echo "ci-format: no C++ files found" >&2; exit 1; }

if [[ $fix -eq 1 ]]; then
  clang-format-14 -i --style=file "${files[@]}"
  echo "ci-format: reformatted ${#files[@]} files; review with git diff"
  exit 0
fi

bad=()
for f in "${files[@]}"; do
  if ! out=$(clang-format-14 --dry-run --Werror --style=file "$f" 2>&1); then
    bad+=("$f")
    head -n 12 <<<"$out"
  fi
done
if [[ ${#bad[@]} -gt 0 ]]; then
  echo "ci-format: ${#bad[@]} of ${#files[@]} files are not formatted as .clang-format says:"
  printf '  %s\n' "${bad[@]}"
  echo "ci-format: FAILED (scripts/ci-format.sh --fix reformats them)"
  exit 1
fi
echo "ci-format: ${#files[@]} files formatted as .clang-format says"
