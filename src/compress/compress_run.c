/* tp_compress_run: the recipe's stages as C calls into a resumable run directory, and
 * tp_compress_report: the run's numbers as JSON (report.json). The settings are recipe.c's; each
 * stage's work is its module's job function (tp_sdg_job_run, tp_train_job_run, tp_ppl_job_run,
 * tp_eval_job_run, tp_importance_job_run, tp_prune_job_run, tp_distill_run). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "taper/compress.h"
#include "taper/distill.h"
#include "taper/eval.h"
#include "taper/model.h"
#include "taper/recipe.h"
#include "taper/sdg.h"
#include "taper/tasks.h"
#include "taper/trainer.h"
#include "taper/util.h"
#include "core/internal.h"

typedef struct {
    const tp_recipe *r;
    const char *out;             /* the run directory */
    const tp_compress_hooks *h;  /* never NULL (defaults when the caller gave none) */
    char *data, *calib;          /* distillation shards, calibration text */
    char *teacher_eff;           /* the teacher every stage after correction uses */
    int stopped;                 /* a training stage stopped on request */
    tp_compress_result *res;     /* NULL, or where the failing stage is named */
} run;


static int exists(const char *p) { return p && access(p, F_OK) == 0; }

/* ---- stages: resume markers, the runner, isolation ---- */

static int stage_done(const run *x, const char *stage) {
    char *p = tp_strfmt("%s/.done-%s", x->out, stage);
    int d = exists(p);
    free(p);
    return d;
}

static tp_status mark_done(const run *x, const char *stage) {
    char *p = tp_strfmt("%s/.done-%s", x->out, stage);
    tp_status s = p ? tp_write_file_atomic(p, "", 0) : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(p);
    return s;
}

typedef tp_status (*stage_fn)(run *x, const void *arg);

/* Runs fn in a child process: its status, stop flag and message come back through a pipe. The
 * parent runs no parallel region before forking, so the child's OpenMP runtime starts clean. */
static tp_status in_child(run *x, const char *name, stage_fn fn, const void *arg) {
    int fd[2];
    if (pipe(fd)) return tp_fail(TP_ERR_IO, "stage %s: pipe: %s", name, strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]), close(fd[1]);
        return tp_fail(TP_ERR_IO, "stage %s: fork: %s", name, strerror(errno));
    }
    if (pid == 0) {
        close(fd[0]);
        tp_status s = fn(x, arg);
        unsigned char head[2] = {(unsigned char)s, (unsigned char)x->stopped};
        const char *msg = s ? tp_errmsg() : "";
        ssize_t w = write(fd[1], head, 2);
        if (w == 2 && *msg) w = write(fd[1], msg, strlen(msg));
        (void)w;
        close(fd[1]);
        _exit(s ? 1 : 0);
    }
    close(fd[1]);
    char buf[4096];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd[0], buf + got, sizeof buf - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
        if (got == sizeof buf - 1) break;
    }
    close(fd[0]);
    buf[got] = 0;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(st)) return tp_fail(TP_ERR_IO, "stage %s: the child process was killed by signal %d", name, WTERMSIG(st));
    if (got >= 2) {
        x->stopped = buf[1];
        if (buf[0]) return tp_fail((tp_status)(unsigned char)buf[0], "%s", buf + 2);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) || got < 2)
        return tp_fail(TP_ERR_IO, "stage %s: the child process ended with status %d", name, WEXITSTATUS(st));
    return TP_OK;
}

static void notify(const run *x, const char *name, tp_stage_event ev, double sec) {
    if (x->h->on_stage) x->h->on_stage(x->h->user, name, ev, sec);
}

