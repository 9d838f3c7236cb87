/* `taper ppl` and `taper eval` as library calls (tp_ppl_job, tp_eval_job): load the model and the
 * data, score, and build the JSON the commands write; the CLI only parses options and prints. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "taper/eval.h"
#include "taper/model.h"
#include "taper/tasks.h"
#include "taper/util.h"

#define MAX_TASKS 64 /* built-in names in one list (the CLI caps --task-file at the same) */

/* Sets the job's precision; *prev receives the one to restore (NULL: nothing to restore). */
static tp_status precision_enter(const char *want, const char **prev) {
    *prev = NULL;
    if (!want) return TP_OK;
    const char *old = tp_precision_name(); /* a static string */
    tp_status s = tp_set_precision(want);
    if (s) return tp_fail_ctx(s, "precision: ");
    *prev = old;
    return TP_OK;
}

static void precision_leave(const char *prev) {
    if (prev) (void)tp_set_precision(prev);
}

/* Loads path with its bf16 copies (under bf16) and checks it has a tokenizer. */
static tp_status load_model(const char *path, tp_model **out) {
    tp_model *m = NULL;
    tp_status s = tp_model_load(path, &m);
    if (!s) s = tp_model_prepare_precision(m, 1);
    if (!s && !m->tok) s = tp_fail(TP_ERR_ARG, "%s has no tokenizer (tokenizer.json)", path);
    if (s) {
        tp_model_free(m);
        m = NULL;
    }
    *out = m;
    return s;
}

static tp_status write_json(const char *path, cJSON *j) {
    if (!j) return tp_fail(TP_ERR_NOMEM, "out of memory building the JSON for %s", path);
    tp_status s = tp_write_json_atomic(path, j);
    cJSON_Delete(j);
    return s;
}

/* ---------------- ppl ---------------- */

void tp_ppl_job_default(tp_ppl_job *j) {
    memset(j, 0, sizeof *j);
    j->ctx = 512;
}

static tp_status ppl_run(const tp_ppl_job *j, tp_ppl_job_result *res) {
    if (!j->model) return tp_fail(TP_ERR_ARG, "ppl: model is required");
    if (!j->data) return tp_fail(TP_ERR_ARG, "ppl: data is required");
    if (j->ctx < 4) return tp_fail(TP_ERR_ARG, "ppl: ctx must be >= 4, got %d", j->ctx);
    tp_model *m = NULL;
    tp_status s = j->stream ? tp_model_open_streamed(j->model, &m) : load_model(j->model, &m);
    if (s) return s;
    res->max_pos = m->cfg.max_pos;
    if (j->ctx > m->cfg.max_pos)
        tp_log(TP_LOG_WARN, "taper ppl: warning: ctx %d exceeds the model's context %d", j->ctx, m->cfg.max_pos);
    char *text = NULL;
    size_t len = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    s = tp_read_file(j->data, &text, &len);
    if (!s) s = tp_tok_encode(m->tok, text, len, 0, &ids, &n);
    free(text);
    if (!s) {
        res->bytes = len;
        res->tokens = n;
        int32_t bos = tp_tok_adds_bos(m->tok) ? tp_tok_bos(m->tok) : -1;
        size_t chunks = n / (size_t)j->ctx;
        if (j->max_chunks && chunks > j->max_chunks) chunks = j->max_chunks;
        tp_progress prog;
        tp_progress_begin(&prog, "ppl", (double)(chunks * (size_t)j->ctx * (bos >= 0 ? 2 : 1)), "tok");
        s = tp_perplexity(m, ids, n, j->ctx, bos, j->max_chunks, &prog, res->r);
        tp_progress_end(&prog);
    }
    if (!s && j->logits_path) {
        size_t V = (size_t)m->cfg.vocab, T = (size_t)j->ctx;
        float *lg = n >= T ? malloc(T * V * sizeof(float)) : NULL;
        if (n < T) s = tp_fail(TP_ERR_ARG, "ppl: logits: the text has %zu tokens, fewer than ctx %d", n, j->ctx);
        else if (!lg) s = tp_fail(TP_ERR_NOMEM, "ppl: out of memory for %zu x %zu logits", T, V);
        else s = tp_forward(m, ids, 1, (int)T, NULL, lg, 0);
        if (!s) s = tp_write_file_atomic(j->logits_path, lg, T * V * sizeof(float));
        free(lg);
    }
    free(ids);
    tp_model_free(m);
    return s;
}

