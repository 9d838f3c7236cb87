/* Sampling and decoding (src/model/generate.c, skinny.c, kernels.c): the lazily sorted sampler
 * picks what sorting the whole vocabulary picks, on every kind of distribution and setting; the
 * decoding kernels (skinny products, attention of a few query rows) against naive twins. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels.h"
#include "taper/generate.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "tt.h"

/* The naive twin: the whole vocabulary sorted (probability descending, id ascending), then top-k,
 * top-p and the draw walked over it. */
typedef struct { float p; int32_t id; } ref_cand;

static int ref_order(const void *a, const void *b) {
    const ref_cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

static int32_t ref_sample(const float *logits, int vocab, const tp_sampler *s, tp_rng *rng) {
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (!(s->temperature > 0)) return best;
    ref_cand *c = malloc((size_t)vocab * sizeof *c);
    for (int i = 0; i < vocab; i++) {
        c[i].p = expf((logits[i] - logits[best]) / s->temperature);
        c[i].id = i;
    }
    qsort(c, (size_t)vocab, sizeof *c, ref_order);
    int n = s->top_k > 0 && s->top_k < vocab ? s->top_k : vocab;
    double kept = 0;
    for (int i = 0; i < n; i++) kept += c[i].p;
    if (s->top_p > 0 && s->top_p < 1) {
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += c[i].p;
            if (acc >= s->top_p * kept) { n = i + 1; break; }
        }
        kept = acc < kept ? acc : kept;
    }
    double u = tp_rng_uniform(rng) * kept, acc = 0;
    int32_t pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) { pick = c[i].id; break; }
    }
    free(c);
    return pick;
}

TT_TEST(sample_equals_full_sort) {
    /* peaked, flat, tied and heavy-tailed logits over vocabularies of 7 to 49,152 ids; greedy,
     * plain, top-k, top-p and both; the same random stream on both sides */
    const int vocabs[] = {7, 300, 5000, 49152};
    const tp_sampler samplers[] = {{0, 1, 0}, {1, 1, 0}, {1, 0.95f, 0}, {0.7f, 0.9f, 0}, {1, 1, 40},
                                   {1.3f, 0.8f, 100}, {1, 0.5f, 3}, {2, 0.999f, 0}, {0.2f, 1, 1}};
    tp_rng gen;
    tp_rng_seed(&gen, 42);
    int cases = 0, same = 0;
    for (size_t vi = 0; vi < sizeof vocabs / sizeof *vocabs; vi++) {
        int V = vocabs[vi];
        float *lg = malloc((size_t)V * sizeof *lg), *tmp = malloc((size_t)V * sizeof *tmp);
        for (int shape = 0; shape < 4; shape++)
            for (int rep = 0; rep < 6; rep++) {
                for (int i = 0; i < V; i++) {
                    float z = tp_rng_normal(&gen);
                    lg[i] = shape == 0 ? 3 * z                                  /* spread */
                            : shape == 1 ? 0.05f * z                            /* nearly flat */
                            : shape == 2 ? (float)((int)(2 * z))                /* many ties */
                                         : (i % 97 == 0 ? 12.0f : 0.0f) + z;   /* a few heavy ids */
                }
                for (size_t si = 0; si < sizeof samplers / sizeof *samplers; si++) {
                    tp_rng a, b;
                    tp_rng_seed(&a, (uint64_t)(cases + 1));
                    tp_rng_seed(&b, (uint64_t)(cases + 1));
                    memcpy(tmp, lg, (size_t)V * sizeof *tmp);
                    int32_t got = tp_sample(tmp, V, &samplers[si], &a);
                    int32_t want = ref_sample(lg, V, &samplers[si], &b);
                    cases++;
                    same += got == want;
                    if (got != want)
                        TT_CHECK(0, "V %d shape %d sampler %zu: picked %d, the full sort picks %d", V, shape, si, got,
                                 want);
                }
            }
        free(lg);
        free(tmp);
    }
    tt_note("%d of %d draws identical to the full sort", same, cases);
    TT_CHECK(same == cases && cases == 4 * 4 * 6 * 9, "every draw equal (%d of %d)", same, cases);
    /* the sampler's threshold pass: one likely id and a long tail of 49,151 ids at relative
     * probability e^-10 (the tail holds 69 % of the mass: the 1e-4 cut fails, the 1e-8 cut holds),
     * and at 5e-9 with top_p 0.99999 (both cuts fail: the whole vocabulary is walked) */
    const float tails[2] = {-10.0f, logf(5e-9f)};
    const tp_sampler cut[2] = {{1, 0.95f, 0}, {1, 0.99999f, 0}};
    int V = 49152, tail_same = 0;
    float *lg = malloc((size_t)V * sizeof *lg), *tmp = malloc((size_t)V * sizeof *tmp);
    for (int k = 0; k < 2; k++)
        for (int rep = 0; rep < 20; rep++) {
            for (int i = 0; i < V; i++) lg[i] = i == 777 ? 0.0f : tails[k] + 1e-3f * tp_rng_normal(&gen);
            tp_rng a, b;
            tp_rng_seed(&a, (uint64_t)(1000 + rep));
            tp_rng_seed(&b, (uint64_t)(1000 + rep));
            memcpy(tmp, lg, (size_t)V * sizeof *tmp);
            int32_t got = tp_sample(tmp, V, &cut[k], &a), want = ref_sample(lg, V, &cut[k], &b);
            tail_same += got == want;
        }
    free(lg);
    free(tmp);
    TT_CHECK(tail_same == 40, "long tails: %d of 40 draws equal to the full sort", tail_same);
}

