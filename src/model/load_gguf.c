/* GGUF -> tp_model: config from the {arch}.* metadata (architectures llama, qwen2, qwen3, gemma3),
 * tensors dequantised to fp32 into HF layout (llama.cpp's Q/K row permutation undone for the
 * llama architecture; Gemma's norm weights, which llama.cpp's converter stores as 1 + w, back to
 * w), tokenizer from tokenizer.ggml.*. What the file means is what llama.cpp computes from it:
 * Gemma 3's sliding window and layer pattern as llama.cpp reads them, no window for the Llama
 * family (llama.cpp applies none there), Llama 3.x RoPE from its rope_freqs.weight factors.
 * The inverse mapping lives in save.c. */
#include "taper/gguf.h"
#include "taper/model.h"

#include <math.h>
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

/* A per-layer width key: a scalar (every layer) or an array of n_layers integers (llama.cpp's
 * get_key_or_arr). out[0..n_layers) gets the values. */
static tp_status get_u32_or_arr(const tp_gguf *g, const char *arch, const char *key, int n_layers, int *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    const tp_gguf_kv *kv = tp_gguf_find(g, full);
    if (!kv) return tp_fail(TP_ERR_FORMAT, "%s: metadata key %s is missing", g->path, full);
    if (kv->type != TP_GGUF_ARRAY) {
        int v;
        tp_status s = get_u32(g, arch, key, 1, 0, &v);
        for (int l = 0; !s && l < n_layers; l++) out[l] = v;
        return s;
    }
    if (kv->v.arr.n != (uint64_t)n_layers ||
        (kv->v.arr.type != TP_GGUF_UINT32 && kv->v.arr.type != TP_GGUF_INT32))
        return tp_fail(TP_ERR_FORMAT, "%s: metadata %s must be one 32-bit integer per layer (%d)", g->path, full,
                       n_layers);
    if (n_layers > TP_MAX_HET_LAYERS)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: %s holds per-layer widths; taper supports them up to %d layers",
                       g->path, full, TP_MAX_HET_LAYERS);
    for (int l = 0; l < n_layers; l++) {
        uint64_t v = tp_gguf_arr_u64(kv, (uint64_t)l);
        if (v == 0 || v > (1u << 30))
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: metadata %s[%d] = %llu: layers without %s are not supported",
                           g->path, full, l, (unsigned long long)v,
                           strstr(key, "feed") ? "an MLP" : "attention");
        out[l] = (int)v;
    }
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

/* Llama 3.x RoPE in GGUF: llama.cpp's converter drops the rope_scaling settings and stores one
 * factor per frequency (rope_freqs.weight, head_dim/2 floats: the angle of frequency j is divided
 * by f[j]). tp_rope_llama3_factors computes them as that converter does; the loader finds the
 * llama3 settings that give back the file's factors (the ones every Llama 3.x uses first). */
