/* Llama-family model: configuration, fp32 weights in HF layout (one allocation, named views),
 * loading from GGUF or an HF folder, forward pass, and export. */
#ifndef TAPER_MODEL_H
#define TAPER_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "taper/status.h"
#include "taper/tokenizer.h"

typedef enum { TP_ARCH_LLAMA = 0, TP_ARCH_MISTRAL, TP_ARCH_QWEN2, TP_ARCH_QWEN3, TP_ARCH_GEMMA3 } tp_arch;
typedef enum { TP_ROPE_NONE = 0, TP_ROPE_LLAMA3, TP_ROPE_LINEAR } tp_rope_scaling;
typedef enum { TP_ACT_SILU = 0, TP_ACT_GELU_TANH } tp_act;

#define TP_MAX_LAYERS (1 << 14)
#define TP_MAX_HET_LAYERS 512 /* layers a model with per-layer widths may have */

typedef struct {
    tp_arch arch;
    int n_layers;
    int d_model;        /* hidden_size */
    int n_heads;        /* query heads */
    int n_kv_heads;     /* key/value heads (GQA groups) */
    int head_dim;
    int d_ff;           /* intermediate_size */
    int vocab;
    int max_pos;        /* max_position_embeddings */
    float rope_theta;
    float norm_eps;     /* rms_norm_eps */
    tp_rope_scaling rope_scaling;
    float rope_factor, rope_low_freq, rope_high_freq; /* llama3 scaling */
    int rope_orig_max_pos;
    int tie_embeddings;
    int attn_bias;      /* q/k/v biases (Qwen2) */
    int32_t bos_id, eos_id; /* -1 if unknown */
    /* Family features (0 for the Llama family); the architecture fixes which are on. */
    int qk_norm;        /* RMSNorm of each q and k head (weights (head_dim)) before RoPE: Qwen3, Gemma 3 */
    int norm_plus_one;  /* every RMSNorm weight w is applied as (1 + w): Gemma */
    int sandwich_norm;  /* RMSNorm of the attention and MLP outputs before each residual add: Gemma 3 */
    int embed_scale;    /* token embeddings multiplied by sqrt(d_model) (as a float32): Gemma */
    tp_act act;         /* gate activation of the gated MLP: SiLU (SwiGLU) or tanh GELU (GeGLU) */
    float attn_scale_base; /* query_pre_attn_scalar: scores scaled by its -1/2 power; 0: head_dim */
    int sliding_window; /* 0: none; W > 0: on a sliding layer, position p attends to p-W+1 .. p */
    float rope_local_theta; /* RoPE base of sliding layers (no scaling there): Gemma 3; 0: as the others */
    uint8_t layer_sliding[TP_MAX_LAYERS / 8]; /* bit l (byte l/8, bit l%8): layer l is a sliding layer */
    /* Per-layer widths (`taper prune --per-layer`): with hetero 1, layer l has layer_ff[l] MLP
     * neurons and layer_heads[l] query heads (a multiple of n_kv_heads; KV groups stay uniform),
     * and d_ff / n_heads are the largest of them. With hetero 0 every layer has d_ff and n_heads
     * and the arrays are zero. Entries past n_layers are zero. */
    int hetero;
    int layer_ff[TP_MAX_HET_LAYERS];
    int layer_heads[TP_MAX_HET_LAYERS];
} tp_config;

/* MLP width and query heads of layer l. */
static inline int tp_config_ff(const tp_config *c, int l) { return c->hetero ? c->layer_ff[l] : c->d_ff; }
static inline int tp_config_heads(const tp_config *c, int l) { return c->hetero ? c->layer_heads[l] : c->n_heads; }
/* Sets per-layer widths (ff[l], heads[l] for l < n_layers; either may be NULL for "as now"): d_ff and
 * n_heads become their maxima, and hetero 0 when every layer is equal. */
void tp_config_set_widths(tp_config *c, const int *ff, const int *heads);

/* 1 if layer l of c attends through the sliding window (window set and the layer's bit set). */
int tp_config_layer_sliding(const tp_config *c, int l);
void tp_config_set_layer_sliding(tp_config *c, int l, int on);
/* dst = src with only the n layers kept[0..n) (in that order): n_layers and the per-layer
 * sliding flags follow them (the window is dropped when no kept layer slides). dst may be src. */
void tp_config_keep_layers(const tp_config *src, const int *kept, int n, tp_config *dst);

