/* Streamed models: the weights stay in the mapped file (an HF folder's safetensors or a GGUF) and
 * are converted to fp32 one layer at a time, into one buffer that every layer's views share, by
 * the loaders' own code (load_hf.c, load_gguf.c), so a streamed layer holds the same bits as a
 * loaded one. After each read the file pages are dropped from the resident set (MADV_DONTNEED on
 * a read-only private mapping: the page cache keeps them, the process's RSS does not), so the
 * memory of a streamed model is one layer, the final norm and what its caller allocates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model_internal.h"
#include "taper/util.h"
#include "core/internal.h"
#include "kernels.h"

/* Every mapping of the source, dropped whole once it is open: the tokenizer's metadata pages (the
 * tensors' pages go as each is read, in the loaders). */
static void release_all(const struct tp_stream *ms) {
    if (ms->st)
        for (int i = 0; i < ms->st->n_shards; i++) tp_mmap_release(ms->st->maps[i].data, ms->st->maps[i].size);
    if (ms->g) tp_mmap_release(ms->g->map.data, ms->g->map.size);
}

void tp_stream_close(tp_model *m) {
    struct tp_stream *ms = m->stream;
    if (!ms) return;
    tp_st_close(ms->st);
    tp_gguf_close(ms->g);
    free(ms->tmp);
    if (ms->head) {
        tp_gemm_bf16_forget_range(ms->head, (size_t)m->cfg.vocab * (size_t)m->cfg.d_model);
        free(ms->head);
    }
    free(ms);
    m->stream = NULL;
}

int tp_model_is_streamed(const tp_model *m) { return m && m->stream; }

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

