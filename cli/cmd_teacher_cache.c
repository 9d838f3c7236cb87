/* taper teacher-cache TEACHER --data SHARDS --seq T --topk K -o CACHE: runs the teacher once over
 * every training window the loader of `taper distill --data SHARDS --seq T --val-frac F` serves and
 * stores its top-K tokens per position, so that distillation (`taper distill --teacher-cache`)
 * runs without the teacher. Argument parsing, signals and the summary live here; the builder and
 * the file format are src/train/teacher_cache.c's. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "taper/distill.h"
#include "taper/train.h"

static const char *HELP =
    "usage: taper teacher-cache TEACHER --data SHARDS -o CACHE [options]\n\n"
    "Runs TEACHER once over every training window that `taper distill --data SHARDS --seq T\n"
    "--val-frac F` would serve (validation windows excluded) and writes, per position, the teacher's\n"
    "top-K token ids, their raw logits and the full-vocabulary log-sum-exp at each --tau, indexed by\n"
    "window. `taper distill STUDENT --teacher-cache CACHE --data SHARDS --seq T ...` then trains\n"
    "from the file without loading the teacher, every epoch, with the same losses as top-K\n"
    "distillation against the live teacher (docs/distillation.md has the format).\n\n"
    "  --data PATH      token shards: a .tpt file, a directory of them, or a comma-separated list\n"
    "  -o, --output F   the cache file; written as F.partial and renamed when complete\n"
    "  --seq T          tokens per window (default 256, as taper train)\n"
    "  --val-frac F     fraction of windows held out for validation (default 0.05, as taper train)\n"
    "  --topk K         teacher tokens kept per position (default 32); distill --topk may be <= K\n"
    "  --tau LIST       temperatures whose normalisers are stored, comma-separated (default 1, at most\n"
    "                   8); distill --tau must be one of them\n"
    "  --batch B        windows per teacher forward (default 4)\n"
    "  --restart        ignore an interrupted F.partial instead of resuming it\n"
    "  --threads N      OpenMP threads (default: all cores)\n"
    "  --quiet          no progress bar\n"
    "  -h, --help       this help\n\n"
    "Size: windows x T x (8 K + 8 n_tau) bytes. An interrupted run (Ctrl-C, SIGTERM, a crash) leaves\n"
    "F.partial; the same command continues it, keeping every window whose checksum holds.\n"
    "Under mpirun -np N each rank computes its share of the missing windows (whole batches) into the\n"
    "same file (on a file system every rank sees); the cache is the same bytes for any N.\n"
    "Exit codes: 0 done, 1 failure, 2 usage error, 130/143 stopped by a signal (F.partial kept).\n";


static int parse_taus(const char *s, tp_tcache_build_opts *o) {
    o->n_tau = 0;
    char *copy = strdup(s);
    if (!copy) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    int rc = CLI_OK;
    for (char *save = NULL, *it = strtok_r(copy, ",", &save); it && rc == CLI_OK; it = strtok_r(NULL, ",", &save)) {
        if (o->n_tau == TP_TCACHE_MAX_TAU) {
            rc = cli_usage("teacher-cache", "--tau: at most %d temperatures", TP_TCACHE_MAX_TAU);
            break;
        }
        rc = cli_float("teacher-cache", "--tau", it, 1e-3, 1e3, &o->tau[o->n_tau]);
        for (int j = 0; rc == CLI_OK && j < o->n_tau; j++)
            if (o->tau[j] == o->tau[o->n_tau]) rc = cli_usage("teacher-cache", "--tau: %s given twice", it);
        o->n_tau++;
    }
    if (rc == CLI_OK && o->n_tau == 0) rc = cli_usage("teacher-cache", "--tau: no temperature in '%s'", s);
    free(copy);
    return rc;
}

static tp_status check_fits(const char *data, const char *teacher_path, const tp_model *t, const tp_dataset *ds) {
    tp_dataset_info di;
    tp_dataset_get_info(ds, &di);
    if (t->tok && di.tok_fingerprint) {
        uint64_t fp = tp_shard_tok_fingerprint(t->tok);
        if (fp != di.tok_fingerprint)
            return tp_fail(TP_ERR_ARG, "%s was tokenized by another tokenizer (fingerprint %016llx) than %s's (%016llx)",
                           data, (unsigned long long)di.tok_fingerprint, teacher_path, (unsigned long long)fp);
    }
    return TP_OK;
}

/* The settings the library's messages name (the loader's seq and val_frac, tp_tcache_build_opts's K)
 * as this command's flags. */
