/* tp_model: one allocation for every parameter with named per-layer views, and the
 * dispatch of tp_model_load to the GGUF or HF loader. Config parsing is in config.c,
 * loaders in load_gguf.c / load_hf.c, writers in save.c, the forward pass in forward.c. */
#include "taper/model.h"

#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include "model_internal.h"
#include "kernels.h"

typedef struct {
    float *base; /* NULL while only counting */
    size_t off;
} cursor;

static float *take(cursor *cu, size_t n) {
    float *p = cu->base ? cu->base + cu->off : NULL;
    cu->off += n;
    return p;
}

/* Sets the views of one layer at the cursor. */
static void layout_layer(const tp_config *c, int l, tp_layer *L, cursor *cu) {
    size_t d = (size_t)c->d_model, q = (size_t)tp_config_heads(c, l) * c->head_dim,
           kv = (size_t)c->n_kv_heads * c->head_dim, ff = (size_t)tp_config_ff(c, l);
    L->attn_norm = take(cu, d);
    L->wq = take(cu, q * d);
    L->wk = take(cu, kv * d);
    L->wv = take(cu, kv * d);
    L->bq = c->attn_bias ? take(cu, q) : NULL;
    L->bk = c->attn_bias ? take(cu, kv) : NULL;
    L->bv = c->attn_bias ? take(cu, kv) : NULL;
    L->wo = take(cu, d * q);
    L->mlp_norm = take(cu, d);
    L->w_gate = take(cu, ff * d);
    L->w_up = take(cu, ff * d);
    L->w_down = take(cu, d * ff);
    L->q_norm = c->qk_norm ? take(cu, (size_t)c->head_dim) : NULL;
    L->k_norm = c->qk_norm ? take(cu, (size_t)c->head_dim) : NULL;
    L->attn_post_norm = c->sandwich_norm ? take(cu, d) : NULL;
    L->mlp_post_norm = c->sandwich_norm ? take(cu, d) : NULL;
}

/* Sets every view in a fixed order (embeddings, layers, final norm, lm_head) and returns
 * the number of floats used; with base == NULL the views are NULL and only the count matters. */
static size_t layout(tp_model *m, float *base) {
    const tp_config *c = &m->cfg;
    size_t d = (size_t)c->d_model, V = (size_t)c->vocab;
    cursor cu = {base, 0};
    m->tok_emb = take(&cu, V * d);
    for (int l = 0; l < c->n_layers; l++) layout_layer(c, l, &m->layers[l], &cu);
    m->final_norm = take(&cu, d);
    m->lm_head = c->tie_embeddings ? m->tok_emb : take(&cu, V * d);
    return cu.off;
}

/* The streamed layout: one layer buffer that every layer's views share, then the final norm; no
 * embedding or lm_head. */
static size_t layout_streamed(tp_model *m, float *base) {
    cursor cu = {base, 0};
    tp_layer slot;
    tp_config widest = m->cfg; /* the slot holds the widest layer (d_ff, n_heads) */
    widest.hetero = 0;
    memset(widest.layer_ff, 0, sizeof widest.layer_ff);
    memset(widest.layer_heads, 0, sizeof widest.layer_heads);
    layout_layer(&widest, 0, &slot, &cu);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        m->layers[l] = slot;
        if (base && m->cfg.hetero) tp_model_layout_slot(m, l);
    }
    m->final_norm = take(&cu, (size_t)m->cfg.d_model);
    m->tok_emb = m->lm_head = NULL;
    return cu.off;
}

void tp_model_layout_slot(tp_model *m, int l) {
    cursor cu = {m->params, 0};
    layout_layer(&m->cfg, l, &m->layers[l], &cu);
}

static tp_status alloc_with(const tp_config *c, size_t (*lay)(tp_model *, float *), tp_model **out) {
    *out = NULL;
    tp_status s = tp_config_validate(c);
    if (s) return s;
    tp_model *m = calloc(1, sizeof *m);
    if (!m) return tp_fail(TP_ERR_NOMEM, "out of memory");
    m->cfg = *c;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        free(m);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    size_t n = lay(m, NULL);
    m->n_params = n;
    m->params = calloc(n, sizeof(float));
    if (!m->params) {
        tp_model_free(m);
        return tp_fail(TP_ERR_NOMEM, "cannot allocate %zu parameters (%.1f GiB)", n,
                       (double)n * 4 / (1u << 30));
    }
    lay(m, m->params);
    *out = m;
    return TP_OK;
}

tp_status tp_model_alloc(const tp_config *c, tp_model **out) { return alloc_with(c, layout, out); }

tp_status tp_model_alloc_streamed(const tp_config *c, tp_model **out) { return alloc_with(c, layout_streamed, out); }

void tp_model_free(tp_model *m) {
    if (!m) return;
    if (m->params) tp_gemm_bf16_forget_range(m->params, m->n_params);
    tp_stream_close(m);
    free(m->params);
    free(m->layers);
    tp_tok_free(m->tok);
    free(m->source);
    free(m->source_format);
    free(m->chat_template);
    free(m);
}

