/* Token shards and the sequence loader: shard round trip and byte layout, the document-by-document
 * writer (same bytes, atomic close: a failed or killed write leaves no partial shard), every malformed-shard
 * refusal, exact packing of a hand-made dataset (BOS/EOS, windows, validation split), the
 * per-epoch shuffles, seek/resume equivalence, and `taper tokenize` end to end (token ids equal
 * tp_tok_encode of the same text, document boundaries, JSONL errors, thread-count independence). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "taper/gguf.h"
#include "taper/rng.h"
#include "taper/tokenizer.h"
#include "taper/train.h"
#include "taper/util.h"
#include "tt.h"

/* ------------------------------------------------------------ helpers --- */

static char *tmp_file(const char *name) { return tt_path(tt_tmp_dir(), name); }

static char *tmp_subdir(const char *name) {
    char *p = tmp_file(name);
    mkdir(p, 0755);
    return p;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) { TT_CHECK(0, "cannot write %s", path); return; }
    fputs(text, f);
    fclose(f);
}

static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* An independent reader of the documented layout (docs/data.md), used to check what
 * `taper tokenize` wrote without going through the library's reader. */
typedef struct {
    uint32_t version, vocab;
    int32_t bos, eos;
    uint64_t n_tokens, n_docs, fingerprint;
    uint32_t *tokens;
    uint64_t *doc_start;
    char *source;
} raw_shard;

static int raw_read(const char *path, raw_shard *r) {
    memset(r, 0, sizeof *r);
    char *data = NULL;
    size_t len = 0;
    if (tp_read_file(path, &data, &len) != TP_OK || len < 64 || memcmp(data, "TAPERTOK", 8) != 0) {
        free(data);
        return -1;
    }
    const uint8_t *p = (const uint8_t *)data;
    r->version = rd32(p + 8);
    uint32_t hb = rd32(p + 12), sl = rd32(p + 44);
    r->n_tokens = rd64(p + 16);
    r->n_docs = rd64(p + 24);
    r->vocab = rd32(p + 32);
    r->bos = (int32_t)rd32(p + 36);
    r->eos = (int32_t)rd32(p + 40);
    r->fingerprint = rd64(p + 48);
    size_t tb = (size_t)((r->n_tokens * 4 + 7) / 8 * 8);
    if (hb != (64 + sl + 7) / 8 * 8 || len != hb + tb + r->n_docs * 8) {
        free(data);
        return -1;
    }
    r->source = calloc(1, sl + 1);
    memcpy(r->source, p + 64, sl);
    r->tokens = malloc(r->n_tokens * 4 + 4);
    memcpy(r->tokens, p + hb, r->n_tokens * 4);
    r->doc_start = malloc(r->n_docs * 8 + 8);
    memcpy(r->doc_start, p + hb + tb, r->n_docs * 8);
    free(data);
    return 0;
}

static void raw_free(raw_shard *r) {
    free(r->tokens);
    free(r->doc_start);
    free(r->source);
}

/* Stream of a dataset as the loader builds it, by the rule of docs/data.md, from raw shards. */
typedef struct {
    int32_t *v;
    size_t n;
} ivec;

static void ivec_push(ivec *a, int32_t x) {
    a->v = realloc(a->v, (a->n + 1) * sizeof *a->v);
    a->v[a->n++] = x;
}

/* The whole stream read back through the loader: one window of T = n_stream - 1. */
static int32_t *loader_whole_stream(const tp_dataset *d, size_t n_stream) {
    tp_loader *L = NULL;
    if (tp_loader_open(d, (int)(n_stream - 1), 0.0, 1, &L) != TP_OK) return NULL;
    int32_t *x = malloc(n_stream * sizeof *x), *y = malloc(n_stream * sizeof *y);
    if (tp_loader_n_train(L) != 1 || tp_loader_next(L, 1, x, y) != TP_OK) {
        free(x);
        free(y);
        tp_loader_free(L);
        return NULL;
    }
    x[n_stream - 1] = y[n_stream - 2];
    free(y);
    tp_loader_free(L);
    return x;
}

/* ------------------------------------------------------------ shards --- */

TT_TEST(data_shard_round_trip_and_layout) {
    uint32_t toks[] = {5, 6, 7, 8, 9, 10, 11};
    uint64_t docs[] = {0, 3, 4};
    char *p = tmp_file("rt.tpt");
    tp_status s = tp_shard_write_ex(p, toks, 7, docs, 3, 50, 1, 2, 0x1234567890abcdefull, "unit test source");
    TT_CHECK(s == TP_OK, "write: %s", tp_errmsg());
    /* byte layout as documented */
    raw_shard r = {0};
    TT_CHECK(raw_read(p, &r) == 0, "raw read of %s", p);
    TT_CHECK(r.version == 1 && r.vocab == 50 && r.bos == 1 && r.eos == 2 && r.n_tokens == 7 && r.n_docs == 3,
             "header fields v%u vocab %u bos %d eos %d n %llu docs %llu", r.version, r.vocab, r.bos, r.eos,
             (unsigned long long)r.n_tokens, (unsigned long long)r.n_docs);
    TT_CHECK(r.fingerprint == 0x1234567890abcdefull && strcmp(r.source, "unit test source") == 0, "fingerprint/source");
    TT_CHECK(r.tokens && memcmp(r.tokens, toks, sizeof toks) == 0 && memcmp(r.doc_start, docs, sizeof docs) == 0,
             "payload bytes");
    raw_free(&r);
    struct stat st;
    TT_CHECK(stat(p, &st) == 0 && st.st_size == 64 + 16 + 32 + 24, "file size %lld == 64 + 16 (source) + 32 (7 tokens, padded) + 24",
             (long long)st.st_size);
    /* through the library */
    tp_dataset *d = NULL;
    s = tp_dataset_open(p, &d);
    TT_CHECK(s == TP_OK, "open: %s", tp_errmsg());
    if (!d) { free(p); return; }
    tp_dataset_info info;
    tp_dataset_get_info(d, &info);
    TT_CHECK(tp_dataset_tokens(d) == 7 && tp_dataset_docs(d) == 3, "counts");
    TT_CHECK(info.n_shards == 1 && info.vocab == 50 && info.bos == 1 && info.eos == 2 &&
                 info.tok_fingerprint == 0x1234567890abcdefull,
             "info");
    /* stream = BOS 5 6 7 EOS BOS 8 EOS BOS 9 10 11 EOS */
    int32_t want[] = {1, 5, 6, 7, 2, 1, 8, 2, 1, 9, 10, 11, 2};
    int32_t *got = loader_whole_stream(d, 13);
    TT_CHECK(got && memcmp(got, want, sizeof want) == 0, "whole stream equals the documented packing");
    free(got);
    tp_dataset_close(d);
    /* the plain writer: fingerprint 0, no source */
    s = tp_shard_write(p, toks, 7, docs, 3, 50, -1, -1);
    TT_CHECK(s == TP_OK && raw_read(p, &r) == 0 && r.fingerprint == 0 && r.source[0] == 0 && r.bos == -1 &&
                 r.eos == -1,
             "tp_shard_write: %s", tp_errmsg());
    raw_free(&r);
    free(p);
}

