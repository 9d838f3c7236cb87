/* Checkpoint tests: bit-exact save/load round trip of weights, moments and resume state; exact
 * resume of the optimizer; crashes during the save (a forked child killed by the
 * TAPER_TEST_CKPT_DIE_AFTER hook at several byte offsets) never leave a loadable partial file;
 * one corrupted byte, truncation, a bad version and a config mismatch are rejected with a
 * warning and the previous checkpoint is used; keep_last; stale temporaries. Tiny models only. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/util.h"
#include "tt.h"

static tp_model *load_tiny(const char *name) {
    char *root = tt_path(tt_fixtures_dir(), "tiny");
    char *dir = tt_path(root, name);
    tp_model *m = NULL;
    if (tp_model_load_hf(dir, &m)) TT_CHECK(0, "loading %s: %s", dir, tp_errmsg());
    free(dir);
    free(root);
    return m;
}

/* A fresh empty directory under the test scratch dir. */
static char *fresh_dir(const char *name) {
    char *d = tt_path(tt_tmp_dir(), name);
    mkdir(d, 0755);
    return d;
}

static char *ckpt_file(const char *dir, long step) {
    char name[64];
    snprintf(name, sizeof name, "ckpt-%08ld.tpc", step);
    return tt_path(dir, name);
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = s ? strlen(s) : 0, b = strlen(suf);
    return s && a >= b && strcmp(s + a - b, suf) == 0;
}

/* A model + optimizer with non-trivial moments after `updates` AdamW updates of a fixed
 * pseudo-gradient (a function of the parameters), so resumed runs can be compared. */
typedef struct {
    tp_model *m, *g;
    tp_adamw o;
} rig;

static void rig_grad(rig *r, long step) {
    for (size_t i = 0; i < r->m->n_params; i++)
        r->g->params[i] = 0.02f * sinf(2.0f * r->m->params[i] + 0.37f * (float)step + 1e-3f * (float)(i % 101));
}

static int rig_open(rig *r, const char *name, int updates) {
    memset(r, 0, sizeof *r);
    r->m = load_tiny(name);
    if (!r->m || tp_model_alloc(&r->m->cfg, &r->g)) return 0;
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    c.lr = 1e-2f;
    c.warmup_steps = 2;
    c.total_steps = 20;
    if (!TT_CHECK(tp_adamw_init(&r->o, r->m, &c) == TP_OK, "%s", tp_errmsg())) return 0;
    for (int s = 0; s < updates; s++) {
        rig_grad(r, r->o.step);
        if (!TT_CHECK(tp_adamw_step(&r->o, r->m, r->g, NULL) == TP_OK, "%s", tp_errmsg())) return 0;
    }
    return 1;
}

static void rig_close(rig *r) {
    tp_adamw_free(&r->o);
    tp_model_free(r->g);
    tp_model_free(r->m);
}

/* Same config, zero weights and moments: where loads land. */
static int rig_blank(rig *r, const tp_model *like) {
    memset(r, 0, sizeof *r);
    if (tp_model_alloc(&like->cfg, &r->m) || tp_model_alloc(&like->cfg, &r->g)) return 0;
    tp_adamw_cfg c;
    tp_adamw_defaults(&c);
    c.lr = 1e-2f;
    c.warmup_steps = 2;
    c.total_steps = 20;
    return tp_adamw_init(&r->o, r->m, &c) == TP_OK;
}

static tp_ckpt_state make_state(long step) {
    tp_ckpt_state st;
    memset(&st, 0, sizeof st);
    st.step = step;
    tp_rng_seed(&st.rng, 99 + (uint64_t)step);
    for (int i = 0; i < 5; i++) tp_rng_u64(&st.rng);
    st.cursor.seed = 0xfedcba9876543210ull; /* above 2^53: must not pass through a double */
    st.cursor.epoch = 3;
    st.cursor.index = 1234567 + (uint64_t)step;
    st.tokens_seen = 1048576.0 * (double)step + 0.5;
    st.elapsed_s = 0.1 * (double)step + 1.0 / 3.0;
    st.args_json = "{\"lr\":0.01,\"data\":\"shards/\\\"x\\\"\",\"note\":\"caf\xc3\xa9\"}";
    return st;
}

