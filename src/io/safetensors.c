/* safetensors: validated reading through mmap (one file, or a directory holding
 * model.safetensors or model.safetensors.index.json + shards) and a streaming, atomic writer.
 * Only bytes and headers live here; mapping tensor names onto a tp_model is in model/.
 *
 * Reader policy (what is checked, beyond the format's grammar):
 *  - header length: at least 2, at most ST_MAX_HEADER (100 MB, the cap of the reference
 *    Rust implementation) and at most file size - 8; the JSON must be one object followed by
 *    nothing but whitespace;
 *  - every tensor: known dtype string, shape of 0..8 non-negative integers whose element count
 *    and byte size do not overflow, data_offsets [begin, end] with begin <= end <= data size and
 *    end - begin == byte size; no two non-empty tensors of a file overlap. Gaps between tensors
 *    are tolerated (the Rust library refuses them; nothing here depends on their absence);
 *  - "__metadata__", if present, is an object of strings;
 *  - names are unique within a file and across shards;
 *  - with an index: shard file names are plain names inside the directory (no '/', '\\',
 *    "." or ".."), every weight_map entry names a tensor that exists in the shard it points to,
 *    and every tensor of every shard is listed in weight_map (a strict bijection).
 *  A directory with both model.safetensors and an index uses model.safetensors, as transformers
 *  does.
 *
 * Writer policy: header entries in the order tensors were added, "__metadata__" first with
 * {"format": "pt"} unless the caller set "format". Data are laid out in order added, except
 * that all 4-byte (F32) tensors come before the 2-byte ones, so every tensor starts at a
 * multiple of its element size without gaps (the Rust reader refuses gaps). The header is
 * padded with spaces to a multiple of 8 bytes, so the data section starts 8-aligned. The file
 * is streamed to "<path>.tmp.<pid>", fsynced, then renamed over path. */
#include "taper/safetensors.h"
#include "taper/util.h"
#include "core/internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "taper's safetensors code assumes a little-endian host"
#endif

#define ST_MAX_HEADER 100000000ull
#define ST_MAX_DIMS 8
/* Largest integer a JSON number (parsed as double by cJSON) carries exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

/* ------------------------------------------------------------------------------------------ */
/* dtypes */

typedef struct { const char *name; unsigned bits; tp_st_dtype kind; } st_dtype_info;

static const st_dtype_info st_dtypes[] = {
    {"F32", 32, TP_ST_F32},      {"F16", 16, TP_ST_F16},      {"BF16", 16, TP_ST_BF16},
    {"F64", 64, TP_ST_OTHER},    {"I64", 64, TP_ST_OTHER},    {"U64", 64, TP_ST_OTHER},
    {"I32", 32, TP_ST_OTHER},    {"U32", 32, TP_ST_OTHER},    {"I16", 16, TP_ST_OTHER},
    {"U16", 16, TP_ST_OTHER},    {"I8", 8, TP_ST_OTHER},      {"U8", 8, TP_ST_OTHER},
    {"BOOL", 8, TP_ST_OTHER},    {"F8_E4M3", 8, TP_ST_OTHER}, {"F8_E5M2", 8, TP_ST_OTHER},
    {"F8_E8M0", 8, TP_ST_OTHER}, {"F6_E2M3", 6, TP_ST_OTHER}, {"F6_E3M2", 6, TP_ST_OTHER},
    {"F4", 4, TP_ST_OTHER},      {"C64", 64, TP_ST_OTHER},
};

static const st_dtype_info *st_dtype_lookup(const char *s) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, s) == 0) return &st_dtypes[i];
    return NULL;
}

static const char *st_dtype_name(tp_st_dtype d) {
    switch (d) {
    case TP_ST_F32: return "F32";
    case TP_ST_F16: return "F16";
    case TP_ST_BF16: return "BF16";
    case TP_ST_OTHER: break;
    }
    return "OTHER";
}

static size_t st_elem_size(tp_st_dtype d) { return d == TP_ST_F32 ? 4 : 2; }

/* ------------------------------------------------------------------------------------------ */
/* reader */

typedef struct { const char *name; size_t idx; } st_name_ref;

/* The public struct plus a by-name index; tp_safetensors is its first member. */
typedef struct {
    tp_safetensors pub;
    size_t cap_tensors;
    st_name_ref *by_name; /* (n_tensors) sorted by name; idx into pub.tensors */
    cJSON *meta;          /* "__metadata__" of shard 0 (detached copy), or NULL */
} st_impl;

