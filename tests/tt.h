/* Minimal test harness: TT_TEST registers a test (constructor); TT_CHECK records a failure
 * with file:line and a message; tt_skip marks the running test skipped with a reason.
 * The runner (tests/tt_main.c) prints one line per test and "N passed, N failed, N skipped". */
#ifndef TAPER_TT_H
#define TAPER_TT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "taper/model.h"

typedef void (*tt_fn)(void);
void tt_register(const char *name, const char *file, tt_fn fn);
int tt_check(int ok, const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void tt_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A skip for a part that is optional by design (a long check not asked for, a filesystem without
 * sparse files, another model than the fixtures'): the only skips TAPER_STRICT=1 accepts. */
void tt_skip_optional(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tt_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Paths: $TAPER_DATA (default ../shared/data), $TAPER_MODEL (default
 * $TAPER_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf, TAPER_CACHE default ~/.cache/taper),
 * tests/fixtures, and a per-run scratch directory (created, removed at exit if all passed). */
const char *tt_data_dir(void);
const char *tt_model_path(void);   /* NULL if the file does not exist */
/* NAME in $TAPER_CACHE (default ~/.cache/taper), malloc'd; it may not exist. */
char *tt_cache_path(const char *name);
/* llama.cpp's source tree (its models/ holds the tokenizer test vectors): $TAPER_LLAMA_CPP_SRC,
 * else the copy `make deps` unpacks, tt_cache_path("llama.cpp-0.3.36"); malloc'd. */
char *tt_llama_cpp_src(void);
/* The real Gemma-3-270M GGUF that `make deps` fetches ($TAPER_GEMMA3 overrides), malloc'd, or NULL
 * when the file is absent. */
char *tt_gemma3_path(void);
const char *tt_fixtures_dir(void);
const char *tt_tmp_dir(void);
/* Returns a malloc'd "dir/name". */
char *tt_path(const char *dir, const char *name);
/* The default model (tt_model_path), loaded once per process and shared by every test; NULL
 * (after a failed check) when it cannot be loaded, plain NULL when absent. Tests must not modify
 * it: the runner fails a test that used it and left its parameters changed. Freed at exit. */
tp_model *tt_model(void);
/* JSON files: tt_read_json parses PATH (NULL when it cannot be read or parsed);
 * tt_fixture_json does the same for tests/fixtures/REL and records a failed check naming the file
 * when it fails; tt_fixture_f32 reads tests/fixtures/REL, which must hold exactly n float32
 * (malloc'd; NULL otherwise, with a failed check when required is set). */
struct cJSON;
struct cJSON *tt_read_json(const char *path);
struct cJSON *tt_fixture_json(const char *rel);
float *tt_fixture_f32(const char *rel, size_t n, int required);
/* Writes n bytes of s to path: 1 on success, 0 on failure. */
int tt_write_text(const char *path, const char *s, size_t n);
/* 1 when the two files can be read and hold the same bytes. */
int tt_same_file(const char *a, const char *b);
/* The HF folder at path loaded, or NULL after a failed check naming it; tt_fixture_model does the
 * same for tests/fixtures/REL. */
tp_model *tt_load_hf(const char *path);
tp_model *tt_fixture_model(const char *rel);
/* n sentences "the quick brown fox <i> jumps over the lazy dog and runs away. " written to path
 * (calibration / evaluation text of the tiny-model command tests). Returns 1 on success. */
int tt_fox_text(const char *path, int n);
/* A token shard of `docs` Markov-chain documents a model can learn, written to path: lengths
 * min_len + [0, len_span), first symbol 3 + [0, n_sym), then 3 + (prev * mult + {0, 1, 2}) mod
 * n_sym; vocab ids, BOS 1 and EOS 2 around each. Returns 1, or 0 after a failed check. */
int tt_markov_shard(const char *path, int docs, int min_len, int len_span, int n_sym, int mult, int vocab,
                    uint64_t seed);
/* text written to tmp/subdir/name and loaded as a tokenizer.json; a failure's message must name
 * the file (a failed check otherwise). */
struct tp_tokenizer;
tp_status tt_tok_load_text(const char *subdir, const char *name, const char *text, struct tp_tokenizer **t);
/* $TAPER_BIN (the taper binary under test; make test sets it) or NULL. */
const char *tt_bin(void);
/* Runs "$TAPER_BIN ARGS" (a shell command line) with TAPER_PROGRESS=0, its stdout and stderr
 * into *out (malloc'd, never NULL); returns the exit status (-1: it did not exit). */
int tt_taper(const char *args, char **out);
/* system() of the printf-formatted command: its exit status, or -1 when it did not exit. */
int tt_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define TT_TEST(name)                                                            \
    static void name(void);                                                      \
    __attribute__((constructor)) static void name##__reg(void) {                 \
        tt_register(#name, __FILE__, name);                                      \
    }                                                                            \
    static void name(void)

/* The condition is evaluated before the message arguments (the comma operator sequences them), so
 * a message that calls tp_errmsg() shows the error of the call in the condition. */
extern int tt_cond_;
#define TT_CHECK(cond, ...) (tt_cond_ = !!(cond), tt_check(tt_cond_, __FILE__, __LINE__, #cond, __VA_ARGS__))
/* |a-b| <= atol + rtol*|b| */
#define TT_NEAR(a, b, atol, rtol)                                                \
    tt_check(fabs((double)(a) - (double)(b)) <= (atol) + (rtol) * fabs((double)(b)), \
             __FILE__, __LINE__, #a " ~ " #b, "%.9g vs %.9g", (double)(a), (double)(b))

#endif
