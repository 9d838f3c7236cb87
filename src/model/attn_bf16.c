/* Causal attention of one head with bf16 products (fp32 accumulation and softmax), on AMX tiles
 * or on AVX512-BF16 dot products.
 *
 * Built where the compiler targets AVX512-BF16 (NATIVE=1 on such a CPU: AMD Zen 4/5, Intel Cooper
 * Lake, Sapphire Rapids and later); the AMX tiles too where it also targets AMX-BF16. Elsewhere
 * the entry points report "not available" and the callers keep their fp32 products. At run time
 * the CPU must list AVX512-BF16 (and AMX-TILE, AMX-BF16 for the tiles, with Linux granting the
 * process the tile state through arch_prctl ARCH_REQ_XCOMP_PERM, asked once). TAPER_ATTENTION
 * caps the choice: fp32 (OpenBLAS's products), avx512 (dot products even where AMX is), amx.
 *
 * Layout. A product C(32 x 32 fp32) += A(32 x 32k bf16, row-major) B where B holds 32k x 32 bf16
 * as 16k rows of 32 bf16 pairs ("VNNI": row r, column n = (B[2r][n], B[2r+1][n])): the operand
 * both AMX's TDPBF16PS and AVX512-BF16's VDPBF16PS take. One head call packs
 *   Kp[hd/2][Tkp]   pairs of K's columns, key-major within a row: B of S = Q K^T
 *   Vp[Tkp/2][hd]   pairs of consecutive keys: B of O = P V
 * once, then walks query blocks of TP_ATT_BLOCK rows as the fp32 kernel does: S for the block's
 * visible keys, an exact softmax per row in fp32 (the same max, exp and sum as the fp32 path),
 * P rounded to bf16, O = P V. Every product is in blocks of 32 rows x 32 columns (2x2 tiles);
 * rows and keys are padded with zeros to multiples of 32. */
#include "model/kernels.h"
#include "model/simd512.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define TP_ATT_BF16 1
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define TP_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#ifdef TP_ATT_BF16
enum { K_NONE = 0, K_DOT = 1, K_AMX = 2 };
static int g_have;         /* the best kernel this build and CPU run */
static int g_env_cap = K_AMX, g_cap = K_AMX; /* TAPER_ATTENTION; tests change g_cap */
static int g_tiles_form;                      /* tests: bwd_tiles on dot products too */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void probe(void) {
    unsigned a, b, c, d;
    g_have = K_NONE;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 16)) && /* AVX512F */
        __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)))     /* AVX512-BF16 */
        g_have = K_DOT;
#ifdef TP_AMX
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
    if (g_have && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22)) && (d & (1u << 24)) && /* AMX-BF16, -TILE */
        syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0)
        g_have = K_AMX;
#endif
    const char *e = getenv("TAPER_ATTENTION"); /* A/B timings: cap the kernel */
    if (e && *e) {
        if (!strcmp(e, "fp32"))
            g_env_cap = K_NONE;
        else if (!strcmp(e, "avx512"))
            g_env_cap = K_DOT;
        else if (strcmp(e, "amx"))
            fprintf(stderr, "taper: TAPER_ATTENTION=%s is none of fp32, avx512, amx: ignored\n", e);
    }
    g_cap = g_env_cap;
}

#ifdef TP_AMX
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_cfg;

