/* libFuzzer target for the token shard reader (src/train/data.c). Each input is written to a
 * file and opened as a dataset; whatever opens must serve every window of a loader without
 * reading outside the mapping (ASan) and only ids below the header's vocab (checked here).
 * Not part of `make test`. Build and run (~60 s), seeding with shards the test suite writes:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
 *     $(find src -name '*.c') tests/fuzz/fuzz_shard.c -lm -lcjson -lpcre2-8 -o /tmp/fuzz_shard
 *   /tmp/fuzz_shard -max_total_time=60 -max_len=4096 /tmp/fuzz_shard_corpus */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/train.h"

static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path[0]) snprintf(path, sizeof path, "/tmp/fuzz_shard_%d.tpt", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    tp_dataset *d = NULL;
    if (tp_dataset_open(path, &d) != TP_OK) return 0;
    tp_dataset_info info;
    tp_dataset_get_info(d, &info);
    for (int T = 1; T <= 5; T += 4) {
        tp_loader *L = NULL;
        if (tp_loader_open(d, T, 0.25, 1, &L) != TP_OK) continue;
        int32_t x[5], y[5];
        size_t n = tp_loader_n_train(L) + tp_loader_n_val(L);
        for (size_t i = 0; i < n && i < 64; i++) {
            int got = 1;
            if (i < tp_loader_n_train(L)) tp_loader_next(L, 1, x, y);
            else tp_loader_val(L, i - tp_loader_n_train(L), 1, x, y, &got);
            for (int t = 0; t < T * got; t++)
                if (x[t] < 0 || (uint32_t)x[t] >= info.vocab || y[t] < 0 || (uint32_t)y[t] >= info.vocab) abort();
        }
        tp_loader_free(L);
    }
    tp_dataset_close(d);
    return 0;
}
