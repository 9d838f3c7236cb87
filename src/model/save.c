/* tp_model -> HF folder (config.json, generation_config.json, model.safetensors, tokenizer files)
 * and -> GGUF (llama.cpp's names and metadata keys, Q/K rows permuted back to its layout). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_internal.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/safetensors.h"
#include "taper/util.h"
#include "core/internal.h"

static tp_status make_dir(const char *dir) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return tp_fail(TP_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return tp_fail(TP_ERR_IO, "%s: not a directory", dir);
    return TP_OK;
}

static tp_status write_text(const char *dir, const char *name, const char *text) {
    char *p = tp_path_join(dir, name);
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = tp_write_file_atomic(p, text, strlen(text));
    free(p);
    return s;
}

static tp_status write_generation_config(const tp_model *m, const char *dir) {
    cJSON *j = cJSON_CreateObject();
    int ok = j != NULL;
    if (ok && m->cfg.bos_id >= 0) ok = cJSON_AddNumberToObject(j, "bos_token_id", m->cfg.bos_id) != NULL;
    if (ok && m->cfg.eos_id >= 0) ok = cJSON_AddNumberToObject(j, "eos_token_id", m->cfg.eos_id) != NULL;
    char *text = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!text) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = write_text(dir, "generation_config.json", text);
    free(text);
    return s;
}

/* Adds the chat template to the tokenizer_config.json the tokenizer wrote. */
static tp_status add_chat_template(const tp_model *m, const char *dir) {
    if (!m->chat_template) return TP_OK;
    char *path = tp_path_join(dir, "tokenizer_config.json"), *text = NULL;
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    cJSON *j = NULL;
    tp_status rs = tp_read_file(path, &text, NULL);
    if (rs == TP_ERR_NOMEM) {
        free(path);
        return rs;
    }
    if (!rs) j = cJSON_Parse(text);
    /* a file that does not parse is replaced; one that does but ran out of memory is not */
    int ok = j || !text || !tp_json_valid(text, strlen(text));
    tp_clear_error();
    if (ok && !j) ok = (j = cJSON_CreateObject()) != NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(j, "chat_template");
    ok = ok && cJSON_AddStringToObject(j, "chat_template", m->chat_template) != NULL;
    char *out = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    tp_status s = out ? tp_write_file_atomic(path, out, strlen(out)) : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(out);
    free(text);
    free(path);
    return s;
}

/* The tokenizer of an HF folder: tokenizer.json when it can say the tokenizer exactly; otherwise
 * (llama.cpp's score-based SentencePiece, Gemma 4's newline rule: tokenizer.json's BPE merges by
 * rank) the GGUF tokenizer keys alone in tokenizer.gguf, which tp_model_load_hf reads back exactly.
 * transformers users then take the tokenizer of the source checkpoint (tp_model_hf_tokenizer_note).
 * Whichever is written, a stale file of the other kind is removed. */
static tp_status save_tokenizer(const tp_tokenizer *tok, const char *dir) {
    char *json = tp_path_join(dir, "tokenizer.json"), *gg = tp_path_join(dir, "tokenizer.gguf");
    tp_status s = json && gg ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s) {
        s = tp_tok_save_hf(tok, dir);
        if (!s) unlink(gg);
        else if (s == TP_ERR_UNSUPPORTED) {
            tp_clear_error();
            unlink(json);
            tp_gguf_writer *w = NULL;
            s = tp_gguf_writer_new(&w);
            if (!s) s = tp_tok_to_gguf(tok, w);
            if (!s) s = tp_gguf_write(w, gg);
            tp_gguf_writer_free(w);
            if (s) s = tp_fail_ctx(s, "%s: ", gg);
        }
    }
    free(json);
    free(gg);
    return s;
}

int tp_model_hf_tokenizer_note(const char *dir, char *buf, size_t n) {
    char *gg = tp_path_join(dir, "tokenizer.gguf");
    int has = gg && access(gg, R_OK) == 0;
    if (has && buf && n)
        snprintf(buf, n, "%s holds no tokenizer.json: tokenizer.json cannot express this tokenizer exactly (its BPE "
                 "merges by rank; this one merges by piece score, as llama.cpp does), so taper wrote tokenizer.gguf, "
                 "which taper reads; for transformers, copy the source model's tokenizer files", dir);
    free(gg);
    return has;
}

