/* Token shards (.tpt): the writer (whole arrays, or document by document with tp_shard_writer, which
 * `taper tokenize` and `taper generate-data` use), the validated read-only mmap reader, datasets made
 * of several shards, and the packed-sequence loader (BOS/EOS around each document, windows of T+1
 * tokens with stride T, every k-th window held out for validation, a Fisher-Yates shuffle per epoch).
 * The file format and the loader's exact rules are in docs/data.md; turning text into shards
 * (`taper tokenize`) is cli/cmd_tokenize.c. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/rng.h"
#include "taper/train.h"
#include "taper/util.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are little-endian and mapped in place: a big-endian host needs byte swapping here"
#endif

/* ---------------------------------------------------------------- format --- */

#define SHARD_MAGIC "TAPERTOK"
#define SHARD_VERSION 1u
#define SHARD_FIXED 64u          /* bytes of the fixed header, before the source text */
#define SHARD_MAX_SOURCE 65536u  /* longest source text written or accepted */

/* Fixed header (all little-endian):
 *   0  magic "TAPERTOK"          8  u32 version        12 u32 header_bytes
 *  16  u64 n_tokens              24 u64 n_docs         32 u32 vocab
 *  36  i32 bos                   40 i32 eos            44 u32 source_len
 *  48  u64 tok_fingerprint       56 u64 flags (0)
 *  64  source text, zero-padded to header_bytes (= 64 + source_len rounded up to 8)
 *  then u32 tokens[n_tokens], zero-padded to a multiple of 8, then u64 doc_start[n_docs]. */

static size_t round8(size_t x) { return (x + 7) & ~(size_t)7; }

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Checks the shard content the writer is given (the reader checks the same on open). */
static tp_status check_content(const char *path, const uint32_t *tokens, size_t n_tokens, const uint64_t *doc_start,
                               size_t n_docs, uint32_t vocab, int32_t bos, int32_t eos) {
    if (vocab == 0 || vocab > (uint32_t)INT32_MAX)
        return tp_fail(TP_ERR_ARG, "%s: field vocab: %u is outside [1, 2^31-1]", path, vocab);
    if (bos < -1 || (bos >= 0 && (uint32_t)bos >= vocab))
        return tp_fail(TP_ERR_ARG, "%s: field bos: %d is not -1 or an id below vocab %u", path, bos, vocab);
    if (eos < -1 || (eos >= 0 && (uint32_t)eos >= vocab))
        return tp_fail(TP_ERR_ARG, "%s: field eos: %d is not -1 or an id below vocab %u", path, eos, vocab);
    if ((n_tokens == 0) != (n_docs == 0))
        return tp_fail(TP_ERR_ARG, "%s: field n_docs: %zu documents for %zu tokens (both zero or both nonzero)",
                       path, n_docs, n_tokens);
    for (size_t i = 0; i < n_docs; i++) {
        if (i == 0 ? doc_start[0] != 0 : doc_start[i] <= doc_start[i - 1])
            return tp_fail(TP_ERR_ARG, "%s: field doc_start[%zu]: %llu %s", path, i, (unsigned long long)doc_start[i],
                           i == 0 ? "(the first document must start at 0)" : "does not increase (documents are nonempty)");
    }
    if (n_docs && doc_start[n_docs - 1] >= n_tokens)
        return tp_fail(TP_ERR_ARG, "%s: field doc_start[%zu]: %llu is not below n_tokens %zu", path, n_docs - 1,
                       (unsigned long long)doc_start[n_docs - 1], n_tokens);
    for (size_t i = 0; i < n_tokens; i++)
        if (tokens[i] >= vocab)
            return tp_fail(TP_ERR_ARG, "%s: field tokens[%zu]: id %u >= vocab %u", path, i, tokens[i], vocab);
    return TP_OK;
}

static tp_status write_all(int fd, const void *buf, size_t n, const char *path) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return tp_fail(TP_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return TP_OK;
}

/* fsync of the directory holding path, so that a rename into it survives a crash. */
static void fsync_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY) : -1;
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

/* The one place that writes the format: the content is checked, written to path.tmp.<pid>,
 * fsynced, renamed onto path and the directory fsynced, so path holds either what it held before
 * or the whole shard, never part of one. *bytes_out (may be NULL): the file's size. */
