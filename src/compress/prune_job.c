/* `taper prune` as a library call (tp_prune_job_run): plan (explicit sizes, a layer list, the
 * parameter-budget search on held-out text, or a replayed plan), apply the plan, write the HF
 * folder, prune_plan.json, the GGUF and the JSON of `taper prune --json` (tp_prune_job_json). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "taper/compress.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/util.h"

void tp_prune_job_default(tp_prune_job *j) {
    memset(j, 0, sizeof *j);
    j->dtype = NULL;     /* the source's */
    j->gguf_type = NULL; /* the source's */
    j->tolerance = 0.05;
    j->max_candidates = 12;
    j->eval_samples = 16;
    tp_per_layer_opts_default(&j->per_layer_opts);
    /* what measured best on SmolLM2 (bench/RESULTS.md): MLP widths by loss, heads uniform */
    j->per_layer_opts.loss_rule = 1;
    j->per_layer_opts.ffn_only = 1;
}

void tp_prune_job_result_free(tp_prune_job_result *r) {
    if (!r) return;
    tp_prune_plan_free(r->plan);
    free(r->plan_path);
    free(r->candidates);
    free(r->eval_data);
    memset(r, 0, sizeof *r);
}

const char *tp_prune_job_result_depth(const tp_prune_job_result *r) {
    if (r->replayed) return "plan";
    return r->pruned.n_layers == r->src.n_layers ? "none" : tp_depth_rule_name(r->plan->depth_rule);
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

cJSON *tp_prune_job_json(const tp_prune_job *j, const tp_prune_job_result *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (j->target_params) {
        cJSON *arr = cJSON_AddArrayToObject(o, "candidates");
        for (int i = 0; arr && i < r->n_candidates; i++) {
            const tp_prune_shape *sh = &r->candidates[i].shape;
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "rank", i + 1);
            cJSON_AddNumberToObject(e, "hidden_size", sh->d_model);
            cJSON_AddNumberToObject(e, "intermediate_size", sh->d_ff);
            cJSON_AddNumberToObject(e, "num_attention_heads", sh->n_heads);
            cJSON_AddNumberToObject(e, "num_key_value_heads", sh->n_kv_heads);
            cJSON_AddNumberToObject(e, "num_hidden_layers", sh->n_layers);
            cJSON_AddNumberToObject(e, "params", (double)r->candidates[i].n_params);
            cJSON_AddNumberToObject(e, "heldout_loss", r->candidates[i].loss);
            cJSON_AddItemToArray(arr, e);
        }
        cJSON_AddNumberToObject(o, "target_params", (double)j->target_params);
        cJSON_AddNumberToObject(o, "qualifying_shapes", r->n_qualifying);
    }
    const tp_prune_plan *p = r->plan;
    cJSON_AddStringToObject(o, "model", j->model);
    cJSON_AddItemToObject(o, "source", shape_json(&r->src, p->src_params));
    cJSON_AddItemToObject(o, "pruned", shape_json(&r->pruned, p->n_params));
    cJSON_AddItemToObject(o, "layers_kept", cJSON_CreateIntArray(p->layers, r->pruned.n_layers));
    if (r->pruned.hetero) {
        cJSON_AddItemToObject(o, "layer_intermediate_size", cJSON_CreateIntArray(r->pruned.layer_ff, r->pruned.n_layers));
        cJSON_AddItemToObject(o, "layer_num_attention_heads",
                              cJSON_CreateIntArray(r->pruned.layer_heads, r->pruned.n_layers));
    }
    cJSON_AddStringToObject(o, "depth_rule", tp_prune_job_result_depth(r));
    if (p->agg_pair >= 0) cJSON_AddStringToObject(o, "aggregation", tp_agg_pair_name(p->agg_pair));
    cJSON_AddStringToObject(o, "plan", r->plan_path);
    if (j->out) cJSON_AddStringToObject(o, "out", j->out);
    if (j->out) cJSON_AddStringToObject(o, "dtype", r->dtype);
    if (j->gguf) cJSON_AddStringToObject(o, "gguf", j->gguf);
    if (j->gguf) cJSON_AddStringToObject(o, "gguf_type", r->gguf_type);
    cJSON_AddBoolToObject(o, "streamed", r->mem.stream);
    cJSON_AddNumberToObject(o, "memory_estimate_bytes", r->mem.stream ? r->mem.streamed : r->mem.loaded);
    cJSON_AddNumberToObject(o, "peak_rss_bytes", r->peak_rss);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    return o;
}

