"""Reference values for taper's distillation losses (src/train/kd_loss.c), from PyTorch autograd.

Writes OUT/kd/kd.json: random student/teacher logits and hidden states (float32), and for each case
the loss and the gradient with respect to the student-side inputs, computed in float64 from the
float32 inputs. The losses are written here from their definitions in include/taper/distill.h:
  fkl  = sum_rows KL(p || q),   rkl = sum_rows KL(q || p),
  contrastive = sum_rows -log softmax_i(s[cand_i] / tau)[0] (cand_0 = the teacher's argmax) [* tau^2],
  jsd  = sum_rows beta KL(p || m) + (1-beta) KL(q || m),  m = beta p + (1-beta) q,
with p = softmax(t / tau), q = softmax(s / tau), times tau^2 when tau2; top-k: the same over k+1
bins (the teacher's top-k tokens and the rest); hidden: cosine (sum of 1 - cos) and mse (sum over
rows of the column mean of squared errors), optionally through y = xs P^T.
usage: kd_ref.py --out OUT
"""
import argparse, json, os
import torch

def divergence(kind, lp, lq, beta):
    p, q = lp.exp(), lq.exp()
    if kind == "fkl":
        return (p * (lp - lq)).sum(-1)
    if kind == "rkl":
        return (q * (lq - lp)).sum(-1)
    m = beta * p + (1 - beta) * q
    lm = m.log()
    return beta * (p * (lp - lm)).sum(-1) + (1 - beta) * (q * (lq - lm)).sum(-1)

def binned(lp_full_t, s, tau, k):
    """teacher log-probs and student log-probs over k+1 bins (top-k of the teacher, rest)"""
    idx = torch.topk(lp_full_t, k, dim=-1, sorted=True).indices
    lpt = torch.gather(lp_full_t, -1, idx)
    rest_t = (1 - lpt.exp().sum(-1)).clamp_min(1e-12)
    lq_full = torch.log_softmax(s / tau, -1)
    lqk = torch.gather(lq_full, -1, idx)
    mask = torch.ones_like(lq_full, dtype=torch.bool).scatter_(-1, idx, False)
    rest_q = torch.where(mask, lq_full.exp(), torch.zeros_like(lq_full)).sum(-1)
    lp = torch.cat([lpt, rest_t.log().unsqueeze(-1)], -1)
    lq = torch.cat([lqk, rest_q.log().unsqueeze(-1)], -1)
    return idx, lp, lq

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(1234)
    R, V, K = 6, 50, 5
    s32 = (torch.randn(R, V, generator=g) * 2.5).float()
    t32 = (torch.randn(R, V, generator=g) * 2.5 + 0.3 * s32).float()
    cases = []
    for kind in ("fkl", "rkl", "jsd"):
        for tau, tau2 in ((1.0, 0), (2.0, 1), (0.7, 0)):
            for k in (0, K):
                beta = 0.3 if kind == "jsd" else 0.5
                s = s32.double().clone().requires_grad_(True)
                lp_t = torch.log_softmax(t32.double() / tau, -1)
                rec = {"kind": kind, "tau": tau, "tau2": tau2, "beta": beta, "k": k}
                if k == 0:
                    lq = torch.log_softmax(s / tau, -1)
                    loss = divergence(kind, lp_t, lq, beta).sum()
                else:
                    idx, lp, lq = binned(lp_t, s, tau, k)
                    loss = divergence(kind, lp, lq, beta).sum()
                    rec["idx"] = idx.flatten().tolist()
                    rec["logp"] = torch.gather(lp_t, -1, idx).float().flatten().tolist()
                if tau2:
                    loss = loss * tau * tau
                loss.backward()
                rec["loss"] = loss.item()
                rec["grad"] = s.grad.float().flatten().tolist()
                cases.append(rec)
    N, ds, dt = 7, 12, 16
    xs = torch.randn(N, ds, generator=g).float()
    xt = torch.randn(N, dt, generator=g).float()
    xt_same = (torch.randn(N, ds, generator=g) + 0.5 * xs).float()
    P = (torch.randn(dt, ds, generator=g) * 0.3).float()
    hidden = []
    for kind in ("cosine", "mse"):
        for proj in (0, 1):
            x = xs.double().clone().requires_grad_(True)
            p = P.double().clone().requires_grad_(True)
            y = x @ p.T if proj else x
            tgt = (xt if proj else xt_same).double()
            if kind == "cosine":
                loss = (1 - torch.nn.functional.cosine_similarity(y, tgt, dim=-1, eps=0)).sum()
            else:
                loss = ((y - tgt) ** 2).mean(-1).sum()
            loss.backward()
            rec = {"kind": kind, "proj": proj, "loss": loss.item(), "dxs": x.grad.float().flatten().tolist()}
            if proj:
                rec["dP"] = p.grad.float().flatten().tolist()
            hidden.append(rec)
    # contrastive: the candidates (teacher argmax first, then 4 others) are fixed here; the C side's
    # sampler is tested on its own (tests/test_kd.c). Drawn after everything above, so the arrays
    # above keep their values.
    NEG = 4
    cand = []
    for r in range(R):
        ystar = int(t32[r].argmax())
        others = [j for j in torch.randperm(V, generator=g).tolist() if j != ystar][:NEG]
        cand.append([ystar] + others)
    candt = torch.tensor(cand)
    s_sat = s32.clone()
    s_sat[:, :] = -60.0
    for r in range(R):
        s_sat[r, cand[r][0]] = 60.0  # the student already puts all its mass on y*
    con = []
    for name, base in (("random", s32), ("saturated", s_sat)):
        for tau, tau2 in ((1.0, 0), (2.0, 1), (0.5, 0)):
            s = base.double().clone().requires_grad_(True)
            z = torch.gather(s, -1, candt) / tau
            loss = -torch.log_softmax(z, -1)[:, 0].sum()
            if tau2:
                loss = loss * tau * tau
            loss.backward()
            con.append({"name": name, "tau": tau, "tau2": tau2, "loss": loss.item(),
                        "grad": s.grad.float().flatten().tolist()})
    out = {"R": R, "V": V, "s": s32.flatten().tolist(), "t": t32.flatten().tolist(), "cases": cases,
           "contrastive": {"N": NEG, "cand": candt.flatten().tolist(), "s_saturated": s_sat.flatten().tolist(),
                           "cases": con},
           "N": N, "ds": ds, "dt": dt, "xs": xs.flatten().tolist(), "xt": xt.flatten().tolist(),
           "xt_same": xt_same.flatten().tolist(), "P": P.flatten().tolist(), "hidden": hidden,
           "torch": torch.__version__}
    os.makedirs(os.path.join(a.out, "kd"), exist_ok=True)
    with open(os.path.join(a.out, "kd", "kd.json"), "w") as f:
        json.dump(out, f)

if __name__ == "__main__":
    main()
