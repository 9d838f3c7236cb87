/* Distillation losses (src/train/kd_loss.c) against PyTorch autograd (tests/ref/kd_ref.py ->
 * tests/fixtures/kd/kd.json), central finite differences, and exact properties (identical
 * distributions give zero loss and zero gradient, top-k with k = V equals the full divergence). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "taper/distill.h"
#include "taper/rng.h"
#include "taper/util.h"
#include "tt.h"

static cJSON *load_ref(void) { return tt_fixture_json("kd/kd.json"); }

static float *floats(const cJSON *j, const char *name, size_t n) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!cJSON_IsArray(a) || (size_t)cJSON_GetArraySize(a) != n) return NULL;
    float *v = malloc(n * sizeof *v);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) v[i++] = (float)e->valuedouble;
    return v;
}

static double num(const cJSON *j, const char *name) {
    return cJSON_GetObjectItemCaseSensitive(j, name)->valuedouble;
}

static tp_kd_kind kind_of(const char *s) {
    return !strcmp(s, "fkl") ? TP_KD_FKL : !strcmp(s, "rkl") ? TP_KD_RKL : TP_KD_JSD;
}

/* max |a-b| / max(max|b|, tiny) */
static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mb = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return md / mb;
}

TT_TEST(kd_logit_losses_vs_torch) {
    cJSON *j = load_ref();
    if (!j) {
        tt_skip("no fixture kd/kd.json (run tests/ref/kd_ref.py)");
        return;
    }
    size_t R = (size_t)num(j, "R"), V = (size_t)num(j, "V");
    float *s = floats(j, "s", R * V), *t = floats(j, "t", R * V);
    TT_CHECK(s && t, "fixture arrays");
    float *g = malloc(R * V * sizeof *g);
    double worst_l = 0, worst_g = 0;
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, "cases")) {
        tp_kd_cfg cfg = {kind_of(cJSON_GetObjectItemCaseSensitive(c, "kind")->valuestring), (float)num(c, "tau"),
                         (int)num(c, "tau2"), (float)num(c, "beta")};
        int k = (int)num(c, "k");
        memcpy(g, s, R * V * sizeof *g);
        double loss;
        if (k == 0) {
            loss = tp_kd_rows(&cfg, g, t, R, V, 1.0f);
        } else {
            /* the teacher's top-k from our own selection must equal torch.topk's */
            int32_t *idx = malloc(R * (size_t)k * sizeof *idx);
            float *lp = malloc(R * (size_t)k * sizeof *lp);
            for (size_t r = 0; r < R; r++) tp_kd_topk(t + r * V, V, k, cfg.tau, idx + r * k, lp + r * k);
            float *ref_lp = floats(c, "logp", R * (size_t)k);
            const cJSON *ri = cJSON_GetObjectItemCaseSensitive(c, "idx");
            int same = 1;
            for (size_t i = 0; i < R * (size_t)k; i++)
                if (idx[i] != cJSON_GetArrayItem(ri, (int)i)->valueint) same = 0;
            TT_CHECK(same, "top-%d indices equal torch.topk", k);
            TT_CHECK(rel_err(lp, ref_lp, R * (size_t)k) < 1e-6, "top-k log-probs");
            loss = tp_kd_rows_topk(&cfg, g, idx, lp, k, R, V, 1.0f);
            free(idx);
            free(lp);
            free(ref_lp);
        }
        float *ref = floats(c, "grad", R * V);
        double ref_loss = num(c, "loss");
        double el = fabs(loss - ref_loss) / fmax(fabs(ref_loss), 1e-12), eg = rel_err(g, ref, R * V);
        TT_CHECK(el < 1e-5 && eg < 1e-4, "%s tau %.1f tau2 %d k %d: loss %.8g vs %.8g (rel %.2e), grad rel %.2e",
                 cJSON_GetObjectItemCaseSensitive(c, "kind")->valuestring, cfg.tau, cfg.tau2, k, loss, ref_loss, el,
                 eg);
        if (el > worst_l) worst_l = el;
        if (eg > worst_g) worst_g = eg;
        free(ref);
        n++;
    }
    tt_note("%d cases (fkl/rkl/jsd x 3 temperatures x full/top-5): worst loss rel %.2e, worst grad rel %.2e", n,
            worst_l, worst_g);
    /* tests/ref/kd_ref.py: 3 kinds x 3 temperatures x (full, top-5) */
    TT_CHECK(n == 18, "compared %d logit-loss cases (expected 18)", n);
    free(s);
    free(t);
    free(g);
    cJSON_Delete(j);
}

