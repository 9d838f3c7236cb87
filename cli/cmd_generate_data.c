/* taper generate-data TEACHER -o OUT_DIR: synthetic data generation (SDG). The teacher samples a
 * corpus; it is written as a token shard (OUT_DIR/sdg-00000.tpt, ready for `taper train --data`)
 * and as readable JSONL (OUT_DIR/samples.jsonl). Options are parsed here; the work is
 * tp_sdg_job_run (src/train/sdg.c). */
#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "taper/sdg.h"

static const char *HELP =
    "usage: taper generate-data TEACHER -o OUT_DIR [options]\n\n"
    "Synthetic data generation: TEACHER (GGUF or HF folder) samples --samples texts. Writes\n"
    "OUT_DIR/sdg-00000.tpt (one document per sample: its prompt tokens then the generated ones,\n"
    "exactly as the model saw them; usable with `taper train --data OUT_DIR`), OUT_DIR/samples.jsonl\n"
    "(prompt, text, token counts, one line per sample) and OUT_DIR/manifest.json (the settings).\n\n"
    "  -o, --output DIR     where the files go (created)\n"
    "  --samples N          number of samples (default 64)\n"
    "  --max-tokens N       generated tokens per sample at most; a sample ends early at EOS (default 256)\n"
    "  --batch N            samples decoded together (default 16); a slot freed by a finished sample\n"
    "                       takes the next one. The output can differ with N by float rounding\n"
    "  --temperature T      sampling temperature, 0 = greedy (default 1.0)\n"
    "  --top-p P            nucleus sampling (default 0.95)\n"
    "  --top-k K            keep the K most likely tokens (default 0 = off)\n"
    "  --seed S             random seed (default 0); each sample has its own stream\n"
    "  --prompts FILE       prompts, one per line (blank lines skipped), used in turn; without it\n"
    "                       every sample starts from BOS alone\n"
    "  --chat               wrap each prompt as one ChatML user turn (instruct models)\n"
    "  --threads N          OpenMP threads (default: all cores)\n"
    "  -h, --help           this help\n";

int cmd_generate_data(int argc, char **argv) {
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'},    {"samples", required_argument, 0, 'n'},
        {"max-tokens", required_argument, 0, 'm'},{"batch", required_argument, 0, 'b'},
        {"temperature", required_argument, 0, 't'},{"top-p", required_argument, 0, 'p'},
        {"top-k", required_argument, 0, 'k'},     {"seed", required_argument, 0, 's'},
        {"prompts", required_argument, 0, 'P'},   {"chat", no_argument, 0, 'C'},
        {"threads", required_argument, 0, 'j'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *cmd = "generate-data";
    tp_sdg_job job;
    tp_sdg_job_default(&job);
    int threads = 0, seed = 0, ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        int rc = CLI_OK;
        switch (ch) {
        case 'o': job.out_dir = optarg; break;
        case 'n': rc = cli_int(cmd, "--samples", optarg, 1, 100000000, &job.samples); break;
        case 'm': rc = cli_int(cmd, "--max-tokens", optarg, 1, 1000000, &job.max_tokens); break;
        case 'b': rc = cli_int(cmd, "--batch", optarg, 1, 4096, &job.batch); break;
        case 't': rc = cli_float(cmd, "--temperature", optarg, 0, 100, &job.temperature); break;
        case 'p': rc = cli_float(cmd, "--top-p", optarg, 1e-6, 1, &job.top_p); break;
        case 'k': rc = cli_int(cmd, "--top-k", optarg, 0, 1000000, &job.top_k); break;
        case 's': rc = cli_int(cmd, "--seed", optarg, 0, 2147483647, &seed); break;
        case 'P': job.prompts = optarg; break;
        case 'C': job.chat = 1; break;
        case 'j': rc = cli_int(cmd, "--threads", optarg, 1, 1024, &threads); break;
        case 'h': fputs(HELP, stdout); return CLI_OK;
        default: return cli_usage(cmd, "unknown option (see taper generate-data --help)");
        }
        if (rc) return rc;
    }
    if (optind != argc - 1) return cli_usage(cmd, "expected one TEACHER model (see taper generate-data --help)");
    if (!job.out_dir) return cli_usage(cmd, "-o OUT_DIR is required");
    job.teacher = argv[optind];
    job.seed = (uint64_t)seed;
    if (threads) cli_set_threads(threads);
    tp_sdg_job_result r;
    tp_status st = tp_sdg_job_run(&job, &r);
    if (st) return cli_error(st);
    double el = r.seconds;
    printf("generate-data: %d samples, %zu generated tokens (%zu ended at EOS), %zu tokens in %s/" TP_SDG_SHARD ", "
           "%.1f s (%.1f tok/s)\n",
           r.samples, r.generated_tokens, r.ended_at_eos, r.tokens, job.out_dir, el,
           el > 0 ? r.generated_tokens / el : 0.0);
    tp_sdg_job_result_free(&r);
    return CLI_OK;
}
