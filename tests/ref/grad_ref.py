"""Reference gradients for taper's backward pass (src/train/backward.c), from PyTorch autograd.

Builds tiny random Llama-family models with transformers (odd sizes, GQA and plain multi-head,
tied and untied embeddings, explicit head_dim, llama3 and linear RoPE scaling, Qwen2 q/k/v
biases), saves each as an HF folder (float32 safetensors + config.json, what tp_model_load_hf
reads), and for a few runs on random tokens (targets partly -100) dumps the loss and the gradient
of EVERY parameter (HF names) as float32.

The reference is computed in float64 from the saved float32 weights (the exact gradient of the
float32 model, up to float64 rounding); the same run in float32 torch is recorded too
("torch_f32_rel": max over tensors of max|g32 - g64| / max|g64|) to show what float32 itself costs.

Runs ("kind"):
  ce      mean cross-entropy over targets != -100
  custom  loss = sum(logits * W) with W a fixed random (B,T,V) array (file "weights")
  hook    ce + sum over injection points of sum(w_p * x_p) with x_p an intermediate state:
          LAYER_IN 0 (embedding output), LAYER_OUT 0, ATTN_OUT 1 (o_proj input), MLP_ACT 1
          (down_proj input), FINAL_NORM (final norm output); the w_p are in "weights" in the
          order listed

Writes OUT/grad/<model>/ (HF folders), OUT/grad/<run>.grad.f32 (every gradient, float32 LE, in
the order of "tensors"), OUT/grad/<run>.w.f32 (weights of custom/hook runs) and
OUT/grad/index.json."""
import argparse
import json
import os

import numpy as np
import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

IGNORE = -100
COMMON = dict(vocab_size=97, hidden_size=40, intermediate_size=72, max_position_embeddings=256,
              rms_norm_eps=1e-5, attn_implementation="eager")
MODELS = {
    # d_model 36, d_ff 60, GQA 6 query heads / 2 KV heads, explicit head_dim 10 (6*10 != 36),
    # untied, llama3 scaling with positions past original_max_position_embeddings
    "llama_gqa": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=36, intermediate_size=60, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
        head_dim=10,
        rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 12})),
    # 4/4 heads (head_dim 10 implied), tied, linear scaling
    "llama_tied": (LlamaConfig, LlamaForCausalLM, dict(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0,
        tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # Qwen2: q/k/v biases, 4/2 heads, tied
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
        tie_word_embeddings=True)),
    # Qwen3: per-head q/k norms, head_dim 12, untied; layer 1 of 2 attends through a window of 7
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=12, rope_theta=1000000.0,
        tie_word_embeddings=False, use_sliding_window=True, sliding_window=7, max_window_layers=1)),
    # Gemma 3: GeGLU, (1 + w) norms (four per layer and q/k), scaled tied embeddings, scores scaled by
    # 20^-1/2, layers sliding (window 9) / full / sliding with two RoPE bases, linear scaling on full.
    # pad_token_id None: transformers' Gemma 3 defaults it to 0, and nn.Embedding(padding_idx=0)
    # then gives row 0 no gradient from its use as an input; taper trains every row alike (as
    # llama.cpp and Megatron do), so the reference is taken without a padding row.
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, dict(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=10, query_pre_attn_scalar=20,
        sliding_window=9, tie_word_embeddings=True, pad_token_id=None,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}
# (run name, model, kind, B, T, seed)
RUNS = [
    ("llama_gqa_ce", "llama_gqa", "ce", 3, 17, 11),
    ("llama_tied_ce", "llama_tied", "ce", 2, 33, 12),
    ("qwen2_ce", "qwen2", "ce", 2, 25, 13),
    ("qwen2_custom", "qwen2", "custom", 2, 19, 14),
    ("llama_gqa_hook", "llama_gqa", "hook", 2, 21, 15),
    ("qwen3_ce", "qwen3", "ce", 2, 23, 16),
    ("gemma3_ce", "gemma3", "ce", 2, 27, 17),
    ("gemma3_hook", "gemma3", "hook", 2, 19, 18),
]
HOOK_POINTS = [("LAYER_IN", 0), ("LAYER_OUT", 0), ("ATTN_OUT", 1), ("MLP_ACT", 1), ("FINAL_NORM", -1)]


def build(name):
    cfg_cls, model_cls, extra = MODELS[name]
    torch.manual_seed(100 + len(name))
    cfg = cfg_cls(**{**COMMON, **extra})
    m = model_cls(cfg).eval()
    with torch.no_grad():  # larger than the default init so every op matters
        for pname, p in m.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    return m