static int cmp_name_ref(const void *a, const void *b) {
    return strcmp(((const st_name_ref *)a)->name, ((const st_name_ref *)b)->name);
}

/* A JSON number that is a non-negative integer representable exactly; 0 on success. */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > ST_MAX_JSON_INT || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

static tp_status st_push_tensor(st_impl *im, tp_st_tensor **slot) {
    tp_safetensors *st = &im->pub;
    if (st->n_tensors == im->cap_tensors) {
        size_t cap = im->cap_tensors ? 2 * im->cap_tensors : 64;
        tp_st_tensor *t = realloc(st->tensors, cap * sizeof *t);
        if (!t) return tp_fail(TP_ERR_NOMEM, "out of memory for the tensor table");
        st->tensors = t;
        im->cap_tensors = cap;
    }
    *slot = &st->tensors[st->n_tensors];
    memset(*slot, 0, sizeof **slot);
    return TP_OK;
}

/* Validates one header entry and fills t (name set by the caller). */
static tp_status st_parse_entry(const char *path, const cJSON *e, const uint8_t *base,
                                uint64_t dsize, tp_st_tensor *t) {
    const char *nm = t->name;
    if (!cJSON_IsObject(e))
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, nm);

    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(jd))
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"dtype\" missing or not a string", path, nm);
    const st_dtype_info *di = st_dtype_lookup(jd->valuestring);
    if (!di)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%.32s\"", path, nm,
                       jd->valuestring);
    t->dtype = di->kind;
    snprintf(t->dtype_str, sizeof t->dtype_str, "%s", di->name);

    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(js))
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"shape\" missing or not an array", path, nm);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"shape\" has %d dimensions (at most %d)",
                       path, nm, nd, ST_MAX_DIMS);
    t->n_dims = nd;
    uint64_t n = 1;
    int i = 0;
    for (const cJSON *d = js->child; d; d = d->next, i++) {
        uint64_t v;
        if (json_u64(d, &v) != 0)
            return tp_fail(TP_ERR_FORMAT,
                           "%s: tensor '%s': \"shape\"[%d] is not a non-negative integer", path, nm, i);
        t->shape[i] = v;
        if (__builtin_mul_overflow(n, v, &n))
            return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"shape\" element count overflows",
                           path, nm);
    }
    t->n_elem = n;
    uint64_t bits;
    if (__builtin_mul_overflow(n, (uint64_t)di->bits, &bits))
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"shape\" byte size overflows", path, nm);
    if (bits % 8 != 0)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': %" PRIu64 " elements of %s are not a whole "
                       "number of bytes", path, nm, n, di->name);
    uint64_t nbytes = bits / 8;

    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b, en;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_u64(jo->child, &b) != 0 ||
        json_u64(jo->child->next, &en) != 0)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end] "
                       "with non-negative integers", path, nm);
    if (b > en)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" begin %" PRIu64
                       " > end %" PRIu64, path, nm, b, en);
    if (en > dsize)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" end %" PRIu64
                       " is past the data section (%" PRIu64 " bytes)", path, nm, en, dsize);
    if (en - b != nbytes)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" span %" PRIu64
                       " bytes but shape x dtype %s needs %" PRIu64, path, nm, en - b, di->name,
                       nbytes);
    t->data = base + b;
    t->nbytes = (size_t)nbytes;
    return TP_OK;
}

typedef struct { uint64_t b, e; size_t idx; } st_span;

static int cmp_span(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : 0;
}

