/* GGUF -> tp_model: config from the {arch}.* metadata, tensors dequantised to fp32 into HF
 * layout (llama.cpp's Q/K row permutation undone for the llama architecture), tokenizer from
 * tokenizer.ggml.*. The inverse mapping lives in save.c. */
#include "taper/gguf.h"
#include "taper/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

static tp_status get_u32(const tp_gguf *g, const char *arch, const char *key, int required,
                         uint32_t dflt, int *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    if (!tp_gguf_find(g, full)) {
        if (required) return tp_fail(TP_ERR_FORMAT, "%s: metadata key %s is missing", g->path, full);
        *out = (int)dflt;
        return TP_OK;
    }
    uint32_t v;
    tp_status s = tp_gguf_get_u32(g, full, &v);
    if (s) return s;
    if (v == 0 || v > (1u << 30))
        return tp_fail(TP_ERR_FORMAT, "%s: metadata %s = %u is out of range", g->path, full, v);
    *out = (int)v;
    return TP_OK;
}

static tp_status get_f32(const tp_gguf *g, const char *arch, const char *key, float dflt, float *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    if (!tp_gguf_find(g, full)) {
        *out = dflt;
        return TP_OK;
    }
    return tp_gguf_get_f32(g, full, out);
}

static tp_status config_from_gguf(const tp_gguf *g, tp_config *c) {
    char *arch = NULL;
    tp_status s = tp_gguf_get_str(g, "general.architecture", &arch);
    if (s) return s;
    memset(c, 0, sizeof *c);
    if (strcmp(arch, "llama") == 0) c->arch = TP_ARCH_LLAMA;
    else if (strcmp(arch, "qwen2") == 0) c->arch = TP_ARCH_QWEN2;
    else {
        s = tp_fail(TP_ERR_UNSUPPORTED,
                    "%s: general.architecture = \"%s\" is not supported (llama, qwen2)", g->path, arch);
        free(arch);
        return s;
    }
    c->attn_bias = c->arch == TP_ARCH_QWEN2;
    if ((s = get_u32(g, arch, "block_count", 1, 0, &c->n_layers)) ||
        (s = get_u32(g, arch, "embedding_length", 1, 0, &c->d_model)) ||
        (s = get_u32(g, arch, "feed_forward_length", 1, 0, &c->d_ff)) ||
        (s = get_u32(g, arch, "attention.head_count", 1, 0, &c->n_heads)) ||
        (s = get_u32(g, arch, "attention.head_count_kv", 0, (uint32_t)c->n_heads, &c->n_kv_heads)) ||
        (s = get_u32(g, arch, "context_length", 0, 2048, &c->max_pos)) ||
        (s = get_f32(g, arch, "rope.freq_base", 10000.0f, &c->rope_theta)) ||
        (s = get_f32(g, arch, "attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps))) {
        free(arch);
        return s;
    }
    int hd = c->n_heads ? c->d_model / c->n_heads : 0;
    if ((s = get_u32(g, arch, "attention.key_length", 0, (uint32_t)hd, &c->head_dim))) {
        free(arch);
        return s;
    }
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (tp_gguf_find(g, key)) {
        char *type = NULL;
        if ((s = tp_gguf_get_str(g, key, &type))) { free(arch); return s; }
        int ok = strcmp(type, "none") == 0;
        if (strcmp(type, "linear") == 0) {
            c->rope_scaling = TP_ROPE_LINEAR;
            s = get_f32(g, arch, "rope.scaling.factor", 1.0f, &c->rope_factor);
            ok = s == TP_OK;
        }
        if (!ok && !s)
            s = tp_fail(TP_ERR_UNSUPPORTED, "%s: %s = \"%s\" is not supported (none, linear)",
                        g->path, key, type);
        free(type);
        if (s) { free(arch); return s; }
    }
    free(arch);
    if (tp_gguf_find_tensor(g, "rope_freqs.weight"))
        return tp_fail(TP_ERR_UNSUPPORTED,
                       "%s: tensor rope_freqs.weight (Llama-3.1-style RoPE frequency factors in GGUF) "
                       "is not supported yet; load the HF folder of this model instead", g->path);
    const tp_gguf_tensor *emb = tp_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return tp_fail(TP_ERR_FORMAT, "%s: tensor token_embd.weight is missing", g->path);
    if (emb->n_dims != 2 || emb->ne[1] > (1u << 24))
        return tp_fail(TP_ERR_FORMAT, "%s: token_embd.weight has an unexpected shape", g->path);
    c->vocab = (int)emb->ne[1];
    c->tie_embeddings = tp_gguf_find_tensor(g, "output.weight") == NULL;
    c->bos_id = c->eos_id = -1;
    uint32_t id;
    if (tp_gguf_find(g, "tokenizer.ggml.bos_token_id") &&
        tp_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id) == TP_OK && id < (uint32_t)c->vocab)
        c->bos_id = (int32_t)id;
    if (tp_gguf_find(g, "tokenizer.ggml.eos_token_id") &&
        tp_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id) == TP_OK && id < (uint32_t)c->vocab)
        c->eos_id = (int32_t)id;
    s = tp_config_validate(c);
    if (s) return tp_fail_ctx(s, "%s: ", g->path);
    return TP_OK;
}

