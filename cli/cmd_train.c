/* taper train MODEL --data SHARDS --steps N --run-dir DIR: causal-LM training (cross-entropy) with
 * AdamW, warmup + cosine, validation, metrics, checkpoints and exact resume. Argument parsing,
 * the run directory's args.json / summary.json, signal handling and export live here; the loop
 * is tp_train_run (src/train/trainer.c). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/train.h"
#include "taper/trainer.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper train MODEL --data SHARDS --steps N --run-dir DIR [options]\n\n"
    "Trains MODEL (a .gguf file or an HF folder) with next-token cross-entropy on token shards written\n"
    "by `taper tokenize`, using AdamW with linear warmup and cosine decay. DIR receives args.json,\n"
    "metrics.jsonl (one JSON line per step), checkpoints ckpt-<step>.tpc and summary.json.\n"
    "Ctrl-C / SIGTERM finish the current step and write a checkpoint; --resume continues exactly.\n\n"
    "data and batch\n"
    "  --data PATH          a .tpt shard, a directory of them, or a comma-separated list (required)\n"
    "  --steps N            optimizer updates in total (required)\n"
    "  --seq T              tokens per sequence (default 256)\n"
    "  --batch B            sequences per micro-batch (default 4)\n"
    "  --accum A            micro-batches per update; gradients are averaged (default 1)\n"
    "  --val-frac F         fraction of windows held out for validation (default 0.05)\n"
    "  --val-every K        validation every K steps, plus at step 0 and at the end (default 0: only\n"
    "                       those two; -1: never)\n"
    "  --val-batches N      batches of B held-out windows per validation (default 8, 0 = all)\n"
    "optimizer\n"
    "  --lr X               peak learning rate (default 3e-4)\n"
    "  --min-lr X           end of the cosine decay (default 3e-5)\n"
    "  --warmup N           linear warmup steps (default 0)\n"
    "  --schedule-steps N   horizon of the cosine (default: --steps; kept from args.json on resume)\n"
    "  --weight-decay X     decoupled weight decay on matrices (default 0.1)\n"
    "  --beta1 X, --beta2 X, --eps X   AdamW constants (defaults 0.9, 0.95, 1e-8)\n"
    "  --clip X             global gradient-norm clipping (default 1, 0 = off)\n"
    "  --seed N             data order and random init (default 1)\n"
    "run directory\n"
    "  --run-dir DIR        where everything is written (required)\n"
    "  --ckpt-every K       checkpoint every K steps (default 100; always at the end and on stop)\n"
    "  --keep K             checkpoints kept (default 2, 0 = all)\n"
    "  --resume             continue from DIR's newest valid checkpoint (or start if it has none);\n"
    "                       refused when a setting that changes the trajectory differs. --steps may\n"
    "                       change (the schedule keeps its horizon); --threads may change, at the cost\n"
    "                       of bit-identity with an uninterrupted run\n"
    "model and output\n"
    "  --init-config FILE   train from scratch: config.json of the architecture, weights N(0, 0.02),\n"
    "                       norms 1; the tokenizer comes from MODEL\n"
    "  --export-hf DIR      write the final model as an HF folder\n"
    "  --export-dtype T     f32 (default), f16, bf16\n"
    "  --export-gguf FILE   write the final model as GGUF\n"
    "  --export-gguf-type T f32 (default), f16, bf16, q8_0\n"
    "other\n"
    "  --recompute          recompute activations in the backward (less memory, ~1/3 more compute)\n"
    "  --threads N          OpenMP threads (default: all cores)\n"
    "  --quiet              no progress bar or log lines on stderr\n"
    "  -h, --help           this help\n\n"
    "Exit codes: 0 done, 1 failure (NaN/inf stops name the step and keep the last good checkpoint),\n"
    "2 usage error, 130/143 stopped by SIGINT/SIGTERM after writing a checkpoint.\n";

typedef struct {
    const char *model, *data, *run_dir, *init_config, *export_hf, *export_gguf, *dtype, *gguf_type, *precision;
    int steps, schedule_steps, seq, batch, accum, warmup, val_every, val_batches, ckpt_every, keep;
    int resume, recompute, threads, quiet;
    long seed;
    float lr, min_lr, wd, beta1, beta2, eps, clip, val_frac;
} train_args;

/* Settings that change what the run computes: a resume must match them exactly. */
static const char *const TRAJECTORY_KEYS[] = {"model_hash", "vocab", "data_tokens", "data_docs", "seq", "batch",
                                              "accum", "lr", "min_lr", "warmup", "schedule_steps", "weight_decay",
                                              "beta1", "beta2", "eps", "clip", "seed", "val_frac", "distill",
                                              "precision", NULL};

