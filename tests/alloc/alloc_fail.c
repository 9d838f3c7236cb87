/* Allocation-failure injection over the loaders and the checkpoint path: for every scenario
 * (a library call: load a model, a config, a tokenizer, a score file, a prune plan, save or load
 * a checkpoint, ...) and every k = 1, 2, ..., the k-th allocation of the call fails; the call must
 * then return a status (or TP_OK with exactly what an undisturbed call gives), must not crash and
 * must not leak (LeakSanitizer after every run). The run whose k-th allocation never comes ends
 * the scenario; k - 1 allocation points were exercised.
 *
 * Allocation points: malloc, calloc, realloc, strdup, strndup, aligned_alloc, posix_memalign,
 * vasprintf and mmap of the library objects (through ld --wrap), cJSON's allocations (through
 * cJSON_InitHooks), and the calls into PCRE2 and utf8proc that allocate (pcre2_compile,
 * pcre2_match_data_create, pcre2_jit_compile, utf8proc_map: wrapped to fail as they do when out
 * of memory). Allocations inside other shared libraries (libc's stdio, OpenMP, BLAS) are not
 * counted.
 *
 * Its own program (not part of taper-tests): the wrapped allocator would disturb every other
 * test. Each scenario runs in a forked child, so a crash ends one scenario, not the run.
 * Usage: alloc_fail [-p] [SCENARIO [K]]  (-p: every allocation from the k-th on fails, not only
 * the k-th; K: only that k, with the stack of the injected failure printed; ALLOC_FAIL_TRACE=1
 * prints that stack for every k, ALLOC_FAIL_VERBOSE=1 names each k that returned TP_OK). Run from
 * the repository root (fixtures: tests/fixtures and tests/alloc/fixtures; TAPER_FIXTURES
 * overrides the former). `alloc_fail selfcheck` runs a scenario that is wrong on purpose: it
 * must FAIL with two bad runs (a leak at k=2, a wrong TP_OK at k=3), proving the checks bite.
 *
 * Build (what `make alloc-fail` does), from the repository root:
 *   make BUILD=build-san SANITIZE=1 build-san/libtaper.a
 *   cc -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Iinclude -Isrc -fopenmp \
 *      -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
 *      tests/alloc/alloc_fail.c build-san/libtaper.a -o build-san/alloc_fail \
 *      -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,--wrap=strndup \
 *      -Wl,--wrap=aligned_alloc,--wrap=posix_memalign,--wrap=vasprintf,--wrap=mmap \
 *      -Wl,--wrap=pcre2_compile_8,--wrap=pcre2_match_data_create_8,--wrap=pcre2_jit_compile_8 \
 *      -Wl,--wrap=utf8proc_map \
 *      -lm -lcjson -lpcre2-8 -lutf8proc -lpthread <BLAS/oneDNN libraries as the Makefile links>
 *   OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1 build-san/alloc_fail
 * Tiny fixtures only (tests/alloc/make_fixtures.py wrote the tokenizers under tests/alloc/fixtures). */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pcre2.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utf8proc.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#include <sanitizer/lsan_interface.h>
#define HAVE_LSAN 1
size_t __sanitizer_get_current_allocated_bytes(void); /* in libasan; GCC ships no header for it */
#else
#define HAVE_LSAN 0
#endif

#include "taper/compress.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/rng.h"
#include "taper/safetensors.h"
#include "taper/tokenizer.h"
#include "taper/train.h"
#include "taper/util.h"

/* ======================= the injector ======================= */

static atomic_long n_calls;     /* allocation points passed since arming */
static long fail_at;            /* 0: disarmed */
static int persistent;          /* -p: every call from fail_at on fails */
static atomic_int injected;     /* a failure was handed out since arming */
static int trace;               /* print the stack of each injected failure */
static int verbose;             /* ALLOC_FAIL_VERBOSE=1: name the k of every TP_OK after a failure */

static int should_fail(void) {
    if (!fail_at) return 0;
    long n = atomic_fetch_add(&n_calls, 1) + 1;
    if (n != fail_at && !(persistent && n > fail_at)) return 0;
    if (trace && n == fail_at) {
        fprintf(stderr, "alloc_fail: injected failure %ld here:\n", n);
#if HAVE_LSAN
        __sanitizer_print_stack_trace();
#endif
    }
    atomic_store(&injected, 1);
    errno = ENOMEM;
    return 1;
}

static void arm(long k) {
    atomic_store(&n_calls, 0);
    atomic_store(&injected, 0);
    fail_at = k;
}

static void disarm(void) { fail_at = 0; }

void *__real_malloc(size_t n);
void *__real_calloc(size_t a, size_t b);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__real_aligned_alloc(size_t al, size_t n);
int __real_posix_memalign(void **p, size_t al, size_t n);
int __real_vasprintf(char **s, const char *f, va_list ap);
void *__real_mmap(void *a, size_t n, int prot, int flags, int fd, off_t off);
pcre2_code *__real_pcre2_compile_8(PCRE2_SPTR p, PCRE2_SIZE n, uint32_t o, int *e, PCRE2_SIZE *eo,
                                   pcre2_compile_context *c);
pcre2_match_data *__real_pcre2_match_data_create_8(uint32_t n, pcre2_general_context *g);
int __real_pcre2_jit_compile_8(pcre2_code *c, uint32_t o);
utf8proc_ssize_t __real_utf8proc_map(const utf8proc_uint8_t *s, utf8proc_ssize_t n, utf8proc_uint8_t **d,
                                     utf8proc_option_t o);

