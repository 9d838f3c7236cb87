/* Training loop tests: 10 AdamW steps of the library loop vs PyTorch (tests/ref/train_ref.py),
 * exact resume of `taper train` under SIGKILL (also inside a checkpoint write), the NaN stop,
 * refusal of a resume with changed settings, the metrics log, and (TAPER_LONG=1) fine-tuning
 * SmolLM2-135M lowers the held-out loss. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/trainer.h"
#include "taper/util.h"
#include "tt.h"

/* ---------------------------------------------------------------- helpers */

static char *fixture(const char *name) {
    char *dir = tt_path(tt_fixtures_dir(), "train");
    char *p = tt_path(dir, name);
    free(dir);
    return p;
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Largest |a-b| / (atol + rtol*|b|) over the parameters, and the largest |a-b|. */
static double params_err(const tp_model *a, const tp_model *b, double atol, double rtol, double *max_abs) {
    double worst = 0;
    *max_abs = 0;
    for (size_t i = 0; i < a->n_params; i++) {
        double d = fabs((double)a->params[i] - (double)b->params[i]);
        double r = d / (atol + rtol * fabs((double)b->params[i]));
        if (!(r <= worst)) worst = r; /* NaN propagates */
        if (d > *max_abs) *max_abs = d;
    }
    return worst;
}

/* ---------------------------------------------------------------- 1. vs PyTorch */

typedef struct {
    const int32_t *batches; /* (steps, accum, 2, B, T) */
    int accum, B, T;
} fixed_batches;

static tp_status fixed_batch(void *user, long step, int micro, int32_t *tokens, int32_t *targets, int B, int T) {
    const fixed_batches *f = user;
    if (B != f->B || T != f->T || micro >= f->accum) return tp_fail(TP_ERR_ARG, "fixed batches: shape mismatch");
    size_t bt = (size_t)B * (size_t)T;
    const int32_t *p = f->batches + ((size_t)step * (size_t)f->accum + (size_t)micro) * 2 * bt;
    memcpy(tokens, p, bt * sizeof *tokens);
    memcpy(targets, p + bt, bt * sizeof *targets);
    return TP_OK;
}

static char *slurp_metrics(const char *run_dir) {
    char *p = tt_path(run_dir, "metrics.jsonl"), *text = NULL;
    if (tp_read_file(p, &text, NULL) != TP_OK) text = NULL;
    free(p);
    return text;
}

TT_TEST(train_matches_pytorch_adamw) {
    char *ip = fixture("index.json"), *bp = fixture("batches.i32");
    cJSON *idx = tt_read_json(ip);
    char *raw = NULL;
    size_t raw_len = 0;
    if (!idx || tp_read_file(bp, &raw, &raw_len) != TP_OK) {
        TT_CHECK(0, "fixtures missing: %s / %s (run tests/ref/train_ref.py)", ip, bp);
        cJSON_Delete(idx);
        free(ip);
        free(bp);
        return;
    }
    int steps = (int)jnum(idx, "steps"), accum = (int)jnum(idx, "accum"), B = (int)jnum(idx, "B"), T = (int)jnum(idx, "T");
    TT_CHECK(raw_len == (size_t)steps * accum * 2 * B * T * 4, "batches.i32 has %zu bytes", raw_len);
    /* tests/ref/train_ref.py: 10 updates of the tied and the untied model, one log entry per update */
    TT_CHECK(steps == 10, "train/index.json: %d steps (expected 10)", steps);
    fixed_batches fb = {(const int32_t *)(const void *)raw, accum, B, T};
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(idx, "models"), *mlog;
    int n_models = 0;
    cJSON_ArrayForEach(mlog, models) {
        const char *name = mlog->string;
        TT_CHECK(cJSON_GetArraySize(mlog) == 10, "%s: %d step records in index.json (expected 10)", name,
                 cJSON_GetArraySize(mlog));
        char fin_name[64];
        snprintf(fin_name, sizeof fin_name, "%s.final", name);
        char *p0 = fixture(name), *p1 = fixture(fin_name);
        tp_model *m = NULL, *ref = NULL;
        if (tp_model_load_hf(p0, &m) || tp_model_load_hf(p1, &ref)) {
            TT_CHECK(0, "loading %s: %s", p0, tp_errmsg());
            tp_model_free(m);
            free(p0);
            free(p1);
            continue;
        }
        tp_train_cfg c;
        tp_train_cfg_defaults(&c);
        c.steps = steps;
        c.B = B;
        c.T = T;
        c.accum = accum;
        c.opt.lr = (float)jnum(idx, "lr");
        c.opt.min_lr = (float)jnum(idx, "min_lr");
        c.opt.warmup_steps = (long)jnum(idx, "warmup");
        c.opt.total_steps = (long)jnum(idx, "total_steps");
        c.opt.beta1 = (float)jnum(idx, "beta1");
        c.opt.beta2 = (float)jnum(idx, "beta2");
        c.opt.eps = (float)jnum(idx, "eps");
        c.opt.weight_decay = (float)jnum(idx, "weight_decay");
        c.opt.clip = (float)jnum(idx, "clip");
        c.val_every = -1;
        c.ckpt_every = 0;
        c.quiet = 1;
        char rd_name[64];
        snprintf(rd_name, sizeof rd_name, "ref_run_%s", name);
        char *rd = tt_path(tt_tmp_dir(), rd_name);
        mkdir(rd, 0755);
        c.run_dir = rd;
        tp_train_data d = {NULL, fixed_batch, &fb};
        tp_train_result r;
        tp_status s = tp_train_run(m, &c, &d, NULL, &r);
        TT_CHECK(s == TP_OK, "%s: tp_train_run: %s", name, tp_errmsg());
        if (s == TP_OK) {
            /* every step's loss, lr and pre-clip gradient norm against the reference log */
            char *text = slurp_metrics(rd);
            double worst_loss = 0, worst_gn = 0, worst_lr = 0;
            int n_lines = 0;
            for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
                cJSON *j = cJSON_Parse(line);
                int st = (int)jnum(j, "step");
                if (st >= 1 && st <= steps && !isnan(jnum(j, "loss"))) {
                    const cJSON *e = cJSON_GetArrayItem(mlog, st - 1);
                    double dl = fabs(jnum(j, "loss") - jnum(e, "loss")) / fabs(jnum(e, "loss"));
                    double dg = fabs(jnum(j, "grad_norm") - jnum(e, "grad_norm")) / fabs(jnum(e, "grad_norm"));
                    double dr = fabs(jnum(j, "lr") - jnum(e, "lr")) / fabs(jnum(e, "lr"));
                    worst_loss = fmax(worst_loss, dl);
                    worst_gn = fmax(worst_gn, dg);
                    worst_lr = fmax(worst_lr, dr);
                    n_lines++;
                }
                cJSON_Delete(j);
            }
            free(text);
            TT_CHECK(n_lines == steps, "%s: %d step lines in metrics.jsonl, expected %d", name, n_lines, steps);
            n_models++;
            TT_CHECK(worst_loss < 1e-5, "%s: loss rel err %.3g", name, worst_loss);
            TT_CHECK(worst_gn < 1e-4, "%s: grad_norm rel err %.3g", name, worst_gn);
            TT_CHECK(worst_lr < 1e-6, "%s: lr rel err %.3g", name, worst_lr);
            double max_abs, init_abs = 0;
            double worst = params_err(m, ref, 1e-5, 1e-5, &max_abs);
            /* the test must be able to fail: the weights really moved */
            tp_model *m0 = NULL;
            double moved = 0;
            if (tp_model_load_hf(p0, &m0) == TP_OK) moved = params_err(m0, ref, 1e-5, 1e-5, &init_abs);
            TT_CHECK(worst <= 1.0, "%s: weights after %d steps: max |d| %.3g, worst |d|/(1e-5+1e-5|ref|) %.3g", name,
                     steps, max_abs, worst);
            TT_CHECK(moved > 100, "%s: training moved the weights by only %.3g tolerances", name, moved);
            tt_note("%s: %d steps vs torch: weights max |d| %.2e (%.2f of the 1e-5 abs+rel tolerance; the steps moved "
                    "them by up to %.2e), loss rel %.1e, grad_norm rel %.1e",
                    name, steps, max_abs, worst, init_abs, worst_loss, worst_gn);
            tp_model_free(m0);
        }
        tp_train_result_free(&r);
        free(rd);
        tp_model_free(m);
        tp_model_free(ref);
        free(p0);
        free(p1);
    }
    TT_CHECK(n_models == 2, "compared %d models' runs (expected 2: tied, untied)", n_models);
    free(raw);
    cJSON_Delete(idx);
    free(ip);
    free(bp);
}

