/* libFuzzer target for the safetensors reader (single file and sharded index) and the
 * config.json parser. Not part of `make test`. Each input is used three ways:
 *   1. written to a file and opened with tp_st_open; every F32/F16/BF16 tensor is converted;
 *   2. written as model.safetensors.index.json next to two valid shards and the directory
 *      opened;
 *   3. parsed as config.json; an accepted config must validate, write (or be refused as
 *      TP_ERR_UNSUPPORTED: configs that transformers cannot load are exported as GGUF only), and
 *      read back equal.
 *
 * Build and run (~60 s), seeding with the fixtures:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
 *     tests/fuzz/fuzz_safetensors.c src/io/safetensors.c src/model/config.c \
 *     src/core/status.c src/core/util.c -lm -lcjson -lpcre2-8 -o /tmp/fuzz_st
 *   mkdir -p /tmp/fuzz_corpus, copy into it tests/fixtures/st/basic.safetensors, the shards
 *   and index of tests/fixtures/st/sharded/, and each tests/fixtures/st/config/<case>/config.json
 *   under a distinct name, then
 *   /tmp/fuzz_st -max_total_time=60 -max_len=65536 /tmp/fuzz_corpus */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/model.h"
#include "taper/safetensors.h"
#include "taper/util.h"

static char file_path[256], dir_path[256], index_path[300];

static void write_file(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

static void write_shard(const char *name, const char *header, size_t n_data) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s", dir_path, name);
    size_t hl = strlen(header);
    uint8_t buf[512];
    uint64_t h = hl;
    memcpy(buf, &h, 8);
    memcpy(buf + 8, header, hl);
    memset(buf + 8 + hl, 0x3c, n_data);
    write_file(path, buf, 8 + hl + n_data);
}

static void cleanup(void) {
    char path[400];
    unlink(file_path);
    unlink(index_path);
    snprintf(path, sizeof path, "%s/a.safetensors", dir_path);
    unlink(path);
    snprintf(path, sizeof path, "%s/b.safetensors", dir_path);
    unlink(path);
    rmdir(dir_path);
}

static void setup(void) {
    snprintf(file_path, sizeof file_path, "/tmp/fuzz_st_%ld.safetensors", (long)getpid());
    snprintf(dir_path, sizeof dir_path, "/tmp/fuzz_st_%ld.d", (long)getpid());
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir_path);
    mkdir(dir_path, 0755);
    write_shard("a.safetensors",
                "{\"w1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"w2\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}", 12);
    write_shard("b.safetensors", "{\"w3\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    atexit(cleanup);
}

static void convert_all(const tp_safetensors *st) {
    for (size_t i = 0; i < st->n_tensors; i++) {
        const tp_st_tensor *t = &st->tensors[i];
        if (t->dtype == TP_ST_OTHER || t->n_elem > (1u << 24)) continue;
        float *dst = malloc((size_t)(t->n_elem ? t->n_elem : 1) * sizeof *dst);
        if (!dst) abort();
        if (tp_st_to_f32(t, dst) != TP_OK) abort();
        free(dst);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) { setup(); ready = 1; }

    tp_safetensors *st = NULL;
    write_file(file_path, data, size);
    if (tp_st_open(file_path, &st) == TP_OK) {
        convert_all(st);
        (void)tp_st_meta(st, "format");
        tp_st_close(st);
    }

    write_file(index_path, data, size);
    st = NULL;
    if (tp_st_open(dir_path, &st) == TP_OK) {
        convert_all(st);
        tp_st_close(st);
    }

    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = 0;
    tp_config c, back;
    if (tp_config_from_json(text, "fuzz", &c) == TP_OK) {
        if (tp_config_validate(&c) != TP_OK) abort();
        char *out = NULL;
        tp_status ws = tp_config_to_json(&c, &out);
        if (ws == TP_ERR_UNSUPPORTED) { /* e.g. Gemma 3 with hidden % heads != 0: GGUF only, by design */
            free(text);
            return 0;
        }
        if (ws != TP_OK) abort();
        if (tp_config_from_json(out, "fuzz-written", &back) != TP_OK) abort();
        if (back.d_model != c.d_model || back.head_dim != c.head_dim ||
            back.rope_theta != c.rope_theta || back.norm_eps != c.norm_eps ||
            tp_config_n_params(&back) != tp_config_n_params(&c))
            abort();
        free(out);
    }
    free(text);
    return 0;
}
