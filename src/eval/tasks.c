/* Task loaders: the files of ../shared/data (ARC, HellaSwag, PIQA, WinoGrande, MMLU, WikiText-2)
 * and the generic JSONL format of docs/eval.md, turned into the exact (context, continuation)
 * strings lm-evaluation-harness builds for each task (its task YAMLs and utils.py, zero-shot).
 * Python string semantics the harness relies on (str.strip, str.replace, re.split(r"\s+"),
 * capitalize, len) are reproduced here. Scoring lives in mc.c. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/tasks.h"
#include "core/internal.h"

/* ---------------- small string tools ---------------- */

typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static int sb_add(sbuf *b, const char *p, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->s, cap);
        if (!q) return -1;
        b->s = q;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

static int sb_str(sbuf *b, const char *p) { return sb_add(b, p, strlen(p)); }

/* The string built so far (an empty string if nothing was added); NULL when out of memory. */
static char *sb_take(sbuf *b) {
    if (!b->s && sb_add(b, "", 0)) return NULL;
    char *s = b->s;
    b->s = NULL;
    b->n = b->cap = 0;
    return s;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

static char *xstrndup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* malloc'd concatenation of the NULL-terminated list of strings. */
static char *cat(const char *first, ...) {
    sbuf b = {0};
    va_list ap;
    va_start(ap, first);
    int bad = 0;
    for (const char *p = first; p; p = va_arg(ap, const char *)) bad |= sb_str(&b, p);
    va_end(ap);
    if (bad) {
        free(b.s);
        return NULL;
    }
    return sb_take(&b);
}

/* Decodes one UTF-8 code point at s[i] (s NUL-terminated); returns its byte length (>= 1). Bytes
 * that do not start a well-formed sequence count as one code point each. */
static size_t u8_next(const char *s, size_t i, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s + i;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    int len = u[0] >= 0xF0 && u[0] < 0xF8 ? 4 : u[0] >= 0xE0 ? 3 : u[0] >= 0xC0 ? 2 : 1;
    if (len == 1) {
        *cp = u[0];
        return 1;
    }
    uint32_t c = u[0] & (0x7F >> len);
    for (int k = 1; k < len; k++) {
        if ((u[k] & 0xC0) != 0x80) {
            *cp = u[0];
            return 1;
        }
        c = (c << 6) | (u[k] & 0x3F);
    }
    *cp = c;
    return (size_t)len;
}

/* Python's str.isspace() (also what \s matches in a str regex). */
static int py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* Start of the code point that ends just before byte end. */
static size_t u8_prev(const char *s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80 && end - i < 4) i--;
    return i;
}

/* Python str.strip() / rstrip() on s[0..n): the kept range [*a, *b). */
static void py_strip_range(const char *s, size_t n, int left, size_t *a, size_t *b) {
    size_t i = 0, j = n;
    uint32_t cp;
    if (left)
        while (i < n) {
            size_t k = u8_next(s, i, &cp);
            if (!py_space(cp)) break;
            i += k;
        }
    while (j > i) {
        size_t p = u8_prev(s, j);
        if (p < i) break; /* invalid UTF-8: a stray continuation byte must not step back past i */
        u8_next(s, p, &cp);
        if (!py_space(cp)) break;
        j = p;
    }
    *a = i;
    *b = j;
}

size_t tp_py_rstrip_len(const char *s, size_t n) {
    size_t a, b;
    py_strip_range(s, n, 0, &a, &b);
    return b;
}

static char *py_strip(const char *s) {
    size_t a, b;
    py_strip_range(s, strlen(s), 1, &a, &b);
    return xstrndup(s + a, b - a);
}

/* Python's str.replace(from, to): non-overlapping, left to right. malloc'd. */
static char *py_replace(const char *s, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to);
    sbuf b = {0};
    int bad = 0;
    const char *p = s, *q;
    while ((q = strstr(p, from))) {
        bad |= sb_add(&b, p, (size_t)(q - p));
        bad |= sb_add(&b, to, nt);
        p = q + nf;
    }
    bad |= sb_str(&b, p);
    if (bad) {
        free(b.s);
        return NULL;
    }
    return sb_take(&b);
}

/* Replaces *s by py_replace(*s, from, to); returns 0, or -1 when out of memory (*s freed). */
static int replace_in(char **s, const char *from, const char *to) {
    char *r = *s ? py_replace(*s, from, to) : NULL;
    free(*s);
    *s = r;
    return r ? 0 : -1;
}

size_t tp_utf8_chars(const char *text) {
    size_t n = 0;
    uint32_t cp;
    for (size_t i = 0; text[i]; i += u8_next(text, i, &cp)) n++;
    return n;
}

size_t tp_py_count_words(const char *text) {
    size_t runs = 0;
    int in = 0;
    uint32_t cp;
    for (size_t i = 0; text[i];) {
        size_t k = u8_next(text, i, &cp);
        int sp = py_space(cp);
        if (sp && !in) runs++;
        in = sp;
        i += k;
    }
    return runs + 1;
}

/* Python's lower()/upper() for ASCII and the Latin-1 letters (U+00C0..U+00FE, without the
 * multiplication and division signs); other code points are left as they are. */
static uint32_t py_lower(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
    return c;
}

static uint32_t py_upper(uint32_t c) {
    if (c >= 'a' && c <= 'z') return c - 32;
    if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
    return c;
}

