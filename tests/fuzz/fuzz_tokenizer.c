/* libFuzzer target for the tokenizer: encodes arbitrary bytes with SmolLM2's tokenizer (with and
 * without special tokens), decodes the ids (with and without skipping specials) and checks what
 * must hold: every id is in the vocabulary, the decode is valid UTF-8, and text that is valid
 * UTF-8 made only of bytes the vocabulary has decodes back to itself.
 * Built with -DFUZZ_TOKENIZER_JSON it fuzzes the tokenizer.json loader instead.
 *
 * Build (from the repository root) with clang -fsanitize=fuzzer,address,undefined, -Iinclude -Isrc,
 * the sources of src/core, src/io/gguf.c, src/io/quant.c and src/tok, and -lm -lcjson -lpcre2-8 -lutf8proc;
 * run e.g. `build/fuzz_tokenizer -max_total_time=60 -max_len=4096` from the repository root
 * (TAPER_TOK_JSON names another tokenizer.json).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tok/tok_internal.h"
#include "taper/tokenizer.h"

#ifndef FUZZ_TOKENIZER_JSON

static tp_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *p = getenv("TAPER_TOK_JSON");
    if (!p || !*p) p = "tests/fixtures/tok/smollm2/tokenizer.json";
    if (tp_tok_load_json(p, &tok) != TP_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", tp_errmsg());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int add_special = 0; add_special < 2; add_special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tp_tok_encode(tok, (const char *)data, size, add_special, &ids, &n) != TP_OK) abort();
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= tp_tok_vocab_size(tok)) abort();
        for (int skip = 0; skip < 2; skip++) {
            char *out = NULL;
            size_t len = 0;
            if (tp_tok_decode(tok, ids, n, skip, &out, &len) != TP_OK) abort();
            if (out[len] != 0 || !tp_utf8_valid(out, len)) abort();
            int plain = !add_special && !skip && tp_utf8_valid((const char *)data, size);
            for (size_t i = 0; i < size && plain; i++) plain = tok->byte_id[data[i]] >= 0;
            if (plain && (len != size || memcmp(out, data, size) != 0)) abort();
            free(out);
        }
        free(ids);
    }
    return 0;
}

#else /* fuzz the tokenizer.json loader */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_tok_%d.json", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    tp_tokenizer *t = NULL;
    if (tp_tok_load_json(path, &t) == TP_OK) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tp_tok_encode(t, "Hello 123 world's", 17, 1, &ids, &n) == TP_OK) {
            char *out = NULL;
            if (tp_tok_decode(t, ids, n, 0, &out, NULL) == TP_OK) free(out);
            free(ids);
        }
        tp_tok_free(t);
    }
    remove(path);
    return 0;
}

#endif
