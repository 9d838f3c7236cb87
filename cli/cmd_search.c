/* taper search TEACHER --scores S --data SHARDS --target-params N -o DIR: architecture search
 * ranked by short distillation (tp_search_run, src/compress/search.c). Option parsing, signals and
 * the tables on stdout only. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "taper/compress.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper search TEACHER --scores SCORES --data SHARDS (--target-params N | --target-mem SIZE)\n"
    "                    -o DIR [options]\n\n"
    "Finds the shape to prune TEACHER to, the way the Minitron papers do: every candidate shape\n"
    "within the budget is pruned with the importance SCORES and scored untrained on held-out\n"
    "windows of SHARDS (cross-entropy and KL from the teacher); then the best --candidates of them\n"
    "are each distilled for --search-steps steps from one teacher cache (built once into\n"
    "DIR/teacher.tkc) and scored again on the same windows. Untrained scores mislead; the second\n"
    "ranking, by held-out KL after distillation, picks the shape. Both rankings, their Spearman\n"
    "correlation and timings go to DIR/search.json. Interrupt it at any time: the same command\n"
    "skips finished candidates and resumes the one in progress (DIR/cand-*/).\n\n"
    "budget and grid\n"
    "  --target-params N   e.g. 90M: shapes within +-tolerance of N parameters\n"
    "  --target-mem SIZE   e.g. 2G: weights (at --mem-weight-bytes each) + the KV cache of\n"
    "                      --mem-ctx tokens in bf16, instead of a parameter count\n"
    "  --mem-ctx N         context of the memory target (default 4096)\n"
    "  --mem-weight-bytes B  bytes per weight of the memory target (default 2: bf16)\n"
    "  --tolerance F       fraction (default 0.05)\n"
    "  --hidden N, --ffn N, --heads N, --kv-heads N, --layers N   hold that axis at N\n"
    "  --hidden-step N     grid step of the hidden size (default 64)\n"
    "  --ffn-step N        grid step of the FFN width (default 128, or 64)\n"
    "  --layer-step N      grid step of the depth (default 1)\n"
    "  --max-cut F         largest fraction of any axis that may go (default: hidden and FFN down\n"
    "                      to one step, depth down to half)\n"
    "  --max-candidates N  score at most N shapes untrained, spread over the grid (default 0 = all)\n"
    "  --list              enumerate the shapes with their sizes, write search.json, stop\n"
    "ranking\n"
    "  --candidates K      shapes distilled, the best K untrained (default 4)\n"
    "  --search-steps N    distillation steps of each (default 200)\n"
    "  --eval-windows N    held-out windows both rankings score (default 32)\n"
    "  --teacher-cache F   reuse this cache (made by taper teacher-cache with the same --seq and\n"
    "                      --val-frac) instead of DIR/teacher.tkc\n"
    "  --topk K            the cache's K and the distillation's top-k (default 32)\n"
    "  --seq T, --batch B, --lr X, --min-lr X, --warmup N, --val-frac F, --seed N\n"
    "                      distillation settings (256, 4, 3e-4, 3e-5, 10, 0.05, 1)\n"
    "other\n"
    "  --threads N         OpenMP threads (default: all cores)\n"
    "  --quiet             no progress bars or log lines\n"
    "  --json[=FILE]       print search.json (stdout, or FILE)\n"
    "  -h, --help          this help\n\n"
    "Then prune to the winner: taper prune TEACHER --scores SCORES --hidden .. --ffn .. --heads ..\n"
    "--kv-heads .. --layers .. -o OUT (the line printed last), or take DIR/<best>/final, already\n"
    "distilled for --search-steps steps.\n"
    "Exit codes: 0 done, 1 failure, 2 usage error, 130/143 stopped by a signal (resumable).\n";

static const char *const FLAGS[] = {"target_params", "--target-params", "target_mem", "--target-mem",
                                    "tolerance", "--tolerance", "max_cut", "--max-cut", "val_frac", "--val-frac",
                                    "seq", "--seq", "kv_heads", "--kv-heads", "hidden", "--hidden", "ffn", "--ffn",
                                    "heads", "--heads", "layers", "--layers", NULL};

