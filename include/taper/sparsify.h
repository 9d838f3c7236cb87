/* Unstructured and N:M sparsity of the linear layers of the decoder blocks: magnitude, Wanda
 * (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023), calibrated layer by layer on the
 * hidden states of the already-sparsified earlier layers; the pruning mask (which weights are
 * zero) and its versioned binary file; re-applying a mask to a model (sparse fine-tuning keeps
 * the mask with it). Definitions, tie rules and the file layout are in docs/sparsity.md. */
#ifndef TAPER_SPARSIFY_H
#define TAPER_SPARSIFY_H

#include <stddef.h>
#include <stdint.h>
#include "taper/model.h"
#include "taper/status.h"
#include "taper/util.h"

typedef enum { TP_SPARSE_MAGNITUDE = 0, TP_SPARSE_WANDA, TP_SPARSE_SPARSEGPT, TP_SPARSE_METHOD_COUNT } tp_sparse_method;
const char *tp_sparse_method_name(tp_sparse_method m); /* "magnitude", "wanda", "sparsegpt" */
tp_status tp_sparse_method_parse(const char *s, tp_sparse_method *out);

/* The seven linear layers of a decoder block, in file and report order. */
typedef enum {
    TP_SP_Q = 0, TP_SP_K, TP_SP_V, TP_SP_O, TP_SP_GATE, TP_SP_UP, TP_SP_DOWN, TP_SP_MATRICES
} tp_sparse_matrix;
#define TP_SP_ALL ((1u << TP_SP_MATRICES) - 1)
const char *tp_sparse_matrix_name(int k); /* "q", "k", "v", "o", "gate", "up", "down" */
/* "q,k,v,o,gate,up,down" (any subset, any order), "all", "attn" (q,k,v,o), "mlp" (gate,up,down)
 * -> bit set of (1 << tp_sparse_matrix). */
tp_status tp_sparse_targets_parse(const char *s, unsigned *targets);
/* HF tensor name of matrix k of layer l ("model.layers.3.self_attn.q_proj.weight"). */
void tp_sparse_tensor_name(int l, int k, char *buf, size_t n);
/* The weights (rows = outputs, cols = inputs, row-major as in HF) of matrix k of layer l. */
float *tp_sparse_matrix_data(const tp_model *m, int l, int k, int *rows, int *cols);

/* ---- the mask ---- */

typedef struct {
    char *name;         /* HF tensor name (one of the seven linear layers of a block) */
    int layer, matrix;  /* parsed from name */
    uint32_t rows, cols;
    uint64_t n_pruned;  /* set bits */
    uint8_t *bits;      /* ceil(rows*cols/8) bytes: weight i (row-major) is pruned (zero) when bit
                           i & 7 of byte i >> 3 is set; padding bits are 0 */
} tp_mask_tensor;

typedef struct {
    int method;         /* tp_sparse_method that made it, or -1 when unknown */
    double sparsity;    /* requested unstructured fraction (0 with N:M) */
    int nm_n, nm_m;     /* N:M pattern, 0:0 when unstructured */
    int n;              /* tensors, in model order (layer, then q k v o gate up down) */
    tp_mask_tensor *t;
} tp_mask;

void tp_mask_free(tp_mask *mk);
/* Empty mask (all bits 0) with one tensor for each (layer, matrix in targets) of config c. */
tp_status tp_mask_alloc(const tp_config *c, unsigned targets, tp_mask **out);
/* Mask file ("TPSPMASK", version 1; docs/sparsity.md): written atomically; load validates the
 * magic, version, every count, name, shape and size against the file length, padding bits, the
 * per-tensor pruned counts and the trailing FNV-1a checksum. */
tp_status tp_mask_save(const tp_mask *mk, const char *path);
tp_status tp_mask_load(const char *path, tp_mask **out);
/* Fails, naming the tensor, when a tensor of the mask is not in m or has another shape. */
tp_status tp_mask_check(const tp_mask *mk, const tp_model *m);
/* Zeroes every weight of m the mask prunes (after tp_mask_check). Meant to be called after each
 * optimizer step of sparse fine-tuning. */
tp_status tp_mask_apply(tp_model *m, const tp_mask *mk);
/* Pruned weights of m that are not zero (0 once the mask is applied); -1 if mk does not fit m. */
long long tp_mask_violations(const tp_model *m, const tp_mask *mk);

/* ---- sparsification ---- */

typedef struct {
    tp_sparse_method method;
    double sparsity;    /* unstructured: fraction pruned in [0, 1), used when nm_m == 0 */
    int nm_n, nm_m;     /* N:M: keep N of every M consecutive inputs of each row (1 <= N < M <= 64);
                           0:0 = unstructured */
    unsigned targets;   /* matrices to sparsify (default TP_SP_ALL) */
    int global;         /* magnitude, unstructured only: one ranking across all target matrices
                           instead of one per matrix */
    double damp;        /* SparseGPT: lambda = damp * mean(diag H) (default 0.01) */
    int blocksize;      /* SparseGPT: column block (default 128; a multiple of M with N:M) */
    int batch;          /* samples per layer forward (default 8). Statistics are summed sample by
                           sample in order; the batch size only changes how BLAS rounds the layer
                           forward (a few ulp in SparseGPT's weights) */
    tp_progress *progress; /* NULL, or a begun bar; its total is set here (tokens through layers) */
} tp_sparsify_opts;
void tp_sparsify_opts_default(tp_sparsify_opts *o);

typedef struct {
    double seconds;       /* whole run */
    double forward_seconds; /* layer forwards and activation statistics (0 for magnitude) */
    double solve_seconds;   /* scoring, mask selection and (SparseGPT) Hessian factorisations + updates */
    size_t calib_tokens;
} tp_sparsify_stats;

/* Sparsifies the target matrices of m in place and returns the mask. Magnitude ignores ids
 * (may be NULL); Wanda and SparseGPT run the calibration samples ids (n, seq_len) through the
 * model one layer at a time: the statistics of layer l come from a forward of the dense layer l
 * on the hidden states that the already-sparsified layers 0..l-1 produced; then the layer is
 * sparsified and its sparse output feeds layer l+1. stats may be NULL. */
tp_status tp_sparsify(tp_model *m, const int32_t *ids, size_t n, int seq_len, const tp_sparsify_opts *o,
                      tp_mask **mask, tp_sparsify_stats *stats);

/* Number pruned out of n with unstructured sparsity s: floor(s*n + 1e-9). */
size_t tp_sparse_count(double s, size_t n);

#endif