/* Non-empty tensors [first, n) of one file must not overlap. */
static tp_status st_check_overlap(const char *path, tp_safetensors *st, size_t first,
                                  const uint8_t *base) {
    size_t n = st->n_tensors - first, k = 0;
    if (n < 2) return TP_OK;
    st_span *sp = malloc(n * sizeof *sp);
    if (!sp) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (size_t i = first; i < st->n_tensors; i++) {
        const tp_st_tensor *t = &st->tensors[i];
        if (t->nbytes == 0) continue;
        uint64_t b = (uint64_t)(t->data - base);
        sp[k++] = (st_span){b, b + t->nbytes, i};
    }
    qsort(sp, k, sizeof *sp, cmp_span);
    tp_status s = TP_OK;
    for (size_t i = 1; i < k; i++)
        if (sp[i].b < sp[i - 1].e) {
            s = tp_fail(TP_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap (data_offsets [%" PRIu64
                        ", %" PRIu64 ") and [%" PRIu64 ", %" PRIu64 "))", path,
                        st->tensors[sp[i - 1].idx].name, st->tensors[sp[i].idx].name,
                        sp[i - 1].b, sp[i - 1].e, sp[i].b, sp[i].e);
            break;
        }
    free(sp);
    return s;
}

static int is_json_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Maps the file already recorded as shard `shard` and appends its tensors. */
static tp_status st_parse_file(st_impl *im, int shard) {
    tp_safetensors *st = &im->pub;
    const char *path = st->shard_paths[shard];
    tp_mmap *m = &st->maps[shard];
    tp_status s = tp_mmap_open(path, m);
    if (s) return s;
    if (m->size < 8)
        return tp_fail(TP_ERR_FORMAT, "%s: file is %zu bytes, shorter than the 8-byte header "
                       "length", path, m->size);
    uint64_t hlen;
    memcpy(&hlen, m->data, 8);
    if (hlen > m->size - 8)
        return tp_fail(TP_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the %zu bytes after "
                       "the length field", path, hlen, m->size - 8);
    if (hlen > ST_MAX_HEADER)
        return tp_fail(TP_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the cap of %llu bytes",
                       path, hlen, ST_MAX_HEADER);
    if (hlen < 2)
        return tp_fail(TP_ERR_FORMAT, "%s: header length %" PRIu64 " is too small for a JSON "
                       "object", path, hlen);
    const char *hdr = (const char *)m->data + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root && tp_json_valid(hdr, (size_t)hlen))
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing the header (%" PRIu64 " bytes)", path, hlen);
    if (!root)
        return tp_fail(TP_ERR_FORMAT, "%s: header (%" PRIu64 " bytes) is not valid JSON", path, hlen);
    for (const char *p = end; p && p < hdr + hlen; p++)
        if (!is_json_space((uint8_t)*p)) {
            cJSON_Delete(root);
            return tp_fail(TP_ERR_FORMAT, "%s: header has non-whitespace bytes after the JSON "
                           "object (at header byte %td)", path, p - hdr);
        }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tp_fail(TP_ERR_FORMAT, "%s: header is JSON but not an object", path);
    }

    const uint8_t *base = m->data + 8 + hlen;
    uint64_t dsize = m->size - 8 - hlen;
    size_t first = st->n_tensors;
    s = TP_OK;
    for (const cJSON *e = root->child; e && !s; e = e->next) {
        const char *name = e->string ? e->string : "";
        if (strcmp(name, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                s = tp_fail(TP_ERR_FORMAT, "%s: \"__metadata__\" is not an object", path);
                break;
            }
            for (const cJSON *kv = e->child; kv; kv = kv->next)
                if (!cJSON_IsString(kv)) {
                    s = tp_fail(TP_ERR_FORMAT, "%s: \"__metadata__\" value of \"%.64s\" is not a "
                                "string", path, kv->string ? kv->string : "");
                    break;
                }
            if (!s && shard == 0 && !im->meta) {
                im->meta = cJSON_Duplicate(e, 1);
                if (!im->meta) s = tp_fail(TP_ERR_NOMEM, "out of memory");
            }
            continue;
        }
        tp_st_tensor *t = NULL;
        if ((s = st_push_tensor(im, &t))) break;
        t->name = strdup(name);
        if (!t->name) { s = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
        t->shard = shard;
        st->n_tensors++; /* owned from here on, even if invalid */
        s = st_parse_entry(path, e, base, dsize, t);
    }
    cJSON_Delete(root);
    if (!s) s = st_check_overlap(path, st, first, base);
    return s;
}

static tp_status st_add_shard(tp_safetensors *st, const char *path) {
    int n = st->n_shards;
    tp_mmap *maps = realloc(st->maps, (size_t)(n + 1) * sizeof *maps);
    if (!maps) return tp_fail(TP_ERR_NOMEM, "out of memory");
    st->maps = maps;
    char **paths = realloc(st->shard_paths, (size_t)(n + 1) * sizeof *paths);
    if (!paths) return tp_fail(TP_ERR_NOMEM, "out of memory");
    st->shard_paths = paths;
    paths[n] = strdup(path);
    if (!paths[n]) return tp_fail(TP_ERR_NOMEM, "out of memory");
    maps[n].data = NULL;
    maps[n].size = 0;
    st->n_shards = n + 1;
    return TP_OK;
}

/* Builds the by-name index and rejects duplicate names (within or across files). */
static tp_status st_index_names(st_impl *im) {
    tp_safetensors *st = &im->pub;
    im->by_name = malloc((st->n_tensors ? st->n_tensors : 1) * sizeof *im->by_name);
    if (!im->by_name) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < st->n_tensors; i++) im->by_name[i] = (st_name_ref){st->tensors[i].name, i};
    qsort(im->by_name, st->n_tensors, sizeof *im->by_name, cmp_name_ref);
    for (size_t i = 1; i < st->n_tensors; i++) {
        const tp_st_tensor *a = &st->tensors[im->by_name[i - 1].idx];
        const tp_st_tensor *b = &st->tensors[im->by_name[i].idx];
        if (strcmp(a->name, b->name) == 0) {
            if (a->shard == b->shard)
                return tp_fail(TP_ERR_FORMAT, "%s: tensor name '%s' appears twice in the header",
                               st->shard_paths[a->shard], a->name);
            return tp_fail(TP_ERR_FORMAT, "tensor name '%s' appears in both %s and %s", a->name,
                           st->shard_paths[a->shard], st->shard_paths[b->shard]);
        }
    }
    return TP_OK;
}