static int put_cp(sbuf *b, uint32_t c) {
    char o[4];
    size_t n;
    if (c < 0x80) {
        o[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        o[0] = (char)(0xC0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        o[0] = (char)(0xF0 | (c >> 18));
        o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[3] = (char)(0x80 | (c & 0x3F));
        n = 4;
    }
    return sb_add(b, o, n);
}

char *tp_py_capitalize(const char *text) {
    sbuf b = {0};
    int bad = 0;
    uint32_t cp;
    for (size_t i = 0; text[i];) {
        size_t k = u8_next(text, i, &cp);
        uint32_t c = i == 0 ? py_upper(cp) : py_lower(cp);
        if (c == cp) bad |= sb_add(&b, text + i, k); /* keep the bytes as they were */
        else bad |= put_cp(&b, c);
        i += k;
    }
    if (bad) {
        free(b.s);
        return NULL;
    }
    return sb_take(&b);
}

/* ---------------- HellaSwag ---------------- */

char *tp_hellaswag_preprocess(const char *text) {
    char *s = py_strip(text);
    if (!s || replace_in(&s, " [title]", ". ")) return NULL;
    /* re.sub("\\[.*?\\]", "", s): from each '[' to the first ']' on the same line */
    sbuf b = {0};
    int bad = 0;
    for (size_t i = 0; s[i];) {
        if (s[i] == '[') {
            size_t j = i + 1;
            while (s[j] && s[j] != ']' && s[j] != '\n') j++;
            if (s[j] == ']') {
                i = j + 1;
                continue;
            }
        }
        bad |= sb_add(&b, s + i, 1);
        i++;
    }
    free(s);
    s = bad ? NULL : sb_take(&b);
    if (bad) free(b.s);
    if (!s || replace_in(&s, "  ", " ")) return NULL;
    return s;
}

/* ctx = ctx_a + " " + ctx_b in llama.cpp's file, which keeps only ctx: ctx_b is guessed as the
 * text after the last ". ", "! " or "? " when it starts with a lower-case ASCII letter (the
 * unfinished sentence of ActivityNet items), else empty (most WikiHow items). The harness
 * builds activity_label + ": " + ctx_a + " " + ctx_b.capitalize(). eval_ref.py guesses alike. */
static void hellaswag_split(const char *ctx, size_t *a_len, const char **b) {
    const char *cut = NULL;
    for (const char *p = ctx; p[0] && p[1]; p++)
        if ((p[0] == '.' || p[0] == '!' || p[0] == '?') && p[1] == ' ') cut = p;
    if (cut && cut[2] >= 'a' && cut[2] <= 'z') {
        *a_len = (size_t)(cut + 1 - ctx);
        *b = cut + 2;
    } else {
        *a_len = strlen(ctx);
        *b = "";
    }
}

/* ---------------- WikiText ---------------- */

/* re.sub(open \s*([^close]*?)\s* close, open \1 close): from each opening character to the
 * first closing one after it (newlines included), the inside stripped of whitespace. */
static char *strip_inside(const char *s, char open, char close) {
    sbuf b = {0};
    int bad = 0;
    size_t i = 0;
    while (s[i]) {
        if (s[i] == open) {
            const char *q = strchr(s + i + 1, close);
            if (!q) break;
            size_t a, e, n = (size_t)(q - (s + i + 1));
            py_strip_range(s + i + 1, n, 1, &a, &e);
            bad |= sb_add(&b, &open, 1);
            bad |= sb_add(&b, s + i + 1 + a, e - a);
            bad |= sb_add(&b, &close, 1);
            i = (size_t)(q - s) + 1;
            continue;
        }
        size_t j = i;
        while (s[j] && s[j] != open) j++;
        bad |= sb_add(&b, s + i, j - i);
        i = j;
    }
    bad |= sb_str(&b, s + i);
    if (bad) {
        free(b.s);
        return NULL;
    }
    return sb_take(&b);
}

tp_status tp_wikitext_detokenize(const char *text, char **out) {
    *out = NULL;
    char *s = py_replace(text, "s '", "s'");
    if (!s) return tp_fail(TP_ERR_NOMEM, "out of memory");
    /* re.sub(r"/' [0-9]/", r"/'[0-9]/", s): the replacement is that literal text */
    {
        sbuf b = {0};
        int bad = 0;
        for (size_t i = 0; s[i];) {
            if (!strncmp(s + i, "/' ", 3) && s[i + 3] >= '0' && s[i + 3] <= '9' && s[i + 4] == '/') {
                bad |= sb_str(&b, "/'[0-9]/");
                i += 5;
            } else {
                bad |= sb_add(&b, s + i, 1);
                i++;
            }
        }
        free(s);
        s = bad ? NULL : sb_take(&b);
        if (bad) free(b.s);
        if (!s) return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    static const char *const r1[][2] = {{" @-@ ", "-"}, {" @,@ ", ","}, {" @.@ ", "."}, {" : ", ": "},
                                         {" ; ", "; "},  {" . ", ". "},  {" ! ", "! "},  {" ? ", "? "},
                                         {" , ", ", "}};
    for (size_t k = 0; k < sizeof r1 / sizeof r1[0]; k++)
        if (replace_in(&s, r1[k][0], r1[k][1])) return tp_fail(TP_ERR_NOMEM, "out of memory");
    static const char pairs[][2] = {{'(', ')'}, {'[', ']'}, {'{', '}'}, {'"', '"'}, {'\'', '\''}};
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        char *t = strip_inside(s, pairs[k][0], pairs[k][1]);
        free(s);
        s = t;
        if (!s) return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    static const char *const r2[][2] = {{"= = = =", "===="}, {"= = =", "==="}, {"= =", "=="},
                                         {" \xC2\xB0 ", "\xC2\xB0"}, {" \n", "\n"}, {"\n ", "\n"},
                                         {" N ", " 1 "},         {" 's", "'s"}};
    for (size_t k = 0; k < sizeof r2 / sizeof r2[0]; k++)
        if (replace_in(&s, r2[k][0], r2[k][1])) return tp_fail(TP_ERR_NOMEM, "out of memory");
    *out = s;
    return TP_OK;
}

/* Whether a raw line is an article title " = Title = " (the document-level dataset's rule). */
static int is_title_line(const char *line, size_t n) {
    char *l = xstrndup(line, n);
    if (!l || replace_in(&l, "= = =", "===") || replace_in(&l, "= =", "==")) {
        free(l);
        return -1;
    }
    size_t a, b;
    py_strip_range(l, strlen(l), 1, &a, &b);
    int r = b - a >= 3 && !strncmp(l + a, "= ", 2) && !strncmp(l + b - 2, " =", 2);
    free(l);
    return r;
}

/* Appends a copy of text[a..b) to the page list. */
static int push_page(char ***out, size_t *n, size_t *cap, const char *text, size_t a, size_t b) {
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        char **o = realloc(*out, c * sizeof *o);
        if (!o) return -1;
        *out = o;
        *cap = c;
    }
    if (!((*out)[*n] = xstrndup(text + a, b - a))) return -1;
    (*n)++;
    return 0;
}

tp_status tp_wikitext_pages(const char *text, size_t len, char ***pages, size_t *n_pages) {
    *pages = NULL;
    *n_pages = 0;
    char **out = NULL;
    size_t n = 0, cap = 0, cur = 0; /* cur: start of the first line of the page being collected */
    int bad = 0;
    for (size_t i = 0;;) { /* i: start of a line, as in text.split("\n") */
        const char *nl = memchr(text + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - text) : len;
        int t = is_title_line(text + i, e - i);
        if (t < 0) {
            bad = 1;
            break;
        }
        if (t && i > cur) { /* flush "\n".join(lines before this one) unless it is blank */
            size_t a, b;
            py_strip_range(text + cur, i - 1 - cur, 1, &a, &b);
            if (b > a && push_page(&out, &n, &cap, text, cur, i - 1)) {
                bad = 1;
                break;
            }
            cur = i;
        }
        if (!nl) break;
        i = e + 1;
    }
    if (!bad) bad = push_page(&out, &n, &cap, text, cur, len); /* the last page is always kept */
    if (bad) {
        for (size_t k = 0; k < n; k++) free(out[k]);
        free(out);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    *pages = out;
    *n_pages = n;
    return TP_OK;
}

/* ---------------- task assembly ---------------- */

static const char *const TASK_NAMES[] = {"arc_easy", "arc_challenge", "hellaswag", "piqa",
                                         "winogrande", "mmlu", "wikitext"};

const char *const *tp_task_names(size_t *n) {
    *n = sizeof TASK_NAMES / sizeof TASK_NAMES[0];
    return TASK_NAMES;
}

static void item_free(tp_task_item *it) {
    for (int k = 0; k < it->n; k++) {
        if (it->ctx) free(it->ctx[k]);
        if (it->cont) free(it->cont[k]);
    }
    free(it->ctx);
    free(it->cont);
    free(it->norm_len);
}

void tp_task_free(tp_task *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_items; i++) item_free(&t->items[i]);
    free(t->items);
    for (int g = 0; g < t->n_groups; g++) {
        free(t->groups[g]);
        if (t->group_cat) free(t->group_cat[g]);
    }
    free(t->groups);
    free(t->group_cat);
    free(t->name);
    free(t->source);
    free(t->format);
    free(t);
}

static tp_task *task_new(const char *name, const char *source, const char *format, tp_task_kind kind) {
    tp_task *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->name = xstrdup(name);
    t->source = xstrdup(source);
    t->format = xstrdup(format);
    t->kind = kind;
    if (!t->name || !t->source || !t->format) {
        tp_task_free(t);
        return NULL;
    }
    return t;
}

/* Appends an item with n requests (strings zeroed) and returns it, NULL when out of memory. */
static tp_task_item *add_item(tp_task *t, size_t *cap, int n) {
    if (t->n_items == *cap) {
        size_t c = *cap ? 2 * *cap : 256;
        tp_task_item *it = realloc(t->items, c * sizeof *it);
        if (!it) return NULL;
        t->items = it;
        *cap = c;
    }
    tp_task_item *it = &t->items[t->n_items];
    memset(it, 0, sizeof *it);
    it->ctx = calloc((size_t)n, sizeof(char *));
    it->cont = calloc((size_t)n, sizeof(char *));
    it->norm_len = calloc((size_t)n, sizeof(double));
    if (!it->ctx || !it->cont || !it->norm_len) {
        item_free(it);
        return NULL;
    }
    it->n = n;
    it->gold = -1;
    t->n_items++;
    return it;
}

static tp_status oom(tp_task *t) {
    tp_task_free(t);
    return tp_fail(TP_ERR_NOMEM, "out of memory building the task");
}

/* Reads a data file; a missing file is a clear error naming the path expected and the task. */
static tp_status read_data(const char *task, const char *path, char **text, size_t *len) {
    tp_status s = tp_read_file(path, text, len);
    if (s) return tp_fail_ctx(s, "task %s: data file missing or unreadable (expected %s; set --data-dir or TAPER_DATA): ",
                              task, path);
    return TP_OK;
}

/* Iterates over the lines of text: *line gets a NUL-terminated copy (malloc'd) of the next
 * non-empty line; returns 0 at the end, -1 when out of memory. *lineno counts from 1. */
static int next_line(const char *text, size_t len, size_t *pos, char **line, size_t *lineno) {
    while (*pos < len) {
        const char *nl = memchr(text + *pos, '\n', len - *pos);
        size_t e = nl ? (size_t)(nl - text) : len;
        size_t s = *pos;
        *pos = e + 1;
        (*lineno)++;
        size_t ee = e;
        if (ee > s && text[ee - 1] == '\r') ee--;
        int blank = 1;
        for (size_t k = s; k < ee; k++)
            if (text[k] != ' ' && text[k] != '\t') blank = 0;
        if (blank) continue;
        *line = xstrndup(text + s, ee - s);
        return *line ? 1 : -1;
    }
    return 0;
}

static const char *json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integer field in [lo, hi]; -1 when absent or not an integer in range. */
static int json_int(const cJSON *o, const char *key, int lo, int hi) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    /* range first: converting a double outside int's range is undefined */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) return -1;
    if (v->valuedouble != floor(v->valuedouble)) return -1;
    return (int)v->valuedouble;
}

