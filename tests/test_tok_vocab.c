/* llama.cpp's own tokenizer test vectors: every models/ggml-vocab-NAME.gguf that has
 * NAME.gguf.inp / NAME.gguf.out beside it (inputs separated by "\n__ggml_vocab_test__\n",
 * one line of ids per input, tokenized without BOS/EOS, as tests/test-tokenizer-0.cpp does).
 * The outputs were produced by HF `tokenizers`, so this checks taper against both. The
 * vocabularies come from the llama.cpp source tree: $TAPER_LLAMA_CPP_SRC (its vendor/llama.cpp
 * directory), default $TAPER_CACHE/llama.cpp-0.3.36 (placed there by `make deps`). */
#include "tt.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/gguf.h"
#include "taper/tokenizer.h"
#include "taper/util.h"

/* Every vocabulary with test vectors in llama.cpp 0.3.36 (llama-cpp-python's vendored copy):
 * the number of cases in its .inp/.out, and for a refused one the words its error must contain. */
static const struct {
    const char *name;
    int cases;
    const char *refused; /* NULL: must load and match every case */
} vocabs[] = {
    {"bert-bge", 46, "tokenizer.ggml.model \"bert\""},
    {"command-r", 46, NULL},
    {"deepseek-coder", 46, NULL},
    {"deepseek-llm", 46, NULL},
    {"falcon", 46, NULL},
    {"gemma-4", 46, NULL},
    {"gpt-2", 46, NULL},
    {"llama-bpe", 46, NULL},
    {"llama-spm", 46, NULL},
    {"mpt", 46, NULL},
    {"phi-3", 46, NULL},
    {"qwen2", 46, NULL},
    {"qwen35", 50, NULL},
    {"refact", 46, NULL},
    {"starcoder", 46, NULL},
};
#define N_VOCABS (sizeof vocabs / sizeof vocabs[0])

static char *models_dir(void) {
    char *src = tt_llama_cpp_src(), *d = src ? tt_path(src, "models") : NULL;
    free(src);
    return d;
}

typedef struct {
    char *inp;              /* whole .inp file */
    char **text; size_t *len;
    char *out;              /* whole .out file */
    char **ids_line;
    size_t n;
} vectors;

static void vectors_free(vectors *v) {
    free(v->inp);
    free(v->text);
    free(v->len);
    free(v->out);
    free(v->ids_line);
    memset(v, 0, sizeof *v);
}

/* Splits the .inp on the separator (a last piece without one still counts, as in
 * test-tokenizer-0.cpp) and the .out on newlines; returns 0 when the counts differ. */
static int read_vectors(const char *inp_path, const char *out_path, vectors *v) {
    memset(v, 0, sizeof *v);
    size_t ni, no;
    if (tp_read_file(inp_path, &v->inp, &ni) || tp_read_file(out_path, &v->out, &no)) return 0;
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t cap = 1;
    for (size_t i = 0; i < no; i++) cap += v->out[i] == '\n';
    v->text = calloc(cap + 1, sizeof *v->text);
    v->len = calloc(cap + 1, sizeof *v->len);
    v->ids_line = calloc(cap + 1, sizeof *v->ids_line);
    if (!v->text || !v->len || !v->ids_line) abort();
    size_t n_in = 0, pos = 0;
    while (pos < ni) {
        char *next = memmem(v->inp + pos, ni - pos, sep, sizeof sep - 1);
        size_t end = next ? (size_t)(next - v->inp) : ni;
        if (n_in == cap) return 0;
        v->text[n_in] = v->inp + pos;
        v->len[n_in++] = end - pos;
        if (!next) break;
        pos = end + sizeof sep - 1;
    }
    size_t n_out = 0;
    for (size_t st = 0, i = 0; i < no; i++)
        if (v->out[i] == '\n') {
            v->out[i] = 0;
            v->ids_line[n_out++] = v->out + st;
            st = i + 1;
        }
    v->n = n_in;
    return n_in == n_out;
}

/* Parses a line of space-separated ids; returns the count (-1 on a bad number). */
static long parse_ids(const char *s, int32_t *ids, size_t cap) {
    size_t n = 0;
    while (*s) {
        while (*s == ' ') s++;
        if (!*s) break;
        char *e;
        long v = strtol(s, &e, 10);
        if (e == s || n == cap) return -1;
        ids[n++] = (int32_t)v;
        s = e;
    }
    return (long)n;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "      %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 48; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, "%s\n", n > 48 ? " ..." : "");
}

