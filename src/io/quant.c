/* ggml tensor types: block layouts, dequantisation to fp32 and quantisation from fp32.
 * Layouts follow the ggml/GGUF spec (block_q4_0 ... block_q8_K). No file parsing here.
 *
 * Every dequantiser computes in the same order as ggml's reference code and gguf-py
 * (scale products first, then times the quant, then the offset), so results are
 * bit-identical to gguf-py's dequantize. Where an offset is added (Q4_1, Q5_1, Q2_K, Q4_K,
 * Q5_K) the product before it is exact in fp32 (an fp16 scale times integers of at most
 * 4+6 bits: <= 21 significant bits), so a compiler fusing it into an FMA changes nothing. */
#include "taper/gguf.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

/* Parallel loop when the local `par` is nonzero (small inputs stay on the calling thread). */
#ifdef _OPENMP
#define TP_OMP_FOR_IF_PAR _Pragma("omp parallel for schedule(static) if(par)")
#else
#define TP_OMP_FOR_IF_PAR
#endif

#define QK_K 256
/* below this many elements a parallel region costs more than it saves */
#define PAR_MIN_ELEMS ((size_t)1 << 16)

typedef struct {
    const char *name;
    uint32_t blck;   /* elements per block; 0 = no such type */
    uint32_t size;   /* bytes per block */
} type_traits;

/* Every type id ggml has assigned (as of gguf-py 0.19). Types without a dequantiser
 * here still get sizes so a file holding them opens; tp_dequantize reports them. */