/* ---------------------------------------------------------------- hooks (the KD plug-in point) */

/* Cross-entropy written as a logits loss (tp_logit_loss_fn), the way distillation plugs its own
 * loss in; nan_at_step >= 0 poisons that update's loss. */
typedef struct {
    const int32_t *targets;
    size_t count;
    long step, nan_at_step;
    int calls;
    char extra[64];
} ce_hook;

static double ce_logits(void *user, size_t r0, size_t r1, float *logits, size_t vocab) {
    ce_hook *h = user;
    double sum = 0;
    for (size_t r = r0; r < r1; r++) {
        float *x = logits + (r - r0) * vocab;
        int32_t t = h->targets[r];
        if (t == TP_IGNORE_INDEX) {
            memset(x, 0, vocab * sizeof *x);
            continue;
        }
        double mx = x[0], z = 0;
        for (size_t v = 1; v < vocab; v++) mx = fmax(mx, x[v]);
        for (size_t v = 0; v < vocab; v++) z += exp(x[v] - mx);
        sum += (mx + log(z) - x[t]) / (double)h->count;
        for (size_t v = 0; v < vocab; v++) x[v] = (float)(exp(x[v] - mx) / z / (double)h->count);
        x[t] -= (float)(1.0 / (double)h->count);
    }
    return h->step == h->nan_at_step ? NAN : sum;
}

static tp_status ce_prepare(void *user, const tp_train_micro *mb, tp_step_opts *o) {
    ce_hook *h = user;
    h->targets = mb->targets;
    h->count = 0;
    for (size_t i = 0; i < (size_t)mb->B * (size_t)mb->T; i++) h->count += mb->targets[i] != TP_IGNORE_INDEX;
    h->step = mb->step;
    h->calls++;
    o->loss = ce_logits;
    o->loss_user = h;
    return TP_OK;
}

static const char *ce_metrics(void *user, long step) {
    ce_hook *h = user;
    snprintf(h->extra, sizeof h->extra, "\"hook_calls\":%d,\"hook_step\":%ld", h->calls, step);
    return h->extra;
}

/* Runs `steps` updates of the tied fixture model on the fixed batches; hook may be NULL. */
static tp_status run_fixed(int steps, ce_hook *hook, const char *run_dir, int recompute, tp_model **out,
                           tp_train_result *r) {
    char *ip = fixture("index.json"), *bp = fixture("batches.i32"), *mp = fixture("tied");
    cJSON *idx = tt_read_json(ip);
    char *raw = NULL;
    tp_status s = idx ? tp_read_file(bp, &raw, NULL) : tp_fail(TP_ERR_IO, "%s missing", ip);
    if (!s) s = tp_model_load_hf(mp, out);
    if (!s) {
        fixed_batches fb = {(const int32_t *)(const void *)raw, (int)jnum(idx, "accum"), (int)jnum(idx, "B"),
                            (int)jnum(idx, "T")};
        tp_train_cfg c;
        tp_train_cfg_defaults(&c);
        c.steps = steps;
        c.B = fb.B;
        c.T = fb.T;
        c.accum = fb.accum;
        c.opt.lr = 3e-3f;
        c.opt.warmup_steps = 2;
        c.opt.total_steps = 10;
        c.val_every = -1;
        c.ckpt_every = 0;
        c.quiet = 1;
        c.run_dir = run_dir;
        c.recompute = recompute;
        tp_train_hooks hk = {.prepare = ce_prepare, .metrics = ce_metrics, .user = hook};
        tp_train_data d = {NULL, fixed_batch, &fb};
        s = tp_train_run(*out, &c, &d, hook ? &hk : NULL, r);
    }
    free(raw);
    cJSON_Delete(idx);
    free(ip);
    free(bp);
    free(mp);
    return s;
}