/* Returns the number of cases that matched. */
static size_t check_vocab(const tp_tokenizer *t, const vectors *v, const char *name) {
    size_t equal = 0, shown = 0;
    for (size_t i = 0; i < v->n; i++) {
        size_t cap = strlen(v->ids_line[i]) + 1;
        int32_t *want = malloc(cap * sizeof *want);
        if (!want) abort();
        long nw = parse_ids(v->ids_line[i], want, cap);
        TT_CHECK(nw >= 0, "%s: case %zu: bad line in .out", name, i);
        int32_t *ids = NULL;
        size_t n = 0;
        tp_status rc = tp_tok_encode_ex(t, v->text[i], v->len[i], TP_TOK_NO_PARSE_SPECIAL, &ids, &n);
        TT_CHECK(rc == TP_OK, "%s: case %zu: encode: %s", name, i, tp_errmsg());
        int same = !rc && nw >= 0 && (size_t)nw == n && memcmp(ids, want, n * sizeof *ids) == 0;
        if (same) equal++;
        else if (shown++ < 4) {
            fprintf(stderr, "    %s case %zu \"%.*s\"\n", name, i, (int)(v->len[i] > 60 ? 60 : v->len[i]), v->text[i]);
            print_ids("taper", ids, n);
            print_ids("llama.cpp/HF", want, nw > 0 ? (size_t)nw : 0);
        }
        free(ids);
        free(want);
    }
    return equal;
}

TT_TEST(tok_llama_cpp_vocab_vectors) {
    char *dir = models_dir();
    if (access(dir, R_OK) != 0) {
        tt_skip("%s not found: llama.cpp's vocab test vectors come with `make deps` (or set TAPER_LLAMA_CPP_SRC "
                "to a llama.cpp source tree)", dir);
        free(dir);
        return;
    }
    /* every vocabulary with vectors in the directory must be in the table */
    DIR *d = opendir(dir);
    TT_CHECK(d != NULL, "cannot list %s", dir);
    size_t found = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        const char *nm = e->d_name;
        size_t l = strlen(nm);
        if (l < 20 || strncmp(nm, "ggml-vocab-", 11) != 0 || strcmp(nm + l - 9, ".gguf.inp") != 0) continue;
        found++;
        int known = 0;
        for (size_t k = 0; k < N_VOCABS; k++)
            known |= strlen(vocabs[k].name) == l - 20 && strncmp(vocabs[k].name, nm + 11, l - 20) == 0;
        TT_CHECK(known, "%s/%s has test vectors but is not in this test's table", dir, nm);
    }
    if (d) closedir(d);
    TT_CHECK(found == N_VOCABS, "%zu vocabularies with test vectors in %s, expected %zu", found, dir, N_VOCABS);

    size_t total_cases = 0, total_equal = 0;
    for (size_t k = 0; k < N_VOCABS; k++) {
        char base[4200], inp[4300], out[4300];
        snprintf(base, sizeof base, "%s/ggml-vocab-%s.gguf", dir, vocabs[k].name);
        snprintf(inp, sizeof inp, "%s.inp", base);
        snprintf(out, sizeof out, "%s.out", base);
        vectors v;
        int ok = read_vectors(inp, out, &v);
        TT_CHECK(ok, "%s: cannot read the vectors or .inp/.out counts differ", base);
        TT_CHECK(v.n == (size_t)vocabs[k].cases, "%s: %zu cases, expected %d", vocabs[k].name, v.n, vocabs[k].cases);
        tp_gguf *g = NULL;
        tp_tokenizer *t = NULL;
        tp_status rc = tp_gguf_open(base, &g);
        TT_CHECK(rc == TP_OK, "tp_gguf_open(%s): %s", base, tp_errmsg());
        if (!rc) rc = tp_tok_load_gguf(g, &t);
        if (vocabs[k].refused) {
            TT_CHECK(rc != TP_OK && strstr(tp_errmsg(), vocabs[k].refused) && strstr(tp_errmsg(), base),
                     "%s: expected a refusal naming the file and %s, got rc %d \"%s\"", vocabs[k].name,
                     vocabs[k].refused, (int)rc, rc ? tp_errmsg() : "");
            fprintf(stderr, "    %-15s refused: %s\n", vocabs[k].name, rc ? tp_errmsg() : "(loaded!)");
        } else {
            TT_CHECK(rc == TP_OK, "%s: %s", vocabs[k].name, tp_errmsg());
            size_t eq = t && ok ? check_vocab(t, &v, vocabs[k].name) : 0;
            fprintf(stderr, "    %-15s %2zu / %2zu cases equal (pre \"%s\")\n", vocabs[k].name, eq, v.n,
                    t ? tp_tok_pre_name(t) : "-");
            TT_CHECK(ok && eq == v.n, "%s: %zu of %zu cases equal", vocabs[k].name, eq, v.n);
            total_cases += v.n;
            total_equal += eq;
        }
        tp_tok_free(t);
        tp_gguf_close(g);
        vectors_free(&v);
    }
    fprintf(stderr, "    all: %zu / %zu cases equal over %zu vocabularies\n", total_equal, total_cases, N_VOCABS);
    TT_CHECK(total_cases == 46 * 13 + 50, "%zu cases compared, expected %d", total_cases, 46 * 13 + 50);
    free(dir);
}
