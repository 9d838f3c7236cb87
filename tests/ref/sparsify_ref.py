"""Reference masks and weights for `taper sparsify` (src/compress/sparsify.c, sparse_gpt.c), written
from the papers, in PyTorch, on a tiny random Llama built here (transformers' LlamaForCausalLM runs
the forward).

Model: hidden 48, intermediate 80, 2 layers, 4 heads / 2 KV heads (head_dim 12), vocab 256 with a
byte-level tokenizer (256 single-byte tokens, no merges), untied embeddings. Two inputs are made
dead on purpose (input_layernorm.weight[5] = 0 in layer 1, post_attention_layernorm.weight[7] = 0
in layer 0) so that the dead-input rule of SparseGPT is exercised.

Calibration: 4 samples x 32 fixed token ids (torch generator seed 1234), in ref.json.

Rules (docs/sparsity.md), all ties broken by a stable sort on (score, index):
  count(s, n) = floor(s*n + 1e-9) pruned
  magnitude  score |W|; per matrix (index = row-major flat), or global across all the target
             matrices in model order (layer, then q k v o gate up down; index = position in that
             concatenation)
  wanda      score |W_ij| * ||X_j||_2 (float64; X = the matrix's input over all calibration tokens);
             per output row (index = column)
  N:M        per row, every group of M consecutive inputs: the M-N smallest (index in the group)
  sparsegpt  H = 2/N X^T X (float64), dead (H_jj = 0): H_jj = 1 and W[:, j] = 0;
             H += damp*mean(diag H) I; U = upper Cholesky factor of H^-1 (cholesky,
             cholesky_inverse, cholesky upper); columns in blocks of B; unstructured: at each block
             start the k_b smallest of W[:, block]^2 / diag(U)[block]^2, flattened row-major within
             the block, k_b = count(s, done + rows*bc) - count(s, done); N:M: at every M-th column,
             per row, from the current (updated) weights; OBS: err = (w - q)/U_jj,
             W[:, j:] -= err * U[j, j:] (in block), then the trailing columns with the block's errors.
  sequence   (wanda, sparsegpt) layer by layer: the statistics of layer l come from the dense layer
             l on the hidden states produced by the already sparsified layers < l.

Writes OUT/sparsify/: model/ (config.json, model.safetensors, tokenizer.json), ref.json (ids, cases)
and per case <name>.tpmask (the mask in taper's mask file format v1, written here from the spec)
and, for SparseGPT, <name>.f32 (the sparsified target matrices in mask order, float32 LE).
"""
import argparse
import json
import math
import os
import struct

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

SAMPLES, SEQ = 4, 32
DAMP, BLOCK = 0.01, 32
MATS = ["q", "k", "v", "o", "gate", "up", "down"]
CASES = [
    # name, method, sparsity, (n, m), global, targets
    ("magnitude_50", "magnitude", 0.5, (0, 0), False, MATS),
    ("magnitude_2of4", "magnitude", 0.0, (2, 4), False, MATS),
    ("magnitude_4of8", "magnitude", 0.0, (4, 8), False, MATS),
    ("magnitude_global_50", "magnitude", 0.5, (0, 0), True, MATS),
    ("wanda_50", "wanda", 0.5, (0, 0), False, MATS),
    ("wanda_2of4", "wanda", 0.0, (2, 4), False, MATS),
    ("wanda_4of8", "wanda", 0.0, (4, 8), False, MATS),
    ("wanda_30_o_down", "wanda", 0.3, (0, 0), False, ["o", "down"]),
    ("sparsegpt_50", "sparsegpt", 0.5, (0, 0), False, MATS),
    ("sparsegpt_2of4", "sparsegpt", 0.0, (2, 4), False, MATS),
    ("sparsegpt_4of8", "sparsegpt", 0.0, (4, 8), False, MATS),
    ("sparsegpt_30", "sparsegpt", 0.3, (0, 0), False, MATS),
]


def count(s, n):
    return max(0, min(n, math.floor(s * n + 1e-9)))


def module(layer, k):
    a, m = layer.self_attn, layer.mlp
    return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj,
            "gate": m.gate_proj, "up": m.up_proj, "down": m.down_proj}[k]


def hf_name(l, k):
    part = f"self_attn.{k}_proj" if k in ("q", "k", "v", "o") else f"mlp.{k}_proj"
    return f"model.layers.{l}.{part}.weight"


def smallest(score, k):
    """Flags (bool, same shape as the 1-D score) of the k smallest by stable (score, index)."""
    order = torch.sort(score, stable=True).indices
    flags = torch.zeros(score.numel(), dtype=torch.bool)
    flags[order[:k]] = True
    return flags


