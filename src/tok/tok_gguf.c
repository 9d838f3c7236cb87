/* The tokenizer from and to GGUF metadata (tokenizer.ggml.*), llama.cpp's conventions:
 * model "gpt2" (byte-level BPE, a pre-tokenizer name standing for an HF pipeline, "a b"
 * merges), "llama" (SentencePiece-style BPE: piece scores, <0xNN> byte tokens, spaces as
 * U+2581, add_space_prefix) or "gemma4" (BPE with merges on U+2581-escaped UTF-8, newline-split,
 * byte fallback); tokens, token types (2 = unknown and 3 = control -> special added token,
 * 4 = user-defined -> added token, 6 = byte), bos/eos/unk/pad ids and add_bos_token /
 * add_eos_token, with llama.cpp's defaults where a key is absent. */
#include "tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GGUF_TOK_NORMAL = 1, GGUF_TOK_UNKNOWN = 2, GGUF_TOK_CONTROL = 3, GGUF_TOK_USER = 4, GGUF_TOK_UNUSED = 5,
       GGUF_TOK_BYTE = 6 };
enum { KIND_GPT2, KIND_LLAMA, KIND_GEMMA4 };

static const char U2581[] = "\xE2\x96\x81"; /* the SentencePiece space, U+2581 */

static tp_status add_norm(tp_tokenizer *t, tp_norm_kind k, const char *a, const char *b) {
    tp_norm_step *p = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *p);
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    t->norm = p;
    tp_norm_step *st = &t->norm[t->n_norm];
    memset(st, 0, sizeof *st);
    st->kind = k;
    st->a = a ? strdup(a) : NULL;
    st->b = b ? strdup(b) : NULL;
    st->la = a ? strlen(a) : 0;
    st->lb = b ? strlen(b) : 0;
    t->n_norm++;
    if ((a && !st->a) || (b && !st->b)) return tp_fail(TP_ERR_NOMEM, "out of memory");
    return TP_OK;
}

static tp_status add_dec(tp_tokenizer *t, tp_dec_kind k, const char *a, const char *b, int start, int stop) {
    tp_dec_step *p = realloc(t->dsteps, (size_t)(t->n_dsteps + 1) * sizeof *p);
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    t->dsteps = p;
    tp_dec_step *d = &t->dsteps[t->n_dsteps];
    memset(d, 0, sizeof *d);
    d->kind = k;
    d->a = a ? strdup(a) : NULL;
    d->b = b ? strdup(b) : NULL;
    d->la = a ? strlen(a) : 0;
    d->lb = b ? strlen(b) : 0;
    d->start = start;
    d->stop = stop;
    t->n_dsteps++;
    if ((a && !d->a) || (b && !d->b)) return tp_fail(TP_ERR_NOMEM, "out of memory");
    return TP_OK;
}

/* The HF decoder SentencePiece conversions use: U+2581 -> space, <0xNN> runs -> bytes, one
 * string, and (with a prefix space) one leading space stripped. */
static tp_status spm_decoder(tp_tokenizer *t, int strip) {
    tp_status rc;
    t->decoder = TP_DEC_CHAIN;
    if ((rc = add_dec(t, TP_DS_REPLACE, U2581, " ", 0, 0)) || (rc = add_dec(t, TP_DS_BYTEFALLBACK, NULL, NULL, 0, 0)) ||
        (rc = add_dec(t, TP_DS_FUSE, NULL, NULL, 0, 0)))
        return rc;
    return strip ? add_dec(t, TP_DS_STRIP, " ", NULL, 1, 0) : TP_OK;
}

static tp_status get_str(const tp_gguf *g, const char *key, const char **s, size_t *n, int required) {
    const tp_gguf_kv *kv = tp_gguf_find(g, key);
    if (!kv) {
        *s = NULL;
        return required ? tp_fail(TP_ERR_FORMAT, "%s: missing %s", g->path, key) : TP_OK;
    }
    if (kv->type != TP_GGUF_STRING) return tp_fail(TP_ERR_FORMAT, "%s: %s is not a string", g->path, key);
    *s = kv->v.str.data;
    *n = (size_t)kv->v.str.len;
    return TP_OK;
}

