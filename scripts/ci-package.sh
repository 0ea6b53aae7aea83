#!/usr/bin/env bash
# Proves the packaging contract: tests/package/ is built and run against
#   a) a static Release install laid out as vcpkg lays it out (share/apikeys/), made with
#      the options of ports/apikeys/portfile.cmake, through find_package;
#   b) the same as a shared library (features `tools`, `postgres`, `redis` on): the
#      consumer runs and reaches PostgresStore and RedisCache, ldd shows libapikeys.so.N,
#      `nm -D --defined-only` shows only symbols of namespace apikeys (none of fmt,
#      SQLiteCpp, sqlite3, OpenSSL or libstdc++'s templates), readelf -d shows it
#      marked NODELETE, and bin/apikeys --help lists every command;
#   c) the source tree through add_subdirectory;
#   d) pkg-config and a plain `c++` command line (static with --static, and shared);
# plus the build tree's export(EXPORT) package, a static build with the `postgres` and
# `redis` features and absolute CMAKE_INSTALL_LIBDIR/INCLUDEDIR (find_package and pkg-config --static), and
# ports/apikeys/vcpkg.json's version against project().
#
# vcpkg cannot be downloaded here, so its part is replayed: the -D options of
# vcpkg_cmake_configure() and the feature -> option map of vcpkg_check_features() are read
# from the portfile (the port is the one list of those options), plus what
# vcpkg_cmake_configure() itself passes on Linux (Release, lib/, bin/, no package registry).
#
# Usage: bash scripts/ci-package.sh
#   APIKEYS_PKG_DIR  work directory, default /tmp/apikeys-pkg (wiped at the start; must be
#                    under /tmp or a build-pkg* directory)
#   JOBS             parallel build jobs, default 2
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
work=${APIKEYS_PKG_DIR:-/tmp/apikeys-pkg}
jobs=${JOBS:-2}
port_dir=$root/ports/apikeys

case "$work" in
  /tmp/?*|"$root"/build-pkg*) ;;
  *) echo "ci-package.sh: APIKEYS_PKG_DIR must be under /tmp or $root/build-pkg*: $work" >&2
     exit 2 ;;
esac

# --- packages (only the missing ones; apt-get update only when something is missing) ---
packages=(build-essential cmake pkg-config binutils libc-bin
          libssl-dev libsqlitecpp-dev libsqlite3-dev libfmt-dev
          libcli11-dev nlohmann-json3-dev libpq-dev libhiredis-dev)
bash scripts/deps.sh "${packages[@]}"

# --- timing and failure helpers ---
# (No `cmd | grep -q` below: with pipefail, grep's early exit can fail cmd with SIGPIPE.)
now_ms() { date +%s%3N; }
t_start=$(now_ms)
timings=()
step_name=""
step_t0=0
step() {
  end_step
  step_name=$1
  step_t0=$(now_ms)
  echo
  echo "=== ci-package: $step_name"
}
end_step() {
  if [[ -n "$step_name" ]]; then
    local ms=$(( $(now_ms) - step_t0 ))
    timings+=("$(printf '%6d.%01d s  %s' $((ms / 1000)) $((ms % 1000 / 100)) "$step_name")")
    step_name=""
  fi
}
fail() { echo "ci-package: FAIL ($step_name): $*" >&2; exit 1; }
quiet() {  # run a command, show its output only when it fails
  local log=$work/last.log
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    fail "command failed: $*"
  fi
}

rm -rf "$work"
mkdir -p "$work"

