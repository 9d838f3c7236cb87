/* config.json parse/write and tp_config validation: configs saved by transformers' Llama /
 * Mistral / Qwen2 Config classes with the values AutoConfig reads back
 * (tests/fixtures/st/config/, from tests/ref/st_ref.py), round trips, malformed configs, exact
 * parameter counts, and configs + tiny models left in $TAPER_EXPORT_DIR/st for
 * `st_ref.py --check-written` (transformers must load them to the same architecture). */
#include "tt.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/model.h"
#include "taper/safetensors.h"
#include "taper/util.h"

/* Defined in src/model/config.c; to move into taper/model.h. */

/* ---- helpers ---- */

typedef enum { F_INT, F_I32, F_FLOAT, F_ENUM } ftype;
static const struct { const char *name; size_t off; ftype t; } cfg_fields[] = {
#define FI(n, t) {#n, offsetof(tp_config, n), t}
    FI(arch, F_ENUM),         FI(n_layers, F_INT),      FI(d_model, F_INT),
    FI(n_heads, F_INT),       FI(n_kv_heads, F_INT),    FI(head_dim, F_INT),
    FI(d_ff, F_INT),          FI(vocab, F_INT),         FI(max_pos, F_INT),
    FI(rope_theta, F_FLOAT),  FI(norm_eps, F_FLOAT),    FI(rope_scaling, F_ENUM),
    FI(rope_factor, F_FLOAT), FI(rope_low_freq, F_FLOAT), FI(rope_high_freq, F_FLOAT),
    FI(rope_orig_max_pos, F_INT), FI(tie_embeddings, F_INT), FI(attn_bias, F_INT),
    FI(bos_id, F_I32),        FI(eos_id, F_I32),
#undef FI
};
#define N_FIELDS (sizeof cfg_fields / sizeof cfg_fields[0])

static double field_value(const tp_config *c, size_t i) {
    const char *p = (const char *)c + cfg_fields[i].off;
    switch (cfg_fields[i].t) {
    case F_INT: return *(const int *)(const void *)p;
    case F_I32: return *(const int32_t *)(const void *)p;
    case F_FLOAT: return *(const float *)(const void *)p;
    case F_ENUM: return (double)*(const tp_arch *)(const void *)p; /* both enums are int-sized */
    }
    return 0;
}

/* Every field equal to expected's (floats compared as float32, exactly). */
static void check_fields(const char *label, const tp_config *c, const cJSON *exp) {
    for (size_t i = 0; i < N_FIELDS; i++) {
        const cJSON *e = cJSON_GetObjectItem(exp, cfg_fields[i].name);
        if (!TT_CHECK(cJSON_IsNumber(e), "%s: expected.json lacks %s", label, cfg_fields[i].name))
            continue;
        double got = field_value(c, i);
        double want = cfg_fields[i].t == F_FLOAT ? (double)(float)e->valuedouble : e->valuedouble;
        TT_CHECK(got == want, "%s: %s = %.9g, transformers reads %.9g", label, cfg_fields[i].name,
                 got, want);
    }
}

static int same_config(const tp_config *a, const tp_config *b, char *which, size_t n) {
    for (size_t i = 0; i < N_FIELDS; i++)
        if (field_value(a, i) != field_value(b, i)) {
            snprintf(which, n, "%s: %.9g vs %.9g", cfg_fields[i].name, field_value(a, i),
                     field_value(b, i));
            return 0;
        }
    return 1;
}

static void mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') { *p = 0; mkdir(buf, 0755); *p = '/'; }
    mkdir(buf, 0755);
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    size_t w = fwrite(text, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static int cmp_name64(const void *a, const void *b) { return strcmp(a, b); }

/* Sorted list of the fixture config case names (subdirectories); returns the count. */
static int fixture_cases(char names[][64], int max) {
    char *root = tt_path(tt_fixtures_dir(), "st/config");
    DIR *d = opendir(root);
    int n = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n < max)
            if (e->d_name[0] != '.' && strlen(e->d_name) < 64)
                memcpy(names[n++], e->d_name, strlen(e->d_name) + 1);
        closedir(d);
    }
    free(root);
    qsort(names, (size_t)n, 64, cmp_name64);
    return n;
}

static tp_status parse_file(const char *path, tp_config *c) {
    char *text = NULL;
    tp_status s = tp_read_file(path, &text, NULL);
    if (!s) s = tp_config_from_json(text, path, c);
    free(text);
    return s;
}

/* ---- configs saved by transformers ---- */