static long st_find_index(const st_impl *im, const char *name) {
    if (!im->by_name) return -1;
    st_name_ref key = {name, 0};
    const st_name_ref *r = bsearch(&key, im->by_name, im->pub.n_tensors, sizeof key, cmp_name_ref);
    return r ? (long)r->idx : -1;
}

static int is_regular_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int shard_name_ok(const char *s) {
    return s[0] && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 && !strchr(s, '/') &&
           !strchr(s, '\\');
}

typedef struct { const char *name, *shard; } st_wm_entry;

static int cmp_cstr_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}
static int cmp_wm_name(const void *a, const void *b) {
    return strcmp(((const st_wm_entry *)a)->name, ((const st_wm_entry *)b)->name);
}

/* Opens every shard named in index_path's weight_map and checks the map against them. */
static tp_status st_open_index(st_impl *im, const char *dir, const char *index_path) {
    tp_safetensors *st = &im->pub;
    struct stat sb;
    if (stat(index_path, &sb) != 0)
        return tp_fail(TP_ERR_IO, "%s: cannot stat: %s", index_path, strerror(errno));
    if ((uint64_t)sb.st_size > ST_MAX_HEADER)
        return tp_fail(TP_ERR_FORMAT, "%s: index file is %lld bytes, over the %llu-byte cap",
                       index_path, (long long)sb.st_size, ST_MAX_HEADER);
    char *text = NULL;
    size_t len = 0;
    tp_status s = tp_read_file(index_path, &text, &len);
    if (s) return s;
    cJSON *root = cJSON_ParseWithLength(text, len);
    int valid = root || tp_json_valid(text, len);
    free(text);
    if (!root && valid) return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", index_path);
    if (!root) return tp_fail(TP_ERR_FORMAT, "%s: not valid JSON", index_path);

    st_wm_entry *ents = NULL;
    const char **shards = NULL;
    size_t n = 0, n_sh = 0;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        s = tp_fail(TP_ERR_FORMAT, "%s: \"weight_map\" missing or not an object", index_path);
        goto done;
    }
    size_t cnt = (size_t)cJSON_GetArraySize(wm);
    ents = malloc((cnt ? cnt : 1) * sizeof *ents);
    shards = malloc((cnt ? cnt : 1) * sizeof *shards);
    if (!ents || !shards) { s = tp_fail(TP_ERR_NOMEM, "out of memory"); goto done; }
    for (const cJSON *e = wm->child; e; e = e->next) {
        const char *nm = e->string ? e->string : "";
        if (!cJSON_IsString(e)) {
            s = tp_fail(TP_ERR_FORMAT, "%s: weight_map entry '%s' is not a string", index_path, nm);
            goto done;
        }
        if (!shard_name_ok(e->valuestring)) {
            s = tp_fail(TP_ERR_FORMAT, "%s: weight_map entry '%s': shard name \"%.200s\" is not a "
                        "plain file name in the directory", index_path, nm, e->valuestring);
            goto done;
        }
        ents[n] = (st_wm_entry){nm, e->valuestring};
        shards[n++] = e->valuestring;
    }
    if (n == 0) {
        s = tp_fail(TP_ERR_FORMAT, "%s: \"weight_map\" is empty", index_path);
        goto done;
    }
    qsort(shards, n, sizeof *shards, cmp_cstr_ptr);
    for (size_t i = 0; i < n; i++)
        if (n_sh == 0 || strcmp(shards[n_sh - 1], shards[i]) != 0) shards[n_sh++] = shards[i];
    for (size_t i = 0; i < n_sh && !s; i++) {
        char *p = tp_path_join(dir, shards[i]);
        if (!p) { s = tp_fail(TP_ERR_NOMEM, "out of memory"); break; }
        if (!is_regular_file(p))
            s = tp_fail(TP_ERR_FORMAT, "%s: weight_map names shard \"%s\", but %s is missing or "
                        "not a regular file", index_path, shards[i], p);
        else if (!(s = st_add_shard(st, p)))
            s = st_parse_file(im, st->n_shards - 1);
        free(p);
    }
    if (s) goto done;
    if ((s = st_index_names(im))) goto done;

    qsort(ents, n, sizeof *ents, cmp_wm_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(ents[i - 1].name, ents[i].name) == 0) {
            s = tp_fail(TP_ERR_FORMAT, "%s: weight_map lists '%s' twice", index_path, ents[i].name);
            goto done;
        }
    for (size_t i = 0; i < n; i++) {
        long k = st_find_index(im, ents[i].name);
        if (k < 0) {
            s = tp_fail(TP_ERR_FORMAT, "%s: weight_map entry '%s' -> \"%s\": no such tensor in "
                        "that shard", index_path, ents[i].name, ents[i].shard);
            goto done;
        }
        /* shard j of the table was opened from shards[j] */
        const char **sh = bsearch(&ents[i].shard, shards, n_sh, sizeof *shards, cmp_cstr_ptr);
        if (!sh || st->tensors[k].shard != (int)(sh - shards)) {
            s = tp_fail(TP_ERR_FORMAT, "%s: weight_map entry '%s' -> \"%s\", but the tensor is in "
                        "%s", index_path, ents[i].name, ents[i].shard,
                        st->shard_paths[st->tensors[k].shard]);
            goto done;
        }
    }
    if (n != st->n_tensors) { /* all entries matched distinct tensors: some tensor is unlisted */
        for (size_t i = 0; i < st->n_tensors; i++) {
            st_wm_entry key = {st->tensors[i].name, NULL};
            if (!bsearch(&key, ents, n, sizeof *ents, cmp_wm_name)) {
                s = tp_fail(TP_ERR_FORMAT, "%s: tensor '%s' of %s is not listed in weight_map",
                            index_path, st->tensors[i].name, st->shard_paths[st->tensors[i].shard]);
                goto done;
            }
        }
    }