static size_t n_same(const float *a, const float *b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += memcmp(a + i, b + i, 4) == 0;
    return k;
}

/* stderr into a file while a call runs, to check the warnings. */
typedef struct {
    int saved;
    char *path;
} capture;

static void capture_begin(capture *c) {
    fflush(stderr);
    c->path = tt_path(tt_tmp_dir(), "stderr.txt");
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    c->saved = dup(2);
    dup2(fd, 2);
    close(fd);
}

static char *capture_end(capture *c) {
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    char *text = NULL;
    if (tp_read_file(c->path, &text, NULL)) text = strdup("");
    free(c->path);
    return text;
}

TT_TEST(ckpt_round_trip_bit_exact) {
    rig a, b;
    if (!rig_open(&a, "llama3", 3)) return;
    char *dir = fresh_dir("ckpt_rt");
    tp_ckpt_state st = make_state(a.o.step), got;
    TT_CHECK(tp_ckpt_save(dir, a.m, &a.o, &st, 0) == TP_OK, "save: %s", tp_errmsg());
    char *file = ckpt_file(dir, 3);
    long size = file_size(file);
    TT_CHECK(size > 0 && (size - 16 - 12 * (long)a.m->n_params) % 64 == 0 &&
                 size - 16 - 12 * (long)a.m->n_params >= 96,
             "%s: %ld bytes for %zu parameters", file, size, a.m->n_params);
    if (!rig_blank(&b, a.m)) goto done;
    memset(&got, 0, sizeof got);
    char *used = NULL;
    if (TT_CHECK(tp_ckpt_load_latest(dir, b.m, &b.o, &got, &used) == TP_OK, "load: %s", tp_errmsg())) {
        size_t n = a.m->n_params;
        TT_CHECK(used && strcmp(used, file) == 0, "loaded %s", used ? used : "(null)");
        TT_CHECK(n_same(a.m->params, b.m->params, n) == n, "params differ");
        TT_CHECK(n_same(a.o.m, b.o.m, n) == n && n_same(a.o.v, b.o.v, n) == n, "moments differ");
        TT_CHECK(b.o.step == 3 && got.step == 3, "step %ld / %ld", b.o.step, got.step);
        TT_CHECK(!memcmp(&got.rng, &st.rng, sizeof st.rng), "rng state differs");
        TT_CHECK(got.cursor.seed == st.cursor.seed && got.cursor.epoch == 3 && got.cursor.index == st.cursor.index,
                 "cursor %llx %llu %llu", (unsigned long long)got.cursor.seed, (unsigned long long)got.cursor.epoch,
                 (unsigned long long)got.cursor.index);
        TT_CHECK(got.tokens_seen == st.tokens_seen && got.elapsed_s == st.elapsed_s, "tokens %.17g elapsed %.17g",
                 got.tokens_seen, got.elapsed_s);
        TT_CHECK(got.args_json && strcmp(got.args_json, st.args_json) == 0, "args %s", got.args_json);
        /* the loaded optimizer continues exactly like the original */
        for (int s = 0; s < 2; s++) {
            rig_grad(&a, a.o.step);
            rig_grad(&b, b.o.step);
            tp_adamw_step(&a.o, a.m, a.g, NULL);
            tp_adamw_step(&b.o, b.m, b.g, NULL);
        }
        TT_CHECK(n_same(a.m->params, b.m->params, n) == n && n_same(a.o.v, b.o.v, n) == n,
                 "resumed updates differ from uninterrupted ones");
    }
    tp_ckpt_state_free(&got);
    free(used);
    /* args NULL round trips as NULL; nothing temporary left behind */
    st = make_state(5);
    st.args_json = NULL;
    TT_CHECK(tp_ckpt_save(dir, a.m, &a.o, &st, 0) == TP_OK, "save: %s", tp_errmsg());
    memset(&got, 0, sizeof got);
    got.args_json = NULL;
    TT_CHECK(tp_ckpt_load_latest(dir, b.m, &b.o, &got, NULL) == TP_OK && got.step == 5 && !got.args_json,
             "null args: step %ld args %s (%s)", got.step, got.args_json ? got.args_json : "NULL", tp_errmsg());
    char *tmp = tt_path(dir, ".ckpt-00000005.tpc.tmp");
    TT_CHECK(access(tmp, F_OK) != 0, "temporary %s left behind", tmp);
    free(tmp);
    tt_note("round trip: %zu params, %ld bytes", a.m->n_params, size);
    rig_close(&b);
done:
    free(file);
    free(dir);
    rig_close(&a);
}

