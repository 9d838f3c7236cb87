/* The one general matrix multiply every kernel goes through (tp_sgemm), and its backends:
 *
 *   oneDNN matmul (TP_HAVE_DNNL)   the fast path for the big products (projections, lm_head and
 *                                  their gradients): its brgemm kernels use the full 512-bit FMA
 *                                  width (1.9x OpenBLAS 0.3.21 with its AVX-512 kernels on this
 *                                  Zen 5, bench/RESULTS.md); optionally bf16 inputs (TP_PREC_BF16).
 *   OpenBLAS sgemm (TP_HAVE_BLAS)   small products and products issued inside an OpenMP parallel
 *                                  region (attention blocks per head): no primitive to build.
 *   plain loops                    when built with neither.
 *
 * oneDNN primitives are built once per shape and kept in a small cache (building one costs
 * ~50-500 us, far more than a small product). The cache is guarded by a mutex; a primitive may be
 * executed by one thread at a time, which the callers guarantee (products from inside parallel
 * regions never take this path).
 *
 * bf16: when the precision is TP_PREC_BF16, A and B are rounded to bf16 (round to nearest even)
 * and the product accumulates in fp32 into an fp32 C: "fp32 master weights, bf16 compute".
 * Weight matrices registered with tp_gemm_bf16_register() are converted once, and again at their
 * next use after tp_gemm_bf16_refresh() (which the optimizer step and checkpoint loading call);
 * anything else is converted on the fly into scratch. */
#include "kernels.h"
#include "taper/status.h"
#include "taper/util.h"

#include <pthread.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef TP_HAVE_BLAS
#include <cblas.h>
#endif
#ifdef TP_HAVE_DNNL
#include <dnnl.h>
#endif

/* ------------------------------------------------------------------ precision + backend choice */

/* Inside a parallel construct, active or not (an `if` clause that turned it off still counts: the
 * caller's products there have per-call shapes, e.g. attention over a growing KV cache). */
static int in_parallel(void) {
#ifdef _OPENMP
    return omp_get_level() > 0;
#else
    return 0;
#endif
}

static int g_prec = TP_PREC_FP32;
static int g_decode_kernels = 1;

void tp_set_decode_kernels(int on) { g_decode_kernels = on != 0; }
static _Thread_local int g_decode_step;
int tp_set_decode_step(int on) {
    int was = g_decode_step;
    g_decode_step = on != 0;
    return was;
}
int tp_decode_kernels(void) { return g_decode_kernels; }
static int g_backend = -1; /* resolved lazily: TP_GEMM_* */

void tp_gemm_set_precision(int prec) { g_prec = prec == TP_PREC_BF16 ? TP_PREC_BF16 : TP_PREC_FP32; }
int tp_gemm_precision(void) { return g_prec; }

static int default_backend(void) {
#if defined(TP_HAVE_DNNL)
    return TP_GEMM_DNNL;
#elif defined(TP_HAVE_BLAS)
    return TP_GEMM_BLAS;
#else
    return TP_GEMM_LOOPS;
#endif
}

int tp_gemm_backend(void) {
    if (g_backend < 0) g_backend = default_backend();
    return g_backend;
}

int tp_gemm_set_backend(int b) {
#ifndef TP_HAVE_DNNL
    if (b == TP_GEMM_DNNL) return -1;
#endif
#ifndef TP_HAVE_BLAS
    if (b == TP_GEMM_BLAS) return -1;
#endif
    if (b != TP_GEMM_DNNL && b != TP_GEMM_BLAS && b != TP_GEMM_LOOPS) return -1;
    g_backend = b;
    return 0;
}

const char *tp_gemm_blas_core(void) {
#ifdef TP_HAVE_BLAS
    return openblas_get_corename();
#else
    return NULL;
#endif
}

const char *tp_gemm_describe(void) {
    switch (tp_gemm_backend()) {
    case TP_GEMM_DNNL: return g_prec == TP_PREC_BF16 ? "oneDNN matmul, bf16 inputs / fp32 accumulation" : "oneDNN matmul, fp32";
    case TP_GEMM_BLAS: return g_prec == TP_PREC_BF16 ? "OpenBLAS sgemm on bf16-rounded inputs" : "OpenBLAS sgemm, fp32";
    default: return g_prec == TP_PREC_BF16 ? "plain loops on bf16-rounded inputs" : "plain loops, fp32";
    }
}

/* ------------------------------------------------------------------ bf16 conversion */