static tp_status shard_write_file(const char *path, const uint32_t *tokens, size_t n_tokens,
                                  const uint64_t *doc_start, size_t n_docs, uint32_t vocab, int32_t bos, int32_t eos,
                                  uint64_t tok_fingerprint, const char *source, size_t *bytes_out) {
    if (!path || (n_tokens && !tokens) || (n_docs && !doc_start))
        return tp_fail(TP_ERR_ARG, "tp_shard_write: NULL path or data");
    tp_status s = check_content(path, tokens, n_tokens, doc_start, n_docs, vocab, bos, eos);
    if (s) return s;
    size_t src_len = source ? strlen(source) : 0;
    if (src_len > SHARD_MAX_SOURCE) src_len = SHARD_MAX_SOURCE; /* a description: keep its head */
    size_t hb = round8(SHARD_FIXED + src_len), tok_bytes;
    if (tp_mul_overflow(n_tokens, 4, &tok_bytes) || n_docs > SIZE_MAX / 8)
        return tp_fail(TP_ERR_NOMEM, "%s: %zu tokens / %zu documents overflow the file size", path, n_tokens, n_docs);
    uint8_t *head = calloc(1, hb);
    if (!head) return tp_fail(TP_ERR_NOMEM, "out of memory");
    memcpy(head, SHARD_MAGIC, 8);
    put32(head + 8, SHARD_VERSION);
    put32(head + 12, (uint32_t)hb);
    put64(head + 16, n_tokens);
    put64(head + 24, n_docs);
    put32(head + 32, vocab);
    put32(head + 36, (uint32_t)bos);
    put32(head + 40, (uint32_t)eos);
    put32(head + 44, (uint32_t)src_len);
    put64(head + 48, tok_fingerprint);
    put64(head + 56, 0);
    if (src_len) memcpy(head + SHARD_FIXED, source, src_len);

    size_t plen = strlen(path) + 32;
    char *tmp = malloc(plen);
    if (!tmp) { free(head); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    snprintf(tmp, plen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(head);
        return s;
    }
    static const uint8_t zeros[8];
    if (!(s = write_all(fd, head, hb, tmp)) && !(s = write_all(fd, tokens, tok_bytes, tmp)) &&
        !(s = write_all(fd, zeros, round8(tok_bytes) - tok_bytes, tmp)) &&
        !(s = write_all(fd, doc_start, n_docs * 8, tmp))) {
        if (fsync(fd) != 0) s = tp_fail(TP_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    }
    if (close(fd) != 0 && !s) s = tp_fail(TP_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!s && rename(tmp, path) != 0) s = tp_fail(TP_ERR_IO, "%s: cannot rename into place: %s", path, strerror(errno));
    if (s) unlink(tmp);
    else fsync_dir_of(path);
    if (!s && bytes_out) *bytes_out = hb + round8(tok_bytes) + n_docs * 8;
    free(tmp);
    free(head);
    return s;
}

tp_status tp_shard_write_ex(const char *path, const uint32_t *tokens, size_t n_tokens, const uint64_t *doc_start,
                            size_t n_docs, uint32_t vocab, int32_t bos, int32_t eos, uint64_t tok_fingerprint,
                            const char *source) {
    return shard_write_file(path, tokens, n_tokens, doc_start, n_docs, vocab, bos, eos, tok_fingerprint, source, NULL);
}

tp_status tp_shard_write(const char *path, const uint32_t *tokens, size_t n_tokens, const uint64_t *doc_start,
                         size_t n_docs, uint32_t vocab, int32_t bos, int32_t eos) {
    return shard_write_file(path, tokens, n_tokens, doc_start, n_docs, vocab, bos, eos, 0, NULL, NULL);
}

/* ----------------------------------------------------------- shard writer --- */

/* Documents are gathered in memory and the file is written whole on close: the header holds the
 * counts and the source text, which (for `taper tokenize`) is only known once the shard is full. */
struct tp_shard_writer {
    char *path;
    uint32_t vocab;
    int32_t bos, eos;
    uint64_t fingerprint;
    uint32_t *tokens;
    size_t n_tokens, cap_tokens;
    uint64_t *doc_start;
    size_t n_docs, cap_docs;
};

tp_status tp_shard_writer_open(const char *path, uint32_t vocab, int32_t bos, int32_t eos, uint64_t tok_fingerprint,
                               tp_shard_writer **out) {
    *out = NULL;
    if (!path || !*path) return tp_fail(TP_ERR_ARG, "tp_shard_writer_open: empty path");
    tp_status s = check_content(path, NULL, 0, NULL, 0, vocab, bos, eos);
    if (s) return s;
    tp_shard_writer *w = calloc(1, sizeof *w);
    if (w) w->path = strdup(path);
    if (!w || !w->path) {
        free(w);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    w->vocab = vocab;
    w->bos = bos;
    w->eos = eos;
    w->fingerprint = tok_fingerprint;
    *out = w;
    return TP_OK;
}

tp_status tp_shard_writer_add_doc(tp_shard_writer *w, const int32_t *ids, size_t n) {
    if (!w || (n && !ids)) return tp_fail(TP_ERR_ARG, "tp_shard_writer_add_doc: NULL writer or ids");
    if (n == 0) return tp_fail(TP_ERR_ARG, "%s: document %zu is empty (a shard holds nonempty documents)", w->path,
                                w->n_docs);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= w->vocab)
            return tp_fail(TP_ERR_ARG, "%s: document %zu, token %zu: id %d is outside [0, vocab %u)", w->path,
                           w->n_docs, i, ids[i], w->vocab);
    size_t need;
    if (tp_add_overflow(w->n_tokens, n, &need)) return tp_fail(TP_ERR_NOMEM, "%s: too many tokens", w->path);
    if (need > w->cap_tokens) {
        size_t c = w->cap_tokens ? w->cap_tokens : (size_t)1 << 16;
        while (c < need) c = c > SIZE_MAX / 2 ? need : 2 * c;
        uint32_t *nb = c <= SIZE_MAX / sizeof *nb ? realloc(w->tokens, c * sizeof *nb) : NULL;
        if (!nb) return tp_fail(TP_ERR_NOMEM, "out of memory for a shard of %zu tokens", c);
        w->tokens = nb;
        w->cap_tokens = c;
    }
    if (w->n_docs == w->cap_docs) {
        size_t c = w->cap_docs ? 2 * w->cap_docs : 1024;
        uint64_t *nb = realloc(w->doc_start, c * sizeof *nb);
        if (!nb) return tp_fail(TP_ERR_NOMEM, "out of memory");
        w->doc_start = nb;
        w->cap_docs = c;
    }
    w->doc_start[w->n_docs++] = w->n_tokens;
    for (size_t i = 0; i < n; i++) w->tokens[w->n_tokens + i] = (uint32_t)ids[i];
    w->n_tokens = need;
    return TP_OK;
}

size_t tp_shard_writer_tokens(const tp_shard_writer *w) { return w ? w->n_tokens : 0; }
size_t tp_shard_writer_docs(const tp_shard_writer *w) { return w ? w->n_docs : 0; }

tp_status tp_shard_writer_close(tp_shard_writer *w, const char *source, size_t *bytes) {
    if (bytes) *bytes = 0;
    if (!w) return tp_fail(TP_ERR_ARG, "tp_shard_writer_close: no writer");
    tp_status s = shard_write_file(w->path, w->tokens, w->n_tokens, w->doc_start, w->n_docs, w->vocab, w->bos, w->eos,
                                   w->fingerprint, source, bytes);
    tp_shard_writer_abort(w);
    return s;
}

void tp_shard_writer_abort(tp_shard_writer *w) {
    if (!w) return;
    free(w->path);
    free(w->tokens);
    free(w->doc_start);
    free(w);
}

/* ----------------------------------------------------------- fingerprint --- */

static uint64_t fnv_u64(uint64_t h, uint64_t v) {
    uint8_t b[8];
    put64(b, v);
    return tp_fnv1a(h, b, 8);
}

/* Exercises the pre-tokenizer (digits, contractions, spaces, punctuation, several scripts) and
 * many merges; tokenizers that differ only in their merge list split it differently. */
static const char PROBE[] =
    "The quick brown fox jumps over the lazy dog. It's 2024-05-17, 12:34:56 -- price $1,234.50 (+7%)!\n"
    "  def f(x):\n\treturn x**2 + 3  # comment\n\n"
    "Ünïcödé façade naïve résumé; Ελληνικά; русский текст; 日本語のテキスト; 中文文本; 한국어; العربية; "
    "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d; I'm, you're, we'll, they've, she'd, don't. "
    "HTTP/1.1 200 OK <html><body>hello&nbsp;world</body></html> 0x1F 3.14159 1e-5 x_y-z__w";

uint64_t tp_shard_tok_fingerprint(const tp_tokenizer *t) {
    uint64_t h = TP_FNV1A_INIT;
    h = tp_fnv1a(h, "taper-tok-fingerprint-v1", 24);
    int n = tp_tok_vocab_size(t);
    h = fnv_u64(h, (uint64_t)n);
    for (int32_t i = 0; i < n; i++) {
        const char *p = tp_tok_piece(t, i);
        size_t len = p ? strlen(p) : 0;
        h = fnv_u64(h, len);
        h = tp_fnv1a(h, p ? p : "", len);
    }
    const char *pre = tp_tok_pre_name(t);
    if (pre) h = tp_fnv1a(h, pre, strlen(pre));
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (tp_tok_encode(t, PROBE, sizeof PROBE - 1, 0, &ids, &n_ids) == TP_OK) {
        h = fnv_u64(h, n_ids);
        for (size_t i = 0; i < n_ids; i++) h = fnv_u64(h, (uint32_t)ids[i]);
    } else {
        h = fnv_u64(h, ~0ull);
    }
    free(ids);
    h = tp_mix64(h);
    return h ? h : 1;
}

/* ---------------------------------------------------------------- reader --- */

typedef struct {
    char *path;
    tp_mmap map;
    uint64_t n_tokens, n_docs;
    const uint32_t *tokens;     /* (n_tokens) in the mapping */
    const uint64_t *doc_start;  /* (n_docs) in the mapping */
    uint32_t vocab;
    int32_t bos, eos;
    uint64_t fingerprint;
    char *source;               /* malloc'd, NUL-terminated */
} shard;

struct tp_dataset {
    size_t n_shards;
    shard *sh;                  /* (n_shards) */
    uint64_t *tok_off;          /* (n_shards+1) global index of each shard's first token */
    uint64_t *doc_off;          /* (n_shards+1) global index of each shard's first document */
    uint64_t n_tokens, n_docs;
    uint32_t vocab;
    int32_t bos, eos;
    uint64_t fingerprint;
};

static void shard_close(shard *s) {
    tp_mmap_close(&s->map);
    free(s->path);
    free(s->source);
    memset(s, 0, sizeof *s);
}

static tp_status shard_open(const char *path, shard *s) {
    memset(s, 0, sizeof *s);
    tp_status st = tp_mmap_open(path, &s->map);
    if (st) return st;
    const uint8_t *p = s->map.data;
    size_t size = s->map.size;
    s->path = strdup(path);
    if (!s->path) { st = tp_fail(TP_ERR_NOMEM, "out of memory"); goto fail; }
    if (size < SHARD_FIXED) {
        st = tp_fail(TP_ERR_FORMAT, "%s: truncated: %zu bytes, the header alone is %u", path, size, SHARD_FIXED);
        goto fail;
    }
    if (memcmp(p, SHARD_MAGIC, 8) != 0) {
        st = tp_fail(TP_ERR_FORMAT, "%s: field magic: not \"" SHARD_MAGIC "\" (not a taper token shard)", path);
        goto fail;
    }
    uint32_t version = get32(p + 8), hb = get32(p + 12), src_len = get32(p + 44);
    if (version != SHARD_VERSION) {
        st = tp_fail(TP_ERR_FORMAT, "%s: field version: %u is not supported (this build reads version %u)", path,
                     version, SHARD_VERSION);
        goto fail;
    }
    if (src_len > SHARD_MAX_SOURCE || hb != round8(SHARD_FIXED + (size_t)src_len)) {
        st = tp_fail(TP_ERR_FORMAT, "%s: field header_bytes: %u does not match source_len %u", path, hb, src_len);
        goto fail;
    }
    if (get64(p + 56) != 0) {
        st = tp_fail(TP_ERR_FORMAT, "%s: field flags: 0x%llx, this build knows no flags", path,
                     (unsigned long long)get64(p + 56));
        goto fail;
    }
    s->n_tokens = get64(p + 16);
    s->n_docs = get64(p + 24);
    s->vocab = get32(p + 32);
    s->bos = (int32_t)get32(p + 36);
    s->eos = (int32_t)get32(p + 40);
    s->fingerprint = get64(p + 48);
    /* Sizes against the file size, without overflow: n_tokens and n_docs are bounded by it. */
    if (s->n_tokens > size / 4 || s->n_docs > size / 8) {
        st = tp_fail(TP_ERR_FORMAT, "%s: truncated or corrupt: field n_tokens %llu / n_docs %llu need more than the %zu bytes of the file",
                     path, (unsigned long long)s->n_tokens, (unsigned long long)s->n_docs, size);
        goto fail;
    }
    size_t tok_bytes = round8((size_t)s->n_tokens * 4), want = hb;
    if (tp_add_overflow(want, tok_bytes, &want) || tp_add_overflow(want, (size_t)s->n_docs * 8, &want) || want > size) {
        st = tp_fail(TP_ERR_FORMAT, "%s: truncated: field n_tokens %llu and n_docs %llu need %zu bytes, the file has %zu",
                     path, (unsigned long long)s->n_tokens, (unsigned long long)s->n_docs, want, size);
        goto fail;
    }
    if (want != size) {
        st = tp_fail(TP_ERR_FORMAT, "%s: %zu trailing bytes after the %zu the header describes (n_tokens %llu, n_docs %llu)",
                     path, size - want, want, (unsigned long long)s->n_tokens, (unsigned long long)s->n_docs);
        goto fail;
    }
    s->tokens = (const uint32_t *)(p + hb);
    s->doc_start = (const uint64_t *)(p + hb + tok_bytes);
    s->source = malloc((size_t)src_len + 1);
    if (!s->source) { st = tp_fail(TP_ERR_NOMEM, "out of memory"); goto fail; }
    memcpy(s->source, p + SHARD_FIXED, src_len);
    s->source[src_len] = 0;
    st = check_content(path, s->tokens, (size_t)s->n_tokens, s->doc_start, (size_t)s->n_docs, s->vocab, s->bos, s->eos);
    if (st) { st = TP_ERR_FORMAT; goto fail; } /* same message, reported as a malformed file */
    return TP_OK;
fail:
    shard_close(s);
    return st;
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

typedef struct {
    char **v;
    size_t n, cap;
} strlist;

static int strlist_push(strlist *l, char *s) {
    if (!s) return -1;
    if (l->n == l->cap) {
        size_t c = l->cap ? 2 * l->cap : 16;
        char **nv = realloc(l->v, c * sizeof *nv);
        if (!nv) { free(s); return -1; }
        l->v = nv;
        l->cap = c;
    }
    l->v[l->n++] = s;
    return 0;
}

static void strlist_free(strlist *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
}

/* Expands one item of the path list: a directory gives its *.tpt files sorted by name. */
static tp_status expand_item(const char *item, strlist *out) {
    struct stat st;
    if (stat(item, &st) != 0) return tp_fail(TP_ERR_IO, "%s: cannot open: %s", item, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return strlist_push(out, strdup(item)) ? tp_fail(TP_ERR_NOMEM, "out of memory") : TP_OK;
    DIR *d = opendir(item);
    if (!d) return tp_fail(TP_ERR_IO, "%s: cannot read the directory: %s", item, strerror(errno));
    strlist names = {0};
    struct dirent *e;
    tp_status s = TP_OK;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !has_suffix(e->d_name, ".tpt")) continue;
        if (strlist_push(&names, strdup(e->d_name))) { s = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
    }
    closedir(d);
    if (!s && names.n == 0) s = tp_fail(TP_ERR_IO, "%s: the directory holds no *.tpt token shards", item);
    if (!s) {
        qsort(names.v, names.n, sizeof *names.v, cmp_str);
        for (size_t i = 0; i < names.n && !s; i++)
            if (strlist_push(out, tp_path_join(item, names.v[i]))) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    strlist_free(&names);
    return s;
}

tp_status tp_dataset_open(const char *path, tp_dataset **out) {
    *out = NULL;
    if (!path || !*path) return tp_fail(TP_ERR_ARG, "tp_dataset_open: empty path");
    strlist files = {0};
    tp_status s = TP_OK;
    char *list = strdup(path);
    if (!list) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (char *save = NULL, *it = strtok_r(list, ",", &save); it && !s; it = strtok_r(NULL, ",", &save))
        if (*it) s = expand_item(it, &files);
    free(list);
    if (!s && files.n == 0) s = tp_fail(TP_ERR_ARG, "'%s' names no token shards", path);
    tp_dataset *d = NULL;
    if (!s) {
        d = calloc(1, sizeof *d);
        if (d) {
            d->sh = calloc(files.n, sizeof *d->sh);
            d->tok_off = calloc(files.n + 1, sizeof *d->tok_off);
            d->doc_off = calloc(files.n + 1, sizeof *d->doc_off);
        }
        if (!d || !d->sh || !d->tok_off || !d->doc_off) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; !s && i < files.n; i++) {
        shard *sh = &d->sh[i];
        if ((s = shard_open(files.v[i], sh))) break;
        d->n_shards = i + 1;
        if (i == 0) {
            d->vocab = sh->vocab;
            d->bos = sh->bos;
            d->eos = sh->eos;
            d->fingerprint = sh->fingerprint;
        } else {
            const char *f0 = d->sh[0].path;
            if (sh->vocab != d->vocab)
                s = tp_fail(TP_ERR_FORMAT, "%s: field vocab: %u differs from %u in %s", sh->path, sh->vocab, d->vocab, f0);
            else if (sh->bos != d->bos)
                s = tp_fail(TP_ERR_FORMAT, "%s: field bos: %d differs from %d in %s", sh->path, sh->bos, d->bos, f0);
            else if (sh->eos != d->eos)
                s = tp_fail(TP_ERR_FORMAT, "%s: field eos: %d differs from %d in %s", sh->path, sh->eos, d->eos, f0);
            else if (sh->fingerprint != d->fingerprint)
                s = tp_fail(TP_ERR_FORMAT,
                            "%s: field tok_fingerprint: %016llx differs from %016llx in %s (another tokenizer)",
                            sh->path, (unsigned long long)sh->fingerprint, (unsigned long long)d->fingerprint, f0);
            if (s) break;
        }
        d->tok_off[i + 1] = d->tok_off[i] + sh->n_tokens;
        d->doc_off[i + 1] = d->doc_off[i] + sh->n_docs;
    }
    strlist_free(&files);
    if (s) {
        tp_dataset_close(d);
        return s;
    }
    d->n_tokens = d->tok_off[d->n_shards];
    d->n_docs = d->doc_off[d->n_shards];
    *out = d;
    return TP_OK;
}

void tp_dataset_close(tp_dataset *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n_shards; i++) shard_close(&d->sh[i]);
    free(d->sh);
    free(d->tok_off);
    free(d->doc_off);
    free(d);
}

size_t tp_dataset_tokens(const tp_dataset *d) { return d ? (size_t)d->n_tokens : 0; }
size_t tp_dataset_docs(const tp_dataset *d) { return d ? (size_t)d->n_docs : 0; }

void tp_dataset_get_info(const tp_dataset *d, tp_dataset_info *out) {
    memset(out, 0, sizeof *out);
    if (!d) return;
    out->n_shards = d->n_shards;
    out->vocab = d->vocab;
    out->bos = d->bos;
    out->eos = d->eos;
    out->tok_fingerprint = d->fingerprint;
}

/* ---------------------------------------------------------------- loader --- */

struct tp_loader {
    const tp_dataset *d;
    int T;
    uint64_t extra;        /* stream tokens added per document: (bos >= 0) + (eos >= 0) */
    uint64_t n_stream;     /* n_tokens + n_docs * extra */
    uint64_t n_windows;    /* (n_stream - 1) / T */
    uint64_t k;            /* every k-th window is validation (w % k == k-1); 0 = none */
    uint64_t n_val, n_train;
    double val_frac;
    tp_data_cursor cur;
    uint64_t *perm;        /* (n_train) the permutation of epoch perm_epoch */
    uint64_t perm_epoch;
    int perm_valid;        /* cleared when the seed changes */
};

/* Seed of the shuffle of (seed, epoch): both mixed so neighbouring seeds/epochs are unrelated. */
static uint64_t epoch_seed(uint64_t seed, uint64_t epoch) {
    return tp_mix64(seed ^ tp_mix64(epoch + 0x9e3779b97f4a7c15ull));
}

/* Uniform in [0, m), m >= 1, without modulo bias (rejects the low (2^64 mod m) draws). */
static uint64_t rng_below(tp_rng *r, uint64_t m) {
    uint64_t threshold = (0 - m) % m, x;
    do x = tp_rng_u64(r);
    while (x < threshold);
    return x % m;
}

static void make_perm(tp_loader *L, uint64_t epoch) {
    if (L->perm_valid && L->perm_epoch == epoch) return;
    tp_rng r;
    tp_rng_seed(&r, epoch_seed(L->cur.seed, epoch));
    uint64_t n = L->n_train, *p = L->perm;
    for (uint64_t i = 0; i < n; i++) p[i] = i;
    for (uint64_t i = n; i-- > 1;) {
        uint64_t j = rng_below(&r, i + 1), t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    L->perm_epoch = epoch;
    L->perm_valid = 1;
}

static uint64_t train_window(const tp_loader *L, uint64_t j) { return L->k ? j + j / (L->k - 1) : j; }
static uint64_t val_window(const tp_loader *L, uint64_t i) { return i * L->k + (L->k - 1); }

/* Stream position where shard s's document j begins (j may be n_docs: the shard's end). */
static uint64_t doc_stream_start(const tp_loader *L, size_t s, uint64_t j) {
    const tp_dataset *d = L->d;
    const shard *sh = &d->sh[s];
    uint64_t local = j < sh->n_docs ? sh->doc_start[j] : sh->n_tokens;
    return d->tok_off[s] + local + (d->doc_off[s] + j) * L->extra;
}

/* Copies n stream tokens starting at stream position pos (pos + n <= n_stream) into out. */
static void read_stream(const tp_loader *L, uint64_t pos, size_t n, int32_t *out) {
    const tp_dataset *d = L->d;
    /* shard: the first whose stream end is beyond pos (empty shards end where they start) */
    size_t lo = 0, hi = d->n_shards - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (doc_stream_start(L, mid, d->sh[mid].n_docs) > pos) hi = mid;
        else lo = mid + 1;
    }
    size_t s = lo;
    /* document: the last one whose stream start is <= pos */
    uint64_t a = 0, b = d->sh[s].n_docs - 1;
    while (a < b) {
        uint64_t mid = a + (b - a + 1) / 2;
        if (doc_stream_start(L, s, mid) <= pos) a = mid;
        else b = mid - 1;
    }
    uint64_t j = a, off = pos - doc_stream_start(L, s, j);
    int hb = d->bos >= 0, he = d->eos >= 0;
    size_t got = 0;
    while (got < n) {
        const shard *sh = &d->sh[s];
        uint64_t t0 = sh->doc_start[j], t1 = j + 1 < sh->n_docs ? sh->doc_start[j + 1] : sh->n_tokens;
        uint64_t seg = (uint64_t)hb + (t1 - t0) + (uint64_t)he;
        while (got < n && off < seg) {
            if (hb && off == 0) out[got++] = d->bos;
            else if (off < (uint64_t)hb + (t1 - t0)) out[got++] = (int32_t)sh->tokens[t0 + off - (uint64_t)hb];
            else out[got++] = d->eos;
            off++;
        }
        if (got == n) break;
        off = 0;
        if (++j == sh->n_docs) {
            j = 0;
            do s++;
            while (d->sh[s].n_docs == 0); /* in bounds: pos + n <= n_stream */
        }
    }
}

/* Window w: stream tokens [w*T, w*T + T]; inputs the first T, targets the last T. */
static void fill_window(const tp_loader *L, uint64_t w, int32_t *tokens, int32_t *targets) {
    read_stream(L, w * (uint64_t)L->T, (size_t)L->T, tokens);
    read_stream(L, w * (uint64_t)L->T + 1, (size_t)L->T, targets);
}

tp_status tp_loader_open(const tp_dataset *d, int T, double val_frac, uint64_t seed, tp_loader **out) {
    *out = NULL;
    if (!d) return tp_fail(TP_ERR_ARG, "tp_loader_open: no dataset");
    if (T < 1) return tp_fail(TP_ERR_ARG, "sequence length T = %d: must be at least 1", T);
    if (!(val_frac >= 0 && val_frac < 1))
        return tp_fail(TP_ERR_ARG, "val_frac = %g: must be in [0, 1)", val_frac);
    uint64_t k = 0;
    if (val_frac > 0) {
        double r = 1.0 / val_frac;
        k = r >= 9.2e18 ? UINT64_MAX : (uint64_t)llround(r);
        if (k < 2)
            return tp_fail(TP_ERR_ARG,
                           "val_frac = %g: every round(1/val_frac) = %llu-th window would be held out, leaving no "
                           "training windows; use at most 2/3",
                           val_frac, (unsigned long long)k);
    }
    uint64_t extra = (uint64_t)(d->bos >= 0) + (uint64_t)(d->eos >= 0);
    uint64_t n_stream = d->n_tokens + d->n_docs * extra;
    if (n_stream < (uint64_t)T + 1)
        return tp_fail(TP_ERR_ARG,
                       "dataset too small: %llu tokens (%llu with BOS/EOS) in %llu documents; one training window "
                       "of T = %d needs %d",
                       (unsigned long long)d->n_tokens, (unsigned long long)n_stream, (unsigned long long)d->n_docs,
                       T, T + 1);
    tp_loader *L = calloc(1, sizeof *L);
    if (!L) return tp_fail(TP_ERR_NOMEM, "out of memory");
    L->d = d;
    L->T = T;
    L->extra = extra;
    L->n_stream = n_stream;
    L->n_windows = (n_stream - 1) / (uint64_t)T;
    L->k = k;
    L->n_val = k ? L->n_windows / k : 0;
    L->n_train = L->n_windows - L->n_val;
    L->val_frac = val_frac;
    L->cur.seed = seed;
    uint64_t n_train = L->n_train;
    if (n_train > SIZE_MAX / sizeof *L->perm || !(L->perm = malloc((size_t)n_train * sizeof *L->perm))) {
        tp_loader_free(L);
        return tp_fail(TP_ERR_NOMEM, "out of memory for the permutation of %llu training windows",
                       (unsigned long long)n_train);
    }
    *out = L;
    return TP_OK;
}

void tp_loader_free(tp_loader *L) {
    if (!L) return;
    free(L->perm);
    free(L);
}

size_t tp_loader_n_train(const tp_loader *L) { return L ? (size_t)L->n_train : 0; }
size_t tp_loader_n_val(const tp_loader *L) { return L ? (size_t)L->n_val : 0; }

void tp_loader_describe(const tp_loader *L, char *buf, size_t n) {
    if (!buf || !n) return;
    if (!L) { snprintf(buf, n, "no loader"); return; }
    const tp_dataset *d = L->d;
    char val[96];
    if (L->k) snprintf(val, sizeof val, "the windows w with w mod %llu = %llu", (unsigned long long)L->k,
                       (unsigned long long)(L->k - 1));
    else snprintf(val, sizeof val, "none held out");
    const char *add = d->bos >= 0 && d->eos >= 0 ? "BOS+EOS around each" : d->bos >= 0 ? "BOS before each"
                      : d->eos >= 0                ? "EOS after each"
                                                   : "nothing added to each";
    snprintf(buf, n,
             "data: %zu shard%s, %llu tokens in %llu document%s (%s: %llu stream tokens) -> "
             "%llu windows of T=%d+1 (stride %d, last %llu tokens unused): %llu train, %llu val (%s)",
             d->n_shards, d->n_shards == 1 ? "" : "s", (unsigned long long)d->n_tokens, (unsigned long long)d->n_docs,
             d->n_docs == 1 ? "" : "s", add, (unsigned long long)L->n_stream,
             (unsigned long long)L->n_windows, L->T, L->T,
             (unsigned long long)(L->n_stream - L->n_windows * (uint64_t)L->T - 1), (unsigned long long)L->n_train,
             (unsigned long long)L->n_val, val);
}

tp_status tp_loader_next(tp_loader *L, int B, int32_t *tokens, int32_t *targets) {
    if (!L || !tokens || !targets) return tp_fail(TP_ERR_ARG, "tp_loader_next: NULL argument");
    if (B < 1) return tp_fail(TP_ERR_ARG, "tp_loader_next: batch B = %d must be at least 1", B);
    for (int b = 0; b < B; b++) {
        make_perm(L, L->cur.epoch);
        uint64_t w = train_window(L, L->perm[L->cur.index]);
        fill_window(L, w, tokens + (size_t)b * (size_t)L->T, targets + (size_t)b * (size_t)L->T);
        if (++L->cur.index == L->n_train) {
            L->cur.index = 0;
            L->cur.epoch++;
        }
    }
    return TP_OK;
}

tp_status tp_loader_val(const tp_loader *L, size_t i, int B, int32_t *tokens, int32_t *targets, int *got) {
    if (got) *got = 0;
    if (!L || !tokens || !targets || !got) return tp_fail(TP_ERR_ARG, "tp_loader_val: NULL argument");
    if (B < 1) return tp_fail(TP_ERR_ARG, "tp_loader_val: batch B = %d must be at least 1", B);
    int n = 0;
    for (; n < B && (uint64_t)i + (uint64_t)n < L->n_val; n++) {
        fill_window(L, val_window(L, (uint64_t)i + (uint64_t)n), tokens + (size_t)n * (size_t)L->T,
                    targets + (size_t)n * (size_t)L->T);
    }
    *got = n;
    return TP_OK;
}

tp_data_cursor tp_loader_cursor(const tp_loader *L) {
    tp_data_cursor c;
    memset(&c, 0, sizeof c);
    if (L) c = L->cur;
    return c;
}

tp_status tp_loader_seek(tp_loader *L, tp_data_cursor c) {
    if (!L) return tp_fail(TP_ERR_ARG, "tp_loader_seek: no loader");
    if (c.index > L->n_train)
        return tp_fail(TP_ERR_ARG,
                       "data cursor index %llu is beyond the %llu training windows of this dataset (other data, T or "
                       "val_frac than when the cursor was saved?)",
                       (unsigned long long)c.index, (unsigned long long)L->n_train);
    if (c.index == L->n_train) { /* the end of an epoch is the start of the next */
        c.index = 0;
        c.epoch++;
    }
    if (c.seed != L->cur.seed) L->perm_valid = 0;
    L->cur = c;
    return TP_OK;
}

/* ---------------------------------------------------------------- window ids --- */

tp_status tp_loader_next_ids(tp_loader *L, int B, int32_t *tokens, int32_t *targets, uint64_t *ids) {
    if (!L || !tokens || !targets) return tp_fail(TP_ERR_ARG, "tp_loader_next_ids: NULL argument");
    if (B < 1) return tp_fail(TP_ERR_ARG, "tp_loader_next_ids: batch B = %d must be at least 1", B);
    for (int b = 0; b < B; b++) {
        make_perm(L, L->cur.epoch);
        uint64_t j = L->perm[L->cur.index];
        if (ids) ids[b] = j;
        fill_window(L, train_window(L, j), tokens + (size_t)b * (size_t)L->T, targets + (size_t)b * (size_t)L->T);
        if (++L->cur.index == L->n_train) {
            L->cur.index = 0;
            L->cur.epoch++;
        }
    }
    return TP_OK;
}

tp_status tp_loader_skip(tp_loader *L, uint64_t n) {
    if (!L || !L->n_train) return tp_fail(TP_ERR_ARG, "tp_loader_skip: no loader or no training windows");
    uint64_t left = L->n_train - L->cur.index; /* windows to the end of this epoch */
    if (n < left) {
        L->cur.index += n;
        return TP_OK;
    }
    n -= left;
    L->cur.epoch += 1 + n / L->n_train;
    L->cur.index = n % L->n_train;
    return TP_OK;
}

tp_status tp_loader_train(const tp_loader *L, uint64_t j, int B, int32_t *tokens, int32_t *targets, int *got) {
    if (got) *got = 0;
    if (!L || !tokens || !targets || !got) return tp_fail(TP_ERR_ARG, "tp_loader_train: NULL argument");
    if (B < 1) return tp_fail(TP_ERR_ARG, "tp_loader_train: batch B = %d must be at least 1", B);
    int n = 0;
    for (; n < B && j + (uint64_t)n < L->n_train; n++)
        fill_window(L, train_window(L, j + (uint64_t)n), tokens + (size_t)n * (size_t)L->T,
                    targets + (size_t)n * (size_t)L->T);
    *got = n;
    return TP_OK;
}

void tp_loader_get_info(const tp_loader *L, tp_loader_info *out) {
    memset(out, 0, sizeof *out);
    if (!L) return;
    out->d = L->d;
    out->T = L->T;
    out->val_frac = L->val_frac;
    out->k = L->k;
    out->n_windows = L->n_windows;
    out->n_train = L->n_train;
    out->n_val = L->n_val;
}
