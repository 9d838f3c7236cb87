/* taper sparsify: the driver that walks the decoder layers, magnitude pruning (per matrix or global), Wanda, and the calibration
 * statistics (Wanda's input norms, SparseGPT's Hessians) gathered with forward hooks from one
 * layer at a time. SparseGPT's factorisation and sweep are in sparse_gpt.c, the selection
 * rules (exact counts, ties broken by index; N:M) in sparse_select.c, the mask and its file in
 * sparse_mask.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TP_HAVE_BLAS
#include <cblas.h>
#endif

#include "sparse_internal.h"

#define PAR_MIN_WORK 65536

size_t tp_sparse_count(double s, size_t n) {
    double k = floor(s * (double)n + 1e-9);
    return k <= 0 ? 0 : k >= (double)n ? n : (size_t)k;
}

void tp_sparsify_opts_default(tp_sparsify_opts *o) {
    memset(o, 0, sizeof *o);
    o->method = TP_SPARSE_MAGNITUDE;
    o->sparsity = 0.5;
    o->targets = TP_SP_ALL;
    o->damp = 0.01;
    o->blocksize = 128;
    o->batch = 8;
}

static void commit(tp_mask_tensor *t, float *w, const unsigned char *pruned) {
    size_t ne = (size_t)t->rows * t->cols;
    memset(t->bits, 0, (ne + 7) / 8);
    uint64_t c = 0;
    for (size_t i = 0; i < ne; i++)
        if (pruned[i]) {
            t->bits[i >> 3] |= (uint8_t)(1u << (i & 7));
            w[i] = 0.0f;
            c++;
        }
    t->n_pruned = c;
}

/* ------------------------------------------------------------------------------------------ */
/* magnitude */

/* |w| as an ordered key: the float's bits without the sign (monotone for non-NaN values). */
static uint32_t abs_key(float w) {
    uint32_t u;
    memcpy(&u, &w, 4);
    return u & 0x7fffffffu;
}

/* The key of the k-th smallest (0-based) |w| over the n[i] weights of the na arrays, by two
 * 16-bit radix passes. */
static uint32_t radix_kth(float *const *w, const size_t *n, int na, size_t k, size_t *hist) {
    uint32_t prefix = 0;
    for (int pass = 0; pass < 2; pass++) {
        memset(hist, 0, 65536 * sizeof *hist);
        for (int a = 0; a < na; a++)
            for (size_t i = 0; i < n[a]; i++) {
                uint32_t key = abs_key(w[a][i]);
                if (pass == 0) hist[key >> 16]++;
                else if ((key >> 16) == prefix) hist[key & 0xffff]++;
            }
        size_t b = 0;
        while (k >= hist[b]) k -= hist[b++];
        prefix = pass == 0 ? (uint32_t)b : (prefix << 16) | (uint32_t)b;
    }
    return prefix;
}

/* Prunes the k smallest |w| over the arrays in the order (|w|, array, index). */
static void magnitude_select(float *const *w, const size_t *n, int na, size_t k, unsigned char *const *pruned,
                             size_t *hist) {
    uint32_t t = k ? radix_kth(w, n, na, k - 1, hist) : 0;
    size_t less = 0;
    for (int a = 0; a < na && k; a++)
        for (size_t i = 0; i < n[a]; i++) less += abs_key(w[a][i]) < t;
    size_t ties = k ? k - less : 0;
    for (int a = 0; a < na; a++)
        for (size_t i = 0; i < n[a]; i++) {
            uint32_t key = abs_key(w[a][i]);
            int p = k && key < t;
            if (k && !p && key == t && ties) {
                p = 1;
                ties--;
            }
            pruned[a][i] = (unsigned char)p;
        }
}

static tp_status check_finite(const float *w, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i])) return tp_fail(TP_ERR_NUMERIC, "sparsify: %s[%zu] is %g", name, i, (double)w[i]);
    return TP_OK;
}

