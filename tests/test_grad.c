/* Backward-pass tests: every parameter gradient of tiny transformers models against PyTorch
 * autograd (fixtures from tests/ref/grad_ref.py: CE, a custom logit loss with grad_scale and
 * accumulation, gradient injection through grad hooks), central finite differences of every
 * op (double-precision definitions written here) and of a whole model, the fast training
 * kernels against their naive twins with guard floats around outputs, recompute and run-to-run
 * bit-identity, and tp_ce_eval against the step's loss and tp_forward's logits. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels.h"
#include "model/model_internal.h"
#include "train/train_internal.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/util.h"
#include "tt.h"

/* ------------------------------ helpers ------------------------------ */

static void fill(float *x, size_t n, tp_rng *r, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * tp_rng_normal(r);
}

#define GUARD 16
#define GUARD_VAL 1234.5f
/* n floats with GUARD sentinel floats on each side. */
static float *galloc(size_t n) {
    float *p = malloc((n + 2 * GUARD) * sizeof *p);
    for (size_t i = 0; i < n + 2 * GUARD; i++) p[i] = GUARD_VAL;
    return p + GUARD;
}
static int gok(const float *p, size_t n) {
    for (size_t i = 0; i < GUARD; i++)
        if (p[-1 - (long)i] != GUARD_VAL || p[n + i] != GUARD_VAL) return 0;
    return 1;
}
static void gfree(float *p) {
    if (p) free(p - GUARD);
}

/* max |a-b| / max(|b|) and whether every |a-b| <= atol + rtol*|b| */
static double rel_err(const float *a, const float *b, size_t n, double atol, double rtol, int *ok) {
    double md = 0, mb = 0;
    *ok = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md) md = d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
        if (!(d <= atol + rtol * fabs(b[i]))) *ok = 0;
    }
    return mb > 0 ? md / mb : md;
}

static cJSON *grad_index(void) { return tt_fixture_json("grad/index.json"); }

static float *grad_file(const char *name, size_t n) {
    char rel[256];
    snprintf(rel, sizeof rel, "grad/%s", name);
    return tt_fixture_f32(rel, n, 1);
}

static tp_model *grad_model(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "grad/%s", name);
    return tt_fixture_model(rel);
}

static int32_t *json_i32(const cJSON *arr, size_t n) {
    int32_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(arr, (int)i);
        v[i] = e ? (int32_t)e->valuedouble : 0;
    }
    return v;
}

/* Compares every gradient of a run with the reference (scaled by k); returns the worst
 * max|diff|/max|ref| over tensors. Fails when a tensor is over 1e-4 or an element is over
 * 2e-5*max|ref| + 1e-3*|ref|, or when the reference does not cover every parameter. */
static double compare_grads(tp_model *grad, const cJSON *run, const float *ref, double k, const char *what) {
    const cJSON *tensors = cJSON_GetObjectItem(run, "tensors");
    double worst = 0;
    const char *worst_name = "";
    size_t covered = 0;
    int compared = 0;
    for (int i = 0; i < cJSON_GetArraySize(tensors); i++) {
        const cJSON *t = cJSON_GetArrayItem(tensors, i);
        const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
        size_t off = (size_t)cJSON_GetObjectItem(t, "offset")->valuedouble, n = 0;
        float *g = tp_model_tensor(grad, name, &n);
        if (!TT_CHECK(g != NULL, "%s: no tensor for %s", what, name)) continue;
        float *r = malloc(n * sizeof *r);
        double mr = 0;
        for (size_t j = 0; j < n; j++) {
            r[j] = (float)(k * ref[off + j]);
            if (fabs(r[j]) > mr) mr = fabs(r[j]);
        }
        int ok;
        double e = rel_err(g, r, n, 2e-5 * mr, 1e-3, &ok);
        TT_CHECK(ok && e <= 1e-4, "%s: %s max|diff|/max|ref| %.3g (elementwise ok %d)", what, name, e, ok);
        if (e > worst) worst = e, worst_name = name;
        covered += n;
        compared++;
        free(r);
    }
    /* every tensor of the model, each once (grad_ref.py writes them all, in tp_model_tensors order) */
    TT_CHECK(compared == tp_model_tensors(grad, NULL, 0), "%s: compared %d gradient tensors (expected %d)", what,
             compared, tp_model_tensors(grad, NULL, 0));
    TT_CHECK(covered == grad->n_params, "%s: reference covers %zu of %zu parameters", what, covered, grad->n_params);
    tt_note("%s: worst max|diff|/max|ref| %.2e (%s), torch float32 itself %.2e", what, worst, worst_name,
            cJSON_GetObjectItem(run, "torch_f32_rel")->valuedouble);
    return worst;
}

typedef struct {
    const float *w;  /* (N, V) */
    size_t next_row; /* rows must come in order, each once */
    int bad;
} wloss;

/* loss = sum(logits * w); d/dlogits = w */
static double weighted_loss(void *u, size_t r0, size_t r1, float *logits, size_t V) {
    wloss *wl = u;
    if (r0 != wl->next_row || r1 <= r0 || r1 - r0 > 512) wl->bad = 1;
    wl->next_row = r1;
    double s = 0;
    const float *w = wl->w + r0 * V;
    for (size_t i = 0; i < (r1 - r0) * V; i++) {
        s += (double)logits[i] * w[i];
        logits[i] = w[i];
    }
    return s;
}

static const char *const point_names[] = {"LAYER_IN", "ATTN_NORM", "ATTN_OUT", "MLP_NORM", "MLP_GATE",
                                          "MLP_UP", "MLP_ACT", "LAYER_OUT", "FINAL_NORM"};

typedef struct {
    int n;
    int point[8], layer[8], width[8], hits[8];
    const float *w[8];
    /* every call seen: forward (f) and backward (g) sequences as point*1000 + layer */
    int nf, ng, fseq[512], gseq[512];
} injector;

static void inj_fwd(void *u, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    (void)x; (void)B; (void)T; (void)width;
    injector *in = u;
    if (in->nf < 512) in->fseq[in->nf++] = (int)p * 1000 + layer;
}

static void inj_grad(void *u, tp_hook_point p, int layer, const float *x, float *dx, int B, int T, int width) {
    (void)x;
    injector *in = u;
    if (in->ng < 512) in->gseq[in->ng++] = (int)p * 1000 + layer;
    for (int k = 0; k < in->n; k++)
        if (in->point[k] == (int)p && in->layer[k] == layer && in->width[k] == width) {
            in->hits[k]++;
            for (size_t i = 0; i < (size_t)B * T * (size_t)width; i++) dx[i] += in->w[k][i];
        }
}

/* ------------------------- vs PyTorch autograd ------------------------- */

/* Every parameter gradient of every run of tests/fixtures/grad against PyTorch (float64
 * autograd of the float32 model): the plain step, the same with recompute=1 as two accumulated
 * half-scaled steps, a custom logit loss with grad_scale, and injection through grad hooks. */