TT_TEST(data_shard_writer_refuses_bad_content) {
    uint32_t toks[] = {1, 2, 3, 4};
    uint64_t ok_docs[] = {0, 2}, dup[] = {0, 0}, late[] = {1, 2}, past[] = {0, 4};
    char *p = tmp_file("bad_w.tpt");
    struct { const uint32_t *t; size_t n; const uint64_t *d; size_t nd; uint32_t vocab; int32_t bos, eos; const char *field; } c[] = {
        {toks, 4, ok_docs, 2, 4, -1, -1, "tokens[3]"},   /* id 4 >= vocab 4 */
        {toks, 4, dup, 2, 10, -1, -1, "doc_start[1]"},
        {toks, 4, late, 2, 10, -1, -1, "doc_start[0]"},
        {toks, 4, past, 2, 10, -1, -1, "doc_start[1]"},
        {toks, 4, ok_docs, 2, 10, 10, -1, "bos"},
        {toks, 4, ok_docs, 2, 10, -1, -7, "eos"},
        {toks, 4, ok_docs, 0, 10, -1, -1, "n_docs"},
        {toks, 4, ok_docs, 2, 0, -1, -1, "vocab"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        tp_status s = tp_shard_write(p, c[i].t, c[i].n, c[i].d, c[i].nd, c[i].vocab, c[i].bos, c[i].eos);
        TT_CHECK(s == TP_ERR_ARG && strstr(tp_errmsg(), c[i].field) && strstr(tp_errmsg(), p),
                 "case %zu refused naming %s and the file: %s", i, c[i].field, tp_errmsg());
    }
    struct stat st;
    TT_CHECK(stat(p, &st) != 0, "nothing written for refused content");
    free(p);
}

/* Count of files in dir whose name starts with prefix (leftover temporaries of a shard write). */
static int count_prefixed(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d) closedir(d);
    return n;
}

/* A child process that fills a writer with n_tok tokens and closes it onto path with the file
 * size limited to 4 KiB: with die set, SIGXFSZ kills it in the middle of writing (an
 * interrupted write); without, the write fails with EFBIG. Exit status 0: close refused (the
 * failing case), 1: anything else. Returns the raw wait status. */
static int child_write_limited(const char *path, size_t n_tok, int die) {
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit core = {0, 0}, fsz = {4096, RLIM_INFINITY};
        setrlimit(RLIMIT_CORE, &core);
        if (!die) signal(SIGXFSZ, SIG_IGN);
        tp_shard_writer *w = NULL;
        int32_t *ids = malloc(n_tok * sizeof *ids);
        for (size_t i = 0; ids && i < n_tok; i++) ids[i] = (int32_t)(i % 100);
        if (!ids || tp_shard_writer_open(path, 100, -1, -1, 7, &w) || tp_shard_writer_add_doc(w, ids, n_tok)) _exit(1);
        setrlimit(RLIMIT_FSIZE, &fsz);
        tp_status s = tp_shard_writer_close(w, "limited", NULL);
        _exit(s == TP_ERR_IO ? 0 : 1);
    }
    int ws = -1;
    if (pid > 0) waitpid(pid, &ws, 0);
    return ws;
}

TT_TEST(data_shard_writer_documents_and_atomic_close) {
    char *dir = tmp_file("writer"), *p = tt_path(dir, "w.tpt"), *q = tt_path(dir, "arrays.tpt");
    tt_sh("rm -rf '%s' && mkdir -p '%s'", dir, dir);
    int32_t d0[] = {3, 4, 5}, d1[] = {6}, d2[] = {7, 8, 99}, bad_hi[] = {1, 100}, bad_neg[] = {-1};
    tp_shard_writer *w = NULL;
    tp_status s = tp_shard_writer_open(p, 100, 1, -1, 0xfeedfacecafeull, &w);
    TT_CHECK(s == TP_OK && w, "open: %s", tp_errmsg());
    if (!w) goto out;
    TT_CHECK(tp_shard_writer_add_doc(w, d0, 3) == TP_OK && tp_shard_writer_add_doc(w, d1, 1) == TP_OK, "add: %s",
             tp_errmsg());
    /* refused documents leave the writer as it was */
    TT_CHECK(tp_shard_writer_add_doc(w, d1, 0) == TP_ERR_ARG && strstr(tp_errmsg(), "empty"), "empty doc: %s",
             tp_errmsg());
    TT_CHECK(tp_shard_writer_add_doc(w, bad_hi, 2) == TP_ERR_ARG && strstr(tp_errmsg(), "id 100"), "id >= vocab: %s",
             tp_errmsg());
    TT_CHECK(tp_shard_writer_add_doc(w, bad_neg, 1) == TP_ERR_ARG && strstr(tp_errmsg(), p), "id < 0: %s", tp_errmsg());
    TT_CHECK(tp_shard_writer_add_doc(w, d2, 3) == TP_OK, "add: %s", tp_errmsg());
    TT_CHECK(tp_shard_writer_tokens(w) == 7 && tp_shard_writer_docs(w) == 3, "counts %zu tokens, %zu docs",
             tp_shard_writer_tokens(w), tp_shard_writer_docs(w));
    struct stat st;
    TT_CHECK(stat(p, &st) != 0, "nothing under the final name before close");
    size_t bytes = 0;
    s = tp_shard_writer_close(w, "writer test", &bytes);
    TT_CHECK(s == TP_OK, "close: %s", tp_errmsg());
    TT_CHECK(stat(p, &st) == 0 && (size_t)st.st_size == bytes && bytes == 64 + 16 + 32 + 24,
             "close reports the file size: %zu", bytes);
    TT_CHECK(count_prefixed(dir, "w.tpt.tmp") == 0, "no temporary left");
    /* read back */
    tp_dataset *d = NULL;
    s = tp_dataset_open(p, &d);
    TT_CHECK(s == TP_OK, "open the written shard: %s", tp_errmsg());
    if (d) {
        tp_dataset_info info;
        tp_dataset_get_info(d, &info);
        TT_CHECK(tp_dataset_tokens(d) == 7 && tp_dataset_docs(d) == 3, "read back 7 tokens, 3 documents");
        TT_CHECK(info.vocab == 100 && info.bos == 1 && info.eos == -1 && info.tok_fingerprint == 0xfeedfacecafeull,
                 "header: vocab %u bos %d eos %d fingerprint %llx", info.vocab, info.bos, info.eos,
                 (unsigned long long)info.tok_fingerprint);
        int32_t want[] = {1, 3, 4, 5, 1, 6, 1, 7, 8, 99};
        int32_t *got = loader_whole_stream(d, 10);
        TT_CHECK(got && memcmp(got, want, sizeof want) == 0, "documents in order, BOS before each");
        free(got);
        tp_dataset_close(d);
    }
    /* the same bytes as the whole-array writer */
    uint32_t toks[] = {3, 4, 5, 6, 7, 8, 99};
    uint64_t starts[] = {0, 3, 4};
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    TT_CHECK(tp_shard_write_ex(q, toks, 7, starts, 3, 100, 1, -1, 0xfeedfacecafeull, "writer test") == TP_OK &&
                 tp_read_file(p, &a, &na) == TP_OK && tp_read_file(q, &b, &nb) == TP_OK && na == nb &&
                 memcmp(a, b, na) == 0,
             "document by document and whole arrays write identical files");
    /* abort: nothing written */
    char *r = tt_path(dir, "aborted.tpt");
    unlink(r);
    w = NULL;
    TT_CHECK(tp_shard_writer_open(r, 100, -1, -1, 0, &w) == TP_OK && tp_shard_writer_add_doc(w, d0, 3) == TP_OK,
             "open + add");
    tp_shard_writer_abort(w);
    TT_CHECK(stat(r, &st) != 0, "an aborted writer leaves no file");
    free(r);
    /* a bad header is refused at open, naming the field */
    w = NULL;
    TT_CHECK(tp_shard_writer_open(p, 100, 100, -1, 0, &w) == TP_ERR_ARG && !w && strstr(tp_errmsg(), "bos"),
             "bos >= vocab refused at open: %s", tp_errmsg());
    /* a write that fails (EFBIG past a 4 KiB file-size limit) keeps the old shard under the final
     * name and removes its temporary */
    int ws = child_write_limited(p, 20000, 0);
    TT_CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "the limited write is refused (wait status %d)", ws);
    char *c = NULL;
    size_t nc = 0;
    TT_CHECK(tp_read_file(p, &c, &nc) == TP_OK && nc == na && memcmp(a, c, na) == 0,
             "after a failed write the final name still holds the old shard, byte for byte");
    free(c);
    c = NULL;
    TT_CHECK(count_prefixed(dir, "w.tpt.tmp") == 0, "the failed write's temporary is removed");
    /* a write killed midway (SIGXFSZ) leaves at most a partial temporary, never a partial shard */
    char *k = tt_path(dir, "killed.tpt");
    unlink(k);
    ws = child_write_limited(k, 20000, 1);
    TT_CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGXFSZ, "the child died in the write (wait status %d)", ws);
    TT_CHECK(stat(k, &st) != 0, "no shard under the final name after an interrupted write");
    TT_CHECK(count_prefixed(dir, "killed.tpt.tmp") == 1, "the partial temporary is the only trace");
    d = NULL;
    s = tp_dataset_open(dir, &d);
    TT_CHECK(s == TP_OK && tp_dataset_docs(d) == 6, "the directory still opens (temporaries are not shards): %s",
             s ? tp_errmsg() : "ok");
    tp_dataset_close(d);
    tt_sh("rm -f '%s'.tmp.*", k);
    free(k);
    free(a);
    free(b);
