/* prune_plan.json ("format": "taper-prune-plan", "version": 1): the exact source indices a
 * pruned model keeps, written so a prune can be audited and replayed; read back with every
 * field validated (then tp_prune_plan_check against the model). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "taper/compress.h"
#include "core/internal.h"

#define PLAN_FORMAT "taper-prune-plan"
#define PLAN_VERSION 1

static cJSON *int_array(const int *v, int n) {
    cJSON *a = cJSON_CreateIntArray(v, n);
    return a;
}

/* Adds item (NULL: its allocation failed) to o under key, or frees it: 0 when not added. */
static int add_item(cJSON *o, const char *key, cJSON *item) {
    if (item && cJSON_AddItemToObject(o, key, item)) return 1;
    cJSON_Delete(item);
    return 0;
}

static int add_config(cJSON *o, const char *key, const tp_config *c) {
    char *text = NULL;
    if (tp_config_to_json(c, &text)) return 0;
    cJSON *j = cJSON_Parse(text); /* our own text: a failure is out of memory */
    free(text);
    return add_item(o, key, j);
}

static int add_sizes(cJSON *o, const char *key, const tp_config *c, size_t params) {
    cJSON *s = cJSON_AddObjectToObject(o, key);
    return s && cJSON_AddNumberToObject(s, "hidden_size", c->d_model) &&
           cJSON_AddNumberToObject(s, "intermediate_size", c->d_ff) &&
           cJSON_AddNumberToObject(s, "num_attention_heads", c->n_heads) &&
           cJSON_AddNumberToObject(s, "num_key_value_heads", c->n_kv_heads) &&
           cJSON_AddNumberToObject(s, "head_dim", c->head_dim) &&
           cJSON_AddNumberToObject(s, "num_hidden_layers", c->n_layers) &&
           cJSON_AddNumberToObject(s, "params", (double)params);
}

tp_status tp_prune_plan_save(const tp_prune_plan *p, const char *path) {
    const tp_config *c = &p->cfg;
    cJSON *o = cJSON_CreateObject();
    int ok = o && cJSON_AddStringToObject(o, "format", PLAN_FORMAT) && cJSON_AddNumberToObject(o, "version", PLAN_VERSION);
    ok = ok && add_sizes(o, "source", &p->src, p->src_params) && add_sizes(o, "target", c, p->n_params);
    cJSON *r = ok ? cJSON_AddObjectToObject(o, "rules") : NULL;
    ok = ok && r;
    ok = ok && cJSON_AddStringToObject(r, "order", "every index list holds source indices in ascending order");
    ok = ok && cJSON_AddStringToObject(r, "gqa", "whole KV groups kept by the sum of their query-head scores; within "
                                                 "each kept group the same number of query heads kept by score, so "
                                                 "groups stay equal in size; heads listed group by group");
    ok = ok && cJSON_AddStringToObject(r, "channels", "one set of embedding channels for the embeddings, every "
                                                      "RMSNorm weight, every projection and the (tied) lm_head");
    ok = ok && cJSON_AddStringToObject(r, "depth", p->cfg.n_layers == p->src.n_layers ? "none (all layers kept)"
                                                   : tp_depth_rule_name(p->depth_rule));
    if (ok && c->hetero)
        ok = cJSON_AddStringToObject(r, "widths", "per layer: MLP neurons (and query heads per KV group) "
                                                  "redistributed over the layers at the uniform target's totals "
                                                  "(taper prune --per-layer); each layer lists its own") != NULL;
    if (ok && p->agg_pair >= 0) {
        cJSON *a = cJSON_AddObjectToObject(r, "aggregation");
        ok = a && cJSON_AddStringToObject(a, "batch", tp_agg_name((tp_agg)(p->agg_pair / 3))) &&
             cJSON_AddStringToObject(a, "seq", tp_agg_name((tp_agg)(p->agg_pair % 3)));
    }
    if (ok && p->scores) ok = cJSON_AddStringToObject(r, "scores", p->scores) != NULL;
    ok = ok && add_config(o, "source_config", &p->src) && add_config(o, "target_config", c);
    ok = ok && add_item(o, "layers", int_array(p->layers, c->n_layers));
    ok = ok && add_item(o, "channels", int_array(p->channels, c->d_model));
    cJSON *per = ok ? cJSON_AddArrayToObject(o, "per_layer") : NULL;
    ok = ok && per;
    for (int i = 0; i < c->n_layers && ok; i++) {
        cJSON *e = cJSON_CreateObject();
        ok = e && cJSON_AddItemToArray(per, e);
        if (!ok) { cJSON_Delete(e); break; }
        ok = cJSON_AddNumberToObject(e, "source_layer", p->layers[i]) &&
             add_item(e, "kv_groups", int_array(p->kv_groups + (size_t)i * c->n_kv_heads, c->n_kv_heads)) &&
             add_item(e, "heads", int_array(p->heads + (size_t)i * c->n_heads, tp_config_heads(c, i))) &&
             add_item(e, "neurons", int_array(p->neurons + (size_t)i * c->d_ff, tp_config_ff(c, i)));
    }
    tp_status s = ok ? tp_write_json_atomic(path, o) : tp_fail(TP_ERR_NOMEM, "out of memory writing %s", path);
    cJSON_Delete(o);
    return s;
}