unsigned short tp_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u); /* denormal -> signed zero, as VCVTNEPS2BF16 */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float tp_bf16_to_f32(unsigned short h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* n floats to bf16 (the same bits as tp_f32_to_bf16: AVX512-BF16 when the build targets it). */
static void row_to_bf16(const float *src, size_t n, uint16_t *dst) {
    size_t i = 0;
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
#endif
    for (; i < n; i++) dst[i] = tp_f32_to_bf16(src[i]);
}

void tp_bf16_convert(const float *src, size_t n, unsigned short *dst) { row_to_bf16(src, n, dst); }

/* rows x cols block of a row-major matrix with leading dimension ld, into a dense bf16 copy. */
static void to_bf16(const float *src, size_t rows, size_t cols, size_t ld, uint16_t *dst) {
    if (rows == 1 && cols >= 4096) { /* one long vector (a whole weight matrix): split it */
        size_t nb = (cols + 4095) / 4096;
#pragma omp parallel for schedule(static) if (cols >= TP_PAR_MIN_WORK && !in_parallel())
        for (size_t b = 0; b < nb; b++) {
            size_t o = b * 4096, len = cols - o < 4096 ? cols - o : 4096;
            row_to_bf16(src + o, len, dst + o);
        }
        return;
    }
#pragma omp parallel for schedule(static) if (rows * cols >= TP_PAR_MIN_WORK && !in_parallel())
    for (size_t r = 0; r < rows; r++) row_to_bf16(src + r * ld, cols, dst + r * cols);
}

/* ------------------------------------------------------------------ registered bf16 weights */

enum { BLK_UNREAD, BLK_READ_ONCE, BLK_TRIED }; /* bf16_entry.blk_stage: made or refused once, never again */

typedef struct {
    const float *w;
    size_t n;
    uint16_t *h;
    int frozen;
    uint64_t gen; /* g_gen when h was made */
    void *blk;    /* frozen weights: h in oneDNN's blocked layout (blocked_weights), or NULL */
    size_t blk_bytes;
    int blk_stage; /* BLK_UNREAD, BLK_READ_ONCE (the next product may make the copy), BLK_TRIED */
#ifdef TP_HAVE_DNNL
    dnnl_memory_desc_t blk_md;
#endif
} bf16_entry;

static uint64_t g_gen = 1; /* bumped whenever registered weights may have changed */

static bf16_entry *g_reg;
static size_t g_blk_total; /* bytes of the blocked copies (bf16_entry.blk) */
static size_t g_nreg, g_capreg;
static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;

int tp_gemm_bf16_register(const float *w, size_t n, int frozen) {
    pthread_mutex_lock(&g_reg_mu);
    for (size_t i = 0; i < g_nreg; i++)
        if (g_reg[i].w == w && g_reg[i].n == n) {
            pthread_mutex_unlock(&g_reg_mu);
            return 0;
        }
    if (g_nreg == g_capreg) {
        size_t cap = g_capreg ? 2 * g_capreg : 64;
        bf16_entry *r = realloc(g_reg, cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&g_reg_mu);
            return -1;
        }
        g_reg = r;
        g_capreg = cap;
    }
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) {
        pthread_mutex_unlock(&g_reg_mu);
        return -1;
    }
    to_bf16(w, 1, n, n, h);
    memset(&g_reg[g_nreg], 0, sizeof g_reg[g_nreg]);
    g_reg[g_nreg].w = w;
    g_reg[g_nreg].n = n;
    g_reg[g_nreg].h = h;
    g_reg[g_nreg].frozen = frozen;
    g_reg[g_nreg].gen = g_gen;
    g_nreg++;
    pthread_mutex_unlock(&g_reg_mu);
    return 0;
}

void tp_gemm_bf16_refresh(void) {
    pthread_mutex_lock(&g_reg_mu);
    g_gen++;
    pthread_mutex_unlock(&g_reg_mu);
}

static int copy_cmp(const void *a, const void *b) {
    const tp_bf16_copy *x = a, *y = b;
    return x->w < y->w ? -1 : x->w > y->w;
}

size_t tp_gemm_bf16_copies_in(const float *p, size_t n, tp_bf16_copy *out, size_t max) {
    size_t k = 0;
    pthread_mutex_lock(&g_reg_mu);
    for (size_t i = 0; i < g_nreg; i++) {
        const bf16_entry *e = &g_reg[i];
        if (e->frozen || e->w < p || e->w + e->n > p + n) continue;
        if (out && k < max) out[k] = (tp_bf16_copy){e->w, e->n, e->h};
        k++;
    }
    pthread_mutex_unlock(&g_reg_mu);
    if (out) qsort(out, k < max ? k : max, sizeof *out, copy_cmp);
    return k;
}

void tp_gemm_bf16_refresh_except(const tp_bf16_copy *done, size_t k) {
    pthread_mutex_lock(&g_reg_mu);
    g_gen++;
    for (size_t j = 0; j < k; j++)
        for (size_t i = 0; i < g_nreg; i++)
            if (g_reg[i].w == done[j].w && g_reg[i].n == done[j].n && g_reg[i].h == done[j].h) g_reg[i].gen = g_gen;
    pthread_mutex_unlock(&g_reg_mu);
}

