/* Synthetic data generation (src/train/sdg.c): batched sampling equals one-at-a-time generation
 * (tp_generate) token for token, per-sample streams make the output independent of which batch a
 * sample lands in, EOS ends a sample, bad settings are refused, and the generate-data job writes
 * the shard, samples.jsonl and manifest.json its result describes. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "taper/generate.h"
#include "taper/sdg.h"
#include "taper/tokenizer.h"
#include "taper/train.h"
#include "taper/util.h"
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

static tp_model *tiny(void) { return tt_fixture_model("tiny/llama3"); }

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
    /* continuous batching: slots freed by early EOS take the next samples; the samples are the
     * ones batch 1 makes */
    c.batch = 1;
    memset(&b, 0, sizeof b);
    TT_CHECK(tp_sdg_run(m, &c, collect, &b, NULL) == TP_OK, "sampled run with EOS, batch 1");
    int early = 0;
    same = a.count == 6 && b.count == 6;
    for (int i = 0; i < 6 && same; i++) {
        same &= a.n[i] == b.n[i] && !memcmp(a.ids[i], b.ids[i], a.n[i] * sizeof(int32_t));
        early += a.n[i] < 40;
    }
    TT_CHECK(same && early > 0, "with EOS: batch 3 and batch 1 give identical samples (%d ended early)", early);
    tp_model_free(m);
}

/* Prompts of different lengths in one batch: the positions they share are read in one forward,
 * the rest one at a time; greedy, every sample equals tp_generate on its prompt alone. */
