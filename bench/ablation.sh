#!/usr/bin/env bash
# Issue 6 ablation: SmolLM2-135M-Instruct pruned to the same size by width or by depth, then
#   none     no retraining
#   ce       cross-entropy on the data (taper train)
#   kd       forward KL on the teacher's logits (taper distill --kd fkl)
#   kd+inter KD + cosine loss between mapped hidden states (depth-pruned student only)
#   kd-corr  KD from a corrected teacher (only with CORRECT_TOKENS > 0): the teacher first
#            trained with CE on CORRECT_TOKENS tokens of the same data (teacher correction), the
#            students as before (the papers correct before pruning; keeping the same pruned
#            students isolates the teacher's effect)
# every retraining run with the same tokens, data, schedule and precision; perplexity on
# WikiText-2 test (chunks protocol, ctx 512, first EVAL_CHUNKS chunks).
# Environment: TOKENS (default 1048576 = 2^20 per run), SEQ (512), BATCH (4), LR (2e-4),
# PRECISION (bf16), EVAL_CHUNKS (40), THREADS (2), WORK (/tmp/taper-ablation), TAPER_BIN,
# TAPER_MODEL, TAPER_DATA, CORRECT_TOKENS (0 = no corrected-teacher column), CORRECT_STUDENTS
# ("width"). Prints a markdown table; every command is echoed. Interrupted? Run it
# again with the same WORK: finished runs are skipped and the others resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TAPER_BIN:-build/taper}"
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}/wikitext2"
TOKENS="${TOKENS:-1048576}" SEQ="${SEQ:-512}" BATCH="${BATCH:-4}" LR="${LR:-2e-4}"
PRECISION="${PRECISION:-bf16}" EVAL_CHUNKS="${EVAL_CHUNKS:-40}" THREADS="${THREADS:-2}"
WORK="${WORK:-/tmp/taper-ablation}"
CORRECT_TOKENS="${CORRECT_TOKENS:-0}" CORRECT_STUDENTS="${CORRECT_STUDENTS:-width}"
STEPS=$((TOKENS / (SEQ * BATCH)))
WARMUP=$((STEPS / 10 > 0 ? STEPS / 10 : 1))
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" TAPER_PROGRESS="${TAPER_PROGRESS:-0}"
mkdir -p "$WORK"
run() { echo "+ $*" >&2; "$@"; }
echo "ablation: $TOKENS tokens per run = $STEPS steps x $BATCH x $SEQ, lr $LR (warmup $WARMUP, cosine to lr/10)," \
     "precision $PRECISION, $THREADS threads; $(date -u +%F)" >&2

[ -f "$WORK/shards/manifest.json" ] ||
  run "$BIN" tokenize "$MODEL" -o "$WORK/shards" --doc-split blank --threads "$THREADS" "$DATA/wiki.valid.tokens" >/dev/null
[ -f "$WORK/scores.json" ] ||
  run "$BIN" importance "$MODEL" --data "$DATA/wiki.valid.tokens" --samples 64 --seq-len 256 --depth-samples 16 \
    --threads "$THREADS" -o "$WORK/scores.json" >/dev/null
# depth: keep 17 of 30 layers (88.5M); width: the same parameter count, all 30 layers kept
[ -f "$WORK/depth/config.json" ] ||
  run "$BIN" prune "$MODEL" --scores "$WORK/scores.json" --layers 17 -o "$WORK/depth" >/dev/null
DEPTH_PARAMS=$("$BIN" info "$WORK/depth" | awk '/^total/ {print $2}')
[ -f "$WORK/width/config.json" ] ||
  run "$BIN" prune "$MODEL" --scores "$WORK/scores.json" --target-params "$DEPTH_PARAMS" --tolerance 0.01 \
    --layers 30 --data "$DATA/wiki.valid.tokens" --eval-samples 8 -o "$WORK/width" >/dev/null

common=(--data "$WORK/shards" --steps "$STEPS" --seq "$SEQ" --batch "$BATCH" --lr "$LR" --min-lr "$(python3 -c "print($LR/10)")"
        --warmup "$WARMUP" --val-every -1 --ckpt-every 25 --keep 1 --threads "$THREADS" --precision "$PRECISION" --quiet
        --resume)
