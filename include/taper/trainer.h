/* The training loop as a library call: micro-batches with gradient accumulation, AdamW with the
 * warmup + cosine schedule, validation, a JSONL metrics log, crash-safe checkpoints, exact resume
 * and a clean stop on request; and the whole `taper train` job around it (tp_train_job_run: model,
 * data, args.json, summary.json, exports), of which the CLI is a thin wrapper. Distillation reuses
 * the loop by plugging its logits loss (and hooks) into each micro-step through tp_train_hooks.
 *
 * What does not live here: the forward/backward (tp_train_step), the optimizer and checkpoint
 * file format (train.h), argument parsing and signal handlers (cli/cmd_train.c). */
#ifndef TAPER_TRAINER_H
#define TAPER_TRAINER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "taper/comm.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/status.h"
#include "taper/train.h"

typedef struct {
    long steps;           /* stop once this many optimizer updates are done (resumed ones count) */
    int B;                /* sequences per micro-batch */
    int T;                /* tokens per sequence */
    int accum;            /* micro-batches per update (gradients averaged: each scaled by 1/accum) */
    tp_adamw_cfg opt;     /* lr schedule horizon = opt.total_steps (may differ from steps) */
    uint64_t seed;        /* seeds the trainer RNG handed to hooks (the loader has its own seed) */
    int val_every;        /* validation every K updates, plus before the first update of a fresh run
                             and after the last; 0 = only those two; -1 = never */
    int val_batches;      /* validation batches of B held-out windows (0 = all held-out windows) */
    int ckpt_every;       /* checkpoint every K updates; one is always written at the end and on a
                             stop request; 0 = only those */
    int keep;             /* checkpoints kept in run_dir (0 = all) */
    int recompute;        /* recompute layer activations in the backward (less memory) */
    const char *run_dir;  /* metrics.jsonl + ckpt-*.tpc go here; NULL = write nothing */
    const char *args_json;/* the run's settings, stored in every checkpoint (may be NULL) */
    const char *const *resume_keys; /* NULL-terminated keys of args_json that must equal the
                                       checkpoint's on resume (settings that change the trajectory) */
    int resume;           /* continue from run_dir's newest valid checkpoint (fresh start if none) */
    int quiet;            /* no progress bar, no log lines on stderr */
    volatile sig_atomic_t *stop; /* when it becomes nonzero: finish the current update, write a
                                    checkpoint, return with res->stopped = 1 (may be NULL) */
    tp_comm *comm;        /* the ranks of a data-parallel run (NULL: tp_comm_world()). Each rank
                             computes accum micro-batches of every update (rank r the global
                             micro-batches accum*r .. accum*(r+1)-1, so the update equals one
                             process's with accum*size); gradients and the hooks' state are summed
                             in rank order; rank 0 alone writes metrics and checkpoints; a stop
                             request seen by any rank stops all after the same update. */
} tp_train_cfg;

/* Sensible defaults: B 4, T 256, accum 1, tp_adamw_defaults, val_every 0, val_batches 8,
 * ckpt_every 100, keep 2; steps must be set by the caller. */
void tp_train_cfg_defaults(tp_train_cfg *c);

/* Where micro-batches come from: a loader (its cursor is saved in checkpoints and restored with
 * tp_loader_seek), or a function of (update, micro-batch) that must return the same batch for the
 * same arguments (then resume needs no cursor). Validation needs the loader. */
typedef tp_status (*tp_batch_fn)(void *user, long step, int micro, int32_t *tokens, int32_t *targets, int B,
                                 int T);
typedef struct {
    tp_loader *loader;    /* used when batch is NULL */
    tp_batch_fn batch;
    void *batch_user;
} tp_train_data;