TT_TEST(kd_hidden_losses_vs_torch) {
    cJSON *j = load_ref();
    if (!j) {
        tt_skip("no fixture kd/kd.json (run tests/ref/kd_ref.py)");
        return;
    }
    size_t N = (size_t)num(j, "N"), ds = (size_t)num(j, "ds"), dt = (size_t)num(j, "dt");
    float *xs = floats(j, "xs", N * ds), *xt = floats(j, "xt", N * dt), *xts = floats(j, "xt_same", N * ds),
          *P = floats(j, "P", dt * ds);
    TT_CHECK(xs && xt && xts && P, "fixture arrays");
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, "hidden")) {
        const char *kn = cJSON_GetObjectItemCaseSensitive(c, "kind")->valuestring;
        tp_hid_kind kind = !strcmp(kn, "cosine") ? TP_HID_COSINE : TP_HID_MSE;
        int proj = (int)num(c, "proj");
        float *dx = calloc(N * ds, sizeof *dx), *dP = calloc(dt * ds, sizeof *dP);
        /* gradients accumulate: start from 1 and subtract it afterwards */
        for (size_t i = 0; i < N * ds; i++) dx[i] = 1.0f;
        double loss = proj ? tp_hidden_loss(kind, xs, ds, xt, dt, N, P, dx, dP, 1.0f)
                           : tp_hidden_loss(kind, xs, ds, xts, ds, N, NULL, dx, NULL, 1.0f);
        for (size_t i = 0; i < N * ds; i++) dx[i] -= 1.0f;
        float *rdx = floats(c, "dxs", N * ds);
        double ref_loss = num(c, "loss");
        double el = fabs(loss - ref_loss) / fabs(ref_loss), eg = rel_err(dx, rdx, N * ds);
        TT_CHECK(el < 1e-5 && eg < 1e-4, "%s proj %d: loss %.8g vs %.8g, dxs rel %.2e", kn, proj, loss, ref_loss,
                 eg);
        if (proj) {
            float *rdP = floats(c, "dP", dt * ds);
            double ep = rel_err(dP, rdP, dt * ds);
            TT_CHECK(ep < 1e-4, "%s: dP rel %.2e", kn, ep);
            free(rdP);
        }
        tt_note("%s%s: loss rel %.1e, dxs rel %.1e", kn, proj ? " + projection" : "", el, eg);
        /* the two halves (the distiller's path): at scale 1 the bits of the whole; at another scale,
         * the scaled gradient within float rounding */
        const float *tx = proj ? xt : xts, *PP = proj ? P : NULL;
        size_t w = proj ? dt : ds;
        for (int sc = 0; sc < 2; sc++) {
            float scale = sc ? 0.3f : 1.0f;
            float *a = calloc(N * ds, 4), *b = calloc(N * ds, 4), *pa = calloc(dt * ds, 4), *pb = calloc(dt * ds, 4);
            float *ybuf = malloc(N * w * 4), *gy = malloc(N * w * 4);
            double la = tp_hidden_loss(kind, xs, ds, tx, w, N, PP, a, proj ? pa : NULL, scale);
            double lb = tp_hidden_loss_fwd(kind, xs, ds, tx, w, N, PP, ybuf, gy);
            tp_hidden_loss_bwd(xs, ds, w, N, PP, gy, b, proj ? pb : NULL, scale);
            if (!sc)
                TT_CHECK(la == lb && !memcmp(a, b, N * ds * 4) && !memcmp(pa, pb, dt * ds * 4),
                         "%s proj %d: the halves differ from the whole (loss %.9g vs %.9g)", kn, proj, la, lb);
            else
                TT_CHECK(la == lb && rel_err(b, a, N * ds) < 1e-6 && (!proj || rel_err(pb, pa, dt * ds) < 1e-6),
                         "%s proj %d, scale 0.3: dxs rel %.2e, dP rel %.2e", kn, proj, rel_err(b, a, N * ds),
                         proj ? rel_err(pb, pa, dt * ds) : 0.0);
            free(a); free(b); free(pa); free(pb); free(ybuf); free(gy);
        }
        free(rdx);
        free(dx);
        free(dP);
        n++;
    }
    /* tests/ref/kd_ref.py: (mse, cosine) x (same width, projection) */
    TT_CHECK(n == 4, "compared %d hidden-loss cases (expected 4)", n);
    free(xs);
    free(xt);
    free(xts);
    free(P);
    cJSON_Delete(j);
}

