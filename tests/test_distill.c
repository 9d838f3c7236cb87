/* The distillation step (src/train/distill.c) on tiny models against PyTorch autograd
 * (tests/ref/distill_ref.py -> tests/fixtures/distill): loss parts and every student gradient,
 * the projection's gradient, dynamic alpha, and a student identical to its teacher (zero loss and
 * zero gradient); the CLI's --keep-mask and compress pipeline; the distillation job (tp_distill_run)
 * stopped and resumed exactly. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/distill.h"
#include "taper/trainer.h"
#include "taper/util.h"
#include "tt.h"

static char *fx(const char *name) {
    char *dir = tt_path(tt_fixtures_dir(), "distill"), *p = tt_path(dir, name);
    free(dir);
    return p;
}

static tp_model *load(const char *name) {
    char *p = fx(name);
    tp_model *m = tt_load_hf(p);
    free(p);
    return m;
}

static double num(const cJSON *j, const char *k) { return cJSON_GetObjectItemCaseSensitive(j, k)->valuedouble; }

static int32_t *ints(const cJSON *a, size_t n) {
    int32_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = (int32_t)cJSON_GetArrayItem(a, (int)i)->valuedouble;
    return v;
}

/* worst max|diff| / max|ref| of one tensor */
static double rel(const float *a, const cJSON *ref, size_t n) {
    if (!cJSON_IsArray(ref) || (size_t)cJSON_GetArraySize(ref) != n) return INFINITY;
    double md = 0, mr = 1e-30;
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ref) {
        double d = fabs(a[i] - e->valuedouble);
        md = d > md || isnan(d) ? (isnan(d) ? INFINITY : d) : md;
        mr = fmax(mr, fabs(e->valuedouble));
        i++;
    }
    return md / mr;
}

