#!/usr/bin/env python3
"""Real general text for distillation that is not any scored domain, from two Debian packages.

  r-cran-janeaustenr   Jane Austen's six novels (texts public domain; package MIT, Julia Silge),
                       stored as R lazy-load data (data/Rdata.rdb + .rdx). Read here with a small
                       reader of R's serialization format (XDR); R itself is not needed.
  python3.11-doc       the Python 3.11 documentation (PSF License), its reStructuredText sources
                       (html/_sources/**/*.rst.txt), roles and directives reduced to plain text.

The packages are fetched with `apt-get download` (no installation) into CACHE/debs and unpacked
with dpkg-deb. Output (OUT_DIR):
  train.jsonl    {"text", "source"} one document per line: every Austen chapter except those of
                 Persuasion, and every Python page except every HOLD-th one (sorted by path)
  heldout.txt    the held-out text: all of Persuasion and the held-out Python pages (never trained
                 on; scored for perplexity as the "held-out general text")
  stats.json     documents, characters and sources of each file, and the package versions
usage: general_text.py OUT_DIR [--cache DIR] [--hold 10]
"""
import argparse
import glob
import json
import os
import re
import struct
import subprocess
import sys
import zlib
import gzip
import bz2
import lzma

PKGS = ["r-cran-janeaustenr", "python3.11-doc"]
HELD_NOVEL = "persuasion"
NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]


def fetch(cache):
    """The two .deb files in cache/debs (downloaded once), unpacked into cache/root."""
    debs = os.path.join(cache, "debs")
    root = os.path.join(cache, "root")
    os.makedirs(debs, exist_ok=True)
    versions = {}
    for p in PKGS:
        have = glob.glob(os.path.join(debs, p + "_*.deb"))
        if not have:
            cmd = ["apt-get", "download", p]
            r = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if r.returncode != 0:  # package lists may be missing on a fresh machine
                subprocess.run(["apt-get", "update"], capture_output=True)
                r = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit("general_text.py: apt-get download %s failed:\n%s" % (p, r.stderr))
            have = glob.glob(os.path.join(debs, p + "_*.deb"))
        deb = sorted(have)[-1]
        versions[p] = os.path.basename(deb)
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root, versions


# ---- R serialization (format versions 2 and 3, XDR), only what lazy-load data of text uses ----
class RReader:
    def __init__(self, b):
        self.b, self.i, self.refs = b, 0, []

    def int(self):
        v = struct.unpack_from(">i", self.b, self.i)[0]
        self.i += 4
        return v

    def header(self):
        if self.b[:2] != b"X\n":
            raise ValueError("not XDR R serialization")
        self.i = 2
        version = self.int()
        self.int()  # writer's R version
        self.int()  # minimal reader version
        if version == 3:
            n = self.int()
            self.i += n  # native encoding name
        return self.item()

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t == 254 or t == 242:  # NILVALUE, empty environment
            return None
        if t == 255:  # reference to an earlier symbol
            k = flags >> 8
            if k == 0:
                k = self.int()
            return self.refs[k - 1]
        if t == 1:  # SYMSXP
            name = self.item()
            self.refs.append(name)
            return name
        if t in (2, 6):  # LISTSXP (pairlist), LANGSXP
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            out = [(tag, car)]
            if isinstance(cdr, list):
                out += cdr
            del attr
            return out
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.i:self.i + n].decode("utf-8", errors="replace")
            self.i += n
            return s
        if t in (10, 13, 14, 16, 19, 20):
            n = self.int()
            if n == -1:
                n = (self.int() << 32) | self.int()
            if t in (10, 13):
                v = list(struct.unpack_from(">%di" % n, self.b, self.i))
                self.i += 4 * n
            elif t == 14:
                v = list(struct.unpack_from(">%dd" % n, self.b, self.i))
                self.i += 8 * n
            else:
                v = [self.item() for _ in range(n)]
            attr = self.item() if has_attr else None
            if t == 19 and attr:  # a named list (a data frame, say): its names
                names = dict(attr).get("names")
                if names and len(names) == len(v):
                    return dict(zip(names, v))
            return v
        raise ValueError("R type %d is not handled" % t)


def unserialize(blob):
    return RReader(blob).header()


