/* GGUF reading (mmap, validated), dequantisation to fp32, and writing.
 * Only parsing and bytes live here; turning GGUF tensors into a tp_model is in model/load. */
#ifndef TAPER_GGUF_H
#define TAPER_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "taper/status.h"
#include "taper/util.h"

/* Metadata value types, numbered as in the GGUF spec. */
typedef enum {
    TP_GGUF_UINT8 = 0, TP_GGUF_INT8 = 1, TP_GGUF_UINT16 = 2, TP_GGUF_INT16 = 3,
    TP_GGUF_UINT32 = 4, TP_GGUF_INT32 = 5, TP_GGUF_FLOAT32 = 6, TP_GGUF_BOOL = 7,
    TP_GGUF_STRING = 8, TP_GGUF_ARRAY = 9, TP_GGUF_UINT64 = 10, TP_GGUF_INT64 = 11,
    TP_GGUF_FLOAT64 = 12
} tp_gguf_vtype;

/* Tensor types, numbered as ggml numbers them. */
typedef enum {
    TP_GGML_F32 = 0, TP_GGML_F16 = 1, TP_GGML_Q4_0 = 2, TP_GGML_Q4_1 = 3,
    TP_GGML_Q5_0 = 6, TP_GGML_Q5_1 = 7, TP_GGML_Q8_0 = 8, TP_GGML_Q8_1 = 9,
    TP_GGML_Q2_K = 10, TP_GGML_Q3_K = 11, TP_GGML_Q4_K = 12, TP_GGML_Q5_K = 13,
    TP_GGML_Q6_K = 14, TP_GGML_Q8_K = 15, TP_GGML_BF16 = 30,
    /* Known to ggml: a file holding these opens (sizes are known) but they do not dequantise. */
    TP_GGML_IQ2_XXS = 16, TP_GGML_IQ2_XS = 17, TP_GGML_IQ3_XXS = 18, TP_GGML_IQ1_S = 19,
    TP_GGML_IQ4_NL = 20, TP_GGML_IQ3_S = 21, TP_GGML_IQ2_S = 22, TP_GGML_IQ4_XS = 23,
    TP_GGML_I8 = 24, TP_GGML_I16 = 25, TP_GGML_I32 = 26, TP_GGML_I64 = 27, TP_GGML_F64 = 28,
    TP_GGML_IQ1_M = 29, TP_GGML_TQ1_0 = 34, TP_GGML_TQ2_0 = 35, TP_GGML_MXFP4 = 39,
    TP_GGML_NVFP4 = 40, TP_GGML_Q1_0 = 41
} tp_ggml_type;

typedef struct {
    const char *data;   /* points into the mapping; NOT NUL-terminated */
    uint64_t len;
} tp_gguf_str;

typedef struct {
    char *key;              /* NUL-terminated copy */
    tp_gguf_vtype type;
    union {
        uint64_t u64;       /* all unsigned ints and bool */
        int64_t i64;        /* all signed ints */
        double f64;         /* float32 / float64 */
        tp_gguf_str str;
        struct {
            tp_gguf_vtype type;   /* element type (never ARRAY: nested arrays are rejected) */
            uint64_t n;
            const uint8_t *data;  /* raw little-endian elements in the mapping */
            tp_gguf_str *strs;    /* for string arrays: n parsed strings (malloc'd index) */
        } arr;
    } v;
} tp_gguf_kv;

typedef struct {
    char *name;             /* NUL-terminated copy */
    uint32_t n_dims;        /* 1..4 */
    uint64_t ne[4];         /* ggml order: ne[0] is the contiguous (row) dimension; unused = 1 */
    tp_ggml_type type;
    uint64_t offset;        /* relative to the data section */
    const uint8_t *data;    /* points into the mapping */
    size_t nbytes;
    uint64_t n_elem;
    const char *path;       /* the owning reader's file path, for error messages */
} tp_gguf_tensor;

typedef struct {
    char *path;
    tp_mmap map;
    uint32_t version;
    uint64_t n_kv;
    tp_gguf_kv *kv;
    uint64_t n_tensors;
    tp_gguf_tensor *tensors;
    uint64_t alignment;     /* general.alignment or 32 */
    uint64_t data_offset;   /* start of the tensor data section in the file */
} tp_gguf;

/* Opens and validates the whole header: magic, version (2 or 3), counts bounded by the
 * file size, strings in bounds, known value and tensor types, dims > 0 and products not
 * overflowing, row size a multiple of the block size, offsets aligned and tensor data
 * inside the file, unique keys and tensor names. Errors name the file and the field. */
tp_status tp_gguf_open(const char *path, tp_gguf **out);
void tp_gguf_close(tp_gguf *g);