static void put_ref(tp_tensor_ref *out, int cap, int *n, const char *name, float *data, size_t rows, size_t cols) {
    if (*n < cap) {
        tp_tensor_ref *r = &out[*n];
        snprintf(r->name, sizeof r->name, "%s", name);
        r->data = data;
        r->rows = rows;
        r->cols = cols;
    }
    (*n)++;
}

int tp_model_tensors(const tp_model *m, tp_tensor_ref *out, int cap) {
    const tp_config *c = &m->cfg;
    size_t d = (size_t)c->d_model, kv = (size_t)c->n_kv_heads * c->head_dim, V = (size_t)c->vocab;
    int n = 0;
    char name[64];
    put_ref(out, cap, &n, "model.embed_tokens.weight", m->tok_emb, V, d);
    for (int l = 0; l < c->n_layers; l++) {
        const tp_layer *L = &m->layers[l];
        size_t q = (size_t)tp_config_heads(c, l) * c->head_dim, ff = (size_t)tp_config_ff(c, l);
        /* Gemma 3 names its four norms input_layernorm, post_attention_layernorm (on the attention
         * output), pre_feedforward_layernorm and post_feedforward_layernorm; Llama's
         * post_attention_layernorm is the norm before the MLP. */
        int sw = c->sandwich_norm;
        size_t hd = (size_t)c->head_dim;
        const char *const fields[] = {"input_layernorm.weight", "self_attn.q_proj.weight",
                                      "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                      "self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                      "self_attn.v_proj.bias", "self_attn.q_norm.weight",
                                      "self_attn.k_norm.weight", "self_attn.o_proj.weight",
                                      "post_attention_layernorm.weight",
                                      sw ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight",
                                      "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                                      "post_feedforward_layernorm.weight"};
        float *const data[] = {L->attn_norm, L->wq, L->wk, L->wv, L->bq, L->bk, L->bv, L->q_norm, L->k_norm,
                               L->wo, L->attn_post_norm, L->mlp_norm, L->w_gate, L->w_up, L->w_down,
                               L->mlp_post_norm};
        const size_t rows[] = {0, q, kv, kv, 0, 0, 0, 0, 0, d, 0, 0, ff, ff, d, 0};
        const size_t cols[] = {d, d, d, d, q, kv, kv, hd, hd, q, d, d, d, d, ff, d};
        for (int f = 0; f < (int)(sizeof data / sizeof data[0]); f++) {
            if (!data[f]) continue; /* tensors the family does not have */
            snprintf(name, sizeof name, "model.layers.%d.%s", l, fields[f]);
            put_ref(out, cap, &n, name, data[f], rows[f], cols[f]);
        }
    }
    put_ref(out, cap, &n, "model.norm.weight", m->final_norm, 0, d);
    if (!c->tie_embeddings) put_ref(out, cap, &n, "lm_head.weight", m->lm_head, V, d);
    return n;
}

float *tp_model_tensor(const tp_model *m, const char *name, size_t *n) {
    *n = 0;
    if (!strcmp(name, "lm_head.weight")) {
        *n = (size_t)m->cfg.vocab * (size_t)m->cfg.d_model;
        return m->lm_head;
    }
    int count = tp_model_tensors(m, NULL, 0);
    tp_tensor_ref *refs = malloc((size_t)count * sizeof *refs);
    if (!refs) return NULL;
    tp_model_tensors(m, refs, count);
    float *p = NULL;
    for (int i = 0; i < count && !p; i++)
        if (!strcmp(refs[i].name, name)) {
            p = refs[i].data;
            *n = refs[i].rows ? refs[i].rows * refs[i].cols : refs[i].cols;
        }
    free(refs);
    return p;
}

void tp_rope_rows_unpermute(const float *gguf_rows, float *hf_rows, int n_heads, int head_dim, size_t cols) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int j = 0; j < half; j++)
            for (int t = 0; t < 2; t++) {
                size_t src = (size_t)h * head_dim + 2 * (size_t)j + (size_t)t;
                size_t dst = (size_t)h * head_dim + (size_t)t * half + (size_t)j;
                memcpy(hf_rows + dst * cols, gguf_rows + src * cols, cols * sizeof(float));
            }
}

void tp_rope_rows_permute(const float *hf_rows, float *gguf_rows, int n_heads, int head_dim, size_t cols) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int j = 0; j < half; j++)
            for (int t = 0; t < 2; t++) {
                size_t dst = (size_t)h * head_dim + 2 * (size_t)j + (size_t)t;
                size_t src = (size_t)h * head_dim + (size_t)t * half + (size_t)j;
                memcpy(gguf_rows + dst * cols, hf_rows + src * cols, cols * sizeof(float));
            }
}

