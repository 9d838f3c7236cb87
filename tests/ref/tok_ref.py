#!/usr/bin/env python3
"""Reference values for taper's tokenizer, from HF `tokenizers` (the independent reference).

  tok_ref.py --out DIR          writes DIR/tok/: smollm2/ (tokenizer.json + tokenizer_config.json,
                                SmolLM2's real configuration around the GGUF's vocabulary and
                                merges) and expected.json (ids, hashes, decodes) for
                                tests/test_tokenizer.c
                                (and, through tok_spm_ref.py, DIR/tok/spm/)
  tok_ref.py --check-saved DIR  loads a tokenizer folder written by taper (tp_tok_save_hf) with
                                `tokenizers` and with transformers' AutoTokenizer and checks both
                                tokenize the hard cases exactly as expected.json says
  tok_ref.py --gen-unicode PATH writes src/tok/unicode_tables.c: the character classes
                                `tokenizers` uses (Oniguruma's \\p{L}, \\p{N}, \\s; Rust's
                                char::is_numeric), probed from the library itself

SmolLM2-135M-Instruct's tokenizer.json (HuggingFaceTB, the configuration reproduced below):
  normalizer null; pre_tokenizer Sequence[Digits(individual_digits=true),
  ByteLevel(add_prefix_space=false, trim_offsets=true, use_regex=true)]; post_processor
  ByteLevel(add_prefix_space=true, trim_offsets=false, use_regex=true) (no BOS); decoder ByteLevel;
  model BPE with dropout/unk_token/continuing_subword_prefix/end_of_word_suffix null, fuse_unk,
  byte_fallback, ignore_merges false, merges as "a b" strings; added_tokens ids 0..16
  (<|endoftext|>, <|im_start|>, <|im_end|>, <repo_name>, ... <empty_output>), all special with
  lstrip/rstrip/single_word/normalized false. tokenizer_config.json: bos <|im_start|>,
  eos <|im_end|>, unk <|endoftext|>, pad <|im_end|>, tokenizer_class GPT2Tokenizer.
  The GGUF agrees: tokenizer.ggml.pre "smollm" (llama.cpp: \\p{N} split, then the GPT-2 regex),
  bos 1, eos 2, unk 0, pad 2, add_bos_token false, 17 control tokens.

transformers differs from this reference, on purpose not followed: loading the GGUF
(AutoTokenizer(..., gguf_file=...)) builds a plain ByteLevel pre-tokenizer without the Digits
split, and transformers 5 with tokenizer_class "GPT2Tokenizer" rebuilds the GPT-2 pipeline and
ignores tokenizer.json's Digits step too. SmolLM2 has no multi-digit tokens, so ASCII digits
come out alike; they differ where whitespace precedes a digit ("a  1": reference [a, "ĠĠ", 1],
transformers [a, "Ġ", "Ġ", 1]) and on runs of non-ASCII digits (Arabic-Indic, Devanagari,
superscripts, fractions...), whose bytes then merge across characters. The lines where they differ
are listed in expected.json ("transformers_diff").
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_GGUF = os.path.join(os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper")),
                            "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_DATA = os.environ.get("TAPER_DATA", os.path.join(ROOT, "..", "shared", "data"))
HARD = os.path.join(ROOT, "tests", "data", "tok_hard_cases.txt")
DATA_FILES = ["wikitext2/wiki.test.raw", "wikitext2/wiki.test.tokens", "wikitext2/wiki.valid.tokens",
              "tinyshakespeare/input.txt"]
CHUNK = 64  # lines per hash chunk in the data-file expectations

RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
RE_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def fnv(ids, h=0xcbf29ce484222325):
    """FNV-1a 64 over the ids as little-endian int32."""
    for b in struct.pack("<%di" % len(ids), *ids):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def hx(h):
    return "%016x" % h


def lines_of(text):
    """Lines as taper's tests split them: on '\\n' only, no trailing empty line."""
    ls = text.split("\n")
    if ls and ls[-1] == "":
        ls.pop()
    return ls


# ---------------------------------------------------------------- SmolLM2's tokenizer