int tp_gemm_bf16_current(const float *w, size_t n) {
    int cur = 0;
    pthread_mutex_lock(&g_reg_mu);
    for (size_t i = 0; i < g_nreg; i++)
        if (g_reg[i].w == w && g_reg[i].n == n) cur = g_reg[i].frozen || g_reg[i].gen == g_gen;
    pthread_mutex_unlock(&g_reg_mu);
    return cur;
}

void tp_gemm_bf16_forget_range(const float *p, size_t n) {
    pthread_mutex_lock(&g_reg_mu);
    for (size_t i = 0; i < g_nreg; i++)
        if (!p || (g_reg[i].w >= p && g_reg[i].w < p + n)) {
            free(g_reg[i].h);
            free(g_reg[i].blk);
            g_blk_total -= g_reg[i].blk_bytes;
            g_reg[i] = g_reg[--g_nreg];
            i--;
        }
    if (!g_nreg) {
        free(g_reg);
        g_reg = NULL;
        g_capreg = 0;
    }
    pthread_mutex_unlock(&g_reg_mu);
}

/* Frozen weights' blocked copies (gemm_dnnl below): the most bytes they may take in all. */
static size_t g_blk_cap = (size_t)2048 << 20;
static int g_blk_env_read;

size_t tp_gemm_blocked_weights_bytes(void) {
    pthread_mutex_lock(&g_reg_mu);
    size_t b = g_blk_total;
    pthread_mutex_unlock(&g_reg_mu);
    return b;
}

/* The budget of the blocked copies: TAPER_BLOCKED_WEIGHTS (MiB) read at the first call unless set. */
static size_t blk_cap(void) {
    pthread_mutex_lock(&g_reg_mu);
    if (!g_blk_env_read) {
        g_blk_env_read = 1;
        const char *e = getenv("TAPER_BLOCKED_WEIGHTS"); /* MiB; 0: off (A/B timings) */
        if (e && *e) {
            char *end;
            double mib = strtod(e, &end);
            if (*end || !(mib >= 0))
                fprintf(stderr, "taper: TAPER_BLOCKED_WEIGHTS=%s is not a number of MiB: ignored\n", e);
            else
                g_blk_cap = mib >= 1e12 ? SIZE_MAX : (size_t)(mib * (1 << 20));
        }
    }
    size_t cap = g_blk_cap;
    pthread_mutex_unlock(&g_reg_mu);
    return cap;
}

size_t tp_gemm_set_blocked_weights(size_t max_bytes) {
    size_t was = blk_cap();
    pthread_mutex_lock(&g_reg_mu);
    g_blk_cap = max_bytes;
    pthread_mutex_unlock(&g_reg_mu);
    return was;
}

/* Whether w (registered copy h, elems values) is a frozen weight that has, or may now get, a
 * blocked copy: the blocked primitive is built only for those. The copy is made at the weight's
 * second product, not its first: a weight read once (one prompt of `taper generate`) would pay the
 * reorder and the memory for nothing; one read again (every step of a teacher, every chunk of a
 * perplexity) pays it once. */
static int blocked_candidate(const float *w, const uint16_t *h, size_t elems) {
    int c = 0;
    pthread_mutex_lock(&g_reg_mu);
    for (size_t i = 0; i < g_nreg; i++)
        if (g_reg[i].w == w && g_reg[i].h == h && g_reg[i].n == elems) {
            bf16_entry *e = &g_reg[i];
            c = e->frozen && (e->blk || e->blk_stage == BLK_READ_ONCE);
            if (e->frozen && e->blk_stage == BLK_UNREAD) e->blk_stage = BLK_READ_ONCE;
            break;
        }
    pthread_mutex_unlock(&g_reg_mu);
    return c;
}

/* The registered bf16 copy of the whole matrix starting at p (rows x ld elements), or NULL. */
static const uint16_t *bf16_lookup(const float *p, size_t elems) {
    const uint16_t *h = NULL;
    pthread_mutex_lock(&g_reg_mu);
    for (size_t i = 0; i < g_nreg; i++)
        if (g_reg[i].w == p && g_reg[i].n >= elems) {
            if (!g_reg[i].frozen && g_reg[i].gen != g_gen) { /* weights changed since: convert again */
                to_bf16(g_reg[i].w, 1, g_reg[i].n, g_reg[i].n, g_reg[i].h);
                g_reg[i].gen = g_gen;
            }
            h = g_reg[i].h;
            break;
        }
    pthread_mutex_unlock(&g_reg_mu);
    return h;
}

const unsigned short *tp_gemm_bf16_find(const float *w, size_t n) { return bf16_lookup(w, n); }