TT_TEST(distill_step_vs_torch) {
    char *p = fx("distill.json"), *text = NULL;
    cJSON *j = NULL;
    if (tp_read_file(p, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    free(text);
    free(p);
    if (!j) {
        tt_skip("no fixture distill/distill.json (run tests/ref/distill_ref.py)");
        return;
    }
    int B = (int)num(j, "B"), T = (int)num(j, "T");
    int32_t *tokens = ints(cJSON_GetObjectItem(j, "tokens"), (size_t)B * T);
    int32_t *targets = ints(cJSON_GetObjectItem(j, "targets"), (size_t)B * T);
    tp_model *teacher = load("teacher");
    const cJSON *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        tp_model *st = load(cJSON_GetObjectItem(c, "student")->valuestring), *grad = NULL;
        if (!teacher || !st || tp_model_alloc(&st->cfg, &grad) != TP_OK) break;
        tp_distill_cfg cfg;
        tp_distill_defaults(&cfg);
        const char *kind = cJSON_GetObjectItem(c, "kind")->valuestring;
        cfg.kd.kind = !strcmp(kind, "fkl") ? TP_KD_FKL : !strcmp(kind, "rkl") ? TP_KD_RKL : TP_KD_JSD;
        cfg.kd.tau = (float)num(c, "tau");
        cfg.kd.tau2 = (int)num(c, "tau2");
        cfg.kd.beta = (float)num(c, "beta");
        cfg.topk = (int)num(c, "topk");
        cfg.w_logits = (float)num(c, "w_logits");
        cfg.w_ce = (float)num(c, "w_ce");
        cfg.hid = !strcmp(cJSON_GetObjectItem(c, "hid")->valuestring, "mse") ? TP_HID_MSE : TP_HID_COSINE;
        const cJSON *pr;
        cJSON_ArrayForEach(pr, cJSON_GetObjectItem(c, "pairs")) {
            cfg.s_layer[cfg.n_pairs] = cJSON_GetArrayItem(pr, 0)->valueint;
            cfg.t_layer[cfg.n_pairs++] = cJSON_GetArrayItem(pr, 1)->valueint;
        }
        cfg.emb = (int)num(c, "emb");
        cfg.alpha = (float)num(c, "alpha");
        tp_adamw_cfg opt;
        tp_adamw_defaults(&opt);
        tp_distiller *d = NULL;
        tp_tape *tape = NULL;
        TT_CHECK(tp_distiller_new(teacher, st, &cfg, B, T, &opt, &d) == TP_OK, "%s: distiller: %s", name, tp_errmsg());
        TT_CHECK(tp_tape_alloc(&st->cfg, B, T, 0, &tape) == TP_OK, "tape: %s", tp_errmsg());
        if (!d || !tape) break;
        tp_train_hooks h;
        tp_distiller_hooks(d, &h);
        tp_rng rng;
        tp_rng_seed(&rng, 1);
        tp_train_micro mb = {0, 0, tokens, targets, B, T, &rng, NULL};
        tp_step_opts o;
        memset(&o, 0, sizeof o);
        o.targets = targets;
        TT_CHECK(h.prepare(h.user, &mb, &o) == TP_OK, "prepare: %s", tp_errmsg());
        double loss = 0;
        size_t nc = 0;
        TT_CHECK(tp_train_step(st, grad, tape, tokens, B, T, &o, &loss, &nc) == TP_OK, "step: %s", tp_errmsg());
        const float *dP = NULL;
        int ns = 0;
        if (tp_distiller_proj(d, &dP, &ns)) {
            double e = rel(dP, cJSON_GetObjectItem(c, "dP"), (size_t)ns * teacher->cfg.d_model * st->cfg.d_model);
            TT_CHECK(e <= 1e-4, "%s: projection gradient rel %.2e", name, e);
            tt_note("%s: %d projections, gradient rel %.2e", name, ns, e);
        }
        h.metrics(h.user, 1);
        tp_distill_losses L = tp_distiller_last(d);
        double kd = num(c, "kd"), ce = num(c, "ce"), inter = num(c, "inter"), alpha = num(c, "alpha");
        TT_CHECK(fabs(L.logits - kd) <= 1e-5 * fabs(kd) && fabs(L.ce * cfg.w_ce - ce * cfg.w_ce) <= 1e-5 * fabs(ce) &&
                     fabs(L.inter - inter) <= 1e-5 * fabs(inter) + 1e-9 && fabs(L.alpha - alpha) <= 1e-4 * fabs(alpha),
                 "%s: kd %.8g/%.8g ce %.8g/%.8g inter %.8g/%.8g alpha %.6g/%.6g", name, L.logits, kd, L.ce, ce, L.inter,
                 inter, L.alpha, alpha);
        double worst = 0;
        const char *wn = "";
        const cJSON *g;
        int n_t = 0;
        cJSON_ArrayForEach(g, cJSON_GetObjectItem(c, "grads")) {
            size_t n = 0;
            float *t = tp_model_tensor(grad, g->string, &n);
            double e = t ? rel(t, g, n) : INFINITY;
            if (e > worst) worst = e, wn = g->string;
            n_t++;
        }
        TT_CHECK(worst <= 1e-4, "%s: worst gradient %s rel %.2e", name, wn, worst);
        /* distill_ref.py writes every student gradient: all of tp_model_tensors, each once */
        TT_CHECK(n_t == tp_model_tensors(grad, NULL, 0), "%s: compared %d gradient tensors (expected %d)", name, n_t,
                 tp_model_tensors(grad, NULL, 0));
        tt_note("%s: %d student tensors, worst gradient rel %.2e (%s); kd %.6f inter %.6f alpha %.4f", name, n_t,
                worst, wn, L.logits, L.inter, L.alpha);
        tp_distiller_free(d);
        tp_tape_free(tape);
        tp_model_free(grad);
        tp_model_free(st);
        n_cases++;
    }
    /* tests/ref/distill_ref.py's CASES: narrow fkl, shallow jsd top-7, shallow rkl logits only */
    TT_CHECK(n_cases == 3, "compared %d distillation cases (expected 3)", n_cases);
    tp_model_free(teacher);
    free(tokens);
    free(targets);
    cJSON_Delete(j);
}

/* A student equal to its teacher: every divergence and state loss is 0, and so is the gradient. */
TT_TEST(distill_identical_student_zero) {
    tp_model *teacher = load("teacher"), *st = load("teacher"), *grad = NULL;
    if (!teacher || !st || tp_model_alloc(&st->cfg, &grad) != TP_OK) return;
    enum { B = 2, T = 9 };
    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) tokens[i] = (i * 37 + 5) % 97, targets[i] = TP_IGNORE_INDEX;
    tp_kd_kind kinds[3] = {TP_KD_FKL, TP_KD_RKL, TP_KD_JSD};
    for (int k = 0; k < 3; k++) {
        tp_distill_cfg cfg;
        tp_distill_defaults(&cfg);
        cfg.kd.kind = kinds[k];
        cfg.kd.tau = 2.0f;
        cfg.hid = k == 1 ? TP_HID_MSE : TP_HID_COSINE;
        cfg.alpha = 1.0f;
        tp_distill_auto_map(&cfg, st->cfg.n_layers, teacher->cfg.n_layers, NULL);
        cfg.emb = 1;
        tp_distiller *d = NULL;
        tp_tape *tape = NULL;
        if (tp_distiller_new(teacher, st, &cfg, B, T, NULL, &d) || tp_tape_alloc(&st->cfg, B, T, 0, &tape)) {
            TT_CHECK(0, "setup: %s", tp_errmsg());
            return;
        }
        tp_train_hooks h;
        tp_distiller_hooks(d, &h);
        tp_rng rng;
        tp_rng_seed(&rng, 1);
        tp_train_micro mb = {0, 0, tokens, targets, B, T, &rng, NULL};
        tp_step_opts o;
        memset(&o, 0, sizeof o);
        memset(grad->params, 0, grad->n_params * sizeof(float));
        h.prepare(h.user, &mb, &o);
        double loss = 1;
        tp_train_step(st, grad, tape, tokens, B, T, &o, &loss, NULL);
        h.metrics(h.user, 1);
        tp_distill_losses L = tp_distiller_last(d);
        float mg = 0;
        for (size_t i = 0; i < grad->n_params; i++) mg = fmaxf(mg, fabsf(grad->params[i]));
        TT_CHECK(fabs(loss) < 1e-6 && fabs(L.inter) < 1e-6 && mg < 1e-5f,
                 "kind %d: loss %.3g inter %.3g max |grad| %.3g", k, loss, L.inter, mg);
        tp_distiller_free(d);
        tp_tape_free(tape);
    }
    tp_model_free(grad);
    tp_model_free(st);
    tp_model_free(teacher);
}