void *__wrap_malloc(size_t n) { return should_fail() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t a, size_t b) { return should_fail() ? NULL : __real_calloc(a, b); }
void *__wrap_realloc(void *p, size_t n) { return should_fail() ? NULL : __real_realloc(p, n); }
char *__wrap_strdup(const char *s) { return should_fail() ? NULL : __real_strdup(s); }
char *__wrap_strndup(const char *s, size_t n) { return should_fail() ? NULL : __real_strndup(s, n); }
void *__wrap_aligned_alloc(size_t al, size_t n) { return should_fail() ? NULL : __real_aligned_alloc(al, n); }
int __wrap_posix_memalign(void **p, size_t al, size_t n) {
    return should_fail() ? ENOMEM : __real_posix_memalign(p, al, n);
}
int __wrap_vasprintf(char **s, const char *f, va_list ap) { return should_fail() ? -1 : __real_vasprintf(s, f, ap); }
void *__wrap_mmap(void *a, size_t n, int prot, int flags, int fd, off_t off) {
    return should_fail() ? MAP_FAILED : __real_mmap(a, n, prot, flags, fd, off);
}
pcre2_code *__wrap_pcre2_compile_8(PCRE2_SPTR p, PCRE2_SIZE n, uint32_t o, int *e, PCRE2_SIZE *eo,
                                   pcre2_compile_context *c) {
    if (should_fail()) {
        *e = PCRE2_ERROR_HEAP_FAILED;
        *eo = 0;
        return NULL;
    }
    return __real_pcre2_compile_8(p, n, o, e, eo, c);
}
pcre2_match_data *__wrap_pcre2_match_data_create_8(uint32_t n, pcre2_general_context *g) {
    return should_fail() ? NULL : __real_pcre2_match_data_create_8(n, g);
}
int __wrap_pcre2_jit_compile_8(pcre2_code *c, uint32_t o) {
    return should_fail() ? PCRE2_ERROR_NOMEMORY : __real_pcre2_jit_compile_8(c, o);
}
utf8proc_ssize_t __wrap_utf8proc_map(const utf8proc_uint8_t *s, utf8proc_ssize_t n, utf8proc_uint8_t **d,
                                     utf8proc_option_t o) {
    if (should_fail()) {
        *d = NULL;
        return UTF8PROC_ERROR_NOMEM;
    }
    return __real_utf8proc_map(s, n, d, o);
}

static void *json_malloc(size_t n) { return __wrap_malloc(n); }

/* ======================= helpers (run disarmed) ======================= */

static const char *fixtures(void) {
    const char *d = getenv("TAPER_FIXTURES");
    return d && *d ? d : "tests/fixtures";
}

static char *path2(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

static int write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(s, 1, strlen(s), f) == strlen(s);
    return (fclose(f) == 0) & ok;
}

/* Whole file (NULL when it cannot be read); *n its size. */
static char *slurp(const char *path, size_t *n) {
    char *d = NULL;
    size_t len = 0;
    if (tp_read_file(path, &d, &len)) return NULL;
    if (n) *n = len;
    return d;
}

static int same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void rm_rf(const char *p) { nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Entries of dir other than . and .. (-1: cannot read it); *tmp (may be NULL) counts the names
 * holding ".tmp" (temporaries of atomic writes). */
static int dir_entries2(const char *dir, int *tmp) {
    DIR *d = opendir(dir);
    if (tmp) *tmp = 0;
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            n++;
            if (tmp && strstr(e->d_name, ".tmp")) ++*tmp;
        }
    closedir(d);
    return n;
}

static int dir_entries(const char *dir) { return dir_entries2(dir, NULL); }

/* Both directories hold the same names with the same bytes. */
static int same_dir(const char *a, const char *b) {
    if (dir_entries(a) != dir_entries(b)) return 0;
    DIR *d = opendir(a);
    if (!d) return 0;
    int same = 1;
    struct dirent *e;
    while (same && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *x = path2(a, e->d_name), *y = path2(b, e->d_name);
        same = same_file(x, y);
        free(x);
        free(y);
    }
    closedir(d);
    return same;
}

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

static const char *texts[] = {
    "Hello world! 12345 and 6789, caf\xc3\xa9 \xef\xac\x81 \xe2\x84\xa2 \xf0\x9f\x98\x80\n\ttabs  and   spaces",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nFour.<|im_end|>",
    "<s> the <unk> in\xff\xfe bytes </s> \xe4\xb8\xad\xe6\x96\x87 NFKC \xe2\x91\xa0\xe2\x91\xa1",
};
#define N_TEXTS (sizeof texts / sizeof texts[0])

/* Everything observable of a tokenizer: metadata, every piece, and the encodings and decodings
 * of a few texts under every flag combination. */
static int tok_same(const tp_tokenizer *a, const tp_tokenizer *b) {
    if (!a || !b) return !a && !b;
    int n = tp_tok_vocab_size(a);
    if (n != tp_tok_vocab_size(b) || tp_tok_bos(a) != tp_tok_bos(b) || tp_tok_eos(a) != tp_tok_eos(b) ||
        tp_tok_unk(a) != tp_tok_unk(b) || tp_tok_pad(a) != tp_tok_pad(b) || tp_tok_adds_bos(a) != tp_tok_adds_bos(b) ||
        !same_str(tp_tok_pre_name(a), tp_tok_pre_name(b)) || !same_str(tp_tok_kind(a), tp_tok_kind(b)))
        return 0;
    for (int i = 0; i < n; i++)
        if (!same_str(tp_tok_piece(a, i), tp_tok_piece(b, i)) || tp_tok_is_special(a, i) != tp_tok_is_special(b, i))
            return 0;
    int same = 1;
    for (size_t t = 0; t < N_TEXTS && same; t++)
        for (unsigned fl = 0; fl < 4 && same; fl++) {
            int32_t *x = NULL, *y = NULL;
            size_t nx = 0, ny = 0;
            tp_status sx = tp_tok_encode_ex(a, texts[t], strlen(texts[t]), fl, &x, &nx);
            tp_status sy = tp_tok_encode_ex(b, texts[t], strlen(texts[t]), fl, &y, &ny);
            same = sx == sy && nx == ny && (!nx || memcmp(x, y, nx * sizeof *x) == 0);
            for (int skip = 0; skip < 2 && same && !sx; skip++) {
                char *dx = NULL, *dy = NULL;
                size_t lx = 0, ly = 0;
                sx = tp_tok_decode(a, x, nx, skip, &dx, &lx);
                sy = tp_tok_decode(b, x, nx, skip, &dy, &ly);
                same = sx == sy && lx == ly && (!dx || !dy || memcmp(dx, dy, lx) == 0);
                free(dx);
                free(dy);
            }
            free(x);
            free(y);
        }
    return same;
}

