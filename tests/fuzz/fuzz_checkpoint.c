/* libFuzzer target for the training checkpoint reader (src/train/checkpoint.c, .tpc files) into
 * a fixed tiny model (1 layer, d_model 8, tied embeddings: 536 parameters). Not part of
 * `make test`. An input that starts with the magic "TPRCKPT1" is a whole file and is loaded
 * twice: as it is, and "sealed" (its last 16 bytes replaced by the right checksum and the end
 * marker, so mutations of the header and the JSON block get past the checksum). Any other input
 * is taken as the JSON block alone and wrapped into a complete file (header, padding, a fixed
 * parameter pattern, the extra bytes the block asks for, checksum, marker). Whatever loads must
 * save (tp_ckpt_save) and load back equal: weights, moments, optimizer step and resume state
 * (tokens_seen and elapsed_s within one ulp: see near()).
 *
 * With TAPER_FUZZ_SEED_DIR=DIR in the environment, the first call writes seed inputs for this
 * model into DIR (whole checkpoints and their JSON blocks) and the run goes on as usual.
 *
 * Build and run (~60 s) from the repository root (or use scripts/fuzz.sh):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *     $(find src -name '*.c') tests/fuzz/fuzz_checkpoint.c -lm -lcjson -lpcre2-8 -lutf8proc -lpthread \
 *     -o /tmp/fuzz_checkpoint
 *   mkdir -p /tmp/fuzz_ckpt_corpus && TAPER_FUZZ_SEED_DIR=/tmp/fuzz_ckpt_corpus /tmp/fuzz_checkpoint -runs=0
 *   /tmp/fuzz_checkpoint -max_total_time=60 -max_len=16384 /tmp/fuzz_ckpt_corpus */
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "taper/model.h"
#include "taper/rng.h"
#include "taper/train.h"
#include "taper/util.h"
#include "train/train_internal.h"

static const char TINY_CONFIG[] =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":8,"
    "\"intermediate_size\":8,\"num_attention_heads\":2,\"num_key_value_heads\":1,\"head_dim\":4,"
    "\"num_hidden_layers\":1,\"vocab_size\":16,\"max_position_embeddings\":32,\"rms_norm_eps\":1e-05,"
    "\"rope_theta\":10000.0,\"tie_word_embeddings\":true,\"bos_token_id\":1,\"eos_token_id\":2}";

#define MAGIC "TPRCKPT1"
#define END_MARK "TPCKEND\n"

/* the checksum is checkpoint.c's own (train/train_internal.h): mutated inputs are sealed with it */

static tp_model *model, *model2;
static tp_adamw opt, opt2;
static char in_dir[128], out_dir[128];
static unsigned char *buf;
static size_t buf_cap;

static void quiet_log(void *user, tp_log_level level, const char *msg) {
    (void)user;
    (void)level;
    (void)msg;
}

static void fail(const char *what) {
    fprintf(stderr, "fuzz_checkpoint: %s: %s\n", what, tp_errmsg());
    abort();
}

/* Removes every file of dir (the checkpoint dirs hold nothing else). */
static void clear_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[400];
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' || (e->d_name[1] && strcmp(e->d_name, ".."))) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
}

static unsigned char *reserve(size_t n) {
    if (n > buf_cap) {
        unsigned char *b = realloc(buf, n);
        if (!b) abort();
        buf = b;
        buf_cap = n;
    }
    return buf;
}

static void reset_rig(tp_model *m, tp_adamw *o) {
    memset(m->params, 0, m->n_params * sizeof(float));
    memset(o->m, 0, o->n * sizeof(float));
    memset(o->v, 0, o->n * sizeof(float));
    o->step = 0;
}

/* Equal up to cJSON's own print test: cJSON 1.7.15 writes a double with 15 significant digits
 * when that reads back within DBL_EPSILON relative (not bit-exact), so a double of the JSON block
 * may come back one ulp off. */
static int near(double a, double b) {
    return a == b || fabs(a - b) <= fmax(fabs(a), fabs(b)) * DBL_EPSILON;
}

