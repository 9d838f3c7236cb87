/* `taper train` as a library call (tp_train_job_run): the model (or a random init), the data and
 * its checks, the run directory's args.json with the resume policy, the loop (tp_train_run,
 * src/train/trainer.c), summary.json and the exports. Distillation rides on the same job through
 * a tp_train_variant (job_internal.h, src/train/distill_job.c). Option parsing, signal handlers
 * and the stdout summary stay in cli/cmd_train.c. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "job_internal.h"
#include "taper/comm.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/tokenizer.h"
#include "taper/train.h"
#include "taper/trainer.h"
#include "taper/util.h"
#include "core/internal.h"

/* Settings that change what the run computes: a resume must match them exactly. */
static const char *const TRAJECTORY_KEYS[] = {"model_hash", "vocab", "data_tokens", "data_docs", "seq", "batch",
                                              "accum", "lr", "min_lr", "warmup", "schedule_steps", "weight_decay",
                                              "beta1", "beta2", "eps", "clip", "seed", "val_frac", "distill",
                                              "precision", "ranks", NULL};

static int my_rank(void) { return tp_comm_rank(tp_comm_world()); }
static int n_ranks(void) { return tp_comm_size(tp_comm_world()); }

void tp_train_job_default(tp_train_job *j) {
    tp_adamw_cfg od;
    tp_adamw_defaults(&od);
    memset(j, 0, sizeof *j);
    j->steps = -1;
    j->seq = 256;
    j->batch = 4;
    j->accum = 1;
    j->val_every = 0;
    j->val_batches = 8;
    j->ckpt_every = 100;
    j->keep = 2;
    j->seed = 1;
    j->lr = od.lr;
    j->min_lr = od.min_lr;
    j->weight_decay = od.weight_decay;
    j->beta1 = od.beta1;
    j->beta2 = od.beta2;
    j->eps = od.eps;
    j->clip = od.clip;
    j->val_frac = 0.05f;
    j->export_dtype = "f32";
    j->export_gguf_type = "f32";
}

void tp_train_job_result_free(tp_train_job_result *res) {
    if (res) tp_train_result_free(&res->r);
}

static int n_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static const char *dtype_of(const tp_train_job *j) { return j->export_dtype ? j->export_dtype : "f32"; }
static const char *gguf_type_of(const tp_train_job *j) { return j->export_gguf_type ? j->export_gguf_type : "f32"; }

static tp_status check_job(const tp_train_job *j) {
    if (!j->model) return tp_fail(TP_ERR_ARG, "train job: model is required");
    if (!j->data) return tp_fail(TP_ERR_ARG, "train job: data is required (shards written by tp_shard_write)");
    if (!j->run_dir) return tp_fail(TP_ERR_ARG, "train job: run_dir is required");
    if (j->steps < 0) return tp_fail(TP_ERR_ARG, "train job: steps must be >= 0, got %d", j->steps);
    if (j->schedule_steps < 0) return tp_fail(TP_ERR_ARG, "train job: schedule_steps must be >= 0");
    if (j->seq < 1 || j->batch < 1 || j->accum < 1)
        return tp_fail(TP_ERR_ARG, "train job: seq, batch and accum must be >= 1 (got %d, %d, %d)", j->seq, j->batch,
                       j->accum);
    if (j->val_every < -1 || j->val_batches < 0 || j->ckpt_every < 0 || j->keep < 0 || j->warmup < 0)
        return tp_fail(TP_ERR_ARG, "train job: val_every >= -1, and val_batches, ckpt_every, keep, warmup >= 0");
    if (!(j->val_frac >= 0 && j->val_frac <= 0.9f))
        return tp_fail(TP_ERR_ARG, "train job: val_frac must be in [0, 0.9], got %g", j->val_frac);
    if (j->min_lr > j->lr) return tp_fail(TP_ERR_ARG, "train job: min_lr %g exceeds lr %g", j->min_lr, j->lr);
    const char *dt = dtype_of(j), *gt = gguf_type_of(j);
    if (strcasecmp(dt, "f32") && strcasecmp(dt, "f16") && strcasecmp(dt, "bf16"))
        return tp_fail(TP_ERR_ARG, "train job: export_dtype must be f32, f16 or bf16, got '%s'", dt);
    if (strcasecmp(gt, "f32") && strcasecmp(gt, "f16") && strcasecmp(gt, "bf16") && strcasecmp(gt, "q8_0"))
        return tp_fail(TP_ERR_ARG, "train job: export_gguf_type must be f32, f16, bf16 or q8_0, got '%s'", gt);
    return TP_OK;
}