static const char *const FLAGS[] = {"seq", "--seq", "val_frac", "--val-frac", "K", "--topk", NULL};

int cmd_teacher_cache(int argc, char **argv) {
    enum { O_DATA = 256, O_SEQ, O_VALFRAC, O_TOPK, O_TAU, O_BATCH, O_RESTART, O_THREADS, O_QUIET };
    static const struct option opts[] = {
        {"data", required_argument, 0, O_DATA},    {"output", required_argument, 0, 'o'},
        {"seq", required_argument, 0, O_SEQ},      {"val-frac", required_argument, 0, O_VALFRAC},
        {"topk", required_argument, 0, O_TOPK},    {"tau", required_argument, 0, O_TAU},
        {"batch", required_argument, 0, O_BATCH},  {"restart", no_argument, 0, O_RESTART},
        {"threads", required_argument, 0, O_THREADS}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    const char *C = "teacher-cache", *data = NULL, *out = NULL;
    int seq = 256, threads = 0, rc = CLI_OK, c;
    float val_frac = 0.05f;
    tp_tcache_build_opts o;
    tp_tcache_build_defaults(&o);
    optind = 1;
    while (rc == CLI_OK && (c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'o': out = optarg; break;
        case O_DATA: data = optarg; break;
        case O_SEQ: rc = cli_int(C, "--seq", optarg, 1, 1 << 20, &seq); break;
        case O_VALFRAC: rc = cli_float(C, "--val-frac", optarg, 0, 0.9, &val_frac); break;
        case O_TOPK: rc = cli_int(C, "--topk", optarg, 1, 1 << 24, &o.K); break;
        case O_TAU: rc = parse_taus(optarg, &o); break;
        case O_BATCH: rc = cli_int(C, "--batch", optarg, 1, 1 << 16, &o.B); break;
        case O_RESTART: o.restart = 1; break;
        case O_THREADS: rc = cli_int(C, "--threads", optarg, 1, 1024, &threads); break;
        case O_QUIET: o.quiet = 1; break;
        default: return cli_usage(C, "unknown option");
        }
    }
    if (rc) return rc;
    if (optind != argc - 1) return cli_usage(C, "expects exactly one TEACHER");
    if (!data) return cli_usage(C, "--data SHARDS is required");
    if (!out) return cli_usage(C, "-o CACHE is required");
    cli_set_threads(threads);
    const char *teacher_path = argv[optind];
    tp_model *t = NULL;
    tp_dataset *ds = NULL;
    tp_loader *L = NULL;
    tp_tcache_build_result r;
    memset(&r, 0, sizeof r);
    tp_status s = tp_model_load(teacher_path, &t);
    if (!s) s = tp_dataset_open(data, &ds);
    if (!s) s = check_fits(data, teacher_path, t, ds);
    if (!s) s = tp_loader_open(ds, seq, val_frac, 1, &L);
    if (!s && !o.quiet) {
        char desc[1024];
        tp_loader_describe(L, desc, sizeof desc);
        fprintf(stderr, "taper teacher-cache: teacher %s (%zu params), top-%d, %d temperature%s\n%s\n", teacher_path,
                t->n_params, o.K, o.n_tau, o.n_tau > 1 ? "s" : "", desc);
    }
    if (!s) {
        o.stop = cli_stop_signals("\ntaper teacher-cache: stop requested: finishing this batch (signal again to abort)\n");
        s = tp_tcache_build(t, L, out, &o, &r);
        cli_stop_signals_end();
    }
    if (s) {
        rc = cli_error_map(s, FLAGS);
    } else {
        printf("windows    %llu (%llu computed now, %llu from an earlier run)\n", (unsigned long long)r.n_windows,
               (unsigned long long)r.computed, (unsigned long long)r.done_before);
        printf("tokens     %llu computed in %.1f s (%.1f tok/s)\n", (unsigned long long)r.computed * (unsigned long long)seq,
               r.seconds, r.tokens_per_s);
        if (r.complete) {
            printf("wrote      %s (%.1f MiB: top-%d, seq %d, %d temperature%s)\n", out, (double)r.bytes / 1048576.0,
                   o.K, seq, o.n_tau, o.n_tau > 1 ? "s" : "");
        } else {
            printf("stopped    %s.partial kept; run the same command again to continue\n", out);
            rc = *o.stop ? 128 + (int)*o.stop : CLI_FAIL;
        }
    }
    tp_loader_free(L);
    tp_dataset_close(ds);
    tp_model_free(t);
    return rc;
}
