/* taper compress TEACHER --target-params N -o RUN_DIR: the whole Minitron recipe as one resumable
 * run. The recipe and its stages live in the library (include/taper/recipe.h: tp_recipe,
 * tp_compress_run, tp_compress_report); this file maps the command line and a --recipe file onto
 * a tp_recipe, runs it, and renders the report for people (report.md, the plots, the table on
 * stdout) from the report.json the library writes. Docs: docs/compress.md. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "taper/recipe.h"
#include "taper/compress.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper compress TEACHER --target-params N -o RUN_DIR [options]\n"
    "       taper compress --recipe recipe.json [options that override it]\n\n"
    "Runs the whole recipe (tp_compress_run, include/taper/recipe.h): optional teacher correction, importance on calibration text, pruning to\n"
    "a parameter budget (grid search ranked by held-out loss), distillation of the pruned student\n"
    "from TEACHER, evaluation of teacher, pruned and distilled models, export, and a report\n"
    "(RUN_DIR/report.md with loss and importance plots). Start it again with the same settings to\n"
    "resume: finished stages are skipped and training continues from its last checkpoint; Ctrl-C\n"
    "stops a training stage after writing a checkpoint.\n\n"
    "budget and data:\n"
    "  --target-params N     parameters of the student, e.g. 100M (required)\n"
    "  --axes A              which axes the search may shrink: all (default), width, depth\n"
    "  --agg BATCH,SEQ       importance aggregation the pruning ranks by (default l2,mean; see\n"
    "                        taper importance --help)\n"
    "  --tolerance F         the search takes shapes within +-F of each target (default 0.05)\n"
    "  --search S            untrained (default): the shape with the lowest untrained held-out loss;\n"
    "                        short-kd: the best --candidates of them each distilled --search-steps\n"
    "                        steps from one teacher cache, ranked by held-out KL (taper search;\n"
    "                        needs --data); RUN/search[-r]/ keeps the rankings\n"
    "  --candidates K        shapes distilled by short-kd (default 4)\n"
    "  --search-steps N      their distillation steps (default 200)\n"
    "  --data SHARDS         distillation data (token shards from taper tokenize / generate-data);\n"
    "                        without it the teacher generates it first (SDG, see --sdg-*)\n"
    "  --calib FILE          calibration text for importance (text or .jsonl with \"text\"); default:\n"
    "                        the SDG samples, else required\n"
    "  --calib-samples N     calibration samples (default 64)   --calib-seq N  tokens each (default 256)\n"
    "  --depth-samples N     of them, scored for layer removal (default 16)\n"
    "  --sdg-samples N       synthetic samples (default 256)    --sdg-tokens N tokens each (default 256)\n"
    "teacher correction (taper train of the teacher on the distillation data, before importance):\n"
    "  --correct-steps N     steps (default 0 = off); uses --seq, --batch, --accum, --ckpt-every\n"
    "  --correct-lr F        peak learning rate (default 2e-5; cosine to a tenth of it)\n"
    "  --correct-warmup N    warmup steps (default 0)\n"
    "  Every later stage uses the corrected teacher (RUN_DIR/teacher-corrected).\n"
    "progressive compression:\n"
    "  --iterate K           K prune -> distill rounds (default 1). Round r prunes to\n"
    "                        round(P0 * (N / P0)^(r/K)) parameters (P0: the teacher's; the last\n"
    "                        round exactly N), recomputing importance on the model it prunes\n"
    "  --iterate-teacher T   teacher of every round's distillation: original (default: the\n"
    "                        (corrected) teacher) or prev (the model that round pruned)\n"
    "distillation of every round (see taper distill --help):\n"
    "  --steps N (default 100)  --seq N (256)  --batch N (4)  --accum N (1)  --lr F (2e-4)\n"
    "  --warmup N (10)  --kd fkl|rkl|jsd|none (fkl)  --tau F (1)  --tau2  --topk K (0 = full\n"
    "  vocabulary)  --ce-weight F (0)  --inter none|cosine|mse (none)  --alpha dynamic|F (dynamic)\n"
    "  --emb-loss  --ckpt-every N (50)  --precision fp32|bf16 (fp32; also for --correct-steps)\n"
    "evaluation:\n"
    "  --eval-text FILE      perplexity text (default /usr/share/common-licenses/GPL-3)\n"
    "  --eval-chunks N       chunks of --eval-ctx tokens scored (default 16)  --eval-ctx N (256)\n"
    "  --tasks LIST          zero-shot tasks (taper eval); default arc_easy,piqa,winogrande when the\n"
    "                        benchmark data is present, else none\n"
    "  --task-limit N        items per task (default 200)   --data-dir DIR  benchmark files\n"
    "recipe and run directory:\n"
    "  --recipe FILE         a JSON object of settings: keys are the long options above without\n"
    "                        the dashes (plus \"teacher\" and \"out\"), values strings, numbers or\n"
    "                        booleans (for --tau2, --emb-loss); command-line options override it\n"
    "  -o, --out RUN_DIR     run directory (created); RUN_DIR/recipe.json keeps the effective\n"
    "                        settings, and a rerun whose settings differ is refused\n"
    "  --isolate             run each stage in a child process (the same library call after fork):\n"
    "                        what a stage allocated goes back to the system when it ends\n"
    "  --force               run anyway when the settings differ from RUN_DIR/recipe.json (it is\n"
    "                        replaced; stages already finished are kept, not redone)\n"
    "  --threads N           OpenMP threads for every stage (default: all cores; may change on\n"
    "                        resume)\n"
    "  -h, --help            this help\n";

static const char *CMD = "compress";




static const char *jstr(const cJSON *j, const char *path) {
    const cJSON *c = tp_json_at(j, path);
    return cJSON_IsString(c) ? c->valuestring : "";
}

/* ---- plots (gnuplot, when installed) ---- */

