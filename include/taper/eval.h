/* Evaluation: perplexity of a token stream under the protocols people quote. */
#ifndef TAPER_EVAL_H
#define TAPER_EVAL_H

#include <stddef.h>
#include <stdint.h>
#include "taper/model.h"
#include "taper/status.h"
#include "taper/util.h"

typedef enum {
    /* Non-overlapping ctx-token chunks of the whole tokenized text (last partial chunk
     * dropped); every token after the first of each chunk is scored (GPTQ/Wanda/SparseGPT). */
    TP_PPL_CHUNKS = 0,
    /* llama.cpp's llama-perplexity: the same chunks, BOS written over each chunk's first
     * token when the tokenizer adds BOS, and only the second half of each chunk scored
     * (positions ctx/2 .. ctx-1 predicted from everything before them in the chunk). */
    TP_PPL_LLAMACPP = 1
} tp_ppl_protocol;

typedef struct {
    double nll_sum;      /* natural log */
    size_t n_scored;     /* tokens whose NLL is in nll_sum */
    size_t n_chunks;
    size_t n_tokens;     /* tokens in the input stream */
    double ppl;          /* exp(nll_sum / n_scored) */
    double seconds;
    double tokens_per_s; /* forward tokens (n_chunks*ctx) per second */
} tp_ppl_result;

const char *tp_ppl_protocol_name(tp_ppl_protocol p);
const char *tp_ppl_protocol_desc(tp_ppl_protocol p);

/* Per-token NLL of targets under row-major logits (n, vocab): nll[i] = logsumexp(row i) -
 * row_i[target[i]], computed in double. */
void tp_nll_rows(const float *logits, const int32_t *targets, size_t n, size_t vocab, double *nll);

/* Perplexity of ids under both protocols at once with chunks of ctx tokens: out[TP_PPL_CHUNKS]
 * and out[TP_PPL_LLAMACPP]. bos >= 0 means the tokenizer adds BOS: llama.cpp's protocol then
 * writes it over each chunk's first token (a second forward per chunk); otherwise both
 * protocols share one forward. max_chunks > 0 limits the chunks scored. progress (may be
 * NULL) advances in tokens. */
tp_status tp_perplexity(const tp_model *m, const int32_t *ids, size_t n, int ctx, int32_t bos,
                        size_t max_chunks, tp_progress *progress, tp_ppl_result out[2]);

/* ---- `taper ppl` as a library call ---- */

/* Perplexity of a text file under both protocols: load the model, read data as bytes, tokenize
 * it without BOS, run tp_perplexity. Plain values only; tp_ppl_job_default fills the CLI's defaults. */
typedef struct {
    const char *model;     /* model path (GGUF, safetensors folder, ...); required */
    const char *data;      /* text file to score; required */
    int ctx;               /* tokens per chunk (512); at least 4 */
    size_t max_chunks;     /* score only the first max_chunks chunks (0 = all) */
    const char *precision; /* "fp32" / "bf16" for the job's duration, restored after; NULL = leave as is */
    const char *json_path; /* when set: the JSON `taper ppl --json=FILE` writes (tp_ppl_job_json) */
    int stream;            /* read the weights a layer at a time (tp_model_open_streamed) instead of
                              loading the model: every chunk reads the file once */
    const char *logits_path; /* when set: the logits of the first chunk (its ctx tokens, no BOS) as raw
                              float32, ctx x vocab, for comparison with another runtime */
} tp_ppl_job;

typedef struct {
    size_t bytes;          /* of the data file */
    size_t tokens;         /* of the tokenized text */
    int ctx;
    int max_pos;           /* the model's context (ctx beyond it is allowed, with a warning) */
    const char *precision; /* precision the job ran under ("fp32" / "bf16", static) */
    tp_ppl_result r[2];    /* [TP_PPL_CHUNKS], [TP_PPL_LLAMACPP] */
} tp_ppl_job_result;

void tp_ppl_job_default(tp_ppl_job *j);
/* Runs j and fills *res. Writes j->json_path (atomically) when set. A ctx beyond the model's
 * context is a TP_LOG_WARN, not an error. Never prints to stdout. */
tp_status tp_ppl_job_run(const tp_ppl_job *j, tp_ppl_job_result *res);
/* The JSON of a finished job (what json_path receives); NULL when out of memory. Free with
 * cJSON_Delete. */
struct cJSON *tp_ppl_job_json(const tp_ppl_job *j, const tp_ppl_job_result *res);

#endif