/* The crash hook of src/train/checkpoint.c, in the test binary's -DTP_TESTING build of that file. */
extern uint64_t tp_test_ckpt_die_after;

/* A forked child saves step 2 with the crash hook at `offset` and dies; the parent must still
 * load step 1, with the partial file present under its temporary name and under the final name. */
static void crash_at(const char *dir, rig *a, const float *params1, long offset, int complete, const char *where) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        tp_test_ckpt_die_after = (uint64_t)offset;
        for (size_t i = 0; i < a->m->n_params; i++) a->m->params[i] += 1.0f;
        tp_ckpt_state st = make_state(2);
        tp_ckpt_save(dir, a->m, &a->o, &st, 0);
        _exit(3); /* the hook should have killed us */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    TT_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: child status %d", where, status);
    char *tmp = tt_path(dir, ".ckpt-00000002.tpc.tmp");
    TT_CHECK(file_size(tmp) == offset, "%s: partial file has %ld bytes, expected %ld", where, file_size(tmp), offset);
    rig b;
    if (!rig_blank(&b, a->m)) return;
    size_t n = a->m->n_params;
    for (int as_final = 0; as_final < 2; as_final++) {
        if (as_final && complete) break; /* renaming a complete file is a successful save */
        if (as_final) { /* as if the rename had happened on a torn file */
            char *fin = ckpt_file(dir, 2);
            rename(tmp, fin);
            free(fin);
        }
        tp_ckpt_state got;
        memset(&got, 0, sizeof got);
        char *used = NULL;
        capture cap;
        capture_begin(&cap);
        tp_status s = tp_ckpt_load_latest(dir, b.m, &b.o, &got, &used);
        char *err = capture_end(&cap);
        TT_CHECK(s == TP_OK && ends_with(used, "ckpt-00000001.tpc") && got.step == 1,
                 "%s%s: loaded %s step %ld (%s)", where, as_final ? " (renamed)" : "", used ? used : "nothing",
                 got.step, s ? tp_errmsg() : "ok");
        TT_CHECK(n_same(b.m->params, params1, n) == n, "%s: weights are not those of step 1", where);
        if (as_final)
            TT_CHECK(strstr(err, "warning") && strstr(err, "ckpt-00000002.tpc"), "%s: no warning naming the file: %s",
                     where, err);
        else
            TT_CHECK(!strstr(err, "warning"), "%s: the temporary file was looked at: %s", where, err);
        free(err);
        free(used);
        tp_ckpt_state_free(&got);
    }
    char *fin = ckpt_file(dir, 2);
    unlink(fin);
    unlink(tmp);
    free(fin);
    free(tmp);
    rig_close(&b);
}

