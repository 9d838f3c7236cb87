#!/usr/bin/env bash
# Issue 18: the quality ablations of the recipe on SmolLM2-135M-Instruct -> ~90M, every student
# made by `taper compress` with the same size, tokens, schedule and seed, distilled on data that is
# no scored domain, and scored in full (perplexity on WikiText-2 test and on a held-out general
# text; ARC-e, ARC-c, HellaSwag, PIQA, WinoGrande, MMLU zero-shot). Writes bench/quality.json
# (bench/quality/report.py) and prints the tables.
#
# usage: bench/quality.sh [STAGE|RUN ...]   (default: data teacher, then every run, then report)
#   general   the general text and its shards only (the first half of data)
#   data      general text (bench/quality/general_text.py: Austen from r-cran-janeaustenr, the
#             Python 3.11 docs from python3.11-doc; held-out part never trained on), its shards,
#             the SDG prompts (bench/quality/sdg_prompts.py) and the teacher's synthetic corpus
#             (taper generate-data --chat --dedup, resumable); then the contamination check
#             (bench/quality/overlap.py: word 13-grams shared with every scored set)
#   teacher   the teacher's scores
#   report    bench/quality.json and the tables from what is finished
#   RUN       one ablation (names below); `bench/quality.sh list` prints them with their flags
# Everything is resumable: run it again with the same WORK and it goes on where it stopped
# (finished stages skipped, compress resumes from its last checkpoint, evaluation per task).
# Every run: taper compress TEACHER --target-params TARGET --calib <general text> --steps STEPS
# --seq SEQ --batch BATCH --lr LR --warmup STEPS/10 --precision PRECISION, then the run's flags
# (`bench/quality.sh list`; a flag given twice: the run's wins).
# Environment: WORK ($TAPER_CACHE/quality), TAPER_BIN (build/taper), TAPER_MODEL, TAPER_DATA,
# TOKENS (1048576 distillation tokens per run), SEQ (512), BATCH (4), LR (2e-4), TARGET (90M),
# PRECISION (bf16, training and scoring), THREADS (2), SDG_SAMPLES (4096), SDG_TOKENS (384),
# SDG_TEMP (0.8), TASKS (the six), SEED (0), KEEP_RUNS (0: a finished run keeps only its
# student and numbers, not checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TAPER_BIN:-build/taper}"
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}"
WORK="${WORK:-$CACHE/quality}"
TOKENS="${TOKENS:-1048576}" SEQ="${SEQ:-512}" BATCH="${BATCH:-4}" LR="${LR:-2e-4}" TARGET="${TARGET:-90M}"
PRECISION="${PRECISION:-bf16}" THREADS="${THREADS:-2}" SEED="${SEED:-0}" KEEP_RUNS="${KEEP_RUNS:-0}"
SDG_SAMPLES="${SDG_SAMPLES:-4096}" SDG_TOKENS="${SDG_TOKENS:-384}" SDG_TEMP="${SDG_TEMP:-0.8}"
TASKS="${TASKS:-arc_easy,arc_challenge,piqa,winogrande,hellaswag,mmlu}"
STEPS=$((TOKENS / (SEQ * BATCH)))
WARMUP=$((STEPS / 10 > 0 ? STEPS / 10 : 1))
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" TAPER_PROGRESS="${TAPER_PROGRESS:-0}" TAPER_DATA="$DATA"
mkdir -p "$WORK/runs"
run() { echo "+ $*" >&2; "$@"; }
machine() { # the CPU and cores the scores were made on (numbers move a little between CPUs: bf16 kernels)
  echo "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
}
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

GEN="$WORK/shards-general" SDG="$WORK/sdg"

