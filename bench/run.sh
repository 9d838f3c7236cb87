#!/usr/bin/env bash
# make bench: taper and its PyTorch peer side by side on this machine — same model weights (the
# GGUF dequantised to fp32 on both sides), same shapes, same threads — with ratio tables.
# Prints only: copy the tables into bench/RESULTS.md with the date.
#
# usage: bench/run.sh [SECTION...]     SECTION: forward, importance, train, distill, mpi, generate, kernels,
#                                      check, all (default)
#   forward     perplexity forward tok/s: taper ppl vs transformers fp32 / bf16 autocast / bf16 weights
#   importance  taper importance pass vs taper ppl on the same tokens (same seq, same count)
#   train       CE training step, seq 512: taper train vs PyTorch fp32, bf16 autocast, torch.compile,
#               torch.compile + bf16 autocast
#   distill     distillation step, teacher SmolLM2-135M -> pruned ~90M student (made with taper
#               importance + prune), seq 512, forward KL tau 1, and + intermediate cosine losses:
#               taper distill vs the same four PyTorch configurations
#   mpi         data parallelism: taper train and distill (logits, + intermediate) as 1 process x
#               THREADS threads vs mpirun -np THREADS x 1 thread, same global batch (BATCH x SEQ
#               tokens per update), fp32; tokens/s and the gradient all-reduce's time per step
#   generate    batched generation and perplexity forward against llama.cpp on the same GGUF (MODEL
#               converted to F32 and to BF16): llama-batched-bench vs taper bench (prompt 128,
#               generate 128, batch GEN_BATCHES), llama-perplexity vs taper ppl (CHUNKS x 512);
#               llama.cpp runs with its own OpenMP wait policy (spinning), taper with its PASSIVE,
#               then (GEN_SPIN=1, the default) with OMP_WAIT_POLICY=ACTIVE as well ("both spinning")
#   kernels     kernels no command isolates (bench/kernels.c, built by make bench): the bf16 attention
#               of one head at training shapes (forward, both forms of its backward); one training
#               step's bf16 products alone with hot inputs, vs PyTorch's (bench/matmul_peer.py), and
#               the same products inside a taper train step (ONEDNN_VERBOSE)
#   check       (not in all) the distillation peer computes taper's step: the first step's KD loss,
#               intermediate loss and gradient norm of both on the same window (about a minute)
# Every run is under /usr/bin/time -v; peak RSS is compared with bench/rss.py's analytic minimum.
# Environment: GEN_BATCHES (1,16,64), GEN_DTYPES (f32 bf16), GEN_SPIN (1), TAPER_BIN (build/taper),
# TAPER_KERNEL_BENCH (build/taper-kernel-bench), THREADS (2), TAPER_MODEL, TAPER_DATA, WORK
# (/tmp/taper-bench), CHUNKS (16: forward chunks and importance samples of 512 tokens), STEPS (3
# timed steps), WARMUP (1), BATCH (2), SEQ (512), PEER_CONFIGS (fp32 bf16 compile compile-bf16:
# any subset), COMPILE_TIMEOUT (1200 s per torch.compile run), STUDENT (an HF folder with
# prune_plan.json instead of making one), STUDENT_ARGS (taper prune sizes, "--hidden 512 --ffn 896").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/ref-env.sh)
BIN="${TAPER_BIN:-build/taper}"
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}"
THREADS="${THREADS:-2}"
CHUNKS="${CHUNKS:-16}"
STEPS="${STEPS:-3}"
REPEAT="${REPEAT:-1}"  # train/distill: rounds of taper then the peers, each a row (" #k")
WARMUP="${WARMUP:-1}"
BATCH="${BATCH:-2}"
SEQ="${SEQ:-512}"
PEER_CONFIGS="${PEER_CONFIGS:-fp32 bf16 compile compile-bf16}"
TAPER_PRECISIONS="${TAPER_PRECISIONS:-fp32 bf16}"
COMPILE_TIMEOUT="${COMPILE_TIMEOUT:-1200}"
STUDENT_ARGS="${STUDENT_ARGS:---hidden 512 --ffn 896}"
WORK="${WORK:-/tmp/taper-bench}"
GEN_BATCHES="${GEN_BATCHES:-1,16,64}"
GEN_DTYPES="${GEN_DTYPES:-f32 bf16}"
GEN_SPIN="${GEN_SPIN:-1}"  # generate: taper also at OMP_WAIT_POLICY=ACTIVE, llama.cpp's spinning policy
TOKJSON=tests/fixtures/tok/smollm2/tokenizer.json
TEST_TEXT="$DATA/wikitext2/wiki.test.raw"
VALID_TEXT="$DATA/wikitext2/wiki.valid.tokens"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" TAPER_PROGRESS="${TAPER_PROGRESS:-0}"
export OMP_NUM_THREADS="$THREADS"
mkdir -p "$WORK"
[ -x "$BIN" ] || { echo "bench/run.sh: $BIN not found (build it, or set TAPER_BIN)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "bench/run.sh: model $MODEL not found (set TAPER_MODEL)" >&2; exit 1; }

report() { "$PY" bench/report.py "$@"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# the training sections' tokens: WikiText-2 valid, tokenized once into $WORK/wiki_valid
wiki_valid() {
  [ -f "$WORK/wiki_valid/manifest.json" ] ||
    "$BIN" tokenize "$MODEL" -o "$WORK/wiki_valid" --doc-split blank --threads "$THREADS" "$VALID_TEXT" >/dev/null
}

# timed NAME CMD...: run CMD under /usr/bin/time -v with stdout/stderr in $WORK/NAME.{out,err,time};
# prints the command first; sets RC (the command's exit status) instead of stopping the script
timed() {
  local name=$1; shift
  echo "  \$ $*"
  RC=0
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || RC=$?
  if [ "$RC" -ne 0 ]; then echo "    (exit $RC; stderr: $WORK/$name.err)"; fi
}

# peer_setup CONFIG: PEER_ARGS, the peer options of a configuration of PEER_CONFIGS, and
# PEER_PREFIX, the time box of its run (compilation can take minutes, or hang)
peer_setup() {
  PEER_PREFIX=()
  case "$1" in
    fp32) PEER_ARGS=(--dtype fp32) ;;
    bf16) PEER_ARGS=(--dtype bf16) ;;
    compile) PEER_ARGS=(--dtype fp32 --compile); PEER_PREFIX=(timeout "$COMPILE_TIMEOUT") ;;
    compile-bf16) PEER_ARGS=(--dtype bf16 --compile); PEER_PREFIX=(timeout "$COMPILE_TIMEOUT") ;;
    *) echo "bench/run.sh: unknown peer configuration $1 (fp32, bf16, compile, compile-bf16)" >&2; return 2 ;;
  esac
}