TT_TEST(grad_matches_pytorch_autograd) {
    cJSON *idx = grad_index();
    if (!TT_CHECK(idx != NULL, "tests/fixtures/grad/index.json missing (run tests/ref/grad_ref.py)")) return;
    const cJSON *runs = cJSON_GetObjectItem(idx, "runs");
    /* RUNS of tests/ref/grad_ref.py: 5 "ce", 1 "custom", 2 "hook" (5 injection points each) */
    int n_runs = 0, n_kind[3] = {0, 0, 0};
    TT_CHECK(cJSON_GetArraySize(runs) == 8, "grad/index.json holds %d runs (expected 8)", cJSON_GetArraySize(runs));
    for (int r = 0; r < cJSON_GetArraySize(runs); r++) {
        const cJSON *run = cJSON_GetArrayItem(runs, r);
        const char *name = cJSON_GetObjectItem(run, "name")->valuestring;
        const char *kind = cJSON_GetObjectItem(run, "kind")->valuestring;
        int B = (int)cJSON_GetObjectItem(run, "B")->valuedouble, T = (int)cJSON_GetObjectItem(run, "T")->valuedouble;
        size_t N = (size_t)B * T;
        tp_model *m = grad_model(cJSON_GetObjectItem(run, "model")->valuestring);
        if (!m) continue;
        size_t V = (size_t)m->cfg.vocab, n_ref = m->n_params;
        float *ref = grad_file(cJSON_GetObjectItem(run, "grad_file")->valuestring, n_ref);
        int32_t *tok = json_i32(cJSON_GetObjectItem(run, "tokens"), N);
        int32_t *tg = json_i32(cJSON_GetObjectItem(run, "targets"), N);
        double ref_loss = cJSON_GetObjectItem(run, "loss")->valuedouble;
        tp_model *g = NULL;
        tp_tape *tape = NULL;
        TT_CHECK(ref != NULL, "%s: gradient file", name);
        TT_CHECK(tp_model_alloc(&m->cfg, &g) == TP_OK && tp_tape_alloc(&m->cfg, B, T, 0, &tape) == TP_OK, "%s: %s",
                 name, tp_errmsg());
        if (!ref || !g || !tape) goto next;
        size_t counted = 0, exp_counted = 0;
        for (size_t i = 0; i < N; i++) exp_counted += tg[i] != TP_IGNORE_INDEX;
        double loss = 0;
        tp_step_opts o = {.targets = tg};
        if (!strcmp(kind, "ce")) {
            TT_CHECK(tp_train_step(m, g, tape, tok, B, T, &o, &loss, &counted) == TP_OK, "%s: %s", name, tp_errmsg());
            compare_grads(g, run, ref, 1.0, name);
            /* recompute, gradients added over two steps of grad_scale 0.5 into a non-zero grad */
            tp_tape *tr = NULL;
            TT_CHECK(tp_tape_alloc(&m->cfg, B, T, 1, &tr) == TP_OK, "recompute tape: %s", tp_errmsg());
            memset(g->params, 0, g->n_params * sizeof(float));
            o.grad_scale = 0.5f;
            for (int k = 0; k < 2 && tr; k++)
                TT_CHECK(tp_train_step(m, g, tr, tok, B, T, &o, NULL, NULL) == TP_OK, "step: %s", tp_errmsg());
            char what[96];
            snprintf(what, sizeof what, "%s (recompute, 2 x grad_scale 0.5)", name);
            compare_grads(g, run, ref, 1.0, what);
            tp_tape_free(tr);
            n_kind[0]++;
        } else if (!strcmp(kind, "custom")) {
            float *w = grad_file(cJSON_GetObjectItem(run, "weights_file")->valuestring, N * V);
            wloss wl = {w, 0, 0};
            tp_step_opts oc = {.targets = tg, .loss = weighted_loss, .loss_user = &wl, .grad_scale = 0.25f};
            if (TT_CHECK(w != NULL, "%s: weights", name)) {
                TT_CHECK(tp_train_step(m, g, tape, tok, B, T, &oc, &loss, &counted) == TP_OK, "%s: %s", name,
                         tp_errmsg());
                TT_CHECK(!wl.bad && wl.next_row == N, "loss called on rows in order, in chunks of <= 512");
                compare_grads(g, run, ref, 0.25, name);
                n_kind[1]++;
            }
            free(w);
        } else if (!strcmp(kind, "hook")) {
            const cJSON *hooks = cJSON_GetObjectItem(run, "hooks");
            injector in = {0};
            size_t tot = 0;
            in.n = cJSON_GetArraySize(hooks);
            TT_CHECK(in.n == 5, "%s: %d injection points (expected 5)", name, in.n);
            for (int k = 0; k < in.n; k++)
                tot += N * (size_t)cJSON_GetObjectItem(cJSON_GetArrayItem(hooks, k), "width")->valuedouble;
            float *w = grad_file(cJSON_GetObjectItem(run, "weights_file")->valuestring, tot);
            TT_CHECK(w != NULL && in.n <= 8, "%s: weights", name);
            for (int k = 0, off = 0; w && k < in.n && k < 8; k++) {
                const cJSON *h = cJSON_GetArrayItem(hooks, k);
                const char *pn = cJSON_GetObjectItem(h, "point")->valuestring;
                in.point[k] = -1;
                for (int p = 0; p < TP_HOOK_COUNT; p++)
                    if (!strcmp(pn, point_names[p])) in.point[k] = p;
                in.layer[k] = (int)cJSON_GetObjectItem(h, "layer")->valuedouble;
                in.width[k] = (int)cJSON_GetObjectItem(h, "width")->valuedouble;
                in.w[k] = w + off;
                off += (int)N * in.width[k];
            }
            tp_step_opts oh = {.targets = tg, .hook = inj_fwd, .hook_user = &in, .grad_hook = inj_grad,
                               .grad_hook_user = &in};
            if (w) {
                TT_CHECK(tp_train_step(m, g, tape, tok, B, T, &oh, &loss, &counted) == TP_OK, "%s: %s", name,
                         tp_errmsg());
                for (int k = 0; k < in.n; k++)
                    TT_CHECK(in.hits[k] == 1, "%s: injection point %s/%d hit %d times", name,
                             point_names[in.point[k] < 0 ? 0 : in.point[k]], in.layer[k], in.hits[k]);
                compare_grads(g, run, ref, 1.0, name);
                /* the grad hooks are the forward hooks in reverse order */
                int L = m->cfg.n_layers, same = in.nf == in.ng && in.nf == 8 * L + 1;
                for (int i = 0; same && i < in.nf; i++) same = in.fseq[i] == in.gseq[in.ng - 1 - i];
                TT_CHECK(same, "%s: %d forward hook calls, %d grad hook calls, not mirrored", name, in.nf, in.ng);
                n_kind[2]++;
            }
            free(w);
        }
        TT_CHECK(counted == exp_counted, "%s: counted %zu, expected %zu",
                 name, counted, exp_counted);
        TT_NEAR(loss, ref_loss, 1e-5 * fabs(ref_loss), 0);
        n_runs++;
    next:
        tp_tape_free(tape);
        tp_model_free(g);
        tp_model_free(m);
        free(ref); free(tok); free(tg);
    }
    TT_CHECK(n_runs == 8 && n_kind[0] == 5 && n_kind[1] == 1 && n_kind[2] == 2,
             "compared %d runs: %d ce, %d custom, %d hook (expected 8: 5, 1, 2)", n_runs, n_kind[0], n_kind[1],
             n_kind[2]);
    cJSON_Delete(idx);
}

/* --------------------- finite differences, per op --------------------- */
/* Each op's definition in double (written here, independent of the kernels); the float kernel's
 * forward is checked against it and its backward against central differences of it. */

typedef double (*scalar_fn)(void *ctx, const double *p);

/* Central differences of f at p (n values), step h, into g. */
static void fd_grad(scalar_fn f, void *ctx, double *p, size_t n, double h, double *g) {
    for (size_t i = 0; i < n; i++) {
        double s = p[i];
        p[i] = s + h;
        double a = f(ctx, p);
        p[i] = s - h;
        double b = f(ctx, p);
        p[i] = s;
        g[i] = (a - b) / (2 * h);
    }
}

/* |got - fd| <= 1e-5 * max|fd| + 1e-4 * |fd| for every element; returns the worst relative. */
static double check_fd(const char *what, const float *got, const double *fd, size_t n) {
    double mf = 0, md = 0;
    for (size_t i = 0; i < n; i++) mf = fmax(mf, fabs(fd[i]));
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - fd[i]);
        md = fmax(md, d);
        if (!(d <= 1e-5 * mf + 1e-4 * fabs(fd[i]))) ok = 0;
    }
    TT_CHECK(ok && mf > 0, "%s: max|grad - fd| %.3g, max|fd| %.3g", what, md, mf);
    return mf > 0 ? md / mf : md;
}

