/* CPU kernels of the forward pass. Each fast kernel has a naive twin (suffix _ref) that the
 * tests hold it to. Shapes are row-major; "W^T" means W is stored (out, in) as in HF. */
#ifndef TAPER_KERNELS_H
#define TAPER_KERNELS_H

#include <stddef.h>

/* Work (in elements touched) below which a kernel runs on one thread: an OpenMP region costs a
 * barrier, which is slow when the cores are shared (one-token decoding, small batches). */
#define TP_PAR_MIN_WORK 65536

/* OpenMP's thread count and thread number, 1 and 0 in builds without OpenMP. */
#ifdef _OPENMP
#include <omp.h>
static inline int tp_max_threads(void) { return omp_get_max_threads(); }
static inline int tp_thread_id(void) { return omp_get_thread_num(); }
#else
static inline int tp_max_threads(void) { return 1; }
static inline int tp_thread_id(void) { return 0; }
#endif

/* ---- matrix products (src/model/gemm.c) ----
 * C(M,N) = alpha * op(A) op(B) + beta * C, row-major, op = transpose when ta / tb is set; with
 * beta == 0, C is not read. Backend: oneDNN matmul for large products outside OpenMP regions (when
 * built with it), OpenBLAS otherwise, plain loops without either; TAPER_GEMM=dnnl|blas|loops (or
 * tp_gemm_set_backend) overrides. tp_sgemm is always fp32; tp_sgemm_prec follows the precision set
 * by tp_gemm_set_precision (TP_PREC_BF16: both inputs rounded to bf16, fp32 accumulation and
 * output). The weight products below (tp_matmul_wt / _dx / _dw) use tp_sgemm_prec. */
enum { TP_GEMM_DNNL = 0, TP_GEMM_BLAS = 1, TP_GEMM_LOOPS = 2 };
enum { TP_PREC_FP32 = 0, TP_PREC_BF16 = 1 };
void tp_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);
void tp_sgemm_prec(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                   int ldb, float beta, float *C, int ldc);
int tp_gemm_backend(void);
int tp_gemm_set_backend(int backend); /* -1 when that backend is not built in */
void tp_gemm_set_precision(int prec);
int tp_gemm_precision(void);
const char *tp_gemm_describe(void);
/* bf16 copies of weight matrices, made once instead of at every product (the lookup is by the
 * matrix's first element and size). frozen: never re-converted (a teacher); the others are
 * re-converted at their next use after tp_gemm_bf16_refresh() (call it whenever weights change:
 * the optimizer step and checkpoint loading do). forget_range drops the entries inside
 * [p, p+n) (tp_model_free does it for its parameters); (NULL, 0) drops all. */
int tp_gemm_bf16_register(const float *w, size_t n, int frozen);
void tp_gemm_bf16_refresh(void);
void tp_gemm_bf16_forget_range(const float *p, size_t n);
/* The registered bf16 copy of the n-element weight at w (up to date), or NULL. */
const unsigned short *tp_gemm_bf16_find(const float *w, size_t n);
/* Frozen registered weights read as W^T by oneDNN get a second copy in its blocked layout at
 * their first product (same bits, faster products): at most max_bytes in all (0: none; the
 * default 2 GiB, or TAPER_BLOCKED_WEIGHTS in MiB); the bytes they hold now. */
size_t tp_gemm_set_blocked_weights(size_t max_bytes); /* returns the budget before */
size_t tp_gemm_blocked_weights_bytes(void);
/* For an update that writes the copies itself (AdamW): the registered, not frozen copies that lie
 * inside [p, p+n), in address order, at most max of them into out (the count when out is NULL);
 * then tp_gemm_bf16_refresh_except marks every copy stale (as tp_gemm_bf16_refresh) except the
 * listed ones, which the caller has rewritten from the new weights. current: 1 when the copy of
 * the weight at w is registered and up to date (tests). */
typedef struct {
    const float *w;
    size_t n;
    unsigned short *h;
} tp_bf16_copy;
size_t tp_gemm_bf16_copies_in(const float *p, size_t n, tp_bf16_copy *out, size_t max);
void tp_gemm_bf16_refresh_except(const tp_bf16_copy *done, size_t k);
int tp_gemm_bf16_current(const float *w, size_t n);
/* Under bf16 precision, the n values at p converted once for the products that read them until
 * unpin (p must not change in between); a no-op in fp32 or when the few slots are taken. */
