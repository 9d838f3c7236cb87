#!/usr/bin/env bash
# Per-layer (heterogeneous) widths against the uniform shape at the same parameter count and the
# same distillation budget (issue 17). SmolLM2-135M: one importance pass; `taper prune` to FFN
# FFN / HEADS query heads four ways: uniform; per-layer neurons and heads by the activation rule
# (--per-layer-rule activation --per-layer-heads); per-layer neurons only by the activation rule;
# per-layer neurons by loss sensitivity (the default --per-layer, on 4 held-out samples); each
# with the same neuron and head totals, so the same parameters; one teacher cache (top-32) over WikiText-2 valid; every student distilled
# STEPS steps with the same settings; then WikiText-2 test perplexity (llama.cpp protocol) and
# zero-shot tasks, untrained and distilled. Resumable (finished stages are skipped).
#
# Environment: TAPER_BIN (build/taper), TAPER_MODEL, TAPER_DATA, WORK (/tmp/taper-per-layer),
# FFN (768), HEADS (6), STEPS (300), SEQ (128), BATCH (4), LR (3e-4), CHUNKS (40), TASKS
# (arc_easy,hellaswag,piqa,winogrande), LIMIT (500), THREADS (2), KEEP=1 keeps WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TAPER_BIN:-build/taper}"
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}"
WORK="${WORK:-/tmp/taper-per-layer}"
FFN="${FFN:-768}" HEADS="${HEADS:-6}" STEPS="${STEPS:-300}" SEQ="${SEQ:-128}" BATCH="${BATCH:-4}" LR="${LR:-3e-4}"
CHUNKS="${CHUNKS:-40}" TASKS="${TASKS:-arc_easy,hellaswag,piqa,winogrande}" LIMIT="${LIMIT:-500}"
THREADS="${THREADS:-2}"
export TAPER_PROGRESS="${TAPER_PROGRESS:-0}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
mkdir -p "$WORK"
say() { echo "[$(date +%H:%M:%S)] $*"; }
timed() { local t0=$SECONDS; "$@"; say "  ($((SECONDS - t0)) s)" >&2; }

[ -f "$WORK/shards/manifest.json" ] ||
  "$BIN" tokenize "$MODEL" -o "$WORK/shards" --doc-split blank --threads "$THREADS" "$DATA/wikitext2/wiki.valid.tokens" >/dev/null
if [ ! -f "$WORK/scores.json" ]; then
  say "importance: 16 x 256 tokens of WikiText-2 valid"
  timed "$BIN" importance "$MODEL" --data "$DATA/wikitext2/wiki.valid.tokens" --samples 16 --seq-len 256 \
    --threads "$THREADS" -o "$WORK/scores.json" >/dev/null
fi
VARIANTS=(uniform per-layer ffn-only loss-ffn)
declare -A FLAGS=([uniform]="--plan-out $WORK/uniform.plan.json"
                  [per-layer]="--per-layer --per-layer-rule activation --per-layer-heads"
                  [ffn-only]="--per-layer --per-layer-rule activation"
                  [loss-ffn]="--per-layer --eval-samples 4")
for v in "${VARIANTS[@]}"; do
  # shellcheck disable=SC2086
  [ -f "$WORK/$v.gguf" ] ||
    "$BIN" prune "$MODEL" --scores "$WORK/scores.json" --ffn "$FFN" --heads "$HEADS" ${FLAGS[$v]} \
      --gguf "$WORK/$v.gguf" --gguf-type f32 | tee "$WORK/prune-$v.txt"
done
if [ ! -f "$WORK/teacher.tkc" ]; then
  say "teacher cache: top-32 over WikiText-2 valid at seq $SEQ"
  timed "$BIN" teacher-cache "$MODEL" --data "$WORK/shards" --seq "$SEQ" --topk 32 --threads "$THREADS" --quiet \
    -o "$WORK/teacher.tkc"
fi
for s in "${VARIANTS[@]}"; do
  if [ ! -f "$WORK/$s-student.gguf" ]; then
    say "distill $s: $STEPS steps x $BATCH x $SEQ tokens"
    timed "$BIN" distill "$WORK/$s.gguf" --teacher-cache "$WORK/teacher.tkc" --data "$WORK/shards" --seq "$SEQ" \
      --batch "$BATCH" --steps "$STEPS" --lr "$LR" --warmup 10 --ckpt-every 50 --threads "$THREADS" \
      --run-dir "$WORK/run-$s" --export-gguf "$WORK/$s-student.gguf" --export-gguf-type f32 >/dev/null
  fi
done
for m in "${VARIANTS[@]}" "${VARIANTS[@]/%/-student}"; do
  [ -f "$WORK/ppl-$m.json" ] ||
    "$BIN" ppl "$WORK/$m.gguf" --data "$DATA/wikitext2/wiki.test.raw" --ctx 512 --max-chunks "$CHUNKS" \
      --threads "$THREADS" --json="$WORK/ppl-$m.json" >/dev/null
done
for m in "${VARIANTS[@]/%/-student}"; do
  if [ ! -f "$WORK/tasks-$m.json" ]; then
    say "zero-shot $m: $TASKS, $LIMIT items each"
    timed "$BIN" eval "$WORK/$m.gguf" --tasks "$TASKS" --limit "$LIMIT" --data-dir "$DATA" --threads "$THREADS" \
      --json="$WORK/tasks-$m.json" >/dev/null
  fi
done
PY=$(scripts/ref-env.sh)
"$PY" - "$WORK" <<'EOF'
import json, sys
w = sys.argv[1]
def ppl(m):
    for r in json.load(open(f"{w}/ppl-{m}.json"))["results"]:
        if r["protocol"] == "llama.cpp": return r["ppl"]
def tasks(m):
    out = {}
    for t in json.load(open(f"{w}/tasks-{m}.json"))["tasks"]:
        mt = t["metrics"]
        k = "acc_norm" if "acc_norm" in mt else "acc"
        out[f"{t['task']} {k}"] = mt[k]
    return out
rows = [(v, tasks(v + "-student")) for v in ("uniform", "per-layer", "ffn-only", "loss-ffn")]
keys = list(rows[0][1])
print("| student | WikiText-2 test PPL untrained | PPL distilled | " + " | ".join(keys) + " | mean |")
print("|---|---:|---:|" + "---:|" * (len(keys) + 1))
for v, t in rows:
    vals = [t[k] for k in keys]
    print(f"| {v} | {ppl(v):.2f} | {ppl(v + '-student'):.2f} | " + " | ".join(f"{100*x:.1f}" for x in vals)
          + f" | {100*sum(vals)/len(vals):.1f} |")
EOF
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
