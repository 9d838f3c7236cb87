/* The tokenizer object: construction helpers shared by the JSON and GGUF loaders (including the
 * HF pipelines behind llama.cpp's pre-tokenizer names), accessors, encode (added tokens,
 * normalizer, pre-tokenizer, model, post-processor) and decode (the ByteLevel decoder, or HF's
 * Replace / ByteFallback / Fuse / Strip / Metaspace chain, then lossy UTF-8). Loading and saving
 * formats live in tok_json.c and tok_gguf.c, the models in bpe.c and spm.c. */
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
    for (int i = 0; i < t->n_dsteps; i++) { free(t->dsteps[i].a); free(t->dsteps[i].b); }
    free(t->dsteps);
    for (int i = 0; i < t->n_norm; i++) tp_norm_step_clear(&t->norm[i]);
    free(t->norm);
    free(t->scores);
    free(t->gguf_type);
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

/* The HF pipelines behind llama.cpp pre-tokenizer names that have no hand-written matcher: the
 * Split regexes (all Isolated) of the model's tokenizer.json, run on PCRE2. */
static const char re_deepseek_llm_letters[] =
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+";
static const char re_deepseek_llm_punct[] = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+";
static const char re_cjk_hangul[] = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+";
static const char re_qwen35[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* One step of a named pipeline: kind, regex (SPLIT), flag (DIGITS individual / BYTELEVEL use_regex). */
typedef struct { tp_pre_kind kind; const char *re; int flag; } named_step;
#define END {TP_PRE_SPLIT, NULL, -1}

static const struct { const char *names[6]; int ignore_merges; named_step steps[8]; } named[] = {
    {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}, 0,
     {{TP_PRE_DIGITS, NULL, 1}, {TP_PRE_BYTELEVEL, NULL, 1}, END}},
    {{"minerva"}, 0, {{TP_PRE_DIGITS, NULL, 1}, {TP_PRE_BYTELEVEL, NULL, 1}, END}},
    {{"gpt2", "gpt-2", "default", "mpt", "olmo", "jais"}, 0, {{TP_PRE_BYTELEVEL, NULL, 1}, END}},
    {{"llama-bpe", "llama3", "llama-v3", "falcon3"}, 1,
     {{TP_PRE_SPLIT, tp_re_llama3, 0}, {TP_PRE_BYTELEVEL, NULL, 0}, END}},
    {{"qwen2", "deepseek-r1-qwen", "stablelm2"}, 0, {{TP_PRE_SPLIT, tp_re_qwen2, 0}, {TP_PRE_BYTELEVEL, NULL, 0}, END}},
    {{"qwen35"}, 0, {{TP_PRE_SPLIT, re_qwen35, 0}, {TP_PRE_BYTELEVEL, NULL, 0}, END}},
    {{"deepseek-llm"}, 0,
     {{TP_PRE_SPLIT, "[\r\n]", 0}, {TP_PRE_SPLIT, re_deepseek_llm_letters, 0}, {TP_PRE_SPLIT, re_deepseek_llm_punct, 0},
      {TP_PRE_SPLIT, "\\s+$", 0}, {TP_PRE_SPLIT, re_cjk_hangul, 0}, {TP_PRE_DIGITS, NULL, 0},
      {TP_PRE_BYTELEVEL, NULL, 0}, END}},
    {{"deepseek-coder"}, 0,
     {{TP_PRE_SPLIT, "[\r\n]", 0}, {TP_PRE_SPLIT, "\\s?\\p{L}+", 0}, {TP_PRE_SPLIT, "\\s?\\p{P}+", 0},
      {TP_PRE_SPLIT, re_cjk_hangul, 0}, {TP_PRE_DIGITS, NULL, 1}, {TP_PRE_BYTELEVEL, NULL, 0}, END}},
    /* Falcon: Punctuation (Contiguous), ByteLevel, then Digits and a three-digit Split on the
     * byte-level text */
    {{"falcon"}, 0,
     {{TP_PRE_PUNCT, NULL, 0}, {TP_PRE_BYTELEVEL, NULL, 1}, {TP_PRE_DIGITS, NULL, 0},
      {TP_PRE_SPLIT, "[0-9][0-9][0-9]", 0}, END}},
    /* llama.cpp's Gemma 4: runs of newlines and runs of the rest; no byte-level map */
    {{"gemma4"}, 0, {{TP_PRE_SPLIT, "[^\\n]+|[\\n]+", 0}, END}},
};