/* ------------------------------------------------------------------ pinned inputs
 * An activation that several products read (the normed hidden state for Q, K and V; a gradient
 * for both dX and dW; the logits' gradient) is converted once by tp_gemm_bf16_pin and found by
 * pointer until tp_gemm_bf16_unpin. The buffers stay allocated between pins (no page faults for
 * the logits' size at every step); tp_gemm_shutdown frees them. */
#define NPIN 6
typedef struct {
    const float *p;
    size_t n, cap;
    uint16_t *h;         /* the slot's own buffer (kept between pins) */
    const uint16_t *use; /* what products read: h, or the caller's buffer (tp_gemm_bf16_pin_given) */
} pin_entry;
static pin_entry g_pins[NPIN];
static pthread_mutex_t g_pin_mu = PTHREAD_MUTEX_INITIALIZER;

/* The slot for p: the one already pinning p, else a free one; -1 when all are taken. */
static int pin_slot(const float *p) {
    int slot = -1;
    for (int i = 0; i < NPIN; i++)
        if (g_pins[i].p == p || (slot < 0 && !g_pins[i].p)) slot = i;
    return slot;
}

/* Pins p (n values) to its bf16 form: into buf when given, else into the slot's own buffer. */
static int pin_convert(const float *p, size_t n, uint16_t *buf) {
    if (g_prec != TP_PREC_BF16 || !p || !n) return -1;
    pthread_mutex_lock(&g_pin_mu);
    int slot = pin_slot(p);
    if (slot >= 0 && !buf && g_pins[slot].cap < n) {
        uint16_t *h = realloc(g_pins[slot].h, n * sizeof *h);
        if (h) {
            g_pins[slot].h = h;
            g_pins[slot].cap = n;
        } else
            slot = -1; /* not pinned: the products convert it as before */
    }
    if (slot >= 0) {
        uint16_t *dst = buf ? buf : g_pins[slot].h;
        to_bf16(p, 1, n, n, dst);
        g_pins[slot].p = p;
        g_pins[slot].n = n;
        g_pins[slot].use = dst;
    }
    pthread_mutex_unlock(&g_pin_mu);
    return slot >= 0 ? 0 : -1;
}

void tp_gemm_bf16_pin(const float *p, size_t n) { (void)pin_convert(p, n, NULL); }

int tp_gemm_bf16_pin_to(const float *p, size_t n, unsigned short *buf) {
    return buf ? pin_convert(p, n, buf) : -1;
}

int tp_gemm_bf16_pin_given(const float *p, size_t n, const unsigned short *h) {
#if !defined(TP_HAVE_BLAS) && !defined(TP_HAVE_DNNL)
    (void)p, (void)n, (void)h;
    return -1; /* the products (kernels.c) are the fp32 reference loops, which read p */
#else
    if (g_prec != TP_PREC_BF16 || !p || !n || !h) return -1;
    pthread_mutex_lock(&g_pin_mu);
    int slot = pin_slot(p);
    if (slot >= 0) {
        g_pins[slot].p = p;
        g_pins[slot].n = n;
        g_pins[slot].use = h;
    }
    pthread_mutex_unlock(&g_pin_mu);
    return slot >= 0 ? 0 : -1;
#endif
}

void tp_gemm_bf16_unpin(const float *p) {
    pthread_mutex_lock(&g_pin_mu);
    for (int i = 0; i < NPIN; i++)
        if (g_pins[i].p == p) g_pins[i].p = NULL;
    pthread_mutex_unlock(&g_pin_mu);
}

/* The pinned bf16 copy of the elems values at p (a pin starting there and at least as long). */
static const uint16_t *pin_lookup(const float *p, size_t elems) {
    const uint16_t *h = NULL;
    pthread_mutex_lock(&g_pin_mu);
    for (int i = 0; i < NPIN && !h; i++)
        if (g_pins[i].p == p && g_pins[i].n >= elems) h = g_pins[i].use;
    pthread_mutex_unlock(&g_pin_mu);
    return h;
}

/* A registered weight's copy, else a pinned input's. */
static const uint16_t *bf16_copy(const float *p, size_t elems) {
    const uint16_t *h = bf16_lookup(p, elems);
    return h ? h : pin_lookup(p, elems);
}

/* ------------------------------------------------------------------ scratch for converted inputs */

typedef struct {
    uint16_t *p;
    size_t cap;
} scratch;

static inline uint16_t *scratch_get(scratch *s, size_t n) {
    if (n > s->cap) {
        uint16_t *p = realloc(s->p, n * sizeof *p);
        if (!p) return NULL;
        s->p = p;
        s->cap = n;
    }
    return s->p;
}

static scratch g_sa, g_sb;
static pthread_mutex_t g_scratch_mu = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------------ portable backends */