/* Loads in_dir; when that works, saves to out_dir, loads that into the second rig and compares. */
static void load_and_check(void) {
    tp_ckpt_state st, back;
    memset(&st, 0, sizeof st);
    memset(&back, 0, sizeof back);
    reset_rig(model, &opt);
    tp_status s = tp_ckpt_load_latest(in_dir, model, &opt, &st, NULL);
    if (s == TP_ERR_NOMEM || s == TP_ERR_ARG) fail("load gave a status that blames the caller");
    if (s) return;
    if (st.step < 0 || (st.extra_bytes != 0) != (st.extra != NULL)) abort();
    clear_dir(out_dir);
    if (tp_ckpt_save(out_dir, model, &opt, &st, 0) != TP_OK) fail("saving a checkpoint that loaded");
    reset_rig(model2, &opt2);
    if (tp_ckpt_load_latest(out_dir, model2, &opt2, &back, NULL) != TP_OK) fail("loading it back");
    size_t bytes = model->n_params * sizeof(float);
    if (memcmp(model->params, model2->params, bytes) || memcmp(opt.m, opt2.m, bytes) || memcmp(opt.v, opt2.v, bytes))
        abort();
    if (opt.step != opt2.step || back.step != st.step || memcmp(&back.rng, &st.rng, sizeof st.rng) ||
        back.cursor.seed != st.cursor.seed || back.cursor.epoch != st.cursor.epoch ||
        back.cursor.index != st.cursor.index || !near(back.tokens_seen, st.tokens_seen) ||
        !near(back.elapsed_s, st.elapsed_s))
        abort();
    if ((st.args_json == NULL) != (back.args_json == NULL) ||
        (st.args_json && strcmp(st.args_json, back.args_json) != 0))
        abort();
    if (back.extra_bytes != st.extra_bytes || (st.extra_bytes && memcmp(back.extra, st.extra, st.extra_bytes)))
        abort();
    tp_ckpt_state_free(&back);
    tp_ckpt_state_free(&st);
    clear_dir(out_dir);
}

/* Wraps a JSON block into a complete file for the tiny model and returns its size (in buf). */
static size_t wrap_json(const uint8_t *json, size_t len) {
    cJSON *root = cJSON_ParseWithLength((const char *)json, len);
    const cJSON *e = root ? cJSON_GetObjectItemCaseSensitive(root, "extra_bytes") : NULL;
    /* the reader's own rule (peek_extra_bytes), capped so that inputs stay small */
    size_t extra = cJSON_IsNumber(e) && e->valuedouble > 0 && e->valuedouble < 65536 ? (size_t)e->valuedouble : 0;
    cJSON_Delete(root);
    size_t data_off = (32 + len + 63) / 64 * 64, arr = model->n_params * sizeof(float);
    size_t size = data_off + 3 * arr + extra + 16;
    unsigned char *p = reserve(size);
    memset(p, 0, size);
    memcpy(p, MAGIC, 8);
    uint32_t ver = 2;
    uint64_t jl = len, np = model->n_params;
    memcpy(p + 8, &ver, 4);
    memcpy(p + 16, &jl, 8);
    memcpy(p + 24, &np, 8);
    if (len) memcpy(p + 32, json, len);
    for (size_t i = 0; i < 3 * arr + extra; i++) p[data_off + i] = (unsigned char)(i * 37 + 11);
    uint64_t h = tp_ckpt_checksum(p, size - 16);
    memcpy(p + size - 16, &h, 8);
    memcpy(p + size - 8, END_MARK, 8);
    return size;
}

