/* safetensors reader and writer: fixtures written by the Python `safetensors` library
 * (tests/ref/st_ref.py -> tests/fixtures/st/), a write/read round trip (also left in
 * $TAPER_EXPORT_DIR/st for `st_ref.py --check-written`), and a suite of malformed files that
 * must be refused with a message naming the file and the field. */
#include "tt.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/safetensors.h"
#include "taper/util.h"

/* ---- helpers ---- */

static int write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = len ? fwrite(data, 1, len, f) : 0;
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

static void mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') { *p = 0; mkdir(buf, 0755); *p = '/'; }
    mkdir(buf, 0755);
}

/* A safetensors file: 8-byte length (hlen_override if nonzero), header text, then n_data bytes
 * of data (value i & 0xff). */
static int write_st_raw(const char *path, const char *header, uint64_t hlen_override,
                        size_t n_data) {
    size_t hl = strlen(header);
    uint64_t h = hlen_override ? hlen_override : hl;
    size_t n = 8 + hl + n_data;
    uint8_t *buf = malloc(n);
    if (!buf) return -1;
    memcpy(buf, &h, 8);
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < n_data; i++) buf[8 + hl + i] = (uint8_t)i;
    int r = write_bytes(path, buf, n);
    free(buf);
    return r;
}

static int bits_same(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return memcmp(&a, &b, 4) == 0;
}

/* Compares every tensor listed in <prefix>.expected.json (+ .f32) with st; the file must list
 * n_expected of them (what tests/ref/st_ref.py writes). */
