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
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper prune MODEL --scores SCORES [--hidden N] [--ffn N] [--heads N] [--kv-heads N]\n"
    "                   [--layers N] [--drop-layers LIST] [--depth-metric M] [--agg BATCH,SEQ] -o OUT\n"
    "       taper prune MODEL --scores SCORES --target-params 90M [--data FILE] [...] -o OUT\n"
    "       taper prune MODEL --plan prune_plan.json -o OUT\n\n"
    "Keeps the top-ranked parts of MODEL by the importance scores (taper importance) and writes the\n"
    "smaller model as an HF folder OUT (config.json with every changed size and head_dim, safetensors,\n"
    "tokenizer) plus OUT/prune_plan.json, which lists exactly which source indices were kept.\n"
    "Every layer keeps the same sizes (what transformers and llama.cpp load).\n\n"
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
    "  --dtype T           HF tensors: f32 (default), f16, bf16\n"
    "  --gguf FILE         also write a GGUF\n"
    "  --gguf-type T       f32 (default), f16, bf16, q8_0\n"
    "  --heterogeneous     per-layer widths (not supported yet)\n"
    "  --threads N         OpenMP threads (default: all cores)\n"
    "  --json[=FILE]       also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help          this help\n\n"
    "Exit codes: 2 for malformed options, 1 for targets this model cannot meet (message names the option).\n";

/* "12-17,20" -> sorted list; returns CLI_OK or a usage error. */
static int parse_layers(const char *s, int **out, int *n) {
    int cap = 16, k = 0;
    int *v = malloc((size_t)cap * sizeof *v);
    if (!v) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    const char *p = s;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b;
        if (end == p || a < 0 || a > 100000) goto bad;
        p = end;
        b = a;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1 || b < a || b > 100000) goto bad;
            p = end;
        }
        for (long i = a; i <= b; i++) {
            if (k == cap) {
                cap *= 2;
                int *nv = realloc(v, (size_t)cap * sizeof *nv);
                if (!nv) { free(v); return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory")); }
                v = nv;
            }
            v[k++] = (int)i;
        }
        if (*p == ',') p++;
        else if (*p) goto bad;
    }
    if (k == 0) goto bad;
    *out = v;
    *n = k;
    return CLI_OK;
bad:
    free(v);
    return cli_usage("prune", "--drop-layers expects a list like 12-17 or 3,7,20-22, got '%s'", s);
}

static void print_shape(const char *what, const tp_config *c, size_t params) {
    printf("%-8s hidden %d, ffn %d, heads %d / kv-heads %d (head_dim %d), layers %d: %zu params (%.1fM)\n", what,
           c->d_model, c->d_ff, c->n_heads, c->n_kv_heads, c->head_dim, c->n_layers, params, (double)params / 1e6);
}

static cJSON *shape_json(const tp_config *c, size_t params) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "hidden_size", c->d_model);
    cJSON_AddNumberToObject(o, "intermediate_size", c->d_ff);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "params", (double)params);
    return o;
}

typedef struct {
    const char *model, *scores, *plan_in, *plan_out, *out, *data, *agg, *dtype, *gguf, *gguf_type, *json;
    tp_prune_shape shape;
    int *drop, n_drop, max_cand, eval_samples, seq_len;
    tp_depth_rule rule;
    size_t target;
    double tol;
} prune_args;

