/* taper compress TEACHER --target-params N -o RUN_DIR: the whole Minitron recipe as one resumable
 * run. Each stage is a taper subcommand run as a child process (the same binary), writing its
 * files into RUN_DIR; a stage that finished leaves RUN_DIR/.done-<stage> and is skipped when the
 * run is started again, and the training stages resume from their own checkpoints. Stages:
 *   sdg (when no --data) -> correct (teacher correction, --correct-steps) -> teacher-ppl ->
 *   corrected-ppl -> per round r of --iterate K: importance-r -> prune-r -> pruned-r-ppl ->
 *   distill-r -> student-r-ppl -> report (report.md, report.json, loss.png, importance.png).
 * With K = 1 the round stages keep their plain names (importance, prune, distill, ...).
 * Options come from the command line and/or a JSON recipe (--recipe); the effective settings are
 * kept in RUN_DIR/recipe.json and a rerun with different ones is refused unless --force.
 * What lives elsewhere: every stage's work (cli/cmd_*.c, src/); docs in docs/compress.md. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
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
    "usage: taper compress TEACHER --target-params N -o RUN_DIR [options]\n"
    "       taper compress --recipe recipe.json [options that override it]\n\n"
    "Runs the whole recipe: optional teacher correction, importance on calibration text, pruning to\n"
    "a parameter budget (grid search ranked by held-out loss), distillation of the pruned student\n"
    "from TEACHER, evaluation of teacher, pruned and distilled models, export, and a report\n"
    "(RUN_DIR/report.md with loss and importance plots). Start it again with the same settings to\n"
    "resume: finished stages are skipped and training continues from its last checkpoint.\n\n"
    "budget and data:\n"
    "  --target-params N     parameters of the student, e.g. 100M (required)\n"
    "  --axes A              which axes the search may shrink: all (default), width, depth\n"
    "  --tolerance F         the search takes shapes within +-F of each target (default 0.05)\n"
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
    "  --force               run anyway when the settings differ from RUN_DIR/recipe.json (it is\n"
    "                        replaced; stages already finished are kept, not redone)\n"
    "  --threads N           OpenMP threads for every stage (default: all cores; may change on\n"
    "                        resume)\n"
    "  -h, --help            this help\n";

typedef struct {
    const char *teacher, *out, *data, *calib, *axes, *eval_text, *tasks, *data_dir, *kd, *inter, *alpha, *precision;
    const char *target, *iter_teacher;
    int depth_samples;
    int calib_samples, calib_seq, sdg_samples, sdg_tokens, steps, seq, batch, accum, warmup, topk, ckpt_every;
    int eval_chunks, eval_ctx, task_limit, threads;
    int correct_steps, correct_warmup, iterate, tau2, emb_loss;
    int force; /* --force: go on when the settings differ from RUN_DIR/recipe.json */
    float lr, tau, ce_weight, correct_lr, tolerance;
    /* derived */
    size_t target_n;
    char *teacher_eff; /* the teacher every stage after correction uses */
    char *own[128];    /* strings this command allocated for option values */
    int n_own;
    char self[PATH_MAX];
} args;

/* ---- options: one table for the command line and the recipe ---- */

typedef enum { O_STR, O_INT, O_FLOAT, O_FLAG, O_COUNT } okind;
typedef struct {
    const char *name; /* long option, and recipe key */
    okind kind;
    size_t off;       /* field in args */
    double lo, hi;    /* range of O_INT / O_FLOAT */
} optdef;

#define OS(n, f) {n, O_STR, offsetof(args, f), 0, 0}
#define OI(n, f, lo, hi) {n, O_INT, offsetof(args, f), lo, hi}
#define OF(n, f, lo, hi) {n, O_FLOAT, offsetof(args, f), lo, hi}
#define OB(n, f) {n, O_FLAG, offsetof(args, f), 0, 0}
static const optdef OPTS[] = {
    {"target-params", O_COUNT, offsetof(args, target), 0, 0},
    OS("axes", axes),
    OF("tolerance", tolerance, 1e-4, 0.99),
    OS("data", data),
    OS("calib", calib),
    OI("calib-samples", calib_samples, 1, 1 << 20),
    OI("calib-seq", calib_seq, 2, 1 << 16),
    OI("depth-samples", depth_samples, 0, 1 << 20),
    OI("sdg-samples", sdg_samples, 1, 1 << 24),
    OI("sdg-tokens", sdg_tokens, 1, 1 << 16),
    OI("correct-steps", correct_steps, 0, 1 << 30),
    OF("correct-lr", correct_lr, 0, 10),
    OI("correct-warmup", correct_warmup, 0, 1 << 30),
    OI("iterate", iterate, 1, 16),
    OS("iterate-teacher", iter_teacher),
    OI("steps", steps, 0, 1 << 30),
    OI("seq", seq, 2, 1 << 16),
    OI("batch", batch, 1, 4096),
    OI("accum", accum, 1, 4096),
    OF("lr", lr, 0, 10),
    OI("warmup", warmup, 0, 1 << 30),
    OS("kd", kd),
    OF("tau", tau, 1e-3, 1e3),
    OB("tau2", tau2),
    OI("topk", topk, 0, 1 << 20),
    OF("ce-weight", ce_weight, 0, 1e3),
    OS("inter", inter),
    OS("alpha", alpha),
    OB("emb-loss", emb_loss),
    OS("precision", precision),
    OI("ckpt-every", ckpt_every, 0, 1 << 30),
    OS("eval-text", eval_text),
    OI("eval-chunks", eval_chunks, 1, 1 << 20),
    OI("eval-ctx", eval_ctx, 2, 1 << 16),
    OS("tasks", tasks),
    OI("task-limit", task_limit, 1, 1 << 24),
    OS("data-dir", data_dir),
    OI("threads", threads, 1, 1024),
    OS("out", out),
};
#undef OS
#undef OI
#undef OF
#undef OB
enum { N_OPTS = (int)(sizeof OPTS / sizeof OPTS[0]), OPT_RECIPE = 1000, OPT_FORCE, OPT_BASE = 2000 };
/* settings that may differ between the stored recipe and a rerun */
static int free_to_change(const char *key) { return !strcmp(key, "threads") || !strcmp(key, "out"); }

static const char *CMD = "compress";

static const char *keep(args *a, char *s) {
    if (!s || a->n_own >= (int)(sizeof a->own / sizeof a->own[0])) {
        free(s);
        return NULL;
    }
    return a->own[a->n_own++] = s;
}

/* Sets option i from text val (label names it in errors: "--steps" or "recipe key \"steps\""). */
static int set_opt(args *a, int i, const char *val, const char *label) {
    const optdef *o = &OPTS[i];
    void *f = (char *)a + o->off;
    switch (o->kind) {
    case O_STR: *(const char **)f = val; return CLI_OK;
    case O_COUNT: {
        size_t n = 0;
        if (tp_parse_count(val, &n) || n == 0) return cli_usage(CMD, "%s: '%s' is not a parameter count like 90M", label, val);
        *(const char **)f = val;
        return CLI_OK;
    }
    case O_INT: return cli_int(CMD, label, val, (long)o->lo, (long)o->hi, (int *)f);
    case O_FLOAT: return cli_float(CMD, label, val, o->lo, o->hi, (float *)f);
    case O_FLAG: *(int *)f = 1; return CLI_OK;
    }
    return CLI_USAGE;
}

