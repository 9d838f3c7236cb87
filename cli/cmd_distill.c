/* taper distill STUDENT --teacher TEACHER --data SHARDS --steps N --run-dir DIR: knowledge
 * distillation (or --teacher-cache CACHE: the teacher's top-k precomputed by taper teacher-cache). Takes every option of `taper train` (same loop, checkpoints, exact resume, export)
 * plus the distillation options below, which it removes from the command line before handing the
 * rest to cmd_train with an extension (cli_train_ext) that loads the teacher and plugs the
 * distiller's hooks into the loop. The losses are src/train/distill.c's. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/compress.h"
#include "taper/distill.h"
#include "taper/sparsify.h"
#include "taper/trainer.h"

static const char *HELP =
    "usage: taper distill STUDENT --teacher TEACHER --data SHARDS --steps N --run-dir DIR [options]\n"
    "       taper distill STUDENT --teacher-cache CACHE --data SHARDS --steps N --run-dir DIR [options]\n\n"
    "Trains STUDENT (e.g. a pruned model from taper prune) to match TEACHER's next-token\n"
    "distributions (and optionally intermediate states) on token shards. Every option of\n"
    "`taper train` applies (see taper train --help: schedule, batch, checkpoints, --resume, export);\n"
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

typedef struct {
    const char *teacher_path, *kd, *inter, *map, *plan, *alpha, *mask_path, *cache_path;
    float tau, beta, kd_weight, ce_weight, con_weight;
    int tau2, topk, emb, negatives;
    tp_model *teacher;
    tp_tcache *cache;
    tp_prune_plan *pp;
    tp_mask *mask;
    tp_distiller *d;
    tp_distill_cfg dc;
    tp_train_hooks inner, outer;
    tp_model *student;
} distill_state;

static tp_status build_cfg(distill_state *st, const tp_model *student) {
    tp_distill_cfg *c = &st->dc;
    tp_distill_defaults(c);
    if (!strcmp(st->kd, "fkl")) c->kd.kind = TP_KD_FKL;
    else if (!strcmp(st->kd, "rkl")) c->kd.kind = TP_KD_RKL;
    else if (!strcmp(st->kd, "jsd")) c->kd.kind = TP_KD_JSD;
    else if (!strcmp(st->kd, "none")) c->w_logits = 0;
    else return tp_fail(TP_ERR_ARG, "--kd %s: expected fkl, rkl, jsd or none", st->kd);
    if (c->w_logits != 0) c->w_logits = st->kd_weight;
    c->kd.tau = st->tau;
    c->kd.tau2 = st->tau2;
    c->kd.beta = st->beta;
    c->topk = st->topk;
    c->w_ce = st->ce_weight;
    c->emb = st->emb;
    c->w_contrast = st->con_weight;
    c->negatives = st->negatives;
    c->cache = st->cache;
    if (!strcmp(st->alpha, "dynamic")) {
        c->alpha = -1;
    } else {
        char *end;
        double a = strtod(st->alpha, &end);
        if (*end || a < 0) return tp_fail(TP_ERR_ARG, "--alpha %s: expected dynamic or a number >= 0", st->alpha);
        c->alpha = (float)a;
    }
    int Ls = student->cfg.n_layers, Lt = st->teacher ? st->teacher->cfg.n_layers : 0;
    if (!strcmp(st->inter, "none")) {
        c->n_pairs = 0;
    } else {
        if (!strcmp(st->inter, "cosine")) c->hid = TP_HID_COSINE;
        else if (!strcmp(st->inter, "mse")) c->hid = TP_HID_MSE;
        else return tp_fail(TP_ERR_ARG, "--inter %s: expected none, cosine or mse", st->inter);
        if (!st->map || !strcmp(st->map, "auto")) {
            const int *kept = st->pp && st->pp->cfg.n_layers == Ls ? st->pp->layers : NULL;
            tp_distill_auto_map(c, Ls, Lt, kept);
        } else {
            tp_status s = tp_distill_parse_map(c, st->map, Ls, Lt);
            if (s) return s;
        }
    }
    if (c->n_pairs == 0 && c->emb) return tp_fail(TP_ERR_ARG, "--emb-loss needs --inter cosine or mse");
    if (st->pp && st->teacher && st->pp->cfg.d_model == student->cfg.d_model &&
        st->pp->src.d_model == st->teacher->cfg.d_model)
        c->proj_init = st->pp->channels;
    if (c->w_logits == 0 && c->w_ce == 0 && c->n_pairs == 0 && c->w_contrast == 0)
        return tp_fail(TP_ERR_ARG, "no loss: --kd none needs --ce-weight, --contrastive-weight or --inter");
    return TP_OK;
}

/* --teacher-cache: the cache must fit this run (data, seq, split, settings) before anything trains. */
static tp_status open_cache(distill_state *st, const tp_model *m, const cJSON *args) {
    tp_status s = tp_tcache_open(st->cache_path, &st->cache);
    if (s) return tp_fail_ctx(s, "--teacher-cache: ");
    const tp_tcache_info *in = tp_tcache_get_info(st->cache);
    if (strcmp(st->inter, "none") || st->emb)
        return tp_fail(TP_ERR_ARG, "--teacher-cache: --inter and --emb-loss need the teacher's hidden states, which "
                                   "the cache does not hold: use --teacher");
    if (st->teacher_path) { /* the teacher is only checked: the cache must be its own */
        if ((s = tp_model_load(st->teacher_path, &st->teacher))) return tp_fail_ctx(s, "teacher: ");
        uint64_t h = tp_params_hash(st->teacher);
        tp_model_free(st->teacher);
        st->teacher = NULL;
        if (h != in->teacher_fp)
            return tp_fail(TP_ERR_ARG, "--teacher-cache %s was made by another teacher (fingerprint %016llx) than %s "
                                       "(%016llx)", st->cache_path, (unsigned long long)in->teacher_fp,
                           st->teacher_path, (unsigned long long)h);
    }
    if (in->vocab != m->cfg.vocab)
        return tp_fail(TP_ERR_ARG, "--teacher-cache %s: its teacher has %d tokens, the student %d", st->cache_path,
                       in->vocab, m->cfg.vocab);
    if (st->topk == 0) {
        st->topk = in->K;
        fprintf(stderr, "taper distill: --topk %d (all the teacher cache holds)\n", in->K);
    }
    if (st->topk > in->K)
        return tp_fail(TP_ERR_ARG, "--teacher-cache %s holds the teacher's top %d tokens: --topk %d needs a cache "
                                   "made with --topk %d or more", st->cache_path, in->K, st->topk, st->topk);
    /* the windows this run will be served: the same shards, seq and split as the cache's */
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(args, "data");
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(args, "seq");
    const cJSON *vf = cJSON_GetObjectItemCaseSensitive(args, "val_frac");
    if (!cJSON_IsString(data) || !cJSON_IsNumber(seq) || !cJSON_IsNumber(vf))
        return tp_fail(TP_ERR_ARG, "--teacher-cache: the run's data settings are missing");
    tp_dataset *ds = NULL;
    tp_loader *L = NULL;
    if (!(s = tp_dataset_open(data->valuestring, &ds)) && !(s = tp_loader_open(ds, seq->valueint, vf->valuedouble, 1, &L)))
        s = tp_tcache_check_data(st->cache, L);
    tp_loader_free(L);
    tp_dataset_close(ds);
    if (s) return tp_fail_ctx(s, "--teacher-cache: ");
    return TP_OK;
}