static const tp_gguf_kv *get_arr(const tp_gguf *g, const char *key, tp_gguf_vtype et, int any_int, tp_status *rc) {
    const tp_gguf_kv *kv = tp_gguf_find(g, key);
    *rc = TP_OK;
    if (!kv) return NULL;
    int ok = kv->type == TP_GGUF_ARRAY &&
             (kv->v.arr.type == et || (any_int && kv->v.arr.type != TP_GGUF_STRING && kv->v.arr.type != TP_GGUF_FLOAT32 &&
                                       kv->v.arr.type != TP_GGUF_FLOAT64 && kv->v.arr.type != TP_GGUF_BOOL));
    if (!ok) *rc = tp_fail(TP_ERR_FORMAT, "%s: %s is not an array of %s", g->path, key, tp_gguf_vtype_name(et));
    return ok ? kv : NULL;
}

static tp_status get_id(const tp_gguf *g, const char *key, int32_t *out) {
    if (!tp_gguf_find(g, key)) return TP_OK;
    uint32_t v;
    tp_status rc = tp_gguf_get_u32(g, key, &v);
    if (rc) return rc;
    *out = v > INT32_MAX ? INT32_MAX : (int32_t)v; /* range-checked in tp_tok_finish */
    return TP_OK;
}

static tp_status get_flag(const tp_gguf *g, const char *key, int *out) {
    if (!tp_gguf_find(g, key)) return TP_OK;
    return tp_gguf_get_bool(g, key, out);
}

