/* GGUF reader (mmap, every count/length/offset validated against the file before use),
 * metadata getters, and the GGUF v3 writer (atomic: tmp + fsync + rename).
 * Block layouts, dequantisation and quantisation are in quant.c; turning tensors into a
 * model is model/load's job. */
#include "taper/gguf.h"
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ALIGNMENT ((uint64_t)1 << 30)
#define N_VTYPES 13

/* Bytes of one scalar of each value type; 0 for STRING and ARRAY. */
static const uint8_t vtype_size[N_VTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *tp_gguf_vtype_name(tp_gguf_vtype t) {
    static const char *names[N_VTYPES] = {"uint8", "int8", "uint16", "int16", "uint32", "int32",
                                          "float32", "bool", "string", "array", "uint64",
                                          "int64", "float64"};
    return (unsigned)t < N_VTYPES ? names[t] : "unknown";
}

static int vtype_is_unsigned(uint32_t t) {
    return t == TP_GGUF_UINT8 || t == TP_GGUF_UINT16 || t == TP_GGUF_UINT32 || t == TP_GGUF_UINT64;
}
static int vtype_is_signed(uint32_t t) {
    return t == TP_GGUF_INT8 || t == TP_GGUF_INT16 || t == TP_GGUF_INT32 || t == TP_GGUF_INT64;
}
static int vtype_is_float(uint32_t t) { return t == TP_GGUF_FLOAT32 || t == TP_GGUF_FLOAT64; }

static uint64_t rd_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* One scalar of type t at p, decoded into the union fields of tp_gguf_kv's convention. */
static void decode_scalar(uint32_t t, const uint8_t *p, uint64_t *u, int64_t *i, double *f) {
    uint64_t raw = rd_le(p, vtype_size[t]);
    *u = 0; *i = 0; *f = 0;
    switch (t) {
    case TP_GGUF_INT8: *i = (int8_t)(uint8_t)raw; break;
    case TP_GGUF_INT16: *i = (int16_t)(uint16_t)raw; break;
    case TP_GGUF_INT32: *i = (int32_t)(uint32_t)raw; break;
    case TP_GGUF_INT64: *i = (int64_t)raw; break;
    case TP_GGUF_FLOAT32: { uint32_t b = (uint32_t)raw; float x; memcpy(&x, &b, 4); *f = x; break; }
    case TP_GGUF_FLOAT64: memcpy(f, &raw, 8); break;
    default: *u = raw; break;   /* unsigned and bool */
    }
}

/* ================================ reader ================================ */

typedef struct {
    const char *path;
    const uint8_t *p;
    size_t size, pos;
} cursor;

static size_t left(const cursor *c) { return c->size - c->pos; }

static tp_status need(cursor *c, size_t n, const char *what) {
    if (left(c) < n)
        return tp_fail(TP_ERR_FORMAT, "%s: truncated: %s needs %zu bytes at offset %zu but the "
                       "file has %zu bytes", c->path, what, n, c->pos, c->size);
    return TP_OK;
}

static tp_status rd_u32(cursor *c, const char *what, uint32_t *v) {
    tp_status s = need(c, 4, what);
    if (s) return s;
    *v = (uint32_t)rd_le(c->p + c->pos, 4);
    c->pos += 4;
    return TP_OK;
}

static tp_status rd_u64(cursor *c, const char *what, uint64_t *v) {
    tp_status s = need(c, 8, what);
    if (s) return s;
    *v = rd_le(c->p + c->pos, 8);
    c->pos += 8;
    return TP_OK;
}

static tp_status rd_str(cursor *c, const char *what, tp_gguf_str *out) {
    uint64_t len;
    tp_status s = rd_u64(c, what, &len);
    if (s) return s;
    if (len > left(c))
        return tp_fail(TP_ERR_FORMAT, "%s: %s: string length %" PRIu64 " runs past the end of the "
                       "file (%zu bytes left at offset %zu)", c->path, what, len, left(c), c->pos);
    out->data = (const char *)(c->p + c->pos);
    out->len = len;
    c->pos += (size_t)len;
    return TP_OK;
}

/* Key or tensor name: non-empty, no NUL inside (it becomes a C string), copied. */
static tp_status rd_name(cursor *c, const char *what, char **out) {
    tp_gguf_str s;
    tp_status st = rd_str(c, what, &s);
    if (st) return st;
    if (s.len == 0)
        return tp_fail(TP_ERR_FORMAT, "%s: %s is empty (offset %zu)", c->path, what, c->pos);
    if (memchr(s.data, 0, (size_t)s.len))
        return tp_fail(TP_ERR_FORMAT, "%s: %s \"%.*s...\" contains a NUL byte", c->path, what,
                       (int)strnlen(s.data, 64), s.data);
    char *n = malloc((size_t)s.len + 1);
    if (!n) return tp_fail(TP_ERR_NOMEM, "%s: %s: cannot allocate %" PRIu64 " bytes", c->path, what, s.len);
    memcpy(n, s.data, (size_t)s.len);
    n[s.len] = 0;
    *out = n;
    return TP_OK;
}

static tp_status parse_value(cursor *c, tp_gguf_kv *kv) {
    const char *k = kv->key;
    char what[160];
    uint32_t t;
    snprintf(what, sizeof what, "value type of key '%.100s'", k);
    tp_status s = rd_u32(c, what, &t);
    if (s) return s;
    if (t >= N_VTYPES)
        return tp_fail(TP_ERR_FORMAT, "%s: key '%s': unknown value type %u (offset %zu)",
                       c->path, k, t, c->pos - 4);
    kv->type = (tp_gguf_vtype)t;
    snprintf(what, sizeof what, "value of key '%.100s'", k);
    if (t == TP_GGUF_STRING) return rd_str(c, what, &kv->v.str);
    if (t != TP_GGUF_ARRAY) {
        if ((s = need(c, vtype_size[t], what))) return s;
        const uint8_t *p = c->p + c->pos;
        if (t == TP_GGUF_BOOL && p[0] > 1)
            return tp_fail(TP_ERR_FORMAT, "%s: key '%s': bool value is %u, must be 0 or 1 (offset %zu)",
                           c->path, k, p[0], c->pos);
        uint64_t u; int64_t i; double f;
        decode_scalar(t, p, &u, &i, &f);
        if (vtype_is_signed(t)) kv->v.i64 = i;
        else if (vtype_is_float(t)) kv->v.f64 = f;
        else kv->v.u64 = u;
        c->pos += vtype_size[t];
        return TP_OK;
    }
    uint32_t et;
    uint64_t n;
    snprintf(what, sizeof what, "array element type of key '%.100s'", k);
    if ((s = rd_u32(c, what, &et))) return s;
    if (et == TP_GGUF_ARRAY)
        return tp_fail(TP_ERR_FORMAT, "%s: key '%s': nested array (array of arrays) is not allowed",
                       c->path, k);
    if (et >= N_VTYPES)
        return tp_fail(TP_ERR_FORMAT, "%s: key '%s': unknown array element type %u", c->path, k, et);
    snprintf(what, sizeof what, "array length of key '%.100s'", k);
    if ((s = rd_u64(c, what, &n))) return s;
    kv->v.arr.type = (tp_gguf_vtype)et;
    kv->v.arr.n = n;
    kv->v.arr.data = c->p + c->pos;
    if (et == TP_GGUF_STRING) {
        /* every string needs at least its 8-byte length: bound n before allocating */
        if (n > left(c) / 8)
            return tp_fail(TP_ERR_FORMAT, "%s: key '%s': array length %" PRIu64 " strings cannot fit "
                           "in the %zu bytes left", c->path, k, n, left(c));
        kv->v.arr.strs = malloc((size_t)(n ? n : 1) * sizeof(tp_gguf_str));
        if (!kv->v.arr.strs)
            return tp_fail(TP_ERR_NOMEM, "%s: key '%s': cannot allocate %" PRIu64 " strings", c->path, k, n);
        for (uint64_t j = 0; j < n; j++) {
            snprintf(what, sizeof what, "string %" PRIu64 " of array '%.100s'", j, k);
            if ((s = rd_str(c, what, &kv->v.arr.strs[j]))) return s;
        }
        return TP_OK;
    }
    const size_t es = vtype_size[et];
    if (n > left(c) / es)
        return tp_fail(TP_ERR_FORMAT, "%s: key '%s': array length %" PRIu64 " of %s runs past the end "
                       "of the file (%zu bytes left at offset %zu)", c->path, k, n,
                       tp_gguf_vtype_name(et), left(c), c->pos);
    if (et == TP_GGUF_BOOL)
        for (uint64_t j = 0; j < n; j++)
            if (c->p[c->pos + j] > 1)
                return tp_fail(TP_ERR_FORMAT, "%s: key '%s': bool array element %" PRIu64 " is %u, "
                               "must be 0 or 1", c->path, k, j, c->p[c->pos + j]);
    c->pos += (size_t)n * es;
    return TP_OK;
}

/* Shape checks shared by the reader and the writer: returns NULL if fine, else a short
 * description of the problem written into msg. */
static const char *check_shape(uint32_t n_dims, const uint64_t *ne, uint32_t type,
                               uint64_t *n_elem, size_t *nbytes, char *msg, size_t msz) {
    size_t blk = tp_ggml_block_size((tp_ggml_type)type), ts = tp_ggml_type_size((tp_ggml_type)type);
    if (n_dims < 1 || n_dims > 4) {
        snprintf(msg, msz, "n_dims = %u, must be 1..4", n_dims);
        return msg;
    }
    uint64_t prod = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX) {
            snprintf(msg, msz, "dimension ne[%u] = %" PRIu64 " (must be 1..2^63-1)", d, ne[d]);
            return msg;
        }
        if (__builtin_mul_overflow(prod, ne[d], &prod) || prod > (uint64_t)INT64_MAX) {
            snprintf(msg, msz, "shape overflows: element count exceeds 2^63-1 at ne[%u] = %" PRIu64, d, ne[d]);
            return msg;
        }
    }
    if (blk == 0) {
        snprintf(msg, msz, "unknown tensor type %u", type);
        return msg;
    }
    if (ne[0] % blk != 0) {
        snprintf(msg, msz, "row size ne[0] = %" PRIu64 " is not a multiple of the %s block size %zu",
                 ne[0], tp_ggml_type_name((tp_ggml_type)type), blk);
        return msg;
    }
    uint64_t nb;
    if (__builtin_mul_overflow(prod / blk, (uint64_t)ts, &nb) || nb > SIZE_MAX) {
        snprintf(msg, msz, "byte size overflows (%" PRIu64 " elements of %s)", prod,
                 tp_ggml_type_name((tp_ggml_type)type));
        return msg;
    }
    *n_elem = prod;
    *nbytes = (size_t)nb;
    return NULL;
}

