/* CPU kernels (OpenMP + BLAS) and their naive twins. Numerics follow HF transformers' fp32
 * Llama: fp32 everywhere, softmax in fp32 with the max subtracted. */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef TP_HAVE_BLAS
#include <cblas.h>
#endif

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
#ifdef TP_HAVE_BLAS
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)out, (int)in, 1.0f, X, (int)in, W,
                (int)in, 0.0f, Y, (int)out);
    if (bias) {
#pragma omp parallel for schedule(static) if (N * out >= TP_PAR_MIN_WORK)
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < out; o++) Y[n * out + o] += bias[o];
    }
#else
    tp_matmul_wt_ref(X, W, bias, Y, N, in, out);
#endif
}

void tp_rmsnorm(const float *x, const float *w, float *out, size_t N, size_t d, float eps) {
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * d;
        float *o = out + n * d;
        float ss = 0;
        for (size_t i = 0; i < d; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (size_t i = 0; i < d; i++) o[i] = w[i] * (xr[i] * r);
    }
}

void tp_rope_apply(float *x, size_t N, int n_heads, int hd, const int *pos, const float *inv_freq) {
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (N * (size_t)n_heads * (size_t)hd >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        float c[512], s[512]; /* head_dim <= 1024 is enforced by config validation */
        for (int j = 0; j < half; j++) {
            float a = (float)pos[n] * inv_freq[j];
            c[j] = cosf(a);
            s[j] = sinf(a);
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

void tp_silu_mul(float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float a = g[i];
        g[i] = a / (1.0f + expf(-a)) * u[i];
    }
}

static void softmax_causal_rows(float *S, int T, int Tk, int p0) {
    for (int i = 0; i < T; i++) {
        float *r = S + (size_t)i * Tk;
        int nvis = p0 + i + 1;
        float mx = -INFINITY;
        for (int j = 0; j < nvis; j++) mx = r[j] > mx ? r[j] : mx;
        float sum = 0;
        for (int j = 0; j < nvis; j++) {
            r[j] = expf(r[j] - mx);
            sum += r[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < nvis; j++) r[j] *= inv;
        for (int j = nvis; j < Tk; j++) r[j] = 0;
    }
}

void tp_attention_head(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                       size_t ldo, int T, int p0, int hd, float scale, float *S) {
    int Tk = p0 + T;
#ifdef TP_HAVE_BLAS
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, Tk, hd, scale, Q, (int)ldq, K, (int)ldk, 0.0f, S,
                Tk);
    softmax_causal_rows(S, T, Tk, p0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, Tk, 1.0f, S, Tk, V, (int)ldk, 0.0f, out,
                (int)ldo);
#else
    for (int i = 0; i < T; i++)
        for (int j = 0; j < Tk; j++) {
            float acc = 0;
            for (int e = 0; e < hd; e++) acc += Q[(size_t)i * ldq + e] * K[(size_t)j * ldk + e];
            S[(size_t)i * Tk + j] = acc * scale;
        }
    softmax_causal_rows(S, T, Tk, p0);
    for (int i = 0; i < T; i++)
        for (int e = 0; e < hd; e++) {
            float acc = 0;
            for (int j = 0; j < p0 + i + 1; j++) acc += S[(size_t)i * Tk + j] * V[(size_t)j * ldk + e];
            out[(size_t)i * ldo + e] = acc;
        }
#endif
}

void tp_attention_head_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                           size_t ldo, int T, int p0, int hd, float scale) {
    for (int i = 0; i < T; i++) {
        int nvis = p0 + i + 1;
        double mx = -INFINITY;
        for (int j = 0; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)Q[(size_t)i * ldq + e] * K[(size_t)j * ldk + e];
            a *= scale;
            if (a > mx) mx = a;
        }
        double sum = 0;
        for (int j = 0; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)Q[(size_t)i * ldq + e] * K[(size_t)j * ldk + e];
            sum += exp(a * scale - mx);
        }
        for (int e = 0; e < hd; e++) {
            double acc = 0;
            for (int j = 0; j < nvis; j++) {
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
static void gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc) {
#ifdef TP_HAVE_BLAS
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
#else
#pragma omp parallel for schedule(static) if ((size_t)M * N * K >= TP_PAR_MIN_WORK)
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0;
            for (int k = 0; k < K; k++)
                acc += (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                       (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            float *c = C + (size_t)i * ldc + j;
            *c = alpha * acc + (beta == 0.0f ? 0.0f : beta * *c);
        }
#endif
}

void tp_matmul_dx(const float *dY, const float *W, float *dX, size_t N, size_t in, size_t out, int accumulate) {
    gemm(0, 0, (int)N, (int)in, (int)out, 1.0f, dY, (int)out, W, (int)in, accumulate ? 1.0f : 0.0f, dX, (int)in);
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
    gemm(1, 0, (int)out, (int)in, (int)N, alpha, dY, (int)out, X, (int)in, 1.0f, dW, (int)in);
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
        float ss = 0;
        for (size_t i = 0; i < d; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)d + eps); /* exactly as tp_rmsnorm */
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
        for (size_t i = 0; i < d; i++) dot += (double)(dr[i] * w[i]) * (xr[i] * r);
        float mdot = (float)(dot / (double)d);
        float *o = dx + n * d;
        for (size_t i = 0; i < d; i++) o[i] += r * (dr[i] * w[i] - (xr[i] * r) * mdot);
    }
    size_t nb = (d + 63) / 64;
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * 64, i1 = i0 + 64 < d ? i0 + 64 : d;
        double acc[64] = {0};
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
#pragma omp parallel for schedule(static) if (N * (size_t)n_heads * (size_t)hd >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++)
        for (int j = 0; j < half; j++) {
            float a = (float)pos[n] * inv_freq[j]; /* the forward's angle, bit for bit */
            float c = cosf(a), s = sinf(a);
            for (int h = 0; h < n_heads; h++) {
                float *v = dx + (n * (size_t)n_heads + (size_t)h) * (size_t)hd;
                float da = v[j], db = v[j + half];
                v[j] = da * c + db * s;
                v[j + half] = db * c - da * s;
            }
        }
}

void tp_silu_mul_bwd(const float *g, const float *u, const float *da, float *dg, float *du, size_t n) {
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float x = g[i], s = 1.0f / (1.0f + expf(-x)), d = da[i];
        float gu = d * u[i] * (s * (1.0f + x * (1.0f - s)));
        du[i] = d * (x * s);
        dg[i] = gu;
    }
}

