/* Crash-safe training checkpoints (.tpc): weights, AdamW moments and everything else an exact
 * resume needs, in one file written to a temporary name, fsynced and renamed, with a checksum
 * and an end marker written last. The optimizer itself is in optim.c, the loop in trainer.c.
 *
 * File layout, version 2 (integers little-endian; only little-endian hosts are supported):
 *   0   8   magic "TPRCKPT1"
 *   8   4   u32 version (2; version 1 files, which have no extra block, are read too)
 *   12  4   u32 reserved (0)
 *   16  8   u64 json_len
 *   24  8   u64 n_params
 *   32      JSON (json_len bytes): format, config (tp_config_to_json), step, rng (4 x u64 as hex
 *           strings), cursor (u64 as decimal strings), tokens_seen, elapsed_s, args (string or
 *           null), optim (adamw settings and its step), n_params, extra_bytes (E; absent = 0)
 *           zero padding up to data_off = the next multiple of 64
 *   data_off    params, then m, then v: n_params float32 each
 *   +12n    E   the caller's extra state (tp_ckpt_state.extra), opaque here
 *   +E      8   u64 checksum of every byte before it (ckpt_hash below)
 *   +8      8   end marker "TPCKEND\n", written last
 * A file is complete only when its size is exactly data_off + 12n + E + 16 and it ends with the
 * marker.
 *
 * Test hook, compiled only with -DTP_TESTING (the test binary and build/taper-testing link such a
 * build of this file; the shipped library has no hook): when tp_test_ckpt_die_after = n (or, in
 * taper-testing, the environment variable TAPER_TEST_CKPT_DIE_AFTER=n), the writer kills its own
 * process with SIGKILL once n bytes of the temporary file are written (and flushed to the file),
 * to simulate a crash at that point. Only the crash tests set it. */
#include "taper/train.h"
#include "model/kernels.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/util.h"
#include "train/train_internal.h"
#include "core/internal.h"

#define CKPT_MAGIC "TPRCKPT1"
#define CKPT_END "TPCKEND\n"
#define CKPT_VERSION 2u
#define CKPT_HEADER 32
#define CKPT_ALIGN 64
#define CKPT_CHUNK ((size_t)8 << 20)

/* ---------------- checksum ----------------
 * A 64-bit non-cryptographic hash over 8-byte little-endian words: four independent lanes over
 * 32-byte stripes (multiply-rotate-multiply rounds, so a CPU runs them in parallel at several
 * GB/s), merged and finished with a murmur3-style avalanche. It only has to catch torn writes
 * and flipped bytes. Streaming: any split of the input gives the same value. */
#define H_P1 0x9E3779B185EBCA87ull
#define H_P2 0xC2B2AE3D27D4EB4Full
#define H_P3 0x165667B19E3779F9ull
#define H_P4 0x85EBCA77C2B2AE63ull