TT_TEST(config_fixtures_match_transformers) {
    char names[32][64];
    int n = fixture_cases(names, 32);
    /* tests/ref/st_ref.py writes 8 config cases under st/config */
    TT_CHECK(n == 8, "%d config fixtures, expected 8 (run tests/ref/st_ref.py --out tests/fixtures)", n);
    int compared = 0;
    for (int i = 0; i < n; i++) {
        char rel[160];
        snprintf(rel, sizeof rel, "st/config/%.63s/config.json", names[i]);
        char *cpath = tt_path(tt_fixtures_dir(), rel);
        snprintf(rel, sizeof rel, "st/config/%.63s/expected.json", names[i]);
        char *epath = tt_path(tt_fixtures_dir(), rel);
        cJSON *exp = tt_read_json(epath);
        tp_config c;
        tp_status s = parse_file(cpath, &c);
        if (TT_CHECK(s == TP_OK, "%s: %s", names[i], tp_errmsg()) &&
            TT_CHECK(exp != NULL, "cannot read %s", epath)) {
            check_fields(names[i], &c, exp);
            double np = cJSON_GetObjectItem(exp, "n_params")->valuedouble;
            TT_CHECK((double)tp_config_n_params(&c) == np, "%s: n_params %zu, transformers counts %.0f",
                     names[i], tp_config_n_params(&c), np);
            TT_CHECK(tp_config_validate(&c) == TP_OK, "%s: %s", names[i], tp_errmsg());
            compared++;
        }
        cJSON_Delete(exp);
        free(cpath);
        free(epath);
    }
    TT_CHECK(compared == 8, "compared %d configs with transformers' (expected 8)", compared);
}

/* to_json -> from_json gives back the same config, for every fixture and some odd floats. */
TT_TEST(config_json_roundtrip) {
    char names[32][64];
    int n = fixture_cases(names, 32);
    tp_config cs[40];
    int nc = 0;
    for (int i = 0; i < n && nc < 32; i++) {
        char rel[160];
        snprintf(rel, sizeof rel, "st/config/%.63s/config.json", names[i]);
        char *p = tt_path(tt_fixtures_dir(), rel);
        if (parse_file(p, &cs[nc]) == TP_OK) nc++;
        free(p);
    }
    TT_CHECK(nc == n && nc == 8, "%d of %d fixtures parsed (expected 8)", nc, n);
    if (nc == 0) return;
    tp_config odd = cs[0];
    odd.norm_eps = 3.3333333e-06f;
    odd.rope_theta = 12345.679f;
    odd.bos_id = -1;
    odd.eos_id = -1;
    cs[nc++] = odd;
    tp_config lin = cs[0];
    lin.rope_scaling = TP_ROPE_LINEAR;
    lin.rope_factor = 1.3f;
    cs[nc++] = lin;
    for (int i = 0; i < nc; i++) {
        char *text = NULL;
        tp_config back;
        memset(&back, 0xab, sizeof back);
        if (!TT_CHECK(tp_config_to_json(&cs[i], &text) == TP_OK, "case %d: %s", i, tp_errmsg()))
            continue;
        tp_status s = tp_config_from_json(text, "written", &back);
        char which[128] = "";
        if (TT_CHECK(s == TP_OK, "case %d: %s\n%s", i, tp_errmsg(), text))
            TT_CHECK(same_config(&cs[i], &back, which, sizeof which), "case %d differs: %s", i, which);
        TT_CHECK(strstr(text, "\"head_dim\"") && strstr(text, "\"rope_parameters\"") &&
                 strstr(text, "\"float32\""), "case %d: keys missing", i);
        free(text);
    }
    /* float formatting: shortest text that reads back as the float, always a float literal */
    tp_config c = cs[0];
    c.norm_eps = 1e-5f;
    c.rope_theta = 100000.0f;
    char *text = NULL;
    if (TT_CHECK(tp_config_to_json(&c, &text) == TP_OK, "%s", tp_errmsg())) {
        TT_CHECK(strstr(text, "\"rms_norm_eps\":\t1e-05") != NULL, "eps printed as: %s", text);
        TT_CHECK(strstr(text, "\"rope_theta\":\t100000.0") != NULL, "theta printed as: %s", text);
    }
    free(text);
}

/* ---- malformed configs ---- */

#define GEM(extra) "{\"model_type\":\"gemma3_text\",\"hidden_size\":64,\"intermediate_size\":128," \
                   "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":100" extra "}"
#define LL(extra) "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\"," \
    "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2," \
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":100" extra "}"

