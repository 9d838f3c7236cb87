/* tp_recipe: the settings of a compression run (defaults, text and JSON forms, comparison with a
 * stored run, validation). The stages and the report are in compress_run.c. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/compress.h"
#include "taper/recipe.h"
#include "taper/util.h"

typedef enum { K_STR, K_INT, K_FLOAT, K_DOUBLE, K_FLAG, K_COUNT } kkind;

typedef struct {
    tp_recipe_key pub;
    kkind kind;
    size_t off;    /* field in tp_recipe */
    double lo, hi; /* range of K_INT / K_FLOAT */
} keydef;

#define S(n, f) {{n, 0}, K_STR, offsetof(tp_recipe, f), 0, 0}
#define I(n, f, lo, hi) {{n, 0}, K_INT, offsetof(tp_recipe, f), lo, hi}
#define F(n, f, lo, hi) {{n, 0}, K_FLOAT, offsetof(tp_recipe, f), lo, hi}
#define D(n, f, lo, hi) {{n, 0}, K_DOUBLE, offsetof(tp_recipe, f), lo, hi}
#define B(n, f) {{n, 1}, K_FLAG, offsetof(tp_recipe, f), 0, 0}
/* The order is the JSON form's (and that of the recipe.json files runs keep). */
static const keydef KEYS[] = {
    {{"target-params", 0}, K_COUNT, offsetof(tp_recipe, target_params), 0, 0},
    S("axes", axes),
    D("tolerance", tolerance, 1e-4, 0.99),
    S("search", search),
    I("candidates", candidates, 1, 4096),
    I("search-steps", search_steps, 1, 1 << 30),
    S("data", data),
    S("calib", calib),
    I("calib-samples", calib_samples, 1, 1 << 20),
    I("calib-seq", calib_seq, 2, 1 << 16),
    I("depth-samples", depth_samples, 0, 1 << 20),
    S("agg", agg),
    I("sdg-samples", sdg_samples, 1, 1 << 24),
    I("sdg-tokens", sdg_tokens, 1, 1 << 16),
    I("correct-steps", correct_steps, 0, 1 << 30),
    F("correct-lr", correct_lr, 0, 10),
    I("correct-warmup", correct_warmup, 0, 1 << 30),
    I("iterate", iterate, 1, 16),
    S("iterate-teacher", iterate_teacher),
    I("steps", steps, 0, 1 << 30),
    I("seq", seq, 2, 1 << 16),
    I("batch", batch, 1, 4096),
    I("accum", accum, 1, 4096),
    F("lr", lr, 0, 10),
    I("warmup", warmup, 0, 1 << 30),
    S("kd", kd),
    F("tau", tau, 1e-3, 1e3),
    B("tau2", tau2),
    I("topk", topk, 0, 1 << 20),
    F("ce-weight", ce_weight, 0, 1e3),
    S("inter", inter),
    S("alpha", alpha),
    B("emb-loss", emb_loss),
    S("precision", precision),
    I("ckpt-every", ckpt_every, 0, 1 << 30),
    S("eval-text", eval_text),
    I("eval-chunks", eval_chunks, 1, 1 << 20),
    I("eval-ctx", eval_ctx, 2, 1 << 16),
    S("tasks", tasks),
    I("task-limit", task_limit, 1, 1 << 24),
    S("data-dir", data_dir),
    I("threads", threads, 1, 1024),
    S("out", out),
};
#undef S
#undef I
#undef F
#undef D
#undef B
enum { N_KEYS = (int)(sizeof KEYS / sizeof KEYS[0]) };

int tp_recipe_n_keys(void) { return N_KEYS; }
const tp_recipe_key *tp_recipe_key_at(int i) { return i >= 0 && i < N_KEYS ? &KEYS[i].pub : NULL; }

/* settings that may differ between a stored run and a rerun */
static int free_to_change(const char *key) { return !strcmp(key, "threads") || !strcmp(key, "out"); }

static const keydef *find_key(const char *key) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].pub.key, key)) return &KEYS[i];
    return NULL;
}

static tp_status set_str(char **field, const char *v) {
    char *c = v ? strdup(v) : NULL;
    if (v && !c) return tp_fail(TP_ERR_NOMEM, "out of memory");
    free(*field);
    *field = c;
    return TP_OK;
}

