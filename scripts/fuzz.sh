#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan, UB fatal),
# runs each for FUZZ_TIME seconds on a copy of its committed corpus (tests/fuzz/corpus/<target>/),
# minimises what it found back into that corpus (-merge=1), copies crashing inputs to
# tests/fuzz/crashes/<target>/ and prints a table: target, seconds, executions, crashes.
# Exits 1 when any target crashed (or failed to build/run). See docs/fuzzing.md.
#
# Environment:
#   FUZZ_TIME=600        seconds per target
#   FUZZ_TARGETS="a b"   subset (default: all; names below)
#   FUZZ_PARALLEL=1      targets run at once (each is one libFuzzer process, one worker)
#   FUZZ_BUILD=build-fuzz  where objects, binaries, working corpora and logs go
#   FUZZ_MERGE=1         0: leave tests/fuzz/corpus as it is
#   FUZZ_MAX_CORPUS_KB=2048  warn when a minimised corpus is larger
#   FUZZ_BUILD_ONLY=1    build the binaries ($FUZZ_BUILD/bin/fuzz_<target>) and stop
#   TAPER_DATA           ../shared/data: task files to seed an empty tasks corpus with
#   CC=clang
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_TIME=${FUZZ_TIME:-600}
FUZZ_PARALLEL=${FUZZ_PARALLEL:-1}
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
FUZZ_MERGE=${FUZZ_MERGE:-1}
FUZZ_MAX_CORPUS_KB=${FUZZ_MAX_CORPUS_KB:-2048}
TAPER_DATA=${TAPER_DATA:-../shared/data}
CC=${CC:-clang}
case "$CC" in *clang*) ;; *) CC=clang ;; esac # libFuzzer is clang's

# target | harness | extra flags | -max_len
TARGETS="gguf|fuzz_gguf.c||65536
safetensors|fuzz_safetensors.c||65536
tokenizer|fuzz_tokenizer.c||1024
tokenizer_json|fuzz_tokenizer.c|-DFUZZ_TOKENIZER_JSON|65536
shard|fuzz_shard.c||8192
compress|fuzz_compress.c||65536
checkpoint|fuzz_checkpoint.c||16384
tasks|fuzz_tasks.c||8192"
ALL=$(printf '%s\n' "$TARGETS" | cut -d'|' -f1 | tr '\n' ' ')
SELECTED=${FUZZ_TARGETS:-$ALL}
for t in $SELECTED; do
    printf '%s\n' "$TARGETS" | grep -q "^$t|" || { echo "fuzz.sh: unknown target '$t' (known: $ALL)" >&2; exit 2; }
done
command -v "$CC" >/dev/null || { echo "fuzz.sh: $CC not found (libFuzzer needs clang)" >&2; exit 2; }

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -Isrc"
WARN="-Wall -Wextra" # the harnesses; the library's warnings are the regular build's business
LDLIBS="-lm -lcjson -lpcre2-8 -lutf8proc -lpthread"
mkdir -p "$FUZZ_BUILD/obj" "$FUZZ_BUILD/bin" "$FUZZ_BUILD/log"

# --- the library, once, instrumented for coverage (fuzzer-no-link); no OpenMP/BLAS/oneDNN: the
# portable kernels, one thread (the parsers do not depend on those switches) ---
newest_header=$(find include src -name '*.h' -printf '%T@\n' | sort -n | tail -1)
objs=()
for src in $(find src -name '*.c' | sort); do
    obj="$FUZZ_BUILD/obj/${src//\//_}.o"
    objs+=("$obj")
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] ||
        [ "$(stat -c %Y "$obj")" -lt "${newest_header%.*}" ]; then
        echo "CC $src"
        $CC $CFLAGS $SAN -fsanitize=fuzzer-no-link -c "$src" -o "$obj"
    fi
done
rm -f "$FUZZ_BUILD/libtaper-fuzz.a"
ar rcs "$FUZZ_BUILD/libtaper-fuzz.a" "${objs[@]}"

