/* Structured compression (Minitron): activation-based importance of attention heads, KV groups,
 * MLP neurons, embedding channels and layers over a calibration set; pruning plans (target
 * shapes, explicit layer lists, a parameter-budget search); applying a plan to a model; and the
 * two files these write: the importance scores ("taper-importance" JSON) and prune_plan.json;
 * and the `taper importance` / `taper prune` commands as jobs (load, compute, write).
 * Definitions of every score are in docs/pruning.md and next to the fields below. */
#ifndef TAPER_COMPRESS_H
#define TAPER_COMPRESS_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "taper/comm.h"
#include "taper/model.h"
#include "taper/status.h"
#include "taper/util.h"

/* ---- calibration data ---- */

/* Tokenizes a calibration file and cuts it into samples of seq_len tokens: a text file is
 * tokenized whole (no BOS); a .jsonl file (one JSON object per line with a string field "text")
 * is the concatenation of its texts joined by "\n\n", tokenized the same way. The stream is cut
 * into non-overlapping seq_len-token samples, the last partial one dropped. ids: malloc'd
 * (n_samples, seq_len). Fails naming the file when it is missing or yields no sample. */
tp_status tp_calib_load(const tp_tokenizer *tok, const char *path, int seq_len, int32_t **ids,
                        size_t *n_samples);

/* Mean next-token NLL (natural log) of n samples of seq_len tokens (each scored on its own, all
 * seq_len-1 predictions), with the layers flagged in skip (may be NULL) removed. Sums in double.
 * progress (may be NULL) advances by n*seq_len tokens from its current value. */
/* Samples per forward of tp_lm_loss: its logits stay under ~256 MiB (1 .. 16). */
size_t tp_lm_loss_batch(int seq_len, int vocab);
tp_status tp_lm_loss(const tp_model *m, const int32_t *ids, size_t n, int seq_len,
                     const unsigned char *skip, tp_progress *progress, double *loss);

/* ---- aggregations ---- */

/* Reductions over the sequence (positions of one sample) and over the batch (samples):
 *   mean: mean(|v|)    l2: sqrt(sum v^2) (sum, not mean, under the root)
 *   var: population variance, mean((v - mean v)^2). */
typedef enum { TP_AGG_MEAN = 0, TP_AGG_L2, TP_AGG_VAR, TP_AGG_COUNT } tp_agg;
#define TP_AGG_PAIRS 9 /* (batch, seq) pairs; pair index = batch*3 + seq */
#define TP_AGG_DEFAULT_PAIR (TP_AGG_L2 * 3 + TP_AGG_MEAN) /* batch = l2, seq = mean */

const char *tp_agg_name(tp_agg a); /* "mean", "l2", "var" */
/* "BATCH,SEQ" (e.g. "l2,mean"; "mean" may be written "mean_abs") -> pair index. */
tp_status tp_agg_pair_parse(const char *s, int *pair);
/* "batch=l2,seq=mean" for messages (static storage). */
const char *tp_agg_pair_name(int pair);

/* ---- importance ---- */

/* Source of the per-neuron MLP activation. */
typedef enum {
    TP_NEURON_ACT = 0, /* silu(gate) * up, the input of down_proj (TP_HOOK_MLP_ACT) */
    TP_NEURON_GATE     /* X W_gate^T before the activation (the paper's X W1^T; TP_HOOK_MLP_GATE) */
} tp_neuron_source;

/* A downstream score of the model with the flagged layers removed (e.g. a task accuracy), for
 * scoring contiguous layer blocks. skip may be NULL (the full model). */
typedef tp_status (*tp_layer_metric_fn)(void *user, const tp_model *m, const unsigned char *skip, double *value);
typedef struct {
    const char *name;      /* e.g. "winogrande" */
    int higher_is_better;
    tp_layer_metric_fn fn;
    void *user;
} tp_layer_metric;

typedef struct {
    int batch;                       /* samples per forward (default 4); results do not depend on it */
    tp_neuron_source neuron_source;  /* default TP_NEURON_ACT */
    int depth_samples;               /* samples (the first ones) for the layer-removal losses; 0 = none */
    int block_size;                  /* > 0: also score removing each block of this many contiguous layers */
    const tp_layer_metric *block_metric; /* NULL, or a downstream metric also scored for each block */
    tp_progress *progress;           /* NULL, or a begun progress bar: its total is set here (tokens) */
    tp_comm *comm;                   /* ranks sharing the samples (NULL: tp_comm_world()): each scores
                                        its share of the depth samples and of the others, and the
                                        accumulators are merged (exactly: sums, and Chan's merge of
                                        the running means and variances); every rank ends with the
                                        same scores, equal to one process's up to rounding */
} tp_importance_opts;