def hook_states(m, kind, B, T, dtype, w):
    """Registers hooks that add sum(w_p * x_p) to a list; returns (handles, terms)."""
    terms, handles = [], []
    if kind != "hook":
        return handles, terms
    mm = m.model
    mods = {
        "LAYER_IN": (mm.embed_tokens, "out"),
        "LAYER_OUT": (mm.layers[0], "out"),
        "ATTN_OUT": (mm.layers[1].self_attn.o_proj, "in"),
        "MLP_ACT": (mm.layers[1].mlp.down_proj, "in"),
        "FINAL_NORM": (mm.norm, "out"),
    }
    for i, (pt, _) in enumerate(HOOK_POINTS):
        mod, where = mods[pt]
        wt = torch.from_numpy(w[i]).to(dtype)

        def f_out(_mod, _inp, out, wt=wt):
            x = out[0] if isinstance(out, tuple) else out
            terms.append((wt.view(x.shape) * x).sum())

        def f_in(_mod, inp, wt=wt):
            x = inp[0]
            terms.append((wt.view(x.shape) * x).sum())

        handles.append(mod.register_forward_hook(f_out) if where == "out" else mod.register_forward_pre_hook(f_in))
    return handles, terms


def run_grads(m, dtype, ids, tg, kind, w):
    m = m.to(dtype)
    m.zero_grad(set_to_none=True)
    B, T = ids.shape
    handles, terms = hook_states(m, kind, B, T, dtype, w)
    logits = m(torch.from_numpy(ids)).logits
    V = logits.shape[-1]
    if kind == "custom":
        loss = (logits * torch.from_numpy(w[0]).to(dtype).view(B, T, V)).sum()
    else:
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(tg).reshape(-1).long(),
                                                 ignore_index=IGNORE)
        ce = loss.item()
        for t in terms:
            loss = loss + t
    loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.detach().to(torch.float64).numpy().copy() for n, p in m.named_parameters()}
    return (loss.item() if kind != "hook" else ce), grads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TAPER_REF_THREADS", "1")))
    out = os.path.join(a.out, "grad")
    os.makedirs(out, exist_ok=True)
    index = {"models": [], "runs": [], "hook_points": [p for p, _ in HOOK_POINTS]}
    models = {}
    for name in MODELS:
        m = build(name)
        m.save_pretrained(os.path.join(out, name), safe_serialization=True)
        models[name] = m
        index["models"].append(name)
    for run, mname, kind, B, T, seed in RUNS:
        m = models[mname]
        cfg = m.config
        rng = np.random.default_rng(seed)
        V, d, ff = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size
        qd = cfg.num_attention_heads * getattr(cfg, "head_dim", d // cfg.num_attention_heads)
        ids = rng.integers(0, V, size=(B, T)).astype(np.int64)
        tg = rng.integers(0, V, size=(B, T)).astype(np.int64)
        tg[rng.random((B, T)) < 0.15] = IGNORE
        tg[0, 0] = IGNORE
        w = []
        if kind == "custom":
            w = [rng.standard_normal((B, T, V)).astype(np.float32)]
        elif kind == "hook":
            widths = {"LAYER_IN": d, "LAYER_OUT": d, "ATTN_OUT": qd, "MLP_ACT": ff, "FINAL_NORM": d}
            w = [(0.05 * rng.standard_normal((B * T, widths[p]))).astype(np.float32) for p, _ in HOOK_POINTS]
        loss64, g64 = run_grads(m, torch.float64, ids, tg, kind, w)
        loss32, g32 = run_grads(m, torch.float32, ids, tg, kind, w)
        m.to(torch.float32)
        f32_rel = max(float(np.abs(g32[n] - g64[n]).max() / max(np.abs(g64[n]).max(), 1e-30)) for n in g64)
        tensors, blob, off = [], [], 0
        for n, g in g64.items():
            tensors.append({"name": n, "shape": list(g.shape), "offset": off})
            blob.append(g.astype("<f4").ravel())
            off += g.size
        np.concatenate(blob).tofile(os.path.join(out, run + ".grad.f32"))
        entry = {"name": run, "model": mname, "kind": kind, "B": B, "T": T, "tokens": ids.ravel().tolist(),
                 "targets": tg.ravel().tolist(), "loss": loss64, "loss_torch_f32": loss32,
                 "torch_f32_rel": f32_rel, "grad_file": run + ".grad.f32", "tensors": tensors}
        if w:
            np.concatenate([x.ravel() for x in w]).astype("<f4").tofile(os.path.join(out, run + ".w.f32"))
            entry["weights_file"] = run + ".w.f32"
            if kind == "hook":
                entry["hooks"] = [{"point": p, "layer": (l if l >= 0 else cfg.num_hidden_layers),
                                   "width": int(x.shape[1])} for (p, l), x in zip(HOOK_POINTS, w)]
        index["runs"].append(entry)
        print(f"grad_ref: {run}: loss {loss64:.6f}, {len(tensors)} tensors, {off} values, "
              f"float32 torch vs float64 max rel {f32_rel:.2e}")
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)


if __name__ == "__main__":
    main()
