#!/usr/bin/env bash
# Short KD recovery of sparsified SmolLM2-135M students with their masks kept (docs/sparsity.md).
# Each argument is a `taper sparsify` output folder: its model.safetensors is the student when
# present; otherwise (magnitude and Wanda only change the mask, not the kept weights) the student is
# the dense teacher with the folder's mask.tpmask applied, which is the same model. Distilled from
# the dense teacher on wiki.valid.tokens (the calibration text, not the test set) with --keep-mask,
# then scored like the sparsified models: taper ppl --ctx 512 --max-chunks 40 on wiki.test.raw.
# usage: bench/sparse_kd.sh SPARSE_DIR... (env: STEPS=20 SEQ=256 BATCH=4 LR=1e-4 OUT=/tmp/taper-sparse-kd)
set -euo pipefail
cd "$(dirname "$0")/.."
T=build/taper
TEACHER="${TEACHER:-$HOME/.cache/taper/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}"
OUT="${OUT:-/tmp/taper-sparse-kd}"
STEPS="${STEPS:-20}" SEQ="${SEQ:-256}" BATCH="${BATCH:-4}" LR="${LR:-1e-4}"
mkdir -p "$OUT"
[ -f "$OUT/wv/manifest.json" ] || $T tokenize "$TEACHER" -o "$OUT/wv" "$DATA/wikitext2/wiki.valid.tokens"
for s in "$@"; do
  n=$(basename "$s")
  student="$s"
  if [ ! -f "$s/model.safetensors" ]; then
    case "$n" in sparsegpt*) echo "$s: no model.safetensors (SparseGPT changes weights: the mask is not enough)" >&2; exit 1;; esac
    student="$TEACHER"
  fi
  rm -rf "$OUT/$n"
  /usr/bin/time -f "%e s, %M KiB" -o "$OUT/$n.time" $T distill "$student" --teacher "$TEACHER" --data "$OUT/wv" \
    --steps "$STEPS" --seq "$SEQ" --batch "$BATCH" --lr "$LR" --min-lr "$LR" --warmup 2 --ckpt-every 0 \
    --run-dir "$OUT/$n" --keep-mask "$s/mask.tpmask" --export-hf "$OUT/$n/student" --quiet
  $T ppl "$OUT/$n/student" --data "$DATA/wikitext2/wiki.test.raw" --ctx 512 --max-chunks 40 --json="$OUT/$n.ppl.json" \
    | grep '^chunks' | sed "s|^|$n after KD: |"
done
