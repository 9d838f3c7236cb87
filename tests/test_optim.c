/* Optimizer tests: tp_lr_at against torch's LambdaLR, ten AdamW updates with clipping, weight
 * decay and gradient accumulation against torch.optim.AdamW (fixtures from tests/ref/optim_ref.py),
 * which tensors get weight decay, refusal of NaN/inf gradients, and the global norm / clipping. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/util.h"
#include "model/kernels.h"
#include "train/train_internal.h"
#include "tt.h"

static cJSON *load_meta(void) { return tt_fixture_json("optim/llama3.json"); }

/* A float32 LE fixture of exactly n floats, or NULL (with a failed check). */
static float *load_f32(const char *name, size_t n) {
    char rel[256];
    snprintf(rel, sizeof rel, "optim/%s", name);
    return tt_fixture_f32(rel, n, 1);
}

static tp_model *load_tiny(const char *name) {
    char *root = tt_path(tt_fixtures_dir(), "tiny");
    char *dir = tt_path(root, name);
    tp_model *m = NULL;
    if (tp_model_load_hf(dir, &m)) TT_CHECK(0, "loading %s: %s", dir, tp_errmsg());
    free(dir);
    free(root);
    return m;
}

static double jnum(const cJSON *o, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    TT_CHECK(cJSON_IsNumber(j), "fixture field %s missing", key);
    return cJSON_IsNumber(j) ? j->valuedouble : NAN;
}

static void cfg_from_json(const cJSON *j, tp_adamw_cfg *c) {
    tp_adamw_defaults(c);
    c->lr = (float)jnum(j, "lr");
    c->min_lr = (float)jnum(j, "min_lr");
    c->warmup_steps = (long)jnum(j, "warmup_steps");
    c->total_steps = (long)jnum(j, "total_steps");
    c->beta1 = (float)jnum(j, "beta1");
    c->beta2 = (float)jnum(j, "beta2");
    c->eps = (float)jnum(j, "eps");
    c->weight_decay = (float)jnum(j, "weight_decay");
    c->clip = (float)jnum(j, "clip");
    c->decay_all = 0;
}

TT_TEST(optim_lr_schedule) {
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    TT_CHECK(c.lr == 3e-4f && c.min_lr == 3e-5f && c.beta1 == 0.9f && c.beta2 == 0.95f && c.eps == 1e-8f &&
                 c.weight_decay == 0.1f && c.clip == 1.0f && !c.decay_all,
             "defaults lr %g min_lr %g betas %g/%g eps %g wd %g clip %g", c.lr, c.min_lr, c.beta1, c.beta2, c.eps,
             c.weight_decay, c.clip);
    /* exact values by hand: lr 1, min 0.5, warmup 4, total 8 */
    c.lr = 1.0f;
    c.min_lr = 0.5f;
    c.warmup_steps = 4;
    c.total_steps = 8;
    TT_CHECK(tp_lr_at(&c, 0) == 0.25 && tp_lr_at(&c, 3) == 1.0, "warmup %g %g", tp_lr_at(&c, 0), tp_lr_at(&c, 3));
    TT_CHECK(tp_lr_at(&c, 4) == 1.0, "cosine start %.17g", tp_lr_at(&c, 4));
    TT_NEAR(tp_lr_at(&c, 6), 0.75, 1e-15, 0); /* half way: cos(pi/2) = 0 */
    TT_CHECK(tp_lr_at(&c, 8) == 0.5 && tp_lr_at(&c, 100) == 0.5, "after total %g %g", tp_lr_at(&c, 8),
             tp_lr_at(&c, 100));
    c.total_steps = 0; /* no decay configured: constant after warmup */
    TT_CHECK(tp_lr_at(&c, 50) == 1.0, "total 0: %g", tp_lr_at(&c, 50));
    c.warmup_steps = 0;
    c.total_steps = 2;
    TT_CHECK(tp_lr_at(&c, 0) == 1.0 && tp_lr_at(&c, 1) == 0.75 && tp_lr_at(&c, 2) == 0.5, "no warmup %g %g %g",
             tp_lr_at(&c, 0), tp_lr_at(&c, 1), tp_lr_at(&c, 2));

    /* torch LambdaLR of the reference, updates 0..15 (past total_steps) */
    cJSON *meta = load_meta();
    if (!meta) return;
    cfg_from_json(cJSON_GetObjectItem(meta, "cfg"), &c);
    const cJSON *tab = cJSON_GetObjectItem(meta, "lr_table");
    TT_CHECK(cJSON_GetArraySize(tab) == 16, "lr_table has %d entries", cJSON_GetArraySize(tab));
    double worst = 0;
    for (int s = 0; s < cJSON_GetArraySize(tab); s++) {
        double ref = cJSON_GetArrayItem(tab, s)->valuedouble, got = tp_lr_at(&c, s);
        TT_NEAR(got, ref, 0, 1e-12);
        if (fabs(got - ref) / ref > worst) worst = fabs(got - ref) / ref;
    }
    TT_CHECK(tp_lr_at(&c, 10) == (double)c.min_lr, "lr at total_steps %.17g", tp_lr_at(&c, 10));
    tt_note("lr schedule vs torch LambdaLR: 16 updates, max relative error %.2g", worst);
    cJSON_Delete(meta);
}

