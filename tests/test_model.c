/* Model tests: kernels vs naive twins, forward logits / greedy generation / perplexity vs
 * transformers (fixtures from tests/ref/model_ref.py), KV cache and batching consistency,
 * and lossless GGUF <-> HF conversion round trips. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels.h"
#include "model/model_internal.h"
#include "taper/eval.h"
#include "taper/generate.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/util.h"
#include "tt.h"


static cJSON *load_json_fixture(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "model/%s", name);
    return tt_fixture_json(rel);
}

/* NULL when absent: the full_*.f32 files exist only after make test-ref */
static float *load_f32(const char *name, size_t n) {
    char rel[256];
    snprintf(rel, sizeof rel, "model/%s", name);
    return tt_fixture_f32(rel, n, 0);
}

static int32_t *json_ids(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc(*n * sizeof *ids);
    for (size_t i = 0; i < *n; i++) ids[i] = (int32_t)cJSON_GetArrayItem(arr, (int)i)->valuedouble;
    return ids;
}

static void fill_random(float *x, size_t n, tp_rng *r, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * tp_rng_normal(r);
}

TT_TEST(kernel_matmul_matches_naive) {
    tp_rng r;
    tp_rng_seed(&r, 1);
    size_t N = 37, in = 129, out = 71;
    float *X = malloc(N * in * 4), *W = malloc(out * in * 4), *b = malloc(out * 4);
    float *Y = malloc((N * out + 8) * 4), *Yr = malloc(N * out * 4);
    fill_random(X, N * in, &r, 1);
    fill_random(W, out * in, &r, 0.1f);
    fill_random(b, out, &r, 1);
    for (int g = 0; g < 8; g++) Y[N * out + g] = 12345.0f; /* guard */
    tp_matmul_wt(X, W, b, Y, N, in, out);
    tp_matmul_wt_ref(X, W, b, Yr, N, in, out);
    double worst = 0;
    for (size_t i = 0; i < N * out; i++) {
        double d = fabs(Y[i] - Yr[i]) / (1e-4 + fabs(Yr[i]));
        if (d > worst) worst = d;
    }
    TT_CHECK(worst < 1e-4, "matmul max rel diff %g", worst);
    for (int g = 0; g < 8; g++) TT_CHECK(Y[N * out + g] == 12345.0f, "guard %d overwritten", g);
    free(X); free(W); free(b); free(Y); free(Yr);
}

TT_TEST(kernel_attention_matches_naive) {
    tp_rng r;
    tp_rng_seed(&r, 2);
    int T = 13, p0 = 5, hd = 16, nh = 3;
    size_t Tk = (size_t)(p0 + T), ld = (size_t)nh * hd;
    float *Q = malloc((size_t)T * ld * 4), *K = malloc(Tk * ld * 4), *V = malloc(Tk * ld * 4);
    float *O = calloc((size_t)T * ld + 4, 4), *Or = calloc((size_t)T * ld, 4), *S = malloc((size_t)T * Tk * 4);
    fill_random(Q, (size_t)T * ld, &r, 1);
    fill_random(K, Tk * ld, &r, 1);
    fill_random(V, Tk * ld, &r, 1);
    for (int g = 0; g < 4; g++) O[(size_t)T * ld + g] = -7.0f;
    for (int h = 0; h < nh; h++) {
        tp_attention_head(Q + h * hd, ld, K + h * hd, V + h * hd, ld, O + h * hd, ld, T, p0, 0, hd, 0.25f, S);
        tp_attention_head_ref(Q + h * hd, ld, K + h * hd, V + h * hd, ld, Or + h * hd, ld, T, p0, 0, hd, 0.25f);
    }
    double worst = 0;
    for (size_t i = 0; i < (size_t)T * ld; i++) {
        double d = fabs(O[i] - Or[i]);
        if (d > worst) worst = d;
    }
    TT_CHECK(worst < 1e-5, "attention max abs diff %g", worst);
    for (int g = 0; g < 4; g++) TT_CHECK(O[(size_t)T * ld + g] == -7.0f, "guard %d overwritten", g);
    free(Q); free(K); free(V); free(O); free(Or); free(S);
}

TT_TEST(rope_row_permutation_round_trip) {
    int nh = 3, hd = 8;
    size_t cols = 5, rows = (size_t)nh * hd;
    float *a = malloc(rows * cols * 4), *b = malloc(rows * cols * 4), *c = malloc(rows * cols * 4);
    for (size_t i = 0; i < rows * cols; i++) a[i] = (float)i;
    tp_rope_rows_permute(a, b, nh, hd, cols);
    /* HF row h*hd + t*hd/2 + j lands at GGUF row h*hd + 2j + t: HF row 1 (t=0, j=1) -> GGUF row 2 */
    TT_CHECK(b[2 * cols] == a[1 * cols], "permuted row 2 holds HF row 1");
    TT_CHECK(b[1 * cols] == a[4 * cols], "permuted row 1 holds HF row hd/2");
    tp_rope_rows_unpermute(b, c, nh, hd, cols);
    TT_CHECK(memcmp(a, c, rows * cols * 4) == 0, "unpermute(permute(x)) == x");
    free(a); free(b); free(c);
}