/* Runs stage name unless done earlier; marks it done when it finished (not when it stopped). */
static tp_status stage(run *x, const char *name, const char *what, stage_fn fn, const void *arg) {
    if (stage_done(x, name)) {
        tp_log(TP_LOG_INFO, "compress: [%s] done earlier, skipped", name);
        notify(x, name, TP_STAGE_SKIPPED, 0);
        return TP_OK;
    }
    if (x->stopped || (x->h->stop && *x->h->stop)) {
        x->stopped = 1;
        return TP_OK;
    }
    tp_log(TP_LOG_INFO, "\ncompress: [%s] running: %s", name, what ? what : "");
    notify(x, name, TP_STAGE_BEGIN, 0);
    double t0 = tp_time_s();
    tp_status s = x->h->isolate ? in_child(x, name, fn, arg) : fn(x, arg);
    double sec = tp_time_s() - t0;
    if (s) {
        notify(x, name, TP_STAGE_FAILED, sec);
        if (x->res) snprintf(x->res->failed_stage, sizeof x->res->failed_stage, "%s", name);
        return tp_fail_ctx(s, "stage %s failed (fix the cause and run the same recipe again to resume): ", name);
    }
    if (x->stopped) return TP_OK;
    if ((s = mark_done(x, name))) return s;
    notify(x, name, TP_STAGE_DONE, sec);
    return TP_OK;
}

/* ---- the stages ---- */

static tp_status do_sdg(run *x, const void *arg) {
    (void)arg;
    tp_sdg_job j;
    tp_sdg_job_default(&j);
    j.teacher = x->r->teacher;
    j.out_dir = x->data;
    j.samples = x->r->sdg_samples;
    j.max_tokens = x->r->sdg_tokens;
    j.stop = x->h->stop; /* a stop keeps the complete parts; the rerun resumes after them */
    tp_sdg_job_result res;
    tp_status s = tp_sdg_job_run(&j, &res);
    if (!s && res.stopped) x->stopped = 1;
    tp_sdg_job_result_free(&res);
    return s;
}

/* The training settings every training stage shares: the recipe's batch shape and checkpoints,
 * a cosine to a tenth of the peak, validation ten times per run, resume. */
static void train_job(const run *x, tp_train_job *j, const char *model, const char *run_dir, int steps, float lr,
                      int warmup, const char *export_hf) {
    const tp_recipe *r = x->r;
    tp_train_job_default(j);
    j->model = model;
    j->data = x->data;
    j->run_dir = run_dir;
    j->steps = steps;
    j->seq = r->seq;
    j->batch = r->batch;
    j->accum = r->accum;
    j->lr = lr;
    j->min_lr = lr / 10; /* in float, as the recipe holds lr (the argv round trip of old rounded it to 6 digits) */
    j->warmup = warmup;
    j->ckpt_every = r->ckpt_every;
    j->val_every = steps >= 10 ? steps / 10 : 1;
    j->resume = 1;
    j->export_hf = export_hf;
    j->precision = r->precision;
    j->stop = x->h->stop;
}

static tp_status do_correct(run *x, const void *arg) {
    (void)arg;
    char *rd = tp_strfmt("%s/correct", x->out);
    if (!rd) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_train_job j;
    train_job(x, &j, x->r->teacher, rd, x->r->correct_steps, x->r->correct_lr, x->r->correct_warmup, x->teacher_eff);
    tp_train_job_result res;
    tp_status s = tp_train_job_run(&j, &res);
    if (!s && res.r.stopped) x->stopped = 1;
    tp_train_job_result_free(&res);
    free(rd);
    return s;
}

typedef struct {
    const char *name, *model;
} eval_arg;

static tp_status do_ppl(run *x, const void *arg) {
    const eval_arg *e = arg;
    char *json = tp_strfmt("%s/%s-ppl.json", x->out, e->name);
    if (!json) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_ppl_job j;
    tp_ppl_job_default(&j);
    j.model = e->model;
    j.data = x->r->eval_text;
    j.ctx = x->r->eval_ctx;
    j.max_chunks = (size_t)x->r->eval_chunks;
    j.json_path = json;
    tp_ppl_job_result res;
    tp_status s = tp_ppl_job_run(&j, &res);
    free(json);
    return s;
}

