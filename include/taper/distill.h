/* Knowledge-distillation losses: divergences between teacher and student next-token distributions
 * (forward KL, reverse KL, JSD, over the full vocabulary or the teacher's top-k), and losses between
 * intermediate hidden states (cosine, MSE) with an optional learned projection. Each function returns
 * the loss summed over the rows it is given and writes the gradient with respect to its student-side
 * inputs, so the training step (tp_train_step's tp_logit_loss_fn and grad hooks) can chain them. */
#ifndef TAPER_DISTILL_H
#define TAPER_DISTILL_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "taper/status.h"

typedef enum {
    TP_KD_FKL = 0, /* KL(p_teacher || q_student) */
    TP_KD_RKL,     /* KL(q_student || p_teacher) */
    TP_KD_JSD      /* beta KL(p || m) + (1-beta) KL(q || m), m = beta p + (1-beta) q */
} tp_kd_kind;

typedef struct {
    tp_kd_kind kind;
    float tau;       /* temperature on both sides' logits (> 0) */
    int tau2;        /* 1: multiply loss and gradient by tau^2 (Hinton's scaling) */
    float beta;      /* JSD mixing weight in (0, 1) */
} tp_kd_cfg;

/* Full-vocabulary divergence of R rows. s: student logits (R, V), overwritten with
 * scale * d(loss)/d(s); t: teacher logits (R, V). Returns the unscaled loss summed over rows
 * (nats; per row the divergence at temperature tau, times tau^2 when tau2). Rows are independent;
 * done in parallel over rows, deterministic. */
double tp_kd_rows(const tp_kd_cfg *c, float *s, const float *t, size_t R, size_t V, float scale);

/* Teacher's top-k of one row at temperature tau: indices (k) and log-probabilities normalised
 * over the FULL vocabulary (so that sum exp < 1 leaves the rest of the mass). logits (V). */
void tp_kd_topk(const float *logits, size_t V, int k, float tau, int32_t *idx, float *logp);

/* Divergence against a teacher known only by its top-k (idx, logp: (R, k) from tp_kd_topk at the
 * same tau). The vocabulary is reduced to k+1 bins: the k teacher tokens and "the rest", where the
 * teacher's rest mass is 1 - sum exp(logp) (clamped at 1e-12) and the student's is its probability
 * of every other token; the divergence is taken over those bins. With k = V this is tp_kd_rows. */
double tp_kd_rows_topk(const tp_kd_cfg *c, float *s, const int32_t *idx, const float *logp, int k, size_t R,
                       size_t V, float scale);

/* tp_kd_topk's selection alone: the k largest raw logits (strongest first, ties to the lower id)
 * into idx (k) and top (k). tau does not change which tokens are chosen. */
void tp_kd_topk_logits(const float *logits, size_t V, int k, int32_t *idx, float *top);
/* log sum_j exp(logits_j / tau) over the V logits, in double (the normaliser tp_kd_topk uses). */
double tp_kd_lse(const float *logits, size_t V, float tau);
/* One log-probability as tp_kd_topk computes it: (float)(logit / tau - lse), lse = tp_kd_lse(.., tau).
 * tp_kd_topk(l, V, k, tau) == tp_kd_topk_logits then tp_kd_logp on each entry, bit for bit. */
float tp_kd_logp(float logit, float tau, double lse);

/* ---- contrastive loss (docs/distillation.md, "Contrastive loss") ----
 * Per position: y* = the teacher's most likely token; N negatives drawn without replacement from
 * the teacher's distribution with y* removed, p(j) / (1 - p(y*)), restricted to a pool (the
 * teacher's top-k, or the whole vocabulary); loss = -log softmax over {y*, negatives} of the
 * student's logits / tau at y* (times tau^2 with tau2). */
#define TP_KD_MAX_NEG 1024
/* Gumbel(0,1) noise of (seed, row, token): a counter-based hash, so any row can be drawn alone,
 * in any order or thread, and a resumed run draws the same values. */
double tp_kd_gumbel(uint64_t seed, uint64_t row, int32_t token);
/* Candidates of one position from a pool of n tokens: ids (n), or NULL for tokens 0..n-1, and their
 * scores, where score * mult = log p + a constant of the row (top-k log-probs with mult 1, or raw
 * logits with mult 1/tau). cand[0] = y* (the largest score; ties to the earliest entry);
 * cand[1..N] = the N other entries with the largest score*mult + tp_kd_gumbel(seed, row, id)
 * (Gumbel-top-N: exactly sampling N times without replacement), strongest first. Refuses
 * (TP_ERR_ARG) N < 1, N > n - 1 and N > TP_KD_MAX_NEG. */
