#!/usr/bin/env python3
"""Contamination check of bench/quality.sh's distillation data against every scored set: word
13-grams (lower-cased runs of letters and digits, as in GPT-3's contamination analysis) of the
training text (general train.jsonl, and the SDG samples.jsonl when present) looked up in each
scored set. Reports, per scored set, the items (task items, WikiText-2 lines, held-out paragraphs)
sharing at least one 13-gram with the training text, and the fraction of the set's 13-grams seen.
Writes WORK/overlap.json and prints a table.
usage: overlap.py WORK DATA_DIR
"""
import csv
import glob
import json
import os
import re
import sys

N = 13
WORD = re.compile(r"[a-z0-9]+")


def grams(text):
    w = WORD.findall(text.lower())
    return {hash(" ".join(w[i:i + N])) for i in range(len(w) - N + 1)}


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def scored_sets(data, work):
    """name -> list of item texts."""
    s = {}
    s["wikitext2-test"] = [l for l in open(os.path.join(data, "wikitext2/wiki.test.raw"), encoding="utf-8") if l.strip()]
    s["heldout-general"] = [p for p in open(os.path.join(work, "general/heldout.txt"), encoding="utf-8").read().split("\n\n")
                            if p.strip()]
    for t in ("arc_easy", "arc_challenge"):
        s[t] = [d["query"] + " " + " ".join(d["choices"]) for d in jsonl(os.path.join(data, t, t + ".jsonl"))]
    s["winogrande"] = [" ".join(d["context_options"]) + " " + d["continuation"]
                       for d in jsonl(os.path.join(data, "winogrande/winogrande.jsonl"))]
    s["piqa"] = [d["goal"] + " " + d["sol1"] + " " + d["sol2"] for d in jsonl(os.path.join(data, "piqa/valid.jsonl"))]
    lines = open(os.path.join(data, "hellaswag/hellaswag_val_full.txt"), encoding="utf-8").read().split("\n")
    s["hellaswag"] = [" ".join(lines[i:i + 6]) for i in range(0, len(lines) - 5, 6)]
    mm = []
    for p in sorted(glob.glob(os.path.join(data, "mmlu/test/*.csv"))):
        with open(p, encoding="utf-8") as f:
            rows = list(csv.reader(f))
        mm += [" ".join(r[:-1]) for r in rows[1:]]
    s["mmlu"] = mm
    return s


def main():
    work, data = sys.argv[1], sys.argv[2]
    train = set()
    sources = []
    for p in [os.path.join(work, "general/train.jsonl")] + sorted(glob.glob(os.path.join(work, "sdg/samples*.jsonl"))):
        if os.path.exists(p):
            sources.append(p)
            for d in jsonl(p):
                train |= grams(d.get("text", ""))
    out = {"ngram": N, "training_sources": sources, "training_ngrams": len(train), "sets": {}}
    print("| scored set | items | items sharing a %d-gram | %d-grams seen in training |" % (N, N))
    print("|---|---:|---:|---:|")
    for name, items in scored_sets(data, work).items():
        hit, seen, total = 0, 0, 0
        for it in items:
            g = grams(it)
            k = len(g & train)
            hit += k > 0
            seen += k
            total += len(g)
        out["sets"][name] = {"items": len(items), "items_with_overlap": hit, "ngrams": total, "ngrams_seen": seen}
        print("| %s | %d | %d (%.2f %%) | %.4f %% |" % (name, len(items), hit, 100.0 * hit / max(1, len(items)),
                                                      100.0 * seen / max(1, total)))
    with open(os.path.join(work, "overlap.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