/* The gradient both sides compute (see tests/ref/optim_ref.py): micro-batch k of update s. */
static void accumulate_grad(const tp_model *m, tp_model *g, long s, int accum) {
    memset(g->params, 0, g->n_params * sizeof(float));
    for (int k = 0; k < accum; k++)
        for (size_t i = 0; i < m->n_params; i++) {
            double x = (double)m->params[i] * 3.0;
            x = x + 0.1 * k;
            x = x + (double)s;
            float gk = (float)(sin(x) * 0.01 * (double)(1 + s % 3));
            g->params[i] += gk * 0.5f;
        }
}

/* |a - b| <= atol + rtol |b| over n values; returns the number of violations and the worst
 * absolute error in *max_abs. */
static size_t count_off(const float *a, const float *b, size_t n, double atol, double rtol, double *max_abs,
                        size_t *first) {
    size_t bad = 0;
    *max_abs = 0;
    *first = n;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > *max_abs || d != d) *max_abs = d;
        if (!(d <= atol + rtol * fabs((double)b[i]))) {
            if (!bad) *first = i;
            bad++;
        }
    }
    return bad;
}

TT_TEST(optim_adamw_matches_torch) {
    cJSON *meta = load_meta();
    if (!meta) return;
    tp_model *m = load_tiny("llama3"), *g = NULL;
    const cJSON *steps = cJSON_GetObjectItem(meta, "per_step");
    int n_steps = (int)jnum(meta, "steps"), accum = (int)jnum(meta, "accum");
    size_t n = (size_t)jnum(meta, "n_params");
    /* tests/ref/optim_ref.py: 10 updates of 2 micro-batches each, one per_step record per update */
    TT_CHECK(n_steps == 10 && accum == 2 && cJSON_GetArraySize(steps) == 10,
             "optim/llama3.json: %d steps (accum %d), %d per_step records (expected 10, 2, 10)", n_steps, accum,
             cJSON_GetArraySize(steps));
    float *ref = load_f32("llama3.params.f32", (size_t)(n_steps + 1) * n);
    float *mom = load_f32("llama3.moments.f32", 2 * n);
    tp_adamw o = {0};
    if (!m || !ref || !mom || !TT_CHECK(m->n_params == n, "model %zu params, fixture %zu", m->n_params, n)) goto done;
    TT_CHECK(!m->cfg.tie_embeddings, "llama3 tiny model should have an untied lm_head");
    TT_CHECK(memcmp(m->params, ref, n * sizeof(float)) == 0, "loaded parameters differ from the reference's start");
    if (tp_model_alloc(&m->cfg, &g) != TP_OK) goto done;
    tp_adamw_cfg c;
    cfg_from_json(cJSON_GetObjectItem(meta, "cfg"), &c);
    if (!TT_CHECK(tp_adamw_init(&o, m, &c) == TP_OK, "init: %s", tp_errmsg())) goto done;
    /* tolerances: parameters |c - torch| <= 1e-5 + 1e-5 |torch| (the brief's bound); moments
     * relative 1e-5 plus 1e-6 of the tensor family's largest magnitude */
    const double atol = 1e-5, rtol = 1e-5;
    double worst = 0;
    int n_clipped = 0;
    for (int s = 0; s < n_steps; s++) {
        const cJSON *st = cJSON_GetArrayItem(steps, s);
        TT_NEAR(tp_lr_at(&c, s), jnum(st, "lr"), 0, 1e-12);
        accumulate_grad(m, g, s, accum);
        double gn = 0;
        if (!TT_CHECK(tp_adamw_step(&o, m, g, &gn) == TP_OK, "step %d: %s", s, tp_errmsg())) break;
        TT_NEAR(gn, jnum(st, "grad_norm"), 0, 1e-5);
        int clipped = gn + 1e-6 > c.clip;
        TT_CHECK(clipped == cJSON_IsTrue(cJSON_GetObjectItem(st, "clipped")), "step %d: clipped %d", s, clipped);
        n_clipped += clipped;
        double max_abs;
        size_t first, bad = count_off(m->params, ref + (size_t)(s + 1) * n, n, atol, rtol, &max_abs, &first);
        TT_CHECK(bad == 0, "update %d: %zu of %zu parameters off, first [%zu] %.9g vs %.9g, max abs err %.3g", s, bad,
                 n, first, bad ? m->params[first] : 0.0, bad ? ref[(size_t)(s + 1) * n + first] : 0.0, max_abs);
        if (max_abs > worst) worst = max_abs;
    }
    TT_CHECK(o.step == n_steps && o.step == 10, "compared %ld updates (expected 10)", o.step);
    TT_CHECK(n_clipped > 0 && n_clipped < n_steps, "clipping should trigger on some updates only (%d)", n_clipped);
    double mmax = 0, vmax = 0, em, ev;
    for (size_t i = 0; i < n; i++) {
        if (fabs(mom[i]) > mmax) mmax = fabs(mom[i]);
        if (fabs(mom[n + i]) > vmax) vmax = fabs(mom[n + i]);
    }
    size_t first, bm = count_off(o.m, mom, n, 1e-6 * mmax, 1e-5, &em, &first);
    size_t bv = count_off(o.v, mom + n, n, 1e-6 * vmax, 1e-5, &ev, &first);
    TT_CHECK(bm == 0 && bv == 0, "moments off: m %zu (max abs %.3g), v %zu (max abs %.3g)", bm, em, bv, ev);
    /* the run moved the weights far beyond the tolerance, so agreement means something */
    double moved = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(ref[(size_t)n_steps * n + i] - ref[i]) > moved) moved = fabs(ref[(size_t)n_steps * n + i] - ref[i]);
    TT_CHECK(moved > 1e-2, "reference trajectory moved only %g", moved);
    tt_note("AdamW vs torch: %d updates (%d clipped), %zu params, max |param err| %.3g (weights moved up to %.3g); "
            "max |m err| %.3g, |v err| %.3g",
            n_steps, n_clipped, n, worst, moved, em, ev);