static void gemm_loops(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc) {
#pragma omp parallel for schedule(static) if ((size_t)M * N * K >= TP_PAR_MIN_WORK && !in_parallel())
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0;
            for (int k = 0; k < K; k++)
                acc += (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                       (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            float *c = C + (size_t)i * ldc + j;
            *c = alpha * acc + (beta == 0.0f ? 0.0f : beta * *c);
        }
}

static void gemm_fp32(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
#ifdef TP_HAVE_BLAS
    if (tp_gemm_backend() != TP_GEMM_LOOPS) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                    lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    gemm_loops(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Element (r, c) of a row-major matrix (leading dimension ld) as bf16 rounds it: from h, its
 * dense bf16 copy, when it has one. */
static inline float rounded_at(const float *X, size_t ld, const uint16_t *h, size_t cols, size_t r, size_t c) {
    return tp_bf16_to_f32(h ? h[r * cols + c] : tp_f32_to_bf16(X[r * ld + c]));
}

/* bf16 semantics without oneDNN: round both inputs to bf16 (as fp32 values), multiply in fp32.
 * A registered weight or a pinned input is read from its bf16 copy (the same values: the fp32
 * rounded), since a frozen weight may have given its fp32 memory back (tp_model_freeze_bf16)
 * and an input pinned by tp_gemm_bf16_pin_given need not hold its values. So this never falls
 * back to the fp32 inputs: without memory for the rounded copies it multiplies element by
 * element. */
static void gemm_rounded(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                         int ldb, float beta, float *C, int ldc) {
    size_t ar = ta ? (size_t)K : (size_t)M, ac = ta ? (size_t)M : (size_t)K;
    size_t br = tb ? (size_t)N : (size_t)K, bc = tb ? (size_t)K : (size_t)N;
    const uint16_t *ra = (size_t)lda == ac ? bf16_copy(A, ar * ac) : NULL;
    const uint16_t *rb = (size_t)ldb == bc ? bf16_copy(B, br * bc) : NULL;
    float *a = malloc(ar * ac * sizeof *a), *b = malloc(br * bc * sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float acc = 0;
                for (int k = 0; k < K; k++)
                    acc += (ta ? rounded_at(A, (size_t)lda, ra, ac, (size_t)k, (size_t)i)
                               : rounded_at(A, (size_t)lda, ra, ac, (size_t)i, (size_t)k)) *
                           (tb ? rounded_at(B, (size_t)ldb, rb, bc, (size_t)j, (size_t)k)
                               : rounded_at(B, (size_t)ldb, rb, bc, (size_t)k, (size_t)j));
                float *c = C + (size_t)i * ldc + j;
                *c = alpha * acc + (beta == 0.0f ? 0.0f : beta * *c);
            }
        return;
    }
    for (size_t r = 0; r < ar; r++)
        for (size_t c = 0; c < ac; c++) a[r * ac + c] = rounded_at(A, (size_t)lda, ra, ac, r, c);
    for (size_t r = 0; r < br; r++)
        for (size_t c = 0; c < bc; c++) b[r * bc + c] = rounded_at(B, (size_t)ldb, rb, bc, r, c);
    gemm_fp32(ta, tb, M, N, K, alpha, a, (int)ac, b, (int)bc, beta, C, ldc);
    free(a);
    free(b);
}

/* ------------------------------------------------------------------ oneDNN */

#ifdef TP_HAVE_DNNL
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc, bf16, accumulate;
    float alpha;
    int blocked_b; /* B in the layout oneDNN prefers (format "any"): a frozen weight's blocked copy */
    dnnl_primitive_t prim;
    uint64_t used;
} prim_entry;

#define PRIM_CACHE 96
static prim_entry g_prims[PRIM_CACHE];
static int g_nprims;
static uint64_t g_tick;
static dnnl_engine_t g_eng;
static dnnl_stream_t g_stream;
static int g_dnnl_broken;
static pthread_mutex_t g_prim_mu = PTHREAD_MUTEX_INITIALIZER;

static int dnnl_ready(void) {
    if (g_eng) return 1;
    if (g_dnnl_broken) return 0;
    if (dnnl_engine_create(&g_eng, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&g_stream, g_eng, dnnl_stream_default_flags) != dnnl_success) {
        tp_log(TP_LOG_WARN, "taper: oneDNN could not start a CPU engine; using BLAS for matrix products");
        g_eng = NULL;
        g_dnnl_broken = 1;
        return 0;
    }
    return 1;
}

static dnnl_primitive_t build(const prim_entry *k) {
    dnnl_data_type_t dt = k->bf16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t ad = {k->M, k->K}, as = {k->ta ? 1 : k->lda, k->ta ? k->lda : 1};
    dnnl_dims_t bd = {k->K, k->N}, bs = {k->tb ? 1 : k->ldb, k->tb ? k->ldb : 1};
    dnnl_dims_t cd = {k->M, k->N}, cs = {k->ldc, 1};
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t p = NULL;
    dnnl_matmul_desc_t md;
    if (dnnl_memory_desc_init_by_strides(&a, 2, ad, dt, as) != dnnl_success ||
        (k->blocked_b ? dnnl_memory_desc_init_by_tag(&b, 2, bd, dt, dnnl_format_tag_any)
                      : dnnl_memory_desc_init_by_strides(&b, 2, bd, dt, bs)) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(&c, 2, cd, dnnl_f32, cs) != dnnl_success ||
        dnnl_matmul_desc_init(&md, &a, &b, NULL, &c) != dnnl_success || dnnl_primitive_attr_create(&attr) != dnnl_success)
        goto out;
    if (k->alpha != 1.0f && dnnl_primitive_attr_set_output_scales(attr, 1, 0, &k->alpha) != dnnl_success) goto out;
    if (k->accumulate) {
        if (dnnl_post_ops_create(&po) != dnnl_success || dnnl_post_ops_append_sum(po, 1.0f) != dnnl_success ||
            dnnl_primitive_attr_set_post_ops(attr, po) != dnnl_success)
            goto out;
    }
    if (dnnl_primitive_desc_create(&pd, &md, attr, g_eng, NULL) != dnnl_success) goto out;
    if (dnnl_primitive_create(&p, pd) != dnnl_success) p = NULL;
out:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return p;
}

static dnnl_primitive_t prim_get(const prim_entry *key) {
    for (int i = 0; i < g_nprims; i++) {
        prim_entry *e = &g_prims[i];
        if (e->ta == key->ta && e->tb == key->tb && e->M == key->M && e->N == key->N && e->K == key->K &&
            e->lda == key->lda && e->ldb == key->ldb && e->ldc == key->ldc && e->bf16 == key->bf16 &&
            e->accumulate == key->accumulate && e->alpha == key->alpha && e->blocked_b == key->blocked_b) {
            e->used = ++g_tick;
            return e->prim;
        }
    }
    dnnl_primitive_t p = build(key);
    if (!p) return NULL;
    int slot = g_nprims;
    if (g_nprims == PRIM_CACHE) { /* evict the least recently used */
        slot = 0;
        for (int i = 1; i < PRIM_CACHE; i++)
            if (g_prims[i].used < g_prims[slot].used) slot = i;
        dnnl_primitive_destroy(g_prims[slot].prim);
    } else
        g_nprims++;
    g_prims[slot] = *key;
    g_prims[slot].prim = p;
    g_prims[slot].used = ++g_tick;
    return p;
}

static int exec(dnnl_primitive_t p, const prim_entry *k, const void *A, const void *B, float *C) {
    const dnnl_memory_desc_t *qa, *qb, *qc;
    const_dnnl_primitive_desc_t pd;
    (void)k;
    if (dnnl_primitive_get_primitive_desc(p, &pd) != dnnl_success) return -1;
    qa = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    qb = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    qc = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    int rc = -1;
    if (dnnl_memory_create(&ma, qa, g_eng, (void *)A) == dnnl_success &&
        dnnl_memory_create(&mb, qb, g_eng, (void *)B) == dnnl_success &&
        dnnl_memory_create(&mc, qc, g_eng, C) == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        if (dnnl_primitive_execute(p, g_stream, 3, args) == dnnl_success && dnnl_stream_wait(g_stream) == dnnl_success)
            rc = 0;
    }
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    return rc;
}

/* ---- blocked copies of frozen weights
 * oneDNN's brgemm matmul reads B in its own blocked layout (for bf16 on AVX512-BF16: pairs of K
 * rows in 16 x 64 blocks, whatever M is); given the row-major weight it copies B into that layout
 * on every call. A frozen weight (a teacher's, a scored or generating model's) read as the B of
 * Y = X W^T gets that layout once: a second copy beside h, made at its second product. Same
 * kernel, same bits (test gemm_blocked_weights_same_bits); 7-24 % faster products on the AMD EPYC
 * (bench/RESULTS.md). At most g_blk_cap bytes in all (TAPER_BLOCKED_WEIGHTS=MiB, 0 switches them
 * off; default 2048), and only while a copy is under a quarter of the memory available. */

/* h (plain: K x N as B, i.e. the row-major N x K weight read transposed) reordered into qb. */
static void *make_blocked(const uint16_t *h, const dnnl_memory_desc_t *plain, const dnnl_memory_desc_t *qb,
                          size_t bytes) {
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_memory_t from = NULL, to = NULL;
    void *buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    int ok = 0;
    if (buf && dnnl_reorder_primitive_desc_create(&rpd, plain, g_eng, qb, g_eng, NULL) == dnnl_success &&
        dnnl_primitive_create(&r, rpd) == dnnl_success &&
        dnnl_memory_create(&from, plain, g_eng, (void *)h) == dnnl_success &&
        dnnl_memory_create(&to, qb, g_eng, buf) == dnnl_success) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
        ok = dnnl_primitive_execute(r, g_stream, 2, args) == dnnl_success && dnnl_stream_wait(g_stream) == dnnl_success;
    }
    if (to) dnnl_memory_destroy(to);
    if (from) dnnl_memory_destroy(from);
    if (r) dnnl_primitive_destroy(r);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (!ok) {
        free(buf);
        buf = NULL;
    }
    return buf;
}