static tp_status parse_tensor_info(cursor *c, uint64_t idx, tp_gguf_tensor *t) {
    char what[160];
    tp_status s;
    snprintf(what, sizeof what, "name of tensor %" PRIu64, idx);
    if ((s = rd_name(c, what, &t->name))) return s;
    const char *nm = t->name;
    snprintf(what, sizeof what, "n_dims of tensor '%.100s'", nm);
    if ((s = rd_u32(c, what, &t->n_dims))) return s;
    if (t->n_dims < 1 || t->n_dims > 4)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': n_dims = %u, must be 1..4", c->path, nm, t->n_dims);
    for (uint32_t d = 0; d < 4; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        snprintf(what, sizeof what, "ne[%u] of tensor '%.100s'", d, nm);
        if ((s = rd_u64(c, what, &t->ne[d]))) return s;
    }
    uint32_t type;
    snprintf(what, sizeof what, "type of tensor '%.100s'", nm);
    if ((s = rd_u32(c, what, &type))) return s;
    if (tp_ggml_block_size((tp_ggml_type)type) == 0)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': unknown tensor type %u", c->path, nm, type);
    t->type = (tp_ggml_type)type;
    snprintf(what, sizeof what, "offset of tensor '%.100s'", nm);
    if ((s = rd_u64(c, what, &t->offset))) return s;
    char msg[200];
    if (check_shape(t->n_dims, t->ne, type, &t->n_elem, &t->nbytes, msg, sizeof msg))
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': %s", c->path, nm, msg);
    return TP_OK;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const tp_gguf_tensor *x = *(const tp_gguf_tensor *const *)a, *y = *(const tp_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Sorts a copy of the n names and reports the first one that occurs twice. */
static tp_status check_unique(const char *path, const char *kind, const char **names, uint64_t n) {
    if (n < 2) return TP_OK;
    qsort(names, (size_t)n, sizeof *names, cmp_str_ptr);
    for (uint64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return tp_fail(TP_ERR_FORMAT, "%s: duplicate %s '%s'", path, kind, names[i]);
    return TP_OK;
}

static tp_status read_alignment(tp_gguf *g) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const tp_gguf_kv *kv = tp_gguf_find(g, "general.alignment");
    if (!kv) return TP_OK;
    uint64_t a;
    if (vtype_is_unsigned(kv->type)) a = kv->v.u64;
    else if (vtype_is_signed(kv->type) && kv->v.i64 > 0) a = (uint64_t)kv->v.i64;
    else if (vtype_is_signed(kv->type)) a = 0;
    else
        return tp_fail(TP_ERR_FORMAT, "%s: general.alignment has type %s, expected uint32",
                       g->path, tp_gguf_vtype_name(kv->type));
    if (a == 0 || (a & (a - 1)) != 0 || a > GGUF_MAX_ALIGNMENT)
        return tp_fail(TP_ERR_FORMAT, "%s: general.alignment = %" PRId64 ", must be a power of two "
                       "(at most 2^30)", g->path, vtype_is_signed(kv->type) ? kv->v.i64 : (int64_t)a);
    g->alignment = a;
    return TP_OK;
}

/* Offsets aligned, data inside the file, no two tensors sharing bytes. */
static tp_status check_tensor_data(tp_gguf *g) {
    const size_t size = g->map.size;
    if (g->n_tensors > 0 && g->data_offset > size)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor data section would start at offset %" PRIu64
                       ", past the end of the file (%zu bytes)", g->path, g->data_offset, size);
    const uint64_t avail = g->data_offset <= size ? size - g->data_offset : 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        tp_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': offset %" PRIu64 " is not a multiple of "
                           "the alignment %" PRIu64, g->path, t->name, t->offset, g->alignment);
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': data at offset %" PRIu64 " + %zu bytes "
                           "runs past the end of the file (%" PRIu64 " bytes of tensor data)",
                           g->path, t->name, t->offset, t->nbytes, avail);
        t->data = g->map.data + g->data_offset + t->offset;
        t->path = g->path;
    }
    if (g->n_tensors < 2) return TP_OK;
    const tp_gguf_tensor **by_off = malloc((size_t)g->n_tensors * sizeof *by_off);
    if (!by_off) return tp_fail(TP_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_tensors; i++) by_off[i] = &g->tensors[i];
    qsort(by_off, (size_t)g->n_tensors, sizeof *by_off, cmp_tensor_offset);
    tp_status s = TP_OK;
    for (uint64_t i = 1; i < g->n_tensors && !s; i++) {
        const tp_gguf_tensor *a = by_off[i - 1], *b = by_off[i];
        if (b->offset - a->offset < a->nbytes)
            s = tp_fail(TP_ERR_FORMAT, "%s: tensors '%s' (offset %" PRIu64 ", %zu bytes) and '%s' "
                        "(offset %" PRIu64 ") overlap", g->path, a->name, a->offset, a->nbytes,
                        b->name, b->offset);
    }
    free(by_off);
    return s;
}

