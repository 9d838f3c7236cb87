/* Synthetic data generation (src/train/sdg.c): batched sampling equals one-at-a-time generation
 * (tp_generate) token for token, per-sample streams make the output independent of which batch a
 * sample lands in, EOS ends a sample, bad settings are refused, and the generate-data job writes
 * the shard, samples.jsonl and manifest.json its result describes. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
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
    tp_sdg_cfg c = {6, 20, 4, {0.0f, 1.0f, 0}, 3, NULL, 0, 0, 0, NULL};
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
    tp_sdg_cfg c = {4, 10, 4, {0.0f, 1.0f, 0}, 5, prompts, 4, 0, 0, NULL};
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
    tp_sdg_cfg c = {0, 20, 4, {0.0f, 1.0f, 0}, 3, NULL, 0, 0, 0, NULL};
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

/* ---- parts, resume and dedup ---- */

/* tp_sdg_run with first: samples [first, first+n) are those a run from 0 makes (stream and prompt
 * by index); a raised stop flag ends the run with the samples handed over so far. */
typedef struct {
    size_t first;
    int32_t ids[8][64];
    size_t n[8], n_prompt[8];
    int32_t prompt0[8];
    int count;
    volatile sig_atomic_t *stop;
    int stop_at;
} from_first;

static tp_status collect_from(void *user, size_t index, const int32_t *prompt, size_t n_prompt, const int32_t *gen,
                              size_t n_gen) {
    from_first *c = user;
    size_t i = index - c->first;
    if (index < c->first || i != (size_t)c->count || i >= 8 || n_gen > 64) return tp_fail(TP_ERR_ARG, "unexpected sample");
    memcpy(c->ids[i], gen, n_gen * sizeof *gen);
    c->n[i] = n_gen;
    c->n_prompt[i] = n_prompt;
    c->prompt0[i] = prompt[n_prompt - 1];
    if (++c->count == c->stop_at && c->stop) *c->stop = 2;
    return TP_OK;
}

TT_TEST(sdg_run_from_first_index_and_stop) {
    char *dir = tt_path(tt_fixtures_dir(), "sparsify/model");
    tp_model *m = NULL;
    TT_CHECK(tp_model_load(dir, &m) == TP_OK, "load %s: %s", dir, tp_errmsg());
    free(dir);
    if (!m) return;
    /* 5 prompts, more than the 2 samples of the second run: it encodes prompts 3 and 4 only */
    const char *prompts[] = {"the quick brown fox", "hello", "a b c d e", "hello world", "jumps over the lazy dog"};
    tp_sdg_cfg c = {5, 12, 1, {1.0f, 0.9f, 0}, 11, prompts, 5, 0, 0, NULL};
    from_first a = {0}, b = {0};
    TT_CHECK(tp_sdg_run(m, &c, collect_from, &a, NULL) == TP_OK && a.count == 5, "run of 5: %s", tp_errmsg());
    c.first = b.first = 3;
    c.samples = 2;
    TT_CHECK(tp_sdg_run(m, &c, collect_from, &b, NULL) == TP_OK && b.count == 2, "run of samples 3, 4: %s", tp_errmsg());
    int same = 1;
    for (int i = 0; i < 2; i++)
        same &= b.n[i] == a.n[3 + i] && b.n_prompt[i] == a.n_prompt[3 + i] && b.prompt0[i] == a.prompt0[3 + i] &&
                !memcmp(b.ids[i], a.ids[3 + i], b.n[i] * sizeof(int32_t));
    TT_CHECK(same, "samples 3 and 4 (prompts 3 and 4, streams 3 and 4) equal those of the run from 0");
    /* without prompts, first 2 of 4 with batch 3 */
    c.prompts = NULL;
    c.n_prompts = 0;
    c.first = 0;
    c.samples = 4;
    c.batch = 3;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    TT_CHECK(tp_sdg_run(m, &c, collect_from, &a, NULL) == TP_OK && a.count == 4, "run of 4 from BOS");
    c.first = b.first = 2;
    c.samples = 2;
    TT_CHECK(tp_sdg_run(m, &c, collect_from, &b, NULL) == TP_OK && b.count == 2, "run of samples 2, 3 from BOS");
    same = 1;
    for (int i = 0; i < 2; i++) same &= b.n[i] == a.n[2 + i] && !memcmp(b.ids[i], a.ids[2 + i], b.n[i] * sizeof(int32_t));
    TT_CHECK(same, "from BOS: samples 2 and 3 equal those of the run from 0");
    /* stop raised by the sink after the 2nd sample: no third one arrives, the call succeeds */
    volatile sig_atomic_t stop = 0;
    memset(&a, 0, sizeof a);
    a.stop = &stop;
    a.stop_at = 2;
    c.first = 0;
    c.samples = 6;
    c.batch = 2;
    c.stop = &stop;
    TT_CHECK(tp_sdg_run(m, &c, collect_from, &a, NULL) == TP_OK && a.count == 2 && stop == 2,
             "a stop after the 2nd sample ends the run there (%d samples): %s", a.count, tp_errmsg());
    TT_CHECK(tp_sdg_run(m, &c, collect_from, &a, NULL) == TP_OK && a.count == 2, "a raised flag: nothing runs");
    tp_model_free(m);
}

