/* taper tokenize TOKENIZER -o OUT_DIR INPUT...: text, JSONL and directories into token shards.
 * Documents are tokenized in parallel batches (OpenMP over documents) and written strictly in
 * input order, so the shards do not depend on the thread count. Shard format and loader rules:
 * docs/data.md; shards are written with tp_shard_writer (src/train/data.c). */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli.h"
#include "taper/gguf.h"
#include "taper/tokenizer.h"
#include "taper/train.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper tokenize MODEL_OR_TOKENIZER -o OUT_DIR INPUT... [options]\n\n"
    "Tokenizes documents into binary token shards (OUT_DIR/shard-00000.tpt, ...) plus OUT_DIR/manifest.json,\n"
    "ready for `taper train --data OUT_DIR`. Format and loader rules: docs/data.md.\n\n"
    "  MODEL_OR_TOKENIZER  a .gguf file, an HF folder (its tokenizer.json) or a tokenizer.json\n"
    "  INPUT               text files, .jsonl files (one JSON object per line) or directories\n"
    "                      (searched recursively for *.txt *.md *.jsonl, in sorted path order)\n\n"
    "  -o, --output DIR        where the shards go (created; refuses a DIR already holding shards)\n"
    "  --format F              auto (default: .jsonl files are JSONL, the rest text) | text | jsonl\n"
    "  --field NAME            JSONL field holding the document text (default text; nested: a.b)\n"
    "  --doc-split S           text files: file (default: one document per file) | line (one per\n"
    "                          non-blank line) | blank (paragraphs separated by blank lines)\n"
    "  --shard-tokens N        tokens per shard before a new one starts (default 100M; K/M/G suffixes);\n"
    "                          documents are never split across shards\n"
    "  --append-eos            the loader appends EOS after every document (recorded in the header)\n"
    "  --eos-token PIECE       which token that is (default: the tokenizer's EOS)\n"
    "  --threads N             OpenMP threads (default: all cores); output does not depend on it\n"
    "  --force                 replace the shards and manifest already in OUT_DIR\n"
    "  -h, --help              this help\n\n"
    "BOS goes before every document when the tokenizer adds one (tokenizer metadata). Empty documents\n"
    "are skipped. Exit codes: 0 ok, 1 runtime error (bad input file, unreadable tokenizer), 2 usage.\n";

typedef enum { FMT_AUTO, FMT_TEXT, FMT_JSONL } in_format;
typedef enum { SPLIT_FILE, SPLIT_LINE, SPLIT_BLANK } doc_split;

typedef struct {
    char *path;
    int jsonl;
    size_t bytes;
    size_t docs, tokens, empty;  /* filled while tokenizing */
} in_file;

typedef struct {
    in_file *v;
    size_t n, cap;
} file_list;

typedef struct {
    const char *text;   /* into a mapping, or owned */
    size_t len;
    char *owned;        /* malloc'd text (JSONL values) */
    size_t file;        /* index into the file list */
    size_t line;        /* 1-based line of a JSONL / line-split document, first line of a paragraph */
} doc;

typedef struct {
    /* settings */
    const tp_tokenizer *tok;
    const char *tok_path, *out_dir, *field;
    doc_split split;
    size_t shard_tokens;
    uint32_t vocab;
    int32_t bos, eos;
    uint64_t fingerprint;
    file_list *files;
    /* batch of documents being tokenized */
    doc *docs;
    size_t n_docs, cap_docs, batch_bytes;
    tp_mmap *maps;      /* mappings of finished files whose documents are in the batch */
    size_t n_maps, cap_maps;
    /* shard being filled (NULL until its first document) */
    tp_shard_writer *shard;
    size_t shard_first_file, shard_last_file;
    /* results */
    size_t n_shards, total_tokens, total_docs, total_empty, shard_bytes, bytes_done, total_bytes;
    cJSON *shards_json;
    tp_progress prog;
    char label[96];
    double t0;
} tok_job;

#define BATCH_DOCS 4096
#define BATCH_BYTES ((size_t)32 << 20)

/* ------------------------------------------------------------ inputs --- */

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int cmp_file(const void *a, const void *b) {
    return strcmp(((const in_file *)a)->path, ((const in_file *)b)->path);
}

