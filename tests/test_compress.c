/* taper compress: the library call (tp_recipe, tp_compress_run) and the command (cli/cmd_compress.c) end to end on tiny models (the 2-layer fixture, and random
 * models of a few layers made with `taper train --init-config`): teacher correction, recipe files,
 * progressive (--iterate) compression with composed plans, and resuming each. The CLI runs as a
 * child process (TAPER_BIN, set by make test); the whole file takes a few seconds. The plain
 * one-round pipeline is tested in tests/test_distill.c (distill_cli_compress_pipeline). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "taper/compress.h"
#include "taper/model.h"
#include "taper/recipe.h"
#include "taper/trainer.h"
#include "taper/util.h"
#include "tt.h"



static char *slurp(const char *dir, const char *name) {
    char *p = tp_strfmt("%s/%s", dir, name), *t = NULL;
    if (!p || tp_read_file(p, &t, NULL) != TP_OK) t = NULL;
    free(p);
    return t;
}

static cJSON *json_at(const char *dir, const char *name) {
    char *t = slurp(dir, name);
    cJSON *j = t ? cJSON_Parse(t) : NULL;
    free(t);
    return j;
}

/* a number by dotted path ("distill.steps", "rounds.1.pruned.params"); NAN when absent */
static double jnum(const cJSON *j, const char *path) {
    const cJSON *c = tp_json_at(j, path);
    return cJSON_IsNumber(c) ? c->valuedouble : cJSON_IsBool(c) ? cJSON_IsTrue(c) : NAN;
}

static const char *jstr(const cJSON *j, const char *a, const char *b) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, a);
    if (b) c = cJSON_GetObjectItemCaseSensitive(c, b);
    return cJSON_IsString(c) ? c->valuestring : "";
}

static int count(const char *text, const char *what) {
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, what)); p++) n++;
    return n;
}

static tp_model *load(const char *dir, const char *name) {
    char *p = name ? tp_strfmt("%s/%s", dir, name) : strdup(dir);
    tp_model *m = NULL;
    if (tp_model_load(p, &m) != TP_OK) TT_CHECK(0, "loading %s: %s", p, tp_errmsg());
    free(p);
    return m;
}

static int same_weights(const tp_model *a, const tp_model *b) {
    return a && b && a->n_params == b->n_params && !memcmp(a->params, b->params, a->n_params * sizeof(float));
}

/* A scratch directory with the fox text (evaluation and calibration). NULL without TAPER_BIN. */
static char *setup(const char *name, const char **bin) {
    *bin = getenv("TAPER_BIN");
    if (!*bin) {
        tt_skip("TAPER_BIN not set (run through make test)");
        return NULL;
    }
    char *dir = tt_path(tt_tmp_dir(), name), *text = tt_path(dir, "text.txt");
    tt_sh("rm -rf '%s' && mkdir -p '%s'", dir, dir);
    tt_fox_text(text, 60);
    free(text);
    return dir;
}

/* every size small: stages take milliseconds */
#define SMALL                                                                                                    \
    "--sdg-samples 8 --sdg-tokens 40 --calib-samples 4 --calib-seq 16 --depth-samples 2 --steps 3 --seq 16 "   \
    "--batch 2 --ckpt-every 2 --eval-chunks 2 --eval-ctx 16 --tasks '' --threads 1"

