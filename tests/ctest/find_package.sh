#!/usr/bin/env bash
# ctest: install the build tree into a scratch prefix, then configure, build and run an
# outside project that uses find_package(estuary).
set -euo pipefail
cmake_bin=$1 build_dir=$2 consumer_src=$3 work=$4
rm -rf "$work"
mkdir -p "$work"
"$cmake_bin" --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
"$cmake_bin" -S "$consumer_src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log"
"$cmake_bin" --build "$work/build" > "$work/build.log"
"$work/build/consumer"