static const struct { const char *label, *json; tp_status want; const char *field; } bad_cfgs[] = {
    {"not JSON", "{\"hidden_size\": 64,", TP_ERR_FORMAT, "JSON"},
    {"top level array", "[1,2]", TP_ERR_FORMAT, "object"},
    {"empty object", "{}", TP_ERR_FORMAT, "model_type"},
    {"unknown architecture",
     "{\"architectures\":[\"GPT2LMHeadModel\"],\"hidden_size\":64}", TP_ERR_UNSUPPORTED, "GPT2LMHeadModel"},
    {"unknown model_type", "{\"model_type\":\"gemma\",\"hidden_size\":64}", TP_ERR_UNSUPPORTED, "gemma"},
    {"architecture disagrees",
     "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"llama\"}", TP_ERR_FORMAT, "model_type"},
    {"architectures not a list", "{\"architectures\":\"LlamaForCausalLM\"}", TP_ERR_FORMAT, "architectures"},
    {"missing hidden_size",
     "{\"model_type\":\"llama\",\"intermediate_size\":128,\"num_hidden_layers\":2,"
     "\"num_attention_heads\":4,\"vocab_size\":100}", TP_ERR_FORMAT, "hidden_size"},
    {"string where int expected",
     "{\"model_type\":\"llama\",\"hidden_size\":\"64\",\"intermediate_size\":128,"
     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}", TP_ERR_FORMAT, "hidden_size"},
    {"fractional size", LL(",\"head_dim\":16.5"), TP_ERR_FORMAT, "head_dim"},
    {"negative size",
     "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":-128,"
     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}", TP_ERR_FORMAT,
     "intermediate_size"},
    {"huge size", LL(",\"max_position_embeddings\":1e12"), TP_ERR_FORMAT, "max_position_embeddings"},
    {"zero layers",
     "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
     "\"num_hidden_layers\":0,\"num_attention_heads\":4,\"vocab_size\":100}", TP_ERR_FORMAT,
     "num_hidden_layers"},
    {"heads not divisible by kv heads",
     "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":3,"
     "\"vocab_size\":100}", TP_ERR_FORMAT, "num_key_value_heads"},
    {"duplicate key", LL(",\"num_key_value_heads\":4"), TP_ERR_FORMAT, "num_key_value_heads"},
    {"duplicate key in rope dict",
     LL(",\"rope_parameters\":{\"rope_theta\":1e4,\"rope_theta\":1e6}"), TP_ERR_FORMAT,
     "rope_theta"},
    {"hidden not divisible, no head_dim",
     "{\"model_type\":\"llama\",\"hidden_size\":66,\"intermediate_size\":128,"
     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}", TP_ERR_FORMAT, "head_dim"},
    {"odd head_dim", LL(",\"head_dim\":15"), TP_ERR_FORMAT, "head_dim"},
    {"unsupported rope type (rope_scaling)",
     LL(",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}"), TP_ERR_UNSUPPORTED, "yarn"},
    {"unsupported rope type (rope_parameters)",
     LL(",\"rope_parameters\":{\"rope_type\":\"dynamic\",\"rope_theta\":10000.0,\"factor\":2.0}"),
     TP_ERR_UNSUPPORTED, "dynamic"},
    {"rope type old key", LL(",\"rope_scaling\":{\"type\":\"longrope\",\"factor\":2.0}"),
     TP_ERR_UNSUPPORTED, "longrope"},
    {"llama3 rope missing low_freq_factor",
     LL(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"high_freq_factor\":4.0}"),
     TP_ERR_FORMAT, "low_freq_factor"},
    {"llama3 rope high <= low",
     LL(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":4.0,"
        "\"high_freq_factor\":1.0}"), TP_ERR_FORMAT, "high_freq_factor"},
    {"linear rope without factor", LL(",\"rope_scaling\":{\"rope_type\":\"linear\"}"), TP_ERR_FORMAT,
     "factor"},
    {"rope_scaling a string", LL(",\"rope_scaling\":\"llama3\""), TP_ERR_FORMAT, "rope_scaling"},
    {"per-layer rope", LL(",\"rope_parameters\":{\"full_attention\":{\"rope_type\":\"default\"}}"),
     TP_ERR_UNSUPPORTED, "full_attention"},
    {"partial rotary", LL(",\"partial_rotary_factor\":0.5"), TP_ERR_UNSUPPORTED, "partial_rotary_factor"},
    {"negative rope_theta", LL(",\"rope_theta\":-1.0"), TP_ERR_FORMAT, "rope_theta"},
    {"rope_theta a string", LL(",\"rope_parameters\":{\"rope_theta\":\"1e4\"}"), TP_ERR_FORMAT,
     "rope_theta"},
    {"mlp_bias true", LL(",\"mlp_bias\":true"), TP_ERR_UNSUPPORTED, "mlp_bias"},
    {"llama attention_bias true", LL(",\"attention_bias\":true"), TP_ERR_UNSUPPORTED, "attention_bias"},
    {"hidden_act gelu", LL(",\"hidden_act\":\"gelu\""), TP_ERR_UNSUPPORTED, "gelu"},
    {"hidden_act a number", LL(",\"hidden_act\":1"), TP_ERR_FORMAT, "hidden_act"},
    {"rms_norm_eps zero", LL(",\"rms_norm_eps\":0"), TP_ERR_FORMAT, "rms_norm_eps"},
    {"rms_norm_eps a string", LL(",\"rms_norm_eps\":\"1e-5\""), TP_ERR_FORMAT, "rms_norm_eps"},
    {"rms_norm_eps huge", LL(",\"rms_norm_eps\":1e300"), TP_ERR_FORMAT, "rms_norm_eps"},
    {"tie_word_embeddings a string", LL(",\"tie_word_embeddings\":\"yes\""), TP_ERR_FORMAT,
     "tie_word_embeddings"},
    {"eos a string", LL(",\"eos_token_id\":\"2\""), TP_ERR_FORMAT, "eos_token_id"},
    {"bos negative", LL(",\"bos_token_id\":-5"), TP_ERR_FORMAT, "bos_token_id"},
    {"layer_types too short",
     "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":4,"
     "\"num_attention_heads\":4,\"vocab_size\":100,\"use_sliding_window\":true,\"sliding_window\":16,"
     "\"layer_types\":[\"full_attention\"]}", TP_ERR_FORMAT, "layer_types"},
    {"layer_types unknown", GEM(",\"layer_types\":[\"full_attention\",\"chunked_attention\",\"full_attention\"]"),
     TP_ERR_UNSUPPORTED, "layer_types[1]"},
    {"sliding_window zero", GEM(",\"sliding_window\":0"), TP_ERR_FORMAT, "sliding_window"},
    {"gemma3 softcapping", GEM(",\"final_logit_softcapping\":30.0"), TP_ERR_UNSUPPORTED, "final_logit_softcapping"},
    {"gemma3 erf gelu", GEM(",\"hidden_activation\":\"gelu\""), TP_ERR_UNSUPPORTED, "hidden_activation"},
    {"gemma3 bidirectional", GEM(",\"use_bidirectional_attention\":true"), TP_ERR_UNSUPPORTED,
     "use_bidirectional_attention"},
    {"gemma3 rope_parameters flat", GEM(",\"rope_parameters\":{\"rope_type\":\"default\"}"), TP_ERR_FORMAT,
     "full_attention"},
    {"gemma3 sliding rope scaled",
     GEM(",\"rope_parameters\":{\"sliding_attention\":{\"rope_type\":\"linear\",\"factor\":2.0}}"),
     TP_ERR_UNSUPPORTED, "sliding_attention.rope_type"},
    {"gemma3 query_pre_attn_scalar zero", GEM(",\"query_pre_attn_scalar\":0"), TP_ERR_FORMAT,
     "query_pre_attn_scalar"},
    {"multimodal gemma3", "{\"model_type\":\"gemma3\",\"text_config\":{}}", TP_ERR_UNSUPPORTED, "gemma3_text"},
    {"qwen3 attention_bias", "{\"model_type\":\"qwen3\",\"hidden_size\":64,\"intermediate_size\":128,"
     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,\"attention_bias\":true}",
     TP_ERR_UNSUPPORTED, "attention_bias"},
};

