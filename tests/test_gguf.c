/* GGUF reader, dequantisers, quantisers and writer, checked against gguf-py
 * (fixtures from tests/ref/gguf_ref.py in tests/fixtures/gguf/), against literal values,
 * and against malformed files built byte by byte here. */
#include "tt.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/gguf.h"

#if defined(__SANITIZE_ADDRESS__)
#define TT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TT_SANITIZED 1
#endif
#endif
#ifndef TT_SANITIZED
#define TT_SANITIZED 0
#endif

/* ------------------------------------------------------------------ helpers */

static char *fx(const char *name) {
    char *dir = tt_path(tt_fixtures_dir(), "gguf");
    char *p = tt_path(dir, name);
    free(dir);
    return p;
}

static float *read_f32(const char *path, size_t *n) {
    char *buf;
    size_t len;
    if (tp_read_file(path, &buf, &len) != TP_OK) return NULL;
    float *f = malloc(len ? len : 4);
    if (f) memcpy(f, buf, len);
    free(buf);
    *n = len / 4;
    return f;
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t w = n ? fwrite(p, 1, n, f) : 0;
    return fclose(f) == 0 && w == n;
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Bit-exact comparison; two NaNs count as equal whatever their payload (the same NaN can
 * come out of numpy and C with a different payload after arithmetic). */
static void check_bits(const float *got, const float *want, size_t n, const char *what) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (f2u(got[i]) != f2u(want[i]) && !(isnan(got[i]) && isnan(want[i]))) {
            if (!bad) first = i;
            bad++;
        }
    TT_CHECK(bad == 0, "%s: %zu of %zu values differ, first at %zu: %.9g (0x%08x) vs gguf-py %.9g (0x%08x)",
             what, bad, n, first, bad ? got[first] : 0.0, bad ? f2u(got[first]) : 0u,
             bad ? want[first] : 0.0, bad ? f2u(want[first]) : 0u);
}