/* Set by `taper distill` (cli/cmd_distill.c) before it calls cmd_train: adds its settings to
 * args.json (key "distill") and plugs its hooks into the loop. NULL for plain training. */
const cli_train_ext *cli_train_extension;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    g_stop = sig;
    static const char msg[] = "\ntaper train: stop requested: finishing this step and writing a checkpoint "
                              "(signal again to abort)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    signal(sig, SIG_DFL); /* a second signal ends the process at once */
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART; /* a checkpoint being written must not see EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int n_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* MODEL, or a random init of --init-config with MODEL's tokenizer. */
static tp_status load_model(const train_args *a, tp_model **out) {
    if (!a->init_config) return tp_model_load(a->model, out);
    char *text = NULL;
    tp_config c;
    tp_model *m = NULL;
    tp_status s;
    if ((s = tp_read_file(a->init_config, &text, NULL)) || (s = tp_config_from_json(text, a->init_config, &c)) ||
        (s = tp_config_validate(&c)) || (s = tp_model_alloc(&c, &m)) ||
        (s = tp_tok_load_any(a->model, &m->tok, &m->chat_template))) {
        free(text);
        tp_model_free(m);
        return s;
    }
    free(text);
    if (m->tok && tp_tok_vocab_size(m->tok) > c.vocab) {
        s = tp_fail(TP_ERR_ARG, "%s: vocab_size %d is smaller than the tokenizer of %s (%d tokens)", a->init_config,
                    c.vocab, a->model, tp_tok_vocab_size(m->tok));
        tp_model_free(m);
        return s;
    }
    tp_model_init_random(m, (uint64_t)a->seed, 0.02f);
    *out = m;
    return TP_OK;
}

static cJSON *make_args(const train_args *a, const tp_model *m, const tp_dataset *ds, int schedule_steps) {
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)tp_params_hash(m));
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "command", "train");
    cJSON_AddStringToObject(j, "model", a->model);
    if (a->init_config) cJSON_AddStringToObject(j, "init_config", a->init_config);
    cJSON_AddStringToObject(j, "model_hash", hash);
    cJSON_AddNumberToObject(j, "n_params", (double)m->n_params);
    cJSON_AddNumberToObject(j, "vocab", m->cfg.vocab);
    cJSON_AddStringToObject(j, "data", a->data);
    cJSON_AddNumberToObject(j, "data_tokens", (double)tp_dataset_tokens(ds));
    cJSON_AddNumberToObject(j, "data_docs", (double)tp_dataset_docs(ds));
    tp_dataset_info di;
    tp_dataset_get_info(ds, &di);
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)di.tok_fingerprint);
    cJSON_AddStringToObject(j, "data_tokenizer", hash);
    cJSON_AddNumberToObject(j, "steps", a->steps);
    cJSON_AddNumberToObject(j, "schedule_steps", schedule_steps);
    cJSON_AddNumberToObject(j, "seq", a->seq);
    cJSON_AddNumberToObject(j, "batch", a->batch);
    cJSON_AddNumberToObject(j, "accum", a->accum);
    cJSON_AddNumberToObject(j, "lr", a->lr);
    cJSON_AddNumberToObject(j, "min_lr", a->min_lr);
    cJSON_AddNumberToObject(j, "warmup", a->warmup);
    cJSON_AddNumberToObject(j, "weight_decay", a->wd);
    cJSON_AddNumberToObject(j, "beta1", a->beta1);
    cJSON_AddNumberToObject(j, "beta2", a->beta2);
    cJSON_AddNumberToObject(j, "eps", a->eps);
    cJSON_AddNumberToObject(j, "clip", a->clip);
    cJSON_AddNumberToObject(j, "seed", (double)a->seed);
    cJSON_AddNumberToObject(j, "val_frac", a->val_frac);
    cJSON_AddNumberToObject(j, "val_every", a->val_every);
    cJSON_AddNumberToObject(j, "val_batches", a->val_batches);
    cJSON_AddNumberToObject(j, "ckpt_every", a->ckpt_every);
    cJSON_AddNumberToObject(j, "keep", a->keep);
    cJSON_AddBoolToObject(j, "recompute", a->recompute);
    if (strcmp(tp_precision_name(), "fp32")) /* absent for fp32: runs from before the option resume */
        cJSON_AddStringToObject(j, "precision", tp_precision_name());
    cJSON_AddNumberToObject(j, "threads", n_threads());
    return j;
}