teacher_info() {
  [ -f "$WORK/teacher.info.json" ] || "$BIN" info "$MODEL" --json="$WORK/teacher.info.json" >/dev/null
}

header() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
       "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); threads $THREADS; load average $(loadavg)"
  echo "taper: $BIN ($(cc --version | head -1)); model $MODEL"
  echo "peer: $(report versions 2>/dev/null)"
  echo "settings: OMP_WAIT_POLICY=$OMP_WAIT_POLICY OMP_NUM_THREADS=$OMP_NUM_THREADS CHUNKS=$CHUNKS WARMUP=$WARMUP" \
       "STEPS=$STEPS REPEAT=$REPEAT BATCH=$BATCH SEQ=$SEQ PEER_CONFIGS=\"$PEER_CONFIGS\" TAPER_PRECISIONS=\"$TAPER_PRECISIONS\"" \
       "COMPILE_TIMEOUT=$COMPILE_TIMEOUT OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset (OpenBLAS picks)}"
}

forward() {
  echo
  echo "## forward: perplexity pass, ctx 512, first $CHUNKS chunks of wiki.test.raw (load average $(loadavg))"
  teacher_info
  local rows="$WORK/forward.rows"
  : >"$rows"
  local prec
  for prec in $TAPER_PRECISIONS; do
    rm -f "$WORK/fwd_taper_$prec.json"
    timed "fwd_taper_$prec" "$BIN" ppl "$MODEL" --data "$TEST_TEXT" --ctx 512 --max-chunks "$CHUNKS" \
      --threads "$THREADS" --precision "$prec" --json="$WORK/fwd_taper_$prec.json"
    local t_tps="n/a (exit $RC)" t_ppl=""
    if [ "$RC" -eq 0 ]; then
      t_tps=$(report get "$WORK/fwd_taper_$prec.json" results.0.tokens_per_s %.1f)
      t_ppl="ppl $(report get "$WORK/fwd_taper_$prec.json" results.0.ppl %.4f)"
    fi
    report row "taper ppl $prec" "$t_tps" "$WORK/fwd_taper_$prec.time" "$t_ppl" >>"$rows"
  done
  local cfg
  for cfg in fp32 bf16 bf16-weights; do
    timed "fwd_peer_$cfg" "$PY" bench/forward_peer.py --model "$MODEL" --tokenizer "$TOKJSON" --data "$TEST_TEXT" \
      --ctx 512 --chunks "$CHUNKS" --threads "$THREADS" --dtype "$cfg"
    report peer-row "transformers $cfg" "$WORK/fwd_peer_$cfg.out" "$WORK/fwd_peer_$cfg.time" "$RC" >>"$rows"
  done
  echo
  report table "$rows" --min "$("$PY" bench/rss.py forward --config "$WORK/teacher.info.json" --seq 512 --total)"
  "$PY" bench/rss.py forward --config "$WORK/teacher.info.json" --batch 1 --seq 512
}

