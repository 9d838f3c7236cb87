/* AdamW with linear warmup + cosine decay and global-norm clipping, written to reproduce
 * torch.optim.AdamW (single-tensor path) and torch.nn.utils.clip_grad_norm_ operation by
 * operation in fp32, so that a C run and a PyTorch run of the same gradients agree to rounding
 * (tests/test_optim.c against tests/ref/optim_ref.py). Checkpointing of the state lives in
 * checkpoint.c; gradients come from backward.c. */
#include "taper/train.h"
#include "model/kernels.h"

#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

void tp_adamw_defaults(tp_adamw_cfg *c) {
    memset(c, 0, sizeof *c);
    c->lr = 3e-4f;
    c->min_lr = 3e-5f;
    c->warmup_steps = 0;
    c->total_steps = 0;
    c->beta1 = 0.9f;
    c->beta2 = 0.95f;
    c->eps = 1e-8f;
    c->weight_decay = 0.1f;
    c->decay_all = 0;
    c->clip = 1.0f;
}

/* The schedule (all in double, from the float fields):
 *   s < W:                 lr * (s+1) / W
 *   total_steps <= 0:      lr                                  (no decay configured)
 *   W <= s < S:            min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (s - W) / (S - W)))
 *   s >= S:                min_lr
 * with W = warmup_steps, S = total_steps, s the 0-based update. The same function is the
 * torch LambdaLR of tests/ref/optim_ref.py. */
double tp_lr_at(const tp_adamw_cfg *c, long step) {
    double lr = c->lr, lo = c->min_lr;
    long W = c->warmup_steps > 0 ? c->warmup_steps : 0, S = c->total_steps;
    if (step < 0) step = 0;
    if (step < W) return lr * (double)(step + 1) / (double)W;
    if (S <= 0) return lr;
    if (step >= S) return lo;
    double progress = (double)(step - W) / (double)(S - W);
    return lo + (lr - lo) * 0.5 * (1.0 + cos(M_PI * progress));
}

static tp_status check_cfg(const tp_adamw_cfg *c) {
    if (!(isfinite(c->lr) && c->lr >= 0))
        return tp_fail(TP_ERR_ARG, "adamw: lr = %g, expected a finite value >= 0", c->lr);
    if (!(isfinite(c->min_lr) && c->min_lr >= 0))
        return tp_fail(TP_ERR_ARG, "adamw: min_lr = %g, expected a finite value >= 0", c->min_lr);
    if (c->warmup_steps < 0) return tp_fail(TP_ERR_ARG, "adamw: warmup_steps = %ld, expected >= 0", c->warmup_steps);
    if (c->total_steps < 0) return tp_fail(TP_ERR_ARG, "adamw: total_steps = %ld, expected >= 0", c->total_steps);
    if (!(c->beta1 >= 0 && c->beta1 < 1)) return tp_fail(TP_ERR_ARG, "adamw: beta1 = %g, expected [0, 1)", c->beta1);
    if (!(c->beta2 >= 0 && c->beta2 < 1)) return tp_fail(TP_ERR_ARG, "adamw: beta2 = %g, expected [0, 1)", c->beta2);
    if (!(isfinite(c->eps) && c->eps > 0)) return tp_fail(TP_ERR_ARG, "adamw: eps = %g, expected > 0", c->eps);
    if (!(isfinite(c->weight_decay) && c->weight_decay >= 0))
        return tp_fail(TP_ERR_ARG, "adamw: weight_decay = %g, expected >= 0", c->weight_decay);
    if (!(isfinite(c->clip) && c->clip >= 0))
        return tp_fail(TP_ERR_ARG, "adamw: clip = %g, expected >= 0 (0 = off)", c->clip);
    return TP_OK;
}