/* What tests/ref/model_ref.py writes: 3 prompts of 100 + 59 + 59 = 218 tokens (prompts.json's
 * total_tokens), 4 full rows per prompt (rows_P.f32), 64 greedy tokens (greedy.json) and the 592
 * chunks of 512 tokens of WikiText-2's test set (ppl.json). The loops assert they compared all. */
#define REF_PROMPTS 3
#define REF_PROMPT_TOKENS 218
#define REF_ROWS_PER_PROMPT 4
#define REF_GREEDY_TOKENS 64
#define REF_PPL_CHUNKS 592
#define REF_PPL_FAST_CHUNKS 24 /* chunks scored in `make test`; all of them under TAPER_LONG=1 */

/* Compares taper's logits for the fixture prompts with transformers'. */
TT_TEST(forward_logits_match_transformers) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    cJSON *j = load_json_fixture("prompts.json");
    if (!j) { TT_CHECK(0, "fixture model/prompts.json missing"); return; }
    size_t V = (size_t)m->cfg.vocab, total = 0, argmax_same = 0;
    double worst_row = 0, worst_top = 0, worst_lse = 0, worst_full = 0;
    int full_checked = 0, n_prompts = 0;
    size_t rows_compared = 0;
    const cJSON *ps = cJSON_GetObjectItem(j, "prompts");
    const cJSON *tt = cJSON_GetObjectItem(j, "total_tokens");
    TT_CHECK(cJSON_IsNumber(tt) && tt->valueint == REF_PROMPT_TOKENS, "prompts.json: total_tokens %d (expected %d)",
             cJSON_IsNumber(tt) ? tt->valueint : -1, REF_PROMPT_TOKENS);
    for (int p = 0; p < cJSON_GetArraySize(ps); p++) {
        n_prompts++;
        const cJSON *e = cJSON_GetArrayItem(ps, p);
        size_t n;
        int32_t *ids = json_ids(cJSON_GetObjectItem(e, "ids"), &n);
        float *lg = malloc(n * V * 4);
        TT_CHECK(tp_forward(m, ids, 1, (int)n, NULL, lg, 0) == TP_OK, "forward: %s", tp_errmsg());
        const cJSON *am = cJSON_GetObjectItem(e, "argmax"), *ti = cJSON_GetObjectItem(e, "top_ids"),
                    *tv = cJSON_GetObjectItem(e, "top_vals"), *lse = cJSON_GetObjectItem(e, "logsumexp");
        for (size_t t = 0; t < n; t++) {
            const float *row = lg + t * V;
            size_t a = 0;
            double s = 0, mx = row[0];
            for (size_t v = 1; v < V; v++) if (row[v] > row[a]) a = v;
            for (size_t v = 0; v < V; v++) if (row[v] > mx) mx = row[v];
            for (size_t v = 0; v < V; v++) s += exp(row[v] - mx);
            total++;
            argmax_same += (int)a == cJSON_GetArrayItem(am, (int)t)->valueint;
            double dl = fabs(mx + log(s) - cJSON_GetArrayItem(lse, (int)t)->valuedouble);
            if (dl > worst_lse) worst_lse = dl;
            const cJSON *tir = cJSON_GetArrayItem(ti, (int)t), *tvr = cJSON_GetArrayItem(tv, (int)t);
            for (int k = 0; k < 16; k++) {
                double d = fabs(row[cJSON_GetArrayItem(tir, k)->valueint] - cJSON_GetArrayItem(tvr, k)->valuedouble);
                if (d > worst_top) worst_top = d;
            }
        }
        const cJSON *rp = cJSON_GetObjectItem(e, "row_positions");
        size_t nr = (size_t)cJSON_GetArraySize(rp);
        char name[32];
        snprintf(name, sizeof name, "rows_%d.f32", p);
        float *rows = load_f32(name, nr * V);
        TT_CHECK(rows != NULL, "fixture %s missing or wrong size", name);
        for (size_t k = 0; rows && k < nr; k++) {
            rows_compared++;
            size_t t = (size_t)cJSON_GetArrayItem(rp, (int)k)->valueint;
            for (size_t v = 0; v < V; v++) {
                double d = fabs(lg[t * V + v] - rows[k * V + v]);
                if (d > worst_row) worst_row = d;
            }
        }
        snprintf(name, sizeof name, "full_%d.f32", p);
        float *full = load_f32(name, n * V);
        if (full) {
            full_checked++;
            for (size_t i = 0; i < n * V; i++) {
                double d = fabs(lg[i] - full[i]);
                if (d > worst_full) worst_full = d;
            }
        }
        free(full); free(rows); free(lg); free(ids);
    }
    cJSON_Delete(j);
    tt_note("%zu positions: argmax equal at %zu; max |dlogit| full rows %.3g, top-16 %.3g, logsumexp %.3g%s",
            total, argmax_same, worst_row, worst_top, worst_lse,
            full_checked ? "" : " (every row: only under make test-ref)");
    if (full_checked) tt_note("every logit of %d prompts: max |dlogit| %.3g", full_checked, worst_full);
    TT_CHECK(n_prompts == REF_PROMPTS, "compared %d prompts (expected %d)", n_prompts, REF_PROMPTS);
    TT_CHECK(total == REF_PROMPT_TOKENS, "compared %zu positions (expected %d)", total, REF_PROMPT_TOKENS);
    TT_CHECK(rows_compared == REF_PROMPTS * REF_ROWS_PER_PROMPT, "compared %zu full rows (expected %d)", rows_compared,
             REF_PROMPTS * REF_ROWS_PER_PROMPT);
    TT_CHECK(argmax_same == total, "argmax identical everywhere (%zu of %zu)", argmax_same, total);
    TT_CHECK(worst_row <= 1e-3, "max |dlogit| on full rows %g <= 1e-3", worst_row);
    TT_CHECK(worst_top <= 1e-3, "max |dlogit| on top-16 %g <= 1e-3", worst_top);
    TT_CHECK(worst_lse <= 1e-3, "max |dlogsumexp| %g <= 1e-3", worst_lse);
    TT_CHECK(worst_full <= 1e-3, "max |dlogit| on every row %g <= 1e-3", worst_full);
}