/* --correct-steps: the teacher is trained on the distillation data first; every later stage uses it. */
TT_TEST(compress_teacher_correction) {
    const char *bin;
    char *dir = setup("correct", &bin);
    if (!dir) return;
    char *model = tt_path(tt_fixtures_dir(), "sparsify/model");
    TT_CHECK(tt_sh("TAPER_PROGRESS=0 '%s' tokenize '%s' -o '%s/shards' '%s/text.txt' > '%s/log' 2>&1", bin, model, dir, dir,
                dir) == 0,
             "tokenize");
    char run[4096];
    snprintf(run, sizeof run,
             "TAPER_PROGRESS=0 '%s' compress '%s' --target-params 43152 --axes depth -o '%s/run' --data '%s/shards' "
             "--calib '%s/text.txt' --eval-text '%s/text.txt' " SMALL " --correct-steps 12 --correct-lr 1e-2 "
             "--correct-warmup 2",
             bin, model, dir, dir, dir, dir);
    TT_CHECK(tt_sh("%s > '%s/out1' 2>&1", run, dir) == 0, "compress with teacher correction (output in %s/out1)", dir);
    char *rd = tp_strfmt("%s/run", dir);
    tp_model *t = load(model, NULL), *c = load(rd, "teacher-corrected"), *pruned = load(rd, "pruned");
    if (t && c) {
        size_t changed = 0;
        for (size_t i = 0; i < t->n_params && i < c->n_params; i++) changed += t->params[i] != c->params[i];
        TT_CHECK(c->n_params == t->n_params && changed > t->n_params / 2, "corrected teacher: %zu of %zu weights changed",
                 changed, t->n_params);
        tt_note("teacher correction changed %zu of %zu weights", changed, t->n_params);
    }
    /* the correction stage got the settings asked for */
    cJSON *ca = json_at(rd, "correct/args.json");
    TT_CHECK(jnum(ca, "steps") == 12 && jnum(ca, "seq") == 16 && jnum(ca, "batch") == 2 && jnum(ca, "warmup") == 2 &&
                 fabs(jnum(ca, "lr") - 1e-2) < 1e-9 && fabs(jnum(ca, "min_lr") - 1e-3) < 1e-9,
             "correct/args.json: steps %g seq %g batch %g warmup %g lr %g min_lr %g", jnum(ca, "steps"), jnum(ca, "seq"),
             jnum(ca, "batch"), jnum(ca, "warmup"), jnum(ca, "lr"), jnum(ca, "min_lr"));
    cJSON_Delete(ca);
    /* it adapted the teacher to the data: held-out CE and perplexity on the text went down */
    cJSON *rep = json_at(rd, "report.json");
    double v0 = jnum(rep, "corrected.val_loss_first"), v1 = jnum(rep, "corrected.val_loss_last");
    double pt = jnum(rep, "teacher.ppl"), pc = jnum(rep, "corrected.ppl");
    TT_CHECK(v1 < v0 - 0.5, "validation CE of the correction: %.4f -> %.4f", v0, v1);
    TT_CHECK(pc < pt / 2, "perplexity on the text: teacher %.2f, corrected teacher %.2f", pt, pc);
    tt_note("correction: validation CE %.4f -> %.4f, PPL %.2f -> %.2f", v0, v1, pt, pc);
    cJSON_Delete(rep);
    /* pruning cut the corrected teacher (not the original), distillation used it as the teacher */
    char *plan_path = tp_strfmt("%s/pruned/prune_plan.json", rd);
    tp_prune_plan *plan = NULL;
    tp_model *want = NULL;
    if (c && pruned && tp_prune_plan_load(plan_path, &plan) == TP_OK && tp_prune_apply(c, plan, &want) == TP_OK)
        TT_CHECK(same_weights(want, pruned), "pruned/ is the corrected teacher cut by its plan, bit for bit");
    else
        TT_CHECK(0, "plan / apply: %s", tp_errmsg());
    cJSON *da = json_at(rd, "distill/args.json");
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", c ? (unsigned long long)tp_params_hash(c) : 0ULL);
    TT_CHECK(strstr(jstr(da, "distill", "teacher"), "teacher-corrected") && !strcmp(jstr(da, "distill", "teacher_hash"), hash),
             "distillation teacher %s (hash %s, corrected %s)", jstr(da, "distill", "teacher"),
             jstr(da, "distill", "teacher_hash"), hash);
    cJSON_Delete(da);
    char *md = slurp(rd, "report.md");
    TT_CHECK(md && strstr(md, "## Teacher correction") && strstr(md, "| corrected teacher |"), "report.md has the correction");
    free(md);
    /* again: everything skipped, the correction included */
    TT_CHECK(tt_sh("%s > '%s/out2' 2>&1", run, dir) == 0, "the same command again");
    char *o2 = slurp(dir, "out2");
    TT_CHECK(o2 && strstr(o2, "[correct] done earlier, skipped") && count(o2, "done earlier, skipped") == 8 &&
                 !strstr(o2, "] running"),
             "rerun: %d stages skipped, none run", count(o2, "done earlier, skipped"));
    free(o2);
    tp_prune_plan_free(plan);
    tp_model_free(want);
    tp_model_free(t);
    tp_model_free(c);
    tp_model_free(pruned);
    free(plan_path);
    free(rd);
    free(model);
    free(dir);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = tp_strfmt("%s/%s", dir, name);
    FILE *f = p ? fopen(p, "w") : NULL;
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    free(p);
}

/* A recipe file refused with exit code 2 and a message containing what. */
static void refused(const char *bin, const char *dir, const char *recipe, const char *what) {
    write_text(dir, "bad.json", recipe);
    int rc = tt_sh("TAPER_PROGRESS=0 '%s' compress --recipe '%s/bad.json' -o '%s/bad' > '%s/err' 2>&1", bin, dir, dir, dir);
    char *err = slurp(dir, "err"), *bad = tp_strfmt("%s/bad", dir);
    TT_CHECK(rc == 2 && err && strstr(err, what) && access(bad, F_OK) != 0, "recipe %s: exit %d, message: %s", recipe, rc,
             err ? err : "");
    free(err);
    free(bad);
}

/* --recipe: values from the file reach the stages, the command line overrides them, the run
 * directory keeps the effective recipe, and a rerun with other settings is refused. */
