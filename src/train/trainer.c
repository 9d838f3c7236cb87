/* The training loop (tp_train_run): micro-batches + accumulation, AdamW, validation, metrics
 * log, checkpoints, resume, NaN stop and stop-on-request. The maths lives elsewhere
 * (tp_train_step in backward.c, tp_adamw_step in optim.c); the file formats too (checkpoint.c,
 * data.c). Exact resume rests on three things restored from the checkpoint — weights + Adam
 * state, the loader cursor, the trainer RNG — and on every kernel being deterministic. */
#include "taper/trainer.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/comm.h"
#include "taper/util.h"
#include "core/internal.h"

void tp_train_cfg_defaults(tp_train_cfg *c) {
    memset(c, 0, sizeof *c);
    c->B = 4;
    c->T = 256;
    c->accum = 1;
    tp_adamw_defaults(&c->opt);
    c->val_every = 0;
    c->val_batches = 8;
    c->ckpt_every = 100;
    c->keep = 2;
}

void tp_train_result_free(tp_train_result *r) {
    if (!r) return;
    free(r->resumed_from);
    free(r->last_ckpt);
    r->resumed_from = r->last_ckpt = NULL;
}

/* ---------------------------------------------------------------- small helpers */

uint64_t tp_params_hash(const tp_model *m) {
    /* FNV-1a over 32-bit words: order-sensitive, one multiply per parameter. */
    uint64_t h = 1469598103934665603ull;
    const uint32_t *w = (const uint32_t *)(const void *)m->params;
    for (size_t i = 0; i < m->n_params; i++) h = (h ^ w[i]) * 1099511628211ull;
    return h ^ (uint64_t)m->n_params;
}

static void fill_normal(float *x, size_t n, tp_rng *r, float std) {
    for (size_t i = 0; i < n; i++) x[i] = std * tp_rng_normal(r);
}

static void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

void tp_model_init_random(tp_model *m, uint64_t seed, float std) {
    const tp_config *c = &m->cfg;
    size_t d = (size_t)c->d_model, kv = (size_t)c->n_kv_heads * (size_t)c->head_dim, V = (size_t)c->vocab;
    tp_rng r;
    tp_rng_seed(&r, seed);
    float one = c->norm_plus_one ? 0.0f : 1.0f; /* norms start as the identity: w = 1, or 1 + w with w = 0 */
    fill_normal(m->tok_emb, V * d, &r, std);
    for (int l = 0; l < c->n_layers; l++) {
        tp_layer *L = &m->layers[l];
        size_t q = (size_t)tp_config_heads(c, l) * (size_t)c->head_dim, ff = (size_t)tp_config_ff(c, l);
        fill_const(L->attn_norm, d, one);
        if (L->q_norm) fill_const(L->q_norm, (size_t)c->head_dim, one);
        if (L->k_norm) fill_const(L->k_norm, (size_t)c->head_dim, one);
        if (L->attn_post_norm) fill_const(L->attn_post_norm, d, one);
        if (L->mlp_post_norm) fill_const(L->mlp_post_norm, d, one);
        fill_normal(L->wq, q * d, &r, std);
        fill_normal(L->wk, kv * d, &r, std);
        fill_normal(L->wv, kv * d, &r, std);
        if (L->bq) fill_const(L->bq, q, 0.0f);
        if (L->bk) fill_const(L->bk, kv, 0.0f);
        if (L->bv) fill_const(L->bv, kv, 0.0f);
        fill_normal(L->wo, d * q, &r, std);
        fill_const(L->mlp_norm, d, one);
        fill_normal(L->w_gate, ff * d, &r, std);
        fill_normal(L->w_up, ff * d, &r, std);
        fill_normal(L->w_down, d * ff, &r, std);
    }
    fill_const(m->final_norm, d, one);
    if (m->lm_head != m->tok_emb) fill_normal(m->lm_head, V * d, &r, std);
}