TT_TEST(forward_kv_cache_and_batch_agree_with_full) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    size_t V = (size_t)m->cfg.vocab;
    int T = 24;
    int32_t ids[48];
    for (int i = 0; i < 48; i++) ids[i] = 100 + 37 * i % 5000;
    float *full = malloc(2 * (size_t)T * V * 4), *one = malloc((size_t)T * V * 4), *step = malloc(2 * V * 4);
    TT_CHECK(tp_forward(m, ids, 2, T, NULL, full, 0) == TP_OK, "batched forward");
    TT_CHECK(tp_forward(m, ids + T, 1, T, NULL, one, 0) == TP_OK, "single forward");
    double worst_b = 0, worst_c = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) {
        double d = fabs(full[(size_t)T * V + i] - one[i]);
        if (d > worst_b) worst_b = d;
    }
    tp_kvcache *kv = NULL;
    TT_CHECK(tp_kvcache_alloc(&m->cfg, 2, T, &kv) == TP_OK, "kv alloc");
    /* prefill 10 tokens, then one at a time: the last-position logits must match the full pass */
    int32_t pre[20];
    for (int b = 0; b < 2; b++) memcpy(pre + b * 10, ids + b * T, 10 * sizeof(int32_t));
    TT_CHECK(tp_forward(m, pre, 2, 10, kv, step, 1) == TP_OK, "prefill");
    for (int t = 10; t < T; t++) {
        int32_t nx[2] = {ids[t], ids[T + t]};
        TT_CHECK(tp_forward(m, nx, 2, 1, kv, step, 1) == TP_OK, "decode step");
        for (int b = 0; b < 2; b++)
            for (size_t v = 0; v < V; v++) {
                double d = fabs(step[(size_t)b * V + v] - full[((size_t)b * T + (size_t)t) * V + v]);
                if (d > worst_c) worst_c = d;
            }
    }
    TT_CHECK(tp_forward(m, ids, 2, 1, kv, step, 1) != TP_OK, "a full KV cache refuses more tokens");
    tp_kvcache_free(kv);
    tt_note("batch-vs-single max |d| %.3g, kv-cache-vs-full max |d| %.3g", worst_b, worst_c);
    TT_CHECK(worst_b <= 1e-4, "batch of 2 equals single sequence (%g)", worst_b);
    TT_CHECK(worst_c <= 1e-4, "incremental decoding equals full forward (%g)", worst_c);
    int32_t bad = m->cfg.vocab;
    TT_CHECK(tp_forward(m, &bad, 1, 1, NULL, step, 1) == TP_ERR_ARG, "out-of-vocabulary id rejected");
    free(full); free(one); free(step);
}