/* A job over the sparsify fixture (it has a tokenizer) writing into tmp/NAME, removed first. */
static void job_setup(tp_sdg_job *j, const char *name, char **model, char **dir) {
    *model = tt_path(tt_fixtures_dir(), "sparsify/model");
    *dir = tt_path(tt_tmp_dir(), name);
    tt_sh("rm -rf '%s'", *dir);
    tp_sdg_job_default(j);
    j->teacher = *model;
    j->out_dir = *dir;
    j->max_tokens = 12;
    j->top_p = 0.9f;
    j->seed = 5;
}

/* 1 when a and b hold the same files named (NULL-terminated list) with the same bytes */
static int same_files(const char *a, const char *b, const char *const *names) {
    int ok = 1;
    for (int i = 0; names[i]; i++) {
        char *x = tt_path(a, names[i]), *y = tt_path(b, names[i]);
        ok &= tt_same_file(x, y);
        free(x);
        free(y);
    }
    return ok;
}

/* Entries of dir besides . and .. (-1 when it cannot be read). */
static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static size_t count_lines(const char *path) {
    char *t = NULL;
    size_t len = 0, n = 0;
    if (tp_read_file(path, &t, &len) != TP_OK) return (size_t)-1;
    for (size_t i = 0; i < len; i++) n += t[i] == '\n';
    free(t);
    return n;
}

static const char *const PARTS3[] = {"sdg-00000.tpt", "sdg-00001.tpt", "sdg-00002.tpt", "samples.jsonl", NULL};

/* 10 samples in parts of 4 (4, 4, 2): stopped inside part 1 (its lines dropped at once), left with
 * a stale temporary shard, a stale manifest temp, a copied line and a line cut short, then resumed:
 * the same shards and samples.jsonl as the uninterrupted run, for batch 1 and batch 3 (each part
 * is one tp_sdg_run, so equal batches give equal bytes). A stop that falls on the last sample of a
 * part keeps the part. A finished run run again changes nothing. */