static int find_opt(const char *name) {
    for (int i = 0; i < N_OPTS; i++)
        if (!strcmp(OPTS[i].name, name)) return i;
    return -1;
}

/* Applies the recipe object's settings to a. */
static int apply_recipe(args *a, const char *path, const cJSON *root) {
    if (!cJSON_IsObject(root))
        return cli_usage(CMD, "recipe %s: expected a JSON object of settings ({\"target-params\": \"90M\", ...})", path);
    for (const cJSON *e = root->child; e; e = e->next) {
        const char *k = e->string;
        char label[1200];
        snprintf(label, sizeof label, "recipe %s: key \"%s\"", path, k);
        for (const cJSON *p = root->child; p != e; p = p->next)
            if (!strcmp(p->string, k)) return cli_usage(CMD, "%s is given twice", label);
        if (!strcmp(k, "teacher")) {
            if (!cJSON_IsString(e)) return cli_usage(CMD, "%s must be a string (the teacher model path)", label);
            a->teacher = e->valuestring;
            continue;
        }
        int i = find_opt(k);
        if (i < 0) {
            if (!strcmp(k, "recipe") || !strcmp(k, "force") || !strcmp(k, "help"))
                return cli_usage(CMD, "%s: --%s is a command-line option, not a setting a recipe can hold", label, k);
            return cli_usage(CMD, "recipe %s: unknown key \"%s\" (keys are taper compress's long options without the "
                                  "dashes, plus \"teacher\"; see taper compress --help)",
                             path, k);
        }
        if (OPTS[i].kind == O_FLAG) {
            if (!cJSON_IsBool(e)) return cli_usage(CMD, "%s must be true or false", label);
            *(int *)((char *)a + OPTS[i].off) = cJSON_IsTrue(e);
            continue;
        }
        const char *val = NULL;
        if (cJSON_IsString(e)) {
            val = e->valuestring;
        } else if (cJSON_IsNumber(e)) {
            double v = e->valuedouble;
            char *s = NULL;
            if (v == floor(v) && fabs(v) < 1e15) {
                if (asprintf(&s, "%.0f", v) < 0) s = NULL;
            } else if (asprintf(&s, "%.17g", v) < 0) {
                s = NULL;
            }
            if (!(val = keep(a, s))) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
        } else {
            return cli_usage(CMD, "%s must be a %s", label, OPTS[i].kind == O_STR ? "string" : "number or string");
        }
        int rc = set_opt(a, i, val, label);
        if (rc) return rc;
    }
    return CLI_OK;
}

/* Shortest decimal that reads back as the same float (2e-4, not 0.000199999995). */
static double short_float(float f) {
    char buf[64];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

/* The effective settings as a recipe object (the teacher, then every option in table order). */
static cJSON *recipe_of(const args *a) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    cJSON_AddStringToObject(r, "teacher", a->teacher);
    for (int i = 0; i < N_OPTS; i++) {
        const optdef *o = &OPTS[i];
        const void *f = (const char *)a + o->off;
        switch (o->kind) {
        case O_STR:
            if (*(const char *const *)f) cJSON_AddStringToObject(r, o->name, *(const char *const *)f);
            break;
        case O_COUNT: cJSON_AddNumberToObject(r, o->name, (double)a->target_n); break;
        case O_INT:
            if (strcmp(o->name, "threads") || a->threads) cJSON_AddNumberToObject(r, o->name, *(const int *)f);
            break;
        case O_FLOAT: cJSON_AddNumberToObject(r, o->name, short_float(*(const float *)f)); break;
        case O_FLAG: cJSON_AddBoolToObject(r, o->name, *(const int *)f); break;
        }
    }
    return r;
}

/* Lists (into buf) the keys whose values differ between the stored and the current recipe. */
static int recipe_diff(const cJSON *old, const cJSON *cur, char *buf, size_t n) {
    int nd = 0;
    size_t used = 0;
    buf[0] = 0;
    for (int pass = 0; pass < 2; pass++) {
        const cJSON *a = pass ? cur : old, *b = pass ? old : cur;
        for (const cJSON *e = a->child; e; e = e->next) {
            if (free_to_change(e->string)) continue;
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(b, e->string);
            if (pass && o) continue; /* compared in the first pass */
            if (o && cJSON_Compare(e, o, 1)) continue;
            const cJSON *was = pass ? o : e, *now = pass ? e : o;
            char *w = was ? cJSON_PrintUnformatted(was) : NULL, *v = now ? cJSON_PrintUnformatted(now) : NULL;
            int k = snprintf(buf + used, n - used, "\n  %s: %s in the run, %s now", e->string, w ? w : "(unset)",
                             v ? v : "(unset)");
            if (k > 0) used += (size_t)k;
            if (used >= n) used = n - 1;
            free(w);
            free(v);
            nd++;
        }
    }
    return nd;
}

/* ---- helpers ---- */

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

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The config of a model: config.json of an HF folder (no weights read), else the whole model. */
static tp_status model_cfg(const char *path, tp_config *c) {
    if (is_dir(path)) {
        char *p = pathf("%s/config.json", path), *text = NULL;
        tp_status s = p ? tp_read_file(p, &text, NULL) : tp_fail(TP_ERR_NOMEM, "out of memory");
        if (!s) s = tp_config_from_json(text, p, c);
        free(text);
        free(p);
        return s;
    }
    tp_model *m = NULL;
    tp_status s = tp_model_load(path, &m);
    if (!s) *c = m->cfg;
    tp_model_free(m);
    return s;
}

/* Names of round r's files and stages: the plain base with one round, base-r with several. */
static char *rname(const args *a, const char *base, int r, const char *suffix) {
    return a->iterate == 1 ? pathf("%s%s", base, suffix) : pathf("%s-%d%s", base, r, suffix);
}

/* Round r's distilled model folder (relative to the run directory): the last is always "student". */
static char *student_dir(const args *a, int r) { return r == a->iterate ? strdup("student") : pathf("student-%d", r); }

/* The model round r prunes. */
static char *round_input(const args *a, int r) {
    return r == 1 ? strdup(a->teacher_eff) : pathf("%s/student-%d", a->out, r - 1);
}

/* Parameter budget of round r: the geometric interpolation teacher -> target. */
static size_t round_target(const args *a, size_t p0, int r) {
    if (r >= a->iterate) return a->target_n;
    return (size_t)llround((double)p0 * pow((double)a->target_n / (double)p0, (double)r / a->iterate));
}

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
    fflush(stdout);
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
    char *v[128];
    int n;
} argl;