static tp_status parse(tp_gguf *g) {
    cursor c = {g->path, g->map.data, g->map.size, 0};
    tp_status s;
    if (c.size < 4 || memcmp(c.p, "GGUF", 4) != 0) {
        if (c.size < 4)
            return tp_fail(TP_ERR_FORMAT, "%s: file is %zu bytes, too short for the GGUF magic",
                           g->path, c.size);
        return tp_fail(TP_ERR_FORMAT, "%s: bad magic %02x %02x %02x %02x, expected \"GGUF\"",
                       g->path, c.p[0], c.p[1], c.p[2], c.p[3]);
    }
    c.pos = 4;
    if ((s = rd_u32(&c, "header version", &g->version))) return s;
    if (g->version == 1)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: GGUF version 1 (pre-2023, 32-bit counts) is not "
                       "supported; only versions 2 and 3", g->path);
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: big-endian GGUF (version bytes %08x) is not "
                       "supported", g->path, g->version);
    if (g->version != 2 && g->version != 3)
        return tp_fail(TP_ERR_FORMAT, "%s: unsupported GGUF version %u (expected 2 or 3)",
                       g->path, g->version);
    uint64_t n_tensors, n_kv;
    if ((s = rd_u64(&c, "header n_tensors", &n_tensors))) return s;
    if ((s = rd_u64(&c, "header n_kv", &n_kv))) return s;
    /* a kv takes at least 8+1 (key) + 4 (type) + 1 (value) bytes, a tensor info at least
     * 8+1 (name) + 4 (n_dims) + 8 (ne[0]) + 4 (type) + 8 (offset): bound the counts by the
     * bytes left before allocating anything */
    if (n_kv > left(&c) / 14)
        return tp_fail(TP_ERR_FORMAT, "%s: header n_kv = %" PRIu64 " cannot fit in the %zu bytes "
                       "after the header", g->path, n_kv, left(&c));
    if (n_tensors > left(&c) / 33 || n_kv * 14 + n_tensors * 33 > left(&c))
        return tp_fail(TP_ERR_FORMAT, "%s: header n_tensors = %" PRIu64 " (with n_kv = %" PRIu64
                       ") cannot fit in the %zu bytes after the header", g->path, n_tensors,
                       n_kv, left(&c));
    g->kv = calloc((size_t)(n_kv ? n_kv : 1), sizeof *g->kv);
    g->tensors = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof *g->tensors);
    if (!g->kv || !g->tensors) return tp_fail(TP_ERR_NOMEM, "%s: out of memory for the header", g->path);
    g->n_kv = n_kv;
    g->n_tensors = n_tensors;
    for (uint64_t i = 0; i < n_kv; i++) {
        char what[64];
        snprintf(what, sizeof what, "key of kv %" PRIu64, i);
        if ((s = rd_name(&c, what, &g->kv[i].key))) return s;
        if ((s = parse_value(&c, &g->kv[i]))) return s;
    }
    for (uint64_t i = 0; i < n_tensors; i++)
        if ((s = parse_tensor_info(&c, i, &g->tensors[i]))) return s;

    uint64_t n_names = n_kv > n_tensors ? n_kv : n_tensors;
    const char **names = malloc((size_t)(n_names ? n_names : 1) * sizeof *names);
    if (!names) return tp_fail(TP_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < n_kv; i++) names[i] = g->kv[i].key;
    s = check_unique(g->path, "key", names, n_kv);
    for (uint64_t i = 0; !s && i < n_tensors; i++) names[i] = g->tensors[i].name;
    if (!s) s = check_unique(g->path, "tensor name", names, n_tensors);
    free(names);
    if (s) return s;

    if ((s = read_alignment(g))) return s;
    g->data_offset = ((uint64_t)c.pos + g->alignment - 1) / g->alignment * g->alignment;
    return check_tensor_data(g);
}

