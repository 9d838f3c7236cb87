"""Reference values for taper's forward pass, generation and perplexity, from HF transformers.

Loads the default model (SmolLM2-135M-Instruct Q4_1 GGUF) with transformers' own GGUF loader
(dequantised to fp32, Q/K permutation undone by transformers) and writes into OUT/model/:
  prompts.json        token ids of 3 prompts (>= 200 tokens in all), per-position argmax,
                      top-16 ids/values, logsumexp and sum of each logits row
  rows_<p>.f32        full logits rows at a few positions of prompt p (float32 LE)
  full_<p>.f32        (only with --full) every logits row of prompt p
  greedy.json         64 greedily generated tokens (EOS ignored) and the top-1/top-2 margins
  ppl.json            per-chunk NLL sums of wiki.test.raw at ctx 512 under both protocols
Modes --check-hf DIR and --check-gguf FILE load a taper-written export with plain transformers
and compare its logits (and weights) with the reference model.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper"))
MODEL = os.environ.get("TAPER_MODEL", os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf"))
DATA = os.environ.get("TAPER_DATA", os.path.join(HERE, "..", "..", "..", "shared", "data"))

PROMPTS = [
    "The history of the Roman Empire spans many centuries. It began when Augustus became the first "
    "emperor, after a long period of civil war. Over the following centuries the empire grew to "
    "include lands around the whole Mediterranean Sea, and its roads, laws and language shaped "
    "Europe for a very long time afterwards. Historians still argue about why it declined: some "
    "point to economic troubles and heavy taxes, others to pressure on the frontiers, and many to "
    "the simple difficulty of governing so vast a territory from a single city.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nprint(fibonacci(10))\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat are three good reasons to learn a second language? Please answer briefly, "
    "and mention how it helps with travel, work and understanding other cultures.<|im_end|>\n"
    "<|im_start|>assistant\n",
]
ROW_POSITIONS = [0, 1, 17, -1]
GREEDY_PROMPT = "Once upon a time, in a small village near the mountains, there lived"


def load_ref():
    torch.set_num_threads(int(os.environ.get("TAPER_REF_THREADS", "2")))
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL), dtype=torch.float32
    ).eval()


def tokenizer(out_dir):
    from tokenizers import Tokenizer
    for d in (out_dir, os.path.join(HERE, "..", "fixtures")):
        p = os.path.join(d, "tok", "smollm2", "tokenizer.json")
        if os.path.exists(p):
            return Tokenizer.from_file(p)
    sys.exit("model_ref: tok/smollm2/tokenizer.json not found: run tok_ref.py first")


@torch.no_grad()
def logits_of(model, ids):
    return model(torch.tensor([ids])).logits[0].float()


def write_prompts(model, tok, out, full):
    entries = []
    for p, text in enumerate(PROMPTS):
        ids = tok.encode(text, add_special_tokens=False).ids
        lg = logits_of(model, ids)
        top = torch.topk(lg, 16, dim=-1)
        positions = [q % len(ids) for q in ROW_POSITIONS]
        lg[positions].numpy().astype("<f4").tofile(os.path.join(out, f"rows_{p}.f32"))
        if full:
            lg.numpy().astype("<f4").tofile(os.path.join(out, f"full_{p}.f32"))
        entries.append({
            "text": text,
            "ids": ids,
            "argmax": lg.argmax(-1).tolist(),
            "top_ids": top.indices.tolist(),
            "top_vals": top.values.tolist(),
            "logsumexp": torch.logsumexp(lg.double(), -1).tolist(),
            "row_sum": lg.double().sum(-1).tolist(),
            "row_positions": positions,
        })
    total = sum(len(e["ids"]) for e in entries)
    with open(os.path.join(out, "prompts.json"), "w") as f:
        json.dump({"model": os.path.basename(MODEL), "transformers": __import__("transformers").__version__,
                   "torch": torch.__version__, "total_tokens": total, "prompts": entries}, f)
    print(f"model_ref: {len(entries)} prompts, {total} tokens")


@torch.no_grad()
def write_greedy(model, tok, out):
    ids = tok.encode(GREEDY_PROMPT, add_special_tokens=False).ids
    gen, margins = [], []
    past = None
    cur = torch.tensor([ids])
    for _ in range(64):
        o = model(cur, past_key_values=past, use_cache=True)
        past = o.past_key_values
        row = o.logits[0, -1].float()
        t2 = torch.topk(row, 2)
        margins.append(float(t2.values[0] - t2.values[1]))
        nxt = int(row.argmax())
        gen.append(nxt)
        cur = torch.tensor([[nxt]])
    with open(os.path.join(out, "greedy.json"), "w") as f:
        json.dump({"prompt": GREEDY_PROMPT, "prompt_ids": ids, "generated": gen, "margins": margins,
                   "text": tok.decode(gen, skip_special_tokens=False)}, f)
    print(f"model_ref: greedy 64 tokens, smallest top-1/top-2 margin {min(margins):.4f}")


@torch.no_grad()
def write_ppl(model, tok, out, ctx=512):
    path = os.path.join(DATA, "wikitext2", "wiki.test.raw")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    ids = tok.encode(text, add_special_tokens=False).ids
    n_chunks = len(ids) // ctx
    chunks_nll, llama_nll = [], []
    t0 = time.time()
    for c in range(n_chunks):
        x = torch.tensor([ids[c * ctx:(c + 1) * ctx]])
        lp = torch.log_softmax(model(x).logits[0].double(), -1)
        tgt = x[0, 1:]
        nll = -lp[:-1].gather(1, tgt[:, None])[:, 0]
        chunks_nll.append(float(nll.sum()))
        llama_nll.append(float(nll[ctx // 2:].sum()))  # nll[i]: position i predicts token i+1; llama.cpp scores positions ctx/2..ctx-2
        if c % 50 == 0:
            print(f"model_ref: ppl chunk {c}/{n_chunks} {time.time() - t0:.0f}s", flush=True)
    el = time.time() - t0
    res = {
        "data": "wikitext2/wiki.test.raw", "ctx": ctx, "tokens": len(ids), "chunks": n_chunks,
        "chunks_nll": chunks_nll, "llamacpp_nll": llama_nll,
        "ppl_chunks": math.exp(sum(chunks_nll) / (n_chunks * (ctx - 1))),
        "ppl_llamacpp": math.exp(sum(llama_nll) / (n_chunks * (ctx - 1 - ctx // 2))),
        "seconds": el, "tokens_per_s": n_chunks * ctx / el, "threads": torch.get_num_threads(),
    }
    with open(os.path.join(out, "ppl.json"), "w") as f:
        json.dump(res, f)
    print(f"model_ref: wikitext2 ppl chunks {res['ppl_chunks']:.4f} llama.cpp {res['ppl_llamacpp']:.4f} "
          f"({res['tokens_per_s']:.0f} tok/s, {res['threads']} threads)")


@torch.no_grad()
def check_export(model, other, what):
    worst = 0.0
    for text in PROMPTS[:2]:
        ids = list(range(100, 160))
        a, b = logits_of(model, ids), logits_of(other, ids)
        worst = max(worst, float((a - b).abs().max()))
        if not torch.equal(a.argmax(-1), b.argmax(-1)):
            sys.exit(f"{what}: argmax differs")
    print(f"{what}: max |dlogit| vs reference = {worst:.3g}")
    if worst > 1e-3:
        sys.exit(f"{what}: logits differ by {worst}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--full", action="store_true", help="also dump every logits row (large)")
    ap.add_argument("--no-ppl", action="store_true")
    ap.add_argument("--only-ppl", action="store_true")
    ap.add_argument("--check-hf")
    ap.add_argument("--check-gguf")
    a = ap.parse_args()
    model = load_ref()
    if a.check_hf:
        other = AutoModelForCausalLM.from_pretrained(a.check_hf, dtype=torch.float32).eval()
        check_export(model, other, f"HF folder {a.check_hf}")
    if a.check_gguf:
        other = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(a.check_gguf)), gguf_file=os.path.basename(a.check_gguf),
            dtype=torch.float32).eval()
        sa, sb = model.state_dict(), other.state_dict()
        for k in sa:
            if not torch.equal(sa[k], sb[k]):
                sys.exit(f"GGUF {a.check_gguf}: tensor {k} differs")
        print(f"GGUF {a.check_gguf}: all {len(sa)} tensors equal the reference after transformers' load")
        check_export(model, other, f"GGUF {a.check_gguf}")
    if a.out:
        out = os.path.join(a.out, "model")
        os.makedirs(out, exist_ok=True)
        tok = tokenizer(a.out)
        if not a.only_ppl:
            write_prompts(model, tok, out, a.full)
            write_greedy(model, tok, out)
        if not a.no_ppl:
            write_ppl(model, tok, out)


if __name__ == "__main__":
    main()
