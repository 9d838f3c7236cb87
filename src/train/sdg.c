/* Synthetic data generation (include/taper/sdg.h): continuous batching over --batch slots
 * (tp_sdg_run says how).
 * Also the generate-data job (tp_sdg_job_run): the samples go to one token shard per part,
 * samples.jsonl and manifest.json; a job run again on its directory resumes after its last
 * complete part, and --dedup drops repeated generations (the rules are in include/taper/sdg.h). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

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
    return tp_mix64(seed + 0x9E3779B97F4A7C15ull * ((uint64_t)i + 1));
}

/* The encoded prompts a run needs: every prompt once when the run has at least as many samples
 * (entry p is prompt p), else only those of its samples (entry j is sample first + j's). */
static size_t tab_size(const tp_sdg_cfg *c) {
    size_t N = (size_t)c->samples;
    return c->n_prompts ? (c->n_prompts < N ? c->n_prompts : N) : 1;
}
static size_t tab_prompt(const tp_sdg_cfg *c, size_t t) { /* the prompt entry t holds */
    return c->n_prompts <= (size_t)c->samples ? t : (c->first + t) % c->n_prompts;
}
static size_t tab_entry(const tp_sdg_cfg *c, size_t i) { /* the entry of local sample i */
    if (!c->n_prompts) return 0;
    return c->n_prompts <= (size_t)c->samples ? (c->first + i) % c->n_prompts : i;
}

static int stop_asked(const tp_sdg_cfg *c) { return c->stop && *c->stop; }

/* Sample i (local: index first + i) takes slot b: its prompt from the table of encoded prompts,
 * its buffer and random stream; the slot's cache is rewound to position 0. */