static double *to_d(const float *x, size_t n) {
    double *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* RMSNorm: p = [x (N,d), w (d)]; f = sum dout * w x / sqrt(mean x^2 + eps) */
typedef struct { size_t N, d; double eps; const float *dout; } rms_ctx;
static double rms_f(void *c_, const double *p) {
    rms_ctx *c = c_;
    const double *x = p, *w = p + c->N * c->d;
    double f = 0;
    for (size_t n = 0; n < c->N; n++) {
        double ss = 0;
        for (size_t i = 0; i < c->d; i++) ss += x[n * c->d + i] * x[n * c->d + i];
        double r = 1 / sqrt(ss / (double)c->d + c->eps);
        for (size_t i = 0; i < c->d; i++) f += c->dout[n * c->d + i] * w[i] * x[n * c->d + i] * r;
    }
    return f;
}

TT_TEST(grad_fd_rmsnorm) {
    tp_rng r;
    tp_rng_seed(&r, 21);
    size_t N = 3, d = 7, nx = N * d;
    float x[21], w[7], dout[21], y[21], rstd[3], dx[21], dw[7];
    fill(x, nx, &r, 1.5f);
    fill(dout, nx, &r, 1);
    for (size_t i = 0; i < d; i++) w[i] = 1 + 0.3f * tp_rng_normal(&r);
    rms_ctx c = {N, d, 1e-5, dout};
    tp_rmsnorm_fwd(x, w, y, rstd, N, d, 1e-5f);
    double f = 0;
    for (size_t i = 0; i < nx; i++) f += (double)dout[i] * y[i];
    float p32[28];
    memcpy(p32, x, sizeof x);
    memcpy(p32 + nx, w, sizeof w);
    double *p = to_d(p32, nx + d), g[28];
    TT_NEAR(f, rms_f(&c, p), 1e-6 * fabs(f), 0);
    /* accumulation: start from 1 and subtract it again */
    for (size_t i = 0; i < nx; i++) dx[i] = 1;
    for (size_t i = 0; i < d; i++) dw[i] = 1;
    tp_rmsnorm_bwd(x, w, rstd, dout, dx, dw, 1.0f, N, d);
    for (size_t i = 0; i < nx; i++) dx[i] -= 1;
    for (size_t i = 0; i < d; i++) dw[i] -= 1;
    fd_grad(rms_f, &c, p, nx + d, 1e-6, g);
    double e1 = check_fd("rmsnorm dx", dx, g, nx), e2 = check_fd("rmsnorm dw", dw, g + nx, d);
    tt_note("rmsnorm vs finite differences: dx %.2e, dw %.2e", e1, e2);
    free(p);
}

/* RoPE: p = x (N, nh*hd); f = sum dout * rope(x), angle pos*inv_freq in float as the kernel */
typedef struct { size_t N; int nh, hd; const int *pos; const float *inv; const float *dout; } rope_ctx;
static double rope_f(void *c_, const double *x) {
    rope_ctx *c = c_;
    int half = c->hd / 2;
    double f = 0;
    for (size_t n = 0; n < c->N; n++)
        for (int h = 0; h < c->nh; h++)
            for (int j = 0; j < half; j++) {
                double a = (float)c->pos[n] * c->inv[j], cs = cos(a), sn = sin(a);
                size_t o = (n * c->nh + h) * c->hd;
                double x0 = x[o + j], x1 = x[o + j + half];
                f += c->dout[o + j] * (x0 * cs - x1 * sn) + c->dout[o + j + half] * (x1 * cs + x0 * sn);
            }
    return f;
}

TT_TEST(grad_fd_rope) {
    tp_rng r;
    tp_rng_seed(&r, 22);
    tp_config cfg = {.head_dim = 6, .rope_theta = 10000.0f, .rope_scaling = TP_ROPE_LLAMA3, .rope_factor = 8,
                     .rope_low_freq = 1, .rope_high_freq = 4, .rope_orig_max_pos = 16};
    float inv[3];
    tp_rope_inv_freq(&cfg, inv);
    int pos[4] = {0, 3, 17, 250};
    size_t N = 4, n = N * 3 * 6;
    float x[72], dout[72], y[72], dx[72];
    fill(x, n, &r, 1);
    fill(dout, n, &r, 1);
    rope_ctx c = {N, 3, 6, pos, inv, dout};
    memcpy(y, x, sizeof x);
    tp_rope_apply(y, N, 3, 6, pos, inv);
    double f = 0, *p = to_d(x, n), g[72];
    for (size_t i = 0; i < n; i++) f += (double)dout[i] * y[i];
    TT_NEAR(f, rope_f(&c, p), 1e-5 * fabs(f), 1e-6);
    memcpy(dx, dout, sizeof dout);
    tp_rope_bwd(dx, N, 3, 6, pos, inv);
    fd_grad(rope_f, &c, p, n, 1e-6, g);
    tt_note("rope vs finite differences: %.2e", check_fd("rope dx", dx, g, n));
    free(p);
}

/* Causal attention of two query heads sharing one K/V head (GQA), queries at positions
 * p0..p0+T-1: p = [Q1 (T,hd), Q2 (T,hd), K (p0+T,hd), V (p0+T,hd)];
 * f = sum over heads of sum dO_h * softmax(scale Q_h K^T + mask) V */
typedef struct { int T, p0, hd; double scale; const float *dO; int window; } att_ctx;
static double att_head_f(const att_ctx *c, const double *Q, const double *K, const double *V, const float *dO) {
    int Tk = c->p0 + c->T;
    double f = 0, *s = malloc((size_t)Tk * sizeof *s);
    for (int i = 0; i < c->T; i++) {
        int nv = c->p0 + i + 1, lo = c->window && nv - c->window > 0 ? nv - c->window : 0;
        double mx = -INFINITY, sum = 0;
        for (int j = lo; j < nv; j++) {
            double a = 0;
            for (int e = 0; e < c->hd; e++) a += Q[i * c->hd + e] * K[j * c->hd + e];
            s[j] = a * c->scale;
            mx = fmax(mx, s[j]);
        }
        for (int j = lo; j < nv; j++) sum += (s[j] = exp(s[j] - mx));
        for (int e = 0; e < c->hd; e++) {
            double o = 0;
            for (int j = lo; j < nv; j++) o += s[j] / sum * V[j * c->hd + e];
            f += dO[i * c->hd + e] * o;
        }
    }
    free(s);
    return f;
}
static double att_f(void *c_, const double *p) {
    att_ctx *c = c_;
    size_t nq = (size_t)c->T * c->hd, nk = (size_t)(c->p0 + c->T) * c->hd;
    const double *K = p + 2 * nq, *V = K + nk;
    return att_head_f(c, p, K, V, c->dO) + att_head_f(c, p + nq, K, V, c->dO + nq);
}

static void fd_attention(int T, int p0, int window, int hd, unsigned seed) {
    tp_rng r;
    tp_rng_seed(&r, seed);
    int Tk = p0 + T;
    size_t nq = (size_t)T * hd, nk = (size_t)Tk * hd, n = 2 * nq + 2 * nk;
    float *p32 = malloc(n * sizeof *p32), *dO = malloc(2 * nq * sizeof *dO);
    fill(p32, n, &r, 1.2f);
    fill(dO, 2 * nq, &r, 1);
    float scale = 1.0f / sqrtf((float)hd);
    att_ctx c = {T, p0, hd, scale, dO, window};
    const float *Q = p32, *K = p32 + 2 * nq, *V = K + nk;
    float *O = malloc(2 * nq * sizeof *O), *lse = malloc(2 * (size_t)T * sizeof *lse);
    float *S = malloc(2 * TP_ATT_BLOCK * (size_t)Tk * sizeof *S), *grad = calloc(n, sizeof *grad);
    double f = 0;
    for (int h = 0; h < 2; h++) {
        tp_attention_head_lse(Q + h * nq, hd, K, V, hd, O + h * nq, hd, lse + h * T, T, p0, window, hd, scale, S);
        for (size_t i = 0; i < nq; i++) f += (double)dO[h * nq + i] * O[h * nq + i];
    }
    double *p = to_d(p32, n), *g = malloc(n * sizeof *g);
    TT_NEAR(f, att_f(&c, p), 1e-5 * fabs(f), 1e-6);
    float *dK = grad + 2 * nq, *dV = dK + nk;
    for (int h = 0; h < 2; h++)
        tp_attention_head_bwd(Q + h * nq, hd, K, V, hd, O + h * nq, dO + h * nq, hd, lse + h * T, grad + h * nq, hd,
                              dK, dV, hd, T, p0, window, hd, scale, S);
    fd_grad(att_f, &c, p, n, 1e-6, g);
    char w[64];
    snprintf(w, sizeof w, "attention T=%d p0=%d window=%d dQ", T, p0, window);
    double e1 = check_fd(w, grad, g, 2 * nq);
    snprintf(w, sizeof w, "attention T=%d p0=%d window=%d dK", T, p0, window);
    double e2 = check_fd(w, dK, g + 2 * nq, nk);
    snprintf(w, sizeof w, "attention T=%d p0=%d window=%d dV", T, p0, window);
    double e3 = check_fd(w, dV, g + 2 * nq + nk, nk);
    tt_note("GQA attention (2 heads / 1 KV head) T=%d p0=%d window=%d hd=%d vs finite differences: dQ %.2e dK %.2e "
            "dV %.2e", T, p0, window, hd, e1, e2, e3);
    free(p32); free(dO); free(O); free(lse); free(S); free(grad); free(p); free(g);
}

TT_TEST(grad_fd_attention) {
    fd_attention(7, 0, 0, 6, 23);
    fd_attention(7, 3, 0, 6, 24);
    fd_attention(67, 0, 0, 4, 25); /* more than one query block */
    fd_attention(9, 3, 4, 6, 26);  /* sliding window of 4 */
    fd_attention(67, 2, 50, 4, 27); /* window across query blocks */
}

/* SwiGLU: p = [g (n), u (n)]; f = sum da * silu(g) * u */
typedef struct { size_t n; const float *da; } swi_ctx;
static double swi_f(void *c_, const double *p) {
    swi_ctx *c = c_;
    double f = 0;
    for (size_t i = 0; i < c->n; i++) f += c->da[i] * p[i] / (1 + exp(-p[i])) * p[c->n + i];
    return f;
}

TT_TEST(grad_fd_swiglu) {
    tp_rng r;
    tp_rng_seed(&r, 26);
    size_t n = 30;
    float gu[60], da[30], a[30], dg[30], du[30];
    fill(gu, 2 * n, &r, 3);
    fill(da, n, &r, 1);
    swi_ctx c = {n, da};
    memcpy(a, gu, n * sizeof *a);
    tp_silu_mul(a, gu + n, n);
    double f = 0, *p = to_d(gu, 2 * n), g[60];
    for (size_t i = 0; i < n; i++) f += (double)da[i] * a[i];
    TT_NEAR(f, swi_f(&c, p), 1e-6 * fabs(f), 1e-6);
    tp_silu_mul_bwd(gu, gu + n, da, dg, du, n);
    fd_grad(swi_f, &c, p, 2 * n, 1e-6, g);
    double e1 = check_fd("swiglu dg", dg, g, n), e2 = check_fd("swiglu du", du, g + n, n);
    /* dg may alias da */
    float dd[30];
    memcpy(dd, da, sizeof dd);
    tp_silu_mul_bwd(gu, gu + n, dd, dd, du, n);
    TT_CHECK(memcmp(dd, dg, sizeof dd) == 0, "swiglu backward in place equals out of place");
    /* the one-pass forms (out != g) give the in-place forms' bits; g and u untouched */
    float a2[30], gcopy[60];
    memcpy(gcopy, gu, sizeof gcopy);
    tp_silu_mul_to(a2, gu, gu + n, n);
    TT_CHECK(memcmp(a2, a, sizeof a2) == 0 && memcmp(gcopy, gu, sizeof gcopy) == 0, "silu_mul_to = silu_mul");
    memcpy(a, gu, n * sizeof *a);
    tp_gelu_tanh_mul(a, gu + n, n);
    tp_gelu_tanh_mul_to(a2, gu, gu + n, n);
    TT_CHECK(memcmp(a2, a, sizeof a2) == 0 && memcmp(gcopy, gu, sizeof gcopy) == 0, "gelu_tanh_mul_to = gelu_tanh_mul");
    /* the bf16 forms (n = 30: one full vector and a masked tail) are the fp32 forms' outputs
     * rounded; nothing past n written; da untouched */
    unsigned short ab[32], dgb[32], dub[32], want[30];
    float dcopy[30];
    memcpy(dcopy, da, sizeof dcopy);
    for (int k = 0; k < 32; k++) ab[k] = dgb[k] = dub[k] = 0xabcd;
    tp_silu_mul_to(a2, gu, gu + n, n);
    tp_silu_mul_to_bf16(ab, gu, gu + n, n);
    tp_bf16_convert(a2, n, want);
    TT_CHECK(memcmp(ab, want, sizeof want) == 0 && ab[30] == 0xabcd && ab[31] == 0xabcd, "silu_mul_to_bf16");
    tp_silu_mul_bwd_bf16(gu, gu + n, da, dgb, dub, n);
    tp_bf16_convert(dg, n, want);
    TT_CHECK(memcmp(dgb, want, sizeof want) == 0 && dgb[30] == 0xabcd, "silu_mul_bwd_bf16: dg");
    tp_bf16_convert(du, n, want);
    TT_CHECK(memcmp(dub, want, sizeof want) == 0 && dub[30] == 0xabcd && memcmp(dcopy, da, sizeof dcopy) == 0,
             "silu_mul_bwd_bf16: du, da untouched");
    tt_note("swiglu vs finite differences: dg %.2e du %.2e", e1, e2);
    free(p);
}

/* Linear: p = [X (N,in), W (out,in), b (out)]; f = sum dY * (X W^T + b) */
typedef struct { size_t N, in, out; const float *dY; } lin_ctx;
static double lin_f(void *c_, const double *p) {
    lin_ctx *c = c_;
    const double *X = p, *W = p + c->N * c->in, *b = W + c->out * c->in;
    double f = 0;
    for (size_t n = 0; n < c->N; n++)
        for (size_t o = 0; o < c->out; o++) {
            double y = b[o];
            for (size_t i = 0; i < c->in; i++) y += X[n * c->in + i] * W[o * c->in + i];
            f += c->dY[n * c->out + o] * y;
        }
    return f;
}

TT_TEST(grad_fd_linear) {
    tp_rng r;
    tp_rng_seed(&r, 27);
    size_t N = 3, in = 5, out = 4, n = N * in + out * in + out;
    float p32[39], dY[12], dX[15], dW[24];
    fill(p32, n, &r, 1);
    fill(dY, N * out, &r, 1);
    lin_ctx c = {N, in, out, dY};
    double *p = to_d(p32, n), g[39];
    tp_matmul_dx(dY, p32 + N * in, dX, N, in, out, 0);
    memset(dW, 0, sizeof dW); /* dW (20) then db (4) */
    tp_matmul_dw(dY, p32, dW, dW + out * in, N, in, out, 1.0f);
    fd_grad(lin_f, &c, p, n, 1e-3, g);
    double e1 = check_fd("linear dX", dX, g, N * in), e2 = check_fd("linear dW,db", dW, g + N * in, out * in + out);
    tt_note("linear vs finite differences: dX %.2e dW,db %.2e", e1, e2);
    free(p);
}

/* Cross-entropy: p = logits (R,V); f = sum over counted rows of (logsumexp - logit[target]) / count */
typedef struct { size_t R, V; const int32_t *tg; double inv; } ce_ctx;
static double ce_f(void *c_, const double *p) {
    ce_ctx *c = c_;
    double f = 0;
    for (size_t i = 0; i < c->R; i++) {
        if (c->tg[i] == TP_IGNORE_INDEX) continue;
        double mx = -INFINITY, s = 0;
        for (size_t j = 0; j < c->V; j++) mx = fmax(mx, p[i * c->V + j]);
        for (size_t j = 0; j < c->V; j++) s += exp(p[i * c->V + j] - mx);
        f += (mx + log(s) - p[i * c->V + (size_t)c->tg[i]]) * c->inv;
    }
    return f;
}

TT_TEST(grad_fd_cross_entropy) {
    tp_rng r;
    tp_rng_seed(&r, 28);
    size_t R = 5, V = 13;
    int32_t tg[5] = {3, TP_IGNORE_INDEX, 0, 12, 7};
    float lg[65], gr[65];
    double rl[5];
    fill(lg, R * V, &r, 3);
    ce_ctx c = {R, V, tg, 1.0 / 4};
    double *p = to_d(lg, R * V), g[65];
    memcpy(gr, lg, sizeof lg);
    double s = tp_ce_rows(gr, tg, R, V, rl, 1, 0.25f);
    TT_NEAR(s / 4, ce_f(&c, p), 1e-6, 1e-6);
    TT_CHECK(rl[1] == 0, "ignored row has no loss");
    fd_grad(ce_f, &c, p, R * V, 1e-6, g);
    tt_note("cross-entropy / softmax vs finite differences: %.2e", check_fd("ce dlogits", gr, g, R * V));
    memcpy(gr, lg, sizeof lg);
    double s2 = tp_ce_rows(gr, tg, R, V, rl, 0, 0);
    TT_CHECK(s2 == s && memcmp(gr, lg, sizeof lg) == 0, "without gradient: same loss, logits untouched");
    free(p);
}

/* Whole model: a few parameters of the tiny Qwen2 (biases, tied embeddings) by central
 * differences of tp_ce_eval's float loss; the entry with the largest gradient of each tensor,
 * step 2e-3: float rounding of the loss and the step's truncation error each cost up to about
 * 5e-4 relative here (measured over steps 3e-4..1e-2), hence the 2e-3 tolerance. */
TT_TEST(grad_fd_whole_model) {
    tp_model *m = grad_model("qwen2"), *g = NULL;
    if (!m) return;
    int B = 1, T = 9;
    int32_t tok[9], tg[9];
    for (int t = 0; t < T; t++) tok[t] = (t * 31 + 5) % m->cfg.vocab, tg[t] = (t * 17 + 2) % m->cfg.vocab;
    tg[4] = TP_IGNORE_INDEX;
    tp_tape *tape = NULL;
    TT_CHECK(tp_model_alloc(&m->cfg, &g) == TP_OK && tp_tape_alloc(&m->cfg, B, T, 0, &tape) == TP_OK, "alloc");
    tp_step_opts o = {.targets = tg};
    double loss;
    size_t cnt;
    TT_CHECK(tp_train_step(m, g, tape, tok, B, T, &o, &loss, &cnt) == TP_OK, "step: %s", tp_errmsg());
    const tp_layer *L0 = &m->layers[0], *L1 = &m->layers[1];
    const tp_layer *G0 = &g->layers[0], *G1 = &g->layers[1];
    size_t d = (size_t)m->cfg.d_model, ff = (size_t)m->cfg.d_ff, V = (size_t)m->cfg.vocab;
    size_t qd = (size_t)m->cfg.n_heads * m->cfg.head_dim, kvd = (size_t)m->cfg.n_kv_heads * m->cfg.head_dim;
    struct { const char *n; float *p; const float *g; size_t k; } t[] = {
        {"tok_emb (tied)", m->tok_emb, g->tok_emb, V * d}, {"final_norm", m->final_norm, g->final_norm, d},
        {"l0 attn_norm", L0->attn_norm, G0->attn_norm, d}, {"l0 wq", L0->wq, G0->wq, qd * d},
        {"l0 bk", L0->bk, G0->bk, kvd},                    {"l0 wv", L0->wv, G0->wv, kvd * d},
        {"l1 wo", L1->wo, G1->wo, d * qd},                 {"l1 mlp_norm", L1->mlp_norm, G1->mlp_norm, d},
        {"l1 w_gate", L1->w_gate, G1->w_gate, ff * d},     {"l1 w_down", L1->w_down, G1->w_down, d * ff},
    };
    double worst = 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        size_t a = 0;
        for (size_t j = 0; j < t[i].k; j++)
            if (fabs(t[i].g[j]) > fabs(t[i].g[a])) a = j;
        float s = t[i].p[a], h = 2e-3f;
        double lp, lm;
        size_t c1, c2;
        t[i].p[a] = s + h;
        tp_ce_eval(m, tok, tg, B, T, &lp, &c1);
        t[i].p[a] = s - h;
        tp_ce_eval(m, tok, tg, B, T, &lm, &c2);
        t[i].p[a] = s;
        double fd = (lp - lm) / (double)cnt / ((double)(s + h) - (double)(s - h));
        double e = fabs(fd - t[i].g[a]) / fabs(fd);
        worst = fmax(worst, e);
        TT_CHECK(e <= 2e-3, "%s[%zu]: grad %.6g, finite difference %.6g", t[i].n, a, (double)t[i].g[a], fd);
    }
    tt_note("whole model (qwen2, 10 parameters) vs finite differences: worst relative %.2e", worst);
    tp_tape_free(tape);
    tp_model_free(g);
    tp_model_free(m);
}

