/* The matrix-product layer (src/model/gemm.c): every backend that is built in (oneDNN, OpenBLAS,
 * plain loops), all four transpose combinations, alpha/beta, leading dimensions wider than the
 * matrix, against a double-precision product; the bf16 path against products of bf16-rounded
 * inputs; the bf16 rounding itself (vector and scalar give the same bits as the definition); the
 * registered bf16 weight copies (same bits as on-the-fly conversion, follow weight changes after
 * tp_gemm_bf16_refresh, dropped with their model); and a training step in bf16 against fp32. */
#include "tt.h"
#include "model/kernels.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "train/train_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *x, size_t n, tp_rng *r, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * (float)tp_rng_uniform(r) - 1.0f);
}

/* C = alpha op(A) op(B) + beta C in double, on the given (possibly bf16-rounded) inputs. */
static void ref_gemm(int ta, int tb, int M, int N, int K, double alpha, const float *A, int lda, const float *B,
                     int ldb, double beta, const float *C0, double *C, int ldc, int round_bf16) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                if (round_bf16) {
                    a = tp_bf16_to_f32(tp_f32_to_bf16(a));
                    b = tp_bf16_to_f32(tp_f32_to_bf16(b));
                }
                acc += (double)a * b;
            }
            C[(size_t)i * ldc + j] = alpha * acc + (beta != 0 ? beta * C0[(size_t)i * ldc + j] : 0);
        }
}

/* One product through tp_sgemm(_prec) with guards around C; returns max |err| / (1 + max |ref|). */
static double run_case(int bf16, int ta, int tb, int M, int N, int K, float alpha, float beta, tp_rng *r) {
    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc((nc + 16) * 4), *C0 = malloc(nc * 4);
    double *R = malloc(nc * sizeof *R);
    fill(A, na, r, 1);
    fill(B, nb, r, 1);
    fill(C0, nc, r, 1);
    memcpy(C, C0, nc * 4);
    for (int g = 0; g < 16; g++) C[nc + g] = 777.0f;
    ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, R, ldc, bf16);
    if (bf16) tp_sgemm_prec(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else tp_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    double err = 0, mx = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double d = fabs(C[(size_t)i * ldc + j] - R[(size_t)i * ldc + j]);
            if (d > err) err = d;
            if (fabs(R[(size_t)i * ldc + j]) > mx) mx = fabs(R[(size_t)i * ldc + j]);
        }
        for (int j = N; j < ldc; j++) /* the gap between rows is never written */
            if (C[(size_t)i * ldc + j] != C0[(size_t)i * ldc + j]) err = 1e30;
    }
    for (int g = 0; g < 16; g++)
        if (C[nc + g] != 777.0f) err = 1e30;
    free(A);
    free(B);
    free(C);
    free(C0);
    free(R);
    return err / (1 + mx);
}

static const char *BACKEND_NAME[] = {"oneDNN", "BLAS", "loops"};

TT_TEST(gemm_all_backends_match_double) {
    tp_rng r;
    tp_rng_seed(&r, 11);
    int saved = tp_gemm_backend(), prec = tp_gemm_precision();
    tp_gemm_set_precision(TP_PREC_FP32);
    /* small (BLAS/loops even under oneDNN) and large enough for the oneDNN path (>= 2^18 MACs) */
    const int shapes[][3] = {{7, 5, 3}, {37, 71, 129}, {130, 96, 64}, {1, 300, 1000}};
    const float ab[][2] = {{1, 0}, {0.5f, 1}, {-2, 1}, {1.5f, 0.25f}};
    int tested = 0;
    for (int be = 0; be < 3; be++) {
        if (tp_gemm_set_backend(be)) {
            tt_note("backend %s not built in", BACKEND_NAME[be]);
            continue;
        }
        tested++;
        double worst = 0;
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
            for (int t = 0; t < 4; t++)
                for (size_t k = 0; k < sizeof ab / sizeof *ab; k++) {
                    double e = run_case(0, t & 1, t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], ab[k][0],
                                        ab[k][1], &r);
                    TT_CHECK(e < 2e-6, "%s ta=%d tb=%d %dx%dx%d alpha %g beta %g: rel err %g", BACKEND_NAME[be], t & 1,
                             t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], ab[k][0], ab[k][1], e);
                    if (e > worst) worst = e;
                }
        tt_note("%s fp32: worst error %.2e (of 1 + max|C|)", BACKEND_NAME[be], worst);
    }
    TT_CHECK(tested >= 2, "only %d backends built", tested);
    tp_gemm_set_backend(saved);
    tp_gemm_set_precision(prec);
}

