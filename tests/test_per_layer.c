/* Per-layer widths (taper prune --per-layer): the allocation rule on designed scores (exact
 * widths and kept indices); a heterogeneous model against its source with the dropped neurons and
 * heads zeroed (logits and every gradient of the kept weights, recompute too); the config through
 * JSON, the plan through its file, the model through GGUF (loaded and streamed); refusals (HF
 * export, scoring or pruning it again); the CLI end to end. llama.cpp's run of such a GGUF is in
 * test_llamacpp.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/compress.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/util.h"
#include "tt.h"

/* The tiny Llama with GQA of the gradient fixtures: d 36, 6 heads in 2 KV groups, d_ff 60, 3 layers. */
static tp_model *pl_model(void) { return tt_fixture_model("grad/llama_gqa"); }

static int32_t *pl_ids(size_t n, int V, uint64_t seed) {
    tp_rng r;
    tp_rng_seed(&r, seed);
    int32_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = (int32_t)(tp_rng_u64(&r) % (uint64_t)V);
    return v;
}

/* Real scores of m on random tokens. */
static tp_importance *pl_scores(const tp_model *m) {
    int n = 4, T = 16;
    int32_t *ids = pl_ids((size_t)n * T, m->cfg.vocab, 5);
    tp_importance_opts o;
    tp_importance_opts_default(&o);
    o.depth_samples = 0;
    tp_importance *imp = NULL;
    TT_CHECK(tp_importance_compute(m, ids, (size_t)n, T, &o, &imp) == TP_OK, "importance: %s", tp_errmsg());
    free(ids);
    return imp;
}

/* Designed scores (every aggregation pair): see the test below. */
static void pl_design(tp_importance *imp) {
    int L = imp->n_layers, F = imp->d_ff, H = imp->n_heads;
    for (int q = 0; q < TP_AGG_PAIRS; q++)
        for (int l = 0; l < L; l++) {
            double *ns = imp->neurons + ((size_t)q * L + l) * F, *hs = imp->heads + ((size_t)q * L + l) * H;
            for (int j = 0; j < F; j++)
                ns[j] = l == 0 ? 1.0 : l == 1 ? (j >= 10 && j < 25 ? 4.0 : 0.0) : (j % 2 == 0 ? 1.5 : 0.5);
            for (int h = 0; h < H; h++)
                hs[h] = l == 0 ? 1.0 : l == 1 ? (h == 1 || h == 5 ? 3.0 : 0.0) : (h == 1 || h == 5 ? 0.0 : 1.5);
        }
}

static int same_ints(const int *a, const int *b, int n) { return memcmp(a, b, (size_t)n * sizeof *a) == 0; }

/* Uniform target ffn 30 and 2 heads per group on 3 layers: budgets 90 neurons and 6 head slots.
 * Normalised by the layer mean, layer 0 is flat (1), layer 1 has 15 neurons at 4 (10..24) and the
 * rest at 0, layer 2 has its even neurons at 1.5 and odd ones at 0.5. With steps of 5 and a 25 %
 * floor (15 neurons each) the greedy ranking gives layer 2 its 15 other strong neurons, then
 * layer 0 the remaining 30: widths 45 / 15 / 30. Heads (slot = next head in both groups): layer 0
 * 2 per slot, layer 1 a strong head per group (1, 5) then nothing, layer 2 two at 1.5 per group:
 * floors 1 slot each, then layer 2's second (3), then layer 0's two (2): 6 / 2 / 4 heads. */
