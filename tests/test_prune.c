/* Pruning tests on SmolLM2-135M: full-size plans reproduce the logits bit for bit; pruned
 * weights are exactly the gathered source rows/columns; plan invariants (ascending, GQA groups);
 * HF (and GGUF) exports of pruned models reload with identical logits (and are left with taper's
 * logits in $TAPER_EXPORT_DIR/pruned for importance_ref.py --check-pruned); plan files round
 * trip, replay, and fail clearly when malformed; impossible targets fail naming the option;
 * the parameter-budget search; composing two rounds' plans; the importance and prune jobs as
 * library calls; the prune CLI. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "taper/compress.h"
#include "taper/model.h"
#include "taper/util.h"
#include "tt.h"

static tp_importance *g_scores;


/* Deterministic token ids that avoid the special tokens at the start of the vocabulary. */
static int32_t *some_ids(size_t n, int vocab, uint32_t seed) {
    int32_t *ids = malloc(n * sizeof *ids);
    uint32_t x = seed;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = (int32_t)(200 + (x >> 8) % (uint32_t)(vocab - 400));
    }
    return ids;
}

/* Real scores of the default model on 4 x 32 made-up tokens (width only plus BI; fast). */
static tp_importance *scores(tp_model *m) {
    if (g_scores) return g_scores;
    int32_t *ids = some_ids(4 * 32, m->cfg.vocab, 7);
    tp_importance_opts o;
    tp_importance_opts_default(&o);
    o.depth_samples = 0;
    if (tp_importance_compute(m, ids, 4, 32, &o, &g_scores)) TT_CHECK(0, "importance: %s", tp_errmsg());
    free(ids);
    return g_scores;
}

static const int32_t INPUT[] = {504, 3458, 28, 314, 253, 1345, 30, 2030, 17, 1116, 282, 260, 1789, 3458, 30, 378};
#define NIN ((int)(sizeof INPUT / sizeof INPUT[0]))

static float *logits_of(const tp_model *m) {
    float *lg = malloc((size_t)NIN * m->cfg.vocab * sizeof(float));
    if (tp_forward(m, INPUT, 1, NIN, NULL, lg, 0)) {
        TT_CHECK(0, "forward: %s", tp_errmsg());
        free(lg);
        return NULL;
    }
    return lg;
}

TT_TEST(prune_full_size_is_bit_identical) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    tp_importance *imp = scores(m);
    if (!imp) return;
    tp_prune_shape full = {m->cfg.d_model, m->cfg.d_ff, m->cfg.n_heads, m->cfg.n_kv_heads, m->cfg.n_layers};
    for (int q = 0; q < TP_AGG_PAIRS; q += 4) {
        tp_prune_plan *p = NULL;
        tp_model *pm = NULL;
        TT_CHECK(tp_prune_plan_make(&m->cfg, imp, q, &full, TP_DEPTH_AUTO, NULL, 0, &p) == TP_OK, "plan: %s", tp_errmsg());
        if (!p) continue;
        TT_CHECK(tp_prune_apply(m, p, &pm) == TP_OK, "apply: %s", tp_errmsg());
        if (pm) {
            TT_CHECK(pm->n_params == m->n_params && memcmp(pm->params, m->params, m->n_params * sizeof(float)) == 0,
                     "every parameter copied unchanged (%s)", tp_agg_pair_name(q));
            float *a = logits_of(m), *b = logits_of(pm);
            TT_CHECK(a && b && memcmp(a, b, (size_t)NIN * m->cfg.vocab * sizeof(float)) == 0,
                     "logits bit-identical (%s)", tp_agg_pair_name(q));
            free(a);
            free(b);
        }
        tp_model_free(pm);
        tp_prune_plan_free(p);
    }
    /* no scores needed when nothing narrows and the layer list is explicit */
    tp_prune_plan *p = NULL;
    tp_prune_shape keep = {0};
    TT_CHECK(tp_prune_plan_make(&m->cfg, NULL, -1, &keep, TP_DEPTH_AUTO, NULL, 0, &p) == TP_OK && p &&
             p->n_params == p->src_params, "identity plan without scores");
    tp_prune_plan_free(p);
}

/* Every weight of pm equals m's at the plan's indices. */
static int weights_are_gathered(const tp_model *m, const tp_model *pm, const tp_prune_plan *p) {
    const tp_config *a = &m->cfg, *c = &pm->cfg;
    int hd = a->head_dim, bad = 0;
    size_t d = (size_t)a->d_model, d2 = (size_t)c->d_model, q1 = (size_t)a->n_heads * hd, ff1 = (size_t)a->d_ff;
    const int *ch = p->channels;
    for (size_t v = 0; v < (size_t)a->vocab; v++)
        for (size_t j = 0; j < d2; j++) bad += pm->tok_emb[v * d2 + j] != m->tok_emb[v * d + (size_t)ch[j]];
    bad += pm->lm_head != pm->tok_emb; /* still tied */
    for (size_t j = 0; j < d2; j++) bad += pm->final_norm[j] != m->final_norm[ch[j]];
    for (int i = 0; i < c->n_layers; i++) {
        const tp_layer *S = &m->layers[p->layers[i]], *D = &pm->layers[i];
        const int *hs = p->heads + (size_t)i * c->n_heads, *kv = p->kv_groups + (size_t)i * c->n_kv_heads;
        const int *ne = p->neurons + (size_t)i * c->d_ff;
        for (size_t j = 0; j < d2; j++)
            bad += D->attn_norm[j] != S->attn_norm[ch[j]] || D->mlp_norm[j] != S->mlp_norm[ch[j]];
        for (int h = 0; h < c->n_heads; h++)
            for (int r = 0; r < hd; r++) {
                size_t row2 = (size_t)h * hd + r, row1 = (size_t)hs[h] * hd + r;
                for (size_t j = 0; j < d2; j++) {
                    bad += D->wq[row2 * d2 + j] != S->wq[row1 * d + ch[j]];
                    bad += D->wo[j * (size_t)c->n_heads * hd + row2] != S->wo[(size_t)ch[j] * q1 + row1];
                }
            }
        for (int g = 0; g < c->n_kv_heads; g++)
            for (int r = 0; r < hd; r++) {
                size_t row2 = (size_t)g * hd + r, row1 = (size_t)kv[g] * hd + r;
                for (size_t j = 0; j < d2; j++)
                    bad += D->wk[row2 * d2 + j] != S->wk[row1 * d + ch[j]] || D->wv[row2 * d2 + j] != S->wv[row1 * d + ch[j]];
            }
        for (int n = 0; n < c->d_ff; n++)
            for (size_t j = 0; j < d2; j++) {
                bad += D->w_gate[(size_t)n * d2 + j] != S->w_gate[(size_t)ne[n] * d + ch[j]];
                bad += D->w_up[(size_t)n * d2 + j] != S->w_up[(size_t)ne[n] * d + ch[j]];
                bad += D->w_down[j * (size_t)c->d_ff + n] != S->w_down[(size_t)ch[j] * ff1 + ne[n]];
            }
    }
    return bad;
}