static tp_status magnitude(tp_model *m, const tp_sparsify_opts *o, tp_mask *mk) {
    int na = mk->n;
    float **w = calloc((size_t)na + 1, sizeof *w);
    size_t *n = calloc((size_t)na + 1, sizeof *n), *hist = malloc(65536 * sizeof *hist), total = 0, maxn = 0;
    unsigned char **pr = calloc((size_t)na + 1, sizeof *pr);
    double *sc = NULL;
    tp_status s = TP_OK;
    if (!w || !n || !hist || !pr) s = tp_fail(TP_ERR_NOMEM, "sparsify: out of memory");
    for (int a = 0; a < na && !s; a++) {
        int r, c;
        w[a] = tp_sparse_matrix_data(m, mk->t[a].layer, mk->t[a].matrix, &r, &c);
        n[a] = (size_t)r * c;
        total += n[a];
        maxn = n[a] > maxn ? n[a] : maxn;
        s = check_finite(w[a], n[a], mk->t[a].name);
    }
    /* global: one flag array per matrix; per matrix: one shared */
    for (int a = 0; a < (o->global ? na : 1) && !s; a++)
        if (!(pr[a] = malloc(o->global ? n[a] : maxn + 1))) s = tp_fail(TP_ERR_NOMEM, "sparsify: out of memory");
    if (!s && o->nm_m && !(sc = malloc((maxn + 1) * sizeof *sc))) s = tp_fail(TP_ERR_NOMEM, "sparsify: out of memory");
    if (!s && o->global) {
        magnitude_select(w, n, na, tp_sparse_count(o->sparsity, total), pr, hist);
        for (int a = 0; a < na; a++) commit(&mk->t[a], w[a], pr[a]);
    }
    for (int a = 0; a < na && !s && !o->global; a++) {
        tp_mask_tensor *t = &mk->t[a];
        if (o->nm_m) {
            for (size_t i = 0; i < n[a]; i++) sc[i] = fabs((double)w[a][i]);
            for (size_t r = 0; r < t->rows; r++)
                sp_select_nm(sc + r * t->cols, t->cols, o->nm_n, o->nm_m, pr[0] + r * t->cols);
        } else {
            magnitude_select(&w[a], &n[a], 1, tp_sparse_count(o->sparsity, n[a]), &pr[0], hist);
        }
        commit(t, w[a], pr[0]);
    }
    for (int a = 0; a < na && pr; a++) free(pr[a]);
    free(pr); free(w); free(n); free(hist); free(sc);
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* calibration statistics, one layer at a time */

/* The four distinct inputs of a block's linear layers. */
enum { PT_ATTN = 0, PT_O, PT_MLP, PT_DOWN, PT_COUNT };
static const int point_of_matrix[TP_SP_MATRICES] = {PT_ATTN, PT_ATTN, PT_ATTN, PT_O, PT_MLP, PT_MLP, PT_DOWN};

typedef struct {
    int width;
    int active;       /* some target matrix reads this input */
    double *acc;      /* Wanda: (width) sum of x_j^2; SparseGPT: (width, width) sum of x x^T, upper */
    double *xd;       /* SparseGPT: (seq_len, width) one sample in double */
} stat_point;

typedef struct {
    tp_sparse_method method;
    int T;
    stat_point pt[PT_COUNT];
} stat_state;

/* Wanda: acc[j] += sum_t x[t][j]^2 in position order (columns split over threads). */
static void acc_sumsq(double *acc, const float *x, int T, int W) {
#pragma omp parallel for schedule(static) if ((size_t)T * W >= PAR_MIN_WORK)
    for (int c0 = 0; c0 < W; c0 += 64) {
        int c1 = c0 + 64 < W ? c0 + 64 : W;
        double s[64];
        for (int c = c0; c < c1; c++) s[c - c0] = acc[c];
        for (int t = 0; t < T; t++) {
            const float *r = x + (size_t)t * W;
            for (int c = c0; c < c1; c++) s[c - c0] += (double)r[c] * r[c];
        }
        for (int c = c0; c < c1; c++) acc[c] = s[c - c0];
    }
}

/* SparseGPT: H (upper triangle) += X^T X for one sample X (T, W), in double. */
static void acc_gram(double *H, double *xd, const float *x, int T, int W) {
    size_t n = (size_t)T * W;
    for (size_t i = 0; i < n; i++) xd[i] = x[i];
#ifdef TP_HAVE_BLAS
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, W, T, 1.0, xd, W, 1.0, H, W);
#else
    /* row i of H from the sample's columns i..W-1, tokens in order */
#pragma omp parallel for schedule(dynamic, 4) if (n * (size_t)W >= PAR_MIN_WORK)
    for (int i = 0; i < W; i++) {
        double *h = H + (size_t)i * W;
        for (int t = 0; t < T; t++) {
            const double *r = xd + (size_t)t * W;
            double a = r[i];
            if (a == 0.0) continue;
            for (int j = i; j < W; j++) h[j] += a * r[j];
        }
    }
#endif
}