tp_status tp_ppl_job_run(const tp_ppl_job *j, tp_ppl_job_result *res) {
    memset(res, 0, sizeof *res);
    res->ctx = j->ctx;
    const char *prev;
    tp_status s = precision_enter(j->precision, &prev);
    if (s) return s;
    res->precision = tp_precision_name();
    s = ppl_run(j, res);
    precision_leave(prev);
    if (!s && j->json_path) s = write_json(j->json_path, tp_ppl_job_json(j, res));
    return s;
}

cJSON *tp_ppl_job_json(const tp_ppl_job *j, const tp_ppl_job_result *res) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "model", j->model);
    cJSON_AddStringToObject(o, "data", j->data);
    cJSON_AddNumberToObject(o, "bytes", (double)res->bytes);
    cJSON_AddNumberToObject(o, "tokens", (double)res->tokens);
    cJSON_AddNumberToObject(o, "ctx", res->ctx);
    cJSON *arr = cJSON_AddArrayToObject(o, "results");
    for (int p = 0; p < 2 && arr; p++) {
        const tp_ppl_result *r = &res->r[p];
        cJSON *e = cJSON_CreateObject();
        if (!e) break;
        cJSON_AddStringToObject(e, "protocol", tp_ppl_protocol_name((tp_ppl_protocol)p));
        cJSON_AddStringToObject(e, "definition", tp_ppl_protocol_desc((tp_ppl_protocol)p));
        cJSON_AddNumberToObject(e, "ppl", r->ppl);
        cJSON_AddNumberToObject(e, "nll_sum", r->nll_sum);
        cJSON_AddNumberToObject(e, "scored_tokens", (double)r->n_scored);
        cJSON_AddNumberToObject(e, "chunks", (double)r->n_chunks);
        cJSON_AddNumberToObject(e, "seconds", r->seconds);
        cJSON_AddNumberToObject(e, "tokens_per_s", r->tokens_per_s);
        cJSON_AddStringToObject(e, "precision", res->precision ? res->precision : tp_precision_name());
        cJSON_AddItemToArray(arr, e);
    }
    return o;
}

/* ---------------- eval ---------------- */

tp_status tp_task_list_parse(const char *list, const char **names, int max, int *n) {
    *n = 0;
    size_t n_known;
    const char *const *known = tp_task_names(&n_known);
    const char *p = list ? list : "";
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == 3 && !strncmp(p, "all", 3)) {
            /* "all" fills what room is left, as the CLI always did */
            for (size_t k = 0; k < n_known && *n < max; k++) names[(*n)++] = known[k];
        } else if (len) {
            size_t k = 0;
            while (k < n_known && (strlen(known[k]) != len || strncmp(p, known[k], len))) k++;
            if (k == n_known)
                return tp_fail(TP_ERR_ARG,
                               "unknown task '%.*s' (known: arc_easy, arc_challenge, hellaswag, piqa, winogrande, "
                               "mmlu, wikitext, all; or a task file)",
                               (int)len, p);
            if (*n == max) return tp_fail(TP_ERR_ARG, "too many tasks (at most %d)", max);
            names[(*n)++] = known[k];
        }
        p += len;
        if (*p == ',') p++;
    }
    return TP_OK;
}

void tp_eval_job_default(tp_eval_job *j) {
    memset(j, 0, sizeof *j);
    j->batch = 8;
}

void tp_eval_job_result_free(tp_eval_job_result *res) {
    if (!res) return;
    for (int k = 0; k < res->n_tasks; k++) {
        if (res->results) tp_task_result_free(&res->results[k]);
        if (res->tasks) tp_task_free(res->tasks[k]);
    }
    free(res->results);
    free(res->tasks);
    memset(res, 0, sizeof *res);
}

/* Loads every task (before the model, so that missing data fails first) into res. */
static tp_status load_tasks(const tp_eval_job *j, tp_eval_job_result *res) {
    const char *names[MAX_TASKS];
    int n_names = 0;
    const char *list = j->tasks ? j->tasks : j->n_task_files == 0 ? "all" : NULL;
    tp_status s = tp_task_list_parse(list, names, MAX_TASKS, &n_names);
    if (s) return tp_fail_ctx(s, "tasks: ");
    if (n_names + j->n_task_files == 0) return tp_fail(TP_ERR_ARG, "no task given (tasks or task_files)");
    if (n_names && !j->data_dir) return tp_fail(TP_ERR_ARG, "data_dir is required for built-in tasks");
    int n = n_names + j->n_task_files;
    res->tasks = calloc((size_t)n, sizeof *res->tasks);
    res->results = calloc((size_t)n, sizeof *res->results);
    if (!res->tasks || !res->results) return tp_fail(TP_ERR_NOMEM, "out of memory for %d tasks", n);
    res->n_tasks = n;
    for (int k = 0; k < n && !s; k++)
        s = k < n_names ? tp_task_load(names[k], j->data_dir, (size_t)j->limit, &res->tasks[k])
                        : tp_task_load_file(j->task_files[k - n_names], (size_t)j->limit, &res->tasks[k]);
    return s;
}