out:
    free(p);
    free(q);
    free(dir);
}

/* A valid shard's bytes to corrupt: 5 tokens, docs {0, 2}, vocab 100, bos 1, eos 2, no source. */
static uint8_t *valid_bytes(size_t *n) {
    uint32_t toks[] = {10, 11, 12, 13, 14};
    uint64_t docs[] = {0, 2};
    char *p = tmp_file("valid.tpt");
    char *data = NULL;
    if (tp_shard_write(p, toks, 5, docs, 2, 100, 1, 2) != TP_OK || tp_read_file(p, &data, n) != TP_OK) {
        free(p);
        return NULL;
    }
    free(p);
    return (uint8_t *)data;
}

static void expect_refused(const char *name, const uint8_t *bytes, size_t n, const char *field) {
    char *p = tmp_file(name);
    write_bytes(p, bytes, n);
    tp_dataset *d = NULL;
    tp_status s = tp_dataset_open(p, &d);
    TT_CHECK(s == TP_ERR_FORMAT && d == NULL && strstr(tp_errmsg(), p) && strstr(tp_errmsg(), field),
             "%s refused naming the file and '%s': [%s] %s", name, field, tp_status_name(s), tp_errmsg());
    tp_dataset_close(d);
    free(p);
}

TT_TEST(data_malformed_shards_are_refused) {
    size_t n = 0;
    uint8_t *v = valid_bytes(&n);
    TT_CHECK(v && n == 64 + 24 + 16, "valid shard is %zu bytes", n);
    if (!v) return;
    uint8_t *b = malloc(n + 16);
    const size_t TOK = 64, DOC = 64 + 24;
    /* truncations: in the header, in the tokens, in the doc starts */
    expect_refused("trunc_head.tpt", v, 40, "truncated");
    expect_refused("trunc_tok.tpt", v, TOK + 8, "truncated");
    expect_refused("trunc_doc.tpt", v, n - 4, "truncated");
    expect_refused("empty.tpt", v, 0, "truncated");
    memcpy(b, v, n);
    memset(b + n, 0, 8);
    expect_refused("trailing.tpt", b, n + 8, "trailing");
    memcpy(b, v, n); b[0] = 'X';
    expect_refused("magic.tpt", b, n, "magic");
    memcpy(b, v, n); wr32(b + 8, 2);
    expect_refused("version.tpt", b, n, "version");
    memcpy(b, v, n); wr64(b + 16, 1ull << 60);
    expect_refused("ntok_huge.tpt", b, n, "n_tokens");
    memcpy(b, v, n); wr64(b + 16, 7);
    expect_refused("ntok_more.tpt", b, n, "n_tokens");
    memcpy(b, v, n); wr64(b + 24, 3);
    expect_refused("ndocs_more.tpt", b, n, "n_docs");
    memcpy(b, v, n); wr32(b + TOK + 4 * 3, 100);
    expect_refused("tok_vocab.tpt", b, n, "tokens[3]");
    memcpy(b, v, n); wr32(b + TOK, 0xffffffffu);
    expect_refused("tok_neg.tpt", b, n, "tokens[0]");
    memcpy(b, v, n); wr64(b + DOC + 8, 0);
    expect_refused("doc_dup.tpt", b, n, "doc_start[1]");
    memcpy(b, v, n); wr64(b + DOC + 8, 5);
    expect_refused("doc_past.tpt", b, n, "doc_start[1]");
    memcpy(b, v, n); wr64(b + DOC, 1);
    expect_refused("doc_first.tpt", b, n, "doc_start[0]");
    memcpy(b, v, n); wr32(b + 36, 100);
    expect_refused("bos.tpt", b, n, "bos");
    memcpy(b, v, n); wr32(b + 40, (uint32_t)-5);
    expect_refused("eos.tpt", b, n, "eos");
    memcpy(b, v, n); wr32(b + 32, 0);
    expect_refused("vocab0.tpt", b, n, "vocab");
    memcpy(b, v, n); wr32(b + 44, 3);
    expect_refused("srclen.tpt", b, n, "header_bytes");
    memcpy(b, v, n); wr64(b + 56, 1);
    expect_refused("flags.tpt", b, n, "flags");

    /* mixed shards in one dataset: the second shard and the field are named */
    uint32_t t2[] = {3, 4};
    uint64_t d2[] = {0};
    const struct { uint32_t vocab; int32_t bos, eos; uint64_t fp; const char *field; } mix[] = {
        {101, 1, 2, 0, "vocab"}, {100, -1, 2, 0, "bos"}, {100, 1, 3, 0, "eos"}, {100, 1, 2, 77, "tok_fingerprint"}};
    char *dir = tmp_subdir("mixed");
    char *a = tt_path(dir, "a.tpt"), *bb = tt_path(dir, "b.tpt");
    write_bytes(a, v, n);
    for (size_t i = 0; i < 4; i++) {
        tp_status s = tp_shard_write_ex(bb, t2, 2, d2, 1, mix[i].vocab, mix[i].bos, mix[i].eos, mix[i].fp, NULL);
        TT_CHECK(s == TP_OK, "write mixed %zu", i);
        tp_dataset *d = NULL;
        s = tp_dataset_open(dir, &d);
        TT_CHECK(s == TP_ERR_FORMAT && !d && strstr(tp_errmsg(), bb) && strstr(tp_errmsg(), mix[i].field),
                 "mixed %s refused naming %s: %s", mix[i].field, bb, tp_errmsg());
        tp_dataset_close(d);
    }
    /* a matching second shard opens, through the directory and through a comma list */
    TT_CHECK(tp_shard_write(bb, t2, 2, d2, 1, 100, 1, 2) == TP_OK, "write b");
    tp_dataset *d = NULL;
    TT_CHECK(tp_dataset_open(dir, &d) == TP_OK && tp_dataset_tokens(d) == 7 && tp_dataset_docs(d) == 3,
             "directory of two shards: %s", tp_errmsg());
    tp_dataset_close(d);
    char list[1024];
    snprintf(list, sizeof list, "%s,%s", bb, a);
    d = NULL;
    TT_CHECK(tp_dataset_open(list, &d) == TP_OK && tp_dataset_tokens(d) == 7, "comma list: %s", tp_errmsg());
    if (d) { /* list order is kept: b's document comes first */
        int32_t want[] = {1, 3, 4, 2, 1, 10, 11, 2, 1, 12, 13, 14, 2};
        int32_t *got = loader_whole_stream(d, 13);
        TT_CHECK(got && memcmp(got, want, sizeof want) == 0, "comma list keeps its order");
        free(got);
    }
    tp_dataset_close(d);
    /* missing file / empty directory */
    char *empty = tmp_subdir("no_shards");
    d = NULL;
    TT_CHECK(tp_dataset_open(empty, &d) != TP_OK && !d && strstr(tp_errmsg(), empty), "empty dir: %s", tp_errmsg());
    TT_CHECK(tp_dataset_open("/nonexistent/x.tpt", &d) == TP_ERR_IO && strstr(tp_errmsg(), "/nonexistent/x.tpt"),
             "missing file: %s", tp_errmsg());
    free(empty);
    free(a);
    free(bb);
    free(dir);
    free(b);
    free(v);
}

/* ------------------------------------------------------------ packing --- */

