/* Pre-tokenizer steps as HF `tokenizers` runs them: Split (regex or literal, five delimiter
 * behaviours, invert), Digits, Punctuation, Metaspace (U+2581 for spaces, prepend scheme, split)
 * and ByteLevel (optional prefix space, GPT-2 regex split; when steps follow it, they see the
 * byte-level characters, as Falcon's pipeline needs); the steps apply in order, each to every
 * piece the previous step produced, and the model (BPE or SPM) runs on the last pieces.
 *
 * The GPT-2, Llama-3 and Qwen2 regexes are recognised by their exact text and run by
 * hand-written matchers over character tables taken from `tokenizers` itself: HF runs them on
 * Oniguruma, whose Unicode tables are newer than this system's PCRE2 (and whose \s lacks
 * U+180E), so running them on PCRE2 would differ on a few thousand recent code points. Any
 * other regex runs on PCRE2 with \s rewritten to Oniguruma's set. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

const char tp_re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char tp_re_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char tp_re_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Oniguruma's \s (Unicode White_Space), as a PCRE2 class body. */
static const char ws_class_body[] =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

/* The text is valid UTF-8 by the time it gets here (encode repairs it first); a stray byte
 * is still read as one character so that nothing can run past the end. */
static inline uint32_t dec(const uint8_t *s, size_t n, size_t i, size_t *len) {
    if (s[i] < 0x80) { *len = 1; return s[i]; }
    uint32_t cp;
    size_t bad, l = tp_utf8_decode(s + i, n - i, &cp, &bad);
    if (!l) { *len = 1; return 0xFFFD; }
    *len = l;
    return cp;
}

static inline unsigned cls_at(const uint8_t *s, size_t n, size_t i, size_t *len) {
    return tp_uclass(dec(s, n, i, len));
}

#define OTHER(k) (!((k) & (TP_UC_L | TP_UC_N | TP_UC_WS)))

/* End of the run starting at j of characters whose class satisfies `want` (a class bit), or of
 * "other" characters when want is 0. */
static size_t run_end(const uint8_t *s, size_t n, size_t j, unsigned want) {
    while (j < n) {
        size_t l;
        unsigned k = cls_at(s, n, j, &l);
        if (want ? !(k & want) : !OTHER(k)) break;
        j += l;
    }
    return j;
}

/* Whitespace at i: `\s+(?!\S)|\s+` (GPT-2 and the tail of Llama 3 / Qwen2). With crlf, first
 * `\s*[\r\n]+`, which ends just after the run's last CR or LF. */
static size_t ws_match(const uint8_t *s, size_t n, size_t i, int crlf) {
    size_t j = i, last = i, after_crlf = 0;
    while (j < n) {
        size_t l;
        unsigned k = cls_at(s, n, j, &l);
        if (!(k & TP_UC_WS)) break;
        if (s[j] == '\r' || s[j] == '\n') after_crlf = j + 1;
        last = j;
        j += l;
    }
    if (crlf && after_crlf) return after_crlf - i;
    if (j == n) return j - i;
    if (last > i) return last - i; /* give the last space back so it can lead the next word */
    return j - i;
}