static int hexv(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* "-" is the empty string; otherwise hex of the bytes. */
static int str_matches_hex(const char *hex, const char *data, uint64_t len) {
    if (strcmp(hex, "-") == 0) return len == 0;
    size_t h = strlen(hex);
    if (h % 2 || h / 2 != len) return 0;
    for (size_t i = 0; i < len; i++) {
        int a = hexv(hex[2 * i]), b = hexv(hex[2 * i + 1]);
        if (a < 0 || b < 0 || (uint8_t)data[i] != (uint8_t)(a * 16 + b)) return 0;
    }
    return 1;
}

/* One value as gguf_ref.py formats it, against what the reader decoded. */
static int value_matches(uint32_t vt, const char *tok, uint64_t u, int64_t i, double f,
                         const char *s, uint64_t slen) {
    switch (vt) {
    case TP_GGUF_STRING: return str_matches_hex(tok, s, slen);
    case TP_GGUF_FLOAT32: case TP_GGUF_FLOAT64: {
        double want = strtod(tok, NULL);
        return memcmp(&want, &f, sizeof f) == 0;
    }
    case TP_GGUF_INT8: case TP_GGUF_INT16: case TP_GGUF_INT32: case TP_GGUF_INT64:
        return strtoll(tok, NULL, 10) == i;
    default:
        return strtoull(tok, NULL, 10) == u;
    }
}

/* Checks every kv of g against a *_meta.txt written from gguf-py's reader; the file must
 * list exactly the keys g has, n_keys of them (what tests/ref/gguf_ref.py writes), and its header. */
static void check_meta(const tp_gguf *g, const char *meta_name, uint64_t n_keys) {
    char *path = fx(meta_name);
    FILE *f = fopen(path, "r");
    TT_CHECK(f != NULL, "cannot open %s", path);
    free(path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    uint64_t n_listed = 0;
    int header = 0;
    while (getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\n")] = 0;
        char *save, *tag = strtok_r(line, " ", &save);
        if (!tag) continue;
        if (strcmp(tag, "H") == 0) {
            header++;
            unsigned long long v[5];
            for (int k = 0; k < 5; k++) v[k] = strtoull(strtok_r(NULL, " ", &save), NULL, 10);
            TT_CHECK(g->version == v[0], "%s: version %u vs %llu", meta_name, g->version, v[0]);
            TT_CHECK(g->n_tensors == v[1], "%s: n_tensors %" PRIu64 " vs %llu", meta_name, g->n_tensors, v[1]);
            TT_CHECK(g->n_kv == v[2], "%s: n_kv %" PRIu64 " vs %llu", meta_name, g->n_kv, v[2]);
            TT_CHECK(g->alignment == v[3], "%s: alignment %" PRIu64 " vs %llu", meta_name, g->alignment, v[3]);
            TT_CHECK(g->data_offset == v[4], "%s: data_offset %" PRIu64 " vs %llu", meta_name, g->data_offset, v[4]);
            continue;
        }
        const char *key = strtok_r(NULL, " ", &save);
        uint32_t vt = (uint32_t)strtoul(strtok_r(NULL, " ", &save), NULL, 10);
        const tp_gguf_kv *kv = tp_gguf_find(g, key);
        n_listed++;
        TT_CHECK(kv != NULL, "%s: key %s missing", meta_name, key);
        if (!kv) continue;
        if (strcmp(tag, "S") == 0) {
            const char *tok = strtok_r(NULL, " ", &save);
            TT_CHECK(kv->type == vt, "%s: %s type %d vs %u", meta_name, key, (int)kv->type, vt);
            if (kv->type != vt) continue;
            int ok = value_matches(vt, tok, kv->v.u64, kv->v.i64, kv->v.f64,
                                   vt == TP_GGUF_STRING ? kv->v.str.data : NULL,
                                   vt == TP_GGUF_STRING ? kv->v.str.len : 0);
            TT_CHECK(ok, "%s: %s value differs from gguf-py's %s", meta_name, key, tok);
        } else {
            uint64_t n = strtoull(strtok_r(NULL, " ", &save), NULL, 10);
            unsigned long k = strtoul(strtok_r(NULL, " ", &save), NULL, 10);
            TT_CHECK(kv->type == TP_GGUF_ARRAY && kv->v.arr.type == vt && kv->v.arr.n == n,
                     "%s: %s is not an array of %" PRIu64 " of type %u", meta_name, key, n, vt);
            if (kv->type != TP_GGUF_ARRAY || kv->v.arr.type != vt || kv->v.arr.n != n) continue;
            for (unsigned long j = 0; j < k; j++) {
                uint64_t idx = strtoull(strtok_r(NULL, " ", &save), NULL, 10);
                const char *tok = strtok_r(NULL, " ", &save);
                int ok;
                if (vt == TP_GGUF_STRING)
                    ok = value_matches(vt, tok, 0, 0, 0, kv->v.arr.strs[idx].data, kv->v.arr.strs[idx].len);
                else
                    ok = value_matches(vt, tok, tp_gguf_arr_u64(kv, idx), tp_gguf_arr_i64(kv, idx),
                                       tp_gguf_arr_f64(kv, idx), NULL, 0);
                TT_CHECK(ok, "%s: %s[%" PRIu64 "] differs from gguf-py's %s", meta_name, key, idx, tok);
            }
        }
    }
    free(line);
    fclose(f);
    TT_CHECK(n_listed == g->n_kv, "%s lists %" PRIu64 " keys, file has %" PRIu64, meta_name, n_listed, g->n_kv);
    TT_CHECK(header == 1 && n_listed == n_keys, "%s: compared %" PRIu64 " keys, %d header lines (expected %" PRIu64
             ", 1)", meta_name, n_listed, header, n_keys);
}

static tp_gguf *open_fixture(const char *name) {
    char *p = fx(name);
    tp_gguf *g = NULL;
    tp_status s = tp_gguf_open(p, &g);
    TT_CHECK(s == TP_OK, "open %s: %s", p, tp_errmsg());
    free(p);
    return g;
}

/* byte builder for hand-made files (defined with the malformed-file tests below) */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} mb;
static void mb_hdr(mb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv);
static void mb_ti(mb *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off);
static void mb_pad(mb *b, size_t a);
static void mb_zeros(mb *b, size_t n);

/* ------------------------------------------------------------------ fixtures from gguf-py */

TT_TEST(gguf_fixture_metadata) {
    tp_gguf *g = open_fixture("types.gguf");
    if (!g) return;
    check_meta(g, "types_meta.txt", 27);
    /* literal values, independent of the meta file (the same ones gguf_ref.py writes) */
    uint32_t u;
    float f;
    int b;
    char *s;
    TT_CHECK(tp_gguf_get_u32(g, "t.u32", &u) == TP_OK && u == 4000000000u, "t.u32 = %u", u);
    TT_CHECK(tp_gguf_get_u32(g, "t.u8", &u) == TP_OK && u == 200, "t.u8 via get_u32 = %u", u);
    TT_CHECK(tp_gguf_get_u32(g, "t.u16", &u) == TP_OK && u == 60000, "t.u16 via get_u32 = %u", u);
    TT_CHECK(tp_gguf_get_u32(g, "t.i8", &u) == TP_ERR_FORMAT, "negative int8 must not fit a u32");
    TT_CHECK(strstr(tp_errmsg(), "t.i8") != NULL, "message names the key: %s", tp_errmsg());
    TT_CHECK(tp_gguf_get_u32(g, "t.u64", &u) == TP_ERR_FORMAT, "UINT64_MAX must not fit a u32");
    TT_CHECK(tp_gguf_get_u32(g, "t.str", &u) == TP_ERR_FORMAT, "string is not an integer");
    TT_CHECK(tp_gguf_get_u32(g, "no.such.key", &u) == TP_ERR_ARG, "missing key -> TP_ERR_ARG");
    TT_CHECK(strstr(tp_errmsg(), "no.such.key") != NULL, "message names the key: %s", tp_errmsg());
    TT_CHECK(tp_gguf_get_f32(g, "t.f32", &f) == TP_OK && f == 0.1f, "t.f32 = %.9g", f);
    TT_CHECK(tp_gguf_get_f32(g, "t.f64", &f) == TP_OK && f == (float)-2.718281828459045, "t.f64 = %.9g", f);
    TT_CHECK(tp_gguf_get_f32(g, "t.u8", &f) == TP_ERR_FORMAT, "int is not a float");
    TT_CHECK(tp_gguf_get_bool(g, "t.bool_true", &b) == TP_OK && b == 1, "bool_true = %d", b);
    TT_CHECK(tp_gguf_get_bool(g, "t.bool_false", &b) == TP_OK && b == 0, "bool_false = %d", b);
    TT_CHECK(tp_gguf_get_bool(g, "t.u8", &b) == TP_ERR_FORMAT, "u8 is not a bool");
    if (tp_gguf_get_str(g, "t.str", &s) == TP_OK) {
        TT_CHECK(strcmp(s, "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93") == 0, "t.str = %s", s);
        free(s);
    } else TT_CHECK(0, "get_str t.str: %s", tp_errmsg());
    if (tp_gguf_get_str(g, "t.str_empty", &s) == TP_OK) {
        TT_CHECK(s[0] == 0, "t.str_empty = '%s'", s);
        free(s);
    } else TT_CHECK(0, "get_str t.str_empty: %s", tp_errmsg());
    TT_CHECK(tp_gguf_get_str(g, "t.u8", &s) == TP_ERR_FORMAT, "u8 is not a string");
    const tp_gguf_kv *kv;
    kv = tp_gguf_find(g, "t.u64");
    TT_CHECK(kv && kv->type == TP_GGUF_UINT64 && kv->v.u64 == UINT64_MAX, "t.u64");
    kv = tp_gguf_find(g, "t.i64");
    TT_CHECK(kv && kv->type == TP_GGUF_INT64 && kv->v.i64 == INT64_MIN, "t.i64");
    kv = tp_gguf_find(g, "t.i16");
    TT_CHECK(kv && kv->type == TP_GGUF_INT16 && kv->v.i64 == -30000, "t.i16");
    kv = tp_gguf_find(g, "t.f64");
    TT_CHECK(kv && kv->type == TP_GGUF_FLOAT64 && kv->v.f64 == -2.718281828459045, "t.f64");
    kv = tp_gguf_find(g, "a.str");
    TT_CHECK(kv && kv->type == TP_GGUF_ARRAY && kv->v.arr.type == TP_GGUF_STRING && kv->v.arr.n == 4 &&
             kv->v.arr.strs[1].len == 0 && kv->v.arr.strs[2].len == 9 &&
             memcmp(kv->v.arr.strs[2].data, "\xc3\xbcn\xc3\xaf" "code", 9) == 0, "a.str");
    kv = tp_gguf_find(g, "a.i64");
    TT_CHECK(kv && tp_gguf_arr_i64(kv, 0) == INT64_MIN && tp_gguf_arr_i64(kv, 1) == INT64_MAX, "a.i64");
    kv = tp_gguf_find(g, "a.u64");
    TT_CHECK(kv && tp_gguf_arr_u64(kv, 1) == UINT64_MAX, "a.u64");
    kv = tp_gguf_find(g, "a.i8");
    TT_CHECK(kv && tp_gguf_arr_i64(kv, 0) == -128 && tp_gguf_arr_f64(kv, 2) == 127.0, "a.i8");
    kv = tp_gguf_find(g, "a.f32");
    TT_CHECK(kv && tp_gguf_arr_f64(kv, 3) == (double)0x1p-149f && signbit(tp_gguf_arr_f64(kv, 1)), "a.f32");
    kv = tp_gguf_find(g, "general.architecture");
    TT_CHECK(kv && kv->type == TP_GGUF_STRING && kv->v.str.len == 10 &&
             memcmp(kv->v.str.data, "taper-test", 10) == 0, "general.architecture");
    tp_gguf_close(g);
}

/* Every tensor of the fixtures, dequantised, must equal gguf-py's dequantize bit for bit
 * (quant.c keeps ggml's operation order and contraction is off; Q8_K's reference is
 * d * q computed by numpy in gguf_ref.py since gguf-py has no Q8_K dequantiser). */
TT_TEST(gguf_fixture_tensors) {
    char *mpath = fx("tensors.txt");
    FILE *f = fopen(mpath, "r");
    TT_CHECK(f != NULL, "cannot open %s", mpath);
    free(mpath);
    if (!f) return;
    char gname[128] = "", tname[128], ffile[256], cur[128] = "";
    unsigned type, nd;
    unsigned long long ne[4], nel;
    tp_gguf *g = NULL;
    uint64_t n_in_file = 0;
    int types_seen[64] = {0}, n_compared = 0, n_files = 0;
    while (fscanf(f, "%127s %127s %u %u %llu %llu %llu %llu %llu %255s", gname, tname, &type, &nd,
                  &ne[0], &ne[1], &ne[2], &ne[3], &nel, ffile) == 10) {
        if (strcmp(gname, cur) != 0) {
            if (g) TT_CHECK(g->n_tensors == n_in_file, "%s: %" PRIu64 " tensors, manifest lists %" PRIu64,
                            cur, g->n_tensors, n_in_file);
            tp_gguf_close(g);
            g = open_fixture(gname);
            snprintf(cur, sizeof cur, "%s", gname);
            n_in_file = 0;
            if (!g) break;
            n_files++;
        }
        n_in_file++;
        const tp_gguf_tensor *t = tp_gguf_find_tensor(g, tname);
        TT_CHECK(t != NULL, "%s: tensor %s missing", gname, tname);
        if (!t) continue;
        if (type < 64) types_seen[type] = 1;
        TT_CHECK(t->type == (tp_ggml_type)type && t->n_dims == nd && t->ne[0] == ne[0] && t->ne[1] == ne[1] &&
                 t->ne[2] == ne[2] && t->ne[3] == ne[3] && t->n_elem == nel,
                 "%s: type/shape differ from gguf-py's: type %d n_dims %u ne %" PRIu64 "x%" PRIu64 "x%"
                 PRIu64 "x%" PRIu64, tname, (int)t->type, t->n_dims, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
        TT_CHECK(t->nbytes == nel / tp_ggml_block_size(t->type) * tp_ggml_type_size(t->type),
                 "%s: nbytes %zu", tname, t->nbytes);
        TT_CHECK((uint64_t)(t->data - g->map.data) == g->data_offset + t->offset &&
                 t->offset % g->alignment == 0, "%s: data pointer/offset", tname);
        size_t nref;
        char *rp = fx(ffile);
        float *want = read_f32(rp, &nref);
        free(rp);
        TT_CHECK(want && nref == nel, "%s: expected file %s has %zu values, want %llu", tname, ffile, nref, nel);
        float *got = malloc(nel * sizeof *got);
        tp_status s = tp_gguf_tensor_to_f32(t, got);
        TT_CHECK(s == TP_OK, "%s: %s", tname, tp_errmsg());
        if (want && nref == nel && s == TP_OK) {
            char what[300];
            snprintf(what, sizeof what, "%s/%s (%s)", gname, tname, tp_ggml_type_name(t->type));
            check_bits(got, want, nel, what);
            n_compared++;
        }
        free(got);
        free(want);
    }
    if (g) TT_CHECK(g->n_tensors == n_in_file, "%s: %" PRIu64 " tensors, manifest lists %" PRIu64,
                    cur, g->n_tensors, n_in_file);
    tp_gguf_close(g);
    fclose(f);
    /* tests/ref/gguf_ref.py's manifest: 19 tensors of types.gguf, 3 of align64.gguf */
    TT_CHECK(n_files == 2 && n_compared == 22, "compared %d tensors of %d files (expected 22 of 2)", n_compared,
             n_files);
    const tp_ggml_type all[] = {TP_GGML_F32, TP_GGML_F16, TP_GGML_BF16, TP_GGML_Q4_0, TP_GGML_Q4_1,
                                TP_GGML_Q5_0, TP_GGML_Q5_1, TP_GGML_Q8_0, TP_GGML_Q2_K, TP_GGML_Q3_K,
                                TP_GGML_Q4_K, TP_GGML_Q5_K, TP_GGML_Q6_K, TP_GGML_Q8_K};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        TT_CHECK(types_seen[all[i]], "no fixture tensor of type %s", tp_ggml_type_name(all[i]));
}

/* A type ggml knows but taper does not dequantise: the file opens, the dequantisation says
 * which file, tensor and type. */
TT_TEST(gguf_unsupported_type_opens) {
    mb b = {0};
    mb_hdr(&b, 3, 1, 0);
    mb_ti(&b, "iq", 1, (uint64_t[]){256}, TP_GGML_IQ2_XXS, 0);
    mb_pad(&b, 32);
    mb_zeros(&b, 66);
    char *path = tt_path(tt_tmp_dir(), "iq2.gguf");
    TT_CHECK(write_bytes(path, b.p, b.n), "write");
    tp_gguf *g;
    tp_status s = tp_gguf_open(path, &g);
    TT_CHECK(s == TP_OK, "open: %s", tp_errmsg());
    if (!s) {
        float y[256];
        TT_CHECK(g->tensors[0].nbytes == 66, "IQ2_XXS block is 66 bytes, got %zu", g->tensors[0].nbytes);
        TT_CHECK(tp_gguf_tensor_to_f32(&g->tensors[0], y) == TP_ERR_UNSUPPORTED, "IQ2_XXS must be unsupported");
        TT_CHECK(strstr(tp_errmsg(), path) && strstr(tp_errmsg(), "'iq'") && strstr(tp_errmsg(), "IQ2_XXS"),
                 "message: %s", tp_errmsg());
        tp_gguf_close(g);
    }
    free(path);
    free(b.p);
}

TT_TEST(gguf_fixture_align64) {
    tp_gguf *g = open_fixture("align64.gguf");
    if (!g) return;
    check_meta(g, "align64_meta.txt", 3);
    TT_CHECK(g->alignment == 64 && g->data_offset % 64 == 0, "alignment %" PRIu64 " data_offset %" PRIu64,
             g->alignment, g->data_offset);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        TT_CHECK(g->tensors[i].offset % 64 == 0, "%s offset %" PRIu64, g->tensors[i].name, g->tensors[i].offset);
    tp_gguf_close(g);
}

/* GGUF v2 has the same layout as v3 for little-endian files. */
TT_TEST(gguf_version2) {
    char *p = fx("types.gguf"), *buf;
    size_t len;
    TT_CHECK(tp_read_file(p, &buf, &len) == TP_OK, "read %s", p);
    free(p);
    buf[4] = 2;
    char *q = tt_path(tt_tmp_dir(), "v2.gguf");
    TT_CHECK(write_bytes(q, buf, len), "write %s", q);
    free(buf);
    tp_gguf *g;
    TT_CHECK(tp_gguf_open(q, &g) == TP_OK, "v2: %s", tp_errmsg());
    if (g) {
        TT_CHECK(g->version == 2 && g->n_tensors == 19, "version %u, %" PRIu64 " tensors", g->version, g->n_tensors);
        tp_gguf_close(g);
    }
    free(q);
}

/* ------------------------------------------------------------------ quantisation */

static void check_quant_bytes(const char *in_name, const char *out_name, tp_ggml_type t) {
    char *ip = fx(in_name), *op = fx(out_name), *want;
    size_t n, wlen;
    float *x = read_f32(ip, &n);
    tp_status rs = tp_read_file(op, &want, &wlen);
    TT_CHECK(x && rs == TP_OK, "read %s / %s", ip, op);
    free(ip);
    free(op);
    if (!x || rs) { free(x); return; }
    size_t nb = n / tp_ggml_block_size(t) * tp_ggml_type_size(t);
    TT_CHECK(wlen == nb, "%s: %zu bytes, expected %zu", out_name, wlen, nb);
    uint8_t *got = malloc(nb);
    tp_status s = tp_quantize(t, x, got, n);
    TT_CHECK(s == TP_OK, "quantize %s: %s", tp_ggml_type_name(t), tp_errmsg());
    if (s == TP_OK && wlen == nb) {
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < nb; i++)
            if (got[i] != (uint8_t)want[i]) { if (!bad) first = i; bad++; }
        size_t bs = tp_ggml_type_size(t);
        TT_CHECK(bad == 0, "%s from %s: %zu bytes differ from gguf-py, first at byte %zu (block %zu, input %.9g)",
                 tp_ggml_type_name(t), in_name, bad, first, first / bs,
                 (double)x[first / bs * tp_ggml_block_size(t)]);
    }
    free(got);
    free(want);
    free(x);
}

TT_TEST(gguf_quantize_matches_gguf_py) {
    check_quant_bytes("qin.f32", "qin.q8_0", TP_GGML_Q8_0);
    check_quant_bytes("qin.f32", "qin.f16", TP_GGML_F16);
    check_quant_bytes("qin.f32", "qin.bf16", TP_GGML_BF16);
    check_quant_bytes("sin.f32", "sin.f16", TP_GGML_F16);     /* inf, NaN, subnormal, ties */
    check_quant_bytes("sin.f32", "sin.bf16", TP_GGML_BF16);
    check_quant_bytes("qin.f32", "qin.f32", TP_GGML_F32);
}

/* Literal Q8_0 cases: d = 127/127 = 1, so q = round-half-away(x). */
TT_TEST(gguf_quantize_q8_0_exact) {
    float x[32] = {127.0f, 2.5f, -3.5f, 0.5f, -0.5f, 126.5f, -126.4f, 1.49f};
    uint8_t b[34];
    TT_CHECK(tp_quantize(TP_GGML_Q8_0, x, b, 32) == TP_OK, "%s", tp_errmsg());
    const int8_t want[8] = {127, 3, -4, 1, -1, 127, -126, 1};
    TT_CHECK(b[0] == 0x00 && b[1] == 0x3c, "d must be fp16 1.0 (0x3c00), got 0x%02x%02x", b[1], b[0]);
    for (int i = 0; i < 8; i++) TT_CHECK((int8_t)b[2 + i] == want[i], "q[%d] = %d, want %d", i, (int8_t)b[2 + i], want[i]);
    float zero[32] = {0};
    TT_CHECK(tp_quantize(TP_GGML_Q8_0, zero, b, 32) == TP_OK && b[0] == 0 && b[1] == 0 && b[2] == 0,
             "zero block");
    x[3] = NAN;
    TT_CHECK(tp_quantize(TP_GGML_Q8_0, x, b, 32) == TP_ERR_NUMERIC, "NaN input must be refused");
    TT_CHECK(strstr(tp_errmsg(), "element 3") != NULL, "message names the element: %s", tp_errmsg());
    TT_CHECK(tp_quantize(TP_GGML_Q8_0, x, b, 31) == TP_ERR_ARG, "31 elements is not a Q8_0 block multiple");
    TT_CHECK(tp_quantize(TP_GGML_Q4_0, x, b, 32) == TP_ERR_UNSUPPORTED, "Q4_0 quantisation is not offered");
    TT_CHECK(tp_dequantize(TP_GGML_IQ2_XXS, b, zero, 256) == TP_ERR_UNSUPPORTED, "IQ2_XXS dequant unsupported");
    TT_CHECK(tp_dequantize((tp_ggml_type)4, b, zero, 32) == TP_ERR_UNSUPPORTED, "type 4 unknown");
    TT_CHECK(tp_dequantize(TP_GGML_Q4_0, b, zero, 16) == TP_ERR_ARG, "16 elements is not a Q4_0 block multiple");
}

/* Literal dequantisation of hand-built blocks (layout facts, not a second implementation). */
TT_TEST(gguf_dequant_exact_blocks) {
    uint8_t b[300] = {0};
    float y[256];
    /* Q4_0: d = 0.5 (fp16 0x3800); byte 0 = 0x1f -> elements 0 and 16 are 15-8 and 1-8 */
    b[0] = 0x00; b[1] = 0x38; b[2] = 0x1f;
    tp_dequantize(TP_GGML_Q4_0, b, y, 32);
    TT_CHECK(y[0] == 3.5f && y[16] == -3.5f && y[1] == -4.0f, "Q4_0 %g %g %g", y[0], y[16], y[1]);
    /* Q4_1: d = 2, m = -1: q=15 -> 29, q=1 -> 1 */
    memset(b, 0, sizeof b);
    b[1] = 0x40; b[2] = 0x00; b[3] = 0xbc; b[4] = 0x1f;
    tp_dequantize(TP_GGML_Q4_1, b, y, 32);
    TT_CHECK(y[0] == 29.0f && y[16] == 1.0f && y[1] == -1.0f, "Q4_1 %g %g %g", y[0], y[16], y[1]);
    /* Q5_0: d = 1, qh bit 0 and bit 16 set: element 0 = (0|16)-16 = 0, element 16 = (0|16)-16 */
    memset(b, 0, sizeof b);
    b[1] = 0x3c; b[2] = 0x01; b[4] = 0x01; b[6] = 0xf3;
    tp_dequantize(TP_GGML_Q5_0, b, y, 32);
    TT_CHECK(y[0] == 3.0f && y[16] == 15.0f && y[1] == -16.0f, "Q5_0 %g %g %g", y[0], y[16], y[1]);
    /* Q8_K: float d = 0.25, q[5] = -8 */
    memset(b, 0, sizeof b);
    float d = 0.25f;
    memcpy(b, &d, 4);
    b[4 + 5] = (uint8_t)-8;
    tp_dequantize(TP_GGML_Q8_K, b, y, 256);
    TT_CHECK(y[5] == -2.0f && y[4] == 0.0f, "Q8_K %g", y[5]);
    /* Q6_K: d = 1 at byte 208, scale[0] = 2: element 0 = (ql low nibble 5 | qh bits 0-1 = 2 << 4) - 32 = 5 */
    memset(b, 0, sizeof b);
    b[209] = 0x3c; b[192] = 2; b[0] = 0x05; b[128] = 0x02;
    tp_dequantize(TP_GGML_Q6_K, b, y, 256);
    TT_CHECK(y[0] == 10.0f && y[1] == -64.0f && y[64] == 0.0f, "Q6_K %g %g %g", y[0], y[1], y[64]);
}

/* The parallel path (large n) must equal block-by-block calls (serial path). */
TT_TEST(gguf_dequant_parallel_equals_serial) {
    const tp_ggml_type ts[] = {TP_GGML_F16, TP_GGML_BF16, TP_GGML_Q4_0, TP_GGML_Q4_1, TP_GGML_Q5_0,
                               TP_GGML_Q5_1, TP_GGML_Q8_0, TP_GGML_Q8_1, TP_GGML_Q2_K, TP_GGML_Q3_K,
                               TP_GGML_Q4_K, TP_GGML_Q5_K, TP_GGML_Q6_K, TP_GGML_Q8_K};
    const size_t n = (size_t)1 << 18;
    uint64_t st = 88172645463325252ull;
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
        size_t blk = tp_ggml_block_size(ts[k]), bs = tp_ggml_type_size(ts[k]), nb = n / blk;
        uint8_t *src = malloc(nb * bs);
        for (size_t i = 0; i < nb * bs; i++) {
            st ^= st << 13; st ^= st >> 7; st ^= st << 17;
            src[i] = (uint8_t)st;
        }
        float *a = malloc(n * 4), *b = malloc(n * 4);
        TT_CHECK(tp_dequantize(ts[k], src, a, n) == TP_OK, "%s: %s", tp_ggml_type_name(ts[k]), tp_errmsg());
        for (size_t i = 0; i < nb; i++) tp_dequantize(ts[k], src + i * bs, b + i * blk, blk);
        check_bits(a, b, n, tp_ggml_type_name(ts[k]));
        free(src); free(a); free(b);
    }
    /* the same for quantisation */
    float *x = malloc(n * 4);
    uint8_t *q1 = malloc(n * 2), *q2 = malloc(n * 2);
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)(i * 2654435761u % 20001) - 10000) / 997.0f;
    const tp_ggml_type qt[] = {TP_GGML_Q8_0, TP_GGML_F16, TP_GGML_BF16};
    for (int k = 0; k < 3; k++) {
        size_t blk = tp_ggml_block_size(qt[k]), bs = tp_ggml_type_size(qt[k]);
        TT_CHECK(tp_quantize(qt[k], x, q1, n) == TP_OK, "%s", tp_errmsg());
        for (size_t i = 0; i < n / blk; i++) tp_quantize(qt[k], x + i * blk, q2 + i * bs, blk);
        TT_CHECK(memcmp(q1, q2, n / blk * bs) == 0, "%s: parallel quantisation differs", tp_ggml_type_name(qt[k]));
    }
    free(x); free(q1); free(q2);
}