TT_TEST(gemm_bf16_is_product_of_rounded_inputs) {
    tp_rng r;
    tp_rng_seed(&r, 12);
    int saved = tp_gemm_backend(), prec = tp_gemm_precision();
    tp_gemm_set_precision(TP_PREC_BF16);
    for (int be = 0; be < 3; be++) {
        if (tp_gemm_set_backend(be)) continue;
        double worst = 0;
        for (int t = 0; t < 4; t++) {
            double e = run_case(1, t & 1, t >> 1, 130, 96, 64, 1, t == 3 ? 1.0f : 0.0f, &r);
            double e2 = run_case(1, t & 1, t >> 1, 9, 11, 13, 0.5f, 0, &r);
            if (e2 > e) e = e2;
            if (e > worst) worst = e;
            /* the inputs are exact in bf16; only the fp32 accumulation rounds */
            TT_CHECK(e < 2e-6, "%s bf16 ta=%d tb=%d: rel err %g vs rounded inputs", BACKEND_NAME[be], t & 1, t >> 1, e);
        }
        tt_note("%s bf16: worst error vs the product of rounded inputs %.2e", BACKEND_NAME[be], worst);
    }
    /* and it is not the fp32 product: rounding the inputs is visible */
    tp_gemm_set_backend(saved);
    int M = 64, N = 64, K = 256;
    float *A = malloc((size_t)M * K * 4), *B = malloc((size_t)K * N * 4), *C1 = malloc((size_t)M * N * 4),
          *C2 = malloc((size_t)M * N * 4);
    fill(A, (size_t)M * K, &r, 1);
    fill(B, (size_t)K * N, &r, 1);
    tp_sgemm_prec(0, 0, M, N, K, 1, A, K, B, N, 0, C1, N);
    tp_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C2, N);
    double d = 0;
    for (int i = 0; i < M * N; i++) d = fmax(d, fabs(C1[i] - C2[i]));
    TT_CHECK(d > 1e-4 && d < 0.2, "bf16 vs fp32 product differ by %g", d);
    free(A);
    free(B);
    free(C1);
    free(C2);
    tp_gemm_set_precision(prec);
}

static uint16_t bf16_definition(float f) { /* round to nearest even on the bits, in 64-bit */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x7fffffu) ? (uint16_t)((u >> 16) | 0x40) : (uint16_t)(u >> 16);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
    uint64_t x = u, low = x & 0xffffu, hi = x >> 16;
    if (low > 0x8000u || (low == 0x8000u && (hi & 1))) hi++;
    return (uint16_t)hi;
}

TT_TEST(gemm_bf16_rounding_bits) {
    tp_rng r;
    tp_rng_seed(&r, 13);
    size_t n = 4099;
    float *x = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)tp_rng_u64(&r);
        if (i % 7 == 0) u = (u & 0xffff0000u) | 0x8000u; /* exact ties */
        memcpy(&x[i], &u, 4);
    }
    const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN, 3.4028235e38f, 1e-40f, -1e-39f,
                              1.17549435e-38f};
    memcpy(x, specials, sizeof specials);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t a = tp_f32_to_bf16(x[i]), b = bf16_definition(x[i]);
        if (a != b && bad++ < 5) TT_CHECK(0, "x=%a: %04x vs definition %04x", (double)x[i], a, b);
    }
    TT_CHECK(bad == 0, "%d scalar roundings differ", bad);
    /* the vectorised conversion gives the same bits */
    uint16_t *y = malloc(n * sizeof *y);
    tp_bf16_convert(x, n, y);
    int vbad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t want = bf16_definition(x[i]);
        if (y[i] != want && vbad++ < 5) TT_CHECK(0, "vector path x=%a -> %04x, want %04x", (double)x[i], y[i], want);
    }
    TT_CHECK(vbad == 0, "%d vector roundings differ", vbad);
#if defined(__AVX512BF16__)
    tt_note("vector path: AVX512-BF16 (VCVTNEPS2BF16)");
#else
    tt_note("vector path: scalar (this build does not target AVX512-BF16)");
#endif
    free(x);
    free(y);
}