static void fill_uniform(float *x, size_t n, tp_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * (float)tp_rng_uniform(r) - 1.0f;
}

/* C = alpha A B^T + beta C0 in double, A and B optionally rounded to bf16 first */
static double skinny_ref(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int m, int n,
                         int bf16) {
    double acc = 0;
    for (int k = 0; k < K; k++) {
        float a = A[(size_t)m * lda + k], b = B[(size_t)n * ldb + k];
        if (bf16) {
            a = tp_bf16_to_f32(tp_f32_to_bf16(a));
            b = tp_bf16_to_f32(tp_f32_to_bf16(b));
        }
        acc += (double)a * b;
    }
    (void)M, (void)N;
    return acc;
}

TT_TEST(kernel_skinny_products_match_naive) {
    /* every M of the streaming kernel and M past it (tiles of 4 x 4 with partial tiles), N with and
     * without a partial block of 4 rows, K with and without a partial vector; alpha, beta 0 / 1, a
     * leading dimension wider than K; threads on and off */
    const int shapes[][3] = {{1, 1536, 576}, {2, 9, 64}, {3, 4099, 37}, {4, 7, 1000}, {1, 3, 5}, {4, 49, 576},
                             {5, 10, 40}, {16, 1536, 576}, {33, 7, 1000}, {64, 9, 31}, {7, 3, 5}};
    const int nshape = (int)(sizeof shapes / sizeof *shapes);
    (void)nshape;
    tp_rng r;
    tp_rng_seed(&r, 7);
    int ran_f32 = 0, ran_bf16 = 0;
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int M = shapes[c][0], N = shapes[c][1], K = shapes[c][2], lda = K + 3, ldc = N + 2;
        float *A = malloc((size_t)M * lda * 4), *B = malloc((size_t)N * K * 4), *C = malloc((size_t)M * ldc * 4);
        float *C0 = malloc((size_t)M * ldc * 4);
        unsigned short *Bh = malloc((size_t)N * K * 2);
        fill_uniform(A, (size_t)M * lda, &r);
        fill_uniform(B, (size_t)N * K, &r);
        fill_uniform(C0, (size_t)M * ldc, &r);
        tp_bf16_convert(B, (size_t)N * K, Bh);
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int beta = 0; beta < 2; beta++)
                for (int par = 0; par < 2; par++) {
                    memcpy(C, C0, (size_t)M * ldc * 4);
                    float alpha = beta ? 0.5f : 1.0f;
                    int rc = bf16 ? tp_skinny_bf16(M, N, K, alpha, A, lda, Bh, (float)beta, C, ldc, par)
                                  : tp_skinny_f32(M, N, K, alpha, A, lda, B, K, (float)beta, C, ldc, par);
                    if (rc != 0) continue; /* a build without AVX-512 (BF16): the callers fall back */
                    if (bf16) ran_bf16++;
                    else ran_f32++;
                    double worst = 0;
                    int guard_ok = 1;
                    for (int m = 0; m < M; m++) {
                        for (int n = 0; n < N; n++) {
                            double want = alpha * skinny_ref(M, N, K, A, lda, B, K, m, n, bf16) +
                                          (beta ? C0[(size_t)m * ldc + n] : 0.0);
                            double d = fabs(C[(size_t)m * ldc + n] - want) / (1.0 + fabs(want));
                            worst = d > worst ? d : worst;
                        }
                        for (int n = N; n < ldc; n++) guard_ok &= C[(size_t)m * ldc + n] == C0[(size_t)m * ldc + n];
                    }
                    TT_CHECK(worst < 2e-6 * sqrt((double)K) && guard_ok,
                             "M %d N %d K %d bf16 %d beta %d par %d: max rel diff %g, columns past N untouched %d", M, N,
                             K, bf16, beta, par, worst, guard_ok);
                }
        free(A); free(B); free(C); free(C0); free(Bh);
    }