static int cmp_range(const void *a, const void *b) {
    const size_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Decay ranges: every matrix (embeddings, projections, an untied lm_head), sorted, with
 * adjacent ranges merged; the tied lm_head is the embedding and is listed once. */
static tp_status decay_ranges(tp_adamw *o, const tp_model *m) {
    const tp_config *c = &m->cfg;
    size_t cap = 2 + 7 * (size_t)c->n_layers;
    o->ranges = malloc(cap * sizeof *o->ranges);
    if (!o->ranges) return tp_fail(TP_ERR_NOMEM, "adamw: out of memory");
    size_t d = (size_t)c->d_model, kv = (size_t)c->n_kv_heads * c->head_dim, V = (size_t)c->vocab, k = 0;
    if (o->cfg.decay_all) {
        o->ranges[k][0] = 0;
        o->ranges[k++][1] = m->n_params;
    } else {
#define ADD(ptr, len)                                                                                            \
    do {                                                                                                         \
        o->ranges[k][0] = (size_t)((ptr) - m->params);                                                           \
        o->ranges[k++][1] = (len);                                                                               \
    } while (0)
        ADD(m->tok_emb, V * d);
        for (int l = 0; l < c->n_layers; l++) {
            const tp_layer *L = &m->layers[l];
            size_t q = (size_t)tp_config_heads(c, l) * c->head_dim, ff = (size_t)tp_config_ff(c, l);
            ADD(L->wq, q * d);
            ADD(L->wk, kv * d);
            ADD(L->wv, kv * d);
            ADD(L->wo, d * q);
            ADD(L->w_gate, ff * d);
            ADD(L->w_up, ff * d);
            ADD(L->w_down, d * ff);
        }
        if (m->lm_head != m->tok_emb) ADD(m->lm_head, V * d);
#undef ADD
    }
    qsort(o->ranges, k, sizeof *o->ranges, cmp_range);
    size_t w = 0;
    for (size_t i = 0; i < k; i++) {
        if (o->ranges[i][0] + o->ranges[i][1] > m->n_params)
            return tp_fail(TP_ERR_ARG, "adamw: tensor view [%zu, +%zu) lies outside the %zu parameters",
                           o->ranges[i][0], o->ranges[i][1], m->n_params);
        if (w > 0 && o->ranges[w - 1][0] + o->ranges[w - 1][1] == o->ranges[i][0])
            o->ranges[w - 1][1] += o->ranges[i][1];
        else {
            o->ranges[w][0] = o->ranges[i][0];
            o->ranges[w++][1] = o->ranges[i][1];
        }
    }
    o->n_ranges = w;
    return TP_OK;
}

tp_status tp_adamw_init(tp_adamw *o, const tp_model *m, const tp_adamw_cfg *c) {
    memset(o, 0, sizeof *o);
    tp_status s = check_cfg(c);
    if (s) return s;
    o->cfg = *c;
    o->n = m->n_params;
    size_t bytes;
    if (tp_mul_overflow(o->n ? o->n : 1, sizeof(float), &bytes))
        return tp_fail(TP_ERR_NOMEM, "adamw: %zu parameters overflow the address space", o->n);
    o->m = calloc(1, bytes);
    o->v = calloc(1, bytes);
    if (!o->m || !o->v) {
        tp_adamw_free(o);
        return tp_fail(TP_ERR_NOMEM, "adamw: cannot allocate the moments of %zu parameters (%.1f GiB)", m->n_params,
                       2.0 * (double)bytes / (1u << 30));
    }
    s = decay_ranges(o, m);
    if (s) tp_adamw_free(o);
    return s;
}

void tp_adamw_free(tp_adamw *o) {
    if (!o) return;
    free(o->m);
    free(o->v);
    free(o->ranges);
    o->m = o->v = NULL;
    o->ranges = NULL;
    o->n = o->n_ranges = 0;
}

/* Fixed-size blocks summed in parallel, block sums added in block order: the result does not
 * depend on the thread count or the schedule. */
#define NORM_BLOCK ((size_t)1 << 15)
#define NORM_GROUP 512

static double block_sumsq(const float *g, size_t n) {
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += (double)g[i] * g[i];
        a1 += (double)g[i + 1] * g[i + 1];
        a2 += (double)g[i + 2] * g[i + 2];
        a3 += (double)g[i + 3] * g[i + 3];
    }
    for (; i < n; i++) a0 += (double)g[i] * g[i];
    return (a0 + a1) + (a2 + a3);
}

double tp_grad_norm(const float *g, size_t n) {
    size_t nb = (n + NORM_BLOCK - 1) / NORM_BLOCK;
    double part[NORM_GROUP], total = 0;
    for (size_t b0 = 0; b0 < nb; b0 += NORM_GROUP) {
        long cnt = (long)(nb - b0 < NORM_GROUP ? nb - b0 : NORM_GROUP);
#pragma omp parallel for schedule(static) if (cnt > 1)
        for (long j = 0; j < cnt; j++) {
            size_t start = (b0 + (size_t)j) * NORM_BLOCK, len = n - start < NORM_BLOCK ? n - start : NORM_BLOCK;
            part[j] = block_sumsq(g + start, len);
        }
        for (long j = 0; j < cnt; j++) total += part[j];
    }
    return sqrt(total);
}

