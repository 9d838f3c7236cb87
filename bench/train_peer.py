"""Peer side of the training benchmark (bench/train.sh throughput): a PyTorch training step of
transformers' LlamaForCausalLM with the same weights as taper (the GGUF dequantised to fp32), fp32,
torch.optim.AdamW (same betas/eps/weight decay, decay on matrices only), global-norm clipping 1,
next-token cross-entropy, the same batch x seq and thread count. The token windows are the first
ones of the text (tokenized without BOS). Prints one JSON line: tokens/s over the timed steps
(after --warmup untimed ones), seconds per step, the first step's seconds (it carries compilation),
peak RSS (getrusage) and the losses.
Configurations: --dtype fp32 (default) | bf16 (torch.autocast on CPU; weights, gradients and Adam stay
fp32, the loss is taken in fp32), --compile (torch.compile of the model and of the loss). A failure
prints {"error": ...} and exits 1."""
import argparse
import json
import os
import resource
import sys
import time
import traceback

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True, help="the .gguf file taper trains")
ap.add_argument("--tokenizer", required=True, help="tokenizer.json of the same model")
ap.add_argument("--data", required=True, help="text file")
ap.add_argument("--seq", type=int, default=512)
ap.add_argument("--batch", type=int, default=2)
ap.add_argument("--steps", type=int, default=4, help="timed steps")
ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
ap.add_argument("--compile", action="store_true", help="torch.compile the model and the loss")
ap.add_argument("--adamw", choices=["default", "fused", "foreach"], default="default",
                help="torch.optim.AdamW implementation (default: torch's choice for CPU tensors)")
a = ap.parse_args()
config = a.dtype + ("+compile" if a.compile else "")


def run():
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.model), gguf_file=os.path.basename(a.model),
                                             dtype=torch.float32)
    m.train()
    ids = Tokenizer.from_file(a.tokenizer).encode(open(a.data, encoding="utf-8").read(), add_special_tokens=False).ids
    W = a.seq + 1
    n_win = len(ids) // W
    need = (a.warmup + a.steps) * a.batch
    assert n_win >= need, f"{a.data}: {n_win} windows of {W} tokens, {need} needed"
    win = torch.tensor(ids[:need * W]).view(need, W)
    decay = [p for p in m.parameters() if p.dim() >= 2]
    no_decay = [p for p in m.parameters() if p.dim() < 2]
    kw = {"fused": True} if a.adamw == "fused" else {"foreach": True} if a.adamw == "foreach" else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **kw)

    def ce_loss(logits, y):
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    fwd = m
    if a.compile:
        fwd, ce_loss = torch.compile(m), torch.compile(ce_loss)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    losses, times = [], []
    for s in range(a.warmup + a.steps):
        t0 = time.time()
        x = win[s * a.batch:(s + 1) * a.batch]
        with amp:
            logits = fwd(x[:, :-1]).logits
        loss = ce_loss(logits, x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.time() - t0)
        losses.append(float(loss.detach()))
    timed = times[a.warmup:]
    tok = a.batch * a.seq
    return {"peer": "transformers " + __import__("transformers").__version__ + " / torch " + torch.__version__,
            "threads": a.threads, "seq": a.seq, "batch": a.batch, "timed_steps": a.steps, "first_step_s": times[0],
            "seconds_per_step": sum(timed) / len(timed), "tokens_per_s": tok * len(timed) / sum(timed),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "losses": losses}


try:
    rec = dict(run(), config=config)
except Exception as e:  # the table says "n/a (error ...)"; the traceback goes to stderr
    traceback.print_exc()
    rec = {"config": config, "error": (type(e).__name__ + ": " + str(e)).splitlines()[0][:200],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
print(json.dumps(rec))
sys.exit(1 if "error" in rec else 0)