TT_TEST(config_malformed) {
    for (size_t i = 0; i < sizeof bad_cfgs / sizeof bad_cfgs[0]; i++) {
        tp_config c, before;
        memset(&c, 0x5a, sizeof c);
        before = c;
        const char *path = "/some/dir/config.json";
        tp_status s = tp_config_from_json(bad_cfgs[i].json, path, &c);
        TT_CHECK(s == bad_cfgs[i].want, "%s: status %d, want %d (%s)", bad_cfgs[i].label, (int)s,
                 (int)bad_cfgs[i].want, s ? tp_errmsg() : "accepted");
        TT_CHECK(strstr(tp_errmsg(), path) != NULL, "%s: message lacks the path: %s",
                 bad_cfgs[i].label, tp_errmsg());
        TT_CHECK(strstr(tp_errmsg(), bad_cfgs[i].field) != NULL, "%s: message lacks \"%s\": %s",
                 bad_cfgs[i].label, bad_cfgs[i].field, tp_errmsg());
        TT_CHECK(memcmp(&c, &before, sizeof c) == 0, "%s: output changed on failure", bad_cfgs[i].label);
    }
}

/* Accepted variations: windows that cut nothing, eos lists, swish, model_type-only. */
TT_TEST(config_accepted_variants) {
    static const struct { const char *json; int32_t eos; int max_pos; } ok[] = {
        {LL(",\"eos_token_id\":[7,8],\"hidden_act\":\"swish\",\"rms_norm_eps\":null"), 7, 2048},
        {LL(",\"eos_token_id\":[],\"sliding_window\":16"), -1, 2048},
        {"{\"model_type\":\"mistral\",\"hidden_size\":64,\"intermediate_size\":128,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
         "\"max_position_embeddings\":4096,\"sliding_window\":4096}", -1, 4096},
        {"{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
         "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"vocab_size\":100,"
         "\"use_sliding_window\":true,\"sliding_window\":4096,\"max_window_layers\":4,"
         "\"max_position_embeddings\":8192,\"eos_token_id\":3}", 3, 8192},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        tp_config c;
        tp_status s = tp_config_from_json(ok[i].json, "ok.json", &c);
        if (TT_CHECK(s == TP_OK, "case %zu: %s", i, tp_errmsg())) {
            TT_CHECK(c.eos_id == ok[i].eos, "case %zu: eos %d", i, (int)c.eos_id);
            TT_CHECK(c.max_pos == ok[i].max_pos, "case %zu: max_pos %d", i, c.max_pos);
            TT_CHECK(c.head_dim == 16 && c.rope_theta == 10000.0f && c.norm_eps == 1e-6f,
                     "case %zu: defaults", i);
        }
    }
}

/* Sliding windows as transformers 5.24 sets them up: Mistral on every layer (4096 when the key is
 * absent), Qwen2 from max_window_layers on (only with use_sliding_window), Gemma 3 on all but
 * every 6th layer (or as layer_types says), and Gemma 3's other defaults. */
