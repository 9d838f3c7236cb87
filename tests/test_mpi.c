/* Data parallelism over MPI (issue 16): `mpirun -np 2 taper train|distill` against one process
 * with the same global batch, two identical MPI runs bit for bit, a rank killed mid-run, resume,
 * and the refusal of another rank count; the deterministic sum of the comm layer itself.
 *
 * The bound for "same weights as one process": one process accumulates the second micro-batch's
 * weight gradients into the first's inside the GEMMs (beta = 1), two ranks add two finished
 * halves, so the gradients differ by rounding (a few ulp of each element); AdamW turns that into
 * update differences of the same relative size, lr x 1e-7 or so per step. Over the runs here the
 * weights agree to max|a-b| <= 1e-6 x max|a|, and the logged losses to 1e-6 relative. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "taper/comm.h"
#include "taper/compress.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/util.h"
#include "tt.h"

/* Open MPI refuses root unless told; oversubscription lets 2 ranks run on a 1-core box; the
 * single-copy mechanism needs ptrace rights that containers often lack. All set here, for the
 * tests, so that users never have to learn them. */
#define MPIRUN_ENV                                                                                   \
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 " \
    "OMPI_MCA_btl_vader_single_copy_mechanism=none TAPER_PROGRESS=0 OMP_WAIT_POLICY=PASSIVE"

/* A sanitized taper under mpirun: Open MPI keeps allocations past MPI_Finalize in components it
 * has unloaded by then (LeakSanitizer sees "<unknown module>" frames, which no suppression can
 * name), so leak checking is off for these runs only. The same code paths run in one process in
 * the other tests, where leaks are checked; everything else ASan/UBSan checks stays on. */
static const char *lsan_env(void) { return "LSAN_OPTIONS=detect_leaks=0"; }

/* 1 when mpirun is on PATH and TAPER_BIN was built with MPI; else skips with the reason. */
static int have_mpi(void) {
    if (!tt_bin()) {
        tt_skip("TAPER_BIN not set (run through make test)");
        return 0;
    }
    if (tt_sh("command -v mpirun > /dev/null 2>&1") != 0) {
        tt_skip("mpirun not found (make deps installs openmpi-bin)");
        return 0;
    }
    char *out = NULL;
    tt_taper("--version", &out);
    int yes = strstr(out, "mpi yes") != NULL;
    free(out);
    if (!yes) tt_skip("%s was built without MPI (make deps installs libopenmpi-dev; make config shows MPI=1)", tt_bin());
    return yes;
}

/* The distillation fixtures' vocabulary (97 ids) as Markov-chain documents a model can learn. */
static const char *g_data;
static const char *data_fixture(void) {
    if (g_data) return g_data;
    char *data = tt_path(tt_tmp_dir(), "mpi_data.tpt");
    if (!tt_markov_shard(data, 80, 40, 110, 90, 5, 97, 29)) {
        free(data);
        return NULL;
    }
    g_data = data;
    return g_data;
}

static char *fixture_model(const char *name) {
    char *d = tt_path(tt_fixtures_dir(), "distill"), *p = tt_path(d, name);
    free(d);
    return p;
}

/* Runs taper ARGS (np 0: plainly; else under mpirun -np np), output into dir/log.NAME; returns
 * the exit status and the log text in *log (malloc'd, may be NULL). */
static int run(int np, const char *dir, const char *name, const char *args, char **log) {
    char *lp = NULL;
    if (asprintf(&lp, "%s/log.%s", dir, name) < 0) return -1;
    int rc;
    if (np > 0) rc = tt_sh("%s %s mpirun -np %d %s %s > '%s' 2>&1", MPIRUN_ENV, lsan_env(), np, tt_bin(), args, lp);
    else rc = tt_sh("TAPER_PROGRESS=0 OMP_WAIT_POLICY=PASSIVE %s %s > '%s' 2>&1", tt_bin(), args, lp);
    if (log) {
        *log = NULL;
        if (tp_read_file(lp, log, NULL) != TP_OK) *log = strdup("");
    }
    free(lp);
    return rc;
}

static tp_model *load_export(const char *dir, const char *name) {
    char *p = tt_path(dir, name);
    tp_model *m = tt_load_hf(p);
    free(p);
    return m;
}

