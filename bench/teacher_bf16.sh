#!/usr/bin/env bash
# Peak memory of a distillation with the frozen teacher in bf16 (tp_model_freeze_bf16: its fp32
# matrices given back, only the bf16 copies the products read kept) against a build without it:
# SmolLM2-135M teacher, the demo's pruned student (or STUDENT), STEPS steps of 4 x 128 tokens of
# WikiText-2 under --precision bf16. The losses of the two runs are compared line by line.
# usage: bench/teacher_bf16.sh OLD_TAPER NEW_TAPER   (e.g. a build of the commit before)
# WORK (shards, checkpoints: about 2.6 GB) is deleted at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
TEACHER="${TEACHER:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}" STUDENT="${STUDENT:-$CACHE/demo/pruned}"
DATA="${TAPER_DATA:-../shared/data}" STEPS="${STEPS:-20}" WORK="${WORK:-/tmp/taper-teacher-bf16}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" TAPER_PROGRESS=0
rm -rf "$WORK" && mkdir -p "$WORK"
"$NEW" tokenize "$TEACHER" -o "$WORK/shards" "$DATA/wikitext2/wiki.valid.tokens" >/dev/null
for v in old new; do
  bin=$OLD; [ $v = new ] && bin=$NEW
  /usr/bin/time -v "$bin" distill "$STUDENT" --teacher "$TEACHER" --data "$WORK/shards" --steps "$STEPS" \
    --batch 4 --seq 128 --lr 3e-4 --warmup 2 --precision bf16 --run-dir "$WORK/run-$v" \
    > "$WORK/$v.log" 2>&1
  printf '%s: peak RSS %.1f MiB, wall %s\n' $v "$(awk -F': ' '/Maximum resident/ {print $2/1024}' "$WORK/$v.log")" \
    "$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$WORK/$v.log")"
done
# every logged loss (train and validation) of the two runs, in order
losses() { grep -o '"[a-z_]*loss":[^,}]*' "$WORK/run-$1/metrics.jsonl"; }
if diff <(losses old) <(losses new) >/dev/null; then
  echo "losses: identical ($(losses new | wc -l) values)"
else
  echo "losses differ:"; diff <(losses old) <(losses new) | head -10
fi
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
