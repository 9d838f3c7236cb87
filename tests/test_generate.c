/* Sampling and batched decoding (src/model/generate.c): the lazily sorted sampler picks what
 * sorting the whole vocabulary picks, on every kind of distribution and setting. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "taper/generate.h"
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
}