TT_TEST(gemm_bf16_registered_weights_follow_updates) {
    tp_rng r;
    tp_rng_seed(&r, 14);
    int prec = tp_gemm_precision();
    tp_gemm_set_precision(TP_PREC_BF16);
    size_t N = 96, in = 160, out = 200;
    float *X = malloc(N * in * 4), *W = malloc(out * in * 4), *Y1 = malloc(N * out * 4), *Y2 = malloc(N * out * 4);
    fill(X, N * in, &r, 1);
    fill(W, out * in, &r, 0.1f);
    tp_matmul_wt(X, W, NULL, Y1, N, in, out); /* converted on the fly */
    TT_CHECK(tp_gemm_bf16_register(W, out * in, 0) == 0, "register");
    tp_matmul_wt(X, W, NULL, Y2, N, in, out); /* from the registered copy */
    TT_CHECK(!memcmp(Y1, Y2, N * out * 4), "registered copy gives other bits than on-the-fly conversion");
    for (size_t i = 0; i < out * in; i++) W[i] *= -2.0f; /* the weights change ... */
    tp_gemm_bf16_refresh();                                /* ... and the owner says so */
    tp_matmul_wt(X, W, NULL, Y2, N, in, out);
    int ok = 1;
    for (size_t i = 0; i < N * out; i++) ok &= Y2[i] == -2.0f * Y1[i];
    TT_CHECK(ok, "after refresh the product does not follow the new weights");
    float dx1[4], dx2[4]; /* dX uses the same copy (W not transposed) */
    tp_gemm_bf16_forget_range(W, out * in);
    tp_matmul_dx(Y1, W, X, N, in, out, 0);
    memcpy(dx1, X, sizeof dx1);
    tp_gemm_bf16_register(W, out * in, 1);
    tp_matmul_dx(Y1, W, X, N, in, out, 0);
    memcpy(dx2, X, sizeof dx2);
    TT_CHECK(!memcmp(dx1, dx2, sizeof dx1), "dX from the registered copy differs");
    tp_gemm_bf16_forget_range(W, out * in);
    tp_gemm_set_precision(prec);
    free(X);
    free(W);
    free(Y1);
    free(Y2);
}

/* A frozen weight read as W^T gets oneDNN's blocked layout once, at its second product (gemm.c),
 * none after its first: the products give the bits of the row-major copy, padded shapes (K odd, N
 * not a multiple of 64) included, with and without accumulation; a budget below one copy, and a
 * weight that is not frozen, get none; forgetting the weight frees its copy. */
TT_TEST(gemm_blocked_weights_same_bits) {
    if (tp_gemm_backend() != TP_GEMM_DNNL) {
        tt_skip("oneDNN is not this build's backend: no blocked weights");
        return;
    }
    tp_rng r;
    tp_rng_seed(&r, 15);
    int prec = tp_gemm_precision();
    tp_gemm_set_precision(TP_PREC_BF16);
    size_t budget = tp_gemm_set_blocked_weights(0), base = tp_gemm_blocked_weights_bytes();
    const int shapes[3][2] = {{160, 200}, {161, 200}, {576, 192}}, Ms[3] = {37, 96, 256};
    for (int s = 0; s < 3; s++) {
        int K = shapes[s][0], N = shapes[s][1];
        size_t nw = (size_t)N * K, ny = (size_t)256 * N;
        float *W = malloc(nw * 4), *X = malloc((size_t)256 * K * 4), *ref = malloc(3 * ny * 4), *Y = malloc(ny * 4);
        fill(W, nw, &r, 0.1f);
        fill(X, (size_t)256 * K, &r, 1);
        for (int v = 0; v < 4; v++) { /* 0: plain, 1: blocked, 2: budget below one copy, 3: not frozen */
            const char *what[4] = {"plain", "blocked", "over budget", "not frozen"};
            tp_gemm_set_blocked_weights(v == 0 ? 0 : v == 2 ? nw * 2 - 1 : SIZE_MAX);
            tp_gemm_bf16_register(W, nw, v != 3);
            for (int m = 0; m < 3; m++) {
                int M = Ms[m];
                tp_matmul_wt(X, W, NULL, Y, (size_t)M, (size_t)K, (size_t)N);
                if (v == 1 && m == 0) /* made at a weight's second product, not its first */
                    TT_CHECK(tp_gemm_blocked_weights_bytes() == base, "K %d N %d: a blocked copy after one product",
                             K, N);
                tp_sgemm_prec(0, 1, M, N, K, 0.5f, X, K, W, K, 1.0f, Y, N); /* C = 0.5 X W^T + C */
                if (v == 0)
                    memcpy(ref + (size_t)m * ny, Y, (size_t)M * N * 4);
                else
                    TT_CHECK(!memcmp(ref + (size_t)m * ny, Y, (size_t)M * N * 4), "K %d N %d M %d, %s: other bits",
                             K, N, M, what[v]);
            }
            size_t held = tp_gemm_blocked_weights_bytes() - base;
            if (v == 1)
                TT_CHECK(held >= nw * 2, "K %d N %d: the blocked copy holds %zu bytes (the weight %zu)", K, N, held,
                         nw * 2);
            else
                TT_CHECK(held == 0, "K %d N %d, %s: %zu bytes of blocked copies", K, N, what[v], held);
            tp_gemm_bf16_forget_range(W, nw);
            TT_CHECK(tp_gemm_blocked_weights_bytes() == base, "forgetting the weight frees its blocked copy");
        }
        free(W);
        free(X);
        free(ref);
        free(Y);
    }
    tp_gemm_set_blocked_weights(budget);
    tp_gemm_set_precision(prec);
}