tp_status tp_gguf_open(const char *path, tp_gguf **out) {
    *out = NULL;
    tp_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory", path);
    }
    tp_status s = tp_mmap_open(path, &g->map);
    if (!s) s = parse(g);
    if (s) {
        tp_gguf_close(g);
        return s;
    }
    *out = g;
    return TP_OK;
}

void tp_gguf_close(tp_gguf *g) {
    if (!g) return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            if (g->kv[i].type == TP_GGUF_ARRAY) free(g->kv[i].v.arr.strs);
        }
    if (g->tensors)
        for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    tp_mmap_close(&g->map);
    free(g->path);
    free(g);
}

const tp_gguf_kv *tp_gguf_find(const tp_gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

const tp_gguf_tensor *tp_gguf_find_tensor(const tp_gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

/* ---- array elements ---- */

static int arr_elem(const tp_gguf_kv *kv, uint64_t i, uint64_t *u, int64_t *s, double *f) {
    if (kv->type != TP_GGUF_ARRAY || kv->v.arr.type >= N_VTYPES || !vtype_size[kv->v.arr.type]) return 0;
    uint32_t et = kv->v.arr.type;
    decode_scalar(et, kv->v.arr.data + (size_t)i * vtype_size[et], u, s, f);
    return 1;
}

uint64_t tp_gguf_arr_u64(const tp_gguf_kv *kv, uint64_t i) {
    uint64_t u; int64_t s; double f;
    if (!arr_elem(kv, i, &u, &s, &f)) return 0;
    if (vtype_is_signed(kv->v.arr.type)) return (uint64_t)s;
    if (vtype_is_float(kv->v.arr.type)) return f >= 0 && f < 18446744073709551616.0 ? (uint64_t)f : 0;
    return u;
}

int64_t tp_gguf_arr_i64(const tp_gguf_kv *kv, uint64_t i) {
    uint64_t u; int64_t s; double f;
    if (!arr_elem(kv, i, &u, &s, &f)) return 0;
    if (vtype_is_signed(kv->v.arr.type)) return s;
    if (vtype_is_float(kv->v.arr.type))
        return f >= -9223372036854775808.0 && f < 9223372036854775808.0 ? (int64_t)f : 0;
    return (int64_t)u;
}

double tp_gguf_arr_f64(const tp_gguf_kv *kv, uint64_t i) {
    uint64_t u; int64_t s; double f;
    if (!arr_elem(kv, i, &u, &s, &f)) return 0;
    if (vtype_is_signed(kv->v.arr.type)) return (double)s;
    if (vtype_is_float(kv->v.arr.type)) return f;
    return (double)u;
}

/* ---- typed getters ---- */

static tp_status find_kv(const tp_gguf *g, const char *key, const tp_gguf_kv **kv) {
    *kv = tp_gguf_find(g, key);
    if (!*kv) return tp_fail(TP_ERR_ARG, "%s: metadata key '%s' not found", g->path, key);
    return TP_OK;
}

static tp_status wrong_type(const tp_gguf *g, const tp_gguf_kv *kv, const char *expected) {
    return tp_fail(TP_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected %s", g->path,
                   kv->key, tp_gguf_vtype_name(kv->type), expected);
}

tp_status tp_gguf_get_u32(const tp_gguf *g, const char *key, uint32_t *out) {
    const tp_gguf_kv *kv;
    tp_status s = find_kv(g, key, &kv);
    if (s) return s;
    if (vtype_is_unsigned(kv->type)) {
        if (kv->v.u64 > UINT32_MAX)
            return tp_fail(TP_ERR_FORMAT, "%s: metadata key '%s' = %" PRIu64 " does not fit in uint32",
                           g->path, key, kv->v.u64);
        *out = (uint32_t)kv->v.u64;
        return TP_OK;
    }
    if (vtype_is_signed(kv->type)) {
        if (kv->v.i64 < 0 || kv->v.i64 > (int64_t)UINT32_MAX)
            return tp_fail(TP_ERR_FORMAT, "%s: metadata key '%s' = %" PRId64 " does not fit in uint32",
                           g->path, key, kv->v.i64);
        *out = (uint32_t)kv->v.i64;
        return TP_OK;
    }
    return wrong_type(g, kv, "an integer");
}

tp_status tp_gguf_get_f32(const tp_gguf *g, const char *key, float *out) {
    const tp_gguf_kv *kv;
    tp_status s = find_kv(g, key, &kv);
    if (s) return s;
    if (!vtype_is_float(kv->type)) return wrong_type(g, kv, "float32 or float64");
    *out = (float)kv->v.f64;
    return TP_OK;
}

tp_status tp_gguf_get_bool(const tp_gguf *g, const char *key, int *out) {
    const tp_gguf_kv *kv;
    tp_status s = find_kv(g, key, &kv);
    if (s) return s;
    if (kv->type != TP_GGUF_BOOL) return wrong_type(g, kv, "bool");
    *out = kv->v.u64 != 0;
    return TP_OK;
}

tp_status tp_gguf_get_str(const tp_gguf *g, const char *key, char **out) {
    const tp_gguf_kv *kv;
    tp_status s = find_kv(g, key, &kv);
    if (s) return s;
    if (kv->type != TP_GGUF_STRING) return wrong_type(g, kv, "string");
    char *r = malloc((size_t)kv->v.str.len + 1);
    if (!r) return tp_fail(TP_ERR_NOMEM, "%s: key '%s': out of memory", g->path, key);
    memcpy(r, kv->v.str.data, (size_t)kv->v.str.len);
    r[kv->v.str.len] = 0;
    *out = r;
    return TP_OK;
}

tp_status tp_gguf_tensor_to_f32(const tp_gguf_tensor *t, float *dst) {
    const char *path = t->path ? t->path : "(gguf)";
    if (t->n_elem > SIZE_MAX)
        return tp_fail(TP_ERR_NOMEM, "%s: tensor '%s': %" PRIu64 " elements do not fit in memory",
                       path, t->name, t->n_elem);
    tp_status s = tp_dequantize(t->type, t->data, dst, (size_t)t->n_elem);
    if (s) return tp_fail_ctx(s, "%s: tensor '%s': ", path, t->name);
    return TP_OK;
}

/* ================================ writer ================================ */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} bbuf;

static void bb_put(bbuf *b, const void *src, size_t n) {
    if (b->oom) return;
    if (b->n + n < b->n) { b->oom = 1; return; }
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) {
            if (cap > SIZE_MAX / 2) { b->oom = 1; return; }
            cap *= 2;
        }
        uint8_t *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void bb_le(bbuf *b, uint64_t v, size_t n) {
    uint8_t t[8];
    for (size_t i = 0; i < n; i++) t[i] = (uint8_t)(v >> (8 * i));
    bb_put(b, t, n);
}

static void bb_str(bbuf *b, const char *s, uint64_t len) {
    bb_le(b, len, 8);
    bb_put(b, s, (size_t)len);
}

typedef struct {
    char *key;
    uint32_t type;
    uint8_t *val;    /* the value exactly as written after the type id */
    size_t len;
} wkv;

typedef struct {
    char *name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    uint8_t *data;   /* stored form, nbytes */
    size_t nbytes;
} wtensor;

struct tp_gguf_writer {
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
};

tp_status tp_gguf_writer_new(tp_gguf_writer **out) {
    *out = calloc(1, sizeof **out);
    return *out ? TP_OK : tp_fail(TP_ERR_NOMEM, "gguf writer: out of memory");
}

void tp_gguf_writer_free(tp_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val); }
    for (size_t i = 0; i < w->n_t; i++) { free(w->t[i].name); free(w->t[i].data); }
    free(w->kv);
    free(w->t);
    free(w);
}