static tp_status load(tp_tokenizer *t, const tp_gguf *g) {
    const char *src = g->path ? g->path : "GGUF";
    const char *s = NULL;
    size_t n = 0;
    tp_status rc;
    if ((rc = get_str(g, "tokenizer.ggml.model", &s, &n, 1))) return rc;
    int kind;
    if (n == 4 && memcmp(s, "gpt2", 4) == 0) kind = KIND_GPT2;
    else if (n == 5 && memcmp(s, "llama", 5) == 0) kind = KIND_LLAMA;
    else if (n == 6 && memcmp(s, "gemma4", 6) == 0) kind = KIND_GEMMA4;
    else
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model \"%.*s\" is not supported (supported: gpt2 = "
                       "byte-level BPE, llama = SentencePiece-style BPE, gemma4; not bert/WordPiece, t5/Unigram, rwkv, "
                       "plamo2, ...)", src, (int)(n > 64 ? 64 : n), s);
    snprintf(t->model_name, sizeof t->model_name, "%.*s", (int)n, s);
    const tp_gguf_kv *tokens = get_arr(g, "tokenizer.ggml.tokens", TP_GGUF_STRING, 0, &rc);
    if (rc) return rc;
    if (!tokens) return tp_fail(TP_ERR_FORMAT, "%s: missing tokenizer.ggml.tokens", src);
    uint64_t nt = tokens->v.arr.n;
    if (nt == 0 || nt > (1u << 24))
        return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries (expected 1..16M)", src,
                       (unsigned long long)nt);
    const tp_gguf_kv *types = get_arr(g, "tokenizer.ggml.token_type", TP_GGUF_INT32, 1, &rc);
    if (rc) return rc;
    if (types && types->v.arr.n != nt)
        return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %llu entries, tokens has %llu", src,
                       (unsigned long long)types->v.arr.n, (unsigned long long)nt);
    const tp_gguf_kv *merges = get_arr(g, "tokenizer.ggml.merges", TP_GGUF_STRING, 0, &rc);
    if (rc) return rc;

    for (uint64_t i = 0; types && i < nt; i++) {
        int64_t ty = tp_gguf_arr_i64(types, i);
        if (ty < 0 || ty > GGUF_TOK_BYTE)
            return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.token_type[%llu] = %lld is not a token type (0..6)", src,
                           (unsigned long long)i, (long long)ty);
    }
    const tp_gguf_kv *scores = get_arr(g, "tokenizer.ggml.scores", TP_GGUF_FLOAT32, 0, &rc);
    if (rc) return rc;
    if (scores && scores->v.arr.n != nt)
        return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.scores has %llu entries, tokens has %llu", src,
                       (unsigned long long)scores->v.arr.n, (unsigned long long)nt);
    if (kind == KIND_LLAMA && !scores)
        return tp_fail(TP_ERR_FORMAT, "%s: missing tokenizer.ggml.scores (required by tokenizer model llama)", src);
    if (scores && kind != KIND_GPT2) { /* used by llama; kept for gemma4 so that writing it back keeps them */
        t->scores = malloc((size_t)nt * sizeof *t->scores);
        if (!t->scores) return tp_fail(TP_ERR_NOMEM, "out of memory for scores");
        for (uint64_t i = 0; i < nt; i++) {
            double v = tp_gguf_arr_f64(scores, i);
            if (v != v)
                return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.scores[%llu] is NaN", src, (unsigned long long)i);
            t->scores[i] = (float)v;
        }
    }

    if ((rc = tp_tok_alloc_vocab(t, (int)nt, (int)nt))) return rc;
    t->gguf_type = malloc((size_t)nt * sizeof *t->gguf_type);
    if (!t->gguf_type) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < nt; i++) t->gguf_type[i] = types ? (int32_t)tp_gguf_arr_i64(types, i) : GGUF_TOK_NORMAL;
    size_t total = 0;
    for (uint64_t i = 0; i < nt; i++) {
        if (tokens->v.arr.strs[i].len > (1u << 20))
            return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] is %llu bytes long", src,
                           (unsigned long long)i, (unsigned long long)tokens->v.arr.strs[i].len);
        total += (size_t)tokens->v.arr.strs[i].len + 1;
    }
    t->mem = malloc(total);
    int n_added = 0;
    if (!t->mem) return tp_fail(TP_ERR_NOMEM, "out of memory for the vocabulary");
    for (uint64_t i = 0, off = 0; i < nt; i++) {
        const tp_gguf_str *e = &tokens->v.arr.strs[i];
        memcpy(t->mem + off, e->data, (size_t)e->len);
        t->mem[off + e->len] = 0;
        t->piece[i] = t->mem + off;
        t->piece_len[i] = (uint32_t)e->len;
        off += e->len + 1;
        int r = tp_strmap_put(&t->vocab, t->piece[i], (size_t)e->len, (int32_t)i);
        if (r < 0) return tp_fail(TP_ERR_NOMEM, "out of memory for the vocabulary");
        if (r == 0)
            return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] \"%.64s\" duplicates an earlier token", src,
                           (unsigned long long)i, t->piece[i]);
        int64_t ty = types ? tp_gguf_arr_i64(types, i) : GGUF_TOK_NORMAL;
        if ((ty == GGUF_TOK_CONTROL || ty == GGUF_TOK_USER || ty == GGUF_TOK_UNKNOWN) && e->len) n_added++;
    }

    /* control and user-defined tokens are matched in the text before anything else */
    t->added = calloc((size_t)(n_added ? n_added : 1), sizeof *t->added);
    if (!t->added) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; types && i < nt; i++) {
        int64_t ty = tp_gguf_arr_i64(types, i);
        if ((ty != GGUF_TOK_CONTROL && ty != GGUF_TOK_USER && ty != GGUF_TOK_UNKNOWN) || !t->piece_len[i]) continue;
        tp_added_token *a = &t->added[t->n_added++];
        a->content = malloc(t->piece_len[i] + 1);
        if (!a->content) return tp_fail(TP_ERR_NOMEM, "out of memory");
        memcpy(a->content, t->piece[i], t->piece_len[i] + 1);
        a->len = t->piece_len[i];
        a->id = (int32_t)i;
        a->special = ty != GGUF_TOK_USER;
        t->special[i] = a->special;
        t->is_added[i] = 1;
    }

    if (kind == KIND_GEMMA4 && !merges)
        return tp_fail(TP_ERR_FORMAT, "%s: missing tokenizer.ggml.merges (required by tokenizer model gemma4)", src);
    if (kind == KIND_LLAMA) merges = NULL; /* the SPM model merges by score; llama.cpp ignores merges here */
    uint64_t nm = merges ? merges->v.arr.n : 0;
    if (nm > (1u << 24)) return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.merges has %llu entries", src, (unsigned long long)nm);
    t->merge_pairs = malloc((size_t)(nm ? nm : 1) * 2 * sizeof *t->merge_pairs);
    if (!t->merge_pairs) return tp_fail(TP_ERR_NOMEM, "out of memory for merges");
    if ((rc = tp_pairmap_init(&t->merges, (size_t)nm))) return rc;
    t->n_merges = (int)nm;
    for (uint64_t r = 0; r < nm; r++) {
        const tp_gguf_str *e = &merges->v.arr.strs[r];
        /* like llama.cpp: the separator is the first space after the first byte */
        const char *sp = e->len > 1 ? memchr(e->data + 1, ' ', (size_t)e->len - 1) : NULL;
        if (!sp || sp + 1 == e->data + e->len)
            return tp_fail(TP_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] \"%.*s\" is not two tokens separated by a space",
                           src, (unsigned long long)r, (int)(e->len > 64 ? 64 : e->len), e->data);
        size_t la = (size_t)(sp - e->data);
        if ((rc = tp_tok_add_merge(t, e->data, la, sp + 1, (size_t)e->len - la - 1, src, (int)r))) return rc;
    }

    const char *pre = NULL;
    size_t pn = 0;
    if ((rc = get_str(g, "tokenizer.ggml.pre", &pre, &pn, 0))) return rc;
    char name[64];
    snprintf(name, sizeof name, "%.*s", pre ? (int)(pn > 63 ? 63 : pn) : 7, pre ? pre : "default");
    int add_space_prefix = kind == KIND_LLAMA;
    if ((rc = get_flag(g, "tokenizer.ggml.add_space_prefix", &add_space_prefix))) return rc;
    t->model_unk = -1;
    if (kind == KIND_GPT2) {
        if ((rc = tp_tok_set_pre_named(t, name, src))) return rc;
        t->decoder = TP_DEC_BYTELEVEL;
    } else if (kind == KIND_LLAMA) {
        /* llama.cpp: " " before every piece of text (first, or after a token matched as text),
         * spaces escaped to U+2581, then the score-based merges */
        if (add_space_prefix && (rc = add_norm(t, TP_NORM_PREPEND, " ", NULL))) return rc;
        if ((rc = add_norm(t, TP_NORM_REPLACE, " ", U2581))) return rc;
        if ((rc = spm_decoder(t, add_space_prefix))) return rc;
        t->model_kind = TP_MODEL_SPM;
        t->byte_fallback = 1;
        t->bos = 1; t->eos = 2; t->unk = 0; /* llama.cpp's defaults for this model */
        snprintf(t->pre_name, sizeof t->pre_name, "%.31s", name);
    } else {
        /* gemma4: spaces escaped, text cut into runs of newlines and runs of the rest, BPE by
         * merge rank on UTF-8 characters, <0xNN> for characters not in the vocabulary */
        if (add_space_prefix && (rc = add_norm(t, TP_NORM_PREPEND, " ", NULL))) return rc;
        if ((rc = add_norm(t, TP_NORM_REPLACE, " ", U2581))) return rc;
        if ((rc = tp_tok_set_pre_named(t, "gemma4", src))) return rc;
        if ((rc = spm_decoder(t, add_space_prefix))) return rc;
        t->byte_fallback = 1;
        t->nl_whole = 1;
    }
    t->add_space_prefix = add_space_prefix;

    if ((rc = get_id(g, "tokenizer.ggml.bos_token_id", &t->bos)) || (rc = get_id(g, "tokenizer.ggml.eos_token_id", &t->eos)) ||
        (rc = get_id(g, "tokenizer.ggml.unknown_token_id", &t->unk)) ||
        (rc = get_id(g, "tokenizer.ggml.padding_token_id", &t->pad)))
        return rc;
    /* llama.cpp adds BOS by default for Llama 3 and SPM; everything else only when the file says
     * so, except Gemma 4, where it always does */
    int add_bos = t->ignore_merges || kind == KIND_LLAMA, add_eos = 0;
    if ((rc = get_flag(g, "tokenizer.ggml.add_bos_token", &add_bos)) || (rc = get_flag(g, "tokenizer.ggml.add_eos_token", &add_eos)))
        return rc;
    if (kind == KIND_GEMMA4) add_bos = 1;
    if (kind != KIND_GPT2) t->model_unk = t->unk >= 0 && t->unk < t->n_vocab ? t->unk : -1;
    if (kind == KIND_GEMMA4) t->model_unk = -1; /* llama.cpp's BPE drops what has no byte token */
    if (add_bos && t->bos >= 0 && t->bos < t->n_vocab) {
        t->prefix = malloc(sizeof *t->prefix);
        if (!t->prefix) return tp_fail(TP_ERR_NOMEM, "out of memory");
        t->prefix[0] = t->bos;
        t->n_prefix = 1;
    }
    if (add_eos && t->eos >= 0 && t->eos < t->n_vocab) {
        t->suffix = malloc(sizeof *t->suffix);
        if (!t->suffix) return tp_fail(TP_ERR_NOMEM, "out of memory");
        t->suffix[0] = t->eos;
        t->n_suffix = 1;
    }
    return tp_tok_finish(t, src);
}