void tp_rope_llama3_factors(const tp_config *c, float *f) {
    int half = c->head_dim / 2;
    float old = (float)c->rope_orig_max_pos;
    float low_wl = old / c->rope_low_freq, high_wl = old / c->rope_high_freq;
    for (int j = 0; j < half; j++) {
        float freq = 1.0f / powf(c->rope_theta, (float)(2 * j) / (float)c->head_dim);
        float wl = (float)(2.0 * M_PI) / freq;
        if (wl < high_wl) f[j] = 1.0f;
        else if (wl > low_wl) f[j] = c->rope_factor;
        else {
            float sm = (old / wl - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
            f[j] = 1.0f / ((1.0f - sm) / c->rope_factor + sm);
        }
    }
}

static tp_status rope_from_freqs(const tp_gguf *g, const tp_gguf_tensor *t, tp_config *c) {
    int half = c->head_dim / 2;
    if (c->arch != TP_ARCH_LLAMA)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: tensor rope_freqs.weight in a non-llama architecture is not "
                       "supported", g->path);
    if (t->n_dims != 1 || t->ne[0] != (uint64_t)half)
        return tp_fail(TP_ERR_FORMAT, "%s: rope_freqs.weight has %llu elements, expected head_dim/2 = %d", g->path,
                       (unsigned long long)t->ne[0], half);
    if (c->rope_scaling != TP_ROPE_NONE)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: both rope_freqs.weight and rope.scaling.type are set", g->path);
    float f[512], want[512];
    tp_status s = tp_gguf_tensor_to_f32(t, f);
    if (s) return tp_fail_ctx(s, "%s: rope_freqs.weight: ", g->path);
    float fmax = 0;
    for (int j = 0; j < half; j++) {
        if (!(f[j] >= 1.0f && f[j] < 1e6f))
            return tp_fail(TP_ERR_FORMAT, "%s: rope_freqs.weight[%d] = %g is not a factor >= 1", g->path, j, f[j]);
        if (f[j] > fmax) fmax = f[j];
    }
    if (fmax == 1.0f) return TP_OK; /* no scaling at all */
    /* candidates for original_max_position_embeddings: the usual ones, powers of two, and for each
     * factor strictly between 1 and the maximum the value that factor implies (the ramp pins it) */
    static const float highs[] = {4.0f, 2.0f, 8.0f};
    for (size_t b = 0; b < sizeof highs / sizeof highs[0]; b++) {
        double cand[8 + 30 + 512];
        int nc = 0;
        static const int usual[] = {8192, 4096, 16384, 32768, 2048, 65536, 131072};
        for (size_t a = 0; a < sizeof usual / sizeof usual[0]; a++) cand[nc++] = usual[a];
        /* with no factor on the ramp, any context between the jumps gives the same factors */
        for (int e = 1; e <= 30; e++) cand[nc++] = (double)(1 << e);
        for (int j = 0; j < half && nc < 8 + 30 + 512; j++)
            if (f[j] > 1.0f && f[j] < fmax) {
                double inv = 1.0 / pow((double)c->rope_theta, (double)(2 * j) / c->head_dim), wl = 2.0 * M_PI / inv;
                double sm = (1.0 / f[j] - 1.0 / fmax) / (1.0 - 1.0 / fmax);
                cand[nc++] = floor(wl * (sm * (highs[b] - 1.0) + 1.0) + 0.5);
            }
        for (int a = 0; a < nc; a++) {
            if (!(cand[a] >= 1 && cand[a] <= (double)(1 << 30))) continue;
            tp_config k = *c;
            k.rope_scaling = TP_ROPE_LLAMA3;
            k.rope_factor = fmax;
            k.rope_low_freq = 1.0f;
            k.rope_high_freq = highs[b];
            k.rope_orig_max_pos = (int)cand[a];
            tp_rope_llama3_factors(&k, want);
            int ok = 1;
            for (int j = 0; j < half && ok; j++) ok = fabsf(want[j] - f[j]) <= 1e-5f * f[j];
            if (ok) {
                *c = k;
                return TP_OK;
            }
        }
    }
    return tp_fail(TP_ERR_UNSUPPORTED, "%s: rope_freqs.weight (factors 1 .. %g) matches no llama3 RoPE scaling "
                   "(low_freq_factor 1, high_freq_factor 2/4/8, original context 2k..128k); load the HF folder "
                   "of this model instead", g->path, fmax);
}

/* Gemma 3 as llama.cpp reads it: the window from attention.sliding_window (none when absent or
 * 0), sliding layers from attention.sliding_window_pattern (an array of flags, or n: layer l
 * slides when l % n < n - 1; default 6), their RoPE base from rope.freq_base_swa (default
 * 10000), scores scaled by 1/sqrt(head_dim) (1/sqrt(d_model / heads) for the 62-layer 27B). */
float tp_gemma3_llamacpp_scale_base(const tp_config *c) {
    return c->n_layers == 62 ? (float)(c->d_model / tp_config_heads(c, 0)) : (float)c->head_dim;
}