done:
    free(ents);
    free(shards);
    cJSON_Delete(root);
    return s;
}

tp_status tp_st_open(const char *path, tp_safetensors **out) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return tp_fail(TP_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    st_impl *im = calloc(1, sizeof *im);
    if (!im) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s;
    if (S_ISDIR(sb.st_mode)) {
        char *single = tp_path_join(path, "model.safetensors");
        char *index = tp_path_join(path, "model.safetensors.index.json");
        if (!single || !index) s = tp_fail(TP_ERR_NOMEM, "out of memory");
        else if (is_regular_file(single)) {
            if (!(s = st_add_shard(&im->pub, single)) && !(s = st_parse_file(im, 0)))
                s = st_index_names(im);
        } else if (is_regular_file(index))
            s = st_open_index(im, path, index);
        else
            s = tp_fail(TP_ERR_IO, "%s: directory holds neither model.safetensors nor "
                        "model.safetensors.index.json", path);
        free(single);
        free(index);
    } else {
        if (!(s = st_add_shard(&im->pub, path)) && !(s = st_parse_file(im, 0)))
            s = st_index_names(im);
    }
    if (s) {
        tp_st_close(&im->pub);
        return s;
    }
    *out = &im->pub;
    return TP_OK;
}

void tp_st_close(tp_safetensors *st) {
    if (!st) return;
    st_impl *im = (st_impl *)st;
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_shards; i++) {
        tp_mmap_close(&st->maps[i]);
        free(st->shard_paths[i]);
    }
    free(st->maps);
    free(st->shard_paths);
    free(im->by_name);
    cJSON_Delete(im->meta);
    free(im);
}

