"""Reference values for `taper eval`, from lm-evaluation-harness itself.

Runs lm_eval (pinned in requirements.txt) on the default model (SmolLM2-135M-Instruct Q4_1 GGUF,
dequantised to fp32 by transformers) with the exact SmolLM2 tokenizer, zero-shot, on the files in
../shared/data, through the task configs in tests/ref/lm_eval_tasks/ (the harness's own task
definitions with the dataset swapped for local docs; their Python hooks import the harness's own
functions). The local files are first converted into the harness's dataset schemas:

  arc_easy, arc_challenge  MosaicML {query, choices, gold} -> {question, choices{text,label}, answerKey}
  hellaswag                llama.cpp 6-line blocks -> {activity_label, ctx_a, ctx_b, endings, label}
                           (ctx_a/ctx_b split guessed, see split_hellaswag_ctx; taper guesses alike)
  piqa                     valid.jsonl + valid-labels.lst -> {goal, sol1, sol2, label}
  winogrande               MosaicML {context_options, continuation, gold} -> {sentence, option1,
                           option2, answer}
  mmlu                     CSVs (header, answer 0-3) -> {question, subject, choices, answer}, one
                           task per subject plus the harness's groups (stem/other/social/humanities)
  wikitext                 wiki.test.raw split into pages as EleutherAI/wikitext_document_level does

Writes OUT/eval/<task>.json: the settings, the aggregate metrics as the harness reports them, and
per item the harness's log-likelihood of every request (rounded to 1e-4), its greedy flags, the
chosen answers (argmax of ll and of ll/len(choice)), the gold index, and an FNV-1a-64 hash of the
exact (context, continuation) strings it built; the first items' strings are kept verbatim.
Wikitext: per document the rolling log-likelihood, word and byte counts and the text hash.

With --formats-only no model runs: the harness only builds its requests, for every item of every
task (no limit), and OUT/eval_formats/<task>.json gets the same layout without log-likelihoods
(TAPER_FIXTURES=OUT/eval_formats/.. then checks taper's prompts for all items).

usage: eval_ref.py --out OUT [--limit 500] [--tasks arc_easy,...] [--batch 8] [--threads 2] [--formats-only]
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
CACHE = os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper"))
MODEL = os.environ.get("TAPER_MODEL", os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf"))
DATA = os.environ.get("TAPER_DATA", os.path.join(ROOT, "..", "shared", "data"))
TOKDIR = os.path.join(ROOT, "tests", "fixtures", "tok", "smollm2")
ALL_TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu", "wikitext"]
N_VERBATIM = 3  # items whose exact strings are stored

# lm_eval/tasks/mmlu/_generate_configs.py: subject -> category
MMLU_CATEGORY = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem",
    "elementary_mathematics": "stem", "formal_logic": "humanities", "global_facts": "other",
    "high_school_biology": "stem", "high_school_chemistry": "stem",
    "high_school_computer_science": "stem", "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences", "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences", "high_school_physics": "stem",
    "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities",
    "human_aging": "other", "human_sexuality": "social_sciences", "international_law": "humanities",
    "jurisprudence": "humanities", "logical_fallacies": "humanities", "machine_learning": "stem",
    "management": "other", "marketing": "other", "medical_genetics": "other",
    "miscellaneous": "other", "moral_disputes": "humanities", "moral_scenarios": "humanities",
    "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities",
    "professional_medicine": "other", "professional_psychology": "social_sciences",
    "public_relations": "social_sciences", "security_studies": "social_sciences",
    "sociology": "social_sciences", "us_foreign_policy": "social_sciences", "virology": "other",
    "world_religions": "humanities",
}


def fnv64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def req_hash(pairs):
    """Hash of the exact strings of one item's requests: ctx \\0 cont \\1 for each."""
    return fnv64("".join(c + "\0" + t + "\1" for c, t in pairs))


