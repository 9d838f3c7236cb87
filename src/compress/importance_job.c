/* `taper importance` as a library call (tp_importance_job_run): load the model and calibration
 * text, compute the scores (with a downstream task as the optional block metric), write the
 * score file and the summary JSON of `taper importance --json` (tp_importance_summary_json). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "taper/compress.h"
#include "taper/model.h"
#include "taper/tasks.h"
#include "taper/util.h"

void tp_importance_job_default(tp_importance_job *j) {
    memset(j, 0, sizeof *j);
    j->out = "importance.json";
    j->samples = 1024;
    j->seq_len = 512;
    j->batch = 4;
    j->depth_samples = 64;
    j->neuron_source = TP_NEURON_ACT;
}

static cJSON *darr(const double *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, isfinite(v[i]) ? cJSON_CreateNumber(v[i]) : cJSON_CreateNull());
    return a;
}

cJSON *tp_importance_summary_json(const tp_importance *imp, int pair, const char *path) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    int L = imp->n_layers, nh = imp->n_heads, nkv = imp->n_kv_heads, ff = imp->d_ff, d = imp->d_model;
    const double *H = imp->heads + (size_t)pair * L * nh, *G = imp->kv_groups + (size_t)pair * L * nkv;
    const double *N = imp->neurons + (size_t)pair * L * ff, *C = imp->channels + (size_t)pair * d;
    cJSON *layers = cJSON_AddArrayToObject(j, "layers");
    for (int l = 0; layers && l < L; l++) {
        double ll = imp->layer_loss ? imp->layer_loss[l] : NAN;
        const double *h = H + (size_t)l * nh, *g = G + (size_t)l * nkv, *n = N + (size_t)l * ff;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", l);
        cJSON_AddNumberToObject(o, "block_influence", imp->block_influence[l]);
        if (isfinite(ll)) cJSON_AddNumberToObject(o, "loss_removed", ll);
        cJSON_AddItemToObject(o, "heads", darr(h, nh));
        cJSON_AddItemToObject(o, "kv_groups", darr(g, nkv));
        double lo, hi, mean;
        tp_vec_stats(n, ff, &lo, &hi, &mean);
        cJSON_AddNumberToObject(o, "neurons_mean", mean);
        cJSON_AddNumberToObject(o, "neurons_min", lo);
        cJSON_AddNumberToObject(o, "neurons_max", hi);
        cJSON_AddItemToArray(layers, o);
    }
    cJSON *c = cJSON_AddObjectToObject(j, "channels");
    double lo, hi, mean;
    tp_vec_stats(C, d, &lo, &hi, &mean);
    cJSON_AddNumberToObject(c, "mean", mean);
    cJSON_AddNumberToObject(c, "min", lo);
    cJSON_AddNumberToObject(c, "max", hi);
    if (imp->block_loss) {
        int nb = L - imp->block_size + 1;
        cJSON *bl = cJSON_AddArrayToObject(j, "blocks");
        for (int i = 0; bl && i < nb; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "first", i);
            cJSON_AddNumberToObject(o, "last", i + imp->block_size - 1);
            cJSON_AddNumberToObject(o, "loss_removed", imp->block_loss[i]);
            if (imp->block_metric) cJSON_AddNumberToObject(o, imp->block_metric_name, imp->block_metric[i]);
            cJSON_AddItemToArray(bl, o);
        }
    }
    if (path) cJSON_AddStringToObject(j, "scores", path);
    cJSON_AddStringToObject(j, "aggregation", tp_agg_pair_name(pair));
    if (isfinite(imp->base_loss)) cJSON_AddNumberToObject(j, "base_loss", imp->base_loss);
    if (imp->block_metric && isfinite(imp->block_metric_base))
        cJSON_AddNumberToObject(j, "block_metric_base", imp->block_metric_base);
    cJSON_AddNumberToObject(j, "samples", imp->n_samples);
    cJSON_AddNumberToObject(j, "seq_len", imp->seq_len);
    if (isfinite(imp->tokens_per_s)) cJSON_AddNumberToObject(j, "importance_tokens_per_s", imp->tokens_per_s);
    if (isfinite(imp->seconds)) cJSON_AddNumberToObject(j, "importance_seconds", imp->seconds);
    if (isfinite(imp->depth_seconds)) cJSON_AddNumberToObject(j, "depth_seconds", imp->depth_seconds);
    if (imp->peak_rss > 0) {
        cJSON_AddBoolToObject(j, "streamed", imp->streamed);
        cJSON_AddNumberToObject(j, "memory_estimate_bytes", imp->mem_estimate);
        cJSON_AddNumberToObject(j, "peak_rss_bytes", imp->peak_rss);
    }
    return j;
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

static tp_status check_job(const tp_importance_job *j, int *pair) {
    if (!j->model && !j->loaded) return tp_fail(TP_ERR_ARG, "importance job: model is required");
    if (!j->data) return tp_fail(TP_ERR_ARG, "importance job: data (the calibration text) is required");
    const struct { const char *name; int v, lo; } f[] = {
        {"samples", j->samples, 1}, {"seq_len", j->seq_len, 2}, {"batch", j->batch, 1},
        {"depth_samples", j->depth_samples, 0}, {"block", j->block, 0}, {"metric_limit", j->metric_limit, 0}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < f[i].lo)
            return tp_fail(TP_ERR_ARG, "importance job: %s must be >= %d, got %d", f[i].name, f[i].lo, f[i].v);
    if (j->neuron_source != TP_NEURON_ACT && j->neuron_source != TP_NEURON_GATE)
        return tp_fail(TP_ERR_ARG, "importance job: neuron_source %d is neither act nor gate", (int)j->neuron_source);
    if (j->block_metric && !j->block) return tp_fail(TP_ERR_ARG, "importance job: block_metric needs block > 0");
    if (j->block && !j->depth_samples) return tp_fail(TP_ERR_ARG, "importance job: block needs depth_samples > 0");
    *pair = -1;
    if (j->agg && tp_agg_pair_parse(j->agg, pair)) return tp_fail_ctx(TP_ERR_ARG, "importance job: agg: ");
    return TP_OK;
}

tp_status tp_importance_job_run(const tp_importance_job *j, tp_importance **out) {
    if (out) *out = NULL;
    int pair = -1;
    tp_status s = check_job(j, &pair);
    if (s) return s;
    tp_model *owned = NULL;
    const tp_model *m = j->loaded;
    tp_mem_plan mp = {0};
    if (!m) {
        tp_config cfg;
        if ((s = tp_config_load(j->model, &cfg))) return s;
        int depth = j->depth_samples < j->samples ? j->depth_samples : j->samples;
        /* the calibration text, read whole and tokenized (text + ids + the tokenizer's work) */
        double text = 3.0 * (double)tp_file_size(j->data);
        double lo = tp_importance_mem(&cfg, (size_t)j->samples, j->seq_len, j->batch, depth, j->block, 0) + text;
        double st = tp_importance_mem(&cfg, (size_t)j->samples, j->seq_len, j->batch, depth, j->block, 1) + text;
        int want = j->stream;
        if (j->block_metric) {
            if (want > 0)
                return tp_fail(TP_ERR_UNSUPPORTED, "importance job: block_metric needs the model loaded, not streamed");
            want = -1;
        }
        s = tp_mem_choose("importance", lo, st, j->mem_limit, want,
                          "fewer samples or depth_samples (each layer-removal variant keeps a stream of them), or "
                          "a smaller batch", &mp);
        if (s) return s;
        tp_log(TP_LOG_INFO, "taper importance: memory: about %.2f GiB loaded, %.2f GiB streamed, %.2f GiB available: %s",
               lo / (1 << 30), st / (1 << 30), mp.available / (1 << 30),
               mp.stream ? "streaming the model (weights read a layer at a time)" : "loading the model");
        if (j->dry_run) return TP_OK;
        if ((s = mp.stream ? tp_model_open_streamed(j->model, &owned) : tp_model_load(j->model, &owned))) return s;
        m = owned;
    } else if (j->dry_run)
        return TP_OK;
    if (j->block >= m->cfg.n_layers) {
        tp_model_free(owned);
        return tp_fail(TP_ERR_ARG, "importance job: block %d must be below the model's %d layers", j->block,
                       m->cfg.n_layers);
    }
    int32_t *ids = NULL;
    size_t avail = 0;
    if ((s = tp_calib_load(m->tok, j->data, j->seq_len, &ids, &avail))) {
        tp_model_free(owned);
        return s;
    }
    size_t n = (size_t)j->samples;
    if (avail < n) {
        tp_log(TP_LOG_WARN, "taper importance: %s has %zu samples of %d tokens; using all of them (asked for %d)",
               j->data, avail, j->seq_len, j->samples);
        n = avail;
    }
    int depth = (size_t)j->depth_samples > n ? (int)n : j->depth_samples;
    task_metric tm = {0};
    tp_layer_metric lm = {j->block_metric, 1, task_metric_fn, &tm};
    if (j->block_metric) {
        s = tp_task_load(j->block_metric, j->data_dir ? j->data_dir : "../shared/data", (size_t)j->metric_limit,
                         &tm.task);
        if (!s && tm.task->kind != TP_TASK_MC)
            s = tp_fail(TP_ERR_ARG, "block_metric %s: not a multiple-choice task (no accuracy to compare)",
                        j->block_metric);
        if (s) {
            tp_task_free(tm.task);
            free(ids);
            tp_model_free(owned);
            return s;
        }
        tp_log(TP_LOG_INFO, "taper importance: scoring %d blocks and the full model on %s (%zu items)",
               m->cfg.n_layers - j->block + 1, j->block_metric, tm.task->n_items);
    }
    tp_importance_opts o;
    tp_importance_opts_default(&o);
    o.block_metric = j->block_metric ? &lm : NULL;
    o.batch = j->batch;
    o.neuron_source = j->neuron_source;
    o.depth_samples = depth;
    o.block_size = j->block;
    tp_progress prog;
    tp_progress_begin(&prog, "importance", 0, "tok");
    o.progress = &prog;
    tp_importance *imp = NULL;
    s = tp_importance_compute(m, ids, n, j->seq_len, &o, &imp);
    tp_progress_end(&prog);
    if (!s) {
        imp->streamed = tp_model_is_streamed(m);
        imp->mem_estimate = imp->streamed ? mp.streamed : mp.loaded;
        imp->peak_rss = tp_peak_rss();
        if (imp->mem_estimate > 0)
            tp_log(TP_LOG_INFO, "taper importance: peak memory %.2f GiB (estimated %.2f GiB)", imp->peak_rss / (1 << 30),
                   imp->mem_estimate / (1 << 30));
    }
    tp_task_free(tm.task);
    free(ids);
    tp_model_free(owned);
    if (!s && ((j->model && !(imp->model = strdup(j->model))) || !(imp->data = strdup(j->data))))
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
    int writer = tp_comm_rank(tp_comm_world()) == 0; /* every rank holds the same scores */
    if (!s && j->out && writer) {
        s = tp_importance_save(imp, j->out);
        if (!s) tp_log(TP_LOG_INFO, "taper importance: wrote %s", j->out);
    }
    if (!s && j->json_path && writer) {
        cJSON *js = tp_importance_summary_json(imp, pair >= 0 ? pair : imp->default_pair, j->out);
        s = js ? tp_write_json_atomic(j->json_path, js) : tp_fail(TP_ERR_NOMEM, "out of memory");
        cJSON_Delete(js);
    }
    if (s || !out) {
        tp_importance_free(imp);
        return s;
    }
    *out = imp;
    return TP_OK;
}
