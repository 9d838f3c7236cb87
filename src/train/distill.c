/* The distillation step (include/taper/distill.h): per micro-batch a teacher forward that keeps
 * only what the losses need, the logits loss against teacher logits recomputed chunk by chunk,
 * optional CE, intermediate-state losses through the student's forward and grad hooks, learned
 * projections where the widths differ. The training loop itself is tp_train_run's.
 *
 * Losses are means over the micro-batch's tokens: logits/CE are summed over rows and divided by
 * N = B*T; an intermediate loss is the mean over rows of its per-row loss (cosine: 1 - cos; MSE:
 * mean squared error over the columns of RMS-normalised states), averaged over the pairs.
 *
 * The teacher's side comes from its forward in this process, or, with a teacher cache, from the
 * cached top-k of the windows the loader served (their ids arrive with the micro-batch). The
 * contrastive loss draws its negatives per row from a seed taken from the trainer RNG once per
 * micro-batch, so a resumed run draws the same ones. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels.h"
#include "taper/distill.h"
#include "train_internal.h"

struct tp_distiller {
    const tp_model *teacher, *student;
    tp_distill_cfg cfg;
    tp_adamw_cfg opt;
    int B, T;
    size_t N, ds, dt, V;
    int n_states;          /* pairs + (emb ? 1 : 0); state n_pairs is the embedding output */
    float *t_h;            /* (N, dt) teacher final-norm output of the current micro-batch */
    float *t_states;       /* (n_states, N, dt) teacher hidden states */
    float *tlog;           /* (chunk rows, V) teacher logits of the current chunk */
    size_t tlog_rows;
    float *ce_grad;        /* (chunk rows, V) */
    int32_t *topk_idx;     /* (chunk rows, k) */
    float *topk_lp;
    int32_t *c_idx;        /* (N, k) the micro-batch's top-k from the teacher cache */
    float *c_lp;
    int32_t *cand;         /* (chunk rows, 1 + negatives) contrastive candidates */
    float *cgrad;          /* (chunk rows, 1 + negatives) their gradients */
    uint64_t seed;         /* contrastive draws of the current micro-batch */
    float *nbuf;           /* (N, ds) scratch for normalised student states */
    float *nbuf_t;         /* (N, dt) scratch for normalised teacher states */
    float *ngrad;          /* (N, ds) */
    float *gy;             /* cosine: (n_states, N, dt) each state's gradient with respect to its
                              projected state, unscaled, from the forward hook for the backward */
    /* projections, one per state when ds != dt: (dt, ds) each, with gradients and Adam moments */
    float *P, *dP, *Pm, *Pv;
    long p_step;
    const int32_t *targets;/* current micro-batch */
    int micro;
    double pair_loss[TP_DISTILL_MAX_PAIRS + 1];
    double mb_logits, mb_ce, mb_inter, mb_alpha, mb_con;  /* current micro-batch */
    double acc_logits, acc_ce, acc_inter, acc_alpha, acc_con; int acc_n;
    int finished;          /* the update's last micro-batch is in acc_* (and summed over ranks) */
    tp_distill_losses last;
    char metrics_buf[256];
};

void tp_distill_defaults(tp_distill_cfg *c) {
    memset(c, 0, sizeof *c);
    c->kd.kind = TP_KD_FKL;
    c->kd.tau = 1.0f;
    c->kd.beta = 0.5f;
    c->w_logits = 1.0f;
    c->hid = TP_HID_COSINE;
    c->alpha = -1.0f;
    c->negatives = 16;
}

tp_status tp_distill_parse_map(tp_distill_cfg *c, const char *map, int student_layers, int teacher_layers) {
    c->n_pairs = 0;
    const char *p = map;
    while (*p) {
        char *end;
        long s = strtol(p, &end, 10);
        if (end == p || *end != ':')
            return tp_fail(TP_ERR_ARG, "map \"%s\": expected student:teacher pairs like 29:23,28:22", map);
        p = end + 1;
        long t = strtol(p, &end, 10);
        if (end == p || (*end && *end != ','))
            return tp_fail(TP_ERR_ARG, "map \"%s\": expected student:teacher pairs like 29:23,28:22", map);
        if (s < 0 || s >= student_layers || t < 0 || t >= teacher_layers)
            return tp_fail(TP_ERR_ARG, "map pair %ld:%ld: the student has layers 0..%d, the teacher 0..%d", s, t,
                           student_layers - 1, teacher_layers - 1);
        if (c->n_pairs >= TP_DISTILL_MAX_PAIRS)
            return tp_fail(TP_ERR_ARG, "map: more than %d pairs", TP_DISTILL_MAX_PAIRS);
        c->s_layer[c->n_pairs] = (int)s;
        c->t_layer[c->n_pairs] = (int)t;
        c->n_pairs++;
        p = *end ? end + 1 : end;
    }
    return TP_OK;
}

