#!/usr/bin/env bash
# Does a short distillation rank candidate shapes better than their untrained loss? (issue 17)
# SmolLM2-135M -> ~90M: `taper search` scores every shape of the budget grid untrained, then
# distils the best K for SHORT steps from one teacher cache (built once) and again, with the same
# cache and candidates, for LONG steps; the Spearman correlations between the three rankings of the
# same K candidates are printed (and the search.json files kept in WORK).
# Resumable: run it again after an interruption; finished candidates are read back.
#
# Environment: TAPER_BIN (build/taper), TAPER_MODEL, TAPER_DATA, WORK (/tmp/taper-search-rank),
# TARGET (90M), K (8), SHORT (50), LONG (250), SEQ (128), BATCH (2), LR (3e-4), THREADS (2),
# GRID ("--hidden-step 64 --ffn-step 256 --max-cut 0.35"), KEEP=1 keeps WORK (else deleted at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TAPER_BIN:-build/taper}"
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
MODEL="${TAPER_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
DATA="${TAPER_DATA:-../shared/data}"
WORK="${WORK:-/tmp/taper-search-rank}"
TARGET="${TARGET:-90M}" K="${K:-8}" SHORT="${SHORT:-50}" LONG="${LONG:-250}" SEQ="${SEQ:-128}" BATCH="${BATCH:-2}"
LR="${LR:-3e-4}" THREADS="${THREADS:-2}"
GRID="${GRID:---hidden-step 64 --ffn-step 256 --max-cut 0.35}"
export TAPER_PROGRESS="${TAPER_PROGRESS:-0}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
mkdir -p "$WORK"
PY=$(scripts/ref-env.sh)
say() { echo "[$(date +%H:%M:%S)] $*"; }

[ -f "$WORK/shards/manifest.json" ] ||
  "$BIN" tokenize "$MODEL" -o "$WORK/shards" --doc-split blank --threads "$THREADS" "$DATA/wikitext2/wiki.valid.tokens" >/dev/null
if [ ! -f "$WORK/scores.json" ]; then
  say "importance: 16 x 256 calibration tokens of wiki.valid, 8 depth samples"
  "$BIN" importance "$MODEL" --data "$DATA/wikitext2/wiki.valid.tokens" --samples 16 --seq-len 256 --depth-samples 8 \
    --threads "$THREADS" -o "$WORK/scores.json" >/dev/null
fi
common=("$MODEL" --scores "$WORK/scores.json" --data "$WORK/shards" --target-params "$TARGET" --candidates "$K"
        --seq "$SEQ" --batch "$BATCH" --lr "$LR" --warmup 5 --threads "$THREADS" --quiet)
# shellcheck disable=SC2086
say "short: $K candidates x $SHORT steps"
/usr/bin/time -f "%e s wall, %M KiB peak" "$BIN" search "${common[@]}" $GRID --search-steps "$SHORT" -o "$WORK/short" \
  | tee "$WORK/short.txt"
# shellcheck disable=SC2086
say "long: the same $K candidates x $LONG steps, the same teacher cache"
/usr/bin/time -f "%e s wall, %M KiB peak" "$BIN" search "${common[@]}" $GRID --search-steps "$LONG" \
  --teacher-cache "$WORK/short/teacher.tkc" -o "$WORK/long" | tee "$WORK/long.txt"
"$PY" - "$WORK/short/search.json" "$WORK/long/search.json" <<'EOF'
import json, sys
from math import exp
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
ra = {c["name"]: c for c in a["candidates"] if "kd" in c}
rb = {c["name"]: c for c in b["candidates"] if "kd" in c}
names = [n for n in ra if n in rb]
def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]: j += 1
        for k in range(i, j + 1): r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r
def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    n = len(x); mx = sum(rx) / n; my = sum(ry) / n
    sxy = sum((p - mx) * (q - my) for p, q in zip(rx, ry))
    sxx = sum((p - mx) ** 2 for p in rx); syy = sum((q - my) ** 2 for q in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")
u = [ra[n]["untrained_loss"] for n in names]
s_kd = [ra[n]["kd"] for n in names]; l_kd = [rb[n]["kd"] for n in names]
s_l = [ra[n]["loss"] for n in names]; l_l = [rb[n]["loss"] for n in names]
print()
print("| candidate | params | untrained loss | short KD | short PPL | long KD | long PPL |")
print("|---|---:|---:|---:|---:|---:|---:|")
for n in sorted(names, key=lambda n: rb[n]["kd"]):
    print(f"| {n} | {ra[n]['params']/1e6:.1f}M | {ra[n]['untrained_loss']:.4f} | {ra[n]['kd']:.4f} | "
          f"{exp(ra[n]['loss']):.2f} | {rb[n]['kd']:.4f} | {exp(rb[n]['loss']):.2f} |")
print()
print(f"{len(names)} candidates; Spearman vs the long-KD ranking (by held-out KL):")
print(f"  untrained loss  {spearman(u, l_kd):+.3f}")
print(f"  short KD        {spearman(s_kd, l_kd):+.3f}")
print(f"  (by held-out CE: untrained {spearman(u, l_l):+.3f}, short {spearman(s_l, l_l):+.3f})")
print(f"times: short stage 2 {a['stage2_seconds']:.0f} s, long stage 2 {b['stage2_seconds']:.0f} s, "
      f"untrained stage {a['stage1_seconds']:.0f} s, cache {a['cache_seconds']:.0f} s")
EOF
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