TT_TEST(compress_recipe) {
    const char *bin;
    char *dir = setup("recipe", &bin);
    if (!dir) return;
    char recipe[4096];
    snprintf(recipe, sizeof recipe,
             "{\"teacher\": \"%s/sparsify/model\", \"target-params\": \"43.152k\", \"axes\": \"depth\",\n"
             " \"sdg-samples\": 8, \"sdg-tokens\": 40, \"calib-samples\": 4, \"calib-seq\": 16, \"depth-samples\": 2,\n"
             " \"steps\": 3, \"seq\": 16, \"batch\": 2, \"lr\": 0.001, \"warmup\": 1, \"tau\": 2, \"tau2\": true,\n"
             " \"ckpt-every\": 2, \"eval-chunks\": 2, \"eval-ctx\": 16, \"tasks\": \"\", \"eval-text\": \"%s/text.txt\"}\n",
             tt_fixtures_dir(), dir);
    write_text(dir, "recipe.json", recipe);
    char run[4096];
    snprintf(run, sizeof run, "TAPER_PROGRESS=0 '%s' compress --recipe '%s/recipe.json' -o '%s/run' --steps 2 --threads 1",
             bin, dir, dir);
    TT_CHECK(tt_sh("%s > '%s/out1' 2>&1", run, dir) == 0, "compress --recipe (output in %s/out1)", dir);
    char *rd = tp_strfmt("%s/run", dir);
    cJSON *eff = json_at(rd, "recipe.json"), *da = json_at(rd, "distill/args.json");
    TT_CHECK(jnum(eff, "steps") == 2 && jnum(eff, "seq") == 16 && jnum(eff, "lr") == 0.001 && jnum(eff, "tau2") == 1 &&
                 jnum(eff, "target-params") == 43152 && jnum(eff, "iterate") == 1 && jnum(eff, "correct-steps") == 0,
             "run/recipe.json: steps %g seq %g lr %g tau2 %g target %g", jnum(eff, "steps"), jnum(eff, "seq"),
             jnum(eff, "lr"), jnum(eff, "tau2"), jnum(eff, "target-params"));
    TT_CHECK(jnum(da, "steps") == 2 && jnum(da, "seq") == 16 && jnum(da, "batch") == 2 && jnum(da, "warmup") == 1 &&
                 fabs(jnum(da, "lr") - 1e-3) < 1e-9 && jnum(da, "distill.tau") == 2 && jnum(da, "distill.tau2") == 1,
             "distill/args.json: steps %g (command line) seq %g batch %g warmup %g lr %g tau %g tau2 %g (recipe)",
             jnum(da, "steps"), jnum(da, "seq"), jnum(da, "batch"), jnum(da, "warmup"), jnum(da, "lr"),
             jnum(da, "distill.tau"), jnum(da, "distill.tau2"));
    cJSON_Delete(eff);
    cJSON_Delete(da);
    tp_model *st = load(rd, "student");
    TT_CHECK(st && st->cfg.n_layers == 1, "the student has 1 layer (43.152k = the teacher less one layer)");
    tp_model_free(st);
    /* the stored recipe alone reproduces the run: every stage skipped */
    TT_CHECK(tt_sh("TAPER_PROGRESS=0 '%s' compress --recipe '%s/recipe.json' > '%s/out2' 2>&1", bin, rd, dir) == 0,
             "compress --recipe run/recipe.json");
    char *o = slurp(dir, "out2");
    TT_CHECK(o && count(o, "done earlier, skipped") == 7 && !strstr(o, "] running"), "stored recipe: %d stages skipped",
             count(o, "done earlier, skipped"));
    free(o);
    /* other settings: refused, nothing run, recipe.json unchanged; --threads may change */
    int rc = tt_sh("%s --steps 4 --lr 2e-3 > '%s/out3' 2>&1", run, dir);
    o = slurp(dir, "out3");
    TT_CHECK(rc == 2 && o && strstr(o, "steps: 2 in the run, 4 now") && strstr(o, "lr: 0.001 in the run, 0.002 now") &&
                 !strstr(o, "] running") && !strstr(o, "skipped"),
             "rerun with --steps 4 --lr 2e-3: exit %d, %s", rc, o ? o : "");
    free(o);
    eff = json_at(rd, "recipe.json");
    TT_CHECK(jnum(eff, "steps") == 2, "recipe.json kept steps %g", jnum(eff, "steps"));
    cJSON_Delete(eff);
    TT_CHECK(tt_sh("%s --threads 2 > '%s/out4' 2>&1", run, dir) == 0, "--threads may change on a rerun");
    rc = tt_sh("%s --steps 4 --force > '%s/out5' 2>&1", run, dir);
    o = slurp(dir, "out5");
    eff = json_at(rd, "recipe.json");
    TT_CHECK(rc == 0 && o && strstr(o, "--force") && jnum(eff, "steps") == 4, "--force: exit %d, recipe.json steps %g", rc,
             jnum(eff, "steps"));
    cJSON_Delete(eff);
    free(o);
    /* malformed recipes: refused before anything is created, the key named */
    refused(bin, dir, "{\"target-params\": 43152, \"stepz\": 3}", "unknown key \"stepz\"");
    refused(bin, dir, "{\"target-params\": 43152, \"steps\": \"many\"}", "key \"steps\" expects an integer");
    refused(bin, dir, "{\"target-params\": 43152, \"steps\": 3.5}", "key \"steps\" expects an integer");
    refused(bin, dir, "{\"target-params\": 43152, \"tau2\": 1}", "key \"tau2\" must be true or false");
    refused(bin, dir, "{\"target-params\": 43152, \"kd\": false}", "key \"kd\" must be a string");
    refused(bin, dir, "{\"target-params\": \"lots\"}", "key \"target-params\": 'lots' is not a parameter count");
    refused(bin, dir, "{\"target-params\": 43152, \"force\": true}", "--force is a command-line option");
    refused(bin, dir, "{\"target-params\": 43152, \"steps\": 3, \"steps\": 4}", "key \"steps\" is given twice");
    refused(bin, dir, "[1, 2]", "expected a JSON object");
    refused(bin, dir, "{\"steps\": 3,", "not valid JSON");
    free(rd);
    free(dir);
}

/* A random model with the fixture's tokenizer and the sizes given (hidden, ffn, heads, kv heads,
 * head_dim, layers), from `taper train --init-config`, in DIR/NAME. */
static char *make_model(const char *bin, const char *dir, const char *fixture, const char *name, const int sizes[6]) {
    char *cfg = tp_strfmt("%s/config.json", fixture), *text = NULL;
    char *out = tp_strfmt("%s/%s", dir, name), *cname = tp_strfmt("%s.json", name);
    cJSON *c = NULL;
    if (cfg && tp_read_file(cfg, &text, NULL) == TP_OK) c = cJSON_Parse(text);
    const char *keys[] = {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                          "num_hidden_layers"};
    for (int i = 0; c && i < 6; i++) cJSON_ReplaceItemInObjectCaseSensitive(c, keys[i], cJSON_CreateNumber(sizes[i]));
    char *js = c ? cJSON_Print(c) : NULL;
    write_text(dir, cname, js ? js : "");
    int rc = tt_sh("TAPER_PROGRESS=0 '%s' tokenize '%s' -o '%s/shards-%s' '%s/text.txt' > '%s/log' 2>&1 && TAPER_PROGRESS=0 "
                "'%s' train '%s' --init-config '%s/%s' --data '%s/shards-%s' --steps 1 --seq 16 --batch 1 --run-dir "
                "'%s/init-%s' --export-hf '%s' --threads 1 >> '%s/log' 2>&1",
                bin, fixture, dir, name, dir, dir, bin, fixture, dir, cname, dir, name, dir, name, out, dir);
    TT_CHECK(rc == 0 && c && js, "making %s (log in %s/log)", name, dir);
    cJSON_Delete(c);
    free(js);
    free(text);
    free(cfg);
    free(cname);
    return out;
}

