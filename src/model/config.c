/* Model configuration: validation, parameter count, and HF config.json parse / write for
 * Llama, Mistral and Qwen2 (the architectures taper computes exactly). Weights, loading and the
 * forward pass live in the other files of src/model/.
 *
 * Reading follows transformers 5.24 (and still reads what 4.x wrote):
 *  - the architecture comes from model_type (what AutoConfig uses), else architectures[0];
 *    when both are present they must agree;
 *  - RoPE: a non-empty "rope_scaling" object wins over "rope_parameters" (as in 5.24's
 *    convert_rope_params_to_dict); rope_theta is taken from that object, else top level, else
 *    10000; the type from "rope_type", else "type", else "default". Supported: default, linear,
 *    llama3 (original_max_position_embeddings defaults to max_position_embeddings);
 *  - Llama's attention_bias adds an o_proj bias as well, which tp_layer does not hold: refused.
 *    Qwen2 always has q/k/v biases (its attention_bias key is ignored by transformers, as here);
 *  - sliding windows that would actually cut attention (window < max_position_embeddings on
 *    some layer) are refused; Mistral's default window when the key is absent is 4096;
 *  - sizes are required (hidden_size, intermediate_size, num_hidden_layers,
 *    num_attention_heads, vocab_size); other keys default as in transformers, except
 *    bos/eos_token_id which are -1 when absent (a list gives its first id);
 *  - duplicate keys are refused (Python keeps the last, cJSON the first);
 *  - RoPE scaling fields the type does not use are left 0.
 *
 * Writing: model_type, architectures, every size, head_dim explicitly, rope settings both as
 * 5.x "rope_parameters" and (for pre-5 readers) top-level rope_theta plus "rope_scaling" when
 * scaled. transformers 5.24's LlamaConfig refuses hidden_size % num_attention_heads != 0 even
 * with an explicit head_dim; such a Llama config (no biases) is written as Mistral with
 * sliding_window null, which transformers computes identically. */
#include "taper/model.h"
#include "core/internal.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_DIM (1 << 20)        /* hidden, intermediate, head_dim, heads*head_dim */
#define CFG_MAX_HEADS (1 << 14)
#define CFG_MAX_LAYERS TP_MAX_LAYERS
#define CFG_MAX_VOCAB (1 << 24)
#define CFG_MAX_POS (1 << 30)

typedef struct { tp_arch arch; const char *cls, *type; } cfg_arch_name;
static const cfg_arch_name cfg_archs[] = {
    {TP_ARCH_LLAMA, "LlamaForCausalLM", "llama"},
    {TP_ARCH_MISTRAL, "MistralForCausalLM", "mistral"},
    {TP_ARCH_QWEN2, "Qwen2ForCausalLM", "qwen2"},
    {TP_ARCH_QWEN3, "Qwen3ForCausalLM", "qwen3"},
    {TP_ARCH_GEMMA3, "Gemma3ForCausalLM", "gemma3_text"},
};
#define CFG_N_ARCHS ((int)(sizeof cfg_archs / sizeof cfg_archs[0]))

/* ------------------------------------------------------------------------------------------ */
/* validation and parameter count */