TT_TEST(per_layer_allocation_rule) {
    tp_model *m = pl_model();
    if (!m) return;
    tp_importance *imp = pl_scores(m);
    if (!imp) goto done;
    pl_design(imp);
    tp_prune_plan *p = NULL;
    tp_prune_shape sh = {0, 30, 4, 0, 0};
    if (!TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &p) == TP_OK, "plan: %s",
                  tp_errmsg()))
        goto done;
    size_t uniform = p->n_params;
    tp_per_layer_opts o = {.ffn_step = 5, .min_keep = 0.25};
    TT_CHECK(tp_prune_plan_per_layer(p, imp, &o) == TP_OK, "per layer: %s", tp_errmsg());
    const tp_config *c = &p->cfg;
    TT_CHECK(c->hetero == 1 && c->d_ff == 45 && c->n_heads == 6, "hetero, widest 45 / 6 (got %d %d %d)", c->hetero,
             c->d_ff, c->n_heads);
    int ff[3] = {45, 15, 30}, nh[3] = {6, 2, 4};
    for (int l = 0; l < 3; l++)
        TT_CHECK(tp_config_ff(c, l) == ff[l] && tp_config_heads(c, l) == nh[l], "layer %d: ffn %d heads %d, want %d %d",
                 l, tp_config_ff(c, l), tp_config_heads(c, l), ff[l], nh[l]);
    TT_CHECK(p->n_params == uniform, "same parameters as the uniform target (%zu vs %zu)", p->n_params, uniform);
    int want0[45], want1[15], want2[30];
    for (int j = 0; j < 45; j++) want0[j] = j; /* ties: the lower index */
    for (int j = 0; j < 15; j++) want1[j] = 10 + j;
    for (int j = 0; j < 30; j++) want2[j] = 2 * j;
    TT_CHECK(same_ints(p->neurons, want0, 45), "layer 0 keeps neurons 0..44");
    TT_CHECK(same_ints(p->neurons + 45, want1, 15), "layer 1 keeps its strong neurons 10..24");
    TT_CHECK(same_ints(p->neurons + 90, want2, 30), "layer 2 keeps its even neurons");
    int h0[6] = {0, 1, 2, 3, 4, 5}, h1[2] = {1, 5}, h2[4] = {0, 2, 3, 4};
    TT_CHECK(same_ints(p->heads, h0, 6) && same_ints(p->heads + 6, h1, 2) && same_ints(p->heads + 12, h2, 4),
             "kept heads per layer (group by group)");
    /* the plan file holds the widths: saved and read back, the same plan */
    char *pp = tt_path(tt_tmp_dir(), "per_layer_plan.json");
    tp_prune_plan *q = NULL;
    TT_CHECK(tp_prune_plan_save(p, pp) == TP_OK && tp_prune_plan_load(pp, &q) == TP_OK, "plan file: %s", tp_errmsg());
    if (q) {
        TT_CHECK(memcmp(&q->cfg, &p->cfg, sizeof q->cfg) == 0 && q->n_params == p->n_params, "plan file: same config");
        int same = 1;
        for (int l = 0; l < 3; l++)
            same &= same_ints(q->neurons + l * 45, p->neurons + l * 45, ff[l]) &&
                    same_ints(q->heads + l * 6, p->heads + l * 6, nh[l]);
        TT_CHECK(same, "plan file: same kept lists");
    }
    tp_prune_plan_free(q);
    free(pp);
    /* ffn_only: the same widths for the MLP, and every layer keeps the uniform plan's heads */
    tp_prune_plan *pu = NULL, *pf = NULL;
    tp_per_layer_opts fo = {.ffn_step = 5, .min_keep = 0.25, .ffn_only = 1};
    if (TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &pu) == TP_OK &&
                     tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &pf) == TP_OK &&
                     tp_prune_plan_per_layer(pf, imp, &fo) == TP_OK,
                 "ffn only: %s", tp_errmsg())) {
        int ok = pf->cfg.hetero && pf->cfg.n_heads == 4;
        for (int l = 0; l < 3; l++)
            ok &= tp_config_ff(&pf->cfg, l) == ff[l] && tp_config_heads(&pf->cfg, l) == 4 &&
                  same_ints(pf->heads + l * 4, pu->heads + l * 4, 4);
        TT_CHECK(ok, "ffn only: widths 45/15/30, 4 heads each, the uniform plan's heads");
    }
    tp_prune_plan_free(pu);
    tp_prune_plan_free(pf);
    /* impossible floors, and a second redistribution, are refused */
    tp_per_layer_opts hi = {.ffn_step = 5, .min_keep = 0.9};
    tp_prune_plan *p2 = NULL;
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &p2) == TP_OK &&
                 tp_prune_plan_per_layer(p2, imp, &hi) == TP_ERR_ARG && strstr(tp_errmsg(), "lower the minimum"),
             "a floor above the target: %s", tp_errmsg());
    TT_CHECK(tp_prune_plan_per_layer(p, imp, &o) == TP_ERR_ARG, "twice: refused");
    tp_prune_plan_free(p2);
    tp_prune_plan_free(p);
done:
    tp_importance_free(imp);
    tp_model_free(m);
}

