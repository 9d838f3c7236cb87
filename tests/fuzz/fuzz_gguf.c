/* libFuzzer target for the GGUF reader: each input is written to a memfd and opened through
 * /proc/self/fd (tp_gguf_open maps a path), then every getter and every tensor's
 * dequantisation run on whatever opened. Not built by the Makefile; build with e.g.
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -fsanitize=fuzzer,address,undefined \
 *     src/core/status.c src/core/util.c src/io/gguf.c src/io/quant.c tests/fuzz/fuzz_gguf.c -lm -o /tmp/fuzz_gguf
 *   /tmp/fuzz_gguf -max_total_time=60 -max_len=65536 /tmp/corpus tests/fixtures/gguf */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "taper/gguf.h"

static int fd = -1;
static char path[64];
static volatile uint64_t sink;   /* keeps the array reads from being optimised away */

static void exercise(const tp_gguf *g) {
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const tp_gguf_kv *kv = &g->kv[i];
        uint32_t u;
        float f;
        int b;
        char *s = NULL;
        (void)tp_gguf_get_u32(g, kv->key, &u);
        (void)tp_gguf_get_f32(g, kv->key, &f);
        (void)tp_gguf_get_bool(g, kv->key, &b);
        if (tp_gguf_get_str(g, kv->key, &s) == TP_OK) free(s);
        if (kv->type == TP_GGUF_ARRAY) {
            uint64_t n = kv->v.arr.n < 4096 ? kv->v.arr.n : 4096;
            uint64_t acc = 0;
            for (uint64_t j = 0; j < n; j++) {
                if (kv->v.arr.type == TP_GGUF_STRING)
                    acc += kv->v.arr.strs[j].len ? (uint8_t)kv->v.arr.strs[j].data[kv->v.arr.strs[j].len - 1] : 0;
                else
                    acc += tp_gguf_arr_u64(kv, j) + (uint64_t)tp_gguf_arr_i64(kv, j) + (uint64_t)(tp_gguf_arr_f64(kv, j) != 0);
            }
            sink += acc;
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tp_gguf_tensor *t = &g->tensors[i];
        if (tp_gguf_find_tensor(g, t->name) != t) abort();   /* names are unique */
        if (t->n_elem > ((uint64_t)1 << 24)) continue;
        float *out = malloc(t->n_elem * sizeof *out);
        if (!out) continue;
        tp_status s = tp_gguf_tensor_to_f32(t, out);
        if (s != TP_OK && s != TP_ERR_UNSUPPORTED) abort();  /* a validated tensor must dequantise */
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fd < 0) {
        fd = memfd_create("fuzz_gguf", 0);
        if (fd < 0) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0) abort();
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(fd, data + off, size - off, (off_t)off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    tp_gguf *g = NULL;
    tp_status s = tp_gguf_open(path, &g);
    if (s == TP_OK) {
        exercise(g);
        tp_gguf_close(g);
    } else if (g != NULL || !strstr(tp_errmsg(), path)) {
        abort();   /* failures leave no handle and name the file */
    }
    return 0;
}
