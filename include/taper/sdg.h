/* Synthetic data generation (SDG): the teacher samples a corpus the student is then trained on
 * (or that calibrates importance). Batched sampling with a KV cache; every sample has its own
 * random stream, seeded by (seed, sample index). tp_sdg_job_run is `taper generate-data` as a
 * library call: load the teacher, sample, write the shards (one per part of part_samples samples),
 * samples.jsonl and manifest.json; an interrupted job resumes after its last complete part. */
#ifndef TAPER_SDG_H
#define TAPER_SDG_H

#include <signal.h>
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
    size_t first;              /* index of the first sample: the run makes samples [first, first+samples),
                                  each exactly as a run from 0 makes it (its stream and prompt depend
                                  only on (seed, index)) */
    volatile sig_atomic_t *stop; /* NULL, or a flag: once nonzero the run returns TP_OK at its next
                                  step; the samples not yet handed to the sink are dropped */
} tp_sdg_cfg;

/* Receives each finished sample: its prompt ids and the generated ids (EOS included if hit).
 * Samples arrive in index order. A nonzero status stops the run. */
typedef tp_status (*tp_sdg_sink)(void *user, size_t index, const int32_t *prompt, size_t n_prompt,
                                 const int32_t *gen, size_t n_gen);

/* Runs the generation; prog (may be NULL) is advanced by generated tokens from where it stands.
 * The result depends on seed, the settings and the batch size (not on thread count). After a stop
 * it returns TP_OK: the samples the sink received are the ones made. */
tp_status tp_sdg_run(const tp_model *m, const tp_sdg_cfg *c, tp_sdg_sink sink, void *user, tp_progress *prog);

/* ---- the generate-data job ---- */

/* What `taper generate-data` does, as plain values (defaults from tp_sdg_job_default).
 *
 * Parts: sample k*P .. (k+1)*P-1 (P = part_samples) go to OUT_DIR/sdg-%05d.tpt (part 0 is
 * TP_SDG_SHARD), written whole under a temporary name, fsynced and renamed when the part is
 * complete; samples.jsonl gets a part's lines (fsynced) before its shard is renamed, and
 * manifest.json is rewritten (atomically) at the start and after every part. Running a job again
 * on its OUT_DIR resumes after the last complete part: a part is complete when its shard opens and
 * samples.jsonl holds its lines; the lines of an incomplete part, stale temporary files and parts
 * after the first incomplete one are removed, and the part is made again. The settings that decide
 * the samples (teacher fingerprint, seed, temperature, top_p, top_k, max_tokens, the prompts read,
 * chat, part_samples, dedup) must equal the manifest's, or the job is refused naming the first that
 * differs (unless no part was written yet: then it starts afresh); samples may grow (a short last
 * part is then made again, longer), not shrink below the samples its parts cover; batch may differ
 * (it changes the float rounding of the products). A finished job run again changes nothing. A
 * directory holding other *.tpt files, or a manifest.json that generate-data did not write, is
 * refused; so is one held by another running job (a lock on the directory). */
typedef struct {
    const char *teacher;     /* GGUF file or HF folder; it must have a tokenizer */
    const char *out_dir;     /* created if missing; receives the part shards, samples.jsonl, manifest.json */
    int samples;             /* 64 */
    int max_tokens;          /* 256: generated tokens per sample at most (a sample ends early at EOS) */
    int batch;               /* 16: samples generated together; the output depends on it. Each part is
                                one tp_sdg_run, so a resumed job with the same batch writes the bytes an
                                uninterrupted one writes */
    float temperature;       /* 1.0; 0 = greedy */
    float top_p;             /* 0.95 */
    int top_k;               /* 0 = off */
    uint64_t seed;           /* 0 */
    const char *prompts;     /* NULL: every sample starts from BOS alone; else a file of prompts, one per
                                line (blank lines skipped), used in turn */
    int chat;                /* wrap each prompt as one ChatML user turn */
    int part_samples;        /* TP_SDG_PART_SAMPLES (512; 0 = that): samples per part */
    int dedup;               /* drop a sample whose generated ids (EOS included when it ended there)
                                equal those of an earlier kept sample of the job, earlier parts and
                                runs included (64-bit hashes of the sequences; the set is rebuilt from
                                the shards on resume) */
    int restart;             /* remove the parts, samples.jsonl and manifest.json of an earlier run
                                (resumable or not) and start again */
    volatile sig_atomic_t *stop; /* NULL, or a flag (a signal handler's): once nonzero the job stops at
                                the next decoding step; the part in progress is dropped, complete
                                parts stay, and running the job again resumes */
    size_t stop_after_samples; /* for tests: act as if stop were raised once this many samples reached
                                the writer in this call (0 = never); stop is then only looked at
                                when a sample finishes */
} tp_sdg_job;

#define TP_SDG_SHARD "sdg-00000.tpt"     /* part 0's shard inside out_dir */
#define TP_SDG_PART_FMT "sdg-%05d.tpt"   /* part k's shard */
#define TP_SDG_PART_SAMPLES 512          /* default part_samples */
#define TP_SDG_MAX_PARTS 100000          /* parts at most (five-digit names keep the name order) */

/* Counts over the whole of out_dir (every complete part, of this call and earlier ones) unless
 * said otherwise. */
typedef struct {
    int samples;              /* samples written (kept; one document each) */
    size_t tokens;            /* tokens in the shards: prompts and generated */
    size_t generated_tokens;
    size_t ended_at_eos;      /* kept samples that ended at EOS rather than at max_tokens */
    size_t duplicates_dropped;/* samples dedup dropped */
    size_t samples_done;      /* sample indices the complete parts cover (kept + dropped) */
    int parts;                /* complete parts */
    int parts_before;         /* complete parts found when the call began */
    int complete;             /* 1: all samples are done; 0: stopped */
    int stopped;              /* 1: stop (or stop_after_samples) ended the call early */
    size_t generated_now;     /* generated tokens of the parts this call wrote */
    double seconds;           /* this call: generation and writing */
} tp_sdg_job_result;

void tp_sdg_job_default(tp_sdg_job *j);
/* Loads j->teacher and runs the job (or resumes it, see tp_sdg_job). res (may be NULL) is always
 * filled (zeroed first); free it with tp_sdg_job_result_free whatever the status. Logs one line
 * saying what it generates (and one saying what it resumes); the progress bar is "sdg" and covers
 * the samples still to make. Never prints to stdout. A stop returns TP_OK with res->stopped set. */
tp_status tp_sdg_job_run(const tp_sdg_job *j, tp_sdg_job_result *res);
/* The same with the teacher already loaded (j->teacher is then only recorded in the manifest). */
tp_status tp_sdg_job_run_model(const tp_sdg_job *j, const tp_model *teacher, tp_sdg_job_result *res);
/* Holds nothing allocated today; kept so that every job result is released the same way. */
void tp_sdg_job_result_free(tp_sdg_job_result *res);

#endif