importance() {
  echo
  echo "## importance pass vs plain forward: $CHUNKS x 512 tokens of wiki.valid.tokens (load average $(loadavg))"
  teacher_info
  rm -f "$WORK/imp_ppl.json" "$WORK/imp_taper.json"
  timed imp_ppl "$BIN" ppl "$MODEL" --data "$VALID_TEXT" --ctx 512 --max-chunks "$CHUNKS" --threads "$THREADS" \
    --json="$WORK/imp_ppl.json"
  timed imp_taper "$BIN" importance "$MODEL" --data "$VALID_TEXT" --samples "$CHUNKS" --seq-len 512 --depth-samples 0 \
    --batch 4 --threads "$THREADS" -o "$WORK/imp_scores.json" --json="$WORK/imp_taper.json"
  if [ ! -f "$WORK/imp_ppl.json" ] || [ ! -f "$WORK/imp_taper.json" ]; then echo "  n/a: a run failed"; return 0; fi
  local mn_f mn_i
  mn_f=$("$PY" bench/rss.py forward --config "$WORK/teacher.info.json" --seq 512 --total)
  mn_i=$("$PY" bench/rss.py forward --config "$WORK/teacher.info.json" --batch 4 --seq 512 --no-lm-head --total)
  echo
  report importance "$WORK/imp_ppl.json" "$WORK/imp_taper.json" "$WORK/imp_ppl.time" "$WORK/imp_taper.time" \
    "$mn_f" "$mn_i"
}

train() {
  echo
  echo "## training step: SmolLM2-135M fp32 weights, CE, seq $SEQ, batch $BATCH, AdamW + clip 1," \
       "$WARMUP warm-up + $STEPS timed steps (load average $(loadavg))"
  teacher_info
  wiki_valid
  local rows="$WORK/train.rows"
  : >"$rows"
  local prec rep
  for rep in $(seq "$REPEAT"); do
  local tag=""; [ "$REPEAT" -gt 1 ] && tag=" #$rep"
  for prec in $TAPER_PRECISIONS; do
    rm -rf "$WORK/train_taper_$prec"
    timed "train_taper_$prec" "$BIN" train "$MODEL" --data "$WORK/wiki_valid" --steps $((WARMUP + STEPS)) \
      --seq "$SEQ" --batch "$BATCH" --lr 1e-4 --min-lr 1e-5 --val-every -1 --ckpt-every 0 --keep 1 \
      --threads "$THREADS" --precision "$prec" --quiet --run-dir "$WORK/train_taper_$prec"
    local t_tps="n/a (exit $RC)"
    [ "$RC" -eq 0 ] && t_tps=$(report metrics-tps "$WORK/train_taper_$prec/metrics.jsonl" "$WARMUP" $((BATCH * SEQ)))
    report row "taper train $prec$tag" "$t_tps" "$WORK/train_taper_$prec.time" >>"$rows"
    rm -f "$WORK"/train_taper_"$prec"/ckpt-*.tpc
  done
  local cfg
  for cfg in $PEER_CONFIGS; do
    peer_setup "$cfg"
    timed "train_peer_$cfg" "${PEER_PREFIX[@]}" "$PY" bench/train_peer.py --model "$MODEL" --tokenizer "$TOKJSON" \
      --data "$VALID_TEXT" --seq "$SEQ" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" \
      "${PEER_ARGS[@]}"
    report peer-row "PyTorch $cfg$tag" "$WORK/train_peer_$cfg.out" "$WORK/train_peer_$cfg.time" "$RC" \
      "$COMPILE_TIMEOUT" >>"$rows"
  done
  done
  local rss_args=(train --config "$WORK/teacher.info.json" --batch "$BATCH" --seq "$SEQ")
  echo
  report table "$rows" --min "$("$PY" bench/rss.py "${rss_args[@]}" --total)"
  "$PY" bench/rss.py "${rss_args[@]}"
  if [ -f "$WORK/train_taper_fp32/summary.json" ]; then
    echo "taper's own count: activations $(report get-mib "$WORK/train_taper_fp32/summary.json" activation_bytes) MiB," \
         "gradients + AdamW moments $(report get-mib "$WORK/train_taper_fp32/summary.json" state_bytes) MiB"
  fi
}

