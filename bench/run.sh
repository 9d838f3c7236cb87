#!/usr/bin/env bash
# make bench: taper and its peer side by side on this machine, same model, same chunks, same
# threads. Appends nothing by itself: copy the table into bench/RESULTS.md with the date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/ref-env.sh)
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}/wikitext2/wiki.test.raw"
THREADS="${THREADS:-2}"
CHUNKS="${CHUNKS:-16}"
TOKJSON=tests/fixtures/tok/smollm2/tokenizer.json
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads $THREADS"
echo "forward (ppl, ctx 512, first $CHUNKS chunks of wiki.test.raw):"
OMP_NUM_THREADS=$THREADS TAPER_PROGRESS=0 build/taper ppl "$MODEL" --data "$DATA" --ctx 512 --max-chunks "$CHUNKS" \
  --threads "$THREADS" --json=/tmp/taper-bench-ppl.json >/dev/null
t=$("$PY" -c "import json;r=json.load(open('/tmp/taper-bench-ppl.json'))['results'][0];print(r['tokens_per_s'],r['ppl'])")
p=$("$PY" bench/forward_peer.py --model "$MODEL" --tokenizer "$TOKJSON" --data "$DATA" --chunks "$CHUNKS" --threads "$THREADS" 2>/dev/null | tail -1)
"$PY" - "$t" "$p" <<'PYEOF'
import json, sys
tt, tp = map(float, sys.argv[1].split())
peer = json.loads(sys.argv[2])
print(f"| taper | {tt:.0f} tok/s | ppl {tp:.4f} |")
print(f"| {peer['peer']} | {peer['tokens_per_s']:.0f} tok/s | ppl {peer['ppl_chunks']:.4f} |")
print(f"ratio taper/peer: {tt / peer['tokens_per_s']:.2f}x")
PYEOF

echo
echo "training step (SmolLM2-135M, seq 512; bench/train.sh throughput):"
bench/train.sh throughput