def rdb_object(rdb, offset, length):
    """One object of a lazy-load database: 4-byte big-endian length, optional type byte, data."""
    with open(rdb, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    n = struct.unpack(">I", raw[:4])[0]
    kind = raw[4:5]
    if kind == b"2":
        data = bz2.decompress(raw[5:])
    elif kind == b"X":
        data = lzma.decompress(raw[5:])
    elif kind == b"0":
        data = raw[5:]
    else:
        data = zlib.decompress(raw[4:])
    if len(data) != n:
        raise ValueError("lazy-load object: %d bytes, header says %d" % (len(data), n))
    return unserialize(data)


def austen(root):
    base = os.path.join(root, "usr/lib/R/site-library/janeaustenr/data/Rdata")
    with open(base + ".rdx", "rb") as f:
        index = unserialize(gzip.decompress(f.read()))  # saveRDS: a gzip file
    variables = dict(index)["variables"]
    variables = {k: v for k, v in (variables.items() if isinstance(variables, dict) else dict(variables).items())}
    books = {}
    for name in NOVELS:
        off, ln = variables[name]
        books[name] = rdb_object(base + ".rdb", int(off), int(ln))
    return books


def chapters(lines):
    """A novel's lines -> chapters (text), paragraphs joined: blank lines end a paragraph."""
    out, cur, para = [], [], []

    def end_para():
        if para:
            cur.append(" ".join(para))
            para.clear()

    for ln in lines:
        ln = (ln or "").strip()
        if re.match(r"^(CHAPTER|Chapter)\s+[0-9IVXLC]+\b", ln):
            end_para()
            if cur:
                out.append("\n\n".join(cur))
            cur = [ln]
            continue
        if not ln:
            end_para()
        else:
            para.append(ln)
    end_para()
    if cur:
        out.append("\n\n".join(cur))
    return [c for c in out if len(c) > 200]


ROLE = re.compile(r":(?:[a-zA-Z]+:)?[a-zA-Z]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")


def rst_to_text(src):
    """reStructuredText -> plain text: roles become their text, directives and their option lines,
    comments, targets and title underlines go; code blocks and prose stay."""
    out, skip_indent = [], None
    for ln in src.splitlines():
        s = ln.strip()
        ind = len(ln) - len(ln.lstrip())
        if skip_indent is not None:
            if s and ind <= skip_indent:
                skip_indent = None
            else:
                continue
        if s.startswith(".. "):
            m = re.match(r"\.\. ([a-z-]+)::\s*(.*)", s)
            if m and m.group(1) in ("note", "warning", "seealso", "versionadded", "versionchanged",
                                    "deprecated", "code-block", "productionlist"):
                if m.group(2):
                    out.append(ROLE.sub(r"\1", m.group(2)))
                continue  # the indented body stays
            skip_indent = ind  # comments, targets, index, toctree, function signatures' options...
            if m and m.group(1) in ("function", "method", "class", "attribute", "data", "exception",
                                    "decorator", "module", "describe", "envvar", "option"):
                out.append(m.group(2))
                skip_indent = None
            continue
        if s and len(set(s)) == 1 and s[0] in "=-~*^#+" and len(s) >= 3:
            continue  # title over/underline
        if re.match(r"^\s*:[a-zA-Z -]+:\s*\S*$", ln) and ind > 0:
            continue  # directive option line
        ln = ROLE.sub(r"\1", ln)
        ln = re.sub(r"``([^`]*)``", r"\1", ln)
        ln = re.sub(r"`([^`<]*?)\s*<[^>]*>`_+", r"\1", ln)
        ln = re.sub(r"\*\*([^*]+)\*\*", r"\1", ln)
        out.append(ln.rstrip())
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


def python_docs(root):
    base = os.path.join(root, "usr/share/doc/python3.11/html/_sources")
    pages = []
    for sub in ["tutorial", "howto", "faq", "reference", "using", "library"]:
        pages += sorted(glob.glob(os.path.join(base, sub, "**", "*.rst.txt"), recursive=True))
    pages.append(os.path.join(base, "glossary.rst.txt"))
    out = []
    for p in sorted(pages):
        with open(p, encoding="utf-8", errors="replace") as f:
            t = rst_to_text(f.read())
        if len(t) > 200:
            out.append((os.path.relpath(p, base), t))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper")),
                                                    "general-text"))
    ap.add_argument("--hold", type=int, default=10, help="every HOLD-th Python page is held out (default 10)")
    a = ap.parse_args()
    root, versions = fetch(a.cache)
    os.makedirs(a.out_dir, exist_ok=True)
    stats = {"packages": versions, "train": {}, "heldout": {}}
    train, held = [], []
    for name, lines in austen(root).items():
        ch = chapters(lines)
        if len(ch) < 5:
            sys.exit("general_text.py: %s gave only %d chapters: the package's data changed?" % (name, len(ch)))
        (held if name == HELD_NOVEL else train).extend(("austen/" + name, c) for c in ch)
    for i, (path, text) in enumerate(python_docs(root)):
        (held if i % a.hold == a.hold - 1 else train).append(("python-docs/" + path, text))
    for label, docs in (("train", train), ("heldout", held)):
        for src, text in docs:
            k = src.split("/")[0]
            d = stats[label].setdefault(k, {"documents": 0, "characters": 0})
            d["documents"] += 1
            d["characters"] += len(text)
    tmp = os.path.join(a.out_dir, "train.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for src, text in train:
            f.write(json.dumps({"text": text, "source": src}, ensure_ascii=False) + "\n")
    os.replace(tmp, os.path.join(a.out_dir, "train.jsonl"))
    tmp = os.path.join(a.out_dir, "heldout.txt.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n\n".join(t for _, t in held) + "\n")
    os.replace(tmp, os.path.join(a.out_dir, "heldout.txt"))
    with open(os.path.join(a.out_dir, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