/* Writes the "step loss" lines of a metrics.jsonl (steps shifted by offset) for the plots. */
typedef struct {
    FILE *dat, *vdat;
    int offset, any_loss, steps;
} plot_acc;

static void plot_point(void *user, double s, double l, double v) {
    plot_acc *p = user;
    if (!isnan(l)) {
        p->any_loss = 1;
        if (s > p->steps) p->steps = (int)s;
        if (p->dat) fprintf(p->dat, "%g %g\n", s + p->offset, l);
    }
    if (!isnan(v) && p->vdat) fprintf(p->vdat, "%g %g\n", s + p->offset, v);
}

static plot_acc plot_data(const char *path, FILE *dat, FILE *vdat, int offset) {
    plot_acc p = {dat, vdat, offset, 0, 0};
    tp_metrics_each(path, plot_point, &p);
    return p;
}

static int gnuplot(const char *script) {
    FILE *p = popen("gnuplot 2>/dev/null", "w");
    if (!p) return -1;
    fputs(script, p);
    return pclose(p);
}

/* Appends to a growing malloc'd string. */
static void cat(char **s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cat(char **s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *add = NULL, *joined = NULL;
    if (vasprintf(&add, fmt, ap) < 0) add = NULL;
    va_end(ap);
    if (add && asprintf(&joined, "%s%s", *s ? *s : "", add) < 0) joined = NULL;
    free(add);
    free(*s);
    *s = joined;
}

static void plots(const tp_recipe *r, const char *out, int *have_loss, int *have_imp, int *have_corr) {
    *have_loss = *have_imp = *have_corr = 0;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "compress: gnuplot not found (apt-get install gnuplot-nox): no plots\n");
        return;
    }
    /* loss curves of every round, steps counted on from round to round */
    char *sc = tp_strfmt("set terminal pngcairo size 900,500\nset output '%s/loss.png'\nset xlabel 'step%s'\n"
                     "set ylabel 'loss (nats)'\nset grid\nset title 'distillation: training loss (%s) and validation "
                     "CE'\nplot ",
                     out, r->iterate > 1 ? " (rounds one after another)" : "", r->kd);
    int offset = 0, any = 0;
    for (int k = 1; k <= r->iterate; k++) {
        char *dd = tp_recipe_round_name(r, "distill", k, ""), *m = tp_strfmt("%s/%s/metrics.jsonl", out, dd);
        char *dat = tp_strfmt("%s/logs/loss-%d.dat", out, k), *vdat = tp_strfmt("%s/logs/val-%d.dat", out, k);
        FILE *f = dat ? fopen(dat, "w") : NULL, *fv = vdat ? fopen(vdat, "w") : NULL;
        plot_acc c = plot_data(m, f, fv, offset);
        if (f) fclose(f);
        if (fv) fclose(fv);
        if (c.any_loss) {
            char t[32] = "";
            if (r->iterate > 1) snprintf(t, sizeof t, " (round %d)", k);
            cat(&sc, "%s'%s' using 1:2 with lines title 'train loss%s', '%s' using 1:2 with linespoints title "
                     "'validation CE%s'",
                any ? ", " : "", dat, t, vdat, t);
            any = 1;
        }
        offset += c.steps;
        free(dd), free(m), free(dat), free(vdat);
    }
    cat(&sc, "\n");
    if (any && sc && gnuplot(sc) == 0) *have_loss = 1;
    free(sc);
    if (r->correct_steps > 0) {
        char *m = tp_strfmt("%s/correct/metrics.jsonl", out), *dat = tp_strfmt("%s/logs/correct.dat", out),
             *vdat = tp_strfmt("%s/logs/correct-val.dat", out);
        FILE *f = dat ? fopen(dat, "w") : NULL, *fv = vdat ? fopen(vdat, "w") : NULL;
        plot_acc c = plot_data(m, f, fv, 0);
        if (f) fclose(f);
        if (fv) fclose(fv);
        char *s = tp_strfmt("set terminal pngcairo size 900,500\nset output '%s/correct.png'\nset xlabel 'step'\n"
                        "set ylabel 'cross-entropy (nats)'\nset grid\nset title 'teacher correction on the "
                        "distillation data'\nplot '%s' using 1:2 with lines title 'train CE', '%s' using 1:2 with "
                        "linespoints title 'validation CE'\n",
                        out, dat, vdat);
        if (c.any_loss && s && gnuplot(s) == 0) *have_corr = 1;
        free(s), free(m), free(dat), free(vdat);
    }
    /* importance per layer of the model round 1 pruned: mean head and neuron score of the default
     * pair, Block Influence, LM loss increase on removal */
    tp_importance *imp = NULL;
    char *in = tp_recipe_round_name(r, "importance", 1, ".json");
    char *ip = tp_strfmt("%s/%s", out, in), *idat = tp_strfmt("%s/logs/importance.dat", out);
    if (ip && idat && tp_importance_load(ip, &imp) == TP_OK) {
        FILE *f = fopen(idat, "w");
        int L = imp->n_layers, pr = imp->default_pair;
        for (int l = 0; f && l < L; l++) {
            double hs = 0, ns = 0;
            for (int h = 0; h < imp->n_heads; h++) hs += imp->heads[((size_t)pr * L + l) * imp->n_heads + h];
            for (int n = 0; n < imp->d_ff; n++) ns += imp->neurons[((size_t)pr * L + l) * imp->d_ff + n];
            double ll = imp->layer_loss ? imp->layer_loss[l] - imp->base_loss : NAN;
            fprintf(f, "%d %g %g %g %g\n", l, hs / imp->n_heads, ns / imp->d_ff, imp->block_influence[l], ll);
        }
        if (f) fclose(f);
        char *s = tp_strfmt(
            "set terminal pngcairo size 900,700\nset output '%s/importance.png'\nset multiplot layout 2,2 title "
            "'%steacher importance per layer (%s)'\nset grid\nset xlabel 'layer'\nset style fill solid 0.6\n"
            "set boxwidth 0.8\nplot '%s' using 1:2 with boxes title 'mean head score'\n"
            "plot '%s' using 1:3 with boxes title 'mean neuron score'\n"
            "plot '%s' using 1:4 with boxes title 'block influence'\n"
            "plot '%s' using 1:5 with boxes title 'LM loss increase when removed'\nunset multiplot\n",
            out, r->correct_steps > 0 ? "corrected " : "", tp_agg_pair_name(pr), idat, idat, idat, idat);
        if (s && gnuplot(s) == 0) *have_imp = 1;
        free(s);
        tp_importance_free(imp);
    }
    tp_clear_error();
    free(in), free(ip), free(idat);
}

