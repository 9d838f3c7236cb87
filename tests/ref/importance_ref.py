"""Reference values for taper's importance scores and pruned exports, from PyTorch/transformers.

Default mode (--out DIR) loads the default model (SmolLM2-135M-Instruct Q4_1 GGUF, dequantised by
transformers), takes the first 4 samples of 64 tokens of wikitext2/wiki.valid.tokens (whole file
tokenized without BOS, as `taper importance` does), and computes with forward hooks the same
definitions as src/compress/importance.c (see docs/pruning.md):

  per sample s: a_s = agg_seq over positions of the per-position value; score = agg_batch over
  samples of a_s; mean = mean|v|, l2 = sqrt(sum v^2), var = population variance (float64).
  heads:    L2 norm of each head's slice of o_proj's input (per position)
  kv:       sum of the group's query-head scores
  neurons:  down_proj's input (act) and gate_proj's output (gate)
  channels: each of input_layernorm, post_attention_layernorm (every layer) and model.norm
            outputs scored alone, then summed
  BI:       1 - mean over all positions of cos(layer input, layer output)
  losses:   mean next-token NLL over the 4 samples, full model and with each layer removed
            (forward hook returning the layer's input), and with layers 12-17 removed

It writes DIR/importance/ref.json (ids, settings, BI, losses, the layout of the blob) and
DIR/importance/scores.f32 (float32 LE): for each of the 9 (batch, seq) pairs heads (L, nh),
kv_groups (L, nkv), channels (d), neurons of layers 0, 15, 29 (3, ff) and the per-layer sum of
neuron scores (L); then the gate-source neurons for the default pair (l2, mean) the same way.

--check-pruned DIR loads every export taper's C test left in DIR (one HF folder per subfolder,
with input.json and taper_logits.f32) with plain AutoModelForCausalLM and compares logits with
taper's forward of the same pruned model: max |diff| <= 1e-3.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper"))
MODEL = os.environ.get("TAPER_MODEL", os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf"))
DATA = os.environ.get("TAPER_DATA", os.path.join(HERE, "..", "..", "..", "shared", "data"))
AGGS = ["mean", "l2", "var"]
N_SAMPLES, SEQ_LEN = 4, 64
NEURON_LAYERS = [0, 15, 29]
BLOCK = (12, 17)


def load_ref():
    torch.set_num_threads(int(os.environ.get("TAPER_REF_THREADS", "2")))
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL), dtype=torch.float32
    ).eval()


def tokenizer(out_dir):
    from tokenizers import Tokenizer
    for d in (out_dir, os.path.join(HERE, "..", "fixtures")):
        p = os.path.join(d, "tok", "smollm2", "tokenizer.json")
        if os.path.exists(p):
            return Tokenizer.from_file(p)
    sys.exit("importance_ref: tok/smollm2/tokenizer.json not found")


def agg(v, k, dim):
    """v float64; reduce dim with mean|v|, sqrt(sum v^2) or population variance."""
    if k == "mean":
        return v.abs().mean(dim)
    if k == "l2":
        return v.pow(2).sum(dim).sqrt()
    return v.var(dim, unbiased=False)


def score(v, b, q):
    """v: (S, T, W) per-position values -> (W,) = agg_b over samples of agg_q over positions."""
    return agg(agg(v, q, 1), b, 0)


class Recorder:
    def __init__(self, model):
        self.m = model
        self.hooks = []
        self.acts = {}
        L = model.config.num_hidden_layers
        for l, layer in enumerate(model.model.layers):
            self._out(layer.input_layernorm, ("norm", 2 * l))
            self._out(layer.post_attention_layernorm, ("norm", 2 * l + 1))
            self._in(layer.self_attn.o_proj, ("attn", l))
            self._in(layer.mlp.down_proj, ("act", l))
            self._out(layer.mlp.gate_proj, ("gate", l))
            self._in(layer, ("layer_in", l))
            self._out(layer, ("layer_out", l))
        self._out(model.model.norm, ("norm", 2 * L))

    def _in(self, mod, key):
        def pre(m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.acts[key] = x.detach().double()
        self.hooks.append(mod.register_forward_pre_hook(pre, with_kwargs=True))

    def _out(self, mod, key):
        def post(m, args, out):
            self.acts[key] = (out[0] if isinstance(out, tuple) else out).detach().double()
        self.hooks.append(mod.register_forward_hook(post))

    def remove(self):
        for h in self.hooks:
            h.remove()


@torch.no_grad()
def lm_loss(model, x, skip=()):
    hooks = []
    for l in skip:
        def ident(m, args, kwargs, out):
            return args[0] if args else kwargs["hidden_states"]
        hooks.append(model.model.layers[l].register_forward_hook(ident, with_kwargs=True))
    lg = model(x).logits.double()
    for h in hooks:
        h.remove()
    lp = torch.log_softmax(lg[:, :-1], -1)
    nll = -lp.gather(2, x[:, 1:, None])[..., 0]
    return float(nll.mean())


@torch.no_grad()
def write_ref(model, tok, out_dir):
    path = os.path.join(DATA, "wikitext2", "wiki.valid.tokens")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    ids = tok.encode(text, add_special_tokens=False).ids[: N_SAMPLES * SEQ_LEN]
    x = torch.tensor(ids).view(N_SAMPLES, SEQ_LEN)
    cfg = model.config
    L, nh, nkv, ff, d = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                         cfg.intermediate_size, cfg.hidden_size)
    hd = getattr(cfg, "head_dim", None) or d // nh
    rec = Recorder(model)
    model(x)
    rec.remove()
    A = rec.acts
    heads = [A[("attn", l)].view(N_SAMPLES, SEQ_LEN, nh, hd).pow(2).sum(-1).sqrt() for l in range(L)]
    blob, layout = [], []

    def put(name, pair, arr):
        a = np.asarray(arr, dtype=np.float64).ravel()
        layout.append({"name": name, "pair": pair, "offset": sum(len(b) for b in blob), "count": len(a)})
        blob.append(a)

    for bi, b in enumerate(AGGS):
        for qi, q in enumerate(AGGS):
            pair = bi * 3 + qi
            H = torch.stack([score(heads[l], b, q) for l in range(L)])
            put("heads", pair, H)
            put("kv_groups", pair, H.view(L, nkv, nh // nkv).sum(-1))
            ch = sum(score(A[("norm", p)], b, q) for p in range(2 * L + 1))
            put("channels", pair, ch)
            N = [score(A[("act", l)], b, q) for l in range(L)]
            put("neurons", pair, torch.stack([N[l] for l in NEURON_LAYERS]))
            put("neuron_sums", pair, torch.stack([n.sum() for n in N]))
    default = 1 * 3 + 0
    G = [score(A[("gate", l)], "l2", "mean") for l in range(L)]
    put("gate_neurons", default, torch.stack([G[l] for l in NEURON_LAYERS]))
    put("gate_neuron_sums", default, torch.stack([g.sum() for g in G]))
    cos = torch.nn.functional.cosine_similarity
    bi_ = [float(1 - cos(A[("layer_in", l)], A[("layer_out", l)], dim=-1).mean()) for l in range(L)]
    base = lm_loss(model, x)
    layer_loss = []
    for l in range(L):
        layer_loss.append(lm_loss(model, x, [l]))
        print(f"importance_ref: layer {l} removed: loss {layer_loss[-1]:.6f}", flush=True)
    block_loss = lm_loss(model, x, range(BLOCK[0], BLOCK[1] + 1))
    os.makedirs(out_dir, exist_ok=True)
    np.concatenate(blob).astype("<f4").tofile(os.path.join(out_dir, "scores.f32"))
    with open(os.path.join(out_dir, "ref.json"), "w") as f:
        json.dump({
            "model": os.path.basename(MODEL), "data": "wikitext2/wiki.valid.tokens",
            "transformers": __import__("transformers").__version__, "torch": torch.__version__,
            "samples": N_SAMPLES, "seq_len": SEQ_LEN, "ids": ids, "aggs": AGGS,
            "neuron_layers": NEURON_LAYERS, "blob": "scores.f32", "layout": layout,
            "block_influence": bi_, "base_loss": base, "layer_removed_loss": layer_loss,
            "block": list(BLOCK), "block_removed_loss": block_loss,
        }, f, indent=1)
    print(f"importance_ref: wrote {out_dir}/ref.json and scores.f32 ({sum(len(b) for b in blob)} floats); "
          f"base loss {base:.6f}")


@torch.no_grad()
def check_pruned(root):
    subs = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "taper_logits.f32")))
    if not subs:
        sys.exit(f"importance_ref: no pruned exports (*/taper_logits.f32) in {root}")
    worst_all = 0.0
    for s in subs:
        d = os.path.join(root, s)
        with open(os.path.join(d, "input.json")) as f:
            ids = json.load(f)["ids"]
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        lg = model(torch.tensor([ids])).logits[0].float().numpy()
        ref = np.fromfile(os.path.join(d, "taper_logits.f32"), dtype="<f4").reshape(lg.shape)
        worst = float(np.abs(lg - ref).max())
        worst_all = max(worst_all, worst)
        c = model.config
        print(f"pruned {s}: {type(model).__name__} hidden {c.hidden_size} ffn {c.intermediate_size} heads "
              f"{c.num_attention_heads}/{c.num_key_value_heads} head_dim {c.head_dim} layers {c.num_hidden_layers}: "
              f"max |dlogit| transformers vs taper = {worst:.3g}")
        if worst > 1e-3:
            sys.exit(f"pruned {s}: logits differ by {worst}")
        del model
    print(f"importance_ref: {len(subs)} pruned exports load in transformers, max |dlogit| {worst_all:.3g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="write DIR/importance/{ref.json,scores.f32}")
    ap.add_argument("--check-pruned", help="folder of pruned exports written by the C suite")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TAPER_REF_THREADS", "2")))
    if a.check_pruned:
        check_pruned(a.check_pruned)
    if a.out:
        write_ref(load_ref(), tokenizer(a.out), os.path.join(a.out, "importance"))


if __name__ == "__main__":
    main()
