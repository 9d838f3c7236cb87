"""Peer side of `make bench` (forward): HF transformers forward over the first N chunks of ctx tokens
of a text file, same chunks as `taper ppl --max-chunks N`, same thread count. --dtype fp32 (default), bf16
(torch.autocast on CPU over the fp32 weights) or bf16-weights (the model converted to bfloat16, no
autocast); the log-softmax is taken in float64 either way.
Prints one JSON line: tokens/s, the chunked-protocol perplexity of those chunks, peak RSS."""
import argparse
import json
import math
import os
import resource
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--tokenizer", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--ctx", type=int, default=512)
ap.add_argument("--chunks", type=int, default=8)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--dtype", choices=["fp32", "bf16", "bf16-weights"], default="fp32")
a = ap.parse_args()
torch.set_num_threads(a.threads)
m = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.model), gguf_file=os.path.basename(a.model),
                                         dtype=torch.float32).eval()
if a.dtype == "bf16-weights":
    m = m.to(torch.bfloat16)
ids = Tokenizer.from_file(a.tokenizer).encode(open(a.data, encoding="utf-8").read(), add_special_tokens=False).ids
nll, n = 0.0, 0
amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16")
with torch.no_grad():
    with amp:
        m(torch.tensor([ids[:a.ctx]]))  # warm-up
    t0 = time.time()
    for c in range(a.chunks):
        x = torch.tensor([ids[c * a.ctx:(c + 1) * a.ctx]])
        with amp:
            logits = m(x).logits
        lp = torch.log_softmax(logits[0].double(), -1)
        nll -= float(lp[:-1].gather(1, x[0, 1:, None]).sum())
        n += a.ctx - 1
    el = time.time() - t0
print(json.dumps({"peer": "transformers " + __import__("transformers").__version__ + " / torch " + torch.__version__,
                  "config": a.dtype, "threads": a.threads, "ctx": a.ctx, "chunks": a.chunks, "seconds": el,
                  "tokens_per_s": a.chunks * a.ctx / el, "ppl_chunks": math.exp(nll / n),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