tp_status tp_set_precision(const char *name) {
    if (!name || !strcmp(name, "fp32") || !strcmp(name, "f32"))
        tp_gemm_set_precision(TP_PREC_FP32);
    else if (!strcmp(name, "bf16"))
        tp_gemm_set_precision(TP_PREC_BF16);
    else
        return tp_fail(TP_ERR_ARG, "precision '%s': expected fp32 or bf16", name);
    return TP_OK;
}

tp_status tp_set_gemm_backend(const char *name) {
    int b = !name ? -1
          : !strcmp(name, "dnnl") || !strcmp(name, "onednn") ? TP_GEMM_DNNL
          : !strcmp(name, "blas") || !strcmp(name, "openblas") ? TP_GEMM_BLAS
          : !strcmp(name, "loops") || !strcmp(name, "naive") ? TP_GEMM_LOOPS : -1;
    if (b < 0) return tp_fail(TP_ERR_ARG, "matrix-product backend '%s': expected dnnl, blas or loops", name ? name : "");
    if (tp_gemm_set_backend(b))
        return tp_fail(TP_ERR_UNSUPPORTED, "matrix-product backend '%s' is not built in (%s)", name, tp_gemm_describe());
    return TP_OK;
}

const char *tp_precision_name(void) {
    (void)tp_gemm_backend(); /* resolves TAPER_PRECISION */
    return tp_gemm_precision() == TP_PREC_BF16 ? "bf16" : "fp32";
}

tp_status tp_model_prepare_precision(const tp_model *m, int frozen) {
    (void)tp_gemm_backend();
    if (tp_gemm_precision() != TP_PREC_BF16 || !m) return TP_OK;
    const tp_config *c = &m->cfg;
    size_t d = (size_t)c->d_model, kv = (size_t)c->n_kv_heads * c->head_dim;
    int bad = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const tp_layer *L = &m->layers[l];
        size_t q = (size_t)tp_config_heads(c, l) * c->head_dim, ff = (size_t)tp_config_ff(c, l);
        bad |= tp_gemm_bf16_register(L->wq, q * d, frozen) | tp_gemm_bf16_register(L->wk, kv * d, frozen) |
               tp_gemm_bf16_register(L->wv, kv * d, frozen) | tp_gemm_bf16_register(L->wo, d * q, frozen) |
               tp_gemm_bf16_register(L->w_gate, ff * d, frozen) | tp_gemm_bf16_register(L->w_up, ff * d, frozen) |
               tp_gemm_bf16_register(L->w_down, d * ff, frozen);
    }
    bad |= tp_gemm_bf16_register(m->lm_head, (size_t)c->vocab * d, frozen);
    return bad ? tp_fail(TP_ERR_NOMEM, "out of memory for the bf16 copies of the weights") : TP_OK;
}

tp_status tp_model_freeze_bf16(tp_model *m) {
    (void)tp_gemm_backend();
    if (tp_gemm_precision() != TP_PREC_BF16 || !m || m->bf16_only) return TP_OK;
    if (m->stream) return tp_fail(TP_ERR_ARG, "a streamed model cannot be frozen in bf16");
    const tp_config *c = &m->cfg;
    size_t d = (size_t)c->d_model, kv = (size_t)c->n_kv_heads * c->head_dim;
    /* matrix by matrix: registered (converted), then its fp32 pages dropped, so the peak is the
     * fp32 weights plus one matrix */
    for (int l = 0; l < c->n_layers; l++) {
        const tp_layer *L = &m->layers[l];
        size_t q = (size_t)tp_config_heads(c, l) * c->head_dim, ff = (size_t)tp_config_ff(c, l);
        float *w[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        size_t n[] = {q * d, kv * d, kv * d, d * q, ff * d, ff * d, d * ff};
        for (int k = 0; k < 7; k++) {
            if (tp_gemm_bf16_register(w[k], n[k], 1))
                return tp_fail(TP_ERR_NOMEM, "out of memory for the bf16 copies of the weights");
            tp_mem_discard(w[k], n[k] * sizeof(float));
        }
    }
    size_t vd = (size_t)c->vocab * d;
    if (tp_gemm_bf16_register(m->lm_head, vd, 1))
        return tp_fail(TP_ERR_NOMEM, "out of memory for the bf16 copies of the weights");
    if (!c->tie_embeddings) tp_mem_discard(m->lm_head, vd * sizeof(float));
    /* the embedding's rows are read as they are: only a bf16-exact embedding can lose its fp32 */
    int exact = 1;
    for (size_t i = 0; i < vd && exact; i++) exact = tp_bf16_to_f32(tp_f32_to_bf16(m->tok_emb[i])) == m->tok_emb[i];
    if (exact && (c->tie_embeddings || !tp_gemm_bf16_register(m->tok_emb, vd, 1))) {
        tp_mem_discard(m->tok_emb, vd * sizeof(float));
        m->bf16_emb_only = 1;
    }
    m->bf16_only = 1;
    return TP_OK;
}

const char *tp_gemm_info(void) { return tp_gemm_describe(); }