/* ------------------------- fast kernels vs twins ------------------------- */

/* |a - b| <= 1e-5 * max|b| + 1e-4 * |b| everywhere */
static void check_twin(const char *what, const float *a, const float *b, size_t n) {
    double mb = 0;
    for (size_t i = 0; i < n; i++) mb = fmax(mb, fabs(b[i]));
    int ok;
    double e = rel_err(a, b, n, 1e-5 * mb, 1e-4, &ok);
    TT_CHECK(ok && mb > 0, "%s: max|fast - naive|/max|naive| %.3g", what, e);
}

TT_TEST(grad_kernels_match_naive) {
    tp_rng r;
    tp_rng_seed(&r, 31);
    size_t N = 37, in = 129, out = 71;
    float *dY = malloc(N * out * 4), *W = malloc(out * in * 4), *X = malloc(N * in * 4);
    fill(dY, N * out, &r, 1);
    fill(W, out * in, &r, 0.2f);
    fill(X, N * in, &r, 1);
    for (int acc = 0; acc < 2; acc++) {
        float *a = galloc(N * in), *b = galloc(N * in);
        fill(a, N * in, &r, 1);
        memcpy(b, a, N * in * 4);
        tp_matmul_dx(dY, W, a, N, in, out, acc);
        tp_matmul_dx_ref(dY, W, b, N, in, out, acc);
        check_twin(acc ? "matmul_dx (accumulate)" : "matmul_dx", a, b, N * in);
        TT_CHECK(gok(a, N * in) && gok(b, N * in), "matmul_dx guards");
        gfree(a); gfree(b);
    }
    {
        float *a = galloc(out * in + out), *b = galloc(out * in + out);
        fill(a, out * in + out, &r, 1);
        memcpy(b, a, (out * in + out) * 4);
        tp_matmul_dw(dY, X, a, a + out * in, N, in, out, 0.7f);
        tp_matmul_dw_ref(dY, X, b, b + out * in, N, in, out, 0.7f);
        check_twin("matmul_dw", a, b, out * in);
        check_twin("matmul_dw bias", a + out * in, b + out * in, out);
        TT_CHECK(gok(a, out * in + out) && gok(b, out * in + out), "matmul_dw guards");
        gfree(a); gfree(b);
    }
    {
        size_t n = 37, d = 150; /* column blocks of 64 and a remainder */
        float *x = malloc(n * d * 4), *w = malloc(d * 4), *go = malloc(n * d * 4), *y = galloc(n * d),
              *rs = galloc(n);
        fill(x, n * d, &r, 2);
        fill(w, d, &r, 1);
        fill(go, n * d, &r, 1);
        tp_rmsnorm_fwd(x, w, y, rs, n, d, 1e-5f);
        float *y2 = malloc(n * d * 4);
        tp_rmsnorm(x, w, y2, n, d, 1e-5f);
        TT_CHECK(memcmp(y, y2, n * d * 4) == 0, "rmsnorm_fwd output equals tp_rmsnorm's bits");
        TT_CHECK(gok(y, n * d) && gok(rs, n), "rmsnorm_fwd guards");
        float *a = galloc(n * d), *b = galloc(n * d), *aw = galloc(d), *bw = galloc(d);
        fill(a, n * d, &r, 1);
        memcpy(b, a, n * d * 4);
        fill(aw, d, &r, 1);
        memcpy(bw, aw, d * 4);
        tp_rmsnorm_bwd(x, w, rs, go, a, aw, 0.5f, n, d);
        tp_rmsnorm_bwd_ref(x, w, rs, go, b, bw, 0.5f, n, d);
        check_twin("rmsnorm_bwd dx", a, b, n * d);
        check_twin("rmsnorm_bwd dw", aw, bw, d);
        TT_CHECK(gok(a, n * d) && gok(aw, d) && gok(b, n * d) && gok(bw, d), "rmsnorm_bwd guards");
        free(x); free(w); free(go); free(y2);
        gfree(y); gfree(rs); gfree(a); gfree(b); gfree(aw); gfree(bw);
    }
    free(dY); free(W); free(X);
}