/* The blocked copy of the frozen weight w (registered copy h, K x N as B) in primitive p's layout:
 * made here at its first use when the budget allows; NULL when there is none (use h). Called with
 * g_prim_mu held. */
static const void *blocked_weights(dnnl_primitive_t p, const float *w, const uint16_t *h, int K, int N) {
    const_dnnl_primitive_desc_t pd;
    if (dnnl_primitive_get_primitive_desc(p, &pd) != dnnl_success) return NULL;
    const dnnl_memory_desc_t *qb = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (!qb) return NULL;
    size_t bytes = dnnl_memory_desc_get_size(qb);
    const void *out = NULL;
    pthread_mutex_lock(&g_reg_mu);
    bf16_entry *e = NULL;
    for (size_t i = 0; i < g_nreg && !e; i++)
        if (g_reg[i].w == w && g_reg[i].h == h && g_reg[i].n == (size_t)K * N && g_reg[i].frozen) e = &g_reg[i];
    if (e && e->blk) {
        if (dnnl_memory_desc_equal(&e->blk_md, qb)) out = e->blk;
    } else if (e && e->blk_stage != BLK_TRIED) {
        e->blk_stage = BLK_TRIED;
        dnnl_memory_desc_t plain; /* where oneDNN takes the row-major form as it is: no copy */
        dnnl_dims_t d = {K, N}, st = {1, K};
        int same = dnnl_memory_desc_init_by_strides(&plain, 2, d, dnnl_bf16, st) == dnnl_success &&
                   dnnl_memory_desc_equal(&plain, qb);
        double avail = tp_mem_available();
        if (!same && g_blk_total + bytes <= g_blk_cap && (avail < 0 || (double)bytes < avail / 4)) {
            void *b = make_blocked(h, &plain, qb, bytes);
            if (b) {
                e->blk = b;
                e->blk_bytes = bytes;
                e->blk_md = *qb;
                g_blk_total += bytes;
                out = b;
            }
        }
    }
    pthread_mutex_unlock(&g_reg_mu);
    return out;
}