static tp_status eval_run(const tp_eval_job *j, tp_eval_job_result *res) {
    if (!j->model) return tp_fail(TP_ERR_ARG, "eval: model is required");
    if (j->limit < 0) return tp_fail(TP_ERR_ARG, "eval: limit must be >= 0, got %d", j->limit);
    if (j->batch < 1) return tp_fail(TP_ERR_ARG, "eval: batch must be >= 1, got %d", j->batch);
    if (j->max_length < 0) return tp_fail(TP_ERR_ARG, "eval: max_length must be >= 0, got %d", j->max_length);
    if (j->n_task_files < 0 || (j->n_task_files && !j->task_files))
        return tp_fail(TP_ERR_ARG, "eval: task_files must hold n_task_files (%d) paths", j->n_task_files);
    tp_status s = load_tasks(j, res);
    tp_model *m = NULL;
    if (!s) s = load_model(j->model, &m);
    if (s) return s;
    tp_eval_opts eo = {.max_length = j->max_length, .batch = j->batch};
    res->max_length = j->max_length > 0 ? j->max_length : m->cfg.max_pos > 0 ? m->cfg.max_pos : 2048;
    if (j->on_task) j->on_task(j->user, res, -1);
    double sum_acc = 0, sum_best = 0;
    for (int k = 0; k < res->n_tasks && !s; k++) {
        const tp_task *t = res->tasks[k];
        tp_progress prog;
        tp_progress_begin(&prog, t->name, 0, "tok");
        s = tp_task_run(m, t, &eo, &prog, &res->results[k]);
        tp_progress_end(&prog);
        if (s) { /* tp_task_run left results[k] empty */
            tp_fail_ctx(s, "task %s: ", t->name);
            break;
        }
        if (t->kind == TP_TASK_MC) {
            sum_acc += res->results[k].acc;
            sum_best += t->has_acc_norm ? res->results[k].acc_norm : res->results[k].acc;
            res->n_mc++;
        }
        if (j->on_task) j->on_task(j->user, res, k);
    }
    if (res->n_mc) {
        res->macro_acc = sum_acc / res->n_mc;
        res->macro_acc_norm_or_acc = sum_best / res->n_mc;
    }
    tp_model_free(m);
    return s;
}

tp_status tp_eval_job_run(const tp_eval_job *j, tp_eval_job_result *res) {
    memset(res, 0, sizeof *res);
    const char *prev;
    tp_status s = precision_enter(j->precision, &prev);
    if (s) return s;
    s = eval_run(j, res);
    precision_leave(prev);
    if (!s && j->json_path) s = write_json(j->json_path, tp_eval_job_json(j, res));
    if (s) tp_eval_job_result_free(res);
    return s;
}

static void add_num(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

static const char *kind_name(tp_task_kind k) {
    return k == TP_TASK_MC ? "multiple_choice" : k == TP_TASK_LL ? "loglikelihood" : "loglikelihood_rolling";
}

static cJSON *group_json(const tp_group_result *g, int norm) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", g->name ? g->name : "");
    cJSON_AddNumberToObject(o, "items", (double)g->n);
    add_num(o, "acc", g->acc);
    add_num(o, "acc_stderr", g->acc_stderr);
    if (norm) {
        add_num(o, "acc_norm", g->acc_norm);
        add_num(o, "acc_norm_stderr", g->acc_norm_stderr);
    }
    return o;
}

