/* taper ppl MODEL --data FILE: perplexity under the two protocols people quote. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/eval.h"
#include "taper/model.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper ppl MODEL --data FILE [--ctx 512] [--max-chunks N] [--precision P] [--threads N]\n"
    "                 [--json[=FILE]]\n\n"
    "Tokenizes the whole text file (as bytes, no BOS) and reports perplexity under two protocols:\n"
    "  chunks     non-overlapping ctx-token chunks, last partial chunk dropped, every token after the\n"
    "             first of each chunk scored (GPTQ / Wanda / SparseGPT papers)\n"
    "  llama.cpp  llama-perplexity's scoring: same chunks (with BOS first and written over each chunk's\n"
    "             first token if the tokenizer adds BOS), only the second half of each chunk scored\n\n"
    "  --data FILE      text to score (e.g. wikitext2/wiki.test.raw)\n"
    "  --ctx N          tokens per chunk (default 512)\n"
    "  --max-chunks N   score only the first N chunks (default: all)\n"
    "  --precision P    fp32 (default) or bf16 (weight products with bf16 inputs, fp32 accumulation)\n"
    "  --threads N      OpenMP threads (default: all cores)\n"
    "  --json[=FILE]    also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help       this help\n";

int cmd_ppl(int argc, char **argv) {
    static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                         {"ctx", required_argument, 0, 'c'},
                                         {"max-chunks", required_argument, 0, 'm'},
                                         {"threads", required_argument, 0, 't'},
                                         {"precision", required_argument, 0, 'P'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *data = NULL, *json = NULL;
    int ctx = 512, max_chunks = 0, threads = 0, c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'd': data = optarg; break;
        case 'c': if ((rc = cli_int("ppl", "--ctx", optarg, 4, 1 << 20, &ctx))) return rc; break;
        case 'm': if ((rc = cli_int("ppl", "--max-chunks", optarg, 0, 1 << 30, &max_chunks))) return rc; break;
        case 't': if ((rc = cli_int("ppl", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'P': if ((rc = cli_precision("ppl", optarg))) return rc; break;
        case 'j': json = optarg ? optarg : "-"; break;
        default: return cli_usage("ppl", "unknown option");
        }
    }
    if (optind != argc - 1) return cli_usage("ppl", "expects exactly one MODEL");
    if (!data) return cli_usage("ppl", "--data FILE is required");
    cli_set_threads(threads);
    tp_model *m = NULL;
    tp_status s = tp_model_load(argv[optind], &m);
    if (!s) s = tp_model_prepare_precision(m, 1);
    if (s) {
        tp_model_free(m);
        return cli_error(s);
    }
    if (!m->tok) {
        tp_model_free(m);
        return cli_error(tp_fail(TP_ERR_ARG, "%s has no tokenizer (tokenizer.json)", argv[optind]));
    }
    if (ctx > m->cfg.max_pos) {
        fprintf(stderr, "taper ppl: warning: --ctx %d exceeds the model's context %d\n", ctx, m->cfg.max_pos);
    }
    char *text = NULL;
    size_t len = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    if ((s = tp_read_file(data, &text, &len)) || (s = tp_tok_encode(m->tok, text, len, 0, &ids, &n))) {
        free(text);
        tp_model_free(m);
        return cli_error(s);
    }
    free(text);
    int32_t bos = tp_tok_adds_bos(m->tok) ? tp_tok_bos(m->tok) : -1;
    size_t chunks = n / (size_t)ctx;
    if (max_chunks && chunks > (size_t)max_chunks) chunks = (size_t)max_chunks;
    tp_progress prog;
    tp_progress_begin(&prog, "ppl", (double)(chunks * (size_t)ctx * (bos >= 0 ? 2 : 1)), "tok");
    tp_ppl_result r[2];
    s = tp_perplexity(m, ids, n, ctx, bos, (size_t)max_chunks, &prog, r);
    tp_progress_end(&prog);
    free(ids);
    if (s) {
        tp_model_free(m);
        return cli_error(s);
    }
    printf("model    %s\ndata     %s (%zu bytes, %zu tokens)\nctx      %d\n\n", argv[optind], data, len, n, ctx);
    printf("%-10s %10s %8s %10s %12s  %s\n", "protocol", "ppl", "chunks", "scored", "tokens/s", "definition");
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", argv[optind]);
    cJSON_AddStringToObject(j, "data", data);
    cJSON_AddNumberToObject(j, "bytes", (double)len);
    cJSON_AddNumberToObject(j, "tokens", (double)n);
    cJSON_AddNumberToObject(j, "ctx", ctx);
    cJSON *arr = cJSON_AddArrayToObject(j, "results");
    for (int p = 0; p < 2; p++) {
        printf("%-10s %10.4f %8zu %10zu %12.1f  %s\n", tp_ppl_protocol_name((tp_ppl_protocol)p), r[p].ppl,
               r[p].n_chunks, r[p].n_scored, r[p].tokens_per_s, tp_ppl_protocol_desc((tp_ppl_protocol)p));
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "protocol", tp_ppl_protocol_name((tp_ppl_protocol)p));
        cJSON_AddStringToObject(o, "definition", tp_ppl_protocol_desc((tp_ppl_protocol)p));
        cJSON_AddNumberToObject(o, "ppl", r[p].ppl);
        cJSON_AddNumberToObject(o, "nll_sum", r[p].nll_sum);
        cJSON_AddNumberToObject(o, "scored_tokens", (double)r[p].n_scored);
        cJSON_AddNumberToObject(o, "chunks", (double)r[p].n_chunks);
        cJSON_AddNumberToObject(o, "seconds", r[p].seconds);
        cJSON_AddNumberToObject(o, "tokens_per_s", r[p].tokens_per_s);
        cJSON_AddStringToObject(o, "precision", tp_precision_name());
        cJSON_AddItemToArray(arr, o);
    }
    tp_model_free(m);
    if (json) return cli_json_out(j, json);
    cJSON_Delete(j);
    return CLI_OK;
}