static int config_same(const tp_config *a, const tp_config *b) {
    char *x = NULL, *y = NULL;
    int same = !tp_config_to_json(a, &x) && !tp_config_to_json(b, &y) && strcmp(x, y) == 0 &&
               memcmp(a->layer_sliding, b->layer_sliding, sizeof a->layer_sliding) == 0;
    free(x);
    free(y);
    return same;
}

static int model_same(const tp_model *a, const tp_model *b) {
    if (!a || !b) return 0;
    return config_same(&a->cfg, &b->cfg) && a->n_params == b->n_params &&
           memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0 && same_str(a->source, b->source) &&
           same_str(a->source_format, b->source_format) && same_str(a->chat_template, b->chat_template) &&
           tok_same(a->tok, b->tok);
}

/* ======================= scenarios ======================= */

/* What the scenarios share; each child sets up only what its scenario needs. */
typedef struct {
    char *tmp;             /* this scenario's scratch dir */
    char *hf;              /* HF folder: the sparsify fixture model + a tokenizer_config.json */
    char *gguf;            /* that model as GGUF (F16) */
    char *spm_gguf;        /* a GGUF holding only a SentencePiece ("llama") tokenizer */
    char *tok_bpe, *tok_spm; /* tests/alloc/fixtures tokenizer.json files */
    tp_model *model;       /* reference results */
    tp_tokenizer *tok, *tok2;
    tp_config cfg;
    char *str;
    /* checkpoints */
    tp_adamw opt;
    tp_ckpt_state st;
    tp_model *blank;       /* where loads land */
    tp_adamw blank_opt;
    char *ckdir, *refdir;
    /* compress files */
    char *plan_path, *imp_path, *out_path, *ref_path;
    tp_prune_plan *plan;
    tp_importance *imp;
    tp_safetensors *stf;
    /* results of one armed run */
    tp_model *r_model;
    tp_tokenizer *r_tok;
    tp_config r_cfg;
    char *r_str;
    tp_ckpt_state r_st;
    tp_prune_plan *r_plan;
    tp_importance *r_imp;
    tp_safetensors *r_stf;
    int32_t *r_ids[2 * N_TEXTS];
    size_t r_n[2 * N_TEXTS];
    char *r_dec[2 * N_TEXTS];
    int32_t *ref_ids[2 * N_TEXTS];
    size_t ref_n[2 * N_TEXTS];
    char *ref_dec[2 * N_TEXTS];
} ctx;

typedef struct {
    const char *name;
    int (*setup)(ctx *c);              /* disarmed; 0 on failure */
    tp_status (*run)(ctx *c);          /* the armed call */
    int (*same)(ctx *c);               /* disarmed: the TP_OK result equals the reference */
    void (*release)(ctx *c);           /* frees the run's result */
    const char *ok_note;               /* why a TP_OK after an injected failure may be expected */
    int (*before)(ctx *c);             /* NULL, or run disarmed before each run (0: cannot) */
    int (*after)(ctx *c, tp_status s); /* NULL, or checks what a run left on disk (0: wrong) */
} scenario;

static const char *chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}";

static int make_hf(ctx *c) {
    char *src = path2(fixtures(), "sparsify/model");
    c->hf = path2(c->tmp, "hf");
    mkdir(c->hf, 0755);
    static const char *files[] = {"config.json", "model.safetensors", "tokenizer.json"};
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        char *a = path2(src, files[i]), *b = path2(c->hf, files[i]), *abs = realpath(a, NULL);
        ok &= abs && symlink(abs, b) == 0;
        free(abs);
        free(a);
        free(b);
    }
    char *cfg = path2(c->hf, "tokenizer_config.json"), text[256];
    snprintf(text, sizeof text, "{\"chat_template\": \"%s\", \"model_max_length\": 128}\n", chat_template);
    ok &= write_text(cfg, text);
    free(cfg);
    free(src);
    return ok;
}

static int make_gguf(ctx *c) {
    tp_model *m = NULL;
    if (!make_hf(c) || tp_model_load(c->hf, &m)) return 0;
    c->gguf = path2(c->tmp, "model.gguf");
    tp_status s = tp_model_save_gguf(m, c->gguf, TP_GGML_F16);
    tp_model_free(m);
    if (s) fprintf(stderr, "alloc_fail: saving the GGUF: %s\n", tp_errmsg());
    return !s;
}

/* A GGUF with a small score-based SentencePiece vocabulary: <unk> <s> </s>, the 256 byte
 * tokens, then a few pieces and merges' results. */
static int make_spm_gguf(ctx *c) {
    static const char *pieces[] = {"\xe2\x96\x81", "\xe2\x96\x81t", "er", "in", "\xe2\x96\x81" "a", "en", "on",
                                   "\xe2\x96\x81th", "es", "\xe2\x96\x81the", "e", "t", "a", "h", "o", "r", "s",
                                   "n", "i", "l", "\xe2\x96\x81w", "or", "ld", "He", "ll", "\xe2\x96\x81wor",
                                   "\xe2\x96\x81world", "\xe2\x96\x81He", "llo", "\xe2\x96\x81Hello", "<|im_start|>"};
    size_t np = sizeof pieces / sizeof *pieces, n = 3 + 256 + np;
    char **tok = calloc(n, sizeof *tok);
    float *score = calloc(n, sizeof *score);
    int32_t *type = calloc(n, sizeof *type);
    tp_gguf_writer *w = NULL;
    int ok = tok && score && type;
    for (size_t i = 0; ok && i < n; i++) {
        char buf[16];
        if (i < 3) snprintf(buf, sizeof buf, "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
        else if (i < 259) snprintf(buf, sizeof buf, "<0x%02X>", (unsigned)(i - 3));
        tok[i] = strdup(i < 259 ? buf : pieces[i - 259]);
        score[i] = i < 259 ? 0.0f : -(float)(i - 259);
        type[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : i == n - 1 ? 4 : 1;
        ok &= tok[i] != NULL;
    }
    c->spm_gguf = path2(c->tmp, "spm.gguf");
    ok = ok && !tp_gguf_writer_new(&w) && !tp_gguf_set_str(w, "general.architecture", "llama") &&
         !tp_gguf_set_str(w, "tokenizer.ggml.model", "llama") &&
         !tp_gguf_set_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)tok, n) &&
         !tp_gguf_set_arr(w, "tokenizer.ggml.scores", TP_GGUF_FLOAT32, score, n) &&
         !tp_gguf_set_arr(w, "tokenizer.ggml.token_type", TP_GGUF_INT32, type, n) &&
         !tp_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1) &&
         !tp_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2) &&
         !tp_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0) &&
         !tp_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 1) && !tp_gguf_write(w, c->spm_gguf);
    if (!ok) fprintf(stderr, "alloc_fail: writing the SentencePiece GGUF: %s\n", tp_errmsg());
    tp_gguf_writer_free(w);
    for (size_t i = 0; tok && i < n; i++) free(tok[i]);
    free(tok);
    free(score);
    free(type);
    return ok;
}

