/* Streamed models (weights read from the file a layer at a time): every layer, embedding row,
 * lm_head row and the final norm read by a streamed model equal the loaded model's bit for bit
 * (HF safetensors of every tiny family, SmolLM2's Q4_1 GGUF, Gemma 3's Q4_K_M GGUF); the streamed
 * importance pass (layer-major, one read per layer) gives exactly the loaded model's scores and
 * layer-removal losses, the streamed forward its logits; the pruned HF folder written tensor by
 * tensor has the bytes of apply + save; decoding, exports and apply refuse a streamed model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/compress.h"
#include "taper/model.h"
#include "taper/gguf.h"
#include "taper/rng.h"
#include "taper/safetensors.h"
#include "taper/util.h"
#include "tt.h"

/* The models both paths are compared on: the tiny HF fixtures, then the GGUFs when present. */
static const char *const tiny_names[] = {"llama3", "qwen2", "mistral_window", "qwen3", "gemma3"};
#define N_TINY (int)(sizeof tiny_names / sizeof tiny_names[0])

static char *model_path(int i) {
    if (i < N_TINY) {
        char *dir = tt_path(tt_fixtures_dir(), "tiny");
        char *p = tt_path(dir, tiny_names[i]);
        free(dir);
        return p;
    }
    if (i == N_TINY) return tt_model_path() ? strdup(tt_model_path()) : NULL;
    return tt_gemma3_path();
}
#define N_MODELS (N_TINY + 2)

/* Model i loaded (*a) and streamed (*b); 0 (both NULL, a failed check recorded) when either fails. */
static int open_both(const char *p, tp_model **a, tp_model **b) {
    *a = *b = NULL;
    if (TT_CHECK(tp_model_load(p, a) == TP_OK && tp_model_open_streamed(p, b) == TP_OK, "%s: %s", p, tp_errmsg()))
        return 1;
    tp_model_free(*a);
    tp_model_free(*b);
    *a = *b = NULL;
    return 0;
}