static size_t match_gpt2(const uint8_t *s, size_t n, size_t i) {
    if (s[i] == '\'' && i + 1 < n) {
        uint8_t c1 = s[i + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
        if (i + 2 < n) {
            uint8_t c2 = s[i + 2];
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
        }
    }
    size_t l0;
    uint32_t c0 = dec(s, n, i, &l0);
    unsigned k = tp_uclass(c0);
    size_t st = i;
    if (c0 == ' ' && i + l0 < n) {
        size_t l1;
        unsigned k1 = cls_at(s, n, i + l0, &l1);
        if (!(k1 & TP_UC_WS)) { st = i + l0; k = k1; }
    }
    if (k & TP_UC_L) return run_end(s, n, st, TP_UC_L) - i;
    if (k & TP_UC_N) return run_end(s, n, st, TP_UC_N) - i;
    if (OTHER(k)) return run_end(s, n, st, 0) - i;
    return ws_match(s, n, i, 0);
}

/* Simple case folding as far as the contractions need: ASCII, and U+017F LATIN SMALL LETTER
 * LONG S, which folds to 's' (Oniguruma matches "'ſ" with (?i:'s)). */
static inline uint32_t fold(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';
    return c;
}

static size_t match_llama(const uint8_t *s, size_t n, size_t i, int max_digits) {
    if (s[i] == '\'' && i + 1 < n) {
        size_t l1, l2;
        uint32_t c1 = fold(dec(s, n, i + 1, &l1));
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 1 + l1;
        if (i + 1 + l1 < n) {
            uint32_t c2 = fold(dec(s, n, i + 1 + l1, &l2));
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return 1 + l1 + l2;
        }
    }
    size_t l0, l1;
    uint32_t c0 = dec(s, n, i, &l0);
    unsigned k0 = tp_uclass(c0);
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (k0 & TP_UC_L) return run_end(s, n, i, TP_UC_L) - i;
    if (c0 != '\r' && c0 != '\n' && !(k0 & TP_UC_N) && i + l0 < n &&
        (cls_at(s, n, i + l0, &l1) & TP_UC_L))
        return run_end(s, n, i + l0, TP_UC_L) - i;
    /* \p{N}{1,max} */
    if (k0 & TP_UC_N) {
        size_t j = i;
        for (int d = 0; d < max_digits && j < n; d++) {
            if (!(cls_at(s, n, j, &l1) & TP_UC_N)) break;
            j += l1;
        }
        return j - i;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t st = i;
    unsigned k = k0;
    if (c0 == ' ' && i + l0 < n) {
        unsigned k1 = cls_at(s, n, i + l0, &l1);
        if (OTHER(k1)) { st = i + l0; k = k1; }
    }
    if (OTHER(k)) {
        size_t j = run_end(s, n, st, 0);
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j - i;
    }
    return ws_match(s, n, i, 1);
}

size_t tp_re_builtin_match(tp_re_builtin which, const uint8_t *s, size_t n, size_t pos) {
    switch (which) {
    case TP_RE_GPT2: return match_gpt2(s, n, pos);
    case TP_RE_LLAMA3: return match_llama(s, n, pos, 3);
    case TP_RE_QWEN2: return match_llama(s, n, pos, 1);
    case TP_RE_NONE: break;
    }
    return 1;
}

const char *tp_split_behavior_name(tp_split_behavior b) {
    switch (b) {
    case TP_SPLIT_REMOVED: return "Removed";
    case TP_SPLIT_ISOLATED: return "Isolated";
    case TP_SPLIT_MERGED_PREV: return "MergedWithPrevious";
    case TP_SPLIT_MERGED_NEXT: return "MergedWithNext";
    case TP_SPLIT_CONTIGUOUS: return "Contiguous";
    }
    return "Isolated";
}

int tp_split_behavior_parse(const char *s, tp_split_behavior *out) {
    static const tp_split_behavior all[] = {TP_SPLIT_REMOVED, TP_SPLIT_ISOLATED, TP_SPLIT_MERGED_PREV,
                                            TP_SPLIT_MERGED_NEXT, TP_SPLIT_CONTIGUOUS};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, tp_split_behavior_name(all[i])) == 0) { *out = all[i]; return 1; }
    return 0;
}

/* Rewrites \s (and \S outside classes) to Oniguruma's whitespace set. */
static char *rewrite_ws(const char *p, size_t n) {
    size_t body = sizeof ws_class_body - 1, cap = n + 1, count = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (p[i] == '\\') { count++; i++; }
    cap += count * (body + 3);
    char *o = malloc(cap);
    if (!o) return NULL;
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            if (e == 's' || (e == 'S' && !in_class)) {
                if (!in_class) { o[k++] = '['; if (e == 'S') o[k++] = '^'; }
                memcpy(o + k, ws_class_body, body);
                k += body;
                if (!in_class) o[k++] = ']';
            } else { o[k++] = c; o[k++] = e; }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[k++] = c;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && p[i + 1] == '^') o[k++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') o[k++] = p[++i];
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        o[k++] = c;
    }
    o[k] = 0;
    return o;
}