/* max|a-b| / max|a| over the parameters (-1 when the shapes differ). */
static double rel_diff(const tp_model *a, const tp_model *b) {
    if (!a || !b || a->n_params != b->n_params) return -1;
    double md = 0, ma = 0;
    for (size_t i = 0; i < a->n_params; i++) {
        double d = fabs((double)a->params[i] - (double)b->params[i]), x = fabs((double)a->params[i]);
        if (d > md) md = d;
        if (x > ma) ma = x;
    }
    return ma > 0 ? md / ma : md;
}

/* The "loss" of every training line of dir/run/metrics.jsonl into out (cap); returns the count. */
static int losses(const char *dir, const char *run_dir, double *out, int cap) {
    char *rd = tt_path(dir, run_dir), *p = tt_path(rd, "metrics.jsonl"), *text = NULL;
    int n = 0;
    if (tp_read_file(p, &text, NULL) == TP_OK) {
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line && n < cap; line = strtok_r(NULL, "\n", &save)) {
            cJSON *j = cJSON_Parse(line);
            const cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "loss");
            if (cJSON_IsNumber(l)) out[n++] = l->valuedouble;
            cJSON_Delete(j);
        }
    }
    free(text);
    free(p);
    free(rd);
    return n;
}

static char *fresh_dir(const char *name) {
    char *d = tt_path(tt_tmp_dir(), name);
    tt_sh("rm -rf '%s' && mkdir -p '%s'", d, d);
    return d;
}

/* One process with accum 2 vs two ranks with accum 1 (same global batch), then the same two
 * ranks again: bit-identical. cmd is "train MODEL ..." or "distill STUDENT --teacher ..." without
 * --accum, --run-dir and --export-hf; start names the fixture the run starts from. */
static void compare_runs(const char *what, const char *dir, const char *cmd, const char *start, int steps) {
    char args[4096];
    char *log = NULL;
    snprintf(args, sizeof args, "%s --accum 2 --run-dir '%s/one' --export-hf '%s/one.out'", cmd, dir, dir);
    int rc = run(0, dir, "one", args, &log);
    TT_CHECK(rc == 0, "%s, one process (rc %d): %.2000s", what, rc, log);
    free(log);
    snprintf(args, sizeof args, "%s --accum 1 --run-dir '%s/mpa' --export-hf '%s/mpa.out'", cmd, dir, dir);
    rc = run(2, dir, "mpa", args, &log);
    TT_CHECK(rc == 0, "%s, mpirun -np 2 (rc %d): %.2000s", what, rc, log);
    TT_CHECK(strstr(log, "x 2 ranks (mpi)") != NULL, "%s: the log names the 2 ranks: %.1000s", what, log);
    free(log);
    snprintf(args, sizeof args, "%s --accum 1 --run-dir '%s/mpb' --export-hf '%s/mpb.out'", cmd, dir, dir);
    rc = run(2, dir, "mpb", args, &log);
    TT_CHECK(rc == 0, "%s, mpirun -np 2 again (rc %d): %.2000s", what, rc, log);
    free(log);

    tp_model *one = load_export(dir, "one.out"), *a = load_export(dir, "mpa.out");
    tp_model *init = NULL;
    double rd = rel_diff(one, a);
    TT_CHECK(rd >= 0 && rd <= 1e-6, "%s: 2 ranks vs one process: max|diff|/max|w| = %.3g (bound 1e-6)", what, rd);
    char *pa = tt_path(dir, "mpa.out/model.safetensors"), *pb = tt_path(dir, "mpb.out/model.safetensors");
    TT_CHECK(tt_same_file(pa, pb), "%s: two identical 2-rank runs differ (%s vs %s)", what, pa, pb);
    double lo[64], la[64], lb[64];
    int no = losses(dir, "one", lo, 64), na = losses(dir, "mpa", la, 64), nb = losses(dir, "mpb", lb, 64);
    TT_CHECK(no == steps && na == steps && nb == steps, "%s: %d / %d / %d logged steps, want %d", what, no, na, nb,
             steps);
    double worst = 0;
    int same = 1;
    for (int i = 0; i < no && i < na && i < nb; i++) {
        double r = fabs(lo[i] - la[i]) / fabs(lo[i]);
        if (r > worst) worst = r;
        same &= la[i] == lb[i];
    }
    TT_CHECK(worst <= 1e-6, "%s: losses of 2 ranks vs one process differ by %.3g relative", what, worst);
    TT_CHECK(same, "%s: the losses of two identical 2-rank runs differ", what);
    /* the run moved the weights: equality is not that of two untouched copies */
    char *src = fixture_model(start);
    if (tp_model_load_hf(src, &init) == TP_OK && a) {
        double moved = rel_diff(init, a);
        TT_CHECK(moved > 1e-3, "%s: training moved the weights by only %.3g relative", what, moved);
        tt_note("%s: %d steps; 2 ranks vs 1 process: weights %.2g, losses %.2g relative; training moved them %.2g", what,
                steps, rd, worst, moved);
    }
    free(src);
    tp_model_free(init);
    tp_model_free(one);
    tp_model_free(a);
    free(pa);
    free(pb);
}