typedef struct {
    float *attn_norm;   /* (d_model) */
    float *wq;          /* (n_heads*head_dim, d_model) */
    float *wk;          /* (n_kv_heads*head_dim, d_model) */
    float *wv;          /* (n_kv_heads*head_dim, d_model) */
    float *bq, *bk, *bv;/* (n_heads*head_dim), (n_kv*head_dim) x2; NULL without attn_bias */
    float *wo;          /* (d_model, n_heads*head_dim) */
    float *mlp_norm;    /* (d_model) */
    float *w_gate;      /* (d_ff, d_model) */
    float *w_up;        /* (d_ff, d_model) */
    float *w_down;      /* (d_model, d_ff) */
    float *q_norm, *k_norm; /* (head_dim) each; NULL without qk_norm */
    float *attn_post_norm;  /* (d_model) norm of the attention output; NULL without sandwich_norm */
    float *mlp_post_norm;   /* (d_model) norm of the MLP output; NULL without sandwich_norm */
} tp_layer;

typedef struct {
    tp_config cfg;
    float *params;      /* every parameter, one allocation */
    size_t n_params;
    float *tok_emb;     /* (vocab, d_model) */
    tp_layer *layers;   /* n_layers views into params */
    float *final_norm;  /* (d_model) */
    float *lm_head;     /* (vocab, d_model); == tok_emb when tied */
    tp_tokenizer *tok;  /* owned; may be NULL */
    char *source;       /* path it was loaded from */
    char *source_format;/* "gguf" or "hf" */
    char *chat_template;/* may be NULL */
    struct tp_stream *stream; /* NULL, or the file a streamed model reads its weights from */
    int bf16_only;      /* tp_model_freeze_bf16: the weight matrices exist as bf16 copies only */
    int bf16_emb_only;  /* ... and the embedding too (its values were exactly bf16) */
} tp_model;

/* Validates a config (positive sizes, heads divisible by kv heads, ...). */
tp_status tp_config_validate(const tp_config *c);
/* Parameter count of a config (tied embeddings counted once). */
size_t tp_config_n_params(const tp_config *c);

/* Allocates a model of config c with zeroed weights and views set. */
tp_status tp_model_alloc(const tp_config *c, tp_model **out);
void tp_model_free(tp_model *m);
/* One tensor of a model under its Hugging Face name: rows 0 means a vector of cols elements,
 * else a (rows, cols) row-major matrix. */
typedef struct {
    char name[64];
    float *data;
    size_t rows, cols;
} tp_tensor_ref;
/* The model's tensors in HF state-dict order (embeddings; per layer input norm, q/k/v (+ their
 * biases with attn_bias), o, post-attention norm, gate/up/down; final norm; lm_head unless tied).
 * Writes at most cap entries to out (out may be NULL with cap 0) and returns the full count. */
int tp_model_tensors(const tp_model *m, tp_tensor_ref *out, int cap);
/* The tensor HF calls name ("lm_head.weight" also when tied: then it is the embedding) and its
 * element count in *n; NULL for a name the model does not have. */
float *tp_model_tensor(const tp_model *m, const char *name, size_t *n);
/* Path may be a .gguf file or an HF folder (config.json + safetensors + tokenizer.json). Before
 * reading a weight it checks that the fp32 weights fit (4 bytes a parameter + 96 MiB) in the
 * process's memory limit, and fails with TP_ERR_NOMEM naming both when they do not. */
tp_status tp_model_load(const char *path, tp_model **out);
/* The memory limit tp_model_load holds models to, in bytes: 0 (default) the memory available
 * (tp_mem_available), < 0 no check. Process-wide. */
void tp_set_mem_limit(double bytes);
tp_status tp_model_load_gguf(const char *path, tp_model **out);
tp_status tp_model_load_hf(const char *dir, tp_model **out);
/* The config of the model at path (as tp_model_load would give it) from its metadata alone: an HF
 * folder's config.json, a GGUF file's header (mapped, no tensor data read). */
tp_status tp_config_load(const char *path, tp_config *c);
tp_status tp_config_load_gguf(const char *path, tp_config *c);
/* Export. dtype for HF: "F32", "F16", "BF16"; for GGUF: a tp_ggml_type. */
tp_status tp_model_save_hf(const tp_model *m, const char *dir, const char *dtype);
/* An HF folder written for a tokenizer that tokenizer.json cannot express exactly (score-based
 * SentencePiece from a GGUF) holds tokenizer.gguf instead, which tp_model_load_hf reads. Returns 1
 * (and a note for the user in buf) when dir is such a folder. */
int tp_model_hf_tokenizer_note(const char *dir, char *buf, size_t n);
tp_status tp_model_save_gguf(const tp_model *m, const char *path, int ggml_type);