/* Takes ownership of the value buffer b (also on failure). */
static tp_status put_kv(tp_gguf_writer *w, const char *key, uint32_t type, bbuf *b) {
    if (b->oom) { free(b->p); return tp_fail(TP_ERR_NOMEM, "gguf writer: key '%s': out of memory", key ? key : "?"); }
    if (!key || !key[0]) { free(b->p); return tp_fail(TP_ERR_ARG, "gguf writer: empty metadata key"); }
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) {
            free(w->kv[i].val);
            w->kv[i].type = type;
            w->kv[i].val = b->p;
            w->kv[i].len = b->n;
            return TP_OK;
        }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
        wkv *q = realloc(w->kv, cap * sizeof *q);
        if (!q) { free(b->p); return tp_fail(TP_ERR_NOMEM, "gguf writer: out of memory"); }
        w->kv = q;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) { free(b->p); return tp_fail(TP_ERR_NOMEM, "gguf writer: out of memory"); }
    w->kv[w->n_kv++] = (wkv){k, type, b->p, b->n};
    return TP_OK;
}

tp_status tp_gguf_set_val(tp_gguf_writer *w, const char *key, tp_gguf_vtype t, const void *v) {
    if ((unsigned)t >= N_VTYPES || !vtype_size[t])
        return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': set_val needs a scalar type, got %s (%u)",
                       key ? key : "?", tp_gguf_vtype_name(t), (unsigned)t);
    if (t == TP_GGUF_BOOL && *(const uint8_t *)v > 1)
        return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': bool value %u is not 0 or 1",
                       key ? key : "?", *(const uint8_t *)v);
    bbuf b = {0};
    bb_put(&b, v, vtype_size[t]);
    return put_kv(w, key, t, &b);
}

