/* taper prune MODEL --scores S [target sizes | --target-params N] -o OUT: structured pruning
 * (width and depth) to an HF folder (and optionally GGUF) plus prune_plan.json; taper prune
 * MODEL --plan prune_plan.json -o OUT replays a plan. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "taper/compress.h"
#include "taper/model.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper prune MODEL --scores SCORES [--hidden N] [--ffn N] [--heads N] [--kv-heads N]\n"
    "                   [--layers N] [--drop-layers LIST] [--depth-metric M] [--agg BATCH,SEQ] -o OUT\n"
    "       taper prune MODEL --scores SCORES --target-params 90M [--data FILE] [...] -o OUT\n"
    "       taper prune MODEL --scores SCORES --per-layer [sizes | --target-params N] --gguf FILE\n"
    "       taper prune MODEL --plan prune_plan.json -o OUT\n\n"
    "Keeps the top-ranked parts of MODEL by the importance scores (taper importance) and writes the\n"
    "smaller model as an HF folder OUT (config.json with every changed size and head_dim, safetensors,\n"
    "tokenizer) plus OUT/prune_plan.json, which lists exactly which source indices were kept.\n"
    "Every layer keeps the same sizes (what transformers and llama.cpp load), unless --per-layer.\n\n"
    "width (0 or absent keeps the axis):\n"
    "  --hidden N          embedding channels (one set for embeddings, norms, projections, lm_head)\n"
    "  --ffn N             MLP neurons per layer (rows of gate/up, columns of down)\n"
    "  --heads N           query heads; kept within each KV group so groups stay equal in size\n"
    "  --kv-heads N        KV groups, kept whole by the sum of their query-head scores (with --kv-heads\n"
    "                      alone, each kept group keeps all its query heads)\n"
    "depth:\n"
    "  --layers N          layers to keep\n"
    "  --drop-layers LIST  explicit layers to drop, e.g. 12-17 or 3,7,20-22 (0-based)\n"
    "  --depth-metric M    how to pick layers without a list: auto (default: the scored contiguous block\n"
    "                      when its size matches, else loss), block, block-metric, loss (single-layer\n"
    "                      removal loss), bi (Block Influence)\n"
    "scores:\n"
    "  --scores FILE       importance scores (needed unless the width is kept and --drop-layers is given)\n"
    "  --agg BATCH,SEQ     aggregation pair to rank by (default: the file's default, l2,mean)\n"
    "budget search:\n"
    "  --target-params N   e.g. 90M: evaluate grid shapes within +-tolerance of N (sizes given above stay\n"
    "                      fixed) by LM loss on held-out text, print the table, prune to the best\n"
    "  --tolerance F       fraction (default 0.05)\n"
    "  --max-candidates N  shapes evaluated, spread evenly over the grid (default 12; 0 = all)\n"
    "  --data FILE         held-out text (default: the scores' calibration file; the samples after\n"
    "                      the calibration ones are used)\n"
    "  --eval-samples N    held-out samples (default 16)\n"
    "  --seq-len N         tokens per held-out sample (default: the scores' seq_len)\n"
    "output:\n"
    "  -o, --out DIR       HF folder to write\n"
    "  --plan FILE         replay a prune_plan.json instead of planning\n"
    "  --plan-out FILE     where to write the plan (default OUT/prune_plan.json); with no -o, only the\n"
    "                      plan is written\n"
    "  --dtype T           HF tensors: source (default: the source's f32/f16/bf16; f32 for a quantized\n"
    "                      GGUF), f32, f16, bf16\n"
    "  --gguf FILE         also write a GGUF (needs the model loaded)\n"
    "  --gguf-type T       source (default), f32, f16, bf16, q8_0\n"
    "memory:\n"
    "  --stream[=auto|on|off]  read the source a layer at a time and write the HF folder tensor by tensor\n"
    "                      (auto, the default: only when the loaded estimate does not fit); same bytes\n"
    "  --mem-limit SIZE    memory the run may use, e.g. 6G (default: $TAPER_MEM_LIMIT, else what the\n"
    "                      machine has available); a run that would not fit exits 1 up front\n"
    "  --dry-run           plan, print the memory estimates and the choice; read no weights, write nothing\n"
    "per-layer widths:\n"
    "  --per-layer         redistribute the MLP neurons of the uniform target over the layers, same\n"
    "                      total (so the same parameters), each layer's width chosen by loss: the\n"
    "                      held-out LM loss of the model with one layer's MLP cut, measured every 4\n"
    "                      chunks per layer on --eval-samples samples of --data (docs/pruning.md).\n"
    "                      Written as GGUF only (--gguf; llama.cpp runs it as its DeciLM graph;\n"
    "                      transformers cannot hold it); the plan goes to --plan-out (default\n"
    "                      FILE.plan.json)\n"
    "  --per-layer-rule R  loss (default) or activation: chunks valued by their importance scores\n"
    "                      divided by the layer mean (fast: no forward passes)\n"
    "  --per-layer-heads   also redistribute the query heads (per KV group, by the activation rule)\n"
    "  --per-layer-step N  a layer's MLP width is a multiple of N (default 64)\n"
    "  --per-layer-min F   each layer keeps at least this fraction of its neurons and heads (default 0.25)\n"
    "  --threads N         OpenMP threads (default: all cores)\n"
    "  --json[=FILE]       also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help          this help\n\n"
    "Exit codes: 2 for malformed options, 1 for targets this model cannot meet (message names the option).\n";

static void print_shape(const char *what, const tp_config *c, size_t params) {
    printf("%-8s hidden %d, ffn %s%d, heads %s%d / kv-heads %d (head_dim %d), layers %d: %zu params (%.1fM)\n", what,
           c->d_model, c->hetero ? "up to " : "", c->d_ff, c->hetero ? "up to " : "", c->n_heads, c->n_kv_heads,
           c->head_dim, c->n_layers, params, (double)params / 1e6);
}

/* What the job did, on stdout: the candidate table of a budget search, the shapes, the kept
 * layers and the files written. */