TT_TEST(mpi_train_equals_one_process) {
    if (!have_mpi()) return;
    const char *data = data_fixture();
    if (!data) return;
    char *dir = fresh_dir("mpi_train"), *model = fixture_model("teacher"), cmd[2048];
    snprintf(cmd, sizeof cmd,
             "train '%s' --data '%s' --steps 10 --seq 32 --batch 2 --lr 3e-3 --min-lr 3e-4 --warmup 2 --clip 1 "
             "--weight-decay 0.1 --seed 3 --val-frac 0.1 --val-every 5 --val-batches 3 --ckpt-every 4 --threads 1",
             model, data);
    compare_runs("train", dir, cmd, "teacher", 10);
    /* validation: split over the ranks and summed, the same loss to rounding */
    free(dir);
    free(model);
}

TT_TEST(mpi_distill_equals_one_process) {
    if (!have_mpi()) return;
    const char *data = data_fixture();
    if (!data) return;
    char *dir = fresh_dir("mpi_distill"), *teacher = fixture_model("teacher"), *student = fixture_model("narrow");
    char cmd[2048];
    /* logits + intermediate (learned projections, 24 -> 40) + embedding + contrastive: every
     * piece of state the ranks must sum (projection gradients, loss terms, the RNG) */
    snprintf(cmd, sizeof cmd,
             "distill '%s' --teacher '%s' --data '%s' --steps 8 --seq 32 --batch 2 --lr 3e-3 --warmup 2 --clip 1 "
             "--seed 5 --val-frac 0.1 --val-every 4 --val-batches 2 --ckpt-every 4 --threads 1 --inter cosine "
             "--emb-loss --contrastive-weight 0.3 --negatives 8",
             student, teacher, data);
    compare_runs("distill", dir, cmd, "narrow", 8);
    free(dir);
    free(teacher);
    free(student);
}

/* The pid of the child of parent whose environment says OMPI_COMM_WORLD_RANK=rank, or -1. */
static pid_t rank_pid(pid_t parent, int rank) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    struct dirent *e;
    pid_t found = -1;
    char want[64];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    while ((e = readdir(d)) && found < 0) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        char p[300], buf[512];
        snprintf(p, sizeof p, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *rp = strrchr(buf, ')');
        int ppid = -1;
        if (!rp || sscanf(rp + 2, "%*c %d", &ppid) != 1 || ppid != parent) continue;
        snprintf(p, sizeof p, "/proc/%s/environ", e->d_name);
        static char env[1 << 16]; /* /proc files report size 0: read until the end */
        f = fopen(p, "r");
        if (!f) continue;
        size_t len = fread(env, 1, sizeof env - 1, f);
        fclose(f);
        env[len] = 0;
        for (size_t i = 0; i < len; i += strlen(env + i) + 1)
            if (!strcmp(env + i, want)) found = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    return found;
}

static int count_lines(const char *path) {
    char *t = NULL;
    int n = 0;
    if (tp_read_file(path, &t, NULL) == TP_OK)
        for (char *q = t; *q; q++) n += *q == '\n';
    free(t);
    return n;
}

