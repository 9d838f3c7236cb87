/* The tokenizer object: construction helpers shared by the JSON and GGUF loaders, accessors,
 * encode (added tokens, pre-tokenizer, BPE, post-processor) and decode (ByteLevel decoder with
 * lossy UTF-8). Loading and saving formats live in tok_json.c and tok_gguf.c. */
#include "tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tp_tok_free(tp_tokenizer *t) {
    if (!t) return;
    free(t->piece);
    free(t->piece_len);
    free(t->special);
    free(t->is_added);
    free(t->mem);
    tp_strmap_free(&t->vocab);
    tp_pairmap_free(&t->merges);
    free(t->merge_pairs);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    for (int i = 0; i < t->n_steps; i++) tp_pre_step_clear(&t->steps[i]);
    free(t->steps);
    free(t->model_unk_token);
    free(t->prefix);
    free(t->suffix);
    free(t);
}

tp_status tp_tok_alloc_vocab(tp_tokenizer *t, int n_model, int n_vocab) {
    t->n_model = n_model;
    t->n_vocab = n_vocab;
    size_t n = (size_t)(n_vocab > 0 ? n_vocab : 1);
    t->piece = calloc(n, sizeof *t->piece);
    t->piece_len = calloc(n, sizeof *t->piece_len);
    t->special = calloc(n, 1);
    t->is_added = calloc(n, 1);
    if (!t->piece || !t->piece_len || !t->special || !t->is_added)
        return tp_fail(TP_ERR_NOMEM, "out of memory for a vocabulary of %d tokens", n_vocab);
    return tp_strmap_init(&t->vocab, (size_t)n_model);
}

tp_status tp_tok_add_merge(tp_tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                           const char *src, int rank) {
    int32_t ia = tp_strmap_get(&t->vocab, a, la), ib = tp_strmap_get(&t->vocab, b, lb);
    if (ia < 0 || ib < 0)
        return tp_fail(TP_ERR_FORMAT, "%s: merge %d (\"%.*s\" \"%.*s\") references a token not in the vocabulary",
                       src, rank, (int)(la > 64 ? 64 : la), a, (int)(lb > 64 ? 64 : lb), b);
    char stackbuf[256];
    size_t lm = la + lb;
    char *m = lm <= sizeof stackbuf ? stackbuf : malloc(lm);
    if (!m) return tp_fail(TP_ERR_NOMEM, "out of memory");
    memcpy(m, a, la);
    memcpy(m + la, b, lb);
    int32_t im = tp_strmap_get(&t->vocab, m, lm);
    if (m != stackbuf) free(m);
    if (im < 0)
        return tp_fail(TP_ERR_FORMAT, "%s: merge %d (\"%.*s\" \"%.*s\") produces a token not in the vocabulary",
                       src, rank, (int)(la > 64 ? 64 : la), a, (int)(lb > 64 ? 64 : lb), b);
    if (tp_pairmap_put(&t->merges, ia, ib, rank, im) < 0) return tp_fail(TP_ERR_NOMEM, "out of memory for merges");
    t->merge_pairs[2 * rank] = ia;
    t->merge_pairs[2 * rank + 1] = ib;
    return TP_OK;
}

static tp_status add_step(tp_tokenizer *t, tp_pre_step st) {
    tp_pre_step *p = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *p);
    if (!p) { tp_pre_step_clear(&st); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    t->steps = p;
    t->steps[t->n_steps++] = st;
    return TP_OK;
}

static tp_status add_regex_step(tp_tokenizer *t, const char *re) {
    tp_pre_step st = {.kind = TP_PRE_SPLIT, .is_regex = 1, .behavior = TP_SPLIT_ISOLATED};
    st.pattern = strdup(re);
    if (!st.pattern) return tp_fail(TP_ERR_NOMEM, "out of memory");
    st.pattern_len = strlen(re);
    tp_status rc = tp_pre_step_prepare(&st, "pre-tokenizer");
    if (rc) { tp_pre_step_clear(&st); return rc; }
    return add_step(t, st);
}