/* Ascending lists, heads inside their kept group, and the kept parts are the top-scored ones. */
static void check_plan_follows_scores(const tp_config *a, const tp_prune_plan *p, const tp_importance *imp, int q) {
    TT_CHECK(tp_prune_plan_check(p, a) == TP_OK, "plan check: %s", tp_errmsg());
    const tp_config *c = &p->cfg;
    const double *C = imp->channels + (size_t)q * a->d_model;
    /* the smallest kept channel score >= the largest dropped one */
    double kept_min = INFINITY, drop_max = -INFINITY;
    for (int j = 0, k = 0; j < a->d_model; j++) {
        if (k < c->d_model && p->channels[k] == j) { kept_min = fmin(kept_min, C[j]); k++; }
        else drop_max = fmax(drop_max, C[j]);
    }
    TT_CHECK(kept_min >= drop_max, "channels are the top-scored ones (%g vs %g)", kept_min, drop_max);
    int rep = a->n_heads / a->n_kv_heads, rep2 = c->n_heads / c->n_kv_heads;
    for (int i = 0; i < c->n_layers; i++) {
        int sl = p->layers[i];
        const double *N = imp->neurons + ((size_t)q * a->n_layers + sl) * a->d_ff;
        const double *G = imp->kv_groups + ((size_t)q * a->n_layers + sl) * a->n_kv_heads;
        const double *H = imp->heads + ((size_t)q * a->n_layers + sl) * a->n_heads;
        kept_min = INFINITY; drop_max = -INFINITY;
        for (int j = 0, k = 0; j < a->d_ff; j++) {
            if (k < c->d_ff && p->neurons[(size_t)i * c->d_ff + k] == j) { kept_min = fmin(kept_min, N[j]); k++; }
            else drop_max = fmax(drop_max, N[j]);
        }
        TT_CHECK(kept_min >= drop_max, "layer %d: neurons are the top-scored ones", i);
        const int *kv = p->kv_groups + (size_t)i * c->n_kv_heads, *hs = p->heads + (size_t)i * c->n_heads;
        for (int g = 0; g < a->n_kv_heads; g++) {
            int kept = 0;
            for (int k = 0; k < c->n_kv_heads; k++) kept |= kv[k] == g;
            if (!kept)
                for (int k = 0; k < c->n_kv_heads; k++)
                    TT_CHECK(G[kv[k]] >= G[g], "layer %d: dropped group %d scores above kept group %d", i, g, kv[k]);
        }
        for (int k = 0; k < c->n_kv_heads; k++)
            for (int h = kv[k] * rep; h < (kv[k] + 1) * rep; h++) {
                int kept = 0;
                for (int r = 0; r < rep2; r++) kept |= hs[k * rep2 + r] == h;
                for (int r = 0; r < rep2 && !kept; r++)
                    TT_CHECK(H[hs[k * rep2 + r]] >= H[h], "layer %d: dropped head %d scores above a kept one", i, h);
            }
    }
}

TT_TEST(prune_gathers_top_ranked_rows_and_columns) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    tp_importance *imp = scores(m);
    if (!imp) return;
    tp_prune_shape sh = {512, 1024, 6, 2, 0};
    int drop[] = {3, 17, 11};
    int q = TP_AGG_DEFAULT_PAIR;
    tp_prune_plan *p = NULL;
    tp_model *pm = NULL;
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, q, &sh, TP_DEPTH_AUTO, drop, 3, &p) == TP_OK, "plan: %s", tp_errmsg());
    if (!p) return;
    TT_CHECK(p->cfg.n_layers == 27 && p->layers[3] == 4 && p->layers[10] == 12 && p->depth_rule == TP_DEPTH_LIST,
             "explicit layer list");
    check_plan_follows_scores(&m->cfg, p, imp, q);
    TT_CHECK(tp_prune_apply(m, p, &pm) == TP_OK, "apply: %s", tp_errmsg());
    if (pm) {
        TT_CHECK(pm->cfg.d_model == 512 && pm->cfg.d_ff == 1024 && pm->cfg.n_heads == 6 && pm->cfg.n_kv_heads == 2 &&
                 pm->cfg.head_dim == 64 && pm->cfg.n_layers == 27, "pruned config");
        TT_CHECK(pm->n_params == tp_config_n_params(&pm->cfg) && p->n_params == tp_config_n_params(&pm->cfg),
                 "parameter count");
        int bad = weights_are_gathered(m, pm, p);
        TT_CHECK(bad == 0, "%d pruned weights differ from the gathered source rows/columns", bad);
    }
    tp_model_free(pm);
    tp_prune_plan_free(p);
    /* heads within groups (no group dropped), by BI depth */
    tp_prune_shape sh2 = {0, 0, 3, 0, 28};
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, 0, &sh2, TP_DEPTH_AUTO, NULL, 0, &p) == TP_OK, "plan 2: %s", tp_errmsg());
    if (p) {
        TT_CHECK(p->cfg.n_kv_heads == 3 && p->cfg.n_heads == 3 && p->depth_rule == TP_DEPTH_BI, "3 groups of 1 head, BI");
        int worst[2] = {-1, -1};
        for (int l = 0; l < m->cfg.n_layers; l++) {
            if (worst[0] < 0 || imp->block_influence[l] < imp->block_influence[worst[0]]) { worst[1] = worst[0]; worst[0] = l; }
            else if (worst[1] < 0 || imp->block_influence[l] < imp->block_influence[worst[1]]) worst[1] = l;
        }
        for (int i = 0; i < p->cfg.n_layers; i++)
            TT_CHECK(p->layers[i] != worst[0] && p->layers[i] != worst[1], "the two lowest-BI layers are dropped");
        check_plan_follows_scores(&m->cfg, p, imp, 0);
        tp_prune_plan_free(p);
    }
}

/* ---------------------------------------------------------------------------------------- */

