/* Skinny products: C(M,N) = alpha * A(M,K) B(N,K)^T (+ C) for a handful of rows M, the shape of
 * every weight product while decoding (M = the sequences decoded together, often 1). Such a
 * product is a matrix-vector product that reads all of B once and does little arithmetic per
 * element, so its speed is the speed of streaming B from memory; the general GEMM libraries
 * pack B first (another pass over it) or fall back to slower paths at M = 1. Here each row of B
 * is loaded once into registers and multiplied with all M rows of A; blocks of four rows of B,
 * read row after row, split between the threads.
 *
 * bf16: B is the registered bf16 copy of a weight and A is rounded to bf16 (round to nearest
 * even), multiplied with AVX512-BF16's dot-product instruction and accumulated in fp32: the same
 * "bf16 inputs, fp32 accumulation" as the oneDNN path, in another summation order. */
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"
#include "simd512.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Up to this many rows of A, every row of B is streamed once against all of them (dots_*); from
 * STREAM_M + 1 to TP_SKINNY_MAX_M rows, tiles of 4 rows of B by 4 rows of A (tile_*). */
#define STREAM_M TP_SKINNY_STREAM_M

#if defined(__AVX512F__)

/* the loops over the 4 rows of B and the M rows of A, unrolled so the accumulators live in registers */
#define UNROLL _Pragma("GCC unroll 4")

/* dot products of rows b[0..nb) (nb <= 4) with rows a[0..M) (M <= TP_SKINNY_MAX_M) over K floats.
 * The rows of b are read one after the other, each from start to end: one sequential stream,
 * which the hardware prefetchers follow (four rows read side by side, four short streams, ran at
 * 0.65x of this on an AMD Zen 5 at M = 1). Each row is loaded once into registers and multiplied
 * with all M rows of a, which stay in L1; two accumulators per row of a. */
static inline __attribute__((always_inline)) void dots_f32(const int M, int nb, int K, const float *A, int lda,
                                                          const float *const *b, float out[4][STREAM_M]) {
    for (int j = 0; j < nb; j++) {
        const float *w = b[j];
        __m512 acc[2][STREAM_M];
        UNROLL
        for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
        int k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);
            UNROLL
            for (int m = 0; m < M; m++) {
                acc[0][m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(A + (size_t)m * lda + k), acc[0][m]);
                acc[1][m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(A + (size_t)m * lda + k + 16), acc[1][m]);
            }
        }
        for (; k < K; k += 16) {
            __mmask16 mk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            __m512 w0 = _mm512_maskz_loadu_ps(mk, w + k);
            UNROLL
            for (int m = 0; m < M; m++)
                acc[0][m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, A + (size_t)m * lda + k), acc[0][m]);
        }
        UNROLL
        for (int m = 0; m < M; m++) out[j][m] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][m], acc[1][m]));
    }
}

#if defined(__AVX512BF16__)
/* the same over K bf16 values (a: M rows of bf16, K apart) */
static inline __attribute__((always_inline)) void dots_bf16(const int M, int nb, int K, const uint16_t *a,
                                                           const uint16_t *const *b,
                                                           float out[4][STREAM_M]) {
    for (int j = 0; j < nb; j++) {
        const uint16_t *w = b[j];
        __m512 acc[2][STREAM_M];
        UNROLL
        for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
        int k = 0;
        for (; k + 64 <= K; k += 64) {
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k), w1 = (__m512bh)_mm512_loadu_si512(w + k + 32);
            UNROLL
            for (int m = 0; m < M; m++) {
                acc[0][m] = _mm512_dpbf16_ps(acc[0][m], w0, (__m512bh)_mm512_loadu_si512(a + (size_t)m * K + k));
                acc[1][m] = _mm512_dpbf16_ps(acc[1][m], w1, (__m512bh)_mm512_loadu_si512(a + (size_t)m * K + k + 32));
            }
        }
        for (; k < K; k += 32) {
            __mmask32 mk = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << (K - k)) - 1);
            __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + k);
            UNROLL
            for (int m = 0; m < M; m++)
                acc[0][m] = _mm512_dpbf16_ps(acc[0][m], w0,
                                             (__m512bh)_mm512_maskz_loadu_epi16(mk, a + (size_t)m * K + k));
        }
        UNROLL
        for (int m = 0; m < M; m++) out[j][m] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][m], acc[1][m]));
    }
}
#endif

/* More rows of A (a batch of sequences decoding together): the 16 dot products of 4 rows of B and 4
 * rows of A in 16 accumulators, 8 loads for 16 multiply-adds per step of K, summed at the end by
 * one transpose (lane 4i + j: B row i times A row j). The caller repeats rows past the ends. */