tp_status tp_kd_pick(const float *score, const int32_t *ids, size_t n, double mult, int N, uint64_t seed, uint64_t row,
                     int32_t *cand);
/* The loss over R rows of student logits s (R, V) with candidates cand (R, n_cand), cand[.,0] the
 * positive: sum over rows of -log softmax_i(s[cand_i] / tau)[0] (times tau^2 with c->tau2).
 * g (R, n_cand), may be NULL: scale * d(loss)/d(s[cand_i]) (every other logit's gradient is 0).
 * c->kind and c->beta are ignored. */
double tp_kd_contrastive(const tp_kd_cfg *c, const float *s, size_t V, const int32_t *cand, int n_cand, size_t R,
                         float scale, float *g);

typedef enum { TP_HID_COSINE = 0, TP_HID_MSE } tp_hid_kind;

/* Loss between student states xs (N, ds) and teacher states xt (N, dt):
 *   y = xs P^T when P (dt, ds) is given (a learned projection), else y = xs (ds must equal dt);
 *   cosine: sum over rows of 1 - cos(y_n, xt_n)   (rows with a zero vector contribute 1, no grad);
 *   mse:    sum over rows of mean over columns of (y - xt)^2.
 * Returns the loss summed over rows (divide by N yourself for a mean: scale does so for the
 * gradients). dxs (N, ds): scale * d/dxs ADDED; dP (dt, ds): scale * d/dP ADDED (when P and dP). */
double tp_hidden_loss(tp_hid_kind kind, const float *xs, size_t ds, const float *xt, size_t dt, size_t N,
                      const float *P, float *dxs, float *dP, float scale);
/* The same in two halves, for a caller that learns its gradient scale between them (the
 * distiller: the forward, then the logits' loss, then the backward) and so computes y once.
 * _fwd: the loss; y into ybuf (N, dt) when P (ybuf unused otherwise); with gy set, the gradient of
 * the loss with respect to y (N, dt), unscaled, WRITTEN into gy. _bwd: from that gy, scale * d/dxs
 * ADDED into dxs and scale * d/dP ADDED into dP (each when set; dP only with P). */
double tp_hidden_loss_fwd(tp_hid_kind kind, const float *xs, size_t ds, const float *xt, size_t dt, size_t N,
                          const float *P, float *ybuf, float *gy);
void tp_hidden_loss_bwd(const float *xs, size_t ds, size_t dt, size_t N, const float *P, const float *gy, float *dxs,
                        float *dP, float scale);

/* ---- the distillation step (src/train/distill.c) ----
 * A teacher forward per micro-batch (no gradients; only its final-norm output and the mapped
 * hidden states are kept), the logits loss computed chunk by chunk against the teacher's logits
 * (recomputed per chunk from its final-norm output, so no (N, vocab) matrix is ever stored),
 * optional CE on the labels, and intermediate-state losses injected into the student's backward
 * through grad hooks. Plugs into tp_train_run (trainer.h) through its hooks. */
#include "taper/model.h"
#include "taper/train.h"
#include "taper/trainer.h"

#define TP_DISTILL_MAX_PAIRS 128

/* ---- teacher top-k cache (src/train/teacher_cache.c; file format in docs/distillation.md) ----
 * The teacher's top-K tokens of every position of every training window a loader serves, computed
 * once (`taper teacher-cache`), so that distillation over many epochs runs without the teacher.
 * Per position it stores the K ids, their raw logits and the full-vocabulary log-sum-exp at each
 * temperature asked for; log-probabilities at those temperatures are then exactly tp_kd_topk's. */
#define TP_TCACHE_MAX_TAU 8
typedef struct {
    int version, K, T, vocab, n_tau;
    float tau[TP_TCACHE_MAX_TAU];
    uint64_t n_windows;          /* training windows, indexed by their id j (tp_loader_next_ids) */
    uint64_t n_val;
    double val_frac;
    uint64_t data_tokens, data_docs, data_tok_fp; /* the dataset's counts and tokenizer fingerprint */
    int32_t bos, eos;
    uint64_t data_fp;            /* hash of T, the split and every window's tokens */
    uint64_t teacher_fp;         /* tp_params_hash of the teacher */
    uint64_t teacher_tok_fp;     /* tp_shard_tok_fingerprint of its tokenizer (0 = none) */
    uint64_t window_bytes;       /* bytes of one window's entry */
} tp_tcache_info;