static tp_status add_file(file_list *l, char *path, size_t bytes, in_format fmt) {
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    if (l->n == l->cap) {
        size_t c = l->cap ? 2 * l->cap : 32;
        in_file *nv = realloc(l->v, c * sizeof *nv);
        if (!nv) { free(path); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
        l->v = nv;
        l->cap = c;
    }
    in_file *f = &l->v[l->n++];
    memset(f, 0, sizeof *f);
    f->path = path;
    f->bytes = bytes;
    f->jsonl = fmt == FMT_JSONL || (fmt == FMT_AUTO && has_suffix(path, ".jsonl"));
    return TP_OK;
}

/* Regular files under dir named *.txt *.md *.jsonl; hidden entries and links to directories skipped. */
static tp_status walk_dir(const char *dir, file_list *l, in_format fmt, int depth) {
    if (depth > 64) return tp_fail(TP_ERR_IO, "%s: directories nested more than 64 deep", dir);
    DIR *d = opendir(dir);
    if (!d) return tp_fail(TP_ERR_IO, "%s: cannot read the directory: %s", dir, strerror(errno));
    tp_status s = TP_OK;
    struct dirent *e;
    while (!s && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *p = tp_path_join(dir, e->d_name);
        if (!p) { s = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
        struct stat lst, st;
        if (lstat(p, &lst) != 0 || stat(p, &st) != 0) { free(p); continue; } /* dangling link */
        if (S_ISDIR(st.st_mode)) {
            if (!S_ISLNK(lst.st_mode)) s = walk_dir(p, l, fmt, depth + 1);
            free(p);
        } else if (S_ISREG(st.st_mode) &&
                   (has_suffix(p, ".txt") || has_suffix(p, ".md") || has_suffix(p, ".jsonl"))) {
            s = add_file(l, p, (size_t)st.st_size, fmt);
        } else {
            free(p);
        }
    }
    closedir(d);
    return s;
}

static tp_status collect_inputs(char **inputs, int n, in_format fmt, file_list *l) {
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (stat(inputs[i], &st) != 0) return tp_fail(TP_ERR_IO, "%s: cannot open: %s", inputs[i], strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            size_t first = l->n;
            tp_status s = walk_dir(inputs[i], l, fmt, 0);
            if (s) return s;
            if (l->n == first) return tp_fail(TP_ERR_IO, "%s: no *.txt, *.md or *.jsonl files in this directory", inputs[i]);
            qsort(l->v + first, l->n - first, sizeof *l->v, cmp_file);
        } else {
            tp_status s = add_file(l, strdup(inputs[i]), (size_t)st.st_size, fmt);
            if (s) return s;
        }
    }
    return TP_OK;
}

/* ------------------------------------------------------------ shards --- */

static void shard_name(const tok_job *J, char *name, size_t n) { snprintf(name, n, "shard-%05zu.tpt", J->n_shards); }

/* Writes the shard being filled (if any) and records it for the manifest. */
static tp_status flush_shard(tok_job *J) {
    tp_shard_writer *w = J->shard;
    J->shard = NULL;
    if (!w) return TP_OK;
    char name[32], src[4096];
    shard_name(J, name, sizeof name);
    size_t n_tok = tp_shard_writer_tokens(w), n_docs = tp_shard_writer_docs(w), bytes = 0;
    snprintf(src, sizeof src, "taper tokenize; tokenizer %s; documents from %s to %s", J->tok_path,
             J->files->v[J->shard_first_file].path, J->files->v[J->shard_last_file].path);
    tp_status s = tp_shard_writer_close(w, src, &bytes);
    if (s) return s;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "file", name);
    cJSON_AddNumberToObject(o, "tokens", (double)n_tok);
    cJSON_AddNumberToObject(o, "documents", (double)n_docs);
    cJSON_AddNumberToObject(o, "bytes", (double)bytes);
    cJSON_AddStringToObject(o, "first_input", J->files->v[J->shard_first_file].path);
    cJSON_AddStringToObject(o, "last_input", J->files->v[J->shard_last_file].path);
    cJSON_AddItemToArray(J->shards_json, o);
    J->shard_bytes += bytes;
    J->n_shards++;
    return TP_OK;
}

/* Appends one tokenized document to the shard being filled, starting a new shard first when
 * the document would take it past --shard-tokens. */