tp_status tp_recipe_init(tp_recipe *r) {
    memset(r, 0, sizeof *r);
    r->calib_samples = 64;
    r->depth_samples = 16;
    r->calib_seq = 256;
    r->sdg_samples = 256;
    r->sdg_tokens = 256;
    r->steps = 100;
    r->seq = 256;
    r->batch = 4;
    r->accum = 1;
    r->warmup = 10;
    r->ckpt_every = 50;
    r->eval_chunks = 16;
    r->eval_ctx = 256;
    r->task_limit = 200;
    r->iterate = 1;
    r->lr = 2e-4f;
    r->tau = 1.0f;
    r->correct_lr = 2e-5f;
    r->tolerance = 0.05;
    r->candidates = 4;
    r->search_steps = 200;
    tp_status s;
    if ((s = set_str(&r->axes, "all")) || (s = set_str(&r->search, "untrained")) || (s = set_str(&r->eval_text, "/usr/share/common-licenses/GPL-3")) ||
        (s = set_str(&r->kd, "fkl")) || (s = set_str(&r->precision, "fp32")) || (s = set_str(&r->inter, "none")) ||
        (s = set_str(&r->alpha, "dynamic")) || (s = set_str(&r->iterate_teacher, "original"))) {
        tp_recipe_free(r);
        return s;
    }
    return TP_OK;
}

void tp_recipe_free(tp_recipe *r) {
    if (!r) return;
    free(r->teacher);
    for (int i = 0; i < N_KEYS; i++)
        if (KEYS[i].kind == K_STR) free(*(char **)((char *)r + KEYS[i].off));
    memset(r, 0, sizeof *r);
}

/* Parses a whole decimal number in [lo, hi]. */
static int parse_num(const char *t, int integer, double lo, double hi, double *v) {
    if (!t || !*t) return 0;
    char *end = NULL;
    errno = 0;
    double x = integer ? (double)strtol(t, &end, 10) : strtod(t, &end);
    if (errno || *end || end == t || isnan(x) || x < lo || x > hi) return 0;
    *v = x;
    return 1;
}

/* Sets key from text; label names the setting in messages. */
static tp_status set_labeled(tp_recipe *r, const char *key, const char *text, const char *label) {
    if (!strcmp(key, "teacher")) return set_str(&r->teacher, text);
    const keydef *k = find_key(key);
    if (!k) return tp_fail(TP_ERR_ARG, "unknown setting \"%s\"", key);
    void *f = (char *)r + k->off;
    double v;
    switch (k->kind) {
    case K_STR: return set_str((char **)f, text);
    case K_COUNT: {
        size_t n = 0;
        if (!text || tp_parse_count(text, &n) || n == 0)
            return tp_fail(TP_ERR_ARG, "%s: '%s' is not a parameter count like 90M", label, text ? text : "");
        *(size_t *)f = n;
        return TP_OK;
    }
    case K_INT:
        if (!parse_num(text, 1, k->lo, k->hi, &v))
            return tp_fail(TP_ERR_ARG, "%s expects an integer in [%.0f, %.0f], got '%s'", label, k->lo, k->hi,
                           text ? text : "");
        *(int *)f = (int)v;
        return TP_OK;
    case K_FLOAT:
        if (!parse_num(text, 0, k->lo, k->hi, &v))
            return tp_fail(TP_ERR_ARG, "%s expects a number in [%g, %g], got '%s'", label, k->lo, k->hi,
                           text ? text : "");
        *(float *)f = (float)v;
        return TP_OK;
    case K_DOUBLE:
        if (!parse_num(text, 0, k->lo, k->hi, &v))
            return tp_fail(TP_ERR_ARG, "%s expects a number in [%g, %g], got '%s'", label, k->lo, k->hi,
                           text ? text : "");
        *(double *)f = v;
        return TP_OK;
    case K_FLAG:
        if (!text || !strcmp(text, "1") || !strcmp(text, "true")) *(int *)f = 1;
        else if (!strcmp(text, "0") || !strcmp(text, "false")) *(int *)f = 0;
        else return tp_fail(TP_ERR_ARG, "%s must be true or false, got '%s'", label, text);
        return TP_OK;
    }
    return tp_fail(TP_ERR_ARG, "%s: unknown kind", label);
}

tp_status tp_recipe_set(tp_recipe *r, const char *key, const char *text) { return set_labeled(r, key, text, key); }

tp_status tp_recipe_set_as(tp_recipe *r, const char *key, const char *text, const char *label) {
    return set_labeled(r, key, text, label ? label : key);
}