void tp_distill_auto_map(tp_distill_cfg *c, int student_layers, int teacher_layers, const int *kept) {
    c->n_pairs = 0;
    for (int i = 0; i < student_layers && i < TP_DISTILL_MAX_PAIRS; i++) {
        int t = kept ? kept[i] : (int)lround((double)(i + 1) * teacher_layers / student_layers) - 1;
        if (t < 0) t = 0;
        if (t >= teacher_layers) t = teacher_layers - 1;
        c->s_layer[c->n_pairs] = i;
        c->t_layer[c->n_pairs] = t;
        c->n_pairs++;
    }
}

void tp_distiller_free(tp_distiller *d) {
    if (!d) return;
    free(d->t_h); free(d->t_states); free(d->tlog); free(d->ce_grad); free(d->topk_idx); free(d->topk_lp);
    free(d->c_idx); free(d->c_lp); free(d->cand); free(d->cgrad);
    free(d->nbuf); free(d->nbuf_t); free(d->ngrad); free(d->gy); free(d->P); free(d->dP); free(d->Pm); free(d->Pv);
    free(d);
}

/* What a run from a teacher cache can do: logits losses over the cached top-k only. */
static tp_status check_cache_cfg(const tp_distill_cfg *c, const tp_config *sc, int T) {
    const tp_tcache_info *in = tp_tcache_get_info(c->cache);
    if (c->n_pairs > 0 || c->emb)
        return tp_fail(TP_ERR_ARG, "distillation from a teacher cache: intermediate-state losses (n_pairs %d, emb %d) "
                                   "need the teacher's hidden states, which the cache does not hold: distill from the "
                                   "teacher model", c->n_pairs, c->emb);
    if (in->vocab != sc->vocab)
        return tp_fail(TP_ERR_ARG, "teacher cache: made by a teacher with %d tokens, the student has %d", in->vocab,
                       sc->vocab);
    if (in->T != T)
        return tp_fail(TP_ERR_ARG, "teacher cache: made for sequences of %d tokens, this run uses %d", in->T, T);
    if (c->topk < 1 || c->topk > in->K)
        return tp_fail(TP_ERR_ARG, "teacher cache: holds the teacher's top %d tokens, this run asks for top-%d%s",
                       in->K, c->topk, c->topk < 1 ? " (topk 0, the full vocabulary, needs the teacher model)" : "");
    if (tp_tcache_tau_index(c->cache, c->kd.tau) < 0) {
        char list[128] = "";
        for (int i = 0, o = 0; i < in->n_tau && o < (int)sizeof list - 16; i++)
            o += snprintf(list + o, sizeof list - (size_t)o, "%s%g", i ? ", " : "", in->tau[i]);
        return tp_fail(TP_ERR_ARG, "teacher cache: holds temperatures %s, this run uses tau %g (rebuild the cache "
                                   "with that temperature too)", list, c->kd.tau);
    }
    return TP_OK;
}