static tp_status add_args(void *user, const tp_model *m, cJSON *args) {
    distill_state *st = user;
    tp_status s;
    if (st->cache_path) {
        if ((s = open_cache(st, m, args))) return s;
    } else if ((s = tp_model_load(st->teacher_path, &st->teacher))) {
        return tp_fail_ctx(s, "teacher: ");
    }
    if (st->plan && (s = tp_prune_plan_load(st->plan, &st->pp))) return tp_fail_ctx(s, "--plan: ");
    if ((s = build_cfg(st, m))) return s;
    if (st->mask_path) {
        if ((s = tp_mask_load(st->mask_path, &st->mask)) || (s = tp_mask_check(st->mask, m)))
            return tp_fail_ctx(s, "--keep-mask: ");
    }
    char hash[32];
    uint64_t th = st->cache ? tp_tcache_get_info(st->cache)->teacher_fp : tp_params_hash(st->teacher);
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)th);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "teacher", st->teacher_path ? st->teacher_path : "(teacher cache)");
    cJSON_AddStringToObject(d, "teacher_hash", hash);
    if (st->cache) cJSON_AddStringToObject(d, "teacher_cache", st->cache_path);
    cJSON_AddStringToObject(d, "kd", st->kd);
    cJSON_AddNumberToObject(d, "tau", st->tau);
    cJSON_AddBoolToObject(d, "tau2", st->tau2);
    cJSON_AddNumberToObject(d, "beta", st->beta);
    cJSON_AddNumberToObject(d, "topk", st->topk);
    cJSON_AddNumberToObject(d, "kd_weight", st->dc.w_logits);
    cJSON_AddNumberToObject(d, "ce_weight", st->ce_weight);
    if (st->con_weight != 0) { /* only when on: runs without it resume as before */
        cJSON_AddNumberToObject(d, "contrastive_weight", st->con_weight);
        cJSON_AddNumberToObject(d, "negatives", st->negatives);
    }
    cJSON_AddStringToObject(d, "inter", st->inter);
    cJSON *pairs = cJSON_AddArrayToObject(d, "pairs");
    for (int i = 0; i < st->dc.n_pairs; i++) {
        char b[32];
        snprintf(b, sizeof b, "%d:%d", st->dc.s_layer[i], st->dc.t_layer[i]);
        cJSON_AddItemToArray(pairs, cJSON_CreateString(b));
    }
    cJSON_AddBoolToObject(d, "emb_loss", st->emb);
    cJSON_AddStringToObject(d, "alpha", st->alpha);
    if (st->mask_path) cJSON_AddStringToObject(d, "keep_mask", st->mask_path);
    cJSON_AddItemToObject(args, "distill", d);
    return TP_OK;
}