#if defined(__AVX512F__)
    TT_CHECK(ran_f32 == nshape * 4, "the fp32 kernel ran every case (%d)", ran_f32);
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    TT_CHECK(ran_bf16 == nshape * 4, "the bf16 kernel ran every case (%d)", ran_bf16);
#endif
    tt_note("fp32 cases %d, bf16 cases %d", ran_f32, ran_bf16);
    TT_CHECK(tp_skinny_f32(TP_SKINNY_MAX_M + 1, 4, 4, 1, NULL, 4, NULL, 4, 0, NULL, 4, 0) == -1,
             "more rows than the skinny path takes are refused");
}

TT_TEST(kernel_attention_decode_rows_match_naive) {
    /* T <= TP_ATT_DIRECT rows go through the direct kernel: head sizes below, at and past one and
     * eight vectors, with and without a sliding window, at the start and deep in the cache */
    const int cases[][4] = {{1, 0, 64, 0}, {1, 255, 64, 0}, {2, 30, 24, 0}, {4, 100, 80, 16}, {3, 7, 200, 4},
                            {1, 500, 256, 128}, {4, 0, 16, 0}};
    tp_rng r;
    tp_rng_seed(&r, 11);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int T = cases[c][0], p0 = cases[c][1], hd = cases[c][2], win = cases[c][3];
        size_t ld = (size_t)3 * hd, Tk = (size_t)(p0 + T);
        float *Q = malloc((size_t)T * ld * 4), *K = malloc(Tk * ld * 4), *V = malloc(Tk * ld * 4);
        float *O = calloc((size_t)T * ld, 4), *Or = calloc((size_t)T * ld, 4), *S = malloc((size_t)T * Tk * 4);
        fill_uniform(Q, (size_t)T * ld, &r);
        fill_uniform(K, Tk * ld, &r);
        fill_uniform(V, Tk * ld, &r);
        tp_attention_head(Q + hd, ld, K + hd, V + hd, ld, O + hd, ld, T, p0, win, hd, 0.3f, S);
        tp_attention_head_ref(Q + hd, ld, K + hd, V + hd, ld, Or + hd, ld, T, p0, win, hd, 0.3f);
        double worst = 0;
        int untouched = 1;
        for (int i = 0; i < T; i++)
            for (size_t e = 0; e < ld; e++) {
                size_t k = (size_t)i * ld + e;
                if (e >= (size_t)hd && e < (size_t)2 * hd) worst = fmax(worst, fabs(O[k] - Or[k]));
                else untouched &= O[k] == 0.0f;
            }
        TT_CHECK(worst < 2e-6 && untouched, "T %d p0 %d hd %d window %d: max abs diff %g, other columns untouched %d",
                 T, p0, hd, win, worst, untouched);
        free(Q); free(K); free(V); free(O); free(Or); free(S);
    }
}