/* Identifies each window by its content among the expected windows (content is unique there). */
static long find_window(const int32_t *x, const int32_t *y, const int32_t *stream, size_t n_windows, int T) {
    for (size_t w = 0; w < n_windows; w++)
        if (memcmp(x, stream + w * (size_t)T, (size_t)T * 4) == 0 && memcmp(y, stream + w * (size_t)T + 1, (size_t)T * 4) == 0)
            return (long)w;
    return -1;
}

TT_TEST(data_packing_is_exact_on_a_hand_made_dataset) {
    /* docs [10 11 12] [20 21] | (second shard) [30 31 32 33]; bos 1, eos 2 */
    char *dir = tmp_subdir("pack");
    char *p0 = tt_path(dir, "s0.tpt"), *p1 = tt_path(dir, "s1.tpt");
    uint32_t t0[] = {10, 11, 12, 20, 21}, t1[] = {30, 31, 32, 33};
    uint64_t d0[] = {0, 3}, d1[] = {0};
    char *pe = tt_path(dir, "s0b.tpt"); /* an empty shard between the two: skipped by the stream */
    TT_CHECK(tp_shard_write(p0, t0, 5, d0, 2, 64, 1, 2) == TP_OK && tp_shard_write(p1, t1, 4, d1, 1, 64, 1, 2) == TP_OK &&
                 tp_shard_write(pe, NULL, 0, NULL, 0, 64, 1, 2) == TP_OK,
             "write: %s", tp_errmsg());
    tp_dataset *d = NULL;
    TT_CHECK(tp_dataset_open(dir, &d) == TP_OK, "open: %s", tp_errmsg());
    if (!d) return;
    /* stream: 1 10 11 12 2 1 20 21 2 1 30 31 32 33 2 (15); T = 4 -> 3 windows, 2 tokens unused */
    const int T = 4;
    const int32_t win[3][5] = {{1, 10, 11, 12, 2}, {2, 1, 20, 21, 2}, {2, 1, 30, 31, 32}};
    tp_loader *L = NULL;
    tp_dataset_info info;
    tp_dataset_get_info(d, &info);
    TT_CHECK(info.n_shards == 3 && tp_dataset_tokens(d) == 9 && tp_dataset_docs(d) == 3, "3 shards, one empty");
    TT_CHECK(tp_loader_open(d, T, 1.0 / 3, 7, &L) == TP_OK, "open loader: %s", tp_errmsg());
    if (!L) { tp_dataset_close(d); return; }
    TT_CHECK(tp_loader_n_train(L) == 2 && tp_loader_n_val(L) == 1, "k = 3: 2 train, 1 val (%zu, %zu)",
             tp_loader_n_train(L), tp_loader_n_val(L));
    char line[512];
    tp_loader_describe(L, line, sizeof line);
    TT_CHECK(strstr(line, "3 shards") && strstr(line, "9 tokens") && strstr(line, "3 documents") && strstr(line, "15 stream tokens") &&
                 strstr(line, "3 windows") && strstr(line, "2 train, 1 val") && strstr(line, "last 2 tokens unused"),
             "describe: %s", line);
    int32_t x[8], y[8];
    int got = -1;
    TT_CHECK(tp_loader_val(L, 0, 4, x, y, &got) == TP_OK && got == 1, "one val window (got %d)", got);
    TT_CHECK(memcmp(x, win[2], 16) == 0 && memcmp(y, win[2] + 1, 16) == 0, "val window = window 2 exactly");
    TT_CHECK(tp_loader_val(L, 1, 4, x, y, &got) == TP_OK && got == 0, "past the end: 0 windows");
    /* one epoch of training: windows 0 and 1 each once, exactly */
    int seen[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        TT_CHECK(tp_loader_next(L, 1, x, y) == TP_OK, "next");
        for (int w = 0; w < 2; w++)
            if (memcmp(x, win[w], 16) == 0 && memcmp(y, win[w] + 1, 16) == 0) seen[w]++;
    }
    TT_CHECK(seen[0] == 1 && seen[1] == 1, "epoch 0 serves windows 0 and 1 once each (%d %d)", seen[0], seen[1]);
    tp_data_cursor c = tp_loader_cursor(L);
    TT_CHECK(c.seed == 7 && c.epoch == 1 && c.index == 0, "cursor after one epoch: (%llu, %llu, %llu)",
             (unsigned long long)c.seed, (unsigned long long)c.epoch, (unsigned long long)c.index);
    tp_loader_free(L);

    /* no validation, T = 7: two windows [0..7] [7..14]; a batch of 2 returns both */
    TT_CHECK(tp_loader_open(d, 7, 0.0, 1, &L) == TP_OK && tp_loader_n_train(L) == 2 && tp_loader_n_val(L) == 0,
             "T=7 no val");
    const int32_t s15[15] = {1, 10, 11, 12, 2, 1, 20, 21, 2, 1, 30, 31, 32, 33, 2};
    int32_t xb[14], yb[14];
    TT_CHECK(tp_loader_next(L, 2, xb, yb) == TP_OK, "next B=2");
    long w0 = find_window(xb, yb, s15, 2, 7), w1 = find_window(xb + 7, yb + 7, s15, 2, 7);
    TT_CHECK((w0 == 0 && w1 == 1) || (w0 == 1 && w1 == 0), "both windows exactly (%ld %ld)", w0, w1);
    tp_loader_free(L);
    tp_dataset_close(d);
    unlink(pe);
    free(pe);

    /* EOS only / nothing inserted: the stream follows the header */
    TT_CHECK(tp_shard_write(p0, t0, 5, d0, 2, 64, -1, 2) == TP_OK && tp_shard_write(p1, t1, 4, d1, 1, 64, -1, 2) == TP_OK,
             "rewrite eos only");
    d = NULL;
    TT_CHECK(tp_dataset_open(dir, &d) == TP_OK, "open");
    const int32_t eos_only[] = {10, 11, 12, 2, 20, 21, 2, 30, 31, 32, 33, 2};
    int32_t *st = d ? loader_whole_stream(d, 12) : NULL;
    TT_CHECK(st && memcmp(st, eos_only, sizeof eos_only) == 0, "EOS-only stream");
    free(st);
    tp_dataset_close(d);
    TT_CHECK(tp_shard_write(p0, t0, 5, d0, 2, 64, -1, -1) == TP_OK && tp_shard_write(p1, t1, 4, d1, 1, 64, -1, -1) == TP_OK,
             "rewrite none");
    d = NULL;
    TT_CHECK(tp_dataset_open(dir, &d) == TP_OK, "open");
    const int32_t plain[] = {10, 11, 12, 20, 21, 30, 31, 32, 33};
    st = d ? loader_whole_stream(d, 9) : NULL;
    TT_CHECK(st && memcmp(st, plain, sizeof plain) == 0, "plain stream");
    free(st);

    /* refusals */
    L = NULL;
    TT_CHECK(tp_loader_open(d, 0, 0.1, 1, &L) == TP_ERR_ARG && !L && strstr(tp_errmsg(), "T = 0"), "T < 1: %s",
             tp_errmsg());
    TT_CHECK(tp_loader_open(d, 4, -0.1, 1, &L) == TP_ERR_ARG && strstr(tp_errmsg(), "val_frac"), "val_frac < 0");
    TT_CHECK(tp_loader_open(d, 4, 1.0, 1, &L) == TP_ERR_ARG && strstr(tp_errmsg(), "val_frac"), "val_frac = 1");
    TT_CHECK(tp_loader_open(d, 4, 0.0 / 0.0, 1, &L) == TP_ERR_ARG, "val_frac NaN");
    TT_CHECK(tp_loader_open(d, 4, 0.9, 1, &L) == TP_ERR_ARG && strstr(tp_errmsg(), "no training"), "k = 1: %s",
             tp_errmsg());
    TT_CHECK(tp_loader_open(d, 9, 0.0, 1, &L) == TP_ERR_ARG && strstr(tp_errmsg(), "needs 10") &&
                 strstr(tp_errmsg(), "9 tokens"),
             "too small names the tokens needed: %s", tp_errmsg());
    TT_CHECK(tp_loader_open(d, 8, 0.0, 1, &L) == TP_OK && tp_loader_n_train(L) == 1, "T = 8 gives exactly one window");
    int32_t x8[8], y8[8];
    TT_CHECK(L && tp_loader_next(L, 0, x8, y8) == TP_ERR_ARG, "B = 0 refused");
    tp_loader_free(L);
    tp_dataset_close(d);
    free(p0);
    free(p1);
    free(dir);
}