# --- the port: version, options, features ---
step "port: read ports/apikeys (version, options, features)"
project_version=$(sed -nE 's/^project\(apikeys[[:space:]]+VERSION[[:space:]]+([0-9][0-9.]*).*/\1/p' CMakeLists.txt)
[[ -n "$project_version" ]] || fail "no 'project(apikeys VERSION x.y.z' line in CMakeLists.txt"
cat >"$work/read-manifest.cmake" <<'EOF'
file(READ "${MANIFEST}" json)
string(JSON name GET "${json}" name)
string(JSON version GET "${json}" version)
string(JSON license GET "${json}" license)
set(features "")
string(JSON has_features ERROR_VARIABLE no_features GET "${json}" features)
if(NOT no_features)
  string(JSON n LENGTH "${json}" features)
  if(n GREATER 0)
    math(EXPR last "${n} - 1")
    foreach(i RANGE ${last})
      string(JSON f MEMBER "${json}" features ${i})
      list(APPEND features "${f}")
    endforeach()
  endif()
endif()
list(JOIN features " " features)
execute_process(COMMAND "${CMAKE_COMMAND}" -E echo "${name}|${version}|${license}|${features}")
EOF
IFS='|' read -r m_name m_version m_license m_features < <(cmake -DMANIFEST="$port_dir/vcpkg.json" -P "$work/read-manifest.cmake")
[[ "$m_name" == apikeys ]] || fail "vcpkg.json name is '$m_name', not apikeys"
[[ "$m_version" == "$project_version" ]] ||
  fail "vcpkg.json version $m_version != project() version $project_version"
[[ -n "$m_license" ]] || fail "vcpkg.json has no license"
echo "version $project_version (CMakeLists.txt project() == vcpkg.json); license $m_license"

# vcpkg_check_features(... FEATURES <feature> <OPTION> ...): feature -> option map.
feature_names=()
feature_opts=()
feature_inverted=()
mode=""
while read -r -a words; do
  for w in "${words[@]}"; do
    case "$w" in
      OUT_FEATURE_OPTIONS) mode=skip1 ;;
      FEATURES) mode=feature ;;
      INVERTED_FEATURES) mode=inverted ;;
      *)
        if [[ "$mode" == skip1 ]]; then mode=""; continue; fi
        [[ "$mode" == feature || "$mode" == inverted ]] ||
          fail "vcpkg_check_features: cannot read '$w'"
        if [[ ${#feature_names[@]} -eq ${#feature_opts[@]} ]]; then
          feature_names+=("$w"); feature_inverted+=("$([[ $mode == inverted ]] && echo 1 || echo 0)")
        else
          feature_opts+=("$w")
        fi ;;
    esac
  done
done < <(sed -n '/^[[:space:]]*vcpkg_check_features(/,/)/p' "$port_dir/portfile.cmake" |
         sed -e 's/#.*//' -e 's/vcpkg_check_features(//' -e 's/)//')
[[ ${#feature_names[@]} -eq ${#feature_opts[@]} ]] || fail "vcpkg_check_features: odd feature/option list"
for f in $m_features; do
  [[ " ${feature_names[*]} " == *" $f "* ]] ||
    fail "vcpkg.json feature '$f' is not in the portfile's vcpkg_check_features()"
done
for f in "${feature_names[@]}"; do
  [[ " $m_features " == *" $f "* ]] || fail "portfile feature '$f' is not in vcpkg.json"
done

# vcpkg_cmake_configure(... OPTIONS -D...): the port's options, one per line. A value
# with a CMake variable in it ('${...}') cannot be replayed here and fails the check.
port_opts=()
uses_feature_options=0
mode=""
# shellcheck disable=SC2016  # '${FEATURE_OPTIONS}' and '${' are the portfile's literal text
while read -r -a words; do
  for w in "${words[@]}"; do
    case "$w" in
      SOURCE_PATH) mode=skip1 ;;
      OPTIONS|OPTIONS_RELEASE) mode=opts ;;
      OPTIONS_DEBUG) mode=debug ;;
      DISABLE_PARALLEL_CONFIGURE|WINDOWS_USE_MSBUILD|NO_CHARSET_FLAG) ;;
      '${FEATURE_OPTIONS}') uses_feature_options=1 ;;
      *)
        if [[ "$mode" == skip1 ]]; then mode=""; continue; fi
        [[ "$mode" == debug ]] && continue
        [[ "$mode" == opts && "$w" == -D* && "$w" != *'${'* ]] ||
          fail "vcpkg_cmake_configure: cannot replay '$w' (keep one literal -D option per line)"
        port_opts+=("$w") ;;
    esac
  done