/* ---- models ---- */

static int setup_model_hf(ctx *c) { return make_hf(c) && !tp_model_load(c->hf, &c->model); }
static tp_status run_model_hf(ctx *c) { return tp_model_load(c->hf, &c->r_model); }
static int same_model(ctx *c) { return model_same(c->model, c->r_model); }
static void rel_model(ctx *c) {
    tp_model_free(c->r_model);
    c->r_model = NULL;
}

static int setup_model_gguf(ctx *c) { return make_gguf(c) && !tp_model_load(c->gguf, &c->model); }
static tp_status run_model_gguf(ctx *c) { return tp_model_load(c->gguf, &c->r_model); }

/* ---- configs ---- */

static int setup_config_hf(ctx *c) { return make_hf(c) && !tp_config_load(c->hf, &c->cfg); }
static tp_status run_config_hf(ctx *c) {
    memset(&c->r_cfg, 0, sizeof c->r_cfg);
    return tp_config_load(c->hf, &c->r_cfg);
}
static int same_config(ctx *c) { return config_same(&c->cfg, &c->r_cfg); }
static void rel_nothing(ctx *c) { (void)c; }

static int setup_config_gguf(ctx *c) { return make_gguf(c) && !tp_config_load(c->gguf, &c->cfg); }
static tp_status run_config_gguf(ctx *c) {
    memset(&c->r_cfg, 0, sizeof c->r_cfg);
    return tp_config_load(c->gguf, &c->r_cfg);
}

/* ---- tokenizers ---- */

static int tok_paths(ctx *c) {
    c->tok_bpe = strdup("tests/alloc/fixtures/bpe/tokenizer.json");
    c->tok_spm = strdup("tests/alloc/fixtures/spm/tokenizer.json");
    return c->tok_bpe && c->tok_spm;
}
static int same_tok(ctx *c) { return tok_same(c->tok, c->r_tok); }
static void rel_tok(ctx *c) {
    tp_tok_free(c->r_tok);
    c->r_tok = NULL;
    free(c->r_str);
    c->r_str = NULL;
}

static int setup_tok_bpe(ctx *c) { return tok_paths(c) && !tp_tok_load_json(c->tok_bpe, &c->tok); }
static tp_status run_tok_bpe(ctx *c) { return tp_tok_load_json(c->tok_bpe, &c->r_tok); }
static int setup_tok_spm(ctx *c) { return tok_paths(c) && !tp_tok_load_json(c->tok_spm, &c->tok); }
static tp_status run_tok_spm(ctx *c) { return tp_tok_load_json(c->tok_spm, &c->r_tok); }

static tp_status tok_from_gguf(const char *path, tp_tokenizer **t) {
    tp_gguf *g = NULL;
    tp_status s = tp_gguf_open(path, &g);
    if (!s) s = tp_tok_load_gguf(g, t);
    tp_gguf_close(g);
    return s;
}
static int setup_tok_gguf(ctx *c) { return make_gguf(c) && !tok_from_gguf(c->gguf, &c->tok); }
static tp_status run_tok_gguf(ctx *c) { return tok_from_gguf(c->gguf, &c->r_tok); }
static int setup_tok_gguf_spm(ctx *c) { return make_spm_gguf(c) && !tok_from_gguf(c->spm_gguf, &c->tok); }
static tp_status run_tok_gguf_spm(ctx *c) { return tok_from_gguf(c->spm_gguf, &c->r_tok); }

/* tp_tok_load_any on the HF folder: tokenizer.json and the chat template. */
static int setup_tok_any(ctx *c) { return make_hf(c) && !tp_tok_load_any(c->hf, &c->tok, &c->str); }
static tp_status run_tok_any(ctx *c) { return tp_tok_load_any(c->hf, &c->r_tok, &c->r_str); }
static int same_tok_any(ctx *c) { return tok_same(c->tok, c->r_tok) && same_str(c->str, c->r_str); }

/* Encoding and decoding (not a loader, but where PCRE2's match data and utf8proc allocate). */
static tp_status encode_all(ctx *c, int32_t **ids, size_t *n, char **dec) {
    for (size_t i = 0; i < 2 * N_TEXTS; i++) {
        const tp_tokenizer *t = i < N_TEXTS ? c->tok : c->tok2;
        const char *s = texts[i % N_TEXTS];
        tp_status st = tp_tok_encode_ex(t, s, strlen(s), TP_TOK_ADD_SPECIAL, &ids[i], &n[i]);
        if (!st) st = tp_tok_decode(t, ids[i], n[i], 0, &dec[i], NULL);
        if (st) return st;
    }
    return TP_OK;
}
static int setup_encode(ctx *c) {
    return tok_paths(c) && !tp_tok_load_json(c->tok_bpe, &c->tok) && !tp_tok_load_json(c->tok_spm, &c->tok2) &&
           !encode_all(c, c->ref_ids, c->ref_n, c->ref_dec);
}
static tp_status run_encode(ctx *c) { return encode_all(c, c->r_ids, c->r_n, c->r_dec); }
static int same_encode(ctx *c) {
    for (size_t i = 0; i < 2 * N_TEXTS; i++)
        if (c->r_n[i] != c->ref_n[i] || memcmp(c->r_ids[i], c->ref_ids[i], c->r_n[i] * sizeof(int32_t)) ||
            !same_str(c->r_dec[i], c->ref_dec[i]))
            return 0;
    return 1;
}
static void rel_encode(ctx *c) {
    for (size_t i = 0; i < 2 * N_TEXTS; i++) {
        free(c->r_ids[i]);
        free(c->r_dec[i]);
        c->r_ids[i] = NULL;
        c->r_dec[i] = NULL;
        c->r_n[i] = 0;
    }
}

