#!/usr/bin/env bash
# Static analysis of the library (src/ and include/): clang-tidy with the repository's
# .clang-tidy (every diagnostic an error; our headers through its HeaderFilterRegex),
# then cppcheck (warning, performance, portability; suppressions only inline, each with
# its reason on the line above). Fails on any finding of either tool.
#   scripts/ci-analysis.sh
# Env: JOBS (parallel clang-tidy processes, default 2), BUILD_DIR (default build-tidy:
# a configure-only tree that provides compile_commands.json; nothing is compiled).
# The optional backends are analysed too: PostgresStore (libpq) always, RedisCache
# (hiredis) when src/redis_cache.cpp exists.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS=${JOBS:-2}
BUILD_DIR=${BUILD_DIR:-build-tidy}

start=$(date +%s)
stamp() { echo "ci-analysis: [$(($(date +%s) - start)) s] $*"; }

# Build dependencies (headers the analysed code includes), then the analysers and the
# optional backends' client headers, installing only what is missing.
bash scripts/deps.sh
extra_packages=(clang-tidy-14 cppcheck libpq-dev)
with_redis=OFF
if [[ -f src/redis_cache.cpp ]]; then
  extra_packages+=(libhiredis-dev)
  with_redis=ON
fi
bash scripts/deps.sh "${extra_packages[@]}"

# compile_commands.json for the library alone. CMAKE_CXX_STANDARD makes the -std flag
# explicit: GCC defaults to C++17 so CMake would omit it, and clang-tidy-14 would then
# parse as C++14.
stamp "configuring $BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  -DCMAKE_CXX_STANDARD=17 -DCMAKE_CXX_EXTENSIONS=OFF \
  -DAPIKEYS_BUILD_TESTS=OFF -DAPIKEYS_BUILD_EXAMPLES=OFF -DAPIKEYS_BUILD_TOOLS=OFF \
  -DAPIKEYS_BUILD_BENCHMARKS=OFF -DAPIKEYS_INSTALL=OFF \
  -DAPIKEYS_WITH_POSTGRES=ON -DAPIKEYS_WITH_REDIS="$with_redis" >/dev/null

root=$(pwd)
failed=0

t0=$(date +%s)
stamp "clang-tidy-14 over src/ (headers of include/apikeys/ and src/ included)"
# run-clang-tidy takes a regex on the paths in compile_commands.json; each file finds
# .clang-tidy in the repository root. Its exit status is non-zero when any file fails.
if run-clang-tidy-14 -clang-tidy-binary clang-tidy-14 -p "$BUILD_DIR" -j "$JOBS" -quiet \
    "^${root}/src/" > "$BUILD_DIR/clang-tidy.log" 2>&1; then
  stamp "clang-tidy: clean ($(($(date +%s) - t0)) s)"
else
  # Print the findings only, not clang-tidy's command lines and warning tallies.
  sed 's/\x1b\[[0-9;]*m//g' "$BUILD_DIR/clang-tidy.log" |
    grep -v -E '^(clang-tidy-14 |[0-9]+ warnings? (and [0-9]+ errors? )?generated|Suppressed [0-9]+ warnings|Use -header-filter=)' || true
  stamp "clang-tidy: FAILED ($(($(date +%s) - t0)) s; full log in $BUILD_DIR/clang-tidy.log)"
  failed=1
fi

t0=$(date +%s)
stamp "cppcheck $(cppcheck --version | cut -d' ' -f2) over src/ and include/"
if cppcheck --project="$BUILD_DIR/compile_commands.json" --std=c++17 -j "$JOBS" -q \
    --enable=warning,performance,portability --inline-suppr --error-exitcode=1 \
    --template='{file}:{line}:{column}: {severity}: {message} [{id}]'; then
  stamp "cppcheck: clean ($(($(date +%s) - t0)) s)"
else
  stamp "cppcheck: FAILED ($(($(date +%s) - t0)) s)"
  failed=1
fi

if [[ $failed -ne 0 ]]; then
  stamp "static analysis FAILED"
  exit 1
fi
stamp "static analysis clean"