static tp_status append_doc(tok_job *J, const int32_t *ids, size_t n, size_t file) {
    size_t have = tp_shard_writer_tokens(J->shard);
    if (have && have + n > J->shard_tokens) {
        tp_status s = flush_shard(J);
        if (s) return s;
    }
    if (!J->shard) {
        char name[32];
        shard_name(J, name, sizeof name);
        char *path = tp_path_join(J->out_dir, name);
        if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
        tp_status s = tp_shard_writer_open(path, J->vocab, J->bos, J->eos, J->fingerprint, &J->shard);
        free(path);
        if (s) return s;
        J->shard_first_file = file;
    }
    tp_status s = tp_shard_writer_add_doc(J->shard, ids, n);
    if (!s) J->shard_last_file = file;
    return s;
}

/* ------------------------------------------------------------ batches --- */

static void update_progress(tok_job *J) {
    double el = tp_time_s() - J->t0;
    double rate = el > 0 ? (double)J->total_tokens / el : 0;
    snprintf(J->label, sizeof J->label, "tokenize %.2fM tok %.0fk tok/s", (double)J->total_tokens / 1e6, rate / 1e3);
    tp_progress_update(&J->prog, (double)J->bytes_done);
}

/* Tokenizes the batch in parallel, then appends its documents in order. */
static tp_status run_batch(tok_job *J) {
    size_t n = J->n_docs;
    tp_status s = TP_OK;
    if (n) {
        int32_t **ids = calloc(n, sizeof *ids);
        size_t *n_ids = calloc(n, sizeof *n_ids);
        tp_status *st = calloc(n, sizeof *st);
        char **err = calloc(n, sizeof *err);
        if (!ids || !n_ids || !st || !err) {
            s = tp_fail(TP_ERR_NOMEM, "out of memory");
        } else {
            const doc *D = J->docs;
            const tp_tokenizer *tok = J->tok;
            long ln = (long)n;
#pragma omp parallel for schedule(dynamic, 1)
            for (long i = 0; i < ln; i++) {
                st[i] = tp_tok_encode(tok, D[i].text, D[i].len, 0, &ids[i], &n_ids[i]);
                if (st[i]) err[i] = strdup(tp_errmsg()); /* the message is per thread */
            }
            for (size_t i = 0; i < n && !s; i++) {
                const doc *d = &D[i];
                in_file *f = &J->files->v[d->file];
                if (st[i]) {
                    s = tp_fail(st[i], "%s:%zu: tokenizing the document failed: %s", f->path, d->line,
                                err[i] ? err[i] : "?");
                    break;
                }
                if (n_ids[i] == 0) { f->empty++; J->total_empty++; continue; }
                if ((s = append_doc(J, ids[i], n_ids[i], d->file))) break;
                f->docs++;
                f->tokens += n_ids[i];
                J->total_docs++;
                J->total_tokens += n_ids[i];
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (ids) free(ids[i]);
            if (err) free(err[i]);
            free(J->docs[i].owned);
        }
        free(ids);
        free(n_ids);
        free(st);
        free(err);
    }
    for (size_t i = 0; i < J->n_maps; i++) tp_mmap_close(&J->maps[i]);
    J->n_maps = 0;
    J->n_docs = 0;
    J->batch_bytes = 0;
    update_progress(J);
    return s;
}

static tp_status push_doc(tok_job *J, const char *text, size_t len, char *owned, size_t file, size_t line) {
    if (len == 0) { /* nothing to tokenize: counted, not stored */
        free(owned);
        J->files->v[file].empty++;
        J->total_empty++;
        return TP_OK;
    }
    if (J->n_docs == J->cap_docs) {
        size_t c = J->cap_docs ? 2 * J->cap_docs : 256;
        doc *nv = realloc(J->docs, c * sizeof *nv);
        if (!nv) { free(owned); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
        J->docs = nv;
        J->cap_docs = c;
    }
    J->docs[J->n_docs++] = (doc){text, len, owned, file, line};
    J->batch_bytes += len;
    if (J->n_docs >= BATCH_DOCS || J->batch_bytes >= BATCH_BYTES) return run_batch(J);
    return TP_OK;
}

/* ------------------------------------------------------------ documents --- */

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v') return 0;
    return 1;
}

/* Line [a, e) without its newline (and a CR before it); *next: start of the following line. */
static size_t line_end(const char *s, size_t a, size_t n, size_t *next) {
    const char *nl = memchr(s + a, '\n', n - a);
    size_t e = nl ? (size_t)(nl - s) : n;
    *next = nl ? e + 1 : n;
    return e;
}

static tp_status text_docs(tok_job *J, const char *s, size_t n, size_t file) {
    if (J->split == SPLIT_FILE) return push_doc(J, s, n, NULL, file, 1);
    tp_status st = TP_OK;
    size_t a = 0, line = 1, para_a = 0, para_e = 0, para_line = 0;
    int in_para = 0;
    while (a < n && !st) {
        size_t next, e = line_end(s, a, n, &next);
        size_t ee = e > a && s[e - 1] == '\r' ? e - 1 : e;
        int blank = is_blank(s + a, ee - a);
        if (J->split == SPLIT_LINE) {
            if (!blank) st = push_doc(J, s + a, ee - a, NULL, file, line);
        } else if (!blank) {
            if (!in_para) { in_para = 1; para_a = a; para_line = line; }
            para_e = ee;
        } else if (in_para) {
            in_para = 0;
            st = push_doc(J, s + para_a, para_e - para_a, NULL, file, para_line);
        }
        a = next;
        line++;
    }
    if (!st && in_para) st = push_doc(J, s + para_a, para_e - para_a, NULL, file, para_line);
    return st;
}

static const char *json_type(const cJSON *v) {
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "not a string";
}

/* The field (dotted path a.b.c into nested objects) of one JSON line. */
static tp_status jsonl_field(const cJSON *root, const char *field, const char *path, size_t line, char **out) {
    const cJSON *v = root;
    const char *p = field;
    char key[256];
    while (1) {
        const char *dot = strchr(p, '.');
        size_t kl = dot ? (size_t)(dot - p) : strlen(p);
        if (kl >= sizeof key) return tp_fail(TP_ERR_ARG, "--field '%s': a key is too long", field);
        memcpy(key, p, kl);
        key[kl] = 0;
        if (!cJSON_IsObject(v))
            return tp_fail(TP_ERR_FORMAT, "%s:%zu: cannot look up \"%s\" of field \"%s\": the value around it is %s",
                           path, line, key, field, json_type(v));
        v = cJSON_GetObjectItemCaseSensitive(v, key);
        if (!v) return tp_fail(TP_ERR_FORMAT, "%s:%zu: field \"%s\" is missing", path, line, field);
        if (!dot) break;
        p = dot + 1;
    }
    if (!cJSON_IsString(v) || !v->valuestring)
        return tp_fail(TP_ERR_FORMAT, "%s:%zu: field \"%s\" is %s, expected a string", path, line, field, json_type(v));
    *out = strdup(v->valuestring);
    return *out ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
}

static tp_status jsonl_docs(tok_job *J, const char *s, size_t n, size_t file) {
    const char *path = J->files->v[file].path;
    size_t a = 0, line = 1;
    tp_status st = TP_OK;
    while (a < n && !st) {
        size_t next, e = line_end(s, a, n, &next);
        if (!is_blank(s + a, e - a)) {
            const char *end = NULL;
            cJSON *root = cJSON_ParseWithLengthOpts(s + a, e - a, &end, 0);
            if (root && (!end || end < s + a || end > s + e || !is_blank(end, (size_t)(s + e - end)))) { /* one value per line, nothing after it */
                cJSON_Delete(root);
                root = NULL;
            }
            if (!root) {
                st = tp_fail(TP_ERR_FORMAT, "%s:%zu: not valid JSON (one JSON object per line expected)", path, line);
                break;
            }
            char *text = NULL;
            st = jsonl_field(root, J->field, path, line, &text);
            cJSON_Delete(root);
            if (!st) st = push_doc(J, text, strlen(text), text, file, line);
        }
        a = next;
        line++;
    }
    return st;
}

static tp_status process_file(tok_job *J, size_t i) {
    in_file *f = &J->files->v[i];
    if (J->n_maps == J->cap_maps) {
        size_t c = J->cap_maps ? 2 * J->cap_maps : 64;
        tp_mmap *nv = realloc(J->maps, c * sizeof *nv);
        if (!nv) return tp_fail(TP_ERR_NOMEM, "out of memory");
        J->maps = nv;
        J->cap_maps = c;
    }
    tp_mmap m;
    tp_status s = tp_mmap_open(f->path, &m);
    if (s) return s;
    const char *text = (const char *)m.data;
    s = f->jsonl ? jsonl_docs(J, text, m.size, i) : text_docs(J, text, m.size, i);
    /* documents of the batch may point into the mapping: it is closed once the batch has run */
    J->maps[J->n_maps++] = m;
    J->bytes_done += f->bytes;
    if (J->n_docs == 0) {
        for (size_t k = 0; k < J->n_maps; k++) tp_mmap_close(&J->maps[k]);
        J->n_maps = 0;
        update_progress(J);
    }
    return s;
}

/* ------------------------------------------------------------ setup --- */

/* The tokenizer of MODEL_OR_TOKENIZER; a folder without one is an error here. */
static tp_status load_tokenizer(const char *arg, tp_tokenizer **tok) {
    tp_status s = tp_tok_load_any(arg, tok, NULL);
    if (!s && !*tok) s = tp_fail(TP_ERR_IO, "%s: the folder has no tokenizer.json (nor tokenizer.gguf)", arg);
    return s;
}

/* Makes OUT_DIR; refuses one holding shards or a manifest unless force, which removes them. */
static tp_status prepare_out_dir(const char *dir, int force) {
    if (tp_mkdir_p(dir) != 0) return tp_fail(TP_ERR_IO, "%s: cannot create the directory: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return tp_fail(TP_ERR_IO, "%s: not a directory", dir);
    DIR *d = opendir(dir);
    if (!d) return tp_fail(TP_ERR_IO, "%s: cannot read the directory: %s", dir, strerror(errno));
    tp_status s = TP_OK;
    struct dirent *e;
    while (!s && (e = readdir(d))) {
        if (!has_suffix(e->d_name, ".tpt") && strcmp(e->d_name, "manifest.json") != 0) continue;
        if (!force) {
            s = tp_fail(TP_ERR_IO, "%s already holds %s from an earlier run: remove it, choose another directory "
                                   "or pass --force to replace the shards",
                        dir, e->d_name);
            break;
        }
        char *p = tp_path_join(dir, e->d_name);
        if (!p || unlink(p) != 0) s = tp_fail(TP_ERR_IO, "%s/%s: cannot remove: %s", dir, e->d_name, strerror(errno));
        free(p);
    }
    closedir(d);
    return s;
}


static void free_job(tok_job *J) {
    for (size_t i = 0; i < J->n_docs; i++) free(J->docs[i].owned);
    for (size_t i = 0; i < J->n_maps; i++) tp_mmap_close(&J->maps[i]);
    free(J->docs);
    free(J->maps);
    tp_shard_writer_abort(J->shard);
}

static void free_files(file_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i].path);
    free(l->v);
}