/* ---- report.md and the table, from report.json ---- */

/* parameter counts: 134.52M, or every digit below a million */
static const char *fmt_params(char *b, size_t n, double v) {
    if (v >= 1000000) snprintf(b, n, "%.2fM", v / 1e6);
    else snprintf(b, n, "%.0f", v);
    return b;
}

static void fmt_num(char *b, size_t n, double v, const char *f) {
    if (isnan(v)) snprintf(b, n, "—");
    else snprintf(b, n, f, v);
}

/* One row of the models table (report.md and stdout). */
static void model_row(FILE *f, const cJSON *m, const char *label, char **tasks, int nt) {
    char pb[32];
    fmt_params(pb, sizeof pb, tp_json_number(m, "params"));
    int L = (int)tp_json_number(m, "layers"), d = (int)tp_json_number(m, "hidden"), ff = (int)tp_json_number(m, "ffn"), h = (int)tp_json_number(m, "heads"),
        kv = (int)tp_json_number(m, "kv_heads");
    double ppl = tp_json_number(m, "ppl");
    fprintf(f, "| %s | %s | %d | %d | %d | %d / %d | %.3f |", label, pb, L, d, ff, h, kv, ppl);
    printf("%-18s %12s %8d %8d %8d %5d / %-2d %10.3f", label, pb, L, d, ff, h, kv, ppl);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(m, "tasks");
    for (int i = 0; i < nt; i++) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(t, tasks[i]);
        double acc = tp_json_number(e, "acc"), an = tp_json_number(e, "acc_norm");
        fprintf(f, " %.4f / %.4f |", acc, an);
        printf(" %6.4f/%6.4f", acc, an);
    }
    fprintf(f, "\n");
    printf("\n");
}