static int same_floats(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

TT_TEST(stream_weights_match_loaded) {
    int compared = 0;
    for (int i = 0; i < N_MODELS; i++) {
        char *p = model_path(i);
        if (!p) {
            tt_note("model %d not present: not compared", i);
            continue;
        }
        tp_model *a = NULL, *b = NULL;
        if (!open_both(p, &a, &b)) {
            free(p);
            continue;
        }
        const tp_config *c = &a->cfg;
        size_t d = (size_t)c->d_model, V = (size_t)c->vocab;
        TT_CHECK(tp_model_is_streamed(b) && !tp_model_is_streamed(a), "%s: kinds", p);
        TT_CHECK(memcmp(&a->cfg, &b->cfg, sizeof a->cfg) == 0, "%s: same config", p);
        TT_CHECK((!a->tok && !b->tok) || (a->tok && b->tok && tp_tok_vocab_size(a->tok) == tp_tok_vocab_size(b->tok)),
                 "%s: tokenizer", p);
        TT_CHECK((!a->chat_template && !b->chat_template) ||
                 (a->chat_template && b->chat_template && !strcmp(a->chat_template, b->chat_template)),
                 "%s: chat template", p);
        TT_CHECK(same_floats(a->final_norm, b->final_norm, d), "%s: final norm", p);
        /* the streamed model's memory: one layer and the final norm */
        TT_CHECK(b->n_params < a->n_params / (size_t)c->n_layers + d + 1, "%s: streamed buffer %zu floats", p,
                 b->n_params);
        int n = tp_model_tensors(a, NULL, 0);
        tp_tensor_ref *ra = malloc((size_t)n * sizeof *ra), *rb = malloc((size_t)n * sizeof *rb);
        tp_model_tensors(a, ra, n);
        TT_CHECK(tp_model_tensors(b, rb, n) == n, "%s: the same tensor table", p);
        /* layers read in a scrambled order: each read replaces the previous one */
        for (int k = 0; k < c->n_layers; k++) {
            int l = (k * 7 + 3) % c->n_layers;
            if (c->n_layers % 7 == 0) l = c->n_layers - 1 - k;
            if (!TT_CHECK(tp_model_layer_ready(b, l) == TP_OK, "%s layer %d: %s", p, l, tp_errmsg())) break;
            char prefix[48];
            snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
            int seen = 0;
            for (int t = 0; t < n; t++) {
                if (strncmp(ra[t].name, prefix, strlen(prefix))) continue;
                size_t ne = ra[t].rows ? ra[t].rows * ra[t].cols : ra[t].cols;
                seen++;
                TT_CHECK(!strcmp(ra[t].name, rb[t].name) && same_floats(ra[t].data, rb[t].data, ne), "%s: %s differs",
                         p, ra[t].name);
            }
            TT_CHECK(seen >= 9, "%s: layer %d has %d tensors", p, l, seen);
        }
        size_t rows[] = {0, 1, V / 2, V - 1};
        float *row = malloc(d * sizeof(float));
        for (int h = 0; h < 2; h++)
            for (size_t r = 0; r < 4; r++) {
                TT_CHECK(tp_model_rows(b, h, rows[r], 1, row) == TP_OK, "%s: row", p);
                TT_CHECK(same_floats(row, (h ? a->lm_head : a->tok_emb) + rows[r] * d, d), "%s: %s row %zu", p,
                         h ? "lm_head" : "embedding", rows[r]);
            }
        TT_CHECK(tp_model_rows(b, 0, V - 1, 2, row) != TP_OK && strstr(tp_errmsg(), "outside the vocabulary"),
                 "%s: a row past the vocabulary is refused: %s", p, tp_errmsg());
        TT_CHECK(tp_model_stream_head(b) == TP_OK, "%s: head", p);
        float *ha = malloc(2 * d * sizeof(float)), *hb = malloc(2 * V * sizeof(float)),
              *hc = malloc(2 * V * sizeof(float)), *x = malloc(2 * d * sizeof(float));
        for (size_t j = 0; j < 2 * d; j++) x[j] = (float)sin((double)j * 0.37) * 3.0f;
        TT_CHECK(tp_forward_final(a, x, 2, ha, hb) == TP_OK && tp_forward_final(b, x, 2, ha, hc) == TP_OK &&
                 same_floats(hb, hc, 2 * V), "%s: final norm and lm_head give the same logits", p);
        tp_model_stream_head_release(b);
        TT_CHECK(tp_forward_final(b, x, 2, ha, hc) != TP_OK, "%s: logits without the lm_head are refused", p);
        free(ha); free(hb); free(hc); free(x); free(row); free(ra); free(rb);
        compared++;
        tp_model_free(a);
        tp_model_free(b);
        free(p);
    }
    TT_CHECK(compared >= N_TINY, "compared %d models", compared);
}

/* Random calibration ids (every family's tokens are < vocab). */
static int32_t *random_ids(size_t n, int V, uint64_t seed) {
    int32_t *ids = malloc(n * sizeof *ids);
    tp_rng r;
    tp_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) ids[i] = (int32_t)(tp_rng_u64(&r) % (uint64_t)V);
    return ids;
}

static int same_doubles(const double *a, const double *b, size_t n) {
    if (!a || !b) return a == b;
    return memcmp(a, b, n * sizeof(double)) == 0;
}