TT_TEST(sdg_job_resume_equals_uninterrupted) {
    char *model, *dir_a, *dir_b, *m2, *prompts = tt_path(tt_tmp_dir(), "sdg_resume_prompts.txt");
    TT_CHECK(tt_write_text(prompts, "the quick brown fox\nhello world\na b c d\n", 40), "write prompts");
    tp_set_log(NULL, NULL);
    for (int batch = 1; batch <= 3; batch += 2) {
        tp_sdg_job j, jb;
        job_setup(&j, "sdg_resume_a", &model, &dir_a);
        job_setup(&jb, "sdg_resume_b", &m2, &dir_b);
        j.samples = jb.samples = 10;
        j.part_samples = jb.part_samples = 4;
        j.batch = jb.batch = batch;
        j.prompts = jb.prompts = prompts;
        tp_sdg_job_result ra, rb;
        TT_CHECK(tp_sdg_job_run(&j, &ra) == TP_OK && ra.complete && ra.parts == 3 && ra.samples == 10 && !ra.stopped,
                 "batch %d: uninterrupted run: %s", batch, tp_errmsg());
        char *jsonl_a = tt_path(dir_a, "samples.jsonl"), *jsonl_b = tt_path(dir_b, "samples.jsonl");
        TT_CHECK(count_files(dir_a) == 5 && count_lines(jsonl_a) == 10, "batch %d: 3 parts, samples.jsonl (10 lines), "
                 "manifest.json: %d files", batch, count_files(dir_a));
        /* stopped at sample 6 (inside part 1) or 4 (the end of part 0) */
        jb.stop_after_samples = batch == 1 ? 6 : 4;
        TT_CHECK(tp_sdg_job_run(&jb, &rb) == TP_OK && rb.stopped && !rb.complete && rb.parts == 1 &&
                     rb.samples_done == 4 && rb.samples == 4,
                 "batch %d: stopped after %zu samples: %d part(s), %zu done: %s", batch, jb.stop_after_samples,
                 rb.parts, rb.samples_done, tp_errmsg());
        TT_CHECK(count_files(dir_b) == 3 && count_lines(jsonl_b) == 4, "batch %d: after the stop: part 0, its 4 lines "
                 "(%zu), the manifest", batch, count_lines(jsonl_b));
        char *man_b = tt_path(dir_b, "manifest.json");
        cJSON *mb = tt_read_json(man_b);
        TT_CHECK(mb && cJSON_IsFalse(cJSON_GetObjectItem(mb, "complete")) &&
                     tp_json_number(mb, "parts") == 1 && tp_json_number(mb, "samples_done") == 4,
                 "batch %d: the manifest says 1 part, incomplete", batch);
        cJSON_Delete(mb);
        free(man_b);
        /* leftovers of a crash inside part 1 */
        tt_sh("cd '%s' && echo junk > sdg-00001.tpt.tmp.99999 && echo '{}' > manifest.json.tmp.99999 && "
              "sed -n 5p ../sdg_resume_a/samples.jsonl >> samples.jsonl && printf '{\"index\":5,\"pro' >> samples.jsonl",
              dir_b);
        TT_CHECK(count_files(dir_b) == 5 && count_lines(jsonl_b) == 5, "batch %d: leftovers in place", batch);
        jb.stop_after_samples = 0;
        TT_CHECK(tp_sdg_job_run(&jb, &rb) == TP_OK && rb.complete && !rb.stopped && rb.parts_before == 1 &&
                     rb.parts == 3 && rb.samples == 10 && rb.tokens == ra.tokens &&
                     rb.generated_tokens == ra.generated_tokens && rb.ended_at_eos == ra.ended_at_eos,
                 "batch %d: resumed: parts %d -> %d, %zu tokens (uninterrupted %zu): %s", batch, rb.parts_before,
                 rb.parts, rb.tokens, ra.tokens, tp_errmsg());
        TT_CHECK(same_files(dir_a, dir_b, PARTS3), "batch %d: resumed shards and samples.jsonl equal the "
                 "uninterrupted run's byte for byte", batch);
        TT_CHECK(count_files(dir_b) == 5, "batch %d: the temporary files are gone (%d files)", batch,
                 count_files(dir_b));
        tp_dataset *d = NULL;
        TT_CHECK(tp_dataset_open(dir_b, &d) == TP_OK && tp_dataset_docs(d) == 10 && tp_dataset_tokens(d) == rb.tokens,
                 "batch %d: the directory is one dataset of 10 documents", batch);
        tp_dataset_close(d);
        /* finished: run again, nothing changes */
        char *man_a = tt_path(dir_a, "manifest.json"), *copy = tt_path(tt_tmp_dir(), "sdg_resume_manifest_copy");
        tt_sh("cp '%s' '%s'", man_a, copy);
        tp_sdg_job_result rc;
        TT_CHECK(tp_sdg_job_run(&j, &rc) == TP_OK && rc.complete && rc.parts_before == 3 && rc.parts == 3 &&
                     rc.generated_now == 0 && rc.samples == 10 && rc.tokens == ra.tokens,
                 "batch %d: a finished run run again generates nothing: %s", batch, tp_errmsg());
        TT_CHECK(tt_same_file(man_a, copy) && same_files(dir_a, dir_b, PARTS3), "batch %d: and writes nothing", batch);
        free(man_a);
        free(copy);
        free(jsonl_a);
        free(jsonl_b);
        tt_sh("rm -rf '%s' '%s'", dir_a, dir_b);
        free(model);
        free(m2);
        free(dir_a);
        free(dir_b);
    }
    tp_log_default();
    free(prompts);
}