TT_TEST(kernel_attention_group_decode_matches_naive) {
    /* nh query heads sharing one K/V head (grouped-query decoding): every head's rows against the
     * naive kernel, K/V rows packed (stride hd, the cache's layout) or strided, up to 9 heads and
     * T = TP_ATT_DIRECT rows; blocks of keys cut short at the start and the end */
    const int cases[][5] = {{3, 1, 191, 64, 0}, {3, 1, 0, 64, 0}, {1, 1, 15, 64, 0}, {2, 4, 37, 128, 0},
                            {4, 2, 300, 256, 100}, {7, 3, 17, 80, 5}, {9, 1, 64, 24, 0}, {5, 4, 1, 16, 0}};
    tp_rng r;
    tp_rng_seed(&r, 12);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int nh = cases[c][0], T = cases[c][1], p0 = cases[c][2], hd = cases[c][3], win = cases[c][4];
        for (int packed = 0; packed < 2; packed++) {
            size_t ld = (size_t)(nh + 2) * hd, ldk = packed ? (size_t)hd : 2 * (size_t)hd, Tk = (size_t)(p0 + T);
            float *Q = malloc((size_t)T * ld * 4), *K = malloc(Tk * ldk * 4), *V = malloc(Tk * ldk * 4);
            float *O = calloc((size_t)T * ld, 4), *Or = calloc((size_t)T * ld, 4);
            float *S = malloc((size_t)nh * T * Tk * 4);
            fill_uniform(Q, (size_t)T * ld, &r);
            fill_uniform(K, Tk * ldk, &r);
            fill_uniform(V, Tk * ldk, &r);
            tp_attention_group(Q + hd, ld, nh, K, V, ldk, O + hd, ld, T, p0, win, hd, 0.3f, S);
            for (int h = 0; h < nh; h++)
                tp_attention_head_ref(Q + (size_t)(h + 1) * hd, ld, K, V, ldk, Or + (size_t)(h + 1) * hd, ld, T, p0,
                                      win, hd, 0.3f);
            double worst = 0;
            int untouched = 1;
            for (int i = 0; i < T; i++)
                for (size_t e = 0; e < ld; e++) {
                    size_t k = (size_t)i * ld + e;
                    if (e >= (size_t)hd && e < (size_t)(nh + 1) * hd) worst = fmax(worst, fabs(O[k] - Or[k]));
                    else untouched &= O[k] == 0.0f;
                }
            TT_CHECK(worst < 2e-6 && untouched,
                     "%d heads, T %d p0 %d hd %d window %d packed %d: max abs diff %g, other columns untouched %d",
                     nh, T, p0, hd, win, packed, worst, untouched);
            free(Q); free(K); free(V); free(O); free(Or); free(S);
        }
    }
}

/* greedy decoding of B sequences from their prompts (B x P ids): steps tokens each into out, the
 * largest relative logit difference to ref_logits (when given) into *worst; logits kept in keep */
static int greedy_batch(const tp_model *m, const int32_t *prompt, int B, int P, int steps, int32_t *out,
                        float *keep) {
    size_t V = (size_t)m->cfg.vocab;
    tp_kvcache *kv = NULL;
    float *lg = malloc((size_t)B * V * sizeof *lg);
    int32_t *next = malloc((size_t)B * sizeof *next);
    int ok = lg && next && tp_kvcache_alloc(&m->cfg, B, P + steps, &kv) == TP_OK &&
             tp_forward(m, prompt, B, P, kv, lg, 1) == TP_OK;
    for (int t = 0; ok && t < steps; t++) {
        for (int b = 0; b < B; b++) {
            const float *row = lg + (size_t)b * V;
            int32_t best = 0;
            for (size_t i = 1; i < V; i++)
                if (row[i] > row[best]) best = (int32_t)i;
            next[b] = out[(size_t)b * steps + t] = best;
        }
        if (t == 0) memcpy(keep, lg, (size_t)B * V * sizeof *lg);
        ok = tp_forward(m, next, B, 1, kv, lg, 1) == TP_OK;
    }
    if (ok) memcpy(keep + (size_t)B * V, lg, (size_t)B * V * sizeof *lg); /* the last step's logits */
    tp_kvcache_free(kv);
    free(lg);
    free(next);
    return ok;
}

TT_TEST(decode_kernels_greedy_identical_to_general_path) {
    /* SmolLM2-135M in fp32: 1, 3 and 4 sequences (every skinny size up to the limit, and the GEMM
     * past it at 6), 40 greedy steps each: the decoding kernels give exactly the tokens the general
     * products give, and logits within float rounding of them */
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    const int P = 12, steps = 40, Bs[] = {1, 3, 4, 6};
    size_t V = (size_t)m->cfg.vocab;
    int32_t prompt[6 * 12];
    for (int i = 0; i < 6 * P; i++) prompt[i] = (int32_t)((i * 7919 + 13) % 20000) + 100;
    for (size_t bi = 0; bi < sizeof Bs / sizeof *Bs; bi++) {
        int B = Bs[bi];
        int32_t *a = malloc((size_t)B * steps * 4), *b = malloc((size_t)B * steps * 4);
        float *la = malloc(2 * (size_t)B * V * 4), *lb = malloc(2 * (size_t)B * V * 4);
        tp_set_decode_kernels(1);
        int ok = greedy_batch(m, prompt, B, P, steps, a, la);
        tp_set_decode_kernels(0);
        ok = ok && greedy_batch(m, prompt, B, P, steps, b, lb);
        tp_set_decode_kernels(1);
        double worst = 0, scale = 0;
        for (size_t i = 0; i < 2 * (size_t)B * V; i++) {
            worst = fmax(worst, fabs(la[i] - lb[i]));
            scale = fmax(scale, fabs(lb[i]));
        }
        int same = ok && memcmp(a, b, (size_t)B * steps * 4) == 0;
        tt_note("fp32, %d sequences: %d tokens each identical %d, logits max abs diff %.3g (largest logit %.1f)", B,
                steps, same, worst, scale);
        TT_CHECK(ok && same, "%d sequences: %d greedy tokens each identical", B, steps);
        TT_CHECK(worst <= 1e-5 * scale, "%d sequences: logits max abs diff %g", B, worst);
        free(a); free(b); free(la); free(lb);
    }
}