/* ------------------------------------------------------------------ the real model */

TT_TEST(gguf_model_smollm2) {
    const char *mp = tt_model_path();
    if (!mp) { tt_skip("model not found (set TAPER_MODEL or run make deps)"); return; }
    const char *base = strrchr(mp, '/') ? strrchr(mp, '/') + 1 : mp;
    if (strcmp(base, "SmolLM2-135M-Instruct.Q4_1.gguf") != 0) {   /* the fixtures describe that file */
        tt_skip_optional("fixtures are for SmolLM2-135M-Instruct.Q4_1.gguf, not %s", base);
        return;
    }
    tp_gguf *g;
    tp_status s = tp_gguf_open(mp, &g);
    TT_CHECK(s == TP_OK, "open %s: %s", mp, tp_errmsg());
    if (s) return;
    check_meta(g, "model_meta.txt", 33);
    char *arch = NULL;
    TT_CHECK(tp_gguf_get_str(g, "general.architecture", &arch) == TP_OK && strcmp(arch, "llama") == 0,
             "architecture %s", arch ? arch : "?");
    free(arch);
    uint32_t u = 0;
    TT_CHECK(tp_gguf_get_u32(g, "llama.block_count", &u) == TP_OK && u == 30, "block_count %u", u);
    TT_CHECK(g->n_tensors == 272, "n_tensors %" PRIu64, g->n_tensors);
    int n_q41 = 0, n_f32 = 0, n_q80 = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        n_q41 += g->tensors[i].type == TP_GGML_Q4_1;
        n_f32 += g->tensors[i].type == TP_GGML_F32;
        n_q80 += g->tensors[i].type == TP_GGML_Q8_0;
    }
    TT_CHECK(n_q41 == 210 && n_f32 == 61 && n_q80 == 1, "types: %d Q4_1, %d F32, %d Q8_0", n_q41, n_f32, n_q80);

    char *mpath = fx("model_tensors.txt");
    FILE *f = fopen(mpath, "r");
    TT_CHECK(f != NULL, "cannot open %s", mpath);
    free(mpath);
    char name[128], sum_hex[64], sq_hex[64];
    unsigned type, nd;
    unsigned long long ne[4], nel, stride;
    int n_checked = 0;
    while (f && fscanf(f, "%127s %u %u %llu %llu %llu %llu %llu %llu %63s %63s", name, &type, &nd, &ne[0],
                       &ne[1], &ne[2], &ne[3], &nel, &stride, sum_hex, sq_hex) == 11) {
        const tp_gguf_tensor *t = tp_gguf_find_tensor(g, name);
        TT_CHECK(t != NULL, "tensor %s missing", name);
        if (!t) continue;
        n_checked++;
        TT_CHECK(t->type == (tp_ggml_type)type && t->n_dims == nd && t->ne[0] == ne[0] && t->ne[1] == ne[1] &&
                 t->n_elem == nel, "%s: type/shape differ from gguf-py's", name);
        float *v = malloc(t->n_elem * sizeof *v);
        TT_CHECK(tp_gguf_tensor_to_f32(t, v) == TP_OK, "%s: %s", name, tp_errmsg());
        char fname[256], *p;
        size_t n;
        snprintf(fname, sizeof fname, "model.%s.head.f32", name);
        float *head = read_f32(p = fx(fname), &n);
        free(p);
        TT_CHECK(head && n == (nel < 1024 ? nel : 1024), "%s: %zu head values", fname, n);
        if (head) check_bits(v, head, n, fname);
        free(head);
        snprintf(fname, sizeof fname, "model.%s.strided.f32", name);
        float *sv = read_f32(p = fx(fname), &n);
        free(p);
        TT_CHECK(sv && n == (nel < 4096 ? nel : 4096), "%s: %zu strided values", fname, n);
        if (sv) {
            float *picked = malloc(n * sizeof *picked);
            for (size_t i = 0; i < n; i++) picked[i] = v[i * stride];
            check_bits(picked, sv, n, fname);
            free(picked);
        }
        free(sv);
        /* sums over all values in float64; numpy sums pairwise, we sum in order, so allow
         * a relative 1e-9 (the float64 rounding of either order is ~1e-12 here) */
        double sum = 0, sq = 0;
        for (uint64_t i = 0; i < t->n_elem; i++) { sum += v[i]; sq += (double)v[i] * v[i]; }
        TT_NEAR(sum, strtod(sum_hex, NULL), 1e-9 * sqrt(sq), 0);
        TT_NEAR(sq, strtod(sq_hex, NULL), 0, 1e-9);
        free(v);
    }
    if (f) fclose(f);
    TT_CHECK(n_checked == 5, "%d model tensors checked, want 5", n_checked);

    /* every tensor to fp32 (time reported, not asserted: speed targets live in make bench) */
    double t0 = tp_time_s();
    uint64_t total = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tp_gguf_tensor *t = &g->tensors[i];
        float *v = malloc(t->n_elem * sizeof *v);
        tp_status ds = tp_gguf_tensor_to_f32(t, v);
        if (ds) TT_CHECK(0, "%s: %s", t->name, tp_errmsg());
        total += t->n_elem;
        free(v);
    }
    double dt = tp_time_s() - t0;
    TT_CHECK(total == 134515008ull, "total elements %" PRIu64, total);
    tt_note("dequantised %" PRIu64 " elements in %.3f s (%.3f s per 100M)%s", total, dt, dt * 1e8 / (double)total,
            TT_SANITIZED ? " [sanitized build]" : "");
    tp_gguf_close(g);
}