void tp_gemm_bf16_pin(const float *p, size_t n);
/* The same, converted into the caller's buffer buf (n values), which must outlive the pin and
 * which the caller may pin again later with tp_gemm_bf16_pin_given. 0 when pinned, -1 when not
 * (fp32, no slot free): then the products convert p themselves. */
int tp_gemm_bf16_pin_to(const float *p, size_t n, unsigned short *buf);
/* Pins p to h, n values already in bf16 (what tp_gemm_bf16_pin_to wrote for the same values):
 * products that read the matrix at p whole (dense rows, as the training step's do) read h and
 * never p, so p need not hold the values. 0 when pinned; -1 when not (fp32, no slot free, a
 * build whose products are the reference loops), and then p must hold the values before any
 * product reads it. */
int tp_gemm_bf16_pin_given(const float *p, size_t n, const unsigned short *h);
void tp_gemm_bf16_unpin(const float *p);
void tp_gemm_shutdown(void); /* frees cached primitives and buffers (tests, leak checkers) */
unsigned short tp_f32_to_bf16(float f); /* round to nearest even; NaN stays NaN */
float tp_bf16_to_f32(unsigned short h);
/* n values at once (AVX512-BF16 when the build targets it): the same bits as tp_f32_to_bf16. */
void tp_bf16_convert(const float *src, size_t n, unsigned short *dst);

/* Skinny products (src/model/skinny.c): C(M,N) = alpha * A(M,K) B(N,K)^T, + C when beta == 1
 * (beta 0 or 1 only), for 1 <= M <= TP_SKINNY_MAX_M rows: each row of B read once for all M rows
 * (decoding's matrix-vector products). _bf16 takes B as bf16 (a registered weight copy, rows K
 * apart) and rounds A to bf16, accumulating in fp32. par: split the rows of B between the OpenMP
 * threads. Return -1 (nothing done) when the build has no AVX-512 (AVX512-BF16 for _bf16) or the
 * shape is outside these limits. */
#define TP_SKINNY_MAX_M 64
/* Products through the skinny path: up to TP_SKINNY_STREAM_M rows always (each row of B streamed
 * against all of them, a row's result the same whatever M); up to TP_SKINNY_MAX_M (4 x 4 tiles)
 * only during a decoding step, where a batch of sequences shares each product. */
#define TP_SKINNY_STREAM_M 4
/* Marks the calling thread as inside a decoding step (tp_forward with a KV cache and at most
 * TP_ATT_DIRECT new tokens); returns the previous mark. */
int tp_set_decode_step(int on);
/* The decoding kernels (skinny products, direct attention of a few query rows) are used by
 * default; off, every product goes to the general GEMM (tests compare the two paths). */
void tp_set_decode_kernels(int on);
int tp_decode_kernels(void);
/* One product of several sharing A (q/k/v, gate/up): segment i is C_i(M,N_i) from B_i(N_i,K) (fp32
 * B with row stride ldb, or bf16 Bh with rows K apart), all in one parallel pass. */
typedef struct {
    const float *B;
    const unsigned short *Bh;
    int N, ldb;
    float *C;
    int ldc;
} tp_skinny_seg;
int tp_skinny_multi(int bf16, int M, int K, float alpha, const float *A, int lda, float beta, int nseg,
                    const tp_skinny_seg *seg, int par);
int tp_skinny_f32(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc, int par);
int tp_skinny_bf16(int M, int N, int K, float alpha, const float *A, int lda, const unsigned short *Bh, float beta,
                   float *C, int ldc, int par);

/* C_i(M,N_i) = A(M,K) B_i(N_i,K)^T for n <= 4 weights sharing A, in the precision of tp_sgemm_prec,
 * as one skinny pass when M <= TP_SKINNY_MAX_M (each C_i dense, N_i wide). -1 when that path does
 * not apply (more rows, no AVX-512, a bf16 copy missing, the loops backend): nothing is done. */
int tp_sgemm_prec_shared(int M, int K, const float *A, int lda, int n, const float *const *B, const int *N,
                         float *const *C);

