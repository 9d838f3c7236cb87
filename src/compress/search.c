/* Architecture search ranked by short distillation (tp_search_run, include/taper/compress.h).
 *
 * Stage 1: every candidate shape of the budget grid (tp_prune_search's enumeration) is pruned from
 * the loaded teacher with the importance scores and scored untrained on held-out windows of the
 * data: cross-entropy against the next tokens and KL from the teacher (top-k + rest, as
 * distillation from a cache computes it).
 * Stage 2: the best K by untrained loss are each distilled for N steps from one teacher cache
 * (built once per search, or reused), then scored again on the same held-out windows and ranked
 * by held-out KL. Each candidate lives in RUN/cand-NN (student, run, final, result.json): a
 * finished one is read back, an interrupted one resumes from its checkpoint. RUN/search.json holds
 * both rankings and their Spearman correlation, rewritten after every candidate. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/compress.h"
#include "taper/distill.h"
#include "taper/train.h"
#include "taper/trainer.h"
#include "taper/util.h"
#include "core/internal.h"

void tp_search_job_default(tp_search_job *j) {
    memset(j, 0, sizeof *j);
    tp_search_opts_default(&j->grid);
    j->grid.max_candidates = 0; /* every qualifying shape is scored untrained */
    j->candidates = 4;
    j->steps = 200;
    j->seq = 256;
    j->batch = 4;
    j->accum = 1;
    j->lr = 3e-4f;
    j->min_lr = 3e-5f;
    j->warmup = 10;
    j->val_frac = 0.05;
    j->seed = 1;
    j->eval_windows = 32;
    j->topk = 32;
}