typedef struct {
    uint64_t acc[4];
    unsigned char buf[32];
    size_t buf_len;
    uint64_t total;
} ckpt_hash;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t h_round(uint64_t acc, uint64_t w) { return rotl64(acc + w * H_P2, 31) * H_P1; }
static inline uint64_t rd64(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static void hash_init(ckpt_hash *h) {
    memset(h, 0, sizeof *h);
    h->acc[0] = H_P1 + H_P2;
    h->acc[1] = H_P2;
    h->acc[2] = H_P3;
    h->acc[3] = (uint64_t)0 - H_P1;
}

static void hash_stripes(uint64_t acc[4], const unsigned char *p, size_t n_stripes) {
    uint64_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (size_t i = 0; i < n_stripes; i++, p += 32) {
        a0 = h_round(a0, rd64(p));
        a1 = h_round(a1, rd64(p + 8));
        a2 = h_round(a2, rd64(p + 16));
        a3 = h_round(a3, rd64(p + 24));
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

static void hash_update(ckpt_hash *h, const void *data, size_t n) {
    const unsigned char *p = data;
    h->total += n;
    if (h->buf_len) {
        size_t take = 32 - h->buf_len < n ? 32 - h->buf_len : n;
        memcpy(h->buf + h->buf_len, p, take);
        h->buf_len += take;
        p += take;
        n -= take;
        if (h->buf_len < 32) return;
        hash_stripes(h->acc, h->buf, 1);
        h->buf_len = 0;
    }
    hash_stripes(h->acc, p, n / 32);
    p += n / 32 * 32;
    n %= 32;
    memcpy(h->buf, p, n);
    h->buf_len = n;
}

static uint64_t hash_final(const ckpt_hash *h) {
    uint64_t v = rotl64(h->acc[0], 1) + rotl64(h->acc[1], 7) + rotl64(h->acc[2], 12) + rotl64(h->acc[3], 18);
    for (int j = 0; j < 4; j++) v = (v ^ h_round(0, h->acc[j])) * H_P1 + H_P4;
    v += h->total;
    size_t i = 0;
    for (; i + 8 <= h->buf_len; i += 8) v = rotl64(v ^ h_round(0, rd64(h->buf + i)), 27) * H_P1 + H_P4;
    uint64_t last = 0;
    for (size_t k = 0; i + k < h->buf_len; k++) last |= (uint64_t)h->buf[i + k] << (8 * k);
    v = rotl64(v ^ (last * H_P1), 23) * H_P2 + H_P3;
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdull;
    v ^= v >> 33;
    v *= 0xc4ceb9fe1a85ec53ull;
    v ^= v >> 33;
    return v;
}

/* ---------------- small helpers ---------------- */

static int little_endian(void) {
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
uint64_t tp_ckpt_checksum(const void *p, size_t n) {
    ckpt_hash h;
    hash_init(&h);
    hash_update(&h, p, n);
    return hash_final(&h);
}

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Step of "ckpt-<digits>.tpc" (complete checkpoints), or of ".ckpt-<digits>.tpc.tmp" when tmp
 * is set; -1 for any other name. */
static long name_step(const char *name, int tmp) {
    const char *pre = tmp ? ".ckpt-" : "ckpt-", *suf = tmp ? ".tpc.tmp" : ".tpc";
    size_t lp = strlen(pre);
    if (strncmp(name, pre, lp) != 0) return -1;
    const char *p = name + lp;
    if (*p < '0' || *p > '9') return -1;
    long v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > 100000000000000L) return -1;
        v = v * 10 + (*p - '0');
    }
    return strcmp(p, suf) == 0 ? v : -1;
}

typedef struct {
    long step;
    char *name;
} ckpt_entry;

static int cmp_entry_desc(const void *a, const void *b) {
    const ckpt_entry *x = a, *y = b;
    return x->step < y->step ? 1 : x->step > y->step ? -1 : strcmp(x->name, y->name);
}

static void free_entries(ckpt_entry *e, size_t n) {
    for (size_t i = 0; i < n; i++) free(e[i].name);
    free(e);
}

/* Complete checkpoint names of dir (tmp = 0) or temporary files (tmp = 1), newest first. */
static tp_status list_dir(const char *dir, int tmp, ckpt_entry **out, size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d) return tp_fail(TP_ERR_IO, "%s: cannot open the checkpoint directory: %s", dir, strerror(errno));
    ckpt_entry *e = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        long s = name_step(de->d_name, tmp);
        if (s < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            ckpt_entry *ne = realloc(e, cap * sizeof *e);
            if (!ne) goto nomem;
            e = ne;
        }
        e[n].step = s;
        if (!(e[n].name = strdup(de->d_name))) goto nomem;
        n++;
    }
    closedir(d);
    if (n) qsort(e, n, sizeof *e, cmp_entry_desc);
    *out = e;
    *n_out = n;
    return TP_OK;
nomem:
    closedir(d);
    free_entries(e, n);
    return tp_fail(TP_ERR_NOMEM, "out of memory");
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* ---------------- JSON block ---------------- */

static int add_u64_str(cJSON *o, const char *key, uint64_t v, int hex) {
    char buf[32];
    snprintf(buf, sizeof buf, hex ? "%016" PRIx64 : "%" PRIu64, v);
    return cJSON_AddStringToObject(o, key, buf) != NULL;
}

static tp_status build_json(const tp_model *m, const tp_adamw *o, const tp_ckpt_state *st, char **out) {
    *out = NULL;
    char *cfg_text = NULL;
    tp_status s = tp_config_to_json(&m->cfg, &cfg_text);
    if (s) return s;
    cJSON *root = cJSON_CreateObject(), *cfg = cJSON_Parse(cfg_text);
    free(cfg_text);
    int ok = root && cfg;
    if (ok) {
        ok = cJSON_AddStringToObject(root, "format", "taper-checkpoint") && cJSON_AddItemToObject(root, "config", cfg);
        if (!ok) cJSON_Delete(cfg);
        cfg = NULL;
    }
    ok = ok && cJSON_AddNumberToObject(root, "step", (double)st->step);
    cJSON *rng = ok ? cJSON_AddObjectToObject(root, "rng") : NULL;
    ok = ok && rng;
    for (int i = 0; ok && i < 4; i++) {
        char key[4] = {'s', (char)('0' + i), 0, 0};
        ok = add_u64_str(rng, key, st->rng.s[i], 1);
    }
    cJSON *cur = ok ? cJSON_AddObjectToObject(root, "cursor") : NULL;
    ok = ok && cur && add_u64_str(cur, "seed", st->cursor.seed, 0) && add_u64_str(cur, "epoch", st->cursor.epoch, 0) &&
         add_u64_str(cur, "index", st->cursor.index, 0);
    ok = ok && cJSON_AddNumberToObject(root, "tokens_seen", st->tokens_seen) &&
         cJSON_AddNumberToObject(root, "elapsed_s", st->elapsed_s);
    ok = ok && (st->args_json ? cJSON_AddStringToObject(root, "args", st->args_json) != NULL
                              : cJSON_AddNullToObject(root, "args") != NULL);
    cJSON *op = ok ? cJSON_AddObjectToObject(root, "optim") : NULL;
    const tp_adamw_cfg *c = &o->cfg;
    ok = ok && op && cJSON_AddNumberToObject(op, "lr", c->lr) && cJSON_AddNumberToObject(op, "min_lr", c->min_lr) &&
         cJSON_AddNumberToObject(op, "warmup_steps", (double)c->warmup_steps) &&
         cJSON_AddNumberToObject(op, "total_steps", (double)c->total_steps) &&
         cJSON_AddNumberToObject(op, "beta1", c->beta1) && cJSON_AddNumberToObject(op, "beta2", c->beta2) &&
         cJSON_AddNumberToObject(op, "eps", c->eps) && cJSON_AddNumberToObject(op, "weight_decay", c->weight_decay) &&
         cJSON_AddNumberToObject(op, "decay_all", c->decay_all) && cJSON_AddNumberToObject(op, "clip", c->clip) &&
         cJSON_AddNumberToObject(op, "step", (double)o->step);
    ok = ok && cJSON_AddNumberToObject(root, "n_params", (double)m->n_params) &&
         cJSON_AddNumberToObject(root, "extra_bytes", (double)st->extra_bytes);
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    if (!text) return tp_fail(TP_ERR_NOMEM, "checkpoint: cannot build the JSON block (out of memory)");
    *out = text;
    return TP_OK;
}

/* ---------------- writer ---------------- */

typedef struct {
    FILE *f;
    const char *path;
    uint64_t written;
    uint64_t die_after; /* test hook; UINT64_MAX = off */
    ckpt_hash h;
} ckpt_writer;

#ifdef TP_TESTING
uint64_t tp_test_ckpt_die_after = UINT64_MAX;
static void die_now(ckpt_writer *w) {
    fflush(w->f);
    raise(SIGKILL);
}
#endif

static tp_status w_put(ckpt_writer *w, const void *data, size_t n, int hashed) {
    const unsigned char *p = data;
    while (n > 0) {
        size_t len = n < CKPT_CHUNK ? n : CKPT_CHUNK;
        if (w->die_after != UINT64_MAX && w->written + len > w->die_after) len = (size_t)(w->die_after - w->written);
        if (hashed) hash_update(&w->h, p, len);
        if (len && fwrite(p, 1, len, w->f) != len)
            return tp_fail(TP_ERR_IO, "%s: write failed after %" PRIu64 " bytes: %s", w->path, w->written,
                           strerror(errno));
        w->written += len;
        p += len;
        n -= len;
#ifdef TP_TESTING
        if (w->written == w->die_after) die_now(w);
#endif
    }
    return TP_OK;
}


/* Removes temporaries left by a crashed writer. */
static void remove_stale_tmp(const char *dir) {
    ckpt_entry *e;
    size_t n;
    if (list_dir(dir, 1, &e, &n)) return;
    for (size_t i = 0; i < n; i++) {
        char *p = tp_path_join(dir, e[i].name);
        if (p && unlink(p) == 0) tp_log(TP_LOG_NOTE, "taper: removed an incomplete checkpoint %s", p);
        free(p);
    }
    free_entries(e, n);
}

static void apply_keep_last(const char *dir, int keep_last) {
    if (keep_last <= 0) return;
    ckpt_entry *e;
    size_t n;
    if (list_dir(dir, 0, &e, &n)) { /* the new checkpoint is written: only the clean-up is skipped */
        tp_log(TP_LOG_WARN, "taper: warning: old checkpoints not removed: %s", tp_errmsg());
        return;
    }
    for (size_t i = (size_t)keep_last; i < n; i++) {
        char *p = tp_path_join(dir, e[i].name);
        if (p && unlink(p) != 0)
            tp_log(TP_LOG_WARN, "taper: warning: cannot remove the old checkpoint %s: %s", p, strerror(errno));
        free(p);
    }
    free_entries(e, n);
}

static tp_status write_file(ckpt_writer *w, const char *json, size_t json_len, const tp_model *m, const tp_adamw *o,
                            const tp_ckpt_state *st) {
    unsigned char head[CKPT_HEADER] = {0};
    memcpy(head, CKPT_MAGIC, 8);
    put_u32(head + 8, CKPT_VERSION);
    put_u32(head + 12, 0);
    put_u64(head + 16, json_len);
    put_u64(head + 24, m->n_params);
    size_t pad = (CKPT_ALIGN - (CKPT_HEADER + json_len) % CKPT_ALIGN) % CKPT_ALIGN;
    static const unsigned char zeros[CKPT_ALIGN];
    tp_status s;
    if ((s = w_put(w, head, sizeof head, 1)) || (s = w_put(w, json, json_len, 1)) || (s = w_put(w, zeros, pad, 1)))
        return s;
    size_t bytes = m->n_params * sizeof(float);
    if ((s = w_put(w, m->params, bytes, 1)) || (s = w_put(w, o->m, bytes, 1)) || (s = w_put(w, o->v, bytes, 1)))
        return s;
    if (st->extra_bytes && (s = w_put(w, st->extra, st->extra_bytes, 1))) return s;
    unsigned char tail[8];
    put_u64(tail, hash_final(&w->h));
    if ((s = w_put(w, tail, 8, 0))) return s;
    return w_put(w, CKPT_END, 8, 0);
}

tp_status tp_ckpt_save(const char *dir, const tp_model *m, const tp_adamw *o, const tp_ckpt_state *st,
                       int keep_last) {
    if (!little_endian()) return tp_fail(TP_ERR_UNSUPPORTED, "checkpoints need a little-endian host");
    if (st->step < 0) return tp_fail(TP_ERR_ARG, "checkpoint: step %ld is negative", st->step);
    if (st->extra_bytes && !st->extra) return tp_fail(TP_ERR_ARG, "checkpoint: extra state of %zu bytes without data", st->extra_bytes);
    if (!o->m || !o->v || o->n != m->n_params)
        return tp_fail(TP_ERR_ARG, "checkpoint: optimizer holds %zu parameters, the model %zu", o->n, m->n_params);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return tp_fail(TP_ERR_IO, "%s: cannot create the checkpoint directory: %s", dir, strerror(errno));
    remove_stale_tmp(dir);

    char *json = NULL;
    tp_status s = build_json(m, o, st, &json);
    if (s) return s;
    char name[64], tmpname[64];
    snprintf(name, sizeof name, "ckpt-%08ld.tpc", st->step);
    snprintf(tmpname, sizeof tmpname, ".ckpt-%08ld.tpc.tmp", st->step);
    char *path = tp_path_join(dir, name), *tmp = tp_path_join(dir, tmpname);
    if (!path || !tmp) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto out;
    }
    ckpt_writer w = {0};
    w.path = tmp;
#ifdef TP_TESTING
    w.die_after = tp_test_ckpt_die_after;
    const char *env = getenv("TAPER_TEST_CKPT_DIE_AFTER");
    if (env && *env) w.die_after = strtoull(env, NULL, 10);
#else
    w.die_after = UINT64_MAX;
#endif
    hash_init(&w.h);
    w.f = fopen(tmp, "wb");
    if (!w.f) {
        s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    s = write_file(&w, json, strlen(json), m, o, st);
    if (!s && (fflush(w.f) != 0 || fsync(fileno(w.f)) != 0))
        s = tp_fail(TP_ERR_IO, "%s: flush/fsync failed: %s", tmp, strerror(errno));
    if (fclose(w.f) != 0 && !s) s = tp_fail(TP_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!s && rename(tmp, path) != 0)
        s = tp_fail(TP_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (s) {
        unlink(tmp);
        goto out;
    }
    fsync_dir(dir);
    apply_keep_last(dir, keep_last);
out:
    free(json);
    free(path);
    free(tmp);
    return s;
}

/* ---------------- reader ---------------- */

static const cJSON *jget(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static int j_u64(const cJSON *o, const char *key, int hex, uint64_t *v) {
    const cJSON *j = jget(o, key);
    if (!cJSON_IsString(j) || !*j->valuestring) return 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(j->valuestring, &end, hex ? 16 : 10);
    if (errno || *end || j->valuestring[0] == '-') return 0;
    *v = (uint64_t)x;
    return 1;
}

static int j_num(const cJSON *o, const char *key, double *v) {
    const cJSON *j = jget(o, key);
    if (!cJSON_IsNumber(j)) return 0;
    *v = j->valuedouble;
    return 1;
}

static int j_long(const cJSON *o, const char *key, long *v) {
    double d;
    if (!j_num(o, key, &d) || d < 0 || d > 9e15 || d != (double)(long)d) return 0;
    *v = (long)d;
    return 1;
}

/* Names the first config.json field that differs between the checkpoint and the model. */
static tp_status compare_config(const char *path, const cJSON *saved, const tp_config *c) {
    char *text = NULL;
    tp_status s = tp_config_to_json(c, &text);
    if (s) return s;
    cJSON *cur = cJSON_Parse(text);
    free(text);
    if (!cur) return tp_fail(TP_ERR_NOMEM, "out of memory");
    s = TP_OK;
    const cJSON *a = saved, *b = cur;
    for (int pass = 0; pass < 2 && !s; pass++) {
        const cJSON *it;
        cJSON_ArrayForEach(it, a) {
            const cJSON *other = jget(b, it->string);
            if (other && cJSON_Compare(it, other, 1)) continue;
            char *x = cJSON_PrintUnformatted(pass ? other : it), *y = cJSON_PrintUnformatted(pass ? it : other);
            s = tp_fail(TP_ERR_FORMAT, "%s: the checkpoint's model config differs from the model's: %s is %s in the "
                                       "checkpoint, %s in the model",
                        path, it->string, x ? x : "(absent)", y ? y : "(absent)");
            free(x);
            free(y);
            break;
        }
        a = cur, b = saved;
    }
    cJSON_Delete(cur);
    return s;
}

/* Everything read from the JSON block, applied only once the whole file checked out. */
typedef struct {
    long step, opt_step;
    uint64_t extra_bytes;
    tp_rng rng;
    tp_data_cursor cursor;
    double tokens_seen, elapsed_s;
    char *args;
    tp_adamw_cfg ocfg;
} ckpt_meta;

static tp_status parse_meta(const char *path, const char *json, size_t len, const tp_model *m, ckpt_meta *md) {
    memset(md, 0, sizeof *md);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root && tp_json_valid(json, len)) /* not the file's fault: the caller must not skip it */
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing the JSON block", path);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tp_fail(TP_ERR_FORMAT, "%s: the JSON block does not parse", path);
    }
    tp_status s = TP_OK;
    const char *bad = NULL;
    const cJSON *fmt = jget(root, "format"), *cfg = jget(root, "config"), *rng = jget(root, "rng"),
                *cur = jget(root, "cursor"), *args = jget(root, "args"), *op = jget(root, "optim");
    double np = -1, d;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "taper-checkpoint") != 0) bad = "format";
    else if (!j_num(root, "n_params", &np) || np != (double)m->n_params) {
        s = tp_fail(TP_ERR_FORMAT, "%s: n_params %.0f in the JSON block, the model has %zu", path, np, m->n_params);
        goto out;
    } else if (!cJSON_IsObject(cfg)) bad = "config";
    else if (!j_long(root, "step", &md->step)) bad = "step";
    else if (!cJSON_IsObject(rng)) bad = "rng";
    else if (!j_u64(rng, "s0", 1, &md->rng.s[0]) || !j_u64(rng, "s1", 1, &md->rng.s[1]) ||
             !j_u64(rng, "s2", 1, &md->rng.s[2]) || !j_u64(rng, "s3", 1, &md->rng.s[3]))
        bad = "rng.s0..s3";
    else if (!cJSON_IsObject(cur) || !j_u64(cur, "seed", 0, &md->cursor.seed) ||
             !j_u64(cur, "epoch", 0, &md->cursor.epoch) || !j_u64(cur, "index", 0, &md->cursor.index))
        bad = "cursor";
    else if (!j_num(root, "tokens_seen", &md->tokens_seen) || !isfinite(md->tokens_seen)) bad = "tokens_seen";
    else if (!j_num(root, "elapsed_s", &md->elapsed_s) || !isfinite(md->elapsed_s)) bad = "elapsed_s";
    else if (!args || !(cJSON_IsString(args) || cJSON_IsNull(args))) bad = "args";
    else if (!cJSON_IsObject(op) || !j_long(op, "step", &md->opt_step)) bad = "optim.step";
    else if (jget(root, "extra_bytes") && (!j_num(root, "extra_bytes", &d) || d < 0 || d > 1e15 || d != floor(d)))
        bad = "extra_bytes";
    else if (jget(root, "extra_bytes")) md->extra_bytes = (uint64_t)d;
    if (bad) {
        s = tp_fail(TP_ERR_FORMAT, "%s: JSON block: field \"%s\" missing or malformed", path, bad);
        goto out;
    }
    tp_adamw_defaults(&md->ocfg);
    tp_adamw_cfg *oc = &md->ocfg;
    /* every value range-checked before its conversion (a float or integer out of range is UB) */
    static const char *const FLOATS[] = {"lr", "min_lr", "beta1", "beta2", "eps", "weight_decay", "clip"};
    float *const fdst[] = {&oc->lr, &oc->min_lr, &oc->beta1, &oc->beta2, &oc->eps, &oc->weight_decay, &oc->clip};
    for (size_t i = 0; !bad && i < sizeof FLOATS / sizeof *FLOATS; i++)
        if (j_num(op, FLOATS[i], &d)) {
            if (!(fabs(d) <= FLT_MAX)) bad = FLOATS[i];
            else *fdst[i] = (float)d;
        }
    static const char *const LONGS[] = {"warmup_steps", "total_steps"};
    long *const ldst[] = {&oc->warmup_steps, &oc->total_steps};
    for (size_t i = 0; !bad && i < 2; i++)
        if (j_num(op, LONGS[i], &d)) {
            if (!(d >= 0 && d <= 1e15 && d == floor(d))) bad = LONGS[i];
            else *ldst[i] = (long)d;
        }
    if (!bad && j_num(op, "decay_all", &d)) {
        if (d != 0 && d != 1) bad = "decay_all";
        else oc->decay_all = (int)d;
    }
    if (bad) {
        s = tp_fail(TP_ERR_FORMAT, "%s: JSON block: field \"optim.%s\" out of range", path, bad);
        goto out;
    }
    if ((s = compare_config(path, cfg, &m->cfg))) goto out;
    if (cJSON_IsString(args) && !(md->args = strdup(args->valuestring))) s = tp_fail(TP_ERR_NOMEM, "out of memory");
