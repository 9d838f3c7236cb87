#!/usr/bin/env bash
# Gemma-3-270M (the real Q4_K_M weights `make deps` fetches) compressed by `taper compress`:
# importance on WikiText-2 valid, a pruning search for TARGET parameters, STEPS distillation steps
# of BATCH x SEQ tokens (forward KL on the full 262k vocabulary, PRECISION) on WikiText-2 valid,
# then teacher / pruned / student scored on WikiText-2 test (chunks protocol) and on the first
# TASK_LIMIT items of arc_easy and piqa. The distillation text is the scored domain (WikiText),
# so the perplexities flatter the student; this run shows the recipe works end to end on Gemma 3,
# not what a real budget reaches.
# Environment: TARGET (180M), STEPS (200), SEQ (256), BATCH (2), PRECISION (bf16), THREADS (2),
# TASK_LIMIT (100), WORK (/tmp/taper-gemma3), TAPER_BIN, TAPER_GEMMA3, TAPER_DATA.
# Interrupted? Run it again with the same WORK: finished stages are skipped, training resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TAPER_BIN:-build/taper}"
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_GEMMA3:-$CACHE/gemma-3-270m-q4_k_m.gguf}"
DATA="${TAPER_DATA:-../shared/data}"
TARGET="${TARGET:-180M}" STEPS="${STEPS:-200}" SEQ="${SEQ:-256}" BATCH="${BATCH:-2}"
PRECISION="${PRECISION:-bf16}" THREADS="${THREADS:-2}" TASK_LIMIT="${TASK_LIMIT:-100}"
WORK="${WORK:-/tmp/taper-gemma3}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" TAPER_PROGRESS="${TAPER_PROGRESS:-0}"
mkdir -p "$WORK"
run() { echo "+ $*" >&2; "$@"; }
[ -f "$WORK/shards/manifest.json" ] ||
  run "$BIN" tokenize "$MODEL" -o "$WORK/shards" --doc-split blank --threads "$THREADS" \
    "$DATA/wikitext2/wiki.valid.tokens" >/dev/null
run /usr/bin/time -v "$BIN" compress "$MODEL" --target-params "$TARGET" -o "$WORK/run" --data "$WORK/shards" \
  --calib "$DATA/wikitext2/wiki.valid.tokens" --calib-samples 32 --depth-samples 8 \
  --steps "$STEPS" --seq "$SEQ" --batch "$BATCH" --warmup 20 --ckpt-every 25 --precision "$PRECISION" \
  --eval-text "$DATA/wikitext2/wiki.test.raw" --eval-chunks 16 --eval-ctx 512 \
  --tasks arc_easy,piqa --task-limit "$TASK_LIMIT" --data-dir "$DATA" --threads "$THREADS" 2> "$WORK/time.txt"
grep -E "Maximum resident|Elapsed" "$WORK/time.txt" >&2 || true
