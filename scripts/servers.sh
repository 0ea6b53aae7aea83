#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis servers for the `servers` tests, on free loopback
# ports in a temporary directory, stopped by PID.
#
#   scripts/servers.sh start         install (Debian packages) if missing, start both,
#                                    print the environment (as `env` does)
#   scripts/servers.sh env           print `export APIKEYS_TEST_PG=...` lines for eval
#   scripts/servers.sh stop          stop both by PID and remove the directory
#   scripts/servers.sh restart-pg    restart PostgreSQL on the same port (fault tests)
#   scripts/servers.sh restart-redis restart Redis on the same port (fault tests)
#   scripts/servers.sh stop-pg|start-pg|stop-redis|start-redis
#                                    take one server down and bring it back on the same
#                                    port (outage tests)
#   scripts/servers.sh pause-redis|resume-redis
#                                    SIGSTOP/SIGCONT Redis: a server that accepts
#                                    connections but never answers (timeout tests)
#   scripts/servers.sh status
#
# State lives in $APIKEYS_SERVERS_DIR (default /tmp/apikeys-servers-$UID). PostgreSQL
# refuses to run as root: as root it runs as the `postgres` user (created by the
# Debian package), otherwise as the caller. Nothing listens beyond 127.0.0.1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${APIKEYS_SERVERS_DIR:-/tmp/apikeys-servers-$(id -u)}
pg_version=${APIKEYS_PG_VERSION:-15}
pg_bin=/usr/lib/postgresql/$pg_version/bin

log() { echo "servers.sh: $*" >&2; }
die() { log "$*"; exit 1; }

