/* Parameter-budget search (--target-params): enumerate shapes on a grid, keep those within the
 * budget's tolerance, prune each with the scores and rank by held-out LM loss. */
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
    if (!imp) return tp_fail(TP_ERR_ARG, "--target-params needs importance scores (--scores)");
    if (o->eval_ids && (o->eval_samples == 0 || o->seq_len < 2))
        return tp_fail(TP_ERR_ARG, "--target-params: held-out text needs >= 1 sample of >= 2 tokens");
    if (!(o->tolerance > 0 && o->tolerance < 1)) return tp_fail(TP_ERR_ARG, "tolerance %g must be in (0, 1)", o->tolerance);
    tp_status s = tp_importance_check_model(imp, c, "importance scores");
    if (s) return s;
    int rep = c->n_heads / c->n_kv_heads;
    enum { CAP = 4096 };
    int *hid = malloc(CAP * sizeof(int)), *ffn = malloc(CAP * sizeof(int)), *lay = malloc(CAP * sizeof(int));
    if (!hid || !ffn || !lay) {
        free(hid); free(ffn); free(lay);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    int nhid = axis_values(o->fixed.d_model, c->d_model, 64, 64, hid, CAP);
    int nffn = axis_values(o->fixed.d_ff, c->d_ff, c->d_ff % 128 == 0 ? 128 : 64, 64, ffn, CAP);
    int nlay = axis_values(o->fixed.n_layers, c->n_layers, 1, (c->n_layers + 1) / 2, lay, CAP);
    size_t cap = 256, n = 0;
    tp_prune_candidate *all = malloc(cap * sizeof *all);
    size_t best_p = 0;
    tp_prune_shape best_sh = {0};
    double lo = (double)o->target * (1 - o->tolerance), hi = (double)o->target * (1 + o->tolerance);
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
                        if (!best_p || fabs((double)np - (double)o->target) < fabs((double)best_p - (double)o->target)) {
                            best_p = np;
                            best_sh = sh;
                        }
                        if ((double)np < lo || (double)np > hi) continue;
                        if (n == cap) {
                            cap *= 2;
                            tp_prune_candidate *na = realloc(all, cap * sizeof *all);
                            if (!na) { free(all); all = NULL; break; }
                            all = na;
                        }
                        all[n++] = (tp_prune_candidate){sh, np, NAN};
                    }
    free(hid); free(ffn); free(lay);
    if (!all) return tp_fail(TP_ERR_NOMEM, "out of memory");
    if (n == 0) {
        free(all);
        if (!best_p)
            return tp_fail(TP_ERR_ARG, "--target-params %zu: no shape on the grid is possible with the fixed sizes given",
                           o->target);
        return tp_fail(TP_ERR_ARG, "--target-params %zu: no shape on the grid (hidden multiple of 64, ffn multiple of "
                       "%d, equal GQA groups, >= %d layers, with the sizes fixed on the command line) is within +-%.0f%%; "
                       "the closest is hidden %d, ffn %d, heads %d, kv-heads %d, layers %d with %zu params",
                       o->target, c->d_ff % 128 == 0 ? 128 : 64, (c->n_layers + 1) / 2, 100 * o->tolerance,
                       best_sh.d_model, best_sh.d_ff, best_sh.n_heads, best_sh.n_kv_heads, best_sh.n_layers, best_p);
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
            tp_fail_ctx(s, "candidate hidden %d, ffn %d, heads %d/%d, layers %d: ", all[i].shape.d_model,
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