/* A training step of a tiny random model: bf16 loss and gradient close to fp32 (bf16 has 8 bits
 * of mantissa: ~0.4 % per input), and not identical (the path is really taken). */
/* A pinned input (converted once for several products) gives the bits of converting it per
 * product, in every transpose; after unpin a changed input is read afresh; fp32 ignores pins. */
TT_TEST(gemm_bf16_pinned_inputs_same_bits) {
    tp_rng r;
    tp_rng_seed(&r, 14);
    int prec = tp_gemm_precision(), M = 96, N = 80, K = 128;
    float *A = malloc((size_t)M * K * 4), *B = malloc((size_t)K * N * 4), *C1 = malloc((size_t)M * N * 4),
          *C2 = malloc((size_t)M * N * 4);
    fill(A, (size_t)M * K, &r, 1);
    fill(B, (size_t)K * N, &r, 1);
    tp_gemm_set_precision(TP_PREC_BF16);
    for (int t = 0; t < 4; t++) {
        int ta = t & 1, tb = t >> 1, lda = ta ? M : K, ldb = tb ? K : N;
        tp_sgemm_prec(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 0, C1, N);
        tp_gemm_bf16_pin(A, (size_t)M * K);
        tp_gemm_bf16_pin(B, (size_t)K * N);
        tp_sgemm_prec(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 0, C2, N);
        TT_CHECK(!memcmp(C1, C2, (size_t)M * N * 4), "ta=%d tb=%d: pinned = converted per product", ta, tb);
        tp_gemm_bf16_unpin(A);
        tp_gemm_bf16_unpin(B);
    }
    tp_sgemm_prec(0, 0, M, N, K, 1, A, K, B, N, 0, C2, N);
    tp_gemm_bf16_pin(A, (size_t)M * K);
    tp_gemm_bf16_unpin(A);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] *= 2; /* changed after unpin: no stale copy */
    tp_sgemm_prec(0, 0, M, N, K, 1, A, K, B, N, 0, C1, N); /* doubling is exact: twice the first */
    int twice = 1;
    for (int i = 0; i < M * N; i++) twice &= C1[i] == 2 * C2[i];
    TT_CHECK(twice, "after unpin the changed input is converted again");
    tp_gemm_set_precision(TP_PREC_FP32);
    tp_gemm_bf16_pin(A, (size_t)M * K); /* fp32: no pin, the fp32 product */
    tp_sgemm_prec(0, 0, M, N, K, 1, A, K, B, N, 0, C1, N);
    tp_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C2, N);
    TT_CHECK(!memcmp(C1, C2, (size_t)M * N * 4), "fp32 ignores pins");
    tp_gemm_bf16_unpin(A);
    tp_gemm_set_precision(prec);
    free(A);
    free(B);
    free(C1);
    free(C2);
}

/* A tiny Llama-like config (vocab 300, d 64, 4/2 heads of 16, FFN 160) of n_layers layers. */
static tp_config tiny_config(int n_layers) {
    tp_config c;
    memset(&c, 0, sizeof c);
    c.vocab = 300;
    c.d_model = 64;
    c.n_layers = n_layers;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.d_ff = 160;
    c.max_pos = 128;
    c.rope_theta = 10000;
    c.norm_eps = 1e-5f;
    c.bos_id = c.eos_id = -1;
    return c;
}

