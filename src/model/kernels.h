/* CPU kernels of the forward pass. Each fast kernel has a naive twin (suffix _ref) that the
 * tests hold it to. Shapes are row-major; "W^T" means W is stored (out, in) as in HF. */
#ifndef TAPER_KERNELS_H
#define TAPER_KERNELS_H

#include <stddef.h>

/* Work (in elements touched) below which a kernel runs on one thread: an OpenMP region costs a
 * barrier, which is slow when the cores are shared (one-token decoding, small batches). */
#define TP_PAR_MIN_WORK 65536

/* Y(N,out) = X(N,in) * W(out,in)^T (+ bias(out) if bias != NULL). BLAS when built with it. */
void tp_matmul_wt(const float *X, const float *W, const float *bias, float *Y, size_t N, size_t in, size_t out);
void tp_matmul_wt_ref(const float *X, const float *W, const float *bias, float *Y, size_t N, size_t in, size_t out);

/* out(N,d) = x / sqrt(mean(x^2) + eps) * w, row by row (HF LlamaRMSNorm in fp32). */
void tp_rmsnorm(const float *x, const float *w, float *out, size_t N, size_t d, float eps);


/* x(N, n_heads*hd): rotates each head's pairs (j, j+hd/2) by angle pos[n]*inv_freq[j]
 * (HF rotate_half convention). */
void tp_rope_apply(float *x, size_t N, int n_heads, int hd, const int *pos, const float *inv_freq);

/* a(N,ff) = silu(g) * u, in place into g. */
void tp_silu_mul(float *g, const float *u, size_t n);

/* Causal attention of one sequence and one head:
 * out(T,hd; row stride ldo) = softmax(Q K^T * scale + causal mask) V, where query row i sits at
 * absolute position p0+i and may see keys 0..p0+i. Q row stride ldq, K/V row stride ldk over
 * Tk = p0+T keys. scores: scratch of T*Tk floats. */
void tp_attention_head(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                       float *out, size_t ldo, int T, int p0, int hd, float scale, float *scores);
void tp_attention_head_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                           float *out, size_t ldo, int T, int p0, int hd, float scale);

#endif
