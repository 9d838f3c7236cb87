#!/usr/bin/env bash
# make test-ref: regenerate every reference value with the Python references (transformers,
# tokenizers, gguf-py, safetensors — pinned in tests/ref/requirements.txt), run the C suite
# against the fresh values (with every logits row, and the whole WikiText-2 file), then let the
# references load what taper wrote (HF folder, GGUF, tokenizer, safetensors, config).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/ref-env.sh)
# sleeping OpenMP threads: torch and taper both crawl with spinning threads on shared cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
OUT=$(mktemp -d /tmp/taper-ref-XXXXXX)
export TAPER_EXPORT_DIR="$OUT/exports"
mkdir -p "$TAPER_EXPORT_DIR"
echo "ref: writing fresh reference values to $OUT"
"$PY" tests/ref/gguf_ref.py --out "$OUT"
"$PY" tests/ref/st_ref.py --out "$OUT"
"$PY" tests/ref/tok_ref.py --out "$OUT"
"$PY" tests/ref/model_ref.py --out "$OUT" --full
"$PY" tests/ref/tiny_ref.py --out "$OUT"
"$PY" tests/ref/gemma3_ref.py --out "$OUT"
"$PY" tests/ref/grad_ref.py --out "$OUT"
"$PY" tests/ref/optim_ref.py --out "$OUT" --tiny "$OUT/tiny/llama3"
"$PY" tests/ref/importance_ref.py --out "$OUT"
"$PY" tests/ref/sparsify_ref.py --out "$OUT"
"$PY" tests/ref/train_ref.py --out "$OUT"
"$PY" tests/ref/kd_ref.py --out "$OUT"
"$PY" tests/ref/distill_ref.py --out "$OUT"
# lm-evaluation-harness on the same items as tests/fixtures/eval (about 70 minutes here)
"$PY" tests/ref/eval_ref.py --out "$OUT"
"$PY" tests/ref/eval_ref.py --out "$OUT" --formats-only
echo "ref: C suite against the fresh values"
TAPER_GGUF_WRITTEN="$TAPER_EXPORT_DIR/rt.gguf" TAPER_TOK_SAVED_DIR="$TAPER_EXPORT_DIR/tok" TAPER_FIXTURES="$OUT" TAPER_LONG=1 TAPER_BIN="$PWD/build/taper" TAPER_TESTING_BIN="$PWD/build/taper-testing" build/taper-tests
echo "ref: every prompt of every eval item against the harness's requests"
TAPER_FIXTURES="$OUT/eval_formats" TAPER_BIN="$PWD/build/taper" build/taper-tests eval_format
echo "ref: references load taper's exports"
"$PY" tests/ref/model_ref.py --check-hf "$TAPER_EXPORT_DIR/smollm2-hf" --check-gguf "$TAPER_EXPORT_DIR/smollm2-f32.gguf"
"$PY" tests/ref/tok_ref.py --check-saved "$TAPER_EXPORT_DIR/tok"
"$PY" tests/ref/gguf_ref.py --check-written "$TAPER_EXPORT_DIR/rt.gguf"
"$PY" tests/ref/st_ref.py --check-written "$TAPER_EXPORT_DIR/st"
"$PY" tests/ref/importance_ref.py --check-pruned "$TAPER_EXPORT_DIR/pruned"
echo "ref: all reference checks passed"
rm -rf "$OUT"
