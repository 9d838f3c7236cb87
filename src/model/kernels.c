/* CPU kernels (OpenMP + BLAS) and their naive twins. Numerics follow HF transformers' fp32
 * Llama: fp32 everywhere, softmax in fp32 with the max subtracted. */
#include "kernels.h"
#include "simd512.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------- vector exp, max, sums
 * (the vector exp itself, v_exp, is in simd512.h) */
#if defined(__AVX512F__)

static inline __mmask16 tail_mask(size_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }
#endif

void tp_vexp(const float *x, float *y, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, v_exp(_mm512_maskz_loadu_ps(m, x + i)));
    }
#else
    for (; i < n; i++) y[i] = expf(x[i]);
#endif
}

float tp_vmax(const float *x, size_t n) {
#if defined(__AVX512F__)
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, x + i));
    }
    return _mm512_reduce_max_ps(mx);
#else
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
#endif
}

double tp_exp_shift_sum(const float *x, float sub, float *y, size_t n) { return tp_exp_affine_sum(x, sub, 1.0f, y, n); }

double tp_exp_affine_sum(const float *x, float sub, float mul, float *y, size_t n) {
#if defined(__AVX512F__)
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    __m512 vs = _mm512_set1_ps(sub), vm = _mm512_set1_ps(mul);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 a = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vs);
        if (mul != 1.0f) a = _mm512_mul_ps(a, vm);
        __m512 e = _mm512_maskz_mov_ps(m, v_exp(a));
        if (y) _mm512_mask_storeu_ps(y + i, m, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
#else
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        float a = x[i] - sub, e = expf(mul != 1.0f ? a * mul : a);
        if (y) y[i] = e;
        sum += e;
    }
    return sum;
#endif
}

/* exp in double for x <= 0 (any x >= -708 is exact to within a few ulp; below, the terms are
 * < 1e-307 and are clamped there): x = k ln2 + t, |t| <= ln2/2, exp(t) by its Taylor polynomial of
 * degree 13 (truncation < 5e-18 relative), times 2^k by vscalefpd. */
#if defined(__AVX512F__)
static inline __m512d v_exp_neg_pd(__m512d x) {
    static const double c[14] = {1.0,
                                 1.0,
                                 0.5,
                                 1.0 / 6,
                                 1.0 / 24,
                                 1.0 / 120,
                                 1.0 / 720,
                                 1.0 / 5040,
                                 1.0 / 40320,
                                 1.0 / 362880,
                                 1.0 / 3628800,
                                 1.0 / 39916800,
                                 1.0 / 479001600,
                                 1.0 / 6227020800.0};
    x = _mm512_max_pd(x, _mm512_set1_pd(-708.0));
    __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d t = _mm512_fnmadd_pd(k, _mm512_set1_pd(6.93147180369123816490e-01), x); /* ln2 in two parts */
    t = _mm512_fnmadd_pd(k, _mm512_set1_pd(1.90821492927058770002e-10), t);
    __m512d p = _mm512_set1_pd(c[13]);
    for (int i = 12; i >= 0; i--) p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(c[i]));
    return _mm512_scalef_pd(p, k);
}
#endif

double tp_exp_shift_sum_f64(const float *x, double sub, size_t n) {
    size_t i = 0;
    double sum = 0;
#if defined(__AVX512F__)
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd(), vs = _mm512_set1_pd(sub);
    for (; i + 16 <= n; i += 16) {
        s0 = _mm512_add_pd(s0, v_exp_neg_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i)), vs)));
        s1 = _mm512_add_pd(s1, v_exp_neg_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8)), vs)));
    }
    sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
#endif
    for (; i < n; i++) sum += exp((double)x[i] - sub);
    return sum;
}

void tp_matmul_wt_ref(const float *X, const float *W, const float *bias, float *Y, size_t N, size_t in,
                      size_t out) {
#pragma omp parallel for schedule(static) collapse(2) if (N * out * in >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < out; o++) {
            const float *x = X + n * in, *w = W + o * in;
            double acc = 0;
            for (size_t i = 0; i < in; i++) acc += (double)x[i] * w[i];
            Y[n * out + o] = (float)acc + (bias ? bias[o] : 0.0f);
        }
}

void tp_matmul_wt(const float *X, const float *W, const float *bias, float *Y, size_t N, size_t in,
                  size_t out) {
#if defined(TP_HAVE_BLAS) || defined(TP_HAVE_DNNL)
    tp_sgemm_prec(0, 1, (int)N, (int)out, (int)in, 1.0f, X, (int)in, W, (int)in, 0.0f, Y, (int)out);
    if (bias) {
#pragma omp parallel for schedule(static) if (N * out >= TP_PAR_MIN_WORK)
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < out; o++) Y[n * out + o] += bias[o];
    }
#else
    tp_matmul_wt_ref(X, W, bias, Y, N, in, out);
#endif
}

void tp_matmul_wt_shared(const float *X, size_t N, size_t in, int n, const float *const *W, const float *const *bias,
                         float *const *Y, const size_t *out) {
    int No[4];
    int fits = n >= 1 && n <= 4 && N <= TP_SKINNY_MAX_M && in <= (size_t)INT32_MAX;
    for (int i = 0; fits && i < n; i++) {
        fits = out[i] <= (size_t)INT32_MAX;
        No[i] = (int)out[i];
    }
    if (!fits || tp_sgemm_prec_shared((int)N, (int)in, X, (int)in, n, W, No, Y) != 0) {
        if (n > 1) tp_gemm_bf16_pin(X, N * in); /* one conversion of X for the n products */
        for (int i = 0; i < n; i++) tp_matmul_wt(X, W[i], bias ? bias[i] : NULL, Y[i], N, in, out[i]);
        if (n > 1) tp_gemm_bf16_unpin(X);
        return;
    }
    for (int i = 0; bias && i < n; i++)
        if (bias[i])
            for (size_t r = 0; r < N; r++)
                for (size_t o = 0; o < out[i]; o++) Y[i][r * out[i] + o] += bias[i][o];
}

/* 1/sqrt(mean(x^2) + eps) of one row of d values, the one expression every RMSNorm here uses.
 * With AVX-512 the squares are summed in 64 lanes (4 accumulators of 16, each over every 64th
 * value), then the accumulators pairwise and the lanes in a fixed order: the same bits whatever
 * the thread count. (A float sum in index order runs at one add per latency, 4 cycles a value.) */