static void fill(float *x, size_t n, tp_rng *r, float sd) {
    for (size_t i = 0; i < n; i++) x[i] = sd * tp_rng_normal(r);
}

TT_TEST(kd_identical_is_zero) {
    enum { R = 4, V = 301, K = 7 };
    tp_rng r;
    tp_rng_seed(&r, 7);
    float *t = malloc(R * V * sizeof *t), *s = malloc(R * V * sizeof *s);
    fill(t, R * V, &r, 3.0f);
    tp_kd_kind kinds[3] = {TP_KD_FKL, TP_KD_RKL, TP_KD_JSD};
    for (int ki = 0; ki < 3; ki++) {
        tp_kd_cfg c = {kinds[ki], 1.5f, 1, 0.5f};
        memcpy(s, t, sizeof(float) * R * V);
        double l = tp_kd_rows(&c, s, t, R, V, 1.0f);
        float mg = 0;
        for (int i = 0; i < R * V; i++) mg = fmaxf(mg, fabsf(s[i]));
        TT_CHECK(fabs(l) < 1e-9 && mg < 1e-8f, "kind %d: identical logits give loss %.3g, max |grad| %.3g", ki, l,
                 mg);
        /* top-k: the student equals the teacher, so every bin matches */
        int32_t idx[R * K];
        float lp[R * K];
        for (int rr = 0; rr < R; rr++) tp_kd_topk(t + rr * V, V, K, c.tau, idx + rr * K, lp + rr * K);
        memcpy(s, t, sizeof(float) * R * V);
        l = tp_kd_rows_topk(&c, s, idx, lp, K, R, V, 1.0f);
        mg = 0;
        for (int i = 0; i < R * V; i++) mg = fmaxf(mg, fabsf(s[i]));
        TT_CHECK(fabs(l) < 1e-6 && mg < 1e-6f, "kind %d top-%d: identical logits give loss %.3g, max |grad| %.3g",
                 ki, K, l, mg);
    }
    free(t);
    free(s);
}

