/* taper train MODEL --data SHARDS --steps N --run-dir DIR: causal-LM training (cross-entropy) with
 * AdamW, warmup + cosine, validation, metrics, checkpoints and exact resume. Here: option parsing,
 * signal handlers and the stdout summary; the job itself (args.json, resume policy, loop,
 * summary.json, exports) is tp_train_job_run (src/train/train_job.c). `taper distill`
 * (cli/cmd_distill.c) comes through cli_train_main with its distillation job. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "taper/distill.h"
#include "taper/model.h"
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
    "  --threads N          OpenMP threads (default: all cores; under mpirun, each rank its share)\n"
    "  --quiet              no progress bar or log lines on stderr\n"
    "  -h, --help           this help\n\n"
    "Several processes (data parallel, docs/distributed.md): mpirun -np N taper train ... runs N ranks;\n"
    "each computes --accum micro-batches of --batch per update (global batch B x A x N), gradients are\n"
    "summed in rank order, rank 0 writes DIR. A run resumes only with the rank count it started with.\n\n"
    "Exit codes: 0 done, 1 failure (NaN/inf stops name the step and keep the last good checkpoint),\n"
    "2 usage error, 130/143 stopped by SIGINT/SIGTERM after writing a checkpoint.\n";



static void print_summary(const tp_train_job *j, const tp_train_job_result *res) {
    const tp_train_result *r = &res->r;
    double tps = r->train_seconds > 0 ? r->tokens / r->train_seconds : 0;
    printf("run        %s\n", j->run_dir);
    if (r->resumed_from) printf("resumed    %s (step %ld)\n", r->resumed_from, r->step_start);
    printf("steps      %ld of %d%s\n", r->step, j->steps, r->stopped ? " (stopped on request)" : "");
    if (!isnan(r->loss)) printf("loss       %.4f (last step)\n", r->loss);
    if (!isnan(r->val_loss_first))
        printf("val_loss   %.4f -> %.4f (ppl %.2f -> %.2f)\n", r->val_loss_first, r->val_loss, exp(r->val_loss_first),
               exp(r->val_loss));
    printf("tokens     %.0f this session, %.0f in the run\n", r->tokens, r->tokens_seen);
    printf("time       %.1f s this session (%.1f s in updates, %.1f tok/s), %.1f s in the run\n", r->seconds,
           r->train_seconds, tps, r->elapsed_s);
    printf("memory     peak RSS %.0f MiB (activations %.0f MiB, grads + Adam %.0f MiB)\n", res->peak_rss_mib,
           r->tape_bytes / 1048576.0, r->state_bytes / 1048576.0);
    if (r->last_ckpt) printf("checkpoint %s\n", r->last_ckpt);
    if (res->exported_hf) printf("wrote      %s (HF folder, %s)\n", j->export_hf, j->export_dtype);
    if (res->exported_gguf) printf("wrote      %s (GGUF, %s)\n", j->export_gguf, j->export_gguf_type);
}

static int parse(int argc, char **argv, tp_train_job *a, int *threads) {
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
        case O_WD: rc = cli_float(C, "--weight-decay", optarg, 0, 1e6, &a->weight_decay); break;
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
        case O_THREADS: rc = cli_int(C, "--threads", optarg, 1, 1024, threads); break;
        case O_INIT: a->init_config = optarg; break;
        case O_EXHF: a->export_hf = optarg; break;
        case O_EXDT: a->export_dtype = optarg; break;
        case O_EXGG: a->export_gguf = optarg; break;
        case O_EXGT: a->export_gguf_type = optarg; break;
        case O_QUIET: a->quiet = 1; break;
        case O_PREC: a->precision = optarg; break;
        default: return cli_usage(C, "unknown option");
        }
    }
    if (rc) return rc;
    a->seed = (uint64_t)seed;
    if (optind != argc - 1) return cli_usage(C, "expects exactly one MODEL");
    a->model = argv[optind];
    if (!a->data) return cli_usage(C, "--data SHARDS is required (write shards with `taper tokenize`)");
    if (a->steps < 0) return cli_usage(C, "--steps N is required");
    if (!a->run_dir) return cli_usage(C, "--run-dir DIR is required");
    if (a->precision && tp_set_precision(a->precision)) return cli_usage(C, "--precision: %s", tp_errmsg());
    if (a->min_lr > a->lr) return cli_usage(C, "--min-lr %g exceeds --lr %g", a->min_lr, a->lr);
    if (strcasecmp(a->export_dtype, "f32") && strcasecmp(a->export_dtype, "f16") && strcasecmp(a->export_dtype, "bf16"))
        return cli_usage(C, "--export-dtype must be f32, f16 or bf16, got '%s'", a->export_dtype);
    if (strcasecmp(a->export_gguf_type, "f32") && strcasecmp(a->export_gguf_type, "f16") &&
        strcasecmp(a->export_gguf_type, "bf16") && strcasecmp(a->export_gguf_type, "q8_0"))
        return cli_usage(C, "--export-gguf-type must be f32, f16, bf16 or q8_0, got '%s'", a->export_gguf_type);
    return CLI_OK;
}

/* The job fields (tp_train_job, tp_distill_job, the teacher cache's) the library's messages name,
 * as the flags of taper train and taper distill. */
static const char *const TRAIN_FLAGS[] = {"seq", "--seq", "val_frac", "--val-frac", NULL};
static const char *const DISTILL_FLAGS[] = {
    "seq", "--seq", "val_frac", "--val-frac", "map", "--map", "topk", "--topk", "tau", "--tau", "negatives",
    "--negatives", "inter", "--inter", "emb_loss", "--emb-loss", "teacher_cache", "--teacher-cache", "kd", "--kd",
    "kd_weight", "--kd-weight", "ce_weight", "--ce-weight", "contrastive_weight", "--contrastive-weight", "alpha",
    "--alpha", "keep_mask", "--keep-mask", NULL};

int cli_train_main(int argc, char **argv, const tp_distill_job *d) {
    tp_train_job j;
    tp_train_job_default(&j);
    int threads = 0, rc = parse(argc, argv, &j, &threads);
    if (rc) return rc < 0 ? CLI_OK : rc;
    cli_set_threads(threads);
    /* checked here too, for a message that names the flags */
    char newest[256] = "";
    if (!j.resume && tp_run_dir_ckpts(j.run_dir, newest, sizeof newest) > 0)
        return cli_error(tp_fail(TP_ERR_ARG, "%s already holds checkpoints (newest %s): add --resume, or use a new "
                                             "--run-dir", j.run_dir, newest));
    j.stop = cli_stop_signals("\ntaper train: stop requested: finishing this step and writing a checkpoint "
                              "(signal again to abort)\n");
    tp_train_job_result res;
    tp_status s = d ? tp_distill_run(&j, d, &res) : tp_train_job_run(&j, &res);
    cli_stop_signals_end();
    if (res.trained) print_summary(&j, &res);
    rc = s ? cli_error_map(s, d ? DISTILL_FLAGS : TRAIN_FLAGS) : CLI_OK;
    if (!s && res.r.stopped) {
        printf("stopped by signal %d; continue with the same command plus --resume\n", res.stop_signal);
        rc = 128 + res.stop_signal;
    }
    tp_train_job_result_free(&res);
    return rc;
}

int cmd_train(int argc, char **argv) { return cli_train_main(argc, argv, NULL); }