/* RUN/pruned-2/teacher_plan.json applied to the teacher gives exactly what plan 1 then plan 2
 * give, and round 2's intermediate-state pairs follow its kept teacher layers. Returns the
 * composed plan (for the caller's notes) or NULL. */
static tp_prune_plan *check_composed(const char *model, const char *rd) {
    tp_model *t = load(model, NULL), *m1 = NULL, *m2 = NULL, *mc = NULL;
    tp_prune_plan *q1 = NULL, *q2 = NULL, *qc = NULL;
    char *f1 = tp_strfmt("%s/pruned-1/prune_plan.json", rd), *f2 = tp_strfmt("%s/pruned-2/prune_plan.json", rd),
         *fc = tp_strfmt("%s/pruned-2/teacher_plan.json", rd);
    cJSON *d2 = json_at(rd, "distill-2/args.json");
    if (t && !tp_prune_plan_load(f1, &q1) && !tp_prune_plan_load(f2, &q2) && !tp_prune_plan_load(fc, &qc) &&
        !tp_prune_apply(t, q1, &m1) && !tp_prune_apply(m1, q2, &m2) && !tp_prune_apply(t, qc, &mc)) {
        TT_CHECK(same_weights(m2, mc) && m2->cfg.n_layers == mc->cfg.n_layers && m2->cfg.d_model == mc->cfg.d_model &&
                     m2->cfg.d_ff == mc->cfg.d_ff && m2->cfg.n_heads == mc->cfg.n_heads,
                 "%s: teacher_plan.json applied to the teacher = plan 1 then plan 2, bit for bit (%zu parameters)", rd,
                 mc->n_params);
        TT_CHECK(qc->src_params == t->n_params && qc->n_params == m2->n_params, "composed plan sizes %zu -> %zu",
                 qc->src_params, qc->n_params);
        const cJSON *pairs = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(d2, "distill"), "pairs");
        int ok = cJSON_GetArraySize(pairs) == qc->cfg.n_layers;
        for (int i = 0; ok && i < qc->cfg.n_layers; i++) {
            char want[32];
            snprintf(want, sizeof want, "%d:%d", i, qc->layers[i]);
            const cJSON *e = cJSON_GetArrayItem(pairs, i);
            ok = cJSON_IsString(e) && !strcmp(e->valuestring, want);
        }
        TT_CHECK(ok, "%s: distill-2 layer pairs follow the composed plan's kept teacher layers", rd);
    } else {
        TT_CHECK(0, "%s: plans: %s", rd, tp_errmsg());
        tp_prune_plan_free(qc);
        qc = NULL;
    }
    cJSON_Delete(d2);
    tp_model_free(t), tp_model_free(m1), tp_model_free(m2), tp_model_free(mc);
    tp_prune_plan_free(q1), tp_prune_plan_free(q2);
    free(f1), free(f2), free(fc);
    return qc;
}

static void layer_list(const tp_prune_plan *p, char *buf, size_t n) {
    size_t u = 0;
    buf[0] = 0;
    for (int i = 0; p && i < p->cfg.n_layers && u < n; i++) u += (size_t)snprintf(buf + u, n - u, i ? ",%d" : "%d", p->layers[i]);
}

/* --iterate 2: two prune -> distill rounds through the geometric midpoint, importance recomputed
 * on round 1's student, both rounds distilled from the original teacher through a composed plan. */