done:
    tp_adamw_free(&o);
    tp_model_free(g);
    tp_model_free(m);
    free(ref);
    free(mom);
    cJSON_Delete(meta);
}

/* One update with a zero gradient touches only the decayed tensors (Adam's part is exactly 0):
 * every matrix is scaled by 1 - lr*wd exactly once, norms and biases stay bit-identical. */
static void check_decay(const char *name, int decay_all) {
    tp_model *m = load_tiny(name), *g = NULL;
    if (!m) return;
    tp_model_alloc(&m->cfg, &g);
    float *before = malloc(m->n_params * sizeof(float));
    memcpy(before, m->params, m->n_params * sizeof(float));
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    c.lr = 0.5f;
    c.weight_decay = 0.25f;
    c.decay_all = decay_all;
    tp_adamw o;
    if (!TT_CHECK(tp_adamw_init(&o, m, &c) == TP_OK, "%s", tp_errmsg())) goto done;
    TT_CHECK(tp_adamw_step(&o, m, g, NULL) == TP_OK, "%s", tp_errmsg());
    const tp_config *cf = &m->cfg;
    size_t d = (size_t)cf->d_model, q = (size_t)cf->n_heads * cf->head_dim, kv = (size_t)cf->n_kv_heads * cf->head_dim;
    size_t n_norm = (2 * (size_t)cf->n_layers + 1) * d;
    size_t n_bias = cf->attn_bias ? (size_t)cf->n_layers * (q + 2 * kv) : 0;
    size_t expect_decayed = decay_all ? m->n_params : m->n_params - n_norm - n_bias;
    size_t in_ranges = 0;
    for (size_t r = 0; r < o.n_ranges; r++) in_ranges += o.ranges[r][1];
    TT_CHECK(in_ranges == expect_decayed, "%s: %zu parameters in decay ranges, expected %zu", name, in_ranges,
             expect_decayed);
    const float f = 1.0f - 0.5f * 0.25f; /* 0.875, exact */
    /* mark what must be left alone */
    unsigned char *keep = calloc(m->n_params, 1);
    if (!decay_all) {
        for (int l = 0; l < cf->n_layers; l++) {
            const tp_layer *L = &m->layers[l];
            memset(keep + (L->attn_norm - m->params), 1, d);
            memset(keep + (L->mlp_norm - m->params), 1, d);
            if (L->bq) {
                memset(keep + (L->bq - m->params), 1, q);
                memset(keep + (L->bk - m->params), 1, kv);
                memset(keep + (L->bv - m->params), 1, kv);
            }
        }
        memset(keep + (m->final_norm - m->params), 1, d);
    }
    size_t wrong = 0, decayed = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        float want = keep[i] ? before[i] : before[i] * f;
        if (memcmp(&want, &m->params[i], sizeof want) != 0) wrong++;
        decayed += !keep[i];
    }
    TT_CHECK(wrong == 0 && decayed == expect_decayed, "%s decay_all=%d: %zu parameters wrong (%zu decayed)", name,
             decay_all, wrong, decayed);
    free(keep);