/* llama.cpp's pre-tokenizer names, as the HF pipelines they stand for. */
tp_status tp_tok_set_pre_named(tp_tokenizer *t, const char *name, const char *src) {
    static const char *digits_gpt2[] = {"smollm", "starcoder", "refact", "command-r", "codeshell",
                                        "exaone", "minerva"};
    static const char *gpt2[] = {"gpt2", "gpt-2", "default", "mpt", "olmo", "jais"};
    static const char *llama3[] = {"llama-bpe", "llama3", "llama-v3", "falcon3"};
    static const char *qwen2[] = {"qwen2", "deepseek-r1-qwen", "stablelm2"};
    tp_pre_step bl = {.kind = TP_PRE_BYTELEVEL, .trim_offsets = 1, .use_regex = 1};
    tp_status rc;
    for (size_t i = 0; i < sizeof digits_gpt2 / sizeof *digits_gpt2; i++)
        if (strcmp(name, digits_gpt2[i]) == 0) {
            tp_pre_step d = {.kind = TP_PRE_DIGITS, .individual_digits = 1};
            if ((rc = add_step(t, d))) return rc;
            goto bytelevel;
        }
    for (size_t i = 0; i < sizeof gpt2 / sizeof *gpt2; i++)
        if (strcmp(name, gpt2[i]) == 0) goto bytelevel;
    for (size_t i = 0; i < sizeof llama3 / sizeof *llama3; i++)
        if (strcmp(name, llama3[i]) == 0) {
            if ((rc = add_regex_step(t, tp_re_llama3))) return rc;
            t->ignore_merges = 1;
            bl.use_regex = 0;
            goto bytelevel;
        }
    for (size_t i = 0; i < sizeof qwen2 / sizeof *qwen2; i++)
        if (strcmp(name, qwen2[i]) == 0) {
            if ((rc = add_regex_step(t, tp_re_qwen2))) return rc;
            bl.use_regex = 0;
            goto bytelevel;
        }
    return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre-tokenizer \"%s\" is not supported (known: smollm, "
                   "starcoder, gpt2/default, llama-bpe/llama3, qwen2, ...)", src, name);
bytelevel:
    snprintf(t->pre_name, sizeof t->pre_name, "%s", name);
    return add_step(t, bl);
}

const char *tp_tok_infer_pre_name(const tp_tokenizer *t) {
    const tp_pre_step *s = t->steps;
    if (t->n_steps == 1 && s[0].kind == TP_PRE_BYTELEVEL && s[0].use_regex && !s[0].add_prefix_space &&
        !t->ignore_merges)
        return "gpt2";
    if (t->n_steps == 2 && s[1].kind == TP_PRE_BYTELEVEL && !s[1].add_prefix_space) {
        if (s[0].kind == TP_PRE_DIGITS && s[0].individual_digits && s[1].use_regex && !t->ignore_merges)
            return "smollm";
        if (s[0].kind == TP_PRE_SPLIT && s[0].is_regex && s[0].behavior == TP_SPLIT_ISOLATED &&
            !s[0].invert && !s[1].use_regex) {
            if (s[0].builtin == TP_RE_LLAMA3 && t->ignore_merges) return "llama-bpe";
            if (s[0].builtin == TP_RE_QWEN2 && !t->ignore_merges) return "qwen2";
        }
    }
    return "custom";
}

tp_status tp_tok_finish(tp_tokenizer *t, const char *src) {
    int n_bl = 0;
    for (int i = 0; i < t->n_steps; i++) n_bl += t->steps[i].kind == TP_PRE_BYTELEVEL;
    if (n_bl != 1 || t->steps[t->n_steps - 1].kind != TP_PRE_BYTELEVEL)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre_tokenizer: only byte-level BPE is supported (exactly one "
                       "ByteLevel step, last in the sequence)", src);
    if (t->n_steps > TP_MAX_PRE_STEPS)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre_tokenizer: more than %d steps", src, TP_MAX_PRE_STEPS);
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t l = tp_utf8_encode(tp_byte_to_cp((uint8_t)b), u);
        t->byte_id[b] = tp_strmap_get(&t->vocab, u, l);
    }
    int32_t *ids[] = {&t->bos, &t->eos, &t->unk, &t->pad};
    static const char *names[] = {"bos", "eos", "unk", "pad"};
    for (int i = 0; i < 4; i++)
        if (*ids[i] >= t->n_vocab || (*ids[i] >= 0 && !t->piece[*ids[i]]))
            return tp_fail(TP_ERR_FORMAT, "%s: %s token id %d out of range (vocabulary of %d)", src, names[i],
                           (int)*ids[i], t->n_vocab);
    for (int i = 0; i < t->n_prefix + t->n_suffix; i++) {
        int32_t id = i < t->n_prefix ? t->prefix[i] : t->suffix[i - t->n_prefix];
        if (id < 0 || id >= t->n_vocab || !t->piece[id])
            return tp_fail(TP_ERR_FORMAT, "%s: post_processor: special token id %d out of range", src, (int)id);
    }
    t->has_normalized_added = 0;
    for (int i = 0; i < t->n_added; i++) t->has_normalized_added |= t->added[i].normalized;
    if (!t->pre_name[0]) snprintf(t->pre_name, sizeof t->pre_name, "%s", tp_tok_infer_pre_name(t));
    return TP_OK;
}