static void check_against_expected(const tp_safetensors *st, const char *prefix, int n_expected) {
    char jpath[1024], fpath[1024];
    snprintf(jpath, sizeof jpath, "%s.expected.json", prefix);
    snprintf(fpath, sizeof fpath, "%s.expected.f32", prefix);
    cJSON *exp = tt_read_json(jpath);
    char *vals = NULL;
    size_t vlen = 0;
    if (!TT_CHECK(exp != NULL, "cannot read %s (run tests/ref/st_ref.py --out tests/fixtures)", jpath))
        return;
    if (!TT_CHECK(tp_read_file(fpath, &vals, &vlen) == TP_OK, "cannot read %s", fpath)) {
        cJSON_Delete(exp);
        return;
    }
    const float *want_all = (const float *)(void *)vals;
    size_t n_want = vlen / 4;
    const cJSON *tensors = cJSON_GetObjectItem(exp, "tensors");
    TT_CHECK((size_t)cJSON_GetArraySize(tensors) == st->n_tensors, "%s: %d tensors expected, %zu read",
             prefix, cJSON_GetArraySize(tensors), st->n_tensors);
    const cJSON *e;
    int compared = 0;
    cJSON_ArrayForEach(e, tensors) {
        const char *name = cJSON_GetObjectItem(e, "name")->valuestring;
        const tp_st_tensor *t = tp_st_find(st, name);
        if (!TT_CHECK(t != NULL, "tensor %s not found", name)) continue;
        compared++;
        TT_CHECK(strcmp(t->dtype_str, cJSON_GetObjectItem(e, "dtype")->valuestring) == 0,
                 "%s: dtype %s", name, t->dtype_str);
        const cJSON *shape = cJSON_GetObjectItem(e, "shape");
        TT_CHECK(t->n_dims == cJSON_GetArraySize(shape), "%s: n_dims %d", name, t->n_dims);
        uint64_t n = 1;
        for (int d = 0; d < t->n_dims && d < cJSON_GetArraySize(shape); d++) {
            uint64_t v = (uint64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
            TT_CHECK(t->shape[d] == v, "%s: shape[%d] = %llu, want %llu", name, d,
                     (unsigned long long)t->shape[d], (unsigned long long)v);
            n *= v;
        }
        TT_CHECK(t->n_elem == n, "%s: n_elem %llu want %llu", name, (unsigned long long)t->n_elem,
                 (unsigned long long)n);
        const cJSON *off = cJSON_GetObjectItem(e, "f32_offset");
        float *got = malloc((t->n_elem ? t->n_elem : 1) * sizeof *got);
        tp_status s = tp_st_to_f32(t, got);
        if (cJSON_IsNull(off)) {
            TT_CHECK(s == TP_ERR_UNSUPPORTED, "%s (%s): to_f32 gave %d, want unsupported", name,
                     t->dtype_str, (int)s);
            TT_CHECK(strstr(tp_errmsg(), name) && strstr(tp_errmsg(), t->dtype_str),
                     "message should name tensor and dtype: %s", tp_errmsg());
        } else {
            size_t o = (size_t)off->valuedouble;
            if (TT_CHECK(s == TP_OK, "%s: %s", name, tp_errmsg()) &&
                TT_CHECK(o + t->n_elem <= n_want, "%s: expected values out of range", name)) {
                int bad = 0;
                for (size_t i = 0; i < t->n_elem; i++)
                    if (!bits_same(got[i], want_all[o + i]) && bad++ < 3)
                        TT_CHECK(0, "%s[%zu] = %a, want %a", name, i, (double)got[i],
                                 (double)want_all[o + i]);
                TT_CHECK(bad == 0, "%s: %d values differ", name, bad);
            }
        }
        free(got);
    }
    TT_CHECK(compared == n_expected, "%s: compared %d tensors (expected %d)", prefix, compared, n_expected);
    free(vals);
    cJSON_Delete(exp);
}

/* ---- fixtures written by the safetensors library ---- */

TT_TEST(st_fixture_basic) {
    char *path = tt_path(tt_fixtures_dir(), "st/basic.safetensors");
    char *prefix = tt_path(tt_fixtures_dir(), "st/basic");
    tp_safetensors *st = NULL;
    tp_status s = tp_st_open(path, &st);
    if (TT_CHECK(s == TP_OK, "%s", tp_errmsg())) {
        TT_CHECK(st->n_shards == 1, "n_shards %d", st->n_shards);
        check_against_expected(st, prefix, 10); /* st_ref.py: basic.safetensors, one tensor per dtype/shape */
        const char *fmt = tp_st_meta(st, "format"), *src = tp_st_meta(st, "source");
        TT_CHECK(fmt && strcmp(fmt, "pt") == 0, "metadata format = %s", fmt ? fmt : "(none)");
        TT_CHECK(src && strcmp(src, "taper tests/ref/st_ref.py") == 0, "metadata source = %s",
                 src ? src : "(none)");
        TT_CHECK(tp_st_meta(st, "nope") == NULL, "absent metadata key found");
        TT_CHECK(tp_st_find(st, "no_such_tensor") == NULL, "found a missing tensor");
        for (size_t i = 0; i < st->n_tensors; i++) { /* every view lies inside the mapping */
            const tp_st_tensor *t = &st->tensors[i];
            TT_CHECK(t->data >= st->maps[0].data &&
                     t->data + t->nbytes <= st->maps[0].data + st->maps[0].size,
                     "%s: data outside the file", t->name);
        }
    }
    tp_st_close(st);
    free(path);
    free(prefix);
}

TT_TEST(st_fixture_sharded_dir) {
    char *dir = tt_path(tt_fixtures_dir(), "st/sharded");
    char *prefix = tt_path(tt_fixtures_dir(), "st/sharded");
    tp_safetensors *st = NULL;
    tp_status s = tp_st_open(dir, &st);
    if (TT_CHECK(s == TP_OK, "%s", tp_errmsg())) {
        TT_CHECK(st->n_shards == 2, "n_shards %d", st->n_shards);
        check_against_expected(st, prefix, 21); /* st_ref.py: the sharded tiny model's 21 tensors */
        TT_CHECK(tp_st_find(st, "lm_head.weight") != NULL, "lm_head.weight missing");
    }
    tp_st_close(st);
    /* one shard on its own is a valid file holding a subset */
    char *shard = tt_path(dir, "model-00001-of-00002.safetensors");
    st = NULL;
    if (TT_CHECK(tp_st_open(shard, &st) == TP_OK, "%s", tp_errmsg()))
        TT_CHECK(st->n_tensors > 0 && st->n_tensors < 22, "shard 1 holds %zu tensors", st->n_tensors);
    tp_st_close(st);
    free(shard);
    free(dir);
    free(prefix);
}

TT_TEST(st_dir_with_model_safetensors) {
    char *src = tt_path(tt_fixtures_dir(), "st/basic.safetensors");
    char *dir = tt_path(tt_tmp_dir(), "single_dir");
    mkdir_p(dir);
    char *dst = tt_path(dir, "model.safetensors");
    char *data = NULL;
    size_t len = 0;
    if (TT_CHECK(tp_read_file(src, &data, &len) == TP_OK, "%s", tp_errmsg()) &&
        TT_CHECK(write_bytes(dst, data, len) == 0, "cannot write %s", dst)) {
        tp_safetensors *st = NULL;
        if (TT_CHECK(tp_st_open(dir, &st) == TP_OK, "%s", tp_errmsg()))
            TT_CHECK(st->n_tensors == 10, "n_tensors %zu", st->n_tensors);
        tp_st_close(st);
    }
    /* an empty directory is an I/O error naming it */
    char *empty = tt_path(tt_tmp_dir(), "empty_dir");
    mkdir_p(empty);
    tp_safetensors *st = (tp_safetensors *)1;
    TT_CHECK(tp_st_open(empty, &st) == TP_ERR_IO && st == NULL, "empty dir accepted");
    TT_CHECK(strstr(tp_errmsg(), empty) != NULL, "message lacks the path: %s", tp_errmsg());
    free(empty);
    free(data);
    free(src);
    free(dst);
    free(dir);
}

/* ---- valid corner cases hand-built ---- */

TT_TEST(st_valid_corner_cases) {
    static const struct { const char *label, *header; size_t n_data, n_tensors; } cases[] = {
        {"no tensors", "{}", 0, 0},
        {"metadata only", "{\"__metadata__\":{\"format\":\"pt\"}}    ", 0, 0},
        {"scalar and empty", "{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                             "\"e\":{\"dtype\":\"F16\",\"shape\":[0,7],\"data_offsets\":[4,4]}}", 4, 2},
        {"gap tolerated", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                          "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8]}}", 8, 2},
        {"fp8 and bool listed", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[0,3]},"
                                "\"b\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[3,4]}}", 4, 2},
        {"trailing whitespace", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]}} \n\t ", 2, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "valid_%zu.safetensors", i);
        char *path = tt_path(tt_tmp_dir(), name);
        write_st_raw(path, cases[i].header, 0, cases[i].n_data);
        tp_safetensors *st = NULL;
        tp_status s = tp_st_open(path, &st);
        if (TT_CHECK(s == TP_OK, "%s: %s", cases[i].label, tp_errmsg()))
            TT_CHECK(st->n_tensors == cases[i].n_tensors, "%s: %zu tensors", cases[i].label,
                     st->n_tensors);
        if (s == TP_OK && i == 2) {
            const tp_st_tensor *t = tp_st_find(st, "s");
            float v = 0;
            TT_CHECK(t && t->n_dims == 0 && t->n_elem == 1 && tp_st_to_f32(t, &v) == TP_OK,
                     "scalar");
            uint8_t b[4] = {0, 1, 2, 3};
            float w;
            memcpy(&w, b, 4);
            TT_CHECK(bits_same(v, w), "scalar value %a", (double)v);
            t = tp_st_find(st, "e");
            TT_CHECK(t && t->n_elem == 0 && t->nbytes == 0, "empty tensor");
        }
        if (s == TP_OK && i == 4) {
            const tp_st_tensor *t = tp_st_find(st, "a");
            TT_CHECK(t && t->dtype == TP_ST_OTHER && strcmp(t->dtype_str, "F8_E4M3") == 0, "fp8");
            float f[3];
            TT_CHECK(t && tp_st_to_f32(t, f) == TP_ERR_UNSUPPORTED, "fp8 converted");
        }
        tp_st_close(st);
        free(path);
    }
}