out:
    cJSON_Delete(root);
    return s;
}

/* extra_bytes of the JSON block into *v, looked up before the checksum is verified (the size
 * check needs it); a block that does not parse gives 0 here and is reported by the later stages.
 * Fails only when out of memory (which would otherwise look like a damaged file). */
static tp_status peek_extra_bytes(const char *path, const char *json, size_t len, uint64_t *v) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root && tp_json_valid(json, len))
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing the JSON block", path);
    const cJSON *e = root ? jget(root, "extra_bytes") : NULL;
    *v = cJSON_IsNumber(e) && e->valuedouble > 0 && e->valuedouble < 1e15 ? (uint64_t)e->valuedouble : 0;
    cJSON_Delete(root);
    return TP_OK;
}

/* Checks one file completely (size, marker, checksum, JSON, config) and only then copies it
 * into m, o and st. */
static tp_status try_load(const char *path, tp_model *m, tp_adamw *o, tp_ckpt_state *st) {
    tp_mmap mm;
    tp_status s = tp_mmap_open(path, &mm);
    if (s) return s;
    const unsigned char *p = mm.data;
    size_t size = mm.size;
    ckpt_meta md = {0};
    void *xb = NULL;
    if (size < CKPT_HEADER + 16) {
        s = tp_fail(TP_ERR_FORMAT, "%s: truncated (%zu bytes, shorter than any checkpoint)", path, size);
        goto out;
    }
    if (memcmp(p, CKPT_MAGIC, 8) != 0) {
        s = tp_fail(TP_ERR_FORMAT, "%s: not a taper checkpoint (bad magic)", path);
        goto out;
    }
    uint32_t ver = get_u32(p + 8);
    if (ver != 1 && ver != CKPT_VERSION) {
        s = tp_fail(TP_ERR_FORMAT, "%s: checkpoint format version %u, this build reads versions 1 and %u", path, ver,
                    CKPT_VERSION);
        goto out;
    }
    uint64_t json_len = get_u64(p + 16), np = get_u64(p + 24);
    if (np != m->n_params) {
        s = tp_fail(TP_ERR_FORMAT, "%s: the checkpoint holds %" PRIu64 " parameters, the model %zu", path, np,
                    m->n_params);
        goto out;
    }
    if (json_len > size) {
        s = tp_fail(TP_ERR_FORMAT, "%s: truncated or damaged (json_len %" PRIu64 " exceeds the file size %zu)", path,
                    json_len, size);
        goto out;
    }
    size_t data_off = (CKPT_HEADER + (size_t)json_len + CKPT_ALIGN - 1) / CKPT_ALIGN * CKPT_ALIGN, arr, want;
    uint64_t extra = 0;
    if (ver != 1 && (s = peek_extra_bytes(path, (const char *)p + CKPT_HEADER, (size_t)json_len, &extra))) goto out;
    if (extra > size || tp_mul_overflow(m->n_params, sizeof(float), &arr) || tp_mul_overflow(arr, 3, &want) ||
        tp_add_overflow(want, data_off + 16, &want) || tp_add_overflow(want, (size_t)extra, &want)) {
        s = tp_fail(TP_ERR_FORMAT, "%s: sizes overflow", path);
        goto out;
    }
    if (size != want) {
        s = tp_fail(TP_ERR_FORMAT, "%s: %s (%zu bytes, a complete checkpoint of %zu parameters has %zu)", path,
                    size < want ? "truncated" : "trailing bytes", size, m->n_params, want);
        goto out;
    }
    if (memcmp(p + size - 8, CKPT_END, 8) != 0) {
        s = tp_fail(TP_ERR_FORMAT, "%s: incomplete (no end marker)", path);
        goto out;
    }
    madvise((void *)mm.data, mm.size, MADV_SEQUENTIAL);
    ckpt_hash h;
    hash_init(&h);
    hash_update(&h, p, size - 16);
    uint64_t sum = hash_final(&h), stored = get_u64(p + size - 16);
    if (sum != stored) {
        s = tp_fail(TP_ERR_FORMAT, "%s: checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64 ")", path,
                    stored, sum);
        goto out;
    }
    if ((s = parse_meta(path, (const char *)p + CKPT_HEADER, (size_t)json_len, m, &md))) goto out;
    if (md.extra_bytes != extra) { /* cannot differ once the checksum held, unless the writer was wrong */
        s = tp_fail(TP_ERR_FORMAT, "%s: extra_bytes does not parse consistently", path);
        goto out;
    }
    if (o->n != m->n_params || !o->m || !o->v) {
        s = tp_fail(TP_ERR_ARG, "%s: the optimizer is not initialised for this model (tp_adamw_init)", path);
        goto out;
    }
    if (extra && !(xb = malloc((size_t)extra))) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto out;
    }
    const tp_adamw_cfg *a = &o->cfg, *b = &md.ocfg;
    if (a->lr != b->lr || a->min_lr != b->min_lr || a->warmup_steps != b->warmup_steps ||
        a->total_steps != b->total_steps || a->beta1 != b->beta1 || a->beta2 != b->beta2 || a->eps != b->eps ||
        a->weight_decay != b->weight_decay || a->decay_all != b->decay_all || a->clip != b->clip)
        tp_log(TP_LOG_NOTE, "taper: note: %s was written with other optimizer settings (lr %g, warmup %ld, total %ld, "
                            "wd %g, clip %g); continuing with the current ones",
                path, b->lr, b->warmup_steps, b->total_steps, b->weight_decay, b->clip);
    memcpy(m->params, p + data_off, arr);
    memcpy(o->m, p + data_off + arr, arr);
    memcpy(o->v, p + data_off + 2 * arr, arr);
    if (extra) memcpy(xb, p + data_off + 3 * arr, (size_t)extra);
    st->extra = xb;
    st->extra_bytes = (size_t)extra;
    o->step = md.opt_step;
    st->step = md.step;
    st->rng = md.rng;
    st->cursor = md.cursor;
    st->tokens_seen = md.tokens_seen;
    st->elapsed_s = md.elapsed_s;
    st->args_json = md.args;
    md.args = NULL;
