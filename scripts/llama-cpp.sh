#!/usr/bin/env bash
# llama.cpp as a second, independent runtime for taper's GGUF exports (tests/test_llamacpp.c),
# and the source of llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf + .inp/.out).
# The llama.cpp tree is the one vendored in the PyPI *source* package llama-cpp-python==0.3.36,
# checked by sha256; nothing is cloned from a git host.
#
#   scripts/llama-cpp.sh fetch   unpack vendor/llama.cpp into $TAPER_CACHE/llama.cpp-0.3.36/
#   scripts/llama-cpp.sh build   fetch, then build the CPU tools into .../build/bin; prints that dir
#   scripts/llama-cpp.sh bin     prints the bin dir (exit 1 when the tools are not built)
#   scripts/llama-cpp.sh dir     prints the source dir (exit 1 when not fetched)
#
# Idempotent and quiet when everything is present. TAPER_LLAMA_SDIST=FILE uses a local copy of
# the sdist instead of downloading it (it is still checked against the pinned sha256).
set -euo pipefail
VER=0.3.36
SDIST=llama_cpp_python-$VER.tar.gz
SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
SRC="$CACHE/llama.cpp-$VER"
BUILD="$SRC/build"
BIN="$BUILD/bin"
JOBS="${LLAMA_CPP_JOBS:-2}"
# Static libraries: the tools stand alone. CPU only (no CUDA), -march=native but without AMX: on
# this project's AMX-capable Xeons ggml's AMX matrix products (used for quantized weights: Q4_1,
# Q4_K, Q8_0, ...) crash with SIGSEGV in ggml_backend_amx_mul_mat at the first decode, while the
# AVX-512 paths work. No HTTPS (model download) support; no tests, examples, server or web UI:
# only the targets from tools() are built. A change here rebuilds (build/.taper-config).
NO_AMX=""
[ "$(uname -m)" = x86_64 ] && NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_CUDA=OFF
    "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX"
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_BUILD_APP=OFF)

tools() {
    # llama-completion is the plain text-completion tool from the version that split it off
    # llama-cli (which became chat-only); older trees only have llama-cli.
    local gen=llama-cli
    [ -d "$SRC/tools/completion" ] && gen=llama-completion
    echo llama-perplexity llama-batched-bench llama-tokenize "$gen"
}

built() {
    [ -f "$SRC/CMakeLists.txt" ] || return 1
    [ "$(cat "$BUILD/.taper-config" 2>/dev/null)" = "${CMAKE_ARGS[*]}" ] || return 1
    local t
    for t in $(tools); do [ -x "$BIN/$t" ] || return 1; done
}

fetch() {
    [ -f "$SRC/CMakeLists.txt" ] && return 0   # only ever appears by a complete rename
    echo "llama-cpp: fetching llama.cpp (PyPI source package llama-cpp-python==$VER) into $SRC" >&2
    mkdir -p "$CACHE"
    local tmp
    tmp=$(mktemp -d "$CACHE/.llama.cpp-$VER.XXXXXX")   # same file system: the rename is atomic
    trap "rm -rf '$tmp'" EXIT
    local sd="$tmp/$SDIST"
    if [ -n "${TAPER_LLAMA_SDIST:-}" ]; then
        cp "$TAPER_LLAMA_SDIST" "$sd"
    else
        python3 -m pip download -q --no-deps --no-binary :all: --disable-pip-version-check \
            "llama-cpp-python==$VER" -d "$tmp" >&2
    fi
    local got
    got=$(sha256sum "$sd" | cut -d' ' -f1)
    if [ "$got" != "$SDIST_SHA" ]; then
        echo "llama-cpp: $SDIST has sha256 $got, expected $SDIST_SHA" >&2
        exit 1
    fi
    mkdir "$tmp/tree"
    tar -xzf "$sd" -C "$tmp/tree" --strip-components=3 "llama_cpp_python-$VER/vendor/llama.cpp"
    rm -f "$sd"
    [ -f "$tmp/tree/CMakeLists.txt" ] || { echo "llama-cpp: $SDIST has no vendor/llama.cpp" >&2; exit 1; }
    # A concurrent fetch may have won the race; its tree is as good as ours.
    mv -T "$tmp/tree" "$SRC" 2>/dev/null || [ -f "$SRC/CMakeLists.txt" ]
    rm -rf "$tmp"
    trap - EXIT
}

need_cmake() {
    command -v cmake >/dev/null 2>&1 && return 0
    echo "llama-cpp: installing cmake (Debian package)" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq cmake >/dev/null
}

build() {
    fetch
    if built; then echo "$BIN"; return 0; fi
    need_cmake
    local log="$BUILD/taper-build.log" t0=$SECONDS
    mkdir -p "$BUILD"
    rm -f "$BUILD/.taper-config"
    echo "llama-cpp: building $(tools) with $JOBS jobs (CPU only, -march=native; log $log)" >&2
    if ! { cmake -S "$SRC" -B "$BUILD" "${CMAKE_ARGS[@]}" \
           && cmake --build "$BUILD" --config Release -j "$JOBS" --target $(tools); } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "llama-cpp: the build failed (whole log: $log)" >&2
        exit 1
    fi
    echo "${CMAKE_ARGS[*]}" >"$BUILD/.taper-config"
    built || { echo "llama-cpp: the build finished but $(tools) are not all in $BIN" >&2; exit 1; }
    echo "llama-cpp: built in $((SECONDS - t0)) s" >&2
    echo "$BIN"
}

case "${1:-}" in
    fetch) fetch ;;
    build) build ;;
    bin) built || { echo "llama-cpp: not built (make llama-cpp)" >&2; exit 1; }; echo "$BIN" ;;
    dir) [ -f "$SRC/CMakeLists.txt" ] || { echo "llama-cpp: not fetched (make deps)" >&2; exit 1; }; echo "$SRC" ;;
    *) echo "usage: scripts/llama-cpp.sh fetch|build|bin|dir" >&2; exit 2 ;;
esac
