/* taper compress TEACHER --target-params N -o RUN_DIR: the whole Minitron recipe as one resumable
 * run. Each stage is a taper subcommand run as a child process (the same binary), writing its
 * files into RUN_DIR; a stage that finished leaves RUN_DIR/.done-<stage> and is skipped when the
 * run is started again, and the distillation stage resumes from its own checkpoints. Stages:
 *   sdg (when no --data) -> importance -> prune -> eval-teacher -> eval-pruned -> distill ->
 *   eval-student -> report (report.md, report.json, loss.png, importance.png). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "taper/compress.h"
#include "taper/model.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper compress TEACHER --target-params N -o RUN_DIR [options]\n\n"
    "Runs the whole recipe: importance on calibration text, pruning to a parameter budget (grid\n"
    "search ranked by held-out loss), distillation of the pruned student from TEACHER, evaluation\n"
    "of teacher, pruned and distilled models, export, and a report (RUN_DIR/report.md with loss and\n"
    "importance plots). Start it again with the same arguments to resume: finished stages are\n"
    "skipped and distillation continues from its last checkpoint.\n\n"
    "budget and data:\n"
    "  --target-params N     parameters of the student, e.g. 100M (required)\n"
    "  --axes A              which axes the search may shrink: all (default), width, depth\n"
    "  --data SHARDS         distillation data (token shards from taper tokenize / generate-data);\n"
    "                        without it the teacher generates it first (SDG, see --sdg-*)\n"
    "  --calib FILE          calibration text for importance (text or .jsonl with \"text\"); default:\n"
    "                        the SDG samples, else required\n"
    "  --calib-samples N     calibration samples (default 64)   --calib-seq N  tokens each (default 256)\n"
    "  --depth-samples N     of them, scored for layer removal (default 16)\n"
    "  --sdg-samples N       synthetic samples (default 256)    --sdg-tokens N tokens each (default 256)\n"
    "distillation (see taper distill --help):\n"
    "  --steps N (default 100)  --seq N (256)  --batch N (4)  --accum N (1)  --lr F (2e-4)\n"
    "  --warmup N (10)  --kd fkl|rkl|jsd|none (fkl)  --tau F (1)  --topk K (0 = full vocabulary)\n"
    "  --ce-weight F (0)  --inter none|cosine|mse (none)  --alpha dynamic|F (dynamic)\n"
    "  --ckpt-every N (50)\n"
    "evaluation:\n"
    "  --eval-text FILE      perplexity text (default /usr/share/common-licenses/GPL-3)\n"
    "  --eval-chunks N       chunks of --eval-ctx tokens scored (default 16)  --eval-ctx N (256)\n"
    "  --tasks LIST          zero-shot tasks (taper eval); default arc_easy,piqa,winogrande when the\n"
    "                        benchmark data is present, else none\n"
    "  --task-limit N        items per task (default 200)   --data-dir DIR  benchmark files\n"
    "other:\n"
    "  -o, --out RUN_DIR     run directory (created)\n"
    "  --threads N           OpenMP threads for every stage (default: all cores)\n"
    "  -h, --help            this help\n";

typedef struct {
    const char *teacher, *out, *data, *calib, *axes, *eval_text, *tasks, *data_dir, *kd, *inter, *alpha;
    const char *target;
    int depth_samples;
    int calib_samples, calib_seq, sdg_samples, sdg_tokens, steps, seq, batch, accum, warmup, topk, ckpt_every;
    int eval_chunks, eval_ctx, task_limit, threads;
    float lr, tau, ce_weight;
    char self[PATH_MAX];
} args;

static char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *pathf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

static int exists(const char *p) { return access(p, F_OK) == 0; }

static int stage_done(const args *a, const char *stage) {
    char *p = pathf("%s/.done-%s", a->out, stage);
    int d = p && exists(p);
    free(p);
    return d;
}

static void mark_done(const args *a, const char *stage) {
    char *p = pathf("%s/.done-%s", a->out, stage);
    FILE *f = p ? fopen(p, "w") : NULL;
    if (f) fclose(f);
    free(p);
}

/* Runs `taper ARGV...` (this binary) with stdout into RUN_DIR/logs/<stage>.out; returns its exit code. */
static int run_stage(const args *a, const char *stage, char **argv) {
    char *log = pathf("%s/logs/%s.out", a->out, stage);
    fprintf(stderr, "\ncompress: [%s] taper", stage);
    for (int i = 1; argv[i]; i++) fprintf(stderr, " %s", argv[i]);
    fprintf(stderr, "\n");
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        free(log);
        return -1;
    }
    if (pid == 0) {
        int fd = log ? open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
        if (fd >= 0) {
            dup2(fd, 1);
            close(fd);
        }
        execv(a->self, argv);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    free(log);
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* argv builder */
typedef struct {
    char *v[96];
    int n;
} argl;

static void add(argl *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(argl *l, const char *fmt, ...) {
    if (l->n >= 94) return;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    l->v[l->n++] = s;
    l->v[l->n] = NULL;
}

static void argl_free(argl *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    l->n = 0;
}

static int stage(const args *a, const char *name, argl *l) {
    if (stage_done(a, name)) {
        fprintf(stderr, "compress: [%s] done earlier, skipped\n", name);
        argl_free(l);
        return 0;
    }
    if (a->threads) {
        add(l, "--threads");
        add(l, "%d", a->threads);
    }
    int rc = run_stage(a, name, l->v);
    argl_free(l);
    if (rc) {
        fprintf(stderr, "taper compress: stage %s failed (exit %d); its output is in %s/logs/%s.out. Fix the cause "
                        "and run the same command again to resume.\n",
                name, rc, a->out, name);
        return rc;
    }
    mark_done(a, name);
    return 0;
}

static int eval_stage(const args *a, const char *name, const char *model) {
    argl l = {0};
    add(&l, "taper");
    add(&l, "ppl");
    add(&l, "%s", model);
    add(&l, "--data");
    add(&l, "%s", a->eval_text);
    add(&l, "--ctx");
    add(&l, "%d", a->eval_ctx);
    add(&l, "--max-chunks");
    add(&l, "%d", a->eval_chunks);
    add(&l, "--json=%s/%s-ppl.json", a->out, name);
    char st[64];
    snprintf(st, sizeof st, "%s-ppl", name);
    int rc = stage(a, st, &l);
    if (rc || !a->tasks || !*a->tasks) return rc;
    add(&l, "taper");
    add(&l, "eval");
    add(&l, "%s", model);
    add(&l, "--tasks");
    add(&l, "%s", a->tasks);
    add(&l, "--limit");
    add(&l, "%d", a->task_limit);
    if (a->data_dir) {
        add(&l, "--data-dir");
        add(&l, "%s", a->data_dir);
    }
    add(&l, "--json=%s/%s-tasks.json", a->out, name);
    snprintf(st, sizeof st, "%s-tasks", name);
    return stage(a, st, &l);
}

/* ---- report ---- */

static cJSON *read_json(const char *out, const char *name) {
    char *p = pathf("%s/%s", out, name), *text = NULL;
    cJSON *j = NULL;
    if (p && tp_read_file(p, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    free(text);
    free(p);
    return j;
}

static double jnum(const cJSON *j, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *c = j;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ".", &save); tok && c; tok = strtok_r(NULL, ".", &save))
        c = cJSON_IsArray(c) ? cJSON_GetArrayItem(c, atoi(tok)) : cJSON_GetObjectItemCaseSensitive(c, tok);
    return cJSON_IsNumber(c) ? c->valuedouble : NAN;
}

/* perplexity under the chunks protocol from a `taper ppl --json` file */
static double ppl_of(const char *out, const char *name) {
    char f[128];
    snprintf(f, sizeof f, "%s-ppl.json", name);
    cJSON *j = read_json(out, f);
    double v = NAN;
    const cJSON *r = j ? cJSON_GetObjectItem(j, "results") : NULL, *e;
    cJSON_ArrayForEach(e, r) {
        const cJSON *p = cJSON_GetObjectItem(e, "protocol");
        if (cJSON_IsString(p) && !strcmp(p->valuestring, "chunks")) v = jnum(e, "ppl");
    }
    if (isnan(v)) v = jnum(j, "results.0.ppl");
    cJSON_Delete(j);
    return v;
}

static double task_acc(const char *out, const char *name, const char *task, const char *metric) {
    char f[128];
    snprintf(f, sizeof f, "%s-tasks.json", name);
    cJSON *j = read_json(out, f);
    double v = NAN;
    const cJSON *e, *arr = j ? cJSON_GetObjectItem(j, "tasks") : NULL;
    cJSON_ArrayForEach(e, arr) {
        const cJSON *n = cJSON_GetObjectItem(e, "task");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, task)) v = jnum(cJSON_GetObjectItem(e, "metrics"), metric);
    }
    cJSON_Delete(j);
    return v;
}