static void stat_hook(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    (void)layer;
    stat_state *st = user;
    int k;
    switch (p) {
    case TP_HOOK_ATTN_NORM: k = PT_ATTN; break;
    case TP_HOOK_ATTN_OUT: k = PT_O; break;
    case TP_HOOK_MLP_NORM: k = PT_MLP; break;
    case TP_HOOK_MLP_ACT: k = PT_DOWN; break;
    default: return;
    }
    stat_point *sp = &st->pt[k];
    if (!sp->active) return;
    for (int b = 0; b < B; b++) { /* sample by sample, so the sums do not depend on the batch */
        const float *xs = x + (size_t)b * T * width;
        if (st->method == TP_SPARSE_WANDA) acc_sumsq(sp->acc, xs, T, width);
        else acc_gram(sp->acc, sp->xd, xs, T, width);
    }
}

static void stat_free(stat_state *st) {
    for (int k = 0; k < PT_COUNT; k++) {
        free(st->pt[k].acc);
        free(st->pt[k].xd);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Wanda and SparseGPT on one layer */

typedef struct {
    tp_model *m;
    const tp_sparsify_opts *o;
    tp_mask *mk;
    int *tensor_of;         /* (n_layers, TP_SP_MATRICES) mask tensor index or -1 */
    unsigned char *pruned;  /* (largest matrix) flags */
    double *score, *tmp;    /* (largest matrix) Wanda scores, scratch */
    double *U, *work;       /* SparseGPT: (c, c) factor, (2, c, c) scratch for the widest input */
    unsigned char *dead;    /* (widest input) */
    double n_tokens;
} layer_ctx;

static tp_status wanda_matrix(layer_ctx *cx, tp_mask_tensor *t, const double *sumsq) {
    int r, c;
    float *w = tp_sparse_matrix_data(cx->m, t->layer, t->matrix, &r, &c);
    const tp_sparsify_opts *o = cx->o;
    size_t k = tp_sparse_count(o->sparsity, (size_t)c);
    int nan = 0;
#pragma omp parallel for schedule(static) reduction(| : nan) if ((size_t)r * c >= PAR_MIN_WORK)
    for (int i = 0; i < r; i++) {
        double *sc = cx->score + (size_t)i * c, *tmp = cx->tmp + (size_t)i * c;
        unsigned char *p = cx->pruned + (size_t)i * c;
        for (int j = 0; j < c; j++) sc[j] = fabs((double)w[(size_t)i * c + j]) * sqrt(sumsq[j]);
        if (o->nm_m) nan |= sp_select_nm(sc, (size_t)c, o->nm_n, o->nm_m, p) != 0;
        else nan |= sp_select_smallest(sc, (size_t)c, k, tmp, p) != 0;
    }
    if (nan) return tp_fail(TP_ERR_NUMERIC, "Wanda %s: NaN in the weights or the activations", t->name);
    commit(t, w, cx->pruned);
    return TP_OK;
}

static tp_status sparsegpt_point(layer_ctx *cx, int l, int k, stat_point *sp) {
    int W = sp->width;
    size_t n = (size_t)W;
    /* H = 2/N X^T X: mirror the upper triangle */
    double sc = 2.0 / cx->n_tokens;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i; j < n; j++) {
            double v = sp->acc[i * n + j] * sc;
            sp->acc[i * n + j] = v;
            sp->acc[j * n + i] = v;
        }
    char what[160] = "";
    for (int q = 0; q < TP_SP_MATRICES; q++)
        if (point_of_matrix[q] == k && cx->tensor_of[l * TP_SP_MATRICES + q] >= 0) {
            size_t len = strlen(what);
            snprintf(what + len, sizeof what - len, "%s%s", len ? " / " : "", cx->mk->t[cx->tensor_of[l * TP_SP_MATRICES + q]].name);
        }
    tp_status s = sp_gpt_factor(sp->acc, W, cx->o->damp, cx->dead, cx->U, cx->work, what);
    for (int q = 0; q < TP_SP_MATRICES && !s; q++) {
        int ti = cx->tensor_of[l * TP_SP_MATRICES + q];
        if (point_of_matrix[q] != k || ti < 0) continue;
        tp_mask_tensor *t = &cx->mk->t[ti];
        int r, c;
        float *w = tp_sparse_matrix_data(cx->m, l, q, &r, &c);
        s = sp_gpt_prune(w, r, c, cx->U, cx->dead, cx->o, cx->pruned, t->name);
        if (!s) commit(t, w, cx->pruned);
    }
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* the driver */

static tp_status check_opts(const tp_model *m, const tp_sparsify_opts *o) {
    if ((unsigned)o->method >= TP_SPARSE_METHOD_COUNT) return tp_fail(TP_ERR_ARG, "sparsify: unknown method %d", (int)o->method);
    if (!o->targets || (o->targets & ~TP_SP_ALL)) return tp_fail(TP_ERR_ARG, "sparsify: target set 0x%x is empty or invalid", o->targets);
    if (o->nm_m || o->nm_n) {
        if (!(o->nm_n >= 1 && o->nm_n < o->nm_m && o->nm_m <= 64))
            return tp_fail(TP_ERR_ARG, "sparsify: N:M pattern %d:%d needs 1 <= N < M <= 64", o->nm_n, o->nm_m);
        if (o->global) return tp_fail(TP_ERR_ARG, "sparsify: global scope is for unstructured magnitude pruning, not N:M");
        for (int k = 0; k < TP_SP_MATRICES; k++) {
            int r, c;
            if (((o->targets >> k) & 1) && tp_sparse_matrix_data(m, 0, k, &r, &c) && c % o->nm_m)
                return tp_fail(TP_ERR_ARG, "sparsify: %s_proj has %d inputs, not a multiple of M = %d (N:M groups)",
                               tp_sparse_matrix_name(k), c, o->nm_m);
        }
        if (o->method == TP_SPARSE_SPARSEGPT && o->blocksize % o->nm_m)
            return tp_fail(TP_ERR_ARG, "sparsify: SparseGPT block size %d is not a multiple of M = %d", o->blocksize, o->nm_m);
    } else if (!(o->sparsity >= 0 && o->sparsity < 1)) {
        return tp_fail(TP_ERR_ARG, "sparsify: sparsity %g is not in [0, 1)", o->sparsity);
    }
    if (o->global && o->method != TP_SPARSE_MAGNITUDE)
        return tp_fail(TP_ERR_ARG, "sparsify: global scope is only defined for magnitude pruning (%s ranks per %s)",
                       tp_sparse_method_name(o->method), o->method == TP_SPARSE_WANDA ? "output row" : "column block");
    if (o->method == TP_SPARSE_SPARSEGPT && (!(o->damp >= 0) || !isfinite(o->damp) || o->blocksize < 1))
        return tp_fail(TP_ERR_ARG, "sparsify: SparseGPT damp %g must be >= 0 and block size %d >= 1", o->damp, o->blocksize);
    return TP_OK;
}

/* Runs every sample through layer l in batches: stats (hooks, on a copy of the stream) or
 * propagate (in place, no hooks). */
static tp_status layer_pass(const tp_model *m, int l, float *x, float *copy, size_t n, int T, int batch,
                            const tp_forward_opts *fo, tp_progress *prog) {
    size_t d = (size_t)m->cfg.d_model;
    tp_status s = TP_OK;
    for (size_t i = 0; i < n && !s; i += (size_t)batch) {
        size_t b = n - i < (size_t)batch ? n - i : (size_t)batch;
        float *xs = x + i * (size_t)T * d;
        if (copy) {
            memcpy(copy, xs, b * (size_t)T * d * sizeof(float));
            xs = copy;
        }
        s = tp_forward_layer(m, l, xs, (int)b, T, fo);
        if (prog) tp_progress_update(prog, prog->done + (double)(b * (size_t)T));
    }
    return s;
}

static tp_status layerwise(tp_model *m, const int32_t *ids, size_t n, int T, const tp_sparsify_opts *o, tp_mask *mk,
                           tp_sparsify_stats *stats) {
    const tp_config *c = &m->cfg;
    if (c->hetero)
        return tp_fail(TP_ERR_UNSUPPORTED, "sparsify: %s on a model with per-layer widths is not supported yet "
                       "(magnitude is)", o->method == TP_SPARSE_WANDA ? "Wanda" : "SparseGPT");
    size_t d = (size_t)c->d_model, L = (size_t)c->n_layers, V = (size_t)c->vocab;
    size_t batch = o->batch > 0 ? (size_t)o->batch : 1;
    if (batch > n) batch = n;
    for (size_t i = 0; i < n * (size_t)T; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= V)
            return tp_fail(TP_ERR_ARG, "sparsify: calibration token %d at index %zu is outside the vocabulary (0..%zu)",
                           ids[i], i, V - 1);
    stat_state st = {0};
    st.method = o->method;
    st.T = T;
    const int widths[PT_COUNT] = {c->d_model, c->n_heads * c->head_dim, c->d_model, c->d_ff};
    size_t maxw = 0, maxe = 0;
    layer_ctx cx = {0};
    cx.m = m;
    cx.o = o;
    cx.mk = mk;
    cx.n_tokens = (double)n * T;
    cx.tensor_of = malloc(L * TP_SP_MATRICES * sizeof *cx.tensor_of);
    float *x = malloc(n * (size_t)T * d * sizeof *x), *copy = malloc(batch * (size_t)T * d * sizeof *copy);
    int ok = cx.tensor_of && x && copy;
    for (size_t i = 0; ok && i < L * TP_SP_MATRICES; i++) cx.tensor_of[i] = -1;
    for (int i = 0; ok && i < mk->n; i++) {
        cx.tensor_of[mk->t[i].layer * TP_SP_MATRICES + mk->t[i].matrix] = i;
        size_t e = (size_t)mk->t[i].rows * mk->t[i].cols;
        maxe = e > maxe ? e : maxe;
    }
    for (int k = 0; k < PT_COUNT && ok; k++) {
        stat_point *sp = &st.pt[k];
        sp->width = widths[k];
        for (int q = 0; q < TP_SP_MATRICES; q++) sp->active |= point_of_matrix[q] == k && ((o->targets >> q) & 1);
        if (!sp->active) continue;
        size_t w = (size_t)sp->width;
        maxw = w > maxw ? w : maxw;
        if (o->method == TP_SPARSE_WANDA) ok = (sp->acc = malloc(w * sizeof(double))) != NULL;
        else ok = (sp->acc = malloc(w * w * sizeof(double))) && (sp->xd = malloc((size_t)T * w * sizeof(double)));
    }
    ok = ok && (cx.pruned = malloc(maxe ? maxe : 1));
    if (o->method == TP_SPARSE_WANDA) ok = ok && (cx.score = malloc(maxe * sizeof(double))) && (cx.tmp = malloc(maxe * sizeof(double)));
    else ok = ok && (cx.U = malloc(maxw * maxw * sizeof(double))) && (cx.work = malloc(2 * maxw * maxw * sizeof(double))) &&
              (cx.dead = malloc(maxw));
    tp_status s = TP_OK;
    if (!ok) s = tp_fail(TP_ERR_NOMEM, "sparsify: out of memory for %zu x %d calibration tokens", n, T);
    if (!s) tp_model_embed(m, ids, n * (size_t)T, x);
    tp_forward_opts fo = {stat_hook, &st, NULL};
    if (o->progress) {
        o->progress->total = 2.0 * (double)L * (double)n * T;
        o->progress->done = 0;
    }
    for (int l = 0; l < (int)L && !s; l++) {
        int any = 0;
        for (int q = 0; q < TP_SP_MATRICES; q++) any |= cx.tensor_of[l * TP_SP_MATRICES + q] >= 0;
        if (any) {
            for (int k = 0; k < PT_COUNT; k++)
                if (st.pt[k].active) {
                    size_t w = (size_t)st.pt[k].width;
                    memset(st.pt[k].acc, 0, (o->method == TP_SPARSE_WANDA ? w : w * w) * sizeof(double));
                }
            double t0 = tp_time_s();
            s = layer_pass(m, l, x, copy, n, T, (int)batch, &fo, o->progress);
            double t1 = tp_time_s();
            stats->forward_seconds += t1 - t0;
            for (int k = 0; k < PT_COUNT && !s; k++) {
                if (!st.pt[k].active) continue;
                if (o->method == TP_SPARSE_SPARSEGPT) {
                    s = sparsegpt_point(&cx, l, k, &st.pt[k]);
                    continue;
                }
                for (int q = 0; q < TP_SP_MATRICES && !s; q++) {
                    int ti = cx.tensor_of[l * TP_SP_MATRICES + q];
                    if (point_of_matrix[q] == k && ti >= 0) s = wanda_matrix(&cx, &mk->t[ti], st.pt[k].acc);
                }
            }
            stats->solve_seconds += tp_time_s() - t1;
        } else if (o->progress) {
            tp_progress_update(o->progress, o->progress->done + (double)n * T);
        }
        if (!s && l + 1 < (int)L) { /* the sparse layer's output feeds the next layer */
            double t0 = tp_time_s();
            s = layer_pass(m, l, x, NULL, n, T, (int)batch, NULL, o->progress);
            stats->forward_seconds += tp_time_s() - t0;
        }
    }
    if (o->progress && !s) tp_progress_update(o->progress, o->progress->total);
    stat_free(&st);
    free(cx.tensor_of); free(cx.pruned); free(cx.score); free(cx.tmp); free(cx.U); free(cx.work); free(cx.dead);
    free(x); free(copy);
    return s;
}

tp_status tp_sparsify(tp_model *m, const int32_t *ids, size_t n, int seq_len, const tp_sparsify_opts *o,
                      tp_mask **mask, tp_sparsify_stats *stats) {
    *mask = NULL;
    tp_sparsify_opts def;
    if (!o) {
        tp_sparsify_opts_default(&def);
        o = &def;
    }
    tp_sparsify_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    tp_status s = check_opts(m, o);
    if (s) return s;
    int calib = o->method != TP_SPARSE_MAGNITUDE;
    if (calib && (!ids || n == 0 || seq_len < 1))
        return tp_fail(TP_ERR_ARG, "sparsify: %s needs calibration samples (got %zu of %d tokens)",
                       tp_sparse_method_name(o->method), n, seq_len);
    tp_mask *mk = NULL;
    if ((s = tp_mask_alloc(&m->cfg, o->targets, &mk))) return s;
    mk->method = (int)o->method;
    mk->sparsity = o->nm_m ? 0.0 : o->sparsity;
    mk->nm_n = o->nm_m ? o->nm_n : 0;
    mk->nm_m = o->nm_m;
    double t0 = tp_time_s();
    if (!calib) {
        s = magnitude(m, o, mk);
        stats->solve_seconds = tp_time_s() - t0;
    } else {
        s = layerwise(m, ids, n, seq_len, o, mk, stats);
        stats->calib_tokens = n * (size_t)seq_len;
    }
    stats->seconds = tp_time_s() - t0;
    if (s) {
        tp_mask_free(mk);
        return s;
    }
    *mask = mk;
    return TP_OK;
}