def read_gguf(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    f = r.fields

    def arr(k):
        return [f[k].contents(i) for i in range(len(f[k].data))]

    def val(k, d=None):
        return f[k].contents() if k in f else d

    return {
        "tokens": arr("tokenizer.ggml.tokens"), "merges": arr("tokenizer.ggml.merges"),
        "types": arr("tokenizer.ggml.token_type"), "pre": val("tokenizer.ggml.pre"),
        "bos": val("tokenizer.ggml.bos_token_id"), "eos": val("tokenizer.ggml.eos_token_id"),
        "unk": val("tokenizer.ggml.unknown_token_id"), "pad": val("tokenizer.ggml.padding_token_id"),
        "add_bos": val("tokenizer.ggml.add_bos_token"),
    }


def smollm2_dict(g):
    """tokenizer.json as SmolLM2 ships it, with the GGUF's vocabulary and merges."""
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(g["tokens"], g["types"])) if ty == 3]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, bl]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(g["tokens"])}, "merges": list(g["merges"])},
    }


def smollm2_config(g):
    tok = g["tokens"]
    return {
        "add_prefix_space": False, "bos_token": tok[g["bos"]], "eos_token": tok[g["eos"]],
        "unk_token": tok[g["unk"]], "pad_token": tok[g["pad"]], "clean_up_tokenization_spaces": False,
        "model_max_length": 8192, "tokenizer_class": "GPT2Tokenizer",
        "additional_special_tokens": [tok[g["bos"]], tok[g["eos"]]],
    }


# Variants: SmolLM2's vocabulary under other pipelines, to check the Llama-3 / Qwen2 / GPT-2
# regexes, the generic (PCRE2) Split, the other Split behaviours, added-token flags and BOS.
# C applies the same patches to the fixture and compares hashes.
def variants(vocab):
    vocab_size = len(vocab)
    bl_noregex = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    bos_template = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                         "tokens": ["<|im_start|>"]}}}

    def split(pat, behavior="Isolated", invert=False, regex=True):
        return {"type": "Split", "pattern": {"Regex" if regex else "String": pat}, "behavior": behavior,
                "invert": invert}

    def added(i, content, **kw):
        d = {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": False}
        d.update(kw)
        return d

    return {
        "gpt2": {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                   "use_regex": True}},
        "gpt2_prefix_space": {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True,
                                                "trim_offsets": True, "use_regex": True}},
        "llama3": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(RE_LLAMA3), bl_noregex]},
                   "post_processor": {"type": "Sequence", "processors": [
                       {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                       bos_template]},
                   "model.ignore_merges": True},
        "qwen2": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(RE_QWEN2), bl_noregex]}},
        "pcre_regex": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+|\s+"), split(r"\s+", "MergedWithNext"), bl_noregex]}},
        "split_behaviors": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(" ", "MergedWithPrevious", regex=False), split("[aeiou]", "Contiguous"),
            {"type": "Digits", "individual_digits": False}, split("x", "Removed", regex=False),
            split(r"\p{P}+", "Isolated", invert=True), bl_noregex]}},
        # "foo", "bar", "ll" are in the vocabulary, so they keep their ids there (HF ignores the
        # id written in added_tokens for those; taper refuses a file where they disagree)
        "added_flags": {"added_tokens+": [
            added(vocab_size, "<mask>", lstrip=True, special=True),
            added(vocab["foo"], "foo", single_word=True, normalized=True),
            added(vocab["bar"], "bar", rstrip=True),
            added(vocab["ll"], "ll", normalized=True),
            added(vocab_size + 1, "<|im", special=True)]},
    }


def apply_variant(base, patch):
    d = json.loads(json.dumps(base))
    for k, v in patch.items():
        if k.startswith("model."):
            d["model"][k[6:]] = v
        elif k.endswith("+"):
            d[k[:-1]] = d[k[:-1]] + v
        else:
            d[k] = v
    return d


def tokenizer_from(d):
    from tokenizers import Tokenizer
    return Tokenizer.from_str(json.dumps(d))


# ---------------------------------------------------------------- expectations

