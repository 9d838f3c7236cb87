/* Test runner: runs every registered test (or those whose name contains argv[1]) and
 * ends with the line "N passed, N failed, N skipped". */
#include "tt.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "taper/status.h"
#include "taper/tokenizer.h"
#include "taper/util.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/trainer.h"

typedef struct { const char *name, *file; tt_fn fn; } tt_case;
int tt_cond_;
static tt_case *cases;
static int n_cases, cap_cases;
static int cur_failed, cur_skipped, cur_checks;
static int cur_optional; /* the skip was tt_skip_optional: allowed under TAPER_STRICT */
static char skip_reason[512];

void tt_register(const char *name, const char *file, tt_fn fn) {
    if (n_cases == cap_cases) {
        cap_cases = cap_cases ? 2 * cap_cases : 64;
        cases = realloc(cases, (size_t)cap_cases * sizeof *cases);
        if (!cases) abort();
    }
    cases[n_cases++] = (tt_case){name, file, fn};
}

int tt_check(int ok, const char *file, int line, const char *expr, const char *fmt, ...) {
    cur_checks++;
    if (ok) return 1;
    if (cur_failed < 20) {
        fprintf(stderr, "    FAIL %s:%d: %s: ", file, line, expr);
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
    cur_failed++;
    return 0;
}

static void skip_v(int optional, const char *fmt, va_list ap) {
    vsnprintf(skip_reason, sizeof skip_reason, fmt, ap);
    cur_skipped = 1;
    cur_optional = optional;
}

void tt_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    skip_v(0, fmt, ap);
    va_end(ap);
}

void tt_skip_optional(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    skip_v(1, fmt, ap);
    va_end(ap);
}

void tt_note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    note: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

const char *tt_data_dir(void) {
    const char *d = getenv("TAPER_DATA");
    return d && *d ? d : "../shared/data";
}

static char model_buf[4096];
const char *tt_model_path(void) {
    const char *m = getenv("TAPER_MODEL");
    if (m && *m) snprintf(model_buf, sizeof model_buf, "%s", m);
    else {
        const char *c = getenv("TAPER_CACHE");
        const char *h = getenv("HOME");
        if (c && *c) snprintf(model_buf, sizeof model_buf, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", c);
        else snprintf(model_buf, sizeof model_buf, "%s/.cache/taper/SmolLM2-135M-Instruct.Q4_1.gguf", h ? h : ".");
    }
    return access(model_buf, R_OK) == 0 ? model_buf : NULL;
}

char *tt_cache_path(const char *name) {
    const char *c = getenv("TAPER_CACHE"), *h = getenv("HOME");
    char *dir = c && *c ? strdup(c) : tt_path(h ? h : ".", ".cache/taper");
    char *p = dir ? tt_path(dir, name) : NULL;
    free(dir);
    return p;
}

char *tt_llama_cpp_src(void) {
    const char *s = getenv("TAPER_LLAMA_CPP_SRC");
    return s && *s ? strdup(s) : tt_cache_path("llama.cpp-0.3.36");
}

char *tt_gemma3_path(void) {
    const char *e = getenv("TAPER_GEMMA3");
    char *p = e && *e ? strdup(e) : tt_cache_path("gemma-3-270m-q4_k_m.gguf");
    if (p && access(p, R_OK) != 0) {
        free(p);
        p = NULL;
    }
    return p;
}

const char *tt_fixtures_dir(void) {
    const char *d = getenv("TAPER_FIXTURES");
    return d && *d ? d : "tests/fixtures";
}

static char tmp_buf[256];
const char *tt_tmp_dir(void) {
    if (!tmp_buf[0]) {
        snprintf(tmp_buf, sizeof tmp_buf, "/tmp/taper-test-XXXXXX");
        if (!mkdtemp(tmp_buf)) { perror("mkdtemp"); abort(); }
    }
    return tmp_buf;
}

char *tt_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) abort();
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static tp_model *shared_model;
static uint64_t shared_hash;
static int shared_used; /* tt_model was called by the running test */

tp_model *tt_model(void) {
    shared_used = 1;
    if (shared_model) return shared_model;
    const char *p = tt_model_path();
    if (!p) return NULL;
    if (tp_model_load(p, &shared_model)) {
        TT_CHECK(0, "loading %s: %s", p, tp_errmsg());
        shared_model = NULL;
        return NULL;
    }
    shared_hash = tp_params_hash(shared_model);
    return shared_model;
}

int tt_same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int eq = tp_read_file(a, &x, &nx) == TP_OK && tp_read_file(b, &y, &ny) == TP_OK && nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return eq;
}

int tt_sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof cmd) {
        TT_CHECK(0, "tt_sh: command of %d bytes does not fit", n);
        return -1;
    }
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

cJSON *tt_read_json(const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (tp_read_file(path, &text, &len) != TP_OK) return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    return j;
}

cJSON *tt_fixture_json(const char *rel) {
    char *p = tt_path(tt_fixtures_dir(), rel);
    cJSON *j = tt_read_json(p);
    TT_CHECK(j != NULL, "cannot read or parse the fixture %s (tests/ref/*.py --out tests/fixtures makes it)", p);
    free(p);
    return j;
}

