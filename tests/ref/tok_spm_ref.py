#!/usr/bin/env python3
"""Reference values for taper's SentencePiece-style tokenizers (BPE on UTF-8 characters with byte
fallback, U+2581 for spaces) and normalizers, from HF `tokenizers` and transformers.

  tok_spm_ref.py --out DIR     writes DIR/tok/spm/: llama-spm.tokenizer.json (minified) and
                               expected.json for tests/test_tok_spm.c

The base tokenizer.json is what transformers (AutoTokenizer with gguf_file=) builds from
llama.cpp's models/ggml-vocab-llama-spm.gguf (the Llama 2 vocabulary: 32000 pieces with scores,
<0x00>..<0xFF> byte tokens): model BPE with merges derived from the scores, byte_fallback, fuse_unk,
pre_tokenizer Metaspace(prepend_scheme "first", split false), decoder Sequence[Replace("\u2581", " "),
ByteFallback, Fuse, Strip(" ", 1, 0)], post-processor <s> $A. The variants are that file with a few
top-level (or model) fields replaced; each patch is written into expected.json, and the C test
applies the same patch, so both sides tokenize with the same tokenizer.json:

  metaspace_first   the base as transformers writes it
  legacy_prepend    normalizer Sequence[Prepend("\u2581"), Replace(" ", "\u2581")], no pre-tokenizer
                    (the shape transformers gives Phi-3's GGUF, and Llama 2's original tokenizer.json)
  gemma_style       normalizer Replace(" ", "\u2581") only, decoder without Strip (Gemma's shape)
  metaspace_split   Metaspace(prepend_scheme "always", split true), decoder Metaspace
  nfkc_unk          normalizer Sequence[NFKC, Prepend, Replace], byte_fallback off, unk <unk>
                    (fuse_unk), ignore_merges on
  qwen2_nfc         SmolLM2's tokenizer.json (tests/fixtures/tok/smollm2) with Qwen2's pipeline
                    and the NFC normalizer real Qwen2 / Qwen2.5 tokenizer.json files carry
  nfd_lower         SmolLM2's with normalizer Sequence[NFD, Lowercase]

The texts: tests/data/tok_hard_cases.txt line by line, extra strings aimed at prefix spaces,
added tokens, byte fallback and normalization, and the first lines of the shared data files
(TAPER_DATA), hashed per chunk as tok_ref.py does.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tok_ref  # noqa: E402  (fnv, hx, lines_of, paths)

ROOT = tok_ref.ROOT
CACHE = os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper"))
LLAMA_SRC = os.environ.get("TAPER_LLAMA_CPP_SRC") or os.path.join(CACHE, "llama.cpp-0.3.36")
DATA_FILES = ["wikitext2/wiki.test.raw", "tinyshakespeare/input.txt"]
DATA_LINES = 512
CHUNK = 64
SP = "\u2581"

EXTRAS = ["", " ", "  ", "Hello", " Hello", "  Hello", "Hello ", "a  b", "\n", "\n\n x", "\t\tindent",
          "<s>", "a<s>b", " <s> a", "</s></s>", "<unk>", "<0x41>", "caf\u00e9 cafe\u0301", "\ufb01ne \u2460 \uff21",
          "\u0130stanbul \u00c9T\u00c9", "\U0001F600\U0001F44D\U0001F3FD", "\u4e2d\u6587\u6d4b\u8bd5", "\u0000\u0001\u007f",
          "tab\tand\u00a0nbsp\u3000ideo", "\u2581already\u2581escaped", "x" * 300, " ".join(["word"] * 50),
          "12345 6789 3.14159", "e\u0301\u0301\u0301", "\uac00\u1100\u1161\u11a8"]

QWEN2_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": tok_ref.RE_QWEN2}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


def variants():
    prepend = {"type": "Prepend", "prepend": SP}
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SP}
    dec_noscrip = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": SP}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return [
        ("metaspace_first", "llama-spm", {}, {}),
        ("legacy_prepend", "llama-spm", {"normalizer": {"type": "Sequence", "normalizers": [prepend, replace]},
                                         "pre_tokenizer": None}, {}),
        ("gemma_style", "llama-spm", {"normalizer": replace, "pre_tokenizer": None, "decoder": dec_noscrip}, {}),
        ("metaspace_split", "llama-spm",
         {"pre_tokenizer": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "always", "split": True},
          "decoder": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "always", "split": True}}, {}),
        ("nfkc_unk", "llama-spm",
         {"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, prepend, replace]},
          "pre_tokenizer": None},
         {"byte_fallback": False, "unk_token": "<unk>", "fuse_unk": True, "ignore_merges": True}),
        ("qwen2_nfc", "smollm2", {"normalizer": {"type": "NFC"}, "pre_tokenizer": QWEN2_PRE}, {}),
        ("nfd_lower", "smollm2", {"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFD"},
                                                                                      {"type": "Lowercase"}]}}, {}),
    ]


def patched(base, patch, model_patch):
    j = json.loads(json.dumps(base))
    for k, v in patch.items():
        j[k] = v
    for k, v in model_patch.items():
        j["model"][k] = v
    return j


def expectations(tok, data_dir):
    from tokenizers import Tokenizer  # noqa: F401
    with open(tok_ref.HARD, encoding="utf-8", newline="") as f:
        hard = tok_ref.lines_of(f.read())
    out = {"hard": [], "hard_decode_hex": [], "extras": [], "data": {}}
    for line in hard:
        ids = tok.encode(line, add_special_tokens=False).ids
        out["hard"].append(ids)
        dec = tok.decode(ids, skip_special_tokens=False)
        out["hard_decode_hex"].append(None if dec == line else dec.encode("utf-8").hex())  # null: the line itself
    for s in EXTRAS:
        ids = tok.encode(s, add_special_tokens=False).ids
        out["extras"].append({
            "hex": s.encode("utf-8").hex(), "ids": ids,
            "ids_special": tok.encode(s, add_special_tokens=True).ids,
            "decode_hex": tok.decode(ids, skip_special_tokens=False).encode("utf-8").hex(),
            "decode_skip_hex": tok.decode(ids, skip_special_tokens=True).encode("utf-8").hex()})
    for rel in DATA_FILES:
        path = os.path.join(data_dir, rel)
        if not os.path.exists(path):
            sys.exit("tok_spm_ref: %s is missing (set TAPER_DATA)" % path)
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        lines = tok_ref.lines_of(text)[:DATA_LINES]
        chunks, total, h = [], 0, tok_ref.fnv([])
        for i, line in enumerate(lines):
            ids = tok.encode(line, add_special_tokens=False).ids
            total += len(ids)
            h = tok_ref.fnv(ids, h)
            if (i + 1) % CHUNK == 0 or i + 1 == len(lines):
                chunks.append(tok_ref.hx(h))
                h = tok_ref.fnv([])
        out["data"][rel] = {"lines": len(lines), "tokens": total, "chunk": CHUNK, "fnv": chunks}
    return out


def write(out, data):
    """Writes OUT/tok/spm/ (also called by tok_ref.py --out, so `make test-ref` regenerates it)."""
    import tokenizers
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    models = os.path.join(LLAMA_SRC, "models")
    if not os.path.exists(os.path.join(models, "ggml-vocab-llama-spm.gguf")):
        sys.exit("tok_spm_ref: %s/ggml-vocab-llama-spm.gguf not found (make deps, or TAPER_LLAMA_CPP_SRC)" % models)
    hf = AutoTokenizer.from_pretrained(models, gguf_file="ggml-vocab-llama-spm.gguf")
    base = {"llama-spm": json.loads(hf.backend_tokenizer.to_str())}
    with open(os.path.join(ROOT, "tests", "fixtures", "tok", "smollm2", "tokenizer.json"), encoding="utf-8") as f:
        base["smollm2"] = json.load(f)
    od = os.path.join(out, "tok", "spm")
    os.makedirs(od, exist_ok=True)
    with open(os.path.join(od, "llama-spm.tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(base["llama-spm"], ensure_ascii=False, separators=(",", ":")))
    exp = {"source": "transformers %s, tokenizers %s; base llama-spm from %s/ggml-vocab-llama-spm.gguf"
                     % (transformers.__version__, tokenizers.__version__, "llama.cpp-0.3.36/models"),
           "data_lines": DATA_LINES, "variants": []}
    for name, b, patch, model_patch in variants():
        tok = Tokenizer.from_str(json.dumps(patched(base[b], patch, model_patch)))
        v = {"name": name, "base": b, "patch": patch, "model_patch": model_patch}
        v.update(expectations(tok, data))
        exp["variants"].append(v)
        print("tok_spm_ref: %-16s %d hard-case tokens, data %s" % (
            name, sum(len(x) for x in v["hard"]), {k: d["tokens"] for k, d in v["data"].items()}))
    with open(os.path.join(od, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=tok_ref.DEFAULT_DATA)
    a = ap.parse_args()
    write(a.out, a.data)


if __name__ == "__main__":
    main()
