#!/usr/bin/env bash
# CI for the server backends: builds apikeys with PostgresStore and RedisCache,
# starts a throwaway PostgreSQL and Redis on loopback ports (scripts/servers.sh; as root,
# PostgreSQL runs as the `postgres` user), runs every test labelled `servers` with
# APIKEYS_REQUIRE_SERVERS=1 (a missing server fails), prints the measured cross-process
# revocation latency, and stops both servers by PID whatever happens.
#
# Usage: bash scripts/ci-servers.sh
#   APIKEYS_SERVERS_BUILD  build directory, default build-servers (relative to the repo)
#   JOBS                   parallel build jobs, default 2
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
build=${APIKEYS_SERVERS_BUILD:-build-servers}
jobs=${JOBS:-2}
started_at=$SECONDS
phase_at=$SECONDS

phase() {  # phase NAME: prints how long the previous phase took
  local now=$SECONDS
  echo "ci-servers.sh: [$((now - phase_at)) s] $1"
  phase_at=$now
}

# --- packages: what this build needs, and the servers; only the missing ones ---------
packages=(build-essential cmake pkg-config libssl-dev libsqlitecpp-dev libsqlite3-dev libfmt-dev
          catch2 nlohmann-json3-dev libcli11-dev libpq-dev libhiredis-dev postgresql redis-server)
# The packages' own services (if the system starts them) keep their default ports; ours
# run on free ports from scripts/servers.sh.
bash scripts/deps.sh "${packages[@]}"
# servers.sh needs the PostgreSQL major version's bin directory: take the installed one.
if [[ -z ${APIKEYS_PG_VERSION:-} ]]; then
  APIKEYS_PG_VERSION=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)
  [[ -n $APIKEYS_PG_VERSION ]] || { echo "ci-servers.sh: no PostgreSQL under /usr/lib/postgresql" >&2; exit 1; }
  export APIKEYS_PG_VERSION
fi
phase "packages ready (PostgreSQL $APIKEYS_PG_VERSION, $(redis-server --version | awk '{print $3}'))"

# --- build: both backends, the server suites and the CLI they drive --------------------
# The library and its backends at RelWithDebInfo's -O2 -g; the test programs themselves at
# -O0 -g1, as the sanitizer presets build them (tests/CMakeLists.txt): the Store and audit
# contract suites that postgres_store_test.cpp instantiates took 70 s to compile at -O2 -g.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DAPIKEYS_TEST_CODE_OPTIMIZATION="-O0 -g1" \
  -DAPIKEYS_WITH_POSTGRES=ON -DAPIKEYS_WITH_REDIS=ON \
  -DAPIKEYS_BUILD_TESTS=ON -DAPIKEYS_BUILD_TOOLS=ON -DAPIKEYS_BUILD_EXAMPLES=OFF \
  -DAPIKEYS_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target apikeys_server_tests
phase "built $build"

# --- servers: started here, stopped by PID on any exit ---------------------------------
export APIKEYS_SERVERS_DIR=/tmp/apikeys-ci-servers-$$
stop_servers() {
  bash "$root/scripts/servers.sh" stop || true
}
trap stop_servers EXIT
eval "$(bash scripts/servers.sh start)"
export APIKEYS_REQUIRE_SERVERS=1
phase "servers started: APIKEYS_TEST_PG='$APIKEYS_TEST_PG' APIKEYS_TEST_REDIS=$APIKEYS_TEST_REDIS"

# --- tests ---------------------------------------------------------------------------
status=0
ctest --test-dir "$build" -L servers --output-on-failure --timeout 300 || status=$?
# The two-process test prints its measurements; ctest keeps them in LastTest.log.
grep -h "cross-process revoke latency" "$build"/Testing/Temporary/LastTest*.log 2>/dev/null | awk '!seen[$0]++' || true
phase "servers suite finished (exit $status)"

echo "ci-servers.sh: total $((SECONDS - started_at)) s"
exit "$status"