done:
    tp_adamw_free(&o);
    free(before);
    tp_model_free(g);
    tp_model_free(m);
}

TT_TEST(optim_decay_only_matrices) {
    check_decay("llama3", 0);       /* untied lm_head decayed */
    check_decay("qwen2", 0);        /* tied embeddings once; q/k/v biases not decayed */
    check_decay("qwen2", 1);        /* decay_all: everything, still once */
    check_decay("llama_linear", 0); /* tied */
}

TT_TEST(optim_refuses_nan_and_inf) {
    tp_model *m = load_tiny("llama3"), *g = NULL;
    if (!m) return;
    tp_model_alloc(&m->cfg, &g);
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    tp_adamw o;
    if (!TT_CHECK(tp_adamw_init(&o, m, &c) == TP_OK, "%s", tp_errmsg())) goto done;
    size_t n = m->n_params;
    for (size_t i = 0; i < n; i++) g->params[i] = 1e-3f * (float)((i % 7) + 1);
    TT_CHECK(tp_adamw_step(&o, m, g, NULL) == TP_OK, "%s", tp_errmsg()); /* non-zero moments */
    float *p0 = malloc(n * 4), *m0 = malloc(n * 4), *v0 = malloc(n * 4);
    memcpy(p0, m->params, n * 4);
    memcpy(m0, o.m, n * 4);
    memcpy(v0, o.v, n * 4);
    float bad_vals[3] = {NAN, INFINITY, -INFINITY};
    for (int b = 0; b < 3; b++) {
        size_t at = n - 1 - (size_t)b * 5000;
        float keep = g->params[at];
        g->params[at] = bad_vals[b];
        double gn = 0;
        tp_status s = tp_adamw_step(&o, m, g, &gn);
        TT_CHECK(s == TP_ERR_NUMERIC, "value %g: status %d", bad_vals[b], s);
        TT_CHECK(strstr(tp_errmsg(), "NaN or inf") != NULL, "message: %s", tp_errmsg());
        TT_CHECK(!isfinite(gn), "reported norm %g", gn);
        TT_CHECK(o.step == 1 && !memcmp(p0, m->params, n * 4) && !memcmp(m0, o.m, n * 4) && !memcmp(v0, o.v, n * 4),
                 "value %g: state changed", bad_vals[b]);
        g->params[at] = keep;
    }
    TT_CHECK(tp_adamw_step(&o, m, g, NULL) == TP_OK && o.step == 2, "finite again: %s", tp_errmsg());
    free(p0);
    free(m0);
    free(v0);
done:
    tp_adamw_free(&o);
    tp_model_free(g);
    tp_model_free(m);
}