void tp_importance_opts_default(tp_importance_opts *o);

/* Scores of one model over one calibration set. For a channel, per sample s the sequence
 * aggregate a_s = agg_seq over the sample's positions of the per-position value, and the score
 * is agg_batch over samples of a_s. Per-position values: for a head, the L2 norm of the head's
 * attention output (before o_proj); for a neuron, its activation; for an embedding channel, each
 * RMSNorm output (attention and MLP input norms of every layer, and the final norm) separately,
 * the 2*n_layers+1 scores then summed. Every pair is kept. */
typedef struct {
    int n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff; /* shape of the scored model */
    int n_samples, seq_len, batch, depth_samples, block_size;
    tp_neuron_source neuron_source;
    char *model;                 /* path of the scored model, or NULL */
    char *data;                  /* calibration file, or NULL */
    int default_pair;            /* pair prune uses unless told otherwise */
    double *heads;               /* (TP_AGG_PAIRS, n_layers, n_heads) */
    double *kv_groups;           /* (TP_AGG_PAIRS, n_layers, n_kv_heads) sum of the group's query heads */
    double *neurons;             /* (TP_AGG_PAIRS, n_layers, d_ff) */
    double *channels;            /* (TP_AGG_PAIRS, d_model) summed over the 2*n_layers+1 norm outputs */
    double *block_influence;     /* (n_layers) 1 - mean over all positions of cos(layer input, output) */
    double base_loss;            /* mean NLL of the full model on the depth samples; NAN if none */
    double *layer_loss;          /* (n_layers) mean NLL with layer l removed; NULL if not scored */
    double *block_loss;          /* (n_layers - block_size + 1) NLL with layers i..i+block_size-1
                                    removed; NULL if not scored */
    char *block_metric_name;     /* NULL if no downstream block metric */
    int block_metric_higher_is_better;
    double block_metric_base;    /* the metric of the full model */
    double *block_metric;        /* (n_layers - block_size + 1) */
    double seconds;              /* importance pass (forwards with hooks) */
    double tokens_per_s;         /* importance-pass tokens per second */
    double depth_seconds;        /* layer-removal scoring */
    /* memory of the run that computed them (0 when unknown; not in the score file) */
    int streamed;                /* the model was streamed (a layer at a time) */
    double mem_estimate;         /* bytes: the estimate of the path taken (tp_importance_mem) */
    double peak_rss;             /* bytes: the process's peak resident set when they were done */
} tp_importance;

/* Runs the importance pass over n samples of seq_len tokens (ids: (n, seq_len)) and, when asked,
 * the layer-removal losses on the first depth_samples of them. */
tp_status tp_importance_compute(const tp_model *m, const int32_t *ids, size_t n, int seq_len,
                                const tp_importance_opts *o, tp_importance **out);
void tp_importance_free(tp_importance *imp);

/* Score file: JSON {"format":"taper-importance","version":1, "model":{sizes}, "settings":{...},
 * "default_agg":{"batch","seq"}, "aggregations":[{"batch","seq","heads","kv_groups","neurons",
 * "channels"}], "depth":{...}}. Load validates every field and array size. */
tp_status tp_importance_save(const tp_importance *imp, const char *path);
tp_status tp_importance_load(const char *path, tp_importance **out);
/* Fails, naming the field, when imp was not computed on a model of config c's shape. */
tp_status tp_importance_check_model(const tp_importance *imp, const tp_config *c, const char *what);

/* ---- pruning ---- */

/* Target sizes; 0 keeps the axis at the model's size. */
typedef struct {
    int d_model, d_ff, n_heads, n_kv_heads, n_layers;
} tp_prune_shape;