static tp_status do_tasks(run *x, const void *arg) {
    const eval_arg *e = arg;
    char *json = tp_strfmt("%s/%s-tasks.json", x->out, e->name);
    if (!json) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_eval_job j;
    tp_eval_job_default(&j);
    j.model = e->model;
    j.tasks = x->r->tasks;
    j.limit = x->r->task_limit;
    j.data_dir = x->r->data_dir ? x->r->data_dir : x->h->data_dir;
    j.json_path = json;
    tp_eval_job_result res;
    tp_status s = tp_eval_job_run(&j, &res);
    tp_eval_job_result_free(&res);
    free(json);
    return s;
}

/* Perplexity (and tasks, when the recipe has some) of model, as stages <name>-ppl, <name>-tasks. */
static tp_status eval_stages(run *x, const char *name, const char *model) {
    eval_arg e = {name, model};
    char st[256], what[4200];
    snprintf(st, sizeof st, "%s-ppl", name);
    snprintf(what, sizeof what, "perplexity of %s on %s", model, x->r->eval_text);
    tp_status s = stage(x, st, what, do_ppl, &e);
    if (s || !x->r->tasks || !*x->r->tasks) return s;
    snprintf(st, sizeof st, "%s-tasks", name);
    snprintf(what, sizeof what, "tasks %s of %s", x->r->tasks, model);
    return stage(x, st, what, do_tasks, &e);
}

typedef struct {
    int round;
    const char *model; /* the model this round prunes */
    size_t target;
} round_arg;

static tp_status do_importance(run *x, const void *arg) {
    const round_arg *a = arg;
    const tp_recipe *r = x->r;
    char *name = tp_recipe_round_name(r, "importance", a->round, ".json"), *out = name ? tp_path_join(x->out, name) : NULL;
    tp_status s = out ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s) {
        tp_importance_job j;
        tp_importance_job_default(&j);
        j.model = a->model;
        j.data = x->calib;
        j.out = out;
        j.samples = r->calib_samples;
        j.seq_len = r->calib_seq;
        j.depth_samples = r->depth_samples < r->calib_samples ? r->depth_samples : r->calib_samples;
        s = tp_importance_job_run(&j, NULL);
    }
    free(name);
    free(out);
    return s;
}

static tp_status do_prune(run *x, const void *arg) {
    const round_arg *a = arg;
    const tp_recipe *r = x->r;
    char *imp = tp_recipe_round_name(r, "importance", a->round, ".json"), *dir = tp_recipe_round_name(r, "pruned", a->round, ""),
         *st = tp_recipe_round_name(r, "prune", a->round, ".json");
    char *scores = imp ? tp_path_join(x->out, imp) : NULL, *out = dir ? tp_path_join(x->out, dir) : NULL,
         *json = st ? tp_path_join(x->out, st) : NULL;
    tp_status s = scores && out && json ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_prune_job j;
    tp_prune_job_default(&j);
    j.model = a->model;
    j.scores = scores;
    j.target_params = a->target;
    j.tolerance = r->tolerance;
    j.data = x->calib;
    j.eval_samples = 8;
    j.agg = r->agg;
    j.out = out;
    j.json_path = json;
    if (!s && strcmp(r->axes, "all")) {
        tp_config c;
        if (!(s = tp_config_load(a->model, &c))) {
            if (!strcmp(r->axes, "width")) {
                j.layers = c.n_layers;
            } else {
                j.hidden = c.d_model;
                j.ffn = c.d_ff;
                j.heads = c.n_heads;
                j.kv_heads = c.n_kv_heads;
            }
        }
    }
    if (!s && !strcmp(r->search, "short-kd")) { /* the shape from a short distillation of each candidate */
        char *sn = tp_recipe_round_name(r, "search", a->round, "");
        char *sdir = sn ? tp_path_join(x->out, sn) : NULL;
        tp_search_job sj;
        tp_search_job_default(&sj);
        sj.model = a->model;
        sj.scores = scores;
        sj.data = x->data;
        sj.run_dir = sdir;
        sj.grid.target = a->target;
        sj.grid.tolerance = r->tolerance;
        sj.grid.fixed = (tp_prune_shape){j.hidden, j.ffn, j.heads, j.kv_heads, j.layers};
        if (r->agg) tp_agg_pair_parse(r->agg, &sj.grid.agg_pair); /* checked by tp_recipe_validate */
        sj.candidates = r->candidates;
        sj.steps = r->search_steps;
        sj.seq = r->seq;
        sj.batch = r->batch;
        sj.accum = r->accum;
        sj.lr = r->lr;
        sj.min_lr = r->lr / 10;
        sj.warmup = r->warmup;
        sj.topk = r->topk > 0 ? r->topk : 32;
        tp_search_result sr;
        s = sdir ? tp_search_run(&sj, &sr) : tp_fail(TP_ERR_NOMEM, "out of memory");
        if (!s && sr.stopped) s = tp_fail(TP_ERR_ARG, "the search stopped on request; run again to continue it");
        if (!s && sr.best < 0) s = tp_fail(TP_ERR_ARG, "the search distilled no candidate");
        if (!s) {
            const tp_prune_shape *b = &sr.rows[sr.best].shape;
            tp_log(TP_LOG_INFO, "compress: search: %s ranks first after %d steps (of %d distilled; Spearman untrained "
                                "vs distilled %.2f)", sr.rows[sr.best].name, r->search_steps, sr.n_distilled,
                   sr.spearman_kd);
            j.target_params = 0;
            j.hidden = b->d_model;
            j.ffn = b->d_ff;
            j.heads = b->n_heads;
            j.kv_heads = b->n_kv_heads;
            j.layers = b->n_layers;
        }
        tp_search_result_free(&sr);
        free(sn);
        free(sdir);
    }
    if (!s) {
        tp_prune_job_result res;
        s = tp_prune_job_run(&j, &res);
        tp_prune_job_result_free(&res);
    }
    free(imp), free(dir), free(st), free(scores), free(out), free(json);
    return s;
}

