/* Pieces of the training engine shared with the tests; not public API. */
#ifndef TAPER_TRAIN_INTERNAL_H
#define TAPER_TRAIN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "taper/train.h"

/* Cross-entropy of nr rows of logits (nr, V) against targets (TP_IGNORE_INDEX = no loss): the
 * loss of each row into row_loss (nr); with grad set, logits are overwritten with
 * d(sum of losses * inv_count)/d(logits) (zero rows for ignored targets). Returns the summed
 * loss, added in row order. */
double tp_ce_rows(float *logits, const int32_t *targets, size_t nr, size_t V, double *row_loss, int grad,
                  float inv_count);

/* The checksum a checkpoint file stores over its bytes before the last 16 (checkpoint.c), for
 * tests and the fuzz harness that build checkpoint files. */
uint64_t tp_ckpt_checksum(const void *p, size_t n);

/* Tests: whether tapes allocated from now on keep the layers' bf16 product inputs for the
 * backward (default on; backward.c, tape_bf16_alloc). Off, the backward rebuilds and converts them. */
void tp_tape_keep_bf16(int on);

/* AdamW update number step (1-based) at learning rate lr on n values outside a model (the
 * distiller's projections): the same kernel and the same float operations as tp_adamw_step, with
 * the gradient multiplied by gscale (1: as is), weight decay when c has it, no clipping. */
void tp_adamw_span(const tp_adamw_cfg *c, double lr, long step, float gscale, float *p, const float *g, float *m,
                   float *v, size_t n);

#endif