/* Blocked attention forward (+ lse) and backward against the naive double twins: several
 * query blocks, p0 = 0 and p0 > 0, strided rows, GQA accumulation into dK/dV. */
TT_TEST(grad_attention_kernels_match_naive) {
    tp_rng r;
    tp_rng_seed(&r, 32);
    int hd = 16;
    size_t ld = 40; /* row stride > hd: heads interleaved as in the model */
    for (int pass = 0; pass < 4; pass++) {
        /* sliding windows: 37 (inside one query block) and 100 (across blocks) */
        int T = 150, p0 = pass % 2 ? 5 : 0, Tk = p0 + T, win = pass < 2 ? 0 : pass == 2 ? 37 : 100;
        float scale = 1.0f / sqrtf((float)hd);
        float *Q = malloc((size_t)T * ld * 4), *K = malloc((size_t)Tk * ld * 4), *V = malloc((size_t)Tk * ld * 4);
        float *dO = malloc((size_t)T * ld * 4), *S = malloc(2 * TP_ATT_BLOCK * (size_t)Tk * 4);
        fill(Q, (size_t)T * ld, &r, 1.5f);
        fill(K, (size_t)Tk * ld, &r, 1.5f);
        fill(V, (size_t)Tk * ld, &r, 1);
        fill(dO, (size_t)T * ld, &r, 1);
        size_t no = (size_t)T * ld;
        float *O = galloc(no), *Or = galloc(no), *O0 = galloc(no), *lse = galloc((size_t)T), *lser = galloc((size_t)T);
        memset(O, 0, no * 4); memset(Or, 0, no * 4); memset(O0, 0, no * 4);
        tp_attention_head_lse(Q, ld, K, V, ld, O, ld, lse, T, p0, win, hd, scale, S);
        tp_attention_head_lse_ref(Q, ld, K, V, ld, Or, ld, lser, T, p0, win, hd, scale);
        float *S0 = malloc((size_t)T * Tk * 4);
        tp_attention_head(Q, ld, K, V, ld, O0, ld, T, p0, win, hd, scale, S0);
        if (win) { /* the short path (T <= one block) with the same window: the first 40 rows */
            float *O1 = galloc((size_t)40 * ld), *O1r = galloc((size_t)40 * ld);
            memset(O1, 0, (size_t)40 * ld * 4); memset(O1r, 0, (size_t)40 * ld * 4);
            tp_attention_head(Q, ld, K, V, ld, O1, ld, 40, p0, win, hd, scale, S0);
            tp_attention_head_ref(Q, ld, K, V, ld, O1r, ld, 40, p0, win, hd, scale);
            check_twin("attention (short path, window) vs naive", O1, O1r, (size_t)40 * ld);
            gfree(O1); gfree(O1r);
        }
        check_twin("attention_lse out", O, Or, no);
        check_twin("attention_lse lse", lse, lser, (size_t)T);
        check_twin("attention_lse vs tp_attention_head", O, O0, no);
        TT_CHECK(gok(O, no) && gok(Or, no) && gok(lse, (size_t)T) && gok(lser, (size_t)T), "attention_lse guards");
        /* backward of two query heads into one KV head, on top of non-zero dK/dV */
        size_t nk = (size_t)Tk * ld;
        float *dQ = galloc(no), *dQr = galloc(no), *dK = galloc(nk), *dKr = galloc(nk), *dV = galloc(nk),
              *dVr = galloc(nk);
        fill(dK, nk, &r, 1);
        fill(dV, nk, &r, 1);
        memcpy(dKr, dK, nk * 4);
        memcpy(dVr, dV, nk * 4);
        memset(dQ, 0, no * 4);
        memset(dQr, 0, no * 4);
        for (int h = 0; h < 2; h++) {
            size_t ho = (size_t)h * hd; /* second head: the next hd columns of Q, O, dO */
            if (h) {
                tp_attention_head_lse(Q + ho, ld, K, V, ld, O + ho, ld, lse, T, p0, win, hd, scale, S);
                tp_attention_head_lse_ref(Q + ho, ld, K, V, ld, Or + ho, ld, lser, T, p0, win, hd, scale);
            }
            tp_attention_head_bwd(Q + ho, ld, K, V, ld, O + ho, dO + ho, ld, lse, dQ + ho, ld, dK, dV, ld, T, p0, win,
                                  hd, scale, S);
            tp_attention_head_bwd_ref(Q + ho, ld, K, V, ld, Or + ho, dO + ho, ld, lser, dQr + ho, ld, dKr, dVr, ld, T,
                                      p0, win, hd, scale);
        }
        char lbl[64];
        snprintf(lbl, sizeof lbl, "attention_bwd dQ (p0=%d window=%d)", p0, win);
        check_twin(lbl, dQ, dQr, no);
        snprintf(lbl, sizeof lbl, "attention_bwd dK (p0=%d window=%d)", p0, win);
        check_twin(lbl, dK, dKr, nk);
        snprintf(lbl, sizeof lbl, "attention_bwd dV (p0=%d window=%d)", p0, win);
        check_twin(lbl, dV, dVr, nk);
        int cols_ok = 1; /* columns of other heads untouched */
        for (int i = 0; i < T; i++)
            for (size_t e = 2 * (size_t)hd; e < ld; e++) cols_ok &= dQ[(size_t)i * ld + e] == 0;
        TT_CHECK(cols_ok, "attention_bwd writes only its head's columns");
        TT_CHECK(gok(dQ, no) && gok(dK, nk) && gok(dV, nk) && gok(dQr, no) && gok(dKr, nk) && gok(dVr, nk),
                 "attention_bwd guards");
        free(Q); free(K); free(V); free(dO); free(S); free(S0);
        gfree(O); gfree(Or); gfree(O0); gfree(lse); gfree(lser);
        gfree(dQ); gfree(dQr); gfree(dK); gfree(dKr); gfree(dV); gfree(dVr);
    }
}