TT_TEST(mpi_rank_killed_then_resume_is_exact) {
    if (!have_mpi()) return;
    const char *data = data_fixture();
    if (!data) return;
    char *dir = fresh_dir("mpi_kill"), *model = fixture_model("teacher"), cmd[2048], args[4096];
    snprintf(cmd, sizeof cmd,
             "train '%s' --data '%s' --steps 600 --seq 48 --batch 4 --accum 1 --lr 2e-3 --warmup 5 --clip 1 --seed 9 "
             "--val-frac 0.1 --val-every 100 --val-batches 2 --ckpt-every 7 --keep 2 --threads 1",
             model, data);
    /* the reference: uninterrupted */
    snprintf(args, sizeof args, "%s --run-dir '%s/ref' --export-hf '%s/ref.out'", cmd, dir, dir);
    char *log = NULL;
    int rc = run(2, dir, "ref", args, &log);
    TT_CHECK(rc == 0, "uninterrupted 2-rank run (rc %d): %.2000s", rc, log);
    free(log);

    /* the same, rank 1 SIGKILLed after some checkpoints */
    char full[8192], *runlog = tt_path(dir, "log.killed"), *metrics = NULL;
    snprintf(args, sizeof args, "%s --run-dir '%s/run' --export-hf '%s/run.out'", cmd, dir, dir);
    snprintf(full, sizeof full, "exec env %s %s mpirun -np 2 %s %s > '%s' 2>&1", MPIRUN_ENV, lsan_env(), tt_bin(), args,
             runlog);
    if (asprintf(&metrics, "%s/run/metrics.jsonl", dir) < 0) abort();
    pid_t mp = fork();
    if (mp == 0) {
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    double t0 = tp_time_s();
    while (count_lines(metrics) < 40 && tp_time_s() - t0 < 120) usleep(20000);
    pid_t victim = rank_pid(mp, 1);
    TT_CHECK(victim > 0, "rank 1 of mpirun %d not found", (int)mp);
    int lines = count_lines(metrics);
    double tk = tp_time_s();
    if (victim > 0) kill(victim, SIGKILL);
    int st = 0;
    pid_t w = 0;
    while ((w = waitpid(mp, &st, WNOHANG)) == 0 && tp_time_s() - tk < 30) usleep(20000);
    double took = tp_time_s() - tk;
    if (w == 0) {
        kill(mp, SIGKILL);
        waitpid(mp, &st, 0);
    }
    char *klog = NULL;
    if (tp_read_file(runlog, &klog, NULL) != TP_OK) klog = strdup("");
    TT_CHECK(w == mp && WIFEXITED(st) && WEXITSTATUS(st) != 0, "mpirun after SIGKILL of rank 1: %s (status %d)",
             w == mp ? "exited" : "still running after 30 s", st);
    TT_CHECK(took < 10, "the job took %.1f s to go down after the kill", took);
    TT_CHECK(strstr(klog, "signal 9") || strstr(klog, "Killed") || strstr(klog, "killed"),
             "mpirun's message names the kill: %.1500s", klog);
    int after = count_lines(metrics);
    TT_CHECK(after < 600, "the run was killed before its end (%d metric lines)", after);
    tt_note("rank 1 killed after %d metric lines; mpirun exited %d in %.2f s", lines,
            WIFEXITED(st) ? WEXITSTATUS(st) : -1, took);
    free(klog);

    /* another rank count is refused */
    snprintf(args, sizeof args, "%s --run-dir '%s/run' --resume --export-hf '%s/run.out'", cmd, dir, dir);
    rc = run(0, dir, "one_rank", args, &log);
    TT_CHECK(rc == 1 && strstr(log, "ranks") && strstr(log, "was 2"), "resume with 1 rank (rc %d): %.1500s", rc, log);
    free(log);
    /* resume under 2 ranks: bit-identical to the uninterrupted run */
    rc = run(2, dir, "resumed", args, &log);
    TT_CHECK(rc == 0 && strstr(log, "resumed from"), "2-rank resume (rc %d): %.2000s", rc, log);
    free(log);
    char *pa = tt_path(dir, "ref.out/model.safetensors"), *pb = tt_path(dir, "run.out/model.safetensors");
    TT_CHECK(tt_same_file(pa, pb), "resumed 2-rank run differs from the uninterrupted one (%s vs %s)", pa, pb);
    static double lr[700], lk[700];
    int nr = losses(dir, "ref", lr, 700), nk = losses(dir, "run", lk, 700), same = nr == nk && nr == 600;
    for (int i = 0; same && i < nr; i++) same = lr[i] == lk[i];
    TT_CHECK(same, "metrics of the resumed run: %d lines, %d uninterrupted, losses %s", nk, nr,
             same ? "equal" : "differ");
    free(pa);
    free(pb);
    free(runlog);
    free(metrics);
    free(dir);
    free(model);
}

/* The sum of the comm layer: in one process, the single world leaves buffers alone and shares
 * split n items as stated. */
TT_TEST(comm_single_and_shares) {
    tp_comm *w = tp_comm_world();
    TT_CHECK(tp_comm_size(w) == 1 && tp_comm_rank(w) == 0 && !strcmp(tp_comm_backend(w), "single"), "single world");
    float x[3] = {1, 2, 3};
    double y[2] = {4, 5};
    TT_CHECK(tp_comm_sum_f32(w, x, 3) == TP_OK && x[0] == 1 && x[2] == 3, "sum in one process");
    TT_CHECK(tp_comm_sum_f64(w, y, 2) == TP_OK && y[1] == 5, "sum f64 in one process");
    size_t total = 0, prev = 0;
    for (int r = 0; r < 3; r++) {
        size_t lo, hi;
        tp_comm_share(10, r, 3, &lo, &hi);
        TT_CHECK(lo == prev && hi - lo == (r == 0 ? 4u : 3u), "share %d of 10 over 3: [%zu, %zu)", r, lo, hi);
        total += hi - lo;
        prev = hi;
    }
    TT_CHECK(total == 10, "shares cover everything");
}

/* The cache of 2 (and 3) ranks is the same file as one process's: each rank computes whole
 * batches of the windows, the same rows one process batches together. Then distillation from it
 * under 2 ranks equals one process with accum 2. */
TT_TEST(mpi_teacher_cache_same_bytes_and_distill) {
    if (!have_mpi()) return;
    const char *data = data_fixture();
    if (!data) return;
    char *dir = fresh_dir("mpi_tcache"), *teacher = fixture_model("teacher"), *student = fixture_model("shallow");
    char args[4096], *log = NULL;
    const char *names[3] = {"one.tkc", "two.tkc", "three.tkc"};
    for (int np = 1; np <= 3; np++) {
        snprintf(args, sizeof args, "teacher-cache '%s' --data '%s' --seq 32 --topk 8 --val-frac 0.1 -o '%s/%s' --threads 1",
                 teacher, data, dir, names[np - 1]);
        int rc = run(np == 1 ? 0 : np, dir, names[np - 1], args, &log);
        TT_CHECK(rc == 0, "teacher-cache with %d rank(s) (rc %d): %.1500s", np, rc, log);
        free(log);
    }
    char *p1 = tt_path(dir, names[0]), *p2 = tt_path(dir, names[1]), *p3 = tt_path(dir, names[2]);
    TT_CHECK(tt_same_file(p1, p2) && tt_same_file(p1, p3), "caches of 1, 2 and 3 ranks are not the same bytes");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "distill '%s' --teacher-cache '%s' --data '%s' --steps 6 --seq 32 --batch 2 --lr 3e-3 --warmup 1 "
             "--seed 4 --val-frac 0.1 --val-every 3 --val-batches 2 --threads 1 --topk 8",
             student, p2, data);
    compare_runs("distill from a teacher cache", dir, cmd, "shallow", 6);
    free(p1);
    free(p2);
    free(p3);
    free(dir);
    free(teacher);
    free(student);
}