static tp_status prepare(void *user, const tp_train_micro *mb, tp_step_opts *o) {
    distill_state *st = user;
    return st->inner.prepare(st->inner.user, mb, o);
}

/* after every update: the distiller's bookkeeping, then the mask */
static const char *metrics(void *user, long step) {
    distill_state *st = user;
    const char *extra = st->inner.metrics(st->inner.user, step);
    if (st->mask) tp_mask_apply(st->student, st->mask);
    return extra;
}

/* the checkpointed extra state (learned projections) is the distiller's own */
static tp_status state_save(void *user, void **buf, size_t *bytes) {
    distill_state *st = user;
    return st->inner.state_save(st->inner.user, buf, bytes);
}
static tp_status state_load(void *user, const void *buf, size_t bytes) {
    distill_state *st = user;
    return st->inner.state_load(st->inner.user, buf, bytes);
}

static tp_status setup(void *user, tp_model *m, const tp_train_cfg *cfg, const tp_train_hooks **hooks) {
    distill_state *st = user;
    tp_status s = st->teacher ? tp_model_prepare_precision(st->teacher, 1) : TP_OK; /* bf16 copies, made once */
    if (s) return s;
    s = tp_distiller_new(st->teacher, m, &st->dc, cfg->B, cfg->T, &cfg->opt, &st->d);
    if (s) return s;
    st->student = m;
    if (st->mask && (s = tp_mask_apply(m, st->mask))) return s;
    tp_distiller_hooks(st->d, &st->inner);
    st->outer.prepare = prepare;
    st->outer.metrics = metrics;
    st->outer.state_save = state_save;
    st->outer.state_load = state_load;
    st->outer.user = st;
    *hooks = &st->outer;
    char who[512];
    if (st->cache)
        snprintf(who, sizeof who, "teacher cache %s (top-%d of %d, %llu windows)", st->cache_path, st->topk,
                 tp_tcache_get_info(st->cache)->K, (unsigned long long)tp_tcache_get_info(st->cache)->n_windows);
    else
        snprintf(who, sizeof who, "teacher %s (%zu params)", st->teacher_path, st->teacher->n_params);
    char con[96] = "";
    if (st->con_weight != 0)
        snprintf(con, sizeof con, ", contrastive weight %g with %d negatives", st->con_weight, st->negatives);
    fprintf(stderr, "taper distill: %s; logits %s (tau %g%s, %s), CE weight %g%s, %d state pair%s%s, alpha %s%s\n",
            who, st->kd, st->tau, st->tau2 ? ", x tau^2" : "", st->topk ? "top-k" : "full vocabulary", st->ce_weight,
            con, st->dc.n_pairs, st->dc.n_pairs == 1 ? "" : "s", st->emb ? " + embeddings" : "", st->alpha,
            st->mask ? ", mask kept" : "");
    return TP_OK;
}