/* The bf16 attention kernels (AVX512-BF16 dot products, AMX tiles: each that runs here, bf16 Q, K,
 * V and probabilities, fp32 softmax) against the double twin fed the same bf16-rounded Q, K, V:
 * what is left is the probabilities' rounding, at most 2^-9 of each weight, so
 * |out - ref| <= 2^-8 max|V| and lse within 1e-4. Several query blocks, p0 > 0, windows inside
 * and across blocks, strided rows, hd 64 and 128. Capped at fp32 (TAPER_ATTENTION=fp32, or a
 * build or CPU without AVX512-BF16) the kernel must decline and bf16 attention must give the fp32
 * path's bits. On dot products the backward also gives, bit for bit (zeros of either sign equal),
 * the results of its form for AMX tiles run on dot products. */
static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = tp_bf16_to_f32(tp_f32_to_bf16(x[i]));
}

static void attention_bf16_check(int cap) {
    static const char *name[3] = {"fp32 cap", "AVX512-BF16", "AMX"};
    tp_rng r;
    tp_rng_seed(&r, 33);
    tp_attention_bf16_cap(cap);
    int ready = tp_attention_bf16_kernel() != 0;
    TT_CHECK(tp_attention_bf16_kernel() == cap, "kernel %d runs under cap %d", tp_attention_bf16_kernel(), cap);
    double worst_f = 0, worst_b = 0; /* largest error seen, relative to the bound's scale */
    for (int pass = 0; pass < 6; pass++) {
        int hd = pass < 4 ? 64 : 128, T = pass == 5 ? 40 : 150 + 70 * (pass & 1), p0 = pass % 2 ? 5 : 0;
        int win = pass == 2 ? 37 : pass == 3 ? 100 : 0, Tk = p0 + T;
        size_t ld = 2 * (size_t)hd + 8, no = (size_t)T * ld;
        float scale = 1.0f / sqrtf((float)hd);
        float *Q = malloc(no * 4), *K = malloc((size_t)Tk * ld * 4), *V = malloc((size_t)Tk * ld * 4);
        float *O = calloc(no, 4), *Or = calloc(no, 4), *lse = calloc((size_t)T, 4), *lser = calloc((size_t)T, 4);
        float *S = malloc(2 * TP_ATT_BLOCK * (size_t)Tk * 4);
        fill(Q, no, &r, 2.0f);
        fill(K, (size_t)Tk * ld, &r, 2.0f);
        fill(V, (size_t)Tk * ld, &r, 1);
        round_bf16(Q, no);
        round_bf16(K, (size_t)Tk * ld);
        round_bf16(V, (size_t)Tk * ld);
        if (ready) {
            TT_CHECK(tp_attention_head_lse_bf16(Q, ld, K, V, ld, O, ld, lse, T, p0, win, hd, scale) == 0, "%s runs",
                     name[cap]);
            tp_attention_head_lse_ref(Q, ld, K, V, ld, Or, ld, lser, T, p0, win, hd, scale);
            double vmax = 0, eo = 0, el = 0;
            int cols_ok = 1;
            for (size_t i = 0; i < (size_t)Tk * ld; i++) vmax = fmax(vmax, fabs(V[i]));
            for (int i = 0; i < T; i++) {
                for (int e = 0; e < hd; e++) eo = fmax(eo, fabs(O[(size_t)i * ld + e] - Or[(size_t)i * ld + e]));
                for (size_t e = (size_t)hd; e < ld; e++) cols_ok &= O[(size_t)i * ld + e] == 0;
                el = fmax(el, fabs(lse[i] - lser[i]));
            }
            TT_CHECK(eo <= vmax / 256 && eo > 0, "hd %d T %d p0 %d window %d: max|out - ref| %.3g (bound %.3g)", hd, T, p0,
                     win, eo, vmax / 256);
            worst_f = fmax(worst_f, eo / vmax);
            TT_CHECK(el <= 1e-4, "hd %d T %d p0 %d window %d: max|lse - ref| %.3g", hd, T, p0, win, el);
            TT_CHECK(cols_ok, "writes only its head's columns");
            /* under bf16 precision the blocked kernel takes this path */
            float *O2 = calloc(no, 4), *lse2 = calloc((size_t)T, 4);
            tp_gemm_set_precision(TP_PREC_BF16);
            tp_attention_head_lse(Q, ld, K, V, ld, O2, ld, lse2, T, p0, win, hd, scale, S);
            tp_gemm_set_precision(TP_PREC_FP32);
            TT_CHECK(!memcmp(O, O2, no * 4) && !memcmp(lse, lse2, (size_t)T * 4), "bf16 precision takes the %s path", name[cap]);
            free(O2); free(lse2);
            /* backward, fed the bf16 forward's O and lse, against the double twin on the same inputs:
             * P and dS rounded to bf16 (2^-9 each) bound the error at 1 % of the largest gradient */
            float *dO = malloc(no * 4), *dQ = calloc(no, 4), *dQr = calloc(no, 4);
            size_t nk = (size_t)Tk * ld;
            float *dK = malloc(nk * 4), *dKr = malloc(nk * 4), *dV = malloc(nk * 4), *dVr = malloc(nk * 4);
            fill(dO, no, &r, 1);
            round_bf16(dO, no);
            fill(dK, nk, &r, 1);
            fill(dV, nk, &r, 1);
            memcpy(dKr, dK, nk * 4);
            memcpy(dVr, dV, nk * 4);
            TT_CHECK(tp_attention_head_bwd_bf16(Q, ld, K, V, ld, O, dO, ld, lse, dQ, ld, dK, dV, ld, T, p0, win, hd,
                                                scale) == 0, "%s backward runs", name[cap]);
            if (cap == 1) { /* the dot products' own backward gives the bits of the tiles' form */
                float *dQt = calloc(no, 4), *dKt = malloc(nk * 4), *dVt = malloc(nk * 4);
                memcpy(dKt, dKr, nk * 4); /* the starting values, still untouched in dKr, dVr */
                memcpy(dVt, dVr, nk * 4);
                tp_attention_bf16_tiles_form(1);
                TT_CHECK(tp_attention_head_bwd_bf16(Q, ld, K, V, ld, O, dO, ld, lse, dQt, ld, dKt, dVt, ld, T, p0, win,
                                                    hd, scale) == 0, "tiles' form runs");
                tp_attention_bf16_tiles_form(0);
                size_t diff = 0;
                for (size_t i = 0; i < no; i++) diff += !(dQ[i] == dQt[i]);
                for (size_t i = 0; i < nk; i++) diff += !(dK[i] == dKt[i]) + !(dV[i] == dVt[i]);
                TT_CHECK(diff == 0, "hd %d T %d p0 %d window %d: %zu values differ from the tiles' form", hd, T, p0, win,
                         diff);
                free(dQt); free(dKt); free(dVt);
            }
            tp_attention_head_bwd_ref(Q, ld, K, V, ld, Or, dO, ld, lser, dQr, ld, dKr, dVr, ld, T, p0, win, hd, scale);
            const char *nm[3] = {"dQ", "dK", "dV"};
            const float *a[3] = {dQ, dK, dV}, *b[3] = {dQr, dKr, dVr};
            size_t n[3] = {no, nk, nk};
            for (int g = 0; g < 3; g++) {
                double mb = 0, e = 0;
                int other = 1;
                for (size_t i = 0; i < n[g]; i++) {
                    if (i % ld >= (size_t)hd) { /* other heads' columns: untouched */
                        other &= g == 0 ? a[g][i] == 0 : a[g][i] == b[g][i];
                        continue;
                    }
                    mb = fmax(mb, fabs(b[g][i]));
                    e = fmax(e, fabs(a[g][i] - b[g][i]));
                }
                worst_b = fmax(worst_b, e / mb);
                TT_CHECK(e <= 0.01 * mb && e > 0, "backward %s hd %d T %d p0 %d window %d: max err %.3g of max %.3g",
                         nm[g], hd, T, p0, win, e, mb);
                TT_CHECK(other, "backward %s: other heads' columns untouched", nm[g]);
            }
            free(dO); free(dQ); free(dQr); free(dK); free(dKr); free(dV); free(dVr);
        } else {
            TT_CHECK(tp_attention_head_lse_bf16(Q, ld, K, V, ld, O, ld, lse, T, p0, win, hd, scale) == -1, "declines");
            TT_CHECK(tp_attention_head_bwd_bf16(Q, ld, K, V, ld, O, Q, ld, lse, O, ld, K, V, ld, T, p0, win, hd, scale) == -1,
                     "backward declines");
            tp_attention_head_lse(Q, ld, K, V, ld, O, ld, lse, T, p0, win, hd, scale, S);
            tp_gemm_set_precision(TP_PREC_BF16);
            tp_attention_head_lse(Q, ld, K, V, ld, Or, ld, lser, T, p0, win, hd, scale, S);
            tp_gemm_set_precision(TP_PREC_FP32);
            TT_CHECK(!memcmp(O, Or, no * 4) && !memcmp(lse, lser, (size_t)T * 4), "bf16 attention = fp32 path when capped at fp32");
        }
        free(Q); free(K); free(V); free(O); free(Or); free(lse); free(lser); free(S);
    }
    if (ready)
        tt_note("%s: largest errors: forward %.2g of max|V|, backward %.2g of the largest gradient", name[cap], worst_f,
                worst_b);
    /* hd not a multiple of 32: declined everywhere */
    float q[16] = {0}, o[16], l[1];
    TT_CHECK(tp_attention_head_lse_bf16(q, 16, q, q, 16, o, 16, l, 1, 0, 0, 16, 1.0f) == -1, "hd 16 declined");
    tp_attention_bf16_cap(-1);
}