/* Every tile 16 rows x 64 bytes: 0-3 accumulators, 4-5 A, 6-7 B. */
static void tiles_on(void) {
    tile_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

/* C(32 x 32*nn fp32, row stride ldc floats) = A(32 x 32*kk bf16, row stride lda elements) times
 * B (VNNI: kk*16 pair rows of 32*nn... columns, row stride ldb pairs): 2x2 tiles at a time. */
static void tile_gemm_32(const uint16_t *A, int lda, const uint32_t *B, int ldb, int kk, int nn, float *C, int ldc,
                         int acc) {
    for (int n = 0; n < nn; n++) {
        float *c = C + (size_t)n * 32;
        if (acc) {
            _tile_loadd(0, c, ldc * 4);
            _tile_loadd(1, c + 16, ldc * 4);
            _tile_loadd(2, c + (size_t)16 * ldc, ldc * 4);
            _tile_loadd(3, c + (size_t)16 * ldc + 16, ldc * 4);
        } else {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        }
        for (int k = 0; k < kk; k++) {
            const uint16_t *a = A + (size_t)k * 32;
            const uint32_t *bb = B + (size_t)k * 16 * ldb + (size_t)n * 32;
            _tile_loadd(4, a, lda * 2);
            _tile_loadd(5, a + (size_t)16 * lda, lda * 2);
            _tile_loadd(6, bb, ldb * 4);
            _tile_loadd(7, bb + 16, ldb * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, c, ldc * 4);
        _tile_stored(1, c + 16, ldc * 4);
        _tile_stored(2, c + (size_t)16 * ldc, ldc * 4);
        _tile_stored(3, c + (size_t)16 * ldc + 16, ldc * 4);
    }
}

#endif /* TP_AMX */

/* The 32-bit word w of a (a bf16 pair) in every lane. */
static inline __m512bh word_bcast(const unsigned char *a, size_t w) {
    uint32_t v;
    memcpy(&v, a + 4 * w, sizeof v);
    return (__m512bh)_mm512_set1_epi32((int)v);
}

/* tile_gemm_32's product on AVX512-BF16 (VDPBF16PS): per block of 32 columns, 8 rows at a time
 * in 16 accumulators, each pair row of B loaded once per 8 rows and every A pair broadcast. A's
 * pair p of row m is the 32-bit word m * ra + p * pa of A: ra = lda / 2, pa = 1 for row-major
 * bf16 (dot_gemm_32); ra = 1, pa = ldp for A given by pairs of its columns (dot_gemm_32_pt). */
static inline __attribute__((always_inline)) void dot_gemm_core(const void *A, size_t ra, size_t pa,
                                                                const uint32_t *B, int ldb, int kk, int nn, float *C,
                                                                int ldc, int acc) {
    const int np = kk * 16; /* pair rows of B */
    for (int n = 0; n < nn; n++) {
        for (int m0 = 0; m0 < 32; m0 += 8) {
            __m512 c0[8], c1[8];
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                float *cr = C + (size_t)(m0 + r) * ldc + (size_t)n * 32;
                c0[r] = acc ? _mm512_loadu_ps(cr) : _mm512_setzero_ps();
                c1[r] = acc ? _mm512_loadu_ps(cr + 16) : _mm512_setzero_ps();
            }
            const unsigned char *a = (const unsigned char *)A + 4 * (size_t)m0 * ra;
            const uint32_t *b = B + (size_t)n * 32;
            for (int p = 0; p < np; p++, b += ldb, a += 4 * pa) {
                const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    const __m512bh av = word_bcast(a, (size_t)r * ra);
                    c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
                    c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                float *cr = C + (size_t)(m0 + r) * ldc + (size_t)n * 32;
                _mm512_storeu_ps(cr, c0[r]);
                _mm512_storeu_ps(cr + 16, c1[r]);
            }
        }
    }
}

/* C (+)= A B, A 32 rows of bf16, lda elements apart (lda even). */
static void dot_gemm_32(const uint16_t *A, int lda, const uint32_t *B, int ldb, int kk, int nn, float *C, int ldc,
                        int acc) {
    dot_gemm_core(A, (size_t)lda / 2, 1, B, ldb, kk, nn, C, ldc, acc);
}

/* C (+)= A B with A given by pairs of its columns: A(m, pair p) = Ap[p * ldp + m], the layout
 * pack_rows gives the matrix whose transpose A is (P and dS as pairs of query rows, read as P^T
 * and dS^T). */
static void dot_gemm_32_pt(const uint32_t *Ap, int ldp, const uint32_t *B, int ldb, int kk, int nn, float *C, int ldc,
                           int acc) {
    dot_gemm_core(Ap, 1, (size_t)ldp, B, ldb, kk, nn, C, ldc, acc);
}

/* C(32 x 32*nn) (+)= A B on the kernel k chose. */
static void gemm_32(int k, const uint16_t *A, int lda, const uint32_t *B, int ldb, int kk, int nn, float *C, int ldc,
                    int acc) {
#ifdef TP_AMX
    if (k == K_AMX) {
        tile_gemm_32(A, lda, B, ldb, kk, nn, C, ldc, acc);
        return;
    }
#endif
    (void)k;
    dot_gemm_32(A, lda, B, ldb, kk, nn, C, ldc, acc);
}

static void tiles_begin(int k) {
#ifdef TP_AMX
    if (k == K_AMX) tiles_on();
#endif
    (void)k;
}

static void tiles_end(int k) {
#ifdef TP_AMX
    if (k == K_AMX) _tile_release();
#endif
    (void)k;
}

/* The mask of lanes [a, b) of 16 (either end may lie outside 0..16). */
static inline __mmask16 lanes(int a, int b) {
    return (__mmask16)((b >= 16 ? 0xffffu : b <= 0 ? 0u : (1u << b) - 1u) &
                       (a <= 0 ? 0xffffu : a >= 16 ? 0u : ~((1u << a) - 1u)));
}

/* pb[0..n) = bf16(row[j] * inv) for lo <= j < nvis, 0 elsewhere (n a multiple of 16). */
static inline void probs_bf16(const float *row, int lo, int nvis, int n, float inv, uint16_t *pb) {
    const __m512 vi = _mm512_set1_ps(inv);
    for (int j = 0; j < n; j += 16) {
        __mmask16 m = lanes(lo - j, nvis - j);
        __m512 v = _mm512_maskz_mul_ps(m, _mm512_maskz_loadu_ps(m, row + j), vi);
        _mm256_storeu_si256((__m256i *)(pb + j), (__m256i)_mm512_cvtneps_pbh(v));
    }
}

/* X (n rows of hd floats, stride ld) as the B of a product with X^T: P[q][j] = the bf16 pair
 * (X[j][2q], X[j][2q+1]), q < hd/2, j < np (rows past n are zero). np a multiple of 16. */
static void pack_cols(const float *X, size_t ld, int n, int hd, uint32_t *P, int np) {
    int hp = hd / 2;
    uint32_t blk[16 * 256];
    for (int j0 = 0; j0 < np; j0 += 16) {
        for (int j = 0; j < 16; j++) {
            if (j0 + j < n)
                tp_bf16_convert(X + (size_t)(j0 + j) * ld, (size_t)hd, (uint16_t *)(blk + (size_t)j * hp));
            else
                memset(blk + (size_t)j * hp, 0, (size_t)hp * 4);
        }
        for (int q = 0; q < hp; q++) {
            uint32_t *d = P + (size_t)q * np + j0;
            for (int j = 0; j < 16; j++) d[j] = blk[(size_t)j * hp + q];
        }
    }
}

/* X (n rows of w floats, stride ld) as the B of a product with X: P[r][e] = the bf16 pair
 * (X[2r][e], X[2r+1][e]), r < np/2 (rows past n are zero). w a multiple of 16, np even. */
static void pack_rows(const float *X, size_t ld, int n, int w, uint32_t *P, int np) {
    for (int r = 0; r < np / 2; r++) {
        const float *x0 = 2 * r < n ? X + (size_t)(2 * r) * ld : NULL;
        const float *x1 = 2 * r + 1 < n ? X + (size_t)(2 * r + 1) * ld : NULL;
        uint32_t *dst = P + (size_t)r * w;
        for (int e = 0; e < w; e += 16) {
            __m512i lo = x0 ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x0 + e)))
                            : _mm512_setzero_si512();
            __m512i hi = x1 ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x1 + e)))
                            : _mm512_setzero_si512();
            _mm512_storeu_si512(dst + e, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

/* X (n rows of hd floats, stride ld) transposed to bf16: D[e][i] = X[i][e], i < np (zero past n). */
static void pack_t(const float *X, size_t ld, int n, int hd, uint16_t *D, int np) {
    float blk[16 * 512];
    for (int i0 = 0; i0 < np; i0 += 16) {
        for (int i = 0; i < 16; i++) {
            if (i0 + i < n)
                memcpy(blk + (size_t)i * hd, X + (size_t)(i0 + i) * ld, (size_t)hd * 4);
            else
                memset(blk + (size_t)i * hd, 0, (size_t)hd * 4);
        }
        for (int e = 0; e < hd; e++) {
            __m512 v = _mm512_i32gather_ps(_mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4,
                                                                                3, 2, 1, 0),
                                                               _mm512_set1_epi32(hd)),
                                           blk + e, 4);
            _mm256_storeu_si256((__m256i *)(D + (size_t)e * np + i0), (__m256i)_mm512_cvtneps_pbh(v));
        }
    }
}