void tp_search_result_free(tp_search_result *r) {
    if (!r) return;
    free(r->rows);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- held-out scoring */

typedef struct {
    int32_t *tok, *tgt;  /* (n, T) held-out windows */
    int32_t *idx;        /* (n, T, k) the teacher's top-k */
    float *logp;
    int n, T, k;
} heldout;

static void heldout_free(heldout *h) {
    free(h->tok);
    free(h->tgt);
    free(h->idx);
    free(h->logp);
}

/* Mean CE over the counted targets and mean KL(teacher top-k + rest || model) over every position
 * of the held-out windows; with teacher set, fills h's top-k from m instead (KL then 0). */
static tp_status score(const tp_model *m, heldout *h, int teacher, double *ce, double *kd, double half[2]) {
    size_t T = (size_t)h->T, V = (size_t)m->cfg.vocab, k = (size_t)h->k;
    float *logits = malloc(T * V * sizeof(float));
    if (!logits) return tp_fail(TP_ERR_NOMEM, "search: out of memory for %zu x %zu logits", T, V);
    tp_kd_cfg kc = {TP_KD_FKL, 1.0f, 0, 0.5f};
    double sce = 0, skd = 0, hs[2] = {0, 0};
    size_t nce = 0, hn[2] = {0, 0};
    tp_status s = TP_OK;
    for (int w = 0; w < h->n && !s; w++) {
        const int32_t *tok = h->tok + (size_t)w * T, *tgt = h->tgt + (size_t)w * T;
        if ((s = tp_forward(m, tok, 1, (int)T, NULL, logits, 0))) break;
        int part = w >= h->n / 2; /* the two halves of the windows, for the split-half stability */
        for (size_t t = 0; t < T; t++) {
            if (tgt[t] < 0) continue;
            const float *row = logits + t * V;
            double nll = tp_kd_lse(row, V, 1.0f) - row[tgt[t]];
            sce += nll;
            nce++;
            hs[part] += nll;
            hn[part]++;
        }
        int32_t *ix = h->idx + (size_t)w * T * k;
        float *lp = h->logp + (size_t)w * T * k;
        if (teacher)
            for (size_t t = 0; t < T; t++) tp_kd_topk(logits + t * V, V, (int)k, 1.0f, ix + t * k, lp + t * k);
        else
            skd += tp_kd_rows_topk(&kc, logits, ix, lp, (int)k, T, V, 0.0f);
    }
    free(logits);
    *ce = nce ? sce / (double)nce : NAN;
    *kd = skd / ((double)h->n * (double)T);
    if (half)
        for (int i = 0; i < 2; i++) half[i] = hn[i] ? hs[i] / (double)hn[i] : NAN;
    return s;
}

static tp_status heldout_make(const tp_model *teacher, const tp_loader *L, int n, int k, heldout *h) {
    tp_loader_info li;
    tp_loader_get_info(L, &li);
    memset(h, 0, sizeof *h);
    if (li.n_val == 0)
        return tp_fail(TP_ERR_ARG, "search: the data has no held-out windows (val_frac %g); raise val_frac", li.val_frac);
    h->n = n < (int)li.n_val ? n : (int)li.n_val;
    h->T = li.T;
    h->k = k;
    size_t NT = (size_t)h->n * (size_t)h->T;
    h->tok = malloc(NT * sizeof(int32_t));
    h->tgt = malloc(NT * sizeof(int32_t));
    h->idx = malloc(NT * (size_t)k * sizeof(int32_t));
    h->logp = malloc(NT * (size_t)k * sizeof(float));
    if (!h->tok || !h->tgt || !h->idx || !h->logp) return tp_fail(TP_ERR_NOMEM, "search: out of memory");
    int got = 0;
    tp_status s = tp_loader_val(L, 0, h->n, h->tok, h->tgt, &got);
    if (s) return s;
    double ce, kd;
    return score(teacher, h, 1, &ce, &kd, NULL);
}

/* ---------------------------------------------------------------- ranks and files */

/* 1-based ranks of v (n) ascending, ties sharing their mean rank; NAN values last. */
static void ranks_of(const double *v, int n, double *rank) {
    for (int i = 0; i < n; i++) {
        double below = 0, same = 0;
        for (int j = 0; j < n; j++) {
            int vi = !isnan(v[i]), vj = !isnan(v[j]);
            if (vj && (!vi || v[j] < v[i])) below++;
            else if (vi == vj && (!vi || v[j] == v[i])) same++;
        }
        rank[i] = below + (same + 1) / 2.0;
    }
}

double tp_spearman(const double *a, const double *b, int n) {
    if (n < 2) return NAN;
    double *ra = malloc((size_t)n * sizeof(double)), *rb = malloc((size_t)n * sizeof(double));
    if (!ra || !rb) {
        free(ra);
        free(rb);
        return NAN;
    }
    ranks_of(a, n, ra);
    ranks_of(b, n, rb);
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) {
        ma += ra[i] / n;
        mb += rb[i] / n;
    }
    for (int i = 0; i < n; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    free(ra);
    free(rb);
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : NAN;
}

/* A score read back on resume: written with 17 digits, so the rerun ranks on the same bits
 * (cJSON's own printing keeps 15 digits when they read back within an epsilon). */
static void add_exact(cJSON *o, const char *k, double v) {
    char num[40];
    if (!isfinite(v)) return;
    snprintf(num, sizeof num, "%.17g", v);
    cJSON_AddRawToObject(o, k, num);
}

static cJSON *row_json(const tp_search_row *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "name", r->name);
    cJSON_AddNumberToObject(o, "hidden", r->shape.d_model);
    cJSON_AddNumberToObject(o, "ffn", r->shape.d_ff);
    cJSON_AddNumberToObject(o, "heads", r->shape.n_heads);
    cJSON_AddNumberToObject(o, "kv_heads", r->shape.n_kv_heads);
    cJSON_AddNumberToObject(o, "layers", r->shape.n_layers);
    cJSON_AddNumberToObject(o, "params", (double)r->n_params);
    cJSON_AddNumberToObject(o, "mem_bytes", r->mem_bytes);
    if (!isnan(r->loss0)) add_exact(o, "untrained_loss", r->loss0);
    if (!isnan(r->kd0)) add_exact(o, "untrained_kd", r->kd0);
    if (!isnan(r->loss0_half[0])) add_exact(o, "untrained_loss_half1", r->loss0_half[0]);
    if (!isnan(r->loss0_half[1])) add_exact(o, "untrained_loss_half2", r->loss0_half[1]);
    cJSON_AddNumberToObject(o, "untrained_rank", r->rank0);
    if (r->distilled) {
        add_exact(o, "kd", r->kd);
        add_exact(o, "loss", r->loss);
        cJSON_AddNumberToObject(o, "ppl", exp(r->loss));
        cJSON_AddNumberToObject(o, "kd_rank", r->rank);
        cJSON_AddNumberToObject(o, "distill_seconds", r->seconds);
    }
    return o;
}