TT_TEST(sdg_prompts_of_different_lengths_equal_single) {
    char *dir = tt_path(tt_fixtures_dir(), "sparsify/model");
    tp_model *m = NULL;
    TT_CHECK(tp_model_load(dir, &m) == TP_OK, "load %s: %s", dir, tp_errmsg());
    free(dir);
    if (!m) return;
    m->cfg.eos_id = -1;
    const char *prompts[] = {"the quick brown fox jumps", "hello", "a b c d e f g h i j", "hello world"};
    tp_sdg_cfg c = {4, 10, 4, {0.0f, 1.0f, 0}, 5, prompts, 4, 0};
    collected a = {0};
    TT_CHECK(tp_sdg_run(m, &c, collect, &a, NULL) == TP_OK, "batched run: %s", tp_errmsg());
    size_t lens[4] = {0, 0, 0, 0};
    int same = a.count == 4;
    for (int i = 0; i < 4 && same; i++) {
        int32_t *ids = NULL, *g = NULL;
        size_t n = 0, ng = 0;
        TT_CHECK(tp_tok_encode(m->tok, prompts[i], strlen(prompts[i]), 1, &ids, &n) == TP_OK, "encode");
        lens[i] = n;
        TT_CHECK(tp_generate(m, ids, n, 10, -1, &c.sampler, NULL, NULL, NULL, &g, &ng) == TP_OK, "tp_generate");
        same &= a.n_prompt[i] == n && a.n[i] == ng && !memcmp(a.ids[i], g, ng * sizeof *g);
        free(ids);
        free(g);
    }
    TT_CHECK(same && lens[1] < lens[0] && lens[1] < lens[2], "greedy: every sample (prompts of %zu, %zu, %zu, %zu tokens) "
             "equals tp_generate on its prompt", lens[0], lens[1], lens[2], lens[3]);
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

/* The generate-data job on a tiny model with a tokenizer: the three files exist, the shard and
 * samples.jsonl agree with the result's counts, and a second run gives the same bytes. */
TT_TEST(sdg_job_writes_shard_jsonl_and_manifest) {
    char *model = tt_path(tt_fixtures_dir(), "sparsify/model"), *dir = tt_path(tt_tmp_dir(), "sdg_job");
    char *prompts = tt_path(tt_tmp_dir(), "sdg_job_prompts.txt");
    tt_sh("rm -rf '%s'", dir);
    static const char P[] = "the quick brown fox\n\n  \nhello world\r\n";
    TT_CHECK(tt_write_text(prompts, P, sizeof P - 1), "write %s", prompts);
    tp_sdg_job j;
    tp_sdg_job_default(&j);
    TT_CHECK(j.samples == 64 && j.max_tokens == 256 && j.batch == 16 && j.temperature == 1.0f && j.top_p == 0.95f &&
                 j.top_k == 0 && j.seed == 0 && !j.prompts && !j.chat,
             "defaults are the CLI's");
    j.teacher = model;
    j.out_dir = dir;
    j.samples = 5;
    j.max_tokens = 12;
    j.batch = 2;
    j.seed = 3;
    j.prompts = prompts;
    tp_sdg_job_result r;
    tp_set_log(NULL, NULL); /* the job's one-line note */
    tp_status s = tp_sdg_job_run(&j, &r);
    TT_CHECK(s == TP_OK, "run: %s", tp_errmsg());
    char *shard = tt_path(dir, TP_SDG_SHARD), *jsonl = tt_path(dir, "samples.jsonl");
    char *man = tt_path(dir, "manifest.json");
    tp_dataset *d = NULL;
    TT_CHECK(tp_dataset_open(shard, &d) == TP_OK, "the shard opens: %s", tp_errmsg());
    TT_CHECK(r.samples == 5 && tp_dataset_docs(d) == 5 && tp_dataset_tokens(d) == r.tokens,
             "one document per sample, %zu tokens as the result says (%zu)", tp_dataset_tokens(d), r.tokens);
    TT_CHECK(r.generated_tokens >= 5 && r.generated_tokens <= 5 * 12 && r.tokens > r.generated_tokens &&
                 r.ended_at_eos <= 5,
             "counts: %zu generated of %zu, %zu at EOS", r.generated_tokens, r.tokens, r.ended_at_eos);
    tp_dataset_close(d);
    /* samples.jsonl: one line per sample, token counts summing to the result's */
    char *text = NULL;
    size_t len = 0, lines = 0, gen = 0, all = 0;
    TT_CHECK(tp_read_file(jsonl, &text, &len) == TP_OK, "read %s", jsonl);
    for (char *save = NULL, *l = text ? strtok_r(text, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(l);
        const cJSON *t = cJSON_GetObjectItem(o, "tokens"), *pt = cJSON_GetObjectItem(o, "prompt_tokens"),
                    *pr = cJSON_GetObjectItem(o, "prompt");
        TT_CHECK(cJSON_IsNumber(t) && cJSON_IsNumber(pt) && cJSON_IsString(pr), "line %zu has its fields", lines);
        if (cJSON_IsNumber(t) && cJSON_IsNumber(pt)) {
            gen += (size_t)t->valuedouble;
            all += (size_t)t->valuedouble + (size_t)pt->valuedouble;
        }
        if (cJSON_IsString(pr))
            TT_CHECK(strstr(pr->valuestring, lines % 2 ? "hello world" : "the quick brown fox"),
                     "sample %zu uses prompt %zu: '%s'", lines, lines % 2, pr->valuestring);
        cJSON_Delete(o);
        lines++;
    }
    free(text);
    TT_CHECK(lines == 5 && gen == r.generated_tokens && all == r.tokens, "samples.jsonl: %zu lines, %zu/%zu tokens",
             lines, gen, all);
    cJSON *m = tt_read_json(man);
    const cJSON *mt = cJSON_GetObjectItem(m, "tokens"), *mg = cJSON_GetObjectItem(m, "generated_tokens"),
                *ms = cJSON_GetObjectItem(m, "samples");
    TT_CHECK(cJSON_IsNumber(mt) && mt->valuedouble == (double)r.tokens && cJSON_IsNumber(mg) &&
                 mg->valuedouble == (double)r.generated_tokens && cJSON_IsNumber(ms) && ms->valuedouble == 5,
             "manifest.json holds the counts");
    cJSON_Delete(m);
    /* same settings, same bytes */
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    tp_read_file(shard, &a, &na);
    tp_sdg_job_result r2;
    TT_CHECK(tp_sdg_job_run(&j, &r2) == TP_OK && tp_read_file(shard, &b, &nb) == TP_OK && na == nb && a &&
                 memcmp(a, b, na) == 0 && r2.tokens == r.tokens,
             "a second run writes the same shard");
    tp_sdg_job_result_free(&r);
    tp_sdg_job_result_free(&r2);
    free(a);
    free(b);
    /* bad settings name the job field; a prompts file without prompts is refused */
    j.batch = 0;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "batch"), "batch 0: %s", tp_errmsg());
    j.batch = 2;
    TT_CHECK(tt_write_text(prompts, "\n \n", 3), "rewrite %s", prompts);
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "no prompts"), "empty prompts: %s",
             tp_errmsg());
    tp_log_default();
    tt_sh("rm -rf '%s'", dir);
    free(shard);
    free(jsonl);
    free(man);
    free(prompts);
    free(dir);
    free(model);
}