TT_TEST(config_sliding_windows_and_gemma_defaults) {
    static const struct { const char *label, *json; int window; const char *layers; } cases[] = {
        {"mistral", "{\"model_type\":\"mistral\",\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":3,"
                    "\"num_attention_heads\":4,\"vocab_size\":100,\"max_position_embeddings\":32768,"
                    "\"sliding_window\":4096}", 4096, "111"},
        {"mistral default", "{\"model_type\":\"mistral\",\"hidden_size\":64,\"intermediate_size\":128,"
                            "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}", 4096, "11"},
        {"mistral null", "{\"model_type\":\"mistral\",\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,\"sliding_window\":null}",
         0, "00"},
        {"qwen2 upper layers", "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,"
                               "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"vocab_size\":100,"
                               "\"use_sliding_window\":true,\"sliding_window\":4096,\"max_window_layers\":2}",
         4096, "0011"},
        {"qwen2 unused", "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"vocab_size\":100,"
                         "\"use_sliding_window\":false,\"sliding_window\":4096,\"max_window_layers\":2}",
         0, "0000"},
        {"gemma3 pattern 2", GEM(",\"sliding_window\":512,\"sliding_window_pattern\":2"), 512, "101"},
        {"gemma3 defaults", GEM(""), 4096, "111"},
        {"gemma3 layer_types", GEM(",\"layer_types\":[\"full_attention\",\"sliding_attention\",\"full_attention\"]"),
         4096, "010"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tp_config c;
        if (!TT_CHECK(tp_config_from_json(cases[i].json, "w.json", &c) == TP_OK, "%s: %s", cases[i].label, tp_errmsg()))
            continue;
        char got[8] = {0};
        for (int l = 0; l < c.n_layers && l < 7; l++) got[l] = tp_config_layer_sliding(&c, l) ? '1' : '0';
        TT_CHECK(c.sliding_window == cases[i].window && !strcmp(got, cases[i].layers), "%s: window %d layers %s",
                 cases[i].label, c.sliding_window, got);
        /* written and read back: the same config */
        char *js = NULL;
        tp_config back;
        TT_CHECK(tp_config_to_json(&c, &js) == TP_OK && tp_config_from_json(js, "back.json", &back) == TP_OK &&
                     memcmp(&back, &c, sizeof c) == 0,
                 "%s: round trip through config.json: %s", cases[i].label, js ? "differs" : tp_errmsg());
        free(js);
    }
    tp_config g;
    if (TT_CHECK(tp_config_from_json(GEM(""), "g.json", &g) == TP_OK, "gemma defaults: %s", tp_errmsg())) {
        TT_CHECK(g.head_dim == 256 && g.attn_scale_base == 256.0f && g.rope_theta == 1e6f && g.rope_local_theta == 1e4f &&
                     g.tie_embeddings == 1 && g.act == TP_ACT_GELU_TANH && g.qk_norm && g.norm_plus_one &&
                     g.sandwich_norm && g.embed_scale && g.max_pos == 131072,
                 "gemma3 defaults: head_dim %d scalar %g theta %g/%g tied %d", g.head_dim, g.attn_scale_base, g.rope_theta,
                 g.rope_local_theta, g.tie_embeddings);
        /* params: per layer 4 norms of d and 2 of head_dim on top of the Llama count */
        size_t d = 64, q = 4 * 256, ff = 128;
        size_t want = 100 * d + 3 * (4 * d + 2 * 256 + 2 * d * q + 2 * d * q + 3 * d * ff) + d;
        TT_CHECK(tp_config_n_params(&g) == want, "gemma3 params %zu, want %zu", tp_config_n_params(&g), want);
        g.n_heads = 3;
        g.n_kv_heads = 3;
        g.d_model = 64;
        char *js = NULL;
        TT_CHECK(tp_config_to_json(&g, &js) == TP_ERR_UNSUPPORTED && strstr(tp_errmsg(), "GGUF"),
                 "gemma3 with hidden %% heads != 0 refused for transformers: %s", tp_errmsg());
        free(js);
    }
}

/* ---- validation and parameter count ---- */

static tp_config small_config(void) {
    tp_config c;
    memset(&c, 0, sizeof c);
    c.arch = TP_ARCH_LLAMA;
    c.n_layers = 1; c.d_model = 4; c.n_heads = 2; c.n_kv_heads = 1; c.head_dim = 2;
    c.d_ff = 6; c.vocab = 10; c.max_pos = 16;
    c.rope_theta = 10000.0f; c.norm_eps = 1e-5f;
    c.rope_scaling = TP_ROPE_NONE; c.rope_factor = 0.0f;
    c.bos_id = -1; c.eos_id = -1;
    return c;
}

TT_TEST(config_n_params_exact) {
    /* untied: emb 40 + lm_head 40 + layer (norms 8 + q 16 + k,v 16 + o 16 + mlp 72 = 128)
     * + final norm 4 = 212 */
    tp_config c = small_config();
    TT_CHECK(tp_config_n_params(&c) == 212, "untied: %zu", tp_config_n_params(&c));
    c.tie_embeddings = 1;
    TT_CHECK(tp_config_n_params(&c) == 172, "tied: %zu", tp_config_n_params(&c));
    c.arch = TP_ARCH_QWEN2;
    c.attn_bias = 1; /* + q bias 4 + k,v bias 2 + 2 */
    TT_CHECK(tp_config_n_params(&c) == 180, "qwen2 tied: %zu", tp_config_n_params(&c));
    c.n_layers = 3; /* + 2 more layers of 136 */
    TT_CHECK(tp_config_n_params(&c) == 452, "3 layers: %zu", tp_config_n_params(&c));
    c.n_kv_heads = 0;
    TT_CHECK(tp_config_n_params(&c) == 0, "invalid config counted");
}

TT_TEST(config_validate_rejects) {
    tp_config base = small_config();
    TT_CHECK(tp_config_validate(&base) == TP_OK, "%s", tp_errmsg());
    static const char *what[] = {"num_key_value_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                                 "attn_bias", "attn_bias", "high_freq_factor", "vocab_size",
                                 "rope_theta", "architecture", "factor", "tie"};
    for (int k = 0; k < 12; k++) {
        tp_config c = base;
        switch (k) {
        case 0: c.n_kv_heads = 0; break;
        case 1: c.n_heads = 3; c.n_kv_heads = 2; break;
        case 2: c.head_dim = 3; break;
        case 3: c.norm_eps = 0; break;
        case 4: c.attn_bias = 1; break;                 /* Llama has no q/k/v-only bias */
        case 5: c.arch = TP_ARCH_QWEN2; break;          /* Qwen2 always has them */
        case 6: c.rope_scaling = TP_ROPE_LLAMA3; c.rope_factor = 8; c.rope_low_freq = 4;
                c.rope_high_freq = 1; c.rope_orig_max_pos = 8; break;
        case 7: c.vocab = -1; break;
        case 8: c.rope_theta = NAN; break;
        case 9: c.arch = (tp_arch)7; break;
        case 10: c.rope_scaling = TP_ROPE_LINEAR; c.rope_factor = 0; break;
        case 11: c.tie_embeddings = 2; break;
        }
        TT_CHECK(tp_config_validate(&c) == TP_ERR_ARG, "case %d accepted", k);
        TT_CHECK(strstr(tp_errmsg(), what[k]) != NULL, "case %d: message lacks %s: %s", k, what[k],
                 tp_errmsg());
        char *text = (char *)1;
        TT_CHECK(tp_config_to_json(&c, &text) == TP_ERR_ARG && text == NULL, "case %d written", k);
    }
    char *text = NULL;
    TT_CHECK(tp_config_to_json_dtype(&base, "int8", &text) == TP_ERR_ARG && !text, "dtype int8");
}

/* ---- written for st_ref.py --check-written ---- */

/* Where files for `st_ref.py --check-written` go: $TAPER_EXPORT_DIR/st (kept; scripts/ref.sh
 * checks them), else the scratch directory. */
static const char *ref_out_dir(void) {
    static char buf[1024];
    const char *e = getenv("TAPER_EXPORT_DIR");
    snprintf(buf, sizeof buf, "%s/st", e && *e ? e : tt_tmp_dir());
    return buf;
}

/* Writes dir/config.json for c and dir/expected.json with what taper itself reads back;
 * returns the config read back (arch may become Mistral, see config.c). */
static int write_config_case(const char *dir, const tp_config *c, const char *dtype, tp_config *back) {
    mkdir_p(dir);
    char *text = NULL;
    if (!TT_CHECK(tp_config_to_json_dtype(c, dtype, &text) == TP_OK, "%s: %s", dir, tp_errmsg()))
        return 0;
    char *cp = tt_path(dir, "config.json"), *ep = tt_path(dir, "expected.json");
    int ok = TT_CHECK(write_text(cp, text) == 0, "cannot write %s", cp);
    tp_status s = tp_config_from_json(text, cp, back);
    ok &= TT_CHECK(s == TP_OK, "%s: %s", cp, tp_errmsg());
    if (s == TP_OK) {
        char which[128] = "";
        tp_config cmp = *back;
        cmp.arch = c->arch; /* the only field the writer may change */
        TT_CHECK(same_config(c, &cmp, which, sizeof which), "%s: read back differs: %s", dir, which);
        int fallback = c->arch == TP_ARCH_LLAMA && c->d_model % c->n_heads != 0;
        TT_CHECK(back->arch == (fallback ? TP_ARCH_MISTRAL : c->arch), "%s: arch %d", dir, back->arch);
        cJSON *e = cJSON_CreateObject();
        for (size_t i = 0; i < N_FIELDS; i++)
            cJSON_AddNumberToObject(e, cfg_fields[i].name, field_value(back, i));
        cJSON_AddNumberToObject(e, "n_params", (double)tp_config_n_params(back));
        char *et = cJSON_Print(e);
        ok &= TT_CHECK(write_text(ep, et) == 0, "cannot write %s", ep);
        cJSON_free(et);
        cJSON_Delete(e);
    }
    free(text);
    free(cp);
    free(ep);
    return ok;
}

static float lcg_weight(uint64_t *s, float scale, float offset) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return offset + scale * ((float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f);
}

/* config.json + model.safetensors with HF tensor names and random weights for c. */
static void write_model_case(const char *dir, const tp_config *c, const char *dtype, tp_st_dtype sdt) {
    tp_config back;
    if (!write_config_case(dir, c, dtype, &back)) return;
    size_t n = tp_config_n_params(c);
    float *w = malloc(n * sizeof *w);
    if (!w) return;
    uint64_t seed = 99;
    size_t used = 0;
    uint64_t d = (uint64_t)c->d_model, q = (uint64_t)(c->n_heads * c->head_dim);
    uint64_t kv = (uint64_t)(c->n_kv_heads * c->head_dim), ff = (uint64_t)c->d_ff;
    tp_st_writer *wr = NULL;
    tp_st_writer_new(&wr);
    char name[128];
#define ADD(nm, nd, s0, s1, off) do {                                                     \
        uint64_t shp[2] = {s0, s1};                                                       \
        size_t cnt = (size_t)(s0) * ((nd) == 2 ? (size_t)(s1) : 1);                       \
        for (size_t k = 0; k < cnt; k++) w[used + k] = lcg_weight(&seed, 0.2f, off);      \
        tp_st_writer_add(wr, nm, sdt, nd, shp, w + used);                                 \
        used += cnt;                                                                      \
    } while (0)
    ADD("model.embed_tokens.weight", 2, (uint64_t)c->vocab, d, 0.0f);
    for (int l = 0; l < c->n_layers; l++) {
#define LN(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
        ADD(LN("input_layernorm.weight"), 1, d, 0, 1.0f);
        ADD(LN("self_attn.q_proj.weight"), 2, q, d, 0.0f);
        ADD(LN("self_attn.k_proj.weight"), 2, kv, d, 0.0f);
        ADD(LN("self_attn.v_proj.weight"), 2, kv, d, 0.0f);
        if (c->attn_bias) {
            ADD(LN("self_attn.q_proj.bias"), 1, q, 0, 0.0f);
            ADD(LN("self_attn.k_proj.bias"), 1, kv, 0, 0.0f);
            ADD(LN("self_attn.v_proj.bias"), 1, kv, 0, 0.0f);
        }
        ADD(LN("self_attn.o_proj.weight"), 2, d, q, 0.0f);
        ADD(LN("post_attention_layernorm.weight"), 1, d, 0, 1.0f);
        ADD(LN("mlp.gate_proj.weight"), 2, ff, d, 0.0f);
        ADD(LN("mlp.up_proj.weight"), 2, ff, d, 0.0f);
        ADD(LN("mlp.down_proj.weight"), 2, d, ff, 0.0f);
#undef LN
    }
    ADD("model.norm.weight", 1, d, 0, 1.0f);
    if (!c->tie_embeddings) ADD("lm_head.weight", 2, (uint64_t)c->vocab, d, 0.0f);
#undef ADD
    TT_CHECK(used == n, "%s: wrote %zu weights, n_params says %zu", dir, used, n);
    char *path = tt_path(dir, "model.safetensors");
    TT_CHECK(tp_st_write(wr, path) == TP_OK, "%s: %s", path, tp_errmsg());
    tp_st_writer_free(wr);
    free(path);
    free(w);
}