/* Y_i(N,out_i) = X(N,in) W_i(out_i,in)^T (+ bias_i) for n <= 4 products of one input: one pass
 * over the weights while decoding (tp_sgemm_prec_shared), tp_matmul_wt each otherwise. bias may be
 * NULL, or hold NULLs. */
void tp_matmul_wt_shared(const float *X, size_t N, size_t in, int n, const float *const *W, const float *const *bias,
                         float *const *Y, const size_t *out);

/* Y(N,out) = X(N,in) * W(out,in)^T (+ bias(out) if bias != NULL). BLAS when built with it. */
void tp_matmul_wt(const float *X, const float *W, const float *bias, float *Y, size_t N, size_t in, size_t out);
void tp_matmul_wt_ref(const float *X, const float *W, const float *bias, float *Y, size_t N, size_t in, size_t out);

/* out(N,d) = x / sqrt(mean(x^2) + eps) * w, row by row (HF LlamaRMSNorm in fp32). */
void tp_rmsnorm(const float *x, const float *w, float *out, size_t N, size_t d, float eps);


/* x(N, n_heads*hd): rotates each head's pairs (j, j+hd/2) by angle pos[n]*inv_freq[j]
 * (HF rotate_half convention). */
void tp_rope_apply(float *x, size_t N, int n_heads, int hd, const int *pos, const float *inv_freq);

/* Vector exp (AVX-512 when built for it, expf otherwise; <= 2 ulp from expf): y = exp(x), y may be x. */
void tp_vexp(const float *x, float *y, size_t n);
/* max of x (n >= 1; -inf for n == 0) */
float tp_vmax(const float *x, size_t n);
/* y[j] = exp(x[j] - sub) (y may be x, or NULL to only sum); returns the sum of those values in double. */
double tp_exp_shift_sum(const float *x, float sub, float *y, size_t n);
/* sum_j exp((double)x[j] - sub) in double, for sub >= max x (a log-sum-exp's shift): the terms
 * within a few ulp of libm's exp (AVX-512: a degree-13 polynomial, terms below e^-708 counted as
 * e^-708), summed in 16 lanes. */
double tp_exp_shift_sum_f64(const float *x, double sub, size_t n);
/* y[j] = exp((x[j] - sub) * mul), likewise. */
double tp_exp_affine_sum(const float *x, float sub, float mul, float *y, size_t n);
/* Forward KL(p || q) of one row, p = softmax(t * inv_tau), q = softmax(s * inv_tau): returns the
 * KL (terms summed in double) and overwrites s with (q - p) * gscale (the gradient with respect to
 * the tempered student logits, times gscale). Vectorised; exps in fp32 (<= 2 ulp). */
double tp_fkl_row(const float *t, float *s, size_t V, float inv_tau, float gscale);

/* a(N,ff) = silu(g) * u, in place into g. */
void tp_silu_mul(float *g, const float *u, size_t n);
/* out = silu(g) * u (out may be g), in one pass. */
void tp_silu_mul_to(float *out, const float *g, const float *u, size_t n);
/* The same values rounded to bf16 (as tp_bf16_convert of tp_silu_mul_to's output), into out. */
void tp_silu_mul_to_bf16(unsigned short *out, const float *g, const float *u, size_t n);
/* g = gelu_tanh(g) * u in place (GeGLU; PyTorch's tanh approximation, in float). */
void tp_gelu_tanh_mul(float *g, const float *u, size_t n);
/* out = gelu_tanh(g) * u (out may be g), in one pass. */
void tp_gelu_tanh_mul_to(float *out, const float *g, const float *u, size_t n);

/* Causal attention of one sequence and one head:
 * out(T,hd; row stride ldo) = softmax(Q K^T * scale + causal mask) V, where query row i sits at
 * absolute position p0+i and may see keys 0..p0+i, or only p0+i-window+1..p0+i when window > 0
 * (sliding-window attention; 0: no window). Q row stride ldq, K/V row stride ldk over
 * Tk = p0+T keys. scores: scratch of T*Tk floats. */
void tp_attention_head(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                       float *out, size_t ldo, int T, int p0, int window, int hd, float scale, float *scores);
void tp_attention_head_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                           float *out, size_t ldo, int T, int p0, int window, int hd, float scale);
/* tp_attention_head for nh heads that share K and V (grouped-query attention): head h's row i of Q
 * at Q + i*ldq + h*hd, of out at out + i*ldo + h*hd. Decoding (T <= TP_ATT_DIRECT) runs them in one
 * pass that reads each K and V row once for all nh*T rows; otherwise head by head. scores: scratch
 * of nh*T*(p0+T) floats. */