static char *export_root(void) {
    const char *e = getenv("TAPER_EXPORT_DIR");
    char *root = tt_path(e && *e ? e : tt_tmp_dir(), "pruned");
    mkdir(root, 0755);
    return root;
}

static int keep_exports(void) {
    const char *e = getenv("TAPER_EXPORT_DIR");
    return e && *e;
}

static void rm_rf(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) tt_note("could not remove %s", dir);
}

static void write_logits_and_input(const char *dir, const float *lg, size_t n) {
    char *p = tt_path(dir, "taper_logits.f32");
    TT_CHECK(tp_write_file_atomic(p, lg, n * sizeof(float)) == TP_OK, "write %s", p);
    free(p);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "ids", cJSON_CreateIntArray(INPUT, NIN));
    char *t = cJSON_PrintUnformatted(j);
    p = tt_path(dir, "input.json");
    TT_CHECK(tp_write_file_atomic(p, t, strlen(t)) == TP_OK, "write %s", p);
    free(p);
    free(t);
    cJSON_Delete(j);
}

TT_TEST(prune_exports_reload_with_identical_logits) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    tp_importance *imp = scores(m);
    if (!imp) return;
    static const struct { const char *name; tp_prune_shape sh; int drop_block; } cases[] = {
        {"ffn1024", {0, 1024, 0, 0, 0}, 0},
        {"hidden512", {512, 0, 0, 0, 0}, 0},
        {"kv2", {0, 0, 6, 2, 0}, 0},
        {"layers24", {0, 0, 0, 0, 24}, 1},
        {"combined", {512, 1024, 6, 2, 24}, 1},
    };
    char *root = export_root();
    int drop[6] = {12, 13, 14, 15, 16, 17};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tp_prune_plan *p = NULL;
        tp_model *pm = NULL, *back = NULL;
        tp_prune_shape sh = cases[k].sh;
        if (cases[k].drop_block) sh.n_layers = 0;
        if (tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, cases[k].drop_block ? drop : NULL,
                               cases[k].drop_block ? 6 : 0, &p) ||
            tp_prune_apply(m, p, &pm)) {
            TT_CHECK(0, "%s: %s", cases[k].name, tp_errmsg());
            tp_prune_plan_free(p);
            continue;
        }
        pm->tok = m->tok; /* borrowed for the export */
        char *dir = tt_path(root, cases[k].name);
        tp_status s = tp_model_save_hf(pm, dir, "F32");
        pm->tok = NULL;
        TT_CHECK(s == TP_OK, "%s: save: %s", cases[k].name, tp_errmsg());
        float *a = logits_of(pm), *b = NULL;
        if (!s && tp_model_load(dir, &back) == TP_OK) {
            b = logits_of(back);
            TT_CHECK(back->cfg.d_model == pm->cfg.d_model && back->cfg.d_ff == pm->cfg.d_ff &&
                     back->cfg.n_heads == pm->cfg.n_heads && back->cfg.n_kv_heads == pm->cfg.n_kv_heads &&
                     back->cfg.head_dim == 64 && back->cfg.n_layers == pm->cfg.n_layers && back->tok,
                     "%s: config.json carries every size and head_dim; tokenizer written", cases[k].name);
            TT_CHECK(back->n_params == pm->n_params && memcmp(back->params, pm->params, pm->n_params * 4) == 0,
                     "%s: HF export reloads bit-identical weights", cases[k].name);
        } else
            TT_CHECK(0, "%s: reload: %s", cases[k].name, tp_errmsg());
        size_t nl = (size_t)NIN * m->cfg.vocab;
        TT_CHECK(a && b && memcmp(a, b, nl * sizeof(float)) == 0, "%s: identical logits after the HF round trip",
                 cases[k].name);
        if (a) write_logits_and_input(dir, a, nl);
        if (!strcmp(cases[k].name, "combined") && a) {
            /* GGUF: Q/K rows re-permuted for llama.cpp; reloads to the same weights */
            char *gg = tt_path(root, "combined.gguf");
            tp_model *g = NULL;
            pm->tok = m->tok;
            s = tp_model_save_gguf(pm, gg, 0);
            pm->tok = NULL;
            TT_CHECK(s == TP_OK && tp_model_load(gg, &g) == TP_OK, "GGUF: %s", tp_errmsg());
            float *c = g ? logits_of(g) : NULL;
            TT_CHECK(c && memcmp(a, c, nl * sizeof(float)) == 0, "combined: identical logits after the GGUF round trip");
            free(c);
            tp_model_free(g);
            if (!keep_exports()) unlink(gg);
            free(gg);
            tt_note("combined: %zu -> %zu params (hidden 512, ffn 1024, heads 6/2, layers 24 = 12-17 dropped)",
                    p->src_params, p->n_params);
        }
        free(a);
        free(b);
        tp_model_free(back);
        tp_model_free(pm);
        tp_prune_plan_free(p);
        if (!keep_exports()) rm_rf(dir);
        free(dir);
    }
    if (keep_exports()) tt_note("pruned exports for importance_ref.py --check-pruned in %s", root);
    free(root);
}

/* ---------------------------------------------------------------------------------------- */

TT_TEST(prune_plan_file_round_trip_and_replay) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    tp_importance *imp = scores(m);
    if (!imp) return;
    tp_prune_shape sh = {448, 768, 6, 3, 26};
    tp_prune_plan *p = NULL, *q = NULL;
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, TP_AGG_MEAN * 3 + TP_AGG_L2, &sh, TP_DEPTH_BI, NULL, 0, &p) == TP_OK,
             "plan: %s", tp_errmsg());
    if (!p) return;
    char *path = tt_path(tt_tmp_dir(), "plan_rt.json");
    TT_CHECK(tp_prune_plan_save(p, path) == TP_OK, "save: %s", tp_errmsg());
    TT_CHECK(tp_prune_plan_load(path, &q) == TP_OK, "load: %s", tp_errmsg());
    if (q) {
        const tp_config *c = &p->cfg;
        TT_CHECK(q->cfg.d_model == 448 && q->cfg.d_ff == 768 && q->cfg.n_heads == 6 && q->cfg.n_kv_heads == 3 &&
                 q->cfg.n_layers == 26 && q->n_params == p->n_params && q->agg_pair == p->agg_pair, "sizes");
        TT_CHECK(!memcmp(q->layers, p->layers, (size_t)c->n_layers * sizeof(int)) &&
                 !memcmp(q->channels, p->channels, (size_t)c->d_model * sizeof(int)) &&
                 !memcmp(q->kv_groups, p->kv_groups, (size_t)c->n_layers * c->n_kv_heads * sizeof(int)) &&
                 !memcmp(q->heads, p->heads, (size_t)c->n_layers * c->n_heads * sizeof(int)) &&
                 !memcmp(q->neurons, p->neurons, (size_t)c->n_layers * c->d_ff * sizeof(int)), "indices");
        tp_model *a = NULL, *b = NULL;
        TT_CHECK(tp_prune_apply(m, p, &a) == TP_OK && tp_prune_apply(m, q, &b) == TP_OK, "apply both");
        TT_CHECK(a && b && a->n_params == b->n_params && !memcmp(a->params, b->params, a->n_params * 4),
                 "replaying the plan file gives the same model");
        tp_model_free(a);
        tp_model_free(b);
    }
    tp_prune_plan_free(q);
    tp_prune_plan_free(p);
    free(path);
}