/* NULL when c is valid, else a description written into buf. */
static const char *cfg_problem(const tp_config *c, char *buf, size_t n) {
#define BAD(...) do { snprintf(buf, n, __VA_ARGS__); return buf; } while (0)
#define RANGE(v, lo, hi, what) \
    if ((v) < (lo) || (v) > (hi)) BAD("%s = %d is out of range [%d, %d]", what, (int)(v), (int)(lo), (int)(hi))
    if ((int)c->arch < 0 || (int)c->arch >= CFG_N_ARCHS) BAD("unknown architecture id %d", (int)c->arch);
    RANGE(c->n_layers, 1, CFG_MAX_LAYERS, "num_hidden_layers");
    RANGE(c->d_model, 1, CFG_MAX_DIM, "hidden_size");
    RANGE(c->n_heads, 1, CFG_MAX_HEADS, "num_attention_heads");
    RANGE(c->n_kv_heads, 1, c->n_heads, "num_key_value_heads");
    if (c->n_heads % c->n_kv_heads != 0)
        BAD("num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)", c->n_heads,
            c->n_kv_heads);
    RANGE(c->head_dim, 2, 1024, "head_dim"); /* the RoPE kernels keep head_dim/2 angles on the stack */
    if (c->head_dim % 2 != 0) BAD("head_dim = %d is odd; RoPE needs pairs", c->head_dim);
    if ((long long)c->n_heads * c->head_dim > CFG_MAX_DIM)
        BAD("num_attention_heads * head_dim = %lld is over %d", (long long)c->n_heads * c->head_dim,
            CFG_MAX_DIM);
    RANGE(c->d_ff, 1, CFG_MAX_DIM, "intermediate_size");
    RANGE(c->vocab, 1, CFG_MAX_VOCAB, "vocab_size");
    RANGE(c->max_pos, 1, CFG_MAX_POS, "max_position_embeddings");
    if (!isfinite(c->rope_theta) || c->rope_theta <= 0) BAD("rope_theta = %g must be > 0", c->rope_theta);
    if (!isfinite(c->norm_eps) || c->norm_eps <= 0 || c->norm_eps >= 1)
        BAD("rms_norm_eps = %g must be in (0, 1)", c->norm_eps);
    switch (c->rope_scaling) {
    case TP_ROPE_NONE: break;
    case TP_ROPE_LINEAR:
        if (!isfinite(c->rope_factor) || c->rope_factor <= 0)
            BAD("rope scaling factor = %g must be > 0", c->rope_factor);
        break;
    case TP_ROPE_LLAMA3:
        if (!isfinite(c->rope_factor) || c->rope_factor <= 0)
            BAD("rope scaling factor = %g must be > 0", c->rope_factor);
        if (!isfinite(c->rope_low_freq) || c->rope_low_freq <= 0)
            BAD("rope low_freq_factor = %g must be > 0", c->rope_low_freq);
        if (!isfinite(c->rope_high_freq) || c->rope_high_freq <= c->rope_low_freq)
            BAD("rope high_freq_factor = %g must be > low_freq_factor = %g", c->rope_high_freq,
                c->rope_low_freq);
        RANGE(c->rope_orig_max_pos, 1, CFG_MAX_POS, "original_max_position_embeddings");
        break;
    default: BAD("unknown rope scaling id %d", (int)c->rope_scaling);
    }
    if (c->tie_embeddings != 0 && c->tie_embeddings != 1)
        BAD("tie_embeddings = %d must be 0 or 1", c->tie_embeddings);
    if (c->attn_bias != (c->arch == TP_ARCH_QWEN2))
        BAD("attn_bias = %d, but %s %s q/k/v biases", c->attn_bias, cfg_archs[c->arch].cls,
            c->arch == TP_ARCH_QWEN2 ? "always has" : "has no");
    int gemma = c->arch == TP_ARCH_GEMMA3;
    if (c->qk_norm != (c->arch == TP_ARCH_QWEN3 || gemma))
        BAD("qk_norm = %d, but %s %s per-head q/k norms", c->qk_norm, cfg_archs[c->arch].cls,
            c->qk_norm ? "has no" : "always has");
    if (c->norm_plus_one != gemma || c->sandwich_norm != gemma || c->embed_scale != gemma ||
        c->act != (gemma ? TP_ACT_GELU_TANH : TP_ACT_SILU))
        BAD("norm_plus_one / sandwich_norm / embed_scale / act (%d %d %d %d) do not match %s", c->norm_plus_one,
            c->sandwich_norm, c->embed_scale, (int)c->act, cfg_archs[c->arch].cls);
    if (c->attn_scale_base != 0 && (!gemma || !isfinite(c->attn_scale_base) || c->attn_scale_base <= 0))
        BAD("query_pre_attn_scalar = %g: only Gemma 3 has one, and it must be > 0", c->attn_scale_base);
    if (c->rope_local_theta != 0 && (!gemma || !isfinite(c->rope_local_theta) || c->rope_local_theta <= 0))
        BAD("local RoPE base = %g: only Gemma 3 has one, and it must be > 0", c->rope_local_theta);
    if (c->sliding_window < 0 || c->sliding_window > CFG_MAX_POS)
        BAD("sliding_window = %d is out of range [0, %d]", c->sliding_window, CFG_MAX_POS);
    if (c->sliding_window && c->arch == TP_ARCH_LLAMA) BAD("LlamaForCausalLM has no sliding window");
    int n_sliding = 0;
    for (int l = 0; l < TP_MAX_LAYERS; l++) {
        int on = (c->layer_sliding[l / 8] >> (l % 8)) & 1;
        if (on && (l >= c->n_layers || !c->sliding_window))
            BAD("layer %d is marked sliding, but %s", l, l >= c->n_layers ? "the model has fewer layers"
                                                                          : "there is no sliding window");
        n_sliding += on;
    }
    if (c->arch == TP_ARCH_MISTRAL && c->sliding_window && n_sliding != c->n_layers)
        BAD("MistralForCausalLM applies its sliding window to every layer (%d of %d marked)", n_sliding,
            c->n_layers);
    if (c->hetero != 0 && c->hetero != 1) BAD("hetero = %d must be 0 or 1", c->hetero);
    if (c->hetero && c->n_layers > TP_MAX_HET_LAYERS)
        BAD("per-layer widths are supported up to %d layers; this model has %d", TP_MAX_HET_LAYERS, c->n_layers);
    int max_ff = 0, max_h = 0;
    for (int l = 0; l < TP_MAX_HET_LAYERS; l++) {
        int ff = c->layer_ff[l], h = c->layer_heads[l];
        if (!c->hetero || l >= c->n_layers) {
            if (ff || h) BAD("layer %d has per-layer widths (%d, %d), but %s", l, ff, h,
                             c->hetero ? "the model has fewer layers" : "the model is uniform");
            continue;
        }
        RANGE(ff, 1, c->d_ff, "a layer's intermediate_size");
        RANGE(h, c->n_kv_heads, c->n_heads, "a layer's num_attention_heads");
        if (h % c->n_kv_heads != 0)
            BAD("layer %d has %d query heads, not a multiple of num_key_value_heads (%d)", l, h, c->n_kv_heads);
        if (ff > max_ff) max_ff = ff;
        if (h > max_h) max_h = h;
    }
    if (c->hetero && (max_ff != c->d_ff || max_h != c->n_heads))
        BAD("intermediate_size / num_attention_heads (%d, %d) are not the largest per-layer widths (%d, %d)",
            c->d_ff, c->n_heads, max_ff, max_h);
    if (c->bos_id < -1) BAD("bos_token_id = %d must be >= 0 (or -1 for unknown)", (int)c->bos_id);
    if (c->eos_id < -1) BAD("eos_token_id = %d must be >= 0 (or -1 for unknown)", (int)c->eos_id);
    return NULL;
#undef RANGE
#undef BAD
}

int tp_config_layer_sliding(const tp_config *c, int l) {
    return c->sliding_window > 0 && l >= 0 && l < c->n_layers && l < TP_MAX_LAYERS &&
           ((c->layer_sliding[l / 8] >> (l % 8)) & 1);
}

void tp_config_set_layer_sliding(tp_config *c, int l, int on) {
    if (l < 0 || l >= TP_MAX_LAYERS) return;
    if (on) c->layer_sliding[l / 8] |= (uint8_t)(1u << (l % 8));
    else c->layer_sliding[l / 8] &= (uint8_t)~(1u << (l % 8));
}

void tp_config_keep_layers(const tp_config *src, const int *kept, int n, tp_config *dst) {
    uint8_t bits[TP_MAX_LAYERS / 8] = {0};
    int any = 0;
    for (int i = 0; i < n && i < TP_MAX_LAYERS; i++)
        if (tp_config_layer_sliding(src, kept[i])) {
            bits[i / 8] |= (uint8_t)(1u << (i % 8));
            any = 1;
        }
    int ff[TP_MAX_HET_LAYERS], heads[TP_MAX_HET_LAYERS];
    int het = src->hetero && n <= TP_MAX_HET_LAYERS;
    for (int i = 0; het && i < n; i++) {
        ff[i] = tp_config_ff(src, kept[i]);
        heads[i] = tp_config_heads(src, kept[i]);
    }
    if (dst != src) *dst = *src;
    dst->n_layers = n;
    memcpy(dst->layer_sliding, bits, sizeof bits);
    if (!any) dst->sliding_window = 0;
    if (src->hetero) tp_config_set_widths(dst, het ? ff : NULL, het ? heads : NULL);
}