done < <(sed -n '/^[[:space:]]*vcpkg_cmake_configure(/,/^[[:space:]]*)/p' "$port_dir/portfile.cmake" |
         sed -e 's/#.*//' -e 's/vcpkg_cmake_configure(//' -e 's/^[[:space:]]*)[[:space:]]*$//')
[[ ${#port_opts[@]} -gt 0 ]] || fail "no -D options found in vcpkg_cmake_configure()"
[[ $uses_feature_options -eq 1 || ${#feature_names[@]} -eq 0 ]] ||
  fail "vcpkg_cmake_configure() does not pass \${FEATURE_OPTIONS}"
echo "port options: ${port_opts[*]}"
echo "port features: $(for i in "${!feature_names[@]}"; do printf '%s->%s ' "${feature_names[$i]}" "${feature_opts[$i]}"; done)"

# The -D options a vcpkg build of the port gets with the given features on.
features_to_opts() {
  local on=" $* " i value
  for i in "${!feature_names[@]}"; do
    if [[ "$on" == *" ${feature_names[$i]} "* ]]; then value=ON; else value=OFF; fi
    if [[ ${feature_inverted[$i]} == 1 ]]; then [[ $value == ON ]] && value=OFF || value=ON; fi
    printf '%s\n' "-D${feature_opts[$i]}=$value"
  done
}
# What vcpkg_cmake_configure() adds by itself for a Linux release build.
vcpkg_implied=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_INSTALL_BINDIR=bin
               -DCMAKE_EXPORT_NO_PACKAGE_REGISTRY=ON -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON
               -DFETCHCONTENT_FULLY_DISCONNECTED=ON)

# build_port <build dir> <install prefix> <BUILD_SHARED_LIBS> <features...>: configure and
# build like the port.
build_port() {
  local dir=$1 prefix=$2 shared=$3; shift 3
  local opts=()
  mapfile -t opts < <(features_to_opts "$@")
  echo "cmake -S . -B $dir ${vcpkg_implied[*]} -DBUILD_SHARED_LIBS=$shared ${port_opts[*]} ${opts[*]}"
  quiet cmake -S "$root" -B "$dir" "${vcpkg_implied[@]}" -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DBUILD_SHARED_LIBS="$shared" "${port_opts[@]}" "${opts[@]}"
  quiet cmake --build "$dir" -j "$jobs"
}

# check_layout <prefix> <static|shared> <features...>: vcpkg's layout, a backend's header
# only with its backend, nothing of the build machine inside.
check_layout() {
  local prefix=$1 kind=$2 f; shift 2
  local features=" $* "
  for f in share/apikeys/apikeysConfig.cmake share/apikeys/apikeysConfigVersion.cmake \
           share/apikeys/apikeysTargets.cmake include/apikeys/apikeys.hpp \
           include/apikeys/version.hpp include/apikeys/export.hpp lib/pkgconfig/apikeys.pc; do
    [[ -f "$prefix/$f" ]] || fail "$prefix/$f is missing"
  done
  [[ ! -e "$prefix/lib/cmake" ]] || fail "$prefix/lib/cmake exists: the CMake package belongs in share/apikeys"
  if [[ $kind == static ]]; then
    [[ -f "$prefix/lib/libapikeys.a" ]] || fail "$prefix/lib/libapikeys.a is missing"
  else
    compgen -G "$prefix/lib/libapikeys.so.*" >/dev/null || fail "$prefix/lib/libapikeys.so.* is missing"
  fi
  check_backend_header "$prefix/include" postgres postgres_store.hpp "$features"
  check_backend_header "$prefix/include" redis redis_cache.hpp "$features"
  check_backend_header "$prefix/include" redis redis_limiter.hpp "$features"
  if grep -rlF -e "$root/include" -e "$root/src" -e "$root/cmake" -e "$work/build-" \
       "$prefix/share" "$prefix/lib/pkgconfig"; then
    fail "installed package files name the source or build tree (listed above)"
  fi
}

check_backend_header() {  # <include dir> <feature> <header> <" features ">
  if [[ "$4" == *" $2 "* ]]; then
    [[ -f "$1/apikeys/$3" ]] || fail "$3 is not installed with feature $2"
  else
    [[ ! -e "$1/apikeys/$3" ]] || fail "$3 is installed without feature $2"
  fi
}

# consumer_cmake <name> <cmake args...>: configure, build and run tests/package.
consumer_cmake() {
  local name=$1; shift
  local dir=$work/consumer-$name
  quiet cmake -S "$root/tests/package" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@"
  quiet cmake --build "$dir" -j "$jobs"
  run_consumer "$name" "$dir/consumer"
}
run_consumer() {  # run_consumer <name> <program>: runs it, keeps its output in $work/out-<name>
  local name=$1 program=$2
  "$program" | tee "$work/out-$name" || fail "the consumer ($name) failed"
}
reached_backends() {  # reached_backends <name>: the consumer used PostgresStore and RedisCache
  grep -q "^ok   PostgresStore" "$work/out-$1" || fail "consumer $1 did not use PostgresStore"
  grep -q "^ok   RedisCache" "$work/out-$1" || fail "consumer $1 did not use RedisCache"
}
found_dir() { sed -n 's/^apikeys_DIR:[A-Z]*=//p' "$work/consumer-$1/CMakeCache.txt"; }

# --- a) static, find_package ---
step "a) static Release build of the port (default features)"
build_port "$work/build-static" "$work/static" OFF
step "a) static install into a vcpkg-like prefix; find_package consumer"
quiet cmake --install "$work/build-static"   # to CMAKE_INSTALL_PREFIX, as vcpkg does
check_layout "$work/static" static
consumer_cmake static -DCMAKE_PREFIX_PATH="$work/static"
[[ "$(found_dir static)" == "$work/static/share/apikeys" ]] ||
  fail "find_package found apikeys in '$(found_dir static)', not $work/static/share/apikeys"
[[ "$(ldd "$work/consumer-static/consumer")" != *libapikeys* ]] || fail "static consumer loads libapikeys.so"

step "build tree: find_package through export(EXPORT) (apikeys_DIR=<build dir>)"
consumer_cmake buildtree -Dapikeys_DIR="$work/build-static"
[[ "$(found_dir buildtree)" == "$work/build-static" ]] || fail "apikeys_DIR is '$(found_dir buildtree)'"

# --- b) shared, find_package, ldd, exported symbols, the CLI ---
step "b) shared Release build of the port (features tools, postgres, redis)"
# Configured for another prefix: the install-time --prefix must win, in apikeys.pc too.
build_port "$work/build-shared" "$work/unused-prefix" ON tools postgres redis
step "b) shared install (cmake --install --prefix); consumer, ldd, nm"
quiet cmake --install "$work/build-shared" --prefix "$work/shared"
check_layout "$work/shared" shared tools postgres redis
grep -qx "prefix=$work/shared" "$work/shared/lib/pkgconfig/apikeys.pc" ||
  fail "apikeys.pc does not carry the --prefix given at install time"
grep -q "Requires.private" "$work/shared/lib/pkgconfig/apikeys.pc" &&
  fail "the shared apikeys.pc lists Requires.private (a shared libapikeys records its own dependencies)"
consumer_cmake shared -DCMAKE_PREFIX_PATH="$work/shared"
[[ "$(found_dir shared)" == "$work/shared/share/apikeys" ]] || fail "apikeys_DIR is '$(found_dir shared)'"
reached_backends shared
soname=$(objdump -p "$work/shared/lib/libapikeys.so" | awk '$1 == "SONAME" {print $2}')
[[ "$soname" =~ ^libapikeys\.so\.[0-9]+ ]] || fail "libapikeys.so has SONAME '$soname'"
ldd_line=$(ldd "$work/consumer-shared/consumer" | grep 'libapikeys' || true)
echo "ldd: $ldd_line"
[[ "$ldd_line" == *"$soname => $work/shared/lib/$soname"* ]] ||
  fail "ldd does not show the consumer using $soname from $work/shared/lib"
[[ -f "$work/shared/lib/$soname" ]] || fail "$soname is not installed"

# Every exported symbol must be ours: a function or object in namespace apikeys, or the
# vtable, VTT, typeinfo or thunk of one of its classes (cmake/apikeys.map hides the
# rest). Anything else is an offender: C symbols (sqlite3_*, OpenSSL's), fmt:: or
# SQLite::, and libstdc++ template instantiations (std::_Hashtable<...>) alike.
nm -D --defined-only "$work/shared/lib/libapikeys.so" | awk 'NF >= 3 {print $3}' >"$work/dynsyms"
offenders=()
own_count=0
while IFS=$'\t' read -r raw demangled; do
  if [[ "$raw" =~ ^_Z(NK?|T[VTCIS]N|T[hvc][0-9n_]*_NK?)7apikeys ]]; then
    own_count=$((own_count + 1))
  elif [[ "$raw" != _init && "$raw" != _fini ]]; then
    offenders+=("$demangled")
  fi
done < <(paste "$work/dynsyms" <(c++filt <"$work/dynsyms"))
echo "nm -D --defined-only: $own_count apikeys symbols, ${#offenders[@]} others"
if [[ ${#offenders[@]} -gt 0 ]]; then
  printf '  exported, not ours: %s\n' "${offenders[@]}" >&2
  fail "libapikeys.so exports symbols outside namespace apikeys"
fi
[[ $own_count -gt 0 ]] || fail "libapikeys.so exports no apikeys symbol"
# Marked never to be unloaded (CMakeLists.txt, -z nodelete): a thread that exits after a
# host's dlclose() still runs the library's thread-exit destructor.
flags1=$(readelf -d "$work/shared/lib/libapikeys.so" | awk '$2 == "(FLAGS_1)"')
echo "readelf -d: $flags1"
[[ "$flags1" == *NODELETE* ]] || fail "libapikeys.so is not marked NODELETE (readelf -d)"

[[ -x "$work/shared/bin/apikeys" ]] || fail "the tools feature did not install bin/apikeys"
help=$(LD_LIBRARY_PATH="$work/shared/lib" "$work/shared/bin/apikeys" --help) || fail "apikeys --help failed"
for cmd in create list revoke delete verify; do
  grep -qw "$cmd" <<<"$help" || fail "apikeys --help does not list '$cmd'"
done
echo "bin/apikeys --help lists create, list, revoke, delete, verify"

# --- c) add_subdirectory ---
step "c) add_subdirectory of the source tree (static)"
consumer_cmake subdir -DAPIKEYS_CONSUMER_MODE=subdirectory -DAPIKEYS_SOURCE_DIR="$root"
cmake --build "$work/consumer-subdir" --target help >"$work/subdir-targets"
grep -qw apikeys "$work/subdir-targets" || fail "no apikeys target under add_subdirectory"
for t in apikeys_cli apikeys_tests example_basic; do
  if grep -qw "$t" "$work/subdir-targets"; then
    fail "target $t exists although apikeys is not the top-level project"
  fi
done
[[ ! -e "$work/consumer-subdir/apikeys/apikeysTargets.cmake" ]] ||
  fail "apikeys exported its build tree (APIKEYS_INSTALL should be off as a subproject)"

# --- d) pkg-config, plain compiler command line ---
cxx=${CXX:-c++}
pc_build() {  # pc_build <name> <pkg-config dir> <extra pkg-config flags...>
  local name=$1 pcdir=$2; shift 2
  local out=$work/pc-$name cflags libs
  mkdir -p "$out"
  PKG_CONFIG_PATH="$pcdir" pkg-config --exists --print-errors apikeys || fail "pkg-config cannot use $pcdir/apikeys.pc"
  cflags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags apikeys)
  libs=$(PKG_CONFIG_PATH="$pcdir" pkg-config --libs "$@" apikeys)
  echo "$cxx -std=c++17 -O2 -Wall -Wextra -Wpedantic -Werror tests/package/main.cpp -o $out/consumer $cflags $libs"
  # shellcheck disable=SC2086  # the flags are words
  quiet "$cxx" -std=c++17 -O2 -Wall -Wextra -Wpedantic -Werror "$root/tests/package/main.cpp" \
    -o "$out/consumer" $cflags $libs
}
step "d) pkg-config --static, plain c++ command line"
pc_build static "$work/static/lib/pkgconfig" --static
run_consumer pc-static "$work/pc-static/consumer"
[[ "$(ldd "$work/pc-static/consumer")" != *libapikeys* ]] || fail "static pkg-config consumer loads libapikeys.so"

step "d) pkg-config, shared, plain c++ command line"
pc_build shared "$work/shared/lib/pkgconfig"
LD_LIBRARY_PATH="$work/shared/lib" run_consumer pc-shared "$work/pc-shared/consumer"
reached_backends pc-shared
[[ "$(LD_LIBRARY_PATH="$work/shared/lib" ldd "$work/pc-shared/consumer")" == *"$soname => $work/shared/lib/$soname"* ]] ||
  fail "the pkg-config (shared) consumer does not use $soname"

# The static build again, now with the backend features (libpq and hiredis are
# dependencies a static consumer must link) and absolute install dirs, which a .pc names
# as they are.
step "d) static + features postgres, redis; absolute CMAKE_INSTALL_LIBDIR/INCLUDEDIR: pkg-config, find_package"
abs=$work/static-abs
mapfile -t backend_opts < <(features_to_opts postgres redis)
quiet cmake "$work/build-static" -DCMAKE_INSTALL_PREFIX="$abs" "${backend_opts[@]}" \
  -DCMAKE_INSTALL_LIBDIR="$abs/lib64abs" -DCMAKE_INSTALL_INCLUDEDIR="$abs/incabs"
quiet cmake --build "$work/build-static" -j "$jobs"
quiet cmake --install "$work/build-static"
grep -qx "libdir=$abs/lib64abs" "$abs/lib64abs/pkgconfig/apikeys.pc" || fail "absolute libdir is wrong in apikeys.pc"
grep -qx "includedir=$abs/incabs" "$abs/lib64abs/pkgconfig/apikeys.pc" || fail "absolute includedir is wrong in apikeys.pc"
pc_build abs "$abs/lib64abs/pkgconfig" --static
run_consumer pc-abs "$work/pc-abs/consumer"
reached_backends pc-abs
consumer_cmake abs -DCMAKE_PREFIX_PATH="$abs"
[[ "$(found_dir abs)" == "$abs/share/apikeys" ]] || fail "apikeys_DIR is '$(found_dir abs)'"
reached_backends abs
check_backend_header "$abs/incabs" postgres postgres_store.hpp " postgres redis "
check_backend_header "$abs/incabs" redis redis_cache.hpp " postgres redis "
check_backend_header "$abs/incabs" redis redis_limiter.hpp " postgres redis "
end_step

total_ms=$(( $(now_ms) - t_start ))
echo
echo "=== ci-package: timings"
printf '%s\n' "${timings[@]}"
printf '%6d.%01d s  total\n' $((total_ms / 1000)) $((total_ms % 1000 / 100))
echo "ci-package: all packaging checks passed"