tp_status tp_recipe_apply_json(tp_recipe *r, const char *json_text, const char *origin) {
    cJSON *root = cJSON_Parse(json_text);
    if (!root) return tp_fail(TP_ERR_ARG, "recipe %s: not valid JSON", origin);
    tp_status s = TP_OK;
    if (!cJSON_IsObject(root))
        s = tp_fail(TP_ERR_ARG, "recipe %s: expected a JSON object of settings ({\"target-params\": \"90M\", ...})",
                    origin);
    for (const cJSON *e = root->child; !s && e; e = e->next) {
        const char *k = e->string;
        for (const cJSON *p = root->child; !s && p != e; p = p->next)
            if (!strcmp(p->string, k)) s = tp_fail(TP_ERR_ARG, "recipe %s: key \"%s\" is given twice", origin, k);
        if (s) break;
        if (!strcmp(k, "teacher")) {
            if (!cJSON_IsString(e))
                s = tp_fail(TP_ERR_ARG, "recipe %s: key \"teacher\" must be a string (the teacher model path)", origin);
            else s = set_str(&r->teacher, e->valuestring);
            continue;
        }
        const keydef *d = find_key(k);
        if (!d) {
            if (!strcmp(k, "recipe") || !strcmp(k, "force") || !strcmp(k, "help"))
                s = tp_fail(TP_ERR_ARG, "recipe %s: %s is a command-line option of taper compress, not a setting a "
                                        "recipe can hold", origin, k);
            else
                s = tp_fail(TP_ERR_ARG, "recipe %s: unknown key \"%s\" (keys are taper compress's long options without "
                                        "the dashes, plus \"teacher\"; see taper compress --help)", origin, k);
            break;
        }
        if (d->kind == K_FLAG) {
            if (!cJSON_IsBool(e)) s = tp_fail(TP_ERR_ARG, "recipe %s: key \"%s\" must be true or false", origin, k);
            else *(int *)((char *)r + d->off) = cJSON_IsTrue(e);
            continue;
        }
        char num[64];
        const char *val = NULL;
        if (cJSON_IsString(e)) {
            val = e->valuestring;
        } else if (cJSON_IsNumber(e)) {
            double v = e->valuedouble;
            if (v == floor(v) && fabs(v) < 1e15) snprintf(num, sizeof num, "%.0f", v);
            else snprintf(num, sizeof num, "%.17g", v);
            val = num;
        } else {
            s = tp_fail(TP_ERR_ARG, "recipe %s: key \"%s\" must be a %s", origin, k,
                        d->kind == K_STR ? "string" : "number or string");
            break;
        }
        char label[1200];
        snprintf(label, sizeof label, "recipe %s: key \"%s\"", origin, k);
        s = set_labeled(r, k, val, label);
    }
    cJSON_Delete(root);
    return s;
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

cJSON *tp_recipe_to_json(const tp_recipe *r) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    if (r->teacher) cJSON_AddStringToObject(j, "teacher", r->teacher);
    for (int i = 0; i < N_KEYS; i++) {
        const keydef *k = &KEYS[i];
        const void *f = (const char *)r + k->off;
        /* the short-kd settings only when used: a recipe.json from before them compares equal */
        if ((!strcmp(k->pub.key, "search") || !strcmp(k->pub.key, "candidates") ||
             !strcmp(k->pub.key, "search-steps")) && (!r->search || !strcmp(r->search, "untrained")))
            continue;
        switch (k->kind) {
        case K_STR:
            if (*(char *const *)f) cJSON_AddStringToObject(j, k->pub.key, *(char *const *)f);
            break;
        case K_COUNT: cJSON_AddNumberToObject(j, k->pub.key, (double)*(const size_t *)f); break;
        case K_INT:
            if (strcmp(k->pub.key, "threads") || r->threads) cJSON_AddNumberToObject(j, k->pub.key, *(const int *)f);
            break;
        case K_FLOAT: cJSON_AddNumberToObject(j, k->pub.key, short_float(*(const float *)f)); break;
        case K_DOUBLE: cJSON_AddNumberToObject(j, k->pub.key, *(const double *)f); break;
        case K_FLAG: cJSON_AddBoolToObject(j, k->pub.key, *(const int *)f); break;
        }
    }
    return j;
}

int tp_recipe_diff(const cJSON *old, const cJSON *cur, char *buf, size_t n) {
    int nd = 0;
    size_t used = 0;
    if (n) buf[0] = 0;
    for (int pass = 0; pass < 2; pass++) {
        const cJSON *a = pass ? cur : old, *b = pass ? old : cur;
        for (const cJSON *e = a->child; e; e = e->next) {
            if (free_to_change(e->string)) continue;
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(b, e->string);
            if (pass && o) continue; /* compared in the first pass */
            if (o && cJSON_Compare(e, o, 1)) continue;
            const cJSON *was = pass ? o : e, *now = pass ? e : o;
            char *w = was ? cJSON_PrintUnformatted(was) : NULL, *v = now ? cJSON_PrintUnformatted(now) : NULL;
            if (used + 1 < n) {
                int k = snprintf(buf + used, n - used, "\n  %s: %s in the run, %s now", e->string, w ? w : "(unset)",
                                 v ? v : "(unset)");
                if (k > 0) used += (size_t)k;
                if (used >= n) used = n - 1;
            }
            free(w);
            free(v);
            nd++;
        }
    }
    return nd;
}