void tp_config_set_widths(tp_config *c, const int *ff, const int *heads) {
    int n = c->n_layers, f[TP_MAX_HET_LAYERS], h[TP_MAX_HET_LAYERS];
    if (n > TP_MAX_HET_LAYERS) { /* left for validation to refuse, unless uniform */
        if (!ff && !heads) c->hetero = 0;
        return;
    }
    int max_f = 0, max_h = 0, same = 1;
    for (int l = 0; l < n; l++) {
        f[l] = ff ? ff[l] : tp_config_ff(c, l);
        h[l] = heads ? heads[l] : tp_config_heads(c, l);
        if (f[l] > max_f) max_f = f[l];
        if (h[l] > max_h) max_h = h[l];
        same &= f[l] == f[0] && h[l] == h[0];
    }
    memset(c->layer_ff, 0, sizeof c->layer_ff);
    memset(c->layer_heads, 0, sizeof c->layer_heads);
    c->d_ff = max_f;
    c->n_heads = max_h;
    c->hetero = !same;
    if (same) return;
    for (int l = 0; l < n; l++) {
        c->layer_ff[l] = f[l];
        c->layer_heads[l] = h[l];
    }
}

tp_status tp_config_validate(const tp_config *c) {
    char buf[256];
    const char *p = cfg_problem(c, buf, sizeof buf);
    return p ? tp_fail(TP_ERR_ARG, "invalid model config: %s", p) : TP_OK;
}

size_t tp_config_n_params(const tp_config *c) {
    char buf[256];
    if (cfg_problem(c, buf, sizeof buf)) return 0;
    size_t d = (size_t)c->d_model, kv = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t emb = (size_t)c->vocab * d, layers = 0;
    for (int l = 0; l < c->n_layers; l++) {
        size_t q = (size_t)tp_config_heads(c, l) * (size_t)c->head_dim, ff = (size_t)tp_config_ff(c, l);
        layers += 2 * d                  /* input and post-attention RMSNorm weights */
                + d * q + 2 * d * kv     /* q, k, v projections */
                + q * d                  /* o projection */
                + (c->attn_bias ? q + 2 * kv : 0)
                + (c->qk_norm ? 2 * (size_t)c->head_dim : 0)
                + (c->sandwich_norm ? 2 * d : 0)
                + 3 * d * ff;            /* gate, up, down */
    }
    return emb + (c->tie_embeddings ? 0 : emb) + layers + d;
}

/* ------------------------------------------------------------------------------------------ */
/* config.json -> tp_config */

static const char *json_kind(const cJSON *j) {
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsNumber(j)) return "a number";
    return "invalid";
}

static int absent(const cJSON *j) { return !j || cJSON_IsNull(j); }

/* An integer field of obj in [lo, hi]; def when absent/null unless required. */
static tp_status get_int(const char *path, const cJSON *obj, const char *key, int required,
                         long long def, long long lo, long long hi, long long *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (absent(j)) {
        if (required) return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" is missing", path, key);
        *out = def;
        return TP_OK;
    }
    if (!cJSON_IsNumber(j))
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" must be an integer, got %s", path, key, json_kind(j));
    double v = j->valuedouble;
    if (v != floor(v) || !isfinite(v))
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" = %g must be an integer", path, key, v);
    if (v < (double)lo || v > (double)hi)
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" = %.0f is out of range [%lld, %lld]", path, key, v,
                       lo, hi);
    *out = (long long)v;
    return TP_OK;
}

static tp_status get_int32(const char *path, const cJSON *obj, const char *key, int required,
                           int def, int lo, int hi, int *out) {
    long long v;
    tp_status s = get_int(path, obj, key, required, def, lo, hi, &v);
    if (!s) *out = (int)v;
    return s;
}

/* A finite positive number (field named `what` in messages). */
static tp_status get_pos_float(const char *path, const cJSON *j, const char *what, float *out) {
    if (!cJSON_IsNumber(j))
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" must be a number, got %s", path, what, json_kind(j));
    double v = j->valuedouble;
    if (!isfinite(v) || v <= 0 || v > FLT_MAX || (float)v == 0)
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" = %g must be a positive finite float32", path,
                       what, v);
    *out = (float)v;
    return TP_OK;
}

static tp_status get_bool(const char *path, const cJSON *obj, const char *key, int def, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (absent(j)) { *out = def; return TP_OK; }
    if (!cJSON_IsBool(j))
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" must be true or false, got %s", path, key,
                       json_kind(j));
    *out = cJSON_IsTrue(j);
    return TP_OK;
}

/* bos/eos: an integer, a list of integers (first one taken), or absent/null/[] -> -1. */
static tp_status get_token_id(const char *path, const cJSON *obj, const char *key, int32_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = -1;
    if (cJSON_IsArray(j)) j = j->child;
    if (absent(j)) return TP_OK;
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < 0 ||
        j->valuedouble > 2147483647.0)
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" must be a non-negative integer (or a list of them)",
                       path, key);
    *out = (int32_t)j->valuedouble;
    return TP_OK;
}

