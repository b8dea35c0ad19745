#!/usr/bin/env bash
# Builds a free-threaded CPython 3.14 (PEP 703, `--disable-gil`) from Debian's
# source package, or reuses the one a previous run built, and prints the path
# of its interpreter as the last line on stdout. All progress goes to stderr.
#
# Settings (all paths outside the repository):
#   MP_FT_PYTHON_VERSIONS  CPython series to try, in order of preference
#                          (default "3.14 3.13"; set "3.14" to accept nothing else)
#   MP_FT_PYTHON_PREFIX    install prefix (default
#                          ${XDG_CACHE_HOME:-$HOME/.cache}/makeparallel/cpython-<series>t)
#   MP_FT_BUILD_JOBS       parallel make jobs (default 2)
# Private apt configuration, downloads and build tree go to
# ${XDG_CACHE_HOME:-$HOME/.cache}/makeparallel/cpython-ft.work/.
#
# Why a private apt configuration: python3.14 is only in Debian sid, but this
# machine runs a stable release. We add a deb-src line for sid in a sources
# list of our own, with its own state and cache directories, and pass it to
# `apt-get source` alone through APT_CONFIG. No `deb` (binary) line for sid
# exists anywhere, so no binary package can ever come from sid, and the
# machine's own apt setup (/etc/apt, /var/lib/apt) is never touched by it.
# Build dependencies come from the machine's own release, with its normal apt.
#
# Why a fallback series: Debian's mirror can list a python3.14 source that it
# does not serve (seen here: every listed version answered 404). CPython 3.13
# has the same `--disable-gil` build, so rather than having no free-threaded
# interpreter at all we build that one, and say so loudly on stderr. A cached
# fallback is reused as it is; delete it to try for 3.14 again.
#
# Only the upstream tarball of the source package is built (the
# `.orig.tar.*`): Debian's patches adapt CPython to Debian's own file layout,
# which a private prefix does not want.
set -euo pipefail

read -r -a versions <<<"${MP_FT_PYTHON_VERSIONS:-3.14 3.13}"
[ "${#versions[@]}" -gt 0 ] || { echo "MP_FT_PYTHON_VERSIONS is empty" >&2; exit 1; }
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/makeparallel
work="$cache_root/cpython-ft.work"
jobs=${MP_FT_BUILD_JOBS:-2}

log() { echo "build-freethreaded-python: $*" >&2; }
die() { log "error: $*"; exit 1; }
prefix_for() { echo "${MP_FT_PYTHON_PREFIX:-$cache_root/cpython-$1t}"; }

