#!/usr/bin/env bash
# make demo: what taper can do today on the default model, end to end, with text that every
# Debian machine has (the GPL-3 licence from base-files) — no dataset download needed.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT=/usr/share/common-licenses/GPL-3
OUT=$(mktemp -d /tmp/taper-demo-XXXXXX)
T=build/taper
t0=$(date +%s)
echo "== taper info"
$T info "$MODEL"
echo; echo "== taper generate (greedy, chat format)"
$T generate "$MODEL" --chat --prompt "What is the capital of France? Answer in one sentence." --max-tokens 40
echo; echo "== taper ppl on $TEXT (ctx 512)"
$T ppl "$MODEL" --data "$TEXT" --ctx 512 --max-chunks 8 --json="$OUT/ppl.json"
echo; echo "== taper convert -> HF folder (F32) and back to GGUF (Q8_0)"
$T convert "$MODEL" --to hf "$OUT/smollm2-hf"
$T convert "$OUT/smollm2-hf" --to gguf "$OUT/smollm2-q8_0.gguf" --dtype q8_0
ls -la "$OUT/smollm2-hf" "$OUT/smollm2-q8_0.gguf"
echo; echo "== perplexity of the Q8_0 re-export (should be close to the original)"
$T ppl "$OUT/smollm2-q8_0.gguf" --data "$TEXT" --ctx 512 --max-chunks 8
echo; echo "demo finished in $(( $(date +%s) - t0 )) s; outputs in $OUT"
