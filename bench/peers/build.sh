#!/usr/bin/env bash
# Builds the Boost.Interprocess harness that `shmkit bench --peers` runs.
#
# Prints the path of the built program and exits 0; when the Boost headers or
# a C++20 compiler are missing, prints one line saying so on stderr and exits 3
# (the caller skips the peer). Rebuilds only when the source is newer.
#
# Environment: BOOST_INCLUDE_DIR (default /usr/include), CXX (default c++),
# PEERS_OUT_DIR (default target/peers at the repository root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
include=${BOOST_INCLUDE_DIR:-/usr/include}
out=${PEERS_OUT_DIR:-$here/../../target/peers}
cxx=${CXX:-c++}
source=$here/boost_interprocess.cpp
program=$out/boost-interprocess-bench

if [ ! -f "$include/boost/interprocess/managed_shared_memory.hpp" ]; then
    echo "Boost.Interprocess headers not found under $include (Debian: apt-get install libboost-dev)" >&2
    exit 3
fi
if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "no C++ compiler ($cxx) to build the Boost.Interprocess harness" >&2
    exit 3
fi

mkdir -p "$out"
if [ ! -x "$program" ] || [ "$source" -nt "$program" ]; then
    flags=(-std=c++20 -O2 -DNDEBUG -pthread)
    # /usr/include is searched already; naming it again upsets <cstdlib>.
    if [ "$include" != /usr/include ]; then
        flags+=(-isystem "$include")
    fi
    if ! "$cxx" "${flags[@]}" -o "$program.tmp" "$source" -lrt 2>"$out/build.log"; then
        echo "the Boost.Interprocess harness did not compile (see $out/build.log)" >&2
        exit 3
    fi
    mv "$program.tmp" "$program"
fi
echo "$program"
