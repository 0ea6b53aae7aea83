#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan+UBSan, -DAPIKEYS_BUILD_FUZZERS=ON) in
# build-fuzz/ and runs each for FUZZ_SECONDS (default 60) from its seed corpus in
# tests/fuzz/corpus/<target>/. Fails on any crash, timeout, leak, out-of-memory or
# sanitizer report, and prints each target's executions, execs/s and coverage.
#   scripts/ci-fuzz.sh                         all targets, 60 s each
#   FUZZ_SECONDS=300 scripts/ci-fuzz.sh fuzz_validate
# Env: FUZZ_SECONDS, JOBS (build parallelism, and how many targets run at once; default
# 2), BUILD_DIR (default build-fuzz).
# Failing inputs are kept in $BUILD_DIR/artifacts/; reproduce with
#   $BUILD_DIR/<target> $BUILD_DIR/artifacts/<target>-crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
JOBS=${JOBS:-2}
BUILD_DIR=${BUILD_DIR:-build-fuzz}
all_targets=(fuzz_token fuzz_validate fuzz_request fuzz_cli fuzz_scan fuzz_scope fuzz_metadata
             fuzz_import fuzz_rate_limit fuzz_admission)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all_targets[@]}")

start=$(date +%s)
stamp() { echo "ci-fuzz: [$(($(date +%s) - start)) s] $*"; }

# Build dependencies (libssl, SQLiteCpp, fmt, CLI11, nlohmann-json...), then clang-14
# and its runtime libraries (libFuzzer, ASan, UBSan), installing only what is missing.
bash scripts/deps.sh
bash scripts/deps.sh clang-14 libclang-rt-14-dev

stamp "configuring $BUILD_DIR"
mkdir -p "$BUILD_DIR"
CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DAPIKEYS_BUILD_FUZZERS=ON -DAPIKEYS_BUILD_TESTS=OFF -DAPIKEYS_BUILD_EXAMPLES=OFF \
  -DAPIKEYS_BUILD_TOOLS=OFF -DAPIKEYS_INSTALL=OFF >"$BUILD_DIR/configure.log" 2>&1 ||
  { cat "$BUILD_DIR/configure.log"; exit 1; }
stamp "building ${targets[*]}"
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}"

# Leaks are reported at exit and after each input (-detect_leaks is on under ASan);
# any UBSan finding aborts (-fno-sanitize-recover=all in cmake/apikeysFuzz.cmake).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

mkdir -p "$BUILD_DIR/artifacts"

# A fuzzer is one process on one core: JOBS of them run at once, each for the whole
# FUZZ_SECONDS, so on 2 cores the targets take half the time and none runs less. Each
# run leaves its log and its exit status (<target>.rc) in $BUILD_DIR; they are read in
# the targets' order once every run has finished.
fuzz_one() {  # fuzz_one TARGET
  local t=$1 rc=0
  local work="$BUILD_DIR/corpus/$t"  # new inputs go here, never into the repository
  mkdir -p "$work"
  "$BUILD_DIR/$t" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$BUILD_DIR/artifacts/$t-" \
    "$work" "tests/fuzz/corpus/$t" >"$BUILD_DIR/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$BUILD_DIR/$t.rc"
}
running=0
for t in "${targets[@]}"; do
  if [[ $running -ge $JOBS ]]; then
    wait -n || true
    running=$((running - 1))
  fi
  rm -f "$BUILD_DIR/$t.rc" "$BUILD_DIR/$t.log"
  stamp "running $t for ${FUZZ_SECONDS} s (seeds: $(find "tests/fuzz/corpus/$t" -type f | wc -l) files)"
  fuzz_one "$t" &
  running=$((running + 1))
done
wait

summary=()
failed=()
for t in "${targets[@]}"; do
  log="$BUILD_DIR/$t.log"
  touch "$log"  # a run that died before writing its log is still reported, as failed
  # No status file: the run itself failed before it could write one.
  rc=$(cat "$BUILD_DIR/$t.rc" 2>/dev/null || echo "none")
  # The last status line: "#N DONE cov: C ft: F corp: ... exec/s: E rss: ...".
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
  corp=$(grep -oE 'corp: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
  summary+=("$(printf '%-14s %12s %10s %8s %8s %8s' "$t" "${execs:-?}" "${per_sec:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
  if [[ $rc != 0 ]] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|invariant failed' "$log"; then
    failed+=("$t")
    echo "ci-fuzz: $t FAILED (exit $rc); the end of $log:" >&2
    tail -n 60 "$log" >&2
  fi
done

echo
echo "ci-fuzz: ${FUZZ_SECONDS} s per target, $(nproc) cores, $(clang++-14 --version | head -n 1)"
printf '%-14s %12s %10s %8s %8s %8s\n' target executions execs/s cov ft corpus
printf '%s\n' "${summary[@]}"
stamp "done"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "ci-fuzz: FAILED: ${failed[*]} (inputs in $BUILD_DIR/artifacts/)" >&2
  exit 1
fi
echo "ci-fuzz: all ${#targets[@]} targets ran clean"
