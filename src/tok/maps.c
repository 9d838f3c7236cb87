/* Open-addressing hash maps for the tokenizer: byte string -> id (vocabulary) and
 * id pair -> (rank, merged id) (BPE merges). Linear probing, power-of-two capacity,
 * load kept at or under one half; no deletion (the tokenizer never removes entries). */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

uint64_t tp_hash_bytes(const void *p, size_t n) {
    /* FNV-1a, then a final mix so the low bits used for the slot are well spread. */
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static size_t cap_for(size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 2) cap <<= 1;
    return cap;
}

tp_status tp_strmap_init(tp_strmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    if (expected > ((size_t)1 << 40)) return tp_fail(TP_ERR_NOMEM, "map of %zu entries too large", expected);
    m->cap = cap_for(expected);
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->lens = calloc(m->cap, sizeof *m->lens);
    m->vals = calloc(m->cap, sizeof *m->vals);
    if (!m->keys || !m->lens || !m->vals) {
        tp_strmap_free(m);
        return tp_fail(TP_ERR_NOMEM, "out of memory for a map of %zu entries", expected);
    }
    return TP_OK;
}

void tp_strmap_free(tp_strmap *m) {
    free(m->keys);
    free(m->lens);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int strmap_grow(tp_strmap *m) {
    tp_strmap g;
    if (tp_strmap_init(&g, m->cap) != TP_OK) return -1; /* doubles the capacity */
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) tp_strmap_put(&g, m->keys[i], m->lens[i], m->vals[i]);
    tp_strmap_free(m);
    *m = g;
    return 0;
}

int tp_strmap_put(tp_strmap *m, const char *key, size_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    size_t mask = m->cap - 1, i = tp_hash_bytes(key, len) & mask;
    while (m->keys[i]) {
        if (m->lens[i] == len && memcmp(m->keys[i], key, len) == 0) return 0;
        i = (i + 1) & mask;
    }
    m->keys[i] = key;
    m->lens[i] = (uint32_t)len;
    m->vals[i] = val;
    m->n++;
    return 1;
}

int32_t tp_strmap_get(const tp_strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t mask = m->cap - 1, i = tp_hash_bytes(key, len) & mask;
    while (m->keys[i]) {
        if (m->lens[i] == len && memcmp(m->keys[i], key, len) == 0) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}

static inline size_t pair_slot(uint64_t key, size_t mask) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & mask;
}

tp_status tp_pairmap_init(tp_pairmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    if (expected > ((size_t)1 << 40)) return tp_fail(TP_ERR_NOMEM, "map of %zu entries too large", expected);
    m->cap = cap_for(expected);
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->rank = calloc(m->cap, sizeof *m->rank);
    m->merged = calloc(m->cap, sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged) {
        tp_pairmap_free(m);
        return tp_fail(TP_ERR_NOMEM, "out of memory for a map of %zu entries", expected);
    }
    return TP_OK;
}

void tp_pairmap_free(tp_pairmap *m) {
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

static int pairmap_grow(tp_pairmap *m) {
    tp_pairmap g;
    if (tp_pairmap_init(&g, m->cap) != TP_OK) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        uint64_t k = m->keys[i] - 1;
        tp_pairmap_put(&g, (int32_t)(k >> 32), (int32_t)(uint32_t)k, m->rank[i], m->merged[i]);
    }
    tp_pairmap_free(m);
    *m = g;
    return 0;
}

int tp_pairmap_put(tp_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    if ((m->n + 1) * 2 > m->cap && pairmap_grow(m)) return -1;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t mask = m->cap - 1, i = pair_slot(key, mask);
    while (m->keys[i]) {
        if (m->keys[i] == key) { m->rank[i] = rank; m->merged[i] = merged; return 0; }
        i = (i + 1) & mask;
    }
    m->keys[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
    m->n++;
    return 1;
}

int tp_pairmap_get(const tp_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
    if (!m->cap) return 0;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t mask = m->cap - 1, i = pair_slot(key, mask);
    while (m->keys[i]) {
        if (m->keys[i] == key) { *rank = m->rank[i]; *merged = m->merged[i]; return 1; }
        i = (i + 1) & mask;
    }
    return 0;
}