/* Round r's plan relative to the original teacher's shape: round 1's own plan, later rounds'
 * RUN/pruned-r/teacher_plan.json. */
static char *teacher_plan_path(const run *x, int round) {
    return round == 1 ? tp_strfmt("%s/%s/prune_plan.json", x->out, x->r->iterate == 1 ? "pruned" : "pruned-1")
                      : tp_strfmt("%s/pruned-%d/teacher_plan.json", x->out, round);
}

/* Writes round r's plan relative to the teacher from round r-1's and round r's own. */
static tp_status write_teacher_plan(const run *x, int round) {
    char *prev = teacher_plan_path(x, round - 1), *own = tp_strfmt("%s/pruned-%d/prune_plan.json", x->out, round),
         *dst = teacher_plan_path(x, round);
    tp_prune_plan *p1 = NULL, *p2 = NULL, *c = NULL;
    tp_status s = (!prev || !own || !dst) ? tp_fail(TP_ERR_NOMEM, "out of memory") : TP_OK;
    if (!s) s = tp_prune_plan_load(prev, &p1);
    if (!s) s = tp_prune_plan_load(own, &p2);
    if (!s) s = tp_prune_plan_compose(p1, p2, &c);
    if (!s) s = tp_prune_plan_save(c, dst);
    tp_prune_plan_free(p1), tp_prune_plan_free(p2), tp_prune_plan_free(c);
    free(prev), free(own), free(dst);
    return s;
}

static tp_status do_distill(run *x, const void *arg) {
    const round_arg *a = arg;
    const tp_recipe *r = x->r;
    int prev = !strcmp(r->iterate_teacher, "prev");
    char *st = tp_recipe_round_name(r, "distill", a->round, ""), *pn = tp_recipe_round_name(r, "pruned", a->round, ""),
         *sd = tp_recipe_student_dir(r, a->round);
    char *rd = st ? tp_path_join(x->out, st) : NULL, *pruned = pn ? tp_path_join(x->out, pn) : NULL,
         *student = sd ? tp_path_join(x->out, sd) : NULL, *plan = NULL;
    tp_status s = rd && pruned && student ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    /* a later round's student distilled from the original teacher maps onto it through the
     * composed plan; from the model it was cut from, its own plan is the right one */
    if (!s && a->round > 1 && !prev) {
        s = write_teacher_plan(x, a->round);
        plan = teacher_plan_path(x, a->round);
    } else if (!s) {
        plan = tp_strfmt("%s/prune_plan.json", pruned);
    }
    if (!s && !plan) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s) {
        tp_train_job j;
        train_job(x, &j, pruned, rd, r->steps, r->lr, r->warmup, student);
        tp_distill_job d;
        tp_distill_job_default(&d);
        d.teacher = prev ? a->model : x->teacher_eff;
        d.kd = r->kd;
        d.tau = r->tau;
        d.tau2 = r->tau2;
        d.topk = r->topk;
        d.ce_weight = r->ce_weight;
        d.inter = r->inter;
        d.alpha = r->alpha;
        d.emb_loss = r->emb_loss;
        d.plan = plan;
        tp_train_job_result res;
        s = tp_distill_run(&j, &d, &res);
        if (!s && res.r.stopped) x->stopped = 1;
        tp_train_job_result_free(&res);
    }
    free(st), free(pn), free(sd), free(rd), free(pruned), free(student), free(plan);
    return s;
}