static tp_status gemma3_from_gguf(const tp_gguf *g, tp_config *c) {
    c->qk_norm = c->norm_plus_one = c->sandwich_norm = c->embed_scale = 1;
    c->act = TP_ACT_GELU_TANH;
    c->attn_scale_base = tp_gemma3_llamacpp_scale_base(c);
    c->rope_local_theta = 10000.0f;
    tp_status s;
    uint32_t w = 0;
    if (tp_gguf_find(g, "gemma3.attention.sliding_window") &&
        (s = tp_gguf_get_u32(g, "gemma3.attention.sliding_window", &w)))
        return s;
    if (tp_gguf_find(g, "gemma3.rope.freq_base_swa") &&
        (s = tp_gguf_get_f32(g, "gemma3.rope.freq_base_swa", &c->rope_local_theta)))
        return s;
    if (tp_gguf_find(g, "gemma3.final_logit_softcapping")) {
        float cap = 0;
        if ((s = tp_gguf_get_f32(g, "gemma3.final_logit_softcapping", &cap))) return s;
        if (cap != 0)
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: gemma3.final_logit_softcapping = %g: soft-capping is not "
                           "supported", g->path, cap);
    }
    if (w == 0) return TP_OK;
    if (w > (1u << 30)) return tp_fail(TP_ERR_FORMAT, "%s: gemma3.attention.sliding_window = %u is out of range",
                                       g->path, w);
    c->sliding_window = (int)w;
    const tp_gguf_kv *pk = tp_gguf_find(g, "gemma3.attention.sliding_window_pattern");
    if (pk && pk->type == TP_GGUF_ARRAY) {
        if (pk->v.arr.n != (uint64_t)c->n_layers || pk->v.arr.type == TP_GGUF_STRING)
            return tp_fail(TP_ERR_FORMAT, "%s: gemma3.attention.sliding_window_pattern must hold %d flags", g->path,
                           c->n_layers);
        for (int l = 0; l < c->n_layers; l++) tp_config_set_layer_sliding(c, l, tp_gguf_arr_u64(pk, (uint64_t)l) != 0);
    } else {
        uint32_t n = 6;
        if (pk && (s = tp_gguf_get_u32(g, "gemma3.attention.sliding_window_pattern", &n))) return s;
        for (int l = 0; l < c->n_layers; l++) tp_config_set_layer_sliding(c, l, n == 0 || (uint32_t)l % n < n - 1);
    }
    int any = 0;
    for (int l = 0; l < c->n_layers; l++) any |= tp_config_layer_sliding(c, l);
    if (!any) c->sliding_window = 0;
    return TP_OK;
}