/* ---- malformed files ---- */

typedef struct {
    const char *label;
    const char *header;   /* NULL: raw bytes below */
    uint64_t hlen;        /* nonzero: written as the length field instead of strlen(header) */
    size_t n_data;
    const char *field;    /* must appear in the message */
} bad_case;

#define T1(dt, shape, offs) "{\"t\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static const bad_case bad_cases[] = {
    {"header not JSON", "{\"t\": {\"dtype\": \"F32\",", 0, 0, "JSON"},
    {"header not an object", "[1, 2, 3]   ", 0, 0, "not an object"},
    {"header a string", "\"hello\"", 0, 0, "not an object"},
    {"trailing bytes after JSON", "{} x", 0, 0, "after the JSON"},
    {"header length past EOF", "{}", 1000, 0, "header length"},
    {"huge header length", "{}", 0x8000000000000000ull, 0, "header length"},
    {"header length 1", "{}", 1, 0, "header length"},
    {"unknown dtype", T1("F12", "[1]", "[0,4]"), 0, 4, "dtype"},
    {"dtype not a string", T1("F32", "[1]", "[0,4]") /* patched below */, 0, 4, "dtype"},
    {"entry not an object", "{\"t\": 5}", 0, 0, "'t'"},
    {"negative shape", T1("F32", "[-1]", "[0,4]"), 0, 4, "shape"},
    {"non-integer shape", T1("F32", "[1.5]", "[0,4]"), 0, 4, "shape"},
    {"string in shape", T1("F32", "[\"1\"]", "[0,4]"), 0, 4, "shape"},
    {"shape not an array", T1("F32", "4", "[0,4]"), 0, 4, "shape"},
    {"too many dims", T1("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 0, 4, "shape"},
    {"element count overflow", T1("F32", "[4294967296,4294967296,16]", "[0,4]"), 0, 4, "shape"},
    {"byte size overflow", T1("F32", "[1073741824,1073741824]", "[0,4]"), 0, 4, "byte size"},
    {"shape beyond 2^53", T1("U8", "[18446744073709551615]", "[0,4]"), 0, 4, "shape"},
    {"sub-byte count", T1("F4", "[3]", "[0,2]"), 0, 2, "whole number of bytes"},
    {"data_offsets past end", T1("F32", "[100]", "[0,400]"), 0, 16, "data_offsets"},
    {"data_offsets begin > end", T1("F32", "[0]", "[8,4]"), 0, 16, "data_offsets"},
    {"data_offsets size mismatch", T1("F32", "[2]", "[0,12]"), 0, 16, "data_offsets"},
    {"data_offsets one number", T1("F32", "[1]", "[0]"), 0, 16, "data_offsets"},
    {"data_offsets negative", T1("F32", "[1]", "[-4,0]"), 0, 16, "data_offsets"},
    {"data_offsets missing", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 16, "data_offsets"},
    {"overlapping tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, 16, "overlap"},
    {"identical spans",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, "overlap"},
    {"duplicate name",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8, "'a'"},
    {"metadata not strings", "{\"__metadata__\":{\"format\":1}}", 0, 0, "__metadata__"},
    {"metadata not an object", "{\"__metadata__\":[]}", 0, 0, "__metadata__"},
    {"empty file", NULL, 0, 0, "header length"},
    {"5-byte file", NULL, 0, 5, "header length"},
};

TT_TEST(st_malformed_files) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        char name[64];
        snprintf(name, sizeof name, "bad_%02zu.safetensors", i);
        char *path = tt_path(tt_tmp_dir(), name);
        if (c->header) {
            char hdr[512];
            snprintf(hdr, sizeof hdr, "%s", c->header);
            if (strcmp(c->label, "dtype not a string") == 0) {
                char *q = strstr(hdr, "\"F32\"");
                memcpy(q, "32   ", 5);
            }
            write_st_raw(path, hdr, c->hlen, c->n_data);
        } else {
            uint8_t raw[8] = {1, 2, 3, 4, 5, 6, 7, 8};
            write_bytes(path, raw, c->n_data);
        }
        tp_safetensors *st = (tp_safetensors *)1;
        tp_status s = tp_st_open(path, &st);
        TT_CHECK(s == TP_ERR_FORMAT && st == NULL, "%s: status %d (%s)", c->label, (int)s,
                 s ? tp_errmsg() : "accepted");
        TT_CHECK(strstr(tp_errmsg(), path) != NULL, "%s: message lacks the path: %s", c->label,
                 tp_errmsg());
        TT_CHECK(strstr(tp_errmsg(), c->field) != NULL, "%s: message lacks \"%s\": %s", c->label,
                 c->field, tp_errmsg());
        if (s == TP_OK) tp_st_close(st);
        free(path);
    }
}