/* What a resume refuses (naming the setting) and what it accepts: other seed, temperature,
 * prompts, max_tokens, part size or dedup are refused and leave the directory as it was;
 * --restart starts over; a larger samples remakes the short last part and equals a run of that
 * many; fewer samples than a part covers is refused; a different batch is accepted. Foreign
 * directories: another *.tpt, another command's manifest, an older run's manifest, parts without
 * a manifest. */
TT_TEST(sdg_job_resume_refusals_and_restart) {
    char *model, *dir, *m2, *ref, *prompts = tt_path(tt_tmp_dir(), "sdg_refuse_prompts.txt"),
                                  *other = tt_path(tt_tmp_dir(), "sdg_refuse_prompts2.txt");
    TT_CHECK(tt_write_text(prompts, "the quick brown fox\nhello world\n", 32), "write prompts");
    TT_CHECK(tt_write_text(other, "the quick brown fox\nhello there\n", 32), "write prompts");
    tp_set_log(NULL, NULL);
    tp_sdg_job j, jr;
    job_setup(&j, "sdg_refuse", &model, &dir);
    job_setup(&jr, "sdg_refuse_ref", &m2, &ref);
    j.samples = 6;
    j.part_samples = 4;
    j.batch = 2;
    j.prompts = prompts;
    j.stop_after_samples = 4;
    tp_sdg_job_result r;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_OK && r.stopped && r.parts == 1, "a run stopped after part 0: %s",
             tp_errmsg());
    j.stop_after_samples = 0;
    char *jsonl = tt_path(dir, "samples.jsonl"), *p0 = tt_path(dir, TP_SDG_SHARD);
    char *keep = tt_path(tt_tmp_dir(), "sdg_refuse_keep.tpt");
    tt_sh("cp '%s' '%s'", p0, keep);
    static const char *const cases[] = {"seed",    "temperature", "top_p",        "top_k", "max_tokens",
                                        "prompts", "chat",        "part_samples", "dedup"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tp_sdg_job k = j;
        switch (i) {
        case 0: k.seed = 6; break;
        case 1: k.temperature = 0.5f; break;
        case 2: k.top_p = 0.8f; break;
        case 3: k.top_k = 5; break;
        case 4: k.max_tokens = 13; break;
        case 5: k.prompts = other; break;
        case 6: k.chat = 1; break;
        case 7: k.part_samples = 3; break;
        case 8: k.dedup = 1; break;
        }
        char want[64];
        snprintf(want, sizeof want, ": %s was", cases[i]);
        tp_status s = tp_sdg_job_run(&k, &r);
        TT_CHECK(s == TP_ERR_ARG && strstr(tp_errmsg(), want) && strstr(tp_errmsg(), "restart"),
                 "another %s is refused, naming it: %s", cases[i], tp_errmsg());
    }
    TT_CHECK(tt_same_file(p0, keep) && count_lines(jsonl) == 4 && count_files(dir) == 3,
             "the refusals left the directory as it was");
    /* stopped before its first part: nothing to protect, other settings start afresh */
    tp_sdg_job k = j;
    k.out_dir = ref;
    k.stop_after_samples = 2;
    TT_CHECK(tp_sdg_job_run(&k, &r) == TP_OK && r.stopped && r.parts == 0 && count_files(ref) == 2,
             "stopped inside part 0: manifest and empty samples.jsonl (%d files): %s", count_files(ref), tp_errmsg());
    k.stop_after_samples = 0;
    k.seed = 8;
    TT_CHECK(tp_sdg_job_run(&k, &r) == TP_OK && r.complete && r.parts_before == 0, "then another seed runs: %s",
             tp_errmsg());
    tt_sh("rm -rf '%s'", ref);
    /* another batch resumes (with a note); the result is complete */
    j.batch = 3;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_OK && r.complete && r.parts_before == 1 && r.parts == 2 && r.samples == 6,
             "another batch resumes: %s", tp_errmsg());
    TT_CHECK(tt_same_file(p0, keep), "part 0 was not made again");
    /* more samples: the short last part (samples 4, 5) is made again as 4..7, then 8, 9 */
    j.batch = 2;
    j.samples = 10;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_OK && r.complete && r.parts_before == 1 && r.parts == 3 && r.samples == 10,
             "10 samples after 6: parts %d -> %d: %s", r.parts_before, r.parts, tp_errmsg());
    jr.samples = 10;
    jr.part_samples = 4;
    jr.batch = 2;
    jr.prompts = prompts;
    tp_sdg_job_result rr;
    TT_CHECK(tp_sdg_job_run(&jr, &rr) == TP_OK, "reference run of 10: %s", tp_errmsg());
    TT_CHECK(same_files(dir, ref, PARTS3), "grown to 10 samples: the files of a run of 10");
    /* fewer samples than the parts cover: refused, naming samples */
    j.samples = 9;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "samples 9 would cut it"),
             "9 samples would cut part 2: %s", tp_errmsg());
    j.samples = 10;
    /* restart with another seed: the files of a fresh run with that seed */
    j.seed = jr.seed = 9;
    j.restart = 1;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_OK && r.complete && r.parts_before == 0 && r.parts == 3,
             "restart with seed 9: %s", tp_errmsg());
    j.restart = 0;
    tt_sh("rm -rf '%s'", ref);
    TT_CHECK(tp_sdg_job_run(&jr, &rr) == TP_OK && same_files(dir, ref, PARTS3), "restart equals a fresh run");
    TT_CHECK(!tt_same_file(p0, keep), "and its part 0 is not the old one");
    /* another teacher (a norm weight moved): refused, naming the teacher */
    tp_model *t = NULL;
    TT_CHECK(tp_model_load(model, &t) == TP_OK, "load %s", model);
    if (t) {
        TT_CHECK(tp_sdg_job_run_model(&j, t, &r) == TP_OK && r.complete && r.parts_before == 3,
                 "the same teacher, loaded by the caller, finds the run complete: %s", tp_errmsg());
        t->final_norm[0] += 0.5f;
        TT_CHECK(tp_sdg_job_run_model(&j, t, &r) == TP_ERR_ARG && strstr(tp_errmsg(), ": teacher was"),
                 "a changed teacher is refused: %s", tp_errmsg());
        tp_model_free(t);
    }
    /* foreign directories */
    tt_sh("rm -rf '%s' && mkdir -p '%s' && echo x > '%s/shard-00000.tpt'", ref, ref, ref);
    j.out_dir = ref;
    j.restart = 1;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "shard-00000.tpt"),
             "another *.tpt is refused, even with restart: %s", tp_errmsg());
    tt_sh("rm -rf '%s' && mkdir -p '%s' && echo '{\"format\": \"taper-token-shards\"}' > '%s/manifest.json'", ref, ref,
          ref);
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "not a generate-data manifest") &&
                 strstr(tp_errmsg(), "taper-token-shards"),
             "another command's manifest is refused, even with restart: %s", tp_errmsg());
    tt_sh("rm -rf '%s' && mkdir -p '%s' && cp '%s' '%s/" TP_SDG_SHARD "' && echo '{\"teacher\": \"t\", "
          "\"max_tokens\": 12, \"generated_tokens\": 3}' > '%s/manifest.json'", ref, ref, keep, ref, ref);
    j.restart = 0;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "older taper"),
             "an older run's manifest is refused: %s", tp_errmsg());
    j.restart = 1;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_OK && r.complete, "and replaced with restart: %s", tp_errmsg());
    tt_sh("rm -f '%s/manifest.json'", ref);
    j.restart = 0;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "no manifest.json"),
             "parts without a manifest are refused: %s", tp_errmsg());
    j.out_dir = dir;
    tp_log_default();
    tt_sh("rm -rf '%s' '%s' '%s'", dir, ref, keep);
    free(jsonl);
    free(p0);
    free(keep);
    free(prompts);
    free(other);
    free(model);
    free(m2);
    free(dir);
    free(ref);
}