/* ------------------------------------------------------------------ malformed files */

static void mb_put(mb *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void mb_u8(mb *b, uint8_t v) { mb_put(b, &v, 1); }
static void mb_u32(mb *b, uint32_t v) { for (int i = 0; i < 4; i++) mb_u8(b, (uint8_t)(v >> (8 * i))); }
static void mb_u64(mb *b, uint64_t v) { for (int i = 0; i < 8; i++) mb_u8(b, (uint8_t)(v >> (8 * i))); }
static void mb_str(mb *b, const char *s) { mb_u64(b, strlen(s)); mb_put(b, s, strlen(s)); }
static void mb_hdr(mb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    mb_put(b, "GGUF", 4); mb_u32(b, version); mb_u64(b, n_tensors); mb_u64(b, n_kv);
}
static void mb_kv_u32(mb *b, const char *k, uint32_t v) { mb_str(b, k); mb_u32(b, TP_GGUF_UINT32); mb_u32(b, v); }
static void mb_kv_str(mb *b, const char *k, const char *v) { mb_str(b, k); mb_u32(b, TP_GGUF_STRING); mb_str(b, v); }
static void mb_ti(mb *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off) {
    mb_str(b, name); mb_u32(b, nd);
    for (uint32_t i = 0; i < nd; i++) mb_u64(b, ne[i]);
    mb_u32(b, type); mb_u64(b, off);
}
static void mb_pad(mb *b, size_t a) { while (b->n % a) mb_u8(b, 0); }
static void mb_zeros(mb *b, size_t n) { for (size_t i = 0; i < n; i++) mb_u8(b, (uint8_t)(i * 7)); }

/* Two kvs, an F32 tensor (32 values) and a Q8_0 tensor (32x2): opens cleanly. */
static void mb_valid(mb *b) {
    mb_hdr(b, 3, 2, 2);
    mb_kv_str(b, "general.architecture", "x");
    mb_kv_u32(b, "a.b", 7);
    mb_ti(b, "t0", 1, (uint64_t[]){32}, TP_GGML_F32, 0);
    mb_ti(b, "t1", 2, (uint64_t[]){32, 2}, TP_GGML_Q8_0, 128);
    mb_pad(b, 32);
    mb_zeros(b, 128 + 68);
}

static int n_malformed;

/* Writes the bytes, expects the open to fail with a message naming the file and `word`. */
static void expect_fail(const char *name, mb *b, const char *word) {
    char fn[128];
    snprintf(fn, sizeof fn, "bad_%s.gguf", name);
    char *path = tt_path(tt_tmp_dir(), fn);
    TT_CHECK(write_bytes(path, b->p, b->n), "write %s", path);
    tp_gguf *g = (tp_gguf *)1;
    tp_status s = tp_gguf_open(path, &g);
    TT_CHECK(s != TP_OK && g == NULL, "%s: opened a malformed file (status %d)", name, (int)s);
    if (s == TP_OK) tp_gguf_close(g);
    else {
        TT_CHECK(s == TP_ERR_FORMAT || s == TP_ERR_UNSUPPORTED, "%s: status %s", name, tp_status_name(s));
        TT_CHECK(strstr(tp_errmsg(), path) != NULL, "%s: message does not name the file: %s", name, tp_errmsg());
        TT_CHECK(strstr(tp_errmsg(), word) != NULL, "%s: message does not mention '%s': %s", name, word, tp_errmsg());
    }
    n_malformed++;
    free(path);
    free(b->p);
    memset(b, 0, sizeof *b);
}

TT_TEST(gguf_malformed_files) {
    mb b = {0};
    /* the builder itself makes a good file */
    mb_valid(&b);
    char *vp = tt_path(tt_tmp_dir(), "valid.gguf");
    TT_CHECK(write_bytes(vp, b.p, b.n), "write");
    tp_gguf *g = NULL;
    TT_CHECK(tp_gguf_open(vp, &g) == TP_OK, "valid builder file: %s", tp_errmsg());
    if (g) {
        TT_CHECK(g->n_tensors == 2 && g->n_kv == 2 && g->tensors[1].nbytes == 68, "valid file contents");
        tp_gguf_close(g);
    }
    free(vp);
    free(b.p);
    memset(&b, 0, sizeof b);

    expect_fail("empty", &b, "magic");
    mb_put(&b, "GGUF", 4); mb_u32(&b, 3); mb_u32(&b, 0);
    expect_fail("trunc_header", &b, "n_tensors");
    mb_put(&b, "GGUF", 4); mb_u32(&b, 3); mb_u64(&b, 0);
    expect_fail("trunc_header2", &b, "n_kv");
    mb_hdr(&b, 3, 0, 0); b.p[0] = 'X';
    expect_fail("bad_magic", &b, "magic");
    mb_hdr(&b, 1, 0, 0);
    expect_fail("version1", &b, "version");
    mb_hdr(&b, 4, 0, 0);
    expect_fail("version4", &b, "version");
    mb_hdr(&b, 0x03000000u, 0, 0);
    expect_fail("big_endian", &b, "big-endian");
    mb_hdr(&b, 3, 0, UINT64_MAX); mb_kv_u32(&b, "k", 1);
    expect_fail("huge_n_kv", &b, "n_kv");
    mb_hdr(&b, 3, (uint64_t)1 << 60, 1); mb_kv_u32(&b, "k", 1);
    expect_fail("huge_n_tensors", &b, "n_tensors");
    mb_hdr(&b, 3, 0, 1); mb_u64(&b, UINT64_MAX); mb_put(&b, "key and more bytes", 18);
    expect_fail("huge_key_length", &b, "key of kv 0");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_STRING); mb_u64(&b, 100); mb_put(&b, "short", 5);
    expect_fail("string_past_eof", &b, "value of key 'k'");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_ARRAY); mb_u32(&b, TP_GGUF_ARRAY);
    mb_u64(&b, 1); mb_u32(&b, TP_GGUF_UINT8); mb_u64(&b, 1); mb_u8(&b, 1);
    expect_fail("nested_array", &b, "nested");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, 13); mb_u64(&b, 0);
    expect_fail("unknown_value_type", &b, "unknown value type 13");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_ARRAY); mb_u32(&b, 99); mb_u64(&b, 0);
    expect_fail("unknown_elem_type", &b, "element type 99");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_ARRAY); mb_u32(&b, TP_GGUF_UINT32);
    mb_u64(&b, (uint64_t)1 << 62); mb_u64(&b, 0);
    expect_fail("huge_array", &b, "array length");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_ARRAY); mb_u32(&b, TP_GGUF_STRING);
    mb_u64(&b, UINT64_MAX / 2); mb_u64(&b, 0);
    expect_fail("huge_string_array", &b, "array length");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_ARRAY); mb_u32(&b, TP_GGUF_STRING);
    mb_u64(&b, 2); mb_str(&b, "ok"); mb_u64(&b, 1000); mb_put(&b, "abcdefgh", 8);
    expect_fail("string_array_past_eof", &b, "string 1 of array 'k'");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_BOOL); mb_u8(&b, 2); mb_zeros(&b, 16);
    expect_fail("bool_2", &b, "bool");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, "k"); mb_u32(&b, TP_GGUF_ARRAY); mb_u32(&b, TP_GGUF_BOOL);
    mb_u64(&b, 3); mb_u8(&b, 1); mb_u8(&b, 0); mb_u8(&b, 5);
    expect_fail("bool_array_5", &b, "bool array element 2");
    mb_hdr(&b, 3, 0, 1); mb_str(&b, ""); mb_u32(&b, TP_GGUF_UINT8); mb_u8(&b, 1); mb_zeros(&b, 16);
    expect_fail("empty_key", &b, "empty");
    mb_hdr(&b, 3, 0, 1); mb_u64(&b, 3); mb_put(&b, "a\0b", 3); mb_u32(&b, TP_GGUF_UINT8); mb_u8(&b, 1);
    mb_zeros(&b, 16);
    expect_fail("nul_in_key", &b, "NUL");
    mb_hdr(&b, 3, 0, 2); mb_kv_u32(&b, "dup", 1); mb_kv_u32(&b, "dup", 2);
    expect_fail("duplicate_key", &b, "duplicate key 'dup'");

    /* tensor infos */