/* ------------------------------------------------------------------------------------------ */

/* An index list of exactly n entries, or (got != NULL) of 1..n entries, their count in *got. */
static tp_status get_ints_upto(const char *path, const cJSON *a, const char *field, int n, int *out, int *got) {
    if (!cJSON_IsArray(a)) return tp_fail(TP_ERR_FORMAT, "%s: %s is missing or not an array", path, field);
    int k = cJSON_GetArraySize(a);
    if (got && k >= 1 && k <= n) *got = k;
    else if (k != n)
        return tp_fail(TP_ERR_FORMAT, "%s: %s has %d entries, the target sizes need %s%d", path, field, k,
                       got ? "1 to " : "", n);
    int i = 0;
    for (const cJSON *e = a->child; e; e = e->next, i++) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || fabs(e->valuedouble) > 1e9)
            return tp_fail(TP_ERR_FORMAT, "%s: %s[%d] is not an integer index", path, field, i);
        out[i] = (int)e->valuedouble;
    }
    return TP_OK;
}

static tp_status get_ints(const char *path, const cJSON *a, const char *field, int n, int *out) {
    return get_ints_upto(path, a, field, n, out, NULL);
}

static tp_status get_size(const char *path, const cJSON *o, const char *where, const char *key, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < 1 || j->valuedouble > (1 << 24))
        return tp_fail(TP_ERR_FORMAT, "%s: %s.%s is missing or not a positive integer", path, where, key);
    *out = (int)j->valuedouble;
    return TP_OK;
}

/* The per_layer entries of a plan whose layers, target sizes and source are read; wh / wf
 * (n_layers each) receive the head and neuron counts. */
static tp_status read_per_layer(const char *path, const cJSON *per, tp_prune_plan *p, int *wh, int *wf) {
    const tp_config *c = &p->cfg;
    int i = 0, het = 0;
    tp_status s;
    for (const cJSON *e = per->child; e; e = e->next, i++) {
        char fld[64];
        const cJSON *sl = cJSON_GetObjectItemCaseSensitive(e, "source_layer");
        if (!cJSON_IsNumber(sl) || sl->valuedouble != p->layers[i])
            return tp_fail(TP_ERR_FORMAT, "%s: per_layer[%d].source_layer is missing or differs from layers[%d] = %d",
                           path, i, i, p->layers[i]);
        snprintf(fld, sizeof fld, "per_layer[%d].kv_groups", i);
        if ((s = get_ints(path, cJSON_GetObjectItemCaseSensitive(e, "kv_groups"), fld, c->n_kv_heads,
                          p->kv_groups + (size_t)i * c->n_kv_heads)))
            return s;
        /* per-layer widths: a layer may list fewer heads / neurons than the target's (widest) sizes */
        snprintf(fld, sizeof fld, "per_layer[%d].heads", i);
        if ((s = get_ints_upto(path, cJSON_GetObjectItemCaseSensitive(e, "heads"), fld, c->n_heads,
                               p->heads + (size_t)i * c->n_heads, &wh[i])))
            return s;
        if (wh[i] % c->n_kv_heads)
            return tp_fail(TP_ERR_FORMAT, "%s: %s lists %d heads, not a multiple of num_key_value_heads %d", path, fld,
                           wh[i], c->n_kv_heads);
        snprintf(fld, sizeof fld, "per_layer[%d].neurons", i);
        if ((s = get_ints_upto(path, cJSON_GetObjectItemCaseSensitive(e, "neurons"), fld, c->d_ff,
                               p->neurons + (size_t)i * c->d_ff, &wf[i])))
            return s;
        het |= wh[i] != c->n_heads || wf[i] != c->d_ff;
    }
    if (het) {
        if (c->n_layers > TP_MAX_HET_LAYERS)
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: per-layer widths are supported up to %d layers", path,
                           TP_MAX_HET_LAYERS);
        int mf = 0, mh = 0;
        for (int l = 0; l < c->n_layers; l++) {
            if (wf[l] > mf) mf = wf[l];
            if (wh[l] > mh) mh = wh[l];
        }
        if (mf != c->d_ff || mh != c->n_heads)
            return tp_fail(TP_ERR_FORMAT, "%s: target.intermediate_size / num_attention_heads (%d, %d) must be the "
                           "widest layer's (%d, %d)", path, c->d_ff, c->n_heads, mf, mh);
        tp_config_set_widths(&p->cfg, wf, wh);
        if ((s = tp_config_validate(c))) return tp_fail_ctx(s, "%s: target: ", path);
        p->n_params = tp_config_n_params(c);
    }
    return TP_OK;
}