/* model, or a random init of init_config with model's tokenizer. */
static tp_status load_model(const tp_train_job *j, tp_model **out) {
    if (!j->init_config) return tp_model_load(j->model, out);
    char *text = NULL;
    tp_config c;
    tp_model *m = NULL;
    tp_status s;
    if ((s = tp_read_file(j->init_config, &text, NULL)) || (s = tp_config_from_json(text, j->init_config, &c)) ||
        (s = tp_config_validate(&c)) || (s = tp_model_alloc(&c, &m)) ||
        (s = tp_tok_load_any(j->model, &m->tok, &m->chat_template))) {
        free(text);
        tp_model_free(m);
        return s;
    }
    free(text);
    if (m->tok && tp_tok_vocab_size(m->tok) > c.vocab) {
        s = tp_fail(TP_ERR_ARG, "%s: vocab_size %d is smaller than the tokenizer of %s (%d tokens)", j->init_config,
                    c.vocab, j->model, tp_tok_vocab_size(m->tok));
        tp_model_free(m);
        return s;
    }
    tp_model_init_random(m, j->seed, 0.02f);
    *out = m;
    return TP_OK;
}

static cJSON *make_args(const tp_train_job *j, const tp_model *m, const tp_dataset *ds, int schedule_steps) {
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)tp_params_hash(m));
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "command", "train");
    cJSON_AddStringToObject(a, "model", j->model);
    if (j->init_config) cJSON_AddStringToObject(a, "init_config", j->init_config);
    cJSON_AddStringToObject(a, "model_hash", hash);
    cJSON_AddNumberToObject(a, "n_params", (double)m->n_params);
    cJSON_AddNumberToObject(a, "vocab", m->cfg.vocab);
    cJSON_AddStringToObject(a, "data", j->data);
    cJSON_AddNumberToObject(a, "data_tokens", (double)tp_dataset_tokens(ds));
    cJSON_AddNumberToObject(a, "data_docs", (double)tp_dataset_docs(ds));
    tp_dataset_info di;
    tp_dataset_get_info(ds, &di);
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)di.tok_fingerprint);
    cJSON_AddStringToObject(a, "data_tokenizer", hash);
    cJSON_AddNumberToObject(a, "steps", j->steps);
    cJSON_AddNumberToObject(a, "schedule_steps", schedule_steps);
    cJSON_AddNumberToObject(a, "seq", j->seq);
    cJSON_AddNumberToObject(a, "batch", j->batch);
    cJSON_AddNumberToObject(a, "accum", j->accum);
    cJSON_AddNumberToObject(a, "lr", j->lr);
    cJSON_AddNumberToObject(a, "min_lr", j->min_lr);
    cJSON_AddNumberToObject(a, "warmup", j->warmup);
    cJSON_AddNumberToObject(a, "weight_decay", j->weight_decay);
    cJSON_AddNumberToObject(a, "beta1", j->beta1);
    cJSON_AddNumberToObject(a, "beta2", j->beta2);
    cJSON_AddNumberToObject(a, "eps", j->eps);
    cJSON_AddNumberToObject(a, "clip", j->clip);
    cJSON_AddNumberToObject(a, "seed", (double)j->seed);
    cJSON_AddNumberToObject(a, "val_frac", j->val_frac);
    cJSON_AddNumberToObject(a, "val_every", j->val_every);
    cJSON_AddNumberToObject(a, "val_batches", j->val_batches);
    cJSON_AddNumberToObject(a, "ckpt_every", j->ckpt_every);
    cJSON_AddNumberToObject(a, "keep", j->keep);
    cJSON_AddBoolToObject(a, "recompute", j->recompute);
    if (strcmp(tp_precision_name(), "fp32")) /* absent for fp32: runs from before the option resume */
        cJSON_AddStringToObject(a, "precision", tp_precision_name());
    cJSON_AddNumberToObject(a, "threads", n_threads());
    /* Absent for one process (runs from before data parallelism resume). The windows of an update
     * and the checkpointed state do not depend on the rank count, but the sums' rounding does: a
     * run resumes only with the rank count it started with. */
    if (n_ranks() > 1) cJSON_AddNumberToObject(a, "ranks", n_ranks());
    return a;
}

