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
#include "taper/tasks.h"
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
    "  --threads N            OpenMP threads (default: all cores)\n"
    "  --json[=FILE]          also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help             this help\n";

static double vmin(const double *v, int n) {
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

static double vmax(const double *v, int n) {
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

static double vmean(const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return s / n;
}

static cJSON *darr(const double *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, isfinite(v[i]) ? cJSON_CreateNumber(v[i]) : cJSON_CreateNull());
    return a;
}

/* Per-layer summary of one aggregation pair on stdout, and as JSON into j. */
static void show(const tp_importance *imp, int pair, const char *path, cJSON *j) {
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
    if (isfinite(imp->base_loss)) printf("base loss    %.6f (mean next-token NLL on the depth samples)\n", imp->base_loss);
    printf("\n%5s %9s %10s %9s  %-23s %-23s %s\n", "layer", "BI", "loss-drop", "dloss", "heads min/max",
           "kv groups min/max", "neurons mean/min/max");
    cJSON *layers = j ? cJSON_AddArrayToObject(j, "layers") : NULL;
    for (int l = 0; l < L; l++) {
        double ll = imp->layer_loss ? imp->layer_loss[l] : NAN;
        const double *h = H + (size_t)l * nh, *g = G + (size_t)l * nkv, *n = N + (size_t)l * ff;
        printf("%5d %9.6f %10.5f %+9.5f  %10.4g/%-12.4g %10.4g/%-12.4g %.4g/%.4g/%.4g\n", l, imp->block_influence[l],
               ll, ll - imp->base_loss, vmin(h, nh), vmax(h, nh), vmin(g, nkv), vmax(g, nkv), vmean(n, ff), vmin(n, ff),
               vmax(n, ff));
        if (layers) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "layer", l);
            cJSON_AddNumberToObject(o, "block_influence", imp->block_influence[l]);
            if (isfinite(ll)) cJSON_AddNumberToObject(o, "loss_removed", ll);
            cJSON_AddItemToObject(o, "heads", darr(h, nh));
            cJSON_AddItemToObject(o, "kv_groups", darr(g, nkv));
            cJSON_AddNumberToObject(o, "neurons_mean", vmean(n, ff));
            cJSON_AddNumberToObject(o, "neurons_min", vmin(n, ff));
            cJSON_AddNumberToObject(o, "neurons_max", vmax(n, ff));
            cJSON_AddItemToArray(layers, o);
        }
    }
    printf("\nembedding channels: mean %.5g, min %.5g, max %.5g over %d channels\n", vmean(C, d), vmin(C, d),
           vmax(C, d), d);
    if (j) {
        cJSON *c = cJSON_AddObjectToObject(j, "channels");
        cJSON_AddNumberToObject(c, "mean", vmean(C, d));
        cJSON_AddNumberToObject(c, "min", vmin(C, d));
        cJSON_AddNumberToObject(c, "max", vmax(C, d));
    }
    if (imp->block_loss) {
        int nb = L - imp->block_size + 1, best = 0;
        for (int i = 1; i < nb; i++)
            if (imp->block_loss[i] < imp->block_loss[best]) best = i;
        printf("\nremoving %d contiguous layers (loss on the depth samples%s%s):\n%9s %10s %9s%s\n", imp->block_size,
               imp->block_metric ? ", and " : "", imp->block_metric ? imp->block_metric_name : "", "layers", "loss",
               "dloss", imp->block_metric ? "     metric" : "");
        if (imp->block_metric) printf("%9s %10.5f %9s %10.4f   (the full model)\n", "none", imp->base_loss, "",
                                      imp->block_metric_base);
        cJSON *bl = j ? cJSON_AddArrayToObject(j, "blocks") : NULL;
        for (int i = 0; i < nb; i++) {
            char r[32];
            snprintf(r, sizeof r, "%d-%d", i, i + imp->block_size - 1);
            printf("%9s %10.5f %+9.5f", r, imp->block_loss[i], imp->block_loss[i] - imp->base_loss);
            if (imp->block_metric) printf(" %10.4f", imp->block_metric[i]);
            printf("%s\n", i == best ? "   <- lowest loss" : "");
            if (bl) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddNumberToObject(o, "first", i);
                cJSON_AddNumberToObject(o, "last", i + imp->block_size - 1);
                cJSON_AddNumberToObject(o, "loss_removed", imp->block_loss[i]);
                if (imp->block_metric) cJSON_AddNumberToObject(o, imp->block_metric_name, imp->block_metric[i]);
                cJSON_AddItemToArray(bl, o);
            }
        }
    }
    if (j) {
        cJSON_AddStringToObject(j, "scores", path);
        cJSON_AddStringToObject(j, "aggregation", tp_agg_pair_name(pair));
        if (isfinite(imp->base_loss)) cJSON_AddNumberToObject(j, "base_loss", imp->base_loss);
        if (imp->block_metric && isfinite(imp->block_metric_base))
            cJSON_AddNumberToObject(j, "block_metric_base", imp->block_metric_base);
        cJSON_AddNumberToObject(j, "samples", imp->n_samples);
        cJSON_AddNumberToObject(j, "seq_len", imp->seq_len);
        if (isfinite(imp->tokens_per_s)) cJSON_AddNumberToObject(j, "importance_tokens_per_s", imp->tokens_per_s);
        if (isfinite(imp->seconds)) cJSON_AddNumberToObject(j, "importance_seconds", imp->seconds);
        if (isfinite(imp->depth_seconds)) cJSON_AddNumberToObject(j, "depth_seconds", imp->depth_seconds);
    }
}

