/* Kernel timings that no CLI command isolates (bench/run.sh kernels, make bench).
 *
 *   taper-kernel-bench [--attention | --products] [--reps N] [--seq T] [--head-dim HD]
 *
 * --products: the bf16 matrix products of one SmolLM2-135M training step at 2 x 512 tokens, one
 * of each shape, through tp_sgemm_prec as a step calls it, with both inputs already in bf16 (as a
 * step's pinned inputs and weight copies are) and hot in cache: the rate each shape reaches when
 * nothing else runs between two calls (bench/matmul_peer.py times PyTorch's on the same shapes).
 *
 * --attention: the bf16 attention of one head at training shapes (SmolLM2-135M: 9 query heads over 3 K/V
 * heads, head_dim 64, T 512), on one thread as a training step runs each head: the forward
 * (scores, softmax, P V, log-sum-exp) and the backward in its two forms, the one AVX512-BF16 dot
 * products run and the one AMX tiles run (which also runs on dot products, for this comparison).
 * Each time is the best of N repetitions over the 9 heads; "useful" GFLOP/s counts the causal
 * half of every product (forward 2, backward 5). The two backward forms must give the same bits;
 * the program says so, or exits 1. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/kernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int arg_int(int argc, char **argv, const char *name, int def) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return atoi(argv[i + 1]);
    return def;
}

static int has(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], name)) return 1;
    return 0;
}

/* One product shape of the step: C (M x N) = A B with A M x K (transposed in memory: ta), B K x N
 * (tb: B is N x K, a weight), accumulating into C (beta 1) as the weight gradients do. */
typedef struct {
    const char *what;
    int M, N, K, ta, tb, acc, per_step;
} shape;

static int products(int reps) {
    static const shape sh[] = {
        {"q, o_proj: X W^T", 1024, 576, 576, 0, 1, 0, 60},
        {"k, v_proj: X W^T", 1024, 192, 576, 0, 1, 0, 60},
        {"gate, up: X W^T", 1024, 1536, 576, 0, 1, 0, 60},
        {"down: X W^T", 1024, 576, 1536, 0, 1, 0, 30},
        {"logits, 512 rows: X E^T", 512, 49152, 576, 0, 1, 0, 2},
        {"dX of gate, up: dY W", 1024, 576, 1536, 0, 0, 0, 60},
        {"dX of down: dY W", 1024, 1536, 576, 0, 0, 0, 30},
        {"dX of q, o: dY W", 1024, 576, 576, 0, 0, 0, 60},
        {"dX of k, v: dY W", 1024, 576, 192, 0, 0, 0, 60},
        {"dX of logits: dZ E", 512, 576, 49152, 0, 0, 0, 2},
        {"dW of gate, up: dY^T X", 1536, 576, 1024, 1, 0, 1, 60},
        {"dW of down: dY^T X", 576, 1536, 1024, 1, 0, 1, 30},
        {"dW of q, o: dY^T X", 576, 576, 1024, 1, 0, 1, 60},
        {"dW of k, v: dY^T X", 192, 576, 1024, 1, 0, 1, 60},
        {"dE of logits: dZ^T X", 49152, 576, 512, 1, 0, 1, 2},
    };
    int ns = (int)(sizeof sh / sizeof sh[0]);
    tp_gemm_set_precision(TP_PREC_BF16);
    printf("bf16 products of one training step (SmolLM2-135M, 2 x 512 tokens), inputs in bf16 and hot, best of %d: %s\n",
           reps, tp_gemm_describe());
    printf("| product | M x N x K | per step | GFLOP/s |\n| --- | --- | ---: | ---: |\n");
    double flop_all = 0, t_all = 0;
    for (int i = 0; i < ns; i++) {
        const shape *q = &sh[i];
        size_t na = (size_t)q->M * q->K, nb = (size_t)q->K * q->N, nc = (size_t)q->M * q->N;
        float *A = malloc(na * 4), *B = malloc(nb * 4), *C = calloc(nc, 4);
        if (!A || !B || !C) {
            fprintf(stderr, "taper-kernel-bench: out of memory\n");
            return 1;
        }
        for (size_t j = 0; j < na; j++) A[j] = (float)((j * 7919) % 200) / 100.0f - 1.0f;
        for (size_t j = 0; j < nb; j++) B[j] = (float)((j * 104729) % 200) / 100.0f - 1.0f;
        tp_gemm_bf16_pin(A, na);
        tp_gemm_bf16_pin(B, nb);
        int lda = q->ta ? q->M : q->K, ldb = q->tb ? q->K : q->N;
        double best = 1e30;
        for (int r = 0; r < reps + 2; r++) {
            double t = now();
            tp_sgemm_prec(q->ta, q->tb, q->M, q->N, q->K, 1.0f, A, lda, B, ldb, q->acc ? 1.0f : 0.0f, C, q->N);
            t = now() - t;
            if (r >= 2 && t < best) best = t; /* the first two build and warm the primitive */
        }
        double fl = 2.0 * q->M * q->N * q->K;
        printf("| %s | %d x %d x %d | %d | %.1f |\n", q->what, q->M, q->N, q->K, q->per_step, fl / best / 1e9);
        flop_all += fl * q->per_step;
        t_all += best * q->per_step;
        tp_gemm_bf16_unpin(A);
        tp_gemm_bf16_unpin(B);
        free(A), free(B), free(C);
    }
    printf("one step's products at these rates: %.0f GFLOP in %.0f ms, %.1f GFLOP/s\n", flop_all / 1e9, 1e3 * t_all,
           flop_all / t_all / 1e9);
    tp_gemm_shutdown();
    return 0;
}