void tp_attention_group(const float *Q, size_t ldq, int nh, const float *K, const float *V, size_t ldk,
                        float *out, size_t ldo, int T, int p0, int window, int hd, float scale, float *scores);

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
/* The same, dg and du rounded to bf16 (as tp_bf16_convert of tp_silu_mul_bwd's), da untouched. */
void tp_silu_mul_bwd_bf16(const float *g, const float *u, const float *da, unsigned short *dg, unsigned short *du,
                          size_t n);
/* The same for a = gelu_tanh(g) * u. */
void tp_gelu_tanh_mul_bwd(const float *g, const float *u, const float *da, float *dg, float *du, size_t n);

/* The first key a query at pos sees under a sliding window of `window` keys (0: no window). */
static inline int tp_att_first_key(int pos, int window) {
    return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

/* Rows of query block size used by the blocked attention kernels below. */
#define TP_ATT_BLOCK 64
/* Up to this many query rows (decoding), tp_attention_head works row by row without products. */
#define TP_ATT_DIRECT 4

/* tp_attention_head that also writes lse(T): row i's log sum_j exp(scale q_i.k_j) over its
 * visible keys (what the backward needs to recompute the probabilities). Processes query rows
 * in blocks of TP_ATT_BLOCK, so it touches only the causal part. scratch: TP_ATT_BLOCK*(p0+T). */
void tp_attention_head_lse(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                           size_t ldo, float *lse, int T, int p0, int window, int hd, float scale, float *scratch);
void tp_attention_head_lse_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               float *out, size_t ldo, float *lse, int T, int p0, int window, int hd, float scale);

/* tp_attention_head_lse with bf16 products (attn_bf16.c: AMX tiles, else AVX512-BF16 dot
 * products): Q, K, V and the probabilities rounded to bf16, fp32 accumulation, the softmax in
 * fp32. -1 (nothing written) where this build or CPU has neither, or hd is not a multiple of 32.
 * tp_attention_head_lse takes it under bf16 precision. */
int tp_attention_head_lse_bf16(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                               size_t ldo, float *lse, int T, int p0, int window, int hd, float scale);
/* tp_attention_head_bwd with bf16 products (Q, K, V, dO, P and dS rounded), fp32 accumulation;
 * -1 as above. tp_attention_head_bwd takes it under bf16 precision. */
int tp_attention_head_bwd_bf16(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, const float *O,
                               const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq, float *dK, float *dV,
                               size_t lddk, int T, int p0, int window, int hd, float scale);
/* The kernel the two above run here: 0 none (fp32 products), 1 AVX512-BF16 dot products, 2 AMX
 * tiles; at most what TAPER_ATTENTION (fp32, avx512, amx) allows. tp_attention_bf16_cap(c) caps
 * it at c instead (tests, A/B runs); -1 goes back to TAPER_ATTENTION's cap. */
int tp_attention_bf16_kernel(void);
void tp_attention_bf16_cap(int cap);
/* Tests: on AVX512-BF16 dot products, run the backward in the form AMX tiles take (transposed
 * accumulators, whole blocks) instead of its own; both give the same bits. */
void tp_attention_bf16_tiles_form(int on);

/* Backward of one causal head (flash-attention style: probabilities recomputed from lse, block
 * by block). O, dO: (T,hd; stride ldo) forward output and its gradient. dQ (T,hd; stride lddq)
 * is overwritten; dK, dV (p0+T,hd; stride lddk) are ADDED to, so the query heads of one GQA
 * group can accumulate into one KV head in a fixed order. scratch: 2*TP_ATT_BLOCK*(p0+T).
 * The _ref twin recomputes everything in double and ignores O and lse. */
void tp_attention_head_bwd(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                           const float *O, const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq,
                           float *dK, float *dV, size_t lddk, int T, int p0, int window, int hd, float scale, float *scratch);
void tp_attention_head_bwd_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               const float *O, const float *dO, size_t ldo, const float *lse, float *dQ,
                               size_t lddq, float *dK, float *dV, size_t lddk, int T, int p0, int window, int hd, float scale);

#endif