void tp_attention_head_lse(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk, float *out,
                           size_t ldo, float *lse, int T, int p0, int hd, float scale, float *S) {
    for (int i0 = 0; i0 < T; i0 += TP_ATT_BLOCK) {
        int bq = T - i0 < TP_ATT_BLOCK ? T - i0 : TP_ATT_BLOCK, kmax = p0 + i0 + bq;
        gemm(0, 1, bq, kmax, hd, scale, Q + (size_t)i0 * ldq, (int)ldq, K, (int)ldk, 0.0f, S, kmax);
        for (int r = 0; r < bq; r++) {
            float *row = S + (size_t)r * kmax;
            int nvis = p0 + i0 + r + 1;
            float mx = -INFINITY;
            for (int j = 0; j < nvis; j++) mx = row[j] > mx ? row[j] : mx;
            float sum = 0;
            for (int j = 0; j < nvis; j++) {
                row[j] = expf(row[j] - mx);
                sum += row[j];
            }
            float inv = 1.0f / sum;
            for (int j = 0; j < nvis; j++) row[j] *= inv;
            for (int j = nvis; j < kmax; j++) row[j] = 0;
            lse[i0 + r] = mx + logf(sum);
        }
        gemm(0, 0, bq, hd, kmax, 1.0f, S, kmax, V, (int)ldk, 0.0f, out + (size_t)i0 * ldo, (int)ldo);
    }
}

void tp_attention_head_lse_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               float *out, size_t ldo, float *lse, int T, int p0, int hd, float scale) {
    double *s = malloc((size_t)(p0 + T) * sizeof *s);
    if (!s) return;
    for (int i = 0; i < T; i++) {
        int nvis = p0 + i + 1;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)Q[(size_t)i * ldq + e] * K[(size_t)j * ldk + e];
            s[j] = a * scale;
            if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j < nvis; j++) sum += exp(s[j] - mx);
        for (int e = 0; e < hd; e++) {
            double acc = 0;
            for (int j = 0; j < nvis; j++) acc += exp(s[j] - mx) / sum * V[(size_t)j * ldk + e];
            out[(size_t)i * ldo + e] = (float)acc;
        }
        lse[i] = (float)(mx + log(sum));
    }
    free(s);
}