/* Step number of a complete checkpoint name "ckpt-<digits>.tpc", else -1. */
static long ckpt_name_step(const char *name) {
    if (strncmp(name, "ckpt-", 5) != 0) return -1;
    const char *p = name + 5;
    if (*p < '0' || *p > '9') return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > (long)1e15) return -1;
        v = v * 10 + (*p++ - '0');
    }
    return strcmp(p, ".tpc") == 0 ? v : -1;
}

int tp_run_dir_ckpts(const char *dir, char *newest, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    int n = 0;
    long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long s = ckpt_name_step(e->d_name);
        if (s < 0) continue;
        n++;
        if (s > best && newest) {
            best = s;
            snprintf(newest, cap, "%s", e->d_name);
        }
    }
    closedir(d);
    return n;
}

static int all_finite(const float *x, size_t n) {
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= isfinite(x[i]) != 0;
    return ok;
}

/* ---------------------------------------------------------------- args and metrics files */

static int json_equal(const cJSON *a, const cJSON *b) {
    if (!a && !b) return 1;
    if (!a || !b) return 0;
    return cJSON_Compare(a, b, 1);
}

static void describe(const cJSON *v, char *buf, size_t cap) {
    if (!v) {
        snprintf(buf, cap, "(unset)");
        return;
    }
    if (cJSON_IsNumber(v)) { /* counts whole; settings are floats, shown without the double noise */
        double x = v->valuedouble;
        if (x == floor(x) && fabs(x) < 1e15) snprintf(buf, cap, "%.0f", x);
        else snprintf(buf, cap, "%.7g", x);
        return;
    }
    char *t = cJSON_PrintUnformatted(v);
    snprintf(buf, cap, "%s", t ? t : "?");
    free(t);
}

tp_status tp_train_args_compare(const char *saved, const char *now, const char *const *keys) {
    cJSON *a = cJSON_Parse(saved ? saved : "{}"), *b = cJSON_Parse(now ? now : "{}");
    if (!a || !b || !cJSON_IsObject(a) || !cJSON_IsObject(b)) {
        int oom = (!a && tp_json_valid(saved ? saved : "{}", strlen(saved ? saved : "{}"))) ||
                  (!b && tp_json_valid(now ? now : "{}", strlen(now ? now : "{}")));
        cJSON_Delete(a);
        cJSON_Delete(b);
        if (oom) return tp_fail(TP_ERR_NOMEM, "out of memory comparing settings");
        return tp_fail(TP_ERR_FORMAT, "settings to compare are not JSON objects");
    }
    char msg[2048] = "", va[256], vb[256];
    size_t used = 0;
    int n_diff = 0;
    for (size_t i = 0; keys && keys[i]; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(a, keys[i]);
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, keys[i]);
        if (json_equal(x, y)) continue;
        describe(x, va, sizeof va);
        describe(y, vb, sizeof vb);
        if (used < sizeof msg) {
            int w = snprintf(msg + used, sizeof msg - used, "%s%s: was %s, now %s", n_diff ? "; " : "", keys[i], va, vb);
            if (w > 0) used += (size_t)w;
        }
        n_diff++;
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    if (n_diff) return tp_fail(TP_ERR_ARG, "%d setting%s differ%s from the run being resumed: %s", n_diff,
                               n_diff > 1 ? "s" : "", n_diff > 1 ? "" : "s", msg);
    return TP_OK;
}