static double worst_rel(const double *a, const double *b, size_t n) {
    double w = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(a[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]) / (scale > 0 ? scale : 1);
        if (d > w || isnan(d)) w = isnan(d) ? INFINITY : d;
    }
    return w;
}

/* Importance scores of 2 ranks (each its share of the samples, accumulators merged) against one
 * process, loaded and streamed. The forwards batch other rows together than one process does, so
 * the activations may differ by float rounding; the bound is 1e-6 of each score array's scale. */
TT_TEST(mpi_importance_equals_one_process) {
    if (!have_mpi()) return;
    const char *model = tt_model_path();
    if (!model) {
        tt_skip("the default model is absent (make deps fetches it)");
        return;
    }
    char *text = tt_path(tt_data_dir(), "tinyshakespeare/input.txt");
    if (access(text, R_OK) != 0) {
        tt_skip("%s not found (TAPER_DATA)", text);
        free(text);
        return;
    }
    char *dir = fresh_dir("mpi_importance"), args[4096], *log = NULL;
    const char *common = "--samples 7 --seq-len 24 --depth-samples 3 --block 2 --batch 2";
    snprintf(args, sizeof args, "importance '%s' --data '%s' %s --threads 2 -o '%s/one.json'", model, text, common, dir);
    int rc = run(0, dir, "one", args, &log);
    TT_CHECK(rc == 0, "importance, one process (rc %d): %.1500s", rc, log);
    free(log);
    for (int streamed = 0; streamed < 2; streamed++) {
        const char *name = streamed ? "mpi_streamed" : "mpi";
        snprintf(args, sizeof args, "importance '%s' --data '%s' %s --threads 1 --stream=%s -o '%s/%s.json'", model,
                 text, common, streamed ? "on" : "off", dir, name);
        rc = run(2, dir, name, args, &log);
        TT_CHECK(rc == 0, "importance, 2 ranks%s (rc %d): %.1500s", streamed ? " streamed" : "", rc, log);
        free(log);
        char *pa = tt_path(dir, "one.json"), *pb = NULL;
        if (asprintf(&pb, "%s/%s.json", dir, name) < 0) abort();
        tp_importance *a = NULL, *b = NULL;
        if (tp_importance_load(pa, &a) == TP_OK && tp_importance_load(pb, &b) == TP_OK) {
            size_t L = (size_t)a->n_layers, nb = L - 1;
            double w[6] = {worst_rel(a->heads, b->heads, TP_AGG_PAIRS * L * (size_t)a->n_heads),
                           worst_rel(a->neurons, b->neurons, TP_AGG_PAIRS * L * (size_t)a->d_ff),
                           worst_rel(a->channels, b->channels, TP_AGG_PAIRS * (size_t)a->d_model),
                           worst_rel(a->block_influence, b->block_influence, L),
                           worst_rel(a->layer_loss, b->layer_loss, L),
                           worst_rel(a->block_loss, b->block_loss, nb)};
            double bl = fabs(a->base_loss - b->base_loss) / a->base_loss, worst = bl;
            for (int i = 0; i < 6; i++) worst = fmax(worst, w[i]);
            TT_CHECK(worst <= 1e-6 && b->n_samples == 7 && b->depth_samples == 3,
                     "%s: heads %.2g neurons %.2g channels %.2g BI %.2g layer loss %.2g block loss %.2g base %.2g", name,
                     w[0], w[1], w[2], w[3], w[4], w[5], bl);
            tt_note("2 ranks%s vs 1 process: worst relative difference of the scores %.2g", streamed ? " (streamed)" : "",
                    worst);
        } else {
            TT_CHECK(0, "loading %s / %s: %s", pa, pb, tp_errmsg());
        }
        tp_importance_free(a);
        tp_importance_free(b);
        free(pa);
        free(pb);
    }
    free(dir);
    free(text);
}