static void add(argl *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(argl *l, const char *fmt, ...) {
    if (l->n >= 126) return;
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

/* ---- plans across rounds ---- */

/* The plan from p1's source straight to p2's target, where p2 prunes the model p1 produced: every
 * kept index of p2 is looked up in p1 (a gather of a gather is one gather), so applying it to p1's
 * source gives exactly what applying p1 and then p2 gives. */
static tp_status plan_compose(const tp_prune_plan *p1, const tp_prune_plan *p2, tp_prune_plan **out) {
    *out = NULL;
    tp_status s = tp_prune_plan_check(p2, &p1->cfg);
    if (s) return tp_fail_ctx(s, "composing round plans: the second does not prune the model the first made: ");
    const tp_config *c1 = &p1->cfg, *c = &p2->cfg;
    size_t L = (size_t)c->n_layers;
    tp_prune_plan *p = calloc(1, sizeof *p);
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    p->src = p1->src;
    p->cfg = p2->cfg;
    p->src_params = p1->src_params;
    p->n_params = p2->n_params;
    p->depth_rule = p2->depth_rule;
    p->agg_pair = p2->agg_pair;
    p->scores = p2->scores ? strdup(p2->scores) : NULL;
    p->layers = malloc(L * sizeof(int));
    p->channels = malloc((size_t)c->d_model * sizeof(int));
    p->kv_groups = malloc(L * (size_t)c->n_kv_heads * sizeof(int));
    p->heads = malloc(L * (size_t)c->n_heads * sizeof(int));
    p->neurons = malloc(L * (size_t)c->d_ff * sizeof(int));
    if (!p->layers || !p->channels || !p->kv_groups || !p->heads || !p->neurons || (p2->scores && !p->scores)) {
        tp_prune_plan_free(p);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < c->d_model; i++) p->channels[i] = p1->channels[p2->channels[i]];
    for (size_t i = 0; i < L; i++) {
        size_t l1 = (size_t)p2->layers[i]; /* the layer of p1's model it keeps */
        p->layers[i] = p1->layers[l1];
        for (int g = 0; g < c->n_kv_heads; g++)
            p->kv_groups[i * c->n_kv_heads + g] = p1->kv_groups[l1 * c1->n_kv_heads + p2->kv_groups[i * c->n_kv_heads + g]];
        for (int h = 0; h < c->n_heads; h++)
            p->heads[i * c->n_heads + h] = p1->heads[l1 * c1->n_heads + p2->heads[i * c->n_heads + h]];
        for (int n = 0; n < c->d_ff; n++)
            p->neurons[i * c->d_ff + n] = p1->neurons[l1 * c1->d_ff + p2->neurons[i * c->d_ff + n]];
    }
    if ((s = tp_prune_plan_check(p, &p->src))) {
        tp_prune_plan_free(p);
        return tp_fail_ctx(s, "composed plan: ");
    }
    *out = p;
    return TP_OK;
}

/* Round r's plan relative to the original teacher's shape (RUN/pruned-r/teacher_plan.json for
 * r > 1, written from the previous one and round r's own plan). */
static char *teacher_plan_path(const args *a, int r) {
    return r == 1 ? pathf("%s/%s/prune_plan.json", a->out, a->iterate == 1 ? "pruned" : "pruned-1")
                  : pathf("%s/pruned-%d/teacher_plan.json", a->out, r);
}

static int write_teacher_plan(const args *a, int r) {
    char *prev = teacher_plan_path(a, r - 1);
    char *own = pathf("%s/pruned-%d/prune_plan.json", a->out, r), *dst = teacher_plan_path(a, r);
    tp_prune_plan *p1 = NULL, *p2 = NULL, *c = NULL;
    tp_status s = (!prev || !own || !dst) ? tp_fail(TP_ERR_NOMEM, "out of memory") : TP_OK;
    if (!s) s = tp_prune_plan_load(prev, &p1);
    if (!s) s = tp_prune_plan_load(own, &p2);
    if (!s) s = plan_compose(p1, p2, &c);
    if (!s) s = tp_prune_plan_save(c, dst);
    tp_prune_plan_free(p1);
    tp_prune_plan_free(p2);
    tp_prune_plan_free(c);
    free(prev);
    free(own);
    free(dst);
    return s ? cli_error(s) : CLI_OK;
}

/* ---- stages ---- */

static int stage_correct(const args *a, const char *data) {
    argl l = {0};
    add(&l, "taper"); add(&l, "train"); add(&l, "%s", a->teacher); add(&l, "--data"); add(&l, "%s", data);
    add(&l, "--steps"); add(&l, "%d", a->correct_steps); add(&l, "--seq"); add(&l, "%d", a->seq);
    add(&l, "--batch"); add(&l, "%d", a->batch); add(&l, "--accum"); add(&l, "%d", a->accum);
    add(&l, "--lr"); add(&l, "%g", a->correct_lr); add(&l, "--min-lr"); add(&l, "%g", a->correct_lr / 10);
    add(&l, "--warmup"); add(&l, "%d", a->correct_warmup); add(&l, "--ckpt-every"); add(&l, "%d", a->ckpt_every);
    add(&l, "--val-every"); add(&l, "%d", a->correct_steps >= 10 ? a->correct_steps / 10 : 1);
    add(&l, "--run-dir"); add(&l, "%s/correct", a->out); add(&l, "--resume");
    add(&l, "--export-hf"); add(&l, "%s", a->teacher_eff);
    add(&l, "--precision"); add(&l, "%s", a->precision);
    return stage(a, "correct", &l);
}

static int stage_importance(const args *a, int r, const char *model, const char *calib) {
    argl l = {0};
    char *imp = rname(a, "importance", r, ".json"), *st = rname(a, "importance", r, "");
    add(&l, "taper"); add(&l, "importance"); add(&l, "%s", model); add(&l, "--data"); add(&l, "%s", calib);
    add(&l, "-o"); add(&l, "%s/%s", a->out, imp); add(&l, "--samples"); add(&l, "%d", a->calib_samples);
    add(&l, "--seq-len"); add(&l, "%d", a->calib_seq);
    add(&l, "--depth-samples"); add(&l, "%d", a->depth_samples < a->calib_samples ? a->depth_samples : a->calib_samples);
    int rc = stage(a, st, &l);
    free(imp);
    free(st);
    return rc;
}

static int stage_prune(const args *a, int r, const char *model, const char *calib, size_t target) {
    char *imp = rname(a, "importance", r, ".json"), *st = rname(a, "prune", r, ""), *dir = rname(a, "pruned", r, "");
    argl l = {0};
    int rc = CLI_OK;
    if (!stage_done(a, st)) {
        add(&l, "taper"); add(&l, "prune"); add(&l, "%s", model); add(&l, "--scores");
        add(&l, "%s/%s", a->out, imp); add(&l, "--target-params"); add(&l, "%zu", target);
        add(&l, "--tolerance"); add(&l, "%g", a->tolerance);
        add(&l, "--data"); add(&l, "%s", calib); add(&l, "--eval-samples"); add(&l, "8");
        if (strcmp(a->axes, "all")) {
            tp_config c;
            tp_status s = model_cfg(model, &c);
            if (s) rc = cli_error(s);
            else if (!strcmp(a->axes, "width")) {
                add(&l, "--layers"); add(&l, "%d", c.n_layers);
            } else {
                add(&l, "--hidden"); add(&l, "%d", c.d_model);
                add(&l, "--ffn"); add(&l, "%d", c.d_ff);
                add(&l, "--heads"); add(&l, "%d", c.n_heads);
                add(&l, "--kv-heads"); add(&l, "%d", c.n_kv_heads);
            }
        }
        add(&l, "-o"); add(&l, "%s/%s", a->out, dir); add(&l, "--json=%s/%s.json", a->out, st);
    }
    if (!rc) rc = stage(a, st, &l);
    argl_free(&l);
    free(imp);
    free(st);
    free(dir);
    return rc;
}

static int stage_distill(const args *a, int r, const char *model, const char *data) {
    char *st = rname(a, "distill", r, ""), *pruned = rname(a, "pruned", r, ""), *sdir = student_dir(a, r);
    int prev = !strcmp(a->iter_teacher, "prev");
    int rc = CLI_OK;
    argl l = {0};
    if (!stage_done(a, st)) {
        /* a student of a later round distilled from the original teacher maps onto it through the
         * composed plan; from the model it was cut from, its own plan is the right one */
        char *plan = NULL;
        if (r > 1 && !prev) {
            rc = write_teacher_plan(a, r);
            plan = teacher_plan_path(a, r);
        } else {
            plan = pathf("%s/%s/prune_plan.json", a->out, pruned);
        }
        add(&l, "taper"); add(&l, "distill"); add(&l, "%s/%s", a->out, pruned);
        add(&l, "--teacher"); add(&l, "%s", prev ? model : a->teacher_eff);
        add(&l, "--data"); add(&l, "%s", data); add(&l, "--run-dir"); add(&l, "%s/%s", a->out, st); add(&l, "--resume");
        add(&l, "--steps"); add(&l, "%d", a->steps); add(&l, "--seq"); add(&l, "%d", a->seq);
        add(&l, "--batch"); add(&l, "%d", a->batch); add(&l, "--accum"); add(&l, "%d", a->accum);
        add(&l, "--lr"); add(&l, "%g", a->lr); add(&l, "--min-lr"); add(&l, "%g", a->lr / 10);
        add(&l, "--warmup"); add(&l, "%d", a->warmup); add(&l, "--ckpt-every"); add(&l, "%d", a->ckpt_every);
        add(&l, "--val-every"); add(&l, "%d", a->steps >= 10 ? a->steps / 10 : 1);
        add(&l, "--kd"); add(&l, "%s", a->kd); add(&l, "--tau"); add(&l, "%g", a->tau);
        if (a->tau2) add(&l, "--tau2");
        add(&l, "--topk"); add(&l, "%d", a->topk); add(&l, "--ce-weight"); add(&l, "%g", a->ce_weight);
        add(&l, "--inter"); add(&l, "%s", a->inter); add(&l, "--alpha"); add(&l, "%s", a->alpha);
        if (a->emb_loss) add(&l, "--emb-loss");
        add(&l, "--precision"); add(&l, "%s", a->precision);
        add(&l, "--plan"); add(&l, "%s", plan ? plan : "");
        add(&l, "--export-hf"); add(&l, "%s/%s", a->out, sdir);
        free(plan);
    }
    if (!rc) rc = stage(a, st, &l);
    argl_free(&l);
    free(st);
    free(pruned);
    free(sdir);
    return rc;
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
    const cJSON *c = tp_json_at(j, path);
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

/* First and last training loss and validation loss of a metrics.jsonl; with dat / vdat, also
 * writes "step loss" lines (steps shifted by offset) for the plots. Returns the last step. */
typedef struct {
    double loss0, loss1, val0, val1;
    int steps;
} curve;

static curve read_curve(const char *path, FILE *dat, FILE *vdat, int offset) {
    curve c = {NAN, NAN, NAN, NAN, 0};
    char *text = NULL;
    if (!path || tp_read_file(path, &text, NULL) != TP_OK) return c;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        double s = jnum(j, "step"), l = jnum(j, "loss"), v = jnum(j, "val_loss");
        if (!isnan(s) && !isnan(l)) {
            if (isnan(c.loss0)) c.loss0 = l;
            c.loss1 = l;
            if (s > c.steps) c.steps = (int)s;
            if (dat) fprintf(dat, "%g %g\n", s + offset, l);
        }
        if (!isnan(s) && !isnan(v)) {
            if (isnan(c.val0)) c.val0 = v;
            c.val1 = v;
            if (vdat) fprintf(vdat, "%g %g\n", s + offset, v);
        }
        cJSON_Delete(j);
    }
    free(text);
    return c;
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

static void plots(const args *a, int *have_loss, int *have_imp, int *have_corr) {
    *have_loss = *have_imp = *have_corr = 0;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "compress: gnuplot not found (apt-get install gnuplot-nox): no plots\n");
        return;
    }
    /* loss curves of every round, steps counted on from round to round */
    char *sc = pathf("set terminal pngcairo size 900,500\nset output '%s/loss.png'\nset xlabel 'step%s'\n"
                     "set ylabel 'loss (nats)'\nset grid\nset title 'distillation: training loss (%s) and validation "
                     "CE'\nplot ",
                     a->out, a->iterate > 1 ? " (rounds one after another)" : "", a->kd);
    int offset = 0, any = 0;
    for (int r = 1; r <= a->iterate; r++) {
        char *dd = rname(a, "distill", r, ""), *m = pathf("%s/%s/metrics.jsonl", a->out, dd);
        char *dat = pathf("%s/logs/loss-%d.dat", a->out, r), *vdat = pathf("%s/logs/val-%d.dat", a->out, r);
        FILE *f = dat ? fopen(dat, "w") : NULL, *fv = vdat ? fopen(vdat, "w") : NULL;
        curve c = read_curve(m, f, fv, offset);
        if (f) fclose(f);
        if (fv) fclose(fv);
        if (!isnan(c.loss0)) {
            char t[32] = "";
            if (a->iterate > 1) snprintf(t, sizeof t, " (round %d)", r);
            cat(&sc, "%s'%s' using 1:2 with lines title 'train loss%s', '%s' using 1:2 with linespoints title "
                     "'validation CE%s'",
                any ? ", " : "", dat, t, vdat, t);
            any = 1;
        }
        offset += c.steps;
        free(dd);
        free(m);
        free(dat);
        free(vdat);
    }
    cat(&sc, "\n");
    if (any && sc && gnuplot(sc) == 0) *have_loss = 1;
    free(sc);
    /* teacher correction */
    if (a->correct_steps > 0) {
        char *m = pathf("%s/correct/metrics.jsonl", a->out), *dat = pathf("%s/logs/correct.dat", a->out),
             *vdat = pathf("%s/logs/correct-val.dat", a->out);
        FILE *f = dat ? fopen(dat, "w") : NULL, *fv = vdat ? fopen(vdat, "w") : NULL;
        curve c = read_curve(m, f, fv, 0);
        if (f) fclose(f);
        if (fv) fclose(fv);
        char *s = pathf("set terminal pngcairo size 900,500\nset output '%s/correct.png'\nset xlabel 'step'\n"
                        "set ylabel 'cross-entropy (nats)'\nset grid\nset title 'teacher correction on the "
                        "distillation data'\nplot '%s' using 1:2 with lines title 'train CE', '%s' using 1:2 with "
                        "linespoints title 'validation CE'\n",
                        a->out, dat, vdat);
        if (!isnan(c.loss0) && s && gnuplot(s) == 0) *have_corr = 1;
        free(s);
        free(m);
        free(dat);
        free(vdat);
    }
    /* importance per layer of the model round 1 pruned: mean head and neuron score of the default
     * pair, Block Influence, LM loss increase on removal */
    tp_importance *imp = NULL;
    char *in = rname(a, "importance", 1, ".json");
    char *ip = pathf("%s/%s", a->out, in), *idat = pathf("%s/logs/importance.dat", a->out);
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
        char *s = pathf(
            "set terminal pngcairo size 900,700\nset output '%s/importance.png'\nset multiplot layout 2,2 title "
            "'%steacher importance per layer (%s)'\nset grid\nset xlabel 'layer'\nset style fill solid 0.6\n"
            "set boxwidth 0.8\nplot '%s' using 1:2 with boxes title 'mean head score'\n"
            "plot '%s' using 1:3 with boxes title 'mean neuron score'\n"
            "plot '%s' using 1:4 with boxes title 'block influence'\n"
            "plot '%s' using 1:5 with boxes title 'LM loss increase when removed'\nunset multiplot\n",
            a->out, a->correct_steps > 0 ? "corrected " : "", tp_agg_pair_name(pr), idat, idat, idat, idat);
        if (s && gnuplot(s) == 0) *have_imp = 1;
        free(s);
        tp_importance_free(imp);
    }
    free(in);
    free(ip);
    free(idat);
}