TT_TEST(train_loss_hook_matches_builtin_and_nan_loss_stops) {
    tp_model *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    tp_train_result ra, rb, rc, rd;
    ce_hook hb = {.nan_at_step = -1}, hc = {.nan_at_step = 2}, hd = {.nan_at_step = -1};
    char *dir = tt_path(tt_tmp_dir(), "run_hook");
    mkdir(dir, 0755);
    tp_status sa = run_fixed(4, NULL, NULL, 0, &a, &ra);
    tp_status sb = run_fixed(4, &hb, dir, 0, &b, &rb);
    TT_CHECK(sa == TP_OK && sb == TP_OK, "built-in and hook runs: %s", tp_errmsg());
    if (sa == TP_OK && sb == TP_OK) {
        double max_abs, worst = params_err(b, a, 1e-6, 1e-6, &max_abs);
        TT_CHECK(worst <= 1 && hb.calls == 8, "CE as a logits-loss hook = built-in CE after 4 steps: max |d| %.3g (%d "
                 "hook calls)", max_abs, hb.calls);
        TT_NEAR(rb.loss, ra.loss, 1e-6, 1e-6);
        char *text = slurp_metrics(dir);
        TT_CHECK(text && strstr(text, "\"hook_calls\":8,\"hook_step\":4}"), "metrics hook members in the log: %s",
                 text ? text : "(none)");
        free(text);
    }
    /* a NaN loss at update 3 (0-based 2) stops before that update: weights = after 2 updates */
    tp_status sc = run_fixed(10, &hc, NULL, 0, &c, &rc);
    const char *msg = tp_errmsg();
    TT_CHECK(sc == TP_ERR_NUMERIC && strstr(msg, "step 3") && strstr(msg, "NaN"), "NaN loss stops at step 3: %s", msg);
    tp_status sd = run_fixed(2, &hd, NULL, 0, &d, &rd);
    TT_CHECK(sd == TP_OK && rc.step == 2 && c && d && !memcmp(c->params, d->params, c->n_params * sizeof(float)),
             "after the NaN stop the weights are those of step 2 (step %ld)", rc.step);
    tp_train_result_free(&ra);
    tp_train_result_free(&rb);
    tp_train_result_free(&rc);
    tp_train_result_free(&rd);
    tp_model_free(a);
    tp_model_free(b);
    tp_model_free(c);
    tp_model_free(d);
    free(dir);
}

/* --recompute only changes what is kept between forward and backward, so a resume may switch it:
 * the weights must come out bit-identical. */
TT_TEST(train_recompute_is_bit_identical) {
    tp_model *a = NULL, *b = NULL;
    tp_train_result ra, rb;
    tp_status sa = run_fixed(4, NULL, NULL, 0, &a, &ra), sb = run_fixed(4, NULL, NULL, 1, &b, &rb);
    TT_CHECK(sa == TP_OK && sb == TP_OK, "runs: %s", tp_errmsg());
    if (sa == TP_OK && sb == TP_OK) {
        size_t n_diff = 0;
        for (size_t i = 0; i < a->n_params; i++) n_diff += a->params[i] != b->params[i];
        TT_CHECK(n_diff == 0, "4 steps with and without recompute: %zu of %zu weights differ", n_diff, a->n_params);
        TT_CHECK(rb.tape_bytes < ra.tape_bytes, "recompute keeps less: %zu vs %zu bytes", rb.tape_bytes, ra.tape_bytes);
    }
    tp_train_result_free(&ra);
    tp_train_result_free(&rb);
    tp_model_free(a);
    tp_model_free(b);
}

/* ---------------------------------------------------------------- `taper train` end to end */

static const char *taper_bin(void) {
    const char *b = getenv("TAPER_BIN");
    return b && *b ? b : NULL;
}

/* taper built with the checkpoint crash hook (-DTP_TESTING; make test sets TAPER_TESTING_BIN). */
static const char *taper_testing_bin(void) {
    const char *b = getenv("TAPER_TESTING_BIN");
    return b && *b ? b : NULL;
}

/* A tiny model (HF folder, no tokenizer) and a token shard of Markov-chain "documents" that a
 * model can learn, created once under the scratch dir. Steps take a few milliseconds, so a
 * 40-step run lasts long enough for kills at random moments to land everywhere. */
static const char *g_cli_model, *g_cli_data;

static int cli_fixture(void) {
    if (g_cli_model) return 1;
    char *model = tt_path(tt_tmp_dir(), "cli_model"), *data = tt_path(tt_tmp_dir(), "cli_data.tpt");
    tp_config c;
    memset(&c, 0, sizeof c);
    c.arch = TP_ARCH_LLAMA;
    c.n_layers = 2;
    c.d_model = 64;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.d_ff = 128;
    c.vocab = 256;
    c.max_pos = 128;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.tie_embeddings = 1;
    c.bos_id = 1;
    c.eos_id = 2;
    tp_model *m = NULL;
    tp_status s = tp_model_alloc(&c, &m);
    if (!s) {
        tp_model_init_random(m, 5, 0.05f);
        s = tp_model_save_hf(m, model, "F32");
    }
    tp_model_free(m);
    if (s) TT_CHECK(0, "writing the CLI fixture: %s", tp_errmsg());
    if (!s && !tt_markov_shard(data, 60, 30, 90, 250, 7, 256, 11)) s = TP_ERR_IO;
    if (s) {
        free(model);
        free(data);
        return 0;
    }
    g_cli_model = model;
    g_cli_data = data;
    return 1;
}

