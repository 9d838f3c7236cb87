/* Knowledge-distillation losses: divergences between teacher and student next-token distributions
 * (forward KL, reverse KL, JSD, over the full vocabulary or the teacher's top-k), and losses between
 * intermediate hidden states (cosine, MSE) with an optional learned projection. Each function returns
 * the loss summed over the rows it is given and writes the gradient with respect to its student-side
 * inputs, so the training step (tp_train_step's tp_logit_loss_fn and grad hooks) can chain them. */
#ifndef TAPER_DISTILL_H
#define TAPER_DISTILL_H

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

typedef enum { TP_HID_COSINE = 0, TP_HID_MSE } tp_hid_kind;

/* Loss between student states xs (N, ds) and teacher states xt (N, dt):
 *   y = xs P^T when P (dt, ds) is given (a learned projection), else y = xs (ds must equal dt);
 *   cosine: sum over rows of 1 - cos(y_n, xt_n)   (rows with a zero vector contribute 1, no grad);
 *   mse:    sum over rows of mean over columns of (y - xt)^2.
 * Returns the loss summed over rows (divide by N yourself for a mean: scale does so for the
 * gradients). dxs (N, ds): scale * d/dxs ADDED; dP (dt, ds): scale * d/dP ADDED (when P and dP). */
double tp_hidden_loss(tp_hid_kind kind, const float *xs, size_t ds, const float *xt, size_t dt, size_t N,
                      const float *P, float *dxs, float *dP, float scale);

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
} tp_distill_cfg;

void tp_distill_defaults(tp_distill_cfg *c); /* forward KL, tau 1, full vocab, w_logits 1, cosine, dynamic alpha */
/* Parses "29:23,28:22" (student:teacher) into c's pairs; checks the layer ranges. */
tp_status tp_distill_parse_map(tp_distill_cfg *c, const char *map, int student_layers, int teacher_layers);
/* Automatic map: every student layer i to teacher layer kept[i] when kept (the depth-pruning plan's
 * kept layers, n = student layers) is given, else proportionally: round((i+1) Lt / Ls) - 1. */
void tp_distill_auto_map(tp_distill_cfg *c, int student_layers, int teacher_layers, const int *kept);

typedef struct tp_distiller tp_distiller;
/* Checks the pair (same vocabulary, layer ranges) and allocates buffers for micro-batches of B x T.
 * teacher and student must outlive the distiller. opt: the student's optimizer settings, used for
 * the projections too (may be NULL when no projection is needed). */
tp_status tp_distiller_new(const tp_model *teacher, const tp_model *student, const tp_distill_cfg *c, int B, int T,
                           const tp_adamw_cfg *opt, tp_distiller **out);
void tp_distiller_free(tp_distiller *d);
/* Fills hooks so that tp_train_run runs distillation steps. */
void tp_distiller_hooks(tp_distiller *d, tp_train_hooks *hooks);
/* Last update's loss parts (means over the update's micro-batches). */
typedef struct { double logits, ce, inter, alpha; } tp_distill_losses;
tp_distill_losses tp_distiller_last(const tp_distiller *d);
/* The projections (n_states, d_teacher, d_student) and their gradients summed since the last
 * update (NULL when the widths are equal); *n_states receives the state count. */
const float *tp_distiller_proj(const tp_distiller *d, const float **grad, int *n_states);

#endif