/* Zeroes, in a copy of the source, what the plan drops: w_down columns of dropped neurons and wo
 * columns of dropped heads (every layer kept, hidden and KV groups whole). */
static void pl_mask(tp_model *z, const tp_prune_plan *p) {
    const tp_config *a = &z->cfg, *c = &p->cfg;
    size_t d = (size_t)a->d_model, F = (size_t)a->d_ff, hd = (size_t)a->head_dim, q = (size_t)a->n_heads * hd;
    for (int l = 0; l < a->n_layers; l++) {
        tp_layer *L = &z->layers[l];
        unsigned char keepn[4096] = {0}, keeph[256] = {0};
        for (int j = 0; j < tp_config_ff(c, l); j++) keepn[p->neurons[(size_t)l * c->d_ff + j]] = 1;
        for (int j = 0; j < tp_config_heads(c, l); j++) keeph[p->heads[(size_t)l * c->n_heads + j]] = 1;
        for (size_t r = 0; r < d; r++) {
            for (size_t j = 0; j < F; j++)
                if (!keepn[j]) L->w_down[r * F + j] = 0;
            for (size_t j = 0; j < q; j++)
                if (!keeph[j / hd]) L->wo[r * q + j] = 0;
        }
    }
}

static double max_rel(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mb = fmax(mb, fabs((double)b[i]));
    }
    return mb > 0 ? md / mb : md;
}

/* The gradient of the heterogeneous model's layer tensors against the masked model's, gathered at
 * the kept rows / columns. */
static double pl_grad_err(const tp_model *gz, const tp_model *gh, const tp_prune_plan *p) {
    const tp_config *a = &gz->cfg, *c = &p->cfg; /* the source's sizes, the plan's widths */
    size_t d = (size_t)a->d_model, F = (size_t)a->d_ff, hd = (size_t)a->head_dim, q = (size_t)a->n_heads * hd;
    size_t kv = (size_t)a->n_kv_heads * hd;
    double worst = 0;
    for (int l = 0; l < a->n_layers; l++) {
        const tp_layer *Z = &gz->layers[l], *H = &gh->layers[l];
        size_t f2 = (size_t)tp_config_ff(c, l), q2 = (size_t)tp_config_heads(c, l) * hd;
        const int *nr = p->neurons + (size_t)l * c->d_ff, *hs = p->heads + (size_t)l * c->n_heads;
        float *want = malloc(3 * f2 * d * sizeof(float) + 2 * q2 * d * sizeof(float));
        float *wg = want, *wu = wg + f2 * d, *wd = wu + f2 * d, *wq = wd + f2 * d, *wo = wq + q2 * d;
        for (size_t i = 0; i < f2; i++)
            for (size_t k = 0; k < d; k++) {
                wg[i * d + k] = Z->w_gate[(size_t)nr[i] * d + k];
                wu[i * d + k] = Z->w_up[(size_t)nr[i] * d + k];
                wd[k * f2 + i] = Z->w_down[k * F + (size_t)nr[i]];
            }
        for (size_t i = 0; i < q2; i++)
            for (size_t k = 0; k < d; k++) {
                size_t src = (size_t)hs[i / hd] * hd + i % hd;
                wq[i * d + k] = Z->wq[src * d + k];
                wo[k * q2 + i] = Z->wo[k * q + src];
            }
        worst = fmax(worst, max_rel(H->w_gate, wg, f2 * d));
        worst = fmax(worst, max_rel(H->w_up, wu, f2 * d));
        worst = fmax(worst, max_rel(H->w_down, wd, f2 * d));
        worst = fmax(worst, max_rel(H->wq, wq, q2 * d));
        worst = fmax(worst, max_rel(H->wo, wo, q2 * d));
        worst = fmax(worst, max_rel(H->wk, Z->wk, kv * d));
        worst = fmax(worst, max_rel(H->wv, Z->wv, kv * d));
        worst = fmax(worst, max_rel(H->attn_norm, Z->attn_norm, d));
        worst = fmax(worst, max_rel(H->mlp_norm, Z->mlp_norm, d));
        worst = fmax(worst, max_rel(H->mlp_norm, Z->mlp_norm, d));
        free(want);
    }
    worst = fmax(worst, max_rel(gh->tok_emb, gz->tok_emb, (size_t)a->vocab * d));
    worst = fmax(worst, max_rel(gh->final_norm, gz->final_norm, d));
    return worst;
}