typedef struct tp_tcache tp_tcache;
/* Maps and validates a cache file (magic, version, header checksum, sizes against the file size,
 * every window present). Messages name the file and the field. */
tp_status tp_tcache_open(const char *path, tp_tcache **out);
void tp_tcache_close(tp_tcache *c);
const tp_tcache_info *tp_tcache_get_info(const tp_tcache *c);
/* Index of tau in the cache's temperatures (exact float match), or -1. */
int tp_tcache_tau_index(const tp_tcache *c, float tau);
/* That L serves the windows the cache was made from: T, the validation split, the dataset's
 * counts and tokenizer, then every window's tokens (one pass over the data). */
tp_status tp_tcache_check_data(const tp_tcache *c, const tp_loader *L);
/* Window j: for each of its T positions the first k (<= K) teacher tokens and their log-probs at
 * tau (one of the cache's temperatures) into idx, logp (T, k), equal to tp_kd_topk(.., k, tau) of
 * the teacher's logits. The entry's checksum is verified, and when tokens is given the window's
 * tokens (T) and last target are checked against those the cache was made from. */
tp_status tp_tcache_read(const tp_tcache *c, uint64_t j, const int32_t *tokens, int32_t last_target, int k, float tau,
                         int32_t *idx, float *logp);
/* 64-bit hash of a window's T tokens and its last target, as the cache records it. */
uint64_t tp_tcache_window_hash(const int32_t *tokens, int T, int32_t last_target);

typedef struct {
    int K;                       /* tokens kept per position (1 .. vocab) */
    int B;                       /* windows per teacher forward (default 4) */
    int n_tau;                   /* temperatures (1 .. TP_TCACHE_MAX_TAU, distinct, > 0) */
    float tau[TP_TCACHE_MAX_TAU];
    int restart;                 /* 1: ignore an interrupted PATH.partial and start again */
    int quiet;                   /* no progress bar */
    uint64_t max_windows;        /* compute at most this many windows in this call, then stop as if
                                    interrupted (0 = no limit; for tests) */
    volatile sig_atomic_t *stop; /* nonzero: stop after the current batch, keep PATH.partial */
    tp_comm *comm;               /* ranks sharing the windows (NULL: tp_comm_world()): rank 0 makes or
                                    resumes PATH.partial, each rank computes its share of the windows
                                    still missing and writes their entries in place (PATH must be
                                    on a file system every rank sees), rank 0 renames it when all are
                                    there; the file is the same bytes whatever the rank count */
} tp_tcache_build_opts;
void tp_tcache_build_defaults(tp_tcache_build_opts *o); /* K 32, B 4, tau {1} */
typedef struct {
    uint64_t n_windows, done_before, computed;
    int complete;                /* 1: PATH written; 0: stopped, PATH.partial resumes */
    double seconds, tokens_per_s;
    uint64_t bytes;
} tp_tcache_build_result;
/* Runs the teacher over every training window of L (in id order, B at a time) and writes PATH:
 * the entries go to PATH.partial (created with the header and index, then filled window by
 * window; each index entry is written after its data, with the data's checksum), fsynced and
 * renamed to PATH when complete. An existing PATH.partial with the same header (same teacher,
 * data, T, K, temperatures) is resumed: its entries whose checksum holds are kept. */
tp_status tp_tcache_build(const tp_model *teacher, const tp_loader *L, const char *path, const tp_tcache_build_opts *o,
                          tp_tcache_build_result *res);

