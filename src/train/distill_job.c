/* `taper distill` as a library call (tp_distill_run): the training job (train_job.c) with a variant
 * that loads the teacher (or opens and checks a teacher cache), the prune plan and the keep mask,
 * records the distillation settings in args.json (member "distill", compared on resume) and plugs
 * the distiller's hooks (src/train/distill.c) into the loop, re-applying the mask after every
 * update. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job_internal.h"
#include "taper/compress.h"
#include "taper/distill.h"
#include "taper/sparsify.h"
#include "taper/trainer.h"

void tp_distill_job_default(tp_distill_job *d) {
    memset(d, 0, sizeof *d);
    d->kd = "fkl";
    d->inter = "none";
    d->alpha = "dynamic";
    d->tau = 1.0f;
    d->beta = 0.5f;
    d->kd_weight = 1.0f;
    d->negatives = 16;
}

typedef struct {
    const tp_distill_job *job;
    int topk; /* the job's, or the cache's K when the job leaves it 0 */
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
    const tp_distill_job *J = st->job;
    tp_distill_cfg *c = &st->dc;
    tp_distill_defaults(c);
    if (!strcmp(J->kd, "fkl")) c->kd.kind = TP_KD_FKL;
    else if (!strcmp(J->kd, "rkl")) c->kd.kind = TP_KD_RKL;
    else if (!strcmp(J->kd, "jsd")) c->kd.kind = TP_KD_JSD;
    else if (!strcmp(J->kd, "none")) c->w_logits = 0;
    else return tp_fail(TP_ERR_ARG, "distill job: kd '%s': expected fkl, rkl, jsd or none", J->kd);
    if (c->w_logits != 0) c->w_logits = J->kd_weight;
    c->kd.tau = J->tau;
    c->kd.tau2 = J->tau2;
    c->kd.beta = J->beta;
    c->topk = st->topk;
    c->w_ce = J->ce_weight;
    c->emb = J->emb_loss;
    c->w_contrast = J->contrastive_weight;
    c->negatives = J->negatives;
    c->cache = st->cache;
    if (!strcmp(J->alpha, "dynamic")) {
        c->alpha = -1;
    } else {
        char *end;
        double a = strtod(J->alpha, &end);
        if (*end || a < 0)
            return tp_fail(TP_ERR_ARG, "distill job: alpha '%s': expected dynamic or a number >= 0", J->alpha);
        c->alpha = (float)a;
    }
    int Ls = student->cfg.n_layers, Lt = st->teacher ? st->teacher->cfg.n_layers : 0;
    if (!strcmp(J->inter, "none")) {
        c->n_pairs = 0;
    } else {
        if (!strcmp(J->inter, "cosine")) c->hid = TP_HID_COSINE;
        else if (!strcmp(J->inter, "mse")) c->hid = TP_HID_MSE;
        else return tp_fail(TP_ERR_ARG, "distill job: inter '%s': expected none, cosine or mse", J->inter);
        if (!J->map || !strcmp(J->map, "auto")) {
            const int *kept = st->pp && st->pp->cfg.n_layers == Ls ? st->pp->layers : NULL;
            tp_distill_auto_map(c, Ls, Lt, kept);
        } else {
            tp_status s = tp_distill_parse_map(c, J->map, Ls, Lt);
            if (s) return s;
        }
    }
    if (c->n_pairs == 0 && c->emb) return tp_fail(TP_ERR_ARG, "distill job: emb_loss needs inter cosine or mse");
    if (st->pp && st->teacher && st->pp->cfg.d_model == student->cfg.d_model &&
        st->pp->src.d_model == st->teacher->cfg.d_model)
        c->proj_init = st->pp->channels;
    if (c->w_logits == 0 && c->w_ce == 0 && c->n_pairs == 0 && c->w_contrast == 0)
        return tp_fail(TP_ERR_ARG, "distill job: no loss: kd none (or kd_weight 0) needs ce_weight, "
                                   "contrastive_weight or inter");
    return TP_OK;
}