/* The fixed settings of the CLI runs (everything that the trajectory depends on). */
static void train_args(char *buf, size_t cap, const char *run_dir, const char *extra) {
    snprintf(buf, cap,
             "train %s --data %s --steps 40 --seq 32 --batch 4 --accum 2 --lr 3e-3 --min-lr 3e-4 --warmup 5 "
             "--weight-decay 0.1 --clip 1 --seed 7 --val-frac 0.1 --val-every 10 --val-batches 2 --ckpt-every 3 "
             "--keep 3 --threads 2 --run-dir %s %s",
             g_cli_model, g_cli_data, run_dir, extra ? extra : "");
}

/* Runs `env taper ARGS` to completion, output into log; returns the exit code (-signal if killed). */
static int run_taper_bin(const char *bin, const char *env, const char *args, const char *log) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "TAPER_PROGRESS=0 OMP_WAIT_POLICY=PASSIVE %s %s %s > %s 2>&1", env ? env : "", bin, args,
             log);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run_taper(const char *env, const char *args, const char *log) { return run_taper_bin(taper_bin(), env, args, log); }

/* Starts taper in the background (exec'd by sh, so pid is taper's own). */
static pid_t spawn_taper(const char *env, const char *args, const char *log) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "exec env TAPER_PROGRESS=0 OMP_WAIT_POLICY=PASSIVE %s %s %s > %s 2>&1", env ? env : "",
             taper_bin(), args, log);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static char *read_text(const char *path) {
    char *t = NULL;
    if (tp_read_file(path, &t, NULL) == TP_OK && t) return t;
    return strdup("");
}

/* The checkpoint named by "resumed from PATH at step" in a log (malloc'd basename) or NULL. */
static char *resumed_from(const char *log_text) {
    const char *p = strstr(log_text, "resumed from ");
    if (!p) return NULL;
    p += strlen("resumed from ");
    const char *e = strstr(p, " at step");
    if (!e) return NULL;
    const char *slash = p;
    for (const char *q = p; q < e; q++)
        if (*q == '/') slash = q + 1;
    return strndup(slash, (size_t)(e - slash));
}

/* Parses metrics.jsonl: checks every line is a JSON object with a step, the training lines'
 * steps are exactly 1..n without repeats, and validation lines are not repeated either. Returns
 * the number of training lines (-1 on a defect, reported). losses: (n) out, may be NULL. */
static int check_metrics(const char *run_dir, int n_expect, double *losses, const char *what) {
    char *text = slurp_metrics(run_dir);
    if (!text) {
        TT_CHECK(0, "%s: no metrics.jsonl", what);
        return -1;
    }
    int n = 0, ok = 1, last_val = -1;
    size_t len = strlen(text);
    TT_CHECK(len == 0 || text[len - 1] == '\n', "%s: metrics.jsonl ends with a complete line", what);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        double st = jnum(j, "step");
        if (!j || isnan(st)) {
            ok = TT_CHECK(0, "%s: malformed metrics line '%s'", what, line);
        } else if (!isnan(jnum(j, "loss"))) {
            ok &= TT_CHECK((int)st == n + 1, "%s: training line for step %g after step %d", what, st, n);
            ok &= TT_CHECK(!isnan(jnum(j, "lr")) && !isnan(jnum(j, "grad_norm")) && !isnan(jnum(j, "tokens")) &&
                               !isnan(jnum(j, "tokens_per_s")) && !isnan(jnum(j, "elapsed_s")),
                           "%s: step %g line has every field", what, st);
            if (losses && n < n_expect) losses[n] = jnum(j, "loss");
            n++;
        } else if (!isnan(jnum(j, "val_loss"))) {
            ok &= TT_CHECK((int)st > last_val && fabs(exp(jnum(j, "val_loss")) - jnum(j, "val_ppl")) <= 1e-6 * jnum(j, "val_ppl"),
                           "%s: validation line for step %g (previous %d) with val_ppl = exp(val_loss)", what, st, last_val);
            last_val = (int)st;
        } else {
            ok = TT_CHECK(0, "%s: metrics line with neither loss nor val_loss: %s", what, line);
        }
        cJSON_Delete(j);
    }
    free(text);
    if (n_expect >= 0) TT_CHECK(n == n_expect, "%s: %d training lines, expected %d", what, n, n_expect);
    return ok ? n : -1;
}

typedef struct {
    tp_model *m;
    tp_adamw o;
    tp_ckpt_state st;
    char *path;
} final_state;

static int load_final_lr(const char *run_dir, final_state *f, float lr, float min_lr) {
    memset(f, 0, sizeof *f);
    if (tp_model_load_hf(g_cli_model, &f->m)) return 0;
    tp_adamw_cfg c; /* the runs' settings (a mismatch only prints a note) */
    tp_adamw_defaults(&c);
    c.lr = lr;
    c.min_lr = min_lr;
    c.warmup_steps = 5;
    c.total_steps = 40;
    c.weight_decay = 0.1f;
    c.clip = 1.0f;
    if (tp_adamw_init(&f->o, f->m, &c)) return 0;
    return tp_ckpt_load_latest(run_dir, f->m, &f->o, &f->st, &f->path) == TP_OK;
}

static int load_final(const char *run_dir, final_state *f) { return load_final_lr(run_dir, f, 3e-3f, 3e-4f); }

static void free_final(final_state *f) {
    tp_model_free(f->m);
    tp_adamw_free(&f->o);
    tp_ckpt_state_free(&f->st);
    free(f->path);
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int copy_file(const char *from, const char *to) {
    char *data = NULL;
    size_t len = 0;
    if (tp_read_file(from, &data, &len)) return 0;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(data, 1, len, f) == len;
    if (f) fclose(f);
    free(data);
    return ok;
}

/* The temporary file a killed checkpoint write left behind (malloc'd name) or NULL. */
static char *find_tmp_ckpt(const char *dir) {
    DIR *d = opendir(dir);
    char *found = NULL;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, "ckpt") && strstr(e->d_name, ".tmp") && !found) found = strdup(e->d_name);
    if (d) closedir(d);
    return found;
}

/* The uninterrupted 40-step run every resume is held to, run once; *dir gets its run dir.
 * Returns its wall time in seconds (used only to pace the kills), or -1 if it failed. */
