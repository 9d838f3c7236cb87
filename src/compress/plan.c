/* Parameter-budget search (tp_prune_job.target_params): enumerate shapes on a grid, keep those within the
 * budget's tolerance, prune each with the scores and rank by held-out LM loss. Also composing two
 * plans (pruning in rounds) and parsing layer lists ("12-17,20"). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/compress.h"

void tp_search_opts_default(tp_search_opts *o) {
    memset(o, 0, sizeof *o);
    o->tolerance = 0.05;
    o->max_candidates = 12;
    o->agg_pair = -1;
    o->depth_rule = TP_DEPTH_AUTO;
}

double tp_prune_shape_mem(const tp_config *src, const tp_prune_shape *shape, int ctx, double weight_bytes) {
    size_t np = tp_prune_shape_params(src, shape);
    if (!np) return 0;
    double L = shape->n_layers ? shape->n_layers : src->n_layers, kv = shape->n_kv_heads ? shape->n_kv_heads : src->n_kv_heads;
    return (double)np * weight_bytes + L * 2.0 * kv * (double)src->head_dim * (double)ctx * 2.0;
}

/* Values of one axis: the fixed one, or multiples of step from lo up to full, plus full. */
static int axis_values(int fixed, int full, int step, int lo, int *out, int cap) {
    int n = 0;
    if (fixed) {
        out[n++] = fixed;
        return n;
    }
    for (int v = step; v < full && n < cap - 1; v += step)
        if (v >= lo) out[n++] = v;
    out[n++] = full;
    return n;
}

/* Wider and deeper shapes first, so an even spread covers the grid. */
static int cmp_cand_shape(const void *a, const void *b) {
    const tp_prune_shape *x = &((const tp_prune_candidate *)a)->shape, *y = &((const tp_prune_candidate *)b)->shape;
    if (x->n_layers != y->n_layers) return y->n_layers - x->n_layers;
    if (x->d_model != y->d_model) return y->d_model - x->d_model;
    if (x->n_heads != y->n_heads) return y->n_heads - x->n_heads;
    if (x->n_kv_heads != y->n_kv_heads) return y->n_kv_heads - x->n_kv_heads;
    return y->d_ff - x->d_ff;
}

static int cmp_cand_loss(const void *a, const void *b) {
    double x = ((const tp_prune_candidate *)a)->loss, y = ((const tp_prune_candidate *)b)->loss;
    if (isnan(x) || isnan(y)) return isnan(x) - isnan(y);
    return (x > y) - (x < y);
}