tp_status tp_gguf_set_u32(tp_gguf_writer *w, const char *key, uint32_t v) {
    bbuf b = {0};
    bb_le(&b, v, 4);
    return put_kv(w, key, TP_GGUF_UINT32, &b);
}

tp_status tp_gguf_set_i32(tp_gguf_writer *w, const char *key, int32_t v) {
    bbuf b = {0};
    bb_le(&b, (uint32_t)v, 4);
    return put_kv(w, key, TP_GGUF_INT32, &b);
}

tp_status tp_gguf_set_f32(tp_gguf_writer *w, const char *key, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    bbuf b = {0};
    bb_le(&b, bits, 4);
    return put_kv(w, key, TP_GGUF_FLOAT32, &b);
}

tp_status tp_gguf_set_bool(tp_gguf_writer *w, const char *key, int v) {
    bbuf b = {0};
    bb_le(&b, v != 0, 1);
    return put_kv(w, key, TP_GGUF_BOOL, &b);
}

tp_status tp_gguf_set_str(tp_gguf_writer *w, const char *key, const char *v) {
    if (!v) return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': NULL string", key ? key : "?");
    bbuf b = {0};
    bb_str(&b, v, strlen(v));
    return put_kv(w, key, TP_GGUF_STRING, &b);
}

tp_status tp_gguf_set_str_arr(tp_gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    bbuf b = {0};
    bb_le(&b, TP_GGUF_STRING, 4);
    bb_le(&b, n, 8);
    for (uint64_t i = 0; i < n; i++) {
        if (!v[i]) {
            free(b.p);
            return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': string %" PRIu64 " is NULL", key ? key : "?", i);
        }
        bb_str(&b, v[i], strlen(v[i]));
    }
    return put_kv(w, key, TP_GGUF_ARRAY, &b);
}

