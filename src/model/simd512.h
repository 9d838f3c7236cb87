/* Small AVX-512 helpers shared by the kernels (src/model/kernels.c, skinny.c). */
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

#endif
#endif