tp_status tp_pre_step_prepare(tp_pre_step *st, const char *where) {
    if (st->kind != TP_PRE_SPLIT || !st->is_regex) return TP_OK;
    st->builtin = TP_RE_NONE;
    if (strcmp(st->pattern, tp_re_gpt2) == 0) st->builtin = TP_RE_GPT2;
    else if (strcmp(st->pattern, tp_re_llama3) == 0) st->builtin = TP_RE_LLAMA3;
    else if (strcmp(st->pattern, tp_re_qwen2) == 0) st->builtin = TP_RE_QWEN2;
    if (st->builtin != TP_RE_NONE) return TP_OK;
    char *pat = rewrite_ws(st->pattern, st->pattern_len);
    if (!pat) return tp_fail(TP_ERR_NOMEM, "%s: out of memory for the regex", where);
    int err;
    PCRE2_SIZE off;
    st->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    free(pat);
    if (!st->re && err == PCRE2_ERROR_HEAP_FAILED)
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory compiling the regex \"%s\"", where, st->pattern);
    if (!st->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: regex \"%s\" does not compile with PCRE2 (%s at offset %zu)",
                       where, st->pattern, (const char *)msg, (size_t)off);
    }
    (void)pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
    return TP_OK;
}

void tp_pre_step_clear(tp_pre_step *st) {
    free(st->pattern);
    if (st->re) pcre2_code_free(st->re);
    memset(st, 0, sizeof *st);
}

static tp_status span_push(tp_spanvec *v, size_t a, size_t b, int m) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        tp_span *p = realloc(v->v, cap * sizeof *p);
        if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory in the pre-tokenizer");
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = (tp_span){a, b, m};
    return TP_OK;
}