TT_TEST(optim_grad_norm_and_clip) {
    float two[2] = {3, 4};
    TT_CHECK(tp_grad_norm(two, 2) == 5.0, "norm(3,4) = %.17g", tp_grad_norm(two, 2));
    TT_CHECK(tp_grad_norm(two, 0) == 0.0, "empty norm %g", tp_grad_norm(two, 0));
    /* large: several blocks, against a long double sum; bit-identical for any thread count */
    size_t n = 300001;
    float *x = malloc(n * sizeof *x);
    tp_rng r;
    tp_rng_seed(&r, 7);
    long double ref = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = tp_rng_normal(&r) * 1e-3f;
        ref += (long double)x[i] * x[i];
    }
    double a = tp_grad_norm(x, n);
    TT_NEAR(a, sqrtl(ref), 0, 1e-12);
#ifdef _OPENMP
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    double b1 = tp_grad_norm(x, n);
    omp_set_num_threads(3);
    double b3 = tp_grad_norm(x, n);
    omp_set_num_threads(nt);
    TT_CHECK(a == b1 && a == b3, "norm depends on threads: %.17g %.17g %.17g", a, b1, b3);
#endif
    free(x);

    /* clipping: with beta1 = beta2 = 0 and eps = 1 one update is p -= lr * g'/(|g'| + 1), which
     * shows the clipped gradient g' = g * clip/(norm + 1e-6) directly */
    tp_model *m = load_tiny("llama3"), *g = NULL;
    if (!m) return;
    tp_model_alloc(&m->cfg, &g);
    size_t np = m->n_params;
    float *p0 = malloc(np * 4);
    for (int clip_on = 0; clip_on < 2; clip_on++) {
        memcpy(p0, m->params, np * 4);
        for (size_t i = 0; i < np; i++) g->params[i] = 0.05f * sinf((float)i);
        double norm = tp_grad_norm(g->params, np);
        tp_adamw_cfg c;
        tp_adamw_defaults(&c);
        c.lr = 0.1f;
        c.beta1 = c.beta2 = 0;
        c.eps = 1;
        c.weight_decay = 0;
        c.clip = clip_on ? (float)(norm / 4) : (float)(norm * 2); /* the second must not clip */
        double coef = clip_on ? (double)c.clip / (norm + 1e-6) : 1.0;
        tp_adamw o;
        if (!TT_CHECK(tp_adamw_init(&o, m, &c) == TP_OK, "%s", tp_errmsg())) break;
        double gn;
        TT_CHECK(tp_adamw_step(&o, m, g, &gn) == TP_OK, "%s", tp_errmsg());
        TT_CHECK(gn == norm, "reported norm %.17g vs %.17g (before clipping)", gn, norm);
        size_t off = 0;
        for (size_t i = 0; i < np; i++) {
            double gc = g->params[i] * coef, want = p0[i] - 0.1 * gc / (fabs(gc) + 1.0);
            if (fabs(m->params[i] - want) > 1e-7 + 1e-6 * fabs(want)) off++;
        }
        TT_CHECK(off == 0, "clip %s: %zu of %zu parameters off", clip_on ? "on" : "off", off, np);
        tp_adamw_free(&o);
    }
    free(p0);
    tp_model_free(g);
    tp_model_free(m);
}

