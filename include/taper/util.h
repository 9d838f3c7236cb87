/* Small shared utilities: file reading, mmap, fp16/bf16 conversion, progress bar, timers. */
#ifndef TAPER_UTIL_H
#define TAPER_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include "taper/status.h"

/* Read a whole file into a malloc'd NUL-terminated buffer. */
tp_status tp_read_file(const char *path, char **data, size_t *len);
/* "dir/name" (no second slash when dir ends with one), malloc'd; NULL when out of memory. */
char *tp_path_join(const char *dir, const char *name);
/* A count such as 90M, 1.5k, 512, 2B: a positive number with an optional k / M / G (or B) suffix
 * (any case) whose value is a whole number; TP_ERR_ARG naming the text otherwise. */
tp_status tp_parse_count(const char *s, size_t *out);
/* mkdir -p: dir and its missing parents (mode 0755). 0 when dir is then a directory, else -1 with
 * errno set. */
int tp_mkdir_p(const char *dir);
/* Write a buffer to path atomically (tmp name, fsync, rename). */
tp_status tp_write_file_atomic(const char *path, const void *data, size_t len);

/* Read-only mapping of a whole file. */
typedef struct {
    const uint8_t *data;
    size_t size;
} tp_mmap;
tp_status tp_mmap_open(const char *path, tp_mmap *m);
void tp_mmap_close(tp_mmap *m);
/* Drops the pages of [p, p+n) of a read-only mapping from the process's resident set (rounded out
 * to whole pages; the page cache keeps them and a later read maps them again). */
void tp_mmap_release(const void *p, size_t n);
/* Gives the whole pages inside [p, p+n) of anonymous memory back to the system (rounded inward, so
 * neighbouring data keeps its pages); they read back as zeros. */
void tp_mem_discard(const void *p, size_t n);
/* Bytes of memory this process can still use: MemAvailable (/proc/meminfo), lowered to the
 * cgroup's memory.max minus its memory.current when that is smaller; 0 when unknown. */
double tp_mem_available(void);
/* Size of the file at path in bytes; 0 when path is NULL or cannot be stat'ed. */
double tp_file_size(const char *path);
/* The process's peak resident set so far, in bytes (getrusage's ru_maxrss). */
double tp_peak_rss(void);

float tp_fp16_to_fp32(uint16_t h);
uint16_t tp_fp32_to_fp16(float f);   /* round to nearest even */
float tp_bf16_to_fp32(uint16_t h);
uint16_t tp_fp32_to_bf16(float f);   /* round to nearest even, NaN kept */

double tp_time_s(void);              /* monotonic seconds */

/* The member of a cJSON tree at a dotted path ("distill.steps", "rounds.1.pruned.params": a
 * number is an index into an array); NULL when any step is missing. */
struct cJSON;
const struct cJSON *tp_json_at(const struct cJSON *root, const char *path);
/* Writes j as indented JSON plus a final newline to path, atomically (tp_write_file_atomic). */
tp_status tp_write_json_atomic(const char *path, const struct cJSON *j);
/* The JSON in file dir/name (name may be NULL: dir is the file), or NULL when it is absent,
 * unreadable or not JSON (no error is left behind: for reports that show what exists). */
struct cJSON *tp_json_load_optional(const char *dir, const char *name);
/* The number at a dotted path (tp_json_at), NAN when absent or not a number. */
double tp_json_number(const struct cJSON *root, const char *path);

/* malloc'd printf result, NULL when out of memory. */
char *tp_strfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Minimum, maximum and mean of v[0..n) (n > 0). */
void tp_vec_stats(const double *v, int n, double *min, double *max, double *mean);

/* Progress bar on stderr: "label  [#####.....]  42% 1234/5000  ETA 0:31  812 tok/s".
 * Draws at most ~10 times a second; silent when stderr is not a terminal unless
 * TAPER_PROGRESS=1; TAPER_PROGRESS=0 silences it always. */
typedef struct {
    const char *label;
    const char *unit;      /* e.g. "tok" */
    double total;
    double done;
    double t0, last_draw;
    int enabled;
} tp_progress;
/* Whether progress bars are drawn (on stderr): 1 always, 0 never, -1 (default) when stderr is a
 * terminal. The CLI maps TAPER_PROGRESS=0/1 onto it. */
void tp_progress_set_mode(int mode);
void tp_progress_begin(tp_progress *p, const char *label, double total, const char *unit);
void tp_progress_update(tp_progress *p, double done);
void tp_progress_end(tp_progress *p);

#endif