TT_TEST(config_written_for_ref) {
    const char *root = ref_out_dir();
    char names[32][64];
    int n = fixture_cases(names, 32);
    int written = 0;
    for (int i = 0; i < n; i++) { /* every fixture, as taper re-writes it */
        char rel[160];
        snprintf(rel, sizeof rel, "st/config/%.63s/config.json", names[i]);
        char *p = tt_path(tt_fixtures_dir(), rel);
        tp_config c, back;
        if (TT_CHECK(parse_file(p, &c) == TP_OK, "%s", tp_errmsg())) {
            snprintf(rel, sizeof rel, "config/fx_%.63s", names[i]);
            char *dir = tt_path(root, rel);
            written += write_config_case(dir, &c, i % 2 ? "bfloat16" : "float32", &back);
            free(dir);
        }
        free(p);
    }
    /* shapes pruning produces */
    tp_config c = small_config(), back;
    c.n_layers = 3; c.d_model = 576; c.n_heads = 7; c.n_kv_heads = 1; c.head_dim = 64;
    c.d_ff = 1000; c.vocab = 49152; c.max_pos = 8192; c.rope_theta = 100000.0f;
    c.tie_embeddings = 1; c.bos_id = 1; c.eos_id = 2;
    char *dir = tt_path(root, "config/pruned_llama_heads_not_dividing");
    written += write_config_case(dir, &c, "float32", &back);
    free(dir);
    c.arch = TP_ARCH_QWEN2; c.attn_bias = 1; c.d_model = 64; c.n_heads = 4; c.head_dim = 32;
    c.n_kv_heads = 2; c.rope_theta = 1e6f; c.norm_eps = 3.3333333e-06f; c.bos_id = -1; c.eos_id = -1;
    dir = tt_path(root, "config/qwen2_explicit_head_dim");
    written += write_config_case(dir, &c, "float16", &back);
    free(dir);
    c = small_config();
    c.n_layers = 2; c.d_model = 128; c.n_heads = 8; c.n_kv_heads = 2; c.head_dim = 16;
    c.d_ff = 256; c.vocab = 500; c.max_pos = 131072; c.rope_theta = 500000.0f;
    c.rope_scaling = TP_ROPE_LLAMA3; c.rope_factor = 32.0f; c.rope_low_freq = 1.0f;
    c.rope_high_freq = 4.0f; c.rope_orig_max_pos = 8192; c.bos_id = 498; c.eos_id = 499;
    dir = tt_path(root, "config/llama3_rope");
    written += write_config_case(dir, &c, "bfloat16", &back);
    free(dir);
    c.rope_scaling = TP_ROPE_LINEAR; c.rope_factor = 2.5f;
    c.rope_low_freq = c.rope_high_freq = 0.0f; c.rope_orig_max_pos = 0;
    dir = tt_path(root, "config/linear_rope");
    written += write_config_case(dir, &c, "float32", &back);
    free(dir);
    TT_CHECK(written == n + 4, "%d of %d configs written", written, n + 4);

    /* tiny models: transformers must load every weight into the architecture written */
    c = small_config();
    c.n_layers = 2; c.d_model = 32; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 8; c.d_ff = 48;
    c.vocab = 64; c.max_pos = 128; c.tie_embeddings = 1; c.bos_id = 1; c.eos_id = 2;
    dir = tt_path(root, "model/tiny_llama_tied");
    write_model_case(dir, &c, "float32", TP_ST_F32);
    free(dir);
    tp_config q = c;
    q.arch = TP_ARCH_QWEN2; q.attn_bias = 1; q.n_kv_heads = 1; q.tie_embeddings = 0;
    q.rope_theta = 1e6f;
    dir = tt_path(root, "model/tiny_qwen2_bias");
    write_model_case(dir, &q, "float32", TP_ST_F32);
    free(dir);
    tp_config p = c;
    p.d_model = 40; p.n_heads = 3; p.n_kv_heads = 1; p.head_dim = 16; p.tie_embeddings = 0;
    dir = tt_path(root, "model/tiny_pruned_llama_as_mistral");
    write_model_case(dir, &p, "float32", TP_ST_F32);
    free(dir);
    tp_config r = c;
    r.max_pos = 256; r.rope_theta = 500000.0f; r.rope_scaling = TP_ROPE_LLAMA3; r.rope_factor = 8.0f;
    r.rope_low_freq = 1.0f; r.rope_high_freq = 4.0f; r.rope_orig_max_pos = 64;
    dir = tt_path(root, "model/tiny_llama3_bf16");
    write_model_case(dir, &r, "bfloat16", TP_ST_BF16);
    free(dir);
    tt_note("configs and models for `tests/ref/st_ref.py --check-written %s` are in %s", root, root);
}