static char *replace(const char *text, const char *from, const char *to) {
    const char *at = strstr(text, from);
    if (!at) return NULL;
    size_t n = strlen(text), nf = strlen(from), nt = strlen(to);
    char *out = malloc(n - nf + nt + 1);
    memcpy(out, text, (size_t)(at - text));
    memcpy(out + (at - text), to, nt);
    strcpy(out + (at - text) + nt, at + nf);
    return out;
}

TT_TEST(prune_plan_file_malformed) {
    /* a small made-up model: plans need no real weights */
    tp_config c = {0};
    c.arch = TP_ARCH_LLAMA; c.n_layers = 4; c.d_model = 16; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 4;
    c.d_ff = 24; c.vocab = 50; c.max_pos = 64; c.rope_theta = 10000; c.norm_eps = 1e-5f; c.tie_embeddings = 1;
    c.bos_id = c.eos_id = -1;
    tp_prune_shape keep = {0}, sh = {0};
    int drop[] = {2};
    tp_prune_plan *p = NULL;
    TT_CHECK(tp_prune_plan_make(&c, NULL, -1, &keep, TP_DEPTH_AUTO, drop, 1, &p) == TP_OK, "plan: %s", tp_errmsg());
    if (!p) return;
    char *good = tt_path(tt_tmp_dir(), "plan_good.json"), *bad = tt_path(tt_tmp_dir(), "plan_bad.json"), *text = NULL;
    TT_CHECK(tp_prune_plan_save(p, good) == TP_OK && tp_read_file(good, &text, NULL) == TP_OK, "save");
    tp_prune_plan_free(p);
    if (!text) { free(good); free(bad); return; }
    static const struct { const char *from, *to, *expect; } cases[] = {
        {"\"taper-prune-plan\"", "\"taper-importance\"", "format"},
        {"\"version\":\t1", "\"version\":\t2", "version 2"},
        {"\"layers\":\t[0, 1, 3]", "\"layers\":\t[0, 1]", "layers has 2 entries"},
        {"\"layers\":\t[0, 1, 3]", "\"layers\":\t[0, 3, 1]", "source_layer"},
        {"\"layers\":\t[0, 1, 3]", "\"layers\":\t[0, 1, 4]", "layers[2] = 4"},
        {"\"layers\":\t[0, 1, 3]", "\"layers\":\t[0, 1, 2.5]", "layers[2]"},
        {"\"channels\":\t[0, 1, 2", "\"channels\":\t[0, 0, 2", "channels"},
        {"\"heads\":\t[0, 1, 2, 3]", "\"heads\":\t[0, 2, 1, 3]", "heads"},
        {"\"kv_groups\":\t[0, 1]", "\"kv_groups\":\t[0, 2]", "kv_groups"},
        {"\"neurons\":\t[0, 1, 2", "\"neurons\":\t[0, 1, 99", "neurons"},
        {"\"source_layer\":\t3", "\"source_layer\":\t2", "source_layer"},
        {"\"num_attention_heads\":\t4,\n\t\t\"num_key_value_heads\":\t2,\n\t\t\"head_dim\":\t4,\n\t\t\"num_hidden_layers\":\t3",
         "\"num_attention_heads\":\t3,\n\t\t\"num_key_value_heads\":\t2,\n\t\t\"head_dim\":\t4,\n\t\t\"num_hidden_layers\":\t3",
         "num_attention_heads"},
        {"\"intermediate_size\":\t24,\n\t\t\"num_attention_heads\":\t4,\n\t\t\"num_key_value_heads\":\t2,\n\t\t\"head_dim\":\t4,"
         "\n\t\t\"num_hidden_layers\":\t3",
         "\"intermediate_size\":\t48,\n\t\t\"num_attention_heads\":\t4,\n\t\t\"num_key_value_heads\":\t2,\n\t\t\"head_dim\":\t4,"
         "\n\t\t\"num_hidden_layers\":\t3", "larger"},
        {"\"source_config\":", "\"source_configs\":", "source_config"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *b = replace(text, cases[i].from, cases[i].to);
        if (!TT_CHECK(b != NULL, "case %zu: pattern not in the plan: %s", i, cases[i].from)) continue;
        tp_write_file_atomic(bad, b, strlen(b));
        free(b);
        tp_prune_plan *q = NULL;
        TT_CHECK(tp_prune_plan_load(bad, &q) != TP_OK && !q && strstr(tp_errmsg(), cases[i].expect) &&
                 strstr(tp_errmsg(), bad), "case %zu (%s): %s", i, cases[i].expect, tp_errmsg());
        tp_prune_plan_free(q);
    }
    /* a valid plan for another model */
    tp_prune_plan *q = NULL;
    TT_CHECK(tp_prune_plan_load(good, &q) == TP_OK, "good plan loads: %s", tp_errmsg());
    if (q) {
        tp_config other = c;
        other.d_ff = 32;
        TT_CHECK(tp_prune_plan_check(q, &other) != TP_OK && strstr(tp_errmsg(), "intermediate_size"),
                 "plan for another model: %s", tp_errmsg());
        tp_prune_plan_free(q);
    }
    (void)sh;
    free(text);
    free(good);
    free(bad);
}

TT_TEST(prune_rejects_impossible_targets) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    tp_importance *imp = scores(m);
    if (!imp) return;
    static const struct { tp_prune_shape sh; const char *expect; } cases[] = {
        {{0, 0, 12, 0, 0}, "heads 12"},
        {{0, -1, 0, 0, 0}, "ffn -1"},
        {{640, 0, 0, 0, 0}, "hidden 640"},
        {{0, 0, 7, 0, 0}, "heads 7"},
        {{0, 0, 0, 4, 0}, "kv_heads 4"},
        {{0, 0, 8, 2, 0}, "GQA groups of 4"},
        {{0, 0, 0, 0, 31}, "layers 31"},
        {{0, 4096, 0, 0, 0}, "ffn 4096"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tp_prune_plan *p = NULL;
        TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &cases[i].sh, TP_DEPTH_AUTO, NULL, 0, &p) != TP_OK && !p &&
                 strstr(tp_errmsg(), cases[i].expect), "case %zu: %s", i, tp_errmsg());
    }
    tp_prune_shape keep = {0}, l24 = {0, 0, 0, 0, 24};
    int bad_drop[] = {3, 30}, dup[] = {3, 3};
    tp_prune_plan *p = NULL;
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &keep, TP_DEPTH_AUTO, bad_drop, 2, &p) != TP_OK &&
             strstr(tp_errmsg(), "layer 30 does not exist"), "%s", tp_errmsg());
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &keep, TP_DEPTH_AUTO, dup, 2, &p) != TP_OK &&
             strstr(tp_errmsg(), "twice"), "%s", tp_errmsg());
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &l24, TP_DEPTH_AUTO, dup, 2, &p) != TP_OK &&
             strstr(tp_errmsg(), "layers 24 disagrees with drop_layers"), "layers vs drop_layers: %s", tp_errmsg());
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &l24, TP_DEPTH_BLOCK, NULL, 0, &p) != TP_OK &&
             strstr(tp_errmsg(), "block = 6"), "block scores missing: %s", tp_errmsg());
    TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &l24, TP_DEPTH_LOSS, NULL, 0, &p) != TP_OK &&
             strstr(tp_errmsg(), "layer-removal"), "loss scores missing: %s", tp_errmsg());
    tp_prune_shape narrow = {0, 1024, 0, 0, 0};
    TT_CHECK(tp_prune_plan_make(&m->cfg, NULL, -1, &narrow, TP_DEPTH_AUTO, NULL, 0, &p) != TP_OK &&
             strstr(tp_errmsg(), "needs importance scores"), "width without scores: %s", tp_errmsg());
    /* scores of another shape */
    tp_config other = m->cfg;
    other.d_ff = 2048;
    TT_CHECK(tp_prune_plan_make(&other, imp, -1, &narrow, TP_DEPTH_AUTO, NULL, 0, &p) != TP_OK &&
             strstr(tp_errmsg(), "intermediate_size"), "scores of another model: %s", tp_errmsg());
    /* a budget no shape can meet */
    tp_search_opts o;
    tp_search_opts_default(&o);
    int32_t ids[8] = {504, 3458, 28, 314, 253, 1345, 30, 2030};
    o.eval_ids = ids;
    o.eval_samples = 1;
    o.seq_len = 8;
    o.target = 1000000;
    tp_prune_candidate *cands = NULL;
    int nc = 0, nt = 0;
    TT_CHECK(tp_prune_search(m, imp, &o, &cands, &nc, &nt) != TP_OK && strstr(tp_errmsg(), "target_params 1000000") &&
             strstr(tp_errmsg(), "closest"), "impossible budget: %s", tp_errmsg());
    free(cands);
    size_t v = 0;
    TT_CHECK(tp_parse_count("90M", &v) == TP_OK && v == 90000000, "90M");
    TT_CHECK(tp_parse_count("1.5B", &v) == TP_OK && v == 1500000000, "1.5B");
    TT_CHECK(tp_parse_count("350k", &v) == TP_OK && v == 350000, "350k");
    TT_CHECK(tp_parse_count("9e7", &v) == TP_OK && v == 90000000, "9e7");
    TT_CHECK(tp_parse_count("90Q", &v) != TP_OK && tp_parse_count("-5M", &v) != TP_OK && tp_parse_count("M", &v) != TP_OK,
             "bad counts");
    /* the one count parser of the CLI (also --shard-tokens): whole numbers only, g/G as B */
    TT_CHECK(tp_parse_count("2g", &v) == TP_OK && v == 2000000000 && tp_parse_count("100m", &v) == TP_OK &&
                 v == 100000000 && tp_parse_count("1.5", &v) != TP_OK && tp_parse_count("0", &v) != TP_OK &&
                 tp_parse_count("12kk", &v) != TP_OK,
             "suffix case, whole numbers");
}