TT_TEST(gemm_bf16_training_step_close_to_fp32) {
    tp_config c = tiny_config(2);
    tp_model *m = NULL, *g1 = NULL, *g2 = NULL;
    tp_tape *tape = NULL;
    TT_CHECK(tp_config_validate(&c) == TP_OK, "config: %s", tp_errmsg());
    if (tp_model_alloc(&c, &m) || tp_model_alloc(&c, &g1) || tp_model_alloc(&c, &g2) ||
        tp_tape_alloc(&c, 2, 48, 0, &tape)) {
        TT_CHECK(0, "alloc");
        goto out;
    }
    tp_rng r;
    tp_rng_seed(&r, 15);
    fill(m->params, m->n_params, &r, 0.08f);
    for (int l = 0; l < c.n_layers; l++)
        for (int i = 0; i < c.d_model; i++) m->layers[l].attn_norm[i] = m->layers[l].mlp_norm[i] = 1.0f;
    for (int i = 0; i < c.d_model; i++) m->final_norm[i] = 1.0f;
    int B = 2, T = 48;
    int32_t tok[96], tgt[96];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(tp_rng_u64(&r) % (uint64_t)c.vocab);
        tgt[i] = (int32_t)(tp_rng_u64(&r) % (uint64_t)c.vocab);
    }
    int prec = tp_gemm_precision();
    double l1 = 0, l2 = 0;
    tp_gemm_set_precision(TP_PREC_FP32);
    tp_step_opts o;
    memset(&o, 0, sizeof o);
    o.targets = tgt;
    TT_CHECK(tp_train_step(m, g1, tape, tok, B, T, &o, &l1, NULL) == TP_OK, "fp32 step: %s", tp_errmsg());
    tp_gemm_set_precision(TP_PREC_BF16);
    TT_CHECK(tp_model_prepare_precision(m, 0) == TP_OK, "prepare");
    TT_CHECK(tp_train_step(m, g2, tape, tok, B, T, &o, &l2, NULL) == TP_OK, "bf16 step: %s", tp_errmsg());
    tp_gemm_set_precision(prec);
    double num = 0, den = 0, same = 1;
    for (size_t i = 0; i < m->n_params; i++) {
        double d = g2->params[i] - g1->params[i];
        num += d * d;
        den += (double)g1->params[i] * g1->params[i];
        same = same && g1->params[i] == g2->params[i];
    }
    double rel = sqrt(num / den);
    tt_note("loss fp32 %.6f bf16 %.6f; gradient relative L2 difference %.2e", l1, l2, rel);
    TT_NEAR(l2, l1, 0, 2e-3);
    TT_CHECK(rel < 3e-2 && !same, "bf16 gradient rel diff %g (identical: %d)", rel, (int)same);
out:
    tp_tape_free(tape);
    tp_model_free(m); /* also drops m's registered bf16 copies */
    tp_model_free(g1);
    tp_model_free(g2);
}

/* The bf16 product inputs the tape keeps for the backward (tape_bf16_alloc) are the values the
 * backward would rebuild and convert otherwise: loss and every gradient the same bits, with them
 * and without (tp_tape_keep_bf16), on a Llama-like config and on a Gemma-3-like one with
 * per-layer widths; and the same again from a recompute tape, which keeps none. */
/* A grad hook that adds 0.01 x to the gradient of every layer output, and counts its calls at the
 * points inside a layer (which the bf16 tape leaves unbuilt in fp32). */
typedef struct {
    int inner_calls;
} resid_hook_state;
static void resid_grad_hook(void *user, tp_hook_point p, int layer, const float *x, float *dx, int B, int T,
                            int width) {
    (void)layer;
    resid_hook_state *st = user;
    if (p == TP_HOOK_LAYER_OUT)
        for (size_t i = 0; i < (size_t)B * T * (size_t)width; i++) dx[i] += 0.01f * x[i];
    else if (p != TP_HOOK_LAYER_IN && p != TP_HOOK_FINAL_NORM)
        st->inner_calls++;
}