tp_status tp_distiller_new(const tp_model *teacher, const tp_model *student, const tp_distill_cfg *c, int B, int T,
                           const tp_adamw_cfg *opt, tp_distiller **out) {
    *out = NULL;
    const tp_config *sc = &student->cfg;
    if (c->cache) {
        tp_status s = check_cache_cfg(c, sc, T);
        if (s) return s;
    } else if (!teacher) {
        return tp_fail(TP_ERR_ARG, "distillation: no teacher and no teacher cache");
    }
    const tp_config *tc = teacher ? &teacher->cfg : sc; /* cache only: the widths and depths are the student's */
    if (tc->vocab != sc->vocab)
        return tp_fail(TP_ERR_ARG, "distillation: teacher vocabulary %d differs from the student's %d", tc->vocab,
                       sc->vocab);
    if (c->w_contrast < 0 || !isfinite(c->w_contrast))
        return tp_fail(TP_ERR_ARG, "distillation: contrastive weight %g must be >= 0", c->w_contrast);
    if (c->w_contrast != 0) {
        size_t pool = c->topk > 0 ? (size_t)c->topk : (size_t)sc->vocab;
        if (c->negatives < 1 || (size_t)c->negatives > pool - 1 || c->negatives > TP_KD_MAX_NEG)
            return tp_fail(TP_ERR_ARG,
                           "distillation: negatives %d per position: they are drawn from %s without the teacher's top "
                           "token, so 1..%zu are possible%s",
                           c->negatives, c->topk > 0 ? "the teacher's top-k" : "the vocabulary",
                           pool - 1 < TP_KD_MAX_NEG ? pool - 1 : (size_t)TP_KD_MAX_NEG,
                           c->topk > 0 ? " (raise topk or lower negatives)" : "");
    }
    if (c->kd.tau <= 0 || !(c->kd.beta > 0 && c->kd.beta < 1))
        return tp_fail(TP_ERR_ARG, "distillation: temperature %g must be > 0 and JSD beta %g in (0, 1)", c->kd.tau,
                       c->kd.beta);
    if (c->topk < 0 || c->topk > tc->vocab)
        return tp_fail(TP_ERR_ARG, "distillation: top-k %d outside 0..%d", c->topk, tc->vocab);
    if (c->n_pairs < 0 || c->n_pairs > TP_DISTILL_MAX_PAIRS) return tp_fail(TP_ERR_ARG, "distillation: bad pair count");
    for (int i = 0; i < c->n_pairs; i++)
        if (c->s_layer[i] < 0 || c->s_layer[i] >= sc->n_layers || c->t_layer[i] < 0 || c->t_layer[i] >= tc->n_layers)
            return tp_fail(TP_ERR_ARG, "distillation: layer pair %d:%d outside the student's 0..%d / teacher's 0..%d",
                           c->s_layer[i], c->t_layer[i], sc->n_layers - 1, tc->n_layers - 1);
    tp_distiller *d = calloc(1, sizeof *d);
    if (!d) return tp_fail(TP_ERR_NOMEM, "out of memory");
    d->teacher = teacher;
    d->student = student;
    d->cfg = *c;
    if (opt) d->opt = *opt;
    d->B = B;
    d->T = T;
    d->N = (size_t)B * T;
    d->ds = (size_t)sc->d_model;
    d->dt = (size_t)tc->d_model;
    d->V = (size_t)tc->vocab;
    d->n_states = c->n_pairs + (c->emb ? 1 : 0);
    int inter = d->n_states > 0;
    d->t_h = c->cache ? NULL : malloc(d->N * d->dt * sizeof(float));
    if (c->cache) {
        d->c_idx = malloc(d->N * (size_t)c->topk * sizeof(int32_t));
        d->c_lp = malloc(d->N * (size_t)c->topk * sizeof(float));
    }
    if (inter) {
        d->t_states = malloc((size_t)d->n_states * d->N * d->dt * sizeof(float));
        d->nbuf = malloc(d->N * d->ds * sizeof(float));
        d->nbuf_t = malloc(d->N * d->dt * sizeof(float));
        d->ngrad = malloc(d->N * d->ds * sizeof(float));
        if (c->hid == TP_HID_COSINE) d->gy = malloc((size_t)d->n_states * d->N * d->dt * sizeof(float));
    }
    int ok = (c->cache ? d->c_idx && d->c_lp : d->t_h != NULL) &&
             (!inter || (d->t_states && d->nbuf && d->nbuf_t && d->ngrad && (c->hid != TP_HID_COSINE || d->gy)));
    if (inter && d->ds != d->dt) {
        if (!opt) {
            tp_distiller_free(d);
            return tp_fail(TP_ERR_ARG, "distillation: widths differ (%zu vs %zu): projections need optimizer settings",
                           d->ds, d->dt);
        }
        size_t np = (size_t)d->n_states * d->dt * d->ds;
        d->P = calloc(np, sizeof(float));
        d->dP = calloc(np, sizeof(float));
        d->Pm = calloc(np, sizeof(float));
        d->Pv = calloc(np, sizeof(float));
        ok = ok && d->P && d->dP && d->Pm && d->Pv;
        if (ok)
            for (int s = 0; s < d->n_states; s++) {
                /* start as the channel selection the student came from (or the leading channels) */
                float *P = d->P + (size_t)s * d->dt * d->ds;
                for (size_t i = 0; i < d->ds; i++) {
                    size_t t = c->proj_init ? (size_t)c->proj_init[i] : i;
                    if (t < d->dt) P[t * d->ds + i] = 1.0f;
                }
            }
    }
    if (!ok) {
        tp_distiller_free(d);
        return tp_fail(TP_ERR_NOMEM, "distillation: out of memory for %d x %d tokens", B, T);
    }
    *out = d;
    return TP_OK;
}

