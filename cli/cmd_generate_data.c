/* taper generate-data TEACHER -o OUT_DIR: synthetic data generation (SDG). The teacher samples a
 * corpus; it is written as token shards, one per part (OUT_DIR/sdg-00000.tpt, sdg-00001.tpt, ...,
 * together ready for `taper train --data OUT_DIR`), and as readable JSONL (OUT_DIR/samples.jsonl);
 * the same command resumes an interrupted run. Options, signals and the summary are here; the
 * work is tp_sdg_job_run (src/train/sdg.c). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>

#include "cli.h"
#include "taper/sdg.h"

static const char *HELP =
    "usage: taper generate-data TEACHER -o OUT_DIR [options]\n\n"
    "Synthetic data generation: TEACHER (GGUF or HF folder) samples --samples texts. Writes the\n"
    "samples in parts of --part-samples: part k to OUT_DIR/sdg-<k in 5 digits>.tpt (one document per\n"
    "sample: its prompt tokens then the generated ones, exactly as the model saw them; the parts\n"
    "together are one dataset for `taper train --data OUT_DIR`), OUT_DIR/samples.jsonl (prompt, text,\n"
    "token counts, one line per sample) and OUT_DIR/manifest.json (the settings and counts).\n\n"
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
    "  --part-samples P     samples per part (default 512): samples kP .. (k+1)P-1 form part k, whose\n"
    "                       shard appears (written whole, fsynced, renamed) once the part is complete\n"
    "  --dedup              drop a sample whose generated tokens (EOS included) equal those of an\n"
    "                       earlier kept sample of the run, earlier parts and runs included\n"
    "  --restart            discard what an earlier run left in OUT_DIR and start again\n"
    "  --precision P        fp32 (default) or bf16: weight products with bf16 inputs, fp32 accumulation\n"
    "                       (about twice as fast with AVX512-BF16 or AMX; samples differ by rounding)\n"
    "  --threads N          OpenMP threads (default: all cores)\n"
    "  -h, --help           this help\n\n"
    "Resume: the same command on the same OUT_DIR continues after the last complete part (nothing\n"
    "complete is made again; the lines of an incomplete part are dropped from samples.jsonl). The\n"
    "teacher, --seed, --temperature, --top-p, --top-k, --max-tokens, the prompts read, --chat,\n"
    "--part-samples and --dedup must be those of manifest.json, or the run is refused naming the\n"
    "one that differs (--restart starts over); --samples may grow; --batch may differ (it changes the\n"
    "float rounding, so resumed samples can differ from an uninterrupted run's; with the same batch a\n"
    "resumed run writes the same bytes). A finished run run again does nothing. OUT_DIR holding other\n"
    "*.tpt files or another command's manifest.json is refused.\n"
    "Ctrl-C / SIGTERM stop at once: the part in progress is lost, complete parts stay.\n"
    "Exit codes: 0 done, 1 failure, 2 usage error, 130/143 stopped by SIGINT/SIGTERM (resumable).\n";

int cmd_generate_data(int argc, char **argv) {
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'},    {"samples", required_argument, 0, 'n'},
        {"max-tokens", required_argument, 0, 'm'},{"batch", required_argument, 0, 'b'},
        {"temperature", required_argument, 0, 't'},{"top-p", required_argument, 0, 'p'},
        {"top-k", required_argument, 0, 'k'},     {"seed", required_argument, 0, 's'},
        {"prompts", required_argument, 0, 'P'},   {"chat", no_argument, 0, 'C'},
        {"threads", required_argument, 0, 'j'},   {"help", no_argument, 0, 'h'},
        {"part-samples", required_argument, 0, 'S'}, {"dedup", no_argument, 0, 'D'},
        {"restart", no_argument, 0, 'R'},       {"precision", required_argument, 0, 'x'},
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
        case 'S': rc = cli_int(cmd, "--part-samples", optarg, 1, 100000000, &job.part_samples); break;
        case 'D': job.dedup = 1; break;
        case 'R': job.restart = 1; break;
        case 'x': rc = cli_precision(cmd, optarg); break;
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
    job.stop = cli_stop_signals("\ntaper generate-data: stop requested: the part in progress is dropped, complete "
                                "parts stay (signal again to abort)\n");
    tp_status st = tp_sdg_job_run(&job, &r);
    cli_stop_signals_end();
    if (st) return cli_error(st);
    int rc = CLI_OK;
    double el = r.seconds;
    if (r.stopped) {
        printf("generate-data: stopped after %zu of %d samples; run the same command again to continue\n",
               r.samples_done, job.samples);
        rc = *job.stop ? 128 + (int)*job.stop : CLI_FAIL;
    }
    if (r.parts_before == r.parts && !r.stopped)
        printf("generate-data: %s was complete: nothing generated\n", job.out_dir);
    else
        printf("generate-data: this run: %d part%s, %zu generated tokens in %.1f s (%.1f tok/s)\n",
               r.parts - r.parts_before, r.parts - r.parts_before == 1 ? "" : "s", r.generated_now, el,
               el > 0 ? r.generated_now / el : 0.0);
    printf("generate-data: %d part%s, %d samples kept, %zu duplicates dropped, %zu tokens (%zu generated, %zu "
           "ended at EOS) in %s\n",
           r.parts, r.parts == 1 ? "" : "s", r.samples, r.duplicates_dropped, r.tokens, r.generated_tokens,
           r.ended_at_eos, job.out_dir);
    tp_sdg_job_result_free(&r);
    return rc;
}