TT_TEST(stream_importance_is_identical) {
    int compared = 0;
    for (int i = 0; i < N_MODELS; i++) {
        char *p = model_path(i);
        if (!p) continue;
        tp_model *a = NULL, *b = NULL;
        if (!open_both(p, &a, &b)) {
            free(p);
            continue;
        }
        const tp_config *c = &a->cfg;
        int T = i < N_TINY ? 24 : 16;
        size_t n = 7;
        int32_t *ids = random_ids(n * (size_t)T, c->vocab < 4000 ? c->vocab : 4000, 11 + (uint64_t)i);
        tp_importance_opts o;
        tp_importance_opts_default(&o);
        o.batch = 3;        /* 3 + 3 + 1: a partial last batch */
        o.depth_samples = 5;
        o.block_size = c->n_layers > 2 ? 2 : 1;
        tp_importance *x = NULL, *y = NULL;
        TT_CHECK(tp_importance_compute(a, ids, n, T, &o, &x) == TP_OK, "%s loaded: %s", p, tp_errmsg());
        TT_CHECK(tp_importance_compute(b, ids, n, T, &o, &y) == TP_OK, "%s streamed: %s", p, tp_errmsg());
        if (x && y) {
            size_t L = (size_t)c->n_layers, P = TP_AGG_PAIRS;
            TT_CHECK(same_doubles(x->heads, y->heads, P * L * (size_t)c->n_heads), "%s: heads", p);
            TT_CHECK(same_doubles(x->kv_groups, y->kv_groups, P * L * (size_t)c->n_kv_heads), "%s: kv groups", p);
            TT_CHECK(same_doubles(x->neurons, y->neurons, P * L * (size_t)c->d_ff), "%s: neurons", p);
            TT_CHECK(same_doubles(x->channels, y->channels, P * (size_t)c->d_model), "%s: channels", p);
            TT_CHECK(same_doubles(x->block_influence, y->block_influence, L), "%s: block influence", p);
            TT_CHECK(x->base_loss == y->base_loss && isfinite(x->base_loss), "%s: base loss %.17g vs %.17g", p,
                     x->base_loss, y->base_loss);
            TT_CHECK(same_doubles(x->layer_loss, y->layer_loss, L), "%s: layer-removal losses", p);
            TT_CHECK(y->block_loss && same_doubles(x->block_loss, y->block_loss, L - (size_t)o.block_size + 1), "%s: block losses", p);
            TT_CHECK(x->layer_loss[0] != x->layer_loss[L - 1], "%s: the losses are not all one value", p);
            compared++;
        }
        tp_importance_free(x);
        tp_importance_free(y);
        free(ids);
        tp_model_free(a);
        tp_model_free(b);
        free(p);
    }
    TT_CHECK(compared >= N_TINY, "compared %d models", compared);
}

TT_TEST(stream_refuses_whole_model_operations) {
    char *dir = tt_path(tt_fixtures_dir(), "tiny"), *p = tt_path(dir, "llama3");
    tp_model *b = NULL;
    if (!TT_CHECK(tp_model_open_streamed(p, &b) == TP_OK, "%s", tp_errmsg())) goto done;
    int32_t ids[8] = {1, 2, 3, 4, 50, 60, 70, 80};
    size_t V = (size_t)b->cfg.vocab;
    float *logits = malloc(8 * V * sizeof(float)), *ref = malloc(8 * V * sizeof(float));
    tp_model *a = NULL;
    /* a whole forward reads every layer on the way: the loaded model's logits, bit for bit */
    TT_CHECK(tp_model_load(p, &a) == TP_OK && tp_forward(a, ids, 2, 4, NULL, ref, 0) == TP_OK &&
             tp_forward(b, ids, 2, 4, NULL, logits, 0) == TP_OK && same_floats(ref, logits, 8 * V),
             "streamed forward: %s", tp_errmsg());
    TT_CHECK(tp_forward(a, ids, 2, 4, NULL, ref, 1) == TP_OK && tp_forward(b, ids, 2, 4, NULL, logits, 1) == TP_OK &&
             same_floats(ref, logits, 2 * V), "streamed forward, last positions: %s", tp_errmsg());
    tp_kvcache *kv = NULL;
    TT_CHECK(tp_kvcache_alloc(&b->cfg, 1, 8, &kv) == TP_OK &&
             tp_forward(b, ids, 1, 4, kv, logits, 0) != TP_OK && strstr(tp_errmsg(), "streamed"),
             "decoding with a KV cache is refused: %s", tp_errmsg());
    tp_kvcache_free(kv);
    tp_model_free(a);
    free(logits);
    free(ref);
    float *x = calloc(4 * (size_t)b->cfg.d_model, sizeof(float));
    TT_CHECK(tp_forward_layer(b, 0, x, 1, 4, NULL) != TP_OK && strstr(tp_errmsg(), "not the one read"),
             "a layer not read: %s", tp_errmsg());
    TT_CHECK(tp_model_layer_ready(b, 1) == TP_OK && tp_forward_layer(b, 1, x, 1, 4, NULL) == TP_OK, "%s",
             tp_errmsg());
    TT_CHECK(tp_model_layer_ready(b, b->cfg.n_layers) != TP_OK, "a layer past the last");
    free(x);
    char *out = tt_path(tt_tmp_dir(), "stream-refused");
    TT_CHECK(tp_model_save_hf(b, out, "F32") != TP_OK && strstr(tp_errmsg(), "streamed"), "HF export: %s",
             tp_errmsg());
    char *gg = tt_path(tt_tmp_dir(), "stream-refused.gguf");
    TT_CHECK(tp_model_save_gguf(b, gg, 0) != TP_OK && strstr(tp_errmsg(), "streamed"), "GGUF export: %s",
             tp_errmsg());
    free(out);
    free(gg);
    TT_CHECK(!strcmp(tp_model_source_dtype(b), "F32"), "the tiny fixtures are stored in F32: %s",
             tp_model_source_dtype(b));
done:
    tp_model_free(b);
    free(p);
    free(dir);
}