/* Matches of a Split step over s[0..n) as (span, is_match) covering the text. */
static tp_status split_matches(tp_enc_ctx *c, const tp_pre_step *st, const uint8_t *s, size_t n,
                               tp_spanvec *v) {
    tp_status rc;
    size_t prev = 0;
#define EMIT(a_, b_)                                                            \
    do {                                                                        \
        if (prev < (a_) && (rc = span_push(v, prev, (a_), 0))) return rc;       \
        if ((rc = span_push(v, (a_), (b_), 1))) return rc;                      \
        prev = (b_);                                                            \
    } while (0)
    if (!st->is_regex) {
        size_t m = st->pattern_len;
        if (m) {
            size_t i = 0;
            while (i + m <= n) {
                const uint8_t *f = memmem(s + i, n - i, st->pattern, m);
                if (!f) break;
                size_t a = (size_t)(f - s);
                EMIT(a, a + m);
                i = a + m;
            }
        }
    } else if (st->builtin != TP_RE_NONE) {
        for (size_t i = 0; i < n;) {
            size_t l = tp_re_builtin_match(st->builtin, s, n, i);
            EMIT(i, i + l);
            i += l;
        }
    } else {
        if (!c->md) {
            c->md = pcre2_match_data_create(32, NULL);
            if (!c->md) return tp_fail(TP_ERR_NOMEM, "out of memory for PCRE2 match data");
        }
        size_t i = 0;
        while (i <= n) {
            int r = pcre2_match(st->re, s, n, i, PCRE2_NO_UTF_CHECK, c->md, NULL);
            if (r == PCRE2_ERROR_NOMATCH) break;
            if (r == PCRE2_ERROR_NOMEMORY) /* its backtracking frames live on the heap */
                return tp_fail(TP_ERR_NOMEM, "out of memory matching the regex \"%s\"", st->pattern);
            if (r < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(r, msg, sizeof msg);
                return tp_fail(TP_ERR_UNSUPPORTED, "regex \"%s\" failed to match: %s", st->pattern,
                               (const char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
            size_t a = ov[0], b = ov[1];
            if (b <= a) { /* empty match: no piece; step over one character */
                if (a >= n) break;
                size_t l;
                dec(s, n, a, &l);
                i = a + l;
                continue;
            }
            EMIT(a, b);
            i = b;
        }
    }
#undef EMIT
    if (prev < n) return span_push(v, prev, n, 0);
    return TP_OK;
}

/* Turns (span, is_match) into pieces as SplitDelimiterBehavior does; in place. */
static void apply_behavior(tp_spanvec *v, tp_split_behavior b, int invert) {
    size_t k = 0;
    int prev_match = 0;
    if (invert)
        for (size_t i = 0; i < v->n; i++) v->v[i].m = !v->v[i].m;
    switch (b) {
    case TP_SPLIT_ISOLATED: return;
    case TP_SPLIT_REMOVED:
        for (size_t i = 0; i < v->n; i++)
            if (!v->v[i].m) v->v[k++] = v->v[i];
        break;
    case TP_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < v->n; i++) {
            if (v->v[i].m && !prev_match && k) v->v[k - 1].b = v->v[i].b;
            else v->v[k++] = v->v[i];
            prev_match = v->v[i].m;
        }
        break;
    case TP_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < v->n; i++) {
            if (v->v[i].m == prev_match && k) v->v[k - 1].b = v->v[i].b;
            else v->v[k++] = v->v[i];
            prev_match = v->v[i].m;
        }
        break;
    case TP_SPLIT_MERGED_NEXT: {
        /* fold from the right: a match joins the piece after it */
        size_t w = v->n;
        for (size_t i = v->n; i-- > 0;) {
            if (v->v[i].m && !prev_match && w < v->n) v->v[w].a = v->v[i].a;
            else v->v[--w] = v->v[i];
            prev_match = v->v[i].m;
        }
        for (size_t i = w; i < v->n; i++) v->v[k++] = v->v[i];
        break;
    }
    }
    v->n = k;
}

/* Digits: numeric characters alone (individual) or in runs, between runs of the rest. */
static tp_status digit_pieces(const uint8_t *s, size_t n, int individual, tp_spanvec *v) {
    tp_status rc;
    size_t i = 0;
    while (i < n) {
        size_t l;
        int num = (cls_at(s, n, i, &l) & TP_UC_NUM) != 0;
        size_t j = i + l;
        if (!num || !individual) {
            while (j < n) {
                size_t l2;
                int num2 = (cls_at(s, n, j, &l2) & TP_UC_NUM) != 0;
                if (num2 != num) break;
                j += l2;
            }
        }
        if ((rc = span_push(v, i, j, num))) return rc;
        i = j;
    }
    return TP_OK;
}

/* The leaf: a finished pre-token goes to the model (mapped back to bytes first when a ByteLevel
 * step that was not the last one mapped it). */
static tp_status model_word(tp_enc_ctx *c, const uint8_t *s, size_t n) {
    if (!n) return TP_OK;
    if (c->t->model_kind == TP_MODEL_SPM) return tp_spm_word(c, s, n);
    if (!c->mapped) return tp_bpe_word(c, s, n);
    if (n >= c->ubuf_cap) {
        char *p = realloc(c->ubuf, n + 1);
        if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory in the pre-tokenizer");
        c->ubuf = p;
        c->ubuf_cap = n + 1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t l;
        int b = tp_cp_to_byte(dec(s, n, i, &l));
        if (b < 0) { /* a later step cannot make characters outside the map; keep the bytes */
            memcpy(c->ubuf + k, s + i, l);
            k += l;
        } else c->ubuf[k++] = (char)b;
        i += l;
    }
    return tp_bpe_word(c, (const uint8_t *)c->ubuf, k);
}

/* A piece of a ByteLevel step that is not the last: mapped to its byte-level characters for the
 * steps after it (HF runs e.g. Falcon's Digits and Split on the mapped text). */
static tp_status bytelevel_piece(tp_enc_ctx *c, int k, const uint8_t *s, size_t n) {
    if (k == c->t->n_steps - 1) return model_word(c, s, n);
    size_t need = 2 * n + 1;
    if (c->mbuf_cap[k] < need) {
        char *p = realloc(c->mbuf[k], need);
        if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory in the pre-tokenizer");
        c->mbuf[k] = p;
        c->mbuf_cap[k] = need;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += tp_utf8_encode(tp_byte_to_cp(s[i]), c->mbuf[k] + m);
    int was = c->mapped;
    c->mapped = 1;
    tp_status rc = tp_pretok_run(c, k + 1, (const uint8_t *)c->mbuf[k], m, 0);
    c->mapped = was;
    return rc;
}

static tp_status bytelevel_step(tp_enc_ctx *c, int k, const tp_pre_step *st, const uint8_t *s, size_t n) {
    if (st->add_prefix_space && (n == 0 || s[0] != ' ')) {
        size_t need = n + 2;
        if (c->pbuf_cap[k] < need) {
            char *p = realloc(c->pbuf[k], need);
            if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory in the pre-tokenizer");
            c->pbuf[k] = p;
            c->pbuf_cap[k] = need;
        }
        c->pbuf[k][0] = ' ';
        memcpy(c->pbuf[k] + 1, s, n);
        s = (const uint8_t *)c->pbuf[k];
        n++;
    }
    if (!st->use_regex) return n ? bytelevel_piece(c, k, s, n) : TP_OK;
    tp_status rc;
    for (size_t i = 0; i < n;) {
        size_t l = match_gpt2(s, n, i);
        if ((rc = bytelevel_piece(c, k, s + i, l))) return rc;
        i += l;
    }
    return TP_OK;
}

/* Metaspace: spaces become the replacement, which is prepended as the scheme says; with split,
 * the piece is cut before every replacement character (MergedWithNext). */
static tp_status metaspace_step(tp_enc_ctx *c, int k, const tp_pre_step *st, const uint8_t *s, size_t n, int first) {
    const char *r = st->replacement;
    size_t rl = st->replacement_len, cnt = 0;
    for (size_t i = 0; i < n; i++) cnt += s[i] == ' ';
    size_t need = n + cnt * rl + rl + 1;
    if (c->pbuf_cap[k] < need) {
        char *p = realloc(c->pbuf[k], need);
        if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory in the pre-tokenizer");
        c->pbuf[k] = p;
        c->pbuf_cap[k] = need;
    }
    char *o = c->pbuf[k];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(o + m, r, rl); m += rl; }
        else o[m++] = (char)s[i];
    }
    int starts = m >= rl && memcmp(o, r, rl) == 0;
    if (!starts && (st->prepend_scheme == TP_PREPEND_ALWAYS || (st->prepend_scheme == TP_PREPEND_FIRST && first))) {
        memmove(o + rl, o, m);
        memcpy(o, r, rl);
        m += rl;
    }
    if (!st->split) return tp_pretok_run(c, k + 1, (const uint8_t *)o, m, first);
    tp_status rc;
    size_t a = 0;
    for (size_t i = rl; i + rl <= m; i++)
        if (memcmp(o + i, r, rl) == 0) {
            if ((rc = tp_pretok_run(c, k + 1, (const uint8_t *)o + a, i - a, first && a == 0))) return rc;
            a = i;
        }
    return tp_pretok_run(c, k + 1, (const uint8_t *)o + a, m - a, first && a == 0);
}