static const type_traits traits[] = {
    [TP_GGML_F32] = {"F32", 1, 4},
    [TP_GGML_F16] = {"F16", 1, 2},
    [TP_GGML_Q4_0] = {"Q4_0", 32, 2 + 16},
    [TP_GGML_Q4_1] = {"Q4_1", 32, 2 + 2 + 16},
    [TP_GGML_Q5_0] = {"Q5_0", 32, 2 + 4 + 16},
    [TP_GGML_Q5_1] = {"Q5_1", 32, 2 + 2 + 4 + 16},
    [TP_GGML_Q8_0] = {"Q8_0", 32, 2 + 32},
    [TP_GGML_Q8_1] = {"Q8_1", 32, 2 + 2 + 32},    /* ggml: half d, half s, int8 qs[32] */
    [TP_GGML_Q2_K] = {"Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2},
    [TP_GGML_Q3_K] = {"Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2},
    [TP_GGML_Q4_K] = {"Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2},
    [TP_GGML_Q5_K] = {"Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2},
    [TP_GGML_Q6_K] = {"Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2},
    [TP_GGML_Q8_K] = {"Q8_K", QK_K, 4 + QK_K + QK_K / 8},
    [TP_GGML_IQ2_XXS] = {"IQ2_XXS", QK_K, 2 + QK_K / 4},
    [TP_GGML_IQ2_XS] = {"IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32},
    [TP_GGML_IQ3_XXS] = {"IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8},
    [TP_GGML_IQ1_S] = {"IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16},
    [TP_GGML_IQ4_NL] = {"IQ4_NL", 32, 2 + 16},
    [TP_GGML_IQ3_S] = {"IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4},
    [TP_GGML_IQ2_S] = {"IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16},
    [TP_GGML_IQ4_XS] = {"IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64},
    [TP_GGML_I8] = {"I8", 1, 1},
    [TP_GGML_I16] = {"I16", 1, 2},
    [TP_GGML_I32] = {"I32", 1, 4},
    [TP_GGML_I64] = {"I64", 1, 8},
    [TP_GGML_F64] = {"F64", 1, 8},
    [TP_GGML_IQ1_M] = {"IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32},
    [TP_GGML_BF16] = {"BF16", 1, 2},
    [TP_GGML_TQ1_0] = {"TQ1_0", QK_K, 2 + 4 * 13},
    [TP_GGML_TQ2_0] = {"TQ2_0", QK_K, 2 + 64},
    [TP_GGML_MXFP4] = {"MXFP4", 32, 1 + 16},
    [TP_GGML_NVFP4] = {"NVFP4", 64, 4 + 32},
    [TP_GGML_Q1_0] = {"Q1_0", 128, 2 + 16},
};
#define N_TRAITS (sizeof traits / sizeof traits[0])

static const type_traits *traits_of(tp_ggml_type t) {
    unsigned u = (unsigned)t;
    return u < N_TRAITS && traits[u].blck ? &traits[u] : NULL;
}

size_t tp_ggml_block_size(tp_ggml_type t) {
    const type_traits *tr = traits_of(t);
    return tr ? tr->blck : 0;
}

size_t tp_ggml_type_size(tp_ggml_type t) {
    const type_traits *tr = traits_of(t);
    return tr ? tr->size : 0;
}

const char *tp_ggml_type_name(tp_ggml_type t) {
    const type_traits *tr = traits_of(t);
    return tr ? tr->name : "unknown";
}

int tp_ggml_can_dequantize(tp_ggml_type t) {
    switch (t) {
    case TP_GGML_F32: case TP_GGML_F16: case TP_GGML_BF16:
    case TP_GGML_Q4_0: case TP_GGML_Q4_1: case TP_GGML_Q5_0: case TP_GGML_Q5_1:
    case TP_GGML_Q8_0: case TP_GGML_Q8_1:
    case TP_GGML_Q2_K: case TP_GGML_Q3_K: case TP_GGML_Q4_K: case TP_GGML_Q5_K:
    case TP_GGML_Q6_K: case TP_GGML_Q8_K:
        return 1;
    default:
        return 0;
    }
}

int tp_ggml_can_quantize(tp_ggml_type t) {
    return t == TP_GGML_F32 || t == TP_GGML_F16 || t == TP_GGML_BF16 || t == TP_GGML_Q8_0;
}

/* ---- fp16 table: one lookup per element for F16 tensors and per block for the rest ---- */

static float fp16_table[65536];
static pthread_once_t fp16_once = PTHREAD_ONCE_INIT;

static void fp16_table_init(void) {
    for (uint32_t i = 0; i < 65536; i++) fp16_table[i] = tp_fp16_to_fp32((uint16_t)i);
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline float h2f(const uint8_t *p) { return fp16_table[rd16(p)]; }

/* ---- one block each: b points at the block, y receives blck floats ---- */

static void deq_q4_0(const uint8_t *b, float *y) {
    const float d = h2f(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((qs[j] & 0x0f) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    const float d = h2f(b), m = h2f(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        float p0 = (float)(qs[j] & 0x0f) * d, p1 = (float)(qs[j] >> 4) * d;
        y[j] = p0 + m;
        y[j + 16] = p1 + m;
    }
}

/* Q5: bit j of qh is the fifth bit of element j (elements 0..15 in the low nibbles of qs,
 * 16..31 in the high nibbles). */
static void deq_q5_0(const uint8_t *b, float *y) {
    const float d = h2f(b);
    const uint32_t qh = rd32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = (float)(lo - 16) * d;
        y[j + 16] = (float)(hi - 16) * d;
    }
}

static void deq_q5_1(const uint8_t *b, float *y) {
    const float d = h2f(b), m = h2f(b + 2);
    const uint32_t qh = rd32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        float p0 = (float)lo * d, p1 = (float)hi * d;
        y[j] = p0 + m;
        y[j + 16] = p1 + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y) {
    const float d = h2f(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
}

static void deq_q8_1(const uint8_t *b, float *y) {   /* s (b+2) is a cached sum, unused */
    const float d = h2f(b);
    const int8_t *qs = (const int8_t *)(b + 4);
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
}

/* Q2_K: scales[16] (low nibble scale, high nibble min per 16 elements), qs[64], d, dmin.
 * Element v = h*128 + s*32 + l takes bits 2s..2s+1 of qs[h*32 + l]. */
static void deq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    const float d = h2f(b + 80), dmin = h2f(b + 82);
    for (int v0 = 0; v0 < QK_K; v0 += 16) {
        const int h = v0 / 128, s = (v0 % 128) / 32, l0 = v0 % 32;
        const float dl = d * (float)(sc[v0 / 16] & 0x0f), ml = dmin * (float)(sc[v0 / 16] >> 4);
        for (int l = l0; l < l0 + 16; l++) {
            float p = dl * (float)((qs[h * 32 + l] >> (2 * s)) & 3);
            y[v0 + l - l0] = p - ml;
        }
    }
}

/* Q3_K: hmask[32], qs[64], scales[12] (sixteen 6-bit signed scales, offset 32), d.
 * Element v = h*128 + s*32 + l: low two bits from qs[h*32 + l] >> 2s, and 4 is subtracted
 * unless bit (v/32) of hmask[l] is set. */
static void deq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32, *sp = b + 96;
    const float d = h2f(b + 108);
    for (int i = 0; i < 16; i++) {
        int lo = (sp[i % 8] >> (4 * (i / 8))) & 0x0f;
        int hi = (sp[8 + i % 4] >> (2 * (i / 4))) & 3;
        const float dl = d * (float)((lo | (hi << 4)) - 32);
        const int v0 = i * 16, h = v0 / 128, s = (v0 % 128) / 32, l0 = v0 % 32;
        for (int l = l0; l < l0 + 16; l++) {
            int q = (qs[h * 32 + l] >> (2 * s)) & 3;
            if (!((hm[l] >> (h * 4 + s)) & 1)) q -= 4;
            y[v0 + l - l0] = dl * (float)q;
        }
    }
}

/* 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K/Q5_K. */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q4_K: d, dmin, scales[12], qs[128]; sub-block j (32 elements) takes nibble (j & 1) of
 * qs[(j/2)*32 + l]. */
static void deq_q4_k(const uint8_t *b, float *y) {
    const float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *sp = b + 4, *qs = b + 16;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        scale_min_k4(j, sp, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        const uint8_t *q = qs + (j / 2) * 32;
        const int sh = 4 * (j & 1);
        for (int l = 0; l < 32; l++) {
            float p = d1 * (float)((q[l] >> sh) & 0x0f);
            y[j * 32 + l] = p - m1;
        }
    }
}

/* Q5_K: as Q4_K plus qh[32]: bit j of qh[l] is the fifth bit of element l of sub-block j. */
static void deq_q5_k(const uint8_t *b, float *y) {
    const float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *sp = b + 4, *qh = b + 16, *qs = b + 48;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        scale_min_k4(j, sp, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        const uint8_t *q = qs + (j / 2) * 32;
        const int sh = 4 * (j & 1);
        for (int l = 0; l < 32; l++) {
            int v = ((q[l] >> sh) & 0x0f) | (((qh[l] >> j) & 1) << 4);
            float p = d1 * (float)v;
            y[j * 32 + l] = p - m1;
        }
    }
}

/* Q6_K: ql[128], qh[64], scales[16] (int8), d. In half h (128 elements), element r takes
 * nibble (r/64) of ql[h*64 + r%64] and bits 2*(r/32).. of qh[h*32 + r%32]; offset 32. */
static void deq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = h2f(b + 208);
    for (int h = 0; h < 2; h++) {
        for (int r = 0; r < 128; r++) {
            int lo = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
            int hi = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 3;
            const int v = h * 128 + r;
            const float ds = d * (float)sc[v / 16];
            y[v] = ds * (float)((lo | (hi << 4)) - 32);
        }
    }
}

static void deq_q8_k(const uint8_t *b, float *y) {   /* bsums (b+260) are cached sums, unused */
    uint32_t bits = rd32(b);
    float d;
    memcpy(&d, &bits, 4);
    const int8_t *qs = (const int8_t *)(b + 4);
    for (int j = 0; j < QK_K; j++) y[j] = (float)qs[j] * d;
}

typedef void (*block_fn)(const uint8_t *, float *);

static block_fn block_deq(tp_ggml_type t) {
    switch (t) {
    case TP_GGML_Q4_0: return deq_q4_0;
    case TP_GGML_Q4_1: return deq_q4_1;
    case TP_GGML_Q5_0: return deq_q5_0;
    case TP_GGML_Q5_1: return deq_q5_1;
    case TP_GGML_Q8_0: return deq_q8_0;
    case TP_GGML_Q8_1: return deq_q8_1;
    case TP_GGML_Q2_K: return deq_q2_k;
    case TP_GGML_Q3_K: return deq_q3_k;
    case TP_GGML_Q4_K: return deq_q4_k;
    case TP_GGML_Q5_K: return deq_q5_k;
    case TP_GGML_Q6_K: return deq_q6_k;
    case TP_GGML_Q8_K: return deq_q8_k;
    default: return NULL;
    }
}

/* Blocks are processed in chunks so each thread gets long contiguous runs. */
#define CHUNK_BLOCKS 256

tp_status tp_dequantize(tp_ggml_type t, const void *src, float *dst, size_t n) {
    const type_traits *tr = traits_of(t);
    if (!tr) return tp_fail(TP_ERR_UNSUPPORTED, "dequantize: unknown tensor type %u", (unsigned)t);
    if (!tp_ggml_can_dequantize(t))
        return tp_fail(TP_ERR_UNSUPPORTED, "dequantize: tensor type %s (%u) is not supported",
                       tr->name, (unsigned)t);
    if (n % tr->blck != 0)
        return tp_fail(TP_ERR_ARG, "dequantize %s: %zu elements is not a multiple of the block size %u",
                       tr->name, n, (unsigned)tr->blck);
    if (n == 0) return TP_OK;
    if (!src || !dst) return tp_fail(TP_ERR_ARG, "dequantize %s: NULL buffer", tr->name);
    pthread_once(&fp16_once, fp16_table_init);
    const uint8_t *s = src;
    const long long nn = (long long)n;
    const int par = n >= PAR_MIN_ELEMS;
    (void)par;
    if (t == TP_GGML_F32) {
        memcpy(dst, src, n * 4);
    } else if (t == TP_GGML_F16) {
        TP_OMP_FOR_IF_PAR
        for (long long i = 0; i < nn; i++) dst[i] = fp16_table[rd16(s + 2 * i)];
    } else if (t == TP_GGML_BF16) {
        TP_OMP_FOR_IF_PAR
        for (long long i = 0; i < nn; i++) {
            uint32_t bits = (uint32_t)rd16(s + 2 * i) << 16;
            memcpy(&dst[i], &bits, 4);
        }
    } else {
        block_fn fn = block_deq(t);
        const long long nb = (long long)(n / tr->blck);
        const long long nchunks = (nb + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
        const size_t bs = tr->size, bk = tr->blck;
        TP_OMP_FOR_IF_PAR
        for (long long c = 0; c < nchunks; c++) {
            long long b1 = (c + 1) * CHUNK_BLOCKS < nb ? (c + 1) * CHUNK_BLOCKS : nb;
            for (long long b = c * CHUNK_BLOCKS; b < b1; b++)
                fn(s + (size_t)b * bs, dst + (size_t)b * bk);
        }
    }
    return TP_OK;
}

/* ---- quantisation ---- */

/* ggml's reference Q8_0: d = amax/127 stored as fp16, q = round-half-away(x * (1/d)),
 * with the fp32 d (not the rounded fp16) used for 1/d. */
static void quant_q8_0_block(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        float a = fabsf(x[j]);
        if (a > amax) amax = a;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t hd = tp_fp32_to_fp16(d);
    b[0] = (uint8_t)(hd & 0xff);
    b[1] = (uint8_t)(hd >> 8);
    for (int j = 0; j < 32; j++) {
        float r = roundf(x[j] * id);   /* |r| <= 127 for finite input (checked by the caller) */
        if (r > 127.0f) r = 127.0f;
        if (r < -127.0f) r = -127.0f;
        b[2 + j] = (uint8_t)(int8_t)r;
    }
}

tp_status tp_quantize(tp_ggml_type t, const float *src, void *dst, size_t n) {
    const type_traits *tr = traits_of(t);
    if (!tr || !tp_ggml_can_quantize(t))
        return tp_fail(TP_ERR_UNSUPPORTED, "quantize: to type %s (%u) is not supported "
                       "(supported: F32, F16, BF16, Q8_0)", tp_ggml_type_name(t), (unsigned)t);
    if (n % tr->blck != 0)
        return tp_fail(TP_ERR_ARG, "quantize %s: %zu elements is not a multiple of the block size %u",
                       tr->name, n, (unsigned)tr->blck);
    if (n == 0) return TP_OK;
    if (!src || !dst) return tp_fail(TP_ERR_ARG, "quantize %s: NULL buffer", tr->name);
    uint8_t *o = dst;
    const long long nn = (long long)n;
    const int par = n >= PAR_MIN_ELEMS;
    (void)par;
    if (t == TP_GGML_F32) {
        memcpy(dst, src, n * 4);
    } else if (t == TP_GGML_F16 || t == TP_GGML_BF16) {
        const int bf = t == TP_GGML_BF16;
        TP_OMP_FOR_IF_PAR
        for (long long i = 0; i < nn; i++) {
            uint16_t h = bf ? tp_fp32_to_bf16(src[i]) : tp_fp32_to_fp16(src[i]);
            o[2 * i] = (uint8_t)(h & 0xff);
            o[2 * i + 1] = (uint8_t)(h >> 8);
        }
    } else { /* Q8_0 */
        for (size_t i = 0; i < n; i++)
            if (!isfinite(src[i]))
                return tp_fail(TP_ERR_NUMERIC, "quantize Q8_0: element %zu is %g (not finite)",
                               i, (double)src[i]);
        const long long nb = nn / 32;
        TP_OMP_FOR_IF_PAR
        for (long long b = 0; b < nb; b++) quant_q8_0_block(src + 32 * b, o + 34 * b);
    }
    return TP_OK;
}