# the ~90M student: importance on 16 x 256 calibration tokens, then a width prune (default
# hidden 576 -> 512, ffn 1536 -> 896: 90.1M parameters, every layer kept)
make_student() {
  if [ -n "${STUDENT:-}" ]; then return 0; fi
  STUDENT="$WORK/student90"
  if [ ! -f "$STUDENT/prune_plan.json" ]; then
    echo "making the student:"
    local imp=("$BIN" importance "$MODEL" --data "$VALID_TEXT" --samples 16 --seq-len 256 --depth-samples 0
               --threads "$THREADS" -o "$WORK/student_scores.json")
    echo "  \$ ${imp[*]}"
    "${imp[@]}" >/dev/null 2>"$WORK/student_importance.err"
    echo "  \$ $BIN prune $MODEL --scores $WORK/student_scores.json $STUDENT_ARGS -o $STUDENT"
    rm -rf "$STUDENT"
    # shellcheck disable=SC2086
    "$BIN" prune "$MODEL" --scores "$WORK/student_scores.json" $STUDENT_ARGS --threads "$THREADS" -o "$STUDENT" |
      grep '^pruned' | sed 's/^/  /'
  fi
}

distill() {
  echo
  echo "## distillation step: teacher SmolLM2-135M (fp32) -> pruned student, seq $SEQ, batch $BATCH, forward KL" \
       "tau 1, AdamW + clip 1, $WARMUP warm-up + $STEPS timed steps (load average $(loadavg))"
  teacher_info
  make_student
  echo "student: $STUDENT ($(report student "$STUDENT/prune_plan.json"))"
  wiki_valid
  local variant
  for variant in logits inter; do
    local rows="$WORK/distill_$variant.rows" taper_extra=() peer_extra=() pairs=0 title
    if [ "$variant" = inter ]; then
      taper_extra=(--inter cosine --plan "$STUDENT/prune_plan.json")
      peer_extra=(--inter cosine --plan "$STUDENT/prune_plan.json")
      pairs=$(report get "$STUDENT/config.json" num_hidden_layers)  # --map auto: every student layer
      title="### logits KL + intermediate cosine losses ($pairs mapped layers, auto map from the plan;"
      title+=" learned projections where the widths differ)"
    else
      title="### logits KL only"
    fi
    echo
    echo "$title"
    : >"$rows"
    local prec rep
    for rep in $(seq "$REPEAT"); do  # REPEAT > 1: taper and the peers take turns (the host drifts)
    local tag=""; [ "$REPEAT" -gt 1 ] && tag=" #$rep"
    for prec in $TAPER_PRECISIONS; do
      local run="distill_taper_${variant}_$prec"
      rm -rf "${WORK:?}/$run"
      timed "$run" "$BIN" distill "$STUDENT" --teacher "$MODEL" --data "$WORK/wiki_valid" \
        --steps $((WARMUP + STEPS)) --seq "$SEQ" --batch "$BATCH" --val-every -1 --ckpt-every 0 --keep 1 \
        --threads "$THREADS" --precision "$prec" --quiet --run-dir "$WORK/$run" "${taper_extra[@]}"
      local t_tps="n/a (exit $RC)"
      [ "$RC" -eq 0 ] && t_tps=$(report metrics-tps "$WORK/$run/metrics.jsonl" "$WARMUP" $((BATCH * SEQ)))
      report row "taper distill $prec$tag" "$t_tps" "$WORK/$run.time" >>"$rows"
      rm -f "$WORK/$run"/ckpt-*.tpc
    done
    local cfg
    for cfg in $PEER_CONFIGS; do
      peer_setup "$cfg"
      timed "distill_peer_${variant}_$cfg" "${PEER_PREFIX[@]}" "$PY" bench/distill_peer.py --teacher "$MODEL" \
        --student "$STUDENT" --tokenizer "$TOKJSON" --data "$VALID_TEXT" --seq "$SEQ" --batch "$BATCH" \
        --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" "${peer_extra[@]}" "${PEER_ARGS[@]}"
      report peer-row "PyTorch $cfg$tag" "$WORK/distill_peer_${variant}_$cfg.out" \
        "$WORK/distill_peer_${variant}_$cfg.time" "$RC" "$COMPILE_TIMEOUT" >>"$rows"
    done
    done
    local rss_args=(distill --config "$STUDENT/config.json" --teacher-config "$WORK/teacher.info.json"
                    --batch "$BATCH" --seq "$SEQ" --pairs "$pairs")
    echo
    report table "$rows" --min "$("$PY" bench/rss.py "${rss_args[@]}" --total)"
    "$PY" bench/rss.py "${rss_args[@]}"
  done
}