/* How layers to drop are chosen when depth is reduced without an explicit list. */
typedef enum {
    TP_DEPTH_AUTO = 0,   /* block if scored for exactly this many layers, else loss, else bi */
    TP_DEPTH_BLOCK,      /* the contiguous block whose removal raises the LM loss least */
    TP_DEPTH_BLOCK_METRIC, /* the contiguous block with the best downstream metric */
    TP_DEPTH_LOSS,       /* the layers whose single removal raises the LM loss least */
    TP_DEPTH_BI,         /* the layers with the lowest Block Influence */
    TP_DEPTH_LIST        /* an explicit list */
} tp_depth_rule;
const char *tp_depth_rule_name(tp_depth_rule r); /* "auto", "block", "block-metric", "loss", "bi", "list" */
tp_status tp_depth_rule_parse(const char *s, tp_depth_rule *r);

/* Exactly which parts of the source model a pruned model keeps (all lists ascending). Query
 * heads keep GQA groups equal in size: heads[l] lists n_heads/n_kv_heads heads of each kept
 * group, group by group. */
typedef struct {
    tp_config src;        /* config of the model the plan applies to */
    tp_config cfg;        /* config of the pruned model (head_dim unchanged) */
    size_t src_params, n_params;
    int *layers;          /* (cfg.n_layers) kept source layers */
    int *channels;        /* (cfg.d_model) kept embedding channels, shared by every tensor */
    int *kv_groups;       /* (cfg.n_layers, cfg.n_kv_heads) kept KV groups per kept layer */
    int *heads;           /* (cfg.n_layers, cfg.n_heads) kept query heads (source indices); with per-layer
                             widths row i holds tp_config_heads(&cfg, i) of them */
    int *neurons;         /* (cfg.n_layers, cfg.d_ff) kept MLP neurons; row i holds tp_config_ff(&cfg, i) */
    tp_depth_rule depth_rule;
    int agg_pair;         /* -1 when no scores were used */
    char *scores;         /* score file the plan came from, or NULL */
} tp_prune_plan;

/* Builds a plan from scores (imp may be NULL only when every width axis is kept and the depth
 * comes from an explicit list). drop: n_drop source layer indices to remove (rule TP_DEPTH_LIST),
 * or NULL. Fails naming the option for impossible targets. */
tp_status tp_prune_plan_make(const tp_config *src, const tp_importance *imp, int agg_pair,
                             const tp_prune_shape *shape, tp_depth_rule rule, const int *drop, int n_drop,
                             tp_prune_plan **out);
/* Per-layer widths: the plan's MLP neurons and query heads (per KV group) redistributed over its
 * kept layers at the same totals, by a global ranking of units whose scores are divided by their
 * layer's mean score (rule and reasons in src/compress/per_layer.c and docs/pruning.md). */
typedef struct {
    int ffn_step;     /* a layer's MLP width is a multiple of this (or the source's full width); default 64 */
    double min_keep;  /* every layer keeps at least this fraction of its source neurons and of the query
                         heads of each kept group; default 0.25 */
    int ffn_only;     /* 1: only the MLP widths vary, every layer keeps the uniform target's heads */
    /* how MLP chunks are valued: 0 (default) by their layer-normalised activation scores; 1 by loss
       sensitivity: for each kept layer alone, the held-out LM loss of model with that layer's MLP cut
       to its top-w neurons (w every probe chunks from the floor to the full width; the others whole),
       a chunk worth the loss it saves (interpolated between the measured widths) */
    int loss_rule;
    tp_model *model;        /* loss_rule: the source model (its down_proj columns are zeroed while a
                               width is measured, then restored bit for bit) */
    const int32_t *ids;     /* loss_rule: (n, seq_len) held-out samples */
    size_t n;
    int seq_len;
    int probe;              /* loss_rule: chunks between measured widths (default 4) */
    tp_progress *progress;  /* loss_rule: NULL, or begun: total set here (forwards) */
} tp_per_layer_opts;
void tp_per_layer_opts_default(tp_per_layer_opts *o);
/* p: a plan from tp_prune_plan_make with the scores imp (the same aggregation is used). On return
 * p->cfg has per-layer widths (hetero, unless every layer came out equal), heads/neurons are
 * re-listed at the strides of the widest layer, n_params is recounted. */