TT_TEST(prune_target_params_search) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    tp_importance *imp = scores(m);
    if (!imp) return;
    int32_t *ids = some_ids(2 * 16, m->cfg.vocab, 99);
    tp_search_opts o;
    tp_search_opts_default(&o);
    o.target = 90000000;
    o.eval_ids = ids;
    o.eval_samples = 2;
    o.seq_len = 16;
    o.max_candidates = 3;
    o.fixed.n_layers = 30; /* BI would be the depth rule; keep this test to width */
    tp_prune_candidate *c = NULL;
    int nc = 0, nt = 0;
    TT_CHECK(tp_prune_search(m, imp, &o, &c, &nc, &nt) == TP_OK, "search: %s", tp_errmsg());
    TT_CHECK(nc == 3 && nt >= nc, "3 of %d candidates evaluated", nt);
    for (int i = 0; i < nc; i++) {
        TT_CHECK(fabs((double)c[i].n_params - 9e7) <= 0.05 * 9e7, "candidate %d within 5%%: %zu", i, c[i].n_params);
        TT_CHECK(c[i].shape.n_layers == 30 && c[i].shape.d_model % 64 == 0 && c[i].shape.d_ff % 128 == 0 &&
                 c[i].shape.n_heads % c[i].shape.n_kv_heads == 0, "candidate %d on the grid", i);
        TT_CHECK(isfinite(c[i].loss) && (i == 0 || c[i].loss >= c[i - 1].loss), "sorted by held-out loss");
    }
    free(c);
    free(ids);
}

/* A 4-layer model of the tiny Llama fixture's shape with made-up weights, and its scores on
 * made-up tokens (width, layer-removal losses and BI). */
static tp_model *tiny4(void) {
    char *dir = tt_path(tt_fixtures_dir(), "tiny/llama3");
    tp_model *t = NULL, *m = NULL;
    TT_CHECK(tp_model_load(dir, &t) == TP_OK, "load %s: %s", dir, tp_errmsg());
    free(dir);
    if (!t) return NULL;
    tp_config c = t->cfg;
    tp_model_free(t);
    c.n_layers = 4;
    if (tp_model_alloc(&c, &m) != TP_OK) {
        TT_CHECK(0, "alloc: %s", tp_errmsg());
        return NULL;
    }
    uint32_t x = 12345;
    for (size_t i = 0; i < m->n_params; i++) {
        x = x * 1664525u + 1013904223u;
        m->params[i] = (float)((double)(x >> 8) / (double)(1u << 24) - 0.5) * 0.4f;
    }
    return m;
}