# ---- data ----
general() {
  [ -f "$WORK/general/stats.json" ] || run python3 bench/quality/general_text.py "$WORK/general" >/dev/null
  [ -f "$GEN/manifest.json" ] ||
    run "$BIN" tokenize "$MODEL" -o "$GEN" --threads "$THREADS" "$WORK/general/train.jsonl" >/dev/null
}
data() {
  general
  sdg
  [ "$WORK/overlap.json" -nt "$SDG/.done" ] || # again once the SDG corpus is complete
    run python3 bench/quality/overlap.py "$WORK" "$DATA" > "$WORK/overlap.md"
}
sdg() { # resumable: generate-data continues after its last complete part
  [ -f "$WORK/prompts.txt" ] || run python3 bench/quality/sdg_prompts.py "$WORK/prompts.txt" >/dev/null
  if [ ! -f "$SDG/.done" ]; then
    run "$BIN" generate-data "$MODEL" -o "$SDG" --chat --prompts "$WORK/prompts.txt" --samples "$SDG_SAMPLES" \
      --max-tokens "$SDG_TOKENS" --temperature "$SDG_TEMP" --top-p 0.95 --seed "$SEED" --batch 64 --part-samples 512 --dedup \
      --precision "$PRECISION" --threads "$THREADS" >&2
    touch "$SDG/.done"
  fi
}

# ---- the ablations: name -> taper compress flags (besides size, tokens, schedule) ----
RUNS="kd-general kd-sdg kd-mix kd-mix-inter kd-mix-lr6e-4 kd-mix-lr1.2e-3 kd-mix-lr6e-4-2m kd-mix-inter-emb kd-mix-iter3 kd-mix-agg-mean-l2
kd-mix-agg-l2-l2 kd-mix-correct fam70-direct fam70-iter2 kd-mix-2m"
# Iterated runs split the same tokens over their rounds (--steps per round).
flags() {
  local mix="--data $GEN,$SDG"
  case $1 in
    kd-general) echo "--data $GEN" ;;                    # KD on real general text only
    kd-sdg) echo "--data $SDG" ;;                        # KD on the teacher's synthetic text only
    kd-mix) echo "$mix" ;;                               # both (windows drawn from the union); today's defaults
    kd-mix-inter) echo "$mix --inter cosine" ;;          # + intermediate states (cosine, mapped by the plan)
    kd-mix-lr6e-4) echo "$mix --lr 6e-4" ;;              # lever: 3x the learning rate (min lr stays lr/10)
    kd-mix-lr1.2e-3) echo "$mix --lr 1.2e-3" ;;          # lever: 6x (6e-4 beat 2e-4 at every validation)
    kd-mix-2m) echo "$mix" ;;                            # lever: twice the tokens (run_tokens), the goal's budget
    kd-mix-lr6e-4-2m) echo "$mix --lr 6e-4" ;;           # both levers: the best rate of the 1M runs, 2M tokens
    kd-mix-inter-emb) echo "$mix --inter cosine --emb-loss" ;; # + the embedding output too
    kd-mix-iter3) echo "$mix --iterate 3 --steps $((STEPS / 3))" ;; # importance recomputed, 3 prune/distill rounds
    kd-mix-agg-mean-l2) echo "$mix --agg mean,l2" ;;     # aggregation (batch, seq) after retraining
    kd-mix-agg-l2-l2) echo "$mix --agg l2,l2" ;;
    kd-mix-correct) echo "$mix --correct-steps $((STEPS / 4))" ;; # teacher corrected on the same data first
    fam70-direct) echo "$mix --target-params 70M" ;;     # 135M -> 70M in one cut
    fam70-iter2) echo "$mix --target-params 70M --iterate 2 --steps $((STEPS / 2))" ;; # 135M -> ~97M -> 70M
    *) echo "bench/quality.sh: unknown run '$1' (bench/quality.sh list)" >&2; return 2 ;;
  esac
}
needs_sdg() { flags "$1" | grep -q "$SDG"; }
# the distillation tokens of a run: TOKENS, twice that for the *-2m runs (2M: the goal's budget)
run_tokens() { case $1 in *-2m) echo $((TOKENS * 2)) ;; *) echo "$TOKENS" ;; esac; }