for t in $SELECTED; do
    IFS='|' read -r _ harness flags _ <<<"$(printf '%s\n' "$TARGETS" | grep "^$t|")"
    echo "LD fuzz_$t"
    $CC $CFLAGS $WARN $SAN -fsanitize=fuzzer $flags "tests/fuzz/$harness" "$FUZZ_BUILD/libtaper-fuzz.a" $LDLIBS \
        -o "$FUZZ_BUILD/bin/fuzz_$t"
done

[ "${FUZZ_BUILD_ONLY:-0}" != 1 ] || exit 0

# --- seeds for a target whose committed corpus is empty (the committed one also holds files the
# test suite writes: score files, plans, shards, checkpoints of other models) ---
seed() {
    local t=$1 d=$2
    case $t in
    gguf) cp tests/fixtures/gguf/*.gguf "$d/" ;;
    safetensors)
        cp tests/fixtures/st/basic.safetensors tests/fixtures/st/sharded/*.safetensors "$d/"
        cp tests/fixtures/st/sharded/model.safetensors.index.json "$d/index.json"
        for c in tests/fixtures/st/config/*/config.json; do
            cp "$c" "$d/config-$(basename "$(dirname "$c")").json"
        done ;;
    tokenizer)
        head -c 3000 /usr/share/common-licenses/GPL-3 >"$d/gpl3.txt" 2>/dev/null || true
        printf 'Hello world! caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd 123 <|im_start|>user\n\t  x<|im_end|>' \
            >"$d/mixed.txt" ;;
    tokenizer_json)
        cat >"$d/bpe.json" <<'J'
{"version":"1.0","added_tokens":[{"id":0,"content":"<|endoftext|>","special":true,"normalized":false}],
"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
"post_processor":null,"decoder":{"type":"ByteLevel"},
"model":{"type":"BPE",
"vocab":{"<|endoftext|>":0,"H":1,"e":2,"l":3,"o":4,"He":5,"ll":6,"Hell":7,"Hello":8,"Ġ":9,"w":10,"r":11,"d":12},
"merges":["H e","l l","He ll","Hell o"]}}
J
        cat >"$d/spm.json" <<'J'
{"version":"1.0","added_tokens":[{"id":0,"content":"<unk>","special":true},{"id":1,"content":"<s>","special":true}],
"normalizer":null,"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false},
"post_processor":null,
"decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},
{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
"model":{"type":"BPE","fuse_unk":true,"byte_fallback":true,"unk_token":"<unk>",
"vocab":{"<unk>":0,"<s>":1,"<0x41>":2,"▁":3,"H":4,"i":5,"▁H":6,"▁Hi":7},"merges":[["▁","H"],["▁H","i"]]}}
J
        ;;
    shard | compress) ;; # the committed corpus has them (written by the test suite)
    checkpoint) TAPER_FUZZ_SEED_DIR="$d" "$FUZZ_BUILD/bin/fuzz_checkpoint" -runs=0 "$d" >/dev/null 2>&1 ;;
    tasks)
        local f
        for f in arc_easy/arc_easy.jsonl arc_challenge/arc_challenge.jsonl hellaswag/hellaswag_val_full.txt \
            piqa/valid.jsonl winogrande/winogrande.jsonl mmlu/test/astronomy_test.csv wikitext2/wiki.test.raw; do
            [ -f "$TAPER_DATA/$f" ] && head -n 12 "$TAPER_DATA/$f" >"$d/$(basename "$f")"
        done
        printf '{"context":"2+2=","continuation":"4"}\n' >"$d/ll.jsonl"
        printf '{"text":"a document"}\n{"text":" = T = \\n x"}\n' >"$d/rolling.jsonl" ;;
    esac
}

