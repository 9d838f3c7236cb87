/* Training engine: forward with saved activations and the full backward pass, AdamW with
 * warmup + cosine decay, token shards and the packed-sequence loader, crash-safe checkpoints.
 * Everything here is deterministic for a fixed thread count (no atomics, no order-dependent
 * parallel reductions), which is what makes exact resume possible. */
#ifndef TAPER_TRAIN_H
#define TAPER_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/status.h"

/* ======================= backward (src/train/backward.c) ======================= */

#define TP_IGNORE_INDEX (-100) /* target that contributes no loss (torch's ignore_index) */

/* Activations of one forward kept for the backward; allocated once for the largest B x T and
 * reused every step. With recompute set, only each layer's input is kept and the layer's forward
 * is recomputed inside the backward (less memory, about a third more compute). */
typedef struct tp_tape tp_tape;
tp_status tp_tape_alloc(const tp_config *c, int B, int T, int recompute, tp_tape **out);
void tp_tape_free(tp_tape *t);
size_t tp_tape_bytes(const tp_tape *t); /* bytes held (for memory reports) */

/* A loss on the logits, evaluated in row chunks so that the (B*T, vocab) logits never exist all
 * at once. Called with rows [r0, r1) (row = b*T + t) of the logits; returns the loss summed over
 * those rows and overwrites logits with d(loss)/d(logits) for those rows, already scaled the way
 * the caller wants the total (e.g. divided by the number of counted tokens). Called from one
 * thread, rows in increasing order. */
typedef double (*tp_logit_loss_fn)(void *user, size_t r0, size_t r1, float *logits, size_t vocab);

/* Backward observation/injection: at point p of layer l (the forward hook points of model.h),
 * x is the forward value (N, width) and dx the gradient of the loss with respect to it; the hook
 * may add to dx (losses on intermediate states). Called in reverse order of the forward. */
typedef void (*tp_grad_hook_fn)(void *user, tp_hook_point p, int layer, const float *x, float *dx, int B,
                                int T, int width);

typedef struct {
    const int32_t *targets;      /* (B,T) next-token targets for the built-in cross-entropy
                                    (mean over targets != TP_IGNORE_INDEX); unused when loss set */
    tp_logit_loss_fn loss;       /* NULL: built-in cross-entropy */
    void *loss_user;
    tp_hook_fn hook;             /* forward observation, as tp_forward_ex; may be NULL */
    void *hook_user;
    tp_grad_hook_fn grad_hook;   /* may be NULL */
    void *grad_hook_user;
    float grad_scale;            /* multiplies every gradient (1/accum for accumulation); 0 = 1 */
    unsigned hook_points;        /* the points (bits 1u << TP_HOOK_*) where hook and grad_hook are
                                    called; 0: every point. Hooks on the residual stream only
                                    (TP_HOOK_RESIDUAL) leave a bf16 step its bf16 tape (faster);
                                    hooks inside a layer make it rebuild those values in fp32 */
} tp_step_opts;

/* The residual-stream points: what intermediate-state distillation reads. */
#define TP_HOOK_RESIDUAL ((1u << TP_HOOK_LAYER_IN) | (1u << TP_HOOK_LAYER_OUT) | (1u << TP_HOOK_FINAL_NORM))

/* One forward (activations into tape) + loss + backward of B sequences of T tokens from
 * position 0. Gradients are ADDED into grad, a model of the same config used as gradient
 * storage (tied embeddings: both uses land in the one tensor). *loss: the loss before
 * grad_scale (built-in CE: the mean over counted tokens); *n_counted: tokens with a target. */
tp_status tp_train_step(const tp_model *m, tp_model *grad, tp_tape *tape, const int32_t *tokens, int B, int T,
                        const tp_step_opts *opts, double *loss, size_t *n_counted);

/* Cross-entropy of B x T tokens without gradients (validation): *sum_loss summed over counted
 * tokens, *n_counted. Logits are produced in row chunks. */
tp_status tp_ce_eval(const tp_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                     double *sum_loss, size_t *n_counted);

/* ======================= optimizer (src/train/optim.c) ======================= */

typedef struct {
    float lr;            /* peak learning rate */
    float min_lr;        /* floor of the cosine decay */
    long warmup_steps;   /* linear warmup: update s (0-based) uses lr * (s+1) / warmup_steps */
    long total_steps;    /* cosine from lr at s = warmup_steps to min_lr at s = total_steps */
    float beta1, beta2, eps;
    float weight_decay;  /* decoupled (AdamW); applied to matrices only unless decay_all */
    int decay_all;       /* 1: also decay norms and biases */
    float clip;          /* global-norm clipping threshold; 0 = off */
} tp_adamw_cfg;

void tp_adamw_defaults(tp_adamw_cfg *c); /* lr 3e-4, min_lr 3e-5, betas 0.9/0.95, eps 1e-8, wd 0.1, clip 1 */
/* Learning rate of update s (0-based), W = warmup_steps, S = total_steps, in double:
 *   s < W: lr*(s+1)/W;  S == 0: lr (no decay);  W <= s < S: min_lr + (lr-min_lr)*0.5*(1+cos(pi*(s-W)/(S-W)));
 *   s >= S: min_lr. */