static tp_status load_plan(const char *path, const cJSON *root, size_t file_len, tp_prune_plan *p) {
    tp_status s;
    if (!cJSON_IsObject(root)) return tp_fail(TP_ERR_FORMAT, "%s: not a JSON object", path);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(f) || strcmp(f->valuestring, PLAN_FORMAT) != 0)
        return tp_fail(TP_ERR_FORMAT, "%s: field \"format\" is not \"%s\" (not a taper prune plan)", path, PLAN_FORMAT);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!cJSON_IsNumber(v)) return tp_fail(TP_ERR_FORMAT, "%s: field \"version\" is missing or not a number", path);
    if (v->valuedouble != PLAN_VERSION)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: version %g is not supported (this taper reads version %d)", path,
                       v->valuedouble, PLAN_VERSION);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "source_config");
    if (!cJSON_IsObject(sc)) return tp_fail(TP_ERR_FORMAT, "%s: field \"source_config\" is missing or not an object", path);
    char *text = cJSON_PrintUnformatted(sc);
    if (!text) return tp_fail(TP_ERR_NOMEM, "out of memory");
    char where[1100];
    snprintf(where, sizeof where, "%s (source_config)", path);
    s = tp_config_from_json(text, where, &p->src);
    free(text);
    if (s) return s;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "target");
    if (!cJSON_IsObject(t)) return tp_fail(TP_ERR_FORMAT, "%s: field \"target\" is missing or not an object", path);
    p->cfg = p->src;
    if ((s = get_size(path, t, "target", "hidden_size", &p->cfg.d_model)) ||
        (s = get_size(path, t, "target", "intermediate_size", &p->cfg.d_ff)) ||
        (s = get_size(path, t, "target", "num_attention_heads", &p->cfg.n_heads)) ||
        (s = get_size(path, t, "target", "num_key_value_heads", &p->cfg.n_kv_heads)) ||
        (s = get_size(path, t, "target", "head_dim", &p->cfg.head_dim)) ||
        (s = get_size(path, t, "target", "num_hidden_layers", &p->cfg.n_layers)))
        return s;
    const tp_config *c = &p->cfg, *a = &p->src;
    if (c->d_model > a->d_model || c->d_ff > a->d_ff || c->n_heads > a->n_heads || c->n_kv_heads > a->n_kv_heads ||
        c->n_layers > a->n_layers)
        return tp_fail(TP_ERR_FORMAT, "%s: a target size is larger than the source_config's", path);
    if (c->head_dim != a->head_dim)
        return tp_fail(TP_ERR_FORMAT, "%s: target.head_dim %d differs from the source's %d (pruning keeps head_dim)",
                       path, c->head_dim, a->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return tp_fail(TP_ERR_FORMAT, "%s: target.num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       path, c->n_heads, c->n_kv_heads);
    { /* provisional per-layer flags (the first layers) until the kept layers are read */
        int *first = malloc((size_t)p->cfg.n_layers * sizeof *first);
        if (!first) return tp_fail(TP_ERR_NOMEM, "out of memory");
        for (int l = 0; l < p->cfg.n_layers; l++) first[l] = l;
        tp_config k;
        tp_config_keep_layers(&p->cfg, first, p->cfg.n_layers, &k);
        memcpy(p->cfg.layer_sliding, k.layer_sliding, sizeof k.layer_sliding);
        p->cfg.sliding_window = k.sliding_window;
        free(first);
    }
    if ((s = tp_config_validate(c))) return tp_fail_ctx(s, "%s: target: ", path);
    p->src_params = tp_config_n_params(a);
    p->n_params = tp_config_n_params(c);
    p->agg_pair = -1;
    p->depth_rule = TP_DEPTH_LIST;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "rules");
    const cJSON *sco = cJSON_GetObjectItemCaseSensitive(r, "scores");
    if (cJSON_IsString(sco) && !(p->scores = strdup(sco->valuestring))) return tp_fail(TP_ERR_NOMEM, "out of memory");
    const cJSON *ag = cJSON_GetObjectItemCaseSensitive(r, "aggregation");
    if (ag) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(ag, "batch"), *q = cJSON_GetObjectItemCaseSensitive(ag, "seq");
        char buf[64];
        snprintf(buf, sizeof buf, "%s,%s", cJSON_IsString(b) ? b->valuestring : "?",
                 cJSON_IsString(q) ? q->valuestring : "?");
        if (tp_agg_pair_parse(buf, &p->agg_pair))
            return tp_fail(TP_ERR_FORMAT, "%s: rules.aggregation is not {batch, seq} from mean, l2, var", path);
    }
    size_t L = (size_t)c->n_layers;
    double need = (double)L * (1 + c->n_kv_heads + c->n_heads + c->d_ff) + c->d_model;
    if (2 * need > (double)file_len) /* each index takes at least two bytes */
        return tp_fail(TP_ERR_FORMAT, "%s: the target sizes imply %.0f indices, more than a %zu-byte file can hold",
                       path, need, file_len);
    p->layers = malloc(L * sizeof(int));
    p->channels = malloc((size_t)c->d_model * sizeof(int));
    p->kv_groups = malloc(L * (size_t)c->n_kv_heads * sizeof(int));
    p->heads = malloc(L * (size_t)c->n_heads * sizeof(int));
    p->neurons = malloc(L * (size_t)c->d_ff * sizeof(int));
    if (!p->layers || !p->channels || !p->kv_groups || !p->heads || !p->neurons)
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    if ((s = get_ints(path, cJSON_GetObjectItemCaseSensitive(root, "layers"), "layers", c->n_layers, p->layers)) ||
        (s = get_ints(path, cJSON_GetObjectItemCaseSensitive(root, "channels"), "channels", c->d_model, p->channels)))
        return s;
    for (int l = 0; l < c->n_layers; l++)
        if (p->layers[l] < 0 || p->layers[l] >= a->n_layers)
            return tp_fail(TP_ERR_FORMAT, "%s: layers[%d] = %d is not a layer of the source (0..%d)", path, l,
                           p->layers[l], a->n_layers - 1);
    { /* the sliding / global types of the kept layers */
        tp_config k;
        tp_config_keep_layers(a, p->layers, c->n_layers, &k);
        memcpy(p->cfg.layer_sliding, k.layer_sliding, sizeof k.layer_sliding);
        p->cfg.sliding_window = k.sliding_window;
    }
    const cJSON *per = cJSON_GetObjectItemCaseSensitive(root, "per_layer");
    if (!cJSON_IsArray(per) || cJSON_GetArraySize(per) != c->n_layers)
        return tp_fail(TP_ERR_FORMAT, "%s: per_layer is missing or does not have target.num_hidden_layers = %d entries",
                       path, c->n_layers);
    int *w = malloc(2 * (size_t)c->n_layers * sizeof *w);
    if (!w) return tp_fail(TP_ERR_NOMEM, "out of memory");
    s = read_per_layer(path, per, p, w, w + c->n_layers);
    free(w);
    if (s) return s;
    if ((s = tp_prune_plan_check(p, &p->src))) return tp_fail_ctx(s, "%s: ", path);
    return TP_OK;
}

tp_status tp_prune_plan_load(const char *path, tp_prune_plan **out) {
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    tp_status s = tp_read_file(path, &text, &len);
    if (s) return tp_fail_ctx(s, "prune plan: ");
    cJSON *root = cJSON_ParseWithLength(text, len);
    int valid = root || tp_json_valid(text, len);
    free(text);
    if (!root && valid) return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", path);
    if (!root) return tp_fail(TP_ERR_FORMAT, "%s: not valid JSON", path);
    tp_prune_plan *p = calloc(1, sizeof *p);
    if (!p) {
        cJSON_Delete(root);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    s = load_plan(path, root, len, p);
    cJSON_Delete(root);
    if (s) {
        tp_prune_plan_free(p);
        return s;
    }
    *out = p;
    return TP_OK;
}