EXTRAS = [  # (text or bytes): newline runs, control bytes, invalid UTF-8, bytes absent from the vocab
    "", " ", "\n", "\n\n\n", "a\nb", "a\n\nb", "a \n b", " \n\n 1", "x\r\n\r\ny", "\t\n", "1\n2\n3",
    "hi  \n  there", "end\n", "\nstart",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "x\x04y", "..\x04..", "\x00", "a\x00b", "\x1b[31mred\x1b[0m", "\x13\x14\x16\x1d",
    "\U00040000", "a\U00041234b", "\U000b0000\U000bffff",
    "a\U00011de0b", "\U00011de5\U00016ff4 x", "x \U00011de5 \U00016ff4y", "  \U00016ff4", "a  \U00011de0", "\U0002ebf0\U00031350",
    b"\xff", b"\xc3", b"\xe2\x82", b"\xe2\x82A", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xe0\x80\x80",
    b"\x80\x80", b"\xc3\xc3\xa9", b"a\xffb", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xed\xbf\xbf",
    b"ok \xf0\x9f\x98\x80 \xf0\x9f\x98 bad", b"12\xff34", b"<|im_\xffstart|>",
]

SPECIAL_TEXTS = ["Hello world", "", "<|im_start|>user", "12 34"]


def as_bytes(x):
    return x if isinstance(x, bytes) else x.encode("utf-8")


def expectations(tok, hard_text, data_dir, g, base_dict):
    from tokenizers import Tokenizer  # noqa: F401
    exp = {}
    lines = lines_of(hard_text)
    enc = tok.encode_batch(lines, add_special_tokens=False)
    hard = {"file": "tests/data/tok_hard_cases.txt", "n_lines": len(lines), "lines": [e.ids for e in enc]}
    whole = tok.encode(hard_text, add_special_tokens=False).ids
    hard["whole"] = whole
    bad_rt = {}
    for i, (ln, e) in enumerate(zip(lines, enc)):
        d = tok.decode(e.ids, skip_special_tokens=False)
        if d != ln:
            bad_rt[str(i)] = d.encode("utf-8").hex()
    hard["decode_differs"] = bad_rt  # lines whose HF decode is not the line itself
    exp["hard_cases"] = hard

    extras = []
    for x in EXTRAS:
        text = as_bytes(x).decode("utf-8", errors="replace")
        ids = tok.encode(text, add_special_tokens=False).ids
        extras.append({"hex": as_bytes(x).hex(), "ids": ids,
                       "decode_hex": tok.decode(ids, skip_special_tokens=False).encode("utf-8").hex(),
                       "decode_skip_hex": tok.decode(ids, skip_special_tokens=True).encode("utf-8").hex()})
    exp["extras"] = extras

    # decoding ids that do not form valid UTF-8, and special-token skipping
    vocab = base_dict["model"]["vocab"]
    bl = byte_level_map()

    def byte_ids(bs):
        return [vocab[bl[b]] for b in bs if bl[b] in vocab]

    dec_cases = [byte_ids(b"\xe2\x82"), byte_ids(b"\xe2\x82A"), byte_ids(b"\xed\xa0\x80"),
                 byte_ids(b"\xc3\xc3\xa9") + [1, 2] + byte_ids(b"ok"), [1, 2, 3, 0, 16],
                 byte_ids(b"\xf0\x9f\x98") + byte_ids(b"\x80"), [2, 2] + byte_ids(b"\xff\xfe"), []]
    exp["decode"] = [{"ids": ids, "skip": skip,
                      "hex": tok.decode(ids, skip_special_tokens=bool(skip)).encode("utf-8").hex()}
                     for ids in dec_cases for skip in (0, 1)]

    exp["special"] = [{"text": t, "ids": tok.encode(t, add_special_tokens=True).ids} for t in SPECIAL_TEXTS]

    vs = {}
    for name, patch in variants(base_dict["model"]["vocab"]).items():
        vd = apply_variant(base_dict, patch)
        vt = tokenizer_from(vd)
        for a in vd["added_tokens"]:  # the fixture's ids must be the ones HF ends up using
            assert vt.token_to_id(a["content"]) == a["id"], (name, a)
        venc = vt.encode_batch(lines, add_special_tokens=False)
        vs[name] = {"patch": patch, "lines_fnv": [hx(fnv(e.ids)) for e in venc],
                    "n_tokens": sum(len(e.ids) for e in venc),
                    "whole_fnv": hx(fnv(vt.encode(hard_text, add_special_tokens=False).ids)),
                    "extras_fnv": [hx(fnv(vt.encode(as_bytes(x).decode("utf-8", "replace"),
                                                    add_special_tokens=False).ids)) for x in EXTRAS],
                    "special": [{"text": t, "ids": vt.encode(t, add_special_tokens=True).ids}
                                for t in SPECIAL_TEXTS]}
    exp["variants"] = vs

    data = []
    for rel in DATA_FILES:
        p = os.path.join(data_dir, rel)
        if not os.path.exists(p):
            print("  (skipping %s: not found)" % p)
            continue
        with open(p, "rb") as f:
            text = f.read().decode("utf-8")
        ls = lines_of(text)
        t0 = time.time()
        e = tok.encode_batch(ls, add_special_tokens=False)
        chunks, counts = [], []
        for c in range(0, len(ls), CHUNK):
            h = 0xcbf29ce484222325
            n = 0
            for x in e[c:c + CHUNK]:
                h = fnv(x.ids + [-1], h)
                n += len(x.ids)
            chunks.append(hx(h))
            counts.append(n)
        w = tok.encode(text, add_special_tokens=False).ids
        data.append({"path": rel, "bytes": len(text.encode("utf-8")), "n_lines": len(ls),
                     "n_tokens": sum(counts), "chunk": CHUNK, "chunk_fnv": chunks, "chunk_tokens": counts,
                     "whole_n": len(w), "whole_fnv": hx(fnv(w))})
        print("  %-32s %6d lines %8d tokens (whole file %d) %.1fs" % (rel, len(ls), sum(counts), len(w),
                                                                      time.time() - t0))
    exp["data"] = data
    return exp