typedef struct {
    tp_kd_cfg kd;        /* logits divergence */
    int topk;            /* 0: full vocabulary; k: the teacher's top-k + rest */
    float w_logits;      /* weight of the logits loss (default 1; 0 = off) */
    float w_ce;          /* weight of CE on the labels (default 0) */
    tp_hid_kind hid;     /* intermediate-state loss */
    int n_pairs;         /* mapped (student layer, teacher layer) pairs of LAYER_OUT states */
    int s_layer[TP_DISTILL_MAX_PAIRS], t_layer[TP_DISTILL_MAX_PAIRS];
    int emb;             /* 1: also the embedding outputs (LAYER_IN of layer 0) */
    float alpha;         /* weight of the intermediate losses; < 0: dynamic, alpha = L_logits / L_inter
                            (detached), the Minitron balancing */
    const int32_t *proj_init; /* NULL, or the d_model_student teacher channels the student's channels
                                 came from (width pruning): projections start as that selection */
    float w_contrast;    /* weight of the contrastive loss (default 0 = off) */
    int negatives;       /* its negatives per position (default 16); drawn from the teacher's top-k
                            when topk > 0, else from the whole vocabulary */
    const tp_tcache *cache; /* non-NULL: the teacher's top-k come from this cache (needs topk in
                               1..K, tau among its temperatures, no intermediate states, and the
                               loader's window ids); the teacher model may then be NULL */
} tp_distill_cfg;

void tp_distill_defaults(tp_distill_cfg *c); /* forward KL, tau 1, full vocab, w_logits 1, cosine, dynamic alpha,
                                                no contrastive loss (16 negatives when on), no cache */
/* Parses "29:23,28:22" (student:teacher) into c's pairs; checks the layer ranges. */
tp_status tp_distill_parse_map(tp_distill_cfg *c, const char *map, int student_layers, int teacher_layers);
/* Automatic map: every student layer i to teacher layer kept[i] when kept (the depth-pruning plan's
 * kept layers, n = student layers) is given, else proportionally: round((i+1) Lt / Ls) - 1. */
void tp_distill_auto_map(tp_distill_cfg *c, int student_layers, int teacher_layers, const int *kept);

typedef struct tp_distiller tp_distiller;
/* Checks the pair (same vocabulary, layer ranges) and allocates buffers for micro-batches of B x T.
 * teacher (NULL allowed with c->cache), student and the cache must outlive the distiller. opt: the student's optimizer settings, used for
 * the projections too (may be NULL when no projection is needed). */
tp_status tp_distiller_new(const tp_model *teacher, const tp_model *student, const tp_distill_cfg *c, int B, int T,
                           const tp_adamw_cfg *opt, tp_distiller **out);
void tp_distiller_free(tp_distiller *d);
/* Fills hooks so that tp_train_run runs distillation steps. */
void tp_distiller_hooks(tp_distiller *d, tp_train_hooks *hooks);
/* Last update's loss parts (means over the update's micro-batches). */
typedef struct { double logits, ce, inter, alpha, contrast; } tp_distill_losses;
tp_distill_losses tp_distiller_last(const tp_distiller *d);
/* The projections (n_states, d_teacher, d_student) and their gradients summed since the last
 * update (NULL when the widths are equal); *n_states receives the state count. */
const float *tp_distiller_proj(const tp_distiller *d, const float **grad, int *n_states);

/* ---- `taper distill` as a library call (src/train/distill_job.c) ----
 * tp_train_job_run's job with the distiller plugged into the loop: args.json gets command
 * "distill" and a "distill" member (compared on resume). */
typedef struct {
    const char *teacher;       /* the teacher model (with teacher_cache: only checked against it) */
    const char *teacher_cache; /* NULL, or a file of `taper teacher-cache`: logits losses from it */
    const char *kd;            /* "fkl" (default) | "rkl" | "jsd" | "none" */
    const char *inter;         /* "none" (default) | "cosine" | "mse" */
    const char *map;           /* "29:23,28:22" (student:teacher), "auto" or NULL (automatic) */
    const char *plan;          /* NULL, or the prune_plan.json the student came from */
    const char *alpha;         /* "dynamic" (default) or a number >= 0 */
    const char *keep_mask;     /* NULL, or a sparsity mask kept through training */
    float tau, beta, kd_weight, ce_weight, contrastive_weight; /* 1, 0.5, 1, 0, 0 */
    int tau2, topk, emb_loss, negatives;                       /* 0, 0 (full vocab / the cache's K), 0, 16 */
} tp_distill_job;
void tp_distill_job_default(tp_distill_job *d);
/* The training job j with distillation d. res as tp_train_job_run's. */
tp_status tp_distill_run(const tp_train_job *j, const tp_distill_job *d, tp_train_job_result *res);

#endif
