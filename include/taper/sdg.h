/* Synthetic data generation (SDG): the teacher samples a corpus the student is then trained on
 * (or that calibrates importance). Batched sampling with a KV cache; every sample has its own
 * random stream, seeded by (seed, sample index). tp_sdg_job_run is `taper generate-data` as a
 * library call: load the teacher, sample, write the shard, samples.jsonl and manifest.json. */
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

/* ---- the generate-data job ---- */

/* What `taper generate-data` does, as plain values (defaults from tp_sdg_job_default). */
typedef struct {
    const char *teacher;     /* GGUF file or HF folder; it must have a tokenizer */
    const char *out_dir;     /* created if missing; receives TP_SDG_SHARD, samples.jsonl, manifest.json */
    int samples;             /* 64 */
    int max_tokens;          /* 256: generated tokens per sample at most (a sample ends early at EOS) */
    int batch;               /* 16: samples generated together; the output depends on it */
    float temperature;       /* 1.0; 0 = greedy */
    float top_p;             /* 0.95 */
    int top_k;               /* 0 = off */
    uint64_t seed;           /* 0 */
    const char *prompts;     /* NULL: every sample starts from BOS alone; else a file of prompts, one per
                                line (blank lines skipped), used in turn */
    int chat;                /* wrap each prompt as one ChatML user turn */
} tp_sdg_job;

#define TP_SDG_SHARD "sdg-00000.tpt" /* the token shard's name inside out_dir */

typedef struct {
    int samples;              /* samples written (one document each) */
    size_t tokens;            /* tokens in the shard: prompts and generated */
    size_t generated_tokens;
    size_t ended_at_eos;      /* samples that ended at EOS rather than at max_tokens */
    double seconds;           /* generation and writing the shard */
} tp_sdg_job_result;

void tp_sdg_job_default(tp_sdg_job *j);
/* Loads j->teacher and runs the job. res (may be NULL) is always filled (zeroed first); free it
 * with tp_sdg_job_result_free whatever the status. Logs one line saying what it generates; the
 * progress bar is "sdg". Never prints to stdout. */
tp_status tp_sdg_job_run(const tp_sdg_job *j, tp_sdg_job_result *res);
/* The same with the teacher already loaded (j->teacher is then only recorded in the manifest). */
tp_status tp_sdg_job_run_model(const tp_sdg_job *j, const tp_model *teacher, tp_sdg_job_result *res);
/* Holds nothing allocated today; kept so that every job result is released the same way. */
void tp_sdg_job_result_free(tp_sdg_job_result *res);

#endif