TT_TEST(distill_map_parsing) {
    tp_distill_cfg c;
    tp_distill_defaults(&c);
    TT_CHECK(tp_distill_parse_map(&c, "29:23,28:22", 30, 30) == TP_OK && c.n_pairs == 2 && c.s_layer[0] == 29 &&
                 c.t_layer[1] == 22,
             "29:23,28:22");
    TT_CHECK(tp_distill_parse_map(&c, "30:1", 30, 30) == TP_ERR_ARG && strstr(tp_errmsg(), "0..29"), "range: %s",
             tp_errmsg());
    TT_CHECK(tp_distill_parse_map(&c, "3-4", 30, 30) == TP_ERR_ARG, "syntax");
    tp_distill_auto_map(&c, 20, 30, NULL);
    TT_CHECK(c.n_pairs == 20 && c.t_layer[19] == 29 && c.t_layer[0] == 1 && c.t_layer[9] == 14,
             "proportional map: last %d first %d mid %d", c.t_layer[19], c.t_layer[0], c.t_layer[9]);
    int kept[3] = {0, 5, 9};
    tp_distill_auto_map(&c, 3, 10, kept);
    TT_CHECK(c.n_pairs == 3 && c.t_layer[1] == 5 && c.t_layer[2] == 9, "map from kept layers");
}

/* taper distill --keep-mask: a sparse student stays exactly sparse through distillation
 * (masked weights zero after every update and in the export) while the others train. */
#include <sys/wait.h>
#include <unistd.h>
#include "taper/sparsify.h"


TT_TEST(distill_cli_keep_mask) {
    const char *bin = getenv("TAPER_BIN");
    if (!bin) {
        tt_skip("TAPER_BIN not set (run through make test)");
        return;
    }
    char *model = tt_path(tt_fixtures_dir(), "sparsify/model"), *mask = tt_path(tt_fixtures_dir(), "sparsify/wanda_50.tpmask");
    char *dir = tt_path(tt_tmp_dir(), "keepmask"), *text = tt_path(dir, "text.txt"), cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    tt_sh("%s", cmd);
    tt_fox_text(text, 40);
    snprintf(cmd, sizeof cmd, "TAPER_PROGRESS=0 '%s' tokenize '%s' -o '%s/shards' '%s' > '%s/log' 2>&1", bin, model, dir,
             text, dir);
    TT_CHECK(tt_sh("%s", cmd) == 0, "tokenize");
    snprintf(cmd, sizeof cmd,
             "TAPER_PROGRESS=0 '%s' distill '%s' --teacher '%s' --data '%s/shards' --steps 4 --seq 16 --batch 2 "
             "--lr 1e-2 --warmup 0 --run-dir '%s/run' --keep-mask '%s' --export-hf '%s/out' --threads 1 >> '%s/log' 2>&1",
             bin, model, model, dir, dir, mask, dir, dir);
    TT_CHECK(tt_sh("%s", cmd) == 0, "distill --keep-mask (log in %s/log)", dir);
    char *out = tt_path(dir, "out");
    tp_model *m = NULL, *orig = NULL;
    tp_mask *mk = NULL;
    if (tp_model_load_hf(out, &m) == TP_OK && tp_model_load_hf(model, &orig) == TP_OK && tp_mask_load(mask, &mk) == TP_OK) {
        long long viol = tp_mask_violations(m, mk);
        size_t pruned = 0, changed = 0;
        for (int i = 0; i < mk->n; i++) pruned += mk->t[i].n_pruned;
        for (size_t i = 0; i < m->n_params; i++) changed += m->params[i] != orig->params[i];
        TT_CHECK(viol == 0, "exported student: %lld masked weights are not zero", viol);
        TT_CHECK(changed > pruned + 1000, "training changed %zu weights beyond the %zu masked ones", changed - pruned,
                 pruned);
        tt_note("%zu weights masked and zero after 4 KD steps at lr 1e-2; %zu others changed", pruned, changed - pruned);
    } else {
        TT_CHECK(0, "loading the export / mask: %s", tp_errmsg());
    }
    tp_model_free(m);
    tp_model_free(orig);
    tp_mask_free(mk);
    free(out);
    free(model);
    free(mask);
    free(dir);
    free(text);
}