static inline float rms_inv(const float *xr, size_t d, float eps) {
    float ss = 0;
    size_t i = 0;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 64 <= d; i += 64) {
        __m512 v0 = _mm512_loadu_ps(xr + i), v1 = _mm512_loadu_ps(xr + i + 16);
        __m512 v2 = _mm512_loadu_ps(xr + i + 32), v3 = _mm512_loadu_ps(xr + i + 48);
        a0 = _mm512_fmadd_ps(v0, v0, a0);
        a1 = _mm512_fmadd_ps(v1, v1, a1);
        a2 = _mm512_fmadd_ps(v2, v2, a2);
        a3 = _mm512_fmadd_ps(v3, v3, a3);
    }
    __m512 *acc[4] = {&a0, &a1, &a2, &a3};
    for (int k = 0; i < d; i += 16, k++) { /* the last < 64 values, 16 at a time, masked */
        __mmask16 m = tail_mask(d - i);
        __m512 v = _mm512_maskz_loadu_ps(m, xr + i);
        *acc[k] = _mm512_fmadd_ps(v, v, *acc[k]);
    }
    ss = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#endif
    for (; i < d; i++) ss += xr[i] * xr[i];
    return 1.0f / sqrtf(ss / (float)d + eps);
}

void tp_rmsnorm(const float *x, const float *w, float *out, size_t N, size_t d, float eps) {
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * d;
        float *o = out + n * d;
        float r = rms_inv(xr, d, eps);
        for (size_t i = 0; i < d; i++) o[i] = w[i] * (xr[i] * r);
    }
}

/* Rotation tables: cos and sin of (float)pos * inv_freq[j] for positions [0, npos), made once per
 * set of frequencies (every layer, the queries and the keys, forward and backward share one) with
 * the very expression the kernels used before, so the bits are the same. A table is never changed
 * or freed once published: a longer one is made beside it (sizes double), so a kernel may read
 * its pointer while another thread publishes. */
typedef struct rope_tab {
    struct rope_tab *next;
    int half, npos;
    float *inv, *cs; /* cs[p * 2 * half + j] = cos, [.. + half + j] = sin */
} rope_tab;
static rope_tab *g_rope;
static pthread_mutex_t g_rope_mu = PTHREAD_MUTEX_INITIALIZER;
#define ROPE_TAB_MAX ((size_t)16 << 20) /* floats: past this the kernels compute the angles */

static const float *rope_table(const float *inv_freq, int half, const int *pos, size_t N) {
    int mx = 0;
    for (size_t n = 0; n < N; n++) {
        if (pos[n] < 0) return NULL;
        if (pos[n] > mx) mx = pos[n];
    }
    const float *cs = NULL;
    pthread_mutex_lock(&g_rope_mu);
    int have = 0;
    for (rope_tab *t = g_rope; t; t = t->next) /* newest first */
        if (t->half == half && !memcmp(t->inv, inv_freq, (size_t)half * sizeof(float))) {
            if (t->npos > mx) cs = t->cs;
            else if (!have) have = t->npos;
            if (cs) break;
        }
    if (!cs) {
        size_t np = (size_t)mx + 1 > 2 * (size_t)have ? (size_t)mx + 1 : 2 * (size_t)have;
        if (np < 1024) np = 1024;
        rope_tab *t = np * 2 * (size_t)half <= ROPE_TAB_MAX ? calloc(1, sizeof *t) : NULL;
        if (t && (t->inv = malloc((size_t)half * sizeof(float))) && (t->cs = malloc(np * 2 * (size_t)half * sizeof(float)))) {
            memcpy(t->inv, inv_freq, (size_t)half * sizeof(float));
            t->half = half;
            t->npos = (int)np;
            for (size_t p = 0; p < np; p++)
                for (int j = 0; j < half; j++) {
                    float a = (float)p * inv_freq[j];
                    t->cs[p * 2 * (size_t)half + (size_t)j] = cosf(a);
                    t->cs[p * 2 * (size_t)half + (size_t)half + (size_t)j] = sinf(a);
                }
            t->next = g_rope;
            g_rope = t;
            cs = t->cs;
        } else if (t) {
            free(t->inv);
            free(t);
        }
    }
    pthread_mutex_unlock(&g_rope_mu);
    return cs;
}

void tp_rope_apply(float *x, size_t N, int n_heads, int hd, const int *pos, const float *inv_freq) {
    int half = hd / 2;
    const float *tab = rope_table(inv_freq, half, pos, N);
#pragma omp parallel for schedule(static) if (N * (size_t)n_heads * (size_t)hd >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        float cb[512], sb[512]; /* head_dim <= 1024 is enforced by config validation */
        const float *c = cb, *s = sb;
        if (tab) {
            c = tab + (size_t)pos[n] * 2 * (size_t)half;
            s = c + half;
        } else
            for (int j = 0; j < half; j++) {
                float a = (float)pos[n] * inv_freq[j];
                cb[j] = cosf(a);
                sb[j] = sinf(a);
            }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (n * (size_t)n_heads + (size_t)h) * (size_t)hd;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                v[j] = a * c[j] - b * s[j];
                v[j + half] = b * c[j] + a * s[j];
            }
        }
    }
}

#if defined(__AVX512F__)
/* The lanes of m of y, rounded to bf16 as tp_bf16_convert rounds them, into dst. */
static inline void store_bf16(uint16_t *dst, __mmask16 m, __m512 y) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    _mm256_mask_storeu_epi16(dst, m, (__m256i)_mm512_cvtneps_pbh(y));
#else
    float t[16];
    _mm512_storeu_ps(t, y);
    for (int k = 0; k < 16; k++)
        if ((m >> k) & 1) dst[k] = tp_f32_to_bf16(t[k]);
#endif
}
#endif

/* silu(g) * u over [i0, i1): into out, or into outb in bf16 when outb is set (the values out
 * would hold, rounded). */
static inline __attribute__((always_inline)) void silu_mul_span(float *out, uint16_t *outb, const float *g,
                                                                const float *u, size_t i0, size_t i1) {
#if defined(__AVX512F__)
    for (size_t i = i0; i < i1; i += 16) {
        __mmask16 m = tail_mask(i1 - i);
        __m512 a = _mm512_maskz_loadu_ps(m, g + i), e = v_exp(_mm512_sub_ps(_mm512_setzero_ps(), a));
        __m512 y = _mm512_mul_ps(_mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), _mm512_maskz_loadu_ps(m, u + i));
        if (outb) store_bf16(outb + i, m, y);
        else _mm512_mask_storeu_ps(out + i, m, y);
    }