tp_status tp_prune_plan_per_layer(tp_prune_plan *p, const tp_importance *imp, const tp_per_layer_opts *o);
/* Checks every index of p against the model config src (sizes, ranges, ascending, GQA rule). */
tp_status tp_prune_plan_check(const tp_prune_plan *p, const tp_config *src);
/* The config of the model src pruned by p: src's own config (family, RoPE, ...) with the plan's
 * sizes and kept layers (a plan read back from JSON may name another architecture class). */
void tp_prune_plan_config(const tp_config *src, const tp_prune_plan *p, tp_config *cfg);
/* The pruned model: gathered rows/columns of m (tied lm_head stays tied). out->tok is NULL (the
 * vocabulary is unchanged, so the caller may move m->tok over); the chat template is copied. */
tp_status tp_prune_apply(const tp_model *m, const tp_prune_plan *p, tp_model **out);
/* Writes the pruned model as an HF folder (dtype "F32", "F16" or "BF16") tensor by tensor: one
 * source layer and one pruned layer in memory at a time, embedding and lm_head rows gathered
 * slice by slice. m may be loaded or streamed (tp_model_open_streamed); the bytes are those of
 * tp_model_save_hf(tp_prune_apply(m, p)) with m's tokenizer. progress (may be NULL, begun)
 * counts layers. */
tp_status tp_prune_export_hf(const tp_model *m, const tp_prune_plan *p, const char *dir, const char *dtype,
                             tp_progress *progress);
/* prune_plan.json: {"format":"taper-prune-plan","version":1, "source":{config}, "target":{config},
 * "rules":{...}, "layers":[...], "channels":[...], "per_layer":[{"source_layer","kv_groups","heads",
 * "neurons"}]}. */
tp_status tp_prune_plan_save(const tp_prune_plan *p, const char *path);
tp_status tp_prune_plan_load(const char *path, tp_prune_plan **out);
void tp_prune_plan_free(tp_prune_plan *p);

/* ---- parameter-budget search ---- */

typedef struct {
    tp_prune_shape shape;
    size_t n_params;
    double loss;          /* held-out mean NLL; NAN when not evaluated */
    double mem_bytes;     /* weights at mem_weight_bytes each + the KV cache of mem_ctx tokens (bf16) */
} tp_prune_candidate;

typedef struct {
    size_t target;        /* parameters */
    double tolerance;     /* fraction, default 0.05 */
    tp_prune_shape fixed; /* nonzero axes are held at that size */
    int max_candidates;   /* evaluate at most this many, spread over the grid (0 = all; default 12) */
    int agg_pair;
    tp_depth_rule depth_rule;
    const int32_t *eval_ids; /* (eval_samples, seq_len) held-out text; NULL: only enumerate
                                (the selected candidates come back unevaluated, loss NAN) */
    size_t eval_samples;
    int seq_len;
    tp_progress *progress;   /* NULL, or begun: total is set here (candidates) */
    /* the grid (0: the defaults below) */
    int hidden_step, ffn_step, layer_step; /* defaults 64, 128 (64 when d_ff is not a multiple of
                                              128), 1 */
    double max_cut;          /* fraction of each axis that may go, in (0, 1) (0: hidden and ffn down
                                to one step, layers down to half) */
    /* a memory target instead of a parameter count: target_mem bytes for the weights at
       mem_weight_bytes each (default 2, bf16) plus the KV cache of mem_ctx tokens (default 4096) at
       2 bytes per value; target is then ignored */
    double target_mem;
    int mem_ctx;
    double mem_weight_bytes;
} tp_search_opts;
void tp_search_opts_default(tp_search_opts *o);

/* Grid: hidden in multiples of hidden_step (64), ffn in multiples of ffn_step (128, or 64 when d_ff
 * is not a multiple of 128), layers in steps of layer_step (1) from ceil(L/2) (or (1 - max_cut) of
 * each axis) up to the full size, every (kv groups, heads per group) with at most the model's;
 * each axis also at its full size. Candidates whose params (or memory, with target_mem) are within
 * target*(1 +- tolerance) are evaluated (spread evenly when more than max_candidates) and returned
 * sorted by loss (best first). n_total: how many qualified. Fails with the closest shape named
 * when none qualifies. */
tp_status tp_prune_search(const tp_model *m, const tp_importance *imp, const tp_search_opts *o,
                          tp_prune_candidate **cands, int *n_cands, int *n_total);