TT_TEST(compress_iterate) {
    const char *bin;
    char *dir = setup("iterate", &bin);
    if (!dir) return;
    char *fixture = tt_path(tt_fixtures_dir(), "sparsify/model");
    /* hidden 128, ffn 512, 8 heads / 4 KV groups of head_dim 16, 4 layers: 1,049,728 parameters
     * -> 200,000: the midpoint is round(sqrt(1049728 * 200000)) = 458,198. */
    const int mixed[6] = {128, 512, 8, 4, 16, 4};
    char *model = make_model(bin, dir, fixture, "mixed", mixed);
    char run[4096];
    snprintf(run, sizeof run,
             "TAPER_PROGRESS=0 '%s' compress '%s' --target-params 200000 --iterate 2 --inter cosine -o '%s/run' "
             "--eval-text '%s/text.txt' " SMALL,
             bin, model, dir, dir);
    TT_CHECK(tt_sh("%s > '%s/out1' 2>&1", run, dir) == 0, "compress --iterate 2 (output in %s/out1)", dir);
    char *rd = tp_strfmt("%s/run", dir);
    cJSON *rep = json_at(rd, "report.json");
    const cJSON *rounds = cJSON_GetObjectItemCaseSensitive(rep, "rounds");
    TT_CHECK(cJSON_GetArraySize(rounds) == 2, "report.json has %d rounds", cJSON_GetArraySize(rounds));
    double t1 = jnum(rep, "rounds.0.target_params"), t2 = jnum(rep, "rounds.1.target_params");
    double p1 = jnum(rep, "rounds.0.pruned.params"), p2 = jnum(rep, "rounds.1.pruned.params");
    double s1 = jnum(rep, "rounds.0.student.params"), s2 = jnum(rep, "rounds.1.student.params");
    TT_CHECK(jnum(rep, "teacher.params") == 1049728, "teacher %g parameters", jnum(rep, "teacher.params"));
    TT_CHECK(t1 == 458198 && t2 == 200000, "targets %g, %g (want 458198, 200000)", t1, t2);
    TT_CHECK(p1 < 1049728 && p2 < p1 && fabs(p1 - t1) <= 0.05 * t1 && fabs(p2 - t2) <= 0.05 * t2,
             "pruned sizes %g -> %g within 5%% of the targets", p1, p2);
    TT_CHECK(s1 == p1 && s2 == p2, "students keep the pruned sizes (%g, %g)", s1, s2);
    tt_note("1049728 -> %g (target 458198) -> %g (target 200000) parameters", p1, p2);
    cJSON_Delete(rep);
    tp_model *fin = load(rd, "student");
    TT_CHECK(fin && (double)tp_config_n_params(&fin->cfg) == p2, "student/ is the last round's model (%d layers, "
             "ffn %d)", fin ? fin->cfg.n_layers : 0, fin ? fin->cfg.d_ff : 0);
    tp_model_free(fin);
    /* round 2 pruned round 1's student with importance computed on it */
    cJSON *pj = json_at(rd, "prune-2.json"), *d2 = json_at(rd, "distill-2/args.json");
    TT_CHECK(strstr(jstr(pj, "model", NULL), "/student-1"), "round 2 pruned %s", jstr(pj, "model", NULL));
    char *imp2 = tp_strfmt("%s/importance-2.json", rd);
    tp_importance *imp = NULL;
    tp_model *s1m = load(rd, "student-1");
    TT_CHECK(s1m && tp_importance_load(imp2, &imp) == TP_OK && imp->n_layers == s1m->cfg.n_layers &&
                 imp->n_heads == s1m->cfg.n_heads && imp->d_ff == s1m->cfg.d_ff,
             "importance-2.json scores round 1's student (%d heads, %d neurons)", imp ? imp->n_heads : -1,
             imp ? imp->d_ff : -1);
    tp_importance_free(imp);
    tp_model_free(s1m);
    free(imp2);
    TT_CHECK(!strcmp(jstr(d2, "distill", "teacher"), model), "round 2 distilled from the original teacher (%s)",
             jstr(d2, "distill", "teacher"));
    cJSON_Delete(pj);
    cJSON_Delete(d2);
    /* the composed plan: teacher -> round 2 in one gather equals round 1 then round 2 (here
     * both rounds cut heads and neurons differently per layer, and round 1 drops a layer) */
    tp_prune_plan *qc = check_composed(model, rd);
    char ll[128];
    layer_list(qc, ll, sizeof ll);
    if (qc) tt_note("mixed run: composed plan keeps teacher layers %s, %d of 8 heads, %d of 512 neurons", ll,
                    qc->cfg.n_heads, qc->cfg.d_ff);
    tp_prune_plan_free(qc);
    char *md = slurp(rd, "report.md");
    TT_CHECK(md && strstr(md, "## Rounds") && strstr(md, "| 1 | teacher | 458198 |") && strstr(md, "| 2 | student-1 | 200000 |"),
             "report.md: one row per round");
    free(md);
    /* again: every stage of both rounds skipped */
    TT_CHECK(tt_sh("%s > '%s/out2' 2>&1", run, dir) == 0, "the same command again");
    char *o = slurp(dir, "out2");
    TT_CHECK(o && count(o, "done earlier, skipped") == 12 && !strstr(o, "] running") && strstr(o, "[distill-2] done earlier"),
             "rerun: %d stages skipped, none run", count(o, "done earlier, skipped"));
    free(o);
    /* resuming mid-chain: round 2's distillation and evaluation undone -> only they run again */
    tt_sh("rm -rf '%s/distill-2' '%s/student' '%s/.done-distill-2' '%s/.done-student-2-ppl'", rd, rd, rd, rd);
    TT_CHECK(tt_sh("%s > '%s/out3' 2>&1", run, dir) == 0, "resume in round 2");
    o = slurp(dir, "out3");
    TT_CHECK(o && count(o, "done earlier, skipped") == 10 && count(o, "] running") == 2 && strstr(o, "[distill-2] running"),
             "resume: %d skipped, %d run", count(o, "done earlier, skipped"), count(o, "] running"));
    free(o);
    /* depth only, 8 layers -> 6 -> 4: both rounds drop layers, so the composed layer list is
     * a real lookup (round 2's indices are into round 1's model) */
    const int deep[6] = {48, 80, 8, 4, 6, 8}; /* 172,848 parameters; 24,624 + 18,528 per layer */
    char *dmodel = make_model(bin, dir, fixture, "deep", deep), *dd = tp_strfmt("%s/deeprun", dir);
    snprintf(run, sizeof run,
             "TAPER_PROGRESS=0 '%s' compress '%s' --target-params 98736 --iterate 2 --axes depth --inter cosine -o "
             "'%s' --eval-text '%s/text.txt' " SMALL " > '%s/out6' 2>&1",
             bin, dmodel, dd, dir, dir);
    TT_CHECK(tt_sh("%s", run) == 0, "--iterate 2 --axes depth, 8 -> 4 layers (output in %s/out6)", dir);
    rep = json_at(dd, "report.json");
    TT_CHECK(jnum(rep, "rounds.0.target_params") == 130638 && jnum(rep, "rounds.0.pruned.layers") == 6 &&
                 jnum(rep, "rounds.1.pruned.layers") == 4 && jnum(rep, "rounds.1.student.params") == 98736,
             "depth rounds: target %g, %g then %g layers, %g parameters", jnum(rep, "rounds.0.target_params"),
             jnum(rep, "rounds.0.pruned.layers"), jnum(rep, "rounds.1.pruned.layers"), jnum(rep, "rounds.1.student.params"));
    cJSON_Delete(rep);
    qc = check_composed(dmodel, dd);
    layer_list(qc, ll, sizeof ll);
    tt_note("depth run: composed plan keeps teacher layers %s of 8", ll);
    tp_prune_plan_free(qc);
    /* planted rounds: round 1 cuts the deep model by its scores to 6 layers and narrower widths
     * (each layer keeps other heads, KV groups and neurons), round 2 drops layers 0 and 3 of that
     * and cuts every width again (by scores of round 1's model), so each index of the composition
     * is a real lookup, in the right layer of round 1. Both prunes are made by hand and marked
     * done: compress only composes the plans and runs round 2's distillation. */
    char *pd = tp_strfmt("%s/planted", dir);
    int prc = tt_sh("mkdir -p '%s/logs' && cd '%s' && for s in teacher-ppl importance-1 prune-1 pruned-1-ppl distill-1 "
                 "student-1-ppl importance-2 prune-2 pruned-2-ppl; do touch .done-$s; done && export TAPER_PROGRESS=0 && "
                 "'%s' prune '%s' --scores '%s/importance-1.json' --hidden 40 --ffn 64 --heads 4 --kv-heads 2 --layers 6 "
                 "-o pruned-1 > logs/p1 2>&1 && cp -r pruned-1 student-1 && '%s' importance student-1 --data "
                 "'%s/text.txt' --samples 4 --seq-len 16 -o importance-2.json >> logs/p1 2>&1 && '%s' prune student-1 "
                 "--scores importance-2.json --drop-layers 0,3 --hidden 32 --ffn 48 --heads 2 --kv-heads 1 -o pruned-2 "
                 ">> logs/p1 2>&1",
                 pd, pd, bin, dmodel, dd, bin, dir, bin);
    TT_CHECK(prc == 0, "planting the rounds in %s", pd);
    snprintf(run, sizeof run,
             "TAPER_PROGRESS=0 '%s' compress '%s' --target-params 98736 --iterate 2 --inter cosine -o '%s' --data "
             "'%s/shards-deep' --calib '%s/text.txt' --eval-text '%s/text.txt' " SMALL " > '%s/out8' 2>&1",
             bin, dmodel, pd, dir, dir, dir, dir);
    TT_CHECK(tt_sh("%s", run) == 0, "compress over the planted rounds (output in %s/out8)", dir);
    o = slurp(dir, "out8");
    TT_CHECK(o && count(o, "] running") == 2 && strstr(o, "[distill-2] running"), "only round 2's distillation and "
             "evaluation ran (%d stages)", count(o, "] running"));
    free(o);
    char *pp1 = tp_strfmt("%s/pruned-1/prune_plan.json", pd);
    tp_prune_plan *q = NULL;
    int dn = 0, dh = 0, dk = 0;
    if (tp_prune_plan_load(pp1, &q) == TP_OK)
        for (int l = 1; l < q->cfg.n_layers; l++) {
            const tp_config *c = &q->cfg;
            dn += memcmp(q->neurons, q->neurons + (size_t)l * c->d_ff, (size_t)c->d_ff * sizeof(int)) != 0;
            dh += memcmp(q->heads, q->heads + (size_t)l * c->n_heads, (size_t)c->n_heads * sizeof(int)) != 0;
            dk += memcmp(q->kv_groups, q->kv_groups + (size_t)l * c->n_kv_heads, (size_t)c->n_kv_heads * sizeof(int)) != 0;
        }
    TT_CHECK(dn > 0 && dh > 0 && dk > 0, "round 1 keeps other neurons / heads / KV groups than in its first layer in "
             "%d / %d / %d of its other 5 layers", dn, dh, dk);
    tp_prune_plan_free(q);
    free(pp1);
    qc = check_composed(dmodel, pd);
    layer_list(qc, ll, sizeof ll);
    if (qc) tt_note("planted rounds: composed plan keeps teacher layers %s of 8, %d of 48 channels, %d of 4 KV groups, "
                    "%d of 8 heads, %d of 80 neurons", ll, qc->cfg.d_model, qc->cfg.n_kv_heads, qc->cfg.n_heads, qc->cfg.d_ff);
    tp_prune_plan_free(qc);
    free(pd);
    free(dmodel);
    free(dd);
    /* --iterate-teacher prev: round 2 learns from round 1's student, with round 2's own plan */
    snprintf(run, sizeof run,
             "TAPER_PROGRESS=0 '%s' compress '%s' --target-params 46704 --iterate 2 --iterate-teacher prev -o "
             "'%s/prev' --eval-text '%s/text.txt' " SMALL,
             bin, fixture, dir, dir);
    TT_CHECK(tt_sh("%s > '%s/out4' 2>&1", run, dir) == 0, "--iterate-teacher prev (output in %s/out4)", dir);
    d2 = json_at(dir, "prev/distill-2/args.json");
    o = slurp(dir, "out4");
    TT_CHECK(strstr(jstr(d2, "distill", "teacher"), "prev/student-1") && o && strstr(o, "pruned-2/prune_plan.json"),
             "prev: round 2 teacher %s", jstr(d2, "distill", "teacher"));
    cJSON_Delete(d2);
    free(o);
    /* a depth-only search has no 2-layer shape near the midpoint: the prune stage says so */
    snprintf(run, sizeof run,
             "TAPER_PROGRESS=0 '%s' compress '%s' --target-params 43152 --iterate 2 --axes depth -o '%s/depth' "
             "--eval-text '%s/text.txt' " SMALL " > '%s/out5' 2>&1",
             bin, fixture, dir, dir, dir);
    TT_CHECK(tt_sh("%s", run) != 0, "--iterate 2 --axes depth to 1 layer fails (no shape near the midpoint)");
    o = slurp(dir, "out5");
    TT_CHECK(o && strstr(o, "stage prune-1 failed"), "names the failing stage");
    free(o);
    free(rd);
    free(model);
    free(fixture);
    free(dir);
}