/* ---- accessors ---- */

int tp_tok_vocab_size(const tp_tokenizer *t) { return t->n_vocab; }
int32_t tp_tok_bos(const tp_tokenizer *t) { return t->bos; }
int32_t tp_tok_eos(const tp_tokenizer *t) { return t->eos; }
int32_t tp_tok_unk(const tp_tokenizer *t) { return t->unk; }
int32_t tp_tok_pad(const tp_tokenizer *t) { return t->pad; }
const char *tp_tok_pre_name(const tp_tokenizer *t) { return t->pre_name; }

int tp_tok_adds_bos(const tp_tokenizer *t) {
    return t->bos >= 0 && t->n_prefix > 0 && t->prefix[0] == t->bos;
}

const char *tp_tok_piece(const tp_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? t->piece[id] : NULL;
}

int tp_tok_is_special(const tp_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->special[id];
}

int32_t tp_tok_find(const tp_tokenizer *t, const char *piece) {
    if (!piece) return -1;
    size_t n = strlen(piece);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, piece, n) == 0) return t->added[i].id;
    return tp_strmap_get(&t->vocab, piece, n);
}

/* ---- encode ---- */

/* Rust regex \w as far as it is cheap to know: letters, numbers, underscore (combining marks
 * and connector punctuation other than '_' are not in the tables). */
static int is_word_cp(uint32_t cp) { return cp == '_' || (tp_uclass(cp) & (TP_UC_L | TP_UC_N)); }

/* The character that ends at s[end) (s[a..end) is valid UTF-8 with end > a). */
static uint32_t last_cp(const uint8_t *s, size_t a, size_t end) {
    size_t i = end - 1;
    while (i > a && (s[i] & 0xC0) == 0x80) i--;
    uint32_t cp;
    size_t bad;
    return tp_utf8_decode(s + i, end - i, &cp, &bad) ? cp : 0xFFFD;
}

/* Leftmost-longest match of an added token of the given kind (normalized flag) in s[from..b). */
static int find_added(const tp_tokenizer *t, const uint8_t *s, size_t from, size_t b, int normalized,
                      size_t *start) {
    for (size_t i = from; i < b; i++) {
        int best = -1;
        size_t best_len = 0;
        for (int k = 0; k < t->n_added; k++) {
            const tp_added_token *at = &t->added[k];
            if (at->normalized != normalized || at->len == 0 || (uint8_t)at->content[0] != s[i]) continue;
            if (at->len > best_len && at->len <= b - i && memcmp(at->content, s + i, at->len) == 0) {
                best = k;
                best_len = at->len;
            }
        }
        if (best >= 0) { *start = i; return best; }
    }
    return -1;
}

static tp_status encode_plain(tp_enc_ctx *c, const uint8_t *s, size_t a, size_t b) {
    /* the normalizer is always empty here (others are refused at load) */
    return b > a ? tp_pretok_run(c, 0, s + a, b - a) : TP_OK;
}

/* HF AddedVocabulary: first the non-normalized added tokens on the raw text, then the
 * normalized ones on what is left, then the pre-tokenizer and the model on the rest. */
static tp_status split_added(tp_enc_ctx *c, const uint8_t *s, size_t a, size_t b, int normalized) {
    const tp_tokenizer *t = c->t;
    tp_status rc;
    size_t from = a, start_offset = a;
    while (from < b) {
        size_t st;
        int k = find_added(t, s, from, b, normalized, &st);
        if (k < 0) break;
        const tp_added_token *at = &t->added[k];
        size_t stop = st + at->len;
        from = stop;
        if (at->single_word) {
            int start_ok = st == a || !is_word_cp(last_cp(s, a, st));
            int stop_ok = stop == b;
            if (!stop_ok) {
                uint32_t cp;
                size_t bad;
                if (!tp_utf8_decode(s + stop, b - stop, &cp, &bad)) cp = 0xFFFD;
                stop_ok = !is_word_cp(cp);
            }
            if (!start_ok || !stop_ok) continue;
        }
        if (at->lstrip) {
            size_t ns = st;
            while (ns > a) {
                size_t i = ns - 1;
                while (i > a && (s[i] & 0xC0) == 0x80) i--;
                uint32_t cp;
                size_t bad;
                if (!tp_utf8_decode(s + i, ns - i, &cp, &bad) || !(tp_uclass(cp) & TP_UC_WS)) break;
                ns = i;
            }
            st = ns > start_offset ? ns : start_offset;
        }
        if (at->rstrip) {
            while (stop < b) {
                uint32_t cp;
                size_t bad, l = tp_utf8_decode(s + stop, b - stop, &cp, &bad);
                if (!l || !(tp_uclass(cp) & TP_UC_WS)) break;
                stop += l;
            }
            from = stop;
        }
        if (start_offset < st) {
            rc = normalized || !t->has_normalized_added ? encode_plain(c, s, start_offset, st)
                                                        : split_added(c, s, start_offset, st, 1);
            if (rc) return rc;
        }
        if ((rc = tp_enc_push(c, at->id))) return rc;
        start_offset = stop;
    }
    if (start_offset < b)
        return normalized || !t->has_normalized_added ? encode_plain(c, s, start_offset, b)
                                                      : split_added(c, s, start_offset, b, 1);
    return TP_OK;
}