/* ---- streamed models: weights read from the file one layer at a time ----
 * tp_model_open_streamed keeps the config, tokenizer, chat template and final norm in memory and
 * the file mapped. Every m->layers[l] views one layer-sized buffer, which holds the layer last
 * made ready by tp_model_layer_ready; tok_emb and lm_head are NULL (embedding and lm_head rows
 * come from tp_model_rows, the whole lm_head from tp_model_stream_head). The weights are
 * converted to fp32 by the same code as tp_model_load, so a streamed layer is bit-identical to
 * the loaded one. tp_forward_ex without a KV cache reads every layer on the way (the same logits
 * as the loaded model, one file read per call); decoding with a KV cache, exports, tp_prune_apply
 * and training refuse a streamed model. The file pages read are dropped from the process's resident set
 * after each read (the page cache keeps them): memory stays one layer, whatever the model size. */
tp_status tp_model_open_streamed(const char *path, tp_model **out);
int tp_model_is_streamed(const tp_model *m);
/* Makes m->layers[l] hold layer l's weights: reads them for a streamed model (unless they are
 * the ones held), nothing for a loaded one. Not thread-safe. */
tp_status tp_model_layer_ready(const tp_model *m, int l);
/* Rows r0 .. r0+n-1 of the token embedding (head 0) or of the lm_head (head 1; the embedding
 * when tied) as fp32 into dst (n x d_model), for either kind of model. */
tp_status tp_model_rows(const tp_model *m, int head, size_t r0, size_t n, float *dst);
/* Streamed model: reads the whole lm_head (fp32, vocab x d_model floats) for tp_forward_final /
 * releases it. The layer buffer's memory is given back first (no layer is ready afterwards). No-op
 * on a loaded model. */
tp_status tp_model_stream_head(const tp_model *m);
void tp_model_stream_head_release(const tp_model *m);
/* The residual stream entering layer 0 as tp_model_embed gives it, for either kind of model
 * (fails on a token id outside the vocabulary). */
tp_status tp_model_embed_any(const tp_model *m, const int32_t *tokens, size_t N, float *x);
/* "F32", "F16" or "BF16": the dtype the model's weight matrices are stored in at their source
 * (an HF folder's safetensors, a GGUF's float tensors); "F32" for a quantized GGUF (its
 * dequantized values are exact only in fp32) or when the source cannot be read. */
const char *tp_model_source_dtype(const tp_model *m);

/* Parse config.json text into c. */
tp_status tp_config_from_json(const char *json, const char *path_for_errors, tp_config *c);
/* config.json text (malloc'd) that transformers loads with no custom code. */
tp_status tp_config_to_json(const tp_config *c, char **out);
/* Same, with the stored dtype named ("float32", "float16", "bfloat16"; "F32", "F16", "BF16" too). */
tp_status tp_config_to_json_dtype(const tp_config *c, const char *dtype, char **out);

/* ---- precision and backend of the matrix products (every model of the process) ----
 * Set explicitly (the CLI maps the TAPER_PRECISION / TAPER_GEMM environment variables and
 * --precision onto these; the library reads no environment).
 * "fp32" (default): plain fp32.
 * "bf16": both inputs of every weight product (projections, lm_head, their gradients) are rounded
 * to bf16 and multiplied with fp32 accumulation into fp32 results; weights, gradients, optimizer
 * state, norms, softmax, attention and losses stay fp32 ("fp32 master weights"). */
tp_status tp_set_precision(const char *name);
/* "dnnl" (oneDNN, the default when built in), "blas" (OpenBLAS) or "loops" (plain C). */
tp_status tp_set_gemm_backend(const char *name);
const char *tp_precision_name(void);
/* The name of the kernels OpenBLAS picked for this CPU ("Cooperlake", "Haswell", "Prescott", ...),
 * or NULL in a build without OpenBLAS. */
const char *tp_gemm_blas_core(void);
/* One line naming the matrix-product backend and precision in use, for logs. */
const char *tp_gemm_info(void);
/* Under bf16, keeps bf16 copies of m's weight matrices so they are not converted at every product
 * (frozen: m never changes, e.g. a teacher; otherwise they follow optimizer updates). No-op under
 * fp32. tp_model_free releases them. */
tp_status tp_model_prepare_precision(const tp_model *m, int frozen);
/* A frozen model (a teacher) under bf16: keeps the bf16 copies of its weight matrices and gives
 * the fp32 memory of those matrices back, so it takes half the memory of its fp32 weights instead
 * of 1.5 times them. The embedding goes the same way when every value of it is exactly a bf16
 * (a bf16 checkpoint); otherwise (a quantized GGUF) its fp32 rows stay, for the forward reads them.
 * The norms stay fp32. Its outputs are the ones it computed before, bit for bit (the products read
 * the bf16 copies anyway). From then on m must not change and must only run under bf16 (its
 * forward refuses fp32). No-op under fp32 precision. */
tp_status tp_model_freeze_bf16(tp_model *m);

/* ---- forward ---- */
/* Key/value cache for incremental decoding of B sequences up to cap positions. Each K/V head's
 * positions lie one after the other (decoding reads one head's keys as one stream). */