def byte_level_map():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def transformers_diff(gguf_path, hf_dir, lines, ref_lines, extras_ref):
    """Where transformers disagrees with the reference: loading the GGUF, and loading SmolLM2's
    folder (tokenizer_class GPT2Tokenizer)."""
    from transformers import AutoTokenizer
    out = {}
    for name, load in (("gguf", lambda: AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                                                       gguf_file=os.path.basename(gguf_path))),
                       ("hf_folder", lambda: AutoTokenizer.from_pretrained(hf_dir))):
        try:
            at = load()
        except Exception as e:  # report, do not fail: this is a cross-check, not the reference
            out[name] = {"error": repr(e)}
            continue
        diff = [i for i, (ln, ref) in enumerate(zip(lines, ref_lines))
                if at.encode(ln, add_special_tokens=False) != ref]
        ediff = [i for i, (x, ref) in enumerate(zip(EXTRAS, extras_ref))
                 if at.encode(as_bytes(x).decode("utf-8", "replace"), add_special_tokens=False) != ref]
        pre = json.loads(at.backend_tokenizer.to_str()).get("pre_tokenizer")
        out[name] = {"class": type(at).__name__, "pre_tokenizer": pre, "hard_case_lines": diff, "extras": ediff}
    out["note"] = ("transformers builds a plain ByteLevel pre-tokenizer (no Digits split) both from the GGUF and "
                   "for tokenizer_class GPT2Tokenizer; the reference is SmolLM2's tokenizer.json run by tokenizers")
    return out


def versions():
    import tokenizers
    v = {"tokenizers": tokenizers.__version__}
    from importlib.metadata import version, PackageNotFoundError
    for m in ("transformers", "gguf"):
        try:
            v[m] = version(m)
        except PackageNotFoundError:
            v[m] = None
    return v