static int cmp_key(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Python's json keeps the last of duplicate keys, cJSON the first: refuse them. */
static tp_status unique_keys(const char *path, const cJSON *obj, const char *where) {
    size_t n = 0;
    for (const cJSON *e = obj ? obj->child : NULL; e; e = e->next) n++;
    if (n < 2) return TP_OK;
    const char **k = malloc(n * sizeof *k);
    if (!k) return tp_fail(TP_ERR_NOMEM, "out of memory");
    n = 0;
    for (const cJSON *e = obj->child; e; e = e->next) k[n++] = e->string ? e->string : "";
    qsort(k, n, sizeof *k, cmp_key);
    tp_status s = TP_OK;
    for (size_t i = 1; i < n && !s; i++)
        if (strcmp(k[i - 1], k[i]) == 0)
            s = tp_fail(TP_ERR_FORMAT, "%s: key \"%.100s\" appears twice%s%s", path, k[i],
                        where ? " in " : "", where ? where : "");
    free(k);
    return s;
}

static tp_status cfg_arch(const char *path, const cJSON *root, tp_arch *arch) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    int from_type = -1, from_cls = -1;
    if (!absent(mt)) {
        if (!cJSON_IsString(mt))
            return tp_fail(TP_ERR_FORMAT, "%s: \"model_type\" must be a string, got %s", path,
                           json_kind(mt));
        for (int i = 0; i < CFG_N_ARCHS; i++)
            if (strcmp(mt->valuestring, cfg_archs[i].type) == 0) from_type = i;
        if (from_type < 0 && !strcmp(mt->valuestring, "gemma3"))
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: model_type \"gemma3\" is the multimodal Gemma 3 "
                           "(Gemma3ForConditionalGeneration); only its text model (model_type \"gemma3_text\", "
                           "Gemma3ForCausalLM) is supported", path);
        if (from_type < 0)
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: model_type \"%.100s\" is not supported (llama, "
                           "mistral, qwen2, qwen3, gemma3_text)", path, mt->valuestring);
    }
    if (!absent(ar)) {
        if (!cJSON_IsArray(ar))
            return tp_fail(TP_ERR_FORMAT, "%s: \"architectures\" must be a list, got %s", path,
                           json_kind(ar));
        const cJSON *a0 = ar->child;
        if (a0 && !cJSON_IsString(a0))
            return tp_fail(TP_ERR_FORMAT, "%s: \"architectures\"[0] must be a string, got %s", path,
                           json_kind(a0));
        if (a0) {
            for (int i = 0; i < CFG_N_ARCHS; i++)
                if (strcmp(a0->valuestring, cfg_archs[i].cls) == 0) from_cls = i;
            if (from_cls < 0)
                return tp_fail(TP_ERR_UNSUPPORTED, "%s: architectures[0] \"%.100s\" is not supported "
                               "(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
                               "Gemma3ForCausalLM)", path,
                               a0->valuestring);
        }
    }
    if (from_type < 0 && from_cls < 0)
        return tp_fail(TP_ERR_FORMAT, "%s: neither \"model_type\" nor \"architectures\" is given",
                       path);
    if (from_type >= 0 && from_cls >= 0 && from_type != from_cls)
        return tp_fail(TP_ERR_FORMAT, "%s: architectures[0] \"%s\" disagrees with model_type \"%s\"",
                       path, cfg_archs[from_cls].cls, cfg_archs[from_type].type);
    *arch = cfg_archs[from_type >= 0 ? from_type : from_cls].arch;
    return TP_OK;
}

/* Gemma 3 keeps one RoPE per layer type: "rope_parameters": {"full_attention": {...},
 * "sliding_attention": {...}}, or (older files) rope_theta, rope_local_base_freq and a
 * "rope_scaling" that applies to the full-attention layers. Sliding layers take a plain RoPE with
 * their own base (c->rope_local_theta); the full layers' settings are parsed by cfg_rope_dict. */
static tp_status cfg_rope_dict(const char *path, const cJSON *root, const cJSON *d, const char *dname,
                               const cJSON *theta_obj, const char *theta_objname, float theta_default,
                               tp_config *c);

static tp_status cfg_rope_gemma(const char *path, const cJSON *root, const cJSON *rs, const cJSON *rp,
                                tp_config *c) {
    const cJSON *full = NULL, *slide = NULL;
    tp_status s;
    if (cJSON_IsObject(rp) && rp->child) {
        if ((s = unique_keys(path, rp, "rope_parameters"))) return s;
        for (const cJSON *e = rp->child; e; e = e->next) {
            const char *k = e->string ? e->string : "";
            if (!cJSON_IsObject(e) || (strcmp(k, "full_attention") && strcmp(k, "sliding_attention")))
                return tp_fail(TP_ERR_FORMAT, "%s: Gemma 3's \"rope_parameters\" must hold only the objects "
                               "\"full_attention\" and \"sliding_attention\" (found \"%.40s\")", path, k);
            if (!strcmp(k, "full_attention")) full = e;
            else slide = e;
        }
    }
    const cJSON *d = cJSON_IsObject(rs) && rs->child ? rs : full;
    const char *dname = d == rs ? "rope_scaling" : "rope_parameters.full_attention";
    if ((s = cfg_rope_dict(path, root, d, dname, full, "rope_parameters.full_attention", 1000000.0f, c)))
        return s;
    c->rope_local_theta = 10000.0f;
    const cJSON *th = slide ? cJSON_GetObjectItemCaseSensitive(slide, "rope_theta") : NULL;
    const char *thname = "rope_parameters.sliding_attention.rope_theta";
    if (absent(th)) { th = cJSON_GetObjectItemCaseSensitive(root, "rope_local_base_freq"); thname = "rope_local_base_freq"; }
    if (!absent(th) && (s = get_pos_float(path, th, thname, &c->rope_local_theta))) return s;
    const cJSON *ty = slide ? cJSON_GetObjectItemCaseSensitive(slide, "rope_type") : NULL;
    if (!absent(ty) && !(cJSON_IsString(ty) && !strcmp(ty->valuestring, "default")))
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: rope_parameters.sliding_attention.rope_type must be \"default\"",
                       path);
    return TP_OK;
}

static tp_status cfg_rope(const char *path, const cJSON *root, tp_config *c) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (!absent(rs) && !cJSON_IsObject(rs))
        return tp_fail(TP_ERR_FORMAT, "%s: \"rope_scaling\" must be an object or null, got %s", path,
                       json_kind(rs));
    if (!absent(rp) && !cJSON_IsObject(rp))
        return tp_fail(TP_ERR_FORMAT, "%s: \"rope_parameters\" must be an object or null, got %s",
                       path, json_kind(rp));
    if (c->arch == TP_ARCH_GEMMA3) return cfg_rope_gemma(path, root, rs, rp, c);
    const cJSON *d = NULL;
    const char *dname = NULL;
    if (cJSON_IsObject(rs) && rs->child) { d = rs; dname = "rope_scaling"; }
    else if (cJSON_IsObject(rp) && rp->child) { d = rp; dname = "rope_parameters"; }
    tp_status s = unique_keys(path, d, dname);
    if (s) return s;
    for (const cJSON *e = d ? d->child : NULL; e; e = e->next)
        if (cJSON_IsObject(e))
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: \"%s\" holds per-layer-type settings (\"%.40s\"); "
                           "only one RoPE for all layers is supported", path, dname,
                           e->string ? e->string : "");
    return cfg_rope_dict(path, root, d, dname, d, dname, 10000.0f, c);
}