static void curve_text(const cJSON *o, char b[4][32]) {
    fmt_num(b[0], 32, tp_json_number(o, "train_loss_first"), "%.4f"), fmt_num(b[1], 32, tp_json_number(o, "train_loss_last"), "%.4f");
    fmt_num(b[2], 32, tp_json_number(o, "val_loss_first"), "%.4f"), fmt_num(b[3], 32, tp_json_number(o, "val_loss_last"), "%.4f");
}

static int render(const tp_recipe *r, const char *out, const cJSON *rj, size_t p0) {
    int have_loss, have_imp, have_corr;
    plots(r, out, &have_loss, &have_imp, &have_corr);
    int K = r->iterate, corr = r->correct_steps > 0;
    char tl[512];
    snprintf(tl, sizeof tl, "%s", r->tasks ? r->tasks : "");
    char *tasks[16];
    int nt = 0;
    char *save = NULL;
    for (char *t = strtok_r(tl, ",", &save); t && nt < 16; t = strtok_r(NULL, ",", &save)) tasks[nt++] = t;
    char *rp = tp_strfmt("%s/report.md", out);
    FILE *f = rp ? fopen(rp, "w") : NULL;
    if (!f) {
        free(rp);
        return cli_error(tp_fail(TP_ERR_IO, "%s/report.md: cannot write", out));
    }
    char pb[32], tb[32];
    fprintf(f, "# taper compress report\n\nTeacher `%s`, target %s parameters (axes: %s)", r->teacher,
            fmt_params(tb, 32, (double)r->target_params), r->axes);
    if (K > 1) {
        fprintf(f, ", reached in %d prune → distill rounds through", K);
        for (int k = 1; k <= K; k++)
            fprintf(f, " %s%s", k > 1 ? "→ " : "", fmt_params(pb, 32, (double)tp_recipe_round_target(r, p0, k)));
        fprintf(f, " (round r prunes to P0·(N/P0)^(r/K), P0 = %s); each round distils from the %s",
                fmt_params(pb, 32, (double)p0),
                strcmp(r->iterate_teacher, "prev") ? (corr ? "corrected teacher" : "teacher") : "model it pruned");
    }
    fprintf(f, ". Settings: `recipe.json`.\n\n");
    fprintf(f, "| model | parameters | layers | hidden | ffn | heads / kv | PPL (%d x %d tokens) |", r->eval_chunks,
            r->eval_ctx);
    for (int t = 0; t < nt; t++) fprintf(f, " %s acc / acc_norm |", tasks[t]);
    fprintf(f, "\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (int t = 0; t < nt; t++) fprintf(f, " ---: |");
    fprintf(f, "\n");
    printf("\n%-18s %12s %8s %8s %8s %10s %10s", "model", "params", "layers", "hidden", "ffn", "heads/kv", "PPL");
    for (int t = 0; t < nt; t++) printf(" %14s", tasks[t]);
    printf("\n");
    const cJSON *teacher = cJSON_GetObjectItemCaseSensitive(rj, "teacher"),
                *corrected = cJSON_GetObjectItemCaseSensitive(rj, "corrected"),
                *rounds = cJSON_GetObjectItemCaseSensitive(rj, "rounds"), *ro;
    model_row(f, teacher, "teacher", tasks, nt);
    if (corrected) model_row(f, corrected, "corrected teacher", tasks, nt);
    cJSON_ArrayForEach(ro, rounds) {
        const cJSON *pm = cJSON_GetObjectItemCaseSensitive(ro, "pruned"), *sm = cJSON_GetObjectItemCaseSensitive(ro, "student");
        model_row(f, pm, jstr(pm, "name"), tasks, nt);
        model_row(f, sm, jstr(sm, "name"), tasks, nt);
    }
    fprintf(f, "\nPPL: the chunks protocol (non-overlapping %d-token chunks, first %d) on `%s`. ", r->eval_ctx,
            r->eval_chunks, r->eval_text);
    if (nt) fprintf(f, "Tasks: first %d items each, scored as lm-evaluation-harness does (docs/eval.md).", r->task_limit);
    fprintf(f, "\n");
    if (corrected) {
        char b[4][32];
        curve_text(corrected, b);
        fprintf(f, "\n## Teacher correction\n\n`taper train` of the teacher on the distillation data (`%s`) before "
                   "anything else: %d steps x %d sequences x %d tokens (accumulation %d), lr %g (cosine to %g, warmup "
                   "%d). Training CE %s → %s, validation CE %s → %s; PPL %.3f → %.3f. Every later stage uses the "
                   "corrected teacher `teacher-corrected/`.\n",
                r->data ? r->data : "sdg/", r->correct_steps, r->batch, r->seq, r->accum, r->correct_lr,
                r->correct_lr / 10, r->correct_warmup, b[0], b[1], b[2], b[3], tp_json_number(teacher, "ppl"),
                tp_json_number(corrected, "ppl"));
        if (have_corr) fprintf(f, "\n![teacher correction](correct.png)\n");
    }
    fprintf(f, "\n## Rounds\n\n| round | pruned model | target | pruned params | pruned PPL | distilled from | steps | "
               "train loss first → last | val CE first → last | student params | student PPL |\n"
               "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    cJSON_ArrayForEach(ro, rounds) {
        const cJSON *pm = cJSON_GetObjectItemCaseSensitive(ro, "pruned"), *sm = cJSON_GetObjectItemCaseSensitive(ro, "student"),
                    *dj = cJSON_GetObjectItemCaseSensitive(ro, "distill");
        char b[4][32], p2[32], p3[32];
        curve_text(dj, b);
        fprintf(f, "| %d | %s | %s | %s | %.3f | %s | %d | %s → %s | %s → %s | %s | %.3f |\n", (int)tp_json_number(ro, "round"),
                jstr(ro, "pruned_from"), fmt_params(tb, 32, tp_json_number(ro, "target_params")),
                fmt_params(p2, 32, tp_json_number(pm, "params")), tp_json_number(pm, "ppl"), jstr(ro, "distill_teacher"),
                (int)tp_json_number(dj, "steps"), b[0], b[1], b[2], b[3], fmt_params(p3, 32, tp_json_number(sm, "params")), tp_json_number(sm, "ppl"));
    }
    fprintf(f, "\n## Distillation\n\n%s%d steps x %d sequences x %d tokens (accumulation %d), lr %g, loss %s "
               "(tau %g%s, top-k %d), CE weight %g, intermediate %s%s.\n",
            K > 1 ? "Every round: " : "", r->steps, r->batch, r->seq, r->accum, r->lr, r->kd, r->tau,
            r->tau2 ? ", x tau^2" : "", r->topk, r->ce_weight, r->inter, r->emb_loss ? " + embedding outputs" : "");
    char *last = tp_recipe_round_name(r, "distill", K, "/summary.json");
    cJSON *sum = last ? tp_json_load_optional(out, last) : NULL;
    if (sum) {
        char *s = cJSON_Print(sum);
        fprintf(f, "\nSummary%s (`%s`):\n\n```json\n%s\n```\n", K > 1 ? " of the last round" : "", last, s ? s : "{}");
        free(s);
    }
    free(last);
    cJSON_Delete(sum);
    if (have_loss) fprintf(f, "\n![loss](loss.png)\n");
    if (have_imp)
        fprintf(f, "\n## Importance of the %steacher's layers\n\n![importance](importance.png)\n", corr ? "corrected " : "");
    if (K == 1)
        fprintf(f, "\nFiles: `recipe.json`, `report.json`, `importance.json`, `pruned/` (with `prune_plan.json`), "
                   "`distill/` (metrics.jsonl, checkpoints), `student/` (the distilled model, HF folder), `*-ppl.json`, "
                   "`*-tasks.json`, %s`logs/`.\n",
                corr ? "`correct/` and `teacher-corrected/` (teacher correction), " : "");
    else
        fprintf(f, "\nFiles: `recipe.json`, `report.json`, per round r: `importance-r.json`, `pruned-r/` (with "
                   "`prune_plan.json`%s), `distill-r/`, `student-r/`; the last round's student is `student/`; "
                   "`*-ppl.json`, `*-tasks.json`, %s`logs/`.\n",
                strcmp(r->iterate_teacher, "prev") ? " and, from round 2, `teacher_plan.json` relative to the teacher" : "",
                corr ? "`correct/` and `teacher-corrected/` (teacher correction), " : "");
    fclose(f);
    printf("\nreport: %s%s%s%s\n", rp, have_loss ? ", loss.png" : "", have_imp ? ", importance.png" : "",
           have_corr ? ", correct.png" : "");
    free(rp);
    return CLI_OK;
}

/* ---- the command ---- */

enum { OPT_RECIPE = 1000, OPT_FORCE, OPT_ISOLATE, OPT_BASE = 2000 };

/* The library names settings by their recipe keys ("target-params must ...") and the hooks' force;
 * a usage error shows them as this command's flags. "out" is -o here, and a word of messages. */
static const char *const *key_flags(void) {
    enum { MAX = 96 };
    static char flags[MAX][48];
    static const char *map[2 * MAX + 7];
    int n = 0;
    for (int i = 0; i < tp_recipe_n_keys() && i < MAX; i++) {
        const char *k = tp_recipe_key_at(i)->key;
        if (!strcmp(k, "out")) continue;
        snprintf(flags[i], sizeof flags[i], "--%s", k);
        map[n++] = k;
        map[n++] = flags[i];
    }
    static const char *const more[] = {"force", "--force", "recipe", "--recipe", "target_params", "--target-params"};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) map[n++] = more[i];
    map[n] = NULL;
    return map;
}
/* a recipe file's messages quote its keys: only the command-line options it must not hold are flags */
static const char *const FILE_FLAGS[] = {"force", "--force", "help", "--help", NULL};
/* a failing stage names its job's fields: only the budget is this command's own flag */
static const char *const STAGE_FLAGS[] = {"target_params", "--target-params", NULL};
/* notes of the run */
static const char *const LOG_FLAGS[] = {"force", "--force", NULL};