/* tp_json_at: dotted paths through objects and arrays; NULL for anything missing. */
TT_TEST(json_dotted_path) {
    cJSON *j = cJSON_Parse("{\"a\":{\"b\":[10,{\"c\":2.5}],\"d\":\"x\"},\"e.f\":1}");
    TT_CHECK(j != NULL, "parse");
    const cJSON *v = tp_json_at(j, "a.b.1.c");
    TT_CHECK(cJSON_IsNumber(v) && v->valuedouble == 2.5, "a.b.1.c = 2.5");
    v = tp_json_at(j, "a.b.0");
    TT_CHECK(cJSON_IsNumber(v) && v->valuedouble == 10, "a.b.0 = 10");
    v = tp_json_at(j, "a.d");
    TT_CHECK(cJSON_IsString(v) && !strcmp(v->valuestring, "x"), "a.d = \"x\"");
    TT_CHECK(tp_json_at(j, "a.b.2") == NULL && tp_json_at(j, "a.z.c") == NULL && tp_json_at(j, "e.f") == NULL,
             "missing members and out-of-range indices give NULL");
    TT_CHECK(tp_json_at(j, "") == j, "the empty path is the root");
    cJSON_Delete(j);
}

/* tp_config_load reads only metadata and gives the config tp_model_load gives: an HF folder,
 * the SmolLM2 GGUF (Q4_1 tensors never dequantised) and Gemma 3 (norm offsets, sliding windows). */