#define ONE_TENSOR(nd, ne, type, off, ndata)                                                   \
    do {                                                                                       \
        mb_hdr(&b, 3, 1, 0); mb_ti(&b, "w", nd, ne, type, off); mb_pad(&b, 32); mb_zeros(&b, ndata); \
    } while (0)
    ONE_TENSOR(1, ((uint64_t[]){32}), 99, 0, 128);
    expect_fail("unknown_tensor_type", &b, "unknown tensor type 99");
    ONE_TENSOR(1, ((uint64_t[]){32}), 4, 0, 128);      /* 4 was Q4_2, removed from ggml */
    expect_fail("removed_tensor_type", &b, "unknown tensor type 4");
    ONE_TENSOR(0, ((uint64_t[]){32}), TP_GGML_F32, 0, 128);
    expect_fail("n_dims_0", &b, "n_dims = 0");
    ONE_TENSOR(5, ((uint64_t[]){32, 1, 1, 1, 1}), TP_GGML_F32, 0, 128);
    expect_fail("n_dims_5", &b, "n_dims = 5");
    ONE_TENSOR(2, ((uint64_t[]){32, 0}), TP_GGML_F32, 0, 128);
    expect_fail("zero_dim", &b, "ne[1] = 0");
    ONE_TENSOR(2, ((uint64_t[]){(uint64_t)1 << 32, (uint64_t)1 << 32}), TP_GGML_F32, 0, 128);
    expect_fail("shape_overflow", &b, "overflows");
    ONE_TENSOR(1, ((uint64_t[]){UINT64_MAX}), TP_GGML_F32, 0, 128);
    expect_fail("dim_over_int64", &b, "ne[0]");
    ONE_TENSOR(1, ((uint64_t[]){(uint64_t)1 << 62}), TP_GGML_F64, 0, 128);
    expect_fail("byte_size_overflow", &b, "byte size overflows");
    ONE_TENSOR(1, ((uint64_t[]){31}), TP_GGML_Q4_0, 0, 128);
    expect_fail("not_block_multiple", &b, "block size");
    ONE_TENSOR(1, ((uint64_t[]){32}), TP_GGML_F32, 16, 256);
    expect_fail("offset_unaligned", &b, "offset 16");
    ONE_TENSOR(1, ((uint64_t[]){32}), TP_GGML_F32, 0, 127);
    expect_fail("data_past_eof", &b, "past the end");
    ONE_TENSOR(1, ((uint64_t[]){32}), TP_GGML_F32, UINT64_MAX - 31, 128);
    expect_fail("offset_huge", &b, "past the end");
    mb_hdr(&b, 3, 1, 0); mb_ti(&b, "w", 1, (uint64_t[]){32}, TP_GGML_F32, 0);
    expect_fail("no_data_section", &b, "data section");
    mb_hdr(&b, 3, 1, 0); mb_ti(&b, "", 1, (uint64_t[]){32}, TP_GGML_F32, 0); mb_pad(&b, 32); mb_zeros(&b, 128);
    expect_fail("empty_tensor_name", &b, "name of tensor 0 is empty");
    mb_hdr(&b, 3, 2, 0);
    mb_ti(&b, "a", 1, (uint64_t[]){64}, TP_GGML_F32, 0);
    mb_ti(&b, "b", 1, (uint64_t[]){32}, TP_GGML_F32, 128);
    mb_pad(&b, 32); mb_zeros(&b, 256);
    /* a: [0, 256), b: [128, 256) */
    expect_fail("overlapping_tensors", &b, "overlap");
    mb_hdr(&b, 3, 2, 0);
    mb_ti(&b, "same", 1, (uint64_t[]){32}, TP_GGML_F32, 0);
    mb_ti(&b, "same", 1, (uint64_t[]){32}, TP_GGML_F32, 128);
    mb_pad(&b, 32); mb_zeros(&b, 256);
    expect_fail("duplicate_tensor", &b, "duplicate tensor name 'same'");
    const uint32_t bad_align[] = {0, 3, 48, 0x80000000u};
    for (int i = 0; i < 4; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "alignment_%u", bad_align[i]);
        mb_hdr(&b, 3, 0, 1); mb_kv_u32(&b, "general.alignment", bad_align[i]);
        expect_fail(nm, &b, "general.alignment");
    }
    mb_hdr(&b, 3, 0, 1); mb_kv_str(&b, "general.alignment", "32");
    expect_fail("alignment_string", &b, "general.alignment");