/* ---- the run ---- */

/* Keeps RUN_DIR/recipe.json: written on the first run, compared on every later one. */
static tp_status check_recipe(const run *x) {
    cJSON *cur = tp_recipe_to_json(x->r);
    char *path = tp_path_join(x->out, "recipe.json"), *text = NULL;
    tp_status s = cur && path ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s && access(path, F_OK) == 0 && !(s = tp_read_file(path, &text, NULL))) {
        cJSON *old = cJSON_Parse(text);
        char diff[4096];
        int nd = cJSON_IsObject(old) ? tp_recipe_diff(old, cur, diff, sizeof diff) : -1;
        if (!old && tp_json_valid(text, strlen(text))) nd = 0, s = tp_fail(TP_ERR_NOMEM, "%s: out of memory", path);
        if (nd && !x->h->force)
            s = tp_fail(TP_ERR_ARG, "%s %s%s\nA resumed run would mix them. Use the stored settings (recipe %s), "
                                    "another run directory, or force to go on with the new ones (finished stages are "
                                    "kept).",
                        path, nd < 0 ? "is not valid JSON." : "holds other settings than this run's:", nd < 0 ? "" : diff,
                        path);
        else if (nd)
            tp_log(TP_LOG_NOTE, "compress: force: settings differ from %s:%s\n(finished stages are kept; recipe.json "
                                "now holds the new settings)", path, nd > 0 ? diff : " (it was not valid JSON)");
        cJSON_Delete(old);
    }
    if (!s) s = tp_write_json_atomic(path, cur);
    cJSON_Delete(cur);
    free(text);
    free(path);
    return s;
}

static tp_status run_rounds(run *x, size_t p0) {
    const tp_recipe *r = x->r;
    tp_status s = TP_OK;
    for (int k = 1; !s && k <= r->iterate && !x->stopped; k++) {
        char *model = k == 1 ? strdup(x->teacher_eff) : tp_strfmt("%s/student-%d", x->out, k - 1);
        char *pn = tp_recipe_round_name(r, "pruned", k, ""), *sn = tp_recipe_round_name(r, "student", k, ""),
             *sd = tp_recipe_student_dir(r, k), *ist = tp_recipe_round_name(r, "importance", k, ""),
             *pst = tp_recipe_round_name(r, "prune", k, ""), *dst = tp_recipe_round_name(r, "distill", k, "");
        char *pruned = pn ? tp_path_join(x->out, pn) : NULL, *student = sd ? tp_path_join(x->out, sd) : NULL;
        if (!model || !pn || !sn || !sd || !ist || !pst || !dst || !pruned || !student)
            s = tp_fail(TP_ERR_NOMEM, "out of memory");
        round_arg a = {k, model, tp_recipe_round_target(r, p0, k)};
        char what[4400];
        if (!s && r->iterate > 1)
            tp_log(TP_LOG_INFO, "\ncompress: round %d of %d: %s -> %zu parameters", k, r->iterate, model, a.target);
        if (!s) {
            snprintf(what, sizeof what, "scores of %s on %d x %d tokens of %s", model, r->calib_samples, r->calib_seq,
                     x->calib);
            s = stage(x, ist, what, do_importance, &a);
        }
        if (!s) {
            snprintf(what, sizeof what, "%s to %zu parameters (axes %s) -> %s", model, a.target, r->axes, pruned);
            s = stage(x, pst, what, do_prune, &a);
        }
        if (!s) s = eval_stages(x, pn, pruned);
        if (!s) {
            char *plan = k > 1 && strcmp(r->iterate_teacher, "prev") ? teacher_plan_path(x, k)
                                                                       : tp_strfmt("%s/prune_plan.json", pruned);
            snprintf(what, sizeof what, "%s from %s, %d steps, plan %s -> %s", pruned,
                     strcmp(r->iterate_teacher, "prev") ? x->teacher_eff : model, r->steps, plan ? plan : "", student);
            free(plan);
            s = stage(x, dst, what, do_distill, &a);
        }
        if (!s) s = eval_stages(x, sn, student);
        free(model), free(pn), free(sn), free(sd), free(ist), free(pst), free(dst), free(pruned), free(student);
    }
    return s;
}

