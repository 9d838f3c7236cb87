/* taper generate MODEL --prompt TEXT: greedy or sampled generation, streamed to stdout. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/generate.h"
#include "taper/model.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper generate MODEL --prompt TEXT [options]\n\n"
    "Generates a continuation of TEXT and streams it to stdout.\n\n"
    "  --prompt TEXT        the prompt (UTF-8)\n"
    "  --chat               wrap the prompt as one user turn of a ChatML chat (<|im_start|>...), as\n"
    "                       instruct models such as SmolLM2-Instruct expect\n"
    "  --max-tokens N       tokens to generate (default 64)\n"
    "  --temperature T      0 = greedy (default 0)\n"
    "  --top-p P            nucleus sampling (default 1 = off)\n"
    "  --top-k K            keep the K most likely tokens (default 0 = off)\n"
    "  --seed S             random seed for sampling (default 0)\n"
    "  --ignore-eos         keep going after the end-of-sequence token\n"
    "  --threads N          OpenMP threads (default: all cores)\n"
    "  --json[=FILE]        also write prompt ids, generated ids and text as JSON (stdout, or FILE)\n"
    "  -h, --help           this help\n";

typedef struct {
    const tp_tokenizer *tok;
    int32_t *ids;
    size_t n, cap;
    size_t printed; /* bytes of the decoded text already written */
    int stream;
} stream_state;

/* Decodes everything generated so far and prints the new complete characters (an incomplete
 * UTF-8 sequence at the end decodes to U+FFFD and is held back until it completes). */
static int on_token(int32_t id, void *user) {
    stream_state *st = user;
    if (st->n == st->cap) {
        st->cap = st->cap ? 2 * st->cap : 64;
        int32_t *p = realloc(st->ids, st->cap * sizeof *p);
        if (!p) return 1;
        st->ids = p;
    }
    st->ids[st->n++] = id;
    if (!st->stream) return 0;
    char *text = NULL;
    size_t len = 0;
    if (tp_tok_decode(st->tok, st->ids, st->n, 1, &text, &len)) return 0;
    size_t upto = len;
    if (len >= 3 && memcmp(text + len - 3, "\xef\xbf\xbd", 3) == 0) upto = len - 3;
    if (upto > st->printed) {
        fwrite(text + st->printed, 1, upto - st->printed, stdout);
        fflush(stdout);
        st->printed = upto;
    }
    free(text);
    return 0;
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"prompt", required_argument, 0, 'p'},      {"chat", no_argument, 0, 'C'},
        {"max-tokens", required_argument, 0, 'n'},  {"temperature", required_argument, 0, 'T'},
        {"top-p", required_argument, 0, 'P'},       {"top-k", required_argument, 0, 'K'},
        {"seed", required_argument, 0, 's'},        {"ignore-eos", no_argument, 0, 'E'},
        {"threads", required_argument, 0, 't'},     {"json", optional_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},              {0, 0, 0, 0}};
    const char *prompt = NULL, *json = NULL;
    int max_new = 64, seed = 0, threads = 0, chat = 0, ignore_eos = 0, c, rc;
    tp_sampler smp = {0.0f, 1.0f, 0};
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'p': prompt = optarg; break;
        case 'C': chat = 1; break;
        case 'E': ignore_eos = 1; break;
        case 'n': if ((rc = cli_int("generate", "--max-tokens", optarg, 0, 1 << 20, &max_new))) return rc; break;
        case 'T': if ((rc = cli_float("generate", "--temperature", optarg, 0, 100, &smp.temperature))) return rc; break;
        case 'P': if ((rc = cli_float("generate", "--top-p", optarg, 0, 1, &smp.top_p))) return rc; break;
        case 'K': if ((rc = cli_int("generate", "--top-k", optarg, 0, 1 << 24, &smp.top_k))) return rc; break;
        case 's': if ((rc = cli_int("generate", "--seed", optarg, 0, 2147483647, &seed))) return rc; break;
        case 't': if ((rc = cli_int("generate", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'j': json = optarg ? optarg : "-"; break;
        default: return cli_usage("generate", "unknown option");
        }
    }
    if (optind != argc - 1) return cli_usage("generate", "expects exactly one MODEL");
    if (!prompt) return cli_usage("generate", "--prompt TEXT is required");
    cli_set_threads(threads);
    tp_model *m = NULL;
    tp_status s = tp_model_load(argv[optind], &m);
    if (s) return cli_error(s);
    if (!m->tok) {
        tp_model_free(m);
        return cli_error(tp_fail(TP_ERR_ARG, "%s has no tokenizer (tokenizer.json)", argv[optind]));
    }
    char *text = NULL;
    if (chat) {
        const char *fmt = "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n";
        size_t n = strlen(fmt) + strlen(prompt) + 1;
        text = malloc(n);
        if (text) snprintf(text, n, fmt, prompt);
    } else {
        text = strdup(prompt);
    }
    int32_t *ids = NULL, *gen = NULL;
    size_t n_ids = 0, n_gen = 0;
    stream_state st = {m->tok, NULL, 0, 0, 0, json == NULL || strcmp(json, "-") != 0};
    tp_rng rng;
    tp_rng_seed(&rng, (uint64_t)seed);
    double t0 = tp_time_s();
    if (!text) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s) s = tp_tok_encode(m->tok, text, strlen(text), 1, &ids, &n_ids);
    if (!s && n_ids == 0) s = tp_fail(TP_ERR_ARG, "the prompt encodes to no tokens");
    if (!s)
        s = tp_generate(m, ids, n_ids, max_new, ignore_eos ? -1 : m->cfg.eos_id, &smp, &rng, on_token, &st, &gen,
                        &n_gen);
    double el = tp_time_s() - t0;
    if (st.stream) putchar('\n');
    if (!s) fprintf(stderr, "[%zu prompt + %zu generated tokens in %.2f s, %.1f tok/s]\n", n_ids, n_gen, el,
                    (double)n_gen / (el > 0 ? el : 1));
    cJSON *j = NULL;
    if (!s && json) {
        char *out = NULL;
        size_t out_len = 0;
        if (!(s = tp_tok_decode(m->tok, gen, n_gen, 0, &out, &out_len))) {
            j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "prompt", text);
            cJSON_AddItemToObject(j, "prompt_ids", cJSON_CreateIntArray(ids, (int)n_ids));
            cJSON_AddItemToObject(j, "generated_ids", cJSON_CreateIntArray(gen, (int)n_gen));
            cJSON_AddStringToObject(j, "text", out);
            cJSON_AddNumberToObject(j, "temperature", smp.temperature);
            cJSON_AddNumberToObject(j, "top_p", smp.top_p);
            cJSON_AddNumberToObject(j, "top_k", smp.top_k);
            cJSON_AddNumberToObject(j, "seed", seed);
            cJSON_AddNumberToObject(j, "seconds", el);
        }
        free(out);
    }
    free(text);
    free(ids);
    free(gen);
    free(st.ids);
    tp_model_free(m);
    if (s) {
        cJSON_Delete(j);
        return cli_error(s);
    }
    return j ? cli_json_out(j, json) : CLI_OK;
}
