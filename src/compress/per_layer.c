/* Per-layer widths (`taper prune --per-layer`): a uniform plan's MLP neurons and query heads
 * redistributed over its layers at the same totals.
 *
 * The rule: within each kept layer, every neuron's score is divided by the mean score of that
 * layer's neurons, and every query head's by the mean of that layer's heads. Activation scales
 * differ from layer to layer (the residual stream grows with depth), so raw scores would strip
 * the early layers; after the division a score says how a unit compares with its own layer's
 * average. The layers' units are then ranked together: a layer whose importance is concentrated
 * in few units gives its weak units up first, a layer whose units all matter keeps them.
 * Neurons move in chunks of ffn_step (a layer's neurons sorted by score, a chunk worth the sum of
 * its normalised scores), query heads one per KV group at a time (a layer keeps the same count in
 * every kept group, worth the sum over the groups of the next-best head's normalised score).
 * Every layer keeps at least min_keep of its source units (ffn_only: exactly the uniform target's
 * heads, the ones the uniform plan keeps). The greedy pick of the best next chunk
 * is the global ranking, since a layer's chunks come in falling order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "taper/compress.h"
#include "model/kernels.h"
#include "rank_internal.h"

void tp_per_layer_opts_default(tp_per_layer_opts *o) {
    memset(o, 0, sizeof *o);
    o->ffn_step = 64;
    o->min_keep = 0.25;
    o->probe = 4;
}

/* Loss sensitivity of one kept layer's MLP: fval[k] (k >= lo) = the held-out loss saved per chunk
 * between the measured widths around chunk k, measuring the loss with source layer sl's MLP cut to
 * its first w neurons of order (the others zeroed in down_proj) for w at every probe-th chunk from
 * lo to the full width. */
static tp_status loss_values(const tp_per_layer_opts *o, int sl, const int *order, int F, int step, int nchunk,
                             int lo, double *fval, double *scratch_loss, float *backup) {
    tp_model *m = o->model;
    tp_layer *L = &m->layers[sl];
    size_t d = (size_t)m->cfg.d_model;
    memcpy(backup, L->w_down, d * (size_t)F * sizeof(float));
    int probe = o->probe > 0 ? o->probe : 4;
    /* measured chunk counts: lo, lo+probe, ..., nchunk */
    int pts[4096], np = 0;
    for (int k = lo; k < nchunk && np < 4095; k += probe) pts[np++] = k;
    pts[np++] = nchunk;
    tp_status s = TP_OK;
    for (int a = 0; a < np && !s; a++) {
        int w = pts[a] >= nchunk ? F : pts[a] * step;
        memcpy(L->w_down, backup, d * (size_t)F * sizeof(float));
        for (int j = w; j < F; j++) {
            int col = order[j];
            for (size_t r = 0; r < d; r++) L->w_down[r * (size_t)F + (size_t)col] = 0;
        }
        tp_gemm_bf16_forget_range(L->w_down, d * (size_t)F);
        s = tp_lm_loss(m, o->ids, o->n, o->seq_len, NULL, NULL, &scratch_loss[a]);
        if (o->progress) tp_progress_update(o->progress, o->progress->done + 1);
    }
    memcpy(L->w_down, backup, d * (size_t)F * sizeof(float));
    tp_gemm_bf16_forget_range(L->w_down, d * (size_t)F);
    if (s) return s;
    for (int k = 0; k < nchunk; k++) fval[k] = 0;
    for (int a = 0; a + 1 < np; a++) {
        double per = (scratch_loss[a] - scratch_loss[a + 1]) / (double)(pts[a + 1] - pts[a]);
        for (int k = pts[a]; k < pts[a + 1]; k++) fval[k] = per; /* allocate: per element, all chunks alike */
    }
    return TP_OK;
}


/* Units of L layers; layer l offers unit values val[l][0..n) (falling), unit k holding size[k]
 * elements (every unit size elements, the last one possibly fewer: n_elem[l] in all). Each layer
 * starts with its first lo units, may take up to all of them; the best next units (by value per
 * element) are added while the total of elements stays within budget. take[l] gets the units. */
static void allocate(int L, double *const *val, int n, int size, int total_elems, int lo, long budget, int *take) {
    long used = 0;
    for (int l = 0; l < L; l++) {
        take[l] = lo;
        for (int k = 0; k < lo; k++) used += k == n - 1 ? total_elems - (long)size * (n - 1) : size;
    }
    for (;;) {
        int best = -1;
        double bv = -INFINITY;
        for (int l = 0; l < L; l++) {
            int k = take[l];
            if (k >= n) continue;
            long sz = k == n - 1 ? total_elems - (long)size * (n - 1) : size;
            if (used + sz > budget) continue;
            double v = val[l][k] / (double)sz;
            if (v > bv) bv = v, best = l; /* ties: the earlier layer */
        }
        if (best < 0) break;
        int k = take[best]++;
        used += k == n - 1 ? total_elems - (long)size * (n - 1) : size;
    }
}

