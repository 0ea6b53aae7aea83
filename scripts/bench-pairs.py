#!/usr/bin/env python3
"""Compares two builds of apikeys_bench on a shared, noisy machine.

Runs the two binaries in turn, short runs in alternating order, and prints for each
benchmark the median of the ratios of adjacent runs (B / A): each pair of runs sees
the same phase of the machine, which whole runs of a minute each do not.

usage: bench-pairs.py A_BINARY B_BINARY PAIRS [FILTER]
  FILTER: a --benchmark_filter regex (default '^validate/hit$')
example: scripts/bench-pairs.py /tmp/before/apikeys_bench build/benchmarks/apikeys_bench 12 \\
           '^validate/hit$|^validate/hit_one_rate_limit$'
"""
import re
import statistics
import subprocess
import sys


def run(binary, pattern):
    out = subprocess.run(
        [binary, "--skip=memory,threads,latency,scale,observer,admission",
         f"--benchmark_filter={pattern}", "--benchmark_repetitions=1",
         "--benchmark_min_time=0.3"],
        capture_output=True, text=True).stdout  # exits 1 when a TARGET line fails
    times = {}
    for line in out.splitlines():
        m = re.match(r"^((?:validate|floor|part)/\S+)\s+([\d.]+) ns", line)
        if m and not m.group(1).endswith(("_mean", "_median", "_stddev", "_cv")):
            times[m.group(1)] = float(m.group(2))  # the last repetition's
    if not times:
        sys.exit(f"{binary}: no benchmark matched {pattern!r}")
    return times


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    a, b, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pattern = sys.argv[4] if len(sys.argv) == 5 else "^validate/hit$"
    ratios = {}
    for i in range(pairs):
        order = (a, b) if i % 2 == 0 else (b, a)
        got = {x: run(x, pattern) for x in order}
        print(f"pair {i + 1}: " + ", ".join(
            f"{k} {got[a][k]:.0f} / {got[b].get(k, float('nan')):.0f} ns"
            for k in sorted(got[a])), flush=True)
        for k in got[a]:
            if k in got[b]:
                ratios.setdefault(k, []).append(got[b][k] / got[a][k])
    for k, v in sorted(ratios.items()):
        print(f"{k}: B/A median {statistics.median(v):.3f} "
              f"(n={len(v)}, min {min(v):.3f}, max {max(v):.3f})")


if __name__ == "__main__":
    main()