/* Token ids must exist in the model, and shards made by another tokenizer are refused. */
static tp_status check_data_fits(const train_args *a, const tp_model *m, const tp_dataset *ds) {
    tp_dataset_info di;
    tp_dataset_get_info(ds, &di);
    if (di.vocab > (uint32_t)m->cfg.vocab)
        return tp_fail(TP_ERR_ARG, "%s: the shards' vocabulary has %u ids, the model only %d", a->data, di.vocab,
                       m->cfg.vocab);
    if (m->tok && di.tok_fingerprint) {
        uint64_t fp = tp_shard_tok_fingerprint(m->tok);
        if (fp != di.tok_fingerprint)
            return tp_fail(TP_ERR_ARG, "%s was tokenized by another tokenizer (fingerprint %016llx) than %s's (%016llx)",
                           a->data, (unsigned long long)di.tok_fingerprint, a->model, (unsigned long long)fp);
    }
    return TP_OK;
}

/* On --resume: the saved args.json (NULL if none). Fails on an unreadable or malformed file. */
static tp_status read_saved_args(const char *run_dir, cJSON **out) {
    *out = NULL;
    char *p = tp_path_join(run_dir, "args.json"), *text = NULL;
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = TP_OK;
    if (access(p, F_OK) == 0) {
        if (!(s = tp_read_file(p, &text, NULL))) {
            *out = cJSON_Parse(text);
            if (!*out || !cJSON_IsObject(*out)) {
                cJSON_Delete(*out);
                *out = NULL;
                s = tp_fail(TP_ERR_FORMAT, "%s: not a JSON object", p);
            }
        }
    }
    free(text);
    free(p);
    return s;
}

static int saved_int(const cJSON *saved, const char *key, int fallback) {
    const cJSON *v = saved ? cJSON_GetObjectItemCaseSensitive(saved, key) : NULL;
    return cJSON_IsNumber(v) ? v->valueint : fallback;
}

static void print_summary(const train_args *a, const tp_train_result *r, double peak_rss_mb, cJSON *sum) {
    double tps = r->train_seconds > 0 ? r->tokens / r->train_seconds : 0;
    printf("run        %s\n", a->run_dir);
    if (r->resumed_from) printf("resumed    %s (step %ld)\n", r->resumed_from, r->step_start);
    printf("steps      %ld of %d%s\n", r->step, a->steps, r->stopped ? " (stopped on request)" : "");
    if (!isnan(r->loss)) printf("loss       %.4f (last step)\n", r->loss);
    if (!isnan(r->val_loss_first))
        printf("val_loss   %.4f -> %.4f (ppl %.2f -> %.2f)\n", r->val_loss_first, r->val_loss, exp(r->val_loss_first),
               exp(r->val_loss));
    printf("tokens     %.0f this session, %.0f in the run\n", r->tokens, r->tokens_seen);
    printf("time       %.1f s this session (%.1f s in updates, %.1f tok/s), %.1f s in the run\n", r->seconds,
           r->train_seconds, tps, r->elapsed_s);
    printf("memory     peak RSS %.0f MiB (activations %.0f MiB, grads + Adam %.0f MiB)\n", peak_rss_mb,
           r->tape_bytes / 1048576.0, r->state_bytes / 1048576.0);
    if (r->last_ckpt) printf("checkpoint %s\n", r->last_ckpt);
    cJSON_AddStringToObject(sum, "run_dir", a->run_dir);
    if (r->resumed_from) cJSON_AddStringToObject(sum, "resumed_from", r->resumed_from);
    cJSON_AddNumberToObject(sum, "step_start", (double)r->step_start);
    cJSON_AddNumberToObject(sum, "step", (double)r->step);
    cJSON_AddNumberToObject(sum, "steps", a->steps);
    cJSON_AddBoolToObject(sum, "stopped", r->stopped);
    if (!isnan(r->loss)) cJSON_AddNumberToObject(sum, "loss", r->loss);
    if (!isnan(r->val_loss_first)) cJSON_AddNumberToObject(sum, "val_loss_first", r->val_loss_first);
    if (!isnan(r->val_loss)) cJSON_AddNumberToObject(sum, "val_loss", r->val_loss);
    cJSON_AddNumberToObject(sum, "tokens", r->tokens);
    cJSON_AddNumberToObject(sum, "tokens_seen", r->tokens_seen);
    cJSON_AddNumberToObject(sum, "seconds", r->seconds);
    cJSON_AddNumberToObject(sum, "train_seconds", r->train_seconds);
    cJSON_AddNumberToObject(sum, "tokens_per_s", tps);
    cJSON_AddNumberToObject(sum, "elapsed_s", r->elapsed_s);
    cJSON_AddNumberToObject(sum, "peak_rss_mib", peak_rss_mb);
    cJSON_AddNumberToObject(sum, "activation_bytes", (double)r->tape_bytes);
    cJSON_AddNumberToObject(sum, "state_bytes", (double)r->state_bytes);
    cJSON_AddNumberToObject(sum, "threads", n_threads());
    if (r->last_ckpt) cJSON_AddStringToObject(sum, "checkpoint", r->last_ckpt);
}

