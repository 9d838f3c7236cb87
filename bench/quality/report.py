#!/usr/bin/env python3
"""bench/quality.sh's report: every scored model of WORK/scores/ -> bench/quality.json and
markdown tables on stdout.

Per student (one object each, the teacher as its own object with "teacher": true):
  name, recipe (taper compress flags beside the common ones, WORK written $WORK), params, shape
  (layers, hidden, ffn, heads, kv_heads), tokens, steps, seed, wall_s (compress, all resumes),
  distill (first/last training and validation losses),
  ppl and teacher_ppl ({"wikitext2", "heldout"}: chunks protocol, ctx 512, whole file),
  ppl_ratio (student / teacher, both texts), acc (per task: acc_norm where the task has it, else
  acc), acc_ratio (per task, student / teacher), zero_shot_ratio (mean of acc_ratio over the tasks
  where the teacher is above chance: its accuracy minus chance larger than twice its standard
  error), above_chance (that task list), default (true for the recipe `taper compress` uses by
  default: DEFAULT below).
A model whose scores are not all finished is listed under "partial" with what it has.
Every object also names the machine its scores were made on ("machine": CPU model and cores,
from WORK/scores/NAME/model.json; the scores move a little between CPUs, whose bf16 kernels
round differently). OUT_JSON's earlier objects whose work directory is gone (a new machine) are
kept as they were: a model scored in WORK replaces its earlier object when WORK's scores are
complete, or cover every score the earlier (partial) object has; else both are listed. The teacher's values come from WORK where it has them,
else from OUT_JSON's teacher ("carried" lists those).
usage: report.py WORK OUT_JSON
"""
import glob
import json
import os
import sys

TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu"]
CHANCE = {"arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "piqa": 0.5, "winogrande": 0.5, "mmlu": 0.25}
TEXTS = ["wikitext2", "heldout"]
# items of each task in full (the test splits lm-evaluation-harness scores; MMLU's 57 subjects)
ITEMS = {"arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042, "piqa": 1838, "winogrande": 1267, "mmlu": 14042}
DEFAULT = "kd-mix"  # the run whose flags are taper compress's defaults (beside data, size and tokens)
# Objects written before "machine" existed were all scored on this project's Intel machine.
EARLIER_MACHINE = "Intel Xeon with AMX, 2 cores"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def task_metrics(d):
    """task -> (metric name, value, stderr) from every task-*.json (or an all-tasks eval.json)."""
    out = {}
    for p in sorted(glob.glob(os.path.join(d, "task-*.json")) + glob.glob(os.path.join(d, "eval.json"))):
        j = load(p) or {}
        for t in j.get("tasks", []):
            m = t.get("metrics", {})
            key = "acc_norm" if "acc_norm" in m else "acc"
            if key in m:
                out[t["task"]] = (key, m[key], m.get(key + "_stderr"), t.get("items"), t.get("seconds"))
    return out


def ppls(d):
    out = {}
    for name in TEXTS:
        j = load(os.path.join(d, "ppl-%s.json" % name))
        if j:
            r = [x for x in j["results"] if x["protocol"] == "chunks"][0]
            out[name] = r["ppl"]
    return out


def complete(r):
    return r.get("zero_shot_ratio") is not None


def main():
    work, out_json = sys.argv[1], sys.argv[2]
    old = load(out_json) or {}
    old_t = old.get("teacher") or {}
    tdir = os.path.join(work, "scores", "teacher")
    t_ppl, t_acc = ppls(tdir), task_metrics(tdir)
    t_model = load(os.path.join(tdir, "model.json")) or {}
    carried = []
    # where each earlier teacher value came from: its own machine, or where it had carried it from
    was_carried = old_t.get("carried") or {}
    source = {k: was_carried.get("machine") for k in was_carried.get("values", [])}
    for k, v in (old_t.get("ppl") or {}).items():  # what WORK has not scored: the earlier teacher's
        if k not in t_ppl:
            t_ppl[k] = v
            carried.append("ppl." + k)
    for t, v in (old_t.get("acc") or {}).items():
        if t not in t_acc:
            se = (old_t.get("stderr") or {}).get(t)
            if se is None:  # objects from before "stderr": the binomial standard error of the accuracy
                n = (old_t.get("items") or {}).get(t) or ITEMS.get(t)
                se = (v * (1 - v) / (n - 1)) ** 0.5 if n else None
            t_acc[t] = ((old_t.get("metric") or {}).get(t, "acc"), v, se,
                        (old_t.get("items") or {}).get(t) or ITEMS.get(t), None)
            carried.append("acc." + t)
    above = [t for t in TASKS if t in t_acc and t_acc[t][2] is not None and t_acc[t][1] - CHANCE[t] > 2 * t_acc[t][2]]
    rows, partial = [], []
    teacher = {"name": "teacher", "teacher": True, "model": t_model.get("model") or old_t.get("model"),
               "params": t_model.get("params") or old_t.get("params"),
               "machine": t_model.get("machine") or old_t.get("machine") or EARLIER_MACHINE,
               "ppl": t_ppl, "acc": {t: v[1] for t, v in t_acc.items()},
               "stderr": {t: v[2] for t, v in t_acc.items() if v[2] is not None},
               "items": {t: v[3] for t, v in t_acc.items() if v[3] is not None},
               "metric": {t: v[0] for t, v in t_acc.items()}, "above_chance": above}
    if carried:
        machines = sorted({source.get(k) or old_t.get("machine") or EARLIER_MACHINE for k in carried})
        teacher["carried"] = {"values": carried, "machine": "; ".join(machines)}
    complete_teacher = len(t_ppl) == len(TEXTS) and all(t in t_acc for t in TASKS)
    for d in sorted(glob.glob(os.path.join(work, "scores", "*"))):
        name = os.path.basename(d)
        if name == "teacher":
            continue
        run = load(os.path.join(d, "run.json")) or {"name": name}
        model = load(os.path.join(d, "model.json")) or {}
        p, a = ppls(d), task_metrics(d)
        flags = (run.get("flags") or "").replace(os.path.abspath(work), "$WORK") or None
        r = {"name": name, "recipe": flags, "params": model.get("params"), "machine": model.get("machine"),
             "tokens": run.get("tokens"),
             "steps": run.get("steps"), "seed": run.get("seed"), "wall_s": run.get("wall_s"),
             "ppl": p, "teacher_ppl": {k: t_ppl[k] for k in p if k in t_ppl},
             "ppl_ratio": {k: p[k] / t_ppl[k] for k in p if k in t_ppl},
             "acc": {t: v[1] for t, v in a.items()},
             "acc_ratio": {t: a[t][1] / t_acc[t][1] for t in a if t in t_acc},
             "shape": {k: run["student"][k] for k in ("layers", "hidden", "ffn", "heads", "kv_heads")
                       if k in run.get("student", {})},
             "distill": run.get("distill"), "default": name == DEFAULT}
        ratios = [r["acc_ratio"][t] for t in above if t in r["acc_ratio"]]
        done = complete_teacher and len(p) == len(TEXTS) and all(t in a for t in TASKS)
        r["zero_shot_ratio"] = sum(ratios) / len(ratios) if done and ratios else None
        r["above_chance"] = above
        (rows if done else partial).append(r)
    # earlier objects: kept unless WORK's object of that name is complete, or has every score
    # the earlier one has (a partial earlier object beside a newer partial one stays too)
    fresh = {r["name"]: r for r in rows + partial}
    for was in old.get("students", []) + old.get("partial", []):
        was.setdefault("machine", EARLIER_MACHINE)
        now = fresh.get(was["name"])
        if now is not None and (complete(now) or
                                (not complete(was) and set(was.get("ppl", {})) <= set(now.get("ppl", {})) and
                                 set(was.get("acc", {})) <= set(now.get("acc", {})))):
            continue
        (rows if complete(was) else partial).append(was)
    res = {"what": "bench/quality.sh: SmolLM2-135M-Instruct students, scored in full", "teacher": teacher,
           "students": rows, "partial": partial}
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    os.replace(tmp, out_json)

    # ---- tables ----
    def f3(x):
        return "–" if x is None else "%.3f" % x

    hdr = "| model | machine | params | tokens | wall | ppl WikiText-2 (×T) | ppl held-out (×T) | " + \
        " | ".join(TASKS) + " | zero-shot ×T |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    tp = teacher["ppl"]
    print("| teacher | %s | %s | – | – | %s | %s | %s | – |" % (
        teacher["machine"] + (" (%s carried)" % ", ".join(carried) if carried else ""), teacher["params"], f3(tp.get("wikitext2")), f3(tp.get("heldout")),
        " | ".join(f3(teacher["acc"].get(t)) for t in TASKS)))
    for r in rows + partial:
        def pr(k):
            if k not in r["ppl"]:
                return "–"
            return "%.3f (%.2f)" % (r["ppl"][k], r["ppl_ratio"].get(k, float("nan")))
        wall = "%.0f min" % (r["wall_s"] / 60) if r.get("wall_s") else "–"
        print("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["name"], "" if r in rows else " (partial)", r.get("machine"), r["params"], r["tokens"], wall, pr("wikitext2"),
            pr("heldout"), " | ".join(f3(r["acc"].get(t)) for t in TASKS), f3(r["zero_shot_ratio"])))
    print("\nacc: acc_norm where the task has it (ARC, HellaSwag, PIQA), else acc; ×T: student / teacher;"
          " zero-shot ×T: mean over the tasks where the teacher is above chance (%s)." % ", ".join(above))


if __name__ == "__main__":
    main()