/* taper compress end to end on a tiny model (depth axis: 2 -> 1 layer), then the same command
 * again: every stage is skipped and the report is rebuilt. */
TT_TEST(distill_cli_compress_pipeline) {
    const char *bin = getenv("TAPER_BIN");
    if (!bin) {
        tt_skip("TAPER_BIN not set (run through make test)");
        return;
    }
    char *model = tt_path(tt_fixtures_dir(), "sparsify/model"), *dir = tt_path(tt_tmp_dir(), "compress");
    char *text = tt_path(dir, "text.txt"), cmd[8192], run_cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    tt_sh("%s", cmd);
    tt_fox_text(text, 60);
    snprintf(run_cmd, sizeof run_cmd,
             "TAPER_PROGRESS=0 '%s' compress '%s' --target-params 43152 --axes depth -o '%s/run' --sdg-samples 8 "
             "--sdg-tokens 40 --calib-samples 4 --calib-seq 16 --depth-samples 2 --steps 3 --seq 16 --batch 2 "
             "--ckpt-every 2 --eval-text '%s' --eval-chunks 2 --eval-ctx 16 --tasks '' --threads 1",
             bin, model, dir, text);
    snprintf(cmd, sizeof cmd, "%s > '%s/out1' 2>&1", run_cmd, dir);
    TT_CHECK(tt_sh("%s", cmd) == 0, "compress runs (output in %s/out1)", dir);
    const char *files[] = {"run/report.md", "run/importance.json", "run/pruned/prune_plan.json", "run/student/config.json",
                           "run/teacher-ppl.json", "run/student-ppl.json", "run/distill/metrics.jsonl", "run/sdg/sdg-00000.tpt"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *p = tt_path(dir, files[i]);
        TT_CHECK(access(p, F_OK) == 0, "%s written", files[i]);
        free(p);
    }
    char *st = tt_path(dir, "run/student");
    tp_model *m = NULL;
    TT_CHECK(tp_model_load_hf(st, &m) == TP_OK && m->cfg.n_layers == 1, "the student has 1 layer");
    tp_model_free(m);
    free(st);
    snprintf(cmd, sizeof cmd, "%s > '%s/out2' 2>&1", run_cmd, dir);
    TT_CHECK(tt_sh("%s", cmd) == 0, "the same command again");
    char *o2 = tt_path(dir, "out2"), *t2 = NULL;
    if (tp_read_file(o2, &t2, NULL) == TP_OK) {
        int skipped = 0;
        for (const char *p = t2; (p = strstr(p, "done earlier, skipped")); p++) skipped++;
        TT_CHECK(skipped == 7 && !strstr(t2, "compress: [distill] running"), "rerun: %d stages skipped, nothing rerun",
                 skipped);
    }
    free(t2);
    free(o2);
    free(model);
    free(dir);
    free(text);
}

/* The contrastive term inside the distillation step: its loss equals tp_kd_contrastive of the
 * student's logits with the candidates tp_kd_pick draws from the teacher's top-k under the
 * micro-batch seed (the first draw of the trainer RNG, rows b*T+t), and the gradient that reaches
 * the weights matches central finite differences of the step's loss. */
