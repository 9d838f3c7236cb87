/* Helpers the tokenizer tests share (tests/test_tokenizer.c, tests/test_tok_spm.c). */
#ifndef TAPER_TT_TOK_H
#define TAPER_TT_TOK_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define TT_FNV0 0xcbf29ce484222325ull
/* FNV-1a over the ids' little-endian bytes, continuing from h (as tok_ref.py hashes them). */
uint64_t tt_fnv_ids(const int32_t *ids, size_t n, uint64_t h);
/* Hex text to bytes (malloc'd, NUL-terminated), *n of them. */
unsigned char *tt_unhex(const char *h, size_t *n);
/* 1 if arr is a JSON array holding exactly ids[0..n). */
int tt_ids_equal(const int32_t *ids, size_t n, const cJSON *arr);
/* The first 40 ids on stderr, for a failure. */
void tt_print_ids(const char *what, const int32_t *ids, size_t n);

/* A text file's lines, split on '\n' only, without a trailing empty line (as the Python
 * references split them), at most max of them; views into data. */
typedef struct { char *data; size_t len; char **line; size_t *line_len; size_t n; } tt_lines;
int tt_read_lines(const char *path, tt_lines *tl, size_t max);
void tt_free_lines(tt_lines *tl);

#endif