# ---- scoring: perplexity on two texts, every task, one file each (resumable per task) ----
score() { # score NAME MODEL
  local d="$WORK/scores/$1" t
  mkdir -p "$d"
  [ -f "$d/model.json" ] ||
    echo "{\"model\": \"$2\", \"params\": $("$BIN" info "$2" | awk '/^total/ {print $2}'), \"machine\": \"$(machine)\"}" > "$d/model.json"
  [ -f "$d/ppl-wikitext2.json" ] || { run "$BIN" ppl "$2" --data "$DATA/wikitext2/wiki.test.raw" --ctx 512 \
      --precision "$PRECISION" --threads "$THREADS" --json="$d/ppl-wikitext2.json.partial" >/dev/null &&
    mv "$d/ppl-wikitext2.json.partial" "$d/ppl-wikitext2.json"; }
  [ -f "$d/ppl-heldout.json" ] || { run "$BIN" ppl "$2" --data "$WORK/general/heldout.txt" --ctx 512 \
      --precision "$PRECISION" --threads "$THREADS" --json="$d/ppl-heldout.json.partial" >/dev/null &&
    mv "$d/ppl-heldout.json.partial" "$d/ppl-heldout.json"; }
  for t in ${TASKS//,/ }; do
    [ -f "$d/task-$t.json" ] && continue
    log "$1: $t"
    run "$BIN" eval "$2" --tasks "$t" --precision "$PRECISION" --threads "$THREADS" \
      --json="$d/task-$t.json.partial" >/dev/null
    mv "$d/task-$t.json.partial" "$d/task-$t.json"
  done
}

one_run() { # one_run NAME
  local name=$1 out="$WORK/runs/$1" f t
  t=$(run_tokens "$name")
  local TOKENS=$t STEPS=$((t / (SEQ * BATCH))) # seen by flags (iterated runs split STEPS)
  local WARMUP=$((STEPS / 10 > 0 ? STEPS / 10 : 1))
  f=$(flags "$name")
  if [ ! -f "$out/.trained" ]; then
    needs_sdg "$name" && sdg
    log "$name: compress ($STEPS steps x $BATCH x $SEQ)"
    local t0; t0=$(date +%s)
    # shellcheck disable=SC2086
    run "$BIN" compress "$MODEL" --target-params "$TARGET" -o "$out" --calib "$WORK/general/train.jsonl" \
      --steps "$STEPS" --seq "$SEQ" --batch "$BATCH" --lr "$LR" --warmup "$WARMUP" --precision "$PRECISION" \
      --tasks "" --threads "$THREADS" $f >&2 || { echo $(($(date +%s) - t0)) >> "$out/.wall"; return 1; }
    echo $(($(date +%s) - t0)) >> "$out/.wall"
    touch "$out/.trained"
  fi
  mkdir -p "$WORK/scores/$name"
  python3 - "$out" "$WORK/scores/$name" "$name" "$f" "$TOKENS" "$STEPS" "$SEED" <<'EOF'
import json, os, sys
out, d, name, f, tokens, steps, seed = sys.argv[1:]
r = {"name": name, "flags": f, "tokens": int(tokens), "steps": int(steps), "seed": int(seed)}
try:
    r["wall_s"] = sum(int(x) for x in open(os.path.join(out, ".wall")).read().split())
except (OSError, ValueError):
    pass
try:
    rep = json.load(open(os.path.join(out, "report.json")))
    r["student"] = {k: v for k, v in rep["rounds"][-1]["student"].items() if k not in ("tasks", "path")}
    r["distill"] = rep["rounds"][-1].get("distill")
except (OSError, ValueError):
    pass
json.dump(r, open(os.path.join(d, "run.json"), "w"), indent=1)
EOF
  score "$name" "$out/student"
  if [ "$KEEP_RUNS" = 0 ]; then # the student, the report and the logs stay; checkpoints go
    find "$out" -name 'ckpt-*' -prune -exec rm -rf {} + 2>/dev/null || true
    rm -rf "$out/teacher-cache" "$out/search" 2>/dev/null || true
  fi
}

report() { python3 bench/quality/report.py "$WORK" bench/quality.json; }

main() {
  [ $# -gt 0 ] || set -- data teacher $RUNS report
  for a in "$@"; do
    case $a in
      list) for r in $RUNS; do echo "$r: $(flags "$r")"; done ;;
      data) data ;;
      general) general ;;
      sdg) sdg ;;
      teacher) score teacher "$MODEL" ;;
      report) report ;;
      *) flags "$a" >/dev/null && one_run "$a" ;;
    esac
  done
}
main "$@"; exit  # on one line: bash has read the whole file before anything runs, so editing it mid-run is safe