static void report(const tp_prune_job *j, const tp_prune_job_result *r) {
    if (j->target_params) {
        printf("budget   %zu params +-%.0f%%: %d shapes on the grid qualify, %d evaluated; held-out loss on %zu x %d "
               "tokens of %s (samples %zu..%zu)\n\n", j->target_params, 100 * j->tolerance, r->n_qualifying,
               r->n_candidates, r->eval_samples, r->eval_seq_len, r->eval_data, r->eval_first,
               r->eval_first + r->eval_samples - 1);
        printf("%4s %7s %6s %6s %6s %7s %12s %10s %9s\n", "rank", "hidden", "ffn", "heads", "kv", "layers", "params",
               "loss", "ppl");
        for (int i = 0; i < r->n_candidates; i++) {
            const tp_prune_shape *sh = &r->candidates[i].shape;
            printf("%4d %7d %6d %6d %6d %7d %12zu %10.5f %9.3f\n", i + 1, sh->d_model, sh->d_ff, sh->n_heads,
                   sh->n_kv_heads, sh->n_layers, r->candidates[i].n_params, r->candidates[i].loss,
                   exp(r->candidates[i].loss));
        }
        printf("\n");
    }
    const tp_prune_plan *p = r->plan;
    print_shape("source", &r->src, p->src_params);
    print_shape("pruned", &r->pruned, p->n_params);
    if (r->pruned.hetero) {
        printf("per layer (ffn/heads):");
        for (int i = 0; i < r->pruned.n_layers; i++)
            printf(" %d/%d", r->pruned.layer_ff[i], r->pruned.layer_heads[i]);
        printf("\n");
    }
    printf("depth    %s; kept layers",
           r->replayed ? "from the plan"
           : r->pruned.n_layers == r->src.n_layers ? "all layers kept" : tp_depth_rule_name(p->depth_rule));
    for (int i = 0; i < r->pruned.n_layers; i++) printf("%s%d", i ? "," : " ", p->layers[i]);
    printf("\n");
    if (p->agg_pair >= 0) printf("ranking  %s\n", tp_agg_pair_name(p->agg_pair));
    if (j->out)
        printf("wrote    %s (HF folder, %s)\n", j->out,
               r->dtype);
    printf("wrote    %s\n", r->plan_path);
    if (j->gguf) printf("wrote    %s (GGUF, %s)\n", j->gguf, r->gguf_type);
}

/* The job's fields the library's messages name, as this command's flags. */
static const char *const FLAGS[] = {"hidden", "--hidden", "ffn", "--ffn", "heads", "--heads", "kv_heads", "--kv-heads",
                                    "layers", "--layers", "drop_layers", "--drop-layers", "depth_metric",
                                    "--depth-metric", "target_params", "--target-params", "tolerance", "--tolerance",
                                    "max_candidates", "--max-candidates", "eval_samples", "--eval-samples", "seq_len",
                                    "--seq-len", "mem_limit", "--mem-limit", "stream on", "--stream", "gguf",
                                    "--gguf", "per-layer ffn step", "--per-layer-step", "per-layer minimum",
                                    "--per-layer-min", NULL};