/* ---- teacher forward ---- */

static void teacher_hook(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    tp_distiller *d = user;
    size_t n = (size_t)B * T * (size_t)width;
    if (p == TP_HOOK_FINAL_NORM) {
        memcpy(d->t_h, x, n * sizeof(float));
        return;
    }
    for (int i = 0; i < d->cfg.n_pairs; i++)
        if (p == TP_HOOK_LAYER_OUT && d->cfg.t_layer[i] == layer)
            memcpy(d->t_states + (size_t)i * d->N * d->dt, x, n * sizeof(float));
    if (d->cfg.emb && p == TP_HOOK_LAYER_IN && layer == 0)
        memcpy(d->t_states + (size_t)d->cfg.n_pairs * d->N * d->dt, x, n * sizeof(float));
}

/* ---- logits loss, chunk by chunk ---- */

static int grow_chunk(tp_distiller *d, size_t rows) {
    if (rows <= d->tlog_rows) return 1;
    free(d->tlog);
    free(d->ce_grad);
    free(d->topk_idx);
    free(d->topk_lp);
    free(d->cand);
    free(d->cgrad);
    int cache = d->cfg.cache != NULL, con = d->cfg.w_contrast != 0;
    d->tlog = cache ? NULL : malloc(rows * d->V * sizeof(float));
    d->ce_grad = d->cfg.w_ce != 0 ? malloc(rows * d->V * sizeof(float)) : NULL;
    size_t k = d->cfg.topk > 0 ? (size_t)d->cfg.topk : 1, nc = (size_t)d->cfg.negatives + 1;
    d->topk_idx = cache ? NULL : malloc(rows * k * sizeof(int32_t));
    d->topk_lp = cache ? NULL : malloc(rows * k * sizeof(float));
    d->cand = con ? malloc(rows * nc * sizeof(int32_t)) : NULL;
    d->cgrad = con ? malloc(rows * nc * sizeof(float)) : NULL;
    int ok = (cache || (d->tlog && d->topk_idx && d->topk_lp)) && (d->cfg.w_ce == 0 || d->ce_grad) &&
             (!con || (d->cand && d->cgrad));
    d->tlog_rows = ok ? rows : 0;
    return d->tlog_rows > 0;
}

/* Contrastive loss of rows [r0, r0+R): candidates from the teacher's top-k (idx, lp) or, without
 * top-k, from its full logits (tlog); the loss summed, gradients (scaled) into d->cgrad. */
static double contrast_rows(tp_distiller *d, size_t r0, size_t R, const float *logits, const int32_t *idx,
                            const float *lp, double scale) {
    int k = d->cfg.topk, N = d->cfg.negatives;
    size_t nc = (size_t)N + 1;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (R * (k > 0 ? (size_t)k : d->V) >= 65536)
    for (size_t r = 0; r < R; r++) {
        tp_status s = k > 0 ? tp_kd_pick(lp + r * (size_t)k, idx + r * (size_t)k, (size_t)k, 1.0, N, d->seed, r0 + r,
                                         d->cand + r * nc)
                            : tp_kd_pick(d->tlog + r * d->V, NULL, d->V, 1.0 / d->cfg.kd.tau, N, d->seed, r0 + r,
                                         d->cand + r * nc);
        bad |= s != TP_OK;
    }
    if (bad) return NAN; /* refused by tp_distiller_new already; kept as a guard */
    return tp_kd_contrastive(&d->cfg.kd, logits, d->V, d->cand, (int)nc, R, (float)scale, d->cgrad);
}

/* CE rows: loss summed, gradient (softmax - onehot) * scale into g */
static double ce_rows(const float *s, const int32_t *targets, size_t R, size_t V, float *g, double scale) {
    double total = 0;
    for (size_t r = 0; r < R; r++) {
        const float *sr = s + r * V;
        float *gr = g + r * V;
        int32_t y = targets[r];
        if (y == TP_IGNORE_INDEX) {
            memset(gr, 0, V * sizeof(float));
            continue;
        }
        float mx = sr[0];
        for (size_t j = 1; j < V; j++) mx = sr[j] > mx ? sr[j] : mx;
        double z = tp_exp_shift_sum_f64(sr, mx, V);
        double lz = mx + log(z);
        total += lz - sr[y];
        for (size_t j = 0; j < V; j++) gr[j] = (float)(exp((double)sr[j] - lz) * scale);
        gr[y] -= (float)scale;
    }
    return total;
}