# mpi_pair NAME CMD...: CMD (taper train|distill ...) once as one process with THREADS threads and
# batch BATCH, once under mpirun with THREADS ranks of 1 thread and batch BATCH / THREADS: one row
# each, with the all-reduce time per step of the multi-rank run
mpi_pair() {
  local name=$1; shift
  local np=$THREADS per=$((BATCH / THREADS)) rows="$WORK/mpi_$name.rows"
  : >"$rows"
  if [ "$per" -lt 1 ] || [ $((per * np)) -ne "$BATCH" ]; then
    echo "  n/a: BATCH $BATCH does not split over $np ranks"; return 0
  fi
  rm -rf "${WORK:?}/mpi_${name}_one" "${WORK:?}/mpi_${name}_ranks"
  timed "mpi_${name}_one" "$@" --batch "$BATCH" --threads "$THREADS" --run-dir "$WORK/mpi_${name}_one"
  local tps="n/a (exit $RC)"
  [ "$RC" -eq 0 ] && tps=$(report metrics-tps "$WORK/mpi_${name}_one/metrics.jsonl" "$WARMUP" $((BATCH * SEQ)))
  report row "1 process x $THREADS threads, batch $BATCH" "$tps" "$WORK/mpi_${name}_one.time" >>"$rows"
  timed "mpi_${name}_ranks" env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
    mpirun -np "$np" --bind-to core "$@" --batch "$per" --threads 1 --run-dir "$WORK/mpi_${name}_ranks"
  tps="n/a (exit $RC)" note=""
  if [ "$RC" -eq 0 ]; then
    tps=$(report metrics-tps "$WORK/mpi_${name}_ranks/metrics.jsonl" "$WARMUP" $((BATCH * SEQ)))
    note=$(report metrics-allreduce "$WORK/mpi_${name}_ranks/metrics.jsonl" "$WARMUP")
  fi
  report row "mpirun -np $np x 1 thread, batch $per per rank" "$tps" "$WORK/mpi_${name}_ranks.time" "$note" >>"$rows"
  rm -f "$WORK"/mpi_"${name}"_*/ckpt-*.tpc
  echo
  report table "$rows" --min 0
  awk -F'\t' 'NR == 1 { a = $2 } NR == 2 { b = $2 } END { if (a + 0 > 0 && b + 0 > 0) printf "ranks / one process: %.2fx\n", b / a }' "$rows"
}

mpi() {
  echo
  echo "## data parallelism: 1 process x $THREADS threads vs $THREADS ranks x 1 thread (Open MPI), fp32, seq $SEQ," \
       "global batch $BATCH, $WARMUP warm-up + $STEPS timed steps (load average $(loadavg))"
  command -v mpirun >/dev/null || { echo "  n/a: mpirun not found (make deps installs Open MPI)"; return 0; }
  teacher_info
  wiki_valid
  local common=(--data "$WORK/wiki_valid" --steps $((WARMUP + STEPS)) --seq "$SEQ" --val-every -1 --ckpt-every 0
                --keep 1 --quiet)
  echo; echo "### taper train (CE)"
  mpi_pair train "$BIN" train "$MODEL" "${common[@]}" --lr 1e-4 --min-lr 1e-5
  make_student
  echo; echo "### taper distill, logits KL"
  mpi_pair distill "$BIN" distill "$STUDENT" --teacher "$MODEL" "${common[@]}"
  echo; echo "### taper distill, logits KL + intermediate cosine (auto map from the plan)"
  mpi_pair distill_inter "$BIN" distill "$STUDENT" --teacher "$MODEL" "${common[@]}" --inter cosine \
    --plan "$STUDENT/prune_plan.json"
}