static tp_status export_model(const train_args *a, const tp_model *m, cJSON *sum) {
    tp_status s = TP_OK;
    if (a->export_hf) {
        const char *dt = !strcasecmp(a->dtype, "f16") ? "F16" : !strcasecmp(a->dtype, "bf16") ? "BF16" : "F32";
        if ((s = tp_model_save_hf(m, a->export_hf, dt))) return s;
        printf("wrote      %s (HF folder, %s)\n", a->export_hf, a->dtype);
        cli_note_hf_tokenizer(a->export_hf);
        cJSON_AddStringToObject(sum, "export_hf", a->export_hf);
    }
    if (a->export_gguf) {
        if (!m->tok)
            fprintf(stderr, "taper train: warning: %s has no tokenizer, so neither has the GGUF (llama.cpp and taper "
                            "need one to load it)\n", a->model);
        int gt = !strcasecmp(a->gguf_type, "f16")    ? TP_GGML_F16
                 : !strcasecmp(a->gguf_type, "bf16") ? TP_GGML_BF16
                 : !strcasecmp(a->gguf_type, "q8_0") ? TP_GGML_Q8_0
                                                     : TP_GGML_F32;
        if ((s = tp_model_save_gguf(m, a->export_gguf, gt))) return s;
        printf("wrote      %s (GGUF, %s)\n", a->export_gguf, a->gguf_type);
        cJSON_AddStringToObject(sum, "export_gguf", a->export_gguf);
    }
    return s;
}

