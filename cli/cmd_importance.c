/* taper importance MODEL --data FILE -o SCORES: activation-based importance of heads, KV
 * groups, MLP neurons, embedding channels and layers; taper importance --show SCORES prints
 * per-layer summaries of a score file. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/compress.h"
#include "taper/model.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper importance MODEL --data FILE [-o SCORES] [options]\n"
    "       taper importance --show SCORES [--agg BATCH,SEQ] [--json[=FILE]]\n\n"
    "Runs the calibration samples through the model with hooks and scores, for every aggregation\n"
    "pair at once: attention heads (L2 norm of each head's output before o_proj; KV groups = sum of\n"
    "their query heads), MLP neurons (input of down_proj), embedding channels (every RMSNorm output,\n"
    "summed over layers), Block Influence per layer, and the LM loss with each layer (and each block\n"
    "of --block layers) removed. Per sample s: a_s = agg_seq over positions; score = agg_batch over\n"
    "samples of a_s (mean = mean|v|, l2 = sqrt(sum v^2), var = population variance). The score file\n"
    "(JSON, format taper-importance v1) is what `taper prune --scores` reads. See docs/pruning.md.\n\n"
    "  --data FILE            calibration text: a text file (tokenized whole, no BOS) or .jsonl with a\n"
    "                         \"text\" field per line; cut into non-overlapping --seq-len samples\n"
    "  -o, --out FILE         score file to write (default importance.json)\n"
    "  --samples N            calibration samples (default 1024; all the file has if fewer)\n"
    "  --seq-len N            tokens per sample (default 512)\n"
    "  --batch N              samples per forward (default 4; scores do not depend on it)\n"
    "  --neuron-source S      act: silu(gate)*up, the input of down_proj (default); gate: the gate\n"
    "                         projection before the activation (the paper's X W1^T)\n"
    "  --depth-samples N      first N samples score layer removal (default 64, at most --samples; 0 = off)\n"
    "  --block N              also score removing each block of N contiguous layers\n"
    "  --block-metric TASK    also score each block (and the full model) by a zero-shot task's accuracy\n"
    "                         (winogrande, or another multiple-choice task of taper eval); slow\n"
    "  --metric-limit N       first N items of that task (default 0 = all)\n"
    "  --data-dir DIR         benchmark files (default $TAPER_DATA, else ../shared/data)\n"
    "  --show SCORES          print per-layer summaries of a score file (no model needed)\n"
    "  --agg BATCH,SEQ        pair shown by --show (default: the file's default, l2,mean)\n"
    "memory:\n"
    "  --stream[=auto|on|off] read the weights a layer at a time instead of loading the model (auto,\n"
    "                         the default: only when the loaded estimate does not fit); same scores\n"
    "  --mem-limit SIZE       memory the run may use, e.g. 6G (default: $TAPER_MEM_LIMIT, else what\n"
    "                         the machine has available); a run that would not fit exits 1 up front\n"
    "  --dry-run              print the memory estimates and the choice; read no weights\n"
    "  --precision P          fp32 (default) or bf16 products (faster where the CPU has bf16)\n"
    "  --threads N            OpenMP threads (default: all cores)\n"
    "  --json[=FILE]          also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help             this help\n"
    "Under mpirun -np N the samples are shared out (each rank its part of the depth samples and of\n"
    "the rest), the statistics merged, and rank 0 writes the scores (equal to one process's up to\n"
    "rounding; docs/distributed.md).\n";

/* Per-layer summary of one aggregation pair on stdout. */
static void show(const tp_importance *imp, int pair, const char *path) {
    int L = imp->n_layers, nh = imp->n_heads, nkv = imp->n_kv_heads, ff = imp->d_ff, d = imp->d_model;
    const double *H = imp->heads + (size_t)pair * L * nh, *G = imp->kv_groups + (size_t)pair * L * nkv;
    const double *N = imp->neurons + (size_t)pair * L * ff, *C = imp->channels + (size_t)pair * d;
    printf("scores       %s\n", path);
    printf("model        %s: %d layers, hidden %d, %d heads / %d KV groups (head_dim %d), ffn %d\n",
           imp->model ? imp->model : "?", L, d, nh, nkv, imp->head_dim, ff);
    printf("calibration  %s: %d samples x %d tokens, neurons from %s, depth on %d samples\n",
           imp->data ? imp->data : "?", imp->n_samples, imp->seq_len,
           imp->neuron_source == TP_NEURON_GATE ? "gate (X W_gate^T)" : "act (input of down_proj)", imp->depth_samples);
    printf("aggregation  %s%s\n", tp_agg_pair_name(pair), pair == imp->default_pair ? " (default)" : "");
    if (isfinite(imp->tokens_per_s))
        printf("timing       importance pass %.1f s (%.1f tok/s), depth scoring %.1f s\n", imp->seconds,
               imp->tokens_per_s, imp->depth_seconds);
    if (isfinite(imp->base_loss))
        printf("base loss    %.6f (mean next-token NLL on the depth samples)\n", imp->base_loss);
    printf("\n%5s %9s %10s %9s  %-23s %-23s %s\n", "layer", "BI", "loss-drop", "dloss", "heads min/max",
           "kv groups min/max", "neurons mean/min/max");
    for (int l = 0; l < L; l++) {
        double ll = imp->layer_loss ? imp->layer_loss[l] : NAN;
        double h[3], g[3], n[3]; /* min, max, mean */
        tp_vec_stats(H + (size_t)l * nh, nh, &h[0], &h[1], &h[2]);
        tp_vec_stats(G + (size_t)l * nkv, nkv, &g[0], &g[1], &g[2]);
        tp_vec_stats(N + (size_t)l * ff, ff, &n[0], &n[1], &n[2]);
        printf("%5d %9.6f %10.5f %+9.5f  %10.4g/%-12.4g %10.4g/%-12.4g %.4g/%.4g/%.4g\n", l, imp->block_influence[l],
               ll, ll - imp->base_loss, h[0], h[1], g[0], g[1], n[2], n[0], n[1]);
    }
    double c[3];
    tp_vec_stats(C, d, &c[0], &c[1], &c[2]);
    printf("\nembedding channels: mean %.5g, min %.5g, max %.5g over %d channels\n", c[2], c[0], c[1], d);
    if (imp->block_loss) {
        int nb = L - imp->block_size + 1, best = 0;
        for (int i = 1; i < nb; i++)
            if (imp->block_loss[i] < imp->block_loss[best]) best = i;
        printf("\nremoving %d contiguous layers (loss on the depth samples%s%s):\n%9s %10s %9s%s\n", imp->block_size,
               imp->block_metric ? ", and " : "", imp->block_metric ? imp->block_metric_name : "", "layers", "loss",
               "dloss", imp->block_metric ? "     metric" : "");
        if (imp->block_metric) printf("%9s %10.5f %9s %10.4f   (the full model)\n", "none", imp->base_loss, "",
                                      imp->block_metric_base);
        for (int i = 0; i < nb; i++) {
            char r[32];
            snprintf(r, sizeof r, "%d-%d", i, i + imp->block_size - 1);
            printf("%9s %10.5f %+9.5f", r, imp->block_loss[i], imp->block_loss[i] - imp->base_loss);
            if (imp->block_metric) printf(" %10.4f", imp->block_metric[i]);
            printf("%s\n", i == best ? "   <- lowest loss" : "");
        }
    }
}