#undef ONE_TENSOR
    TT_CHECK(n_malformed >= 40, "%d malformed cases ran", n_malformed);

    /* open failures */
    char *missing = tt_path(tt_tmp_dir(), "does_not_exist.gguf");
    g = (tp_gguf *)1;
    TT_CHECK(tp_gguf_open(missing, &g) == TP_ERR_IO && g == NULL, "missing file -> TP_ERR_IO");
    TT_CHECK(strstr(tp_errmsg(), missing) != NULL, "message names the file: %s", tp_errmsg());
    free(missing);
    TT_CHECK(tp_gguf_open(tt_tmp_dir(), &g) == TP_ERR_IO, "a directory -> TP_ERR_IO");
}

/* Every strict prefix of a valid file must be refused cleanly. */
TT_TEST(gguf_every_truncation_fails) {
    mb b = {0};
    mb_valid(&b);
    char *path = tt_path(tt_tmp_dir(), "trunc.gguf");
    int opened = 0;
    for (size_t len = 0; len < b.n; len++) {
        write_bytes(path, b.p, len);
        tp_gguf *g;
        if (tp_gguf_open(path, &g) == TP_OK) { opened++; tp_gguf_close(g); }
        else if (!strstr(tp_errmsg(), path)) TT_CHECK(0, "length %zu: message without path: %s", len, tp_errmsg());
    }
    TT_CHECK(opened == 0, "%d truncated files opened", opened);
    write_bytes(path, b.p, b.n);
    tp_gguf *g;
    TT_CHECK(tp_gguf_open(path, &g) == TP_OK, "full file: %s", tp_errmsg());
    if (g) tp_gguf_close(g);
    free(path);
    free(b.p);
}

/* Random byte changes: never a crash (ASan/UBSan watch), failures always name the file,
 * and whatever opens dequantises. */
TT_TEST(gguf_random_mutations) {
    char *fp = fx("types.gguf"), *fixture;
    size_t flen;
    TT_CHECK(tp_read_file(fp, &fixture, &flen) == TP_OK, "read %s", fp);
    free(fp);
    mb v = {0};
    mb_valid(&v);
    char *path = tt_path(tt_tmp_dir(), "mut.gguf");
    uint64_t st = 0x9e3779b97f4a7c15ull;
#define RND() (st ^= st << 13, st ^= st >> 7, st ^= st << 17, st)
    int opened = 0, failed = 0, no_path = 0;
    uint8_t *buf = malloc(flen > v.n ? flen : v.n);
    for (int it = 0; it < 3000; it++) {
        const uint8_t *src = it % 2 ? (const uint8_t *)fixture : v.p;
        size_t n = it % 2 ? flen : v.n;
        memcpy(buf, src, n);
        int flips = 1 + (int)(RND() % 4);
        for (int k = 0; k < flips; k++) {
            size_t pos = it % 2 ? (size_t)(RND() % 2048) : (size_t)(RND() % n);   /* types.gguf: header */
            buf[pos] = (uint8_t)(RND() % 3 == 0 ? 0xff : RND());
        }
        if (RND() % 8 == 0) n = (size_t)(RND() % n);
        write_bytes(path, buf, n);
        tp_gguf *g;
        if (tp_gguf_open(path, &g) == TP_OK) {
            opened++;
            for (uint64_t i = 0; i < g->n_tensors; i++) {
                const tp_gguf_tensor *t = &g->tensors[i];
                if (t->n_elem > ((uint64_t)1 << 22)) continue;
                float *out = malloc(t->n_elem * sizeof *out);
                tp_status s = tp_gguf_tensor_to_f32(t, out);
                if (s != TP_OK && s != TP_ERR_UNSUPPORTED) TT_CHECK(0, "dequant %s: %s", t->name, tp_errmsg());
                free(out);
            }
            tp_gguf_close(g);
        } else {
            failed++;
            no_path += strstr(tp_errmsg(), path) == NULL;
        }
    }
#undef RND
    TT_CHECK(no_path == 0, "%d failures without the path in the message", no_path);
    TT_CHECK(failed > 100 && opened > 100, "mutations: %d opened, %d refused", opened, failed);
    free(buf);
    free(fixture);
    free(v.p);
    free(path);
}

/* ------------------------------------------------------------------ writer */

/* The content gguf_ref.py --check-written expects (RT_* there; keep the two in step). */
static float rt_value(int k, uint64_t i) {
    return (float)((long long)((i * 7919 + (uint64_t)k * 131) % 2001) - 1000) / 64.0f * (float)((i / 32) % 3 + 1);
}

static const struct { const char *name; uint32_t nd; uint64_t ne[4]; tp_ggml_type t; } rt_tensors[] = {
    {"rt.f32", 2, {8, 3}, TP_GGML_F32},
    {"rt.f16", 3, {16, 2, 2}, TP_GGML_F16},
    {"rt.bf16", 1, {5}, TP_GGML_BF16},
    {"rt.q8_0", 2, {64, 3}, TP_GGML_Q8_0},
    {"rt.raw_q4_1", 2, {32, 2}, TP_GGML_Q4_1},
};

static void set_le(uint8_t *p, uint64_t v, int n) { for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i)); }

