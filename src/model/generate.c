/* Sampling (greedy, temperature, top-k, top-p) and KV-cached generation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "taper/generate.h"

typedef struct { float p; int32_t id; } cand;

static int by_prob_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

int32_t tp_sample(float *logits, int vocab, const tp_sampler *s, tp_rng *rng) {
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (!(s->temperature > 0)) return best;
    float mx = logits[best];
    cand *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return best;
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        c[i].p = expf((logits[i] - mx) / s->temperature);
        c[i].id = i;
        sum += c[i].p;
    }
    qsort(c, (size_t)vocab, sizeof *c, by_prob_desc);
    int n = vocab;
    if (s->top_k > 0 && s->top_k < n) n = s->top_k;
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
    (void)sum;
    double u = tp_rng_uniform(rng) * kept, acc = 0;
    int32_t pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) { pick = c[i].id; break; }
    }
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
