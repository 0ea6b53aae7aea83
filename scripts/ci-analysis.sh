#!/usr/bin/env bash
# Static analysis of the library (src/ and include/): clang-tidy with the repository's
# .clang-tidy (every diagnostic an error; our headers through its HeaderFilterRegex),
# then clang's thread-safety analysis (clang++-14 -fsyntax-only -Wthread-safety -Werror
# on each source), then cppcheck (warning, performance, portability; suppressions only
# inline, each with its reason on the line above), and first a check that every test the
# documents name as keeping a promise exists (scripts/check-test-names.py). Fails on any
# finding of any of them.
#   scripts/ci-analysis.sh
# Env: JOBS (parallel clang-tidy and clang processes, default 2), BUILD_DIR (default
# build-tidy: a configure-only tree that provides compile_commands.json; nothing is
# compiled).
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
extra_packages=(clang-tidy-14 clang-14 cppcheck libpq-dev)
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

stamp "the tests README.md, SECURITY.md and doc/ name exist"
python3 scripts/check-test-names.py || failed=1

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
stamp "clang++-14 -Wthread-safety over src/ (the annotations of src/thread_annotations.hpp)"
# Each library source as compile_commands.json builds it (its -D, -I, -isystem and -std
# flags), parsed by clang with -fsyntax-only -Wthread-safety -Werror: an access to a
# GUARDED_BY member without its mutex, a REQUIRES function called without it, a lock
# still held at return... GCC ignores the annotations, so only this step checks them.
if python3 - "$BUILD_DIR/compile_commands.json" "^${root}/src/" "$JOBS" <<'PY'
import concurrent.futures, json, re, shlex, subprocess, sys

commands, pattern, jobs = sys.argv[1], re.compile(sys.argv[2]), int(sys.argv[3])

def check(entry):
    args = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
    flags, i = [], 1
    while i < len(args):
        if args[i].startswith(("-D", "-I", "-std=")):
            flags.append(args[i])
        elif args[i] == "-isystem":
            flags += args[i:i + 2]
            i += 1
        i += 1
    run = subprocess.run(["clang++-14", "-fsyntax-only", "-Wthread-safety", "-Werror",
                          *flags, entry["file"]], cwd=entry["directory"],
                         capture_output=True, text=True)
    return entry["file"], run.returncode, run.stdout + run.stderr

entries = [e for e in json.load(open(commands)) if pattern.search(e["file"])]
failed = 0
with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    for path, status, output in pool.map(check, entries):
        if status != 0:
            failed += 1
            sys.stdout.write(output)
print(f"thread-safety: {len(entries)} files, {failed} with findings")
sys.exit(1 if failed or not entries else 0)
PY
then
  stamp "thread-safety: clean ($(($(date +%s) - t0)) s)"
else
  stamp "thread-safety: FAILED ($(($(date +%s) - t0)) s)"
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
