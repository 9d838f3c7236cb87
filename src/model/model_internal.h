/* Helpers shared by the model's loaders, writers and forward pass; not public API. */
#ifndef TAPER_MODEL_INTERNAL_H
#define TAPER_MODEL_INTERNAL_H

#include <stddef.h>

/* llama.cpp's converter stores each head's Q/K rows interleaved (pairs (j, j+hd/2) made
 * adjacent) for its RoPE kernel. GGUF row h*hd + 2j + t holds HF row h*hd + t*hd/2 + j. */
void tp_rope_rows_unpermute(const float *gguf_rows, float *hf_rows, int n_heads, int head_dim, size_t cols);
void tp_rope_rows_permute(const float *hf_rows, float *gguf_rows, int n_heads, int head_dim, size_t cols);

#include "taper/model.h"
#include "taper/gguf.h"
#include "taper/safetensors.h"

/* ---- streamed models (stream.c) ---- */
struct tp_stream {
    tp_safetensors *st;  /* an HF folder's tensors, or */
    tp_gguf *g;          /* a GGUF file's */
    int loaded;          /* the layer the shared layer buffer holds; -1: none */
    float *tmp;          /* GGUF Q/K rows before unpermuting (n_heads*head_dim x d_model) */
    float *head;         /* the lm_head read by tp_model_stream_head, or NULL */
};
/* A model whose layer views all share one layer buffer, with a final norm and no embedding or
 * lm_head (n_params counts that buffer): a streamed model's storage, or a shell that names the
 * tensors of a model being written tensor by tensor. */
tp_status tp_model_alloc_streamed(const tp_config *c, tp_model **out);
/* Points m->layers[l]'s views at the start of the shared layer buffer with layer l's widths (a
 * streamed model with per-layer widths, before reading layer l into it). */
void tp_model_layout_slot(tp_model *m, int l);
/* HF export of a model written tensor by tensor: the folder tp_model_save_hf would write for a model
 * with m's config, tokenizer, chat template and tensor table (tp_model_tensors(m), e.g. a shell
 * from tp_model_alloc_streamed), the values of tensor idx coming from fill(user, idx, e0, n, dst):
 * elements e0 .. e0+n-1, in increasing order of idx and e0. Same bytes as tp_model_save_hf. */
typedef tp_status (*tp_tensor_fill_fn)(void *user, int idx, size_t e0, size_t n, float *dst);
tp_status tp_model_save_hf_fill(const tp_model *m, const char *dir, const char *dtype, tp_tensor_fill_fn fill,
                                void *user);
/* Frees m->stream (closes its file); tp_model_free calls it. */
void tp_stream_close(tp_model *m);
/* Loaders' pieces that the streamed model reuses, so that streamed and loaded weights are the
 * same bits. HF: the tensors of m's table (tp_model_tensors) whose names start with prefix. */
tp_status tp_hf_load_prefix(const tp_safetensors *st, const char *dir, const tp_model *m, const char *prefix);
/* The tokenizer, chat template, source and source_format of a model, as the loaders set them. */
tp_status tp_hf_load_meta(const char *dir, tp_model *m);
tp_status tp_gguf_load_meta(const tp_gguf *g, const char *path, tp_model *m);
/* GGUF: the config from the header; one layer into L (Q/K rows unpermuted through tmp, Gemma's
 * norms shifted back); one tensor by its GGUF name, checked to be rows x cols in HF layout. */
tp_status tp_gguf_config(const tp_gguf *g, tp_config *c);
tp_status tp_gguf_load_layer(const tp_gguf *g, const tp_config *c, int l, tp_layer *L, float *tmp);
tp_status tp_gguf_load_tensor(const tp_gguf *g, const char *name, float *dst, size_t rows, size_t cols);

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
