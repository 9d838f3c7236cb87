#!/usr/bin/env bash
# make demo: the main job end to end on the default model (SmolLM2-135M-Instruct), sized to finish
# in about 10 minutes on 2 cores: the teacher writes its own training data (SDG), importance and a
# 135M -> 100M pruning search, a short distillation, evaluation of teacher / pruned / distilled
# (perplexity on the GPL-3 text every Debian machine has; zero-shot tasks too when ../shared/data
# is there), export to HF and GGUF, and the report. No dataset download is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
# One run directory, replaced by every demo (TAPER_DEMO_DIR moves it): nothing piles up.
OUT="${TAPER_DEMO_DIR:-$CACHE/demo}"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  # only ever remove a directory an earlier demo made (it holds a taper run's recipe.json)
  if [ ! -f "$OUT/recipe.json" ]; then
    echo "demo: $OUT exists and is not a taper run directory; set TAPER_DEMO_DIR to another place" >&2
    exit 1
  fi
  rm -rf "$OUT"
fi
T=build/taper
t0=$(date +%s)
TASKS=()
DATA="${TAPER_DATA:-../shared/data}"
if [ -f "$DATA/arc_easy/arc_easy.jsonl" ] && [ -f "$DATA/piqa/valid.jsonl" ]; then
  TASKS=(--tasks arc_easy,piqa --task-limit 60 --data-dir "$DATA")
else
  TASKS=(--tasks "")
  echo "(no benchmark data under $DATA: zero-shot scores skipped; perplexity still measured)"
fi
echo "== the teacher"
$T info "$MODEL" | head -3
echo; echo "== taper compress: SmolLM2-135M -> 100M parameters (run directory $OUT)"
$T compress "$MODEL" --target-params 100M -o "$OUT" \
  --sdg-samples 128 --sdg-tokens 128 --calib-samples 32 --calib-seq 128 --depth-samples 8 \
  --steps 200 --seq 128 --batch 4 --lr 3e-4 --warmup 10 --ckpt-every 50 --precision bf16 \
  --eval-chunks 8 --eval-ctx 256 "${TASKS[@]}"
echo; echo "== the distilled student, exported as GGUF (Q8_0) and asked a question"
$T convert "$OUT/student" --to gguf "$OUT/student-q8_0.gguf" --dtype q8_0 > /dev/null
$T generate "$OUT/student-q8_0.gguf" --chat --prompt "What is the capital of France?" --max-tokens 24
# Keep what a user looks at (report, plots, plan, the models, metrics); the training checkpoints
# (about 1.6 GB each) only serve a resume, and the demo is finished.
rm -f "$OUT"/distill/ckpt-*.tpc
echo; echo "demo finished in $(( $(date +%s) - t0 )) s; $(du -sh "$OUT" | cut -f1) kept in $OUT:"
echo "  report.md (with loss.png, importance.png), report.json, student/ (HF folder), student-q8_0.gguf,"
echo "  pruned/ (with prune_plan.json), distill/metrics.jsonl; it is replaced by the next make demo"