static int gnuplot(const args *a, const char *script) {
    FILE *p = popen("gnuplot 2>/dev/null", "w");
    if (!p) return -1;
    fputs(script, p);
    int rc = pclose(p);
    (void)a;
    return rc;
}

static void plots(const args *a, int *have_loss, int *have_imp) {
    *have_loss = *have_imp = 0;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "compress: gnuplot not found (apt-get install gnuplot-nox): no plots\n");
        return;
    }
    /* loss curve: metrics.jsonl -> two columns */
    char *m = pathf("%s/distill/metrics.jsonl", a->out), *dat = pathf("%s/logs/loss.dat", a->out),
         *vdat = pathf("%s/logs/val.dat", a->out);
    char *text = NULL;
    if (m && dat && vdat && tp_read_file(m, &text, NULL) == TP_OK) {
        FILE *f = fopen(dat, "w"), *fv = fopen(vdat, "w");
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line && f && fv; line = strtok_r(NULL, "\n", &save)) {
            cJSON *j = cJSON_Parse(line);
            double s = jnum(j, "step"), l = jnum(j, "loss"), v = jnum(j, "val_loss");
            if (!isnan(s) && !isnan(l)) fprintf(f, "%g %g\n", s, l);
            if (!isnan(s) && !isnan(v)) fprintf(fv, "%g %g\n", s, v);
            cJSON_Delete(j);
        }
        if (f) fclose(f);
        if (fv) fclose(fv);
        char *sc = pathf("set terminal pngcairo size 900,500\nset output '%s/loss.png'\nset xlabel 'step'\n"
                         "set ylabel 'loss (nats)'\nset grid\nset title 'distillation: training loss (logits KD) and "
                         "validation CE'\nplot '%s' using 1:2 with lines title 'train loss', '%s' using 1:2 with "
                         "linespoints title 'validation CE'\n",
                         a->out, dat, vdat);
        if (sc && gnuplot(a, sc) == 0) *have_loss = 1;
        free(sc);
    }
    free(text);
    free(m);
    free(dat);
    free(vdat);
    /* importance per layer: sum of head scores and mean neuron score of the default pair, BI */
    tp_importance *imp = NULL;
    char *ip = pathf("%s/importance.json", a->out), *idat = pathf("%s/logs/importance.dat", a->out);
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
        char *sc = pathf(
            "set terminal pngcairo size 900,700\nset output '%s/importance.png'\nset multiplot layout 2,2 title "
            "'teacher importance per layer (%s)'\nset grid\nset xlabel 'layer'\nset style fill solid 0.6\n"
            "set boxwidth 0.8\nplot '%s' using 1:2 with boxes title 'mean head score'\n"
            "plot '%s' using 1:3 with boxes title 'mean neuron score'\n"
            "plot '%s' using 1:4 with boxes title 'block influence'\n"
            "plot '%s' using 1:5 with boxes title 'LM loss increase when removed'\nunset multiplot\n",
            a->out, tp_agg_pair_name(pr), idat, idat, idat, idat);
        if (sc && gnuplot(a, sc) == 0) *have_imp = 1;
        free(sc);
        tp_importance_free(imp);
    }
    free(ip);
    free(idat);
}