/* RoPE from the settings object d (named dname; NULL: defaults): theta from theta_obj, else the
 * top-level rope_theta, else theta_default; then the scaling type and its fields. */
static tp_status cfg_rope_dict(const char *path, const cJSON *root, const cJSON *d, const char *dname,
                               const cJSON *theta_obj, const char *theta_objname, float theta_default,
                               tp_config *c) {
    char field[80];
    tp_status s = unique_keys(path, d, dname);
    if (s) return s;
    const cJSON *th = theta_obj ? cJSON_GetObjectItemCaseSensitive(theta_obj, "rope_theta") : NULL;
    const char *thname = "rope_theta";
    if (absent(th)) th = cJSON_GetObjectItemCaseSensitive(root, "rope_theta");
    else { snprintf(field, sizeof field, "%s.rope_theta", theta_objname); thname = field; }
    c->rope_theta = theta_default;
    if (!absent(th) && (s = get_pos_float(path, th, thname, &c->rope_theta))) return s;
    for (int k = 0; k < 2; k++) {
        const cJSON *prf = cJSON_GetObjectItemCaseSensitive(k ? root : d, "partial_rotary_factor");
        if (!absent(prf) && !(cJSON_IsNumber(prf) && prf->valuedouble == 1.0))
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: \"partial_rotary_factor\" other than 1 is not "
                           "supported", path);
    }

    /* fields a scaling type does not use stay 0, as the GGUF loader leaves them */
    c->rope_scaling = TP_ROPE_NONE;
    c->rope_factor = c->rope_low_freq = c->rope_high_freq = 0.0f;
    c->rope_orig_max_pos = 0;
    if (!d) return TP_OK;
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(d, "rope_type");
    const char *tyname = "rope_type";
    if (absent(ty)) { ty = cJSON_GetObjectItemCaseSensitive(d, "type"); tyname = "type"; }
    if (absent(ty)) return TP_OK; /* transformers: "default" */
    if (!cJSON_IsString(ty))
        return tp_fail(TP_ERR_FORMAT, "%s: \"%s.%s\" must be a string, got %s", path, dname, tyname,
                       json_kind(ty));
    const char *t = ty->valuestring;
    if (strcmp(t, "default") == 0) return TP_OK;
    int llama3 = strcmp(t, "llama3") == 0;
    if (!llama3 && strcmp(t, "linear") != 0)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: %s.%s \"%.40s\" is not supported (default, linear, "
                       "llama3)", path, dname, tyname, t);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(d, "factor");
    snprintf(field, sizeof field, "%s.factor", dname);
    if (absent(f)) return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" is missing", path, field);
    if ((s = get_pos_float(path, f, field, &c->rope_factor))) return s;
    if (!llama3) { c->rope_scaling = TP_ROPE_LINEAR; return TP_OK; }

    c->rope_scaling = TP_ROPE_LLAMA3;
    static const char *const keys[2] = {"low_freq_factor", "high_freq_factor"};
    float *dst[2] = {&c->rope_low_freq, &c->rope_high_freq};
    for (int k = 0; k < 2; k++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(d, keys[k]);
        snprintf(field, sizeof field, "%s.%s", dname, keys[k]);
        if (absent(j)) return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" is missing", path, field);
        if ((s = get_pos_float(path, j, field, dst[k]))) return s;
    }
    if (!(c->rope_high_freq > c->rope_low_freq))
        return tp_fail(TP_ERR_FORMAT, "%s: %s.high_freq_factor (%g) must exceed low_freq_factor (%g)",
                       path, dname, c->rope_high_freq, c->rope_low_freq);
    long long om;
    snprintf(field, sizeof field, "%s.original_max_position_embeddings", dname);
    const cJSON *omj = cJSON_GetObjectItemCaseSensitive(d, "original_max_position_embeddings");
    if (absent(omj)) om = c->max_pos;
    else if ((s = get_int(path, d, "original_max_position_embeddings", 1, 0, 1, CFG_MAX_POS, &om)))
        return tp_fail_ctx(s, "in %s: ", dname);
    c->rope_orig_max_pos = (int)om;
    return TP_OK;
}

/* Sliding-window attention as transformers 5.24 sets it up: Mistral applies "sliding_window"
 * (default 4096) to every layer; Qwen2/Qwen3 only with use_sliding_window, on the layers from
 * max_window_layers (default 28) on; Gemma 3 (default 4096) on the layers of type
 * "sliding_attention", which without "layer_types" are all but every sliding_window_pattern-th
 * (default 6). An explicit "layer_types" list wins (one "sliding_attention" or "full_attention"
 * per layer). */
static tp_status cfg_sliding(const char *path, const cJSON *root, tp_config *c) {
    c->sliding_window = 0;
    memset(c->layer_sliding, 0, sizeof c->layer_sliding);
    if (c->arch == TP_ARCH_LLAMA) return TP_OK;
    tp_status s;
    int qwen = c->arch == TP_ARCH_QWEN2 || c->arch == TP_ARCH_QWEN3;
    if (qwen) {
        int use = 0;
        if ((s = get_bool(path, root, "use_sliding_window", 0, &use)) || !use) return s;
    }
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    if (cJSON_IsNull(sw)) return TP_OK;
    long long w;
    if ((s = get_int(path, root, "sliding_window", 0, 4096, 1, CFG_MAX_POS, &w))) return s;
    if (c->arch == TP_ARCH_GEMMA3) {
        int bidir = 0;
        if ((s = get_bool(path, root, "use_bidirectional_attention", 0, &bidir))) return s;
        if (bidir)
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: use_bidirectional_attention true (an encoder) is not "
                           "supported", path);
    }
    c->sliding_window = (int)w;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (!absent(lt) && c->arch != TP_ARCH_MISTRAL) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layers)
            return tp_fail(TP_ERR_FORMAT, "%s: \"layer_types\" must be a list of %d strings", path, c->n_layers);
        int l = 0;
        for (const cJSON *e = lt->child; e; e = e->next, l++) {
            int on = cJSON_IsString(e) && !strcmp(e->valuestring, "sliding_attention");
            if (!on && !(cJSON_IsString(e) && !strcmp(e->valuestring, "full_attention")))
                return tp_fail(TP_ERR_UNSUPPORTED, "%s: layer_types[%d] must be \"sliding_attention\" or "
                               "\"full_attention\"", path, l);
            tp_config_set_layer_sliding(c, l, on);
        }
    } else if (qwen) {
        long long mwl;
        if ((s = get_int(path, root, "max_window_layers", 0, 28, 0, 1 << 30, &mwl))) return s;
        for (int l = 0; l < c->n_layers; l++) tp_config_set_layer_sliding(c, l, l >= mwl);
    } else if (c->arch == TP_ARCH_GEMMA3) {
        long long pat;
        if ((s = get_int(path, root, "sliding_window_pattern", 0, 6, 1, 1 << 30, &pat))) return s;
        for (int l = 0; l < c->n_layers; l++) tp_config_set_layer_sliding(c, l, (l + 1) % pat != 0);
    } else {
        for (int l = 0; l < c->n_layers; l++) tp_config_set_layer_sliding(c, l, 1);
    }
    int any = 0;
    for (int l = 0; l < c->n_layers; l++) any |= tp_config_layer_sliding(c, l);
    if (!any) c->sliding_window = 0; /* a window no layer uses */
    return TP_OK;
}

