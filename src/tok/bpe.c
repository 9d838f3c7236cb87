/* BPE on one pre-token, as HF's BPE model does it: one symbol per byte-level character
 * (bytes missing from the vocabulary become unk or are dropped) or, without ByteLevel, per UTF-8
 * character (missing ones become <0xNN> byte tokens with byte_fallback, else unk), then merges applied lowest
 * rank first, ties to the leftmost, through a binary heap with lazy invalidation - O(n log n)
 * per word; whole-word lookup first when ignore_merges is set; a per-call cache of words
 * already seen. Also the per-call encoding context. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

#define CACHE_MAX_WORD 128          /* longer words are rarely repeated; not cached */
#define CACHE_MAX_SLOTS (1u << 17)  /* reset (not grown) past half of this */

tp_enc_ctx *tp_enc_ctx_new(const tp_tokenizer *t) {
    tp_enc_ctx *c = calloc(1, sizeof *c);
    if (c) c->t = t;
    return c;
}

static void cache_free(tp_word_cache *w) {
    free(w->hash);
    free(w->key_off);
    free(w->key_len);
    free(w->ids_off);
    free(w->ids_n);
    free(w->keys);
    free(w->ids);
    memset(w, 0, sizeof *w);
}

void tp_enc_ctx_free(tp_enc_ctx *c) {
    if (!c) return;
    free(c->ids);
    for (int i = 0; i <= TP_MAX_PRE_STEPS; i++) free(c->lv[i].v);
    for (int i = 0; i < TP_MAX_PRE_STEPS; i++) { free(c->pbuf[i]); free(c->mbuf[i]); }
    free(c->ubuf);
    if (c->md) pcre2_match_data_free(c->md);
    free(c->syms);
    free(c->heap);
    free(c->bl);
    cache_free(&c->cache);
    free(c);
}