/* Scores divided by their mean (all 1 when the mean is not positive). */
static void normalise(const double *x, int n, double *out) {
    double m = 0;
    for (int i = 0; i < n; i++) m += x[i];
    m /= n;
    for (int i = 0; i < n; i++) out[i] = m > 0 && isfinite(m) ? x[i] / m : 1.0;
}

tp_status tp_prune_plan_per_layer(tp_prune_plan *p, const tp_importance *imp, const tp_per_layer_opts *opts) {
    tp_per_layer_opts o;
    if (opts) o = *opts;
    else tp_per_layer_opts_default(&o);
    const tp_config *a = &p->src;
    tp_config *c = &p->cfg;
    if (!imp) return tp_fail(TP_ERR_ARG, "per-layer widths need importance scores");
    if (p->agg_pair < 0) return tp_fail(TP_ERR_ARG, "per-layer widths need a plan made from importance scores");
    if (c->hetero) return tp_fail(TP_ERR_ARG, "the plan already has per-layer widths");
    if (c->n_layers > TP_MAX_HET_LAYERS)
        return tp_fail(TP_ERR_UNSUPPORTED, "per-layer widths are supported up to %d layers; the pruned model has %d",
                       TP_MAX_HET_LAYERS, c->n_layers);
    if (o.ffn_step < 1 || o.ffn_step > a->d_ff)
        return tp_fail(TP_ERR_ARG, "per-layer ffn step %d must be in [1, %d]", o.ffn_step, a->d_ff);
    if (!(o.min_keep > 0 && o.min_keep <= 1))
        return tp_fail(TP_ERR_ARG, "per-layer minimum %g must be in (0, 1]", o.min_keep);
    tp_status s = tp_importance_check_model(imp, a, "importance scores");
    if (s) return s;
    if (o.loss_rule) {
        if (!o.model || !o.ids || o.n == 0 || o.seq_len < 2)
            return tp_fail(TP_ERR_ARG, "per-layer widths by loss need the model and held-out samples");
        if (o.model->stream || !o.model->tok_emb)
            return tp_fail(TP_ERR_UNSUPPORTED, "per-layer widths by loss need the model loaded, not streamed");
        if (memcmp(&o.model->cfg, a, sizeof *a) != 0)
            return tp_fail(TP_ERR_ARG, "per-layer widths by loss: the model is not the plan's source");
    }
    int L = c->n_layers, nkv = c->n_kv_heads, rep = a->n_heads / a->n_kv_heads, rep2 = c->n_heads / nkv;
    int F = a->d_ff, step = o.ffn_step, nchunk = (F + step - 1) / step;
    int lo_ff = (int)ceil(o.min_keep * F / step), lo_rep = (int)ceil(o.min_keep * rep);
    if (lo_ff < 1) lo_ff = 1;
    if (lo_ff > nchunk) lo_ff = nchunk;
    if (lo_rep < 1) lo_rep = 1;
    if (o.ffn_only) lo_rep = rep2; /* every layer at the target: the same heads as the uniform plan */
    long lo_ff_elems = lo_ff >= nchunk ? F : (long)lo_ff * step;
    if (lo_ff_elems > c->d_ff || lo_rep > rep2)
        return tp_fail(TP_ERR_ARG, "per-layer widths: each layer keeps at least %.0f%% of its units (%ld neurons, %d "
                       "heads per group), more than the uniform target (%d, %d); lower the minimum", 100 * o.min_keep,
                       lo_ff_elems, lo_rep, c->d_ff, rep2);

    if (rep > 256) return tp_fail(TP_ERR_UNSUPPORTED, "per-layer widths: GQA groups of %d heads (at most 256)", rep);
    double *norm = malloc((size_t)(F > a->n_heads ? F : a->n_heads) * sizeof(double));
    tp_ranked *sc = malloc((size_t)F * sizeof *sc);
    double **fval = calloc((size_t)L, sizeof *fval), **hval = calloc((size_t)L, sizeof *hval);
    int **forder = calloc((size_t)L, sizeof *forder), **horder = calloc((size_t)L, sizeof *horder);
    int *ftake = malloc((size_t)L * sizeof(int)), *htake = malloc((size_t)L * sizeof(int));
    int *ff = malloc((size_t)L * sizeof(int)), *nh = malloc((size_t)L * sizeof(int));
    int *heads = NULL, *neurons = NULL;
    double *lbuf = o.loss_rule ? malloc(((size_t)nchunk + 2) * sizeof(double)) : NULL;
    float *backup = o.loss_rule ? malloc((size_t)a->d_model * (size_t)F * sizeof(float)) : NULL;
    if (o.loss_rule && (!lbuf || !backup)) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    if (o.loss_rule && o.progress) o.progress->total = (double)L * ((nchunk - lo_ff + o.probe - 1) / (o.probe > 0 ? o.probe : 4) + 1);
    if (!s) s = norm && sc && fval && hval && forder && horder && ftake && htake && ff && nh ? TP_OK
                                                                                      : tp_fail(TP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < L && !s; i++) {
        size_t sl = (size_t)p->layers[i];
        fval[i] = malloc((size_t)nchunk * sizeof(double));
        hval[i] = calloc((size_t)rep, sizeof(double));
        forder[i] = malloc((size_t)F * sizeof(int));
        horder[i] = malloc((size_t)nkv * rep * sizeof(int));
        if (!fval[i] || !hval[i] || !forder[i] || !horder[i]) {
            s = tp_fail(TP_ERR_NOMEM, "out of memory");
            break;
        }
        /* neurons: normalised, sorted, summed in chunks */
        normalise(imp->neurons + ((size_t)p->agg_pair * a->n_layers + sl) * F, F, norm);
        for (int j = 0; j < F; j++) sc[j] = (tp_ranked){norm[j], j};
        qsort(sc, (size_t)F, sizeof *sc, tp_ranked_desc);
        for (int j = 0; j < F; j++) forder[i][j] = sc[j].idx;
        for (int k = 0; k < nchunk; k++) {
            double v = 0;
            for (int j = k * step; j < F && j < (k + 1) * step; j++) v += sc[j].score;
            fval[i][k] = v;
        }
        if (o.loss_rule && (s = loss_values(&o, (int)sl, forder[i], F, step, nchunk, lo_ff, fval[i], lbuf, backup)))
            break;
        /* heads: per kept group sorted; slot j = the j-th best head of every kept group */
        normalise(imp->heads + ((size_t)p->agg_pair * a->n_layers + sl) * a->n_heads, a->n_heads, norm);
        for (int g = 0; g < nkv; g++) {
            int grp = p->kv_groups[(size_t)i * nkv + g];
            tp_ranked hs[256];
            int r = rep;
            for (int j = 0; j < r; j++) hs[j] = (tp_ranked){norm[grp * rep + j], grp * rep + j};
            qsort(hs, (size_t)r, sizeof *hs, tp_ranked_desc);
            for (int j = 0; j < r; j++) {
                horder[i][g * rep + j] = hs[j].idx;
                hval[i][j] += hs[j].score;
            }
        }
    }
    if (!s) {
        allocate(L, fval, nchunk, step, F, lo_ff, (long)L * c->d_ff, ftake);
        allocate(L, hval, rep, 1, rep, lo_rep, (long)L * rep2, htake);
        int max_ff = 0, max_h = 0;
        for (int i = 0; i < L; i++) {
            ff[i] = ftake[i] >= nchunk ? F : ftake[i] * step;
            nh[i] = htake[i] * nkv;
            if (ff[i] > max_ff) max_ff = ff[i];
            if (nh[i] > max_h) max_h = nh[i];
        }
        heads = malloc((size_t)L * max_h * sizeof(int));
        neurons = malloc((size_t)L * max_ff * sizeof(int));
        if (!heads || !neurons) s = tp_fail(TP_ERR_NOMEM, "out of memory");
        for (int i = 0; i < L && !s; i++) {
            int *nr = neurons + (size_t)i * max_ff, *hd = heads + (size_t)i * max_h, r2 = htake[i];
            memcpy(nr, forder[i], (size_t)ff[i] * sizeof(int));
            qsort(nr, (size_t)ff[i], sizeof(int), tp_int_asc);
            for (int j = ff[i]; j < max_ff; j++) nr[j] = 0;
            for (int g = 0; g < nkv; g++) {
                memcpy(hd + g * r2, horder[i] + g * rep, (size_t)r2 * sizeof(int));
                qsort(hd + g * r2, (size_t)r2, sizeof(int), tp_int_asc);
            }
            for (int j = nkv * r2; j < max_h; j++) hd[j] = 0;
        }
    }
    if (!s) {
        free(p->heads);
        free(p->neurons);
        p->heads = heads;
        p->neurons = neurons;
        heads = neurons = NULL;
        tp_config_set_widths(c, ff, nh);
        p->n_params = tp_config_n_params(c);
        s = tp_prune_plan_check(p, a);
    }
    for (int i = 0; i < L && fval; i++) {
        free(fval[i]);
        free(hval ? hval[i] : NULL);
        free(forder ? forder[i] : NULL);
        free(horder ? horder[i] : NULL);
    }
    free(fval); free(hval); free(forder); free(horder);
    free(lbuf); free(backup);
    free(norm); free(sc); free(ftake); free(htake); free(ff); free(nh); free(heads); free(neurons);
    return s;
}
