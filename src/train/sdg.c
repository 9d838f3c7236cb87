/* Synthetic data generation (include/taper/sdg.h): continuous batching over --batch slots
 * (tp_sdg_run says how).
 * Also the generate-data job (tp_sdg_job_run): the samples go to one token shard, samples.jsonl
 * and manifest.json. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "taper/sdg.h"
#include "taper/tokenizer.h"
#include "taper/train.h"

typedef struct {
    int32_t *prompt;
    size_t n_prompt;
    int32_t *gen;
    size_t n_gen;
    int done;
    tp_rng rng;
} seq;

static tp_status encode_prompt(const tp_model *m, const tp_sdg_cfg *c, size_t i, seq *s) {
    s->prompt = NULL;
    s->n_prompt = 0;
    if (c->n_prompts == 0) {
        int32_t bos = m->cfg.bos_id;
        if (bos < 0 && m->tok) bos = tp_tok_bos(m->tok);
        if (bos < 0) return tp_fail(TP_ERR_ARG, "SDG: the model has no BOS token to start from; give prompts");
        s->prompt = malloc(sizeof(int32_t));
        if (!s->prompt) return tp_fail(TP_ERR_NOMEM, "out of memory");
        s->prompt[0] = bos;
        s->n_prompt = 1;
        return TP_OK;
    }
    if (!m->tok) return tp_fail(TP_ERR_ARG, "SDG: prompts need the model's tokenizer");
    const char *p = c->prompts[i % c->n_prompts];
    char *text = NULL;
    if (c->chat) {
        const char *fmt = "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n";
        size_t n = strlen(fmt) + strlen(p) + 1;
        text = malloc(n);
        if (text) snprintf(text, n, fmt, p);
    } else {
        text = strdup(p);
    }
    if (!text) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status st = tp_tok_encode(m->tok, text, strlen(text), 1, &s->prompt, &s->n_prompt);
    free(text);
    if (!st && s->n_prompt == 0) st = tp_fail(TP_ERR_ARG, "SDG: prompt %zu encodes to no tokens", i % c->n_prompts);
    return st;
}

/* splitmix-style mix of (seed, index) into a per-sample seed */
static uint64_t sample_seed(uint64_t seed, size_t i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * ((uint64_t)i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Sample i takes slot b: its prompt from the table of encoded prompts, its buffer and random
 * stream; the slot's cache is rewound to position 0. */
static tp_status start_sample(const tp_sdg_cfg *c, const seq *tab, size_t n_tab, seq *all, size_t i, tp_kvcache *kv,
                              int b, int *slot, size_t *pos) {
    seq *s = &all[i];
    s->prompt = tab[i % n_tab].prompt;
    s->n_prompt = tab[i % n_tab].n_prompt;
    s->gen = malloc(((size_t)c->max_tokens + 1) * sizeof(int32_t));
    if (!s->gen) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_rng_seed(&s->rng, sample_seed(c->seed, i));
    slot[b] = (int)i;
    pos[b] = 0;
    kv->len[b] = 0;
    return TP_OK;
}

/* Continuous batching over B slots: every forward advances each slot's sample by one position
 * (B x 1 with the KV cache); a slot whose sample has ended takes the next sample at the next
 * step, its cache rewound to position 0, so a batch never waits for its longest sample. The
 * first B samples start together and read the prompt positions they all share in one forward.
 * Finished samples reach the sink in index order (a sample that ends early waits for the ones
 * before it). Each sample has its own random stream, so what it samples does not depend on the
 * slot or the step it runs in (up to the float rounding of the batched products). */
tp_status tp_sdg_run(const tp_model *m, const tp_sdg_cfg *c, tp_sdg_sink sink, void *user, tp_progress *prog) {
    if (c->samples <= 0 || c->max_tokens <= 0 || c->batch <= 0)
        return tp_fail(TP_ERR_ARG, "SDG: samples %d, max tokens %d and batch %d must be > 0", c->samples,
                       c->max_tokens, c->batch);
    size_t V = (size_t)m->cfg.vocab, N = (size_t)c->samples;
    size_t n_tab = c->n_prompts ? (c->n_prompts < N ? c->n_prompts : N) : 1;
    int B = c->batch < c->samples ? c->batch : c->samples;
    int32_t eos = m->cfg.eos_id;
    seq *tab = calloc(n_tab, sizeof *tab), *all = calloc(N, sizeof *all);
    int *slot = malloc((size_t)B * sizeof *slot);
    size_t *pos = calloc((size_t)B, sizeof *pos);
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    float *logits = malloc((size_t)B * V * sizeof *logits);
    tp_kvcache *kv = NULL;
    tp_status st = tab && all && slot && pos && tok && logits ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    /* each distinct prompt encoded once; the samples share it */
    size_t max_prompt = 0;
    for (size_t i = 0; !st && i < n_tab; i++) {
        st = encode_prompt(m, c, i, &tab[i]);
        if (!st && tab[i].n_prompt > max_prompt) max_prompt = tab[i].n_prompt;
    }
    int cap = (int)max_prompt + c->max_tokens;
    if (!st && cap > m->cfg.max_pos)
        tp_log(TP_LOG_NOTE, "taper: note: prompt + %d tokens = %d positions, past the model's %d", c->max_tokens, cap,
               m->cfg.max_pos);
    if (!st) st = tp_kvcache_alloc(&m->cfg, B, cap, &kv);
    size_t next = 0, next_sink = 0;
    double done_tokens = 0;
    for (int b = 0; !st && b < B; b++) st = start_sample(c, tab, n_tab, all, next++, kv, b, slot, pos);
    /* the positions all first B prompts cover, in one forward */
    size_t L = max_prompt;
    for (int b = 0; !st && b < B; b++)
        if (all[b].n_prompt < L) L = all[b].n_prompt;
    int32_t *pre = !st && L > 1 ? malloc((size_t)B * L * sizeof *pre) : NULL;
    if (!st && L > 1 && !pre) st = tp_fail(TP_ERR_NOMEM, "out of memory");
    while (!st) {
        int active = 0;
        for (int b = 0; b < B && !st; b++) {
            if (slot[b] < 0 && next < N) st = start_sample(c, tab, n_tab, all, next++, kv, b, slot, pos);
            if (slot[b] < 0) { /* nothing left for this slot: it idles at position 0 */
                kv->len[b] = 0;
                tok[b] = 0;
                continue;
            }
            seq *s = &all[slot[b]];
            tok[b] = pos[b] < s->n_prompt ? s->prompt[pos[b]] : s->gen[s->n_gen - 1];
            active++;
        }
        if (st || !active) break;
        if (pre) { /* the first forward: positions 0..L-1 of every slot */
            for (int b = 0; b < B; b++) {
                memcpy(pre + (size_t)b * L, all[slot[b]].prompt, L * sizeof *pre);
                pos[b] = L - 1;
            }
            st = tp_forward(m, pre, B, (int)L, kv, logits, 1);
            free(pre);
            pre = NULL;
        } else {
            st = tp_forward(m, tok, B, 1, kv, logits, 1);
        }
        for (int b = 0; b < B && !st; b++) {
            if (slot[b] < 0) continue;
            seq *s = &all[slot[b]];
            size_t p = pos[b]++;
            if (p + 1 < s->n_prompt) continue; /* still reading the prompt */
            int32_t id = tp_sample(logits + (size_t)b * V, (int)V, &c->sampler, &s->rng);
            s->gen[s->n_gen++] = id;
            done_tokens += 1;
            if ((eos >= 0 && id == eos) || s->n_gen >= (size_t)c->max_tokens) {
                s->done = 1;
                slot[b] = -1;
            }
        }
        for (; !st && next_sink < next && all[next_sink].done; next_sink++) {
            seq *s = &all[next_sink];
            st = sink(user, next_sink, s->prompt, s->n_prompt, s->gen, s->n_gen);
            free(s->gen);
            s->gen = NULL;
        }
        if (prog) tp_progress_update(prog, done_tokens);
    }
    free(pre);
    for (size_t i = 0; all && i < N; i++) free(all[i].gen);
    for (size_t i = 0; tab && i < n_tab; i++) free(tab[i].prompt);
    free(all);
    free(tab);
    free(slot);
    free(pos);
    free(tok);
    free(logits);
    tp_kvcache_free(kv);
    return st;
}

/* ------------------------------------------------------------ the job --- */

void tp_sdg_job_default(tp_sdg_job *j) {
    memset(j, 0, sizeof *j);
    j->samples = 64;
    j->max_tokens = 256;
    j->batch = 16;
    j->temperature = 1.0f;
    j->top_p = 0.95f;
}

static tp_status check_job(const tp_sdg_job *j) {
    if (!j) return tp_fail(TP_ERR_ARG, "tp_sdg_job_run: no job");
    if (!j->out_dir || !*j->out_dir) return tp_fail(TP_ERR_ARG, "out_dir is required");
    if (j->samples < 1) return tp_fail(TP_ERR_ARG, "samples must be >= 1, got %d", j->samples);
    if (j->max_tokens < 1) return tp_fail(TP_ERR_ARG, "max_tokens must be >= 1, got %d", j->max_tokens);
    if (j->batch < 1) return tp_fail(TP_ERR_ARG, "batch must be >= 1, got %d", j->batch);
    if (!(j->temperature >= 0) || isinf(j->temperature))
        return tp_fail(TP_ERR_ARG, "temperature must be a finite number >= 0, got %g", j->temperature);
    if (!(j->top_p > 0 && j->top_p <= 1)) return tp_fail(TP_ERR_ARG, "top_p must be in (0, 1], got %g", j->top_p);
    if (j->top_k < 0) return tp_fail(TP_ERR_ARG, "top_k must be >= 0, got %d", j->top_k);
    return TP_OK;
}

static void free_prompts(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* The prompts of a file, one per line; blank lines (spaces and tabs only) and a CR before the
 * newline are dropped. A file without any prompt is an error. */
static tp_status read_prompts(const char *path, char ***out, size_t *n) {
    *out = NULL;
    *n = 0;
    char *text = NULL;
    size_t len = 0;
    if (tp_read_file(path, &text, &len)) return tp_fail_ctx(TP_ERR_IO, "prompts: ");
    char **v = NULL, *save = NULL;
    size_t k = 0, cap = 0;
    tp_status s = TP_OK;
    for (char *line = strtok_r(text, "\n", &save); line && !s; line = strtok_r(NULL, "\n", &save)) {
        size_t l = strlen(line);
        if (l && line[l - 1] == '\r') line[--l] = 0;
        int blank = 1;
        for (size_t i = 0; i < l; i++) blank &= line[i] == ' ' || line[i] == '\t';
        if (blank) continue;
        if (k == cap) {
            size_t c = cap ? 2 * cap : 64;
            char **nv = realloc(v, c * sizeof *nv);
            if (!nv) { s = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
            v = nv;
            cap = c;
        }
        if (!(v[k] = strdup(line))) s = tp_fail(TP_ERR_NOMEM, "out of memory");
        else k++;
    }
    free(text);
    if (!s && k == 0) s = tp_fail(TP_ERR_ARG, "%s holds no prompts (one per line)", path);
    if (s) {
        free_prompts(v, k);
        return s;
    }
    *out = v;
    *n = k;
    return TP_OK;
}

typedef struct {
    const tp_model *m;
    FILE *jsonl;
    tp_shard_writer *shard;
    int32_t *doc;             /* prompt then generated ids of one sample */
    size_t doc_cap;
    size_t n_tokens, gen_tokens, finished;
} sink_state;

/* One sample: its document into the shard, its line into samples.jsonl. */
static tp_status on_sample(void *user, size_t index, const int32_t *prompt, size_t n_prompt, const int32_t *gen,
                           size_t n_gen) {
    sink_state *s = user;
    size_t n = n_prompt + n_gen;
    if (n > s->doc_cap) {
        int32_t *d = realloc(s->doc, n * sizeof *d);
        if (!d) return tp_fail(TP_ERR_NOMEM, "out of memory");
        s->doc = d;
        s->doc_cap = n;
    }
    memcpy(s->doc, prompt, n_prompt * sizeof *prompt);
    if (n_gen) memcpy(s->doc + n_prompt, gen, n_gen * sizeof *gen);
    tp_status st = tp_shard_writer_add_doc(s->shard, s->doc, n);
    if (st) return st;
    s->n_tokens += n;
    s->gen_tokens += n_gen;
    int eos_hit = n_gen > 0 && gen[n_gen - 1] == s->m->cfg.eos_id;
    s->finished += eos_hit;
    char *ptext = NULL, *gtext = NULL;
    size_t pl = 0, gl = 0;
    st = tp_tok_decode(s->m->tok, prompt, n_prompt, 0, &ptext, &pl);
    if (!st) st = tp_tok_decode(s->m->tok, gen, n_gen, 1, &gtext, &gl);
    if (!st) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "index", (double)index);
        cJSON_AddStringToObject(j, "prompt", ptext);
        cJSON_AddStringToObject(j, "text", gtext);
        cJSON_AddNumberToObject(j, "prompt_tokens", (double)n_prompt);
        cJSON_AddNumberToObject(j, "tokens", (double)n_gen);
        cJSON_AddBoolToObject(j, "eos", eos_hit);
        char *line = cJSON_PrintUnformatted(j);
        if (!line || fprintf(s->jsonl, "%s\n", line) < 0 || fflush(s->jsonl))
            st = tp_fail(TP_ERR_IO, "samples.jsonl: write failed: %s", strerror(errno));
        free(line);
        cJSON_Delete(j);
    }
    free(ptext);
    free(gtext);
    return st;
}

static tp_status write_manifest(const tp_sdg_job *j, const sink_state *s, double seconds) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "teacher", j->teacher ? j->teacher : "");
    cJSON_AddNumberToObject(o, "samples", j->samples);
    cJSON_AddNumberToObject(o, "max_tokens", j->max_tokens);
    cJSON_AddNumberToObject(o, "batch", j->batch);
    cJSON_AddNumberToObject(o, "temperature", j->temperature);
    cJSON_AddNumberToObject(o, "top_p", j->top_p);
    cJSON_AddNumberToObject(o, "top_k", j->top_k);
    cJSON_AddNumberToObject(o, "seed", (double)j->seed);
    cJSON_AddStringToObject(o, "prompts", j->prompts ? j->prompts : "");
    cJSON_AddBoolToObject(o, "chat", j->chat);
    cJSON_AddNumberToObject(o, "tokens", (double)s->n_tokens);
    cJSON_AddNumberToObject(o, "generated_tokens", (double)s->gen_tokens);
    cJSON_AddNumberToObject(o, "ended_at_eos", (double)s->finished);
    cJSON_AddNumberToObject(o, "seconds", seconds);
    char *path = tp_path_join(j->out_dir, "manifest.json");
    tp_status st = path ? tp_write_json_atomic(path, o) : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(path);
    cJSON_Delete(o);
    return st;
}