/* A header length over the 100 MB cap, in a sparse file big enough to hold it. */
TT_TEST(st_header_over_cap) {
    char *path = tt_path(tt_tmp_dir(), "huge_header.safetensors");
    uint64_t hlen = 150000000ull;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int ok = fd >= 0 && write(fd, &hlen, 8) == 8 && ftruncate(fd, (off_t)(8 + hlen + 16)) == 0;
    if (fd >= 0) close(fd);
    if (!ok) {
        tt_skip_optional("cannot create a sparse file: %s", strerror(errno));
        free(path);
        return;
    }
    tp_safetensors *st = NULL;
    tp_status s = tp_st_open(path, &st);
    TT_CHECK(s == TP_ERR_FORMAT, "status %d", (int)s);
    TT_CHECK(strstr(tp_errmsg(), path) && strstr(tp_errmsg(), "header length") &&
             strstr(tp_errmsg(), "cap"), "message: %s", tp_errmsg());
    if (s == TP_OK) tp_st_close(st);
    unlink(path);
    free(path);
}

/* ---- sharded directories ---- */

#define SHARD_A "{\"w1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}," \
                "\"w2\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}"
#define SHARD_B "{\"w3\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}"
#define SHARD_B_DUP "{\"w2\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}"

typedef struct {
    const char *label;
    const char *b_header;   /* contents of b.safetensors */
    const char *index;      /* model.safetensors.index.json text */
    tp_status want;
    const char *file;       /* "index", "a", "b": whose path the message must name */
    const char *field;
} shard_case;

