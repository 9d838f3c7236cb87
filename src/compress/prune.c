/* Structured pruning: building a plan (which layers, embedding channels, KV groups, query heads
 * and MLP neurons survive) from importance scores and target sizes, checking a plan against a
 * model, and applying it by gathering rows/columns into a new, smaller tp_model. The plan file
 * is in plan_io.c; the parameter-budget search in plan.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/compress.h"
#include "rank_internal.h"
#include "model/model_internal.h"

static const char *const rule_names[] = {"auto", "block", "block-metric", "loss", "bi", "list"};

const char *tp_depth_rule_name(tp_depth_rule r) {
    return (unsigned)r < sizeof rule_names / sizeof rule_names[0] ? rule_names[r] : "?";
}

tp_status tp_depth_rule_parse(const char *s, tp_depth_rule *r) {
    for (size_t i = 0; i < sizeof rule_names / sizeof rule_names[0]; i++)
        if (s && strcmp(s, rule_names[i]) == 0) {
            *r = (tp_depth_rule)i;
            return TP_OK;
        }
    return tp_fail(TP_ERR_ARG, "depth metric \"%s\" is not one of auto, block, block-metric, loss, bi",
                   s ? s : "(null)");
}

void tp_prune_plan_free(tp_prune_plan *p) {
    if (!p) return;
    free(p->layers);
    free(p->channels);
    free(p->kv_groups);
    free(p->heads);
    free(p->neurons);
    free(p->scores);
    free(p);
}

/* ------------------------------------------------------------------------------------------ */
/* target sizes */

/* Fills cfg (a copy of src with the target sizes) from shape, resolving kept axes and the
 * GQA defaults, and checks that the target is possible. */
