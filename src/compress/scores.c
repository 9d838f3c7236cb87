/* The importance score file ("format": "taper-importance", "version": 1): writing, and reading
 * with every field and array size validated (messages name the file and the field). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "taper/compress.h"
#include "core/internal.h"

#define SCORES_FORMAT "taper-importance"
#define SCORES_VERSION 1

/* ------------------------------------------------------------------------------------------ */
/* writing */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if (b->p && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
        size_t cap = 2 * (b->cap + (size_t)k + 64);
        char *np = realloc(b->p, cap);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = cap;
    }
}

static void sb_num(sbuf *b, double v) {
    if (isfinite(v)) sb_printf(b, "%.10g", v);
    else sb_printf(b, "null");
}

/* rows x cols doubles as a JSON array (of arrays when rows > 0) added raw to obj. */
static int add_matrix(cJSON *obj, const char *key, const double *x, size_t rows, size_t cols) {
    sbuf b = {0};
    if (rows) sb_printf(&b, "[");
    for (size_t r = 0; r < (rows ? rows : 1); r++) {
        sb_printf(&b, "%s[", r ? ",\n" : "");
        for (size_t c = 0; c < cols; c++) {
            if (c) sb_printf(&b, ",");
            sb_num(&b, x[r * cols + c]);
        }
        sb_printf(&b, "]");
    }
    if (rows) sb_printf(&b, "]");
    int ok = !b.oom && cJSON_AddRawToObject(obj, key, b.p) != NULL;
    free(b.p);
    return ok;
}

static int add_num(cJSON *o, const char *key, double v) {
    return (isfinite(v) ? cJSON_AddNumberToObject(o, key, v) : cJSON_AddNullToObject(o, key)) != NULL;
}

static const char *neuron_source_name(tp_neuron_source s) { return s == TP_NEURON_GATE ? "gate" : "act"; }