/* Dequantises tensor name into dst, checking it holds rows x cols in HF layout
 * (ggml ne[0] = cols, ne[1] = rows; a vector has rows == 1). */
static tp_status load_tensor(const tp_gguf *g, const char *name, float *dst, size_t rows, size_t cols) {
    const tp_gguf_tensor *t = tp_gguf_find_tensor(g, name);
    if (!t) return tp_fail(TP_ERR_FORMAT, "%s: tensor %s is missing", g->path, name);
    int ok = rows == 1 ? (t->n_dims == 1 && t->ne[0] == cols)
                       : (t->n_dims == 2 && t->ne[0] == cols && t->ne[1] == rows);
    if (!ok)
        return tp_fail(TP_ERR_FORMAT,
                       "%s: tensor %s has shape [%llu, %llu] (ggml order), expected [%zu, %zu]",
                       g->path, name, (unsigned long long)t->ne[0],
                       (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1), cols, rows);
    tp_status s = tp_gguf_tensor_to_f32(t, dst);
    if (s) return tp_fail_ctx(s, "%s: tensor %s: ", g->path, name);
    return TP_OK;
}

static tp_status load_layer(const tp_gguf *g, const tp_config *c, int l, tp_layer *L, float *tmp) {
    size_t d = (size_t)c->d_model, q = (size_t)c->n_heads * c->head_dim,
           kv = (size_t)c->n_kv_heads * c->head_dim, ff = (size_t)c->d_ff;
    char name[96];
    tp_status s;
#define LOAD(suffix, dst, rows, cols)                                  \
    do {                                                               \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);           \
        if ((s = load_tensor(g, name, dst, rows, cols))) return s;     \
    } while (0)
    LOAD("attn_norm.weight", L->attn_norm, 1, d);
    LOAD("ffn_norm.weight", L->mlp_norm, 1, d);
    LOAD("attn_v.weight", L->wv, kv, d);
    LOAD("attn_output.weight", L->wo, d, q);
    LOAD("ffn_gate.weight", L->w_gate, ff, d);
    LOAD("ffn_up.weight", L->w_up, ff, d);
    LOAD("ffn_down.weight", L->w_down, d, ff);
    int permuted = c->arch != TP_ARCH_QWEN2; /* llama.cpp permutes Q/K rows for llama only */
    if (c->attn_bias) {
        LOAD("attn_q.bias", permuted ? tmp : L->bq, 1, q);
        if (permuted) tp_rope_rows_unpermute(tmp, L->bq, c->n_heads, c->head_dim, 1);
        LOAD("attn_k.bias", permuted ? tmp : L->bk, 1, kv);
        if (permuted) tp_rope_rows_unpermute(tmp, L->bk, c->n_kv_heads, c->head_dim, 1);
        LOAD("attn_v.bias", L->bv, 1, kv);
    }
    LOAD("attn_q.weight", permuted ? tmp : L->wq, q, d);
    if (permuted) tp_rope_rows_unpermute(tmp, L->wq, c->n_heads, c->head_dim, d);
    LOAD("attn_k.weight", permuted ? tmp : L->wk, kv, d);
    if (permuted) tp_rope_rows_unpermute(tmp, L->wk, c->n_kv_heads, c->head_dim, d);
#undef LOAD
    return TP_OK;
}

tp_status tp_model_load_gguf(const char *path, tp_model **out) {
    *out = NULL;
    tp_gguf *g = NULL;
    tp_status s = tp_gguf_open(path, &g);
    if (s) return s;
    tp_config c;
    tp_model *m = NULL;
    float *tmp = NULL;
    if ((s = config_from_gguf(g, &c))) goto done;
    if ((s = tp_model_alloc(&c, &m))) goto done;
    tmp = malloc((size_t)c.n_heads * c.head_dim * c.d_model * sizeof(float));
    if (!tmp) { s = tp_fail(TP_ERR_NOMEM, "out of memory"); goto done; }
    if ((s = load_tensor(g, "token_embd.weight", m->tok_emb, (size_t)c.vocab, (size_t)c.d_model))) goto done;
    if ((s = load_tensor(g, "output_norm.weight", m->final_norm, 1, (size_t)c.d_model))) goto done;
    if (!c.tie_embeddings &&
        (s = load_tensor(g, "output.weight", m->lm_head, (size_t)c.vocab, (size_t)c.d_model))) goto done;
    for (int l = 0; l < c.n_layers && !s; l++) s = load_layer(g, &c, l, &m->layers[l], tmp);
    if (s) goto done;
    if ((s = tp_tok_load_gguf(g, &m->tok))) { s = tp_fail_ctx(s, "%s: tokenizer: ", path); goto done; }
    if (tp_gguf_find(g, "tokenizer.chat_template"))
        tp_gguf_get_str(g, "tokenizer.chat_template", &m->chat_template);
    m->source = strdup(path);
    m->source_format = strdup("gguf");
done:
    free(tmp);
    tp_gguf_close(g);
    if (s) tp_model_free(m);
    else *out = m;
    return s;
}