# The interpreter of a finished install, most preferred series first, or
# nothing. `make install` names the free-threaded binary python3.Xt; the stamp
# file is written only once the whole build succeeded, so a half-finished
# install is never reused.
installed_python() {
  local series prefix py
  for series in "${versions[@]}"; do
    prefix=$(prefix_for "$series")
    py="$prefix/bin/python${series}t"
    if [ -f "$prefix/.complete" ] && [ -x "$py" ] \
        && "$py" -c 'import sys; sys.exit(sys._is_gil_enabled())' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

mkdir -p "$cache_root"

# One build at a time: CI and a developer may run this concurrently.
exec 9>"$cache_root/cpython-ft.lock"
flock 9

if py=$(installed_python); then
  log "reusing $py"
  echo "$py"
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot install build dependencies"
  as_root=(sudo)
fi

# --- Build dependencies, from the machine's own release (normal apt config). --
# libmpdec-dev is gone from recent Debian releases; CPython then uses its
# bundled copy of mpdecimal.
wanted=(build-essential pkg-config ca-certificates xz-utils libssl-dev zlib1g-dev
  libbz2-dev libreadline-dev libsqlite3-dev libffi-dev liblzma-dev uuid-dev
  libgdbm-dev libgdbm-compat-dev libncurses-dev tk-dev libexpat1-dev libmpdec-dev
  libzstd-dev)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' \
    || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing build dependencies: ${missing[*]}"
  "${as_root[@]}" apt-get update -q >&2 || die "apt-get update failed"
  available=()
  for pkg in "${missing[@]}"; do
    if apt-cache show "$pkg" >/dev/null 2>&1; then
      available+=("$pkg")
    else
      log "note: $pkg is not in this release; building without it"
    fi
  done
  if [ "${#available[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q \
      --no-install-recommends "${available[@]}" >&2 \
      || die "apt-get install of the build dependencies failed"
  fi
fi

# --- Private apt configuration: deb-src for sid only. ---------------------------
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" \
  "$apt_dir/sources.list.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb-src [signed-by=$keyring] http://deb.debian.org/debian sid main" \
  >"$apt_dir/sources.list"
# The download user is this one: apt's own _apt user cannot enter a home directory.
cat >"$apt_dir/apt.conf" <<EOF
Dir::Etc::sourcelist "$apt_dir/sources.list";
Dir::Etc::sourceparts "$apt_dir/sources.list.d";
Dir::State::lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "$(id -un)";
EOF
: >"$apt_dir/status"
export_apt=(env APT_CONFIG="$apt_dir/apt.conf")

log "fetching the sid source index (private apt config in $apt_dir)"
"${export_apt[@]}" apt-get update -q >&2 || die "apt-get update of the private sid sources failed"

# Debian's mirror may list a source version whose files it no longer (or not
# yet) serves, so try every version the index lists, newest first, and fall
# back to the next CPython series if none of them can be fetched.
src_dir="$work/src"
fetch_source() {  # $1: source package, e.g. python3.14
  local version
  for version in $("${export_apt[@]}" apt-cache showsrc "$1" 2>/dev/null \
      | awk '/^Version:/ {print $2}' | sort -ruV); do
    rm -rf "$src_dir" && mkdir -p "$src_dir"
    log "downloading the $1 $version source package from sid"
    (cd "$src_dir" && "${export_apt[@]}" apt-get source --download-only -q \
      "$1=$version" >&2) && return 0
    log "could not fetch $1 $version"
  done
  return 1
}
series=""
for candidate in "${versions[@]}"; do
  if fetch_source "python$candidate"; then
    series=$candidate
    break
  fi
  log "warning: no python$candidate source package could be fetched from sid"
done
[ -n "$series" ] || die "no source package for any of: ${versions[*]}"
if [ "$series" != "${versions[0]}" ]; then
  log "warning: building free-threaded CPython $series instead of ${versions[0]}"
fi

orig=$(find "$src_dir" -maxdepth 1 -name "python${series}_*.orig.tar.*" ! -name '*.asc' \
  | head -n 1)
[ -n "$orig" ] || die "no upstream tarball (python${series}_*.orig.tar.*) in $src_dir"
log "unpacking $(basename "$orig")"
tar -xf "$orig" -C "$src_dir" || die "cannot unpack $orig"
tree=$(find "$src_dir" -mindepth 1 -maxdepth 1 -type d -name "Python-$series*" | head -n 1)
[ -n "$tree" ] && [ -x "$tree/configure" ] || die "no CPython source tree in $src_dir"

# --- Configure, build, install. ------------------------------------------------
# No --enable-optimizations / --with-lto: PGO runs the whole test suite and
# LTO doubles the link time, neither worth it for a CI interpreter.
prefix=$(prefix_for "$series")
rm -rf "$prefix"
start=$(date +%s)
cd "$tree"
log "configuring $(basename "$tree") with --disable-gil --prefix=$prefix"
./configure --disable-gil --prefix="$prefix" --with-ensurepip=install >"$work/configure.log" 2>&1 \
  || die "configure failed; see $work/configure.log"
log "building with make -j$jobs (takes a while)"
make -j"$jobs" >"$work/make.log" 2>&1 || die "make failed; see $work/make.log"
log "installing into $prefix"
make install >"$work/install.log" 2>&1 || die "make install failed; see $work/install.log"

py="$prefix/bin/python${series}t"
[ -x "$py" ] || die "make install did not produce $py"

# pip needs ssl and zlib, venv needs ensurepip; a silently missing module
# would only show up later as a confusing pip error.
"$py" - <<'EOF' >&2 || die "the new interpreter lacks a required module or has the GIL on"
import sys, sysconfig
import ssl, zlib, bz2, lzma, ctypes, sqlite3, ensurepip, venv  # noqa: F401
assert sysconfig.get_config_var("Py_GIL_DISABLED"), "not a free-threaded build"
assert not sys._is_gil_enabled(), "GIL is enabled"
print(sys.version)
EOF
touch "$prefix/.complete"
log "built in $(( $(date +%s) - start )) s"
echo "$py"