/* The job once its settings are checked, its prompts read and the teacher loaded. */
static tp_status run_job(const tp_sdg_job *j, const tp_model *m, char **prompts, size_t n_prompts,
                         tp_sdg_job_result *res) {
    const char *name = j->teacher ? j->teacher : "the teacher";
    if (!m->tok) return tp_fail(TP_ERR_ARG, "%s has no tokenizer: SDG needs one", name);
    if (mkdir(j->out_dir, 0777) && errno != EEXIST)
        return tp_fail(TP_ERR_IO, "%s: cannot create: %s", j->out_dir, strerror(errno));
    tp_sdg_cfg c = {j->samples, j->max_tokens, j->batch, {j->temperature, j->top_p, j->top_k}, j->seed,
                    (const char *const *)prompts, n_prompts, j->chat};
    sink_state s = {m, NULL, NULL, NULL, 0, 0, 0, 0};
    char *jsonl_path = tp_path_join(j->out_dir, "samples.jsonl"), *shard_path = tp_path_join(j->out_dir, TP_SDG_SHARD);
    tp_status st = jsonl_path && shard_path ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!st) {
        s.jsonl = fopen(jsonl_path, "w");
        if (!s.jsonl) st = tp_fail(TP_ERR_IO, "%s: cannot create: %s", jsonl_path, strerror(errno));
    }
    if (!st)
        st = tp_shard_writer_open(shard_path, (uint32_t)m->cfg.vocab, -1, -1, tp_shard_tok_fingerprint(m->tok),
                                  &s.shard);
    double t0 = tp_time_s();
    if (!st) {
        tp_log(TP_LOG_INFO, "generate-data: %d samples x up to %d tokens, batch %d, temperature %g, top-p %g, %s",
               c.samples, c.max_tokens, c.batch, c.sampler.temperature, c.sampler.top_p,
               n_prompts ? "prompts in turn" : "from BOS");
        tp_progress prog;
        tp_progress_begin(&prog, "sdg", (double)c.samples * c.max_tokens, "tok");
        st = tp_sdg_run(m, &c, on_sample, &s, &prog);
        tp_progress_end(&prog);
    }
    if (s.jsonl && fclose(s.jsonl) && !st)
        st = tp_fail(TP_ERR_IO, "%s: write failed: %s", jsonl_path, strerror(errno));
    if (!st) {
        st = tp_shard_writer_close(s.shard, "taper generate-data", NULL);
        s.shard = NULL;
    }
    double el = tp_time_s() - t0;
    if (!st) st = write_manifest(j, &s, el);
    if (!st && res) {
        res->samples = j->samples;
        res->tokens = s.n_tokens;
        res->generated_tokens = s.gen_tokens;
        res->ended_at_eos = s.finished;
        res->seconds = el;
    }
    tp_shard_writer_abort(s.shard);
    free(s.doc);
    free(jsonl_path);
    free(shard_path);
    return st;
}