/* D[j][e] += s * At[e][j] for j < n, e < hd (At rows ld apart; hd a multiple of 16). */
static void add_t(const float *At, int ld, int n, int hd, float s, float *D, size_t ldd) {
    float blk[512 * 16];
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32(16));
    const __m512 vs = _mm512_set1_ps(s);
    for (int j0 = 0; j0 < n; j0 += 16) {
        for (int e = 0; e < hd; e++) _mm512_storeu_ps(blk + (size_t)e * 16, _mm512_loadu_ps(At + (size_t)e * ld + j0));
        int nj = n - j0 < 16 ? n - j0 : 16;
        for (int j = 0; j < nj; j++) {
            float *d = D + (size_t)(j0 + j) * ldd;
            for (int e = 0; e < hd; e += 16) {
                __m512 v = _mm512_i32gather_ps(idx, blk + (size_t)e * 16 + j, 4);
                _mm512_storeu_ps(d + e, _mm512_fmadd_ps(vs, v, _mm512_loadu_ps(d + e)));
            }
        }
    }
}

static inline int up32(int x) { return (x + 31) & ~31; }

/* The backward's query block at row i0: its rows (bq, padded to bqp = 32 mp), its keys from kmin
 * (aligned down to 32) over nkp (a multiple of 32), and its rows of Q and dO in bf16 (Qb, dOb;
 * rows bq .. bqp zero). */