TT_TEST(bf16_tape_inputs_same_bits) {
    int backend = tp_gemm_backend();
    for (int v = 0; v < 4; v++) { /* configs 0, 1 on the build's products, then on the plain loops */
        if (v == 2 && tp_gemm_set_backend(TP_GEMM_LOOPS) != 0) break;
        tp_config c = tiny_config(3);
        if (v % 2) {
            c.arch = TP_ARCH_GEMMA3;
            c.qk_norm = c.sandwich_norm = c.norm_plus_one = c.embed_scale = 1;
            c.act = TP_ACT_GELU_TANH;
            int ff[3] = {160, 96, 128}, heads[3] = {4, 2, 4};
            tp_config_set_widths(&c, ff, heads);
        }
        const char *names[4] = {"llama-like", "gemma3-like, per-layer widths", "llama-like, loops",
                                "gemma3-like, loops"};
        const char *name = names[v];
        tp_model *m = NULL, *g[3] = {NULL, NULL, NULL};
        tp_tape *tape[3] = {NULL, NULL, NULL};
        int prec = tp_gemm_precision();
        tp_gemm_set_precision(TP_PREC_BF16);
        int B = 2, T = 40, ok = TT_CHECK(tp_config_validate(&c) == TP_OK, "%s: config: %s", name, tp_errmsg());
        for (int k = 0; ok && k < 3; k++) {
            tp_tape_keep_bf16(k == 0);
            ok = tp_model_alloc(&c, &g[k]) == TP_OK && tp_tape_alloc(&c, B, T, k == 2, &tape[k]) == TP_OK;
        }
        tp_tape_keep_bf16(1);
        ok = ok && tp_model_alloc(&c, &m) == TP_OK;
        if (!TT_CHECK(ok, "%s: alloc: %s", name, tp_errmsg())) goto next;
        tp_rng r;
        tp_rng_seed(&r, 21 + (uint64_t)v);
        fill(m->params, m->n_params, &r, 0.08f);
        int32_t tok[80], tgt[80];
        for (int i = 0; i < B * T; i++) {
            tok[i] = (int32_t)(tp_rng_u64(&r) % (uint64_t)c.vocab);
            tgt[i] = (int32_t)(tp_rng_u64(&r) % (uint64_t)c.vocab);
        }
        TT_CHECK(tp_model_prepare_precision(m, 0) == TP_OK, "prepare");
        size_t kept = tp_tape_bytes(tape[0]), plain = tp_tape_bytes(tape[1]);
        /* per layer its two norm outputs, att and act; then dg and du at the widest d_ff; in bf16,
         * each rounded up to 32 values */
        size_t want = 0, N = (size_t)B * T;
#define UP32(x) (((x) + 31) & ~(size_t)31)
        for (int l = 0; l < c.n_layers; l++)
            want += 2 * UP32(N * 64) + UP32(N * (size_t)tp_config_heads(&c, l) * 16) + UP32(N * (size_t)tp_config_ff(&c, l));
        want = 2 * (want + 2 * UP32(N * (size_t)c.d_ff));
#undef UP32
        TT_CHECK(kept - plain == want, "%s: the tape keeps %zu more bytes (expected %zu)", name, kept - plain, want);
        double loss[3] = {0, 0, 0};
        tp_step_opts o;
        memset(&o, 0, sizeof o);
        o.targets = tgt;
        for (int k = 0; k < 3; k++) {
            tp_tape_keep_bf16(k != 1); /* a step allocates them where the tape lacks them */
            TT_CHECK(tp_train_step(m, g[k], tape[k], tok, B, T, &o, &loss[k], NULL) == TP_OK, "%s: step %d: %s", name,
                     k, tp_errmsg());
        }
        tp_tape_keep_bf16(1);
        TT_CHECK(tp_tape_bytes(tape[1]) == plain && tp_tape_bytes(tape[2]) < plain, "%s: tape bytes after the steps",
                 name);
        size_t diff1 = 0, diff2 = 0, nonzero = 0;
        for (size_t i = 0; i < m->n_params; i++) {
            diff1 += memcmp(&g[0]->params[i], &g[1]->params[i], sizeof(float)) != 0;
            diff2 += memcmp(&g[0]->params[i], &g[2]->params[i], sizeof(float)) != 0;
            nonzero += g[0]->params[i] != 0.0f;
        }
        tt_note("%s: loss %.6f; %zu of %zu gradients nonzero; tape %zu bytes kept, %zu without", name, loss[0], nonzero,
                m->n_params, kept, plain);
        TT_CHECK(loss[0] == loss[1] && loss[0] == loss[2], "%s: losses %.9g %.9g %.9g", name, loss[0], loss[1], loss[2]);
        TT_CHECK(diff1 == 0 && diff2 == 0 && nonzero > m->n_params / 2,
                 "%s: %zu gradients differ without the kept inputs, %zu with recompute (%zu nonzero)", name, diff1, diff2,
                 nonzero);
        /* a grad hook on the residual stream only (hook_points): the step keeps its bf16 tape (a fresh
         * tape gets the buffers) and gives the bits of the same hook called at every point, which
         * turns the tape off */
        {
            tp_tape *fresh = NULL;
            tp_tape_keep_bf16(0); /* allocated without the buffers: the step adds them if it keeps them */
            int fok = tp_tape_alloc(&c, B, T, 0, &fresh) == TP_OK;
            tp_tape_keep_bf16(1);
            if (!TT_CHECK(fok && tp_tape_bytes(fresh) == plain, "%s: tape: %s", name, tp_errmsg())) goto next;
            resid_hook_state hs[2] = {{0}, {0}};
            tp_model *gg[2] = {g[0], g[1]};
            tp_tape *tt[2] = {fresh, tape[1]};
            for (int k = 0; k < 2; k++) {
                memset(gg[k]->params, 0, gg[k]->n_params * sizeof(float));
                tp_step_opts oh;
                memset(&oh, 0, sizeof oh);
                oh.targets = tgt;
                oh.grad_hook = resid_grad_hook;
                oh.grad_hook_user = &hs[k];
                oh.hook_points = k == 0 ? TP_HOOK_RESIDUAL : 0;
                TT_CHECK(tp_train_step(m, gg[k], tt[k], tok, B, T, &oh, &loss[k], NULL) == TP_OK, "%s: hooked step %d: %s",
                         name, k, tp_errmsg());
            }
            TT_CHECK(tp_tape_bytes(fresh) == kept && tp_tape_bytes(tape[1]) == plain,
                     "%s: residual hooks: tape %zu bytes (kept %zu), every point: %zu (plain %zu)", name,
                     tp_tape_bytes(fresh), kept, tp_tape_bytes(tape[1]), plain);
            TT_CHECK(hs[0].inner_calls == 0 && hs[1].inner_calls == 6 * c.n_layers,
                     "%s: hook calls inside layers: %d with hook_points, %d without", name, hs[0].inner_calls,
                     hs[1].inner_calls);
            size_t diffh = 0, moved = 0;
            for (size_t i = 0; i < m->n_params; i++) {
                diffh += memcmp(&g[0]->params[i], &g[1]->params[i], sizeof(float)) != 0;
                moved += g[0]->params[i] != g[2]->params[i];
            }
            TT_CHECK(loss[0] == loss[1] && diffh == 0 && moved > m->n_params / 2,
                     "%s: residual grad hook: losses %.9g %.9g, %zu gradients differ, %zu moved by the hook", name,
                     loss[0], loss[1], diffh, moved);
            tp_tape_free(fresh);
        }
    next:
        tp_gemm_set_precision(prec);
        for (int k = 0; k < 3; k++) {
            tp_tape_free(tape[k]);
            tp_model_free(g[k]);
        }
        tp_model_free(m);
    }
    tp_gemm_set_backend(backend);
}

