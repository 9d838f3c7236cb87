/* taper ppl MODEL --data FILE: perplexity under the two protocols people quote. Options -> tp_ppl_job
 * (src/eval/eval_job.c) -> the table. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "taper/eval.h"

static const char *HELP =
    "usage: taper ppl MODEL --data FILE [--ctx 512] [--max-chunks N] [--precision P] [--stream]\n"
    "                 [--logits FILE] [--threads N] [--json[=FILE]]\n\n"
    "Tokenizes the whole text file (as bytes, no BOS) and reports perplexity under two protocols:\n"
    "  chunks     non-overlapping ctx-token chunks, last partial chunk dropped, every token after the\n"
    "             first of each chunk scored (GPTQ / Wanda / SparseGPT papers)\n"
    "  llama.cpp  llama-perplexity's scoring: same chunks (with BOS first and written over each chunk's\n"
    "             first token if the tokenizer adds BOS), only the second half of each chunk scored\n\n"
    "  --data FILE      text to score (e.g. wikitext2/wiki.test.raw)\n"
    "  --ctx N          tokens per chunk (default 512)\n"
    "  --max-chunks N   score only the first N chunks (default: all)\n"
    "  --precision P    fp32 (default) or bf16 (weight products with bf16 inputs, fp32 accumulation)\n"
    "  --stream         read the weights a layer at a time instead of loading the model (for models\n"
    "                   larger than memory; every chunk reads the whole file once: slow)\n"
    "  --logits FILE    also write the first chunk's logits (ctx tokens, no BOS) as raw float32,\n"
    "                   ctx x vocab, to compare with another runtime\n"
    "  --threads N      OpenMP threads (default: all cores)\n"
    "  --json[=FILE]    also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help       this help\n";

int cmd_ppl(int argc, char **argv) {
    static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                         {"ctx", required_argument, 0, 'c'},
                                         {"max-chunks", required_argument, 0, 'm'},
                                         {"threads", required_argument, 0, 't'},
                                         {"precision", required_argument, 0, 'P'},
                                         {"stream", no_argument, 0, 's'},
                                         {"logits", required_argument, 0, 'L'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    tp_ppl_job job;
    tp_ppl_job_default(&job);
    const char *json = NULL;
    int max_chunks = 0, threads = 0, c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'd': job.data = optarg; break;
        case 'c': if ((rc = cli_int("ppl", "--ctx", optarg, 4, 1 << 20, &job.ctx))) return rc; break;
        case 'm': if ((rc = cli_int("ppl", "--max-chunks", optarg, 0, 1 << 30, &max_chunks))) return rc; break;
        case 't': if ((rc = cli_int("ppl", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'P': if ((rc = cli_precision("ppl", optarg))) return rc; break;
        case 'j': json = optarg ? optarg : "-"; break;
        case 's': job.stream = 1; break;
        case 'L': job.logits_path = optarg; break;
        default: return cli_usage("ppl", "unknown option");
        }
    }
    if (optind != argc - 1) return cli_usage("ppl", "expects exactly one MODEL");
    if (!job.data) return cli_usage("ppl", "--data FILE is required");
    cli_set_threads(threads);
    job.model = argv[optind];
    job.max_chunks = (size_t)max_chunks;
    if (json && strcmp(json, "-")) job.json_path = json;
    tp_ppl_job_result r;
    tp_status s = tp_ppl_job_run(&job, &r);
    if (s) return cli_error(s);
    printf("model    %s\ndata     %s (%zu bytes, %zu tokens)\nctx      %d\n\n", job.model, job.data, r.bytes, r.tokens,
           r.ctx);
    printf("%-10s %10s %8s %10s %12s  %s\n", "protocol", "ppl", "chunks", "scored", "tokens/s", "definition");
    for (int p = 0; p < 2; p++)
        printf("%-10s %10.4f %8zu %10zu %12.1f  %s\n", tp_ppl_protocol_name((tp_ppl_protocol)p), r.r[p].ppl,
               r.r[p].n_chunks, r.r[p].n_scored, r.r[p].tokens_per_s, tp_ppl_protocol_desc((tp_ppl_protocol)p));
    if (json && !job.json_path) {
        cJSON *j = tp_ppl_job_json(&job, &r);
        return j ? cli_json_out(j, "-") : cli_error(tp_fail(TP_ERR_NOMEM, "out of memory building the JSON"));
    }
    return CLI_OK;
}