TT_TEST(per_layer_model_equals_masked_source) {
    tp_model *m = pl_model(), *h = NULL, *z = NULL, *gz = NULL, *gh = NULL, *back = NULL, *st = NULL;
    tp_importance *imp = NULL;
    tp_prune_plan *p = NULL;
    float *lz = NULL, *lh = NULL, *lb = NULL;
    int32_t *tok = NULL, *tg = NULL;
    char *gp = tt_path(tt_tmp_dir(), "per_layer.gguf"), *hf = tt_path(tt_tmp_dir(), "per_layer_hf");
    if (!m) goto done;
    if (!(imp = pl_scores(m))) goto done;
    pl_design(imp);
    tp_prune_shape sh = {0, 30, 4, 0, 0};
    tp_per_layer_opts o = {.ffn_step = 5, .min_keep = 0.25};
    if (!TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &p) == TP_OK &&
                      tp_prune_plan_per_layer(p, imp, &o) == TP_OK && tp_prune_apply(m, p, &h) == TP_OK,
                  "plan and apply: %s", tp_errmsg()))
        goto done;
    TT_CHECK(h->cfg.hetero && h->n_params == p->n_params && tp_config_n_params(&h->cfg) == p->n_params,
             "the pruned model has per-layer widths and %zu parameters", p->n_params);
    if (!TT_CHECK(tp_model_alloc(&m->cfg, &z) == TP_OK, "alloc")) goto done;
    memcpy(z->params, m->params, m->n_params * sizeof(float));
    pl_mask(z, p);
    /* logits */
    int B = 2, T = 24, V = m->cfg.vocab;
    size_t N = (size_t)B * T;
    tok = pl_ids(N, V, 9);
    tg = pl_ids(N, V, 10);
    lz = malloc(N * V * sizeof(float));
    lh = malloc(N * V * sizeof(float));
    lb = malloc(N * V * sizeof(float));
    TT_CHECK(tp_forward(z, tok, B, T, NULL, lz, 0) == TP_OK && tp_forward(h, tok, B, T, NULL, lh, 0) == TP_OK,
             "forward: %s", tp_errmsg());
    double el = max_rel(lh, lz, N * V);
    TT_CHECK(el <= 1e-5, "logits: per-layer model vs masked source, max rel %.2e", el);
    /* every gradient of the kept weights, with and without recompute */
    for (int rc = 0; rc < 2; rc++) {
        tp_tape *tz = NULL, *th = NULL;
        TT_CHECK(tp_model_alloc(&m->cfg, &gz) == TP_OK && tp_model_alloc(&h->cfg, &gh) == TP_OK &&
                     tp_tape_alloc(&m->cfg, B, T, rc, &tz) == TP_OK && tp_tape_alloc(&h->cfg, B, T, rc, &th) == TP_OK,
                 "grads and tapes");
        tp_step_opts so = {.targets = tg};
        double loss_z = 0, loss_h = 0;
        TT_CHECK(tp_train_step(z, gz, tz, tok, B, T, &so, &loss_z, NULL) == TP_OK &&
                     tp_train_step(h, gh, th, tok, B, T, &so, &loss_h, NULL) == TP_OK,
                 "steps: %s", tp_errmsg());
        double eg = pl_grad_err(gz, gh, p);
        TT_CHECK(fabs(loss_z - loss_h) <= 1e-5 * fabs(loss_z) && eg <= 1e-4,
                 "recompute %d: loss %.7f vs %.7f, gradients max rel %.2e", rc, loss_h, loss_z, eg);
        tt_note("recompute %d: loss %.7f (masked source %.7f), kept-weight gradients max rel %.2e", rc, loss_h, loss_z, eg);
        tp_tape_free(tz);
        tp_tape_free(th);
        tp_model_free(gz);
        tp_model_free(gh);
        gz = gh = NULL;
    }
    /* config through JSON */
    char *js = NULL;
    tp_config back_cfg;
    TT_CHECK(tp_config_to_json(&h->cfg, &js) == TP_OK && strstr(js, "taper_layer_intermediate_size") &&
                 tp_config_from_json(js, "per-layer config", &back_cfg) == TP_OK &&
                 memcmp(&back_cfg, &h->cfg, sizeof back_cfg) == 0,
             "config JSON round trip: %s", tp_errmsg());
    free(js);
    /* GGUF: written as llama.cpp's deci, read back bit-identical, loaded and streamed */
    if (TT_CHECK(tp_model_save_gguf(h, gp, TP_GGML_F32) == TP_OK, "GGUF: %s", tp_errmsg())) {
        tp_gguf *g = NULL;
        char *arch = NULL;
        TT_CHECK(tp_gguf_open(gp, &g) == TP_OK && tp_gguf_get_str(g, "general.architecture", &arch) == TP_OK &&
                     !strcmp(arch, "deci"),
                 "general.architecture deci (got %s)", arch ? arch : "?");
        const tp_gguf_kv *kv = g ? tp_gguf_find(g, "deci.feed_forward_length") : NULL;
        TT_CHECK(kv && kv->type == TP_GGUF_ARRAY && kv->v.arr.n == 3 && tp_gguf_arr_u64(kv, 1) == 15,
                 "deci.feed_forward_length is the per-layer array");
        free(arch);
        tp_gguf_close(g);
        TT_CHECK(tp_model_load(gp, &back) == TP_OK, "load: %s", tp_errmsg());
        if (back) {
            const tp_config *x = &back->cfg, *y = &h->cfg;
            TT_CHECK(x->hetero && x->d_ff == y->d_ff && x->n_heads == y->n_heads && x->n_kv_heads == y->n_kv_heads &&
                         !memcmp(x->layer_ff, y->layer_ff, sizeof x->layer_ff) &&
                         !memcmp(x->layer_heads, y->layer_heads, sizeof x->layer_heads),
                     "same widths");
            tp_config t = *x; /* the fixture has no tokenizer: its BOS / EOS do not reach the GGUF */
            t.bos_id = y->bos_id;
            t.eos_id = y->eos_id;
            TT_CHECK(memcmp(&t, y, sizeof t) == 0, "same config otherwise");
            TT_CHECK(back->n_params == h->n_params &&
                         memcmp(back->params, h->params, h->n_params * sizeof(float)) == 0,
                     "same weights");
        }
        if (TT_CHECK(tp_model_open_streamed(gp, &st) == TP_OK, "streamed: %s", tp_errmsg())) {
            TT_CHECK(tp_forward(st, tok, B, T, NULL, lb, 0) == TP_OK && memcmp(lb, lh, N * V * sizeof(float)) == 0,
                     "streamed forward: the loaded model's logits, bit for bit (%s)", tp_errmsg());
        }
    }
    /* refusals with a message */
    TT_CHECK(tp_model_save_hf(h, hf, "F32") == TP_ERR_UNSUPPORTED && strstr(tp_errmsg(), "per-layer widths"),
             "HF export refused: %s", tp_errmsg());
    tp_importance *i2 = NULL;
    TT_CHECK(tp_importance_compute(h, tok, 1, T, NULL, &i2) == TP_ERR_UNSUPPORTED, "scoring it refused");
    tp_prune_plan *p2 = NULL;
    TT_CHECK(tp_prune_plan_make(&h->cfg, NULL, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &p2) == TP_ERR_UNSUPPORTED,
             "pruning it again refused: %s", tp_errmsg());