tp_status tp_compress_run(const tp_recipe *r, const char *run_dir, const tp_compress_hooks *hooks,
                          tp_compress_result *res) {
    static const tp_compress_hooks none = {0};
    double t0 = tp_time_s();
    if (res) memset(res, 0, sizeof *res);
    tp_status s = tp_recipe_validate(r);
    if (s) return s;
    if (!r->tasks) return tp_fail(TP_ERR_ARG, "tasks is unset (tp_recipe_finalize fills it)");
    run x = {.r = r, .out = run_dir, .h = hooks ? hooks : &none, .res = res};
    size_t p0 = 0;
    tp_config c;
    if ((s = tp_config_load(r->teacher, &c))) return tp_fail_ctx(s, "teacher: ");
    p0 = tp_config_n_params(&c);
    if (r->iterate > 1) {
        if (r->target_params >= p0)
            return tp_fail(TP_ERR_ARG, "target-params %zu is not below the teacher's %zu parameters", r->target_params,
                           p0);
        char line[1024];
        size_t u = (size_t)snprintf(line, sizeof line, "compress: %d rounds, parameter targets", r->iterate);
        for (int k = 1; k <= r->iterate && u < sizeof line; k++)
            u += (size_t)snprintf(line + u, sizeof line - u, " %zu", tp_recipe_round_target(r, p0, k));
        tp_log(TP_LOG_INFO, "%s (teacher %zu)", line, p0);
    }
    char *logs = tp_path_join(run_dir, "logs");
    if (!logs || tp_mkdir_p(run_dir) || tp_mkdir_p(logs))
        s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", run_dir, strerror(errno));
    free(logs);
    if (!s) s = check_recipe(&x);
    if (s) return s;
#ifdef _OPENMP
    if (r->threads > 0) omp_set_num_threads(r->threads);
#endif
    x.data = r->data ? strdup(r->data) : tp_strfmt("%s/sdg", run_dir);
    x.calib = r->calib ? strdup(r->calib) : tp_strfmt("%s/sdg/samples.jsonl", run_dir);
    x.teacher_eff = r->correct_steps > 0 ? tp_strfmt("%s/teacher-corrected", run_dir) : strdup(r->teacher);
    if (!x.data || !x.calib || !x.teacher_eff) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    char what[4400];
    if (!s && !r->data) {
        snprintf(what, sizeof what, "%d samples of up to %d tokens from %s -> %s", r->sdg_samples, r->sdg_tokens,
                 r->teacher, x.data);
        s = stage(&x, "sdg", what, do_sdg, NULL);
    }
    if (!s && r->correct_steps > 0) {
        snprintf(what, sizeof what, "%s trained %d steps on %s -> %s", r->teacher, r->correct_steps, x.data,
                 x.teacher_eff);
        s = stage(&x, "correct", what, do_correct, NULL);
    }
    if (!s) s = eval_stages(&x, "teacher", r->teacher);
    if (!s && r->correct_steps > 0) s = eval_stages(&x, "corrected", x.teacher_eff);
    if (!s) s = run_rounds(&x, p0);
    if (!s && !x.stopped) {
        cJSON *rep = NULL;
        char *p = tp_path_join(run_dir, "report.json");
        s = p ? tp_compress_report(r, run_dir, &rep) : tp_fail(TP_ERR_NOMEM, "out of memory");
        if (!s) s = tp_write_json_atomic(p, rep);
        cJSON_Delete(rep);
        free(p);
    }
    if (res) {
        res->stopped = x.stopped;
        res->teacher_params = p0;
        res->seconds = tp_time_s() - t0;
    }
    free(x.data);
    free(x.calib);
    free(x.teacher_eff);
    return s;
}

