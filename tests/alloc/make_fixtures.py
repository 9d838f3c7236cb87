#!/usr/bin/env python3
"""Writes the small tokenizer fixtures of tests/alloc/alloc_fail.c (run from the repository root):
cut-down copies of the SmolLM2 (byte-level BPE) and Llama SentencePiece-converted tokenizer.json
fixtures, with a few extra steps (a custom regex Split, normalizers, a chat template) so that the
allocation-failure runs reach PCRE2, utf8proc and tokenizer_config.json. Loading the full files
once per injected failure would take far too long; a few hundred pieces exercise the same code."""
import json
import os

OUT = "tests/alloc/fixtures"
KEEP = 600  # model pieces kept (ids 0..KEEP-1)


def cut(t):
    m = t["model"]
    vocab = {p: i for p, i in m["vocab"].items() if i < KEEP}
    merges = []
    for mg in m["merges"]:
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["vocab"] = vocab
    m["merges"] = merges
    t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < KEEP]
    return t


def write(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    bpe = cut(json.load(open("tests/fixtures/tok/smollm2/tokenizer.json", encoding="utf-8")))
    bpe["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}]}
    bpe["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "[0-9]+|[^0-9\\s]+|\\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    os.makedirs(f"{OUT}/bpe", exist_ok=True)
    write(f"{OUT}/bpe/tokenizer.json", bpe)
    cfg = json.load(open("tests/fixtures/tok/smollm2/tokenizer_config.json", encoding="utf-8"))
    cfg["chat_template"] = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    write(f"{OUT}/bpe/tokenizer_config.json", cfg)

    spm = cut(json.load(open("tests/fixtures/tok/spm/llama-spm.tokenizer.json", encoding="utf-8")))
    spm["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Replace", "pattern": {"String": "\t"}, "content": " "}]}
    os.makedirs(f"{OUT}/spm", exist_ok=True)
    write(f"{OUT}/spm/tokenizer.json", spm)


main()