/* Prints the summary; with --json to stdout (or --show --json=FILE) also writes the JSON (a
 * computing run's --json=FILE was written by the job). */
static int finish(tp_importance *imp, int pair, const char *path, const char *json) {
    show(imp, pair, path);
    cJSON *j = json ? tp_importance_summary_json(imp, pair, path) : NULL;
    tp_importance_free(imp);
    if (json && !j) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    return j ? cli_json_out(j, json) : CLI_OK;
}

int cmd_importance(int argc, char **argv) {
    static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                         {"out", required_argument, 0, 'o'},
                                         {"samples", required_argument, 0, 'n'},
                                         {"seq-len", required_argument, 0, 'T'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"neuron-source", required_argument, 0, 'N'},
                                         {"depth-samples", required_argument, 0, 'D'},
                                         {"block", required_argument, 0, 'k'},
                                         {"block-metric", required_argument, 0, 'M'},
                                         {"metric-limit", required_argument, 0, 'l'},
                                         {"data-dir", required_argument, 0, 'R'},
                                         {"show", required_argument, 0, 's'},
                                         {"agg", required_argument, 0, 'a'},
                                         {"threads", required_argument, 0, 't'},
                                         {"stream", optional_argument, 0, 'S'},
                                         {"mem-limit", required_argument, 0, 'L'},
                                         {"dry-run", no_argument, 0, 'y'},
                                         {"precision", required_argument, 0, 'P'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *data = NULL, *out = "importance.json", *show_path = NULL, *json = NULL, *agg = NULL, *metric = NULL;
    const char *data_dir = NULL;
    int samples = 1024, seq = 512, batch = 4, depth = 64, block = 0, threads = 0, metric_limit = 0, c, rc;
    int stream = 0, dry = 0;
    double mem_limit = cli_mem_limit_env();
    tp_neuron_source src = TP_NEURON_ACT;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'd': data = optarg; break;
        case 'o': out = optarg; break;
        case 'n': if ((rc = cli_int("importance", "--samples", optarg, 1, 1 << 24, &samples))) return rc; break;
        case 'T': if ((rc = cli_int("importance", "--seq-len", optarg, 2, 1 << 20, &seq))) return rc; break;
        case 'b': if ((rc = cli_int("importance", "--batch", optarg, 1, 4096, &batch))) return rc; break;
        case 'D': if ((rc = cli_int("importance", "--depth-samples", optarg, 0, 1 << 24, &depth))) return rc; break;
        case 'k': if ((rc = cli_int("importance", "--block", optarg, 1, 4096, &block))) return rc; break;
        case 't': if ((rc = cli_int("importance", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'N':
            if (!strcmp(optarg, "act")) src = TP_NEURON_ACT;
            else if (!strcmp(optarg, "gate")) src = TP_NEURON_GATE;
            else return cli_usage("importance", "--neuron-source must be act or gate, got '%s'", optarg);
            break;
        case 'M': metric = optarg; break;
        case 'l': if ((rc = cli_int("importance", "--metric-limit", optarg, 0, 1 << 30, &metric_limit))) return rc; break;
        case 'R': data_dir = optarg; break;
        case 's': show_path = optarg; break;
        case 'a': agg = optarg; break;
        case 'j': json = optarg ? optarg : "-"; break;
        case 'S': if ((rc = cli_stream("importance", optarg, &stream))) return rc; break;
        case 'L': if ((rc = cli_mem_limit("importance", optarg, &mem_limit))) return rc; break;
        case 'y': dry = 1; break;
        case 'P': if ((rc = cli_precision("importance", optarg))) return rc; break;
        default: return cli_usage("importance", "unknown option");
        }
    }
    int pair = -1;
    if (agg && tp_agg_pair_parse(agg, &pair)) return cli_usage("importance", "--agg: %s", tp_errmsg());
    if (show_path) {
        if (optind != argc) return cli_usage("importance", "--show takes a score file and no MODEL");
        tp_importance *imp = NULL;
        tp_status s = tp_importance_load(show_path, &imp);
        if (s) return cli_error(s);
        return finish(imp, pair >= 0 ? pair : imp->default_pair, show_path, json);
    }
    if (optind != argc - 1) return cli_usage("importance", "expects exactly one MODEL (or --show SCORES)");
    if (!data) return cli_usage("importance", "--data FILE is required (calibration text)");
    if (metric && !block) return cli_usage("importance", "--block-metric needs --block N");
    if (block && !depth) return cli_usage("importance", "--block needs --depth-samples > 0");
    cli_set_threads(threads);
    tp_importance_job j;
    tp_importance_job_default(&j);
    j.model = argv[optind];
    j.data = data;
    j.out = out;
    j.samples = samples;
    j.seq_len = seq;
    j.batch = batch;
    j.depth_samples = depth;
    j.block = block;
    j.neuron_source = src;
    j.block_metric = metric;
    j.metric_limit = metric_limit;
    j.agg = agg;
    j.json_path = json && strcmp(json, "-") ? json : NULL;
    if (metric) {
        const char *env = getenv("TAPER_DATA");
        j.data_dir = data_dir ? data_dir : env && *env ? env : "../shared/data";
    }
    j.stream = stream;
    j.mem_limit = mem_limit;
    tp_set_mem_limit(mem_limit);
    j.dry_run = dry;
    /* the config (metadata only) here so that a --block too large for the model is a usage error */
    tp_config cfg;
    tp_status s = tp_config_load(j.model, &cfg);
    if (s) return cli_error(s);
    if (block >= cfg.n_layers) {
        fprintf(stderr, "taper importance: --block %d must be below the model's %d layers\n", block, cfg.n_layers);
        return CLI_USAGE;
    }
    tp_importance *imp = NULL;
    s = tp_importance_job_run(&j, &imp);
    /* tp_importance_job fields the library's messages name, as flags ("block" stays: it is also a word there) */
    static const char *const flags[] = {"block_metric", "--block-metric", "depth_samples", "--depth-samples",
                                        "metric_limit", "--metric-limit", "seq_len", "--seq-len",
                                        "mem_limit", "--mem-limit", "stream on", "--stream",
                                        "fewer samples", "fewer --samples", "smaller batch", "smaller --batch",
                                        NULL};
    if (s) return cli_error_map(s, flags);
    if (dry) {
        printf("dry run: nothing read or written (memory estimates above)\n");
        return CLI_OK;
    }
    return finish(imp, pair >= 0 ? pair : imp->default_pair, out, j.json_path ? NULL : json);
}