tp_status tp_importance_save(const tp_importance *imp, const char *path) {
    size_t L = (size_t)imp->n_layers, nb = imp->block_size > 0 ? L - (size_t)imp->block_size + 1 : 0;
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL;
    ok = ok && cJSON_AddStringToObject(o, "format", SCORES_FORMAT);
    ok = ok && cJSON_AddNumberToObject(o, "version", SCORES_VERSION);
    cJSON *mo = ok ? cJSON_AddObjectToObject(o, "model") : NULL;
    ok = ok && mo;
    if (ok && imp->model) ok = cJSON_AddStringToObject(mo, "source", imp->model) != NULL;
    ok = ok && cJSON_AddNumberToObject(mo, "num_hidden_layers", imp->n_layers);
    ok = ok && cJSON_AddNumberToObject(mo, "hidden_size", imp->d_model);
    ok = ok && cJSON_AddNumberToObject(mo, "num_attention_heads", imp->n_heads);
    ok = ok && cJSON_AddNumberToObject(mo, "num_key_value_heads", imp->n_kv_heads);
    ok = ok && cJSON_AddNumberToObject(mo, "head_dim", imp->head_dim);
    ok = ok && cJSON_AddNumberToObject(mo, "intermediate_size", imp->d_ff);
    cJSON *so = ok ? cJSON_AddObjectToObject(o, "settings") : NULL;
    ok = ok && so;
    if (ok && imp->data) ok = cJSON_AddStringToObject(so, "data", imp->data) != NULL;
    ok = ok && cJSON_AddNumberToObject(so, "samples", imp->n_samples);
    ok = ok && cJSON_AddNumberToObject(so, "seq_len", imp->seq_len);
    ok = ok && cJSON_AddNumberToObject(so, "batch", imp->batch);
    ok = ok && cJSON_AddStringToObject(so, "neuron_source", neuron_source_name(imp->neuron_source));
    ok = ok && cJSON_AddNumberToObject(so, "depth_samples", imp->depth_samples);
    ok = ok && cJSON_AddNumberToObject(so, "block_size", imp->block_size);
    ok = ok && cJSON_AddStringToObject(
                   so, "definition",
                   "per sample s: a_s = agg_seq over its positions of the per-position value; score = agg_batch "
                   "over samples of a_s. mean = mean|v|, l2 = sqrt(sum v^2), var = population variance. "
                   "heads: L2 norm of the head's attention output before o_proj; kv_groups: sum of the group's "
                   "query-head scores; neurons: input of down_proj (act) or gate pre-activation (gate); "
                   "channels: each RMSNorm output (2 per layer + final) scored alone, then summed. "
                   "block_influence: 1 - mean cos(layer input, layer output) over all positions; losses: mean "
                   "next-token NLL over the first depth_samples samples with the layer(s) removed.");
    cJSON *da = ok ? cJSON_AddObjectToObject(o, "default_agg") : NULL;
    ok = ok && da;
    ok = ok && cJSON_AddStringToObject(da, "batch", tp_agg_name((tp_agg)(imp->default_pair / 3)));
    ok = ok && cJSON_AddStringToObject(da, "seq", tp_agg_name((tp_agg)(imp->default_pair % 3)));
    cJSON *arr = ok ? cJSON_AddArrayToObject(o, "aggregations") : NULL;
    ok = ok && arr;
    for (int q = 0; q < TP_AGG_PAIRS && ok; q++) {
        cJSON *a = cJSON_CreateObject();
        ok = a && cJSON_AddItemToArray(arr, a);
        if (!ok) { cJSON_Delete(a); break; }
        ok = ok && cJSON_AddStringToObject(a, "batch", tp_agg_name((tp_agg)(q / 3)));
        ok = ok && cJSON_AddStringToObject(a, "seq", tp_agg_name((tp_agg)(q % 3)));
        ok = ok && add_matrix(a, "heads", imp->heads + (size_t)q * L * imp->n_heads, L, (size_t)imp->n_heads);
        ok = ok && add_matrix(a, "kv_groups", imp->kv_groups + (size_t)q * L * imp->n_kv_heads, L,
                              (size_t)imp->n_kv_heads);
        ok = ok && add_matrix(a, "neurons", imp->neurons + (size_t)q * L * imp->d_ff, L, (size_t)imp->d_ff);
        ok = ok && add_matrix(a, "channels", imp->channels + (size_t)q * imp->d_model, 0, (size_t)imp->d_model);
    }
    cJSON *dp = ok ? cJSON_AddObjectToObject(o, "depth") : NULL;
    ok = ok && dp;
    ok = ok && add_matrix(dp, "block_influence", imp->block_influence, 0, L);
    ok = ok && add_num(dp, "base_loss", imp->base_loss);
    if (ok && imp->layer_loss) ok = add_matrix(dp, "layer_removed_loss", imp->layer_loss, 0, L);
    if (ok && imp->block_loss) ok = add_matrix(dp, "block_removed_loss", imp->block_loss, 0, nb);
    if (ok && imp->block_metric) {
        cJSON *bm = cJSON_AddObjectToObject(dp, "block_metric");
        ok = bm && cJSON_AddStringToObject(bm, "name", imp->block_metric_name) &&
             cJSON_AddBoolToObject(bm, "higher_is_better", imp->block_metric_higher_is_better) &&
             add_num(bm, "base", imp->block_metric_base) && add_matrix(bm, "values", imp->block_metric, 0, nb);
    }
    cJSON *tm = ok ? cJSON_AddObjectToObject(o, "timing") : NULL;
    ok = ok && tm && add_num(tm, "importance_seconds", imp->seconds) &&
         add_num(tm, "importance_tokens_per_s", imp->tokens_per_s) && add_num(tm, "depth_seconds", imp->depth_seconds);
    tp_status s = ok ? tp_write_json_atomic(path, o) : tp_fail(TP_ERR_NOMEM, "out of memory writing %s", path);
    cJSON_Delete(o);
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* reading */

static tp_status get_obj(const char *path, const cJSON *parent, const char *key, const cJSON **out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (!cJSON_IsObject(j)) return tp_fail(TP_ERR_FORMAT, "%s: field \"%s\" is missing or not an object", path, key);
    *out = j;
    return TP_OK;
}

static tp_status get_int(const char *path, const cJSON *parent, const char *where, const char *key, int lo, int hi,
                         int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (!cJSON_IsNumber(j))
        return tp_fail(TP_ERR_FORMAT, "%s: field %s.%s is missing or not a number", path, where, key);
    double v = j->valuedouble;
    if (!(v >= lo && v <= hi) || v != floor(v))
        return tp_fail(TP_ERR_FORMAT, "%s: field %s.%s = %g is not an integer in [%d, %d]", path, where, key, v, lo, hi);
    *out = (int)v;
    return TP_OK;
}

static tp_status get_str(const char *path, const cJSON *parent, const char *where, const char *key, int required,
                         const char **out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(parent, key);
    *out = NULL;
    if (!j && !required) return TP_OK;
    if (!cJSON_IsString(j))
        return tp_fail(TP_ERR_FORMAT, "%s: field %s.%s is missing or not a string", path, where, key);
    *out = j->valuestring;
    return TP_OK;
}

/* One array of n numbers (allow_null: null -> NAN; else every value finite). */
static tp_status get_vec(const char *path, const cJSON *a, const char *field, size_t n, int allow_null, double *out) {
    if (!cJSON_IsArray(a)) return tp_fail(TP_ERR_FORMAT, "%s: %s is missing or not an array", path, field);
    size_t k = (size_t)cJSON_GetArraySize(a);
    if (k != n) return tp_fail(TP_ERR_FORMAT, "%s: %s has %zu entries, expected %zu", path, field, k, n);
    size_t i = 0;
    for (const cJSON *e = a->child; e; e = e->next, i++) {
        if (allow_null && cJSON_IsNull(e)) { out[i] = NAN; continue; }
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble))
            return tp_fail(TP_ERR_FORMAT, "%s: %s[%zu] is not a finite number", path, field, i);
        out[i] = e->valuedouble;
    }
    return TP_OK;
}