done:
    free(lz); free(lh); free(lb); free(tok); free(tg);
    tt_sh("rm -rf '%s' '%s'", gp, hf);
    free(gp); free(hf);
    tp_prune_plan_free(p);
    tp_importance_free(imp);
    tp_model_free(st);
    tp_model_free(back);
    tp_model_free(z);
    tp_model_free(h);
    tp_model_free(m);
}

/* Invalid per-layer configs are refused with the reason. */
TT_TEST(per_layer_config_validation) {
    tp_model *m = pl_model();
    if (!m) return;
    tp_config c = m->cfg;
    int ff[3] = {60, 30, 12}, nh[3] = {6, 4, 2};
    tp_config_set_widths(&c, ff, nh);
    TT_CHECK(c.hetero && c.d_ff == 60 && c.n_heads == 6 && tp_config_validate(&c) == TP_OK, "valid: %s", tp_errmsg());
    tp_config b = c;
    b.layer_heads[1] = 3;
    TT_CHECK(tp_config_validate(&b) == TP_ERR_ARG && strstr(tp_errmsg(), "not a multiple"), "3 heads, 2 groups: %s",
             tp_errmsg());
    b = c;
    b.d_ff = 64;
    TT_CHECK(tp_config_validate(&b) == TP_ERR_ARG && strstr(tp_errmsg(), "largest"), "d_ff not the widest: %s",
             tp_errmsg());
    b = c;
    b.layer_ff[3] = 8;
    TT_CHECK(tp_config_validate(&b) == TP_ERR_ARG, "a width past the last layer");
    int same_ff[3] = {60, 60, 60}, same_h[3] = {6, 6, 6};
    b = c;
    tp_config_set_widths(&b, same_ff, same_h);
    TT_CHECK(!b.hetero && memcmp(&b, &m->cfg, sizeof b) == 0, "equal widths: the uniform config again");
    /* the parameter count sums the layers */
    size_t u = tp_config_n_params(&m->cfg), d = 36, hd = 10;
    size_t want = u - 3 * d * (60 - 12) - 2 * d * hd * (6 - 2) - 3 * d * (60 - 30) - 2 * d * hd * (6 - 4);
    TT_CHECK(tp_config_n_params(&c) == want, "params %zu, want %zu", tp_config_n_params(&c), want);
    tp_model_free(m);
}

