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

#endif