#else
    for (size_t i = i0; i < i1; i++) {
        float a = g[i], y = a / (1.0f + expf(-a)) * u[i];
        if (outb) outb[i] = tp_f32_to_bf16(y);
        else out[i] = y;
    }
#endif
}

void tp_silu_mul_to(float *out, const float *g, const float *u, size_t n) {
    size_t nb = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++) silu_mul_span(out, NULL, g, u, b * 4096, b * 4096 + 4096 < n ? b * 4096 + 4096 : n);
}

void tp_silu_mul_to_bf16(unsigned short *out, const float *g, const float *u, size_t n) {
    size_t nb = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++) silu_mul_span(NULL, out, g, u, b * 4096, b * 4096 + 4096 < n ? b * 4096 + 4096 : n);
}

void tp_silu_mul(float *g, const float *u, size_t n) { tp_silu_mul_to(g, g, u, n); }

static void softmax_causal_rows(float *S, int T, int Tk, int p0, int window) {
    for (int i = 0; i < T; i++) {
        float *r = S + (size_t)i * Tk;
        int nvis = p0 + i + 1, lo = tp_att_first_key(p0 + i, window);
        float mx = tp_vmax(r + lo, (size_t)(nvis - lo));
        float inv = (float)(1.0 / tp_exp_shift_sum(r + lo, mx, r + lo, (size_t)(nvis - lo)));
        for (int j = 0; j < lo; j++) r[j] = 0;
        for (int j = lo; j < nvis; j++) r[j] *= inv;
        for (int j = nvis; j < Tk; j++) r[j] = 0;
    }
}

#if !defined(__AVX512F__)
/* A few query rows (decoding) without AVX-512: scores, softmax and the weighted sum of V row by
 * row, without the general product (a product call per head and row costs more than the work at
 * T = 1). tp_attention_group's AVX-512 kernel below replaces it where the CPU has one. */
static void attention_rows_direct(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                                  float *out, size_t ldo, int T, int p0, int window, int hd, float scale, float *S) {
    int Tk = p0 + T;
    for (int i = 0; i < T; i++) {
        float *r = S + (size_t)i * Tk;
        const float *q = Q + (size_t)i * ldq;
        int nvis = p0 + i + 1, lo = tp_att_first_key(p0 + i, window);
        for (int j = lo; j < nvis; j++) {
            float acc = 0;
            for (int e = 0; e < hd; e++) acc += q[e] * K[(size_t)j * ldk + e];
            r[j] = scale * acc;
        }
        float mx = tp_vmax(r + lo, (size_t)(nvis - lo));
        float inv = (float)(1.0 / tp_exp_shift_sum(r + lo, mx, r + lo, (size_t)(nvis - lo)));
        for (int e = 0; e < hd; e++) {
            float acc = 0;
            for (int j = lo; j < nvis; j++) acc += r[j] * V[(size_t)j * ldk + e];
            out[(size_t)i * ldo + e] = acc * inv;
        }
    }
}
#endif

#if defined(__AVX512F__)
#define UNROLL4 _Pragma("GCC unroll 4")
#define UNROLL16 _Pragma("GCC unroll 16")

/* q . K row j for the nk <= 16 keys of a block (lane j; lanes from nk on are garbage: rows past
 * the block repeat its last row, so nothing is read past the keys) */
static inline __attribute__((always_inline)) __m512 scores16(const float *q, const float *K, size_t ldk, int nk,
                                                            int hd) {
    const float *row[16];
    UNROLL16
    for (int j = 0; j < 16; j++) row[j] = K + (size_t)(j < nk ? j : nk - 1) * ldk;
    __m512 acc[16];
    UNROLL16
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int e = 0; e < hd; e += 16) {
        __mmask16 m = tail_mask((size_t)(hd - e));
        __m512 qv = _mm512_maskz_loadu_ps(m, q + e);
        UNROLL16
        for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, row[j] + e), acc[j]);
    }
    return hsum16(acc);
}

/* scores16 for a full block of 16 keys and hd = 16 * NV (q in NV registers): rows are one
 * stride apart, and each pair of keys is folded into the first level of hsum16 as it completes */
static inline __attribute__((always_inline)) __m512 scores16_full(const int NV, const __m512 *qv, const float *K,
                                                                 size_t ldk) {
    __m512 a[16];
    UNROLL16
    for (int j = 0; j < 16; j++) {
        const float *row = K + (size_t)j * ldk;
        __m512 x = _mm512_mul_ps(qv[0], _mm512_loadu_ps(row));
        _Pragma("GCC unroll 8") for (int v = 1; v < NV; v++) x = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(row + 16 * v), x);
        a[j] = x;
    }
    return hsum16(a);
}

/* out_r[e0, e0+64) = mul[r] * sum over keys j in [lo, hi) of p_r[j] V row j, for R <= 4 rows r:
 * each V row is loaded once for the R rows; with one row, even and odd keys go to two sets of
 * accumulators (one set would wait on the FMA latency every key). */
static inline __attribute__((always_inline)) void pv_block(const int R, const float *const *p, const float *V,
                                                          size_t ldk, int lo, int hi, int e0, int hd,
                                                          const float *mul, float *const *out) {
    __m512 acc[4][4], acc2[4];
    __mmask16 mk[4];
    UNROLL4
    for (int v = 0; v < 4; v++) {
        mk[v] = e0 + 16 * v < hd ? tail_mask((size_t)(hd - e0 - 16 * v)) : 0;
        acc2[v] = _mm512_setzero_ps();
        UNROLL4
        for (int r = 0; r < R; r++) acc[r][v] = _mm512_setzero_ps();
    }
    int j = lo;
    const float *vr = V + (size_t)lo * ldk + e0;
    if (R == 1)
        for (; j + 2 <= hi; j += 2, vr += 2 * ldk) {
            __m512 p0 = _mm512_set1_ps(p[0][j]), p1 = _mm512_set1_ps(p[0][j + 1]);
            UNROLL4
            for (int v = 0; v < 4; v++) {
                acc[0][v] = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(mk[v], vr + 16 * v), acc[0][v]);
                acc2[v] = _mm512_fmadd_ps(p1, _mm512_maskz_loadu_ps(mk[v], vr + ldk + 16 * v), acc2[v]);
            }
        }
    for (; j < hi; j++, vr += ldk) {
        __m512 x[4];
        UNROLL4
        for (int v = 0; v < 4; v++) x[v] = _mm512_maskz_loadu_ps(mk[v], vr + 16 * v);
        UNROLL4
        for (int r = 0; r < R; r++) {
            __m512 pj = _mm512_set1_ps(p[r][j]);
            UNROLL4
            for (int v = 0; v < 4; v++) acc[r][v] = _mm512_fmadd_ps(pj, x[v], acc[r][v]);
        }
    }
    UNROLL4
    for (int r = 0; r < R; r++) {
        __m512 m = _mm512_set1_ps(mul[r]);
        UNROLL4
        for (int v = 0; v < 4; v++) {
            __m512 a = R == 1 ? _mm512_add_ps(acc[0][v], acc2[v]) : acc[r][v];
            _mm512_mask_storeu_ps(out[r] + e0 + 16 * v, mk[v], _mm512_mul_ps(a, m));
        }
    }
}