def dump_fixture(rec, path):
    """The fixture JSON with one item per line (small, diff-friendly)."""
    key = "items" if "items" in rec else "docs"
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        for k, v in rec.items():
            if k != key:
                f.write("%s: %s,\n" % (json.dumps(k), json.dumps(v, ensure_ascii=False)))
        f.write("%s: [\n" % json.dumps(key))
        f.write(",\n".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) for x in rec[key]))
        f.write("\n]}\n")


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


# ---- local files -> the harness's dataset schemas ----

def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def docs_arc(name):
    out = []
    for d in read_jsonl(os.path.join(DATA, name, name + ".jsonl")):
        q = d["query"]
        assert q.startswith("Question: "), q
        labels = "ABCDE"[: len(d["choices"])]
        out.append({"question": q[len("Question: "):],
                    "choices": {"text": d["choices"], "label": list(labels)},
                    "answerKey": labels[d["gold"]]})
    return out


def split_hellaswag_ctx(ctx):
    """Guess ctx_a / ctx_b from ctx = ctx_a + " " + ctx_b (the file keeps only ctx). HellaSwag's
    ctx_b is the lower-case start of an unfinished last sentence (ActivityNet items) or empty
    (most WikiHow items): take the text after the last ". ", "! " or "? " when it starts with a
    lower-case ASCII letter, else no ctx_b. taper's loader (src/eval/tasks.c) guesses the same."""
    cut = max(ctx.rfind(". "), ctx.rfind("! "), ctx.rfind("? "))
    if cut >= 0 and "a" <= ctx[cut + 2: cut + 3] <= "z":
        return ctx[: cut + 1], ctx[cut + 2:]
    return ctx, ""