/* ---- safetensors (sharded) ---- */

static int setup_st(ctx *c) {
    c->str = path2(fixtures(), "st/sharded");
    return !tp_st_open(c->str, &c->stf);
}
static tp_status run_st(ctx *c) { return tp_st_open(c->str, &c->r_stf); }
static int same_st(ctx *c) {
    const tp_safetensors *a = c->stf, *b = c->r_stf;
    if (!b || a->n_tensors != b->n_tensors || a->n_shards != b->n_shards) return 0;
    for (size_t i = 0; i < a->n_tensors; i++) {
        const tp_st_tensor *x = &a->tensors[i], *y = tp_st_find(b, x->name);
        if (!y || x->n_elem != y->n_elem || x->nbytes != y->nbytes || x->dtype != y->dtype ||
            memcmp(x->shape, y->shape, sizeof x->shape) || memcmp(x->data, y->data, x->nbytes))
            return 0;
    }
    return 1;
}
static void rel_st(ctx *c) {
    tp_st_close(c->r_stf);
    c->r_stf = NULL;
}

/* ---- checkpoints ---- */

static tp_ckpt_state make_state(long step) {
    tp_ckpt_state st;
    memset(&st, 0, sizeof st);
    st.step = step;
    tp_rng_seed(&st.rng, 7 + (uint64_t)step);
    st.cursor.seed = 0xfedcba9876543210ull;
    st.cursor.epoch = 2;
    st.cursor.index = 1000 + (uint64_t)step;
    st.tokens_seen = 4096.0 * (double)step;
    st.elapsed_s = 1.25 * (double)step;
    st.args_json = "{\"lr\":0.01,\"data\":\"x\"}";
    static unsigned char extra[100];
    for (int i = 0; i < 100; i++) extra[i] = (unsigned char)(i * 7 + step);
    st.extra = extra;
    st.extra_bytes = sizeof extra;
    return st;
}

/* A model with non-trivial weights and moments (step-dependent), and an empty twin. */
static int setup_rig(ctx *c) {
    if (!make_hf(c) || tp_model_load(c->hf, &c->model)) return 0;
    tp_adamw_cfg oc;
    tp_adamw_defaults(&oc);
    oc.lr = 1e-2f;
    oc.total_steps = 20;
    if (tp_adamw_init(&c->opt, c->model, &oc) || tp_model_alloc(&c->model->cfg, &c->blank) ||
        tp_adamw_init(&c->blank_opt, c->blank, &oc))
        return 0;
    c->ckdir = path2(c->tmp, "ck");
    c->refdir = path2(c->tmp, "ref");
    return mkdir(c->ckdir, 0755) == 0 && mkdir(c->refdir, 0755) == 0;
}

static tp_status save_step(ctx *c, const char *dir, long step, int keep) {
    for (size_t i = 0; i < c->opt.n; i++) {
        c->opt.m[i] = 1e-3f * (float)((i * 7 + (size_t)step) % 97);
        c->opt.v[i] = 1e-6f * (float)((i * 3 + (size_t)step) % 89);
    }
    c->opt.step = step;
    tp_ckpt_state st = make_state(step);
    return tp_ckpt_save(dir, c->model, &c->opt, &st, keep);
}

/* Save: ckdir holds an older checkpoint and a stale temporary; the armed call writes step 10
 * with keep_last 1. */
static char *ck_name(const char *dir, long step, int tmp) {
    char name[64];
    snprintf(name, sizeof name, tmp ? ".ckpt-%08ld.tpc.tmp" : "ckpt-%08ld.tpc", step);
    return path2(dir, name);
}

static int prepare_save_dir(ctx *c) {
    rm_rf(c->ckdir);
    mkdir(c->ckdir, 0755);
    char *old = ck_name(c->ckdir, 3, 0), *stale = ck_name(c->ckdir, 4, 1), *ref3 = ck_name(c->refdir, 3, 0);
    size_t n;
    char *d = slurp(ref3, &n);
    FILE *f = fopen(old, "wb");
    int ok = d && f && fwrite(d, 1, n, f) == n;
    if (f) ok &= fclose(f) == 0;
    ok &= write_text(stale, "partial");
    free(d);
    free(old);
    free(stale);
    free(ref3);
    return ok;
}

static int setup_ckpt_save(ctx *c) {
    if (!setup_rig(c) || save_step(c, c->refdir, 3, 0) || save_step(c, c->refdir, 10, 0)) return 0;
    /* the reference of the armed call: the same save in a directory prepared the same way */
    if (!prepare_save_dir(c) || save_step(c, c->ckdir, 10, 1)) return 0;
    return dir_entries(c->ckdir) == 1;
}
static tp_status run_ckpt_save(ctx *c) { return save_step(c, c->ckdir, 10, 1); }
static int same_ckpt_save(ctx *c) {
    char *got = ck_name(c->ckdir, 10, 0), *want = ck_name(c->refdir, 10, 0);
    int same = same_file(got, want);
    free(got);
    free(want);
    return same;
}
/* After each run (and before the next): nothing but what was there and what was written. */
static int ckpt_save_dir_ok(ctx *c, tp_status s) {
    char *tmp10 = ck_name(c->ckdir, 10, 1), *new10 = ck_name(c->ckdir, 10, 0);
    int ok = access(tmp10, F_OK) != 0 && (s == TP_OK || access(new10, F_OK) != 0);
    free(tmp10);
    free(new10);
    return ok;
}