/* taper's per-layer widths ("taper_layer_intermediate_size", "taper_layer_num_attention_heads", one
 * integer per layer, both or neither): in run files and checkpoints only, never in an HF export. */
#define KEY_LAYER_FF "taper_layer_intermediate_size"
#define KEY_LAYER_HEADS "taper_layer_num_attention_heads"
static tp_status cfg_widths(const char *path, const cJSON *root, tp_config *c) {
    const cJSON *a[2] = {cJSON_GetObjectItemCaseSensitive(root, KEY_LAYER_FF),
                         cJSON_GetObjectItemCaseSensitive(root, KEY_LAYER_HEADS)};
    const char *key[2] = {KEY_LAYER_FF, KEY_LAYER_HEADS};
    if (absent(a[0]) && absent(a[1])) return TP_OK;
    int v[2][TP_MAX_HET_LAYERS];
    for (int k = 0; k < 2; k++) {
        if (!cJSON_IsArray(a[k]) || cJSON_GetArraySize(a[k]) != c->n_layers || c->n_layers > TP_MAX_HET_LAYERS)
            return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" must be an array of num_hidden_layers (%d) integers "
                           "(at most %d layers)", path, key[k], c->n_layers, TP_MAX_HET_LAYERS);
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, a[k]) {
            if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int)e->valuedouble || e->valuedouble < 1 ||
                e->valuedouble > (k ? c->n_heads : c->d_ff))
                return tp_fail(TP_ERR_FORMAT, "%s: \"%s\"[%d] must be an integer in [1, %d]", path, key[k], i,
                               k ? c->n_heads : c->d_ff);
            v[k][i++] = (int)e->valuedouble;
        }
    }
    tp_config_set_widths(c, v[0], v[1]);
    return TP_OK;
}

static tp_status cfg_parse(const char *path, const cJSON *root, tp_config *c) {
    tp_status s;
    if ((s = unique_keys(path, root, NULL)) || (s = cfg_arch(path, root, &c->arch))) return s;
    /* transformers 5.24 defaults, per tp_arch */
    static const int def_max_pos[] = {2048, 131072, 32768, 32768, 131072};
    static const int def_head_dim[] = {0, 0, 0, 128, 256}; /* 0: hidden_size / heads */
    if ((s = get_int32(path, root, "hidden_size", 1, 0, 1, CFG_MAX_DIM, &c->d_model)) ||
        (s = get_int32(path, root, "intermediate_size", 1, 0, 1, CFG_MAX_DIM, &c->d_ff)) ||
        (s = get_int32(path, root, "num_hidden_layers", 1, 0, 1, CFG_MAX_LAYERS, &c->n_layers)) ||
        (s = get_int32(path, root, "num_attention_heads", 1, 0, 1, CFG_MAX_HEADS, &c->n_heads)) ||
        (s = get_int32(path, root, "num_key_value_heads", 0, c->n_heads, 1, CFG_MAX_HEADS,
                       &c->n_kv_heads)) ||
        (s = get_int32(path, root, "head_dim", 0, def_head_dim[c->arch], 1, CFG_MAX_DIM, &c->head_dim)) ||
        (s = get_int32(path, root, "vocab_size", 1, 0, 1, CFG_MAX_VOCAB, &c->vocab)) ||
        (s = get_int32(path, root, "max_position_embeddings", 0, def_max_pos[c->arch], 1,
                       CFG_MAX_POS, &c->max_pos)))
        return s;
    if (c->n_heads % c->n_kv_heads != 0)
        return tp_fail(TP_ERR_FORMAT, "%s: num_attention_heads (%d) is not a multiple of "
                       "num_key_value_heads (%d)", path, c->n_heads, c->n_kv_heads);
    if (c->head_dim == 0) {
        if (c->d_model % c->n_heads != 0)
            return tp_fail(TP_ERR_FORMAT, "%s: no \"head_dim\" and hidden_size (%d) is not a multiple "
                           "of num_attention_heads (%d)", path, c->d_model, c->n_heads);
        c->head_dim = c->d_model / c->n_heads;
    }

    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "rms_norm_eps");
    c->norm_eps = 1e-6f;
    if (!absent(eps) && (s = get_pos_float(path, eps, "rms_norm_eps", &c->norm_eps))) return s;
    if ((s = cfg_rope(path, root, c))) return s;
    int gemma = c->arch == TP_ARCH_GEMMA3;
    if ((s = get_bool(path, root, "tie_word_embeddings", gemma, &c->tie_embeddings))) return s;

    const char *act_key = gemma ? "hidden_activation" : "hidden_act";
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, act_key);
    c->act = gemma ? TP_ACT_GELU_TANH : TP_ACT_SILU;
    if (!absent(act)) {
        if (!cJSON_IsString(act))
            return tp_fail(TP_ERR_FORMAT, "%s: \"%s\" must be a string, got %s", path, act_key,
                           json_kind(act));
        int ok = gemma ? !strcmp(act->valuestring, "gelu_pytorch_tanh")
                       : !strcmp(act->valuestring, "silu") || !strcmp(act->valuestring, "swish");
        if (!ok)
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: %s \"%.40s\" is not supported (%s)", path, act_key,
                           act->valuestring, gemma ? "gelu_pytorch_tanh" : "silu");
    }
    c->attn_bias = c->arch == TP_ARCH_QWEN2;
    if (c->arch != TP_ARCH_QWEN2 && c->arch != TP_ARCH_MISTRAL) {
        int ab, mb = 0;
        if ((s = get_bool(path, root, "attention_bias", 0, &ab)) ||
            (c->arch == TP_ARCH_LLAMA && (s = get_bool(path, root, "mlp_bias", 0, &mb))))
            return s;
        if (ab)
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: attention_bias true (biases on q, k, v and o_proj) is "
                           "not supported for %s", path, cfg_archs[c->arch].cls);
        if (mb)
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: mlp_bias true is not supported", path);
    }
    c->qk_norm = c->arch == TP_ARCH_QWEN3 || gemma;
    c->norm_plus_one = c->sandwich_norm = c->embed_scale = gemma;
    if (gemma) {
        static const char *const caps[] = {"final_logit_softcapping", "attn_logit_softcapping"};
        for (int k = 0; k < 2; k++)
            if (!absent(cJSON_GetObjectItemCaseSensitive(root, caps[k])))
                return tp_fail(TP_ERR_UNSUPPORTED, "%s: \"%s\" is set; soft-capping (Gemma 2) is not "
                               "supported", path, caps[k]);
        const cJSON *qs = cJSON_GetObjectItemCaseSensitive(root, "query_pre_attn_scalar");
        c->attn_scale_base = 256.0f;
        if (!absent(qs) && (s = get_pos_float(path, qs, "query_pre_attn_scalar", &c->attn_scale_base))) return s;
    }
    if ((s = cfg_sliding(path, root, c)) || (s = cfg_widths(path, root, c))) return s;
    if ((s = get_token_id(path, root, "bos_token_id", &c->bos_id)) ||
        (s = get_token_id(path, root, "eos_token_id", &c->eos_id)))
        return s;
    char buf[256];
    const char *p = cfg_problem(c, buf, sizeof buf);
    if (p) return tp_fail(TP_ERR_FORMAT, "%s: %s", path, p);
    return TP_OK;
}

