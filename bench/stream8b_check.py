"""One forward of a taper HF export in transformers (fp32), compared with taper's logits.

usage: stream8b_check.py DIR PROMPT_FILE CTX TAPER_LOGITS
The prompt is tokenized without special tokens (as `taper ppl` does) and its first CTX tokens are
run; TAPER_LOGITS holds taper's logits for them (`taper ppl --logits`, float32, CTX x vocab).
Prints the largest absolute difference relative to the largest |logit|, and exits 1 above 1e-3.
"""
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    d, prompt, ctx, taper = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    tok = AutoTokenizer.from_pretrained(d)
    ids = tok(open(prompt, encoding="utf-8").read(), add_special_tokens=False)["input_ids"][:ctx]
    if len(ids) < ctx:
        sys.exit(f"the prompt has {len(ids)} tokens, fewer than {ctx}")
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, low_cpu_mem_usage=True)
    model.eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = np.fromfile(taper, dtype=np.float32).reshape(ctx, -1)
    if got.shape != ref.shape:
        sys.exit(f"shapes differ: taper {got.shape}, transformers {ref.shape}")
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    print(f"transformers {model.config.architectures[0]} {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B "
          f"params: max |taper - transformers| / max |logit| = {rel:.2e} over {ctx} x {ref.shape[1]} logits; "
          f"argmax agrees on {agree:.0%} of positions")
    sys.exit(0 if rel <= 1e-3 else 1)


if __name__ == "__main__":
    main()