/* Dedup with greedy decoding and repeated prompts: prompts alpha beta alpha beta gamma alpha delta
 * used in turn by 12 samples in parts of 3, so at least 8 samples repeat an earlier one (same
 * prompt, greedy) and part 3 (samples 9..11: alpha beta gamma) keeps none. The expected kept set
 * is computed from tp_sdg_run's own generations (the first of each distinct one); the job keeps
 * exactly those, counts the rest, and a run stopped inside part 1 and resumed (the set rebuilt from
 * part 0's shard) writes the same bytes. */
TT_TEST(sdg_job_dedup_counts_and_resumes) {
    char *model, *dir, *m2, *dir2, *prompts = tt_path(tt_tmp_dir(), "sdg_dedup_prompts.txt");
    static const char P[] = "alpha\nbeta\nalpha\nbeta\ngamma\nalpha\ndelta\n";
    TT_CHECK(tt_write_text(prompts, P, sizeof P - 1), "write prompts");
    const char *pv[] = {"alpha", "beta", "alpha", "beta", "gamma", "alpha", "delta"};
    tp_set_log(NULL, NULL);
    tp_sdg_job j, je;
    job_setup(&j, "sdg_dedup", &model, &dir);
    job_setup(&je, "sdg_dedup_resumed", &m2, &dir2);
    j.samples = je.samples = 12;
    j.part_samples = je.part_samples = 3;
    j.max_tokens = je.max_tokens = 8;
    j.batch = je.batch = 2;
    j.temperature = je.temperature = 0;
    j.prompts = je.prompts = prompts;
    j.dedup = je.dedup = 1;
    /* the generations, part by part as the job makes them */
    tp_model *m = NULL;
    TT_CHECK(tp_model_load(model, &m) == TP_OK, "load %s", model);
    if (!m) return;
    collected all = {0};
    for (int k = 0; k < 4; k++) {
        from_first f = {0};
        f.first = (size_t)k * 3;
        tp_sdg_cfg c = {3, 8, 2, {0.0f, 0.9f, 0}, 5, pv, 7, 0, (size_t)k * 3, NULL};
        TT_CHECK(tp_sdg_run(m, &c, collect_from, &f, NULL) == TP_OK && f.count == 3, "part %d: %s", k, tp_errmsg());
        for (int i = 0; i < 3; i++) {
            memcpy(all.ids[k * 3 + i], f.ids[i], f.n[i] * sizeof(int32_t));
            all.n[k * 3 + i] = f.n[i];
        }
    }
    tp_model_free(m);
    int keep[12], n_keep = 0, same_prompt_same_gen = 1;
    for (int i = 0; i < 12; i++) {
        int dup = 0;
        for (int q = 0; q < n_keep && !dup; q++)
            dup = all.n[keep[q]] == all.n[i] && !memcmp(all.ids[keep[q]], all.ids[i], all.n[i] * sizeof(int32_t));
        if (!dup) keep[n_keep++] = i;
        for (int q = 0; q < i; q++)
            if (!strcmp(pv[q % 7], pv[i % 7]))
                same_prompt_same_gen &= all.n[q] == all.n[i] && !memcmp(all.ids[q], all.ids[i], all.n[i] * sizeof(int32_t));
    }
    TT_CHECK(same_prompt_same_gen && n_keep <= 4, "greedy: a repeated prompt repeats its generation (%d distinct)",
             n_keep);
    tt_note("%d distinct generations of 12 samples", n_keep);
    tp_sdg_job_result r, re;
    TT_CHECK(tp_sdg_job_run(&j, &r) == TP_OK && r.complete && r.parts == 4, "dedup run: %s", tp_errmsg());
    TT_CHECK(r.samples == n_keep && r.duplicates_dropped == (size_t)(12 - n_keep) && r.samples_done == 12,
             "kept %d (want %d), dropped %zu (want %d)", r.samples, n_keep, r.duplicates_dropped, 12 - n_keep);
    /* samples.jsonl: the kept indices, in order */
    char *jsonl = tt_path(dir, "samples.jsonl"), *text = NULL;
    int idx_ok = tp_read_file(jsonl, &text, NULL) == TP_OK, lines = 0;
    for (char *save = NULL, *l = text ? strtok_r(text, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(l);
        idx_ok &= lines < n_keep && tp_json_number(o, "index") == keep[lines];
        cJSON_Delete(o);
        lines++;
    }
    free(text);
    TT_CHECK(idx_ok && lines == n_keep, "samples.jsonl holds the first of each generation (%d lines)", lines);
    char *man = tt_path(dir, "manifest.json");
    cJSON *mj = tt_read_json(man);
    TT_CHECK(tp_json_number(mj, "duplicates_dropped") == 12 - n_keep && tp_json_number(mj, "samples_kept") == n_keep &&
                 cJSON_IsTrue(cJSON_GetObjectItem(mj, "dedup")),
             "manifest.json counts the dropped samples");
    cJSON_Delete(mj);
    tp_dataset *d = NULL;
    tp_loader *L = NULL;
    TT_CHECK(tp_dataset_open(dir, &d) == TP_OK && tp_dataset_docs(d) == (size_t)n_keep &&
                 tp_loader_open(d, 4, 0.0, 1, &L) == TP_OK,
             "the parts (the last one empty) are one dataset a loader opens: %s", tp_errmsg());
    tp_loader_free(L);
    tp_dataset_close(d);
    /* stopped inside part 1, resumed: part 0's generations are known again */
    je.stop_after_samples = 4;
    TT_CHECK(tp_sdg_job_run(&je, &re) == TP_OK && re.stopped && re.parts == 1, "stopped in part 1: %s", tp_errmsg());
    je.stop_after_samples = 0;
    TT_CHECK(tp_sdg_job_run(&je, &re) == TP_OK && re.complete && re.parts_before == 1 && re.samples == n_keep &&
                 re.duplicates_dropped == (size_t)(12 - n_keep),
             "resumed: kept %d, dropped %zu: %s", re.samples, re.duplicates_dropped, tp_errmsg());
    static const char *const parts4[] = {"sdg-00000.tpt", "sdg-00001.tpt", "sdg-00002.tpt", "sdg-00003.tpt",
                                         "samples.jsonl", NULL};
    TT_CHECK(same_files(dir, dir2, parts4), "resumed dedup run: the same shards and samples.jsonl");
    /* a finished dedup run run again: the set rebuilt from all four parts, nothing written */
    TT_CHECK(tp_sdg_job_run(&je, &re) == TP_OK && re.complete && re.parts_before == 4 && re.generated_now == 0 &&
                 re.duplicates_dropped == (size_t)(12 - n_keep),
             "finished: nothing to do: %s", tp_errmsg());
    tp_log_default();
    tt_sh("rm -rf '%s' '%s'", dir, dir2);
    free(man);
    free(jsonl);
    free(prompts);
    free(model);
    free(m2);
    free(dir);
    free(dir2);
}

/* taper generate-data through the CLI: the help names the new options; a SIGINT stops it with
 * exit 130 keeping only complete parts (when it lands before the end), the same command resumes
 * it and the files equal an uninterrupted run's; a resume with another seed exits 1 naming it;
 * the last line counts parts, kept samples, dropped duplicates and tokens. */
TT_TEST(sdg_cli_interrupt_and_resume) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *model = tt_path(tt_fixtures_dir(), "sparsify/model"), *dir = tt_path(tt_tmp_dir(), "sdg_cli"),
         *ref = tt_path(tt_tmp_dir(), "sdg_cli_ref"), *rcf = tt_path(tt_tmp_dir(), "sdg_cli_rc");
    char a[2048], *out = NULL;
    tt_sh("rm -rf '%s' '%s'", dir, ref);
    TT_CHECK(tt_taper("generate-data --help", &out) == 0 && strstr(out, "--part-samples") && strstr(out, "--dedup") &&
                 strstr(out, "--restart") && strstr(out, "Resume:"),
             "--help documents parts, dedup, restart and resuming");
    free(out);
    const char *opts = "--samples 1500 --max-tokens 64 --part-samples 250 --batch 8 --threads 1";
    /* the signal once the first part is on disk (a fixed sleep could land before the handlers are
     * installed on a loaded machine, or after the end on a fast one) */
    tt_sh("TAPER_PROGRESS=0 '%s' generate-data '%s' -o '%s' %s > /dev/null 2>&1 & p=$!; "
          "for i in $(seq 1 1200); do [ -f '%s/sdg-00000.tpt' ] && break; kill -0 $p 2>/dev/null || break; "
          "sleep 0.05; done; kill -INT $p; wait $p; echo $? > '%s'",
          tt_bin(), model, dir, opts, dir, rcf);
    char *rc_text = NULL;
    int rc = tp_read_file(rcf, &rc_text, NULL) == TP_OK ? atoi(rc_text) : -1;
    free(rc_text);
    char *jsonl = tt_path(dir, "samples.jsonl");
    TT_CHECK(rc == 130 || rc == 0, "SIGINT: exit 130 (or 0 when the run had ended): %d", rc);
    if (rc == 130) {
        size_t lines = count_lines(jsonl);
        TT_CHECK(lines % 250 == 0 && lines < 1500 && count_files(dir) == (int)(lines / 250) + 2,
                 "stopped: only complete parts and their lines remain (%zu lines, %d files)", lines, count_files(dir));
        tt_note("SIGINT after the first part: exit 130 with %zu of 6 parts complete", lines / 250);
    } else {
        tt_note("the run ended before the signal: the interruption was not exercised");
    }
    snprintf(a, sizeof a, "generate-data '%s' -o '%s' %s --seed 1", model, dir, opts);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "seed was 0, now 1") && strstr(out, "--restart"),
             "another seed: exit 1 naming it: %s", out);
    free(out);
    snprintf(a, sizeof a, "generate-data '%s' -o '%s' %s", model, dir, opts);
    TT_CHECK(tt_taper(a, &out) == 0, "resumed to the end: %s", out);
    size_t n = out ? strlen(out) : 0;
    while (n && out[n - 1] == '\n') out[--n] = 0;
    const char *last = out ? strrchr(out, '\n') : NULL;
    last = last ? last + 1 : out;
    static const char want[] = "generate-data: 6 parts, 1500 samples kept, 0 duplicates dropped, ";
    TT_CHECK(last && !strncmp(last, want, sizeof want - 1) &&
                 strstr(last, " tokens ("),
             "the last line counts parts, kept, dropped, tokens: %s", last ? last : "");
    free(out);
    snprintf(a, sizeof a, "generate-data '%s' -o '%s' %s", model, ref, opts);
    TT_CHECK(tt_taper(a, &out) == 0, "uninterrupted run: %s", out);
    free(out);
    static const char *const parts6[] = {"sdg-00000.tpt", "sdg-00001.tpt", "sdg-00002.tpt", "sdg-00003.tpt",
                                         "sdg-00004.tpt", "sdg-00005.tpt", "samples.jsonl", NULL};
    TT_CHECK(same_files(dir, ref, parts6) && count_files(dir) == 8, "interrupted + resumed = uninterrupted");
    snprintf(a, sizeof a, "generate-data '%s' -o '%s' %s", model, dir, opts);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "was complete: nothing generated"), "run again: nothing to do: %s",
             out);
    free(out);
    tt_sh("rm -rf '%s' '%s'", dir, ref);
    free(jsonl);
    free(model);
    free(dir);
    free(ref);
    free(rcf);
}