def docs_hellaswag():
    with open(os.path.join(DATA, "hellaswag", "hellaswag_val_full.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(lines) % 6 == 0
    out = []
    for i in range(0, len(lines), 6):
        label, ctx = lines[i].split(": ", 1)
        a, b = split_hellaswag_ctx(ctx)
        out.append({"activity_label": label, "ctx_a": a, "ctx_b": b,
                    "endings": lines[i + 2: i + 6], "label": lines[i + 1]})
    return out


def docs_piqa():
    d = os.path.join(DATA, "piqa")
    items = read_jsonl(os.path.join(d, "valid.jsonl"))
    with open(os.path.join(d, "valid-labels.lst")) as f:
        labels = [int(x) for x in f.read().split()]
    assert len(items) == len(labels)
    return [{"goal": x["goal"], "sol1": x["sol1"], "sol2": x["sol2"], "label": y}
            for x, y in zip(items, labels)]


def docs_winogrande():
    out = []
    for d in read_jsonl(os.path.join(DATA, "winogrande", "winogrande.jsonl")):
        c1, c2 = d["context_options"]
        n = 0
        while n < min(len(c1), len(c2)) and c1[n] == c2[n]:
            n += 1
        prefix = c1[:n]
        assert "_" not in prefix, prefix
        # the harness rebuilds exactly context_options[i] = sentence[:idx] + option_i and the
        # target sentence[idx+1:].strip() == continuation
        out.append({"sentence": prefix + "_ " + d["continuation"], "option1": c1[n:],
                    "option2": c2[n:], "answer": str(d["gold"] + 1)})
    return out


def mmlu_subjects():
    files = sorted(glob.glob(os.path.join(DATA, "mmlu", "test", "*_test.csv")))
    return [os.path.basename(p)[: -len("_test.csv")] for p in files]


def docs_mmlu(subject):
    with open(os.path.join(DATA, "mmlu", "test", subject + "_test.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["question", "choice0", "choice1", "choice2", "choice3", "answer"], rows[0]
    return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": int(r[5])} for r in rows[1:]]


def wikitext_pages(path):
    """wiki.test.raw split into articles as EleutherAI/wikitext_document_level does: a new page
    starts at each level-1 heading line (" = Title = "); empty pages are dropped, the last kept."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    pages, cur = [], []
    for line in lines:
        r = line.replace("= = =", "===").replace("= =", "==").strip()
        if r.startswith("= ") and r.strip().endswith(" ="):
            page = "\n".join(cur)
            if page.strip():
                pages.append(page)
            cur = []
        cur.append(line)
    pages.append("\n".join(cur))
    return pages


def docs_wikitext():
    return [{"page": p} for p in wikitext_pages(os.path.join(DATA, "wikitext2", "wiki.test.raw"))]


def write_task_dir(work, tasks):
    """Task configs: a copy of tests/ref/lm_eval_tasks plus the generated MMLU subject tasks and groups."""
    tdir = os.path.join(work, "tasks")
    shutil.copytree(os.path.join(HERE, "lm_eval_tasks"), tdir)
    os.makedirs(os.path.join(work, "docs"), exist_ok=True)
    makers = {"arc_easy": lambda: docs_arc("arc_easy"), "arc_challenge": lambda: docs_arc("arc_challenge"),
              "hellaswag": docs_hellaswag, "piqa": docs_piqa, "winogrande": docs_winogrande,
              "wikitext": docs_wikitext}
    for t in tasks:
        if t in makers:
            write_jsonl(os.path.join(work, "docs", t + ".jsonl"), makers[t]())
    if "mmlu" in tasks:
        md = os.path.join(tdir, "mmlu")
        cats = {}
        for s in mmlu_subjects():
            cat = MMLU_CATEGORY[s]
            cats.setdefault(cat, []).append(s)
            write_jsonl(os.path.join(work, "docs", "mmlu_" + s + ".jsonl"), docs_mmlu(s))
            desc = "The following are multiple choice questions (with answers) about %s.\n\n" % " ".join(s.split("_"))
            with open(os.path.join(md, "mmlu_%s.yaml" % s), "w") as f:
                f.write('include: _template_yaml\ntask: mmlu_%s\ntask_alias: %s\ntag: mmlu_%s_tasks\n'
                        'description: %s\ndataset_kwargs:\n  data_files:\n    test: docs/mmlu_%s.jsonl\n'
                        % (s, s, cat, json.dumps(desc), s))
        for cat in cats:
            with open(os.path.join(md, "_mmlu_%s.yaml" % cat), "w") as f:
                f.write("group: mmlu_%s\ngroup_alias: %s\ntask:\n  - mmlu_%s_tasks\naggregate_metric_list:\n"
                        "  - metric: acc\n    weight_by_size: True\nmetadata:\n  version: 2\n" % (cat, cat, cat))
        with open(os.path.join(md, "_mmlu.yaml"), "w") as f:
            f.write("group: mmlu\ntask:\n" + "".join("  - mmlu_%s\n" % c for c in
                                                      ["stem", "other", "social_sciences", "humanities"])
                    + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\nmetadata:\n  version: 2\n")
    return tdir


# ---- harness run ----

def load_lm(batch):
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from lm_eval.models.huggingface import HFLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL), dtype=torch.float32).eval()
    with open(os.path.join(TOKDIR, "tokenizer_config.json")) as f:
        tc = json.load(f)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(TOKDIR, "tokenizer.json"),
                                  bos_token=tc["bos_token"], eos_token=tc["eos_token"],
                                  unk_token=tc["unk_token"], pad_token=tc["pad_token"],
                                  model_max_length=tc["model_max_length"],
                                  clean_up_tokenization_spaces=tc["clean_up_tokenization_spaces"])
    return HFLM(pretrained=model, tokenizer=tok, batch_size=batch)


def args_of(sample):
    """The (context, continuation) strings of one logged sample's requests."""
    out = []
    for a in sample["arguments"]:
        if isinstance(a, dict):  # lm_eval >= 0.4.5: {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
            a = [a[k] for k in sorted(a)]
        out.append(tuple(a))
    return out


def mc_sample_record(s, with_strings):
    pairs = args_of(s)
    lls = [float(r[0][0]) if isinstance(r[0], (list, tuple)) else float(r[0]) for r in s["resps"]]
    greedy = [bool(r[0][1]) for r in s["resps"]]
    rec = {"doc_id": s["doc_id"], "ll": [round(x, 4) for x in lls], "greedy": [int(g) for g in greedy],
           "gold": s["target"], "hash": req_hash(pairs)}
    if with_strings:
        rec["requests"] = [[c, t] for c, t in pairs]
    return rec


def leaf_tasks(d):
    """The Task objects of a (possibly nested) task dict from get_task_dict."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += leaf_tasks(v)
        else:
            out.append((getattr(k, "group_name", None) or k if isinstance(k, str) else v.config.task, v))
    return out


def formats_only(tm, tasks, out):
    """Every item's requests as the harness builds them (no model)."""
    from lm_eval.tasks import get_task_dict
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
    os.makedirs(out, exist_ok=True)
    order = {s: i for i, s in enumerate(mmlu_subjects())}
    for t in tasks:
        leaves = leaf_tasks(get_task_dict([t], tm))
        recs = []
        for name, task in leaves:
            task.build_all_requests(limit=None, rank=0, world_size=1)
            by_doc = {}
            for inst in task.instances:
                by_doc.setdefault(inst.doc_id, []).append(inst)
            docs = list(task.eval_docs)
            for doc_id in sorted(by_doc):
                insts = sorted(by_doc[doc_id], key=lambda x: x.idx)
                doc = docs[doc_id]
                recs.append((order.get(task.config.task[5:], 0) if t == "mmlu" else 0, doc_id, task, doc, insts))
        recs.sort(key=lambda r: (r[0], r[1]))
        if t == "wikitext":
            items = []
            for _, doc_id, task, doc, insts in recs:
                text = wikitext_detokenizer(doc)
                items.append({"doc_id": doc_id, "words": len(re.split(r"\s+", doc["page"])),
                              "bytes": len(doc["page"].encode("utf-8")), "hash": fnv64(text)})
            rec = {"task": t, "settings": {"limit": None, "formats_only": True}, "docs": items}
        else:
            items = []
            for k, (_, doc_id, task, doc, insts) in enumerate(recs):
                pairs = [tuple(i.arguments) for i in insts]
                gold = int(doc["answer"]) - 1 if t == "winogrande" else int(task.doc_to_target(doc))
                it = {"doc_id": doc_id, "gold": gold, "hash": req_hash(pairs)}
                if k < N_VERBATIM:
                    it["requests"] = [[c, x] for c, x in pairs]
                items.append(it)
            rec = {"task": t, "settings": {"limit": None, "formats_only": True}, "items": items}
        dump_fixture(rec, os.path.join(out, t + ".json"))
        print("eval_ref: %-14s requests of %d items" % (t, len(recs)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=500,
                    help="items per task (per subject for mmlu, as lm_eval's --limit); 0 = all")
    ap.add_argument("--mmlu-limit", type=int, default=9, help="items per MMLU subject (57 x 9 = 513)")
    ap.add_argument("--wikitext-limit", type=int, default=20,
                    help="documents (the first 20 hold 93k tokens; 0 = all 62, 292k tokens, hours on 2 cores)")
    ap.add_argument("--tasks", default=",".join(ALL_TASKS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TAPER_REF_THREADS", "2")))
    ap.add_argument("--formats-only", action="store_true", help="requests of all items, no model")
    a = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(a.threads)
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = [t for t in a.tasks.split(",") if t]
    for t in tasks:
        if t not in ALL_TASKS:
            sys.exit("eval_ref: unknown task %s" % t)
    out = os.path.join(a.out, "eval")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="taper-evalref-")
    tdir = write_task_dir(work, tasks)
    os.chdir(work)  # the task configs name their docs relative to here
    tm = TaskManager(include_path=tdir, include_defaults=False)
    if a.formats_only:
        formats_only(tm, tasks, os.path.join(a.out, "eval_formats", "eval"))
        shutil.rmtree(work, ignore_errors=True)
        return
    lm = load_lm(a.batch)
    for t in tasks:
        limit = {"mmlu": a.mmlu_limit, "wikitext": a.wikitext_limit}.get(t, a.limit) or None
        # rolling windows are max_length (8192) tokens long: one at a time keeps the logits in memory
        lm.batch_size_per_gpu = 1 if t == "wikitext" else a.batch
        t0 = time.time()
        res = lm_eval.simple_evaluate(model=lm, tasks=[t], num_fewshot=0, limit=limit, log_samples=True,
                                      task_manager=tm, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0, fewshot_random_seed=0)
        secs = time.time() - t0
        settings = {"lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4.13",
                    "model": os.path.basename(MODEL), "dtype": "float32", "num_fewshot": 0,
                    "limit": limit, "batch_size": lm.batch_size_per_gpu, "threads": a.threads,
                    "max_length": lm.max_length, "prefix_token_id": lm.prefix_token_id, "seconds": round(secs, 1)}
        if t == "wikitext":
            samples = sorted(res["samples"]["wikitext"], key=lambda s: s["doc_id"])
            from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
            docs = []
            for s in samples:
                text = wikitext_detokenizer(s["doc"])
                ll = float(s["resps"][0][0]) if not isinstance(s["resps"][0][0], (list, tuple)) else float(s["resps"][0][0][0])
                page = s["doc"]["page"]
                docs.append({"doc_id": s["doc_id"], "ll": round(ll, 4), "words": len(re.split(r"\s+", page)),
                             "bytes": len(page.encode("utf-8")), "chars": len(text),
                             "hash": fnv64(text)})
            m = res["results"]["wikitext"]
            rec = {"task": t, "settings": settings,
                   "metrics": {k.split(",")[0]: v for k, v in m.items() if "," in k},
                   "docs": docs}
        else:
            groups = [t] if t != "mmlu" else sorted(k for k in res["samples"])
            samples = []
            for g in groups:
                for s in res["samples"][g]:
                    s["_subtask"] = g
                    samples.append(s)
            if t == "mmlu":
                order = {s: i for i, s in enumerate(mmlu_subjects())}
                samples.sort(key=lambda s: (order[s["_subtask"][5:]], s["doc_id"]))
            else:
                samples.sort(key=lambda s: s["doc_id"])
            items = []
            for k, s in enumerate(samples):
                rec_i = mc_sample_record(s, k < N_VERBATIM)
                raw = [float(r[0][0]) for r in s["resps"]]
                rec_i["pred"] = max(range(len(raw)), key=lambda i: (raw[i], -i))
                if t in ("arc_easy", "arc_challenge", "hellaswag", "piqa"):
                    choices = [c[len(" "):] for _, c in args_of(s)]  # target_delimiter " " + choice
                    rec_i["pred_norm"] = max(range(len(raw)), key=lambda i: (raw[i] / len(choices[i]), -i))
                if t == "mmlu":
                    rec_i["subject"] = s["_subtask"][5:]
                if t == "winogrande":  # the logged target is the continuation; gold is the option
                    rec_i["gold"] = int(s["doc"]["answer"]) - 1
                items.append(rec_i)
            metrics = {}
            for name, m in res["results"].items():
                metrics[name] = {k.split(",")[0]: v for k, v in m.items() if "," in k and v != "N/A"}
            rec = {"task": t, "settings": settings, "metrics": metrics if t == "mmlu" else metrics[t],
                   "items": items}
        dump_fixture(rec, os.path.join(out, t + ".json"))
        summary = rec["metrics"] if t != "mmlu" else rec["metrics"]["mmlu"]
        print("eval_ref: %-14s %s  (%.0f s)" % (t, json.dumps(summary), secs), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