/* A random multi-shard dataset with unique windows, and its expected stream built here. */
typedef struct {
    tp_dataset *d;
    ivec stream;
} rand_ds;

static int make_random_dataset(const char *name, uint64_t seed, int n_shards, int bos, int eos, rand_ds *out) {
    memset(out, 0, sizeof *out);
    tp_rng r;
    tp_rng_seed(&r, seed);
    char *dir = tmp_subdir(name);
    for (int s = 0; s < n_shards; s++) {
        size_t n_docs = 1 + tp_rng_u64(&r) % 12, n = 0;
        uint64_t *ds = malloc(n_docs * 8);
        uint32_t *t = malloc(n_docs * 40 * 4);
        for (size_t k = 0; k < n_docs; k++) {
            ds[k] = n;
            size_t len = 1 + tp_rng_u64(&r) % 39;
            if (bos >= 0) ivec_push(&out->stream, bos);
            for (size_t i = 0; i < len; i++) {
                t[n] = (uint32_t)(3 + tp_rng_u64(&r) % 60000);
                ivec_push(&out->stream, (int32_t)t[n++]);
            }
            if (eos >= 0) ivec_push(&out->stream, eos);
        }
        char fn[32];
        snprintf(fn, sizeof fn, "shard-%03d.tpt", s);
        char *p = tt_path(dir, fn);
        tp_status st = tp_shard_write(p, t, n, ds, n_docs, 60003, bos, eos);
        free(p);
        free(t);
        free(ds);
        if (st) { free(dir); return -1; }
    }
    tp_status st = tp_dataset_open(dir, &out->d);
    free(dir);
    return st ? -1 : 0;
}

TT_TEST(data_validation_and_training_windows_partition) {
    rand_ds R;
    TT_CHECK(make_random_dataset("part", 11, 5, 0, 1, &R) == 0, "dataset: %s", tp_errmsg());
    if (!R.d) return;
    const int T = 9;
    size_t n_windows = (R.stream.n - 1) / T;
    /* precondition: windows are distinct, so content identifies them */
    int distinct = 1;
    for (size_t a = 0; a < n_windows && distinct; a++)
        for (size_t b = a + 1; b < n_windows; b++)
            if (!memcmp(R.stream.v + a * T, R.stream.v + b * T, (T + 1) * 4)) { distinct = 0; break; }
    TT_CHECK(distinct && n_windows > 30, "%zu distinct windows", n_windows);
    const double fracs[] = {0.0, 0.1, 0.25, 0.5, 0.3};
    for (size_t f = 0; f < sizeof fracs / sizeof fracs[0]; f++) {
        tp_loader *L = NULL;
        TT_CHECK(tp_loader_open(R.d, T, fracs[f], 3, &L) == TP_OK, "open");
        if (!L) continue;
        size_t k = fracs[f] > 0 ? (size_t)llround(1 / fracs[f]) : 0;
        size_t nv = tp_loader_n_val(L), nt = tp_loader_n_train(L);
        TT_CHECK(nv == (k ? n_windows / k : 0) && nv + nt == n_windows, "frac %g: %zu val + %zu train of %zu",
                 fracs[f], nv, nt, n_windows);
        char *role = calloc(n_windows, 1); /* 1 val, 2 train */
        int32_t x[4 * 9], y[4 * 9];
        int ok = 1;
        for (size_t i = 0; i < nv; i += 4) {
            int got = 0;
            tp_loader_val(L, i, 4, x, y, &got);
            for (int b = 0; b < got; b++) {
                long w = find_window(x + b * T, y + b * T, R.stream.v, n_windows, T);
                if (w < 0 || role[w] || (size_t)w != (i + (size_t)b) * k + k - 1) ok = 0;
                else role[w] = 1;
            }
        }
        TT_CHECK(ok, "frac %g: val window i is window i*k + k-1 (k = %zu)", fracs[f], k);
        ok = 1;
        for (size_t i = 0; i < nt; i++) {
            tp_loader_next(L, 1, x, y);
            long w = find_window(x, y, R.stream.v, n_windows, T);
            if (w < 0 || role[w]) ok = 0;
            else role[w] = 2;
        }
        size_t covered = 0;
        for (size_t w = 0; w < n_windows; w++) covered += role[w] != 0;
        TT_CHECK(ok && covered == n_windows, "frac %g: train and val disjoint, covering all %zu windows (%zu)",
                 fracs[f], n_windows, covered);
        free(role);
        tp_loader_free(L);
    }
    tp_dataset_close(R.d);
    free(R.stream.v);
}

/* The order in which epoch e serves windows (window ids), read through next(). */
static void epoch_order(tp_loader *L, const rand_ds *R, int T, size_t n, long *order) {
    int32_t x[64], y[64];
    size_t n_windows = (R->stream.n - 1) / (size_t)T;
    for (size_t i = 0; i < n; i++) {
        tp_loader_next(L, 1, x, y);
        order[i] = find_window(x, y, R->stream.v, n_windows, T);
    }
}

static int is_perm_of_train(const long *o, size_t n, size_t n_windows, size_t k) {
    char *seen = calloc(n_windows, 1);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        if (o[i] < 0 || (size_t)o[i] >= n_windows || seen[o[i]] || (k && (size_t)o[i] % k == k - 1)) ok = 0;
        else seen[o[i]] = 1;
    }
    free(seen);
    return ok;
}

TT_TEST(data_shuffle_is_a_seeded_permutation_per_epoch) {
    rand_ds R;
    TT_CHECK(make_random_dataset("perm", 5, 3, -1, 7, &R) == 0, "dataset");
    if (!R.d) return;
    const int T = 6;
    size_t n_windows = (R.stream.n - 1) / T;
    tp_loader *A = NULL, *B = NULL, *C = NULL;
    TT_CHECK(tp_loader_open(R.d, T, 0.2, 42, &A) == TP_OK && tp_loader_open(R.d, T, 0.2, 42, &B) == TP_OK &&
                 tp_loader_open(R.d, T, 0.2, 43, &C) == TP_OK,
             "open");
    if (!A || !B || !C) return;
    size_t n = tp_loader_n_train(A);
    long *a0 = malloc(n * sizeof *a0), *a1 = malloc(n * sizeof *a1), *a2 = malloc(n * sizeof *a2);
    long *b0 = malloc(n * sizeof *b0), *c0 = malloc(n * sizeof *c0);
    epoch_order(A, &R, T, n, a0);
    epoch_order(A, &R, T, n, a1);
    epoch_order(A, &R, T, n, a2);
    epoch_order(B, &R, T, n, b0);
    epoch_order(C, &R, T, n, c0);
    TT_CHECK(n > 20 && is_perm_of_train(a0, n, n_windows, 5) && is_perm_of_train(a1, n, n_windows, 5) &&
                 is_perm_of_train(a2, n, n_windows, 5) && is_perm_of_train(c0, n, n_windows, 5),
             "each epoch is a permutation of the %zu training windows", n);
    TT_CHECK(memcmp(a0, a1, n * sizeof *a0) != 0 && memcmp(a1, a2, n * sizeof *a0) != 0 &&
                 memcmp(a0, a2, n * sizeof *a0) != 0,
             "epochs 0, 1, 2 have different orders");
    TT_CHECK(memcmp(a0, b0, n * sizeof *a0) == 0, "same seed, same order");
    TT_CHECK(memcmp(a0, c0, n * sizeof *a0) != 0, "another seed, another order");
    size_t in_place = 0;
    for (size_t i = 0; i < n; i++) in_place += a0[i] == (long)(i + i / 4); /* train j -> window j + j/(k-1) */
    TT_CHECK(in_place < n / 2, "shuffled, not in order (%zu of %zu in place)", in_place, n);
    tp_data_cursor c = tp_loader_cursor(A);
    TT_CHECK(c.epoch == 3 && c.index == 0 && c.seed == 42, "cursor counts epochs (%llu)", (unsigned long long)c.epoch);
    free(a0); free(a1); free(a2); free(b0); free(c0);
    tp_loader_free(A);
    tp_loader_free(B);
    tp_loader_free(C);
    tp_dataset_close(R.d);
    free(R.stream.v);
}

