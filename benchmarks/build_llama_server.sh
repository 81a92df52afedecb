#!/usr/bin/env bash
# Build llama.cpp's `llama-server` for benchmarks/serve_load.py, from the llama.cpp that the llama-cpp-python
# 0.3.36 sdist vendors, so that the server peer runs the same llama.cpp as the binding the tests compare with.
#
# Usage: benchmarks/build_llama_server.sh [CACHE_DIR]
#   CACHE_DIR (default: $OXIDE_BENCH_CACHE or ~/.cache/oxide-bench) receives the unpacked sources and the build;
#   the binary is CACHE_DIR/llama-server/build/bin/llama-server, whose path the script prints last.
# The sdist is taken from the tests' cache ($OXIDE_TEST_CACHE or ~/.cache/oxide-tests) when it is there, else
# fetched with pip. Nothing is rebuilt when the binary exists. Needs cmake and a C++17 compiler (minutes on 2 cores).
set -euo pipefail

VERSION=0.3.36
SDIST_NAME="llama_cpp_python-${VERSION}"
CACHE_DIR="${1:-${OXIDE_BENCH_CACHE:-$HOME/.cache/oxide-bench}}"
TEST_CACHE="${OXIDE_TEST_CACHE:-$HOME/.cache/oxide-tests}"
ROOT="$CACHE_DIR/llama-server"
SOURCE="$ROOT/$SDIST_NAME/vendor/llama.cpp"
BINARY="$ROOT/build/bin/llama-server"

if [[ -x "$BINARY" ]]; then
    echo "$BINARY"
    exit 0
fi
mkdir -p "$ROOT"

archive="$TEST_CACHE/$SDIST_NAME.tar.gz"
if [[ ! -f "$archive" ]]; then
    archive="$ROOT/$SDIST_NAME.tar.gz"
    if [[ ! -f "$archive" ]]; then
        python -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT" >&2
    fi
fi
if [[ ! -d "$SOURCE" ]]; then
    tar -xzf "$archive" -C "$ROOT" "$SDIST_NAME/vendor/llama.cpp"
fi

# No CURL (the benchmark gives a local file), no tests, examples or web UI: only the server and its libraries.
cmake -S "$SOURCE" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF >&2
cmake --build "$ROOT/build" --target llama-server -j "$(nproc)" >&2
echo "$BINARY"