static tp_status get_mat(const char *path, const cJSON *parent, const char *where, const char *key, size_t rows,
                         size_t cols, const char *cols_name, double *out) {
    char field[160];
    snprintf(field, sizeof field, "%s.%s", where, key);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (!cJSON_IsArray(a)) return tp_fail(TP_ERR_FORMAT, "%s: %s is missing or not an array", path, field);
    size_t k = (size_t)cJSON_GetArraySize(a);
    if (k != rows)
        return tp_fail(TP_ERR_FORMAT, "%s: %s has %zu rows, expected %zu (num_hidden_layers)", path, field, k, rows);
    size_t r = 0;
    for (const cJSON *e = a->child; e; e = e->next, r++) {
        char f2[200];
        snprintf(f2, sizeof f2, "%s[%zu] (%s)", field, r, cols_name);
        tp_status s = get_vec(path, e, f2, cols, 0, out + r * cols);
        if (s) return s;
    }
    return TP_OK;
}

static tp_status parse_agg(const char *path, const cJSON *o, const char *where, int *pair) {
    const char *b, *q;
    tp_status s;
    if ((s = get_str(path, o, where, "batch", 1, &b)) || (s = get_str(path, o, where, "seq", 1, &q))) return s;
    char buf[64];
    snprintf(buf, sizeof buf, "%s,%s", b, q);
    if (tp_agg_pair_parse(buf, pair))
        return tp_fail(TP_ERR_FORMAT, "%s: %s has batch \"%s\", seq \"%s\"; each must be mean, l2 or var", path,
                       where, b, q);
    return TP_OK;
}