tp_status tp_recipe_finalize(tp_recipe *r, const char *default_data_dir) {
    if (r->tasks) return TP_OK;
    const char *dd = r->data_dir ? r->data_dir : default_data_dir;
    char *probe = dd ? tp_path_join(dd, "arc_easy/arc_easy.jsonl") : NULL;
    tp_status s;
    if (probe && access(probe, F_OK) == 0) {
        s = set_str(&r->tasks, "arc_easy,piqa,winogrande");
    } else {
        s = set_str(&r->tasks, "");
        tp_log(TP_LOG_NOTE, "compress: no benchmark data found (%s): zero-shot tasks skipped", probe ? probe : "");
    }
    free(probe);
    return s;
}

static int one_of(const char *v, const char *const *choices) {
    for (; *choices; choices++)
        if (v && !strcmp(v, *choices)) return 1;
    return 0;
}

tp_status tp_recipe_validate(const tp_recipe *r) {
    static const char *const PREC[] = {"fp32", "bf16", NULL}, *const AXES[] = {"all", "width", "depth", NULL},
                             *const KD[] = {"fkl", "rkl", "jsd", "none", NULL},
                             *const INTER[] = {"none", "cosine", "mse", NULL},
                             *const ITER[] = {"original", "prev", NULL},
                             *const SEARCH[] = {"untrained", "short-kd", NULL};
    if (!r->teacher) return tp_fail(TP_ERR_ARG, "teacher is required (the model to compress)");
    if (!r->target_params) return tp_fail(TP_ERR_ARG, "target-params is required (e.g. 100M)");
    if (!one_of(r->precision, PREC)) return tp_fail(TP_ERR_ARG, "precision must be fp32 or bf16, got '%s'", r->precision);
    if (!one_of(r->axes, AXES)) return tp_fail(TP_ERR_ARG, "axes must be all, width or depth, got '%s'", r->axes);
    if (!one_of(r->search, SEARCH))
        return tp_fail(TP_ERR_ARG, "search must be untrained or short-kd, got '%s'", r->search);
    if (!one_of(r->kd, KD)) return tp_fail(TP_ERR_ARG, "kd must be fkl, rkl, jsd or none, got '%s'", r->kd);
    if (!one_of(r->inter, INTER)) return tp_fail(TP_ERR_ARG, "inter must be none, cosine or mse, got '%s'", r->inter);
    if (!one_of(r->iterate_teacher, ITER))
        return tp_fail(TP_ERR_ARG, "iterate-teacher must be original or prev, got '%s'", r->iterate_teacher);
    if (strcmp(r->alpha, "dynamic")) {
        char *end = NULL;
        double a = strtod(r->alpha, &end);
        if (!*r->alpha || *end || !(a >= 0) || isinf(a))
            return tp_fail(TP_ERR_ARG, "alpha must be dynamic or a number >= 0, got '%s'", r->alpha);
    }
    int pair;
    if (r->agg && tp_agg_pair_parse(r->agg, &pair)) return tp_fail_ctx(TP_ERR_ARG, "agg: ");
    if (r->correct_steps > 0 && r->correct_lr <= 0) return tp_fail(TP_ERR_ARG, "correct-lr must be > 0");
    if (access(r->teacher, F_OK)) return tp_fail(TP_ERR_ARG, "teacher %s does not exist", r->teacher);
    if (!r->eval_text || access(r->eval_text, F_OK))
        return tp_fail(TP_ERR_ARG, "eval-text %s does not exist", r->eval_text ? r->eval_text : "(unset)");
    if (r->data && !r->calib)
        return tp_fail(TP_ERR_ARG, "calib is required with data (calibration text for importance)");
    return TP_OK;
}

size_t tp_recipe_round_target(const tp_recipe *r, size_t p0, int round) {
    if (round >= r->iterate) return r->target_params;
    return (size_t)llround((double)p0 * pow((double)r->target_params / (double)p0, (double)round / r->iterate));
}


char *tp_recipe_round_name(const tp_recipe *r, const char *base, int round, const char *suffix) {
    return r->iterate == 1 ? tp_strfmt("%s%s", base, suffix) : tp_strfmt("%s-%d%s", base, round, suffix);
}

char *tp_recipe_student_dir(const tp_recipe *r, int round) {
    return round == r->iterate ? strdup("student") : tp_strfmt("student-%d", round);
}