/* the AVX-512 body of tp_attention_group (T <= TP_ATT_DIRECT): all the group's rows' scores a block
 * of 16 keys at a time (the block's K rows stay in L1 for every row), the softmax of each row, then
 * the weighted sums with each V row loaded once for up to four rows */
static void attention_group_avx512(const float *Q, size_t ldq, int nh, const float *K, const float *V, size_t ldk,
                                   float *out, size_t ldo, int T, int p0, int window, int hd, float scale,
                                   float *S) {
    int Tk = p0 + T, R = nh * T, lo0 = tp_att_first_key(p0, window);
    __m512 vs = _mm512_set1_ps(scale);
    int nv = hd / 16, fast = hd % 16 == 0 && (nv == 4 || nv == 8) && Tk - lo0 >= 16;
    for (int j0 = lo0; j0 < Tk; j0 += 16) { /* keys [lo0, Tk): every row's visible keys lie inside */
        int nk = Tk - j0 < 16 ? Tk - j0 : 16;
        __mmask16 m = tail_mask((size_t)nk);
        if (fast && nk < 16) { /* the last block shifted back to end at Tk: a few keys scored twice */
            j0 = Tk - 16;
            nk = 16;
            m = 0xffff;
        }
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < T; i++) {
                const float *q = Q + (size_t)i * ldq + (size_t)h * hd, *kb = K + (size_t)j0 * ldk;
                __m512 sc, qv[8];
                if (fast && nv == 4) {
                    for (int v = 0; v < 4; v++) qv[v] = _mm512_loadu_ps(q + 16 * v);
                    sc = scores16_full(4, qv, kb, ldk);
                } else if (fast) {
                    for (int v = 0; v < 8; v++) qv[v] = _mm512_loadu_ps(q + 16 * v);
                    sc = scores16_full(8, qv, kb, ldk);
                } else {
                    sc = scores16(q, kb, ldk, nk, hd);
                }
                _mm512_mask_storeu_ps(S + (size_t)(h * T + i) * Tk + j0, m, _mm512_mul_ps(sc, vs));
            }
    }
    float mul[TP_ATT_DIRECT * 64];
    const float *prow[TP_ATT_DIRECT * 64];
    float *orow[TP_ATT_DIRECT * 64];
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < T; i++) { /* softmax over the row's keys; zero on the rest of [lo0, Tk) */
            int k = h * T + i, nvis = p0 + i + 1, lo = tp_att_first_key(p0 + i, window);
            float *r = S + (size_t)k * Tk;
            float mx = tp_vmax(r + lo, (size_t)(nvis - lo));
            mul[k] = (float)(1.0 / tp_exp_shift_sum(r + lo, mx, r + lo, (size_t)(nvis - lo)));
            for (int j = lo0; j < lo; j++) r[j] = 0;
            for (int j = nvis; j < Tk; j++) r[j] = 0;
            prow[k] = r;
            orow[k] = out + (size_t)i * ldo + (size_t)h * hd;
        }
    for (int e0 = 0; e0 < hd; e0 += 64)
        for (int k = 0; k < R; k += 4) {
            switch (R - k < 4 ? R - k : 4) {
            case 1: pv_block(1, prow + k, V, ldk, lo0, Tk, e0, hd, mul + k, orow + k); break;
            case 2: pv_block(2, prow + k, V, ldk, lo0, Tk, e0, hd, mul + k, orow + k); break;
            case 3: pv_block(3, prow + k, V, ldk, lo0, Tk, e0, hd, mul + k, orow + k); break;
            default: pv_block(4, prow + k, V, ldk, lo0, Tk, e0, hd, mul + k, orow + k); break;
            }
        }
}
#endif

void tp_attention_group(const float *Q, size_t ldq, int nh, const float *K, const float *V, size_t ldk, float *out,
                        size_t ldo, int T, int p0, int window, int hd, float scale, float *S) {
#if defined(__AVX512F__)
    if (T <= TP_ATT_DIRECT && nh <= 64 && tp_decode_kernels()) {
        attention_group_avx512(Q, ldq, nh, K, V, ldk, out, ldo, T, p0, window, hd, scale, S);
        return;
    }
#endif
    for (int h = 0; h < nh; h++)
        tp_attention_head(Q + (size_t)h * hd, ldq, K, V, ldk, out + (size_t)h * hd, ldo, T, p0, window, hd, scale, S);
}

void tp_attention_head(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                       size_t ldo, int T, int p0, int window, int hd, float scale, float *S) {
    int Tk = p0 + T;
    if (T <= TP_ATT_DIRECT && tp_decode_kernels()) {
#if defined(__AVX512F__)
        attention_group_avx512(Q, ldq, 1, K, V, ldk, out, ldo, T, p0, window, hd, scale, S);
#else
        attention_rows_direct(Q, ldq, K, V, ldk, out, ldo, T, p0, window, hd, scale, S);
#endif
        return;
    }
    if (T > TP_ATT_BLOCK) { /* blocks of query rows: only the causal part is computed (about half) */
        float *lse = S + (size_t)TP_ATT_BLOCK * (size_t)Tk; /* fits: (T - 64) * Tk >= Tk >= T */
        tp_attention_head_lse(Q, ldq, K, V, ldk, out, ldo, lse, T, p0, window, hd, scale, S);
        return;
    }
    /* fp32 products through the shared layer (BLAS, or loops without it) */
    tp_sgemm(0, 1, T, Tk, hd, scale, Q, (int)ldq, K, (int)ldk, 0.0f, S, Tk);
    softmax_causal_rows(S, T, Tk, p0, window);
    tp_sgemm(0, 0, T, hd, Tk, 1.0f, S, Tk, V, (int)ldk, 0.0f, out, (int)ldo);
}