# the first distillation step of taper and of bench/distill_peer.py on one identical window: a
# one-document shard of T+1 tokens (no BOS/EOS for this tokenizer), --val-frac 0, so taper's only
# training window is the text's first T tokens, which is the peer's window too
check() {
  echo
  echo "## check: taper distill vs bench/distill_peer.py, first step on the same window"
  make_student
  local d="$WORK/check" n v bad=0
  mkdir -p "$d"
  head -c 1500 "$VALID_TEXT" | tail -c 1200 >"$d/text.txt"
  rm -rf "$d/shard"
  "$BIN" tokenize "$MODEL" -o "$d/shard" --doc-split file "$d/text.txt" >/dev/null
  n=$(report get "$d/shard/manifest.json" shards.0.tokens)  # one document, no BOS/EOS: the stream
  for v in none cosine; do
    local ex=()
    [ "$v" = cosine ] && ex=(--plan "$STUDENT/prune_plan.json")
    rm -rf "$d/taper_$v"
    timed "check/taper_$v" "$BIN" distill "$STUDENT" --teacher "$MODEL" --data "$d/shard" --seq $((n - 1)) \
      --batch 1 --steps 1 --val-frac 0 --val-every -1 --ckpt-every 0 --threads "$THREADS" --quiet \
      --run-dir "$d/taper_$v" --inter "$v" "${ex[@]}"
    timed "check/peer_$v" "$PY" bench/distill_peer.py --teacher "$MODEL" --student "$STUDENT" --tokenizer "$TOKJSON" \
      --data "$d/text.txt" --seq $((n - 1)) --batch 1 --steps 1 --warmup 0 --threads "$THREADS" --inter "$v" "${ex[@]}"
    report check "$d/taper_$v/metrics.jsonl" "$d/peer_$v.out" "$v" || bad=1
  done
  return "$bad"
}

