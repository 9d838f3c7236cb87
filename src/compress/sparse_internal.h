/* Pieces shared by sparsify.c (driver, magnitude, Wanda) and sparse_gpt.c (SparseGPT): the
 * selection rules (sparse_select.c, which calls neither) and SparseGPT's two steps; not public
 * API. Calls go one way: sparsify.c -> sparse_gpt.c -> sparse_select.c. */
#ifndef TAPER_SPARSE_INTERNAL_H
#define TAPER_SPARSE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "taper/sparsify.h"

/* pruned[i] = 1 for the k smallest of score[0..n) in the order (score, i), else 0 (exactly k).
 * tmp: n doubles of scratch. Returns 0, or -1 when a score is NaN. */
int sp_select_smallest(const double *score, size_t n, size_t k, double *tmp, unsigned char *pruned);

/* N:M within one row: in every group of m consecutive entries, pruned = 1 for the m - n smallest
 * in the order (score, index). Returns 0, or -1 when a score is NaN. */
int sp_select_nm(const double *score, size_t len, int n, int m, unsigned char *pruned);

/* From a symmetric Hessian H (c, c) (full, overwritten): dead inputs (H_jj == 0) get H_jj = 1
 * and dead[j] = 1; lambda = damp * mean(diag H) is added to the diagonal; U (c, c) receives the
 * upper Cholesky factor of H^-1 (H^-1 = U^T U; lower triangle 0). work: 2*c*c doubles. what
 * names the matrices for the error raised when H is not positive definite. */
tp_status sp_gpt_factor(double *H, int c, double damp, unsigned char *dead, double *U, double *work, const char *what);

/* SparseGPT on one matrix W (rows, cols) with the factor U of its inputs' Hessian: dead input
 * columns are zeroed, then columns are visited in blocks of o->blocksize; the pruned set of a
 * block is chosen at its start (unstructured: the k_b smallest w^2 / U_jj^2 over the whole
 * block in the order (score, r*bc + c), k_b splitting the matrix count floor(s*rows*cols) over
 * the blocks) or every M columns (N:M, per row, from the updated weights); each column is then
 * pruned and the error spread over the remaining columns (OBS). W is overwritten (pruned = 0);
 * pruned: rows*cols flags out. Computed in double. */
tp_status sp_gpt_prune(float *W, int rows, int cols, const double *U, const unsigned char *dead,
                       const tp_sparsify_opts *o, unsigned char *pruned, const char *name);

#endif