TT_TEST(kd_topk_all_equals_full) {
    enum { R = 3, V = 40 };
    tp_rng r;
    tp_rng_seed(&r, 11);
    float t[R * V], s[R * V], a[R * V], b[R * V];
    fill(t, R * V, &r, 2.0f);
    fill(s, R * V, &r, 2.0f);
    tp_kd_kind kinds[3] = {TP_KD_FKL, TP_KD_RKL, TP_KD_JSD};
    for (int ki = 0; ki < 3; ki++) {
        tp_kd_cfg c = {kinds[ki], 0.8f, 0, 0.4f};
        int32_t idx[R * V];
        float lp[R * V];
        for (int rr = 0; rr < R; rr++) tp_kd_topk(t + rr * V, V, V, c.tau, idx + rr * V, lp + rr * V);
        memcpy(a, s, sizeof a);
        memcpy(b, s, sizeof b);
        double lf = tp_kd_rows(&c, a, t, R, V, 0.5f);
        double lk = tp_kd_rows_topk(&c, b, idx, lp, V, R, V, 0.5f);
        /* the rest bin is empty: teacher rest clamped to 1e-12, student rest 0 -> tiny difference */
        TT_CHECK(fabs(lf - lk) < 1e-5 * fabs(lf) + 1e-9, "kind %d: full %.9g vs top-V %.9g", ki, lf, lk);
        TT_CHECK(rel_err(b, a, R * V) < 1e-5, "kind %d: gradients equal (rel %.2e)", ki, rel_err(b, a, R * V));
    }
}

/* central finite differences of the loss in double against the analytic gradient */
TT_TEST(kd_finite_differences) {
    enum { R = 2, V = 23, K = 4 };
    tp_rng r;
    tp_rng_seed(&r, 5);
    float t[R * V], s[R * V], g[R * V], w[R * V];
    fill(t, R * V, &r, 1.5f);
    fill(s, R * V, &r, 1.5f);
    tp_kd_kind kinds[3] = {TP_KD_FKL, TP_KD_RKL, TP_KD_JSD};
    for (int ki = 0; ki < 3; ki++)
        for (int topk = 0; topk < 2; topk++) {
            tp_kd_cfg c = {kinds[ki], 1.3f, 0, 0.35f};
            int32_t idx[R * K];
            float lp[R * K];
            for (int rr = 0; rr < R; rr++) tp_kd_topk(t + rr * V, V, K, c.tau, idx + rr * K, lp + rr * K);
            memcpy(g, s, sizeof g);
            if (topk)
                tp_kd_rows_topk(&c, g, idx, lp, K, R, V, 1.0f);
            else
                tp_kd_rows(&c, g, t, R, V, 1.0f);
            double worst = 0;
            for (int i = 0; i < R * V; i += 3) {
                const float h = 1e-2f;
                double lpv, lmv;
                memcpy(w, s, sizeof w);
                w[i] += h;
                lpv = topk ? tp_kd_rows_topk(&c, w, idx, lp, K, R, V, 1.0f) : tp_kd_rows(&c, w, t, R, V, 1.0f);
                memcpy(w, s, sizeof w);
                w[i] -= h;
                lmv = topk ? tp_kd_rows_topk(&c, w, idx, lp, K, R, V, 1.0f) : tp_kd_rows(&c, w, t, R, V, 1.0f);
                double fd = (lpv - lmv) / (2.0 * h), e = fabs(fd - g[i]);
                if (e > worst) worst = e;
            }
            TT_CHECK(worst < 2e-4, "kind %d topk %d: max |fd - grad| %.2e", ki, topk, worst);
        }
}