def nm_rows(score, n, m):
    """score (rows, cols): per row, in each group of m the m-n smallest by (score, index)."""
    r, c = score.shape
    g = score.reshape(r, c // m, m)
    order = torch.sort(g, dim=2, stable=True).indices[:, :, : m - n]
    flags = torch.zeros_like(g, dtype=torch.bool)
    flags.scatter_(2, order, True)
    return flags.reshape(r, c)


# ---------------------------------------------------------------------------------------------
# the model

def build_model(out):
    torch.manual_seed(20240601)
    cfg = LlamaConfig(vocab_size=256, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      attn_implementation="eager")
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "embed" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 0.15)
        m.model.layers[1].input_layernorm.weight[5] = 0.0
        m.model.layers[0].post_attention_layernorm.weight[7] = 0.0
    d = os.path.join(out, "model")
    m.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    write_tokenizer(d)
    return d


def write_tokenizer(d):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ids in byte order: the character standing for byte b gets id b
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_char = {b: chr(c) for b, c in zip(bs, cs)}
    assert set(byte_char.values()) == set(alphabet)
    vocab = {byte_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.save(os.path.join(d, "tokenizer.json"))


def load_model(d):
    m = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    return m


class LayerRunner:
    """Runs one decoder layer of m on hidden states (S, T, d) at positions 0..T-1, causal."""

    def __init__(self, m, T):
        self.m = m
        self.pos = torch.arange(T)[None]
        mask = torch.full((T, T), float("-inf")).triu(1)
        self.mask = mask[None, None]

    def __call__(self, l, h):
        pe = self.m.model.rotary_emb(h, self.pos)
        out = self.m.model.layers[l](h, attention_mask=self.mask, position_ids=self.pos, position_embeddings=pe)
        return out[0] if isinstance(out, tuple) else out


def check_runner(m, ids):
    """The layer-by-layer loop must reproduce the model's own forward."""
    run = LayerRunner(m, ids.shape[1])
    with torch.no_grad():
        h = m.model.embed_tokens(ids)
        for l in range(len(m.model.layers)):
            h = run(l, h)
        logits = m.lm_head(m.model.norm(h))
        want = m(ids).logits
    err = (logits - want).abs().max().item()
    assert err < 1e-5, f"layer runner differs from the model forward by {err}"


# ---------------------------------------------------------------------------------------------
# the methods

def magnitude(m, targets, s, nm, glob):
    L = len(m.model.layers)
    masks = {}
    if glob:
        ws = [(l, k, module(m.model.layers[l], k).weight) for l in range(L) for k in MATS if k in targets]
        flat = torch.cat([w.detach().abs().double().flatten() for _, _, w in ws])
        flags = smallest(flat, count(s, flat.numel()))
        off = 0
        for l, k, w in ws:
            masks[(l, k)] = flags[off: off + w.numel()].reshape(w.shape)
            off += w.numel()
    else:
        for l in range(L):
            for k in MATS:
                if k not in targets:
                    continue
                w = module(m.model.layers[l], k).weight.detach().abs().double()
                if nm[1]:
                    masks[(l, k)] = nm_rows(w, *nm)
                else:
                    masks[(l, k)] = smallest(w.flatten(), count(s, w.numel())).reshape(w.shape)
    with torch.no_grad():
        for (l, k), f in masks.items():
            module(m.model.layers[l], k).weight[f] = 0.0
    return masks


def wanda_layer(layer, stats, targets, s, nm):
    masks = {}
    for k in MATS:
        if k not in targets:
            continue
        w = module(layer, k).weight
        norm = stats[k].sqrt()
        score = w.detach().abs().double() * norm[None, :]
        if nm[1]:
            f = nm_rows(score, *nm)
        else:
            kk = count(s, score.shape[1])
            f = torch.stack([smallest(row, kk) for row in score])
        with torch.no_grad():
            w[f] = 0.0
        masks[k] = f
    return masks


def sparsegpt_factor(H, damp):
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    Lc = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(Lc)
    U = torch.linalg.cholesky(Hinv, upper=True)
    return U, dead


def sparsegpt_matrix(w, U, dead, s, nm, bs):
    W = w.detach().double().clone()
    W[:, dead] = 0
    rows, cols = W.shape
    flags = torch.zeros_like(W, dtype=torch.bool)
    done = 0
    n, mm = nm
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        bc = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        if mm == 0:
            kb = count(s, done + rows * bc) - count(s, done)
            done += rows * bc
            score = W1 ** 2 / torch.diag(U1)[None, :] ** 2
            M1 = smallest(score.flatten(), kb).reshape(rows, bc)
        else:
            M1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(bc):
            if mm and i % mm == 0:
                score = W1[:, i: i + mm] ** 2 / torch.diag(U1)[i: i + mm][None, :] ** 2
                M1[:, i: i + mm] = nm_rows(score, n, mm)
            col = W1[:, i]
            q = col.clone()
            q[M1[:, i]] = 0
            err = (col - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Q1[:, i] = q
            E1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
        flags[:, i1:i2] = M1
    return W, flags


def layerwise(m, ids, method, targets, s, nm):
    run = LayerRunner(m, ids.shape[1])
    points = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}
    masks, weights = {}, {}
    with torch.no_grad():
        h = m.model.embed_tokens(ids)
        for l, layer in enumerate(m.model.layers):
            inputs = {}
            hooks = [module(layer, k).register_forward_hook(
                lambda mod, inp, out, k=k: inputs.__setitem__(k, inp[0].detach().reshape(-1, inp[0].shape[-1]).double()))
                for k in ("q", "o", "gate", "down")]
            run(l, h)  # dense layer l on the inputs of the sparse layers < l
            for hk in hooks:
                hk.remove()
            if method == "wanda":
                stats = {k: (inputs[points[k]] ** 2).sum(0) for k in MATS}
                for k, f in wanda_layer(layer, stats, targets, s, nm).items():
                    masks[(l, k)] = f
            else:
                N = inputs["q"].shape[0]
                fac = {}
                for p in ("q", "o", "gate", "down"):
                    X = inputs[p]
                    fac[p] = sparsegpt_factor(2.0 / N * (X.T @ X), DAMP)
                for k in MATS:
                    if k not in targets:
                        continue
                    w = module(layer, k).weight
                    U, dead = fac[points[k]]
                    W, f = sparsegpt_matrix(w, U, dead, s, nm, BLOCK)
                    w.copy_(W.float())
                    masks[(l, k)] = f
                    weights[(l, k)] = w.detach().clone()
            h = run(l, h)  # the sparse layer feeds the next
    return masks, weights


# ---------------------------------------------------------------------------------------------
# the mask file (docs/sparsity.md), written from the spec

def fnv1a(b):
    h = 0xcbf29ce484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def write_mask(path, masks, method, s, nm, L):
    ids = {"magnitude": 0, "wanda": 1, "sparsegpt": 2}
    order = [(l, k) for l in range(L) for k in MATS if (l, k) in masks]
    b = bytearray(b"TPSPMASK")
    b += struct.pack("<IIiII I d", 1, len(order), ids[method], nm[0], nm[1], 0, 0.0 if nm[1] else s)
    assert len(b) == 40
    for l, k in order:
        f = masks[(l, k)].flatten().numpy().astype(np.uint8)
        name = hf_name(l, k).encode()
        r, c = masks[(l, k)].shape
        b += struct.pack("<I", len(name)) + name + struct.pack("<IIQ", r, c, int(f.sum()))
        b += np.packbits(f, bitorder="little").tobytes()
    b += struct.pack("<Q", fnv1a(bytes(b)))
    with open(path, "wb") as fh:
        fh.write(bytes(b))
    return order


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TAPER_REF_THREADS", "2")))
    out = os.path.join(a.out, "sparsify")
    os.makedirs(out, exist_ok=True)
    mdir = build_model(out)
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, 256, (SAMPLES, SEQ), generator=g)
    check_runner(load_model(mdir), ids)
    ref = {"samples": SAMPLES, "seq_len": SEQ, "damp": DAMP, "blocksize": BLOCK,
           "ids": ids.flatten().tolist(), "cases": []}
    for name, method, s, nm, glob, targets in CASES:
        m = load_model(mdir)
        if method == "magnitude":
            masks, weights = magnitude(m, targets, s, nm, glob), {}
        else:
            masks, weights = layerwise(m, ids, method, targets, s, nm)
        order = write_mask(os.path.join(out, name + ".tpmask"), masks, method, s, nm, len(m.model.layers))
        case = {"name": name, "method": method, "sparsity": s, "nm": list(nm), "global": glob,
                "targets": ",".join(targets), "mask": name + ".tpmask"}
        if weights:
            blob = np.concatenate([weights[key].numpy().astype("<f4").flatten() for key in order])
            blob.tofile(os.path.join(out, name + ".f32"))
            case["weights"] = name + ".f32"
        pruned = sum(int(f.sum()) for f in masks.values())
        total = sum(f.numel() for f in masks.values())
        print(f"sparsify_ref: {name}: {pruned}/{total} pruned")
        ref["cases"].append(case)
    with open(os.path.join(out, "ref.json"), "w") as fh:
        json.dump(ref, fh)


if __name__ == "__main__":
    main()