tp_status tp_prune_search(const tp_model *m, const tp_importance *imp, const tp_search_opts *o,
                          tp_prune_candidate **cands, int *n_cands, int *n_total) {
    *cands = NULL;
    *n_cands = *n_total = 0;
    const tp_config *c = &m->cfg;
    if (!imp) return tp_fail(TP_ERR_ARG, "target_params needs importance scores");
    if (o->eval_ids && (o->eval_samples == 0 || o->seq_len < 2))
        return tp_fail(TP_ERR_ARG, "target_params: held-out text needs >= 1 sample of >= 2 tokens");
    if (!(o->tolerance > 0 && o->tolerance < 1)) return tp_fail(TP_ERR_ARG, "tolerance %g must be in (0, 1)", o->tolerance);
    if (o->max_cut < 0 || o->max_cut >= 1) return tp_fail(TP_ERR_ARG, "max_cut %g must be in [0, 1)", o->max_cut);
    if (o->hidden_step < 0 || o->ffn_step < 0 || o->layer_step < 0)
        return tp_fail(TP_ERR_ARG, "search steps must be >= 0 (0: the default)");
    if (!o->target && !(o->target_mem > 0)) return tp_fail(TP_ERR_ARG, "the search needs a parameter or memory target");
    tp_status s = tp_importance_check_model(imp, c, "importance scores");
    if (s) return s;
    int rep = c->n_heads / c->n_kv_heads;
    enum { CAP = 4096 };
    int *hid = malloc(CAP * sizeof(int)), *ffn = malloc(CAP * sizeof(int)), *lay = malloc(CAP * sizeof(int));
    if (!hid || !ffn || !lay) {
        free(hid); free(ffn); free(lay);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    int hstep = o->hidden_step ? o->hidden_step : 64, fstep = o->ffn_step ? o->ffn_step : c->d_ff % 128 == 0 ? 128 : 64;
    int lstep = o->layer_step ? o->layer_step : 1;
    int hlo = hstep, flo = fstep, llo = (c->n_layers + 1) / 2;
    if (o->max_cut > 0) {
        hlo = (int)ceil((1 - o->max_cut) * c->d_model);
        flo = (int)ceil((1 - o->max_cut) * c->d_ff);
        llo = (int)ceil((1 - o->max_cut) * c->n_layers);
    }
    int nhid = axis_values(o->fixed.d_model, c->d_model, hstep, hlo, hid, CAP);
    int nffn = axis_values(o->fixed.d_ff, c->d_ff, fstep, flo, ffn, CAP);
    int nlay = axis_values(o->fixed.n_layers, c->n_layers, lstep, llo, lay, CAP);
    int mem = o->target_mem > 0, ctx = o->mem_ctx > 0 ? o->mem_ctx : 4096;
    double wb = o->mem_weight_bytes > 0 ? o->mem_weight_bytes : 2.0, target = mem ? o->target_mem : (double)o->target;
    size_t cap = 256, n = 0;
    tp_prune_candidate *all = malloc(cap * sizeof *all);
    size_t best_p = 0;
    tp_prune_shape best_sh = {0};
    double lo = target * (1 - o->tolerance), hi = target * (1 + o->tolerance), best_v = 0;
    for (int a = 0; a < nlay && all; a++)
        for (int b = 0; b < nhid && all; b++)
            for (int kv = 1; kv <= c->n_kv_heads && all; kv++)
                for (int r = 1; r <= rep && all; r++)
                    for (int f = 0; f < nffn && all; f++) {
                        tp_prune_shape sh = {hid[b], ffn[f], kv * r, kv, lay[a]};
                        if (o->fixed.n_kv_heads && kv != o->fixed.n_kv_heads) continue;
                        if (o->fixed.n_heads && kv * r != o->fixed.n_heads) continue;
                        size_t np = tp_prune_shape_params(c, &sh);
                        if (!np) continue;
                        double mb = tp_prune_shape_mem(c, &sh, ctx, wb), v = mem ? mb : (double)np;
                        if (!best_p || fabs(v - target) < fabs(best_v - target)) {
                            best_p = np;
                            best_v = v;
                            best_sh = sh;
                        }
                        if (v < lo || v > hi) continue;
                        if (n == cap) {
                            cap *= 2;
                            tp_prune_candidate *na = realloc(all, cap * sizeof *all);
                            if (!na) { free(all); all = NULL; break; }
                            all = na;
                        }
                        all[n++] = (tp_prune_candidate){sh, np, NAN, mb};
                    }
    free(hid); free(ffn); free(lay);
    if (!all) return tp_fail(TP_ERR_NOMEM, "out of memory");
    if (n == 0) {
        free(all);
        char what[96];
        if (mem) snprintf(what, sizeof what, "target_mem %.0f bytes (context %d)", o->target_mem, ctx);
        else snprintf(what, sizeof what, "target_params %zu", o->target);
        if (!best_p)
            return tp_fail(TP_ERR_ARG, "%s: no shape on the grid is possible with the fixed sizes given", what);
        return tp_fail(TP_ERR_ARG, "%s: no shape on the grid (hidden multiple of %d, ffn multiple of %d, equal GQA "
                       "groups, layers >= %d, with the fixed sizes given) is within +-%.0f%%; the closest is hidden "
                       "%d, ffn %d, heads %d, kv_heads %d, layers %d with %zu params%s",
                       what, hstep, fstep, llo, 100 * o->tolerance, best_sh.d_model, best_sh.d_ff, best_sh.n_heads,
                       best_sh.n_kv_heads, best_sh.n_layers, best_p, mem ? " (the memory closest to the target)" : "");
    }
    qsort(all, n, sizeof *all, cmp_cand_shape);
    size_t k = o->max_candidates > 0 && (size_t)o->max_candidates < n ? (size_t)o->max_candidates : n;
    if (k < n) { /* an even spread over the sorted grid */
        for (size_t i = 0; i < k; i++) all[i] = all[k == 1 ? 0 : (size_t)llround((double)i * (double)(n - 1) / (double)(k - 1))];
    }
    if (o->progress) {
        o->progress->total = (double)k;
        o->progress->done = 0;
    }
    for (size_t i = 0; i < k && !s && o->eval_ids; i++) {
        tp_prune_plan *p = NULL;
        tp_model *pm = NULL;
        s = tp_prune_plan_make(c, imp, o->agg_pair, &all[i].shape, o->depth_rule, NULL, 0, &p);
        if (!s) s = tp_prune_apply(m, p, &pm);
        if (!s) s = tp_lm_loss(pm, o->eval_ids, o->eval_samples, o->seq_len, NULL, NULL, &all[i].loss);
        if (s)
            tp_fail_ctx(s, "candidate hidden %d, ffn %d, heads %d, kv_heads %d, layers %d: ", all[i].shape.d_model,
                        all[i].shape.d_ff, all[i].shape.n_heads, all[i].shape.n_kv_heads, all[i].shape.n_layers);
        tp_model_free(pm);
        tp_prune_plan_free(p);
        if (o->progress) tp_progress_update(o->progress, (double)(i + 1));
    }
    if (s) {
        free(all);
        return s;
    }
    if (o->eval_ids) qsort(all, k, sizeof *all, cmp_cand_loss);
    *cands = all;
    *n_cands = (int)k;
    *n_total = (int)n;
    return TP_OK;
}

tp_status tp_prune_plan_compose(const tp_prune_plan *p1, const tp_prune_plan *p2, tp_prune_plan **out) {
    *out = NULL;
    tp_status s = tp_prune_plan_check(p2, &p1->cfg);
    if (s) return tp_fail_ctx(s, "composing plans: the second does not prune the model the first made: ");
    const tp_config *c1 = &p1->cfg, *c = &p2->cfg;
    size_t L = (size_t)c->n_layers;
    tp_prune_plan *p = calloc(1, sizeof *p);
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    p->src = p1->src;
    p->cfg = p2->cfg;
    p->src_params = p1->src_params;
    p->n_params = p2->n_params;
    p->depth_rule = p2->depth_rule;
    p->agg_pair = p2->agg_pair;
    p->scores = p2->scores ? strdup(p2->scores) : NULL;
    p->layers = malloc(L * sizeof(int));
    p->channels = malloc((size_t)c->d_model * sizeof(int));
    p->kv_groups = malloc(L * (size_t)c->n_kv_heads * sizeof(int));
    p->heads = malloc(L * (size_t)c->n_heads * sizeof(int));
    p->neurons = malloc(L * (size_t)c->d_ff * sizeof(int));
    if (!p->layers || !p->channels || !p->kv_groups || !p->heads || !p->neurons || (p2->scores && !p->scores)) {
        tp_prune_plan_free(p);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    /* every index of p2 names a part of p1's model; p1 maps that part to its source index (both
     * lists ascending, so the composition is too) */
    for (int i = 0; i < c->d_model; i++) p->channels[i] = p1->channels[p2->channels[i]];
    for (size_t i = 0; i < L; i++) {
        size_t l1 = (size_t)p2->layers[i]; /* the layer of p1's model it keeps */
        p->layers[i] = p1->layers[l1];
        for (int g = 0; g < c->n_kv_heads; g++)
            p->kv_groups[i * c->n_kv_heads + g] =
                p1->kv_groups[l1 * c1->n_kv_heads + p2->kv_groups[i * c->n_kv_heads + g]];
        for (int h = 0; h < c->n_heads; h++)
            p->heads[i * c->n_heads + h] = p1->heads[l1 * c1->n_heads + p2->heads[i * c->n_heads + h]];
        for (int n = 0; n < c->d_ff; n++)
            p->neurons[i * c->d_ff + n] = p1->neurons[l1 * c1->d_ff + p2->neurons[i * c->d_ff + n]];
    }
    if ((s = tp_prune_plan_check(p, &p->src))) {
        tp_prune_plan_free(p);
        return tp_fail_ctx(s, "composed plan: ");
    }
    *out = p;
    return TP_OK;
}

tp_status tp_layer_list_parse(const char *s, int **out, int *n) {
    *out = NULL;
    *n = 0;
    int cap = 16, k = 0;
    int *v = malloc((size_t)cap * sizeof *v);
    if (!v) return tp_fail(TP_ERR_NOMEM, "out of memory");
    const char *p = s;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b;
        if (end == p || a < 0 || a > 100000) goto bad;
        p = end;
        b = a;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1 || b < a || b > 100000) goto bad;
            p = end;
        }
        for (long i = a; i <= b; i++) {
            if (k == cap) {
                cap *= 2;
                int *nv = realloc(v, (size_t)cap * sizeof *nv);
                if (!nv) {
                    free(v);
                    return tp_fail(TP_ERR_NOMEM, "out of memory");
                }
                v = nv;
            }
            v[k++] = (int)i;
        }
        if (*p == ',') p++;
        else if (*p) goto bad;
    }
    if (k == 0) goto bad;
    *out = v;
    *n = k;
    return TP_OK;
bad:
    free(v);
    return tp_fail(TP_ERR_ARG, "expects a list like 12-17 or 3,7,20-22, got '%s'", s);
}
