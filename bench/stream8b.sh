#!/usr/bin/env bash
# A model larger than memory, pruned on this machine: the Llama-3.1-8B-shaped checkpoint of
# bench/make_llama8b.py (16 GB of bf16; 32 GB as fp32) scored, pruned to hidden 3072 / ffn 9216
# (~4.5B) and written as a bf16 HF folder, each command under /usr/bin/time -v (peak RSS, wall
# time); then `taper info` on it, and one forward of the export in transformers (fp32) against
# taper's logits on the same prompt (bench/stream8b_check.py).
# The commands choose streaming themselves (their loaded estimates do not fit in memory).
# Environment: MODEL (/work/l8b; written by make_llama8b.py when missing), WORK (/tmp/taper-8b),
# PRECISION (bf16: the importance pass's products; fp32 is about 2.5x slower here), SAMPLES (64),
# SEQ (256), DEPTH (8), TAPER_BIN, TAPER_DATA, PY (the reference venv's python).
# Disk: 16 GB for the model (kept), 9 GB for the export: WORK is deleted at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TAPER_BIN:-build/taper}"
MODEL="${MODEL:-/work/l8b}" WORK="${WORK:-/tmp/taper-8b}" PRECISION="${PRECISION:-bf16}"
SAMPLES="${SAMPLES:-64}" SEQ="${SEQ:-256}" DEPTH="${DEPTH:-8}"
DATA="${TAPER_DATA:-../shared/data}"
PY="${PY:-$HOME/.cache/taper/venv/bin/python}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" TAPER_PROGRESS="${TAPER_PROGRESS:-0}"
mkdir -p "$WORK"
[ -f "$MODEL/config.json" ] || "$PY" bench/make_llama8b.py "$MODEL"
# one stage under /usr/bin/time -v: its output in WORK/NAME.log, one summary line on stdout
stage() {
  local name=$1; shift
  echo "+ $*" >&2
  /usr/bin/time -v "$@" > "$WORK/$name.log" 2>&1 || { tail -5 "$WORK/$name.log" >&2; exit 1; }
  local rss wall
  rss=$(awk -F': ' '/Maximum resident/ {printf "%.2f", $2/1048576}' "$WORK/$name.log")
  wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$WORK/$name.log")
  printf '%-12s peak RSS %6s GiB   wall %s\n' "$name" "$rss" "$wall"
}
stage info "$BIN" info "$MODEL"
stage importance "$BIN" importance "$MODEL" --data "$DATA/wikitext2/wiki.valid.tokens" --samples "$SAMPLES" \
  --seq-len "$SEQ" --depth-samples "$DEPTH" --precision "$PRECISION" -o "$WORK/importance.json"
stage prune "$BIN" prune "$MODEL" --scores "$WORK/importance.json" --hidden 3072 --ffn 9216 -o "$WORK/pruned"
stage info-pruned "$BIN" info "$WORK/pruned"
grep -E "memory:|timing|wrote" "$WORK"/importance.log "$WORK"/prune.log | sed 's/^[^:]*://' >&2
printf 'The capital of France is Paris. The quick brown fox jumps over the lazy dog, and then' > "$WORK/prompt.txt"
stage logits "$BIN" ppl "$WORK/pruned" --stream --data "$WORK/prompt.txt" --ctx 16 --max-chunks 1 \
  --logits "$WORK/taper_logits.f32"
stage transformers "$PY" bench/stream8b_check.py "$WORK/pruned" "$WORK/prompt.txt" 16 "$WORK/taper_logits.f32"
tail -3 "$WORK/transformers.log" | grep -v "^\s*$" | head -2
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
exit 0