/* taper prune --per-layer writes the GGUF and its plan; taper ppl reads it; taper convert to an HF
 * folder refuses it (exit 1, the reason named). */
TT_TEST(per_layer_cli) {
    const char *mp = tt_model_path();
    if (!tt_bin()) {
        tt_skip("TAPER_BIN not set (run through make test)");
        return;
    }
    if (!mp) {
        tt_skip("SmolLM2 GGUF not present");
        return;
    }
    char *dir = tt_path(tt_tmp_dir(), "per_layer_cli"), a[4096], *out = NULL;
    tt_sh("rm -rf '%s' && mkdir -p '%s'", dir, dir);
    char *txt = tt_path(dir, "calib.txt");
    tt_fox_text(txt, 400);
    snprintf(a, sizeof a, "importance %s --data %s --samples 8 --seq-len 64 -o %s/s.json", mp, txt, dir);
    if (!TT_CHECK(tt_taper(a, &out) == 0, "importance: %s", out)) goto done;
    free(out);
    /* the default rule (loss, heads uniform), kept cheap: 1 held-out sample, chunks of 256 */
    snprintf(a, sizeof a, "prune %s --scores %s/s.json --ffn 1024 --heads 6 --per-layer --per-layer-step 256 "
             "--eval-samples 1 --gguf %s/loss.gguf", mp, dir, dir);
    if (TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "per layer (ffn/heads):"), "prune --per-layer (loss): %s", out)) {
        tp_config lc;
        snprintf(a, sizeof a, "%s/loss.gguf", dir);
        if (TT_CHECK(tp_config_load(a, &lc) == TP_OK && lc.hetero, "loss rule: per-layer widths (%s)", tp_errmsg())) {
            int ok = 1;
            long tf = 0;
            for (int l = 0; l < lc.n_layers; l++) {
                tf += tp_config_ff(&lc, l);
                ok &= tp_config_ff(&lc, l) % 256 == 0 && tp_config_heads(&lc, l) == 6;
            }
            TT_CHECK(ok && tf == 1024L * lc.n_layers, "loss rule: widths in steps of 256, total %ld, 6 heads each", tf);
        }
    }
    free(out);
    out = NULL;
    snprintf(a, sizeof a, "prune %s --scores %s/s.json --ffn 1024 --heads 6 --per-layer --per-layer-rule activation "
             "--per-layer-heads --gguf %s/het.gguf --gguf-type f32 --json=%s/prune.json", mp, dir, dir, dir);
    if (!TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "per layer (ffn/heads):"), "prune --per-layer: %s", out))
        goto done;
    free(out);
    out = NULL;
    snprintf(a, sizeof a, "%s/het.gguf.plan.json", dir);
    tp_prune_plan *p = NULL;
    tp_model *h = NULL;
    TT_CHECK(tp_prune_plan_load(a, &p) == TP_OK && p->cfg.hetero, "plan beside the GGUF: %s", tp_errmsg());
    snprintf(a, sizeof a, "%s/het.gguf", dir);
    if (TT_CHECK(tp_model_load(a, &h) == TP_OK, "load: %s", tp_errmsg()) && p) {
        TT_CHECK(memcmp(&h->cfg, &p->cfg, sizeof h->cfg) == 0, "the GGUF has the plan's widths");
        int L = h->cfg.n_layers;
        long tf = 0, th = 0;
        for (int l = 0; l < L; l++) tf += tp_config_ff(&h->cfg, l), th += tp_config_heads(&h->cfg, l);
        TT_CHECK(tf == 1024L * L && th == 6L * L, "totals of the uniform target: %ld neurons, %ld heads", tf, th);
        int hv = 0;
        for (int l = 0; l < L; l++) hv |= tp_config_heads(&h->cfg, l) != 6;
        TT_CHECK(hv, "--per-layer-heads: the heads vary too");
    }
    tp_model_free(h);
    tp_prune_plan_free(p);
    snprintf(a, sizeof a, "ppl %s/het.gguf --data %s --ctx 64 --max-chunks 2", dir, txt);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "llama.cpp"), "ppl: %s", out);
    free(out);
    snprintf(a, sizeof a, "convert %s/het.gguf --to hf %s/hf", dir, dir);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "per-layer widths"), "convert to HF -> 1: %s", out);