TT_TEST(grad_attention_bf16_matches_naive) {
    tp_attention_bf16_cap(-1);
    int best = tp_attention_bf16_kernel();
    tt_note("bf16 attention here: %s", best == 2 ? "AMX tiles and AVX512-BF16 dot products, both checked"
                                       : best == 1 ? "AVX512-BF16 dot products (no AMX), checked"
                                                   : "none (this build or CPU lacks AVX512-BF16): checked that it declines");
    for (int cap = 0; cap <= best; cap++) attention_bf16_check(cap);
}

/* ----------------------- determinism and recompute ----------------------- */

static int32_t *random_ids(tp_rng *r, size_t n, int V, int ignore_every) {
    int32_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = ignore_every && i % (size_t)ignore_every == 3 ? TP_IGNORE_INDEX : (int32_t)(tp_rng_u64(r) % (uint64_t)V);
    return v;
}

/* Two runs give the same bits; recompute=1 gives the same bits as recompute=0 (B=2, T=300:
 * several attention blocks and logit chunks of 512 rows); a smaller batch fits a larger tape. */
TT_TEST(grad_deterministic_and_recompute_identical) {
    tp_model *m = grad_model("llama_gqa");
    if (!m) return;
    tp_rng r;
    tp_rng_seed(&r, 33);
    int B = 2, T = 300;
    size_t N = (size_t)B * T;
    int32_t *tok = random_ids(&r, N, m->cfg.vocab, 0), *tg = random_ids(&r, N, m->cfg.vocab, 11);
    tp_model *g[3] = {0};
    tp_tape *t0 = NULL, *t1 = NULL;
    for (int i = 0; i < 3; i++) TT_CHECK(tp_model_alloc(&m->cfg, &g[i]) == TP_OK, "alloc");
    TT_CHECK(tp_tape_alloc(&m->cfg, B, T, 0, &t0) == TP_OK && tp_tape_alloc(&m->cfg, B, T, 1, &t1) == TP_OK, "tapes");
    tp_step_opts o = {.targets = tg};
    double l[3];
    TT_CHECK(tp_train_step(m, g[0], t0, tok, B, T, &o, &l[0], NULL) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(tp_train_step(m, g[1], t0, tok, B, T, &o, &l[1], NULL) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(tp_train_step(m, g[2], t1, tok, B, T, &o, &l[2], NULL) == TP_OK, "%s", tp_errmsg());
    size_t nb = m->n_params * sizeof(float);
    TT_CHECK(l[0] == l[1] && memcmp(g[0]->params, g[1]->params, nb) == 0, "two runs bit-identical");
    TT_CHECK(l[0] == l[2] && memcmp(g[0]->params, g[2]->params, nb) == 0, "recompute=1 bit-identical to recompute=0");
    size_t b0 = tp_tape_bytes(t0), b1 = tp_tape_bytes(t1);
    TT_CHECK(b1 < b0, "recompute tape %zu bytes vs %zu", b1, b0);
    tt_note("tape for 2 x 300 tokens: %.2f MiB, recompute %.2f MiB; loss %.6f", b0 / 1048576.0, b1 / 1048576.0, l[0]);
    /* one sequence of 100 through the same tape equals a tape of exactly that size */
    tp_tape *ts = NULL;
    TT_CHECK(tp_tape_alloc(&m->cfg, 1, 100, 0, &ts) == TP_OK, "small tape");
    memset(g[0]->params, 0, nb);
    memset(g[1]->params, 0, nb);
    TT_CHECK(tp_train_step(m, g[0], t0, tok, 1, 100, &o, &l[0], NULL) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(tp_train_step(m, g[1], ts, tok, 1, 100, &o, &l[1], NULL) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(l[0] == l[1] && memcmp(g[0]->params, g[1]->params, nb) == 0, "a smaller batch in a larger tape");
    tp_tape_free(ts);
    tp_tape_free(t0);
    tp_tape_free(t1);
    for (int i = 0; i < 3; i++) tp_model_free(g[i]);
    tp_model_free(m);
    free(tok); free(tg);
}

/* ------------------------------ tp_ce_eval ------------------------------ */

/* tp_ce_eval's mean equals the step's loss and a cross-entropy computed here in double from
 * tp_forward's logits (B=2, T=300: logits in two chunks of up to 512 rows). */
TT_TEST(grad_ce_eval_matches_step_and_forward) {
    tp_model *m = grad_model("llama_tied");
    if (!m) return;
    tp_rng r;
    tp_rng_seed(&r, 34);
    int B = 2, T = 300;
    size_t N = (size_t)B * T, V = (size_t)m->cfg.vocab;
    int32_t *tok = random_ids(&r, N, m->cfg.vocab, 0), *tg = random_ids(&r, N, m->cfg.vocab, 7);
    double sum = 0, step_loss = 0, ref = 0;
    size_t n_eval = 0, n_step = 0, n_ref = 0;
    TT_CHECK(tp_ce_eval(m, tok, tg, B, T, &sum, &n_eval) == TP_OK, "%s", tp_errmsg());
    tp_model *g = NULL;
    tp_tape *tape = NULL;
    TT_CHECK(tp_model_alloc(&m->cfg, &g) == TP_OK && tp_tape_alloc(&m->cfg, B, T, 0, &tape) == TP_OK, "alloc");
    tp_step_opts o = {.targets = tg};
    TT_CHECK(tp_train_step(m, g, tape, tok, B, T, &o, &step_loss, &n_step) == TP_OK, "%s", tp_errmsg());
    float *lg = malloc(N * V * sizeof *lg);
    TT_CHECK(tp_forward(m, tok, B, T, NULL, lg, 0) == TP_OK, "forward");
    for (size_t i = 0; i < N; i++) {
        if (tg[i] == TP_IGNORE_INDEX) continue;
        const float *row = lg + i * V;
        double mx = -INFINITY, s = 0;
        for (size_t j = 0; j < V; j++) mx = fmax(mx, row[j]);
        for (size_t j = 0; j < V; j++) s += exp(row[j] - mx);
        ref += mx + log(s) - row[tg[i]];
        n_ref++;
    }
    TT_CHECK(n_eval == n_ref && n_step == n_ref && n_ref < N, "counted %zu / %zu / %zu", n_eval, n_step, n_ref);
    TT_NEAR(sum / (double)n_eval, step_loss, 0, 2e-6);
    TT_NEAR(sum, ref, 0, 1e-6);
    tt_note("ce_eval mean %.8f, train step %.8f, from tp_forward logits %.8f", sum / (double)n_eval, step_loss,
            ref / (double)n_ref);
    free(lg);
    tp_tape_free(tape);
    tp_model_free(g);
    tp_model_free(m);
    free(tok); free(tg);
}

/* Bad input is refused with a message, nothing written. */
TT_TEST(grad_rejects_bad_input) {
    tp_model *m = grad_model("qwen2");
    if (!m) return;
    tp_model *g = NULL, *other = NULL;
    tp_tape *tape = NULL;
    tp_config c2 = m->cfg;
    c2.d_ff += 2;
    TT_CHECK(tp_model_alloc(&m->cfg, &g) == TP_OK && tp_model_alloc(&c2, &other) == TP_OK &&
             tp_tape_alloc(&m->cfg, 1, 8, 0, &tape) == TP_OK, "alloc");
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tg[8] = {2, 3, 4, 5, 6, 7, 8, TP_IGNORE_INDEX};
    tp_step_opts o = {.targets = tg};
    double loss;
    TT_CHECK(tp_train_step(m, g, tape, tok, 1, 9, &o, &loss, NULL) == TP_ERR_ARG, "longer than the tape");
    TT_CHECK(tp_train_step(m, g, tape, tok, 2, 8, &o, &loss, NULL) == TP_ERR_ARG, "more rows than the tape");
    TT_CHECK(tp_train_step(m, other, tape, tok, 1, 8, &o, &loss, NULL) == TP_ERR_ARG, "gradient of another config");
    TT_CHECK(tp_train_step(m, (tp_model *)m, tape, tok, 1, 8, &o, &loss, NULL) == TP_ERR_ARG, "grad == model");
    tok[3] = m->cfg.vocab;
    TT_CHECK(tp_train_step(m, g, tape, tok, 1, 8, &o, &loss, NULL) == TP_ERR_ARG && strstr(tp_errmsg(), "index 3"),
             "token out of range: %s", tp_errmsg());
    tok[3] = 4;
    tg[5] = -2;
    TT_CHECK(tp_train_step(m, g, tape, tok, 1, 8, &o, &loss, NULL) == TP_ERR_ARG && strstr(tp_errmsg(), "target"),
             "target out of range: %s", tp_errmsg());
    double s;
    size_t n;
    TT_CHECK(tp_ce_eval(m, tok, tg, 1, 8, &s, &n) == TP_ERR_ARG, "ce_eval target out of range");
    tp_step_opts none = {0};
    TT_CHECK(tp_train_step(m, g, tape, tok, 1, 8, &none, &loss, NULL) == TP_ERR_ARG, "no targets, no loss");
    int zero = 1;
    for (size_t i = 0; i < g->n_params; i++) zero &= g->params[i] == 0;
    TT_CHECK(zero, "refused steps left the gradient untouched");
    tp_tape *bad = NULL;
    TT_CHECK(tp_tape_alloc(&m->cfg, 0, 8, 0, &bad) == TP_ERR_ARG && !bad, "tape of 0 sequences");
    tp_tape_free(tape);
    tp_model_free(g);
    tp_model_free(other);
    tp_model_free(m);
}