TT_TEST(decode_kernels_bf16_as_close_to_fp32_as_general_path) {
    /* bf16 rounds every product's inputs, so any change of summation order moves later bf16
     * roundings and greedy paths part at near-ties within a few tokens (measured: the skinny and
     * the oneDNN bf16 paths differ by ~0.1 in the logits, and each is ~0.16 from fp32). What
     * holds: fed the fp32 greedy tokens, the skinny bf16 path is as close to fp32 as oneDNN's
     * bf16 path, and picks the fp32 token as often. 1 and 4 sequences, 24 steps. */
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    const int P = 12, steps = 24;
    size_t V = (size_t)m->cfg.vocab;
    int32_t prompt[4 * 12], tok[4];
    for (int i = 0; i < 4 * P; i++) prompt[i] = (int32_t)((i * 7919 + 13) % 20000) + 100;
    TT_CHECK(tp_set_precision("bf16") == TP_OK && tp_model_prepare_precision(m, 1) == TP_OK, "bf16 copies");
    for (int B = 1; B <= 4; B += 3) {
        tp_kvcache *kv[3] = {NULL, NULL, NULL};
        float *lg[3];
        int ok = 1;
        for (int k = 0; k < 3; k++) {
            lg[k] = malloc((size_t)B * V * 4);
            ok &= lg[k] && tp_kvcache_alloc(&m->cfg, B, P + steps, &kv[k]) == TP_OK;
        }
        double err[2] = {0, 0};
        int agree[2] = {0, 0};
        for (int t = 0; ok && t <= steps; t++) {
            const int32_t *in = t == 0 ? prompt : tok;
            int T = t == 0 ? P : 1;
            /* 0: skinny bf16, 1: general bf16, 2: fp32 */
            for (int k = 0; k < 3; k++) {
                tp_set_precision(k == 2 ? "fp32" : "bf16");
                tp_set_decode_kernels(k == 0);
                ok &= tp_forward(m, in, B, T, kv[k], lg[k], 1) == TP_OK;
            }
            tp_set_decode_kernels(1);
            for (int q = 0; q < B; q++) {
                int32_t best[3] = {0, 0, 0};
                for (int k = 0; k < 3; k++) {
                    const float *r = lg[k] + (size_t)q * V;
                    for (size_t i = 1; i < V; i++)
                        if (r[i] > r[best[k]]) best[k] = (int32_t)i;
                }
                for (int k = 0; k < 2; k++) {
                    double w = 0;
                    for (size_t i = 0; i < V; i++) w = fmax(w, fabs(lg[k][q * V + i] - lg[2][q * V + i]));
                    err[k] += w;
                    agree[k] += best[k] == best[2];
                }
                tok[q] = best[2];
            }
        }
        int n = B * (steps + 1);
        tt_note("%d sequences, %d steps: mean max |logit - fp32| skinny %.4f, general %.4f; fp32 token picked %d / %d "
                "of %d", B, steps + 1, err[0] / n, err[1] / n, agree[0], agree[1], n);
        TT_CHECK(ok, "forwards ran");
        TT_CHECK(err[0] <= 1.25 * err[1], "%d sequences: skinny bf16 error %.4f within 1.25x of general %.4f", B,
                 err[0] / n, err[1] / n);
        TT_CHECK(agree[0] >= agree[1] - 1 && agree[0] >= n * 9 / 10, "%d sequences: fp32 token picked %d (general %d) of %d",
                 B, agree[0], agree[1], n);
        for (int k = 0; k < 3; k++) {
            free(lg[k]);
            tp_kvcache_free(kv[k]);
        }
    }
    tp_set_precision("fp32");
}
