/* CPU kernels (OpenMP + BLAS) and their naive twins. Numerics follow HF transformers' fp32
 * Llama: fp32 everywhere, softmax in fp32 with the max subtracted. */
#include "kernels.h"

#include <math.h>
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