tp_status tp_model_open_streamed(const char *path, tp_model **out) {
    *out = NULL;
    tp_config c;
    tp_status s = tp_config_load(path, &c);
    if (s) return s;
    /* the tokenizer and chat template as tp_model_load reads them, from a model with no weights */
    struct tp_stream *ms = calloc(1, sizeof *ms);
    if (!ms) return tp_fail(TP_ERR_NOMEM, "out of memory");
    ms->loaded = -1;
    tp_model *m = NULL;
    int hf = is_dir(path);
    if (hf) s = tp_st_open(path, &ms->st);
    else s = tp_gguf_open(path, &ms->g);
    if (!s) s = tp_model_alloc_streamed(&c, &m);
    if (s) {
        tp_st_close(ms->st);
        tp_gguf_close(ms->g);
        free(ms);
        return s;
    }
    m->stream = ms;
    if (hf) s = tp_hf_load_prefix(ms->st, path, m, "model.norm.weight");
    else {
        s = tp_gguf_load_tensor(ms->g, "output_norm.weight", m->final_norm, 1, (size_t)c.d_model);
        if (!s && c.norm_plus_one)
            for (int i = 0; i < c.d_model; i++) m->final_norm[i] -= 1.0f;
        if (!s && !(ms->tmp = malloc((size_t)c.n_heads * c.head_dim * c.d_model * sizeof(float))))
            s = tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    if (!s) s = hf ? tp_hf_load_meta(path, m) : tp_gguf_load_meta(ms->g, path, m);
    release_all(ms);
    if (s) {
        tp_model_free(m);
        return s;
    }
    *out = m;
    return TP_OK;
}

tp_status tp_model_layer_ready(const tp_model *m, int l) {
    struct tp_stream *ms = m->stream;
    if (l < 0 || l >= m->cfg.n_layers)
        return tp_fail(TP_ERR_ARG, "layer %d is outside the model's %d layers", l, m->cfg.n_layers);
    if (!ms || ms->loaded == l) return TP_OK;
    ms->loaded = -1;
    tp_status s;
    if (ms->st) {
        char prefix[48];
        snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
        s = tp_hf_load_prefix(ms->st, m->source, m, prefix);
    } else
        s = tp_gguf_load_layer(ms->g, &m->cfg, l, &m->layers[l], ms->tmp);
    if (s) return s;
    tp_gemm_bf16_forget_range(m->params, m->n_params); /* the buffer's bf16 copies, if any, are stale */
    ms->loaded = l;
    return TP_OK;
}

tp_status tp_model_rows(const tp_model *m, int head, size_t r0, size_t n, float *dst) {
    size_t d = (size_t)m->cfg.d_model, V = (size_t)m->cfg.vocab;
    if (r0 > V || n > V - r0) return tp_fail(TP_ERR_ARG, "rows %zu..%zu are outside the vocabulary (%zu)", r0, r0 + n, V);
    const struct tp_stream *ms = m->stream;
    if (!ms) {
        memcpy(dst, (head ? m->lm_head : m->tok_emb) + r0 * d, n * d * sizeof(float));
        return TP_OK;
    }
    int tied = m->cfg.tie_embeddings;
    tp_status s;
    if (ms->st) {
        const char *name = head && !tied ? "lm_head.weight" : "model.embed_tokens.weight";
        const tp_st_tensor *t = tp_st_find(ms->st, name);
        if (!t || t->n_dims != 2 || t->shape[0] != V || t->shape[1] != d)
            return tp_fail(TP_ERR_FORMAT, "%s: tensor %s is missing or not [%zu, %zu]", m->source, name, V, d);
        tp_st_tensor part = *t;
        size_t es = t->nbytes / (size_t)t->n_elem;
        part.data = t->data + r0 * d * es;
        part.n_elem = n * d;
        part.nbytes = n * d * es;
        s = tp_st_to_f32(&part, dst);
        tp_mmap_release(part.data, part.nbytes);
    } else {
        const char *name = head && !tied ? "output.weight" : "token_embd.weight";
        const tp_gguf_tensor *t = tp_gguf_find_tensor(ms->g, name);
        if (!t || t->n_dims != 2 || t->ne[0] != d || t->ne[1] != V)
            return tp_fail(TP_ERR_FORMAT, "%s: tensor %s is missing or not [%zu, %zu] (ggml order)", m->source, name,
                           d, V);
        tp_gguf_tensor part = *t;
        size_t row = t->nbytes / (size_t)V;
        part.data = t->data + r0 * row;
        part.ne[1] = n;
        part.n_elem = n * d;
        part.nbytes = n * row;
        s = tp_gguf_tensor_to_f32(&part, dst);
        tp_mmap_release(part.data, part.nbytes);
    }
    return s;
}

tp_status tp_model_stream_head(const tp_model *m) {
    struct tp_stream *ms = m->stream;
    if (!ms || ms->head) return TP_OK;
    /* the lm_head and a layer are never needed at once: the layer buffer's memory goes back (the
     * final norm after it stays) and no layer is ready until the next read */
    tp_mem_discard(m->params, (size_t)((const char *)m->final_norm - (const char *)m->params));
    ms->loaded = -1;
    size_t V = (size_t)m->cfg.vocab, d = (size_t)m->cfg.d_model, n;
    float *head = NULL;
    if (tp_mul_overflow(V, d, &n) || !(head = malloc(n * sizeof(float))))
        return tp_fail(TP_ERR_NOMEM, "out of memory for the lm_head (%zu x %zu floats)", V, d);
    /* in slices, so that the mapped pages never pile up */
    size_t step = ((size_t)64 << 20) / (d * 4) + 1;
    tp_status s = TP_OK;
    for (size_t r = 0; r < V && !s; r += step) s = tp_model_rows(m, 1, r, V - r < step ? V - r : step, head + r * d);
    if (s) {
        free(head);
        return s;
    }
    ms->head = head;
    return TP_OK;
}

void tp_model_stream_head_release(const tp_model *m) {
    struct tp_stream *ms = m->stream;
    if (!ms || !ms->head) return;
    tp_gemm_bf16_forget_range(ms->head, (size_t)m->cfg.vocab * (size_t)m->cfg.d_model);
    free(ms->head);
    ms->head = NULL;
}

tp_status tp_model_embed_any(const tp_model *m, const int32_t *tokens, size_t N, float *x) {
    size_t d = (size_t)m->cfg.d_model;
    for (size_t i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab)
            return tp_fail(TP_ERR_ARG, "token id %d at index %zu is outside the vocabulary (0..%d)", tokens[i], i,
                           m->cfg.vocab - 1);
    if (!m->stream) {
        tp_model_embed(m, tokens, N, x);
        return TP_OK;
    }
    for (size_t i = 0; i < N; i++) {
        tp_status s = tp_model_rows(m, 0, (size_t)tokens[i], 1, x + i * d);
        if (s) return s;
    }
    if (m->cfg.embed_scale) { /* as tp_model_embed */
        float es = tp_embed_scale(&m->cfg);
        for (size_t i = 0; i < N * d; i++) x[i] *= es;
    }
    return TP_OK;
}

const char *tp_model_source_dtype(const tp_model *m) {
    const char *dt = "F32";
    if (!m || !m->source) return dt;
    tp_safetensors *st = m->stream ? m->stream->st : NULL;
    tp_gguf *g = m->stream ? m->stream->g : NULL;
    int own = !m->stream, hf = m->source_format && !strcmp(m->source_format, "hf");
    if (own) {
        if (hf ? tp_st_open(m->source, &st) : tp_gguf_open(m->source, &g)) st = NULL, g = NULL;
        tp_clear_error();
    }
    if (st) {
        const tp_st_tensor *t = tp_st_find(st, "model.embed_tokens.weight");
        if (t && t->dtype == TP_ST_BF16) dt = "BF16";
        else if (t && t->dtype == TP_ST_F16) dt = "F16";
    } else if (g) {
        const tp_gguf_tensor *t = tp_gguf_find_tensor(g, "blk.0.ffn_up.weight");
        if (t && t->type == TP_GGML_BF16) dt = "BF16";
        else if (t && t->type == TP_GGML_F16) dt = "F16";
    }
    if (own) {
        tp_st_close(st);
        tp_gguf_close(g);
    }
    return dt;
}
