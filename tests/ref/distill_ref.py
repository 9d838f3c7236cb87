"""Reference gradients for taper's distillation step (src/train/distill.c), from PyTorch autograd.

Makes a tiny random teacher (d 40, 3 layers) and two students (d 24 / 2 layers, needing a
projection; d 40 / 2 layers), saves them with transformers, and for fixed tokens computes the
distillation loss as include/taper/distill.h defines it and every student gradient:
  total = w_logits * mean_rows D(teacher || student logits at tau) [* tau^2]
        + w_ce * mean CE(labels)
        + alpha * mean over states of mean_rows loss(state),
  state = LAYER_OUT of mapped layers (decoder layer outputs) and optionally the embedding output;
  cosine: 1 - cos(xs P^T, xt); mse: mean_cols (rmsnorm(xs) P^T - rmsnorm(xt))^2 (no weight);
  alpha < 0: dynamic, (w_logits*kd + w_ce*ce) / mean state loss, detached.
P starts as the identity selection P[i, i] = 1 (i < d_student) and gets a gradient too.
usage: distill_ref.py --out OUT      (writes OUT/distill/)
"""
import argparse, json, os
import torch
from transformers import LlamaConfig, LlamaForCausalLM

V = 97

def make(d, layers, heads, kv, ff, seed, path):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ff, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0)
    m = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.7, 1.3)
    m.save_pretrained(path, safe_serialization=True)
    return m

def layer_outputs(model, tokens):
    outs = {}
    hs = []
    for i, layer in enumerate(model.model.layers):
        hs.append(layer.register_forward_hook(lambda mod, a, o, i=i: outs.__setitem__(i, o[0] if isinstance(o, tuple) else o)))
    emb = {}
    hs.append(model.model.embed_tokens.register_forward_hook(lambda mod, a, o: emb.__setitem__(0, o)))
    logits = model(tokens).logits
    for h in hs:
        h.remove()
    return logits, outs, emb[0]

def div(kind, lp, lq, beta):
    p, q = lp.exp(), lq.exp()
    if kind == "fkl":
        return (p * (lp - lq)).sum(-1)
    if kind == "rkl":
        return (q * (lq - lp)).sum(-1)
    m = beta * p + (1 - beta) * q
    return beta * (p * (lp - m.log())).sum(-1) + (1 - beta) * (q * (lq - m.log())).sum(-1)

def kd_loss(kind, tau, tau2, beta, topk, s, t):
    lpt = torch.log_softmax(t / tau, -1)
    lqs = torch.log_softmax(s / tau, -1)
    if topk:
        idx = torch.topk(lpt, topk, -1).indices
        pk = torch.gather(lpt, -1, idx)
        rest_p = (1 - pk.exp().sum(-1)).clamp_min(1e-12)
        qk = torch.gather(lqs, -1, idx)
        mask = torch.ones_like(lqs, dtype=torch.bool).scatter_(-1, idx, False)
        rest_q = torch.where(mask, lqs.exp(), torch.zeros_like(lqs)).sum(-1)
        lpt = torch.cat([pk, rest_p.log()[..., None]], -1)
        lqs = torch.cat([qk, rest_q.log()[..., None]], -1)
    l = div(kind, lpt, lqs, beta)
    return l * (tau * tau if tau2 else 1.0)

def r9(t):
    """float32 values with 9 significant digits (exact for float32)"""
    return [float("%.9g" % v) for v in t.float().flatten().tolist()]

def rmsn(x):
    return x / x.pow(2).mean(-1, keepdim=True).sqrt()

def case(name, teacher, student, tokens, targets, c, out):
    student.zero_grad()
    with torch.no_grad():
        tl, touts, temb = layer_outputs(teacher, tokens)
    sl, souts, semb = layer_outputs(student, tokens)
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    N = tokens.numel()
    s2 = sl.reshape(N, V).double(); t2 = tl.reshape(N, V).double()
    kd = kd_loss(c["kind"], c["tau"], c["tau2"], c["beta"], c["topk"], s2, t2).sum() / N
    ce = torch.nn.functional.cross_entropy(s2, targets.reshape(-1), ignore_index=-100, reduction="sum") / N
    states = [(souts[s], touts[t]) for s, t in c["pairs"]]
    if c["emb"]:
        states.append((semb, temb))
    P = None
    if ds != dt:
        P = torch.zeros(len(states), dt, ds, dtype=torch.float64)
        for k in range(len(states)):
            for i in range(ds):
                P[k, i, i] = 1.0
        P.requires_grad_(True)
    losses = []
    for k, (xs, xt) in enumerate(states):
        xs = xs.reshape(N, ds).double(); xt = xt.reshape(N, dt).double()
        if c["hid"] == "mse":
            xs, xt = rmsn(xs), rmsn(xt)
        y = xs @ P[k].T if P is not None else xs
        if c["hid"] == "cosine":
            losses.append((1 - torch.nn.functional.cosine_similarity(y, xt, dim=-1, eps=0)).mean())
        else:
            losses.append(((y - xt) ** 2).mean(-1).mean())
    inter = torch.stack(losses).mean() if losses else torch.zeros((), dtype=torch.float64)
    main = c["w_logits"] * kd + c["w_ce"] * ce
    alpha = c["alpha"] if c["alpha"] >= 0 else (main / inter).item()
    total = main + alpha * inter
    total.backward()
    rec = dict(c, name=name, kd=kd.item(), ce=ce.item(), inter=inter.item(), alpha=alpha, total=total.item(),
               grads={n: r9(p.grad) for n, p in student.named_parameters()})
    if P is not None:
        rec["dP"] = r9(P.grad)
    out.append(rec)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = os.path.join(a.out, "distill")
    os.makedirs(d, exist_ok=True)
    teacher = make(40, 3, 4, 2, 56, 1, os.path.join(d, "teacher"))
    narrow = make(24, 2, 4, 2, 40, 2, os.path.join(d, "narrow"))
    shallow = make(40, 2, 4, 2, 56, 3, os.path.join(d, "shallow"))
    g = torch.Generator().manual_seed(5)
    B, T = 2, 13
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 3] = -100
    out = []
    case("narrow_fkl_cos_dyn", teacher, narrow, tokens, targets,
         dict(student="narrow", kind="fkl", tau=2.0, tau2=1, beta=0.5, topk=0, w_logits=1.0, w_ce=0.3, hid="cosine",
              pairs=[[1, 2], [0, 0]], emb=1, alpha=-1.0), out)
    case("shallow_jsd_top7_mse", teacher, shallow, tokens, targets,
         dict(student="shallow", kind="jsd", tau=1.0, tau2=0, beta=0.3, topk=7, w_logits=1.0, w_ce=0.0, hid="mse",
              pairs=[[0, 0], [1, 2]], emb=0, alpha=0.7), out)
    case("shallow_rkl_logits_only", teacher, shallow, tokens, targets,
         dict(student="shallow", kind="rkl", tau=1.5, tau2=0, beta=0.5, topk=0, w_logits=1.0, w_ce=0.0, hid="cosine",
              pairs=[], emb=0, alpha=0.0), out)
    with open(os.path.join(d, "distill.json"), "w") as f:
        json.dump({"B": B, "T": T, "tokens": tokens.flatten().tolist(), "targets": targets.flatten().tolist(),
                   "cases": out}, f)

if __name__ == "__main__":
    main()