typedef struct {
    float w1;       /* 1 - beta1 (lerp weight) */
    float beta2, one_minus_beta2;
    float decay;    /* 1 - lr * weight_decay */
    float bc2_sqrt; /* sqrt(1 - beta2^t) */
    float eps;
    float neg_step; /* -lr / (1 - beta1^t) */
    float gscale;   /* clipping coefficient, 1 when not clipping */
    int clipping;
} adam_consts;

/* torch's update of one element span: p *= decay (decayed spans only); m.lerp_(g, 1-beta1);
 * v = v*beta2 + (1-beta2)*g*g; p += -step_size * m / (sqrt(v)/sqrt(bc2) + eps). */
static void adam_span(float *p, const float *g, float *m, float *v, size_t n, int decayed, const adam_consts *k,
                      uint16_t *h) {
    const float w1 = k->w1, b2 = k->beta2, ob2 = k->one_minus_beta2, decay = k->decay, bc2 = k->bc2_sqrt,
                eps = k->eps, ns = k->neg_step, gs = k->gscale;
    const int clipping = k->clipping;
    size_t nv = 0;
#if defined(__AVX512F__)
    /* 16 elements at a time with the same operations in the same order (no contraction into FMA):
     * bit for bit the scalar loop below, which the compiler leaves scalar (its divisions and square
     * root made this pass compute-bound) */
    nv = n / 16;
    const __m512 vw1 = _mm512_set1_ps(w1), vow1 = _mm512_set1_ps(1.0f - w1), vb2 = _mm512_set1_ps(b2),
                 vob2 = _mm512_set1_ps(ob2), vdecay = _mm512_set1_ps(decay), vbc2 = _mm512_set1_ps(bc2),
                 veps = _mm512_set1_ps(eps), vns = _mm512_set1_ps(ns), vgs = _mm512_set1_ps(gs);
    const int lerp_low = w1 < 0.5f;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t b = 0; b < nv; b++) {
        size_t i = b * 16;
        __m512 gi = _mm512_loadu_ps(g + i), pi = _mm512_loadu_ps(p + i), mi = _mm512_loadu_ps(m + i);
        if (clipping) gi = _mm512_mul_ps(gi, vgs);
        if (decayed) pi = _mm512_mul_ps(pi, vdecay);
        __m512 d = _mm512_sub_ps(gi, mi);
        mi = lerp_low ? _mm512_add_ps(mi, _mm512_mul_ps(vw1, d)) : _mm512_sub_ps(gi, _mm512_mul_ps(d, vow1));
        __m512 vi = _mm512_mul_ps(_mm512_loadu_ps(v + i), vb2);
        vi = _mm512_add_ps(vi, _mm512_mul_ps(_mm512_mul_ps(vob2, gi), gi));
        __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), vbc2), veps);
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        __m512 pn = _mm512_add_ps(pi, _mm512_div_ps(_mm512_mul_ps(vns, mi), denom));
        _mm512_storeu_ps(p + i, pn);
#if defined(__AVX512BF16__)
        if (h) _mm256_storeu_si256((__m256i *)(h + i), (__m256i)_mm512_cvtneps_pbh(pn));
#else
        if (h) tp_bf16_convert(p + i, 16, h + i);
#endif
    }
    nv *= 16;
#endif
    for (size_t i = nv; i < n; i++) {
        float gi = clipping ? g[i] * gs : g[i];
        float pi = decayed ? p[i] * decay : p[i];
        float mi = m[i];
        /* at::lerp: weight < 0.5 -> self + weight * (end - self), else end - (end - self) * (1 - weight) */
        mi = w1 < 0.5f ? mi + w1 * (gi - mi) : gi - (gi - mi) * (1.0f - w1);
        float vi = v[i] * b2;
        vi = vi + ob2 * gi * gi;
        float denom = sqrtf(vi) / bc2 + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + ns * mi / denom;
        if (h) h[i] = tp_f32_to_bf16(p[i]);
    }
}

/* the constants of update t (1-based) at learning rate lr, without clipping */
static adam_consts consts_at(const tp_adamw_cfg *c, double lr, long step) {
    double t = (double)step, b1 = c->beta1, b2 = c->beta2;
    adam_consts k;
    k.w1 = (float)(1.0 - b1);
    k.beta2 = c->beta2;
    k.one_minus_beta2 = (float)(1.0 - b2);
    k.decay = (float)(1.0 - lr * (double)c->weight_decay);
    k.bc2_sqrt = (float)pow(1.0 - pow(b2, t), 0.5); /* python: bias_correction2 ** 0.5 */
    k.eps = c->eps;
    k.neg_step = (float)(-(lr / (1.0 - pow(b1, t))));
    k.clipping = 0;
    k.gscale = 1.0f;
    return k;
}