/* Parameter count of the model m pruned to shape (0 axes kept). */
size_t tp_prune_shape_params(const tp_config *src, const tp_prune_shape *shape);
/* Bytes of the model src pruned to shape: its parameters at weight_bytes each plus the KV cache of
 * ctx tokens at 2 bytes per value (layers x 2 x kv_heads x head_dim x ctx); 0 for an impossible
 * shape. */
double tp_prune_shape_mem(const tp_config *src, const tp_prune_shape *shape, int ctx, double weight_bytes);

/* ---- architecture search ranked by short distillation (src/compress/search.c) ----
 * Stage 1 scores every shape of the budget grid (tp_prune_search's enumeration, grid.max_candidates
 * 0 = all) untrained on held-out windows of the data: mean next-token CE and mean KL from the
 * teacher (its top-k + the rest, as distillation from a cache). Stage 2 distils the best
 * `candidates` of them by untrained CE for `steps` steps each from one teacher cache (built once
 * into run_dir/teacher.tkc, or teacher_cache reused) and scores them again on the same windows,
 * ranked by held-out KL. Each candidate works in run_dir/cand-h..-f..-q..-kv..-l.. (student,
 * run, final, result.json): a finished one is read back, an interrupted one resumes, and the
 * untrained scores of the earlier call (search.json, same settings) are reused. Once scored,
 * a candidate's student and checkpoints are deleted; only the leading one keeps final/.
 * run_dir/search.json holds both rankings and their Spearman correlations. */
typedef struct {
    const char *model;          /* the teacher, which every candidate is pruned from (loaded) */
    const char *scores;         /* its importance scores */
    const char *data;           /* token shards: distillation windows and held-out windows */
    const char *run_dir;
    const char *teacher_cache;  /* NULL: run_dir/teacher.tkc, built when absent */
    tp_search_opts grid;        /* target / target_mem, tolerance, fixed sizes, steps, max_cut;
                                   its eval_ids are not used */
    int list_only;              /* enumerate and write search.json; score and distil nothing */
    int candidates;             /* K distilled (default 4) */
    int steps;                  /* distillation steps of each (default 200) */
    int seq, batch, accum, warmup; /* 256, 4, 1, 10 */
    float lr, min_lr;           /* 3e-4, 3e-5 */
    double val_frac;            /* held-out fraction of the data's windows (0.05) */
    uint64_t seed;
    int eval_windows;           /* held-out windows scored (default 32) */
    int topk;                   /* the teacher cache's K and the distillation's top-k (default 32) */
    int quiet;
    volatile sig_atomic_t *stop; /* a distillation stops at its next update, resumably */
} tp_search_job;
void tp_search_job_default(tp_search_job *j);

typedef struct {
    char name[64];              /* cand-h<hidden>-f<ffn>-q<heads>-kv<kv_heads>-l<layers> */
    tp_prune_shape shape;
    size_t n_params;
    double mem_bytes;
    double loss0, kd0;          /* untrained held-out CE and KL (nats per token) */
    double loss0_half[2];       /* untrained CE on each half of the held-out windows */
    int rank0;                  /* 1-based, by loss0 over every candidate */
    int distilled;
    double loss, kd;            /* after the short distillation */
    int rank;                   /* 1-based among the distilled, by kd */
    double seconds;             /* the distillation's wall time */
} tp_search_row;

typedef struct {
    tp_search_row *rows;        /* every candidate, best untrained first */
    int n_rows, n_qualifying, n_distilled;
    int best;                   /* row of the best distilled candidate (-1: none yet) */
    double spearman_kd;         /* Spearman of untrained CE vs distilled KL over the distilled */
    double spearman_loss;       /* ... vs distilled CE */
    double split_half;          /* Spearman of the untrained rankings by the first and the second half
                                   of the held-out windows: how stable stage 1's ranking is */
    int eval_windows;
    uint64_t teacher_windows;   /* windows the teacher ran on in this call (held-out + cache) */
    int stopped;                /* 1: stopped on request; the same call resumes */
    int stage1_reused;          /* 1: the untrained scores came from the earlier call's search.json */
    double stage1_seconds, cache_seconds, stage2_seconds;
} tp_search_result;
tp_status tp_search_run(const tp_search_job *j, tp_search_result *r);
void tp_search_result_free(tp_search_result *r);
/* Spearman's rank correlation of a and b (n; ties share their mean rank); NAN when n < 2 or a side
 * is constant. */