static double contrastive_step(tp_model *teacher, tp_model *st, tp_model *grad, const tp_distill_cfg *cfg,
                               const int32_t *tokens, const int32_t *targets, int B, int T) {
    tp_distiller *d = NULL;
    tp_tape *tape = NULL;
    double loss = NAN;
    if (tp_distiller_new(teacher, st, cfg, B, T, NULL, &d) == TP_OK && tp_tape_alloc(&st->cfg, B, T, 0, &tape) == TP_OK) {
        tp_train_hooks h;
        tp_distiller_hooks(d, &h);
        tp_rng rng;
        tp_rng_seed(&rng, 21);
        tp_train_micro mb = {0, 0, tokens, targets, B, T, &rng, NULL};
        tp_step_opts o;
        memset(&o, 0, sizeof o);
        memset(grad->params, 0, grad->n_params * sizeof(float));
        if (h.prepare(h.user, &mb, &o) != TP_OK || tp_train_step(st, grad, tape, tokens, B, T, &o, &loss, NULL) != TP_OK)
            loss = NAN;
    }
    tp_distiller_free(d);
    tp_tape_free(tape);
    return loss;
}

TT_TEST(distill_contrastive_step) {
    tp_model *teacher = load("teacher"), *st = load("shallow"), *grad = NULL, *scratch = NULL;
    if (!teacher || !st || tp_model_alloc(&st->cfg, &grad) || tp_model_alloc(&st->cfg, &scratch)) return;
    enum { B = 2, T = 7, K = 8, NEG = 4 };
    const size_t N = (size_t)B * T, V = (size_t)st->cfg.vocab;
    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) tokens[i] = (i * 29 + 3) % 97, targets[i] = (i * 31 + 1) % 97;
    tp_distill_cfg cfg;
    tp_distill_defaults(&cfg);
    cfg.w_logits = 0;
    cfg.w_contrast = 1;
    cfg.negatives = NEG;
    cfg.topk = K;
    cfg.kd.tau = 1.5f;
    cfg.kd.tau2 = 1;
    double loss = contrastive_step(teacher, st, grad, &cfg, tokens, targets, B, T);
    /* independent: both models' logits, the same seed, the documented draws */
    float *tl = malloc(N * V * sizeof *tl), *sl = malloc(N * V * sizeof *sl);
    tp_forward(teacher, tokens, B, T, NULL, tl, 0);
    tp_forward(st, tokens, B, T, NULL, sl, 0);
    tp_rng rng;
    tp_rng_seed(&rng, 21);
    uint64_t seed = tp_rng_u64(&rng);
    int32_t idx[K], cand[N * (NEG + 1)];
    float lp[K];
    for (size_t r = 0; r < N; r++) {
        tp_kd_topk(tl + r * V, V, K, cfg.kd.tau, idx, lp);
        tp_kd_pick(lp, idx, K, 1.0, NEG, seed, r, cand + r * (NEG + 1));
    }
    double ref = tp_kd_contrastive(&cfg.kd, sl, V, cand, NEG + 1, N, 1.0f, NULL) / (double)N;
    TT_CHECK(isfinite(loss) && fabs(loss - ref) <= 1e-5 * fabs(ref), "step loss %.9g vs independent %.9g", loss, ref);
    /* finite differences on 16 weights spread over the model */
    double worst = 0, gmax = 0;
    for (int i = 0; i < 16; i++) {
        size_t p = ((size_t)i * 104729u + 17u) % st->n_params;
        float w = st->params[p], h = 1e-2f;
        st->params[p] = w + h;
        double lp_ = contrastive_step(teacher, st, scratch, &cfg, tokens, targets, B, T);
        st->params[p] = w - h;
        double lm_ = contrastive_step(teacher, st, scratch, &cfg, tokens, targets, B, T);
        st->params[p] = w;
        double fd = (lp_ - lm_) / (2.0 * h);
        worst = fmax(worst, fabs(fd - grad->params[p]));
        gmax = fmax(gmax, fabs(grad->params[p]));
    }
    TT_CHECK(worst < 5e-4 && gmax > 1e-3, "max |fd - grad| %.2e over 16 weights (max |grad| %.2e)", worst, gmax);
    tt_note("contrastive step (top-8, 4 negatives, tau 1.5, tau^2): loss %.6f = independent %.6f; fd vs grad %.1e "
            "(max |grad| %.1e)", loss, ref, worst, gmax);
    /* more negatives than the pool has */
    tp_distiller *d = NULL;
    cfg.topk = 0;
    cfg.negatives = 97;
    TT_CHECK(tp_distiller_new(teacher, st, &cfg, B, T, NULL, &d) == TP_ERR_ARG && strstr(tp_errmsg(), "1..96"),
             "97 negatives of a 97-token vocabulary refused: %s", tp_errmsg());
    cfg.topk = 8;
    cfg.negatives = 8;
    TT_CHECK(tp_distiller_new(teacher, st, &cfg, B, T, NULL, &d) == TP_ERR_ARG &&
                 strstr(tp_errmsg(), "raise topk or lower negatives"),
             "8 negatives from a top-8 refused: %s", tp_errmsg());
    free(tl);
    free(sl);
    tp_model_free(grad);
    tp_model_free(scratch);
    tp_model_free(st);
    tp_model_free(teacher);
}