static int gemm_dnnl(int bf16, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc) {
    const void *a = A, *b = B;
    const uint16_t *wb = NULL; /* B's registered bf16 copy */
    pthread_mutex_lock(&g_prim_mu);
    if (!dnnl_ready()) {
        pthread_mutex_unlock(&g_prim_mu);
        return -1;
    }
    if (bf16) {
        size_t ar = ta ? (size_t)K : (size_t)M, ac = ta ? (size_t)M : (size_t)K;
        size_t br = tb ? (size_t)N : (size_t)K, bc = tb ? (size_t)K : (size_t)N;
        const uint16_t *ra = (size_t)lda == ac ? bf16_copy(A, ar * ac) : NULL;
        const uint16_t *rb = (size_t)ldb == bc ? bf16_copy(B, br * bc) : NULL;
        pthread_mutex_lock(&g_scratch_mu);
        uint16_t *sa = ra ? NULL : scratch_get(&g_sa, ar * ac), *sb = rb ? NULL : scratch_get(&g_sb, br * bc);
        if ((!ra && !sa) || (!rb && !sb)) {
            pthread_mutex_unlock(&g_scratch_mu);
            pthread_mutex_unlock(&g_prim_mu);
            return -1;
        }
        if (sa) to_bf16(A, ar, ac, (size_t)lda, sa);
        if (sb) to_bf16(B, br, bc, (size_t)ldb, sb);
        a = ra ? (const void *)ra : sa;
        b = rb ? (const void *)rb : sb;
        wb = rb;
        lda = (int)ac;
        ldb = (int)bc;
    }
    prim_entry key = {ta, tb, M, N, K, lda, ldb, ldc, bf16, beta != 0.0f, alpha, 0, NULL, 0};
    dnnl_primitive_t p = NULL;
    const void *blk = NULL;
    if (wb && tb && blk_cap() > 0 && blocked_candidate(B, wb, (size_t)N * K)) {
        key.blocked_b = 1; /* a registered weight as W^T: its blocked copy when it is frozen */
        p = prim_get(&key);
        blk = p ? blocked_weights(p, B, wb, K, N) : NULL;
    }
    if (!blk) {
        key.blocked_b = 0;
        p = prim_get(&key);
    }
    int rc = p ? exec(p, &key, a, blk ? blk : b, C) : -1;
    if (bf16) pthread_mutex_unlock(&g_scratch_mu);
    pthread_mutex_unlock(&g_prim_mu);
    return rc;
}
#endif

