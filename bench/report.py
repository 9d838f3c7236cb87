"""Small helpers of bench/run.sh: read the numbers each run leaves and print the markdown tables.

  report.py metrics-tps METRICS.jsonl WARM TOKENS_PER_STEP
      tokens/s of a taper train/distill run over the steps after the first WARM, each step's own
      time (TOKENS_PER_STEP / its tokens_per_s), from metrics.jsonl
  report.py metrics-allreduce METRICS.jsonl WARM
      mean seconds per step in the gradient all-reduce (allreduce_s of a multi-rank run) and in
      the wait for the slowest rank before it (wait_s), over the steps after the first WARM
  report.py rss TIMEFILE
      "Maximum resident set size" of /usr/bin/time -v, in MiB
  report.py row LABEL TPS TIMEFILE [NOTE]
      one TSV row for `table` (TPS a number, or text such as "n/a (...)")
  report.py peer-row LABEL OUTFILE TIMEFILE RC [TIMEOUT_S]
      the row of a peer run: its last JSON line (tokens_per_s, first_step_s, ppl_chunks, error);
      "n/a (timed out ...)" for RC 124, "n/a (error ...)" when it failed
  report.py table ROWS.tsv --min MIB [--title T]
      markdown table of the rows (the first row is taper): tok/s, taper / row, peak RSS, RSS /
      analytic minimum, note; then taper / the best peer row
  report.py batched DTYPE TAPER_BENCH.json LLAMA_BATCHED_BENCH.out
      markdown rows per batch size: prompt and generation tokens/s of llama.cpp and taper, the
      generation ratio and the target (>= 1x; >= 1/1.2 at batch 1)
  report.py ppl-row DTYPE TAPER_PPL.json LLAMA_PERPLEXITY.out
      one markdown row: llama-perplexity's and taper ppl's tokens/s, their ratio, both PPLs
  report.py get FILE KEY[.KEY...] [FORMAT]
      one value of a JSON file (list indices are numbers), printed with FORMAT (default %s)
  report.py get-mib FILE KEY[.KEY...]
      a value in bytes, printed in MiB
  report.py importance PPL.json IMPORTANCE.json PPL.time IMPORTANCE.time MIN_PPL MIN_IMPORTANCE
      the importance-vs-forward table (taper ppl --json and taper importance --json outputs)
  report.py student PLAN.json
      one line describing a pruned model from its prune_plan.json
  report.py check TAPER_METRICS.jsonl PEER_OUT INTER
      first-step kd / inter / grad_norm of taper distill and bench/distill_peer.py, side by side;
      exit 1 when they differ by more than 1e-3 relative
  report.py versions
      torch / transformers versions and torch's CPU capability
  report.py dnnl-products VERBOSE_LOG STEPS
      the matrix products of the last of STEPS steps of a run under ONEDNN_VERBOSE=1, per shape
"""
import argparse
import json
import math
import re
import statistics
import sys

MIB = 2.0 ** 20


