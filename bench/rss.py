"""Analytic minimum memory of a benchmark run (bench/run.sh), printed term by term, so the peak-RSS
ratios of `make bench` are reproducible.

usage: rss.py MODE --config CFG [--teacher-config CFG] [--batch B] [--seq T] [--chunk C]
              [--pairs N] [--no-lm-head] [--measured NAME=MIB ...] [--json | --total]
  MODE       forward (inference: perplexity or the importance pass), train (CE training step,
             AdamW), distill (a training step of the student plus a frozen teacher)
  CFG        an HF config.json, or the JSON of `taper info MODEL --json` (for a GGUF)

Everything is fp32 (4 bytes). Per-token, per-layer activations a training step must keep for the
backward, with nothing recomputed but elementwise ops (RMSNorm outputs are recomputed from the
norm input and its 1/rms, silu(gate)*up from gate and up) and attention that keeps no T x T
matrix (flash-style: the output and one log-sum-exp per head and row):
    attention norm input d + 1/rms 1 + q, k, v after RoPE (H + 2 KV) hd + attention output H hd
    + log-sum-exp H + MLP norm input d + 1/rms 1 + gate d_ff + up d_ff
plus the final norm's input d + 1/rms 1 per token. The loss is taken over the vocabulary C rows at
a time (the logits of all B*T positions never exist at once): one C x V block of logits (their
gradient overwrites them). "transient" is the largest working set of one layer that is alive on
top of the kept state: the residual stream (or its gradient) B*T*d plus
max(attention: normed input d + q, k, v + output H hd; MLP: normed input d + gate + up d_ff each).
forward = weights + transient + one logits block (no backward, nothing kept across layers; the
          importance pass has no lm_head: --no-lm-head drops the logits block).
train   = weights + gradients + 2 AdamW moments (16 bytes per parameter) + kept activations
          + transient + one logits block.
distill = train of the student + the teacher's weights + what the loss needs from the teacher:
          its final-norm output (B*T x d_t; its logits are recomputed a block at a time: one more
          C x V block) + with --pairs N, N mapped teacher states (B*T x d_t each) and, where the
          widths differ, N learned d_t x d_s projections with gradient and 2 moments.
Process overhead (code, libraries, allocator slack) is not in the minimum.
"""
import argparse
import json
import sys

MIB = 2.0 ** 20
F32 = 4


def load_cfg(path):
    j = json.load(open(path))
    if "d_model" in j:  # taper info --json
        c = dict(L=j["n_layers"], d=j["d_model"], H=j["n_heads"], KV=j["n_kv_heads"], hd=j["head_dim"],
                 ff=j["d_ff"], V=j["vocab"], tied=bool(j["tied_embeddings"]))
    else:  # HF config.json
        H = j["num_attention_heads"]
        c = dict(L=j["num_hidden_layers"], d=j["hidden_size"], H=H, KV=j.get("num_key_value_heads", H),
                 hd=j.get("head_dim") or j["hidden_size"] // H, ff=j["intermediate_size"], V=j["vocab_size"],
                 tied=bool(j.get("tie_word_embeddings", False)))
    return c


def n_params(c):
    d, hd = c["d"], c["hd"]
    layer = d * c["H"] * hd * 2 + d * c["KV"] * hd * 2 + 3 * d * c["ff"] + 2 * d
    return c["V"] * d * (1 if c["tied"] else 2) + c["L"] * layer + d


def kept_per_token(c):
    """floats per token a training step keeps for the backward (all layers + final norm)"""
    d, H, KV, hd, ff = c["d"], c["H"], c["KV"], c["hd"], c["ff"]
    layer = (d + 1) + (H + 2 * KV) * hd + H * hd + H + (d + 1) + 2 * ff
    return c["L"] * layer + d + 1


def transient_per_token(c):
    d, H, KV, hd, ff = c["d"], c["H"], c["KV"], c["hd"], c["ff"]
    return d + max(d + (H + 2 * KV) * hd + H * hd, d + 2 * ff)