static cJSON *task_json(const tp_task *t, const tp_task_result *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "task", t->name);
    cJSON_AddStringToObject(o, "source", t->source);
    cJSON_AddStringToObject(o, "kind", kind_name(t->kind));
    cJSON_AddStringToObject(o, "format", t->format);
    cJSON_AddNumberToObject(o, "items", (double)t->n_items);
    cJSON *mt = cJSON_AddObjectToObject(o, "metrics");
    if (t->kind == TP_TASK_MC) {
        add_num(mt, "acc", r->acc);
        add_num(mt, "acc_stderr", r->acc_stderr);
        if (t->has_acc_norm) {
            add_num(mt, "acc_norm", r->acc_norm);
            add_num(mt, "acc_norm_stderr", r->acc_norm_stderr);
        }
    } else if (t->kind == TP_TASK_LL) {
        add_num(mt, "acc", r->acc);
        add_num(mt, "acc_stderr", r->acc_stderr);
        add_num(mt, "ll_mean", r->ll_mean);
        add_num(mt, "perplexity", r->perplexity);
    } else {
        add_num(mt, "word_perplexity", r->word_perplexity);
        add_num(mt, "byte_perplexity", r->byte_perplexity);
        add_num(mt, "bits_per_byte", r->bits_per_byte);
        add_num(mt, "ll_sum", r->ll_sum);
        cJSON_AddNumberToObject(mt, "words", (double)r->words);
        cJSON_AddNumberToObject(mt, "bytes", (double)r->bytes);
    }
    cJSON_AddNumberToObject(o, "tokens_forwarded", (double)r->tokens);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    if (r->n_groups) {
        cJSON *g = cJSON_AddArrayToObject(o, "subtasks");
        for (int k = 0; k < r->n_groups; k++) cJSON_AddItemToArray(g, group_json(&r->groups[k], t->has_acc_norm));
    }
    if (r->n_cats) {
        cJSON *g = cJSON_AddArrayToObject(o, "categories");
        for (int k = 0; k < r->n_cats; k++) cJSON_AddItemToArray(g, group_json(&r->cats[k], t->has_acc_norm));
    }
    cJSON *items = cJSON_AddArrayToObject(o, "samples");
    for (size_t i = 0; i < t->n_items; i++) {
        const tp_task_item *it = &t->items[i];
        const tp_item_result *x = &r->items[i];
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "i", (double)i);
        if (t->n_groups) cJSON_AddStringToObject(s, "subtask", t->groups[it->group]);
        cJSON *ll = cJSON_AddArrayToObject(s, "ll");
        cJSON *gr = cJSON_AddArrayToObject(s, "greedy");
        for (int k = 0; k < it->n; k++) {
            cJSON_AddItemToArray(ll, cJSON_CreateNumber(x->ll[k]));
            cJSON_AddItemToArray(gr, cJSON_CreateNumber(x->greedy[k]));
        }
        if (t->kind == TP_TASK_MC) {
            cJSON_AddNumberToObject(s, "gold", it->gold);
            cJSON_AddNumberToObject(s, "pred", x->pred);
            if (t->has_acc_norm) cJSON_AddNumberToObject(s, "pred_norm", x->pred_norm);
        }
        if (t->kind == TP_TASK_ROLLING) {
            cJSON_AddNumberToObject(s, "words", (double)it->words);
            cJSON_AddNumberToObject(s, "bytes", (double)it->bytes);
        }
        cJSON_AddNumberToObject(s, "ctx_tokens", x->n_ctx_tokens);
        cJSON_AddNumberToObject(s, "cont_tokens", x->n_cont_tokens);
        cJSON_AddItemToArray(items, s);
    }
    return o;
}

cJSON *tp_eval_job_json(const tp_eval_job *j, const tp_eval_job_result *res) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "model", j->model);
    cJSON *set = cJSON_AddObjectToObject(root, "settings");
    cJSON_AddStringToObject(set, "protocol", "lm-evaluation-harness 0.4.13 zero-shot, HFLM loglikelihood scoring");
    if (j->data_dir) cJSON_AddStringToObject(set, "data_dir", j->data_dir);
    else cJSON_AddNullToObject(set, "data_dir");
    cJSON_AddNumberToObject(set, "max_length", res->max_length);
    cJSON_AddNumberToObject(set, "batch", j->batch);
    cJSON_AddNumberToObject(set, "limit", j->limit);
    cJSON_AddNumberToObject(set, "num_fewshot", 0);
    cJSON_AddStringToObject(set, "target_delimiter", " ");
    cJSON_AddStringToObject(set, "acc_norm", "argmax of ll / len(choice) in characters");
    cJSON *jt = cJSON_AddArrayToObject(root, "tasks");
    for (int k = 0; k < res->n_tasks; k++) cJSON_AddItemToArray(jt, task_json(res->tasks[k], &res->results[k]));
    if (res->n_mc > 1) {
        cJSON *mac = cJSON_AddObjectToObject(root, "macro_average");
        cJSON_AddNumberToObject(mac, "tasks", res->n_mc);
        add_num(mac, "acc", res->macro_acc);
        add_num(mac, "acc_norm_or_acc", res->macro_acc_norm_or_acc);
    }
    return root;
}
