"""Reference values for taper on the real Gemma-3-270M (Q4_K_M GGUF fetched by `make deps`), from
HF transformers loading the same GGUF (its loader dequantises with gguf-py and takes the norm
weights back from llama.cpp's 1 + w).

Writes OUT/gemma3/:
  ref.json   prompt ids (tokenizer from the GGUF, BOS added) with, per position, the argmax, the
             max |logit|, the top-8 ids; the ids of 4 chunks of 512 tokens of wiki.test.raw (no BOS,
             the chunks protocol) and each chunk's NLL sum over its 511 scored tokens; a greedy
             continuation of 64 tokens (EOS ignored)
  sub.f32    logits of every prompt position at 256 fixed vocabulary ids ("sub_ids"), float32 LE
"""
import argparse
import json
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper"))
MODEL = os.environ.get("TAPER_GEMMA3", os.path.join(CACHE, "gemma-3-270m-q4_k_m.gguf"))
DATA = os.environ.get("TAPER_DATA", os.path.join(HERE, "..", "..", "..", "shared", "data"))

PROMPT = ("The history of the Roman Empire spans many centuries. It began when Augustus became the first "
          "emperor, after a long period of civil war. Over the following centuries the empire grew to include "
          "lands around the whole Mediterranean Sea, and its roads, laws and language shaped Europe for a very "
          "long time afterwards. Historians still argue about why it declined.")
GREEDY_PROMPT = "The capital of France is"
CHUNK, N_CHUNKS = 512, 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TAPER_REF_THREADS", "2")))
    d, f = os.path.dirname(MODEL), os.path.basename(MODEL)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    out = os.path.join(a.out, "gemma3")
    os.makedirs(out, exist_ok=True)
    ref = {"model": f}

    ids = tok(PROMPT)["input_ids"]
    rng = np.random.default_rng(3)
    sub = np.sort(rng.choice(m.config.vocab_size, 256, replace=False))
    with torch.no_grad():
        lg = m(torch.tensor([ids])).logits[0].float().numpy()
    ref["prompt_ids"] = ids
    ref["argmax"] = lg.argmax(-1).tolist()
    ref["max_abs"] = np.abs(lg).max(-1).tolist()
    ref["top8"] = np.argsort(-lg, -1)[:, :8].tolist()
    ref["sub_ids"] = sub.tolist()
    lg[:, sub].astype("<f4").tofile(os.path.join(out, "sub.f32"))

    with open(os.path.join(DATA, "wikitext2", "wiki.test.raw"), encoding="utf-8") as fh:
        text = fh.read(40000)
    wid = tok(text, add_special_tokens=False)["input_ids"]
    assert len(wid) >= CHUNK * N_CHUNKS, len(wid)
    chunks, nll = [], []
    with torch.no_grad():
        for c in range(N_CHUNKS):
            x = wid[c * CHUNK:(c + 1) * CHUNK]
            lp = torch.log_softmax(m(torch.tensor([x])).logits[0].double(), -1)
            nll.append(float(-lp[torch.arange(CHUNK - 1), torch.tensor(x[1:])].sum()))
            chunks.append(x)
    ref["text_chars"] = 40000
    ref["chunk_ids"] = chunks
    ref["chunk_nll"] = nll
    ref["ppl"] = float(np.exp(sum(nll) / (N_CHUNKS * (CHUNK - 1))))

    g = tok(GREEDY_PROMPT)["input_ids"]
    with torch.no_grad():
        gen = m.generate(torch.tensor([g]), max_new_tokens=64, do_sample=False, eos_token_id=None,
                         pad_token_id=0)[0, len(g):].tolist()
    ref["greedy_prompt"] = g
    ref["greedy"] = gen
    with open(os.path.join(out, "ref.json"), "w") as fh:
        json.dump(ref, fh)
    print(f"gemma3_ref: {len(ids)} prompt tokens, ppl {ref['ppl']:.4f} over {N_CHUNKS}x{CHUNK}, "
          f"greedy: {tok.decode(gen)[:80]!r}")


if __name__ == "__main__":
    main()