TT_TEST(optim_rejects_bad_config) {
    tp_model *m = load_tiny("llama3");
    if (!m) return;
    tp_adamw_cfg c;
    tp_adamw o;
    tp_adamw_defaults(&c);
    c.beta2 = 1.0f;
    TT_CHECK(tp_adamw_init(&o, m, &c) == TP_ERR_ARG && strstr(tp_errmsg(), "beta2"), "beta2 = 1: %s", tp_errmsg());
    tp_adamw_defaults(&c);
    c.lr = NAN;
    TT_CHECK(tp_adamw_init(&o, m, &c) == TP_ERR_ARG && strstr(tp_errmsg(), "lr"), "lr NaN: %s", tp_errmsg());
    tp_adamw_defaults(&c);
    c.eps = 0;
    TT_CHECK(tp_adamw_init(&o, m, &c) == TP_ERR_ARG && strstr(tp_errmsg(), "eps"), "eps 0: %s", tp_errmsg());
    tp_model_free(m);
}

/* The vectorised AdamW pass against its scalar twin (the formula of adam_span, element by element,
 * the same operations in the same order): bit for bit, with clipping and decay on and off, with a
 * learning-rate and weight-decay schedule, on a parameter count that is not a multiple of 16. */
TT_TEST(optim_adamw_writes_bf16_copies) {
    /* under bf16 the update writes the registered bf16 copies as it goes: after each step every
     * copy is marked current (not converted again at its next use) and holds exactly the
     * rounding of the new weights; the weights and moments are the bits of a run without copies */
    tp_model *src = load_tiny("llama3"), *m = NULL, *m2 = NULL, *g = NULL;
    if (!src) return;
    tp_config cfg = src->cfg;
    cfg.d_model = 24; /* tensors whose lengths leave tails of the 16-wide pass */
    tp_model_free(src);
    int prec = tp_gemm_precision();
    if (!TT_CHECK(tp_model_alloc(&cfg, &m) == TP_OK && tp_model_alloc(&cfg, &m2) == TP_OK &&
                      tp_model_alloc(&cfg, &g) == TP_OK,
                  "models: %s", tp_errmsg()))
        goto done;
    tp_rng r;
    tp_rng_seed(&r, 22);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] = 0.1f * tp_rng_normal(&r);
    memcpy(m2->params, m->params, m->n_params * 4);
    tp_gemm_set_precision(TP_PREC_BF16);
    TT_CHECK(tp_model_prepare_precision(m, 0) == TP_OK, "copies: %s", tp_errmsg());
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    c.lr = 1e-2f;
    tp_adamw o = {0}, o2 = {0};
    TT_CHECK(tp_adamw_init(&o, m, &c) == TP_OK && tp_adamw_init(&o2, m2, &c) == TP_OK, "init");
    size_t d = (size_t)cfg.d_model, kv = (size_t)cfg.n_kv_heads * cfg.head_dim;
    int copies = 0;
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < g->n_params; i++) g->params[i] = 0.01f * tp_rng_normal(&r);
        TT_CHECK(tp_adamw_step(&o, m, g, NULL) == TP_OK, "step %d", s);
        for (int l = 0; l <= cfg.n_layers; l++) {
            const float *w[7];
            size_t n[7];
            int k = 0;
            if (l < cfg.n_layers) {
                const tp_layer *L = &m->layers[l];
                size_t q = (size_t)tp_config_heads(&cfg, l) * cfg.head_dim, ff = (size_t)tp_config_ff(&cfg, l);
                const float *ws[7] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
                size_t ns[7] = {q * d, kv * d, kv * d, d * q, ff * d, ff * d, d * ff};
                for (k = 0; k < 7; k++) w[k] = ws[k], n[k] = ns[k];
            } else {
                w[0] = m->lm_head, n[0] = (size_t)cfg.vocab * d, k = 1;
            }
            for (int j = 0; j < k; j++) {
                int cur = tp_gemm_bf16_current(w[j], n[j]);
                const unsigned short *h = tp_gemm_bf16_find(w[j], n[j]);
                unsigned short *want = malloc(n[j] * 2);
                tp_bf16_convert(w[j], n[j], want);
                TT_CHECK(cur && h && !memcmp(h, want, n[j] * 2), "step %d layer %d weight %d: copy current %d, bits %s",
                         s, l, j, cur, h && !memcmp(h, want, n[j] * 2) ? "equal" : "differ");
                free(want);
                copies++;
            }
        }
        /* (another model's update marks every copy stale, as tp_gemm_bf16_refresh always did) */
        TT_CHECK(tp_adamw_step(&o2, m2, g, NULL) == TP_OK, "step %d without copies", s);
        TT_CHECK(!memcmp(m->params, m2->params, m->n_params * 4) && !memcmp(o.m, o2.m, m->n_params * 4) &&
                     !memcmp(o.v, o2.v, m->n_params * 4),
                 "step %d: the same weights and moments with and without copies", s);
    }
    tt_note("%d copies checked over 3 updates", copies);
    tp_adamw_free(&o);
    tp_adamw_free(&o2);