/* Runs the budget search and sets a->shape to the winner; prints the candidate table. */
static tp_status search(const tp_model *m, const tp_importance *imp, int pair, prune_args *a, cJSON *j) {
    tp_search_opts o;
    tp_search_opts_default(&o);
    o.target = a->target;
    o.tolerance = a->tol;
    o.fixed = a->shape;
    o.max_candidates = a->max_cand;
    o.agg_pair = pair;
    o.depth_rule = a->rule;
    tp_prune_candidate *c = NULL;
    int nc = 0, nt = 0;
    /* enumerate first: an impossible budget fails before any text is read */
    tp_status s = tp_prune_search(m, imp, &o, &c, &nc, &nt);
    free(c);
    c = NULL;
    if (s) return s;
    const char *data = a->data ? a->data : imp->data;
    if (!data) return tp_fail(TP_ERR_ARG, "--target-params: the scores name no calibration file; give --data FILE");
    int T = a->seq_len ? a->seq_len : imp->seq_len;
    int32_t *ids = NULL;
    size_t avail = 0;
    s = tp_calib_load(m->tok, data, T, &ids, &avail);
    if (s) return s;
    size_t ne = (size_t)a->eval_samples, first = (size_t)imp->n_samples;
    if (ne > avail) ne = avail;
    if (first + ne > avail) {
        first = avail - ne;
        fprintf(stderr, "taper prune: %s has only %zu samples of %d tokens; held-out samples start at %zu and may "
                "overlap the calibration ones\n", data, avail, T, first);
    }
    o.eval_ids = ids + first * (size_t)T;
    o.eval_samples = ne;
    o.seq_len = T;
    tp_progress prog;
    tp_progress_begin(&prog, "search", 0, "cand");
    o.progress = &prog;
    s = tp_prune_search(m, imp, &o, &c, &nc, &nt);
    tp_progress_end(&prog);
    free(ids);
    if (s) return s;
    printf("budget   %zu params +-%.0f%%: %d shapes on the grid qualify, %d evaluated; held-out loss on %zu x %d "
           "tokens of %s (samples %zu..%zu)\n\n", a->target, 100 * a->tol, nt, nc, ne, T, data, first, first + ne - 1);
    printf("%4s %7s %6s %6s %6s %7s %12s %10s %9s\n", "rank", "hidden", "ffn", "heads", "kv", "layers", "params",
           "loss", "ppl");
    cJSON *arr = j ? cJSON_AddArrayToObject(j, "candidates") : NULL;
    for (int i = 0; i < nc; i++) {
        const tp_prune_shape *sh = &c[i].shape;
        printf("%4d %7d %6d %6d %6d %7d %12zu %10.5f %9.3f\n", i + 1, sh->d_model, sh->d_ff, sh->n_heads,
               sh->n_kv_heads, sh->n_layers, c[i].n_params, c[i].loss, exp(c[i].loss));
        if (arr) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "rank", i + 1);
            cJSON_AddNumberToObject(e, "hidden_size", sh->d_model);
            cJSON_AddNumberToObject(e, "intermediate_size", sh->d_ff);
            cJSON_AddNumberToObject(e, "num_attention_heads", sh->n_heads);
            cJSON_AddNumberToObject(e, "num_key_value_heads", sh->n_kv_heads);
            cJSON_AddNumberToObject(e, "num_hidden_layers", sh->n_layers);
            cJSON_AddNumberToObject(e, "params", (double)c[i].n_params);
            cJSON_AddNumberToObject(e, "heldout_loss", c[i].loss);
            cJSON_AddItemToArray(arr, e);
        }
    }
    printf("\n");
    if (j) {
        cJSON_AddNumberToObject(j, "target_params", (double)a->target);
        cJSON_AddNumberToObject(j, "qualifying_shapes", nt);
    }
    a->shape = c[0].shape;
    free(c);
    return TP_OK;
}