/* llama.cpp's pre-tokenizer names, as the HF pipelines they stand for. */
tp_status tp_tok_set_pre_named(tp_tokenizer *t, const char *name, const char *src) {
    tp_status rc;
    for (size_t i = 0; i < sizeof named / sizeof *named; i++)
        for (int j = 0; j < 6 && named[i].names[j]; j++) {
            if (strcmp(name, named[i].names[j]) != 0) continue;
            for (const named_step *ns = named[i].steps; ns->flag >= 0 || ns->re; ns++) {
                if (ns->kind == TP_PRE_SPLIT) {
                    if ((rc = add_regex_step(t, ns->re))) return rc;
                    continue;
                }
                tp_pre_step st = {.kind = ns->kind};
                if (ns->kind == TP_PRE_DIGITS) st.individual_digits = ns->flag;
                if (ns->kind == TP_PRE_BYTELEVEL) { st.trim_offsets = 1; st.use_regex = ns->flag; }
                if (ns->kind == TP_PRE_PUNCT) st.behavior = TP_SPLIT_CONTIGUOUS;
                if ((rc = add_step(t, st))) return rc;
            }
            t->ignore_merges = named[i].ignore_merges;
            snprintf(t->pre_name, sizeof t->pre_name, "%s", name);
            return TP_OK;
        }
    return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre-tokenizer \"%s\" is not supported (known: smollm, starcoder, refact, "
                   "command-r, gpt2/default, mpt, llama-bpe/llama3, qwen2, qwen35, deepseek-llm, deepseek-coder, "
                   "falcon, ...)", src, name);
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

void tp_tok_find_byte_tokens(tp_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        int32_t id = tp_strmap_get(&t->vocab, hex, 6);
        t->byte_tok[b] = id < t->n_model ? id : -1;
    }
}

tp_status tp_tok_finish(tp_tokenizer *t, const char *src) {
    int n_bl = 0;
    for (int i = 0; i < t->n_steps; i++) n_bl += t->steps[i].kind == TP_PRE_BYTELEVEL;
    if (t->model_kind == TP_MODEL_SPM && t->n_steps)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: a pre-tokenizer with the SentencePiece-style model is not supported", src);
    if (n_bl > 1)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre_tokenizer: more than one ByteLevel step", src);
    t->byte_level = n_bl == 1;
    if (t->byte_level && t->byte_fallback)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: byte_fallback together with a ByteLevel pre-tokenizer is not supported", src);
    if (t->n_steps > TP_MAX_PRE_STEPS)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre_tokenizer: more than %d steps", src, TP_MAX_PRE_STEPS);
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t l = tp_utf8_encode(tp_byte_to_cp((uint8_t)b), u);
        t->byte_id[b] = t->byte_level ? tp_strmap_get(&t->vocab, u, l) : -1;
    }
    tp_tok_find_byte_tokens(t);
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

/* Leftmost-longest match of an added token of the given kind (normalized flag) in s[from..b);
 * special tokens are skipped when the caller asked not to parse them. */
static int find_added(const tp_tokenizer *t, const uint8_t *s, size_t from, size_t b, int normalized,
                      unsigned flags, size_t *start) {
    int skip_special = (flags & TP_TOK_NO_PARSE_SPECIAL) != 0;
    for (size_t i = from; i < b; i++) {
        int best = -1;
        size_t best_len = 0;
        for (int k = 0; k < t->n_added; k++) {
            const tp_added_token *at = &t->added[k];
            if (at->normalized != normalized || at->len == 0 || (uint8_t)at->content[0] != s[i]) continue;
            if (skip_special && at->special) continue;
            if (at->len > best_len && at->len <= b - i && memcmp(at->content, s + i, at->len) == 0) {
                best = k;
                best_len = at->len;
            }
        }
        if (best >= 0) { *start = i; return best; }
    }
    return -1;
}

static tp_status split_added(tp_enc_ctx *c, const uint8_t *s, size_t a, size_t b, int normalized, unsigned flags,
                             int first);

/* Text between added tokens: normalized (raw phase only), then the normalized added tokens,
 * then the pre-tokenizer and the model. first: s[a..) starts the original text. */
