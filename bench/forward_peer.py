"""Peer side of `make bench` (forward): HF transformers fp32 forward over the first N chunks of
ctx tokens of a text file, same chunks as `taper ppl --max-chunks N`, same thread count.
Prints one JSON line: tokens/s and the chunked-protocol perplexity of those chunks."""
import argparse
import json
import math
import os
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
a = ap.parse_args()
torch.set_num_threads(a.threads)
m = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.model), gguf_file=os.path.basename(a.model),
                                         dtype=torch.float32).eval()
ids = Tokenizer.from_file(a.tokenizer).encode(open(a.data, encoding="utf-8").read(), add_special_tokens=False).ids
nll, n = 0.0, 0
with torch.no_grad():
    m(torch.tensor([ids[:a.ctx]]))  # warm-up
    t0 = time.time()
    for c in range(a.chunks):
        x = torch.tensor([ids[c * a.ctx:(c + 1) * a.ctx]])
        lp = torch.log_softmax(m(x).logits[0].double(), -1)
        nll -= float(lp[:-1].gather(1, x[0, 1:, None]).sum())
        n += a.ctx - 1
    el = time.time() - t0
print(json.dumps({"peer": "transformers " + __import__("transformers").__version__ + " / torch " + torch.__version__,
                  "threads": a.threads, "ctx": a.ctx, "chunks": a.chunks, "seconds": el,
                  "tokens_per_s": a.chunks * a.ctx / el, "ppl_chunks": math.exp(nll / n)}))
