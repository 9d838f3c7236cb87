/* Opening a model by path: what the path is (an HF folder, a GGUF file by extension or magic),
 * then the loader for it (load_hf.c, load_gguf.c), for the whole model or its config alone.
 * Calls go one way: load.c -> load_*.c -> model.c (allocation, views). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "taper/model.h"
#include "taper/util.h"

/* What path is: *kind = 1 an HF folder, 2 a GGUF file (by its extension, else by its magic). */
static tp_status model_kind(const char *path, int *kind) {
    struct stat st;
    *kind = 0;
    if (stat(path, &st) != 0) return tp_fail(TP_ERR_IO, "%s: no such file or directory", path);
    if (S_ISDIR(st.st_mode)) return *kind = 1, TP_OK;
    size_t n = strlen(path);
    if (n >= 5 && strcmp(path + n - 5, ".gguf") == 0) return *kind = 2, TP_OK;
    FILE *f = fopen(path, "rb");
    if (!f) return tp_fail(TP_ERR_IO, "%s: cannot open", path);
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0) return *kind = 2, TP_OK;
    return tp_fail(TP_ERR_FORMAT, "%s: not a GGUF file (no GGUF magic) and not an HF model folder", path);
}

static double g_mem_limit; /* bytes; 0: the memory available; < 0: no check */

void tp_set_mem_limit(double bytes) { g_mem_limit = bytes; }

tp_status tp_model_load(const char *path, tp_model **out) {
    int kind;
    *out = NULL;
    tp_status s = model_kind(path, &kind);
    if (s) return s;
    /* the fp32 weights must fit before any is read: a clear refusal, not the OOM killer */
    tp_config c;
    if (g_mem_limit >= 0 && (s = tp_config_load(path, &c)) == TP_OK) {
        double need = 4.0 * (double)tp_config_n_params(&c) + 96.0 * (1 << 20);
        double avail = g_mem_limit > 0 ? g_mem_limit : tp_mem_available();
        if (avail > 0 && need > avail)
            return tp_fail(TP_ERR_NOMEM, "%s: loading it needs about %.2f GiB for its fp32 weights, %.2f GiB is "
                           "available (mem_limit); the importance, prune and ppl jobs can read it a layer at a time "
                           "instead (stream on)", path, need / (1 << 30), avail / (1 << 30));
    }
    if (s) return s;
    return kind == 1 ? tp_model_load_hf(path, out) : tp_model_load_gguf(path, out);
}

tp_status tp_config_load(const char *path, tp_config *c) {
    int kind;
    tp_status s = model_kind(path, &kind);
    if (s) return s;
    if (kind == 2) return tp_config_load_gguf(path, c);
    char *p = tp_path_join(path, "config.json"), *text = NULL;
    s = p ? tp_read_file(p, &text, NULL) : tp_fail(TP_ERR_NOMEM, "out of memory");
    if (!s) s = tp_config_from_json(text, p, c);
    free(text);
    free(p);
    return s;
}