tp_status tp_tok_load_gguf(const tp_gguf *g, tp_tokenizer **out) {
    if (!g || !out) return tp_fail(TP_ERR_ARG, "tp_tok_load_gguf: NULL argument");
    *out = NULL;
    tp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return tp_fail(TP_ERR_NOMEM, "out of memory");
    t->bos = t->eos = t->unk = t->pad = -1;
    tp_status rc = load(t, g);
    if (rc) { tp_tok_free(t); return rc; }
    *out = t;
    return TP_OK;
}

/* The GGUF "llama" / "gemma4" kinds, written back as they were loaded (types, scores, merges,
 * flags), so llama.cpp and taper read the same tokenizer again. */
static tp_status to_gguf_spm(const tp_tokenizer *t, tp_gguf_writer *w) {
    int n = t->n_vocab;
    if (n != t->n_model || !t->gguf_type)
        return tp_fail(TP_ERR_UNSUPPORTED, "tp_tok_to_gguf: added tokens outside a GGUF vocabulary");
    const char **toks = malloc((size_t)n * sizeof *toks);
    const char **mg = malloc((size_t)(t->n_merges ? t->n_merges : 1) * sizeof *mg);
    char *mmem = NULL;
    tp_status rc = TP_OK;
    if (!toks || !mg) { rc = tp_fail(TP_ERR_NOMEM, "out of memory"); goto done; }
    for (int i = 0; i < n; i++) toks[i] = t->piece[i];
    size_t total = 0;
    for (int r = 0; r < t->n_merges; r++)
        total += t->piece_len[t->merge_pairs[2 * r]] + t->piece_len[t->merge_pairs[2 * r + 1]] + 2;
    mmem = malloc(total ? total : 1);
    if (!mmem) { rc = tp_fail(TP_ERR_NOMEM, "out of memory"); goto done; }
    for (size_t r = 0, off = 0; r < (size_t)t->n_merges; r++) {
        int32_t a = t->merge_pairs[2 * r], b = t->merge_pairs[2 * r + 1];
        mg[r] = mmem + off;
        memcpy(mmem + off, t->piece[a], t->piece_len[a]);
        mmem[off + t->piece_len[a]] = ' ';
        memcpy(mmem + off + t->piece_len[a] + 1, t->piece[b], t->piece_len[b] + 1);
        off += t->piece_len[a] + t->piece_len[b] + 2;
    }
    if ((rc = tp_gguf_set_str(w, "tokenizer.ggml.model", t->model_name)) ||
        (strcmp(t->model_name, "llama") == 0 && (rc = tp_gguf_set_str(w, "tokenizer.ggml.pre", t->pre_name))) ||
        (rc = tp_gguf_set_str_arr(w, "tokenizer.ggml.tokens", toks, (uint64_t)n)) ||
        (rc = tp_gguf_set_arr(w, "tokenizer.ggml.token_type", TP_GGUF_INT32, t->gguf_type, (uint64_t)n)) ||
        (t->scores && (rc = tp_gguf_set_arr(w, "tokenizer.ggml.scores", TP_GGUF_FLOAT32, t->scores, (uint64_t)n))) ||
        (t->n_merges && (rc = tp_gguf_set_str_arr(w, "tokenizer.ggml.merges", mg, (uint64_t)t->n_merges))) ||
        (rc = tp_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", t->add_space_prefix)))
        goto done;
    static const char *keys[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                 "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"};
    const int32_t ids[] = {t->bos, t->eos, t->unk, t->pad};
    for (int i = 0; i < 4 && !rc; i++)
        if (ids[i] >= 0) rc = tp_gguf_set_u32(w, keys[i], (uint32_t)ids[i]);
    if (!rc) rc = tp_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", t->n_prefix > 0);
    if (!rc) rc = tp_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", t->n_suffix > 0);
done:
    free(toks);
    free(mg);
    free(mmem);
    return rc;
}

tp_status tp_tok_to_gguf(const tp_tokenizer *t, tp_gguf_writer *w) {
    if (!t || !w) return tp_fail(TP_ERR_ARG, "tp_tok_to_gguf: NULL argument");
    int spm_kind = strcmp(t->model_name, "llama") == 0 || strcmp(t->model_name, "gemma4") == 0;
    if (!t->byte_level && !spm_kind)
        return tp_fail(TP_ERR_UNSUPPORTED, "tp_tok_to_gguf: a tokenizer.json BPE on UTF-8 characters (byte fallback, "
                       "Metaspace / Prepend / Replace normalizers) has no GGUF form that llama.cpp tokenizes the same "
                       "way; not written");
    for (int i = 0; i < t->n_norm && t->byte_level; i++)
        if (t->norm[i].kind != TP_NORM_NFC)
            return tp_fail(TP_ERR_UNSUPPORTED, "tp_tok_to_gguf: the %s normalizer cannot be written as GGUF metadata",
                           tp_norm_name(t->norm[i].kind));
    if (spm_kind) return to_gguf_spm(t, w);
    if (strcmp(t->pre_name, "custom") == 0)
        return tp_fail(TP_ERR_UNSUPPORTED, "tp_tok_to_gguf: this pre-tokenizer has no llama.cpp name, so a GGUF "
                       "could not say how to tokenize");
    if (t->model_unk >= 0 || t->n_prefix > 1 || t->n_suffix > 1 || (t->n_prefix && t->prefix[0] != t->bos) ||
        (t->n_suffix && t->suffix[0] != t->eos))
        return tp_fail(TP_ERR_UNSUPPORTED, "tp_tok_to_gguf: BPE unk_token or a post-processor other than BOS/EOS "
                       "cannot be written as GGUF metadata");
    int n = t->n_vocab;
    const char **toks = malloc((size_t)n * sizeof *toks);
    int32_t *types = malloc((size_t)n * sizeof *types);
    char **pads = calloc((size_t)n, sizeof *pads);
    const char **mg = malloc((size_t)(t->n_merges ? t->n_merges : 1) * sizeof *mg);
    char *mmem = NULL;
    tp_status rc = TP_OK;
    if (!toks || !types || !pads || !mg) { rc = tp_fail(TP_ERR_NOMEM, "out of memory"); goto done; }
    for (int i = 0; i < n && !rc; i++) {
        types[i] = !t->is_added[i] ? GGUF_TOK_NORMAL : t->special[i] ? GGUF_TOK_CONTROL : GGUF_TOK_USER;
        if (t->piece[i]) { toks[i] = t->piece[i]; continue; }
        /* a hole in the ids: the name HF's converter gives it */
        pads[i] = malloc(24);
        if (!pads[i]) { rc = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
        snprintf(pads[i], 24, "[PAD%d]", i);
        toks[i] = pads[i];
        types[i] = GGUF_TOK_UNUSED;
    }
    if (rc) goto done;
    size_t total = 0;
    for (int r = 0; r < t->n_merges; r++)
        total += t->piece_len[t->merge_pairs[2 * r]] + t->piece_len[t->merge_pairs[2 * r + 1]] + 2;
    mmem = malloc(total ? total : 1);
    if (!mmem) { rc = tp_fail(TP_ERR_NOMEM, "out of memory"); goto done; }
    for (int r = 0, off = 0; r < t->n_merges; r++) {
        int32_t a = t->merge_pairs[2 * r], b = t->merge_pairs[2 * r + 1];
        mg[r] = mmem + off;
        memcpy(mmem + off, t->piece[a], t->piece_len[a]);
        mmem[off + (int)t->piece_len[a]] = ' ';
        memcpy(mmem + off + t->piece_len[a] + 1, t->piece[b], t->piece_len[b] + 1);
        off += (int)(t->piece_len[a] + t->piece_len[b] + 2);
    }
    if ((rc = tp_gguf_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = tp_gguf_set_str(w, "tokenizer.ggml.pre", t->pre_name)) ||
        (rc = tp_gguf_set_str_arr(w, "tokenizer.ggml.tokens", toks, (uint64_t)n)) ||
        (rc = tp_gguf_set_arr(w, "tokenizer.ggml.token_type", TP_GGUF_INT32, types, (uint64_t)n)) ||
        (rc = tp_gguf_set_str_arr(w, "tokenizer.ggml.merges", mg, (uint64_t)t->n_merges)))
        goto done;
    static const char *keys[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                 "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"};
    const int32_t ids[] = {t->bos, t->eos, t->unk, t->pad};
    for (int i = 0; i < 4 && !rc; i++)
        if (ids[i] >= 0) rc = tp_gguf_set_u32(w, keys[i], (uint32_t)ids[i]);
    if (!rc) rc = tp_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", t->n_prefix > 0);
    if (!rc) rc = tp_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", t->n_suffix > 0);
done:
    if (pads)
        for (int i = 0; i < n; i++) free(pads[i]);
    free(pads);
    free(toks);
    free(types);
    free(mg);
    free(mmem);
    return rc;
}