/* teacher_cache: the cache must fit this run (data, seq, split, settings) before anything trains. */
static tp_status open_cache(distill_state *st, const tp_train_job *j, const tp_model *m) {
    const tp_distill_job *J = st->job;
    tp_status s = tp_tcache_open(J->teacher_cache, &st->cache);
    if (s) return tp_fail_ctx(s, "teacher_cache: ");
    const tp_tcache_info *in = tp_tcache_get_info(st->cache);
    if (strcmp(J->inter, "none") || J->emb_loss)
        return tp_fail(TP_ERR_ARG, "teacher_cache: inter and emb_loss need the teacher's hidden states, which the "
                                   "cache does not hold: distill from the teacher model");
    if (J->teacher) { /* the teacher is only checked: the cache must be its own */
        if ((s = tp_model_load(J->teacher, &st->teacher))) return tp_fail_ctx(s, "teacher: ");
        uint64_t h = tp_params_hash(st->teacher);
        tp_model_free(st->teacher);
        st->teacher = NULL;
        if (h != in->teacher_fp)
            return tp_fail(TP_ERR_ARG, "teacher_cache %s was made by another teacher (fingerprint %016llx) than %s "
                                       "(%016llx)", J->teacher_cache, (unsigned long long)in->teacher_fp,
                           J->teacher, (unsigned long long)h);
    }
    if (in->vocab != m->cfg.vocab)
        return tp_fail(TP_ERR_ARG, "teacher_cache %s: its teacher has %d tokens, the student %d", J->teacher_cache,
                       in->vocab, m->cfg.vocab);
    if (st->topk == 0) {
        st->topk = in->K;
        tp_log(TP_LOG_NOTE, "taper distill: topk %d (all the teacher cache holds)", in->K);
    }
    if (st->topk > in->K)
        return tp_fail(TP_ERR_ARG, "teacher_cache %s holds the teacher's top %d tokens: topk %d needs a cache of the "
                                   "top %d or more", J->teacher_cache, in->K, st->topk, st->topk);
    /* the windows this run will be served: the same shards, seq and split as the cache's */
    tp_dataset *ds = NULL;
    tp_loader *L = NULL;
    if (!(s = tp_dataset_open(j->data, &ds)) && !(s = tp_loader_open(ds, j->seq, j->val_frac, 1, &L)))
        s = tp_tcache_check_data(st->cache, L);
    tp_loader_free(L);
    tp_dataset_close(ds);
    if (s) return tp_fail_ctx(s, "teacher_cache: ");
    return TP_OK;
}

static tp_status add_args(void *user, const tp_train_job *j, const tp_model *m, cJSON *args) {
    distill_state *st = user;
    const tp_distill_job *J = st->job;
    tp_status s;
    if (J->teacher_cache) {
        if ((s = open_cache(st, j, m))) return s;
    } else if ((s = tp_model_load(J->teacher, &st->teacher))) {
        return tp_fail_ctx(s, "teacher: ");
    }
    if (J->plan && (s = tp_prune_plan_load(J->plan, &st->pp))) return tp_fail_ctx(s, "plan: ");
    if ((s = build_cfg(st, m))) return s;
    if (J->keep_mask) {
        if ((s = tp_mask_load(J->keep_mask, &st->mask)) || (s = tp_mask_check(st->mask, m)))
            return tp_fail_ctx(s, "keep_mask: ");
    }
    char hash[32];
    uint64_t th = st->cache ? tp_tcache_get_info(st->cache)->teacher_fp : tp_params_hash(st->teacher);
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)th);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "teacher", J->teacher ? J->teacher : "(teacher cache)");
    cJSON_AddStringToObject(d, "teacher_hash", hash);
    if (st->cache) cJSON_AddStringToObject(d, "teacher_cache", J->teacher_cache);
    cJSON_AddStringToObject(d, "kd", J->kd);
    cJSON_AddNumberToObject(d, "tau", J->tau);
    cJSON_AddBoolToObject(d, "tau2", J->tau2);
    cJSON_AddNumberToObject(d, "beta", J->beta);
    cJSON_AddNumberToObject(d, "topk", st->topk);
    cJSON_AddNumberToObject(d, "kd_weight", st->dc.w_logits);
    cJSON_AddNumberToObject(d, "ce_weight", J->ce_weight);
    if (J->contrastive_weight != 0) { /* only when on: runs without it resume as before */
        cJSON_AddNumberToObject(d, "contrastive_weight", J->contrastive_weight);
        cJSON_AddNumberToObject(d, "negatives", J->negatives);
    }
    cJSON_AddStringToObject(d, "inter", J->inter);
    cJSON *pairs = cJSON_AddArrayToObject(d, "pairs");
    for (int i = 0; i < st->dc.n_pairs; i++) {
        char b[32];
        snprintf(b, sizeof b, "%d:%d", st->dc.s_layer[i], st->dc.t_layer[i]);
        cJSON_AddItemToArray(pairs, cJSON_CreateString(b));
    }
    cJSON_AddBoolToObject(d, "emb_loss", J->emb_loss);
    cJSON_AddStringToObject(d, "alpha", J->alpha);
    if (J->keep_mask) cJSON_AddStringToObject(d, "keep_mask", J->keep_mask);
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