TT_TEST(data_seek_reproduces_an_uninterrupted_loader) {
    rand_ds R;
    TT_CHECK(make_random_dataset("seek", 99, 4, 0, 1, &R) == 0, "dataset");
    if (!R.d) return;
    const int T = 5, CALLS = 400, MAXB = 9;
    tp_loader *A = NULL, *Bl = NULL;
    TT_CHECK(tp_loader_open(R.d, T, 0.1, 2024, &A) == TP_OK && tp_loader_open(R.d, T, 0.1, 555, &Bl) == TP_OK, "open");
    if (!A || !Bl) return;
    tp_rng r;
    tp_rng_seed(&r, 17);
    tp_data_cursor *cur = malloc(CALLS * sizeof *cur);
    int *bs = malloc(CALLS * sizeof *bs);
    int32_t *xs = malloc((size_t)CALLS * MAXB * T * 4), *ys = malloc((size_t)CALLS * MAXB * T * 4);
    for (int i = 0; i < CALLS; i++) {
        cur[i] = tp_loader_cursor(A);
        bs[i] = 1 + (int)(tp_rng_u64(&r) % MAXB);
        tp_loader_next(A, bs[i], xs + (size_t)i * MAXB * T, ys + (size_t)i * MAXB * T);
    }
    TT_CHECK(cur[CALLS - 1].epoch >= 3, "the run spans several epochs (%llu)", (unsigned long long)cur[CALLS - 1].epoch);
    int ok = 1, tried = 0;
    int32_t x[MAXB * 5], y[MAXB * 5];
    /* a loader that already served epoch 0 of its own seed switches to the cursor's seed */
    tp_loader_next(Bl, 1, x, y);
    tp_loader_seek(Bl, cur[0]);
    tp_loader_next(Bl, bs[0], x, y);
    TT_CHECK(!memcmp(x, xs, (size_t)bs[0] * T * 4) && !memcmp(y, ys, (size_t)bs[0] * T * 4),
             "seek to another seed's cursor replays that seed");
    for (int t = 0; t < 80; t++) {
        int i = (int)(tp_rng_u64(&r) % (CALLS - 3));
        if (tp_loader_seek(Bl, cur[i]) != TP_OK) { ok = 0; break; }
        for (int j = i; j < i + 3; j++) { /* the call at the cursor and the two after it */
            tp_loader_next(Bl, bs[j], x, y);
            if (memcmp(x, xs + (size_t)j * MAXB * T, (size_t)bs[j] * T * 4) ||
                memcmp(y, ys + (size_t)j * MAXB * T, (size_t)bs[j] * T * 4))
                ok = 0;
            tried++;
        }
    }
    TT_CHECK(ok && tried == 240, "seek(cursor) then next() equals the uninterrupted loader at 80 random cursors");
    /* the end of an epoch is the start of the next */
    tp_data_cursor end = {2024, 1, tp_loader_n_train(A)}, next = {2024, 2, 0};
    int32_t x2[5], y2[5];
    tp_loader_seek(Bl, end);
    tp_loader_next(Bl, 1, x, y);
    tp_loader_seek(Bl, next);
    tp_loader_next(Bl, 1, x2, y2);
    TT_CHECK(memcmp(x, x2, sizeof x2) == 0 && memcmp(y, y2, sizeof y2) == 0, "(e, n_train) == (e+1, 0)");
    tp_data_cursor bad = {2024, 0, tp_loader_n_train(A) + 1};
    TT_CHECK(tp_loader_seek(Bl, bad) == TP_ERR_ARG && strstr(tp_errmsg(), "beyond"), "cursor past the windows refused");
    free(cur); free(bs); free(xs); free(ys);
    tp_loader_free(A);
    tp_loader_free(Bl);
    tp_dataset_close(R.d);
    free(R.stream.v);
}

/* ------------------------------------------------------------ taper tokenize --- */

static tp_tokenizer *fixture_tok(char **path) {
    char *dir = tt_path(tt_fixtures_dir(), "tok/smollm2");
    *path = tt_path(dir, "tokenizer.json");
    free(dir);
    tp_tokenizer *t = NULL;
    if (tp_tok_load_json(*path, &t) != TP_OK) return NULL;
    return t;
}

/* Expected shard content: documents appended in order. */
typedef struct {
    ivec tok;
    ivec start;
} expect;

static void expect_doc(expect *e, const tp_tokenizer *t, const char *text, size_t len) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (tp_tok_encode(t, text, len, 0, &ids, &n) != TP_OK) { TT_CHECK(0, "encode: %s", tp_errmsg()); return; }
    ivec_push(&e->start, (int32_t)e->tok.n);
    for (size_t i = 0; i < n; i++) ivec_push(&e->tok, ids[i]);
    free(ids);
}

static void expect_str(expect *e, const tp_tokenizer *t, const char *text) { expect_doc(e, t, text, strlen(text)); }

/* The single shard of dir equals e (tokens and document starts). */
static void check_shard(const char *dir, const expect *e, const char *what, int32_t eos) {
    char *p = tt_path(dir, "shard-00000.tpt");
    raw_shard r = {0};
    int ok = raw_read(p, &r) == 0;
    TT_CHECK(ok, "%s: read %s", what, p);
    if (ok) {
        int same = r.n_tokens == e->tok.n && r.n_docs == e->start.n && r.eos == eos;
        for (size_t i = 0; same && i < e->tok.n; i++) same = r.tokens[i] == (uint32_t)e->tok.v[i];
        for (size_t i = 0; same && i < e->start.n; i++) same = r.doc_start[i] == (uint64_t)e->start.v[i];
        TT_CHECK(same, "%s: %llu tokens / %llu docs (eos %d) equal tp_tok_encode's %zu / %zu (eos %d)", what,
                 (unsigned long long)r.n_tokens, (unsigned long long)r.n_docs, r.eos, e->tok.n, e->start.n, eos);
        raw_free(&r);
    }
    free(p);
}

static void expect_free(expect *e) {
    free(e->tok.v);
    free(e->start.v);
    memset(e, 0, sizeof *e);
}

static const char *TXT_A = "Hello world.\nSecond line, with digits 12345.\n\n \t\nThird paragraph: caf\xc3\xa9 \xe2\x98\x95.\r\n"
                           "still the third\n\n\nlast line";
static const char *TXT_B = "# Title\n\nSome *markdown* text.\n";

