#!/usr/bin/env bash
# CTest driver for example_http_server: starts it on a free loopback port, checks its
# answers (valid key -> 200 with the account id; no, malformed, wrong, revoked or
# doubled key -> 401 with a JSON error), then stops it with SIGTERM.
#   http_server_test.sh <example_http_server> [curl]
set -euo pipefail

server=$1
curl=${2:-curl}
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- server stderr:" >&2; cat "$work/err" >&2 || true; exit 1; }

"$server" >"$work/out" 2>"$work/err" &
pid=$!

# Wait for the "listening" line: poll with a generous bound, no fixed sleep.
for _ in $(seq 1 600); do
  grep -q '^listening ' "$work/out" && break
  kill -0 "$pid" 2>/dev/null || fail "server exited before listening"
  sleep 0.05
done
grep -q '^listening ' "$work/out" || fail "server did not listen within 30 s"

field() { awk -v k="$1" '$1 == k { print $2 }' "$work/out"; }
url=$(field listening)
account=$(field account)
valid=$(field valid-key)
revoked=$(field revoked-key)
[[ -n "$url" && -n "$account" && -n "$valid" && -n "$revoked" ]] || fail "unexpected server output"
# The valid key with its secret's last character changed.
last=${valid: -1}
wrong=${valid%?}$([[ "$last" == a ]] && echo b || echo a)

checks=0
# expect <name> <status> <body substring> [curl arguments...]
expect() {
  local name=$1 status=$2 want=$3
  shift 3
  local got
  got=$("$curl" -sS --max-time 20 -o "$work/body" -D "$work/headers" -w '%{http_code}' "$@" "$url/whoami") ||
    fail "$name: curl failed"
  [[ "$got" == "$status" ]] || fail "$name: status $got, expected $status; body: $(cat "$work/body")"
  grep -qF -- "$want" "$work/body" || fail "$name: body lacks '$want': $(cat "$work/body")"
  grep -qi '^content-type: application/json' "$work/headers" || fail "$name: not JSON"
  echo "ok   $name -> $got"
  checks=$((checks + 1))
}

expect "X-API-Key, valid"              200 "\"account_id\":\"$account\"" -H "X-API-Key: $valid"
expect "Authorization Bearer, valid"   200 "\"account_id\":\"$account\"" -H "Authorization: Bearer $valid"
expect "bearer scheme in lower case"   200 "\"account_id\":\"$account\"" -H "Authorization: bearer $valid"
expect "no key"                        401 '"error":"missing_api_key"'
expect "malformed key"                 401 '"error":"invalid_api_key"' -H "X-API-Key: not-a-key"
expect "malformed bearer"              401 '"error":"invalid_api_key"' -H "Authorization: Bearer"
expect "wrong secret"                  401 '"error":"invalid_api_key"' -H "X-API-Key: $wrong"
expect "revoked key"                   401 '"error":"invalid_api_key"' -H "X-API-Key: $revoked"
expect "Basic scheme"                  401 '"error":"invalid_api_key"' -H "Authorization: Basic dXNlcjpwYXNz"
expect "two keys"                      401 '"error":"invalid_api_key"' -H "X-API-Key: $valid" -H "Authorization: Bearer $valid"
grep -qi '^www-authenticate: bearer' "$work/headers" || fail "401 without WWW-Authenticate"

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[[ $status -eq 0 ]] || fail "server exited with status $status after SIGTERM"
grep -q '^stopped' "$work/out" || fail "server did not report a clean stop"
if grep -qF "${valid#*:}" "$work/err"; then fail "a secret appeared in the server log"; fi
echo "http_server: $checks checks passed, clean stop"