void tp_attention_head_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                           size_t ldo, int T, int p0, int window, int hd, float scale) {
    for (int i = 0; i < T; i++) {
        int nvis = p0 + i + 1, lo = tp_att_first_key(p0 + i, window);
        double mx = -INFINITY;
        for (int j = lo; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)Q[(size_t)i * ldq + e] * K[(size_t)j * ldk + e];
            a *= scale;
            if (a > mx) mx = a;
        }
        double sum = 0;
        for (int j = lo; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)Q[(size_t)i * ldq + e] * K[(size_t)j * ldk + e];
            sum += exp(a * scale - mx);
        }
        for (int e = 0; e < hd; e++) {
            double acc = 0;
            for (int j = lo; j < nvis; j++) {
                double a = 0;
                for (int f = 0; f < hd; f++) a += (double)Q[(size_t)i * ldq + f] * K[(size_t)j * ldk + f];
                acc += exp(a * scale - mx) / sum * V[(size_t)j * ldk + e];
            }
            out[(size_t)i * ldo + e] = (float)acc;
        }
    }
}

/* ======================= training kernels (backward pass) ======================= */

/* C(M,N) = alpha * op(A) op(B) + beta * C, row-major, op = transpose when ta / tb is set. With
 * beta == 0, C is not read. BLAS when built with it, plain loops otherwise. */
void tp_matmul_dx(const float *dY, const float *W, float *dX, size_t N, size_t in, size_t out, int accumulate) {
    tp_sgemm_prec(0, 0, (int)N, (int)in, (int)out, 1.0f, dY, (int)out, W, (int)in, accumulate ? 1.0f : 0.0f, dX,
                  (int)in);
}

void tp_matmul_dx_ref(const float *dY, const float *W, float *dX, size_t N, size_t in, size_t out, int accumulate) {
    for (size_t n = 0; n < N; n++)
        for (size_t i = 0; i < in; i++) {
            double acc = 0;
            for (size_t o = 0; o < out; o++) acc += (double)dY[n * out + o] * W[o * in + i];
            dX[n * in + i] = (float)(acc + (accumulate ? dX[n * in + i] : 0.0));
        }
}

/* db(out) += alpha * column sums of dY(N,out): column blocks in parallel, rows in order. */
static void bias_grad(const float *dY, float *db, size_t N, size_t out, float alpha) {
    size_t nb = (out + 63) / 64;
#pragma omp parallel for schedule(static) if (N * out >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++) {
        size_t o0 = b * 64, o1 = o0 + 64 < out ? o0 + 64 : out;
        double acc[64] = {0};
        for (size_t n = 0; n < N; n++)
            for (size_t o = o0; o < o1; o++) acc[o - o0] += dY[n * out + o];
        for (size_t o = o0; o < o1; o++) db[o] += (float)(alpha * acc[o - o0]);
    }
}

void tp_matmul_dw(const float *dY, const float *X, float *dW, float *db, size_t N, size_t in, size_t out,
                  float alpha) {
    tp_sgemm_prec(1, 0, (int)out, (int)in, (int)N, alpha, dY, (int)out, X, (int)in, 1.0f, dW, (int)in);
    if (db) bias_grad(dY, db, N, out, alpha);
}

void tp_matmul_dw_ref(const float *dY, const float *X, float *dW, float *db, size_t N, size_t in, size_t out,
                      float alpha) {
    for (size_t o = 0; o < out; o++) {
        for (size_t i = 0; i < in; i++) {
            double acc = 0;
            for (size_t n = 0; n < N; n++) acc += (double)dY[n * out + o] * X[n * in + i];
            dW[o * in + i] = (float)(dW[o * in + i] + alpha * acc);
        }
        if (db) {
            double acc = 0;
            for (size_t n = 0; n < N; n++) acc += dY[n * out + o];
            db[o] = (float)(db[o] + alpha * acc);
        }
    }
}

void tp_rmsnorm_fwd(const float *x, const float *w, float *out, float *rstd, size_t N, size_t d, float eps) {
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * d;
        float *o = out + n * d;
        float r = rms_inv(xr, d, eps); /* exactly as tp_rmsnorm */
        for (size_t i = 0; i < d; i++) o[i] = w[i] * (xr[i] * r);
        rstd[n] = r;
    }
}

void tp_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dout, float *dx, float *dw,
                    float alpha, size_t N, size_t d) {
    /* dx = r * (g - xhat * mean(g * xhat)), g = dout * w, xhat = x * r */
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * d, *dr = dout + n * d;
        float r = rstd[n];
        double dot = 0;
        float *o = dx + n * d;
#if defined(__AVX512F__)
        /* the same float products, summed in double in 16 lanes */
        __m512d d0 = _mm512_setzero_pd(), d1 = _mm512_setzero_pd();
        __m512 vr = _mm512_set1_ps(r);
        for (size_t i = 0; i < d; i += 16) {
            __mmask16 m = tail_mask(d - i);
            __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dr + i), _mm512_maskz_loadu_ps(m, w + i));
            __m512 xh = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), vr);
            d0 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(g)), _mm512_cvtps_pd(_mm512_castps512_ps256(xh)), d0);
            d1 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(g), 1))),
                                 _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xh), 1))), d1);
        }
        dot = _mm512_reduce_add_pd(_mm512_add_pd(d0, d1));
        __m512 vm = _mm512_set1_ps((float)(dot / (double)d));
        for (size_t i = 0; i < d; i += 16) {
            __mmask16 m = tail_mask(d - i);
            __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dr + i), _mm512_maskz_loadu_ps(m, w + i));
            __m512 xh = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), vr);
            __m512 v = _mm512_mul_ps(vr, _mm512_fnmadd_ps(xh, vm, g));
            _mm512_mask_storeu_ps(o + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + i), v));
        }
#else
        for (size_t i = 0; i < d; i++) dot += (double)(dr[i] * w[i]) * (xr[i] * r);
        float mdot = (float)(dot / (double)d);
        for (size_t i = 0; i < d; i++) o[i] += r * (dr[i] * w[i] - (xr[i] * r) * mdot);
#endif
    }
    size_t nb = (d + 63) / 64;
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * 64, i1 = i0 + 64 < d ? i0 + 64 : d;
        double acc[64] = {0};