const char *tp_st_meta(const tp_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(((const st_impl *)st)->meta, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

const tp_st_tensor *tp_st_find(const tp_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    long k = st_find_index((const st_impl *)st, name);
    return k < 0 ? NULL : &st->tensors[k];
}

tp_status tp_st_to_f32(const tp_st_tensor *t, float *dst) {
    size_t n = (size_t)t->n_elem;
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case TP_ST_F32:
        if (n) memcpy(dst, p, n * 4);
        return TP_OK;
    case TP_ST_F16:
#ifdef _OPENMP
#pragma omp parallel for if (n > (1u << 18)) schedule(static)
#endif
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = tp_fp16_to_fp32(h);
        }
        return TP_OK;
    case TP_ST_BF16:
#ifdef _OPENMP
#pragma omp parallel for if (n > (1u << 18)) schedule(static)
#endif
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = tp_bf16_to_fp32(h);
        }
        return TP_OK;
    case TP_ST_OTHER:
        break;
    }
    return tp_fail(TP_ERR_UNSUPPORTED, "tensor '%s' has dtype %s; only F32, F16 and BF16 convert "
                   "to fp32", t->name, t->dtype_str);
}

/* ------------------------------------------------------------------------------------------ */
/* writer */

typedef struct {
    char *name;
    tp_st_dtype dtype;
    int n_dims;
    uint64_t shape[ST_MAX_DIMS];
    size_t n_elem;
    const float *data;  /* (n_elem), referenced; or */
    tp_st_fill_fn fill; /* produces them while writing */
    void *user;
    uint64_t off;       /* byte offset in the data section, set by tp_st_write */
} st_wtensor;

struct tp_st_writer {
    st_wtensor *t;
    size_t n, cap;
    char **mkey, **mval;
    size_t n_meta, cap_meta;
};

tp_status tp_st_writer_new(tp_st_writer **out) {
    *out = calloc(1, sizeof **out);
    return *out ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
}

void tp_st_writer_free(tp_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    for (size_t i = 0; i < w->n_meta; i++) { free(w->mkey[i]); free(w->mval[i]); }
    free(w->t);
    free(w->mkey);
    free(w->mval);
    free(w);
}