done:
    free(out);
    tt_sh("rm -rf '%s'", dir);
    free(txt);
    free(dir);
}

/* taper train on a per-layer model: 4 steps in one go, and 2 steps (of a 4-step schedule) then
 * resumed to 4 from the checkpoint (whose config carries the widths), give the same bits; the
 * export is the per-layer GGUF again. */
TT_TEST(per_layer_train_resume_exact) {
    if (!tt_bin()) {
        tt_skip("TAPER_BIN not set (run through make test)");
        return;
    }
    tp_model *m = pl_model(), *h = NULL, *a = NULL, *b = NULL;
    tp_importance *imp = NULL;
    tp_prune_plan *p = NULL;
    char *dir = tt_path(tt_tmp_dir(), "per_layer_train"), args[4096], *out = NULL;
    tt_sh("rm -rf '%s' && mkdir -p '%s'", dir, dir);
    char *gg = tt_path(dir, "het.gguf"), *shard = tt_path(dir, "d.tpt");
    if (!m || !(imp = pl_scores(m))) goto done;
    pl_design(imp);
    tp_prune_shape sh = {0, 30, 4, 0, 0};
    tp_per_layer_opts o = {.ffn_step = 5, .min_keep = 0.25};
    if (!TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &p) == TP_OK &&
                      tp_prune_plan_per_layer(p, imp, &o) == TP_OK && tp_prune_apply(m, p, &h) == TP_OK &&
                      tp_model_save_gguf(h, gg, TP_GGML_F32) == TP_OK,
                  "per-layer model: %s", tp_errmsg()) ||
        !TT_CHECK(tt_markov_shard(shard, 40, 20, 30, 50, 7, m->cfg.vocab, 3), "shard"))
        goto done;
    const char *common = "--seq 16 --batch 2 --lr 1e-3 --warmup 1 --ckpt-every 2 --threads 1";
    snprintf(args, sizeof args, "train '%s' --data '%s' --steps 4 %s --run-dir '%s/a' --export-gguf '%s/a.gguf'", gg,
             shard, common, dir, dir);
    TT_CHECK(tt_taper(args, &out) == 0, "4 steps: %s", out);
    free(out);
    snprintf(args, sizeof args, "train '%s' --data '%s' --steps 2 --schedule-steps 4 %s --run-dir '%s/b'", gg, shard, common, dir);
    TT_CHECK(tt_taper(args, &out) == 0, "2 steps: %s", out);
    free(out);
    snprintf(args, sizeof args, "train '%s' --data '%s' --steps 4 %s --run-dir '%s/b' --resume --export-gguf '%s/b.gguf'",
             gg, shard, common, dir, dir);
    TT_CHECK(tt_taper(args, &out) == 0 && strstr(out, "resumed"), "resumed to 4: %s", out);
    free(out);
    out = NULL;
    snprintf(args, sizeof args, "%s/a.gguf", dir);
    char bp[4096];
    snprintf(bp, sizeof bp, "%s/b.gguf", dir);
    if (TT_CHECK(tp_model_load(args, &a) == TP_OK && tp_model_load(bp, &b) == TP_OK, "exports: %s", tp_errmsg())) {
        TT_CHECK(a->cfg.hetero && !memcmp(a->cfg.layer_ff, h->cfg.layer_ff, sizeof a->cfg.layer_ff) &&
                     !memcmp(a->cfg.layer_heads, h->cfg.layer_heads, sizeof a->cfg.layer_heads),
                 "the export keeps the widths");
        TT_CHECK(a->n_params == b->n_params && memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0,
                 "resumed = uninterrupted, bit for bit");
        TT_CHECK(memcmp(a->params, h->params, a->n_params * sizeof(float)) != 0, "and training changed the weights");
    }