/* A streamed model holds one layer at a time: whole-model writers refuse it. */
static tp_status not_streamed(const tp_model *m, const char *what) {
    if (!m->stream && m->tok_emb) return TP_OK;
    return tp_fail(TP_ERR_UNSUPPORTED, "%s: %s is streamed (weights read a layer at a time); export it through the "
                   "streamed pruning path, or load it", what, m->source ? m->source : "the model");
}

typedef struct {
    tp_tensor_fill_fn fill;
    void *user;
    int idx;
} fill_closure;

static tp_status fill_one(void *user, size_t e0, size_t n, float *dst) {
    const fill_closure *c = user;
    return c->fill(c->user, c->idx, e0, n, dst);
}

/* The HF folder of m, the tensor values from m's views, or (fill != NULL) from fill. */
static tp_status save_hf(const tp_model *m, const char *dir, const char *dtype, tp_tensor_fill_fn fill, void *user) {
    const tp_config *c = &m->cfg;
    tp_st_dtype dt;
    if (!dtype || strcmp(dtype, "F32") == 0) dt = TP_ST_F32;
    else if (strcmp(dtype, "F16") == 0) dt = TP_ST_F16;
    else if (strcmp(dtype, "BF16") == 0) dt = TP_ST_BF16;
    else return tp_fail(TP_ERR_ARG, "HF export: dtype \"%s\" is not one of F32, F16, BF16", dtype);
    if (c->hetero)
        return tp_fail(TP_ERR_UNSUPPORTED, "HF export: this model has per-layer widths (MLP width and query heads "
                       "differ between layers), which transformers' %s cannot express; export it as GGUF "
                       "(--to gguf), which llama.cpp runs", c->arch == TP_ARCH_GEMMA3 ? "Gemma3ForCausalLM"
                       : c->arch == TP_ARCH_QWEN2 ? "Qwen2ForCausalLM" : c->arch == TP_ARCH_QWEN3
                       ? "Qwen3ForCausalLM" : "LlamaForCausalLM");
    tp_status s = make_dir(dir);
    if (s) return s;
    char *cfg = NULL;
    if ((s = tp_config_to_json_dtype(c, dtype ? dtype : "F32", &cfg))) return s;
    s = write_text(dir, "config.json", cfg);
    free(cfg);
    if (s || (s = write_generation_config(m, dir))) return s;

    tp_st_writer *w = NULL;
    if ((s = tp_st_writer_new(&w))) return s;
    int n_t = tp_model_tensors(m, NULL, 0);
    tp_tensor_ref *refs = malloc((size_t)n_t * sizeof *refs);
    fill_closure *cl = fill ? malloc((size_t)n_t * sizeof *cl) : NULL;
    if (!refs || (fill && !cl)) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    else tp_model_tensors(m, refs, n_t);
    for (int i = 0; !s && i < n_t; i++) {
        uint64_t shape[2] = {refs[i].rows ? refs[i].rows : refs[i].cols, refs[i].cols};
        if (fill) {
            cl[i] = (fill_closure){fill, user, i};
            s = tp_st_writer_add_fill(w, refs[i].name, dt, refs[i].rows ? 2 : 1, shape, fill_one, &cl[i]);
        } else
            s = tp_st_writer_add(w, refs[i].name, dt, refs[i].rows ? 2 : 1, shape, refs[i].data);
    }
    free(refs);
    char *st_path = tp_path_join(dir, "model.safetensors");
    if (!s) s = st_path ? tp_st_write(w, st_path) : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(st_path);
    free(cl);
    tp_st_writer_free(w);
    if (s) return s;
    if (m->tok) {
        if ((s = save_tokenizer(m->tok, dir))) return s;
        if ((s = add_chat_template(m, dir))) return s;
    }
    return TP_OK;
}

tp_status tp_model_save_hf(const tp_model *m, const char *dir, const char *dtype) {
    tp_status s = not_streamed(m, "HF export");
    return s ? s : save_hf(m, dir, dtype, NULL, NULL);
}

tp_status tp_model_save_hf_fill(const tp_model *m, const char *dir, const char *dtype, tp_tensor_fill_fn fill,
                                void *user) {
    if (!fill) return tp_fail(TP_ERR_ARG, "HF export: no fill function");
    return save_hf(m, dir, dtype, fill, user);
}

