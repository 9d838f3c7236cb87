/* Sampling (greedy, temperature, top-k, top-p) and KV-cached generation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "taper/generate.h"
#include "taper/util.h"

typedef struct { float p; int32_t id; } cand;

/* The candidates' order: probability descending, then id ascending (a total order). */
static int before(const cand *x, const cand *y) { return x->p != y->p ? x->p > y->p : x->id < y->id; }

static int by_prob_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    return before(x, y) ? -1 : before(y, x);
}

static void swap_cand(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Rearranges c[0..n) so that c[0..k) hold its k first candidates in that order, unsorted among
 * themselves: quickselect, median-of-three pivot, O(n) on average. Invariant: everything in
 * c[0..lo) comes before everything in c[lo..n), and c[0..hi) before c[hi..n). */
static void select_first(cand *c, size_t n, size_t k) {
    size_t lo = 0, hi = n;
    while (lo < k && k < hi) {
        size_t mid = lo + (hi - lo) / 2, last = hi - 1;
        if (before(&c[mid], &c[lo])) swap_cand(&c[mid], &c[lo]);
        if (before(&c[last], &c[lo])) swap_cand(&c[last], &c[lo]);
        if (before(&c[mid], &c[last])) swap_cand(&c[mid], &c[last]); /* the median is now at last */
        cand pv = c[last];
        size_t store = lo;
        for (size_t i = lo; i < last; i++)
            if (before(&c[i], &pv)) swap_cand(&c[i], &c[store++]);
        swap_cand(&c[store], &c[last]);
        if (k <= store) hi = store;
        else lo = store + 1;
    }
}

/* The walk over the candidates in order, sorting lazily: c[0..sorted) are the first ones in
 * order; at(i) extends that (by selection, then sorting the new part) until i is inside. */
typedef struct {
    cand *c;
    size_t n, sorted;
} walk;

static const cand *at(walk *w, size_t i) {
    if (i >= w->sorted) {
        size_t k = w->sorted * 4 > i + 1 ? w->sorted * 4 : i + 1;
        if (k < 256) k = 256;
        if (k > w->n) k = w->n;
        select_first(w->c + w->sorted, w->n - w->sorted, k - w->sorted);
        qsort(w->c + w->sorted, k - w->sorted, sizeof *w->c, by_prob_desc);
        w->sorted = k;
    }
    return &w->c[i];
}

/* c[i] = (exp((logits[i] - mx) / temperature), i) for every id; returns the sum of the weights. */
static double fill_cands(cand *c, const float *logits, int vocab, float mx, float temperature) {
    double total = 0;
    for (int i = 0; i < vocab; i++) {
        c[i].p = expf((logits[i] - mx) / temperature);
        c[i].id = i;
        total += c[i].p;
    }
    return total;
}

/* In the candidates' order: keep the top_k first, then the fewest whose mass reaches top_p of
 * theirs, then draw one in proportion to its weight. Only the part of the order the walk reaches
 * is sorted (a few hundred candidates typically, not the vocabulary). */
int32_t tp_sample(float *logits, int vocab, const tp_sampler *s, tp_rng *rng) {
    /* the first most likely token: the vector max, then its first position (a NaN, which the
     * vector max may or may not return, falls back to the scalar scan) */
    float vm = tp_vmax(logits, (size_t)vocab);
    int32_t best = 0;
    while (best < vocab && logits[best] != vm) best++;
    if (best == vocab) {
        best = 0;
        for (int i = 1; i < vocab; i++)
            if (logits[i] > logits[best]) best = i;
    }
    if (!(s->temperature > 0)) return best;
    float mx = logits[best];
    cand *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return best;
    double total = fill_cands(c, logits, vocab, mx, s->temperature);
    /* Only the candidates that can be reached matter: when those at or above a threshold (p is
     * relative to the most likely, 1) already hold the top_p mass (and the top_k first ones), every
     * candidate below it comes after them in the order and is never reached, so the walk runs over
     * them alone, with the same result; else over the whole vocabulary. The selection then touches
     * a few hundred candidates instead of the vocabulary. */
    size_t nc = (size_t)vocab;
    if (s->top_p > 0 && s->top_p < 1)
        for (float thr = 1e-4f; thr >= 1e-8f; thr *= 1e-4f) {
            size_t f = 0;
            double mass = 0;
            for (size_t i = 0; i < nc; i++)
                if (c[i].p >= thr) {
                    mass += c[i].p;
                    c[f++] = c[i];
                }
            if (mass >= s->top_p * total && (s->top_k <= 0 || f >= (size_t)s->top_k)) {
                nc = f;
                break;
            }
            fill_cands(c, logits, vocab, mx, s->temperature); /* the cut failed: all candidates back */
        }
    walk w = {c, nc, 0};
    size_t n = nc;
    double kept = total;
    if (s->top_k > 0 && (size_t)s->top_k < n) {
        n = (size_t)s->top_k;
        kept = 0;
        for (size_t i = 0; i < n; i++) kept += at(&w, i)->p;
    }
    if (s->top_p > 0 && s->top_p < 1) {
        double acc = 0;
        for (size_t i = 0; i < n; i++) {
            acc += at(&w, i)->p;
            if (acc >= s->top_p * kept) {
                n = i + 1;
                break;
            }
        }
        kept = acc < kept ? acc : kept;
    }
    double u = tp_rng_uniform(rng) * kept, acc = 0;
    int32_t pick = -1;
    for (size_t i = 0; i < n; i++) {
        acc += at(&w, i)->p;
        if (u < acc) {
            pick = c[i].id;
            break;
        }
    }
    if (pick < 0) pick = at(&w, n - 1)->id; /* u at the rounding edge of the mass */
    free(c);
    return pick;
}

tp_status tp_generate(const tp_model *m, const int32_t *prompt, size_t n_prompt, int max_new, int32_t eos,
                      const tp_sampler *s, tp_rng *rng, tp_token_cb cb, void *user, int32_t **out,
                      size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (n_prompt == 0) return tp_fail(TP_ERR_ARG, "generate: the prompt has no tokens");
    if (max_new < 0) return tp_fail(TP_ERR_ARG, "generate: max tokens %d must be >= 0", max_new);
    size_t cap = n_prompt + (size_t)max_new;
    if (cap > (size_t)m->cfg.max_pos)
        return tp_fail(TP_ERR_ARG, "generate: prompt (%zu) + max tokens (%d) exceed the model's context %d",
                       n_prompt, max_new, m->cfg.max_pos);
    tp_kvcache *kv = NULL;
    tp_status st = tp_kvcache_alloc(&m->cfg, 1, (int)cap, &kv);
    if (st) return st;
    float *logits = malloc((size_t)m->cfg.vocab * sizeof(float));
    int32_t *ids = malloc(((size_t)max_new + 1) * sizeof(int32_t));
    if (!logits || !ids) {
        st = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = tp_forward(m, prompt, 1, (int)n_prompt, kv, logits, 1))) goto done;
    size_t n = 0;
    while ((int)n < max_new) {
        int32_t id = tp_sample(logits, m->cfg.vocab, s, rng);
        ids[n++] = id;
        if ((cb && cb(id, user)) || id == eos || (int)n == max_new) break;
        if ((st = tp_forward(m, &id, 1, 1, kv, logits, 1))) goto done;
    }
    *out = ids;
    *n_out = n;
    ids = NULL;
done:
    free(ids);
    free(logits);
    tp_kvcache_free(kv);
    return st;
}