tp_status tp_st_writer_meta(tp_st_writer *w, const char *key, const char *value) {
    if (!key || !value) return tp_fail(TP_ERR_ARG, "safetensors metadata key and value must be set");
    char *v = strdup(value);
    if (!v) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->mkey[i], key) == 0) { free(w->mval[i]); w->mval[i] = v; return TP_OK; }
    if (w->n_meta == w->cap_meta) {
        size_t cap = w->cap_meta ? 2 * w->cap_meta : 8;
        char **k = realloc(w->mkey, cap * sizeof *k);
        if (k) w->mkey = k;
        char **vv = k ? realloc(w->mval, cap * sizeof *vv) : NULL;
        if (!vv) { free(v); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
        w->mval = vv;
        w->cap_meta = cap;
    }
    char *k = strdup(key);
    if (!k) { free(v); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    w->mkey[w->n_meta] = k;
    w->mval[w->n_meta++] = v;
    return TP_OK;
}

static tp_status writer_add(tp_st_writer *w, const char *name, tp_st_dtype dtype, int n_dims,
                            const uint64_t *shape, const float *data, tp_st_fill_fn fill, void *user);

tp_status tp_st_writer_add(tp_st_writer *w, const char *name, tp_st_dtype dtype,
                           int n_dims, const uint64_t *shape, const float *data) {
    return writer_add(w, name, dtype, n_dims, shape, data, NULL, NULL);
}

tp_status tp_st_writer_add_fill(tp_st_writer *w, const char *name, tp_st_dtype dtype, int n_dims,
                                const uint64_t *shape, tp_st_fill_fn fill, void *user) {
    if (!fill) return tp_fail(TP_ERR_ARG, "safetensors writer: tensor '%s': no fill function", name ? name : "(null)");
    return writer_add(w, name, dtype, n_dims, shape, NULL, fill, user);
}

static tp_status writer_add(tp_st_writer *w, const char *name, tp_st_dtype dtype, int n_dims,
                            const uint64_t *shape, const float *data, tp_st_fill_fn fill, void *user) {
    if (!name || !name[0] || strcmp(name, "__metadata__") == 0)
        return tp_fail(TP_ERR_ARG, "safetensors writer: tensor name \"%s\" is not allowed",
                       name ? name : "(null)");
    if (dtype != TP_ST_F32 && dtype != TP_ST_F16 && dtype != TP_ST_BF16)
        return tp_fail(TP_ERR_ARG, "safetensors writer: tensor '%s': only F32, F16 and BF16 can be "
                       "written", name);
    if (n_dims < 0 || n_dims > ST_MAX_DIMS || (n_dims > 0 && !shape))
        return tp_fail(TP_ERR_ARG, "safetensors writer: tensor '%s': %d dimensions (0..%d)", name,
                       n_dims, ST_MAX_DIMS);
    size_t n = 1, bytes;
    for (int i = 0; i < n_dims; i++)
        if (shape[i] > SIZE_MAX || tp_mul_overflow(n, (size_t)shape[i], &n))
            return tp_fail(TP_ERR_ARG, "safetensors writer: tensor '%s': element count overflows",
                           name);
    if (tp_mul_overflow(n, 4, &bytes) || (double)n > ST_MAX_JSON_INT / 4)
        return tp_fail(TP_ERR_ARG, "safetensors writer: tensor '%s': too large", name);
    if (n > 0 && !data && !fill)
        return tp_fail(TP_ERR_ARG, "safetensors writer: tensor '%s': no data", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        st_wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) return tp_fail(TP_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    st_wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return tp_fail(TP_ERR_NOMEM, "out of memory");
    t->dtype = dtype;
    t->n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) t->shape[i] = shape[i];
    t->n_elem = n;
    t->data = data;
    t->fill = fill;
    t->user = user;
    w->n++;
    return TP_OK;
}

/* Growable text buffer for the header. */
typedef struct { char *p; size_t n, cap; int oom; } st_buf;

static void buf_put(st_buf *b, const char *s, size_t len) {
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}
static void buf_str(st_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_json_string(st_buf *b, const char *s) {
    buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') { esc[0] = '\\'; esc[1] = (char)*c; buf_put(b, esc, 2); }
        else if (*c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", *c); buf_put(b, esc, 6); }
        else buf_put(b, (const char *)c, 1);
    }
    buf_put(b, "\"", 1);
}

static int cmp_wname(const void *a, const void *b) {
    return strcmp((*(const st_wtensor *const *)a)->name, (*(const st_wtensor *const *)b)->name);
}

static tp_status write_all(int fd, const void *data, size_t len, const char *path) {
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return tp_fail(TP_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
    return TP_OK;
}

/* Streams one tensor's data, converted to its stored dtype, in bounded chunks. */
static tp_status write_tensor_data(int fd, const st_wtensor *t, uint8_t *chunk, float *filled, size_t chunk_elems,
                                   const char *path) {
    for (size_t i0 = 0; i0 < t->n_elem; i0 += chunk_elems) {
        size_t m = t->n_elem - i0 < chunk_elems ? t->n_elem - i0 : chunk_elems;
        const float *src = t->data + i0;
        if (t->fill) {
            tp_status s = t->fill(t->user, i0, m, filled);
            if (s) return tp_fail_ctx(s, "%s: tensor %s: ", path, t->name);
            src = filled;
        }
        size_t bytes;
        if (t->dtype == TP_ST_F32) {
            memcpy(chunk, src, m * 4);
            bytes = m * 4;
        } else {
            for (size_t i = 0; i < m; i++) {
                uint16_t h = t->dtype == TP_ST_F16 ? tp_fp32_to_fp16(src[i]) : tp_fp32_to_bf16(src[i]);
                memcpy(chunk + 2 * i, &h, 2);
            }
            bytes = m * 2;
        }
        tp_status s = write_all(fd, chunk, bytes, path);
        if (s) return s;
    }
    return TP_OK;
}

/* Builds the padded header; sets every tensor's offset. *out is malloc'd. */
static tp_status st_build_header(tp_st_writer *w, char **out, size_t *out_len) {
    /* data layout: F32 tensors (in order added), then the 2-byte ones */
    uint64_t off = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < w->n; i++) {
            st_wtensor *t = &w->t[i];
            if ((pass == 0) != (t->dtype == TP_ST_F32)) continue;
            t->off = off;
            off += (uint64_t)t->n_elem * st_elem_size(t->dtype);
        }
    if ((double)off > ST_MAX_JSON_INT)
        return tp_fail(TP_ERR_ARG, "safetensors writer: data section too large");

    st_buf b = {0};
    int has_format = 0;
    for (size_t i = 0; i < w->n_meta; i++) has_format |= strcmp(w->mkey[i], "format") == 0;
    buf_str(&b, "{\"__metadata__\":{");
    if (!has_format) buf_str(&b, "\"format\":\"pt\"");
    for (size_t i = 0; i < w->n_meta; i++) {
        if (i > 0 || !has_format) buf_str(&b, ",");
        buf_json_string(&b, w->mkey[i]);
        buf_str(&b, ":");
        buf_json_string(&b, w->mval[i]);
    }
    buf_str(&b, "}");
    for (size_t i = 0; i < w->n; i++) {
        const st_wtensor *t = &w->t[i];
        char num[64];
        buf_str(&b, ",");
        buf_json_string(&b, t->name);
        buf_str(&b, ":{\"dtype\":\"");
        buf_str(&b, st_dtype_name(t->dtype));
        buf_str(&b, "\",\"shape\":[");
        for (int d = 0; d < t->n_dims; d++) {
            snprintf(num, sizeof num, "%s%" PRIu64, d ? "," : "", t->shape[d]);
            buf_str(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->off,
                 t->off + (uint64_t)t->n_elem * st_elem_size(t->dtype));
        buf_str(&b, num);
    }
    buf_str(&b, "}");
    while (!b.oom && b.n % 8 != 0) buf_str(&b, " ");
    if (b.oom) { free(b.p); return tp_fail(TP_ERR_NOMEM, "out of memory for the header"); }
    if (b.n > ST_MAX_HEADER) {
        free(b.p);
        return tp_fail(TP_ERR_ARG, "safetensors writer: header of %zu bytes is over the cap", b.n);
    }
    *out = b.p;
    *out_len = b.n;
    return TP_OK;
}

tp_status tp_st_write(tp_st_writer *w, const char *path) {
    /* names must be unique */
    if (w->n > 1) {
        const st_wtensor **byname = malloc(w->n * sizeof *byname);
        if (!byname) return tp_fail(TP_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < w->n; i++) byname[i] = &w->t[i];
        qsort(byname, w->n, sizeof *byname, cmp_wname);
        for (size_t i = 1; i < w->n; i++)
            if (strcmp(byname[i - 1]->name, byname[i]->name) == 0) {
                tp_status s = tp_fail(TP_ERR_ARG, "%s: tensor '%s' added twice", path,
                                      byname[i]->name);
                free(byname);
                return s;
            }
        free(byname);
    }
    char *hdr = NULL;
    size_t hlen = 0;
    tp_status s = st_build_header(w, &hdr, &hlen);
    if (s) return s;

    size_t plen = strlen(path) + 32;
    char *tmp = malloc(plen);
    enum { CHUNK = 1 << 16 };
    uint8_t *chunk = malloc((size_t)CHUNK * 4);
    float *filled = malloc((size_t)CHUNK * sizeof(float));
    if (!tmp || !chunk || !filled) {
        free(hdr); free(tmp); free(chunk); free(filled);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    snprintf(tmp, plen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(hdr); free(tmp); free(chunk); free(filled);
        return s;
    }
    uint64_t hl = hlen;
    s = write_all(fd, &hl, 8, tmp);
    if (!s) s = write_all(fd, hdr, hlen, tmp);
    for (int pass = 0; pass < 2 && !s; pass++)
        for (size_t i = 0; i < w->n && !s; i++)
            if ((pass == 0) == (w->t[i].dtype == TP_ST_F32))
                s = write_tensor_data(fd, &w->t[i], chunk, filled, CHUNK, tmp);
    if (!s && fsync(fd) != 0) s = tp_fail(TP_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !s) s = tp_fail(TP_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!s && rename(tmp, path) != 0)
        s = tp_fail(TP_ERR_IO, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
    if (s) unlink(tmp);
    else tp_fsync_parent_dir(path);
    free(hdr);
    free(tmp);
    free(chunk);
    free(filled);
    return s;
}