/* The job's settings, checked and parsed. */
typedef struct {
    tp_prune_shape shape;
    int *drop, n_drop, pair;
    tp_depth_rule rule;
} parsed;

static tp_status check_job(const tp_prune_job *j, parsed *a) {
    if (!j->model) return tp_fail(TP_ERR_ARG, "prune job: model is required");
    if (j->per_layer && j->out)
        return tp_fail(TP_ERR_ARG, "prune job: per-layer widths cannot be written as an HF folder (transformers' "
                       "configs have one MLP width and head count); write the GGUF (gguf) instead of out");
    if (j->per_layer && (!j->gguf || !j->scores))
        return tp_fail(TP_ERR_ARG, "prune job: per-layer widths need scores and a GGUF to write (gguf)");
    if (!j->out && !j->plan_out && !(j->per_layer && j->gguf))
        return tp_fail(TP_ERR_ARG, "prune job: out (or plan_out) is required");
    if (j->dtype && strcasecmp(j->dtype, "source") && strcasecmp(j->dtype, "f32") && strcasecmp(j->dtype, "f16") &&
        strcasecmp(j->dtype, "bf16"))
        return tp_fail(TP_ERR_ARG, "prune job: dtype must be source, f32, f16 or bf16, got '%s'", j->dtype);
    if (j->gguf_type && strcasecmp(j->gguf_type, "source") && strcasecmp(j->gguf_type, "f32") &&
        strcasecmp(j->gguf_type, "f16") && strcasecmp(j->gguf_type, "bf16") && strcasecmp(j->gguf_type, "q8_0"))
        return tp_fail(TP_ERR_ARG, "prune job: gguf_type must be source, f32, f16, bf16 or q8_0, got '%s'",
                       j->gguf_type);
    const struct { const char *name; int v, lo; } f[] = {
        {"hidden", j->hidden, 0},          {"ffn", j->ffn, 0},
        {"heads", j->heads, 0},            {"kv_heads", j->kv_heads, 0},
        {"layers", j->layers, 0},          {"max_candidates", j->max_candidates, 0},
        {"eval_samples", j->eval_samples, 1}, {"seq_len", j->seq_len, 0}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < f[i].lo)
            return tp_fail(TP_ERR_ARG, "prune job: %s must be >= %d, got %d", f[i].name, f[i].lo, f[i].v);
    if (j->seq_len == 1) return tp_fail(TP_ERR_ARG, "prune job: seq_len must be 0 (the scores') or >= 2");
    int width = j->hidden || j->ffn || j->heads || j->kv_heads;
    if (j->plan && (j->scores || width || j->layers || j->drop_layers || j->target_params || j->agg))
        return tp_fail(TP_ERR_ARG, "prune job: plan replays a plan; it takes no scores, sizes, drop_layers, agg or "
                       "target_params");
    if (!j->plan && !j->scores && (width || j->target_params || (j->layers && !j->drop_layers)))
        return tp_fail(TP_ERR_ARG, "prune job: scores is required unless only drop_layers is given");
    if (j->target_params && j->drop_layers)
        return tp_fail(TP_ERR_ARG, "prune job: target_params chooses the depth itself; set layers to fix it, not "
                       "drop_layers");
    a->shape = (tp_prune_shape){j->hidden, j->ffn, j->heads, j->kv_heads, j->layers};
    a->rule = TP_DEPTH_AUTO;
    if (j->depth_metric && (tp_depth_rule_parse(j->depth_metric, &a->rule) || a->rule == TP_DEPTH_LIST))
        return tp_fail(TP_ERR_ARG, "prune job: depth_metric must be auto, block, block-metric, loss or bi, got '%s'",
                       j->depth_metric);
    a->pair = -1;
    if (j->agg && tp_agg_pair_parse(j->agg, &a->pair)) return tp_fail_ctx(TP_ERR_ARG, "prune job: agg: ");
    tp_status s = j->drop_layers ? tp_layer_list_parse(j->drop_layers, &a->drop, &a->n_drop) : TP_OK;
    if (s) return tp_fail_ctx(s, "prune job: drop_layers ");
    return TP_OK;
}