static int parse(int argc, char **argv, train_args *a) {
    enum { O_STEPS = 256, O_SEQ, O_BATCH, O_ACCUM, O_LR, O_MINLR, O_WARMUP, O_SCHED, O_WD, O_B1, O_B2, O_EPS, O_CLIP,
           O_SEED, O_VALFRAC, O_VALEVERY, O_VALB, O_CKPT, O_KEEP, O_RUNDIR, O_RESUME, O_RECOMP, O_THREADS, O_INIT,
           O_EXHF, O_EXDT, O_EXGG, O_EXGT, O_QUIET, O_DATA, O_PREC };
    static const struct option opts[] = {
        {"data", required_argument, 0, O_DATA},          {"steps", required_argument, 0, O_STEPS},
        {"seq", required_argument, 0, O_SEQ},            {"batch", required_argument, 0, O_BATCH},
        {"accum", required_argument, 0, O_ACCUM},        {"lr", required_argument, 0, O_LR},
        {"min-lr", required_argument, 0, O_MINLR},       {"warmup", required_argument, 0, O_WARMUP},
        {"schedule-steps", required_argument, 0, O_SCHED}, {"weight-decay", required_argument, 0, O_WD},
        {"beta1", required_argument, 0, O_B1},           {"beta2", required_argument, 0, O_B2},
        {"eps", required_argument, 0, O_EPS},            {"clip", required_argument, 0, O_CLIP},
        {"seed", required_argument, 0, O_SEED},          {"val-frac", required_argument, 0, O_VALFRAC},
        {"val-every", required_argument, 0, O_VALEVERY}, {"val-batches", required_argument, 0, O_VALB},
        {"ckpt-every", required_argument, 0, O_CKPT},    {"keep", required_argument, 0, O_KEEP},
        {"run-dir", required_argument, 0, O_RUNDIR},     {"resume", no_argument, 0, O_RESUME},
        {"recompute", no_argument, 0, O_RECOMP},         {"threads", required_argument, 0, O_THREADS},
        {"init-config", required_argument, 0, O_INIT},   {"export-hf", required_argument, 0, O_EXHF},
        {"export-dtype", required_argument, 0, O_EXDT},  {"export-gguf", required_argument, 0, O_EXGG},
        {"export-gguf-type", required_argument, 0, O_EXGT}, {"quiet", no_argument, 0, O_QUIET},
        {"precision", required_argument, 0, O_PREC},
        {"help", no_argument, 0, 'h'},                   {0, 0, 0, 0}};
    const char *C = "train";
    int c, rc = CLI_OK, seed = 1;
    optind = 1;
    while (rc == CLI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return -1;
        case O_DATA: a->data = optarg; break;
        case O_STEPS: rc = cli_int(C, "--steps", optarg, 0, 1000000000, &a->steps); break;
        case O_SCHED: rc = cli_int(C, "--schedule-steps", optarg, 1, 1000000000, &a->schedule_steps); break;
        case O_SEQ: rc = cli_int(C, "--seq", optarg, 1, 1 << 20, &a->seq); break;
        case O_BATCH: rc = cli_int(C, "--batch", optarg, 1, 1 << 16, &a->batch); break;
        case O_ACCUM: rc = cli_int(C, "--accum", optarg, 1, 1 << 16, &a->accum); break;
        case O_LR: rc = cli_float(C, "--lr", optarg, 0, 1e30, &a->lr); break;
        case O_MINLR: rc = cli_float(C, "--min-lr", optarg, 0, 1e30, &a->min_lr); break;
        case O_WARMUP: rc = cli_int(C, "--warmup", optarg, 0, 1000000000, &a->warmup); break;
        case O_WD: rc = cli_float(C, "--weight-decay", optarg, 0, 1e6, &a->wd); break;
        case O_B1: rc = cli_float(C, "--beta1", optarg, 0, 0.999999, &a->beta1); break;
        case O_B2: rc = cli_float(C, "--beta2", optarg, 0, 0.99999999, &a->beta2); break;
        case O_EPS: rc = cli_float(C, "--eps", optarg, 0, 1, &a->eps); break;
        case O_CLIP: rc = cli_float(C, "--clip", optarg, 0, 1e30, &a->clip); break;
        case O_SEED: rc = cli_int(C, "--seed", optarg, 0, 2147483647, &seed); break;
        case O_VALFRAC: rc = cli_float(C, "--val-frac", optarg, 0, 0.9, &a->val_frac); break;
        case O_VALEVERY: rc = cli_int(C, "--val-every", optarg, -1, 1000000000, &a->val_every); break;
        case O_VALB: rc = cli_int(C, "--val-batches", optarg, 0, 1000000000, &a->val_batches); break;
        case O_CKPT: rc = cli_int(C, "--ckpt-every", optarg, 0, 1000000000, &a->ckpt_every); break;
        case O_KEEP: rc = cli_int(C, "--keep", optarg, 0, 1000000, &a->keep); break;
        case O_RUNDIR: a->run_dir = optarg; break;
        case O_RESUME: a->resume = 1; break;
        case O_RECOMP: a->recompute = 1; break;
        case O_THREADS: rc = cli_int(C, "--threads", optarg, 1, 1024, &a->threads); break;
        case O_INIT: a->init_config = optarg; break;
        case O_EXHF: a->export_hf = optarg; break;
        case O_EXDT: a->dtype = optarg; break;
        case O_EXGG: a->export_gguf = optarg; break;
        case O_EXGT: a->gguf_type = optarg; break;
        case O_QUIET: a->quiet = 1; break;
        case O_PREC: a->precision = optarg; break;
        default: return cli_usage(C, "unknown option");
        }
    }
    if (rc) return rc;
    a->seed = seed;
    if (optind != argc - 1) return cli_usage(C, "expects exactly one MODEL");
    a->model = argv[optind];
    if (!a->data) return cli_usage(C, "--data SHARDS is required (write shards with `taper tokenize`)");
    if (a->steps < 0) return cli_usage(C, "--steps N is required");
    if (!a->run_dir) return cli_usage(C, "--run-dir DIR is required");
    if (a->precision && tp_set_precision(a->precision)) return cli_usage(C, "--precision: %s", tp_errmsg());
    if (a->min_lr > a->lr) return cli_usage(C, "--min-lr %g exceeds --lr %g", a->min_lr, a->lr);
    if (strcasecmp(a->dtype, "f32") && strcasecmp(a->dtype, "f16") && strcasecmp(a->dtype, "bf16"))
        return cli_usage(C, "--export-dtype must be f32, f16 or bf16, got '%s'", a->dtype);
    if (strcasecmp(a->gguf_type, "f32") && strcasecmp(a->gguf_type, "f16") && strcasecmp(a->gguf_type, "bf16") &&
        strcasecmp(a->gguf_type, "q8_0"))
        return cli_usage(C, "--export-gguf-type must be f32, f16, bf16 or q8_0, got '%s'", a->gguf_type);
    return CLI_OK;
}