#define WM(x) "{\"metadata\":{\"total_size\":16},\"weight_map\":{" x "}}"
#define OK_MAP "\"w1\":\"a.safetensors\",\"w2\":\"a.safetensors\",\"w3\":\"b.safetensors\""

static const shard_case shard_cases[] = {
    {"valid", NULL, WM(OK_MAP), TP_OK, NULL, NULL},
    {"duplicate name across shards", SHARD_B_DUP,
     WM("\"w1\":\"a.safetensors\",\"w2\":\"b.safetensors\""), TP_ERR_FORMAT, "b", "'w2'"},
    {"index names a missing shard", NULL, WM(OK_MAP ",\"w4\":\"c.safetensors\""), TP_ERR_FORMAT,
     "index", "c.safetensors"},
    {"shard name with ../", NULL, WM("\"w1\":\"../a.safetensors\""), TP_ERR_FORMAT, "index",
     "../a.safetensors"},
    {"absolute shard name", NULL, WM("\"w1\":\"/etc/passwd\""), TP_ERR_FORMAT, "index", "/etc/passwd"},
    {"shard name ..", NULL, WM("\"w1\":\"..\""), TP_ERR_FORMAT, "index", "'w1'"},
    {"tensor missing from its shard", NULL,
     WM(OK_MAP ",\"w9\":\"b.safetensors\""), TP_ERR_FORMAT, "index", "'w9'"},
    {"tensor in the wrong shard", NULL,
     WM("\"w1\":\"a.safetensors\",\"w2\":\"b.safetensors\",\"w3\":\"b.safetensors\""),
     TP_ERR_FORMAT, "index", "'w2'"},
    {"tensor not listed", NULL, WM("\"w1\":\"a.safetensors\",\"w3\":\"b.safetensors\""),
     TP_ERR_FORMAT, "index", "'w2'"},
    {"weight_map value not a string", NULL, WM("\"w1\":3"), TP_ERR_FORMAT, "index", "'w1'"},
    {"weight_map missing", NULL, "{\"metadata\":{}}", TP_ERR_FORMAT, "index", "weight_map"},
    {"index not JSON", NULL, "{\"weight_map\":", TP_ERR_FORMAT, "index", "JSON"},
    {"weight_map listed twice", NULL, WM(OK_MAP ",\"w1\":\"a.safetensors\""), TP_ERR_FORMAT, "index",
     "'w1'"},
    {"bad shard content", "{\"w3\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,4]}}",
     WM(OK_MAP), TP_ERR_FORMAT, "b", "data_offsets"},
};

TT_TEST(st_sharded_index_checks) {
    for (size_t i = 0; i < sizeof shard_cases / sizeof shard_cases[0]; i++) {
        const shard_case *c = &shard_cases[i];
        char name[64];
        snprintf(name, sizeof name, "shards_%02zu", i);
        char *dir = tt_path(tt_tmp_dir(), name);
        mkdir_p(dir);
        char *a = tt_path(dir, "a.safetensors"), *b = tt_path(dir, "b.safetensors");
        char *idx = tt_path(dir, "model.safetensors.index.json");
        write_st_raw(a, SHARD_A, 0, 12);
        write_st_raw(b, c->b_header ? c->b_header : SHARD_B, 0, 4);
        write_bytes(idx, c->index, strlen(c->index));
        tp_safetensors *st = NULL;
        tp_status s = tp_st_open(dir, &st);
        TT_CHECK(s == c->want, "%s: status %d (%s)", c->label, (int)s, s ? tp_errmsg() : "ok");
        if (s == TP_OK) {
            TT_CHECK(st->n_shards == 2 && st->n_tensors == 3, "%s: %d shards %zu tensors", c->label,
                     st->n_shards, st->n_tensors);
            const tp_st_tensor *w3 = tp_st_find(st, "w3");
            TT_CHECK(w3 && w3->dtype == TP_ST_F16 && strstr(st->shard_paths[w3->shard], "b.safetensors"),
                     "%s: w3 misplaced", c->label);
            tp_st_close(st);
        } else {
            const char *want_path = strcmp(c->file, "index") == 0 ? idx : strcmp(c->file, "a") == 0 ? a : b;
            TT_CHECK(strstr(tp_errmsg(), want_path) != NULL, "%s: message lacks %s: %s", c->label,
                     want_path, tp_errmsg());
            TT_CHECK(strstr(tp_errmsg(), c->field) != NULL, "%s: message lacks \"%s\": %s", c->label,
                     c->field, tp_errmsg());
        }
        free(a); free(b); free(idx); free(dir);
    }
}