static int usage_map(const char *const *map) {
    char *m = cli_map_fields(tp_errmsg(), map);
    int rc = cli_usage(CMD, "%s", m ? m : tp_errmsg());
    free(m);
    return rc;
}

/* Reads the recipe file, then the command line over it, into r. */
static int parse(tp_recipe *r, int argc, char **argv, int *force, int *isolate, int *help) {
    int nk = tp_recipe_n_keys();
    struct option lo[nk + 5];
    for (int i = 0; i < nk; i++) {
        const tp_recipe_key *k = tp_recipe_key_at(i);
        lo[i] = (struct option){k->key, k->is_flag ? no_argument : required_argument, 0, OPT_BASE + i};
    }
    lo[nk] = (struct option){"recipe", required_argument, 0, OPT_RECIPE};
    lo[nk + 1] = (struct option){"force", no_argument, 0, OPT_FORCE};
    lo[nk + 2] = (struct option){"isolate", no_argument, 0, OPT_ISOLATE};
    lo[nk + 3] = (struct option){"help", no_argument, 0, 'h'};
    lo[nk + 4] = (struct option){0, 0, 0, 0};
    struct {
        const char *key, *v;
    } cl[256];
    int ncl = 0, ch;
    const char *recipe = NULL;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "o:h", lo, NULL)) != -1) {
        if (ch == 'h') {
            *help = 1;
            return CLI_OK;
        } else if (ch == OPT_RECIPE) {
            recipe = optarg;
        } else if (ch == OPT_FORCE) {
            *force = 1;
        } else if (ch == OPT_ISOLATE) {
            *isolate = 1;
        } else if (ch == 'o' || (ch >= OPT_BASE && ch < OPT_BASE + nk)) {
            if (ncl == 256) return cli_usage(CMD, "more than 256 options");
            cl[ncl].key = ch == 'o' ? "out" : tp_recipe_key_at(ch - OPT_BASE)->key;
            cl[ncl++].v = optarg;
        } else {
            return cli_usage(CMD, "unknown option (see taper compress --help)");
        }
    }
    if (optind < argc - 1) return cli_usage(CMD, "expected one TEACHER model (see taper compress --help)");
    if (recipe) {
        char *text = NULL;
        tp_status s = tp_read_file(recipe, &text, NULL);
        if (s) return cli_error(tp_fail_ctx(s, "--recipe: "));
        s = tp_recipe_apply_json(r, text, recipe);
        free(text);
        if (s) return s == TP_ERR_ARG ? usage_map(FILE_FLAGS) : cli_error(s);
    }
    for (int k = 0; k < ncl; k++) {
        char label[64];
        snprintf(label, sizeof label, "--%s", cl[k].key);
        tp_status s = tp_recipe_set_as(r, cl[k].key, cl[k].v, label);
        if (s) return s == TP_ERR_ARG ? cli_usage(CMD, "%s", tp_errmsg()) : cli_error(s);
    }
    if (optind == argc - 1 && tp_recipe_set(r, "teacher", argv[optind])) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    return CLI_OK;
}