static void zero_blank(ctx *c) {
    memset(c->blank->params, 0, c->blank->n_params * sizeof(float));
    memset(c->blank_opt.m, 0, c->blank_opt.n * sizeof(float));
    memset(c->blank_opt.v, 0, c->blank_opt.n * sizeof(float));
    c->blank_opt.step = 0;
    memset(&c->r_st, 0, sizeof c->r_st);
}

/* Load: ckdir holds steps 5 and 10; the newest must come back, or a status. */
static int setup_ckpt_load(ctx *c) {
    if (!setup_rig(c) || save_step(c, c->ckdir, 5, 0) || save_step(c, c->ckdir, 10, 0)) return 0;
    zero_blank(c);
    if (tp_ckpt_load_latest(c->ckdir, c->blank, &c->blank_opt, &c->r_st, &c->str)) return 0;
    c->st = c->r_st;
    memset(&c->r_st, 0, sizeof c->r_st);
    /* the reference weights and moments: those of step 10 */
    c->opt.step = c->blank_opt.step;
    memcpy(c->opt.m, c->blank_opt.m, c->opt.n * sizeof(float));
    memcpy(c->opt.v, c->blank_opt.v, c->opt.n * sizeof(float));
    return c->st.step == 10;
}
static tp_status run_ckpt_load(ctx *c) {
    zero_blank(c);
    return tp_ckpt_load_latest(c->ckdir, c->blank, &c->blank_opt, &c->r_st, &c->r_str);
}
static int same_ckpt_load(ctx *c) {
    const tp_ckpt_state *a = &c->st, *b = &c->r_st;
    size_t n = c->opt.n * sizeof(float);
    return same_str(c->str, c->r_str) && a->step == b->step && memcmp(&a->rng, &b->rng, sizeof a->rng) == 0 &&
           memcmp(&a->cursor, &b->cursor, sizeof a->cursor) == 0 && a->tokens_seen == b->tokens_seen &&
           a->elapsed_s == b->elapsed_s && same_str(a->args_json, b->args_json) && a->extra_bytes == b->extra_bytes &&
           (!a->extra_bytes || memcmp(a->extra, b->extra, a->extra_bytes) == 0) &&
           memcmp(c->blank->params, c->model->params, n) == 0 && memcmp(c->blank_opt.m, c->opt.m, n) == 0 &&
           memcmp(c->blank_opt.v, c->opt.v, n) == 0 && c->blank_opt.step == c->opt.step;
}
static void rel_ckpt_load(ctx *c) {
    tp_ckpt_state_free(&c->r_st);
    free(c->r_str);
    c->r_str = NULL;
}

/* ---- importance scores and prune plans ---- */

static int setup_scores(ctx *c) {
    if (!make_hf(c) || tp_model_load(c->hf, &c->model)) return 0;
    int T = 16, n = 4, V = c->model->cfg.vocab;
    int32_t ids[4 * 16];
    for (int i = 0; i < n * T; i++) ids[i] = (int32_t)((i * 31 + 7) % V);
    tp_importance_opts o;
    tp_importance_opts_default(&o);
    o.depth_samples = 2;
    o.block_size = 1;
    if (tp_importance_compute(c->model, ids, (size_t)n, T, &o, &c->imp)) return 0;
    c->imp->model = strdup("tiny/model");
    c->imp->data = strdup("calib.txt");
    tp_prune_shape sh = {.d_model = 32, .d_ff = 40, .n_heads = 2, .n_kv_heads = 1, .n_layers = 0};
    int drop = 1;
    if (tp_prune_plan_make(&c->model->cfg, c->imp, -1, &sh, TP_DEPTH_LIST, &drop, 1, &c->plan)) return 0;
    c->imp_path = path2(c->tmp, "scores.json");
    c->plan_path = path2(c->tmp, "plan.json");
    c->out_path = path2(c->tmp, "out.json");
    c->ref_path = path2(c->tmp, "ref.json");
    return !tp_importance_save(c->imp, c->imp_path) && !tp_prune_plan_save(c->plan, c->plan_path);
}

static int setup_plan_load(ctx *c) {
    if (!setup_scores(c)) return 0;
    tp_prune_plan_free(c->plan);
    c->plan = NULL;
    return !tp_prune_plan_load(c->plan_path, &c->plan) && !tp_prune_plan_save(c->plan, c->ref_path);
}
static tp_status run_plan_load(ctx *c) { return tp_prune_plan_load(c->plan_path, &c->r_plan); }
static int same_plan(ctx *c) {
    return !tp_prune_plan_save(c->r_plan, c->out_path) && same_file(c->out_path, c->ref_path) &&
           same_str(c->plan->scores, c->r_plan->scores) && c->plan->agg_pair == c->r_plan->agg_pair;
}
static void rel_plan(ctx *c) {
    tp_prune_plan_free(c->r_plan);
    c->r_plan = NULL;
}

static int setup_imp_load(ctx *c) {
    if (!setup_scores(c)) return 0;
    tp_importance_free(c->imp);
    c->imp = NULL;
    return !tp_importance_load(c->imp_path, &c->imp) && !tp_importance_save(c->imp, c->ref_path);
}
static tp_status run_imp_load(ctx *c) { return tp_importance_load(c->imp_path, &c->r_imp); }
static int same_imp(ctx *c) {
    return !tp_importance_save(c->r_imp, c->out_path) && same_file(c->out_path, c->ref_path);
}
static void rel_imp(ctx *c) {
    tp_importance_free(c->r_imp);
    c->r_imp = NULL;
}

/* Saves: the armed call writes out_path; on TP_OK it must equal the disarmed save. */
static int setup_plan_save(ctx *c) { return setup_scores(c) && !tp_prune_plan_save(c->plan, c->ref_path); }
static tp_status run_plan_save(ctx *c) {
    unlink(c->out_path);
    return tp_prune_plan_save(c->plan, c->out_path);
}
static int same_out(ctx *c) { return same_file(c->out_path, c->ref_path); }
static int setup_imp_save(ctx *c) { return setup_scores(c) && !tp_importance_save(c->imp, c->ref_path); }
static tp_status run_imp_save(ctx *c) {
    unlink(c->out_path);
    return tp_importance_save(c->imp, c->out_path);
}