/* Learned projections survive a checkpoint: distilling the narrow student (width 24) from the
 * teacher (40) with intermediate and embedding losses, 6 updates in one go equal 3 updates, a
 * checkpoint and 3 resumed ones, bit for bit, in the weights and in the projections (which a
 * resume used to restart from their initial value). A plain run may not resume that checkpoint. */
static tp_status proj_batch(void *user, long step, int micro, int32_t *tokens, int32_t *targets, int B, int T) {
    (void)user;
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)((step * 131 + micro * 17 + i * 37 + i / 5) % 96) + 1;
        targets[i] = (int32_t)((step * 7 + i * 29 + 3) % 96) + 1;
    }
    return TP_OK;
}

static void proj_cfg(tp_train_cfg *cfg, long steps, const char *run_dir, int resume) {
    tp_train_cfg_defaults(cfg);
    cfg->steps = steps;
    cfg->B = 2;
    cfg->T = 11;
    cfg->accum = 2;
    cfg->opt.lr = 2e-2f;
    cfg->opt.warmup_steps = 1;
    cfg->opt.total_steps = 6;
    cfg->val_every = -1;
    cfg->ckpt_every = 3;
    cfg->keep = 0;
    cfg->run_dir = run_dir;
    cfg->resume = resume;
    cfg->quiet = 1;
}

static tp_status proj_run(const tp_model *teacher, const char *run_dir, long steps, int resume, tp_model **out,
                          float **proj, size_t *n_proj) {
    tp_model *st = load("narrow");
    if (!st) return TP_ERR_IO;
    tp_train_cfg cfg;
    proj_cfg(&cfg, steps, run_dir, resume);
    tp_distill_cfg dc;
    tp_distill_defaults(&dc);
    tp_distill_auto_map(&dc, st->cfg.n_layers, teacher->cfg.n_layers, NULL);
    dc.emb = 1;
    tp_distiller *d = NULL;
    tp_status s = tp_distiller_new(teacher, st, &dc, cfg.B, cfg.T, &cfg.opt, &d);
    if (!s) {
        tp_train_hooks h;
        tp_distiller_hooks(d, &h);
        tp_train_data data = {NULL, proj_batch, NULL};
        tp_train_result r;
        s = tp_train_run(st, &cfg, &data, &h, &r);
        tp_train_result_free(&r);
        int ns = 0;
        const float *P = tp_distiller_proj(d, NULL, &ns);
        *n_proj = (size_t)ns * (size_t)teacher->cfg.d_model * (size_t)st->cfg.d_model;
        *proj = P ? malloc(*n_proj * sizeof(float)) : NULL;
        if (*proj) memcpy(*proj, P, *n_proj * sizeof(float));
    }
    tp_distiller_free(d);
    if (s) {
        tp_model_free(st);
        st = NULL;
    }
    *out = st;
    return s;
}

