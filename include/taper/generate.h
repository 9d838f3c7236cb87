/* Sampling and text generation with a KV cache. */
#ifndef TAPER_GENERATE_H
#define TAPER_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include "taper/model.h"
#include "taper/rng.h"

typedef struct {
    float temperature; /* 0 = greedy (argmax, lowest id on ties) */
    float top_p;       /* nucleus: smallest set with probability >= top_p; 1 = off */
    int top_k;         /* 0 = off */
} tp_sampler;

/* Picks a token from logits (vocab floats; modified in place). */
int32_t tp_sample(float *logits, int vocab, const tp_sampler *s, tp_rng *rng);

/* Called after each new token; return nonzero to stop. */
typedef int (*tp_token_cb)(int32_t id, void *user);

/* Appends up to max_new tokens to prompt (n_prompt ids); stops after eos (if eos >= 0, the eos
 * is included) or when cb returns nonzero. out: malloc'd generated ids (without the prompt). */
tp_status tp_generate(const tp_model *m, const int32_t *prompt, size_t n_prompt, int max_new, int32_t eos,
                      const tp_sampler *s, tp_rng *rng, tp_token_cb cb, void *user, int32_t **out,
                      size_t *n_out);

/* Decoding speed as llama.cpp's llama-batched-bench measures it: batch sequences of n_prompt
 * tokens each are read in one forward (the prompt phase; each sequence's last logits computed),
 * then n_gen steps each decode one token of every sequence (greedy, the token fed back). The
 * prompt ids are fixed pseudo-random ones. One untimed decode step of the same batch runs first
 * (warm-up). Times are wall-clock seconds. */
typedef struct {
    int batch, n_prompt, n_gen;
    double t_prompt, t_gen; /* results */
} tp_decode_bench;
tp_status tp_bench_decode(const tp_model *m, tp_decode_bench *b);

#endif