/* ---- the report ---- */



/* perplexity under the chunks protocol from a <name>-ppl.json */
static double ppl_of(const char *dir, const char *name) {
    char f[512];
    snprintf(f, sizeof f, "%s-ppl.json", name);
    cJSON *j = tp_json_load_optional(dir, f);
    double v = NAN;
    const cJSON *r = j ? cJSON_GetObjectItem(j, "results") : NULL, *e;
    cJSON_ArrayForEach(e, r) {
        const cJSON *p = cJSON_GetObjectItem(e, "protocol");
        if (cJSON_IsString(p) && !strcmp(p->valuestring, "chunks")) v = tp_json_number(e, "ppl");
    }
    if (isnan(v)) v = tp_json_number(j, "results.0.ppl");
    cJSON_Delete(j);
    return v;
}

static double task_metric(const cJSON *tasks_json, const char *task, const char *metric) {
    double v = NAN;
    const cJSON *e, *arr = tasks_json ? cJSON_GetObjectItem(tasks_json, "tasks") : NULL;
    cJSON_ArrayForEach(e, arr) {
        const cJSON *n = cJSON_GetObjectItem(e, "task");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, task)) v = tp_json_number(cJSON_GetObjectItem(e, "metrics"), metric);
    }
    return v;
}

/* First and last training and validation loss of a metrics.jsonl, and its last step. */
typedef struct {
    double loss0, loss1, val0, val1;
    int steps;
} curve;


static void curve_point(void *user, double s, double l, double v) {
    curve *c = user;
    if (!isnan(l)) {
        if (isnan(c->loss0)) c->loss0 = l;
        c->loss1 = l;
        if (s > c->steps) c->steps = (int)s;
    }
    if (!isnan(v)) {
        if (isnan(c->val0)) c->val0 = v;
        c->val1 = v;
    }
}

static curve read_curve(const char *path) {
    curve c = {NAN, NAN, NAN, NAN, 0};
    tp_metrics_each(path, curve_point, &c);
    return c;
}

static void add_curve(cJSON *o, curve c) {
    cJSON_AddNumberToObject(o, "steps", c.steps);
    if (!isnan(c.loss0)) cJSON_AddNumberToObject(o, "train_loss_first", c.loss0);
    if (!isnan(c.loss1)) cJSON_AddNumberToObject(o, "train_loss_last", c.loss1);
    if (!isnan(c.val0)) cJSON_AddNumberToObject(o, "val_loss_first", c.val0);
    if (!isnan(c.val1)) cJSON_AddNumberToObject(o, "val_loss_last", c.val1);
}