static tp_status reduce(void *user, tp_comm *comm) {
    distill_state *st = user;
    return st->inner.reduce ? st->inner.reduce(st->inner.user, comm) : TP_OK;
}

static tp_status setup(void *user, tp_model *m, const tp_train_cfg *cfg, const tp_train_hooks **hooks) {
    distill_state *st = user;
    const tp_distill_job *J = st->job;
    /* under bf16 the frozen teacher keeps its bf16 copies only (half its fp32 size, the same products) */
    tp_status s = st->teacher ? tp_model_freeze_bf16(st->teacher) : TP_OK;
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
    st->outer.reduce = reduce;
    st->outer.user = st;
    *hooks = &st->outer;
    if (cfg->quiet) return TP_OK;
    char who[512];
    if (st->cache)
        snprintf(who, sizeof who, "teacher cache %s (top-%d of %d, %llu windows)", J->teacher_cache, st->topk,
                 tp_tcache_get_info(st->cache)->K, (unsigned long long)tp_tcache_get_info(st->cache)->n_windows);
    else
        snprintf(who, sizeof who, "teacher %s (%zu params)", J->teacher, st->teacher->n_params);
    char con[96] = "";
    if (J->contrastive_weight != 0)
        snprintf(con, sizeof con, ", contrastive weight %g with %d negatives", J->contrastive_weight, J->negatives);
    tp_log(TP_LOG_INFO, "taper distill: %s; logits %s (tau %g%s, %s), CE weight %g%s, %d state pair%s%s, alpha %s%s",
           who, J->kd, J->tau, J->tau2 ? ", x tau^2" : "", st->topk ? "top-k" : "full vocabulary", J->ce_weight, con,
           st->dc.n_pairs, st->dc.n_pairs == 1 ? "" : "s", J->emb_loss ? " + embeddings" : "", J->alpha,
           st->mask ? ", mask kept" : "");
    return TP_OK;
}

tp_status tp_distill_run(const tp_train_job *j, const tp_distill_job *d, tp_train_job_result *res) {
    memset(res, 0, sizeof *res);
    if (!d->teacher && !d->teacher_cache) return tp_fail(TP_ERR_ARG, "distill job: teacher or teacher_cache is required");
    if (!d->kd || !d->inter || !d->alpha) return tp_fail(TP_ERR_ARG, "distill job: kd, inter and alpha must be set");
    if (d->topk < 0 || d->negatives < 1 || d->negatives > TP_KD_MAX_NEG)
        return tp_fail(TP_ERR_ARG, "distill job: topk must be >= 0 and negatives in 1..%d (got %d, %d)", TP_KD_MAX_NEG,
                       d->topk, d->negatives);
    distill_state st;
    memset(&st, 0, sizeof st);
    st.job = d;
    st.topk = d->topk;
    tp_train_variant v = {"distill", add_args, setup, &st};
    tp_status s = tp_train_job_run_variant(j, &v, res);
    tp_distiller_free(st.d);
    tp_model_free(st.teacher);
    tp_tcache_close(st.cache);
    tp_prune_plan_free(st.pp);
    tp_mask_free(st.mask);
    return s;
}