tp_status tp_tok_encode(const tp_tokenizer *t, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n_ids) {
    if (!t || !ids || !n_ids || (!text && len)) return tp_fail(TP_ERR_ARG, "tp_tok_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    char *fixed = NULL;
    if (!tp_utf8_valid(text, len)) {
        /* HF only ever sees valid strings; bytes that are not UTF-8 are read as U+FFFD, as
         * bytes.decode("utf-8", errors="replace") / String::from_utf8_lossy do. */
        tp_status rc = tp_utf8_lossy(text, len, &fixed, &len);
        if (rc) return rc;
        text = fixed;
    }
    tp_enc_ctx *c = tp_enc_ctx_new(t);
    if (!c) { free(fixed); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    tp_status rc = TP_OK;
    if (add_special)
        for (int i = 0; i < t->n_prefix && !rc; i++) rc = tp_enc_push(c, t->prefix[i]);
    if (!rc && len) rc = split_added(c, (const uint8_t *)text, 0, len, 0);
    if (add_special)
        for (int i = 0; i < t->n_suffix && !rc; i++) rc = tp_enc_push(c, t->suffix[i]);
    if (!rc) {
        *ids = c->ids;
        *n_ids = c->n_ids;
        if (!*ids) { /* empty result: still hand back a freeable buffer */
            *ids = malloc(sizeof **ids);
            if (!*ids) rc = tp_fail(TP_ERR_NOMEM, "out of memory");
        }
        c->ids = NULL;
    }
    tp_enc_ctx_free(c);
    free(fixed);
    return rc;
}

/* ---- decode ---- */

typedef struct { char *p; size_t n, cap; } buf;

static int buf_put(buf *b, const void *src, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

/* ByteLevel decoder, per token: the bytes its characters stand for, or the token's own UTF-8
 * when some character is not in the byte map (HF does the same). */
static int put_bytelevel(buf *b, const char *piece, size_t len) {
    size_t start = b->n;
    const uint8_t *s = (const uint8_t *)piece;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t bad, l = tp_utf8_decode(s + i, len - i, &cp, &bad);
        int byte = l ? tp_cp_to_byte(cp) : -1;
        if (byte < 0) { b->n = start; return buf_put(b, piece, len); }
        uint8_t v = (uint8_t)byte;
        if (buf_put(b, &v, 1)) return -1;
        i += l;
    }
    return 0;
}

tp_status tp_tok_decode(const tp_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        char **out, size_t *out_len) {
    if (!t || !out || (!ids && n)) return tp_fail(TP_ERR_ARG, "tp_tok_decode: NULL argument");
    *out = NULL;
    if (out_len) *out_len = 0;
    buf b = {0};
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || !t->piece[id]) {
            free(b.p);
            return tp_fail(TP_ERR_ARG, "tp_tok_decode: token id %d at position %zu is not in the vocabulary "
                           "(size %d)", (int)id, i, t->n_vocab);
        }
        if (skip_special && t->special[id]) continue;
        int e;
        if (t->decoder == TP_DEC_BYTELEVEL) e = put_bytelevel(&b, t->piece[id], t->piece_len[id]);
        else e = (!first && buf_put(&b, " ", 1)) || buf_put(&b, t->piece[id], t->piece_len[id]);
        first = 0;
        if (e) { free(b.p); return tp_fail(TP_ERR_NOMEM, "out of memory while decoding"); }
    }
    size_t len = b.n;
    char *res;
    tp_status rc = tp_utf8_lossy(b.p ? b.p : "", len, &res, &len);
    free(b.p);
    if (rc) return rc;
    *out = res;
    if (out_len) *out_len = len;
    return TP_OK;
}