/* One model of the report: its eval name (files <name>-ppl.json ...), label and location. */
typedef struct {
    char *name, *label, *path;
    tp_config cfg;
    size_t params;
    double ppl;
} rmodel;

static cJSON *model_json(const rmodel *m, const args *a, char **tasks, int nt) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", m->name);
    cJSON_AddStringToObject(o, "path", m->path);
    cJSON_AddNumberToObject(o, "params", (double)m->params);
    cJSON_AddNumberToObject(o, "layers", m->cfg.n_layers);
    cJSON_AddNumberToObject(o, "hidden", m->cfg.d_model);
    cJSON_AddNumberToObject(o, "ffn", m->cfg.d_ff);
    cJSON_AddNumberToObject(o, "heads", m->cfg.n_heads);
    cJSON_AddNumberToObject(o, "kv_heads", m->cfg.n_kv_heads);
    if (!isnan(m->ppl)) cJSON_AddNumberToObject(o, "ppl", m->ppl);
    else cJSON_AddNullToObject(o, "ppl");
    cJSON *t = cJSON_AddObjectToObject(o, "tasks");
    for (int i = 0; i < nt; i++) {
        cJSON *e = cJSON_AddObjectToObject(t, tasks[i]);
        double acc = task_acc(a->out, m->name, tasks[i], "acc"), an = task_acc(a->out, m->name, tasks[i], "acc_norm");
        if (!isnan(acc)) cJSON_AddNumberToObject(e, "acc", acc);
        if (!isnan(an)) cJSON_AddNumberToObject(e, "acc_norm", an);
    }
    return o;
}