/* The held-out samples of the budget search and of per-layer widths by loss: eval_samples
 * windows of j->data (default the scores' calibration file) right after the calibration ones. */
static tp_status heldout(const tp_model *m, const tp_importance *imp, const tp_prune_job *j, int32_t **ids,
                         size_t *first_out, size_t *ne_out, int *T_out) {
    const char *data = j->data ? j->data : imp->data;
    if (!data) return tp_fail(TP_ERR_ARG, "held-out text: the scores name no calibration file; set data");
    int T = j->seq_len ? j->seq_len : imp->seq_len;
    size_t avail = 0;
    tp_status s = tp_calib_load(m->tok, data, T, ids, &avail);
    if (s) return s;
    size_t ne = (size_t)j->eval_samples, first = (size_t)imp->n_samples;
    if (ne > avail) ne = avail;
    if (first + ne > avail) {
        first = avail - ne;
        tp_log(TP_LOG_WARN, "taper prune: %s has only %zu samples of %d tokens; held-out samples start at %zu and may "
               "overlap the calibration ones", data, avail, T, first);
    }
    *first_out = first;
    *ne_out = ne;
    *T_out = T;
    return TP_OK;
}

/* Per-layer widths by loss sensitivity on the loaded model m (the job's held-out samples). */
static tp_status per_layer_loss(tp_model *m, const tp_importance *imp, const tp_prune_job *j, tp_prune_plan *plan) {
    int32_t *ids = NULL;
    size_t first = 0, ne = 0;
    int T = 0;
    tp_status s = heldout(m, imp, j, &ids, &first, &ne, &T);
    if (s) return s;
    tp_per_layer_opts o = j->per_layer_opts;
    o.model = m;
    o.ids = ids + first * (size_t)T;
    o.n = ne;
    o.seq_len = T;
    tp_progress prog;
    tp_progress_begin(&prog, "per-layer", 0, "fwd");
    o.progress = &prog;
    s = tp_prune_plan_per_layer(plan, imp, &o);
    tp_progress_end(&prog);
    free(ids);
    return s;
}