TT_TEST(greedy_generation_matches_transformers) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    cJSON *j = load_json_fixture("greedy.json");
    if (!j) { TT_CHECK(0, "fixture model/greedy.json missing"); return; }
    size_t np, ng;
    int32_t *prompt = json_ids(cJSON_GetObjectItem(j, "prompt_ids"), &np);
    int32_t *want = json_ids(cJSON_GetObjectItem(j, "generated"), &ng);
    tp_sampler greedy = {0, 1, 0};
    tp_rng r;
    tp_rng_seed(&r, 0);
    int32_t *got = NULL;
    size_t n = 0;
    TT_CHECK(tp_generate(m, prompt, np, (int)ng, -1, &greedy, &r, NULL, NULL, &got, &n) == TP_OK, "generate: %s",
             tp_errmsg());
    size_t same = 0;
    while (same < n && same < ng && got[same] == want[same]) same++;
    tt_note("greedy: %zu of %zu tokens identical to transformers", same, ng);
    TT_CHECK(ng == REF_GREEDY_TOKENS, "greedy.json holds %zu tokens (expected %d)", ng, REF_GREEDY_TOKENS);
    TT_CHECK(n == ng && same == ng, "all %zu greedy tokens equal (first difference at %zu)", ng, same);
    free(got); free(prompt); free(want);
    cJSON_Delete(j);
}

TT_TEST(wikitext2_perplexity_matches_transformers) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    char *path = tt_path(tt_data_dir(), "wikitext2/wiki.test.raw"), *text = NULL;
    size_t len;
    if (tp_read_file(path, &text, &len) != TP_OK) {
        tt_skip("%s not found (set TAPER_DATA)", path);
        free(path);
        return;
    }
    cJSON *j = load_json_fixture("ppl.json");
    if (!j) { TT_CHECK(0, "fixture model/ppl.json missing"); free(text); free(path); return; }
    int32_t *ids = NULL;
    size_t n = 0;
    TT_CHECK(tp_tok_encode(m->tok, text, len, 0, &ids, &n) == TP_OK, "tokenize: %s", tp_errmsg());
    TT_CHECK((double)n == cJSON_GetObjectItem(j, "tokens")->valuedouble, "token count %zu equals transformers'", n);
    int ctx = cJSON_GetObjectItem(j, "ctx")->valueint;
    const cJSON *cn = cJSON_GetObjectItem(j, "chunks_nll"), *ln = cJSON_GetObjectItem(j, "llamacpp_nll");
    size_t all = (size_t)cJSON_GetArraySize(cn);
    const char *lg = getenv("TAPER_LONG");
    int long_mode = lg && *lg == '1';
    size_t use = long_mode ? all : REF_PPL_FAST_CHUNKS; /* whole file only in make test-long */
    if (use > all) use = all;
    TT_CHECK(all == REF_PPL_CHUNKS && cJSON_GetArraySize(ln) == REF_PPL_CHUNKS &&
                 cJSON_GetObjectItem(j, "chunks")->valueint == REF_PPL_CHUNKS,
             "ppl.json: %zu chunks_nll, %d llamacpp_nll (expected %d)", all, cJSON_GetArraySize(ln), REF_PPL_CHUNKS);
    tp_ppl_result r[2];
    TT_CHECK(tp_perplexity(m, ids, n, ctx, -1, use, NULL, r) == TP_OK, "perplexity: %s", tp_errmsg());
    double ref_c = 0, ref_l = 0;
    for (size_t c = 0; c < use; c++) {
        ref_c += cJSON_GetArrayItem(cn, (int)c)->valuedouble;
        ref_l += cJSON_GetArrayItem(ln, (int)c)->valuedouble;
    }
    double ppl_c = exp(ref_c / (double)r[0].n_scored), ppl_l = exp(ref_l / (double)r[1].n_scored);
    tt_note("%zu of %zu chunks (ctx %d): chunks ppl taper %.5f vs transformers %.5f; llama.cpp ppl taper %.5f vs "
            "%.5f; %.0f tok/s",
            use, all, ctx, r[0].ppl, ppl_c, r[1].ppl, ppl_l, r[0].tokens_per_s);
    size_t want = long_mode ? REF_PPL_CHUNKS : REF_PPL_FAST_CHUNKS;
    TT_CHECK(use == want && r[0].n_chunks == want && r[1].n_chunks == want,
             "compared %zu chunks, scored %zu and %zu (expected %zu%s)", use, r[0].n_chunks, r[1].n_chunks, want,
             long_mode ? ", TAPER_LONG" : "");
    TT_NEAR(r[0].ppl, ppl_c, 0, 1e-3);
    TT_NEAR(r[1].ppl, ppl_l, 0, 1e-3);
    free(ids); free(text); free(path);
    cJSON_Delete(j);
}

static int params_equal(const tp_model *a, const tp_model *b) {
    return a->n_params == b->n_params && memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0 &&
           memcmp(&a->cfg, &b->cfg, sizeof a->cfg) == 0;
}