#if defined(__AVX512F__)
        if (i1 - i0 == 64) { /* 64 columns in 8 double lanes of 8: the same terms, the same order */
            __m512d a[8];
            for (int k = 0; k < 8; k++) a[k] = _mm512_setzero_pd();
            for (size_t n = 0; n < N; n++) {
                __m512 vr = _mm512_set1_ps(rstd[n]);
                for (int k = 0; k < 4; k++) {
                    __m512 g = _mm512_loadu_ps(dout + n * d + i0 + 16 * (size_t)k);
                    __m512 xh = _mm512_mul_ps(_mm512_loadu_ps(x + n * d + i0 + 16 * (size_t)k), vr);
                    a[2 * k] = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(g)),
                                               _mm512_cvtps_pd(_mm512_castps512_ps256(xh)), a[2 * k]);
                    a[2 * k + 1] =
                        _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(g), 1))),
                                        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xh), 1))),
                                        a[2 * k + 1]);
                }
            }
            for (int k = 0; k < 8; k++) _mm512_storeu_pd(acc + 8 * k, a[k]);
        } else
#endif
            for (size_t n = 0; n < N; n++) {
                float r = rstd[n];
                for (size_t i = i0; i < i1; i++) acc[i - i0] += (double)dout[n * d + i] * (x[n * d + i] * r);
            }
        for (size_t i = i0; i < i1; i++) dw[i] += (float)(alpha * acc[i - i0]);
    }
}

void tp_rmsnorm_bwd_ref(const float *x, const float *w, const float *rstd, const float *dout, float *dx,
                        float *dw, float alpha, size_t N, size_t d) {
    for (size_t i = 0; i < d; i++) {
        double acc = 0;
        for (size_t n = 0; n < N; n++) acc += (double)dout[n * d + i] * x[n * d + i] * rstd[n];
        dw[i] = (float)(dw[i] + alpha * acc);
    }
    for (size_t n = 0; n < N; n++) {
        double r = rstd[n], dot = 0;
        for (size_t i = 0; i < d; i++) dot += (double)dout[n * d + i] * w[i] * x[n * d + i] * r;
        for (size_t i = 0; i < d; i++)
            dx[n * d + i] = (float)(dx[n * d + i] +
                                    r * ((double)dout[n * d + i] * w[i] - x[n * d + i] * r * dot / (double)d));
    }
}

void tp_rope_bwd(float *dx, size_t N, int n_heads, int hd, const int *pos, const float *inv_freq) {
    int half = hd / 2;
    const float *tab = rope_table(inv_freq, half, pos, N);
#pragma omp parallel for schedule(static) if (N * (size_t)n_heads * (size_t)hd >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++)
        for (int j = 0; j < half; j++) {
            float c, s;
            if (tab) {
                c = tab[(size_t)pos[n] * 2 * (size_t)half + (size_t)j];
                s = tab[(size_t)pos[n] * 2 * (size_t)half + (size_t)half + (size_t)j];
            } else {
                float a = (float)pos[n] * inv_freq[j]; /* the forward's angle, bit for bit */
                c = cosf(a);
                s = sinf(a);
            }
            for (int h = 0; h < n_heads; h++) {
                float *v = dx + (n * (size_t)n_heads + (size_t)h) * (size_t)hd;
                float da = v[j], db = v[j + half];
                v[j] = da * c + db * s;
                v[j + half] = db * c - da * s;
            }
        }
}

/* tanh GELU as PyTorch computes it (gelu(approximate="tanh"), transformers' gelu_pytorch_tanh):
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in float. */
#define GELU_BETA 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_KAPPA 0.044715f

void tp_gelu_tanh_mul_to(float *out, const float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float x = g[i], inner = GELU_BETA * (x + GELU_KAPPA * (x * x * x));
        out[i] = 0.5f * x * (1.0f + tanhf(inner)) * u[i];
    }
}

void tp_gelu_tanh_mul(float *g, const float *u, size_t n) { tp_gelu_tanh_mul_to(g, g, u, n); }

void tp_gelu_tanh_mul_bwd(const float *g, const float *u, const float *da, float *dg, float *du, size_t n) {
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float x = g[i], t = tanhf(GELU_BETA * (x + GELU_KAPPA * (x * x * x))), d = da[i];
        float gelu = 0.5f * x * (1.0f + t);
        float dgelu = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x * x);
        float gu = d * u[i] * dgelu;
        du[i] = d * gelu;
        dg[i] = gu; /* after du: dg may alias da */
    }
}

/* The backward of silu(g) * u over [i0, i1): dg and du in fp32, or in bf16 into dgb and dub when
 * those are set (the values dg and du would hold, rounded). */
static inline __attribute__((always_inline)) void silu_mul_bwd_span(const float *g, const float *u, const float *da,
                                                                    float *dg, float *du, uint16_t *dgb,
                                                                    uint16_t *dub, size_t i0, size_t i1) {
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = i0; i < i1; i += 16) {
        __mmask16 m = tail_mask(i1 - i);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i), d = _mm512_maskz_loadu_ps(m, da + i);
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, v_exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        __m512 gu = _mm512_mul_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, u + i)),
                                  _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one)));
        __m512 vu = _mm512_mul_ps(d, _mm512_mul_ps(x, s));
        if (dgb) {
            store_bf16(dub + i, m, vu);
            store_bf16(dgb + i, m, gu);
        } else {
            _mm512_mask_storeu_ps(du + i, m, vu);
            _mm512_mask_storeu_ps(dg + i, m, gu); /* after du: dg may alias da */
        }
    }
#else
    for (size_t i = i0; i < i1; i++) {
        float x = g[i], s = 1.0f / (1.0f + expf(-x)), d = da[i];
        float gu = d * u[i] * (s * (1.0f + x * (1.0f - s))), vu = d * (x * s);
        if (dgb) {
            dub[i] = tp_f32_to_bf16(vu);
            dgb[i] = tp_f32_to_bf16(gu);
        } else {
            du[i] = vu;
            dg[i] = gu;
        }
    }
#endif
}

void tp_silu_mul_bwd(const float *g, const float *u, const float *da, float *dg, float *du, size_t n) {
    size_t nb = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++)
        silu_mul_bwd_span(g, u, da, dg, du, NULL, NULL, b * 4096, b * 4096 + 4096 < n ? b * 4096 + 4096 : n);
}

void tp_silu_mul_bwd_bf16(const float *g, const float *u, const float *da, unsigned short *dg, unsigned short *du,
                          size_t n) {
    size_t nb = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++)
        silu_mul_bwd_span(g, u, da, NULL, NULL, dg, du, b * 4096, b * 4096 + 4096 < n ? b * 4096 + 4096 : n);
}