/* parameter counts: 134.52M, or every digit below a million */
static const char *fmt_params(char *b, size_t n, size_t v) {
    if (v >= 1000000) snprintf(b, n, "%.2fM", v / 1e6);
    else snprintf(b, n, "%zu", v);
    return b;
}

static void fmt_num(char *b, size_t n, double v, const char *f) {
    if (isnan(v)) snprintf(b, n, "—");
    else snprintf(b, n, f, v);
}

static int report(const args *a, size_t p0) {
    int have_loss, have_imp, have_corr;
    plots(a, &have_loss, &have_imp, &have_corr);
    int K = a->iterate, corr = a->correct_steps > 0, nm = 0;
    rmodel ms[2 + 2 * 16];
    memset(ms, 0, sizeof ms);
    ms[nm].name = strdup("teacher"), ms[nm].label = strdup("teacher"), ms[nm++].path = strdup(a->teacher);
    if (corr)
        ms[nm].name = strdup("corrected"), ms[nm].label = strdup("corrected teacher"),
        ms[nm++].path = strdup(a->teacher_eff);
    int first_round = nm;
    for (int r = 1; r <= K; r++) {
        char *pd = rname(a, "pruned", r, ""), *sn = rname(a, "student", r, ""), *sd = student_dir(a, r);
        ms[nm].name = strdup(pd), ms[nm].label = strdup(pd), ms[nm++].path = pathf("%s/%s", a->out, pd);
        ms[nm].name = strdup(sn), ms[nm].label = strdup(sn), ms[nm++].path = pathf("%s/%s", a->out, sd);
        free(pd);
        free(sn);
        free(sd);
    }
    for (int i = 0; i < nm; i++) {
        ms[i].ppl = ms[i].name ? ppl_of(a->out, ms[i].name) : NAN;
        if (ms[i].path && exists(ms[i].path) && model_cfg(ms[i].path, &ms[i].cfg) == TP_OK)
            ms[i].params = tp_config_n_params(&ms[i].cfg);
        else
            tp_clear_error();
    }
    char tl[512];
    snprintf(tl, sizeof tl, "%s", a->tasks ? a->tasks : "");
    char *tasks[16];
    int nt = 0;
    char *save = NULL;
    for (char *t = strtok_r(tl, ",", &save); t && nt < 16; t = strtok_r(NULL, ",", &save)) tasks[nt++] = t;

    char *rp = pathf("%s/report.md", a->out);
    FILE *f = rp ? fopen(rp, "w") : NULL;
    if (!f) {
        for (int i = 0; i < nm; i++) free(ms[i].name), free(ms[i].label), free(ms[i].path);
        free(rp);
        return cli_error(tp_fail(TP_ERR_IO, "%s/report.md: cannot write", a->out));
    }
    cJSON *rj = cJSON_CreateObject();
    fprintf(f, "# taper compress report\n\nTeacher `%s`, target %s parameters (axes: %s)", a->teacher, a->target,
            a->axes);
    if (K > 1) {
        fprintf(f, ", reached in %d prune → distill rounds through", K);
        char pb[32];
        for (int r = 1; r <= K; r++) fprintf(f, " %s%s", r > 1 ? "→ " : "", fmt_params(pb, 32, round_target(a, p0, r)));
        fprintf(f, " (round r prunes to P0·(N/P0)^(r/K), P0 = %s); each round distils from the %s",
                fmt_params(pb, 32, p0),
                strcmp(a->iter_teacher, "prev") ? (corr ? "corrected teacher" : "teacher") : "model it pruned");
    }
    fprintf(f, ". Settings: `recipe.json`.\n\n");
    fprintf(f, "| model | parameters | layers | hidden | ffn | heads / kv | PPL (%d x %d tokens) |", a->eval_chunks,
            a->eval_ctx);
    for (int t = 0; t < nt; t++) fprintf(f, " %s acc / acc_norm |", tasks[t]);
    fprintf(f, "\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (int t = 0; t < nt; t++) fprintf(f, " ---: |");
    fprintf(f, "\n");
    printf("\n%-18s %12s %8s %8s %8s %10s %10s", "model", "params", "layers", "hidden", "ffn", "heads/kv", "PPL");
    for (int t = 0; t < nt; t++) printf(" %14s", tasks[t]);
    printf("\n");
    for (int i = 0; i < nm; i++) {
        const rmodel *m = &ms[i];
        char pb[32];
        fmt_params(pb, sizeof pb, m->params);
        fprintf(f, "| %s | %s | %d | %d | %d | %d / %d | %.3f |", m->label, pb, m->cfg.n_layers, m->cfg.d_model,
                m->cfg.d_ff, m->cfg.n_heads, m->cfg.n_kv_heads, m->ppl);
        printf("%-18s %12s %8d %8d %8d %5d / %-2d %10.3f", m->label, pb, m->cfg.n_layers,
               m->cfg.d_model, m->cfg.d_ff, m->cfg.n_heads, m->cfg.n_kv_heads, m->ppl);
        for (int t = 0; t < nt; t++) {
            double acc = task_acc(a->out, m->name, tasks[t], "acc"), an = task_acc(a->out, m->name, tasks[t], "acc_norm");
            fprintf(f, " %.4f / %.4f |", acc, an);
            printf(" %6.4f/%6.4f", acc, an);
        }
        fprintf(f, "\n");
        printf("\n");
    }
    fprintf(f, "\nPPL: the chunks protocol (non-overlapping %d-token chunks, first %d) on `%s`. ", a->eval_ctx,
            a->eval_chunks, a->eval_text);
    if (nt) fprintf(f, "Tasks: first %d items each, scored as lm-evaluation-harness does (docs/eval.md).", a->task_limit);
    fprintf(f, "\n");
    cJSON_AddItemToObject(rj, "teacher", model_json(&ms[0], a, tasks, nt));
    if (corr) {
        char *mp = pathf("%s/correct/metrics.jsonl", a->out);
        curve c = read_curve(mp, NULL, NULL, 0);
        free(mp);
        char b[4][32];
        fmt_num(b[0], 32, c.loss0, "%.4f"), fmt_num(b[1], 32, c.loss1, "%.4f"), fmt_num(b[2], 32, c.val0, "%.4f"),
            fmt_num(b[3], 32, c.val1, "%.4f");
        fprintf(f, "\n## Teacher correction\n\n`taper train` of the teacher on the distillation data (`%s`) before "
                   "anything else: %d steps x %d sequences x %d tokens (accumulation %d), lr %g (cosine to %g, warmup "
                   "%d). Training CE %s → %s, validation CE %s → %s; PPL %.3f → %.3f. Every later stage uses the "
                   "corrected teacher `teacher-corrected/`.\n",
                a->data ? a->data : "sdg/", a->correct_steps, a->batch, a->seq, a->accum, a->correct_lr,
                a->correct_lr / 10, a->correct_warmup, b[0], b[1], b[2], b[3], ms[0].ppl, ms[1].ppl);
        if (have_corr) fprintf(f, "\n![teacher correction](correct.png)\n");
        cJSON *cj = model_json(&ms[1], a, tasks, nt);
        cJSON_AddNumberToObject(cj, "steps", c.steps);
        if (!isnan(c.loss0)) cJSON_AddNumberToObject(cj, "train_loss_first", c.loss0);
        if (!isnan(c.loss1)) cJSON_AddNumberToObject(cj, "train_loss_last", c.loss1);
        if (!isnan(c.val0)) cJSON_AddNumberToObject(cj, "val_loss_first", c.val0);
        if (!isnan(c.val1)) cJSON_AddNumberToObject(cj, "val_loss_last", c.val1);
        cJSON_AddItemToObject(rj, "corrected", cj);
    }
    /* one row per round */
    fprintf(f, "\n## Rounds\n\n| round | pruned model | target | pruned params | pruned PPL | distilled from | steps | "
               "train loss first → last | val CE first → last | student params | student PPL |\n"
               "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    cJSON *rounds = cJSON_AddArrayToObject(rj, "rounds");
    for (int r = 1; r <= K; r++) {
        const rmodel *pm = &ms[first_round + 2 * (r - 1)], *sm = pm + 1;
        const char *from = r == 1 ? (corr ? "corrected teacher" : "teacher") : ms[first_round + 2 * (r - 2) + 1].label;
        const char *tname = !strcmp(a->iter_teacher, "prev") ? from : (corr ? "corrected teacher" : "teacher");
        char *dd = rname(a, "distill", r, ""), *mp = pathf("%s/%s/metrics.jsonl", a->out, dd);
        curve c = read_curve(mp, NULL, NULL, 0);
        char b[4][32];
        fmt_num(b[0], 32, c.loss0, "%.4f"), fmt_num(b[1], 32, c.loss1, "%.4f"), fmt_num(b[2], 32, c.val0, "%.4f"),
            fmt_num(b[3], 32, c.val1, "%.4f");
        size_t tgt = round_target(a, p0, r);
        char p1[32], p2[32], p3[32];
        fprintf(f, "| %d | %s | %s | %s | %.3f | %s | %d | %s → %s | %s → %s | %s | %.3f |\n", r, from,
                fmt_params(p1, 32, tgt), fmt_params(p2, 32, pm->params), pm->ppl, tname, c.steps, b[0], b[1], b[2], b[3],
                fmt_params(p3, 32, sm->params), sm->ppl);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "round", r);
        cJSON_AddStringToObject(o, "pruned_from", from);
        cJSON_AddNumberToObject(o, "target_params", (double)tgt);
        cJSON_AddStringToObject(o, "distill_teacher", tname);
        cJSON_AddItemToObject(o, "pruned", model_json(pm, a, tasks, nt));
        cJSON_AddItemToObject(o, "student", model_json(sm, a, tasks, nt));
        cJSON *dj = cJSON_AddObjectToObject(o, "distill");
        cJSON_AddNumberToObject(dj, "steps", c.steps);
        if (!isnan(c.loss0)) cJSON_AddNumberToObject(dj, "train_loss_first", c.loss0);
        if (!isnan(c.loss1)) cJSON_AddNumberToObject(dj, "train_loss_last", c.loss1);
        if (!isnan(c.val0)) cJSON_AddNumberToObject(dj, "val_loss_first", c.val0);
        if (!isnan(c.val1)) cJSON_AddNumberToObject(dj, "val_loss_last", c.val1);
        cJSON_AddItemToArray(rounds, o);
        free(dd);
        free(mp);
    }
    fprintf(f, "\n## Distillation\n\n%s%d steps x %d sequences x %d tokens (accumulation %d), lr %g, loss %s "
               "(tau %g%s, top-k %d), CE weight %g, intermediate %s%s.\n",
            K > 1 ? "Every round: " : "", a->steps, a->batch, a->seq, a->accum, a->lr, a->kd, a->tau,
            a->tau2 ? ", x tau^2" : "", a->topk, a->ce_weight, a->inter, a->emb_loss ? " + embedding outputs" : "");
    char *last = rname(a, "distill", K, "/summary.json");
    cJSON *sum = read_json(a->out, last);
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
        fprintf(f, "\nFiles: `recipe.json`, `importance.json`, `pruned/` (with `prune_plan.json`), `distill/` "
                   "(metrics.jsonl, checkpoints), `student/` (the distilled model, HF folder), `*-ppl.json`, "
                   "`*-tasks.json`, %s`logs/`.\n",
                corr ? "`correct/` and `teacher-corrected/` (teacher correction), " : "");
    else
        fprintf(f, "\nFiles: `recipe.json`, per round r: `importance-r.json`, `pruned-r/` (with `prune_plan.json`%s), "
                   "`distill-r/`, `student-r/`; the last round's student is `student/`; `*-ppl.json`, `*-tasks.json`, "
                   "%s`logs/`.\n",
                strcmp(a->iter_teacher, "prev") ? " and, from round 2, `teacher_plan.json` relative to the teacher" : "",
                corr ? "`correct/` and `teacher-corrected/` (teacher correction), " : "");
    fclose(f);
    char *jp = pathf("%s/report.json", a->out);
    int rc = jp ? cli_json_out(rj, jp) : (cJSON_Delete(rj), CLI_FAIL);
    free(jp);
    printf("\nreport: %s%s%s%s\n", rp, have_loss ? ", loss.png" : "", have_imp ? ", importance.png" : "",
           have_corr ? ", correct.png" : "");
    for (int i = 0; i < nm; i++) free(ms[i].name), free(ms[i].label), free(ms[i].path);
    free(rp);
    return rc;
}

/* ---- the command ---- */

static void set_defaults(args *a) {
    a->axes = "all";
    a->eval_text = "/usr/share/common-licenses/GPL-3";
    a->kd = "fkl";
    a->precision = "fp32";
    a->inter = "none";
    a->alpha = "dynamic";
    a->iter_teacher = "original";
    a->calib_samples = 64;
    a->depth_samples = 16;
    a->calib_seq = 256;
    a->sdg_samples = 256;
    a->sdg_tokens = 256;
    a->steps = 100;
    a->seq = 256;
    a->batch = 4;
    a->accum = 1;
    a->warmup = 10;
    a->ckpt_every = 50;
    a->eval_chunks = 16;
    a->eval_ctx = 256;
    a->task_limit = 200;
    a->iterate = 1;
    a->lr = 2e-4f;
    a->tau = 1.0f;
    a->correct_lr = 2e-5f;
    a->tolerance = 0.05f;
}

/* Reads the command line and the recipe into a (the recipe first, the command line over it). */
static int parse(args *a, int argc, char **argv, cJSON **recipe_root, int *force, int *help) {
    struct option lo[N_OPTS + 4];
    for (int i = 0; i < N_OPTS; i++)
        lo[i] = (struct option){OPTS[i].name, OPTS[i].kind == O_FLAG ? no_argument : required_argument, 0, OPT_BASE + i};
    lo[N_OPTS] = (struct option){"recipe", required_argument, 0, OPT_RECIPE};
    lo[N_OPTS + 1] = (struct option){"force", no_argument, 0, OPT_FORCE};
    lo[N_OPTS + 2] = (struct option){"help", no_argument, 0, 'h'};
    lo[N_OPTS + 3] = (struct option){0, 0, 0, 0};
    struct {
        int i;
        const char *v;
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
        } else if (ch == 'o' || (ch >= OPT_BASE && ch < OPT_BASE + N_OPTS)) {
            if (ncl == 256) return cli_usage(CMD, "more than 256 options");
            cl[ncl].i = ch == 'o' ? find_opt("out") : ch - OPT_BASE;
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
        *recipe_root = cJSON_Parse(text);
        free(text);
        if (!*recipe_root) return cli_usage(CMD, "recipe %s: not valid JSON", recipe);
        int rc = apply_recipe(a, recipe, *recipe_root);
        if (rc) return rc;
    }
    for (int k = 0; k < ncl; k++) {
        char label[64];
        snprintf(label, sizeof label, "--%s", OPTS[cl[k].i].name);
        int rc = set_opt(a, cl[k].i, cl[k].v, label);
        if (rc) return rc;
    }
    if (optind == argc - 1) a->teacher = argv[optind];
    return CLI_OK;
}

static int check_args(args *a) {
    if (!a->teacher) return cli_usage(CMD, "expected one TEACHER model (or \"teacher\" in the recipe)");
    if (!a->out) return cli_usage(CMD, "-o RUN_DIR is required");
    if (!a->target) return cli_usage(CMD, "--target-params is required (e.g. 100M)");
    if (tp_parse_count(a->target, &a->target_n)) return cli_usage(CMD, "--target-params: %s", tp_errmsg());
    if (strcmp(a->precision, "fp32") && strcmp(a->precision, "bf16"))
        return cli_usage(CMD, "--precision must be fp32 or bf16, got '%s'", a->precision);
    if (strcmp(a->axes, "all") && strcmp(a->axes, "width") && strcmp(a->axes, "depth"))
        return cli_usage(CMD, "--axes must be all, width or depth");
    if (strcmp(a->kd, "fkl") && strcmp(a->kd, "rkl") && strcmp(a->kd, "jsd") && strcmp(a->kd, "none"))
        return cli_usage(CMD, "--kd must be fkl, rkl, jsd or none");
    if (strcmp(a->inter, "none") && strcmp(a->inter, "cosine") && strcmp(a->inter, "mse"))
        return cli_usage(CMD, "--inter must be none, cosine or mse");
    if (strcmp(a->iter_teacher, "original") && strcmp(a->iter_teacher, "prev"))
        return cli_usage(CMD, "--iterate-teacher must be original or prev");
    if (a->correct_steps > 0 && a->correct_lr <= 0) return cli_usage(CMD, "--correct-lr must be > 0");
    if (!exists(a->teacher)) return cli_error(tp_fail(TP_ERR_ARG, "teacher %s does not exist", a->teacher));
    if (!exists(a->eval_text)) return cli_error(tp_fail(TP_ERR_ARG, "--eval-text %s does not exist", a->eval_text));
    if (a->data && !a->calib)
        return cli_usage(CMD, "--calib FILE is required with --data (calibration text for importance)");
    if (!a->tasks) {
        /* default tasks only when their data is there */
        const char *dd = a->data_dir ? a->data_dir : getenv("TAPER_DATA");
        char *probe = pathf("%s/arc_easy/arc_easy.jsonl", dd ? dd : "../shared/data");
        if (probe && exists(probe)) {
            a->tasks = "arc_easy,piqa,winogrande";
        } else {
            a->tasks = "";
            fprintf(stderr, "compress: no benchmark data found (%s): zero-shot tasks skipped\n", probe ? probe : "");
        }
        free(probe);
    }
    return CLI_OK;
}

/* Keeps RUN_DIR/recipe.json: written on the first run, compared on every later one. */
static int check_recipe(const args *a, int force) {
    cJSON *cur = recipe_of(a);
    char *path = pathf("%s/recipe.json", a->out), *text = NULL;
    if (!cur || !path) {
        cJSON_Delete(cur);
        free(path);
        return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    }
    int rc = CLI_OK;
    if (tp_read_file(path, &text, NULL) == TP_OK) {
        cJSON *old = cJSON_Parse(text);
        char diff[4096];
        int nd = cJSON_IsObject(old) ? recipe_diff(old, cur, diff, sizeof diff) : -1;
        if (nd && !force) {
            if (nd < 0) fprintf(stderr, "taper compress: %s is not valid JSON.\n", path);
            else fprintf(stderr, "taper compress: %s holds other settings than this run's:%s\n", path, diff);
            fprintf(stderr, "A resumed run would mix them. Use the stored settings (taper compress --recipe %s), "
                            "another -o, or --force to go on with the new ones (finished stages are kept).\n",
                    path);
            rc = CLI_USAGE;
        } else if (nd) {
            fprintf(stderr, "compress: --force: settings differ from %s:%s\n(finished stages are kept; "
                            "recipe.json now holds the new settings)\n",
                    path, nd > 0 ? diff : " (it was not valid JSON)");
        }
        cJSON_Delete(old);
        tp_clear_error();
    } else {
        tp_clear_error();
    }
    free(text);
    if (!rc) rc = cli_json_out(cur, path);
    else cJSON_Delete(cur);
    free(path);
    return rc;
}

static int run_all(args *a) {
    char *logs = pathf("%s/logs", a->out);
    if ((mkdir(a->out, 0777) && errno != EEXIST) || !logs || (mkdir(logs, 0777) && errno != EEXIST)) {
        free(logs);
        return cli_error(tp_fail(TP_ERR_IO, "%s: cannot create: %s", a->out, strerror(errno)));
    }
    free(logs);
    size_t p0 = 0;
    if (a->iterate > 1) {
        tp_config c;
        tp_status s = model_cfg(a->teacher, &c);
        if (s) return cli_error(tp_fail_ctx(s, "teacher: "));
        p0 = tp_config_n_params(&c);
        if (a->target_n >= p0)
            return cli_usage(CMD, "--target-params %zu is not below the teacher's %zu parameters", a->target_n, p0);
        fprintf(stderr, "compress: %d rounds, parameter targets", a->iterate);
        for (int r = 1; r <= a->iterate; r++) fprintf(stderr, " %zu", round_target(a, p0, r));
        fprintf(stderr, " (teacher %zu)\n", p0);
    }
    int rc = check_recipe(a, a->force);
    if (rc) return rc;
    double t0 = tp_time_s();
    char *data = a->data ? strdup(a->data) : pathf("%s/sdg", a->out);
    char *calib = a->calib ? strdup(a->calib) : pathf("%s/sdg/samples.jsonl", a->out);
    a->teacher_eff = a->correct_steps > 0 ? pathf("%s/teacher-corrected", a->out) : strdup(a->teacher);
    if (!data || !calib || !a->teacher_eff) rc = cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    if (!rc && !a->data) {
        argl l = {0};
        add(&l, "taper"); add(&l, "generate-data"); add(&l, "%s", a->teacher); add(&l, "-o"); add(&l, "%s", data);
        add(&l, "--samples"); add(&l, "%d", a->sdg_samples); add(&l, "--max-tokens"); add(&l, "%d", a->sdg_tokens);
        rc = stage(a, "sdg", &l);
    }
    if (!rc && a->correct_steps > 0) rc = stage_correct(a, data);
    if (!rc) rc = eval_stage(a, "teacher", a->teacher);
    if (!rc && a->correct_steps > 0) rc = eval_stage(a, "corrected", a->teacher_eff);
    for (int r = 1; !rc && r <= a->iterate; r++) {
        char *model = round_input(a, r), *pn = rname(a, "pruned", r, ""), *sn = rname(a, "student", r, "");
        char *sd = student_dir(a, r), *pruned = pathf("%s/%s", a->out, pn), *student = pathf("%s/%s", a->out, sd);
        if (a->iterate > 1) fprintf(stderr, "\ncompress: round %d of %d: %s -> %zu parameters\n", r, a->iterate, model,
                                    round_target(a, p0, r));
        rc = stage_importance(a, r, model, calib);
        if (!rc) rc = stage_prune(a, r, model, calib, round_target(a, p0, r));
        if (!rc) rc = eval_stage(a, pn, pruned);
        if (!rc) rc = stage_distill(a, r, model, data);
        if (!rc) rc = eval_stage(a, sn, student);
        free(model);
        free(pn);
        free(sn);
        free(sd);
        free(pruned);
        free(student);
    }
    if (!rc) rc = report(a, p0);
    if (!rc) printf("compress: done in %.1f min (this invocation); run directory %s\n", (tp_time_s() - t0) / 60, a->out);
    free(data);
    free(calib);
    return rc;
}

int cmd_compress(int argc, char **argv) {
    args a;
    memset(&a, 0, sizeof a);
    set_defaults(&a);
    cJSON *recipe = NULL;
    int force = 0, help = 0;
    int rc = parse(&a, argc, argv, &recipe, &force, &help);
    if (!rc && help) fputs(HELP, stdout);
    if (!rc && !help) rc = check_args(&a);
    if (!rc && !help) {
        ssize_t sl = readlink("/proc/self/exe", a.self, sizeof a.self - 1);
        if (sl <= 0) {
            rc = cli_error(tp_fail(TP_ERR_IO, "cannot find the taper binary (/proc/self/exe)"));
        } else {
            a.self[sl] = 0;
            if (a.threads) cli_set_threads(a.threads);
            a.force = force;
            rc = run_all(&a);
        }
    }
    for (int i = 0; i < a.n_own; i++) free(a.own[i]);
    free(a.teacher_eff);
    cJSON_Delete(recipe);
    return rc;
}