def rss_mib(path):
    try:
        for line in open(path, errors="replace"):
            if "Maximum resident set size" in line:
                return float(line.split(":")[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def metrics_tps(path, warm, step_tok):
    rows = [json.loads(l) for l in open(path) if '"loss"' in l and '"tokens_per_s"' in l][warm:]
    if not rows:
        raise SystemExit(f"{path}: no timed steps after {warm} warm-up")
    secs = sum(step_tok / r["tokens_per_s"] for r in rows)
    return step_tok * len(rows) / secs


def metrics_allreduce(path, warm):
    rows = [json.loads(l) for l in open(path) if '"allreduce_s"' in l][warm:]
    if not rows:
        raise SystemExit(f"{path}: no allreduce_s after {warm} warm-up (one rank?)")
    n = len(rows)
    return (sum(r["allreduce_s"] for r in rows) / n, sum(r.get("wait_s", 0) for r in rows) / n)


def peer_row(label, out, timefile, rc, timeout):
    rec = None
    try:
        for line in open(out, errors="replace"):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    pass
    except OSError:
        pass
    rss = rss_mib(timefile)
    if rc == 124:
        return [label, f"n/a (timed out after {timeout} s)", rss, ""]
    if rec is None:
        return [label, f"n/a (exit {rc}, no result; see {out})", rss, ""]
    if "error" in rec:
        return [label, "n/a (error: " + rec["error"].replace("\t", " ").replace("|", "/") + ")", rss, ""]
    note = []
    if "first_step_s" in rec:
        note.append(f"first step {rec['first_step_s']:.1f} s")
    if "ppl_chunks" in rec:
        note.append(f"ppl {rec['ppl_chunks']:.4f}")
    return [label, f"{rec['tokens_per_s']:.1f}", rss, ", ".join(note)]


def num(s):
    try:
        v = float(s)
        return v if math.isfinite(v) and v > 0 else None
    except ValueError:
        return None


def table(path, mn, title):
    rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    if title:
        print(title)
    print("| run | tok/s | best taper / run | peak RSS MiB | RSS / min | note |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    # rows labelled "taper ..." are taper's (one per precision); the others are peers
    t = max((num(r[1]) or 0 for r in rows if r[0].startswith("taper")), default=0)
    best = None
    for r in rows:
        label, tps, rss = r[0], r[1], num(r[2])
        note = r[3] if len(r) > 3 else ""
        v = num(tps)
        mine = label.startswith("taper")
        ratio = f"{t / v:.2f}x" if (t and v and not mine) else ""
        if not mine and v and (best is None or v > best[1]):
            best = (label, v)
        print(f"| {label} | {f'{v:.1f}' if v else tps} | {ratio} | {f'{rss:.0f}' if rss else 'n/a'} | "
              f"{f'{rss / mn:.2f}x' if rss and mn and v else ''} | {note} |")
    if mn:
        print(f"analytic minimum {mn:.0f} MiB (bench/rss.py)")
    if t and best:
        print(f"ratio best taper / best peer ({best[0]}): {t / best[1]:.2f}x")
    # REPEAT > 1: rows "LABEL #k"; the medians per label, taper's best against the best peer's
    groups = {}
    for r in rows:
        if " #" in r[0] and num(r[1]):
            groups.setdefault(r[0].rsplit(" #", 1)[0], []).append(num(r[1]))
    if groups and max(len(v) for v in groups.values()) > 1:
        med = {k: statistics.median(v) for k, v in groups.items()}
        tm = max((v for k, v in med.items() if k.startswith("taper")), default=0)
        pk = max((k for k in med if not k.startswith("taper")), key=lambda k: med[k], default=None)
        print("medians over the rounds: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
        if tm and pk:
            print(f"ratio of medians, best taper / best peer ({pk}): {tm / med[pk]:.2f}x")


def get(path, keys, fmt="%s"):
    v = json.load(open(path))
    for k in keys.split("."):
        v = v[int(k)] if isinstance(v, list) else v[k]
    return fmt % v


def importance_table(ppl_json, imp_json, ppl_time, imp_time, min_f, min_i):
    p = json.load(open(ppl_json))["results"][0]
    i = json.load(open(imp_json))
    rp, ri = rss_mib(ppl_time), rss_mib(imp_time)
    print("| run | tokens | tok/s | seconds | peak RSS MiB | RSS / min |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| taper ppl (forward with lm_head, batch 1) | {p['chunks'] * 512} | {p['tokens_per_s']:.1f} | "
          f"{p['seconds']:.1f} | {rp:.0f} | {rp / min_f:.2f}x |")
    print(f"| taper importance (hooks, no lm_head, batch 4) | {i['samples'] * i['seq_len']} | "
          f"{i['importance_tokens_per_s']:.1f} | {i['importance_seconds']:.1f} | {ri:.0f} | {ri / min_i:.2f}x |")
    print(f"importance time / forward time: {i['importance_seconds'] / p['seconds']:.2f}x (target <= 1.1x); "
          f"analytic minimum {min_f:.0f} MiB (forward) / {min_i:.0f} MiB (importance), bench/rss.py")


def student(plan):
    j = json.load(open(plan))
    c = j["target_config"]
    return (f"{j['target']['params'] / 1e6:.1f}M params, hidden {c['hidden_size']}, ffn {c['intermediate_size']}, "
            f"{c['num_attention_heads']}/{c['num_key_value_heads']} heads, {c['num_hidden_layers']} layers")


def check(metrics, peer_out, inter):
    t = json.loads(open(metrics).readline())
    p = [json.loads(l) for l in open(peer_out) if l.startswith("{")][-1]
    if "error" in p:
        print(f"  inter {inter}: peer failed: {p['error']}")
        return 1
    rows = [("kd", p["kd"][0], t["kd"]), ("grad_norm", p["grad_norm"][0], t["grad_norm"])]
    if inter != "none":
        rows.append(("inter", p["inter_loss"][0], t["inter"]))
    worst = max(abs(a - b) / max(abs(b), 1e-30) for _, a, b in rows)
    ok = worst < 1e-3
    print(f"  inter {inter}: " + ", ".join(f"{n} peer {a:.7g} taper {b:.7g}" for n, a, b in rows)
          + f"; worst relative difference {worst:.1e} " + ("(ok)" if ok else "(MISMATCH)"))
    return 0 if ok else 1


def versions():
    import torch
    import transformers
    return (f"torch {torch.__version__} / transformers {transformers.__version__} / "
            f"cpu capability {torch.backends.cpu.get_cpu_capability()}")


def llama_batched_rows(path):
    """{B: (S_PP, S_TG)} from llama-batched-bench's markdown table"""
    rows = {}
    for line in open(path, errors="replace"):
        f = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(f) == 10 and f[2].isdigit():
            rows[int(f[2])] = (float(f[5]), float(f[7]))
    return rows


def batched_table(dtype, taper_json, llama_out):
    t = {r["batch"]: (r["prompt_tok_s"], r["gen_tok_s"]) for r in json.load(open(taper_json))["rows"]}
    ll = llama_batched_rows(llama_out)
    for b in sorted(set(t) | set(ll)):
        tp, tg = t.get(b, (None, None))
        lp, lg = ll.get(b, (None, None))
        need = 1 / 1.2 if b == 1 else 1.0
        r = tg / lg if tg and lg else None
        verdict = "" if r is None else ("met" if r >= need else "not met")
        f = lambda v: f"{v:.1f}" if v else "n/a"
        print(f"| {dtype} | {b} | {f(lp)} | {f(tp)} | {f(lg)} | {f(tg)} | "
              f"{f'{r:.2f}x' if r else 'n/a'} | >= {need:.2f}x: {verdict} |")


def llama_ppl(path):
    """(tokens/s, final PPL) from llama-perplexity's log: the chunks x n_ctx tokens over the time
    between its "calculating perplexity" and "Final estimate" log stamps (M.SS.mmm.uuu)"""
    stamp = r"(\d+)\.(\d+)\.(\d+)\.(\d+) I "
    sec = lambda m: int(m[0]) * 60 + int(m[1]) + int(m[2]) / 1e3 + int(m[3]) / 1e6
    t0 = t1 = ntok = ppl = None
    for line in open(path, errors="replace"):
        m = re.search(stamp + r"perplexity: calculating perplexity over (\d+) chunks, n_ctx=(\d+)", line)
        if m:
            t0, ntok = sec(m.groups()[:4]), int(m.group(5)) * int(m.group(6))
        m = re.search(stamp + r"Final estimate: PPL = ([0-9.]+)", line)
        if m:
            t1, ppl = sec(m.groups()[:4]), float(m.group(5))
    tps = ntok / (t1 - t0) if t0 is not None and t1 is not None and t1 > t0 else None
    return tps, ppl


def ppl_row(dtype, taper_json, llama_out):
    r = [x for x in json.load(open(taper_json))["results"] if x["protocol"] == "llama.cpp"][0]
    lt, lp = llama_ppl(llama_out)
    ratio = r["tokens_per_s"] / lt if lt else None
    print(f"| {dtype} | {f'{lt:.1f}' if lt else 'n/a'} | {r['tokens_per_s']:.1f} | {f'{ratio:.2f}x' if ratio else 'n/a'} | "
          f"{lp or 'n/a'} | {r['ppl']:.4f} |")


def dnnl_products(path, steps):
    """Per-shape table of the last of `steps` steps from a run under ONEDNN_VERBOSE=1."""
    ex = []
    with open(path) as f:
        for line in f:
            p = line.strip().split(",")
            if len(p) > 3 and p[0] == "onednn_verbose" and "exec" in p[:3] and "matmul" in p:
                dims = [x for x in p if re.match(r"^\d+x\d+:\d+x\d+", x)]
                mds = [w for x in p for w in x.split()]
                src = "".join(w for w in mds if w.startswith("src_"))
                wei = "".join(w for w in mds if w.startswith("wei_"))
                if dims:
                    ex.append((dims[0], src, wei, float(p[-1])))
    if not ex or len(ex) % steps:
        print(f"  n/a: {len(ex)} matmul executions in {path}, not a multiple of {steps} steps")
        return
    last = ex[-(len(ex) // steps):]
    agg = {}
    for dims, src, wei, ms in last:
        m, k, _, n = (int(v) for v in re.match(r"(\d+)x(\d+):(\d+)x(\d+)", dims).groups())
        key = (m, n, k, ":ba" in src, ":ba" in wei)
        c = agg.setdefault(key, [0, 0.0])
        c[0] += 1
        c[1] += ms
    print("| M x N x K | A, B stored | calls | ms | GFLOP/s |\n| --- | --- | ---: | ---: | ---: |")
    tot = fl = 0.0
    for (m, n, k, ta, tb), (c, ms) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        f = 2.0 * m * n * k * c
        lay = ("K x M" if ta else "M x K") + ", " + ("N x K" if tb else "K x N")
        print(f"| {m} x {n} x {k} | {lay} | {c} | {ms:.1f} | {f / ms / 1e6:.1f} |")
        tot += ms
        fl += f
    print(f"one step: {len(last)} products, {fl / 1e9:.0f} GFLOP in {tot:.0f} ms, {fl / tot / 1e6:.1f} GFLOP/s")


def main():
    a = sys.argv[1:]
    if not a or a[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if a else 2
    cmd = a[0]
    if cmd == "metrics-tps" and len(a) == 4:
        print(f"{metrics_tps(a[1], int(a[2]), int(a[3])):.1f}")
    elif cmd == "metrics-allreduce" and len(a) == 3:
        ar, wait = metrics_allreduce(a[1], int(a[2]))
        print(f"all-reduce {ar:.3f} s + wait for the slower rank {wait:.3f} s per step")
    elif cmd == "rss" and len(a) == 2:
        print(f"{rss_mib(a[1]):.0f}")
    elif cmd == "row" and len(a) in (4, 5):
        print("\t".join([a[1], a[2], f"{rss_mib(a[3]):.1f}", a[4] if len(a) > 4 else ""]))
    elif cmd == "peer-row" and len(a) in (5, 6):
        r = peer_row(a[1], a[2], a[3], int(a[4]), a[5] if len(a) > 5 else "?")
        print("\t".join([r[0], r[1], f"{r[2]:.1f}", r[3]]))
    elif cmd == "get" and len(a) in (3, 4):
        print(get(a[1], a[2], a[3] if len(a) > 3 else "%s"))
    elif cmd == "get-mib" and len(a) == 3:
        print(f"{float(get(a[1], a[2])) / MIB:.0f}")
    elif cmd == "importance" and len(a) == 7:
        importance_table(a[1], a[2], a[3], a[4], float(a[5]), float(a[6]))
    elif cmd == "student" and len(a) == 2:
        print(student(a[1]))
    elif cmd == "check" and len(a) == 4:
        return check(a[1], a[2], a[3])
    elif cmd == "batched" and len(a) == 4:
        batched_table(a[1], a[2], a[3])
    elif cmd == "ppl-row" and len(a) == 4:
        ppl_row(a[1], a[2], a[3])
    elif cmd == "dnnl-products" and len(a) == 3:
        dnnl_products(a[1], int(a[2]))
    elif cmd == "versions" and len(a) == 1:
        print(versions())
    elif cmd == "table":
        ap = argparse.ArgumentParser(prog="report.py table")
        ap.add_argument("rows")
        ap.add_argument("--min", type=float, default=0.0)
        ap.add_argument("--title", default="")
        o = ap.parse_args(a[1:])
        table(o.rows, o.min, o.title)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