static tp_status rt_fill(tp_gguf_writer *w) {
    tp_status s = 0;
    uint8_t le[8];
    s |= tp_gguf_set_str(w, "general.architecture", "taper-rt");
    s |= tp_gguf_set_u32(w, "rt.replaced", 1);
    set_le(le, 250, 1); s |= tp_gguf_set_val(w, "rt.u8", TP_GGUF_UINT8, le);
    set_le(le, (uint8_t)-7, 1); s |= tp_gguf_set_val(w, "rt.i8", TP_GGUF_INT8, le);
    set_le(le, 65000, 2); s |= tp_gguf_set_val(w, "rt.u16", TP_GGUF_UINT16, le);
    set_le(le, (uint16_t)-32000, 2); s |= tp_gguf_set_val(w, "rt.i16", TP_GGUF_INT16, le);
    s |= tp_gguf_set_u32(w, "rt.u32", 3000000000u);
    s |= tp_gguf_set_i32(w, "rt.i32", -123456);
    s |= tp_gguf_set_f32(w, "rt.f32", 0.1f);
    s |= tp_gguf_set_bool(w, "rt.bool", 1);
    s |= tp_gguf_set_str(w, "rt.str", "taper \xe2\x9c\x93");
    set_le(le, UINT64_MAX - 1, 8); s |= tp_gguf_set_val(w, "rt.u64", TP_GGUF_UINT64, le);
    set_le(le, (uint64_t)(-((int64_t)1 << 62)), 8); s |= tp_gguf_set_val(w, "rt.i64", TP_GGUF_INT64, le);
    double third = 1.0 / 3.0;
    uint64_t bits;
    memcpy(&bits, &third, 8);
    set_le(le, bits, 8); s |= tp_gguf_set_val(w, "rt.f64", TP_GGUF_FLOAT64, le);
    s |= tp_gguf_set_str(w, "rt.replaced", "second");
    const uint8_t a_u8[] = {1, 2, 255};
    const int8_t a_i8[] = {-128, 5};
    const uint16_t a_u16[] = {65535, 0};
    const int16_t a_i16[] = {-32768, 32767};
    const uint32_t a_u32[] = {4294967295u, 1};
    const int32_t a_i32[] = {-1, 0, 2147483647};
    const float a_f32[] = {0.5f, -2.25f};
    const uint8_t a_bool[] = {1, 0};
    const char *a_str[] = {"alpha", "", "\xce\xb3\xce\xac\xce\xbc\xce\xbc\xce\xb1"};
    const uint64_t a_u64[] = {UINT64_MAX, 0};
    const int64_t a_i64[] = {INT64_MIN, INT64_MAX};
    const double a_f64[] = {1e300, -0x1p-1074};
    /* the host is little-endian (x86-64/aarch64), so these arrays are already LE bytes */
    s |= tp_gguf_set_arr(w, "rt.arr_u8", TP_GGUF_UINT8, a_u8, 3);
    s |= tp_gguf_set_arr(w, "rt.arr_i8", TP_GGUF_INT8, a_i8, 2);
    s |= tp_gguf_set_arr(w, "rt.arr_u16", TP_GGUF_UINT16, a_u16, 2);
    s |= tp_gguf_set_arr(w, "rt.arr_i16", TP_GGUF_INT16, a_i16, 2);
    s |= tp_gguf_set_arr(w, "rt.arr_u32", TP_GGUF_UINT32, a_u32, 2);
    s |= tp_gguf_set_arr(w, "rt.arr_i32", TP_GGUF_INT32, a_i32, 3);
    s |= tp_gguf_set_arr(w, "rt.arr_f32", TP_GGUF_FLOAT32, a_f32, 2);
    s |= tp_gguf_set_arr(w, "rt.arr_bool", TP_GGUF_BOOL, a_bool, 2);
    s |= tp_gguf_set_str_arr(w, "rt.arr_str", a_str, 3);
    s |= tp_gguf_set_arr(w, "rt.arr_u64", TP_GGUF_UINT64, a_u64, 2);
    s |= tp_gguf_set_arr(w, "rt.arr_i64", TP_GGUF_INT64, a_i64, 2);
    s |= tp_gguf_set_arr(w, "rt.arr_f64", TP_GGUF_FLOAT64, a_f64, 2);
    for (int k = 0; k < 5; k++) {
        uint64_t n = 1;
        for (uint32_t d = 0; d < rt_tensors[k].nd; d++) n *= rt_tensors[k].ne[d];
        if (rt_tensors[k].t == TP_GGML_Q4_1) {
            size_t nb = n / 32 * 20;
            uint8_t *raw = malloc(nb);
            for (size_t j = 0; j < nb; j++) raw[j] = (uint8_t)((j * 37 + 11) % 256);
            s |= tp_gguf_add_tensor_raw(w, rt_tensors[k].name, rt_tensors[k].nd, rt_tensors[k].ne,
                                        TP_GGML_Q4_1, raw, nb);
            free(raw);
        } else {
            float *x = malloc(n * sizeof *x);
            for (uint64_t i = 0; i < n; i++) x[i] = rt_value(k, i);
            s |= tp_gguf_add_tensor_f32(w, rt_tensors[k].name, rt_tensors[k].nd, rt_tensors[k].ne, x,
                                        rt_tensors[k].t);
            free(x);
        }
    }
    return s;
}

TT_TEST(gguf_writer_roundtrip) {
    tp_gguf_writer *w;
    TT_CHECK(tp_gguf_writer_new(&w) == TP_OK, "writer_new");
    TT_CHECK(rt_fill(w) == TP_OK, "filling the writer: %s", tp_errmsg());
    char *path = tt_path(tt_tmp_dir(), "written.gguf");
    TT_CHECK(tp_gguf_write(w, path) == TP_OK, "write: %s", tp_errmsg());
    const char *keep = getenv("TAPER_GGUF_WRITTEN");   /* for gguf_ref.py --check-written */
    if (keep && *keep) TT_CHECK(tp_gguf_write(w, keep) == TP_OK, "write %s: %s", keep, tp_errmsg());
    tp_gguf_writer_free(w);
    char tmpname[512];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, (long)getpid());
    TT_CHECK(access(tmpname, F_OK) != 0, "temporary file %s left behind", tmpname);

    tp_gguf *g;
    tp_status s = tp_gguf_open(path, &g);
    TT_CHECK(s == TP_OK, "read back: %s", tp_errmsg());
    free(path);
    if (s) return;
    TT_CHECK(g->version == 3 && g->alignment == 32 && g->data_offset % 32 == 0, "header");
    TT_CHECK(g->n_kv == 26 && tp_gguf_find(g, "general.alignment") == NULL, "n_kv %" PRIu64, g->n_kv);
    TT_CHECK(strcmp(g->kv[1].key, "rt.replaced") == 0 && g->kv[1].type == TP_GGUF_STRING &&
             g->kv[1].v.str.len == 6 && memcmp(g->kv[1].v.str.data, "second", 6) == 0,
             "a replaced key keeps its place and takes the new value");
    const tp_gguf_kv *kv;
#define KV(key, ty, cond) (kv = tp_gguf_find(g, key), TT_CHECK(kv && kv->type == ty && (cond), "%s", key))
    KV("rt.u8", TP_GGUF_UINT8, kv->v.u64 == 250);
    KV("rt.i8", TP_GGUF_INT8, kv->v.i64 == -7);
    KV("rt.u16", TP_GGUF_UINT16, kv->v.u64 == 65000);
    KV("rt.i16", TP_GGUF_INT16, kv->v.i64 == -32000);
    KV("rt.u32", TP_GGUF_UINT32, kv->v.u64 == 3000000000u);
    KV("rt.i32", TP_GGUF_INT32, kv->v.i64 == -123456);
    KV("rt.f32", TP_GGUF_FLOAT32, kv->v.f64 == (double)0.1f);
    KV("rt.bool", TP_GGUF_BOOL, kv->v.u64 == 1);
    KV("rt.str", TP_GGUF_STRING, kv->v.str.len == 9 && memcmp(kv->v.str.data, "taper \xe2\x9c\x93", 9) == 0);
    KV("rt.u64", TP_GGUF_UINT64, kv->v.u64 == UINT64_MAX - 1);
    KV("rt.i64", TP_GGUF_INT64, kv->v.i64 == -((int64_t)1 << 62));
    KV("rt.f64", TP_GGUF_FLOAT64, kv->v.f64 == 1.0 / 3.0);
    KV("general.architecture", TP_GGUF_STRING, kv->v.str.len == 8);
    KV("rt.arr_u8", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_UINT8 && kv->v.arr.n == 3 && tp_gguf_arr_u64(kv, 2) == 255);
    KV("rt.arr_i8", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_INT8 && tp_gguf_arr_i64(kv, 0) == -128);
    KV("rt.arr_u16", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_UINT16 && tp_gguf_arr_u64(kv, 0) == 65535);
    KV("rt.arr_i16", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_INT16 && tp_gguf_arr_i64(kv, 0) == -32768);
    KV("rt.arr_u32", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_UINT32 && tp_gguf_arr_u64(kv, 0) == 4294967295u);
    KV("rt.arr_i32", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_INT32 && kv->v.arr.n == 3 &&
       tp_gguf_arr_i64(kv, 0) == -1 && tp_gguf_arr_i64(kv, 2) == 2147483647);
    KV("rt.arr_f32", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_FLOAT32 && tp_gguf_arr_f64(kv, 1) == -2.25);
    KV("rt.arr_bool", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_BOOL && tp_gguf_arr_u64(kv, 0) == 1 &&
       tp_gguf_arr_u64(kv, 1) == 0);
    KV("rt.arr_str", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_STRING && kv->v.arr.n == 3 &&
       kv->v.arr.strs[1].len == 0 && kv->v.arr.strs[2].len == 10);
    KV("rt.arr_u64", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_UINT64 && tp_gguf_arr_u64(kv, 0) == UINT64_MAX);
    KV("rt.arr_i64", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_INT64 && tp_gguf_arr_i64(kv, 0) == INT64_MIN &&
       tp_gguf_arr_i64(kv, 1) == INT64_MAX);
    KV("rt.arr_f64", TP_GGUF_ARRAY, kv->v.arr.type == TP_GGUF_FLOAT64 && tp_gguf_arr_f64(kv, 0) == 1e300 &&
       tp_gguf_arr_f64(kv, 1) == -0x1p-1074);
