"""Reference for taper's AdamW (src/train/optim.c): torch.optim.AdamW + clip_grad_norm_ + a LambdaLR
with the schedule of tp_lr_at, on the tiny llama3 model of tests/fixtures/tiny (untied lm_head).

10 updates, warmup 3, total 10, gradient accumulation of 2 micro-batches per update. The gradient of
micro-batch k (0, 1) at update s (0-based) is a fixed function of the current fp32 parameters p:

    g_k = fp32( sin(3*p + 0.1*k + s) * 0.01 * (1 + s % 3) )      computed in float64 from p
    grad = fp32(0.5 * g_0) + fp32(0.5 * g_1)                       accumulated in fp32 (1/accum each)

(the amplitude 1 + s%3 makes the global norm about 1, 2, 3, ...: clip 1.5 triggers on some updates
only). Decay on every 2-D tensor, none on the norms. Writes OUT/optim/:
  llama3.params.f32   11 x n_params float32 LE: the parameters before the first update and after
                      each update, in taper's layout (tok_emb; per layer attn_norm, wq, wk, wv, wo,
                      mlp_norm, w_gate, w_up, w_down; final_norm; lm_head)
  llama3.moments.f32  2 x n_params: exp_avg and exp_avg_sq after the last update, same layout
  llama3.json         hyperparameters, per-update lr / grad norm / clipped, and the LambdaLR lr of
                      updates 0..15 of a longer schedule check."""
import argparse
import json
import math
import os

import numpy as np
import torch
from transformers import LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS, WARMUP, TOTAL, ACCUM = 10, 3, 10, 2


def f32(x):  # hyperparameters as the fp32 values the C struct holds
    return float(np.float32(x))


CFG = dict(lr=f32(1e-2), min_lr=f32(1e-3), warmup_steps=WARMUP, total_steps=TOTAL, beta1=f32(0.9), beta2=f32(0.95),
           eps=f32(1e-8), weight_decay=f32(0.1), clip=f32(1.5))


def lr_at(c, s):
    """tp_lr_at: linear warmup, cosine from lr (s = W) to min_lr (s = S), min_lr after."""
    lr, lo, W, S = c["lr"], c["min_lr"], c["warmup_steps"], c["total_steps"]
    if s < W:
        return lr * (s + 1) / W
    if S <= 0:
        return lr
    if s >= S:
        return lo
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * (s - W) / (S - W)))


def taper_order(model):
    """Parameters in the order of taper's single parameter buffer."""
    sd = dict(model.named_parameters())
    names = ["model.embed_tokens.weight"]
    for l in range(model.config.num_hidden_layers):
        pre = f"model.layers.{l}."
        names += [pre + "input_layernorm.weight", pre + "self_attn.q_proj.weight", pre + "self_attn.k_proj.weight",
                  pre + "self_attn.v_proj.weight", pre + "self_attn.o_proj.weight",
                  pre + "post_attention_layernorm.weight", pre + "mlp.gate_proj.weight", pre + "mlp.up_proj.weight",
                  pre + "mlp.down_proj.weight"]
    names.append("model.norm.weight")
    if not model.config.tie_word_embeddings:
        names.append("lm_head.weight")
    if set(names) != set(sd):
        raise SystemExit(f"optim_ref: unexpected parameters {sorted(set(sd) ^ set(names))}")
    return [sd[n] for n in names]


def micro_grad(p, k, s):
    x = p.detach().double() * 3.0
    x = x + 0.1 * k
    x = x + float(s)
    return (torch.sin(x) * 0.01 * float(1 + s % 3)).float()


def run(model, params, clip=True):
    decay = [p for p in params if p.dim() == 2]
    no_decay = [p for p in params if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": CFG["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=CFG["lr"], betas=(CFG["beta1"], CFG["beta2"]), eps=CFG["eps"], foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(CFG, s) / CFG["lr"])
    dumps = [torch.cat([p.detach().flatten() for p in params]).clone()]
    steps = []
    for s in range(STEPS):
        for p in params:
            p.grad = torch.zeros_like(p)
        for k in range(ACCUM):
            gs = [micro_grad(p, k, s) for p in params]  # all from the same parameters
            for p, g in zip(params, gs):
                p.grad += g * 0.5
        lr = opt.param_groups[0]["lr"]
        norm = torch.nn.utils.clip_grad_norm_(params, CFG["clip"] if clip else 1e30, foreach=False)
        opt.step()
        sched.step()
        steps.append({"lr": lr, "grad_norm": float(norm), "clipped": bool(float(norm) + 1e-6 > CFG["clip"])})
        dumps.append(torch.cat([p.detach().flatten() for p in params]).clone())
    moments = [torch.cat([opt.state[p][key].flatten() for p in params]) for key in ("exp_avg", "exp_avg_sq")]
    return dumps, moments, steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", default=os.path.join(HERE, "..", "fixtures", "tiny", "llama3"),
                    help="HF folder of the tiny llama3 model (tests/fixtures/tiny/llama3)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = os.path.join(a.out, "optim")
    os.makedirs(out, exist_ok=True)

    model = LlamaForCausalLM.from_pretrained(a.tiny, dtype=torch.float32)
    params = taper_order(model)
    init = [p.detach().clone() for p in params]
    dumps, moments, steps = run(model, params)

    # The test must be able to fail: without clipping the trajectory differs far beyond tolerance.
    with torch.no_grad():
        for p, q in zip(params, init):
            p.copy_(q)
    dumps_nc, _, _ = run(model, params, clip=False)
    diff = float((dumps[-1] - dumps_nc[-1]).abs().max())
    print(f"optim_ref: without clipping the final parameters would differ by up to {diff:.3g}")
    if diff < 1e-3:
        raise SystemExit("optim_ref: clipping has no visible effect; choose a smaller clip")

    torch.stack(dumps).numpy().astype("<f4").tofile(os.path.join(out, "llama3.params.f32"))
    torch.stack(moments).numpy().astype("<f4").tofile(os.path.join(out, "llama3.moments.f32"))

    # The schedule alone, past total_steps, from a LambdaLR stepped 16 times.
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=CFG["lr"])
    sch = torch.optim.lr_scheduler.LambdaLR(dummy, lambda s: lr_at(CFG, s) / CFG["lr"])
    lr_table = []
    for _ in range(16):
        lr_table.append(dummy.param_groups[0]["lr"])
        dummy.step()
        sch.step()

    meta = {"model": "tiny/llama3", "n_params": int(dumps[0].numel()), "steps": STEPS, "accum": ACCUM,
            "gradient": "g_k = fp32(sin(3*p + 0.1*k + s) * 0.01 * (1 + s%3)) in float64; grad = sum_k fp32(0.5*g_k)",
            "cfg": CFG, "per_step": steps, "lr_table": lr_table}
    with open(os.path.join(out, "llama3.json"), "w") as f:
        json.dump(meta, f, indent=1)
    n_clip = sum(s["clipped"] for s in steps)
    print(f"optim_ref: {meta['n_params']} params, {STEPS} updates, clipped on {n_clip}, "
          f"norms {[round(s['grad_norm'], 3) for s in steps]}")


if __name__ == "__main__":
    main()
