/* Normalizers as HF `tokenizers` runs them, in order, on each piece of text between added
 * tokens: Unicode NFC / NFD / NFKC / NFKD (through utf8proc), Prepend (only to a non-empty
 * piece), Replace of a literal string, Lowercase (Unicode simple lowercase mapping, as Rust's
 * char::to_lowercase for all but a handful of characters with multi-character lowercase forms)
 * and Strip. Regex Replace, Precompiled (SentencePiece charsmaps), BertNormalizer and NMT are
 * refused at load time (tok_json.c). */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

const char *tp_norm_name(tp_norm_kind k) {
    switch (k) {
    case TP_NORM_NFC: return "NFC";
    case TP_NORM_NFD: return "NFD";
    case TP_NORM_NFKC: return "NFKC";
    case TP_NORM_NFKD: return "NFKD";
    case TP_NORM_PREPEND: return "Prepend";
    case TP_NORM_REPLACE: return "Replace";
    case TP_NORM_LOWERCASE: return "Lowercase";
    case TP_NORM_STRIP: return "Strip";
    }
    return "?";
}

void tp_norm_step_clear(tp_norm_step *st) {
    free(st->a);
    free(st->b);
    memset(st, 0, sizeof *st);
}

typedef struct { char *p; size_t n, cap; } sbuf;

static int sb_put(sbuf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static tp_status unicode_form(tp_norm_kind k, const char *s, size_t n, sbuf *o) {
    utf8proc_option_t opt = UTF8PROC_STABLE;
    switch (k) {
    case TP_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case TP_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case TP_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *r = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &r, opt);
    if (len < 0) {
        free(r);
        return tp_fail(len == UTF8PROC_ERROR_NOMEM ? TP_ERR_NOMEM : TP_ERR_ARG, "normalizer %s: %s", tp_norm_name(k),
                       utf8proc_errmsg(len));
    }
    free(o->p);
    o->p = (char *)r;
    o->n = (size_t)len;
    o->cap = (size_t)len + 1;
    return TP_OK;
}

static int is_ws(uint32_t cp) { return (tp_uclass(cp) & TP_UC_WS) != 0; }

static tp_status apply(const tp_norm_step *st, sbuf *cur, sbuf *tmp) {
    const uint8_t *s = (const uint8_t *)cur->p;
    size_t n = cur->n;
    tmp->n = 0;
    switch (st->kind) {
    case TP_NORM_NFC: case TP_NORM_NFD: case TP_NORM_NFKC: case TP_NORM_NFKD:
        return n ? unicode_form(st->kind, cur->p, n, cur) : TP_OK;
    case TP_NORM_PREPEND:
        if (!n) return TP_OK;
        if (sb_put(tmp, st->a, st->la) || sb_put(tmp, s, n)) goto oom;
        break;
    case TP_NORM_REPLACE:
        for (size_t i = 0; i < n;) {
            if (st->la && i + st->la <= n && memcmp(s + i, st->a, st->la) == 0) {
                if (sb_put(tmp, st->b, st->lb)) goto oom;
                i += st->la;
            } else {
                if (sb_put(tmp, s + i, 1)) goto oom;
                i++;
            }
        }
        break;
    case TP_NORM_LOWERCASE:
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t bad, l = tp_utf8_decode(s + i, n - i, &cp, &bad);
            if (!l) { l = 1; cp = 0xFFFD; }
            char u[4];
            size_t k = tp_utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), u);
            if (sb_put(tmp, u, k)) goto oom;
            i += l;
        }
        break;
    case TP_NORM_STRIP: {
        size_t a = 0, b = n;
        while (st->left && a < b) {
            uint32_t cp;
            size_t bad, l = tp_utf8_decode(s + a, b - a, &cp, &bad);
            if (!l || !is_ws(cp)) break;
            a += l;
        }
        while (st->right && b > a) {
            size_t i = b - 1;
            while (i > a && (s[i] & 0xC0) == 0x80) i--;
            uint32_t cp;
            size_t bad;
            if (!tp_utf8_decode(s + i, b - i, &cp, &bad) || !is_ws(cp)) break;
            b = i;
        }
        if (sb_put(tmp, s + a, b - a)) goto oom;
        break;
    }
    }
    {
        sbuf x = *cur;
        *cur = *tmp;
        *tmp = x;
    }
    return TP_OK;
oom:
    return tp_fail(TP_ERR_NOMEM, "out of memory in the normalizer");
}

tp_status tp_normalize(const tp_tokenizer *t, const uint8_t *s, size_t n, char **out, size_t *out_len) {
    sbuf cur = {0}, tmp = {0};
    tp_status rc = TP_OK;
    if (sb_put(&cur, s, n)) rc = tp_fail(TP_ERR_NOMEM, "out of memory in the normalizer");
    for (int i = 0; i < t->n_norm && !rc; i++) rc = apply(&t->norm[i], &cur, &tmp);
    free(tmp.p);
    if (rc) { free(cur.p); return rc; }
    *out = cur.p;
    *out_len = cur.n;
    return TP_OK;
}
