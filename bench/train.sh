#!/usr/bin/env bash
# Training benchmarks (numbers go into docs/training.md and bench/RESULTS.md by hand):
#   bench/train.sh throughput   taper train vs a PyTorch training step (bench/train_peer.py) on
#                               SmolLM2-135M, seq 512, same batch and threads: tokens/s, peak RSS
#                               (this is `bench/run.sh train` with 4 timed steps)
#   bench/train.sh finetune     fine-tune SmolLM2-135M on WikiText-2 valid: held-out loss before/after
#                               and perplexity of the first wiki.test chunks before/after
#   bench/train.sh scratch      a small model from scratch on tinyshakespeare: loss reached, time
#   bench/train.sh all          the three
# Environment: THREADS (2), TAPER_BIN (build/taper), TAPER_MODEL, TAPER_DATA, WORK (scratch dir).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TAPER_BIN:-build/taper}"
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}"
THREADS="${THREADS:-2}"
WORK="${WORK:-/tmp/taper-bench-train}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" TAPER_PROGRESS="${TAPER_PROGRESS:-0}"
mkdir -p "$WORK"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads $THREADS;" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"

shards() { # shards NAME TEXT: tokenize TEXT (paragraphs = documents) once into $WORK/NAME
  [ -f "$WORK/$1/manifest.json" ] || "$BIN" tokenize "$MODEL" -o "$WORK/$1" --doc-split blank --threads "$THREADS" "$2" >/dev/null
}

throughput() { # the training section of bench/run.sh (its PEER_CONFIGS apply)
  STEPS="${STEPS:-4}" WARMUP=1 BATCH="${BATCH:-2}" TAPER_BIN="$BIN" WORK="$WORK" bench/run.sh train
}

finetune() {
  local STEPS="${STEPS:-40}"
  shards wiki_valid "$DATA/wikitext2/wiki.valid.tokens"
  rm -rf "$WORK/ft" "$WORK/ft_hf"
  echo "finetune: SmolLM2-135M on wiki.valid.tokens, $STEPS steps x 4 x 256 tokens, lr 5e-5 -> 5e-6, warmup 4"
  "$BIN" train "$MODEL" --data "$WORK/wiki_valid" --steps "$STEPS" --seq 256 --batch 4 --lr 5e-5 --min-lr 5e-6 \
    --warmup 4 --val-frac 0.05 --val-every 10 --val-batches 0 --ckpt-every 20 --keep 1 --threads "$THREADS" \
    --run-dir "$WORK/ft" --export-hf "$WORK/ft_hf" --quiet
  grep val_loss "$WORK/ft/metrics.jsonl"
  echo "wiki.test.raw, first 8 chunks of 512 (taper ppl, chunks protocol): before / after"
  "$BIN" ppl "$MODEL" --data "$DATA/wikitext2/wiki.test.raw" --ctx 512 --max-chunks 8 --threads "$THREADS" | grep '^chunks'
  "$BIN" ppl "$WORK/ft_hf" --data "$DATA/wikitext2/wiki.test.raw" --ctx 512 --max-chunks 8 --threads "$THREADS" | grep '^chunks'
}

scratch() {
  local STEPS="${STEPS:-300}"
  shards shakespeare "$DATA/tinyshakespeare/input.txt"
  cat >"$WORK/scratch_config.json" <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 128,
 "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
 "head_dim": 32, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
 "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}
EOF
  rm -rf "$WORK/scratch"
  echo "scratch: 4 layers x 128 wide (7.1M params, 6.3M of them the tied 49152-token embedding) on tinyshakespeare,"
  echo "         $STEPS steps x 8 x 128 tokens, lr 3e-3 -> 3e-4, warmup 20"
  local t0=$SECONDS
  "$BIN" train "$MODEL" --init-config "$WORK/scratch_config.json" --data "$WORK/shakespeare" --steps "$STEPS" \
    --seq 128 --batch 8 --lr 3e-3 --min-lr 3e-4 --warmup 20 --weight-decay 0.1 --val-frac 0.05 --val-every 100 \
    --val-batches 0 --ckpt-every 100 --keep 1 --threads "$THREADS" --seed 1 --run-dir "$WORK/scratch" --quiet
  echo "wall time $((SECONDS - t0)) s"
  grep val_loss "$WORK/scratch/metrics.jsonl"
}

case "${1:-all}" in
  throughput) throughput ;;
  finetune) finetune ;;
  scratch) scratch ;;
  all) throughput; finetune; scratch ;;
  *) echo "usage: bench/train.sh [throughput|finetune|scratch|all]" >&2; exit 2 ;;
esac