static tp_status load_depth(const char *path, const cJSON *dp, tp_importance *imp) {
    size_t L = (size_t)imp->n_layers;
    tp_status s = get_vec(path, cJSON_GetObjectItemCaseSensitive(dp, "block_influence"), "depth.block_influence", L,
                          1, imp->block_influence);
    if (s) return s;
    const cJSON *bl = cJSON_GetObjectItemCaseSensitive(dp, "base_loss");
    imp->base_loss = NAN;
    if (cJSON_IsNumber(bl)) imp->base_loss = bl->valuedouble;
    else if (bl && !cJSON_IsNull(bl)) return tp_fail(TP_ERR_FORMAT, "%s: depth.base_loss is not a number", path);
    const cJSON *ll = cJSON_GetObjectItemCaseSensitive(dp, "layer_removed_loss");
    if (ll) {
        if (!(imp->layer_loss = malloc(L * sizeof(double)))) return tp_fail(TP_ERR_NOMEM, "out of memory");
        if ((s = get_vec(path, ll, "depth.layer_removed_loss", L, 0, imp->layer_loss))) return s;
        if (!isfinite(imp->base_loss))
            return tp_fail(TP_ERR_FORMAT, "%s: depth.layer_removed_loss is given but depth.base_loss is not", path);
    }
    const cJSON *bk = cJSON_GetObjectItemCaseSensitive(dp, "block_removed_loss");
    if (bk || imp->block_size > 0) {
        if (imp->block_size <= 0)
            return tp_fail(TP_ERR_FORMAT, "%s: depth.block_removed_loss is given but settings.block_size is 0", path);
        size_t nb = L - (size_t)imp->block_size + 1;
        if (!(imp->block_loss = malloc(nb * sizeof(double)))) return tp_fail(TP_ERR_NOMEM, "out of memory");
        if ((s = get_vec(path, bk, "depth.block_removed_loss", nb, 0, imp->block_loss))) return s;
        const cJSON *bm = cJSON_GetObjectItemCaseSensitive(dp, "block_metric");
        if (bm) {
            const char *name;
            if ((s = get_str(path, bm, "depth.block_metric", "name", 1, &name))) return s;
            const cJSON *hb = cJSON_GetObjectItemCaseSensitive(bm, "higher_is_better");
            if (!cJSON_IsBool(hb))
                return tp_fail(TP_ERR_FORMAT, "%s: depth.block_metric.higher_is_better is missing or not a bool", path);
            imp->block_metric_higher_is_better = cJSON_IsTrue(hb);
            const cJSON *base = cJSON_GetObjectItemCaseSensitive(bm, "base");
            imp->block_metric_base = cJSON_IsNumber(base) ? base->valuedouble : NAN;
            if (!(imp->block_metric_name = strdup(name)) || !(imp->block_metric = malloc(nb * sizeof(double))))
                return tp_fail(TP_ERR_NOMEM, "out of memory");
            if ((s = get_vec(path, cJSON_GetObjectItemCaseSensitive(bm, "values"), "depth.block_metric.values", nb, 0,
                             imp->block_metric)))
                return s;
        }
    }
    return TP_OK;
}