/* each of the B rows' greedy token (tp_sample's argmax) */
static void argmax_rows(float *logits, int B, int V, int32_t *out) {
    const tp_sampler greedy = {0, 1, 0};
    for (int b = 0; b < B; b++) out[b] = tp_sample(logits + (size_t)b * (size_t)V, V, &greedy, NULL);
}

tp_status tp_bench_decode(const tp_model *m, tp_decode_bench *r) {
    int B = r->batch, P = r->n_prompt, G = r->n_gen, V = m->cfg.vocab;
    r->t_prompt = r->t_gen = 0;
    if (B < 1 || P < 1 || G < 0)
        return tp_fail(TP_ERR_ARG, "bench: batch %d and prompt %d must be >= 1, generated tokens %d >= 0", B, P, G);
    if ((size_t)P + (size_t)G > (size_t)m->cfg.max_pos)
        return tp_fail(TP_ERR_ARG, "bench: prompt %d + generated %d tokens exceed the model's context %d", P, G,
                       m->cfg.max_pos);
    size_t np;
    if (tp_mul_overflow((size_t)B, (size_t)P, &np)) return tp_fail(TP_ERR_ARG, "bench: batch x prompt overflows");
    int32_t *ids = malloc(np * sizeof *ids), *next = malloc((size_t)B * sizeof *next);
    float *logits = malloc((size_t)B * (size_t)V * sizeof *logits);
    tp_kvcache *kv = NULL, *warm = NULL;
    tp_status st = ids && next && logits ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!st) st = tp_kvcache_alloc(&m->cfg, B, P + G, &kv);
    if (!st) st = tp_kvcache_alloc(&m->cfg, B, 1, &warm);
    if (!st) {
        tp_rng rng;
        tp_rng_seed(&rng, 1234);
        for (size_t i = 0; i < np; i++) ids[i] = (int32_t)(tp_rng_uniform(&rng) * V);
        st = tp_forward(m, ids, B, 1, warm, logits, 1); /* warm-up: the decode step's shapes */
    }
    double t0 = tp_time_s();
    if (!st) st = tp_forward(m, ids, B, P, kv, logits, 1);
    double t1 = tp_time_s();
    if (!st) argmax_rows(logits, B, V, next);
    for (int g = 0; g < G && !st; g++) {
        st = tp_forward(m, next, B, 1, kv, logits, 1);
        if (!st) argmax_rows(logits, B, V, next);
    }
    double t2 = tp_time_s();
    if (!st) {
        r->t_prompt = t1 - t0;
        r->t_gen = t2 - t1;
    }
    tp_kvcache_free(kv);
    tp_kvcache_free(warm);
    free(ids);
    free(next);
    free(logits);
    return st;
}