TT_TEST(ckpt_crash_during_save_keeps_previous) {
    rig a;
    if (!rig_open(&a, "llama3", 1)) return;
    size_t n = a.m->n_params;
    char *dir = fresh_dir("ckpt_crash"), *refdir = fresh_dir("ckpt_crash_ref");
    tp_ckpt_state st1 = make_state(1);
    TT_CHECK(tp_ckpt_save(dir, a.m, &a.o, &st1, 0) == TP_OK, "save: %s", tp_errmsg());
    float *params1 = malloc(n * sizeof(float));
    memcpy(params1, a.m->params, n * sizeof(float));
    /* the complete size of the step-2 file the child would write (same content) */
    for (size_t i = 0; i < n; i++) a.m->params[i] += 1.0f;
    tp_ckpt_state st2 = make_state(2);
    TT_CHECK(tp_ckpt_save(refdir, a.m, &a.o, &st2, 0) == TP_OK, "save: %s", tp_errmsg());
    memcpy(a.m->params, params1, n * sizeof(float));
    char *reff = ckpt_file(refdir, 2);
    long total = file_size(reff), data_off = total - 16 - 12 * (long)n;
    free(reff);
    if (!TT_CHECK(total > 0 && data_off > 32, "reference size %ld", total)) goto done;
    struct {
        long off;
        const char *where;
    } cases[] = {
        {0, "nothing written"},
        {12, "inside the header"},
        {40, "inside the JSON block"},
        {data_off + 6 * (long)n, "middle of the weights"},
        {total - 16, "before the checksum"},
        {total - 8, "just before the end marker"},
        {total - 1, "inside the end marker"},
        {total, "complete but not renamed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        crash_at(dir, &a, params1, cases[i].off, cases[i].off == total, cases[i].where);
    /* the next save sweeps the stale temporary away */
    char *tmp = tt_path(dir, ".ckpt-00000002.tpc.tmp");
    FILE *f = fopen(tmp, "wb");
    if (f) {
        fputs("partial", f);
        fclose(f);
    }
    tp_ckpt_state st3 = make_state(3);
    capture cap;
    capture_begin(&cap);
    tp_status s = tp_ckpt_save(dir, a.m, &a.o, &st3, 0);
    free(capture_end(&cap));
    TT_CHECK(s == TP_OK && access(tmp, F_OK) != 0, "stale temporary not removed (%s)", s ? tp_errmsg() : "saved");
    free(tmp);
    tt_note("crash hook at %zu offsets of a %ld-byte checkpoint: the previous one was loaded every time",
            sizeof cases / sizeof *cases, total);
done:
    free(params1);
    free(dir);
    free(refdir);
    rig_close(&a);
}

/* Saves steps 1 and 2 in dir, returns step 1's weights. */
static float *two_ckpts(const char *dir, rig *a) {
    tp_ckpt_state st = make_state(1);
    TT_CHECK(tp_ckpt_save(dir, a->m, &a->o, &st, 0) == TP_OK, "save: %s", tp_errmsg());
    float *p1 = malloc(a->m->n_params * sizeof(float));
    memcpy(p1, a->m->params, a->m->n_params * sizeof(float));
    rig_grad(a, a->o.step);
    tp_adamw_step(&a->o, a->m, a->g, NULL);
    st = make_state(2);
    TT_CHECK(tp_ckpt_save(dir, a->m, &a->o, &st, 0) == TP_OK, "save: %s", tp_errmsg());
    return p1;
}

static void patch_byte(const char *path, long off, int xor_with) {
    FILE *f = fopen(path, "r+b");
    if (!TT_CHECK(f != NULL, "open %s", path)) return;
    fseek(f, off, SEEK_SET);
    int c = fgetc(f);
    fseek(f, off, SEEK_SET);
    fputc(c ^ xor_with, f);
    fclose(f);
}

/* Loads dir expecting step 1 to be chosen over a damaged step 2 with a warning containing why. */
static void expect_fallback(const char *dir, const tp_model *like, const float *p1, const char *why, const char *what) {
    rig b;
    if (!rig_blank(&b, like)) return;
    tp_ckpt_state got;
    memset(&got, 0, sizeof got);
    char *used = NULL;
    capture cap;
    capture_begin(&cap);
    tp_status s = tp_ckpt_load_latest(dir, b.m, &b.o, &got, &used);
    char *err = capture_end(&cap);
    TT_CHECK(s == TP_OK && ends_with(used, "ckpt-00000001.tpc"), "%s: loaded %s (%s)", what, used ? used : "nothing",
             s ? tp_errmsg() : "ok");
    TT_CHECK(n_same(b.m->params, p1, like->n_params) == like->n_params, "%s: weights not step 1's", what);
    TT_CHECK(strstr(err, "warning") && strstr(err, "ckpt-00000002.tpc") && strstr(err, why),
             "%s: stderr lacks a warning with \"%s\": %s", what, why, err);
    free(err);
    free(used);
    tp_ckpt_state_free(&got);
    rig_close(&b);
}

TT_TEST(ckpt_corruption_rejected) {
    rig a;
    if (!rig_open(&a, "llama3", 1)) return;
    long n = (long)a.m->n_params;
    struct {
        const char *name;
        long off_from_end; /* byte offset counted back from the end, or -1 for the JSON */
        const char *why;
    } cases[] = {
        {"weights", 16 + 9 * n, "checksum"}, /* middle of the parameters (12n + 16 bytes from the end) */
        {"moment v", 16 + 2 * n, "checksum"},
        {"json", -1, "checksum"},
        {"checksum", 12, "checksum"},
        {"end marker", 3, "end marker"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char dn[64];
        snprintf(dn, sizeof dn, "ckpt_corrupt_%zu", i);
        char *dir = fresh_dir(dn);
        float *p1 = two_ckpts(dir, &a);
        char *f2 = ckpt_file(dir, 2);
        long size = file_size(f2);
        patch_byte(f2, cases[i].off_from_end < 0 ? 40 : size - cases[i].off_from_end, 0x10);
        TT_CHECK(file_size(f2) == size, "size changed");
        expect_fallback(dir, a.m, p1, cases[i].why, cases[i].name);
        free(f2);
        free(p1);
        free(dir);
    }
    rig_close(&a);
}

TT_TEST(ckpt_truncation_and_bad_header_rejected) {
    rig a;
    if (!rig_open(&a, "llama3", 1)) return;
    long n = (long)a.m->n_params;
    long cuts[] = {0, 20, 100, 6 * n, -1 /* one byte short */};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        char dn[64];
        snprintf(dn, sizeof dn, "ckpt_trunc_%zu", i);
        char *dir = fresh_dir(dn);
        float *p1 = two_ckpts(dir, &a);
        char *f2 = ckpt_file(dir, 2);
        long len = cuts[i] < 0 ? file_size(f2) - 1 : cuts[i];
        TT_CHECK(truncate(f2, len) == 0, "truncate %s", f2);
        expect_fallback(dir, a.m, p1, "truncated", "truncated");
        free(f2);
        free(p1);
        free(dir);
    }
    /* wrong magic, future version */
    char *dir = fresh_dir("ckpt_badhdr");
    float *p1 = two_ckpts(dir, &a);
    char *f2 = ckpt_file(dir, 2);
    patch_byte(f2, 8, 0x01); /* version 2 -> 3 */
    expect_fallback(dir, a.m, p1, "version 3", "version");
    patch_byte(f2, 8, 0x01);
    patch_byte(f2, 0, 0x20); /* magic */
    expect_fallback(dir, a.m, p1, "bad magic", "magic");
    /* nothing usable at all: TP_ERR_IO naming the directory and the reason */
    char *f1 = ckpt_file(dir, 1);
    truncate(f1, 50);
    rig b;
    if (rig_blank(&b, a.m)) {
        tp_ckpt_state got;
        memset(&got, 0, sizeof got);
        capture cap;
        capture_begin(&cap);
        tp_status s = tp_ckpt_load_latest(dir, b.m, &b.o, &got, NULL);
        free(capture_end(&cap));
        TT_CHECK(s == TP_ERR_IO && strstr(tp_errmsg(), dir) && strstr(tp_errmsg(), "none of the 2"),
                 "status %d: %s", s, tp_errmsg());
        TT_CHECK(b.o.step == 0 && got.step == 0, "state touched on failure");
        char *empty = fresh_dir("ckpt_empty");
        s = tp_ckpt_load_latest(empty, b.m, &b.o, &got, NULL);
        TT_CHECK(s == TP_ERR_IO && strstr(tp_errmsg(), empty) && strstr(tp_errmsg(), "no checkpoint"), "empty: %s",
                 tp_errmsg());
        free(empty);
        char *missing = tt_path(tt_tmp_dir(), "ckpt_does_not_exist");
        s = tp_ckpt_load_latest(missing, b.m, &b.o, &got, NULL);
        TT_CHECK(s == TP_ERR_IO && strstr(tp_errmsg(), missing), "missing dir: %s", tp_errmsg());
        free(missing);
        rig_close(&b);
    }
    free(f1);
    free(f2);
    free(p1);
    free(dir);
    rig_close(&a);
}

TT_TEST(ckpt_keep_last) {
    rig a;
    if (!rig_open(&a, "llama3", 0)) return;
    char *dir = fresh_dir("ckpt_keep");
    for (long s = 1; s <= 5; s++) {
        tp_ckpt_state st = make_state(s);
        TT_CHECK(tp_ckpt_save(dir, a.m, &a.o, &st, 2) == TP_OK, "save %ld: %s", s, tp_errmsg());
    }
    for (long s = 1; s <= 5; s++) {
        char *f = ckpt_file(dir, s);
        int exists = access(f, F_OK) == 0;
        TT_CHECK(exists == (s >= 4), "step %ld: exists %d", s, exists);
        free(f);
    }
    /* keep_last 0 keeps everything; steps past 8 digits still sort numerically */
    tp_ckpt_state st = make_state(123456789);
    TT_CHECK(tp_ckpt_save(dir, a.m, &a.o, &st, 0) == TP_OK, "save: %s", tp_errmsg());
    st = make_state(6);
    TT_CHECK(tp_ckpt_save(dir, a.m, &a.o, &st, 0) == TP_OK, "save: %s", tp_errmsg());
    char *f4 = ckpt_file(dir, 4), *big = ckpt_file(dir, 123456789);
    TT_CHECK(access(f4, F_OK) == 0 && access(big, F_OK) == 0, "keep_last 0 removed files");
    rig b;
    if (rig_blank(&b, a.m)) {
        tp_ckpt_state got;
        memset(&got, 0, sizeof got);
        TT_CHECK(tp_ckpt_load_latest(dir, b.m, &b.o, &got, NULL) == TP_OK && got.step == 123456789,
                 "newest: step %ld (%s)", got.step, tp_errmsg());
        tp_ckpt_state_free(&got);
        rig_close(&b);
    }
    free(f4);
    free(big);
    free(dir);
    rig_close(&a);
}

TT_TEST(ckpt_config_mismatch_refused) {
    rig a;
    if (!rig_open(&a, "llama3", 1)) return;
    char *dir = fresh_dir("ckpt_cfg");
    tp_ckpt_state st = make_state(1);
    TT_CHECK(tp_ckpt_save(dir, a.m, &a.o, &st, 0) == TP_OK, "save: %s", tp_errmsg());
    /* same parameter count, other config: rope_theta differs */
    tp_config c = a.m->cfg;
    c.rope_theta = 10000.0f;
    rig b;
    memset(&b, 0, sizeof b);
    if (tp_model_alloc(&c, &b.m) == TP_OK && tp_adamw_init(&b.o, b.m, &a.o.cfg) == TP_OK) {
        tp_ckpt_state got;
        memset(&got, 0, sizeof got);
        capture cap;
        capture_begin(&cap);
        tp_status s = tp_ckpt_load_latest(dir, b.m, &b.o, &got, NULL);
        char *err = capture_end(&cap);
        TT_CHECK(s == TP_ERR_IO && strstr(tp_errmsg(), dir) && strstr(tp_errmsg(), "config") &&
                     strstr(tp_errmsg(), "rope_theta"),
                 "status %d: %s", s, tp_errmsg());
        TT_CHECK(strstr(err, "warning") && strstr(err, "rope_theta"), "stderr: %s", err);
        free(err);
        size_t nz = 0;
        for (size_t i = 0; i < b.m->n_params; i++) nz += b.m->params[i] != 0;
        TT_CHECK(nz == 0 && b.o.step == 0, "refused checkpoint still changed %zu weights", nz);
    }
    rig_close(&b);
    /* other parameter count */
    tp_model *q = load_tiny("qwen2");
    tp_adamw oq;
    if (q && tp_adamw_init(&oq, q, &a.o.cfg) == TP_OK) {
        tp_ckpt_state got;
        memset(&got, 0, sizeof got);
        capture cap;
        capture_begin(&cap);
        tp_status s = tp_ckpt_load_latest(dir, q, &oq, &got, NULL);
        free(capture_end(&cap));
        TT_CHECK(s == TP_ERR_IO && strstr(tp_errmsg(), "parameters"), "qwen2: %s", tp_errmsg());
        tp_adamw_free(&oq);
    }
    tp_model_free(q);
    free(dir);
    rig_close(&a);
}

/* The path helpers every writer uses: tp_path_join never doubles a slash; tp_mkdir_p makes the
 * missing parents, accepts an existing directory and refuses a file in the way. */
TT_TEST(util_path_join_and_mkdir_p) {
    char *a = tp_path_join("dir", "f.json"), *b = tp_path_join("dir/", "f.json"), *c = tp_path_join("/", "x");
    TT_CHECK(a && b && c && !strcmp(a, "dir/f.json") && !strcmp(b, "dir/f.json") && !strcmp(c, "/x"), "%s %s %s",
             a ? a : "(null)", b ? b : "(null)", c ? c : "(null)");
    free(a); free(b); free(c);
    char *root = tt_path(tt_tmp_dir(), "mk/a/b/c");
    TT_CHECK(tp_mkdir_p(root) == 0 && tp_mkdir_p(root) == 0, "mkdir -p %s twice", root);
    char *file = tt_path(root, "plain");
    FILE *f = fopen(file, "w");
    if (f) fclose(f);
    char *under = tt_path(file, "sub");
    errno = 0;
    TT_CHECK(tp_mkdir_p(file) == -1 && errno == ENOTDIR, "a file in the way: errno %d", errno);
    TT_CHECK(tp_mkdir_p(under) == -1, "below a file");
    TT_CHECK(tp_mkdir_p("") == -1, "empty path refused");
    free(root); free(file); free(under);
}

/* The library's notes and warnings go through tp_set_log: a caller can take them, or silence them. */
typedef struct { int n; tp_log_level last; char msg[256]; } log_capture;
static void capture_log(void *user, tp_log_level level, const char *msg) {
    log_capture *c = user;
    c->n++;
    c->last = level;
    snprintf(c->msg, sizeof c->msg, "%s", msg);
}

TT_TEST(util_log_callback) {
    log_capture c = {0};
    tp_set_log(capture_log, &c);
    tp_log(TP_LOG_WARN, "taper: warning: %s %d", "x", 3);
    TT_CHECK(c.n == 1 && c.last == TP_LOG_WARN && !strcmp(c.msg, "taper: warning: x 3"), "captured: %d %s", c.n, c.msg);
    tp_set_log(NULL, NULL);
    tp_log(TP_LOG_NOTE, "silenced");
    TT_CHECK(c.n == 1, "silenced logger called");
    tp_log_default();
}
