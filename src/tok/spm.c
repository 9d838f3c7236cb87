/* SentencePiece-style BPE as llama.cpp runs it for GGUF tokenizer model "llama": the piece
 * (already normalized: "▁" for spaces, prefix added) starts as one symbol per UTF-8
 * character; repeatedly the adjacent pair whose concatenation is a vocabulary entry with the
 * highest score is merged (ties to the leftmost); at the end a symbol that is a vocabulary entry
 * becomes its id and any other symbol becomes one <0xNN> token per byte (llama.cpp falls back
 * to the byte as a one-character token, then to unk here, where it would throw).
 * A binary heap with lazy invalidation makes it O(n log n) per piece. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct { uint32_t off, len; int32_t prev, next; } spm_sym;
typedef struct { float score; int32_t left, right; uint32_t len; } spm_cand;

/* higher score first, then lower left index */
static inline int cand_before(const spm_cand *x, const spm_cand *y) {
    return x->score != y->score ? x->score > y->score : x->left < y->left;
}

static void heap_push(spm_cand *h, size_t *n, spm_cand v) {
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&v, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static spm_cand heap_pop(spm_cand *h, size_t *n) {
    spm_cand top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const spm_cand *best = &v;
        if (l < *n && cand_before(&h[l], best)) { m = l; best = &h[l]; }
        if (r < *n && cand_before(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = v;
    return top;
}

static void try_pair(const tp_tokenizer *t, const uint8_t *w, const spm_sym *s, int32_t left, spm_cand *h,
                     size_t *hn) {
    if (left < 0) return;
    int32_t right = s[left].next;
    if (right < 0) return;
    uint32_t len = s[left].len + s[right].len;
    int32_t id = tp_strmap_get(&t->vocab, (const char *)w + s[left].off, len);
    if (id < 0 || id >= t->n_model) return;
    heap_push(h, hn, (spm_cand){t->scores[id], left, right, len});
}

static tp_status push_bytes(tp_enc_ctx *c, const uint8_t *p, size_t n) {
    const tp_tokenizer *t = c->t;
    for (size_t j = 0; j < n; j++) {
        int32_t id = t->byte_tok[p[j]];
        if (id < 0) {
            char one[1] = {(char)p[j]};
            id = tp_strmap_get(&t->vocab, one, 1);
        }
        if (id < 0) id = t->model_unk >= 0 ? t->model_unk : t->unk;
        if (id < 0)
            return tp_fail(TP_ERR_FORMAT, "SPM tokenizer: byte 0x%02X has no <0x%02X> token and there is no unk token",
                           p[j], p[j]);
        tp_status rc = tp_enc_push(c, id);
        if (rc) return rc;
    }
    return TP_OK;
}

tp_status tp_spm_word(tp_enc_ctx *c, const uint8_t *w, size_t n) {
    const tp_tokenizer *t = c->t;
    if (n == 0) return TP_OK;
    if (n > INT32_MAX / 4) return tp_fail(TP_ERR_ARG, "SPM tokenizer: piece of %zu bytes too long", n);
    spm_sym *s = malloc(n * sizeof *s);
    spm_cand *h = malloc((3 * n + 1) * sizeof *h);
    tp_status rc = TP_OK;
    if (!s || !h) { rc = tp_fail(TP_ERR_NOMEM, "out of memory for a piece of %zu bytes", n); goto done; }
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        /* the length the lead byte announces, as llama.cpp's unicode_len_utf8, cut at the end */
        uint8_t b = w[i];
        size_t l = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
        if (l > n - i) l = n - i;
        s[ns] = (spm_sym){(uint32_t)i, (uint32_t)l, ns - 1, i + l < n ? ns + 1 : -1};
        ns++;
        i += l;
    }
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++) try_pair(t, w, s, i, h, &hn);
    while (hn) {
        spm_cand top = heap_pop(h, &hn);
        spm_sym *a = &s[top.left], *b = &s[top.right];
        if (a->len == 0 || b->len == 0 || a->len + b->len != top.len || a->next != top.right) continue;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) s[b->next].prev = top.left;
        try_pair(t, w, s, a->prev, h, &hn);
        try_pair(t, w, s, top.left, h, &hn);
        if (hn + 2 > 3 * (size_t)n) { /* cannot happen: at most n-1 merges, 2 pushes each */
            rc = tp_fail(TP_ERR_ARG, "SPM tokenizer: internal heap overflow");
            goto done;
        }
    }
    for (int32_t i = 0; i >= 0 && !rc; i = s[i].next) {
        int32_t id = tp_strmap_get(&t->vocab, (const char *)w + s[i].off, s[i].len);
        rc = id >= 0 ? tp_enc_push(c, id) : push_bytes(c, w + s[i].off, s[i].len);
    }
done:
    free(s);
    free(h);
    return rc;
}
