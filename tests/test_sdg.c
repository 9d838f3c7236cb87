/* Synthetic data generation (src/train/sdg.c): batched sampling equals one-at-a-time generation
 * (tp_generate) token for token, per-sample streams make the output independent of which batch a
 * sample lands in, EOS ends a sample, and bad settings are refused. */
#include <stdlib.h>
#include <string.h>

#include "taper/generate.h"
#include "taper/sdg.h"
#include "tt.h"

typedef struct {
    int32_t ids[16][64];
    size_t n[16];
    size_t n_prompt[16];
    int count;
} collected;

static tp_status collect(void *user, size_t index, const int32_t *prompt, size_t n_prompt, const int32_t *gen,
                         size_t n_gen) {
    collected *c = user;
    (void)prompt;
    if (index != (size_t)c->count || index >= 16 || n_gen > 64) return tp_fail(TP_ERR_ARG, "unexpected sample");
    memcpy(c->ids[index], gen, n_gen * sizeof *gen);
    c->n[index] = n_gen;
    c->n_prompt[index] = n_prompt;
    c->count++;
    return TP_OK;
}

static tp_model *tiny(void) {
    char *p = tt_path(tt_fixtures_dir(), "tiny/llama3");
    tp_model *m = NULL;
    if (tp_model_load_hf(p, &m) != TP_OK) TT_CHECK(0, "%s: %s", p, tp_errmsg());
    free(p);
    return m;
}

TT_TEST(sdg_batched_equals_single) {
    tp_model *m = tiny();
    if (!m) return;
    int32_t eos = m->cfg.eos_id;
    m->cfg.eos_id = -1; /* run every sample to max_tokens */
    tp_sdg_cfg c = {6, 20, 4, {0.0f, 1.0f, 0}, 3, NULL, 0, 0};
    collected a = {0}, b = {0};
    TT_CHECK(tp_sdg_run(m, &c, collect, &a, NULL) == TP_OK, "greedy run: %s", tp_errmsg());
    int32_t bos = 1;
    int32_t *g = NULL;
    size_t ng = 0;
    TT_CHECK(tp_generate(m, &bos, 1, 20, -1, &c.sampler, NULL, NULL, NULL, &g, &ng) == TP_OK, "tp_generate");
    int same = a.count == 6;
    for (int i = 0; i < a.count; i++) same &= a.n[i] == ng && !memcmp(a.ids[i], g, ng * sizeof *g) && a.n_prompt[i] == 1;
    TT_CHECK(same, "greedy: every batched sample equals tp_generate from BOS (%zu tokens)", ng);
    free(g);
    /* sampling: batch 4 vs batch 1 give the same samples (each has its own stream) */
    c.sampler.temperature = 1.0f;
    c.sampler.top_p = 0.9f;
    memset(&a, 0, sizeof a);
    TT_CHECK(tp_sdg_run(m, &c, collect, &a, NULL) == TP_OK, "sampled run");
    c.batch = 1;
    TT_CHECK(tp_sdg_run(m, &c, collect, &b, NULL) == TP_OK, "sampled run, batch 1");
    same = a.count == 6 && b.count == 6;
    int differ = 0;
    for (int i = 0; i < 6; i++) {
        same &= a.n[i] == b.n[i] && !memcmp(a.ids[i], b.ids[i], a.n[i] * sizeof(int32_t));
        if (i && memcmp(a.ids[i], a.ids[0], a.n[0] * sizeof(int32_t))) differ = 1;
    }
    TT_CHECK(same, "sampled: batch 4 and batch 1 give identical samples");
    TT_CHECK(differ, "sampled: samples differ from each other");
    /* with EOS on: a sample ends at its first EOS or at max_tokens */
    m->cfg.eos_id = eos;
    c.batch = 3;
    c.max_tokens = 40;
    memset(&a, 0, sizeof a);
    TT_CHECK(tp_sdg_run(m, &c, collect, &a, NULL) == TP_OK, "sampled run with EOS");
    for (int i = 0; i < a.count; i++) {
        size_t n = a.n[i];
        int ended = n > 0 && a.ids[i][n - 1] == eos;
        TT_CHECK(ended || n == 40, "sample %d: %zu tokens, ends at EOS or at max", i, n);
        for (size_t k = 0; k + 1 < n; k++) TT_CHECK(a.ids[i][k] != eos, "sample %d: EOS only at the end", i);
    }
    tp_model_free(m);
}

TT_TEST(sdg_refuses_bad_settings) {
    tp_model *m = tiny();
    if (!m) return;
    collected a = {0};
    tp_sdg_cfg c = {0, 20, 4, {0.0f, 1.0f, 0}, 3, NULL, 0, 0};
    TT_CHECK(tp_sdg_run(m, &c, collect, &a, NULL) == TP_ERR_ARG, "0 samples refused");
    c.samples = 2;
    const char *p[1] = {"hello"};
    c.prompts = p;
    c.n_prompts = 1;
    TT_CHECK(tp_sdg_run(m, &c, collect, &a, NULL) == TP_ERR_ARG && strstr(tp_errmsg(), "tokenizer"),
             "prompts without a tokenizer: %s", tp_errmsg());
    tp_model_free(m);
}