done:
    tp_gemm_set_precision(prec);
    tp_model_free(m);
    tp_model_free(m2);
    tp_model_free(g);
}

/* torch's AdamW on one element in float, in the order of optim.c's scalar loop: the reference of
 * the two bitwise tests below. Constants of update t (1-based) at learning rate lr. */
typedef struct {
    float w1, b2, ob2, decay, bc2, ns, eps;
} ref_adam;
static ref_adam ref_adam_at(const tp_adamw_cfg *c, double lr, double t) {
    ref_adam k = {(float)(1.0 - c->beta1), c->beta2, (float)(1.0 - c->beta2),
                  (float)(1.0 - lr * (double)c->weight_decay), (float)pow(1.0 - pow(c->beta2, t), 0.5),
                  (float)(-(lr / (1.0 - pow(c->beta1, t)))), c->eps};
    return k;
}
static void ref_adam_elem(const ref_adam *k, float gi, int decayed, float *p, float *m, float *v) {
    float pi = decayed ? *p * k->decay : *p, mi = *m;
    mi = k->w1 < 0.5f ? mi + k->w1 * (gi - mi) : gi - (gi - mi) * (1.0f - k->w1);
    float vi = *v * k->b2;
    vi = vi + k->ob2 * gi * gi;
    float denom = sqrtf(vi) / k->bc2 + k->eps;
    *m = mi;
    *v = vi;
    *p = pi + k->ns * mi / denom;
}