static tp_status encode_gap(tp_enc_ctx *c, const uint8_t *s, size_t a, size_t b, int normalized, unsigned flags,
                            int first) {
    const tp_tokenizer *t = c->t;
    if (b <= a) return TP_OK;
    if (normalized) return tp_pretok_run(c, 0, s + a, b - a, first);
    if (!t->n_norm)
        return t->has_normalized_added ? split_added(c, s, a, b, 1, flags, first) : tp_pretok_run(c, 0, s + a, b - a, first);
    char *ns;
    size_t nn;
    tp_status rc = tp_normalize(t, s + a, b - a, &ns, &nn);
    if (rc) return rc;
    rc = t->has_normalized_added ? split_added(c, (const uint8_t *)ns, 0, nn, 1, flags, first)
                                 : tp_pretok_run(c, 0, (const uint8_t *)ns, nn, first);
    free(ns);
    return rc;
}

/* HF AddedVocabulary: first the non-normalized added tokens on the raw text, then the
 * normalized ones on what is left after normalization, then the pre-tokenizer and the model. */
static tp_status split_added(tp_enc_ctx *c, const uint8_t *s, size_t a, size_t b, int normalized, unsigned flags,
                             int first) {
    const tp_tokenizer *t = c->t;
    tp_status rc;
    size_t from = a, start_offset = a;
    while (from < b) {
        size_t st;
        int k = find_added(t, s, from, b, normalized, flags, &st);
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
        if (start_offset < st &&
            (rc = encode_gap(c, s, start_offset, st, normalized, flags, first && start_offset == 0)))
            return rc;
        if ((rc = tp_enc_push(c, at->id))) return rc;
        start_offset = stop;
    }
    return encode_gap(c, s, start_offset, b, normalized, flags, first && start_offset == 0);
}