/* ---- GGUF ---- */

static int ftype_of(tp_ggml_type t) {
    switch (t) {
    case TP_GGML_F32: return 0;
    case TP_GGML_F16: return 1;
    case TP_GGML_Q8_0: return 7;
    case TP_GGML_BF16: return 32;
    default: return -1;
    }
}

/* Matrices whose rows are not a multiple of the block size cannot be block-quantised: F16. */
static tp_ggml_type matrix_type(tp_ggml_type want, uint64_t row) {
    size_t bs = tp_ggml_block_size(want);
    return bs > 1 && row % bs ? TP_GGML_F16 : want;
}

static tp_status add_t(tp_gguf_writer *w, const char *name, const float *data, uint64_t rows, uint64_t cols,
                       tp_ggml_type t) {
    uint64_t ne[2] = {cols, rows};
    if (rows == 0) return tp_gguf_add_tensor_f32(w, name, 1, ne, data, TP_GGML_F32); /* vectors stay F32 */
    return tp_gguf_add_tensor_f32(w, name, 2, ne, data, matrix_type(t, cols));
}

static tp_status gguf_metadata(const tp_model *m, tp_gguf_writer *w, const char *arch, tp_ggml_type t) {
    const tp_config *c = &m->cfg;
    char k[128];
    tp_status s = TP_OK;
#define U32(key, val)                                               \
    do {                                                            \
        snprintf(k, sizeof k, "%s.%s", arch, key);                  \
        if (!s) s = tp_gguf_set_u32(w, k, (uint32_t)(val));         \
    } while (0)
    if (!s) s = tp_gguf_set_str(w, "general.architecture", arch);
    if (!s) s = tp_gguf_set_str(w, "general.name", "taper export");
    if (!s) s = tp_gguf_set_u32(w, "general.file_type", (uint32_t)ftype_of(t));
    U32("block_count", c->n_layers);
    /* llama.cpp's llama / qwen2 / qwen3 graphs apply no sliding window: the context the file
     * states is cut to the window, inside which full attention and the window agree */
    int ctx = c->max_pos;
    if (c->arch != TP_ARCH_GEMMA3 && c->sliding_window > 0 && c->sliding_window < ctx) ctx = c->sliding_window;
    U32("context_length", ctx);
    U32("embedding_length", c->d_model);
    if (c->hetero) { /* per-layer arrays, as llama.cpp reads them (get_key_or_arr) */
        snprintf(k, sizeof k, "%s.feed_forward_length", arch);
        if (!s) s = tp_gguf_set_arr(w, k, TP_GGUF_INT32, c->layer_ff, (uint64_t)c->n_layers);
        snprintf(k, sizeof k, "%s.attention.head_count", arch);
        if (!s) s = tp_gguf_set_arr(w, k, TP_GGUF_INT32, c->layer_heads, (uint64_t)c->n_layers);
    } else {
        U32("feed_forward_length", c->d_ff);
        U32("attention.head_count", c->n_heads);
    }
    U32("attention.head_count_kv", c->n_kv_heads);
    U32("attention.key_length", c->head_dim);
    U32("attention.value_length", c->head_dim);
    U32("rope.dimension_count", c->head_dim);
    U32("vocab_size", c->vocab);
#undef U32
    snprintf(k, sizeof k, "%s.rope.freq_base", arch);
    if (!s) s = tp_gguf_set_f32(w, k, c->rope_theta);
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", arch);
    if (!s) s = tp_gguf_set_f32(w, k, c->norm_eps);
    if (c->rope_scaling == TP_ROPE_LINEAR) {
        snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
        if (!s) s = tp_gguf_set_str(w, k, "linear");
        snprintf(k, sizeof k, "%s.rope.scaling.factor", arch);
        if (!s) s = tp_gguf_set_f32(w, k, c->rope_factor);
    }
    if (c->arch == TP_ARCH_GEMMA3) {
        if (c->sliding_window > 0) {
            snprintf(k, sizeof k, "%s.attention.sliding_window", arch);
            if (!s) s = tp_gguf_set_u32(w, k, (uint32_t)c->sliding_window);
            /* the per-layer flags, as llama.cpp's converter writes them for Gemma 3 variants */
            uint8_t *flags = malloc((size_t)c->n_layers);
            if (!flags) return tp_fail(TP_ERR_NOMEM, "out of memory");
            for (int l = 0; l < c->n_layers; l++) flags[l] = (uint8_t)tp_config_layer_sliding(c, l);
            snprintf(k, sizeof k, "%s.attention.sliding_window_pattern", arch);
            if (!s) s = tp_gguf_set_arr(w, k, TP_GGUF_BOOL, flags, (uint64_t)c->n_layers);
            free(flags);
            snprintf(k, sizeof k, "%s.rope.freq_base_swa", arch);
            if (!s) s = tp_gguf_set_f32(w, k, c->rope_local_theta);
        }
    }
    if (!s && m->tok) s = tp_tok_to_gguf(m->tok, w);
    if (!s && m->chat_template) s = tp_gguf_set_str(w, "tokenizer.chat_template", m->chat_template);
    return s;
}