TT_TEST(optim_adamw_vector_pass_bitwise_scalar) {
    /* the tiny Llama's shape with a 24-wide hidden size: tensors of 24 and 97 x 24 leave tails */
    tp_model *src = load_tiny("llama3"), *m = NULL, *g = NULL;
    if (!src) return;
    tp_config cfg = src->cfg;
    cfg.d_model = 24;
    tp_model_free(src);
    if (!TT_CHECK(tp_model_alloc(&cfg, &m) == TP_OK && tp_model_alloc(&cfg, &g) == TP_OK, "models: %s", tp_errmsg())) {
        tp_model_free(m);
        return;
    }
    size_t n = m->n_params;
    tp_rng r;
    tp_rng_seed(&r, 21);
    for (size_t i = 0; i < n; i++) m->params[i] = 0.1f * tp_rng_normal(&r);
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    c.lr = 1e-2f;
    c.warmup_steps = 2;
    c.total_steps = 6;
    float *p = malloc(n * 4), *mm = calloc(n, 4), *vv = calloc(n, 4);
    memcpy(p, m->params, n * 4);
    tp_adamw o = {0};
    TT_CHECK(tp_adamw_init(&o, m, &c) == TP_OK, "init");
    int same = 1, clipped = 0, unclipped = 0;
    for (int s = 0; s < 6 && same; s++) {
        float scale = s % 2 ? 3.0f : 1e-3f; /* clipped on odd updates, not on even ones */
        for (size_t i = 0; i < n; i++) g->params[i] = scale * tp_rng_normal(&r);
        double lr = tp_lr_at(&c, s), norm = tp_grad_norm(g->params, n);
        ref_adam k = ref_adam_at(&c, lr, s + 1);
        float coef = (float)c.clip / ((float)norm + 1e-6f);
        int clip = coef < 1.0f;
        clipped += clip;
        unclipped += !clip;
        for (size_t i = 0; i < n; i++) {
            int decayed = 0;
            for (size_t q = 0; q < o.n_ranges; q++)
                decayed |= i >= o.ranges[q][0] && i < o.ranges[q][0] + o.ranges[q][1];
            ref_adam_elem(&k, clip ? g->params[i] * coef : g->params[i], decayed, &p[i], &mm[i], &vv[i]);
        }
        TT_CHECK(tp_adamw_step(&o, m, g, NULL) == TP_OK, "step %d", s);
        same = !memcmp(p, m->params, n * 4) && !memcmp(mm, o.m, n * 4) && !memcmp(vv, o.v, n * 4);
        TT_CHECK(same, "update %d (clipped %d): parameters and moments bit for bit", s, clip);
    }
    int tail = 0; /* a span (decayed range or the gap before it) whose length leaves a scalar tail */
    for (size_t q = 0, pos = 0; q < o.n_ranges; pos = o.ranges[q][0] + o.ranges[q][1], q++)
        tail |= (o.ranges[q][0] - pos) % 16 != 0 || o.ranges[q][1] % 16 != 0;
    TT_CHECK(clipped >= 2 && unclipped >= 2 && tail && o.n_ranges > 0,
             "both clipping branches (%d / %d), spans with scalar tails (%d), %zu decayed ranges", clipped, unclipped,
             tail, o.n_ranges);
    tp_adamw_free(&o);
    free(p); free(mm); free(vv);
    tp_model_free(g);
    tp_model_free(m);
}

/* The distiller's projections go through tp_adamw_span: the student's kernel on plain arrays (a
 * vector body and a scalar tail), weight decay on every value, the gradient scaled by 1/accum. */
TT_TEST(optim_adamw_span_bitwise_scalar) {
    size_t n = 16 * 40 + 7;
    float *p = malloc(n * 4), *g = malloc(n * 4), *m = calloc(n, 4), *v = calloc(n, 4);
    float *rp = malloc(n * 4), *rm = calloc(n, 4), *rv = calloc(n, 4);
    tp_rng r;
    tp_rng_seed(&r, 5);
    for (size_t i = 0; i < n; i++) p[i] = rp[i] = 0.1f * tp_rng_normal(&r);
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    c.lr = 1e-2f;
    c.warmup_steps = 1;
    c.total_steps = 4;
    int same = 1;
    size_t moved = 0;
    for (long t = 1; t <= 3; t++) {
        float gs = t == 2 ? 1.0f : 1.0f / 3.0f; /* accum 1, then 3 */
        for (size_t i = 0; i < n; i++) g[i] = 0.01f * tp_rng_normal(&r);
        double lr = tp_lr_at(&c, t - 1);
        ref_adam k = ref_adam_at(&c, lr, (double)t);
        for (size_t i = 0; i < n; i++) ref_adam_elem(&k, gs != 1.0f ? g[i] * gs : g[i], 1, &rp[i], &rm[i], &rv[i]);
        float before = p[0];
        tp_adamw_span(&c, lr, t, gs, p, g, m, v, n);
        moved += p[0] != before;
        same &= !memcmp(p, rp, n * 4) && !memcmp(m, rm, n * 4) && !memcmp(v, rv, n * 4);
    }
    TT_CHECK(same && moved == 3, "three updates of %zu values: bit for bit the scalar AdamW (%zu moved)", n, moved);
    free(p); free(g); free(m); free(v); free(rp); free(rm); free(rv);
}