install_missing() {
  local want=()
  [[ -x $pg_bin/initdb ]] || want+=("postgresql-$pg_version")
  command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
  [[ ${#want[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing ${want[*]} and no apt-get to install them"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "missing ${want[*]}; run as root or install them"
    sudo=(sudo)
  fi
  log "installing ${want[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  # The package's own services are not ours: if it started them, they keep running
  # on their default ports; ours use other ports.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${want[@]}" >&2
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ports are picked outside the kernel's ephemeral range: while a server is down (the
# restart and outage tests), a client's outgoing connection may be given its port as
# its own local port (even a connection to that very port: a TCP self-connect), and the
# server then cannot bind it again.
free_port() {
  local p tries=0 lo=32768 hi=60999 base span
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  if ((lo > 11024)); then
    base=10000 span=$((lo - 10000))
  else
    base=$((hi + 1)) span=$((65535 - hi))
  fi
  ((span > 0)) || die "no port range outside the ephemeral one ($lo-$hi)"
  while ((tries++ < 200)); do
    p=$((base + RANDOM % span))
    port_free "$p" && { echo "$p"; return 0; }
  done
  die "no free port found"
}

pg_user() {
  if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi
}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

wait_for() {  # wait_for SECONDS command...
  local limit=$1
  shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}

load_state() {
  [[ -f $state/env ]] || die "not running (no $state/env); run: $0 start"
  # shellcheck disable=SC1091
  source "$state/env"
}

pg_pid() { head -1 "$state/pg/data/postmaster.pid" 2>/dev/null || true; }
redis_pid() { cat "$state/redis/redis.pid" 2>/dev/null || true; }

start_pg() {
  as_pg "$pg_bin/pg_ctl" -D "$state/pg/data" -l "$state/pg/log" -w -t 30 \
    -o "-p $PG_PORT -k $state/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
    start >&2
}

stop_pg() {
  local pid
  pid=$(pg_pid)
  [[ -n $pid ]] || return 0
  kill -INT "$pid" 2>/dev/null || return 0  # fast shutdown
  wait_for 30 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
}

start_redis() {
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize yes --pidfile "$state/redis/redis.pid" --logfile "$state/redis/log" \
    --dir "$state/redis" >&2
  wait_for 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping || die "redis did not start"
}

stop_redis() {
  local pid
  pid=$(redis_pid)
  [[ -n $pid ]] || return 0
  kill -CONT "$pid" 2>/dev/null || true  # paused by pause-redis: let it hear the TERM
  kill -TERM "$pid" 2>/dev/null || return 0
  wait_for 30 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$state/redis/redis.pid"
}

print_env() {
  load_state
  echo "export APIKEYS_TEST_PG='host=127.0.0.1 port=$PG_PORT user=$PG_USER dbname=apikeys_test connect_timeout=5'"
  echo "export APIKEYS_TEST_PG_PASSWORD='host=127.0.0.1 port=$PG_PORT user=apikeys_needs_pw dbname=apikeys_test connect_timeout=5'"
  echo "export APIKEYS_TEST_REDIS='127.0.0.1:$REDIS_PORT'"
  echo "export APIKEYS_TEST_PG_RESTART='APIKEYS_SERVERS_DIR=$state $here/servers.sh restart-pg'"
  echo "export APIKEYS_TEST_REDIS_RESTART='APIKEYS_SERVERS_DIR=$state $here/servers.sh restart-redis'"
  echo "export APIKEYS_TEST_PG_STOP='APIKEYS_SERVERS_DIR=$state $here/servers.sh stop-pg'"
  echo "export APIKEYS_TEST_PG_START='APIKEYS_SERVERS_DIR=$state $here/servers.sh start-pg'"
  echo "export APIKEYS_TEST_REDIS_STOP='APIKEYS_SERVERS_DIR=$state $here/servers.sh stop-redis'"
  echo "export APIKEYS_TEST_REDIS_START='APIKEYS_SERVERS_DIR=$state $here/servers.sh start-redis'"
  echo "export APIKEYS_TEST_REDIS_PAUSE='APIKEYS_SERVERS_DIR=$state $here/servers.sh pause-redis'"
  echo "export APIKEYS_TEST_REDIS_RESUME='APIKEYS_SERVERS_DIR=$state $here/servers.sh resume-redis'"
}

cmd=${1:-}
case "$cmd" in
  start)
    [[ -f $state/env ]] && die "already started ($state); run: $0 stop"
    install_missing
    mkdir -p "$state/pg" "$state/redis"
    PG_PORT=$(free_port)
    REDIS_PORT=$(free_port)
    while [[ $REDIS_PORT == "$PG_PORT" ]]; do REDIS_PORT=$(free_port); done
    PG_USER=$(pg_user)
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$state/pg"
    chmod 755 "$state"
    as_pg "$pg_bin/initdb" -D "$state/pg/data" -U "$PG_USER" -A trust -E UTF8 --locale=C.UTF-8 \
      >"$state/pg/initdb.log" 2>&1 || { cat "$state/pg/initdb.log" >&2; die "initdb failed"; }
    printf 'PG_PORT=%s\nREDIS_PORT=%s\nPG_USER=%s\n' "$PG_PORT" "$REDIS_PORT" "$PG_USER" >"$state/env"
    # Every role is trusted except apikeys_needs_pw, which must give a password
    # (SCRAM) and has none that works: the wrong-password tests connect as it. First
    # match wins, so the line goes first; rewritten in place to keep the owner.
    hba=$state/pg/data/pg_hba.conf
    { echo "host all apikeys_needs_pw 127.0.0.1/32 scram-sha-256"; cat "$hba"; } >"$state/pg/hba.new"
    cat "$state/pg/hba.new" >"$hba" && rm -f "$state/pg/hba.new"
    start_pg || { cat "$state/pg/log" >&2; die "postgres did not start"; }
    "$pg_bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" apikeys_test
    start_redis
    log "postgres pid $(pg_pid) port $PG_PORT, redis pid $(redis_pid) port $REDIS_PORT ($state)"
    print_env
    ;;
  env)
    print_env
    ;;
  stop)
    if [[ -f $state/env ]]; then
      load_state
      stop_redis
      stop_pg
    fi
    rm -rf "$state"
    log "stopped"
    ;;
  restart-pg)
    load_state
    stop_pg
    start_pg || { cat "$state/pg/log" >&2; die "postgres did not restart"; }
    log "postgres restarted (pid $(pg_pid))"
    ;;
  restart-redis)
    load_state
    stop_redis
    start_redis
    log "redis restarted (pid $(redis_pid))"
    ;;
  stop-pg)
    load_state
    stop_pg
    log "postgres stopped"
    ;;
  start-pg)
    load_state
    [[ -n $(pg_pid) ]] && kill -0 "$(pg_pid)" 2>/dev/null && { log "postgres already running"; exit 0; }
    start_pg || { cat "$state/pg/log" >&2; die "postgres did not start"; }
    log "postgres started (pid $(pg_pid))"
    ;;
  stop-redis)
    load_state
    stop_redis
    log "redis stopped"
    ;;
  start-redis)
    load_state
    [[ -n $(redis_pid) ]] && kill -0 "$(redis_pid)" 2>/dev/null && { log "redis already running"; exit 0; }
    start_redis
    log "redis started (pid $(redis_pid))"
    ;;
  pause-redis|resume-redis)
    load_state
    pid=$(redis_pid)
    [[ -n $pid ]] || die "redis is not running"
    if [[ $cmd == pause-redis ]]; then kill -STOP "$pid"; else kill -CONT "$pid"; fi
    log "redis ${cmd%-redis}d (pid $pid)"
    ;;
  status)
    load_state
    echo "postgres pid $(pg_pid) port $PG_PORT; redis pid $(redis_pid) port $REDIS_PORT"
    ;;
  *)
    echo "usage: $0 start|stop|env|status|restart-pg|restart-redis|stop-pg|start-pg|stop-redis|start-redis|pause-redis|resume-redis" >&2
    exit 2
    ;;
esac