/* A strings array field: its size, or -1 when it is absent or holds a non-string. */
static int json_strings(const cJSON *o, const char *key, const cJSON **arr) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    *arr = a;
    if (!cJSON_IsArray(a)) return -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) if (!cJSON_IsString(e)) return -1;
    return cJSON_GetArraySize(a);
}

/* Fills request k of it: (ctx, delim + choice), norm_len = len(choice). Takes ctx (malloc'd). */
static int set_req(tp_task_item *it, int k, char *ctx, const char *delim, const char *choice) {
    it->ctx[k] = ctx;
    it->cont[k] = cat(delim, choice, (char *)NULL);
    it->norm_len[k] = (double)tp_utf8_chars(choice);
    return ctx && it->cont[k] ? 0 : -1;
}

/* ARC: MosaicML {"query": "Question: <stem>", "choices": [...], "gold": i}. The harness:
 * "Question: {{question}}\nAnswer:" and " " + choice. */
static tp_status load_arc(const char *name, const char *dir, size_t limit, tp_task **out) {
    char *path = cat(dir, "/", name, "/", name, ".jsonl", (char *)NULL), *text = NULL;
    size_t len = 0;
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = read_data(name, path, &text, &len);
    if (s) {
        free(path);
        return s;
    }
    tp_task *t = task_new(name, path, "\"Question: {question}\\nAnswer:\" + \" {choice}\"", TP_TASK_MC);
    size_t cap = 0, pos = 0, lineno = 0;
    char *line = NULL;
    int r;
    if (!t) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    t->has_acc_norm = 1;
    while ((!limit || t->n_items < limit) && (r = next_line(text, len, &pos, &line, &lineno)) != 0) {
        if (r < 0) {
            s = oom(t);
            t = NULL;
            goto done;
        }
        cJSON *j = cJSON_Parse(line);
        if (!j && tp_json_valid(line, strlen(line))) {
            s = oom(t);
            t = NULL;
            goto done;
        }
        const cJSON *ch;
        const char *q = j ? json_str(j, "query") : NULL;
        int nc = j ? json_strings(j, "choices", &ch) : -1;
        int gold = j && nc > 0 ? json_int(j, "gold", 0, nc - 1) : -1;
        if (!q || nc < 2 || gold < 0 || strncmp(q, "Question: ", 10)) {
            s = tp_fail(TP_ERR_FORMAT,
                        "%s line %zu: expected {\"query\": \"Question: ...\", \"choices\": [>= 2 strings], "
                        "\"gold\": index}",
                        path, lineno);
            cJSON_Delete(j);
            tp_task_free(t);
            t = NULL;
            goto done;
        }
        tp_task_item *it = add_item(t, &cap, nc);
        int bad = !it;
        for (int k = 0; it && k < nc; k++)
            bad |= set_req(it, k, cat(q, "\nAnswer:", (char *)NULL), " ",
                           cJSON_GetArrayItem(ch, k)->valuestring);
        if (it) it->gold = gold;
        cJSON_Delete(j);
        free(line);
        line = NULL;
        if (bad) {
            s = oom(t);
            t = NULL;
            goto done;
        }
    }
done:
    free(line);
    free(text);
    free(path);
    *out = t;
    return s;
}