out:
    free(md.args);
    tp_mmap_close(&mm);
    return s;
}

tp_status tp_ckpt_load_latest(const char *dir, tp_model *m, tp_adamw *o, tp_ckpt_state *st, char **path_out) {
    if (path_out) *path_out = NULL;
    if (!little_endian()) return tp_fail(TP_ERR_UNSUPPORTED, "checkpoints need a little-endian host");
    ckpt_entry *e;
    size_t n;
    tp_status ls = list_dir(dir, 0, &e, &n);
    if (ls) return ls;
    char first_err[700] = "";
    for (size_t i = 0; i < n; i++) {
        char *p = tp_path_join(dir, e[i].name);
        if (!p) {
            free_entries(e, n);
            return tp_fail(TP_ERR_NOMEM, "out of memory");
        }
        tp_status s = try_load(p, m, o, st);
        tp_gemm_bf16_refresh(); /* the weights changed (also when a torn file was read partly) */
        if (s == TP_OK) {
            if (path_out) *path_out = p;
            else free(p);
            free_entries(e, n);
            return TP_OK;
        }
        if (s == TP_ERR_NOMEM || s == TP_ERR_ARG) { /* not the file's fault: stop */
            free(p);
            free_entries(e, n);
            return s;
        }
        tp_log(TP_LOG_WARN, "taper: warning: skipping checkpoint %s", tp_errmsg());
        if (!first_err[0]) snprintf(first_err, sizeof first_err, "%s", tp_errmsg());
        free(p);
    }
    free_entries(e, n);
    if (n == 0) return tp_fail(TP_ERR_IO, "%s: no checkpoint (ckpt-*.tpc) in this directory", dir);
    return tp_fail(TP_ERR_IO, "%s: none of the %zu checkpoints is usable; the newest: %s", dir, n, first_err);
}

void tp_ckpt_state_free(tp_ckpt_state *st) {
    if (!st) return;
    free(st->args_json);
    st->args_json = NULL;
    free(st->extra);
    st->extra = NULL;
    st->extra_bytes = 0;
}