void tp_attention_head_lse(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                           size_t ldo, float *lse, int T, int p0, int window, int hd, float scale, float *S) {
    if (tp_gemm_precision() == TP_PREC_BF16 &&
        tp_attention_head_lse_bf16(Q, ldq, K, V, ldk, out, ldo, lse, T, p0, window, hd, scale) == 0)
        return;
    for (int i0 = 0; i0 < T; i0 += TP_ATT_BLOCK) {
        /* the block's rows see keys kmin..kmax-1 between them (kmin > 0 only under a window) */
        int bq = T - i0 < TP_ATT_BLOCK ? T - i0 : TP_ATT_BLOCK, kmax = p0 + i0 + bq;
        int kmin = tp_att_first_key(p0 + i0, window), nk = kmax - kmin;
        tp_sgemm(0, 1, bq, nk, hd, scale, Q + (size_t)i0 * ldq, (int)ldq, K + (size_t)kmin * ldk, (int)ldk, 0.0f, S,
                 nk);
        for (int r = 0; r < bq; r++) {
            float *row = S + (size_t)r * nk;
            int nvis = p0 + i0 + r + 1 - kmin, lo = tp_att_first_key(p0 + i0 + r, window) - kmin;
            float mx = tp_vmax(row + lo, (size_t)(nvis - lo));
            float sum = (float)tp_exp_shift_sum(row + lo, mx, row + lo, (size_t)(nvis - lo));
            float inv = 1.0f / sum;
            for (int j = 0; j < lo; j++) row[j] = 0;
            for (int j = lo; j < nvis; j++) row[j] *= inv;
            for (int j = nvis; j < nk; j++) row[j] = 0;
            lse[i0 + r] = mx + logf(sum);
        }
        tp_sgemm(0, 0, bq, hd, nk, 1.0f, S, nk, V + (size_t)kmin * ldk, (int)ldk, 0.0f, out + (size_t)i0 * ldo,
                 (int)ldo);
    }
}

void tp_attention_head_lse_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               float *out, size_t ldo, float *lse, int T, int p0, int window, int hd, float scale) {
    double *s = malloc((size_t)(p0 + T) * sizeof *s);
    if (!s) return;
    for (int i = 0; i < T; i++) {
        int nvis = p0 + i + 1, lo = tp_att_first_key(p0 + i, window);
        double mx = -INFINITY, sum = 0;
        for (int j = lo; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)Q[(size_t)i * ldq + e] * K[(size_t)j * ldk + e];
            s[j] = a * scale;
            if (s[j] > mx) mx = s[j];
        }
        for (int j = lo; j < nvis; j++) sum += exp(s[j] - mx);
        for (int e = 0; e < hd; e++) {
            double acc = 0;
            for (int j = lo; j < nvis; j++) acc += exp(s[j] - mx) / sum * V[(size_t)j * ldk + e];
            out[(size_t)i * ldo + e] = (float)acc;
        }
        lse[i] = (float)(mx + log(sum));
    }
    free(s);
}

void tp_attention_head_bwd(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                           const float *O, const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq,
                           float *dK, float *dV, size_t lddk, int T, int p0, int window, int hd, float scale,
                           float *scratch) {
    if (tp_gemm_precision() == TP_PREC_BF16 &&
        tp_attention_head_bwd_bf16(Q, ldq, K, V, ldk, O, dO, ldo, lse, dQ, lddq, dK, dV, lddk, T, p0, window, hd,
                                   scale) == 0)
        return;
    float *P = scratch, *dP = scratch + (size_t)TP_ATT_BLOCK * (size_t)(p0 + T);
    for (int i0 = 0; i0 < T; i0 += TP_ATT_BLOCK) {
        int bq = T - i0 < TP_ATT_BLOCK ? T - i0 : TP_ATT_BLOCK, kmax = p0 + i0 + bq;
        int kmin = tp_att_first_key(p0 + i0, window), nk = kmax - kmin;
        const float *Qb = Q + (size_t)i0 * ldq, *dOb = dO + (size_t)i0 * ldo;
        const float *Kb = K + (size_t)kmin * ldk, *Vb = V + (size_t)kmin * ldk;
        float *dKb = dK + (size_t)kmin * lddk, *dVb = dV + (size_t)kmin * lddk;
        /* P = exp(scale Q K^T - lse) on the visible keys, 0 elsewhere */
        tp_sgemm(0, 1, bq, nk, hd, scale, Qb, (int)ldq, Kb, (int)ldk, 0.0f, P, nk);
        for (int r = 0; r < bq; r++) {
            float *row = P + (size_t)r * nk, l = lse[i0 + r];
            int nvis = p0 + i0 + r + 1 - kmin, lo = tp_att_first_key(p0 + i0 + r, window) - kmin;
            tp_exp_shift_sum(row + lo, l, row + lo, (size_t)(nvis - lo));
            for (int j = 0; j < lo; j++) row[j] = 0;
            for (int j = nvis; j < nk; j++) row[j] = 0;
        }
        tp_sgemm(1, 0, nk, hd, bq, 1.0f, P, nk, dOb, (int)ldo, 1.0f, dVb, (int)lddk); /* dV += P^T dO */
        tp_sgemm(0, 1, bq, nk, hd, 1.0f, dOb, (int)ldo, Vb, (int)ldk, 0.0f, dP, nk);  /* dP = dO V^T */
        for (int r = 0; r < bq; r++) {
            const float *o = O + (size_t)(i0 + r) * ldo, *go = dOb + (size_t)r * ldo;
            float Di = 0; /* sum_j P dP = dO . O */
            for (int e = 0; e < hd; e++) Di += go[e] * o[e];
            float *pr = P + (size_t)r * nk, *dr = dP + (size_t)r * nk;
            for (int j = 0; j < nk; j++) dr[j] = pr[j] * (dr[j] - Di); /* dS; 0 where masked */
        }
        tp_sgemm(0, 0, bq, hd, nk, scale, dP, nk, Kb, (int)ldk, 0.0f, dQ + (size_t)i0 * lddq, (int)lddq);
        tp_sgemm(1, 0, nk, hd, bq, scale, dP, nk, Qb, (int)ldq, 1.0f, dKb, (int)lddk);
    }
}