static tp_status load_root(const char *path, const cJSON *root, size_t file_len, tp_importance *imp) {
    tp_status s;
    if (!cJSON_IsObject(root)) return tp_fail(TP_ERR_FORMAT, "%s: not a JSON object", path);
    const char *fmt;
    if ((s = get_str(path, root, "(top level)", "format", 1, &fmt))) return s;
    if (strcmp(fmt, SCORES_FORMAT) != 0)
        return tp_fail(TP_ERR_FORMAT, "%s: format is \"%s\", expected \"%s\" (a taper importance file)", path, fmt,
                       SCORES_FORMAT);
    int version;
    if ((s = get_int(path, root, "(top level)", "version", 0, 1 << 30, &version))) return s;
    if (version != SCORES_VERSION)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: version %d is not supported (this taper reads version %d)", path,
                       version, SCORES_VERSION);
    const cJSON *mo = NULL, *so = NULL, *da = NULL, *dp = NULL;
    if ((s = get_obj(path, root, "model", &mo)) || (s = get_obj(path, root, "settings", &so)) ||
        (s = get_obj(path, root, "default_agg", &da)) || (s = get_obj(path, root, "depth", &dp)))
        return s;
    const int MAXD = 1 << 20;
    if ((s = get_int(path, mo, "model", "num_hidden_layers", 1, 4096, &imp->n_layers)) ||
        (s = get_int(path, mo, "model", "hidden_size", 1, MAXD, &imp->d_model)) ||
        (s = get_int(path, mo, "model", "num_attention_heads", 1, 4096, &imp->n_heads)) ||
        (s = get_int(path, mo, "model", "num_key_value_heads", 1, imp->n_heads, &imp->n_kv_heads)) ||
        (s = get_int(path, mo, "model", "head_dim", 1, MAXD, &imp->head_dim)) ||
        (s = get_int(path, mo, "model", "intermediate_size", 1, MAXD, &imp->d_ff)))
        return s;
    if (imp->n_heads % imp->n_kv_heads)
        return tp_fail(TP_ERR_FORMAT, "%s: model.num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       path, imp->n_heads, imp->n_kv_heads);
    const char *src, *data, *ns;
    if ((s = get_str(path, mo, "model", "source", 0, &src)) || (s = get_str(path, so, "settings", "data", 0, &data)) ||
        (s = get_str(path, so, "settings", "neuron_source", 1, &ns)))
        return s;
    if (strcmp(ns, "act") == 0) imp->neuron_source = TP_NEURON_ACT;
    else if (strcmp(ns, "gate") == 0) imp->neuron_source = TP_NEURON_GATE;
    else return tp_fail(TP_ERR_FORMAT, "%s: settings.neuron_source is \"%s\", expected \"act\" or \"gate\"", path, ns);
    if ((s = get_int(path, so, "settings", "samples", 1, 1 << 30, &imp->n_samples)) ||
        (s = get_int(path, so, "settings", "seq_len", 2, 1 << 30, &imp->seq_len)) ||
        (s = get_int(path, so, "settings", "batch", 1, 1 << 30, &imp->batch)) ||
        (s = get_int(path, so, "settings", "depth_samples", 0, imp->n_samples, &imp->depth_samples)) ||
        (s = get_int(path, so, "settings", "block_size", 0, imp->n_layers - 1, &imp->block_size)))
        return s;
    if ((src && !(imp->model = strdup(src))) || (data && !(imp->data = strdup(data))))
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    if ((s = parse_agg(path, da, "default_agg", &imp->default_pair))) return s;

    size_t L = (size_t)imp->n_layers;
    /* every score takes at least two bytes ("0,"): sizes the file cannot hold are rejected before
     * anything is allocated for them */
    double need = (double)TP_AGG_PAIRS * ((double)L * (imp->n_heads + imp->n_kv_heads + imp->d_ff) + imp->d_model);
    if (2 * need > (double)file_len)
        return tp_fail(TP_ERR_FORMAT, "%s: the model sizes imply %.0f scores, more than a %zu-byte file can hold", path,
                       need, file_len);
    imp->heads = malloc(TP_AGG_PAIRS * L * (size_t)imp->n_heads * sizeof(double));
    imp->kv_groups = malloc(TP_AGG_PAIRS * L * (size_t)imp->n_kv_heads * sizeof(double));
    imp->neurons = malloc(TP_AGG_PAIRS * L * (size_t)imp->d_ff * sizeof(double));
    imp->channels = malloc(TP_AGG_PAIRS * (size_t)imp->d_model * sizeof(double));
    imp->block_influence = malloc(L * sizeof(double));
    if (!imp->heads || !imp->kv_groups || !imp->neurons || !imp->channels || !imp->block_influence)
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory", path);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "aggregations");
    if (!cJSON_IsArray(arr)) return tp_fail(TP_ERR_FORMAT, "%s: field \"aggregations\" is missing or not an array", path);
    int seen[TP_AGG_PAIRS] = {0}, i = 0;
    for (const cJSON *a = arr->child; a; a = a->next, i++) {
        char where[64];
        snprintf(where, sizeof where, "aggregations[%d]", i);
        if (!cJSON_IsObject(a)) return tp_fail(TP_ERR_FORMAT, "%s: %s is not an object", path, where);
        int q;
        if ((s = parse_agg(path, a, where, &q))) return s;
        if (seen[q]++) return tp_fail(TP_ERR_FORMAT, "%s: %s repeats %s", path, where, tp_agg_pair_name(q));
        if ((s = get_mat(path, a, where, "heads", L, (size_t)imp->n_heads, "num_attention_heads",
                         imp->heads + (size_t)q * L * imp->n_heads)) ||
            (s = get_mat(path, a, where, "kv_groups", L, (size_t)imp->n_kv_heads, "num_key_value_heads",
                         imp->kv_groups + (size_t)q * L * imp->n_kv_heads)) ||
            (s = get_mat(path, a, where, "neurons", L, (size_t)imp->d_ff, "intermediate_size",
                         imp->neurons + (size_t)q * L * imp->d_ff)))
            return s;
        char f[96];
        snprintf(f, sizeof f, "%s.channels (hidden_size)", where);
        if ((s = get_vec(path, cJSON_GetObjectItemCaseSensitive(a, "channels"), f, (size_t)imp->d_model, 0,
                         imp->channels + (size_t)q * imp->d_model)))
            return s;
    }
    for (int q = 0; q < TP_AGG_PAIRS; q++)
        if (!seen[q])
            return tp_fail(TP_ERR_FORMAT, "%s: aggregations lacks the pair %s (every batch,seq pair is required)", path,
                           tp_agg_pair_name(q));
    if ((s = load_depth(path, dp, imp))) return s;
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(root, "timing");
    const cJSON *t1 = cJSON_GetObjectItemCaseSensitive(tm, "importance_seconds");
    const cJSON *t2 = cJSON_GetObjectItemCaseSensitive(tm, "importance_tokens_per_s");
    const cJSON *t3 = cJSON_GetObjectItemCaseSensitive(tm, "depth_seconds");
    imp->seconds = cJSON_IsNumber(t1) ? t1->valuedouble : NAN;
    imp->tokens_per_s = cJSON_IsNumber(t2) ? t2->valuedouble : NAN;
    imp->depth_seconds = cJSON_IsNumber(t3) ? t3->valuedouble : NAN;
    return TP_OK;
}