/* Resume policy on the CLI side: settings that change the trajectory must match args.json (the
 * library checks them again against the checkpoint it loads); the rest may change, with a note. */
static tp_status check_resume_args(const train_args *a, const cJSON *saved, cJSON *now) {
    char *now_text = cJSON_PrintUnformatted(now), *saved_text = cJSON_PrintUnformatted(saved);
    tp_status s = tp_train_args_compare(saved_text, now_text, TRAJECTORY_KEYS);
    if (s) s = tp_fail_ctx(s, "refusing to resume %s: ", a->run_dir);
    free(now_text);
    free(saved_text);
    if (s || a->quiet) return s;
    int old_steps = saved_int(saved, "steps", a->steps), old_threads = saved_int(saved, "threads", n_threads());
    if (old_steps != a->steps)
        fprintf(stderr, "taper train: --steps %d (was %d); the lr schedule keeps its horizon of %d steps\n", a->steps,
                old_steps, saved_int(saved, "schedule_steps", old_steps));
    if (old_threads != n_threads())
        fprintf(stderr,
                "taper train: warning: %d threads (the run used %d): results will not be bit-identical to an "
                "uninterrupted run\n",
                n_threads(), old_threads);
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(saved, "data");
    if (cJSON_IsString(sd) && strcmp(sd->valuestring, a->data))
        fprintf(stderr, "taper train: note: --data %s (was %s; same token and document counts)\n", a->data,
                sd->valuestring);
    return TP_OK;
}

static int finish(tp_status s, const train_args *a, tp_model *m, tp_train_result *r, cJSON *sum) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int rc = CLI_OK;
    if (s) {
        rc = cli_error(s);
    } else {
        print_summary(a, r, ru.ru_maxrss / 1024.0, sum);
        if (!r->stopped && (s = export_model(a, m, sum))) rc = cli_error(s);
        char *p = tp_path_join(a->run_dir, "summary.json");
        tp_status ws = p ? tp_write_json_atomic(p, sum) : tp_fail(TP_ERR_NOMEM, "out of memory");
        if (ws && rc == CLI_OK) rc = cli_error(ws);
        free(p);
        if (r->stopped && rc == CLI_OK) {
            printf("stopped by signal %d; continue with the same command plus --resume\n", (int)g_stop);
            rc = 128 + (int)g_stop;
        }
    }
    cJSON_Delete(sum);
    tp_train_result_free(r);
    tp_model_free(m);
    return rc;
}