float *tt_fixture_f32(const char *rel, size_t n, int required) {
    char *p = tt_path(tt_fixtures_dir(), rel), *data = NULL;
    size_t len = 0;
    float *out = NULL;
    if (tp_read_file(p, &data, &len) == TP_OK && len == n * sizeof(float) && (out = malloc(len ? len : 1)))
        memcpy(out, data, len);
    else if (required)
        TT_CHECK(0, "the fixture %s is missing or not %zu floats (%zu bytes)", p, n, len);
    free(data);
    free(p);
    return out;
}

const char *tt_bin(void) {
    const char *b = getenv("TAPER_BIN");
    return b && *b ? b : NULL;
}

int tt_taper(const char *args, char **out) {
    char *log = tt_path(tt_tmp_dir(), "taper-cli.log");
    int st = tt_bin() ? tt_sh("TAPER_PROGRESS=0 %s %s > '%s' 2>&1", tt_bin(), args, log) : -1;
    *out = NULL;
    if (tp_read_file(log, out, NULL) != TP_OK) *out = strdup(tt_bin() ? "" : "TAPER_BIN is not set");
    if (!*out) abort();
    unlink(log);
    free(log);
    return st;
}

static int cmp_case(const void *a, const void *b) {
    const tt_case *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    qsort(cases, (size_t)n_cases, sizeof *cases, cmp_case);
    int passed = 0, failed = 0, skipped = 0;
    /* TAPER_STRICT (make test STRICT=1, what CI runs): a skip for anything but an optional part
     * (tt_skip_optional) is a failure: the model, the binary, the data and llama.cpp must be there */
    const char *se = getenv("TAPER_STRICT");
    int strict = se && *se && strcmp(se, "0");
    for (int i = 0; i < n_cases; i++) {
        if (filter && !strstr(cases[i].name, filter) && !strstr(cases[i].file, filter)) continue;
        cur_failed = cur_skipped = cur_checks = cur_optional = 0;
        skip_reason[0] = 0;
        fprintf(stderr, "  %-44s ...\n", cases[i].name);
        shared_used = 0;
        cases[i].fn();
        if (shared_used && shared_model)
            TT_CHECK(tp_params_hash(shared_model) == shared_hash, "the test changed the shared model (tt_model)");
        const char *res;
        if (cur_failed) { res = "FAIL"; failed++; }
        else if (cur_skipped && strict && !cur_optional) { res = "FAIL (skipped under TAPER_STRICT)"; failed++; }
        else if (cur_skipped) { res = "SKIP"; skipped++; }
        else if (cur_checks == 0) { res = "FAIL (no checks ran)"; failed++; }
        else { res = "ok"; passed++; }
        printf("%-5s %s (%d checks)%s%s\n", res, cases[i].name, cur_checks,
               cur_skipped ? ": " : "", cur_skipped ? skip_reason : "");
        fflush(stdout);
    }
    if (tmp_buf[0] && failed == 0) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_buf);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_buf);
    }
    tp_model_free(shared_model);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}

int tt_write_text(const char *path, const char *s, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(s, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

tp_status tt_tok_load_text(const char *subdir, const char *name, const char *text, tp_tokenizer **t) {
    char *dir = tt_path(tt_tmp_dir(), subdir);
    mkdir(dir, 0777);
    char *p = tt_path(dir, name);
    tt_write_text(p, text, strlen(text));
    tp_status rc = tp_tok_load_json(p, t);
    if (rc) TT_CHECK(strstr(tp_errmsg(), name) != NULL, "error for %s does not name the file: %s", name, tp_errmsg());
    free(p);
    free(dir);
    return rc;
}

tp_model *tt_load_hf(const char *path) {
    tp_model *m = NULL;
    if (tp_model_load_hf(path, &m) != TP_OK) {
        TT_CHECK(0, "loading %s: %s", path, tp_errmsg());
        return NULL;
    }
    return m;
}

tp_model *tt_fixture_model(const char *rel) {
    char *p = tt_path(tt_fixtures_dir(), rel);
    tp_model *m = tt_load_hf(p);
    free(p);
    return m;
}

int tt_markov_shard(const char *path, int docs, int min_len, int len_span, int n_sym, int mult, int vocab,
                    uint64_t seed) {
    uint32_t *tok = malloc((size_t)docs * (size_t)(min_len + len_span) * sizeof *tok);
    uint64_t *starts = malloc((size_t)docs * sizeof *starts);
    size_t n = 0;
    tp_rng r;
    tp_rng_seed(&r, seed);
    for (int d = 0; tok && starts && d < docs; d++) {
        starts[d] = n;
        int len = min_len + (int)(tp_rng_u64(&r) % (uint64_t)len_span);
        uint32_t t = 3 + (uint32_t)(tp_rng_u64(&r) % (uint64_t)n_sym);
        for (int i = 0; i < len; i++) {
            tok[n++] = t;
            t = 3 + (t * (uint32_t)mult + (uint32_t)(tp_rng_u64(&r) % 3)) % (uint32_t)n_sym;
        }
    }
    tp_status s = tok && starts ? tp_shard_write(path, tok, n, starts, (size_t)docs, (uint32_t)vocab, 1, 2)
                                : tp_fail(TP_ERR_NOMEM, "out of memory");
    free(tok);
    free(starts);
    return TT_CHECK(s == TP_OK, "writing the token shard %s: %s", path, tp_errmsg());
}

int tt_fox_text(const char *path, int n) {
    FILE *f = fopen(path, "w");
    for (int i = 0; f && i < n; i++) fprintf(f, "the quick brown fox %d jumps over the lazy dog and runs away. ", i);
    return f && fclose(f) == 0;
}