static tp_importance *tiny_scores(const tp_model *m) {
    int32_t ids[4 * 16];
    uint32_t x = 99;
    for (size_t i = 0; i < 4 * 16; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = (int32_t)(3 + (x >> 8) % (uint32_t)(m->cfg.vocab - 3));
    }
    tp_importance_opts o;
    tp_importance_opts_default(&o);
    o.depth_samples = 2;
    tp_importance *imp = NULL;
    TT_CHECK(tp_importance_compute(m, ids, 4, 16, &o, &imp) == TP_OK, "importance: %s", tp_errmsg());
    return imp;
}

TT_TEST(prune_plan_compose_matches_two_rounds) {
    tp_model *a = tiny4(), *b = NULL, *c = NULL, *d = NULL;
    if (!a) return;
    tp_importance *ia = tiny_scores(a), *ib = NULL;
    tp_prune_plan *p1 = NULL, *p2 = NULL, *pc = NULL, *bad = NULL;
    /* round 1: A (hidden 32, ffn 40, 4/2 heads, 4 layers) -> B drops layer 1 and narrows every axis */
    tp_prune_shape s1 = {24, 32, 2, 2, 0};
    int drop1[] = {1}, drop2[] = {0};
    TT_CHECK(ia && tp_prune_plan_make(&a->cfg, ia, -1, &s1, TP_DEPTH_AUTO, drop1, 1, &p1) == TP_OK, "p1: %s",
             tp_errmsg());
    if (p1) TT_CHECK(tp_prune_apply(a, p1, &b) == TP_OK, "apply p1: %s", tp_errmsg());
    /* round 2: B -> C by B's own scores, dropping B's layer 0 (A's layer 0) */
    if (b) ib = tiny_scores(b);
    tp_prune_shape s2 = {16, 24, 1, 1, 0};
    if (ib) TT_CHECK(tp_prune_plan_make(&b->cfg, ib, TP_AGG_MEAN * 3 + TP_AGG_L2, &s2, TP_DEPTH_AUTO, drop2, 1, &p2) ==
                     TP_OK, "p2: %s", tp_errmsg());
    if (p2) TT_CHECK(tp_prune_apply(b, p2, &c) == TP_OK, "apply p2: %s", tp_errmsg());
    if (c) {
        TT_CHECK(tp_prune_plan_compose(p1, p2, &pc) == TP_OK, "compose: %s", tp_errmsg());
        if (pc) {
            TT_CHECK(pc->src.n_layers == 4 && pc->src.d_model == 32 && pc->cfg.n_layers == 2 && pc->cfg.d_model == 16 &&
                     pc->cfg.d_ff == 24 && pc->cfg.n_heads == 1 && pc->cfg.n_kv_heads == 1 &&
                     pc->layers[0] == 2 && pc->layers[1] == 3, "composed sizes and layers (kept %d,%d)", pc->layers[0],
                     pc->layers[1]);
            TT_CHECK(pc->src_params == p1->src_params && pc->n_params == p2->n_params && pc->agg_pair == p2->agg_pair,
                     "params and ranking");
            TT_CHECK(tp_prune_apply(a, pc, &d) == TP_OK, "apply the composed plan: %s", tp_errmsg());
            TT_CHECK(d && d->n_params == c->n_params && !memcmp(d->params, c->params, c->n_params * sizeof(float)),
                     "A pruned by compose(p1, p2) is bit-identical to A pruned by p1 then p2");
        }
        /* p1 does not prune the model p2 made */
        TT_CHECK(tp_prune_plan_compose(p2, p1, &bad) != TP_OK && !bad &&
                 strstr(tp_errmsg(), "the second does not prune the model the first made") &&
                 strstr(tp_errmsg(), "num_hidden_layers = 4"), "mismatched plans: %s", tp_errmsg());
    }
    tp_prune_plan_free(p1);
    tp_prune_plan_free(p2);
    tp_prune_plan_free(pc);
    tp_importance_free(ia);
    tp_importance_free(ib);
    tp_model_free(a);
    tp_model_free(b);
    tp_model_free(c);
    tp_model_free(d);
}