typedef struct {
    int B, cap, n_layers, kv_dim, head_dim; /* kv_dim = K/V heads * head_dim */
    int *len;           /* (B) positions filled per sequence */
    float *k, *v;       /* (n_layers, B, kv_dim / head_dim, cap, head_dim) */
} tp_kvcache;
/* Offset in k / v of (layer, sequence b, K/V head, position pos). */
static inline size_t tp_kvcache_at(const tp_kvcache *kv, int layer, int b, int head, int pos) {
    size_t heads = (size_t)(kv->kv_dim / kv->head_dim);
    return ((((size_t)layer * (size_t)kv->B + (size_t)b) * heads + (size_t)head) * (size_t)kv->cap + (size_t)pos) *
           (size_t)kv->head_dim;
}
tp_status tp_kvcache_alloc(const tp_config *c, int B, int cap, tp_kvcache **out);
void tp_kvcache_free(tp_kvcache *kv);

/* Full causal forward of B sequences of T tokens each (tokens: (B,T)), starting at
 * position 0 without a cache, or appending to cache (positions cache->len[b]...) when
 * cache != NULL. logits: (B,T,vocab), or NULL to skip the lm_head. When last_only is set,
 * logits is (B,vocab) holding only each sequence's last position. */
tp_status tp_forward(const tp_model *m, const int32_t *tokens, int B, int T,
                     tp_kvcache *cache, float *logits, int last_only);

/* The residual stream entering layer 0: the embedding rows of tokens[0..N) into x (N, d_model),
 * times sqrt(d_model) for Gemma. Token ids must be in range (the caller checks). */
void tp_model_embed(const tp_model *m, const int32_t *tokens, size_t N, float *x);

/* Observation points inside the forward pass (importance estimation, distillation losses).
 * x is row-major (B*T, width), rows ordered sequence-major (row = b*T + t). */
typedef enum {
    TP_HOOK_LAYER_IN = 0, /* (N, d_model) residual stream entering layer l */
    TP_HOOK_ATTN_NORM,    /* (N, d_model) RMSNorm output feeding attention */
    TP_HOOK_ATTN_OUT,     /* (N, n_heads*head_dim) attention output before o_proj; head h is
                             columns h*head_dim .. (h+1)*head_dim-1 */
    TP_HOOK_MLP_NORM,     /* (N, d_model) RMSNorm output feeding the MLP */
    TP_HOOK_MLP_GATE,     /* (N, d_ff) gate projection before the activation, X W_gate^T */
    TP_HOOK_MLP_UP,       /* (N, d_ff) up projection, X W_up^T */
    TP_HOOK_MLP_ACT,      /* (N, d_ff) silu(gate) * up, entering down_proj */
    TP_HOOK_LAYER_OUT,    /* (N, d_model) residual stream leaving layer l */
    TP_HOOK_FINAL_NORM,   /* (N, d_model) final RMSNorm output, layer = n_layers (all positions,
                             also when last_only is set) */
    TP_HOOK_COUNT
} tp_hook_point;

typedef void (*tp_hook_fn)(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width);

typedef struct {
    tp_hook_fn hook;                 /* NULL: no observation */
    void *user;
    const unsigned char *skip_layer; /* NULL, or n_layers flags: 1 = the layer is skipped (identity),
                                        as if removed by depth pruning */
} tp_forward_opts;

/* tp_forward with hooks and layer skipping; opts may be NULL. With a KV cache, skipped layers
 * leave their cache rows untouched. */
tp_status tp_forward_ex(const tp_model *m, const int32_t *tokens, int B, int T, tp_kvcache *cache,
                        float *logits, int last_only, const tp_forward_opts *opts);

/* One decoder layer l of the model applied in place to a residual stream x (B*T, d_model),
 * rows sequence-major, every sequence at positions 0..T-1 (no KV cache); opts->hook (if any) is
 * called at the layer's points as in tp_forward_ex, skip_layer is ignored. Running it for
 * l = 0..n_layers-1 on the token embeddings gives exactly tp_forward_ex's residual stream (the
 * same code): calibration passes keep hidden states between layers with it. */
tp_status tp_forward_layer(const tp_model *m, int l, float *x, int B, int T, const tp_forward_opts *opts);

/* After the forward's last layer: h (N x d_model) = the final RMSNorm of the residual stream x
 * (N rows), and logits (N x vocab) = h times the lm_head unless logits is NULL. The same code
 * tp_forward_ex runs, for callers that keep the residual stream themselves
 * (tp_forward_layer). A streamed model needs tp_model_stream_head first for logits. */
tp_status tp_forward_final(const tp_model *m, const float *x, size_t N, float *h, float *logits);

#endif