double tp_spearman(const double *a, const double *b, int n);

/* Plan composition for pruning in rounds: p2 prunes the model p1 produced (p2->src is p1->cfg);
 * the result maps p1's source straight to p2's target (applying it to p1's source gives the
 * same weights as applying p1, then p2). Its rules, aggregation and scores are p2's. Fails when
 * p2 does not fit p1's output. */
tp_status tp_prune_plan_compose(const tp_prune_plan *p1, const tp_prune_plan *p2, tp_prune_plan **out);

/* "12-17,3,7" (0-based, ranges inclusive) -> the listed layers in order given (malloc'd).
 * Fails on malformed text with "expects a list like 12-17 or 3,7,20-22, got '...'" for the
 * caller to prefix with the option's name. */
tp_status tp_layer_list_parse(const char *s, int **out, int *n);

/* ---- memory planning ----
 * Peak resident bytes estimated from the shapes (formulas in docs/memory.md), with the model
 * loaded (streamed = 0) or streamed (1): importance over n samples of T tokens in batches of
 * batch, layer-removal losses on depth samples (and blocks of block layers); pruning from src to
 * dst. The bf16 precision's conversion buffers are counted when it is the one in use. */
double tp_importance_mem(const tp_config *c, size_t n, int T, int batch, int depth, int block, int streamed);
double tp_prune_mem(const tp_config *src, const tp_config *dst, int streamed);
typedef struct {
    double loaded, streamed;  /* the two estimates */
    double available;         /* the limit they were held against (0: unknown) */
    int stream;               /* the path chosen: 1 streamed, 0 loaded */
} tp_mem_plan;
/* Chooses the path for want: 1 streamed, -1 loaded, 0 loaded when it fits, else streamed. limit:
 * bytes the job may use (0: tp_mem_available()). Fails with TP_ERR_NOMEM, before anything is
 * allocated, when the chosen path does not fit: the message names the estimates, the memory
 * available and what would fit (streaming, or hint: e.g. the settings that shrink the estimate). */
tp_status tp_mem_choose(const char *what, double loaded, double streamed, double limit, int want, const char *hint,
                        tp_mem_plan *out);

/* ---- jobs: `taper importance` and `taper prune` as library calls ---- */

/* What `taper importance MODEL --data FILE -o OUT` does: loads the model and calibration text,
 * computes the scores and writes the score file (and json_path). Notes and warnings go to
 * tp_log; nothing is printed. */
typedef struct {
    const char *model;           /* model path (named in the score file) */
    const tp_model *loaded;      /* NULL, or model already loaded (then not loaded again) */
    const char *data;            /* calibration text (tp_calib_load) */
    const char *out;             /* score file to write (default "importance.json"; NULL: none) */
    int samples;                 /* default 1024; all the file has if fewer */
    int seq_len;                 /* default 512 */
    int batch;                   /* default 4 */
    int depth_samples;           /* default 64, clamped to the samples used; 0 = no depth scores */
    int block;                   /* > 0: also score removing each block of this many layers */
    tp_neuron_source neuron_source;
    const char *block_metric;    /* NULL, or a multiple-choice task scored for each block */
    int metric_limit;            /* first N items of that task (0 = all) */
    const char *data_dir;        /* where the task's files are (NULL: ../shared/data) */
    const char *agg;             /* aggregation pair of the json_path summary (NULL: the default) */
    const char *json_path;       /* NULL, or where to write tp_importance_summary_json() */
    int stream;                  /* 1: stream the model (a layer at a time), -1: load it, 0 (default):
                                    load it when the estimate fits, else stream (tp_mem_choose) */
    double mem_limit;            /* bytes the job may use; 0: the memory available */
    int dry_run;                 /* estimate, choose and log the plan; read no weights, write nothing */
} tp_importance_job;

void tp_importance_job_default(tp_importance_job *j);
/* out (may be NULL) receives the scores (tp_importance_free). */
tp_status tp_importance_job_run(const tp_importance_job *j, tp_importance **out);
/* The JSON of `taper importance --json` (and --show --json): per-layer summaries of the
 * aggregation pair, blocks, loss and timing; path is the score file's name (NULL: left out).
 * NULL when out of memory. */