train_one() { # train_one NAME STUDENT: retrain STUDENT as NAME (none|ce|kd|kdinter) into $WORK/NAME-STUDENT
  local name=$1 s=$2 out="$WORK/$1-$2"
  [ -f "$out/done" ] && return 0
  case $name in
    ce) run "$BIN" train "$WORK/$s" "${common[@]}" --run-dir "$out/run" --export-hf "$out/model" >/dev/null ;;
    kd) run "$BIN" distill "$WORK/$s" --teacher "$MODEL" --kd fkl "${common[@]}" --run-dir "$out/run" \
          --export-hf "$out/model" >/dev/null ;;
    kdcorr) run "$BIN" distill "$WORK/$s" --teacher "$WORK/teacher-corr/model" --kd fkl "${common[@]}" \
          --run-dir "$out/run" --export-hf "$out/model" >/dev/null ;;
    kdinter) run "$BIN" distill "$WORK/$s" --teacher "$MODEL" --kd fkl --inter cosine --map auto \
          --plan "$WORK/$s/prune_plan.json" "${common[@]}" --run-dir "$out/run" --export-hf "$out/model" >/dev/null ;;
  esac
  touch "$out/done"
}
ppl() { # ppl MODEL -> chunks-protocol perplexity
  "$BIN" ppl "$1" --data "$DATA/wiki.test.raw" --ctx 512 --max-chunks "$EVAL_CHUNKS" --threads "$THREADS" \
    --json="$WORK/ppl.json" >/dev/null 2>&1
  python3 -c "import json,sys; print('%.3f' % json.load(open(sys.argv[1]))['results'][0]['ppl'])" "$WORK/ppl.json"
}

for s in width depth; do
  for n in ce kd; do train_one $n $s; done
done
train_one kdinter depth
if [ "$CORRECT_TOKENS" -gt 0 ]; then
  CSTEPS=$((CORRECT_TOKENS / (SEQ * BATCH))) && CSTEPS=$((CSTEPS > 0 ? CSTEPS : 1))
  if [ ! -f "$WORK/teacher-corr/done" ]; then
    run "$BIN" train "$MODEL" --data "$WORK/shards" --steps "$CSTEPS" --seq "$SEQ" --batch "$BATCH" --lr "$LR" \
      --min-lr "$(python3 -c "print($LR/10)")" --warmup $((CSTEPS / 10 > 0 ? CSTEPS / 10 : 1)) --val-every -1 \
      --ckpt-every 25 --keep 1 --threads "$THREADS" --precision "$PRECISION" --quiet --resume \
      --run-dir "$WORK/teacher-corr/run" --export-hf "$WORK/teacher-corr/model" >/dev/null
    touch "$WORK/teacher-corr/done"
  fi
  for s in $CORRECT_STUDENTS; do train_one kdcorr "$s"; done
fi

corr_col() { [ "$CORRECT_TOKENS" -gt 0 ] && printf ' %s |' "$1"; return 0; }
echo "| student | params | none | CE | KD (logits) | KD (logits + intermediate) |$(corr_col "KD, corrected teacher")"
echo "| --- | ---: | ---: | ---: | ---: | ---: |$(corr_col "---:")"
echo "| teacher | $("$BIN" info "$MODEL" | awk '/^total/ {print $2}') | $(ppl "$MODEL") | | | |$(corr_col "")"
[ "$CORRECT_TOKENS" -gt 0 ] &&
  echo "| teacher, corrected on $CORRECT_TOKENS tokens | | $(ppl "$WORK/teacher-corr/model") | | | | |"
for s in width depth; do
  shape=$(python3 -c "import json; c=json.load(open('$WORK/$s/config.json')); print('%d layers, hidden %d, ffn %d, %d/%d heads' % (c['num_hidden_layers'], c['hidden_size'], c['intermediate_size'], c['num_attention_heads'], c['num_key_value_heads']))")
  inter="–" corr="–"
  [ "$s" = depth ] && inter=$(ppl "$WORK/kdinter-$s/model")
  [ -f "$WORK/kdcorr-$s/done" ] && corr=$(ppl "$WORK/kdcorr-$s/model")
  echo "| $s ($shape) | $("$BIN" info "$WORK/$s" | awk '/^total/ {print $2}') | $(ppl "$WORK/$s") |" \
       "$(ppl "$WORK/ce-$s/model") | $(ppl "$WORK/kd-$s/model") | $inter |$(corr_col "$corr")"
done