static inline __attribute__((always_inline)) void tile_f32(int K, const float *const *b, const float *const *a,
                                                          const float *const *pf, float out[16]) {
    __m512 acc[16];
    _Pragma("GCC unroll 16") for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        __mmask16 mk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        __m512 w[4], x[4];
        if (pf) /* the next rows of B, a cache line each per step, while these are in use */
            UNROLL
            for (int i = 0; i < 4; i++) _mm_prefetch((const char *)(pf[i] + k), _MM_HINT_T0);
        UNROLL
        for (int i = 0; i < 4; i++) {
            w[i] = _mm512_maskz_loadu_ps(mk, b[i] + k);
            x[i] = _mm512_maskz_loadu_ps(mk, a[i] + k);
        }
        UNROLL
        for (int i = 0; i < 4; i++) {
            UNROLL
            for (int j = 0; j < 4; j++) acc[4 * i + j] = _mm512_fmadd_ps(w[i], x[j], acc[4 * i + j]);
        }
    }
    _mm512_storeu_ps(out, hsum16(acc));
}

#if defined(__AVX512BF16__)
static inline __attribute__((always_inline)) void tile_bf16(int K, const uint16_t *const *b, const uint16_t *const *a,
                                                           const uint16_t *const *pf, float out[16]) {
    __m512 acc[16];
    _Pragma("GCC unroll 16") for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 32) {
        __mmask32 mk = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << (K - k)) - 1);
        __m512bh w[4], x[4];
        if (pf)
            UNROLL
            for (int i = 0; i < 4; i++) _mm_prefetch((const char *)(pf[i] + k), _MM_HINT_T0);
        UNROLL
        for (int i = 0; i < 4; i++) {
            w[i] = (__m512bh)_mm512_maskz_loadu_epi16(mk, b[i] + k);
            x[i] = (__m512bh)_mm512_maskz_loadu_epi16(mk, a[i] + k);
        }
        UNROLL
        for (int i = 0; i < 4; i++) {
            UNROLL
            for (int j = 0; j < 4; j++) acc[4 * i + j] = _mm512_dpbf16_ps(acc[4 * i + j], w[i], x[j]);
        }
    }
    _mm512_storeu_ps(out, hsum16(acc));
}
#endif

static inline __attribute__((always_inline)) void store(int M, int nb, int j0, float alpha, float beta, float *C,
                                                       int ldc, float d[4][STREAM_M]) {
    for (int j = 0; j < nb; j++)
        for (int m = 0; m < M; m++) {
            float *c = C + (size_t)m * ldc + j0 + j;
            *c = alpha * d[j][m] + (beta == 0.0f ? 0.0f : *c);
        }
}

/* block q of 4 rows of B, counted across the segments: its segment and first row */
static inline const tp_skinny_seg *find_block(const tp_skinny_seg *seg, int nseg, int q, int *j0) {
    for (int i = 0; i < nseg - 1; i++) {
        int nb = (seg[i].N + 3) / 4;
        if (q < nb) {
            *j0 = 4 * q;
            return &seg[i];
        }
        q -= nb;
    }
    *j0 = 4 * q;
    return &seg[nseg - 1];
}

static int total_blocks(const tp_skinny_seg *seg, int nseg) {
    int t = 0;
    for (int i = 0; i < nseg; i++) t += (seg[i].N + 3) / 4;
    return t;
}

/* One instance per M, so the loops over M unroll into registers. B rows come from the fp32
 * weights (rows ldb apart, A read in fp32) or, with ah (A already rounded to bf16, rows K apart),
 * from the bf16 copies (rows K apart). */
#if defined(__AVX512BF16__)
#define DOTS_BF16(MM) dots_bf16(MM, nb, K, ah, (const uint16_t *const *)b, d)
#else
#define DOTS_BF16(MM) (void)ah
#endif
#define SKINNY(MM)                                                                                               \
    static void skinny_##MM(int nseg, const tp_skinny_seg *seg, int K, float alpha, const float *A, int lda,     \
                            const uint16_t *ah, float beta, int par) {                                           \
        int nblk = total_blocks(seg, nseg);                                                                      \
        _Pragma("omp parallel for schedule(static) if (par)") for (int q = 0; q < nblk; q++) {                  \
            int j0;                                                                                              \
            const tp_skinny_seg *sg = find_block(seg, nseg, q, &j0);                                             \
            int nb = sg->N - j0 < 4 ? sg->N - j0 : 4;                                                            \
            const void *b[4];                                                                                    \
            for (int j = 0; j < nb; j++) {                                                                       \
                size_t r = (size_t)(j0 + j);                                                                     \
                b[j] = ah ? (const void *)(sg->Bh + r * K) : (const void *)(sg->B + r * sg->ldb);                \
            }                                                                                                    \
            float d[4][STREAM_M];                                                                         \
            if (ah) DOTS_BF16(MM);                                                                               \
            else dots_f32(MM, nb, K, A, lda, (const float *const *)b, d);                                        \
            store(MM, nb, j0, alpha, beta, sg->C, sg->ldc, d);                                                   \
        }                                                                                                        \
    }
SKINNY(1)
SKINNY(2)
SKINNY(3)
SKINNY(4)

/* STREAM_M < M <= TP_SKINNY_MAX_M: each block of 4 rows of B (read from memory once) against every
 * block of 4 rows of A (in cache), one tile each */