static void rm_dir(const char *d) {
    if (d) tt_sh("rm -rf '%s'", d);
}

/* The pruned HF folder written tensor by tensor from a streamed (and a loaded) model has the bytes
 * of the one tp_prune_apply + tp_model_save_hf write: width and depth cut at once. */
TT_TEST(stream_prune_export_is_identical) {
    int compared = 0;
    for (int i = 0; i <= N_TINY; i++) {
        char *p = model_path(i);
        if (!p) continue;
        tp_model *a = NULL, *b = NULL;
        if (!open_both(p, &a, &b)) {
            free(p);
            continue;
        }
        const tp_config *c = &a->cfg;
        int T = 16;
        size_t n = 4;
        int32_t *ids = random_ids(n * (size_t)T, c->vocab < 4000 ? c->vocab : 4000, 5 + (uint64_t)i);
        tp_importance_opts o;
        tp_importance_opts_default(&o);
        o.depth_samples = 0;
        tp_importance *imp = NULL;
        tp_prune_plan *plan = NULL;
        tp_model *pm = NULL;
        int rep = c->n_heads / c->n_kv_heads;
        tp_prune_shape sh = {c->d_model * 3 / 4 / 8 * 8, c->d_ff / 2, rep > 1 ? c->n_kv_heads * (rep - 1) : 0, 0, 0};
        int drop[1] = {c->n_layers > 2 ? 1 : 0};
        int ok = TT_CHECK(tp_importance_compute(a, ids, n, T, &o, &imp) == TP_OK, "%s: %s", p, tp_errmsg()) &&
                 TT_CHECK(tp_prune_plan_make(c, imp, -1, &sh, TP_DEPTH_LIST, drop, 1, &plan) == TP_OK, "%s plan: %s",
                          p, tp_errmsg()) &&
                 TT_CHECK(tp_prune_apply(a, plan, &pm) == TP_OK, "%s apply: %s", p, tp_errmsg());
        char name[64];
        snprintf(name, sizeof name, "stream-export-%d", i);
        char *da = tt_path(tt_tmp_dir(), name), *db = NULL, *dc = NULL;
        snprintf(name, sizeof name, "stream-export-%d-s", i);
        db = tt_path(tt_tmp_dir(), name);
        snprintf(name, sizeof name, "stream-export-%d-l", i);
        dc = tt_path(tt_tmp_dir(), name);
        const char *dt = i % 2 ? "BF16" : "F32";
        if (ok) {
            pm->tok = a->tok;
            ok = TT_CHECK(tp_model_save_hf(pm, da, dt) == TP_OK, "%s save: %s", p, tp_errmsg());
            pm->tok = NULL;
            tp_progress prog;
            tp_progress_begin(&prog, "export", 0, "layers");
            ok = ok && TT_CHECK(tp_prune_export_hf(b, plan, db, dt, &prog) == TP_OK, "%s streamed export: %s", p,
                                tp_errmsg());
            tp_progress_end(&prog);
            TT_CHECK(prog.done == plan->cfg.n_layers, "%s: progress counted %g of %d layers", p, prog.done,
                     plan->cfg.n_layers);
            ok = ok && TT_CHECK(tp_prune_export_hf(a, plan, dc, dt, NULL) == TP_OK, "%s loaded export: %s", p,
                                tp_errmsg());
        }
        if (ok) {
            const char *files[] = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"};
            for (int f = 0; f < 4; f++) {
                char *fa = tt_path(da, files[f]), *fb = tt_path(db, files[f]), *fc = tt_path(dc, files[f]);
                int present = access(fa, R_OK) == 0;
                TT_CHECK(present || f == 3, "%s: %s written", p, files[f]);
                TT_CHECK(!present || (tt_same_file(fa, fb) && tt_same_file(fa, fc)), "%s: %s differs", p, files[f]);
                free(fa); free(fb); free(fc);
            }
            tp_model *back = NULL;
            TT_CHECK(tp_model_load(db, &back) == TP_OK && back->cfg.n_layers == c->n_layers - 1 &&
                     back->cfg.d_model == sh.d_model, "%s: the streamed export loads: %s", p, tp_errmsg());
            tp_model_free(back);
            compared++;
        }
        rm_dir(da); rm_dir(db); rm_dir(dc);
        free(da); free(db); free(dc);
        tp_model_free(pm);
        tp_prune_plan_free(plan);
        tp_importance_free(imp);
        free(ids);
        tp_model_free(a);
        tp_model_free(b);
        free(p);
    }
    TT_CHECK(compared >= N_TINY, "compared %d models", compared);
}