/* ---- writer ---- */

/* Rounding cases with known answers (IEEE binary16 / bfloat16, round to nearest even). */
TT_TEST(st_half_rounding_known_values) {
    static const struct { uint32_t f; uint16_t h; } f16[] = {
        {0x3f800000u, 0x3c00}, /* 1 */
        {0x3f801000u, 0x3c00}, /* 1 + 2^-11: tie, to even */
        {0x3f803000u, 0x3c02}, /* 1 + 3*2^-11: tie, to even (up) */
        {0x3f801001u, 0x3c01}, /* just above the tie */
        {0x477fe000u, 0x7bff}, /* 65504 */
        {0x477ff000u, 0x7c00}, /* 65520: rounds to inf */
        {0x477fefffu, 0x7bff}, /* just below 65520 */
        {0x33800000u, 0x0001}, /* 2^-24: smallest subnormal */
        {0x33000000u, 0x0000}, /* 2^-25: tie, to even (zero) */
        {0x33400000u, 0x0001}, /* 1.5 * 2^-25 */
        {0x80000000u, 0x8000}, /* -0 */
        {0xff800000u, 0xfc00}, /* -inf */
    };
    for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++) {
        float f;
        memcpy(&f, &f16[i].f, 4);
        uint16_t h = tp_fp32_to_fp16(f);
        TT_CHECK(h == f16[i].h, "fp16(%a) = 0x%04x, want 0x%04x", (double)f, h, f16[i].h);
    }
    static const struct { uint32_t f; uint16_t h; } bf[] = {
        {0x3f808000u, 0x3f80}, /* 1 + 2^-8: tie, to even */
        {0x3f818000u, 0x3f82}, /* 1 + 3*2^-8: tie, up */
        {0x3f808001u, 0x3f81},
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to inf */
        {0x00000001u, 0x0000}, /* smallest fp32 subnormal: rounds to zero */
        {0x80000000u, 0x8000},
    };
    for (size_t i = 0; i < sizeof bf / sizeof bf[0]; i++) {
        float f;
        memcpy(&f, &bf[i].f, 4);
        uint16_t h = tp_fp32_to_bf16(f);
        TT_CHECK(h == bf[i].h, "bf16(%a) = 0x%04x, want 0x%04x", (double)f, h, bf[i].h);
    }
    float nan = NAN;
    TT_CHECK((tp_fp32_to_fp16(nan) & 0x7c00) == 0x7c00 && (tp_fp32_to_fp16(nan) & 0x3ff),
             "fp16 NaN");
    TT_CHECK(isnan(tp_bf16_to_fp32(tp_fp32_to_bf16(nan))), "bf16 NaN");
}

/* Where files for `st_ref.py --check-written` go: $TAPER_EXPORT_DIR/st (kept; scripts/ref.sh
 * checks them), else the scratch directory. */
static const char *ref_out_dir(void) {
    static char buf[1024];
    const char *e = getenv("TAPER_EXPORT_DIR");
    snprintf(buf, sizeof buf, "%s/st", e && *e ? e : tt_tmp_dir());
    return buf;
}

typedef struct {
    const char *name;
    tp_st_dtype dtype;
    int n_dims;
    uint64_t shape[3];
} wspec;

/* Added in this order; the odd-sized F16 before F32 tests the writer's alignment layout. */
static const wspec wspecs[] = {
    {"odd_f16", TP_ST_F16, 1, {3}},
    {"mat_f32", TP_ST_F32, 2, {3, 4}},
    {"specials_f16", TP_ST_F16, 1, {12}},
    {"specials_bf16", TP_ST_BF16, 2, {2, 6}},
    {"scalar_f32", TP_ST_F32, 0, {0}},
    {"empty_f16", TP_ST_F16, 2, {0, 3}},
    {"rand_bf16", TP_ST_BF16, 3, {2, 3, 5}},
    {"weird \"name\"\\ \t with escapes", TP_ST_F32, 1, {2}},
    {"model.layers.0.mlp.up_proj.weight", TP_ST_F32, 2, {4, 3}},
};
#define N_WSPECS (sizeof wspecs / sizeof wspecs[0])

