/* taper generate-data TEACHER -o OUT_DIR: synthetic data generation (SDG). The teacher samples a
 * corpus; it is written as a token shard (OUT_DIR/sdg-00000.tpt, ready for `taper train --data`)
 * and as readable JSONL (OUT_DIR/samples.jsonl). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "taper/sdg.h"
#include "taper/train.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper generate-data TEACHER -o OUT_DIR [options]\n\n"
    "Synthetic data generation: TEACHER (GGUF or HF folder) samples --samples texts. Writes\n"
    "OUT_DIR/sdg-00000.tpt (one document per sample: its prompt tokens then the generated ones,\n"
    "exactly as the model saw them; usable with `taper train --data OUT_DIR`), OUT_DIR/samples.jsonl\n"
    "(prompt, text, token counts, one line per sample) and OUT_DIR/manifest.json (the settings).\n\n"
    "  -o, --output DIR     where the files go (created)\n"
    "  --samples N          number of samples (default 64)\n"
    "  --max-tokens N       generated tokens per sample at most; a sample ends early at EOS (default 256)\n"
    "  --batch N            samples generated together (default 16); the output depends on it\n"
    "  --temperature T      sampling temperature, 0 = greedy (default 1.0)\n"
    "  --top-p P            nucleus sampling (default 0.95)\n"
    "  --top-k K            keep the K most likely tokens (default 0 = off)\n"
    "  --seed S             random seed (default 0); each sample has its own stream\n"
    "  --prompts FILE       prompts, one per line (blank lines skipped), used in turn; without it\n"
    "                       every sample starts from BOS alone\n"
    "  --chat               wrap each prompt as one ChatML user turn (instruct models)\n"
    "  --threads N          OpenMP threads (default: all cores)\n"
    "  -h, --help           this help\n";

typedef struct {
    const tp_model *m;
    FILE *jsonl;
    uint32_t *tokens;
    size_t n_tokens, cap;
    uint64_t *doc_start;
    size_t n_docs, doc_cap;
    size_t gen_tokens, finished;
} sink_state;

static tp_status on_sample(void *user, size_t index, const int32_t *prompt, size_t n_prompt, const int32_t *gen,
                           size_t n_gen) {
    sink_state *s = user;
    size_t need = s->n_tokens + n_prompt + n_gen;
    if (need > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < need) cap *= 2;
        uint32_t *t = realloc(s->tokens, cap * sizeof *t);
        if (!t) return tp_fail(TP_ERR_NOMEM, "out of memory");
        s->tokens = t;
        s->cap = cap;
    }
    if (s->n_docs == s->doc_cap) {
        size_t cap = s->doc_cap ? 2 * s->doc_cap : 256;
        uint64_t *d = realloc(s->doc_start, cap * sizeof *d);
        if (!d) return tp_fail(TP_ERR_NOMEM, "out of memory");
        s->doc_start = d;
        s->doc_cap = cap;
    }
    s->doc_start[s->n_docs++] = s->n_tokens;
    for (size_t i = 0; i < n_prompt; i++) s->tokens[s->n_tokens++] = (uint32_t)prompt[i];
    for (size_t i = 0; i < n_gen; i++) s->tokens[s->n_tokens++] = (uint32_t)gen[i];
    s->gen_tokens += n_gen;
    int eos_hit = n_gen > 0 && gen[n_gen - 1] == s->m->cfg.eos_id;
    s->finished += eos_hit;
    char *ptext = NULL, *gtext = NULL;
    size_t pl = 0, gl = 0;
    tp_status st = tp_tok_decode(s->m->tok, prompt, n_prompt, 0, &ptext, &pl);
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

static int read_prompts(const char *path, char ***out, size_t *n) {
    char *text = NULL;
    size_t len = 0;
    if (tp_read_file(path, &text, &len)) return cli_error(tp_fail_ctx(TP_ERR_IO, "--prompts: "));
    char **v = NULL;
    size_t k = 0, cap = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        size_t l = strlen(line);
        if (l && line[l - 1] == '\r') line[--l] = 0;
        int blank = 1;
        for (size_t i = 0; i < l; i++) blank &= line[i] == ' ' || line[i] == '\t';
        if (blank) continue;
        if (k == cap) {
            cap = cap ? 2 * cap : 64;
            char **nv = realloc(v, cap * sizeof *nv);
            if (!nv) break;
            v = nv;
        }
        v[k++] = strdup(line);
    }
    free(text);
    if (k == 0) {
        free(v);
        return cli_error(tp_fail(TP_ERR_ARG, "%s holds no prompts (one per line)", path));
    }
    *out = v;
    *n = k;
    return CLI_OK;
}

int cmd_generate_data(int argc, char **argv) {
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'},    {"samples", required_argument, 0, 'n'},
        {"max-tokens", required_argument, 0, 'm'},{"batch", required_argument, 0, 'b'},
        {"temperature", required_argument, 0, 't'},{"top-p", required_argument, 0, 'p'},
        {"top-k", required_argument, 0, 'k'},     {"seed", required_argument, 0, 's'},
        {"prompts", required_argument, 0, 'P'},   {"chat", no_argument, 0, 'C'},
        {"threads", required_argument, 0, 'j'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *cmd = "generate-data", *out_dir = NULL, *prompts_path = NULL;
    tp_sdg_cfg c = {64, 256, 16, {1.0f, 0.95f, 0}, 0, NULL, 0, 0};
    int threads = 0, seed = 0, ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        int rc = CLI_OK;
        switch (ch) {
        case 'o': out_dir = optarg; break;
        case 'n': rc = cli_int(cmd, "--samples", optarg, 1, 100000000, &c.samples); break;
        case 'm': rc = cli_int(cmd, "--max-tokens", optarg, 1, 1000000, &c.max_tokens); break;
        case 'b': rc = cli_int(cmd, "--batch", optarg, 1, 4096, &c.batch); break;
        case 't': rc = cli_float(cmd, "--temperature", optarg, 0, 100, &c.sampler.temperature); break;
        case 'p': rc = cli_float(cmd, "--top-p", optarg, 1e-6, 1, &c.sampler.top_p); break;
        case 'k': rc = cli_int(cmd, "--top-k", optarg, 0, 1000000, &c.sampler.top_k); break;
        case 's': rc = cli_int(cmd, "--seed", optarg, 0, 2147483647, &seed); break;
        case 'P': prompts_path = optarg; break;
        case 'C': c.chat = 1; break;
        case 'j': rc = cli_int(cmd, "--threads", optarg, 1, 1024, &threads); break;
        case 'h': fputs(HELP, stdout); return CLI_OK;
        default: return cli_usage(cmd, "unknown option (see taper generate-data --help)");
        }
        if (rc) return rc;
    }
    if (optind != argc - 1) return cli_usage(cmd, "expected one TEACHER model (see taper generate-data --help)");
    if (!out_dir) return cli_usage(cmd, "-o OUT_DIR is required");
    c.seed = (uint64_t)seed;
    if (threads) cli_set_threads(threads);
    char **prompts = NULL;
    size_t n_prompts = 0;
    if (prompts_path) {
        int rc = read_prompts(prompts_path, &prompts, &n_prompts);
        if (rc) return rc;
    }
    c.prompts = (const char *const *)prompts;
    c.n_prompts = n_prompts;
    tp_model *m = NULL;
    tp_status st = tp_model_load(argv[optind], &m);
    if (!st && !m->tok) st = tp_fail(TP_ERR_ARG, "%s has no tokenizer: SDG needs one", argv[optind]);
    if (!st && mkdir(out_dir, 0777) && errno != EEXIST) st = tp_fail(TP_ERR_IO, "%s: cannot create: %s", out_dir, strerror(errno));
    char path[4096];
    sink_state s = {m, NULL, NULL, 0, 0, NULL, 0, 0, 0, 0};
    if (!st) {
        snprintf(path, sizeof path, "%s/samples.jsonl", out_dir);
        s.jsonl = fopen(path, "w");
        if (!s.jsonl) st = tp_fail(TP_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    double t0 = tp_time_s();
    if (!st) {
        fprintf(stderr, "generate-data: %d samples x up to %d tokens, batch %d, temperature %g, top-p %g, %s\n",
                c.samples, c.max_tokens, c.batch, c.sampler.temperature, c.sampler.top_p,
                n_prompts ? "prompts in turn" : "from BOS");
        tp_progress prog;
        tp_progress_begin(&prog, "sdg", (double)c.samples * c.max_tokens, "tok");
        st = tp_sdg_run(m, &c, on_sample, &s, &prog);
        tp_progress_end(&prog);
    }
    if (s.jsonl) fclose(s.jsonl);
    if (!st) {
        snprintf(path, sizeof path, "%s/sdg-00000.tpt", out_dir);
        st = tp_shard_write_ex(path, s.tokens, s.n_tokens, s.doc_start, s.n_docs, (uint32_t)m->cfg.vocab, -1, -1,
                               tp_shard_tok_fingerprint(m->tok), "taper generate-data");
    }
    double el = tp_time_s() - t0;
    if (!st) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "teacher", argv[optind]);
        cJSON_AddNumberToObject(j, "samples", c.samples);
        cJSON_AddNumberToObject(j, "max_tokens", c.max_tokens);
        cJSON_AddNumberToObject(j, "batch", c.batch);
        cJSON_AddNumberToObject(j, "temperature", c.sampler.temperature);
        cJSON_AddNumberToObject(j, "top_p", c.sampler.top_p);
        cJSON_AddNumberToObject(j, "top_k", c.sampler.top_k);
        cJSON_AddNumberToObject(j, "seed", seed);
        cJSON_AddStringToObject(j, "prompts", prompts_path ? prompts_path : "");
        cJSON_AddBoolToObject(j, "chat", c.chat);
        cJSON_AddNumberToObject(j, "tokens", (double)s.n_tokens);
        cJSON_AddNumberToObject(j, "generated_tokens", (double)s.gen_tokens);
        cJSON_AddNumberToObject(j, "ended_at_eos", (double)s.finished);
        cJSON_AddNumberToObject(j, "seconds", el);
        snprintf(path, sizeof path, "%s/manifest.json", out_dir);
        int rc = cli_json_out(j, path);
        if (rc) st = TP_ERR_IO;
        else
            printf("generate-data: %d samples, %zu generated tokens (%zu ended at EOS), %zu tokens in %s/sdg-00000.tpt, "
                   "%.1f s (%.1f tok/s)\n",
                   c.samples, s.gen_tokens, s.finished, s.n_tokens, out_dir, el, el > 0 ? s.gen_tokens / el : 0.0);
    }
    for (size_t i = 0; i < n_prompts; i++) free(prompts[i]);
    free(prompts);
    free(s.tokens);
    free(s.doc_start);
    tp_model_free(m);
    return st ? cli_error(st) : CLI_OK;
}
