/* Status codes and the thread-local error message every library call leaves behind.
 * Library functions return tp_status (0 = ok); on failure they record a message naming
 * what failed, where (file / field / tensor) and what was expected, via tp_fail(). */
#ifndef TAPER_STATUS_H
#define TAPER_STATUS_H

#include <stddef.h>

typedef enum {
    TP_OK = 0,
    TP_ERR_IO,          /* open/read/write/mmap failed */
    TP_ERR_FORMAT,      /* malformed file content */
    TP_ERR_NOMEM,       /* allocation failed or size overflow */
    TP_ERR_ARG,         /* bad argument from the caller / user */
    TP_ERR_UNSUPPORTED, /* valid but not supported (dtype, architecture, ...) */
    TP_ERR_NUMERIC      /* NaN/inf or a failed factorisation */
} tp_status;

/* Records a printf-style message for the calling thread and returns code. */
tp_status tp_fail(tp_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prepends context ("while loading X: ") to the current message and returns code. */
tp_status tp_fail_ctx(tp_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
const char *tp_errmsg(void);
const char *tp_status_name(tp_status s);
void tp_clear_error(void);

/* Messages the library has for the user that are not errors (notes, warnings, training log
 * lines) go through one callback, one message per call without a newline; the level says what
 * kind it is. The default writes each message and a newline to stderr; tp_set_log(NULL, NULL)
 * silences the library. Process-wide: set it before starting work. (Progress bars are separate:
 * TAPER_PROGRESS / tp_progress.) */
typedef enum { TP_LOG_INFO = 0, TP_LOG_NOTE, TP_LOG_WARN } tp_log_level;
typedef void (*tp_log_fn)(void *user, tp_log_level level, const char *msg);
void tp_set_log(tp_log_fn fn, void *user);
/* Restores the default (stderr). */
void tp_log_default(void);
void tp_log(tp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Overflow-checked size arithmetic: return 0 on success, nonzero on overflow. */
int tp_mul_overflow(size_t a, size_t b, size_t *out);
int tp_add_overflow(size_t a, size_t b, size_t *out);

#endif