/* ulp distance between two finite floats of the same sign (or both zero) */
static double ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = (int32_t)0x80000000 - ia;
    if (ib < 0) ib = (int32_t)0x80000000 - ib;
    return fabs((double)ia - (double)ib);
}

TT_TEST(kernel_vexp_accuracy_and_edges) {
    size_t n = 200003;
    float *x = malloc(n * 4), *y = malloc(n * 4);
    for (size_t i = 0; i < n; i++) x[i] = -104.0f + 193.0f * (float)i / (float)(n - 1); /* [-104, 89] */
    tp_vexp(x, y, n);
    double worst = 0, worst_den = 0;
    for (size_t i = 0; i < n; i++) {
        double ref = exp((double)x[i]);
        float rf = (float)ref;
        if (rf == 0.0f) {
            TT_CHECK(y[i] == 0.0f, "exp(%a) = %a, want 0", (double)x[i], (double)y[i]);
            continue;
        }
        double u = ulps(y[i], rf);
        if (fpclassify(rf) == FP_SUBNORMAL) { /* denormal results: absolute error of a few denormal steps */
            if (u > worst_den) worst_den = u;
        } else if (u > worst)
            worst = u;
    }
    tt_note("vector exp over [-104, 89]: worst %.0f ulp from the correctly rounded exp (denormal range %.0f)",
            worst, worst_den);
    TT_CHECK(worst <= 2, "vector exp error %g ulp", worst);
    TT_CHECK(worst_den <= 2, "vector exp denormal error %g ulp", worst_den);
    const float sp[] = {-INFINITY, INFINITY, NAN, -1000.0f, 1000.0f, 0.0f, -0.0f, 88.7f, 89.5f};
    float o[9];
    tp_vexp(sp, o, 9);
    TT_CHECK(o[0] == 0 && isinf(o[1]) && o[1] > 0 && isnan(o[2]) && o[3] == 0 && isinf(o[4]) && o[5] == 1 && o[6] == 1,
             "edges: %g %g %g %g %g %g %g", (double)o[0], (double)o[1], (double)o[2], (double)o[3], (double)o[4],
             (double)o[5], (double)o[6]);
    TT_CHECK(ulps(o[7], expf(88.7f)) <= 2 && isinf(o[8]), "near overflow: %a %a", (double)o[7], (double)o[8]);
    /* tails of every length, in place, and the shifted sum in double */
    for (size_t len = 0; len <= 40; len++) {
        float a[40], b[40];
        for (size_t i = 0; i < len; i++) a[i] = b[i] = (float)i * 0.37f - 5.0f;
        float mx = tp_vmax(a, len);
        double sum = tp_exp_shift_sum(a, mx, a, len), want = 0;
        float wmx = -INFINITY;
        for (size_t i = 0; i < len; i++) wmx = b[i] > wmx ? b[i] : wmx;
        for (size_t i = 0; i < len; i++) want += exp((double)b[i] - wmx);
        TT_CHECK(mx == wmx, "max of %zu: %g vs %g", len, (double)mx, (double)wmx);
        TT_CHECK(fabs(sum - want) <= 1e-6 * (want + 1e-30), "sum of %zu: %.9g vs %.9g", len, sum, want);
        for (size_t i = 0; i < len; i++)
            TT_CHECK(ulps(a[i], (float)exp((double)(b[i] - wmx))) <= 2, "len %zu elem %zu", len, i); /* fp32 shift */
    }
    free(x);
    free(y);
}