tp_status tp_config_from_json(const char *json, const char *path_for_errors, tp_config *c) {
    const char *path = path_for_errors ? path_for_errors : "config.json";
    if (!json) return tp_fail(TP_ERR_ARG, "%s: no text", path);
    cJSON *root = cJSON_Parse(json);
    if (!root && tp_json_valid(json, strlen(json)))
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", path);
    if (!root) return tp_fail(TP_ERR_FORMAT, "%s: not valid JSON", path);
    tp_config tmp;
    memset(&tmp, 0, sizeof tmp);
    tp_status s = cJSON_IsObject(root) ? cfg_parse(path, root, &tmp)
                                       : tp_fail(TP_ERR_FORMAT, "%s: top level is not an object", path);
    cJSON_Delete(root);
    if (!s) *c = tmp;
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* tp_config -> config.json */

/* Shortest decimal that reads back as the same float32, always with '.' or an exponent so
 * Python reads a float. */
static void fmt_f32(float v, char *buf, size_t n) {
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", n - strlen(buf) - 1);
}

static int add_float(cJSON *o, const char *key, float v) {
    char buf[48];
    fmt_f32(v, buf, sizeof buf);
    return cJSON_AddRawToObject(o, key, buf) != NULL;
}

static int add_int_or_null(cJSON *o, const char *key, long long v) {
    return (v < 0 ? cJSON_AddNullToObject(o, key) : cJSON_AddNumberToObject(o, key, (double)v)) != NULL;
}

/* Adds item (NULL: allocation failed) to o, or frees it. */
static int add_object(cJSON *o, const char *key, cJSON *item) {
    if (item && cJSON_AddItemToObject(o, key, item)) return 1;
    cJSON_Delete(item);
    return 0;
}

/* The RoPE object: with rope_theta for "rope_parameters", without for "rope_scaling". */
static cJSON *rope_object(const tp_config *c, int with_theta) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    int ok = 1;
    const char *type = c->rope_scaling == TP_ROPE_LLAMA3 ? "llama3"
                     : c->rope_scaling == TP_ROPE_LINEAR ? "linear" : "default";
    if (with_theta) ok &= add_float(r, "rope_theta", c->rope_theta);
    ok &= cJSON_AddStringToObject(r, "rope_type", type) != NULL;
    if (c->rope_scaling != TP_ROPE_NONE) ok &= add_float(r, "factor", c->rope_factor);
    if (c->rope_scaling == TP_ROPE_LLAMA3) {
        ok &= add_float(r, "low_freq_factor", c->rope_low_freq);
        ok &= add_float(r, "high_freq_factor", c->rope_high_freq);
        ok &= cJSON_AddNumberToObject(r, "original_max_position_embeddings",
                                      c->rope_orig_max_pos) != NULL;
    }
    if (!ok) { cJSON_Delete(r); return NULL; }
    return r;
}

/* Gemma 3's per-layer-type RoPE object. */
static cJSON *rope_object_gemma(const tp_config *c) {
    cJSON *r = cJSON_CreateObject(), *sl = cJSON_CreateObject();
    int ok = r && sl;
    if (ok) {
        ok &= add_float(sl, "rope_theta", c->rope_local_theta);
        ok &= cJSON_AddStringToObject(sl, "rope_type", "default") != NULL;
        ok &= add_object(r, "full_attention", rope_object(c, 1));
        ok &= add_object(r, "sliding_attention", sl);
        sl = NULL;
    }
    cJSON_Delete(sl);
    if (!ok) { cJSON_Delete(r); return NULL; }
    return r;
}

/* "layer_types": one "sliding_attention" / "full_attention" per layer. */
static cJSON *layer_types(const tp_config *c) {
    cJSON *a = cJSON_CreateArray();
    for (int l = 0; a && l < c->n_layers; l++) {
        cJSON *e = cJSON_CreateString(tp_config_layer_sliding(c, l) ? "sliding_attention" : "full_attention");
        if (!e || !cJSON_AddItemToArray(a, e)) { cJSON_Delete(e); cJSON_Delete(a); return NULL; }
    }
    return a;
}