/* HellaSwag from llama.cpp's 6-line blocks: "label: ctx", gold, 4 endings. */
static tp_status load_hellaswag(const char *dir, size_t limit, tp_task **out) {
    char *path = cat(dir, "/hellaswag/hellaswag_val_full.txt", (char *)NULL), *text = NULL;
    size_t len = 0;
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = read_data("hellaswag", path, &text, &len);
    if (s) {
        free(path);
        return s;
    }
    tp_task *t = task_new("hellaswag", path,
                          "preprocess(activity_label + \": \" + ctx_a + \" \" + ctx_b.capitalize()) + \" \" + "
                          "preprocess(ending)  (ctx_a/ctx_b guessed from the joined ctx, see docs/eval.md)",
                          TP_TASK_MC);
    size_t cap = 0, pos = 0, lineno = 0;
    char *lines[6] = {0};
    if (!t) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    t->has_acc_norm = 1;
    while (pos < len && (!limit || t->n_items < limit)) {
        size_t first = lineno + 1;
        for (int k = 0; k < 6; k++) { /* blank lines are not allowed inside a block */
            if (pos >= len) {
                s = tp_fail(TP_ERR_FORMAT, "%s: item starting at line %zu has %d of its 6 lines", path, first, k);
                goto bad;
            }
            const char *nl = memchr(text + pos, '\n', len - pos);
            size_t e = nl ? (size_t)(nl - text) : len;
            lines[k] = xstrndup(text + pos, e - pos);
            if (!lines[k]) goto nomem;
            pos = e + 1;
            lineno++;
        }
        char *colon = strstr(lines[0], ": ");
        char *end;
        long gold = strtol(lines[1], &end, 10);
        if (!colon || end == lines[1] || *end || gold < 0 || gold > 3) {
            s = tp_fail(TP_ERR_FORMAT,
                        "%s line %zu: expected \"activity label: context\", then the gold index 0-3, then 4 endings",
                        path, first);
            goto bad;
        }
        *colon = 0;
        const char *ctx = colon + 2, *ctx_b;
        size_t a_len;
        hellaswag_split(ctx, &a_len, &ctx_b);
        char *ctx_a = xstrndup(ctx, a_len), *cap_b = tp_py_capitalize(ctx_b);
        char *raw = ctx_a && cap_b ? cat(lines[0], ": ", ctx_a, " ", cap_b, (char *)NULL) : NULL;
        char *query = raw ? tp_hellaswag_preprocess(raw) : NULL;
        free(ctx_a);
        free(cap_b);
        free(raw);
        tp_task_item *it = query ? add_item(t, &cap, 4) : NULL;
        int bad = !it;
        for (int k = 0; it && k < 4; k++) {
            char *e = tp_hellaswag_preprocess(lines[2 + k]);
            bad |= !e || set_req(it, k, xstrdup(query), " ", e);
            free(e);
        }
        if (it) it->gold = (int)gold;
        free(query);
        for (int k = 0; k < 6; k++) {
            free(lines[k]);
            lines[k] = NULL;
        }
        if (bad) goto nomem;
    }
    goto done;
nomem:
    s = tp_fail(TP_ERR_NOMEM, "out of memory");
bad:
    tp_task_free(t);
    t = NULL;
done:
    for (int k = 0; k < 6; k++) free(lines[k]);
    free(text);
    free(path);
    *out = t;
    return s;
}