static double logits_loss(void *user, size_t r0, size_t r1, float *logits, size_t V) {
    tp_distiller *d = user;
    size_t R = r1 - r0;
    if (!grow_chunk(d, R)) return NAN;
    double invN = 1.0 / (double)d->N, ce = 0, kd = 0, con = 0;
    int k = d->cfg.topk;
    const int32_t *idx = NULL;
    const float *lp = NULL;
    if (d->cfg.w_logits != 0 || d->cfg.w_contrast != 0) { /* the teacher's side of these rows */
        if (d->cfg.cache) {
            idx = d->c_idx + r0 * (size_t)k;
            lp = d->c_lp + r0 * (size_t)k;
        } else {
            tp_matmul_wt(d->t_h + r0 * d->dt, d->teacher->lm_head, NULL, d->tlog, R, d->dt, V);
            if (k > 0) {
#pragma omp parallel for schedule(static) if (R * V >= 65536)
                for (size_t r = 0; r < R; r++)
                    tp_kd_topk(d->tlog + r * V, V, k, d->cfg.kd.tau, d->topk_idx + r * k, d->topk_lp + r * k);
                idx = d->topk_idx;
                lp = d->topk_lp;
            }
        }
    }
    /* losses that read the student's logits before the divergence overwrites them with its gradient */
    if (d->cfg.w_ce != 0 && d->targets) ce = ce_rows(logits, d->targets + r0, R, V, d->ce_grad, d->cfg.w_ce * invN);
    if (d->cfg.w_contrast != 0) con = contrast_rows(d, r0, R, logits, idx, lp, d->cfg.w_contrast * invN);
    if (d->cfg.w_logits != 0) {
        if (k > 0)
            kd = tp_kd_rows_topk(&d->cfg.kd, logits, idx, lp, k, R, V, (float)(d->cfg.w_logits * invN));
        else
            kd = tp_kd_rows(&d->cfg.kd, logits, d->tlog, R, V, (float)(d->cfg.w_logits * invN));
    } else {
        memset(logits, 0, R * V * sizeof(float));
    }
    if (d->cfg.w_ce != 0)
        for (size_t i = 0; i < R * V; i++) logits[i] += d->ce_grad[i];
    if (d->cfg.w_contrast != 0) {
        size_t nc = (size_t)d->cfg.negatives + 1;
        for (size_t r = 0; r < R; r++)
            for (size_t i = 0; i < nc; i++) logits[r * V + (size_t)d->cand[r * nc + i]] += d->cgrad[r * nc + i];
    }
    d->mb_logits += kd * invN;
    d->mb_ce += ce * invN;
    d->mb_con += con * invN;
    return (d->cfg.w_logits * kd + d->cfg.w_ce * ce + d->cfg.w_contrast * con) * invN;
}

/* ---- intermediate states ---- */

/* which state a student hook point carries: pair index, n_pairs for the embedding, -1 none.
 * Several pairs may share a student layer: *next continues the search. */
static int state_of(const tp_distiller *d, tp_hook_point p, int layer, int from) {
    for (int i = from; i < d->cfg.n_pairs; i++)
        if (p == TP_HOOK_LAYER_OUT && d->cfg.s_layer[i] == layer) return i;
    if (d->cfg.emb && p == TP_HOOK_LAYER_IN && layer == 0 && from <= d->cfg.n_pairs) return d->cfg.n_pairs;
    return -1;
}

/* rows of x (N, w) divided by their RMS into y */
static void rms_normalise(const float *x, float *y, size_t N, size_t w) {
    for (size_t n = 0; n < N; n++) {
        double ss = 0;
        for (size_t i = 0; i < w; i++) ss += (double)x[n * w + i] * x[n * w + i];
        double inv = ss > 0 ? 1.0 / sqrt(ss / (double)w) : 0.0;
        for (size_t i = 0; i < w; i++) y[n * w + i] = (float)(x[n * w + i] * inv);
    }
}

/* the loss of state s (mean over rows), and with dx != NULL its gradient * scale added to dx.
 * Cosine: the forward (dx NULL) computes the loss and the state's gradient into gy, the backward
 * (dx set) takes it from there: y = xs P^T is computed once. */