/* Token ids must exist in the model, and shards made by another tokenizer are refused. */
static tp_status check_data_fits(const tp_train_job *j, const tp_model *m, const tp_dataset *ds) {
    tp_dataset_info di;
    tp_dataset_get_info(ds, &di);
    if (di.vocab > (uint32_t)m->cfg.vocab)
        return tp_fail(TP_ERR_ARG, "%s: the shards' vocabulary has %u ids, the model only %d", j->data, di.vocab,
                       m->cfg.vocab);
    if (m->tok && di.tok_fingerprint) {
        uint64_t fp = tp_shard_tok_fingerprint(m->tok);
        if (fp != di.tok_fingerprint)
            return tp_fail(TP_ERR_ARG, "%s was tokenized by another tokenizer (fingerprint %016llx) than %s's (%016llx)",
                           j->data, (unsigned long long)di.tok_fingerprint, j->model, (unsigned long long)fp);
    }
    return TP_OK;
}

/* On resume: the saved args.json (NULL if none). Fails on an unreadable or malformed file. */
static tp_status read_saved_args(const char *run_dir, cJSON **out) {
    *out = NULL;
    char *p = tp_path_join(run_dir, "args.json"), *text = NULL;
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = TP_OK;
    if (access(p, F_OK) == 0) {
        if (!(s = tp_read_file(p, &text, NULL))) {
            *out = cJSON_Parse(text);
            if (!*out && tp_json_valid(text, strlen(text))) {
                s = tp_fail(TP_ERR_NOMEM, "%s: out of memory", p);
            } else if (!*out || !cJSON_IsObject(*out)) {
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

/* Resume policy: settings that change the trajectory must match args.json (tp_train_run checks
 * them again against the checkpoint it loads); the rest may change, with a note. */
static tp_status check_resume_args(const tp_train_job *j, const cJSON *saved, cJSON *now) {
    char *now_text = cJSON_PrintUnformatted(now), *saved_text = cJSON_PrintUnformatted(saved);
    tp_status s = tp_train_args_compare(saved_text, now_text, TRAJECTORY_KEYS);
    if (s) s = tp_fail_ctx(s, "refusing to resume %s: ", j->run_dir);
    free(now_text);
    free(saved_text);
    if (s || j->quiet) return s;
    int old_steps = saved_int(saved, "steps", j->steps), old_threads = saved_int(saved, "threads", n_threads());
    if (old_steps != j->steps)
        tp_log(TP_LOG_NOTE, "taper train: steps %d (was %d); the lr schedule keeps its horizon of %d steps", j->steps,
               old_steps, saved_int(saved, "schedule_steps", old_steps));
    if (old_threads != n_threads())
        tp_log(TP_LOG_WARN,
               "taper train: warning: %d threads (the run used %d): results will not be bit-identical to an "
               "uninterrupted run",
               n_threads(), old_threads);
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(saved, "data");
    if (cJSON_IsString(sd) && strcmp(sd->valuestring, j->data))
        tp_log(TP_LOG_NOTE, "taper train: note: data %s (was %s; same token and document counts)", j->data,
               sd->valuestring);
    return TP_OK;
}

/* The members of summary.json that describe the loop (the exports are added after them). */
static void add_summary(const tp_train_job *j, const tp_train_result *r, double peak_rss_mb, cJSON *sum) {
    double tps = r->train_seconds > 0 ? r->tokens / r->train_seconds : 0;
    cJSON_AddStringToObject(sum, "run_dir", j->run_dir);
    if (r->resumed_from) cJSON_AddStringToObject(sum, "resumed_from", r->resumed_from);
    cJSON_AddNumberToObject(sum, "step_start", (double)r->step_start);
    cJSON_AddNumberToObject(sum, "step", (double)r->step);
    cJSON_AddNumberToObject(sum, "steps", j->steps);
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
    cJSON_AddNumberToObject(sum, "ranks", r->ranks > 0 ? r->ranks : 1);
    cJSON_AddNumberToObject(sum, "allreduce_s", r->comm_seconds);
    cJSON_AddNumberToObject(sum, "rank_wait_s", r->wait_seconds);
    if (r->last_ckpt) cJSON_AddStringToObject(sum, "checkpoint", r->last_ckpt);
}

static tp_status export_model(const tp_train_job *j, const tp_model *m, cJSON *sum, tp_train_job_result *res) {
    tp_status s = TP_OK;
    if (j->export_hf) {
        const char *d = dtype_of(j);
        const char *dt = !strcasecmp(d, "f16") ? "F16" : !strcasecmp(d, "bf16") ? "BF16" : "F32";
        if ((s = tp_model_save_hf(m, j->export_hf, dt))) return s;
        res->exported_hf = 1;
        char note[1024];
        if (tp_model_hf_tokenizer_note(j->export_hf, note, sizeof note)) tp_log(TP_LOG_NOTE, "note: %s", note);
        cJSON_AddStringToObject(sum, "export_hf", j->export_hf);
    }
    if (j->export_gguf) {
        if (!m->tok)
            tp_log(TP_LOG_WARN, "taper train: warning: %s has no tokenizer, so neither has the GGUF (llama.cpp and "
                                "taper need one to load it)", j->model);
        const char *g = gguf_type_of(j);
        int gt = !strcasecmp(g, "f16")    ? TP_GGML_F16
                 : !strcasecmp(g, "bf16") ? TP_GGML_BF16
                 : !strcasecmp(g, "q8_0") ? TP_GGML_Q8_0
                                          : TP_GGML_F32;
        if ((s = tp_model_save_gguf(m, j->export_gguf, gt))) return s;
        res->exported_gguf = 1;
        cJSON_AddStringToObject(sum, "export_gguf", j->export_gguf);
    }
    return s;
}

/* After the loop: summary.json (written even when an export fails, as the loop's record), exports. */
static tp_status finish(const tp_train_job *j, const tp_model *m, tp_train_job_result *res) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    res->trained = 1;
    res->peak_rss_mib = ru.ru_maxrss / 1024.0;
    res->threads = n_threads();
    if (res->r.stopped) res->stop_signal = j->stop ? (int)*j->stop : 0;
    if (my_rank() != 0) return TP_OK; /* rank 0 writes the summary and the exports */
    cJSON *sum = cJSON_CreateObject();
    if (!sum) return tp_fail(TP_ERR_NOMEM, "out of memory");
    add_summary(j, &res->r, res->peak_rss_mib, sum);
    tp_status s = res->r.stopped ? TP_OK : export_model(j, m, sum, res);
    char msg[1024] = "";
    if (s) snprintf(msg, sizeof msg, "%s", tp_errmsg()); /* the export's message outlives the summary write */
    char *p = tp_path_join(j->run_dir, "summary.json");
    tp_status ws = p ? tp_write_json_atomic(p, sum) : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(p);
    cJSON_Delete(sum);
    if (s && ws) tp_fail(s, "%s", msg);
    return s ? s : ws;
}

static void fill_cfg(const tp_train_job *j, int schedule_steps, const char *args_text, tp_train_cfg *cfg) {
    tp_train_cfg_defaults(cfg);
    cfg->steps = j->steps;
    cfg->B = j->batch;
    cfg->T = j->seq;
    cfg->accum = j->accum;
    cfg->opt.lr = j->lr;
    cfg->opt.min_lr = j->min_lr;
    cfg->opt.warmup_steps = j->warmup;
    cfg->opt.total_steps = schedule_steps;
    cfg->opt.beta1 = j->beta1;
    cfg->opt.beta2 = j->beta2;
    cfg->opt.eps = j->eps;
    cfg->opt.weight_decay = j->weight_decay;
    cfg->opt.clip = j->clip;
    cfg->seed = j->seed;
    cfg->val_every = j->val_every;
    cfg->val_batches = j->val_batches;
    cfg->ckpt_every = j->ckpt_every;
    cfg->keep = j->keep;
    cfg->recompute = j->recompute;
    cfg->run_dir = j->run_dir;
    cfg->args_json = args_text;
    cfg->resume_keys = TRAJECTORY_KEYS;
    cfg->resume = j->resume;
    cfg->quiet = j->quiet;
    cfg->stop = j->stop;
}

static tp_status run(const tp_train_job *j, const tp_train_variant *v, tp_train_job_result *res) {
    if (tp_mkdir_p(j->run_dir) != 0)
        return tp_fail(TP_ERR_IO, "%s: cannot create the run directory: %s", j->run_dir, strerror(errno));
    char newest[256] = "";
    int n_ck = tp_run_dir_ckpts(j->run_dir, newest, sizeof newest);
    if (n_ck > 0 && !j->resume)
        return tp_fail(TP_ERR_ARG, "run_dir %s already holds checkpoints (newest %s): set resume, or use a new run_dir",
                       j->run_dir, newest);
    cJSON *saved = NULL;
    tp_status s = j->resume ? read_saved_args(j->run_dir, &saved) : TP_OK;
    if (s) return s;
    int schedule_steps = j->schedule_steps;
    if (!schedule_steps) schedule_steps = saved_int(saved, "schedule_steps", j->steps > 0 ? j->steps : 1);

    tp_model *m = NULL;
    tp_dataset *ds = NULL;
    tp_loader *L = NULL;
    cJSON *args = NULL;
    char *args_text = NULL, *args_path = NULL;
    if (!(s = load_model(j, &m)) && !(s = tp_dataset_open(j->data, &ds)) &&
        !(s = tp_loader_open(ds, j->seq, j->val_frac, j->seed, &L))) {
        if (tp_loader_n_train(L) == 0)
            s = tp_fail(TP_ERR_ARG, "%s: no training windows of %d+1 tokens (%zu tokens in all)", j->data, j->seq,
                        tp_dataset_tokens(ds));
    }
    if (!s) s = check_data_fits(j, m, ds);
    if (!s) s = tp_model_prepare_precision(m, 0);
    if (!s) {
        args = make_args(j, m, ds, schedule_steps);
        if (!args) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    if (!s && v) {
        cJSON_ReplaceItemInObject(args, "command", cJSON_CreateString(v->command));
        s = v->add_args(v->user, j, m, args);
    }
    if (!s && saved) s = check_resume_args(j, saved, args);
    if (!s) {
        args_text = cJSON_Print(args);
        args_path = tp_path_join(j->run_dir, "args.json");
        if (!args_text || !args_path) s = tp_fail(TP_ERR_NOMEM, "out of memory");
        else if (my_rank() == 0) s = tp_write_file_atomic(args_path, args_text, strlen(args_text));
    }
    if (!s) {
        tp_train_cfg cfg;
        fill_cfg(j, schedule_steps, args_text, &cfg);
        tp_train_data data = {L, NULL, NULL};
        const tp_train_hooks *hooks = NULL;
        if (v) s = v->setup(v->user, m, &cfg, &hooks);
        if (!s && !j->quiet && my_rank() == 0) {
            char desc[1024], ranks[96] = "";
            tp_loader_describe(L, desc, sizeof desc);
            if (n_ranks() > 1)
                snprintf(ranks, sizeof ranks, " x %d ranks (%s)", n_ranks(), tp_comm_backend(tp_comm_world()));
            tp_log(TP_LOG_INFO,
                   "taper train: %zu params; %d x %d x %d%s = %d tokens per step; %d threads%s; products: %s\n%s",
                   m->n_params, j->batch, j->seq, j->accum, ranks, j->batch * j->seq * j->accum * n_ranks(),
                   n_threads(), n_ranks() > 1 ? " per rank" : "", tp_gemm_info(), desc);
        }
        if (!s) s = tp_train_run(m, &cfg, &data, hooks, &res->r);
    }
    cJSON_Delete(saved);
    cJSON_Delete(args);
    free(args_text);
    free(args_path);
    tp_loader_free(L);
    tp_dataset_close(ds);
    if (!s) s = finish(j, m, res);
    tp_model_free(m);
    return s;
}

tp_status tp_train_job_run_variant(const tp_train_job *j, const tp_train_variant *v, tp_train_job_result *res) {
    memset(res, 0, sizeof *res);
    tp_status s = check_job(j);
    if (s) return s;
    char prev[16];
    snprintf(prev, sizeof prev, "%s", tp_precision_name());
    if (j->precision && (s = tp_set_precision(j->precision))) return tp_fail_ctx(s, "train job: ");
    s = run(j, v, res);
    if (j->precision) tp_set_precision(prev); /* "fp32" or "bf16": cannot fail */
    return s;
}

tp_status tp_train_job_run(const tp_train_job *j, tp_train_job_result *res) {
    return tp_train_job_run_variant(j, NULL, res);
}