def terms(mode, c, t, N, C, pairs, lm_head=True):
    """[(name, formula, bytes)]"""
    P = n_params(c)
    out = []
    if mode == "forward":
        out.append(("weights", f"4 x {P:,} params", F32 * P))
    else:
        out.append(("weights + grads + AdamW m, v", f"16 x {P:,} params", 4 * F32 * P))
        out.append(("kept activations", f"4 x {N} tokens x {kept_per_token(c):,} floats", F32 * N * kept_per_token(c)))
    out.append(("transient (one layer)", f"4 x {N} tokens x {transient_per_token(c):,} floats",
                F32 * N * transient_per_token(c)))
    if lm_head:
        out.append(("logits block", f"4 x {C} rows x {c['V']:,}", F32 * C * c["V"]))
    if mode == "distill":
        Pt = n_params(t)
        out.append(("teacher weights (frozen)", f"4 x {Pt:,} params", F32 * Pt))
        out.append(("teacher final-norm output", f"4 x {N} x {t['d']}", F32 * N * t["d"]))
        out.append(("teacher logits block", f"4 x {C} rows x {t['V']:,}", F32 * C * t["V"]))
        if pairs:
            out.append(("teacher mapped states", f"4 x {pairs} x {N} x {t['d']}", F32 * pairs * N * t["d"]))
            if c["d"] != t["d"]:
                out.append(("projections + grads + m, v", f"16 x {pairs} x {t['d']} x {c['d']}",
                            4 * F32 * pairs * t["d"] * c["d"]))
    return out


def main():
    ap = argparse.ArgumentParser(description="analytic minimum memory of a bench run (see the module doc)")
    ap.add_argument("mode", choices=["forward", "train", "distill"])
    ap.add_argument("--config", required=True, help="the model (the student for distill)")
    ap.add_argument("--teacher-config", help="distill: the teacher")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=None,
                    help="rows of logits at a time (default: taper's rule, 512 while 512 rows of fp32 logits "
                         "fit in 128 MiB, else 256)")
    ap.add_argument("--pairs", type=int, default=0, help="distill: mapped intermediate states")
    ap.add_argument("--no-lm-head", action="store_true", help="forward: no logits (the importance pass)")
    ap.add_argument("--measured", action="append", default=[], metavar="NAME=MIB",
                    help="a measured peak RSS to compare with the minimum (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    ap.add_argument("--total", action="store_true", help="print only the minimum, in MiB")
    a = ap.parse_args()
    if a.mode == "distill" and not a.teacher_config:
        ap.error("distill needs --teacher-config")
    try:
        c = load_cfg(a.config)
        t = load_cfg(a.teacher_config) if a.teacher_config else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"reading the model config: {type(e).__name__}: {e}")
    if a.chunk is None:  # taper's logit_chunk (src/train/backward.c)
        a.chunk = 512 if F32 * c["V"] * 512 <= 128 * MIB else 256
    if a.batch < 1 or a.seq < 1 or a.chunk < 1 or a.pairs < 0:
        ap.error("--batch, --seq, --chunk must be >= 1 and --pairs >= 0")
    N = a.batch * a.seq
    C = min(a.chunk, N)
    if a.no_lm_head and a.mode != "forward":
        ap.error("--no-lm-head is for forward only")
    rows = terms(a.mode, c, t, N, C, a.pairs, lm_head=not a.no_lm_head)
    total = sum(b for _, _, b in rows)
    measured = []
    for m in a.measured:
        name, _, v = m.partition("=")
        try:
            measured.append((name, float(v)))
        except ValueError:
            ap.error(f"--measured {m}: expected NAME=MIB")
    if a.total:
        print(f"{total / MIB:.1f}")
        return 0
    if a.json:
        print(json.dumps({"mode": a.mode, "params": n_params(c), "tokens": N, "chunk": C,
                          "terms": {n: b / MIB for n, _, b in rows}, "min_mib": total / MIB,
                          "ratios": {n: v / (total / MIB) for n, v in measured}}))
        return 0
    lg = "no lm_head" if a.no_lm_head else f"logits {C} rows at a time"
    print(f"analytic minimum, {a.mode}: {n_params(c):,} params, {a.batch} x {a.seq} tokens, {lg}")
    for n, f, b in rows:
        print(f"  {n:<30} {f:<40} {b / MIB:9.1f} MiB")
    print(f"  {'total':<30} {'':<40} {total / MIB:9.1f} MiB")
    for n, v in measured:
        print(f"  {n}: peak RSS {v:.0f} MiB = {v / (total / MIB):.2f}x the minimum")
    return 0


if __name__ == "__main__":
    sys.exit(main())