static void print_tables(const tp_search_result *r, int list_only) {
    printf("%d shapes within the budget%s\n\n", r->n_qualifying,
           r->n_rows < r->n_qualifying ? " (a spread of them scored)" : "");
    printf("%-34s %12s %10s %10s %10s %6s %10s %10s %6s\n", "candidate", "params", "mem MiB", "loss0", "kd0", "rank0",
           "kd", "ppl", "rank");
    for (int i = 0; i < r->n_rows; i++) {
        const tp_search_row *x = &r->rows[i];
        char kd[16] = "", ppl[16] = "", rank[8] = "", l0[16] = "", k0[16] = "";
        if (!isnan(x->loss0)) snprintf(l0, sizeof l0, "%.4f", x->loss0);
        if (!isnan(x->kd0)) snprintf(k0, sizeof k0, "%.4f", x->kd0);
        if (x->distilled) {
            snprintf(kd, sizeof kd, "%.4f", x->kd);
            snprintf(ppl, sizeof ppl, "%.2f", exp(x->loss));
            snprintf(rank, sizeof rank, "%d", x->rank);
        }
        printf("%-34s %12zu %10.1f %10s %10s %6d %10s %10s %6s\n", x->name, x->n_params, x->mem_bytes / 1048576.0, l0,
               k0, x->rank0, kd, ppl, rank);
    }
    if (list_only) return;
    printf("\n");
    if (!isnan(r->split_half))
        printf("stability  untrained ranking by each half of the %d held-out windows: Spearman %.3f\n",
               r->eval_windows, r->split_half);
    if (!isnan(r->spearman_kd))
        printf("spearman   untrained CE vs distilled KL %.3f, vs distilled CE %.3f (%d distilled)\n", r->spearman_kd,
               r->spearman_loss, r->n_distilled);
    printf("teacher    %llu windows run (held-out + cache) in this call\n", (unsigned long long)r->teacher_windows);
    printf("time       untrained %.1f s, cache %.1f s, distillation %.1f s\n", r->stage1_seconds, r->cache_seconds,
           r->stage2_seconds);
    if (r->best >= 0) {
        const tp_prune_shape *b = &r->rows[r->best].shape;
        printf("best       %s: taper prune ... --hidden %d --ffn %d --heads %d --kv-heads %d --layers %d\n",
               r->rows[r->best].name, b->d_model, b->d_ff, b->n_heads, b->n_kv_heads, b->n_layers);
    }
}