TT_TEST(distill_projections_resume_exactly) {
    tp_model *teacher = load("teacher");
    if (!teacher) return;
    char *ra = tt_path(tt_tmp_dir(), "proj_run_a"), *rb = tt_path(tt_tmp_dir(), "proj_run_b"), cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' && mkdir -p '%s' '%s'", ra, rb, ra, rb);
    tt_sh("%s", cmd);
    tp_model *a = NULL, *b = NULL, *b0 = NULL;
    float *pa = NULL, *pb = NULL, *pb0 = NULL;
    size_t na = 0, nb = 0, nb0 = 0;
    TT_CHECK(proj_run(teacher, ra, 6, 0, &a, &pa, &na) == TP_OK, "6 updates: %s", tp_errmsg());
    TT_CHECK(proj_run(teacher, rb, 3, 0, &b0, &pb0, &nb0) == TP_OK, "3 updates: %s", tp_errmsg());
    TT_CHECK(proj_run(teacher, rb, 6, 1, &b, &pb, &nb) == TP_OK, "resumed to 6: %s", tp_errmsg());
    if (a && b && b0 && pa && pb && pb0 && na == nb && na == nb0 && na > 0) {
        size_t diff = 0, pdiff = 0, pmoved = 0;
        for (size_t i = 0; i < a->n_params; i++) diff += memcmp(&a->params[i], &b->params[i], sizeof(float)) != 0;
        for (size_t i = 0; i < na; i++) {
            pdiff += memcmp(&pa[i], &pb[i], sizeof(float)) != 0;
            pmoved += pa[i] != pb0[i];
        }
        TT_CHECK(diff == 0 && pdiff == 0 && pmoved > na / 2,
                 "resumed run: %zu of %zu weights and %zu of %zu projection entries differ (%zu entries moved in "
                 "updates 4-6)",
                 diff, a->n_params, pdiff, na, pmoved);
        /* a plain training run may not take over the distiller's checkpoint */
        tp_train_cfg cfg;
        proj_cfg(&cfg, 7, rb, 1);
        tp_train_data data = {NULL, proj_batch, NULL};
        tp_status s = tp_train_run(b, &cfg, &data, NULL, NULL);
        TT_CHECK(s == TP_ERR_ARG && strstr(tp_errmsg(), "extra training state"), "plain resume refused: %s",
                 tp_errmsg());
    } else {
        TT_CHECK(0, "runs incomplete (projection sizes %zu %zu %zu)", na, nb, nb0);
    }
    tp_model_free(a);
    tp_model_free(b);
    tp_model_free(b0);
    free(pa);
    free(pb);
    free(pb0);
    free(ra);
    free(rb);
    tp_model_free(teacher);
}

/* tp_distill_run from C (no CLI): the narrow student from the teacher with intermediate and
 * embedding losses (learned projections, checkpointed), on a shard written here. A 6-update run
 * in one call equals a run stopped on request after update 1 (the stop flag set before the call),
 * resumed to 3, then to 6: same logged losses, and the final checkpoints hold the same bytes
 * (weights, Adam moments, projections) apart from the recorded wall time. */
static uint8_t *ckpt_data(const char *path, size_t *n) {
    char *b = NULL;
    size_t len = 0;
    *n = 0;
    if (tp_read_file(path, &b, &len) != TP_OK || len < 48) {
        free(b);
        return NULL;
    }
    uint64_t jl;
    memcpy(&jl, b + 16, 8);
    size_t off = (32 + (size_t)jl + 63) / 64 * 64;
    if (off + 16 > len) {
        free(b);
        return NULL;
    }
    *n = len - 16 - off; /* params, m, v, extra state; not the checksum, which covers the JSON too */
    uint8_t *d = malloc(*n);
    if (d) memcpy(d, b + off, *n);
    free(b);
    return d;
}

static int metric_losses(const char *run_dir, double *loss, int cap) {
    char *p = tt_path(run_dir, "metrics.jsonl"), *text = NULL;
    int n = 0;
    if (tp_read_file(p, &text, NULL) == TP_OK)
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            cJSON *j = cJSON_Parse(line);
            const cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "loss");
            if (cJSON_IsNumber(l) && n < cap) loss[n++] = l->valuedouble;
            cJSON_Delete(j);
        }
    free(text);
    free(p);
    return n;
}

