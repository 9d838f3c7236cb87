/* Helpers shared by the model's loaders, writers and forward pass; not public API. */
#ifndef TAPER_MODEL_INTERNAL_H
#define TAPER_MODEL_INTERNAL_H

#include <stddef.h>

/* llama.cpp's converter stores each head's Q/K rows interleaved (pairs (j, j+hd/2) made
 * adjacent) for its RoPE kernel. GGUF row h*hd + 2j + t holds HF row h*hd + t*hd/2 + j. */
void tp_rope_rows_unpermute(const float *gguf_rows, float *hf_rows, int n_heads, int head_dim, size_t cols);
void tp_rope_rows_permute(const float *hf_rows, float *gguf_rows, int n_heads, int head_dim, size_t cols);

#include "taper/model.h"
/* llama.cpp's rope_freqs.weight for a llama3-scaled config (head_dim/2 factors), as its converter
 * computes them (load_gguf.c). */
void tp_rope_llama3_factors(const tp_config *c, float *f);
/* RoPE inverse frequencies (head_dim/2 of them), with llama3 / linear scaling applied. */
void tp_rope_inv_freq(const tp_config *c, float *inv_freq);
/* Those of the sliding layers when they have their own base (Gemma 3: rope_local_theta, no
 * scaling); else the same as tp_rope_inv_freq. */
void tp_rope_inv_freq_local(const tp_config *c, float *inv_freq);
/* Which of the two sets layer l uses: 1 for the local one. */
int tp_layer_rope_local(const tp_config *c, int l);
/* The query_pre_attn_scalar llama.cpp assumes for a Gemma 3 GGUF: head_dim, or d_model / heads
 * (integer division) for the 62-layer 27B. */
float tp_gemma3_llamacpp_scale_base(const tp_config *c);
/* Gemma's embedding scale, sqrt(d_model) rounded to float32 as transformers stores it; else 1. */
float tp_embed_scale(const tp_config *c);
/* The scale of the attention scores: query_pre_attn_scalar^-1/2 (Gemma), else 1/sqrt(head_dim). */
float tp_attn_scale(const tp_config *c);
/* The sliding window of layer l's attention (0: none). */
int tp_layer_window(const tp_config *c, int l);
/* The weights an RMSNorm multiplies by: w itself, or 1 + w written into tmp (n floats) under
 * norm_plus_one (Gemma). */
const float *tp_norm_weight(const tp_config *c, const float *w, size_t n, float *tmp);

#endif