static tp_status config_from_gguf(const tp_gguf *g, tp_config *c) {
    char *arch = NULL;
    tp_status s = tp_gguf_get_str(g, "general.architecture", &arch);
    if (s) return s;
    memset(c, 0, sizeof *c);
    int deci = strcmp(arch, "deci") == 0; /* llama with per-layer widths (llama.cpp's DeciLM graph) */
    if (strcmp(arch, "llama") == 0 || deci) c->arch = TP_ARCH_LLAMA;
    else if (strcmp(arch, "qwen2") == 0) c->arch = TP_ARCH_QWEN2;
    else if (strcmp(arch, "qwen3") == 0) c->arch = TP_ARCH_QWEN3;
    else if (strcmp(arch, "gemma3") == 0) c->arch = TP_ARCH_GEMMA3;
    else {
        s = tp_fail(TP_ERR_UNSUPPORTED,
                    "%s: general.architecture = \"%s\" is not supported (llama, deci, qwen2, qwen3, gemma3)", g->path,
                    arch);
        free(arch);
        return s;
    }
    c->attn_bias = c->arch == TP_ARCH_QWEN2;
    c->qk_norm = c->arch == TP_ARCH_QWEN3;
    if ((s = get_u32(g, arch, "block_count", 1, 0, &c->n_layers)) ||
        (s = get_u32(g, arch, "embedding_length", 1, 0, &c->d_model))) {
        free(arch);
        return s;
    }
    /* feed_forward_length and attention.head_count may be per-layer arrays (deci, or any family:
     * llama.cpp reads both forms) */
    int *lw = malloc(2 * (size_t)c->n_layers * sizeof *lw);
    if (!lw) { free(arch); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    if (!(s = get_u32_or_arr(g, arch, "feed_forward_length", c->n_layers, lw)) &&
        !(s = get_u32_or_arr(g, arch, "attention.head_count", c->n_layers, lw + c->n_layers))) {
        int het = 0;
        for (int l = 0; l < c->n_layers; l++) het |= lw[l] != lw[0] || lw[c->n_layers + l] != lw[c->n_layers];
        c->d_ff = lw[0];
        c->n_heads = lw[c->n_layers];
        if (het) tp_config_set_widths(c, lw, lw + c->n_layers);
    }
    free(lw);
    if (s) { free(arch); return s; }
    if ((s = get_u32(g, arch, "attention.head_count_kv", 0, (uint32_t)tp_config_heads(c, 0), &c->n_kv_heads)) ||
        (s = get_u32(g, arch, "context_length", 0, 2048, &c->max_pos)) ||
        (s = get_f32(g, arch, "rope.freq_base", 10000.0f, &c->rope_theta)) ||
        (s = get_f32(g, arch, "attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps))) {
        free(arch);
        return s;
    }
    int hd = tp_config_heads(c, 0) ? c->d_model / tp_config_heads(c, 0) : 0; /* llama.cpp's default */
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
    if (c->arch == TP_ARCH_GEMMA3 && (s = gemma3_from_gguf(g, c))) return s;
    const tp_gguf_tensor *rf = tp_gguf_find_tensor(g, "rope_freqs.weight");
    if (rf && (s = rope_from_freqs(g, rf, c))) return s;
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
tp_status tp_gguf_load_tensor(const tp_gguf *g, const char *name, float *dst, size_t rows, size_t cols) {
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
    tp_mmap_release(t->data, t->nbytes); /* the file's pages leave the resident set: only the fp32 copy counts */
    if (s) return tp_fail_ctx(s, "%s: tensor %s: ", g->path, name);
    return TP_OK;
}

static tp_status load_layer(const tp_gguf *g, const tp_config *c, int l, tp_layer *L, float *tmp) {
    int nh = tp_config_heads(c, l);
    size_t d = (size_t)c->d_model, q = (size_t)nh * c->head_dim,
           kv = (size_t)c->n_kv_heads * c->head_dim, ff = (size_t)tp_config_ff(c, l);
    char name[96];
    tp_status s;
#define LOAD(suffix, dst, rows, cols)                                  \
    do {                                                               \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);           \
        if ((s = tp_gguf_load_tensor(g, name, dst, rows, cols))) return s;     \
    } while (0)
    LOAD("attn_norm.weight", L->attn_norm, 1, d);
    LOAD("ffn_norm.weight", L->mlp_norm, 1, d);
    LOAD("attn_v.weight", L->wv, kv, d);
    LOAD("attn_output.weight", L->wo, d, q);
    LOAD("ffn_gate.weight", L->w_gate, ff, d);
    LOAD("ffn_up.weight", L->w_up, ff, d);
    LOAD("ffn_down.weight", L->w_down, d, ff);
    if (c->qk_norm) {
        LOAD("attn_q_norm.weight", L->q_norm, 1, (size_t)c->head_dim);
        LOAD("attn_k_norm.weight", L->k_norm, 1, (size_t)c->head_dim);
    }
    if (c->sandwich_norm) {
        LOAD("post_attention_norm.weight", L->attn_post_norm, 1, d);
        LOAD("post_ffw_norm.weight", L->mlp_post_norm, 1, d);
    }
    int permuted = c->arch == TP_ARCH_LLAMA || c->arch == TP_ARCH_MISTRAL; /* llama.cpp permutes Q/K rows for llama only */
    if (c->attn_bias) {
        LOAD("attn_q.bias", permuted ? tmp : L->bq, 1, q);
        if (permuted) tp_rope_rows_unpermute(tmp, L->bq, nh, c->head_dim, 1);
        LOAD("attn_k.bias", permuted ? tmp : L->bk, 1, kv);
        if (permuted) tp_rope_rows_unpermute(tmp, L->bk, c->n_kv_heads, c->head_dim, 1);
        LOAD("attn_v.bias", L->bv, 1, kv);
    }
    LOAD("attn_q.weight", permuted ? tmp : L->wq, q, d);
    if (permuted) tp_rope_rows_unpermute(tmp, L->wq, nh, c->head_dim, d);
    LOAD("attn_k.weight", permuted ? tmp : L->wk, kv, d);
    if (permuted) tp_rope_rows_unpermute(tmp, L->wk, c->n_kv_heads, c->head_dim, d);
#undef LOAD
    return TP_OK;
}

/* llama.cpp's converter stores Gemma's norm weights as 1 + w; taper keeps w (HF's convention). */
static void unshift_layer(const tp_config *c, tp_layer *L) {
    size_t d = (size_t)c->d_model, hd = (size_t)c->head_dim;
    float *v[] = {L->attn_norm, L->mlp_norm, L->attn_post_norm, L->mlp_post_norm, L->q_norm, L->k_norm};
    size_t n[] = {d, d, d, d, hd, hd};
    for (int k = 0; k < 6; k++)
        for (size_t i = 0; v[k] && i < n[k]; i++) v[k][i] -= 1.0f;
}

tp_status tp_gguf_load_layer(const tp_gguf *g, const tp_config *c, int l, tp_layer *L, float *tmp) {
    tp_status s = load_layer(g, c, l, L, tmp);
    if (!s && c->norm_plus_one) unshift_layer(c, L);
    return s;
}

tp_status tp_gguf_config(const tp_gguf *g, tp_config *c) { return config_from_gguf(g, c); }

tp_status tp_config_load_gguf(const char *path, tp_config *c) {
    tp_gguf *g = NULL;
    tp_status s = tp_gguf_open(path, &g);
    if (!s) s = config_from_gguf(g, c);
    tp_gguf_close(g);
    return s;
}

tp_status tp_gguf_load_meta(const tp_gguf *g, const char *path, tp_model *m) {
    tp_status s;
    /* a file without tokenizer.ggml.model has no tokenizer (as an HF folder without tokenizer.json) */
    if (tp_gguf_find(g, "tokenizer.ggml.model") && (s = tp_tok_load_gguf(g, &m->tok)))
        return tp_fail_ctx(s, "%s: tokenizer: ", path);
    /* a template of another type is ignored; running out of memory is an error */
    if (tp_gguf_find(g, "tokenizer.chat_template") &&
        tp_gguf_get_str(g, "tokenizer.chat_template", &m->chat_template) == TP_ERR_NOMEM)
        return TP_ERR_NOMEM;
    m->source = strdup(path);
    m->source_format = strdup("gguf");
    return m->source && m->source_format ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
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
    if ((s = tp_gguf_load_tensor(g, "token_embd.weight", m->tok_emb, (size_t)c.vocab, (size_t)c.d_model))) goto done;
    if ((s = tp_gguf_load_tensor(g, "output_norm.weight", m->final_norm, 1, (size_t)c.d_model))) goto done;
    if (!c.tie_embeddings &&
        (s = tp_gguf_load_tensor(g, "output.weight", m->lm_head, (size_t)c.vocab, (size_t)c.d_model))) goto done;
    for (int l = 0; l < c.n_layers && !s; l++) s = tp_gguf_load_layer(g, &c, l, &m->layers[l], tmp);
    if (s) goto done;
    if (c.norm_plus_one)
        for (int i = 0; i < c.d_model; i++) m->final_norm[i] -= 1.0f;
    s = tp_gguf_load_meta(g, path, m);
done:
    free(tmp);
    tp_gguf_close(g);
    if (s) tp_model_free(m);
    else *out = m;
    return s;
}