tp_status tp_enc_push(tp_enc_ctx *c, int32_t id) {
    if (c->n_ids == c->cap_ids) {
        size_t cap = c->cap_ids ? 2 * c->cap_ids : 256;
        int32_t *p = realloc(c->ids, cap * sizeof *p);
        if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory for %zu token ids", cap);
        c->ids = p;
        c->cap_ids = cap;
    }
    c->ids[c->n_ids++] = id;
    return TP_OK;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

size_t tp_bytelevel_form(tp_enc_ctx *c, const uint8_t *w, size_t n) {
    if (n > SIZE_MAX / 2 - 1 || grow((void **)&c->bl, &c->bl_cap, 2 * n + 1, 1)) return (size_t)-1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += tp_utf8_encode(tp_byte_to_cp(w[i]), c->bl + k);
    c->bl[k] = 0;
    return k;
}

/* ---- word cache ---- */

static int cache_lookup(tp_enc_ctx *c, const uint8_t *w, size_t n, uint64_t h) {
    tp_word_cache *wc = &c->cache;
    if (!wc->cap) return 0;
    size_t mask = wc->cap - 1;
    for (size_t i = h & mask; wc->hash[i]; i = (i + 1) & mask) {
        if (wc->hash[i] == h && wc->key_len[i] == n && memcmp(wc->keys + wc->key_off[i], w, n) == 0) {
            for (uint32_t j = 0; j < wc->ids_n[i]; j++)
                if (tp_enc_push(c, wc->ids[wc->ids_off[i] + j])) return -1;
            return 1;
        }
    }
    return 0;
}

static void cache_insert(tp_enc_ctx *c, const uint8_t *w, size_t n, uint64_t h, const int32_t *ids, size_t n_ids) {
    tp_word_cache *wc = &c->cache;
    if (!wc->cap || (wc->n + 1) * 2 > wc->cap) {
        if (wc->cap >= CACHE_MAX_SLOTS) { /* full: start over */
            memset(wc->hash, 0, wc->cap * sizeof *wc->hash);
            wc->n = wc->keys_n = wc->ids_n_used = 0;
        } else {
            size_t cap = wc->cap ? 2 * wc->cap : 256;
            tp_word_cache g = {0};
            g.cap = cap;
            g.hash = calloc(cap, sizeof *g.hash);
            g.key_off = malloc(cap * sizeof *g.key_off);
            g.key_len = malloc(cap * sizeof *g.key_len);
            g.ids_off = malloc(cap * sizeof *g.ids_off);
            g.ids_n = malloc(cap * sizeof *g.ids_n);
            if (!g.hash || !g.key_off || !g.key_len || !g.ids_off || !g.ids_n) { cache_free(&g); return; }
            for (size_t i = 0; i < wc->cap; i++) {
                if (!wc->hash[i]) continue;
                size_t j = wc->hash[i] & (cap - 1);
                while (g.hash[j]) j = (j + 1) & (cap - 1);
                g.hash[j] = wc->hash[i];
                g.key_off[j] = wc->key_off[i];
                g.key_len[j] = wc->key_len[i];
                g.ids_off[j] = wc->ids_off[i];
                g.ids_n[j] = wc->ids_n[i];
            }
            g.n = wc->n;
            g.keys = wc->keys; g.keys_n = wc->keys_n; g.keys_cap = wc->keys_cap;
            g.ids = wc->ids; g.ids_n_used = wc->ids_n_used; g.ids_cap = wc->ids_cap;
            free(wc->hash); free(wc->key_off); free(wc->key_len); free(wc->ids_off); free(wc->ids_n);
            *wc = g;
        }
    }
    if (wc->keys_n + n > UINT32_MAX || wc->ids_n_used + n_ids > UINT32_MAX) return;
    if (grow((void **)&wc->keys, &wc->keys_cap, wc->keys_n + n, 1) ||
        grow((void **)&wc->ids, &wc->ids_cap, wc->ids_n_used + n_ids, sizeof *wc->ids))
        return; /* the cache is an optimisation: no memory, no entry */
    size_t mask = wc->cap - 1, i = h & mask;
    while (wc->hash[i]) i = (i + 1) & mask;
    wc->hash[i] = h;
    wc->key_off[i] = (uint32_t)wc->keys_n;
    wc->key_len[i] = (uint32_t)n;
    wc->ids_off[i] = (uint32_t)wc->ids_n_used;
    wc->ids_n[i] = (uint32_t)n_ids;
    memcpy(wc->keys + wc->keys_n, w, n);
    wc->keys_n += n;
    if (n_ids) memcpy(wc->ids + wc->ids_n_used, ids, n_ids * sizeof *ids);
    wc->ids_n_used += n_ids;
    wc->n++;
}

/* ---- heap of merge candidates: lowest rank first, then lowest position ---- */

static inline int cand_less(const tp_bpe_cand *x, const tp_bpe_cand *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(tp_bpe_cand *h, size_t *n, tp_bpe_cand v) {
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&v, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static tp_bpe_cand heap_pop(tp_bpe_cand *h, size_t *n) {
    tp_bpe_cand top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const tp_bpe_cand *best = &v;
        if (l < *n && cand_less(&h[l], best)) { m = l; best = &h[l]; }
        if (r < *n && cand_less(&h[r], best)) { m = r; }
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = v;
    return top;
}

static void try_pair(const tp_tokenizer *t, tp_bpe_sym *s, int32_t pos, tp_bpe_cand *h, size_t *hn) {
    int32_t nx = s[pos].next, rank, merged;
    if (nx < 0) return;
    if (tp_pairmap_get(&t->merges, s[pos].id, s[nx].id, &rank, &merged))
        heap_push(h, hn, (tp_bpe_cand){rank, pos, merged});
}

/* Initial symbols of a byte-level word: one per byte's character; an absent byte becomes unk
 * (fused if fuse_unk) or is dropped. */
static int32_t symbols_bytelevel(const tp_tokenizer *t, const uint8_t *w, size_t n, tp_bpe_sym *s) {
    int32_t ns = 0;
    int pending_unk = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id < 0) {
            if (t->model_unk < 0) continue;
            if (pending_unk && !t->fuse_unk) s[ns++] = (tp_bpe_sym){t->model_unk, -1, -1};
            pending_unk = 1;
            continue;
        }
        if (pending_unk) { s[ns++] = (tp_bpe_sym){t->model_unk, -1, -1}; pending_unk = 0; }
        s[ns++] = (tp_bpe_sym){id, -1, -1};
    }
    if (pending_unk) s[ns++] = (tp_bpe_sym){t->model_unk, -1, -1};
    return ns;
}

/* Initial symbols of a word of UTF-8 characters (HF BPE without ByteLevel): the character's id,
 * else with byte_fallback its bytes as <0xNN> tokens when all exist, else unk (consecutive unks
 * fused when fuse_unk), else nothing. */
static int32_t symbols_chars(const tp_tokenizer *t, const uint8_t *w, size_t n, tp_bpe_sym *s) {
    int32_t ns = 0;
    int pending_unk = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t bad, l = tp_utf8_decode(w + i, n - i, &cp, &bad);
        if (!l) l = bad;
        int32_t id = tp_strmap_get(&t->vocab, (const char *)w + i, l);
        if (id >= t->n_model) id = -1;
        if (id >= 0) {
            if (pending_unk) { s[ns++] = (tp_bpe_sym){t->model_unk, -1, -1}; pending_unk = 0; }
            s[ns++] = (tp_bpe_sym){id, -1, -1};
            i += l;
            continue;
        }
        int all = t->byte_fallback;
        for (size_t j = 0; j < l && all; j++) all = t->byte_tok[w[i + j]] >= 0;
        if (all) {
            if (pending_unk) { s[ns++] = (tp_bpe_sym){t->model_unk, -1, -1}; pending_unk = 0; }
            for (size_t j = 0; j < l; j++) s[ns++] = (tp_bpe_sym){t->byte_tok[w[i + j]], -1, -1};
        } else if (t->model_unk >= 0) {
            if (pending_unk && !t->fuse_unk) s[ns++] = (tp_bpe_sym){t->model_unk, -1, -1};
            pending_unk = 1;
        }
        i += l;
    }
    if (pending_unk) s[ns++] = (tp_bpe_sym){t->model_unk, -1, -1};
    return ns;
}

