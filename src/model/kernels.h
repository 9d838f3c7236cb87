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

/* ---- training kernels (backward pass; src/train/backward.c) ---- */

/* dX(N,in) = dY(N,out) * W(out,in), or dX += that when accumulate is set. */
void tp_matmul_dx(const float *dY, const float *W, float *dX, size_t N, size_t in, size_t out, int accumulate);
void tp_matmul_dx_ref(const float *dY, const float *W, float *dX, size_t N, size_t in, size_t out, int accumulate);

/* dW(out,in) += alpha * dY(N,out)^T X(N,in); db(out) += alpha * sum over rows of dY (db may be
 * NULL). The bias sum runs over rows in order for each column (deterministic). */
void tp_matmul_dw(const float *dY, const float *X, float *dW, float *db, size_t N, size_t in, size_t out,
                  float alpha);
void tp_matmul_dw_ref(const float *dY, const float *X, float *dW, float *db, size_t N, size_t in, size_t out,
                      float alpha);

/* tp_rmsnorm that also stores rstd(N) = 1/sqrt(mean(x^2) + eps); same output bits. */
void tp_rmsnorm_fwd(const float *x, const float *w, float *out, float *rstd, size_t N, size_t d, float eps);
/* Backward of out = w * x * rstd: dx(N,d) += the gradient (accumulates, e.g. into a residual
 * gradient); dw(d) += alpha * sum_n dout * x * rstd (columns in parallel, rows in order). */
void tp_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dout, float *dx, float *dw,
                    float alpha, size_t N, size_t d);
void tp_rmsnorm_bwd_ref(const float *x, const float *w, const float *rstd, const float *dout, float *dx,
                        float *dw, float alpha, size_t N, size_t d);

/* Backward of tp_rope_apply, in place: rotates each pair back by -pos[n]*inv_freq[j]. */
void tp_rope_bwd(float *dx, size_t N, int n_heads, int hd, const int *pos, const float *inv_freq);

/* Backward of a = silu(g) * u given da: dg = da * u * silu'(g), du = da * silu(g). dg may alias
 * da (element by element). */
void tp_silu_mul_bwd(const float *g, const float *u, const float *da, float *dg, float *du, size_t n);

/* Rows of query block size used by the blocked attention kernels below. */
#define TP_ATT_BLOCK 64

/* tp_attention_head that also writes lse(T): row i's log sum_j exp(scale q_i.k_j) over its
 * visible keys (what the backward needs to recompute the probabilities). Processes query rows
 * in blocks of TP_ATT_BLOCK, so it touches only the causal part. scratch: TP_ATT_BLOCK*(p0+T). */
void tp_attention_head_lse(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                           size_t ldo, float *lse, int T, int p0, int hd, float scale, float *scratch);
void tp_attention_head_lse_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               float *out, size_t ldo, float *lse, int T, int p0, int hd, float scale);

/* Backward of one causal head (flash-attention style: probabilities recomputed from lse, block
 * by block). O, dO: (T,hd; stride ldo) forward output and its gradient. dQ (T,hd; stride lddq)
 * is overwritten; dK, dV (p0+T,hd; stride lddk) are ADDED to, so the query heads of one GQA
 * group can accumulate into one KV head in a fixed order. scratch: 2*TP_ATT_BLOCK*(p0+T).
 * The _ref twin recomputes everything in double and ignores O and lse. */
void tp_attention_head_bwd(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                           const float *O, const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq,
                           float *dK, float *dV, size_t lddk, int T, int p0, int hd, float scale, float *scratch);
void tp_attention_head_bwd_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               const float *O, const float *dO, size_t ldo, const float *lse, float *dQ,
                               size_t lddq, float *dK, float *dV, size_t lddk, int T, int p0, int hd, float scale);

#endif