double tp_lr_at(const tp_adamw_cfg *c, long step);

typedef struct {
    tp_adamw_cfg cfg;
    size_t n;            /* == model n_params */
    float *m, *v;        /* (n) first and second moments, same layout as tp_model.params */
    long step;           /* updates done so far */
    /* which parameter ranges get weight decay (set from the model's views at init) */
    size_t n_ranges;
    size_t (*ranges)[2]; /* [offset, length] into params of the decayed tensors */
} tp_adamw;

tp_status tp_adamw_init(tp_adamw *o, const tp_model *m, const tp_adamw_cfg *c);
void tp_adamw_free(tp_adamw *o);
/* Global L2 norm of n floats, accumulated in double in a fixed order. */
double tp_grad_norm(const float *g, size_t n);
/* One update of m->params from grad->params: clip to cfg.clip (torch's clip_grad_norm_ rule),
 * then AdamW with lr = tp_lr_at(cfg, step); step++. *gnorm: the norm before clipping (may be
 * NULL). Refuses (TP_ERR_NUMERIC, nothing changed) when the gradient holds NaN/inf. */
tp_status tp_adamw_step(tp_adamw *o, tp_model *m, const tp_model *grad, double *gnorm);

/* ======================= data (src/train/data.c) ======================= */

/* Token shard file (.tpt, versioned, see docs/data.md): uint32 token ids with document
 * boundaries, plus the vocabulary size and BOS/EOS ids of the tokenizer that wrote it. */
typedef struct tp_dataset tp_dataset;
/* Writes one shard: tokens (n_tokens) and the start offset of each of n_docs documents
 * (doc_start[0] == 0, increasing); vocab, bos and eos (-1 = none) of the tokenizer. Written to a
 * temporary name and renamed. */
tp_status tp_shard_write(const char *path, const uint32_t *tokens, size_t n_tokens, const uint64_t *doc_start,
                         size_t n_docs, uint32_t vocab, int32_t bos, int32_t eos);
/* tp_shard_write plus a fingerprint of the tokenizer (tp_shard_tok_fingerprint; 0 = unknown) and a
 * free-text description of where the tokens came from (source may be NULL). */
tp_status tp_shard_write_ex(const char *path, const uint32_t *tokens, size_t n_tokens, const uint64_t *doc_start,
                            size_t n_docs, uint32_t vocab, int32_t bos, int32_t eos, uint64_t tok_fingerprint,
                            const char *source);
/* A shard filled one document at a time; both `taper tokenize` and `taper generate-data` write
 * through it. Nothing appears under path before tp_shard_writer_close, which writes the whole file
 * as tp_shard_write_ex does (temporary name, fsync, rename, fsync of the directory): an interrupted
 * or failed write leaves path as it was. */
typedef struct tp_shard_writer tp_shard_writer;
/* vocab, bos and eos (-1 = none: what the loader inserts around each document) and the tokenizer
 * fingerprint (tp_shard_tok_fingerprint; 0 = unknown) go into the header. */
tp_status tp_shard_writer_open(const char *path, uint32_t vocab, int32_t bos, int32_t eos, uint64_t tok_fingerprint,
                               tp_shard_writer **out);
/* Appends one document of n >= 1 ids, each in [0, vocab); refused (nothing added) otherwise. */
tp_status tp_shard_writer_add_doc(tp_shard_writer *w, const int32_t *ids, size_t n);
size_t tp_shard_writer_tokens(const tp_shard_writer *w); /* tokens added so far */
size_t tp_shard_writer_docs(const tp_shard_writer *w);   /* documents added so far */
/* Writes the shard with source (free text, may be NULL) in its header and frees w, also on
 * failure. *bytes (may be NULL): the size of the file written. */
tp_status tp_shard_writer_close(tp_shard_writer *w, const char *source, size_t *bytes);
/* Frees w and writes nothing (NULL is fine). */
void tp_shard_writer_abort(tp_shard_writer *w);
/* 64-bit fingerprint of what a tokenizer does (its pieces, pre-tokenizer and the encoding of a fixed
 * probe text); never 0. Shards of one dataset must agree on it. */
uint64_t tp_shard_tok_fingerprint(const tp_tokenizer *t);
/* path: one shard, a directory of *.tpt shards (sorted by name), or a comma-separated list. */
tp_status tp_dataset_open(const char *path, tp_dataset **out);
void tp_dataset_close(tp_dataset *d);
size_t tp_dataset_tokens(const tp_dataset *d);
size_t tp_dataset_docs(const tp_dataset *d);
/* Header fields every shard of the dataset shares. */
typedef struct {
    size_t n_shards;
    uint32_t vocab;
    int32_t bos, eos;           /* inserted around each document by the loader; -1 = none */
    uint64_t tok_fingerprint;   /* 0 = unknown */
} tp_dataset_info;
void tp_dataset_get_info(const tp_dataset *d, tp_dataset_info *out);