static double reference_run(char **dir) {
    static double t_full = -2;
    static char *ref_dir;
    if (t_full == -2) {
        char args[8192];
        char *log = tt_path(tt_tmp_dir(), "train_ref.log");
        ref_dir = tt_path(tt_tmp_dir(), "run_ref");
        train_args(args, sizeof args, ref_dir, NULL);
        double t0 = tp_time_s();
        int rc = run_taper(NULL, args, log);
        t_full = tp_time_s() - t0;
        char *out = read_text(log);
        if (!TT_CHECK(rc == 0, "uninterrupted run exits 0 (got %d): %s", rc, out)) t_full = -1;
        free(out);
        free(log);
    }
    *dir = ref_dir;
    return t_full;
}

TT_TEST(train_cli_exact_resume_under_sigkill) {
    if (!taper_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    if (!cli_fixture()) return;
    char args[8192];
    char *ref_dir = NULL, *kill_dir = tt_path(tt_tmp_dir(), "run_kill");
    char *log = tt_path(tt_tmp_dir(), "train.log");

    double t_full = reference_run(&ref_dir), ref_loss[40], kill_loss[40];
    if (t_full < 0) {
        free(kill_dir);
        free(log);
        return;
    }
    check_metrics(ref_dir, 40, ref_loss, "uninterrupted");

    /* The same run, SIGKILLed and resumed until it finishes: first at a random moment of the
     * start-up, then 5 times at a random moment within a randomly chosen step (a target step,
     * watched in metrics.jsonl, plus a random delay of up to 1.5 steps: in the step's compute,
     * the log write, a validation or a checkpoint write), once inside a checkpoint write (the
     * writer's test hook), then to the end. Timing-based, but what is asserted is not. */
    train_args(args, sizeof args, kill_dir, "--resume");
    char *kill_metrics = tt_path(kill_dir, "metrics.jsonl");
    tp_rng r;
    tp_rng_seed(&r, 2024);
    double step_s = t_full / 40;
    int kills = 0, attempts = 0, done = 0, die_done = 0, distinct = 0, target = 0;
    char used[16][64], starts[512] = "";
    while (!done && attempts < 40) {
        attempts++;
        if (kills == 3 && !die_done) {
            /* die inside a checkpoint write: the writer SIGKILLs itself after 3000 bytes */
            die_done = 1;
            if (!TT_CHECK(taper_testing_bin() != NULL, "TAPER_TESTING_BIN is not set (make test sets it)")) break;
            int st = run_taper_bin(taper_testing_bin(), "TAPER_TEST_CKPT_DIE_AFTER=3000", args, log);
            TT_CHECK(st != 0, "the checkpoint-write crash run did not complete (status %d)", st);
            char *tmp = find_tmp_ckpt(kill_dir);
            TT_CHECK(tmp != NULL, "a half-written checkpoint was left in %s", kill_dir);
            if (tmp) {
                /* a torn file under a final, newest-looking name must be skipped, not loaded */
                char *src = tt_path(kill_dir, tmp), *fake = tt_path(kill_dir, "ckpt-99999999.tpc");
                TT_CHECK(copy_file(src, fake), "copying %s", src);
                char probe[8400];
                snprintf(probe, sizeof probe, "%.8000s --steps 1", args); /* loads, then has nothing to do */
                int prc = run_taper(NULL, probe, log);
                char *pout = read_text(log), *u = resumed_from(pout);
                TT_CHECK(prc == 0 && u && !strstr(u, "99999999") && !strstr(u, ".tmp") && strstr(pout, "skipping"),
                         "the probe resume skips the torn checkpoint (rc %d, used %s): %s", prc, u ? u : "(none)",
                         pout);
                tt_note("checkpoint-write crash: left %s; a torn copy named ckpt-99999999.tpc was skipped, resume "
                        "used %s",
                        tmp, u ? u : "(none)");
                unlink(fake);
                free(u);
                free(pout);
                free(src);
                free(fake);
                free(tmp);
            }
            continue;
        }
        pid_t pid = spawn_taper(NULL, args, log);
        int st = 0, killed = 0, reaped = 0;
        if (kills == 0) {
            sleep_s(t_full * 0.1 * tp_rng_uniform(&r));
            killed = 1;
        } else if (kills < 6) {
            target += 3 + (int)(tp_rng_u64(&r) % 5); /* 3..7 steps further than the last target */
            for (;;) {
                if (waitpid(pid, &st, WNOHANG) == pid) {
                    reaped = 1;
                    break;
                }
                char *mt = read_text(kill_metrics);
                int n = 0;
                for (char *q = mt; (q = strstr(q, "\"loss\"")); q++) n++;
                free(mt);
                if (n >= target) {
                    sleep_s(1.5 * step_s * tp_rng_uniform(&r));
                    killed = 1;
                    break;
                }
                sleep_s(0.002);
            }
        }
        if (!reaped && killed && waitpid(pid, &st, WNOHANG) == 0) {
            kill(pid, SIGKILL);
            kills++;
            waitpid(pid, &st, 0);
        } else if (!reaped) {
            waitpid(pid, &st, 0);
        }
        char *lt = read_text(log), *u = resumed_from(lt);
        const char *at = strstr(lt, " at step ");
        long from = at ? strtol(at + 9, NULL, 10) : 0;
        size_t sl = strlen(starts);
        snprintf(starts + sl, sizeof starts - sl, "%s%ld%s", sl ? "," : "", from,
                 WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL ? "k" : "");
        if (u) {
            TT_CHECK(!strstr(u, ".tmp") && !strstr(u, "99999999"), "resume used %s", u);
            int seen = 0;
            for (int i = 0; i < distinct; i++) seen |= !strcmp(used[i], u);
            if (!seen && distinct < 16) snprintf(used[distinct++], sizeof used[0], "%s", u);
        }
        if (WIFEXITED(st)) {
            TT_CHECK(WEXITSTATUS(st) == 0, "a resumed run failed (exit %d): %s", WEXITSTATUS(st), lt);
            done = WEXITSTATUS(st) == 0;
            if (WEXITSTATUS(st) != 0) attempts = 1000;
        }
        free(u);
        free(lt);
    }
    free(kill_metrics);
    TT_CHECK(done, "the killed run finished after %d attempts", attempts);
    TT_CHECK(kills >= 5, "%d SIGKILLs landed (at least 5 wanted; the run took %.2f s uninterrupted)", kills, t_full);
    TT_CHECK(die_done, "one kill inside a checkpoint write");
    TT_CHECK(distinct >= 4, "resumes started from %d different checkpoints", distinct);

    /* bit-identical: weights, Adam moments, step, loader cursor, RNG, and the logged losses */
    final_state a, b;
    int la = load_final(ref_dir, &a), lb = load_final(kill_dir, &b);
    TT_CHECK(la && lb, "loading the final checkpoints: %s", tp_errmsg());
    if (la && lb) {
        size_t nb = a.m->n_params * sizeof(float);
        TT_CHECK(a.st.step == 40 && b.st.step == 40, "final steps %ld and %ld", a.st.step, b.st.step);
        TT_CHECK(memcmp(a.m->params, b.m->params, nb) == 0, "weights bit-identical after kills and resumes");
        TT_CHECK(memcmp(a.o.m, b.o.m, nb) == 0 && memcmp(a.o.v, b.o.v, nb) == 0, "Adam moments bit-identical");
        TT_CHECK(a.st.cursor.epoch == b.st.cursor.epoch && a.st.cursor.index == b.st.cursor.index &&
                     memcmp(&a.st.rng, &b.st.rng, sizeof a.st.rng) == 0 && a.st.tokens_seen == b.st.tokens_seen,
                 "loader cursor, RNG and token count identical");
        size_t n_diff = 0;
        for (size_t i = 0; i < a.m->n_params; i++) n_diff += a.m->params[i] != b.m->params[i];
        tt_note("exact resume: %d SIGKILLs at random moments + 1 inside a checkpoint write, %d starts, resumed from "
                "%d different checkpoints (start steps, k = killed: %s; uninterrupted run %.2f s); %zu of %zu weights "
                "differ",
                kills, attempts, distinct, starts, t_full, n_diff, a.m->n_params);
    }
    free_final(&a);
    free_final(&b);
    if (check_metrics(kill_dir, 40, kill_loss, "killed and resumed") == 40) {
        int same = 1;
        for (int i = 0; i < 40; i++) same &= ref_loss[i] == kill_loss[i];
        TT_CHECK(same, "the logged losses of all 40 steps are identical to the uninterrupted run's");
    }
    free(kill_dir);
    free(log);
}

/* Step number of the newest complete checkpoint in dir (-1 if none). */
static long newest_ckpt_step(const char *dir) {
    char name[256];
    if (tp_run_dir_ckpts(dir, name, sizeof name) <= 0) return -1;
    return strtol(name + 5, NULL, 10);
}

TT_TEST(train_cli_nan_stop_keeps_last_good_checkpoint) {
    if (!taper_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    if (!cli_fixture()) return;
    char args[8192];
    char *dir = tt_path(tt_tmp_dir(), "run_nan"), *log = tt_path(tt_tmp_dir(), "nan.log");
    /* an absurd learning rate: the weights blow up within a few steps */
    train_args(args, sizeof args, dir, "--lr 1e30 --min-lr 1e30 --ckpt-every 1 --keep 0 --val-every -1");
    int rc = run_taper(NULL, args, log);
    char *out = read_text(log);
    const char *at = strstr(out, "error");
    at = at ? strstr(at, "step ") : NULL;
    long bad = at ? strtol(at + 5, NULL, 10) : -1;
    TT_CHECK(rc == 1, "a NaN/inf stop exits 1 (got %d): %s", rc, out);
    TT_CHECK(bad > 1 && (strstr(out, "NaN") || strstr(out, "inf")) && strstr(out, "last good checkpoint"),
             "the message names the step, the non-finite value and the last good checkpoint: %s", out);
    long good = newest_ckpt_step(dir);
    TT_CHECK(good == bad - 1, "the newest checkpoint is step %ld, the bad step %ld", good, bad);
    if (bad > 1) check_metrics(dir, (int)bad - 1, NULL, "NaN run");
    final_state f;
    if (TT_CHECK(load_final_lr(dir, &f, 1e30f, 1e30f), "loading the last good checkpoint: %s", tp_errmsg())) {
        int finite = 1;
        for (size_t i = 0; i < f.m->n_params; i++) finite &= isfinite(f.m->params[i]) != 0;
        TT_CHECK(finite && f.st.step == good, "the last good checkpoint (step %ld) holds finite weights", f.st.step);
    }
    const char *err = strstr(out, "error");
    tt_note("lr 1e30: stopped at step %ld with: %s", bad, err ? err : out);
    free_final(&f);
    free(out);
    free(dir);
    free(log);
}

TT_TEST(train_cli_resume_policy_and_sigterm) {
    if (!taper_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    if (!cli_fixture()) return;
    char args[8192], *out;
    char *dir = tt_path(tt_tmp_dir(), "run_policy"), *log = tt_path(tt_tmp_dir(), "policy.log");
    /* usage errors exit 2 naming the option; --help exits 0 */
    TT_CHECK(run_taper(NULL, "train --help", log) == 0, "train --help exits 0");
    out = read_text(log);
    TT_CHECK(strstr(out, "usage: taper train") && strstr(out, "--resume"), "help text: %.200s", out);
    free(out);
    snprintf(args, sizeof args, "train %s --data %s --run-dir %s", g_cli_model, g_cli_data, dir);
    TT_CHECK(run_taper(NULL, args, log) == 2, "missing --steps exits 2");
    out = read_text(log);
    TT_CHECK(strstr(out, "--steps") != NULL, "the message names --steps: %s", out);
    free(out);
    train_args(args, sizeof args, dir, "--lr abc");
    TT_CHECK(run_taper(NULL, args, log) == 2, "--lr abc exits 2");
    train_args(args, sizeof args, dir, "--frobnicate");
    TT_CHECK(run_taper(NULL, args, log) == 2, "an unknown option exits 2");
    train_args(args, sizeof args, dir, "--precision fp16");
    TT_CHECK(run_taper(NULL, args, log) == 2, "--precision fp16 exits 2");
    out = read_text(log);
    TT_CHECK(strstr(out, "bf16") != NULL, "the message lists the precisions: %s", out);
    free(out);
    train_args(args, sizeof args, dir, "--steps 6");
    TT_CHECK(run_taper(NULL, args, log) == 0, "6-step run");
    /* settings that change the trajectory are refused, naming old and new values */
    const char *refused[] = {"--lr 1e-3", "--seq 16", "--batch 2", "--accum 1", "--seed 8", "--warmup 2",
                             "--weight-decay 0", "--clip 0.5", "--val-frac 0.2", "--schedule-steps 60",
                             "--precision bf16"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        char extra[128];
        snprintf(extra, sizeof extra, "--resume --steps 9 %s", refused[i]);
        train_args(args, sizeof args, dir, extra);
        int rc = run_taper(NULL, args, log);
        out = read_text(log);
        TT_CHECK(rc == 1 && strstr(out, "refusing to resume") && strstr(out, "was"),
                 "resume with %s is refused (rc %d): %s", refused[i], rc, out);
        free(out);
    }
    TT_CHECK(newest_ckpt_step(dir) == 6, "refused resumes wrote nothing (newest checkpoint %ld)", newest_ckpt_step(dir));
    /* a run dir with checkpoints is not silently restarted */
    train_args(args, sizeof args, dir, "--steps 9");
    int rc = run_taper(NULL, args, log);
    out = read_text(log);
    TT_CHECK(rc == 1 && strstr(out, "--resume"), "starting over a run dir with checkpoints is refused (%d): %s", rc, out);
    free(out);
    /* allowed: more steps (the schedule keeps its horizon of 40) and another thread count */
    train_args(args, sizeof args, dir, "--resume --steps 9 --threads 1");
    rc = run_taper(NULL, args, log);
    out = read_text(log);
    TT_CHECK(rc == 0 && strstr(out, "horizon") && strstr(out, "bit-identical"),
             "resume with --steps 9 --threads 1 runs, noting the schedule and the thread change (%d): %s", rc, out);
    free(out);
    check_metrics(dir, 9, NULL, "resumed with more steps");

    /* SIGTERM: the current step finishes, a checkpoint is written, exit 143; nothing is lost */
    char *ref_dir = NULL, *term_dir = tt_path(tt_tmp_dir(), "run_term");
    if (reference_run(&ref_dir) > 0) {
        char *mpath = tt_path(term_dir, "metrics.jsonl");
        train_args(args, sizeof args, term_dir, "--ckpt-every 1000");
        pid_t pid = spawn_taper(NULL, args, log);
        for (int i = 0; i < 5000; i++) {
            char *mt = read_text(mpath);
            int n = 0;
            for (char *q = mt; (q = strstr(q, "\"loss\"")); q++) n++;
            free(mt);
            if (n >= 5) break;
            sleep_s(0.002);
        }
        kill(pid, SIGTERM);
        int st = 0;
        waitpid(pid, &st, 0);
        out = read_text(log);
        int lines = check_metrics(term_dir, -1, NULL, "SIGTERM"); /* count only */
        long ck = newest_ckpt_step(term_dir);
        TT_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 143 && strstr(out, "--resume"),
                 "SIGTERM exits 143 after a checkpoint, saying how to resume (status %d): %s", st, out);
        TT_CHECK(ck >= 5 && ck < 40, "SIGTERM wrote a checkpoint at step %ld (no periodic ones)", ck);
        free(out);
        (void)lines;
        train_args(args, sizeof args, term_dir, "--ckpt-every 1000 --resume");
        TT_CHECK(run_taper(NULL, args, log) == 0, "resume after SIGTERM");
        final_state a, b;
        int la = load_final(ref_dir, &a), lb = load_final(term_dir, &b);
        TT_CHECK(la && lb && memcmp(a.m->params, b.m->params, a.m->n_params * sizeof(float)) == 0,
                 "stopped by SIGTERM at step %ld and resumed: weights bit-identical to the uninterrupted run", ck);
        free_final(&a);
        free_final(&b);
        check_metrics(term_dir, 40, NULL, "SIGTERM + resume");
        free(mpath);
    }
    free(term_dir);
    free(dir);
    free(log);
}

TT_TEST(train_cli_init_config_and_export) {
    if (!taper_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    if (!cli_fixture()) return;
    /* a smaller architecture than MODEL, trained from scratch for 3 steps, exported both ways */
    tp_model *src = NULL;
    if (!TT_CHECK(tp_model_load_hf(g_cli_model, &src) == TP_OK, "loading %s: %s", g_cli_model, tp_errmsg())) return;
    tp_config c = src->cfg;
    c.d_model = 32;
    c.n_layers = 1;
    c.d_ff = 48;
    c.head_dim = 8;
    char *json = NULL, *cfg_path = tt_path(tt_tmp_dir(), "scratch_config.json");
    char *dir = tt_path(tt_tmp_dir(), "run_scratch"), *hf = tt_path(tt_tmp_dir(), "scratch_hf");
    char *gguf = tt_path(tt_tmp_dir(), "scratch.gguf"), *log = tt_path(tt_tmp_dir(), "scratch.log");
    TT_CHECK(tp_config_to_json(&c, &json) == TP_OK && tp_write_file_atomic(cfg_path, json, strlen(json)) == TP_OK,
             "writing %s", cfg_path);
    char extra[2048], args[8192];
    snprintf(extra, sizeof extra, "--steps 3 --init-config %s --export-hf %s --export-gguf %s", cfg_path, hf, gguf);
    train_args(args, sizeof args, dir, extra);
    int rc = run_taper(NULL, args, log);
    char *out = read_text(log);
    TT_CHECK(rc == 0 && strstr(out, "wrote"), "from-scratch run with exports (rc %d): %s", rc, out);
    free(out);
    tp_model *h = NULL, *ck = NULL;
    tp_adamw o;
    tp_adamw_cfg oc;
    tp_adamw_defaults(&oc);
    oc.lr = 3e-3f;
    oc.min_lr = 3e-4f;
    oc.warmup_steps = 5;
    oc.total_steps = 3;
    oc.weight_decay = 0.1f;
    tp_ckpt_state st;
    memset(&st, 0, sizeof st);
    memset(&o, 0, sizeof o);
    tp_gguf *gf = NULL;
    int ok = tp_model_load_hf(hf, &h) == TP_OK && tp_gguf_open(gguf, &gf) == TP_OK &&
             tp_model_alloc(&c, &ck) == TP_OK && tp_adamw_init(&o, ck, &oc) == TP_OK &&
             tp_ckpt_load_latest(dir, ck, &o, &st, NULL) == TP_OK;
    TT_CHECK(ok, "loading the exports and the final checkpoint: %s", tp_errmsg());
    if (ok) {
        size_t nb = ck->n_params * sizeof(float);
        TT_CHECK(h->cfg.d_model == 32 && h->cfg.n_layers == 1 && h->n_params == ck->n_params,
                 "the export has the --init-config architecture (d_model %d, %d layers)", h->cfg.d_model,
                 h->cfg.n_layers);
        TT_CHECK(h->n_params == ck->n_params && !memcmp(h->params, ck->params, nb), "HF export = final weights");
        /* no tokenizer here, so the GGUF is not loadable as a model: compare two of its tensors */
        const tp_gguf_tensor *te = tp_gguf_find_tensor(gf, "token_embd.weight");
        const tp_gguf_tensor *tn = tp_gguf_find_tensor(gf, "output_norm.weight");
        size_t ne = (size_t)c.vocab * (size_t)c.d_model;
        float *e = malloc(ne * sizeof *e), *fnorm = malloc((size_t)c.d_model * sizeof *fnorm);
        TT_CHECK(te && tn && tp_gguf_tensor_to_f32(te, e) == TP_OK && tp_gguf_tensor_to_f32(tn, fnorm) == TP_OK &&
                     !memcmp(e, ck->tok_emb, ne * sizeof *e) && !memcmp(fnorm, ck->final_norm, (size_t)c.d_model * 4),
                 "GGUF export: token_embd and output_norm = final weights");
        free(e);
        free(fnorm);
        /* the random init is N(0, 0.02) with norms 1: after 3 small steps the norms are still ~1 */
        double s2 = 0;
        size_t n = (size_t)c.vocab * (size_t)c.d_model;
        for (size_t i = 0; i < n; i++) s2 += (double)ck->tok_emb[i] * ck->tok_emb[i];
        double sd = sqrt(s2 / (double)n);
        TT_CHECK(sd > 0.015 && sd < 0.03 && fabs(ck->final_norm[0] - 1) < 0.05, "init scale: emb std %.4f, norm %.4f",
                 sd, ck->final_norm[0]);
    }
    tp_ckpt_state_free(&st);
    tp_adamw_free(&o);
    tp_model_free(h);
    tp_gguf_close(gf);
    tp_model_free(ck);
    tp_model_free(src);
    free(json);
    free(cfg_path);
    free(dir);
    free(hf);
    free(gguf);
    free(log);
}

/* TAPER_LONG: fine-tuning SmolLM2-135M on WikiText-2 (valid split, tokenized by `taper tokenize`)
 * lowers the loss on held-out windows of that text. */
TT_TEST(train_long_finetune_lowers_heldout_loss) {
    if (!getenv("TAPER_LONG")) { tt_skip_optional("TAPER_LONG=1 runs it (a few minutes)"); return; }
    if (!taper_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    const char *model = tt_model_path();
    if (!model) { tt_skip("default model not found (run make deps)"); return; }
    char *wiki = tt_path(tt_data_dir(), "wikitext2/wiki.valid.tokens");
    if (access(wiki, R_OK) != 0) {
        tt_skip("%s not found", wiki);
        free(wiki);
        return;
    }
    char *shards = tt_path(tt_tmp_dir(), "wiki_valid_shards"), *dir = tt_path(tt_tmp_dir(), "run_finetune");
    char *log = tt_path(tt_tmp_dir(), "finetune.log"), cmd[8192];
    snprintf(cmd, sizeof cmd, "tokenize %s -o %s --doc-split blank %s", model, shards, wiki);
    int rc = run_taper(NULL, cmd, log);
    char *out = read_text(log);
    TT_CHECK(rc == 0, "taper tokenize (rc %d): %s", rc, out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "train %s --data %s --steps 8 --seq 256 --batch 2 --lr 1e-4 --min-lr 1e-5 --warmup 2 --val-frac 0.05 "
             "--val-batches 4 --ckpt-every 0 --keep 1 --threads 2 --seed 1 --run-dir %s",
             model, shards, dir);
    double t0 = tp_time_s();
    rc = run_taper(NULL, cmd, log);
    double secs = tp_time_s() - t0;
    out = read_text(log);
    TT_CHECK(rc == 0, "taper train on SmolLM2 (rc %d): %s", rc, out);
    free(out);
    char *sp = tt_path(dir, "summary.json");
    cJSON *sum = tt_read_json(sp);
    double v0 = jnum(sum, "val_loss_first"), v1 = jnum(sum, "val_loss");
    TT_CHECK(v1 < v0 - 0.05, "held-out loss %.4f -> %.4f after 8 steps (at least 0.05 lower wanted)", v0, v1);
    tt_note("SmolLM2-135M, 8 steps x 2 x 256 tokens of wiki.valid, lr 1e-4: held-out loss %.4f -> %.4f (ppl %.2f -> "
            "%.2f) on 4 x 2 x 256 held-out tokens; %.0f s, %.1f tok/s in updates, peak RSS %.0f MiB",
            v0, v1, exp(v0), exp(v1), secs, jnum(sum, "tokens_per_s"), jnum(sum, "peak_rss_mib"));
    cJSON_Delete(sum);
    free(sp);
    free(wiki);
    free(shards);
    free(dir);
    free(log);
}