/* ---- model exports ---- */

/* The HF model (tokenizer, chat template) written again: an HF folder and a GGUF file. */
static int setup_save(ctx *c) {
    if (!make_hf(c) || tp_model_load(c->hf, &c->model)) return 0;
    c->out_path = path2(c->tmp, "out");
    c->ref_path = path2(c->tmp, "ref");
    return 1;
}
static int setup_save_hf(ctx *c) { return setup_save(c) && !tp_model_save_hf(c->model, c->ref_path, "F16"); }
static tp_status run_save_hf(ctx *c) {
    rm_rf(c->out_path);
    return tp_model_save_hf(c->model, c->out_path, "F16");
}
static int same_save_hf(ctx *c) { return same_dir(c->out_path, c->ref_path); }
static int setup_save_gguf(ctx *c) {
    return setup_save(c) && !tp_model_save_gguf(c->model, c->ref_path, TP_GGML_Q8_0);
}
static tp_status run_save_gguf(ctx *c) {
    unlink(c->out_path);
    return tp_model_save_gguf(c->model, c->out_path, TP_GGML_Q8_0);
}

/* ---- a check of this program: wrong on purpose ---- */

/* Leaks when its 2nd allocation fails and returns TP_OK with a wrong result when its 3rd does:
 * `alloc_fail selfcheck` must report FAIL with exactly those two bad runs (k=2: leak, k=3:
 * differs). Not part of the default run. */
static int setup_self(ctx *c) {
    (void)c;
    return 1;
}
static tp_status run_self(ctx *c) {
    char *a = malloc(16), *b = a ? malloc(16) : NULL, *d = b ? malloc(16) : NULL;
    c->r_str = NULL;
    if (!a) return tp_fail(TP_ERR_NOMEM, "selfcheck: first");
    if (!b) return tp_fail(TP_ERR_NOMEM, "selfcheck: second"); /* a leaks */
    free(a);
    free(d);
    c->r_str = b;
    strcpy(b, d ? "right" : "wrong");
    return TP_OK;
}
static int same_self(ctx *c) { return c->r_str && !strcmp(c->r_str, "right"); }
static void rel_self(ctx *c) {
    free(c->r_str);
    c->r_str = NULL;
}

static const scenario scenarios[] = {
    {"model_hf", setup_model_hf, run_model_hf, same_model, rel_model, NULL, NULL, NULL},
    {"model_gguf", setup_model_gguf, run_model_gguf, same_model, rel_model, NULL, NULL, NULL},
    {"config_hf", setup_config_hf, run_config_hf, same_config, rel_nothing, NULL, NULL, NULL},
    {"config_gguf", setup_config_gguf, run_config_gguf, same_config, rel_nothing, NULL, NULL, NULL},
    {"tok_json_bpe", setup_tok_bpe, run_tok_bpe, same_tok, rel_tok, "PCRE2's JIT is optional", NULL, NULL},
    {"tok_json_spm", setup_tok_spm, run_tok_spm, same_tok, rel_tok, NULL, NULL, NULL},
    {"tok_gguf_bpe", setup_tok_gguf, run_tok_gguf, same_tok, rel_tok, NULL, NULL, NULL},
    {"tok_gguf_spm", setup_tok_gguf_spm, run_tok_gguf_spm, same_tok, rel_tok, NULL, NULL, NULL},
    {"tok_load_any", setup_tok_any, run_tok_any, same_tok_any, rel_tok, NULL, NULL, NULL},
    {"tok_encode", setup_encode, run_encode, same_encode, rel_encode, "the BPE word cache is optional", NULL, NULL},
    {"safetensors_sharded", setup_st, run_st, same_st, rel_st, NULL, NULL, NULL},
    {"ckpt_save", setup_ckpt_save, run_ckpt_save, same_ckpt_save, rel_nothing,
     "removing stale temporaries and old checkpoints is best effort", prepare_save_dir, ckpt_save_dir_ok},
    {"ckpt_load", setup_ckpt_load, run_ckpt_load, same_ckpt_load, rel_ckpt_load, NULL, NULL, NULL},
    {"importance_load", setup_imp_load, run_imp_load, same_imp, rel_imp, NULL, NULL, NULL},
    {"importance_save", setup_imp_save, run_imp_save, same_out, rel_nothing, NULL, NULL, NULL},
    {"plan_load", setup_plan_load, run_plan_load, same_plan, rel_plan, NULL, NULL, NULL},
    {"plan_save", setup_plan_save, run_plan_save, same_out, rel_nothing, NULL, NULL, NULL},
    {"model_save_hf", setup_save_hf, run_save_hf, same_save_hf, rel_nothing, NULL, NULL, NULL},
    {"model_save_gguf", setup_save_gguf, run_save_gguf, same_out, rel_nothing, NULL, NULL, NULL},
    {"selfcheck", setup_self, run_self, same_self, rel_self, NULL, NULL, NULL}, /* last: run only when named */
};
#define N_SCEN (sizeof scenarios / sizeof scenarios[0])

/* ======================= driver ======================= */

/* Written by the child running a scenario, read by the parent (shared mapping). */
typedef struct {
    long points;        /* allocation points exercised */
    long returned;      /* runs that returned a status */
    long ok_same;       /* runs that returned TP_OK with the undisturbed result */
    long bad;           /* wrong results, leaks, failures without a message */
    long by_status[8];
    long k_now;         /* the k being run (a crash happened there) */
    long first_bad_k;
    char first_bad[300];
    int done;
} result;

static void bad(result *r, long k, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void bad(result *r, long k, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "alloc_fail: k=%ld: %s\n", k, msg);
    if (!r->bad++) {
        r->first_bad_k = k;
        snprintf(r->first_bad, sizeof r->first_bad, "%s", msg);
    }
}

static size_t heap_bytes(void) {
#if HAVE_LSAN
    return __sanitizer_get_current_allocated_bytes();
#else
    return 0;
#endif
}