static void block_begin(const float *Q, size_t ldq, const float *dO, size_t ldo, int i0, int T, int p0, int window,
                        int hd, uint16_t *Qb, uint16_t *dOb, int *bq_, int *kmin_, int *nkp_, int *bqp_, int *mp_) {
    int bq = T - i0 < TP_ATT_BLOCK ? T - i0 : TP_ATT_BLOCK, kmin = tp_att_first_key(p0 + i0, window) & ~31;
    int bqp = up32(bq);
    *bq_ = bq, *kmin_ = kmin, *nkp_ = up32(p0 + i0 + bq - kmin), *bqp_ = bqp, *mp_ = bqp / 32;
    for (int r = 0; r < bq; r++) {
        tp_bf16_convert(Q + (size_t)(i0 + r) * ldq, (size_t)hd, Qb + (size_t)r * hd);
        tp_bf16_convert(dO + (size_t)(i0 + r) * ldo, (size_t)hd, dOb + (size_t)r * hd);
    }
    if (bq < bqp) {
        memset(Qb + (size_t)bq * hd, 0, (size_t)(bqp - bq) * hd * 2);
        memset(dOb + (size_t)bq * hd, 0, (size_t)(bqp - bq) * hd * 2);
    }
}

/* dO . O of one row (hd a multiple of 16) in every lane: sum_j P dP, the shift of dS. */
static inline __m512 row_dot(const float *go, const float *o, int hd) {
    __m512 acc = _mm512_setzero_ps();
    for (int e = 0; e < hd; e += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(go + e), _mm512_loadu_ps(o + e), acc);
    return _mm512_set1_ps(_mm512_reduce_add_ps(acc));
}

/* dQ rows i0 .. i0+bq = scale G. */
static void store_dq(const float *G, int bq, int hd, float scale, float *dQ, size_t lddq, int i0) {
    const __m512 vs = _mm512_set1_ps(scale);
    for (int r = 0; r < bq; r++) {
        float *d = dQ + (size_t)(i0 + r) * lddq;
        const float *g = G + (size_t)r * hd;
        for (int e = 0; e < hd; e += 16) _mm512_storeu_ps(d + e, _mm512_mul_ps(vs, _mm512_loadu_ps(g + e)));
    }
}