TT_TEST(data_tokenize_cli_matches_tp_tok_encode) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *tokp = NULL;
    tp_tokenizer *tok = fixture_tok(&tokp);
    TT_CHECK(tok != NULL, "fixture tokenizer: %s", tp_errmsg());
    if (!tok) { free(tokp); return; }
    char *in = tmp_subdir("tk_in"), *sub = tt_path(in, "sub");
    mkdir(sub, 0755);
    char *fa = tt_path(in, "a.txt"), *fb = tt_path(sub, "b.md"), *fc = tt_path(in, "c.jsonl");
    char *fcsv = tt_path(in, "skip.csv"), *fh = tt_path(in, ".hidden.txt");
    write_text(fa, TXT_A);
    write_text(fb, TXT_B);
    write_text(fc, "{\"text\": \"json doc one \\u00e9\\n\", \"id\": 1}\n\n"
                   "{\"text\": \"\", \"meta\": {\"body\": \"empty text\"}}\n"
                   "{\"text\": \"doc two\", \"meta\": {\"body\": \"nested body\"}}\n");
    write_text(fcsv, "a,b\n");
    write_text(fh, "hidden\n");
    char args[4096], *out = NULL, *od;
    int32_t eos = tp_tok_eos(tok), bos = tp_tok_adds_bos(tok) ? tp_tok_bos(tok) : -1;

    /* 1. a directory, one document per file, EOS appended: a.txt, c.jsonl (2 docs + 1 empty), sub/b.md */
    od = tmp_file("tk_out1");
    snprintf(args, sizeof args, "tokenize %s -o %s %s --append-eos", tokp, od, in);
    int rc = tt_taper(args, &out);
    TT_CHECK(rc == 0 && strstr(out, "documents  4 (1 empty skipped)"), "dir run: rc %d: %s", rc, out);
    free(out);
    expect e = {0};
    expect_str(&e, tok, TXT_A);
    expect_str(&e, tok, "json doc one \xc3\xa9\n");
    expect_str(&e, tok, "doc two");
    expect_str(&e, tok, TXT_B);
    check_shard(od, &e, "directory, --doc-split file", eos);
    expect_free(&e);
    {
        char *p = tt_path(od, "shard-00000.tpt");
        raw_shard r = {0};
        TT_CHECK(raw_read(p, &r) == 0 && r.bos == bos && r.vocab == (uint32_t)tp_tok_vocab_size(tok) &&
                     r.fingerprint == tp_shard_tok_fingerprint(tok) && strstr(r.source, "a.txt") &&
                     strstr(r.source, "b.md"),
                 "header: bos %d vocab %u fingerprint, source '%s'", r.bos, r.vocab, r.source ? r.source : "");
        raw_free(&r);
        free(p);
        char *mp = tt_path(od, "manifest.json"), *mt = NULL;
        cJSON *m = tp_read_file(mp, &mt, NULL) == TP_OK ? cJSON_Parse(mt) : NULL;
        cJSON *tot = cJSON_GetObjectItem(m, "totals"), *inputs = cJSON_GetObjectItem(m, "inputs");
        cJSON *sh = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "shards"), 0);
        TT_CHECK(m && cJSON_GetObjectItem(tot, "documents")->valuedouble == 4 &&
                     cJSON_GetObjectItem(tot, "files")->valuedouble == 3 &&
                     cJSON_GetObjectItem(tot, "empty_documents_skipped")->valuedouble == 1 &&
                     cJSON_GetArraySize(inputs) == 3 &&
                     strstr(cJSON_GetObjectItem(cJSON_GetArrayItem(inputs, 2), "path")->valuestring, "sub/b.md") &&
                     sh && !strcmp(cJSON_GetObjectItem(sh, "file")->valuestring, "shard-00000.tpt"),
                 "manifest describes the run");
        cJSON_Delete(m);
        free(mt);
        free(mp);
    }
    /* the dataset opens and the loader puts EOS after each document */
    tp_dataset *d = NULL;
    TT_CHECK(tp_dataset_open(od, &d) == TP_OK && tp_dataset_docs(d) == 4, "dataset from tokenize: %s", tp_errmsg());
    tp_dataset_close(d);
    /* an existing OUT_DIR is refused, --force replaces */
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 1 && strstr(out, "--force") && strstr(out, od), "second run refused: %d %s", rc, out);
    free(out);
    strcat(args, " --force");
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 0, "--force: %d %s", rc, out);
    free(out);
    free(od);

    /* 2. lines: non-blank lines without their line ending */
    od = tmp_file("tk_out2");
    snprintf(args, sizeof args, "tokenize %s -o %s %s --doc-split line", tokp, od, fa);
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 0, "line split: %d %s", rc, out);
    free(out);
    const char *lines[] = {"Hello world.", "Second line, with digits 12345.", "Third paragraph: caf\xc3\xa9 \xe2\x98\x95.",
                           "still the third", "last line"};
    for (int i = 0; i < 5; i++) expect_str(&e, tok, lines[i]);
    check_shard(od, &e, "--doc-split line", -1);
    expect_free(&e);
    free(od);

    /* 3. paragraphs: runs of non-blank lines, inner line endings kept, the last one dropped */
    od = tmp_file("tk_out3");
    snprintf(args, sizeof args, "tokenize %s -o %s %s --doc-split blank", tokp, od, fa);
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 0, "blank split: %d %s", rc, out);
    free(out);
    const char *paras[] = {"Hello world.\nSecond line, with digits 12345.",
                           "Third paragraph: caf\xc3\xa9 \xe2\x98\x95.\r\nstill the third", "last line"};
    for (int i = 0; i < 3; i++) expect_str(&e, tok, paras[i]);
    check_shard(od, &e, "--doc-split blank", -1);
    expect_free(&e);
    free(od);

    /* 4. JSONL with a nested field, forced format */
    od = tmp_file("tk_out4");
    char *fj = tt_path(in, "nested.data");
    write_text(fj, "{\"meta\": {\"body\": \"first body\"}}\n{\"meta\": {\"body\": \"second \\\"quoted\\\" body\"}}\n");
    snprintf(args, sizeof args, "tokenize %s -o %s %s --format jsonl --field meta.body", tokp, od, fj);
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 0, "nested field: %d %s", rc, out);
    free(out);
    expect_str(&e, tok, "first body");
    expect_str(&e, tok, "second \"quoted\" body");
    check_shard(od, &e, "--field meta.body", -1);
    expect_free(&e);
    free(od);
    free(fj);

    /* 5. JSONL errors name file:line */
    char *bad = tt_path(in, "bad.jsonl");
    write_text(bad, "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
    od = tmp_file("tk_out5");
    snprintf(args, sizeof args, "tokenize %s -o %s %s", tokp, od, bad);
    char where[512];
    snprintf(where, sizeof where, "%s:2", bad);
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 1 && strstr(out, where) && strstr(out, "JSON"), "bad JSON -> 1 naming %s: %s", where, out);
    free(out);
    write_text(bad, "{\"text\": \"ok\"}\n{\"text\": \"two\"} {\"text\": \"values\"}\n");
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 1 && strstr(out, where) && strstr(out, "JSON"), "two values on a line -> 1 naming %s: %s", where, out);
    free(out);
    write_text(bad, "{\"text\": \"ok\"}\n\n{\"body\": \"no text\"}\n");
    snprintf(where, sizeof where, "%s:3", bad);
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 1 && strstr(out, where) && strstr(out, "\"text\" is missing"), "missing field -> 1: %s", out);
    free(out);
    write_text(bad, "{\"text\": 42}\n");
    snprintf(where, sizeof where, "%s:1", bad);
    rc = tt_taper(args, &out);
    TT_CHECK(rc == 1 && strstr(out, where) && strstr(out, "a number"), "non-string field -> 1: %s", out);
    free(out);
    snprintf(args, sizeof args, "tokenize %s -o %s %s --field meta.x", tokp, od, fc);
    rc = tt_taper(args, &out);
    snprintf(where, sizeof where, "%s:1", fc);
    TT_CHECK(rc == 1 && strstr(out, where) && strstr(out, "meta.x"), "missing nested field -> 1: %s", out);
    free(out);
    free(od);
    free(bad);

    /* 6. usage errors exit 2, runtime errors 1 */
    const struct { const char *args; int rc; const char *msg; } u[] = {
        {"tokenize --help", 0, "usage: taper tokenize"},
        {"tokenize TOK IN", 2, "-o OUT_DIR"},
        {"tokenize TOK -o X", 2, "INPUT"},
        {"tokenize TOK -o X IN --format xml", 2, "--format"},
        {"tokenize TOK -o X IN --doc-split para", 2, "--doc-split"},
        {"tokenize TOK -o X IN --shard-tokens 0", 2, "--shard-tokens"},
        {"tokenize TOK -o X IN --shard-tokens 1.5", 2, "--shard-tokens"},
        {"tokenize TOK -o X IN --threads 0", 2, "--threads"},
        {"tokenize TOK -o X IN --field a..b", 2, "--field"},
        {"tokenize TOK -o X IN --bogus", 2, "unknown"},
        {"tokenize /nonexistent/tokenizer.json -o X IN", 1, "/nonexistent/tokenizer.json"},
        {"tokenize FIX -o X /nonexistent/input.txt", 1, "/nonexistent/input.txt"},
        {"tokenize FIX -o X IN --append-eos --eos-token <|no-such|>", 1, "no-such"},
    };
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) {
        char a[2048];
        const char *s = u[i].args;
        size_t k = 0;
        while (*s && k < sizeof a - 600) { /* FIX -> fixture tokenizer, IN -> input file, X -> temp dir */
            if (!strncmp(s, "FIX", 3)) { k += (size_t)snprintf(a + k, sizeof a - k, "%s", tokp); s += 3; }
            else if (!strncmp(s, "IN", 2) && (s[2] == 0 || s[2] == ' ')) { k += (size_t)snprintf(a + k, sizeof a - k, "%s", fa); s += 2; }
            else if (s[0] == 'X' && (s[1] == 0 || s[1] == ' ')) { k += (size_t)snprintf(a + k, sizeof a - k, "%s/tk_x", tt_tmp_dir()); s += 1; }
            else if (*s == '<' || *s == '>' || *s == '|') { a[k++] = '\\'; a[k++] = *s++; }
            else a[k++] = *s++;
        }
        a[k] = 0;
        rc = tt_taper(a, &out);
        TT_CHECK(rc == u[i].rc && strstr(out, u[i].msg), "'%s' -> %d (want %d, '%s'): %s", a, rc, u[i].rc, u[i].msg, out);
        free(out);
    }
    free(fa); free(fb); free(fc); free(fcsv); free(fh); free(sub); free(in);
    tp_tok_free(tok);
    free(tokp);
}