/* A full leak check takes tens of milliseconds: only when the heap grew across the run. */
static int leak_check(size_t before) {
#if HAVE_LSAN
    return heap_bytes() > before && __lsan_do_recoverable_leak_check();
#else
    (void)before;
    return 0;
#endif
}

static ctx *the_ctx; /* reachable from a global: what setup built is no leak at exit */

static void run_scenario(const scenario *sc, const char *tmp, long only_k, result *r) {
    ctx *c = the_ctx = calloc(1, sizeof *c);
    c->tmp = path2(tmp, sc->name);
    mkdir(c->tmp, 0755);
    if (!sc->setup(c)) {
        bad(r, 0, "setup failed: %s", tp_errmsg());
        return;
    }
    /* once undisturbed: warms lazily built tables so that every run allocates alike */
    tp_status s = sc->run(c);
    if (s || !sc->same(c)) bad(r, 0, "the undisturbed call %s", s ? tp_errmsg() : "differs from the reference");
    sc->release(c);
    for (long k = only_k ? only_k : 1;; k++) {
        r->k_now = k;
        if (sc->before && !sc->before(c)) {
            bad(r, k, "cannot prepare the run");
            break;
        }
        tp_clear_error();
        size_t heap0 = heap_bytes();
        arm(k);
        s = sc->run(c);
        disarm();
        int hit = atomic_load(&injected);
        if (!hit) {
            if (s) bad(r, k, "no failure injected, yet: %s", tp_errmsg());
            else if (!sc->same(c)) bad(r, k, "no failure injected, yet the result differs");
        } else if (s) {
            r->returned++;
            r->by_status[(unsigned)s < 8 ? s : 7]++;
            if (!strcmp(tp_errmsg(), "no error recorded")) bad(r, k, "status %d without a message", (int)s);
        } else if (sc->same(c)) {
            r->ok_same++;
            if (verbose) fprintf(stderr, "alloc_fail: %s k=%ld: TP_OK as undisturbed\n", sc->name, k);
        } else
            bad(r, k, "TP_OK after the injected failure, but the result differs from the undisturbed one");
        if (sc->after && !sc->after(c, s)) bad(r, k, "a failed save left a temporary or a checkpoint behind");
        int tmps = 0, tmps2 = 0; /* temporaries of atomic writes: next to the outputs, in an output folder */
        dir_entries2(c->tmp, &tmps);
        if (c->out_path) dir_entries2(c->out_path, &tmps2);
        if (tmps + tmps2) bad(r, k, "a temporary file was left behind");
        sc->release(c);
        if (leak_check(heap0)) bad(r, k, "leak (LeakSanitizer report above)");
        if (!hit || only_k) {
            r->points = hit ? k : k - 1;
            break;
        }
    }
    r->done = 1;
}

int main(int argc, char **argv) {
    int a = 1;
    if (a < argc && !strcmp(argv[a], "-p")) persistent = 1, a++;
    const char *only = a < argc ? argv[a++] : NULL;
    long only_k = a < argc ? atol(argv[a]) : 0;
    trace = only_k > 0 || (getenv("ALLOC_FAIL_TRACE") && *getenv("ALLOC_FAIL_TRACE") == '1');
    verbose = getenv("ALLOC_FAIL_VERBOSE") && *getenv("ALLOC_FAIL_VERBOSE") == '1';
#ifdef _OPENMP
    omp_set_num_threads(1); /* one allocation order, and fork-safe */
#endif
    setvbuf(stdout, NULL, _IOLBF, 0);
    tp_set_log(NULL, NULL);
    cJSON_Hooks hooks = {json_malloc, free};
    cJSON_InitHooks(&hooks);
    tp_progress_set_mode(0);

    char tmp[] = "/tmp/taper-alloc-XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 2;
    }
    result *res = mmap(NULL, N_SCEN * sizeof *res, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) return 2;
    memset(res, 0, N_SCEN * sizeof *res);
    int n_pass = 0, n_fail = 0, n_run = 0;
    long total = 0;
    for (size_t i = 0; i < N_SCEN; i++) {
        const scenario *sc = &scenarios[i];
        if (only ? strcmp(only, sc->name) != 0 : !strcmp(sc->name, "selfcheck")) continue;
        n_run++;
        result *r = &res[i];
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(300);
            run_scenario(sc, tmp, only_k, r);
            exit(0); /* LeakSanitizer checks once more at exit */
        }
        int ws = 0;
        waitpid(pid, &ws, 0);
        int clean_exit = WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
        int ok = clean_exit && r->done && !r->bad;
        printf("%-20s %5ld allocation points: %ld returned a status", sc->name, r->points, r->returned);
        const char *names[] = {"ok", "IO", "FORMAT", "NOMEM", "ARG", "UNSUPPORTED", "NUMERIC", "other"};
        int first = 1;
        for (int s = 1; s < 8; s++)
            if (r->by_status[s]) printf("%s%s %ld", first ? " (" : ", ", names[s], r->by_status[s]), first = 0;
        int note = r->ok_same && sc->ok_note;
        printf("%s, %ld TP_OK as undisturbed%s%s%s  %s\n", first ? "" : ")", r->ok_same, note ? " (" : "",
               note ? sc->ok_note : "", note ? ")" : "", ok ? "PASS" : "FAIL");
        if (!ok) {
            if (r->bad) printf("    %ld bad runs; first at k=%ld: %s\n", r->bad, r->first_bad_k, r->first_bad);
            if (WIFSIGNALED(ws)) printf("    crashed (signal %d) at k=%ld\n", WTERMSIG(ws), r->k_now);
            else if (!clean_exit) printf("    exited with status %d at k=%ld (a sanitizer report above)\n",
                                         WIFEXITED(ws) ? WEXITSTATUS(ws) : -1, r->k_now);
        }
        total += r->points;
        ok ? n_pass++ : n_fail++;
    }
    rm_rf(tmp);
    if (!n_run) {
        fprintf(stderr, "alloc_fail: no scenario named %s\n", only ? only : "");
        return 2;
    }
    printf("%ld allocation points in all\n%d passed, %d failed\n", total, n_pass, n_fail);
    return n_fail ? 1 : 0;
}