static const char *export_dir(void) {
    const char *e = getenv("TAPER_EXPORT_DIR");
    return e && *e ? e : tt_tmp_dir();
}

TT_TEST(convert_gguf_hf_gguf_round_trip_is_lossless) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    char *hf = tt_path(export_dir(), "smollm2-hf"), *gg = tt_path(export_dir(), "smollm2-f32.gguf");
    char *hf2 = tt_path(export_dir(), "smollm2-hf2");
    tp_model *a = NULL, *b = NULL, *c = NULL;
    TT_CHECK(tp_model_save_hf(m, hf, "F32") == TP_OK, "save hf: %s", tp_errmsg());
    TT_CHECK(tp_model_load_hf(hf, &a) == TP_OK, "load hf: %s", tp_errmsg());
    TT_CHECK(a && params_equal(m, a), "GGUF -> HF keeps every parameter and the config bit-exact");
    if (a) TT_CHECK(tp_model_save_gguf(a, gg, TP_GGML_F32) == TP_OK, "save gguf: %s", tp_errmsg());
    TT_CHECK(tp_model_load_gguf(gg, &b) == TP_OK, "load gguf: %s", tp_errmsg());
    TT_CHECK(b && params_equal(m, b), "GGUF -> HF -> GGUF (F32) is lossless");
    if (b) TT_CHECK(tp_model_save_hf(b, hf2, "F32") == TP_OK, "save hf again");
    TT_CHECK(tp_model_load_hf(hf2, &c) == TP_OK, "reload hf2");
    TT_CHECK(c && params_equal(m, c), "... -> HF again is still lossless");
    if (a && b) {
        const char *t = "Hello world, this is a round trip.";
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        TT_CHECK(tp_tok_encode(a->tok, t, strlen(t), 0, &x, &nx) == TP_OK &&
                     tp_tok_encode(b->tok, t, strlen(t), 0, &y, &ny) == TP_OK && nx == ny &&
                     memcmp(x, y, nx * 4) == 0,
                 "tokenizer survives both conversions");
        TT_CHECK(a->cfg.bos_id == m->cfg.bos_id && b->cfg.eos_id == m->cfg.eos_id, "bos/eos ids kept");
        TT_CHECK(b->chat_template && m->chat_template && !strcmp(b->chat_template, m->chat_template),
                 "chat template kept");
        free(x); free(y);
    }
    tp_model_free(a); tp_model_free(b); tp_model_free(c);
    free(hf); free(gg); free(hf2);
}

TT_TEST(convert_to_reduced_precision_stays_close) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    static const struct { const char *name; int gguf; const char *hf; double tol; } kinds[] = {
        {"bf16.gguf", TP_GGML_BF16, NULL, 4e-3}, {"q8_0.gguf", TP_GGML_Q8_0, NULL, 1e-2},
        {"f16.gguf", TP_GGML_F16, NULL, 1e-3}, {"hf-bf16", -1, "BF16", 4e-3}, {"hf-f16", -1, "F16", 1e-3}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        char *p = tt_path(tt_tmp_dir(), kinds[k].name);
        tp_status s = kinds[k].hf ? tp_model_save_hf(m, p, kinds[k].hf) : tp_model_save_gguf(m, p, kinds[k].gguf);
        TT_CHECK(s == TP_OK, "save %s: %s", kinds[k].name, tp_errmsg());
        tp_model *r = NULL;
        TT_CHECK(tp_model_load(p, &r) == TP_OK, "load %s: %s", kinds[k].name, tp_errmsg());
        if (r) {
            /* relative L2 error of all weights: bf16 keeps 8 significant bits (~2^-9), f16 11, Q8_0 ~7 */
            double num = 0, den = 0;
            for (size_t i = 0; i < m->n_params; i++) {
                double d = (double)r->params[i] - m->params[i];
                num += d * d;
                den += (double)m->params[i] * m->params[i];
            }
            double rel = sqrt(num / den);
            TT_CHECK(rel < kinds[k].tol && rel > 0, "%s: relative L2 weight error %g in (0, %g)", kinds[k].name, rel,
                     kinds[k].tol);
            tt_note("%s: relative L2 weight error %.3g", kinds[k].name, rel);
        }
        tp_model_free(r);
        free(p);
    }
}


typedef struct {
    int calls[TP_HOOK_COUNT];
    float *layer_out_prev; /* copy of the last LAYER_OUT */
    size_t n;
    int chain_ok, widths_ok;
    int qd, ff, d;
} hook_state;