void tp_attention_head_bwd(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                           const float *O, const float *dO, size_t ldo, const float *lse, float *dQ, size_t lddq,
                           float *dK, float *dV, size_t lddk, int T, int p0, int hd, float scale, float *scratch) {
    float *P = scratch, *dP = scratch + (size_t)TP_ATT_BLOCK * (size_t)(p0 + T);
    for (int i0 = 0; i0 < T; i0 += TP_ATT_BLOCK) {
        int bq = T - i0 < TP_ATT_BLOCK ? T - i0 : TP_ATT_BLOCK, kmax = p0 + i0 + bq;
        const float *Qb = Q + (size_t)i0 * ldq, *dOb = dO + (size_t)i0 * ldo;
        /* P = exp(scale Q K^T - lse) on the visible keys, 0 elsewhere */
        gemm(0, 1, bq, kmax, hd, scale, Qb, (int)ldq, K, (int)ldk, 0.0f, P, kmax);
        for (int r = 0; r < bq; r++) {
            float *row = P + (size_t)r * kmax, l = lse[i0 + r];
            int nvis = p0 + i0 + r + 1;
            for (int j = 0; j < nvis; j++) row[j] = expf(row[j] - l);
            for (int j = nvis; j < kmax; j++) row[j] = 0;
        }
        gemm(1, 0, kmax, hd, bq, 1.0f, P, kmax, dOb, (int)ldo, 1.0f, dV, (int)lddk); /* dV += P^T dO */
        gemm(0, 1, bq, kmax, hd, 1.0f, dOb, (int)ldo, V, (int)ldk, 0.0f, dP, kmax);  /* dP = dO V^T */
        for (int r = 0; r < bq; r++) {
            const float *o = O + (size_t)(i0 + r) * ldo, *go = dOb + (size_t)r * ldo;
            float Di = 0; /* sum_j P dP = dO . O */
            for (int e = 0; e < hd; e++) Di += go[e] * o[e];
            float *pr = P + (size_t)r * kmax, *dr = dP + (size_t)r * kmax;
            for (int j = 0; j < kmax; j++) dr[j] = pr[j] * (dr[j] - Di); /* dS; 0 where masked */
        }
        gemm(0, 0, bq, hd, kmax, scale, dP, kmax, K, (int)ldk, 0.0f, dQ + (size_t)i0 * lddq, (int)lddq);
        gemm(1, 0, kmax, hd, bq, scale, dP, kmax, Qb, (int)ldq, 1.0f, dK, (int)lddk);
    }
}

void tp_attention_head_bwd_ref(const float *Q, size_t ldq, const float *K, const float *V, size_t ldk,
                               const float *O, const float *dO, size_t ldo, const float *lse, float *dQ,
                               size_t lddq, float *dK, float *dV, size_t lddk, int T, int p0, int hd, float scale) {
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
        int nvis = p0 + i + 1;
        const float *q = Q + (size_t)i * ldq, *go = dO + (size_t)i * ldo;
        double mx = -INFINITY, sum = 0, D = 0;
        for (int j = 0; j < nvis; j++) {
            double a = 0;
            for (int e = 0; e < hd; e++) a += (double)q[e] * K[(size_t)j * ldk + e];
            p[j] = a * scale;
            if (p[j] > mx) mx = p[j];
        }
        for (int j = 0; j < nvis; j++) sum += (p[j] = exp(p[j] - mx));
        for (int j = 0; j < nvis; j++) {
            p[j] /= sum;
            double dp = 0;
            for (int e = 0; e < hd; e++) dp += (double)go[e] * V[(size_t)j * ldk + e];
            ds[j] = dp;
            D += p[j] * dp;
        }
        for (int j = 0; j < nvis; j++) ds[j] = p[j] * (ds[j] - D);
        for (int e = 0; e < hd; e++) {
            double acc = 0;
            for (int j = 0; j < nvis; j++) acc += ds[j] * K[(size_t)j * ldk + e];
            dQ[(size_t)i * lddq + e] = (float)(scale * acc);
        }
        for (int j = 0; j < nvis; j++)
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
