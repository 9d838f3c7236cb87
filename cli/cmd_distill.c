/* taper distill STUDENT --teacher TEACHER --data SHARDS --steps N --run-dir DIR: knowledge
 * distillation (or --teacher-cache CACHE: the teacher's top-k precomputed by taper teacher-cache).
 * Takes every option of `taper train` (same loop, checkpoints, exact resume, export) plus the
 * distillation options below: it removes those from the command line into a tp_distill_job and
 * hands the rest to `taper train`'s code (cli_train_main), which runs tp_distill_run
 * (src/train/distill_job.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/distill.h"

static const char *HELP =
    "usage: taper distill STUDENT --teacher TEACHER --data SHARDS --steps N --run-dir DIR [options]\n"
    "       taper distill STUDENT --teacher-cache CACHE --data SHARDS --steps N --run-dir DIR [options]\n\n"
    "Trains STUDENT (e.g. a pruned model from taper prune) to match TEACHER's next-token\n"
    "distributions (and optionally intermediate states) on token shards. Every option of\n"
    "`taper train` applies (see taper train --help: schedule, batch, checkpoints, --resume, export,\n"
    "mpirun -np N for data parallelism: the distiller's projections and losses are summed too);\n"
    "the loss options are:\n\n"
    "  --teacher MODEL     the teacher (GGUF or HF folder; same vocabulary as the student)\n"
    "  --teacher-cache F   train from the teacher's top-k precomputed by `taper teacher-cache` (same\n"
    "                      --data, --seq and --val-frac) instead of running the teacher: logits losses\n"
    "                      only (no --inter/--emb-loss), --topk at most the cache's K (default: K),\n"
    "                      --tau one of its temperatures. With --teacher too, the teacher is only\n"
    "                      checked against the one the cache was made with\n"
    "  --kd K              logits divergence: fkl = KL(teacher||student) (default), rkl =\n"
    "                      KL(student||teacher), jsd (see --beta), none (no logits loss)\n"
    "  --tau T             temperature on both sides (default 1)\n"
    "  --tau2              multiply the logits loss by tau^2\n"
    "  --beta B            JSD weight: beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q (0.5)\n"
    "  --topk K            divergence over the teacher's top-K tokens plus one bin for the rest\n"
    "                      (default 0 = the full vocabulary)\n"
    "  --kd-weight W       weight of the logits loss (default 1)\n"
    "  --ce-weight W       add W x cross-entropy on the data's next tokens (default 0; --kd none\n"
    "                      --ce-weight 1 is plain CE training with the same loop)\n"
    "  --contrastive-weight W  add W x the contrastive loss (default 0): per position, -log softmax\n"
    "                      over {y*, negatives} of the student's logits / tau at y*, y* = the\n"
    "                      teacher's top token, negatives drawn without replacement from the\n"
    "                      teacher's distribution without y* (its top-k with --topk); docs/distillation.md\n"
    "  --negatives N       negatives per position (default 16; at most vocab-1, or topk-1)\n"
    "  --inter L           intermediate-state loss: none (default), cosine, or mse (between\n"
    "                      RMS-normalised states)\n"
    "  --map M             layer pairs student:teacher, e.g. 29:23,28:22, or auto (default: each\n"
    "                      student layer to the teacher layer it came from per --plan, else\n"
    "                      proportionally)\n"
    "  --plan FILE         the prune_plan.json the student came from (kept layers and channels: the\n"
    "                      automatic map, and learned projections start as the channel selection)\n"
    "  --emb-loss          also compare the embedding outputs\n"
    "  --alpha A           weight of the intermediate losses: dynamic (default: L_logits / L_inter,\n"
    "                      detached, per micro-batch) or a number\n"
    "  --keep-mask FILE    a sparsity mask (taper sparsify --mask-out): masked weights are zeroed at\n"
    "                      the start and after every update, so the student stays sparse\n"
    "  -h, --help          this help\n\n"
    "The metrics log adds kd, ce, inter and alpha (and contrast) to every step; validation is the\n"
    "student's CE.\n";

/* The checks that need nothing but the options, made before anything loads, with messages naming
 * the flags (the library makes them again naming the job's fields). Runtime errors: exit 1. */