/* Exports keep the source's dtype unless told otherwise: bf16 in, bf16 out (prune, convert to HF
 * and to GGUF); a quantised GGUF's values are exact only in fp32. */
TT_TEST(exports_default_to_the_source_dtype) {
    if (!tt_bin()) {
        tt_skip("TAPER_BIN is not set");
        return;
    }
    char *dir = tt_path(tt_fixtures_dir(), "tiny"), *src = tt_path(dir, "llama3");
    char *bf = tt_path(tt_tmp_dir(), "src-bf16"), *pr = tt_path(tt_tmp_dir(), "pruned-bf16"),
         *gg = tt_path(tt_tmp_dir(), "src-bf16.gguf"), *q = tt_path(tt_tmp_dir(), "from-q4");
    char a[4096], *out = NULL;
    snprintf(a, sizeof a, "convert %s --to hf %s --dtype bf16", src, bf);
    TT_CHECK(tt_taper(a, &out) == 0, "%s", out);
    free(out);
    snprintf(a, sizeof a, "prune %s --drop-layers 1 -o %s", bf, pr);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "(HF folder, BF16)"), "prune keeps bf16: %s", out);
    free(out);
    snprintf(a, sizeof a, "convert %s --to gguf %s", bf, gg);
    TT_CHECK(tt_taper(a, &out) == 0, "%s", out);
    free(out);
    tp_safetensors *st = NULL;
    TT_CHECK(tp_st_open(pr, &st) == TP_OK && tp_st_find(st, "model.layers.0.mlp.up_proj.weight") &&
             tp_st_find(st, "model.layers.0.mlp.up_proj.weight")->dtype == TP_ST_BF16, "pruned tensors are BF16");
    tp_st_close(st);
    tp_gguf *g = NULL;
    TT_CHECK(tp_gguf_open(gg, &g) == TP_OK && tp_gguf_find_tensor(g, "blk.0.ffn_up.weight") &&
             tp_gguf_find_tensor(g, "blk.0.ffn_up.weight")->type == TP_GGML_BF16, "converted GGUF matrices are BF16");
    tp_gguf_close(g);
    if (tt_model_path()) {
        snprintf(a, sizeof a, "convert %s --to hf %s", tt_model_path(), q);
        TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "(hf, F32,"), "a Q4_1 source converts to F32: %s", out);
        free(out);
    }
    tt_sh("rm -rf '%s' '%s' '%s' '%s'", bf, pr, gg, q);
    free(dir); free(src); free(bf); free(pr); free(gg); free(q);
}