static double state_loss(tp_distiller *d, int s, const float *xs, float *dx, double scale) {
    size_t N = d->N, ds = d->ds, dt = d->dt;
    const float *xt = d->t_states + (size_t)s * N * dt;
    const float *P = d->P ? d->P + (size_t)s * dt * ds : NULL;
    float *dP = d->P && dx ? d->dP + (size_t)s * dt * ds : NULL;
    double invN = 1.0 / (double)N;
    if (d->cfg.hid == TP_HID_COSINE) { /* scale-invariant: no normalisation needed */
        float *gy = d->gy + (size_t)s * N * dt;
        if (!dx) return tp_hidden_loss_fwd(TP_HID_COSINE, xs, ds, xt, dt, N, P, d->nbuf_t, gy) * invN;
        tp_hidden_loss_bwd(xs, ds, dt, N, P, gy, dx, dP, (float)(scale * invN));
        return 0;
    }
    /* MSE between RMS-normalised states: y = x / rms(x); dx = (dy - y mean(dy . y)) / rms(x) */
    rms_normalise(xs, d->nbuf, N, ds);
    rms_normalise(xt, d->nbuf_t, N, dt);
    if (!dx) return tp_hidden_loss(TP_HID_MSE, d->nbuf, ds, d->nbuf_t, dt, N, P, NULL, NULL, 1.0f) * invN;
    memset(d->ngrad, 0, N * ds * sizeof(float));
    double l = tp_hidden_loss(TP_HID_MSE, d->nbuf, ds, d->nbuf_t, dt, N, P, d->ngrad, dP, (float)(scale * invN));
    for (size_t n = 0; n < N; n++) {
        const float *x = xs + n * ds, *y = d->nbuf + n * ds, *g = d->ngrad + n * ds;
        double ss = 0, dot = 0;
        for (size_t i = 0; i < ds; i++) {
            ss += (double)x[i] * x[i];
            dot += (double)g[i] * y[i];
        }
        if (ss <= 0) continue;
        double inv = 1.0 / sqrt(ss / (double)ds), m = dot / (double)ds;
        for (size_t i = 0; i < ds; i++) dx[n * ds + i] += (float)((g[i] - y[i] * m) * inv);
    }
    return l * invN;
}

static void student_hook(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    (void)B; (void)T; (void)width;
    tp_distiller *d = user;
    for (int s = state_of(d, p, layer, 0); s >= 0; s = state_of(d, p, layer, s + 1))
        d->pair_loss[s] = state_loss(d, s, x, NULL, 0);
}

static double alpha_now(const tp_distiller *d) {
    if (d->cfg.alpha >= 0) return d->cfg.alpha;
    double li = 0;
    for (int s = 0; s < d->n_states; s++) li += d->pair_loss[s];
    li /= d->n_states;
    return li > 0 ? (d->mb_logits * d->cfg.w_logits + d->mb_ce * d->cfg.w_ce + d->mb_con * d->cfg.w_contrast) / li
                  : 0.0;
}

static void student_grad_hook(void *user, tp_hook_point p, int layer, const float *x, float *dx, int B, int T,
                              int width) {
    (void)B; (void)T; (void)width;
    tp_distiller *d = user;
    double scale = d->mb_alpha / d->n_states;
    for (int s = state_of(d, p, layer, 0); s >= 0; s = state_of(d, p, layer, s + 1))
        if (scale != 0) state_loss(d, s, x, dx, scale);
}

/* ---- trainer hooks ---- */

/* the loss fn runs before the backward: alpha is fixed there from this micro-batch's values */
static double logits_loss_then_alpha(void *user, size_t r0, size_t r1, float *logits, size_t V) {
    tp_distiller *d = user;
    double l = logits_loss(user, r0, r1, logits, V);
    if (r1 == d->N && d->n_states > 0) {
        double li = 0;
        for (int s = 0; s < d->n_states; s++) li += d->pair_loss[s];
        d->mb_inter = li / d->n_states;
        d->mb_alpha = alpha_now(d);
    }
    return l;
}

static void accumulate(tp_distiller *d) {
    d->acc_logits += d->mb_logits;
    d->acc_ce += d->mb_ce;
    d->acc_inter += d->mb_inter;
    d->acc_alpha += d->mb_alpha;
    d->acc_con += d->mb_con;
    d->acc_n++;
}