static tp_status check_flags(const tp_distill_job *d) {
    if (d->teacher_cache && (strcmp(d->inter, "none") || d->emb_loss))
        return tp_fail(TP_ERR_ARG, "--teacher-cache: --inter and --emb-loss need the teacher's hidden states, which "
                                   "the cache does not hold: use --teacher");
    int kd_none = !strcmp(d->kd, "none");
    if (strcmp(d->kd, "fkl") && strcmp(d->kd, "rkl") && strcmp(d->kd, "jsd") && !kd_none)
        return tp_fail(TP_ERR_ARG, "--kd %s: expected fkl, rkl, jsd or none", d->kd);
    if (strcmp(d->alpha, "dynamic")) {
        char *end;
        double a = strtod(d->alpha, &end);
        if (*end || a < 0) return tp_fail(TP_ERR_ARG, "--alpha %s: expected dynamic or a number >= 0", d->alpha);
    }
    int inter_none = !strcmp(d->inter, "none");
    if (!inter_none && strcmp(d->inter, "cosine") && strcmp(d->inter, "mse"))
        return tp_fail(TP_ERR_ARG, "--inter %s: expected none, cosine or mse", d->inter);
    if (inter_none && d->emb_loss) return tp_fail(TP_ERR_ARG, "--emb-loss needs --inter cosine or mse");
    if ((kd_none || d->kd_weight == 0) && d->ce_weight == 0 && inter_none && d->contrastive_weight == 0)
        return tp_fail(TP_ERR_ARG, "no loss: --kd none needs --ce-weight, --contrastive-weight or --inter");
    return TP_OK;
}

int cmd_distill(int argc, char **argv) {
    tp_distill_job d;
    tp_distill_job_default(&d);
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
    int n = 0, rc = CLI_OK;
    const char *cmd = "distill";
    rest[n++] = argv[0];
    for (int i = 1; i < argc && rc == CLI_OK; i++) {
        const char *o = argv[i], *v = NULL;
        char name[64];
        const char *eq = strchr(o, '=');
        if (!strncmp(o, "--", 2) && eq && (size_t)(eq - o) < sizeof name) {
            memcpy(name, o, (size_t)(eq - o));
            name[eq - o] = 0;
            v = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", o);
        }
        static const char *with_value[] = {"--teacher", "--kd", "--tau", "--beta", "--topk", "--kd-weight",
                                           "--ce-weight", "--inter", "--map", "--plan", "--alpha", "--keep-mask",
                                           "--teacher-cache", "--contrastive-weight", "--negatives"};
        int takes = 0;
        for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++) takes |= !strcmp(name, with_value[k]);
        if (!strcmp(name, "-h") || !strcmp(name, "--help")) {
            fputs(HELP, stdout);
            free(rest);
            return CLI_OK;
        }
        if (!strcmp(name, "--tau2")) { d.tau2 = 1; continue; }
        if (!strcmp(name, "--emb-loss")) { d.emb_loss = 1; continue; }
        if (!takes) {
            rest[n++] = argv[i];
            continue;
        }
        if (!v) {
            if (i + 1 >= argc) {
                rc = cli_usage(cmd, "%s needs a value", name);
                break;
            }
            v = argv[++i];
        }
        if (!strcmp(name, "--teacher")) d.teacher = v;
        else if (!strcmp(name, "--kd")) d.kd = v;
        else if (!strcmp(name, "--tau")) rc = cli_float(cmd, "--tau", v, 1e-3, 1e3, &d.tau);
        else if (!strcmp(name, "--beta")) rc = cli_float(cmd, "--beta", v, 1e-6, 1 - 1e-6, &d.beta);
        else if (!strcmp(name, "--topk")) rc = cli_int(cmd, "--topk", v, 0, 1 << 24, &d.topk);
        else if (!strcmp(name, "--kd-weight")) rc = cli_float(cmd, "--kd-weight", v, 0, 1e6, &d.kd_weight);
        else if (!strcmp(name, "--ce-weight")) rc = cli_float(cmd, "--ce-weight", v, 0, 1e6, &d.ce_weight);
        else if (!strcmp(name, "--inter")) d.inter = v;
        else if (!strcmp(name, "--map")) d.map = v;
        else if (!strcmp(name, "--plan")) d.plan = v;
        else if (!strcmp(name, "--alpha")) d.alpha = v;
        else if (!strcmp(name, "--keep-mask")) d.keep_mask = v;
        else if (!strcmp(name, "--teacher-cache")) d.teacher_cache = v;
        else if (!strcmp(name, "--contrastive-weight"))
            rc = cli_float(cmd, "--contrastive-weight", v, 0, 1e6, &d.contrastive_weight);
        else if (!strcmp(name, "--negatives")) rc = cli_int(cmd, "--negatives", v, 1, TP_KD_MAX_NEG, &d.negatives);
    }
    if (rc == CLI_OK && !d.teacher && !d.teacher_cache)
        rc = cli_usage(cmd, "--teacher MODEL or --teacher-cache CACHE is required (see taper distill --help)");
    if (rc == CLI_OK) {
        tp_status s = check_flags(&d);
        rest[n] = NULL;
        rc = s ? cli_error(s) : cli_train_main(n, rest, &d);
    }
    free(rest);
    return rc;
}