/* Punctuation (HF): ASCII punctuation or a Unicode P* character, one match per character. */
static tp_status punct_spans(const uint8_t *s, size_t n, tp_spanvec *v) {
    tp_status rc;
    size_t run = 0; /* start of the current run of other characters */
    for (size_t i = 0; i < n;) {
        size_t l;
        if (!tp_is_punct(dec(s, n, i, &l))) { i += l; continue; }
        if (run < i && (rc = span_push(v, run, i, 0))) return rc;
        if ((rc = span_push(v, i, i + l, 1))) return rc;
        i += l;
        run = i;
    }
    return run < n ? span_push(v, run, n, 0) : TP_OK;
}

tp_status tp_pretok_run(tp_enc_ctx *c, int k, const uint8_t *s, size_t n, int first) {
    const tp_tokenizer *t = c->t;
    if (k >= t->n_steps) return model_word(c, s, n);
    const tp_pre_step *st = &t->steps[k];
    if (st->kind == TP_PRE_BYTELEVEL) return bytelevel_step(c, k, st, s, n);
    if (n == 0) return TP_OK;
    if (st->kind == TP_PRE_METASPACE) return metaspace_step(c, k, st, s, n, first);
    tp_spanvec *v = &c->lv[k];
    v->n = 0;
    tp_status rc;
    if (st->kind == TP_PRE_DIGITS) rc = digit_pieces(s, n, st->individual_digits, v);
    else if (st->kind == TP_PRE_PUNCT) {
        rc = punct_spans(s, n, v);
        if (!rc) apply_behavior(v, st->behavior, 0);
    } else {
        rc = split_matches(c, st, s, n, v);
        if (!rc) apply_behavior(v, st->behavior, st->invert);
    }
    if (rc) return rc;
    for (size_t i = 0; i < v->n; i++) {
        size_t a = v->v[i].a, b = v->v[i].b;
        if (b > a && (rc = tp_pretok_run(c, k + 1, s + a, b - a, first && a == 0))) return rc;
    }
    return TP_OK;
}
