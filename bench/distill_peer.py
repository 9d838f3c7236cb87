"""Peer side of the distillation benchmark (bench/run.sh distill): the step `taper distill` takes,
written in plain PyTorch + transformers.

Per step: the teacher (the GGUF dequantised to fp32 by transformers) runs forward in eval mode
under no_grad; the student (an HF folder written by `taper prune`) runs forward and backward on
loss = mean over the B*T positions of KL(softmax(t/tau) || softmax(s/tau)) [+ alpha * intermediate];
global-norm clipping 1 on the student; torch.optim.AdamW with taper's defaults (lr 3e-4, betas
0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only), at a constant learning rate (taper's cosine
schedule does not change the cost of a step).

--inter cosine adds taper's intermediate loss (docs/distillation.md): for each mapped pair
(student layer i -> the teacher layer it came from, per the plan's "layers") the residual stream
leaving the layer, 1 - cos(P h_s, h_t) averaged over positions, then over pairs; P is a learned
d_teacher x d_student projection per pair only where the widths differ, started as the channel
selection of the plan (P[channels[i], i] = 1) and trained by AdamW with the same settings, not
clipped; alpha = (L_logits / L_inter) detached per step (taper's --alpha dynamic).

Configurations: --dtype fp32 | bf16 (torch.autocast on CPU, loss in fp32), --compile
(torch.compile of both models and of the loss). Prints one JSON line: tokens/s over the timed
steps (after --warmup untimed ones; the first step carries compilation), seconds per step, the
first step's seconds, peak RSS (getrusage), the losses and the gradient norms before clipping.
A failure prints {"error": ...} and exits 1.

Checked against taper distill on one 336-token window of wiki.valid.tokens (a one-document shard,
--val-frac 0, the same window for both), first step, student 90.1M from bench/run.sh: kd 2.109636
vs taper 2.109610, inter 0.14185739 vs 0.14185738, gradient norm 11.08147 vs 11.08161 (logits) and
19.39420 vs 19.39420 (with the 30 cosine pairs and projections).
"""
import argparse
import json
import os
import resource
import sys
import time
import traceback


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher .gguf (dequantised to fp32 by transformers)")
    ap.add_argument("--student", required=True, help="student HF folder (taper prune -o)")
    ap.add_argument("--plan", help="prune_plan.json of the student (default STUDENT/prune_plan.json)")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json of the models")
    ap.add_argument("--data", required=True, help="text file; the first windows of --seq tokens are used")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--inter", choices=["none", "cosine"], default="none")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the models and the loss")
    ap.add_argument("--adamw", choices=["default", "fused", "foreach"], default="default",
                    help="torch.optim.AdamW implementation (default: torch's choice for CPU tensors)")
    a = ap.parse_args()
    rec = {"config": a.dtype + ("+compile" if a.compile else ""), "inter": a.inter, "threads": a.threads,
           "seq": a.seq, "batch": a.batch}
    try:
        rec.update(run(a))
    except Exception as e:  # the table says "n/a (error ...)"; the traceback goes to stderr
        traceback.print_exc()
        rec["error"] = (type(e).__name__ + ": " + str(e)).splitlines()[0][:200]
    rec["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(rec))
    return 1 if "error" in rec else 0


def run(a):
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.teacher)),
                                                   gguf_file=os.path.basename(a.teacher), dtype=torch.float32).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32).train()
    Ls, Lt = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    V = teacher.config.vocab_size
    assert student.config.vocab_size == V, "teacher and student vocabularies differ"

    ids = Tokenizer.from_file(a.tokenizer).encode(open(a.data, encoding="utf-8").read(), add_special_tokens=False).ids
    need = (a.warmup + a.steps) * a.batch
    assert len(ids) // a.seq >= need, f"{a.data}: {len(ids) // a.seq} windows of {a.seq} tokens, {need} needed"
    win = torch.tensor(ids[:need * a.seq]).view(need, a.seq)

    # intermediate states: forward hooks on the mapped decoder layers (output = residual stream)
    pairs, proj = [], None
    s_out, t_out = {}, {}
    if a.inter != "none":
        plan = json.load(open(a.plan or os.path.join(a.student, "prune_plan.json")))
        kept = plan["layers"]
        assert len(kept) == Ls, f"plan keeps {len(kept)} layers, the student has {Ls}"
        pairs = [(i, kept[i]) for i in range(Ls)]  # taper's --map auto with --plan

        def hook(store, key):
            def f(mod, args, out):
                store[key] = out[0] if isinstance(out, tuple) else out
            return f

        for si, ti in pairs:
            student.model.layers[si].register_forward_hook(hook(s_out, si))
            teacher.model.layers[ti].register_forward_hook(hook(t_out, ti))
        if ds != dt:
            ch = plan["channels"]
            assert len(ch) == ds, f"plan keeps {len(ch)} channels, the student has {ds}"
            P0 = torch.zeros(len(pairs), dt, ds)
            P0[:, torch.tensor(ch), torch.arange(ds)] = 1.0
            proj = torch.nn.Parameter(P0)

    def kd_loss(s_logits, t_logits):
        lq = torch.log_softmax(s_logits.float() / a.tau, -1)
        lp = torch.log_softmax(t_logits.float() / a.tau, -1)
        return (lp.exp() * (lp - lq)).sum(-1).mean()

    def inter_loss(hs, ht, P):
        losses = []
        for k in range(len(hs)):
            y = hs[k].float()
            if P is not None:
                y = y @ P[k].t()
            losses.append((1 - F.cosine_similarity(y, ht[k].float(), dim=-1, eps=1e-12)).mean())
        return torch.stack(losses).mean()

    t_fwd, s_fwd = teacher, student
    if a.compile:
        t_fwd, s_fwd = torch.compile(teacher), torch.compile(student)
        kd_loss = torch.compile(kd_loss)
        inter_loss = torch.compile(inter_loss)

    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    if proj is not None:
        groups.append({"params": [proj], "weight_decay": 0.1})
    kw = {"fused": True} if a.adamw == "fused" else {"foreach": True} if a.adamw == "foreach" else {}
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **kw)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16")

    kds, inters, gnorms, times = [], [], [], []
    for step in range(a.warmup + a.steps):
        t0 = time.time()
        x = win[step * a.batch:(step + 1) * a.batch]
        with torch.no_grad(), amp:
            t_logits = t_fwd(x).logits
        with amp:
            s_logits = s_fwd(x).logits
        kd = kd_loss(s_logits, t_logits)
        loss = kd
        if pairs:
            hs = [s_out[si].reshape(-1, ds) for si, _ in pairs]
            ht = [t_out[ti].reshape(-1, dt) for _, ti in pairs]
            li = inter_loss(hs, ht, proj)
            alpha = (kd / li).detach()
            loss = kd + alpha * li
            inters.append(float(li.detach()))
        loss.backward()
        gnorms.append(float(torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)))  # projections: not clipped
        opt.step()
        opt.zero_grad(set_to_none=True)
        s_out.clear()
        t_out.clear()
        kds.append(float(kd.detach()))
        times.append(time.time() - t0)
    timed = times[a.warmup:]
    tok = a.batch * a.seq
    import transformers
    return {"peer": f"transformers {transformers.__version__} / torch {torch.__version__}",
            "student_params": sum(p.numel() for p in student.parameters()),
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "pairs": len(pairs), "projection": proj is not None, "timed_steps": a.steps,
            "first_step_s": times[0], "seconds_per_step": sum(timed) / len(timed),
            "tokens_per_s": tok * len(timed) / sum(timed), "kd": kds, "inter_loss": inters,
            "grad_norm": gnorms}


if __name__ == "__main__":
    sys.exit(main())