tp_status tp_tok_encode_ex(const tp_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids,
                           size_t *n_ids) {
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
    int add_special = (flags & TP_TOK_ADD_SPECIAL) != 0;
    if (add_special)
        for (int i = 0; i < t->n_prefix && !rc; i++) rc = tp_enc_push(c, t->prefix[i]);
    if (!rc && len) rc = split_added(c, (const uint8_t *)text, 0, len, 0, flags, 1);
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

tp_status tp_tok_encode(const tp_tokenizer *t, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n_ids) {
    return tp_tok_encode_ex(t, text, len, add_special ? TP_TOK_ADD_SPECIAL : 0, ids, n_ids);
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

/* ---- the decoder chain (HF decoders Replace, ByteFallback, Fuse, Strip, Metaspace) ---- */

typedef struct { char **s; size_t *n; size_t k; } toklist;

static void toklist_free(toklist *l) {
    for (size_t i = 0; i < l->k; i++) free(l->s[i]);
    free(l->s);
    free(l->n);
    memset(l, 0, sizeof *l);
}

static int set_tok(toklist *l, size_t i, buf *b) {
    char *p = b->p ? b->p : malloc(1);
    if (!p) return -1;
    if (!b->p) p[0] = 0;
    free(l->s[i]);
    l->s[i] = p;
    l->n[i] = b->n;
    memset(b, 0, sizeof *b);
    return 0;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* ByteFallback: runs of <0xNN> tokens become their bytes when those are UTF-8, else one U+FFFD
 * per byte token. */
static int dec_bytefallback(toklist *l) {
    toklist o = {calloc(l->k * 3 + 1, sizeof *o.s), calloc(l->k * 3 + 1, sizeof *o.n), 0};
    buf run = {0}, cur = {0};
    size_t run_n = 0;
    if (!o.s || !o.n) goto oom;
    for (size_t i = 0; i <= l->k; i++) {
        int hi = -1, lo = -1;
        if (i < l->k && l->n[i] == 6 && memcmp(l->s[i], "<0x", 3) == 0 && l->s[i][5] == '>') {
            hi = hexval(l->s[i][3]);
            lo = hexval(l->s[i][4]);
        }
        if (hi >= 0 && lo >= 0) {
            uint8_t v = (uint8_t)(hi * 16 + lo);
            if (buf_put(&run, &v, 1)) goto oom;
            run_n++;
            continue;
        }
        if (run_n) {
            if (tp_utf8_valid(run.p, run.n)) {
                if (set_tok(&o, o.k++, &run)) goto oom;
            } else
                for (size_t j = 0; j < run_n; j++) {
                    if (buf_put(&cur, "\xEF\xBF\xBD", 3) || set_tok(&o, o.k++, &cur)) goto oom;
                }
            free(run.p);
            memset(&run, 0, sizeof run);
            run_n = 0;
        }
        if (i < l->k) {
            o.s[o.k] = l->s[i];
            o.n[o.k++] = l->n[i];
            l->s[i] = NULL;
        }
    }
    toklist_free(l);
    *l = o;
    return 0;
oom:
    free(run.p);
    free(cur.p);
    toklist_free(&o);
    return -1;
}

static int dec_step(const tp_dec_step *d, toklist *l) {
    buf b = {0};
    switch (d->kind) {
    case TP_DS_BYTEFALLBACK: return dec_bytefallback(l);
    case TP_DS_FUSE: {
        for (size_t i = 0; i < l->k; i++)
            if (buf_put(&b, l->s[i], l->n[i])) { free(b.p); return -1; }
        for (size_t i = 1; i < l->k; i++) { free(l->s[i]); l->s[i] = NULL; }
        if (!l->k) return b.p ? (free(b.p), 0) : 0;
        l->k = 1;
        return set_tok(l, 0, &b);
    }
    case TP_DS_REPLACE: case TP_DS_METASPACE:
        for (size_t i = 0; i < l->k; i++) {
            const char *p = l->s[i];
            size_t n = l->n[i];
            const char *from = d->a, *to = d->kind == TP_DS_REPLACE ? d->b : " ";
            size_t lf = d->la, lt = d->kind == TP_DS_REPLACE ? d->lb : 1;
            if (d->kind == TP_DS_METASPACE && i == 0 && d->prepend_scheme != TP_PREPEND_NEVER) lt = 0;
            for (size_t j = 0; j < n;) {
                if (lf && j + lf <= n && memcmp(p + j, from, lf) == 0) {
                    if (buf_put(&b, to, lt)) { free(b.p); return -1; }
                    j += lf;
                } else {
                    if (buf_put(&b, p + j, 1)) { free(b.p); return -1; }
                    j++;
                }
            }
            if (set_tok(l, i, &b)) return -1;
        }
        return 0;
    case TP_DS_STRIP:
        for (size_t i = 0; i < l->k; i++) {
            const char *p = l->s[i];
            size_t a = 0, e = l->n[i];
            for (int j = 0; j < d->start && a + d->la <= e && memcmp(p + a, d->a, d->la) == 0; j++) a += d->la;
            for (int j = 0; j < d->stop && e >= a + d->la && memcmp(p + e - d->la, d->a, d->la) == 0; j++) e -= d->la;
            if (buf_put(&b, p + a, e - a) || set_tok(l, i, &b)) { free(b.p); return -1; }
        }
        return 0;
    case TP_DS_BYTELEVEL: break; /* only alone (TP_DEC_BYTELEVEL) */
    }
    return 0;
}

static tp_status decode_chain(const tp_tokenizer *t, const int32_t *ids, size_t n, int skip_special, buf *out) {
    toklist l = {calloc(n + 1, sizeof *l.s), calloc(n + 1, sizeof *l.n), 0};
    if (!l.s || !l.n) { toklist_free(&l); return tp_fail(TP_ERR_NOMEM, "out of memory while decoding"); }
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (skip_special && t->special[id]) continue;
        l.s[l.k] = malloc(t->piece_len[id] + 1);
        if (!l.s[l.k]) { toklist_free(&l); return tp_fail(TP_ERR_NOMEM, "out of memory while decoding"); }
        memcpy(l.s[l.k], t->piece[id], t->piece_len[id] + 1);
        l.n[l.k++] = t->piece_len[id];
    }
    for (int i = 0; i < t->n_dsteps; i++)
        if (dec_step(&t->dsteps[i], &l)) { toklist_free(&l); return tp_fail(TP_ERR_NOMEM, "out of memory while decoding"); }
    for (size_t i = 0; i < l.k; i++)
        if (buf_put(out, l.s[i], l.n[i])) { toklist_free(&l); return tp_fail(TP_ERR_NOMEM, "out of memory while decoding"); }
    toklist_free(&l);
    return TP_OK;
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
    }
    if (t->decoder == TP_DEC_CHAIN) {
        tp_status rc = decode_chain(t, ids, n, skip_special, &b);
        if (rc) { free(b.p); return rc; }
        n = 0; /* done: only the UTF-8 repair below */
    }
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
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

const char *tp_tok_kind(const tp_tokenizer *t) {
    if (t->model_kind == TP_MODEL_SPM) return "SPM (scores)";
    if (t->byte_level) return "byte-level BPE";
    return t->byte_fallback ? "BPE (byte fallback)" : "BPE";
}