int cmd_compress(int argc, char **argv) {
    tp_recipe r;
    if (tp_recipe_init(&r)) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    int force = 0, isolate = 0, help = 0;
    int rc = parse(&r, argc, argv, &force, &isolate, &help);
    if (!rc && help) fputs(HELP, stdout);
    if (rc || help) {
        tp_recipe_free(&r);
        return rc;
    }
    /* what the library leaves to its surroundings: the benchmark directory's default */
    const char *dd = cli_data_dir(NULL);
    tp_status s = TP_OK;
    if (!r.teacher) rc = cli_usage(CMD, "expected one TEACHER model (or \"teacher\" in the recipe)");
    else if (!r.out) rc = cli_usage(CMD, "-o RUN_DIR is required");
    else if (!r.target_params) rc = cli_usage(CMD, "--target-params is required (e.g. 100M)");
    else if ((s = tp_recipe_validate(&r))) rc = s == TP_ERR_ARG ? usage_map(key_flags()) : cli_error(s);
    else if ((s = tp_recipe_finalize(&r, dd))) rc = cli_error(s);
    if (rc) {
        tp_recipe_free(&r);
        return rc;
    }
    if (r.threads) cli_set_threads(r.threads);
    volatile sig_atomic_t *stop = cli_stop_signals("\ntaper compress: stop requested: a training stage finishes "
                                                   "its step and writes a checkpoint, SDG keeps its complete parts; "
                                                   "no new stage starts (signal again to abort)\n");
    tp_compress_hooks hooks = {.stop = stop, .isolate = isolate, .force = force, .data_dir = dd};
    tp_compress_result res;
    cli_log_map(LOG_FLAGS);
    s = tp_compress_run(&r, r.out, &hooks, &res);
    cli_log_map(NULL);
    cli_stop_signals_end();
    if (s) {
        /* settings refused before any stage ran are usage errors; a failing stage is a failure */
        rc = s == TP_ERR_ARG && !res.failed_stage[0] ? usage_map(key_flags()) : cli_error_map(s, STAGE_FLAGS);
    } else if (res.stopped) {
        printf("compress: stopped by signal %d; run the same command again to resume\n", (int)*stop);
        rc = 128 + (int)*stop;
    } else {
        cJSON *rj = tp_json_load_optional(r.out, "report.json");
        rc = rj ? render(&r, r.out, rj, res.teacher_params)
                : cli_error(tp_fail(TP_ERR_IO, "%s/report.json: cannot read", r.out));
        cJSON_Delete(rj);
        if (!rc) printf("compress: done in %.1f min (this invocation); run directory %s\n", res.seconds / 60, r.out);
    }
    tp_recipe_free(&r);
    return rc;
}
