/* Zero-shot benchmarks scored as lm-evaluation-harness scores them: task loaders for the standard
 * files (ARC, HellaSwag, PIQA, WinoGrande, MMLU, WikiText-2) and a generic JSONL format, the
 * harness's prompt formats, log-likelihood scoring with shared-prefix reuse, and its metrics.
 * See docs/eval.md for the protocol of each task and what (if anything) differs from the harness. */
#ifndef TAPER_TASKS_H
#define TAPER_TASKS_H

#include <stddef.h>
#include <stdint.h>
#include "taper/model.h"
#include "taper/status.h"
#include "taper/util.h"

typedef enum {
    TP_TASK_MC = 0,  /* multiple choice: argmax over the requests' log-likelihoods -> acc (, acc_norm) */
    TP_TASK_LL,      /* one (context, continuation) per item: log-likelihood, greedy exact match */
    TP_TASK_ROLLING  /* whole documents, rolling windows: word/byte perplexity, bits per byte */
} tp_task_kind;

/* One item: n (context, continuation) requests, exactly the strings the harness would build
 * (the target delimiter is part of the continuation). */
typedef struct {
    int n;              /* requests: the choices (MC), 1 (LL, ROLLING) */
    char **ctx;         /* (n) contexts; NULL entries for ROLLING */
    char **cont;        /* (n) continuations; the detokenized document for ROLLING */
    double *norm_len;   /* (n) acc_norm divisor: the choice's length in characters (code points),
                         * as the harness's len(choice), delimiter excluded */
    int gold;           /* index of the correct request, -1 if none */
    int group;          /* index into tp_task.groups (MMLU subject); 0 when the task has none */
    size_t words, bytes;/* ROLLING: words and UTF-8 bytes of the original document (harness units) */
} tp_task_item;

typedef struct {
    char *name;         /* "arc_easy", ..., or the file's base name for a task file */
    char *source;       /* the file (or folder) read */
    char *format;       /* one line describing the prompt format */
    tp_task_kind kind;
    int has_acc_norm;   /* acc_norm is reported (not for WinoGrande / MMLU, as in the harness) */
    size_t n_items;
    tp_task_item *items;
    int n_groups;       /* subtasks (MMLU: 57 subjects); 0 if none */
    char **groups;      /* (n_groups) subtask names */
    char **group_cat;   /* (n_groups) category of each subtask (MMLU: stem, other, ...), or NULL */
} tp_task;

/* Built-in task names in their usual order (arc_easy, arc_challenge, hellaswag, piqa,
 * winogrande, mmlu, wikitext); *n receives the count. */
const char *const *tp_task_names(size_t *n);
/* Loads built-in task name from data_dir (layout of ../shared/data, see its README.md).
 * limit > 0 keeps the first limit items (MMLU: of each subject, as lm_eval's --limit does;
 * WikiText: documents). A missing file is TP_ERR_IO naming the path expected. */
tp_status tp_task_load(const char *name, const char *data_dir, size_t limit, tp_task **out);
/* Loads a task file in the generic JSONL format of docs/eval.md. */
tp_status tp_task_load_file(const char *path, size_t limit, tp_task **out);
void tp_task_free(tp_task *t);

/* ---- building blocks (exposed for tests and custom loaders) ---- */
/* The harness's HellaSwag preprocess(): strip, " [title]" -> ". ", drop "[...]" tags, one pass of
 * "  " -> " ". Returns a malloc'd string (NULL when out of memory). */
char *tp_hellaswag_preprocess(const char *text);
/* Python's str.capitalize() for ASCII and Latin-1 letters (first upper, rest lower). malloc'd. */
char *tp_py_capitalize(const char *text);
/* The harness's wikitext_detokenizer(). malloc'd result in *out. */
tp_status tp_wikitext_detokenize(const char *text, char **out);
/* Splits WikiText raw text into articles as EleutherAI/wikitext_document_level does (a page
 * starts at each " = Title = " line; empty pages dropped, the last kept). *pages is a malloc'd
 * array of malloc'd strings. */
tp_status tp_wikitext_pages(const char *text, size_t len, char ***pages, size_t *n_pages);
/* Number of pieces of Python's re.split(r"\s+", text) (the harness's word count). */
size_t tp_py_count_words(const char *text);
/* Length in bytes of s[0..n) without its trailing whitespace (Python's str.rstrip()). */
size_t tp_py_rstrip_len(const char *s, size_t n);
/* Characters (code points) of UTF-8 text, as Python's len(). */
size_t tp_utf8_chars(const char *text);

/* ---- scoring ---- */
typedef struct {
    int max_length;     /* context of the model for truncation and rolling windows; 0: the
                         * model's max_position_embeddings (what the harness uses for HF models) */
    int batch;          /* items scored per forward (0: 8) */
    int chunk;          /* at most this many tokens per forward call (0: 512) */
} tp_eval_opts;