static int run(prune_args *a) {
    tp_model *m = NULL, *pm = NULL;
    tp_importance *imp = NULL;
    tp_prune_plan *plan = NULL;
    cJSON *j = a->json ? cJSON_CreateObject() : NULL;
    char *plan_path = NULL;
    double t0 = tp_time_s();
    tp_status s = TP_OK;
    if (a->plan_in) s = tp_prune_plan_load(a->plan_in, &plan);
    else if (a->scores) s = tp_importance_load(a->scores, &imp);
    if (!s) s = tp_model_load(a->model, &m);
    if (!s && imp) s = tp_importance_check_model(imp, &m->cfg, a->scores);
    int pair = -1;
    if (!s && a->agg) s = tp_agg_pair_parse(a->agg, &pair);
    if (!s && imp && pair < 0) pair = imp->default_pair;
    if (!s && !plan && a->target) s = search(m, imp, pair, a, j);
    if (!s && !plan) s = tp_prune_plan_make(&m->cfg, imp, pair, &a->shape, a->rule, a->drop, a->n_drop, &plan);
    if (!s && !plan->scores && a->scores && !(plan->scores = strdup(a->scores))) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s) s = tp_prune_apply(m, plan, &pm);
    if (!s) {
        pm->tok = m->tok; /* the vocabulary is unchanged */
        m->tok = NULL;
        print_shape("source", &m->cfg, plan->src_params);
        print_shape("pruned", &pm->cfg, plan->n_params);
        printf("depth    %s; kept layers",
               a->plan_in ? "from the plan"
               : pm->cfg.n_layers == m->cfg.n_layers ? "all layers kept" : tp_depth_rule_name(plan->depth_rule));
        for (int i = 0; i < pm->cfg.n_layers; i++) printf("%s%d", i ? "," : " ", plan->layers[i]);
        printf("\n");
        if (plan->agg_pair >= 0) printf("ranking  %s\n", tp_agg_pair_name(plan->agg_pair));
    }
    if (!s) {
        if (a->plan_out) plan_path = strdup(a->plan_out);
        else if (a->out && (plan_path = malloc(strlen(a->out) + 20))) sprintf(plan_path, "%s/prune_plan.json", a->out);
        if (!plan_path) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    if (!s && a->out) {
        const char *dt = !strcasecmp(a->dtype, "f16") ? "F16" : !strcasecmp(a->dtype, "bf16") ? "BF16" : "F32";
        s = tp_model_save_hf(pm, a->out, dt);
        if (!s) printf("wrote    %s (HF folder, %s)\n", a->out, dt);
        if (!s) cli_note_hf_tokenizer(a->out);
    }
    if (!s) s = tp_prune_plan_save(plan, plan_path);
    if (!s) printf("wrote    %s\n", plan_path);
    if (!s && a->gguf) {
        int gt = !strcasecmp(a->gguf_type, "f16") ? TP_GGML_F16 : !strcasecmp(a->gguf_type, "bf16") ? TP_GGML_BF16
                 : !strcasecmp(a->gguf_type, "q8_0") ? TP_GGML_Q8_0 : TP_GGML_F32;
        s = tp_model_save_gguf(pm, a->gguf, gt);
        if (!s) printf("wrote    %s (GGUF, %s)\n", a->gguf, a->gguf_type);
    }
    if (!s && j) {
        cJSON_AddStringToObject(j, "model", a->model);
        cJSON_AddItemToObject(j, "source", shape_json(&m->cfg, plan->src_params));
        cJSON_AddItemToObject(j, "pruned", shape_json(&pm->cfg, plan->n_params));
        cJSON_AddItemToObject(j, "layers_kept", cJSON_CreateIntArray(plan->layers, pm->cfg.n_layers));
        cJSON_AddStringToObject(j, "depth_rule", a->plan_in ? "plan"
                                                 : pm->cfg.n_layers == m->cfg.n_layers ? "none"
                                                 : tp_depth_rule_name(plan->depth_rule));
        if (plan->agg_pair >= 0) cJSON_AddStringToObject(j, "aggregation", tp_agg_pair_name(plan->agg_pair));
        cJSON_AddStringToObject(j, "plan", plan_path);
        if (a->out) cJSON_AddStringToObject(j, "out", a->out);
        if (a->gguf) cJSON_AddStringToObject(j, "gguf", a->gguf);
        cJSON_AddNumberToObject(j, "seconds", tp_time_s() - t0);
    }
    free(plan_path);
    tp_prune_plan_free(plan);
    tp_importance_free(imp);
    tp_model_free(pm);
    tp_model_free(m);
    if (s) {
        cJSON_Delete(j);
        return cli_error(s);
    }
    return j ? cli_json_out(j, a->json) : CLI_OK;
}

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
                                         {"threads", required_argument, 0, 't'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    prune_args a = {0};
    a.dtype = "f32";
    a.gguf_type = "f32";
    a.max_cand = 12;
    a.eval_samples = 16;
    a.tol = 0.05;
    a.rule = TP_DEPTH_AUTO;
    int threads = 0, c, rc, hetero = 0, width_given = 0;
    float tol = 0.05f;
    optind = 1;
#define INT_OPT(name, lo, hi, dst) \
    if ((rc = cli_int("prune", name, optarg, lo, hi, dst))) goto usage_out;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); free(a.drop); return CLI_OK;
        case 'S': a.scores = optarg; break;
        case 'H': INT_OPT("--hidden", 1, 1 << 24, &a.shape.d_model) width_given = 1; break;
        case 'F': INT_OPT("--ffn", 1, 1 << 24, &a.shape.d_ff) width_given = 1; break;
        case 'A': INT_OPT("--heads", 1, 1 << 16, &a.shape.n_heads) width_given = 1; break;
        case 'K': INT_OPT("--kv-heads", 1, 1 << 16, &a.shape.n_kv_heads) width_given = 1; break;
        case 'L': INT_OPT("--layers", 1, 1 << 16, &a.shape.n_layers) break;
        case 'X':
            free(a.drop);
            a.drop = NULL;
            if ((rc = parse_layers(optarg, &a.drop, &a.n_drop))) goto usage_out;
            break;
        case 'm':
            if (tp_depth_rule_parse(optarg, &a.rule) || a.rule == TP_DEPTH_LIST) {
                rc = cli_usage("prune", "--depth-metric must be auto, block, block-metric, loss or bi, got '%s'", optarg);
                goto usage_out;
            }
            break;
        case 'a': {
            int pair;
            if (tp_agg_pair_parse(optarg, &pair)) { rc = cli_usage("prune", "--agg: %s", tp_errmsg()); goto usage_out; }
            a.agg = optarg;
            break;
        }
        case 'P':
            if (tp_parse_count(optarg, &a.target)) { rc = cli_usage("prune", "--target-params: %s", tp_errmsg()); goto usage_out; }
            break;
        case 'e':
            if ((rc = cli_float("prune", "--tolerance", optarg, 1e-4, 0.5, &tol))) goto usage_out;
            a.tol = tol;
            break;
        case 'C': INT_OPT("--max-candidates", 0, 1 << 20, &a.max_cand) break;
        case 'd': a.data = optarg; break;
        case 'E': INT_OPT("--eval-samples", 1, 1 << 20, &a.eval_samples) break;
        case 'T': INT_OPT("--seq-len", 2, 1 << 20, &a.seq_len) break;
        case 'o': a.out = optarg; break;
        case 'p': a.plan_in = optarg; break;
        case 'q': a.plan_out = optarg; break;
        case 'D': a.dtype = optarg; break;
        case 'g': a.gguf = optarg; break;
        case 'G': a.gguf_type = optarg; break;
        case 'Z': hetero = 1; break;
        case 't': INT_OPT("--threads", 1, 1024, &threads) break;
        case 'j': a.json = optarg ? optarg : "-"; break;
        default: rc = cli_usage("prune", "unknown option"); goto usage_out;
        }
    }