static tp_status write_manifest(tok_job *J, const char *fmt_name, const char *split_name, int append_eos) {
    cJSON *j = cJSON_CreateObject();
    char hex[32];
    cJSON_AddStringToObject(j, "format", "taper-token-shards");
    cJSON_AddNumberToObject(j, "shard_version", 1);
    cJSON *t = cJSON_AddObjectToObject(j, "tokenizer");
    cJSON_AddStringToObject(t, "path", J->tok_path);
    cJSON_AddNumberToObject(t, "vocab", J->vocab);
    cJSON_AddNumberToObject(t, "bos", J->bos);
    cJSON_AddNumberToObject(t, "eos", J->eos);
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)J->fingerprint);
    cJSON_AddStringToObject(t, "fingerprint", hex);
    cJSON *o = cJSON_AddObjectToObject(j, "options");
    cJSON_AddStringToObject(o, "format", fmt_name);
    cJSON_AddStringToObject(o, "field", J->field);
    cJSON_AddStringToObject(o, "doc_split", split_name);
    cJSON_AddNumberToObject(o, "shard_tokens", (double)J->shard_tokens);
    cJSON_AddBoolToObject(o, "append_eos", append_eos);
    cJSON *in = cJSON_AddArrayToObject(j, "inputs");
    for (size_t i = 0; i < J->files->n; i++) {
        const in_file *f = &J->files->v[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "path", f->path);
        cJSON_AddStringToObject(x, "format", f->jsonl ? "jsonl" : "text");
        cJSON_AddNumberToObject(x, "bytes", (double)f->bytes);
        cJSON_AddNumberToObject(x, "documents", (double)f->docs);
        cJSON_AddNumberToObject(x, "empty_documents", (double)f->empty);
        cJSON_AddNumberToObject(x, "tokens", (double)f->tokens);
        cJSON_AddItemToArray(in, x);
    }
    cJSON_AddItemToObject(j, "shards", J->shards_json);
    J->shards_json = NULL;
    cJSON *tot = cJSON_AddObjectToObject(j, "totals");
    cJSON_AddNumberToObject(tot, "files", (double)J->files->n);
    cJSON_AddNumberToObject(tot, "input_bytes", (double)J->total_bytes);
    cJSON_AddNumberToObject(tot, "documents", (double)J->total_docs);
    cJSON_AddNumberToObject(tot, "empty_documents_skipped", (double)J->total_empty);
    cJSON_AddNumberToObject(tot, "tokens", (double)J->total_tokens);
    cJSON_AddNumberToObject(tot, "shards", (double)J->n_shards);
    cJSON_AddNumberToObject(tot, "shard_bytes", (double)J->shard_bytes);
    char *path = tp_path_join(J->out_dir, "manifest.json");
    tp_status s = path ? tp_write_json_atomic(path, j) : tp_fail(TP_ERR_NOMEM, "out of memory");
    cJSON_Delete(j);
    free(path);
    return s;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"format", required_argument, 0, 'f'},
                                         {"field", required_argument, 0, 'F'},
                                         {"doc-split", required_argument, 0, 's'},
                                         {"shard-tokens", required_argument, 0, 'n'},
                                         {"append-eos", no_argument, 0, 'e'},
                                         {"eos-token", required_argument, 0, 'E'},
                                         {"threads", required_argument, 0, 't'},
                                         {"force", no_argument, 0, 'x'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out_dir = NULL, *field = "text", *fmt_name = "auto", *split_name = "file", *eos_piece = NULL;
    in_format fmt = FMT_AUTO;
    doc_split split = SPLIT_FILE;
    size_t shard_tokens = 100000000;
    int append_eos = 0, threads = 0, force = 0, c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'o': out_dir = optarg; break;
        case 'f':
            fmt_name = optarg;
            if (!strcmp(optarg, "auto")) fmt = FMT_AUTO;
            else if (!strcmp(optarg, "text")) fmt = FMT_TEXT;
            else if (!strcmp(optarg, "jsonl")) fmt = FMT_JSONL;
            else return cli_usage("tokenize", "--format expects auto, text or jsonl, got '%s'", optarg);
            break;
        case 'F':
            if (!*optarg || optarg[0] == '.' || has_suffix(optarg, ".") || strstr(optarg, ".."))
                return cli_usage("tokenize", "--field expects a key or a dotted path a.b, got '%s'", optarg);
            field = optarg;
            break;
        case 's':
            split_name = optarg;
            if (!strcmp(optarg, "file")) split = SPLIT_FILE;
            else if (!strcmp(optarg, "line")) split = SPLIT_LINE;
            else if (!strcmp(optarg, "blank")) split = SPLIT_BLANK;
            else return cli_usage("tokenize", "--doc-split expects file, line or blank, got '%s'", optarg);
            break;
        case 'n':
            if (tp_parse_count(optarg, &shard_tokens))
                return cli_usage("tokenize", "--shard-tokens expects a positive whole count (e.g. 100M), got '%s'",
                                 optarg);
            break;
        case 'e': append_eos = 1; break;
        case 'E': eos_piece = optarg; break;
        case 't': if ((rc = cli_int("tokenize", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'x': force = 1; break;
        default: return cli_usage("tokenize", "unknown option");
        }
    }
    if (argc - optind < 2) return cli_usage("tokenize", "expects MODEL_OR_TOKENIZER and at least one INPUT");
    if (!out_dir || !*out_dir) return cli_usage("tokenize", "-o OUT_DIR is required");
    if (eos_piece && !append_eos) return cli_usage("tokenize", "--eos-token only makes sense with --append-eos");
    cli_set_threads(threads);
    const char *tok_path = argv[optind];

    tp_tokenizer *tok = NULL;
    file_list files = {0};
    tok_job J;
    memset(&J, 0, sizeof J);
    tp_status s = load_tokenizer(tok_path, &tok);
    if (!s) s = collect_inputs(argv + optind + 1, argc - optind - 1, fmt, &files);
    if (s) {
        free_files(&files);
        tp_tok_free(tok);
        return cli_error(s);
    }
    J.tok = tok;
    J.tok_path = tok_path;
    J.out_dir = out_dir;
    J.field = field;
    J.split = split;
    J.shard_tokens = shard_tokens;
    J.files = &files;
    J.vocab = (uint32_t)tp_tok_vocab_size(tok);
    J.bos = tp_tok_adds_bos(tok) ? tp_tok_bos(tok) : -1;
    J.eos = -1;
    if (append_eos) {
        J.eos = eos_piece ? tp_tok_find(tok, eos_piece) : tp_tok_eos(tok);
        if (J.eos < 0)
            s = eos_piece ? tp_fail(TP_ERR_ARG, "--eos-token '%s' is not in the vocabulary of %s", eos_piece, tok_path)
                          : tp_fail(TP_ERR_ARG, "%s defines no EOS token: name one with --eos-token", tok_path);
    }
    J.fingerprint = tp_shard_tok_fingerprint(tok);
    J.shards_json = cJSON_CreateArray();
    for (size_t i = 0; i < files.n; i++) J.total_bytes += files.v[i].bytes;
    if (!s) s = prepare_out_dir(out_dir, force);

    J.t0 = tp_time_s();
    snprintf(J.label, sizeof J.label, "tokenize");
    tp_progress_begin(&J.prog, J.label, (double)J.total_bytes, "B");
    for (size_t i = 0; i < files.n && !s; i++) s = process_file(&J, i);
    if (!s) s = run_batch(&J);
    if (!s) s = flush_shard(&J);
    double secs = tp_time_s() - J.t0;
    update_progress(&J);
    tp_progress_end(&J.prog);
    if (!s && J.total_docs == 0) s = tp_fail(TP_ERR_ARG, "the inputs hold no documents (all %zu empty)", J.total_empty);
    if (!s) s = write_manifest(&J, fmt_name, split_name, append_eos);
    if (s) {
        cJSON_Delete(J.shards_json);
        free_job(&J);
        free_files(&files);
        tp_tok_free(tok);
        return cli_error(s);
    }
    int n_threads = 1;
#ifdef _OPENMP
    n_threads = omp_get_max_threads();
#endif
    char bos_s[64], eos_s[64];
    if (J.bos >= 0) snprintf(bos_s, sizeof bos_s, "%d %s before each document", J.bos, tp_tok_piece(tok, J.bos));
    else snprintf(bos_s, sizeof bos_s, "none");
    if (J.eos >= 0) snprintf(eos_s, sizeof eos_s, "%d %s after each document", J.eos, tp_tok_piece(tok, J.eos));
    else snprintf(eos_s, sizeof eos_s, "none");
    printf("tokenizer  %s (vocab %u, fingerprint %016llx)\n", tok_path, J.vocab, (unsigned long long)J.fingerprint);
    printf("bos / eos  %s / %s\n", bos_s, eos_s);
    printf("files      %zu (%.1f MB)\n", files.n, (double)J.total_bytes / 1e6);
    printf("documents  %zu (%zu empty skipped)\n", J.total_docs, J.total_empty);
    printf("tokens     %zu (%.2f bytes/token)\n", J.total_tokens,
           J.total_tokens ? (double)J.total_bytes / (double)J.total_tokens : 0.0);
    printf("shards     %zu in %s (%.1f MB) + manifest.json\n", J.n_shards, out_dir, (double)J.shard_bytes / 1e6);
    printf("speed      %.0f tokens/s on %d thread%s (%.2f s)\n", secs > 0 ? (double)J.total_tokens / secs : 0.0,
           n_threads, n_threads == 1 ? "" : "s", secs);
    free_job(&J);
    free_files(&files);
    tp_tok_free(tok);
    return CLI_OK;
}
