#!/usr/bin/env bash
# CTest driver for example_http_server: starts it on a free loopback port, checks its
# answers (valid key -> 200 with the account id; no, malformed, wrong, revoked, disabled
# or doubled key -> 401 with a JSON error; a valid key without the scope a route needs
# -> 403 insufficient_scope, RFC 6750; a key limited to one request a minute, two at once -> 200 with
# RateLimit-Policy and RateLimit, then 429 with Retry-After; a key with one credit -> 200,
# then 402 without Retry-After; GET /metrics in the Prometheus text format, whose counters
# move by exactly the requests made between two scrapes, and count the changes the example
# made to its keys), then stops it with SIGTERM.
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
reader=$(field reader-key)
revoked=$(field revoked-key)
disabled=$(field disabled-key)
limited=$(field limited-key)
metered=$(field credit-key)
[[ -n "$url" && -n "$account" && -n "$valid" && -n "$reader" && -n "$revoked" && -n "$disabled" &&
  -n "$limited" && -n "$metered" ]] ||
  fail "unexpected server output"
# The valid key with its secret's last character changed.
last=${valid: -1}
wrong=${valid%?}$([[ "$last" == a ]] && echo b || echo a)

checks=0
# expect <name> <status> <body substring> [curl arguments...] (route: $route)
route=/whoami
expect() {
  local name=$1 status=$2 want=$3
  shift 3
  local got
  got=$("$curl" -sS --max-time 20 -o "$work/body" -D "$work/headers" -w '%{http_code}' "$@" "$url$route") ||
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
cp "$work/body" "$work/revoked-body"
expect "disabled key"                  401 '"error":"invalid_api_key"' -H "X-API-Key: $disabled"
# A disabled key gets exactly the answer a revoked one gets: nothing tells them apart.
cmp -s "$work/body" "$work/revoked-body" || fail "disabled key: not the same body as a revoked key"
grep -qi '^www-authenticate: bearer realm="apikeys example"' "$work/headers" ||
  fail "disabled key: not the same WWW-Authenticate as other failures"
expect "Basic scheme"                  401 '"error":"invalid_api_key"' -H "Authorization: Basic dXNlcjpwYXNz"
expect "two keys"                      401 '"error":"invalid_api_key"' -H "X-API-Key: $valid" -H "Authorization: Bearer $valid"
grep -qi '^www-authenticate: bearer' "$work/headers" || fail "401 without WWW-Authenticate"

# A route that needs the scope invoices:read.
route=/invoices
expect "scoped route, key with the scope"    200 '"invoices":[]' -H "X-API-Key: $reader"
expect "scoped route, key without the scope" 403 '"missing_scopes":["invoices:read"]' -H "X-API-Key: $valid"
grep -qF '"error":"insufficient_scope"' "$work/body" || fail "403 without error insufficient_scope"
grep -qiF 'www-authenticate: Bearer realm="apikeys example", error="insufficient_scope", scope="invoices:read"' \
  "$work/headers" || fail "403 without the RFC 6750 WWW-Authenticate: $(cat "$work/headers")"
expect "scoped route, disabled key"          401 '"error":"invalid_api_key"' -H "X-API-Key: $disabled"
expect "scoped route, wrong secret"          401 '"error":"invalid_api_key"' -H "X-API-Key: $wrong"
expect "scoped route, no key"                401 '"error":"missing_api_key"'

# Rate limits: per-minute=1/1m:2 admits two requests at once, then one a minute. The
# policy's quota is the burst, its window the time the limit takes to give all of it back;
# RateLimit's t, on a 200 and on a 429 alike, the time until the whole quota is back.
# has_header <name> <extended regex of the value>: in the last response's headers.
has_header() {
  tr -d '\r' <"$work/headers" | grep -qiE "^$1: $2\$" ||
    fail "no '$1: $2' header: $(cat "$work/headers")"
}
route=/whoami
expect "rate-limited key, first request" 200 "\"account_id\":\"$account\"" -H "X-API-Key: $limited"
has_header RateLimit-Policy '"per-minute";q=2;w=120'
has_header RateLimit '"per-minute";r=1;t=(59|60)'
if grep -qi '^retry-after:' "$work/headers"; then fail "200 with Retry-After"; fi
expect "rate-limited key, second request" 200 "\"account_id\":\"$account\"" -H "X-API-Key: $limited"
has_header RateLimit '"per-minute";r=0;t=(1[01][0-9]|120)'
expect "rate-limited key, third request" 429 '"error":"rate_limited"' -H "X-API-Key: $limited"
grep -qF '"limit":"per-minute"' "$work/body" || fail "429 body does not name the limit"
# Retry-After 1 to 60 s: how long is left depends on how long the first requests took (a
# loaded or sanitized run may take seconds); t a minute more, 61 to 120.
wait_s=$(tr -d '\r' <"$work/headers" | awk -F': ' 'tolower($1) == "retry-after" { print $2 }')
[[ "$wait_s" =~ ^([1-9]|[1-5][0-9]|60)$ ]] || fail "429: Retry-After '$wait_s', expected 1 to 60"
has_header RateLimit-Policy '"per-minute";q=2;w=120'
has_header RateLimit "\"per-minute\";r=0;t=$((wait_s + 60))"
# Keys without limits get no RateLimit fields.
expect "key without limits, no RateLimit" 200 "\"account_id\":\"$account\"" -H "X-API-Key: $valid"
if grep -qi '^ratelimit' "$work/headers"; then fail "RateLimit fields for a key without limits"; fi

# Credits: one request is paid for; the next is 402 (top up), not 429 (retry later).
expect "credit key, first request"  200 "\"account_id\":\"$account\"" -H "X-API-Key: $metered"
expect "credit key, out of credits" 402 '"error":"usage_exceeded"' -H "X-API-Key: $metered"
grep -qF '"remaining":0' "$work/body" || fail "402 body without the balance"
if grep -qi '^retry-after:' "$work/headers"; then fail "402 with Retry-After"; fi

# Metrics: scrape, make a known set of requests, scrape again; every counter of the
# validations must have moved by exactly what they did, and nothing else.
# scrape <file>: GET /metrics into <file>, checking its status and content type.
scrape() {
  local got
  got=$("$curl" -sS --max-time 20 -o "$1" -D "$work/headers" -w '%{http_code}' "$url/metrics") ||
    fail "metrics: curl failed"
  [[ "$got" == 200 ]] || fail "metrics: status $got"
  local type='content-type: text/plain; version=0.0.4; charset=utf-8'
  tr -d '\r' <"$work/headers" | grep -qixF "$type" ||
    fail "metrics: content type: $(cat "$work/headers")"
  grep -qx '# TYPE apikeys_validations_total counter' "$1" || fail "metrics: no TYPE line"
  grep -qx '# TYPE apikeys_validation_duration_seconds histogram' "$1" ||
    fail "metrics: no histogram"
}
scrape "$work/metrics-before"
# The changes the example made before it listened: six keys created, one revoked, one
# disabled; no other action.
while read -r name value; do
  case "$name" in
    'apikeys_changes_total{action="create"}') want=6 ;;
    'apikeys_changes_total{action="revoke"}' | 'apikeys_changes_total{action="disable"}') want=1 ;;
    apikeys_changes_total*) want=0 ;;
    *) continue ;;
  esac
  [[ "$value" == "$want" ]] || fail "metrics: $name is $value, expected $want"