/* Runs the budget search: a->shape becomes the winner; the table goes into r. */
static tp_status search(const tp_model *m, const tp_importance *imp, const tp_prune_job *j, parsed *a,
                        tp_prune_job_result *r) {
    tp_search_opts o;
    tp_search_opts_default(&o);
    o.target = j->target_params;
    o.tolerance = j->tolerance;
    o.fixed = a->shape;
    o.max_candidates = j->max_candidates;
    o.agg_pair = a->pair;
    o.depth_rule = a->rule;
    tp_prune_candidate *c = NULL;
    int nc = 0, nt = 0;
    /* enumerate first: an impossible budget fails before any text is read */
    tp_status s = tp_prune_search(m, imp, &o, &c, &nc, &nt);
    free(c);
    c = NULL;
    if (s) return s;
    const char *data = j->data ? j->data : imp->data;
    int32_t *ids = NULL;
    size_t ne = 0, first = 0;
    int T = 0;
    if ((s = heldout(m, imp, j, &ids, &first, &ne, &T))) return s;
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
    if (!(r->eval_data = strdup(data))) {
        free(c);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    r->candidates = c;
    r->n_candidates = nc;
    r->n_qualifying = nt;
    r->eval_first = first;
    r->eval_samples = ne;
    r->eval_seq_len = T;
    a->shape = c[0].shape;
    return TP_OK;
}

/* "F32", "F16", "BF16" for a dtype setting ("source" or NULL: src, the source model's). */
static const char *hf_dtype(const char *want, const char *src) {
    if (!want || !strcasecmp(want, "source")) return src;
    return !strcasecmp(want, "f16") ? "F16" : !strcasecmp(want, "bf16") ? "BF16" : "F32";
}

tp_status tp_prune_job_run(const tp_prune_job *j, tp_prune_job_result *r) {
    memset(r, 0, sizeof *r);
    parsed a;
    memset(&a, 0, sizeof a);
    tp_status s = check_job(j, &a);
    if (s) {
        free(a.drop);
        return s;
    }
    tp_model *m = NULL, *pm = NULL;
    tp_importance *imp = NULL;
    tp_prune_plan *plan = NULL;
    tp_config src;
    double t0 = tp_time_s();
    if (j->plan) s = tp_prune_plan_load(j->plan, &plan);
    else if (j->scores) s = tp_importance_load(j->scores, &imp);
    /* plan from the metadata; the weights are read only once the memory plan says how */
    if (!s) s = tp_config_load(j->model, &src);
    if (!s && imp) s = tp_importance_check_model(imp, &src, j->scores);
    if (!s && plan) s = tp_prune_plan_check(plan, &src);
    if (!s && imp && a.pair < 0) a.pair = imp->default_pair;
    r->replayed = plan != NULL;
    int search_first = !plan && j->target_params;
    if (!s && !plan && !search_first) s = tp_prune_plan_make(&src, imp, a.pair, &a.shape, a.rule, a.drop, a.n_drop, &plan);
    int loss_rule = j->per_layer && j->per_layer_opts.loss_rule; /* needs the model loaded: after loading */
    if (!s && !search_first && j->per_layer && !loss_rule) s = tp_prune_plan_per_layer(plan, imp, &j->per_layer_opts);
    if (!s && plan && plan->cfg.hetero && j->out)
        s = tp_fail(TP_ERR_UNSUPPORTED, "prune job: the plan has per-layer widths, which an HF folder cannot hold; "
                    "write the GGUF (gguf) instead of out");
    if (!s) {
        /* the search evaluates candidates on the loaded model; its winner is at most the source */
        tp_config dst = plan ? plan->cfg : src;
        int want = j->stream;
        const char *why = search_first ? "target_params" : loss_rule ? "per-layer widths by loss" : j->gguf ? "gguf" : NULL;
        if (why && want > 0)
            s = tp_fail(TP_ERR_UNSUPPORTED, "prune job: %s needs the model loaded, not streamed (give the sizes "
                        "instead, or write the HF folder and convert it)", why);
        if (why) want = -1;
        /* the GGUF writer holds the file it writes (at most 4 bytes a parameter); the score or plan
         * file was parsed (a JSON tree: about 8 times the file, kept by the allocator) */
        double gguf = j->gguf ? 4.0 * (double)tp_config_n_params(&dst) : 0;
        double parsed_json = 8.0 * (double)tp_file_size(j->plan ? j->plan : j->scores);
        if (!s) s = tp_mem_choose("prune", tp_prune_mem(&src, &dst, 0) + gguf + parsed_json,
                                  tp_prune_mem(&src, &dst, 1) + parsed_json, j->mem_limit, want, NULL, &r->mem);
        if (!s) tp_log(TP_LOG_INFO, "taper prune: memory: about %.2f GiB loaded, %.2f GiB streamed, %.2f GiB available: %s",
                       r->mem.loaded / (1 << 30), r->mem.streamed / (1 << 30), r->mem.available / (1 << 30),
                       r->mem.stream ? "streaming the model (a layer at a time, written tensor by tensor)"
                                     : "loading the model");
    }
    if (!s && j->dry_run) {
        tp_prune_plan_free(plan);
        tp_importance_free(imp);
        free(a.drop);
        memset(r, 0, sizeof *r);
        return TP_OK;
    }
    if (!s) s = r->mem.stream ? tp_model_open_streamed(j->model, &m) : tp_model_load(j->model, &m);
    if (!s && search_first) s = search(m, imp, j, &a, r);
    if (!s && search_first) s = tp_prune_plan_make(&m->cfg, imp, a.pair, &a.shape, a.rule, a.drop, a.n_drop, &plan);
    if (!s && search_first && j->per_layer && !loss_rule) s = tp_prune_plan_per_layer(plan, imp, &j->per_layer_opts);
    if (!s && loss_rule) s = per_layer_loss(m, imp, j, plan);
    if (!s && !plan->scores && j->scores && !(plan->scores = strdup(j->scores)))
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s && !r->mem.stream) s = tp_prune_apply(m, plan, &pm);
    if (!s) {
        r->src = m->cfg;
        tp_prune_plan_config(&m->cfg, plan, &r->pruned);
        if (pm) {
            pm->tok = m->tok; /* the vocabulary is unchanged */
            m->tok = NULL;
        }
        if (j->plan_out) r->plan_path = strdup(j->plan_out);
        else if (!j->out) {
            if ((r->plan_path = malloc(strlen(j->gguf) + 16))) sprintf(r->plan_path, "%s.plan.json", j->gguf);
        } else if ((r->plan_path = malloc(strlen(j->out) + 20))) sprintf(r->plan_path, "%s/prune_plan.json", j->out);
        if (!r->plan_path) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    const char *src_dt = s ? "F32" : tp_model_source_dtype(m);
    if (!s && j->out) {
        const char *dt = hf_dtype(j->dtype, src_dt);
        snprintf(r->dtype, sizeof r->dtype, "%s", dt);
        if (pm) s = tp_model_save_hf(pm, j->out, dt);
        else {
            tp_progress prog;
            tp_progress_begin(&prog, "export", 0, "layers");
            s = tp_prune_export_hf(m, plan, j->out, dt, &prog);
            tp_progress_end(&prog);
        }
        char note[1024];
        if (!s && tp_model_hf_tokenizer_note(j->out, note, sizeof note)) tp_log(TP_LOG_NOTE, "note: %s", note);
    }
    if (!s) s = tp_prune_plan_save(plan, r->plan_path);
    if (!s && j->gguf) {
        const char *gt_s = hf_dtype(j->gguf_type, src_dt);
        int gt = j->gguf_type && !strcasecmp(j->gguf_type, "q8_0") ? TP_GGML_Q8_0
                 : !strcmp(gt_s, "F16") ? TP_GGML_F16 : !strcmp(gt_s, "BF16") ? TP_GGML_BF16 : TP_GGML_F32;
        snprintf(r->gguf_type, sizeof r->gguf_type, "%s", tp_ggml_type_name((tp_ggml_type)gt));
        s = tp_model_save_gguf(pm, j->gguf, gt);
    }
    r->plan = plan;
    r->seconds = tp_time_s() - t0;
    r->peak_rss = tp_peak_rss();
    if (!s)
        tp_log(TP_LOG_INFO, "taper prune: peak memory %.2f GiB (estimated %.2f GiB)", r->peak_rss / (1 << 30),
               (r->mem.stream ? r->mem.streamed : r->mem.loaded) / (1 << 30));
    if (!s && j->json_path) {
        cJSON *js = tp_prune_job_json(j, r);
        s = js ? tp_write_json_atomic(j->json_path, js) : tp_fail(TP_ERR_NOMEM, "out of memory");
        cJSON_Delete(js);
    }
    free(a.drop);
    tp_importance_free(imp);
    tp_model_free(pm);
    tp_model_free(m);
    if (s) tp_prune_job_result_free(r);
    return s;
}