/* Per micro-batch context handed to hooks. */
typedef struct {
    long step;            /* 0-based index of the update being computed */
    int micro;            /* 0 .. accum-1: this rank's micro-batches of the update */
    const int32_t *tokens, *targets; /* (B,T) */
    int B, T;
    tp_rng *rng;          /* seeded for this micro-batch from the trainer RNG (which checkpoints
                             save), the same whichever rank computes it: its use resumes exactly */
    const uint64_t *windows; /* (B) the loader's training-window id of each row (tp_loader_next_ids);
                                NULL when the batches come from a batch function */
} tp_train_micro;

typedef struct {
    /* Called before each micro-step's tp_train_step; may set the loss, hook and grad_hook fields
     * of opts (the loop has set targets and grad_scale). A nonzero status aborts the run. */
    tp_status (*prepare)(void *user, const tp_train_micro *mb, tp_step_opts *opts);
    /* Called after each update; may return extra JSON members (`"kd":1.5,"ce":2.1`, no braces)
     * appended to that step's metrics line, or NULL. The text is copied. */
    const char *(*metrics)(void *user, long step);
    /* Optional state of the hook's owner that an exact resume needs (a distiller's learned
     * projections): state_save fills *buf (malloc'd, freed by the trainer) and *bytes when a
     * checkpoint is written; state_load gets those bytes back when a run resumes (bytes 0 and
     * buf NULL: the checkpoint holds none, e.g. it was written by an older build). A nonzero
     * status aborts the run. A checkpoint with extra state refuses to resume without state_load. */
    tp_status (*state_save)(void *user, void **buf, size_t *bytes);
    tp_status (*state_load)(void *user, const void *buf, size_t bytes);
    /* With several ranks: called once per update after this rank's micro-batches and the
     * gradient all-reduce, before the optimizer and metrics; sums over the ranks whatever the
     * owner accumulated per micro-batch (a distiller's projection gradients and loss terms), so
     * that every rank continues with the same state. May be NULL when there is nothing to sum. */
    tp_status (*reduce)(void *user, tp_comm *comm);
    void *user;
} tp_train_hooks;

typedef struct {
    long step_start;      /* updates done when this call began (0, or the checkpoint's step) */
    long step;            /* updates done when it returned */
    int stopped;          /* 1: ended early on *cfg->stop */
    double loss;          /* training loss of the last update (NAN if none ran) */
    double val_loss_first, val_loss; /* first and last validation losses of this call (NAN if none) */
    double tokens;        /* tokens trained on in this call */
    double seconds;       /* wall time of this call's loop (validation and checkpoints included) */
    double train_seconds; /* time inside the updates only */
    double tokens_seen;   /* over the whole run, resumed parts included */
    double elapsed_s;     /* training wall time of the whole run */
    size_t tape_bytes;    /* activation memory */
    size_t state_bytes;   /* gradients + Adam moments */
    char *resumed_from;   /* checkpoint loaded (malloc'd) or NULL */
    char *last_ckpt;      /* checkpoint written last (malloc'd) or NULL */
    int ranks;            /* processes that shared each update */
    double comm_seconds;  /* time in the gradient all-reduce (0 with one process) */
    double wait_seconds;  /* time waiting for the slowest rank before each all-reduce (this rank) */
} tp_train_result;
void tp_train_result_free(tp_train_result *r);

/* Trains m in place. On a NaN/inf loss or gradient it stops before the bad update touches the
 * weights, writes no checkpoint of that state and returns TP_ERR_NUMERIC naming the step; the
 * run dir keeps its last good checkpoint. res may be NULL. */
tp_status tp_train_run(tp_model *m, const tp_train_cfg *cfg, const tp_train_data *data, const tp_train_hooks *hooks,
                       tp_train_result *res);

/* Compares the JSON objects saved and now on the listed keys (NULL-terminated); a key missing
 * from both is equal. Returns TP_OK when all agree, else TP_ERR_ARG with a message naming every
 * differing key with both values. */
tp_status tp_train_args_compare(const char *saved, const char *now, const char *const *keys);

/* Keeps the complete lines of path whose "step" is <= step (drops a torn last line and anything
 * logged after the checkpoint being resumed); a missing file is fine. Rewritten atomically. */
