#!/usr/bin/env bash
# Builds apikeys (Debug: assertions on) into build/ and runs every test with ctest.
# Usage: bash scripts/test.sh   (from anywhere; BUILD_TYPE=RelWithDebInfo to override)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh

build_type=${BUILD_TYPE:-Debug}
jobs=${JOBS:-2}
cmake -S . -B build -DCMAKE_BUILD_TYPE="$build_type"
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