/* The word as one vocabulary entry when that is how it is taken whole (ignore_merges, or
 * llama.cpp's Gemma 4 rule for runs of newlines); -1 otherwise. */
static int32_t whole_word(tp_enc_ctx *c, const uint8_t *w, size_t n, tp_status *rc) {
    const tp_tokenizer *t = c->t;
    *rc = TP_OK;
    if (t->byte_level) {
        if (!t->ignore_merges) return -1;
        size_t bl = tp_bytelevel_form(c, w, n);
        if (bl == (size_t)-1) { *rc = tp_fail(TP_ERR_NOMEM, "out of memory in BPE"); return -1; }
        return tp_strmap_get(&t->vocab, c->bl, bl);
    }
    int take = t->ignore_merges;
    if (!take && t->nl_whole) {
        take = 1;
        for (size_t i = 0; i < n && take; i++) take = w[i] == '\n';
    }
    if (!take) return -1;
    int32_t id = tp_strmap_get(&t->vocab, (const char *)w, n);
    return id < t->n_model ? id : -1;
}

tp_status tp_bpe_word(tp_enc_ctx *c, const uint8_t *w, size_t n) {
    const tp_tokenizer *t = c->t;
    if (t->byte_level && n == 1 && t->byte_id[w[0]] >= 0) return tp_enc_push(c, t->byte_id[w[0]]);
    tp_status wrc;
    int32_t whole = whole_word(c, w, n, &wrc);
    if (wrc) return wrc;
    if (whole >= 0) return tp_enc_push(c, whole);
    uint64_t h = 0;
    if (n <= CACHE_MAX_WORD) {
        h = tp_hash_bytes(w, n) | 1; /* 0 marks an empty slot */
        int r = cache_lookup(c, w, n, h);
        if (r < 0) return tp_fail(TP_ERR_NOMEM, "out of memory for token ids");
        if (r) return TP_OK;
    }
    if (n > INT32_MAX / 4 || grow((void **)&c->syms, &c->syms_cap, n, sizeof *c->syms) ||
        grow((void **)&c->heap, &c->heap_cap, 3 * n + 1, sizeof *c->heap))
        return tp_fail(TP_ERR_NOMEM, "out of memory for a word of %zu bytes", n);
    tp_bpe_sym *s = c->syms;
    int32_t ns = t->byte_level ? symbols_bytelevel(t, w, n, s) : symbols_chars(t, w, n, s);
    for (int32_t i = 0; i < ns; i++) { s[i].prev = i - 1; s[i].next = i + 1 < ns ? i + 1 : -1; }

    size_t hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++) try_pair(t, s, i, c->heap, &hn);
    while (hn) {
        tp_bpe_cand top = heap_pop(c->heap, &hn);
        tp_bpe_sym *a = &s[top.pos];
        if (a->id < 0 || a->next < 0) continue;
        int32_t rank, merged;
        if (!tp_pairmap_get(&t->merges, a->id, s[a->next].id, &rank, &merged) || merged != top.merged)
            continue; /* stale: one side changed since this candidate was queued */
        int32_t b = a->next;
        a->id = merged;
        a->next = s[b].next;
        s[b].id = -1;
        if (a->next >= 0) s[a->next].prev = top.pos;
        if (a->prev >= 0) try_pair(t, s, a->prev, c->heap, &hn);
        try_pair(t, s, top.pos, c->heap, &hn);
    }
    size_t first = c->n_ids;
    for (int32_t i = ns ? 0 : -1; i >= 0; i = s[i].next) {
        tp_status rc = tp_enc_push(c, s[i].id);
        if (rc) return rc;
    }
    if (h && c->ids) cache_insert(c, w, n, h, c->ids + first, c->n_ids - first);
    return TP_OK;
}