typedef struct {
    double *ll;             /* (n) log-likelihood of each request's continuation (natural log) */
    unsigned char *greedy;  /* (n) 1 if every continuation token is the argmax */
    int pred, pred_norm;    /* argmax of ll, of ll / norm_len (first on ties, as numpy); -1 if n/a */
    int n_ctx_tokens;       /* tokens of the (first) context, after encoding */
    int n_cont_tokens;      /* tokens of all continuations together */
} tp_item_result;

typedef struct {
    char *name;
    size_t n;               /* items */
    double acc, acc_stderr; /* mean and the sample standard error of the mean */
    double acc_norm, acc_norm_stderr;
} tp_group_result;

typedef struct {
    size_t n_items;
    tp_item_result *items;  /* (n_items) */
    /* MC: acc (and acc_norm) over items, with the harness's standard errors (sample stddev /
     * sqrt(n); for a task with subtasks, pooled over them as lm_eval's groups do). */
    double acc, acc_stderr, acc_norm, acc_norm_stderr;
    /* LL: mean log-likelihood, perplexity exp(-mean ll) and greedy exact-match rate (acc). */
    double ll_mean, perplexity;
    /* ROLLING: sum of log-likelihoods, units, and the harness's three metrics. */
    double ll_sum;
    size_t words, bytes;
    double word_perplexity, byte_perplexity, bits_per_byte;
    int n_groups;           /* per subtask (MMLU subjects), then per category */
    tp_group_result *groups;
    int n_cats;
    tp_group_result *cats;
    size_t tokens;          /* tokens run through the model */
    double seconds;
} tp_task_result;

/* Scores every item of t with model m (tokenizer m->tok). progress (may be NULL) advances in
 * items. Fills *out (free with tp_task_result_free). */
tp_status tp_task_run(const tp_model *m, const tp_task *t, const tp_eval_opts *opts, tp_progress *progress,
                      tp_task_result *out);
void tp_task_result_free(tp_task_result *r);

/* The harness's HFLM._encode_pair: trailing whitespace of ctx moves onto cont, ctx+cont is
 * encoded whole and the continuation is the tail beyond encode(ctx); an empty ctx becomes the
 * prefix token (BOS, else EOS). *ctx_ids and *cont_ids are malloc'd. */
tp_status tp_encode_pair(const tp_tokenizer *tok, const char *ctx, const char *cont, int32_t **ctx_ids,
                         size_t *n_ctx, int32_t **cont_ids, size_t *n_cont);

/* ---- `taper eval` as a library call ---- */

/* Parses a comma-separated task list into built-in task names (pointers into tp_task_names()):
 * "all" adds every built-in task, empty entries are skipped, at most max names. TP_ERR_ARG names
 * an unknown task. */
tp_status tp_task_list_parse(const char *list, const char **names, int max, int *n);

struct tp_eval_job_result;
/* Zero-shot benchmarks of one model: built-in tasks from data_dir and task files, every task
 * loaded before the model (missing data fails first), scored in order with tp_task_run. */
typedef struct {
    const char *model;              /* model path; required */
    const char *tasks;              /* comma-separated built-in tasks (tp_task_list_parse); NULL = all,
                                     * unless task files are given */
    const char *const *task_files;  /* (n_task_files) generic JSONL task files, scored after tasks */
    int n_task_files;
    int limit;                      /* first limit items of each task (MMLU: per subject); 0 = all */
    const char *data_dir;           /* benchmark files; required for built-in tasks (no default: the
                                     * library reads no environment) */
    int batch;                      /* items per forward (8) */
    int max_length;                 /* truncation / rolling window; 0 = the model's max_position_embeddings */
    const char *precision;          /* "fp32" / "bf16" for the job's duration, restored after; NULL = leave */
    const char *json_path;          /* when set: the JSON `taper eval --json=FILE` writes (tp_eval_job_json) */
    /* Optional, for live output: called with k = -1 once the model is loaded (res->max_length set),
     * then with k = 0, 1, ... as each task finishes (res->results[k] filled). */
    void (*on_task)(void *user, const struct tp_eval_job_result *res, int k);
    void *user;
} tp_eval_job;

typedef struct tp_eval_job_result {
    int n_tasks;
    tp_task **tasks;             /* (n_tasks) the tasks scored, built-in ones first */
    tp_task_result *results;     /* (n_tasks) */
    int max_length;              /* the effective max_length */
    /* Macro average over the multiple-choice tasks (reported when n_mc > 1): mean acc, and mean of
     * acc_norm where the task reports it, else acc. */
    int n_mc;
    double macro_acc, macro_acc_norm_or_acc;
} tp_eval_job_result;

void tp_eval_job_default(tp_eval_job *j);
/* Runs j and fills *res (free with tp_eval_job_result_free; zeroed on failure, nothing to free).
 * Writes j->json_path (atomically) when set. Never prints to stdout. */
tp_status tp_eval_job_run(const tp_eval_job *j, tp_eval_job_result *res);
void tp_eval_job_result_free(tp_eval_job_result *res);
/* The JSON of a finished job (what json_path receives): settings, every metric, per-item scores;
 * NULL when out of memory. Free with cJSON_Delete. */
struct cJSON *tp_eval_job_json(const tp_eval_job *j, const tp_eval_job_result *res);

#endif