/* ---- the library call, no CLI and no child process ---- */

/* The settings a test runs: the fixture teacher to 1 layer, every size small. */
static void small_recipe(tp_recipe *r, const char *teacher, const char *text) {
    static const char *const kv[][2] = {
        {"target-params", "43152"}, {"axes", "depth"}, {"sdg-samples", "8"}, {"sdg-tokens", "40"},
        {"calib-samples", "4"},     {"calib-seq", "16"}, {"depth-samples", "2"}, {"steps", "3"},
        {"seq", "16"},              {"batch", "2"},      {"ckpt-every", "2"},    {"eval-chunks", "2"},
        {"eval-ctx", "16"},         {"tasks", ""},       {"threads", "1"},       {"lr", "0.001"}};
    TT_CHECK(tp_recipe_init(r) == TP_OK, "tp_recipe_init");
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        TT_CHECK(tp_recipe_set(r, kv[i][0], kv[i][1]) == TP_OK, "set %s: %s", kv[i][0], tp_errmsg());
    tp_recipe_set(r, "teacher", teacher);
    tp_recipe_set(r, "eval-text", text);
}

typedef struct {
    int begun, skipped, done;
    char names[512];
} stage_log;

static void on_stage(void *user, const char *stage, tp_stage_event ev, double seconds) {
    stage_log *l = user;
    (void)seconds;
    if (ev == TP_STAGE_BEGIN) {
        l->begun++;
        size_t u = strlen(l->names);
        snprintf(l->names + u, sizeof l->names - u, "%s%s", u ? " " : "", stage);
    }
    l->skipped += ev == TP_STAGE_SKIPPED;
    l->done += ev == TP_STAGE_DONE;
}