#undef INT_OPT
    if (optind != argc - 1) { rc = cli_usage("prune", "expects exactly one MODEL"); goto usage_out; }
    a.model = argv[optind];
    if (!a.out && !a.plan_out) { rc = cli_usage("prune", "-o OUT (or --plan-out FILE) is required"); goto usage_out; }
    if (strcasecmp(a.dtype, "f32") && strcasecmp(a.dtype, "f16") && strcasecmp(a.dtype, "bf16")) {
        rc = cli_usage("prune", "--dtype must be f32, f16 or bf16, got '%s'", a.dtype);
        goto usage_out;
    }
    if (strcasecmp(a.gguf_type, "f32") && strcasecmp(a.gguf_type, "f16") && strcasecmp(a.gguf_type, "bf16") &&
        strcasecmp(a.gguf_type, "q8_0")) {
        rc = cli_usage("prune", "--gguf-type must be f32, f16, bf16 or q8_0, got '%s'", a.gguf_type);
        goto usage_out;
    }
    if (a.plan_in && (a.scores || width_given || a.shape.n_layers || a.drop || a.target || a.agg)) {
        rc = cli_usage("prune", "--plan replays a plan; it takes no --scores, sizes, --drop-layers, --agg or --target-params");
        goto usage_out;
    }
    if (!a.plan_in && !a.scores && (width_given || a.target || (a.shape.n_layers && !a.drop))) {
        rc = cli_usage("prune", "--scores SCORES is required (from taper importance) unless only --drop-layers is given");
        goto usage_out;
    }
    if (a.target && a.drop) {
        rc = cli_usage("prune", "--target-params chooses the depth itself; give --layers to fix it, not --drop-layers");
        goto usage_out;
    }
    if (hetero) {
        free(a.drop);
        return cli_error(tp_fail(TP_ERR_UNSUPPORTED, "--heterogeneous: per-layer widths are not supported yet (tp_model "
                                 "has one shape for every layer); prune to homogeneous sizes"));
    }
    cli_set_threads(threads);
    rc = run(&a);
usage_out:
    free(a.drop);
    return rc;
}