/* generate-data --precision: bf16 is recorded in the manifest; a bf16 run resumed under fp32 goes
 * on with a note naming both; an unknown precision is a usage error (exit 2). */
TT_TEST(sdg_cli_precision) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *model = tt_path(tt_fixtures_dir(), "sparsify/model"), *dir = tt_path(tt_tmp_dir(), "sdg_prec");
    char a[2048], *out = NULL;
    tt_sh("rm -rf '%s'", dir);
    snprintf(a, sizeof a, "generate-data '%s' -o '%s' --samples 4 --max-tokens 8 --precision fp16", model, dir);
    TT_CHECK(tt_taper(a, &out) == 2 && strstr(out, "--precision"), "fp16: usage error: %s", out);
    free(out);
    const char *opts = "--samples 8 --max-tokens 8 --part-samples 4 --batch 4 --threads 1";
    snprintf(a, sizeof a, "generate-data '%s' -o '%s' %s --samples 4 --precision bf16", model, dir, opts);
    TT_CHECK(tt_taper(a, &out) == 0, "bf16 run: %s", out);
    free(out);
    char *man = tt_path(dir, "manifest.json");
    cJSON *m = tt_read_json(man);
    const cJSON *p = cJSON_GetObjectItem(m, "precision");
    TT_CHECK(cJSON_IsString(p) && !strcmp(p->valuestring, "bf16"), "the manifest records bf16");
    cJSON_Delete(m);
    snprintf(a, sizeof a, "generate-data '%s' -o '%s' %s --precision fp32", model, dir, opts);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "precision fp32, the earlier parts were made under bf16"),
             "resumed under fp32 with a note: %s", out);
    free(out);
    tt_sh("rm -rf '%s'", dir);
    free(man);
    free(model);
    free(dir);
}