TT_TEST(config_load_metadata_only) {
    char *paths[3] = {tt_path(tt_fixtures_dir(), "sparsify/model"), tt_cache_path("SmolLM2-135M-Instruct.Q4_1.gguf"),
                      tt_gemma3_path()};
    int compared = 0, present = 0;
    for (int i = 0; i < 3; i++) {
        if (!paths[i] || access(paths[i], F_OK)) {
            TT_CHECK(i > 0, "fixture sparsify/model missing"); /* it must be there; the cached models may not */
            tt_note("config_load: %s absent (make deps fetches it)", paths[i] ? paths[i] : "(gemma 3)");
            continue;
        }
        present++;
        tp_config c;
        tp_model *m = NULL;
        char *a = NULL, *b = NULL;
        double t0 = tp_time_s();
        tp_status s = tp_config_load(paths[i], &c);
        double dt = tp_time_s() - t0;
        TT_CHECK(s == TP_OK, "tp_config_load %s: %s", paths[i], tp_errmsg());
        if (!s && tp_model_load(paths[i], &m) == TP_OK && !tp_config_to_json(&c, &a) && !tp_config_to_json(&m->cfg, &b)) {
            TT_CHECK(!strcmp(a, b) && tp_config_n_params(&c) == m->n_params, "%s: config from metadata = the loaded "
                     "model's (%zu parameters, %.1f ms)", paths[i], tp_config_n_params(&c), dt * 1e3);
            compared++;
        }
        free(a), free(b);
        tp_model_free(m);
    }
    TT_CHECK(compared == present && compared >= 1, "compared %d models (expected every one present: %d)", compared,
             present);
    tp_config c;
    TT_CHECK(tp_config_load("/nonexistent/model", &c) == TP_ERR_IO && strstr(tp_errmsg(), "/nonexistent/model"),
             "missing path: %s", tp_errmsg());
    for (int i = 0; i < 3; i++) free(paths[i]);
}