static int report(const args *a) {
    int have_loss, have_imp;
    plots(a, &have_loss, &have_imp);
    const char *names[3] = {"teacher", "pruned", "student"};
    const char *paths[3] = {a->teacher, "pruned", "student"};
    size_t params[3] = {0, 0, 0};
    tp_config cfgs[3];
    memset(cfgs, 0, sizeof cfgs);
    for (int i = 0; i < 3; i++) {
        char *p = i == 0 ? strdup(a->teacher) : pathf("%s/%s", a->out, paths[i]);
        tp_model *m = NULL;
        if (p && tp_model_load(p, &m) == TP_OK) {
            params[i] = tp_config_n_params(&m->cfg);
            cfgs[i] = m->cfg;
        }
        tp_model_free(m);
        free(p);
    }
    char *rp = pathf("%s/report.md", a->out);
    FILE *f = rp ? fopen(rp, "w") : NULL;
    if (!f) {
        free(rp);
        return cli_error(tp_fail(TP_ERR_IO, "%s/report.md: cannot write", a->out));
    }
    cJSON *sum = read_json(a->out, "distill/summary.json");
    fprintf(f, "# taper compress report\n\nTeacher `%s`, target %s parameters (axes: %s).\n\n", a->teacher, a->target,
            a->axes);
    fprintf(f, "| model | parameters | layers | hidden | ffn | heads / kv | PPL (%d x %d tokens) |", a->eval_chunks,
            a->eval_ctx);
    char tl[512];
    snprintf(tl, sizeof tl, "%s", a->tasks ? a->tasks : "");
    const char *tasks[16];
    int nt = 0;
    char *save = NULL;
    for (char *t = strtok_r(tl, ",", &save); t && nt < 16; t = strtok_r(NULL, ",", &save)) tasks[nt++] = t;
    for (int t = 0; t < nt; t++) fprintf(f, " %s acc / acc_norm |", tasks[t]);
    fprintf(f, "\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (int t = 0; t < nt; t++) fprintf(f, " ---: |");
    fprintf(f, "\n");
    printf("\n%-8s %12s %8s %8s %8s %10s %10s", "model", "params", "layers", "hidden", "ffn", "heads/kv", "PPL");
    for (int t = 0; t < nt; t++) printf(" %14s", tasks[t]);
    printf("\n");
    for (int i = 0; i < 3; i++) {
        double ppl = ppl_of(a->out, names[i]);
        fprintf(f, "| %s | %.2fM | %d | %d | %d | %d / %d | %.3f |", names[i], params[i] / 1e6, cfgs[i].n_layers,
                cfgs[i].d_model, cfgs[i].d_ff, cfgs[i].n_heads, cfgs[i].n_kv_heads, ppl);
        printf("%-8s %11.2fM %8d %8d %8d %5d / %-2d %10.3f", names[i], params[i] / 1e6, cfgs[i].n_layers,
               cfgs[i].d_model, cfgs[i].d_ff, cfgs[i].n_heads, cfgs[i].n_kv_heads, ppl);
        for (int t = 0; t < nt; t++) {
            double acc = task_acc(a->out, names[i], tasks[t], "acc"),
                   an = task_acc(a->out, names[i], tasks[t], "acc_norm");
            fprintf(f, " %.4f / %.4f |", acc, an);
            printf(" %6.4f/%6.4f", acc, an);
        }
        fprintf(f, "\n");
        printf("\n");
    }
    fprintf(f, "\nPPL: the chunks protocol (non-overlapping %d-token chunks, first %d) on `%s`. ", a->eval_ctx,
            a->eval_chunks, a->eval_text);
    if (nt) fprintf(f, "Tasks: first %d items each, scored as lm-evaluation-harness does (docs/eval.md).", a->task_limit);
    fprintf(f, "\n\n## Distillation\n\n%d steps x %d sequences x %d tokens (accumulation %d), lr %g, loss %s "
               "(tau %g, top-k %d), CE weight %g, intermediate %s.\n",
            a->steps, a->batch, a->seq, a->accum, a->lr, a->kd, a->tau, a->topk, a->ce_weight, a->inter);
    if (sum) {
        char *s = cJSON_Print(sum);
        fprintf(f, "\nSummary (`distill/summary.json`):\n\n```json\n%s\n```\n", s ? s : "{}");
        free(s);
    }
    if (have_loss) fprintf(f, "\n![loss](loss.png)\n");
    if (have_imp) fprintf(f, "\n## Importance of the teacher's layers\n\n![importance](importance.png)\n");
    fprintf(f, "\nFiles: `importance.json`, `pruned/` (with `prune_plan.json`), `distill/` (metrics.jsonl, "
               "checkpoints), `student/` (the distilled model, HF folder), `*-ppl.json`, `*-tasks.json`, `logs/`.\n");
    fclose(f);
    cJSON_Delete(sum);
    printf("\nreport: %s%s%s\n", rp, have_loss ? ", loss.png" : "", have_imp ? ", importance.png" : "");
    free(rp);
    return CLI_OK;
}

int cmd_compress(int argc, char **argv) {
    static const struct option opts[] = {
        {"target-params", required_argument, 0, 'P'}, {"axes", required_argument, 0, 'A'},
        {"data", required_argument, 0, 'D'},          {"calib", required_argument, 0, 'c'},
        {"calib-samples", required_argument, 0, 1},   {"calib-seq", required_argument, 0, 2},
        {"sdg-samples", required_argument, 0, 3},     {"sdg-tokens", required_argument, 0, 4},
        {"steps", required_argument, 0, 5},           {"seq", required_argument, 0, 6},
        {"batch", required_argument, 0, 7},           {"accum", required_argument, 0, 8},
        {"lr", required_argument, 0, 9},              {"warmup", required_argument, 0, 10},
        {"kd", required_argument, 0, 11},             {"tau", required_argument, 0, 12},
        {"topk", required_argument, 0, 13},           {"ce-weight", required_argument, 0, 14},
        {"inter", required_argument, 0, 15},          {"alpha", required_argument, 0, 16},
        {"ckpt-every", required_argument, 0, 17},     {"eval-text", required_argument, 0, 18},
        {"eval-chunks", required_argument, 0, 19},    {"eval-ctx", required_argument, 0, 20},
        {"tasks", required_argument, 0, 21},          {"task-limit", required_argument, 0, 22},
        {"data-dir", required_argument, 0, 23},       {"threads", required_argument, 0, 24},
        {"depth-samples", required_argument, 0, 25},
        {"out", required_argument, 0, 'o'},           {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *cmd = "compress";
    args a;
    memset(&a, 0, sizeof a);
    a.axes = "all";
    a.eval_text = "/usr/share/common-licenses/GPL-3";
    a.kd = "fkl";
    a.inter = "none";
    a.alpha = "dynamic";
    a.calib_samples = 64;
    a.depth_samples = 16;
    a.calib_seq = 256;
    a.sdg_samples = 256;
    a.sdg_tokens = 256;
    a.steps = 100;
    a.seq = 256;
    a.batch = 4;
    a.accum = 1;
    a.warmup = 10;
    a.ckpt_every = 50;
    a.eval_chunks = 16;
    a.eval_ctx = 256;
    a.task_limit = 200;
    a.lr = 2e-4f;
    a.tau = 1.0f;
    int ch, tasks_set = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        int rc = CLI_OK;
        switch (ch) {
        case 'P': a.target = optarg; break;
        case 'A': a.axes = optarg; break;
        case 'D': a.data = optarg; break;
        case 'c': a.calib = optarg; break;
        case 1: rc = cli_int(cmd, "--calib-samples", optarg, 1, 1 << 20, &a.calib_samples); break;
        case 2: rc = cli_int(cmd, "--calib-seq", optarg, 2, 1 << 16, &a.calib_seq); break;
        case 3: rc = cli_int(cmd, "--sdg-samples", optarg, 1, 1 << 24, &a.sdg_samples); break;
        case 4: rc = cli_int(cmd, "--sdg-tokens", optarg, 1, 1 << 16, &a.sdg_tokens); break;
        case 5: rc = cli_int(cmd, "--steps", optarg, 0, 1 << 30, &a.steps); break;
        case 6: rc = cli_int(cmd, "--seq", optarg, 2, 1 << 16, &a.seq); break;
        case 7: rc = cli_int(cmd, "--batch", optarg, 1, 4096, &a.batch); break;
        case 8: rc = cli_int(cmd, "--accum", optarg, 1, 4096, &a.accum); break;
        case 9: rc = cli_float(cmd, "--lr", optarg, 0, 10, &a.lr); break;
        case 10: rc = cli_int(cmd, "--warmup", optarg, 0, 1 << 30, &a.warmup); break;
        case 11: a.kd = optarg; break;
        case 12: rc = cli_float(cmd, "--tau", optarg, 1e-3, 1e3, &a.tau); break;
        case 13: rc = cli_int(cmd, "--topk", optarg, 0, 1 << 20, &a.topk); break;
        case 14: rc = cli_float(cmd, "--ce-weight", optarg, 0, 1e3, &a.ce_weight); break;
        case 15: a.inter = optarg; break;
        case 16: a.alpha = optarg; break;
        case 17: rc = cli_int(cmd, "--ckpt-every", optarg, 0, 1 << 30, &a.ckpt_every); break;
        case 18: a.eval_text = optarg; break;
        case 19: rc = cli_int(cmd, "--eval-chunks", optarg, 1, 1 << 20, &a.eval_chunks); break;
        case 20: rc = cli_int(cmd, "--eval-ctx", optarg, 2, 1 << 16, &a.eval_ctx); break;
        case 21: a.tasks = optarg; tasks_set = 1; break;
        case 22: rc = cli_int(cmd, "--task-limit", optarg, 1, 1 << 24, &a.task_limit); break;
        case 23: a.data_dir = optarg; break;
        case 24: rc = cli_int(cmd, "--threads", optarg, 1, 1024, &a.threads); break;
        case 25: rc = cli_int(cmd, "--depth-samples", optarg, 0, 1 << 20, &a.depth_samples); break;
        case 'o': a.out = optarg; break;
        case 'h': fputs(HELP, stdout); return CLI_OK;
        default: return cli_usage(cmd, "unknown option (see taper compress --help)");
        }
        if (rc) return rc;
    }
    if (optind != argc - 1) return cli_usage(cmd, "expected one TEACHER model (see taper compress --help)");
    a.teacher = argv[optind];
    if (!a.out) return cli_usage(cmd, "-o RUN_DIR is required");
    if (!a.target) return cli_usage(cmd, "--target-params is required (e.g. 100M)");
    size_t target = 0;
    if (tp_parse_count(a.target, &target)) return cli_usage(cmd, "--target-params: %s", tp_errmsg());
    if (strcmp(a.axes, "all") && strcmp(a.axes, "width") && strcmp(a.axes, "depth"))
        return cli_usage(cmd, "--axes must be all, width or depth");
    if (strcmp(a.kd, "fkl") && strcmp(a.kd, "rkl") && strcmp(a.kd, "jsd") && strcmp(a.kd, "none"))
        return cli_usage(cmd, "--kd must be fkl, rkl, jsd or none");
    if (!exists(a.eval_text))
        return cli_error(tp_fail(TP_ERR_ARG, "--eval-text %s does not exist", a.eval_text));
    if (!tasks_set) {
        /* default tasks only when their data is there */
        const char *dd = a.data_dir ? a.data_dir : getenv("TAPER_DATA");
        char *probe = pathf("%s/arc_easy/arc_easy.jsonl", dd ? dd : "../shared/data");
        if (probe && exists(probe)) a.tasks = "arc_easy,piqa,winogrande";
        else fprintf(stderr, "compress: no benchmark data found (%s): zero-shot tasks skipped\n", probe ? probe : "");
        free(probe);
    }
    ssize_t sl = readlink("/proc/self/exe", a.self, sizeof a.self - 1);
    if (sl <= 0) return cli_error(tp_fail(TP_ERR_IO, "cannot find the taper binary (/proc/self/exe)"));
    a.self[sl] = 0;
    char *logs = pathf("%s/logs", a.out);
    if ((mkdir(a.out, 0777) && errno != EEXIST) || !logs || (mkdir(logs, 0777) && errno != EEXIST)) {
        free(logs);
        return cli_error(tp_fail(TP_ERR_IO, "%s: cannot create: %s", a.out, strerror(errno)));
    }
    free(logs);
    if (a.threads) cli_set_threads(a.threads);
    double t0 = tp_time_s();
    int rc = 0;
    argl l = {0};
    char *data = a.data ? strdup(a.data) : pathf("%s/sdg", a.out);
    char *calib = a.calib ? strdup(a.calib) : pathf("%s/sdg/samples.jsonl", a.out);
    if (!a.data) {
        add(&l, "taper"); add(&l, "generate-data"); add(&l, "%s", a.teacher); add(&l, "-o"); add(&l, "%s", data);
        add(&l, "--samples"); add(&l, "%d", a.sdg_samples); add(&l, "--max-tokens"); add(&l, "%d", a.sdg_tokens);
        rc = stage(&a, "sdg", &l);
    } else if (!a.calib) {
        rc = cli_usage(cmd, "--calib FILE is required with --data (calibration text for importance)");
    }
    if (!rc) {
        add(&l, "taper"); add(&l, "importance"); add(&l, "%s", a.teacher); add(&l, "--data"); add(&l, "%s", calib);
        add(&l, "-o"); add(&l, "%s/importance.json", a.out); add(&l, "--samples"); add(&l, "%d", a.calib_samples);
        add(&l, "--seq-len"); add(&l, "%d", a.calib_seq);
        add(&l, "--depth-samples"); add(&l, "%d", a.depth_samples < a.calib_samples ? a.depth_samples : a.calib_samples);
        rc = stage(&a, "importance", &l);
    }
    if (!rc) {
        add(&l, "taper"); add(&l, "prune"); add(&l, "%s", a.teacher); add(&l, "--scores");
        add(&l, "%s/importance.json", a.out); add(&l, "--target-params"); add(&l, "%s", a.target);
        add(&l, "--data"); add(&l, "%s", calib); add(&l, "--eval-samples"); add(&l, "8");
        tp_model *tm = NULL;
        if (strcmp(a.axes, "all") && tp_model_load(a.teacher, &tm) == TP_OK) {
            if (!strcmp(a.axes, "width")) {
                add(&l, "--layers"); add(&l, "%d", tm->cfg.n_layers);
            } else {
                add(&l, "--hidden"); add(&l, "%d", tm->cfg.d_model);
                add(&l, "--ffn"); add(&l, "%d", tm->cfg.d_ff);
                add(&l, "--heads"); add(&l, "%d", tm->cfg.n_heads);
                add(&l, "--kv-heads"); add(&l, "%d", tm->cfg.n_kv_heads);
            }
        }
        tp_model_free(tm);
        add(&l, "-o"); add(&l, "%s/pruned", a.out); add(&l, "--json=%s/prune.json", a.out);
        rc = stage(&a, "prune", &l);
    }
    char *pruned = pathf("%s/pruned", a.out), *student = pathf("%s/student", a.out);
    if (!rc) rc = eval_stage(&a, "teacher", a.teacher);
    if (!rc) rc = eval_stage(&a, "pruned", pruned);
    if (!rc) {
        add(&l, "taper"); add(&l, "distill"); add(&l, "%s", pruned); add(&l, "--teacher"); add(&l, "%s", a.teacher);
        add(&l, "--data"); add(&l, "%s", data); add(&l, "--run-dir"); add(&l, "%s/distill", a.out); add(&l, "--resume");
        add(&l, "--steps"); add(&l, "%d", a.steps); add(&l, "--seq"); add(&l, "%d", a.seq);
        add(&l, "--batch"); add(&l, "%d", a.batch); add(&l, "--accum"); add(&l, "%d", a.accum);
        add(&l, "--lr"); add(&l, "%g", a.lr); add(&l, "--min-lr"); add(&l, "%g", a.lr / 10);
        add(&l, "--warmup"); add(&l, "%d", a.warmup); add(&l, "--ckpt-every"); add(&l, "%d", a.ckpt_every);
        add(&l, "--val-every"); add(&l, "%d", a.steps >= 10 ? a.steps / 10 : 1);
        add(&l, "--kd"); add(&l, "%s", a.kd); add(&l, "--tau"); add(&l, "%g", a.tau);
        add(&l, "--topk"); add(&l, "%d", a.topk); add(&l, "--ce-weight"); add(&l, "%g", a.ce_weight);
        add(&l, "--inter"); add(&l, "%s", a.inter); add(&l, "--alpha"); add(&l, "%s", a.alpha);
        add(&l, "--plan"); add(&l, "%s/pruned/prune_plan.json", a.out);
        add(&l, "--export-hf"); add(&l, "%s", student);
        rc = stage(&a, "distill", &l);
    }
    if (!rc) rc = eval_stage(&a, "student", student);
    if (!rc) rc = report(&a);
    if (!rc) printf("compress: done in %.1f min (this invocation); run directory %s\n", (tp_time_s() - t0) / 60, a.out);
    free(pruned);
    free(student);
    free(data);
    free(calib);
    return rc;
}