int cmd_search(int argc, char **argv) {
    enum {
        O_SCORES = 256, O_DATA, O_TP, O_TM, O_MCTX, O_MWB, O_TOL, O_HID, O_FFN, O_HEADS, O_KV, O_LAY, O_HS, O_FS, O_LS,
        O_CUT, O_MAXC, O_LIST, O_K, O_STEPS, O_EVW, O_CACHE, O_TOPK, O_SEQ, O_BATCH, O_LR, O_MINLR, O_WARM, O_VF,
        O_SEED, O_THREADS, O_QUIET, O_JSON
    };
    static const struct option opts[] = {
        {"scores", required_argument, 0, O_SCORES}, {"data", required_argument, 0, O_DATA},
        {"target-params", required_argument, 0, O_TP}, {"target-mem", required_argument, 0, O_TM},
        {"mem-ctx", required_argument, 0, O_MCTX}, {"mem-weight-bytes", required_argument, 0, O_MWB},
        {"tolerance", required_argument, 0, O_TOL}, {"hidden", required_argument, 0, O_HID},
        {"ffn", required_argument, 0, O_FFN}, {"heads", required_argument, 0, O_HEADS},
        {"kv-heads", required_argument, 0, O_KV}, {"layers", required_argument, 0, O_LAY},
        {"hidden-step", required_argument, 0, O_HS}, {"ffn-step", required_argument, 0, O_FS},
        {"layer-step", required_argument, 0, O_LS}, {"max-cut", required_argument, 0, O_CUT},
        {"max-candidates", required_argument, 0, O_MAXC}, {"list", no_argument, 0, O_LIST},
        {"candidates", required_argument, 0, O_K}, {"search-steps", required_argument, 0, O_STEPS},
        {"eval-windows", required_argument, 0, O_EVW}, {"teacher-cache", required_argument, 0, O_CACHE},
        {"topk", required_argument, 0, O_TOPK}, {"seq", required_argument, 0, O_SEQ},
        {"batch", required_argument, 0, O_BATCH}, {"lr", required_argument, 0, O_LR},
        {"min-lr", required_argument, 0, O_MINLR}, {"warmup", required_argument, 0, O_WARM},
        {"val-frac", required_argument, 0, O_VF}, {"seed", required_argument, 0, O_SEED},
        {"threads", required_argument, 0, O_THREADS}, {"quiet", no_argument, 0, O_QUIET},
        {"json", optional_argument, 0, O_JSON}, {"output", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *C = "search", *json = NULL;
    tp_search_job j;
    tp_search_job_default(&j);
    int threads = 0, rc = CLI_OK, c, seed = 1;
    float tol = (float)j.grid.tolerance, cut = 0, mwb = 2, vf = (float)j.val_frac;
    double tmem = 0;
    optind = 1;
    while (rc == CLI_OK && (c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'o': j.run_dir = optarg; break;
        case O_SCORES: j.scores = optarg; break;
        case O_DATA: j.data = optarg; break;
        case O_TP:
            if (tp_parse_count(optarg, &j.grid.target)) rc = cli_usage(C, "--target-params: %s", tp_errmsg());
            break;
        case O_TM: rc = cli_mem_limit(C, optarg, &tmem); break;
        case O_MCTX: rc = cli_int(C, "--mem-ctx", optarg, 1, 1 << 24, &j.grid.mem_ctx); break;
        case O_MWB: rc = cli_float(C, "--mem-weight-bytes", optarg, 0.01, 8, &mwb); break;
        case O_TOL: rc = cli_float(C, "--tolerance", optarg, 1e-4, 0.99, &tol); break;
        case O_HID: rc = cli_int(C, "--hidden", optarg, 1, 1 << 20, &j.grid.fixed.d_model); break;
        case O_FFN: rc = cli_int(C, "--ffn", optarg, 1, 1 << 22, &j.grid.fixed.d_ff); break;
        case O_HEADS: rc = cli_int(C, "--heads", optarg, 1, 4096, &j.grid.fixed.n_heads); break;
        case O_KV: rc = cli_int(C, "--kv-heads", optarg, 1, 4096, &j.grid.fixed.n_kv_heads); break;
        case O_LAY: rc = cli_int(C, "--layers", optarg, 1, 4096, &j.grid.fixed.n_layers); break;
        case O_HS: rc = cli_int(C, "--hidden-step", optarg, 1, 1 << 20, &j.grid.hidden_step); break;
        case O_FS: rc = cli_int(C, "--ffn-step", optarg, 1, 1 << 22, &j.grid.ffn_step); break;
        case O_LS: rc = cli_int(C, "--layer-step", optarg, 1, 4096, &j.grid.layer_step); break;
        case O_CUT: rc = cli_float(C, "--max-cut", optarg, 0.001, 0.999, &cut); break;
        case O_MAXC: rc = cli_int(C, "--max-candidates", optarg, 0, 1 << 20, &j.grid.max_candidates); break;
        case O_LIST: j.list_only = 1; break;
        case O_K: rc = cli_int(C, "--candidates", optarg, 1, 1 << 16, &j.candidates); break;
        case O_STEPS: rc = cli_int(C, "--search-steps", optarg, 1, 1 << 30, &j.steps); break;
        case O_EVW: rc = cli_int(C, "--eval-windows", optarg, 1, 1 << 20, &j.eval_windows); break;
        case O_CACHE: j.teacher_cache = optarg; break;
        case O_TOPK: rc = cli_int(C, "--topk", optarg, 1, 1 << 20, &j.topk); break;
        case O_SEQ: rc = cli_int(C, "--seq", optarg, 2, 1 << 20, &j.seq); break;
        case O_BATCH: rc = cli_int(C, "--batch", optarg, 1, 1 << 16, &j.batch); break;
        case O_LR: rc = cli_float(C, "--lr", optarg, 0, 10, &j.lr); break;
        case O_MINLR: rc = cli_float(C, "--min-lr", optarg, 0, 10, &j.min_lr); break;
        case O_WARM: rc = cli_int(C, "--warmup", optarg, 0, 1 << 30, &j.warmup); break;
        case O_VF: rc = cli_float(C, "--val-frac", optarg, 0.001, 0.9, &vf); break;
        case O_SEED: rc = cli_int(C, "--seed", optarg, 0, 1 << 30, &seed); break;
        case O_THREADS: rc = cli_int(C, "--threads", optarg, 1, 1024, &threads); break;
        case O_QUIET: j.quiet = 1; break;
        case O_JSON: json = optarg ? optarg : "-"; break;
        default: return cli_usage(C, "unknown option");
        }
    }
    if (rc) return rc;
    if (optind != argc - 1) return cli_usage(C, "expects exactly one TEACHER");
    if (!j.scores || !j.data || !j.run_dir) return cli_usage(C, "--scores, --data and -o DIR are required");
    if (!j.grid.target && !(tmem > 0)) return cli_usage(C, "give --target-params N or --target-mem SIZE");
    if (j.grid.target && tmem > 0) return cli_usage(C, "--target-params and --target-mem exclude each other");
    j.model = argv[optind];
    j.grid.tolerance = tol;
    j.grid.max_cut = cut;
    j.grid.target_mem = tmem;
    j.grid.mem_weight_bytes = mwb;
    j.val_frac = vf;
    j.seed = (uint64_t)seed;
    cli_set_threads(threads);
    j.stop = cli_stop_signals("\ntaper search: stop requested: the candidate in progress stops at its next update "
                              "(the same command resumes; signal again to abort)\n");
    tp_search_result r;
    tp_status s = tp_search_run(&j, &r);
    cli_stop_signals_end();
    if (s) {
        rc = cli_error_map(s, FLAGS);
    } else {
        print_tables(&r, j.list_only);
        if (r.stopped) {
            printf("stopped    on request; run the same command again to continue\n");
            rc = j.stop && *j.stop ? 128 + (int)*j.stop : CLI_FAIL;
        }
        if (json) {
            char *p = tp_path_join(j.run_dir, "search.json");
            cJSON *o = NULL;
            char *text = NULL;
            if (p && tp_read_file(p, &text, NULL) == TP_OK) o = cJSON_Parse(text);
            free(text);
            free(p);
            if (o) cli_json_out(o, json);
        }
    }
    tp_search_result_free(&r);
    return rc;
}