static tp_status start_sample(const tp_sdg_cfg *c, const seq *tab, seq *all, size_t i, tp_kvcache *kv, int b,
                              int *slot, size_t *pos) {
    seq *s = &all[i];
    s->prompt = tab[tab_entry(c, i)].prompt;
    s->n_prompt = tab[tab_entry(c, i)].n_prompt;
    s->gen = malloc(((size_t)c->max_tokens + 1) * sizeof(int32_t));
    if (!s->gen) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_rng_seed(&s->rng, sample_seed(c->seed, c->first + i));
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
 * slot or the step it runs in (up to the float rounding of the batched products). The stop flag is
 * looked at before every forward and before every sample handed to the sink. */
tp_status tp_sdg_run(const tp_model *m, const tp_sdg_cfg *c, tp_sdg_sink sink, void *user, tp_progress *prog) {
    if (c->samples <= 0 || c->max_tokens <= 0 || c->batch <= 0)
        return tp_fail(TP_ERR_ARG, "SDG: samples %d, max tokens %d and batch %d must be > 0", c->samples,
                       c->max_tokens, c->batch);
    size_t V = (size_t)m->cfg.vocab, N = (size_t)c->samples;
    size_t n_tab = tab_size(c);
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
        st = encode_prompt(m, c, tab_prompt(c, i), &tab[i]);
        if (!st && tab[i].n_prompt > max_prompt) max_prompt = tab[i].n_prompt;
    }
    int cap = (int)max_prompt + c->max_tokens;
    if (!st && cap > m->cfg.max_pos)
        tp_log(TP_LOG_NOTE, "taper: note: prompt + %d tokens = %d positions, past the model's %d", c->max_tokens, cap,
               m->cfg.max_pos);
    if (!st) st = tp_kvcache_alloc(&m->cfg, B, cap, &kv);
    size_t next = 0, next_sink = 0;
    double done_tokens = prog ? prog->done : 0;
    for (int b = 0; !st && b < B; b++) st = start_sample(c, tab, all, next++, kv, b, slot, pos);
    /* the positions all first B prompts cover, in one forward */
    size_t L = max_prompt;
    for (int b = 0; !st && b < B; b++)
        if (all[b].n_prompt < L) L = all[b].n_prompt;
    int32_t *pre = !st && L > 1 ? malloc((size_t)B * L * sizeof *pre) : NULL;
    if (!st && L > 1 && !pre) st = tp_fail(TP_ERR_NOMEM, "out of memory");
    while (!st && !stop_asked(c)) {
        int active = 0;
        for (int b = 0; b < B && !st; b++) {
            if (slot[b] < 0 && next < N) st = start_sample(c, tab, all, next++, kv, b, slot, pos);
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
        for (; !st && next_sink < next && all[next_sink].done && !stop_asked(c); next_sink++) {
            seq *s = &all[next_sink];
            st = sink(user, c->first + next_sink, s->prompt, s->n_prompt, s->gen, s->n_gen);
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
    j->part_samples = TP_SDG_PART_SAMPLES;
}

static int part_size(const tp_sdg_job *j) { return j->part_samples ? j->part_samples : TP_SDG_PART_SAMPLES; }

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
    if (j->part_samples < 0)
        return tp_fail(TP_ERR_ARG, "part_samples must be >= 1 (or 0 for %d), got %d", TP_SDG_PART_SAMPLES,
                       j->part_samples);
    long long parts = ((long long)j->samples + part_size(j) - 1) / part_size(j);
    if (parts > TP_SDG_MAX_PARTS)
        return tp_fail(TP_ERR_ARG, "%d samples in parts of %d make %lld parts, more than %d: raise part_samples",
                       j->samples, part_size(j), parts, TP_SDG_MAX_PARTS);
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


/* ---- identities recorded in the manifest ---- */

#define SDG_FORMAT "taper-sdg"
#define SDG_VERSION 1 /* of the manifest's resume fields */

/* The teacher whatever path it was loaded from: its config's sizes and token ids, its tokenizer
 * and its norm weights (fp32 in every form a model takes, frozen or not, and moved by any
 * training), without reading the whole of the weights. */
static uint64_t teacher_fingerprint(const tp_model *m) {
    const tp_config *c = &m->cfg;
    int64_t f[] = {c->arch,  c->n_layers, c->d_model, c->n_heads,        c->n_kv_heads,       c->head_dim,
                   c->d_ff,  c->vocab,    c->max_pos, c->bos_id,         c->eos_id,           c->tie_embeddings,
                   c->hetero, c->qk_norm, c->act,     c->sliding_window, (int64_t)m->n_params};
    uint64_t h = tp_fnv1a(TP_FNV1A_INIT, f, sizeof f), tok = m->tok ? tp_shard_tok_fingerprint(m->tok) : 0;
    h = tp_fnv1a(h, &tok, sizeof tok);
    h = tp_fnv1a(h, &c->rope_theta, sizeof c->rope_theta);
    size_t d = (size_t)c->d_model;
    if (m->final_norm) h = tp_fnv1a(h, m->final_norm, d * sizeof(float));
    for (int l = 0; m->layers && !tp_model_is_streamed(m) && l < c->n_layers; l++) {
        if (m->layers[l].attn_norm) h = tp_fnv1a(h, m->layers[l].attn_norm, d * sizeof(float));
        if (m->layers[l].mlp_norm) h = tp_fnv1a(h, m->layers[l].mlp_norm, d * sizeof(float));
    }
    return tp_mix64(h);
}

/* The prompts as read (after blank lines and CRs are dropped); 0 without prompts. */
static uint64_t prompts_hash(char *const *p, size_t n) {
    if (!n) return 0;
    uint64_t h = tp_fnv1a(TP_FNV1A_INIT, &n, sizeof n);
    for (size_t i = 0; i < n; i++) h = tp_fnv1a(h, p[i], strlen(p[i]) + 1);
    return tp_mix64(h);
}

/* The dedup key of a generated sequence (EOS included when the sample ended there). */
static uint64_t gen_hash(const uint32_t *g, size_t n) {
    uint64_t h = tp_mix64(0x5344472D44454455ull ^ (uint64_t)n);
    for (size_t i = 0; i < n; i++) h = tp_mix64(h ^ ((uint64_t)g[i] + 0x9E3779B97F4A7C15ull));
    return h;
}

/* Open-addressing set of 64-bit hashes (0 marks an empty slot; a hash of 0 is stored as 1). */
typedef struct {
    uint64_t *slot; /* (cap) */
    size_t cap, n;
} hash_set;

static void hash_set_put(hash_set *s, uint64_t h) {
    size_t i = (size_t)h & (s->cap - 1);
    while (s->slot[i] && s->slot[i] != h) i = (i + 1) & (s->cap - 1);
    if (!s->slot[i]) s->n++;
    s->slot[i] = h;
}

/* 1: added, 0: already there, -1: out of memory. */
static int hash_set_add(hash_set *s, uint64_t h) {
    if (!h) h = 1;
    for (size_t i = s->cap ? (size_t)h & (s->cap - 1) : 0; s->cap && s->slot[i]; i = (i + 1) & (s->cap - 1))
        if (s->slot[i] == h) return 0;
    if (2 * (s->n + 1) > s->cap) { /* at most half full */
        hash_set g = {calloc(s->cap ? 2 * s->cap : 1024, sizeof(uint64_t)), s->cap ? 2 * s->cap : 1024, 0};
        if (!g.slot) return -1;
        for (size_t i = 0; i < s->cap; i++)
            if (s->slot[i]) hash_set_put(&g, s->slot[i]);
        free(s->slot);
        *s = g;
    }
    hash_set_put(s, h);
    return 1;
}

/* ---- what an output directory holds ---- */

/* k for "sdg-%05d.tpt" (exactly that spelling), else -1. */
static int part_index(const char *name) {
    if (strncmp(name, "sdg-", 4) != 0) return -1;
    char *end = NULL;
    errno = 0;
    long k = strtol(name + 4, &end, 10);
    if (errno || name[4] < '0' || name[4] > '9' || k < 0 || k >= TP_SDG_MAX_PARTS || strcmp(end, ".tpt") != 0)
        return -1;
    char want[32];
    snprintf(want, sizeof want, TP_SDG_PART_FMT, (int)k);
    return strcmp(want, name) == 0 ? (int)k : -1;
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* A temporary file a shard or manifest write leaves when it dies before its rename. */
static int is_stale_tmp(const char *name) {
    return (strncmp(name, "sdg-", 4) == 0 && strstr(name, ".tpt.tmp.")) || strncmp(name, "manifest.json.tmp.", 18) == 0;
}

typedef enum { MAN_NONE = 0, MAN_OURS, MAN_LEGACY, MAN_OTHER } man_kind;

typedef struct {
    man_kind kind;
    cJSON *manifest;        /* MAN_OURS / MAN_LEGACY: manifest.json parsed */
    unsigned char *part;    /* (n_part) part[k]: sdg-%05d.tpt exists */
    int n_part;             /* one past the highest part there */
    int any_part;
    char **stale;           /* (n_stale) names of stale temporary files */
    size_t n_stale;
} dir_scan;

static void dir_scan_free(dir_scan *d) {
    cJSON_Delete(d->manifest);
    free(d->part);
    for (size_t i = 0; i < d->n_stale; i++) free(d->stale[i]);
    free(d->stale);
    memset(d, 0, sizeof *d);
}

/* Lists dir: the parts, stale temporary files and the manifest's kind. Another *.tpt there is
 * refused whatever the options: the loader would read it as part of the dataset. */
static tp_status scan_dir(const char *dir, dir_scan *d) {
    memset(d, 0, sizeof *d);
    DIR *dp = opendir(dir);
    if (!dp) return tp_fail(TP_ERR_IO, "%s: cannot read the directory: %s", dir, strerror(errno));
    tp_status st = TP_OK;
    struct dirent *e;
    while (!st && (e = readdir(dp))) {
        const char *n = e->d_name;
        int k = part_index(n);
        if (k >= 0) {
            if (k >= d->n_part) {
                unsigned char *np = realloc(d->part, (size_t)k + 1);
                if (!np) { st = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
                memset(np + d->n_part, 0, (size_t)(k + 1 - d->n_part));
                d->part = np;
                d->n_part = k + 1;
            }
            d->part[k] = 1;
            d->any_part = 1;
        } else if (is_stale_tmp(n)) {
            char **ns = realloc(d->stale, (d->n_stale + 1) * sizeof *ns);
            if (!ns || !(ns[d->n_stale] = strdup(n))) {
                if (ns) d->stale = ns;
                st = tp_fail(TP_ERR_NOMEM, "out of memory");
                break;
            }
            d->stale = ns;
            d->n_stale++;
        } else if (has_suffix(n, ".tpt")) {
            st = tp_fail(TP_ERR_ARG, "%s holds %s, which generate-data did not write (the loader reads every *.tpt "
                                     "of a directory as one dataset): choose another directory",
                         dir, n);
        }
    }
    closedir(dp);
    if (st) return st;
    char *mp = tp_path_join(dir, "manifest.json");
    if (!mp) return tp_fail(TP_ERR_NOMEM, "out of memory");
    struct stat sb;
    if (stat(mp, &sb) == 0) {
        cJSON *m = tp_json_load_optional(mp, NULL);
        const cJSON *f = cJSON_GetObjectItem(m, "format");
        if (cJSON_IsString(f) && strcmp(f->valuestring, SDG_FORMAT) == 0) d->kind = MAN_OURS;
        else if (m && !f && cJSON_GetObjectItem(m, "teacher") && cJSON_GetObjectItem(m, "generated_tokens") &&
                 cJSON_GetObjectItem(m, "max_tokens"))
            d->kind = MAN_LEGACY; /* written by generate-data before parts existed */
        else d->kind = MAN_OTHER;
        if (d->kind == MAN_OTHER) {
            st = tp_fail(TP_ERR_ARG, "%s is not a generate-data manifest (%s): choose another directory", mp,
                         !m ? "not JSON" : cJSON_IsString(f) ? f->valuestring : "no \"format\": \"" SDG_FORMAT "\"");
            cJSON_Delete(m);
        } else {
            d->manifest = m;
        }
    }
    free(mp);
    return st;
}

static tp_status remove_in(const char *dir, const char *name) {
    char *p = tp_path_join(dir, name);
    tp_status st = !p ? tp_fail(TP_ERR_NOMEM, "out of memory")
                      : unlink(p) != 0 && errno != ENOENT
                            ? tp_fail(TP_ERR_IO, "%s: cannot remove: %s", p, strerror(errno))
                            : TP_OK;
    free(p);
    return st;
}

static tp_status remove_part(const char *dir, int k) {
    char name[32];
    snprintf(name, sizeof name, TP_SDG_PART_FMT, k);
    return remove_in(dir, name);
}

/* --restart, or a fresh start: what generate-data wrote there goes. */
static tp_status wipe_dir(const char *dir, const dir_scan *d) {
    tp_status st = TP_OK;
    for (int k = 0; !st && k < d->n_part; k++)
        if (d->part[k]) st = remove_part(dir, k);
    for (size_t i = 0; !st && i < d->n_stale; i++) st = remove_in(dir, d->stale[i]);
    if (!st) st = remove_in(dir, "samples.jsonl");
    if (!st && d->kind != MAN_NONE) st = remove_in(dir, "manifest.json");
    return st;
}

/* ---- the settings that decide the samples ---- */

typedef struct {
    uint64_t teacher_fp, prompts_hash, tok_fp;
    size_t n_prompts;
    int P; /* part size */
} job_ids;

static void hex64(char *buf, size_t n, uint64_t v) { snprintf(buf, n, "%016llx", (unsigned long long)v); }

/* The first setting of j that differs from the manifest's, as a refusal naming it. */
static tp_status check_settings(const tp_sdg_job *j, const job_ids *id, const cJSON *man, const char *dir) {
    char was[128] = "missing", now[128], hex[24];
    const char *what = NULL;
    const cJSON *v;
#define GET(name) (v = cJSON_GetObjectItem(man, name))
#define WAS_NUM() (cJSON_IsNumber(v) ? (void)snprintf(was, sizeof was, "%.9g", v->valuedouble) : (void)0)
    hex64(hex, sizeof hex, id->teacher_fp);
    if (!what && (!cJSON_IsString(GET("teacher_fingerprint")) || strcmp(v->valuestring, hex))) {
        what = "teacher";
        const cJSON *t = cJSON_GetObjectItem(man, "teacher");
        snprintf(was, sizeof was, "%s, fingerprint %s", cJSON_IsString(t) ? t->valuestring : "?",
                 cJSON_IsString(v) ? v->valuestring : "missing");
        snprintf(now, sizeof now, "%s, fingerprint %s", j->teacher ? j->teacher : "a model in memory", hex);
    }
    hex64(hex, sizeof hex, j->seed);
    if (!what && (!cJSON_IsString(GET("seed_hex")) || strcmp(v->valuestring, hex))) {
        what = "seed";
        GET("seed");
        WAS_NUM();
        snprintf(now, sizeof now, "%llu", (unsigned long long)j->seed);
    }
    if (!what && (!cJSON_IsNumber(GET("temperature")) || (float)v->valuedouble != j->temperature)) {
        what = "temperature";
        WAS_NUM();
        snprintf(now, sizeof now, "%.9g", j->temperature);
    }
    if (!what && (!cJSON_IsNumber(GET("top_p")) || (float)v->valuedouble != j->top_p)) {
        what = "top_p";
        WAS_NUM();
        snprintf(now, sizeof now, "%.9g", j->top_p);
    }
    if (!what && (!cJSON_IsNumber(GET("top_k")) || v->valuedouble != j->top_k)) {
        what = "top_k";
        WAS_NUM();
        snprintf(now, sizeof now, "%d", j->top_k);
    }
    if (!what && (!cJSON_IsNumber(GET("max_tokens")) || v->valuedouble != j->max_tokens)) {
        what = "max_tokens";
        WAS_NUM();
        snprintf(now, sizeof now, "%d", j->max_tokens);
    }
    hex64(hex, sizeof hex, id->prompts_hash);
    if (!what && (!cJSON_IsString(GET("prompts_hash")) || strcmp(v->valuestring, hex) ||
                  !cJSON_IsNumber(cJSON_GetObjectItem(man, "n_prompts")) ||
                  cJSON_GetObjectItem(man, "n_prompts")->valuedouble != (double)id->n_prompts)) {
        what = "prompts";
        const cJSON *p = cJSON_GetObjectItem(man, "prompts"), *n = cJSON_GetObjectItem(man, "n_prompts");
        snprintf(was, sizeof was, "'%s': %.0f prompts, hash %s", cJSON_IsString(p) ? p->valuestring : "?",
                 cJSON_IsNumber(n) ? n->valuedouble : -1.0, cJSON_IsString(v) ? v->valuestring : "missing");
        snprintf(now, sizeof now, "'%s': %zu prompts, hash %s", j->prompts ? j->prompts : "", id->n_prompts, hex);
    }
    if (!what && (!cJSON_IsBool(GET("chat")) || cJSON_IsTrue(v) != !!j->chat)) {
        what = "chat";
        if (cJSON_IsBool(v)) snprintf(was, sizeof was, "%s", cJSON_IsTrue(v) ? "on" : "off");
        snprintf(now, sizeof now, "%s", j->chat ? "on" : "off");
    }
    if (!what && (!cJSON_IsNumber(GET("part_samples")) || v->valuedouble != id->P)) {
        what = "part_samples";
        WAS_NUM();
        snprintf(now, sizeof now, "%d", id->P);
    }
    if (!what && (!cJSON_IsBool(GET("dedup")) || cJSON_IsTrue(v) != !!j->dedup)) {
        what = "dedup";
        if (cJSON_IsBool(v)) snprintf(was, sizeof was, "%s", cJSON_IsTrue(v) ? "on" : "off");
        snprintf(now, sizeof now, "%s", j->dedup ? "on" : "off");
    }
#undef GET
#undef WAS_NUM
    if (!what) return TP_OK;
    return tp_fail(TP_ERR_ARG, "%s holds a generate-data run made with other settings: %s was %s, now %s. Run with "
                               "its settings to resume it, or restart (--restart) to discard it",
                   dir, what, was, now);
}

/* ---- reading back complete parts ---- */

/* One part's shard, mapped. tp_dataset_open validates the file (magic, version, sizes against
 * the file size, ids below vocab); the dataset API has no per-document access, so the documents
 * are then read where the format (docs/data.md) puts them: header_bytes at byte 12, n_tokens at
 * 16, n_docs at 24, the u32 tokens at header_bytes padded to 8 bytes, then the u64 doc starts. */
typedef struct {
    tp_mmap map;
    const uint32_t *tokens;  /* (n_tokens) */
    const uint64_t *start;   /* (n_docs) */
    size_t n_tokens, n_docs;
    uint32_t vocab;
    uint64_t tok_fp;
} part_docs;

static tp_status part_docs_open(const char *path, part_docs *p) {
    memset(p, 0, sizeof *p);
    tp_dataset *d = NULL;
    tp_status st = tp_dataset_open(path, &d);
    if (st) return st;
    tp_dataset_info info;
    tp_dataset_get_info(d, &info);
    tp_dataset_close(d);
    p->vocab = info.vocab;
    p->tok_fp = info.tok_fingerprint;
    if ((st = tp_mmap_open(path, &p->map))) return st;
    const uint8_t *b = p->map.data;
    uint32_t hb = 0;
    uint64_t nt = 0, nd = 0;
    if (p->map.size >= 64) {
        memcpy(&hb, b + 12, 4);
        memcpy(&nt, b + 16, 8);
        memcpy(&nd, b + 24, 8);
    }
    size_t tok_bytes = ((size_t)nt * 4 + 7) & ~(size_t)7;
    if (p->map.size < 64 || nt > p->map.size / 4 || nd > p->map.size / 8 ||
        (size_t)hb + tok_bytes + (size_t)nd * 8 != p->map.size) {
        tp_mmap_close(&p->map);
        return tp_fail(TP_ERR_FORMAT, "%s: changed while being read", path);
    }
    p->tokens = (const uint32_t *)(b + hb);
    p->start = (const uint64_t *)(b + hb + tok_bytes);
    p->n_tokens = (size_t)nt;
    p->n_docs = (size_t)nd;
    return TP_OK;
}

static size_t doc_len(const part_docs *p, size_t q) {
    return (size_t)((q + 1 < p->n_docs ? p->start[q + 1] : p->n_tokens) - p->start[q]);
}

/* One line of samples.jsonl: the fields resuming needs, and the byte where it starts. */
typedef struct {
    size_t index, prompt_tokens, tokens;
    off_t start;
} line_rec;

static int json_count(const cJSON *o, const char *name, size_t *out) {
    const cJSON *v = cJSON_GetObjectItem(o, name);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 9007199254740992.0) ||
        v->valuedouble != floor(v->valuedouble))
        return 0;
    *out = (size_t)v->valuedouble;
    return 1;
}

/* The lines of path up to the first that is not a whole sample line (one a crash cut short, or
 * anything else); (*out)[*n].start is where that one begins: the end of the readable lines. A
 * missing file has no lines. */
static tp_status read_lines(const char *path, line_rec **out, size_t *n) {
    *n = 0;
    size_t cap = 256;
    line_rec *v = malloc(cap * sizeof *v);
    if (!v) return tp_fail(TP_ERR_NOMEM, "out of memory");
    off_t off = 0;
    FILE *f = fopen(path, "r");
    if (!f && errno != ENOENT) {
        free(v);
        return tp_fail(TP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    char *buf = NULL;
    size_t bcap = 0;
    ssize_t len;
    tp_status st = TP_OK;
    while (f && (len = getline(&buf, &bcap, f)) > 0 && buf[len - 1] == '\n') {
        cJSON *o = cJSON_Parse(buf);
        line_rec r = {0, 0, 0, off};
        int ok = cJSON_IsObject(o) && json_count(o, "index", &r.index) && json_count(o, "prompt_tokens", &r.prompt_tokens) &&
                 json_count(o, "tokens", &r.tokens);
        cJSON_Delete(o);
        if (!ok) break;
        if (*n + 1 == cap) {
            line_rec *nv = realloc(v, 2 * cap * sizeof *nv);
            if (!nv) { st = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
            v = nv;
            cap *= 2;
        }
        v[(*n)++] = r;
        off += len;
    }
    free(buf);
    if (f) fclose(f);
    if (st) {
        free(v);
        return st;
    }
    v[*n].start = off;
    *out = v;
    return TP_OK;
}

/* ---- the job's state ---- */

typedef struct {
    const tp_sdg_job *j;
    const tp_model *m;
    job_ids id;
    int n_parts;                /* parts of the whole job */
    /* the complete parts */
    int parts;
    size_t done, kept, tokens, gen, eos, dropped;
    double seconds_before;      /* generation time the manifest recorded */
    off_t jsonl_end;            /* bytes of samples.jsonl their lines take */
    hash_set seen;              /* dedup: the kept generations */
    /* the part being written */
    FILE *jsonl;
    tp_shard_writer *shard;
    int32_t *doc;               /* prompt then generated ids of one sample */
    size_t doc_cap;
    size_t p_received, p_kept, p_tokens, p_gen, p_eos;
    size_t received;            /* samples the sink got in this call (stop_after_samples) */
    volatile sig_atomic_t test_stop;
} job_ctx;

static tp_status write_manifest(const job_ctx *x, int complete, double seconds) {
    const tp_sdg_job *j = x->j;
    char hex[24];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "format", SDG_FORMAT);
    cJSON_AddNumberToObject(o, "version", SDG_VERSION);
    cJSON_AddBoolToObject(o, "complete", complete);
    cJSON_AddStringToObject(o, "teacher", j->teacher ? j->teacher : "");
    hex64(hex, sizeof hex, x->id.teacher_fp);
    cJSON_AddStringToObject(o, "teacher_fingerprint", hex);
    cJSON_AddNumberToObject(o, "samples", j->samples);
    cJSON_AddNumberToObject(o, "max_tokens", j->max_tokens);
    cJSON_AddNumberToObject(o, "batch", j->batch);
    cJSON_AddStringToObject(o, "precision", tp_precision_name());
    cJSON_AddNumberToObject(o, "temperature", j->temperature);
    cJSON_AddNumberToObject(o, "top_p", j->top_p);
    cJSON_AddNumberToObject(o, "top_k", j->top_k);
    cJSON_AddNumberToObject(o, "seed", (double)j->seed);
    hex64(hex, sizeof hex, j->seed);
    cJSON_AddStringToObject(o, "seed_hex", hex);
    cJSON_AddStringToObject(o, "prompts", j->prompts ? j->prompts : "");
    cJSON_AddNumberToObject(o, "n_prompts", (double)x->id.n_prompts);
    hex64(hex, sizeof hex, x->id.prompts_hash);
    cJSON_AddStringToObject(o, "prompts_hash", hex);
    cJSON_AddBoolToObject(o, "chat", j->chat);
    cJSON_AddNumberToObject(o, "part_samples", x->id.P);
    cJSON_AddBoolToObject(o, "dedup", j->dedup);
    cJSON_AddNumberToObject(o, "parts", x->parts);
    cJSON_AddNumberToObject(o, "samples_done", (double)x->done);
    cJSON_AddNumberToObject(o, "samples_kept", (double)x->kept);
    cJSON_AddNumberToObject(o, "duplicates_dropped", (double)x->dropped);
    cJSON_AddNumberToObject(o, "tokens", (double)x->tokens);
    cJSON_AddNumberToObject(o, "generated_tokens", (double)x->gen);
    cJSON_AddNumberToObject(o, "ended_at_eos", (double)x->eos);
    cJSON_AddNumberToObject(o, "seconds", seconds);
    char *path = tp_path_join(j->out_dir, "manifest.json");
    tp_status st = path ? tp_write_json_atomic(path, o) : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(path);
    cJSON_Delete(o);
    return st;
}

/* Reads back the complete parts of a run whose settings match: part k counts when its shard opens
 * (written with this teacher's tokenizer), covers the samples it would cover now, and
 * samples.jsonl holds exactly its lines next; the first part that fails ends the walk. Sets the
 * totals, the dedup set and where the complete parts' lines end. */
static tp_status read_back(job_ctx *x, const dir_scan *d, const char *jsonl_path) {
    const tp_sdg_job *j = x->j;
    const cJSON *ns = cJSON_GetObjectItem(d->manifest, "samples");
    size_t N = (size_t)j->samples, P = (size_t)x->id.P, n_lines = 0;
    if (!cJSON_IsNumber(ns) || ns->valuedouble < 1 || ns->valuedouble > 1e12)
        return tp_fail(TP_ERR_FORMAT, "%s/manifest.json: field samples: missing or out of range", j->out_dir);
    size_t N_rec = (size_t)ns->valuedouble;
    x->seconds_before = tp_json_number(d->manifest, "seconds");
    if (!(x->seconds_before >= 0)) x->seconds_before = 0;
    line_rec *L = NULL;
    tp_status st = read_lines(jsonl_path, &L, &n_lines);
    if (st) return st;
    size_t li = 0;
    const char *why = NULL;
    for (int k = 0; !st && k < d->n_part && d->part[k]; k++) {
        size_t lo = (size_t)k * P;
        if (lo >= N_rec) break; /* past what the run there was asked for: not one of its parts */
        size_t hi = lo + P < N_rec ? lo + P : N_rec, hi_now = lo + P < N ? lo + P : N;
        if (hi != hi_now) {
            if (N < N_rec) {
                int last = d->n_part - 1; /* the highest part there */
                size_t top = (size_t)(last + 1) * P < N_rec ? (size_t)(last + 1) * P : N_rec;
                st = tp_fail(TP_ERR_ARG, "%s holds a generate-data run of %zu samples whose part %d covers samples "
                                         "%zu..%zu; samples %zu would cut it: ask for at least %zu, or restart "
                                         "(--restart) to discard it",
                             j->out_dir, N_rec, k, lo, hi - 1, N, top);
                break;
            }
            why = "it was the short last part of a smaller run";
            break;
        }
        char name[32], *path;
        snprintf(name, sizeof name, TP_SDG_PART_FMT, k);
        if (!(path = tp_path_join(j->out_dir, name))) { st = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
        part_docs pd;
        tp_status ps = part_docs_open(path, &pd);
        free(path);
        if (ps == TP_ERR_FORMAT) { /* damaged: made again; any other failure (access, memory) stops the job */
            tp_log(TP_LOG_WARN, "generate-data: warning: %s is not a valid shard (%s): it is made again", name,
                   tp_errmsg());
            tp_clear_error();
            break;
        }
        if (ps) {
            st = ps;
            break;
        }
        int ok = pd.vocab == (uint32_t)x->m->cfg.vocab && pd.tok_fp == x->id.tok_fp && li + pd.n_docs <= n_lines;
        for (size_t q = 0; ok && q < pd.n_docs; q++) {
            const line_rec *r = &L[li + q];
            ok = r->index >= lo && r->index < hi && (q == 0 || r->index > r[-1].index) && r->prompt_tokens >= 1 &&
                 r->prompt_tokens + r->tokens == doc_len(&pd, q);
        }
        ok = ok && (li + pd.n_docs == n_lines || L[li + pd.n_docs].index >= hi);
        size_t gen = 0, eos = 0;
        for (size_t q = 0; ok && q < pd.n_docs; q++) {
            const line_rec *r = &L[li + q];
            const uint32_t *g = pd.tokens + pd.start[q] + r->prompt_tokens;
            gen += r->tokens;
            eos += r->tokens && x->m->cfg.eos_id >= 0 && g[r->tokens - 1] == (uint32_t)x->m->cfg.eos_id;
            if (j->dedup && hash_set_add(&x->seen, gen_hash(g, r->tokens)) < 0) {
                st = tp_fail(TP_ERR_NOMEM, "out of memory");
                ok = 0;
            }
        }
        if (ok) {
            x->parts = k + 1;
            x->done = hi;
            x->kept += pd.n_docs;
            x->dropped += (hi - lo) - pd.n_docs;
            x->tokens += pd.n_tokens;
            x->gen += gen;
            x->eos += eos;
            li += pd.n_docs;
        } else if (!st) {
            tp_log(TP_LOG_WARN, "generate-data: warning: %s does not match the lines of samples.jsonl (or the "
                                "teacher's tokenizer): it is made again", name);
        }
        tp_mmap_close(&pd.map);
        if (!ok) break;
    }
    if (!st && why && x->parts < d->n_part && d->part[x->parts]) {
        char name[32];
        snprintf(name, sizeof name, TP_SDG_PART_FMT, x->parts);
        tp_log(TP_LOG_NOTE, "generate-data: note: %s is made again: %s", name, why);
    }
    x->jsonl_end = L[li].start;
    free(L);
    return st;
}

/* Brings out_dir to its complete parts: later parts, stale temporary files and the lines past
 * those parts' in samples.jsonl go. */
static tp_status trim_dir(const job_ctx *x, const dir_scan *d, const char *jsonl_path, int *changed) {
    const char *dir = x->j->out_dir;
    int gone = 0;
    tp_status st = TP_OK;
    for (int k = x->parts; !st && k < d->n_part; k++)
        if (d->part[k]) {
            st = remove_part(dir, k);
            gone++;
        }
    for (size_t i = 0; !st && i < d->n_stale; i++) st = remove_in(dir, d->stale[i]);
    struct stat sb;
    off_t cut = 0;
    if (!st && stat(jsonl_path, &sb) == 0 && sb.st_size != x->jsonl_end) {
        cut = sb.st_size - x->jsonl_end;
        if (truncate(jsonl_path, x->jsonl_end) != 0)
            st = tp_fail(TP_ERR_IO, "%s: cannot truncate: %s", jsonl_path, strerror(errno));
    }
    if (!st && (gone || d->n_stale || cut))
        tp_log(TP_LOG_NOTE, "generate-data: note: removed what an interrupted run left: %d incomplete part%s, %zu "
                            "temporary file%s, %lld bytes of samples.jsonl",
               gone, gone == 1 ? "" : "s", d->n_stale, d->n_stale == 1 ? "" : "s", (long long)cut);
    *changed = gone || d->n_stale || cut;
    return st;
}

/* One sample: unless dedup finds its generation among the kept ones, its document goes into the
 * part's shard and its line into samples.jsonl. */
static tp_status on_sample(void *user, size_t index, const int32_t *prompt, size_t n_prompt, const int32_t *gen,
                           size_t n_gen) {
    job_ctx *x = user;
    const tp_sdg_job *j = x->j;
    x->p_received++;
    if (j->stop_after_samples && (++x->received >= j->stop_after_samples || (j->stop && *j->stop)))
        x->test_stop = 1;
    if (j->dedup) { /* int32 and uint32 may alias */
        int r = hash_set_add(&x->seen, gen_hash((const uint32_t *)gen, n_gen));
        if (r < 0) return tp_fail(TP_ERR_NOMEM, "out of memory");
        if (r == 0) return TP_OK;
    }
    size_t n = n_prompt + n_gen;
    if (n > x->doc_cap) {
        int32_t *d = realloc(x->doc, n * sizeof *d);
        if (!d) return tp_fail(TP_ERR_NOMEM, "out of memory");
        x->doc = d;
        x->doc_cap = n;
    }
    memcpy(x->doc, prompt, n_prompt * sizeof *prompt);
    if (n_gen) memcpy(x->doc + n_prompt, gen, n_gen * sizeof *gen);
    tp_status st = tp_shard_writer_add_doc(x->shard, x->doc, n);
    if (st) return st;
    int eos_hit = n_gen > 0 && gen[n_gen - 1] == x->m->cfg.eos_id;
    x->p_kept++;
    x->p_tokens += n;
    x->p_gen += n_gen;
    x->p_eos += eos_hit;
    char *ptext = NULL, *gtext = NULL;
    size_t pl = 0, gl = 0;
    st = tp_tok_decode(x->m->tok, prompt, n_prompt, 0, &ptext, &pl);
    if (!st) st = tp_tok_decode(x->m->tok, gen, n_gen, 1, &gtext, &gl);
    if (!st) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", (double)index);
        cJSON_AddStringToObject(o, "prompt", ptext);
        cJSON_AddStringToObject(o, "text", gtext);
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)n_prompt);
        cJSON_AddNumberToObject(o, "tokens", (double)n_gen);
        cJSON_AddBoolToObject(o, "eos", eos_hit);
        char *line = cJSON_PrintUnformatted(o);
        if (!line || fprintf(x->jsonl, "%s\n", line) < 0)
            st = tp_fail(TP_ERR_IO, "samples.jsonl: write failed: %s", strerror(errno));
        free(line);
        cJSON_Delete(o);
    }
    free(ptext);
    free(gtext);
    return st;
}

/* Part k is complete: its lines reach the disk, then its shard (renamed into place), then the
 * manifest that counts it. A crash between two steps leaves lines a resume drops, or a shard
 * with its lines that a resume counts. */
static tp_status commit_part(job_ctx *x, size_t lo, size_t n, double seconds) {
    tp_status st = TP_OK;
    if (fflush(x->jsonl) != 0 || fsync(fileno(x->jsonl)) != 0)
        st = tp_fail(TP_ERR_IO, "%s/samples.jsonl: write failed: %s", x->j->out_dir, strerror(errno));
    if (!st) {
        st = tp_shard_writer_close(x->shard, "taper generate-data", NULL);
        x->shard = NULL;
    }
    if (st) return st;
    struct stat sb;
    if (fstat(fileno(x->jsonl), &sb) != 0)
        return tp_fail(TP_ERR_IO, "%s/samples.jsonl: %s", x->j->out_dir, strerror(errno));
    x->jsonl_end = sb.st_size;
    x->parts++;
    x->done = lo + n;
    x->kept += x->p_kept;
    x->dropped += n - x->p_kept;
    x->tokens += x->p_tokens;
    x->gen += x->p_gen;
    x->eos += x->p_eos;
    return write_manifest(x, x->parts == x->n_parts, seconds);
}

/* Makes parts x->parts .. n_parts-1, one tp_sdg_run each (so a part's samples do not depend on
 * where a run started). */
static tp_status make_parts(job_ctx *x, char **prompts, int *stopped, size_t *generated_now, double t0) {
    const tp_sdg_job *j = x->j;
    const tp_model *m = x->m;
    tp_sdg_cfg c = {j->samples, j->max_tokens, j->batch, {j->temperature, j->top_p, j->top_k}, j->seed,
                    (const char *const *)prompts, x->id.n_prompts, j->chat, 0, NULL};
    c.stop = j->stop_after_samples ? &x->test_stop : j->stop;
    size_t N = (size_t)j->samples, P = (size_t)x->id.P;
    tp_progress prog;
    tp_progress_begin(&prog, "sdg", (double)(N - x->done) * j->max_tokens, "tok");
    tp_status st = TP_OK;
    for (int k = x->parts; !st && k < x->n_parts; k++) {
        if (c.stop && *c.stop) {
            *stopped = 1;
            break;
        }
        size_t lo = (size_t)k * P, n = lo + P < N ? P : N - lo;
        char name[32], *path;
        snprintf(name, sizeof name, TP_SDG_PART_FMT, k);
        if (!(path = tp_path_join(j->out_dir, name))) { st = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
        st = tp_shard_writer_open(path, (uint32_t)m->cfg.vocab, -1, -1, x->id.tok_fp, &x->shard);
        free(path);
        if (st) break;
        x->p_received = x->p_kept = x->p_tokens = x->p_gen = x->p_eos = 0;
        c.first = lo;
        c.samples = (int)n;
        st = tp_sdg_run(m, &c, on_sample, x, &prog);
        if (!st && x->p_received < n) { /* stopped inside the part: it is dropped */
            *stopped = 1;
            break;
        }
        if (!st) st = commit_part(x, lo, n, x->seconds_before + tp_time_s() - t0);
        if (!st) *generated_now += x->p_gen;
    }
    tp_progress_end(&prog);
    if (x->shard) { /* an incomplete part: its shard was never written; its lines go */
        tp_shard_writer_abort(x->shard);
        x->shard = NULL;
        if (fflush(x->jsonl) != 0 || ftruncate(fileno(x->jsonl), x->jsonl_end) != 0)
            if (!st) st = tp_fail(TP_ERR_IO, "%s/samples.jsonl: cannot drop the incomplete part's lines: %s",
                                  j->out_dir, strerror(errno));
    }
    return st;
}

/* Looks at out_dir: starts afresh, resumes, or refuses (see tp_sdg_job). *changed: something was
 * removed or the run there was not recorded as complete. */
static tp_status prepare_dir(job_ctx *x, const char *jsonl_path, int *changed) {
    const tp_sdg_job *j = x->j;
    dir_scan d;
    tp_status st = scan_dir(j->out_dir, &d);
    *changed = 1;
    if (st) return st;
    if (d.kind == MAN_NONE && d.any_part && !j->restart)
        st = tp_fail(TP_ERR_ARG, "%s holds sdg-*.tpt shards but no manifest.json, so it cannot be resumed: restart "
                                 "(--restart) to replace them, or choose another directory",
                     j->out_dir);
    else if (d.kind == MAN_LEGACY && !j->restart)
        st = tp_fail(TP_ERR_ARG, "%s holds a generate-data run of an older taper, which cannot be resumed: restart "
                                 "(--restart) to replace it, or choose another directory",
                     j->out_dir);
    else if (d.kind == MAN_OURS && !j->restart && d.any_part) {
        double ver = tp_json_number(d.manifest, "version");
        if (!(ver >= 1 && ver <= SDG_VERSION))
            st = tp_fail(TP_ERR_FORMAT, "%s/manifest.json: field version: %g is not one this build reads (1..%d)",
                         j->out_dir, ver, SDG_VERSION);
        if (!st) st = check_settings(j, &x->id, d.manifest, j->out_dir);
        if (!st) st = read_back(x, &d, jsonl_path);
        if (!st) st = trim_dir(x, &d, jsonl_path, changed);
        if (!st) {
            const cJSON *c = cJSON_GetObjectItem(d.manifest, "complete");
            double b = tp_json_number(d.manifest, "batch"), ns = tp_json_number(d.manifest, "samples");
            const cJSON *pr = cJSON_GetObjectItem(d.manifest, "precision");
            *changed |= !cJSON_IsTrue(c) || ns != j->samples || x->done < (size_t)j->samples;
            if (x->parts && x->done < (size_t)j->samples && b != j->batch)
                tp_log(TP_LOG_NOTE, "generate-data: note: batch %d, the earlier parts were made with batch %g (the "
                                    "batch changes the float rounding of the products, so samples can differ from "
                                    "an uninterrupted run's)", j->batch, b);
            if (x->parts && x->done < (size_t)j->samples && cJSON_IsString(pr) &&
                strcmp(pr->valuestring, tp_precision_name()))
                tp_log(TP_LOG_NOTE, "generate-data: note: precision %s, the earlier parts were made under %s",
                       tp_precision_name(), pr->valuestring);
        }
    } else { /* a fresh start, --restart, or a run stopped before its first part: what it wrote goes */
        st = wipe_dir(j->out_dir, &d);
    }
    dir_scan_free(&d);
    return st;
}

/* The job once its settings are checked, its prompts read and the teacher loaded. */
static tp_status run_job(const tp_sdg_job *j, const tp_model *m, char **prompts, size_t n_prompts,
                         tp_sdg_job_result *res) {
    const char *name = j->teacher ? j->teacher : "the teacher";
    if (!m->tok) return tp_fail(TP_ERR_ARG, "%s has no tokenizer: SDG needs one", name);
    if (tp_mkdir_p(j->out_dir) != 0) return tp_fail(TP_ERR_IO, "%s: cannot create: %s", j->out_dir, strerror(errno));
    /* one job per directory at a time */
    int dfd = open(j->out_dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0) return tp_fail(TP_ERR_IO, "%s: cannot open: %s", j->out_dir, strerror(errno));
    if (flock(dfd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) { /* no locks at all (some NFS): go on */
        close(dfd);
        return tp_fail(TP_ERR_IO, "%s is being written by another generate-data job", j->out_dir);
    }
    job_ctx x;
    memset(&x, 0, sizeof x);
    x.j = j;
    x.m = m;
    x.id.teacher_fp = teacher_fingerprint(m);
    x.id.tok_fp = tp_shard_tok_fingerprint(m->tok);
    x.id.prompts_hash = prompts_hash(prompts, n_prompts);
    x.id.n_prompts = n_prompts;
    x.id.P = part_size(j);
    x.n_parts = (int)(((long long)j->samples + x.id.P - 1) / x.id.P);
    char *jsonl_path = tp_path_join(j->out_dir, "samples.jsonl");
    tp_status st = jsonl_path ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    int changed = 1, stopped = 0;
    size_t generated_now = 0;
    double t0 = tp_time_s();
    if (!st) st = prepare_dir(&x, jsonl_path, &changed);
    int parts_before = x.parts;
    if (!st && x.done == (size_t)j->samples) {
        if (changed) st = write_manifest(&x, 1, x.seconds_before);
        tp_log(TP_LOG_INFO, "generate-data: %s is complete (%zu samples in %d part%s): nothing to do", j->out_dir,
               x.done, x.parts, x.parts == 1 ? "" : "s");
    } else if (!st) {
        if (x.parts)
            tp_log(TP_LOG_INFO, "generate-data: resuming %s after part %d: %zu samples done (%zu kept), %zu to go",
                   j->out_dir, x.parts - 1, x.done, x.kept, (size_t)j->samples - x.done);
        tp_log(TP_LOG_INFO, "generate-data: %d samples x up to %d tokens in parts of %d, batch %d, temperature %g, "
                            "top-p %g, %s%s",
               j->samples, j->max_tokens, x.id.P, j->batch, j->temperature, j->top_p,
               n_prompts ? "prompts in turn" : "from BOS", j->dedup ? ", dedup" : "");
        x.jsonl = fopen(jsonl_path, x.parts ? "a" : "w");
        if (!x.jsonl) st = tp_fail(TP_ERR_IO, "%s: cannot open: %s", jsonl_path, strerror(errno));
        if (!st) st = write_manifest(&x, 0, x.seconds_before);
        if (!st) st = make_parts(&x, prompts, &stopped, &generated_now, t0);
        if (x.jsonl && fclose(x.jsonl) && !st) st = tp_fail(TP_ERR_IO, "%s: write failed: %s", jsonl_path, strerror(errno));
    }
    if (res) {
        res->samples = (int)x.kept;
        res->tokens = x.tokens;
        res->generated_tokens = x.gen;
        res->ended_at_eos = x.eos;
        res->duplicates_dropped = x.dropped;
        res->samples_done = x.done;
        res->parts = x.parts;
        res->parts_before = parts_before;
        res->complete = !st && x.done == (size_t)j->samples;
        res->stopped = stopped;
        res->generated_now = generated_now;
        res->seconds = tp_time_s() - t0;
    }
    free(x.seen.slot);
    free(x.doc);
    free(jsonl_path);
    close(dfd); /* and its lock */
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
    if (!st) st = tp_model_prepare_precision(m, 1); /* bf16: weights converted once, not per product */
    if (!st) st = run_job(j, m, prompts, n_prompts, res);
    tp_model_free(m);
    free_prompts(prompts, n_prompts);
    return st;
}

void tp_sdg_job_result_free(tp_sdg_job_result *res) {
    if (res) memset(res, 0, sizeof *res);
}