static void record_hook(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    hook_state *h = user;
    (void)layer;
    h->calls[p]++;
    size_t n = (size_t)B * T * (size_t)width;
    int want = p == TP_HOOK_ATTN_OUT ? h->qd : (p >= TP_HOOK_MLP_GATE && p <= TP_HOOK_MLP_ACT) ? h->ff : h->d;
    if (width != want) h->widths_ok = 0;
    if (p == TP_HOOK_LAYER_IN && h->layer_out_prev && memcmp(h->layer_out_prev, x, n * 4) != 0) h->chain_ok = 0;
    if (p == TP_HOOK_LAYER_OUT) {
        free(h->layer_out_prev);
        h->layer_out_prev = malloc(n * 4);
        memcpy(h->layer_out_prev, x, n * 4);
    }
}

TT_TEST(forward_hooks_and_layer_skipping) {
    tp_model *m = tt_model();
    if (!m) { tt_skip("default model not found (run make deps)"); return; }
    size_t V = (size_t)m->cfg.vocab;
    int T = 9, L = m->cfg.n_layers;
    int32_t ids[9] = {504, 3458, 28, 314, 253, 1345, 30, 2030, 17};
    float *a = malloc((size_t)T * V * 4), *b = malloc((size_t)T * V * 4);
    hook_state h = {{0}, NULL, 0, 1, 1, m->cfg.n_heads * m->cfg.head_dim, m->cfg.d_ff, m->cfg.d_model};
    tp_forward_opts o = {record_hook, &h, NULL};
    TT_CHECK(tp_forward(m, ids, 1, T, NULL, a, 0) == TP_OK, "plain forward");
    TT_CHECK(tp_forward_ex(m, ids, 1, T, NULL, b, 0, &o) == TP_OK, "forward with hooks");
    TT_CHECK(memcmp(a, b, (size_t)T * V * 4) == 0, "hooks do not change the logits");
    for (int p = 0; p < TP_HOOK_FINAL_NORM; p++) TT_CHECK(h.calls[p] == L, "hook %d called once per layer (%d)", p, h.calls[p]);
    TT_CHECK(h.calls[TP_HOOK_FINAL_NORM] == 1, "final norm hook once");
    TT_CHECK(h.chain_ok, "LAYER_OUT of layer l is LAYER_IN of layer l+1");
    TT_CHECK(h.widths_ok, "hook widths");
    free(h.layer_out_prev);
    /* skipping layers 3 and 7 equals a model whose layer list lacks them */
    unsigned char *skip = calloc((size_t)L, 1);
    skip[3] = skip[7] = 1;
    tp_forward_opts o2 = {NULL, NULL, skip};
    TT_CHECK(tp_forward_ex(m, ids, 1, T, NULL, a, 0, &o2) == TP_OK, "forward with skipped layers");
    tp_layer *saved = m->layers;
    tp_layer *fewer = malloc((size_t)(L - 2) * sizeof *fewer);
    for (int l = 0, k = 0; l < L; l++) if (!skip[l]) fewer[k++] = saved[l];
    m->layers = fewer;
    m->cfg.n_layers = L - 2;
    TT_CHECK(tp_forward(m, ids, 1, T, NULL, b, 0) == TP_OK, "forward of the shallower model");
    m->layers = saved;
    m->cfg.n_layers = L;
    TT_CHECK(memcmp(a, b, (size_t)T * V * 4) == 0, "skip_layer equals removing the layers");
    free(fewer); free(skip); free(a); free(b);
}

/* Architecture paths SmolLM2 does not take (llama3 and linear RoPE scaling past the original
 * context, explicit head_dim, Qwen2 q/k/v biases, Mistral with and without its sliding window,
 * Qwen3 q/k norms and upper-layer window, Gemma 3, tied/untied), on tiny random models saved by
 * transformers (tests/ref/tiny_ref.py): taper's logits must equal transformers'. The logits are
 * also compared through the KV cache (prefix of 50, then 23 + 23 tokens), so decoding sees the
 * same window. */