done:
    free(out);
    if (!getenv("PL_KEEP")) tt_sh("rm -rf '%s'", dir);
    free(dir); free(gg); free(shard);
    tp_model_free(a);
    tp_model_free(b);
    tp_model_free(h);
    tp_prune_plan_free(p);
    tp_importance_free(imp);
    tp_model_free(m);
}

/* Per-layer MLP widths by loss sensitivity. On the random model: totals kept, floors held, widths
 * in steps, heads uniform (ffn only), the model's weights restored bit for bit after the
 * measurements. With every down_proj zeroed no width changes the loss: every chunk is worth 0, the
 * ties go to the earlier layer, so layer 0 fills up first: 60 / 15 / 15 exactly. */
TT_TEST(per_layer_loss_rule) {
    tp_model *m = pl_model();
    tp_importance *imp = NULL;
    tp_prune_plan *p = NULL, *q = NULL;
    float *before = NULL;
    int32_t *ids = NULL;
    if (!m || !(imp = pl_scores(m))) goto done;
    before = malloc(m->n_params * sizeof(float));
    memcpy(before, m->params, m->n_params * sizeof(float));
    ids = pl_ids(4 * 16, m->cfg.vocab, 21);
    tp_prune_shape sh = {0, 30, 4, 0, 0};
    tp_per_layer_opts o;
    tp_per_layer_opts_default(&o);
    o.ffn_step = 5;
    o.ffn_only = 1;
    o.loss_rule = 1;
    o.model = m;
    o.ids = ids;
    o.n = 4;
    o.seq_len = 16;
    o.probe = 2;
    if (!TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &p) == TP_OK &&
                      tp_prune_plan_per_layer(p, imp, &o) == TP_OK,
                  "loss rule: %s", tp_errmsg()))
        goto done;
    int f[3], ok = 1;
    for (int l = 0; l < 3; l++) {
        f[l] = tp_config_ff(&p->cfg, l);
        ok &= f[l] % 5 == 0 && f[l] >= 15 && f[l] <= 60 && tp_config_heads(&p->cfg, l) == 4;
    }
    TT_CHECK(ok && f[0] + f[1] + f[2] == 90, "widths %d / %d / %d: steps of 5, floor 15, total 90, 4 heads each", f[0],
             f[1], f[2]);
    TT_CHECK(memcmp(before, m->params, m->n_params * sizeof(float)) == 0, "the model's weights are restored");
    tt_note("loss rule on the random model: widths %d / %d / %d", f[0], f[1], f[2]);
    size_t d = (size_t)m->cfg.d_model, F = (size_t)m->cfg.d_ff;
    for (int l = 0; l < 3; l++) memset(m->layers[l].w_down, 0, d * F * sizeof(float));
    if (TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &q) == TP_OK &&
                     tp_prune_plan_per_layer(q, imp, &o) == TP_OK,
                 "zeroed MLPs: %s", tp_errmsg()))
        TT_CHECK(tp_config_ff(&q->cfg, 0) == 60 && tp_config_ff(&q->cfg, 1) == 15 && tp_config_ff(&q->cfg, 2) == 15,
                 "zeroed MLPs: 60 / 15 / 15 (got %d / %d / %d)", tp_config_ff(&q->cfg, 0), tp_config_ff(&q->cfg, 1),
                 tp_config_ff(&q->cfg, 2));
    tp_prune_plan_free(q);
    q = NULL;
    tp_per_layer_opts bad = o;
    bad.model = NULL;
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, NULL, 0, &q) == TP_OK &&
                 tp_prune_plan_per_layer(q, imp, &bad) == TP_ERR_ARG,
             "no model: refused");
done:
    free(before);
    free(ids);
    tp_prune_plan_free(p);
    tp_prune_plan_free(q);
    tp_importance_free(imp);
    tp_model_free(m);
}