tp_status tp_importance_load(const char *path, tp_importance **out) {
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    tp_status s = tp_read_file(path, &text, &len);
    if (s) return tp_fail_ctx(s, "importance scores: ");
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root && tp_json_valid(text, len)) {
        free(text);
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", path);
    }
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        long off = e && e >= text && e <= text + len ? (long)(e - text) : -1;
        free(text);
        return tp_fail(TP_ERR_FORMAT, "%s: not valid JSON (error near byte %ld)", path, off);
    }
    free(text);
    tp_importance *imp = calloc(1, sizeof *imp);
    if (!imp) {
        cJSON_Delete(root);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    imp->base_loss = imp->block_metric_base = NAN;
    s = load_root(path, root, len, imp);
    cJSON_Delete(root);
    if (s) {
        tp_importance_free(imp);
        return s;
    }
    *out = imp;
    return TP_OK;
}

tp_status tp_importance_check_model(const tp_importance *imp, const tp_config *c, const char *what) {
    const struct { const char *name; int have, want; } f[] = {
        {"num_hidden_layers", imp->n_layers, c->n_layers},     {"hidden_size", imp->d_model, c->d_model},
        {"num_attention_heads", imp->n_heads, c->n_heads},     {"num_key_value_heads", imp->n_kv_heads, c->n_kv_heads},
        {"head_dim", imp->head_dim, c->head_dim},              {"intermediate_size", imp->d_ff, c->d_ff}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].have != f[i].want)
            return tp_fail(TP_ERR_ARG, "%s: scores were computed for a model with %s = %d, this model has %d",
                           what ? what : "importance scores", f[i].name, f[i].have, f[i].want);
    return TP_OK;
}