/* tp_exp_shift_sum_f64 (the log-sum-exp of scoring and CE rows) against libm's exp in double:
 * every term within 4 ulp over [-708, 0] (1e5 points); sums of every length 0..40 within 1e-15
 * of the sequential libm sum, and of a vocabulary-sized row within 1e-15 of the exact sum. */
TT_TEST(gemm_exp_shift_sum_f64_matches_libm) {
    double worst = 0;
    for (int i = 0; i <= 100000; i++) {
        float x = (float)(-708.0 * i / 100000.0);
        double got = tp_exp_shift_sum_f64(&x, 0.0, 1), want = exp((double)x);
        double e = fabs(got - want) / want / 2.220446049250313e-16;
        if (e > worst) worst = e;
    }
    tt_note("exp in double over [-708, 0]: worst %.2f ulp from libm", worst);
    TT_CHECK(worst <= 4, "double exp error %.2f ulp", worst);
    tp_rng r;
    tp_rng_seed(&r, 5);
    size_t V = 49152;
    float *row = malloc(V * sizeof *row);
    for (size_t i = 0; i < V; i++) row[i] = 6.0f * tp_rng_normal(&r);
    for (size_t len = 0; len <= 40; len++) {
        double mx = len ? tp_vmax(row, len) : 0, want = 0;
        for (size_t i = 0; i < len; i++) want += exp((double)row[i] - mx);
        double got = tp_exp_shift_sum_f64(row, mx, len);
        TT_CHECK(fabs(got - want) <= 1e-15 * want, "sum of %zu: %.17g vs %.17g", len, got, want);
    }
    /* a row of the vocabulary's size: against the sum in long double (the sequential double sum
     * itself is off by ~1e-14 there) */
    double mx = tp_vmax(row, V), seq = 0;
    long double exact = 0;
    for (size_t i = 0; i < V; i++) {
        seq += exp((double)row[i] - mx);
        exact += expl((long double)row[i] - (long double)mx);
    }
    double got = tp_exp_shift_sum_f64(row, mx, V), eg = fabs((double)((got - exact) / exact)),
           es = fabs((double)((seq - exact) / exact));
    tt_note("sum of %zu terms: relative error %.2g (sequential libm sum: %.2g)", V, eg, es);
    TT_CHECK(eg <= 1e-15, "sum of %zu: %.17g vs %.17Lg (rel %.2g)", V, got, exact, eg);
    free(row);
}

/* tp_attention_head takes the blocked path (causal part only) for T > TP_ATT_BLOCK. */
TT_TEST(kernel_attention_long_blocks_match_naive) {
    tp_rng r;
    tp_rng_seed(&r, 16);
    const int cases[][2] = {{150, 0}, {129, 20}, {65, 3}};
    for (int c = 0; c < 3; c++) {
        int T = cases[c][0], p0 = cases[c][1], hd = 24, ld = 3 * hd;
        size_t Tk = (size_t)(p0 + T);
        float *Q = malloc((size_t)T * ld * 4), *K = malloc(Tk * ld * 4), *V = malloc(Tk * ld * 4);
        float *O = calloc((size_t)T * ld, 4), *Or = calloc((size_t)T * ld, 4), *S = malloc((size_t)T * Tk * 4);
        fill(Q, (size_t)T * ld, &r, 1);
        fill(K, Tk * ld, &r, 1);
        fill(V, Tk * ld, &r, 1);
        tp_attention_head(Q + hd, ld, K + hd, V + hd, ld, O + hd, ld, T, p0, 0, hd, 0.3f, S);
        tp_attention_head_ref(Q + hd, ld, K + hd, V + hd, ld, Or + hd, ld, T, p0, 0, hd, 0.3f);
        double worst = 0;
        int untouched = 1;
        for (int i = 0; i < T; i++)
            for (int e = 0; e < ld; e++) {
                size_t k = (size_t)i * ld + e;
                if (e >= hd && e < 2 * hd) worst = fmax(worst, fabs(O[k] - Or[k]));
                else untouched &= O[k] == 0.0f;
            }
        TT_CHECK(worst < 2e-5 && untouched, "T %d p0 %d: max diff %g, other columns untouched %d", T, p0, worst,
                 untouched);
        free(Q); free(K); free(V); free(O); free(Or); free(S);
    }
}