static tp_status prepare(void *user, const tp_train_micro *mb, tp_step_opts *o) {
    tp_distiller *d = user;
    if (mb->B != d->B || mb->T != d->T)
        return tp_fail(TP_ERR_ARG, "distillation: micro-batch %d x %d, distiller made for %d x %d", mb->B, mb->T, d->B,
                       d->T);
    d->targets = mb->targets;
    d->micro = mb->micro;
    if (mb->micro == 0) {
        d->acc_logits = d->acc_ce = d->acc_inter = d->acc_alpha = d->acc_con = 0;
        d->acc_n = 0;
        d->finished = 0;
    } else {
        accumulate(d);
    }
    d->mb_logits = d->mb_ce = d->mb_inter = d->mb_alpha = d->mb_con = 0;
    if (d->cfg.w_contrast != 0) d->seed = mb->rng ? tp_rng_u64(mb->rng) : 0;
    int need_teacher = d->cfg.w_logits != 0 || d->cfg.w_contrast != 0 || d->n_states > 0; /* CE alone needs none */
    if (need_teacher && d->cfg.cache) {
        if (!mb->windows)
            return tp_fail(TP_ERR_ARG, "distillation from a teacher cache needs the loader's window ids (these "
                                       "batches come from a batch function)");
        size_t T = (size_t)d->T, k = (size_t)d->cfg.topk;
        for (int b = 0; b < d->B; b++) {
            tp_status s = tp_tcache_read(d->cfg.cache, mb->windows[b], mb->tokens + (size_t)b * T,
                                         mb->targets[(size_t)b * T + T - 1], d->cfg.topk, d->cfg.kd.tau,
                                         d->c_idx + (size_t)b * T * k, d->c_lp + (size_t)b * T * k);
            if (s) return tp_fail_ctx(s, "teacher cache: ");
        }
    } else if (need_teacher) {
        tp_forward_opts fo = {teacher_hook, d, NULL};
        tp_status s = tp_forward_ex(d->teacher, mb->tokens, mb->B, mb->T, NULL, NULL, 0, &fo);
        if (s) return tp_fail_ctx(s, "teacher forward: ");
    }
    o->loss = logits_loss_then_alpha;
    o->loss_user = d;
    if (d->n_states > 0) {
        o->hook = student_hook;
        o->hook_user = d;
        o->grad_hook = student_grad_hook;
        o->grad_hook_user = d;
        o->hook_points = TP_HOOK_RESIDUAL; /* state_of: layer outputs and the embedding */
    }
    return TP_OK;
}

/* AdamW on the projections (same settings and schedule as the student, no clipping), after
 * every update; their gradients were summed over the update's micro-batches. */
static void step_projections(tp_distiller *d, long step, int accum) {
    if (!d->P) return;
    const tp_adamw_cfg *c = &d->opt;
    size_t n = (size_t)d->n_states * d->dt * d->ds;
    long t = ++d->p_step;
    /* the student's AdamW kernel (vectorised, threaded): the mean of the micro-batches' gradients */
    tp_adamw_span(c, tp_lr_at(c, step - 1), t, 1.0f / (float)accum, d->P, d->dP, d->Pm, d->Pv, n);
    memset(d->dP, 0, n * sizeof(float));
}

/* The update's last micro-batch into the sums (once). */
static void finish_update(tp_distiller *d) {
    if (d->finished) return;
    accumulate(d);
    d->finished = 1;
}

/* Several ranks: the loss terms, the micro-batch count and the projections' gradients summed over
 * them, so every rank steps the projections alike and logs the means over the whole update. */
static tp_status reduce(void *user, tp_comm *comm) {
    tp_distiller *d = user;
    finish_update(d);
    double acc[6] = {d->acc_logits, d->acc_ce, d->acc_inter, d->acc_alpha, d->acc_con, (double)d->acc_n};
    tp_status s = tp_comm_sum_f64(comm, acc, 6);
    if (!s && d->dP) s = tp_comm_sum_f32(comm, d->dP, (size_t)d->n_states * d->dt * d->ds);
    if (s) return s;
    d->acc_logits = acc[0];
    d->acc_ce = acc[1];
    d->acc_inter = acc[2];
    d->acc_alpha = acc[3];
    d->acc_con = acc[4];
    d->acc_n = (int)acc[5];
    return TP_OK;
}

static const char *metrics(void *user, long step) {
    tp_distiller *d = user;
    finish_update(d); /* the last micro-batch; means over the update's micro-batches (of all ranks) */
    d->last.logits = d->acc_logits / d->acc_n;
    d->last.ce = d->acc_ce / d->acc_n;
    d->last.inter = d->acc_inter / d->acc_n;
    d->last.alpha = d->acc_alpha / d->acc_n;
    d->last.contrast = d->acc_con / d->acc_n;
    step_projections(d, step, d->acc_n);
    int w = snprintf(d->metrics_buf, sizeof d->metrics_buf, "\"kd\":%.9g,\"ce\":%.9g,\"inter\":%.9g,\"alpha\":%.6g",
                     d->last.logits, d->last.ce, d->last.inter, d->last.alpha);
    if (d->cfg.w_contrast != 0 && w > 0 && (size_t)w < sizeof d->metrics_buf)
        snprintf(d->metrics_buf + w, sizeof d->metrics_buf - (size_t)w, ",\"contrast\":%.9g", d->last.contrast);
    return d->metrics_buf;
}