static size_t wspec_n(const wspec *w) {
    size_t n = 1;
    for (int d = 0; d < w->n_dims; d++) n *= (size_t)w->shape[d];
    return n;
}

static void fill_inputs(float *v, size_t n, uint64_t *state) {
    static const uint32_t specials[] = {
        0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x00000001u,
        0x3f801000u, 0x3f803000u, 0x477ff000u, 0x38800000u, 0x33000000u, 0x3f808000u,
        0x3f818000u, 0x7f7fffffu, 0x387fc000u, 0xc0490fdbu,
    };
    for (size_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(*state >> 33);
        if (r % 3 == 0) memcpy(&v[i], &specials[(r / 3) % 16], 4);
        else v[i] = ((float)(r % 200001) - 100000.0f) * 1.2345e-3f;
    }
}

static int is_tmp_leftover(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) found = 1;
    closedir(d);
    return found;
}

TT_TEST(st_writer_roundtrip) {
    char *dir = tt_path(ref_out_dir(), "st");
    mkdir_p(dir);
    char *path = tt_path(dir, "written.safetensors");
    size_t total = 0, offs[N_WSPECS];
    for (size_t i = 0; i < N_WSPECS; i++) { offs[i] = total; total += wspec_n(&wspecs[i]); }
    float *in = malloc(total * sizeof *in);
    uint64_t state = 12345;
    fill_inputs(in, total, &state);

    tp_st_writer *w = NULL;
    TT_CHECK(tp_st_writer_new(&w) == TP_OK, "writer_new");
    TT_CHECK(tp_st_writer_meta(w, "taper_test", "round \"trip\"") == TP_OK, "meta");
    for (size_t i = 0; i < N_WSPECS; i++)
        TT_CHECK(tp_st_writer_add(w, wspecs[i].name, wspecs[i].dtype, wspecs[i].n_dims,
                                  wspecs[i].shape, in + offs[i]) == TP_OK, "add %s: %s",
                 wspecs[i].name, tp_errmsg());
    /* refused additions leave the writer usable */
    uint64_t sh[1] = {1};
    TT_CHECK(tp_st_writer_add(w, "__metadata__", TP_ST_F32, 1, sh, in) == TP_ERR_ARG, "__metadata__");
    TT_CHECK(tp_st_writer_add(w, "x", TP_ST_OTHER, 1, sh, in) == TP_ERR_ARG, "OTHER dtype");
    TT_CHECK(tp_st_writer_add(w, "y", TP_ST_F32, 9, sh, in) == TP_ERR_ARG, "9 dims");
    TT_CHECK(tp_st_writer_add(w, "", TP_ST_F32, 1, sh, in) == TP_ERR_ARG, "empty name");
    /* written twice: the second write replaces the first atomically */
    TT_CHECK(tp_st_write(w, path) == TP_OK, "write: %s", tp_errmsg());
    TT_CHECK(tp_st_write(w, path) == TP_OK, "rewrite: %s", tp_errmsg());
    tp_st_writer_free(w);
    TT_CHECK(!is_tmp_leftover(dir), "a temporary file was left in %s", dir);

    tp_safetensors *st = NULL;
    if (TT_CHECK(tp_st_open(path, &st) == TP_OK, "reopen: %s", tp_errmsg())) {
        TT_CHECK(st->n_tensors == N_WSPECS, "n_tensors %zu", st->n_tensors);
        const char *fmt = tp_st_meta(st, "format"), *tm = tp_st_meta(st, "taper_test");
        TT_CHECK(fmt && strcmp(fmt, "pt") == 0, "format metadata %s", fmt ? fmt : "(none)");
        TT_CHECK(tm && strcmp(tm, "round \"trip\"") == 0, "custom metadata %s", tm ? tm : "(none)");
        uint64_t hlen;
        memcpy(&hlen, st->maps[0].data, 8);
        TT_CHECK(hlen % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hlen);
        TT_CHECK(st->maps[0].data[8 + hlen - 1] == '}' || st->maps[0].data[8 + hlen - 1] == ' ',
                 "header padding");
        for (size_t i = 0; i < N_WSPECS && i < st->n_tensors; i++) {
            const wspec *ws = &wspecs[i];
            const tp_st_tensor *t = &st->tensors[i]; /* header order == order added */
            if (!TT_CHECK(strcmp(t->name, ws->name) == 0, "tensor %zu is %s, want %s", i, t->name,
                          ws->name))
                continue;
            TT_CHECK(t->dtype == ws->dtype && t->n_dims == ws->n_dims, "%s: dtype/dims", ws->name);
            for (int d = 0; d < ws->n_dims; d++)
                TT_CHECK(t->shape[d] == ws->shape[d], "%s: shape[%d]", ws->name, d);
            size_t esz = ws->dtype == TP_ST_F32 ? 4 : 2;
            TT_CHECK((size_t)(t->data - st->maps[0].data) % esz == 0, "%s: unaligned data", ws->name);
            size_t n = wspec_n(ws);
            float *got = malloc((n ? n : 1) * sizeof *got);
            if (TT_CHECK(tp_st_to_f32(t, got) == TP_OK, "%s: %s", ws->name, tp_errmsg())) {
                int bad = 0;
                for (size_t k = 0; k < n; k++) {
                    float x = in[offs[i] + k], want = x;
                    if (ws->dtype == TP_ST_F16) want = tp_fp16_to_fp32(tp_fp32_to_fp16(x));
                    if (ws->dtype == TP_ST_BF16) want = tp_bf16_to_fp32(tp_fp32_to_bf16(x));
                    if (!bits_same(got[k], want) && bad++ < 3)
                        TT_CHECK(0, "%s[%zu]: %a, want %a (input %a)", ws->name, k, (double)got[k],
                                 (double)want, (double)x);
                }
                TT_CHECK(bad == 0, "%s: %d values differ", ws->name, bad);
            }
            free(got);
        }
    }
    tp_st_close(st);

    /* inputs for st_ref.py --check-written, which re-rounds them with torch */
    cJSON *spec = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(spec, "metadata");
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "taper_test", "round \"trip\"");
    cJSON *arr = cJSON_AddArrayToObject(spec, "tensors");
    for (size_t i = 0; i < N_WSPECS; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", wspecs[i].name);
        cJSON_AddStringToObject(e, "dtype", wspecs[i].dtype == TP_ST_F32 ? "F32"
                                : wspecs[i].dtype == TP_ST_F16 ? "F16" : "BF16");
        cJSON *shp = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < wspecs[i].n_dims; d++)
            cJSON_AddItemToArray(shp, cJSON_CreateNumber((double)wspecs[i].shape[d]));
        cJSON_AddNumberToObject(e, "offset", (double)offs[i]);
        cJSON_AddItemToArray(arr, e);
    }
    char *text = cJSON_Print(spec);
    char *jp = tt_path(dir, "written.inputs.json"), *fp = tt_path(dir, "written.inputs.f32");
    TT_CHECK(write_bytes(jp, text, strlen(text)) == 0 && write_bytes(fp, in, total * 4) == 0,
             "cannot write inputs for st_ref.py");
    free(jp); free(fp);
    cJSON_free(text);
    cJSON_Delete(spec);
    free(in);
    free(path);
    free(dir);
}

