/* libFuzzer target for the benchmark task loaders (src/eval/tasks.c). Not part of `make test`.
 * Each input is written, in a scratch data dir, as the file of every built-in task (ARC's
 * arc_easy.jsonl, HellaSwag's hellaswag_val_full.txt, PIQA's valid.jsonl, WinoGrande's
 * winogrande.jsonl, one MMLU <subject>_test.csv, WikiText-2's wiki.test.raw) and as a generic
 * JSONL task file; each task is loaded. PIQA's labels file gets the bytes after the input's first
 * NUL (valid.jsonl those before it), or alternating 0/1 labels when there is no NUL.
 * Whatever loads must be well-formed: requests and strings where the task kind needs them, gold
 * and group indices in range, and the same task loaded with limit 1 must load too and start
 * with the same item.
 *
 * Build and run (~60 s) from the repository root (or use scripts/fuzz.sh), seeding with a few
 * lines of each file of ../shared/data:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *     $(find src -name '*.c') tests/fuzz/fuzz_tasks.c -lm -lcjson -lpcre2-8 -lutf8proc -lpthread \
 *     -o /tmp/fuzz_tasks
 *   /tmp/fuzz_tasks -max_total_time=60 -max_len=8192 /tmp/fuzz_tasks_corpus */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/tasks.h"

static char root[128];
static char labels_alt[256];

/* The files each built-in task reads, relative to the data dir. */
static const struct {
    const char *task, *file;
} FILES[] = {
    {"arc_easy", "arc_easy/arc_easy.jsonl"},
    {"hellaswag", "hellaswag/hellaswag_val_full.txt"},
    {"piqa", "piqa/valid.jsonl"},
    {"winogrande", "winogrande/winogrande.jsonl"},
    {"mmlu", "mmlu/test/high_school_physics_test.csv"},
    {"wikitext", "wikitext2/wiki.test.raw"},
};

static void write_file(const char *rel, const void *data, size_t n) {
    char path[300];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
}

static void remove_files(void) {
    char path[300];
    for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", root, FILES[i].file);
        unlink(path);
    }
    static const char *const rest[] = {"piqa/valid-labels.lst", "task.jsonl", "mmlu/test", "arc_easy", "hellaswag",
                                       "piqa", "winogrande", "mmlu", "wikitext2", ""};
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", root, rest[i]);
        (void)remove(path);
    }
}

static void check_str(const char *s) {
    if (!s) abort();
    volatile size_t n = strlen(s); /* ASan: terminated and readable */
    (void)n;
}

static void check_task(const tp_task *t) {
    check_str(t->name);
    check_str(t->source);
    check_str(t->format);
    if (t->kind != TP_TASK_MC && t->kind != TP_TASK_LL && t->kind != TP_TASK_ROLLING) abort();
    if (t->n_groups < 0 || (t->n_groups && !t->groups)) abort();
    for (int g = 0; g < t->n_groups; g++) {
        check_str(t->groups[g]);
        if (t->group_cat) check_str(t->group_cat[g]);
    }
    for (size_t i = 0; i < t->n_items; i++) {
        const tp_task_item *it = &t->items[i];
        if (it->n < 1 || (t->kind != TP_TASK_MC && it->n != 1)) abort();
        if (it->gold < -1 || it->gold >= it->n || (t->kind == TP_TASK_MC && it->gold < 0)) abort();
        if (it->group < 0 || it->group >= (t->n_groups > 0 ? t->n_groups : 1)) abort();
        for (int k = 0; k < it->n; k++) {
            if (t->kind == TP_TASK_ROLLING) {
                if (it->ctx && it->ctx[k]) abort();
            } else {
                check_str(it->ctx[k]);
            }
            check_str(it->cont[k]);
            if (!(it->norm_len[k] >= 0)) abort();
        }
    }
}

static int same_item(const tp_task_item *a, const tp_task_item *b, int rolling) {
    if (a->n != b->n || a->gold != b->gold || a->group != b->group || a->words != b->words || a->bytes != b->bytes)
        return 0;
    for (int k = 0; k < a->n; k++) {
        if (!rolling && strcmp(a->ctx[k], b->ctx[k])) return 0;
        if (strcmp(a->cont[k], b->cont[k]) || a->norm_len[k] != b->norm_len[k]) return 0;
    }
    return 1;
}

/* Loads (name, or the generic file when name is NULL) in full and with limit 1. */
static void load_both(const char *name) {
    char path[300];
    snprintf(path, sizeof path, "%s/task.jsonl", root);
    tp_task *full = NULL, *one = NULL;
    tp_status s = name ? tp_task_load(name, root, 0, &full) : tp_task_load_file(path, 0, &full);
    if (s != TP_OK) {
        if (full) abort();
        return;
    }
    check_task(full);
    s = name ? tp_task_load(name, root, 1, &one) : tp_task_load_file(path, 1, &one);
    if (s != TP_OK) {
        fprintf(stderr, "fuzz_tasks: %s loads whole but not with limit 1: %s\n", name ? name : "task file",
                tp_errmsg());
        abort();
    }
    check_task(one);
    if (one->kind != full->kind || one->n_groups != full->n_groups || one->n_items > full->n_items) abort();
    if (name && !strcmp(name, "mmlu")) { /* one subject here: limit applies to it */
        if (one->n_items != (full->n_items ? 1u : 0u)) abort();
    }
    if (one->n_items && (!full->n_items || !same_item(&one->items[0], &full->items[0], full->kind == TP_TASK_ROLLING)))
        abort();
    tp_task_free(one);
    tp_task_free(full);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/fuzz_tasks_%d", base, (int)getpid());
    static const char *const dirs[] = {"",     "arc_easy",  "hellaswag", "piqa",
                                       "winogrande", "mmlu", "mmlu/test", "wikitext2"};
    char path[300];
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", root, dirs[i]);
        if (mkdir(path, 0755) != 0 && access(path, W_OK) != 0) abort();
    }
    for (size_t i = 0; i + 1 < sizeof labels_alt; i += 2) {
        labels_alt[i] = (char)('0' + (i / 2) % 2);
        labels_alt[i + 1] = '\n';
    }
    atexit(remove_files);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) {
        if (!strcmp(FILES[i].task, "piqa")) {
            const uint8_t *nul = memchr(data, 0, size);
            size_t n = nul ? (size_t)(nul - data) : size;
            write_file(FILES[i].file, data, n);
            if (nul) write_file("piqa/valid-labels.lst", nul + 1, size - n - 1);
            else write_file("piqa/valid-labels.lst", labels_alt, sizeof labels_alt - 1);
        } else {
            write_file(FILES[i].file, data, size);
        }
        load_both(FILES[i].task);
    }
    write_file("task.jsonl", data, size);
    load_both(NULL);
    return 0;
}
