/* taper bench MODEL: decoding speed in llama-batched-bench's protocol (prompt phase, then
 * token-by-token generation of every sequence together), for a list of batch sizes. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/generate.h"
#include "taper/model.h"
#include "taper/util.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int threads_in_use(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static const char *HELP =
    "usage: taper bench MODEL [--batch 1,16,64] [--prompt 128] [--gen 128] [options]\n\n"
    "Measures how fast MODEL reads prompts and generates, the way llama.cpp's llama-batched-bench\n"
    "does: for each batch size B, B sequences of --prompt tokens are read in one forward (PP), then\n"
    "--gen steps each decode one more token of all B sequences (TG, greedy). Prints one row per\n"
    "batch size: tokens/s of each phase and of both.\n\n"
    "  --batch LIST       batch sizes, comma-separated (default 1,16,64)\n"
    "  --prompt N         prompt tokens per sequence (default 128)\n"
    "  --gen N            generated tokens per sequence (default 128)\n"
    "  --precision P      fp32 (default) or bf16 (weight products with bf16 inputs, fp32 accumulation)\n"
    "  --threads N        OpenMP threads (default: all cores)\n"
    "  --json[=FILE]      also write the rows as JSON (stdout, or FILE)\n"
    "  -h, --help         this help\n";

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"batch", required_argument, 0, 'b'},     {"prompt", required_argument, 0, 'p'},
        {"gen", required_argument, 0, 'g'},       {"precision", required_argument, 0, 'P'},
        {"threads", required_argument, 0, 't'},   {"json", optional_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    const char *json = NULL, *batches = "1,16,64";
    int prompt = 128, gen = 128, threads = 0, c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'b': batches = optarg; break;
        case 'p': if ((rc = cli_int("bench", "--prompt", optarg, 1, 1 << 20, &prompt))) return rc; break;
        case 'g': if ((rc = cli_int("bench", "--gen", optarg, 0, 1 << 20, &gen))) return rc; break;
        case 'P': if ((rc = cli_precision("bench", optarg))) return rc; break;
        case 't': if ((rc = cli_int("bench", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'j': json = optarg ? optarg : "-"; break;
        default: return cli_usage("bench", "unknown option");
        }
    }
    if (optind != argc - 1) return cli_usage("bench", "expects exactly one MODEL");
    int list[64], n = 0;
    for (const char *p = batches; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 65536 || (*end && *end != ',') || n == 64)
            return cli_usage("bench", "--batch takes up to 64 comma-separated sizes from 1 to 65536, got '%s'",
                             batches);
        list[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (n == 0) return cli_usage("bench", "--batch is empty");
    cli_set_threads(threads);
    tp_model *m = NULL;
    tp_status s = tp_model_load(argv[optind], &m);
    if (s) return cli_error(s);
    if (!s) s = tp_model_prepare_precision(m, 1);
    cJSON *rows = json ? cJSON_CreateArray() : NULL;
    printf("model %s, %s, %d threads\n\n", argv[optind], tp_gemm_info(), threads_in_use());
    printf("|    PP |     TG |     B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n");
    printf("|-------|--------|-------|--------|----------|----------|----------|----------|----------|----------|\n");
    for (int i = 0; i < n && !s; i++) {
        tp_decode_bench b = {list[i], prompt, gen, 0, 0};
        if ((s = tp_bench_decode(m, &b))) break;
        double pp = (double)b.batch * prompt, tg = (double)b.batch * gen, t = b.t_prompt + b.t_gen;
        printf("| %5d | %6d | %5d | %6d | %8.3f | %8.2f | %8.3f | %8.2f | %8.3f | %8.2f |\n", prompt, gen, b.batch,
               b.batch * (prompt + gen), b.t_prompt, pp / b.t_prompt, b.t_gen, b.t_gen > 0 ? tg / b.t_gen : 0, t,
               (pp + tg) / t);
        fflush(stdout);
        if (rows) {
            cJSON *r = cJSON_CreateObject();
            cJSON_AddNumberToObject(r, "batch", b.batch);
            cJSON_AddNumberToObject(r, "prompt", prompt);
            cJSON_AddNumberToObject(r, "gen", gen);
            cJSON_AddNumberToObject(r, "t_prompt", b.t_prompt);
            cJSON_AddNumberToObject(r, "t_gen", b.t_gen);
            cJSON_AddNumberToObject(r, "prompt_tok_s", pp / b.t_prompt);
            cJSON_AddNumberToObject(r, "gen_tok_s", b.t_gen > 0 ? tg / b.t_gen : 0);
            cJSON_AddItemToArray(rows, r);
        }
    }
    tp_model_free(m);
    if (s) {
        cJSON_Delete(rows);
        return cli_error(s);
    }
    if (rows) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", argv[optind]);
        cJSON_AddStringToObject(o, "precision", tp_precision_name());
        cJSON_AddNumberToObject(o, "threads", threads_in_use());
        cJSON_AddItemToObject(o, "rows", rows);
        return cli_json_out(o, json);
    }
    return CLI_OK;
}