int cmd_train(int argc, char **argv) {
    tp_adamw_cfg od;
    tp_adamw_defaults(&od);
    train_args a = {.steps = -1, .seq = 256, .batch = 4, .accum = 1, .val_every = 0, .val_batches = 8,
                    .ckpt_every = 100, .keep = 2, .seed = 1, .lr = od.lr, .min_lr = od.min_lr, .wd = od.weight_decay,
                    .beta1 = od.beta1, .beta2 = od.beta2, .eps = od.eps, .clip = od.clip, .val_frac = 0.05f,
                    .dtype = "f32", .gguf_type = "f32"};
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? CLI_OK : rc;
    cli_set_threads(a.threads);
    if (tp_mkdir_p(a.run_dir) != 0)
        return cli_error(tp_fail(TP_ERR_IO, "%s: cannot create the run directory: %s", a.run_dir, strerror(errno)));
    char newest[256] = "";
    int n_ck = tp_run_dir_ckpts(a.run_dir, newest, sizeof newest);
    if (n_ck > 0 && !a.resume)
        return cli_error(tp_fail(TP_ERR_ARG, "%s already holds checkpoints (newest %s): add --resume, or use a new "
                                             "--run-dir", a.run_dir, newest));
    cJSON *saved = NULL;
    tp_status s = a.resume ? read_saved_args(a.run_dir, &saved) : TP_OK;
    if (s) return cli_error(s);
    if (!a.schedule_steps) a.schedule_steps = saved_int(saved, "schedule_steps", a.steps > 0 ? a.steps : 1);

    tp_model *m = NULL;
    tp_dataset *ds = NULL;
    tp_loader *L = NULL;
    cJSON *args = NULL;
    char *args_text = NULL, *args_path = NULL;
    if (!(s = load_model(&a, &m)) && !(s = tp_dataset_open(a.data, &ds)) &&
        !(s = tp_loader_open(ds, a.seq, a.val_frac, (uint64_t)a.seed, &L))) {
        if (tp_loader_n_train(L) == 0)
            s = tp_fail(TP_ERR_ARG, "%s: no training windows of %d+1 tokens (%zu tokens in all)", a.data, a.seq,
                        tp_dataset_tokens(ds));
    }
    if (!s) s = check_data_fits(&a, m, ds);
    if (!s) s = tp_model_prepare_precision(m, 0);
    if (!s) {
        args = make_args(&a, m, ds, a.schedule_steps);
        if (cli_train_extension) {
            cJSON_ReplaceItemInObject(args, "command", cJSON_CreateString(cli_train_extension->name));
            s = cli_train_extension->add_args(cli_train_extension->user, m, args);
        }
        if (!s && saved) s = check_resume_args(&a, saved, args);
    }
    if (!s) {
        args_text = cJSON_Print(args);
        args_path = tp_path_join(a.run_dir, "args.json");
        if (!args_text || !args_path) s = tp_fail(TP_ERR_NOMEM, "out of memory");
        else s = tp_write_file_atomic(args_path, args_text, strlen(args_text));
    }
    tp_train_result r;
    memset(&r, 0, sizeof r);
    if (!s) {
        tp_train_cfg cfg;
        tp_train_cfg_defaults(&cfg);
        cfg.steps = a.steps;
        cfg.B = a.batch;
        cfg.T = a.seq;
        cfg.accum = a.accum;
        cfg.opt.lr = a.lr;
        cfg.opt.min_lr = a.min_lr;
        cfg.opt.warmup_steps = a.warmup;
        cfg.opt.total_steps = a.schedule_steps;
        cfg.opt.beta1 = a.beta1;
        cfg.opt.beta2 = a.beta2;
        cfg.opt.eps = a.eps;
        cfg.opt.weight_decay = a.wd;
        cfg.opt.clip = a.clip;
        cfg.seed = (uint64_t)a.seed;
        cfg.val_every = a.val_every;
        cfg.val_batches = a.val_batches;
        cfg.ckpt_every = a.ckpt_every;
        cfg.keep = a.keep;
        cfg.recompute = a.recompute;
        cfg.run_dir = a.run_dir;
        cfg.args_json = args_text;
        cfg.resume_keys = TRAJECTORY_KEYS;
        cfg.resume = a.resume;
        cfg.quiet = a.quiet;
        cfg.stop = &g_stop;
        tp_train_data data = {L, NULL, NULL};
        const tp_train_hooks *hooks = NULL;
        if (cli_train_extension) s = cli_train_extension->setup(cli_train_extension->user, m, &cfg, &hooks);
        install_signals();
        if (!a.quiet) {
            char desc[1024];
            tp_loader_describe(L, desc, sizeof desc);
            fprintf(stderr, "taper train: %zu params; %d x %d x %d = %d tokens per step; %d threads; products: %s\n%s\n",
                    m->n_params, a.batch, a.seq, a.accum, a.batch * a.seq * a.accum, n_threads(), tp_gemm_info(), desc);
        }
        if (!s) s = tp_train_run(m, &cfg, &data, hooks, &r);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
    }
    cJSON_Delete(saved);
    cJSON_Delete(args);
    free(args_text);
    free(args_path);
    tp_loader_free(L);
    tp_dataset_close(ds);
    return finish(s, &a, m, &r, cJSON_CreateObject());
}