/* One model of the report: name (its files <name>-ppl.json, <name>-tasks.json) and folder. */
static cJSON *model_json(const tp_recipe *r, const char *dir, const char *name, const char *path) {
    tp_config c;
    memset(&c, 0, sizeof c);
    size_t params = 0;
    if (exists(path) && tp_config_load(path, &c) == TP_OK) params = tp_config_n_params(&c);
    else memset(&c, 0, sizeof c);
    tp_clear_error();
    double ppl = ppl_of(dir, name);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddNumberToObject(o, "params", (double)params);
    cJSON_AddNumberToObject(o, "layers", c.n_layers);
    cJSON_AddNumberToObject(o, "hidden", c.d_model);
    cJSON_AddNumberToObject(o, "ffn", c.d_ff);
    cJSON_AddNumberToObject(o, "heads", c.n_heads);
    cJSON_AddNumberToObject(o, "kv_heads", c.n_kv_heads);
    if (!isnan(ppl)) cJSON_AddNumberToObject(o, "ppl", ppl);
    else cJSON_AddNullToObject(o, "ppl");
    cJSON *t = cJSON_AddObjectToObject(o, "tasks");
    char f[512];
    snprintf(f, sizeof f, "%s-tasks.json", name);
    cJSON *tj = r->tasks && *r->tasks ? tp_json_load_optional(dir, f) : NULL;
    char tl[1024];
    snprintf(tl, sizeof tl, "%s", r->tasks ? r->tasks : "");
    char *save = NULL;
    int nt = 0;
    for (char *k = strtok_r(tl, ",", &save); k && nt < 16; k = strtok_r(NULL, ",", &save), nt++) {
        cJSON *e = cJSON_AddObjectToObject(t, k);
        double acc = task_metric(tj, k, "acc"), an = task_metric(tj, k, "acc_norm");
        if (!isnan(acc)) cJSON_AddNumberToObject(e, "acc", acc);
        if (!isnan(an)) cJSON_AddNumberToObject(e, "acc_norm", an);
    }
    cJSON_Delete(tj);
    return o;
}

tp_status tp_compress_report(const tp_recipe *r, const char *run_dir, cJSON **out) {
    *out = NULL;
    int K = r->iterate, corr = r->correct_steps > 0, prev = !strcmp(r->iterate_teacher, "prev");
    size_t p0 = 0;
    tp_config c;
    if (K > 1 && tp_config_load(r->teacher, &c) == TP_OK) p0 = tp_config_n_params(&c);
    tp_clear_error();
    cJSON *rj = cJSON_CreateObject();
    if (!rj) return tp_fail(TP_ERR_NOMEM, "out of memory");
    cJSON_AddItemToObject(rj, "teacher", model_json(r, run_dir, "teacher", r->teacher));
    if (corr) {
        char *tc = tp_strfmt("%s/teacher-corrected", run_dir), *mp = tp_strfmt("%s/correct/metrics.jsonl", run_dir);
        cJSON *cj = model_json(r, run_dir, "corrected", tc ? tc : "");
        add_curve(cj, read_curve(mp));
        cJSON_AddItemToObject(rj, "corrected", cj);
        free(tc);
        free(mp);
    }
    cJSON *rounds = cJSON_AddArrayToObject(rj, "rounds");
    const char *teacher_label = corr ? "corrected teacher" : "teacher";
    for (int k = 1; k <= K; k++) {
        char *pn = tp_recipe_round_name(r, "pruned", k, ""), *sn = tp_recipe_round_name(r, "student", k, ""),
             *sd = tp_recipe_student_dir(r, k), *dd = tp_recipe_round_name(r, "distill", k, ""),
             *from = k > 1 ? tp_recipe_round_name(r, "student", k - 1, "") : NULL;
        char *pp = pn ? tp_path_join(run_dir, pn) : NULL, *sp = sd ? tp_path_join(run_dir, sd) : NULL,
             *mp = dd ? tp_strfmt("%s/%s/metrics.jsonl", run_dir, dd) : NULL;
        const char *fromlabel = k == 1 ? teacher_label : from ? from : "";
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "round", k);
        cJSON_AddStringToObject(o, "pruned_from", fromlabel);
        cJSON_AddNumberToObject(o, "target_params", (double)tp_recipe_round_target(r, p0, k));
        cJSON_AddStringToObject(o, "distill_teacher", prev ? fromlabel : teacher_label);
        cJSON_AddItemToObject(o, "pruned", model_json(r, run_dir, pn ? pn : "", pp ? pp : ""));
        cJSON_AddItemToObject(o, "student", model_json(r, run_dir, sn ? sn : "", sp ? sp : ""));
        add_curve(cJSON_AddObjectToObject(o, "distill"), read_curve(mp));
        cJSON_AddItemToArray(rounds, o);
        free(pn), free(sn), free(sd), free(dd), free(from), free(pp), free(sp), free(mp);
    }
    *out = rj;
    return TP_OK;
}