/* A command that does not share its work refuses to run as N copies; a rank that fails (here:
 * every rank, on a missing file) takes the job down with its message instead of hanging. */
TT_TEST(mpi_refusals_and_failing_ranks) {
    if (!have_mpi()) return;
    const char *data = data_fixture();
    if (!data) return;
    char *dir = fresh_dir("mpi_refuse"), *model = fixture_model("teacher"), args[4096], *log = NULL;
    snprintf(args, sizeof args, "info '%s'", model);
    int rc = run(2, dir, "info", args, &log);
    TT_CHECK(rc == 2 && strstr(log, "taper info runs in one process") && strstr(log, "2 ranks were started"),
             "mpirun -np 2 taper info (rc %d): %.1500s", rc, log);
    free(log);
    snprintf(args, sizeof args, "info --help");
    rc = run(2, dir, "info_help", args, &log);
    TT_CHECK(rc == 0 && strstr(log, "usage: taper info"), "--help still answers under mpirun (rc %d): %.500s", rc, log);
    free(log);
    double t0 = tp_time_s();
    snprintf(args, sizeof args, "train '%s' --data '%s/nope.tpt' --steps 3 --run-dir '%s/run' --threads 1", model, dir,
             dir);
    rc = run(2, dir, "missing", args, &log);
    double took = tp_time_s() - t0;
    TT_CHECK(rc == 1 && strstr(log, "nope.tpt") && strstr(log, "rank 0 of 2 failed") && took < 20,
             "a failing run under mpirun (rc %d, %.1f s): %.1500s", rc, took, log);
    free(log);
    free(dir);
    free(model);
}