TT_TEST(kd_hidden_finite_differences) {
    enum { N = 3, DS = 5, DT = 6 };
    tp_rng r;
    tp_rng_seed(&r, 9);
    float xs[N * DS], xt[N * DT], P[DT * DS], dx[N * DS], dP[DT * DS];
    fill(xs, N * DS, &r, 1.0f);
    fill(xt, N * DT, &r, 1.0f);
    fill(P, DT * DS, &r, 0.5f);
    for (int kind = 0; kind < 2; kind++) {
        memset(dx, 0, sizeof dx);
        memset(dP, 0, sizeof dP);
        tp_hidden_loss((tp_hid_kind)kind, xs, DS, xt, DT, N, P, dx, dP, 1.0f);
        double worst = 0;
        const float h = 1e-2f;
        for (int i = 0; i < N * DS; i++) {
            float o = xs[i];
            xs[i] = o + h;
            double a = tp_hidden_loss((tp_hid_kind)kind, xs, DS, xt, DT, N, P, NULL, NULL, 1.0f);
            xs[i] = o - h;
            double b = tp_hidden_loss((tp_hid_kind)kind, xs, DS, xt, DT, N, P, NULL, NULL, 1.0f);
            xs[i] = o;
            worst = fmax(worst, fabs((a - b) / (2 * h) - dx[i]));
        }
        for (int i = 0; i < DT * DS; i++) {
            float o = P[i];
            P[i] = o + h;
            double a = tp_hidden_loss((tp_hid_kind)kind, xs, DS, xt, DT, N, P, NULL, NULL, 1.0f);
            P[i] = o - h;
            double b = tp_hidden_loss((tp_hid_kind)kind, xs, DS, xt, DT, N, P, NULL, NULL, 1.0f);
            P[i] = o;
            worst = fmax(worst, fabs((a - b) / (2 * h) - dP[i]));
        }
        TT_CHECK(worst < 1e-3, "%s: max |fd - grad| %.2e", kind ? "mse" : "cosine", worst);
    }
}

/* ---- contrastive loss ---- */

static int32_t *ints_of(const cJSON *j, const char *name, size_t n) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!cJSON_IsArray(a) || (size_t)cJSON_GetArraySize(a) != n) return NULL;
    int32_t *v = malloc(n * sizeof *v);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) v[i++] = (int32_t)e->valueint;
    return v;
}

/* loss and gradient of fixed candidates against torch autograd, random and saturated logits */
TT_TEST(kd_contrastive_vs_torch) {
    cJSON *j = load_ref();
    const cJSON *cj = j ? cJSON_GetObjectItemCaseSensitive(j, "contrastive") : NULL;
    if (!cj) {
        tt_skip("no contrastive cases in kd/kd.json (run tests/ref/kd_ref.py)");
        cJSON_Delete(j);
        return;
    }
    size_t R = (size_t)num(j, "R"), V = (size_t)num(j, "V");
    int nc = (int)num(cj, "N") + 1;
    float *s = floats(j, "s", R * V), *sat = floats(cj, "s_saturated", R * V), *dense = malloc(R * V * sizeof(float));
    float *g = malloc(R * (size_t)nc * sizeof(float));
    int32_t *cand = ints_of(cj, "cand", R * (size_t)nc);
    TT_CHECK(s && sat && cand, "fixture arrays");
    double worst_l = 0, worst_g = 0;
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(cj, "cases")) {
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        tp_kd_cfg cfg = {TP_KD_FKL, (float)num(c, "tau"), (int)num(c, "tau2"), 0.5f};
        const float *x = !strcmp(name, "random") ? s : sat;
        double loss = tp_kd_contrastive(&cfg, x, V, cand, nc, R, 1.0f, g);
        memset(dense, 0, R * V * sizeof(float));
        int finite = isfinite(loss);
        for (size_t r = 0; r < R; r++)
            for (int i = 0; i < nc; i++) {
                dense[r * V + (size_t)cand[r * (size_t)nc + (size_t)i]] += g[r * (size_t)nc + (size_t)i];
                finite &= isfinite(g[r * (size_t)nc + (size_t)i]) != 0;
            }
        float *ref = floats(c, "grad", R * V);
        double ref_loss = num(c, "loss");
        double el = fabs(loss - ref_loss) / fmax(fabs(ref_loss), 1e-12), eg = rel_err(dense, ref, R * V);
        TT_CHECK(finite && el < 1e-5 && eg < 1e-4, "%s tau %.1f tau2 %d: loss %.9g vs %.9g (rel %.2e), grad rel %.2e",
                 name, cfg.tau, cfg.tau2, loss, ref_loss, el, eg);
        worst_l = fmax(worst_l, el);
        worst_g = fmax(worst_g, eg);
        free(ref);
        n++;
    }
    tt_note("%d cases (random and saturated student logits x 3 temperatures, 4 negatives): worst loss rel %.2e, "
            "worst grad rel %.2e", n, worst_l, worst_g);
    /* tests/ref/kd_ref.py: (random, saturated) x 3 temperatures, N = 4 negatives */
    TT_CHECK(n == 6 && nc == 5, "compared %d contrastive cases with %d candidates (expected 6 with 5)", n, nc);
    free(s);
    free(sat);
    free(dense);
    free(g);
    free(cand);
    cJSON_Delete(j);
}

