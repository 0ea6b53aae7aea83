#!/usr/bin/env bash
# Builds the `asan` (AddressSanitizer + UndefinedBehaviorSanitizer; the library at -O2 -g,
# the RelWithDebInfo flags, so the optimiser's transformations are checked too, and the
# test programs and examples at -O0 -g1, which builds them three times faster) and `tsan`
# (ThreadSanitizer: the library at -O1, the test programs and examples at -O0 -g1) presets
# of CMakePresets.json, into build/asan and build/tsan, and runs the CTest suite (unit,
# CLI, reliability, examples, the Python interoperability test) under each. The tsan test
# preset leaves out the interoperability test: it runs the CLI's import, verify and
# peppers commands one process after another, as the CLI tests do under tsan too, and
# what it adds to them is the Python service's formats, not threads. Any sanitizer report
# aborts the process that made it (-fno-sanitize-recover=all, halt_on_error=1,
# abort_on_error=1; the options live in the test presets), so the test fails and so does
# this script.
# The asan preset links its programs without PIE (-no-pie): ASan's descriptors of the
# test sources' globals put 1.7 million relative relocations in apikeys_tests, which the
# dynamic loader applied at the start of each of its 400 test processes, about 0.2 s
# each. What is checked is the same.
#   scripts/ci-sanitizers.sh             both presets
#   scripts/ci-sanitizers.sh tsan        just one
# Env: JOBS (build and test parallelism, default 2), APIKEYS_STRESS_SCALE (percent of
# the stress tests' operation counts, default 100; see tests/reliability/stress_test.cpp).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS=${JOBS:-2}
presets=("$@")
[[ ${#presets[@]} -eq 0 ]] && presets=(asan tsan)

start=$(date +%s)
stamp() { echo "ci-sanitizers: [$(($(date +%s) - start)) s] $*"; }

# Build and test dependencies (compiler, libraries, curl for the http_server example).
# GCC ships the sanitizer runtimes (libasan, libubsan, libtsan) with build-essential.
bash scripts/deps.sh

# ThreadSanitizer maps its shadow memory at fixed addresses. Kernels that randomise
# mmap with more than 28 bits (vm.mmap_rnd_bits, raised by default on recent Ubuntu
# kernels) can place a library inside that range, and every instrumented program then
# dies at start-up with "FATAL: ThreadSanitizer: unexpected memory mapping". Find out
# with a real instrumented binary; if it fails that way, run the suite without address
# randomisation (setarch -R, inherited by every child), or else lower the entropy.
tsan_wrapper=()
tsan_runs() {
  local out
  out=$("${tsan_wrapper[@]}" "$1" --help 2>&1 >/dev/null) && return 0
  echo "$out" | head -5 >&2
  return 1
}
choose_tsan_wrapper() {
  local probe=build/tsan/tests/apikeys_tests
  tsan_wrapper=()
  tsan_runs "$probe" && return 0
  stamp "tsan: the instrumented program fails to start; retrying without ASLR (setarch -R)"
  tsan_wrapper=(setarch "$(uname -m)" -R)
  tsan_runs "$probe" && return 0
  local bits
  bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo "?")
  if [[ $bits != "?" && $bits -gt 28 ]] && sysctl -w vm.mmap_rnd_bits=28 >/dev/null 2>&1; then
    stamp "tsan: lowered vm.mmap_rnd_bits from $bits to 28"
    tsan_wrapper=()
    tsan_runs "$probe" && return 0
  fi
  stamp "tsan: instrumented programs cannot start here (vm.mmap_rnd_bits=$bits); see above"
  return 1
}

summary=()
for preset in "${presets[@]}"; do
  case $preset in
    asan) runtime_symbol=__asan_init ;;
    tsan) runtime_symbol=__tsan_init ;;
    *) echo "ci-sanitizers: unknown preset '$preset' (asan or tsan)" >&2; exit 2 ;;
  esac

  t0=$(date +%s)
  stamp "$preset: configure"
  cmake --preset "$preset" >/dev/null
  stamp "$preset: build"
  cmake --build --preset "$preset" -j "$JOBS" >"build/$preset/build.log" 2>&1 || {
    tail -50 "build/$preset/build.log"
    stamp "$preset: build FAILED"
    exit 1
  }
  built=$(($(date +%s) - t0))

  # The flags reach every test program (a preset's CMAKE_CXX_FLAGS), never silently not.
  for exe in build/$preset/tests/apikeys_tests build/$preset/tests/apikeys_reliability_tests \
             build/$preset/tools/apikeys; do
    # grep without -q reads all of nm's output: no SIGPIPE failing the pipeline.
    if ! nm "$exe" 2>/dev/null | grep "$runtime_symbol" >/dev/null; then
      stamp "$preset: $exe is not instrumented ($runtime_symbol missing)"
      exit 1
    fi
  done

  wrapper=()
  if [[ $preset == tsan ]]; then
    choose_tsan_wrapper
    wrapper=("${tsan_wrapper[@]}")
  fi

  t1=$(date +%s)
  stamp "$preset: ctest (${wrapper[*]:-no wrapper})"
  log="build/$preset/ctest.log"
  if "${wrapper[@]}" ctest --preset "$preset" -j "$JOBS" >"$log" 2>&1; then
    result=passed
  else
    result=FAILED
  fi
  # The per-test lines of failures, then CTest's tally.
  grep -E '\*\*\*|Failed|tests passed' "$log" || true
  if [[ $result == FAILED ]]; then
    # Sanitizer reports are in the failing tests' output (outputOnFailure).
    grep -n -E -A30 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer|FATAL: ThreadSanitizer' "$log" | head -200 || true
    stamp "$preset: FAILED (full log in $log)"
    exit 1
  fi
  ran=$(grep -oE 'tests passed, 0 tests failed out of [0-9]+' "$log" | grep -oE '[0-9]+$')
  tested=$(($(date +%s) - t1))
  summary+=("$preset: $ran tests passed (build ${built} s, tests ${tested} s)")
  stamp "${summary[-1]}"
done

stamp "all clean: ${summary[*]}"