struct cJSON *tp_importance_summary_json(const tp_importance *imp, int pair, const char *path);

/* What `taper prune` does: plans (explicit sizes, drop_layers, a target_params budget search
 * ranked by held-out LM loss, or a replayed plan), applies the plan and writes the HF folder
 * out, the plan (plan_out, default out/prune_plan.json), the GGUF and json_path. */
typedef struct {
    const char *model;
    const char *scores;          /* importance score file */
    const char *plan;            /* replay this prune_plan.json instead of planning */
    const char *out;             /* HF folder to write, or NULL (then only the plan is written) */
    const char *plan_out;        /* NULL: out/prune_plan.json */
    const char *dtype;           /* HF tensors: "f32", "f16", "bf16"; NULL or "source" (default): the
                                    source's (tp_model_source_dtype) */
    const char *gguf;            /* NULL, or also write this GGUF */
    const char *gguf_type;       /* "f32", "f16", "bf16", "q8_0"; NULL or "source" (default): the source's */
    const char *agg;             /* "BATCH,SEQ" ranking pair; NULL: the scores' default */
    const char *drop_layers;     /* NULL, or explicit layers to drop, e.g. "12-17" */
    const char *depth_metric;    /* NULL (auto), "block", "block-metric", "loss", "bi" */
    const char *data;            /* held-out text of the search (NULL: the scores' calibration file) */
    int hidden, ffn, heads, kv_heads, layers; /* target sizes; 0 keeps the axis */
    size_t target_params;        /* > 0: budget search */
    double tolerance;            /* fraction (default 0.05) */
    int max_candidates;          /* default 12; 0 = all */
    int eval_samples;            /* held-out samples (default 16) */
    int seq_len;                 /* tokens per held-out sample (0: the scores' seq_len) */
    const char *json_path;       /* NULL, or where to write tp_prune_job_json() */
    int stream;                  /* as tp_importance_job's: 1 streamed, -1 loaded, 0 auto. Streamed,
                                    the HF folder is written tensor by tensor (tp_prune_export_hf);
                                    target_params and gguf need the model loaded */
    double mem_limit;            /* bytes the job may use; 0: the memory available */
    int dry_run;                 /* plan, estimate and log; read no weights, write nothing */
    /* per-layer widths (tp_prune_plan_per_layer) at the uniform target's totals: needs scores and
       gguf (an HF folder cannot hold them; out must be NULL); the plan goes to plan_out, default
       GGUF path + ".plan.json". tp_prune_job_default sets per_layer_opts to MLP widths by loss
       (on eval_samples held-out samples of data, the model loaded) with uniform heads */
    int per_layer;
    tp_per_layer_opts per_layer_opts;
} tp_prune_job;

typedef struct {
    tp_config src, pruned;       /* the source model's and the pruned model's configs */
    tp_prune_plan *plan;         /* the applied plan */
    char *plan_path;             /* where it was written */
    int replayed;                /* the plan was job->plan */
    /* budget search (job->target_params); n_candidates is 0 without one */
    tp_prune_candidate *candidates; /* evaluated shapes, best held-out loss first (the chosen one) */
    int n_candidates, n_qualifying;
    char *eval_data;             /* held-out text file */
    size_t eval_first, eval_samples; /* held-out samples eval_first .. eval_first+eval_samples-1 */
    int eval_seq_len;
    double seconds;              /* wall time of the job */
    tp_mem_plan mem;             /* the memory estimates and the path taken */
    char dtype[8], gguf_type[8]; /* what the HF folder and the GGUF were written in ("F32", "BF16", ...) */
    double peak_rss;             /* bytes: the process's peak resident set at the end of the job */
} tp_prune_job_result;

void tp_prune_job_default(tp_prune_job *j);
/* r is filled (tp_prune_job_result_free) on success and zeroed on failure. */
tp_status tp_prune_job_run(const tp_prune_job *j, tp_prune_job_result *r);
void tp_prune_job_result_free(tp_prune_job_result *r);
/* "none" (every layer kept), "plan" (replayed) or the depth rule's name, as the JSON says. */
const char *tp_prune_job_result_depth(const tp_prune_job_result *r);
/* The JSON of `taper prune --json`. NULL when out of memory. */
struct cJSON *tp_prune_job_json(const tp_prune_job *j, const tp_prune_job_result *r);


#endif