TT_TEST(forward_tiny_architectures_match_transformers) {
    static const char *names[] = {"llama3", "llama_linear", "qwen2", "mistral", "mistral_window", "qwen3", "gemma3"};
    char *tiny = tt_path(tt_fixtures_dir(), "tiny");
    const int T = 96;
    int n_models = 0;
    for (int k = 0; k < (int)(sizeof names / sizeof names[0]); k++) {
        char *dir = tt_path(tiny, names[k]);
        tp_model *m = NULL;
        if (!TT_CHECK(tp_model_load_hf(dir, &m) == TP_OK, "%s: %s", names[k], tp_errmsg())) {
            free(dir);
            continue;
        }
        size_t V = (size_t)m->cfg.vocab;
        char name[64];
        snprintf(name, sizeof name, "%s.logits.f32", names[k]);
        char *p = tt_path(tiny, name), *data = NULL;
        size_t len = 0;
        TT_CHECK(tp_read_file(p, &data, &len) == TP_OK && len == (size_t)T * V * 4, "%s fixture", name);
        int32_t ids[96];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 7) % (int)V);
        float *lg = malloc((size_t)T * V * 4);
        TT_CHECK(tp_forward(m, ids, 1, T, NULL, lg, 0) == TP_OK, "forward %s", names[k]);
        double worst = 0;
        for (size_t i = 0; data && len == (size_t)T * V * 4 && i < (size_t)T * V; i++) {
            float ref;
            memcpy(&ref, data + 4 * i, 4);
            double d = fabs(lg[i] - ref);
            if (d > worst) worst = d;
        }
        /* incremental: 50 tokens, then two steps of 23 through the cache */
        tp_kvcache *kv = NULL;
        float *lg2 = malloc((size_t)T * V * 4);
        double worst_kv = 0;
        TT_CHECK(tp_kvcache_alloc(&m->cfg, 1, T, &kv) == TP_OK, "kv cache");
        TT_CHECK(tp_forward(m, ids, 1, 50, kv, lg2, 0) == TP_OK && tp_forward(m, ids + 50, 1, 23, kv, lg2 + 50 * V, 0) == TP_OK &&
                     tp_forward(m, ids + 73, 1, 23, kv, lg2 + 73 * V, 0) == TP_OK,
                 "cached forward %s", names[k]);
        for (size_t i = 0; i < (size_t)T * V; i++) worst_kv = fmax(worst_kv, fabs(lg2[i] - lg[i]));
        tt_note("%s (%s rope, %s, %s, window %d): max |dlogit| %.3g over %d positions; cached vs full %.3g", names[k],
                m->cfg.rope_scaling == TP_ROPE_LLAMA3 ? "llama3" : m->cfg.rope_scaling == TP_ROPE_LINEAR ? "linear" : "plain",
                m->cfg.attn_bias ? "qkv bias" : "no bias", m->cfg.tie_embeddings ? "tied" : "untied",
                m->cfg.sliding_window, worst, T, worst_kv);
        TT_CHECK(worst <= 1e-4, "%s: max |dlogit| %g <= 1e-4", names[k], worst);
        TT_CHECK(worst_kv <= 1e-5, "%s: cached forward differs by %g", names[k], worst_kv);
        tp_kvcache_free(kv);
        free(lg); free(lg2); free(data); free(p); free(dir);
        tp_model_free(m);
        n_models++;
    }
    TT_CHECK(n_models == 7, "%d models compared", n_models);
    free(tiny);
}

/* tp_model_tensors lists every parameter once under its HF name (sizes add up to n_params, the
 * views tile the parameter block without overlap), and tp_model_tensor finds each by name. */
TT_TEST(model_tensor_table) {
    const char *dirs[] = {"distill/teacher", "distill/narrow", "grad/qwen2", "grad/llama_tied"};
    for (int k = 0; k < 4; k++) {
        char *p = tt_path(tt_fixtures_dir(), dirs[k]);
        tp_model *m = NULL;
        if (!TT_CHECK(tp_model_load_hf(p, &m) == TP_OK, "loading %s: %s", p, tp_errmsg())) {
            free(p);
            continue;
        }
        int n = tp_model_tensors(m, NULL, 0);
        tp_tensor_ref *r = calloc((size_t)n, sizeof *r);
        TT_CHECK(r && tp_model_tensors(m, r, n) == n && n == 2 + (9 + 3 * !!m->cfg.attn_bias) * m->cfg.n_layers + !m->cfg.tie_embeddings,
                 "%s: %d tensors", dirs[k], n);
        size_t total = 0, bad = 0;
        for (int i = 0; r && i < n; i++) {
            size_t sz = r[i].rows ? r[i].rows * r[i].cols : r[i].cols, got = 0;
            total += sz;
            bad += tp_model_tensor(m, r[i].name, &got) != r[i].data || got != sz;
            bad += r[i].data < m->params || r[i].data + sz > m->params + m->n_params;
        }
        TT_CHECK(total == m->n_params && bad == 0, "%s: sizes add up to %zu of %zu; %zu lookups wrong", dirs[k], total,
                 m->n_params, bad);
        size_t got = 1;
        TT_CHECK(!tp_model_tensor(m, "model.layers.99.mlp.up_proj.weight", &got) && got == 0 &&
                     !tp_model_tensor(m, "model.layers.0.mlp.nothing", &got),
                 "unknown names give NULL");
        free(r);
        tp_model_free(m);
        free(p);
    }
}

/* GGUF export and reload of each family (tiny random models of tests/ref/tiny_ref.py): the file
 * holds what llama.cpp computes, and taper reads it back to the same logits. Gemma 3's norms go
 * out as 1 + w and come back as w; a llama3 RoPE goes out as rope_freqs.weight and comes back as
 * the same llama3 settings; a Llama-family window (which llama.cpp does not apply) goes out as a
 * context cut to the window, so the positions compared are those inside it. */