tp_status tp_metrics_truncate(const char *path, long step);
/* Calls fn(user, step, loss, val_loss) for every line of a metrics.jsonl that has a step (loss
 * or val_loss NAN where the line has none); a missing or unreadable file calls nothing (and
 * leaves no error). Returns the number of lines passed to fn. */
int tp_metrics_each(const char *path, void (*fn)(void *user, double step, double loss, double val_loss), void *user);

/* Complete-looking checkpoint files (ckpt-<step>.tpc) in dir: their count (0 when dir does not
 * exist, -1 when it cannot be read) and the newest name into newest (may be NULL). */
int tp_run_dir_ckpts(const char *dir, char *newest, size_t cap);

/* 64-bit fingerprint of the parameters (bits, in order): detects a different model on resume. */
uint64_t tp_params_hash(const tp_model *m);

/* Random init for training from scratch: matrices N(0, std), norms 1, biases 0, from seed. */
void tp_model_init_random(tp_model *m, uint64_t seed, float std);

/* ---- `taper train` as a library call (src/train/train_job.c) ----
 * Everything the command does except option parsing, signal handlers and the stdout summary:
 * loads MODEL (or a random init of init_config with MODEL's tokenizer), opens the shards, checks
 * that they fit the model, writes run_dir/args.json (on resume: refuses settings that change the
 * trajectory, notes the others through tp_log), runs tp_train_run, writes run_dir/summary.json
 * and the exports. */
typedef struct {
    const char *model;        /* .gguf file or HF folder (with init_config: only its tokenizer) */
    const char *init_config;  /* NULL, or a config.json: train from scratch, weights N(0, 0.02), norms 1 */
    const char *data;         /* token shards: a .tpt, a directory of them, or a comma-separated list */
    const char *run_dir;      /* args.json, metrics.jsonl, ckpt-<step>.tpc, summary.json */
    int steps;                /* updates in total (must be set: the default -1 is refused) */
    int schedule_steps;       /* cosine horizon; 0: the saved args.json's on resume, else steps */
    int seq, batch, accum, warmup, val_every, val_batches, ckpt_every, keep; /* as tp_train_cfg */
    int resume;               /* continue from run_dir's newest valid checkpoint */
    int recompute, quiet;
    uint64_t seed;            /* data order and random init */
    float lr, min_lr, weight_decay, beta1, beta2, eps, clip, val_frac;
    const char *export_hf, *export_dtype;         /* NULL or a folder; "f32" | "f16" | "bf16" */
    const char *export_gguf, *export_gguf_type;   /* NULL or a file; "f32" | "f16" | "bf16" | "q8_0" */
    const char *precision;    /* "fp32" | "bf16" for the run's duration (restored after); NULL = leave */
    volatile sig_atomic_t *stop; /* NULL, or a flag a signal handler sets (to the signal number):
                                    finish the update, checkpoint, return with r.stopped = 1 */
} tp_train_job;
/* The defaults of `taper train`: seq 256, batch 4, accum 1, val_batches 8, ckpt_every 100, keep 2,
 * seed 1, tp_adamw_defaults, val_frac 0.05, exports f32; steps -1 (unset). */
void tp_train_job_default(tp_train_job *j);

typedef struct {
    tp_train_result r;    /* the loop's outcome (r.stopped: ended on *stop) */
    int trained;          /* 1: the loop ran (to the end or to a stop): r and summary.json hold its
                             outcome, even when an export after it failed */
    int stop_signal;      /* the value *stop held when the run stopped on request, else 0 */
    double peak_rss_mib;  /* peak resident memory of the process */
    int threads;          /* OpenMP threads the run used */
    int exported_hf, exported_gguf; /* 1: that export was written */
} tp_train_job_result;

/* Plain cross-entropy training. res is always filled (zeroed first); free it with
 * tp_train_job_result_free whatever the status. */
tp_status tp_train_job_run(const tp_train_job *j, tp_train_job_result *res);
void tp_train_job_result_free(tp_train_job_result *res);

#endif