int main(int argc, char **argv) {
    if (has(argc, argv, "--help") || has(argc, argv, "-h")) {
        printf("usage: taper-kernel-bench [--attention | --products] [--reps N (20)] [--seq T (512)] [--head-dim HD (64)]\n"
               "--attention: bf16 attention of one head, forward and both backward forms, one thread\n"
               "--products: the bf16 products of one SmolLM2-135M training step, inputs hot (OMP_NUM_THREADS threads)\n"
               "neither: both\n");
        return 0;
    }
    int want_p = has(argc, argv, "--products"), want_a = has(argc, argv, "--attention") || !want_p;
    if (want_p && products(arg_int(argc, argv, "--reps", 20) > 0 ? arg_int(argc, argv, "--reps", 20) : 1)) return 1;
    if (!want_a) return 0;
    int reps = arg_int(argc, argv, "--reps", 20), T = arg_int(argc, argv, "--seq", 512);
    int hd = arg_int(argc, argv, "--head-dim", 64), nh = 9, nkv = 3;
    if (reps < 1 || T < 1 || T > 16384 || hd < 32 || hd > 512 || hd % 32) {
        fprintf(stderr, "taper-kernel-bench: need --reps >= 1, 1 <= --seq <= 16384, --head-dim a multiple of 32 in [32, 512]\n");
        return 2;
    }
    if (!tp_attention_bf16_kernel()) {
        printf("bf16 attention: not available here (no AVX512-BF16 in this build or CPU); nothing to time\n");
        return 0;
    }
    size_t qd = (size_t)nh * hd, kvd = (size_t)nkv * hd, nq = (size_t)T * qd, nk = (size_t)T * kvd;
    float scale = 1.0f / sqrtf((float)hd);
    float *Q = malloc(nq * 4), *K = malloc(nk * 4), *V = malloc(nk * 4), *O = malloc(nq * 4), *dO = malloc(nq * 4);
    float *lse = malloc((size_t)T * nh * 4), *dQ[2], *dK[2], *dV[2];
    for (int f = 0; f < 2; f++) {
        dQ[f] = malloc(nq * 4);
        dK[f] = malloc(nq * 4);
        dV[f] = malloc(nq * 4);
    }
    if (!Q || !K || !V || !O || !dO || !lse || !dQ[1] || !dK[1] || !dV[1]) {
        fprintf(stderr, "taper-kernel-bench: out of memory\n");
        return 1;
    }
    unsigned s = 1;
    for (size_t i = 0; i < nq; i++) {
        s = s * 1664525u + 1013904223u;
        Q[i] = (float)((int)(s >> 9) % 2001 - 1000) / 500.0f;
        s = s * 1664525u + 1013904223u;
        dO[i] = (float)((int)(s >> 9) % 2001 - 1000) / 1000.0f;
    }
    for (size_t i = 0; i < nk; i++) {
        s = s * 1664525u + 1013904223u;
        K[i] = (float)((int)(s >> 9) % 2001 - 1000) / 500.0f;
        s = s * 1664525u + 1013904223u;
        V[i] = (float)((int)(s >> 9) % 2001 - 1000) / 1000.0f;
    }
    double tf = 1e30, tb[2] = {1e30, 1e30};
    for (int r = 0; r < reps; r++) {
        double t = now();
        for (int h = 0; h < nh; h++)
            tp_attention_head_lse_bf16(Q + (size_t)h * hd, qd, K + (size_t)(h / 3) * hd, V + (size_t)(h / 3) * hd, kvd,
                                       O + (size_t)h * hd, qd, lse + (size_t)h * T, T, 0, 0, hd, scale);
        t = now() - t;
        if (t < tf) tf = t;
        for (int f = 0; f < 2; f++) { /* 0: the dot products' own form, 1: the tiles' form */
            memset(dK[f], 0, nq * 4);
            memset(dV[f], 0, nq * 4);
            tp_attention_bf16_tiles_form(f);
            t = now();
            for (int h = 0; h < nh; h++)
                tp_attention_head_bwd_bf16(Q + (size_t)h * hd, qd, K + (size_t)(h / 3) * hd, V + (size_t)(h / 3) * hd, kvd,
                                           O + (size_t)h * hd, dO + (size_t)h * hd, qd, lse + (size_t)h * T,
                                           dQ[f] + (size_t)h * hd, qd, dK[f] + (size_t)h * hd, dV[f] + (size_t)h * hd, qd,
                                           T, 0, 0, hd, scale);
            t = now() - t;
            tp_attention_bf16_tiles_form(0);
            if (t < tb[f]) tb[f] = t;
        }
    }
    size_t diff = 0;
    for (size_t i = 0; i < nq; i++) diff += !(dQ[0][i] == dQ[1][i]) + !(dK[0][i] == dK[1][i]) + !(dV[0][i] == dV[1][i]);
    double prod = (double)T * T * hd; /* flops of one causal product: T^2/2 multiply-adds of hd */
    printf("bf16 attention, one head on one thread: T %d, head_dim %d, best of %d (%s)\n", T, hd, reps,
           tp_attention_bf16_kernel() == 2 ? "AMX tiles" : "AVX512-BF16 dot products");
    printf("  forward                    %8.3f ms  %6.1f useful GFLOP/s\n", 1e3 * tf / nh, 2 * prod * nh / tf / 1e9);
    printf("  backward, tiles' form      %8.3f ms  %6.1f useful GFLOP/s\n", 1e3 * tb[1] / nh, 5 * prod * nh / tb[1] / 1e9);
    printf("  backward, own form         %8.3f ms  %6.1f useful GFLOP/s  (%.2fx)\n", 1e3 * tb[0] / nh,
           5 * prod * nh / tb[0] / 1e9, tb[1] / tb[0]);
    printf("  the two backward forms: %s\n", diff ? "DIFFERENT results" : "the same bits");
    free(Q), free(K), free(V), free(O), free(dO), free(lse);
    for (int f = 0; f < 2; f++) free(dQ[f]), free(dK[f]), free(dV[f]);
    return diff ? 1 : 0;
}
