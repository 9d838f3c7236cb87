/* Helpers shared by the model's loaders, writers and forward pass; not public API. */
#ifndef TAPER_MODEL_INTERNAL_H
#define TAPER_MODEL_INTERNAL_H

#include <stddef.h>

/* llama.cpp's converter stores each head's Q/K rows interleaved (pairs (j, j+hd/2) made
 * adjacent) for its RoPE kernel. GGUF row h*hd + 2j + t holds HF row h*hd + t*hd/2 + j. */
void tp_rope_rows_unpermute(const float *gguf_rows, float *hf_rows, int n_heads, int head_dim, size_t cols);
void tp_rope_rows_permute(const float *hf_rows, float *gguf_rows, int n_heads, int head_dim, size_t cols);

#include "taper/model.h"
/* RoPE inverse frequencies (head_dim/2 of them), with llama3 / linear scaling applied. */
void tp_rope_inv_freq(const tp_config *c, float *inv_freq);

#endif