/* Writes a few checkpoints of the tiny model and their JSON blocks into dir. */
static void write_seeds(const char *dir) {
    char tmp[160], path[300], name[64];
    snprintf(tmp, sizeof tmp, "%s/seed-tmp", out_dir);
    tp_rng r;
    tp_rng_seed(&r, 7);
    for (size_t i = 0; i < model->n_params; i++) {
        model->params[i] = tp_rng_normal(&r) * 0.02f;
        opt.m[i] = tp_rng_normal(&r) * 1e-3f;
        opt.v[i] = (float)(i % 7) * 1e-6f;
    }
    unsigned char extra[40];
    for (int i = 0; i < 40; i++) extra[i] = (unsigned char)(i * 13);
    for (int k = 0; k < 3; k++) {
        tp_ckpt_state st;
        memset(&st, 0, sizeof st);
        st.step = k == 0 ? 3 : k == 1 ? 0 : 123456;
        tp_rng_seed(&st.rng, 99 + (uint64_t)k);
        st.cursor.seed = 0xfedcba9876543210ull;
        st.cursor.epoch = (uint64_t)k;
        st.cursor.index = 1234567;
        st.tokens_seen = 1048576.5 * k;
        st.elapsed_s = 1.0 / 3.0 + k;
        st.args_json = k == 1 ? NULL : "{\"lr\":0.01,\"data\":\"shards/\\\"x\\\"\",\"note\":\"caf\xc3\xa9\"}";
        if (k == 2) {
            st.extra = extra;
            st.extra_bytes = sizeof extra;
        }
        opt.step = st.step;
        mkdir(tmp, 0755);
        clear_dir(tmp);
        if (tp_ckpt_save(tmp, model, &opt, &st, 0) != TP_OK) fail("writing a seed");
        snprintf(name, sizeof name, "ckpt-%08ld.tpc", st.step);
        snprintf(path, sizeof path, "%s/%s", tmp, name);
        char *text = NULL;
        size_t len = 0;
        if (tp_read_file(path, &text, &len) != TP_OK) fail("reading a seed");
        snprintf(path, sizeof path, "%s/seed-ckpt-%d.tpc", dir, k);
        write_file(path, text, len);
        uint64_t jl;
        memcpy(&jl, text + 16, 8);
        snprintf(path, sizeof path, "%s/seed-json-%d.json", dir, k);
        write_file(path, text + 32, (size_t)jl);
        free(text);
        clear_dir(tmp);
    }
    rmdir(tmp);
}

static void remove_dirs(void) {
    clear_dir(in_dir);
    clear_dir(out_dir);
    rmdir(in_dir);
    rmdir(out_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tp_set_log(quiet_log, NULL); /* every skipped file is a warning: keep the fuzzer's output readable */
    tp_config c;
    if (tp_config_from_json(TINY_CONFIG, "tiny config", &c) != TP_OK) fail("tiny config");
    if (tp_model_alloc(&c, &model) != TP_OK || tp_model_alloc(&c, &model2) != TP_OK) fail("model");
    tp_adamw_cfg oc;
    tp_adamw_defaults(&oc);
    if (tp_adamw_init(&opt, model, &oc) != TP_OK || tp_adamw_init(&opt2, model2, &oc) != TP_OK) fail("adamw");
    /* tmpfs where there is one: every checkpoint that loads is saved again, with fsyncs */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(in_dir, sizeof in_dir, "%s/fuzz_ckpt_%d_in", base, (int)getpid());
    snprintf(out_dir, sizeof out_dir, "%s/fuzz_ckpt_%d_out", base, (int)getpid());
    mkdir(in_dir, 0755);
    mkdir(out_dir, 0755);
    atexit(remove_dirs);
    const char *seeds = getenv("TAPER_FUZZ_SEED_DIR");
    if (seeds && *seeds) write_seeds(seeds);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[200];
    snprintf(path, sizeof path, "%s/ckpt-00000007.tpc", in_dir);
    if (size >= 8 && memcmp(data, MAGIC, 8) == 0) {
        write_file(path, data, size);
        load_and_check();
        if (size >= 48) {
            unsigned char *p = reserve(size);
            memcpy(p, data, size - 16);
            uint64_t h = tp_ckpt_checksum(p, size - 16);
            memcpy(p + size - 16, &h, 8);
            memcpy(p + size - 8, END_MARK, 8);
            write_file(path, p, size);
            load_and_check();
        }
    } else {
        size_t n = wrap_json(data, size);
        write_file(path, buf, n);
        load_and_check();
    }
    unlink(path);
    return 0;
}