int cmd_distill(int argc, char **argv) {
    distill_state st;
    memset(&st, 0, sizeof st);
    st.kd = "fkl";
    st.inter = "none";
    st.alpha = "dynamic";
    st.tau = 1.0f;
    st.beta = 0.5f;
    st.kd_weight = 1.0f;
    st.negatives = 16;
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
        if (!strcmp(name, "--tau2")) { st.tau2 = 1; continue; }
        if (!strcmp(name, "--emb-loss")) { st.emb = 1; continue; }
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
        if (!strcmp(name, "--teacher")) st.teacher_path = v;
        else if (!strcmp(name, "--kd")) st.kd = v;
        else if (!strcmp(name, "--tau")) rc = cli_float(cmd, "--tau", v, 1e-3, 1e3, &st.tau);
        else if (!strcmp(name, "--beta")) rc = cli_float(cmd, "--beta", v, 1e-6, 1 - 1e-6, &st.beta);
        else if (!strcmp(name, "--topk")) rc = cli_int(cmd, "--topk", v, 0, 1 << 24, &st.topk);
        else if (!strcmp(name, "--kd-weight")) rc = cli_float(cmd, "--kd-weight", v, 0, 1e6, &st.kd_weight);
        else if (!strcmp(name, "--ce-weight")) rc = cli_float(cmd, "--ce-weight", v, 0, 1e6, &st.ce_weight);
        else if (!strcmp(name, "--inter")) st.inter = v;
        else if (!strcmp(name, "--map")) st.map = v;
        else if (!strcmp(name, "--plan")) st.plan = v;
        else if (!strcmp(name, "--alpha")) st.alpha = v;
        else if (!strcmp(name, "--keep-mask")) st.mask_path = v;
        else if (!strcmp(name, "--teacher-cache")) st.cache_path = v;
        else if (!strcmp(name, "--contrastive-weight"))
            rc = cli_float(cmd, "--contrastive-weight", v, 0, 1e6, &st.con_weight);
        else if (!strcmp(name, "--negatives")) rc = cli_int(cmd, "--negatives", v, 1, TP_KD_MAX_NEG, &st.negatives);
    }
    if (rc == CLI_OK && !st.teacher_path && !st.cache_path)
        rc = cli_usage(cmd, "--teacher MODEL or --teacher-cache CACHE is required (see taper distill --help)");
    if (rc == CLI_OK) {
        rest[n] = NULL;
        cli_train_ext ext = {"distill", add_args, setup, &st};
        cli_train_extension = &ext;
        rc = cmd_train(n, rest);
        cli_train_extension = NULL;
    }
    tp_distiller_free(st.d);
    tp_model_free(st.teacher);
    tp_tcache_close(st.cache);
    tp_prune_plan_free(st.pp);
    tp_mask_free(st.mask);
    free(rest);
    return rc;
}