/* The sampler: y* is the argmax, negatives are distinct, never y*, reproducible from (seed, row),
 * and for one negative each token comes with probability p_j / (1 - p(y*)). */
TT_TEST(kd_contrastive_sampling) {
    enum { V = 6 };
    const float t[V] = {2.0f, 0.5f, 1.0f, -1.0f, 0.0f, 1.5f};
    const float tau = 1.25f;
    double p[V], z = 0;
    for (int j = 0; j < V; j++) z += p[j] = exp(t[j] / tau);
    int32_t cand[V];
    long count[V] = {0};
    const long n = 200000;
    for (long r = 0; r < n; r++) {
        tp_kd_pick(t, NULL, V, 1.0 / tau, 1, 77, (uint64_t)r, cand);
        count[cand[1]]++;
    }
    double worst_sigma = 0;
    for (int j = 1; j < V; j++) {
        double q = p[j] / (z - p[0]), sd = sqrt(n * q * (1 - q)), dev = fabs(count[j] - n * q) / sd;
        worst_sigma = fmax(worst_sigma, dev);
    }
    TT_CHECK(count[0] == 0 && worst_sigma < 4.5, "one negative: y* never drawn (%ld), worst deviation %.2f sigma",
             count[0], worst_sigma);
    tt_note("200000 draws of 1 negative over 5 tokens: frequencies within %.2f sigma of p_j/(1-p*)", worst_sigma);

    /* larger pools: distinct, not y*, reproducible, seed-dependent; N = V-1 takes every other token */
    enum { VB = 300, N = 12, R = 64 };
    float *tb = malloc(VB * R * sizeof *tb);
    tp_rng rng;
    tp_rng_seed(&rng, 3);
    fill(tb, VB * R, &rng, 2.0f);
    int ok_distinct = 1, ok_repro = 1, n_differ = 0, ok_topk = 1;
    for (int r = 0; r < R; r++) {
        const float *row = tb + (size_t)r * VB;
        int32_t a[N + 1], b[N + 1], c[N + 1];
        tp_kd_pick(row, NULL, VB, 1.0 / 0.8, N, 5, (uint64_t)r, a);
        tp_kd_pick(row, NULL, VB, 1.0 / 0.8, N, 5, (uint64_t)r, b);
        tp_kd_pick(row, NULL, VB, 1.0 / 0.8, N, 6, (uint64_t)r, c);
        int32_t am = 0;
        for (int j = 1; j < VB; j++)
            if (row[j] > row[am]) am = j;
        ok_distinct &= a[0] == am;
        for (int i = 1; i <= N; i++) {
            ok_distinct &= a[i] != am && a[i] >= 0 && a[i] < VB;
            for (int k = 1; k < i; k++) ok_distinct &= a[i] != a[k];
        }
        ok_repro &= !memcmp(a, b, sizeof a);
        n_differ += memcmp(a + 1, c + 1, N * sizeof(int32_t)) != 0;
        /* the pool as the teacher's top-V log-probs gives the same draws as the raw logits */
        int32_t idx[VB], d[N + 1];
        float lp[VB];
        tp_kd_topk(row, VB, VB, 0.8f, idx, lp);
        tp_kd_pick(lp, idx, VB, 1.0, N, 5, (uint64_t)r, d);
        ok_topk &= !memcmp(a, d, sizeof a);
    }
    TT_CHECK(ok_distinct, "y* is the argmax; negatives distinct, in range, never y*");
    TT_CHECK(ok_repro, "same seed and row: same draws");
    TT_CHECK(n_differ > R / 2, "another seed changes the draws (%d of %d rows)", n_differ, R);
    TT_CHECK(ok_topk, "top-V pool of log-probs draws what the full logits draw");
    int32_t all[VB];
    TT_CHECK(tp_kd_pick(tb, NULL, VB, 1.0, VB - 1, 1, 0, all) == TP_OK, "N = V-1 allowed");
    long sum = 0;
    for (int i = 0; i < VB; i++) sum += all[i];
    TT_CHECK(sum == (long)VB * (VB - 1) / 2, "N = V-1: every token exactly once");
    TT_CHECK(tp_kd_pick(tb, NULL, VB, 1.0, VB, 1, 0, all) == TP_ERR_ARG && strstr(tp_errmsg(), "299"),
             "N = V refused: %s", tp_errmsg());
    TT_CHECK(tp_kd_pick(tb, NULL, VB, 1.0, 0, 1, 0, all) == TP_ERR_ARG, "N = 0 refused");
    free(tb);
}