void tp_attention_head_bwd_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               const float *O, const float *dO, size_t ldo, const float *lse, float *dQ,
                               size_t lddq, float *dK, float *dV, size_t lddk, int T, int p0, int window, int hd,
                               float scale) {
    (void)O;
    (void)lse;
    int Tk = p0 + T;
    double *p = malloc((size_t)Tk * sizeof *p), *ds = malloc((size_t)Tk * sizeof *ds);
    double *gk = calloc((size_t)Tk * (size_t)hd, sizeof *gk), *gv = calloc((size_t)Tk * (size_t)hd, sizeof *gv);
    if (!p || !ds || !gk || !gv) {
        free(p); free(ds); free(gk); free(gv);
        return;
    }
    for (int i = 0; i < T; i++) {
        int nvis = p0 + i + 1, lo = tp_att_first_key(p0 + i, window);
        const float *q = Q + (size_t)i * ldq, *go = dO + (size_t)i * ldo;
        double mx = -INFINITY, sum = 0, D = 0;
        for (int j = lo; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)q[e] * K[(size_t)j * ldk + e];
            p[j] = a * scale;
            if (p[j] > mx) mx = p[j];
        }
        for (int j = lo; j < nvis; j++) sum += (p[j] = exp(p[j] - mx));
        for (int j = lo; j < nvis; j++) {
            p[j] /= sum;
            double dp = 0;
            for (int e = 0; e < hd; e++) dp += (double)go[e] * V[(size_t)j * ldk + e];
            ds[j] = dp;
            D += p[j] * dp;
        }
        for (int j = lo; j < nvis; j++) ds[j] = p[j] * (ds[j] - D);
        for (int e = 0; e < hd; e++) {
            double acc = 0;
            for (int j = lo; j < nvis; j++) acc += ds[j] * K[(size_t)j * ldk + e];
            dQ[(size_t)i * lddq + e] = (float)(scale * acc);
        }
        for (int j = lo; j < nvis; j++)
            for (int e = 0; e < hd; e++) {
                gk[(size_t)j * hd + e] += scale * ds[j] * q[e];
                gv[(size_t)j * hd + e] += p[j] * go[e];
            }
    }
    for (int j = 0; j < Tk; j++)
        for (int e = 0; e < hd; e++) {
            dK[(size_t)j * lddk + e] = (float)(dK[(size_t)j * lddk + e] + gk[(size_t)j * hd + e]);
            dV[(size_t)j * lddk + e] = (float)(dV[(size_t)j * lddk + e] + gv[(size_t)j * hd + e]);
        }
    free(p); free(ds); free(gk); free(gv);
}

double tp_fkl_row(const float *t, float *s, size_t V, float inv_tau, float gscale) {
    /* three passes, three exponentials per position: the two maxima; then e_s = exp((s - ms)/tau)
     * kept in s, the two sums and A = sum e_t (z_t - z_s); then the gradient. With p = e_t / St,
     * the loss sum p (z_t - z_s + ls - lt) is A / St + ls - lt. */
    double Ss = 0, St = 0, A = 0;
    float ms, mt;
#if defined(__AVX512F__)
    __m512 mxs = _mm512_set1_ps(-INFINITY), mxt = mxs;
    for (size_t i = 0; i < V; i += 16) {
        __mmask16 m = tail_mask(V - i);
        mxs = _mm512_mask_max_ps(mxs, m, mxs, _mm512_maskz_loadu_ps(m, s + i));
        mxt = _mm512_mask_max_ps(mxt, m, mxt, _mm512_maskz_loadu_ps(m, t + i));
    }
    ms = _mm512_reduce_max_ps(mxs);
    mt = _mm512_reduce_max_ps(mxt);
    __m512 vit = _mm512_set1_ps(inv_tau), vms = _mm512_set1_ps(ms), vmt = _mm512_set1_ps(mt);
    __m512d ss0 = _mm512_setzero_pd(), ss1 = ss0, st0 = ss0, st1 = ss0, a0 = ss0, a1 = ss0;
#define LO_PD(x) _mm512_cvtps_pd(_mm512_castps512_ps256(x))
#define HI_PD(x) _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)))
    for (size_t i = 0; i < V; i += 16) {
        __mmask16 m = tail_mask(V - i);
        __m512 xs = _mm512_maskz_loadu_ps(m, s + i), xt = _mm512_maskz_loadu_ps(m, t + i);
        __m512 es = _mm512_maskz_mov_ps(m, v_exp(_mm512_mul_ps(_mm512_sub_ps(xs, vms), vit)));
        __m512 et = _mm512_maskz_mov_ps(m, v_exp(_mm512_mul_ps(_mm512_sub_ps(xt, vmt), vit)));
        __m512 d = _mm512_mul_ps(_mm512_sub_ps(xt, xs), vit); /* z_t - z_s */
        ss0 = _mm512_add_pd(ss0, LO_PD(es));
        ss1 = _mm512_add_pd(ss1, HI_PD(es));
        st0 = _mm512_add_pd(st0, LO_PD(et));
        st1 = _mm512_add_pd(st1, HI_PD(et));
        a0 = _mm512_fmadd_pd(LO_PD(et), LO_PD(d), a0);
        a1 = _mm512_fmadd_pd(HI_PD(et), HI_PD(d), a1);
        _mm512_mask_storeu_ps(s + i, m, es);
    }
#undef LO_PD
#undef HI_PD
    Ss = _mm512_reduce_add_pd(_mm512_add_pd(ss0, ss1));
    St = _mm512_reduce_add_pd(_mm512_add_pd(st0, st1));
    A = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    /* q and p by the same operations, so that equal rows give a gradient of exactly 0 */
    __m512 rs = _mm512_set1_ps((float)(1.0 / Ss)), rt = _mm512_set1_ps((float)(1.0 / St)),
           vg = _mm512_set1_ps(gscale);
    for (size_t i = 0; i < V; i += 16) {
        __mmask16 m = tail_mask(V - i);
        __m512 q = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + i), rs);
        __m512 p = _mm512_mul_ps(v_exp(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, t + i), vmt), vit)), rt);
        _mm512_mask_storeu_ps(s + i, m, _mm512_mul_ps(_mm512_sub_ps(q, p), vg));
    }
#else
    ms = tp_vmax(s, V);
    mt = tp_vmax(t, V);
    for (size_t j = 0; j < V; j++) {
        float es = expf((s[j] - ms) * inv_tau), et = expf((t[j] - mt) * inv_tau);
        Ss += es;
        St += et;
        A += (double)et * (double)((t[j] - s[j]) * inv_tau);
        s[j] = es;
    }
    float rs = (float)(1.0 / Ss), rt = (float)(1.0 / St);
    for (size_t j = 0; j < V; j++) s[j] = (s[j] * rs - expf((t[j] - mt) * inv_tau) * rt) * gscale;
#endif
    double ls = (double)ms * inv_tau + log(Ss), lt = (double)mt * inv_tau + log(St); /* log-sum-exp of z = x/tau */
    return A / St + (ls - lt);
}