static void skinny_tiles(int M, int nseg, const tp_skinny_seg *seg, int K, float alpha, const float *A, int lda,
                         const uint16_t *ah, float beta, int par) {
    int nblk = total_blocks(seg, nseg);
#pragma omp parallel for schedule(static) if (par)
    for (int q = 0; q < nblk; q++) {
        int j0;
        const tp_skinny_seg *sg = find_block(seg, nseg, q, &j0);
        int nb = sg->N - j0 < 4 ? sg->N - j0 : 4;
        const void *b[4], *pf[4] = {0};
        for (int i = 0; i < 4; i++) {
            size_t r = (size_t)(j0 + (i < nb ? i : nb - 1));
            b[i] = ah ? (const void *)(sg->Bh + r * K) : (const void *)(sg->B + r * sg->ldb);
        }
        if (q + 1 < nblk) { /* the block this thread takes next (static schedule), fetched during the first tile */
            int j1;
            const tp_skinny_seg *s1 = find_block(seg, nseg, q + 1, &j1);
            int n1 = s1->N - j1 < 4 ? s1->N - j1 : 4;
            for (int i = 0; i < 4; i++) {
                size_t r = (size_t)(j1 + (i < n1 ? i : n1 - 1));
                pf[i] = ah ? (const void *)(s1->Bh + r * K) : (const void *)(s1->B + r * s1->ldb);
            }
        }
        for (int m0 = 0; m0 < M; m0 += 4) {
            int ma = M - m0 < 4 ? M - m0 : 4;
            const void *a[4];
            for (int j = 0; j < 4; j++) {
                size_t r = (size_t)(m0 + (j < ma ? j : ma - 1));
                a[j] = ah ? (const void *)(ah + r * K) : (const void *)(A + r * lda);
            }
            float out[16];
#if defined(__AVX512BF16__)
            if (ah)
                tile_bf16(K, (const uint16_t *const *)b, (const uint16_t *const *)a,
                          m0 == 0 && pf[0] ? (const uint16_t *const *)pf : NULL, out);
            else
#endif
                tile_f32(K, (const float *const *)b, (const float *const *)a,
                         m0 == 0 && pf[0] ? (const float *const *)pf : NULL, out);
            for (int i = 0; i < nb; i++)
                for (int j = 0; j < ma; j++) {
                    float *c = sg->C + (size_t)(m0 + j) * sg->ldc + j0 + i;
                    *c = alpha * out[4 * i + j] + (beta == 0.0f ? 0.0f : *c);
                }
        }
    }
}

#endif /* __AVX512F__ */

static int seg_ok(int M, int K, int nseg, const tp_skinny_seg *seg, float beta, int bf16) {
    if (M < 1 || M > TP_SKINNY_MAX_M || K < 1 || nseg < 1 || (beta != 0.0f && beta != 1.0f)) return 0;
    for (int i = 0; i < nseg; i++)
        if (seg[i].N < 1 || (bf16 ? !seg[i].Bh : !seg[i].B)) return 0;
    return 1;
}

int tp_skinny_multi(int bf16, int M, int K, float alpha, const float *A, int lda, float beta, int nseg,
                    const tp_skinny_seg *seg, int par) {
    if (!seg_ok(M, K, nseg, seg, beta, bf16)) return -1;
#if defined(__AVX512F__)
#if !defined(__AVX512BF16__)
    if (bf16) return -1;
#endif
    uint16_t stackbuf[4096], *ah = NULL;
    if (bf16) { /* A rounded to bf16 once for every segment */
        ah = (size_t)M * K <= 4096 ? stackbuf : malloc((size_t)M * K * sizeof *ah);
        if (!ah) return -1;
        for (int m = 0; m < M; m++) tp_bf16_convert(A + (size_t)m * lda, (size_t)K, ah + (size_t)m * K);
    }
    switch (M) {
    case 1: skinny_1(nseg, seg, K, alpha, A, lda, ah, beta, par); break;
    case 2: skinny_2(nseg, seg, K, alpha, A, lda, ah, beta, par); break;
    case 3: skinny_3(nseg, seg, K, alpha, A, lda, ah, beta, par); break;
    case 4: skinny_4(nseg, seg, K, alpha, A, lda, ah, beta, par); break;
    default: skinny_tiles(M, nseg, seg, K, alpha, A, lda, ah, beta, par); break;
    }
    if (ah != stackbuf) free(ah);
    return 0;
#else
    (void)alpha, (void)A, (void)lda, (void)par;
    return -1;
#endif
}

int tp_skinny_f32(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc, int par) {
    tp_skinny_seg sg = {B, NULL, N, ldb, C, ldc};
    return tp_skinny_multi(0, M, K, alpha, A, lda, beta, 1, &sg, par);
}

int tp_skinny_bf16(int M, int N, int K, float alpha, const float *A, int lda, const unsigned short *Bh, float beta,
                   float *C, int ldc, int par) {
    tp_skinny_seg sg = {NULL, Bh, N, K, C, ldc};
    return tp_skinny_multi(1, M, K, alpha, A, lda, beta, 1, &sg, par);
}
