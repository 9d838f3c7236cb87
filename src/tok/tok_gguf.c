/* The tokenizer from and to GGUF metadata (tokenizer.ggml.*), llama.cpp's conventions:
 * model "gpt2" (byte-level BPE), a pre-tokenizer name standing for an HF pipeline, tokens,
 * "a b" merges, token types (3 = control -> special added token, 4 = user-defined -> added
 * token), bos/eos/unk/pad ids and add_bos_token / add_eos_token. */
#include "tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GGUF_TOK_NORMAL = 1, GGUF_TOK_UNKNOWN = 2, GGUF_TOK_CONTROL = 3, GGUF_TOK_USER = 4, GGUF_TOK_UNUSED = 5 };

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
    if (n != 4 || memcmp(s, "gpt2", 4) != 0)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model \"%.*s\" is not supported (only gpt2, byte-level BPE)",
                       src, (int)(n > 64 ? 64 : n), s);
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

    if ((rc = tp_tok_alloc_vocab(t, (int)nt, (int)nt))) return rc;
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
        if ((ty == GGUF_TOK_CONTROL || ty == GGUF_TOK_USER) && e->len) n_added++;
    }

    /* control and user-defined tokens are matched in the text before anything else */
    t->added = calloc((size_t)(n_added ? n_added : 1), sizeof *t->added);
    if (!t->added) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; types && i < nt; i++) {
        int64_t ty = tp_gguf_arr_i64(types, i);
        if ((ty != GGUF_TOK_CONTROL && ty != GGUF_TOK_USER) || !t->piece_len[i]) continue;
        tp_added_token *a = &t->added[t->n_added++];
        a->content = malloc(t->piece_len[i] + 1);
        if (!a->content) return tp_fail(TP_ERR_NOMEM, "out of memory");
        memcpy(a->content, t->piece[i], t->piece_len[i] + 1);
        a->len = t->piece_len[i];
        a->id = (int32_t)i;
        a->special = ty == GGUF_TOK_CONTROL;
        t->special[i] = a->special;
        t->is_added[i] = 1;
    }

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
    if ((rc = tp_tok_set_pre_named(t, name, src))) return rc;

    t->decoder = TP_DEC_BYTELEVEL;
    t->model_unk = -1;
    if ((rc = get_id(g, "tokenizer.ggml.bos_token_id", &t->bos)) || (rc = get_id(g, "tokenizer.ggml.eos_token_id", &t->eos)) ||
        (rc = get_id(g, "tokenizer.ggml.unknown_token_id", &t->unk)) ||
        (rc = get_id(g, "tokenizer.ggml.padding_token_id", &t->pad)))
        return rc;
    /* llama.cpp adds BOS by default for Llama 3; everything else only when the file says so */
    int add_bos = t->ignore_merges, add_eos = 0;
    if ((rc = get_flag(g, "tokenizer.ggml.add_bos_token", &add_bos)) || (rc = get_flag(g, "tokenizer.ggml.add_eos_token", &add_eos)))
        return rc;
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

tp_status tp_tok_to_gguf(const tp_tokenizer *t, tp_gguf_writer *w) {
    if (!t || !w) return tp_fail(TP_ERR_ARG, "tp_tok_to_gguf: NULL argument");
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
