#!/usr/bin/env bash
# Builds apikeys_bench in Release (-O2) into build-bench/ and runs it; the output also
# goes to build-bench/bench-<mode>.log. Arguments are passed to the program. First it
# runs apikeys_ct_check under Valgrind's memcheck (BENCHMARKS.md, "Timing"): the
# compares and MACs applied to a secret take no branch on its bytes, at this build's
# optimisation; a report fails the script.
# Usage: bash scripts/bench.sh            full run (minutes; see BENCHMARKS.md)
#        bash scripts/bench.sh --quick    seconds; what CI runs (TARGET lines informational)
# Env: BUILD_DIR (default build-bench), JOBS (default 2), APIKEYS_BENCH_CACHE_DIR (keep
# the bulk-built SQLite files there between runs), APIKEYS_BENCH_QUICK=1 (= --quick).
# Exit status: the program's (1 when a target fails in the full mode; never in quick).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh
bash scripts/deps.sh valgrind

t_start=$SECONDS
build_dir=${BUILD_DIR:-build-bench}
jobs=${JOBS:-2}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DAPIKEYS_BUILD_BENCHMARKS=ON -DAPIKEYS_BUILD_TESTS=OFF -DAPIKEYS_BUILD_EXAMPLES=OFF
cmake --build "$build_dir" -j"$jobs" --target apikeys_bench apikeys_ct_check

# The check must see an early-exit compare (else memcheck is not looking: exit 42 is
# memcheck's report, anything else a failure to run), then nothing in the library's.
ct="$build_dir/benchmarks/apikeys_ct_check"
ct_status=0
valgrind -q --error-exitcode=42 "$ct" --self-test >/dev/null 2>&1 || ct_status=$?
if [[ $ct_status -ne 42 ]]; then
  echo "bench.sh: apikeys_ct_check --self-test: exit $ct_status, not memcheck's report (42)" >&2
  exit 1
fi
valgrind -q --error-exitcode=1 "$ct"

mode=full
for a in "$@"; do
  [[ "$a" == "--quick" ]] && mode=quick
done
[[ -n "${APIKEYS_BENCH_QUICK:-}" && "${APIKEYS_BENCH_QUICK}" != "0" ]] && mode=quick

t_built=$SECONDS
log="$build_dir/bench-$mode.log"
status=0
"$build_dir/benchmarks/apikeys_bench" "$@" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
echo "bench.sh: $mode mode; deps and build $((t_built - t_start)) s, run $((SECONDS - t_built)) s; log in $log"
exit "$status"