int cmd_prune(int argc, char **argv) {
    static const struct option opts[] = {{"scores", required_argument, 0, 'S'},
                                         {"hidden", required_argument, 0, 'H'},
                                         {"ffn", required_argument, 0, 'F'},
                                         {"heads", required_argument, 0, 'A'},
                                         {"kv-heads", required_argument, 0, 'K'},
                                         {"layers", required_argument, 0, 'L'},
                                         {"drop-layers", required_argument, 0, 'X'},
                                         {"depth-metric", required_argument, 0, 'm'},
                                         {"agg", required_argument, 0, 'a'},
                                         {"target-params", required_argument, 0, 'P'},
                                         {"tolerance", required_argument, 0, 'e'},
                                         {"max-candidates", required_argument, 0, 'C'},
                                         {"data", required_argument, 0, 'd'},
                                         {"eval-samples", required_argument, 0, 'E'},
                                         {"seq-len", required_argument, 0, 'T'},
                                         {"out", required_argument, 0, 'o'},
                                         {"plan", required_argument, 0, 'p'},
                                         {"plan-out", required_argument, 0, 'q'},
                                         {"dtype", required_argument, 0, 'D'},
                                         {"gguf", required_argument, 0, 'g'},
                                         {"gguf-type", required_argument, 0, 'G'},
                                         {"heterogeneous", no_argument, 0, 'Z'},
                                         {"per-layer", no_argument, 0, 'Z'},
                                         {"per-layer-step", required_argument, 0, 'W'},
                                         {"per-layer-min", required_argument, 0, 'N'},
                                         {"per-layer-heads", no_argument, 0, 'O'},
                                         {"per-layer-rule", required_argument, 0, 'R'},
                                         {"threads", required_argument, 0, 't'},
                                         {"stream", optional_argument, 0, 's'},
                                         {"mem-limit", required_argument, 0, 'M'},
                                         {"dry-run", no_argument, 0, 'y'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    tp_prune_job a;
    tp_prune_job_default(&a);
    a.mem_limit = cli_mem_limit_env();
    const char *json = NULL;
    int threads = 0, c, rc, width_given = 0, heads_flag = 0, rule_flag = 0;
    float tol;
    tp_depth_rule rule;
    optind = 1;
#define INT_OPT(name, lo, hi, dst) \
    if ((rc = cli_int("prune", name, optarg, lo, hi, dst))) return rc;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'S': a.scores = optarg; break;
        case 'H': INT_OPT("--hidden", 1, 1 << 24, &a.hidden) width_given = 1; break;
        case 'F': INT_OPT("--ffn", 1, 1 << 24, &a.ffn) width_given = 1; break;
        case 'A': INT_OPT("--heads", 1, 1 << 16, &a.heads) width_given = 1; break;
        case 'K': INT_OPT("--kv-heads", 1, 1 << 16, &a.kv_heads) width_given = 1; break;
        case 'L': INT_OPT("--layers", 1, 1 << 16, &a.layers) break;
        case 'X': {
            int *drop = NULL, n_drop = 0;
            tp_status s = tp_layer_list_parse(optarg, &drop, &n_drop);
            free(drop);
            if (s == TP_ERR_ARG) return cli_usage("prune", "--drop-layers %s", tp_errmsg());
            if (s) return cli_error(s);
            a.drop_layers = optarg;
            break;
        }
        case 'm':
            if (tp_depth_rule_parse(optarg, &rule) || rule == TP_DEPTH_LIST)
                return cli_usage("prune", "--depth-metric must be auto, block, block-metric, loss or bi, got '%s'",
                                 optarg);
            a.depth_metric = optarg;
            break;
        case 'a': {
            int pair;
            if (tp_agg_pair_parse(optarg, &pair)) return cli_usage("prune", "--agg: %s", tp_errmsg());
            a.agg = optarg;
            break;
        }
        case 'P':
            if (tp_parse_count(optarg, &a.target_params)) return cli_usage("prune", "--target-params: %s", tp_errmsg());
            break;
        case 'e':
            if ((rc = cli_float("prune", "--tolerance", optarg, 1e-4, 0.5, &tol))) return rc;
            a.tolerance = tol;
            break;
        case 'C': INT_OPT("--max-candidates", 0, 1 << 20, &a.max_candidates) break;
        case 'd': a.data = optarg; break;
        case 'E': INT_OPT("--eval-samples", 1, 1 << 20, &a.eval_samples) break;
        case 'T': INT_OPT("--seq-len", 2, 1 << 20, &a.seq_len) break;
        case 'o': a.out = optarg; break;
        case 'p': a.plan = optarg; break;
        case 'q': a.plan_out = optarg; break;
        case 'D': a.dtype = optarg; break;
        case 'g': a.gguf = optarg; break;
        case 'G': a.gguf_type = optarg; break;
        case 'Z': a.per_layer = 1; break;
        case 'O': a.per_layer_opts.ffn_only = 0; heads_flag = 1; break;
        case 'R':
            if (strcmp(optarg, "activation") && strcmp(optarg, "loss"))
                return cli_usage("prune", "--per-layer-rule must be activation or loss, got '%s'", optarg);
            a.per_layer_opts.loss_rule = !strcmp(optarg, "loss");
            rule_flag = 1;
            break;
        case 'W': INT_OPT("--per-layer-step", 1, 1 << 24, &a.per_layer_opts.ffn_step) break;
        case 'N':
            if ((rc = cli_float("prune", "--per-layer-min", optarg, 1e-3, 1, &tol))) return rc;
            a.per_layer_opts.min_keep = tol;
            break;
        case 't': INT_OPT("--threads", 1, 1024, &threads) break;
        case 'j': json = optarg ? optarg : "-"; break;
        case 's': if ((rc = cli_stream("prune", optarg, &a.stream))) return rc; break;
        case 'M': if ((rc = cli_mem_limit("prune", optarg, &a.mem_limit))) return rc; break;
        case 'y': a.dry_run = 1; break;
        default: return cli_usage("prune", "unknown option");
        }
    }
#undef INT_OPT
    if (optind != argc - 1) return cli_usage("prune", "expects exactly one MODEL");
    a.model = argv[optind];
    if ((heads_flag || rule_flag) && !a.per_layer)
        return cli_usage("prune", "--per-layer-heads and --per-layer-rule need --per-layer");
    if (a.per_layer && (a.out || !a.gguf || a.plan))
        return cli_usage("prune", "--per-layer writes a GGUF: give --gguf FILE and no -o (an HF folder cannot hold "
                                  "per-layer widths) and no --plan (a plan file carries its own widths)");
    if (!a.out && !a.plan_out && !a.per_layer) return cli_usage("prune", "-o OUT (or --plan-out FILE) is required");
    if (a.dtype && strcasecmp(a.dtype, "source") && strcasecmp(a.dtype, "f32") && strcasecmp(a.dtype, "f16") &&
        strcasecmp(a.dtype, "bf16"))
        return cli_usage("prune", "--dtype must be source, f32, f16 or bf16, got '%s'", a.dtype);
    if (a.gguf_type && strcasecmp(a.gguf_type, "source") && strcasecmp(a.gguf_type, "f32") &&
        strcasecmp(a.gguf_type, "f16") && strcasecmp(a.gguf_type, "bf16") && strcasecmp(a.gguf_type, "q8_0"))
        return cli_usage("prune", "--gguf-type must be source, f32, f16, bf16 or q8_0, got '%s'", a.gguf_type);
    if (a.plan && (a.scores || width_given || a.layers || a.drop_layers || a.target_params || a.agg))
        return cli_usage("prune",
                         "--plan replays a plan; it takes no --scores, sizes, --drop-layers, --agg or --target-params");
    if (!a.plan && !a.scores && (width_given || a.target_params || (a.layers && !a.drop_layers)))
        return cli_usage("prune",
                         "--scores SCORES is required (from taper importance) unless only --drop-layers is given");
    if (a.target_params && a.drop_layers)
        return cli_usage("prune",
                         "--target-params chooses the depth itself; give --layers to fix it, not --drop-layers");
    if (a.per_layer && !a.scores) return cli_usage("prune", "--per-layer needs --scores SCORES (from taper importance)");
    cli_set_threads(threads);
    tp_set_mem_limit(a.mem_limit);
    a.json_path = json && strcmp(json, "-") ? json : NULL;
    tp_prune_job_result r;
    tp_status s = tp_prune_job_run(&a, &r);
    /* a replayed plan takes no sizes; its file's messages say "layers[3]" of the plan itself */
    if (s) return cli_error_map(s, a.plan ? NULL : FLAGS);
    if (a.dry_run) {
        printf("dry run: nothing read or written (memory estimates above)\n");
        return CLI_OK;
    }
    report(&a, &r);
    cJSON *j = json && !a.json_path ? tp_prune_job_json(&a, &r) : NULL;
    tp_prune_job_result_free(&r);
    if (json && !a.json_path && !j) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    return j ? cli_json_out(j, json) : CLI_OK;
}