/* All the teacher's mass on y* (its other tokens have probability exp(-1000) = 0 in double): the
 * draws stay valid (Gumbel keys on the finite log-probs), and the loss and gradient are finite, also
 * when the student agrees completely (loss 0, gradient 0) or disagrees completely. */
TT_TEST(kd_contrastive_edge_cases) {
    enum { V = 50, N = 7 };
    float t[V], s[V];
    for (int j = 0; j < V; j++) t[j] = 0.0f;
    t[17] = 1000.0f;
    int32_t cand[N + 1], idx[10];
    float lp[10], g[N + 1];
    TT_CHECK(tp_kd_pick(t, NULL, V, 1.0, N, 9, 4, cand) == TP_OK && cand[0] == 17, "y* = 17");
    int ok = 1;
    for (int i = 1; i <= N; i++) ok &= cand[i] != 17 && cand[i] >= 0 && cand[i] < V;
    tp_kd_topk(t, V, 10, 1.0f, idx, lp);
    TT_CHECK(tp_kd_pick(lp, idx, 10, 1.0, N, 9, 4, cand) == TP_OK && cand[0] == 17, "top-10 pool: y* = 17");
    for (int i = 1; i <= N; i++) ok &= cand[i] != 17;
    TT_CHECK(ok, "negatives valid when all mass is on y*");
    tp_kd_cfg c = {TP_KD_FKL, 0.5f, 1, 0.5f};
    for (int j = 0; j < V; j++) s[j] = -1000.0f;
    s[17] = 1000.0f; /* the student agrees */
    double l = tp_kd_contrastive(&c, s, V, cand, N + 1, 1, 1.0f, g);
    float mg = 0;
    for (int i = 0; i <= N; i++) mg = fmaxf(mg, fabsf(g[i]));
    TT_CHECK(l == 0 && mg == 0, "agreeing student: loss %.3g, max |grad| %.3g", l, mg);
    s[17] = -1000.0f;
    s[cand[1]] = 1000.0f; /* the student prefers a negative */
    l = tp_kd_contrastive(&c, s, V, cand, N + 1, 1, 1.0f, g);
    double want = 2000.0 / 0.5 * 0.25; /* (z_neg - z_pos) tau^2 */
    TT_CHECK(fabs(l - want) < 1e-9 * want && fabs(g[0] + 0.5f) < 1e-6f && fabs(g[1] - 0.5f) < 1e-6f,
             "disagreeing student: loss %.9g (want %.9g), grads %.6g %.6g (want -/+ tau = 0.5)", l, want, g[0], g[1]);
    TT_CHECK(tp_kd_pick(lp, idx, 10, 1.0, 10, 9, 4, cand) == TP_ERR_ARG, "10 negatives from a top-10 pool refused: %s",
             tp_errmsg());
}