const tp_gguf_kv *tp_gguf_find(const tp_gguf *g, const char *key);
const tp_gguf_tensor *tp_gguf_find_tensor(const tp_gguf *g, const char *name);
/* Name of a metadata value type ("uint32", "string", ...). */
const char *tp_gguf_vtype_name(tp_gguf_vtype t);
/* Element i (< kv->v.arr.n, unchecked) of a scalar array, converted; the elements in the
 * mapping may be unaligned, so read them through these. */
uint64_t tp_gguf_arr_u64(const tp_gguf_kv *kv, uint64_t i);
int64_t tp_gguf_arr_i64(const tp_gguf_kv *kv, uint64_t i);
double tp_gguf_arr_f64(const tp_gguf_kv *kv, uint64_t i);

/* Typed getters: TP_ERR_FORMAT if the key is present with an incompatible type,
 * TP_ERR_ARG if missing (callers that have a default check tp_gguf_find first).
 * Integer getters accept any integer type whose value fits. */
tp_status tp_gguf_get_u32(const tp_gguf *g, const char *key, uint32_t *out);
tp_status tp_gguf_get_f32(const tp_gguf *g, const char *key, float *out);
tp_status tp_gguf_get_bool(const tp_gguf *g, const char *key, int *out);
/* Returns a malloc'd NUL-terminated copy. */
tp_status tp_gguf_get_str(const tp_gguf *g, const char *key, char **out);

/* Block layout of a tensor type: elements per block and bytes per block. 0 if unknown. */
size_t tp_ggml_block_size(tp_ggml_type t);
size_t tp_ggml_type_size(tp_ggml_type t);
const char *tp_ggml_type_name(tp_ggml_type t);
/* 1 if tp_dequantize / tp_quantize handle type t. */
int tp_ggml_can_dequantize(tp_ggml_type t);
int tp_ggml_can_quantize(tp_ggml_type t);
/* Dequantise n elements (n a multiple of the block size) of type t from src to dst. */
tp_status tp_dequantize(tp_ggml_type t, const void *src, float *dst, size_t n);
/* Whole tensor to fp32 (n_elem floats). */
tp_status tp_gguf_tensor_to_f32(const tp_gguf_tensor *t, float *dst);
/* Quantise fp32 to t (F32, F16, BF16, Q8_0 supported); n a multiple of the block size. */
tp_status tp_quantize(tp_ggml_type t, const float *src, void *dst, size_t n);

/* ---- writer ----
 * Keys keep the order they were first set in; setting a key again replaces its value.
 * The data alignment is taken from a "general.alignment" key if one is set (an unsigned
 * integer, power of two), else 32. */
typedef struct tp_gguf_writer tp_gguf_writer;
tp_status tp_gguf_writer_new(tp_gguf_writer **out);
void tp_gguf_writer_free(tp_gguf_writer *w);
tp_status tp_gguf_set_u32(tp_gguf_writer *w, const char *key, uint32_t v);
tp_status tp_gguf_set_i32(tp_gguf_writer *w, const char *key, int32_t v);
tp_status tp_gguf_set_f32(tp_gguf_writer *w, const char *key, float v);
tp_status tp_gguf_set_bool(tp_gguf_writer *w, const char *key, int v);
tp_status tp_gguf_set_str(tp_gguf_writer *w, const char *key, const char *v);
/* Array of n strings (copied). */
tp_status tp_gguf_set_str_arr(tp_gguf_writer *w, const char *key, const char *const *v, uint64_t n);
/* Array of n scalars of element type et, raw little-endian bytes (copied). */
tp_status tp_gguf_set_arr(tp_gguf_writer *w, const char *key, tp_gguf_vtype et, const void *data, uint64_t n);
/* Scalar of any type except STRING and ARRAY, from its little-endian bytes. */
tp_status tp_gguf_set_val(tp_gguf_writer *w, const char *key, tp_gguf_vtype t, const void *v);
/* Copy an existing kv (any type) from a reader. */
tp_status tp_gguf_copy_kv(tp_gguf_writer *w, const tp_gguf_kv *kv);
/* Add a tensor from fp32 data, stored as type t. ne in ggml order (ne[0] contiguous).
 * The data is converted immediately and owned by the writer. */
tp_status tp_gguf_add_tensor_f32(tp_gguf_writer *w, const char *name, uint32_t n_dims,
                                 const uint64_t *ne, const float *data, tp_ggml_type t);
/* Add a tensor already in its stored form (e.g. a Q4_1 tensor passed through unchanged):
 * nbytes must match the shape and type; the bytes are copied. */
tp_status tp_gguf_add_tensor_raw(tp_gguf_writer *w, const char *name, uint32_t n_dims,
                                 const uint64_t *ne, tp_ggml_type t, const void *data, size_t nbytes);
/* Write header, metadata, tensor infos, aligned data; atomically (tmp + fsync + rename). */
tp_status tp_gguf_write(tp_gguf_writer *w, const char *path);

#endif