void tp_adamw_span(const tp_adamw_cfg *c, double lr, long step, float gscale, float *p, const float *g, float *m,
                   float *v, size_t n) {
    adam_consts k = consts_at(c, lr, step);
    k.clipping = gscale != 1.0f;
    k.gscale = gscale;
    adam_span(p, g, m, v, n, c->weight_decay != 0, &k, NULL);
}

/* adam_span over params [a, b), writing the bf16 copies (cp: ncp of them in address order,
 * *next the first not yet passed) of the weights inside it as it goes */
static void adam_range(tp_model *m, const tp_model *grad, tp_adamw *o, size_t a, size_t b, int decayed,
                       const adam_consts *k, const tp_bf16_copy *cp, size_t ncp, size_t *next) {
    float *P = m->params;
    while (a < b) {
        while (*next < ncp && cp[*next].w + cp[*next].n <= P + a) ++*next;
        size_t end = b;
        uint16_t *h = NULL;
        if (*next < ncp && cp[*next].w <= P + a) { /* inside a copy: to its end */
            size_t ce = (size_t)(cp[*next].w - P) + cp[*next].n;
            end = ce < b ? ce : b;
            h = (uint16_t *)cp[*next].h + (a - (size_t)(cp[*next].w - P));
        } else if (*next < ncp) { /* before the next copy */
            size_t cs = (size_t)(cp[*next].w - P);
            end = cs < b ? cs : b;
        }
        adam_span(P + a, grad->params + a, o->m + a, o->v + a, end - a, decayed, k, h);
        a = end;
    }
}

tp_status tp_adamw_step(tp_adamw *o, tp_model *m, const tp_model *grad, double *gnorm) {
    if (gnorm) *gnorm = 0;
    if (!o->m || !o->v) return tp_fail(TP_ERR_ARG, "adamw: optimizer not initialised (tp_adamw_init)");
    if (m->n_params != o->n || grad->n_params != o->n)
        return tp_fail(TP_ERR_ARG, "adamw: %zu parameters in the optimizer, %zu in the model, %zu in the gradient",
                       o->n, m->n_params, grad->n_params);
    double norm = tp_grad_norm(grad->params, o->n);
    if (gnorm) *gnorm = norm;
    if (!isfinite(norm))
        return tp_fail(TP_ERR_NUMERIC, "adamw: the gradient holds NaN or inf (norm %g) at update %ld; nothing changed",
                       norm, o->step);
    const tp_adamw_cfg *c = &o->cfg;
    adam_consts k = consts_at(c, tp_lr_at(c, o->step), o->step + 1);
    if (c->clip > 0) {
        /* clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when below 1 (torch does
         * this in fp32 on the fp32 norm) */
        float coef = (float)c->clip / ((float)norm + 1e-6f);
        if (coef < 1.0f) {
            k.clipping = 1;
            k.gscale = coef;
        }
    }
    int wd = c->weight_decay != 0;
    /* bf16 copies of the weights (under bf16 precision) are written with the update, instead of
     * converted again from the new weights at their next use (one more pass over them) */
    size_t ncp = tp_gemm_bf16_copies_in(m->params, o->n, NULL, 0), next = 0;
    tp_bf16_copy *cp = ncp ? malloc(ncp * sizeof *cp) : NULL;
    if (!cp) ncp = 0;
    else ncp = tp_gemm_bf16_copies_in(m->params, o->n, cp, ncp);
    size_t pos = 0;
    for (size_t r = 0; r <= o->n_ranges; r++) {
        size_t start = r < o->n_ranges ? o->ranges[r][0] : o->n, len = r < o->n_ranges ? o->ranges[r][1] : 0;
        if (start > pos) adam_range(m, grad, o, pos, start, 0, &k, cp, ncp, &next);
        if (len) adam_range(m, grad, o, start, start + len, wd, &k, cp, ncp, &next);
        pos = start + len;
    }
    o->step++;
    tp_gemm_bf16_refresh_except(cp, ncp); /* any other copy is converted again at its next use */
    free(cp);
    return TP_OK;
}