generate() {
  echo
  echo "## generation and perplexity forward vs llama.cpp, same GGUF, $THREADS threads (load average $(loadavg))"
  local lbin
  lbin=$(scripts/llama-cpp.sh build | tail -1)
  local dt g prec ctx
  local brows="$WORK/gen.rows" prows="$WORK/genppl.rows"
  : >"$brows"
  : >"$prows"
  for dt in $GEN_DTYPES; do
    g="$WORK/model-$dt.gguf"
    [ -f "$g" ] || "$BIN" convert "$MODEL" --to gguf "$g" --dtype "$dt" >/dev/null
    prec=fp32
    [ "$dt" = bf16 ] && prec=bf16
    ctx=$(( (128 + 128) * ${GEN_BATCHES##*,} ))
    timed "gen_llama_$dt" env -u OMP_WAIT_POLICY "$lbin/llama-batched-bench" -m "$g" -c "$ctx" -b 2048 -ub 512 -npp 128 -ntg 128 \
      -npl "$GEN_BATCHES" -t "$THREADS" -tb "$THREADS"
    timed "gen_taper_$dt" "$BIN" bench "$g" --batch "$GEN_BATCHES" --prompt 128 --gen 128 --precision "$prec" \
      --threads "$THREADS" --json="$WORK/gen_taper_$dt.json"
    cat "$WORK/gen_llama_$dt.out" "$WORK/gen_llama_$dt.err" >"$WORK/gen_llama_$dt.log"
    report batched "$dt" "$WORK/gen_taper_$dt.json" "$WORK/gen_llama_$dt.log" >>"$brows" || true
    if [ "$GEN_SPIN" = 1 ]; then # taper at llama.cpp's policy too: threads spin between products
      timed "gen_taper_${dt}_spin" env OMP_WAIT_POLICY=ACTIVE "$BIN" bench "$g" --batch "$GEN_BATCHES" --prompt 128 \
        --gen 128 --precision "$prec" --threads "$THREADS" --json="$WORK/gen_taper_${dt}_spin.json"
      report batched "$dt, both spinning" "$WORK/gen_taper_${dt}_spin.json" "$WORK/gen_llama_$dt.log" >>"$brows" || true
    fi
    timed "ppl_llama_$dt" env -u OMP_WAIT_POLICY "$lbin/llama-perplexity" -m "$g" -f "$TEST_TEXT" -c 512 -b 512 --chunks "$CHUNKS" \
      -t "$THREADS" -tb "$THREADS"
    rm -f "$WORK/ppl_taper_$dt.json"
    timed "ppl_taper_$dt" "$BIN" ppl "$g" --data "$TEST_TEXT" --ctx 512 --max-chunks "$CHUNKS" --precision "$prec" \
      --threads "$THREADS" --json="$WORK/ppl_taper_$dt.json"
    cat "$WORK/ppl_llama_$dt.out" "$WORK/ppl_llama_$dt.err" >"$WORK/ppl_llama_$dt.log"
    report ppl-row "$dt" "$WORK/ppl_taper_$dt.json" "$WORK/ppl_llama_$dt.log" >>"$prows" || true
  done
  echo
  echo "| GGUF | batch | llama.cpp PP tok/s | taper PP tok/s | llama.cpp TG tok/s | taper TG tok/s | TG taper / llama.cpp | target |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  cat "$brows"
  echo
  echo "| GGUF | llama-perplexity tok/s | taper ppl tok/s | taper / llama.cpp | PPL llama.cpp | PPL taper |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  cat "$prows"
}

kernels() {
  local kb="${TAPER_KERNEL_BENCH:-build/taper-kernel-bench}"
  echo
  echo "## kernels (load average $(loadavg))"
  if [ ! -x "$kb" ]; then echo "  n/a: $kb not built (make build/taper-kernel-bench)"; return 0; fi
  echo; echo "### the bf16 attention of one head, one thread"
  echo "\$ OMP_NUM_THREADS=1 $kb --attention --reps 40"
  OMP_NUM_THREADS=1 "$kb" --attention --reps 40 || echo "  (exit $?)"
  echo; echo "### one training step's bf16 products, each alone with its inputs hot, $THREADS threads"
  echo "\$ $kb --products --reps 20"
  "$kb" --products --reps 20 || echo "  (exit $?)"
  echo "\$ $PY bench/matmul_peer.py --threads $THREADS --reps 20"
  "$PY" bench/matmul_peer.py --threads "$THREADS" --reps 20 || echo "  (exit $?)"
  echo; echo "### the same products inside taper train's fourth step (bf16, ONEDNN_VERBOSE=1)"
  wiki_valid
  rm -rf "$WORK/kernels_train"
  echo "\$ ONEDNN_VERBOSE=1 $BIN train $MODEL --data $WORK/wiki_valid --steps 4 --seq $SEQ --batch $BATCH --precision bf16 ..."
  ONEDNN_VERBOSE=1 "$BIN" train "$MODEL" --data "$WORK/wiki_valid" --steps 4 --seq "$SEQ" --batch "$BATCH" \
    --lr 1e-4 --min-lr 1e-5 --val-every -1 --ckpt-every 0 --keep 1 --threads "$THREADS" --precision bf16 --quiet \
    --run-dir "$WORK/kernels_train" >"$WORK/kernels_train.verbose" 2>&1 || echo "  (exit $?)"
  report dnnl-products "$WORK/kernels_train.verbose" 4
  rm -rf "$WORK/kernels_train" "$WORK/kernels_train.verbose"
}

sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(all)
for s in "${sections[@]}"; do
  case "$s" in
    forward|importance|train|distill|mpi|generate|kernels|check|all) ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: bench/run.sh [forward|importance|train|distill|mpi|generate|kernels|check|all]..." >&2; exit 2 ;;
  esac
done
for cfg in $PEER_CONFIGS; do peer_setup "$cfg" || exit 2; done
header
t0=$SECONDS
for s in "${sections[@]}"; do
  case "$s" in
    all) forward; importance; train; distill; mpi; generate; kernels ;;
    *) "$s" ;;
  esac
done
echo
echo "done in $((SECONDS - t0)) s; load average now $(loadavg); logs in $WORK"
