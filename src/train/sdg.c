/* Synthetic data generation (include/taper/sdg.h). Each batch advances all its sequences one
 * token per forward (B x 1 with the KV cache): a sequence still inside its prompt is fed its next
 * prompt token, one past it is fed the token it just sampled, a finished one idles on EOS. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/sdg.h"

typedef struct {
    int32_t *prompt;
    size_t n_prompt;
    int32_t *gen;
    size_t n_gen;
    int done;
    tp_rng rng;
} seq;

static tp_status encode_prompt(const tp_model *m, const tp_sdg_cfg *c, size_t i, seq *s) {
    s->prompt = NULL;
    s->n_prompt = 0;
    if (c->n_prompts == 0) {
        int32_t bos = m->cfg.bos_id;
        if (bos < 0 && m->tok) bos = tp_tok_bos(m->tok);
        if (bos < 0) return tp_fail(TP_ERR_ARG, "SDG: the model has no BOS token to start from; give prompts");
        s->prompt = malloc(sizeof(int32_t));
        if (!s->prompt) return tp_fail(TP_ERR_NOMEM, "out of memory");
        s->prompt[0] = bos;
        s->n_prompt = 1;
        return TP_OK;
    }
    if (!m->tok) return tp_fail(TP_ERR_ARG, "SDG: prompts need the model's tokenizer");
    const char *p = c->prompts[i % c->n_prompts];
    char *text = NULL;
    if (c->chat) {
        const char *fmt = "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n";
        size_t n = strlen(fmt) + strlen(p) + 1;
        text = malloc(n);
        if (text) snprintf(text, n, fmt, p);
    } else {
        text = strdup(p);
    }
    if (!text) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status st = tp_tok_encode(m->tok, text, strlen(text), 1, &s->prompt, &s->n_prompt);
    free(text);
    if (!st && s->n_prompt == 0) st = tp_fail(TP_ERR_ARG, "SDG: prompt %zu encodes to no tokens", i % c->n_prompts);
    return st;
}

/* splitmix-style mix of (seed, index) into a per-sample seed */
static uint64_t sample_seed(uint64_t seed, size_t i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * ((uint64_t)i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static tp_status run_batch(const tp_model *m, const tp_sdg_cfg *c, size_t i0, int B, tp_sdg_sink sink, void *user,
                           tp_progress *prog, double *done_tokens) {
    size_t V = (size_t)m->cfg.vocab;
    int32_t eos = m->cfg.eos_id;
    seq *sq = calloc((size_t)B, sizeof *sq);
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    float *logits = malloc((size_t)B * V * sizeof *logits);
    tp_kvcache *kv = NULL;
    tp_status st = sq && tok && logits ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    size_t max_prompt = 0;
    for (int b = 0; !st && b < B; b++) {
        st = encode_prompt(m, c, i0 + (size_t)b, &sq[b]);
        if (!st) {
            sq[b].gen = malloc(((size_t)c->max_tokens + 1) * sizeof(int32_t));
            if (!sq[b].gen) st = tp_fail(TP_ERR_NOMEM, "out of memory");
            tp_rng_seed(&sq[b].rng, sample_seed(c->seed, i0 + (size_t)b));
            if (sq[b].n_prompt > max_prompt) max_prompt = sq[b].n_prompt;
        }
    }
    int cap = (int)max_prompt + c->max_tokens;
    if (!st && cap > m->cfg.max_pos)
        tp_log(TP_LOG_NOTE, "taper: note: prompt + %d tokens = %d positions, past the model's %d", c->max_tokens, cap,
               m->cfg.max_pos);
    if (!st) st = tp_kvcache_alloc(&m->cfg, B, cap, &kv);
    /* position p: sequence b is fed prompt[p] while p < n_prompt, else its last sampled token */
    for (int p = 0; !st; p++) {
        int active = 0;
        for (int b = 0; b < B; b++) {
            seq *s = &sq[b];
            if ((size_t)p < s->n_prompt)
                tok[b] = s->prompt[p];
            else
                tok[b] = s->n_gen ? s->gen[s->n_gen - 1] : s->prompt[s->n_prompt - 1];
            active += !s->done;
        }
        if (!active) break;
        if ((st = tp_forward(m, tok, B, 1, kv, logits, 1))) break;
        for (int b = 0; b < B; b++) {
            seq *s = &sq[b];
            if (s->done || (size_t)p + 1 < s->n_prompt) continue;
            int32_t id = tp_sample(logits + (size_t)b * V, (int)V, &c->sampler, &s->rng);
            s->gen[s->n_gen++] = id;
            *done_tokens += 1;
            if ((eos >= 0 && id == eos) || s->n_gen >= (size_t)c->max_tokens) s->done = 1;
        }
        if (prog) tp_progress_update(prog, *done_tokens);
    }
    for (int b = 0; !st && b < B; b++)
        st = sink(user, i0 + (size_t)b, sq[b].prompt, sq[b].n_prompt, sq[b].gen, sq[b].n_gen);
    for (int b = 0; sq && b < B; b++) {
        free(sq[b].prompt);
        free(sq[b].gen);
    }
    free(sq);
    free(tok);
    free(logits);
    tp_kvcache_free(kv);
    return st;
}

tp_status tp_sdg_run(const tp_model *m, const tp_sdg_cfg *c, tp_sdg_sink sink, void *user, tp_progress *prog) {
    if (c->samples <= 0 || c->max_tokens <= 0 || c->batch <= 0)
        return tp_fail(TP_ERR_ARG, "SDG: samples %d, max tokens %d and batch %d must be > 0", c->samples,
                       c->max_tokens, c->batch);
    double done = 0;
    for (size_t i0 = 0; i0 < (size_t)c->samples; i0 += (size_t)c->batch) {
        int B = (int)((size_t)c->samples - i0 < (size_t)c->batch ? (size_t)c->samples - i0 : (size_t)c->batch);
        tp_status st = run_batch(m, c, i0, B, sink, user, prog, &done);
        if (st) return st;
    }
    return TP_OK;
}