static tp_status write_search_json(const tp_search_job *j, const tp_search_result *r) {
    cJSON *o = cJSON_CreateObject(), *rows = cJSON_CreateArray(), *set = cJSON_CreateObject();
    if (!o || !rows || !set) {
        cJSON_Delete(o);
        cJSON_Delete(rows);
        cJSON_Delete(set);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    cJSON_AddStringToObject(o, "format", "taper-search");
    cJSON_AddNumberToObject(o, "version", 1);
    cJSON_AddStringToObject(set, "model", j->model);
    cJSON_AddStringToObject(set, "scores", j->scores);
    cJSON_AddStringToObject(set, "data", j->data);
    if (j->grid.target_mem > 0) {
        cJSON_AddNumberToObject(set, "target_mem", j->grid.target_mem);
        cJSON_AddNumberToObject(set, "mem_ctx", j->grid.mem_ctx);
    } else {
        cJSON_AddNumberToObject(set, "target_params", (double)j->grid.target);
    }
    cJSON_AddNumberToObject(set, "tolerance", j->grid.tolerance);
    cJSON_AddNumberToObject(set, "candidates", j->candidates);
    cJSON_AddNumberToObject(set, "steps", j->steps);
    cJSON_AddNumberToObject(set, "seq", j->seq);
    cJSON_AddNumberToObject(set, "batch", j->batch);
    cJSON_AddNumberToObject(set, "lr", j->lr);
    cJSON_AddNumberToObject(set, "eval_windows", r->eval_windows);
    cJSON_AddNumberToObject(set, "val_frac", (double)(float)j->val_frac);
    cJSON_AddNumberToObject(set, "seed", (double)j->seed);
    cJSON_AddNumberToObject(set, "agg_pair", j->grid.agg_pair);
    cJSON_AddNumberToObject(set, "depth_rule", (double)j->grid.depth_rule);
    cJSON_AddNumberToObject(set, "topk", j->topk);
    cJSON_AddItemToObject(o, "settings", set);
    for (int i = 0; i < r->n_rows; i++) {
        cJSON *x = row_json(&r->rows[i]);
        if (x) cJSON_AddItemToArray(rows, x);
    }
    cJSON_AddItemToObject(o, "candidates", rows);
    cJSON_AddNumberToObject(o, "n_distilled", r->n_distilled);
    if (!isnan(r->spearman_kd)) cJSON_AddNumberToObject(o, "spearman_untrained_vs_kd", r->spearman_kd);
    if (!isnan(r->spearman_loss)) cJSON_AddNumberToObject(o, "spearman_untrained_vs_loss", r->spearman_loss);
    if (!isnan(r->split_half)) cJSON_AddNumberToObject(o, "untrained_split_half_spearman", r->split_half);
    if (r->best >= 0) cJSON_AddStringToObject(o, "best", r->rows[r->best].name);
    cJSON_AddNumberToObject(o, "teacher_windows", (double)r->teacher_windows);
    cJSON_AddNumberToObject(o, "stage1_seconds", r->stage1_seconds);
    cJSON_AddNumberToObject(o, "cache_seconds", r->cache_seconds);
    cJSON_AddNumberToObject(o, "stage2_seconds", r->stage2_seconds);
    char *p = tp_path_join(j->run_dir, "search.json");
    tp_status s = p ? tp_write_json_atomic(p, o) : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(p);
    cJSON_Delete(o);
    return s;
}

/* Stage-2 ranks and the correlations over the distilled rows. */
static void rank_distilled(tp_search_result *r) {
    int n = 0;
    double *a = malloc((size_t)r->n_rows * 3 * sizeof(double));
    if (!a) return;
    double *kd = a + r->n_rows, *lo = a + 2 * r->n_rows;
    for (int i = 0; i < r->n_rows; i++)
        if (r->rows[i].distilled) {
            a[n] = r->rows[i].loss0;
            kd[n] = r->rows[i].kd;
            lo[n] = r->rows[i].loss;
            n++;
        }
    r->n_distilled = n;
    r->best = -1;
    double bestv = INFINITY;
    for (int i = 0; i < r->n_rows; i++) {
        tp_search_row *x = &r->rows[i];
        if (!x->distilled) continue;
        x->rank = 1;
        for (int j = 0; j < r->n_rows; j++)
            if (r->rows[j].distilled && (r->rows[j].kd < x->kd || (r->rows[j].kd == x->kd && j < i))) x->rank++;
        if (x->kd < bestv) {
            bestv = x->kd;
            r->best = i;
        }
    }
    r->spearman_kd = tp_spearman(a, kd, n);
    r->spearman_loss = tp_spearman(a, lo, n);
    free(a);
}

/* The untrained scores of an earlier call of the same search (run_dir/search.json with the same
 * model, scores, data, windows and pruning rules, every candidate there): 1 when r's rows were
 * filled from it. Stage 1 is then not recomputed on resume. */
static int reuse_stage1(const tp_search_job *j, tp_search_result *r) {
    char *p = tp_path_join(j->run_dir, "search.json"), *text = NULL;
    if (!p || access(p, F_OK) != 0 || tp_read_file(p, &text, NULL) != TP_OK) {
        tp_clear_error();
        free(p);
        return 0;
    }
    free(p);
    cJSON *o = cJSON_Parse(text);
    free(text);
    const cJSON *set = cJSON_GetObjectItemCaseSensitive(o, "settings"), *rows = cJSON_GetObjectItemCaseSensitive(o, "candidates");
    const cJSON *sm = cJSON_GetObjectItemCaseSensitive(set, "model"), *ss = cJSON_GetObjectItemCaseSensitive(set, "scores");
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(set, "data");
    int ok = cJSON_IsString(sm) && cJSON_IsString(ss) && cJSON_IsString(sd) && !strcmp(sm->valuestring, j->model) &&
             !strcmp(ss->valuestring, j->scores) && !strcmp(sd->valuestring, j->data) &&
             tp_json_number(set, "seq") == j->seq && tp_json_number(set, "eval_windows") == r->eval_windows &&
             tp_json_number(set, "topk") == j->topk && tp_json_number(set, "val_frac") == (double)(float)j->val_frac &&
             tp_json_number(set, "seed") == (double)j->seed && tp_json_number(set, "agg_pair") == j->grid.agg_pair &&
             tp_json_number(set, "depth_rule") == (double)j->grid.depth_rule && cJSON_IsArray(rows);
    for (int i = 0; ok && i < r->n_rows; i++) {
        tp_search_row *x = &r->rows[i];
        const cJSON *found = NULL, *e;
        cJSON_ArrayForEach(e, rows) {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name");
            if (cJSON_IsString(n) && !strcmp(n->valuestring, x->name)) found = e;
        }
        double l = tp_json_number(found, "untrained_loss"), k = tp_json_number(found, "untrained_kd");
        double a = tp_json_number(found, "untrained_loss_half1"), b = tp_json_number(found, "untrained_loss_half2");
        ok = found && !isnan(l) && !isnan(k) && !isnan(a) && !isnan(b);
        if (ok) {
            x->loss0 = l;
            x->kd0 = k;
            x->loss0_half[0] = a;
            x->loss0_half[1] = b;
        }
    }
    cJSON_Delete(o);
    if (!ok)
        for (int i = 0; i < r->n_rows; i++)
            r->rows[i].loss0 = r->rows[i].kd0 = r->rows[i].loss0_half[0] = r->rows[i].loss0_half[1] = NAN;
    return ok;
}

static int cmp_row_loss0(const void *pa, const void *pb) {
    const tp_search_row *a = pa, *b = pb;
    if (isnan(a->loss0) || isnan(b->loss0)) return isnan(a->loss0) - isnan(b->loss0);
    return (a->loss0 > b->loss0) - (a->loss0 < b->loss0);
}

/* ---------------------------------------------------------------- stage 2, one candidate */

/* rm -r of a directory whose entries are files (a candidate's student, run and final). */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = tp_path_join(dir, e->d_name);
        if (p && unlink(p) != 0 && errno == EISDIR) remove_tree(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Only the leading candidate keeps its distilled model (its final folder). */
static void drop_other_finals(const tp_search_job *j, const tp_search_result *r) {
    for (int i = 0; i < r->n_rows; i++) {
        if (!r->rows[i].distilled || i == r->best) continue;
        char *p = tp_strfmt("%s/%s/final", j->run_dir, r->rows[i].name);
        if (p) remove_tree(p);
        free(p);
    }
}

static tp_status read_result(const char *path, tp_search_row *row) {
    char *text = NULL;
    tp_status s = tp_read_file(path, &text, NULL);
    if (s) return s;
    cJSON *o = cJSON_Parse(text);
    free(text);
    double kd = tp_json_number(o, "kd"), lo = tp_json_number(o, "loss"), sec = tp_json_number(o, "distill_seconds");
    cJSON_Delete(o);
    if (isnan(kd) || isnan(lo)) return tp_fail(TP_ERR_FORMAT, "%s: no kd / loss (delete it to redo the candidate)", path);
    row->kd = kd;
    row->loss = lo;
    row->seconds = isnan(sec) ? 0 : sec;
    row->distilled = 1;
    return TP_OK;
}

static tp_status distill_one(const tp_search_job *j, const tp_model *m, const tp_importance *imp, const char *cache,
                             heldout *h, tp_search_row *row, int *stopped) {
    char *dir = tp_path_join(j->run_dir, row->name);
    char *student = dir ? tp_path_join(dir, "student") : NULL, *run = dir ? tp_path_join(dir, "run") : NULL;
    char *fin = dir ? tp_path_join(dir, "final") : NULL, *res = dir ? tp_path_join(dir, "result.json") : NULL;
    tp_status s = dir && student && run && fin && res ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_model *pm = NULL, *fm = NULL;
    tp_prune_plan *p = NULL;
    if (!s && access(res, F_OK) == 0) { /* finished earlier */
        s = read_result(res, row);
        goto out;
    }
    if (!s && tp_mkdir_p(dir) != 0) s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
    char *cfgp = s ? NULL : tp_path_join(student, "config.json");
    if (!s && access(cfgp, F_OK) != 0) {
        s = tp_prune_plan_make(&m->cfg, imp, j->grid.agg_pair, &row->shape, j->grid.depth_rule, NULL, 0, &p);
        if (!s) s = tp_prune_apply(m, p, &pm);
        if (!s) s = tp_model_save_hf(pm, student, "F32");
        if (!s) {
            char *pp = tp_path_join(student, "prune_plan.json");
            s = pp ? tp_prune_plan_save(p, pp) : tp_fail(TP_ERR_NOMEM, "out of memory");
            free(pp);
        }
    }
    free(cfgp);
    if (!s) {
        tp_train_job tj;
        tp_train_job_default(&tj);
        tj.model = student;
        tj.data = j->data;
        tj.run_dir = run;
        tj.steps = j->steps;
        tj.seq = j->seq;
        tj.batch = j->batch;
        tj.accum = j->accum;
        tj.warmup = j->warmup;
        tj.lr = j->lr;
        tj.min_lr = j->min_lr;
        tj.seed = j->seed;
        tj.val_frac = (float)j->val_frac;
        tj.val_every = -1; /* scored below, on the search's own held-out windows */
        tj.ckpt_every = 50;
        tj.keep = 1;
        tj.resume = 1;
        tj.quiet = 1;
        tj.export_hf = fin;
        tj.stop = j->stop;
        tp_distill_job dj;
        tp_distill_job_default(&dj);
        dj.teacher_cache = cache;
        dj.topk = j->topk;
        tp_train_job_result tr;
        double t0 = tp_time_s();
        s = tp_distill_run(&tj, &dj, &tr);
        if (!s && tr.r.stopped) *stopped = 1;
        row->seconds = tr.r.elapsed_s > 0 ? tr.r.elapsed_s : tp_time_s() - t0;
        tp_train_job_result_free(&tr);
        if (s) tp_fail_ctx(s, "%s: distillation: ", row->name);
    }
    if (!s && !*stopped) {
        if ((s = tp_model_load_hf(fin, &fm))) goto out;
        if ((s = score(fm, h, 0, &row->loss, &row->kd, NULL))) goto out;
        row->distilled = 1;
        cJSON *o = row_json(row);
        s = o ? tp_write_json_atomic(res, o) : tp_fail(TP_ERR_NOMEM, "out of memory");
        cJSON_Delete(o);
        /* result.json holds what the search needs: the pruned student and the run's checkpoints
         * (weights + AdamW, 20 bytes per parameter) go; final stays while the candidate leads */
        if (!s) {
            remove_tree(student);
            remove_tree(run);
        }
    }
out:
    tp_model_free(pm);
    tp_model_free(fm);
    tp_prune_plan_free(p);
    free(dir);
    free(student);
    free(run);
    free(fin);
    free(res);
    return s;
}

/* ---------------------------------------------------------------- the job */

tp_status tp_search_run(const tp_search_job *j, tp_search_result *r) {
    memset(r, 0, sizeof *r);
    r->best = -1;
    r->spearman_kd = r->spearman_loss = r->split_half = NAN;
    if (!j->model || !j->scores || !j->data || !j->run_dir)
        return tp_fail(TP_ERR_ARG, "search: model, scores, data and run_dir are required");
    if (j->candidates < 1 || j->steps < 1 || j->seq < 2 || j->batch < 1 || j->eval_windows < 1 || j->topk < 1)
        return tp_fail(TP_ERR_ARG, "search: candidates, steps, batch, eval_windows and topk must be >= 1, seq >= 2");
    if (tp_mkdir_p(j->run_dir) != 0)
        return tp_fail(TP_ERR_IO, "%s: cannot create the search directory: %s", j->run_dir, strerror(errno));
    tp_model *m = NULL;
    tp_importance *imp = NULL;
    tp_dataset *ds = NULL;
    tp_loader *L = NULL;
    tp_tcache *tc = NULL;
    tp_prune_candidate *cands = NULL;
    heldout h;
    memset(&h, 0, sizeof h);
    char *cache = j->teacher_cache ? strdup(j->teacher_cache) : tp_path_join(j->run_dir, "teacher.tkc");
    int n_c = 0, n_total = 0;
    tp_status s = cache ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s) s = tp_importance_load(j->scores, &imp);
    if (!s) s = tp_model_load(j->model, &m);
    if (!s) {
        tp_search_opts o = j->grid;
        o.eval_ids = NULL; /* enumerate only: the candidates are scored here, on the data's windows */
        o.max_candidates = j->grid.max_candidates;
        s = tp_prune_search(m, imp, &o, &cands, &n_c, &n_total);
    }
    if (!s) {
        r->rows = calloc((size_t)n_c, sizeof *r->rows);
        if (!r->rows) s = tp_fail(TP_ERR_NOMEM, "out of memory");
        r->n_rows = n_c;
        r->n_qualifying = n_total;
        for (int i = 0; !s && i < n_c; i++) {
            tp_search_row *x = &r->rows[i];
            x->shape = cands[i].shape;
            x->n_params = cands[i].n_params;
            x->mem_bytes = cands[i].mem_bytes;
            x->loss0 = x->kd0 = x->loss = x->kd = x->loss0_half[0] = x->loss0_half[1] = NAN;
            /* named by shape, so a rerun with other settings never mixes candidates up */
            snprintf(x->name, sizeof x->name, "cand-h%d-f%d-q%d-kv%d-l%d", x->shape.d_model, x->shape.d_ff,
                     x->shape.n_heads, x->shape.n_kv_heads, x->shape.n_layers);
        }
    }
    if (!s) s = tp_dataset_open(j->data, &ds);
    /* val_frac as the distillation job stores it (a float), so the cache matches its loader */
    if (!s) s = tp_loader_open(ds, j->seq, (double)(float)j->val_frac, j->seed, &L);
    /* stage 1: every candidate untrained, on the held-out windows */
    double t0 = tp_time_s();
    if (!s && !j->list_only) {
        s = heldout_make(m, L, j->eval_windows, j->topk, &h);
        r->teacher_windows += (uint64_t)h.n;
        r->eval_windows = h.n;
        int reused = !s && reuse_stage1(j, r);
        r->stage1_reused = reused;
        if (reused && !j->quiet)
            tp_log(TP_LOG_INFO, "search: the untrained scores of the %d candidates come from the earlier run's "
                                "search.json (same model, scores, data and windows)", n_c);
        tp_progress prog;
        tp_progress_begin(&prog, "search: untrained", reused ? 0 : (double)n_c, "cand");
        if (j->quiet || reused) prog.enabled = 0;
        for (int i = 0; !s && !reused && i < n_c; i++) {
            if (j->stop && *j->stop) { /* stage 1 is recomputed by the next call */
                r->stopped = 1;
                break;
            }
            tp_prune_plan *p = NULL;
            tp_model *pm = NULL;
            s = tp_prune_plan_make(&m->cfg, imp, j->grid.agg_pair, &r->rows[i].shape, j->grid.depth_rule, NULL, 0, &p);
            if (!s) s = tp_prune_apply(m, p, &pm);
            if (!s) s = score(pm, &h, 0, &r->rows[i].loss0, &r->rows[i].kd0, r->rows[i].loss0_half);
            tp_model_free(pm);
            tp_prune_plan_free(p);
            tp_progress_update(&prog, (double)(i + 1));
        }
        tp_progress_end(&prog);
        /* how stable the untrained ranking is: the rankings by the two halves of the windows */
        if (!s && !r->stopped) {
            double *a = malloc(2 * (size_t)(n_c > 0 ? n_c : 1) * sizeof(double));
            if (a) {
                for (int i = 0; i < n_c; i++) {
                    a[i] = r->rows[i].loss0_half[0];
                    a[n_c + i] = r->rows[i].loss0_half[1];
                }
                r->split_half = tp_spearman(a, a + n_c, n_c);
            }
            free(a);
        }
    }
    r->stage1_seconds = tp_time_s() - t0;
    if (!s) {
        qsort(r->rows, (size_t)r->n_rows, sizeof *r->rows, cmp_row_loss0);
        for (int i = 0; i < r->n_rows; i++) r->rows[i].rank0 = i + 1;
        s = write_search_json(j, r);
    }
    if (s || j->list_only || r->stopped) goto out;
    /* the teacher cache: built once (resumes an interrupted build), reused by every candidate */
    t0 = tp_time_s();
    if (access(cache, F_OK) != 0) {
        tp_tcache_build_opts bo;
        tp_tcache_build_defaults(&bo);
        bo.K = j->topk;
        bo.quiet = j->quiet;
        bo.stop = j->stop;
        tp_tcache_build_result br;
        s = tp_tcache_build(m, L, cache, &bo, &br);
        r->teacher_windows += br.computed;
        if (!s && !br.complete) r->stopped = 1;
    }
    if (!s && !r->stopped) s = tp_tcache_open(cache, &tc);
    if (!s && !r->stopped) s = tp_tcache_check_data(tc, L);
    tp_tcache_close(tc);
    r->cache_seconds = tp_time_s() - t0;
    /* stage 2: the best K by untrained loss, each distilled, then scored */
    t0 = tp_time_s();
    int K = j->candidates < r->n_rows ? j->candidates : r->n_rows;
    for (int i = 0; !s && !r->stopped && i < K; i++) {
        if (!j->quiet)
            tp_log(TP_LOG_INFO, "search: candidate %d of %d: %s (%zu params, untrained loss %.4f)", i + 1, K,
                   r->rows[i].name, r->rows[i].n_params, r->rows[i].loss0);
        int stopped = 0;
        s = distill_one(j, m, imp, cache, &h, &r->rows[i], &stopped);
        if (stopped) r->stopped = 1;
        rank_distilled(r);
        if (!s) drop_other_finals(j, r);
        if (!s) s = write_search_json(j, r);
    }
    r->stage2_seconds = tp_time_s() - t0;
out:
    if (!s && !j->list_only && r->n_distilled + r->stopped > 0) {
        rank_distilled(r);
        s = write_search_json(j, r);
    }
    heldout_free(&h);
    free(cands);
    free(cache);
    tp_loader_free(L);
    tp_dataset_close(ds);
    tp_model_free(m);
    tp_importance_free(imp);
    return s;
}