/* Products below this many multiply-adds go to BLAS even when oneDNN is the backend. */
#define DNNL_MIN_WORK ((size_t)1 << 18)
/* B matrices from this many elements take the skinny path when A has few rows. */
#define SKINNY_MIN_WORK ((size_t)1 << 14)

/* C_i = alpha * A B_i^T (+ C_i) for n <= 4 weights B_i (N_i x K, rows ldb[i] apart) sharing A,
 * through the skinny kernels: decoding's matrix-vector products. -1 (nothing done) when they do
 * not apply: switched off, too many rows, the loops backend, too little work, or under bf16 a
 * weight without its registered bf16 copy. */
static int skinny(int bf16, int M, int K, float alpha, const float *A, int lda, float beta, int n,
                  const float *const *B, const int *N, const int *ldb, float *const *C, const int *ldc) {
    if (!g_decode_kernels || n < 1 || n > 4 || M > (g_decode_step ? TP_SKINNY_MAX_M : TP_SKINNY_STREAM_M) ||
        tp_gemm_backend() == TP_GEMM_LOOPS)
        return -1;
    if (bf16 && pin_lookup(A, 1)) return -1; /* these kernels round A from fp32 */
    tp_skinny_seg seg[4];
    size_t work = 0;
    for (int i = 0; i < n; i++) {
        const uint16_t *h = NULL;
        if (bf16 && (ldb[i] != K || !(h = bf16_lookup(B[i], (size_t)N[i] * K)))) return -1;
        seg[i] = (tp_skinny_seg){B[i], h, N[i], ldb[i], C[i], ldc[i]};
        work += (size_t)N[i] * K;
    }
    if (work < SKINNY_MIN_WORK) return -1;
    int par = (size_t)M * work >= TP_PAR_MIN_WORK && !in_parallel();
    return tp_skinny_multi(bf16, M, K, alpha, A, lda, beta, n, seg, par);
}

static void gemm_any(int bf16, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* C = beta * C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (size_t)i * ldc + j;
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return;
    }
    int be = tp_gemm_backend();
    /* decoding's matrix-vector products: a few rows times a weight's transpose */
    if (!ta && tb && skinny(bf16, M, K, alpha, A, lda, beta, 1, &B, &N, &ldb, &C, &ldc) == 0) return;
#ifdef TP_HAVE_DNNL
    if (be == TP_GEMM_DNNL && (beta == 0.0f || beta == 1.0f) && (size_t)M * N * K >= DNNL_MIN_WORK && !in_parallel() &&
        gemm_dnnl(bf16, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) == 0)
        return;
#endif
    (void)be;
    if (bf16) gemm_rounded(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else gemm_fp32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int tp_sgemm_prec_shared(int M, int K, const float *A, int lda, int n, const float *const *B, const int *N,
                         float *const *C) {
    int ld[4];
    for (int i = 0; i < n && i < 4; i++) ld[i] = K;
    return n > 4 ? -1 : skinny(g_prec == TP_PREC_BF16, M, K, 1.0f, A, lda, 0.0f, n, B, N, ld, C, N);
}

void tp_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
    gemm_any(0, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tp_sgemm_prec(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                   int ldb, float beta, float *C, int ldc) {
    gemm_any(g_prec == TP_PREC_BF16, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tp_gemm_shutdown(void) {
#ifdef TP_HAVE_DNNL
    pthread_mutex_lock(&g_prim_mu);
    for (int i = 0; i < g_nprims; i++) dnnl_primitive_destroy(g_prims[i].prim);
    g_nprims = 0;
    if (g_stream) dnnl_stream_destroy(g_stream);
    if (g_eng) dnnl_engine_destroy(g_eng);
    g_stream = NULL;
    g_eng = NULL;
    pthread_mutex_unlock(&g_prim_mu);
#endif
    pthread_mutex_lock(&g_pin_mu);
    for (int i = 0; i < NPIN; i++) free(g_pins[i].h);
    memset(g_pins, 0, sizeof g_pins);
    pthread_mutex_unlock(&g_pin_mu);
    pthread_mutex_lock(&g_scratch_mu);
    free(g_sa.p);
    free(g_sb.p);
    g_sa = g_sb = (scratch){NULL, 0};
    pthread_mutex_unlock(&g_scratch_mu);
    tp_gemm_bf16_forget_range(NULL, 0);
}