def cmd_out(args):
    from tokenizers import Tokenizer
    g = read_gguf(args.gguf)
    base = smollm2_dict(g)
    outdir = os.path.join(args.out, "tok")
    sm = os.path.join(outdir, "smollm2")
    os.makedirs(sm, exist_ok=True)
    with open(os.path.join(sm, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(base, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(sm, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(smollm2_config(g), f, ensure_ascii=False, indent=1)
    tok = Tokenizer.from_file(os.path.join(sm, "tokenizer.json"))
    size = os.path.getsize(os.path.join(sm, "tokenizer.json"))
    print("wrote %s (%.2f MB)" % (os.path.join(sm, "tokenizer.json"), size / 1e6))
    assert size < 4e6, "fixture tokenizer.json over 4 MB"
    with open(HARD, "rb") as f:
        hard_text = f.read().decode("utf-8")
    exp = expectations(tok, hard_text, args.data, g, base)
    exp["versions"] = versions()
    exp["gguf"] = {"path": os.path.basename(args.gguf), "pre": g["pre"], "bos": g["bos"], "eos": g["eos"],
                   "unk": g["unk"], "pad": g["pad"], "add_bos": g["add_bos"], "n_tokens": len(g["tokens"]),
                   "n_merges": len(g["merges"])}
    exp["transformers_diff"] = transformers_diff(args.gguf, sm, lines_of(hard_text), exp["hard_cases"]["lines"],
                                                 [e["ids"] for e in exp["extras"]])
    for k in ("gguf", "hf_folder"):
        td = exp["transformers_diff"][k]
        print("transformers AutoTokenizer (%s, %s) differs on %s hard-case lines, %s extras" %
              (k, td.get("class"), len(td.get("hard_case_lines", [])), len(td.get("extras", []))))
    with open(os.path.join(outdir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=True, separators=(",", ":"))
    print("wrote %s (%.0f KB)" % (os.path.join(outdir, "expected.json"),
                                  os.path.getsize(os.path.join(outdir, "expected.json")) / 1e3))


def cmd_check_saved(args):
    """DIR itself, or each subfolder of DIR holding a tokenizer.json (the C test writes json/, gguf/)."""
    root = args.check_saved
    dirs = [root] if os.path.exists(os.path.join(root, "tokenizer.json")) else sorted(
        os.path.join(root, d) for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "tokenizer.json")))
    if not dirs:
        print("check-saved: no tokenizer.json in %s or its subfolders" % root)
        return 1
    bad = 0
    for d in dirs:
        print("== %s" % d)
        bad += check_saved_dir(d, args.expected)
    return 1 if bad else 0


def check_saved_dir(folder, expected):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    with open(expected, encoding="utf-8") as f:
        exp = json.load(f)
    with open(HARD, "rb") as f:
        lines = lines_of(f.read().decode("utf-8"))
    want = exp["hard_cases"]["lines"]
    tk = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    at = AutoTokenizer.from_pretrained(folder)
    bad = 0
    for name, enc in (("tokenizers", lambda s: tk.encode(s, add_special_tokens=False).ids),
                      ("AutoTokenizer", lambda s: at.encode(s, add_special_tokens=False))):
        diff = [i for i, (ln, w) in enumerate(zip(lines, want)) if enc(ln) != w]
        print("%-14s %d/%d hard-case lines identical" % (name, len(lines) - len(diff), len(lines)))
        for i in diff[:5]:
            print("   line %d: %r\n     got  %s\n     want %s" % (i, lines[i][:60], enc(lines[i]), want[i]))
        bad += len(diff)
    for e in exp["extras"]:
        text = bytes.fromhex(e["hex"]).decode("utf-8", "replace")
        for name, got in (("tokenizers", tk.encode(text, add_special_tokens=False).ids),
                          ("AutoTokenizer", at.encode(text, add_special_tokens=False))):
            if got != e["ids"]:
                print("%s on extra %r: got %s want %s" % (name, text[:40], got, e["ids"]))
                bad += 1
    for c in exp["decode"]:
        got = at.decode(c["ids"], skip_special_tokens=bool(c["skip"]))
        if got.encode("utf-8").hex() != c["hex"]:
            print("AutoTokenizer.decode(%s, skip=%d) = %r, want %r" % (c["ids"], c["skip"], got,
                                                                      bytes.fromhex(c["hex"]).decode("utf-8")))
            bad += 1
    for s in exp["special"]:
        got = at(s["text"])["input_ids"]
        if got != s["ids"]:
            print("AutoTokenizer add_special_tokens=True on %r: got %s want %s" % (s["text"], got, s["ids"]))
            bad += 1
    g = exp["gguf"]
    if at.bos_token_id != g["bos"] or at.eos_token_id != g["eos"]:
        print("AutoTokenizer bos/eos %s/%s, expected %s/%s" % (at.bos_token_id, at.eos_token_id, g["bos"], g["eos"]))
        bad += 1
    print("check-saved: %s" % ("OK" if not bad else "%d mismatches" % bad))
    return bad


def cmd_gen_unicode(path):
    import tokenizers
    from tokenizers import pre_tokenizers as P, Regex
    cps = [c for c in range(0x110000) if not (0xD800 <= c <= 0xDFFF)]
    allchars = "".join(chr(c) for c in cps)

    def matched(pat):  # code points the regex engine puts in the class
        keep = set()
        for piece, _ in P.Split(Regex(pat), behavior="removed").pre_tokenize_str(allchars):
            keep.update(map(ord, piece))
        return set(cps) - keep

    spaced = "".join("a" + chr(c) for c in cps if c != ord("a"))
    numeric = {ord(p) for p, _ in P.Digits(individual_digits=True).pre_tokenize_str(spaced)
               if len(p) == 1 and p != "a"}
    sets = {1: matched(r"\p{L}"), 2: matched(r"\p{N}"), 4: matched(r"\s"), 8: numeric}
    flags = {}
    for bit, st in sets.items():
        for c in st:
            flags[c] = flags.get(c, 0) | bit
    for c in range(0x80):  # tp_uclass decides ASCII inline; make sure that agrees
        want = (1 if chr(c).isalpha() else 0) | (10 if chr(c).isdigit() else 0) | \
               (4 if c in (9, 10, 11, 12, 13, 32) else 0)
        if flags.get(c, 0) != want:
            raise SystemExit("ASCII class of %#x is %d in tokenizers, tp_uclass assumes %d" % (c, flags.get(c, 0), want))
    rng = []
    for c in sorted(flags):
        if c < 0x80:
            continue  # ASCII is decided inline in tp_uclass
        if rng and rng[-1][1] == c - 1 and rng[-1][2] == flags[c]:
            rng[-1][1] = c
        else:
            rng.append([c, c, flags[c]])
    out = ["/* GENERATED by tests/ref/tok_ref.py --gen-unicode from tokenizers %s: do not edit.\n"
           " * Character classes as HF tokenizers sees them, for code points >= 0x80:\n"
           " * 1 = Oniguruma \\p{L}, 2 = Oniguruma \\p{N}, 4 = Oniguruma \\s, 8 = Rust char::is_numeric\n"
           " * (the Digits pre-tokenizer). Sorted, disjoint ranges. */" % tokenizers.__version__,
           '#include "tok_internal.h"', "",
           'const char tp_uni_source[] = "tokenizers %s";' % tokenizers.__version__, "",
           "const tp_urange tp_uni_ranges[] = {"]
    row = []
    for lo, hi, f in rng:
        row.append("{0x%X, 0x%X, %d}," % (lo, hi, f))
        if len(row) == 4:
            out.append("    " + " ".join(row))
            row = []
    if row:
        out.append("    " + " ".join(row))
    out += ["};", "", "const size_t tp_uni_n_ranges = sizeof tp_uni_ranges / sizeof tp_uni_ranges[0];", ""]
    with open(path, "w") as f:
        f.write("\n".join(out))
    print("wrote %s: %d ranges (L %d, N %d, WS %d, numeric %d code points)" %
          (path, len(rng), len(sets[1]), len(sets[2]), len(sets[4]), len(sets[8])))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="fixture root; writes OUT/tok/")
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--check-saved", metavar="DIR")
    ap.add_argument("--expected", default=os.path.join(ROOT, "tests", "fixtures", "tok", "expected.json"))
    ap.add_argument("--gen-unicode", metavar="PATH")
    args = ap.parse_args()
    if args.gen_unicode:
        cmd_gen_unicode(args.gen_unicode)
    if args.out:
        cmd_out(args)
        import tok_spm_ref  # the SentencePiece-style fixtures (tests/test_tok_spm.c) beside these
        tok_spm_ref.write(args.out, args.data)
    if args.check_saved:
        return cmd_check_saved(args)
    if not (args.gen_unicode or args.out):
        ap.error("give --out, --check-saved or --gen-unicode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