done < <(grep -v '^#' "$work/metrics-before")
[[ $(grep -c '^apikeys_changes_total{' "$work/metrics-before") -eq 13 ]] ||
  fail "metrics: not one apikeys_changes_total series per action"
route=/whoami
expect "metrics: valid key"            200 "\"account_id\":\"$account\"" -H "X-API-Key: $valid"
expect "metrics: valid key again"      200 "\"account_id\":\"$account\"" -H "X-API-Key: $valid"
expect "metrics: wrong secret"         401 '"error":"invalid_api_key"' -H "X-API-Key: $wrong"
expect "metrics: malformed key"        401 '"error":"invalid_api_key"' -H "X-API-Key: not-a-key"
expect "metrics: no key (not counted)" 401 '"error":"missing_api_key"'
expect "metrics: rate-limited key"     429 '"error":"rate_limited"' -H "X-API-Key: $limited"
scrape "$work/metrics-after"
# Every series of both scrapes (the same ones), with the change expected of it; 0 unless
# listed (no key changed, nothing failed; the last-use and rehash writes are left out:
# the background writer flushes when its timer says). The keys were all used above: the valid and the limited key's verdicts are
# cached (hits; the limited key's burst is spent), while the wrong secret
# misses (the cache holds the key's valid verdict, for another digest) and is answered
# from the store.
declare -A moved=(
  ['apikeys_validations_total{code="valid"}']=2
  ['apikeys_validations_total{code="wrong_secret"}']=1
  ['apikeys_validations_total{code="malformed"}']=1
  ['apikeys_validations_total{code="rate_limited"}']=1
  ['apikeys_validation_duration_seconds_count{path="format"}']=1
  ['apikeys_validation_duration_seconds_bucket{path="format",le="+Inf"}']=1
  ['apikeys_validation_duration_seconds_count{path="cache"}']=3
  ['apikeys_validation_duration_seconds_bucket{path="cache",le="+Inf"}']=3
  ['apikeys_validation_duration_seconds_count{path="store"}']=1
  ['apikeys_validation_duration_seconds_bucket{path="store",le="+Inf"}']=1
  ['apikeys_cache_requests_total{result="hit"}']=3
  ['apikeys_cache_requests_total{result="miss"}']=1
  ['apikeys_admission_decisions_total{result="rate_limited"}']=1
)
series() { grep -v '^#' "$1" | awk '{ print $1 }'; }
[[ "$(series "$work/metrics-before")" == "$(series "$work/metrics-after")" ]] ||
  fail "metrics: the two scrapes have different series"
metric_checks=0
while read -r name after; do
  case "$name" in
    apikeys_validations_total* | apikeys_cache_requests_total* | \
      apikeys_admission_decisions_total* | apikeys_validation_duration_seconds_count* | \
      *'le="+Inf"}' | apikeys_changes_total* | apikeys_background_errors_total* | \
      apikeys_background_recoveries_total*) ;;
    *) continue ;;
  esac
  before=$(awk -v n="$name" '$1 == n { print $2 }' "$work/metrics-before")
  want=${moved[$name]:-0}
  [[ $((after - before)) -eq $want ]] ||
    fail "metrics: $name moved by $((after - before)), expected $want"
  metric_checks=$((metric_checks + 1))
done < <(grep -v '^#' "$work/metrics-after")
[[ $metric_checks -ge 50 ]] || fail "metrics: only $metric_checks series checked"
echo "ok   metrics: $metric_checks series moved as expected"
checks=$((checks + 1))

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[[ $status -eq 0 ]] || fail "server exited with status $status after SIGTERM"
grep -q '^stopped' "$work/out" || fail "server did not report a clean stop"
for key in "$valid" "$reader" "$disabled" "$limited" "$metered"; do
  if grep -qF "${key#*:}" "$work/err"; then fail "a secret appeared in the server log"; fi
done
echo "http_server: $checks checks passed, clean stop"
