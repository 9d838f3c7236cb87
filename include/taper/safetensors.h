/* safetensors reading (mmap; single file or sharded with model.safetensors.index.json)
 * and writing. Only bytes and headers live here; mapping names to a tp_model is in model/load. */
#ifndef TAPER_SAFETENSORS_H
#define TAPER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "taper/status.h"
#include "taper/util.h"

typedef enum { TP_ST_F32, TP_ST_F16, TP_ST_BF16, TP_ST_OTHER } tp_st_dtype;

typedef struct {
    char *name;
    tp_st_dtype dtype;
    char dtype_str[8];     /* as written in the header, e.g. "F32", "I64" */
    int n_dims;            /* 0..8 */
    uint64_t shape[8];     /* row-major, shape[n_dims-1] contiguous */
    uint64_t n_elem;
    const uint8_t *data;   /* into the mapping of its shard */
    size_t nbytes;
    int shard;             /* index into tp_safetensors.maps */
} tp_st_tensor;

typedef struct {
    int n_shards;
    tp_mmap *maps;
    char **shard_paths;
    size_t n_tensors;
    tp_st_tensor *tensors;
} tp_safetensors;

/* path: a .safetensors file, or a directory holding model.safetensors or
 * model.safetensors.index.json (+ shards). Validates header length, JSON, dtypes, shapes
 * (overflow), data_offsets (in bounds, matching shape*dtype size, non-overlapping),
 * unique names across shards, and that the index's weight_map matches the shards. */
tp_status tp_st_open(const char *path, tp_safetensors **out);
void tp_st_close(tp_safetensors *st);
const tp_st_tensor *tp_st_find(const tp_safetensors *st, const char *name);
/* Value of key in the "__metadata__" of the first file (shard 0), or NULL. */
const char *tp_st_meta(const tp_safetensors *st, const char *key);
/* Convert a F32/F16/BF16 tensor to fp32 (n_elem floats). */
tp_status tp_st_to_f32(const tp_st_tensor *t, float *dst);

/* Writer: add tensors (fp32 source, stored as F32/F16/BF16), then write one file
 * atomically. Tensors are written in the order added; metadata is a string map. */
typedef struct tp_st_writer tp_st_writer;
tp_status tp_st_writer_new(tp_st_writer **out);
void tp_st_writer_free(tp_st_writer *w);
tp_status tp_st_writer_meta(tp_st_writer *w, const char *key, const char *value);
/* data is referenced, not copied: it must stay valid until tp_st_write returns. */
tp_status tp_st_writer_add(tp_st_writer *w, const char *name, tp_st_dtype dtype,
                           int n_dims, const uint64_t *shape, const float *data);
/* A tensor whose fp32 values are produced while the file is written: fill(user, e0, n, dst) writes
 * elements e0 .. e0+n-1 (row-major) into dst, in increasing order of e0, in slices of at most
 * 64 Ki elements; so the whole tensor never needs to be in memory. The bytes written are the
 * same as for tp_st_writer_add with the same values. */
typedef tp_status (*tp_st_fill_fn)(void *user, size_t e0, size_t n, float *dst);
tp_status tp_st_writer_add_fill(tp_st_writer *w, const char *name, tp_st_dtype dtype, int n_dims,
                                const uint64_t *shape, tp_st_fill_fn fill, void *user);
tp_status tp_st_write(tp_st_writer *w, const char *path);

#endif