/* tp_compress_run from C: the stages run in this process in order, report.json holds the
 * numbers the stage files hold, a second call skips everything, and a run with each stage in a
 * forked child (isolate) gives the same numbers bit for bit. */
TT_TEST(compress_run_library) {
    char *dir = tt_path(tt_tmp_dir(), "compress-lib"), *text = tt_path(dir, "text.txt");
    char *teacher = tt_path(tt_fixtures_dir(), "sparsify/model");
    tt_sh("rm -rf '%s' && mkdir -p '%s'", dir, dir);
    tt_fox_text(text, 60);
    tp_recipe r;
    small_recipe(&r, teacher, text);
    TT_CHECK(tp_recipe_validate(&r) == TP_OK, "recipe valid: %s", tp_errmsg());
    char *run1 = tt_path(dir, "run"), *run2 = tt_path(dir, "isolated");
    stage_log l1 = {0};
    tp_compress_hooks h = {.on_stage = on_stage, .user = &l1};
    tp_compress_result res;
    tp_status s = tp_compress_run(&r, run1, &h, &res);
    TT_CHECK(s == TP_OK && !res.stopped && !res.failed_stage[0], "tp_compress_run: %s", s ? tp_errmsg() : "ok");
    TT_CHECK(l1.begun == 7 && l1.done == 7 && l1.skipped == 0 &&
                 !strcmp(l1.names, "sdg teacher-ppl importance prune pruned-ppl distill student-ppl"),
             "stages run: %d begun, %d done (%s)", l1.begun, l1.done, l1.names);
    TT_CHECK(res.teacher_params == 61680, "teacher parameters %zu", res.teacher_params);
    cJSON *rep = json_at(run1, "report.json"), *sp = json_at(run1, "student-ppl.json");
    double ppl = jnum(rep, "rounds.0.student.ppl");
    TT_CHECK(jnum(rep, "rounds.0.student.layers") == 1 && jnum(rep, "rounds.0.student.params") == 43152 &&
                 jnum(rep, "rounds.0.distill.steps") == 3 && isfinite(ppl) && ppl == jnum(sp, "results.0.ppl"),
             "report.json: student %g layers, %g params, %g steps, ppl %g (student-ppl.json %g)",
             jnum(rep, "rounds.0.student.layers"), jnum(rep, "rounds.0.student.params"), jnum(rep, "rounds.0.distill.steps"),
             ppl, jnum(sp, "results.0.ppl"));
    cJSON_Delete(sp);
    stage_log l2 = {0};
    h.user = &l2;
    TT_CHECK(tp_compress_run(&r, run1, &h, &res) == TP_OK && l2.begun == 0 && l2.skipped == 7,
             "second call: %d begun, %d skipped", l2.begun, l2.skipped);
    /* other settings: refused with the difference named, nothing run */
    tp_recipe_set(&r, "steps", "4");
    stage_log l3 = {0};
    h.user = &l3;
    s = tp_compress_run(&r, run1, &h, &res);
    TT_CHECK(s == TP_ERR_ARG && strstr(tp_errmsg(), "steps: 3 in the run, 4 now") && l3.begun + l3.skipped == 0,
             "changed steps: %s", tp_errmsg());
    tp_recipe_set(&r, "steps", "3");
    stage_log l4 = {0};
    h.user = &l4;
    h.isolate = 1;
    s = tp_compress_run(&r, run2, &h, &res);
    cJSON *rep2 = json_at(run2, "report.json");
    TT_CHECK(s == TP_OK && l4.done == 7 && jnum(rep2, "rounds.0.student.ppl") == ppl &&
                 jnum(rep2, "rounds.0.pruned.ppl") == jnum(rep, "rounds.0.pruned.ppl") &&
                 jnum(rep2, "teacher.ppl") == jnum(rep, "teacher.ppl"),
             "isolate: %s; student ppl %.17g vs %.17g in process", s ? tp_errmsg() : "ok",
             jnum(rep2, "rounds.0.student.ppl"), ppl);
    cJSON_Delete(rep);
    cJSON_Delete(rep2);
    tp_recipe_free(&r);
    free(run1), free(run2), free(teacher), free(text), free(dir);
}