/* PIQA: valid.jsonl {goal, sol1, sol2} + valid-labels.lst. "Question: {goal}\nAnswer:" + " sol". */
static tp_status load_piqa(const char *dir, size_t limit, tp_task **out) {
    char *path = cat(dir, "/piqa/valid.jsonl", (char *)NULL), *lpath = cat(dir, "/piqa/valid-labels.lst", (char *)NULL);
    char *text = NULL, *labels = NULL, *line = NULL;
    size_t len = 0, llen = 0, cap = 0, pos = 0, lineno = 0;
    tp_task *t = NULL;
    tp_status s;
    if (!path || !lpath) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((s = read_data("piqa", path, &text, &len)) || (s = read_data("piqa", lpath, &labels, &llen))) goto done;
    char *src = cat(path, " + ", lpath, (char *)NULL);
    t = src ? task_new("piqa", src, "\"Question: {goal}\\nAnswer:\" + \" {sol}\"", TP_TASK_MC) : NULL;
    free(src);
    if (!t) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    t->has_acc_norm = 1;
    const char *lp = labels;
    int r;
    while ((!limit || t->n_items < limit) && (r = next_line(text, len, &pos, &line, &lineno)) != 0) {
        if (r < 0) goto nomem;
        while (*lp == '\n' || *lp == '\r' || *lp == ' ') lp++;
        if (!(*lp == '0' || *lp == '1') || !(lp[1] == '\n' || lp[1] == '\r' || lp[1] == ' ' || lp[1] == 0)) {
            s = tp_fail(TP_ERR_FORMAT, "%s: no 0/1 label for item %zu of %s", lpath, t->n_items + 1, path);
            goto bad;
        }
        int gold = *lp++ - '0';
        cJSON *j = cJSON_Parse(line);
        if (!j && tp_json_valid(line, strlen(line))) goto nomem;
        const char *g = j ? json_str(j, "goal") : NULL, *s1 = j ? json_str(j, "sol1") : NULL,
                   *s2 = j ? json_str(j, "sol2") : NULL;
        if (!g || !s1 || !s2) {
            cJSON_Delete(j);
            s = tp_fail(TP_ERR_FORMAT, "%s line %zu: expected {\"goal\", \"sol1\", \"sol2\"} strings", path, lineno);
            goto bad;
        }
        tp_task_item *it = add_item(t, &cap, 2);
        int bad = !it;
        if (it) {
            bad |= set_req(it, 0, cat("Question: ", g, "\nAnswer:", (char *)NULL), " ", s1);
            bad |= set_req(it, 1, cat("Question: ", g, "\nAnswer:", (char *)NULL), " ", s2);
            it->gold = gold;
        }
        cJSON_Delete(j);
        free(line);
        line = NULL;
        if (bad) goto nomem;
    }
    while (*lp == '\n' || *lp == '\r' || *lp == ' ') lp++;
    if (!limit && *lp) {
        s = tp_fail(TP_ERR_FORMAT, "%s has more labels than %s has items (%zu)", lpath, path, t->n_items);
        goto bad;
    }
    goto done;
nomem:
    s = tp_fail(TP_ERR_NOMEM, "out of memory");
bad:
    tp_task_free(t);
    t = NULL;
done:
    free(line);
    free(text);
    free(labels);
    free(path);
    free(lpath);
    *out = t;
    return s;
}

/* WinoGrande: MosaicML {"context_options": [2], "continuation", "gold"}: partial scoring, the
 * request for option i is (context_options[i], " " + continuation). */
static tp_status load_winogrande(const char *dir, size_t limit, tp_task **out) {
    char *path = cat(dir, "/winogrande/winogrande.jsonl", (char *)NULL), *text = NULL, *line = NULL;
    size_t len = 0, cap = 0, pos = 0, lineno = 0;
    tp_task *t = NULL;
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = read_data("winogrande", path, &text, &len);
    if (s) goto done;
    t = task_new("winogrande", path,
                 "partial scoring: sentence[:blank] + option, continuation \" \" + sentence[blank+1:].strip()",
                 TP_TASK_MC);
    if (!t) goto nomem;
    int r;
    while ((!limit || t->n_items < limit) && (r = next_line(text, len, &pos, &line, &lineno)) != 0) {
        if (r < 0) goto nomem;
        cJSON *j = cJSON_Parse(line);
        if (!j && tp_json_valid(line, strlen(line))) goto nomem;
        const cJSON *co;
        int n = j ? json_strings(j, "context_options", &co) : -1;
        const char *c = j ? json_str(j, "continuation") : NULL;
        int gold = n > 0 ? json_int(j, "gold", 0, n - 1) : -1;
        if (n < 2 || !c || gold < 0) {
            cJSON_Delete(j);
            s = tp_fail(TP_ERR_FORMAT,
                        "%s line %zu: expected {\"context_options\": [>= 2 strings], \"continuation\": string, "
                        "\"gold\": index}",
                        path, lineno);
            goto bad;
        }
        tp_task_item *it = add_item(t, &cap, n);
        int bad = !it;
        for (int k = 0; it && k < n; k++) {
            const char *ck = cJSON_GetArrayItem(co, k)->valuestring;
            it->ctx[k] = xstrdup(ck);
            it->cont[k] = cat(" ", c, (char *)NULL);
            it->norm_len[k] = (double)tp_utf8_chars(ck); /* the harness's choices are the contexts here */
            bad |= !it->ctx[k] || !it->cont[k];
        }
        if (it) it->gold = gold;
        cJSON_Delete(j);
        free(line);
        line = NULL;
        if (bad) goto nomem;
    }
    goto done;
nomem:
    s = tp_fail(TP_ERR_NOMEM, "out of memory");
bad:
    tp_task_free(t);
    t = NULL;
done:
    free(line);
    free(text);
    free(path);
    *out = t;
    return s;
}