/* Where the loader stands; saved in checkpoints. */
typedef struct {
    uint64_t seed;
    uint64_t epoch;      /* completed passes over the training windows */
    uint64_t index;      /* next window within the current epoch's permutation */
} tp_data_cursor;

/* Packs documents into windows of T+1 tokens (inputs + shifted targets) with BOS before and EOS
 * after each document (those of the shard header; none when -1), holds out val_frac of the windows for validation (a fixed, seed-independent
 * choice), shuffles the training windows by seed, reshuffling every epoch. */
typedef struct tp_loader tp_loader;
/* d must outlive the loader. Exact rules (window split, validation choice, shuffles): docs/data.md. */
tp_status tp_loader_open(const tp_dataset *d, int T, double val_frac, uint64_t seed, tp_loader **out);
/* One line saying what the loader serves (tokens, windows, train/val split), for logs. */
void tp_loader_describe(const tp_loader *L, char *buf, size_t n);
void tp_loader_free(tp_loader *L);
size_t tp_loader_n_train(const tp_loader *L); /* training windows */
size_t tp_loader_n_val(const tp_loader *L);   /* validation windows */
/* Next B training windows: tokens and targets (B,T) each; advances the cursor (wrapping epochs). */
tp_status tp_loader_next(tp_loader *L, int B, int32_t *tokens, int32_t *targets);
/* Validation windows [i, i+B) (clamped: *got tells how many were filled). */
tp_status tp_loader_val(const tp_loader *L, size_t i, int B, int32_t *tokens, int32_t *targets, int *got);
tp_data_cursor tp_loader_cursor(const tp_loader *L);
tp_status tp_loader_seek(tp_loader *L, tp_data_cursor c);
/* tp_loader_next that also returns, in ids (B; may be NULL), the training index j of each window
 * served (0 <= j < n_train: the j-th training window in stream order, window w = j + floor(j/(k-1)),
 * docs/data.md rule 4). The id names the window's content whatever the epoch, shuffle or resume. */
tp_status tp_loader_next_ids(tp_loader *L, int B, int32_t *tokens, int32_t *targets, uint64_t *ids);
/* Moves the cursor past the next n training windows without reading them, exactly as n calls of
 * tp_loader_next would (epochs wrap the same way): a rank skips the other ranks' windows. */
tp_status tp_loader_skip(tp_loader *L, uint64_t n);
/* Training windows j .. j+B-1 in stream order (clamped: *got tells how many were filled); the
 * window with id j is exactly what tp_loader_next_ids serves under that id. */
tp_status tp_loader_train(const tp_loader *L, uint64_t j, int B, int32_t *tokens, int32_t *targets, int *got);
/* What the loader was opened with and the split it made. */
typedef struct {
    const tp_dataset *d;
    int T;
    double val_frac;
    uint64_t k;          /* every k-th window held out (0 = none) */
    uint64_t n_windows, n_train, n_val;
} tp_loader_info;
void tp_loader_get_info(const tp_loader *L, tp_loader_info *out);

/* ======================= checkpoints (src/train/checkpoint.c) ======================= */

/* Everything besides weights and moments that an exact resume needs. */
typedef struct {
    long step;           /* optimizer updates done */
    tp_rng rng;
    tp_data_cursor cursor;
    double tokens_seen;
    double elapsed_s;    /* training wall time so far */
    char *args_json;     /* the run's settings (malloc'd; compared on resume) */
    void *extra;         /* opaque state of whoever drives the trainer (e.g. a distiller's learned
                            projections and their moments), extra_bytes long; saved after the
                            moments, covered by the checksum; malloc'd on load, NULL when absent */
    size_t extra_bytes;
} tp_ckpt_state;

/* Writes DIR/ckpt-<step>.tpc: to a temporary name, fsync, rename, fsync of DIR; the file ends
 * with a checksum and a completion marker written last. Keeps the newest keep_last
 * checkpoints (0 = keep all). Test hook: TAPER_TEST_CKPT_DIE_AFTER=<n> in the environment makes
 * the writer SIGKILL its own process after n bytes of the temporary file (crash tests only). */
tp_status tp_ckpt_save(const char *dir, const tp_model *m, const tp_adamw *o, const tp_ckpt_state *st,
                       int keep_last);
/* Loads the newest complete, checksum-valid checkpoint of DIR into m (same config required),
 * o (initialised by tp_adamw_init) and st. Damaged or partial files are skipped with a warning
 * on stderr. Returns TP_ERR_IO with a message when DIR holds no usable checkpoint. *path_out
 * (may be NULL) receives the file used (malloc'd). */
tp_status tp_ckpt_load_latest(const char *dir, tp_model *m, tp_adamw *o, tp_ckpt_state *st, char **path_out);
void tp_ckpt_state_free(tp_ckpt_state *st);

#endif