tp_status tp_sdg_job_run_model(const tp_sdg_job *j, const tp_model *teacher, tp_sdg_job_result *res) {
    if (res) memset(res, 0, sizeof *res);
    tp_status st = check_job(j);
    if (st) return st;
    if (!teacher) return tp_fail(TP_ERR_ARG, "tp_sdg_job_run_model: no teacher model");
    char **prompts = NULL;
    size_t n_prompts = 0;
    if (j->prompts && (st = read_prompts(j->prompts, &prompts, &n_prompts))) return st;
    st = run_job(j, teacher, prompts, n_prompts, res);
    free_prompts(prompts, n_prompts);
    return st;
}

tp_status tp_sdg_job_run(const tp_sdg_job *j, tp_sdg_job_result *res) {
    if (res) memset(res, 0, sizeof *res);
    tp_status st = check_job(j);
    if (st) return st;
    if (!j->teacher || !*j->teacher) return tp_fail(TP_ERR_ARG, "teacher is required");
    char **prompts = NULL;
    size_t n_prompts = 0;
    if (j->prompts && (st = read_prompts(j->prompts, &prompts, &n_prompts))) return st;
    tp_model *m = NULL;
    st = tp_model_load(j->teacher, &m);
    if (!st) st = run_job(j, m, prompts, n_prompts, res);
    tp_model_free(m);
    free_prompts(prompts, n_prompts);
    return st;
}

void tp_sdg_job_result_free(tp_sdg_job_result *res) {
    if (res) memset(res, 0, sizeof *res);
}
