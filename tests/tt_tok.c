/* Helpers the tokenizer tests share; see tt_tok.h. */
#include "tt_tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/util.h"

uint64_t tt_fnv_ids(const int32_t *ids, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) { h ^= (v >> (8 * b)) & 0xFF; h *= 0x100000001b3ull; }
    }
    return h;
}

unsigned char *tt_unhex(const char *h, size_t *n) {
    size_t l = strlen(h);
    unsigned char *o = malloc(l / 2 + 1);
    if (!o) abort();
    for (size_t i = 0; i + 1 < l; i += 2) {
        unsigned v;
        sscanf(h + i, "%2x", &v);
        o[i / 2] = (unsigned char)v;
    }
    o[l / 2] = 0;
    *n = l / 2;
    return o;
}

int tt_ids_equal(const int32_t *ids, size_t n, const cJSON *arr) {
    if (!cJSON_IsArray(arr) || (size_t)cJSON_GetArraySize(arr) != n) return 0;
    size_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) if (!cJSON_IsNumber(x) || (int32_t)x->valuedouble != ids[i++]) return 0;
    return 1;
}

void tt_print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "      %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

int tt_read_lines(const char *path, tt_lines *tl, size_t max) {
    memset(tl, 0, sizeof *tl);
    if (tp_read_file(path, &tl->data, &tl->len) != TP_OK) return 0;
    size_t cap = 1;
    for (size_t i = 0; i < tl->len; i++) cap += tl->data[i] == '\n';
    tl->line = malloc(cap * sizeof *tl->line);
    tl->line_len = malloc(cap * sizeof *tl->line_len);
    if (!tl->line || !tl->line_len) abort();
    size_t st = 0;
    for (size_t i = 0; i <= tl->len && tl->n < max; i++)
        if (i == tl->len || tl->data[i] == '\n') {
            if (i == tl->len && st == i) break;
            tl->line[tl->n] = tl->data + st;
            tl->line_len[tl->n++] = i - st;
            st = i + 1;
        }
    return 1;
}

void tt_free_lines(tt_lines *tl) {
    free(tl->data);
    free(tl->line);
    free(tl->line_len);
}
