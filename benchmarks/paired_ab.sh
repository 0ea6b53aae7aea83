#!/usr/bin/env bash
# Compares two builds of apikeys_bench on one benchmark, in pairs run back to back, so
# the machine's drift (a shared VM moves by tens of percent between minutes) hits both
# alike. Each pair runs A then B, the next B then A. Prints each pair's medians and
# their ratio A/B, then the median and fastest of each build and the median of the
# pair ratios, the figure to quote.
#
# Usage: bash benchmarks/paired_ab.sh A_BINARY B_BINARY [PAIRS] [FILTER] [MIN_TIME]
#   PAIRS     pairs to run (default 10)
#   FILTER    --benchmark_filter, one benchmark (default 'validate/hit$')
#   MIN_TIME  --benchmark_min_time per repetition, seconds (default 0.1)
# Example (BENCHMARKS.md, "No observer attached"):
#   bash benchmarks/paired_ab.sh /tmp/bench-after/benchmarks/apikeys_bench \
#     /tmp/bench-before/benchmarks/apikeys_bench 30 'validate/hit$' 0.1
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,15p' "$0"
  exit 2
fi
a=$1
b=$2
pairs=${3:-10}
filter=${4:-'validate/hit$'}
min_time=${5:-0.1}
for bin in "$a" "$b"; do
  [[ -x "$bin" ]] || { echo "paired_ab.sh: not an executable: $bin" >&2; exit 2; }
done

# The median CPU time (ns) of the one benchmark FILTER selects, from one run of $1 (awk
# reads all of the output: stopping early would end the program with SIGPIPE).
median_of() {
  # Its exit status is ignored: 1 when a TARGET line fails, as most do in a filtered run.
  { "$1" --skip=memory,threads,latency,scale --benchmark_filter="$filter" \
    --benchmark_min_time="$min_time" 2>/dev/null || true; } |
    awk '!found && $1 ~ /_median$/ && $3 == "ns" && $5 == "ns" { print $4; found = 1 }
         END { if (!found) exit 1 }'
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
echo "paired_ab.sh: $pairs pairs, filter '$filter', min_time $min_time, load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((i = 1; i <= pairs; i++)); do
  if ((i % 2)); then
    ta=$(median_of "$a") || { echo "no median from $a" >&2; exit 1; }
    tb=$(median_of "$b") || { echo "no median from $b" >&2; exit 1; }
  else
    tb=$(median_of "$b") || { echo "no median from $b" >&2; exit 1; }
    ta=$(median_of "$a") || { echo "no median from $a" >&2; exit 1; }
  fi
  echo "$ta $tb" >>"$results"
  awk -v i="$i" -v a="$ta" -v b="$tb" 'BEGIN { printf "pair %2d  A %9.1f ns  B %9.1f ns  A/B %.3f\n", i, a, b, a / b }'
done
echo "load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
a = [r[0] for r in rows]
b = [r[1] for r in rows]
ratios = [x / y for x, y in rows]
print(f"A median {statistics.median(a):.1f} ns, fastest {min(a):.1f} ns")
print(f"B median {statistics.median(b):.1f} ns, fastest {min(b):.1f} ns")
print(f"median pair ratio A/B {statistics.median(ratios):.3f}; "
      f"fastest A / fastest B {min(a) / min(b):.3f}")
PY