tp_status tp_gguf_set_arr(tp_gguf_writer *w, const char *key, tp_gguf_vtype et, const void *data, uint64_t n) {
    if ((unsigned)et >= N_VTYPES || !vtype_size[et])
        return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': array element type %s (%u) is not a scalar "
                       "type (use tp_gguf_set_str_arr for strings)", key ? key : "?",
                       tp_gguf_vtype_name(et), (unsigned)et);
    size_t nbytes;
    if (n > SIZE_MAX || tp_mul_overflow((size_t)n, vtype_size[et], &nbytes))
        return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': array length %" PRIu64 " too large", key ? key : "?", n);
    if (et == TP_GGUF_BOOL)
        for (size_t i = 0; i < nbytes; i++)
            if (((const uint8_t *)data)[i] > 1)
                return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': bool element %zu is %u, not 0 or 1",
                               key ? key : "?", i, ((const uint8_t *)data)[i]);
    bbuf b = {0};
    bb_le(&b, et, 4);
    bb_le(&b, n, 8);
    bb_put(&b, data, nbytes);
    return put_kv(w, key, TP_GGUF_ARRAY, &b);
}

tp_status tp_gguf_copy_kv(tp_gguf_writer *w, const tp_gguf_kv *kv) {
    bbuf b = {0};
    const uint32_t t = kv->type;
    if (t == TP_GGUF_STRING) {
        bb_str(&b, kv->v.str.data, kv->v.str.len);
    } else if (t == TP_GGUF_ARRAY) {
        const uint32_t et = kv->v.arr.type;
        if (et >= N_VTYPES || et == TP_GGUF_ARRAY)
            return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': bad array element type %u", kv->key, et);
        bb_le(&b, et, 4);
        bb_le(&b, kv->v.arr.n, 8);
        if (et == TP_GGUF_STRING) {
            for (uint64_t i = 0; i < kv->v.arr.n; i++) bb_str(&b, kv->v.arr.strs[i].data, kv->v.arr.strs[i].len);
        } else {
            size_t nbytes;
            if (kv->v.arr.n > SIZE_MAX || tp_mul_overflow((size_t)kv->v.arr.n, vtype_size[et], &nbytes)) {
                free(b.p);
                return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': array too large", kv->key);
            }
            bb_put(&b, kv->v.arr.data, nbytes);
        }
    } else if (t < N_VTYPES) {
        uint64_t raw;
        if (vtype_is_signed(t)) raw = (uint64_t)kv->v.i64;
        else if (t == TP_GGUF_FLOAT32) { float f = (float)kv->v.f64; uint32_t u; memcpy(&u, &f, 4); raw = u; }
        else if (t == TP_GGUF_FLOAT64) memcpy(&raw, &kv->v.f64, 8);
        else raw = kv->v.u64;
        bb_le(&b, raw, vtype_size[t]);
    } else {
        return tp_fail(TP_ERR_ARG, "gguf writer: key '%s': unknown value type %u", kv->key, t);
    }
    return put_kv(w, kv->key, t, &b);
}

static tp_status add_tensor_check(tp_gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                                  tp_ggml_type t, uint64_t *n_elem, size_t *nbytes) {
    if (!name || !name[0]) return tp_fail(TP_ERR_ARG, "gguf writer: empty tensor name");
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return tp_fail(TP_ERR_ARG, "gguf writer: duplicate tensor name '%s'", name);
    uint64_t ne4[4] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims && d < 4; d++) ne4[d] = ne[d];
    char msg[200];
    if (check_shape(n_dims, ne4, (uint32_t)t, n_elem, nbytes, msg, sizeof msg))
        return tp_fail(TP_ERR_ARG, "gguf writer: tensor '%s': %s", name, msg);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *q = realloc(w->t, cap * sizeof *q);
        if (!q) return tp_fail(TP_ERR_NOMEM, "gguf writer: out of memory");
        w->t = q;
        w->cap_t = cap;
    }
    return TP_OK;
}

static tp_status add_tensor_owned(tp_gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                                  tp_ggml_type t, uint8_t *data, size_t nbytes) {
    wtensor *x = &w->t[w->n_t];
    memset(x, 0, sizeof *x);
    if (!(x->name = strdup(name))) { free(data); return tp_fail(TP_ERR_NOMEM, "gguf writer: out of memory"); }
    x->n_dims = n_dims;
    for (uint32_t d = 0; d < 4; d++) x->ne[d] = d < n_dims ? ne[d] : 1;
    x->type = (uint32_t)t;
    x->data = data;
    x->nbytes = nbytes;
    w->n_t++;
    return TP_OK;
}

tp_status tp_gguf_add_tensor_f32(tp_gguf_writer *w, const char *name, uint32_t n_dims,
                                 const uint64_t *ne, const float *data, tp_ggml_type t) {
    uint64_t n_elem;
    size_t nbytes;
    tp_status s = add_tensor_check(w, name, n_dims, ne, t, &n_elem, &nbytes);
    if (s) return s;
    if (!tp_ggml_can_quantize(t))
        return tp_fail(TP_ERR_UNSUPPORTED, "gguf writer: tensor '%s': cannot store fp32 data as %s "
                       "(supported: F32, F16, BF16, Q8_0)", name, tp_ggml_type_name(t));
    uint8_t *buf = malloc(nbytes);
    if (!buf) return tp_fail(TP_ERR_NOMEM, "gguf writer: tensor '%s': cannot allocate %zu bytes", name, nbytes);
    if ((s = tp_quantize(t, data, buf, (size_t)n_elem))) {
        free(buf);
        return tp_fail_ctx(s, "gguf writer: tensor '%s': ", name);
    }
    return add_tensor_owned(w, name, n_dims, ne, t, buf, nbytes);
}