TT_TEST(prune_layer_list_parse) {
    int *v = NULL, n = 0;
    TT_CHECK(tp_layer_list_parse("3,7,20-22", &v, &n) == TP_OK && n == 5 && v[0] == 3 && v[1] == 7 && v[2] == 20 &&
             v[4] == 22, "3,7,20-22");
    free(v);
    static const char *bad[] = {"", "5-3", "a", "1,,2", "-1", "2-", "3;4"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        TT_CHECK(tp_layer_list_parse(bad[i], &v, &n) == TP_ERR_ARG && !v && strstr(tp_errmsg(), "expects a list"),
                 "'%s' rejected: %s", bad[i], tp_errmsg());
}

/* ---------------------------------------------------------------------------------------- */

/* The two jobs as library calls on the default model: a small importance run, then prune jobs
 * (explicit sizes, a budget search, a replay), their files and their field-named errors. */
TT_TEST(prune_and_importance_jobs) {
    const char *mp = tt_model_path();
    tp_model *m = tt_model();
    if (!mp || !m) { tt_skip("default model not found (run make deps)"); return; }
    char *calib = tt_path(tt_tmp_dir(), "jobs_calib.txt"), *sp = tt_path(tt_tmp_dir(), "jobs_scores.json");
    char *ij = tt_path(tt_tmp_dir(), "jobs_importance.json"), *pp = tt_path(tt_tmp_dir(), "jobs_plan.json");
    char *pj = tt_path(tt_tmp_dir(), "jobs_prune.json"), *pp2 = tt_path(tt_tmp_dir(), "jobs_plan2.json");
    char *pp3 = tt_path(tt_tmp_dir(), "jobs_plan3.json");
    static const char text[] = "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins "
                               "with a single step. Knowledge is power, and time is money; all that glitters is not "
                               "gold. Actions speak louder than words, and the pen is mightier than the sword. ";
    FILE *f = fopen(calib, "wb");
    for (int i = 0; f && i < 8; i++) fputs(text, f);
    if (f) fclose(f);
    tp_importance_job ij_job;
    tp_importance_job_default(&ij_job);
    TT_CHECK(ij_job.samples == 1024 && ij_job.seq_len == 512 && ij_job.batch == 4 && ij_job.depth_samples == 64 &&
             ij_job.block == 0, "importance defaults");
    ij_job.model = mp;
    ij_job.loaded = m;
    ij_job.data = calib;
    ij_job.out = sp;
    ij_job.samples = 3;
    ij_job.seq_len = 16;
    ij_job.depth_samples = 64; /* clamped to the 3 samples */
    ij_job.block = 2;
    ij_job.json_path = ij;
    tp_importance *imp = NULL;
    TT_CHECK(tp_importance_job_run(&ij_job, &imp) == TP_OK, "importance job: %s", tp_errmsg());
    if (!imp) goto out;
    TT_CHECK(imp->n_samples == 3 && imp->seq_len == 16 && imp->depth_samples == 3 && imp->block_loss &&
             !strcmp(imp->model, mp) && !strcmp(imp->data, calib), "importance result");
    tp_importance *back = NULL;
    TT_CHECK(tp_importance_load(sp, &back) == TP_OK && back->n_samples == 3, "score file: %s", tp_errmsg());
    tp_importance_free(back);
    cJSON *js = tt_read_json(ij);
    TT_CHECK(js && cJSON_GetArraySize(cJSON_GetObjectItem(js, "layers")) == m->cfg.n_layers &&
             cJSON_GetArraySize(cJSON_GetObjectItem(js, "blocks")) == m->cfg.n_layers - 1 &&
             !strcmp(cJSON_GetObjectItem(js, "scores")->valuestring, sp), "importance json_path");
    cJSON_Delete(js);
    /* errors name the job's fields */
    tp_importance_job e = ij_job;
    e.block = 0;
    e.block_metric = "winogrande";
    TT_CHECK(tp_importance_job_run(&e, NULL) == TP_ERR_ARG && strstr(tp_errmsg(), "block_metric"), "%s", tp_errmsg());
    e = ij_job;
    e.block = m->cfg.n_layers;
    TT_CHECK(tp_importance_job_run(&e, NULL) == TP_ERR_ARG && strstr(tp_errmsg(), "block 30 must be below"), "%s",
             tp_errmsg());
    e = ij_job;
    e.seq_len = 1;
    TT_CHECK(tp_importance_job_run(&e, NULL) == TP_ERR_ARG && strstr(tp_errmsg(), "seq_len"), "%s", tp_errmsg());

    /* explicit sizes and a layer list; only the plan is written */
    tp_prune_job pj_job;
    tp_prune_job_default(&pj_job);
    TT_CHECK(pj_job.dtype == NULL && pj_job.gguf_type == NULL && pj_job.tolerance == 0.05 &&
             pj_job.max_candidates == 12 && pj_job.eval_samples == 16, "prune defaults (dtypes: the source's)");
    pj_job.model = mp;
    pj_job.scores = sp;
    pj_job.hidden = 448;
    pj_job.ffn = 768;
    pj_job.heads = 6;
    pj_job.kv_heads = 3;
    pj_job.drop_layers = "10-11,20";
    pj_job.agg = "mean,l2";
    pj_job.plan_out = pp;
    pj_job.json_path = pj;
    tp_prune_job_result r;
    TT_CHECK(tp_prune_job_run(&pj_job, &r) == TP_OK, "prune job: %s", tp_errmsg());
    if (r.plan) {
        TT_CHECK(r.pruned.d_model == 448 && r.pruned.d_ff == 768 && r.pruned.n_kv_heads == 3 && r.pruned.n_heads == 6 &&
                 r.pruned.n_layers == 27 && r.src.n_layers == 30 && !strcmp(r.plan_path, pp) && !r.replayed &&
                 r.n_candidates == 0 && !strcmp(tp_prune_job_result_depth(&r), "list") &&
                 r.plan->agg_pair == TP_AGG_MEAN * 3 + TP_AGG_L2, "prune result");
        js = tt_read_json(pj);
        TT_CHECK(js && cJSON_GetObjectItem(cJSON_GetObjectItem(js, "pruned"), "num_hidden_layers")->valueint == 27 &&
                 !strcmp(cJSON_GetObjectItem(js, "plan")->valuestring, pp) && !cJSON_GetObjectItem(js, "out") &&
                 !strcmp(cJSON_GetObjectItem(js, "depth_rule")->valuestring, "list"), "prune json_path");
        cJSON_Delete(js);
    }
    tp_prune_job_result_free(&r);
    /* a replay writes the same plan */
    tp_prune_job rp;
    tp_prune_job_default(&rp);
    rp.model = mp;
    rp.plan = pp;
    rp.plan_out = pp2;
    TT_CHECK(tp_prune_job_run(&rp, &r) == TP_OK && r.replayed && !strcmp(tp_prune_job_result_depth(&r), "plan"),
             "replay: %s", tp_errmsg());
    tp_prune_job_result_free(&r);
    TT_CHECK(tt_sh("cmp -s '%s' '%s'", pp, pp2) == 0, "the replayed plan file is the same");
    /* a small budget search */
    tp_prune_job bs;
    tp_prune_job_default(&bs);
    bs.model = mp;
    bs.scores = sp;
    bs.target_params = 90000000;
    bs.layers = 30;
    bs.max_candidates = 2;
    bs.eval_samples = 1;
    bs.plan_out = pp3;
    TT_CHECK(tp_prune_job_run(&bs, &r) == TP_OK, "search job: %s", tp_errmsg());
    if (r.plan) {
        TT_CHECK(r.n_candidates == 2 && r.n_qualifying >= 2 && r.eval_samples == 1 && r.eval_seq_len == 16 &&
                 !strcmp(r.eval_data, calib) && r.candidates[0].shape.d_model == r.pruned.d_model &&
                 r.candidates[0].n_params == r.plan->n_params && isfinite(r.candidates[0].loss) &&
                 r.candidates[0].loss <= r.candidates[1].loss, "search result");
    }
    tp_prune_job_result_free(&r);
    /* errors name the job's fields */
    tp_prune_job e2 = bs;
    e2.drop_layers = "3";
    TT_CHECK(tp_prune_job_run(&e2, &r) == TP_ERR_ARG && !r.plan && strstr(tp_errmsg(), "target_params") &&
             strstr(tp_errmsg(), "drop_layers"), "%s", tp_errmsg());
    e2 = bs;
    e2.plan_out = NULL;
    TT_CHECK(tp_prune_job_run(&e2, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "out (or plan_out)"), "%s", tp_errmsg());
    e2 = pj_job;
    e2.drop_layers = "5-3";
    TT_CHECK(tp_prune_job_run(&e2, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "drop_layers expects a list"), "%s",
             tp_errmsg());
    e2 = pj_job;
    e2.dtype = "q4";
    TT_CHECK(tp_prune_job_run(&e2, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "dtype"), "%s", tp_errmsg());
    tp_prune_job_result_free(&r);
out:
    tp_importance_free(imp);
    free(calib); free(sp); free(ij); free(pp); free(pj); free(pp2); free(pp3);
}

/* ---------------------------------------------------------------------------------------- */

TT_TEST(prune_cli) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char a[4096], *out;
    TT_CHECK(tt_taper("prune --help", &out) == 0 && strstr(out, "usage: taper prune"), "--help");
    free(out);
    static const struct { const char *args, *expect; } usage[] = {
        {"prune m.gguf --scores s.json --ffn 0 -o x", "--ffn"},
        {"prune m.gguf --scores s.json --heads two -o x", "--heads"},
        {"prune m.gguf --scores s.json --drop-layers 5-3 -o x", "--drop-layers"},
        {"prune m.gguf --scores s.json --target-params 90Q -o x", "--target-params"},
        {"prune m.gguf --scores s.json --agg l2 -o x", "--agg"},
        {"prune m.gguf --scores s.json --depth-metric random -o x", "--depth-metric"},
        {"prune m.gguf --ffn 1024 -o x", "--scores"},
        {"prune m.gguf --scores s.json --ffn 1024", "-o OUT"},
        {"prune m.gguf --plan p.json --ffn 1024 -o x", "--plan"},
        {"prune m.gguf --scores s.json --dtype q4 -o x", "--dtype"},
        {"prune m.gguf --scores s.json --ffn 1024 --per-layer --per-layer-rule fast --gguf x.gguf", "--per-layer-rule"},
        {"prune m.gguf --scores s.json --ffn 1024 --per-layer-heads -o x", "--per-layer"},
    };
    for (size_t i = 0; i < sizeof usage / sizeof usage[0]; i++) {
        int rc = tt_taper(usage[i].args, &out);
        TT_CHECK(rc == 2 && strstr(out, usage[i].expect), "'%s' -> 2 naming %s (got %d: %s)", usage[i].args,
                 usage[i].expect, rc, out);
        free(out);
    }
    TT_CHECK(tt_taper("prune m.gguf --scores s.json --ffn 1024 --per-layer -o x", &out) == 2 &&
             strstr(out, "--gguf FILE and no -o"), "--per-layer with -o -> 2 (an HF folder cannot hold it): %s", out);
    free(out);
    TT_CHECK(tt_taper("prune m.gguf --ffn 1024 --per-layer --gguf x.gguf", &out) == 2 && strstr(out, "--scores"),
             "--per-layer without --scores -> 2: %s", out);
    free(out);
    const char *mp = tt_model_path();
    tp_model *m = tt_model();
    if (!mp || !m) return;
    tp_importance *imp = scores(m);
    if (!imp) return;
    char *sp = tt_path(tt_tmp_dir(), "prune_cli_scores.json"), *od = tt_path(tt_tmp_dir(), "prune_cli_out");
    char *js = tt_path(tt_tmp_dir(), "prune_cli.json"), *pp = tt_path(od, "prune_plan.json");
    char *od2 = tt_path(tt_tmp_dir(), "prune_cli_replay");
    TT_CHECK(tp_importance_save(imp, sp) == TP_OK, "save scores");
    snprintf(a, sizeof a, "prune %s --scores %s --heads 12 -o %s", mp, sp, od);
    /* the library names tp_prune_job's fields; the command shows its flags (whole words only) */
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "--heads 12: the model has only 9 (num_attention_heads)"),
             "impossible --heads -> 1 naming it: %s", out);
    free(out);
    snprintf(a, sizeof a, "prune %s --scores %s --heads 8 --kv-heads 2 -o %s", mp, sp, od);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "--heads 8 with --kv-heads 2 makes GQA groups of 4") &&
             !strstr(out, "kv_heads"), "groups too large -> 1 naming both flags: %s", out);
    free(out);
    snprintf(a, sizeof a, "prune %s --scores %s --drop-layers 3,40 -o %s", mp, sp, od);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "--drop-layers: layer 40 does not exist"), "layer 40 -> 1: %s", out);
    free(out);
    snprintf(a, sizeof a, "prune %s --scores %s --target-params 1M --data x -o %s", mp, sp, od);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "--target-params 1000000: no shape") &&
             strstr(out, "--layers >= 15") && strstr(out, "the closest is --hidden ") && strstr(out, ", --kv-heads ") &&
             !strstr(out, "_"),
             "impossible budget -> 1: %s", out);
    free(out);
    snprintf(a, sizeof a, "prune %s --scores %s --hidden 512 --ffn 1024 --heads 6 --kv-heads 3 --drop-layers 12-17 "
             "--agg mean,l2 -o %s --json=%s", mp, sp, od, js);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "prune_plan.json") && strstr(out, "batch=mean,seq=l2"), "prune: %s", out);
    free(out);
    char *text = NULL;
    cJSON *j = tp_read_file(js, &text, NULL) == TP_OK ? cJSON_Parse(text) : NULL;
    const cJSON *pr = cJSON_GetObjectItem(j, "pruned");
    TT_CHECK(pr && cJSON_GetObjectItem(pr, "hidden_size")->valueint == 512 &&
             cJSON_GetObjectItem(pr, "num_hidden_layers")->valueint == 24 &&
             cJSON_GetArraySize(cJSON_GetObjectItem(j, "layers_kept")) == 24, "--json");
    cJSON_Delete(j);
    free(text);
    snprintf(a, sizeof a, "prune %s --plan %s -o %s", mp, pp, od2);
    TT_CHECK(tt_taper(a, &out) == 0, "replay: %s", out);
    free(out);
    tp_model *x = NULL, *y = NULL;
    TT_CHECK(tp_model_load(od, &x) == TP_OK && tp_model_load(od2, &y) == TP_OK, "both load: %s", tp_errmsg());
    TT_CHECK(x && y && x->n_params == y->n_params && !memcmp(x->params, y->params, x->n_params * 4) &&
             x->cfg.n_heads == 6 && x->cfg.n_kv_heads == 3, "replayed plan gives the same model");
    tp_model_free(x);
    tp_model_free(y);
    rm_rf(od);
    rm_rf(od2);
    free(sp); free(od); free(js); free(pp); free(od2);
}