#undef KV
    TT_CHECK(g->n_tensors == 5, "n_tensors %" PRIu64, g->n_tensors);
    for (int k = 0; k < 5 && (uint64_t)k < g->n_tensors; k++) {
        const tp_gguf_tensor *t = &g->tensors[k];
        TT_CHECK(strcmp(t->name, rt_tensors[k].name) == 0 && t->type == rt_tensors[k].t &&
                 t->n_dims == rt_tensors[k].nd && t->offset % 32 == 0, "tensor %d: %s", k, t->name);
        float *v = malloc(t->n_elem * sizeof *v);
        TT_CHECK(tp_gguf_tensor_to_f32(t, v) == TP_OK, "%s", tp_errmsg());
        size_t bad = 0;
        for (uint64_t i = 0; i < t->n_elem; i++) {
            float x = rt_value(k, i), want = 0;
            int ok = -1;   /* -1: compare bits with want */
            switch (t->type) {
            case TP_GGML_F32: want = x; break;
            case TP_GGML_F16: want = tp_fp16_to_fp32(tp_fp32_to_fp16(x)); break;
            case TP_GGML_BF16: want = tp_bf16_to_fp32(tp_fp32_to_bf16(x)); break;
            case TP_GGML_Q8_0: { /* |x - q*fp16(d)| <= d/2 + 127*|d - fp16(d)| <= d*(0.5 + 127*2^-11) */
                float amax = 0;
                for (uint64_t j = i / 32 * 32; j < i / 32 * 32 + 32; j++) amax = fmaxf(amax, fabsf(rt_value(k, j)));
                ok = fabsf(v[i] - x) <= amax / 127.0f * 0.5625f * 1.001f;
                break;
            }
            default: {   /* raw Q4_1: recompute from the pattern bytes */
                uint8_t blk[20];
                for (int j = 0; j < 20; j++) blk[j] = (uint8_t)((((i / 32) * 20 + (uint64_t)j) * 37 + 11) % 256);
                float d = tp_fp16_to_fp32((uint16_t)(blk[0] | blk[1] << 8));
                float m = tp_fp16_to_fp32((uint16_t)(blk[2] | blk[3] << 8));
                int j = (int)(i % 32);
                int q = j < 16 ? blk[4 + j] & 15 : blk[4 + j - 16] >> 4;
                float p = (float)q * d;
                want = p + m;
            }
            }
            bad += ok < 0 ? f2u(v[i]) != f2u(want) : !ok;
        }
        TT_CHECK(bad == 0, "%s: %zu values differ after the round trip", t->name, bad);
        free(v);
    }
    tp_gguf_close(g);
}

TT_TEST(gguf_writer_alignment_and_errors) {
    tp_gguf_writer *w;
    tp_gguf_writer_new(&w);
    TT_CHECK(tp_gguf_set_u32(w, "general.alignment", 64) == TP_OK, "set alignment");
    float x[40];
    for (int i = 0; i < 40; i++) x[i] = (float)i - 20.5f;
    TT_CHECK(tp_gguf_add_tensor_f32(w, "a", 1, (uint64_t[]){7}, x, TP_GGML_F32) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(tp_gguf_add_tensor_f32(w, "b", 1, (uint64_t[]){3}, x, TP_GGML_F16) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(tp_gguf_add_tensor_f32(w, "c", 1, (uint64_t[]){32}, x, TP_GGML_Q8_0) == TP_OK, "%s", tp_errmsg());
    /* refused additions */
    TT_CHECK(tp_gguf_add_tensor_f32(w, "a", 1, (uint64_t[]){7}, x, TP_GGML_F32) == TP_ERR_ARG, "duplicate name");
    TT_CHECK(strstr(tp_errmsg(), "'a'") != NULL, "message names the tensor: %s", tp_errmsg());
    TT_CHECK(tp_gguf_add_tensor_f32(w, "d", 1, (uint64_t[]){31}, x, TP_GGML_Q8_0) == TP_ERR_ARG, "not a block multiple");
    TT_CHECK(tp_gguf_add_tensor_f32(w, "e", 0, (uint64_t[]){1}, x, TP_GGML_F32) == TP_ERR_ARG, "n_dims 0");
    TT_CHECK(tp_gguf_add_tensor_f32(w, "f", 1, (uint64_t[]){0}, x, TP_GGML_F32) == TP_ERR_ARG, "zero dim");
    TT_CHECK(tp_gguf_add_tensor_f32(w, "g", 1, (uint64_t[]){32}, x, TP_GGML_Q4_0) == TP_ERR_UNSUPPORTED, "Q4_0 from f32");
    TT_CHECK(tp_gguf_add_tensor_f32(w, "", 1, (uint64_t[]){32}, x, TP_GGML_F32) == TP_ERR_ARG, "empty name");
    TT_CHECK(tp_gguf_add_tensor_raw(w, "h", 1, (uint64_t[]){32}, TP_GGML_Q4_0, x, 17) == TP_ERR_ARG, "raw size");
    TT_CHECK(tp_gguf_set_u32(w, "", 1) == TP_ERR_ARG, "empty key");
    uint8_t two = 2;
    TT_CHECK(tp_gguf_set_val(w, "k", TP_GGUF_BOOL, &two) == TP_ERR_ARG, "bool 2");
    TT_CHECK(tp_gguf_set_val(w, "k", TP_GGUF_STRING, &two) == TP_ERR_ARG, "set_val string");
    TT_CHECK(tp_gguf_set_arr(w, "k", TP_GGUF_ARRAY, &two, 1) == TP_ERR_ARG, "nested array");
    char *path = tt_path(tt_tmp_dir(), "align64_written.gguf");
    TT_CHECK(tp_gguf_write(w, path) == TP_OK, "write: %s", tp_errmsg());
    tp_gguf *g;
    if (tp_gguf_open(path, &g) == TP_OK) {
        TT_CHECK(g->alignment == 64 && g->data_offset % 64 == 0 && g->n_tensors == 3 &&
                 g->tensors[1].offset == 64 && g->tensors[2].offset == 128, "layout with alignment 64");
        float y[32];
        tp_gguf_tensor_to_f32(&g->tensors[0], y);
        TT_CHECK(memcmp(y, x, 7 * sizeof(float)) == 0, "F32 values");
        tp_gguf_close(g);
    } else TT_CHECK(0, "read back: %s", tp_errmsg());
    /* a bad alignment is refused at write time; a missing directory is an I/O error */
    TT_CHECK(tp_gguf_set_u32(w, "general.alignment", 48) == TP_OK, "set");
    TT_CHECK(tp_gguf_write(w, path) == TP_ERR_ARG, "alignment 48 must be refused");
    TT_CHECK(strstr(tp_errmsg(), "general.alignment") && strstr(tp_errmsg(), path), "message: %s", tp_errmsg());
    TT_CHECK(tp_gguf_set_u32(w, "general.alignment", 32) == TP_OK, "set");
    TT_CHECK(tp_gguf_write(w, "/nonexistent-dir/x.gguf") == TP_ERR_IO, "missing directory");
    TT_CHECK(strstr(tp_errmsg(), "/nonexistent-dir/x.gguf") != NULL, "message: %s", tp_errmsg());
    tp_gguf_writer_free(w);
    free(path);
}

/* Copying every kv and tensor of gguf-py's file through taper's writer reproduces it byte
 * for byte (same layout rules: kv order, tensor order, 32-byte padding after each tensor). */
TT_TEST(gguf_copy_reproduces_gguf_py_file) {
    tp_gguf *g = open_fixture("types.gguf");
    if (!g) return;
    tp_gguf_writer *w;
    tp_gguf_writer_new(&w);
    tp_status s = TP_OK;
    for (uint64_t i = 0; i < g->n_kv && !s; i++) s = tp_gguf_copy_kv(w, &g->kv[i]);
    for (uint64_t i = 0; i < g->n_tensors && !s; i++) {
        const tp_gguf_tensor *t = &g->tensors[i];
        s = tp_gguf_add_tensor_raw(w, t->name, t->n_dims, t->ne, t->type, t->data, t->nbytes);
    }
    TT_CHECK(s == TP_OK, "copy: %s", tp_errmsg());
    char *path = tt_path(tt_tmp_dir(), "copy.gguf");
    TT_CHECK(tp_gguf_write(w, path) == TP_OK, "write: %s", tp_errmsg());
    tp_gguf_writer_free(w);
    char *a, *b;
    size_t na, nb;
    char *orig = fx("types.gguf");
    if (tp_read_file(orig, &a, &na) == TP_OK && tp_read_file(path, &b, &nb) == TP_OK) {
        size_t first = 0;
        while (first < na && first < nb && a[first] == b[first]) first++;
        TT_CHECK(na == nb && first == na, "copy differs from gguf-py's file: sizes %zu/%zu, first difference at %zu",
                 na, nb, first);
        free(a);
        free(b);
    } else TT_CHECK(0, "read files");
    tp_gguf *c;
    if (tp_gguf_open(path, &c) == TP_OK) {
        check_meta(c, "types_meta.txt", 27);
        tp_gguf_close(c);
    } else TT_CHECK(0, "open copy: %s", tp_errmsg());
    free(orig);
    free(path);
    tp_gguf_close(g);
}