/* One malloc cut into n pieces of sz[i] bytes, each 64-byte aligned (part[i]); free the return. */
static unsigned char *carve(const size_t *sz, int n, void **part) {
    size_t total = 64;
    for (int i = 0; i < n; i++) total += (sz[i] + 63) & ~(size_t)63;
    unsigned char *mem = malloc(total);
    if (!mem) return NULL;
    unsigned char *p = (unsigned char *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    for (int i = 0; i < n; i++) {
        part[i] = p;
        p += (sz[i] + 63) & ~(size_t)63;
    }
    return mem;
}

int tp_attention_bf16_kernel(void) {
    pthread_once(&g_once, probe);
    return g_have < g_cap ? g_have : g_cap;
}

void tp_attention_bf16_cap(int cap) {
    pthread_once(&g_once, probe);
    g_cap = cap < 0 ? g_env_cap : cap;
}

void tp_attention_bf16_tiles_form(int on) { g_tiles_form = on != 0; }

int tp_attention_head_lse_bf16(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                               size_t ldo, float *lse, int T, int p0, int window, int hd, float scale) {
    int kern = tp_attention_bf16_kernel();
    if (hd % 32 || hd > 512 || T <= 0 || kern == K_NONE) return -1;
    int Tk = p0 + T, Tkp = up32(Tk), hp = hd / 2, BQ = TP_ATT_BLOCK;
    size_t nkmax = (size_t)Tkp;
    /* one allocation: Kp, Vp (pairs), Qb, Pb (bf16), S, O (fp32) */
    const size_t sz[6] = {(size_t)hp * Tkp * 4, (size_t)(Tkp / 2) * hd * 4, (size_t)BQ * hd * 2,
                          (size_t)BQ * nkmax * 2, (size_t)BQ * nkmax * 4, (size_t)BQ * hd * 4};
    void *part[6];
    unsigned char *mem = carve(sz, 6, part);
    if (!mem) return -1;
    uint32_t *Kp = part[0], *Vp = part[1];
    uint16_t *Qb = part[2], *Pb = part[3];
    float *S = part[4], *O = part[5];
    pack_cols(K, ldk, Tk, hd, Kp, Tkp);
    pack_rows(V, ldk, Tk, hd, Vp, Tkp);
    tiles_begin(kern);
    for (int i0 = 0; i0 < T; i0 += BQ) {
        int bq = T - i0 < BQ ? T - i0 : BQ, kmax = p0 + i0 + bq;
        int kmin = tp_att_first_key(p0 + i0, window) & ~31; /* aligned down to a pair of tiles */
        int nk = kmax - kmin, nkp = up32(nk), mp = up32(bq) / 32;
        for (int r = 0; r < bq; r++) tp_bf16_convert(Q + (size_t)(i0 + r) * ldq, (size_t)hd, Qb + (size_t)r * hd);
        if (bq < mp * 32) memset(Qb + (size_t)bq * hd, 0, (size_t)(mp * 32 - bq) * hd * 2);
        /* S = Q K^T, each 32-row pair only up to the keys its last row sees */
        for (int m = 0; m < mp; m++) {
            int last = p0 + i0 + (m * 32 + 32 < bq ? m * 32 + 32 : bq); /* keys [kmin, last) */
            int nn = up32(last - kmin) / 32;
            gemm_32(kern, Qb + (size_t)m * 32 * hd, hd, Kp + kmin, Tkp, hd / 32, nn, S + (size_t)m * 32 * nkp, nkp, 0);
        }
        /* exact softmax per row in fp32, P in bf16 with zeros outside the visible keys */
        for (int r = 0; r < bq; r++) {
            float *row = S + (size_t)r * nkp;
            uint16_t *pb = Pb + (size_t)r * nkp;
            int qpos = p0 + i0 + r, nvis = qpos + 1 - kmin;
            int lo = tp_att_first_key(qpos, window) - kmin;
            float mx = tp_vmax(row + lo, (size_t)(nvis - lo));
            float sum = (float)tp_exp_affine_sum(row + lo, mx, scale, row + lo, (size_t)(nvis - lo));
            probs_bf16(row, lo, nvis, nkp, 1.0f / sum, pb);
            lse[i0 + r] = mx * scale + logf(sum);
        }
        for (int r = bq; r < mp * 32; r++) memset(Pb + (size_t)r * nkp, 0, (size_t)nkp * 2);
        /* O = P V over each pair's keys */
        for (int m = 0; m < mp; m++) {
            int last = p0 + i0 + (m * 32 + 32 < bq ? m * 32 + 32 : bq);
            int kk = up32(last - kmin) / 32;
            gemm_32(kern, Pb + (size_t)m * 32 * nkp, nkp, Vp + (size_t)(kmin / 2) * hd, hd, kk, hd / 32,
                         O + (size_t)m * 32 * hd, hd, 0);
        }
        for (int r = 0; r < bq; r++) memcpy(out + (size_t)(i0 + r) * ldo, O + (size_t)r * hd, (size_t)hd * sizeof(float));
    }
    tiles_end(kern);
    free(mem);
    return 0;
}

/* One head's backward workspace, one allocation for both forms of the backward: K and V packed as
 * B of S = Q K^T and dP = dO V^T, K as B of dQ = dS K (all packed here); Q and dO as the other
 * side of dV and dK (transposed for the tiles, pairs of rows for the dot products: the same
 * bytes); fp32 accumulators of dK and dV (zeroed here); then one query block's buffers. */
typedef struct {
    unsigned char *mem;
    uint32_t *Kp, *Vt, *Kv;
    void *q2, *do2;
    float *dKa, *dVa;
    uint16_t *Qb, *dOb;
    float *S, *dP;
    uint32_t *Pv, *dSv;
    uint16_t *dSb;
    float *G;
} bwd_ws;

static int bwd_ws_init(bwd_ws *w, const float *K, const float *V, size_t ldk, int T, int p0, int hd) {
    int Tk = p0 + T, Tkp = up32(Tk), Tqp = up32(T), hp = hd / 2, BQ = TP_ATT_BLOCK;
    const size_t sz[15] = {(size_t)hp * Tkp * 4,       (size_t)hp * Tkp * 4,       (size_t)(Tkp / 2) * hd * 4,
                           (size_t)hd * Tqp * 2,       (size_t)hd * Tqp * 2,       (size_t)Tkp * hd * 4,
                           (size_t)Tkp * hd * 4,       (size_t)BQ * hd * 2,        (size_t)BQ * hd * 2,
                           (size_t)BQ * Tkp * 4,       (size_t)BQ * Tkp * 4,       (size_t)(BQ / 2) * Tkp * 4,
                           (size_t)(BQ / 2) * Tkp * 4, (size_t)BQ * Tkp * 2,       (size_t)BQ * hd * 4};
    void *part[15];
    if (!(w->mem = carve(sz, 15, part))) return -1;
    w->Kp = part[0], w->Vt = part[1], w->Kv = part[2], w->q2 = part[3], w->do2 = part[4];
    w->dKa = part[5], w->dVa = part[6], w->Qb = part[7], w->dOb = part[8], w->S = part[9], w->dP = part[10];
    w->Pv = part[11], w->dSv = part[12], w->dSb = part[13], w->G = part[14];
    pack_cols(K, ldk, Tk, hd, w->Kp, Tkp);
    pack_cols(V, ldk, Tk, hd, w->Vt, Tkp);
    pack_rows(K, ldk, Tk, hd, w->Kv, Tkp);
    memset(w->dKa, 0, sz[5]);
    memset(w->dVa, 0, sz[6]);
    return 0;
}

/* Backward of one head (tp_attention_head_bwd's contract) with bf16 products, as AMX tiles take it
 * (bwd_dot below is the AVX512-BF16 form, bit for bit the same results). Per head: K and V packed
 * as B of S = Q K^T and dP = dO V^T, K as B of dQ = dS K, Q^T and dO^T in bf16. Per query block:
 * S, P = exp(scale S - lse), dP, dS = P (dP - rowsum(dO O)) in fp32; then dV^T += dO^T P and
 * dK^T += Q^T dS (P and dS as pairs of query rows) into fp32 accumulators transposed back at the
 * end, and dQ = scale dS K. */
static int bwd_tiles(int kern, const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, const float *O,
                     const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq, float *dK, float *dV,
                     size_t lddk, int T, int p0, int window, int hd, float scale) {
    int Tk = p0 + T, Tkp = up32(Tk), Tqp = up32(T), BQ = TP_ATT_BLOCK;
    bwd_ws w;
    if (bwd_ws_init(&w, K, V, ldk, T, p0, hd)) return -1;
    uint32_t *Kp = w.Kp, *Vt = w.Vt, *Kv = w.Kv, *Pv = w.Pv, *dSv = w.dSv;
    uint16_t *Qt = w.q2, *dOt = w.do2, *Qb = w.Qb, *dOb = w.dOb, *dSb = w.dSb;
    float *dKt = w.dKa, *dVt = w.dVa, *S = w.S, *dP = w.dP, *G = w.G;
    pack_t(Q, ldq, T, hd, Qt, Tqp);
    pack_t(dO, ldo, T, hd, dOt, Tqp);
    tiles_begin(kern);
    for (int i0 = 0; i0 < T; i0 += BQ) {
        int bq, kmin, nkp, bqp, mp;
        block_begin(Q, ldq, dO, ldo, i0, T, p0, window, hd, Qb, dOb, &bq, &kmin, &nkp, &bqp, &mp);
        /* S = Q K^T and dP = dO V^T over the block's keys */
        for (int m = 0; m < mp; m++) {
            gemm_32(kern, Qb + (size_t)m * 32 * hd, hd, Kp + kmin, Tkp, hd / 32, nkp / 32, S + (size_t)m * 32 * nkp, nkp,
                         0);
            gemm_32(kern, dOb + (size_t)m * 32 * hd, hd, Vt + kmin, Tkp, hd / 32, nkp / 32, dP + (size_t)m * 32 * nkp,
                         nkp, 0);
        }
        /* P and dS in fp32, zero outside the visible keys; rows past bq zero */
        for (int r = 0; r < bqp; r++) {
            float *pr = S + (size_t)r * nkp, *dr = dP + (size_t)r * nkp;
            if (r >= bq) {
                memset(pr, 0, (size_t)nkp * 4);
                memset(dr, 0, (size_t)nkp * 4);
                memset(dSb + (size_t)r * nkp, 0, (size_t)nkp * 2);
                continue;
            }
            int qpos = p0 + i0 + r, nvis = qpos + 1 - kmin;
            int lo = tp_att_first_key(qpos, window) - kmin;
            tp_exp_affine_sum(pr + lo, lse[i0 + r] / scale, scale, pr + lo, (size_t)(nvis - lo));
            for (int j = 0; j < lo; j++) pr[j] = 0;
            for (int j = nvis; j < nkp; j++) pr[j] = 0;
            const __m512 vd = row_dot(dO + (size_t)(i0 + r) * ldo, O + (size_t)(i0 + r) * ldo, hd);
            for (int j = 0; j < nkp; j += 16) {
                __m512 pj = _mm512_loadu_ps(pr + j);
                _mm512_storeu_ps(dr + j, _mm512_mul_ps(pj, _mm512_sub_ps(_mm512_loadu_ps(dr + j), vd)));
            }
            tp_bf16_convert(dr, (size_t)nkp, dSb + (size_t)r * nkp);
        }
        pack_rows(S, (size_t)nkp, bqp, nkp, Pv, bqp);
        pack_rows(dP, (size_t)nkp, bqp, nkp, dSv, bqp);
        /* dV^T += dO^T P, dK^T += Q^T dS: hd rows, the block's keys as columns, its queries summed */
        for (int m = 0; m < hd / 32; m++) {
            gemm_32(kern, dOt + (size_t)m * 32 * Tqp + i0, Tqp, Pv, nkp, bqp / 32, nkp / 32,
                    dVt + (size_t)m * 32 * Tkp + kmin, Tkp, 1);
            gemm_32(kern, Qt + (size_t)m * 32 * Tqp + i0, Tqp, dSv, nkp, bqp / 32, nkp / 32,
                    dKt + (size_t)m * 32 * Tkp + kmin, Tkp, 1);
        }
        /* dQ = scale dS K */
        for (int m = 0; m < mp; m++)
            gemm_32(kern, dSb + (size_t)m * 32 * nkp, nkp, Kv + (size_t)(kmin / 2) * hd, hd, nkp / 32, hd / 32,
                    G + (size_t)m * 32 * hd, hd, 0);
        store_dq(G, bq, hd, scale, dQ, lddq, i0);
    }
    tiles_end(kern);
    /* the transposed accumulators back into dK, dV (added), 16 keys at a time */
    add_t(dKt, Tkp, Tk, hd, scale, dK, lddk);
    add_t(dVt, Tkp, Tk, hd, 1.0f, dV, lddk);
    free(w.mem);
    return 0;
}

/* The backward on AVX512-BF16 dot products, with the results of bwd_tiles bit for bit (up to the
 * sign of exact zeros) and less work:
 * - dV and dK come out key by key: dV += P^T dO and dK += dS^T Q read P and dS as pairs of query
 *   rows through dot_gemm_32_pt (no transposed accumulators, no transposes of Q and dO);
 * - every product stops where causality does: S, dP and dQ per 32 query rows at the last key those
 *   rows see, dV and dK per 32 keys from the first 32 query rows that see them. What is skipped
 *   is products with zeros, so the sums are unchanged;
 * - P and dS are made in one pass over two query rows at a time, straight into the bf16 forms the
 *   products take (pairs of rows, and rows): no fp32 copies, no packing passes, no sum of P. */
static int bwd_dot(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, const float *O,
                   const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq, float *dK, float *dV,
                   size_t lddk, int T, int p0, int window, int hd, float scale) {
    int Tk = p0 + T, Tkp = up32(Tk), Tqp = up32(T), BQ = TP_ATT_BLOCK, hn = hd / 32;
    bwd_ws w;
    if (bwd_ws_init(&w, K, V, ldk, T, p0, hd)) return -1;
    uint32_t *Kp = w.Kp, *Vt = w.Vt, *Kv = w.Kv, *Qv = w.q2, *dOv = w.do2, *Pv = w.Pv, *dSv = w.dSv;
    uint16_t *Qb = w.Qb, *dOb = w.dOb, *dSb = w.dSb;
    float *dKa = w.dKa, *dVa = w.dVa, *S = w.S, *dP = w.dP, *G = w.G;
    pack_rows(Q, ldq, T, hd, Qv, Tqp);
    pack_rows(dO, ldo, T, hd, dOv, Tqp);
    const __m512 vs = _mm512_set1_ps(scale);
    for (int i0 = 0; i0 < T; i0 += BQ) {
        int bq, kmin, nkp, bqp, mp;
        block_begin(Q, ldq, dO, ldo, i0, T, p0, window, hd, Qb, dOb, &bq, &kmin, &nkp, &bqp, &mp);
        /* S = Q K^T and dP = dO V^T, each 32 rows up to the last key they see */
        for (int m = 0; m < mp; m++) {
            int last = p0 + i0 + (m * 32 + 32 < bq ? m * 32 + 32 : bq), nn = up32(last - kmin) / 32;
            dot_gemm_32(Qb + (size_t)m * 32 * hd, hd, Kp + kmin, Tkp, hn, nn, S + (size_t)m * 32 * nkp, nkp, 0);
            dot_gemm_32(dOb + (size_t)m * 32 * hd, hd, Vt + kmin, Tkp, hn, nn, dP + (size_t)m * 32 * nkp, nkp, 0);
        }
        /* P = exp(scale S - lse) and dS = P (dP - dO.O) on the visible keys, zero elsewhere and on
         * rows past bq, in one pass over two rows at a time: P and dS as pairs of query rows (the B
         * of dV, dK) and dS as bf16 rows (the A of dQ), never stored in fp32 */
        for (int r = 0; r < bqp; r += 2) {
            int lo[2] = {0, 0}, nvis[2] = {0, 0}; /* rows past bq: nothing visible */
            __m512 vsub[2], vd[2];
            for (int x = 0; x < 2; x++) {
                vsub[x] = vd[x] = _mm512_setzero_ps();
                if (r + x >= bq) continue;
                int qpos = p0 + i0 + r + x;
                nvis[x] = qpos + 1 - kmin;
                lo[x] = tp_att_first_key(qpos, window) - kmin;
                vsub[x] = _mm512_set1_ps(lse[i0 + r + x] / scale);
                vd[x] = row_dot(dO + (size_t)(i0 + r + x) * ldo, O + (size_t)(i0 + r + x) * ldo, hd);
            }
            const float *s0 = S + (size_t)r * nkp, *d0 = dP + (size_t)r * nkp;
            uint32_t *pv = Pv + (size_t)(r / 2) * nkp, *sv = dSv + (size_t)(r / 2) * nkp;
            uint16_t *sb = dSb + (size_t)r * nkp;
            for (int j = 0; j < nkp; j += 16) {
                __m512i hp[2], hs[2];
                for (int x = 0; x < 2; x++) {
                    __mmask16 km = lanes(lo[x] - j, nvis[x] - j); /* the visible keys */
                    __m512 pj = _mm512_sub_ps(_mm512_maskz_loadu_ps(km, s0 + (size_t)x * nkp + j), vsub[x]);
                    if (scale != 1.0f) pj = _mm512_mul_ps(pj, vs);
                    pj = _mm512_maskz_mov_ps(km, v_exp(pj));
                    __m512 dj = _mm512_maskz_mul_ps(
                        km, pj, _mm512_sub_ps(_mm512_maskz_loadu_ps(km, d0 + (size_t)x * nkp + j), vd[x]));
                    __m256bh bp = _mm512_cvtneps_pbh(pj), bs = _mm512_cvtneps_pbh(dj);
                    _mm256_storeu_si256((__m256i *)(sb + (size_t)x * nkp + j), (__m256i)bs);
                    hp[x] = _mm512_cvtepu16_epi32((__m256i)bp);
                    hs[x] = _mm512_cvtepu16_epi32((__m256i)bs);
                }
                _mm512_storeu_si512(pv + j, _mm512_or_si512(hp[0], _mm512_slli_epi32(hp[1], 16)));
                _mm512_storeu_si512(sv + j, _mm512_or_si512(hs[0], _mm512_slli_epi32(hs[1], 16)));
            }
        }
        /* dV += P^T dO and dK += dS^T Q, 32 keys at a time, over the 32-row groups of queries that
         * see any of them */
        for (int n = 0; n < nkp / 32; n++) {
            int kb = kmin + 32 * n, r0 = kb - (p0 + i0);
            r0 = r0 <= 0 ? 0 : r0 & ~31;
            int kk = (bqp - r0) / 32;
            dot_gemm_32_pt(Pv + (size_t)(r0 / 2) * nkp + 32 * n, nkp, dOv + (size_t)((i0 + r0) / 2) * hd, hd, kk, hn,
                           dVa + (size_t)kb * hd, hd, 1);
            dot_gemm_32_pt(dSv + (size_t)(r0 / 2) * nkp + 32 * n, nkp, Qv + (size_t)((i0 + r0) / 2) * hd, hd, kk, hn,
                           dKa + (size_t)kb * hd, hd, 1);
        }
        /* dQ = scale dS K, each 32 rows over the keys they see */
        for (int m = 0; m < mp; m++) {
            int last = p0 + i0 + (m * 32 + 32 < bq ? m * 32 + 32 : bq), kk = up32(last - kmin) / 32;
            dot_gemm_32(dSb + (size_t)m * 32 * nkp, nkp, Kv + (size_t)(kmin / 2) * hd, hd, kk, hn,
                        G + (size_t)m * 32 * hd, hd, 0);
        }
        store_dq(G, bq, hd, scale, dQ, lddq, i0);
    }
    /* into dK (times scale) and dV, added */
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int j = 0; j < Tk; j++) {
        float *dk = dK + (size_t)j * lddk, *dv = dV + (size_t)j * lddk;
        const float *ka = dKa + (size_t)j * hd, *va = dVa + (size_t)j * hd;
        for (int e = 0; e < hd; e += 16) {
            _mm512_storeu_ps(dk + e, _mm512_fmadd_ps(vs, _mm512_loadu_ps(ka + e), _mm512_loadu_ps(dk + e)));
            _mm512_storeu_ps(dv + e, _mm512_fmadd_ps(one, _mm512_loadu_ps(va + e), _mm512_loadu_ps(dv + e)));
        }
    }
    free(w.mem);
    return 0;
}