tp_status tp_config_to_json_dtype(const tp_config *c, const char *dtype, char **out) {
    *out = NULL;
    tp_status s = tp_config_validate(c);
    if (s) return s;
    const char *dt = NULL;
    static const char *const dts[][2] = {{"float32", "F32"}, {"float16", "F16"}, {"bfloat16", "BF16"}};
    for (int i = 0; i < 3; i++)
        if (dtype && (strcmp(dtype, dts[i][0]) == 0 || strcmp(dtype, dts[i][1]) == 0)) dt = dts[i][0];
    if (!dt) return tp_fail(TP_ERR_ARG, "config.json dtype \"%s\" is not one of float32, float16, "
                            "bfloat16", dtype ? dtype : "(null)");

    tp_arch arch = c->arch;
    if (arch == TP_ARCH_LLAMA && c->d_model % c->n_heads != 0) arch = TP_ARCH_MISTRAL;
    if (arch == TP_ARCH_GEMMA3 && c->d_model % c->n_heads != 0)
        return tp_fail(TP_ERR_UNSUPPORTED, "config.json: transformers 5.24's Gemma3TextConfig refuses hidden_size "
                       "(%d) not divisible by num_attention_heads (%d); export this model as GGUF instead",
                       c->d_model, c->n_heads);
    int gemma = arch == TP_ARCH_GEMMA3, qwen = arch == TP_ARCH_QWEN2 || arch == TP_ARCH_QWEN3;
    cJSON *o = cJSON_CreateObject(), *a = cJSON_CreateArray();
    int ok = o && a;
    if (ok) {
        /* a belongs to o only once added: delete it ourselves on any failure before that */
        cJSON *cls = cJSON_CreateString(cfg_archs[arch].cls);
        if (!cls || !cJSON_AddItemToArray(a, cls)) {
            cJSON_Delete(cls);
            ok = 0;
        } else if (cJSON_AddItemToObject(o, "architectures", a))
            a = NULL;
        else
            ok = 0;
    }
    cJSON_Delete(a);
    if (ok) {
        ok &= cJSON_AddStringToObject(o, "model_type", cfg_archs[arch].type) != NULL;
        ok &= cJSON_AddNumberToObject(o, "hidden_size", c->d_model) != NULL;
        ok &= cJSON_AddNumberToObject(o, "intermediate_size", c->d_ff) != NULL;
        ok &= cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers) != NULL;
        ok &= cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads) != NULL;
        ok &= cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads) != NULL;
        ok &= cJSON_AddNumberToObject(o, "head_dim", c->head_dim) != NULL;
        ok &= cJSON_AddNumberToObject(o, "vocab_size", c->vocab) != NULL;
        ok &= cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos) != NULL;
        ok &= add_float(o, "rms_norm_eps", c->norm_eps);
        ok &= add_float(o, "rope_theta", c->rope_theta);
        if (gemma) {
            ok &= add_float(o, "rope_local_base_freq", c->rope_local_theta);
            ok &= add_object(o, "rope_parameters", rope_object_gemma(c));
        } else
            ok &= add_object(o, "rope_parameters", rope_object(c, 1));
        if (c->rope_scaling != TP_ROPE_NONE) ok &= add_object(o, "rope_scaling", rope_object(c, 0));
        ok &= cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings) != NULL;
        ok &= cJSON_AddStringToObject(o, gemma ? "hidden_activation" : "hidden_act",
                                      gemma ? "gelu_pytorch_tanh" : "silu") != NULL;
        if (arch == TP_ARCH_LLAMA) {
            ok &= cJSON_AddFalseToObject(o, "attention_bias") != NULL;
            ok &= cJSON_AddFalseToObject(o, "mlp_bias") != NULL;
        }
        if (arch == TP_ARCH_QWEN3 || gemma) ok &= cJSON_AddFalseToObject(o, "attention_bias") != NULL;
        if (arch != TP_ARCH_LLAMA) {
            /* gemma: a window no layer uses still needs a number for transformers' mask setup */
            long long w = c->sliding_window ? c->sliding_window : gemma ? c->max_pos : -1;
            ok &= add_int_or_null(o, "sliding_window", w);
        }
        if (qwen) ok &= cJSON_AddBoolToObject(o, "use_sliding_window", c->sliding_window > 0) != NULL;
        if (qwen || gemma) ok &= add_object(o, "layer_types", layer_types(c));
        if (gemma) {
            if (c->attn_scale_base == floorf(c->attn_scale_base) && c->attn_scale_base < 1e9f)
                ok &= cJSON_AddNumberToObject(o, "query_pre_attn_scalar", c->attn_scale_base) != NULL;
            else /* transformers types it as an int, but computes with whatever it reads */
                ok &= add_float(o, "query_pre_attn_scalar", c->attn_scale_base);
            ok &= cJSON_AddNullToObject(o, "final_logit_softcapping") != NULL;
            ok &= cJSON_AddNullToObject(o, "attn_logit_softcapping") != NULL;
        }
        if (c->hetero) {
            ok &= add_object(o, KEY_LAYER_FF, cJSON_CreateIntArray(c->layer_ff, c->n_layers));
            ok &= add_object(o, KEY_LAYER_HEADS, cJSON_CreateIntArray(c->layer_heads, c->n_layers));
        }
        ok &= cJSON_AddRawToObject(o, "attention_dropout", "0.0") != NULL;
        ok &= add_int_or_null(o, "bos_token_id", c->bos_id);
        ok &= add_int_or_null(o, "eos_token_id", c->eos_id);
        ok &= cJSON_AddStringToObject(o, "dtype", dt) != NULL;        /* transformers >= 4.56 */
        ok &= cJSON_AddStringToObject(o, "torch_dtype", dt) != NULL;  /* older readers */
        ok &= cJSON_AddTrueToObject(o, "use_cache") != NULL;
    }
    char *text = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!text) return tp_fail(TP_ERR_NOMEM, "out of memory while writing config.json");
    size_t n = strlen(text);
    char *res = malloc(n + 2);
    if (!res) { cJSON_free(text); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    memcpy(res, text, n);
    res[n] = '\n';
    res[n + 1] = 0;
    cJSON_free(text);
    *out = res;
    return TP_OK;
}

tp_status tp_config_to_json(const tp_config *c, char **out) {
    return tp_config_to_json_dtype(c, "float32", out);
}