/* Checkpointed state: the projections and their Adam moments, so a resumed run continues them
 * exactly. Layout: "TPDPROJ1", u32 n_states, dt, ds, 0, i64 step, then P, Pm, Pv as float32
 * (n_states * dt * ds each), native little-endian like the rest of the checkpoint. */
#define PROJ_TAG "TPDPROJ1"
enum { PROJ_HEAD = 32 };

static tp_status state_save(void *user, void **buf, size_t *bytes) {
    tp_distiller *d = user;
    *buf = NULL;
    *bytes = 0;
    if (!d->P) return TP_OK;
    size_t n = (size_t)d->n_states * d->dt * d->ds, len = PROJ_HEAD + 3 * n * sizeof(float);
    unsigned char *b = malloc(len);
    if (!b) return tp_fail(TP_ERR_NOMEM, "out of memory");
    uint32_t h[4] = {(uint32_t)d->n_states, (uint32_t)d->dt, (uint32_t)d->ds, 0};
    int64_t step = d->p_step;
    memcpy(b, PROJ_TAG, 8);
    memcpy(b + 8, h, sizeof h);
    memcpy(b + 24, &step, 8);
    memcpy(b + PROJ_HEAD, d->P, n * sizeof(float));
    memcpy(b + PROJ_HEAD + n * sizeof(float), d->Pm, n * sizeof(float));
    memcpy(b + PROJ_HEAD + 2 * n * sizeof(float), d->Pv, n * sizeof(float));
    *buf = b;
    *bytes = len;
    return TP_OK;
}

static tp_status state_load(void *user, const void *buf, size_t bytes) {
    tp_distiller *d = user;
    if (!bytes) {
        if (d->P)
            tp_log(TP_LOG_NOTE, "taper distill: note: the checkpoint holds no learned projections (written by an "
                                "older build): they start again from the channel selection");
        return TP_OK;
    }
    const unsigned char *b = buf;
    if (bytes < PROJ_HEAD || memcmp(b, PROJ_TAG, 8) != 0)
        return tp_fail(TP_ERR_FORMAT, "the checkpoint's extra state (%zu bytes) is not a distiller's projections", bytes);
    uint32_t h[4];
    int64_t step;
    memcpy(h, b + 8, sizeof h);
    memcpy(&step, b + 24, 8);
    if (!d->P)
        return tp_fail(TP_ERR_ARG, "the checkpoint holds learned projections (%u states, %u x %u) but this run has "
                                   "none (equal widths or no intermediate losses)",
                       h[0], h[1], h[2]);
    size_t n = (size_t)d->n_states * d->dt * d->ds;
    if (h[0] != (uint32_t)d->n_states || h[1] != (uint32_t)d->dt || h[2] != (uint32_t)d->ds ||
        bytes != PROJ_HEAD + 3 * n * sizeof(float) || step < 0)
        return tp_fail(TP_ERR_ARG, "the checkpoint's projections are %u states of %u x %u, this run needs %d of %zu x %zu",
                       h[0], h[1], h[2], d->n_states, d->dt, d->ds);
    memcpy(d->P, b + PROJ_HEAD, n * sizeof(float));
    memcpy(d->Pm, b + PROJ_HEAD + n * sizeof(float), n * sizeof(float));
    memcpy(d->Pv, b + PROJ_HEAD + 2 * n * sizeof(float), n * sizeof(float));
    memset(d->dP, 0, n * sizeof(float));
    d->p_step = (long)step;
    return TP_OK;
}

void tp_distiller_hooks(tp_distiller *d, tp_train_hooks *h) {
    memset(h, 0, sizeof *h);
    h->prepare = prepare;
    h->metrics = metrics;
    h->state_save = state_save;
    h->state_load = state_load;
    h->reduce = reduce;
    h->user = d;
}

tp_distill_losses tp_distiller_last(const tp_distiller *d) { return d->last; }

const float *tp_distiller_proj(const tp_distiller *d, const float **grad, int *n_states) {
    if (grad) *grad = d->dP;
    if (n_states) *n_states = d->n_states;
    return d->P;
}