TT_TEST(distill_job_stop_and_resume_exactly) {
    char *dir = tt_path(tt_tmp_dir(), "distill_job"), *data = tt_path(dir, "data.tpt"), cmd[1024];
    char *ra = tt_path(dir, "a"), *rb = tt_path(dir, "b"), *teacher = fx("teacher"), *student = fx("narrow");
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    tt_sh("%s", cmd);
    enum { DOCS = 12 };
    uint32_t tok[DOCS * 60];
    uint64_t starts[DOCS];
    size_t n = 0;
    for (int d = 0; d < DOCS; d++) {
        starts[d] = n;
        for (int i = 0; i < 40 + d; i++) tok[n++] = 3 + (uint32_t)((d * 31 + i * 7 + i / 3) % 90);
    }
    TT_CHECK(tp_shard_write(data, tok, n, starts, DOCS, 97, 1, 2) == TP_OK, "shard: %s", tp_errmsg());
    tp_train_job j;
    tp_train_job_default(&j);
    j.model = student;
    j.data = data;
    j.steps = 6;
    j.seq = 12;
    j.batch = 2;
    j.accum = 2;
    j.lr = 1e-2f;
    j.min_lr = 1e-3f;
    j.warmup = 1;
    j.val_every = 3;
    j.val_batches = 2;
    j.val_frac = 0.1f;
    j.ckpt_every = 3;
    j.keep = 0;
    j.quiet = 1;
    tp_distill_job d;
    tp_distill_job_default(&d);
    d.teacher = teacher;
    d.inter = "mse";
    d.emb_loss = 1;
    d.ce_weight = 0.5f;
    tp_train_job_result res;
    tp_set_log(NULL, NULL); /* the distiller's line on every call; quiet covers the loop's only */

    j.run_dir = ra;
    tp_status s = tp_distill_run(&j, &d, &res);
    TT_CHECK(s == TP_OK && res.trained && res.r.step == 6 && !res.r.stopped, "6 updates in one call: %s",
             s ? tp_errmsg() : "ok");
    tp_train_job_result_free(&res);
    char *sp = tt_path(ra, "summary.json"), *ap = tt_path(ra, "args.json");
    cJSON *sum = tt_read_json(sp), *args = tt_read_json(ap);
    const cJSON *cmdj = cJSON_GetObjectItemCaseSensitive(args, "command");
    TT_CHECK(sum && cJSON_GetObjectItemCaseSensitive(sum, "step")->valuedouble == 6 && cJSON_IsString(cmdj) &&
                 !strcmp(cmdj->valuestring, "distill") && cJSON_GetObjectItemCaseSensitive(args, "distill"),
             "summary.json says step 6, args.json command distill with its distill member");
    cJSON_Delete(sum);
    cJSON_Delete(args);
    free(sp);
    free(ap);

    volatile sig_atomic_t stop = 15; /* as a signal handler would have left it */
    j.run_dir = rb;
    j.stop = &stop;
    s = tp_distill_run(&j, &d, &res);
    TT_CHECK(s == TP_OK && res.trained && res.r.stopped && res.r.step == 1 && res.stop_signal == 15,
             "a set stop flag: stopped after update %ld (signal %d): %s", res.r.step, res.stop_signal,
             s ? tp_errmsg() : "ok");
    tp_train_job_result_free(&res);
    j.stop = NULL;
    s = tp_distill_run(&j, &d, &res); /* no resume: the run dir holds a checkpoint */
    TT_CHECK(s == TP_ERR_ARG && strstr(tp_errmsg(), "resume"), "restarting over checkpoints is refused: %s",
             tp_errmsg());
    tp_train_job_result_free(&res);
    j.resume = 1;
    j.steps = 3;
    s = tp_distill_run(&j, &d, &res);
    TT_CHECK(s == TP_OK && res.r.step_start == 1 && res.r.step == 3 && res.r.resumed_from, "resumed 1 -> 3: %s",
             s ? tp_errmsg() : "ok");
    tp_train_job_result_free(&res);
    j.steps = 6;
    s = tp_distill_run(&j, &d, &res);
    TT_CHECK(s == TP_OK && res.r.step_start == 3 && res.r.step == 6, "resumed 3 -> 6: %s", s ? tp_errmsg() : "ok");
    tp_train_job_result_free(&res);
    tp_distill_job other = d;
    other.tau = 2;
    j.steps = 7;
    s = tp_distill_run(&j, &other, &res);
    TT_CHECK(s == TP_ERR_ARG && strstr(tp_errmsg(), "refusing to resume") && strstr(tp_errmsg(), "distill"),
             "resume with another tau is refused: %s", tp_errmsg());
    tp_train_job_result_free(&res);
    tp_log_default();

    char *ca = tt_path(ra, "ckpt-00000006.tpc"), *cb = tt_path(rb, "ckpt-00000006.tpc");
    size_t na = 0, nb = 0;
    uint8_t *da = ckpt_data(ca, &na), *db = ckpt_data(cb, &nb);
    TT_CHECK(da && db && na == nb && na > 0 && !memcmp(da, db, na),
             "final checkpoints: %zu and %zu bytes of weights, moments and projections, equal: %d", na, nb,
             da && db && na == nb && !memcmp(da, db, na));
    double la[8], lb[8];
    int n_a = metric_losses(ra, la, 8), n_b = metric_losses(rb, lb, 8);
    TT_CHECK(n_a == 6 && n_b == 6 && !memcmp(la, lb, sizeof la[0] * 6), "logged losses: %d and %d lines, equal",
             n_a, n_b);
    free(da);
    free(db);
    free(ca);
    free(cb);
    free(dir);
    free(data);
    free(ra);
    free(rb);
    free(teacher);
    free(student);
}
