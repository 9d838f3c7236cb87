/* libFuzzer target for the two files src/compress reads: the importance score file and
 * prune_plan.json. Not part of `make test`. Each input is written to a file and read both
 * ways; whatever loads must be consistent: a score file saves and reads back with the same
 * shape, a plan passes tp_prune_plan_check against its own source config and saves and reads
 * back equal.
 *
 * Build and run (~60 s), seeding with a score file and a plan written by the test suite (or by
 * taper importance / taper prune on any model):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
 *     $(find src -name '*.c') tests/fuzz/fuzz_compress.c -lm -lcjson -lpcre2-8 -o /tmp/fuzz_compress
 *   /tmp/fuzz_compress -max_total_time=60 -max_len=65536 /tmp/fuzz_compress_corpus */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/compress.h"

static char in_path[64], out_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!in_path[0]) {
        snprintf(in_path, sizeof in_path, "/tmp/fuzz_compress_%d.json", (int)getpid());
        snprintf(out_path, sizeof out_path, "/tmp/fuzz_compress_%d.out.json", (int)getpid());
    }
    FILE *f = fopen(in_path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);

    tp_importance *imp = NULL, *back = NULL;
    if (tp_importance_load(in_path, &imp) == TP_OK) {
        if (tp_importance_save(imp, out_path) != TP_OK || tp_importance_load(out_path, &back) != TP_OK) abort();
        if (back->n_layers != imp->n_layers || back->d_ff != imp->d_ff || back->d_model != imp->d_model ||
            back->n_heads != imp->n_heads || back->n_kv_heads != imp->n_kv_heads || back->block_size != imp->block_size)
            abort();
        tp_importance_free(back);
        tp_importance_free(imp);
    }
    tp_prune_plan *p = NULL, *q = NULL;
    if (tp_prune_plan_load(in_path, &p) == TP_OK) {
        if (tp_prune_plan_check(p, &p->src) != TP_OK) abort();
        if (tp_prune_plan_save(p, out_path) != TP_OK || tp_prune_plan_load(out_path, &q) != TP_OK) abort();
        const tp_config *c = &p->cfg;
        if (q->cfg.n_layers != c->n_layers || q->cfg.d_model != c->d_model ||
            memcmp(q->layers, p->layers, (size_t)c->n_layers * sizeof(int)) ||
            memcmp(q->channels, p->channels, (size_t)c->d_model * sizeof(int)) ||
            memcmp(q->heads, p->heads, (size_t)c->n_layers * c->n_heads * sizeof(int)) ||
            memcmp(q->neurons, p->neurons, (size_t)c->n_layers * c->d_ff * sizeof(int)))
            abort();
        tp_prune_plan_free(q);
        tp_prune_plan_free(p);
    }
    return 0;
}
