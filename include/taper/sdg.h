/* Synthetic data generation (SDG): the teacher samples a corpus the student is then trained on
 * (or that calibrates importance). Batched sampling with a KV cache; every sample has its own
 * random stream, seeded by (seed, sample index). */
#ifndef TAPER_SDG_H
#define TAPER_SDG_H

#include <stddef.h>
#include <stdint.h>
#include "taper/generate.h"
#include "taper/model.h"
#include "taper/util.h"

typedef struct {
    int samples;               /* how many samples */
    int max_tokens;            /* generated tokens per sample at most (stops early at EOS) */
    int batch;                 /* samples generated together */
    tp_sampler sampler;
    uint64_t seed;
    const char *const *prompts;/* n_prompts UTF-8 prompts, used in turn (sample i: prompt i mod n);
                                  none: every sample starts from BOS alone */
    size_t n_prompts;
    int chat;                  /* wrap each prompt as one ChatML user turn */
} tp_sdg_cfg;

/* Receives each finished sample: its prompt ids and the generated ids (EOS included if hit).
 * Samples arrive in index order. A nonzero status stops the run. */
typedef tp_status (*tp_sdg_sink)(void *user, size_t index, const int32_t *prompt, size_t n_prompt,
                                 const int32_t *gen, size_t n_gen);

/* Runs the generation; prog (may be NULL) is advanced by generated tokens. The result depends
 * on seed, the settings and the batch size (not on thread count). */
tp_status tp_sdg_run(const tp_model *m, const tp_sdg_cfg *c, tp_sdg_sink sink, void *user, tp_progress *prog);

#endif
