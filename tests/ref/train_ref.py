"""Reference for the training loop (tests/test_train.c, train_matches_pytorch_adamw): tiny Llama
models trained for 10 AdamW steps in PyTorch on fixed token batches -- cross-entropy with
ignore_index -100, gradient accumulation over 2 micro-batches (each loss / 2), global-norm
clipping small enough to trigger (on 4 and 6 of the 10 steps), decoupled weight decay on
matrices only, and a LambdaLR of taper's warmup + cosine schedule.

eps is 1e-6, not torch's 1e-8: with 1e-8, one weight of the untied model (layer 0 k_proj[14, 9])
gets a step-1 gradient of 2.3e-9 (the median |g| of that matrix is 8e-4): a cancellation that
is pure fp32 rounding noise, which Adam rescales into a full lr-sized step of arbitrary sign, so
that weight ended 6.6e-5 from torch's while every other one was within 1e-6. With eps 1e-6 such
noise-level gradients stay inert and every real gradient (>= 1e-5) still gets the normalised
Adam update, so the 1e-5 tolerance tests the arithmetic rather than the rounding noise.

Writes OUT/train/:
  <name>/          the initial model (HF folder: config.json + model.safetensors)
  <name>.final/    the model after the 10 steps
  batches.i32      int32 LE, (STEPS, ACCUM, 2, B, T): [step][micro][tokens|targets][b][t]
  index.json       hyper-parameters, and per model the loss / lr / pre-clip grad norm of each step
"""
import argparse
import json
import math
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM

STEPS, ACCUM, B, T = 10, 2, 2, 16
HP = dict(lr=3e-3, min_lr=3e-4, warmup=3, total_steps=STEPS, beta1=0.9, beta2=0.95, eps=1e-6,
          weight_decay=0.1, clip=1.5)
COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
              bos_token_id=1, eos_token_id=2)
MODELS = {"tied": dict(tie_word_embeddings=True), "untied": dict(tie_word_embeddings=False)}


def lr_at(s):
    """taper's tp_lr_at: linear warmup, update s uses lr*(s+1)/warmup; cosine to min_lr at total."""
    lr, mn, w, n = HP["lr"], HP["min_lr"], HP["warmup"], HP["total_steps"]
    if s < w:
        return lr * (s + 1) / w
    if s >= n:
        return mn
    p = (s - w) / (n - w)
    return mn + 0.5 * (lr - mn) * (1 + math.cos(math.pi * p))


def make_batches():
    g = torch.Generator().manual_seed(1234)
    seq = torch.randint(0, COMMON["vocab_size"], (STEPS, ACCUM, B, T + 1), generator=g)
    tok, tgt = seq[..., :-1].clone(), seq[..., 1:].clone()
    tgt[:, 1, 0, :3] = -100  # masked targets in every second micro-batch: counted tokens differ
    tgt[3, 0, 1, 5:] = -100
    return tok, tgt


def train(name, extra, tok, tgt, out):
    torch.manual_seed(7 + len(name))
    cfg = LlamaConfig(**COMMON, **extra)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.05)
            else:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    m.save_pretrained(os.path.join(out, name), safe_serialization=True)
    decay = [p for p in m.parameters() if p.dim() >= 2]
    no_decay = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s) / HP["lr"])
    log = []
    for s in range(STEPS):
        lr = opt.param_groups[0]["lr"]
        total = 0.0
        for j in range(ACCUM):
            logits = m(tok[s, j]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), tgt[s, j].reshape(-1),
                                                     ignore_index=-100)
            (loss / ACCUM).backward()
            total += float(loss.detach())
        gn = float(torch.nn.utils.clip_grad_norm_(m.parameters(), HP["clip"]))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append({"step": s + 1, "loss": total / ACCUM, "lr": lr, "grad_norm": gn})
    m.save_pretrained(os.path.join(out, name + ".final"), safe_serialization=True)
    clipped = sum(e["grad_norm"] > HP["clip"] for e in log)
    print(f"train_ref: {name}: loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f}, "
          f"clipped {clipped}/{STEPS} steps, grad norms {[round(e['grad_norm'], 3) for e in log]}")
    return log


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = os.path.join(a.out, "train")
    os.makedirs(out, exist_ok=True)
    tok, tgt = make_batches()
    torch.stack([tok, tgt], 2).to(torch.int32).numpy().astype("<i4").tofile(os.path.join(out, "batches.i32"))
    index = {"steps": STEPS, "accum": ACCUM, "B": B, "T": T, **HP, "models": {}}
    for name, extra in MODELS.items():
        index["models"][name] = train(name, extra, tok, tgt, out)
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
