#!/usr/bin/env bash
# Interoperability with the reference Python service: keys it made (reference_service.py
# reproduces its create_api_key) are imported from its two export forms, JSON lines and
# PostgreSQL CSV, each into its own database, and then behave as they did there: every
# key verifies with the secret its customer holds, under the service's API_KEY_SECRET as
# the legacy pepper; revoked and expired rows answer so; use moves each key to the
# current pepper, after which the legacy pepper is no longer needed; branded keys issued
# with --brand verify beside them; a second import changes nothing.
# Usage: interop_test.sh APIKEYS_CLI REFERENCE_SERVICE_PY
# Exits 77 (skipped) when python3 is missing, unless CI=true (then that is a failure).
set -euo pipefail

cli=$1
reference=$2

if ! command -v python3 >/dev/null 2>&1; then
  if [[ ${CI:-} == true ]]; then
    echo "interop: FAIL: python3 is missing (install it: scripts/deps.sh)" >&2
    exit 1
  fi
  echo "interop: SKIP: python3 is missing"
  exit 77
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
APIKEYS_PEPPER=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export APIKEYS_PEPPER
unset APIKEYS_BRAND

failures=0
fail() {
  echo "interop: FAIL: $*" >&2
  failures=$((failures + 1))
}

# json FIELD_EXPRESSION: evaluates a Python expression over `j`, the JSON on stdin.
json() { python3 -c 'import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# run EXPECTED_RC ARGS...: runs the CLI, leaves its stdout in $out, checks its exit code.
run() {
  local expected=$1 rc=0
  shift
  out=$("$cli" "$@" 2>"$work/stderr") || rc=$?
  if [[ $rc -ne $expected ]]; then
    fail "apikeys ${*:1:6}...: exit $rc, expected $expected; stderr: $(cat "$work/stderr")"
  fi
}

# verify_code DB EXPECTED_CODE EXPECTED_RC PUBLIC SECRET [GLOBAL OPTIONS...]: the token is
# given on stdin, as a service operator would. The exit code is checked at once; the answer
# and its stderr are kept for check_answers, which reads all of them in one Python run: a
# Python start-up for each of the test's ninety verifications was most of its time.
answers=0
mkdir "$work/answers"
verify_code() {
  local db=$1 code=$2 expected_rc=$3 public=$4 secret=$5 rc=0
  shift 5
  local what="verify $public on ${db##*/} $*"
  answers=$((answers + 1))
  local kept=$work/answers/$answers
  out=$(printf '%s:%s\n' "$public" "$secret" | "$cli" --db "$db" "$@" verify - 2>"$kept.stderr") ||
    rc=$?
  if [[ $rc -ne $expected_rc ]]; then
    fail "$what: exit $rc, expected $expected_rc; stderr: $(<"$kept.stderr")"
  fi
  printf '%s' "$out" >"$kept.json"
  printf '%s\t%s\t%s\n' "$answers" "$code" "$what" >>"$work/answers/expected.tsv"
}

# check_answers: each answer verify_code kept is JSON with the expected "code". The last
# line Python prints counts the answers it read, so a Python that fails midway fails the test.
check_answers() {
  local report line
  report=$(python3 - "$work/answers" <<'PY'
import json, sys
from pathlib import Path

answers = Path(sys.argv[1])
read = 0
for line in (answers / "expected.tsv").read_text(encoding="utf-8").splitlines():
    n, code, what = line.split("\t", 2)
    try:
        got = json.loads((answers / f"{n}.json").read_text(encoding="utf-8"))["code"]
    except Exception:
        got = "<no JSON>"
    if got != code:
        stderr = (answers / f"{n}.stderr").read_text(encoding="utf-8", errors="replace")
        print(f"{what}: {got}, expected {code}; stderr: {stderr}".replace("\n", " "))
    read += 1
print(f"read {read}")
PY
  ) || true
  while IFS= read -r line; do
    [[ -z $line || $line == "read $answers" ]] || fail "$line"
  done <<<"$report"
  [[ $report == *"read $answers" ]] || fail "check_answers read only part of the $answers answers"
}

# pepper_keys ROLE: the keys under the pepper with that role in $out, or 0 when absent.
pepper_keys() { json "sum(p['keys'] for p in j if p['role'] == '$1')"; }

python3 "$reference" "$work" 20
legacy=(--legacy-pepper-file "$work/api_key_secret")
rows=$(wc -l <"$work/secrets.tsv")
rejected_rows=$(grep -c '^rejected' "$work/secrets.tsv" || true)
importable=$((rows - rejected_rows))

for format in jsonl csv; do
  db=$work/$format.db
  line_column=$([[ $format == jsonl ]] && echo 4 || echo 5)

  # Without the legacy pepper the import is refused, and no database is made.
  run 2 --db "$db" import "$work/keys.$format"
  [[ ! -e $db ]] || fail "$format: an import refused for want of the legacy pepper made a database"

  # The import: every row but the one whose title holds a line break (exit 6).
  run 6 --db "$db" "${legacy[@]}" import "$work/keys.$format"
  [[ $(json 'j["imported"]' <<<"$out") == "$importable" ]] || fail "$format: imported: $out"
  [[ $(json 'j["skipped"]' <<<"$out") == 0 ]] || fail "$format: skipped: $out"
  [[ $(json 'j["rejected"]' <<<"$out") == "$rejected_rows" ]] || fail "$format: rejected: $out"
  expected_lines=$(awk -F'\t' -v c="$line_column" '$1 == "rejected" { print $c }' "$work/secrets.tsv" |
    paste -sd, -)
  [[ $(json '",".join(str(r["line"]) for r in j["rejections"])' <<<"$out") == "$expected_lines" ]] ||
    fail "$format: rejection lines: $out, expected $expected_lines"
  grep -qi 'title' <<<"$(json 'j["rejections"][0]["reason"]' <<<"$out")" ||
    fail "$format: the rejection does not name the title: $out"

  # Every imported key is still under the legacy pepper.
  run 0 --db "$db" "${legacy[@]}" peppers
  [[ $(pepper_keys legacy <<<"$out") == "$importable" ]] || fail "$format: peppers after import: $out"
  [[ $(pepper_keys current <<<"$out") == 0 ]] || fail "$format: peppers after import: $out"

  # Each key as its customer presents it. A wrong secret first: it must not move the key.
  first_valid=$(awk -F'\t' '$1 == "valid" { print $2; exit }' "$work/secrets.tsv")
  verify_code "$db" wrong_secret 1 "$first_valid" "sk_$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32)))')" "${legacy[@]}"
  while IFS=$'\t' read -r expect public secret _; do
    case $expect in
      valid) verify_code "$db" valid 0 "$public" "$secret" "${legacy[@]}" ;;
      revoked) verify_code "$db" revoked 1 "$public" "$secret" "${legacy[@]}" ;;
      expired) verify_code "$db" expired 1 "$public" "$secret" "${legacy[@]}" ;;
      rejected) verify_code "$db" not_found 1 "$public" "$secret" "${legacy[@]}" ;;
    esac
  done <"$work/secrets.tsv"

  # Each verification rewrote its key's digest under the current pepper as it exited.
  run 0 --db "$db" "${legacy[@]}" peppers
  [[ $(pepper_keys legacy <<<"$out") == 0 ]] || fail "$format: peppers after use: $out"
  [[ $(pepper_keys current <<<"$out") == "$importable" ]] || fail "$format: peppers after use: $out"

  # So the legacy pepper is no longer needed.
  while IFS=$'\t' read -r expect public secret _; do
    case $expect in
      valid) verify_code "$db" valid 0 "$public" "$secret" ;;
      revoked) verify_code "$db" revoked 1 "$public" "$secret" ;;
      expired) verify_code "$db" expired 1 "$public" "$secret" ;;
    esac
  done <"$work/secrets.tsv"

  # Branded keys, issued beside the imported ones: both verify with --brand.
  account=$(python3 -c 'import uuid; print(uuid.uuid4())')
  run 0 --db "$db" --brand acme create --account "$account" --title "Branded"
  branded_public=$(json 'j["public_key"]' <<<"$out")
  branded_secret=$(json 'j["secret_key"]' <<<"$out")
  [[ $branded_public == acme_pk_* && $branded_secret == acme_sk_* ]] ||
    fail "$format: --brand acme issued $branded_public"
  verify_code "$db" valid 0 "$branded_public" "$branded_secret" --brand acme
  verify_code "$db" valid 0 "$first_valid" \
    "$(awk -F'\t' '$1 == "valid" { print $3; exit }' "$work/secrets.tsv")" --brand acme
  export APIKEYS_BRAND=acme  # the environment variable instead of the option
  verify_code "$db" valid 0 "$branded_public" "$branded_secret"
  unset APIKEYS_BRAND

  # A second import skips every row it imported, and writes nothing.
  run 6 --db "$db" "${legacy[@]}" import "$work/keys.$format"
  [[ $(json 'j["imported"]' <<<"$out") == 0 ]] || fail "$format: second import: $out"
  [[ $(json 'j["skipped"]' <<<"$out") == "$importable" ]] || fail "$format: second import: $out"
  run 0 --db "$db" peppers
  [[ $(pepper_keys current <<<"$out") == $((importable + 1)) ]] ||
    fail "$format: peppers after the second import: $out"
done
check_answers

if [[ $failures -ne 0 ]]; then
  echo "interop: $failures failures" >&2
  exit 1
fi
echo "interop: OK: $rows rows, each export imported and verified"
