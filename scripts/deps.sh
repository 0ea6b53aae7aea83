#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages apikeys needs to build, test and demo, and only
# those that are missing: `apt-get update` runs only when something is to be installed.
# Root runs apt-get directly; other users go through sudo when it exists.
# Usage: bash scripts/deps.sh            the packages of the build, tests and demo
#        bash scripts/deps.sh PKG...     these packages instead (the CI scripts' extras)
set -euo pipefail

if [[ $# -gt 0 ]]; then
  packages=("$@")
else
  packages=(
    build-essential cmake pkg-config
    libssl-dev libsqlitecpp-dev libsqlite3-dev libfmt-dev
    catch2 libcli11-dev nlohmann-json3-dev libbenchmark-dev libcpp-httplib-dev
    sqlite3 curl doxygen python3
  )
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: not a Debian-like system (no dpkg-query/apt-get); install these yourself:" >&2
  echo "  ${packages[*]}" >&2
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "deps.sh: all ${#packages[@]} packages are installed: ${packages[*]}"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
  as_root() { sudo "$@"; }
else
  echo "deps.sh: missing packages, and neither root nor sudo to install them: ${missing[*]}" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]}"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