/* "agg" reaches the pruning: the prune stage ranks by the pair the recipe names (prune.json
 * records it), and the run's recipe.json keeps it, so a rerun with another pair is refused. */
TT_TEST(compress_agg) {
    char *dir = tt_path(tt_tmp_dir(), "compress-agg"), *text = tt_path(dir, "text.txt");
    char *teacher = tt_path(tt_fixtures_dir(), "sparsify/model"), *run = tt_path(dir, "run");
    tt_sh("rm -rf '%s' && mkdir -p '%s'", dir, dir);
    tt_fox_text(text, 60);
    tp_recipe r;
    small_recipe(&r, teacher, text);
    tp_recipe_set(&r, "agg", "mean,l2");
    tp_compress_result res;
    tp_status s = tp_compress_run(&r, run, NULL, &res);
    TT_CHECK(s == TP_OK, "tp_compress_run: %s", s ? tp_errmsg() : "ok");
    cJSON *pj = json_at(run, "prune.json"), *rj = json_at(run, "recipe.json");
    const cJSON *a = pj ? cJSON_GetObjectItem(pj, "aggregation") : NULL, *ra = rj ? cJSON_GetObjectItem(rj, "agg") : NULL;
    TT_CHECK(cJSON_IsString(a) && !strcmp(a->valuestring, "batch=mean,seq=l2"), "prune.json aggregation: %s",
             cJSON_IsString(a) ? a->valuestring : "(none)");
    TT_CHECK(cJSON_IsString(ra) && !strcmp(ra->valuestring, "mean,l2"), "recipe.json agg: %s",
             cJSON_IsString(ra) ? ra->valuestring : "(none)");
    tp_recipe_set(&r, "agg", "l2,l2");
    s = tp_compress_run(&r, run, NULL, &res);
    TT_CHECK(s == TP_ERR_ARG && strstr(tp_errmsg(), "agg"), "another agg on rerun: %s", tp_errmsg());
    cJSON_Delete(pj);
    cJSON_Delete(rj);
    tp_recipe_free(&r);
    free(run), free(teacher), free(text), free(dir);
}

/* tp_recipe without a model: JSON round trip, the comparison, and messages naming the key. */
TT_TEST(compress_recipe_settings) {
    tp_recipe a, b;
    TT_CHECK(tp_recipe_init(&a) == TP_OK && tp_recipe_init(&b) == TP_OK, "init");
    TT_CHECK(tp_recipe_set(&a, "target-params", "1.5B") == TP_OK && a.target_params == 1500000000u, "1.5B -> %zu",
             a.target_params);
    TT_CHECK(tp_recipe_set(&a, "lr", "3e-4") == TP_OK && a.lr == 3e-4f, "lr");
    tp_recipe_set(&a, "teacher", "t.gguf");
    tp_recipe_set(&a, "tau2", NULL);
    cJSON *ja = tp_recipe_to_json(&a);
    char *text = cJSON_PrintUnformatted(ja);
    TT_CHECK(text && strstr(text, "\"lr\":0.0003,") && strstr(text, "\"tau2\":true") &&
                 !strncmp(text, "{\"teacher\":\"t.gguf\",\"target-params\":1500000000,", 47),
             "JSON form: %.120s", text ? text : "");
    TT_CHECK(tp_recipe_apply_json(&b, text, "mem") == TP_OK, "read back: %s", tp_errmsg());
    cJSON *jb = tp_recipe_to_json(&b);
    char diff[512];
    TT_CHECK(cJSON_Compare(ja, jb, 1) && tp_recipe_diff(ja, jb, diff, sizeof diff) == 0, "round trip is exact");
    tp_recipe_set(&b, "iterate", "2");
    tp_recipe_set(&b, "threads", "7"); /* free to change */
    cJSON_Delete(jb);
    jb = tp_recipe_to_json(&b);
    TT_CHECK(tp_recipe_diff(ja, jb, diff, sizeof diff) == 1 && strstr(diff, "iterate: 1 in the run, 2 now"), "diff: %s",
             diff);
    TT_CHECK(tp_recipe_set(&b, "steps", "3.5") == TP_ERR_ARG && strstr(tp_errmsg(), "steps expects an integer"),
             "steps 3.5: %s", tp_errmsg());
    TT_CHECK(tp_recipe_set(&b, "stepz", "3") == TP_ERR_ARG && strstr(tp_errmsg(), "stepz"), "unknown key: %s",
             tp_errmsg());
    tp_recipe_set(&b, "kd", "kl");
    TT_CHECK(tp_recipe_validate(&b) == TP_ERR_ARG && strstr(tp_errmsg(), "kd must be fkl, rkl, jsd or none"),
             "validate names the key: %s", tp_errmsg());
    tp_recipe_set(&b, "kd", "fkl");
    TT_CHECK(tp_recipe_set(&b, "agg", "l2") == TP_OK && tp_recipe_validate(&b) == TP_ERR_ARG &&
                 strstr(tp_errmsg(), "agg: aggregation \"l2\" is not BATCH,SEQ"),
             "agg l2: %s", tp_errmsg());
    TT_CHECK(tp_recipe_set(&b, "agg", "mean,max") == TP_OK && tp_recipe_validate(&b) == TP_ERR_ARG &&
                 strstr(tp_errmsg(), "agg: "),
             "agg mean,max: %s", tp_errmsg());
    TT_CHECK(tp_recipe_round_target(&b, 1000, 1) == (size_t)llround(1000 * sqrt(1500000000.0 / 1000)) &&
                 tp_recipe_round_target(&b, 1000, 2) == 1500000000u,
             "round targets %zu %zu", tp_recipe_round_target(&b, 1000, 1), tp_recipe_round_target(&b, 1000, 2));
    free(text);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    tp_recipe_free(&a);
    tp_recipe_free(&b);
}