TT_TEST(model_gguf_roundtrip_families) {
    static const char *names[] = {"llama3", "qwen2", "qwen3", "gemma3", "mistral_window"};
    char *tiny = tt_path(tt_fixtures_dir(), "tiny");
    const int T = 96;
    int n_ok = 0;
    for (int k = 0; k < (int)(sizeof names / sizeof names[0]); k++) {
        char *dir = tt_path(tiny, names[k]);
        tp_model *m = NULL, *r = NULL;
        if (!TT_CHECK(tp_model_load_hf(dir, &m) == TP_OK, "%s: %s", names[k], tp_errmsg())) {
            free(dir);
            continue;
        }
        if (m->cfg.arch == TP_ARCH_GEMMA3) {
            /* llama.cpp scales Gemma 3's scores by 1/sqrt(head_dim): the fixture's 24 cannot go out */
            char *gp = tt_path(tt_tmp_dir(), "refused.gguf");
            TT_CHECK(tp_model_save_gguf(m, gp, TP_GGML_F32) == TP_ERR_UNSUPPORTED &&
                         strstr(tp_errmsg(), "query_pre_attn_scalar"),
                     "gemma3 with query_pre_attn_scalar != head_dim refused: %s", tp_errmsg());
            free(gp);
            m->cfg.attn_scale_base = (float)m->cfg.head_dim;
        }
        size_t V = (size_t)m->cfg.vocab;
        int32_t ids[96];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 7) % (int)V);
        float *a = malloc((size_t)T * V * 4), *b = malloc((size_t)T * V * 4);
        char fname[64];
        snprintf(fname, sizeof fname, "rt_%s.gguf", names[k]);
        char *path = tt_path(tt_tmp_dir(), fname);
        int ok = TT_CHECK(tp_forward(m, ids, 1, T, NULL, a, 0) == TP_OK, "forward") &&
                 TT_CHECK(tp_model_save_gguf(m, path, TP_GGML_F32) == TP_OK, "%s: save: %s", names[k], tp_errmsg()) &&
                 TT_CHECK(tp_model_load_gguf(path, &r) == TP_OK, "%s: reload: %s", names[k], tp_errmsg()) &&
                 TT_CHECK(tp_forward(r, ids, 1, T, NULL, b, 0) == TP_OK, "forward reloaded");
        if (ok) {
            const tp_config *c0 = &m->cfg, *c1 = &r->cfg;
            int keep_window = c0->arch == TP_ARCH_GEMMA3;
            int n_cmp = T;
            if (!keep_window && c0->sliding_window) n_cmp = c0->sliding_window < T ? c0->sliding_window : T;
            TT_CHECK(c1->arch == (c0->arch == TP_ARCH_MISTRAL ? TP_ARCH_LLAMA : c0->arch) && c1->qk_norm == c0->qk_norm &&
                         c1->sandwich_norm == c0->sandwich_norm && c1->rope_scaling == c0->rope_scaling &&
                         c1->rope_factor == c0->rope_factor && c1->rope_orig_max_pos == c0->rope_orig_max_pos &&
                         c1->rope_low_freq == c0->rope_low_freq && c1->rope_high_freq == c0->rope_high_freq &&
                         c1->sliding_window == (keep_window ? c0->sliding_window : 0) &&
                         (keep_window ? memcmp(c1->layer_sliding, c0->layer_sliding, sizeof c0->layer_sliding) == 0 : 1) &&
                         c1->max_pos == (keep_window || !c0->sliding_window ? c0->max_pos : c0->sliding_window),
                     "%s: config back: arch %d window %d ctx %d rope %d/%g/%d", names[k], c1->arch, c1->sliding_window,
                     c1->max_pos, c1->rope_scaling, c1->rope_factor, c1->rope_orig_max_pos);
            double worst = 0, scale = 0;
            for (size_t i = 0; i < (size_t)n_cmp * V; i++) {
                worst = fmax(worst, fabs(a[i] - b[i]));
                scale = fmax(scale, fabs(a[i]));
            }
            tt_note("%s: GGUF F32 round trip, %d positions: max |dlogit| %.3g (max |logit| %.3g)", names[k], n_cmp, worst,
                    scale);
            TT_CHECK(worst <= 1e-5 * fmax(1.0, scale), "%s: logits after the round trip differ by %g", names[k], worst);
            n_ok++;
        }
        tp_model_free(r);
        tp_model_free(m);
        free(a); free(b); free(path); free(dir);
    }
    TT_CHECK(n_ok == 5, "%d families round-tripped", n_ok);
    free(tiny);
}