/* A downstream task's accuracy as the pluggable block metric: the model with the flagged layers
 * removed is a view sharing m's weights (its layer list without them). */
typedef struct {
    tp_task *task;
    tp_eval_opts eo;
} task_metric;

static tp_status task_metric_fn(void *user, const tp_model *m, const unsigned char *skip, double *value) {
    task_metric *tm = user;
    tp_model view = *m;
    tp_layer *kept = NULL;
    if (skip) {
        kept = malloc((size_t)m->cfg.n_layers * sizeof *kept);
        if (!kept) return tp_fail(TP_ERR_NOMEM, "out of memory");
        int k = 0, *ids = malloc((size_t)m->cfg.n_layers * sizeof *ids);
        if (!ids) { free(kept); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
        for (int l = 0; l < m->cfg.n_layers; l++)
            if (!skip[l]) ids[k] = l, kept[k++] = m->layers[l];
        view.layers = kept;
        tp_config_keep_layers(&m->cfg, ids, k, &view.cfg);
        free(ids);
    }
    tp_task_result r;
    memset(&r, 0, sizeof r);
    tp_status s = tp_task_run(&view, tm->task, &tm->eo, NULL, &r);
    if (!s) *value = r.acc;
    tp_task_result_free(&r);
    free(kept);
    return s;
}

static int finish(tp_importance *imp, int pair, const char *path, const char *json) {
    cJSON *j = json ? cJSON_CreateObject() : NULL;
    show(imp, pair, path, j);
    tp_importance_free(imp);
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
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *data = NULL, *out = "importance.json", *show_path = NULL, *json = NULL, *agg = NULL, *metric = NULL;
    const char *data_dir = NULL;
    int samples = 1024, seq = 512, batch = 4, depth = 64, block = 0, threads = 0, metric_limit = 0, c, rc;
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
    cli_set_threads(threads);
    tp_model *m = NULL;
    tp_status s = tp_model_load(argv[optind], &m);
    if (s) return cli_error(s);
    if (block >= m->cfg.n_layers) {
        fprintf(stderr, "taper importance: --block %d must be below the model's %d layers\n", block, m->cfg.n_layers);
        tp_model_free(m);
        return CLI_USAGE;
    }
    int32_t *ids = NULL;
    size_t avail = 0;
    if ((s = tp_calib_load(m->tok, data, seq, &ids, &avail))) {
        tp_model_free(m);
        return cli_error(s);
    }
    size_t n = (size_t)samples;
    if (avail < n) {
        fprintf(stderr, "taper importance: %s has %zu samples of %d tokens; using all of them (asked for %d)\n", data,
                avail, seq, samples);
        n = avail;
    }
    if ((size_t)depth > n) depth = (int)n;
    if (block && !depth) {
        free(ids);
        tp_model_free(m);
        return cli_usage("importance", "--block needs --depth-samples > 0");
    }
    task_metric tm = {0};
    tp_layer_metric lm = {metric, 1, task_metric_fn, &tm};
    if (metric) {
        if (!data_dir) {
            const char *env = getenv("TAPER_DATA");
            data_dir = env && *env ? env : "../shared/data";
        }
        s = tp_task_load(metric, data_dir, (size_t)metric_limit, &tm.task);
        if (!s && tm.task->kind != TP_TASK_MC)
            s = tp_fail(TP_ERR_ARG, "--block-metric %s: not a multiple-choice task (no accuracy to compare)", metric);
        if (s) {
            tp_task_free(tm.task);
            free(ids);
            tp_model_free(m);
            return cli_error(s);
        }
        fprintf(stderr, "taper importance: scoring %d blocks and the full model on %s (%zu items)\n",
                m->cfg.n_layers - block + 1, metric, tm.task->n_items);
    }
    tp_importance_opts o;
    tp_importance_opts_default(&o);
    o.block_metric = metric ? &lm : NULL;
    o.batch = batch;
    o.neuron_source = src;
    o.depth_samples = depth;
    o.block_size = block;
    tp_progress prog;
    tp_progress_begin(&prog, "importance", 0, "tok");
    o.progress = &prog;
    tp_importance *imp = NULL;
    s = tp_importance_compute(m, ids, n, seq, &o, &imp);
    tp_progress_end(&prog);
    tp_task_free(tm.task);
    free(ids);
    if (!s && (!(imp->model = strdup(argv[optind])) || !(imp->data = strdup(data))))
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_model_free(m);
    if (!s) s = tp_importance_save(imp, out);
    if (s) {
        tp_importance_free(imp);
        return cli_error(s);
    }
    fprintf(stderr, "taper importance: wrote %s\n", out);
    return finish(imp, pair >= 0 ? pair : imp->default_pair, out, json);
}