/* lm_eval/tasks/mmlu/_generate_configs.py: the category of each subject. */
static const char *mmlu_category(const char *subject) {
    static const char *const stem[] = {
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning"};
    static const char *const social[] = {
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy"};
    static const char *const hum[] = {
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions"};
    for (size_t k = 0; k < sizeof stem / sizeof *stem; k++)
        if (!strcmp(subject, stem[k])) return "stem";
    for (size_t k = 0; k < sizeof social / sizeof *social; k++)
        if (!strcmp(subject, social[k])) return "social_sciences";
    for (size_t k = 0; k < sizeof hum / sizeof *hum; k++)
        if (!strcmp(subject, hum[k])) return "humanities";
    return "other";
}

/* One RFC-4180 record from text at *pos into fields (malloc'd strings); returns the field count,
 * 0 at the end of the text, -1 on a malformed quote, -2 when out of memory. */
static int csv_record(const char *text, size_t len, size_t *pos, char **fields, int max_fields) {
    size_t i = *pos;
    if (i >= len) return 0;
    int nf = 0;
    for (;;) {
        sbuf b = {0};
        int bad = 0;
        if (i < len && text[i] == '"') {
            i++;
            for (;;) {
                if (i >= len) {
                    free(b.s);
                    return -1;
                }
                if (text[i] == '"') {
                    if (i + 1 < len && text[i + 1] == '"') {
                        bad |= sb_add(&b, "\"", 1);
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                bad |= sb_add(&b, text + i, 1);
                i++;
            }
            if (i < len && text[i] != ',' && text[i] != '\n' && text[i] != '\r') {
                free(b.s);
                return -1;
            }
        } else {
            size_t j = i;
            while (j < len && text[j] != ',' && text[j] != '\n' && text[j] != '\r') j++;
            bad |= sb_add(&b, text + i, j - i);
            i = j;
        }
        char *f = bad ? NULL : sb_take(&b);
        if (!f) {
            free(b.s);
            return -2;
        }
        if (nf < max_fields) fields[nf] = f;
        else free(f);
        nf++;
        if (i < len && text[i] == ',') {
            i++;
            continue;
        }
        if (i < len && text[i] == '\r') i++;
        if (i < len && text[i] == '\n') i++;
        break;
    }
    *pos = i;
    return nf;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static const char MMLU_FORMAT[] =
    "\"The following are multiple choice questions (with answers) about {subject}.\\n\\n{question.strip()}\\n"
    "A. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:\" + \" A\"/\" B\"/\" C\"/\" D\"";

/* MMLU: mmlu/test/<subject>_test.csv (header question,choice0..3,answer), subjects sorted. */
static tp_status load_mmlu(const char *dir, size_t limit, tp_task **out) {
    char *tdir = cat(dir, "/mmlu/test", (char *)NULL);
    if (!tdir) return tp_fail(TP_ERR_NOMEM, "out of memory");
    DIR *d = opendir(tdir);
    if (!d) {
        tp_status s = tp_fail(TP_ERR_IO, "task mmlu: cannot open %s (expected the 57 <subject>_test.csv files there; "
                                         "set --data-dir or TAPER_DATA): %s",
                              tdir, strerror(errno));
        free(tdir);
        return s;
    }
    char **subj = NULL;
    size_t ns = 0, cs = 0;
    tp_status s = TP_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n <= 9 || strcmp(e->d_name + n - 9, "_test.csv")) continue;
        if (ns == cs) {
            cs = cs ? 2 * cs : 64;
            char **q = realloc(subj, cs * sizeof *q);
            if (!q) break;
            subj = q;
        }
        if (!(subj[ns] = xstrndup(e->d_name, n - 9))) break;
        ns++;
    }
    int ended = e == NULL;
    closedir(d);
    tp_task *t = NULL;
    char *text = NULL, *path = NULL, *f[6] = {0};
    if (!ended) goto nomem;
    if (ns == 0) {
        s = tp_fail(TP_ERR_IO, "task mmlu: no <subject>_test.csv files in %s", tdir);
        goto done;
    }
    qsort(subj, ns, sizeof *subj, cmp_str);
    t = task_new("mmlu", tdir, MMLU_FORMAT, TP_TASK_MC);
    if (!t || !(t->groups = calloc(ns, sizeof(char *))) || !(t->group_cat = calloc(ns, sizeof(char *)))) goto nomem;
    t->n_groups = (int)ns;
    size_t cap = 0;
    for (size_t g = 0; g < ns; g++) {
        t->groups[g] = xstrdup(subj[g]);
        t->group_cat[g] = xstrdup(mmlu_category(subj[g]));
        char *spaced = py_replace(subj[g], "_", " ");
        char *head = spaced ? cat("The following are multiple choice questions (with answers) about ", spaced,
                                  ".\n\n", (char *)NULL)
                            : NULL;
        free(spaced);
        path = cat(tdir, "/", subj[g], "_test.csv", (char *)NULL);
        if (!t->groups[g] || !t->group_cat[g] || !head || !path) {
            free(head);
            goto nomem;
        }
        size_t len = 0, pos = 0, row = 0, taken = 0;
        if ((s = read_data("mmlu", path, &text, &len))) {
            free(head);
            goto bad;
        }
        int nf;
        while ((nf = csv_record(text, len, &pos, f, 6)) != 0) {
            row++;
            if (nf == -2) {
                free(head);
                goto nomem;
            }
            if (nf != 6) {
                free(head);
                s = tp_fail(TP_ERR_FORMAT, "%s row %zu: expected 6 CSV fields (question,choice0..3,answer), got %d",
                            path, row, nf);
                goto bad;
            }
            if (row == 1) {
                int hdr = !strcmp(f[0], "question") && !strcmp(f[5], "answer");
                for (int k = 0; k < 6; k++) {
                    free(f[k]);
                    f[k] = NULL;
                }
                if (!hdr) {
                    free(head);
                    s = tp_fail(TP_ERR_FORMAT, "%s: expected the header row question,choice0,...,answer", path);
                    goto bad;
                }
                continue;
            }
            if (!(!limit || taken < limit)) {
                for (int k = 0; k < 6; k++) {
                    free(f[k]);
                    f[k] = NULL;
                }
                break;
            }
            if (!(f[5][0] >= '0' && f[5][0] <= '3' && !f[5][1])) {
                free(head);
                s = tp_fail(TP_ERR_FORMAT, "%s row %zu: answer '%s' is not an index 0-3", path, row, f[5]);
                goto bad;
            }
            char *q = py_strip(f[0]);
            char *ctx = q ? cat(head, q, "\nA. ", f[1], "\nB. ", f[2], "\nC. ", f[3], "\nD. ", f[4], "\nAnswer:",
                                (char *)NULL)
                          : NULL;
            free(q);
            tp_task_item *it = ctx ? add_item(t, &cap, 4) : NULL;
            int bad = !it;
            static const char *const letters[] = {"A", "B", "C", "D"};
            for (int k = 0; it && k < 4; k++) bad |= set_req(it, k, xstrdup(ctx), " ", letters[k]);
            free(ctx);
            if (it) {
                it->gold = f[5][0] - '0';
                it->group = (int)g;
            }
            for (int k = 0; k < 6; k++) {
                free(f[k]);
                f[k] = NULL;
            }
            taken++;
            if (bad) {
                free(head);
                goto nomem;
            }
        }
        free(head);
        free(text);
        text = NULL;
        free(path);
        path = NULL;
    }
    goto done;
nomem:
    s = tp_fail(TP_ERR_NOMEM, "out of memory");
bad:
    tp_task_free(t);
    t = NULL;
done:
    for (int k = 0; k < 6; k++) free(f[k]);
    for (size_t g = 0; g < ns; g++) free(subj[g]);
    free(subj);
    free(text);
    free(path);
    free(tdir);
    *out = t;
    return s;
}

/* Adds a ROLLING item for document page (raw): scored text = detok ? detokenized : page. */
static tp_status add_doc(tp_task *t, size_t *cap, const char *page, int detok) {
    char *text = NULL;
    if (detok) {
        tp_status s = tp_wikitext_detokenize(page, &text);
        if (s) return s;
    } else if (!(text = xstrdup(page))) {
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    tp_task_item *it = add_item(t, cap, 1);
    if (!it) {
        free(text);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    it->cont[0] = text;
    it->words = tp_py_count_words(page);
    it->bytes = strlen(page);
    it->norm_len[0] = (double)it->bytes;
    return TP_OK;
}

/* WikiText-2 raw test, as the harness's wikitext task: document-level pages, detokenized. */
static tp_status load_wikitext(const char *dir, size_t limit, tp_task **out) {
    char *path = cat(dir, "/wikitext2/wiki.test.raw", (char *)NULL), *text = NULL, **pages = NULL;
    size_t len = 0, np = 0, cap = 0;
    tp_task *t = NULL;
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = read_data("wikitext", path, &text, &len);
    if (s || (s = tp_wikitext_pages(text, len, &pages, &np))) goto done;
    t = task_new("wikitext", path,
                 "rolling log-likelihood of wikitext_detokenizer(page) for each article of wiki.test.raw "
                 "(EleutherAI/wikitext_document_level split); words and bytes of the raw page",
                 TP_TASK_ROLLING);
    if (!t) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < np && (!limit || i < limit); i++)
        if ((s = add_doc(t, &cap, pages[i], 1))) {
            tp_task_free(t);
            t = NULL;
            break;
        }
done:
    for (size_t i = 0; i < np; i++) free(pages[i]);
    free(pages);
    free(text);
    free(path);
    *out = t;
    return s;
}

tp_status tp_task_load(const char *name, const char *data_dir, size_t limit, tp_task **out) {
    *out = NULL;
    if (!data_dir || !*data_dir) data_dir = ".";
    if (!strcmp(name, "arc_easy") || !strcmp(name, "arc_challenge")) return load_arc(name, data_dir, limit, out);
    if (!strcmp(name, "hellaswag")) return load_hellaswag(data_dir, limit, out);
    if (!strcmp(name, "piqa")) return load_piqa(data_dir, limit, out);
    if (!strcmp(name, "winogrande")) return load_winogrande(data_dir, limit, out);
    if (!strcmp(name, "mmlu")) return load_mmlu(data_dir, limit, out);
    if (!strcmp(name, "wikitext")) return load_wikitext(data_dir, limit, out);
    return tp_fail(TP_ERR_ARG, "unknown task '%s' (known: arc_easy, arc_challenge, hellaswag, piqa, winogrande, "
                               "mmlu, wikitext; or --task-file FILE)",
                   name);
}

/* ---------------- generic JSONL ---------------- */

static const char *first_str(const cJSON *j, const char *a, const char *b) {
    const char *s = json_str(j, a);
    return s ? s : b ? json_str(j, b) : NULL;
}

static const char GENERIC_HELP[] =
    "expected one of {\"context\", \"choices\": [...], \"gold\"}, {\"contexts\": [...], \"continuation\", "
    "\"gold\"}, {\"context\", \"continuation\"} or {\"text\"} (optional \"target_delimiter\", default \" \"; "
    "see docs/eval.md)";

tp_status tp_task_load_file(const char *path, size_t limit, tp_task **out) {
    *out = NULL;
    char *text = NULL, *line = NULL;
    size_t len = 0, pos = 0, lineno = 0, cap = 0;
    tp_status s = tp_read_file(path, &text, &len);
    if (s) return tp_fail_ctx(s, "task file: ");
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *name = xstrdup(base);
    if (name) {
        char *dot = strrchr(name, '.');
        if (dot && dot != name) *dot = 0;
    }
    tp_task *t = name ? task_new(name, path, "generic JSONL (docs/eval.md)", TP_TASK_MC) : NULL;
    free(name);
    int kind = -1, multi_ctx = 0, r;
    if (!t) goto nomem;
    while ((!limit || t->n_items < limit) && (r = next_line(text, len, &pos, &line, &lineno)) != 0) {
        if (r < 0) goto nomem;
        cJSON *j = cJSON_Parse(line);
        if (!j && tp_json_valid(line, strlen(line))) goto nomem;
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(j);
            s = tp_fail(TP_ERR_FORMAT, "%s line %zu: not a JSON object; %s", path, lineno, GENERIC_HELP);
            goto bad;
        }
        const cJSON *dv = cJSON_GetObjectItemCaseSensitive(j, "target_delimiter");
        if (dv && !cJSON_IsString(dv)) {
            cJSON_Delete(j);
            s = tp_fail(TP_ERR_FORMAT, "%s line %zu: target_delimiter must be a string", path, lineno);
            goto bad;
        }
        const char *delim = dv ? dv->valuestring : " ";
        const char *ctx = first_str(j, "context", "query"), *cont = json_str(j, "continuation"),
                   *doc = json_str(j, "text");
        const cJSON *choices, *ctxs;
        int nch = json_strings(j, "choices", &choices), nctx = json_strings(j, "contexts", &ctxs);
        if (nctx < 0) nctx = json_strings(j, "context_options", &ctxs);
        int k_item, n_req;
        /* the two multiple-choice forms exclude each other's fields (an item with "contexts" and
         * "choices" is ambiguous, refused) */
        if (ctx && nch >= 1 && !cont && nctx < 0) k_item = TP_TASK_MC, n_req = nch;
        else if (nctx >= 1 && cont && !ctx && nch < 0) k_item = TP_TASK_MC, n_req = nctx;
        else if (ctx && cont && nch < 0 && nctx < 0) k_item = TP_TASK_LL, n_req = 1;
        else if (doc && !ctx && !cont) k_item = TP_TASK_ROLLING, n_req = 1;
        else {
            cJSON_Delete(j);
            s = tp_fail(TP_ERR_FORMAT, "%s line %zu: %s", path, lineno, GENERIC_HELP);
            goto bad;
        }
        if (kind >= 0 && kind != k_item) {
            cJSON_Delete(j);
            s = tp_fail(TP_ERR_FORMAT, "%s line %zu: items of different kinds in one file (multiple choice, "
                                       "continuation, document)",
                        path, lineno);
            goto bad;
        }
        kind = k_item;
        int gold = -1;
        if (k_item == TP_TASK_MC) {
            gold = json_int(j, "gold", 0, n_req - 1);
            if (gold < 0) {
                cJSON_Delete(j);
                s = tp_fail(TP_ERR_FORMAT, "%s line %zu: \"gold\" must be an index in 0..%d", path, lineno, n_req - 1);
                goto bad;
            }
        }
        if (k_item == TP_TASK_ROLLING) {
            s = add_doc(t, &cap, doc, 0); /* doc lives in j: used before j is freed */
            cJSON_Delete(j);
            free(line);
            line = NULL;
            if (s) goto bad;
            continue;
        }
        tp_task_item *it = add_item(t, &cap, n_req);
        int bad = !it;
        for (int k = 0; it && k < n_req; k++) {
            if (k_item == TP_TASK_MC && nch >= 1) {
                bad |= set_req(it, k, xstrdup(ctx), delim, cJSON_GetArrayItem(choices, k)->valuestring);
            } else if (k_item == TP_TASK_MC) {
                const char *ck = cJSON_GetArrayItem(ctxs, k)->valuestring;
                bad |= set_req(it, k, xstrdup(ck), delim, cont);
                it->norm_len[k] = (double)tp_utf8_chars(ck);
                multi_ctx = 1;
            } else {
                bad |= set_req(it, k, xstrdup(ctx), delim, cont);
            }
        }
        if (it) it->gold = gold;
        cJSON_Delete(j);
        free(line);
        line = NULL;
        if (bad) goto nomem;
    }
    if (t->n_items == 0) {
        s = tp_fail(TP_ERR_FORMAT, "%s: no items", path);
        goto bad;
    }
    t->kind = (tp_task_kind)kind;
    t->has_acc_norm = kind == TP_TASK_MC && !multi_ctx;
    goto done;
nomem:
    s = tp_fail(TP_ERR_NOMEM, "out of memory");
bad:
    tp_task_free(t);
    t = NULL;
done:
    free(line);
    free(text);
    *out = t;
    return s;
}