run_target() {
    local t=$1 maxlen=$2
    local work="$FUZZ_BUILD/corpus/$t" art="$FUZZ_BUILD/artifacts/$t" log="$FUZZ_BUILD/log/$t.log"
    local committed="tests/fuzz/corpus/$t"
    rm -rf "$work" "$art"
    mkdir -p "$work" "$art" "$committed"
    [ -n "$(ls -A "$committed")" ] || seed "$t" "$committed"
    cp "$committed"/. "$work"/ -r
    local start=$SECONDS rc=0
    "$FUZZ_BUILD/bin/fuzz_$t" -max_total_time="$FUZZ_TIME" -max_len="$maxlen" -timeout=30 -rss_limit_mb=2560 \
        -print_final_stats=1 -artifact_prefix="$art/" "$work" >"$log" 2>&1 || rc=$?
    local secs=$((SECONDS - start))
    local execs
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
    local crashes
    local found=() f # slow-unit-* files are not failures
    for f in "$art"/crash-* "$art"/leak-* "$art"/timeout-* "$art"/oom-*; do if [ -f "$f" ]; then found+=("$f"); fi; done
    crashes=${#found[@]}
    if [ "$crashes" -gt 0 ]; then
        mkdir -p "tests/fuzz/crashes/$t"
        cp "${found[@]}" "tests/fuzz/crashes/$t/"
    elif [ "$rc" -ne 0 ]; then
        crashes="rc=$rc" # died without an artifact (e.g. a crash in the harness's setup)
    fi
    if [ "$FUZZ_MERGE" = 1 ] && [ "$rc" -eq 0 ]; then
        local min="$FUZZ_BUILD/min/$t"
        rm -rf "$min"
        mkdir -p "$min"
        "$FUZZ_BUILD/bin/fuzz_$t" -merge=1 -max_len="$maxlen" -timeout=30 "$min" "$work" \
            >"$FUZZ_BUILD/log/$t.merge.log" 2>&1
        rm -rf "$committed"
        mv "$min" "$committed"
        local kb
        kb=$(($(du -sb "$committed" | cut -f1) / 1024))
        [ "$kb" -le "$FUZZ_MAX_CORPUS_KB" ] ||
            echo "fuzz.sh: warning: corpus of $t is $kb KB (> $FUZZ_MAX_CORPUS_KB)" >&2
    fi
    printf '%s|%s|%s|%s|%s|%s\n' "$t" "$secs" "${execs:-?}" "$crashes" "$(find "$committed" -type f | wc -l)" \
        "$(($(du -sb "$committed" | cut -f1) / 1024))" >"$FUZZ_BUILD/log/$t.result"
}

echo "fuzzing $SELECTED for ${FUZZ_TIME}s each, $FUZZ_PARALLEL at a time (logs: $FUZZ_BUILD/log/)"
running=0
for t in $SELECTED; do
    IFS='|' read -r _ _ _ maxlen <<<"$(printf '%s\n' "$TARGETS" | grep "^$t|")"
    rm -f "$FUZZ_BUILD/log/$t.result"
    run_target "$t" "$maxlen" &
    running=$((running + 1))
    if [ "$running" -ge "$FUZZ_PARALLEL" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

fail=0
printf '\n%-16s %8s %14s %8s %13s %10s\n' target seconds executions crashes corpus_files corpus_KB
for t in $SELECTED; do
    if [ ! -f "$FUZZ_BUILD/log/$t.result" ]; then
        printf '%-16s %8s %14s %8s\n' "$t" - - "no result"
        fail=1
        continue
    fi
    IFS='|' read -r name secs execs crashes files kb <"$FUZZ_BUILD/log/$t.result"
    printf '%-16s %8s %14s %8s %13s %10s\n' "$name" "$secs" "$execs" "$crashes" "$files" "$kb"
    [ "$crashes" = 0 ] || fail=1
done
[ "$fail" = 0 ] || echo "fuzz.sh: crashes: reproducers in tests/fuzz/crashes/<target>/, logs in $FUZZ_BUILD/log/" >&2
exit "$fail"