TT_TEST(st_writer_errors) {
    float v[2] = {1, 2};
    uint64_t sh[1] = {2};
    tp_st_writer *w = NULL;
    tp_st_writer_new(&w);
    tp_st_writer_add(w, "a", TP_ST_F32, 1, sh, v);
    tp_st_writer_add(w, "a", TP_ST_F16, 1, sh, v);
    char *path = tt_path(tt_tmp_dir(), "dup.safetensors");
    TT_CHECK(tp_st_write(w, path) == TP_ERR_ARG, "duplicate names written");
    TT_CHECK(strstr(tp_errmsg(), "'a'") != NULL, "message: %s", tp_errmsg());
    TT_CHECK(access(path, F_OK) != 0, "a file was written despite the error");
    tp_st_writer_free(w);

    tp_st_writer_new(&w);
    tp_st_writer_add(w, "a", TP_ST_F32, 1, sh, v);
    char *bad = tt_path(tt_tmp_dir(), "no/such/dir/x.safetensors");
    TT_CHECK(tp_st_write(w, bad) == TP_ERR_IO, "write into a missing directory");
    TT_CHECK(strstr(tp_errmsg(), "no/such/dir") != NULL, "message: %s", tp_errmsg());
    TT_CHECK(tp_st_writer_add(w, "b", TP_ST_F32, 1, sh, NULL) == TP_ERR_ARG, "NULL data accepted");
    tp_st_writer_free(w);
    free(bad);
    free(path);
}