tp_status tp_gguf_add_tensor_raw(tp_gguf_writer *w, const char *name, uint32_t n_dims,
                                 const uint64_t *ne, tp_ggml_type t, const void *data, size_t nbytes) {
    uint64_t n_elem;
    size_t want;
    tp_status s = add_tensor_check(w, name, n_dims, ne, t, &n_elem, &want);
    if (s) return s;
    if (nbytes != want)
        return tp_fail(TP_ERR_ARG, "gguf writer: tensor '%s': %zu bytes given, shape and type %s need %zu",
                       name, nbytes, tp_ggml_type_name(t), want);
    uint8_t *buf = malloc(nbytes);
    if (!buf) return tp_fail(TP_ERR_NOMEM, "gguf writer: tensor '%s': cannot allocate %zu bytes", name, nbytes);
    memcpy(buf, data, nbytes);
    return add_tensor_owned(w, name, n_dims, ne, t, buf, nbytes);
}

static tp_status writer_alignment(const tp_gguf_writer *w, uint64_t *align) {
    *align = GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment") != 0) continue;
        const wkv *k = &w->kv[i];
        if (k->type != TP_GGUF_UINT32)   /* gguf-py and llama.cpp accept only uint32 here */
            return tp_fail(TP_ERR_ARG, "gguf writer: general.alignment has type %s, expected uint32",
                           tp_gguf_vtype_name(k->type));
        uint64_t a = rd_le(k->val, 4);
        if (a == 0 || (a & (a - 1)) || a > GGUF_MAX_ALIGNMENT)
            return tp_fail(TP_ERR_ARG, "gguf writer: general.alignment = %" PRIu64 " is not a power of "
                           "two (at most 2^30)", a);
        *align = a;
    }
    return TP_OK;
}

static tp_status write_all(int fd, const void *p, size_t n, const char *path) {
    const uint8_t *q = p;
    while (n > 0) {
        ssize_t k = write(fd, q, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return tp_fail(TP_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        q += k;
        n -= (size_t)k;
    }
    return TP_OK;
}

static tp_status write_pad(int fd, uint64_t n, const char *path) {
    static const uint8_t zeros[4096];
    while (n > 0) {
        size_t k = n > sizeof zeros ? sizeof zeros : (size_t)n;
        tp_status s = write_all(fd, zeros, k, path);
        if (s) return s;
        n -= k;
    }
    return TP_OK;
}

static tp_status build_header(const tp_gguf_writer *w, uint64_t align, bbuf *h) {
    bb_put(h, "GGUF", 4);
    bb_le(h, 3, 4);
    bb_le(h, w->n_t, 8);
    bb_le(h, w->n_kv, 8);
    for (size_t i = 0; i < w->n_kv; i++) {
        bb_str(h, w->kv[i].key, strlen(w->kv[i].key));
        bb_le(h, w->kv[i].type, 4);
        bb_put(h, w->kv[i].val, w->kv[i].len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        bb_str(h, t->name, strlen(t->name));
        bb_le(h, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) bb_le(h, t->ne[d], 8);
        bb_le(h, t->type, 4);
        bb_le(h, off, 8);
        off += (t->nbytes + align - 1) / align * align;
    }
    size_t pad = (size_t)((align - h->n % align) % align);   /* padded even with no tensors, as gguf-py does */
    for (size_t i = 0; i < pad; i++) bb_le(h, 0, 1);
    if (h->oom) return tp_fail(TP_ERR_NOMEM, "gguf writer: out of memory for the header");
    return TP_OK;
}

tp_status tp_gguf_write(tp_gguf_writer *w, const char *path) {
    uint64_t align;
    tp_status s = writer_alignment(w, &align);
    if (s) return tp_fail_ctx(s, "%s: ", path);
    bbuf h = {0};
    if ((s = build_header(w, align, &h))) { free(h.p); return tp_fail_ctx(s, "%s: ", path); }

    size_t plen = strlen(path) + 32;
    char *tmp = malloc(plen);
    if (!tmp) { free(h.p); return tp_fail(TP_ERR_NOMEM, "%s: out of memory", path); }
    snprintf(tmp, plen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(h.p); free(tmp);
        return s;
    }
    s = write_all(fd, h.p, h.n, tmp);
    free(h.p);
    for (size_t i = 0; !s && i < w->n_t; i++) {
        s = write_all(fd, w->t[i].data, w->t[i].nbytes, tmp);
        if (!s) s = write_pad(fd, (align - w->t[i].nbytes % align) % align, tmp);
    }
    if (!s && fsync(fd) != 0) s = tp_fail(TP_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !s) s = tp_fail(TP_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!s && rename(tmp, path) != 0)
        s = tp_fail(TP_ERR_IO, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
    if (s) unlink(tmp);
    free(tmp);
    if (s) return s;
    tp_fsync_parent_dir(path); /* make the rename durable */
    return TP_OK;
}