TT_TEST(data_tokenize_is_thread_count_independent) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *tokp = NULL;
    tp_tokenizer *tok = fixture_tok(&tokp);
    if (!TT_CHECK(tok != NULL, "tokenizer")) { free(tokp); return; }
    /* 600 documents of varying length in three files, sharded small so documents cross batches
     * and shard boundaries */
    char *in = tmp_subdir("thr_in");
    tp_rng r;
    tp_rng_seed(&r, 3);
    const char *words[] = {"alpha", "beta", "gamma", " delta", "42", "\xc3\xa9t\xc3\xa9", "the", "of", "\n", "x"};
    expect e = {0};
    for (int f = 0; f < 3; f++) {
        char name[32];
        snprintf(name, sizeof name, "part%d.jsonl", f);
        char *p = tt_path(in, name);
        FILE *fp = fopen(p, "wb");
        for (int k = 0; k < 200; k++) {
            char doc[1024];
            size_t n = 0, nw = 1 + tp_rng_u64(&r) % 60;
            for (size_t w = 0; w < nw; w++)
                n += (size_t)snprintf(doc + n, sizeof doc - n, "%s ", words[tp_rng_u64(&r) % 10]);
            fputs("{\"text\": \"", fp);
            for (size_t i = 0; i < n; i++) fputs(doc[i] == '\n' ? "\\n" : (char[2]){doc[i], 0}, fp);
            fputs("\"}\n", fp);
            expect_doc(&e, tok, doc, n);
        }
        fclose(fp);
        free(p);
    }
    char *o1 = tmp_file("thr_out1"), *o2 = tmp_file("thr_out2"), args[2048], *out;
    snprintf(args, sizeof args, "tokenize %s -o %s %s --shard-tokens 2000 --append-eos --threads 1", tokp, o1, in);
    int rc1 = tt_taper(args, &out);
    free(out);
    snprintf(args, sizeof args, "tokenize %s -o %s %s --shard-tokens 2K --append-eos --threads 2", tokp, o2, in);
    int rc2 = tt_taper(args, &out);
    TT_CHECK(rc1 == 0 && rc2 == 0, "runs: %d %d %s", rc1, rc2, out);
    free(out);
    /* shards: identical bytes; each at most 2000 tokens (documents are shorter); together the expected tokens */
    size_t n_shards = 0, tok_total = 0, doc_total = 0;
    int same = 1, sizes_ok = 1, content_ok = 1;
    for (;; n_shards++) {
        char name[32];
        snprintf(name, sizeof name, "shard-%05zu.tpt", n_shards);
        char *a = tt_path(o1, name), *b = tt_path(o2, name);
        raw_shard rs = {0};
        int exists = raw_read(a, &rs) == 0;
        if (exists) {
            same &= tt_same_file(a, b);
            sizes_ok &= rs.n_tokens <= 2000 && rs.n_tokens > 0;
            for (size_t i = 0; i < rs.n_tokens && content_ok; i++)
                content_ok = tok_total + i < e.tok.n && rs.tokens[i] == (uint32_t)e.tok.v[tok_total + i];
            for (size_t i = 0; i < rs.n_docs && content_ok; i++)
                content_ok = doc_total + i < e.start.n && rs.doc_start[i] + tok_total == (uint64_t)e.start.v[doc_total + i];
            tok_total += rs.n_tokens;
            doc_total += rs.n_docs;
            raw_free(&rs);
        }
        free(a);
        free(b);
        if (!exists) break;
    }
    char *m1 = tt_path(o1, "manifest.json"), *m2 = tt_path(o2, "manifest.json");
    TT_CHECK(n_shards >= 3 && same && tt_same_file(m1, m2), "%zu shards and manifest byte-identical for 1 and 2 threads",
             n_shards);
    TT_CHECK(sizes_ok && content_ok && tok_total == e.tok.n && doc_total == 600,
             "shards <= 2000 tokens, documents whole and in order (%zu tokens, %zu docs)", tok_total, doc_total);
    /* the shards of a document-splitting boundary: a new shard starts only when the next document would not fit */
    tp_dataset *d = NULL;
    TT_CHECK(tp_dataset_open(o1, &d) == TP_OK && tp_dataset_tokens(d) == e.tok.n, "dataset of all shards");
    tp_dataset_close(d);
    free(m1); free(m2); free(o1); free(o2); free(in);
    expect_free(&e);
    tp_tok_free(tok);
    free(tokp);
}

TT_TEST(data_tokenize_gguf_and_tinyshakespeare) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    const char *model = tt_model_path();
    if (!model) { tt_skip("default model not found (run make deps)"); return; }
    tp_gguf *g = NULL;
    tp_tokenizer *tok = NULL;
    if (!TT_CHECK(tp_gguf_open(model, &g) == TP_OK && tp_tok_load_gguf(g, &tok) == TP_OK, "gguf tokenizer: %s",
                  tp_errmsg())) {
        tp_gguf_close(g);
        return;
    }
    tp_gguf_close(g);
    char *sh = tt_path(tt_data_dir(), "tinyshakespeare/input.txt"), *text = NULL, *in = NULL;
    size_t len = 0;
    int have_data = tp_read_file(sh, &text, &len) == TP_OK;
    if (!have_data) { /* a small stand-in keeps the GGUF path tested */
        in = tmp_file("gguf_in.txt");
        write_text(in, TXT_A);
        text = strdup(TXT_A);
        len = strlen(TXT_A);
    }
    expect e = {0};
    expect_doc(&e, tok, text, len);
    /* the whole file as one document: HF's count in tok/expected.json (tests/ref/tok_ref.py, whole_n) */
    if (have_data) TT_CHECK(e.tok.n == 341094, "tinyshakespeare: %zu tokens (expected 341094)", e.tok.n);
    char *od = tmp_file("gguf_out"), args[2048], *out;
    snprintf(args, sizeof args, "tokenize %s -o %s %s", model, od, have_data ? sh : in);
    int rc = tt_taper(args, &out);
    TT_CHECK(rc == 0, "tokenize with the GGUF's tokenizer: %d %s", rc, out);
    check_shard(od, &e, "GGUF tokenizer", -1);
    const char *sp = strstr(out, "speed ");
    if (have_data && sp) tt_note("tinyshakespeare/input.txt: %zu bytes -> %zu tokens; %.*s", len, e.tok.n,
                                 (int)strcspn(sp, "\n"), sp);
    free(out);
    expect_free(&e);
    free(od);
    free(in);
    free(text);
    free(sh);
    tp_tok_free(tok);
}
