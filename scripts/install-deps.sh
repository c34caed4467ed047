#!/usr/bin/env bash
# Installs what clonefs needs on Debian 12: `build` (fuse3, the C++ toolchain for RocksDB,
# libclang for bindgen), `db` (build + the database servers `clonefs db` runs), or `test`
# (build + the real programs and suites the tests run).
set -euo pipefail
what=${1:-build}
build_pkgs=(fuse3 libfuse3-dev pkg-config build-essential clang libclang-dev util-linux)
test_pkgs=(attr acl fio sqlite3 git postgresql postgresql-contrib mariadb-server mariadb-client python3 procps psmisc e2fsprogs)
pkgs=("${build_pkgs[@]}")
[[ $what == test || $what == bench ]] && pkgs+=("${test_pkgs[@]}")
[[ $what == bench ]] && pkgs+=(time sysbench rsync)
[[ $what == db ]] && pkgs+=(postgresql postgresql-contrib mariadb-server mariadb-client sqlite3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
  $sudo_ apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (rustup) first" >&2
  exit 1
fi
if [[ $what == test ]]; then
  for tool in fsx pjdfstest; do
    command -v "$tool" >/dev/null || cargo install --locked "$tool"
  done
fi
