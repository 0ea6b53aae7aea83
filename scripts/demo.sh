#!/usr/bin/env bash
# Builds the apikeys CLI (Release, into build/) and walks through a key's life on a
# throw-away SQLite file with a random pepper: create, list, verify, revoke, verify.
# Prints each step; exits 0 only if every step behaved as documented.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh

jobs=${JOBS:-2}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs" --target apikeys_cli
cli="$PWD/build/tools/apikeys"

workdir=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-demo.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
db="$workdir/demo.db"

# The pepper is the server-side HMAC key: 32 random bytes as 64 hex characters.
if command -v openssl >/dev/null 2>&1; then
  APIKEYS_PEPPER=$(openssl rand -hex 32)
else
  APIKEYS_PEPPER=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
fi
export APIKEYS_PEPPER

# A random version-4 UUID for the demo account.
if [[ -r /proc/sys/kernel/random/uuid ]]; then
  account=$(cat /proc/sys/kernel/random/uuid)
else
  hex=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  account="${hex:0:8}-${hex:8:4}-4${hex:13:3}-a${hex:17:3}-${hex:20:12}"
fi

failures=0
out=""
rc=0

# step TITLE EXPECTED_EXIT_CODE ARGS... : runs the CLI, prints the command and its output,
# and leaves stdout in $out and the exit code in $rc.
step() {
  local title=$1 expected=$2
  shift 2
  local shown=("$@")
  if [[ -n "${secret:-}" ]]; then
    shown=("${shown[@]//$secret/sk_...}")  # keep the secret out of the transcript
  fi
  echo
  echo "==> $title"
  local cmdline
  printf -v cmdline '%q ' "${shown[@]}"
  echo "\$ apikeys --db demo.db ${cmdline% }"
  rc=0
  out=$("$cli" --db "$db" "$@") || rc=$?
  echo "$out"
  if [[ $rc -ne $expected ]]; then
    echo "!! expected exit code $expected, got $rc" >&2
    failures=$((failures + 1))
  else
    echo "(exit code $rc, as expected)"
  fi
}

# expect TEXT DESCRIPTION : checks that the last output contains TEXT.
expect() {
  if [[ "$out" != *"$1"* ]]; then
    echo "!! expected $2" >&2
    failures=$((failures + 1))
  fi
}

# field NAME : a string field of the last (pretty-printed) JSON output.
field() {
  sed -n "s/^ *\"$1\": \"\([^\"]*\)\".*/\1/p" <<<"$out" | head -n 1
}

secret=""
step "create a key (the secret is shown only this once)" 0 \
  create --account "$account" --title "demo key" --description "made by scripts/demo.sh" --expires-in-days 30
key_id=$(field key_id)
public_key=$(field public_key)
secret=$(field secret_key)
if [[ -z "$key_id" || "$public_key" != pk_* || "$secret" != sk_* ]]; then
  echo "!! create did not print key_id, public_key and secret_key" >&2
  exit 1
fi

step "list the account's keys (no secrets)" 0 list --account "$account"
expect "\"key_id\": \"$key_id\"" "the new key in the list"
if [[ "$out" == *"$secret"* ]]; then
  echo "!! list printed the secret" >&2
  failures=$((failures + 1))
fi

step "verify the key" 0 verify "$public_key" "$secret"
expect '"valid": true' "a valid verdict"

step "revoke it" 0 revoke --account "$account" --key-id "$key_id"
expect '"status": "revoked"' "status revoked"

step "verify again: rejected" 1 verify "$public_key" "$secret"
expect '"code": "revoked"' "code revoked"

step "list again: revoked, last use recorded" 0 list --account "$account"
expect '"status": "revoked"' "status revoked in the list"

echo
if [[ $failures -ne 0 ]]; then
  echo "demo: $failures step(s) misbehaved" >&2
  exit 1
fi
echo "demo: every step behaved as expected"