static tp_status resolve_shape(const tp_config *src, const tp_prune_shape *sh, tp_config *cfg) {
    *cfg = *src;
    int rep = src->n_heads / src->n_kv_heads;
#define AXIS(field, opt, name)                                                                          \
    if (sh->field) {                                                                                    \
        if (sh->field < 1)                                                                              \
            return tp_fail(TP_ERR_ARG, "%s %d: %s must be >= 1", opt, sh->field, name);                  \
        if (sh->field > src->field)                                                                     \
            return tp_fail(TP_ERR_ARG, "%s %d: the model has only %d (%s); pruning cannot grow it", opt,  \
                           sh->field, src->field, name);                                                \
        cfg->field = sh->field;                                                                         \
    }
    AXIS(d_model, "hidden", "hidden_size")
    AXIS(d_ff, "ffn", "intermediate_size")
    AXIS(n_heads, "heads", "num_attention_heads")
    AXIS(n_kv_heads, "kv_heads", "num_key_value_heads")
    AXIS(n_layers, "layers", "num_hidden_layers")
#undef AXIS
    if (cfg->n_layers != src->n_layers) { /* provisional per-layer flags until the layers are chosen */
        int *first = malloc((size_t)cfg->n_layers * sizeof *first);
        if (!first) return tp_fail(TP_ERR_NOMEM, "out of memory");
        for (int l = 0; l < cfg->n_layers; l++) first[l] = l;
        tp_config_keep_layers(cfg, first, cfg->n_layers, cfg);
        free(first);
    }
    if (sh->n_kv_heads && !sh->n_heads) cfg->n_heads = sh->n_kv_heads * rep; /* keep the group size */
    if (sh->n_heads && !sh->n_kv_heads) {
        if (sh->n_heads % src->n_kv_heads != 0)
            return tp_fail(TP_ERR_ARG, "heads %d is not a multiple of the model's %d KV groups; give kv_heads too "
                           "(GQA groups must stay equal in size)", sh->n_heads, src->n_kv_heads);
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return tp_fail(TP_ERR_ARG, "heads %d is not a multiple of kv_heads %d (GQA groups must stay equal in size)",
                       cfg->n_heads, cfg->n_kv_heads);
    if (cfg->n_heads / cfg->n_kv_heads > rep)
        return tp_fail(TP_ERR_ARG, "heads %d with kv_heads %d makes GQA groups of %d; the model's groups have %d "
                       "(pruning cannot grow a group)", cfg->n_heads, cfg->n_kv_heads, cfg->n_heads / cfg->n_kv_heads,
                       rep);
    return tp_config_validate(cfg);
}

size_t tp_prune_shape_params(const tp_config *src, const tp_prune_shape *shape) {
    tp_config c;
    if (resolve_shape(src, shape, &c)) {
        tp_clear_error();
        return 0;
    }
    return tp_config_n_params(&c);
}

/* ------------------------------------------------------------------------------------------ */
/* ranking */


/* The k indices (offset + i*stride for i in 0..n-1) with the highest scores, ascending. */
static tp_status top_k(const double *scores, int n, int k, int offset, int *out) {
    tp_ranked *r = malloc((size_t)n * sizeof *r);
    if (!r) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) r[i] = (tp_ranked){scores[i], i};
    qsort(r, (size_t)n, sizeof *r, tp_ranked_desc);
    for (int i = 0; i < k; i++) out[i] = offset + r[i].idx;
    qsort(out, (size_t)k, sizeof *out, tp_int_asc);
    free(r);
    return TP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* depth */

static tp_status choose_layers(const tp_config *src, const tp_importance *imp, tp_depth_rule *rule, const int *drop,
                               int n_drop, int keep, int *layers) {
    int L = src->n_layers, nd = L - keep;
    unsigned char *gone = calloc((size_t)L, 1);
    double *score = malloc((size_t)L * sizeof(double));
    tp_status s = TP_OK;
    if (!gone || !score) {
        free(gone);
        free(score);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    if (drop) {
        *rule = TP_DEPTH_LIST;
        for (int i = 0; i < n_drop && !s; i++) {
            if (drop[i] < 0 || drop[i] >= L)
                s = tp_fail(TP_ERR_ARG, "drop_layers: layer %d does not exist (valid indices are 0-%d)", drop[i],
                            L - 1);
            else if (gone[drop[i]]++)
                s = tp_fail(TP_ERR_ARG, "drop_layers: layer %d is listed twice", drop[i]);
        }
    } else if (nd > 0) {
        tp_depth_rule r = *rule;
        if (!imp) s = tp_fail(TP_ERR_ARG, "layers %d (dropping %d) needs importance scores or drop_layers", keep, nd);
        else if (r == TP_DEPTH_AUTO)
            r = imp->block_loss && imp->block_size == nd ? TP_DEPTH_BLOCK : imp->layer_loss ? TP_DEPTH_LOSS : TP_DEPTH_BI;
        *rule = r;
        if (s) {
            /* reported above */
        } else if (r == TP_DEPTH_BLOCK || r == TP_DEPTH_BLOCK_METRIC) {
            const double *v = r == TP_DEPTH_BLOCK ? imp->block_loss : imp->block_metric;
            int sign = r == TP_DEPTH_BLOCK_METRIC && imp->block_metric_higher_is_better ? 1 : -1;
            if (!v || imp->block_size != nd)
                s = tp_fail(TP_ERR_ARG, "depth metric %s: removing %d of %d needs scores of %d-layer blocks, the "
                            "scores have %s (compute them with the importance job's block = %d%s)",
                            tp_depth_rule_name(r), nd, L, nd, !v ? "none" : "another size", nd,
                            r == TP_DEPTH_BLOCK_METRIC ? " and a block_metric" : "");
            else {
                int best = 0;
                for (int i = 1; i + nd <= L; i++)
                    if (sign * v[i] > sign * v[best]) best = i;
                for (int i = 0; i < nd; i++) gone[best + i] = 1;
            }
        } else if (r == TP_DEPTH_LOSS || r == TP_DEPTH_BI) {
            const double *v = r == TP_DEPTH_LOSS ? imp->layer_loss : imp->block_influence;
            if (!v) s = tp_fail(TP_ERR_ARG, "depth metric %s: the scores have no layer-removal losses "
                                "(compute them with the importance job's depth_samples > 0)", tp_depth_rule_name(r));
            else {
                /* drop the nd layers whose removal costs least: rank by -cost */
                for (int l = 0; l < L; l++) score[l] = -v[l];
                int *worst = malloc((size_t)nd * sizeof(int));
                if (!worst) s = tp_fail(TP_ERR_NOMEM, "out of memory");
                else {
                    for (int l = 0; l < L && !s; l++)
                        if (!isfinite(score[l]))
                            s = tp_fail(TP_ERR_ARG, "depth metric %s: layer %d has no finite score",
                                        tp_depth_rule_name(r), l);
                    if (!s) s = top_k(score, L, nd, 0, worst);
                    for (int i = 0; i < nd && !s; i++) gone[worst[i]] = 1;
                    free(worst);
                }
            }
        } else
            s = tp_fail(TP_ERR_ARG, "depth metric %s cannot choose what to drop", tp_depth_rule_name(r));
    }
    for (int l = 0, k = 0; l < L && !s; l++)
        if (!gone[l]) layers[k++] = l;
    free(gone);
    free(score);
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* plan */

tp_status tp_prune_plan_make(const tp_config *src, const tp_importance *imp, int agg_pair,
                             const tp_prune_shape *shape, tp_depth_rule rule, const int *drop, int n_drop,
                             tp_prune_plan **out) {
    *out = NULL;
    tp_prune_shape sh = *shape;
    tp_status s;
    if (src->hetero)
        return tp_fail(TP_ERR_UNSUPPORTED, "pruning a model that already has per-layer widths is not supported yet "
                       "(prune the uniform model it came from)");
    if (drop) {
        if (n_drop < 0 || n_drop >= src->n_layers)
            return tp_fail(TP_ERR_ARG, "drop_layers lists %d; the model has %d and must keep at least one",
                           n_drop, src->n_layers);
        if (sh.n_layers && sh.n_layers != src->n_layers - n_drop)
            return tp_fail(TP_ERR_ARG, "layers %d disagrees with drop_layers, which leaves %d of %d",
                           sh.n_layers, src->n_layers - n_drop, src->n_layers);
        sh.n_layers = src->n_layers - n_drop;
    }
    tp_config cfg;
    if ((s = resolve_shape(src, &sh, &cfg))) return s;
    int width_cut = cfg.d_model < src->d_model || cfg.d_ff < src->d_ff || cfg.n_heads < src->n_heads ||
                    cfg.n_kv_heads < src->n_kv_heads;
    if (imp) {
        if ((s = tp_importance_check_model(imp, src, "importance scores"))) return s;
        if (agg_pair < 0) agg_pair = imp->default_pair;
        if (agg_pair >= TP_AGG_PAIRS) return tp_fail(TP_ERR_ARG, "aggregation pair %d is out of range", agg_pair);
    } else if (width_cut) {
        return tp_fail(TP_ERR_ARG, "pruning width (hidden, ffn, heads, kv_heads) needs importance scores");
    }
    tp_prune_plan *p = calloc(1, sizeof *p);
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    p->src = *src;
    p->cfg = cfg;
    p->src_params = tp_config_n_params(src);
    p->n_params = tp_config_n_params(&cfg);
    p->agg_pair = imp ? agg_pair : -1;
    p->depth_rule = rule;
    size_t L2 = (size_t)cfg.n_layers;
    p->layers = malloc(L2 * sizeof(int));
    p->channels = malloc((size_t)cfg.d_model * sizeof(int));
    p->kv_groups = malloc(L2 * (size_t)cfg.n_kv_heads * sizeof(int));
    p->heads = malloc(L2 * (size_t)cfg.n_heads * sizeof(int));
    p->neurons = malloc(L2 * (size_t)cfg.d_ff * sizeof(int));
    if (!p->layers || !p->channels || !p->kv_groups || !p->heads || !p->neurons) {
        tp_prune_plan_free(p);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    s = choose_layers(src, imp, &p->depth_rule, drop, n_drop, cfg.n_layers, p->layers);
    if (!s && cfg.n_layers == src->n_layers && !drop) p->depth_rule = TP_DEPTH_AUTO;
    /* sliding / global layer types follow the kept layers */
    if (!s) {
        tp_config_keep_layers(src, p->layers, cfg.n_layers, &p->cfg);
        p->cfg.d_model = cfg.d_model;
        p->cfg.d_ff = cfg.d_ff;
        p->cfg.n_heads = cfg.n_heads;
        p->cfg.n_kv_heads = cfg.n_kv_heads;
    }
    int rep = src->n_heads / src->n_kv_heads, rep2 = cfg.n_heads / cfg.n_kv_heads;
    if (!s && imp) {
        s = top_k(imp->channels + (size_t)agg_pair * src->d_model, src->d_model, cfg.d_model, 0, p->channels);
        for (size_t i = 0; i < L2 && !s; i++) {
            size_t sl = (size_t)p->layers[i];
            const double *hs = imp->heads + ((size_t)agg_pair * src->n_layers + sl) * src->n_heads;
            const double *gs = imp->kv_groups + ((size_t)agg_pair * src->n_layers + sl) * src->n_kv_heads;
            const double *ns = imp->neurons + ((size_t)agg_pair * src->n_layers + sl) * src->d_ff;
            int *kv = p->kv_groups + i * cfg.n_kv_heads, *hd = p->heads + i * cfg.n_heads;
            s = top_k(gs, src->n_kv_heads, cfg.n_kv_heads, 0, kv);
            for (int g = 0; g < cfg.n_kv_heads && !s; g++)
                s = top_k(hs + (size_t)kv[g] * rep, rep, rep2, kv[g] * rep, hd + g * rep2);
            if (!s) s = top_k(ns, src->d_ff, cfg.d_ff, 0, p->neurons + i * cfg.d_ff);
        }
    } else if (!s) {
        for (int c = 0; c < cfg.d_model; c++) p->channels[c] = c;
        for (size_t i = 0; i < L2; i++) {
            for (int g = 0; g < cfg.n_kv_heads; g++) p->kv_groups[i * cfg.n_kv_heads + g] = g;
            for (int h = 0; h < cfg.n_heads; h++) p->heads[i * cfg.n_heads + h] = h;
            for (int j = 0; j < cfg.d_ff; j++) p->neurons[i * cfg.d_ff + j] = j;
        }
    }
    if (s) {
        tp_prune_plan_free(p);
        return s;
    }
    *out = p;
    return TP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* checking */

static tp_status check_list(const int *v, int n, int lo, int hi, const char *what) {
    for (int i = 0; i < n; i++) {
        if (v[i] < lo || v[i] >= hi)
            return tp_fail(TP_ERR_FORMAT, "plan: %s[%d] = %d is outside [%d, %d)", what, i, v[i], lo, hi);
        if (i && v[i] <= v[i - 1])
            return tp_fail(TP_ERR_FORMAT, "plan: %s is not strictly ascending at index %d (%d after %d)", what, i, v[i],
                           v[i - 1]);
    }
    return TP_OK;
}

tp_status tp_prune_plan_check(const tp_prune_plan *p, const tp_config *src) {
    const tp_config *a = &p->src;
    if (src->hetero || a->hetero)
        return tp_fail(TP_ERR_UNSUPPORTED, "pruning a model that already has per-layer widths is not supported yet "
                       "(prune the uniform model it came from)");
    const struct { const char *name; long have, want; } f[] = {
        {"num_hidden_layers", a->n_layers, src->n_layers},     {"hidden_size", a->d_model, src->d_model},
        {"num_attention_heads", a->n_heads, src->n_heads},     {"num_key_value_heads", a->n_kv_heads, src->n_kv_heads},
        {"head_dim", a->head_dim, src->head_dim},              {"intermediate_size", a->d_ff, src->d_ff},
        {"vocab_size", a->vocab, src->vocab},                  {"tie_word_embeddings", a->tie_embeddings, src->tie_embeddings},
        {"attention_bias", a->attn_bias, src->attn_bias}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].have != f[i].want)
            return tp_fail(TP_ERR_ARG, "plan is for a model with %s = %ld, this model has %ld", f[i].name, f[i].have,
                           f[i].want);
    tp_config want;
    tp_prune_shape sh = {p->cfg.d_model, p->cfg.d_ff, p->cfg.n_heads, p->cfg.n_kv_heads, p->cfg.n_layers};
    tp_status s = resolve_shape(src, &sh, &want);
    if (s) return tp_fail_ctx(s, "plan target sizes: ");
    if (p->cfg.head_dim != src->head_dim || p->cfg.vocab != src->vocab)
        return tp_fail(TP_ERR_FORMAT, "plan: the target changes head_dim or vocab_size, which pruning keeps");
    const tp_config *c = &p->cfg;
    int rep = src->n_heads / src->n_kv_heads;
    if ((s = check_list(p->layers, c->n_layers, 0, src->n_layers, "layers")) ||
        (s = check_list(p->channels, c->d_model, 0, src->d_model, "channels")))
        return s;
    for (int i = 0; i < c->n_layers; i++) {
        char what[64];
        snprintf(what, sizeof what, "per_layer[%d].kv_groups", i);
        const int *kv = p->kv_groups + (size_t)i * c->n_kv_heads, *hd = p->heads + (size_t)i * c->n_heads;
        if ((s = check_list(kv, c->n_kv_heads, 0, src->n_kv_heads, what))) return s;
        int rep2 = tp_config_heads(c, i) / c->n_kv_heads;
        for (int g = 0; g < c->n_kv_heads; g++) {
            snprintf(what, sizeof what, "per_layer[%d].heads (group %d)", i, kv[g]);
            if ((s = check_list(hd + g * rep2, rep2, kv[g] * rep, (kv[g] + 1) * rep, what))) return s;
        }
        snprintf(what, sizeof what, "per_layer[%d].neurons", i);
        if ((s = check_list(p->neurons + (size_t)i * c->d_ff, tp_config_ff(c, i), 0, src->d_ff, what))) return s;
    }
    return TP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* applying */

/* dst (nr, nc) = src[rows[i]][cols[j]] with src rows of src_cols floats. */
static void gather(const float *src, size_t src_cols, const int *rows, size_t nr, const int *cols, size_t nc,
                   float *dst) {
#pragma omp parallel for schedule(static) if (nr * nc >= 65536)
    for (size_t i = 0; i < nr; i++) {
        const float *r = src + (size_t)rows[i] * src_cols;
        float *o = dst + i * nc;
        for (size_t j = 0; j < nc; j++) o[j] = r[cols[j]];
    }
}

/* Row indices of kept heads: each head's head_dim rows, in order. */
static void head_rows(const int *heads, int n, int hd, int *rows) {
    for (int h = 0; h < n; h++)
        for (int j = 0; j < hd; j++) rows[h * hd + j] = heads[h] * hd + j;
}

void tp_prune_plan_config(const tp_config *src, const tp_prune_plan *p, tp_config *cfg) {
    tp_config_keep_layers(src, p->layers, p->cfg.n_layers, cfg);
    cfg->d_model = p->cfg.d_model;
    cfg->d_ff = p->cfg.d_ff;
    cfg->n_heads = p->cfg.n_heads;
    cfg->n_kv_heads = p->cfg.n_kv_heads;
    cfg->hetero = 0;
    memset(cfg->layer_ff, 0, sizeof cfg->layer_ff);
    memset(cfg->layer_heads, 0, sizeof cfg->layer_heads);
    if (p->cfg.hetero) tp_config_set_widths(cfg, p->cfg.layer_ff, p->cfg.layer_heads);
}

/* Index lists shared by the per-layer gathers. */
typedef struct {
    int *iota, *qrows, *kvrows;
} gather_idx;

static tp_status gather_idx_alloc(const tp_config *a, const tp_config *c, gather_idx *g) {
    int hd = a->head_dim;
    size_t maxr = (size_t)a->n_heads * hd;
    if ((size_t)a->d_ff > maxr) maxr = (size_t)a->d_ff;
    if ((size_t)a->d_model > maxr) maxr = (size_t)a->d_model;
    if ((size_t)a->vocab > maxr) maxr = (size_t)a->vocab;
    g->iota = malloc(maxr * sizeof(int));
    g->qrows = malloc((size_t)c->n_heads * hd * sizeof(int));
    g->kvrows = malloc((size_t)c->n_kv_heads * hd * sizeof(int));
    if (!g->iota || !g->qrows || !g->kvrows) {
        free(g->iota); free(g->qrows); free(g->kvrows);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < maxr; i++) g->iota[i] = (int)i;
    return TP_OK;
}

static void gather_idx_free(gather_idx *g) {
    free(g->iota); free(g->qrows); free(g->kvrows);
}

/* Layer i of the pruned model (config c) into D from its source layer S (config a). */
static void prune_layer(const tp_config *a, const tp_config *c, const tp_prune_plan *p, int i, const tp_layer *S,
                        tp_layer *D, gather_idx *g) {
    int hd = a->head_dim;
    size_t d = (size_t)a->d_model, d2 = (size_t)c->d_model;
    const int *ch = p->channels, *iota = g->iota;
    int nh2 = tp_config_heads(c, i);
    size_t q2 = (size_t)nh2 * hd, kv2 = (size_t)c->n_kv_heads * hd, ff2 = (size_t)tp_config_ff(c, i);
    size_t q1 = (size_t)a->n_heads * hd, ff1 = (size_t)a->d_ff;
    const int *heads = p->heads + (size_t)i * c->n_heads, *neur = p->neurons + (size_t)i * c->d_ff;
    head_rows(heads, nh2, hd, g->qrows);
    head_rows(p->kv_groups + (size_t)i * c->n_kv_heads, c->n_kv_heads, hd, g->kvrows);
    gather(S->attn_norm, d, iota, 1, ch, d2, D->attn_norm);
    gather(S->wq, d, g->qrows, q2, ch, d2, D->wq);
    gather(S->wk, d, g->kvrows, kv2, ch, d2, D->wk);
    gather(S->wv, d, g->kvrows, kv2, ch, d2, D->wv);
    if (c->attn_bias) {
        gather(S->bq, q1, iota, 1, g->qrows, q2, D->bq);
        gather(S->bk, (size_t)a->n_kv_heads * hd, iota, 1, g->kvrows, kv2, D->bk);
        gather(S->bv, (size_t)a->n_kv_heads * hd, iota, 1, g->kvrows, kv2, D->bv);
    }
    gather(S->wo, q1, ch, d2, g->qrows, q2, D->wo);
    gather(S->mlp_norm, d, iota, 1, ch, d2, D->mlp_norm);
    gather(S->w_gate, d, neur, ff2, ch, d2, D->w_gate);
    gather(S->w_up, d, neur, ff2, ch, d2, D->w_up);
    gather(S->w_down, ff1, ch, d2, neur, ff2, D->w_down);
    if (c->qk_norm) { /* per head_dim: every kept head shares them */
        memcpy(D->q_norm, S->q_norm, (size_t)hd * sizeof(float));
        memcpy(D->k_norm, S->k_norm, (size_t)hd * sizeof(float));
    }
    if (c->sandwich_norm) {
        gather(S->attn_post_norm, d, iota, 1, ch, d2, D->attn_post_norm);
        gather(S->mlp_post_norm, d, iota, 1, ch, d2, D->mlp_post_norm);
        if (c->embed_scale && d2 != d) {
            /* The embeddings enter the residual stream times sqrt(d_model), which falls with
             * the width. Every other addend of the stream leaves a post-norm whose weights
             * (1 + w) are scaled by the same ratio, so the stream as a whole keeps its balance
             * (each norm that reads it is scale-invariant up to eps). */
            float r = (float)(sqrt((double)d2) / sqrt((double)d));
            for (size_t j = 0; j < d2; j++) {
                D->attn_post_norm[j] = r * (1.0f + D->attn_post_norm[j]) - 1.0f;
                D->mlp_post_norm[j] = r * (1.0f + D->mlp_post_norm[j]) - 1.0f;
            }
        }
    }
}

tp_status tp_prune_apply(const tp_model *m, const tp_prune_plan *p, tp_model **out) {
    *out = NULL;
    if (m->stream || !m->tok_emb)
        return tp_fail(TP_ERR_UNSUPPORTED, "prune: %s is streamed; write the pruned model with tp_prune_export_hf",
                       m->source ? m->source : "the model");
    tp_status s = tp_prune_plan_check(p, &m->cfg);
    if (s) return s;
    tp_config cfg;
    tp_prune_plan_config(&m->cfg, p, &cfg);
    tp_model *o = NULL;
    if ((s = tp_model_alloc(&cfg, &o))) return s;
    const tp_config *a = &m->cfg, *c = &cfg;
    gather_idx g;
    if ((s = gather_idx_alloc(a, c, &g))) {
        tp_model_free(o);
        return s;
    }
    size_t d = (size_t)a->d_model, d2 = (size_t)c->d_model, V = (size_t)a->vocab;
    gather(m->tok_emb, d, g.iota, V, p->channels, d2, o->tok_emb);
    if (!c->tie_embeddings) gather(m->lm_head, d, g.iota, V, p->channels, d2, o->lm_head);
    gather(m->final_norm, d, g.iota, 1, p->channels, d2, o->final_norm);
    for (int i = 0; i < c->n_layers; i++) prune_layer(a, c, p, i, &m->layers[p->layers[i]], &o->layers[i], &g);
    gather_idx_free(&g);
    if (m->chat_template && !(o->chat_template = strdup(m->chat_template))) {
        tp_model_free(o);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    *out = o;
    return TP_OK;
}

/* ---- writing the pruned model tensor by tensor ---- */

typedef struct {
    const tp_model *m;        /* the source, loaded or streamed */
    const tp_prune_plan *p;
    tp_model *o;              /* shell of the pruned model: one layer buffer */
    tp_tensor_ref *refs;      /* its tensor table */
    gather_idx g;
    int done;                 /* the pruned layer the shell's buffer holds; -1: none */
    float *rows;              /* source embedding / lm_head rows */
    size_t rows_cap;          /* in rows */
    tp_progress *progress;
} export_ctx;

static tp_status export_fill(void *user, int idx, size_t e0, size_t n, float *dst) {
    export_ctx *x = user;
    const tp_tensor_ref *r = &x->refs[idx];
    const tp_config *a = &x->m->cfg, *c = &x->o->cfg;
    size_t d = (size_t)a->d_model, d2 = (size_t)c->d_model;
    int head = !strcmp(r->name, "lm_head.weight");
    if (head || !strcmp(r->name, "model.embed_tokens.weight")) {
        size_t r0 = e0 / d2, r1 = (e0 + n - 1) / d2 + 1, nr = r1 - r0;
        if (nr > x->rows_cap) {
            float *q = realloc(x->rows, nr * (d + d2) * sizeof(float));
            if (!q) return tp_fail(TP_ERR_NOMEM, "out of memory");
            x->rows = q;
            x->rows_cap = nr;
        }
        tp_status s = tp_model_rows(x->m, head, r0, nr, x->rows);
        if (s) return s;
        float *g = x->rows + nr * d;
        gather(x->rows, d, x->g.iota, nr, x->p->channels, d2, g);
        memcpy(dst, g + (e0 - r0 * d2), n * sizeof(float));
        return TP_OK;
    }
    if (!strcmp(r->name, "model.norm.weight")) {
        gather(x->m->final_norm, d, x->g.iota, 1, x->p->channels, d2, r->data);
        memcpy(dst, r->data + e0, n * sizeof(float));
        return TP_OK;
    }
    int i = -1;
    if (sscanf(r->name, "model.layers.%d.", &i) != 1 || i < 0 || i >= c->n_layers)
        return tp_fail(TP_ERR_ARG, "prune export: unexpected tensor %s", r->name);
    if (x->done != i) {
        tp_status s = tp_model_layer_ready(x->m, x->p->layers[i]);
        if (s) return s;
        prune_layer(a, c, x->p, i, &x->m->layers[x->p->layers[i]], &x->o->layers[i], &x->g);
        x->done = i;
        if (x->progress) tp_progress_update(x->progress, (double)(i + 1));
    }
    memcpy(dst, r->data + e0, n * sizeof(float));
    return TP_OK;
}

tp_status tp_prune_export_hf(const tp_model *m, const tp_prune_plan *p, const char *dir, const char *dtype,
                             tp_progress *progress) {
    tp_status s = tp_prune_plan_check(p, &m->cfg);
    if (s) return s;
    tp_config cfg;
    tp_prune_plan_config(&m->cfg, p, &cfg);
    export_ctx x = {m, p, NULL, NULL, {0}, -1, NULL, 0, progress};
    if ((s = tp_model_alloc_streamed(&cfg, &x.o))) return s;
    x.o->tok = m->tok; /* borrowed: the vocabulary is unchanged */
    x.o->chat_template = m->chat_template;
    int n = tp_model_tensors(x.o, NULL, 0);
    if (!(x.refs = malloc((size_t)n * sizeof *x.refs))) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    else tp_model_tensors(x.o, x.refs, n);
    if (!s) s = gather_idx_alloc(&m->cfg, &cfg, &x.g);
    else x.g.iota = x.g.qrows = x.g.kvrows = NULL;
    if (progress) progress->total = cfg.n_layers;
    if (!s) s = tp_model_save_hf_fill(x.o, dir, dtype, export_fill, &x);
    gather_idx_free(&x.g);
    free(x.refs);
    free(x.rows);
    x.o->tok = NULL;
    x.o->chat_template = NULL;
    tp_model_free(x.o);
    return s;
}