int tp_attention_head_bwd_bf16(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, const float *O,
                               const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq, float *dK, float *dV,
                               size_t lddk, int T, int p0, int window, int hd, float scale) {
    int kern = tp_attention_bf16_kernel();
    if (hd % 32 || hd > 512 || T <= 0 || kern == K_NONE) return -1;
    if (kern == K_DOT && !g_tiles_form) return bwd_dot(Q, ldq, K, V, ldk, O, dO, ldo, lse, dQ, lddq, dK, dV, lddk, T, p0, window, hd, scale);
    return bwd_tiles(kern, Q, ldq, K, V, ldk, O, dO, ldo, lse, dQ, lddq, dK, dV, lddk, T, p0, window, hd, scale);
}

#else /* no AVX512-BF16 in this build */

int tp_attention_bf16_kernel(void) { return 0; }
void tp_attention_bf16_cap(int cap) { (void)cap; }
void tp_attention_bf16_tiles_form(int on) { (void)on; }
int tp_attention_head_lse_bf16(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                               size_t ldo, float *lse, int T, int p0, int window, int hd, float scale) {
    (void)Q, (void)ldq, (void)K, (void)V, (void)ldk, (void)out, (void)ldo, (void)lse, (void)T, (void)p0, (void)window,
        (void)hd, (void)scale;
    return -1;
}
int tp_attention_head_bwd_bf16(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, const float *O,
                               const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq, float *dK, float *dV,
                               size_t lddk, int T, int p0, int window, int hd, float scale) {
    (void)Q, (void)ldq, (void)K, (void)V, (void)ldk, (void)O, (void)dO, (void)ldo, (void)lse, (void)dQ, (void)lddq,
        (void)dK, (void)dV, (void)lddk, (void)T, (void)p0, (void)window, (void)hd, (void)scale;
    return -1;
}

#endif
