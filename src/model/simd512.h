/* Small AVX-512 helpers shared by the kernels (src/model/kernels.c, skinny.c, attn_bf16.c). */
#ifndef TP_SIMD512_H
#define TP_SIMD512_H
#if defined(__AVX512F__)
#include <immintrin.h>

/* lane j of the result: the sum of the 16 lanes of a[j] (a transpose of the 16 vectors folded into
 * their sums: 15 shuffle pairs and adds for 16 dot products, against 4 of each per _reduce_add) */
static inline __attribute__((always_inline)) __m512 hsum16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < 8; i++) /* per 128-bit lane: a2i's and a2i+1's pair sums, interleaved */
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: the lane's sums of a4i .. a4i+3, in order */
        __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++) /* lanes 0+1 and 2+3 of c2i, then of c2i+1 */
        d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88), _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}

/* exp(x) = 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (two-part ln 2, |r| <= 0.347), p the
 * degree-7 Taylor polynomial (truncation < 6e-9 relative), 2^n applied by VSCALEFPS (which
 * overflows to inf and underflows through the denormals to 0 like expf). x is clamped to
 * [-104, 89] first, keeping NaN. Measured against expf over [-104, 89]: <= 2 ulp (tests). The
 * kernels' one exp (kernels.c, attn_bf16.c), so that two of them computing the same exponentials
 * agree bit for bit. */
static inline __attribute__((always_inline)) __m512 v_exp(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x)); /* NaN stays */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

#endif
#endif