tp_status tp_model_save_gguf(const tp_model *m, const char *path, int ggml_type) {
    const tp_config *c = &m->cfg;
    tp_status s0 = not_streamed(m, "GGUF export");
    if (s0) return s0;
    tp_ggml_type t = (tp_ggml_type)ggml_type;
    if (ftype_of(t) < 0)
        return tp_fail(TP_ERR_ARG, "GGUF export: type %s is not one of F32, F16, BF16, Q8_0", tp_ggml_type_name(t));
    if (c->rope_scaling == TP_ROPE_LLAMA3 && c->arch != TP_ARCH_LLAMA && c->arch != TP_ARCH_MISTRAL)
        return tp_fail(TP_ERR_UNSUPPORTED, "GGUF export: llama3 RoPE scaling is written as rope_freqs.weight, which "
                                           "llama.cpp reads for the llama architecture only");
    if (c->arch == TP_ARCH_QWEN2 && !c->attn_bias)
        return tp_fail(TP_ERR_UNSUPPORTED, "GGUF export: qwen2 without attention biases has no GGUF form");
    if (c->arch == TP_ARCH_QWEN2 && c->n_heads * c->head_dim != c->d_model)
        return tp_fail(TP_ERR_UNSUPPORTED, "GGUF export: llama.cpp's qwen2 graph takes the query width to be hidden_size, "
                       "but this model has num_attention_heads * head_dim = %d * %d and hidden_size %d (prune heads and "
                       "hidden together, or export an HF folder)", c->n_heads, c->head_dim, c->d_model);
    if (c->arch == TP_ARCH_GEMMA3) {
        /* llama.cpp scales Gemma 3's scores by 1/sqrt(head_dim) (d_model/heads for 62 layers) */
        float want = tp_gemma3_llamacpp_scale_base(c);
        if (c->attn_scale_base != want)
            return tp_fail(TP_ERR_UNSUPPORTED, "GGUF export: query_pre_attn_scalar = %g, but llama.cpp scales Gemma 3's "
                           "attention by 1/sqrt(%g) for this shape; export to an HF folder instead",
                           c->attn_scale_base, want);
        if (c->sliding_window > 0 && c->rope_local_theta <= 0)
            return tp_fail(TP_ERR_UNSUPPORTED, "GGUF export: Gemma 3 sliding layers need their own RoPE base");
    }
    if (c->hetero && c->arch != TP_ARCH_LLAMA && c->arch != TP_ARCH_MISTRAL)
        return tp_fail(TP_ERR_UNSUPPORTED, "GGUF export: this %s model has per-layer widths; llama.cpp runs those "
                       "only in its DeciLM graph, which has the Llama family's layers (no q/k/v biases, q/k norms "
                       "or Gemma's norms)", c->arch == TP_ARCH_QWEN2 ? "Qwen2" : c->arch == TP_ARCH_QWEN3 ? "Qwen3"
                                                                                                           : "Gemma 3");
    static const char *const arch_names[] = {"llama", "llama", "qwen2", "qwen3", "gemma3"};
    /* Llama with per-layer widths: llama.cpp's "deci" graph (Llama layers whose head count and MLP
     * width come per layer) */
    const char *arch = c->hetero ? "deci" : arch_names[c->arch];
    int permute = c->arch == TP_ARCH_LLAMA || c->arch == TP_ARCH_MISTRAL;
    tp_gguf_writer *w = NULL;
    tp_status s = tp_gguf_writer_new(&w);
    if (s) return s;
    uint64_t d = (uint64_t)c->d_model, q = (uint64_t)c->n_heads * c->head_dim,
             kv = (uint64_t)c->n_kv_heads * c->head_dim, ff = (uint64_t)c->d_ff, V = (uint64_t)c->vocab;
    float *tmp = malloc((size_t)q * (size_t)d * sizeof(float));
    if (!tmp) { tp_gguf_writer_free(w); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    s = gguf_metadata(m, w, arch, t);
    if (!s) s = add_t(w, "token_embd.weight", m->tok_emb, V, d, t);
    if (!s && c->rope_scaling == TP_ROPE_LLAMA3) {
        float f[512];
        tp_rope_llama3_factors(c, f);
        s = add_t(w, "rope_freqs.weight", f, 0, (uint64_t)c->head_dim / 2, t);
    }
    /* Gemma: llama.cpp's converter stores each norm weight as 1 + w */
    size_t nshift = c->norm_plus_one ? (size_t)(d > (uint64_t)c->head_dim ? d : (uint64_t)c->head_dim) : 0;
    float *shifted = nshift ? malloc(nshift * sizeof(float)) : NULL;
    if (nshift && !shifted && !s) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    char name[96];
    for (int l = 0; l < c->n_layers && !s; l++) {
        const tp_layer *L = &m->layers[l];
        int nh = tp_config_heads(c, l);
        q = (uint64_t)nh * c->head_dim;
        ff = (uint64_t)tp_config_ff(c, l);
#define ADD(suffix, data, r, cl)                                       \
    do {                                                               \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);           \
        if (!s) s = add_t(w, name, data, r, cl, t);                    \
    } while (0)
#define NORM(v, n) tp_norm_weight(c, v, (size_t)(n), shifted)
        ADD("attn_norm.weight", NORM(L->attn_norm, d), 0, d);
        if (c->qk_norm) {
            ADD("attn_q_norm.weight", NORM(L->q_norm, c->head_dim), 0, (uint64_t)c->head_dim);
            ADD("attn_k_norm.weight", NORM(L->k_norm, c->head_dim), 0, (uint64_t)c->head_dim);
        }
        if (c->sandwich_norm) {
            ADD("post_attention_norm.weight", NORM(L->attn_post_norm, d), 0, d);
            ADD("post_ffw_norm.weight", NORM(L->mlp_post_norm, d), 0, d);
        }
        if (permute) tp_rope_rows_permute(L->wq, tmp, nh, c->head_dim, (size_t)d);
        ADD("attn_q.weight", permute ? tmp : L->wq, q, d);
        if (permute) tp_rope_rows_permute(L->wk, tmp, c->n_kv_heads, c->head_dim, (size_t)d);
        ADD("attn_k.weight", permute ? tmp : L->wk, kv, d);
        ADD("attn_v.weight", L->wv, kv, d);
        if (c->attn_bias) {
            if (permute) tp_rope_rows_permute(L->bq, tmp, nh, c->head_dim, 1);
            ADD("attn_q.bias", permute ? tmp : L->bq, 0, q);
            if (permute) tp_rope_rows_permute(L->bk, tmp, c->n_kv_heads, c->head_dim, 1);
            ADD("attn_k.bias", permute ? tmp : L->bk, 0, kv);
            ADD("attn_v.bias", L->bv, 0, kv);
        }
        ADD("attn_output.weight", L->wo, d, q);
        ADD("ffn_norm.weight", NORM(L->mlp_norm, d), 0, d);
        ADD("ffn_gate.weight", L->w_gate, ff, d);
        ADD("ffn_up.weight", L->w_up, ff, d);
        ADD("ffn_down.weight", L->w_down, d, ff);
#undef ADD
    }
    if (!s) s = add_t(w, "output_norm.weight", NORM(m->final_norm, d), 0, d, t);
#undef NORM
    free(shifted);
    if (!s && !c->tie_embeddings) s = add_t(w, "output.weight", m->lm_head, V, d, t);
    free(tmp);
    if (!s) s = tp_gguf_write(w, path);
    tp_gguf_writer_free(w);
    return s;
}