tp_status tp_metrics_truncate(const char *path, long step) {
    char *text = NULL;
    size_t len = 0;
    if (access(path, F_OK) != 0) return TP_OK;
    tp_status s = tp_read_file(path, &text, &len);
    if (s) return s;
    char *out = malloc(len + 1);
    if (!out) {
        free(text);
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t o = 0, kept = 0, dropped = 0;
    for (size_t i = 0; i < len;) {
        char *nl = memchr(text + i, '\n', len - i);
        if (!nl) { /* torn last line (killed mid-write) */
            dropped++;
            break;
        }
        size_t n = (size_t)(nl - (text + i));
        *nl = 0;
        cJSON *j = cJSON_Parse(text + i);
        if (!j && tp_json_valid(text + i, n)) { /* out of memory, not a torn line: keep the log whole */
            free(text);
            free(out);
            return tp_fail(TP_ERR_NOMEM, "%s: out of memory reading the metrics", path);
        }
        const cJSON *st = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
        if (cJSON_IsNumber(st) && st->valuedouble <= (double)step) {
            memcpy(out + o, text + i, n);
            out[o + n] = '\n';
            o += n + 1;
            kept++;
        } else {
            dropped++;
        }
        cJSON_Delete(j);
        i += n + 1;
    }
    free(text);
    s = dropped ? tp_write_file_atomic(path, out, o) : TP_OK;
    free(out);
    (void)kept;
    return s;
}

int tp_metrics_each(const char *path, void (*fn)(void *user, double step, double loss, double val_loss), void *user) {
    char *text = NULL;
    if (!path || tp_read_file(path, &text, NULL) != TP_OK) {
        tp_clear_error();
        return 0;
    }
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        double s = tp_json_number(j, "step");
        if (!isnan(s)) {
            fn(user, s, tp_json_number(j, "loss"), tp_json_number(j, "val_loss"));
            n++;
        }
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

/* ---------------------------------------------------------------- the loop */

typedef struct {
    const tp_train_cfg *cfg;
    const tp_train_data *data;
    const tp_train_hooks *hooks;
    tp_model *m, *grad;
    tp_tape *tape;
    tp_adamw opt;
    tp_rng rng;
    int32_t *tokens, *targets;  /* (B,T) each */
    uint64_t *windows;          /* (B) window ids of the loader's rows */
    FILE *metrics;              /* NULL without run_dir */
    double tokens_seen, elapsed0, t0;
    tp_progress prog;
    int prog_drawn;
    tp_comm *comm;              /* the ranks sharing each update (one process: the single world) */
    int rank, size;             /* rank 0 writes the metrics, the checkpoints and the log */
    tp_rng micro_rng;           /* the RNG handed to a micro-batch's hooks, seeded per global micro-batch */
    double comm_s;              /* seconds in the gradient all-reduce, this call */
    double wait_s;              /* seconds waiting for the slowest rank before it */
    int stop_all;               /* some rank saw the stop request in the last update */
} trainer;

static void say(trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(trainer *t, const char *fmt, ...) {
    if (t->cfg->quiet || t->rank != 0) return;
    if (t->prog.enabled && t->prog_drawn) fputc('\n', stderr); /* end the progress bar's line */
    t->prog_drawn = 0;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    tp_log(TP_LOG_INFO, "%s", buf);
}

static tp_status validate_cfg(const tp_model *m, const tp_train_cfg *c, const tp_train_data *d) {
    if (c->steps < 0) return tp_fail(TP_ERR_ARG, "train: steps must be >= 0, got %ld", c->steps);
    if (c->B < 1 || c->T < 1 || c->accum < 1)
        return tp_fail(TP_ERR_ARG, "train: batch %d, seq %d and accum %d must be >= 1", c->B, c->T, c->accum);
    if (c->T > m->cfg.max_pos)
        return tp_fail(TP_ERR_ARG, "train: seq %d exceeds the model's context of %d positions", c->T, m->cfg.max_pos);
    if (!d || (!d->batch && !d->loader)) return tp_fail(TP_ERR_ARG, "train: no data (loader or batch function)");
    if (c->resume && !c->run_dir) return tp_fail(TP_ERR_ARG, "train: resume needs a run directory");
    return TP_OK;
}

static tp_status save_ckpt(trainer *t, long step) {
    if (!t->cfg->run_dir || t->rank != 0) return TP_OK; /* every rank holds the same state */
    /* Checked here rather than after every update: a non-finite weight never reaches a file. */
    if (!all_finite(t->m->params, t->m->n_params))
        return tp_fail(TP_ERR_NUMERIC, "step %ld: the weights hold NaN/inf after the update; not saved", step);
    tp_ckpt_state st;
    memset(&st, 0, sizeof st);
    st.step = step;
    st.rng = t->rng;
    if (t->data->loader) st.cursor = tp_loader_cursor(t->data->loader);
    st.tokens_seen = t->tokens_seen;
    st.elapsed_s = t->elapsed0 + (tp_time_s() - t->t0);
    st.args_json = (char *)(t->cfg->args_json ? t->cfg->args_json : "{}");
    tp_status s = TP_OK;
    if (t->hooks && t->hooks->state_save && (s = t->hooks->state_save(t->hooks->user, &st.extra, &st.extra_bytes)))
        return tp_fail_ctx(s, "step %ld: saving the extra training state: ", step);
    s = tp_ckpt_save(t->cfg->run_dir, t->m, &t->opt, &st, t->cfg->keep);
    free(st.extra);
    if (s) return tp_fail_ctx(s, "step %ld: writing the checkpoint: ", step);
    return TP_OK;
}

/* Mean loss over the first val_batches batches of held-out windows. */
static tp_status validate(trainer *t, double *loss, size_t *n_tok) {
    const tp_train_cfg *c = t->cfg;
    tp_loader *L = t->data->loader;
    *loss = NAN;
    *n_tok = 0;
    if (!L) return TP_OK;
    size_t n_val = tp_loader_n_val(L), limit = n_val;
    if (c->val_batches > 0 && (size_t)c->val_batches * (size_t)c->B < limit) limit = (size_t)c->val_batches * (size_t)c->B;
    double sum = 0;
    size_t cnt = 0, k = 0;
    for (size_t i = 0; i < limit; i += (size_t)c->B, k++) {
        if (k % (size_t)t->size != (size_t)t->rank) continue; /* batch k is rank k mod size's */
        int want = (int)(limit - i < (size_t)c->B ? limit - i : (size_t)c->B), got = 0;
        tp_status s = tp_loader_val(L, i, want, t->tokens, t->targets, &got);
        if (s) return s;
        if (got <= 0) break;
        double sl = 0;
        size_t nc = 0;
        if ((s = tp_ce_eval(t->m, t->tokens, t->targets, got, c->T, &sl, &nc))) return s;
        sum += sl;
        cnt += nc;
    }
    double tot[2] = {sum, (double)cnt};
    tp_status s = tp_comm_sum_f64(t->comm, tot, 2);
    if (s) return s;
    sum = tot[0];
    cnt = (size_t)tot[1];
    if (cnt) *loss = sum / (double)cnt;
    *n_tok = cnt;
    return TP_OK;
}

static void log_line(trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(trainer *t, const char *fmt, ...) {
    if (!t->metrics) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(t->metrics, fmt, ap);
    va_end(ap);
    fflush(t->metrics); /* a SIGKILL loses at most a torn line, which resume drops */
}

static tp_status run_validation(trainer *t, long step, tp_train_result *res) {
    double vl, t0 = tp_time_s();
    size_t n;
    tp_status s = validate(t, &vl, &n);
    if (s) return tp_fail_ctx(s, "validation at step %ld: ", step);
    if (!n) return TP_OK;
    if (!isfinite(vl)) return tp_fail(TP_ERR_NUMERIC, "step %ld: validation loss is %g", step, vl);
    log_line(t, "{\"step\":%ld,\"val_loss\":%.9g,\"val_ppl\":%.9g,\"val_tokens\":%zu,\"val_s\":%.3f}\n", step, vl,
             exp(vl), n, tp_time_s() - t0);
    say(t, "step %ld: val_loss %.4f (ppl %.2f) on %zu held-out tokens", step, vl, exp(vl), n);
    if (isnan(res->val_loss_first)) res->val_loss_first = vl;
    res->val_loss = vl;
    return TP_OK;
}

/* Global micro-batch g of an update (0 .. accum * size - 1): rank r computes accum * r ..
 * accum * (r + 1) - 1, so that size ranks with accum each see, in order, the micro-batches of one
 * process with accum * size. The loader skips the windows of the other ranks' micro-batches. */
static tp_status get_batch(trainer *t, long step, int g) {
    const tp_train_cfg *c = t->cfg;
    if (t->data->batch)
        return t->data->batch(t->data->batch_user, step, g, t->tokens, t->targets, c->B, c->T);
    return tp_loader_next_ids(t->data->loader, c->B, t->tokens, t->targets, t->windows);
}

static tp_status skip_micro(trainer *t, int n) {
    if (t->data->batch || n <= 0) return TP_OK;
    return tp_loader_skip(t->data->loader, (uint64_t)n * (uint64_t)t->cfg->B);
}

/* One optimizer update (0-based index step). Weights change only if everything was finite. */
static tp_status one_update(trainer *t, long step, double *loss_out, double *gnorm_out) {
    const tp_train_cfg *c = t->cfg;
    tp_status s;
    int G = c->accum * t->size, g0 = c->accum * t->rank; /* global micro-batches; this rank's first */
    memset(t->grad->params, 0, t->grad->n_params * sizeof(float));
    /* One seed per global micro-batch, drawn by every rank: the hooks' randomness (contrastive
     * negatives) is the same whichever rank computes a micro-batch. */
    uint64_t seed_mine[64], *seeds = seed_mine;
    if (G > 64 && !(seeds = malloc((size_t)G * sizeof *seeds))) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (int g = 0; g < G; g++) seeds[g] = tp_rng_u64(&t->rng);
    double red[3] = {0, 0, 0}; /* loss sum, micro-batches with a non-finite loss, stop requested */
    int bad_g = -1, bad_nan = 0;
    s = skip_micro(t, g0);
    for (int j = 0; j < c->accum && !s && red[1] == 0; j++) {
        int g = g0 + j;
        if ((s = get_batch(t, step, g))) {
            s = tp_fail_ctx(s, "step %ld: reading micro-batch %d: ", step + 1, g);
            break;
        }
        tp_step_opts o;
        memset(&o, 0, sizeof o);
        o.targets = t->targets;
        o.grad_scale = 1.0f / (float)G;
        tp_rng_seed(&t->micro_rng, seeds[g]);
        if (t->hooks && t->hooks->prepare) {
            tp_train_micro mb = {step, j, t->tokens, t->targets, c->B, c->T, &t->micro_rng,
                                 t->data->batch ? NULL : t->windows};
            if ((s = t->hooks->prepare(t->hooks->user, &mb, &o))) {
                s = tp_fail_ctx(s, "step %ld: ", step + 1);
                break;
            }
        }
        double loss = 0;
        size_t nc = 0;
        if ((s = tp_train_step(t->m, t->grad, t->tape, t->tokens, c->B, c->T, &o, &loss, &nc))) {
            s = tp_fail_ctx(s, "step %ld, micro-batch %d: ", step + 1, g);
            break;
        }
        if (!isfinite(loss)) {
            red[1] = 1;
            bad_g = g;
            bad_nan = isnan(loss);
        } else {
            red[0] += loss;
        }
    }
    if (seeds != seed_mine) free(seeds);
    if (s) return s; /* a rank that fails here takes the job down (the CLI aborts every rank) */
    if ((s = skip_micro(t, G - g0 - c->accum))) return s;
    if (t->size > 1) {
        red[2] = c->stop && *c->stop ? 1 : 0;
        /* the wait for the slowest rank, apart from the transfer itself */
        double tw = tp_time_s();
        if ((s = tp_comm_barrier(t->comm))) return tp_fail_ctx(s, "step %ld: barrier: ", step + 1);
        double tc = tp_time_s();
        t->wait_s += tc - tw;
        if ((s = tp_comm_sum_f32(t->comm, t->grad->params, t->grad->n_params)) ||
            (s = tp_comm_sum_f64(t->comm, red, 2)) || (s = tp_comm_max_f64(t->comm, red + 2, 1)))
            return tp_fail_ctx(s, "step %ld: all-reduce: ", step + 1);
        t->comm_s += tp_time_s() - tc;
        t->stop_all = red[2] != 0;
    }
    if (red[1] != 0 && bad_g < 0)
        return tp_fail(TP_ERR_NUMERIC, "step %ld: the loss is not finite on another rank; stopped before the update",
                       step + 1);
    if (red[1] != 0)
        return tp_fail(TP_ERR_NUMERIC, "step %ld: the loss is %s (micro-batch %d of %d); stopped before the update",
                       step + 1, bad_nan ? "NaN" : "infinite", bad_g + 1, G);
    if (t->hooks && t->hooks->reduce && t->size > 1 && (s = t->hooks->reduce(t->hooks->user, t->comm)))
        return tp_fail_ctx(s, "step %ld: all-reduce of the hooks' state: ", step + 1);
    double gnorm = 0;
    s = tp_adamw_step(&t->opt, t->m, t->grad, &gnorm);
    if (s == TP_ERR_NUMERIC) {
        char why[512];
        snprintf(why, sizeof why, "%s", tp_errmsg()); /* tp_fail reuses the message buffer */
        return tp_fail(TP_ERR_NUMERIC, "step %ld: the gradient is not finite (%s); stopped before the update", step + 1,
                       why);
    }
    if (s) return tp_fail_ctx(s, "step %ld: optimizer: ", step + 1);
    *loss_out = red[0] / G;
    *gnorm_out = gnorm;
    return TP_OK;
}

/* Resume (or fresh start) bookkeeping for the run dir: checkpoint, settings, metrics. */
static tp_status start_state(trainer *t, long *start, tp_train_result *res) {
    const tp_train_cfg *c = t->cfg;
    *start = 0;
    if (!c->run_dir) return TP_OK;
    char newest[256] = "";
    int n = tp_run_dir_ckpts(c->run_dir, newest, sizeof newest);
    if (n < 0) return tp_fail(TP_ERR_IO, "%s: cannot list the run directory: %s", c->run_dir, strerror(errno));
    char *mpath = tp_path_join(c->run_dir, "metrics.jsonl");
    if (!mpath) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = TP_OK;
    if (n > 0 && !c->resume) {
        s = tp_fail(TP_ERR_ARG, "%s already holds %d checkpoint%s (newest %s): resume it, or use a new run directory",
                    c->run_dir, n, n > 1 ? "s" : "", newest);
    } else if (n > 0) {
        tp_ckpt_state st;
        memset(&st, 0, sizeof st);
        char *used = NULL;
        s = tp_ckpt_load_latest(c->run_dir, t->m, &t->opt, &st, &used);
        if (s) {
            s = tp_fail_ctx(s, "resuming %s: ", c->run_dir);
        } else if (st.step < 0 || st.step != t->opt.step) {
            s = tp_fail(TP_ERR_FORMAT, "%s: checkpoint step %ld but optimizer step %ld", used ? used : "?", st.step,
                        t->opt.step);
        } else if (c->resume_keys &&
                   (s = tp_train_args_compare(st.args_json, c->args_json, c->resume_keys)) != TP_OK) {
            s = tp_fail_ctx(s, "refusing to resume %s (%s): ", c->run_dir, used ? used : "?");
        } else if (t->data->loader && (s = tp_loader_seek(t->data->loader, st.cursor))) {
            s = tp_fail_ctx(s, "resuming %s: ", c->run_dir);
        } else if (st.extra_bytes && !(t->hooks && t->hooks->state_load)) {
            s = tp_fail(TP_ERR_ARG, "refusing to resume %s (%s): it holds %zu bytes of extra training state (e.g. a "
                                    "distiller's projections) that this run has no use for",
                        c->run_dir, used ? used : "?", st.extra_bytes);
        } else if (t->hooks && t->hooks->state_load &&
                   (s = t->hooks->state_load(t->hooks->user, st.extra, st.extra_bytes))) {
            s = tp_fail_ctx(s, "resuming %s (%s): ", c->run_dir, used ? used : "?");
        } else {
            *start = st.step;
            t->rng = st.rng;
            t->tokens_seen = st.tokens_seen;
            t->elapsed0 = st.elapsed_s;
            res->resumed_from = used;
            used = NULL;
            say(t, "resumed from %s at step %ld of %ld (%.0f tokens seen)", res->resumed_from, st.step, c->steps,
                st.tokens_seen);
        }
        free(used);
        tp_ckpt_state_free(&st);
    } else if (c->resume) {
        say(t, "no checkpoint in %s yet: starting at step 0", c->run_dir);
    }
    /* Lines logged after the state being resumed (or by a run killed before its first
     * checkpoint) are dropped so the log has each step once. */
    if (!s && t->rank == 0) s = tp_metrics_truncate(mpath, *start > 0 ? *start : -1);
    if (!s && t->rank == 0) {
        t->metrics = fopen(mpath, "a");
        if (!t->metrics) s = tp_fail(TP_ERR_IO, "%s: cannot open for appending: %s", mpath, strerror(errno));
    }
    free(mpath);
    return s;
}

static void trainer_free(trainer *t) {
    if (t->metrics) fclose(t->metrics);
    tp_tape_free(t->tape);
    tp_model_free(t->grad);
    tp_adamw_free(&t->opt);
    free(t->tokens);
    free(t->targets);
    free(t->windows);
}

static tp_status train_loop(trainer *t, long start, tp_train_result *res) {
    const tp_train_cfg *c = t->cfg;
    tp_status s;
    double step_tokens = (double)c->B * c->T * c->accum * t->size;
    if (c->val_every >= 0 && start == 0 && c->steps > 0 && (s = run_validation(t, 0, res))) return s;
    tp_progress_begin(&t->prog, "train", (double)(c->steps > start ? c->steps - start : 0) * step_tokens, "tok");
    if (c->quiet) t->prog.enabled = 0;
    long step = start;
    int ended = 0;
    while (step < c->steps) {
        double ts = tp_time_s(), lr = tp_lr_at(&t->opt.cfg, t->opt.step), loss = NAN, gnorm = NAN, cs = t->comm_s,
               ws = t->wait_s;
        if ((s = one_update(t, step, &loss, &gnorm))) break;
        step++;
        double dt = tp_time_s() - ts;
        t->tokens_seen += step_tokens;
        res->tokens += step_tokens;
        res->train_seconds += dt;
        res->loss = loss;
        res->step = step;
        const char *extra = t->hooks && t->hooks->metrics ? t->hooks->metrics(t->hooks->user, step) : NULL;
        char ar[96] = ""; /* several ranks: the gradient all-reduce's share of the update, and the wait */
        if (t->size > 1)
            snprintf(ar, sizeof ar, ",\"allreduce_s\":%.6f,\"wait_s\":%.6f", t->comm_s - cs, t->wait_s - ws);
        log_line(t,
                 "{\"step\":%ld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,\"tokens\":%.0f,\"tokens_per_s\":%.1f,"
                 "\"elapsed_s\":%.3f%s%s%s}\n",
                 step, loss, lr, gnorm, t->tokens_seen, dt > 0 ? step_tokens / dt : 0.0,
                 t->elapsed0 + (tp_time_s() - t->t0), ar, extra && *extra ? "," : "", extra ? extra : "");
        tp_progress_update(&t->prog, res->tokens);
        t->prog_drawn = t->prog.enabled;
        /* with several ranks, the request as reduced in the update: every rank stops at the same step */
        int last = step == c->steps, stop = t->size > 1 ? t->stop_all : c->stop && *c->stop;
        if (last) { /* the bar's rate: updates only, before the final validation and checkpoint */
            tp_progress_end(&t->prog);
            t->prog_drawn = 0;
            ended = 1;
        }
        if (c->val_every >= 0 && (last || (c->val_every > 0 && step % c->val_every == 0)) &&
            (s = run_validation(t, step, res)))
            break;
        if (last || stop || (c->ckpt_every > 0 && step % c->ckpt_every == 0)) {
            if ((s = save_ckpt(t, step))) break;
            char name[256] = "";
            if (c->run_dir && t->rank == 0 && tp_run_dir_ckpts(c->run_dir, name, sizeof name) > 0) {
                free(res->last_ckpt);
                res->last_ckpt = tp_path_join(c->run_dir, name);
            }
        }
        if (stop && !last) {
            res->stopped = 1;
            say(t, "stop requested: stopped after step %ld of %ld%s%s", step, c->steps,
                res->last_ckpt ? ", checkpoint " : "", res->last_ckpt ? res->last_ckpt : "");
            break;
        }
    }
    if (!ended && t->prog_drawn) tp_progress_end(&t->prog);
    t->prog_drawn = 0;
    if (s == TP_ERR_NUMERIC && c->run_dir) {
        char newest[256] = "";
        int n = tp_run_dir_ckpts(c->run_dir, newest, sizeof newest);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", tp_errmsg());
        if (n > 0) return tp_fail(s, "%s; the last good checkpoint is %s/%s", msg, c->run_dir, newest);
        return tp_fail(s, "%s; no checkpoint was written yet", msg);
    }
    return s;
}

tp_status tp_train_run(tp_model *m, const tp_train_cfg *cfg, const tp_train_data *data, const tp_train_hooks *hooks,
                       tp_train_result *res_out) {
    tp_train_result local;
    tp_train_result *res = res_out ? res_out : &local;
    memset(res, 0, sizeof *res);
    res->loss = res->val_loss = res->val_loss_first = NAN;
    tp_status s = validate_cfg(m, cfg, data);
    if (s) return s;
    trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = cfg;
    t.data = data;
    t.hooks = hooks;
    t.m = m;
    t.t0 = tp_time_s();
    t.comm = cfg->comm ? cfg->comm : tp_comm_world();
    t.rank = tp_comm_rank(t.comm);
    t.size = tp_comm_size(t.comm);
    tp_rng_seed(&t.rng, cfg->seed ^ 0x7472616e65723131ull);
    size_t bt = (size_t)cfg->B * (size_t)cfg->T;
    t.tokens = malloc(bt * sizeof(int32_t));
    t.targets = malloc(bt * sizeof(int32_t));
    t.windows = malloc((size_t)cfg->B * sizeof(uint64_t));
    if (!t.tokens || !t.targets || !t.windows) s = tp_fail(TP_ERR_NOMEM, "train: out of memory for a %d x %d batch", cfg->B, cfg->T);
    if (!s) s = tp_model_alloc(&m->cfg, &t.grad);
    if (!s) s = tp_adamw_init(&t.opt, m, &cfg->opt);
    if (!s) s = tp_tape_alloc(&m->cfg, cfg->B, cfg->T, cfg->recompute, &t.tape);
    long start = 0;
    if (!s) s = start_state(&t, &start, res);
    if (!s) {
        res->step_start = res->step = start;
        res->tape_bytes = tp_tape_bytes(t.tape);
        res->state_bytes = 3 * m->n_params * sizeof(float);
        s = train_loop(&t, start, res);
    }
    res->tokens_seen = t.tokens_seen;
    res->elapsed_s = t.elapsed0 + (tp_time_s() - t.t0);
    res->seconds = tp_time_s() - t.t0;
    res->comm_seconds = t.comm_s;
    res->wait_seconds = t.wait_s;
    res->ranks = t.size;
    trainer_free(&t);
    if (res == &local) tp_train_result_free(&local);
    return s;
}
